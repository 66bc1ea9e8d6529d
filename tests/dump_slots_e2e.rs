//! The per-server dump bound on the real local stack (PostgreSQL 15, Azurite over HTTPS with
//! OAuth, the identity endpoint, the real `pgvault serve`): with PGVAULT_MAX_DUMPS_PER_SERVER=1,
//! a second job for a server whose one slot is held goes back on `backup-jobs` (200, never
//! poisoned, never lost) and runs once the slot is free.

#[path = "support/app.rs"]
mod app;
mod support;

use app::Stack;
use pgvault::cli::hostsim::{self, Form};
use pgvault::domain::jobs::{BACKUP_JOBS_QUEUE, BackupJob, Trigger};
use pgvault::domain::layout::BackupKind;
use pgvault::handler::backup_worker::DUMP_SLOT;
use pgvault::seams::queue::{JobQueue, Received};
use pgvault::seams::store::BlobStore;
use std::time::{Duration, Instant};
use support::data::{manifests, psql_blocking};

/// The next visible message on `backup-jobs`, waiting for its visibility delay to pass.
async fn next_job(stack: &Stack) -> Received {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(m) = stack.queue().receive(BACKUP_JOBS_QUEUE, 1, 600).await.unwrap().into_iter().next() {
            return m;
        }
        assert!(Instant::now() < deadline, "the deferred job never came back on {BACKUP_JOBS_QUEUE}");
        tokio::task::yield_now().await;
    }
}

/// Deliver a received message as the host does (delete it on 2xx) and return the reply.
async fn deliver(stack: &Stack, served: &app::Served, m: &Received) -> (u16, serde_json::Value) {
    let payload =
        hostsim::queue_payload("backup-worker", "job", &m.text, &m.id, &m.pop_receipt, m.dequeue_count, Form::Host);
    let (status, reply) = served.invoke("backup-worker", &payload).await;
    if status == 200 {
        stack.queue().delete(BACKUP_JOBS_QUEUE, &m.id, &m.pop_receipt).await.unwrap();
    }
    (status, reply)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_beyond_the_servers_dump_slots_waits_on_the_queue_and_runs_later() {
    let mut stack = Stack::start().await;
    stack.set("PGVAULT_MAX_DUMPS_PER_SERVER", "1");
    stack.set("PGVAULT_DUMP_SLOT_RETRY_SECONDS", "1");
    for db in ["slot_a", "slot_b"] {
        psql_blocking(&stack.pg, "postgres", &format!("CREATE DATABASE {db}"));
        psql_blocking(&stack.pg, db, "CREATE TABLE t AS SELECT i FROM generate_series(1, 1000) i");
    }
    let served = stack.serve();
    let store = stack.store().await;
    let slot_b = pgvault::domain::layout::prefix(Some("main"), Some("slot_b"));

    // Hold slot_a's dump: pg_dump waits for its ACCESS SHARE lock behind this transaction.
    let locker = stack.pg.client("slot_a").await;
    locker.batch_execute("BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE").await.unwrap();
    let job_a =
        BackupJob::new(BackupKind::Database, "main", Some("slot_a"), time::OffsetDateTime::now_utc(), Trigger::Queue);
    let payload = hostsim::queue_payload("backup-worker", "job", &job_a.to_json(), "ma", "pa", 1, Form::Host);
    let url = served.url.clone();
    let first = tokio::spawn(async move { hostsim::invoke(&url, "backup-worker", &payload).await });
    let watcher = stack.pg.client("postgres").await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let row = watcher
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = 'slot_a' AND application_name = 'pgvault' AND wait_event_type = 'Lock'",
                &[],
            )
            .await
            .unwrap();
        if row.get::<_, i64>(0) > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the first dump never reached its lock wait:\n{}", served.output());
        tokio::task::yield_now().await;
    }
    let slot0 = format!("@claims/{DUMP_SLOT}/main/0");
    assert!(store.exists(&slot0).await.unwrap(), "the running dump holds slot 0 of server main");

    // A second job for the same server: deferred with a 200, the same text back on the queue.
    let job_b =
        BackupJob::new(BackupKind::Database, "main", Some("slot_b"), time::OffsetDateTime::now_utc(), Trigger::Queue);
    let payload = hostsim::queue_payload("backup-worker", "job", &job_b.to_json(), "mb", "pb", 1, Form::Host);
    let (status, reply) = served.invoke("backup-worker", &payload).await;
    assert_eq!(status, 200, "a wait is not a failure: {reply}");
    assert_eq!(reply["ReturnValue"]["status"], "deferred", "{reply}");
    assert_eq!(reply["ReturnValue"]["held_by"], serde_json::json!(["ma"]), "{reply}");
    assert!(reply["ReturnValue"]["retry_in_secs"].as_u64().unwrap() >= 1, "{reply}");
    let back = next_job(&stack).await;
    assert_eq!(back.text, job_b.to_json(), "the job comes back as it was sent");
    assert_eq!(back.dequeue_count, 1, "a fresh message: waiting never counts towards poison");
    assert!(manifests(&store, &slot_b).await.is_empty(), "nothing dumped while the slot is held");

    // Delivered again while the slot is still held: deferred again.
    let (status, reply) = deliver(&stack, &served, &back).await;
    assert_eq!((status, reply["ReturnValue"]["status"].as_str()), (200, Some("deferred")), "{reply}");

    // The first dump ends, and its slot is released.
    locker.batch_execute("COMMIT").await.unwrap();
    let (status, reply) = first.await.unwrap().unwrap();
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["ReturnValue"]["status"], "succeeded", "{reply}");
    assert!(!store.exists(&slot0).await.unwrap(), "the slot is released when the dump ends");

    // Now the waiting job runs.
    let back = next_job(&stack).await;
    assert_eq!(back.text, job_b.to_json());
    let (status, reply) = deliver(&stack, &served, &back).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["ReturnValue"]["status"], "succeeded", "{reply}");
    assert_eq!(manifests(&store, &slot_b).await.len(), 1);
    assert!(!store.exists(&slot0).await.unwrap());
    assert!(stack.queue().peek(BACKUP_JOBS_QUEUE, 32).await.unwrap().is_empty(), "nothing left behind");
    assert!(stack.queue().peek(&format!("{BACKUP_JOBS_QUEUE}-poison"), 32).await.unwrap().is_empty());
    assert!(served.output().contains("backup job deferred"), "{}", served.output());
}
