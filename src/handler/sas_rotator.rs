//! `sas-rotator` (timer trigger): rotate the SAS of every pgBackRest target inside its
//! renew-before window, push it to push-delivery VMs, raise alarms, then check each target's
//! repository freshness (`backup.info`). See [`crate::features::pgbackrest`].

use super::{AppState, Reply, parse_invocation};
use axum::extract::State;
use serde_json::json;

pub async fn handle(State(state): State<AppState>, super::HostBody(body): super::HostBody) -> Reply {
    if let Err(reply) = parse_invocation(&body) {
        return reply;
    }
    let settings = &state.ctx.settings;
    if settings.pgbackrest_targets.is_empty() {
        return Reply::ok(vec!["no pgBackRest targets configured".into()], json!({ "rotation": [], "freshness": [] }));
    }
    match crate::runtime::rotate_pgbackrest(settings, crate::monitor::tracked::Monitor::of(&state.ctx), None, true)
        .await
    {
        // A failed target is reported, recorded and alarmed; failing the invocation would only
        // make the host log it twice (a timer is not retried), so the reply is 200 either way.
        Ok(run) => {
            let line = if run.ok() {
                "pgBackRest SAS rotation done".to_string()
            } else {
                "pgBackRest SAS rotation: some targets failed or alarm".to_string()
            };
            Reply::ok(vec![line], json!(run))
        }
        Err(e) => {
            tracing::error!(error = %e, "sas rotator failed");
            Reply::retry(vec![e.to_string()], json!({ "error": e.to_string() }))
        }
    }
}
