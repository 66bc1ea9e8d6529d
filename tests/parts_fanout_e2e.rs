//! A backup in parts fanned out on the `backup-parts` queue (`PGVAULT_PARTS_RUN=queue`), end to
//! end through the real `pgvault serve` on the local stack: the test plays the Functions host,
//! delivering the job to one instance (the coordinator) and the part messages it sends, taken off
//! Azurite's `backup-parts`, to another (the part worker). A part that fails transiently is
//! delivered again and the set still publishes; a coordinator killed while its parts wait
//! publishes nothing, each part fails naming the lost snapshot, and the job retried as a whole
//! succeeds.

#[path = "support/app.rs"]
mod app;
mod support;

use app::{Served, Stack, invoke_until_held};
use pgvault::cli::hostsim::{self, Form, queue_payload};
use pgvault::domain::fanout::{BACKUP_PARTS_QUEUE, PartResult};
use pgvault::domain::jobs::{BackupJob, Trigger};
use pgvault::domain::layout::{self, BackupKind, PART_RESULT_SUFFIX};
use pgvault::domain::manifest::Manifest;
use pgvault::seams::queue::JobQueue;
use pgvault::seams::store::BlobStore;
use std::path::Path;
use support::data::{blocking, manifests, psql_blocking, table_sums};

const GONE: &str = "no longer exists (the coordinator ended)";

/// A database that goes in parts with `PGVAULT_PARALLEL_ABOVE_MIB=0`: `orders` is larger than
/// a fair share, so it is split into COPY parts besides the schema and data parts.
async fn shop_stack() -> Stack {
    let mut stack = Stack::start().await;
    stack.set("PGVAULT_PARALLEL_ABOVE_MIB", "0");
    stack.set("PGVAULT_BACKUP_JOBS", "2");
    stack.set("PGVAULT_PARTS_RUN", "queue");
    stack.set("PGVAULT_INVENTORY", &stack.inventory(&["postgres"]));
    psql_blocking(&stack.pg, "postgres", "CREATE DATABASE shop");
    psql_blocking(
        &stack.pg,
        "shop",
        "CREATE TABLE customers (id int PRIMARY KEY, name text);
         CREATE TABLE orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, customer int REFERENCES customers, pad text);
         INSERT INTO customers SELECT g, 'c' || g FROM generate_series(1, 500) g;
         INSERT INTO orders (customer, pad) SELECT 1 + g % 500, md5(g::text) FROM generate_series(1, 6000) g;
         CREATE TABLE notes AS SELECT g AS n FROM generate_series(1, 300) g;",
    );
    stack
}

fn job_payload(job: &BackupJob, dequeue_count: u32) -> serde_json::Value {
    queue_payload("backup-worker", "job", &job.to_json(), "job-1", "p", dequeue_count, Form::Host)
}

/// The part results of the store (name, parsed) under the shop's prefix.
async fn results(store: &dyn BlobStore) -> Vec<(String, PartResult)> {
    let mut out = Vec::new();
    for b in store.list(&layout::prefix(Some("main"), Some("shop"))).await.unwrap() {
        if b.name.ends_with(PART_RESULT_SUFFIX) {
            let r = PartResult::from_json(&b.name, &store.get(&b.name).await.unwrap()).unwrap();
            out.push((b.name, r));
        }
    }
    out
}

/// Deliver `job` to `coordinator`, held after it sent its parts (fail point file `go`), play the
/// host for every part on `backup-parts` with `worker`, then let the coordinator go on. Returns
/// the drain report, the results the coordinator found, and its reply.
async fn back_up_through_the_queue(
    stack: &Stack,
    coordinator: &Served,
    worker: &Served,
    job: &BackupJob,
    dequeue_count: u32,
    go: &Path,
) -> (hostsim::DrainReport, Vec<(String, PartResult)>, serde_json::Value) {
    let running = invoke_until_held(coordinator, "backup-worker", job_payload(job, dequeue_count), go);
    let drained = stack.drain(worker, BACKUP_PARTS_QUEUE).await;
    let found = results(&stack.store().await).await;
    std::fs::write(go, "").unwrap();
    let (status, reply) = running.await.unwrap().unwrap();
    assert_eq!(status, 200, "{reply}\n{}", coordinator.output());
    (drained, found, reply)
}

fn published(found: &[Manifest]) -> &Manifest {
    assert_eq!(found.len(), 1, "one backup published");
    &found[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parts_on_the_queue_run_on_another_instance_in_the_coordinators_snapshot_and_restore() {
    let stack = shop_stack().await;
    let dir = tempfile::tempdir().unwrap();
    let go = dir.path().join("go");
    let coordinator =
        stack.serve_with(&[("PGVAULT_FAILPOINTS", &format!("backup.parts-sent=return(hold:{})", go.display()))]);
    // The worker's first delivery fails transiently: the host delivers that part again.
    let worker = stack.serve_with(&[("PGVAULT_FAILPOINTS", "backup.part-run=1*return(error)")]);
    let job =
        BackupJob::new(BackupKind::Database, "main", Some("shop"), time::OffsetDateTime::now_utc(), Trigger::Queue);

    let (drained, found, reply) = back_up_through_the_queue(&stack, &coordinator, &worker, &job, 1, &go).await;
    assert_eq!(reply["ReturnValue"]["status"], "succeeded", "{reply}");
    assert_eq!((drained.failed_attempts, drained.poisoned), (1, 0), "{drained:?}");
    let failed = &drained.replies[0];
    assert_eq!(failed["status"], 500, "a transient failure is a failed invocation: {failed}");
    assert!(failed["reply"]["ReturnValue"]["error"].as_str().unwrap().contains("backup.part-run"), "{failed}");
    // Every part reported once, committed, under the coordinator's attempt.
    assert_eq!(found.len(), drained.succeeded, "{found:?}");
    assert!(found.iter().all(|(_, r)| matches!(r.outcome, pgvault::domain::fanout::PartOutcome::Committed { .. })));

    let store = stack.store().await;
    let all = manifests(&store, &layout::prefix(Some("main"), Some("shop"))).await;
    let m = published(&all);
    assert!(m.is_parts());
    assert_eq!(m.parts.len(), drained.succeeded, "one message per part");
    assert!(m.parts.iter().any(|p| p.spec.kind == pgvault::domain::parts::PartKind::Copy), "orders is split");
    let snapshot = m.snapshot.clone().unwrap();
    assert!(m.parts.iter().all(|p| p.snapshot == snapshot), "every part in the coordinator's snapshot");
    // The worker, not the coordinator, dumped them, each in that snapshot.
    let (c_out, w_out) = (coordinator.output(), worker.output());
    assert_eq!(c_out.matches("part committed").count(), 0, "{c_out}");
    assert_eq!(w_out.matches("part committed").count(), m.parts.len(), "{w_out}");
    let started: Vec<&str> = w_out.lines().filter(|l| l.contains("part started")).collect();
    assert_eq!(started.len(), m.parts.len(), "{w_out}");
    assert!(started.iter().all(|l| l.contains(&format!("snapshot={snapshot}"))), "{started:?}");
    // The results served and are gone; nothing but the set is left.
    assert!(results(&store).await.is_empty());
    let out = stack.cli(&["verify", "--all"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success() && text.contains("1 verified, 0 failed") && !text.contains("orphan"), "{text}");

    // A message that is no part is kept with a reason that names it, and not retried.
    let cases =
        [("{not json".to_string(), "backup part message"), ("{\"version\":1}".to_string(), "backup part message")];
    stack.assert_rejected_and_kept(&worker, BACKUP_PARTS_QUEUE, &cases).await;

    let out =
        stack.cli(&["restore", "--server", "main", "--database", "shop", "--target-database", "shop_copy", "--json"]);
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let (a, b) = blocking(|| (table_sums(&stack.pg, "shop"), table_sums(&stack.pg, "shop_copy")));
    assert_eq!(a, b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_coordinator_fails_its_parts_by_name_publishes_nothing_and_the_retry_succeeds() {
    let stack = shop_stack().await;
    let store = stack.store().await;
    let prefix = layout::prefix(Some("main"), Some("shop"));
    let job =
        BackupJob::new(BackupKind::Database, "main", Some("shop"), time::OffsetDateTime::now_utc(), Trigger::Queue);

    // Killed (SIGKILL) right after it sent its parts: no reply, and the host will deliver the
    // job again.
    let coordinator = stack.serve_with(&[("PGVAULT_FAILPOINTS", "backup.parts-sent=return")]);
    let killed = hostsim::invoke(&coordinator.url, "backup-worker", &job_payload(&job, 1)).await;
    assert!(killed.is_err(), "no reply from a killed coordinator: {killed:?}");
    assert!(coordinator.output().contains("fail point backup.parts-sent: SIGKILL"), "{}", coordinator.output());
    // Its session ends with it (the server sees the connection close): wait for that.
    let sessions = "SELECT count(*) FROM pg_stat_activity WHERE datname = 'shop' AND application_name = 'pgvault'";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while psql_blocking(&stack.pg, "postgres", sessions) != "0" {
        assert!(std::time::Instant::now() < deadline, "the killed coordinator's session never ended");
    }

    // Every part delivered now fails for good, naming the lost snapshot, and is kept.
    let worker = stack.serve();
    let drained = stack.drain(&worker, BACKUP_PARTS_QUEUE).await;
    assert!(drained.succeeded >= 3 && drained.failed_attempts == 0 && drained.poisoned == 0, "{drained:?}");
    for r in &drained.replies {
        assert_eq!(r["reply"]["ReturnValue"]["status"], "rejected", "{r}");
        assert!(r["reply"]["ReturnValue"]["reason"].as_str().unwrap().contains(GONE), "{r}");
    }
    let kept = stack.queue().peek(&format!("{BACKUP_PARTS_QUEUE}-rejected"), 32).await.unwrap();
    assert_eq!(kept.len(), drained.succeeded);
    assert!(kept.iter().all(|k| k.contains(GONE)), "{kept:?}");
    let found = results(&store).await;
    assert_eq!(found.len(), drained.succeeded, "each part says how it ended: {found:?}");
    for (name, r) in &found {
        match &r.outcome {
            pgvault::domain::fanout::PartOutcome::Failed { error } => assert!(error.contains(GONE), "{name}: {error}"),
            other => panic!("{name}: {other:?}"),
        }
    }
    assert!(manifests(&store, &prefix).await.is_empty(), "nothing published");

    // The host delivers the job again: a new snapshot, every part again, published.
    let dir = tempfile::tempdir().unwrap();
    let go = dir.path().join("go");
    let coordinator =
        stack.serve_with(&[("PGVAULT_FAILPOINTS", &format!("backup.parts-sent=return(hold:{})", go.display()))]);
    let (drained, _, reply) = back_up_through_the_queue(&stack, &coordinator, &worker, &job, 2, &go).await;
    assert_eq!(reply["ReturnValue"]["status"], "succeeded", "{reply}");
    assert_eq!((drained.failed_attempts, drained.poisoned), (0, 0), "{drained:?}");
    let all = manifests(&store, &prefix).await;
    let m = published(&all);
    assert_eq!(m.job_id, job.job_id);
    let snapshot = m.snapshot.clone().unwrap();
    assert!(m.parts.iter().all(|p| p.snapshot == snapshot));
    // Only the first attempt's failed reports are left, orphans of the job that verify names.
    let left: Vec<String> = results(&store).await.into_iter().map(|(n, _)| n).collect();
    assert_eq!(left, found.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>());
}
