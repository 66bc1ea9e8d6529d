//! The inventory: the PostgreSQL servers pgvault backs up, where each one's login comes from,
//! and each one's schedule and retention. Pure types and validation; `config::settings` reads it.

use crate::domain::error::{Error, Result};
use crate::domain::policy::Policy;
use serde::Deserialize;
use std::path::PathBuf;

/// A PostgreSQL server pgvault backs up.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Server {
    /// Short unique name used in blob names and job messages.
    pub name: String,
    /// Host name, IP address, or an absolute Unix-socket directory.
    pub host: String,
    #[serde(default = "default_port")]
    pub port: u16,
    /// Role pgvault logs in as.
    pub user: String,
    #[serde(default)]
    pub tls: TlsMode,
    /// Database to connect to for listing databases.
    #[serde(default = "default_maintenance_db")]
    pub maintenance_db: String,
    /// Back up only these databases (empty: all).
    #[serde(default)]
    pub include: Vec<String>,
    /// Never back up these databases.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Where the password comes from.
    #[serde(default)]
    pub credentials: CredentialRef,
    /// PostgreSQL bin directories for this server (default: the global setting).
    #[serde(default)]
    pub pg_bin_dirs: Vec<PathBuf>,
    /// Backup schedule (NCRONTAB, UTC) this server's backups are expected on (RPO checks);
    /// default PGVAULT_BACKUP_SCHEDULE.
    #[serde(default)]
    pub schedule: Option<String>,
    /// GFS retention of this server's backups (and globals); absent: nothing is pruned.
    #[serde(default)]
    pub retention: Option<crate::domain::policy::Policy>,
    /// The Key Vault key that wraps this server's data keys, overriding `PGVAULT_ENCRYPTION_KEY`;
    /// `""` keeps this server's backups unencrypted.
    #[serde(default)]
    pub encryption_key: Option<String>,
    /// Per-database overrides of `schedule` and `retention`.
    #[serde(default)]
    pub databases: std::collections::BTreeMap<String, crate::domain::policy::DatabasePolicy>,
}

fn default_port() -> u16 {
    5432
}
fn default_maintenance_db() -> String {
    "postgres".into()
}

/// libpq's sslmode names. `verify-full` is the default; weaker modes log a warning.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    Disable,
    Require,
    VerifyCa,
    #[default]
    VerifyFull,
}

impl TlsMode {
    pub fn as_libpq(self) -> &'static str {
        match self {
            TlsMode::Disable => "disable",
            TlsMode::Require => "require",
            TlsMode::VerifyCa => "verify-ca",
            TlsMode::VerifyFull => "verify-full",
        }
    }
}

impl Server {
    /// Why the inventory leaves `database` out of this server's backups, if it does: it is in
    /// `exclude`, or `include` lists databases and not this one. The scheduler never plans such
    /// a database; on demand (`backup-now`, `pgvault backup --database`) it is refused with this
    /// reason, and the worker rejects a job for it.
    pub fn leaves_out(&self, database: &str) -> Option<String> {
        if self.exclude.iter().any(|d| d == database) {
            return Some(format!("database {database:?} of server {:?} is excluded in the inventory", self.name));
        }
        if !self.include.is_empty() && !self.include.iter().any(|d| d == database) {
            return Some(format!(
                "database {database:?} of server {:?} is not in the server's include list in the inventory",
                self.name
            ));
        }
        None
    }
}

/// Where a server's password comes from. The value itself is never in the inventory.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum CredentialRef {
    /// No password (trust, peer, or a client certificate).
    #[default]
    None,
    /// An app setting / environment variable holding the password.
    PasswordEnv(String),
    /// A PostgreSQL password file (`host:port:db:user:password` lines).
    Passfile(PathBuf),
    /// A Key Vault secret, read through the managed identity at the start of every job. It holds
    /// a connection string (a `postgresql://` URI, a libpq `key=value` string, or Azure Backup's
    /// `Server=..;User Id=..;Password=..;` form) with the password; the user and `sslmode` in it
    /// override the inventory's. `vault` is `https://<name>.vault.azure.net` or just `<name>`.
    KeyVault { vault: String, secret: String },
    /// Microsoft Entra authentication (Azure Database for PostgreSQL): the managed identity's
    /// token for `https://ossrdbms-aad.database.windows.net` is the password; `user` is the
    /// database role of the identity. Needs TLS.
    Entra,
}

impl CredentialRef {
    /// Whether reading this credential needs the Azure identity.
    pub fn needs_azure(&self) -> bool {
        matches!(self, CredentialRef::KeyVault { .. } | CredentialRef::Entra)
    }
}

/// The vault URL for an inventory's `vault`: an `https://` URL as given (without a trailing
/// slash), or `https://<name>.vault.azure.net` for a bare vault name.
pub fn key_vault_url(vault: &str) -> Result<String> {
    let vault = vault.trim();
    if vault.contains("://") {
        return match url::Url::parse(vault) {
            Ok(u)
                if u.scheme() == "https"
                    && u.host().is_some()
                    && matches!(u.path(), "" | "/")
                    && u.query().is_none() =>
            {
                Ok(vault.trim_end_matches('/').to_string())
            }
            _ => Err(Error::permanent(format!("key vault {vault:?} is not an https:// URL of a vault"))),
        };
    }
    let ok = (3..=24).contains(&vault.len())
        && vault.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && vault.as_bytes()[0].is_ascii_alphabetic()
        && !vault.ends_with('-')
        && !vault.contains("--");
    if ok {
        Ok(format!("https://{vault}.vault.azure.net"))
    } else {
        Err(Error::permanent(format!("key vault {vault:?} is neither a vault name nor an https:// URL")))
    }
}

/// Key Vault object names: 1-127 of `0-9 a-z A-Z -`.
pub fn check_secret_name(name: &str) -> bool {
    (1..=127).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Validate a server's schedule and policies, naming the server and database on error.
pub fn check_server(s: &Server) -> Result<()> {
    let what = |db: Option<&str>| match db {
        Some(d) => format!("inventory: server {:?}, database {d:?}", s.name),
        None => format!("inventory: server {:?}", s.name),
    };
    let check = |db: Option<&str>, schedule: &Option<String>, policy: &Option<Policy>| -> Result<()> {
        if let Some(sch) = schedule {
            crate::domain::schedule::parse_ncrontab(sch).map_err(|e| e.context(format!("{} schedule", what(db))))?;
        }
        if let Some(p) = policy {
            p.validate().map_err(|e| e.context(format!("{} retention", what(db))))?;
        }
        Ok(())
    };
    check(None, &s.schedule, &s.retention)?;
    for (db, p) in &s.databases {
        check(Some(db), &p.schedule, &p.retention)?;
    }
    Ok(())
}

/// The policy for a database (`None`: the server's globals): its override, else the server's.
pub fn policy_for(s: &Server, database: Option<&str>) -> Option<Policy> {
    database.and_then(|d| s.databases.get(d)).and_then(|p| p.retention).or(s.retention)
}

/// The schedule a database's backups are expected on: its override, the server's, the global.
pub fn schedule_for<'a>(s: &'a Server, database: Option<&str>, global: Option<&'a str>) -> Option<&'a str> {
    database.and_then(|d| s.databases.get(d)).and_then(|p| p.schedule.as_deref()).or(s.schedule.as_deref()).or(global)
}

/// Parse and validate the inventory JSON: an array of servers with unique, non-empty names.
pub fn parse_inventory(json: &str) -> Result<Vec<Server>> {
    let servers: Vec<Server> =
        serde_json::from_str(json).map_err(|e| Error::permanent(format!("inventory is not valid: {e}")))?;
    let mut seen = std::collections::HashSet::new();
    for s in &servers {
        if s.name.trim().is_empty() {
            return Err(Error::permanent("inventory: a server has an empty name"));
        }
        if !seen.insert(s.name.as_str()) {
            return Err(Error::permanent(format!("inventory: server name {:?} appears twice", s.name)));
        }
        if s.user.trim().is_empty() {
            return Err(Error::permanent(format!("inventory: server {:?} has an empty user", s.name)));
        }
        match &s.credentials {
            CredentialRef::KeyVault { vault, secret } => {
                key_vault_url(vault).map_err(|e| e.context(format!("inventory: server {:?}", s.name)))?;
                if !check_secret_name(secret) {
                    return Err(Error::permanent(format!(
                        "inventory: server {:?}: {secret:?} is not a Key Vault secret name (1-127 of 0-9, a-z, A-Z, -)",
                        s.name
                    )));
                }
            }
            CredentialRef::Entra if s.tls == TlsMode::Disable || s.host.starts_with('/') => {
                return Err(Error::permanent(format!(
                    "inventory: server {:?}: Entra authentication sends a token as the password and needs TLS",
                    s.name
                ))
                .with_hint("use tls verify-full (the default) with a host name"));
            }
            _ => {}
        }
        check_server(s)?;
        if let Some(k) = s.encryption_key.as_deref().filter(|k| !k.trim().is_empty()) {
            crate::domain::envelope::KeyId::parse(k)
                .map_err(|e| e.context(format!("inventory: server {:?} encryption_key", s.name)))?;
        }
        if !s.include.is_empty() && !s.exclude.is_empty() {
            return Err(Error::permanent(format!("inventory: server {:?} sets both include and exclude", s.name))
                .with_hint("list the databases to back up in include, or the ones to skip in exclude"));
        }
    }
    Ok(servers)
}
