//! Restore drills: proof that backups restore, with the measured restore time (RTO evidence).
//!
//! Per server of the inventory and per database with backups, the newest backup and one random
//! older one are restored into the scratch server (`PGVAULT_DRILL_SERVER`) under a unique name
//! `pgvault_drill_<8 hex>`, through the restore pipeline itself: every block checked against the
//! manifest's SHA-256 before pg_restore sees it, pg_restore with `--exit-on-error`, and the row
//! counts of the manifest compared in the restored database. The database is then dropped. Each
//! drill is a job record of kind `drill` (target `server/database`, detail: backup, restore
//! seconds, report); a failed drill is a failed record with the reason and an alert.
//!
//! Drills never rehydrate. A backup whose data is in the archive tier is offline; rehydrating
//! it for a drill would cost hours and money on every run. The random older pick is made among
//! the online backups (older ones are tried in a random order, archived ones passed over), and
//! an archived newest backup is not drilled. Each backup passed over is listed in
//! [`Drills::skipped`] with the reason, and logged. An older encrypted backup whose key version
//! cannot unwrap (disabled or deleted: crypto-shredding) is passed over the same way.

use crate::config::context::Ctx;
use crate::domain::error::{Error, Result};
use crate::domain::layout::BackupKind;
use crate::domain::manifest::Manifest;
use crate::features::restore::{self, Mode, Options, RestoreTask, Target};
use crate::monitor::records::{DrillDetail, JobKind, JobRecord};
use crate::monitor::tracked::{Alerting, Monitor, Run, track};
use crate::seams::alerts::AlertKind;
use std::collections::BTreeMap;

/// For one database's backups (oldest first): the newest, and the older ones in a random order
/// (shuffled with `seed`), the order in which they are tried for the random pick. Pure.
pub fn candidates(backups: &[Manifest], seed: u64) -> Option<(&Manifest, Vec<&Manifest>)> {
    let (newest, older) = backups.split_last()?;
    let mut order: Vec<&Manifest> = older.iter().collect();
    // Fisher-Yates with xorshift64*: uniform enough for picking backups, and reproducible.
    let mut x = seed | 1;
    for i in (1..order.len()).rev() {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        let r = x.wrapping_mul(0x2545_F491_4F6C_DD1D);
        order.swap(i, (r % (i as u64 + 1)) as usize);
    }
    Some((newest, order))
}

/// A backup a drill passed over, and why.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Skipped {
    pub target: String,
    pub backup: String,
    pub reason: String,
}

/// What a run of drills did.
#[derive(Debug, Default)]
pub struct Drills {
    pub records: Vec<JobRecord>,
    pub skipped: Vec<Skipped>,
}

/// How many older backups a drill looks at (one Get Blob Properties each) to find an online one.
const MAX_OLDER_LOOKS: usize = 16;

/// Why a backup cannot be drilled now (its data is archived), if so. A store without tiers, or
/// one that cannot say, is treated as online: the drill itself then reports any real problem.
async fn offline(ctx: &Ctx, m: &Manifest) -> Option<String> {
    // A backup in parts is offline when any of its parts is.
    for blob in m.data_blobs() {
        if let Ok(p) = ctx.store.properties(blob).await
            && p.tier == Some(crate::seams::store::Tier::Archive)
        {
            return Some(format!(
                "data {blob:?} is in the archive tier (offline); drills do not rehydrate{}",
                p.archive_status.map(|s| format!(" (archive status: {s})")).unwrap_or_default()
            ));
        }
    }
    None
}

/// Run the drills (of one server, or all). Errors only when the drills cannot start at all (no
/// scratch server, unreadable catalog); each failed drill is a record.
pub async fn run(ctx: &Ctx, only_server: Option<&str>, trigger: &str) -> Result<Drills> {
    let scratch = ctx.settings.drill_server.clone().ok_or_else(|| {
        Error::permanent("restore drills need a scratch server")
            .with_hint("set PGVAULT_DRILL_SERVER to an inventory server that drills may restore into")
    })?;
    let mut out = Drills::default();
    for server in ctx.settings.inventory.iter().filter(|s| only_server.is_none_or(|o| o == s.name)) {
        let mut by_db: BTreeMap<String, Vec<Manifest>> = BTreeMap::new();
        for m in crate::features::catalog::list(ctx.store.as_ref(), Some(&server.name), None).await? {
            if m.kind == BackupKind::Database {
                by_db.entry(m.database.clone()).or_default().push(m);
            }
        }
        for (database, backups) in by_db {
            let target = format!("{}/{database}", server.name);
            let seed = uuid::Uuid::new_v4().as_u128() as u64;
            let Some((newest, older)) = candidates(&backups, seed) else { continue };
            let mut chosen = Vec::new();
            let mut passed_over = Vec::new();
            for m in older.into_iter().take(MAX_OLDER_LOOKS) {
                // An older backup whose key version was disabled on purpose (crypto-shredding)
                // is passed over like an archived one; a newest one that cannot be read is
                // drilled, and fails loudly.
                let unreadable = crate::features::catalog::key_problems(ctx, std::slice::from_ref(m)).await.remove(0);
                match unreadable.or(offline(ctx, m).await) {
                    None => {
                        chosen.push(m);
                        break;
                    }
                    Some(reason) => passed_over.push(Skipped { target: target.clone(), backup: m.id.clone(), reason }),
                }
            }
            out.skipped.append(&mut passed_over);
            match offline(ctx, newest).await {
                None => chosen.push(newest),
                Some(reason) => out.skipped.push(Skipped { target: target.clone(), backup: newest.id.clone(), reason }),
            }
            for m in chosen {
                out.records.push(drill_one(ctx, &scratch, &server.name, &database, m, trigger).await);
            }
        }
    }
    for s in &out.skipped {
        tracing::info!(target = %s.target, backup = %s.backup, reason = %s.reason, "restore drill passed over a backup");
    }
    Ok(out)
}

async fn drill_one(ctx: &Ctx, scratch: &str, server: &str, database: &str, m: &Manifest, trigger: &str) -> JobRecord {
    let mut rec = crate::features::report::start_record(
        JobKind::Drill,
        &format!("{server}/{database}"),
        &format!("restore drill of {} into server {scratch:?}", m.id),
        trigger,
    );
    rec.server = Some(server.to_string());
    rec.database = Some(database.to_string());
    let temp = format!("pgvault_drill_{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let task = RestoreTask {
        version: restore::MESSAGE_VERSION,
        task_id: rec.id.clone(),
        request_id: rec.id.clone(),
        requested_by: Some("restore-drill".into()),
        backup: m.id.clone(),
        globals: None,
        target: Target {
            mode: Mode::Create,
            server: Some(scratch.to_string()),
            database: Some(temp.clone()),
            container: None,
            prefix: None,
            expires_in_seconds: None,
        },
        options: Options { no_owner: true, no_privileges: true, ..Default::default() },
        reason: "restore drill".into(),
    };
    tracing::info!(backup = %m.id, scratch, database = %temp, "restore drill started");
    let (_, rec) = track(Monitor::of(ctx), rec, Alerting::once(AlertKind::DrillFailed), async {
        let started = std::time::Instant::now();
        let result = restore::run_task(ctx, &task).await;
        // A drill is never redelivered: its swap note has no use.
        let _ = ctx.store.delete(&restore::swap_marker(&task.task_id)).await;
        let seconds = started.elapsed().as_secs_f64();
        let dropped = drop_database(ctx, scratch, &temp).await;
        let detail = DrillDetail {
            backup: Some(m.id.clone()),
            restore_seconds: Some(seconds),
            scratch_server: Some(scratch.to_string()),
            ..Default::default()
        };
        match (result, dropped) {
            (Ok(mut report), Ok(())) => {
                tracing::info!(backup = %m.id, seconds, "restore drill succeeded");
                // The report's time is the restore's own (the drill measured it).
                report.seconds = seconds;
                let detail = DrillDetail { report: Some(report), ..detail };
                Run::ok((), detail).with_bytes(Some(m.stored_bytes))
            }
            (Ok(_), Err(e)) => {
                Run::failed(e.context(format!("backup {:?} restored, but dropping {temp:?} failed", m.id)), detail)
            }
            (Err(e), _) => {
                tracing::info!(backup = %m.id, error = %e, "restore drill failed");
                Run::failed(e.context(format!("backup {:?} did not restore", m.id)), detail)
            }
        }
    })
    .await;
    rec
}

async fn drop_database(ctx: &Ctx, server: &str, name: &str) -> Result<()> {
    let sv = ctx.settings.server(server).ok_or_else(|| crate::config::context::unknown_server(server))?;
    let admin = crate::seams::pg::connect(&ctx.conn_spec(server, &sv.maintenance_db).await?).await?;
    let quoted = format!("\"{}\"", name.replace('"', "\"\""));
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {quoted} WITH (FORCE)"))
        .await
        .map_err(|e| crate::seams::pg::query_error(&format!("drop drill database {name:?}"), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(id: &str) -> Manifest {
        let mut v: serde_json::Value = serde_json::json!({
            "format": "pgvault-backup-manifest", "format_version": 1, "pgvault_version": "0",
            "id": id, "kind": "database", "job_id": "j", "server": "s", "database": "d",
            "server_version": "15", "server_version_num": 150000,
            "tool": {"name": "pg_dump", "version": "15", "major": 15, "args": []},
            "archive_format": "custom", "compression": {"algorithm": "none"},
            "data_blob": "x", "raw_bytes": 0, "stored_bytes": 0, "sha256": "", "blocks": [],
            "requested_at": "2026-01-01T00:00:00Z", "started_at": "2026-01-01T00:00:00Z",
            "finished_at": "2026-01-01T00:00:00Z", "row_counts": null, "restore_hint": ""
        });
        v["id"] = id.into();
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn newest_and_every_older_one_in_a_random_order() {
        let list: Vec<Manifest> = (0..10).map(|i| m(&format!("b{i}"))).collect();
        let (newest, older) = candidates(&list, 7).unwrap();
        assert_eq!(newest.id, "b9");
        let mut ids: Vec<String> = older.iter().map(|m| m.id.clone()).collect();
        assert_eq!(candidates(&list, 7).unwrap().1.len(), 9);
        ids.sort();
        assert_eq!(ids, (0..9).map(|i| format!("b{i}")).collect::<Vec<_>>(), "each older one once");
        // The first pick is spread over all the older ones, not only the next in age order.
        let firsts: std::collections::BTreeSet<String> =
            (0..200u64).map(|seed| candidates(&list, seed * 0x9E37_79B9).unwrap().1[0].id.clone()).collect();
        assert_eq!(firsts.len(), 9, "{firsts:?}");
        let (newest, older) = candidates(&list[..1], 5).unwrap();
        assert_eq!((newest.id.as_str(), older.len()), ("b0", 0));
        assert!(candidates(&[], 1).is_none());
    }
}
