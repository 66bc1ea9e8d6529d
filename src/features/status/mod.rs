//! The status view (`status` function, `pgvault status`): gathered from the store (manifests,
//! job records, holds and the retention plan, access tiers) and the settings (inventory,
//! schedules, pgBackRest targets) into [`crate::domain::status::StatusView`], then rendered as
//! HTML ([`html`]) or terminal text ([`text`]).
//!
//! Only reads. Every free text that reaches the view (a job's reason) passes through
//! [`crate::domain::status::scrub`] first (redacted, and every URL's query withheld).

pub mod html;
pub mod text;

use crate::config::context::Ctx;
use crate::config::settings::{Settings, StorageSettings};
use crate::domain::error::Result;
use crate::domain::inventory::schedule_for;
use crate::domain::layout::BackupKind;
use crate::domain::manifest::Manifest;
use crate::domain::policy::{Decision, TargetPlan};
use crate::domain::records::{JobKind, JobRecord, Status};
use crate::domain::schedule::next_after;
use crate::domain::status::*;
use futures::StreamExt;
use std::collections::{BTreeMap, BTreeSet};
use time::{Duration, OffsetDateTime};

/// `@globals`: how the view names a server's globals.
pub const GLOBALS: &str = "@globals";

/// Gather the whole view at `now`. The manifests must be readable (without them there is nothing
/// to show); anything else that cannot be read is a gap the page names.
pub async fn gather(ctx: &Ctx, now: OffsetDateTime) -> Result<StatusView> {
    let store = ctx.store.as_ref();
    let settings = ctx.settings.as_ref();
    let manifests = crate::features::catalog::list(store, None, None).await?;
    let mut gaps = Vec::new();
    let records = match crate::monitor::records::list(store, None).await {
        Ok(r) => r,
        Err(e) => {
            gaps.push(scrub(&format!("job records could not be read: {e}")));
            Vec::new()
        }
    };
    let plans = match crate::features::retention::plan_store(settings, store, None, now).await {
        Ok(p) => p,
        Err(e) => {
            gaps.push(scrub(&format!("the retention plan could not be made: {e}")));
            Vec::new()
        }
    };
    let tiers = access_tiers(ctx, &manifests).await;
    let findings = doctor_findings(&records);
    Ok(build(settings, &manifests, &records, &plans, &tiers, findings, gaps, now))
}

/// The findings of the newest finished `doctor` run (none before the first), worst first, each
/// scrubbed for the page.
fn doctor_findings(records: &[JobRecord]) -> Vec<Finding> {
    let newest = records
        .iter()
        .filter(|r| r.kind == JobKind::Doctor && r.status.is_finished())
        .max_by_key(|r| r.finished_at.unwrap_or(r.updated_at));
    let Some(detail) = newest.and_then(|r| r.detail.doctor()) else { return Vec::new() };
    let mut found: Vec<&crate::domain::doctor::Finding> = detail.findings.iter().collect();
    found.sort_by_key(|f| std::cmp::Reverse(f.severity));
    found
        .into_iter()
        .map(|f| Finding {
            object: scrub(&f.object),
            severity: f.severity.as_str().to_string(),
            problem: scrub(&f.problem),
            hint: f.hint.as_deref().map(scrub),
        })
        .collect()
}

/// Each backup's access tier (by backup id): `Ok(tier)`, or why it is not known.
async fn access_tiers(ctx: &Ctx, manifests: &[Manifest]) -> BTreeMap<String, std::result::Result<String, String>> {
    let blobs: Vec<(String, String)> = manifests.iter().map(|m| (m.id.clone(), m.data_blob.clone())).collect();
    futures::stream::iter(blobs)
        .map(|(id, blob)| {
            let store = ctx.store.clone();
            async move {
                let tier = match store.properties(&blob).await {
                    Ok(p) => {
                        p.tier.map(|t| t.as_str().to_string()).ok_or_else(|| "the store reports no tier".to_string())
                    }
                    Err(e) if e.is_unsupported() => Err("the store has no access tiers".to_string()),
                    Err(e) => Err(scrub(&format!("properties unreadable: {e}"))),
                };
                (id, tier)
            }
        })
        .buffer_unordered(8)
        .collect()
        .await
}

/// The view from what was read, pure.
#[allow(clippy::too_many_arguments)]
pub fn build(
    settings: &Settings,
    manifests: &[Manifest],
    records: &[JobRecord],
    plans: &[TargetPlan],
    tiers: &BTreeMap<String, std::result::Result<String, String>>,
    findings: Vec<Finding>,
    gaps: Vec<String>,
    now: OffsetDateTime,
) -> StatusView {
    let store_posture = store_posture(settings);
    let since = now - Duration::days(TROUBLE_DAYS);
    let target_of = |m: &Manifest| {
        let db = if m.kind == BackupKind::Database { m.database.clone() } else { GLOBALS.to_string() };
        (m.server.clone(), db)
    };
    // Every database with a backup, or a backup or drill record.
    let mut keys: BTreeSet<(String, String)> = manifests.iter().map(target_of).collect();
    for r in records.iter().filter(|r| matches!(r.kind, JobKind::Backup | JobKind::Drill)) {
        if let Some((s, d)) = r.target.as_deref().and_then(|t| t.split_once('/')) {
            keys.insert((s.to_string(), d.to_string()));
        }
    }
    let newest_globals = crate::features::report::Newest::from_manifests(manifests).globals;
    let mut databases = Vec::new();
    // The records shown under a database, by (kind, id): the rest are other trouble.
    let mut claimed: BTreeSet<(&str, &str)> = BTreeSet::new();
    for (server, database) in keys {
        let target = format!("{server}/{database}");
        let mine: Vec<&Manifest> =
            manifests.iter().filter(|m| target_of(m) == (server.clone(), database.clone())).collect();
        let about: Vec<&JobRecord> = records.iter().filter(|r| r.target.as_deref() == Some(target.as_str())).collect();
        claimed.extend(about.iter().map(|r| (r.kind.as_str(), r.id.as_str())));
        let plan = plans.iter().find(|p| p.server == server && p.database.as_deref().unwrap_or(GLOBALS) == database);
        databases.push(DbStatus {
            protection: protection(
                settings,
                &server,
                &database,
                mine.last().copied(),
                newest_globals.get(&server),
                now,
            ),
            trend: mine
                .iter()
                .rev()
                .take(TREND_LEN)
                .rev()
                .map(|m| TrendPoint {
                    at: m.requested_at,
                    stored_bytes: m.stored_bytes,
                    duration_seconds: (m.finished_at - m.started_at).as_seconds_f64().max(0.0),
                })
                .collect(),
            proof: proof(&about),
            trouble: trouble(about.iter().copied(), since),
            retention: retention(settings, &server, &mine, plan, tiers),
            posture: rate(&encryption(mine.last().copied()), &store_posture),
            server,
            database,
        });
    }
    let other_trouble = trouble(records.iter().filter(|r| !claimed.contains(&(r.kind.as_str(), r.id.as_str()))), since);
    StatusView {
        generated_at: now,
        store: scrub(&match &settings.storage {
            StorageSettings::Local { dir } => format!("local:{}", dir.display()),
            StorageSettings::Azure { blob_endpoint, container } => {
                format!("azure:{}/{container}", blob_endpoint.split('?').next().unwrap_or_default())
            }
        }),
        rpo_margin_minutes: settings.rpo_margin.whole_minutes(),
        databases,
        other_trouble,
        store_posture,
        pgbackrest: pgbackrest(settings, records, now),
        findings,
        gaps,
    }
}

/// `globals`: the server's newest globals backup and the databases it lists.
fn protection(
    settings: &Settings,
    server: &str,
    database: &str,
    newest: Option<&Manifest>,
    globals: Option<&(OffsetDateTime, Option<Vec<String>>)>,
    now: OffsetDateTime,
) -> Protection {
    let sv = settings.server(server);
    let db = (database != GLOBALS).then_some(database);
    let schedule = sv.and_then(|sv| schedule_for(sv, db, settings.backup_schedule.as_deref())).map(str::to_string);
    let last = newest.map(|m| m.requested_at);
    let (mut state, mut why, due) = classify_rpo(last, schedule.as_deref(), settings.rpo_margin, now);
    let left_out = match sv {
        None => Some(format!("server {server:?} is not in the inventory any more")),
        Some(sv) => db.and_then(|d| sv.leaves_out(d)).or_else(|| {
            let dropped = last.is_some_and(|t| !crate::features::report::still_expected(sv, database, t, globals));
            dropped.then(|| "the server's newest globals backup does not list it (dropped)".to_string())
        }),
    };
    if let Some(reason) = left_out {
        // Not expected any more: the RPO does not apply (the missed-schedule check skips it too).
        state = RpoState::Unknown;
        why = format!("not scheduled: {reason}");
    }
    Protection {
        state,
        why,
        newest: newest.map(|m| BackupRef { id: m.id.clone(), at: m.requested_at, stored_bytes: m.stored_bytes }),
        age_seconds: last.map(|t| (now - t).whole_seconds()),
        next_run: schedule.as_deref().and_then(|s| next_after(s, now)),
        schedule,
        due,
    }
}

fn proof(about: &[&JobRecord]) -> Option<Proof> {
    // Records are oldest first: the last finished drill is the newest.
    let r = about.iter().rev().find(|r| r.kind == JobKind::Drill && r.status.is_finished())?;
    let d = r.detail.drill();
    Some(Proof {
        at: r.finished_at.unwrap_or(r.updated_at),
        ok: r.status == Status::Succeeded,
        backup: d.and_then(|d| d.backup.clone()),
        rto_seconds: d.and_then(|d| d.restore_seconds),
        reason: r.reason.as_deref().map(scrub),
    })
}

/// Failed jobs since `since`, newest first.
fn trouble<'a>(records: impl Iterator<Item = &'a JobRecord>, since: OffsetDateTime) -> Vec<Trouble> {
    let mut out: Vec<Trouble> = records
        .filter(|r| r.status == Status::Failed)
        .map(|r| (r, r.finished_at.unwrap_or(r.updated_at)))
        .filter(|(_, at)| *at >= since)
        .map(|(r, at)| Trouble {
            at,
            kind: r.kind.as_str().to_string(),
            job_id: r.id.clone(),
            target: r.target.clone(),
            reason: scrub(r.reason.as_deref().unwrap_or("no reason recorded")),
        })
        .collect();
    out.sort_by_key(|t| std::cmp::Reverse(t.at));
    out
}

fn retention(
    settings: &Settings,
    server: &str,
    mine: &[&Manifest],
    plan: Option<&TargetPlan>,
    tiers: &BTreeMap<String, std::result::Result<String, String>>,
) -> RetentionView {
    let mut gfs = BTreeMap::new();
    let policy = match plan {
        Some(TargetPlan { skipped: Some(why), .. }) => why.clone(),
        Some(TargetPlan { policy: Some(p), .. }) => format!(
            "daily {}, weekly {}, monthly {}, yearly {}, newest {}",
            p.daily, p.weekly, p.monthly, p.yearly, p.min_keep
        ),
        _ if settings.server(server).is_none() => "server not in the inventory: retention leaves its backups".into(),
        _ => "no plan (no backup yet)".into(),
    };
    for p in plan.map(|p| p.backups.as_slice()).unwrap_or_default() {
        match &p.decision {
            Decision::Keep { .. } if plan.is_some_and(|p| p.skipped.is_some()) => {
                *gfs.entry("kept (no policy)".to_string()).or_insert(0) += 1;
            }
            Decision::Keep { reasons } => {
                for t in gfs_tiers(reasons) {
                    *gfs.entry(t.to_string()).or_insert(0) += 1;
                }
            }
            Decision::Remove { .. } => *gfs.entry("to remove".to_string()).or_insert(0) += 1,
        }
    }
    let mut access = BTreeMap::new();
    let mut notes = BTreeSet::new();
    for m in mine {
        let tier = match tiers.get(&m.id) {
            Some(Ok(t)) => t.clone(),
            Some(Err(why)) => {
                notes.insert(why.clone());
                "unknown".to_string()
            }
            None => {
                notes.insert("not read".to_string());
                "unknown".to_string()
            }
        };
        *access.entry(tier).or_insert(0) += 1;
    }
    RetentionView {
        backups: mine.len(),
        policy,
        gfs,
        access,
        access_note: (!notes.is_empty()).then(|| notes.into_iter().collect::<Vec<_>>().join("; ")),
    }
}

/// The newest backup's encryption: its key (with version), or none.
fn encryption(newest: Option<&Manifest>) -> Fact {
    match newest {
        None => Fact::unknown("no backup yet"),
        Some(m) => match &m.encryption {
            Some(e) => Fact::known(format!("{} with key {}", e.algorithm, e.key_id)),
            None => Fact::known("none (the newest backup is not encrypted)"),
        },
    }
}

/// What pgvault can say about the store's protection from where it runs.
pub fn store_posture(settings: &Settings) -> StorePosture {
    match &settings.storage {
        StorageSettings::Local { dir } => StorePosture {
            immutability: Fact::known("none (a local directory)"),
            soft_delete: Fact::known("none (a local directory)"),
            who_may_delete: Fact::known(format!("anyone who may write {}", dir.display())),
        },
        StorageSettings::Azure { .. } => StorePosture {
            immutability: Fact::unknown(
                "pgvault's data-plane roles cannot read the container's immutability settings; the deployment's \
                 immutableDumps parameter sets version-level WORM (infra/modules/backup-storage.bicep)",
            ),
            soft_delete: Fact::unknown(
                "pgvault's data-plane roles cannot read the account's delete retention; the deployment's \
                 softDeleteDays parameter sets it",
            ),
            who_may_delete: Fact::unknown(
                "role assignments are not readable with pgvault's roles; pgvault's own identity may delete \
                 (retention runs with Storage Blob Data Contributor), and anyone with that role or Owner",
            ),
        },
    }
}

fn pgbackrest(settings: &Settings, records: &[JobRecord], now: OffsetDateTime) -> Vec<TargetStatus> {
    settings
        .pgbackrest_targets
        .iter()
        .map(|t| {
            let rotation = records.iter().rev().find_map(|r| r.detail.rotation().filter(|d| d.target == t.name));
            let fresh = records.iter().rev().find_map(|r| r.detail.freshness().filter(|d| d.target == t.name));
            let delivery = t.delivery.as_str().to_string();
            let sas_expiry = match rotation {
                _ if delivery == "auto" => Fact::known("none (delivery auto: pgBackRest uses the VM's identity)"),
                None => Fact::unknown("no rotation recorded yet"),
                Some(d) => match d.new_expiry.or(d.old_expiry) {
                    Some(at) if at <= now => Fact::known(format!("expired {}", rfc(at))),
                    Some(at) => Fact::known(format!("{} (in {})", rfc(at), age((at - now).whole_seconds()))),
                    None => Fact::unknown("the newest rotation recorded no expiry"),
                },
            };
            let sas_problem = rotation.and_then(|d| d.alarm.clone().or_else(|| d.error.clone())).map(|s| scrub(&s));
            let (stanzas, stanzas_note) = match fresh {
                None => (Vec::new(), Some("no freshness check recorded yet".to_string())),
                Some(f) => (
                    f.stanzas
                        .iter()
                        .map(|s| StanzaStatus {
                            stanza: s.stanza.clone(),
                            newest: s.newest_time,
                            fresh: s.fresh,
                            problem: s.error.as_deref().map(scrub),
                        })
                        .collect(),
                    f.error.as_deref().map(scrub),
                ),
            };
            TargetStatus { name: t.name.clone(), delivery, sas_expiry, sas_problem, stanzas, stanzas_note }
        })
        .collect()
}

#[cfg(test)]
mod tests;
