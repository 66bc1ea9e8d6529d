//! The view built from records and manifests, and both renderers: escaping, sparklines, secrets.

use super::*;
use crate::domain::layout::BackupKind;
use crate::domain::manifest::Encryption;
use crate::domain::records::{BackupDetail, DrillDetail};
use std::collections::HashMap;
use time::macros::datetime;

const HOSTILE: &str = "<img src=x onerror=alert(1)>";

fn settings() -> Settings {
    let inv = serde_json::json!([{
        "name": "prod", "host": "h", "user": "u", "schedule": "0 0 2 * * *",
        "retention": {"daily": 7, "weekly": 4, "min_keep": 1},
        "databases": {"hourly": {"schedule": "0 0 * * * *"}}
    }]);
    Settings::from_map(HashMap::from([
        ("PGVAULT_INVENTORY".to_string(), inv.to_string()),
        ("PGVAULT_RPO_MARGIN_MINUTES".to_string(), "60".to_string()),
        ("PGVAULT_STORAGE".to_string(), "local".to_string()),
        ("PGVAULT_LOCAL_DIR".to_string(), "/var/backups/pgvault".to_string()),
    ]))
    .unwrap()
}

fn manifest(db: &str, at: OffsetDateTime, stored: u64, secs: i64) -> Manifest {
    Manifest {
        raw_bytes: stored * 3,
        stored_bytes: stored,
        finished_at: at + Duration::seconds(secs),
        ..Manifest::skeleton(BackupKind::Database, "prod", db, at, "j")
    }
}

fn failed(kind: JobKind, id: &str, target: &str, at: OffsetDateTime, reason: &str) -> JobRecord {
    let mut r = JobRecord::new(kind, id, "x", at);
    r.target = Some(target.into());
    r.status = Status::Failed;
    r.reason = Some(reason.into());
    r.finished_at = Some(at);
    r
}

/// Three databases (ok, late, missed), a hostile name, a drill, a failed backup whose reason
/// holds a SAS, and an encrypted newest backup.
fn view() -> StatusView {
    let s = settings();
    let now = datetime!(2026-11-21 10:30 UTC);
    let mut manifests = vec![
        // Daily at 02:00: the newest from today, due tomorrow: ok.
        manifest("app", datetime!(2026-11-20 02:00 UTC), 1000, 10),
        manifest("app", datetime!(2026-11-21 02:00 UTC), 3000, 30),
        // Hourly: due 10:00, 30 minutes ago, within the 60 min margin: late.
        manifest("hourly", datetime!(2026-11-21 09:00 UTC), 10, 1),
        // Daily: due 2026-11-20 02:00: missed.
        manifest(HOSTILE, datetime!(2026-11-19 02:00 UTC), 10, 1),
    ];
    manifests[1].encryption = Some(Encryption {
        algorithm: "aes-256-gcm-chunked-v1".into(),
        chunk_size: 1 << 20,
        key_id: "https://kv.vault.azure.net/keys/pgvault/0123abcd".into(),
        wrap_algorithm: "RSA-OAEP-256".into(),
        wrapped_key: "d3JhcHBlZA==".into(),
    });
    let mut drill = JobRecord::new(JobKind::Drill, "d1", "drill", now);
    drill.target = Some("prod/app".into());
    drill.status = Status::Succeeded;
    drill.finished_at = Some(datetime!(2026-11-21 03:00 UTC));
    drill.detail =
        DrillDetail { backup: Some(manifests[1].id.clone()), restore_seconds: Some(12.5), ..Default::default() }.into();
    let mut ok = JobRecord::new(JobKind::Backup, "b-ok", "x", now);
    ok.target = Some("prod/app".into());
    ok.status = Status::Succeeded;
    ok.detail = BackupDetail { backup: Some(manifests[1].id.clone()), ..Default::default() }.into();
    let records = vec![
        failed(JobKind::Backup, "old", "prod/app", datetime!(2026-11-01 02:00 UTC), "too old to show"),
        failed(
            JobKind::Backup,
            "b-bad",
            &format!("prod/{HOSTILE}"),
            datetime!(2026-11-21 02:05 UTC),
            "upload to https://a.blob.core.windows.net/c/x?sv=1&sig=SECRETSIG%3D failed",
        ),
        failed(JobKind::Retention, "r1", "*", datetime!(2026-11-21 04:00 UTC), "<script>alert(2)</script>"),
        ok,
        drill,
    ];
    let tiers: BTreeMap<String, std::result::Result<String, String>> = manifests
        .iter()
        .map(|m| (m.id.clone(), if m.database == "app" { Ok("hot".to_string()) } else { Err("no tiers".to_string()) }))
        .collect();
    let held: std::collections::HashSet<String> = std::collections::HashSet::new();
    let plans: Vec<TargetPlan> = ["app", "hourly", HOSTILE]
        .iter()
        .map(|db| {
            let items: Vec<crate::domain::policy::Item> = manifests
                .iter()
                .filter(|m| m.database == *db)
                .map(|m| crate::domain::policy::Item {
                    id: m.id.clone(),
                    time: m.requested_at,
                    held: held.contains(&m.id),
                })
                .collect();
            let policy = crate::domain::inventory::policy_for(s.server("prod").unwrap(), Some(db)).unwrap();
            TargetPlan {
                server: "prod".into(),
                database: Some(db.to_string()),
                policy: Some(policy),
                skipped: None,
                backups: crate::domain::policy::plan(&items, &policy, now),
                tiering: vec![],
            }
        })
        .collect();
    build(&s, &manifests, &records, &plans, &tiers, vec![], vec![], now)
}

#[test]
fn the_view_classifies_each_database_and_keeps_what_it_read() {
    let v = view();
    let by: BTreeMap<&str, &DbStatus> = v.databases.iter().map(|d| (d.database.as_str(), d)).collect();
    assert_eq!(by["app"].protection.state, RpoState::Ok);
    assert_eq!(by["app"].protection.next_run, Some(datetime!(2026-11-22 02:00 UTC)));
    assert_eq!(by["hourly"].protection.state, RpoState::Late);
    assert_eq!(by[HOSTILE].protection.state, RpoState::Missed);
    assert_eq!(v.counts(), BTreeMap::from([("late", 1), ("missed", 1), ("ok", 1)]));

    let app = by["app"];
    assert_eq!(app.trend.iter().map(|t| t.stored_bytes).collect::<Vec<_>>(), [1000, 3000]);
    assert_eq!(app.trend[1].duration_seconds, 30.0);
    let proof = app.proof.as_ref().expect("the drill");
    assert!(proof.ok);
    assert_eq!(proof.rto_seconds, Some(12.5));
    assert!(app.trouble.is_empty(), "a failure older than 7 days is not trouble: {:?}", app.trouble);
    assert_eq!(app.retention.gfs, BTreeMap::from([("daily".into(), 2), ("newest".into(), 1), ("weekly".into(), 1)]));
    assert_eq!(app.retention.access, BTreeMap::from([("hot".into(), 2)]));
    assert_eq!(by["hourly"].retention.access, BTreeMap::from([("unknown".into(), 1)]));
    assert_eq!(by["hourly"].retention.access_note.as_deref(), Some("no tiers"));
    assert!(matches!(&app.posture.encryption, Fact::Known(k) if k.contains("keys/pgvault/0123abcd")));
    assert_eq!(app.posture.rating, Rating::Minimum, "a local directory has neither WORM nor soft delete");
    assert!(app.posture.reasons.contains(&"soft delete is off".to_string()), "{:?}", app.posture.reasons);
    assert!(matches!(&by["hourly"].posture.encryption, Fact::Known(k) if k.starts_with("none")));

    let bad = &by[HOSTILE].trouble;
    assert_eq!(bad.len(), 1);
    assert!(!bad[0].reason.contains("SECRETSIG"), "{}", bad[0].reason);
    assert_eq!(v.other_trouble.iter().map(|t| t.job_id.as_str()).collect::<Vec<_>>(), ["r1"]);
    assert!(matches!(&v.store_posture.who_may_delete, Fact::Known(w) if w.contains("/var/backups/pgvault")));
}

#[test]
fn the_page_escapes_every_name_and_reason_and_carries_no_secret() {
    let v = view();
    let page = html::render(&v);
    assert!(page.contains("&lt;img src=x onerror=alert(1)&gt;"), "the hostile name shows as text");
    assert!(!page.contains("<img"), "no element from a name");
    assert!(!page.contains("<script"), "no element from a reason");
    assert!(page.contains("&lt;script&gt;alert(2)&lt;/script&gt;"));
    assert!(!page.contains("sig=") && !page.contains("SECRETSIG"), "no SAS signature on the page");
    for id in ["summary", "databases", "trouble", "posture", "pgbackrest", "doctor"] {
        assert!(page.contains(&format!("id=\"{id}\"")), "section {id}");
    }
    for state in ["ok", "late", "missed"] {
        assert!(page.contains(&format!("data-state=\"{state}\"")), "a {state} row");
    }
    assert!(page.contains("RTO 12.5 s"));
    assert!(page.contains("font:14px/1.4 \"Segoe UI\""), "the style sheet is ours, not escaped");
    assert!(page.contains("<svg class=\"spark\""), "inline SVG sparklines");
    // The JSON view has the same facts and no secret either.
    let json = serde_json::to_string(&v).unwrap();
    assert!(!json.contains("SECRETSIG"));
    assert!(json.contains("\"state\":\"late\""));
}

#[test]
fn sparkline_points_span_the_box_lowest_at_the_bottom() {
    assert_eq!(html::spark_points(&[1.0, 3.0, 2.0]), "3.0,21.0 60.0,3.0 117.0,12.0");
    assert_eq!(html::spark_points(&[5.0, 5.0]), "3.0,12.0 117.0,12.0", "flat: the middle");
    assert_eq!(html::spark_points(&[7.0]), "117.0,12.0", "one value: at the newest end");
    assert_eq!(html::spark_points(&[]), "");
    assert_eq!(html::spark_points(&[f64::NAN, 1.0]), "3.0,21.0 117.0,3.0");
    let svg = html::sparkline(&[1.0, 2.0], "stored size").into_string();
    assert!(svg.starts_with("<svg class=\"spark\""), "{svg}");
    assert!(svg.contains("<polyline points=\"3.0,21.0 117.0,3.0\">"), "{svg}");
    assert!(svg.contains("<circle cx=\"117.0\" cy=\"3.0\" r=\"2.5\">"), "the newest value marked: {svg}");
    let one = html::sparkline(&[7.0], "one").into_string();
    assert!(one.contains("<circle cx=\"117.0\" cy=\"12.0\""), "a single backup still shows: {one}");
    assert!(svg.contains("<title>stored size</title>"), "{svg}");
    assert_eq!(text::spark(&[0.0, 7.0, 3.5]), "▁█▅");
}

#[test]
fn the_terminal_text_escapes_control_characters() {
    let mut v = view();
    v.databases[2].database = "evil\u{1b}[2Jname".into();
    let out = text::render(&v);
    let plain = anstream::adapter::strip_str(&out).to_string();
    assert!(plain.contains("evil\\u{1b}[2Jname"), "{plain}");
    assert!(!plain.contains('\u{1b}'), "only pgvault's own styles are escape sequences");
    assert!(plain.contains(HOSTILE), "a terminal shows the name as it is");
    assert!(plain.contains("1 ok, 1 late, 1 missed, 0 unknown"), "{plain}");
    assert!(!plain.contains("SECRETSIG"));
    assert!(plain.contains("drill passed") && plain.contains("RTO 12.5 s"), "{plain}");
}

#[test]
fn pgbackrest_targets_and_doctor_findings_show_escaped() {
    use crate::domain::records::{FreshnessDetail, RotationDetail, StanzaFreshness};
    let vm = "/subscriptions/s/resourceGroups/g/providers/Microsoft.Compute/virtualMachines/pg1";
    let targets = serde_json::json!([
        {"name": "pg1", "vm_resource_id": vm, "blob_endpoint": "https://a.blob.core.windows.net",
         "container": "c", "vault": "my-vault", "stanzas": ["main"]},
        {"name": "pg2", "vm_resource_id": vm, "blob_endpoint": "https://a.blob.core.windows.net",
         "container": "c", "vault": "my-vault"},
    ]);
    let s = Settings::from_map(HashMap::from([
        ("PGVAULT_INVENTORY".to_string(), "[]".to_string()),
        ("PGVAULT_PGBACKREST_TARGETS".to_string(), targets.to_string()),
    ]))
    .unwrap();
    let now = datetime!(2026-11-21 10:00 UTC);
    let mut rot = JobRecord::new(JobKind::PgbackrestSas, "r", "x", now);
    rot.detail = RotationDetail {
        target: "pg1".into(),
        new_expiry: Some(now + Duration::hours(9)),
        error: Some("delivery to https://vm/x?sv=1&sig=SECRET failed".into()),
        ..Default::default()
    }
    .into();
    let mut fresh = JobRecord::new(JobKind::PgbackrestFreshness, "f", "x", now);
    fresh.detail = FreshnessDetail {
        target: "pg1".into(),
        stanzas: vec![StanzaFreshness {
            stanza: "<b>main</b>".into(),
            newest_time: Some(now - Duration::hours(30)),
            fresh: false,
            error: Some("newest backup is 30 h old".into()),
            ..Default::default()
        }],
        ..Default::default()
    }
    .into();
    let findings = vec![Finding {
        object: "server <i>x</i>".into(),
        severity: "error".into(),
        problem: "pg_dump 15 is older than the server (17)".into(),
        hint: Some("install pg_dump 17".into()),
    }];
    let v = build(&s, &[], &[rot, fresh], &[], &BTreeMap::new(), findings, vec![], now);
    assert_eq!(v.pgbackrest.len(), 2);
    let pg1 = &v.pgbackrest[0];
    assert_eq!(pg1.sas_expiry, Fact::known("2026-11-21T19:00:00Z (in 9.0 h)"));
    assert!(!pg1.sas_problem.as_deref().unwrap().contains("SECRET"), "{:?}", pg1.sas_problem);
    assert!(!pg1.stanzas[0].fresh);
    assert_eq!(v.pgbackrest[1].sas_expiry, Fact::unknown("no rotation recorded yet"));
    assert_eq!(v.pgbackrest[1].stanzas_note.as_deref(), Some("no freshness check recorded yet"));

    let page = html::render(&v);
    let section = |id: &str| {
        page.split(&format!("<section id=\"{id}\"")).nth(1).unwrap().split("</section>").next().unwrap().to_string()
    };
    let pgbr = section("pgbackrest");
    assert!(pgbr.contains("&lt;b&gt;main&lt;/b&gt;") && pgbr.contains("stale"), "{pgbr}");
    assert!(pgbr.contains("unknown (no rotation recorded yet)"), "{pgbr}");
    assert!(!page.contains("sig=") && !page.contains("SECRET"));
    let doctor = section("doctor");
    assert!(doctor.contains("server &lt;i&gt;x&lt;/i&gt;") && doctor.contains("install pg_dump 17"), "{doctor}");
    let out = anstream::adapter::strip_str(&text::render(&v)).to_string();
    assert!(out.contains("pg1 (pull): SAS expiry 2026-11-21T19:00:00Z (in 9.0 h)"), "{out}");
    assert!(out.contains("HINT: install pg_dump 17"), "{out}");
}

#[test]
fn a_dropped_or_excluded_database_is_not_judged_against_the_rpo() {
    let s = settings();
    let now = datetime!(2026-11-25 10:00 UTC);
    let mut globals = manifest("", datetime!(2026-11-24 02:00 UTC), 10, 1);
    globals.kind = BackupKind::Globals;
    globals.databases = Some(vec!["app".into()]);
    let manifests = vec![
        manifest("app", datetime!(2026-11-20 02:00 UTC), 10, 1),
        manifest("dropped", datetime!(2026-11-20 02:00 UTC), 10, 1),
        globals,
    ];
    let v = build(&s, &manifests, &[], &[], &BTreeMap::new(), vec![], vec![], now);
    let state = |db: &str| v.databases.iter().find(|d| d.database == db).unwrap().protection.clone();
    assert_eq!(state("app").state, RpoState::Missed, "still on the server, days overdue");
    let dropped = state("dropped");
    assert_eq!(dropped.state, RpoState::Unknown);
    assert!(dropped.why.contains("does not list it (dropped)"), "{}", dropped.why);
    assert_eq!(state(GLOBALS).state, RpoState::Missed, "the globals' next run was due 2026-11-25 02:00");
}

#[test]
fn the_newest_doctor_run_gives_the_findings_worst_first_and_scrubbed() {
    use crate::domain::doctor::Finding as DoctorFinding;
    use crate::domain::records::DoctorDetail;
    let doctor = |id: &str, at: OffsetDateTime, findings: Vec<DoctorFinding>| {
        let mut r = JobRecord::new(JobKind::Doctor, id, "doctor", at);
        r.succeed(at, DoctorDetail { findings, ..Default::default() }, None);
        r
    };
    let old = doctor(
        "d1",
        datetime!(2026-12-01 02:00 UTC),
        vec![DoctorFinding::error("connection", "server \"prod\"", "gone")],
    );
    let mut leak = DoctorFinding::warning(
        "tls-expiry",
        "server \"prod\"",
        "see https://x.blob.core.windows.net/c/b?sv=1&sig=SECRET",
    );
    leak.hint = Some("renew <b>it</b>".into());
    let new = doctor(
        "d2",
        datetime!(2026-12-02 02:00 UTC),
        vec![leak, DoctorFinding::error("table-privileges", "table \"public\".\"t\"", "permission denied")],
    );
    let got = doctor_findings(&[new, old]);
    assert_eq!(got.len(), 2, "only the newest run counts: {got:?}");
    assert_eq!(got[0].severity, "error");
    assert_eq!(got[0].problem, "permission denied");
    assert!(!got[1].problem.contains("SECRET") && !got[1].problem.contains("sig="), "{:?}", got[1].problem);
    assert_eq!(got[1].hint.as_deref(), Some("renew <b>it</b>"), "escaping is the renderer's job, not the gatherer's");
    assert!(doctor_findings(&[]).is_empty());
}
