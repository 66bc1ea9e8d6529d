//! Job records: one small JSON document per restore request and per restore task, kept in the
//! backup store under [`PREFIX`], so `pgvault jobs` (and, later, the monitoring API and alerts)
//! can say what was asked, what ran, and how it ended.
//!
//! ```text
//! @jobs/restore-request/<request id>.json
//! @jobs/restore-task/<task id>.json
//! ```
//!
//! The prefix starts with `@`, which [`crate::domain::layout::encode_segment`] never produces, so no
//! server's backups can share it; the catalog skips it.
//!
//! Contract: a record is created with create-if-absent ([`create`], used to claim a request id
//! exactly once) and then replaced whole by [`put`] as the job moves on (`queued` → `running` →
//! `succeeded` | `failed`). A reader sees either the old or the new document, never a mix. Records
//! are written by one job at a time; two writers of the same record (a redelivered message racing
//! its first delivery) leave the last one's document.

use crate::domain::error::{Error, Result};
use crate::domain::layout::encode_segment;
use crate::seams::store::{BlobStore, CreateOutcome, Tags};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;

/// Where job records live in the backup store. Not a possible server segment (see module docs).
pub const PREFIX: &str = "@jobs/";
pub const FORMAT_NAME: &str = "pgvault-job-record";
pub const FORMAT_VERSION: u32 = 1;

/// What a record describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JobKind {
    /// A restore request as posted (and its plan).
    RestoreRequest,
    /// One restore task: one database restored, or one backup exported as files.
    RestoreTask,
    /// One SAS rotation (and delivery) of a pgBackRest target.
    PgbackrestSas,
    /// One freshness check of a pgBackRest target's stanzas.
    PgbackrestFreshness,
    /// One backup job: a database or a server's globals (record id: the job id).
    Backup,
    /// One run of retention over the store.
    Retention,
    /// One run of `pgvault verify`.
    Verify,
    /// One restore drill of one backup into the scratch server.
    Drill,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::RestoreRequest => "restore-request",
            JobKind::RestoreTask => "restore-task",
            JobKind::PgbackrestSas => "pgbackrest-sas",
            JobKind::PgbackrestFreshness => "pgbackrest-freshness",
            JobKind::Backup => "backup",
            JobKind::Retention => "retention",
            JobKind::Verify => "verify",
            JobKind::Drill => "drill",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "restore-request" => Ok(JobKind::RestoreRequest),
            "restore-task" => Ok(JobKind::RestoreTask),
            "pgbackrest-sas" => Ok(JobKind::PgbackrestSas),
            "pgbackrest-freshness" => Ok(JobKind::PgbackrestFreshness),
            "backup" => Ok(JobKind::Backup),
            "retention" => Ok(JobKind::Retention),
            "verify" => Ok(JobKind::Verify),
            "drill" => Ok(JobKind::Drill),
            other => Err(Error::permanent(format!("unknown job kind {other:?}"))
                .with_hint("use backup, restore-request, restore-task, retention, verify, drill, pgbackrest-sas or pgbackrest-freshness")),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Queued,
    Running,
    Succeeded,
    Failed,
    /// A restore task waiting for its archived backup to be rehydrated; re-enqueued with a delay.
    #[serde(rename = "rehydration-pending")]
    RehydrationPending,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Running => "running",
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::RehydrationPending => "rehydration-pending",
        }
    }
}

/// One job's status document. Its `Debug` withholds the read-only SAS URLs of exported files
/// (`detail.report.files[*].url`), which are secrets.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub format: String,
    pub format_version: u32,
    pub kind: JobKind,
    pub id: String,
    /// For a task: the request it belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    pub status: Status,
    /// Why it failed (or, for a duplicate or skipped job, why nothing ran).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Free text from the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<String>,
    /// One line: what the job does.
    pub summary: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    #[serde(default, with = "time::serde::rfc3339::option", skip_serializing_if = "Option::is_none")]
    pub started_at: Option<OffsetDateTime>,
    #[serde(default, with = "time::serde::rfc3339::option", skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<OffsetDateTime>,
    /// Deliveries that ran this job so far.
    #[serde(default)]
    pub attempts: u32,
    /// Backup bytes read (as stored), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// What the job works on: `server/database`, `server/@globals`, a server, or `*`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// What started it: `timer`, `queue`, `http` or `cli`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<String>,
    /// Kind-specific detail: the plan of a request, the report of a task.
    #[serde(default)]
    pub detail: Value,
}

impl std::fmt::Debug for JobRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut detail = self.detail.clone();
        if let Some(files) = detail.pointer_mut("/report/files").and_then(Value::as_array_mut) {
            for file in files.iter_mut().filter_map(Value::as_object_mut) {
                if file.contains_key("url") {
                    file.insert("url".into(), Value::from(crate::domain::secret::REDACTED));
                }
            }
        }
        f.debug_struct("JobRecord")
            .field("kind", &self.kind)
            .field("id", &self.id)
            .field("parent", &self.parent)
            .field("status", &self.status)
            .field("reason", &self.reason)
            .field("requested_by", &self.requested_by)
            .field("summary", &self.summary)
            .field("created_at", &self.created_at)
            .field("updated_at", &self.updated_at)
            .field("started_at", &self.started_at)
            .field("finished_at", &self.finished_at)
            .field("attempts", &self.attempts)
            .field("bytes", &self.bytes)
            .field("target", &self.target)
            .field("trigger", &self.trigger)
            .field("detail", &detail)
            .finish_non_exhaustive()
    }
}

impl JobRecord {
    /// A new attempt of the job starts now: running, no reason, no end yet, one more attempt.
    pub fn start_attempt(&mut self, now: OffsetDateTime) {
        self.status = Status::Running;
        self.reason = None;
        self.started_at = Some(now);
        self.finished_at = None;
        self.updated_at = now;
        self.attempts += 1;
    }

    pub fn new(kind: JobKind, id: &str, summary: impl Into<String>, now: OffsetDateTime) -> Self {
        JobRecord {
            format: FORMAT_NAME.into(),
            format_version: FORMAT_VERSION,
            kind,
            id: id.to_string(),
            parent: None,
            status: Status::Queued,
            reason: None,
            requested_by: None,
            summary: summary.into(),
            created_at: now,
            updated_at: now,
            started_at: None,
            finished_at: None,
            attempts: 0,
            bytes: None,
            target: None,
            trigger: None,
            detail: Value::Null,
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("record serializes");
        v.push(b'\n');
        v
    }

    pub fn from_json(name: &str, bytes: &[u8]) -> Result<Self> {
        let rec: JobRecord = serde_json::from_slice(bytes)
            .map_err(|e| Error::permanent(format!("job record {name:?} is not readable: {e}")))?;
        if rec.format != FORMAT_NAME || rec.format_version > FORMAT_VERSION {
            return Err(Error::permanent(format!(
                "job record {name:?} has format {:?} version {}, this pgvault reads {FORMAT_NAME:?} up to {FORMAT_VERSION}",
                rec.format, rec.format_version
            )));
        }
        Ok(rec)
    }

    /// Bytes per second over the run, when bytes and both times are known.
    pub fn rate(&self) -> Option<f64> {
        let secs = (self.finished_at? - self.started_at?).as_seconds_f64();
        let bytes = self.bytes?;
        (secs > 0.0).then(|| bytes as f64 / secs)
    }

    /// Whether the job ended (nothing more will happen to it unless it is posted again).
    pub fn is_finished(&self) -> bool {
        matches!(self.status, Status::Succeeded | Status::Failed)
    }
}

/// The blob name of a record.
pub fn name(kind: JobKind, id: &str) -> String {
    format!("{}{}.json", prefix(kind), encode_segment(id))
}

fn tags(rec: &JobRecord) -> Tags {
    let mut t = Tags::new();
    t.insert("pgvault".into(), "job".into());
    t.insert("kind".into(), rec.kind.as_str().into());
    t.insert("status".into(), rec.status.as_str().into());
    t
}

/// Create a record if none of that kind and id exists (how a request id is claimed once).
pub async fn create(store: &dyn BlobStore, rec: &JobRecord) -> Result<CreateOutcome> {
    let name = name(rec.kind, &rec.id);
    store
        .create(&name, Bytes::from(rec.to_json()), &tags(rec))
        .await
        .map_err(|e| e.context(format!("write job record {name:?}")))
}

/// Write a record, replacing the one there (one atomic put).
pub async fn put(store: &dyn BlobStore, rec: &JobRecord) -> Result<()> {
    let name = name(rec.kind, &rec.id);
    store
        .put(&name, Bytes::from(rec.to_json()), &tags(rec))
        .await
        .map_err(|e| e.context(format!("write job record {name:?}")))
}

/// Write a record, logging (not failing) on error: bookkeeping must not fail a restore that
/// otherwise worked, nor hide the error of one that did not. Returns whether it was written.
pub async fn put_logged(store: &dyn BlobStore, rec: &JobRecord) -> bool {
    match put(store, rec).await {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(kind = rec.kind.as_str(), id = %rec.id, status = rec.status.as_str(), error = %e, "cannot write job record");
            false
        }
    }
}

/// Read a record, if it exists.
pub async fn get(store: &dyn BlobStore, kind: JobKind, id: &str) -> Result<Option<JobRecord>> {
    let name = name(kind, id);
    if !store.exists(&name).await? {
        return Ok(None);
    }
    let bytes = store.get(&name).await?;
    JobRecord::from_json(&name, &bytes).map(Some)
}

/// Every record (of one kind, if given), oldest first. Unreadable records are skipped with a
/// warning, so one bad document does not hide the others. A kind given lists (and reads) only
/// that kind's prefix, `@jobs/<kind>/`.
pub async fn list(store: &dyn BlobStore, kind: Option<JobKind>) -> Result<Vec<JobRecord>> {
    match kind {
        Some(k) => list_kinds(store, &[k]).await,
        None => read_sorted(store, vec![PREFIX.to_string()]).await,
    }
}

/// The records of the given kinds only (each kind's prefix listed and read once), oldest first.
pub async fn list_kinds(store: &dyn BlobStore, kinds: &[JobKind]) -> Result<Vec<JobRecord>> {
    let mut prefixes: Vec<String> = kinds.iter().map(|k| prefix(*k)).collect();
    prefixes.sort();
    prefixes.dedup();
    read_sorted(store, prefixes).await
}

/// The records last written before `t` (and those whose write time the store does not give),
/// oldest first. Newer records are not read.
pub async fn list_written_before(store: &dyn BlobStore, t: OffsetDateTime) -> Result<Vec<JobRecord>> {
    read_sorted_where(store, vec![PREFIX.to_string()], |b| b.last_modified.is_none_or(|m| m < t)).await
}

/// The prefix of one kind's records: `@jobs/<kind>/`.
pub fn prefix(kind: JobKind) -> String {
    format!("{PREFIX}{}/", kind.as_str())
}

async fn read_sorted(store: &dyn BlobStore, prefixes: Vec<String>) -> Result<Vec<JobRecord>> {
    read_sorted_where(store, prefixes, |_| true).await
}

async fn read_sorted_where(
    store: &dyn BlobStore,
    prefixes: Vec<String>,
    wanted: impl Fn(&crate::seams::store::BlobInfo) -> bool,
) -> Result<Vec<JobRecord>> {
    let mut out = Vec::new();
    for prefix in prefixes {
        for blob in store.list(&prefix).await? {
            if !blob.name.ends_with(".json") || !wanted(&blob) {
                continue;
            }
            match store.get(&blob.name).await.and_then(|b| JobRecord::from_json(&blob.name, &b)) {
                Ok(r) => out.push(r),
                Err(e) => tracing::warn!(blob = %blob.name, error = %e, "skipping unreadable job record"),
            }
        }
    }
    out.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seams::store::local::LocalStore;
    use time::macros::datetime;

    #[test]
    fn debug_withholds_exported_file_urls() {
        let mut rec = JobRecord::new(JobKind::RestoreTask, "t-1", "as files", datetime!(2026-11-21 02:00:00 UTC));
        rec.detail = serde_json::json!({"report": {"files": [
            {"blob": "out/x.dump.zst", "url": "https://a.blob.core.windows.net/out/x?sv=1&sig=SECRETSIG"}]}});
        let debug = format!("{rec:?}");
        assert!(!debug.contains("SECRETSIG") && debug.contains("out/x.dump.zst"), "{debug}");
        assert!(serde_json::to_string(&rec).unwrap().contains("sig=SECRETSIG"), "the record itself keeps it");
    }

    #[tokio::test]
    async fn create_claims_once_put_replaces_and_list_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path());
        let now = datetime!(2026-11-21 02:00:00 UTC);
        let mut rec = JobRecord::new(JobKind::RestoreRequest, "req-1", "restore x", now);
        assert_eq!(create(&store, &rec).await.unwrap(), CreateOutcome::Created);
        assert_eq!(create(&store, &rec).await.unwrap(), CreateOutcome::AlreadyExists);
        rec.status = Status::Succeeded;
        rec.bytes = Some(42);
        put(&store, &rec).await.unwrap();
        let back = get(&store, JobKind::RestoreRequest, "req-1").await.unwrap().unwrap();
        assert_eq!(back, rec);
        assert!(back.is_finished());
        assert!(get(&store, JobKind::RestoreTask, "req-1").await.unwrap().is_none());
        let task = JobRecord::new(JobKind::RestoreTask, "req-1-t1", "t", now + time::Duration::seconds(1));
        put(&store, &task).await.unwrap();
        let all = list(&store, None).await.unwrap();
        assert_eq!(all.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["req-1", "req-1-t1"]);
        assert_eq!(list(&store, Some(JobKind::RestoreTask)).await.unwrap().len(), 1);
        let backup = JobRecord::new(JobKind::Backup, "b1", "b", now + time::Duration::seconds(2));
        put(&store, &backup).await.unwrap();
        // Only the kinds asked for, oldest first, each listed once.
        let some = list_kinds(&store, &[JobKind::Backup, JobKind::RestoreTask, JobKind::Backup]).await.unwrap();
        assert_eq!(some.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["req-1-t1", "b1"]);
        assert!(list_kinds(&store, &[JobKind::Drill]).await.unwrap().is_empty());
        assert_eq!(list(&store, None).await.unwrap().len(), 3);
        assert!(name(JobKind::RestoreTask, "x").starts_with(PREFIX));
        assert_eq!(store.tags(&name(JobKind::RestoreRequest, "req-1")).await.unwrap()["status"], "succeeded");
    }
}
