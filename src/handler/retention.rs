//! `retention` (timer, `PGVAULT_RETENTION_SCHEDULE`): apply every server's retention policy
//! (manifest first, then data; a job record of kind `retention`), prune old job records, then
//! check every backed-up database against its schedule and alert on a missed one (RPO). The RPO
//! check lives here rather than in a timer of its own: both read the whole catalog, and the
//! retention schedule is meant to run often (hourly); retention is idempotent.

use super::{AppState, Reply};
use axum::extract::State;
use serde_json::json;

pub async fn handle(State(state): State<AppState>, super::HostBody(body): super::HostBody) -> Reply {
    if let Err(reply) = super::parse_invocation(&body) {
        return reply;
    }
    let ctx = &state.ctx;
    let retention = crate::features::retention::run(ctx, false, None, "timer").await;
    let rpo = crate::features::report::check_rpo(ctx, time::OffsetDateTime::now_utc()).await;
    let mut logs = Vec::new();
    let removed = match &retention {
        Ok(v) => v["executed"]["removed"].clone(),
        Err(e) => {
            logs.push(format!("retention failed: {e}"));
            json!(null)
        }
    };
    let breaches = match &rpo {
        Ok(b) => json!(b),
        Err(e) => {
            logs.push(format!("RPO check failed: {e}"));
            json!(null)
        }
    };
    let value = json!({ "removed": removed, "missed_schedules": breaches });
    // A transient failure is not retried by a timer; the next run picks it up. Report it.
    if retention.is_ok() && rpo.is_ok() { Reply::ok(logs, value) } else { Reply::retry(logs, value) }
}
