//! The restore stream's memory, counted: what pgvault holds while a backup streams into
//! pg_restore (verified blocks, authenticated chunks, zstd) is flat in the backup's size, within
//! the budget that DESIGN.md "Streaming and memory" states, and an encrypted backup costs at most
//! one chunk more than the same plain one (issue 14).
//!
//! Counted, not sampled: the test binary's allocator (`cap`) records the most bytes held at once.
//! That peak cannot be reset, so each measurement runs in a child process of this binary
//! (`harness = false`: `main` is the parent, or the child when [`CHILD`] is set). The stream is
//! the one a restore runs: [`catalog::plain_blocks`] over the local store's read, then
//! [`catalog::feed`] (zstd) into a writer standing in for pg_restore's stdin, with the restore's
//! queue ([`catalog::QUEUED`]) between them. In a restore pg_restore is the slow end, so every
//! queue fills; the stand-in makes that happen here too: before each write it waits until the
//! queue is full (or the reader is done), so the peak is the stream's structural one, not an
//! accident of timing.
//!
//! Sizes are scaled down to keep the test quick (2 MiB blocks and 256 KiB chunks, the same 8:1
//! as the defaults of 8 MiB and 1 MiB); the bounds are in blocks and chunks.

use bytes::Bytes;
use pgvault::domain::envelope::{self, DataKey, EncryptWriter};
use pgvault::domain::layout::BackupKind;
use pgvault::domain::manifest::{Block, Encryption, Manifest};
use pgvault::features::catalog;
use pgvault::seams::store::{BlobStore, Tags, block_id, local::LocalStore};
use sha2::{Digest, Sha256};
use std::alloc::System;
use std::io::Write;
use std::path::Path;

#[global_allocator]
static ALLOCATOR: cap::Cap<System> = cap::Cap::new(System, usize::MAX);

/// Set in a child: `<store dir>|<manifest file>|<key file or empty>`.
const CHILD: &str = "PGVAULT_RESTORE_MEMORY_CHILD";
const MIB: usize = 1 << 20;
const BLOCK: usize = 2 * MIB;
const CHUNK: u32 = 256 << 10;

fn main() {
    match std::env::var(CHILD) {
        Ok(spec) => child(&spec),
        Err(_) => parent(),
    }
}

/// `raw` bytes that zstd can shrink a little (one byte in eight is a zero), quick to make.
fn dump_like(raw: usize, seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw + 8);
    let mut x = seed | 1;
    while out.len() < raw {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&(x & !0xff).to_le_bytes());
    }
    out.truncate(raw);
    out
}

/// Write a backup of `plain` (compressed: `compressed`) into the store, the way the backup pipeline lays it out
/// (zstd, then optionally the envelope, cut into blocks), and its manifest next to it.
async fn make_backup(
    store: &LocalStore,
    dir: &Path,
    name: &str,
    plain: &[u8],
    compressed: &[u8],
    key: Option<&DataKey>,
) -> Manifest {
    let id = format!("srv/db/20260101T000000Z-{name}");
    let stored = match key {
        Some(k) => {
            let mut w = EncryptWriter::new(Vec::new(), k, &id, CHUNK);
            w.write_all(compressed).unwrap();
            w.finish().unwrap()
        }
        None => compressed.to_vec(),
    };
    let data_blob = format!("{id}.dump.zst");
    let mut blocks = Vec::new();
    let mut ids = Vec::new();
    for (i, b) in stored.chunks(BLOCK).enumerate() {
        store.stage_block(&data_blob, &block_id(i), Bytes::copy_from_slice(b)).await.unwrap();
        ids.push(block_id(i));
        blocks.push(Block { size: b.len() as u64, sha256: hex::encode(Sha256::digest(b)) });
    }
    store.commit_blocks(&data_blob, &ids, &Tags::new()).await.unwrap();
    let m = Manifest {
        format_version: if key.is_some() { 2 } else { 1 },
        encryption: key.map(|_| Encryption {
            algorithm: envelope::ALGORITHM.into(),
            chunk_size: CHUNK,
            key_id: "https://vault.example/keys/k/1".into(),
            wrap_algorithm: envelope::WRAP_ALGORITHM.into(),
            wrapped_key: String::new(),
        }),
        data_blob,
        raw_bytes: plain.len() as u64,
        stored_bytes: stored.len() as u64,
        sha256: hex::encode(Sha256::digest(&stored)),
        blocks,
        id: id.clone(),
        ..Manifest::skeleton(BackupKind::Database, "srv", "db", time::OffsetDateTime::now_utc(), name)
    };
    std::fs::write(dir.join(format!("{name}.json")), m.to_json()).unwrap();
    m
}

/// Run one child and read the peak it reports.
fn measure(store: &Path, dir: &Path, name: &str, key: Option<&Path>) -> usize {
    let spec = format!(
        "{}|{}|{}",
        store.display(),
        dir.join(format!("{name}.json")).display(),
        key.map(|k| k.display().to_string()).unwrap_or_default()
    );
    let out = std::process::Command::new(std::env::current_exe().unwrap()).env(CHILD, spec).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "child {name} failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("peak ").and_then(|n| n.trim().parse().ok()))
        .unwrap_or_else(|| panic!("child {name} reported no peak: {stdout}"))
}

fn parent() {
    let tmp = tempfile::tempdir().unwrap();
    let store_dir = tmp.path().join("store");
    let store = LocalStore::new(&store_dir);
    let key = DataKey::generate().unwrap();
    let key_file = tmp.path().join("key");
    std::fs::write(&key_file, hex::encode(key.expose())).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    // About 8 and 24 blocks: the small one already fills every queue of the stream.
    let ms = rt.block_on(async {
        let mut ms = Vec::new();
        for (size, raw) in [("s", 18 * MIB), ("l", 54 * MIB)] {
            let plain = dump_like(raw, raw as u64);
            let compressed = zstd::bulk::compress(&plain, 1).unwrap();
            for (kind, k) in [("plain", None), ("enc", Some(&key))] {
                ms.push(make_backup(&store, tmp.path(), &format!("{kind}-{size}"), &plain, &compressed, k).await);
            }
        }
        ms
    });
    let (small_blocks, large_blocks) = (ms[0].blocks.len(), ms[2].blocks.len());
    assert!(small_blocks >= 2 + 2 * catalog::QUEUED, "the small backup has only {small_blocks} blocks");
    assert!(large_blocks >= 3 * small_blocks - 1, "the large backup has {large_blocks} blocks");
    let plain_s = measure(&store_dir, tmp.path(), "plain-s", None);
    let plain_l = measure(&store_dir, tmp.path(), "plain-l", None);
    let enc_s = measure(&store_dir, tmp.path(), "enc-s", Some(&key_file));
    let enc_l = measure(&store_dir, tmp.path(), "enc-l", Some(&key_file));
    let mib = |n: usize| n as f64 / MIB as f64;
    println!(
        "restore stream peak: plain {:.1} / {:.1} MiB, encrypted {:.1} / {:.1} MiB ({} / {} blocks)",
        mib(plain_s),
        mib(plain_l),
        mib(enc_s),
        mib(enc_l),
        small_blocks,
        large_blocks
    );
    // The budget (DESIGN.md "Streaming and memory"): the blocks in the stream (one the reader
    // holds, QUEUED waiting, one in the consumer), what the store hands over at a time (the
    // local store reads 1 MiB), zstd's decoder (its window and buffers, under 3 MiB at level
    // 3), and 1 MiB for the runtime and the tasks.
    let budget = (2 + catalog::QUEUED) * BLOCK + MIB + 3 * MIB + MIB;
    for (what, peak) in [("plain", plain_s), ("plain", plain_l), ("encrypted", enc_s), ("encrypted", enc_l)] {
        assert!(
            peak <= budget,
            "{what} restore stream held {:.1} MiB, over its budget of {:.1}",
            mib(peak),
            mib(budget)
        );
    }
    // Flat: three times the data, within 256 KiB of the same peak.
    let flat = 256 << 10;
    assert!(plain_l <= plain_s + flat, "plain: {:.2} MiB at 3x the size, {:.2} MiB at 1x", mib(plain_l), mib(plain_s));
    assert!(enc_l <= enc_s + flat, "encrypted: {:.2} MiB at 3x the size, {:.2} MiB at 1x", mib(enc_l), mib(enc_s));
    // Encryption costs at most one chunk (sealed: plain bytes and tag) more.
    let chunk = CHUNK as usize + envelope::TAG_LEN;
    for (p, e) in [(plain_s, enc_s), (plain_l, enc_l)] {
        assert!(
            e <= p + chunk,
            "the encrypted stream held {:.2} MiB, the plain one {:.2} MiB: more than one chunk more",
            mib(e),
            mib(p)
        );
    }
    println!("restore_memory: ok");
}

fn child(spec: &str) {
    let parts: Vec<&str> = spec.split('|').collect();
    let [store_dir, manifest_file, key_file] = parts[..] else { panic!("bad child spec {spec:?}") };
    let m = Manifest::from_json(manifest_file, &std::fs::read(manifest_file).unwrap()).unwrap();
    let key = (!key_file.is_empty()).then(|| {
        DataKey::from_bytes(&hex::decode(std::fs::read_to_string(key_file).unwrap().trim()).unwrap()).unwrap()
    });
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let store = LocalStore::new(store_dir);
    let base = ALLOCATOR.allocated();
    let raw = rt.block_on(async {
        let stream = store.read(&m.data_blob).await.unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(catalog::QUEUED);
        let slow = SlowEnd { queue: tx.downgrade() };
        let compression = m.compression;
        let consumer = tokio::task::spawn_blocking(move || catalog::feed(rx, compression, slow, false));
        let (pumped, fed) = tokio::join!(catalog::plain_blocks(&m, key.as_ref(), stream, tx), consumer);
        assert_eq!(pumped.unwrap(), m.stored_bytes);
        fed.unwrap().unwrap()
    });
    assert_eq!(raw, m.raw_bytes, "the stream decompressed to the wrong size");
    println!("peak {}", ALLOCATOR.max_allocated() - base);
}

/// pg_restore's stand-in: before each write it waits until the queue in front of it is full, or
/// its reader has finished (the queue's sender is gone), as a consumer slower than the reader
/// would. It waits on the queue's state, not on time.
struct SlowEnd {
    queue: tokio::sync::mpsc::WeakSender<Bytes>,
}

impl Write for SlowEnd {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        while let Some(tx) = self.queue.upgrade() {
            if tx.capacity() == 0 {
                break;
            }
            drop(tx);
            std::thread::yield_now();
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
