//! `retention` (timer, `PGVAULT_RETENTION_SCHEDULE`): apply every server's retention policy
//! (manifest first, then data; a job record of kind `retention`), prune old job records, then
//! check every backed-up database against its schedule and alert on a missed one (RPO). The RPO
//! check lives here rather than in a timer of its own: both read the whole catalog, and the
//! retention schedule is meant to run often (hourly); retention is idempotent. It also looks at
//! the head of `backup-jobs`: a job waiting longer than the RPO margin means nobody drains the
//! queue, a missed-schedule alert.

use super::{AppState, Reply};
use crate::domain::jobs::BACKUP_JOBS_QUEUE;
use axum::extract::State;
use serde_json::json;

pub async fn handle(State(state): State<AppState>, super::HostBody(body): super::HostBody) -> Reply {
    if let Err(reply) = super::parse_invocation(&body) {
        return reply;
    }
    let ctx = &state.ctx;
    let retention = crate::features::retention::run(ctx, false, None, "timer").await;
    let now = time::OffsetDateTime::now_utc();
    let rpo = crate::features::report::check_rpo(ctx, now).await;
    let mut logs = Vec::new();
    // Jobs that nobody takes from the queue: their backups are missed, even for a database that
    // never had one (which the RPO check cannot age). A failed look is logged, not a failure.
    let waiting = crate::features::report::check_draining(ctx, state.queue.as_ref(), BACKUP_JOBS_QUEUE, now).await;
    let waiting_since = match &waiting {
        Ok(since) => json!(since.map(crate::features::report::rfc)),
        Err(e) => {
            logs.push(format!("cannot look at {BACKUP_JOBS_QUEUE}: {e}"));
            json!(null)
        }
    };
    let removed = match &retention {
        Ok(run) => json!(run.executed.as_ref().map(|e| &e.removed)),
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
    let value = json!({ "removed": removed, "missed_schedules": breaches, "undrained_since": waiting_since });
    // A transient failure is not retried by a timer; the next run picks it up. Report it.
    if retention.is_ok() && rpo.is_ok() { Reply::ok(logs, value) } else { Reply::retry(logs, value) }
}
