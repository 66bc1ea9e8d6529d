//! `pgvault doctor` and the `doctor` timer: hear what would fail before the schedule fires.
//!
//! One module per family of checks, each returning [`Finding`]s and never an error (a check
//! that cannot run is itself a finding):
//! - [`server`]: for each server, its login (a Key Vault secret is read), the connection, TLS
//!   (`verify-full`, with the certificate's expiry) and a pg_dump of the right major;
//! - [`privileges`]: the backup role can read every table and sequence, row-level security
//!   will not fail the dump, large objects are readable (also run by `grant-sql --apply`);
//! - [`target`]: for each restore target, CREATEDB, the roles, encoding and locale and
//!   extensions the newest backups need, Azure-owned objects, free space;
//! - [`vault`]: each encryption key wraps and unwraps;
//! - [`storage`]: the container takes a write, a tag read and a delete.
//!
//! Doctor only reads, except for its probe blob (`@doctor/probe-<uuid>`, deleted at once) and
//! one wrap and unwrap of a throwaway key per encryption key.

pub mod privileges;
pub mod server;
pub mod storage;
pub mod target;
pub mod vault;

use crate::config::context::Ctx;
use crate::domain::doctor::{self, Finding, Severity};
use crate::domain::error::{Error, Result};
use crate::monitor::records::{DoctorDetail, JobKind, JobRecord};
use crate::monitor::tracked::{Alerting, Monitor, Run, track};
use crate::seams::alerts::AlertKind;

/// What to look at.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Only this server (and, for restore targets, only its backups).
    pub server: Option<String>,
    /// Restore targets to check besides the drill server (inventory server names).
    pub restore_targets: Vec<String>,
}

/// What a run found.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Report {
    /// Worst first, then in the order the checks ran.
    pub findings: Vec<Finding>,
    /// What was looked at: `server "prod"`, `restore target "scratch"`, `container ...`.
    pub checked: Vec<String>,
}

impl Report {
    pub fn has_errors(&self) -> bool {
        doctor::worst(&self.findings) == Some(Severity::Error)
    }
}

/// A finding made of an error: its message is the problem, its hint the hint.
pub fn from_error(check: &str, severity: Severity, object: impl Into<String>, e: &Error) -> Finding {
    let f = Finding::new(check, severity, object, e.message().to_string());
    match e.hint() {
        Some(h) => f.hint(h),
        None => f,
    }
}

/// `server "prod"`, as findings name a server.
pub fn server_object(name: &str) -> String {
    format!("server {name:?}")
}

/// Run every check. Errors only on a name that is not in the inventory.
pub async fn run(ctx: &Ctx, opts: &Options) -> Result<Report> {
    if let Some(s) = &opts.server {
        ctx.settings.server(s).ok_or_else(|| crate::config::context::unknown_server(s))?;
    }
    for t in &opts.restore_targets {
        ctx.settings.server(t).ok_or_else(|| crate::config::context::unknown_server(t))?;
    }
    let mut report = Report::default();
    for s in ctx.settings.inventory.iter().filter(|s| opts.server.as_deref().is_none_or(|o| o == s.name)) {
        report.checked.push(server_object(&s.name));
        let (findings, login) = server::check(ctx, s).await;
        report.findings.extend(findings);
        if let Some(login) = login {
            report.findings.extend(privileges::check_server(s, &login).await);
        }
    }
    let mut targets = opts.restore_targets.clone();
    if let Some(d) = &ctx.settings.drill_server
        && !targets.contains(d)
    {
        targets.push(d.clone());
    }
    for t in &targets {
        report.checked.push(format!("restore target {t:?}"));
        let drill_only = ctx.settings.drill_server.as_deref() == Some(t.as_str()) && !opts.restore_targets.contains(t);
        report.findings.extend(target::check(ctx, t, opts.server.as_deref(), drill_only).await);
    }
    let (checked, findings) = vault::check(ctx, opts.server.as_deref()).await;
    report.checked.extend(checked);
    report.findings.extend(findings);
    report.checked.push(ctx.store.describe());
    report.findings.extend(storage::check(ctx).await);
    // Stable: worst first, the checks' own order within a severity.
    report.findings.sort_by_key(|f| std::cmp::Reverse(f.severity));
    Ok(report)
}

/// Run the checks as a job: a `doctor` record with the findings, failed when there are error
/// findings, which raises one `doctor` alert through the alert path every job uses.
pub async fn run_recorded(ctx: &Ctx, opts: &Options, trigger: &str) -> (Result<Report>, JobRecord) {
    let scope = opts.server.as_deref().map(server_object).unwrap_or_else(|| "every server".into());
    let target = opts.server.as_deref().unwrap_or("every server");
    let rec = crate::features::report::start_record(JobKind::Doctor, target, &format!("doctor: {scope}"), trigger);
    let mut kept = None;
    let (result, rec) = track(Monitor::of(ctx), rec, Alerting::once(AlertKind::Doctor), async {
        match run(ctx, opts).await {
            Err(e) => Run::failed(e, DoctorDetail::default()),
            Ok(report) => {
                let detail = DoctorDetail {
                    findings: report.findings.clone(),
                    checked: report.checked.clone(),
                    ..Default::default()
                };
                let outcome = if report.has_errors() {
                    Err(Error::permanent(format!("doctor found {}", doctor::summary(&report.findings))))
                } else {
                    Ok(())
                };
                kept = Some(report);
                Run { result: outcome, detail: detail.into(), bytes: None }
            }
        }
    })
    .await;
    match (kept, result) {
        (Some(report), _) => (Ok(report), rec),
        (None, Err(e)) => (Err(e), rec),
        (None, Ok(())) => unreachable!("a run without a report failed"),
    }
}
