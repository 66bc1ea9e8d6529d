//! Database logins as the inventory says where they come from (the [`SecretSource`] of every
//! run): an app setting, a PostgreSQL password file, a Key Vault secret, an Entra token.
//!
//! Read at the start of each job and never cached beyond it, so a rotated secret takes effect on
//! the next job. [`SettingsSecrets`] follows the inventory: an app setting, a PostgreSQL password
//! file, a Key Vault secret holding a connection string, or an Entra token. The last two go
//! through [`CloudSecrets`], which `azure::keyvault` implements with the managed identity.

use crate::config::settings::Settings;
use crate::domain::connstr;
use crate::domain::error::{Error, Result};
use crate::domain::inventory::{CredentialRef, Server, key_vault_url};
use crate::domain::secret::Secret;
use crate::seams::credentials::{CloudSecrets, Login, SecretSource, VaultSecret};
use async_trait::async_trait;
use std::path::Path;
use std::sync::Arc;
use time::OffsetDateTime;

/// Passwords as the inventory says: app settings, a password file, Key Vault, Entra.
pub struct SettingsSecrets {
    settings: Arc<Settings>,
    cloud: Option<Arc<dyn CloudSecrets>>,
}

impl SettingsSecrets {
    pub fn new(settings: Arc<Settings>) -> Self {
        Self { settings, cloud: None }
    }

    /// Read Key Vault and Entra credentials through `cloud`.
    pub fn with_cloud(mut self, cloud: Arc<dyn CloudSecrets>) -> Self {
        self.cloud = Some(cloud);
        self
    }

    fn cloud(&self, server: &Server) -> Result<&Arc<dyn CloudSecrets>> {
        self.cloud.as_ref().ok_or_else(|| {
            Error::permanent(format!(
                "password for server {:?}: Key Vault and Entra credentials need the Azure identity, \
                 which is not set up",
                server.name
            ))
        })
    }

    /// Read the Key Vault secret now, check its attributes and parse it.
    async fn key_vault_login(&self, server: &Server, vault: &str, secret: &str) -> Result<Login> {
        let vault_url = key_vault_url(vault)?;
        let what = format!("password for server {:?}: Key Vault {vault_url} secret {secret:?}", server.name);
        let fetched = self.cloud(server)?.key_vault_secret(&vault_url, secret).await.context_of(&server.name)?;
        let conn = check_vault_secret(&fetched, OffsetDateTime::now_utc())
            .and_then(|()| connstr::parse(fetched.value.expose()))
            .map_err(|why| {
                Error::permanent(format!("{what} (version {}): {why}", fetched.version)).with_hint(
                    "store a postgresql:// URI, a libpq `host=.. user=.. password=..` string, or \
                     `Server=..;User Id=..;Password=..;` as the secret's value, enabled and not expired",
                )
            })?;
        if conn.password.is_none() {
            return Err(Error::permanent(format!(
                "{what} (version {}): the connection string holds no password",
                fetched.version
            ))
            .with_hint("add password=... to the secret, or use Entra authentication"));
        }
        if conn.host.as_deref().is_some_and(|h| !h.eq_ignore_ascii_case(&server.host))
            || conn.port.is_some_and(|p| p != server.port)
        {
            return Err(Error::permanent(format!(
                "{what} (version {}): the secret names another host or port than the inventory ({}:{})",
                fetched.version, server.host, server.port
            ))
            .with_hint("the inventory decides which server is backed up; fix the secret or the inventory"));
        }
        if let Some(from) = conn.tls_raised_from {
            tracing::warn!(server = %server.name, secret, "sslmode={from} in the Key Vault secret is treated as require: pgvault never falls back to plain text");
        }
        if !conn.ignored.is_empty() {
            tracing::info!(server = %server.name, secret, ignored = ?conn.ignored, "connection string keywords pgvault does not use");
        }
        tracing::debug!(server = %server.name, vault = %vault_url, secret, version = %fetched.version, "database credentials read from Key Vault");
        Ok(Login { user: conn.user, password: conn.password, tls: conn.tls })
    }
}

/// Refuse a secret that is disabled, expired, or not valid yet. Key Vault refuses to return a
/// disabled secret (403 SecretDisabled) but does return expired and not-yet-valid ones: the
/// client must check.
pub fn check_vault_secret(s: &VaultSecret, now: OffsetDateTime) -> std::result::Result<(), String> {
    let rfc3339 = |t: OffsetDateTime| t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
    if !s.enabled {
        return Err("the secret is disabled".into());
    }
    if let Some(exp) = s.expires
        && exp <= now
    {
        return Err(format!("the secret expired at {}", rfc3339(exp)));
    }
    if let Some(nbf) = s.not_before
        && nbf > now
    {
        return Err(format!("the secret is not valid before {}", rfc3339(nbf)));
    }
    Ok(())
}

trait ServerContext<T> {
    fn context_of(self, server: &str) -> Result<T>;
}

impl<T> ServerContext<T> for Result<T> {
    fn context_of(self, server: &str) -> Result<T> {
        self.map_err(|e| e.context(format!("password for server {server:?}")))
    }
}

#[async_trait]
impl SecretSource for SettingsSecrets {
    async fn login(&self, server: &Server, database: &str) -> Result<Login> {
        match &server.credentials {
            CredentialRef::KeyVault { vault, secret } => self.key_vault_login(server, vault, secret).await,
            _ => Ok(Login { password: self.password(server, database).await?, ..Login::default() }),
        }
    }

    async fn password(&self, server: &Server, database: &str) -> Result<Option<Secret>> {
        match &server.credentials {
            CredentialRef::KeyVault { .. } => Ok(self.login(server, database).await?.password),
            CredentialRef::Entra => {
                let token = self.cloud(server)?.postgres_token().await.context_of(&server.name)?;
                tracing::debug!(server = %server.name, "Entra token fetched for the connection");
                Ok(Some(token))
            }
            CredentialRef::None => Ok(None),
            CredentialRef::PasswordEnv(name) => match self.settings.env_value(name) {
                Some(v) if !v.is_empty() => Ok(Some(Secret::new(v))),
                _ => Err(Error::permanent(format!("password for server {:?}: setting {name} is not set", server.name))
                    .with_hint("set it, or change credentials in the inventory")),
            },
            CredentialRef::Passfile(path) => {
                let text = tokio::fs::read_to_string(path).await.map_err(|e| {
                    Error::permanent(format!(
                        "password for server {:?}: cannot read password file {}: {e}",
                        server.name,
                        path.display()
                    ))
                })?;
                passfile_lookup(&text, &server.host, server.port, database, &server.user)
                    .map(|pw| Some(Secret::new(pw)))
                    .ok_or_else(|| no_entry(server, path, database))
            }
        }
    }
}

fn no_entry(server: &Server, path: &Path, database: &str) -> Error {
    Error::permanent(format!(
        "password for server {:?}: no line in password file {} matches {}:{}:{}:{}",
        server.name,
        path.display(),
        server.host,
        server.port,
        database,
        server.user
    ))
}

/// Find the password in a libpq password file: `hostname:port:database:username:password`, `*`
/// matching anything, `\:` and `\\` escaped, first match wins.
pub fn passfile_lookup(text: &str, host: &str, port: u16, database: &str, user: &str) -> Option<String> {
    let port = port.to_string();
    for line in text.lines() {
        if line.trim_start().starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let fields = split_passfile_line(line);
        if fields.len() != 5 {
            continue;
        }
        let matches = |field: &str, value: &str| field == "*" || field == value;
        if matches(&fields[0], host)
            && matches(&fields[1], &port)
            && matches(&fields[2], database)
            && matches(&fields[3], user)
        {
            return Some(fields[4].clone());
        }
    }
    None
}

fn split_passfile_line(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    fields.last_mut().expect("non-empty").push(n);
                }
            }
            ':' if fields.len() < 5 => fields.push(String::new()),
            c => fields.last_mut().expect("non-empty").push(c),
        }
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::inventory::TlsMode;

    struct FakeVault {
        value: &'static str,
        enabled: bool,
        expires_in: Option<time::Duration>,
        not_before_in: Option<time::Duration>,
    }

    #[async_trait]
    impl CloudSecrets for FakeVault {
        async fn key_vault_secret(&self, _: &str, _: &str) -> Result<VaultSecret> {
            let now = OffsetDateTime::now_utc();
            Ok(VaultSecret {
                value: Secret::new(self.value),
                version: "0123456789abcdef0123456789abcdef".into(),
                enabled: self.enabled,
                expires: self.expires_in.map(|d| now + d),
                not_before: self.not_before_in.map(|d| now + d),
            })
        }
        async fn postgres_token(&self) -> Result<Secret> {
            Ok(Secret::new("token"))
        }
    }

    fn kv_settings() -> Arc<Settings> {
        let inventory = r#"[{"name":"main","host":"db.example","user":"inv_user","tls":"verify-full",
            "credentials":{"key_vault":{"vault":"https://127.0.0.1:9","secret":"pg-main"}}}]"#;
        let map = [("PGVAULT_INVENTORY".to_string(), inventory.to_string())].into_iter().collect();
        Arc::new(Settings::from_map(map).unwrap())
    }

    async fn login_with(vault: FakeVault) -> Result<Login> {
        let settings = kv_settings();
        let secrets = SettingsSecrets::new(settings.clone()).with_cloud(Arc::new(vault));
        secrets.login(&settings.inventory[0], "app").await
    }

    fn vault(value: &'static str) -> FakeVault {
        FakeVault { value, enabled: true, expires_in: None, not_before_in: None }
    }

    #[tokio::test]
    async fn key_vault_connection_string_sets_the_login() {
        let login =
            login_with(vault("postgresql://kv_user:Pa55-w0rd@db.example:5432/x?sslmode=verify-ca")).await.unwrap();
        assert_eq!(login.user.as_deref(), Some("kv_user"));
        assert_eq!(login.password.unwrap().expose(), "Pa55-w0rd");
        assert_eq!(login.tls, Some(TlsMode::VerifyCa));
        let login = login_with(vault("password=only-this")).await.unwrap();
        assert_eq!((login.user, login.tls), (None, None));
    }

    #[tokio::test]
    async fn key_vault_refusals_name_vault_and_secret_but_not_the_value() {
        let hour = time::Duration::hours(1);
        let cases = [
            (FakeVault { enabled: false, ..vault("password=VALUE-1") }, "the secret is disabled"),
            (FakeVault { expires_in: Some(-hour), ..vault("password=VALUE-1") }, "the secret expired at"),
            (FakeVault { not_before_in: Some(hour), ..vault("password=VALUE-1") }, "not valid before"),
            (vault("VALUE-1"), "is not a postgresql:// URI"),
            (vault("host=db.example user=VALUE-1"), "holds no password"),
            (vault("host=VALUE-1.example password=VALUE-1"), "another host or port"),
            (vault("postgresql://u:VALUE-1@db.example:6543/d"), "another host or port"),
        ];
        for (v, why) in cases {
            let e = login_with(v).await.unwrap_err();
            let text = e.to_string();
            assert!(e.is_permanent(), "{text}");
            assert!(text.contains(why), "{why}: {text}");
            assert!(
                text.contains("password for server \"main\": Key Vault https://127.0.0.1:9 secret \"pg-main\""),
                "{text}"
            );
            assert!(!text.contains("VALUE-1"), "{text}");
        }
    }

    #[tokio::test]
    async fn cloud_credentials_without_the_identity_are_refused() {
        let settings = kv_settings();
        let e = SettingsSecrets::new(settings.clone()).login(&settings.inventory[0], "app").await.unwrap_err();
        assert!(e.to_string().contains("need the Azure identity"), "{e}");
    }

    #[test]
    fn passfile_matching() {
        let text = "# comment\nother:5432:*:u:nope\ndb.example:5432:*:u:pa\\:ss\\\\w\n*:*:*:*:fallback\n";
        assert_eq!(passfile_lookup(text, "db.example", 5432, "app", "u").as_deref(), Some("pa:ss\\w"));
        assert_eq!(passfile_lookup(text, "x", 1, "y", "z").as_deref(), Some("fallback"));
        assert_eq!(passfile_lookup("h:1:d:u:p", "h", 2, "d", "u"), None);
    }
}
