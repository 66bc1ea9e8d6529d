//! `backup-now` (HTTP POST, function key): enqueue on-demand backups of one server (every
//! database and the globals) or of one database, and answer 202 with the job ids at once; the
//! backups run on `backup-worker`. Body: `{"server": "prod", "database": "app"}` (database
//! optional). Each job gets a `queued` record (trigger `http`) before it is sent.

use super::AppState;
use super::jobs::{http_reply, http_request};
use crate::domain::jobs::{BACKUP_JOBS_QUEUE, BackupJob, Trigger};
use crate::domain::layout::BackupKind;
use axum::extract::State;
use axum::response::Response;
use serde::Deserialize;
use serde_json::json;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    server: String,
    #[serde(default)]
    database: Option<String>,
}

pub async fn handle(State(state): State<AppState>, super::HostBody(body): super::HostBody) -> Response {
    let req = match http_request(&body) {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    if req.method != "POST" {
        return http_reply(405, &json!({ "error": "backup-now answers POST only" }), vec![]);
    }
    let b: Body = match serde_json::from_str(&req.body) {
        Ok(b) => b,
        Err(e) => {
            let msg = format!("body is not {{\"server\": .., \"database\": ..}}: {e}");
            return http_reply(400, &json!({ "error": msg }), vec![msg.clone()]);
        }
    };
    let Some(server) = state.ctx.settings.server(&b.server) else {
        return http_reply(404, &json!({ "error": format!("server {:?} is not in the inventory", b.server) }), vec![]);
    };
    // What backup-worker would reject, refused here: no job, no failed record, no alert.
    if let Some(msg) = b.database.as_deref().and_then(|db| server.leaves_out(db)) {
        return http_reply(400, &json!({ "error": msg }), vec![msg.clone()]);
    }
    let now = time::OffsetDateTime::now_utc();
    let jobs: Vec<BackupJob> = match &b.database {
        // One database: no connection needed; backup-worker rejects a database that is gone.
        Some(db) => vec![BackupJob::new(BackupKind::Database, &b.server, Some(db), now, Trigger::Http)],
        None => match crate::features::scheduler::plan(&state.ctx, Some(&b.server), &[], Trigger::Http, now).await {
            Ok(mut plans) => match plans.pop().map(|p| p.jobs) {
                Some(Ok(jobs)) => jobs,
                Some(Err(e)) => return http_reply(502, &json!({ "error": e.to_string() }), vec![e.to_string()]),
                None => Vec::new(),
            },
            Err(e) => return http_reply(400, &json!({ "error": e.to_string() }), vec![e.to_string()]),
        },
    };
    let mut ids = Vec::new();
    for job in &jobs {
        crate::monitor::records::put_logged(
            state.ctx.store.as_ref(),
            &crate::features::report::backup_record(job, now),
        )
        .await;
        if let Err(e) = state.queue.send(BACKUP_JOBS_QUEUE, &job.to_json(), false).await {
            tracing::error!(job = %job.job_id, error = %e, "backup-now: cannot enqueue");
            return http_reply(
                503,
                &json!({ "error": format!("enqueue {}: {e}", job.describe()), "enqueued": ids }),
                vec![e.to_string()],
            );
        }
        tracing::info!(job = %job.job_id, what = %job.describe(), "backup-now: enqueued");
        ids.push(json!({ "job_id": job.job_id, "target": crate::features::report::backup_target(job) }));
    }
    http_reply(202, &json!({ "status": "queued", "jobs": ids }), vec![format!("enqueued {} backup jobs", ids.len())])
}
