//! A backup in parts fanned out on the `backup-parts` queue (`PGVAULT_PARTS_RUN=queue`): the
//! coordinator sends one message per part and waits, holding its snapshot, for each part's
//! result in the store; a part worker (function `backup-parts`, on any instance) dumps its part
//! in that snapshot with [`super::parts::run_part`] and writes the result.
//!
//! Ordering and failure (DESIGN.md "Parts on the backup-parts queue"): a worker commits its
//! part's blob before it writes a `committed` result; the coordinator lists a part in the set
//! manifest only after it found that blob committed with the size the result states, in its
//! snapshot, for the part it planned. A worker whose snapshot is gone (the coordinator ended)
//! fails for good with the named reason and says so in its result; a transient failure is
//! retried by the host's redelivery while the snapshot lives. The coordinator fails on the first
//! failed result, on its deadline and on shutdown: it deletes the committed parts and publishes
//! nothing.

use super::parts::{PartEnv, SetRun, lost_snapshot, run_part, snapshot_gone};
use crate::config::context::{Ctx, unknown_server};
use crate::domain::envelope::DataKey;
use crate::domain::error::{Error, Kind, Result};
use crate::domain::fanout::{
    BACKUP_PARTS_QUEUE, PART_MESSAGE_VERSION, PartMessage, PartOutcome, PartResult, WrappedDataKey,
};
use crate::domain::jobs::{MAX_QUEUE_MESSAGE_BYTES, queue_size};
use crate::domain::layout::{self, PART_RESULT_SUFFIX};
use crate::domain::parts::{Part, PartSpec};
use crate::seams::failpoint;
use crate::seams::keys::WrappedKey;
use crate::seams::pg;
use bytes::Bytes;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use time::OffsetDateTime;

/// How long the coordinator waits for its parts: the host's `functionTimeout` (host.json,
/// 04:00:00), since the coordinator's own invocation cannot outlast it.
pub const PARTS_WAIT: Duration = Duration::from_secs(4 * 3600);

/// The coordinator looks for results this often at first, and backs off to [`POLL_MAX`] while
/// none arrive: one listing per look, whatever the number of parts.
const POLL_MIN: Duration = Duration::from_millis(250);
const POLL_MAX: Duration = Duration::from_secs(5);

/// Send every part to `backup-parts` and wait for their results, holding the snapshot (the
/// caller's transaction stays open meanwhile). One result per part, in plan order; parts not
/// reported when the wait stops (a failed part, the deadline, shutdown) are errors too.
pub(super) async fn run_on_queue(r: &SetRun<'_>, specs: &[PartSpec], attempt: &str) -> Vec<(usize, Result<Part>)> {
    let what = format!("back up {}", r.job.describe());
    // The cause first (the backup reports the first permanent error, else the first).
    let fail_all = |e: Error| -> Vec<(usize, Result<Part>)> {
        let mut out = vec![(0, Err(e))];
        out.extend((1..specs.len()).map(|i| (i, Err(Error::transient(format!("part {:?} not run", specs[i].name))))));
        out
    };
    let Some(queue) = r.ctx.queue.clone() else {
        return fail_all(
            Error::permanent(format!("{what}: PGVAULT_PARTS_RUN=queue, but pgvault has no job queues"))
                .with_hint("set JobsQueue__queueServiceUri, or PGVAULT_PARTS_RUN=process"),
        );
    };
    let encryption = r.sealing.as_ref().map(|(_, w)| WrappedDataKey {
        key_id: w.key_id.clone(),
        wrap_algorithm: w.algorithm.clone(),
        wrapped_key: base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &w.wrapped),
    });
    let mut texts = Vec::with_capacity(specs.len());
    for spec in specs {
        let text = PartMessage {
            version: PART_MESSAGE_VERSION,
            job: r.job.clone(),
            backup_id: r.paths.id.clone(),
            attempt: attempt.to_string(),
            part: spec.clone(),
            snapshot: r.snapshot.clone(),
            server_version_num: r.server_version_num,
            tool_major: r.tool.major,
            pg_dump_args: r.args.clone(),
            compression: r.ctx.settings.compression,
            encryption: encryption.clone(),
            sent_at: OffsetDateTime::now_utc(),
        }
        .to_json();
        // Checked before any is sent: a part too large to send fails the run with nothing queued.
        let size = queue_size(&text);
        if size > MAX_QUEUE_MESSAGE_BYTES {
            return fail_all(
                Error::permanent(format!(
                    "{what}: part {:?} names too many tables for one queue message ({size} bytes, at most {MAX_QUEUE_MESSAGE_BYTES})",
                    spec.name
                ))
                .with_hint("set PGVAULT_PARTS_RUN=process, or raise PGVAULT_BACKUP_JOBS (more, smaller parts)"),
            );
        }
        texts.push((spec, text));
    }
    for (spec, text) in texts {
        // Parts already sent and not yet started fail on the snapshot once this run ends.
        if let Err(e) = queue.send(BACKUP_PARTS_QUEUE, &text, false).await {
            return fail_all(e.context(format!("{what}: send part {:?} to {BACKUP_PARTS_QUEUE}", spec.name)));
        }
    }
    tracing::info!(job = %r.job.job_id, what = %r.job.describe(), parts = specs.len(), queue = BACKUP_PARTS_QUEUE, "parts sent; waiting for their results");
    failpoint::hit("backup.parts-sent");
    wait_for_results(r, specs, attempt).await
}

async fn wait_for_results(r: &SetRun<'_>, specs: &[PartSpec], attempt: &str) -> Vec<(usize, Result<Part>)> {
    let ctx = r.ctx;
    let what = format!("back up {}", r.job.describe());
    let prefix = layout::part_results_prefix(&r.paths.id, attempt);
    let mut pending: BTreeMap<&str, usize> = specs.iter().enumerate().map(|(i, s)| (s.name.as_str(), i)).collect();
    let mut out: Vec<(usize, Result<Part>)> = Vec::new();
    let mut seen: Vec<String> = Vec::new();
    let deadline = Instant::now() + PARTS_WAIT;
    let mut poll = POLL_MIN;
    let stopped: Option<Error> = loop {
        let listed = match ctx.store.list(&prefix).await {
            Ok(l) => l,
            Err(e) => break Some(e.context(format!("{what}: look for the parts' results"))),
        };
        let mut failed = false;
        let mut arrived = false;
        for blob in listed.iter().filter(|b| b.name.ends_with(PART_RESULT_SUFFIX)) {
            let name = &blob.name[prefix.len()..blob.name.len() - PART_RESULT_SUFFIX.len()];
            let Some(&i) = pending.get(name) else { continue };
            let result = match ctx.store.get(&blob.name).await {
                Ok(bytes) => PartResult::from_json(&blob.name, &bytes),
                Err(e) => Err(e),
            };
            let got = match result {
                Ok(res) => accept(r, &specs[i], attempt, res).await,
                Err(e) if !e.is_permanent() => continue, // looked at again next time
                Err(e) => Err(e),
            };
            seen.push(blob.name.clone());
            pending.remove(name);
            arrived = true;
            failed |= got.is_err();
            out.push((i, got));
        }
        if pending.is_empty() || failed {
            break None;
        }
        if ctx.cancel.is_cancelled() {
            break Some(Error::transient(format!("{what}: cancelled by shutdown; nothing was published")));
        }
        if Instant::now() >= deadline {
            break Some(
                Error::transient(format!(
                    "{what}: {} part(s) did not report within {} minutes: {}",
                    pending.len(),
                    PARTS_WAIT.as_secs() / 60,
                    pending.keys().copied().collect::<Vec<_>>().join(", ")
                ))
                .with_hint(format!("is function backup-parts running and draining {BACKUP_PARTS_QUEUE}?")),
            );
        }
        poll = if arrived { POLL_MIN } else { (poll * 2).min(POLL_MAX) };
        tokio::select! {
            _ = tokio::time::sleep(poll) => {}
            _ = ctx.cancel.cancelled() => {}
        }
    };
    // The results have served: what they said is in `out` (a leftover is an orphan of the job).
    for name in &seen {
        if let Err(e) = ctx.store.delete(name).await {
            tracing::warn!(blob = %name, error = %e, "a part result could not be removed (an orphan now)");
        }
    }
    // What stopped the wait (deadline, shutdown, the store) is the first pending part's error.
    let mut stopped = stopped;
    for (name, i) in pending {
        let e = stopped.take().unwrap_or_else(|| Error::transient(format!("part {name:?} not finished")));
        out.push((i, Err(e)));
    }
    out.sort_by_key(|(i, _)| *i);
    out
}

/// Take one result: a committed part is listed only when its blob is committed with the size
/// the result states, under this attempt, for the part that was planned, in this snapshot.
async fn accept(r: &SetRun<'_>, spec: &PartSpec, attempt: &str, res: PartResult) -> Result<Part> {
    let part = match res.outcome {
        PartOutcome::Failed { error } => return Err(Error::permanent(error)),
        PartOutcome::Committed { record } => *record,
    };
    let bad = |why: String| {
        Err(Error::permanent(format!(
            "back up {}: part {:?}: its result does not hold: {why}",
            r.job.describe(),
            spec.name
        )))
    };
    if res.attempt != attempt || part.spec != *spec {
        return bad(format!(
            "it describes attempt {:?} of part {:?}, not the planned one",
            res.attempt, part.spec.name
        ));
    }
    if let Err(e) = part.check_consistent(&r.paths.id, &r.snapshot) {
        return bad(e.message().to_string());
    }
    if !part.data_blob.starts_with(&format!("{}.{attempt}-", r.paths.id)) {
        return bad(format!("blob {:?} is not one of this attempt", part.data_blob));
    }
    let committed = r.ctx.store.list(&part.data_blob).await?.into_iter().find(|b| b.name == part.data_blob);
    match committed {
        Some(b) if b.size == part.stored_bytes => Ok(part),
        Some(b) => {
            bad(format!("blob {:?} holds {} bytes, the result says {}", part.data_blob, b.size, part.stored_bytes))
        }
        None => bad(format!("blob {:?} is not committed", part.data_blob)),
    }
}

/// One delivery of a `backup-parts` message, as the host gives it.
pub struct Delivery<'a> {
    pub message_id: &'a str,
    pub dequeue_count: u32,
    /// The host's last try: a failure now is reported to the coordinator as final.
    pub last: bool,
}

/// Run the part a `backup-parts` message describes and report it to the coordinator. A
/// malformed message is a permanent error (the handler keeps it); a lost snapshot is permanent,
/// with the reason from [`snapshot_gone`], and so reported; another failure is transient (the
/// host delivers the message again, while the snapshot lives) and reported only on the last
/// delivery.
pub async fn run_part_message(ctx: &Ctx, text: &str, delivery: &Delivery<'_>) -> Result<Part> {
    let msg = PartMessage::from_json(text)?;
    let outcome = run_message(ctx, &msg).await;
    let report = match &outcome {
        Ok(part) => Some(PartOutcome::Committed { record: Box::new(part.clone()) }),
        Err(e) if e.is_permanent() || delivery.last => Some(PartOutcome::Failed { error: e.to_string() }),
        Err(_) => None,
    };
    if let Some(outcome_for_result) = report {
        let result = PartResult {
            part: msg.part.name.clone(),
            attempt: msg.attempt.clone(),
            outcome: outcome_for_result,
            message_id: delivery.message_id.to_string(),
            dequeue_count: delivery.dequeue_count,
            finished_at: OffsetDateTime::now_utc(),
        };
        let name = layout::part_result(&msg.backup_id, &msg.attempt, &msg.part.name);
        let database = msg.job.database.as_deref().unwrap_or_default();
        let tags = layout::tags(msg.job.kind, &msg.job.server, database, "part-result");
        if let Err(e) = ctx.store.put(&name, Bytes::from(result.to_json()), &tags).await {
            // Unreported, the part would hold the coordinator until its deadline: fail this
            // delivery so the host tries again (the committed blob, unlisted, goes).
            if let Ok(part) = &outcome {
                let _ = ctx.store.delete(&part.data_blob).await;
            }
            return Err(Error::transient(format!("report part {:?} as {name:?}: {e}", msg.part.name)));
        }
    }
    outcome
}

async fn run_message(ctx: &Ctx, msg: &PartMessage) -> Result<Part> {
    let job = &msg.job;
    let what = format!("back up {}: part {:?}", job.describe(), msg.part.name);
    if failpoint::injected("backup.part-run") {
        return Err(Error::transient(format!("{what}: fail point backup.part-run: an injected transient failure")));
    }
    let settings = &ctx.settings;
    let server = settings.server(&job.server).ok_or_else(|| unknown_server(&job.server))?;
    let database = job.database.clone().unwrap_or_default();
    let conn = ctx.conn_spec(&job.server, &database).await?;
    let major = pg::major_of(msg.server_version_num);
    let tool =
        pg::pick_tool("pg_dump", &settings.bin_dirs_for(server), major, &format!("server {:?}", server.name)).await?;
    if tool.major != msg.tool_major {
        return Err(Error::permanent(format!(
            "{what}: this instance's pg_dump is major {}, the coordinator's {}: the parts of one set are dumped by one major",
            tool.major, msg.tool_major
        ))
        .with_hint("deploy the same PostgreSQL tools to every instance (PGVAULT_PG_BIN_DIRS)"));
    }
    let key: Option<DataKey> = match &msg.encryption {
        Some(w) => {
            let wrapped = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &w.wrapped_key)
                .map_err(|e| Error::permanent(format!("{what}: the wrapped data key is not base64: {e}")))?;
            let wrapped = WrappedKey { key_id: w.key_id.clone(), algorithm: w.wrap_algorithm.clone(), wrapped };
            Some(ctx.key_wrapper()?.unwrap(&wrapped).await.map_err(|e| e.context(&what))?)
        }
        None => None,
    };
    let paths = layout::backup_paths(job.kind, &job.server, &database, job.requested_at, &job.job_id);
    let env = PartEnv {
        ctx,
        job,
        paths: &paths,
        database: &database,
        snapshot: msg.snapshot.clone(),
        conn,
        tool,
        args: msg.pg_dump_args.clone(),
        compression: msg.compression,
    };
    // Each delivery writes a blob of its own: two deliveries of one message never stage blocks
    // into the same blob.
    let delivery = &uuid::Uuid::new_v4().simple().to_string()[..6];
    let attempt = format!("{}-{delivery}", msg.attempt);
    tracing::info!(job = %job.job_id, part = %msg.part.name, snapshot = %msg.snapshot, "part started");
    match run_part(&env, &msg.part, &attempt, key.as_ref()).await {
        Ok(p) => Ok(p),
        Err(e) if lost_snapshot(&e) => Err(snapshot_gone(&msg.snapshot, Kind::Permanent).context(&what)),
        Err(e) => Err(e),
    }
}
