//! `restore-requests` (queue trigger on `restore-requests`): validate a restore request against
//! the inventory and the catalog, plan it, record the plan (job record) and enqueue one task per
//! database on `restore-tasks`.
//!
//! Error policy, as in `backup-worker`: a request that can never run (malformed, unknown server,
//! a target outside the inventory, no backup before the time, ...) is kept on
//! `restore-requests-rejected` with the original text and the reason, and the reply is 200 so it
//! is not retried. A transient failure (storage, queue) replies 500 and the host retries. A
//! request id seen before is acted on once: the duplicate is acknowledged and does nothing.

use super::{AppState, Reply, parse_invocation};
use crate::error::Error;
use crate::jobs::rejected_queue;
use crate::restore::{self, RESTORE_REQUESTS_QUEUE, RestoreRequest, Submitted};
use axum::body::Bytes;
use axum::extract::State;
use serde_json::json;

/// The queue binding's name in `functions/restore-requests/function.json`.
pub const BINDING: &str = "request";

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
    let req = match RestoreRequest::from_json(&text) {
        Ok(r) => r,
        Err(e) => return reject(&state, RESTORE_REQUESTS_QUEUE, &text, &message_id, dequeue_count, &e).await,
    };
    if state.ctx.cancel.is_cancelled() {
        return Reply::retry(
            vec!["shutting down; the message will be retried".into()],
            json!({ "error": "shutting down" }),
        );
    }
    match restore::submit(&state.ctx, Some(state.queue.as_ref()), &req).await {
        Ok(Submitted::Planned(plan)) => {
            let mut logs: Vec<String> = plan.choices.iter().map(|c| format!("{}: {}", c.what, c.reason)).collect();
            logs.push(format!("request {}: {} restore tasks enqueued", req.request_id, plan.tasks.len()));
            Reply::ok(
                logs,
                json!({
                    "status": "planned",
                    "request_id": req.request_id,
                    "tasks": plan.tasks.iter().map(|t| json!({ "task_id": t.task_id, "what": t.describe() })).collect::<Vec<_>>(),
                    "choices": plan.choices,
                }),
            )
        }
        Ok(Submitted::Duplicate(existing)) => {
            tracing::info!(request = %req.request_id, status = existing.status.as_str(), "duplicate restore request ignored");
            Reply::ok(
                vec![format!(
                    "request id {} was submitted before (status {}); this copy does nothing",
                    req.request_id,
                    existing.status.as_str()
                )],
                json!({ "status": "duplicate", "request_id": req.request_id, "existing_status": existing.status }),
            )
        }
        Err(e) if e.is_permanent() => {
            reject(&state, RESTORE_REQUESTS_QUEUE, &text, &message_id, dequeue_count, &e).await
        }
        Err(e) => {
            tracing::error!(request = %req.request_id, dequeue_count, error = %e, "restore request failed; the host retries it");
            Reply::retry(
                vec![format!("restore request {} failed (attempt {dequeue_count}): {e}", req.request_id)],
                json!({ "status": "failed", "error": e.to_string() }),
            )
        }
    }
}

/// Keep a message that can never succeed, with its reason, on `<queue>-rejected`. If even that
/// fails, reply 500 so the host keeps the message: nothing is lost.
pub(super) async fn reject(
    state: &AppState,
    queue: &str,
    text: &str,
    message_id: &str,
    dequeue_count: u32,
    why: &Error,
) -> Reply {
    let kept_on = rejected_queue(queue);
    let record = json!({
        "queue": queue,
        "message_id": message_id,
        "dequeue_count": dequeue_count,
        "rejected_at": time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
        "reason": why.to_string(),
        "message": text,
    });
    match state.queue.send(&kept_on, &record.to_string(), true).await {
        Ok(()) => {
            tracing::error!(message_id, queue = %kept_on, reason = %why, "message rejected and kept");
            Reply::ok(
                vec![format!("message {message_id} rejected and kept on {kept_on}: {why}")],
                json!({ "status": "rejected", "reason": why.to_string(), "kept_on": kept_on }),
            )
        }
        Err(e) => {
            tracing::error!(message_id, reason = %why, error = %e, "cannot keep rejected message; leaving it to the host");
            Reply::retry(
                vec![format!("message {message_id} cannot succeed ({why}), and keeping it on {kept_on} failed: {e}")],
                json!({ "status": "failed", "error": e.to_string() }),
            )
        }
    }
}
