//! `doctor` (timer, `PGVAULT_DOCTOR_SCHEDULE`, daily by default): `pgvault doctor` over every
//! server and the drill server (see [`crate::features::doctor`]). Its findings are a `doctor`
//! job record; error findings fail the record, which raises a `doctor` alert. The reply is 200
//! whatever was found (a timer is not retried, and the record and alert carry the findings);
//! it fails only when doctor could not run.

use super::{AppState, Reply};
use axum::extract::State;
use serde_json::json;

pub async fn handle(State(state): State<AppState>, super::HostBody(body): super::HostBody) -> Reply {
    if let Err(reply) = super::parse_invocation(&body) {
        return reply;
    }
    let opts = crate::features::doctor::Options::default();
    match crate::features::doctor::run_recorded(&state.ctx, &opts, "timer").await {
        (Ok(report), rec) => Reply::ok(
            vec![format!("doctor: {}", crate::domain::doctor::summary(&report.findings))],
            json!({ "record": rec.id, "status": rec.status.as_str(), "findings": report.findings }),
        ),
        (Err(e), rec) => {
            tracing::error!(error = %e, "doctor could not run");
            Reply::retry(vec![e.to_string()], json!({ "record": rec.id, "error": e.to_string() }))
        }
    }
}
