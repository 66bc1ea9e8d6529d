//! Key Vault keys through the managed identity: the Azure side of
//! [`crate::seams::keys::KeyWrapper`]. Data keys are wrapped with `wrapKey` and unwrapped with
//! `unwrapKey` (RSA-OAEP-256) by the official `KeyClient`; the vault's private key never leaves
//! it. Clients are kept per vault, with the same challenge rule as secrets (see
//! [`super::keyvault`]): the challenge's resource is verified for every vault but a loopback one.

use super::keyvault::{ErrorDetail, PerVault, is_loopback, vault_error};
use crate::domain::envelope::{DataKey, KeyId, WRAP_ALGORITHM};
use crate::domain::error::{Error, Result};
use crate::domain::secret::redact;
use crate::seams::keys::{KeyStatus, KeyWrapper, WrappedKey, not_available};
use async_trait::async_trait;
use azure_core::credentials::TokenCredential;
use azure_core::error::ErrorKind;
use azure_core::http::{ClientOptions, RequestContent};
use azure_security_keyvault_keys::models::{EncryptionAlgorithm, KeyClientGetKeyOptions, KeyOperationParameters};
use azure_security_keyvault_keys::{KeyClient, KeyClientOptions};
use std::sync::Arc;
use zeroize::Zeroize;

pub struct AzureKeyWrapper {
    credential: Arc<dyn TokenCredential>,
    options: ClientOptions,
    clients: PerVault<KeyClient>,
}

impl AzureKeyWrapper {
    pub fn new(credential: Arc<dyn TokenCredential>, options: ClientOptions) -> Self {
        Self { credential, options, clients: PerVault::default() }
    }

    fn client(&self, vault_url: &str) -> Result<Arc<KeyClient>> {
        self.clients.get(vault_url, || {
            let options = KeyClientOptions {
                client_options: self.options.clone(),
                verify_challenge_resource: Some(!is_loopback(vault_url)),
                ..Default::default()
            };
            KeyClient::new(vault_url, self.credential.clone(), Some(options))
        })
    }

    /// The key's current version (and whether it is enabled), from `GET /keys/<name>/`.
    async fn get(&self, id: &KeyId) -> Result<(String, bool)> {
        let client = self.client(&id.vault_url)?;
        let options = KeyClientGetKeyOptions { key_version: id.version.clone(), ..Default::default() };
        let what = format!("Key Vault key {id}");
        let key = client
            .get_key(&id.name, Some(options))
            .await
            .map_err(|e| key_error(&what, e))?
            .into_model()
            .map_err(|e| key_error(&what, e))?;
        let kid = key.key.as_ref().and_then(|k| k.kid.clone()).unwrap_or_default();
        let version = kid.trim_end_matches('/').rsplit('/').next().unwrap_or_default().to_string();
        if version.is_empty() || !kid.contains("/keys/") {
            return Err(Error::permanent(format!("{what}: the vault returned no key identifier")));
        }
        Ok((version, key.attributes.and_then(|a| a.enabled).unwrap_or(true)))
    }
}

#[async_trait]
impl KeyWrapper for AzureKeyWrapper {
    async fn wrap(&self, key_id: &str, key: &DataKey) -> Result<WrappedKey> {
        let id = KeyId::parse(key_id)?;
        // The version is resolved first and the wrap names it, so the manifest records exactly
        // the version that wrapped (a rotation in between cannot make them differ). Key Vault
        // wraps even with a disabled version (a public-key operation) but will not unwrap: such
        // a backup would be unreadable from the start, so it is refused here.
        let (version, enabled) = self.get(&id).await?;
        let id = id.with_version(&version);
        if !enabled {
            return Err(Error::permanent(format!(
                "wrap the data key: {}: a backup wrapped with it could never be read",
                not_available(&id.to_string(), "disabled")
            ))
            .with_hint("enable the key's current version, or rotate the key (a new version), or set PGVAULT_ENCRYPTION_KEY to an enabled version"));
        }
        let what = format!("wrap the data key with Key Vault key {id}");
        let client = self.client(&id.vault_url)?;
        let params = operation(EncryptionAlgorithm::RsaOaep256, key.expose().to_vec());
        let body: RequestContent<KeyOperationParameters> =
            params.try_into().map_err(|e: azure_core::Error| key_error(&what, e))?;
        let options = azure_security_keyvault_keys::models::KeyClientWrapKeyOptions {
            key_version: id.version.clone(),
            ..Default::default()
        };
        let result = client
            .wrap_key(&id.name, body, Some(options))
            .await
            .map_err(|e| key_error(&what, e))?
            .into_model()
            .map_err(|e| key_error(&what, e))?;
        let wrapped =
            result.result.ok_or_else(|| Error::permanent(format!("{what}: the vault returned no wrapped key")))?;
        Ok(WrappedKey { key_id: id.to_string(), algorithm: WRAP_ALGORITHM.into(), wrapped })
    }

    async fn unwrap(&self, wrapped: &WrappedKey) -> Result<DataKey> {
        let id = KeyId::parse(&wrapped.key_id)?;
        let version = id.version.clone().ok_or_else(|| {
            Error::permanent(format!("key identifier {} names no version: a wrapped key needs its version", id))
        })?;
        let what = format!("unwrap the data key with Key Vault key {id}");
        let algorithm = match wrapped.algorithm.as_str() {
            WRAP_ALGORITHM => EncryptionAlgorithm::RsaOaep256,
            "RSA-OAEP" => EncryptionAlgorithm::RsaOaep,
            "A256KW" => EncryptionAlgorithm::A256Kw,
            other => return Err(Error::permanent(format!("{what}: unknown wrap algorithm {other:?}"))),
        };
        let client = self.client(&id.vault_url)?;
        let params = operation(algorithm, wrapped.wrapped.clone());
        let body: RequestContent<KeyOperationParameters> =
            params.try_into().map_err(|e: azure_core::Error| key_error(&what, e))?;
        let result = client
            .unwrap_key(&id.name, &version, body, None)
            .await
            .map_err(|e| unwrap_error(&id, &what, e))?
            .into_model()
            .map_err(|e| key_error(&what, e))?;
        let mut plain = result.result.ok_or_else(|| Error::permanent(format!("{what}: the vault returned no key")))?;
        let key = DataKey::from_bytes(&plain);
        plain.zeroize();
        key
    }

    async fn status(&self, key_id: &str) -> Result<KeyStatus> {
        let id = KeyId::parse(key_id)?;
        match self.get(&id).await {
            Ok((_, true)) => Ok(KeyStatus::Available),
            Ok((_, false)) => Ok(KeyStatus::Unavailable("disabled".into())),
            Err(e) => match unavailable_reason(&e) {
                Some(why) => Ok(KeyStatus::Unavailable(why.into())),
                None => Err(e),
            },
        }
    }
}

/// The body of a wrap or unwrap. The model is `#[non_exhaustive]`: no struct literal.
#[allow(clippy::field_reassign_with_default)]
fn operation(algorithm: EncryptionAlgorithm, value: Vec<u8>) -> KeyOperationParameters {
    let mut params = KeyOperationParameters::default();
    params.algorithm = Some(algorithm);
    params.value = Some(value);
    params
}

/// Key-specific HTTP refusals first (a disabled or missing key), then everything Key Vault
/// secrets and keys have in common.
fn key_error(what: &str, e: azure_core::Error) -> Error {
    if let ErrorKind::HttpResponse { status, raw_response, error_code } = e.kind() {
        let code = u16::from(*status);
        let body = raw_response.as_ref().map(|r| ErrorDetail::from_json(r.body().as_ref())).unwrap_or_default();
        let service_code = body.inner_code.clone().or(body.code.clone()).or(error_code.clone()).unwrap_or_default();
        match code {
            404 => {
                return Error::permanent(format!("{what}: the key does not exist: deleted (http 404 {service_code})"))
                    .with_hint(
                        "check PGVAULT_ENCRYPTION_KEY; a deleted key can be recovered while the vault keeps it",
                    );
            }
            403 if service_code.eq_ignore_ascii_case("KeyDisabled") => {
                return Error::permanent(format!("{what}: the key is disabled (http 403 KeyDisabled)"));
            }
            403 => {
                let message = body.message.as_deref().map(|m| format!(" ({})", redact(m))).unwrap_or_default();
                return Error::permanent(format!("{what}: access denied (http 403 {service_code}){message}"))
                    .with_hint(
                        "grant the function's identity the Key Vault Crypto User role on the key; a new role \
                     assignment can take a few minutes to apply",
                    );
            }
            _ => {}
        }
    }
    vault_error(what, e)
}

/// An unwrap refused because the key version cannot be used says so in the words
/// [`not_available`] gives, so every command reports it the same way.
fn unwrap_error(id: &KeyId, what: &str, e: azure_core::Error) -> Error {
    let err = key_error(what, e);
    match unavailable_reason(&err) {
        Some(why) => Error::permanent(not_available(&id.to_string(), why)).with_hint(
            "the key version was disabled or deleted: this makes the backups it wrapped unreadable \
             (crypto-shredding); enable or recover that version if that was not intended",
        ),
        None => err,
    }
}

fn unavailable_reason(e: &Error) -> Option<&'static str> {
    let m = e.message();
    if !e.is_permanent() {
        None
    } else if m.contains("the key is disabled") {
        Some("disabled")
    } else if m.contains("the key does not exist") {
        Some("deleted")
    } else {
        None
    }
}
