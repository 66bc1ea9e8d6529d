//! `restore-drill` (timer, `PGVAULT_DRILL_SCHEDULE`): restore drills of every server (see
//! [`crate::features::drill`]). Each drill is a job record; a failed drill alerts. Without
//! `PGVAULT_DRILL_SERVER` the timer does nothing and says so (200); the reply fails only when
//! configured drills could not start.

use super::{AppState, Reply};
use crate::monitor::records::Status;
use axum::extract::State;
use serde_json::json;

pub async fn handle(State(state): State<AppState>, super::HostBody(body): super::HostBody) -> Reply {
    if let Err(reply) = super::parse_invocation(&body) {
        return reply;
    }
    // Drills are optional: without a scratch server there is nothing to do, which is no failure
    // (`serve` says so once at start-up).
    if state.ctx.settings.drill_server.is_none() {
        return Reply::ok(
            vec!["restore drills are not configured (PGVAULT_DRILL_SERVER is unset): nothing to do".into()],
            json!({ "status": "not-configured" }),
        );
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
