//! The HTTP functions (`backup-now`, `jobs`) through the custom handler's HTTP payload form, and
//! a failed job's alert reaching a local webhook receiver. Local store, a recording queue.

use pgvault::domain::error::Result;
use pgvault::seams::queue::{JobQueue, Received};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};

#[derive(Default)]
struct Recorder(Mutex<Vec<(String, String)>>);

#[async_trait::async_trait]
impl JobQueue for Recorder {
    async fn ensure(&self, _: &str) -> Result<()> {
        Ok(())
    }
    async fn send(&self, q: &str, m: &str, _: bool) -> Result<()> {
        self.0.lock().unwrap().push((q.into(), m.into()));
        Ok(())
    }
    async fn send_delayed(&self, q: &str, m: &str, _: u32) -> Result<()> {
        self.0.lock().unwrap().push((q.into(), m.into()));
        Ok(())
    }
    async fn receive(&self, _: &str, _: u8, _: u32) -> Result<Vec<Received>> {
        Ok(Vec::new())
    }
    async fn peek(&self, _: &str, _: u8) -> Result<Vec<String>> {
        Ok(Vec::new())
    }
    async fn delete(&self, _: &str, _: &str, _: &str) -> Result<()> {
        Ok(())
    }
    async fn release(&self, _: &str, _: &str, _: &str, _: u32) -> Result<()> {
        Ok(())
    }
}

fn http(method: &str, query: Value, body: &str) -> Value {
    json!({"Data": {"req": {"Url": "https://app/api/x", "Method": method, "Query": query,
        "Headers": {}, "Params": {}, "Body": body}}, "Metadata": {"sys": {"MethodName": "x"}}})
}

#[tokio::test]
async fn backup_now_and_jobs_through_http_payloads_and_a_failed_job_alerts_the_webhook() {
    // The webhook receiver: records every body.
    let hits: Arc<Mutex<Vec<Value>>> = Arc::default();
    let hook = {
        let hits = hits.clone();
        axum::Router::new().route(
            "/hook",
            axum::routing::post(move |axum::Json(v): axum::Json<Value>| {
                let hits = hits.clone();
                async move {
                    hits.lock().unwrap().push(v);
                    "ok"
                }
            }),
        )
    };
    let hl = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_url = format!("http://{}/hook", hl.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(hl, hook).await });

    let dir = tempfile::tempdir().unwrap();
    let map = std::collections::HashMap::from([
        ("PGVAULT_LOCAL_DIR".to_string(), dir.path().display().to_string()),
        (
            "PGVAULT_INVENTORY".to_string(),
            r#"[{"name":"prod","host":"127.0.0.1","port":1,"user":"u","tls":"disable","exclude":["scratch"]},
                {"name":"only","host":"127.0.0.1","port":1,"user":"u","tls":"disable","include":["app"]}]"#
                .to_string(),
        ),
        ("PGVAULT_BACKUP_SCHEDULE".to_string(), "0 0 2 * * *".to_string()),
        ("PGVAULT_ALERT_WEBHOOK".to_string(), hook_url),
    ]);
    let settings = pgvault::config::settings::Settings::from_map(map).unwrap();
    let rt = pgvault::runtime::Runtime::build(settings, pgvault::seams::progress::Mode::Off, Default::default())
        .await
        .unwrap();
    let queue = Arc::new(Recorder::default());
    let ctx = rt.ctx.clone();
    let state = pgvault::handler::AppState { ctx: rt.ctx, queue: queue.clone(), max_dequeue_count: 3 };
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, pgvault::handler::app(state)).await });

    // backup-now for one database: 202 with the job id, the job on backup-jobs, a queued record.
    let (status, reply) = pgvault::cli::hostsim::invoke(
        &url,
        "backup-now",
        &http("POST", json!({}), r#"{"server":"prod","database":"app"}"#),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{reply}");
    let res = &reply["Outputs"]["res"];
    assert_eq!(res["statusCode"], 202, "{reply}");
    let body: Value = serde_json::from_str(res["body"].as_str().unwrap()).unwrap();
    let job_id = body["jobs"][0]["job_id"].as_str().unwrap().to_string();
    let sent = queue.0.lock().unwrap().clone();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].0, "backup-jobs");
    assert!(sent[0].1.contains(&job_id));

    // An unknown server is a 404, a bad body or an excluded database a 400; nothing more is
    // enqueued.
    let (_, r) = pgvault::cli::hostsim::invoke(
        &url,
        "backup-now",
        &http("POST", json!({}), r#"{"server":"prod","database":"scratch"}"#),
    )
    .await
    .unwrap();
    assert_eq!(r["Outputs"]["res"]["statusCode"], 400, "{r}");
    assert!(r["Outputs"]["res"]["body"].as_str().unwrap().contains("excluded in the inventory"), "{r}");
    // A database outside a server's include list is refused the same way.
    let (_, r) = pgvault::cli::hostsim::invoke(
        &url,
        "backup-now",
        &http("POST", json!({}), r#"{"server":"only","database":"other"}"#),
    )
    .await
    .unwrap();
    assert_eq!(r["Outputs"]["res"]["statusCode"], 400, "{r}");
    assert!(r["Outputs"]["res"]["body"].as_str().unwrap().contains("is not in the server's include list"), "{r}");
    let (_, r) = pgvault::cli::hostsim::invoke(&url, "backup-now", &http("POST", json!({}), r#"{"server":"nope"}"#))
        .await
        .unwrap();
    assert_eq!(r["Outputs"]["res"]["statusCode"], 404);
    let (_, r) = pgvault::cli::hostsim::invoke(&url, "backup-now", &http("POST", json!({}), "{")).await.unwrap();
    assert_eq!(r["Outputs"]["res"]["statusCode"], 400);
    assert_eq!(queue.0.lock().unwrap().len(), 1);

    // jobs (GET) shows the queued record with its trigger and target, and the summary.
    let (_, r) =
        pgvault::cli::hostsim::invoke(&url, "jobs", &http("GET", json!({"kind": "backup", "summary": "true"}), ""))
            .await
            .unwrap();
    assert_eq!(r["Outputs"]["res"]["statusCode"], 200, "{r}");
    let body: Value = serde_json::from_str(r["Outputs"]["res"]["body"].as_str().unwrap()).unwrap();
    let jobs = body["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 1, "{body}");
    assert_eq!(jobs[0]["id"], job_id.as_str());
    assert_eq!(jobs[0]["status"], "queued");
    assert_eq!(jobs[0]["trigger"], "http");
    assert_eq!(jobs[0]["target"], "prod/app");
    assert_eq!(body["summary"][0]["database"], "app");
    assert!(body["summary"][0]["next_run"].as_str().unwrap().ends_with("T02:00:00Z"), "{body}");

    // The worker runs the job: the server is unreachable (port 1), the last attempt fails, the
    // record says failed and the webhook gets the alert.
    let msg = sent[0].1.clone();
    let inv = json!({"Data": {"job": msg}, "Metadata": {"Id": "m1", "DequeueCount": "3"}});
    let (status, _) = pgvault::cli::hostsim::invoke(&url, "backup-worker", &inv).await.unwrap();
    assert!(status == 200 || status == 500);
    let (_, r) =
        pgvault::cli::hostsim::invoke(&url, "jobs", &http("GET", json!({"failed": "true"}), "")).await.unwrap();
    let body: Value = serde_json::from_str(r["Outputs"]["res"]["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["jobs"][0]["id"], job_id.as_str(), "{body}");
    assert_eq!(body["jobs"][0]["status"], "failed");
    assert!(!body["jobs"][0]["reason"].as_str().unwrap().is_empty());
    let failed = hits_now(&hits);
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["kind"], "job-failed");
    assert_eq!(failed[0]["job_id"], job_id.as_str());
    assert!(!failed[0].to_string().contains("/hook"), "the webhook URL never appears in the body");

    // An as-files restore task's record keeps its files' read-only SAS URLs (the CLI shows them
    // to the operator); the jobs function's reply withholds them, with or without a kind.
    let sas = "https://acct.blob.core.windows.net/exports/i-42/app.dump?sv=2025-01-05&sp=r&sig=c2VjcmV0%3D";
    let now = time::OffsetDateTime::now_utc();
    let mut task = pgvault::monitor::records::JobRecord::new(
        pgvault::monitor::records::JobKind::RestoreTask,
        "req-9-1",
        "export",
        now,
    );
    task.status = pgvault::monitor::records::Status::Succeeded;
    task.detail = pgvault::monitor::records::Detail::read(
        pgvault::monitor::records::JobKind::RestoreTask,
        json!({"task": {"version": 1, "task_id": "req-9-1", "request_id": "req-9", "backup": "prod/app/x",
            "target": {"mode": "as-files", "container": "exports"}, "reason": "asked"},
            "report": {"task_id": "req-9-1", "backup": "prod/app/x", "mode": "as-files", "stored_bytes": 3,
            "raw_bytes": 3, "seconds": 0.5, "files": [{"container": "exports", "blob": "i-42/app.dump", "bytes": 3,
            "sha256": "ab", "url": sas, "expires_at": "2030-01-01T00:00:00Z"}]}}),
    );
    assert!(task.detail.restore_task().is_some(), "a typed task detail: {:?}", task.detail);
    pgvault::monitor::records::put(ctx.store.as_ref(), &task).await.unwrap();
    for query in [json!({}), json!({"kind": "restore-task"}), json!({"id": "req-9-1", "summary": "true"})] {
        let (_, r) = pgvault::cli::hostsim::invoke(&url, "jobs", &http("GET", query.clone(), "")).await.unwrap();
        let res = &r["Outputs"]["res"];
        assert_eq!(res["statusCode"], 200, "{r}");
        assert!(!r.to_string().contains("sig="), "{query}: {r}");
        let body: Value = serde_json::from_str(res["body"].as_str().unwrap()).unwrap();
        let exported = body["jobs"].as_array().unwrap().iter().find(|j| j["id"] == "req-9-1").expect("the task");
        let file = &exported["detail"]["report"]["files"][0];
        assert_eq!(file["blob"], "i-42/app.dump");
        assert!(file["url"].as_str().unwrap().contains("pgvault jobs --json --show-urls --id req-9-1"), "{file}");
    }
    let (_, r) =
        pgvault::cli::hostsim::invoke(&url, "jobs", &http("GET", json!({"kind": "restore-task"}), "")).await.unwrap();
    let body: Value = serde_json::from_str(r["Outputs"]["res"]["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["jobs"].as_array().unwrap().len(), 1, "only restore tasks: {body}");
    let stored =
        pgvault::monitor::records::get(ctx.store.as_ref(), pgvault::monitor::records::JobKind::RestoreTask, "req-9-1")
            .await
            .unwrap()
            .unwrap();
    let kept = &stored.detail.restore_task().unwrap().report.as_ref().unwrap().files[0].url;
    assert_eq!(kept.expose(), Some(sas), "the record keeps the URL");
    assert!(!format!("{stored:?}").contains("sig="), "Debug never shows it: {stored:?}");
    let filter = pgvault::features::report::Filter { id: Some("req-9-1".into()), ..Default::default() };
    let cli = pgvault::features::report::query(&ctx, &filter, false, now, pgvault::features::report::Reader::Operator)
        .await
        .unwrap();
    assert_eq!(cli["jobs"][0]["detail"]["report"]["files"][0]["url"], sas, "`pgvault jobs --json` shows it");

    // The retention timer's RPO check: two databases whose newest backup is three days old miss
    // the daily schedule and alert (a few alerts at a time); the excluded one does not.
    let old = now - time::Duration::days(3);
    for db in ["app", "db2", "scratch"] {
        let paths =
            pgvault::domain::layout::backup_paths(pgvault::domain::layout::BackupKind::Database, "prod", db, old, db);
        let manifest = json!({
            "format": "pgvault-backup-manifest", "format_version": 1, "pgvault_version": "0",
            "id": paths.id, "kind": "database", "job_id": db, "server": "prod", "database": db,
            "server_version": "15", "server_version_num": 150000,
            "tool": {"name": "pg_dump", "version": "15", "major": 15, "args": []},
            "archive_format": "custom", "compression": {"algorithm": "none"},
            "data_blob": format!("{}.x.dump", paths.id), "raw_bytes": 0, "stored_bytes": 0, "sha256": "", "blocks": [],
            "requested_at": pgvault::features::report::rfc(old), "started_at": pgvault::features::report::rfc(old),
            "finished_at": pgvault::features::report::rfc(old), "row_counts": null, "restore_hint": ""
        });
        ctx.store.create(&paths.manifest, bytes::Bytes::from(manifest.to_string()), &Default::default()).await.unwrap();
    }
    let before = hits_now(&hits).len();
    let (status, r) =
        pgvault::cli::hostsim::invoke(&url, "retention", &pgvault::cli::hostsim::timer_payload("retention", false))
            .await
            .unwrap();
    assert_eq!(status, 200, "{r}");
    let mut missed: Vec<String> = hits_now(&hits)[before..]
        .iter()
        .filter(|h| h["kind"] == "missed-schedule")
        .map(|h| h["subject"].as_str().unwrap_or_default().to_string())
        .collect();
    missed.sort();
    assert_eq!(missed, ["prod/app", "prod/db2"], "{:?}", hits_now(&hits));
}

fn hits_now(hits: &Arc<Mutex<Vec<Value>>>) -> Vec<Value> {
    hits.lock().unwrap().clone()
}
