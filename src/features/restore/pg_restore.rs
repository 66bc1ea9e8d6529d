//! Feeding pg_restore: verified blocks (and, when encrypted, authenticated chunks), decompressed, into pg_restore's stdin (or a scratch
//! copy for `--jobs`), its verdict, and the row counts checked afterwards.

use super::*;
use crate::seams::pg::ToolBinary;
use crate::seams::tools::{Failure, Stdin, ToolRun};

/// The size asked for pg_restore's stdin pipe.
const PIPE_SIZE: usize = 1 << 20;

/// Open a backup's data for reading, with progress (bytes as stored, rate, elapsed, time left
/// against the manifest's stored size) logged at the steady interval of `ctx.progress`, or a bar
/// on a terminal. The final line is logged when the stream ends.
pub(super) async fn read_with_progress(ctx: &Ctx, m: &Manifest, what: &str) -> Result<crate::seams::store::ByteStream> {
    let stream = ctx.store.read(&m.data_blob).await.map_err(|e| e.context(format!("read backup {:?}", m.id)))?;
    let progress =
        crate::seams::progress::Progress::start(ctx.progress, format!("{what} {}", m.id), Some(m.stored_bytes));
    Ok(with_progress(stream, progress))
}

/// Count a stream's bytes into `progress`, and finish it when the stream ends.
pub(super) fn with_progress(
    stream: crate::seams::store::ByteStream,
    progress: crate::seams::progress::Progress,
) -> crate::seams::store::ByteStream {
    use futures::StreamExt;
    let end = progress.clone();
    stream
        .inspect(move |r| {
            if let Ok(b) = r {
                progress.add(b.len() as u64);
            }
        })
        .chain(
            futures::stream::once(async move {
                end.finish();
                None
            })
            .filter_map(futures::future::ready),
        )
        .boxed()
}

/// Read the backup through the verified reader, decompress, and restore into the temporary
/// database, streaming or (parallel) from a local copy.
pub(super) async fn feed_pg_restore(
    ctx: &Ctx,
    m: &Manifest,
    key: Option<&crate::domain::envelope::DataKey>,
    tool: &ToolBinary,
    spec: &ConnSpec,
    mut args: Vec<String>,
    method: Method,
) -> Result<()> {
    let stream = read_with_progress(ctx, m, "restore").await?;
    let (tx, rx) = mpsc::channel::<Bytes>(catalog::QUEUED);
    let compression = m.compression;
    let raw = match method {
        Method::Stream => {
            let mut run = ToolRun::new(tool, &args).conn(spec).stdin(Stdin::Pipe).spawn(&ctx.cancel)?;
            let stdin = run.take_stdin().expect("stdin is piped");
            // A 1 MiB pipe (Linux's default limit for a process without privileges; 64 KiB is
            // the default size): zstd writes 128 KiB at a time, and a small pipe woke the
            // feeder and pg_restore for every few pages. Best effort: a smaller pipe still works.
            if let Err(e) = rustix::pipe::fcntl_setpipe_size(&stdin, PIPE_SIZE) {
                tracing::debug!(error = %e, "pg_restore's stdin keeps its default pipe size");
            }
            let consumer = tokio::task::spawn_blocking(move || catalog::feed(rx, compression, stdin, false));
            let (pumped, fed, exit) = tokio::join!(catalog::plain_blocks(m, key, stream, tx), consumer, run.wait());
            // Precedence: shutdown, then corruption (pg_restore saw only verified bytes and then
            // an early end), then a failed read of the backup (pg_restore then saw its input end
            // early: "input file is too short" is a consequence, and would read as permanent),
            // then pg_restore's own failure, then the reader's note that pg_restore went away.
            let exit = exit?;
            if let Err(e) = &pumped
                && (e.is_permanent() || !catalog::consumer_stopped(e))
            {
                return Err(pumped.expect_err("checked"));
            }
            exit.verdict().map_err(Failure::into_error)?;
            pumped?;
            fed.map_err(|e| Error::transient(format!("restore stream task failed: {e}")))?
                .map_err(|e| Error::permanent(format!("backup {:?}: decompress into pg_restore: {e}", m.id)))?
        }
        Method::Parallel(jobs) => {
            let path = ctx
                .settings
                .restore_scratch_dir
                .join(format!("pgvault-restore-{}.dump", &uuid::Uuid::new_v4().simple().to_string()[..12]));
            let file = ScratchFile::create(&path)?;
            let out = file.file.try_clone().map_err(|e| Error::transient(format!("scratch file: {e}")))?;
            let consumer = tokio::task::spawn_blocking(move || {
                let mut w = std::io::BufWriter::with_capacity(1 << 20, out);
                let n = catalog::feed(rx, compression, &mut w, false)?;
                std::io::Write::flush(&mut w)?;
                Ok::<_, std::io::Error>(n)
            });
            let (pumped, fed) = tokio::join!(catalog::plain_blocks(m, key, stream, tx), consumer);
            let fed = fed.map_err(|e| Error::transient(format!("restore download task failed: {e}")))?;
            // Corruption first; then a failed write (which stops the reader, so its own error
            // would only say that the consumer stopped); then reading errors.
            let raw = match (pumped, fed) {
                (Err(e), _) if e.is_permanent() => return Err(e),
                (_, Err(e)) => {
                    return Err(Error::transient(format!("write scratch file {}: {e}", path.display())));
                }
                (Err(e), _) => return Err(e),
                (Ok(_), Ok(raw)) => raw,
            };
            args.push(format!("--jobs={jobs}"));
            args.push(path.display().to_string());
            let exit = ToolRun::new(tool, &args).conn(spec).spawn(&ctx.cancel)?.wait().await?;
            drop(file);
            exit.verdict().map_err(Failure::into_error)?;
            raw
        }
        Method::Parts(_) => {
            return Err(Error::permanent(format!("backup {:?} is in parts: it is restored part by part", m.id)));
        }
    };
    if raw != m.raw_bytes {
        return Err(Error::permanent(format!(
            "backup {:?} decompresses to {raw} bytes, the manifest says {}",
            m.id, m.raw_bytes
        )));
    }
    Ok(())
}

/// A scratch file readable only by us, removed when dropped.
pub(super) struct ScratchFile {
    path: PathBuf,
    file: std::fs::File,
}

impl ScratchFile {
    fn create(path: &Path) -> Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| Error::transient(format!("create scratch file {}: {e}", path.display())))?;
        Ok(Self { path: path.to_path_buf(), file })
    }
}

impl Drop for ScratchFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// With exact counts in the manifest, every table must have exactly as many rows.
pub(super) async fn check_row_counts(spec: &ConnSpec, m: &Manifest) -> Result<usize> {
    let Some(counts) = m.row_counts.as_ref().filter(|r| r.is_exact()) else { return Ok(0) };
    let client = pg::connect(spec).await?;
    for t in &counts.tables {
        // `exact` counted with inheritance children (count(*) of the parent); the stream counts
        // each table's own rows.
        let only = if counts.method == "exact" { "" } else { "ONLY " };
        let sql = format!("SELECT count(*) FROM {only}{}.{}", quote_ident(&t.schema), quote_ident(&t.table));
        let rows: i64 = client
            .query_one(&sql, &[])
            .await
            .map_err(|e| {
                Error::permanent(format!(
                    "check restored table {}.{}: {}",
                    quote_ident(&t.schema),
                    quote_ident(&t.table),
                    redact(&pg::error_text(&e))
                ))
            })?
            .get(0);
        if rows != t.rows {
            return Err(Error::permanent(format!(
                "restored table {}.{} has {rows} rows, the backup's manifest says {}",
                quote_ident(&t.schema),
                quote_ident(&t.table),
                t.rows
            )));
        }
    }
    Ok(counts.tables.len())
}
