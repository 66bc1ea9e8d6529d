//! The one wrapper every kind of job runs in: it starts the job record, runs the job, finishes
//! the record with what the run did (also when it failed), and alerts on a failure that will
//! not be retried. Backups, restore tasks, drills, retention, verify and pgBackRest rotation all
//! end here, so no kind of job can fail silently, and none alerts twice.
//!
//! Rules:
//! - A failure is retried when its error is transient and the host will deliver the message
//!   again (`Alerting::last_attempt` is false). Everything else alerts, once, with the kind the
//!   caller names.
//! - The record keeps the run's `detail` whatever the outcome: a failed retention run still
//!   lists what it removed before it failed.
//! - Writing the record is best effort (logged): bookkeeping never changes a job's outcome, and
//!   neither does the alert. [`track_recorded`] says whether the final record was written, so a
//!   queued job can have the host deliver it again rather than lose its record.

use crate::config::context::Ctx;
use crate::domain::error::{Error, Result};
use crate::monitor::records::{self, Detail, JobKind, JobRecord};
use crate::seams::alerts::{Alert, AlertKind, Alerter};
use crate::seams::store::BlobStore;
use std::future::Future;
use time::OffsetDateTime;

/// What a run did: its result, and the record's detail (what it did, even on failure).
pub struct Run<T> {
    pub result: Result<T>,
    pub detail: Detail,
    /// Bytes the run moved (a backup's stored bytes), for the record.
    pub bytes: Option<u64>,
}

impl<T> Run<T> {
    pub fn ok(value: T, detail: impl Into<Detail>) -> Self {
        Run { result: Ok(value), detail: detail.into(), bytes: None }
    }

    pub fn failed(error: Error, detail: impl Into<Detail>) -> Self {
        Run { result: Err(error), detail: detail.into(), bytes: None }
    }

    pub fn with_bytes(mut self, bytes: Option<u64>) -> Self {
        self.bytes = bytes;
        self
    }
}

/// How a failure of this job is reported.
#[derive(Debug, Clone, Copy)]
pub struct Alerting {
    pub kind: AlertKind,
    /// No delivery of this job comes after this one (a timer run, the CLI, the last dequeue).
    pub last_attempt: bool,
    /// A person at a terminal runs it (`pgvault restore`) and reads its failure there, once:
    /// the record says failed, and nobody else needs telling.
    pub interactive: bool,
}

impl Alerting {
    /// A failure alerts whatever its kind: nothing will run this job again.
    pub fn once(kind: AlertKind) -> Self {
        Alerting { kind, last_attempt: true, interactive: false }
    }

    /// A queued job's delivery: a transient failure is retried unless this is the last one.
    pub fn delivery(kind: AlertKind, last_attempt: bool) -> Self {
        Alerting { kind, last_attempt, interactive: false }
    }
}

/// Where records and alerts go.
#[derive(Clone, Copy)]
pub struct Monitor<'a> {
    pub store: Option<&'a dyn BlobStore>,
    pub alerter: &'a Alerter,
}

impl<'a> Monitor<'a> {
    pub fn of(ctx: &'a Ctx) -> Self {
        Monitor { store: Some(ctx.store.as_ref()), alerter: ctx.alerter.as_ref() }
    }
}

/// Run `run` as the job `rec` describes: record it running, run it, record how it ended, alert
/// if it failed for good. Returns the run's result and the final record.
pub async fn track<T>(
    monitor: Monitor<'_>,
    rec: JobRecord,
    alerting: Alerting,
    run: impl Future<Output = Run<T>>,
) -> (Result<T>, JobRecord) {
    let (result, rec, _) = track_recorded(monitor, rec, alerting, run).await;
    (result, rec)
}

/// [`track`], also saying whether the final record was written: a queued job whose record
/// could not be written can ask the host for another delivery, which writes it, instead of
/// losing it when the host deletes the message.
pub async fn track_recorded<T>(
    monitor: Monitor<'_>,
    mut rec: JobRecord,
    alerting: Alerting,
    run: impl Future<Output = Run<T>>,
) -> (Result<T>, JobRecord, bool) {
    rec.start_attempt(OffsetDateTime::now_utc());
    if let Some(store) = monitor.store {
        records::put_logged(store, &rec).await;
    }
    let Run { result, detail, bytes } = run.await;
    let outcome = result.as_ref().map(|_| ()).map_err(clone_error);
    let recorded = conclude(monitor, &mut rec, outcome, detail, bytes, alerting).await;
    (result, rec, recorded)
}

/// Finish `rec` from an outcome without a run of `track` around it (a rejected message, a
/// rotation whose record is written once), with the same rules. Returns whether the record was
/// written (true without a store).
pub async fn conclude(
    monitor: Monitor<'_>,
    rec: &mut JobRecord,
    outcome: std::result::Result<(), Error>,
    detail: impl Into<Detail>,
    bytes: Option<u64>,
    alerting: Alerting,
) -> bool {
    let now = OffsetDateTime::now_utc();
    let alert = match &outcome {
        Ok(()) => {
            rec.succeed(now, detail, bytes);
            false
        }
        Err(e) => {
            let will_retry = !e.is_permanent() && !alerting.last_attempt;
            rec.fail(now, e.to_string(), will_retry, detail, bytes);
            !will_retry && !alerting.interactive
        }
    };
    let recorded = match monitor.store {
        Some(store) => records::put_logged(store, rec).await,
        None => true,
    };
    if alert {
        monitor.alerter.raise(&failed_alert(rec, alerting.kind)).await;
    }
    recorded
}

/// Record a queue message that can never be run (it does not parse as its kind of job) as a
/// failed job, and alert once. The record is named after the message (or, without an id, a
/// fresh one, so rejected messages never overwrite each other's record).
pub async fn reject(monitor: Monitor<'_>, kind: JobKind, message_id: &str, summary: &str, why: &Error) {
    let now = OffsetDateTime::now_utc();
    let id = if message_id.is_empty() {
        format!("rejected-{}", uuid::Uuid::new_v4().simple())
    } else {
        format!("rejected-{}", crate::domain::layout::encode_segment(message_id))
    };
    let mut rec = JobRecord::new(kind, &id, summary, now);
    let outcome = Err(Error::permanent(format!("rejected: {why}")));
    conclude(monitor, &mut rec, outcome, Detail::None, None, Alerting::once(AlertKind::JobFailed)).await;
}

/// The alert for a failed job record.
pub fn failed_alert(rec: &JobRecord, kind: AlertKind) -> Alert {
    Alert {
        kind,
        subject: rec.target.clone().unwrap_or_else(|| rec.id.clone()),
        summary: format!("{} job {} failed: {}", rec.kind.as_str(), rec.id, rec.reason.as_deref().unwrap_or("failed")),
        job_id: Some(rec.id.clone()),
    }
}

/// `Error` is not `Clone` (it owns its chain of context): keep what the record needs.
fn clone_error(e: &Error) -> Error {
    if e.is_permanent() { Error::permanent(e.to_string()) } else { Error::transient(e.to_string()) }
}
