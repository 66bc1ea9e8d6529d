//! Legal holds (`pgvault keep <id>`): a backup with a hold is never removed by retention.
//!
//! A hold is a small marker blob `@holds/<backup id>.json` in the backup store, beside the
//! backup rather than on it: both stores support plain blobs (tags cannot be changed after
//! commit through the store contract, and a local directory has no tags to change), and removing
//! the marker is the only way to release the hold. Like `@jobs/`, the `@` prefix is never a
//! server segment, so the catalog skips it.

use crate::domain::error::Result;
use crate::seams::store::{BlobStore, Tags};
use bytes::Bytes;
use std::collections::HashSet;
use time::OffsetDateTime;

pub const PREFIX: &str = "@holds/";
const SUFFIX: &str = ".json";

/// The marker's name for a backup id.
pub fn name(id: &str) -> String {
    format!("{PREFIX}{id}{SUFFIX}")
}

/// Set a hold (idempotent). The backup must exist.
pub async fn set(store: &dyn BlobStore, id: &str, by: &str, now: OffsetDateTime) -> Result<()> {
    crate::features::catalog::manifest(store, id).await?;
    let body = serde_json::json!({
        "backup": id,
        "held_by": by,
        "held_at": now.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
    });
    let mut tags = Tags::new();
    tags.insert("pgvault".into(), "hold".into());
    store.put(&name(id), Bytes::from(body.to_string()), &tags).await
}

/// Release a hold (idempotent).
pub async fn release(store: &dyn BlobStore, id: &str) -> Result<()> {
    store.delete(&name(id)).await
}

/// Whether a backup has a hold now: one read, for a check right before a removal.
pub async fn is_held(store: &dyn BlobStore, id: &str) -> Result<bool> {
    let n = name(id);
    store.exists(&n).await.map_err(|e| e.context(format!("check hold {n:?}")))
}

/// Every held backup id.
pub async fn list(store: &dyn BlobStore) -> Result<HashSet<String>> {
    Ok(store
        .list(PREFIX)
        .await?
        .into_iter()
        .filter_map(|b| b.name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX).map(str::to_string))
        .collect())
}
