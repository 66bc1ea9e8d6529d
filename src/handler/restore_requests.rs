//! `restore-requests` (queue trigger on `restore-requests`): validate a restore request against
//! the inventory and the catalog, plan it, record the plan (job record) and enqueue one task per
//! database on `restore-tasks`.
//!
//! Error policy, as in `backup-worker`: a request that can never run (malformed, unknown server,
//! a target outside the inventory, no backup before the time, ...) is kept on
//! `restore-requests-rejected` with the original text and the reason, and the reply is 200 so it
//! is not retried. A transient failure (storage, queue) replies 500 and the host retries. A
//! request id seen before is acted on once: the duplicate is acknowledged and does nothing.

use super::{AppState, Reply};
use crate::features::restore::{self, RESTORE_REQUESTS_QUEUE, RestoreRequest, Submitted};
use axum::extract::State;
use serde_json::json;

/// The queue binding's name in `functions/restore-requests/function.json`.
pub const BINDING: &str = "request";

pub async fn handle(State(state): State<AppState>, super::HostBody(body): super::HostBody) -> Reply {
    let msg = match super::queue_message(&body, BINDING) {
        Ok(msg) => msg,
        Err(reply) => return reply,
    };
    let (text, dequeue_count) = (&msg.text, msg.dequeue_count);
    let req = match RestoreRequest::from_json(text) {
        Ok(r) => r,
        Err(e) => {
            let monitor = crate::monitor::tracked::Monitor::of(&state.ctx);
            let kind = crate::monitor::records::JobKind::RestoreRequest;
            let summary = "a restore request message that is not a valid request";
            crate::monitor::tracked::reject(monitor, kind, &msg.id, summary, &e).await;
            return super::reject_and_keep(&state, RESTORE_REQUESTS_QUEUE, &msg, &e).await;
        }
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
        Err(e) if e.is_permanent() => super::reject_and_keep(&state, RESTORE_REQUESTS_QUEUE, &msg, &e).await,
        Err(e) => {
            tracing::error!(request = %req.request_id, dequeue_count, error = %e, "restore request failed; the host retries it");
            Reply::retry(
                vec![format!("restore request {} failed (attempt {dequeue_count}): {e}", req.request_id)],
                json!({ "status": "failed", "error": e.to_string() }),
            )
        }
    }
}
