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
//! - A job that ended (succeeded, or failed with no redelivery of the same job to come) emits its
//!   one `job finished` event ([`crate::monitor::event`]); a delivery that only finds its job
//!   already succeeded emits none.

use crate::config::context::Ctx;
use crate::domain::error::{Error, Result};
use crate::monitor::event;
use crate::monitor::records::{self, Detail, JobKind, JobRecord, Status};
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
    /// A retried failure runs again under the same job id (a queue message delivered again),
    /// so the job has not ended; otherwise the retry is another job (the next timer run).
    pub redelivered: bool,
}

impl Alerting {
    /// A failure alerts whatever its kind: nothing will run this job again.
    pub fn once(kind: AlertKind) -> Self {
        Alerting { kind, last_attempt: true, interactive: false, redelivered: false }
    }

    /// A queued job's delivery: a transient failure is retried unless this is the last one.
    pub fn delivery(kind: AlertKind, last_attempt: bool) -> Self {
        Alerting { kind, last_attempt, interactive: false, redelivered: true }
    }

    /// A timer's job whose transient failure the next timer run retries (as another job): it
    /// does not alert, and its record ends all the same.
    pub fn next_run(kind: AlertKind) -> Self {
        Alerting { kind, last_attempt: false, interactive: false, redelivered: false }
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
    // A delivery of a job that had already succeeded (the host delivered its message again)
    // only confirms it: the job's event was emitted when it ended.
    let succeeded_before = rec.status == Status::Succeeded;
    rec.start_attempt(OffsetDateTime::now_utc());
    if let Some(store) = monitor.store {
        records::put_logged(store, &rec).await;
    }
    let Run { result, detail, bytes } = run.await;
    let ended = Run { result: result.as_ref().map(|_| ()).map_err(clone_error), detail, bytes };
    let recorded = finish(monitor, &mut rec, ended, alerting, succeeded_before).await;
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
    let ended = Run { result: outcome, detail: detail.into(), bytes };
    finish(monitor, rec, ended, alerting, false).await
}

/// The end of every job: the record, the alert, and the job event (see [`event`]), once.
async fn finish(
    monitor: Monitor<'_>,
    rec: &mut JobRecord,
    ended: Run<()>,
    alerting: Alerting,
    succeeded_before: bool,
) -> bool {
    let Run { result: outcome, detail, bytes } = ended;
    let now = OffsetDateTime::now_utc();
    let code = outcome.as_ref().err().map(event::failure_code);
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
    // The job ended unless the host delivers it again; a success it had before is not news.
    let delivered_again = alerting.redelivered && rec.detail.will_retry() == Some(true);
    if rec.is_finished() && !delivered_again && !(succeeded_before && rec.status == Status::Succeeded) {
        event::JobEvent::of(rec, code).emit();
    }
    recorded
}

/// A request follows its tasks ([`JobRecord::follow`]) and its record is written (best effort);
/// when this ends it, its one job event. (Two tasks ending at the same moment may both see it
/// end: the event's `job_id` tells such copies apart.)
pub async fn follow(store: &dyn BlobStore, req: &mut JobRecord, status: Status, bytes: u64, reason: Option<String>) {
    let ended_before = req.is_finished();
    req.follow(OffsetDateTime::now_utc(), status, bytes, reason);
    records::put_logged(store, req).await;
    if !ended_before && req.is_finished() {
        let code = (req.status == Status::Failed).then_some(event::code::TASKS_FAILED);
        event::JobEvent::of(req, code).emit();
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::monitor::event::{capture, code};

    const KINDS: [JobKind; 8] = [
        JobKind::Backup,
        JobKind::RestoreRequest,
        JobKind::RestoreTask,
        JobKind::Drill,
        JobKind::Retention,
        JobKind::Verify,
        JobKind::PgbackrestSas,
        JobKind::PgbackrestFreshness,
    ];

    fn record(kind: JobKind, id: &str) -> JobRecord {
        let mut rec = JobRecord::new(kind, id, "a job", OffsetDateTime::now_utc());
        rec.server = Some("prod".into());
        rec.database = Some("app".into());
        rec.trigger = Some("timer".into());
        rec
    }

    // A current-thread runtime: the capture is this thread's.
    #[tokio::test]
    async fn every_kind_of_job_that_ends_emits_one_event() {
        let alerter = Alerter::new(None);
        let monitor = Monitor { store: None, alerter: &alerter };
        let (events, guard) = capture::start();
        for kind in KINDS {
            let ok = format!("{}-ok", kind.as_str());
            let (r, _) = track(monitor, record(kind, &ok), Alerting::once(AlertKind::JobFailed), async {
                Run::ok((), Detail::None).with_bytes(Some(2 * 1_048_576))
            })
            .await;
            r.unwrap();
            let bad = format!("{}-bad", kind.as_str());
            let (r, _) = track(monitor, record(kind, &bad), Alerting::once(AlertKind::JobFailed), async {
                Run::<()>::failed(Error::permanent("no such table"), Detail::None)
            })
            .await;
            assert!(r.is_err());
        }
        drop(guard);
        let all = events.all();
        assert_eq!(all.len(), 2 * KINDS.len(), "{all:#?}");
        for kind in KINDS {
            let of_kind = events.of_kind(kind.as_str());
            assert_eq!(of_kind.len(), 2, "{kind:?}: {of_kind:#?}");
            let ok = of_kind.iter().find(|e| e["status"] == "succeeded").unwrap();
            assert_eq!(
                (ok["server"].as_str(), ok["database"].as_str(), ok["trigger"].as_str()),
                ("prod", "app", "timer")
            );
            assert_eq!((ok["data_transferred_mb"].as_str(), ok["attempts"].as_str()), ("2.0", "1"));
            assert!(ok.contains_key("duration_seconds") && !ok.contains_key("failure_code"), "{ok:?}");
            let bad = of_kind.iter().find(|e| e["status"] == "failed").unwrap();
            assert_eq!((bad["failure_code"].as_str(), bad["will_retry"].as_str()), (code::PERMANENT, "false"));
            assert_eq!(bad["reason"], "no such table");
        }
    }

    #[tokio::test]
    async fn a_job_delivered_again_ends_once() {
        let alerter = Alerter::new(None);
        let monitor = Monitor { store: None, alerter: &alerter };
        let (events, guard) = capture::start();
        // A transient failure the host delivers again: not an end, no event.
        let (_, rec) =
            track(monitor, record(JobKind::Backup, "b1"), Alerting::delivery(AlertKind::JobFailed, false), async {
                Run::<()>::failed(Error::transient("connection reset"), Detail::None)
            })
            .await;
        assert_eq!(events.all().len(), 0, "{:?}", events.all());
        // The redelivery succeeds: one event, the second attempt.
        let (_, rec) =
            track(monitor, rec, Alerting::delivery(AlertKind::JobFailed, true), async { Run::ok((), Detail::None) })
                .await;
        assert_eq!(events.all().len(), 1);
        assert_eq!(events.all()[0]["attempts"], "2");
        // Delivered once more (the host lost track of it): already done, no second event.
        let (r, _) =
            track(monitor, rec, Alerting::delivery(AlertKind::JobFailed, false), async { Run::ok((), Detail::None) })
                .await;
        r.unwrap();
        assert_eq!(events.all().len(), 1);
        // The last delivery's transient failure ends the job.
        let (r, _) =
            track(monitor, record(JobKind::RestoreTask, "t1"), Alerting::delivery(AlertKind::JobFailed, true), async {
                Run::<()>::failed(Error::transient("connection reset"), Detail::None)
            })
            .await;
        assert!(r.is_err());
        // A rotation the next timer run retries is another job: this one ended.
        let mut sas = record(JobKind::PgbackrestSas, "sas-1");
        conclude(
            monitor,
            &mut sas,
            Err(Error::transient("vault 503")),
            Detail::None,
            None,
            Alerting::next_run(AlertKind::Pgbackrest),
        )
        .await;
        // A rejected message.
        reject(monitor, JobKind::Backup, "m-1", "not a job", &Error::permanent("not json")).await;
        // A request ends with its last task, once, however often it is brought up to date.
        let dir = tempfile::tempdir().unwrap();
        let store = crate::seams::store::local::LocalStore::new(dir.path());
        let mut req = record(JobKind::RestoreRequest, "req-1");
        follow(&store, &mut req, Status::Running, 0, None).await;
        follow(&store, &mut req, Status::Failed, 5, Some("task req-1-1: boom".into())).await;
        follow(&store, &mut req, Status::Failed, 5, Some("task req-1-1: boom".into())).await;
        assert_eq!(
            records::get(&store, JobKind::RestoreRequest, "req-1").await.unwrap().unwrap().status,
            Status::Failed
        );
        drop(guard);
        let all = events.all();
        let codes: Vec<(&str, &str, &str)> = all[1..]
            .iter()
            .map(|e| (e["job_id"].as_str(), e["failure_code"].as_str(), e.get("will_retry").map_or("", String::as_str)))
            .collect();
        assert_eq!(
            codes,
            [
                ("t1", code::TRANSIENT, "false"),
                ("sas-1", code::TRANSIENT, "true"),
                ("rejected-m-1", code::REJECTED, "false"),
                ("req-1", code::TASKS_FAILED, "")
            ]
        );
    }
}
