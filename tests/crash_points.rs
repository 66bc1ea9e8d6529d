//! Crash points: the real `pgvault serve` (or CLI) is killed with SIGKILL at each named fail
//! point of the backup, restore and retention pipelines (as a Flex Consumption "Recreate" site
//! update, an OOM kill or a scale-in past its grace would), then the message is redelivered the
//! way the host does it (the same message id, `DequeueCount` + 1). After each redelivery:
//! exactly one backup is published, no orphan survives `verify --all --clean-orphans`, no
//! `pgvault_restore_*` database is left behind, and no claim is left held. Also: a redelivery
//! while the first attempt still runs, held at a fail point. One stack for the whole file.
//!
//! The SAS sync's crash points are in `tests/pgbackrest_sas.rs` (`sync_is_atomic_and_fails_safe`).

#[path = "support/app.rs"]
mod app;
mod support;

use app::{Served, Stack};
use pgvault::cli::hostsim::{self, Form};
use pgvault::domain::jobs::{BackupJob, Trigger};
use pgvault::domain::layout::BackupKind;
use pgvault::features::claim::{self, Claimed, Delivery, Holder};
use pgvault::monitor::records::{JobKind, JobRecord, Status};
use pgvault::seams::failpoint;
use pgvault::seams::store::BlobStore;
use serde_json::{Value, json};
use std::os::unix::process::ExitStatusExt;
use support::data::{blocking, databases_like, manifests, psql_blocking, table_sums};

const DB: &str = "app";

/// `pgvault serve` with `points` armed.
fn serve_armed(stack: &Stack, points: &str) -> Served {
    stack.serve_with(&[(failpoint::SETTING, points)])
}

/// Deliver `payload` to a server armed to die: the invocation gets no reply, and the process
/// ends by SIGKILL.
async fn invoke_and_die(mut served: Served, function: &str, payload: &Value, point: &str) {
    let result = hostsim::invoke(&served.url, function, payload).await;
    assert!(result.is_err(), "{point}: the process must die before replying: {result:?}\n{}", served.output());
    let status = blocking(|| served.child.wait().unwrap());
    assert_eq!(status.signal(), Some(9), "{point}: killed by SIGKILL at the fail point\n{}", served.output());
    // Its last words say where: the reader of its output may still be on the way to them.
    let said = format!("fail point {point}: SIGKILL");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !served.output().contains(&said) {
        assert!(std::time::Instant::now() < deadline, "{point}: no {said:?} in\n{}", served.output());
        std::thread::yield_now();
    }
}

/// The server has seen the dead process's connections close (their sessions, locks and open
/// transactions are gone), as they are long before the host redelivers.
fn wait_sessions_gone(stack: &Stack) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let sql = "SELECT count(*) FROM pg_stat_activity WHERE application_name IN ('pgvault', 'pg_restore', 'pg_dump')";
    while stack.pg.psql("postgres", sql) != "0" {
        assert!(std::time::Instant::now() < deadline, "the killed worker's sessions never ended");
        std::thread::yield_now();
    }
}

fn record(stack: &Stack, id: &str) -> Value {
    let out = blocking(|| stack.cli(&["jobs", "--json", "--id", id]));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["jobs"][0].clone()
}

fn records(stack: &Stack) -> Vec<JobRecord> {
    let out = blocking(|| stack.cli(&["jobs", "--json"]));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    serde_json::from_value(v["jobs"].clone()).unwrap()
}

async fn claims(stack: &Stack) -> Vec<String> {
    stack.store().await.list(claim::PREFIX).await.unwrap().into_iter().map(|b| b.name).collect()
}

/// `verify --all --clean-orphans`, then: every blob under the database's prefix is a manifest
/// or the data blob a manifest names, and every backup verifies.
async fn clean_and_check_catalog(stack: &Stack, what: &str) -> Vec<String> {
    let out = blocking(|| stack.cli(&["verify", "--all", "--clean-orphans"]));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{what}: {text}{}", String::from_utf8_lossy(&out.stderr));
    let removed: Vec<String> =
        text.lines().filter_map(|l| l.strip_prefix("removed orphan ")).map(str::to_string).collect();
    let store = stack.store().await;
    let prefix = format!("main/{DB}/");
    let published = manifests(&store, &prefix).await;
    let mut expected: Vec<String> =
        published.iter().flat_map(|m| [pgvault::domain::layout::manifest_for_id(&m.id), m.data_blob.clone()]).collect();
    expected.sort();
    let mut found: Vec<String> = store.list(&prefix).await.unwrap().into_iter().map(|b| b.name).collect();
    found.sort();
    assert_eq!(found, expected, "{what}: only published backups remain");
    let again = blocking(|| stack.cli(&["verify", "--all"]));
    let again = String::from_utf8_lossy(&again.stdout).into_owned();
    assert!(!again.contains("orphan"), "{what}: {again}");
    assert!(again.contains(", 0 failed"), "{what}: {again}");
    removed
}

/// Backup: killed at `spec`'s point, redelivered, published once.
async fn backup_crash(stack: &Stack, plain: &Served, point: &str, spec: &str, expect_orphan: bool) {
    let job = BackupJob::new(BackupKind::Database, "main", Some(DB), time::OffsetDateTime::now_utc(), Trigger::Queue);
    let msg = format!("bk-{point}");
    let first = hostsim::queue_payload("backup-worker", "job", &job.to_json(), &msg, "pop1", 1, Form::Host);
    let armed = serve_armed(stack, &format!("{point}={spec}"));
    invoke_and_die(armed, "backup-worker", &first, point).await;
    blocking(|| wait_sessions_gone(stack));
    // The dead delivery holds its dump slot until its own message comes back.
    let held = claims(stack).await;
    assert_eq!(held.len(), 1, "{point}: {held:?}");

    let again = hostsim::queue_payload("backup-worker", "job", &job.to_json(), &msg, "pop2", 2, Form::Host);
    let (status, reply) = plain.invoke("backup-worker", &again).await;
    assert_eq!(status, 200, "{point}: {reply}");
    let rv = &reply["ReturnValue"];
    let expected = if point == "backup.after-manifest" { "already-done" } else { "succeeded" };
    assert_eq!(rv["status"], expected, "{point}: {rv}");

    let store = stack.store().await;
    let mine: Vec<_> =
        manifests(&store, &format!("main/{DB}/")).await.into_iter().filter(|m| m.job_id == job.job_id).collect();
    assert_eq!(mine.len(), 1, "{point}: exactly one backup of the job");
    let rec = record(stack, &job.job_id);
    assert_eq!(rec["status"], "succeeded", "{point}: {rec}");
    assert_eq!(rec["detail"]["backup"], mine[0].id, "{point}: {rec}");
    assert_eq!(rec["bytes"], mine[0].stored_bytes, "{point}: {rec}");
    assert!(claims(stack).await.is_empty(), "{point}: the redelivery took its slot back and released it");
    let removed = clean_and_check_catalog(stack, point).await;
    assert_eq!(removed.len(), usize::from(expect_orphan), "{point}: orphans removed {removed:?}");
    // A third delivery of the same message does nothing more.
    let third = hostsim::queue_payload("backup-worker", "job", &job.to_json(), &msg, "pop3", 3, Form::Clean);
    let (_, reply) = plain.invoke("backup-worker", &third).await;
    assert_eq!(reply["ReturnValue"]["status"], "already-done", "{point}: {reply}");
}

fn request(id: &str, target: Value) -> String {
    json!({ "version": 1, "request_id": id, "requested_by": "crash_points",
        "source": { "server": "main", "database": DB }, "target": target, "options": {} })
    .to_string()
}

fn temp_databases(stack: &Stack) -> Vec<String> {
    blocking(|| databases_like(&stack.pg, "pgvault\\_restore\\_%"))
}

/// Restore: killed at the point, redelivered, restored once, nothing left behind.
async fn restore_crash(stack: &Stack, plain: &Served, point: &str, spec: &str, replace: bool, backed_up: &[String]) {
    let mode = if replace { "replace" } else { "create" };
    let n = format!("{}_{mode}", point.replace(['.', '-'], "_"));
    let target_db = format!("r_{n}");
    if replace {
        psql_blocking(&stack.pg, "postgres", &format!("CREATE DATABASE {target_db}"));
        psql_blocking(&stack.pg, &target_db, "CREATE TABLE old (v text); INSERT INTO old VALUES ('before')");
    }
    let id = format!("crash-{}", n.replace('_', "-"));
    let target = json!({ "mode": mode, "server": "main", "database": target_db });
    let task = stack.take_restore_task(plain, &id, &request(&id, target)).await;
    let msg = format!("t-{id}");
    let first = hostsim::queue_payload("restore-worker", "task", &task, &msg, "p1", 1, Form::Host);
    let armed = serve_armed(stack, &format!("{point}={spec}"));
    invoke_and_die(armed, "restore-worker", &first, point).await;
    blocking(|| wait_sessions_gone(stack));
    let task_id = format!("{id}-1");
    let held = claims(stack).await;
    assert!(held.contains(&claim::name("restore-task", &task_id)), "{point}: the dead delivery's claim: {held:?}");
    let swap_noted = held.contains(&pgvault::features::restore::swap_marker(&task_id));
    assert_eq!(swap_noted, point.starts_with("restore.after-swap") || point == "restore.between-renames", "{held:?}");
    // Another message of the task stands down while the claim's lease runs...
    let other = hostsim::queue_payload("restore-worker", "task", &task, &format!("{msg}-dup"), "p1", 1, Form::Host);
    let (status, reply) = plain.invoke("restore-worker", &other).await;
    assert_eq!((status, reply["ReturnValue"]["status"].as_str()), (200, Some("running-elsewhere")), "{point}: {reply}");

    // The host redelivers the same message.
    let again = hostsim::queue_payload("restore-worker", "task", &task, &msg, "p2", 2, Form::Host);
    let (status, reply) = plain.invoke("restore-worker", &again).await;
    assert_eq!(status, 200, "{point}: {reply}");
    let rv = &reply["ReturnValue"];
    assert!(rv["status"] == "succeeded" || rv["status"] == "already-done", "{point}: {rv}");
    assert_eq!(blocking(|| table_sums(&stack.pg, &target_db)), backed_up, "{point}: the backup's content in place");
    assert_eq!(temp_databases(stack), Vec::<String>::new(), "{point}: no temporary database left behind");
    if replace {
        let kept = blocking(|| databases_like(&stack.pg, &format!("{target_db}\\_pre\\_restore%")));
        assert_eq!(kept.len(), 1, "{point}: replaced once, the old copy kept once: {kept:?}");
        assert_eq!(psql_blocking(&stack.pg, &kept[0], "SELECT v FROM old"), "before", "{point}");
    }
    assert!(claims(stack).await.is_empty(), "{point}: no claim left");
    let all = records(stack);
    let rec = all.iter().find(|r| r.kind == JobKind::RestoreTask && r.id == task_id).unwrap();
    assert_eq!(rec.status, Status::Succeeded, "{point}: {rec:?}");
    let req = all.iter().find(|r| r.kind == JobKind::RestoreRequest && r.id == id).unwrap();
    assert_eq!(req.status, Status::Succeeded, "{point}: {req:?}");
    let third = hostsim::queue_payload("restore-worker", "task", &task, &msg, "p3", 3, Form::Clean);
    let (_, reply) = plain.invoke("restore-worker", &third).await;
    assert_eq!(reply["ReturnValue"]["status"], "already-done", "{point}: {reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_crash_point_is_recovered_by_a_redelivery() {
    let mut stack = Stack::start().await;
    // About 3 MiB stored: several 1 MiB blocks.
    blocking(|| {
        stack.pg.psql("postgres", &format!("CREATE DATABASE {DB}"));
        stack.pg.psql(
            DB,
            "CREATE TABLE t AS SELECT i, md5(i::text) || md5((i * 7)::text) AS v FROM generate_series(1, 60000) i; \
             ALTER TABLE t ADD PRIMARY KEY (i); CREATE TABLE small (k text PRIMARY KEY); INSERT INTO small VALUES ('a')",
        );
    });
    let plain = stack.serve();

    // Backup.
    backup_crash(&stack, &plain, "backup.block-staged", "2*off->return(kill)", false).await;
    backup_crash(&stack, &plain, "backup.after-commit", "return(kill)", true).await;
    backup_crash(&stack, &plain, "backup.after-manifest", "return(kill)", false).await;
    let store = stack.store().await;
    let published = manifests(&store, &format!("main/{DB}/")).await;
    assert_eq!(published.len(), 3, "one backup per job");
    assert!(published.iter().all(|m| m.blocks.len() >= 3), "several blocks: {:?}", published[0].blocks.len());
    let backed_up = blocking(|| table_sums(&stack.pg, DB));

    // Restore.
    restore_crash(&stack, &plain, "restore.mid-stream", "2*off->return(kill)", false, &backed_up).await;
    restore_crash(&stack, &plain, "restore.after-pg-restore", "return(kill)", false, &backed_up).await;
    restore_crash(&stack, &plain, "restore.between-renames", "return(kill)", true, &backed_up).await;
    restore_crash(&stack, &plain, "restore.after-swap", "return(kill)", true, &backed_up).await;
    restore_crash(&stack, &plain, "restore.after-swap", "return(kill)", false, &backed_up).await;

    // A claim whose holder died is taken by another message once the lease is over (time
    // controlled: the claim's own `since` plus the lease).
    let store = stack.store().await;
    let now = time::OffsetDateTime::now_utc();
    let dead = Delivery::queued("dead-holder");
    assert!(matches!(claim::acquire(&store, "restore-task", "lease-1", &dead, now).await.unwrap(), Claimed::Owned(_)));
    let other = Delivery::queued("another-message");
    let Claimed::HeldBy(h) = claim::acquire(&store, "restore-task", "lease-1", &other, now).await.unwrap() else {
        panic!("held within the lease")
    };
    let Holder { expires_at, .. } = h;
    assert_eq!(expires_at, Some(now + claim::LEASE));
    let after = now + claim::LEASE + time::Duration::seconds(1);
    let Claimed::Owned(c) = claim::acquire(&store, "restore-task", "lease-1", &other, after).await.unwrap() else {
        panic!("a claim past its lease is taken over")
    };
    c.release(&store).await.unwrap();

    // Retention (the CLI): killed between a manifest's delete and its data's.
    let mut inventory: Vec<Value> = serde_json::from_str(&stack.inventory(&["postgres"])).unwrap();
    inventory[0]["retention"] = json!({ "daily": 1, "min_keep": 1 });
    stack.set("PGVAULT_INVENTORY", &Value::Array(inventory).to_string());
    let out = blocking(|| {
        stack
            .command(&["retention"])
            .env(failpoint::SETTING, "retention.between-deletes=return(kill)")
            .output()
            .unwrap()
    });
    assert_eq!(out.status.signal(), Some(9), "{}", String::from_utf8_lossy(&out.stderr));
    let left = manifests(&store, &format!("main/{DB}/")).await;
    assert_eq!(left.len(), 2, "one manifest deleted before the kill");
    let out = blocking(|| stack.cli(&["retention"]));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let removed = clean_and_check_catalog(&stack, "retention.between-deletes").await;
    assert_eq!(removed.len(), 1, "the killed run's data blob was an orphan: {removed:?}");
    let left = manifests(&store, &format!("main/{DB}/")).await;
    assert_eq!(left.len(), 1, "the newest backup kept");
    assert!(claims(&stack).await.is_empty());
}

/// A redelivery while the first attempt still runs (its visibility ran out, or its host lost
/// the message): held at a fail point, the first attempt goes on only after the redelivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivery_while_the_first_attempt_runs() {
    let stack = Stack::start().await;
    blocking(|| {
        stack.pg.psql("postgres", &format!("CREATE DATABASE {DB}"));
        stack.pg.psql(DB, "CREATE TABLE t AS SELECT i, md5(i::text) AS v FROM generate_series(1, 20000) i");
    });
    let dir = tempfile::tempdir().unwrap();

    // Backup: the first attempt committed its data and waits; the redelivery publishes; the
    // first then finds the manifest, removes its own data and answers already-done.
    let go = dir.path().join("backup-go");
    let held = serve_armed(&stack, &format!("backup.after-commit=1*return(hold:{})", go.display()));
    let job = BackupJob::new(BackupKind::Database, "main", Some(DB), time::OffsetDateTime::now_utc(), Trigger::Queue);
    let first = hostsim::queue_payload("backup-worker", "job", &job.to_json(), "m1", "pop1", 1, Form::Host);
    let running = app::invoke_until_held(&held, "backup-worker", first, &go);
    let again = hostsim::queue_payload("backup-worker", "job", &job.to_json(), "m1", "pop2", 2, Form::Host);
    let (status, reply) = held.invoke("backup-worker", &again).await;
    assert_eq!((status, reply["ReturnValue"]["status"].as_str()), (200, Some("succeeded")), "{reply}");
    std::fs::write(&go, "").unwrap();
    let (status, reply) = running.await.unwrap().unwrap();
    assert_eq!((status, reply["ReturnValue"]["status"].as_str()), (200, Some("already-done")), "{reply}");
    let store = stack.store().await;
    let published = manifests(&store, &format!("main/{DB}/")).await;
    assert_eq!(published.len(), 1, "exactly one backup");
    let blobs = store.list(&format!("main/{DB}/")).await.unwrap();
    assert_eq!(blobs.len(), 2, "the first attempt removed its own data: {blobs:?}");
    let rec = record(&stack, &job.job_id);
    assert_eq!(rec["status"], "succeeded", "{rec}");
    assert_eq!(rec["detail"]["backup"], published[0].id, "{rec}");
    assert!(claims(&stack).await.is_empty());

    // Cleaning orphans while a backup stands between its commit and its manifest: its blob
    // looks like an orphan, but its job runs. Removing it would publish a manifest without data.
    let go = dir.path().join("clean-go");
    let held = serve_armed(&stack, &format!("backup.after-commit=1*return(hold:{})", go.display()));
    let job = BackupJob::new(BackupKind::Database, "main", Some(DB), time::OffsetDateTime::now_utc(), Trigger::Queue);
    let payload = hostsim::queue_payload("backup-worker", "job", &job.to_json(), "m2", "pop1", 1, Form::Host);
    let running = app::invoke_until_held(&held, "backup-worker", payload, &go);
    let out = blocking(|| stack.cli(&["verify", "--all", "--clean-orphans"]));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("kept orphan") && text.contains("may still be running"), "{text}");
    assert!(!text.contains("removed orphan"), "{text}");
    std::fs::write(&go, "").unwrap();
    let (status, reply) = running.await.unwrap().unwrap();
    assert_eq!((status, reply["ReturnValue"]["status"].as_str()), (200, Some("succeeded")), "{reply}");
    let out = blocking(|| stack.cli(&["verify", "--all", "--clean-orphans"]));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success() && text.contains("2 verified, 0 failed"), "{text}");
    assert!(!text.contains("orphan"), "{text}");
    drop(held);

    // Restore (replace): the first attempt has restored into its temporary database and waits;
    // the same message comes again. Restoring twice would replace the database twice.
    let plain = stack.serve();
    psql_blocking(&stack.pg, "postgres", "CREATE DATABASE target");
    psql_blocking(&stack.pg, "target", "CREATE TABLE old (v text); INSERT INTO old VALUES ('before')");
    let target = json!({ "mode": "replace", "server": "main", "database": "target" });
    let task = stack.take_restore_task(&plain, "twice", &request("twice", target)).await;
    let go = dir.path().join("restore-go");
    let held = serve_armed(&stack, &format!("restore.after-pg-restore=1*return(hold:{})", go.display()));
    let first = hostsim::queue_payload("restore-worker", "task", &task, "t1", "p1", 1, Form::Host);
    let running = app::invoke_until_held(&held, "restore-worker", first, &go);
    let again = hostsim::queue_payload("restore-worker", "task", &task, "t1", "p2", 2, Form::Host);
    let (status, reply) = plain.invoke("restore-worker", &again).await;
    assert_eq!(status, 500, "the redelivery must not restore a second time; the host retries it: {reply}");
    assert!(reply["ReturnValue"]["error"].as_str().unwrap_or_default().contains("still running"), "{reply}");
    std::fs::write(&go, "").unwrap();
    let (status, reply) = running.await.unwrap().unwrap();
    assert_eq!((status, reply["ReturnValue"]["status"].as_str()), (200, Some("succeeded")), "{reply}");
    let third = hostsim::queue_payload("restore-worker", "task", &task, "t1", "p3", 3, Form::Host);
    let (_, reply) = plain.invoke("restore-worker", &third).await;
    assert_eq!(reply["ReturnValue"]["status"], "already-done", "{reply}");
    assert_eq!(blocking(|| table_sums(&stack.pg, "target")), blocking(|| table_sums(&stack.pg, DB)));
    let kept = blocking(|| databases_like(&stack.pg, "target\\_pre\\_restore%"));
    assert_eq!(kept.len(), 1, "replaced once: {kept:?}");
    assert_eq!(temp_databases(&stack), Vec::<String>::new());
    assert!(claims(&stack).await.is_empty());
    let all = records(&stack);
    let rec = all.iter().find(|r| r.kind == JobKind::RestoreTask && r.id == "twice-1").unwrap();
    assert_eq!(rec.status, Status::Succeeded, "{rec:?}");
}
