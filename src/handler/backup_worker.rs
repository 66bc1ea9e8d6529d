//! `backup-worker` (queue trigger on `backup-jobs`): run one backup job.
//!
//! Error policy: a transient failure replies 500, so the host retries the message and after
//! `maxDequeueCount` moves it to `backup-jobs-poison`. A message that can never succeed
//! (malformed, unknown server or database, ...) is kept on `backup-jobs-rejected` with the
//! original text and the reason, and the reply is 200 so it is not retried.
//!
//! Dump slots: before it dumps, the worker claims one of `PGVAULT_MAX_DUMPS_PER_SERVER` slots of
//! the job's server (`crate::features::claim::acquire_slot`, lease-bounded like restore-task claims). A job
//! that finds every slot held goes back on `backup-jobs` as a new message, invisible for
//! `PGVAULT_DUMP_SLOT_RETRY_SECONDS` plus jitter, and the reply is 200: a wait is neither a
//! failure (it would count towards poison) nor lost (the new message carries the same text).

use super::{AppState, QueueMessage, Reply};
use crate::domain::error::Error;
use crate::domain::jobs::{BACKUP_JOBS_QUEUE, BackupJob};
use crate::features::backup::Outcome;
use crate::features::claim::{self, Delivery, Holder, Slot};
use axum::extract::State;
use serde_json::json;

/// The queue binding's name in `functions/backup-worker/function.json`.
pub const BINDING: &str = "job";

/// The claim kind of dump slots: `@claims/dump-slot/<server, encoded as in blob names>/<index>`.
pub const DUMP_SLOT: &str = "dump-slot";

pub async fn handle(State(state): State<AppState>, super::HostBody(body): super::HostBody) -> Reply {
    let msg = match super::queue_message(&body, BINDING) {
        Ok(msg) => msg,
        Err(reply) => return reply,
    };
    let (text, dequeue_count) = (&msg.text, msg.dequeue_count);
    let job = match BackupJob::from_json(text) {
        Ok(job) => job,
        Err(e) => return reject(&state, &msg, &e).await,
    };
    if state.ctx.cancel.is_cancelled() {
        return Reply::retry(
            vec!["shutting down; the message will be retried".into()],
            json!({ "error": "shutting down" }),
        );
    }
    // A job for a server outside the inventory takes no slot: run_backup rejects it.
    let slot = match state.ctx.settings.server(&job.server) {
        None => None,
        Some(_) => {
            let store = state.ctx.store.as_ref();
            let slots = state.ctx.settings.max_dumps_per_server;
            let now = time::OffsetDateTime::now_utc();
            // The server name as one path segment, the way layout.rs writes it in blob names.
            let group = crate::domain::layout::encode_segment(&job.server);
            match claim::acquire_slot(store, DUMP_SLOT, &group, slots, &Delivery::queued(&msg.id), now).await {
                Ok(Slot::Owned { claim, .. }) => Some(claim),
                Ok(Slot::Full { holders }) => return defer(&state, &msg, &job, &holders).await,
                Err(e) if e.is_permanent() => return reject(&state, &msg, &e).await,
                Err(e) => {
                    let e = e.context(format!("claim a dump slot of server {:?}", job.server));
                    tracing::error!(job = %job.job_id, what = %job.describe(), error = %e, "backup job failed");
                    return Reply::retry(
                        vec![format!("backup of {} failed (attempt {dequeue_count}): {e}", job.describe())],
                        json!({ "status": "failed", "error": e.to_string() }),
                    );
                }
            }
        }
    };
    // The record says queued/running/succeeded/failed; a failure that will not be retried alerts.
    let result = crate::features::report::run_backup(&state.ctx, &job, dequeue_count >= state.max_dequeue_count).await;
    if let Some(claim) = slot {
        // On failure (logged) the slot is held until this message's redelivery or the lease ends.
        let _ = claim.release(state.ctx.store.as_ref()).await;
    }
    match result {
        Ok(Outcome::Created(m)) => Reply::ok(
            vec![format!("backed up {} as {} ({} bytes stored)", job.describe(), m.id, m.stored_bytes)],
            json!({ "status": "succeeded", "backup": m.id, "stored_bytes": m.stored_bytes, "sha256": m.sha256 }),
        ),
        Ok(Outcome::AlreadyDone { id }) => Reply::ok(
            vec![format!("job {} was already done as {id}; nothing to do", job.job_id)],
            json!({ "status": "already-done", "backup": id }),
        ),
        // run_backup recorded the failure and alerted: keep the message, alert no more.
        Err(e) if e.is_permanent() => super::reject_and_keep(&state, BACKUP_JOBS_QUEUE, &msg, &e).await,
        Err(e) => {
            let last = dequeue_count >= state.max_dequeue_count;
            tracing::error!(
                job = %job.job_id, what = %job.describe(), dequeue_count, last_attempt = last, error = %e,
                "backup job failed"
            );
            let mut logs = vec![format!("backup of {} failed (attempt {dequeue_count}): {e}", job.describe())];
            if last {
                logs.push(format!(
                    "this was the last attempt; the host moves the message to {BACKUP_JOBS_QUEUE}-poison"
                ));
            }
            Reply::retry(logs, json!({ "status": "failed", "error": e.to_string() }))
        }
    }
}

/// Every dump slot of the job's server is held: send the job again as a new message that stays
/// invisible for the retry delay, and reply 200 so the host deletes this one. If sending fails,
/// reply 500: the host keeps this message and retries it.
async fn defer(state: &AppState, msg: &QueueMessage, job: &BackupJob, holders: &[Holder]) -> Reply {
    let base = state.ctx.settings.dump_slot_retry_secs.max(1);
    // Jittered, so the jobs that waited for one server do not all come back at once.
    let delay = base + (uuid::Uuid::new_v4().as_u128() % u128::from(base)) as u32;
    let held_by: Vec<&str> = holders.iter().map(|h| h.message_id.as_str()).collect();
    match state.queue.send_delayed(BACKUP_JOBS_QUEUE, &msg.text, delay).await {
        Ok(()) => {
            tracing::info!(
                job = %job.job_id, what = %job.describe(), server = %job.server, slots = holders.len(),
                held_by = ?held_by, retry_in_secs = delay, "backup job deferred: every dump slot of its server is held"
            );
            Reply::ok(
                vec![format!(
                    "backup of {} deferred: all {} dump slots of server {:?} are held; it is tried again in {delay} s",
                    job.describe(),
                    holders.len(),
                    job.server
                )],
                json!({ "status": "deferred", "server": job.server, "held_by": held_by, "retry_in_secs": delay }),
            )
        }
        Err(e) => {
            tracing::error!(
                job = %job.job_id, what = %job.describe(), error = %e,
                "cannot enqueue backup job"
            );
            Reply::retry(
                vec![format!(
                    "backup of {} must wait for a dump slot, but putting it back on {BACKUP_JOBS_QUEUE} failed: {e}",
                    job.describe()
                )],
                json!({ "status": "failed", "error": e.to_string() }),
            )
        }
    }
}

/// A message that never reached run_backup: record the rejection in the job's record (and
/// alert, once), then keep the message with its reason.
async fn reject(state: &AppState, msg: &QueueMessage, why: &Error) -> Reply {
    crate::features::report::record_rejected(&state.ctx, BackupJob::from_json(&msg.text).ok().as_ref(), &msg.id, why)
        .await;
    super::reject_and_keep(state, BACKUP_JOBS_QUEUE, msg, why).await
}
