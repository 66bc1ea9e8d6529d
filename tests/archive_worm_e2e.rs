//! Archived backups and WORM refusals on the local stack. Azurite accepts the archive tier
//! without taking the blob offline and has no immutability policies, so the storage here is
//! Azurite behind [`Front`], which adds what the Blob service documents for both: Get Blob
//! of an archived blob is 409 `BlobArchived`, Set Blob Tier to hot is 202 and a rehydration
//! that the test completes, a delete under a retention policy is 409 `BlobImmutableDueToPolicy`.
//! pgvault talks to it with the production SDK clients, as it would to Azure.

#[path = "support/app.rs"]
mod app;
mod support;

use app::{CONTAINER, Stack};
use pgvault::azure::{AzureBlobStore, RetrySettings, client_options};
use pgvault::cli::hostsim::{self, Form};
use pgvault::features::restore::{RESTORE_REQUESTS_QUEUE, RESTORE_TASKS_QUEUE};
use pgvault::seams::queue::JobQueue;
use pgvault::seams::store::{BlobStore, Tier};
use serde_json::{Value, json};
use std::collections::HashMap;
use support::data::{blocking, manifests};
use support::front::Front;
use support::test_credential;

fn cli_ok(stack: &Stack, args: &[&str]) -> String {
    let out = stack.cli(args);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "pgvault {args:?}: {text}{}", String::from_utf8_lossy(&out.stderr));
    text
}

fn jobs(stack: &Stack, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["jobs", "--json"];
    all.extend_from_slice(args);
    let v: Value = serde_json::from_str(&cli_ok(stack, &all)).unwrap();
    v["jobs"].as_array().unwrap().clone()
}

async fn front_store(stack: &Stack, front: &Front) -> AzureBlobStore {
    let options = client_options(Some(stack.ca.ca_pem_path()), &RetrySettings::fast()).unwrap();
    AzureBlobStore::new(&front.blob_endpoint, CONTAINER, test_credential(), options).await.unwrap()
}

/// Messages on a queue, visible or not (Get Queue Metadata's approximate count, exact on an
/// idle Azurite queue).
async fn queued_messages(stack: &Stack, queue: &str) -> i64 {
    use azure_storage_queue::models::QueueClientGetPropertiesResultHeaders;
    let options = client_options(Some(stack.ca.ca_pem_path()), &RetrySettings::fast()).unwrap();
    let url = url::Url::parse(&format!("{}/{queue}", stack.azurite.queue_endpoint)).unwrap();
    let client = azure_storage_queue::QueueClient::new(
        url,
        Some(test_credential()),
        Some(azure_storage_queue::QueueClientOptions { client_options: options, ..Default::default() }),
    )
    .unwrap();
    client.get_properties(None).await.unwrap().approximate_messages_count().unwrap().unwrap()
}

fn count(stack: &Stack, db: &str, table: &str) -> i64 {
    stack.pg.psql(db, &format!("SELECT count(*) FROM {table}")).trim().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archived_backup_is_rehydrated_before_restore_and_drills_pass_it_over() {
    let mut stack = Stack::start().await;
    let front = Front::blob(&stack.ca, &stack.azurite.blob_endpoint);
    stack.set("PGVAULT_BLOB_ENDPOINT", &front.blob_endpoint);
    stack.set("PGVAULT_DRILL_SERVER", "main");
    blocking(|| {
        stack.pg.psql("postgres", "CREATE DATABASE app");
        stack.pg.psql("app", "CREATE TABLE t AS SELECT i, md5(i::text) AS h FROM generate_series(1, 40000) i");
    });
    // The database and the server's globals.
    cli_ok(&stack, &["backup", "--server", "main"]);
    let store = front_store(&stack, &front).await;
    let old = manifests(&store, "main/app/").await.remove(0);
    let globals = manifests(&store, &pgvault::domain::layout::prefix(Some("main"), None))
        .await
        .into_iter()
        .find(|m| m.kind == pgvault::domain::layout::BackupKind::Globals)
        .unwrap();

    // Retention's tiering, two days from now, moves the backup's data (never its manifest) to
    // archive through Set Blob Tier.
    let mut env: HashMap<String, String> = stack.settings().into_iter().collect();
    env.insert("PGVAULT_TIER_AFTER_DAYS".into(), "1".into());
    env.insert("PGVAULT_TIER".into(), "archive".into());
    let settings = pgvault::config::settings::Settings::from_map(env).unwrap();
    let later = time::OffsetDateTime::now_utc() + time::Duration::days(2);
    let plans = pgvault::features::retention::plan_store(&settings, &store, None, later).await.unwrap();
    let done = pgvault::features::retention::execute(&store, &plans).await.unwrap();
    let mut tiered = done.tiered.clone();
    tiered.sort();
    let mut want = vec![old.data_blob.clone(), globals.data_blob.clone()];
    want.sort();
    assert_eq!(tiered, want, "the database's and the globals' data: {done:?}");
    assert!(front.is_archived(CONTAINER, &old.data_blob) && front.is_archived(CONTAINER, &globals.data_blob));
    assert!(!front.is_archived(CONTAINER, &pgvault::domain::layout::manifest_for_id(&old.id)));
    let props = store.properties(&old.data_blob).await.unwrap();
    assert_eq!((props.tier, props.archive_status), (Some(Tier::Archive), None));
    // The archive is offline for real: reading it is refused.
    let err = store.get(&old.data_blob).await.unwrap_err().to_string();
    assert!(err.contains("BlobArchived"), "{err}");

    // A newer backup is online. The drill proves it and passes over the archived one.
    blocking(|| stack.pg.psql("app", "INSERT INTO t SELECT i, 'new' FROM generate_series(40001, 40010) i"));
    cli_ok(&stack, &["backup", "--server", "main", "--database", "app"]);
    let drill = cli_ok(&stack, &["drill"]);
    assert!(drill.contains("1 drills, 0 failed"), "{drill}");
    assert!(drill.contains(&format!("passed over {} (main/app)", old.id)), "{drill}");
    assert!(drill.contains("is in the archive tier (offline); drills do not rehydrate"), "{drill}");
    let drills = jobs(&stack, &["--kind", "drill"]);
    assert_eq!(drills.len(), 1, "{drills:?}");
    assert_ne!(drills[0]["detail"]["backup"], old.id.as_str(), "{drills:?}");
    let reads =
        |front: &Front| front.requests_to(CONTAINER, &old.data_blob).into_iter().filter(|r| r.method == "GET").count();
    assert_eq!(reads(&front), 1, "the drill read nothing of the archived backup (the one read is this test's)");

    // A restore of the archived backup: the request is planned, the task starts rehydration
    // (standard priority) and waits, re-enqueued with a delay.
    let served = stack.serve();
    let request = json!({
        "version": 1, "request_id": "from-archive", "requested_by": "archive_e2e",
        "source": { "server": "main", "database": "app", "backup": { "id": old.id } },
        "target": { "mode": "create", "server": "main", "database": "app_restored" },
        "options": { "globals": true },
    });
    stack.queue().send(RESTORE_REQUESTS_QUEUE, &request.to_string(), false).await.unwrap();
    let planned = stack.drain(&served, RESTORE_REQUESTS_QUEUE).await;
    assert_eq!(planned.replies[0]["reply"]["ReturnValue"]["status"], "planned", "{:?}", planned.replies);
    let msg = stack.queue().receive(RESTORE_TASKS_QUEUE, 1, 3600).await.unwrap().remove(0);
    let deliver = |n: u32| {
        let payload = hostsim::queue_payload("restore-worker", "task", &msg.text, &msg.id, "pr", n, Form::Host);
        let url = served.url.clone();
        async move { hostsim::invoke(&url, "restore-worker", &payload).await.unwrap() }
    };
    let (status, reply) = deliver(1).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["ReturnValue"]["status"], "rehydration-pending", "{reply}");
    assert_eq!(reply["ReturnValue"]["recheck_secs"], 1800, "{reply}");
    stack.queue().delete(RESTORE_TASKS_QUEUE, &msg.id, &msg.pop_receipt).await.unwrap();
    // The re-enqueued task is there but invisible until the next look.
    assert!(stack.queue().receive(RESTORE_TASKS_QUEUE, 1, 1).await.unwrap().is_empty());
    assert_eq!(queued_messages(&stack, RESTORE_TASKS_QUEUE).await, 1, "the delayed look is on the queue");
    // Both archived blobs the task reads are rehydrated at once, not one after the other.
    let tier_calls = |front: &Front| -> Vec<(Option<String>, Option<String>, u16)> {
        let mut all = front.requests_to(CONTAINER, &old.data_blob);
        all.extend(front.requests_to(CONTAINER, &globals.data_blob));
        all.into_iter()
            .filter(|r| r.method == "PUT" && r.query == "comp=tier" && r.tier.as_deref() != Some("Archive"))
            .map(|r| (r.tier, r.priority, r.status))
            .collect()
    };
    let calls = tier_calls(&front);
    assert_eq!(calls.len(), 2, "{calls:?}");
    for call in &calls {
        assert_eq!(call.0.as_deref(), Some("Hot"), "{calls:?}");
        assert!(matches!(call.1.as_deref(), None | Some("Standard")), "standard priority: {calls:?}");
        assert_eq!(call.2, 202, "{calls:?}");
    }
    assert_eq!(
        store.properties(&old.data_blob).await.unwrap().archive_status.as_deref(),
        Some("rehydrate-pending-to-hot")
    );
    let task = jobs(&stack, &["--kind", "restore-task"]).remove(0);
    assert_eq!(task["status"], "rehydration-pending", "{task}");
    assert!(task["reason"].as_str().unwrap().contains("in the archive tier"), "{task}");
    let started = task["detail"]["rehydration_started_at"].clone();
    assert!(started.is_string(), "{task}");

    // The next look, still pending: no second tier change, the wait's start is kept.
    let (status, reply) = deliver(1).await;
    assert_eq!((status, &reply["ReturnValue"]["status"]), (200, &json!("rehydration-pending")), "{reply}");
    assert_eq!(tier_calls(&front).len(), 2, "rehydration is started once per blob");
    let task = jobs(&stack, &["--kind", "restore-task"]).remove(0);
    assert_eq!(task["detail"]["rehydration_started_at"], started, "{task}");
    assert_eq!(reads(&front), 1, "the worker never tried to read the archived data");

    // Rehydration completes; the next look restores, verified, into a new database.
    assert_eq!(front.finish_rehydration().await, 2);
    let (status, reply) = deliver(1).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["ReturnValue"]["status"], "succeeded", "{reply}");
    assert_eq!(
        blocking(|| count(&stack, "app_restored", "t")),
        40_000,
        "the archived backup's data, not the newer one"
    );
    let task = jobs(&stack, &["--kind", "restore-task"]).remove(0);
    assert_eq!(task["status"], "succeeded", "{task}");
    assert_eq!(reply["ReturnValue"]["globals"]["skipped"].as_array().map(Vec::is_empty), Some(false), "{reply}");
    let req = jobs(&stack, &["--kind", "restore-request"]).remove(0);
    assert_eq!(req["status"], "succeeded", "{req}");

    // From the CLI: the same request run again after the wait resumes its recorded plan.
    let newest = manifests(&store, "main/app/").await.into_iter().max_by_key(|m| m.requested_at).unwrap();
    assert_ne!(newest.id, old.id);
    store.set_tier(&newest.data_blob, Tier::Archive).await.unwrap();
    let args = [
        "restore",
        "--server",
        "main",
        "--database",
        "app",
        "--backup",
        &newest.id,
        "--target-server",
        "main",
        "--target-database",
        "app_cli",
        "--request-id",
        "cli-archived",
    ];
    let out = stack.cli(&args);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(!out.status.success(), "waiting is not success: {text}");
    assert!(text.contains("WAITING cli-archived-1") && text.contains("rehydration started"), "{text}");
    assert_eq!(front.finish_rehydration().await, 1);
    let text = cli_ok(&stack, &args);
    assert!(text.contains("request cli-archived was submitted before (status running): resuming its plan"), "{text}");
    assert!(text.contains("1 restored, 0 failed"), "{text}");
    assert_eq!(blocking(|| count(&stack, "app_cli", "t")), 40_010);
    let again = cli_ok(&stack, &args);
    assert!(again.contains("request cli-archived succeeded before; nothing to do"), "{again}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_refused_by_a_worm_policy_is_kept_with_its_reason_and_is_not_a_failure() {
    let mut stack = Stack::start().await;
    let front = Front::blob(&stack.ca, &stack.azurite.blob_endpoint);
    stack.set("PGVAULT_BLOB_ENDPOINT", &front.blob_endpoint);
    let mut inventory: Vec<Value> = serde_json::from_str(&stack.inventory(&["postgres"])).unwrap();
    inventory[0]["retention"] = json!({ "daily": 1, "min_keep": 1 });
    stack.set("PGVAULT_INVENTORY", &Value::Array(inventory).to_string());
    blocking(|| {
        stack.pg.psql("postgres", "CREATE DATABASE app");
        stack.pg.psql("app", "CREATE TABLE t AS SELECT i FROM generate_series(1, 1000) i");
    });
    for _ in 0..3 {
        cli_ok(&stack, &["backup", "--server", "main", "--database", "app"]);
    }
    let store = front_store(&stack, &front).await;
    let mut backups = manifests(&store, "main/app/").await;
    backups.sort_by_key(|m| m.requested_at);
    let (locked, free, newest) = (&backups[0], &backups[1], &backups[2]);
    // The oldest backup (manifest and data) is under a time-based retention policy.
    front.lock_prefix(CONTAINER, &locked.id);

    let out = cli_ok(&stack, &["retention"]);
    assert!(out.contains(&format!("removed {}", free.id)), "{out}");
    assert!(out.contains(&format!("kept    {}", newest.id)), "{out}");
    let line = out.lines().find(|l| l.contains(&locked.id)).unwrap_or_default();
    assert!(line.trim_start().starts_with("refused"), "{out}");
    assert!(
        line.contains("immutability policy refused the delete") && line.contains("BlobImmutableDueToPolicy"),
        "{out}"
    );

    // Nothing of the locked backup was touched: its manifest goes first and was refused.
    let left: Vec<String> = manifests(&store, "main/app/").await.into_iter().map(|m| m.id).collect();
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(left.contains(&locked.id) && left.contains(&newest.id), "{left:?}");
    assert!(store.exists(&locked.data_blob).await.unwrap());
    assert!(!store.exists(&free.data_blob).await.unwrap());
    let deletes: Vec<u16> = front
        .requests_to(CONTAINER, &pgvault::domain::layout::manifest_for_id(&locked.id))
        .into_iter()
        .filter(|r| r.method == "DELETE")
        .map(|r| r.status)
        .collect();
    assert_eq!(deletes, [409]);
    assert!(!front.requests_to(CONTAINER, &locked.data_blob).iter().any(|r| r.method == "DELETE"));
    assert!(cli_ok(&stack, &["verify", "--all"]).contains("2 verified, 0 failed"));

    // The run succeeded, and its record says what was kept and why.
    let runs = jobs(&stack, &["--kind", "retention"]);
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0]["status"], "succeeded", "{runs:?}");
    let refused = &runs[0]["detail"]["executed"]["refused"];
    assert_eq!(refused[0][0], locked.id.as_str(), "{refused}");
    assert!(refused[0][1].as_str().unwrap().contains("BlobImmutableDueToPolicy"), "{refused}");
    assert!(jobs(&stack, &["--failed"]).is_empty());
}
