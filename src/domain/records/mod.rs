//! Job records as types: what each kind of job records (its [`Detail`]), the states a record
//! moves through and the transitions between them. Pure: [`crate::monitor::records`] stores
//! them; the features fill them in.
//!
//! A record is a JSON document (see DESIGN.md, "Job records"):
//! `{format, format_version, kind, id, parent, status, reason, requested_by, summary, created_at,
//! updated_at, started_at, finished_at, attempts, bytes, target, trigger, server, database,
//! detail}`. Its `detail` is read as the type of its `kind` ([`Detail::read`]); a detail that
//! does not fit (written by a newer pgvault, or damaged) is kept as it was ([`Detail::Other`]) so
//! that every record stays readable.

mod detail;

pub use detail::*;

use crate::domain::error::{Error, Result};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

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
    /// One run of `pgvault doctor` (the `doctor` timer, or the CLI): its findings.
    Doctor,
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
            JobKind::Doctor => "doctor",
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
            "doctor" => Ok(JobKind::Doctor),
            other => Err(Error::permanent(format!("unknown job kind {other:?}"))
                .with_hint("use backup, restore-request, restore-task, retention, verify, drill, doctor, pgbackrest-sas or pgbackrest-freshness")),
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

    /// Nothing more will happen to the job unless it is posted again.
    pub fn is_finished(self) -> bool {
        matches!(self, Status::Succeeded | Status::Failed)
    }
}

/// One job's status document. Its secrets (the read-only URLs of exported files) are
/// [`crate::domain::secret::SecretUrl`]s: `Debug` never shows them, and a view for others
/// ([`JobRecord::withhold_secrets`]) replaces them with a note.
///
/// Serialized as the derive says, except that `detail` is read as the type of `kind` (the
/// `Deserialize` impl below).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(remote = "Self")]
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
    /// The inventory server it works on (a pgBackRest target's name for its jobs), when one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// The database it works on, when one (absent for a server's globals).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// What the job did, typed by kind (see [`Detail`]).
    #[serde(default)]
    pub detail: Detail,
}

impl Serialize for JobRecord {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        JobRecord::serialize(self, s)
    }
}

impl<'de> Deserialize<'de> for JobRecord {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let mut rec = JobRecord::deserialize(d)?;
        rec.detail = std::mem::take(&mut rec.detail).typed(rec.kind);
        Ok(rec)
    }
}

impl JobRecord {
    /// A new `queued` record with no detail yet.
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
            server: None,
            database: None,
            detail: Detail::None,
        }
    }

    /// A new attempt of the job starts now: running, no reason, no end yet, one more attempt.
    /// The detail stays (a retried task keeps its task, a rehydration wait its start).
    pub fn start_attempt(&mut self, now: OffsetDateTime) {
        self.status = Status::Running;
        self.reason = None;
        self.started_at = Some(now);
        self.finished_at = None;
        self.updated_at = now;
        self.attempts += 1;
    }

    /// The job ended well: `detail` says what it did; `bytes` (if known) what it moved.
    pub fn succeed(&mut self, now: OffsetDateTime, detail: impl Into<Detail>, bytes: Option<u64>) {
        self.end(now, Status::Succeeded, None, detail.into(), bytes);
    }

    /// The job failed: why, whether the host runs it again, and `detail`: what it did before it
    /// failed (removed backups, verified ones, the task it ran), which the record keeps.
    pub fn fail(
        &mut self,
        now: OffsetDateTime,
        reason: impl Into<String>,
        will_retry: bool,
        detail: impl Into<Detail>,
        bytes: Option<u64>,
    ) {
        let mut detail = detail.into().or_empty(self.kind);
        detail.set_will_retry(will_retry);
        self.end(now, Status::Failed, Some(reason.into()), detail, bytes);
    }

    /// A restore task waits for its archived backup: `detail` holds the wait's start and blobs.
    pub fn wait_for_rehydration(&mut self, now: OffsetDateTime, reason: impl Into<String>, detail: TaskDetail) {
        self.status = Status::RehydrationPending;
        self.reason = Some(reason.into());
        self.updated_at = now;
        self.detail = detail.into();
    }

    /// A request follows its tasks: `status` is theirs taken together, `bytes` their sum and
    /// `reason` their failures. Starts when it leaves `queued`, ends when it is finished.
    pub fn follow(&mut self, now: OffsetDateTime, status: Status, bytes: u64, reason: Option<String>) {
        if self.status == Status::Queued && status != Status::Queued {
            self.started_at = Some(now);
        }
        self.status = status;
        self.bytes = Some(bytes);
        self.updated_at = now;
        if status.is_finished() {
            self.finished_at = Some(now);
        }
        self.reason = reason;
    }

    fn end(&mut self, now: OffsetDateTime, status: Status, reason: Option<String>, detail: Detail, bytes: Option<u64>) {
        debug_assert!(detail.fits(self.kind), "a {} record given the detail {detail:?}", self.kind.as_str());
        self.status = status;
        self.reason = reason;
        self.updated_at = now;
        self.finished_at = Some(now);
        self.bytes = bytes.or(self.bytes);
        self.detail = detail;
    }

    /// The record as shown to readers other than its operator (the `jobs` function): every
    /// secret URL is replaced by a note saying how the operator reads it, and a detail this
    /// pgvault cannot read (it might hold one) is replaced by a note too.
    pub fn withhold_secrets(&mut self) {
        let note = format!("withheld: see `pgvault jobs --json --show-urls --id {}`", self.id);
        self.detail.withhold_secrets(&note);
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
        self.status.is_finished()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::restore::{ExportedFile, TaskReport};
    use crate::domain::secret::{Secret, SecretUrl};
    use serde_json::json;
    use time::macros::datetime;

    const T0: OffsetDateTime = datetime!(2026-11-21 02:00:00 UTC);
    const T1: OffsetDateTime = datetime!(2026-11-21 02:05:00 UTC);

    fn as_files(id: &str) -> JobRecord {
        let url = "https://a.blob.core.windows.net/out/x?sv=1&sig=SECRETSIG";
        let file = ExportedFile {
            container: "out".into(),
            blob: "out/x.dump.zst".into(),
            bytes: 1,
            sha256: "ab".into(),
            url: SecretUrl::new(Secret::new(url)),
            expires_at: T1,
        };
        let mut rec = JobRecord::new(JobKind::RestoreTask, id, "as files", T0);
        let report = TaskReport { files: vec![file], ..Default::default() };
        rec.succeed(T1, TaskDetail { report: Some(report), ..Default::default() }, Some(1));
        rec
    }

    #[test]
    fn an_attempt_starts_running_and_counts() {
        let mut rec = JobRecord::new(JobKind::Backup, "b1", "back up", T0);
        assert_eq!((rec.status, rec.attempts, rec.detail.clone()), (Status::Queued, 0, Detail::None));
        rec.fail(T0, "connection refused", true, Detail::None, None);
        rec.start_attempt(T1);
        assert_eq!((rec.status, rec.attempts, rec.reason.as_deref()), (Status::Running, 1, None));
        assert_eq!((rec.started_at, rec.finished_at, rec.updated_at), (Some(T1), None, T1));
        rec.start_attempt(T1);
        assert_eq!(rec.attempts, 2);
    }

    #[test]
    fn success_keeps_the_detail_and_the_bytes() {
        let mut rec = JobRecord::new(JobKind::Backup, "b1", "back up", T0);
        rec.start_attempt(T0);
        rec.bytes = Some(7);
        let detail = BackupDetail { backup: Some("prod/app/x".into()), stored_bytes: Some(9), ..Default::default() };
        rec.succeed(T1, detail.clone(), None);
        assert_eq!((rec.status, rec.finished_at, rec.reason.clone()), (Status::Succeeded, Some(T1), None));
        assert_eq!(rec.bytes, Some(7), "bytes not given keep the known ones");
        assert_eq!(rec.detail.backup(), Some(&detail));
        assert_eq!(rec.detail.will_retry(), None, "a success says nothing of retries");
        rec.succeed(T1, detail, Some(9));
        assert_eq!(rec.bytes, Some(9));
        assert!(rec.is_finished());
    }

    #[test]
    fn a_failure_keeps_what_was_done_and_says_whether_it_is_retried() {
        let mut rec = JobRecord::new(JobKind::Retention, "r1", "retention", T0);
        rec.start_attempt(T0);
        let executed = Executed { removed: vec!["prod/app/a".into(), "prod/app/b".into()], ..Default::default() };
        rec.fail(T1, "remove data: 503", false, RetentionDetail { executed, ..Default::default() }, None);
        assert_eq!(
            (rec.status, rec.reason.as_deref(), rec.finished_at),
            (Status::Failed, Some("remove data: 503"), Some(T1))
        );
        let d = rec.detail.retention().unwrap();
        assert_eq!(d.executed.removed, ["prod/app/a", "prod/app/b"], "the removals before the failure");
        assert_eq!(d.will_retry, Some(false));
        // No detail: the kind's empty one, so the record still says whether it is retried.
        let mut rec = JobRecord::new(JobKind::Backup, "b1", "back up", T0);
        rec.fail(T1, "connection refused", true, Detail::None, None);
        assert_eq!(serde_json::to_value(&rec.detail).unwrap(), json!({"will_retry": true}));
        assert!(rec.detail.backup().is_some());
        // A detail this pgvault cannot read keeps what it holds.
        let mut rec = JobRecord::new(JobKind::Backup, "b2", "back up", T0);
        rec.fail(T1, "x", false, Detail::Other(json!([1, 2])), None);
        assert_eq!(serde_json::to_value(&rec.detail).unwrap(), json!({"will_retry": false, "detail": [1, 2]}));
    }

    #[test]
    fn a_rehydration_wait_is_not_an_end() {
        let mut rec = JobRecord::new(JobKind::RestoreTask, "t1", "restore", T0);
        rec.start_attempt(T0);
        let detail = TaskDetail { rehydration_started_at: Some(T0), blobs: vec!["x".into()], ..Default::default() };
        rec.wait_for_rehydration(T1, "rehydration pending", detail);
        assert_eq!((rec.status, rec.reason.as_deref()), (Status::RehydrationPending, Some("rehydration pending")));
        assert!(!rec.is_finished() && rec.finished_at.is_none());
        assert_eq!(TaskDetail::of(&rec).rehydration_started_at, Some(T0));
        assert_eq!(rec.updated_at, T1);
    }

    #[test]
    fn a_request_follows_its_tasks() {
        let mut rec = JobRecord::new(JobKind::RestoreRequest, "req-1", "restore", T0);
        rec.follow(T0, Status::Queued, 0, None);
        assert_eq!((rec.status, rec.started_at), (Status::Queued, None));
        rec.follow(T0, Status::Running, 5, None);
        assert_eq!(
            (rec.status, rec.started_at, rec.finished_at, rec.bytes),
            (Status::Running, Some(T0), None, Some(5))
        );
        rec.follow(T1, Status::Failed, 9, Some("task req-1-1: boom".into()));
        assert_eq!((rec.started_at, rec.finished_at), (Some(T0), Some(T1)), "started once, ended now");
        assert_eq!(rec.reason.as_deref(), Some("task req-1-1: boom"));
    }

    #[test]
    fn secret_urls_never_in_debug_kept_in_the_record_withheld_for_others() {
        let rec = as_files("t-1");
        let debug = format!("{rec:?}");
        assert!(!debug.contains("SECRETSIG") && !debug.contains("sig=") && debug.contains("out/x.dump.zst"), "{debug}");
        let json = String::from_utf8(rec.to_json()).unwrap();
        assert!(json.contains("sig=SECRETSIG"), "the record itself keeps it");
        let back = JobRecord::from_json("t", json.as_bytes()).unwrap();
        assert_eq!(back, rec);
        let mut shown = rec.clone();
        shown.withhold_secrets();
        let json = serde_json::to_value(&shown).unwrap();
        assert!(!json.to_string().contains("SECRETSIG"), "{json}");
        assert_eq!(
            json["detail"]["report"]["files"][0]["url"],
            "withheld: see `pgvault jobs --json --show-urls --id t-1`"
        );
        assert_eq!(json["detail"]["report"]["files"][0]["blob"], "out/x.dump.zst");
        assert_eq!(shown.detail.restore_task().unwrap().report.as_ref().unwrap().files[0].url.expose(), None);
        // A withheld view reads back as withheld, never as a URL.
        let again: JobRecord = serde_json::from_value(json).unwrap();
        assert_eq!(again, shown);
        // A detail this pgvault cannot read is withheld whole (it might hold a secret).
        let mut odd = JobRecord::new(JobKind::RestoreTask, "t-2", "?", T0);
        odd.detail = Detail::Other(json!({"report": {"files": "https://x/?sig=OTHERSIG"}}));
        odd.withhold_secrets();
        assert!(!serde_json::to_string(&odd).unwrap().contains("OTHERSIG"));
    }

    #[test]
    fn details_that_do_not_fit_are_kept_and_unknown_fields_survive() {
        let text = |detail: serde_json::Value| {
            json!({"format": FORMAT_NAME, "format_version": 1, "kind": "backup", "id": "b1", "status": "succeeded",
                "summary": "s", "created_at": "2026-11-21T02:00:00Z", "updated_at": "2026-11-21T02:00:00Z",
                "detail": detail})
            .to_string()
        };
        // A newer pgvault's field: read, and written back.
        let rec =
            JobRecord::from_json("b", text(json!({"backup": "prod/app/x", "checksum_ok": true})).as_bytes()).unwrap();
        assert_eq!(rec.detail.backup().unwrap().backup.as_deref(), Some("prod/app/x"));
        let out: serde_json::Value = serde_json::from_slice(&rec.to_json()).unwrap();
        assert_eq!(out["detail"], json!({"backup": "prod/app/x", "checksum_ok": true}));
        // A field of another type: the record still reads, its detail kept whole.
        let odd = json!({"backup": 42});
        let rec = JobRecord::from_json("b", text(odd.clone()).as_bytes()).unwrap();
        assert_eq!(rec.detail, Detail::Other(odd.clone()));
        let out: serde_json::Value = serde_json::from_slice(&rec.to_json()).unwrap();
        assert_eq!(out["detail"], odd);
        // Nothing yet.
        let rec = JobRecord::from_json("b", text(serde_json::Value::Null).as_bytes()).unwrap();
        assert_eq!(rec.detail, Detail::None);
        // A detail is read as its record's kind, not guessed from its fields.
        assert!(Detail::read(JobKind::Verify, json!({"backup": "x"})).verify().is_some());
        assert!(Detail::read(JobKind::Verify, json!({"backup": "x"})).backup().is_none());
        assert!(!Detail::from(VerifyDetail::default()).fits(JobKind::Backup));
    }
}
