//! Client-side envelope encryption on the local stack: data keys wrapped by the Key Vault test
//! server (real RSA-OAEP-256), chunks sealed with AES-256-GCM, and the real `pgvault` binary
//! run as the Functions host runs it. Round trip (handler, verify with and without the key,
//! restore, as-files, `pgvault cat | pg_restore`), tampering refused naming the chunk, key
//! rotation, crypto-shredding by disabling a key version, and an encrypted backup in parts.

#[path = "support/app.rs"]
mod app;
mod support;

use app::Stack;
use bytes::Bytes;
use pgvault::cli::hostsim;
use pgvault::domain::envelope::{DEFAULT_CHUNK_SIZE, HEADER_LEN, TAG_LEN};
use pgvault::domain::jobs::BACKUP_JOBS_QUEUE;
use pgvault::domain::manifest::{Block, Manifest};
use pgvault::features::restore::{RESTORE_REQUESTS_QUEUE, RESTORE_TASKS_QUEUE};
use pgvault::seams::queue::JobQueue;
use pgvault::seams::store::{BlobStore, Tags};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::process::{Output, Stdio};
use support::KeyVault;

/// A row that must never appear in stored bytes.
const MARKER: &str = "PGVAULT-PLAINTEXT-MARKER-4f7e2a9c";
const KEY: &str = "backup-key";

fn psql(stack: &Stack, db: &str, sql: &str) -> String {
    tokio::task::block_in_place(|| stack.pg.psql(db, sql))
}

fn cli(stack: &Stack, args: &[&str]) -> Output {
    tokio::task::block_in_place(|| stack.cli(args))
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// A stack with the Key Vault server holding key `backup-key`, PGVAULT_ENCRYPTION_KEY set to it
/// (no version: the current one is resolved and recorded), and database `appdb` of about 3.5 MB
/// (over three 1 MiB chunks even uncompressed) holding the marker row.
async fn encrypted_stack(compression: &str) -> (Stack, KeyVault, String) {
    let mut stack = Stack::start().await;
    let kv = KeyVault::start(&stack.ca);
    let v1 = kv.create_key(KEY);
    stack.set("PGVAULT_ENCRYPTION_KEY", &kv.key_id(KEY));
    stack.set("PGVAULT_COMPRESSION", compression);
    psql(&stack, "postgres", "CREATE DATABASE appdb");
    psql(
        &stack,
        "appdb",
        &format!(
            "CREATE TABLE t AS SELECT i, md5(i::text) || md5((i * 7)::text) AS h FROM generate_series(1, 50000) i;
             INSERT INTO t VALUES (0, '{MARKER}')"
        ),
    );
    (stack, kv, v1)
}

/// A fingerprint of table `t` in `db`.
fn fingerprint(stack: &Stack, db: &str) -> String {
    psql(stack, db, "SELECT count(*) || ':' || md5(string_agg(i || h, ',' ORDER BY i)) FROM t")
}

async fn manifests(store: &dyn BlobStore, prefix: &str) -> Vec<Manifest> {
    let mut out = Vec::new();
    for b in store.list(prefix).await.unwrap() {
        if b.name.ends_with(".manifest.json") {
            out.push(Manifest::from_json(&b.name, &store.get(&b.name).await.unwrap()).unwrap());
        }
    }
    out.sort_by_key(|m| m.requested_at);
    out
}

async fn read_all(store: &dyn BlobStore, name: &str) -> Vec<u8> {
    use futures::StreamExt;
    let mut s = store.read(name).await.unwrap();
    let mut out = Vec::new();
    while let Some(b) = s.next().await {
        out.extend_from_slice(&b.unwrap());
    }
    out
}

/// Replace a backup's data with `data` and make its manifest match it (block list, sizes and
/// hashes), as an attacker with write access to the container can.
async fn rewrite(store: &dyn BlobStore, m: &Manifest, data: &[u8]) {
    let blocks: Vec<Block> =
        data.chunks(1 << 20).map(|b| Block { size: b.len() as u64, sha256: hex::encode(Sha256::digest(b)) }).collect();
    let mut edited = m.clone();
    edited.blocks = blocks;
    edited.stored_bytes = data.len() as u64;
    edited.sha256 = hex::encode(Sha256::digest(data));
    store.put(&m.data_blob, Bytes::copy_from_slice(data), &Tags::new()).await.unwrap();
    let name = pgvault::domain::layout::manifest_for_id(&m.id);
    store.put(&name, Bytes::from(edited.to_json()), &Tags::new()).await.unwrap();
}

/// Stored offset of chunk `i`.
fn chunk_at(i: usize) -> usize {
    HEADER_LEN + i * (DEFAULT_CHUNK_SIZE as usize + TAG_LEN)
}

fn temp_databases(stack: &Stack) -> String {
    psql(stack, "postgres", "SELECT string_agg(datname, ',') FROM pg_database WHERE datname LIKE 'pgvault_restore_%'")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_round_trip_through_the_handler() {
    let (stack, kv, v1) = encrypted_stack("none").await;
    let source = fingerprint(&stack, "appdb");
    let served = stack.serve();
    let (status, reply) = served.invoke("backup-scheduler", &hostsim::timer_payload("backup-scheduler", false)).await;
    assert_eq!(status, 200, "{reply}");
    let report = stack.drain(&served, BACKUP_JOBS_QUEUE).await;
    assert_eq!(report.succeeded, 2, "appdb and the globals: {:?}\n{}", report.replies, served.output());

    let store = stack.store().await;
    let all = manifests(&store, "main/").await;
    assert_eq!(all.len(), 2);
    for m in &all {
        let enc = m.encryption.as_ref().unwrap_or_else(|| panic!("{} is encrypted", m.id));
        assert_eq!(enc.key_id, format!("{}/{v1}", kv.key_id(KEY)), "the version is recorded");
        assert_eq!((enc.algorithm.as_str(), enc.wrap_algorithm.as_str()), ("aes-256-gcm-chunked-v1", "RSA-OAEP-256"));
        assert_eq!(m.format_version, 2);
        assert!(m.data_blob.ends_with(".enc"), "{}", m.data_blob);
        assert!(m.restore_hint.starts_with("pgvault cat "), "{}", m.restore_hint);
    }
    let m = all.iter().find(|m| m.database == "appdb").unwrap().clone();
    let stored = read_all(&store, &m.data_blob).await;
    assert!(stored.len() > chunk_at(3), "more than three chunks: {}", stored.len());
    assert_eq!(&stored[..6], b"PGVENC");
    assert!(!stored.windows(MARKER.len()).any(|w| w == MARKER.as_bytes()), "the marker is not in the stored blob");
    // Nor the archive's own magic: pg_dump's output is not readable from storage.
    assert!(!stored.windows(5).any(|w| w == b"PGDMP"));

    // verify without the key: the vault refuses every request, and the stored bytes still check.
    kv.set_forbidden(true);
    let before = kv.requests().len();
    let out = cli(&stack, &["verify", "--all"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("encrypted (stored bytes checked"), "{}", text(&out));
    assert!(
        kv.requests()[before..].iter().all(|r| !r.path.contains("unwrapkey")),
        "no unwrap without --decrypt: {:?}",
        kv.requests()
    );
    kv.set_forbidden(false);
    let out = cli(&stack, &["verify", "--all", "--decrypt"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(text(&out).matches("every chunk authenticated").count(), 2, "{}", text(&out));

    // A restore and an export as files, through the handler.
    for (id, target) in [
        ("enc-restore", json!({ "mode": "create", "server": "main", "database": "appdb_copy" })),
        ("enc-files", json!({ "mode": "as-files", "container": "exports", "prefix": "x/" })),
    ] {
        let request = json!({ "version": 1, "request_id": id, "requested_by": "encryption_e2e",
            "source": { "server": "main", "database": "appdb" }, "target": target, "options": {} });
        stack.queue().send(RESTORE_REQUESTS_QUEUE, &request.to_string(), false).await.unwrap();
    }
    for queue in [RESTORE_REQUESTS_QUEUE, RESTORE_TASKS_QUEUE] {
        let report = stack.drain(&served, queue).await;
        assert_eq!(report.succeeded, 2, "{queue}: {:?}\n{}", report.replies, served.output());
    }
    assert_eq!(fingerprint(&stack, "appdb_copy"), source);

    // The exported file is the plain dump, with its own SHA-256 in the report.
    let jobs: Value = serde_json::from_slice(&cli(&stack, &["jobs", "--json"]).stdout).unwrap();
    let files: Vec<&Value> = jobs["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r["detail"]["report"]["files"].as_array().into_iter().flatten())
        .collect();
    assert_eq!(files.len(), 2, "{jobs}");
    let data = files.iter().find(|f| !f["blob"].as_str().unwrap().ends_with(".manifest.json")).unwrap();
    let blob = data["blob"].as_str().unwrap();
    assert!(!blob.ends_with(".enc"), "{blob}");
    let exports = pgvault::azure::AzureBlobStore::new(
        &stack.azurite.blob_endpoint,
        "exports",
        support::test_credential(),
        pgvault::azure::client_options(Some(stack.ca.ca_pem_path()), &pgvault::azure::RetrySettings::fast()).unwrap(),
    )
    .await
    .unwrap();
    let plain = read_all(&exports, blob).await;
    assert_eq!(data["sha256"], hex::encode(Sha256::digest(&plain)));
    assert_eq!(data["bytes"], plain.len() as u64);
    assert_eq!(&plain[..5], b"PGDMP", "the plain archive (compression none)");
    let copy: Manifest =
        Manifest::from_json("copy", &exports.get(&format!("x/{}.manifest.json", m.id)).await.unwrap()).unwrap();
    assert!(copy.encryption.is_none() && copy.sha256 == data["sha256"], "the copied manifest describes the file");
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &plain).unwrap();
    psql(&stack, "postgres", "CREATE DATABASE appdb_files");
    let restored = pg_restore(&stack, "appdb_files", Some(file.path()), None);
    assert!(restored.status.success(), "{}", text(&restored));
    assert_eq!(fingerprint(&stack, "appdb_files"), source, "as-files gives the same data as the restore");

    // pgvault cat | pg_restore.
    psql(&stack, "postgres", "CREATE DATABASE appdb_cat");
    let mut cat = stack.command(&["cat", &m.id]);
    let mut cat = cat.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let restored = pg_restore(&stack, "appdb_cat", None, Some(cat.stdout.take().unwrap().into()));
    let cat = tokio::task::block_in_place(|| cat.wait_with_output().unwrap());
    assert!(cat.status.success(), "{}", text(&cat));
    assert!(restored.status.success(), "{}", text(&restored));
    assert_eq!(fingerprint(&stack, "appdb_cat"), source);
    let globals = all.iter().find(|m| m.database.is_empty()).unwrap();
    let out = cli(&stack, &["cat", &globals.id]);
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("PostgreSQL database cluster dump"));
}

/// `pg_restore --no-owner -d db` from a file or from stdin.
fn pg_restore(stack: &Stack, db: &str, file: Option<&std::path::Path>, stdin: Option<Stdio>) -> Output {
    let mut cmd = std::process::Command::new(stack.pg.bin_dir.join("pg_restore"));
    cmd.args(["--no-owner", "--exit-on-error", "-h", &stack.pg.host, "-p", &stack.pg.port.to_string()]).args([
        "-U",
        &stack.pg.superuser,
        "-d",
        db,
    ]);
    if let Some(f) = file {
        cmd.arg(f);
    }
    if let Some(s) = stdin {
        cmd.stdin(s);
    }
    tokio::task::block_in_place(|| cmd.output().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_chunks_are_refused_naming_the_chunk_and_the_target_is_untouched() {
    let (stack, _kv, _) = encrypted_stack("none").await;
    for _ in 0..2 {
        let out = cli(&stack, &["backup", "--server", "main", "--database", "appdb"]);
        assert!(out.status.success(), "{}", text(&out));
    }
    let store = stack.store().await;
    let list = manifests(&store, "main/appdb/").await;
    let (m, other) = (&list[0], &list[1]);
    let original = read_all(&store, &m.data_blob).await;
    let foreign = read_all(&store, &other.data_blob).await;
    psql(&stack, "postgres", "CREATE DATABASE victim");
    psql(&stack, "victim", "CREATE TABLE t AS SELECT 1 AS i, 'untouched' AS h");
    let victim = fingerprint(&stack, "victim");

    let mut flipped = original.clone();
    flipped[chunk_at(1) + 4242] ^= 0x01;
    let mut spliced = original.clone();
    spliced[chunk_at(2)..chunk_at(3)].copy_from_slice(&foreign[chunk_at(2)..chunk_at(3)]);
    let cases: [(&str, Vec<u8>, &str); 3] = [
        ("flipped byte", flipped, "chunk 1 (stored bytes"),
        ("truncated", original[..chunk_at(2)].to_vec(), "chunk 1 (stored bytes"),
        ("spliced", spliced, "chunk 2 (stored bytes"),
    ];
    for (what, data, names) in cases {
        rewrite(&store, m, &data).await;
        // The blocks match the edited manifest: only the chunks can tell.
        let out = cli(&stack, &["verify", &m.id]);
        assert!(out.status.success(), "{what}: keyless verify checks the blocks only: {}", text(&out));
        let out = cli(
            &stack,
            &[
                "restore",
                "--server",
                "main",
                "--database",
                "appdb",
                "--backup",
                &m.id,
                "--mode",
                "replace",
                "--target-database",
                "victim",
            ],
        );
        let said = text(&out);
        assert!(!out.status.success(), "{what}: {said}");
        assert!(said.contains("does not decrypt") && said.contains(names), "{what}: {said}");
        if what == "truncated" {
            assert!(said.contains("the final chunk is missing"), "{said}");
        }
        assert_eq!(fingerprint(&stack, "victim"), victim, "{what}: the target is untouched");
        assert_eq!(temp_databases(&stack), "", "{what}: no temporary database is left");
        let out = cli(&stack, &["verify", "--decrypt", &m.id]);
        assert!(!out.status.success() && text(&out).contains(names), "{what}: {}", text(&out));
    }
    // Put back, it restores.
    rewrite(&store, m, &original).await;
    let out = cli(
        &stack,
        &["restore", "--server", "main", "--database", "appdb", "--backup", &m.id, "--target-database", "fine"],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(fingerprint(&stack, "fine"), fingerprint(&stack, "appdb"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_and_disabled_key_versions() {
    let (mut stack, kv, v1) = encrypted_stack("zstd:3").await;
    let source = fingerprint(&stack, "appdb");
    let backup = || {
        let out = cli(&stack, &["backup", "--server", "main", "--database", "appdb"]);
        assert!(out.status.success(), "{}", text(&out));
    };
    backup();
    let v2 = kv.rotate_key(KEY);
    backup();
    let store = stack.store().await;
    let list = manifests(&store, "main/appdb/").await;
    assert_eq!(list.len(), 2);
    let versions: Vec<String> = list.iter().map(|m| m.encryption.as_ref().unwrap().key_id.clone()).collect();
    assert_eq!(versions, [format!("{}/{v1}", kv.key_id(KEY)), format!("{}/{v2}", kv.key_id(KEY))]);
    for (i, m) in list.iter().enumerate() {
        let target = format!("rot{i}");
        let out = cli(
            &stack,
            &["restore", "--server", "main", "--database", "appdb", "--backup", &m.id, "--target-database", &target],
        );
        assert!(out.status.success(), "{}", text(&out));
        assert_eq!(fingerprint(&stack, &target), source);
    }

    // Crypto-shredding: v1 disabled makes the first backup unreadable, and only it.
    kv.set_key_enabled(KEY, &v1, false);
    let shredded = format!("key version {}/{v1} not available: disabled", kv.key_id(KEY));
    let out = cli(&stack, &["list"]);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains(&format!("unreadable {}: {shredded}", list[0].id)), "{said}");
    assert!(!said.contains(&format!("unreadable {}", list[1].id)), "{said}");
    let listed: Value = serde_json::from_slice(&cli(&stack, &["list", "--json"]).stdout).unwrap();
    assert_eq!(listed[0]["unreadable"], shredded.as_str());
    assert!(listed[1].get("unreadable").is_none(), "{listed}");
    let out = cli(&stack, &["verify", &list[0].id, &list[1].id]);
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(said.contains(&format!("FAILED {}", list[0].id)) && said.contains(&shredded), "{said}");
    assert!(said.contains(&format!("ok {}", list[1].id)), "{said}");
    // The restore refuses before touching anything: no database, no temporary one.
    let before = kv.requests().len();
    let out = cli(
        &stack,
        &["restore", "--server", "main", "--database", "appdb", "--backup", &list[0].id, "--target-database", "never"],
    );
    let said = text(&out);
    assert!(!out.status.success() && said.contains(&shredded), "{said}");
    assert_eq!(psql(&stack, "postgres", "SELECT count(*) FROM pg_database WHERE datname = 'never'"), "0");
    assert_eq!(temp_databases(&stack), "");
    assert!(
        kv.requests()[before..]
            .iter()
            .any(|r| r.path.contains(&format!("/keys/{KEY}/{v1}/unwrapkey")) && r.status == 403)
    );
    let out = cli(
        &stack,
        &["restore", "--server", "main", "--database", "appdb", "--backup", &list[1].id, "--target-database", "still"],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(fingerprint(&stack, "still"), source);

    // Drills pass over the shredded older backup, with the reason, and drill the newest.
    stack.set("PGVAULT_DRILL_SERVER", "main");
    let out = cli(&stack, &["drill"]);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains(&format!("passed over {} (main/appdb): {shredded}", list[0].id)), "{said}");
    assert!(said.contains(&format!("ok {} (main/appdb)", list[1].id)), "{said}");

    // A new backup while the current version is disabled is refused, not made unreadable.
    kv.set_key_enabled(KEY, &v2, false);
    let out = cli(&stack, &["backup", "--server", "main", "--database", "appdb"]);
    assert!(!out.status.success() && text(&out).contains("could never be read"), "{}", text(&out));
    assert_eq!(manifests(&store, "main/appdb/").await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_vault_keys_through_the_adapter() {
    use pgvault::domain::envelope::DataKey;
    use pgvault::seams::keys::{KeyStatus, KeyWrapper};
    let ca = support::TestCa::new();
    let kv = KeyVault::start(&ca);
    let v1 = kv.create_key(KEY);
    let options =
        pgvault::azure::client_options(Some(ca.ca_pem_path()), &pgvault::azure::RetrySettings::none()).unwrap();
    let keys = pgvault::azure::AzureKeyWrapper::new(support::test_credential(), options);
    let data = DataKey::generate().unwrap();
    // Without a version, the current one wraps and is named.
    let w1 = keys.wrap(&kv.key_id(KEY), &data).await.unwrap();
    assert_eq!(w1.key_id, format!("{}/{v1}", kv.key_id(KEY)));
    assert_eq!((w1.algorithm.as_str(), w1.wrapped.len()), ("RSA-OAEP-256", 256));
    assert!(!w1.wrapped.windows(32).any(|w| w == data.expose()));
    assert_eq!(kv.wrapped_plain_values(), [data.expose().to_vec()], "the vault saw the plain key, once");
    // The challenge came first; the rest carried a token.
    let log = kv.requests();
    assert_eq!((log[0].status, log[0].authorized), (401, false), "{log:?}");
    assert!(log[1..].iter().all(|r| r.authorized), "{log:?}");
    let v2 = kv.rotate_key(KEY);
    let w2 = keys.wrap(&kv.key_id(KEY), &data).await.unwrap();
    assert!(w2.key_id.ends_with(&v2));
    // Each unwraps with its own version, after the rotation too.
    for w in [&w1, &w2] {
        assert_eq!(keys.unwrap(w).await.unwrap().expose(), data.expose());
    }
    assert_eq!(keys.status(&w1.key_id).await.unwrap(), KeyStatus::Available);
    // A version pinned in the setting wraps with that version.
    let pinned = keys.wrap(&w1.key_id, &data).await.unwrap();
    assert_eq!(pinned.key_id, w1.key_id);
    // Disabled: no unwrap, and the status says so.
    kv.set_key_enabled(KEY, &v1, false);
    let e = keys.unwrap(&w1).await.unwrap_err();
    assert!(
        e.is_permanent() && e.to_string().contains(&format!("key version {} not available: disabled", w1.key_id)),
        "{e}"
    );
    assert_eq!(keys.status(&w1.key_id).await.unwrap(), KeyStatus::Unavailable("disabled".into()));
    assert_eq!(keys.unwrap(&w2).await.unwrap().expose(), data.expose(), "the other version is unaffected");
    // A wrapped key that is not this key's: refused by the vault, permanent.
    let mut bad = w2.clone();
    bad.wrapped[10] ^= 1;
    assert!(keys.unwrap(&bad).await.unwrap_err().is_permanent());
    // Forbidden: access denied names the role, and the state is unknown rather than unavailable.
    kv.set_forbidden(true);
    let e = keys.unwrap(&w2).await.unwrap_err();
    assert!(e.to_string().contains("access denied") && e.to_string().contains("Key Vault Crypto User"), "{e}");
    assert!(keys.status(&w2.key_id).await.is_err());
    kv.set_forbidden(false);
    // Deleted: every version is gone.
    kv.delete_key(KEY);
    let e = keys.unwrap(&w2).await.unwrap_err();
    assert!(e.to_string().contains("not available: deleted"), "{e}");
    assert_eq!(keys.status(&w2.key_id).await.unwrap(), KeyStatus::Unavailable("deleted".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_backup_in_parts_round_trips_and_a_flipped_chunk_names_its_part() {
    let (mut stack, kv, _) = encrypted_stack("none").await;
    stack.set("PGVAULT_PARALLEL_ABOVE_MIB", "0");
    stack.set("PGVAULT_BACKUP_JOBS", "2");
    // A table twice t's size, which is split into two COPY parts of over three chunks each; t
    // (with the marker) goes whole into a data part of over three chunks.
    psql(
        &stack,
        "appdb",
        &format!(
            "CREATE TABLE u AS SELECT i, md5(i::text) || md5((i * 3)::text) AS h FROM generate_series(1, 100000) i;
             INSERT INTO u VALUES (0, '{MARKER}')"
        ),
    );
    let facts = "SELECT (SELECT count(*) || ':' || md5(string_agg(i || h, ',' ORDER BY i)) FROM t) || ' ' || \
                 (SELECT count(*) || ':' || md5(string_agg(i || h, ',' ORDER BY i)) FROM u)";
    let source = psql(&stack, "appdb", facts);
    let out = cli(&stack, &["backup", "--server", "main", "--database", "appdb"]);
    assert!(out.status.success(), "{}", text(&out));
    let store = stack.store().await;
    let m = manifests(&store, "main/appdb/").await.remove(0);
    assert!(m.is_parts() && m.format_version == 3, "{}", m.id);
    assert!(m.encryption.is_some());
    let kinds: Vec<&str> = m.parts.iter().map(|p| p.spec.name.as_str()).collect();
    assert!(m.parts.iter().filter(|p| p.spec.kind == pgvault::domain::parts::PartKind::Copy).count() >= 2, "{kinds:?}");
    for p in &m.parts {
        assert!(p.data_blob.ends_with(".enc"), "{}", p.data_blob);
        assert!(p.restore_hint.contains(&format!("pgvault cat {}/{}", m.id, p.spec.name)), "{}", p.restore_hint);
        let stored = read_all(&store, &p.data_blob).await;
        assert_eq!(&stored[..6], b"PGVENC", "part {}", p.spec.name);
        assert!(!stored.windows(MARKER.len()).any(|w| w == MARKER.as_bytes()), "part {}: no marker", p.spec.name);
        assert!(!stored.windows(5).any(|w| w == b"PGDMP"), "part {}: no archive magic", p.spec.name);
    }
    // Counts from the streams of encrypted parts too (read before sealing); no frames are cut.
    let counts = m.row_counts.as_ref().unwrap();
    assert_eq!(counts.method, "stream");
    let rows: Vec<(&str, i64)> = counts.tables.iter().map(|t| (t.table.as_str(), t.rows)).collect();
    assert_eq!(rows, [("t", 50001), ("u", 100001)]);
    let data = m.parts.iter().find(|p| p.spec.tables.iter().any(|t| t.table == "t")).unwrap();
    assert!(data.archive_index.as_ref().is_some_and(|i| i.frames.is_empty()), "{:?}", data.archive_index);

    // verify without the key checks the stored bytes of every part; with it, every chunk.
    kv.set_forbidden(true);
    let out = cli(&stack, &["verify", &m.id]);
    assert!(out.status.success() && text(&out).contains("encrypted (stored bytes checked"), "{}", text(&out));
    kv.set_forbidden(false);
    let out = cli(&stack, &["verify", "--decrypt", &m.id]);
    assert!(out.status.success() && text(&out).contains("every chunk authenticated"), "{}", text(&out));

    // A parallel restore gives the same data.
    let out = cli(
        &stack,
        &["restore", "--server", "main", "--database", "appdb", "--target-database", "appdb_parts", "--jobs", "2"],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(psql(&stack, "appdb_parts", facts), source);

    // One byte flipped in the middle chunk of a part, its blocks and hashes made to match (as
    // someone with write access to the container can): refused naming the part and the chunk,
    // before the target is touched.
    psql(&stack, "postgres", "CREATE DATABASE victim");
    psql(&stack, "victim", "CREATE TABLE t AS SELECT 1 AS i, 'untouched' AS h");
    let victim = fingerprint(&stack, "victim");
    let original = read_all(&store, &data.data_blob).await;
    assert!(original.len() > chunk_at(3), "part {} has over three chunks: {}", data.spec.name, original.len());
    let mut flipped = original.clone();
    flipped[chunk_at(1) + 4242] ^= 0x01;
    let mut edited = m.clone();
    let part = edited.parts.iter_mut().find(|p| p.spec.name == data.spec.name).unwrap();
    part.blocks = flipped
        .chunks(1 << 20)
        .map(|b| Block { size: b.len() as u64, sha256: hex::encode(Sha256::digest(b)) })
        .collect();
    part.sha256 = hex::encode(Sha256::digest(&flipped));
    store.put(&data.data_blob, Bytes::from(flipped), &Tags::new()).await.unwrap();
    let name = pgvault::domain::layout::manifest_for_id(&m.id);
    store.put(&name, Bytes::from(edited.to_json()), &Tags::new()).await.unwrap();
    let out = cli(&stack, &["verify", &m.id]);
    assert!(out.status.success(), "keyless verify checks the blocks only: {}", text(&out));
    let named = format!("backup \"{}/{}\" does not decrypt: chunk 1 (stored bytes", m.id, data.spec.name);
    let out = cli(
        &stack,
        &["restore", "--server", "main", "--database", "appdb", "--mode", "replace", "--target-database", "victim"],
    );
    let said = text(&out);
    assert!(!out.status.success() && said.contains(&named), "{said}");
    assert_eq!(fingerprint(&stack, "victim"), victim, "the target is untouched");
    assert_eq!(temp_databases(&stack), "", "no temporary database is left");
    let out = cli(&stack, &["verify", "--decrypt", &m.id]);
    assert!(!out.status.success() && text(&out).contains(&named), "{}", text(&out));
}
