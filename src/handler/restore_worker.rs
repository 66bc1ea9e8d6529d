//! `restore-worker` (queue trigger on `restore-tasks`): run one restore task (one database
//! restored into its target, or one backup exported as files) and keep its job record.
//!
//! Error policy, as in `backup-worker`: a task that can never succeed (corrupt backup, target
//! exists in mode create, a swap refused because sessions hold the old database, ...) is kept on
//! `restore-tasks-rejected` with its reason and the reply is 200; a transient failure (a killed
//! pg_restore, a lost connection, shutdown) replies 500 so the host retries it, then poison. A
//! task whose record says it succeeded is not run again.

use super::{AppState, Reply};
use crate::features::restore::{self, RESTORE_TASKS_QUEUE, RestoreTask, TaskOutcome};
use axum::extract::State;
use serde_json::json;

/// The queue binding's name in `functions/restore-worker/function.json`.
pub const BINDING: &str = "task";

pub async fn handle(State(state): State<AppState>, super::HostBody(body): super::HostBody) -> Reply {
    let msg = match super::queue_message(&body, BINDING) {
        Ok(msg) => msg,
        Err(reply) => return reply,
    };
    let (text, dequeue_count) = (&msg.text, msg.dequeue_count);
    let task = match RestoreTask::from_json(text) {
        Ok(t) => t,
        Err(e) => {
            let monitor = crate::monitor::tracked::Monitor::of(&state.ctx);
            let kind = crate::monitor::records::JobKind::RestoreTask;
            crate::monitor::tracked::reject(
                monitor,
                kind,
                &msg.id,
                "a restore task message that is not a valid task",
                &e,
            )
            .await;
            return super::reject_and_keep(&state, RESTORE_TASKS_QUEUE, &msg, &e).await;
        }
    };
    if state.ctx.cancel.is_cancelled() {
        return Reply::retry(
            vec!["shutting down; the message will be retried".into()],
            json!({ "error": "shutting down" }),
        );
    }
    let last = dequeue_count >= state.max_dequeue_count;
    match restore::execute_task(&state.ctx, &task, last, &crate::features::claim::Delivery::queued(&msg.id)).await {
        Ok(TaskOutcome::Done(report)) => {
            // The URLs of as-files are secrets: they are in the job record, not in the reply.
            let files: Vec<&str> = report.files.iter().map(|f| f.blob.as_str()).collect();
            Reply::ok(
                vec![format!("task {}: {} done in {:.1} s", task.task_id, task.describe(), report.seconds)],
                json!({
                    "status": "succeeded", "task_id": task.task_id, "backup": report.backup,
                    "database": report.database, "globals": report.globals, "files": files,
                    "stored_bytes": report.stored_bytes, "seconds": report.seconds,
                }),
            )
        }
        Ok(TaskOutcome::RehydrationPending { blob, recheck_secs }) => {
            // The same task again, invisible until the next look; its record keeps the start of
            // the wait, which bounds it.
            match state.queue.send_delayed(RESTORE_TASKS_QUEUE, text, recheck_secs).await {
                Ok(()) => Reply::ok(
                    vec![format!(
                        "task {}: backup data {blob:?} is archived; rehydration pending, looking again in {recheck_secs} s",
                        task.task_id
                    )],
                    json!({ "status": "rehydration-pending", "task_id": task.task_id, "recheck_secs": recheck_secs }),
                ),
                Err(e) => Reply::retry(
                    vec![format!("task {}: rehydration pending, but re-enqueueing failed: {e}", task.task_id)],
                    json!({ "status": "failed", "task_id": task.task_id, "error": e.to_string() }),
                ),
            }
        }
        // The holder's own message keeps the task alive (it is retried if that run fails), so
        // this duplicate is done with.
        Ok(TaskOutcome::RunningElsewhere(holder)) => Reply::ok(
            vec![format!(
                "task {} is being run by another delivery (message {}); this duplicate stands down",
                task.task_id, holder.message_id
            )],
            json!({ "status": "running-elsewhere", "task_id": task.task_id, "holder": holder.message_id }),
        ),
        Ok(TaskOutcome::AlreadyDone(rec)) => Reply::ok(
            vec![format!("task {} succeeded before; nothing to do", task.task_id)],
            json!({ "status": "already-done", "task_id": task.task_id, "finished_at": rec.finished_at.and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok()) }),
        ),
        Err(e) if e.is_permanent() => super::reject_and_keep(&state, RESTORE_TASKS_QUEUE, &msg, &e).await,
        Err(e) => {
            let mut logs = vec![format!("task {} failed (attempt {dequeue_count}): {e}", task.task_id)];
            if last {
                logs.push(format!(
                    "this was the last attempt; the host moves the message to {RESTORE_TASKS_QUEUE}-poison"
                ));
            }
            Reply::retry(logs, json!({ "status": "failed", "task_id": task.task_id, "error": e.to_string() }))
        }
    }
}
