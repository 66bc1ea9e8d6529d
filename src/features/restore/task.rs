//! Run one task under its claim, with its job record: export it, or restore (globals first
//! when asked, then the database).

use super::*;
use crate::monitor::tracked::{Alerting, Monitor, Run, track};
use crate::seams::alerts::AlertKind;

/// Run one task and keep its job record (and its request's) up to date. `last_attempt` says
/// whether a transient failure will be retried by the host.
///
/// `delivery` says who runs it: one delivery at a time runs a task (see [`crate::features::claim`]);
/// another delivery of it meanwhile gets [`TaskOutcome::RunningElsewhere`].
pub async fn execute_task(
    ctx: &Ctx,
    task: &RestoreTask,
    last_attempt: bool,
    delivery: &crate::features::claim::Delivery,
) -> Result<TaskOutcome> {
    use crate::features::claim::{self, Claimed};
    task.validate()?;
    let store = ctx.store.as_ref();
    let now = OffsetDateTime::now_utc();
    let claim = match claim::acquire(store, "restore-task", &task.task_id, delivery, now).await? {
        Claimed::Owned(c) => c,
        Claimed::HeldBy(holder) => {
            // A holder whose run has ended (its record was written after it claimed, and says
            // it is not running) only failed to remove its claim: take it over.
            let ended = matches!(
                jobrecords::get(store, JobKind::RestoreTask, &task.task_id).await,
                Ok(Some(r)) if r.status != Status::Running && r.updated_at >= holder.since
            );
            match ended {
                true => match claim::take_over(store, "restore-task", &task.task_id, delivery, now).await? {
                    Claimed::Owned(c) => c,
                    Claimed::HeldBy(h) => return Ok(TaskOutcome::RunningElsewhere(h)),
                },
                false => {
                    tracing::info!(task = %task.task_id, holder = %holder.message_id, since = %ts(holder.since), "restore task is being run by another delivery; this one stands down");
                    return Ok(TaskOutcome::RunningElsewhere(holder));
                }
            }
        }
    };
    // Read under the claim: a delivery that finished released it only after writing its record.
    // A CLI run prints its own failure once; the error log line is for the host's runs.
    let interactive = delivery.lease.is_none();
    let outcome = execute_claimed(ctx, task, last_attempt, interactive, now).await;
    if let Err(e) = claim.release(store).await
        && matches!(outcome, Ok(TaskOutcome::RehydrationPending { .. }))
    {
        // The next look is another message. It would find the claim, and also this record
        // saying the run ended, so it would take over; but retrying this very message is
        // simpler and certain (a redelivery takes its own claim over).
        return Err(Error::transient(format!(
            "task {}: rehydration pending, but its claim could not be removed: {e}",
            task.task_id
        )));
    }
    outcome
}

pub(super) async fn execute_claimed(
    ctx: &Ctx,
    task: &RestoreTask,
    last_attempt: bool,
    interactive: bool,
    now: OffsetDateTime,
) -> Result<TaskOutcome> {
    let store = ctx.store.as_ref();
    // Taken before the record is read, held until the outcome is recorded (below).
    let target_lock = match task.target.mode {
        Mode::Create | Mode::Replace => lock_target(ctx, task).await?,
        Mode::AsFiles => None,
    };
    let mut rec = match jobrecords::get(store, JobKind::RestoreTask, &task.task_id).await {
        Ok(Some(r)) if r.status == Status::Succeeded => return Ok(TaskOutcome::AlreadyDone(Box::new(r))),
        Ok(Some(r)) => r,
        Ok(None) => {
            let mut r = JobRecord::new(JobKind::RestoreTask, &task.task_id, task.describe(), now);
            r.parent = Some(task.request_id.clone());
            r.requested_by = task.requested_by.clone();
            r
        }
        Err(e) => {
            tracing::warn!(task = %task.task_id, error = %e, "cannot read the task's job record; running it");
            JobRecord::new(JobKind::RestoreTask, &task.task_id, task.describe(), now)
        }
    };
    // An archived backup: start rehydration and come back later, within a bound.
    let rehydration_started = TaskDetail::of(&rec).rehydration_started_at;
    let waited = rehydration_started.map(|t| now - t);
    let offline = check_archived(ctx, task, waited).await;
    let gave_up = offline.iter().find_map(|(blob, a)| match a {
        Availability::GiveUp(why) => Some(Error::permanent(format!("backup {:?}, data {blob:?}: {why}", task.backup))),
        _ => None,
    });
    if gave_up.is_none() && !offline.is_empty() {
        for (blob, action) in &offline {
            if *action == Availability::Rehydrate {
                start_rehydration(ctx, task, blob, waited).await?;
            }
        }
        let blobs: Vec<&str> = offline.iter().map(|(b, _)| b.as_str()).collect();
        let started = rehydration_started.unwrap_or(now);
        let reason = format!("rehydration pending: backup data {blobs:?} in the archive tier");
        let detail = TaskDetail {
            rehydration_started_at: Some(started),
            blobs: blobs.iter().map(|b| b.to_string()).collect(),
            recheck_secs: Some(REHYDRATION_RECHECK_SECS),
            ..TaskDetail::of_task(task)
        };
        rec.wait_for_rehydration(now, reason, detail);
        jobrecords::put_logged(store, &rec).await;
        update_request(ctx, &task.request_id).await;
        tracing::info!(task = %task.task_id, blobs = ?blobs, recheck_secs = REHYDRATION_RECHECK_SECS, "restore task waits for rehydration");
        return Ok(TaskOutcome::RehydrationPending { blob: blobs.join(", "), recheck_secs: REHYDRATION_RECHECK_SECS });
    }
    rec.detail = TaskDetail::of_task(task).into();
    let alerting = Alerting { kind: AlertKind::JobFailed, last_attempt, interactive };
    let (outcome, _) = track(Monitor::of(ctx), rec, alerting, async {
        update_request(ctx, &task.request_id).await;
        tracing::info!(task = %task.task_id, what = %task.describe(), "restore task started");
        let started = std::time::Instant::now();
        let mut done = TaskReport::default();
        let result = match gave_up {
            Some(e) => Err(e),
            None => run_task_into(ctx, task, &mut done).await.map(|()| done.clone()),
        };
        match result {
            Ok(mut report) => {
                report.seconds = started.elapsed().as_secs_f64();
                tracing::info!(
                    task = %task.task_id, what = %task.describe(), stored_bytes = report.stored_bytes,
                    raw_bytes = report.raw_bytes, seconds = report.seconds, "restore task succeeded"
                );
                let detail = TaskDetail { report: Some(report.clone()), ..TaskDetail::of_task(task) };
                let bytes = Some(report.stored_bytes);
                Run::ok(TaskOutcome::Done(Box::new(report)), detail).with_bytes(bytes)
            }
            Err(e) => {
                let will_retry = !e.is_permanent() && !last_attempt;
                if interactive {
                    tracing::debug!(task = %task.task_id, will_retry, error = %e, "restore task failed");
                } else {
                    tracing::error!(task = %task.task_id, what = %task.describe(), will_retry, error = %e, "restore task failed");
                }
                // What the task did before it failed (roles the globals created) stays on record.
                let report = done.has_effects().then_some(done);
                Run::failed(e, TaskDetail { report, ..TaskDetail::of_task(task) })
            }
        }
    })
    .await;
    // Recorded: the swap's note has served (a failed removal leaves a note a later run ignores).
    if !matches!(task.target.mode, Mode::AsFiles) {
        let _ = store.delete(&swap_marker(&task.task_id)).await;
    }
    drop(target_lock);
    update_request(ctx, &task.request_id).await;
    outcome
}

pub use crate::domain::records::TaskDetail;

/// Bring a request's record in line with its tasks: running while any runs, succeeded when all
/// succeeded, failed when all ended and one failed. Best effort (it is bookkeeping).
pub(super) async fn update_request(ctx: &Ctx, request_id: &str) {
    let store = ctx.store.as_ref();
    let Ok(Some(mut req)) = jobrecords::get(store, JobKind::RestoreRequest, request_id).await else { return };
    let Some(plan) = RequestDetail::of(&req).plan else { return };
    let mut states = Vec::new();
    let mut bytes = 0;
    for t in &plan.tasks {
        match jobrecords::get(store, JobKind::RestoreTask, &t.task_id).await {
            Ok(Some(r)) => {
                bytes += r.bytes.unwrap_or(0);
                states.push((r.status, r.detail.will_retry().unwrap_or(false), r.reason));
            }
            _ => states.push((Status::Queued, false, None)),
        }
    }
    let finished = |s: &(Status, bool, Option<String>)| s.0 == Status::Succeeded || (s.0 == Status::Failed && !s.1);
    let status = if states.iter().all(|s| s.0 == Status::Succeeded) {
        Status::Succeeded
    } else if states.iter().all(finished) {
        Status::Failed
    } else if states.iter().any(|s| s.0 != Status::Queued) {
        Status::Running
    } else {
        Status::Queued
    };
    let reason = (status == Status::Failed).then(|| {
        let failed: Vec<String> = plan
            .tasks
            .iter()
            .zip(&states)
            .filter(|(_, s)| s.0 == Status::Failed)
            .map(|(t, s)| format!("task {}: {}", t.task_id, s.2.as_deref().unwrap_or("failed")))
            .collect();
        failed.join("; ")
    });
    req.follow(OffsetDateTime::now_utc(), status, bytes, reason);
    jobrecords::put_logged(store, &req).await;
}

/// Run one task: export it, or restore (globals first when asked, then the database).
pub async fn run_task(ctx: &Ctx, task: &RestoreTask) -> Result<TaskReport> {
    let mut report = TaskReport::default();
    run_task_into(ctx, task, &mut report).await.map(|()| report)
}

/// [`run_task`], keeping in `report` what was done before a failure stopped it (the roles the
/// globals created): the task's record lists it too.
pub async fn run_task_into(ctx: &Ctx, task: &RestoreTask, report: &mut TaskReport) -> Result<()> {
    task.validate()?;
    let m = catalog::manifest(ctx.store.as_ref(), &task.backup).await?;
    // Until the parallel restore of parts lands (issue 15 item 4), refuse rather than restore
    // one part as if it were the whole.
    if m.is_parts() {
        return Err(Error::permanent(format!(
            "backup {:?} is in parts (manifest format version 3); this pgvault does not restore it",
            m.id
        ))
        .with_hint("restore it with plain tools as each part's restore_hint says (`pgvault show` prints them)"));
    }
    *report = TaskReport {
        task_id: task.task_id.clone(),
        backup: m.id.clone(),
        mode: task.target.mode.as_str().into(),
        stored_bytes: m.stored_bytes,
        raw_bytes: m.raw_bytes,
        ..Default::default()
    };
    match task.target.mode {
        Mode::AsFiles => {
            report.files = export(ctx, task, &m).await?;
            if task.options.keep_encrypted {
                report.decrypt_hint = decrypt_hint(&m);
            }
        }
        Mode::Create | Mode::Replace => {
            if m.kind != BackupKind::Database {
                return Err(Error::permanent(format!(
                    "backup {:?} holds globals, not a database; restore it with options.globals",
                    m.id
                )));
            }
            // The globals are restored inside, once the temporary database exists: a target that
            // cannot create it (a missing locale) fails before any role is created.
            let (globals, database) = restore_database(ctx, task, &m, &mut report.globals).await?;
            report.globals = globals;
            report.database = Some(database);
        }
    }
    Ok(())
}

/// What [`execute_task`] did.
#[derive(Debug)]
pub enum TaskOutcome {
    Done(Box<TaskReport>),
    /// The task's record says it succeeded before (a redelivered message); nothing was done.
    AlreadyDone(Box<JobRecord>),
    /// Another delivery of the task (a duplicate message) is running it now; nothing was done.
    RunningElsewhere(crate::features::claim::Holder),
    /// The backup is in the Archive tier: rehydration was started (or is under way) and the task
    /// is recorded as `rehydration-pending`. The caller re-enqueues it to run after `recheck_secs`.
    RehydrationPending {
        /// The archived data blobs (the backup's, and the globals' when asked), comma-separated.
        blob: String,
        recheck_secs: u32,
    },
}
