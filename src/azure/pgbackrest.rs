//! The Azure side of SAS rotation for VM-hosted pgBackRest: user delegation keys (Blob) and
//! the token secrets (Key Vault, read and write) with the function's managed identity.

use super::keyvault::{is_loopback, vault_error};
use super::sas::SasKeys;
use crate::domain::error::{Error, Result};
use crate::domain::secret::{Secret, redact};
use crate::features::pgbackrest::plan::TokenState;
use crate::features::pgbackrest::{NewToken, SasSigner, SignedSas, StoredToken, TokenVault};
use async_trait::async_trait;
use azure_core::credentials::TokenCredential;
use azure_core::http::{ClientOptions, RequestContent};
use azure_security_keyvault_secrets::models::{SecretAttributes, SetSecretParameters};
use azure_security_keyvault_secrets::{SecretClient, SecretClientOptions};
use azure_storage_sas::SasProtocol;
use std::sync::Arc;
use time::OffsetDateTime;

/// Signs pgBackRest's container SAS: Get User Delegation Key with the token credential, then
/// the official `azure_storage_sas` builder.
pub struct AzureSasSigner {
    credential: Arc<dyn TokenCredential>,
    options: ClientOptions,
}

impl AzureSasSigner {
    pub fn new(credential: Arc<dyn TokenCredential>, options: ClientOptions) -> Self {
        Self { credential, options }
    }
}

#[async_trait]
impl SasSigner for AzureSasSigner {
    async fn container_sas(
        &self,
        blob_endpoint: &str,
        container: &str,
        permissions: &str,
        start: OffsetDateTime,
        expiry: OffsetDateTime,
    ) -> Result<SignedSas> {
        let keys = SasKeys::new(blob_endpoint, self.credential.clone(), self.options.clone())?;
        let what = format!("get a user delegation key from {}", redact(blob_endpoint));
        let hint = "the function's identity needs Storage Blob Delegator on the account (or a data role that \
                    includes it) and, for the token to work, a data role on the container";
        let key = keys.key(start, expiry, &what, hint).await?;
        let mut b = keys.builder(&key, expiry, &what)?.container(container);
        for letter in permissions.chars() {
            b = match letter {
                'r' => b.read(),
                'a' => b.add(),
                'c' => b.create(),
                'w' => b.write(),
                'd' => b.delete(),
                'l' => b.list(),
                other => {
                    return Err(Error::permanent(format!(
                        "container SAS for {container:?}: permission {other:?} is not one of racwdl"
                    )));
                }
            };
        }
        let token = Secret::new(b.start(start).protocol(SasProtocol::Https).build());
        let missing = |name: &str| Error::permanent(format!("{what}: the user delegation key has no {name}"));
        Ok(SignedSas {
            token,
            key_version: key.signed_version.clone().ok_or_else(|| missing("signed version"))?,
            key_expiry: key.signed_expiry.ok_or_else(|| missing("signed expiry"))?,
        })
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
