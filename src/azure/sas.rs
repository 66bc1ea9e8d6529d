//! [`FileExport`] on Azure: other containers of the backup account, and read-only URLs signed as
//! **user-delegation SAS**. The key comes from Get User Delegation Key with the identity's own
//! token, so a URL grants at most what the identity may do, expires with the key, and is revoked
//! by revoking the identity's delegation keys; no account key is ever read.
//!
//! Why the signature is computed here and not by `azure_storage_sas`: that crate (1.0) signs only
//! service version 2026-04-06, whose string-to-sign adds two fields (signed request headers and
//! query parameters). Azurite (3.35, what the tests run against) validates every version from
//! 2025-07-05 on with the 2025-07-05 layout, so its URLs work in Azure but are refused by the
//! emulator. [`read_only_blob_sas`] signs the documented 2025-07-05 layout, which Azure and
//! Azurite both accept, with nothing but the fields a read-only blob SAS needs.

use super::{Service, sdk_error};
use crate::domain::error::{Error, Result};
use crate::domain::sas::{DelegationKey, read_only_blob_sas, sas_time};
use crate::domain::secret::Secret;
use crate::seams::store::{BlobStore, FileExport};
use async_trait::async_trait;
use azure_core::credentials::TokenCredential;
use azure_core::http::{ClientOptions, RequestContent, Url};
use azure_storage_blob::models::KeyInfo;
use azure_storage_blob::{BlobServiceClient, BlobServiceClientOptions};
use std::fmt;
use std::sync::Arc;
use time::{Duration, OffsetDateTime};

/// The longest a user-delegation key (and so a URL) may live.
pub const MAX_EXPIRY: Duration = Duration::days(7);
/// Keys start a little in the past: the service rejects a start later than its own clock.
const CLOCK_SKEW: Duration = Duration::minutes(5);

pub struct AzureExport {
    /// `https://acct.blob.core.windows.net` or `https://127.0.0.1:P/devstoreaccount1`.
    endpoint: Url,
    account: String,
    service: BlobServiceClient,
    credential: Arc<dyn TokenCredential>,
    options: ClientOptions,
}

impl fmt::Debug for AzureExport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AzureExport").field("endpoint", &self.endpoint.as_str()).finish_non_exhaustive()
    }
}

impl AzureExport {
    /// Nothing is sent yet.
    pub fn new(endpoint: &str, credential: Arc<dyn TokenCredential>, options: ClientOptions) -> Result<Self> {
        let shown = crate::domain::secret::redact(endpoint);
        let endpoint = Url::parse(endpoint.trim_end_matches('/'))
            .map_err(|e| Error::permanent(format!("blob endpoint {shown:?} is not a url: {e}")))?;
        let account = account_name(&endpoint)
            .ok_or_else(|| Error::permanent(format!("blob endpoint {shown:?} names no storage account")))?;
        let service = BlobServiceClient::new(
            endpoint.clone(),
            Some(credential.clone()),
            Some(BlobServiceClientOptions { client_options: options.clone(), ..Default::default() }),
        )
        .map_err(|e| sdk_error(Service::Blob, format!("open blob service {shown}"), e))?;
        Ok(Self { endpoint, account, service, credential, options })
    }
}

/// The account of an endpoint: the first path segment for the emulator's path-style URLs
/// (`https://127.0.0.1:10000/devstoreaccount1`), else the first label of the host name.
fn account_name(endpoint: &Url) -> Option<String> {
    if let Some(seg) = endpoint.path_segments().and_then(|mut s| s.next()).filter(|s| !s.is_empty()) {
        return Some(seg.to_string());
    }
    match endpoint.host()? {
        url::Host::Domain(d) => d.split('.').next().filter(|s| !s.is_empty()).map(str::to_string),
        _ => None,
    }
}

/// The blob's URL without a query: endpoint, container, then the name's `/`-separated segments
/// (each percent-encoded).
fn blob_url(endpoint: &Url, container: &str, blob: &str) -> Result<Url> {
    let mut url = endpoint.clone();
    {
        let mut segs = url
            .path_segments_mut()
            .map_err(|()| Error::permanent(format!("blob endpoint {endpoint} is not a base url")))?;
        segs.pop_if_empty().push(container);
        for s in blob.split('/') {
            segs.push(s);
        }
    }
    Ok(url)
}

#[async_trait]
impl FileExport for AzureExport {
    async fn container(&self, name: &str) -> Result<Arc<dyn BlobStore>> {
        let store =
            super::AzureBlobStore::new(self.endpoint.as_str(), name, self.credential.clone(), self.options.clone())
                .await?;
        store.ensure_container().await?;
        Ok(Arc::new(store))
    }

    async fn read_only_url(&self, container: &str, blob: &str, expires_at: OffsetDateTime) -> Result<Secret> {
        let now = OffsetDateTime::now_utc();
        if expires_at <= now || expires_at > now + MAX_EXPIRY {
            return Err(Error::permanent(format!(
                "a read-only URL for blob {blob:?} must expire within {} days from now",
                MAX_EXPIRY.whole_days()
            )));
        }
        let what = format!("get a user delegation key to sign a URL for blob {blob:?} in container {container:?}");
        let hint = "the identity needs the Storage Blob Delegator role (included in Storage Blob Data Contributor) \
                    on the account";
        let key = user_delegation_key(&self.service, now - CLOCK_SKEW, expires_at, &what, hint).await?;
        let token = read_only_blob_sas(&self.account, container, blob, &key, expires_at);
        let mut url = blob_url(&self.endpoint, container, blob)?;
        url.set_query(Some(&token));
        Ok(Secret::new(url.to_string()))
    }
}

/// Get Blob Service's user delegation key, valid from `start` to `expiry`. `what` names the
/// purpose in errors, `hint` says which role is missing when the service refuses.
pub(crate) async fn user_delegation_key(
    service: &BlobServiceClient,
    start: OffsetDateTime,
    expiry: OffsetDateTime,
    what: &str,
    hint: &str,
) -> Result<DelegationKey> {
    let info = KeyInfo { start: Some(start), expiry: Some(expiry), ..Default::default() };
    let body = RequestContent::try_from(info).map_err(|e| sdk_error(Service::Blob, what, e))?;
    let key = service
        .get_user_delegation_key(body, None)
        .await
        .and_then(|r| r.into_model())
        .map_err(|e| sdk_error(Service::Blob, what, e).with_hint(hint))?;
    let missing = |name: &str| Error::permanent(format!("{what}: the user delegation key has no {name}"));
    let field = |v: Option<String>, name: &str| v.ok_or_else(|| missing(name));
    let time_field = |v: Option<OffsetDateTime>, name: &str| v.map(sas_time).ok_or_else(|| missing(name));
    Ok(DelegationKey {
        oid: field(key.signed_oid, "signed oid")?,
        tid: field(key.signed_tid, "signed tid")?,
        start: time_field(key.signed_start, "signed start")?,
        expiry: time_field(key.signed_expiry, "signed expiry")?,
        service: field(key.signed_service, "signed service")?,
        version: field(key.signed_version, "signed version")?,
        value: key.value.ok_or_else(|| missing("value"))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_and_blob_urls() {
        let azurite = Url::parse("https://127.0.0.1:10000/devstoreaccount1").unwrap();
        assert_eq!(account_name(&azurite).as_deref(), Some("devstoreaccount1"));
        let azure = Url::parse("https://acct.blob.core.windows.net").unwrap();
        assert_eq!(account_name(&azure).as_deref(), Some("acct"));
        assert_eq!(account_name(&Url::parse("https://10.0.0.1").unwrap()), None);
        let u = blob_url(&azurite, "exports", "case 1/main/My=20DB/x.dump.zst").unwrap();
        assert_eq!(u.as_str(), "https://127.0.0.1:10000/devstoreaccount1/exports/case%201/main/My=20DB/x.dump.zst");
        let u = blob_url(&azure, "exports", "a/b").unwrap();
        assert_eq!(u.as_str(), "https://acct.blob.core.windows.net/exports/a/b");
    }
}
