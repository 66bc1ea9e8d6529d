//! `backup-scheduler` (timer trigger): enqueue one backup job per eligible database, plus one
//! globals job per server, on `backup-jobs`. A server whose databases could not be listed, or
//! that has databases (besides its maintenance database) of which none was enqueued, raises a
//! `missed-schedule` alert: a timer is not retried, so that run's backups would be missed in
//! silence. Each server's part of the run is one `job finished` event (kind `scheduler`) with
//! its databases and the database backups enqueued, which a log alert reads.

use super::{AppState, Reply, parse_invocation};
use crate::domain::jobs::{BACKUP_JOBS_QUEUE, Trigger};
use crate::monitor::event::{self, JobEvent};
use axum::extract::State;
use serde_json::json;
use time::OffsetDateTime;

pub async fn handle(State(state): State<AppState>, super::HostBody(body): super::HostBody) -> Reply {
    let inv = match parse_invocation(&body) {
        Ok(inv) => inv,
        Err(reply) => return reply,
    };
    // The TimerInfo is informational: a late run still backs up.
    let past_due = inv
        .data
        .get("timer")
        .map(|t| match t {
            serde_json::Value::String(s) => serde_json::from_str(&super::unquote(s)).unwrap_or_default(),
            other => other.clone(),
        })
        .and_then(|t| t.get("IsPastDue").and_then(|v| v.as_bool()))
        .unwrap_or(false);
    let (logs, value, all_ok) = run(&state, Trigger::Timer, past_due).await;
    if all_ok { Reply::ok(logs, value) } else { Reply::retry(logs, value) }
}

/// Plan and enqueue. Returns the log lines, a summary, and whether every server was planned.
pub async fn run(state: &AppState, trigger: Trigger, past_due: bool) -> (Vec<String>, serde_json::Value, bool) {
    let now = OffsetDateTime::now_utc();
    let mut logs = Vec::new();
    if past_due {
        logs.push("timer is past due; running now".to_string());
    }
    let plans = match crate::features::scheduler::plan(&state.ctx, None, &[], trigger, now).await {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "backup scheduler failed");
            return (vec![e.to_string()], json!({ "error": e.to_string() }), false);
        }
    };
    let mut enqueued = Vec::new();
    let mut failed = Vec::new();
    let mut silent = Vec::new();
    for plan in plans {
        let before = enqueued.len();
        let failed_before = failed.len();
        let silent_before = silent.len();
        // One job event per server: how many databases it has, how many were enqueued.
        let mut ev = JobEvent {
            job_id: event::run_id(now),
            kind: event::SCHEDULER_KIND.into(),
            server: Some(plan.server.clone()),
            trigger: Some(crate::features::report::trigger_name(trigger)),
            attempts: 1,
            ..Default::default()
        };
        for m in &plan.missing {
            let line = format!("server {:?}: included database {m:?} does not exist", plan.server);
            tracing::warn!(server = %plan.server, database = %m, "included database does not exist");
            logs.push(line);
        }
        let jobs = match plan.jobs {
            Ok(jobs) => jobs,
            Err(e) => {
                tracing::error!(server = %plan.server, error = %e, "cannot plan backups for server");
                logs.push(format!("server {:?}: {e}", plan.server));
                failed.push(json!({ "server": plan.server, "error": e.to_string() }));
                silent.push((plan.server.clone(), format!("its databases could not be listed: {e}")));
                ev.failure_code = Some(event::failure_code(&e));
                ev.reason = Some(format!("its databases could not be listed: {e}"));
                ev.enqueued = Some(0);
                finish_event(ev, now);
                continue;
            }
        };
        for job in jobs {
            match state.queue.send(BACKUP_JOBS_QUEUE, &job.to_json(), false).await {
                Ok(()) => {
                    tracing::info!(job = %job.job_id, what = %job.describe(), "backup job enqueued");
                    enqueued.push(json!({ "job_id": job.job_id, "server": job.server, "database": job.database, "kind": job.kind }));
                }
                Err(e) => {
                    tracing::error!(job = %job.job_id, error = %e, "cannot enqueue backup job");
                    logs.push(format!("enqueue {}: {e}", job.describe()));
                    failed.push(json!({ "server": job.server, "database": job.database, "error": e.to_string() }));
                }
            }
        }
        // The databases that hold data: all but the maintenance database (a server with nothing
        // else is empty, not missed).
        let maintenance = state.ctx.settings.server(&plan.server).map(|s| s.maintenance_db.clone()).unwrap_or_default();
        let holding: Vec<&str> = plan.listed.iter().map(String::as_str).filter(|d| *d != maintenance).collect();
        let databases = enqueued[before..].iter().filter(|j| j["kind"] == "database").count();
        if databases == 0 && !holding.is_empty() {
            silent.push((
                plan.server.clone(),
                format!(
                    "it has {} databases ({}), and the inventory's include/exclude or failed sends left none",
                    holding.len(),
                    holding.join(", ")
                ),
            ));
        }
        ev.databases = Some(holding.len() as u64);
        ev.enqueued = Some(databases as u64);
        if silent.len() > silent_before {
            ev.failure_code = Some(event::code::NOTHING_ENQUEUED);
            ev.reason = silent.last().map(|(_, why)| why.clone());
        } else if failed.len() > failed_before {
            ev.failure_code = Some(event::code::ENQUEUE_FAILED);
            ev.reason = Some(format!("{} jobs could not be enqueued", failed.len() - failed_before));
        }
        finish_event(ev, now);
    }
    // A run that backs up no database of a server that has some would otherwise pass in
    // silence (the timer is not retried, and a 200 looks fine): alert, once per server.
    for (server, why) in &silent {
        let alert = crate::seams::alerts::Alert {
            kind: crate::seams::alerts::AlertKind::MissedSchedule,
            subject: server.clone(),
            summary: format!("backup scheduler enqueued no database backup for server {server:?}: {why}"),
            job_id: None,
        };
        logs.push(alert.summary.clone());
        state.ctx.alerter.raise(&alert).await;
    }
    logs.push(format!("enqueued {} backup jobs, {} failures", enqueued.len(), failed.len()));
    let ok = failed.is_empty();
    (logs, json!({ "enqueued": enqueued, "failed": failed }), ok)
}

/// Emit a server's scheduler event: failed when it carries a failure code.
fn finish_event(mut ev: JobEvent, started: OffsetDateTime) {
    ev.status = if ev.failure_code.is_some() { "failed" } else { "succeeded" }.into();
    ev.duration_seconds = Some(((OffsetDateTime::now_utc() - started).as_seconds_f64() * 1000.0).round() / 1000.0);
    ev.emit();
}
