//! The Azure side of SAS rotation for VM-hosted pgBackRest: user delegation keys (Blob) and
//! the token secrets (Key Vault, read and write) with the function's managed identity.

use super::keyvault::{is_loopback, vault_error};
use super::{Service, sdk_error};
use crate::domain::error::{Error, Result};
use crate::domain::sas::DelegationKey;
use crate::domain::secret::{Secret, redact};
use crate::features::pgbackrest::plan::TokenState;
use crate::features::pgbackrest::{DelegationKeys, NewToken, StoredToken, TokenVault};
use async_trait::async_trait;
use azure_core::credentials::TokenCredential;
use azure_core::http::{ClientOptions, RequestContent, Url};
use azure_security_keyvault_secrets::models::{SecretAttributes, SetSecretParameters};
use azure_security_keyvault_secrets::{SecretClient, SecretClientOptions};
use azure_storage_blob::{BlobServiceClient, BlobServiceClientOptions};
use std::sync::Arc;
use time::OffsetDateTime;

/// Get User Delegation Key with the token credential.
pub struct AzureDelegationKeys {
    credential: Arc<dyn TokenCredential>,
    options: ClientOptions,
}

impl AzureDelegationKeys {
    pub fn new(credential: Arc<dyn TokenCredential>, options: ClientOptions) -> Self {
        Self { credential, options }
    }
}

/// The account of a blob endpoint: the first path segment for the emulator's path-style URLs,
/// else the first label of the host name.
pub fn account_name(endpoint: &Url) -> Option<String> {
    if let Some(seg) = endpoint.path_segments().and_then(|mut s| s.next()).filter(|s| !s.is_empty()) {
        return Some(seg.to_string());
    }
    match endpoint.host()? {
        url::Host::Domain(d) => d.split('.').next().filter(|s| !s.is_empty()).map(str::to_string),
        _ => None,
    }
}

#[async_trait]
impl DelegationKeys for AzureDelegationKeys {
    async fn key(
        &self,
        blob_endpoint: &str,
        start: OffsetDateTime,
        expiry: OffsetDateTime,
    ) -> Result<(String, DelegationKey)> {
        let shown = redact(blob_endpoint);
        let endpoint = Url::parse(blob_endpoint.trim_end_matches('/'))
            .map_err(|e| Error::permanent(format!("blob endpoint {shown:?} is not a url: {e}")))?;
        let account = account_name(&endpoint)
            .ok_or_else(|| Error::permanent(format!("blob endpoint {shown:?} names no storage account")))?;
        let service = BlobServiceClient::new(
            endpoint,
            Some(self.credential.clone()),
            Some(BlobServiceClientOptions { client_options: self.options.clone(), ..Default::default() }),
        )
        .map_err(|e| sdk_error(Service::Blob, format!("open blob service {shown}"), e))?;
        let what = format!("get a user delegation key from {shown}");
        let hint = "the function's identity needs Storage Blob Delegator on the account (or a data role that \
                    includes it) and, for the token to work, a data role on the container";
        Ok((account, super::sas::user_delegation_key(&service, start, expiry, &what, hint).await?))
    }
}

/// The token secrets in Key Vault: read the newest version's attributes, add a version.
pub struct AzureTokenVault {
    credential: Arc<dyn TokenCredential>,
    options: ClientOptions,
}

impl AzureTokenVault {
    pub fn new(credential: Arc<dyn TokenCredential>, options: ClientOptions) -> Self {
        Self { credential, options }
    }

    fn client(&self, vault_url: &str) -> Result<SecretClient> {
        let options = SecretClientOptions {
            client_options: self.options.clone(),
            verify_challenge_resource: Some(!is_loopback(vault_url)),
            ..Default::default()
        };
        SecretClient::new(vault_url, self.credential.clone(), Some(options))
            .map_err(|e| Error::permanent(format!("Key Vault {vault_url}: {}", redact(&e.to_string()))))
    }
}

#[async_trait]
impl TokenVault for AzureTokenVault {
    async fn current(&self, vault_url: &str, name: &str) -> Result<Option<StoredToken>> {
        let what = format!("Key Vault {vault_url} secret {name:?}");
        let client = self.client(vault_url)?;
        let secret = match client.get_secret(name, None).await.and_then(|r| r.into_model()) {
            Ok(s) => s,
            Err(e) if matches!(e.kind(), azure_core::error::ErrorKind::HttpResponse { status, .. } if u16::from(*status) == 404) =>
            {
                return Ok(None);
            }
            Err(e) => return Err(vault_error(&what, e)),
        };
        let a = secret.attributes.unwrap_or_default();
        Ok(Some(StoredToken {
            state: TokenState { enabled: a.enabled.unwrap_or(true), not_before: a.not_before, expires: a.expires },
            version: version_of(secret.id.as_deref()),
            tags: secret.tags.unwrap_or_default(),
            value: secret.value.map(Secret::new),
        }))
    }

    async fn store(&self, vault_url: &str, name: &str, token: &NewToken) -> Result<String> {
        let what = format!("Key Vault {vault_url} secret {name:?}: set a new version");
        let client = self.client(vault_url)?;
        let params = SetSecretParameters {
            value: Some(token.value.expose().to_string()),
            content_type: Some(token.content_type.clone()),
            tags: Some(token.tags.clone()),
            secret_attributes: Some(SecretAttributes {
                enabled: Some(true),
                not_before: Some(token.start),
                expires: Some(token.expiry),
                ..Default::default()
            }),
        };
        let body = RequestContent::try_from(params).map_err(|e| vault_error(&what, e))?;
        // The SDK's Key Vault challenge sends a client's first request without its body and adds
        // the body back after the 401; if that bodiless first try fails transiently (a 503), the
        // retry goes out with the body lost and the vault answers 400. A bodiless read first
        // (404 is fine) takes the challenge on this client, so the write carries its body.
        match client.get_secret(name, None).await {
            Ok(_) => {}
            Err(e) if matches!(e.kind(), azure_core::error::ErrorKind::HttpResponse { status, .. } if u16::from(*status) == 404) =>
                {}
            Err(e) => return Err(vault_error(&what, e)),
        }
        let secret = client.set_secret(name, body, None).await.and_then(|r| r.into_model()).map_err(|e| {
            let err = vault_error(&what, e);
            if err.to_string().contains("http 403") {
                err.with_hint(
                    "the function's identity needs Key Vault Secrets Officer on the vault (or on this \
                     secret) to write tokens",
                )
            } else {
                err
            }
        })?;
        Ok(version_of(secret.id.as_deref()))
    }
}

fn version_of(id: Option<&str>) -> String {
    id.and_then(|id| id.trim_end_matches('/').rsplit('/').next()).unwrap_or("?").to_string()
}
