//! Records already in users' stores keep reading: every fixture in tests/fixtures/job-records
//! (one record of every kind and status, as pgvault wrote them before details were typed) parses
//! with today's types, its detail is its kind's type (not the `Other` fallback), and it is
//! written back with the same meaning.

use pgvault::monitor::records::{Detail, JobKind, JobRecord, Status};
use serde_json::Value;
use std::path::Path;

/// A value that says nothing: what a missing key means (the types' serde defaults).
fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null | Value::Bool(false) => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

/// `a` and `b` say the same: equal, except that a key missing on one side may be empty
/// (`null`, `false`, `[]`, `{}`) on the other. Returns the path of the first difference.
fn difference(path: &str, a: &Value, b: &Value) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter().find_map(|k| {
                let (va, vb) = (x.get(k).unwrap_or(&Value::Null), y.get(k).unwrap_or(&Value::Null));
                difference(&format!("{path}/{k}"), va, vb)
            })
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            x.iter().zip(y).enumerate().find_map(|(i, (va, vb))| difference(&format!("{path}/{i}"), va, vb))
        }
        _ if a == b || (is_empty(a) && is_empty(b)) => None,
        _ => Some(format!("{path}: {a} became {b}")),
    }
}

fn fixtures() -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/job-records");
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()))
        .collect();
    out.sort();
    out
}

#[test]
fn every_fixture_reads_typed_and_writes_back_the_same_meaning() {
    let all = fixtures();
    let mut kinds_statuses = std::collections::BTreeSet::new();
    for (name, bytes) in &all {
        let rec = JobRecord::from_json(name, bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        // The name says the kind and the status.
        assert!(name.starts_with(rec.kind.as_str()), "{name}: kind {}", rec.kind.as_str());
        assert!(name[rec.kind.as_str().len() + 1..].starts_with(rec.status.as_str()), "{name}: {:?}", rec.status);
        kinds_statuses.insert((rec.kind.as_str(), rec.status.as_str()));
        match &rec.detail {
            Detail::Other(v) => panic!("{name}: the detail did not read as its kind's type: {v}"),
            Detail::None => {
                let v: Value = serde_json::from_slice(bytes).unwrap();
                assert!(v["detail"].is_null(), "{name}");
            }
            d => assert!(d.fits(rec.kind), "{name}: {d:?}"),
        }
        let original: Value = serde_json::from_slice(bytes).unwrap();
        let written: Value = serde_json::from_slice(&rec.to_json()).unwrap();
        if let Some(diff) = difference("", &original, &written) {
            panic!("{name}: not the same meaning after a round trip: {diff}");
        }
        // And stable: what it writes reads back as the same record.
        assert_eq!(JobRecord::from_json(name, &rec.to_json()).unwrap(), rec, "{name}");
        // A failed run says whether it is retried (a request's status follows its tasks').
        if rec.status == Status::Failed && rec.kind != JobKind::RestoreRequest {
            assert!(rec.detail.will_retry().is_some(), "{name}");
        }
    }
    // One of every kind; the statuses each kind goes through.
    for kind in [
        JobKind::Backup,
        JobKind::RestoreRequest,
        JobKind::RestoreTask,
        JobKind::Retention,
        JobKind::Verify,
        JobKind::Drill,
        JobKind::PgbackrestSas,
        JobKind::PgbackrestFreshness,
        JobKind::Doctor,
    ] {
        for status in ["succeeded", "failed"] {
            assert!(kinds_statuses.contains(&(kind.as_str(), status)), "no {} {status} fixture", kind.as_str());
        }
    }
    for (kind, status) in [
        ("backup", "queued"),
        ("backup", "running"),
        ("restore-request", "queued"),
        ("restore-request", "running"),
        ("restore-task", "queued"),
        ("restore-task", "running"),
        ("restore-task", "rehydration-pending"),
        ("retention", "running"),
    ] {
        assert!(kinds_statuses.contains(&(kind, status)), "no {kind} {status} fixture");
    }
}

#[test]
fn typed_fields_are_read_from_the_fixtures() {
    let read = |name: &str| {
        let (_, bytes) = fixtures().into_iter().find(|(n, _)| n == name).unwrap();
        JobRecord::from_json(name, &bytes).unwrap()
    };
    // What idempotency and the summaries decide on.
    let rejected = read("restore-request-failed-rejected.json");
    let d = rejected.detail.restore_request().unwrap();
    assert!(d.rejected && !d.enqueued && d.request.is_some());
    let queued = read("restore-request-queued.json");
    let d = queued.detail.restore_request().unwrap();
    assert!(d.enqueued && d.plan.as_ref().is_some_and(|p| p.tasks.len() == 1));
    let pending = read("restore-task-rehydration-pending.json");
    assert!(pending.detail.restore_task().unwrap().rehydration_started_at.is_some());
    let failed = read("restore-task-failed.json");
    assert_eq!(failed.detail.will_retry(), Some(true));
    let retention = read("retention-failed.json");
    assert_eq!(retention.detail.retention().unwrap().executed.removed.len(), 3, "what it removed before it failed");
    let drill = read("drill-succeeded.json");
    assert_eq!(drill.detail.drill().unwrap().restore_seconds, Some(0.18));
    let files = read("restore-task-succeeded-as-files.json");
    let url = &files.detail.restore_task().unwrap().report.as_ref().unwrap().files[0].url;
    assert!(url.expose().unwrap().contains("sig=FIXTURESECRETSIG"));
    assert!(!format!("{files:?}").contains("FIXTURESECRETSIG"), "Debug is redacted");
    let sas = read("pgbackrest-sas-failed-alarm.json");
    assert!(sas.detail.rotation().unwrap().alarm.is_some());
    let doctor = read("doctor-failed.json");
    let d = doctor.detail.doctor().unwrap();
    assert_eq!(d.findings[0].severity, pgvault::domain::doctor::Severity::Error);
    assert_eq!(d.findings[0].check, "pg-dump-version");
    let fresh = read("pgbackrest-freshness-failed.json");
    assert!(!fresh.detail.freshness().unwrap().stanzas[1].fresh);
}
