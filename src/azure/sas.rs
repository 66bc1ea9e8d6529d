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
use crate::domain::secret::Secret;
use crate::seams::store::{BlobStore, FileExport};
use async_trait::async_trait;
use azure_core::credentials::TokenCredential;
use azure_core::http::{ClientOptions, RequestContent, Url};
use azure_storage_blob::models::KeyInfo;
use azure_storage_blob::{BlobServiceClient, BlobServiceClientOptions};
use base64::Engine;
use hmac::{Hmac, Mac};
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

/// The SAS service version signed, and the layout of its string-to-sign.
pub const SAS_VERSION: &str = "2025-07-05";

/// The fields of a user delegation key a SAS is signed with. `value` is the secret.
pub struct DelegationKey {
    pub oid: String,
    pub tid: String,
    pub start: String,
    pub expiry: String,
    pub service: String,
    pub version: String,
    pub value: Vec<u8>,
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

/// `2026-11-21T02:00:00Z`: what SAS fields carry.
pub fn sas_time(t: OffsetDateTime) -> String {
    let fmt = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    t.to_offset(time::UtcOffset::UTC).format(&fmt).expect("valid format")
}

/// A read-only, HTTPS-only user-delegation SAS (query string, no `?`) for one blob, valid at
/// once until `expiry`.
pub fn read_only_blob_sas(
    account: &str,
    container: &str,
    blob: &str,
    key: &DelegationKey,
    expiry: OffsetDateTime,
) -> String {
    sign_user_delegation_sas(key, "b", &format!("/blob/{account}/{container}/{blob}"), "r", None, &sas_time(expiry))
}

/// Sign an HTTPS-only user-delegation SAS in the [`SAS_VERSION`] layout and return its query
/// string (no `?`). `resource` is `b` (a blob) or `c` (a container), `canonical` the
/// canonicalized resource (`/blob/<account>/<container>[/<blob>]`), `start`/`expiry` SAS times.
/// The one place that knows the string-to-sign.
pub fn sign_user_delegation_sas(
    key: &DelegationKey,
    resource: &str,
    canonical: &str,
    permissions: &str,
    start: Option<&str>,
    expiry: &str,
) -> String {
    #[rustfmt::skip]
    let fields = [
        permissions,          // signedPermissions
        start.unwrap_or(""),  // signedStart (none: valid at once)
        expiry,               // signedExpiry
        canonical,            // canonicalizedResource
        &key.oid,             // signedKeyObjectId
        &key.tid,             // signedKeyTenantId
        &key.start,           // signedKeyStart
        &key.expiry,          // signedKeyExpiry
        &key.service,         // signedKeyService
        &key.version,         // signedKeyVersion
        "", "", "",           // saoid, suoid, scid
        "", "",               // skdutid, sduoid
        "",                   // signedIP
        "https",              // signedProtocol
        SAS_VERSION,          // signedVersion
        resource,             // signedResource
        "",                   // signedSnapshotTime
        "",                   // signedEncryptionScope
        "", "", "", "", "",   // rscc, rscd, rsce, rscl, rsct
    ];
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key.value).expect("HMAC takes any key length");
    mac.update(fields.join("\n").as_bytes());
    let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    q.append_pair("sv", SAS_VERSION).append_pair("sr", resource);
    if let Some(st) = start {
        q.append_pair("st", st);
    }
    q.append_pair("se", expiry)
        .append_pair("sp", permissions)
        .append_pair("spr", "https")
        .append_pair("skoid", &key.oid)
        .append_pair("sktid", &key.tid)
        .append_pair("skt", &key.start)
        .append_pair("ske", &key.expiry)
        .append_pair("sks", &key.service)
        .append_pair("skv", &key.version)
        .append_pair("sig", &sig);
    q.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_only_sas_signs_the_2025_07_05_layout() {
        let key = DelegationKey {
            oid: "oid".into(),
            tid: "tid".into(),
            start: "2026-11-21T00:00:00Z".into(),
            expiry: "2026-11-22T00:00:00Z".into(),
            service: "b".into(),
            version: "2025-11-05".into(),
            value: b"secret key".to_vec(),
        };
        let expiry = time::macros::datetime!(2026-11-21 12:00:00 UTC);
        let token = read_only_blob_sas("acct", "exports", "a b/c.zst", &key, expiry);
        let pairs: std::collections::HashMap<String, String> =
            url::form_urlencoded::parse(token.as_bytes()).into_owned().collect();
        assert_eq!(pairs["sp"], "r");
        assert_eq!(pairs["spr"], "https");
        assert_eq!(pairs["sr"], "b");
        assert_eq!(pairs["se"], "2026-11-21T12:00:00Z");
        // The signature over the documented layout, computed independently.
        let sts = "r\n\n2026-11-21T12:00:00Z\n/blob/acct/exports/a b/c.zst\noid\ntid\n2026-11-21T00:00:00Z\n\
                   2026-11-22T00:00:00Z\nb\n2025-11-05\n\n\n\n\n\n\nhttps\n2025-07-05\nb\n\n\n\n\n\n\n";
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"secret key").unwrap();
        mac.update(sts.as_bytes());
        assert_eq!(pairs["sig"], base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()));
        assert!(!token.contains("secret"));
    }

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
