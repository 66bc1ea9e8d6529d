//! The one structured event a finished job emits, `job finished` on the tracing target
//! [`TARGET`]: the feed of the Azure Monitor workbook and of the log alerts (see DESIGN.md,
//! "The job event"). Its fields mirror Azure Backup's job table (status, failure code, duration,
//! data transferred, server, database, kind, trigger) plus what the views and alerts need.
//!
//! Rules:
//! - One event per job that ended: a success, or a failure nothing will run again under the same
//!   job id. A failed delivery the host delivers again emits nothing (its redelivery ends the
//!   job); a delivery that finds its job already succeeded emits nothing either.
//! - Records end in [`crate::monitor::tracked`] (`track`, `conclude`, and `follow` for a
//!   restore request, which ends with its last task), which calls [`JobEvent::of`] and
//!   [`JobEvent::emit`]; the scheduler run, which has no record, builds its per-server events.
//! - [`FIELDS`] is the list of field names; the emitting code records exactly those (a test
//!   checks it), and `tests/infra.rs` holds the workbook's and the alerts' queries to it.
//! - No secret: the reason is the record's, which is redacted where it is made.

use crate::domain::error::Error;
use crate::domain::records::{JobRecord, Status};
use time::OffsetDateTime;

/// The tracing target of the event (a JSON log line's `target`).
pub const TARGET: &str = "pgvault::job";
/// The event's message (a JSON log line's `message`).
pub const MESSAGE: &str = "job finished";

/// Every field the event can carry, in the order [`JobEvent::emit`] records them. A field
/// without a value is left out of the line.
pub const FIELDS: &[&str] = &[
    "job_id",
    "kind",
    "status",
    "failure_code",
    "reason",
    "duration_seconds",
    "data_transferred_mb",
    "server",
    "database",
    "trigger",
    "attempts",
    "will_retry",
    "rpo_due_at",
    "restore_seconds",
    "removed",
    "kept",
    "databases",
    "enqueued",
];

/// The keys a JSON log line has besides the event's fields (tracing-subscriber's JSON format
/// with flattened events; `span`/`spans` when inside one).
pub const ENVELOPE: &[&str] = &["timestamp", "level", "target", "message"];

/// `kind` of the scheduler's per-server event (the other kinds are the job records' kinds).
pub const SCHEDULER_KIND: &str = "scheduler";

/// Failure codes (`failure_code`), by what went wrong.
pub mod code {
    /// Trying again cannot succeed (bad input, a refusal, a missing tool...).
    pub const PERMANENT: &str = "permanent";
    /// A transient failure that nothing retries under the same job id (the last delivery).
    pub const TRANSIENT: &str = "transient";
    /// A message or request that can never run (malformed, unknown server, impossible plan).
    pub const REJECTED: &str = "rejected";
    /// A restore request whose tasks failed.
    pub const TASKS_FAILED: &str = "tasks-failed";
    /// A scheduler run enqueued no database backup of a server that has databases.
    pub const NOTHING_ENQUEUED: &str = "nothing-enqueued";
    /// A scheduler run could not send some of a server's jobs.
    pub const ENQUEUE_FAILED: &str = "enqueue-failed";
}

/// The failure code of an error a job ended with.
pub fn failure_code(e: &Error) -> &'static str {
    if e.message().starts_with("rejected: ") {
        code::REJECTED
    } else if e.is_permanent() {
        code::PERMANENT
    } else {
        code::TRANSIENT
    }
}

/// One finished job, as the event carries it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobEvent {
    pub job_id: String,
    /// The record's kind (`backup`, `restore-task`, ...), or [`SCHEDULER_KIND`].
    pub kind: String,
    /// `succeeded` or `failed`.
    pub status: String,
    pub failure_code: Option<&'static str>,
    /// Why it failed (the record's reason, at most [`REASON_MAX`] bytes).
    pub reason: Option<String>,
    /// The last attempt's run time, start to end.
    pub duration_seconds: Option<f64>,
    /// Bytes moved (a backup's stored bytes, a restore's bytes read), in MiB.
    pub data_transferred_mb: Option<f64>,
    pub server: Option<String>,
    /// Absent for a server's globals and for jobs over more than one database.
    pub database: Option<String>,
    /// `timer`, `queue`, `http` or `cli`.
    pub trigger: Option<String>,
    pub attempts: u32,
    pub will_retry: Option<bool>,
    /// A succeeded backup: by when the next one must have succeeded (its schedule's next run
    /// after this one was requested, plus the RPO margin), RFC 3339.
    pub rpo_due_at: Option<String>,
    /// A drill: the restore's time (RTO evidence).
    pub restore_seconds: Option<f64>,
    /// Retention: backups removed, and kept.
    pub removed: Option<u64>,
    pub kept: Option<u64>,
    /// The scheduler: the server's databases (besides its maintenance database), and the
    /// database backups enqueued for it.
    pub databases: Option<u64>,
    pub enqueued: Option<u64>,
}

/// The longest reason an event carries (the record keeps it whole).
pub const REASON_MAX: usize = 2048;

impl JobEvent {
    /// The event of a record that ended; `failure_code` says why a failed one failed.
    pub fn of(rec: &JobRecord, failure_code: Option<&'static str>) -> JobEvent {
        let duration = match (rec.started_at, rec.finished_at) {
            (Some(s), Some(f)) => Some(round3((f - s).as_seconds_f64().max(0.0))),
            _ => None,
        };
        let detail = &rec.detail;
        let retention = detail.retention();
        JobEvent {
            job_id: rec.id.clone(),
            kind: rec.kind.as_str().to_string(),
            status: rec.status.as_str().to_string(),
            failure_code: (rec.status == Status::Failed).then(|| match detail.restore_request() {
                // A request its plan refused: it can never run as posted.
                Some(r) if r.rejected => code::REJECTED,
                _ => failure_code.unwrap_or(code::PERMANENT),
            }),
            reason: rec.reason.as_deref().map(cut),
            duration_seconds: duration,
            data_transferred_mb: rec.bytes.map(mib),
            server: rec.server.clone(),
            database: rec.database.clone(),
            trigger: rec.trigger.clone(),
            attempts: rec.attempts,
            will_retry: detail.will_retry(),
            rpo_due_at: detail.backup().and_then(|b| b.rpo_due_at).filter(|_| rec.status == Status::Succeeded).map(rfc),
            restore_seconds: detail.drill().and_then(|d| d.restore_seconds).map(round3),
            removed: retention.map(|r| r.executed.removed.len() as u64),
            kept: retention.map(|r| r.executed.kept as u64),
            databases: None,
            enqueued: None,
        }
    }

    /// Write the event: one INFO line on [`TARGET`] (a JSON line under the Functions host).
    pub fn emit(&self) {
        tracing::info!(
            target: "pgvault::job",
            job_id = %self.job_id,
            kind = %self.kind,
            status = %self.status,
            failure_code = self.failure_code,
            reason = self.reason.as_deref(),
            duration_seconds = self.duration_seconds,
            data_transferred_mb = self.data_transferred_mb,
            server = self.server.as_deref(),
            database = self.database.as_deref(),
            trigger = self.trigger.as_deref(),
            attempts = self.attempts,
            will_retry = self.will_retry,
            rpo_due_at = self.rpo_due_at.as_deref(),
            restore_seconds = self.restore_seconds,
            removed = self.removed,
            kept = self.kept,
            databases = self.databases,
            enqueued = self.enqueued,
            "job finished"
        );
    }
}

/// A fresh id for a run that has no queue message of its own (retention, verify, a drill, a
/// scheduler run's server): `<stamp>-<8 hex>`.
pub fn run_id(now: OffsetDateTime) -> String {
    format!("{}-{}", crate::domain::layout::stamp(now), &uuid::Uuid::new_v4().simple().to_string()[..8])
}

fn mib(bytes: u64) -> f64 {
    round3(bytes as f64 / 1_048_576.0)
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn rfc(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

fn cut(reason: &str) -> String {
    if reason.len() <= REASON_MAX {
        return reason.to_string();
    }
    let mut end = REASON_MAX;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &reason[..end])
}

/// Test help: the `job finished` events emitted while a closure runs, each as its fields
/// (name → value as text), captured by a tracing subscriber of this thread only.
#[doc(hidden)]
pub mod capture {
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};
    use tracing::field::{Field, Visit};
    use tracing_subscriber::layer::{Context, SubscriberExt};

    /// One event's fields.
    pub type Fields = BTreeMap<String, String>;

    /// The events recorded so far (shared with the subscriber).
    #[derive(Clone, Default)]
    pub struct Events(Arc<Mutex<Vec<Fields>>>);

    impl Events {
        pub fn all(&self) -> Vec<Fields> {
            self.0.lock().unwrap().clone()
        }

        /// The events of one kind.
        pub fn of_kind(&self, kind: &str) -> Vec<Fields> {
            self.all().into_iter().filter(|e| e.get("kind").map(String::as_str) == Some(kind)).collect()
        }
    }

    struct Layer(Events);

    struct Collect<'a>(&'a mut Fields);

    impl Visit for Collect<'_> {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            self.0.insert(field.name().to_string(), format!("{value:?}"));
        }
        fn record_str(&mut self, field: &Field, value: &str) {
            self.0.insert(field.name().to_string(), value.to_string());
        }
    }

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Layer {
        fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
            if event.metadata().target() != super::TARGET {
                return;
            }
            let mut fields = Fields::new();
            event.record(&mut Collect(&mut fields));
            self.0.0.lock().unwrap().push(fields);
        }
    }

    /// Record the events of this thread until the guard is dropped (a current-thread runtime
    /// runs every task of a test on it).
    pub fn start() -> (Events, tracing::subscriber::DefaultGuard) {
        let events = Events::default();
        let subscriber = tracing_subscriber::registry().with(Layer(events.clone()));
        (events, tracing::subscriber::set_default(subscriber))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::records::{BackupDetail, DrillDetail, Executed, JobKind, RetentionDetail};
    use time::macros::datetime;

    const T0: OffsetDateTime = datetime!(2026-11-21 02:00:00 UTC);

    #[test]
    fn the_emitted_fields_are_exactly_the_listed_ones() {
        // Every field set: the line carries each listed name, and nothing else.
        let full = JobEvent {
            job_id: "j".into(),
            kind: "backup".into(),
            status: "failed".into(),
            failure_code: Some(code::PERMANENT),
            reason: Some("r".into()),
            duration_seconds: Some(1.0),
            data_transferred_mb: Some(2.0),
            server: Some("s".into()),
            database: Some("d".into()),
            trigger: Some("timer".into()),
            attempts: 1,
            will_retry: Some(false),
            rpo_due_at: Some("2026-11-22T02:30:00Z".into()),
            restore_seconds: Some(3.0),
            removed: Some(1),
            kept: Some(2),
            databases: Some(3),
            enqueued: Some(0),
        };
        let (events, guard) = capture::start();
        full.emit();
        JobEvent { job_id: "k".into(), kind: "verify".into(), status: "succeeded".into(), ..Default::default() }.emit();
        drop(guard);
        let all = events.all();
        assert_eq!(all.len(), 2);
        let mut names: Vec<&str> = all[0].keys().map(String::as_str).filter(|k| *k != "message").collect();
        let mut listed = FIELDS.to_vec();
        names.sort();
        listed.sort();
        assert_eq!(names, listed, "emit() and FIELDS disagree");
        assert_eq!(all[0]["message"], MESSAGE);
        // Fields without a value are left out.
        let sparse: Vec<&str> = all[1].keys().map(String::as_str).collect();
        assert_eq!(sparse, ["attempts", "job_id", "kind", "message", "status"]);
    }

    #[test]
    fn a_record_gives_its_fields() {
        let mut rec = JobRecord::new(JobKind::Backup, "job-1", "back up prod/app", T0);
        rec.server = Some("prod".into());
        rec.database = Some("app".into());
        rec.trigger = Some("timer".into());
        rec.start_attempt(T0);
        let due = datetime!(2026-11-22 02:30:00 UTC);
        let detail = BackupDetail { rpo_due_at: Some(due), ..Default::default() };
        rec.succeed(T0 + time::Duration::milliseconds(2500), detail, Some(3 * 1_048_576));
        let e = JobEvent::of(&rec, None);
        assert_eq!((e.job_id.as_str(), e.kind.as_str(), e.status.as_str()), ("job-1", "backup", "succeeded"));
        assert_eq!((e.duration_seconds, e.data_transferred_mb, e.attempts), (Some(2.5), Some(3.0), 1));
        assert_eq!(
            (e.server.as_deref(), e.database.as_deref(), e.trigger.as_deref()),
            (Some("prod"), Some("app"), Some("timer"))
        );
        assert_eq!((e.failure_code, e.reason.as_deref()), (None, None));
        assert_eq!(e.rpo_due_at.as_deref(), Some("2026-11-22T02:30:00Z"));
        // A failure: its code and (cut) reason, no RPO deadline.
        let long = "x".repeat(REASON_MAX + 10);
        rec.fail(T0, long, false, BackupDetail { rpo_due_at: Some(due), ..Default::default() }, None);
        let e = JobEvent::of(&rec, Some(code::TRANSIENT));
        assert_eq!((e.status.as_str(), e.failure_code, e.will_retry), ("failed", Some("transient"), Some(false)));
        assert!(e.reason.as_ref().unwrap().len() <= REASON_MAX + 3 && e.reason.as_ref().unwrap().ends_with('…'));
        assert_eq!(e.rpo_due_at, None);
        // A drill's restore time; retention's counts.
        let mut drill = JobRecord::new(JobKind::Drill, "d", "drill", T0);
        drill.succeed(T0, DrillDetail { restore_seconds: Some(12.3456), ..Default::default() }, None);
        assert_eq!(JobEvent::of(&drill, None).restore_seconds, Some(12.346));
        let mut ret = JobRecord::new(JobKind::Retention, "r", "retention", T0);
        let executed = Executed { removed: vec!["a".into(), "b".into()], kept: 5, ..Default::default() };
        ret.succeed(T0, RetentionDetail { executed, ..Default::default() }, None);
        let e = JobEvent::of(&ret, None);
        assert_eq!((e.removed, e.kept), (Some(2), Some(5)));
        // A request its plan refused is rejected, whatever the error's kind.
        let mut req = JobRecord::new(JobKind::RestoreRequest, "q", "restore", T0);
        let refused = crate::domain::records::RequestDetail { rejected: true, ..Default::default() };
        req.fail(T0, "no backup before the time", false, refused, None);
        assert_eq!(JobEvent::of(&req, Some(code::PERMANENT)).failure_code, Some(code::REJECTED));
    }

    #[test]
    fn failure_codes_follow_the_error() {
        assert_eq!(failure_code(&Error::permanent("rejected: not json")), code::REJECTED);
        assert_eq!(failure_code(&Error::permanent("no pg_dump")), code::PERMANENT);
        assert_eq!(failure_code(&Error::transient("connection reset")), code::TRANSIENT);
    }
}
