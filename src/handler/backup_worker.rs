//! `backup-worker` (queue trigger on `backup-jobs`): run one backup job.
//!
//! Error policy: a transient failure replies 500, so the host retries the message and after
//! `maxDequeueCount` moves it to `backup-jobs-poison`. A message that can never succeed
//! (malformed, unknown server or database, ...) is kept on `backup-jobs-rejected` with the
//! original text and the reason, and the reply is 200 so it is not retried.

use super::{AppState, QueueMessage, Reply};
use crate::backup::Outcome;
use crate::error::Error;
use crate::jobs::{BACKUP_JOBS_QUEUE, BackupJob};
use axum::body::Bytes;
use axum::extract::State;
use serde_json::json;

/// The queue binding's name in `functions/backup-worker/function.json`.
pub const BINDING: &str = "job";

pub async fn handle(State(state): State<AppState>, body: Bytes) -> Reply {
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
    // The record says queued/running/succeeded/failed; a failure that will not be retried alerts.
    match crate::monitor::run_backup(&state.ctx, &job, dequeue_count >= state.max_dequeue_count).await {
        Ok(Outcome::Created(m)) => Reply::ok(
            vec![format!("backed up {} as {} ({} bytes stored)", job.describe(), m.id, m.stored_bytes)],
            json!({ "status": "succeeded", "backup": m.id, "stored_bytes": m.stored_bytes, "sha256": m.sha256 }),
        ),
        Ok(Outcome::AlreadyDone { id }) => Reply::ok(
            vec![format!("job {} was already done as {id}; nothing to do", job.job_id)],
            json!({ "status": "already-done", "backup": id }),
        ),
        Err(e) if e.is_permanent() => reject(&state, &msg, &e).await,
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

/// Record the rejection in the job's record (and alert), then keep the message with its reason.
async fn reject(state: &AppState, msg: &QueueMessage, why: &Error) -> Reply {
    crate::monitor::record_rejected(&state.ctx, BackupJob::from_json(&msg.text).ok().as_ref(), &msg.id, why).await;
    super::reject_and_keep(state, BACKUP_JOBS_QUEUE, msg, why).await
}
