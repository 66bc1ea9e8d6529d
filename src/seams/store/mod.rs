//! The blob-store seam: what the backup and restore pipelines need from object storage.
//!
//! Two implementations: [`local::LocalStore`] (a directory, the default for running without
//! Azure) and `crate::azure::AzureBlobStore` (Azure Blob Storage through the official SDK).
//! Both pass the same contract suite in `tests/store_contract.rs`. [`retry::RetryingStore`] wraps
//! either with retries of transient errors; `runtime` builds it, so every caller gets them.
//!
//! Names are `/`-separated paths relative to the store's root (a container in Azure). Only
//! [`crate::domain::layout`] builds them.

use crate::domain::error::Result;
use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;

pub mod local;
pub mod retry;

/// A stream of a blob's bytes, in order.
pub type ByteStream = BoxStream<'static, Result<Bytes>>;

/// The largest block Azure accepts (4000 MiB). The pipeline never asks for more.
pub const MAX_BLOCK_SIZE: usize = 4000 * 1024 * 1024;
/// The most blocks one block blob may have.
pub const MAX_BLOCKS: usize = 50_000;

/// One listed blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobInfo {
    pub name: String,
    pub size: u64,
    /// When the blob was last written, if the store says.
    pub last_modified: Option<time::OffsetDateTime>,
}

pub use crate::domain::layout::{Tags, Tier};

/// Fixed-width block id for block `index` (base64 of an 8-digit number).
pub fn block_id(index: usize) -> String {
    base64::Engine::encode(&base64::engine::general_purpose::STANDARD, format!("{index:08}"))
}

/// What [`BlobStore::properties`] reports about one blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobProps {
    pub size: u64,
    /// The access tier, when the store has tiers and reports one.
    pub tier: Option<Tier>,
    /// Azure's `x-ms-archive-status` while an archived blob is being rehydrated, e.g.
    /// `rehydrate-pending-to-hot`.
    pub archive_status: Option<String>,
    /// When the blob's access tier last changed (Azure's `x-ms-access-tier-change-time`: a Set
    /// Blob Tier, including the end of a rehydration), if the store reports it. Azure leaves it
    /// out for a blob whose tier was never set explicitly.
    pub tier_changed_at: Option<time::OffsetDateTime>,
}

/// The storage contract.
///
/// A [`crate::domain::error::Kind::Permanent`] error (a missing blob, a refused precondition, a
/// forbidden request) will not get better by retrying. A [`crate::domain::error::Kind::Transient`]
/// one may, and leaves the outcome of a write unknown: it may have taken effect. Each method says
/// whether a retry after a transient error is safe; [`retry::RetryingStore`] is the one place that
/// retries, and only what is said safe here. Callers do not retry by hand.
#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// A short human description ("local:/var/x", "azure:https://acct/container") for logs.
    fn describe(&self) -> String;

    /// Stage one block of a blob that is being written. Staged blocks are invisible to readers
    /// until [`BlobStore::commit_blocks`]. Idempotent: staging the same `block_id` again replaces
    /// it, so a retry is safe (the block is a `Bytes`, which can be sent again). All block ids of
    /// one blob have the same length.
    async fn stage_block(&self, name: &str, block_id: &str, data: Bytes) -> Result<()>;

    /// Make the blob's content the concatenation of the given staged blocks, atomically: a reader
    /// sees the old content (or no blob) before, and the whole new content after. Sets the tags.
    /// Replaces an existing blob of the same name. Retry safe: a commit that failed transiently
    /// either changed nothing or committed exactly these blocks, and committing the same list
    /// again gives the same blob (Azure finds already committed blocks under "latest"; the local
    /// store fails only before its rename).
    async fn commit_blocks(&self, name: &str, block_ids: &[String], tags: &Tags) -> Result<()>;

    /// Write a whole small blob (a job record, a hold, a copied manifest) in one atomic step,
    /// replacing any blob of that name: a reader sees the old content (or no blob) or the whole
    /// new content with its tags, never a mix. For data that is already in memory; a stream goes
    /// through [`BlobStore::stage_block`] and [`BlobStore::commit_blocks`]. Idempotent: writing
    /// the same bytes again gives the same blob, so a retry is safe.
    async fn put(&self, name: &str, data: Bytes, tags: &Tags) -> Result<()>;

    /// Write a small blob in one atomic step if no blob of that name exists, and answer
    /// [`CreateOutcome::AlreadyExists`] (writing nothing, tags included) if one does. This is how
    /// manifests and claims are written, so that exactly one attempt of a job can publish.
    ///
    /// Retries need care: after a transient error the blob may have been written, and a retried
    /// create then finds it. [`retry::RetryingStore`] answers [`CreateOutcome::Created`] in that
    /// case only when the blob holds exactly the bytes this create meant to write (the earlier
    /// attempt landed), and [`CreateOutcome::AlreadyExists`] when it holds other bytes.
    async fn create(&self, name: &str, data: Bytes, tags: &Tags) -> Result<CreateOutcome>;

    /// Read a whole blob into memory. For small blobs (manifests) only. A read: retry safe.
    async fn get(&self, name: &str) -> Result<Bytes>;

    /// Stream a blob's bytes in order. A missing blob is a permanent error. Opening the stream
    /// may be retried; an error in the middle of the stream may not (its consumer has taken the
    /// bytes before it), so it reaches the caller, who decides for the whole read.
    async fn read(&self, name: &str) -> Result<ByteStream>;

    /// Stream the bytes `range` of a blob, in order (a ranged read: only those bytes are
    /// fetched). A missing blob is a permanent error; a range past the end yields what there is,
    /// so the caller checks the length. Retry safe as [`BlobStore::read`]: its opening only. The
    /// default reads the whole blob and passes the range on, for stores that cannot do better.
    async fn read_range(&self, name: &str, range: std::ops::Range<u64>) -> Result<ByteStream> {
        Ok(slice_stream(self.read(name).await?, range))
    }

    /// The blob's tags. A read: retry safe.
    async fn tags(&self, name: &str) -> Result<Tags>;

    /// Committed blobs whose names start with `prefix`, sorted by name. A read: retry safe.
    async fn list(&self, prefix: &str) -> Result<Vec<BlobInfo>>;

    /// Whether a committed blob of that name exists. A read: retry safe.
    async fn exists(&self, name: &str) -> Result<bool>;

    /// Remove a blob. Idempotent: removing a missing blob succeeds, so a retry is safe.
    async fn delete(&self, name: &str) -> Result<()>;

    /// Forget the blocks staged for a blob that will not be committed, where the store can.
    /// Azure cannot (it discards uncommitted blocks after a week), so the default does nothing.
    /// Idempotent: retry safe.
    async fn discard_staged(&self, _name: &str) -> Result<()> {
        Ok(())
    }

    /// Move a blob to another access tier (Set Blob Tier). Moving an archived blob to Hot starts
    /// a standard-priority rehydration; the blob stays offline until it completes. A store
    /// without tiers answers [`crate::domain::error::Error::unsupported`] (permanent), which callers
    /// treat as "skip, with a logged reason". Retry safe: setting a tier again is a no-op, and a
    /// retried start of a rehydration that the first attempt began is refused permanently (409
    /// `BlobBeingRehydrated`), which callers read from the blob's properties.
    async fn set_tier(&self, name: &str, _tier: Tier) -> Result<()> {
        Err(crate::domain::error::Error::unsupported(format!(
            "set the access tier of blob {name:?}: access tiers are not supported by {}",
            self.describe()
        )))
    }

    /// A blob's size, tier, archive status and last tier change. A missing blob is a permanent
    /// error; a store without tiers answers [`crate::domain::error::Error::unsupported`]. A read:
    /// retry safe.
    async fn properties(&self, name: &str) -> Result<BlobProps> {
        Err(crate::domain::error::Error::unsupported(format!(
            "read the properties of blob {name:?}: access tiers are not supported by {}",
            self.describe()
        )))
    }

    /// Exporting blobs as plain files behind time-limited, read-only URLs ("restore as files"),
    /// where the store can sign such URLs: Azure can (user-delegation SAS), a directory cannot.
    fn file_export(&self) -> Option<&dyn FileExport> {
        None
    }
}

/// The capability behind a restore's `as-files` mode.
#[async_trait]
pub trait FileExport: Send + Sync {
    /// A store on another container of the same account, created if it is missing. Idempotent:
    /// retry safe.
    async fn container(&self, name: &str) -> Result<std::sync::Arc<dyn BlobStore>>;

    /// A URL that lets anyone holding it read one blob, and nothing else, over HTTPS only, until
    /// `expires_at`. Signed with a user-delegation key (the identity's own rights, revocable),
    /// never an account key. The URL is a secret: it carries the signature. Writes nothing:
    /// retry safe.
    async fn read_only_url(
        &self,
        container: &str,
        blob: &str,
        expires_at: time::OffsetDateTime,
    ) -> Result<crate::domain::secret::Secret>;
}

/// The part `range` of a stream of a whole blob.
pub fn slice_stream(stream: ByteStream, range: std::ops::Range<u64>) -> ByteStream {
    use futures::StreamExt;
    stream
        .scan(0u64, move |pos, item| {
            let out = match item {
                Err(e) => Some(Err(e)),
                Ok(b) => {
                    let start = *pos;
                    let end = start + b.len() as u64;
                    *pos = end;
                    if start >= range.end {
                        None
                    } else if end <= range.start {
                        Some(Ok(Bytes::new()))
                    } else {
                        let from = range.start.saturating_sub(start) as usize;
                        let to = (range.end.min(end) - start) as usize;
                        Some(Ok(b.slice(from..to)))
                    }
                }
            };
            futures::future::ready(out)
        })
        .filter(|r| futures::future::ready(!matches!(r, Ok(b) if b.is_empty())))
        .boxed()
}

/// What [`BlobStore::create`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateOutcome {
    Created,
    /// A blob of that name was already there; nothing was written.
    AlreadyExists,
}
