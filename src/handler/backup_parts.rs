//! `backup-parts` (queue trigger on `backup-parts`): run one part of a backup in parts that its
//! coordinator fanned out (`PGVAULT_PARTS_RUN=queue`), in the coordinator's snapshot, and report
//! it to the coordinator through the store (`features::backup::fanout`).
//!
//! Error policy, as in `backup-worker`: a transient failure replies 500, so the host delivers the
//! part again (retried on its own while the snapshot lives) and after `maxDequeueCount` moves it
//! to `backup-parts-poison` (its last failure is reported to the coordinator first). A part that
//! can never succeed (a malformed message; its snapshot gone because the coordinator ended) is
//! kept on `backup-parts-rejected` with its reason, and the reply is 200.

use super::{AppState, Reply};
use crate::domain::fanout::BACKUP_PARTS_QUEUE;
use crate::features::backup::fanout::{Delivery, run_part_message};
use axum::extract::State;
use serde_json::json;

/// The queue binding's name in `functions/backup-parts/function.json`.
pub const BINDING: &str = "part";

pub async fn handle(State(state): State<AppState>, super::HostBody(body): super::HostBody) -> Reply {
    let msg = match super::queue_message(&body, BINDING) {
        Ok(msg) => msg,
        Err(reply) => return reply,
    };
    if state.ctx.cancel.is_cancelled() {
        return Reply::retry(
            vec!["shutting down; the message will be retried".into()],
            json!({ "error": "shutting down" }),
        );
    }
    let last = msg.dequeue_count >= state.max_dequeue_count;
    let delivery = Delivery { message_id: &msg.id, dequeue_count: msg.dequeue_count, last };
    match run_part_message(&state.ctx, &msg.text, &delivery).await {
        Ok(part) => Reply::ok(
            vec![format!(
                "part {} committed as {} ({} bytes stored)",
                part.spec.name, part.data_blob, part.stored_bytes
            )],
            json!({ "status": "committed", "part": part.spec.name, "blob": part.data_blob, "stored_bytes": part.stored_bytes }),
        ),
        Err(e) if e.is_permanent() => super::reject_and_keep(&state, BACKUP_PARTS_QUEUE, &msg, &e).await,
        Err(e) => {
            tracing::error!(message_id = %msg.id, dequeue_count = msg.dequeue_count, last_attempt = last, error = %e, "backup part failed");
            let mut logs = vec![format!("backup part failed (attempt {}): {e}", msg.dequeue_count)];
            if last {
                logs.push(format!(
                    "this was the last attempt; the host moves the message to {BACKUP_PARTS_QUEUE}-poison"
                ));
            }
            Reply::retry(logs, json!({ "status": "failed", "error": e.to_string() }))
        }
    }
}
