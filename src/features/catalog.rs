//! The catalog of backups (every manifest in the store) and verification.
//!
//! Only backups with a manifest exist. [`verified_blocks`] is the one reader of backup data: it
//! checks each block against the manifest before handing it on, so corrupted bytes never reach
//! pg_restore, and checks the whole-file SHA-256 at the end.

use crate::config::context::Ctx;
use crate::domain::envelope::{self, DataKey, Opener};
use crate::domain::error::{Error, Result};
use crate::domain::layout::{self, BackupKind, MANIFEST_SUFFIX};
use crate::domain::manifest::{Compression, Manifest};
use crate::seams::keys::{KeyStatus, WrappedKey};
use crate::seams::pg;
use crate::seams::store::{BlobStore, ByteStream};
use crate::seams::tools::{Stdin, Stdout, ToolRun};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use sha2::{Digest, Sha256};
use std::io::Write;
use tokio::sync::mpsc;

/// All backups, optionally of one server or one server and database, oldest first.
pub async fn list(store: &dyn BlobStore, server: Option<&str>, database: Option<&str>) -> Result<Vec<Manifest>> {
    let prefix = layout::prefix(server, database);
    let mut out = Vec::new();
    for blob in store.list(&prefix).await? {
        if !blob.name.ends_with(MANIFEST_SUFFIX) || is_job_record(&blob.name) {
            continue;
        }
        let bytes = store.get(&blob.name).await?;
        out.push(Manifest::from_json(&blob.name, &bytes)?);
    }
    out.sort_by(|a, b| (a.requested_at, &a.id).cmp(&(b.requested_at, &b.id)));
    Ok(out)
}

/// Job records and holds share the store but are not backups (see [`crate::monitor::records`] and
/// [`crate::features::holds`]): every name starting with `@`, which no server segment does.
fn is_job_record(name: &str) -> bool {
    name.starts_with('@')
}

/// Read one manifest by backup id.
pub async fn manifest(store: &dyn BlobStore, id: &str) -> Result<Manifest> {
    let name = layout::manifest_for_id(id);
    let bytes = store.get(&name).await.map_err(|e| {
        if e.is_permanent() {
            Error::permanent(format!("backup {id:?} does not exist")).with_hint("`pgvault list` shows the backups")
        } else {
            e
        }
    })?;
    let m = Manifest::from_json(&name, &bytes)?;
    m.check_consistent()?;
    // An encrypted backup's chunks are bound to the manifest's id: a manifest copied over
    // another backup's name must not pass for it.
    if m.id != id {
        return Err(Error::permanent(format!("manifest {name:?} describes backup {:?}, not {id:?}", m.id))
            .with_hint("the container was altered; restore from another backup"));
    }
    Ok(m)
}

/// Data blobs that no manifest names: left by an attempt that failed after committing, or by a
/// run of retention that was interrupted. They are not backups.
pub async fn orphans(store: &dyn BlobStore, server: Option<&str>) -> Result<Vec<String>> {
    let prefix = layout::prefix(server, None);
    let mut blobs = store.list(&prefix).await?;
    blobs.retain(|b| !is_job_record(&b.name));
    let mut named = std::collections::HashSet::new();
    for b in blobs.iter().filter(|b| b.name.ends_with(MANIFEST_SUFFIX)) {
        let m = Manifest::from_json(&b.name, &store.get(&b.name).await?)?;
        named.extend(m.data_blobs().into_iter().map(String::from));
    }
    Ok(blobs
        .into_iter()
        .filter(|b| !b.name.ends_with(MANIFEST_SUFFIX) && !named.contains(&b.name))
        .map(|b| b.name)
        .collect())
}

/// How many pieces (blocks, or an encrypted backup's chunks) wait between the reader
/// ([`plain_blocks`]) and the consumer ([`feed`]) of a backup's stream. With the one the reader
/// holds and the one the consumer works on, a plain stream holds four blocks (`tests/restore_memory.rs`).
pub const QUEUED: usize = 2;

/// How [`verified_blocks`] ends its error when its consumer (pg_restore's feeder, say) went
/// away: the consumer's own failure is then the cause.
pub const CONSUMER_STOPPED: &str = ": the consumer stopped";

/// Whether a [`verified_blocks`] error says only that its consumer stopped (rather than that
/// reading the backup failed).
pub fn consumer_stopped(e: &Error) -> bool {
    e.message().ends_with(CONSUMER_STOPPED)
}

/// Why an orphan must not be removed now, if it must not: its backup job may still be between
/// committing the blob and creating the manifest (its record says it runs, within the lease a
/// delivery may run: `lease`), or its manifest appeared since the listing. Removing such a blob
/// would leave a published manifest without its data.
pub async fn in_flight(
    store: &dyn BlobStore,
    orphan: &str,
    now: time::OffsetDateTime,
    lease: time::Duration,
) -> Result<Option<String>> {
    use crate::monitor::records::{self, JobKind, Status};
    let Some((id, job)) = layout::data_blob_owner(orphan) else { return Ok(None) };
    if let Some(r) = records::get(store, JobKind::Backup, job).await?
        && r.status == Status::Running
        && now - r.updated_at < lease
    {
        return Ok(Some(format!("its backup job {job} may still be running (its record says so)")));
    }
    let manifest = layout::manifest_for_id(id);
    if store.exists(&manifest).await?
        && Manifest::from_json(&manifest, &store.get(&manifest).await?)?.data_blobs().contains(&orphan)
    {
        return Ok(Some("its manifest was published meanwhile".into()));
    }
    Ok(None)
}

/// Read a backup's stored bytes block by block, sending each block on only after its SHA-256
/// matched the manifest. Fails naming the backup, the block and its offset.
pub async fn verified_blocks(manifest: &Manifest, mut stream: ByteStream, tx: mpsc::Sender<Bytes>) -> Result<u64> {
    let mut whole = Sha256::new();
    // Read but not yet part of a block. A block that lies whole in what the store gave (Azure's
    // ranges are block-sized) is a slice of it, not a copy; one that does not is gathered into
    // a buffer of exactly its size, allocated once.
    let mut pending = Bytes::new();
    let mut offset = 0u64;
    let corrupt = |index: usize, offset: u64, why: String| {
        Error::permanent(format!("backup {:?} is corrupt: block {index} (bytes {offset}..) {why}", manifest.id))
            .with_hint("restore from another backup; `pgvault verify --all` checks them all")
    };
    for (index, block) in manifest.blocks.iter().enumerate() {
        let size = block.size as usize;
        let mut buf = BytesMut::new();
        let data = loop {
            if buf.is_empty() && pending.len() >= size {
                break pending.split_to(size);
            }
            if !pending.is_empty() {
                if buf.capacity() < size {
                    buf.reserve(size - buf.len());
                }
                let take = (size - buf.len()).min(pending.len());
                buf.extend_from_slice(&pending.split_to(take));
                if buf.len() == size {
                    break buf.split().freeze();
                }
            }
            match stream.next().await {
                Some(piece) => pending = piece?,
                None => {
                    return Err(corrupt(index, offset, format!("is short: the blob ends {} bytes into it", buf.len())));
                }
            }
        };
        let got = hex::encode(Sha256::digest(&data));
        if got != block.sha256 {
            return Err(corrupt(index, offset, format!("has SHA-256 {got}, the manifest says {}", block.sha256)));
        }
        whole.update(&data);
        offset += block.size;
        if tx.send(data).await.is_err() {
            return Err(Error::transient(format!("reading backup {:?}{CONSUMER_STOPPED}", manifest.id)));
        }
        crate::seams::failpoint::hit("restore.mid-stream");
    }
    if !pending.is_empty() || stream.next().await.is_some() {
        return Err(corrupt(
            manifest.blocks.len(),
            offset,
            "is extra: the blob is longer than the manifest says".into(),
        ));
    }
    let got = hex::encode(whole.finalize());
    if got != manifest.sha256 {
        return Err(Error::permanent(format!(
            "backup {:?} is corrupt: SHA-256 of the whole file is {got}, the manifest says {}",
            manifest.id, manifest.sha256
        )));
    }
    Ok(offset)
}

/// A backup's data key, unwrapped in Key Vault with exactly the key version its manifest
/// records; `None` for an unencrypted backup. Call it before touching anything: a key version
/// that is disabled or deleted refuses here, with that reason.
pub async fn data_key(ctx: &Ctx, m: &Manifest) -> Result<Option<DataKey>> {
    let Some(enc) = &m.encryption else { return Ok(None) };
    if enc.algorithm != envelope::ALGORITHM {
        return Err(Error::permanent(format!(
            "backup {:?} is encrypted with {:?}, which this pgvault does not know (it knows {:?})",
            m.id,
            enc.algorithm,
            envelope::ALGORITHM
        ))
        .with_hint("upgrade pgvault"));
    }
    let wrapped = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &enc.wrapped_key)
        .map_err(|e| Error::permanent(format!("backup {:?}: the manifest's wrapped key is not base64: {e}", m.id)))?;
    let wrapped = WrappedKey { key_id: enc.key_id.clone(), algorithm: enc.wrap_algorithm.clone(), wrapped };
    let key = ctx.key_wrapper()?.unwrap(&wrapped).await.map_err(|e| e.context(format!("backup {:?}", m.id)))?;
    Ok(Some(key))
}

/// For each encrypted backup, whether its key version can unwrap now (asked once per key
/// version): `None` when it can or the backup is not encrypted, else why not, in the words
/// `list`, `verify` and restore share ("key version … not available: disabled"). A vault that
/// cannot say (unreachable, or reading the key is not allowed) is logged, not reported as
/// unavailable: checking the stored bytes needs no access to the key.
pub async fn key_problems(ctx: &Ctx, list: &[Manifest]) -> Vec<Option<String>> {
    let mut seen: std::collections::HashMap<String, Option<String>> = std::collections::HashMap::new();
    let mut out = Vec::with_capacity(list.len());
    for m in list {
        let Some(enc) = &m.encryption else {
            out.push(None);
            continue;
        };
        if !seen.contains_key(&enc.key_id) {
            let problem = match ctx.key_wrapper() {
                Err(e) => {
                    tracing::warn!(key = %enc.key_id, error = %e, "the key version's state cannot be checked here");
                    None
                }
                Ok(keys) => match keys.status(&enc.key_id).await {
                    Ok(KeyStatus::Available) => None,
                    Ok(KeyStatus::Unavailable(why)) => Some(crate::seams::keys::not_available(&enc.key_id, &why)),
                    Err(e) => {
                        tracing::warn!(key = %enc.key_id, error = %e, "the key version's state could not be checked");
                        None
                    }
                },
            };
            seen.insert(enc.key_id.clone(), problem);
        }
        out.push(seen[&enc.key_id].clone());
    }
    out
}

/// [`verified_blocks`], then, for an encrypted backup, its chunks: only plain bytes of a chunk
/// that authenticated reach `tx` (the chunks' boundaries are independent of the blocks'). The
/// last chunk goes on only after every block and the whole-file hash matched.
///
/// Memory: chunks are opened straight from the verified block into the plain buffer that goes
/// on, one at a time, so `tx` holds chunks where the plain path holds blocks; the opener gathers
/// at most one stored chunk that straddles two blocks. The encrypted stream holds at most one
/// chunk more than the plain one (`tests/restore_memory.rs` measures both). Without `key`, the stored bytes go on as they are. Returns the stored bytes read.
pub async fn plain_blocks(
    m: &Manifest,
    key: Option<&DataKey>,
    stream: ByteStream,
    tx: mpsc::Sender<Bytes>,
) -> Result<u64> {
    let (Some(key), Some(enc)) = (key, &m.encryption) else { return verified_blocks(m, stream, tx).await };
    let stopped = || Error::transient(format!("reading backup {:?}: the consumer stopped", m.id));
    let (vtx, mut vrx) = mpsc::channel::<Bytes>(1);
    let mut opener = Opener::new(key, &m.id, enc.chunk_size);
    let tx_open = tx.clone();
    let open = async move {
        while let Some(block) = vrx.recv().await {
            // One chunk at a time, each handed on before the next is opened: at most one
            // chunk's plain bytes wait here.
            let mut rest = &block[..];
            while !rest.is_empty() {
                let (used, plain) = opener.next(rest)?;
                rest = &rest[used..];
                if let Some(plain) = plain {
                    tx_open.send(Bytes::from(plain)).await.map_err(|_| stopped())?;
                }
            }
        }
        Ok::<Opener, Error>(opener)
    };
    let (verified, opened) = tokio::join!(verified_blocks(m, stream, vtx), open);
    // A chunk that failed stops the reader (whose own error then only says so): it comes first,
    // unless the blocks themselves were found corrupt.
    let (stored, opener) = match (verified, opened) {
        (Err(e), _) if e.is_permanent() => return Err(e),
        (_, Err(e)) => return Err(e),
        (Err(e), _) => return Err(e),
        (Ok(stored), Ok(opener)) => (stored, opener),
    };
    let mut last = None;
    opener.finish(&mut |plain| {
        last = Some(plain);
        Ok(())
    })?;
    if let Some(plain) = last {
        tx.send(Bytes::from(plain)).await.map_err(|_| stopped())?;
    }
    Ok(stored)
}

/// The blocking consumer: decompress (if pgvault compressed) and write into `out`.
/// Returns the number of raw (decompressed) bytes written.
///
/// With `tolerate_early_close`, a reader that stops early (`pg_restore --list` reads only the
/// table of contents) does not stop the stream: the rest is still decompressed, counted and,
/// upstream, hashed, so every byte of the backup is checked.
pub fn feed(
    mut rx: mpsc::Receiver<Bytes>,
    compression: Compression,
    out: impl Write,
    tolerate_early_close: bool,
) -> std::io::Result<u64> {
    let out = Tolerant { inner: out, closed: false, tolerate: tolerate_early_close };
    let mut counter = CountingWriter { inner: out, count: 0 };
    match compression {
        Compression::Zstd { .. } => {
            let mut dec = zstd::stream::write::Decoder::new(&mut counter)?;
            while let Some(block) = rx.blocking_recv() {
                dec.write_all(&block)?;
            }
            dec.flush()?;
        }
        Compression::None | Compression::PgDump => {
            while let Some(block) = rx.blocking_recv() {
                counter.write_all(&block)?;
            }
            counter.flush()?;
        }
    }
    Ok(counter.count)
}

/// A writer that, when allowed, turns a broken pipe into "discard the rest".
struct Tolerant<W> {
    inner: W,
    closed: bool,
    tolerate: bool,
}

impl<W: Write> Write for Tolerant<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.closed {
            return Ok(buf.len());
        }
        match self.inner.write(buf) {
            Err(e) if self.tolerate && e.kind() == std::io::ErrorKind::BrokenPipe => {
                self.closed = true;
                Ok(buf.len())
            }
            other => other,
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        if self.closed {
            return Ok(());
        }
        match self.inner.flush() {
            Err(e) if self.tolerate && e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
            other => other,
        }
    }
}

struct CountingWriter<W> {
    inner: W,
    count: u64,
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct VerifyReport {
    pub id: String,
    pub blocks: usize,
    pub stored_bytes: u64,
    /// Bytes pg_dump wrote, as read back; `None` when an encrypted backup was checked without
    /// its key (only the stored bytes were).
    pub raw_bytes: Option<u64>,
    /// Entries in the archive's table of contents (`pg_restore --list`); 0 for globals and for
    /// an encrypted backup checked without its key.
    pub toc_entries: usize,
    pub encrypted: bool,
    /// Every chunk authenticated (`verify --decrypt` of an encrypted backup).
    pub decrypted: bool,
}

/// Download a backup, check every block and the whole-file hash, and prove the archive reads:
/// `pg_restore --list` on the stream for a database, the SQL header for globals.
///
/// An encrypted backup is checked without its key unless `decrypt`: the block hashes describe
/// the stored (encrypted) bytes, so integrity needs no key; and its key version is asked
/// whether it can still unwrap (a disabled or deleted one fails the check, naming it). With
/// `decrypt`, the data key is unwrapped, every chunk authenticated, and the archive read.
pub async fn verify(ctx: &Ctx, id: &str, decrypt: bool) -> Result<VerifyReport> {
    let m = manifest(ctx.store.as_ref(), id).await?;
    if m.is_parts() {
        return verify_parts(ctx, &m, decrypt).await;
    }
    verify_one(ctx, m, decrypt).await
}

/// A backup in parts: every part as one archive ([`Manifest::part_view`]), COPY parts read and
/// decompressed without pg_restore; the report adds them up.
async fn verify_parts(ctx: &Ctx, m: &Manifest, decrypt: bool) -> Result<VerifyReport> {
    let mut total = VerifyReport {
        id: m.id.clone(),
        blocks: 0,
        stored_bytes: 0,
        raw_bytes: Some(0),
        toc_entries: 0,
        encrypted: m.encryption.is_some(),
        decrypted: false,
    };
    for part in &m.parts {
        let view = m.part_view(part);
        let r = Box::pin(verify_one(ctx, view, decrypt)).await.map_err(|e| e.context(format!("backup {:?}", m.id)))?;
        total.blocks += r.blocks;
        total.stored_bytes += r.stored_bytes;
        total.raw_bytes = total.raw_bytes.zip(r.raw_bytes).map(|(a, b)| a + b);
        total.toc_entries += r.toc_entries;
        total.decrypted = r.decrypted;
    }
    Ok(total)
}

async fn verify_one(ctx: &Ctx, m: Manifest, decrypt: bool) -> Result<VerifyReport> {
    let id = m.id.as_str();
    let encrypted = m.encryption.is_some();
    if encrypted && !decrypt {
        let stream = ctx.store.read(&m.data_blob).await.map_err(|e| e.context(format!("read backup {id:?}")))?;
        let (tx, mut rx) = mpsc::channel::<Bytes>(2);
        let drain = async move { while rx.recv().await.is_some() {} };
        let (pumped, ()) = tokio::join!(until_cancelled(ctx, id, verified_blocks(&m, stream, tx)), drain);
        pumped?;
        if let Some(problem) = key_problems(ctx, std::slice::from_ref(&m)).await.remove(0) {
            return Err(Error::permanent(format!("backup {id:?} is intact but cannot be read: {problem}")).with_hint(
                "a disabled or deleted key version makes its backups unreadable (crypto-shredding); enable it \
                 again if that was not intended",
            ));
        }
        return Ok(VerifyReport {
            id: m.id.clone(),
            blocks: m.blocks.len(),
            stored_bytes: m.stored_bytes,
            raw_bytes: None,
            toc_entries: 0,
            encrypted,
            decrypted: false,
        });
    }
    let key = data_key(ctx, &m).await?;
    let stream = ctx.store.read(&m.data_blob).await.map_err(|e| e.context(format!("read backup {id:?}")))?;
    let (tx, rx) = mpsc::channel::<Bytes>(QUEUED);
    let compression = m.compression;
    let read = plain_blocks(&m, key.as_ref(), stream, tx);
    let copy_text = m.archive_format == crate::domain::parts::ARCHIVE_COPY_TEXT;
    let (raw, toc_entries) = match m.kind {
        // A COPY part: every byte checked, authenticated and decompressed; no archive to list.
        BackupKind::Database if copy_text => {
            let consumer = tokio::task::spawn_blocking(move || feed(rx, compression, std::io::sink(), false));
            let (pumped, fed) = tokio::join!(until_cancelled(ctx, id, read), consumer);
            pumped?;
            let raw = fed
                .map_err(|e| Error::transient(e.to_string()))?
                .map_err(|e| Error::permanent(format!("backup {id:?}: decompress: {e}")))?;
            (raw, 0)
        }
        BackupKind::Database => {
            let tool =
                pg::pick_tool("pg_restore", &ctx.settings.pg_bin_dirs, m.tool.major, &format!("backup {id:?}")).await?;
            let args = ["--list".to_string()];
            let mut run = ToolRun::new(&tool, &args).stdin(Stdin::Pipe).stdout(Stdout::Capture).spawn(&ctx.cancel)?;
            let stdin = run.take_stdin().expect("stdin is piped");
            let consumer = tokio::task::spawn_blocking(move || feed(rx, compression, stdin, true));
            let (pumped, fed, exit) = tokio::join!(until_cancelled(ctx, id, read), consumer, run.wait());
            pumped?;
            let out = exit?;
            let raw = fed.map_err(|e| Error::transient(e.to_string()))?;
            out.verdict().map_err(|f| {
                let what = if f.is_transient() {
                    format!("verify backup {id:?}")
                } else {
                    format!("backup {id:?} does not read as an archive")
                };
                f.into_error().context(what)
            })?;
            let raw = raw.map_err(|e| Error::permanent(format!("backup {id:?}: decompress: {e}")))?;
            let toc = String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| !l.starts_with(';') && !l.trim().is_empty())
                .count();
            (raw, toc)
        }
        BackupKind::Globals => {
            let consumer = tokio::task::spawn_blocking(move || {
                let mut head = Vec::new();
                let raw = feed(rx, compression, HeadWriter { head: &mut head, keep: 4096 }, false)?;
                Ok::<_, std::io::Error>((raw, head))
            });
            let (pumped, fed) = tokio::join!(until_cancelled(ctx, id, read), consumer);
            pumped?;
            let (raw, head) = fed
                .map_err(|e| Error::transient(e.to_string()))?
                .map_err(|e| Error::permanent(format!("backup {id:?}: decompress: {e}")))?;
            if !String::from_utf8_lossy(&head).contains("PostgreSQL database cluster dump") {
                return Err(Error::permanent(format!("backup {id:?} is not a pg_dumpall globals script")));
            }
            (raw, 0)
        }
    };
    check_raw(&m, raw)?;
    Ok(VerifyReport {
        id: m.id.clone(),
        blocks: m.blocks.len(),
        stored_bytes: m.stored_bytes,
        raw_bytes: Some(raw),
        toc_entries,
        encrypted,
        decrypted: encrypted,
    })
}

/// A database backup's table of contents, as `pg_restore --list` prints it, reading only as far
/// as pg_restore needs: the archive's header and table of contents come first, so a backup of
/// any size costs its first blocks (each checked against the manifest before pg_restore sees
/// it; decrypted when encrypted). The whole-file hash is not checked: that is `verify`'s job.
/// Doctor reads the extensions a backup creates from it.
pub async fn archive_toc(ctx: &Ctx, m: &Manifest) -> Result<String> {
    let id = &m.id;
    if m.kind != BackupKind::Database {
        return Err(Error::permanent(format!("backup {id:?} is not a database backup: it has no table of contents")));
    }
    let key = data_key(ctx, m).await?;
    let stream = ctx.store.read(&m.data_blob).await.map_err(|e| e.context(format!("read backup {id:?}")))?;
    let (tx, rx) = mpsc::channel::<Bytes>(2);
    let tool = pg::pick_tool("pg_restore", &ctx.settings.pg_bin_dirs, m.tool.major, &format!("backup {id:?}")).await?;
    let args = ["--list".to_string()];
    let mut run = ToolRun::new(&tool, &args).stdin(Stdin::Pipe).stdout(Stdout::Capture).spawn(&ctx.cancel)?;
    let stdin = run.take_stdin().expect("stdin is piped");
    let compression = m.compression;
    // Not tolerant of an early close: when pg_restore has the table of contents and exits, the
    // feeder fails on the closed pipe and drops its end, which stops the download.
    let consumer = tokio::task::spawn_blocking(move || feed(rx, compression, stdin, false));
    let (pumped, _fed, exit) =
        tokio::join!(until_cancelled(ctx, id, plain_blocks(m, key.as_ref(), stream, tx)), consumer, run.wait());
    let out = exit?;
    out.verdict().map_err(|f| f.into_error().context(format!("list the table of contents of backup {id:?}")))?;
    match pumped {
        // Stopped because pg_restore had read what it needed.
        Err(e) if consumer_stopped(&e) => {}
        Err(e) => return Err(e),
        Ok(_) => {}
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `pgvault cat`: write a backup's plain data (the pg_dump archive, or the globals SQL) into
/// `out`, decrypted and decompressed, every block and chunk checked before its bytes go out.
/// Returns the bytes written. A failure part-way leaves what was written so far (all of it
/// authenticated), so a consumer must treat a non-zero exit as "incomplete".
pub async fn cat(ctx: &Ctx, id: &str, out: impl Write + Send + 'static) -> Result<u64> {
    let m = match manifest(ctx.store.as_ref(), id).await {
        Ok(m) if m.is_parts() => {
            let names: Vec<&str> = m.parts.iter().map(|p| p.spec.name.as_str()).collect();
            return Err(Error::permanent(format!("backup {id:?} is in parts; cat one part at a time"))
                .with_hint(format!("`pgvault cat {id}/<part>`, parts: {}", names.join(", "))));
        }
        Ok(m) => m,
        // `<backup id>/<part name>`: one part of a backup in parts.
        Err(e) => match id.rsplit_once('/') {
            Some((backup, part)) => match manifest(ctx.store.as_ref(), backup).await {
                Ok(set) if set.is_parts() => match set.part(part) {
                    Some(p) => set.part_view(p),
                    None => return Err(Error::permanent(format!("backup {backup:?} has no part {part:?}"))),
                },
                _ => return Err(e),
            },
            None => return Err(e),
        },
    };
    let id = m.id.as_str();
    let key = data_key(ctx, &m).await?;
    let stream = ctx.store.read(&m.data_blob).await.map_err(|e| e.context(format!("read backup {id:?}")))?;
    let (tx, rx) = mpsc::channel::<Bytes>(QUEUED);
    let compression = m.compression;
    let consumer = tokio::task::spawn_blocking(move || {
        let mut out = out;
        let n = feed(rx, compression, &mut out, false)?;
        out.flush()?;
        Ok::<_, std::io::Error>(n)
    });
    let (pumped, fed) = tokio::join!(until_cancelled(ctx, id, plain_blocks(&m, key.as_ref(), stream, tx)), consumer);
    let fed = fed.map_err(|e| Error::transient(format!("cat backup {id:?}: {e}")))?;
    let raw = match (pumped, fed) {
        (Err(e), _) if e.is_permanent() => return Err(e),
        (_, Err(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            return Err(Error::permanent(format!("cat backup {id:?}: the reader of stdout stopped")));
        }
        (_, Err(e)) => return Err(Error::permanent(format!("backup {id:?}: decompress: {e}"))),
        (Err(e), _) => return Err(e),
        (Ok(_), Ok(raw)) => raw,
    };
    check_raw(&m, raw)?;
    Ok(raw)
}

/// Read until done or until shutdown; dropping the reader ends the stream for its consumer.
async fn until_cancelled(ctx: &Ctx, id: &str, read: impl Future<Output = Result<u64>>) -> Result<u64> {
    tokio::select! {
        r = read => r,
        _ = ctx.cancel.cancelled() => Err(Error::transient(format!("verify backup {id:?}: cancelled by shutdown"))),
    }
}

fn check_raw(m: &Manifest, raw: u64) -> Result<()> {
    if raw != m.raw_bytes {
        return Err(Error::permanent(format!(
            "backup {:?} decompresses to {raw} bytes, the manifest says {}",
            m.id, m.raw_bytes
        )));
    }
    Ok(())
}

/// Keeps the first `keep` bytes written, discards the rest.
struct HeadWriter<'a> {
    head: &'a mut Vec<u8>,
    keep: usize,
}

impl Write for HeadWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let room = self.keep.saturating_sub(self.head.len());
        self.head.extend_from_slice(&buf[..room.min(buf.len())]);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::manifest::Block;

    fn manifest_of(data: &[u8], sizes: &[usize]) -> Manifest {
        let json = br#"{"format":"pgvault-backup-manifest","format_version":1,"pgvault_version":"0",
            "id":"s/d/20260101T000000Z-j","kind":"database","job_id":"j","server":"s","database":"d",
            "server_version":"17.0","server_version_num":170000,
            "tool":{"name":"pg_dump","version":"17","major":17,"args":[]},
            "archive_format":"custom","compression":{"algorithm":"none"},
            "data_blob":"s/d/x.dump","raw_bytes":0,"stored_bytes":0,"sha256":"","blocks":[],
            "requested_at":"2026-01-01T00:00:00Z","started_at":"2026-01-01T00:00:00Z",
            "finished_at":"2026-01-01T00:00:00Z","row_counts":null,"restore_hint":""}"#;
        let mut m = Manifest::from_json("test", json).unwrap();
        let mut at = 0;
        for &n in sizes {
            let b = &data[at..at + n];
            m.blocks.push(Block { size: n as u64, sha256: hex::encode(Sha256::digest(b)) });
            at += n;
        }
        m.stored_bytes = data.len() as u64;
        m.sha256 = hex::encode(Sha256::digest(data));
        m
    }

    /// The stored bytes in pieces of `piece` bytes, as a store would hand them over.
    fn stream_of(data: &[u8], piece: usize) -> ByteStream {
        let pieces: Vec<Result<Bytes>> = data.chunks(piece).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
        futures::stream::iter(pieces).boxed()
    }

    async fn read(m: &Manifest, data: &[u8], piece: usize) -> (Result<u64>, Vec<Bytes>) {
        let (tx, mut rx) = mpsc::channel(1);
        let collect = async move {
            let mut got = Vec::new();
            while let Some(b) = rx.recv().await {
                got.push(b);
            }
            got
        };
        tokio::join!(verified_blocks(m, stream_of(data, piece), tx), collect)
    }

    #[tokio::test]
    async fn blocks_come_whole_and_in_order_whatever_the_store_hands_over() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        let sizes = [4096, 4096, 1808];
        let m = manifest_of(&data, &sizes);
        // Smaller than a block, a block exactly (zero-copy slices), larger, unaligned, all.
        for piece in [1, 999, 4095, 4096, 4097, 8192, 9000, 10_000] {
            let (n, got) = read(&m, &data, piece).await;
            assert_eq!(n.unwrap(), data.len() as u64, "piece {piece}");
            // One message per block: export stages each as a block of its own.
            assert_eq!(got.iter().map(Bytes::len).collect::<Vec<_>>(), sizes, "piece {piece}");
            assert_eq!(got.concat(), data, "piece {piece}");
        }
        // Short, long and altered blobs are refused, naming the block.
        for piece in [1000, 4096, 10_000] {
            let e = read(&m, &data[..9000], piece).await.0.unwrap_err().to_string();
            assert!(e.contains("block 2 ") && e.contains("is short"), "{e}");
            let mut longer = data.clone();
            longer.push(0);
            let e = read(&m, &longer, piece).await.0.unwrap_err().to_string();
            assert!(e.contains("block 3 ") && e.contains("is extra"), "{e}");
            let mut altered = data.clone();
            altered[5000] ^= 1;
            let e = read(&m, &altered, piece).await.0.unwrap_err().to_string();
            assert!(e.contains("block 1 ") && e.contains("SHA-256"), "{e}");
        }
    }
}
