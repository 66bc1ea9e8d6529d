//! The silent-failure class: a backup that failed must never pass as fine. On the local stack
//! (PostgreSQL 15 and a newer major, Azurite over HTTPS with OAuth, the identity endpoint, a
//! webhook receiver) with the real `pgvault serve` and CLI.

#[path = "support/app.rs"]
mod app;
mod support;

use app::Stack;
use pgvault::cli::hostsim::{self, Form};
use pgvault::domain::jobs::{BACKUP_JOBS_QUEUE, BackupJob, Trigger};
use pgvault::domain::layout::BackupKind;
use pgvault::seams::queue::JobQueue;
use pgvault::seams::store::BlobStore;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use support::data::{blocking, manifests, psql_blocking};
use support::webhook::Webhook;
use support::{Cluster, ClusterOptions};

fn text(out: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn alerts(hook: &Webhook, kind: &str) -> Vec<Value> {
    hook.hits().into_iter().filter(|h| h["kind"] == kind).collect()
}

/// A server upgraded past every configured pg_dump major (PostgreSQL 17 with only the 15 tools):
/// both of its jobs are rejected on their first delivery, alert, and publish nothing. pg_dump 15
/// would refuse anyway ("server version mismatch", 0 bytes), but pgvault refuses before it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_upgraded_past_every_pg_dump_is_a_rejected_job_with_an_alert() {
    let newer = support::newer_bin_dir().expect("no PostgreSQL newer than 15 in .pgvault-local/pg: run scripts/setup");
    let hook = Webhook::start().await;
    let mut stack = Stack::start().await;
    let upgraded = blocking(|| Cluster::start_with(ClusterOptions { bin_dir: newer, ..Default::default() }));
    assert!(upgraded.version > 15, "{}", upgraded.version);
    blocking(|| upgraded.psql("postgres", "CREATE DATABASE app; "));
    let inventory = stack.inventory_with(&["postgres"], &[("upgraded", &upgraded)]);
    stack.set("PGVAULT_INVENTORY", &inventory);
    let pg15 = stack.pg.bin_dir.display().to_string();
    stack.set("PGVAULT_PG_BIN_DIRS", &pg15);
    stack.set("PGVAULT_ALERT_WEBHOOK", &hook.url);
    let served = stack.serve();
    let now = time::OffsetDateTime::now_utc();
    for (job, tool) in [
        (BackupJob::new(BackupKind::Database, "upgraded", Some("app"), now, Trigger::Timer), "pg_dump"),
        (BackupJob::new(BackupKind::Globals, "upgraded", None, now, Trigger::Timer), "pg_dumpall"),
    ] {
        let payload = hostsim::queue_payload("backup-worker", "job", &job.to_json(), &job.job_id, "pr", 1, Form::Host);
        let (status, reply) = served.invoke("backup-worker", &payload).await;
        assert_eq!(status, 200, "{reply}");
        assert_eq!(reply["ReturnValue"]["status"], "rejected", "never a success, never a retry: {reply}");
        let reason = reply["ReturnValue"]["reason"].as_str().unwrap();
        assert!(reason.contains(&format!("no {tool} of PostgreSQL {}", upgraded.version)), "{reason}");
        let out = blocking(|| stack.cli(&["jobs", "--json", "--id", &job.job_id]));
        let record: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(record["jobs"][0]["status"], "failed", "{record}");
    }
    let failed = alerts(&hook, "job-failed");
    assert_eq!(failed.len(), 2, "one alert per job: {failed:?}");
    assert!(failed.iter().all(|a| a["summary"].as_str().unwrap().contains("of PostgreSQL")), "{failed:?}");
    let store = stack.store().await;
    assert!(store.list("upgraded/").await.unwrap().is_empty(), "nothing committed");
}

/// A pg_dump that exits 0 having written nothing, and one killed in the middle of its stream:
/// neither is committed, and each failure says what happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_or_cut_dump_is_never_committed() {
    let mut stack = Stack::start().await;
    psql_blocking(&stack.pg, "postgres", "CREATE DATABASE big");
    psql_blocking(
        &stack.pg,
        "big",
        "CREATE TABLE big AS SELECT i, repeat(md5(i::text), 12) AS t FROM generate_series(1, 400000) i",
    );
    // A tool that says it succeeded and wrote nothing (what an incompatible build or a broken
    // wrapper can do): the real one answers --version, so pgvault picks it.
    let bin = tempfile::tempdir().unwrap();
    let real = stack.pg.bin_dir.join("pg_dump");
    let script = format!("#!/bin/sh\nif [ \"$1\" = --version ]; then exec {} --version; fi\nexit 0\n", real.display());
    let wrapper = bin.path().join("pg_dump");
    std::fs::write(&wrapper, script).unwrap();
    std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    stack.set("PGVAULT_PG_BIN_DIRS", bin.path().to_str().unwrap());
    let out = blocking(|| stack.cli(&["backup", "--server", "main", "--database", "big"]));
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(t.contains("pg_dump wrote nothing"), "{t}");
    let store = stack.store().await;
    assert!(store.list("main/").await.unwrap().is_empty(), "nothing committed: {t}");

    // The real pg_dump, killed (SIGKILL) while it streams the table.
    let real_bin = stack.pg.bin_dir.display().to_string();
    stack.set("PGVAULT_PG_BIN_DIRS", &real_bin);
    let child = stack
        .command(&["backup", "--server", "main", "--database", "big"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pg_dump = blocking(|| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let copying = stack.pg.psql(
                "postgres",
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgvault' AND query LIKE 'COPY %'",
            );
            if copying.trim() == "1"
                && let Some(pid) = children(child.id()).into_iter().find(|p| comm(*p).as_deref() == Some("pg_dump"))
            {
                break pid;
            }
            assert!(Instant::now() < deadline, "pg_dump never reached COPY");
            std::thread::yield_now();
        }
    });
    let killed = std::process::Command::new("kill").args(["-KILL", &pg_dump.to_string()]).status().unwrap();
    assert!(killed.success());
    let out = blocking(|| child.wait_with_output().unwrap());
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(t.contains("pg_dump was killed by signal 9"), "{t}");
    assert!(store.list("main/").await.unwrap().is_empty(), "nothing committed: {t}");
}

/// The processes whose parent is `pid` (every thread's children).
fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    tasks
        .filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|c| c.split_whitespace().filter_map(|p| p.parse().ok()).collect::<Vec<u32>>())
        .collect()
}

fn comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).ok().map(|s| s.trim().to_string())
}

/// Jobs that nobody takes from `backup-jobs` trip the missed-schedule alert (the retention
/// timer looks at the head of the queue); a database dropped between the scheduler's listing
/// and its dump is a named rejection that alerts; a scheduler run that enqueues no database of
/// a server that has some (filters that leave none, a server that cannot be listed) alerts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undrained_jobs_vanished_databases_and_empty_scheduler_runs_alert() {
    let hook = Webhook::start().await;
    let mut stack = Stack::start().await;
    psql_blocking(&stack.pg, "postgres", "CREATE DATABASE alpha");
    stack.set("PGVAULT_ALERT_WEBHOOK", &hook.url);
    stack.set("PGVAULT_RPO_MARGIN_MINUTES", "0");
    let served = stack.serve();
    let timer = |f: &str| hostsim::timer_payload(f, false);
    let (status, reply) = served.invoke("backup-scheduler", &timer("backup-scheduler")).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["ReturnValue"]["enqueued"].as_array().unwrap().len(), 2, "alpha and the globals: {reply}");
    assert!(alerts(&hook, "missed-schedule").is_empty(), "{:?}", hook.hits());
    // A feature that is not configured says so, and does not fail the timer on every run.
    for _ in 0..2 {
        let (status, reply) = served.invoke("restore-drill", &timer("restore-drill")).await;
        assert_eq!((status, reply["ReturnValue"]["status"].as_str()), (200, Some("not-configured")), "{reply}");
    }
    assert_eq!(served.output().matches("restore drills are not configured").count(), 1, "said once at start-up");

    // Nobody drains the queue: the retention timer's look at its head alerts.
    let (status, reply) = served.invoke("retention", &timer("retention")).await;
    assert_eq!(status, 200, "{reply}");
    assert!(reply["ReturnValue"]["undrained_since"].is_string(), "{reply}");
    let missed = alerts(&hook, "missed-schedule");
    assert_eq!(missed.len(), 1, "{missed:?}");
    assert_eq!(missed[0]["subject"], BACKUP_JOBS_QUEUE);
    assert!(missed[0]["summary"].as_str().unwrap().contains("nothing is taking jobs from it"), "{missed:?}");

    // alpha is dropped after the listing, before its dump: its job is rejected, named, kept.
    psql_blocking(&stack.pg, "postgres", "DROP DATABASE alpha");
    let report = stack.drain(&served, BACKUP_JOBS_QUEUE).await;
    assert_eq!((report.succeeded, report.poisoned), (2, 0), "the globals backed up, alpha kept: {:?}", report.replies);
    let kept = stack.queue().peek(&format!("{BACKUP_JOBS_QUEUE}-rejected"), 32).await.unwrap();
    assert_eq!(kept.len(), 1, "{kept:?}");
    let record: Value = serde_json::from_str(&kept[0]).unwrap();
    assert!(record["reason"].as_str().unwrap().contains("database \"alpha\" does not exist"), "{record}");
    let failed = alerts(&hook, "job-failed");
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(failed[0]["summary"].as_str().unwrap().contains("alpha"), "{failed:?}");
    assert!(manifests(&stack.store().await, "main/alpha/").await.is_empty());
    assert!(stack.queue().peek(&format!("{BACKUP_JOBS_QUEUE}-poison"), 32).await.unwrap().is_empty());
    // Drained: the next look finds nothing waiting and says nothing more.
    let (_, reply) = served.invoke("retention", &timer("retention")).await;
    assert!(reply["ReturnValue"]["undrained_since"].is_null(), "{reply}");
    assert_eq!(alerts(&hook, "missed-schedule").len(), 1);
    drop(served);

    // A scheduler run that backs up no database of a server that has some: an include list
    // naming only a database that is gone, and a server that cannot be listed.
    psql_blocking(&stack.pg, "postgres", "CREATE DATABASE beta");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut main = Stack::server_entry("main", &stack.pg);
    main["include"] = json!(["alpha"]);
    let inventory =
        json!([main, {"name": "down", "host": "127.0.0.1", "port": closed, "user": "postgres", "tls": "disable"}]);
    stack.set("PGVAULT_INVENTORY", &inventory.to_string());
    let served = stack.serve();
    let (status, reply) = served.invoke("backup-scheduler", &timer("backup-scheduler")).await;
    assert_eq!(status, 500, "a server could not be listed: {reply}");
    let missed: Vec<Value> =
        alerts(&hook, "missed-schedule").into_iter().filter(|a| a["subject"] != BACKUP_JOBS_QUEUE).collect();
    let about = |server: &str| {
        missed.iter().find(|a| a["subject"] == server).unwrap_or_else(|| panic!("no alert about {server}: {missed:?}"))
            ["summary"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let main = about("main");
    assert!(main.contains("enqueued no database backup for server \"main\"") && main.contains("beta"), "{main}");
    assert!(about("down").contains("could not be listed"), "{missed:?}");
    assert_eq!(missed.len(), 2, "{missed:?}");
}
