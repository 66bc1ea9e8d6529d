//! `backup-worker` (queue trigger on `backup-jobs`): run one backup job.
//!
//! Error policy: a transient failure replies 500, so the host retries the message and after
//! `maxDequeueCount` moves it to `backup-jobs-poison`. A message that can never succeed
//! (malformed, unknown server or database, ...) is kept on `backup-jobs-rejected` with the
//! original text and the reason, and the reply is 200 so it is not retried.

use super::{AppState, Reply, parse_invocation};
use crate::backup::Outcome;
use crate::error::Error;
use crate::jobs::{BACKUP_JOBS_QUEUE, BackupJob, rejected_queue};
use axum::body::Bytes;
use axum::extract::State;
use serde_json::json;

/// The queue binding's name in `functions/backup-worker/function.json`.
pub const BINDING: &str = "job";

pub async fn handle(State(state): State<AppState>, body: Bytes) -> Reply {
    let inv = match parse_invocation(&body) {
        Ok(inv) => inv,
        Err(reply) => return reply,
    };
    let Some(text) = inv.text(BINDING) else {
        return super::bad_invocation(format!("Data has no {BINDING:?} binding"));
    };
    let message_id = inv.meta_str("Id").unwrap_or_default();
    let dequeue_count = inv.dequeue_count().unwrap_or(1);
    let job = match BackupJob::from_json(&text) {
        Ok(job) => job,
        Err(e) => return reject(&state, &text, &message_id, dequeue_count, &e).await,
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
        Err(e) if e.is_permanent() => reject(&state, &text, &message_id, dequeue_count, &e).await,
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

/// Keep a message that can never succeed, with its reason, on the `-rejected` queue. If even that
/// fails, reply 500 so the host keeps the message: nothing is lost.
async fn reject(state: &AppState, text: &str, message_id: &str, dequeue_count: u32, why: &Error) -> Reply {
    crate::monitor::record_rejected(&state.ctx, BackupJob::from_json(text).ok().as_ref(), message_id, why).await;
    let queue = rejected_queue(BACKUP_JOBS_QUEUE);
    let record = json!({
        "queue": BACKUP_JOBS_QUEUE,
        "message_id": message_id,
        "dequeue_count": dequeue_count,
        "rejected_at": time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
        "reason": why.to_string(),
        "message": text,
    });
    match state.queue.send(&queue, &record.to_string(), true).await {
        Ok(()) => {
            tracing::error!(message_id, queue = %queue, reason = %why, "backup job message rejected and kept");
            Reply::ok(
                vec![format!("message {message_id} rejected and kept on {queue}: {why}")],
                json!({ "status": "rejected", "reason": why.to_string(), "kept_on": queue }),
            )
        }
        Err(e) => {
            tracing::error!(message_id, reason = %why, error = %e, "cannot keep rejected message; leaving it to the host");
            Reply::retry(
                vec![format!("message {message_id} cannot succeed ({why}), and keeping it on {queue} failed: {e}")],
                json!({ "status": "failed", "error": e.to_string() }),
            )
        }
    }
}
