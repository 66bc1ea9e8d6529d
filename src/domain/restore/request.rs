//! The request: what a restore request (on `restore-requests`, or built by `pgvault restore`)
//! may say, and the checks that need neither the inventory nor the catalog.

use super::*;

/// A restore request, as posted on `restore-requests` (see DESIGN.md, "Restore request").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreRequest {
    pub version: u32,
    /// The idempotency key: a request id is acted on once.
    pub request_id: String,
    /// Free text: who asked, a ticket number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<String>,
    pub source: Source,
    pub target: Target,
    #[serde(default)]
    pub options: Options,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    pub server: String,
    /// One database; absent: the whole server (every database with a backup).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    #[serde(default)]
    pub backup: BackupChoice,
}

/// Which backup: `"latest"`, `{"id": "<backup id>"}` or `{"latest_before": "<RFC 3339>"}`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackupChoice {
    #[default]
    Latest,
    Id(String),
    /// The newest backup whose snapshot was taken at or before this time (pg_dump takes its
    /// snapshot when it starts, so this compares the backup's `started_at`).
    LatestBefore(#[serde(with = "time::serde::rfc3339")] OffsetDateTime),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Fail if the target database exists.
    Create,
    /// Keep the existing database as `<name>_pre_restore_<stamp>`, put the restored one in place.
    Replace,
    /// Copy the backup and its manifest to a container and return read-only URLs.
    AsFiles,
}

impl Mode {
    pub const ALL: [Mode; 3] = [Mode::Create, Mode::Replace, Mode::AsFiles];

    /// `create`, `replace` or `as-files`.
    pub fn parse(s: &str) -> Option<Mode> {
        Mode::ALL.into_iter().find(|m| m.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Create => "create",
            Mode::Replace => "replace",
            Mode::AsFiles => "as-files",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    pub mode: Mode,
    /// create / replace: a server of the inventory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// create / replace of one database: its name on the target (default: the source's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// as-files: the container to copy into (created if missing; not the backup container).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// as-files: a name prefix in that container, e.g. `incident-42/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// as-files: how long the URLs work (default 3600, 10 s to 7 days).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_seconds: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Options {
    /// `pg_restore --no-owner`: objects belong to the restoring role.
    #[serde(default)]
    pub no_owner: bool,
    /// `pg_restore --no-privileges`: no GRANT/REVOKE.
    #[serde(default)]
    pub no_privileges: bool,
    /// Role mapping: every restored object (and the database) belongs to this existing role
    /// (`pg_restore --no-owner --role=<owner>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Restore the roles of the globals backup before the database (existing roles are skipped).
    #[serde(default)]
    pub globals: bool,
    /// `pg_restore --jobs`: parallel restore from a local copy, when the scratch disk has room.
    /// A backup in parts: the parts loaded at once, each streamed from storage (default
    /// `features::restore::DEFAULT_PART_JOBS`), and post-data's `pg_restore --jobs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jobs: Option<u32>,
    /// Create the database with the target server's default encoding and locale instead of the
    /// backup's (for a target that lacks the backup's locale; text then sorts by the target's
    /// rules).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub default_locale: bool,
    /// as-files of an encrypted backup: export the files as stored (encrypted) instead of
    /// decrypting them on the way out; the report says how to decrypt them.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keep_encrypted: bool,
}

pub fn check_id(what: &str, id: &str, max: usize) -> Result<()> {
    let ok = (1..=max).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(Error::permanent(format!("{what} {id:?} is invalid: use 1-{max} letters, digits, '-' or '_'")))
    }
}

pub fn check_db_name(what: &str, name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_IDENT_BYTES || name.contains('\0') {
        return Err(Error::permanent(format!("{what} {name:?} is not a valid database name (1-63 bytes)")));
    }
    if name.starts_with(TEMP_DB_PREFIX) {
        return Err(Error::permanent(format!(
            "{what} {name:?} starts with {TEMP_DB_PREFIX:?}, which pgvault reserves for its temporary databases"
        )));
    }
    Ok(())
}

pub fn check_container(name: &str) -> Result<()> {
    let ok = (3..=63).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--");
    if ok {
        Ok(())
    } else {
        Err(Error::permanent(format!("target.container {name:?} is not a valid container name (3-63 of a-z, 0-9, -)")))
    }
}

/// `incident-42` -> `incident-42/`; empty stays empty. No empty, `.` or `..` segment.
pub fn normalize_prefix(prefix: &str) -> Result<String> {
    let trimmed = prefix.trim_end_matches('/');
    if trimmed.is_empty() {
        return Ok(String::new());
    }
    let ok = trimmed.len() <= 512
        && trimmed.split('/').all(|s| !s.is_empty() && s != "." && s != "..")
        && !trimmed.chars().any(char::is_control);
    if !ok {
        return Err(Error::permanent(format!(
            "target.prefix {prefix:?} is invalid: up to 512 characters of `/`-separated names, none empty, `.` or `..`"
        )));
    }
    Ok(format!("{trimmed}/"))
}

impl RestoreRequest {
    /// Parse and check the request's shape. Every error is permanent: the same text never parses.
    pub fn from_json(text: &str) -> Result<Self> {
        let req: RestoreRequest =
            serde_json::from_str(text).map_err(|e| crate::domain::jobs::not_json("restore request", text, &e))?;
        req.validate()?;
        Ok(req)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("request serializes")
    }

    /// What can be checked without the inventory or the catalog.
    pub fn validate(&self) -> Result<()> {
        if self.version != MESSAGE_VERSION {
            return Err(Error::permanent(format!(
                "restore request has version {}, this pgvault reads version {MESSAGE_VERSION}",
                self.version
            )));
        }
        check_id("request_id", &self.request_id, 64)?;
        if self.requested_by.as_ref().is_some_and(|r| r.len() > 256) {
            return Err(Error::permanent("requested_by is longer than 256 bytes"));
        }
        if self.source.server.trim().is_empty() {
            return Err(Error::permanent("source.server is empty"));
        }
        if let Some(db) = &self.source.database
            && db.is_empty()
        {
            return Err(Error::permanent("source.database is empty; leave it out to restore a whole server"));
        }
        if matches!(self.source.backup, BackupChoice::Id(_)) && self.source.database.is_none() {
            return Err(Error::permanent(
                "source.backup.id names one database's backup: name source.database too (a whole-server \
                 restore takes latest or latest_before)",
            ));
        }
        let t = &self.target;
        match t.mode {
            Mode::Create | Mode::Replace => {
                if t.server.as_deref().is_none_or(|s| s.trim().is_empty()) {
                    return Err(Error::permanent(format!("target.server is required by mode {}", t.mode.as_str())));
                }
                if t.container.is_some() || t.prefix.is_some() || t.expires_in_seconds.is_some() {
                    return Err(Error::permanent(format!(
                        "target.container, prefix and expires_in_seconds belong to mode as-files, not {}",
                        t.mode.as_str()
                    )));
                }
                if let Some(db) = &t.database {
                    if self.source.database.is_none() {
                        return Err(Error::permanent(
                            "target.database names one database; a whole-server restore keeps every database's name",
                        ));
                    }
                    check_db_name("target.database", db)?;
                }
            }
            Mode::AsFiles => {
                if t.server.is_some() || t.database.is_some() {
                    return Err(Error::permanent(
                        "mode as-files copies files: target.server and database do not apply",
                    ));
                }
                check_container(
                    t.container
                        .as_deref()
                        .ok_or_else(|| Error::permanent("target.container is required by mode as-files"))?,
                )?;
                normalize_prefix(t.prefix.as_deref().unwrap_or(""))?;
                let secs = t.expires_in_seconds.unwrap_or(DEFAULT_EXPIRY_SECS);
                if !(MIN_EXPIRY_SECS..=MAX_EXPIRY_SECS).contains(&secs) {
                    return Err(Error::permanent(format!(
                        "target.expires_in_seconds {secs} is out of range {MIN_EXPIRY_SECS}-{MAX_EXPIRY_SECS} (7 days)"
                    )));
                }
                let o = &self.options;
                if o.no_owner || o.no_privileges || o.owner.is_some() || o.jobs.is_some() || o.default_locale {
                    return Err(Error::permanent(
                        "options.no_owner, options.no_privileges, options.owner, options.jobs and \
                         options.default_locale apply to a database restore, not to as-files",
                    ));
                }
            }
        }
        if self.options.keep_encrypted && self.target.mode != Mode::AsFiles {
            return Err(Error::permanent("options.keep_encrypted applies to mode as-files only"));
        }
        if let Some(j) = self.options.jobs
            && !(1..=MAX_JOBS).contains(&j)
        {
            return Err(Error::permanent(format!("options.jobs {j} is out of range 1-{MAX_JOBS}")));
        }
        if let Some(o) = &self.options.owner
            && (o.is_empty() || o.len() > MAX_IDENT_BYTES)
        {
            return Err(Error::permanent(format!("options.owner {o:?} is not a valid role name")));
        }
        Ok(())
    }

    /// Whether `other` asks for the same restore: the same source, target and options. Who asks
    /// (`requested_by`) does not matter; the one rule for the queue's resume and the CLI's.
    pub fn same_as(&self, other: &RestoreRequest) -> bool {
        self.source == other.source && self.target == other.target && self.options == other.options
    }

    /// One line for logs and job records.
    pub fn describe(&self) -> String {
        let what = match &self.source.database {
            Some(db) => format!("database {db:?} of server {:?}", self.source.server),
            None => format!("every database of server {:?}", self.source.server),
        };
        let into = match self.target.mode {
            Mode::AsFiles => format!("as files into container {:?}", self.target.container.as_deref().unwrap_or("")),
            m => format!("into server {:?} ({})", self.target.server.as_deref().unwrap_or(""), m.as_str()),
        };
        format!("restore {what} {into}")
    }
}
