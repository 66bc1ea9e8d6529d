//! The CLI side of retention, holds, drills and the jobs summary: printing only; the work is in
//! [`crate::features::retention`], [`crate::features::holds`], [`crate::features::drill`] and [`crate::features::report`].

use crate::config::context::Ctx;
use crate::domain::error::Result;
use crate::features::report::{self as monitor, DbSummary, Filter};
use crate::features::retention;
use crate::monitor::records::{JobKind, Status};
use std::process::ExitCode;
use time::OffsetDateTime;

pub async fn retention(ctx: &Ctx, dry_run: bool, server: Option<&str>) -> Result<ExitCode> {
    let v = retention::run(ctx, dry_run, server, "cli").await?;
    let plans: Vec<serde_json::Value> = serde_json::from_value(v["plans"].clone()).unwrap_or_default();
    let executed = &v["executed"];
    let listed = |key: &str| -> Vec<String> {
        executed[key].as_array().into_iter().flatten().filter_map(|x| x.as_str().map(str::to_string)).collect()
    };
    // `refused` and `tier_skipped` are (id, reason) pairs.
    let why_of = |key: &str, id: &str| -> Option<String> {
        executed[key].as_array().into_iter().flatten().find(|p| p[0] == id).map(|p| p[1].as_str().unwrap_or("").into())
    };
    let (removed, tiered, held_meanwhile) = (listed("removed"), listed("tiered"), listed("held_meanwhile"));
    for tp in &plans {
        let db = tp["database"].as_str().unwrap_or("@globals");
        println!("{}/{}: {}", tp["server"].as_str().unwrap_or(""), db, tp["skipped"].as_str().unwrap_or(""));
        for b in tp["backups"].as_array().into_iter().flatten() {
            let id = b["id"].as_str().unwrap_or("");
            let mut why = match b["action"].as_str() {
                Some("keep") => b["reasons"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|r| r.as_str())
                    .collect::<Vec<_>>()
                    .join("; "),
                _ => b["reason"].as_str().unwrap_or("").to_string(),
            };
            let action = if dry_run {
                b["action"].as_str().unwrap_or("")
            } else if b["action"] == "keep" {
                "kept"
            } else if removed.iter().any(|r| r == id) {
                "removed"
            } else if held_meanwhile.iter().any(|h| h == id) {
                why = format!("{why}; kept: a hold was set while retention ran");
                "held"
            } else if let Some(refusal) = why_of("refused", id) {
                why = format!("{why}; kept: the immutability policy refused the delete ({refusal})");
                "refused"
            } else {
                "gone"
            };
            println!("  {action:<7} {id}  {why}");
        }
        for t in tp["tiering"].as_array().into_iter().flatten() {
            let id = t["id"].as_str().unwrap_or("");
            let reason = t["reason"].as_str().unwrap_or("");
            match (dry_run, why_of("tier_skipped", id)) {
                (true, _) => println!("  {:<7} {id}  {reason}", "tier"),
                (false, Some(skip)) => println!("  {:<7} {id}  {reason}; not moved: {skip}", "untiered"),
                (false, None) if tiered.iter().any(|b| Some(b.as_str()) == t["data_blob"].as_str()) => {
                    println!("  {:<7} {id}  {reason}", "tiered")
                }
                (false, None) => println!("  {:<7} {id}  {reason}; not moved", "untiered"),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn keep(ctx: &Ctx, id: &str, off: bool) -> Result<ExitCode> {
    if off {
        crate::features::holds::release(ctx.store.as_ref(), id).await?;
        println!("hold released: {id}");
    } else {
        crate::features::holds::set(ctx.store.as_ref(), id, "cli", OffsetDateTime::now_utc()).await?;
        println!("held (retention never removes it): {id}");
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn drill(ctx: &Ctx, server: Option<&str>) -> Result<ExitCode> {
    let drills = crate::features::drill::run(ctx, server, "cli").await?;
    let records = drills.records;
    for s in &drills.skipped {
        println!("passed over {} ({}): {}", s.backup, s.target, s.reason);
    }
    let mut failed = 0;
    for r in &records {
        match r.status {
            Status::Succeeded => println!(
                "ok {} ({}): restored in {:.1} s",
                r.detail["backup"].as_str().unwrap_or(""),
                r.target.as_deref().unwrap_or(""),
                r.detail["restore_seconds"].as_f64().unwrap_or_default()
            ),
            _ => {
                failed += 1;
                println!("FAILED drill {}: {}", r.id, r.reason.as_deref().unwrap_or(""));
            }
        }
    }
    println!("{} drills, {failed} failed", records.len());
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

pub fn print_summary(rows: &[DbSummary], filter: &Filter) {
    let t = |t: Option<OffsetDateTime>| t.map(monitor::rfc).unwrap_or_else(|| "-".into());
    let drills = filter.kind == Some(JobKind::Drill);
    if drills {
        println!("{:<30} {:<70} {:>8} last drill failure", "database", "last proven-restorable backup", "RTO s");
    } else {
        println!(
            "{:<30} {:<21} {:<21} {:<21} last failure reason",
            "database", "last success", "last failure", "next run"
        );
    }
    for r in rows.iter().filter(|r| filter.server.as_deref().is_none_or(|s| s == r.server)) {
        let name = format!("{}/{}", r.server, r.database);
        if drills {
            println!(
                "{:<30} {:<70} {:>8} {}",
                name,
                r.proven_backup.as_deref().unwrap_or("-"),
                r.proven_rto_seconds.map(|s| format!("{s:.1}")).unwrap_or_else(|| "-".into()),
                t(r.last_drill_failure)
            );
        } else {
            println!(
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
