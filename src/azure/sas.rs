//! User-delegation SAS on Azure, signed by the official `azure_storage_sas` builder (service
//! version 2026-04-06): the key comes from Get User Delegation Key with the identity's own token,
//! so a SAS grants at most what the identity may do, expires with the key, and is revoked by
//! revoking the identity's delegation keys; no account key is ever read.
//!
//! Two users: [`AzureExport`] (the [`FileExport`] of restores as files: other containers of the
//! backup account, read-only blob URLs) and the pgBackRest token signer
//! (`azure::pgbackrest::AzureSasSigner`, container SAS), both through [`SasKeys`].

use super::{Service, sdk_error};
use crate::domain::error::{Error, Result};
use crate::domain::secret::Secret;
use crate::seams::store::{BlobStore, FileExport};
use async_trait::async_trait;
use azure_core::credentials::TokenCredential;
use azure_core::http::{ClientOptions, RequestContent, Url};
use azure_storage_blob::models::KeyInfo;
use azure_storage_blob::{BlobServiceClient, BlobServiceClientOptions};
use azure_storage_common::models::UserDelegationKey;
use azure_storage_sas::{SasBuilder, SasProtocol};
use std::fmt;
use std::sync::Arc;
use time::{Duration, OffsetDateTime};

/// The longest a user-delegation key (and so a URL) may live.
pub const MAX_EXPIRY: Duration = Duration::days(7);
/// Keys start a little in the past: the service rejects a start later than its own clock.
const CLOCK_SKEW: Duration = Duration::minutes(5);

pub struct AzureExport {
    keys: SasKeys,
    credential: Arc<dyn TokenCredential>,
    options: ClientOptions,
}

impl fmt::Debug for AzureExport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AzureExport").field("endpoint", &self.keys.endpoint.as_str()).finish_non_exhaustive()
    }
}

impl AzureExport {
    /// Nothing is sent yet.
    pub fn new(endpoint: &str, credential: Arc<dyn TokenCredential>, options: ClientOptions) -> Result<Self> {
        Ok(Self { keys: SasKeys::new(endpoint, credential.clone(), options.clone())?, credential, options })
    }
}

/// One storage account's Get User Delegation Key, and the account name the SAS is signed for.
pub(crate) struct SasKeys {
    /// `https://acct.blob.core.windows.net` or `https://127.0.0.1:P/devstoreaccount1`.
    pub(crate) endpoint: Url,
    pub(crate) account: String,
    service: BlobServiceClient,
}

impl SasKeys {
    /// Nothing is sent yet.
    pub(crate) fn new(endpoint: &str, credential: Arc<dyn TokenCredential>, options: ClientOptions) -> Result<Self> {
        let shown = crate::domain::secret::redact(endpoint);
        let endpoint = Url::parse(endpoint.trim_end_matches('/'))
            .map_err(|e| Error::permanent(format!("blob endpoint {shown:?} is not a url: {e}")))?;
        let account = account_name(&endpoint)
            .ok_or_else(|| Error::permanent(format!("blob endpoint {shown:?} names no storage account")))?;
        let service = BlobServiceClient::new(
            endpoint.clone(),
            Some(credential),
            Some(BlobServiceClientOptions { client_options: options, ..Default::default() }),
        )
        .map_err(|e| sdk_error(Service::Blob, format!("open blob service {shown}"), e))?;
        Ok(Self { endpoint, account, service })
    }

    /// Get User Delegation Key, valid from `start` to `expiry`. `what` names the purpose in
    /// errors, `hint` says which role is missing when the service refuses.
    pub(crate) async fn key(
        &self,
        start: OffsetDateTime,
        expiry: OffsetDateTime,
        what: &str,
        hint: &str,
    ) -> Result<UserDelegationKey> {
        let info = KeyInfo { start: Some(start), expiry: Some(expiry), ..Default::default() };
        let body = RequestContent::try_from(info).map_err(|e| sdk_error(Service::Blob, what, e))?;
        self.service
            .get_user_delegation_key(body, None)
            .await
            .and_then(|r| r.into_model())
            .map_err(|e| sdk_error(Service::Blob, what, e).with_hint(hint))
    }

    /// A builder for a SAS of this account, signed with `key`, expiring at `expiry`. A key
    /// without a required field is refused with `what` in the message.
    pub(crate) fn builder<'k>(
        &self,
        key: &'k UserDelegationKey,
        expiry: OffsetDateTime,
        what: &str,
    ) -> Result<SasBuilder<'k>> {
        SasBuilder::new(self.account.clone(), key, expiry)
            .map_err(|e| Error::permanent(format!("{what}: the user delegation key cannot sign: {e}")))
    }
}

/// The account of an endpoint: the first path segment for the emulator's path-style URLs
/// (`https://127.0.0.1:10000/devstoreaccount1`), else the first label of the host name.
pub(crate) fn account_name(endpoint: &Url) -> Option<String> {
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
        let store = super::AzureBlobStore::new(
            self.keys.endpoint.as_str(),
            name,
            self.credential.clone(),
            self.options.clone(),
        )
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
        let key = self.keys.key(now - CLOCK_SKEW, expires_at, &what, hint).await?;
        let token = self
            .keys
            .builder(&key, expires_at, &what)?
            .blob(container, blob)
            .read()
            .protocol(SasProtocol::Https)
            .build();
        let mut url = blob_url(&self.keys.endpoint, container, blob)?;
        url.set_query(Some(&token));
        Ok(Secret::new(url.to_string()))
    }
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
