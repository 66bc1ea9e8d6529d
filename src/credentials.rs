//! The secret-source seam: where a server's database password comes from.
//!
//! Read at the start of each job and never cached beyond it, so a rotated secret takes effect on
//! the next job. [`SettingsSecrets`] serves local runs (an app setting, or a PostgreSQL password
//! file); Key Vault and Entra tokens plug in behind the same trait.

use crate::error::{Error, Result};
use crate::secret::Secret;
use crate::settings::{CredentialRef, Server, Settings};
use async_trait::async_trait;
use std::path::Path;
use std::sync::Arc;

#[async_trait]
pub trait SecretSource: Send + Sync + 'static {
    /// The password for `server`'s role, or `None` if it needs none. Errors name the source
    /// (setting, file, vault and secret), never the value.
    async fn password(&self, server: &Server, database: &str) -> Result<Option<Secret>>;
}

/// Passwords from app settings or a password file, as the inventory says.
pub struct SettingsSecrets {
    settings: Arc<Settings>,
}

impl SettingsSecrets {
    pub fn new(settings: Arc<Settings>) -> Self {
        Self { settings }
    }
}

#[async_trait]
impl SecretSource for SettingsSecrets {
    async fn password(&self, server: &Server, database: &str) -> Result<Option<Secret>> {
        match &server.credentials {
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

    #[test]
    fn passfile_matching() {
        let text = "# comment\nother:5432:*:u:nope\ndb.example:5432:*:u:pa\\:ss\\\\w\n*:*:*:*:fallback\n";
        assert_eq!(passfile_lookup(text, "db.example", 5432, "app", "u").as_deref(), Some("pa:ss\\w"));
        assert_eq!(passfile_lookup(text, "x", 1, "y", "z").as_deref(), Some("fallback"));
        assert_eq!(passfile_lookup("h:1:d:u:p", "h", 2, "d", "u"), None);
    }
}
