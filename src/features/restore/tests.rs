use super::*;
use crate::domain::manifest::Tool;
use time::macros::datetime;

fn settings(storage: &str) -> Settings {
    let mut map = std::collections::HashMap::new();
    map.insert(
        "PGVAULT_INVENTORY".to_string(),
        r#"[{"name":"main","host":"h","user":"u"},{"name":"new","host":"h2","user":"u"}]"#.to_string(),
    );
    if storage == "azure" {
        map.insert("PGVAULT_STORAGE".into(), "azure".into());
        map.insert("PGVAULT_BLOB_ENDPOINT".into(), "https://acct.blob.core.windows.net".into());
        map.insert("PGVAULT_BACKUP_CONTAINER".into(), "backups".into());
    }
    Settings::from_map(map).unwrap()
}

fn manifest(kind: BackupKind, server: &str, db: &str, started: OffsetDateTime, job: &str) -> Manifest {
    Manifest {
        server_version: "15.0".into(),
        server_version_num: 150000,
        tool: Tool { name: "pg_dump".into(), version: "15".into(), major: 15, args: vec![] },
        raw_bytes: 1,
        stored_bytes: 1,
        finished_at: started + time::Duration::minutes(5),
        databases: (kind == BackupKind::Globals).then(|| vec!["app".into(), "shop".into(), "postgres".into()]),
        ..Manifest::skeleton(kind, server, db, started, job)
    }
}

fn catalog() -> Vec<Manifest> {
    let d1 = datetime!(2026-11-20 02:00:00 UTC);
    let d2 = datetime!(2026-11-21 02:00:00 UTC);
    vec![
        manifest(BackupKind::Database, "main", "app", d1, "a1"),
        manifest(BackupKind::Database, "main", "shop", d1, "s1"),
        manifest(BackupKind::Globals, "main", "", d1, "g1"),
        manifest(BackupKind::Database, "main", "app", d2, "a2"),
        manifest(BackupKind::Globals, "main", "", d2, "g2"),
        manifest(BackupKind::Database, "main", "postgres", d2, "p2"),
    ]
}

fn request(json: serde_json::Value) -> RestoreRequest {
    let mut base = serde_json::json!({
        "version": 1, "request_id": "r1", "requested_by": "test",
        "source": {"server": "main", "database": "app"},
        "target": {"mode": "create", "server": "new"}
    });
    for (k, v) in json.as_object().unwrap() {
        base[k] = v.clone();
    }
    RestoreRequest::from_json(&base.to_string()).unwrap()
}

#[test]
fn latest_latest_before_and_id_choose_with_reasons() {
    let s = settings("local");
    let p = plan(&request(serde_json::json!({})), &s, &catalog()).unwrap();
    assert_eq!(p.tasks.len(), 1);
    assert!(p.tasks[0].backup.ends_with("-a2"), "{:?}", p.tasks[0]);
    assert_eq!(p.tasks[0].target.database.as_deref(), Some("app"));
    assert!(p.choices.iter().any(|c| c.reason.contains("newest of 2 backups")), "{:?}", p.choices);

    let r = request(serde_json::json!({"source": {"server": "main", "database": "app",
        "backup": {"latest_before": "2026-11-20T12:00:00Z"}}}));
    let p = plan(&r, &s, &catalog()).unwrap();
    assert!(p.tasks[0].backup.ends_with("-a1"));
    assert!(p.choices.iter().any(|c| c.reason.contains("1 newer skipped")), "{:?}", p.choices);

    let id = catalog()[0].id.clone();
    let r = request(serde_json::json!({"source": {"server": "main", "database": "app", "backup": {"id": id}},
        "target": {"mode": "replace", "server": "new", "database": "other"}, "options": {"globals": true}}));
    let p = plan(&r, &s, &catalog()).unwrap();
    assert_eq!(p.tasks[0].backup, id);
    assert_eq!(p.tasks[0].target.database.as_deref(), Some("other"));
    assert!(p.tasks[0].globals.as_deref().unwrap().ends_with("-g1"), "globals of the named backup's time");
}

#[test]
fn a_named_backup_gets_the_globals_of_its_run_even_when_they_started_after_it_finished() {
    let s = settings("local");
    let mut cat = catalog();
    // g1 was requested with a1 (one scheduler run) but started after a1 finished.
    cat[2].started_at = cat[0].finished_at + time::Duration::minutes(1);
    let id = cat[0].id.clone();
    let r = request(serde_json::json!({"source": {"server": "main", "database": "app", "backup": {"id": id}},
        "options": {"globals": true}}));
    let p = plan(&r, &s, &cat).unwrap();
    assert!(p.tasks[0].globals.as_deref().unwrap().ends_with("-g1"), "{:?}", p.tasks[0]);
}

#[test]
fn whole_server_takes_every_database_but_the_maintenance_db() {
    let s = settings("local");
    let r = request(serde_json::json!({"source": {"server": "main"}, "options": {"globals": true}}));
    let p = plan(&r, &s, &catalog()).unwrap();
    let dbs: Vec<_> = p.tasks.iter().map(|t| t.target.database.clone().unwrap()).collect();
    assert_eq!(dbs, ["app", "shop"]);
    assert!(p.tasks.iter().all(|t| t.globals.as_deref().is_some_and(|g| g.ends_with("-g2"))));
    assert!(p.choices.iter().any(|c| c.what.contains("postgres") && c.reason.contains("maintenance")));
    assert_eq!(p.tasks[1].task_id, "r1-2");
    // A database dropped after the first day: its old backup stays out of a whole-server
    // restore of the second day, with the reason, and can still be named.
    let mut cat = catalog();
    cat.insert(0, manifest(BackupKind::Database, "main", "gone", datetime!(2026-11-19 02:00:00 UTC), "x0"));
    cat[3].databases = Some(vec!["app".into(), "shop".into(), "gone".into(), "postgres".into()]);
    let p = plan(&r, &s, &cat).unwrap();
    let dbs: Vec<_> = p.tasks.iter().map(|t| t.target.database.clone().unwrap()).collect();
    assert_eq!(dbs, ["app", "shop"]);
    let why = p.choices.iter().find(|c| c.what.contains("gone")).unwrap();
    assert!(why.reason.contains("not on the server when the globals were backed up"), "{why:?}");
    let r1 = request(serde_json::json!({"source": {"server": "main",
        "backup": {"latest_before": "2026-11-20T12:00:00Z"}}}));
    let dbs: Vec<_> = plan(&r1, &s, &cat).unwrap().tasks.iter().map(|t| t.target.database.clone().unwrap()).collect();
    assert_eq!(dbs, ["app", "gone", "shop"], "on the first day it was there");
    let named = request(serde_json::json!({"source": {"server": "main", "database": "gone"}}));
    assert_eq!(plan(&named, &s, &cat).unwrap().tasks.len(), 1);
    // Before the first day's backups: nothing.
    let r = request(serde_json::json!({"source": {"server": "main",
        "backup": {"latest_before": "2026-11-01T00:00:00Z"}}}));
    assert!(plan(&r, &s, &catalog()).unwrap_err().to_string().contains("nothing to restore"));
}

#[test]
fn impossible_requests_say_why() {
    let s = settings("local");
    let cases = [
        (serde_json::json!({"source": {"server": "gone", "database": "app"}}), "unknown source server"),
        (serde_json::json!({"target": {"mode": "create", "server": "elsewhere"}}), "not in the inventory"),
        (serde_json::json!({"source": {"server": "main", "database": "nope"}}), "has no backups"),
        (
            serde_json::json!({"source": {"server": "main", "database": "app",
                "backup": {"latest_before": "2020-01-01T00:00:00Z"}}}),
            "no backup of database \"app\" of server \"main\" was taken at or before",
        ),
        (
            serde_json::json!({"source": {"server": "main", "database": "app", "backup": {"id": "main/app/x"}}}),
            "is not a backup of",
        ),
        (serde_json::json!({"target": {"mode": "as-files", "container": "out"}}), "needs Azure storage"),
    ];
    for (json, want) in cases {
        let e = plan(&request(json.clone()), &s, &catalog()).unwrap_err();
        assert!(e.is_permanent());
        assert!(e.to_string().contains(want), "{json}: {e}");
    }
    let az = settings("azure");
    let e =
        plan(&request(serde_json::json!({"target": {"mode": "as-files", "container": "backups"}})), &az, &catalog())
            .unwrap_err();
    assert!(e.to_string().contains("is the backup container"), "{e}");
    let p = plan(
        &request(serde_json::json!({"target": {"mode": "as-files", "container": "out", "prefix": "case-1"},
            "options": {"globals": true}})),
        &az,
        &catalog(),
    )
    .unwrap();
    assert_eq!(p.tasks.len(), 2, "the database and the globals");
    assert_eq!(p.tasks[0].target.prefix.as_deref(), Some("case-1/"));
    assert_eq!(p.tasks[0].target.expires_in_seconds, Some(DEFAULT_EXPIRY_SECS));
}

#[test]
fn malformed_requests_are_rejected_by_shape() {
    let cases = [
        ("{", "not valid"),
        (r#"{"version":1,"request_id":"r","source":{"server":"s"}}"#, "missing field `target`"),
        (
            r#"{"version":1,"request_id":"r","source":{"server":"s","database":"d"},"target":{"mode":"create","server":"t"},"bogus":1}"#,
            "unknown field `bogus`",
        ),
        (
            r#"{"version":1,"request_id":"a b","source":{"server":"s","database":"d"},"target":{"mode":"create","server":"t"}}"#,
            "request_id",
        ),
        (
            r#"{"version":1,"request_id":"r","source":{"server":"s","database":"d"},"target":{"mode":"create"}}"#,
            "target.server is required",
        ),
        (
            r#"{"version":1,"request_id":"r","source":{"server":"s"},"target":{"mode":"create","server":"t","database":"x"}}"#,
            "whole-server",
        ),
        (
            r#"{"version":1,"request_id":"r","source":{"server":"s","database":"d"},"target":{"mode":"create","server":"t","database":"pgvault_restore_1"}}"#,
            "reserves",
        ),
        (
            r#"{"version":1,"request_id":"r","source":{"server":"s","database":"d"},"target":{"mode":"as-files","container":"Bad_Name"}}"#,
            "container name",
        ),
        (
            r#"{"version":1,"request_id":"r","source":{"server":"s","database":"d"},"target":{"mode":"create","server":"t"},"options":{"jobs":0}}"#,
            "options.jobs",
        ),
        (
            r#"{"version":1,"request_id":"r","source":{"server":"s","database":"d"},"target":{"mode":"teleport","server":"t"}}"#,
            "unknown variant `teleport`",
        ),
    ];
    for (text, want) in cases {
        let e = RestoreRequest::from_json(text).unwrap_err();
        assert!(e.is_permanent());
        assert!(e.to_string().contains(want), "{text}: {e}");
    }
}

#[test]
fn method_and_names() {
    assert_eq!(choose_method(1, 10, Some(1 << 40), 0).0, Method::Stream);
    assert_eq!(choose_method(4, 100, Some(1000), 100).0, Method::Parallel(4));
    let (m, why) = choose_method(4, 1000, Some(1000), 100);
    assert_eq!(m, Method::Stream);
    assert!(why.contains("needs 1100 bytes"), "{why}");
    assert_eq!(choose_method(4, 1, None, 0).0, Method::Stream);
    let at = datetime!(2026-11-21 02:03:04 UTC);
    assert_eq!(pre_restore_name("app", at), "app_pre_restore_20261121_020304");
    let long = "é".repeat(40);
    let n = pre_restore_name(&long, at);
    assert!(n.len() <= 63 && n.ends_with("_pre_restore_20261121_020304"), "{n}");
}

#[test]
fn globals_script_is_understood() {
    let script = "--\n-- PostgreSQL database cluster dump\n--\n\n\\restrict abc\n\nSET default_transaction_read_only = off;\n\
                  CREATE ROLE app_owner;\nALTER ROLE app_owner WITH NOSUPERUSER INHERIT LOGIN;\n\
                  CREATE ROLE \"Odd \"\"Role\"\"\";\nCOMMENT ON ROLE \"Odd \"\"Role\"\"\" IS 'it''s; odd\nreally';\n\
                  GRANT reader, \"Odd \"\"Role\"\"\" TO app_owner GRANTED BY postgres;\n\
                  CREATE TABLESPACE ts OWNER postgres LOCATION '/x';\n\\unrestrict abc\n";
    let stmts = split_statements(script);
    let kinds: Vec<GlobalStmt> = stmts.iter().map(|s| classify(s)).collect();
    assert_eq!(
        kinds,
        [
            GlobalStmt::Session,
            GlobalStmt::CreateRole("app_owner".into()),
            GlobalStmt::AboutRole("app_owner".into()),
            GlobalStmt::CreateRole("Odd \"Role\"".into()),
            GlobalStmt::AboutRole("Odd \"Role\"".into()),
            GlobalStmt::Membership("app_owner".into()),
            GlobalStmt::Tablespace,
        ]
    );
    assert!(stmts[4].contains("really';"), "a quoted newline stays in the statement: {}", stmts[4]);
}

#[test]
fn archived_backups_are_rehydrated_then_waited_for_within_a_bound() {
    use crate::seams::store::{BlobProps, Tier};
    let props = |tier: Option<Tier>, status: Option<&str>| BlobProps {
        size: 1,
        tier,
        archive_status: status.map(str::to_string),
        tier_changed_at: None,
    };
    let max = REHYDRATION_MAX_WAIT;
    let h = time::Duration::hours;
    // No tiers (local store), or an online tier: restore now.
    assert_eq!(availability(None, None, max), Availability::Online);
    for t in [None, Some(Tier::Hot), Some(Tier::Cool), Some(Tier::Cold)] {
        assert_eq!(availability(Some(&props(t, None)), Some(h(30)), max), Availability::Online, "{t:?}");
    }
    // Rehydration finished: Azure reports hot and no archive status.
    assert_eq!(availability(Some(&props(Some(Tier::Hot), None)), Some(h(10)), max), Availability::Online);
    // Archived and nothing under way: start it (first look, or it was re-archived meanwhile).
    assert_eq!(availability(Some(&props(Some(Tier::Archive), None)), None, max), Availability::Rehydrate);
    assert_eq!(availability(Some(&props(Some(Tier::Archive), None)), Some(h(2)), max), Availability::Rehydrate);
    // Under way: wait.
    let pending = props(Some(Tier::Archive), Some("rehydrate-pending-to-hot"));
    assert_eq!(availability(Some(&pending), Some(h(1)), max), Availability::Pending);
    assert_eq!(availability(Some(&pending), Some(max), max), Availability::Pending);
    // Bounded: past the limit the task fails with a clear reason.
    match availability(Some(&pending), Some(max + h(1)), max) {
        Availability::GiveUp(why) => assert!(why.contains("still in the archive tier after waiting 25 h"), "{why}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn progress_counts_the_restore_stream_and_passes_it_through() {
    use futures::StreamExt;
    let chunks: Vec<Result<Bytes>> = vec![Ok(Bytes::from_static(b"abc")), Ok(Bytes::from_static(b"defgh"))];
    let progress = crate::seams::progress::Progress::start(crate::seams::progress::Mode::Off, "restore t", Some(8));
    let out: Vec<Bytes> =
        with_progress(futures::stream::iter(chunks).boxed(), progress.clone()).map(|r| r.unwrap()).collect().await;
    assert_eq!(out, [Bytes::from_static(b"abc"), Bytes::from_static(b"defgh")]);
    assert_eq!(progress.bytes(), 8);
}

#[test]
fn tasks_round_trip_and_validate() {
    let p = plan(&request(serde_json::json!({})), &settings("local"), &catalog()).unwrap();
    let t = &p.tasks[0];
    assert_eq!(RestoreTask::from_json(&t.to_json()).unwrap(), *t);
    let mut bad = t.clone();
    bad.target.database = None;
    assert!(RestoreTask::from_json(&bad.to_json()).is_err());
    let back: Plan = serde_json::from_value(serde_json::to_value(&p).unwrap()).unwrap();
    assert_eq!(back, p);
}

#[test]
fn exported_file_url_is_redacted_in_debug_but_serialized_plainly() {
    let sig = "q7Zl3cRnb%2BsecretSIGvalue%3D";
    let url = format!(
        "https://acct.blob.core.windows.net/exports/d/x.dump?sv=2024-11-04&sr=b&sp=r&se=2026-11-21T02%3A03%3A04Z&sig={sig}"
    );
    let f = ExportedFile {
        container: "exports".into(),
        blob: "d/x.dump".into(),
        bytes: 42,
        sha256: "ab".repeat(32),
        url: crate::domain::secret::SecretUrl::new(crate::domain::secret::Secret::new(url.clone())),
        expires_at: datetime!(2026-11-21 02:03:04 UTC),
    };
    let debug = format!("{f:?}");
    assert!(!debug.contains(sig) && !debug.contains("sig=") && !debug.contains("sv=2024"), "{debug}");
    assert!(debug.contains("d/x.dump") && debug.contains("**redacted**"), "{debug}");
    let report = TaskReport { files: vec![f.clone()], ..Default::default() };
    assert!(!format!("{report:?}").contains(sig));

    // The job record keeps the same shape as before: `url` is a plain string.
    let json = serde_json::to_string(&f).unwrap();
    assert!(json.contains(&serde_json::to_string(&url).unwrap()), "{json}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["url"].as_str(), Some(url.as_str()));
    let back: ExportedFile = serde_json::from_str(&json).unwrap();
    assert_eq!(back, f);
    assert_eq!(back.url.expose(), Some(url.as_str()));
}
