//! Phase 2 of a backup in parts: the data and COPY parts, up to `jobs` at once. Each is streamed
//! from storage through the verified reader (and the envelope, when encrypted), decompressed, and
//! loaded by its own `pg_restore --data-only` (data parts) or `COPY <table> (<columns>) FROM
//! STDIN` on its own connection (COPY parts). No index, constraint or trigger exists yet, so
//! the parts load in any order; the first part that fails stops the others.

use super::*;
use futures::{SinkExt, StreamExt};

pub(super) async fn run(run: &PartsRun<'_>, parts: &[&Part]) -> Result<Vec<PartReport>> {
    type Loading<'a> = std::pin::Pin<Box<dyn Future<Output = Result<PartReport>> + Send + 'a>>;
    let mut waiting = parts.iter();
    let mut running: futures::stream::FuturesUnordered<Loading<'_>> = Default::default();
    let mut done = Vec::with_capacity(parts.len());
    loop {
        while running.len() < run.jobs.max(1) as usize
            && let Some(p) = waiting.next()
        {
            running.push(Box::pin(timed(run, p)));
        }
        match running.next().await {
            // The first failure returns; dropping the others stops their pg_restore (killed) and
            // abandons their COPY.
            Some(report) => done.push(report?),
            None => return Ok(done),
        }
    }
}

async fn timed(run: &PartsRun<'_>, p: &Part) -> Result<PartReport> {
    let started = std::time::Instant::now();
    let rows = load(run, p).await.map_err(|e| run.in_part(p, e))?;
    Ok(PartReport { seconds: started.elapsed().as_secs_f64(), rows, ..report_of(p) })
}

async fn load(run: &PartsRun<'_>, part: &Part) -> Result<Option<u64>> {
    let view = run.m.part_view(part);
    match part.spec.kind {
        PartKind::Data => {
            let args = run.args_with("--data-only");
            feed_pg_restore(run.ctx, &view, run.key, run.tool, run.spec, args, Method::Stream).await?;
            Ok(None)
        }
        PartKind::Copy => copy_in(run, part, &view).await.map(Some),
        PartKind::Schema => Err(Error::permanent(format!("backup {:?}: the schema part is not a data part", run.m.id))),
    }
}

/// `COPY … FROM STDIN` of one COPY part. The COPY is finished (committed) only after every block
/// and the whole part's hash matched, the stream decompressed whole and to the manifest's size:
/// on any failure it is abandoned (dropping the sink aborts it).
async fn copy_in(run: &PartsRun<'_>, part: &Part, view: &Manifest) -> Result<u64> {
    let table = part.spec.table.as_ref().expect("checked: a COPY part names its table");
    let columns: Vec<String> = part.spec.columns.iter().map(|c| quote_ident(c)).collect();
    let sql = format!("COPY {} ({}) FROM STDIN", table.sql(), columns.join(", "));
    let what = format!("load COPY part {:?} into table {}", part.spec.name, table.sql());
    let client = pg::connect(run.spec).await?;
    if let Some(role) = run.role {
        client
            .batch_execute(&format!("SET ROLE {}", quote_ident(role)))
            .await
            .map_err(|e| pg::query_error(&format!("{what}: set role {role:?}"), e))?;
    }
    let sink = client.copy_in::<_, Bytes>(&sql).await.map_err(|e| pg::query_error(&what, e))?;
    let mut sink = Box::pin(sink);
    let stream = read_with_progress(run.ctx, view, "restore").await?;
    let (tx, rx) = mpsc::channel::<Bytes>(2);
    let (ptx, prx) = mpsc::channel::<Bytes>(2);
    let compression = view.compression;
    let consumer = tokio::task::spawn_blocking(move || {
        let mut out = std::io::BufWriter::with_capacity(256 << 10, ChannelWriter(ptx));
        let n = catalog::feed(rx, compression, &mut out, false)?;
        std::io::Write::flush(&mut out)?;
        Ok::<_, std::io::Error>(n)
    });
    let send = async {
        // Owned here, so a refused COPY drops the receiver and the feeder stops (broken pipe).
        let mut prx = prx;
        while let Some(b) = prx.recv().await {
            sink.send(b).await?;
        }
        Ok::<_, tokio_postgres::Error>(())
    };
    // pg_restore is killed on shutdown by its runner; the COPY is abandoned here.
    let (pumped, fed, sent) = tokio::select! {
        joined = async { tokio::join!(catalog::plain_blocks(view, run.key, stream, tx), consumer, send) } => joined,
        _ = run.ctx.cancel.cancelled() => {
            return Err(Error::transient(format!("{what}: cancelled by shutdown")));
        }
    };
    // Precedence as for pg_restore: corruption; then the server's refusal (which stops the
    // feeder, whose own error only says so); then decompression; then reading the backup.
    if let Err(e) = &pumped
        && e.is_permanent()
    {
        return Err(pumped.expect_err("checked"));
    }
    sent.map_err(|e| pg::query_error(&what, e))?;
    let raw = fed
        .map_err(|e| Error::transient(format!("{what}: stream task failed: {e}")))?
        .map_err(|e| Error::permanent(format!("backup {:?}: decompress: {e}", view.id)))?;
    pumped?;
    if raw != view.raw_bytes {
        return Err(Error::permanent(format!(
            "backup {:?} decompresses to {raw} bytes, the manifest says {}",
            view.id, view.raw_bytes
        )));
    }
    let rows = sink.as_mut().finish().await.map_err(|e| pg::query_error(&what, e))?;
    if let Some(expected) =
        part.row_counts.as_ref().filter(|r| r.method == "exact").map(|r| r.tables.iter().map(|t| t.rows).sum::<i64>())
        && rows != expected as u64
    {
        return Err(Error::permanent(format!(
            "{what}: the server loaded {rows} rows, the backup's manifest says {expected}"
        )));
    }
    Ok(rows)
}

/// The blocking decompressor's output, handed to the async COPY as it comes. A receiver that went
/// away (the server refused the COPY) is a broken pipe, as for pg_restore's stdin.
struct ChannelWriter(mpsc::Sender<Bytes>);

impl std::io::Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .blocking_send(Bytes::copy_from_slice(buf))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the COPY stopped"))?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
