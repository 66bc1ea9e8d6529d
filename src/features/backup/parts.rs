//! A database backed up in parts, all in one exported snapshot (format version 3): the
//! coordinator reads the catalog in its snapshot, plans ([`crate::domain::parts::plan`]), runs
//! the parts (`pg_dump --snapshot` for schema and data parts, `COPY … TO STDOUT` in a transaction
//! that imported the snapshot for COPY parts) up to `PGVAULT_BACKUP_JOBS` at once through the
//! same compress/encrypt/block/upload pipeline as one archive, and writes the set manifest last.
//!
//! Ordering (DESIGN.md "Manifest format version 3 (parts)"): each part's blob is committed only
//! after its own checks passed; the snapshot's transaction stays open until every part ended; the
//! set manifest is created (create-if-absent) only after every part was committed. A failed run
//! deletes the parts it committed. A part that failed transiently is tried again on its own while
//! the snapshot lives; a lost snapshot fails the part with a named reason, and the job is retried
//! as a whole (a new snapshot cannot be mixed with parts of the old one: the set would no longer
//! be one consistent moment).

use super::{BlockSizer, Outcome, Producer, estimated_counts, exact_counts, stream_counts, upload_blocks};
use crate::config::context::Ctx;
use crate::config::settings::{PartsRun, RowCountMode};
use crate::domain::envelope::{self, DataKey};
use crate::domain::error::{Error, Kind, Result};
use crate::domain::jobs::BackupJob;
use crate::domain::layout::{self, BackupKind, BackupPaths};
use crate::domain::manifest::{self, Encryption, Manifest, RowCounts, TableCount, Tool};
use crate::domain::parts::{
    self, Catalog, CatalogTable, Layout, Part, PartKind, PartSpec, PlanOptions, SequenceRef, TableRef,
};
use crate::features::row_counts;
use crate::seams::failpoint;
use crate::seams::keys::WrappedKey;
use crate::seams::pg::{self, ConnSpec, ToolBinary};
use crate::seams::progress::Progress;
use crate::seams::store::{CreateOutcome, block_id};
use crate::seams::tools::{Stdout, ToolRun};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use time::OffsetDateTime;
use tokio::sync::mpsc;

/// Tries of one part (the first and the retries), while the snapshot lives.
const PART_TRIES: usize = 3;

/// What the single-archive run has set up when it hands a database over to the parts.
pub(super) struct SetRun<'a> {
    pub ctx: &'a Ctx,
    pub job: &'a BackupJob,
    pub paths: &'a BackupPaths,
    pub database: &'a str,
    /// The coordinator's connection, inside the `REPEATABLE READ READ ONLY` transaction whose
    /// snapshot was exported; it is held open until every part ended.
    pub client: &'a tokio_postgres::Client,
    pub snapshot: String,
    pub conn: ConnSpec,
    pub tool: ToolBinary,
    /// pg_dump's common arguments: format, compression, `--no-password`, lock timeout and
    /// `--snapshot`.
    pub args: Vec<String>,
    pub sealing: Option<(DataKey, WrappedKey)>,
    pub started_at: OffsetDateTime,
    pub server_version: String,
    pub server_version_num: u32,
    pub database_properties: Option<crate::domain::dbprops::DatabaseProperties>,
}

/// What running one part needs: [`run_part`] builds nothing else. The coordinator makes it from
/// its [`SetRun`]; a part worker of the `backup-parts` queue (`super::fanout`) from the message,
/// with its own login and pg_dump.
pub(super) struct PartEnv<'a> {
    pub ctx: &'a Ctx,
    pub job: &'a BackupJob,
    pub paths: &'a BackupPaths,
    pub database: &'a str,
    pub snapshot: String,
    pub conn: ConnSpec,
    pub tool: ToolBinary,
    /// pg_dump's common arguments (as [`SetRun::args`]).
    pub args: Vec<String>,
    /// The coordinator's compression (the set manifest records one for every part).
    pub compression: crate::domain::manifest::Compression,
}

impl SetRun<'_> {
    pub(super) fn part_env(&self) -> PartEnv<'_> {
        PartEnv {
            ctx: self.ctx,
            job: self.job,
            paths: self.paths,
            database: self.database,
            snapshot: self.snapshot.clone(),
            conn: self.conn.clone(),
            tool: self.tool.clone(),
            args: self.args.clone(),
            compression: self.ctx.settings.compression,
        }
    }
}

/// Whether a database goes in parts: larger than `PGVAULT_PARALLEL_ABOVE_MIB`, measured in the
/// coordinator's transaction.
pub(super) async fn wanted(ctx: &Ctx, client: &tokio_postgres::Client) -> Result<bool> {
    let Some(above) = ctx.settings.parallel_above else { return Ok(false) };
    let size: i64 = client
        .query_one("SELECT pg_database_size(current_database())", &[])
        .await
        .map_err(|e| pg::query_error("read the database's size", e))?
        .get(0);
    Ok(size as u64 > above)
}

/// Why a part that lost its snapshot failed: the exporting transaction is gone. `kind` says who
/// fails: the job in the coordinator's own process (transient: the host delivers it again, in a
/// new snapshot), or one part message on a part worker (permanent: that message can never run).
pub(super) fn snapshot_gone(snapshot: &str, kind: Kind) -> Error {
    let message = format!("snapshot {snapshot} no longer exists (the coordinator ended)");
    let e = match kind {
        Kind::Transient => Error::transient(message),
        Kind::Permanent => Error::permanent(message),
    };
    e.with_hint("nothing of this attempt is published; the job is retried as a whole in a new snapshot")
}

pub(super) fn lost_snapshot(e: &Error) -> bool {
    e.to_string().contains("invalid snapshot identifier")
}

/// Run the parts and publish the set manifest.
pub(super) async fn run(r: SetRun<'_>) -> Result<Outcome> {
    let ctx = r.ctx;
    let job = r.job;
    let settings = &ctx.settings;
    let what = format!("back up {}", job.describe());
    let catalog = read_catalog(r.client, r.server_version_num).await.map_err(|e| e.context(&what))?;
    let plan = parts::plan(&catalog, PlanOptions { data_parts: settings.backup_jobs, ..Default::default() });
    for reason in &plan.reasons {
        tracing::info!(job = %job.job_id, what = %job.describe(), reason = %reason, "backup plan");
    }
    let attempt = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    tracing::info!(
        job = %job.job_id, what = %job.describe(), snapshot = %r.snapshot, parts = plan.parts.len(),
        jobs = settings.backup_jobs, "backup in parts started"
    );
    failpoint::hit("backup.parts-planned");
    let key = r.sealing.as_ref().map(|(k, _)| k);
    let env = r.part_env();
    let runs: futures::future::BoxFuture<'_, Vec<(usize, Result<Part>)>> = match settings.parts_run {
        PartsRun::Process => {
            // Boxed: the futures borrow the run, and a plain `map` of async blocks trips the
            // compiler's Send inference for the handler's future.
            let futures: Vec<futures::future::BoxFuture<'_, (usize, Result<Part>)>> = plan
                .parts
                .iter()
                .enumerate()
                .map(|(i, spec)| {
                    let env = &env;
                    let attempt = attempt.as_str();
                    let run: futures::future::BoxFuture<'_, (usize, Result<Part>)> =
                        Box::pin(async move { (i, run_part_retrying(env, spec, attempt, key).await) });
                    run
                })
                .collect();
            Box::pin(futures::stream::iter(futures).buffer_unordered(settings.backup_jobs.max(1)).collect::<Vec<_>>())
        }
        // Each part on `backup-parts`, run by another instance; this one holds the snapshot.
        PartsRun::Queue => Box::pin(super::fanout::run_on_queue(&r, &plan.parts, &attempt)),
    };
    // As for one archive: `exact` counts in the snapshot while the parts run, `cross-check` each
    // table's own rows (as its COPY holds them) to compare with the parts' streams afterwards.
    let counts = async {
        match settings.row_counts {
            RowCountMode::Exact => exact_counts(r.client, false).await.map(Some),
            RowCountMode::CrossCheck => exact_counts(r.client, true).await.map(Some),
            RowCountMode::Estimate => estimated_counts(r.client).await.map(Some),
            RowCountMode::Stream | RowCountMode::Off => Ok(None),
        }
    };
    let (mut results, counts) = tokio::join!(runs, counts);
    results.sort_by_key(|(i, _)| *i);
    // Every part ended well: `stream` and `cross-check` read the parts' own counts (each part
    // carries them, wherever it ran), still in the snapshot's transaction (a fallback to count(*)
    // counts the very snapshot the parts read). A failed part is the cause; counts are not taken.
    let counts = match counts {
        Ok(counted) if results.iter().all(|(_, p)| p.is_ok()) && !ctx.cancel.is_cancelled() => {
            let done: Vec<&Part> = results.iter().filter_map(|(_, p)| p.as_ref().ok()).collect();
            let read = |listed: &[(String, String)]| row_counts::from_parts(listed, &done);
            stream_counts(r.client, settings.row_counts, counted, job, read).await
        }
        counts => counts,
    };
    // Every part ended: the snapshot may go.
    let _ = r.client.batch_execute("COMMIT").await;

    let mut done = Vec::new();
    let mut failed = Vec::new();
    for (_, res) in results {
        match res {
            Ok(p) => done.push(p),
            Err(e) => failed.push(e),
        }
    }
    let counts = counts.map_err(|e| e.context(format!("{what}: count rows in the snapshot")));
    if !failed.is_empty() || counts.is_err() || ctx.cancel.is_cancelled() {
        delete_parts(ctx, &done).await;
        let e = if ctx.cancel.is_cancelled() {
            Error::transient(format!("{what}: cancelled by shutdown; nothing was published"))
        } else if !failed.is_empty() {
            let first = failed.iter().position(|e| e.is_permanent()).unwrap_or(0);
            failed.swap_remove(first)
        } else {
            counts.expect_err("a count failed")
        };
        tracing::error!(job = %job.job_id, what = %job.describe(), error = %e, "backup failed");
        return Err(e);
    }
    let row_counts = counts.expect("checked");
    let notes = created_since(r.client, &catalog).await;
    failpoint::hit("backup.parts-committed");

    let encryption = r.sealing.as_ref().map(|(_, w)| Encryption {
        algorithm: envelope::ALGORITHM.into(),
        chunk_size: envelope::DEFAULT_CHUNK_SIZE,
        key_id: w.key_id.clone(),
        wrap_algorithm: w.algorithm.clone(),
        wrapped_key: base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &w.wrapped),
    });
    let manifest = Manifest {
        format: manifest::FORMAT_NAME.into(),
        format_version: parts::FORMAT_VERSION_PARTS,
        pgvault_version: env!("CARGO_PKG_VERSION").into(),
        id: r.paths.id.clone(),
        kind: BackupKind::Database,
        job_id: job.job_id.clone(),
        server: job.server.clone(),
        database: r.database.to_string(),
        server_version: r.server_version.clone(),
        server_version_num: r.server_version_num,
        tool: Tool {
            name: "pg_dump".into(),
            version: r.tool.version.clone(),
            major: r.tool.major,
            args: r.args.clone(),
        },
        archive_format: parts::ARCHIVE_FORMAT_PARTS.into(),
        compression: settings.compression,
        encryption,
        data_blob: String::new(),
        raw_bytes: done.iter().map(|p| p.raw_bytes).sum(),
        stored_bytes: done.iter().map(|p| p.stored_bytes).sum(),
        sha256: String::new(),
        blocks: vec![],
        requested_at: job.requested_at,
        started_at: r.started_at,
        finished_at: OffsetDateTime::now_utc(),
        row_counts,
        databases: None,
        database_properties: r.database_properties.clone(),
        restore_hint: "in parts, one snapshot: restore the schema part's pre-data, then every data and copy part \
                       (any order, at once), then the schema part's post-data; each part's restore_hint says how"
            .into(),
        layout: Layout::Parts,
        snapshot: Some(r.snapshot.clone()),
        archive_index: None,
        parts: done,
        notes,
    };
    let tags = layout::tags(BackupKind::Database, &job.server, r.database, "manifest");
    match ctx.store.create(&r.paths.manifest, Bytes::from(manifest.to_json()), &tags).await {
        Ok(CreateOutcome::Created) => {
            failpoint::hit("backup.after-manifest");
            tracing::info!(
                job = %job.job_id, backup = %r.paths.id, raw_bytes = manifest.raw_bytes,
                stored_bytes = manifest.stored_bytes, parts = manifest.parts.len(), "backup committed"
            );
            Ok(Outcome::Created(Box::new(manifest)))
        }
        Ok(CreateOutcome::AlreadyExists) => {
            let existing = ctx.store.get(&r.paths.manifest).await?;
            if Manifest::from_json(&r.paths.manifest, &existing)?.data_blobs() == manifest.data_blobs() {
                return Ok(Outcome::Created(Box::new(manifest)));
            }
            delete_parts(ctx, &manifest.parts).await;
            Ok(Outcome::AlreadyDone { id: r.paths.id.clone() })
        }
        Err(e) => {
            delete_parts(ctx, &manifest.parts).await;
            Err(e.context(format!("write manifest {:?}", r.paths.manifest)))
        }
    }
}

/// Best effort: a leftover is an orphan of the job (`verify --all` names it).
async fn delete_parts(ctx: &Ctx, parts: &[Part]) {
    for p in parts {
        if let Err(e) = ctx.store.delete(&p.data_blob).await {
            tracing::warn!(blob = %p.data_blob, error = %e, "a committed part of a failed backup could not be removed (an orphan now)");
        }
    }
}

/// Tables that exist now but were not in the snapshot: not in this backup, and said so.
async fn created_since(client: &tokio_postgres::Client, catalog: &Catalog) -> Vec<String> {
    let Ok(rows) = client.query(pg::USER_TABLES_SQL, &[]).await else { return vec![] };
    let had: std::collections::HashSet<&TableRef> = catalog.tables.iter().map(|t| &t.table).collect();
    rows.iter()
        .map(|r| TableRef::new(r.get::<_, String>(0), r.get::<_, String>(1)))
        .filter(|t| !had.contains(t))
        .map(|t| format!("table {t} was created after the snapshot; it is not in this backup"))
        .collect()
}

async fn run_part_retrying(r: &PartEnv<'_>, spec: &PartSpec, attempt: &str, key: Option<&DataKey>) -> Result<Part> {
    let mut tries = 0;
    loop {
        tries += 1;
        match run_part(r, spec, attempt, key).await {
            Ok(p) => return Ok(p),
            // In this process the snapshot is lost only with the coordinator's own session (the
            // server ended it: a restart, a failover, an administrator): the job is tried again
            // as a whole, in a new snapshot, as the hint says.
            Err(e) if lost_snapshot(&e) => {
                return Err(snapshot_gone(&r.snapshot, Kind::Transient).context(format!("part {:?}", spec.name)));
            }
            Err(e) if e.is_permanent() || tries >= PART_TRIES || r.ctx.cancel.is_cancelled() => return Err(e),
            Err(e) => {
                tracing::warn!(job = %r.job.job_id, part = %spec.name, error = %e, tries, "part failed; trying it again in the same snapshot");
            }
        }
    }
}

/// Dump one part into its own blob and commit it. `attempt` names the blob (a part worker adds
/// its delivery to the coordinator's attempt).
pub(super) async fn run_part(r: &PartEnv<'_>, spec: &PartSpec, attempt: &str, key: Option<&DataKey>) -> Result<Part> {
    let ctx = r.ctx;
    let settings = &ctx.settings;
    let what = format!("back up {}: part {:?}", r.job.describe(), spec.name);
    let compression = r.compression;
    let mut ext = match spec.kind {
        PartKind::Copy => "copy".to_string(),
        PartKind::Schema | PartKind::Data => "dump".to_string(),
    };
    if compression.by_pgvault() {
        ext.push_str(".zst");
    }
    if key.is_some() {
        ext.push_str(".enc");
    }
    let blob = layout::part_blob(&r.paths.id, attempt, &spec.name, &ext);
    let envelope_id = parts::envelope_id(&r.paths.id, &spec.name);
    let seal = match key {
        Some(k) => Some((DataKey::from_bytes(k.expose())?, envelope_id.clone())),
        None => None,
    };
    let progress = Progress::start(ctx.progress, format!("backup {} part {}", r.job.describe(), spec.name), None);
    let (tx, rx) = mpsc::channel::<(usize, Bytes)>(1);
    let producer = Producer {
        seal,
        compression,
        zstd_threads: settings.zstd_threads,
        sizer: BlockSizer { base: settings.block_size },
        expect_magic: (spec.kind != PartKind::Copy).then_some(&b"PGDMP"[..]),
        progress: progress.clone(),
        // A data part's archive is read as it streams, as one archive's is: its rows and its
        // index; its zstd frames are cut at data blocks unless it is encrypted.
        tap: (spec.kind == PartKind::Data).then_some(key.is_none()),
    };
    let uploader = upload_blocks(ctx.store.clone(), blob.clone(), rx, settings.blocks_in_flight, ctx.cancel.clone());
    let lines = Arc::new(AtomicU64::new(0));
    let (command, uploaded, produced, source) = match spec.kind {
        PartKind::Schema | PartKind::Data => {
            let mut args = r.args.clone();
            args.extend(spec.pg_dump_args().expect("a pg_dump part"));
            let mut dump = ToolRun::new(&r.tool, &args).conn(&r.conn).stdout(Stdout::Pipe).spawn(&ctx.cancel)?;
            let stdout = dump.take_stdout().expect("stdout is piped");
            let produce = tokio::task::spawn_blocking(move || producer.run(stdout, tx));
            let (uploaded, produced) = tokio::join!(uploader, produce);
            let exit = dump.wait().await;
            let source = exit.and_then(|exit| {
                exit.verdict().map_err(|f| f.into_dump_error())?;
                Ok(())
            });
            (args, uploaded, produced, source)
        }
        PartKind::Copy => {
            let sql = spec.copy_sql().expect("a copy part names its table and range");
            let (btx, brx) = mpsc::channel::<std::io::Result<Bytes>>(2);
            let reader = ChannelReader { rx: brx, current: Bytes::new(), lines: lines.clone() };
            let produce = tokio::task::spawn_blocking(move || producer.run(reader, tx));
            let pump = copy_out(r, &sql, btx);
            let (uploaded, produced, source) = tokio::join!(uploader, produce, pump);
            (vec![sql], uploaded, produced, source)
        }
    };
    progress.finish();
    let produced = produced.map_err(|e| Error::transient(format!("{what}: stream task failed: {e}")));
    let checked = (|| {
        if ctx.cancel.is_cancelled() {
            return Err(Error::transient(format!("{what}: cancelled by shutdown; nothing was committed")));
        }
        // Root cause first, as for one archive (`check_run`): a failed upload closes the pipe,
        // which then kills pg_dump; the source's own failure leaves the pipeline intact.
        let uploaded = uploaded.map_err(|e| e.context(&what))?;
        let produced = produced?.map_err(|e| e.context(&what))?;
        source.map_err(|e| e.context(&what))?;
        if spec.kind != PartKind::Copy && produced.raw_bytes == 0 {
            return Err(Error::transient(format!("{what}: pg_dump wrote nothing")));
        }
        super::check_staged(&what, uploaded, &produced)?;
        Ok(produced)
    })();
    let mut produced = match checked {
        Ok(p) => p,
        Err(e) => {
            let _ = ctx.store.discard_staged(&blob).await;
            return Err(e);
        }
    };
    let ids: Vec<String> = (0..produced.blocks.len()).map(block_id).collect();
    ctx.store
        .commit_blocks(&blob, &ids, &layout::tags(BackupKind::Database, &r.job.server, r.database, "data"))
        .await
        .map_err(|e| e.context(format!("commit blob {blob:?}")))?;
    let (row_counts, archive_index) = match (spec.kind, produced.tapped.take()) {
        (PartKind::Copy, _) => {
            let tables = spec
                .table
                .iter()
                .map(|t| TableCount {
                    schema: t.schema.clone(),
                    table: t.table.clone(),
                    rows: lines.load(Ordering::Relaxed) as i64,
                })
                .collect();
            (Some(RowCounts { method: "exact".into(), tables }), None)
        }
        (_, Some(tapped)) => match tapped.archive {
            Ok(a) => (row_counts::part_rows(&a), Some(row_counts::index(&a, tapped.frames))),
            Err(_) => (None, None),
        },
        (_, None) => (None, None),
    };
    let file = blob.rsplit('/').next().unwrap_or(&blob).to_string();
    let encrypted_id = key.map(|_| r.paths.id.as_str());
    tracing::info!(job = %r.job.job_id, part = %spec.name, blob = %blob, raw_bytes = produced.raw_bytes, "part committed");
    Ok(Part {
        spec: spec.clone(),
        data_blob: blob,
        raw_bytes: produced.raw_bytes,
        stored_bytes: produced.stored_bytes,
        sha256: produced.sha256,
        blocks: produced.blocks,
        snapshot: r.snapshot.clone(),
        archive_format: spec.archive_format().into(),
        command,
        row_counts,
        archive_index,
        restore_hint: spec.restore_hint(&file, compression.by_pgvault(), encrypted_id),
    })
}

/// `COPY … TO STDOUT` in a transaction that imported the coordinator's snapshot, each piece sent
/// to the blocking producer. Row security off, as pg_dump does: a policy that would hide rows
/// fails the part, naming the table, rather than leaving rows out. Dates, intervals and floats
/// are written as pg_dump writes them (ISO, `postgres`, every digit), whatever `DateStyle` the
/// database or role sets: a restore parses them under its own settings. No statement or
/// transaction timeout of the role's ends a long COPY (pg_dump sets the same for its sessions).
async fn copy_out(r: &PartEnv<'_>, sql: &str, tx: mpsc::Sender<std::io::Result<Bytes>>) -> Result<()> {
    // On failure the channel just closes (the part is not committed: this error decides), so
    // the COPY's own error, not the producer's, is the one reported.
    let client = pg::connect(&r.conn).await?;
    let (_, server_version_num) = pg::server_version(&client).await?;
    let setup = format!(
        "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}; SET LOCAL row_security = off; \
         SET LOCAL DateStyle = ISO; SET LOCAL IntervalStyle = postgres; SET LOCAL extra_float_digits = 3; \
         SET LOCAL statement_timeout = 0{}",
        crate::domain::sql::quote_literal(&r.snapshot),
        if server_version_num >= 170000 { "; SET LOCAL transaction_timeout = 0" } else { "" }
    );
    client.batch_execute(&setup).await.map_err(|e| pg::query_error("import the snapshot", e))?;
    let stream = client.copy_out(sql).await.map_err(|e| pg::query_error("start the COPY", e))?;
    futures::pin_mut!(stream);
    // The server sends one message per row: gathered into batches, so the producer thread is
    // woken once per batch, not once per row (per-row hand-offs tripled the part's CPU).
    let mut batch = BytesMut::with_capacity(COPY_BATCH);
    while let Some(piece) = stream.next().await {
        let piece = piece.map_err(|e| pg::query_error("read the COPY", e))?;
        batch.extend_from_slice(&piece);
        // The producer ends (and says why) when the upload stops: stop reading then.
        if batch.len() >= COPY_BATCH {
            if tx.send(Ok(batch.split().freeze())).await.is_err() {
                return Ok(());
            }
            // Room for the next batch at once (reusing this buffer once the producer is done
            // with it), rather than regrowing from nothing by doubling.
            batch.reserve(COPY_BATCH);
        }
    }
    if !batch.is_empty() && tx.send(Ok(batch.freeze())).await.is_err() {
        return Ok(());
    }
    let _ = client.batch_execute("COMMIT").await;
    Ok(())
}

/// How much of a COPY's output is handed to the producer at a time.
const COPY_BATCH: usize = 256 << 10;

/// A blocking `Read` over the COPY's pieces, counting lines (rows, in COPY text format).
struct ChannelReader {
    rx: mpsc::Receiver<std::io::Result<Bytes>>,
    current: Bytes,
    lines: Arc<AtomicU64>,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(piece) => self.current = piece?,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        let piece = self.current.split_to(n);
        self.lines.fetch_add(memchr::memchr_iter(b'\n', &piece).count() as u64, Ordering::Relaxed);
        buf[..n].copy_from_slice(&piece);
        Ok(n)
    }
}

/// The relations with data, the sequences and whether there are large objects, read in the
/// coordinator's snapshot. Ordinary tables, partitions, inheritance children and unlogged tables;
/// not partitioned parents (no rows of their own), views, materialized views (refreshed by the
/// schema part's post-data), foreign tables, members of extensions, or system schemas.
async fn read_catalog(client: &tokio_postgres::Client, server_version_num: u32) -> Result<Catalog> {
    let not_generated = if server_version_num >= 120000 { "AND a.attgenerated = ''" } else { "" };
    let sql = format!(
        "SELECT n.nspname, c.relname, pg_table_size(c.oid)::bigint,
                (pg_relation_size(c.oid) / current_setting('block_size')::bigint)::bigint,
                coalesce((SELECT array_agg(a.attname::text ORDER BY a.attnum) FROM pg_attribute a
                          WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped {not_generated}),
                         '{{}}'::text[])
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relkind = 'r'
           AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%'
           AND n.nspname NOT LIKE 'pg\\_temp%'
           AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
         ORDER BY 1, 2"
    );
    let rows = client.query(&sql, &[]).await.map_err(|e| pg::query_error("list tables in the snapshot", e))?;
    let mut tables: Vec<CatalogTable> = rows
        .iter()
        .map(|row| CatalogTable {
            table: TableRef::new(row.get::<_, String>(0), row.get::<_, String>(1)),
            bytes: row.get::<_, i64>(2).max(0) as u64,
            pages: row.get::<_, i64>(3).max(0) as u64,
            columns: row.get(4),
            owned_sequences: vec![],
        })
        .collect();
    let seqs = client
        .query(
            "SELECT sn.nspname, s.relname, tn.nspname, t.relname, d.deptype::text
             FROM pg_class s JOIN pg_namespace sn ON sn.oid = s.relnamespace
             LEFT JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = s.oid
                  AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
             LEFT JOIN pg_class t ON t.oid = d.refobjid
             LEFT JOIN pg_namespace tn ON tn.oid = t.relnamespace
             WHERE s.relkind = 'S'
               AND sn.nspname NOT IN ('pg_catalog', 'information_schema') AND sn.nspname NOT LIKE 'pg\\_temp%'
               AND NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.classid = 'pg_class'::regclass AND e.objid = s.oid AND e.deptype = 'e')
             ORDER BY 1, 2",
            &[],
        )
        .await
        .map_err(|e| pg::query_error("list sequences in the snapshot", e))?;
    let mut sequences = Vec::new();
    for row in seqs {
        let seq = TableRef::new(row.get::<_, String>(0), row.get::<_, String>(1));
        let owner = match (row.get::<_, Option<String>>(2), row.get::<_, Option<String>>(3)) {
            (Some(s), Some(t)) => Some(TableRef::new(s, t)),
            _ => None,
        };
        let identity = row.get::<_, Option<String>>(4).as_deref() == Some("i");
        if let Some(owner) = &owner
            && let Some(t) = tables.iter_mut().find(|t| &t.table == owner)
        {
            t.owned_sequences.push(seq.clone());
        }
        sequences.push(SequenceRef { sequence: seq, identity_of: if identity { owner } else { None } });
    }
    let large_objects: bool = client
        .query_one("SELECT EXISTS (SELECT 1 FROM pg_largeobject_metadata)", &[])
        .await
        .map_err(|e| pg::query_error("look for large objects in the snapshot", e))?
        .get(0);
    Ok(Catalog { tables, sequences, large_objects })
}
