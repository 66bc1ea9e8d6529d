//! Job records as types: what each kind of job records (its [`Detail`]), the states a record
//! moves through and the transitions between them. Pure: [`crate::monitor::records`] stores
//! them; the features fill them in.
//!
//! A record is a JSON document (see DESIGN.md, "Job records"):
//! `{format, format_version, kind, id, parent, status, reason, requested_by, summary, created_at,
//! updated_at, started_at, finished_at, attempts, bytes, target, trigger, detail}`. Its `detail`
//! is read as the type of its `kind` ([`Detail::read`]); a detail that does not fit (written by a
//! newer pgvault, or damaged) is kept as it was ([`Detail::Other`]) so that every record stays
//! readable.

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
        let note = format!("withheld: see `pgvault jobs --json --id {}`", self.id);
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
