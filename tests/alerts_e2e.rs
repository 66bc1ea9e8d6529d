//! Every failure that will not be retried alerts, once, whatever kind of job it was; one that
//! will be retried does not. On the local stack (PostgreSQL, Azurite, the identity endpoint),
//! with the real `pgvault serve` receiving the host's payloads and a local webhook receiver.

#[path = "support/app.rs"]
mod app;
mod support;

use app::Stack;
use pgvault::cli::hostsim::{Form, queue_payload};
use pgvault::features::restore::{self, Options, RestoreTask, Target};
use serde_json::{Value, json};
use support::data::{blocking, manifests, psql_blocking};
use support::webhook::Webhook;

/// The alert records (`"alert":true`) in a JSON log.
fn alert_lines(log: &str) -> Vec<Value> {
    log.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).filter(|v| v["alert"] == json!(true)).collect()
}

fn task(id: &str, backup: &str, server: &str, database: &str) -> String {
    RestoreTask {
        version: restore::MESSAGE_VERSION,
        task_id: format!("{id}-1"),
        request_id: id.into(),
        requested_by: Some("alerts_e2e".into()),
        backup: backup.into(),
        globals: None,
        target: Target {
            mode: restore::Mode::Create,
            server: Some(server.into()),
            database: Some(database.into()),
            container: None,
            prefix: None,
            expires_in_seconds: None,
        },
        options: Options::default(),
        reason: "alerts_e2e".into(),
    }
    .to_json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_failures_alert_once_unless_the_host_retries_them_and_a_rejected_backup_alerts_once() {
    let hook = Webhook::start().await;
    let mut stack = Stack::start().await;
    // A server in the inventory that is down: a restore into it fails transiently.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut servers: Vec<Value> = serde_json::from_str(&stack.inventory(&["postgres"])).unwrap();
    servers.push(json!({ "name": "down", "host": "127.0.0.1", "port": closed, "user": "postgres", "tls": "disable" }));
    stack.set("PGVAULT_INVENTORY", &Value::Array(servers).to_string());
    stack.set("PGVAULT_ALERT_WEBHOOK", &hook.url);
    stack.set("PGVAULT_LOG_FORMAT", "json");
    psql_blocking(&stack.pg, "postgres", "CREATE DATABASE app");
    let out = blocking(|| stack.cli(&["backup", "--server", "main", "--database", "app"]));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let backup = manifests(&stack.store().await, "main/app/").await.pop().unwrap().id;
    let served = stack.serve();
    let deliver = |text: String, id: &str, dequeue_count: u32| {
        queue_payload("restore-worker", "task", &text, id, "pop", dequeue_count, Form::Host)
    };

    // Permanent (the target exists; mode create never touches it): one alert, job-failed.
    let (status, _) = served.invoke("restore-worker", &deliver(task("perm", &backup, "main", "app"), "m1", 1)).await;
    assert_eq!(status, 200);
    let hits = hook.hits();
    assert_eq!(hits.len(), 1, "{hits:?}");
    assert_eq!(hits[0]["kind"], "job-failed");
    assert_eq!(hits[0]["job_id"], "perm-1");
    assert!(
        hits[0]["summary"].as_str().unwrap().contains("mode create never touches an existing database"),
        "{hits:?}"
    );
    let alerts = alert_lines(&served.output());
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0]["alert_kind"], "job-failed");
    assert_eq!(alerts[0]["level"], "ERROR");

    // Transient (the server is down), a delivery the host retries: no alert.
    let (status, _) = served.invoke("restore-worker", &deliver(task("down", &backup, "down", "app"), "m2", 1)).await;
    assert_eq!(status, 500, "the host retries it");
    assert_eq!(hook.hits().len(), 1, "a failure that will be retried does not alert: {:?}", hook.hits());
    let record = blocking(|| stack.cli(&["jobs", "--json", "--id", "down-1"]));
    let record: Value = serde_json::from_slice(&record.stdout).unwrap();
    assert_eq!(record["jobs"][0]["status"], "failed");
    assert_eq!(record["jobs"][0]["detail"]["will_retry"], true, "{record}");
    // Its last delivery (maxDequeueCount 3) alerts, once.
    let (status, _) = served.invoke("restore-worker", &deliver(task("down", &backup, "down", "app"), "m2", 3)).await;
    assert_eq!(status, 500);
    let hits = hook.hits();
    assert_eq!(hits.len(), 2, "{hits:?}");
    assert_eq!(hits[1]["job_id"], "down-1");

    // A backup job for a database the server lacks: rejected and kept, one alert (not one for
    // the failed job and another for the rejected message).
    let job = json!({
        "version": 1, "job_id": "2a9c1b1e-1111-4222-8333-944455556666", "kind": "database", "server": "main",
        "database": "nope", "requested_at": "2026-12-01T00:00:00Z", "trigger": "http"
    });
    let payload = queue_payload("backup-worker", "job", &job.to_string(), "m3", "pop", 1, Form::Host);
    let (status, reply) = served.invoke("backup-worker", &payload).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["ReturnValue"]["status"], "rejected", "{reply}");
    let hits = hook.hits();
    assert_eq!(hits.len(), 3, "exactly one alert for the rejected backup: {hits:?}");
    assert_eq!(hits[2]["subject"], "main/nope");
    // A message that is not a job at all: rejected, kept, one alert too.
    let payload = queue_payload("backup-worker", "job", "{not json", "m4", "pop", 1, Form::Host);
    let (status, _) = served.invoke("backup-worker", &payload).await;
    assert_eq!(status, 200);
    assert_eq!(hook.hits().len(), 4, "{:?}", hook.hits());
    // Two messages without an id: each keeps a record of its own (they used to share one).
    for text in ["{no id 1", "{no id 2"] {
        let payload = queue_payload("backup-worker", "job", text, "", "pop", 1, Form::Host);
        let (status, reply) = served.invoke("backup-worker", &payload).await;
        assert_eq!(status, 200);
        assert!(reply["Logs"][0].as_str().unwrap().contains("message (without an id) rejected"), "{reply}");
    }
    let out = blocking(|| stack.cli(&["jobs", "--json", "--kind", "backup", "--failed"]));
    let failed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let ids: std::collections::BTreeSet<&str> =
        failed["jobs"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids.iter().filter(|i| i.starts_with("rejected-") && **i != "rejected-m4").count(), 2, "{ids:?}");
    // The webhook URL (a secret) is in no alert and no log line.
    let log = served.output();
    assert!(!log.contains("secret-webhook-token"), "{log}");
    assert!(!hook.hits().iter().any(|h| h.to_string().contains("secret-webhook-token")));
    assert_eq!(hook.hits().len(), 6, "every rejected message alerted once: {:?}", hook.hits());
}
