//! The secret-source seam: where a server's database password comes from.
//!
//! Read at the start of each job and never cached beyond it, so a rotated secret takes effect on
//! the next job. `config::secrets::SettingsSecrets` follows the inventory; the cloud side (Key
//! Vault secrets, Entra tokens) is [`CloudSecrets`], which `azure::keyvault` implements with the
//! managed identity.

use crate::domain::error::Result;
use crate::domain::inventory::{Server, TlsMode};
use crate::domain::secret::Secret;
use async_trait::async_trait;
use time::OffsetDateTime;

#[async_trait]
pub trait SecretSource: Send + Sync + 'static {
    /// The password for `server`'s role, or `None` if it needs none. Errors name the source
    /// (setting, file, vault and secret), never the value.
    async fn password(&self, server: &Server, database: &str) -> Result<Option<Secret>>;

    /// The whole login: the password, and the role and TLS mode when the source states them
    /// (a connection string in Key Vault does). Read per job, like [`SecretSource::password`].
    async fn login(&self, server: &Server, database: &str) -> Result<Login> {
        Ok(Login { password: self.password(server, database).await?, ..Login::default() })
    }
}

/// How to log in to a server, as the credential source says. `None` fields fall back to the
/// inventory.
#[derive(Debug, Default, Clone)]
pub struct Login {
    pub user: Option<String>,
    pub password: Option<Secret>,
    pub tls: Option<TlsMode>,
}

/// A Key Vault secret's current version as the vault returned it.
#[derive(Debug, Clone)]
pub struct VaultSecret {
    pub value: Secret,
    pub version: String,
    pub enabled: bool,
    pub not_before: Option<OffsetDateTime>,
    pub expires: Option<OffsetDateTime>,
}

/// The cloud side of credentials: Key Vault secrets and Entra tokens, both obtained with the
/// function's managed identity. Nothing is cached here beyond what the identity library does
/// with tokens (it refreshes a token 5 minutes before it expires).
#[async_trait]
pub trait CloudSecrets: Send + Sync + 'static {
    /// The current version of secret `name` in the vault at `vault_url`. Errors are complete
    /// sentences naming the vault and the secret, never the value: the secret does not exist,
    /// is disabled, access is denied (403), the vault cannot be reached.
    async fn key_vault_secret(&self, vault_url: &str, name: &str) -> Result<VaultSecret>;

    /// An Entra access token for Azure Database for PostgreSQL
    /// (`https://ossrdbms-aad.database.windows.net/.default`), to be used as the password.
    async fn postgres_token(&self) -> Result<Secret>;
}
