//! Key Vault secrets and Entra tokens through the managed identity: the Azure side of
//! [`crate::seams::credentials::CloudSecrets`].
//!
//! Secrets are read with the official `SecretClient`, over the same transport (trusted roots,
//! retry policy) and the same token credential as Blob and Queue. Key Vault's challenge flow
//! decides the token's scope: the first request goes out without a token, the 401 names the
//! resource, the client fetches a token for it and retries.
//!
//! **Challenge verification.** The SDK checks that the challenge's resource (`vault.azure.net`)
//! is a parent domain of the vault's host, so a server pretending to be a vault cannot obtain a
//! token for another resource. pgvault keeps that check on for every vault except one on a
//! loopback address (`127.0.0.1`, `::1`, `localhost`), which can only be a local test server
//! and can never match a public Key Vault domain.

use super::for_each_cause;
use crate::domain::error::{Error, Result};
use crate::domain::secret::{Secret, redact};
use crate::seams::credentials::{CloudSecrets, VaultSecret};
use async_trait::async_trait;
use azure_core::credentials::TokenCredential;
use azure_core::error::ErrorKind;
use azure_core::http::ClientOptions;
use azure_security_keyvault_secrets::{SecretClient, SecretClientOptions};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The scope of Entra tokens for Azure Database for PostgreSQL (all flexible servers in the
/// public cloud).
pub const POSTGRES_ENTRA_SCOPE: &str = "https://ossrdbms-aad.database.windows.net/.default";

/// Key Vault and Entra tokens with one credential. Clients are kept per vault (they hold no
/// secret, only the scope learned from the challenge); secret values are never kept.
pub struct AzureCloudSecrets {
    credential: Arc<dyn TokenCredential>,
    options: ClientOptions,
    clients: PerVault<SecretClient>,
}

impl AzureCloudSecrets {
    pub fn new(credential: Arc<dyn TokenCredential>, options: ClientOptions) -> Self {
        Self { credential, options, clients: PerVault::default() }
    }

    fn client(&self, vault_url: &str) -> Result<Arc<SecretClient>> {
        self.clients.get(vault_url, || {
            let options = SecretClientOptions {
                client_options: self.options.clone(),
                verify_challenge_resource: Some(!is_loopback(vault_url)),
                ..Default::default()
            };
            SecretClient::new(vault_url, self.credential.clone(), Some(options))
        })
    }
}

/// One SDK client per vault URL, made on first use and shared after (a client holds no secret,
/// only the scope it learned from the challenge). The secrets and the keys adapters both keep
/// their clients this way.
pub(crate) struct PerVault<C> {
    clients: Mutex<HashMap<String, Arc<C>>>,
}

impl<C> Default for PerVault<C> {
    fn default() -> Self {
        PerVault { clients: Mutex::new(HashMap::new()) }
    }
}

impl<C> PerVault<C> {
    /// The client of `vault_url`, made by `make` if there is none yet.
    pub(crate) fn get(&self, vault_url: &str, make: impl FnOnce() -> azure_core::Result<C>) -> Result<Arc<C>> {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = clients.get(vault_url) {
            return Ok(c.clone());
        }
        let client = Arc::new(
            make().map_err(|e| Error::permanent(format!("Key Vault {vault_url}: {}", redact(&e.to_string()))))?,
        );
        clients.insert(vault_url.to_string(), client.clone());
        Ok(client)
    }
}

/// Whether a vault URL points at this machine (see the module docs).
pub fn is_loopback(vault_url: &str) -> bool {
    match url::Url::parse(vault_url).ok().and_then(|u| u.host().map(|h| h.to_owned())) {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

#[async_trait]
impl CloudSecrets for AzureCloudSecrets {
    async fn key_vault_secret(&self, vault_url: &str, name: &str) -> Result<VaultSecret> {
        let what = format!("Key Vault {vault_url} secret {name:?}");
        let client = self.client(vault_url)?;
        let response = client.get_secret(name, None).await.map_err(|e| vault_error(&what, e))?;
        let secret = response.into_model().map_err(|e| vault_error(&what, e))?;
        let attributes = secret.attributes.unwrap_or_default();
        let value = secret.value.ok_or_else(|| Error::permanent(format!("{what}: the vault returned no value")))?;
        let version =
            secret.id.as_deref().and_then(|id| id.trim_end_matches('/').rsplit('/').next()).unwrap_or("?").to_string();
        Ok(VaultSecret {
            value: Secret::new(value),
            version,
            enabled: attributes.enabled.unwrap_or(true),
            not_before: attributes.not_before,
            expires: attributes.expires,
        })
    }

    async fn postgres_token(&self) -> Result<Secret> {
        let token = self.credential.get_token(&[POSTGRES_ENTRA_SCOPE], None).await.map_err(|e| {
            Error::transient(format!(
                "get an Entra token for Azure Database for PostgreSQL ({POSTGRES_ENTRA_SCOPE}): {}",
                redact(&super::describe(&e))
            ))
            .with_hint("check the managed identity (and its client id), or the az login session")
        })?;
        Ok(Secret::new(token.token.secret()))
    }
}

/// Turn a Key Vault SDK error into ours: what went wrong in words, with the service's own code.
pub(crate) fn vault_error(what: &str, e: azure_core::Error) -> Error {
    // Before the kind: the transport marks a refused certificate Other (so the SDK does not
    // retry it), and a token fetch wraps it as Credential.
    if let Some(problem) = super::certificate_problem(&e) {
        return Error::permanent(format!("{what}: TLS certificate rejected: {}", redact(&problem))).with_hint(
            "the vault's TLS certificate is not trusted: check the vault URL, or add the CA that signed it \
             with PGVAULT_CA_FILE",
        );
    }
    match e.kind() {
        ErrorKind::HttpResponse { status, error_code, raw_response } => {
            let code = u16::from(*status);
            let body = raw_response.as_ref().map(|r| ErrorDetail::from_json(r.body().as_ref())).unwrap_or_default();
            let service_code = body.inner_code.clone().or(body.code.clone()).or(error_code.clone()).unwrap_or_default();
            let service_message = body.message.as_deref().map(|m| format!(" ({})", redact(m))).unwrap_or_default();
            match code {
                404 => Error::permanent(format!("{what}: the secret does not exist (http 404 {service_code})"))
                    .with_hint("create it, or fix the vault or secret name in the inventory"),
                403 if service_code.eq_ignore_ascii_case("SecretDisabled") => {
                    Error::permanent(format!("{what}: the secret is disabled (http 403 SecretDisabled)"))
                        .with_hint("enable the secret's current version, or add a new enabled version")
                }
                403 => Error::permanent(format!("{what}: access denied (http 403 {service_code}){service_message}"))
                    .with_hint(
                        "grant the function's identity the Key Vault Secrets User role on the vault (or \
                         `get` on secrets in its access policy); a new role assignment can take a few \
                         minutes to apply",
                    ),
                401 => Error::permanent(format!("{what}: the vault refused the token (http 401 {service_code})"))
                    .with_hint("check that the identity belongs to the vault's tenant"),
                408 | 429 => Error::transient(format!("{what}: http {code} {service_code}")),
                c if c >= 500 && c != 501 => Error::transient(format!("{what}: http {code} {service_code}")),
                _ => Error::permanent(format!("{what}: http {code} {service_code}{service_message}")),
            }
        }
        ErrorKind::Credential => {
            Error::transient(format!("{what}: no token for Key Vault: {}", redact(&super::describe(&e))))
                .with_hint("check the managed identity (and its client id), or the az login session")
        }
        ErrorKind::Connection | ErrorKind::Io => Error::transient(format!("{what}: {}", redact(&super::describe(&e)))),
        _ => {
            let mut text = redact(&e.to_string());
            for_each_cause(&e, &mut |c| {
                let t = c.to_string();
                if !text.contains(&t) {
                    text.push_str(": ");
                    text.push_str(&redact(&t));
                }
            });
            // A challenge whose resource does not match the vault's domain lands here.
            Error::permanent(format!("{what}: {text}"))
        }
    }
}

/// A Key Vault error body: `{"error":{"code","message","innererror":{"code"}}}`.
#[derive(Debug, Default)]
pub(crate) struct ErrorDetail {
    pub(crate) code: Option<String>,
    pub(crate) message: Option<String>,
    pub(crate) inner_code: Option<String>,
}

impl ErrorDetail {
    pub(crate) fn from_json(body: &[u8]) -> Self {
        let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
        let e = &v["error"];
        let text = |v: &serde_json::Value| v.as_str().map(str::to_string);
        let inner = if e["innererror"].is_object() { &e["innererror"] } else { &e["innerError"] };
        ErrorDetail {
            code: text(&e["code"]),
            message: text(&e["message"]).and_then(|m| m.lines().next().map(str::to_string)),
            inner_code: text(&inner["code"]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use azure_core::http::{RawResponse, StatusCode, headers::Headers};

    fn http_error(code: u16, body: &str) -> azure_core::Error {
        azure_core::Error::from(ErrorKind::HttpResponse {
            status: StatusCode::from(code),
            error_code: None,
            raw_response: Some(Box::new(RawResponse::from_bytes(
                StatusCode::from(code),
                Headers::new(),
                body.as_bytes().to_vec(),
            ))),
        })
    }

    #[test]
    fn loopback_hosts() {
        assert!(is_loopback("https://127.0.0.1:8443"));
        assert!(is_loopback("https://localhost:1"));
        assert!(is_loopback("https://[::1]:1"));
        assert!(!is_loopback("https://my-vault.vault.azure.net"));
        assert!(!is_loopback("https://127.0.0.1.nip.io"));
    }

    #[test]
    fn errors_say_what_happened() {
        let what = "Key Vault https://v secret \"s\"";
        let e = vault_error(
            what,
            http_error(
                404,
                r#"{"error":{"code":"SecretNotFound","message":"A secret with (name/id) s was not found in this key vault."}}"#,
            ),
        );
        assert!(e.is_permanent());
        assert!(e.to_string().starts_with("Key Vault https://v secret \"s\": the secret does not exist"), "{e}");
        let e = vault_error(
            what,
            http_error(
                403,
                r#"{"error":{"code":"Forbidden","message":"Operation get is not allowed on a disabled secret.","innererror":{"code":"SecretDisabled"}}}"#,
            ),
        );
        assert!(e.to_string().contains("the secret is disabled"), "{e}");
        let e = vault_error(
            what,
            http_error(
                403,
                r#"{"error":{"code":"Forbidden","message":"Caller is not authorized","innererror":{"code":"ForbiddenByRbac"}}}"#,
            ),
        );
        assert!(e.to_string().contains("access denied (http 403 ForbiddenByRbac)"), "{e}");
        assert!(e.to_string().contains("Key Vault Secrets User"), "{e}");
        let e = vault_error(what, http_error(503, "{}"));
        assert!(!e.is_permanent());
    }
}
