//! [`BlobStore`] on Azure Blob Storage, through `azure_storage_blob` with a token credential.
//!
//! Mapping of the contract:
//! - `stage_block` / `commit_blocks`: Put Block / Put Block List. The trait's block id string is
//!   sent as the raw block id (the SDK base64-encodes it), so equal-length ids stay equal-length.
//!   Tags travel in the commit itself (`x-ms-tags`), so content and tags appear together.
//! - `put`: one Put Blob (the SDK's upload with a partition as large as the data, so it never
//!   falls back to staged blocks), which replaces the blob and sets its tags in one request.
//! - `create`: the same Put Blob with `If-None-Match: *`; 409/412 means someone else was first.
//! - `read`: ranges of [`READ_PARTITION`] bytes, at most [`READ_PARALLEL`] in flight, yielded in
//!   order; every range after the first pins the first one's ETag, so a blob replaced mid-read
//!   fails (412) instead of mixing two versions. Each range must arrive whole: the service
//!   says the blob's size (`Content-Range`), and a range that comes back short (a body cut off
//!   with a Content-Length that matches the cut) or breaks off mid-body (a reset connection) is
//!   requested again, up to [`RANGE_ATTEMPTS`] times, before a transient error ends the stream.
//!   Without this a cut-off answer read as a short blob: a restore named a good backup corrupt
//!   (permanent), and a reset mid-body failed the whole restore.

use super::{Service, sdk_error};
use crate::domain::error::{Error, Result};
use crate::seams::store::{BlobInfo, BlobProps, BlobStore, ByteStream, CreateOutcome, FileExport, Tags, Tier};
use async_trait::async_trait;
use azure_core::credentials::TokenCredential;
use azure_core::error::ErrorKind;
use azure_core::http::headers::HeaderName;
use azure_core::http::{ClientOptions, Etag, RequestContent, StatusCode, Url};
use azure_storage_blob::models::{
    AccessTier, ArchiveStatus, BlobClientDeleteOptions, BlobClientDownloadOptions,
    BlobClientGetPropertiesResultHeaders, BlobClientSetTierOptions, BlobContainerClientListBlobsOptions,
    BlockBlobClientCommitBlockListOptions, BlockBlobClientUploadOptions, BlockLookupList, DeleteSnapshotsOptionType,
    RehydratePriority,
};
use azure_storage_blob::{BlobClient, BlobContainerClient, BlobContainerClientOptions};
use bytes::{Bytes, BytesMut};
use futures::{StreamExt, TryStreamExt};
use std::collections::HashMap;
use std::fmt;
use std::num::NonZero;
use std::sync::Arc;

/// Parallel range requests of one `read`, and their size: at most 4 × 8 MiB in flight.
const READ_PARALLEL: NonZero<usize> = NonZero::new(4).unwrap();
const READ_PARTITION: NonZero<usize> = NonZero::new(8 * 1024 * 1024).unwrap();
/// How often one range of a read is requested before its failure ends the read.
const RANGE_ATTEMPTS: usize = 3;
/// The longest blob name Azure accepts.
const MAX_NAME_LEN: usize = 1024;

/// A container in Azure Blob Storage.
pub struct AzureBlobStore {
    container: BlobContainerClient,
    /// The container URL, for logs. Never holds a credential (token auth only, no SAS).
    url: String,
    /// Other containers of the account and user-delegation SAS, for restores as files.
    export: super::sas::AzureExport,
}

impl fmt::Debug for AzureBlobStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AzureBlobStore").field("url", &self.url).finish_non_exhaustive()
    }
}

impl AzureBlobStore {
    /// A store on `container` of the blob service at `endpoint`
    /// (`https://acct.blob.core.windows.net`, or `https://127.0.0.1:P/devstoreaccount1` for
    /// Azurite). A trailing slash on the endpoint is ignored. Nothing is sent yet.
    pub async fn new(
        endpoint: &str,
        container: &str,
        credential: Arc<dyn TokenCredential>,
        options: ClientOptions,
    ) -> Result<Self> {
        let shown = crate::domain::secret::redact(endpoint);
        let mut url = Url::parse(endpoint.trim_end_matches('/'))
            .map_err(|e| Error::permanent(format!("blob endpoint {shown:?} is not a url: {e}")))?;
        if url.scheme() != "https" {
            return Err(Error::permanent(format!(
                "blob endpoint {shown:?} must use https (token authentication needs it)"
            )));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(Error::permanent(format!(
                "blob endpoint {shown:?} must not carry a query string: pgvault authenticates \
                 with a token, not a SAS"
            )));
        }
        if !valid_container_name(container) {
            return Err(Error::permanent(format!(
                "invalid container name {container:?}: 3-63 characters of lower-case letters, \
                 digits and single hyphens, starting and ending with a letter or digit"
            )));
        }
        url.path_segments_mut()
            .map_err(|()| Error::permanent(format!("blob endpoint {shown:?} is not a base url")))?
            .pop_if_empty()
            .push(container);
        let export = super::sas::AzureExport::new(endpoint, credential.clone(), options.clone())?;
        let client = BlobContainerClient::new(
            url.clone(),
            Some(credential),
            Some(BlobContainerClientOptions { client_options: options, ..Default::default() }),
        )
        .map_err(|e| sdk_error(Service::Blob, format!("open container {url}"), e))?;
        Ok(Self { container: client, url: crate::domain::secret::redact(url.as_str()), export })
    }

    /// Create the container if it does not exist. Idempotent.
    pub async fn ensure_container(&self) -> Result<()> {
        match self.container.create(None).await {
            Ok(_) => Ok(()),
            Err(e) if error_code(&e) == Some("ContainerAlreadyExists") => Ok(()),
            Err(e) if error_code(&e) == Some("ContainerBeingDeleted") => Err(Error::transient(format!(
                "create container {}: the container is being deleted; try again later",
                self.url
            ))),
            Err(e) => Err(sdk_error(Service::Blob, format!("create container {}", self.url), e)),
        }
    }

    fn blob(&self, name: &str) -> Result<BlobClient> {
        check_name(name)?;
        Ok(self.container.blob_client(name))
    }
}

/// Azure's container naming rules.
fn valid_container_name(name: &str) -> bool {
    (3..=63).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--")
}

/// Names are `/`-separated paths: no empty, `.` or `..` segment, at most 1024 characters.
fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.chars().count() <= MAX_NAME_LEN
        && name.split('/').all(|s| !s.is_empty() && s != "." && s != "..")
        && !name.chars().any(char::is_control);
    if ok { Ok(()) } else { Err(Error::permanent(format!("invalid blob name {name:?}"))) }
}

/// The service's error code (`x-ms-error-code`), if the error is an HTTP error.
fn error_code(e: &azure_core::Error) -> Option<&str> {
    match e.kind() {
        ErrorKind::HttpResponse { error_code, .. } => error_code.as_deref(),
        _ => None,
    }
}

fn is_not_found(e: &azure_core::Error) -> bool {
    e.http_status() == Some(StatusCode::NotFound)
}

/// Upload options that keep an upload of `data` one Put Blob request: a partition at least as
/// large as the data stops the SDK from cutting it into staged blocks, so content, tags and any
/// condition (If-None-Match) are one atomic write.
fn one_put_blob(data: &Bytes) -> BlockBlobClientUploadOptions<'static> {
    let one_shot = NonZero::new((data.len() as u64).max(1)).expect("at least 1");
    BlockBlobClientUploadOptions {
        partition_size: Some(one_shot),
        parallel: Some(NonZero::new(1).expect("1")),
        ..Default::default()
    }
}

fn sdk_tags(tags: &Tags) -> HashMap<String, String> {
    tags.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// One range of a blob, whole, with the blob's size and ETag. A request that fails has had
/// the SDK's retries already and ends the read; an answer whose body breaks off or comes back
/// short is requested again, [`RANGE_ATTEMPTS`] times in all, since the SDK cannot tell.
async fn read_range(
    blob: &BlobClient,
    name: &str,
    range: std::ops::Range<u64>,
    etag: Option<&Etag>,
) -> Result<(Bytes, u64, Option<Etag>)> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let failed = match fetch_range(blob, name, range.clone(), etag).await? {
            Fetched::Whole(bytes, total, tag) => {
                let expected = (range.end.min(total)).saturating_sub(range.start);
                if bytes.len() as u64 == expected {
                    return Ok((bytes, total, tag));
                }
                Error::transient(format!(
                    "read blob {name:?}: the service sent {} of the {expected} bytes at offset {} of {total}",
                    bytes.len(),
                    range.start
                ))
            }
            Fetched::Broken(e) => e,
        };
        if attempt >= RANGE_ATTEMPTS {
            return Err(failed);
        }
        tracing::debug!(blob = name, offset = range.start, attempt, error = %failed, "range read incomplete; requesting it again");
    }
}

/// What one range request gave: the body, or how it broke off.
enum Fetched {
    /// The body as sent, the blob's size (from `Content-Range`) and its ETag.
    Whole(Bytes, u64, Option<Etag>),
    Broken(Error),
}

/// One request for `range` (the SDK falls back to the whole blob for an empty one), its body
/// collected. An error is the request's (after the SDK's retries).
async fn fetch_range(
    blob: &BlobClient,
    name: &str,
    range: std::ops::Range<u64>,
    etag: Option<&Etag>,
) -> Result<Fetched> {
    let what = || format!("read blob {name:?}");
    let len = NonZero::new((range.end - range.start).max(1) as usize).expect("at least 1");
    let mut rsp = blob
        .download(Some(BlobClientDownloadOptions {
            range: Some(range.clone().into()),
            parallel: Some(NonZero::new(1).expect("1")),
            partition_size: Some(len),
            if_match: etag.cloned(),
            ..Default::default()
        }))
        .await
        .map_err(|e| sdk_error(Service::Blob, what(), e))?;
    let total = rsp
        .headers
        .get_optional_str(&HeaderName::from_static("content-range"))
        .and_then(|r| r.rsplit('/').next())
        .and_then(|t| t.trim().parse::<u64>().ok())
        .or(rsp.properties.content_length)
        .unwrap_or(0);
    let tag = rsp.properties.etag.clone();
    // One allocation of the range's size: growing by doubling copied every byte about twice
    // and held up to 1.5 ranges per range in flight.
    let expect = rsp.properties.content_length.unwrap_or(len.get() as u64).min(len.get() as u64);
    let mut buf = BytesMut::with_capacity(expect as usize);
    loop {
        match rsp.body.try_next().await {
            Ok(Some(chunk)) => buf.extend_from_slice(&chunk),
            Ok(None) => return Ok(Fetched::Whole(buf.freeze(), total, tag)),
            Err(e) => return Ok(Fetched::Broken(sdk_error(Service::Blob, what(), e))),
        }
    }
}

#[async_trait]
impl BlobStore for AzureBlobStore {
    fn describe(&self) -> String {
        format!("azure:{}", self.url)
    }

    fn file_export(&self) -> Option<&dyn FileExport> {
        Some(&self.export)
    }

    async fn stage_block(&self, name: &str, block_id: &str, data: Bytes) -> Result<()> {
        let len = data.len() as u64;
        self.blob(name)?
            .block_blob_client()
            .stage_block(block_id.as_bytes(), len, data.into(), None)
            .await
            .map_err(|e| sdk_error(Service::Blob, format!("stage block {block_id:?} of blob {name:?}"), e))?;
        Ok(())
    }

    async fn commit_blocks(&self, name: &str, block_ids: &[String], tags: &Tags) -> Result<()> {
        let what = || format!("commit {} blocks of blob {name:?}", block_ids.len());
        let list = BlockLookupList {
            latest: Some(block_ids.iter().map(|id| id.as_bytes().to_vec()).collect()),
            ..Default::default()
        };
        let body = RequestContent::try_from(list).map_err(|e| sdk_error(Service::Blob, what(), e))?;
        let options = BlockBlobClientCommitBlockListOptions::default().with_tags(sdk_tags(tags));
        self.blob(name)?
            .block_blob_client()
            .commit_block_list(body, Some(options))
            .await
            .map_err(|e| sdk_error(Service::Blob, what(), e))?;
        Ok(())
    }

    async fn put(&self, name: &str, data: Bytes, tags: &Tags) -> Result<()> {
        let options = one_put_blob(&data).with_tags(sdk_tags(tags));
        self.blob(name)?
            .upload(data.into(), Some(options))
            .await
            .map_err(|e| sdk_error(Service::Blob, format!("write blob {name:?}"), e))?;
        Ok(())
    }

    async fn create(&self, name: &str, data: Bytes, tags: &Tags) -> Result<CreateOutcome> {
        let options = one_put_blob(&data).if_not_exists().with_tags(sdk_tags(tags));
        match self.blob(name)?.upload(data.into(), Some(options)).await {
            Ok(_) => Ok(CreateOutcome::Created),
            Err(e)
                if matches!(e.http_status(), Some(StatusCode::Conflict | StatusCode::PreconditionFailed))
                    && error_code(&e) != Some("ContainerBeingDeleted") =>
            {
                Ok(CreateOutcome::AlreadyExists)
            }
            Err(e) => Err(sdk_error(Service::Blob, format!("create blob {name:?}"), e)),
        }
    }

    async fn get(&self, name: &str) -> Result<Bytes> {
        let mut body = self.read(name).await?;
        let mut buf = BytesMut::new();
        while let Some(chunk) = body.try_next().await? {
            buf.extend_from_slice(&chunk);
        }
        Ok(buf.freeze())
    }

    async fn read(&self, name: &str) -> Result<ByteStream> {
        self.read_range(name, 0..u64::MAX).await
    }

    async fn read_range(&self, name: &str, range: std::ops::Range<u64>) -> Result<ByteStream> {
        if range.is_empty() {
            return Ok(futures::stream::empty().boxed());
        }
        let blob = Arc::new(self.blob(name)?);
        let part = READ_PARTITION.get() as u64;
        // The first range says the blob's size and ETag; the others follow from them.
        let (first, total, etag) =
            read_range(&blob, name, range.start..range.end.min(range.start + part), None).await?;
        let end = range.end.min(total);
        let rest: Vec<std::ops::Range<u64>> =
            (range.start + part..end).step_by(part as usize).map(|start| start..(start + part).min(end)).collect();
        let name = name.to_string();
        let tail = futures::stream::iter(rest)
            .map(move |range| {
                let (blob, name, etag) = (blob.clone(), name.clone(), etag.clone());
                async move { read_range(&blob, &name, range, etag.as_ref()).await.map(|(bytes, _, _)| bytes) }
            })
            .buffered(READ_PARALLEL.get());
        Ok(futures::stream::once(async move { Ok(first) }).chain(tail).boxed())
    }

    async fn tags(&self, name: &str) -> Result<Tags> {
        let what = || format!("get tags of blob {name:?}");
        let tags = self
            .blob(name)?
            .get_tags(None)
            .await
            .and_then(|r| r.into_model())
            .map_err(|e| sdk_error(Service::Blob, what(), e))?;
        Ok(tags
            .blob_tag_set
            .unwrap_or_default()
            .into_iter()
            .filter_map(|t| Some((t.key?, t.value.unwrap_or_default())))
            .collect())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<BlobInfo>> {
        let what = || format!("list blobs with prefix {prefix:?} in {}", self.url);
        let options = BlobContainerClientListBlobsOptions {
            prefix: (!prefix.is_empty()).then(|| prefix.to_string()),
            ..Default::default()
        };
        let mut pager = self.container.list_blobs(Some(options)).map_err(|e| sdk_error(Service::Blob, what(), e))?;
        let mut out = Vec::new();
        while let Some(item) = pager.try_next().await.map_err(|e| sdk_error(Service::Blob, what(), e))? {
            let Some(name) = item.name else { continue };
            let (size, last_modified) =
                item.properties.map(|p| (p.content_length.unwrap_or(0), p.last_modified)).unwrap_or_default();
            out.push(BlobInfo { name, size, last_modified });
        }
        // The service sorts too, but by its own collation; the contract is byte order.
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn exists(&self, name: &str) -> Result<bool> {
        self.blob(name)?.exists().await.map_err(|e| sdk_error(Service::Blob, format!("check blob {name:?}"), e))
    }

    async fn set_tier(&self, name: &str, tier: Tier) -> Result<()> {
        let sdk_tier = match tier {
            Tier::Hot => AccessTier::Hot,
            Tier::Cool => AccessTier::Cool,
            Tier::Cold => AccessTier::Cold,
            Tier::Archive => AccessTier::Archive,
        };
        // Standard priority: up to 15 hours out of Archive, at the lower price.
        let options =
            BlobClientSetTierOptions { rehydrate_priority: Some(RehydratePriority::Standard), ..Default::default() };
        self.blob(name)?
            .set_tier(sdk_tier, Some(options))
            .await
            .map_err(|e| sdk_error(Service::Blob, format!("set blob {name:?} to the {tier} tier"), e))?;
        Ok(())
    }

    async fn properties(&self, name: &str) -> Result<BlobProps> {
        let what = || format!("get properties of blob {name:?}");
        let rsp = self.blob(name)?.get_properties(None).await.map_err(|e| sdk_error(Service::Blob, what(), e))?;
        let header = |e| sdk_error(Service::Blob, what(), e);
        let size = rsp.content_length().map_err(header)?.unwrap_or(0);
        let tier = rsp.access_tier().map_err(header)?.as_deref().and_then(Tier::parse);
        let archive_status = rsp.archive_status().map_err(header)?.map(|s| match s {
            ArchiveStatus::UnknownValue(v) => v,
            known => known.to_string(),
        });
        let tier_changed_at = rsp.access_tier_change_time().map_err(header)?;
        Ok(BlobProps { size, tier, archive_status, tier_changed_at })
    }

    async fn delete(&self, name: &str) -> Result<()> {
        let options = BlobClientDeleteOptions {
            delete_snapshots: Some(DeleteSnapshotsOptionType::Include),
            ..Default::default()
        };
        match self.blob(name)?.delete(Some(options)).await {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) && error_code(&e) != Some("ContainerNotFound") => Ok(()),
            Err(e) => Err(sdk_error(Service::Blob, format!("delete blob {name:?}"), e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(check_name("a/b c/d=e/ü.zst").is_ok());
        for bad in ["", "/a", "a/", "a//b", "a/./b", "../a", "a\nb"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert!(valid_container_name("pgvault-backups"));
        for bad in ["ab", "Upper", "-a-b", "a--b", "a_b"] {
            assert!(!valid_container_name(bad), "{bad:?}");
        }
    }
}
