//! TEMPORARY: writes tests/fixtures/job-records/ from the code as it is (before typed details).
#![cfg(test)]

use crate::config::context::Ctx;
use crate::domain::error::{Error, Result};
use crate::domain::jobs::{BackupJob, Trigger};
use crate::domain::layout::BackupKind;
use crate::domain::sas::DelegationKey;
use crate::domain::secret::Secret;
use crate::features::pgbackrest::plan::TokenState;
use crate::features::pgbackrest::{DelegationKeys, NewToken, Rotator, StoredToken, TokenVault};
use crate::features::restore::{self, *};
use crate::monitor::records::{self as jr, JobKind, JobRecord, Status};
use crate::monitor::tracked::{Alerting, Monitor, Run, track};
use crate::seams::alerts::{AlertKind, Alerter};
use crate::seams::store::{BlobStore, Tags};
use async_trait::async_trait;
use bytes::Bytes;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use time::OffsetDateTime;

fn out_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/job-records")
}

fn save(name: &str, rec: &JobRecord) {
    std::fs::create_dir_all(out_dir()).unwrap();
    std::fs::write(out_dir().join(format!("{name}.json")), rec.to_json()).unwrap();
}

async fn put_backup(store: &dyn BlobStore, server: &str, db: &str, t: OffsetDateTime, n: usize) -> (String, String) {
    let p = crate::domain::layout::backup_paths(BackupKind::Database, server, db, t, &format!("job{n}"));
    let data = crate::domain::layout::data_blob(&p.id, "0000abcd", "dump.zst");
    store.put(&data, Bytes::from_static(b"x"), &Tags::new()).await.unwrap();
    let ts = t.format(&time::format_description::well_known::Rfc3339).unwrap();
    let m = json!({
        "format": "pgvault-backup-manifest", "format_version": 1, "pgvault_version": "0",
        "id": p.id, "kind": "database", "job_id": format!("job{n}"), "server": server, "database": db,
        "server_version": "15", "server_version_num": 150000,
        "tool": {"name": "pg_dump", "version": "15", "major": 15, "args": []},
        "archive_format": "custom", "compression": {"algorithm": "none"},
        "data_blob": data, "raw_bytes": 1, "stored_bytes": 1, "sha256": "",
        "blocks": [{"size": 1, "sha256": ""}],
        "requested_at": ts, "started_at": ts, "finished_at": ts,
        "row_counts": null, "restore_hint": ""
    });
    store.create(&p.manifest, Bytes::from(m.to_string()), &Tags::new()).await.unwrap();
    (p.id, data)
}

fn ctx(dir: &Path) -> Ctx {
    let inv = r#"[{"name":"prod","host":"h","user":"u","retention":{"daily":2,"min_keep":1}}]"#;
    let settings = Arc::new(
        crate::config::settings::Settings::from_map(HashMap::from([
            ("PGVAULT_INVENTORY".to_string(), inv.to_string()),
            ("PGVAULT_LOCAL_DIR".to_string(), dir.display().to_string()),
        ]))
        .unwrap(),
    );
    Ctx {
        secrets: Arc::new(crate::config::secrets::SettingsSecrets::new(settings.clone())),
        store: Arc::new(crate::seams::store::local::LocalStore::new(dir)),
        settings,
        progress: crate::seams::progress::Mode::Off,
        cancel: Default::default(),
        alerter: Arc::new(Alerter::new(None)),
    }
}

struct Keys;
#[async_trait]
impl DelegationKeys for Keys {
    async fn key(&self, _: &str, start: OffsetDateTime, expiry: OffsetDateTime) -> Result<(String, DelegationKey)> {
        Ok((
            "acct".into(),
            DelegationKey {
                oid: "oid".into(),
                tid: "tid".into(),
                start: crate::domain::sas::sas_time(start),
                expiry: crate::domain::sas::sas_time(expiry),
                service: "b".into(),
                version: "2026-04-06".into(),
                value: vec![1; 32],
            },
        ))
    }
}

struct Vault {
    current: Option<StoredToken>,
    fail: bool,
}
#[async_trait]
impl TokenVault for Vault {
    async fn current(&self, _: &str, _: &str) -> Result<Option<StoredToken>> {
        if self.fail {
            return Err(Error::transient("key vault: GET secret: 503 service unavailable"));
        }
        Ok(self.current.clone())
    }
    async fn store(&self, _: &str, _: &str, _: &NewToken) -> Result<String> {
        Ok("0123456789abcdef0123456789abcdef".into())
    }
}

fn pg_target(name: &str, dir: &Path) -> crate::features::pgbackrest::target::Target {
    let json = json!([{
        "name": name,
        "vm_resource_id": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm1",
        "blob_endpoint": "https://acct.blob.core.windows.net", "container": "pgbackrest",
        "vault": "https://kv.vault.azure.net", "stanzas": ["main", "other"],
        "include_file": dir.join("include.conf"), "max_backup_age": "2d"
    }]);
    crate::features::pgbackrest::target::parse_targets(&json.to_string()).unwrap().remove(0)
}

#[tokio::test]
async fn generate_job_record_fixtures() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = ctx(dir.path());
    let store = ctx.store.as_ref();
    let mon = Monitor::of(&ctx);
    let now = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();

    // ---- backup
    let job = BackupJob::new(BackupKind::Database, "prod", Some("app"), now, Trigger::Timer);
    let rec = crate::features::report::backup_record(&job, now);
    save("backup-queued", &rec);
    let mut running = rec.clone();
    running.start_attempt(now);
    save("backup-running", &running);
    let (_, done) = track(mon, rec.clone(), Alerting::delivery(AlertKind::JobFailed, false), async {
        let detail = json!({ "backup": "prod/app/20261121T020000Z-job1", "raw_bytes": 123456, "stored_bytes": 23456 });
        Run::ok((), detail).with_bytes(Some(23456))
    })
    .await;
    save("backup-succeeded", &done);
    let (_, done) = track(mon, rec.clone(), Alerting::delivery(AlertKind::JobFailed, false), async {
        let detail = json!({
            "backup": "prod/app/20261121T020000Z-job1", "raw_bytes": 123456, "stored_bytes": 23456, "already_done": true
        });
        Run::ok((), detail).with_bytes(Some(23456))
    })
    .await;
    save("backup-succeeded-already-done", &done);
    let (_, done) = track(mon, rec.clone(), Alerting::delivery(AlertKind::JobFailed, false), async {
        Run::<()>::failed(Error::transient("connect to server \"prod\": connection refused"), Value::Null)
    })
    .await;
    save("backup-failed-will-retry", &done);
    crate::features::report::record_rejected(&ctx, None, "msg-1", &Error::permanent("backup job is not JSON")).await;
    save("backup-failed-rejected", &jr::get(store, JobKind::Backup, "rejected-msg-1").await.unwrap().unwrap());

    // ---- restore request and tasks (submit is the real code)
    let t0 = now - time::Duration::days(1);
    let (bid, _) = put_backup(store, "prod", "app", t0, 1).await;
    let req = RestoreRequest::from_json(
        &json!({"version": 1, "request_id": "req-1", "requested_by": "ticket 42",
            "source": {"server": "prod", "database": "app"},
            "target": {"mode": "create", "server": "prod", "database": "app_copy"}})
        .to_string(),
    )
    .unwrap();
    restore::submit(&ctx, None, &req).await.unwrap();
    let reqrec = jr::get(store, JobKind::RestoreRequest, "req-1").await.unwrap().unwrap();
    save("restore-request-queued", &reqrec);
    let taskrec = jr::get(store, JobKind::RestoreTask, "req-1-1").await.unwrap().unwrap();
    save("restore-task-queued", &taskrec);
    let mut r = reqrec.clone();
    r.status = Status::Running;
    r.started_at = Some(now);
    r.bytes = Some(0);
    save("restore-request-running", &r);
    r.status = Status::Succeeded;
    r.finished_at = Some(now);
    r.bytes = Some(1);
    save("restore-request-succeeded", &r);
    let mut f = reqrec.clone();
    f.status = Status::Failed;
    f.finished_at = Some(now);
    f.reason = Some("task req-1-1: pg_restore failed".into());
    f.bytes = Some(0);
    save("restore-request-failed", &f);
    let bad = RestoreRequest::from_json(
        &json!({"version": 1, "request_id": "req-2",
            "source": {"server": "prod", "database": "nope"},
            "target": {"mode": "create", "server": "prod"}})
        .to_string(),
    )
    .unwrap();
    restore::submit(&ctx, None, &bad).await.unwrap_err();
    save("restore-request-failed-rejected", &jr::get(store, JobKind::RestoreRequest, "req-2").await.unwrap().unwrap());

    let task: RestoreTask = serde_json::from_value(taskrec.detail["task"].clone()).unwrap();
    let mut run = taskrec.clone();
    run.start_attempt(now);
    save("restore-task-running", &run);
    let report = TaskReport {
        task_id: task.task_id.clone(),
        backup: bid.clone(),
        mode: "create".into(),
        stored_bytes: 1,
        raw_bytes: 1,
        seconds: 0.75,
        database: Some(DatabaseReport {
            server: "prod".into(),
            database: "app_copy".into(),
            temp_database: "pgvault_restore_0badcafe".into(),
            method: "stream".into(),
            method_reason: "no --jobs asked".into(),
            pg_restore: "pg_restore (PostgreSQL) 15.10".into(),
            target_version: "15.10".into(),
            tables_checked: 3,
            previous_kept_as: None,
            properties: Some(crate::domain::dbprops::PropertiesReport {
                applied: vec!["ALTER DATABASE \"app_copy\" SET search_path = public".into()],
                ..Default::default()
            }),
            notes: vec!["a note".into()],
        }),
        globals: Some(GlobalsReport {
            backup: "prod/@globals/20261121T020000Z-job2".into(),
            created: vec!["app_owner".into()],
            skipped: vec!["postgres".into()],
            not_applied: vec!["CREATE TABLESPACE fast: tablespaces are not restored".into()],
        }),
        files: vec![],
    };
    let (_, done) = track(mon, taskrec.clone(), Alerting::delivery(AlertKind::JobFailed, false), async {
        let detail = json!({ "task": task, "report": report });
        Run::ok((), detail).with_bytes(Some(1))
    })
    .await;
    save("restore-task-succeeded", &done);
    let (_, done) = track(mon, taskrec.clone(), Alerting::delivery(AlertKind::JobFailed, false), async {
        Run::<()>::failed(Error::transient("connect to server \"prod\": connection refused"), json!({ "task": task }))
    })
    .await;
    save("restore-task-failed", &done);
    // as files (the URL is a secret)
    let mut files_task = task.clone();
    files_task.task_id = "req-3-1".into();
    files_task.request_id = "req-3".into();
    files_task.target = Target {
        mode: Mode::AsFiles,
        server: None,
        database: None,
        container: Some("exports".into()),
        prefix: Some("incident-42/".into()),
        expires_in_seconds: Some(3600),
    };
    files_task.globals = None;
    files_task.options = Options::default();
    let mut frec = JobRecord::new(JobKind::RestoreTask, "req-3-1", files_task.describe(), now);
    frec.parent = Some("req-3".into());
    let exp = now + time::Duration::hours(1);
    let files_report = TaskReport {
        task_id: "req-3-1".into(),
        backup: bid.clone(),
        mode: "as-files".into(),
        stored_bytes: 1,
        raw_bytes: 1,
        seconds: 0.5,
        files: vec![ExportedFile {
            container: "exports".into(),
            blob: format!("incident-42/{bid}.0000abcd.dump.zst"),
            bytes: 1,
            sha256: "ab".repeat(32),
            url: Secret::new(format!(
                "https://acct.blob.core.windows.net/exports/incident-42/x.dump.zst?sv=2026-04-06&se=x&sr=b&sp=r&sig=FIXTURESECRETSIG%3D"
            )),
            expires_at: exp,
        }],
        ..Default::default()
    };
    let (_, done) = track(mon, frec, Alerting::delivery(AlertKind::JobFailed, false), async {
        let detail = json!({ "task": files_task, "report": files_report });
        Run::ok((), detail).with_bytes(Some(1))
    })
    .await;
    save("restore-task-succeeded-as-files", &done);
    // rehydration pending, as task.rs writes it
    let mut p = taskrec.clone();
    p.status = Status::RehydrationPending;
    p.reason = Some(format!("rehydration pending: backup data {:?} in the archive tier", ["x.dump.zst"]));
    p.updated_at = now;
    let detail = TaskDetail {
        task: Some(task.clone()),
        rehydration_started_at: Some(now),
        blobs: vec!["x.dump.zst".into()],
        recheck_secs: Some(restore::REHYDRATION_RECHECK_SECS),
        ..Default::default()
    };
    p.detail = serde_json::to_value(&detail).unwrap();
    save("restore-task-rehydration-pending", &p);

    // ---- retention (the real run: one that works, then one that fails on a delete)
    for d in 2..6 {
        put_backup(store, "prod", "app", now - time::Duration::days(d), 10 + d as usize).await;
    }
    crate::features::retention::run(&ctx, false, None, "cli").await.unwrap();
    let recs = jr::list(store, Some(JobKind::Retention)).await.unwrap();
    save("retention-succeeded", recs.last().unwrap());
    let mut running = recs.last().unwrap().clone();
    running.start_attempt(now);
    running.status = Status::Running;
    running.finished_at = None;
    running.detail = Value::Null;
    save("retention-running", &running);
    for d in 2..6 {
        let (_, data) =
            put_backup(store, "prod", "app", now - time::Duration::days(d) - time::Duration::hours(1), 20 + d as usize)
                .await;
        if d == 4 {
            // A data blob the store cannot delete (a directory): the run fails after removals.
            let path = dir.path().join(&data);
            std::fs::remove_file(&path).unwrap();
            std::fs::create_dir_all(path.join("x")).unwrap();
        }
    }
    crate::features::retention::run(&ctx, false, None, "timer").await.unwrap_err();
    let recs = jr::list(store, Some(JobKind::Retention)).await.unwrap();
    let failed = recs.iter().find(|r| r.status == Status::Failed).unwrap();
    assert!(!failed.detail["executed"]["removed"].as_array().unwrap().is_empty(), "{failed:?}");
    save("retention-failed", failed);

    // ---- verify (as cli/mod.rs writes it)
    let rec = crate::features::report::start_record(JobKind::Verify, "*", "pgvault verify", "cli");
    let (_, done) = track(mon, rec.clone(), Alerting::once(AlertKind::JobFailed), async {
        Run::ok((), json!({ "verified": 3, "failed": 0, "orphans": ["prod/app/x.1.dump.zst"], "cleaned": [] }))
    })
    .await;
    save("verify-succeeded", &done);
    let (_, done) = track(mon, rec.clone(), Alerting::once(AlertKind::JobFailed), async {
        Run::<()>::failed(
            Error::permanent("1 of 3 backups failed verification"),
            json!({ "verified": 2, "failed": 1, "orphans": [], "cleaned": [] }),
        )
    })
    .await;
    save("verify-failed", &done);
    let (_, done) = track(mon, rec.clone(), Alerting::once(AlertKind::JobFailed), async {
        Run::<()>::failed(
            Error::transient("remove orphan \"prod/app/y.1.dump.zst\": 503"),
            json!({ "orphans": ["prod/app/x.1.dump.zst", "prod/app/y.1.dump.zst"], "cleaned": ["prod/app/x.1.dump.zst"] }),
        )
    })
    .await;
    save("verify-failed-cleaning", &done);
    let (_, done) = track(mon, rec.clone(), Alerting::once(AlertKind::JobFailed), async {
        Run::<()>::failed(Error::transient("list: 503"), json!({ "verified": 3 }))
    })
    .await;
    save("verify-failed-listing", &done);

    // ---- drill (as drill.rs writes it)
    let rec = crate::features::report::start_record(
        JobKind::Drill,
        "prod/app",
        &format!("restore drill of {bid} into server \"scratch\""),
        "timer",
    );
    let mut drill_report = report.clone();
    drill_report.task_id = rec.id.clone();
    let (_, done) = track(mon, rec.clone(), Alerting::once(AlertKind::DrillFailed), async {
        let detail =
            json!({ "backup": bid, "restore_seconds": 0.18, "scratch_server": "scratch", "report": drill_report });
        Run::ok((), detail).with_bytes(Some(1))
    })
    .await;
    save("drill-succeeded", &done);
    let (_, done) = track(mon, rec.clone(), Alerting::once(AlertKind::DrillFailed), async {
        let detail = json!({ "backup": bid, "restore_seconds": 0.05, "scratch_server": "scratch" });
        Run::<()>::failed(Error::permanent(format!("backup {bid:?} did not restore: pg_restore failed")), detail)
    })
    .await;
    save("drill-failed", &done);

    // ---- pgBackRest SAS rotation (the real rotator over fake seams)
    let pgdir = tempfile::tempdir().unwrap();
    let t = pg_target("pg1", pgdir.path());
    for (name, vault) in [
        ("pgbackrest-sas-succeeded-rotated", Vault { current: None, fail: false }),
        (
            "pgbackrest-sas-succeeded-kept",
            Vault {
                current: Some(StoredToken {
                    state: TokenState {
                        enabled: true,
                        not_before: Some(now - time::Duration::days(1)),
                        expires: Some(now + time::Duration::days(25)),
                    },
                    version: "v1".into(),
                    tags: HashMap::new(),
                    value: Some(Secret::new("sv=x&sig=y")),
                }),
                fail: false,
            },
        ),
        (
            "pgbackrest-sas-failed-alarm",
            Vault {
                current: Some(StoredToken {
                    state: TokenState {
                        enabled: true,
                        not_before: Some(now - time::Duration::days(29)),
                        expires: Some(now + time::Duration::hours(1)),
                    },
                    version: "v1".into(),
                    tags: HashMap::new(),
                    value: Some(Secret::new("sv=x&sig=y")),
                }),
                fail: true,
            },
        ),
    ] {
        let r = Rotator { keys: &Keys, vault: &vault, run_commands: None, monitor: mon };
        crate::features::pgbackrest::rotate_one(&r, &t, now).await;
        let recs = jr::list(store, Some(JobKind::PgbackrestSas)).await.unwrap();
        let newest = recs.iter().max_by_key(|r| (r.updated_at, r.finished_at)).unwrap();
        save(name, newest);
        for r in &recs {
            store.delete(&jr::name(r.kind, &r.id)).await.unwrap();
        }
    }
    let vault = Vault {
        current: Some(StoredToken {
            state: TokenState {
                enabled: true,
                not_before: Some(now - time::Duration::days(1)),
                expires: Some(now + time::Duration::days(25)),
            },
            version: "v1".into(),
            tags: HashMap::new(),
            value: Some(Secret::new("sv=x&sig=y")),
        }),
        fail: false,
    };
    let r = Rotator { keys: &Keys, vault: &vault, run_commands: None, monitor: mon };
    let mut t2 = t.clone();
    t2.delivery = crate::features::pgbackrest::target::Delivery::Push;
    crate::features::pgbackrest::rotate_one(&r, &t2, now).await;
    let recs = jr::list(store, Some(JobKind::PgbackrestSas)).await.unwrap();
    save("pgbackrest-sas-failed-push", recs.last().unwrap());

    // ---- freshness (the real check on a local store)
    let info = format!(
        "[backrest]\nbackrest-format=5\n\n[backup:current]\n20261121-010000F={{\"backrest-format\":5,\"backup-timestamp-start\":{},\"backup-timestamp-stop\":{},\"backup-type\":\"full\"}}\n20261121-010000F_20261121-020000I={{\"backrest-format\":5,\"backup-timestamp-start\":{},\"backup-timestamp-stop\":{},\"backup-type\":\"incr\"}}\n",
        (now - time::Duration::hours(5)).unix_timestamp(),
        (now - time::Duration::hours(4)).unix_timestamp(),
        (now - time::Duration::hours(2)).unix_timestamp(),
        (now - time::Duration::hours(1)).unix_timestamp(),
    );
    let repo = tempfile::tempdir().unwrap();
    let repo_store = crate::seams::store::local::LocalStore::new(repo.path());
    for s in ["main", "other"] {
        repo_store
            .put(&crate::features::pgbackrest::freshness::info_blob("/", s), Bytes::from(info.clone()), &Tags::new())
            .await
            .unwrap();
    }
    crate::features::pgbackrest::freshness::check(&repo_store, &t, mon, now).await;
    let recs = jr::list(store, Some(JobKind::PgbackrestFreshness)).await.unwrap();
    save("pgbackrest-freshness-succeeded", recs.last().unwrap());
    store.delete(&jr::name(JobKind::PgbackrestFreshness, &recs.last().unwrap().id)).await.unwrap();
    repo_store.delete(&crate::features::pgbackrest::freshness::info_blob("/", "other")).await.unwrap();
    crate::features::pgbackrest::freshness::check(&repo_store, &t, mon, now).await;
    let recs = jr::list(store, Some(JobKind::PgbackrestFreshness)).await.unwrap();
    save("pgbackrest-freshness-failed", recs.last().unwrap());
}
