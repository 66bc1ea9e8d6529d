//! The backup stream's archive tap: reads pg_dump's archive as it passes (row counts and TOC
//! offsets, `domain::archive`) and cuts the zstd stream into frames at data-block boundaries, so
//! a table's bytes can later be read from Blob by range and decompressed on their own.
//!
//! Frames: the header and TOC are always a frame of their own; after that a new frame starts at a
//! data block only once the current frame holds [`FRAME_MIN_RAW`] raw bytes, so thousands of small
//! tables do not each pay a frame (a frame end makes zstd's workers drain). The manifest records
//! where each frame starts, raw and stored.

use crate::domain::archive::{Archive, Scanner};
use crate::domain::error::Error;
use crate::domain::manifest::Frame;
use std::io::{self, Write};
use zstd::stream::raw::{CParameter, Encoder, InBuffer, Operation, OutBuffer};

/// A new frame starts at a data block once the current one holds this many raw bytes.
pub const FRAME_MIN_RAW: u64 = 16 << 20;

/// A writer whose stream can be cut into independently decodable pieces.
pub trait FrameWrite: Write {
    /// End the current piece so the next byte starts a new one; answer the bytes written out so
    /// far (where the next piece starts), or `None` when the writer does not cut.
    fn cut(&mut self) -> io::Result<Option<u64>>;
}

/// A zstd encoder (multithreaded when asked) whose frames can be ended at chosen raw offsets.
/// The output is an ordinary zstd stream of concatenated frames (`zstd -d` reads it whole).
pub struct FramedZstd<W: Write> {
    enc: Encoder<'static>,
    out: W,
    buf: Vec<u8>,
    written: u64,
}

const OUT_BUF: usize = 256 << 10;

impl<W: Write> FramedZstd<W> {
    pub fn new(out: W, level: i32, threads: u32, job_size: u32) -> io::Result<Self> {
        let mut enc = Encoder::new(level)?;
        if threads > 0 {
            enc.set_parameter(CParameter::NbWorkers(threads))?;
            enc.set_parameter(CParameter::JobSize(job_size))?;
        }
        Ok(Self { enc, out, buf: Vec::with_capacity(OUT_BUF), written: 0 })
    }

    fn drain(&mut self, n: usize) -> io::Result<()> {
        self.out.write_all(&self.buf[..n])?;
        self.written += n as u64;
        Ok(())
    }

    fn end_frame(&mut self) -> io::Result<()> {
        loop {
            self.buf.clear();
            let mut ob = OutBuffer::around(&mut self.buf);
            let remaining = self.enc.finish(&mut ob, false)?;
            let n = ob.pos();
            self.drain(n)?;
            if remaining == 0 {
                return self.enc.reinit();
            }
        }
    }

    /// End the last frame and hand back the writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.end_frame()?;
        Ok(self.out)
    }
}

impl<W: Write> Write for FramedZstd<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut input = InBuffer::around(data);
        while input.pos < data.len() {
            self.buf.clear();
            let mut ob = OutBuffer::around(&mut self.buf);
            self.enc.run(&mut input, &mut ob)?;
            let n = ob.pos();
            self.drain(n)?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<W: Write> FrameWrite for FramedZstd<W> {
    fn cut(&mut self) -> io::Result<Option<u64>> {
        self.end_frame()?;
        Ok(Some(self.written))
    }
}

/// What the tap read from the stream.
#[derive(Debug)]
pub struct Tapped {
    /// The archive, or why it could not be read (the backup goes on; its counts come from
    /// `count(*)` instead).
    pub archive: std::result::Result<Archive, Error>,
    /// Where frames start, raw and stored; empty when the stored stream was not cut.
    pub frames: Vec<Frame>,
}

/// Feeds the scanner and cuts frames at block starts.
pub struct Tap {
    scanner: Scanner,
    broken: Option<Error>,
    frames: Vec<Frame>,
    cut: bool,
}

impl Tap {
    /// `cut`: whether the writer's frames are to be cut and recorded (not for encrypted streams,
    /// whose stored offsets are not the compressed ones).
    pub fn new(cut: bool) -> Self {
        Self { scanner: Scanner::new(), broken: None, frames: Vec::new(), cut }
    }

    /// Pass `data` (the next raw bytes) to `out`, reading it on the way.
    pub fn write(&mut self, data: &[u8], out: &mut dyn FrameWrite) -> io::Result<()> {
        if self.broken.is_some() {
            return out.write_all(data);
        }
        let base = self.scanner.position();
        if let Err(e) = self.scanner.feed(data) {
            tracing::warn!(error = %e, "the archive could not be read as it streamed; row counts come from count(*)");
            self.broken = Some(e);
            self.frames.clear();
            return out.write_all(data);
        }
        let starts = self.scanner.take_block_starts();
        if !self.cut || starts.is_empty() {
            return out.write_all(data);
        }
        let mut from = 0usize;
        for start in starts {
            let last_raw = self.frames.last().map_or(0, |f| f.raw_offset);
            let first_block = self.frames.len() <= 1;
            if !(first_block || start - last_raw >= FRAME_MIN_RAW) {
                continue;
            }
            let at = (start - base) as usize;
            out.write_all(&data[from..at])?;
            from = at;
            if let Some(stored) = out.cut()? {
                if self.frames.is_empty() {
                    self.frames.push(Frame { raw_offset: 0, stored_offset: 0 });
                }
                self.frames.push(Frame { raw_offset: start, stored_offset: stored });
            }
        }
        out.write_all(&data[from..])
    }

    pub fn finish(self) -> Tapped {
        let archive = match self.broken {
            Some(e) => Err(e),
            None => self.scanner.finish(),
        };
        let frames = if archive.is_ok() { self.frames } else { Vec::new() };
        Tapped { archive, frames }
    }
}

/// A no-cut writer for streams that are not cut (uncompressed, pg_dump-compressed, encrypted).
pub struct Uncut<'a, W: Write + ?Sized>(pub &'a mut W);

impl<W: Write + ?Sized> Write for Uncut<'_, W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.0.write(data)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl<W: Write + ?Sized> FrameWrite for Uncut<'_, W> {
    fn cut(&mut self) -> io::Result<Option<u64>> {
        Ok(None)
    }
}
