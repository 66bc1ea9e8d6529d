//! Submit: claim a request id once, record the plan, enqueue its tasks.

use super::*;

pub use crate::domain::records::RequestDetail;

/// What [`submit`] did.
#[derive(Debug)]
pub enum Submitted {
    /// Planned, recorded, and (with a queue) enqueued.
    Planned(Plan),
    /// The request id was used before; nothing was done. The record says what became of it.
    Duplicate(Box<JobRecord>),
}

/// Validate and plan a request, claim its id, record the plan and the tasks, and send the tasks
/// to `restore-tasks` (when `queue` is given; the CLI runs them itself).
///
/// A permanent error (invalid, impossible) is recorded as a failed request (marked `rejected`,
/// so the id may be posted again once fixed) and returned. A request id that was planned before
/// is a duplicate: nothing is done, whatever the new text says. A request whose tasks were not
/// all sent (the host retries it) resumes sending the recorded plan.
pub async fn submit(ctx: &Ctx, queue: Option<&dyn JobQueue>, req: &RestoreRequest) -> Result<Submitted> {
    req.validate()?;
    let store = ctx.store.as_ref();
    let existing = jobrecords::get(store, JobKind::RestoreRequest, &req.request_id).await?;
    let recorded = existing.as_ref().map(RequestDetail::of).unwrap_or_default();
    let rejected_before = recorded.rejected;
    // The host retried a request whose tasks were not all sent: send the recorded plan.
    let resume = existing.as_ref().filter(|_| !recorded.enqueued && recorded.is_request(req));
    let plan = match (resume, &existing) {
        (Some(_), _) => recorded.plan.clone().ok_or_else(|| {
            Error::permanent(format!("restore request {:?}: the record holds no readable plan", req.request_id))
        })?,
        (None, Some(r)) if !rejected_before => return Ok(Submitted::Duplicate(Box::new(r.clone()))),
        _ => {
            let backups = catalog::list(store, Some(&req.source.server), None).await?;
            match plan(req, &ctx.settings, &backups) {
                Ok(p) => p,
                Err(e) => {
                    if e.is_permanent() {
                        record_rejection(ctx, req, &e, queue.is_none()).await;
                    }
                    return Err(e);
                }
            }
        }
    };

    let now = OffsetDateTime::now_utc();
    let mut rec = request_record(req, now);
    rec.trigger = Some(if queue.is_some() { "queue" } else { "cli" }.into());
    let mut detail = RequestDetail { request: Some(req.clone()), plan: Some(plan.clone()), ..Default::default() };
    rec.detail = detail.clone().into();
    if resume.is_none() {
        let claimed = if rejected_before {
            jobrecords::put(store, &rec).await.map(|()| CreateOutcome::Created)?
        } else {
            jobrecords::create(store, &rec).await?
        };
        if claimed == CreateOutcome::AlreadyExists {
            // Someone else claimed it between our read and our create.
            let theirs = jobrecords::get(store, JobKind::RestoreRequest, &req.request_id).await?.unwrap_or(rec);
            return Ok(Submitted::Duplicate(Box::new(theirs)));
        }
        for c in &plan.choices {
            tracing::info!(request = %req.request_id, what = %c.what, reason = %c.reason, "restore plan");
        }
    }
    for task in &plan.tasks {
        if jobrecords::get(store, JobKind::RestoreTask, &task.task_id).await?.is_none() {
            let mut t = task_record(task, now);
            t.detail = TaskDetail::of_task(task).into();
            jobrecords::put(store, &t).await?;
        }
        if let Some(q) = queue {
            q.send(RESTORE_TASKS_QUEUE, &task.to_json(), false)
                .await
                .map_err(|e| e.context(format!("enqueue restore task {}", task.task_id)))?;
            tracing::info!(request = %req.request_id, task = %task.task_id, what = %task.describe(), "restore task enqueued");
        }
    }
    if let Some(r) = resume {
        rec.created_at = r.created_at;
    }
    detail.enqueued = true;
    rec.detail = detail.into();
    jobrecords::put(store, &rec).await?;
    // A fast worker may have recorded progress before the put above overwrote it.
    update_request(ctx, &req.request_id).await;
    Ok(Submitted::Planned(plan))
}

/// Record a request that can never run: a failed record marked `rejected`.
pub(super) async fn record_rejection(ctx: &Ctx, req: &RestoreRequest, why: &Error, interactive: bool) {
    use crate::monitor::tracked::{Alerting, Monitor, conclude};
    let now = OffsetDateTime::now_utc();
    let mut rec = request_record(req, now);
    rec.trigger = Some(if interactive { "cli" } else { "queue" }.into());
    let detail = RequestDetail { request: Some(req.clone()), rejected: true, ..Default::default() };
    let alerting = Alerting { interactive, ..Alerting::once(crate::seams::alerts::AlertKind::JobFailed) };
    conclude(Monitor::of(ctx), &mut rec, Err(Error::permanent(why.to_string())), detail, None, alerting).await;
}

/// A new `queued` record for a request: about its source server and database.
fn request_record(req: &RestoreRequest, now: OffsetDateTime) -> JobRecord {
    let mut rec = JobRecord::new(JobKind::RestoreRequest, &req.request_id, req.describe(), now);
    rec.requested_by = req.requested_by.clone();
    rec.server = Some(req.source.server.clone());
    rec.database = req.source.database.clone();
    rec
}

/// A new `queued` record for a task of a request: about the server and database of the backup
/// it restores (or exports).
pub(super) fn task_record(task: &RestoreTask, now: OffsetDateTime) -> JobRecord {
    let mut t = JobRecord::new(JobKind::RestoreTask, &task.task_id, task.describe(), now);
    t.parent = Some(task.request_id.clone());
    t.requested_by = task.requested_by.clone();
    (t.server, t.database) = crate::domain::layout::backup_owner(&task.backup);
    t
}
