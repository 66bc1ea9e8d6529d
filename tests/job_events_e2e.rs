//! The `job finished` event on the real local stack, read from `pgvault serve`'s JSON log lines
//! as the Functions host forwards them to Application Insights: every kind of job that ends
//! emits exactly one, with the fields the workbook and the log alerts read; a failed job says
//! why; a delivery that finds its job done emits none. And the CLI's noise: `jobs --json`
//! withholds live download URLs unless `--show-urls`, and the identity crate's INFO line is
//! gone from a CLI command's stderr.

#[path = "support/app.rs"]
mod app;
mod support;

use app::Stack;
use pgvault::cli::hostsim::{invoke, timer_payload};
use pgvault::domain::jobs::BACKUP_JOBS_QUEUE;
use pgvault::features::restore::{RESTORE_REQUESTS_QUEUE, RESTORE_TASKS_QUEUE};
use pgvault::monitor::event::{ENVELOPE, FIELDS, MESSAGE, TARGET};
use pgvault::seams::queue::JobQueue;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use support::data::blocking;

/// The job events among JSON log lines, each checked to carry only known keys.
fn events(log: &str) -> Vec<Value> {
    let events: Vec<Value> =
        log.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).filter(|v| v["target"] == TARGET).collect();
    for e in &events {
        assert_eq!(e["message"], MESSAGE, "{e}");
        for key in e.as_object().unwrap().keys() {
            let known = FIELDS.contains(&key.as_str()) || ENVELOPE.contains(&key.as_str()) || key.starts_with("span");
            assert!(known, "unknown key {key} in {e}");
        }
    }
    events
}

fn of_kind<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["kind"] == kind).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_finished_job_emits_one_event_and_the_cli_is_quiet() {
    let mut stack = Stack::start().await;
    blocking(|| {
        stack.pg.psql("postgres", "CREATE DATABASE app");
        stack.pg.psql("app", "CREATE TABLE t AS SELECT i, md5(i::text) AS h FROM generate_series(1, 20000) i");
    });
    // "quiet" is the same cluster, with an include list naming only a database that is gone: the
    // scheduler enqueues none of its databases.
    let mut servers: Vec<Value> = serde_json::from_str(&stack.inventory(&["postgres"])).unwrap();
    let mut quiet = Stack::server_entry("quiet", &stack.pg);
    quiet["include"] = json!(["gone"]);
    servers.push(quiet);
    stack.set("PGVAULT_INVENTORY", &Value::Array(servers).to_string());
    stack.set("PGVAULT_BACKUP_SCHEDULE", "0 0 2 * * *");
    stack.set("PGVAULT_DRILL_SERVER", "main");
    let served = stack.serve_with(&[("PGVAULT_LOG_FORMAT", "json")]);

    // The scheduler: one event per server, with its databases and what was enqueued.
    let (status, reply) =
        invoke(&served.url, "backup-scheduler", &timer_payload("backup-scheduler", false)).await.unwrap();
    assert_eq!(status, 200, "{reply}");
    let queue = stack.queue();
    let jobs = queue.peek(BACKUP_JOBS_QUEUE, 32).await.unwrap();
    let db_job = jobs.iter().find(|j| j.contains("\"database\":\"app\"")).expect("the app job").clone();
    // A job for a server the inventory does not have fails for good, once.
    let ghost = json!({"version": 1, "job_id": "ghost-1", "kind": "database", "server": "ghost", "database": "x",
        "requested_at": "2026-11-21T02:00:00Z", "trigger": "http"});
    queue.send(BACKUP_JOBS_QUEUE, &ghost.to_string(), false).await.unwrap();
    let report = stack.drain(&served, BACKUP_JOBS_QUEUE).await;
    assert_eq!(report.succeeded, 4, "app, two globals, the rejected ghost: {:?}", report.replies);
    // The app job delivered again (a message the host lost track of): already done, no event.
    queue.send(BACKUP_JOBS_QUEUE, &db_job, false).await.unwrap();
    let again = stack.drain(&served, BACKUP_JOBS_QUEUE).await;
    assert_eq!(again.replies[0]["reply"]["ReturnValue"]["status"], "already-done", "{:?}", again.replies);

    // A restore into a new database, and an export as files.
    for (id, target) in [
        ("ev-create", json!({"mode": "create", "server": "main", "database": "app_copy"})),
        ("ev-files", json!({"mode": "as-files", "container": "exports", "prefix": "ev", "expires_in_seconds": 3600})),
    ] {
        let request = json!({"version": 1, "request_id": id, "source": {"server": "main", "database": "app"},
            "target": target});
        queue.send(RESTORE_REQUESTS_QUEUE, &request.to_string(), false).await.unwrap();
    }
    stack.drain(&served, RESTORE_REQUESTS_QUEUE).await;
    let tasks = stack.drain(&served, RESTORE_TASKS_QUEUE).await;
    assert_eq!(tasks.succeeded, 2, "{:?}", tasks.replies);
    // A drill, then retention.
    for function in ["restore-drill", "retention"] {
        let (status, reply) = invoke(&served.url, function, &timer_payload(function, false)).await.unwrap();
        assert_eq!(status, 200, "{function}: {reply}");
    }
    // verify, at the command line: its event is on stderr when the filter asks for it (the
    // CLI hides it by default: it prints its own outcome).
    let mut cli = stack.command(&["verify", "--all"]);
    cli.env("PGVAULT_LOG_FORMAT", "json").env("PGVAULT_LOG", "info,pgvault::job=info");
    let verify = cli.output().unwrap();
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stderr));

    let log = served.output();
    let all = events(&log);
    // Exactly one event per job.
    let mut per_job: BTreeMap<&str, usize> = BTreeMap::new();
    for e in &all {
        *per_job.entry(e["job_id"].as_str().unwrap()).or_default() += 1;
    }
    assert!(per_job.values().all(|n| *n == 1), "{per_job:?}\n{log}");
    let count = |kind: &str| of_kind(&all, kind).len();
    assert_eq!(
        [
            count("scheduler"),
            count("backup"),
            count("restore-request"),
            count("restore-task"),
            count("drill"),
            count("retention")
        ],
        [2, 4, 2, 2, 1, 1],
        "{all:#?}"
    );

    // The scheduler's events: databases and what was enqueued, per server.
    let sched: BTreeMap<&str, &Value> =
        of_kind(&all, "scheduler").into_iter().map(|e| (e["server"].as_str().unwrap(), e)).collect();
    let main = sched["main"];
    assert_eq!(
        (&main["status"], &main["databases"], &main["enqueued"], &main["trigger"]),
        (&json!("succeeded"), &json!(1), &json!(1), &json!("timer")),
        "{main}"
    );
    let quiet = sched["quiet"];
    assert_eq!(
        (&quiet["status"], &quiet["failure_code"], &quiet["enqueued"]),
        (&json!("failed"), &json!("nothing-enqueued"), &json!(0)),
        "{quiet}"
    );
    assert!(quiet["databases"].as_u64().unwrap() >= 1 && quiet["reason"].as_str().unwrap().contains("app"), "{quiet}");

    // Backups: the database's, with size, duration and its RPO deadline (the next 02:00 after it
    // was requested, plus the margin); the globals have no database; the ghost failed for good.
    let backups = of_kind(&all, "backup");
    let app = backups.iter().find(|e| e["database"] == "app").expect("the app backup");
    assert_eq!(
        (&app["status"], &app["server"], &app["trigger"], &app["attempts"]),
        (&json!("succeeded"), &json!("main"), &json!("timer"), &json!(1)),
        "{app}"
    );
    assert!(
        app["data_transferred_mb"].as_f64().unwrap() > 0.0 && app["duration_seconds"].as_f64().unwrap() >= 0.0,
        "{app}"
    );
    assert!(app.get("failure_code").is_none() && app.get("reason").is_none(), "{app}");
    let due = time::OffsetDateTime::parse(
        app["rpo_due_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert!(due > time::OffsetDateTime::now_utc(), "{app}");
    assert_eq!(
        backups.iter().filter(|e| e.get("database").is_none() && e["status"] == "succeeded").count(),
        2,
        "{backups:?}"
    );
    let ghost = backups.iter().find(|e| e["job_id"] == "ghost-1").expect("the ghost");
    assert_eq!(
        (&ghost["status"], &ghost["failure_code"], &ghost["will_retry"], &ghost["server"]),
        (&json!("failed"), &json!("permanent"), &json!(false), &json!("ghost")),
        "{ghost}"
    );
    assert!(ghost["reason"].as_str().unwrap().contains("ghost"), "{ghost}");

    // Restores name the backup's server and database; the drill its RTO; retention its counts.
    for e in of_kind(&all, "restore-request").into_iter().chain(of_kind(&all, "restore-task")) {
        assert_eq!(
            (&e["status"], &e["server"], &e["database"], &e["trigger"]),
            (&json!("succeeded"), &json!("main"), &json!("app"), &json!("queue")),
            "{e}"
        );
    }
    let drill = of_kind(&all, "drill")[0];
    assert_eq!(
        (&drill["status"], &drill["server"], &drill["database"]),
        (&json!("succeeded"), &json!("main"), &json!("app")),
        "{drill}"
    );
    assert!(drill["restore_seconds"].as_f64().unwrap() > 0.0, "{drill}");
    let retention = of_kind(&all, "retention")[0];
    assert_eq!((&retention["status"], &retention["removed"]), (&json!("succeeded"), &json!(0)), "{retention}");
    assert!(retention["kept"].as_u64().unwrap() >= 3, "{retention}");
    let verified = events(&String::from_utf8_lossy(&verify.stderr));
    assert_eq!(verified.len(), 1, "{verified:?}");
    assert_eq!(
        (&verified[0]["kind"], &verified[0]["status"], &verified[0]["trigger"]),
        (&json!("verify"), &json!("succeeded"), &json!("cli"))
    );

    // `jobs --json` (and with --summary) prints no live download URL unless --show-urls.
    let out = stack.cli(&["jobs", "--json"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success() && text.contains("ev-files-1"), "{text}");
    assert!(!text.contains("sig="), "{text}");
    assert!(text.contains("withheld: see `pgvault jobs --json --show-urls --id ev-files-1`"), "{text}");
    let summary = stack.cli(&["jobs", "--json", "--summary"]);
    assert!(summary.status.success() && !String::from_utf8_lossy(&summary.stdout).contains("sig="));
    let shown = stack.cli(&["jobs", "--json", "--show-urls", "--id", "ev-files-1"]);
    assert!(
        String::from_utf8_lossy(&shown.stdout).contains("sig="),
        "asked for: {}",
        String::from_utf8_lossy(&shown.stdout)
    );
    // The identity crate's line is debug: absent from a CLI command's stderr at the default
    // level (the command authenticated through the App Service identity endpoint), present at
    // debug.
    let line = "ManagedIdentityCredential will use";
    assert!(!String::from_utf8_lossy(&out.stderr).contains(line), "{}", String::from_utf8_lossy(&out.stderr));
    let quiet_verify = stack.cli(&["verify", "--all"]);
    assert!(quiet_verify.status.success());
    assert!(!String::from_utf8_lossy(&quiet_verify.stderr).contains("job finished"), "the CLI hides its job event");
    let mut debug = stack.command(&["jobs", "--json"]);
    debug.env("PGVAULT_LOG", "debug");
    let debug = debug.output().unwrap();
    assert!(String::from_utf8_lossy(&debug.stderr).contains(line), "still there at debug");
}
