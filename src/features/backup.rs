//! The backup pipeline: pg_dump -> (zstd) -> fixed-width block ids staged with bounded
//! concurrency -> commit -> manifest.
//!
//! Ordering (see DESIGN.md): the data blob is committed only after pg_dump exited 0 with no error
//! on stderr and every byte read was staged; the manifest is created (create-if-absent) only after
//! the commit. Memory is about `(blocks_in_flight + 2) x block size` plus zstd's workers (about
//! 8 MiB each with 2 MiB jobs), whatever the database size.

use crate::config::settings::RowCountMode;
use crate::domain::envelope::{self, DataKey, EncryptWriter};
use crate::domain::error::{Error, Result};
use crate::domain::jobs::BackupJob;
use crate::domain::layout::{self, BackupKind};
use crate::domain::manifest::{self, Block, Compression, Encryption, Manifest, RowCounts, TableCount, Tool};
use crate::features::archive_stream::{FrameWrite, FramedZstd, Tap, Tapped, Uncut};
use crate::features::row_counts;
use crate::seams::failpoint;
use crate::seams::pg::{self};
use crate::seams::progress::Progress;
use crate::seams::store::{BlobStore, CreateOutcome, MAX_BLOCK_SIZE, MAX_BLOCKS};
use crate::seams::tools::{Exit, Stdout, ToolRun};
use bytes::Bytes;
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::sync::Arc;
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::context::{Ctx, unknown_server};

pub mod fanout;
pub mod parts;

/// What a run did.
#[derive(Debug)]
pub enum Outcome {
    Created(Box<Manifest>),
    /// A manifest for this job already exists (a redelivered message); nothing was written.
    AlreadyDone {
        id: String,
    },
}

/// Block sizes: `base` for the first 4,000 blocks, then doubling every 4,000 blocks up to
/// `max(base, 256 MiB)`, so a stream of unknown length stays under 50,000 blocks up to more than
/// 5 TiB stored, while small and medium databases use small blocks (and little memory).
#[derive(Debug, Clone, Copy)]
pub struct BlockSizer {
    pub base: usize,
}

impl BlockSizer {
    const STEP: usize = 4_000;
    const GROWN_CAP: usize = 256 << 20;

    pub fn size_for(&self, index: usize) -> usize {
        let cap = self.base.clamp(Self::GROWN_CAP, MAX_BLOCK_SIZE);
        let doublings = (index / Self::STEP).min(20) as u32;
        self.base.saturating_mul(1 << doublings).min(cap)
    }

    /// Total bytes that fit in [`MAX_BLOCKS`] blocks.
    pub fn capacity(&self) -> u64 {
        (0..MAX_BLOCKS).map(|i| self.size_for(i) as u64).sum()
    }
}

use crate::seams::store::block_id;

/// Run one backup job to completion (or to a clean failure).
pub async fn run(ctx: &Ctx, job: &BackupJob) -> Result<Outcome> {
    job.validate()?;
    let settings = &ctx.settings;
    let server = settings.server(&job.server).ok_or_else(|| unknown_server(&job.server))?;
    let database = job.database.clone().unwrap_or_default();
    let paths = layout::backup_paths(job.kind, &job.server, &database, job.requested_at, &job.job_id);
    if ctx.store.exists(&paths.manifest).await? {
        tracing::info!(backup = %paths.id, job = %job.job_id, "backup already exists; redelivered job ignored");
        return Ok(Outcome::AlreadyDone { id: paths.id });
    }
    if job.kind == BackupKind::Database
        && let Some(why) = server.leaves_out(&database)
    {
        return Err(Error::permanent(why));
    }
    let started_at = OffsetDateTime::now_utc();
    // The data key is made and wrapped before anything else: Key Vault unreachable fails the job
    // (transient, retried) before a dump starts, and the plain key lives only in this process.
    let sealing = match settings.encryption_key_for(server) {
        Some(key_id) => {
            let key = DataKey::generate()?;
            let wrapped = ctx
                .key_wrapper()?
                .wrap(key_id, &key)
                .await
                .map_err(|e| e.context(format!("back up {}", job.describe())))?;
            Some((key, wrapped))
        }
        None => None,
    };
    let connect_db = if job.kind == BackupKind::Database { database.clone() } else { server.maintenance_db.clone() };
    let spec = ctx.conn_spec(&job.server, &connect_db).await?;
    let client = pg::connect(&spec).await?;
    let (server_version, server_version_num) = pg::server_version(&client).await?;
    let server_major = pg::major_of(server_version_num);
    // The globals record which databases the server has now: a whole-server restore of this
    // time leaves out the ones dropped before it.
    let databases = match job.kind {
        BackupKind::Globals => Some(pg::list_databases(&client).await?),
        BackupKind::Database => None,
    };
    let tool_name = if job.kind == BackupKind::Database { "pg_dump" } else { "pg_dumpall" };
    let tool =
        pg::pick_tool(tool_name, &settings.bin_dirs_for(server), server_major, &format!("server {:?}", server.name))
            .await?;

    let compression = settings.compression;
    let mut args: Vec<String> = match job.kind {
        BackupKind::Database => vec!["--format=custom".into()],
        BackupKind::Globals => {
            vec!["--globals-only".into(), "--no-role-passwords".into(), format!("--database={}", server.maintenance_db)]
        }
    };
    if job.kind == BackupKind::Database && compression != Compression::PgDump {
        args.push("--compress=0".into());
    }
    args.push("--no-password".into());
    // pg_dump sets lock_timeout = 0 for its session, so a lock held by another session would
    // stall it for as long as that session holds it, whatever lock_timeout the server or role
    // set. With one in force, pg_dump gives up after as long, with a named failure, as pgvault's
    // own queries do.
    if job.kind == BackupKind::Database
        && let Ok(row) = client.query_one("SELECT current_setting('lock_timeout')", &[]).await
        && let Ok(timeout) = row.try_get::<_, String>(0)
        && timeout != "0"
    {
        args.push(format!("--lock-wait-timeout={timeout}"));
    }

    // A database is dumped in a snapshot exported by this connection's transaction, which stays
    // open while the dump runs: the database's own properties are read in it (pg_restore without
    // --create skips them, so the manifest carries them), and exact row counts are counted in it.
    let mut snapshot_client = None;
    let mut database_properties = None;
    let mut snapshot_id = None;
    if job.kind == BackupKind::Database {
        // The transaction idles while pg_dump (or the parts) read its snapshot: a server, database
        // or role timeout for idle transactions (or, from 17, for transactions) must not end it,
        // as pg_dump itself makes sure for its own sessions.
        client
            .batch_execute(&format!(
                "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET LOCAL idle_in_transaction_session_timeout = 0{}",
                if server_version_num >= 170000 { "; SET LOCAL transaction_timeout = 0" } else { "" }
            ))
            .await
            .map_err(|e| pg::query_error("begin snapshot transaction", e))?;
        let snap: String = client
            .query_one("SELECT pg_export_snapshot()", &[])
            .await
            .map_err(|e| pg::query_error("export snapshot", e))?
            .get(0);
        args.push(format!("--snapshot={snap}"));
        snapshot_id = Some(snap.clone());
        // A backup that cannot record them is still a backup: its restore says what it could
        // not give back.
        // Under a savepoint, so a failed read leaves the snapshot's transaction usable.
        let savepoint = client.batch_execute("SAVEPOINT pgvault_properties").await;
        database_properties = match pg::database_properties(&client, &database, server_version_num).await {
            Ok(p) => Some(p),
            Err(e) => {
                if savepoint.is_ok() {
                    let _ = client.batch_execute("ROLLBACK TO SAVEPOINT pgvault_properties").await;
                }
                tracing::warn!(job = %job.job_id, what = %job.describe(), error = %e, "the database's own properties could not be read; the backup goes on without them");
                None
            }
        };
        snapshot_client = Some(&client);
    }

    // A large database goes in parts, all in this snapshot (features::backup::parts).
    if let Some(snapshot) = snapshot_id
        && parts::wanted(ctx, &client).await?
    {
        return parts::run(parts::SetRun {
            ctx,
            job,
            paths: &paths,
            database: &database,
            client: &client,
            snapshot,
            conn: spec.clone(),
            tool,
            args,
            sealing,
            started_at,
            server_version,
            server_version_num,
            database_properties,
        })
        .await;
    }

    let attempt = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let mut extension = layout::extension(job.kind, compression.by_pgvault()).to_string();
    if sealing.is_some() {
        extension.push_str(".enc");
    }
    let data_blob = layout::data_blob(&paths.id, &attempt, &extension);
    tracing::info!(job = %job.job_id, what = %job.describe(), blob = %data_blob, tool = %tool.path.display(), "backup started");

    let mut dump = ToolRun::new(&tool, &args).conn(&spec).stdout(Stdout::Pipe).spawn(&ctx.cancel)?;
    let stdout = dump.take_stdout().expect("stdout is piped");

    let progress = Progress::start(ctx.progress, format!("backup {}", job.describe()), None);
    let (tx, rx) = mpsc::channel::<(usize, Bytes)>(1);
    let sizer = BlockSizer { base: settings.block_size };
    let (seal, wrapped) = match sealing {
        Some((key, wrapped)) => (Some((key, paths.id.clone())), Some(wrapped)),
        None => (None, None),
    };
    // The archive is read as it streams (row counts, TOC offsets); its zstd frames are cut at
    // data blocks unless it is encrypted (stored offsets are then not the zstd ones).
    let tap = (job.kind == BackupKind::Database).then_some(seal.is_none());
    let producer_cfg = Producer {
        seal,
        compression,
        zstd_threads: settings.zstd_threads,
        sizer,
        expect_magic: (job.kind == BackupKind::Database).then_some(&b"PGDMP"[..]),
        progress: progress.clone(),
        tap,
    };
    let producer = tokio::task::spawn_blocking(move || producer_cfg.run(stdout, tx));
    let uploader =
        upload_blocks(ctx.store.clone(), data_blob.clone(), rx, settings.blocks_in_flight, ctx.cancel.clone());
    let counts = async {
        match (job.kind, settings.row_counts, snapshot_client) {
            (BackupKind::Database, RowCountMode::Exact, Some(c)) => exact_counts(c, false).await.map(Some),
            // Each table's own rows, as its COPY holds them (an inheritance parent's COPY has
            // none of its children's).
            (BackupKind::Database, RowCountMode::CrossCheck, Some(c)) => exact_counts(c, true).await.map(Some),
            // In the snapshot transaction too: an estimate reads pg_class as of the dump.
            (BackupKind::Database, RowCountMode::Estimate, _) => estimated_counts(&client).await.map(Some),
            _ => Ok(None),
        }
    };
    let (uploaded, produced, row_counts) = tokio::join!(uploader, producer, counts);
    let mut produced = produced.map_err(|e| Error::transient(format!("backup stream task failed: {e}")))?;
    // The stream is over (or broken): pg_dump has exited or will on the closed pipe (a shutdown
    // has killed it already).
    let exit = dump.wait().await;
    progress.finish();
    // Row counts from the stream, still inside the snapshot's transaction (a fallback to
    // count(*) counts the very snapshot the dump read).
    let tapped = produced.as_mut().ok().and_then(|p| p.tapped.take());
    let (row_counts, counted_after) = match (row_counts, snapshot_client, &tapped) {
        (Ok(exact), Some(c), Some(t)) if produced.is_ok() => {
            let read = |listed: &[(String, String)]| match &t.archive {
                Ok(a) => row_counts::from_archive(listed, a),
                Err(e) => Err(format!("the archive could not be read ({e})")),
            };
            (stream_counts(c, settings.row_counts, exact, job, read).await, true)
        }
        (counts, _, _) => (counts, false),
    };
    if snapshot_client.is_some() {
        let _ = client.batch_execute("COMMIT").await;
    }

    let checked = check_run(job, exit, uploaded, produced, ctx.cancel.is_cancelled());
    let (produced, block_count, row_counts) = match (checked, row_counts) {
        (Ok((produced, blocks)), Ok(counts)) => (produced, blocks, counts),
        (checked, counts) => {
            let _ = ctx.store.discard_staged(&data_blob).await;
            // Root cause first: counting in the snapshot's transaction fails first (a table the
            // role may not read), aborts that transaction, and only then does pg_dump fail to
            // import the snapshot. The count's error names the table; pg_dump's does not.
            // Stream counts are taken after the dump, so a dump that failed (a server that went
            // away) is the cause of their failure, not the other way round.
            let e = match (checked, counts) {
                (Err(e), Err(_)) if counted_after => e,
                (_, Err(count)) if !ctx.cancel.is_cancelled() => {
                    count.context(format!("back up {}: count rows in the dump's snapshot", job.describe()))
                }
                (Err(e), _) => e,
                (Ok(_), Err(count)) => count,
                (Ok(_), Ok(_)) => unreachable!("handled above"),
            };
            tracing::error!(job = %job.job_id, what = %job.describe(), error = %e, "backup failed");
            return Err(e);
        }
    };

    let ids: Vec<String> = (0..block_count).map(block_id).collect();
    ctx.store
        .commit_blocks(&data_blob, &ids, &layout::tags(job.kind, &job.server, &database, "data"))
        .await
        .map_err(|e| e.context(format!("commit blob {data_blob:?}")))?;
    failpoint::hit("backup.after-commit");

    let encryption = wrapped.map(|w| Encryption {
        algorithm: envelope::ALGORITHM.into(),
        chunk_size: envelope::DEFAULT_CHUNK_SIZE,
        key_id: w.key_id,
        wrap_algorithm: w.algorithm,
        wrapped_key: base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &w.wrapped),
    });
    let restore_hint = match encryption {
        Some(_) => manifest::restore_hint_encrypted(job.kind, &paths.id),
        None => manifest::restore_hint(job.kind, compression, &data_blob),
    };
    let manifest = Manifest {
        format: manifest::FORMAT_NAME.into(),
        format_version: if encryption.is_some() { manifest::FORMAT_VERSION } else { manifest::FORMAT_VERSION_PLAIN },
        pgvault_version: env!("CARGO_PKG_VERSION").into(),
        id: paths.id.clone(),
        kind: job.kind,
        job_id: job.job_id.clone(),
        server: job.server.clone(),
        database: database.clone(),
        server_version,
        server_version_num,
        tool: Tool { name: tool_name.into(), version: tool.version.clone(), major: tool.major, args: args.clone() },
        archive_format: if job.kind == BackupKind::Database { "custom".into() } else { "plain".into() },
        compression,
        encryption,
        data_blob: data_blob.clone(),
        raw_bytes: produced.raw_bytes,
        stored_bytes: produced.stored_bytes,
        sha256: produced.sha256,
        blocks: produced.blocks,
        requested_at: job.requested_at,
        started_at,
        finished_at: OffsetDateTime::now_utc(),
        row_counts,
        databases,
        database_properties,
        archive_index: tapped.and_then(|t| t.archive.ok().map(|a| row_counts::index(&a, t.frames))),
        restore_hint,
        layout: Default::default(),
        snapshot: None,
        parts: vec![],
        notes: vec![],
    };
    let created = ctx
        .store
        .create(
            &paths.manifest,
            Bytes::from(manifest.to_json()),
            &layout::tags(job.kind, &job.server, &database, "manifest"),
        )
        .await;
    match created {
        Ok(CreateOutcome::Created) => {
            failpoint::hit("backup.after-manifest");
            tracing::info!(
                job = %job.job_id, backup = %paths.id, raw_bytes = manifest.raw_bytes, stored_bytes = manifest.stored_bytes,
                blocks = manifest.blocks.len(), "backup committed"
            );
            Ok(Outcome::Created(Box::new(manifest)))
        }
        Ok(CreateOutcome::AlreadyExists) => {
            // Either another attempt of the same job published first (ours is then an orphan), or
            // a retried create of our own manifest found the first try's success. The existing
            // manifest says which.
            let existing = ctx.store.get(&paths.manifest).await?;
            if Manifest::from_json(&paths.manifest, &existing)?.data_blob == data_blob {
                return Ok(Outcome::Created(Box::new(manifest)));
            }
            let _ = ctx.store.delete(&data_blob).await;
            Ok(Outcome::AlreadyDone { id: paths.id })
        }
        Err(e) => {
            let _ = ctx.store.delete(&data_blob).await;
            Err(e.context(format!("write manifest {:?}", paths.manifest)))
        }
    }
}

/// Decide whether a finished dump may be committed. Every check that fails keeps the blob
/// uncommitted.
fn check_run(
    job: &BackupJob,
    exit: Result<Exit>,
    uploaded: Result<usize>,
    produced: Result<Produced>,
    cancelled: bool,
) -> Result<(Produced, usize)> {
    let what = format!("back up {}", job.describe());
    if cancelled {
        return Err(Error::transient(format!("{what}: cancelled by shutdown; nothing was committed")));
    }
    // Root cause first: a failed upload closes the pipe, which then kills pg_dump with SIGPIPE,
    // and a stream that is not an archive does the same. pg_dump's own failure leaves both
    // halves of the pipeline intact (they just see the end of the stream).
    let uploaded = uploaded.map_err(|e| e.context(&what))?;
    let produced = produced.map_err(|e| e.context(&what))?;
    let exit = exit.map_err(|e| e.context(&what))?;
    // The runner's verdict decides whether the dump failed; a failure is retried, unlike a
    // restore's: a dump changes nothing, and what makes one fail often passes (concurrent DDL,
    // a recovery conflict on a replica, a restart). One that persists ends on the poison queue.
    // What cannot pass (an untrusted certificate, row-level security, a missing privilege) is
    // permanent at once, with its remedy (`Failure::into_dump_error`).
    exit.verdict().map_err(|f| f.into_dump_error().context(&what))?;
    if produced.raw_bytes == 0 {
        return Err(Error::transient(format!("{what}: {} wrote nothing", exit.tool)));
    }
    check_staged(&what, uploaded, &produced)?;
    Ok((produced, uploaded))
}

/// Every block the producer cut was staged, and their sizes add up to the stored size.
fn check_staged(what: &str, uploaded: usize, produced: &Produced) -> Result<()> {
    let sum: u64 = produced.blocks.iter().map(|b| b.size).sum();
    if uploaded != produced.blocks.len() || sum != produced.stored_bytes {
        return Err(Error::transient(format!(
            "{what}: staged {uploaded} blocks of {} produced ({sum} of {} bytes)",
            produced.blocks.len(),
            produced.stored_bytes
        )));
    }
    Ok(())
}

/// Stage blocks as they arrive, at most `in_flight` at once (the store retries each one's
/// transient errors).
/// Returns how many blocks were staged. Dropping the receiver on error stops the producer.
pub async fn upload_blocks(
    store: Arc<dyn BlobStore>,
    name: String,
    mut rx: mpsc::Receiver<(usize, Bytes)>,
    in_flight: usize,
    cancel: CancellationToken,
) -> Result<usize> {
    let mut set = tokio::task::JoinSet::new();
    let mut count = 0usize;
    let joined = |r: std::result::Result<Result<()>, tokio::task::JoinError>| -> Result<()> {
        r.map_err(|e| Error::transient(format!("upload task failed: {e}")))?
    };
    loop {
        if set.len() >= in_flight.max(1) {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return Err(Error::transient("upload cancelled by shutdown")),
                r = set.join_next() => joined(r.expect("non-empty"))?,
            }
            continue;
        }
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return Err(Error::transient("upload cancelled by shutdown")),
            Some(r) = set.join_next(), if !set.is_empty() => joined(r)?,
            msg = rx.recv() => match msg {
                None => break,
                Some((index, data)) => {
                    if index != count {
                        return Err(Error::transient(format!("block {index} arrived out of order (expected {count})")));
                    }
                    count += 1;
                    let store = store.clone();
                    let name = name.clone();
                    set.spawn(async move { stage(store.as_ref(), &name, index, data).await });
                }
            },
        }
    }
    while let Some(r) = set.join_next().await {
        joined(r)?;
    }
    Ok(count)
}

/// Stage one block. The store retries transient failures (the runtime wraps it in
/// [`crate::seams::store::retry::RetryingStore`]): a block is a `Bytes` it can send again, which
/// is why retries happen per block and never around the whole stream.
async fn stage(store: &dyn BlobStore, name: &str, index: usize, data: Bytes) -> Result<()> {
    store
        .stage_block(name, &block_id(index), data)
        .await
        .map_err(|e| e.context(format!("stage block {index} of blob {name:?}")))?;
    failpoint::hit("backup.block-staged");
    Ok(())
}

/// Bytes per zstd worker job (see [`Producer::run`]).
const ZSTD_JOB_SIZE: u32 = 2 << 20;

/// The blocking half of the pipeline: read pg_dump's stdout, count, compress, cut into blocks,
/// hash, and hand blocks to the uploader.
struct Producer {
    /// Encrypt the (compressed) stream with this data key, for this backup id.
    seal: Option<(DataKey, String)>,
    compression: Compression,
    zstd_threads: u32,
    sizer: BlockSizer,
    expect_magic: Option<&'static [u8]>,
    progress: Progress,
    /// Read the stream as a pg_dump archive (`Some(cut)`: and cut zstd frames at data blocks).
    tap: Option<bool>,
}

#[derive(Debug)]
pub struct Produced {
    pub raw_bytes: u64,
    pub stored_bytes: u64,
    pub sha256: String,
    pub blocks: Vec<Block>,
    /// What the archive tap read, when the stream was tapped.
    pub tapped: Option<Tapped>,
}

impl Producer {
    fn run(self, mut input: impl Read, tx: mpsc::Sender<(usize, Bytes)>) -> Result<Produced> {
        let blocks = BlockSink::new(self.sizer, tx);
        let sink = match &self.seal {
            Some((key, id)) => Sink::Sealed(EncryptWriter::new(blocks, key, id, envelope::DEFAULT_CHUNK_SIZE)),
            None => Sink::Plain(blocks),
        };
        let mut buf = vec![0u8; 1 << 20];
        let mut raw_bytes = 0u64;
        let mut head = Vec::new();
        let io_err = |e: std::io::Error| Error::transient(format!("backup stream: {e}"));
        let mut tap = self.tap.map(Tap::new);
        let mut write_all = |out: &mut dyn FrameWrite, input: &mut dyn Read| -> Result<()> {
            loop {
                let n = match input.read(&mut buf) {
                    Ok(0) => return Ok(()),
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(io_err(e)),
                };
                if let Some(magic) = self.expect_magic
                    && head.len() < magic.len()
                {
                    head.extend_from_slice(&buf[..n.min(magic.len() - head.len())]);
                    if head.len() == magic.len() && head != magic {
                        return Err(Error::transient("pg_dump output is not a custom-format archive"));
                    }
                }
                raw_bytes += n as u64;
                self.progress.add(n as u64);
                match tap.as_mut() {
                    Some(tap) => tap.write(&buf[..n], out).map_err(io_err)?,
                    None => out.write_all(&buf[..n]).map_err(io_err)?,
                }
            }
        };
        let sink = match self.compression {
            Compression::Zstd { level } => {
                // zstd's default job (4 x window, 8 MiB at level 3) buffers about 25 MiB per
                // worker; 2 MiB jobs keep the same speed at a third of the memory.
                let mut enc = FramedZstd::new(sink, level, self.zstd_threads, ZSTD_JOB_SIZE).map_err(io_err)?;
                write_all(&mut enc, &mut input)?;
                enc.finish().map_err(io_err)?
            }
            Compression::None | Compression::PgDump => {
                let mut sink = sink;
                write_all(&mut Uncut(&mut sink), &mut input)?;
                sink
            }
        };
        let mut produced = sink.into_blocks().map_err(io_err)?.finish()?;
        produced.raw_bytes = raw_bytes;
        produced.tapped = tap.map(Tap::finish);
        Ok(produced)
    }
}

/// Where the (compressed) stream goes: straight into blocks, or through the encryption.
enum Sink {
    Plain(BlockSink),
    Sealed(EncryptWriter<BlockSink>),
}

impl Sink {
    /// Seal the last chunk, if encrypting, and hand back the block sink.
    fn into_blocks(self) -> std::io::Result<BlockSink> {
        match self {
            Sink::Plain(b) => Ok(b),
            Sink::Sealed(w) => w.finish(),
        }
    }
}

impl Write for Sink {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        match self {
            Sink::Plain(b) => b.write(data),
            Sink::Sealed(w) => w.write(data),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A `Write` that cuts its input into blocks of the sizer's sizes, hashes each block and the
/// whole, and sends full blocks on. Holds at most one block.
struct BlockSink {
    sizer: BlockSizer,
    tx: mpsc::Sender<(usize, Bytes)>,
    current: Vec<u8>,
    whole: Sha256,
    blocks: Vec<Block>,
    stored: u64,
}

impl BlockSink {
    fn new(sizer: BlockSizer, tx: mpsc::Sender<(usize, Bytes)>) -> Self {
        Self {
            current: Vec::with_capacity(sizer.size_for(0)),
            sizer,
            tx,
            whole: Sha256::new(),
            blocks: Vec::new(),
            stored: 0,
        }
    }

    fn ship(&mut self) -> std::io::Result<()> {
        if self.current.is_empty() {
            return Ok(());
        }
        let index = self.blocks.len();
        if index >= MAX_BLOCKS {
            return Err(std::io::Error::other(format!("the stream needs more than {MAX_BLOCKS} blocks")));
        }
        let next_cap = self.sizer.size_for(index + 1);
        let data = std::mem::replace(&mut self.current, Vec::with_capacity(next_cap));
        self.whole.update(&data);
        self.stored += data.len() as u64;
        self.blocks.push(Block { size: data.len() as u64, sha256: hex::encode(Sha256::digest(&data)) });
        self.tx
            .blocking_send((index, Bytes::from(data)))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "upload stopped"))
    }

    fn finish(mut self) -> Result<Produced> {
        self.ship().map_err(|e| Error::transient(format!("backup stream: {e}")))?;
        Ok(Produced {
            raw_bytes: 0,
            stored_bytes: self.stored,
            sha256: hex::encode(self.whole.finalize()),
            blocks: self.blocks,
            tapped: None,
        })
    }
}

impl Write for BlockSink {
    fn write(&mut self, mut data: &[u8]) -> std::io::Result<usize> {
        let total = data.len();
        while !data.is_empty() {
            let want = self.sizer.size_for(self.blocks.len());
            let take = (want - self.current.len()).min(data.len());
            self.current.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.current.len() == want {
                self.ship()?;
            }
        }
        Ok(total)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `count(*)` of every table; with `only`, of its own rows (`FROM ONLY`, without inheritance
/// children), as the stream counts them.
async fn exact_counts(client: &tokio_postgres::Client, only: bool) -> Result<RowCounts> {
    // As pg_dump does: with row security on, a policy would silently count fewer rows than the
    // dump holds; off, a table with a policy the role is subject to fails here, naming it.
    client
        .batch_execute("SET LOCAL row_security = off")
        .await
        .map_err(|e| pg::query_error("turn row security off for counting", e))?;
    let tables = client.query(pg::USER_TABLES_SQL, &[]).await.map_err(|e| pg::query_error("list tables", e))?;
    let mut out = Vec::with_capacity(tables.len());
    for t in tables {
        let (schema, table): (String, String) = (t.get(0), t.get(1));
        let only = if only { "ONLY " } else { "" };
        let sql = format!("SELECT count(*) FROM {only}{}.{}", pg::quote_ident(&schema), pg::quote_ident(&table));
        let rows: i64 = client
            .query_one(&sql, &[])
            .await
            .map_err(|e| pg::query_error(&format!("count rows of {schema}.{table}"), e))?
            .get(0);
        out.push(TableCount { schema, table, rows });
    }
    Ok(RowCounts { method: "exact".into(), tables: out })
}

/// The row counts of a tapped stream (one archive, or every part of a backup in parts): `stream`
/// reads them from the stream with `read` (falling back to count(*) in the snapshot, still open,
/// when the stream gives none), `cross-check` compares them with the count(*) ones. Other modes
/// keep what they counted.
async fn stream_counts(
    client: &tokio_postgres::Client,
    mode: RowCountMode,
    counted: Option<RowCounts>,
    job: &BackupJob,
    read: impl FnOnce(&[(String, String)]) -> std::result::Result<RowCounts, String>,
) -> Result<Option<RowCounts>> {
    let listed = match (mode, &counted) {
        (RowCountMode::Stream, _) => row_counts::listed_tables(client).await?,
        (RowCountMode::CrossCheck, Some(c)) => c.tables.iter().map(|t| (t.schema.clone(), t.table.clone())).collect(),
        _ => return Ok(counted),
    };
    let from_stream = read(&listed);
    match (mode, from_stream, counted) {
        (RowCountMode::CrossCheck, Ok(s), Some(c)) => row_counts::cross_check(&s, &c).map(Some),
        (RowCountMode::CrossCheck, Err(why), _) => {
            Err(Error::permanent(format!("row counts cannot be cross-checked: {why}")))
        }
        (_, Ok(s), _) => Ok(Some(s)),
        (_, Err(why), _) => {
            tracing::info!(job = %job.job_id, what = %job.describe(), reason = %why, "row counts come from count(*) in the dump's snapshot");
            exact_counts(client, false).await.map(Some)
        }
    }
}

async fn estimated_counts(client: &tokio_postgres::Client) -> Result<RowCounts> {
    let tables = client.query(pg::USER_TABLES_SQL, &[]).await.map_err(|e| pg::query_error("list tables", e))?;
    let tables = tables.iter().map(|t| TableCount { schema: t.get(0), table: t.get(1), rows: t.get(2) }).collect();
    Ok(RowCounts { method: "estimate".into(), tables })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seams::progress;

    async fn collect_blocks(mut rx: mpsc::Receiver<(usize, Bytes)>) -> Vec<(usize, Bytes)> {
        let mut all = Vec::new();
        while let Some(b) = rx.recv().await {
            all.push(b);
        }
        all
    }

    #[test]
    fn block_ids_have_fixed_width() {
        let lens: std::collections::HashSet<usize> = [0, 1, 999, 49_999].iter().map(|&i| block_id(i).len()).collect();
        assert_eq!(lens.len(), 1);
        assert_ne!(block_id(1), block_id(2));
    }

    #[test]
    fn five_tib_fits_in_fifty_thousand_blocks() {
        const TIB: u64 = 1 << 40;
        for base_mib in [1usize, 4, 8, 100, 4000] {
            let sizer = BlockSizer { base: base_mib << 20 };
            assert!(sizer.capacity() >= 5 * TIB, "base {base_mib} MiB holds only {}", sizer.capacity());
            assert_eq!(sizer.size_for(0), base_mib << 20);
            assert!((0..MAX_BLOCKS).all(|i| sizer.size_for(i) <= MAX_BLOCK_SIZE));
        }
        // Small databases keep the small base size, and so the small memory footprint.
        assert_eq!(BlockSizer { base: 8 << 20 }.size_for(3_999), 8 << 20);
    }

    #[tokio::test]
    async fn producer_cuts_hashes_and_compresses() {
        let input: Vec<u8> = b"PGDMP".iter().copied().chain((0..300_000u32).flat_map(|i| i.to_le_bytes())).collect();
        let (tx, rx) = mpsc::channel(1);
        let collect = tokio::spawn(collect_blocks(rx));
        let p = Producer {
            seal: None,
            compression: Compression::Zstd { level: 3 },
            zstd_threads: 2,
            sizer: BlockSizer { base: 64 * 1024 },
            expect_magic: Some(b"PGDMP"),
            progress: Progress::start(progress::Mode::Off, "t", None),
            tap: None,
        };
        let data = input.clone();
        let produced =
            tokio::task::spawn_blocking(move || p.run(std::io::Cursor::new(data), tx)).await.unwrap().unwrap();
        let blocks = collect.await.unwrap();
        assert_eq!(produced.raw_bytes, input.len() as u64);
        assert_eq!(blocks.len(), produced.blocks.len());
        let stored: Vec<u8> = blocks.iter().flat_map(|(_, b)| b.to_vec()).collect();
        assert_eq!(stored.len() as u64, produced.stored_bytes);
        assert_eq!(hex::encode(Sha256::digest(&stored)), produced.sha256);
        for ((i, b), meta) in blocks.iter().zip(&produced.blocks) {
            assert_eq!(hex::encode(Sha256::digest(b)), meta.sha256, "block {i}");
        }
        assert_eq!(zstd::decode_all(stored.as_slice()).unwrap(), input);
    }

    #[tokio::test]
    async fn producer_encrypts_after_compressing_and_the_blocks_describe_the_stored_bytes() {
        use crate::domain::envelope::{DataKey, Opener};
        let input: Vec<u8> = b"PGDMP".iter().copied().chain((0..800_000u32).flat_map(|i| i.to_le_bytes())).collect();
        let key = DataKey::generate().unwrap();
        let (tx, rx) = mpsc::channel(1);
        let collect = tokio::spawn(collect_blocks(rx));
        let p = Producer {
            seal: Some((DataKey::from_bytes(key.expose()).unwrap(), "s/d/x".into())),
            compression: Compression::Zstd { level: 3 },
            zstd_threads: 0,
            sizer: BlockSizer { base: 256 * 1024 },
            expect_magic: Some(b"PGDMP"),
            progress: Progress::start(progress::Mode::Off, "t", None),
            tap: None,
        };
        let data = input.clone();
        let produced =
            tokio::task::spawn_blocking(move || p.run(std::io::Cursor::new(data), tx)).await.unwrap().unwrap();
        let blocks: Vec<Bytes> = collect.await.unwrap().into_iter().map(|(_, b)| b).collect();
        let stored: Vec<u8> = blocks.iter().flat_map(|b| b.to_vec()).collect();
        assert_eq!(stored.len() as u64, produced.stored_bytes);
        assert_eq!(hex::encode(Sha256::digest(&stored)), produced.sha256, "hashes of the stored (sealed) bytes");
        for (b, meta) in blocks.iter().zip(&produced.blocks) {
            assert_eq!(hex::encode(Sha256::digest(b)), meta.sha256);
        }
        assert_eq!(&stored[..6], b"PGVENC");
        let mut opener = Opener::new(&key, "s/d/x", envelope::DEFAULT_CHUNK_SIZE);
        let mut zst = Vec::new();
        let mut out = |b: Vec<u8>| {
            zst.extend_from_slice(&b);
            Ok(())
        };
        for b in &blocks {
            opener.push(b, &mut out).unwrap();
        }
        opener.finish(&mut out).unwrap();
        assert_eq!(zstd::decode_all(zst.as_slice()).unwrap(), input);
    }

    #[tokio::test]
    async fn producer_rejects_non_archive() {
        let (tx, _rx) = mpsc::channel(4);
        let p = Producer {
            seal: None,
            compression: Compression::None,
            zstd_threads: 0,
            sizer: BlockSizer { base: 1024 },
            expect_magic: Some(b"PGDMP"),
            progress: Progress::start(progress::Mode::Off, "t", None),
            tap: None,
        };
        let e = tokio::task::spawn_blocking(move || p.run(std::io::Cursor::new(b"hello world".to_vec()), tx))
            .await
            .unwrap()
            .unwrap_err();
        assert!(e.to_string().contains("not a custom-format archive"), "{e}");
    }
}
