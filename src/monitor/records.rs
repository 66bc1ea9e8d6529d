//! Job records in the store: one small JSON document per job (its type, detail and transitions
//! are [`crate::domain::records`]), kept in the backup store under [`PREFIX`], so `pgvault jobs`,
//! the `jobs` function and alerts can say what was asked, what ran, and how it ended.
//!
//! ```text
//! @jobs/<kind>/<id>.json
//! ```
//!
//! The prefix starts with `@`, which [`crate::domain::layout::encode_segment`] never produces, so no
//! server's backups can share it; the catalog skips it.
//!
//! Contract: a record is created with create-if-absent ([`create`], used to claim a request id
//! exactly once) and then replaced whole by [`put`] as the job moves on (`queued` → `running` →
//! `succeeded` | `failed`). A reader sees either the old or the new document, never a mix. Records
//! are written by one job at a time; two writers of the same record (a redelivered message racing
//! its first delivery) leave the last one's document.

pub use crate::domain::records::*;

use crate::domain::error::Result;
use crate::domain::layout::encode_segment;
use crate::seams::store::{BlobStore, CreateOutcome, Tags};
use bytes::Bytes;
use time::OffsetDateTime;

/// Where job records live in the backup store. Not a possible server segment (see module docs).
pub const PREFIX: &str = "@jobs/";

/// The blob name of a record.
pub fn name(kind: JobKind, id: &str) -> String {
    format!("{}{}.json", prefix(kind), encode_segment(id))
}

fn tags(rec: &JobRecord) -> Tags {
    let mut t = Tags::new();
    t.insert("pgvault".into(), "job".into());
    t.insert("kind".into(), rec.kind.as_str().into());
    t.insert("status".into(), rec.status.as_str().into());
    t
}

/// Create a record if none of that kind and id exists (how a request id is claimed once).
pub async fn create(store: &dyn BlobStore, rec: &JobRecord) -> Result<CreateOutcome> {
    let name = name(rec.kind, &rec.id);
    store
        .create(&name, Bytes::from(rec.to_json()), &tags(rec))
        .await
        .map_err(|e| e.context(format!("write job record {name:?}")))
}

/// Write a record, replacing the one there (one atomic put).
pub async fn put(store: &dyn BlobStore, rec: &JobRecord) -> Result<()> {
    let name = name(rec.kind, &rec.id);
    store
        .put(&name, Bytes::from(rec.to_json()), &tags(rec))
        .await
        .map_err(|e| e.context(format!("write job record {name:?}")))
}

/// Write a record, logging (not failing) on error: bookkeeping must not fail a restore that
/// otherwise worked, nor hide the error of one that did not. Returns whether it was written.
pub async fn put_logged(store: &dyn BlobStore, rec: &JobRecord) -> bool {
    match put(store, rec).await {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(kind = rec.kind.as_str(), id = %rec.id, status = rec.status.as_str(), error = %e, "cannot write job record");
            false
        }
    }
}

/// Read a record, if it exists.
pub async fn get(store: &dyn BlobStore, kind: JobKind, id: &str) -> Result<Option<JobRecord>> {
    let name = name(kind, id);
    if !store.exists(&name).await? {
        return Ok(None);
    }
    let bytes = store.get(&name).await?;
    JobRecord::from_json(&name, &bytes).map(Some)
}

/// Every record (of one kind, if given), oldest first. Unreadable records are skipped with a
/// warning, so one bad document does not hide the others. A kind given lists (and reads) only
/// that kind's prefix, `@jobs/<kind>/`.
pub async fn list(store: &dyn BlobStore, kind: Option<JobKind>) -> Result<Vec<JobRecord>> {
    match kind {
        Some(k) => list_kinds(store, &[k]).await,
        None => read_sorted(store, vec![PREFIX.to_string()]).await,
    }
}

/// The records of the given kinds only (each kind's prefix listed and read once), oldest first.
pub async fn list_kinds(store: &dyn BlobStore, kinds: &[JobKind]) -> Result<Vec<JobRecord>> {
    let mut prefixes: Vec<String> = kinds.iter().map(|k| prefix(*k)).collect();
    prefixes.sort();
    prefixes.dedup();
    read_sorted(store, prefixes).await
}

/// The records last written before `t` (and those whose write time the store does not give),
/// oldest first. Newer records are not read.
pub async fn list_written_before(store: &dyn BlobStore, t: OffsetDateTime) -> Result<Vec<JobRecord>> {
    read_sorted_where(store, vec![PREFIX.to_string()], |b| b.last_modified.is_none_or(|m| m < t)).await
}

/// The prefix of one kind's records: `@jobs/<kind>/`.
pub fn prefix(kind: JobKind) -> String {
    format!("{PREFIX}{}/", kind.as_str())
}

async fn read_sorted(store: &dyn BlobStore, prefixes: Vec<String>) -> Result<Vec<JobRecord>> {
    read_sorted_where(store, prefixes, |_| true).await
}

async fn read_sorted_where(
    store: &dyn BlobStore,
    prefixes: Vec<String>,
    wanted: impl Fn(&crate::seams::store::BlobInfo) -> bool,
) -> Result<Vec<JobRecord>> {
    let mut out = Vec::new();
    for prefix in prefixes {
        for blob in store.list(&prefix).await? {
            if !blob.name.ends_with(".json") || !wanted(&blob) {
                continue;
            }
            match store.get(&blob.name).await.and_then(|b| JobRecord::from_json(&blob.name, &b)) {
                Ok(r) => out.push(r),
                Err(e) => tracing::warn!(blob = %blob.name, error = %e, "skipping unreadable job record"),
            }
        }
    }
    out.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seams::store::local::LocalStore;
    use time::macros::datetime;

    #[tokio::test]
    async fn create_claims_once_put_replaces_and_list_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path());
        let now = datetime!(2026-11-21 02:00:00 UTC);
        let mut rec = JobRecord::new(JobKind::RestoreRequest, "req-1", "restore x", now);
        assert_eq!(create(&store, &rec).await.unwrap(), CreateOutcome::Created);
        assert_eq!(create(&store, &rec).await.unwrap(), CreateOutcome::AlreadyExists);
        rec.status = Status::Succeeded;
        rec.bytes = Some(42);
        put(&store, &rec).await.unwrap();
        let back = get(&store, JobKind::RestoreRequest, "req-1").await.unwrap().unwrap();
        assert_eq!(back, rec);
        assert!(back.is_finished());
        assert!(get(&store, JobKind::RestoreTask, "req-1").await.unwrap().is_none());
        let task = JobRecord::new(JobKind::RestoreTask, "req-1-t1", "t", now + time::Duration::seconds(1));
        put(&store, &task).await.unwrap();
        let all = list(&store, None).await.unwrap();
        assert_eq!(all.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["req-1", "req-1-t1"]);
        assert_eq!(list(&store, Some(JobKind::RestoreTask)).await.unwrap().len(), 1);
        let backup = JobRecord::new(JobKind::Backup, "b1", "b", now + time::Duration::seconds(2));
        put(&store, &backup).await.unwrap();
        // Only the kinds asked for, oldest first, each listed once.
        let some = list_kinds(&store, &[JobKind::Backup, JobKind::RestoreTask, JobKind::Backup]).await.unwrap();
        assert_eq!(some.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["req-1-t1", "b1"]);
        assert!(list_kinds(&store, &[JobKind::Drill]).await.unwrap().is_empty());
        assert_eq!(list(&store, None).await.unwrap().len(), 3);
        assert!(name(JobKind::RestoreTask, "x").starts_with(PREFIX));
        assert_eq!(store.tags(&name(JobKind::RestoreRequest, "req-1")).await.unwrap()["status"], "succeeded");
    }
}
