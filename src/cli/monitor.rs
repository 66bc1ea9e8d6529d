//! The CLI side of retention, holds, drills, doctor and the jobs summary: printing only; the work
//! is in [`crate::features::retention`], [`crate::features::holds`], [`crate::features::drill`],
//! [`crate::features::doctor`] and [`crate::features::report`].

use crate::config::context::Ctx;
use crate::domain::error::Result;
use crate::domain::policy::Decision;
use crate::features::report::{self as monitor, DbSummary, Filter};
use crate::features::retention;
use crate::monitor::records::{JobKind, Status};
use std::process::ExitCode;
use time::OffsetDateTime;

pub async fn retention(ctx: &Ctx, dry_run: bool, server: Option<&str>) -> Result<ExitCode> {
    let run = retention::run(ctx, dry_run, server, "cli").await?;
    let nothing = retention::Executed::default();
    let executed = run.executed.as_ref().unwrap_or(&nothing);
    // `refused` and `tier_skipped` are (id, reason) pairs.
    let why_of = |pairs: &[(String, String)], id: &str| pairs.iter().find(|p| p.0 == id).map(|p| p.1.clone());
    for tp in &run.plans {
        let db = tp.database.as_deref().unwrap_or("@globals");
        outln!("{}/{}: {}", tp.server, db, tp.skipped.as_deref().unwrap_or(""));
        for b in &tp.backups {
            let id = b.id.as_str();
            let (planned, mut why) = match &b.decision {
                Decision::Keep { reasons } => ("keep", reasons.join("; ")),
                Decision::Remove { reason } => ("remove", reason.clone()),
            };
            let action = if dry_run {
                planned
            } else if b.decision.is_keep() {
                "kept"
            } else if executed.removed.iter().any(|r| r == id) {
                "removed"
            } else if executed.held_meanwhile.iter().any(|h| h == id) {
                why = format!("{why}; kept: a hold was set while retention ran");
                "held"
            } else if let Some(refusal) = why_of(&executed.refused, id) {
                why = format!("{why}; kept: the immutability policy refused the delete ({refusal})");
                "refused"
            } else {
                "gone"
            };
            outln!("  {action:<7} {id}  {why}");
        }
        for t in &tp.tiering {
            let (id, reason) = (t.id.as_str(), t.reason.as_str());
            match (dry_run, why_of(&executed.tier_skipped, id)) {
                (true, _) => outln!("  {:<7} {id}  {reason}", "tier"),
                (false, Some(skip)) => outln!("  {:<7} {id}  {reason}; not moved: {skip}", "untiered"),
                (false, None) if executed.tiered.contains(&t.data_blob) => {
                    outln!("  {:<7} {id}  {reason}", "tiered")
                }
                (false, None) => outln!("  {:<7} {id}  {reason}; not moved", "untiered"),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn keep(ctx: &Ctx, id: &str, off: bool) -> Result<ExitCode> {
    if off {
        crate::features::holds::release(ctx.store.as_ref(), id).await?;
        outln!("hold released: {id}");
    } else {
        crate::features::holds::set(ctx.store.as_ref(), id, "cli", OffsetDateTime::now_utc()).await?;
        outln!("held (retention never removes it): {id}");
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn drill(ctx: &Ctx, server: Option<&str>) -> Result<ExitCode> {
    let drills = crate::features::drill::run(ctx, server, "cli").await?;
    let records = drills.records;
    for s in &drills.skipped {
        outln!("passed over {} ({}): {}", s.backup, s.target, s.reason);
    }
    let mut failed = 0;
    for r in &records {
        match r.status {
            Status::Succeeded => {
                let d = r.detail.drill();
                outln!(
                    "ok {} ({}): restored in {:.1} s",
                    d.and_then(|d| d.backup.as_deref()).unwrap_or(""),
                    r.target.as_deref().unwrap_or(""),
                    d.and_then(|d| d.restore_seconds).unwrap_or_default()
                )
            }
            _ => {
                failed += 1;
                outln!("FAILED drill {}: {}", r.id, r.reason.as_deref().unwrap_or(""));
            }
        }
    }
    outln!("{} drills, {failed} failed", records.len());
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// `pgvault doctor`: every finding (worst first) as `SEVERITY: <object>: <problem>` with its
/// `HINT:` line, then a summary; or the report as JSON. Exit 1 with error findings.
pub async fn doctor(ctx: &Ctx, opts: &crate::features::doctor::Options, json: bool) -> Result<ExitCode> {
    let report = crate::features::doctor::run(ctx, opts).await?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&report).expect("serializes"));
    } else {
        for f in &report.findings {
            outln!("{}: {f}", f.severity.as_str().to_uppercase());
        }
        outln!(
            "doctor: {}; checked {}",
            crate::domain::doctor::summary_counts(&report.findings),
            report.checked.join(", ")
        );
    }
    Ok(if report.has_errors() { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

pub fn print_summary(rows: &[DbSummary], filter: &Filter) {
    let t = |t: Option<OffsetDateTime>| t.map(monitor::rfc).unwrap_or_else(|| "-".into());
    let drills = filter.kind == Some(JobKind::Drill);
    if drills {
        outln!("{:<30} {:<70} {:>8} last drill failure", "database", "last proven-restorable backup", "RTO s");
    } else {
        outln!(
            "{:<30} {:<21} {:<21} {:<21} last failure reason",
            "database",
            "last success",
            "last failure",
            "next run"
        );
    }
    for r in rows.iter().filter(|r| filter.server.as_deref().is_none_or(|s| s == r.server)) {
        let name = format!("{}/{}", r.server, r.database);
        if drills {
            outln!(
                "{:<30} {:<70} {:>8} {}",
                name,
                r.proven_backup.as_deref().unwrap_or("-"),
                r.proven_rto_seconds.map(|s| format!("{s:.1}")).unwrap_or_else(|| "-".into()),
                t(r.last_drill_failure)
            );
        } else {
            outln!(
                "{:<30} {:<21} {:<21} {:<21} {}",
                name,
                t(r.last_success),
                t(r.last_failure),
                t(r.next_run),
                r.last_failure_reason.as_deref().unwrap_or("")
            );
        }
    }
}
