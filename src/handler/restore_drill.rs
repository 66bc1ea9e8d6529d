//! `restore-drill` (timer, `PGVAULT_DRILL_SCHEDULE`): restore drills of every server (see
//! [`crate::features::drill`]). Each drill is a job record; a failed drill alerts. The reply fails only
//! when the drills could not start (e.g. no `PGVAULT_DRILL_SERVER`).

use super::{AppState, Reply};
use crate::monitor::records::Status;
use axum::extract::State;
use serde_json::json;

pub async fn handle(State(state): State<AppState>, body: axum::body::Bytes) -> Reply {
    if let Err(reply) = super::parse_invocation(&body) {
        return reply;
    }
    match crate::features::drill::run(&state.ctx, None, "timer").await {
        Ok(drills) => {
            let failed = drills.records.iter().filter(|r| r.status != Status::Succeeded).count();
            let ids: Vec<&str> = drills.records.iter().map(|r| r.id.as_str()).collect();
            Reply::ok(
                vec![format!(
                    "{} restore drills, {failed} failed, {} archived backups passed over",
                    drills.records.len(),
                    drills.skipped.len()
                )],
                json!({ "drills": ids, "failed": failed, "skipped": drills.skipped }),
            )
        }
        Err(e) => {
            tracing::error!(error = %e, "restore drills could not run");
            Reply::retry(vec![e.to_string()], json!({ "error": e.to_string() }))
        }
    }
}
