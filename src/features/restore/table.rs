//! `pgvault restore --table SCHEMA.TABLE`: one table from a backup into an existing database,
//! reading from Blob only the archive's header and TOC and that table's data block (ranged
//! reads of whole blocks, each block's SHA-256 checked before a byte of it is used).
//!
//! The manifest's archive index says where the table's data lies in the raw archive and where
//! the zstd frames start, so each range is read from a frame start and decompressed on its own.
//! pg_restore then reads a short archive: the header and TOC, then that one block (it reads a
//! pipe in order and finds the block next). An encrypted backup, or one without an index (made
//! before pgvault recorded it), is read whole through the verified reader instead, and the
//! report says so.
//!
//! Never damages an existing table: a table that exists with rows is refused; an existing empty
//! one gets the rows only (`--data-only`); a missing one is created from the backup's definition
//! (columns and types only, as `pg_restore -t` does: no indexes, constraints, defaults or
//! triggers). All in one transaction (`--single-transaction`): a failure leaves nothing.

use super::*;
use crate::config::context::unknown_server;
use crate::domain::manifest::Compression;
use crate::seams::tools::{Failure, Stdin, ToolRun};
use bytes::BytesMut;
use futures::StreamExt;
use sha2::Digest;
use std::io::Write;

/// What to restore where.
#[derive(Debug, Clone)]
pub struct TableRestore {
    pub server: String,
    pub database: String,
    pub backup: BackupChoice,
    pub schema: String,
    pub table: String,
    pub target_server: String,
    pub target_database: String,
    pub no_owner: bool,
    pub no_privileges: bool,
}

/// What a table restore did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TableReport {
    pub backup: String,
    pub table: String,
    pub target: String,
    /// `ranged` (header, TOC and the table's block only) or `whole`.
    pub read: String,
    pub read_reason: String,
    /// Stored bytes fetched from the store, against the backup's whole stored size.
    pub stored_bytes_read: u64,
    pub stored_bytes: u64,
    /// `created` (definition and rows) or `loaded` (rows into the existing empty table).
    pub action: String,
    pub rows: i64,
    /// Whether the rows were checked against the backup's count.
    pub rows_checked: bool,
}

/// Restore one table. See the module documentation for what it touches.
pub async fn restore_table(ctx: &Ctx, req: &TableRestore) -> Result<TableReport> {
    let name = format!("{}.{}", quote_ident(&req.schema), quote_ident(&req.table));
    let what = format!("database {:?} of server {:?}", req.database, req.server);
    let all = catalog::list(ctx.store.as_ref(), Some(&req.server), Some(&req.database)).await?;
    let backups: Vec<&Manifest> =
        all.iter().filter(|m| m.kind == BackupKind::Database && m.database == req.database).collect();
    let (m, _) = plan::choose(&backups, &req.backup, &what)?;
    if m.archive_format != "custom" {
        return Err(Error::permanent(format!("backup {:?} is not a pg_dump custom archive", m.id)));
    }
    let target = format!("database {:?} on server {:?}", req.target_database, req.target_server);
    let fail = |e: Error| e.context(format!("restore table {name} of backup {:?} into {target}", m.id));

    // Where to read: the table's block by range, or the whole stream, and why.
    let entry = match (&m.archive_index, &m.encryption) {
        (Some(index), None) => Some(index.table(&req.schema, &req.table).ok_or_else(|| {
            fail(Error::permanent(format!("the backup has no data for table {name}")).with_hint(
                "name a table with rows of its own (a partition, not its partitioned parent) as schema.table, case as stored",
            ))
        })?),
        _ => None,
    };
    let read_reason = match (entry, &m.encryption) {
        (Some(_), _) => "the manifest's archive index maps the table's data to stored blocks".to_string(),
        (None, Some(_)) => "the backup is encrypted: its stored offsets are not mapped, so it is read whole".into(),
        (None, None) => "the manifest has no archive index (made before pgvault recorded one): read whole".into(),
    };
    let key = catalog::data_key(ctx, m).await.map_err(fail)?;

    // The target: an existing database, and no table with rows under that name.
    let server = ctx.settings.server(&req.target_server).ok_or_else(|| unknown_server(&req.target_server))?;
    let spec = ctx.conn_spec(&req.target_server, &req.target_database).await?;
    let client = pg::connect(&spec)
        .await
        .map_err(|e| fail(e.with_hint("the target database must exist: restore --table never creates one")))?;
    let (_, version_num) = pg::server_version(&client).await?;
    let target_major = pg::major_of(version_num);
    if m.tool.major > target_major {
        return Err(fail(Error::permanent(format!(
            "the backup was made by pg_dump {}; the target runs PostgreSQL {target_major}: a logical backup restores \
             into the same or a newer major version only",
            m.tool.major
        ))));
    }
    let action = target_state(&client, &req.schema, &req.table, &name).await.map_err(fail)?;
    let tool = pg::pick_tool(
        "pg_restore",
        &ctx.settings.bin_dirs_for(server),
        target_major,
        &format!("server {:?}", req.target_server),
    )
    .await?;

    let mut args = vec![
        format!("--dbname={}", req.target_database),
        "--no-password".into(),
        "--exit-on-error".into(),
        "--single-transaction".into(),
        format!("--schema={}", req.schema),
        format!("--table={}", req.table),
    ];
    if action == "loaded" {
        args.push("--data-only".into());
    }
    if req.no_owner {
        args.push("--no-owner".into());
    }
    if req.no_privileges {
        args.push("--no-privileges".into());
    }
    let mut run = ToolRun::new(&tool, &args).conn(&spec).stdin(Stdin::Pipe).spawn(&ctx.cancel)?;
    let stdin = run.take_stdin().expect("stdin is piped");
    let compression = m.compression;
    let (pumped, fed, exit) = match (entry, &m.archive_index) {
        (Some(entry), Some(index)) => {
            let raw = [0..index.toc_bytes, entry.raw_offset..entry.raw_offset + entry.raw_length];
            let plan: Vec<(std::ops::Range<u64>, u64)> =
                raw.iter().map(|r| index.stored_range(r.start, r.end, m.stored_bytes)).collect();
            let windows: Vec<(u64, u64)> =
                raw.iter().zip(&plan).map(|(r, (_, from))| (r.start - from, r.end - r.start)).collect();
            let (tx, rx) = mpsc::channel::<(usize, Bytes)>(2);
            let consumer = tokio::task::spawn_blocking(move || feed_windows(rx, compression, &windows, stdin));
            let pump = async move {
                let mut read = 0;
                for (i, (stored, _)) in plan.iter().enumerate() {
                    read += verified_range(ctx, m, stored.clone(), i, &tx).await?;
                }
                Ok::<u64, Error>(read)
            };
            tokio::join!(pump, consumer, run.wait())
        }
        _ => {
            let stream =
                ctx.store.read(&m.data_blob).await.map_err(|e| e.context(format!("read backup {:?}", m.id)))?;
            let (tx, rx) = mpsc::channel::<Bytes>(2);
            // pg_restore may stop reading once it has the table; the rest is still checked.
            let consumer = tokio::task::spawn_blocking(move || catalog::feed(rx, compression, stdin, true));
            tokio::join!(catalog::plain_blocks(m, key.as_ref(), stream, tx), consumer, run.wait())
        }
    };
    let exit = exit?;
    if let Err(e) = &pumped
        && (e.is_permanent() || !catalog::consumer_stopped(e))
    {
        return Err(fail(pumped.expect_err("checked")));
    }
    exit.verdict().map_err(|f| fail(Failure::into_error(f)))?;
    let stored_bytes_read = pumped.map_err(fail)?;
    fed.map_err(|e| Error::transient(format!("restore stream task failed: {e}")))?
        .map_err(|e| fail(Error::permanent(format!("decompress into pg_restore: {e}"))))?;

    // The rows, against the backup's count (the archive's, else the manifest's exact one).
    let rows: i64 = client
        .query_one(&format!("SELECT count(*) FROM ONLY {name}"), &[])
        .await
        .map_err(|e| fail(pg::query_error(&format!("count rows of {name}"), e)))?
        .get(0);
    let expected = entry.and_then(|e| e.rows).map(|r| r as i64).or_else(|| {
        m.row_counts
            .as_ref()
            .filter(|c| c.is_exact() && c.method != "exact") // `exact` counts of a parent include its children
            .and_then(|c| c.tables.iter().find(|t| t.schema == req.schema && t.table == req.table).map(|t| t.rows))
    });
    if let Some(n) = expected
        && n != rows
    {
        return Err(fail(Error::permanent(format!(
            "table {name} has {rows} rows after the restore, the backup says {n}; the restored rows were committed"
        ))));
    }
    Ok(TableReport {
        backup: m.id.clone(),
        table: name,
        target,
        read: if entry.is_some() { "ranged".into() } else { "whole".into() },
        read_reason,
        stored_bytes_read,
        stored_bytes: m.stored_bytes,
        action: action.into(),
        rows,
        rows_checked: expected.is_some(),
    })
}

/// `created` when the table is missing, `loaded` when it exists empty; refuse a missing schema or
/// a table that has rows.
async fn target_state(client: &tokio_postgres::Client, schema: &str, table: &str, name: &str) -> Result<&'static str> {
    let q = |e| pg::query_error("inspect the target", e);
    let schema_exists =
        client.query_opt("SELECT 1 FROM pg_namespace WHERE nspname = $1", &[&schema]).await.map_err(q)?;
    if schema_exists.is_none() {
        return Err(Error::permanent(format!("schema {} does not exist in the target", quote_ident(schema)))
            .with_hint(format!(
                "CREATE SCHEMA {} first (restore --table restores one table only)",
                quote_ident(schema)
            )));
    }
    let exists = client
        .query_opt(
            "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2",
            &[&schema, &table],
        )
        .await
        .map_err(q)?
        .is_some();
    if !exists {
        return Ok("created");
    }
    let has_rows: bool = client
        .query_one(&format!("SELECT EXISTS (SELECT 1 FROM {name})"), &[])
        .await
        .map_err(|e| pg::query_error(&format!("read table {name}"), e))?
        .get(0);
    if has_rows {
        return Err(Error::permanent(format!("table {name} exists in the target and has rows: nothing was restored"))
            .with_hint("restore into another database, or empty the table first (the rows are then loaded into it)"));
    }
    Ok("loaded")
}

/// Read the whole blocks covering `stored`, check each block's SHA-256, and send the part of
/// `stored` it holds as piece `piece`, then an empty end marker. Answers the stored bytes read.
async fn verified_range(
    ctx: &Ctx,
    m: &Manifest,
    stored: std::ops::Range<u64>,
    piece: usize,
    tx: &mpsc::Sender<(usize, Bytes)>,
) -> Result<u64> {
    let stopped = || Error::transient(format!("reading backup {:?}{}", m.id, catalog::CONSUMER_STOPPED));
    let mut starts = Vec::with_capacity(m.blocks.len());
    let mut at = 0u64;
    for b in &m.blocks {
        starts.push(at);
        at += b.size;
    }
    let first = starts.iter().rposition(|s| *s <= stored.start).unwrap_or(0);
    let last = starts.iter().rposition(|s| *s < stored.end).unwrap_or(first).max(first);
    let (from, to) = (starts[first], starts[last] + m.blocks[last].size);
    let mut stream =
        ctx.store.read_range(&m.data_blob, from..to).await.map_err(|e| e.context(format!("read backup {:?}", m.id)))?;
    let mut buf = BytesMut::new();
    for (index, (offset, block)) in starts.iter().copied().zip(&m.blocks).enumerate().take(last + 1).skip(first) {
        let corrupt = |why: String| {
            Error::permanent(format!("backup {:?} is corrupt: block {index} (bytes {offset}..) {why}", m.id))
                .with_hint("restore from another backup; `pgvault verify --all` checks them all")
        };
        while (buf.len() as u64) < block.size {
            match stream.next().await {
                Some(chunk) => buf.extend_from_slice(&chunk?),
                None => return Err(corrupt(format!("is short: the blob ends {} bytes into it", buf.len()))),
            }
        }
        let data = buf.split_to(block.size as usize).freeze();
        let got = hex::encode(sha2::Sha256::digest(&data));
        if got != block.sha256 {
            return Err(corrupt(format!("has SHA-256 {got}, the manifest says {}", block.sha256)));
        }
        let lo = stored.start.max(offset) - offset;
        let hi = stored.end.min(offset + block.size).saturating_sub(offset);
        if lo < hi {
            tx.send((piece, data.slice(lo as usize..hi as usize))).await.map_err(|_| stopped())?;
        }
    }
    tx.send((piece, Bytes::new())).await.map_err(|_| stopped())?;
    Ok(to - from)
}

/// The blocking consumer of the ranged read: each piece decompressed on its own (it starts at a
/// frame), `skip` bytes dropped and `take` bytes written to `out`. Answers the raw bytes written.
fn feed_windows(
    mut rx: mpsc::Receiver<(usize, Bytes)>,
    compression: Compression,
    windows: &[(u64, u64)],
    mut out: impl Write,
) -> std::io::Result<u64> {
    let mut total = 0;
    for (piece, (skip, take)) in windows.iter().enumerate() {
        let mut win = Window { out: &mut out, skip: *skip, left: *take };
        {
            let mut sink: Box<dyn Write + '_> = match compression {
                Compression::Zstd { .. } => Box::new(zstd::stream::write::Decoder::new(&mut win)?),
                Compression::None | Compression::PgDump => Box::new(&mut win),
            };
            while let Some((i, b)) = rx.blocking_recv() {
                if b.is_empty() && i == piece {
                    break;
                }
                sink.write_all(&b)?;
            }
            sink.flush()?;
        }
        if win.left > 0 {
            return Err(std::io::Error::other(format!("piece {piece} of the archive is {} bytes short", win.left)));
        }
        total += take;
    }
    out.flush()?;
    Ok(total)
}

/// Drops `skip` bytes, passes `left` bytes on, and drops the rest.
struct Window<'a, W: Write> {
    out: &'a mut W,
    skip: u64,
    left: u64,
}

impl<W: Write> Write for Window<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut data = buf;
        let skipped = self.skip.min(data.len() as u64) as usize;
        self.skip -= skipped as u64;
        data = &data[skipped..];
        let pass = self.left.min(data.len() as u64) as usize;
        self.out.write_all(&data[..pass])?;
        self.left -= pass as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod table_tests {
    use super::*;

    #[test]
    fn windows_cut_each_piece_from_its_own_frames() {
        // Two pieces, each starting at a frame: skip and take inside them.
        let a = zstd::encode_all(&b"0123456789"[..], 3).unwrap();
        let b = [zstd::encode_all(&b"abcdef"[..], 3).unwrap(), zstd::encode_all(&b"ghij"[..], 3).unwrap()].concat();
        let (tx, rx) = mpsc::channel(8);
        for (i, p) in [a, b].into_iter().enumerate() {
            tx.try_send((i, Bytes::from(p))).unwrap();
            tx.try_send((i, Bytes::new())).unwrap();
        }
        drop(tx);
        let mut out = Vec::new();
        let n = feed_windows(rx, Compression::Zstd { level: 3 }, &[(0, 4), (4, 5)], &mut out).unwrap();
        assert_eq!((n, out.as_slice()), (9, &b"0123efghi"[..]));
    }
}
