//! The context every operation runs with: settings, the store, the secret source, how to show
//! progress, and the token that says "stop". `runtime` (the one composition root) builds it.

use crate::config::settings::Settings;
use crate::domain::error::{Error, Result};
use crate::seams::alerts::Alerter;
use crate::seams::credentials::SecretSource;
use crate::seams::keys::KeyWrapper;
use crate::seams::pg::ConnSpec;
use crate::seams::progress;
use crate::seams::queue::JobQueue;
use crate::seams::store::BlobStore;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// What every operation needs: settings, the store, the secret source, how to show progress,
/// and the token that says "stop" (SIGTERM).
#[derive(Clone)]
pub struct Ctx {
    pub settings: Arc<Settings>,
    pub store: Arc<dyn BlobStore>,
    pub secrets: Arc<dyn SecretSource>,
    pub progress: progress::Mode,
    pub cancel: CancellationToken,
    /// Where alerts go: the log, and the webhook of `PGVAULT_ALERT_WEBHOOK` (one HTTP client).
    pub alerter: Arc<Alerter>,
    /// Wraps and unwraps data keys (Key Vault), when pgvault has an Azure identity.
    pub keys: Option<Arc<dyn KeyWrapper>>,
    /// The job queues, when `JobsQueue__queueServiceUri` is set: a backup in parts with
    /// `PGVAULT_PARTS_RUN=queue` sends its parts to `backup-parts` through it.
    pub queue: Option<Arc<dyn JobQueue>>,
}

impl Ctx {
    /// Connection details for a server and database, with the login read now: the password (a
    /// Key Vault secret is read, an Entra token fetched, on every call, so call it right before
    /// connecting), and the role and `sslmode` a Key Vault connection string states, which
    /// override the inventory's.
    pub async fn conn_spec(&self, server_name: &str, database: &str) -> Result<ConnSpec> {
        let server = self.settings.server(server_name).ok_or_else(|| unknown_server(server_name))?;
        let login = self.secrets.login(server, database).await?;
        let tls = login.tls.unwrap_or(server.tls);
        if tls != crate::domain::inventory::TlsMode::VerifyFull && !server.host.starts_with('/') {
            tracing::warn!(server = %server.name, tls = tls.as_libpq(), from_secret = login.tls.is_some(), "TLS to PostgreSQL is not verify-full");
        }
        Ok(ConnSpec {
            server: server.name.clone(),
            host: server.host.clone(),
            port: server.port,
            user: login.user.unwrap_or_else(|| server.user.clone()),
            dbname: database.to_string(),
            tls,
            password: login.password,
            ca_file: self.settings.ca_file.clone(),
        })
    }
}

impl Ctx {
    /// The key wrapper, or an error saying why an encrypted backup cannot be handled here.
    pub fn key_wrapper(&self) -> Result<&dyn KeyWrapper> {
        self.keys.as_deref().ok_or_else(|| {
            Error::permanent("encrypted backups need Key Vault, and pgvault has no Azure identity configured")
                .with_hint("set PGVAULT_STORAGE=azure or PGVAULT_ENCRYPTION_KEY, with PGVAULT_IDENTITY")
        })
    }
}

pub fn unknown_server(name: &str) -> Error {
    Error::permanent(format!("unknown server {name:?}: it is not in the inventory"))
        .with_hint("check the server name, or add the server to PGVAULT_INVENTORY")
}
