//! Retention, executed: plan every backup in the store with [`crate::domain::policy`], then
//! remove manifest first, data second, and move old data to a colder tier.

use crate::config::context::Ctx;
use crate::domain::error::{Error, Result};
use crate::domain::inventory::policy_for;
use crate::domain::layout::BackupKind;
use crate::domain::policy::*;
use crate::domain::records::RetentionDetail;
use crate::monitor::tracked::{Alerting, Monitor, Run, track};
use crate::seams::alerts::AlertKind;
use crate::seams::store::BlobStore;
use serde::Serialize;
use std::collections::BTreeMap;
use time::OffsetDateTime;

/// Plan retention for every backup in the store of the inventory's servers (or one). Backups of
/// servers that left the inventory are not touched.
pub async fn plan_store(
    settings: &crate::config::settings::Settings,
    store: &dyn BlobStore,
    only_server: Option<&str>,
    now: OffsetDateTime,
) -> Result<Vec<TargetPlan>> {
    let held = crate::features::holds::list(store).await?;
    let mut out = Vec::new();
    for server in settings.inventory.iter().filter(|s| only_server.is_none_or(|o| o == s.name)) {
        let manifests = crate::features::catalog::list(store, Some(&server.name), None).await?;
        let mut groups: BTreeMap<Option<String>, Vec<Item>> = BTreeMap::new();
        for m in &manifests {
            let key = (m.kind == BackupKind::Database).then(|| m.database.clone());
            groups.entry(key).or_default().push(Item {
                id: m.id.clone(),
                time: m.requested_at,
                held: held.contains(&m.id),
            });
        }
        for (database, items) in groups {
            let policy = policy_for(server, database.as_deref());
            let (skipped, backups) = match &policy {
                Some(p) => (None, plan(&items, p, now)),
                None => (
                    Some("no retention policy in the inventory: everything is kept".to_string()),
                    plan(&items, &Policy { daily: 0, weekly: 0, monthly: 0, yearly: 0, min_keep: u32::MAX }, now),
                ),
            };
            let tiering = match settings.tier_after_days {
                Some(days) => {
                    let data: BTreeMap<&str, &str> =
                        // A backup in parts is not moved (yet): its data is several blobs.
                        manifests.iter().filter(|m| !m.is_parts()).map(|m| (m.id.as_str(), m.data_blob.as_str())).collect();
                    let kept: Vec<(&Planned, &str)> =
                        backups.iter().filter_map(|p| Some((p, *data.get(p.id.as_str())?))).collect();
                    plan_tiering(&kept, days, settings.tier, now)
                }
                None => Vec::new(),
            };
            out.push(TargetPlan { server: server.name.clone(), database, policy, skipped, backups, tiering });
        }
    }
    Ok(out)
}

/// What [`execute`] did (the retention record's detail holds it).
pub use crate::domain::records::Executed;

/// What [`run`] did: the plans, and unless a dry run, what was executed and the run's record.
#[derive(Debug, Clone, Serialize)]
pub struct RetentionRun {
    pub dry_run: bool,
    pub plans: Vec<TargetPlan>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub executed: Option<Executed>,
    /// The id of the run's job record.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
}

/// Whether a store error is a delete refused by an immutability policy or legal hold: the
/// marker the Azure adapter sets from the service's error code (never the message text).
pub fn is_immutability_refusal(e: &Error) -> bool {
    e.is_immutable()
}

/// Remove what the plans say: for each backup, **the manifest first, then its data** (ordering
/// invariant 5). A run stopped between the two leaves only data without a manifest, an orphan
/// that `pgvault verify --all --clean-orphans` removes; never a manifest naming missing data. A
/// delete refused by an immutability policy is skipped with a logged reason. Holds are read
/// again just before each removal: a backup held since the plan was made is kept.
pub async fn execute(store: &dyn BlobStore, plans: &[TargetPlan]) -> Result<Executed> {
    let mut done = Executed::default();
    execute_into(store, plans, &mut done).await?;
    Ok(done)
}

/// [`execute`], keeping in `done` what was done before a failure stopped it: the run's record
/// lists those removals too.
pub async fn execute_into(store: &dyn BlobStore, plans: &[TargetPlan], done: &mut Executed) -> Result<()> {
    for tp in plans {
        for p in &tp.backups {
            if p.decision.is_keep() {
                done.kept += 1;
                continue;
            }
            let m = match crate::features::catalog::manifest(store, &p.id).await {
                Ok(m) => m,
                Err(e) if e.is_permanent() => continue, // removed meanwhile
                Err(e) => return Err(e),
            };
            // The plan read the holds once; a hold set since (`pgvault keep` during this run)
            // still wins. Checked last, right before the first delete.
            if crate::features::holds::is_held(store, &p.id).await? {
                tracing::warn!(backup = %p.id, "retention: a hold was set after the plan was made; kept");
                done.held_meanwhile.push(p.id.clone());
                continue;
            }
            let manifest = crate::domain::layout::manifest_for_id(&p.id);
            match store.delete(&manifest).await {
                Ok(()) => {}
                Err(e) if is_immutability_refusal(&e) => {
                    tracing::warn!(backup = %p.id, reason = %e, "retention: removal refused by the container's immutability policy; kept");
                    done.refused.push((p.id.clone(), e.to_string()));
                    continue;
                }
                Err(e) => return Err(e.context(format!("retention: remove manifest of {:?}", p.id))),
            }
            if let Decision::Remove { reason } = &p.decision {
                tracing::info!(backup = %p.id, reason = %reason, "retention: removed backup");
            }
            done.removed.push(p.id.clone());
            crate::seams::failpoint::hit("retention.between-deletes");
            // One blob, or each part of a backup in parts.
            for blob in m.data_blobs() {
                match store.delete(blob).await {
                    Ok(()) => {}
                    Err(e) if is_immutability_refusal(&e) => {
                        tracing::warn!(blob = %blob, reason = %e, "retention: data blob kept by the immutability policy (an orphan now)");
                    }
                    Err(e) => {
                        return Err(e.context(format!(
                            "retention: remove data {blob:?} (its manifest is gone: an orphan for verify --clean-orphans)"
                        )));
                    }
                }
            }
        }
    }
    for tp in plans {
        if !tier_moves(store, &tp.tiering, done).await {
            break;
        }
    }
    Ok(())
}

/// Make the planned tier moves. Never fails the run: a move that cannot be made is logged and
/// listed in `tier_skipped` (the next run tries again). Returns false when the store has no
/// tiers at all, so the caller stops asking.
async fn tier_moves(store: &dyn BlobStore, moves: &[TierMove], done: &mut Executed) -> bool {
    for mv in moves {
        let skip = |done: &mut Executed, why: String| {
            tracing::info!(backup = %mv.id, blob = %mv.data_blob, reason = %why, "retention: tier move skipped");
            done.tier_skipped.push((mv.id.clone(), why));
        };
        let props = match store.properties(&mv.data_blob).await {
            Ok(p) => p,
            Err(e) if e.is_unsupported() => {
                tracing::warn!(store = %store.describe(), reason = %e, "retention: tiering is configured but the store has no access tiers; skipped");
                done.tier_skipped.push((mv.id.clone(), e.to_string()));
                return false;
            }
            Err(e) => {
                skip(done, e.to_string());
                continue;
            }
        };
        // Never "warm up" a blob: a move to a warmer tier would rehydrate an archived one.
        if props.tier.is_some_and(|t| t >= mv.tier) || props.archive_status.is_some() {
            let now = props.tier.map_or("unknown".into(), |t| t.to_string());
            skip(done, format!("already in the {now} tier"));
            continue;
        }
        // A blob a restore just rehydrated: not back to the archive under the restore's feet.
        if let Some(why) = recent_tier_change(props.tier_changed_at, mv.after_days, mv.planned_at) {
            skip(done, why);
            continue;
        }
        match store.set_tier(&mv.data_blob, mv.tier).await {
            Ok(()) => {
                tracing::info!(backup = %mv.id, blob = %mv.data_blob, tier = %mv.tier, reason = %mv.reason, "retention: data moved to a colder tier");
                done.tiered.push(mv.data_blob.clone());
            }
            Err(e) if e.is_unsupported() => {
                tracing::warn!(store = %store.describe(), reason = %e, "retention: tiering is configured but the store has no access tiers; skipped");
                done.tier_skipped.push((mv.id.clone(), e.to_string()));
                return false;
            }
            Err(e) => skip(done, e.to_string()),
        }
    }
    true
}

/// One run of retention (the `retention` timer does the same, then checks RPO): plan, print,
/// and unless `dry_run` execute, with a job record of kind `retention`.
pub async fn run(ctx: &Ctx, dry_run: bool, server: Option<&str>, trigger: &str) -> Result<RetentionRun> {
    let now = OffsetDateTime::now_utc();
    let plans = plan_store(&ctx.settings, ctx.store.as_ref(), server, now).await?;
    if dry_run {
        return Ok(RetentionRun { dry_run: true, plans, executed: None, job: None });
    }
    let mut rec = crate::features::report::start_record(
        crate::monitor::records::JobKind::Retention,
        server.unwrap_or("*"),
        "retention",
        trigger,
    );
    rec.server = server.map(str::to_string);
    let alerting = Alerting::once(AlertKind::JobFailed);
    let (result, rec) = track(Monitor::of(ctx), rec, alerting, async {
        let mut done = Executed::default();
        let executed = execute_into(ctx.store.as_ref(), &plans, &mut done).await;
        let pruned =
            crate::features::report::prune_records(ctx.store.as_ref(), ctx.settings.job_record_days, now).await;
        // Also on a failure: what was removed before it stays in the record.
        let detail = RetentionDetail {
            executed: done.clone(),
            job_records_pruned: pruned.as_ref().ok().copied(),
            ..Default::default()
        };
        match (executed, pruned) {
            (Ok(()), Ok(_)) => Run::ok(done, detail),
            (Err(e), _) | (_, Err(e)) => Run::failed(e, detail),
        }
    })
    .await;
    let done = result?;
    Ok(RetentionRun { dry_run: false, plans, executed: Some(done), job: Some(rec.id) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seams::store::Tier as AccessTier;
    use crate::seams::store::local::LocalStore;
    use crate::seams::store::{BlobInfo, ByteStream, CreateOutcome, Tags};
    use async_trait::async_trait;
    use bytes::Bytes;
    use std::sync::atomic::{AtomicBool, Ordering};
    use time::macros::datetime;

    /// The local store, with Azure-like tiers (every blob hot, with a configurable last
    /// tier change; set_tier records the move) and, when armed, a failing first delete of a
    /// data blob: a run "killed" between manifest and data.
    struct TestStore {
        inner: LocalStore,
        fail_data_delete: AtomicBool,
        changed: std::collections::HashMap<String, OffsetDateTime>,
        moved: std::sync::Mutex<Vec<(String, AccessTier)>>,
    }

    impl TestStore {
        fn new(dir: &std::path::Path) -> TestStore {
            TestStore {
                inner: LocalStore::new(dir),
                fail_data_delete: AtomicBool::new(false),
                changed: Default::default(),
                moved: Default::default(),
            }
        }
    }

    #[async_trait]
    impl BlobStore for TestStore {
        fn describe(&self) -> String {
            self.inner.describe()
        }
        async fn stage_block(&self, n: &str, id: &str, d: Bytes) -> Result<()> {
            self.inner.stage_block(n, id, d).await
        }
        async fn commit_blocks(&self, n: &str, ids: &[String], t: &Tags) -> Result<()> {
            self.inner.commit_blocks(n, ids, t).await
        }
        async fn put(&self, n: &str, d: Bytes, t: &Tags) -> Result<()> {
            self.inner.put(n, d, t).await
        }
        async fn create(&self, n: &str, d: Bytes, t: &Tags) -> Result<CreateOutcome> {
            self.inner.create(n, d, t).await
        }
        async fn get(&self, n: &str) -> Result<Bytes> {
            self.inner.get(n).await
        }
        async fn read(&self, n: &str) -> Result<ByteStream> {
            self.inner.read(n).await
        }
        async fn tags(&self, n: &str) -> Result<Tags> {
            self.inner.tags(n).await
        }
        async fn list(&self, p: &str) -> Result<Vec<BlobInfo>> {
            self.inner.list(p).await
        }
        async fn exists(&self, n: &str) -> Result<bool> {
            self.inner.exists(n).await
        }
        async fn delete(&self, n: &str) -> Result<()> {
            if !n.ends_with(crate::domain::layout::MANIFEST_SUFFIX)
                && self.fail_data_delete.swap(false, Ordering::SeqCst)
            {
                return Err(Error::transient("injected: killed between manifest and data"));
            }
            self.inner.delete(n).await
        }
        async fn set_tier(&self, n: &str, tier: AccessTier) -> Result<()> {
            self.moved.lock().unwrap().push((n.to_string(), tier));
            Ok(())
        }
        async fn properties(&self, n: &str) -> Result<crate::seams::store::BlobProps> {
            Ok(crate::seams::store::BlobProps {
                size: 1,
                tier: Some(AccessTier::Hot),
                archive_status: None,
                tier_changed_at: self.changed.get(n).copied(),
            })
        }
    }

    async fn put_backup(store: &dyn BlobStore, server: &str, db: &str, t: OffsetDateTime, n: usize) -> String {
        let p = crate::domain::layout::backup_paths(BackupKind::Database, server, db, t, &format!("job{n}"));
        let data = crate::domain::layout::data_blob(&p.id, "0000abcd", "dump.zst");
        let block = crate::seams::store::block_id(0);
        store.stage_block(&data, &block, Bytes::from_static(b"x")).await.unwrap();
        store.commit_blocks(&data, &[block], &Tags::new()).await.unwrap();
        let m = serde_json::json!({
            "format": "pgvault-backup-manifest", "format_version": 1, "pgvault_version": "0",
            "id": p.id, "kind": "database", "job_id": format!("job{n}"), "server": server, "database": db,
            "server_version": "15", "server_version_num": 150000,
            "tool": {"name": "pg_dump", "version": "15", "major": 15, "args": []},
            "archive_format": "custom", "compression": {"algorithm": "none"},
            "data_blob": data, "raw_bytes": 1, "stored_bytes": 1, "sha256": "",
            "blocks": [{"size": 1, "sha256": ""}],
            "requested_at": t.format(&time::format_description::well_known::Rfc3339).unwrap(),
            "started_at": t.format(&time::format_description::well_known::Rfc3339).unwrap(),
            "finished_at": t.format(&time::format_description::well_known::Rfc3339).unwrap(),
            "row_counts": null, "restore_hint": ""
        });
        store.create(&p.manifest, Bytes::from(m.to_string()), &Tags::new()).await.unwrap();
        p.id
    }

    fn settings(dir: &std::path::Path) -> crate::config::settings::Settings {
        let inv = r#"[{"name":"prod","host":"h","user":"u","retention":{"daily":3,"min_keep":1},
            "databases":{"keepall":{"retention":{"daily":30}}}}]"#;
        crate::config::settings::Settings::from_map(std::collections::HashMap::from([
            ("PGVAULT_INVENTORY".to_string(), inv.to_string()),
            ("PGVAULT_LOCAL_DIR".to_string(), dir.display().to_string()),
        ]))
        .unwrap()
    }

    #[tokio::test]
    async fn interrupted_execution_leaves_only_orphan_data_and_holds_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = TestStore { fail_data_delete: AtomicBool::new(true), ..TestStore::new(dir.path()) };
        let settings = settings(dir.path());
        let now = datetime!(2026-11-21 12:00 UTC);
        let mut ids = Vec::new();
        for d in 0..8 {
            ids.push(put_backup(&store, "prod", "app", now - time::Duration::days(d), d as usize).await);
        }
        for d in 0..5 {
            put_backup(&store, "prod", "keepall", now - time::Duration::days(d), 100 + d as usize).await;
        }
        // A hold on the oldest: kept whatever the policy says.
        crate::features::holds::set(&store, &ids[7], "test", now).await.unwrap();

        let plans = plan_store(&settings, &store, None, now).await.unwrap();
        let app = plans.iter().find(|p| p.database.as_deref() == Some("app")).unwrap();
        let removing: Vec<&str> = app.backups.iter().filter(|p| !p.decision.is_keep()).map(|p| p.id.as_str()).collect();
        assert_eq!(removing, [&ids[3], &ids[4], &ids[5], &ids[6]].map(String::as_str));
        assert!(
            plans
                .iter()
                .find(|p| p.database.as_deref() == Some("keepall"))
                .unwrap()
                .backups
                .iter()
                .all(|p| p.decision.is_keep())
        );

        // First run dies between the first manifest delete and its data delete.
        let err = execute(&store, &plans).await.unwrap_err();
        assert!(err.to_string().contains("orphan"), "{err}");
        // No manifest names missing data.
        for m in crate::features::catalog::list(&store, None, None).await.unwrap() {
            assert!(store.exists(&m.data_blob).await.unwrap(), "manifest {} points at missing data", m.id);
        }
        let orphans = crate::features::catalog::orphans(&store, None).await.unwrap();
        assert_eq!(orphans.len(), 1, "{orphans:?}");
        assert!(orphans[0].starts_with(&ids[3]), "{orphans:?}");

        // A second run finishes the job; the orphan is verify's to clean.
        let plans = plan_store(&settings, &store, None, now).await.unwrap();
        let done = execute(&store, &plans).await.unwrap();
        assert_eq!(done.removed.len(), 3);
        let left: Vec<String> = crate::features::catalog::list(&store, Some("prod"), Some("app"))
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.id)
            .collect();
        assert_eq!(left, [&ids[7], &ids[2], &ids[1], &ids[0]].map(String::clone));
        // Idempotent: nothing more to remove.
        let again = plan_store(&settings, &store, None, now).await.unwrap();
        assert!(again.iter().all(|tp| tp.backups.iter().all(|p| p.decision.is_keep())));
        // The hold marker is not an orphan.
        assert_eq!(crate::features::catalog::orphans(&store, None).await.unwrap().len(), 1);
        crate::features::holds::release(&store, &ids[7]).await.unwrap();
        let plans = plan_store(&settings, &store, None, now).await.unwrap();
        assert_eq!(execute(&store, &plans).await.unwrap().removed, [ids[7].clone()]);
    }

    #[tokio::test]
    async fn a_failed_run_records_what_it_removed_before_the_failure() {
        let dir = tempfile::tempdir().unwrap();
        let settings = std::sync::Arc::new(settings(dir.path()));
        let ctx = Ctx {
            secrets: std::sync::Arc::new(crate::config::secrets::SettingsSecrets::new(settings.clone())),
            store: std::sync::Arc::new(LocalStore::new(dir.path())),
            settings,
            progress: crate::seams::progress::Mode::Off,
            cancel: Default::default(),
            alerter: std::sync::Arc::new(crate::seams::alerts::Alerter::new(None)),
            keys: None,
            queue: None,
        };
        let store = ctx.store.as_ref();
        let now = OffsetDateTime::now_utc();
        let mut ids = Vec::new();
        for d in 0..7 {
            ids.push(put_backup(store, "prod", "app", now - time::Duration::days(d), d as usize).await);
        }
        // The third removal (in the plan's order) finds a directory in place of its data, which
        // the store cannot delete: the run fails after two whole removals.
        let plans = plan_store(&ctx.settings, store, None, now).await.unwrap();
        let removing: Vec<String> =
            plans[0].backups.iter().filter(|p| !p.decision.is_keep()).map(|p| p.id.clone()).collect();
        assert_eq!(removing.len(), 4, "{removing:?}");
        let stuck = crate::features::catalog::manifest(store, &removing[2]).await.unwrap().data_blob;
        let path = dir.path().join(&stuck);
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir_all(path.join("x")).unwrap();

        let err = run(&ctx, false, None, "timer").await.unwrap_err();
        assert!(err.to_string().contains(&stuck), "{err}");
        let records =
            crate::monitor::records::list(store, Some(crate::monitor::records::JobKind::Retention)).await.unwrap();
        assert_eq!(records.len(), 1, "{records:?}");
        let rec = &records[0];
        assert_eq!(rec.status, crate::monitor::records::Status::Failed);
        assert!(rec.reason.as_deref().is_some_and(|r| r.contains(&stuck)), "{rec:?}");
        let detail = rec.detail.retention().expect("a typed retention detail");
        // Two whole removals, and the third whose manifest went before its data could not.
        assert_eq!(detail.executed.removed, removing[..3], "{detail:?}");
        assert_eq!(detail.executed.kept, 3);
        assert_eq!(detail.will_retry, Some(false));
        // As stored (and printed by `pgvault jobs --json`).
        let stored: serde_json::Value =
            serde_json::from_slice(&store.get(&crate::monitor::records::name(rec.kind, &rec.id)).await.unwrap())
                .unwrap();
        assert_eq!(stored["detail"]["executed"]["removed"], serde_json::json!(removing[..3]));
    }

    #[tokio::test]
    async fn tiering_is_planned_with_reasons_and_skipped_with_a_reason_by_the_local_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path());
        let mut map = std::collections::HashMap::from([
            (
                "PGVAULT_INVENTORY".to_string(),
                r#"[{"name":"prod","host":"h","user":"u","retention":{"daily":30}}]"#.to_string(),
            ),
            ("PGVAULT_LOCAL_DIR".to_string(), dir.path().display().to_string()),
            ("PGVAULT_TIER_AFTER_DAYS".to_string(), "3".to_string()),
        ]);
        map.insert("PGVAULT_TIER".to_string(), "archive".to_string());
        let settings = crate::config::settings::Settings::from_map(map).unwrap();
        let now = datetime!(2026-11-21 12:00 UTC);
        let mut ids = Vec::new();
        for d in 0..6 {
            ids.push(put_backup(&store, "prod", "app", now - time::Duration::days(d), d as usize).await);
        }
        let plans = plan_store(&settings, &store, None, now).await.unwrap();
        let moves = &plans[0].tiering;
        let moved: Vec<&str> = moves.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(moved, [&ids[4], &ids[5]].map(String::as_str));
        assert!(
            moves.iter().all(
                |m| m.tier == AccessTier::Archive && !m.data_blob.ends_with(crate::domain::layout::MANIFEST_SUFFIX)
            )
        );
        assert_eq!(moves[0].reason, "older than 3 days (4 days): data to archive");
        // The dry-run JSON shows the moves.
        let json = serde_json::to_value(&plans).unwrap();
        assert_eq!(json[0]["tiering"][1]["tier"], "archive", "{json}");

        // Execution: the local store has no tiers: a logged skip, not a failure.
        let done = execute(&store, &plans).await.unwrap();
        assert!(done.tiered.is_empty());
        assert_eq!(done.tier_skipped.len(), 1, "{:?}", done.tier_skipped);
        assert!(done.tier_skipped[0].1.contains("not supported by the local store"), "{:?}", done.tier_skipped);
        assert_eq!(crate::features::catalog::list(&store, None, None).await.unwrap().len(), 6);
    }

    #[test]
    fn tiering_is_off_without_the_setting_and_never_moves_removed_backups() {
        let now = datetime!(2026-11-21 12:00 UTC);
        let keep = Planned {
            id: "old".into(),
            time: now - time::Duration::days(40),
            decision: Decision::Keep { reasons: vec![] },
        };
        let gone = Planned {
            id: "gone".into(),
            time: now - time::Duration::days(50),
            decision: Decision::Remove { reason: "x".into() },
        };
        let young = Planned {
            id: "young".into(),
            time: now - time::Duration::days(10),
            decision: Decision::Keep { reasons: vec![] },
        };
        let moves = plan_tiering(&[(&keep, "d1"), (&gone, "d2"), (&young, "d3")], 30, AccessTier::Cool, now);
        assert_eq!(moves.len(), 1);
        assert_eq!((moves[0].id.as_str(), moves[0].data_blob.as_str()), ("old", "d1"));
        let dir = tempfile::tempdir().unwrap();
        let plans_settings = settings(dir.path());
        assert_eq!(plans_settings.tier_after_days, None);
        assert_eq!(plans_settings.tier, AccessTier::Cool);
    }

    #[test]
    fn a_recent_tier_change_holds_off_a_move() {
        let now = datetime!(2026-11-21 12:00 UTC);
        // Rehydrated an hour ago: left alone, with the reason.
        let why = recent_tier_change(Some(now - time::Duration::hours(1)), 30, now).unwrap();
        assert_eq!(why, "its tier changed 0 days ago (a rehydration?): left alone until 30 days after that");
        let why = recent_tier_change(Some(now - time::Duration::days(12)), 30, now).unwrap();
        assert!(why.starts_with("its tier changed 12 days ago"), "{why}");
        // Long ago (or exactly after_days ago): moved.
        assert_eq!(recent_tier_change(Some(now - time::Duration::days(31)), 30, now), None);
        assert_eq!(recent_tier_change(Some(now - time::Duration::days(30)), 30, now), None);
        // Unknown: moved, as before the change time was read.
        assert_eq!(recent_tier_change(None, 30, now), None);
        // A clock ahead of ours: still recent.
        assert!(recent_tier_change(Some(now + time::Duration::minutes(5)), 30, now).is_some());
        // after_days 0: never held off.
        assert_eq!(recent_tier_change(Some(now), 0, now), None);
    }

    #[tokio::test]
    async fn a_backup_rehydrated_by_a_restore_is_not_archived_again_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = TestStore::new(dir.path());
        let map = std::collections::HashMap::from([
            (
                "PGVAULT_INVENTORY".to_string(),
                r#"[{"name":"prod","host":"h","user":"u","retention":{"daily":30}}]"#.to_string(),
            ),
            ("PGVAULT_LOCAL_DIR".to_string(), dir.path().display().to_string()),
            ("PGVAULT_TIER_AFTER_DAYS".to_string(), "3".to_string()),
            ("PGVAULT_TIER".to_string(), "archive".to_string()),
        ]);
        let settings = crate::config::settings::Settings::from_map(map).unwrap();
        let now = datetime!(2026-11-21 12:00 UTC);
        let mut ids = Vec::new();
        for d in [10, 11, 12] {
            ids.push(put_backup(&store, "prod", "app", now - time::Duration::days(d), d as usize).await);
        }
        let data = |id: &str| crate::domain::layout::data_blob(id, "0000abcd", "dump.zst");
        // ids[0]: rehydrated by a restore two hours ago. ids[1]: its tier changed long ago
        // (and it is hot again). ids[2]: never changed (unknown): moved as always.
        store.changed.insert(data(&ids[0]), now - time::Duration::hours(2));
        store.changed.insert(data(&ids[1]), now - time::Duration::days(9));

        let plans = plan_store(&settings, &store, None, now).await.unwrap();
        assert_eq!(plans[0].tiering.len(), 3, "all three are older than 3 days: {:?}", plans[0].tiering);
        let done = execute(&store, &plans).await.unwrap();
        assert_eq!(done.tier_skipped.len(), 1, "{:?}", done.tier_skipped);
        assert_eq!(done.tier_skipped[0].0, ids[0]);
        assert_eq!(
            done.tier_skipped[0].1,
            "its tier changed 0 days ago (a rehydration?): left alone until 3 days after that"
        );
        let mut moved = store.moved.lock().unwrap().clone();
        moved.sort();
        let mut want = vec![(data(&ids[1]), AccessTier::Archive), (data(&ids[2]), AccessTier::Archive)];
        want.sort();
        assert_eq!(moved, want);
        assert_eq!(done.tiered.len(), 2);
    }

    #[tokio::test]
    async fn a_hold_set_while_retention_runs_keeps_the_backup() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path());
        let settings = settings(dir.path());
        let now = datetime!(2026-11-21 12:00 UTC);
        let mut ids = Vec::new();
        for d in 0..6 {
            ids.push(put_backup(&store, "prod", "app", now - time::Duration::days(d), d as usize).await);
        }
        let plans = plan_store(&settings, &store, None, now).await.unwrap();
        let removing: Vec<&str> =
            plans[0].backups.iter().filter(|p| !p.decision.is_keep()).map(|p| p.id.as_str()).collect();
        assert_eq!(removing, [&ids[3], &ids[4], &ids[5]].map(String::as_str));

        // `pgvault keep` on one of them after the plan was made, before execution.
        crate::features::holds::set(&store, &ids[4], "test", now).await.unwrap();
        let done = execute(&store, &plans).await.unwrap();
        assert_eq!(done.held_meanwhile, [ids[4].clone()]);
        let mut removed = done.removed.clone();
        removed.sort();
        let mut want = vec![ids[3].clone(), ids[5].clone()];
        want.sort();
        assert_eq!(removed, want);
        assert_eq!(done.kept, 3, "the plan's keeps; the held one is listed apart");
        // The held backup is whole: manifest and data.
        let m = crate::features::catalog::manifest(&store, &ids[4]).await.unwrap();
        assert!(store.exists(&m.data_blob).await.unwrap());
        let json = serde_json::to_value(&done).unwrap();
        assert_eq!(json["held_meanwhile"][0], ids[4].as_str(), "{json}");
        // The next plan sees the hold.
        let again = plan_store(&settings, &store, None, now).await.unwrap();
        let p = again[0].backups.iter().find(|p| p.id == ids[4]).unwrap();
        assert_eq!(p.decision, Decision::Keep { reasons: vec!["held".into()] });
    }

    #[test]
    fn immutability_refusals_are_recognised() {
        assert!(is_immutability_refusal(&Error::immutable("delete x: http 409 BlobImmutableDueToPolicy")));
        // Text alone is not enough: only the adapter's marker counts.
        assert!(!is_immutability_refusal(&Error::permanent(
            "delete x: 409 BlobImmutableDueToPolicy: immutability policy"
        )));
        assert!(!is_immutability_refusal(&Error::permanent("delete x: 404 not found")));
    }
}
