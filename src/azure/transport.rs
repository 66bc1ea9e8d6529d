//! The HTTP transport, retry policy and credential shared by every Azure client.
//!
//! One `reqwest` client (rustls; system roots plus an optional extra CA; no automatic
//! decompression, which the SDK's partitioned downloads need) is handed to the SDK as its
//! transport, so every Blob, Queue and identity request trusts the same roots.

use crate::domain::error::{Error, Result};
use azure_core::credentials::TokenCredential;
use azure_core::http::{ClientOptions, ExponentialRetryOptions, RetryOptions, Transport};
use azure_identity::{AzureCliCredential, ManagedIdentityCredential, ManagedIdentityCredentialOptions, UserAssignedId};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// How long to wait for a TCP+TLS connection. Same as the SDK's own client.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a single read may stall, unless the settings say otherwise. Same as the SDK's own
/// client.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// The SDK's retry policy for transport errors (connection, I/O) and retryable statuses
/// (408, 429, 500, 502, 503, 504). Exponential back-off with jitter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySettings {
    /// Retries after the first attempt; 0 disables retrying.
    pub max_retries: u32,
    /// The first back-off; it doubles with every retry.
    pub initial_delay: Duration,
    /// The longest single back-off. The SDK raises anything below 1 s to 1 s.
    pub max_delay: Duration,
    /// How long one read of an answer may stall before the request fails (and is retried).
    pub read_timeout: Duration,
}

impl Default for RetrySettings {
    /// Production: patient enough to ride out throttling and a short outage (about 3 min in all)
    /// before the error reaches the job, which is then retried by the queue.
    fn default() -> Self {
        Self {
            max_retries: 8,
            initial_delay: Duration::from_millis(800),
            max_delay: Duration::from_secs(60),
            read_timeout: READ_TIMEOUT,
        }
    }
}

impl RetrySettings {
    /// The blob store client's own retries when `seams::store::retry::RetryingStore` wraps it
    /// (production): two quick ones for a dropped connection, while the wrapper does the patient
    /// back-off, so the two never multiply into many minutes per operation.
    pub fn beneath_store_retries() -> Self {
        Self {
            max_retries: 2,
            initial_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(5),
            read_timeout: READ_TIMEOUT,
        }
    }

    /// These settings with at most `max_retries` retries and reads stalling at most
    /// `read_timeout` (the settings `PGVAULT_HTTP_RETRIES`, `PGVAULT_HTTP_TIMEOUT_SECONDS`).
    pub fn limited(self, max_retries: u32, read_timeout: Duration) -> Self {
        Self { max_retries: self.max_retries.min(max_retries), read_timeout, ..self }
    }

    /// For tests: one quick retry, so a misconfiguration (for example an untrusted TLS
    /// certificate) fails within about a second instead of a minute.
    pub fn fast() -> Self {
        Self {
            max_retries: 1,
            initial_delay: Duration::from_millis(10),
            max_delay: Duration::from_secs(1),
            read_timeout: READ_TIMEOUT,
        }
    }

    /// No retries at all.
    pub fn none() -> Self {
        Self {
            max_retries: 0,
            initial_delay: Duration::from_millis(1),
            max_delay: Duration::from_secs(1),
            read_timeout: READ_TIMEOUT,
        }
    }

    fn to_sdk(&self) -> RetryOptions {
        if self.max_retries == 0 {
            return RetryOptions::none();
        }
        // The SDK also stops after a total elapsed time; make that bound never the tighter one.
        let worst: Duration = (0..self.max_retries)
            .map(|n| {
                self.initial_delay
                    .saturating_mul(2u32.saturating_pow(n))
                    .min(self.max_delay.max(Duration::from_secs(1)))
                    + Duration::from_millis(256)
            })
            .sum();
        let total = worst + CONNECT_TIMEOUT * (self.max_retries + 1);
        RetryOptions::exponential(ExponentialRetryOptions {
            initial_delay: to_time(self.initial_delay),
            max_retries: self.max_retries,
            max_total_elapsed: to_time(total),
            max_delay: to_time(self.max_delay),
        })
    }
}

fn to_time(d: Duration) -> azure_core::time::Duration {
    azure_core::time::Duration::try_from(d).unwrap_or(azure_core::time::Duration::MAX)
}

/// Build the SDK client options: our own `reqwest` client as the transport, and the retry
/// policy from `retry`.
///
/// Trusted roots are the system's (through `rustls-native-certs`, which honours
/// `SSL_CERT_FILE` and `SSL_CERT_DIR`) plus every certificate in `extra_ca_pem_file`.
pub fn client_options(extra_ca_pem_file: Option<&Path>, retry: &RetrySettings) -> Result<ClientOptions> {
    let mut roots: Vec<reqwest::Certificate> = Vec::new();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        // A malformed system certificate is skipped, as every TLS client does.
        if let Ok(c) = reqwest::Certificate::from_der(&cert) {
            roots.push(c);
        }
    }
    if let Some(path) = extra_ca_pem_file {
        let pem = std::fs::read(path).map_err(|e| {
            Error::permanent(format!("read the extra CA certificate file {}: {e}", path.display()))
                .with_hint("point the CA file setting at a readable PEM file, or remove it")
        })?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| Error::permanent(format!("parse the extra CA certificate file {}: {e}", path.display())))?;
        if certs.is_empty() {
            return Err(Error::permanent(format!(
                "the extra CA certificate file {} holds no PEM certificate",
                path.display()
            )));
        }
        roots.extend(certs);
    }
    if roots.is_empty() {
        return Err(Error::permanent(
            "no trusted root certificates: the system store is empty and no extra CA file is set",
        )
        .with_hint("install the ca-certificates package, or set SSL_CERT_FILE"));
    }

    let client = reqwest::Client::builder()
        .tls_backend_rustls()
        .tls_certs_only(roots)
        // The SDK's partitioned download needs the raw bytes; never decompress.
        .no_gzip()
        .no_deflate()
        .no_brotli()
        .no_zstd()
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(retry.read_timeout)
        // Storage never redirects; a redirect would be a misconfiguration.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| Error::permanent(format!("build the https client: {e}")))?;

    Ok(ClientOptions {
        transport: Some(Transport::new(Arc::new(RefuseUntrusted(client)))),
        retry: retry.to_sdk(),
        ..Default::default()
    })
}

/// The `reqwest` client, except that a certificate the client refused is not a transport error:
/// the SDK's retry policy retries every connection and I/O error, and an untrusted certificate
/// would then be tried again for minutes (with the store's retries above it, a backup spent 12
/// minutes that way) before its cause was seen. As [`azure_core::error::ErrorKind::Other`],
/// wrapping the original error (so the cause chain still names the certificate problem), it is
/// not retried, and `sdk_error` reports it at once as permanent, the cause first.
#[derive(Debug)]
struct RefuseUntrusted(reqwest::Client);

#[async_trait::async_trait]
impl azure_core::http::HttpClient for RefuseUntrusted {
    async fn execute_request(
        &self,
        request: &azure_core::http::Request,
    ) -> azure_core::Result<azure_core::http::AsyncRawResponse> {
        use azure_core::error::ErrorKind;
        match self.0.execute_request(request).await {
            Err(e) if matches!(e.kind(), ErrorKind::Connection | ErrorKind::Io) && super::is_certificate_error(&e) => {
                let host = request.url().host_str().unwrap_or("").to_string();
                Err(azure_core::Error::with_error(
                    ErrorKind::Other,
                    e,
                    format!("the TLS certificate of {host} was refused; not retried"),
                ))
            }
            other => other,
        }
    }
}

/// Which identity authenticates to Azure. There is deliberately no shared-key option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialKind {
    /// The Functions app's managed identity: system-assigned, or the user-assigned identity with
    /// this client id.
    ManagedIdentity { client_id: Option<String> },
    /// The developer's `az login` session, for the CLI on a workstation.
    AzureCli,
}

/// Construct the token credential. It uses `options` (our transport) for its own requests.
pub fn credential(kind: &CredentialKind, options: &ClientOptions) -> Result<Arc<dyn TokenCredential>> {
    match kind {
        CredentialKind::ManagedIdentity { client_id } => {
            // The options struct has a field that exists only in azure_identity's own tests.
            #[allow(clippy::needless_update)]
            let opts = ManagedIdentityCredentialOptions {
                user_assigned_id: client_id.clone().map(UserAssignedId::ClientId),
                client_options: options.clone(),
                ..Default::default()
            };
            let c = ManagedIdentityCredential::new(Some(opts)).map_err(|e| {
                Error::permanent(format!(
                    "set up the managed identity credential: {}",
                    crate::domain::secret::redact(&e.to_string())
                ))
            })?;
            Ok(c)
        }
        CredentialKind::AzureCli => {
            let c = AzureCliCredential::new(None).map_err(|e| {
                Error::permanent(format!(
                    "set up the azure cli credential: {}",
                    crate::domain::secret::redact(&e.to_string())
                ))
            })?;
            Ok(c)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreadable_ca_file_is_named() {
        let path = Path::new("/nonexistent/pgvault-ca.pem");
        let err = client_options(Some(path), &RetrySettings::fast()).unwrap_err();
        assert!(err.is_permanent());
        assert!(err.to_string().contains("/nonexistent/pgvault-ca.pem"), "{err}");
    }

    #[test]
    fn ca_file_without_certificates_is_refused() {
        let dir = std::env::temp_dir().join(format!("pgvault-ca-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("empty.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let err = client_options(Some(&path), &RetrySettings::fast()).unwrap_err();
        assert!(err.to_string().contains("empty.pem"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn limited_caps_the_retries_and_sets_the_read_timeout() {
        let r = RetrySettings::default().limited(2, Duration::from_secs(5));
        assert_eq!((r.max_retries, r.read_timeout), (2, Duration::from_secs(5)));
        // A cap above the settings' own count changes nothing but the timeout.
        let r = RetrySettings::beneath_store_retries().limited(8, READ_TIMEOUT);
        assert_eq!(r, RetrySettings::beneath_store_retries());
        let _ = RetrySettings::default().limited(0, Duration::from_secs(1)).to_sdk();
    }

    #[test]
    fn retry_settings_convert() {
        let _ = RetrySettings::default().to_sdk();
        let _ = RetrySettings::fast().to_sdk();
        let _ = RetrySettings::none().to_sdk();
    }
}
