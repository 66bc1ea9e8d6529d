//! PostgreSQL-side faults, on the real stack: the server restarts mid-dump; the restore's
//! session is terminated; a lock held by another session with `lock_timeout` in force; the
//! connection limit reached (by pg_dump, by pg_restore); the restore's scratch disk fills up;
//! the target server runs out of space during pg_restore. Each ends in a named failure with
//! nothing committed and the target untouched. The dump's session terminated is in
//! `backup_e2e` (`a_failed_dump_commits_nothing_and_reports_pg_dump_error`).
//!
//! Work is held at fail points (`return(hold:<file>)`) while the fault is applied, so nothing
//! depends on timing. The disk faults mount small tmpfs file systems (tests run as root here,
//! as in CI; otherwise through `sudo -n`). One stack for the whole file.

#[path = "support/app.rs"]
mod app;
mod support;

use app::{Served, Stack};
use pgvault::cli::hostsim::{self, Form};
use pgvault::domain::jobs::{BackupJob, Trigger};
use pgvault::domain::layout::BackupKind;
use pgvault::seams::failpoint;
use pgvault::seams::store::BlobStore;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use support::data::{blocking, databases_like, manifests, psql_blocking};

const DB: &str = "app";

/// A tmpfs of `mib` MiB mounted on a new directory, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(mib: u64, owner: Option<&str>) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().display().to_string();
        let size = format!("size={mib}m,mode=0700");
        root(&["mount", "-t", "tmpfs", "-o", &size, "tmpfs", &path]);
        if let Some(user) = owner {
            root(&["chown", user, &path]);
        }
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
        let _ = Command::new("sudo").args(["-n", "umount", "-l"]).arg(self.dir.path()).status();
    }
}

/// Run a command as root (directly when the tests run as root, else through `sudo -n`).
fn root(args: &[&str]) {
    let mut cmd = if support::is_root() { Command::new(args[0]) } else { Command::new("sudo") };
    if !support::is_root() {
        cmd.arg("-n").arg(args[0]);
    }
    let out = cmd.args(&args[1..]).output().unwrap();
    assert!(out.status.success(), "{args:?} (needs root): {}", String::from_utf8_lossy(&out.stderr));
}

/// Fill the file system of `dir` up: write zeros into `dir/filler` until it refuses.
fn fill(dir: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(dir.join("filler")).unwrap();
    let chunk = vec![0u8; 64 << 10];
    loop {
        match f.write_all(&chunk) {
            Ok(()) => {}
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(28), "{e}");
                return;
            }
        }
    }
}

fn held(stack: &Stack, point: &str, go: &Path) -> Served {
    let spec = format!("{point}=return(hold:{})", go.display());
    stack.serve_with(&[(failpoint::SETTING, &spec), ("PGVAULT_BLOCKS_IN_FLIGHT", "1")])
}

fn request(id: &str, target: Value, options: Value) -> String {
    json!({ "version": 1, "request_id": id, "requested_by": "pg_faults",
        "source": { "server": "main", "database": DB }, "target": target, "options": options })
    .to_string()
}

fn temp_databases(stack: &Stack) -> Vec<String> {
    blocking(|| databases_like(&stack.pg, "pgvault\\_restore\\_%"))
}

/// The count of sessions the SQL `condition` on pg_stat_activity matches.
fn sessions(stack: &Stack, condition: &str) -> u32 {
    stack.pg.psql("postgres", &format!("SELECT count(*) FROM pg_stat_activity WHERE {condition}")).parse().unwrap()
}

/// What a failed invocation answered: (status, ReturnValue.error or .reason).
fn failure(status: u16, reply: &Value) -> (u16, String) {
    let rv = &reply["ReturnValue"];
    let text = rv["error"].as_str().or(rv["reason"].as_str()).unwrap_or_default().to_string();
    eprintln!("fault outcome: {status} {text}");
    (status, text)
}

/// The server's words for a session it ended.
fn lost_connection(error: &str) -> bool {
    error.contains("terminating connection due to administrator command")
        || error.contains("server closed the connection unexpectedly")
}

/// A target database that a failed restore must leave as it is.
fn make_target(stack: &Stack, name: &str) {
    psql_blocking(&stack.pg, "postgres", &format!("CREATE DATABASE {name}"));
    psql_blocking(&stack.pg, name, "CREATE TABLE old (v text); INSERT INTO old VALUES ('before')");
}

/// The target is as it was, and nothing of the restore is left.
fn assert_untouched(stack: &Stack, target: &str, what: &str) {
    assert_eq!(psql_blocking(&stack.pg, target, "SELECT string_agg(v, ',') FROM old"), "before", "{what}");
    assert_eq!(
        psql_blocking(&stack.pg, target, "SELECT count(*) FROM pg_class WHERE relname = 't'"),
        "0",
        "{what}: nothing restored into it"
    );
    assert_eq!(temp_databases(stack), Vec::<String>::new(), "{what}: the temporary database was dropped");
    let kept = blocking(|| databases_like(&stack.pg, &format!("{target}\\_pre\\_restore%")));
    assert!(kept.is_empty(), "{what}: nothing renamed: {kept:?}");
}

fn backup_payload(server: &str, msg: &str, n: u32) -> (BackupJob, Value) {
    let job = BackupJob::new(BackupKind::Database, server, Some(DB), time::OffsetDateTime::now_utc(), Trigger::Queue);
    let payload = hostsim::queue_payload("backup-worker", "job", &job.to_json(), msg, "pop", n, Form::Host);
    (job, payload)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_side_faults_fail_by_name_and_change_nothing() {
    let mut stack = Stack::start().await;
    // About 20 MB to dump, 10 MB stored: many 1 MiB blocks.
    blocking(|| {
        stack.pg.psql("postgres", &format!("CREATE DATABASE {DB}"));
        stack.pg.psql(
            DB,
            "CREATE TABLE t AS SELECT i, md5(i::text) || md5((i * 7)::text) || md5((i * 13)::text) AS v \
             FROM generate_series(1, 180000) i",
        );
        // A backup role limited to one connection, a restore role to two.
        stack.pg.psql(
            "postgres",
            "CREATE ROLE lim LOGIN CONNECTION LIMIT 1 IN ROLE pg_read_all_data; \
             CREATE ROLE rlim LOGIN CREATEDB CONNECTION LIMIT 2",
        );
    });
    let mut servers: Vec<Value> = serde_json::from_str(&stack.inventory(&["postgres"])).unwrap();
    for user in ["lim", "rlim"] {
        let mut entry = Stack::server_entry(user, &stack.pg);
        entry["user"] = json!(user);
        servers.push(entry);
    }
    stack.set("PGVAULT_INVENTORY", &Value::Array(servers).to_string());
    let plain = stack.serve();
    let store = stack.store().await;
    let dir = tempfile::tempdir().unwrap();

    // 1. The server restarts while pg_dump is in its COPY (held there by the upload).
    let go = dir.path().join("restart");
    let worker = held(&stack, "backup.block-staged", &go);
    let (job, payload) = backup_payload("main", "restart", 1);
    let running = app::invoke_until_held(&worker, "backup-worker", payload, &go);
    assert_eq!(blocking(|| sessions(&stack, "datname = 'app' AND query LIKE 'COPY %'")), 1, "mid-dump");
    blocking(|| stack.pg.restart());
    std::fs::write(&go, "").unwrap();
    let (status, reply) = running.await.unwrap().unwrap();
    let (status, error) = failure(status, &reply);
    assert_eq!(status, 500, "transient: the host retries it: {reply}");
    assert!(error.contains("pg_dump") && lost_connection(&error), "names the cause: {error}");
    assert!(store.list(&format!("main/{DB}/")).await.unwrap().is_empty(), "nothing committed");
    // The server is back: the host's retry succeeds.
    let again = hostsim::queue_payload("backup-worker", "job", &job.to_json(), "restart", "pop2", 2, Form::Host);
    let (status, reply) = plain.invoke("backup-worker", &again).await;
    assert_eq!((status, reply["ReturnValue"]["status"].as_str()), (200, Some("succeeded")), "{reply}");
    drop(worker);
    let backup = manifests(&store, &format!("main/{DB}/")).await.remove(0);

    // 2. The restore's session is terminated while pg_restore waits in its COPY.
    make_target(&stack, "tgt");
    let target = json!({ "mode": "replace", "server": "main", "database": "tgt" });
    let task = stack.take_restore_task(&plain, "terminated", &request("terminated", target, json!({}))).await;
    let go = dir.path().join("terminate");
    let worker = held(&stack, "restore.mid-stream", &go);
    let payload = hostsim::queue_payload("restore-worker", "task", &task, "t1", "p1", 1, Form::Host);
    let running = app::invoke_until_held(&worker, "restore-worker", payload, &go);
    let restore_session = "datname LIKE 'pgvault\\_restore\\_%' AND query LIKE 'COPY %'";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while blocking(|| sessions(&stack, restore_session)) != 1 {
        assert!(std::time::Instant::now() < deadline, "pg_restore never reached its COPY:\n{}", worker.output());
        std::thread::yield_now();
    }
    let sql = format!("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE {restore_session}");
    assert_eq!(psql_blocking(&stack.pg, "postgres", &sql), "1");
    std::fs::write(&go, "").unwrap();
    let (status, reply) = running.await.unwrap().unwrap();
    let (status, error) = failure(status, &reply);
    assert_eq!(status, 500, "{reply}");
    assert!(error.contains("pg_restore") && lost_connection(&error), "names the cause: {error}");
    assert!(error.contains("dropped") && error.contains("untouched"), "{error}");
    assert_untouched(&stack, "tgt", "terminated restore session");
    drop(worker);

    // 3. Another session holds a table in ACCESS EXCLUSIVE mode, and the database sets a
    //    lock_timeout: the backup gives up after it, by name, instead of waiting.
    let locker = stack.pg.client(DB).await;
    locker.batch_execute("BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE").await.unwrap();
    psql_blocking(&stack.pg, "postgres", &format!("ALTER DATABASE {DB} SET lock_timeout = '300ms'"));
    let (job, payload) = backup_payload("main", "locked", 1);
    let (status, reply) = plain.invoke("backup-worker", &payload).await;
    let (status, error) = failure(status, &reply);
    assert_eq!(status, 500, "a lock passes: the host retries it: {reply}");
    // Who meets the lock first names it: a count (`lock timeout`) or pg_dump, whose
    // --lock-wait-timeout fails as a statement timeout on its LOCK TABLE.
    let timed_out = error.contains("statement timeout") && error.contains("LOCK TABLE");
    assert!(error.contains("lock timeout") || error.contains("could not obtain lock") || timed_out, "{error}");
    assert!(error.contains("relation \"t\"") || error.contains(".t"), "names the table: {error}");
    let published: Vec<_> = manifests(&store, &format!("main/{DB}/")).await.into_iter().map(|m| m.job_id).collect();
    assert!(!published.contains(&job.job_id), "nothing committed");
    assert_eq!(store.list(&format!("main/{DB}/")).await.unwrap().len(), 2, "no new blob");
    // The lock holder's transaction was not disturbed.
    let n: i64 = locker.query_one("SELECT count(*) FROM t", &[]).await.unwrap().get(0);
    assert_eq!(n, 180_000);
    locker.batch_execute("ROLLBACK").await.unwrap();
    psql_blocking(&stack.pg, "postgres", &format!("ALTER DATABASE {DB} RESET lock_timeout"));

    // 4. The connection limit is reached: by pg_dump (pgvault's own connection holds the
    //    role's only one), and by pg_restore (after the target's lock and pgvault's own).
    let (_, payload) = backup_payload("lim", "limit", 1);
    let (status, reply) = plain.invoke("backup-worker", &payload).await;
    let (status, error) = failure(status, &reply);
    assert_eq!(status, 500, "{reply}");
    assert!(error.contains("too many connections for role \"lim\""), "{error}");
    assert!(store.list("lim/").await.unwrap().is_empty(), "nothing committed");
    let target = json!({ "mode": "create", "server": "rlim", "database": "by_rlim" });
    let task =
        stack.take_restore_task(&plain, "limited", &request("limited", target, json!({ "no_owner": true }))).await;
    let payload = hostsim::queue_payload("restore-worker", "task", &task, "t1", "p1", 1, Form::Host);
    let (status, reply) = plain.invoke("restore-worker", &payload).await;
    let (status, error) = failure(status, &reply);
    assert_eq!(status, 500, "{reply}");
    assert!(error.contains("too many connections for role \"rlim\""), "{error}");
    assert!(error.contains("dropped") && error.contains("untouched"), "{error}");
    assert!(blocking(|| databases_like(&stack.pg, "by\\_rlim")).is_empty());
    assert_eq!(temp_databases(&stack), Vec::<String>::new());

    // 5. The restore's scratch disk fills up while the archive is copied there for a parallel
    //    restore (room enough when the method was chosen, filled meanwhile).
    let scratch = Tmpfs::mount(backup.raw_bytes / (1 << 20) + 4, None);
    let target = json!({ "mode": "replace", "server": "main", "database": "tgt" });
    let task = stack.take_restore_task(&plain, "scratch", &request("scratch", target, json!({ "jobs": 2 }))).await;
    let go = dir.path().join("scratch");
    let spec = format!("restore.mid-stream=return(hold:{})", go.display());
    let scratch_dir = scratch.path().display().to_string();
    let worker = stack.serve_with(&[
        (failpoint::SETTING, &spec),
        ("PGVAULT_RESTORE_SCRATCH_DIR", &scratch_dir),
        ("PGVAULT_RESTORE_SCRATCH_RESERVE_MIB", "0"),
    ]);
    let payload = hostsim::queue_payload("restore-worker", "task", &task, "t1", "p1", 1, Form::Host);
    let running = app::invoke_until_held(&worker, "restore-worker", payload, &go);
    fill(scratch.path());
    std::fs::write(&go, "").unwrap();
    let (status, reply) = running.await.unwrap().unwrap();
    let (status, error) = failure(status, &reply);
    assert_eq!(status, 500, "{reply}");
    assert!(error.contains("write scratch file") && error.contains("No space left on device"), "{error}");
    assert_untouched(&stack, "tgt", "scratch disk full");
    let left: Vec<PathBuf> = std::fs::read_dir(scratch.path()).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(left, [scratch.path().join("filler")], "the scratch copy was removed");
    drop(worker);
    drop(scratch);

    // 6. The target server runs out of space during pg_restore: new databases are created in
    //    a tablespace on a small file system (template0, which pgvault creates from, moved
    //    there), which the restored table cannot fit.
    let tiny = Tmpfs::mount(20, stack.pg.os_user());
    let location = tiny.path().display().to_string();
    blocking(|| {
        stack.pg.psql("postgres", &format!("CREATE TABLESPACE tiny LOCATION '{location}'"));
        stack.pg.psql("postgres", "ALTER DATABASE template0 SET TABLESPACE tiny");
    });
    let target = json!({ "mode": "replace", "server": "main", "database": "tgt" });
    let task = stack.take_restore_task(&plain, "full", &request("full", target, json!({}))).await;
    let payload = hostsim::queue_payload("restore-worker", "task", &task, "t1", "p1", 1, Form::Host);
    let (status, reply) = plain.invoke("restore-worker", &payload).await;
    let (_, error) = failure(status, &reply);
    assert!(error.contains("pg_restore") && error.contains("No space left on device"), "{status} {error}");
    assert!(error.contains("dropped") && error.contains("untouched"), "{error}");
    assert_untouched(&stack, "tgt", "target out of space");
    blocking(|| {
        stack.pg.psql("postgres", "ALTER DATABASE template0 SET TABLESPACE pg_default");
        stack.pg.psql("postgres", "DROP TABLESPACE tiny");
    });
    drop(tiny);
}
