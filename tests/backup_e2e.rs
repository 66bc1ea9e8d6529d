//! End to end on the real local stack: PostgreSQL 15, Azurite over HTTPS with OAuth, the
//! identity endpoint, and the real `pgvault serve` receiving the host's payloads.

#[path = "support/app.rs"]
mod app;
mod support;

use app::{CONTAINER, Stack};
use pgvault::cli::hostsim::{self, Form};
use pgvault::domain::jobs::{BACKUP_JOBS_QUEUE, BackupJob, Trigger};
use pgvault::domain::layout::BackupKind;
use pgvault::seams::queue::JobQueue;
use pgvault::seams::store::BlobStore;
use serde_json::{Value, json};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::data::{VARIED_DB, blocking, manifests, psql_blocking, schema, table_sums, varied_sql};

async fn download(store: &dyn BlobStore, name: &str, to: &Path) {
    use futures::StreamExt;
    use std::io::Write;
    let mut f = std::fs::File::create(to).unwrap();
    let mut s = store.read(name).await.unwrap();
    while let Some(chunk) = s.next().await {
        f.write_all(&chunk.unwrap()).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn varied_database_round_trips_through_the_worker_and_plain_tools() {
    let stack = Stack::start().await;
    psql_blocking(&stack.pg, "postgres", &format!("CREATE DATABASE {}", pgvault::seams::pg::quote_ident(VARIED_DB)));
    psql_blocking(&stack.pg, VARIED_DB, &varied_sql(5));

    let served = stack.serve();
    let (status, reply) = served.invoke("backup-scheduler", &hostsim::timer_payload("backup-scheduler", false)).await;
    assert_eq!(status, 200, "{reply}");
    let report = stack.drain(&served, BACKUP_JOBS_QUEUE).await;
    assert_eq!(report.succeeded, 2, "one database and the globals: {:?}", report.replies);
    for r in &report.replies {
        assert_eq!(r["reply"]["ReturnValue"]["status"], "succeeded", "{r}");
    }

    let store = stack.store().await;
    let db_prefix = pgvault::domain::layout::prefix(Some("main"), Some(VARIED_DB));
    let found = manifests(&store, &db_prefix).await;
    assert_eq!(found.len(), 1);
    let m = &found[0];
    assert_eq!(m.database, VARIED_DB);
    assert!(m.raw_bytes > 150 << 20, "a few hundred MB of data dumped: {}", m.raw_bytes);
    assert!(m.blocks.len() > 10, "1 MiB blocks: {}", m.blocks.len());
    assert_eq!(store.tags(&m.data_blob).await.unwrap().get("kind").map(String::as_str), Some("database"));
    let globals = manifests(&store, "main/@globals/").await;
    assert_eq!(globals.len(), 1);

    // Plain tools only: zstd -d, then pg_restore into a fresh database.
    let dir = tempfile::tempdir().unwrap();
    let zst = dir.path().join("backup.dump.zst");
    let dump = dir.path().join("backup.dump");
    download(&store, &m.data_blob, &zst).await;
    let ok = Command::new("zstd").args(["-q", "-d", "-o"]).arg(&dump).arg(&zst).status().unwrap();
    assert!(ok.success());
    assert_eq!(std::fs::metadata(&dump).unwrap().len(), m.raw_bytes);
    psql_blocking(&stack.pg, "postgres", "CREATE DATABASE restored");
    let out = blocking(|| {
        Command::new(stack.pg.bin_dir.join("pg_restore"))
            .args(["-h", &stack.pg.host, "-p", &stack.pg.port.to_string(), "-U", &stack.pg.superuser, "-d", "restored"])
            .arg(&dump)
            .output()
            .unwrap()
    });
    assert!(out.status.success(), "pg_restore: {}", String::from_utf8_lossy(&out.stderr));
    let bin = &stack.pg.bin_dir;
    let (orig_sums, orig_schema) = blocking(|| (table_sums(&stack.pg, VARIED_DB), schema(&stack.pg, VARIED_DB, bin)));
    let (new_sums, new_schema) = blocking(|| (table_sums(&stack.pg, "restored"), schema(&stack.pg, "restored", bin)));
    assert_eq!(orig_sums, new_sums);
    assert_eq!(orig_schema, new_schema);
    assert!(orig_sums.iter().any(|s| s.contains("Mixed \"\"Quoted\"\" Table")), "{orig_sums:?}");

    // The manifest's row counts (the default: read from the stream) equal the restored tables' counts.
    let counts = m.row_counts.as_ref().expect("row counts");
    assert_eq!(counts.method, "stream");
    assert_eq!(counts.tables.len(), 4);
    for t in &counts.tables {
        let sql = format!(
            "SELECT count(*) FROM {}.{}",
            pgvault::seams::pg::quote_ident(&t.schema),
            pgvault::seams::pg::quote_ident(&t.table)
        );
        let n: i64 = psql_blocking(&stack.pg, "restored", &sql).parse().unwrap();
        assert_eq!(n, t.rows, "{}.{}", t.schema, t.table);
    }

    // The CLI sees the same catalog, and verify proves both archives read.
    let out = stack.cli(&["list", "--json"]);
    assert!(out.status.success());
    let listed: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed.len(), 2);
    // A reader that went away (`pgvault list --json | head`) ends the listing quietly: the pipe's
    // read end is closed before pgvault starts, so its first write meets EPIPE.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = stack.command(&["list", "--json"]).stdin(Stdio::null()).stdout(writer).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && !stderr.contains("panicked"), "{:?} {stderr}", out.status);
    let out = stack.cli(&["verify", "--all"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("2 verified, 0 failed"), "{text}");
}

/// Start `pgvault backup` of `db`, wait until pg_dump's COPY runs, and hand back the child.
fn wait_for_copy(stack: &Stack) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pid = stack.pg.psql(
            "postgres",
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'pgvault' AND query LIKE 'COPY %' LIMIT 1",
        );
        if let Ok(pid) = pid.trim().parse::<i32>() {
            return pid;
        }
        assert!(Instant::now() < deadline, "pg_dump never reached COPY");
        std::thread::yield_now();
    }
}

fn make_big_db(stack: &Stack, db: &str) {
    stack.pg.psql("postgres", &format!("CREATE DATABASE {db}"));
    stack.pg.psql(db, "CREATE TABLE big AS SELECT i, repeat(md5(i::text), 12) AS t FROM generate_series(1, 400000) i");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_dump_commits_nothing_and_reports_pg_dump_error() {
    let stack = Stack::start().await;
    blocking(|| make_big_db(&stack, "big"));
    let mut child = stack
        .command(&["backup", "--server", "main", "--database", "big"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = blocking(|| wait_for_copy(&stack));
    psql_blocking(&stack.pg, "postgres", &format!("SELECT pg_terminate_backend({pid})"));
    let out = blocking(|| {
        child.stdin.take();
        let mut stdout = String::new();
        use std::io::Read;
        child.stdout.take().unwrap().read_to_string(&mut stdout).unwrap();
        (child.wait().unwrap(), stdout)
    });
    assert!(!out.0.success());
    assert!(out.1.contains("FAILED"), "{}", out.1);
    assert!(out.1.contains("pg_dump failed"), "{}", out.1);
    // pg_dump's own words (which depend on where in the COPY protocol the backend died).
    assert!(out.1.contains("pg_dump: error:"), "{}", out.1);
    let store = stack.store().await;
    assert_eq!(store.list("main/").await.unwrap(), vec![], "no committed blob and no manifest");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_a_running_backup_without_committing() {
    let stack = Stack::start().await;
    blocking(|| make_big_db(&stack, "big"));
    let mut served = stack.serve();
    let job =
        BackupJob::new(BackupKind::Database, "main", Some("big"), time::OffsetDateTime::now_utc(), Trigger::Queue);
    let payload = hostsim::queue_payload("backup-worker", "job", &job.to_json(), "m1", "p1", 1, Form::Host);
    let url = served.url.clone();
    let call = tokio::spawn(async move { hostsim::invoke(&url, "backup-worker", &payload).await });
    blocking(|| wait_for_copy(&stack));
    let status = blocking(|| served.terminate());
    let (code, reply) = call.await.unwrap().expect("the running invocation gets a reply");
    assert_eq!(code, 500, "the host must retry it: {reply}");
    assert!(reply["ReturnValue"]["error"].as_str().unwrap().contains("cancelled"), "{reply}");
    assert!(status.success(), "clean exit: {status:?}\n{}", served.output());
    let store = stack.store().await;
    assert_eq!(store.list("main/").await.unwrap(), vec![]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduler_enqueues_one_job_per_eligible_database_and_the_globals() {
    let mut stack = Stack::start().await;
    for db in ["alpha", "beta", "gamma"] {
        psql_blocking(&stack.pg, "postgres", &format!("CREATE DATABASE {db}"));
    }
    psql_blocking(&stack.pg, "postgres", "CREATE DATABASE closed; ALTER DATABASE closed ALLOW_CONNECTIONS false");
    let inventory = stack.inventory(&["postgres", "gamma"]);
    stack.set("PGVAULT_INVENTORY", &inventory);
    let served = stack.serve();
    let (status, reply) = served.invoke("backup-scheduler", &hostsim::timer_payload("backup-scheduler", true)).await;
    assert_eq!(status, 200, "{reply}");
    assert!(reply.get("Outputs").is_some() && reply["Logs"].is_array(), "{reply}");
    let texts = stack.queue().peek(BACKUP_JOBS_QUEUE, 32).await.unwrap();
    let jobs: Vec<BackupJob> = texts.iter().map(|t| BackupJob::from_json(t).unwrap()).collect();
    let mut dbs: Vec<String> = jobs.iter().filter_map(|j| j.database.clone()).collect();
    dbs.sort();
    assert_eq!(dbs, ["alpha", "beta"]);
    assert_eq!(jobs.iter().filter(|j| j.kind == BackupKind::Globals).count(), 1);
    assert!(jobs.iter().all(|j| j.server == "main" && j.trigger == Trigger::Timer));
    let ids: std::collections::HashSet<_> = jobs.iter().map(|j| &j.job_id).collect();
    assert_eq!(ids.len(), 3);
    assert_eq!(reply["ReturnValue"]["enqueued"].as_array().unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_payload_forms_work_and_a_redelivered_job_backs_up_once() {
    let stack = Stack::start().await;
    psql_blocking(&stack.pg, "postgres", "CREATE DATABASE small");
    psql_blocking(&stack.pg, "small", "CREATE TABLE t AS SELECT i FROM generate_series(1, 1000) i");
    let served = stack.serve();
    let root = reqwest::get(format!("{}/", served.url)).await.unwrap();
    assert_eq!(root.status(), 200, "the host polls GET / for readiness");

    let job =
        BackupJob::new(BackupKind::Database, "main", Some("small"), time::OffsetDateTime::now_utc(), Trigger::Timer);
    // The host's real form: message double-encoded, quoted Id/PopReceipt, DequeueCount a string.
    let host = hostsim::queue_payload("backup-worker", "job", &job.to_json(), "id-1", "pr-1", 1, Form::Host);
    assert!(host["Data"]["job"].as_str().unwrap().starts_with('"'));
    assert_eq!(host["Metadata"]["DequeueCount"], json!("1"));
    let (status, reply) = served.invoke("backup-worker", &host).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["ReturnValue"]["status"], "succeeded", "{reply}");
    for key in ["Outputs", "Logs", "ReturnValue"] {
        assert!(reply.get(key).is_some(), "reply lacks {key}: {reply}");
    }
    // The documented clean form, DequeueCount a number: the same job again.
    let clean = hostsim::queue_payload("backup-worker", "job", &job.to_json(), "id-1", "pr-2", 2, Form::Clean);
    assert_eq!(clean["Metadata"]["DequeueCount"], json!(2));
    let (status, reply) = served.invoke("backup-worker", &clean).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["ReturnValue"]["status"], "already-done", "{reply}");

    let store = stack.store().await;
    let blobs = store.list("main/small/").await.unwrap();
    assert_eq!(blobs.len(), 2, "one data blob and one manifest: {blobs:?}");
    // A clean-form job for another id makes a second backup.
    let other =
        BackupJob::new(BackupKind::Database, "main", Some("small"), time::OffsetDateTime::now_utc(), Trigger::Timer);
    let (status, reply) = served
        .invoke(
            "backup-worker",
            &hostsim::queue_payload("backup-worker", "job", &other.to_json(), "id-2", "pr", 1, Form::Clean),
        )
        .await;
    assert_eq!((status, reply["ReturnValue"]["status"].as_str()), (200, Some("succeeded")), "{reply}");
    assert_eq!(manifests(&store, "main/small/").await.len(), 2);
    drop(served);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unprocessable_messages_are_kept_with_their_reason() {
    let stack = Stack::start().await;
    let served = stack.serve();
    let now = time::OffsetDateTime::now_utc();
    let unknown_server = BackupJob::new(BackupKind::Database, "nowhere", Some("x"), now, Trigger::Timer).to_json();
    let unknown_db = BackupJob::new(BackupKind::Database, "main", Some("no_such_db"), now, Trigger::Timer).to_json();
    let cases: Vec<(String, &str)> = vec![
        ("this is not json".into(), "not valid"),
        (r#"{"version":1,"kind":"database"}"#.into(), "missing field"),
        (unknown_server, "unknown server \"nowhere\""),
        (unknown_db, "database \"no_such_db\" does not exist"),
    ];
    stack.assert_rejected_and_kept(&served, BACKUP_JOBS_QUEUE, &cases).await;
    assert!(served.output().contains("rejected and kept"), "{}", served.output());
    // No backup was made: the only blobs are job records (`@jobs/`).
    let blobs = stack.store().await.list("").await.unwrap();
    assert!(blobs.iter().all(|b| b.name.starts_with("@jobs/")), "{blobs:?}");
}

/// Replies stay in the host's shape whatever arrives, and a rejected message too large for its
/// record on `-rejected` (48 KiB of `"`: JSON and XML escaping make the record several times
/// that) is still kept with its reason: its text as a blob the record names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_get_host_replies_and_large_rejected_messages_are_kept() {
    let stack = Stack::start().await;
    let served = stack.serve();
    let http = reqwest::Client::new();
    let host_shaped = |v: &Value| v.get("Outputs").is_some() && v["Logs"].is_array() && v.get("ReturnValue").is_some();

    // 10 MB: no Functions host payload is that large (a queue message holds 64 KiB).
    let big = vec![b'x'; 10 << 20];
    let r = http.post(format!("{}/backup-worker", served.url)).body(big.clone()).send().await.unwrap();
    assert_eq!(r.status(), 413);
    let reply: Value = r.json().await.expect("a JSON reply, not plain text");
    assert!(host_shaped(&reply), "{reply}");
    assert!(reply["ReturnValue"]["error"].as_str().unwrap().contains("larger than 1048576 bytes"), "{reply}");
    // An HTTP function answers the caller through its res binding, in a 200 to the host.
    let r = http.post(format!("{}/backup-now", served.url)).body(big).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let reply: Value = r.json().await.unwrap();
    assert_eq!(reply["Outputs"]["res"]["statusCode"], 413, "{reply}");
    // Unknown functions and wrong methods too.
    let r = http.post(format!("{}/no-such-function", served.url)).body("{}").send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert!(host_shaped(&r.json().await.unwrap()));
    let r = http.get(format!("{}/backup-worker", served.url)).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert!(host_shaped(&r.json().await.unwrap()));

    let text = "\"".repeat(48 * 1024);
    let payload = hostsim::queue_payload("backup-worker", "job", &text, "big-1", "pr", 1, Form::Host);
    let (status, reply) = served.invoke("backup-worker", &payload).await;
    assert_eq!(status, 200, "kept, not retried into the poison queue: {reply}");
    assert_eq!(reply["ReturnValue"]["status"], "rejected", "{reply}");
    let blob = reply["ReturnValue"]["message_blob"].as_str().expect("the text is kept as a blob").to_string();
    assert!(blob.starts_with("@rejected/backup-jobs/"), "{blob}");
    let kept = stack.queue().peek(&format!("{BACKUP_JOBS_QUEUE}-rejected"), 32).await.unwrap();
    assert_eq!(kept.len(), 1, "{kept:?}");
    let record: Value = serde_json::from_str(&kept[0]).unwrap();
    assert_eq!(record["message_blob"], blob.as_str());
    assert_eq!(record["message_id"], "big-1");
    assert_eq!(record["message_bytes"], text.len());
    assert!(record.get("message").is_none(), "{record}");
    assert!(record["reason"].as_str().unwrap().contains("backup job message is not valid"), "{record}");
    let stored = stack.store().await.get(&blob).await.unwrap();
    assert_eq!(stored, text.as_bytes(), "the original text, byte for byte");
    // Kept blobs are not backups.
    let out = blocking(|| stack.cli(&["verify", "--all"]));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("@rejected"), "{}", String::from_utf8_lossy(&out.stdout));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_finds_a_flipped_byte_and_names_the_block() {
    let mut stack = Stack::start().await;
    let local = tempfile::tempdir().unwrap();
    stack.set("PGVAULT_STORAGE", "local");
    stack.set("PGVAULT_LOCAL_DIR", local.path().to_str().unwrap());
    stack.set("PGVAULT_COMPRESSION", "none");
    psql_blocking(&stack.pg, "postgres", "CREATE DATABASE small");
    psql_blocking(&stack.pg, "small", "CREATE TABLE t AS SELECT i, md5(i::text) FROM generate_series(1, 100000) i");
    let out = stack.cli(&["backup", "--server", "main", "--database", "small"]);
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let store = pgvault::seams::store::local::LocalStore::new(local.path());
    let m = manifests(&store, "main/small/").await.remove(0);
    assert!(m.blocks.len() >= 3, "{}", m.blocks.len());
    let id = m.id.clone();
    let out = stack.cli(&["verify", &id]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));

    let path = local.path().join(&m.data_blob);
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = m.blocks[0].size as usize + 10;
    bytes[middle] ^= 0x55;
    std::fs::write(&path, bytes).unwrap();
    let out = stack.cli(&["verify", &id]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(text.contains(&format!("backup {id:?} is corrupt: block 1 (bytes {}..)", m.blocks[0].size)), "{text}");
    let _ = CONTAINER;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_failure_is_reported_as_itself_not_as_the_pipe_it_broke() {
    let mut stack = Stack::start().await;
    psql_blocking(&stack.pg, "postgres", "CREATE DATABASE small");
    psql_blocking(&stack.pg, "small", "CREATE TABLE t AS SELECT i, md5(i::text) FROM generate_series(1, 200000) i");
    stack.set("PGVAULT_BACKUP_CONTAINER", "no-such-container");
    let out = stack.cli(&["backup", "--server", "main", "--database", "small"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(text.contains("ContainerNotFound"), "{text}");
    assert!(text.contains("stage block 0 of blob"), "{text}");
    assert!(!text.contains("SIGPIPE"), "{text}");
}

/// A role that may not read one table: the backup worker rejects the job at once with that
/// cause ("permission denied for table …", from counting rows in the dump's snapshot), instead
/// of retrying pg_dump's failure, which could read "could not import the requested snapshot".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_the_role_may_not_read_is_the_reason_given_not_the_snapshot_error() {
    let mut stack = Stack::start().await;
    psql_blocking(&stack.pg, "postgres", "CREATE DATABASE app; CREATE ROLE lim LOGIN");
    psql_blocking(
        &stack.pg,
        "app",
        "CREATE TABLE open_t AS SELECT 1 AS x; CREATE TABLE secret_t AS SELECT 2 AS y; \
         GRANT SELECT ON open_t TO lim",
    );
    let mut servers: Vec<Value> = serde_json::from_str(&stack.inventory(&["postgres"])).unwrap();
    let mut lim = Stack::server_entry("lim", &stack.pg);
    lim["user"] = json!("lim");
    servers.push(lim);
    stack.set("PGVAULT_INVENTORY", &Value::Array(servers).to_string());
    let served = stack.serve();
    let job = BackupJob::new(BackupKind::Database, "lim", Some("app"), time::OffsetDateTime::now_utc(), Trigger::Queue);
    let payload = hostsim::queue_payload("backup-worker", "job", &job.to_json(), "m1", "pop", 1, Form::Host);
    let (status, reply) = served.invoke("backup-worker", &payload).await;
    // The first delivery, yet no retry: a permission problem does not pass by itself.
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["ReturnValue"]["status"], "rejected", "{reply}");
    let reason = reply["ReturnValue"]["reason"].as_str().unwrap();
    assert!(reason.contains("permission denied for table secret_t"), "{reason}");
    assert!(!reason.contains("could not import the requested snapshot"), "{reason}");
    assert!(manifests(&stack.store().await, "lim/").await.is_empty(), "nothing published");
}

/// Two deliveries of one job at once: exactly one backup is published, and the job record,
/// whichever delivery wrote it last, names that backup and its size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_deliveries_at_once_publish_one_backup_and_the_record_keeps_its_outcome() {
    let stack = Stack::start().await;
    psql_blocking(&stack.pg, "postgres", "CREATE DATABASE app");
    psql_blocking(&stack.pg, "app", "CREATE TABLE t AS SELECT i, md5(i::text) FROM generate_series(1, 20000) i");
    let served = stack.serve();
    let job =
        BackupJob::new(BackupKind::Database, "main", Some("app"), time::OffsetDateTime::now_utc(), Trigger::Queue);
    let text = job.to_json();
    let p1 = hostsim::queue_payload("backup-worker", "job", &text, "m1", "pop1", 1, Form::Host);
    let p2 = hostsim::queue_payload("backup-worker", "job", &text, "m2", "pop2", 1, Form::Host);
    let ((s1, r1), (s2, r2)) = tokio::join!(served.invoke("backup-worker", &p1), served.invoke("backup-worker", &p2));
    assert_eq!((s1, s2), (200, 200), "{r1} {r2}");
    let statuses: std::collections::BTreeSet<String> =
        [&r1, &r2].iter().map(|r| r["ReturnValue"]["status"].as_str().unwrap().to_string()).collect();
    assert!(statuses.contains("succeeded"), "{r1} {r2}");
    let published = manifests(&stack.store().await, "main/app/").await;
    assert_eq!(published.len(), 1, "exactly one backup");
    let out = blocking(|| stack.cli(&["jobs", "--json", "--id", &job.job_id]));
    let record: Value = serde_json::from_slice(&out.stdout).unwrap();
    let rec = &record["jobs"][0];
    assert_eq!(rec["status"], "succeeded", "{record}");
    assert_eq!(rec["detail"]["backup"], published[0].id, "{record}");
    assert_eq!(rec["bytes"], published[0].stored_bytes, "the record keeps the winner's outcome: {record}");
}

/// A role subject to row-level security: the job is rejected on its first delivery with the
/// cause and a HINT (BYPASSRLS), never retried into the poison queue, and never a backup
/// missing rows. With exact row counts the count (row security off, as pg_dump) names the
/// table; without them pg_dump's own refusal does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_level_security_is_a_rejection_with_a_hint_not_a_retry() {
    let mut stack = Stack::start().await;
    psql_blocking(&stack.pg, "postgres", "CREATE DATABASE app; CREATE ROLE rls LOGIN");
    psql_blocking(
        &stack.pg,
        "app",
        "CREATE TABLE accounts AS SELECT i, 'u' || i AS owner FROM generate_series(1, 10) i; \
         ALTER TABLE accounts ENABLE ROW LEVEL SECURITY; \
         CREATE POLICY mine ON accounts FOR SELECT USING (owner = current_user); \
         GRANT SELECT ON accounts TO rls",
    );
    let mut servers: Vec<Value> = serde_json::from_str(&stack.inventory(&["postgres"])).unwrap();
    let mut rls = Stack::server_entry("rls", &stack.pg);
    rls["user"] = json!("rls");
    servers.push(rls);
    stack.set("PGVAULT_INVENTORY", &Value::Array(servers).to_string());
    for row_counts in ["exact", "off"] {
        stack.set("PGVAULT_ROW_COUNTS", row_counts);
        let served = stack.serve();
        let job =
            BackupJob::new(BackupKind::Database, "rls", Some("app"), time::OffsetDateTime::now_utc(), Trigger::Queue);
        let payload = hostsim::queue_payload("backup-worker", "job", &job.to_json(), "m1", "pop", 1, Form::Host);
        let (status, reply) = served.invoke("backup-worker", &payload).await;
        assert_eq!(status, 200, "{row_counts}: {reply}");
        assert_eq!(reply["ReturnValue"]["status"], "rejected", "{row_counts}: {reply}");
        let reason = reply["ReturnValue"]["reason"].as_str().unwrap();
        assert!(reason.contains("row-level security policy for table \"accounts\""), "{row_counts}: {reason}");
        assert!(reason.contains("HINT:") && reason.contains("BYPASSRLS"), "{row_counts}: {reason}");
        drop(served);
    }
    assert!(manifests(&stack.store().await, "rls/").await.is_empty(), "nothing published");
}
