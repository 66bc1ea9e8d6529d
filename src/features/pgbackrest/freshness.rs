//! Repository freshness: read `backup/<stanza>/backup.info` from each pgBackRest container
//! (with the function's identity; it needs only Storage Blob Data Reader on the container) and
//! record the newest full, diff and incremental backup per stanza. A stanza whose newest backup
//! is older than the target's `max_backup_age` (or that has none) gets an error-level record.
//!
//! Runs inside `sas-rotator` after the rotation (one timer, one schedule; see DESIGN.md), and as
//! `pgvault pgbackrest-sas freshness`.

use super::plan::rfc3339;
use super::target::Target;
use crate::domain::error::{Error, Result};
use crate::monitor::records::{FreshnessDetail, JobKind, JobRecord, StanzaFreshness};
use crate::monitor::tracked::{Alerting, Monitor, conclude};
use crate::seams::alerts::AlertKind;
use crate::seams::store::BlobStore;
use serde_json::Value;
use time::OffsetDateTime;

/// One backup in `[backup:current]` (a type of the record's detail).
pub use crate::domain::records::BackupEntry;

/// Parse a `backup.info` (pgBackRest's INI with JSON values).
pub fn parse_backup_info(text: &str) -> Result<Vec<BackupEntry>> {
    let mut section = "";
    let mut out = Vec::new();
    let mut saw_backrest = false;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s;
            saw_backrest |= s == "backrest";
            continue;
        }
        if section != "backup:current" || line.is_empty() {
            continue;
        }
        // A damaged line is an error, never skipped: a backup left out in silence could be the
        // newest one (found by tests/hostile_input.rs: a line cut in two, an empty label).
        let (label, value) = match line.split_once('=') {
            Some((label, value)) if !label.trim().is_empty() => (label.trim(), value),
            _ => {
                return Err(Error::permanent(format!(
                    "backup.info: line {} of [backup:current] is not `<backup label>={{...}}`",
                    n + 1
                )));
            }
        };
        let v: Value = serde_json::from_str(value)
            .map_err(|e| Error::permanent(format!("backup.info: backup {label:?} is not readable: {e}")))?;
        let ts = |k: &str| {
            v[k].as_i64()
                .and_then(|t| OffsetDateTime::from_unix_timestamp(t).ok())
                .ok_or_else(|| Error::permanent(format!("backup.info: backup {label:?} has no {k}")))
        };
        out.push(BackupEntry {
            label: label.to_string(),
            kind: v["backup-type"].as_str().unwrap_or("?").to_string(),
            started: ts("backup-timestamp-start")?,
            stopped: ts("backup-timestamp-stop")?,
        });
    }
    if !saw_backrest {
        return Err(Error::permanent("backup.info has no [backrest] section: not a pgBackRest info file"));
    }
    Ok(out)
}

/// The blob name of a stanza's backup.info under `repo_path`.
pub fn info_blob(repo_path: &str, stanza: &str) -> String {
    let p = repo_path.trim_matches('/');
    if p.is_empty() { format!("backup/{stanza}/backup.info") } else { format!("{p}/backup/{stanza}/backup.info") }
}

/// Newest of each type, and whether the newest of all is fresh enough.
pub fn summarize(stanza: &str, backups: &[BackupEntry], t: &Target, now: OffsetDateTime) -> StanzaFreshness {
    let newest = |k: &str| backups.iter().filter(|b| b.kind == k).max_by_key(|b| b.stopped).cloned();
    let latest = backups.iter().max_by_key(|b| b.stopped);
    let stale = match latest {
        None => Some("the stanza has no backup".to_string()),
        Some(b) if now - b.stopped > t.max_backup_age => Some(format!(
            "the newest backup {} finished at {}, more than {} ago",
            b.label,
            rfc3339(b.stopped),
            super::target::show(t.max_backup_age)
        )),
        Some(_) => None,
    };
    StanzaFreshness {
        stanza: stanza.to_string(),
        full: newest("full"),
        diff: newest("diff"),
        incr: newest("incr"),
        newest_label: latest.map(|b| b.label.clone()),
        newest_time: latest.map(|b| b.stopped),
        fresh: stale.is_none(),
        error: stale,
    }
}

/// A stanza whose `backup.info` could not be read.
fn unreadable(stanza: &str, error: String) -> StanzaFreshness {
    StanzaFreshness { stanza: stanza.to_string(), fresh: false, error: Some(error), ..Default::default() }
}

/// Check every stanza of a target, reading from `store` (the target's container). Logs and
/// records; returns the per-stanza summaries (the record's detail).
pub async fn check(store: &dyn BlobStore, t: &Target, monitor: Monitor<'_>, now: OffsetDateTime) -> FreshnessDetail {
    let mut stanzas = Vec::new();
    let mut ok = true;
    for s in &t.stanzas {
        let name = info_blob(&t.repo_path, s);
        let summary = match store.get(&name).await {
            Ok(bytes) => match parse_backup_info(&String::from_utf8_lossy(&bytes)) {
                Ok(b) => summarize(s, &b, t, now),
                Err(e) => unreadable(s, e.to_string()),
            },
            Err(e) => unreadable(s, format!("read {name}: {e}")),
        };
        let newest_time = summary.newest_time.map(rfc3339);
        if summary.fresh {
            tracing::info!(target_name = %t.name, stanza = %s, newest = summary.newest_label.as_deref().unwrap_or(""), newest_time = newest_time.as_deref().unwrap_or(""), "pgbackrest stanza is fresh");
        } else {
            ok = false;
            tracing::error!(target_name = %t.name, stanza = %s, error = summary.error.as_deref().unwrap_or(""), newest = summary.newest_label.as_deref().unwrap_or(""), newest_time = newest_time.as_deref().unwrap_or(""), "pgbackrest stanza is not fresh");
        }
        stanzas.push(summary);
    }
    let v = FreshnessDetail { target: t.name.clone(), ok, stanzas, ..Default::default() };
    let id = format!("{}-{}-{}", t.name, now.unix_timestamp(), &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let mut job =
        JobRecord::new(JobKind::PgbackrestFreshness, &id, format!("freshness of pgBackRest target {}", t.name), now);
    job.target = Some(t.name.clone());
    job.server = Some(t.name.clone());
    job.started_at = Some(now);
    job.attempts = 1;
    let outcome = if ok { Ok(()) } else { Err(crate::domain::error::Error::permanent("a stanza is not fresh")) };
    // A stale repository is not fixed by the next run: alert.
    conclude(monitor, &mut job, outcome, v.clone(), None, Alerting::once(AlertKind::Pgbackrest)).await;
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_backup_info() {
        let text = r#"[backrest]
backrest-checksum="x"
backrest-format=5
backrest-version="2.45"

[backup:current]
20261121-010000F={"backrest-format":5,"backup-timestamp-start":1795222800,"backup-timestamp-stop":1795222860,"backup-type":"full"}
20261121-010000F_20261121-020000I={"backrest-format":5,"backup-timestamp-start":1795226400,"backup-timestamp-stop":1795226420,"backup-type":"incr"}

[db]
db-id=1
"#;
        let b = parse_backup_info(text).unwrap();
        assert_eq!(b.len(), 2);
        assert_eq!(b[1].kind, "incr");
        assert_eq!(b[0].stopped.unix_timestamp(), 1795222860);
        assert!(parse_backup_info("x=1").is_err());
        // Found by tests/hostile_input.rs: a backup line cut in two was skipped and the rest of
        // it read with an empty label. Both are errors naming the line.
        let cut = text.replace("020000I={", "020000I\n={");
        let e = parse_backup_info(&cut).unwrap_err().to_string();
        assert!(e.contains("line 8 of [backup:current]"), "{e}");
        assert_eq!(info_blob("/", "main"), "backup/main/backup.info");
        assert_eq!(info_blob("/repo", "main"), "repo/backup/main/backup.info");
    }
}
