//! Archived backups: whether a task's blobs are online, and starting their rehydration.

use super::*;

/// How long a task waits between looks at a rehydrating blob.
pub const REHYDRATION_RECHECK_SECS: u32 = 30 * 60;
/// The longest a task waits for rehydration in total. Standard priority takes up to 15 hours;
/// after this the task fails with the reason.
pub const REHYDRATION_MAX_WAIT: time::Duration = time::Duration::hours(24);

/// What to do about a backup blob before restoring it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Availability {
    /// Readable now (any online tier, or a store without tiers).
    Online,
    /// Archived, no rehydration under way: start one (set tier Hot, standard priority).
    Rehydrate,
    /// Archived, rehydration under way: look again later.
    Pending,
    /// Waited longer than the bound: fail with this reason.
    GiveUp(String),
}

/// Pure: from a blob's properties (`None`: a store without tiers) and how long this task has
/// waited so far, what to do.
pub fn availability(
    props: Option<&crate::seams::store::BlobProps>,
    waited: Option<time::Duration>,
    max_wait: time::Duration,
) -> Availability {
    let Some(p) = props else { return Availability::Online };
    if p.tier != Some(crate::seams::store::Tier::Archive) {
        return Availability::Online;
    }
    if let Some(w) = waited
        && w > max_wait
    {
        return Availability::GiveUp(format!(
            "the backup is still in the archive tier after waiting {} h for rehydration (at most {} h); \
             check the blob's archive status, or rehydrate it (set tier hot) and submit the restore again",
            w.whole_hours(),
            max_wait.whole_hours()
        ));
    }
    match &p.archive_status {
        Some(s) if s.to_ascii_lowercase().starts_with("rehydrate-pending") => Availability::Pending,
        _ => Availability::Rehydrate,
    }
}

/// The data blobs a task reads (its backup, and the globals backup when asked) that are not
/// online, each with what to do about it: all of them, so that their rehydrations run at the same
/// time, not one after the other. Errors other than "no tiers" are left to the restore.
pub(super) async fn check_archived(
    ctx: &Ctx,
    task: &RestoreTask,
    waited: Option<time::Duration>,
) -> Vec<(String, Availability)> {
    let store = ctx.store.as_ref();
    let mut offline = Vec::new();
    for id in std::iter::once(&task.backup).chain(task.globals.as_ref()) {
        let Ok(m) = catalog::manifest(store, id).await else { continue };
        // A backup in parts: every part's blob.
        for blob in m.data_blobs() {
            let props = match store.properties(blob).await {
                Ok(p) => Some(p),
                Err(e) if e.is_unsupported() => None,
                Err(e) => {
                    tracing::warn!(blob = %blob, error = %e, "cannot read the backup's access tier; restoring anyway");
                    None
                }
            };
            match availability(props.as_ref(), waited, REHYDRATION_MAX_WAIT) {
                Availability::Online => {}
                other => offline.push((blob.to_string(), other)),
            }
        }
    }
    offline
}

/// Start the rehydration of one archived blob. Another task may have started it a moment ago
/// (several tasks of a whole-server restore share one globals backup): the service then refuses
/// the second start (409 `BlobBeingRehydrated`), which is fine when the blob now says so.
pub(super) async fn start_rehydration(
    ctx: &Ctx,
    task: &RestoreTask,
    blob: &str,
    waited: Option<time::Duration>,
) -> Result<()> {
    let store = ctx.store.as_ref();
    match store.set_tier(blob, crate::seams::store::Tier::Hot).await {
        Ok(()) => {
            tracing::info!(task = %task.task_id, blob = %blob, "backup is archived: rehydration to hot started (standard priority)");
            Ok(())
        }
        Err(e) => match store.properties(blob).await {
            Ok(p) if availability(Some(&p), waited, REHYDRATION_MAX_WAIT) == Availability::Pending => {
                tracing::info!(task = %task.task_id, blob = %blob, "rehydration was started meanwhile by another task");
                Ok(())
            }
            _ => Err(e.context(format!("start rehydration of backup {:?}", task.backup))),
        },
    }
}
