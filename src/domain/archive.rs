//! pg_dump's custom-format archive (`pg_dump -Fc`, as written to a pipe), read as it streams by:
//! the header, the table of contents, and per data block its dump id, its raw offset and length,
//! and for `TABLE DATA` the exact number of COPY rows.
//!
//! Pure and incremental: [`Scanner::feed`] takes the stream in slices split anywhere, and never
//! holds more than the header and TOC bytes it has not parsed yet (data is counted and passed
//! over, never kept). Hostile input gives an error, never a panic, and never an allocation sized
//! by a length the input declares.
//!
//! The layout, from PostgreSQL's `pg_backup_archiver.c` and `pg_backup_custom.c` (archive versions
//! 1.10 to 1.16; pg_dump 15 writes 1.14, 16 writes 1.15, 17 and 18 write 1.16):
//! - An *int* is a sign byte (non-zero: negative) then `int_size` bytes, little-endian. A *string*
//!   is an int length (negative: NULL) then that many bytes. An *offset* is a flag byte then
//!   `off_size` bytes, little-endian.
//! - Header: `PGDMP`, the version bytes (major, minor, revision), `int_size`, `off_size`, the format
//!   (1 = custom), the compression (1.15+: one algorithm byte; before: an int level), seven ints of
//!   the creation time, the database name, the server's version and pg_dump's version (1.10+).
//! - TOC: an int count, then per entry: dump id, has-data flag, table oid and oid (as strings),
//!   tag, desc, section (1.11+), definition, drop statement, COPY statement, namespace, tablespace
//!   (1.10+), table access method (1.14+), relkind (an int, 1.16+), owner, `"false"` (1.9+), the
//!   dependencies (strings up to a NULL), then the data offset (an offset; "not set" on a pipe).
//! - Data, in TOC order: a block type byte (1 = `BLK_DATA`, 3 = `BLK_BLOBS`), the dump id, then
//!   length-prefixed chunks ended by a zero length. A `BLK_BLOBS` block holds, per large object,
//!   its oid then its chunks ended by a zero length, and ends with oid 0. The stream ends after
//!   the last block.
//!
//! Rows: in COPY text format every row ends with a newline and a newline inside a value is
//! written as the two characters `\n`, so an uncompressed (`-Z0`) `TABLE DATA` block holds exactly
//! as many rows as newline bytes. Compressed archives get offsets but no counts.

use crate::domain::error::{Error, Result};
use std::collections::HashMap;

/// The block type of table data.
pub const BLK_DATA: u8 = 1;
/// The block type of large objects.
pub const BLK_BLOBS: u8 = 3;
/// The format byte of a custom-format archive.
const FORMAT_CUSTOM: u8 = 1;
/// The oldest and newest archive minor versions (major 1) this reader knows.
const MIN_MINOR: u8 = 10;
const MAX_MINOR: u8 = 16;
/// The longest string the header or TOC may declare (a function body, a view definition).
const MAX_STRING: i64 = 1 << 30;

/// The archive's header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Major, minor, revision: `(1, 16, 0)`.
    pub version: (u8, u8, u8),
    pub int_size: u8,
    pub off_size: u8,
    /// Whether pg_dump compressed the data itself (then no rows are counted).
    pub compressed: bool,
    pub database: Option<String>,
    pub server_version: Option<String>,
    pub dump_version: Option<String>,
}

/// One TOC entry (the fields pgvault uses).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TocEntry {
    pub dump_id: i32,
    /// The entry has a data block (a `TABLE DATA` or `BLOBS` entry).
    pub has_data: bool,
    pub desc: String,
    pub namespace: Option<String>,
    pub tag: String,
    pub owner: Option<String>,
    /// `COPY … FROM stdin;` for `TABLE DATA`.
    pub copy_stmt: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockKind {
    /// `BLK_DATA`: a table's rows.
    TableData,
    /// `BLK_BLOBS`: large objects.
    LargeObjects,
}

/// One data block, where it lies in the raw stream and what it held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataBlock {
    pub dump_id: i32,
    pub kind: BlockKind,
    /// Raw offset of the block's type byte.
    pub offset: u64,
    /// Raw bytes from the type byte to the end of the closing zero length, inclusive.
    pub length: u64,
    /// COPY rows, for uncompressed table data with a COPY statement.
    pub rows: Option<u64>,
    /// Large objects in a `BLK_BLOBS` block.
    pub large_objects: u64,
}

/// Everything read from a whole archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Archive {
    pub header: Header,
    /// Raw bytes of the header and the TOC: the data starts here.
    pub toc_length: u64,
    pub toc: Vec<TocEntry>,
    pub blocks: Vec<DataBlock>,
}

impl Archive {
    /// The TOC entry of a block.
    pub fn entry(&self, dump_id: i32) -> Option<&TocEntry> {
        self.toc.iter().find(|e| e.dump_id == dump_id)
    }
}

/// Read a whole archive held in memory.
pub fn scan(bytes: &[u8]) -> Result<Archive> {
    let mut s = Scanner::new();
    s.feed(bytes)?;
    s.finish()
}

/// Why a parse of the buffered header/TOC bytes stopped.
enum Stop {
    /// This many bytes (from the start of the buffer) are needed before trying again.
    Incomplete(usize),
    Bad(Error),
}

type Parse<T> = std::result::Result<T, Stop>;

fn bad(message: String) -> Stop {
    Stop::Bad(Error::permanent(message))
}

/// A reader over buffered header/TOC bytes.
struct Cur<'a> {
    b: &'a [u8],
    p: usize,
    int_size: usize,
}

impl Cur<'_> {
    fn take(&mut self, n: usize) -> Parse<&[u8]> {
        let end = self.p.checked_add(n).ok_or_else(|| bad("archive: length out of range".into()))?;
        if end > self.b.len() {
            return Err(Stop::Incomplete(end));
        }
        let s = &self.b[self.p..end];
        self.p = end;
        Ok(s)
    }

    fn byte(&mut self) -> Parse<u8> {
        Ok(self.take(1)?[0])
    }

    fn int(&mut self) -> Parse<i64> {
        let raw = self.take(1 + self.int_size)?;
        int_value(raw).map_err(Stop::Bad)
    }

    /// A string, kept (`Some(Some(..))`), NULL (`Some(None)` when kept), or passed over.
    fn string(&mut self, keep: bool) -> Parse<Option<String>> {
        let len = self.int()?;
        if len < 0 {
            return Ok(None);
        }
        if len > MAX_STRING {
            return Err(bad(format!("archive: a string of {len} bytes in the TOC is longer than any pg_dump writes")));
        }
        let s = self.take(len as usize)?;
        Ok(keep.then(|| String::from_utf8_lossy(s).into_owned()))
    }
}

/// The value of an int's bytes (sign byte first).
fn int_value(raw: &[u8]) -> Result<i64> {
    let mut v: u64 = 0;
    for (i, b) in raw[1..].iter().enumerate() {
        v |= (*b as u64) << (8 * i);
    }
    let v = i64::try_from(v).map_err(|_| Error::permanent("archive: an integer is out of range"))?;
    Ok(if raw[0] != 0 { -v } else { v })
}

/// The last bytes of a block's COPY data, and how many there were.
#[derive(Debug, Clone, Copy, Default)]
struct Tail {
    last: [u8; 8],
    len: u64,
}

impl Tail {
    fn push(&mut self, chunk: &[u8]) {
        let n = chunk.len().min(8);
        self.last.copy_within(n.., 0);
        self.last[8 - n..].copy_from_slice(&chunk[chunk.len() - n..]);
        self.len += chunk.len() as u64;
    }

    fn last(&self) -> Option<u8> {
        (self.len > 0).then_some(self.last[7])
    }

    /// The newlines of pg_dump's end-of-data marker: it ends a table's COPY data with a `\.` line
    /// and two empty lines (`\.\n\n\n`). A row can never be the line `\.` (COPY escapes a
    /// backslash as `\\`), so the marker is recognised by its line alone.
    fn terminator_newlines(&self) -> u64 {
        let held = self.len.min(8) as usize;
        let bytes = &self.last[8 - held..];
        for marker in [&b"\\.\n\n\n"[..], &b"\\.\n"[..]] {
            if bytes.ends_with(marker) {
                let before = bytes.len() - marker.len();
                if self.len == marker.len() as u64 || (before > 0 && bytes[before - 1] == b'\n') {
                    return marker.iter().filter(|b| **b == b'\n').count() as u64;
                }
            }
        }
        0
    }
}

/// What the data machine expects next.
#[derive(Debug, Clone, Copy)]
enum Want {
    /// A block type byte, or the end of the stream.
    BlockType,
    /// The dump id of a block of this kind.
    DumpId(BlockKind),
    /// A chunk length (zero ends the block, or the large object).
    ChunkLen,
    /// A large object's oid (zero ends the block).
    LoOid,
    /// This many payload bytes of the current chunk.
    Payload(u64),
}

/// An int being read across slices.
#[derive(Debug, Clone, Copy, Default)]
struct IntAcc {
    buf: [u8; 9],
    have: usize,
}

enum Phase {
    /// Header and TOC bytes are buffered and parsed entry by entry.
    Front,
    Data,
}

/// The incremental reader. Feed it the stream, then [`Scanner::finish`].
pub struct Scanner {
    phase: Phase,
    /// Absolute offset of the next byte fed.
    pos: u64,
    /// Header/TOC bytes not parsed yet, starting at absolute offset `pending_base`.
    pending: Vec<u8>,
    pending_base: u64,
    /// Do not parse again before `pending` holds this many bytes.
    need: usize,
    header: Option<Header>,
    toc_left: Option<i64>,
    toc: Vec<TocEntry>,
    by_id: HashMap<i32, usize>,
    toc_length: u64,
    want: Want,
    int: IntAcc,
    /// The block being read, not yet in `blocks`.
    current: Option<DataBlock>,
    /// Whether the current block's rows are counted, its payload bytes and the last of them.
    counting: bool,
    tail: Tail,
    in_lo: bool,
    blocks: Vec<DataBlock>,
    seen: Vec<bool>,
    /// Raw offsets where blocks started since the last [`Scanner::take_block_starts`].
    starts: Vec<u64>,
    failed: Option<String>,
}

impl Default for Scanner {
    fn default() -> Self {
        Self::new()
    }
}

impl Scanner {
    pub fn new() -> Self {
        Self {
            phase: Phase::Front,
            pos: 0,
            pending: Vec::new(),
            pending_base: 0,
            need: 0,
            header: None,
            toc_left: None,
            toc: Vec::new(),
            by_id: HashMap::new(),
            toc_length: 0,
            want: Want::BlockType,
            int: IntAcc::default(),
            current: None,
            counting: false,
            tail: Tail::default(),
            in_lo: false,
            blocks: Vec::new(),
            seen: Vec::new(),
            starts: Vec::new(),
            failed: None,
        }
    }

    /// Raw bytes fed so far.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Raw length of header and TOC, once the TOC has been read.
    pub fn toc_length(&self) -> Option<u64> {
        matches!(self.phase, Phase::Data).then_some(self.toc_length)
    }

    /// The raw offsets where data blocks started since the last call (the first block's start is
    /// also the end of the TOC).
    pub fn take_block_starts(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.starts)
    }

    /// Read the next slice of the stream. After an error every later call fails the same way.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<()> {
        if let Some(e) = &self.failed {
            return Err(Error::permanent(e.clone()));
        }
        let r = self.feed_inner(bytes);
        if let Err(e) = &r {
            self.failed = Some(e.message().to_string());
        }
        self.pos += bytes.len() as u64;
        r
    }

    fn feed_inner(&mut self, bytes: &[u8]) -> Result<()> {
        match self.phase {
            Phase::Data => self.data(bytes, self.pos),
            Phase::Front => {
                // The magic is checked at once, so anything else is refused at its first bytes.
                let magic = b"PGDMP";
                if self.pending_base == 0 && self.pending.len() < magic.len() {
                    let have = self.pending.len();
                    let n = (magic.len() - have).min(bytes.len());
                    if bytes[..n] != magic[have..have + n] {
                        return Err(Error::permanent("archive: not a pg_dump custom-format archive (no PGDMP magic)"));
                    }
                }
                self.pending.extend_from_slice(bytes);
                if self.pending.len() < self.need {
                    return Ok(());
                }
                let consumed = self.parse_front()?;
                self.pending_base += consumed as u64;
                if matches!(self.phase, Phase::Data) {
                    let rest = std::mem::take(&mut self.pending);
                    let base = self.pending_base;
                    self.data(&rest[consumed..], base)
                } else {
                    self.pending.drain(..consumed);
                    self.need = self.need.saturating_sub(consumed);
                    Ok(())
                }
            }
        }
    }

    /// Parse what the buffer holds of header and TOC; answer the bytes consumed.
    fn parse_front(&mut self) -> Result<usize> {
        let mut consumed = 0;
        loop {
            let int_size = self.header.as_ref().map_or(0, |h| h.int_size as usize);
            let mut cur = Cur { b: &self.pending[consumed..], p: 0, int_size };
            let step: Parse<bool> = if let Some(header) = &self.header
                && self.toc_left > Some(0)
            {
                parse_entry(&mut cur, header).and_then(|e| {
                    if self.by_id.insert(e.dump_id, self.toc.len()).is_some() {
                        return Err(bad(format!("archive: the TOC lists dump id {} twice", e.dump_id)));
                    }
                    self.toc.push(e);
                    self.toc_left = self.toc_left.map(|n| n - 1);
                    Ok(true)
                })
            } else if self.header.is_none() {
                parse_header(&mut cur).map(|h| {
                    self.header = Some(h);
                    true
                })
            } else if self.toc_left.is_none() {
                cur.int().and_then(|n| {
                    if n < 0 {
                        return Err(bad(format!("archive: the TOC says it has {n} entries")));
                    }
                    self.toc_left = Some(n);
                    Ok(true)
                })
            } else {
                Ok(false)
            };
            match step {
                Ok(true) => consumed += cur.p,
                Ok(false) => {
                    self.toc_length = self.pending_base + consumed as u64;
                    self.seen = vec![false; self.toc.len()];
                    self.phase = Phase::Data;
                    return Ok(consumed);
                }
                Err(Stop::Incomplete(n)) => {
                    self.need = consumed + n;
                    return Ok(consumed);
                }
                Err(Stop::Bad(e)) => return Err(e),
            }
        }
    }

    /// Read data bytes starting at absolute offset `base`.
    fn data(&mut self, bytes: &[u8], base: u64) -> Result<()> {
        let int_size = self.header.as_ref().map_or(4, |h| h.int_size as usize);
        let mut i = 0;
        while i < bytes.len() {
            match self.want {
                Want::Payload(left) => {
                    let take = left.min((bytes.len() - i) as u64) as usize;
                    let chunk = &bytes[i..i + take];
                    if self.counting {
                        let n = memchr::memchr_iter(b'\n', chunk).count() as u64;
                        if let Some(b) = self.current.as_mut() {
                            b.rows = b.rows.map(|r| r + n);
                        }
                        self.tail.push(chunk);
                    }
                    i += take;
                    let left = left - take as u64;
                    self.want = if left == 0 { Want::ChunkLen } else { Want::Payload(left) };
                }
                Want::BlockType => {
                    let t = bytes[i];
                    let kind = match t {
                        BLK_DATA => BlockKind::TableData,
                        BLK_BLOBS => BlockKind::LargeObjects,
                        other => {
                            return Err(Error::permanent(format!(
                                "archive: unknown data block type {other} at raw offset {}",
                                base + i as u64
                            )));
                        }
                    };
                    let offset = base + i as u64;
                    self.starts.push(offset);
                    self.current =
                        Some(DataBlock { dump_id: 0, kind, offset, length: 0, rows: None, large_objects: 0 });
                    i += 1;
                    self.want = Want::DumpId(kind);
                }
                want => {
                    // An int: straight from the slice when it is all there, else across slices.
                    let value = if self.int.have == 0 && bytes.len() - i > int_size {
                        let v = int_value(&bytes[i..i + 1 + int_size])?;
                        i += 1 + int_size;
                        v
                    } else {
                        let n = (1 + int_size - self.int.have).min(bytes.len() - i);
                        self.int.buf[self.int.have..self.int.have + n].copy_from_slice(&bytes[i..i + n]);
                        self.int.have += n;
                        i += n;
                        if self.int.have < 1 + int_size {
                            continue;
                        }
                        self.int.have = 0;
                        int_value(&self.int.buf[..1 + int_size])?
                    };
                    self.on_int(want, value, base + i as u64)?;
                }
            }
        }
        Ok(())
    }

    /// An int of the data section was read; `end` is the absolute offset just after it.
    fn on_int(&mut self, want: Want, value: i64, end: u64) -> Result<()> {
        let block = self.current.as_mut().expect("an int is read inside a block");
        match want {
            Want::DumpId(kind) => {
                let id = i32::try_from(value).ok().filter(|id| *id > 0);
                let Some((id, index)) = id.and_then(|id| self.by_id.get(&id).map(|i| (id, *i))) else {
                    return Err(Error::permanent(format!(
                        "archive: data block at raw offset {} names dump id {value}, which the TOC does not list",
                        block.offset
                    )));
                };
                let entry = &self.toc[index];
                if !entry.has_data || self.seen[index] {
                    return Err(Error::permanent(format!(
                        "archive: unexpected data block for dump id {id} ({} {:?}) at raw offset {}",
                        entry.desc, entry.tag, block.offset
                    )));
                }
                self.seen[index] = true;
                block.dump_id = id;
                let compressed = self.header.as_ref().is_some_and(|h| h.compressed);
                self.counting = kind == BlockKind::TableData
                    && !compressed
                    && entry.copy_stmt.as_deref().is_some_and(|s| !s.trim().is_empty());
                block.rows = self.counting.then_some(0);
                self.tail = Tail::default();
                self.in_lo = false;
                self.want = match kind {
                    BlockKind::TableData => Want::ChunkLen,
                    BlockKind::LargeObjects => Want::LoOid,
                };
            }
            Want::LoOid => {
                if value == 0 {
                    self.end_block(end)?;
                } else {
                    block.large_objects += 1;
                    self.in_lo = true;
                    self.want = Want::ChunkLen;
                }
            }
            Want::ChunkLen => {
                if value < 0 {
                    return Err(Error::permanent(format!(
                        "archive: a chunk of dump id {} declares a negative length ({value})",
                        block.dump_id
                    )));
                }
                if value > 0 {
                    self.want = Want::Payload(value as u64);
                } else if block.kind == BlockKind::LargeObjects && self.in_lo {
                    self.in_lo = false;
                    self.want = Want::LoOid;
                } else {
                    self.end_block(end)?;
                }
            }
            Want::BlockType | Want::Payload(_) => unreachable!("not an int"),
        }
        Ok(())
    }

    fn end_block(&mut self, end: u64) -> Result<()> {
        let mut block = self.current.take().expect("inside a block");
        if self.counting {
            if self.tail.last().is_some_and(|b| b != b'\n') {
                return Err(Error::permanent(format!(
                    "archive: the table data of dump id {} ends inside a row (no final newline)",
                    block.dump_id
                )));
            }
            block.rows = block.rows.map(|r| r - self.tail.terminator_newlines());
        }
        block.length = end - block.offset;
        self.blocks.push(block);
        self.want = Want::BlockType;
        Ok(())
    }

    /// The stream has ended: it must end between blocks, after the whole TOC.
    pub fn finish(self) -> Result<Archive> {
        if let Some(e) = self.failed {
            return Err(Error::permanent(e));
        }
        let at = self.pos;
        match (&self.phase, self.want) {
            (Phase::Front, _) => {
                Err(Error::permanent(format!("archive: the stream ends inside the header or TOC (after {at} bytes)")))
            }
            (Phase::Data, Want::BlockType) => Ok(Archive {
                header: self.header.expect("read before the data"),
                toc_length: self.toc_length,
                toc: self.toc,
                blocks: self.blocks,
            }),
            (Phase::Data, _) => {
                let id = self.current.map_or(0, |b| b.dump_id);
                Err(Error::permanent(format!(
                    "archive: the stream ends inside the data block of dump id {id} (after {at} bytes)"
                )))
            }
        }
    }
}

fn parse_header(cur: &mut Cur<'_>) -> Parse<Header> {
    let magic = cur.take(5)?;
    if magic != b"PGDMP" {
        return Err(bad("archive: not a pg_dump custom-format archive (no PGDMP magic)".into()));
    }
    let (major, minor, rev) = (cur.byte()?, cur.byte()?, cur.byte()?);
    if major != 1 || !(MIN_MINOR..=MAX_MINOR).contains(&minor) {
        return Err(Stop::Bad(
            Error::permanent(format!("archive: unsupported archive version {major}.{minor}")).with_hint(format!(
                "pgvault reads archive versions 1.{MIN_MINOR} to 1.{MAX_MINOR} (pg_dump 9.0 to 18)"
            )),
        ));
    }
    let int_size = cur.byte()?;
    if !(1..=8).contains(&int_size) {
        return Err(bad(format!("archive: integer size {int_size} is not supported")));
    }
    cur.int_size = int_size as usize;
    let off_size = cur.byte()?;
    if !(1..=8).contains(&off_size) {
        return Err(bad(format!("archive: offset size {off_size} is not supported")));
    }
    let format = cur.byte()?;
    if format != FORMAT_CUSTOM {
        return Err(bad(format!("archive: format {format} is not the custom format")));
    }
    let compressed = if minor >= 15 { cur.byte()? != 0 } else { cur.int()? != 0 };
    for _ in 0..7 {
        cur.int()?; // the creation time
    }
    let database = cur.string(true)?;
    let server_version = cur.string(true)?;
    let dump_version = cur.string(true)?;
    Ok(Header { version: (major, minor, rev), int_size, off_size, compressed, database, server_version, dump_version })
}

fn parse_entry(cur: &mut Cur<'_>, h: &Header) -> Parse<TocEntry> {
    let minor = h.version.1;
    let dump_id = cur.int()?;
    let dump_id = i32::try_from(dump_id)
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| bad(format!("archive: TOC entry id {dump_id} out of range")))?;
    let has_data = cur.int()? != 0;
    cur.string(false)?; // table oid
    cur.string(false)?; // oid
    let tag = cur.string(true)?.unwrap_or_default();
    let desc = cur.string(true)?.unwrap_or_default();
    if minor >= 11 {
        cur.int()?; // section
    }
    cur.string(false)?; // definition
    cur.string(false)?; // drop statement
    let copy_stmt = cur.string(true)?;
    let namespace = cur.string(true)?;
    cur.string(false)?; // tablespace
    if minor >= 14 {
        cur.string(false)?; // table access method
    }
    if minor >= 16 {
        cur.int()?; // relkind
    }
    let owner = cur.string(true)?;
    cur.string(false)?; // "false" (WITH OIDS)
    // Dependencies, up to a NULL string.
    loop {
        let len = cur.int()?;
        if len < 0 {
            break;
        }
        if len > MAX_STRING {
            return Err(bad(format!("archive: a dependency of TOC entry {dump_id} declares {len} bytes")));
        }
        cur.take(len as usize)?;
    }
    cur.byte()?; // the data offset's flag
    cur.take(h.off_size as usize)?;
    Ok(TocEntry { dump_id, has_data, desc, namespace, tag, owner, copy_stmt })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny archive written the way pg_dump writes one (version 1.16, 4-byte ints).
    pub(crate) fn sample(rows: &[&[u8]]) -> Vec<u8> {
        let mut w = Writer { out: Vec::new() };
        w.out.extend_from_slice(b"PGDMP");
        w.out.extend_from_slice(&[1, 16, 0, 4, 8, 1, 0]);
        for v in [0, 1, 2, 3, 4, 126, 0] {
            w.int(v);
        }
        for s in ["db", "17.2", "17.2"] {
            w.str(Some(s));
        }
        w.int(3);
        w.entry(1, false, "ENCODING", "ENCODING", None, None);
        w.entry(2, false, "TABLE", "t", None, Some("public"));
        w.entry(3, true, "TABLE DATA", "t", Some("COPY public.t (a) FROM stdin;\n"), Some("public"));
        w.out.push(BLK_DATA);
        w.int(3);
        for r in rows {
            w.int(r.len() as i64);
            w.out.extend_from_slice(r);
        }
        w.int(0);
        w.out
    }

    struct Writer {
        out: Vec<u8>,
    }

    impl Writer {
        fn int(&mut self, v: i64) {
            self.out.push(u8::from(v < 0));
            self.out.extend_from_slice(&(v.unsigned_abs() as u32).to_le_bytes());
        }
        fn str(&mut self, s: Option<&str>) {
            match s {
                None => self.int(-1),
                Some(s) => {
                    self.int(s.len() as i64);
                    self.out.extend_from_slice(s.as_bytes());
                }
            }
        }
        fn entry(&mut self, id: i64, data: bool, desc: &str, tag: &str, copy: Option<&str>, ns: Option<&str>) {
            self.int(id);
            self.int(data as i64);
            self.str(Some("0"));
            self.str(Some("0"));
            self.str(Some(tag));
            self.str(Some(desc));
            self.int(1);
            self.str(Some(""));
            self.str(Some(""));
            self.str(copy);
            self.str(ns);
            self.str(Some(""));
            self.str(Some(""));
            self.int(0);
            self.str(Some("postgres"));
            self.str(Some("false"));
            self.str(Some("1"));
            self.str(None);
            self.out.push(if data { 1 } else { 3 });
            self.out.extend_from_slice(&[0; 8]);
        }
    }

    #[test]
    fn reads_a_sample_whole_and_in_every_split() {
        let bytes = sample(&[b"1\n", b"a\\nb\n", b"x\\\\\n"]);
        let whole = scan(&bytes).unwrap();
        assert_eq!(whole.toc.len(), 3);
        assert_eq!(whole.blocks.len(), 1);
        let b = &whole.blocks[0];
        assert_eq!((b.dump_id, b.rows, b.offset + b.length), (3, Some(3), bytes.len() as u64));
        assert_eq!(b.offset, whole.toc_length);
        assert_eq!(bytes[b.offset as usize], BLK_DATA);
        assert_eq!(whole.entry(3).unwrap().namespace.as_deref(), Some("public"));
        for cut in 0..bytes.len() {
            let mut s = Scanner::new();
            s.feed(&bytes[..cut]).unwrap();
            s.feed(&bytes[cut..]).unwrap();
            assert_eq!(s.finish().unwrap(), whole, "split at {cut}");
        }
        let mut s = Scanner::new();
        for b in &bytes {
            s.feed(std::slice::from_ref(b)).unwrap();
        }
        assert_eq!(s.take_block_starts(), vec![whole.toc_length]);
        assert_eq!(s.finish().unwrap(), whole, "byte by byte");
    }

    #[test]
    fn the_end_of_data_marker_is_not_a_row() {
        let rows = |data: &[&[u8]]| scan(&sample(data)).unwrap().blocks[0].rows;
        assert_eq!(rows(&[b"1\n", b"\\.\n\n\n"]), Some(1));
        assert_eq!(rows(&[b"\\.\n\n\n"]), Some(0), "an empty table");
        assert_eq!(rows(&[b"\n\n\n", b"\\.\n\n\n"]), Some(3), "rows of a table without columns are empty lines");
        assert_eq!(rows(&[b"\n\\.\n\n", b"\n"]), Some(1), "the marker split across chunks");
        assert_eq!(rows(&[b"\\\\.\n"]), Some(1), "a value that is a backslash and a dot is escaped: a row");
        assert_eq!(rows(&[b"x\\.\n"]), Some(1));
    }

    #[test]
    fn a_cut_stream_is_an_error_naming_where() {
        let bytes = sample(&[b"1\n"]);
        let e = scan(&bytes[..bytes.len() - 2]).unwrap_err();
        assert!(e.message().contains("ends inside the data block of dump id 3"), "{e}");
        let e = scan(&bytes[..20]).unwrap_err();
        assert!(e.message().contains("inside the header or TOC"), "{e}");
        let e = scan(b"PGDMQ").unwrap_err();
        assert!(e.message().contains("no PGDMP magic"), "{e}");
        let unterminated = sample(&[b"1\n", b"2"]);
        assert!(scan(&unterminated).unwrap_err().message().contains("ends inside a row"));
    }

    #[test]
    fn an_unknown_block_or_dump_id_is_refused() {
        let mut bytes = sample(&[]);
        let toc_end = scan(&bytes).unwrap().toc_length as usize;
        bytes[toc_end] = 7;
        assert!(scan(&bytes).unwrap_err().message().contains("unknown data block type 7"));
        let mut bytes = sample(&[]);
        bytes[toc_end + 2] = 9; // dump id 9
        assert!(scan(&bytes).unwrap_err().message().contains("dump id 9"));
    }
}
