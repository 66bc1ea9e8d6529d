//! Restore: requests, their plan, and the pipeline that puts a backup into a server without ever
//! damaging an existing database.
//!
//! - A [`RestoreRequest`] (JSON on `restore-requests`, or built by `pgvault restore`) names a
//!   source (server + database + backup choice, or a whole server), a target and options.
//! - [`plan`] is pure: from the request, the inventory and the catalog it chooses one backup per
//!   database (and the globals), with a reason for every choice, and makes one [`RestoreTask`]
//!   per database (or per file to export).
//! - [`submit`] claims the request id once (create-if-absent job record), records the plan and
//!   enqueues the tasks on `restore-tasks`; [`execute_task`] runs one task and records it.
//! - A database is restored into a new temporary database `pgvault_restore_<hex>`: the blob is
//!   read through [`catalog::verified_blocks`] (no unverified byte reaches pg_restore),
//!   decompressed, and fed to the target's own major version of `pg_restore`. Only after
//!   pg_restore exited 0, every hash matched and the manifest's exact row counts were reproduced
//!   is it renamed into place (`replace` keeps the old one as `<name>_pre_restore_<stamp>`). A
//!   failed restore drops its temporary database; a swap that cannot be done leaves the verified
//!   copy under its temporary name and says so.

use crate::config::context::Ctx;
use crate::config::settings::{Settings, StorageSettings};
use crate::domain::dbprops;
use crate::domain::error::{Error, Result};
use crate::domain::layout::{self, BackupKind};
use crate::domain::manifest::Manifest;
use crate::domain::secret::redact;
use crate::features::backup;
use crate::features::catalog;
use crate::monitor::records::{self as jobrecords, JobKind, JobRecord, Status};
use crate::seams::pg::{self, ConnSpec, quote_ident};
use crate::seams::queue::JobQueue;
use crate::seams::store::{CreateOutcome, Tags};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::mpsc;

pub const RESTORE_REQUESTS_QUEUE: &str = "restore-requests";
pub const RESTORE_TASKS_QUEUE: &str = "restore-tasks";
/// The message version of requests and tasks.
pub const MESSAGE_VERSION: u32 = 1;
/// Temporary databases are `pgvault_restore_<8 hex>`; nothing else may be named like that.
pub const TEMP_DB_PREFIX: &str = "pgvault_restore_";
/// `replace` keeps the old database as `<name>_pre_restore_<YYYYMMDD_HHMMSS>` (UTC).
pub const PRE_RESTORE_INFIX: &str = "_pre_restore_";
/// Read-only URLs of `as-files` live this long unless the request says otherwise.
pub const DEFAULT_EXPIRY_SECS: u64 = 3600;
const MIN_EXPIRY_SECS: u64 = 10;
const MAX_EXPIRY_SECS: u64 = 7 * 24 * 3600;
const MAX_JOBS: u32 = 32;
/// PostgreSQL's identifier limit (NAMEDATALEN - 1), in bytes.
const MAX_IDENT_BYTES: usize = 63;
/// A globals script larger than this is not a pg_dumpall --globals-only script.
const MAX_GLOBALS_BYTES: usize = 64 << 20;

// ---- the request --------------------------------------------------------------------------------

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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jobs: Option<u32>,
    /// Create the database with the target server's default encoding and locale instead of the
    /// backup's (for a target that lacks the backup's locale; text then sorts by the target's
    /// rules).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub default_locale: bool,
}

fn check_id(what: &str, id: &str, max: usize) -> Result<()> {
    let ok = (1..=max).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(Error::permanent(format!("{what} {id:?} is invalid: use 1-{max} letters, digits, '-' or '_'")))
    }
}

fn check_db_name(what: &str, name: &str) -> Result<()> {
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

fn check_container(name: &str) -> Result<()> {
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
fn normalize_prefix(prefix: &str) -> Result<String> {
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
            serde_json::from_str(text).map_err(|e| Error::permanent(format!("restore request is not valid: {e}")))?;
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

// ---- tasks and the plan -----------------------------------------------------------------------

/// One unit of work on `restore-tasks`: restore one backup into one database, or export one
/// backup as files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreTask {
    pub version: u32,
    /// `<request id>-<n>`.
    pub task_id: String,
    pub request_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<String>,
    /// The backup id to restore or export.
    pub backup: String,
    /// create / replace: the globals backup whose roles are restored first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub globals: Option<String>,
    /// Resolved: create / replace name the server and database; as-files the container, the
    /// normalized prefix and the expiry.
    pub target: Target,
    #[serde(default)]
    pub options: Options,
    /// Why this backup and this target were chosen.
    pub reason: String,
}

impl RestoreTask {
    pub fn from_json(text: &str) -> Result<Self> {
        let task: RestoreTask =
            serde_json::from_str(text).map_err(|e| Error::permanent(format!("restore task is not valid: {e}")))?;
        task.validate()?;
        Ok(task)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("task serializes")
    }

    pub fn validate(&self) -> Result<()> {
        if self.version != MESSAGE_VERSION {
            return Err(Error::permanent(format!(
                "restore task has version {}, this pgvault reads version {MESSAGE_VERSION}",
                self.version
            )));
        }
        check_id("task_id", &self.task_id, 80)?;
        check_id("request_id", &self.request_id, 64)?;
        if self.backup.is_empty() {
            return Err(Error::permanent("restore task names no backup"));
        }
        match self.target.mode {
            Mode::Create | Mode::Replace => {
                if self.target.server.is_none() {
                    return Err(Error::permanent("restore task names no target server"));
                }
                check_db_name("target database", self.target.database.as_deref().unwrap_or(""))?;
            }
            Mode::AsFiles => {
                check_container(self.target.container.as_deref().unwrap_or(""))?;
            }
        }
        Ok(())
    }

    pub fn describe(&self) -> String {
        match self.target.mode {
            Mode::AsFiles => format!(
                "export backup {:?} as files into container {:?}",
                self.backup,
                self.target.container.as_deref().unwrap_or("")
            ),
            m => format!(
                "restore backup {:?} into database {:?} on server {:?} ({})",
                self.backup,
                self.target.database.as_deref().unwrap_or(""),
                self.target.server.as_deref().unwrap_or(""),
                m.as_str()
            ),
        }
    }
}

/// One decision of the plan and why it was made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Choice {
    pub what: String,
    pub reason: String,
}

/// What a request resolves to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub request_id: String,
    pub tasks: Vec<RestoreTask>,
    pub choices: Vec<Choice>,
}

fn ts(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

/// Choose one backup from `backups` (one database's or the globals', oldest first).
fn choose<'a>(backups: &[&'a Manifest], choice: &BackupChoice, what: &str) -> Result<(&'a Manifest, String)> {
    match choice {
        BackupChoice::Latest => {
            let m = backups.last().ok_or_else(|| Error::permanent(format!("{what} has no backup")))?;
            Ok((m, format!("latest: the newest of {} backups of {what}, taken {}", backups.len(), ts(m.started_at))))
        }
        BackupChoice::LatestBefore(t) => {
            let eligible: Vec<_> = backups.iter().filter(|m| m.started_at <= *t).collect();
            let m = eligible.last().ok_or_else(|| {
                let oldest = backups.first().map(|m| ts(m.started_at)).unwrap_or_else(|| "none".into());
                Error::permanent(format!(
                    "no backup of {what} was taken at or before {}; the oldest was taken {oldest}",
                    ts(*t)
                ))
            })?;
            Ok((
                m,
                format!(
                    "latest_before {}: the newest backup of {what} taken at or before then ({}); {} newer skipped",
                    ts(*t),
                    ts(m.started_at),
                    backups.len() - eligible.len()
                ),
            ))
        }
        BackupChoice::Id(id) => {
            let id = id.strip_suffix(layout::MANIFEST_SUFFIX).unwrap_or(id);
            let m = backups.iter().find(|m| m.id == id).ok_or_else(|| {
                Error::permanent(format!("source.backup.id {id:?} is not a backup of {what}"))
                    .with_hint("`pgvault list --server S --database D` shows the backups")
            })?;
            Ok((m, format!("named by id; taken {}", ts(m.started_at))))
        }
    }
}

/// Resolve a request into tasks. Pure: `backups` is the catalog of the source server.
pub fn plan(req: &RestoreRequest, settings: &Settings, backups: &[Manifest]) -> Result<Plan> {
    req.validate()?;
    let src = &req.source;
    let mut choices = Vec::new();
    let of_server: Vec<&Manifest> = backups.iter().filter(|m| m.server == src.server).collect();
    if of_server.is_empty() {
        return Err(if settings.server(&src.server).is_some() {
            Error::permanent(format!("source server {:?} has no backups", src.server))
        } else {
            Error::permanent(format!(
                "unknown source server {:?}: it is not in the inventory and has no backups",
                src.server
            ))
            .with_hint("`pgvault list` shows the servers with backups")
        });
    }

    let target = &req.target;
    let target_server = match target.mode {
        Mode::Create | Mode::Replace => {
            let name = target.server.as_deref().expect("validated");
            let server = settings.server(name).ok_or_else(|| {
                Error::permanent(format!("target.server {name:?} is not in the inventory"))
                    .with_hint("a restore writes only to servers of PGVAULT_INVENTORY")
            })?;
            choices.push(Choice {
                what: format!("target server {name:?}"),
                reason: format!("named in the request; mode {}", target.mode.as_str()),
            });
            Some(server)
        }
        Mode::AsFiles => {
            let container = target.container.as_deref().expect("validated");
            match &settings.storage {
                StorageSettings::Local { .. } => {
                    return Err(Error::permanent(
                        "mode as-files needs Azure storage: it returns read-only user-delegation SAS URLs, \
                         which the local store cannot sign",
                    )
                    .with_hint("set PGVAULT_STORAGE=azure, or copy the files from PGVAULT_LOCAL_DIR yourself"));
                }
                StorageSettings::Azure { container: backups, .. } if backups == container => {
                    return Err(Error::permanent(format!(
                        "target.container {container:?} is the backup container; as-files copies into another one"
                    )));
                }
                StorageSettings::Azure { .. } => {}
            }
            None
        }
    };

    // Databases.
    let databases: Vec<String> = match &src.database {
        Some(db) => vec![db.clone()],
        None => {
            let mut names: Vec<String> =
                of_server.iter().filter(|m| m.kind == BackupKind::Database).map(|m| m.database.clone()).collect();
            names.sort();
            names.dedup();
            names
        }
    };
    // A whole-server restore restores the server as it was: the databases its globals backup of
    // that time lists (the newest globals at or before the chosen time), and any database backed
    // up after it. A database missing from that list whose newest backup is older was dropped.
    let reference = if src.database.is_none() {
        let globals: Vec<&Manifest> = of_server.iter().copied().filter(|m| m.kind == BackupKind::Globals).collect();
        choose(&globals, &src.backup, "the globals").ok().map(|(m, _)| m).filter(|m| m.databases.is_some())
    } else {
        None
    };
    let mut chosen: Vec<(String, &Manifest, String)> = Vec::new();
    for db in &databases {
        let what = format!("database {db:?} of server {:?}", src.server);
        let list: Vec<&Manifest> =
            of_server.iter().copied().filter(|m| m.kind == BackupKind::Database && &m.database == db).collect();
        if src.database.is_some() && list.is_empty() {
            return Err(Error::permanent(format!("{what} has no backups"))
                .with_hint("`pgvault list --server S` shows the databases with backups"));
        }
        if src.database.is_none()
            && let Some(server) = target_server
            && db == &server.maintenance_db
        {
            choices.push(Choice {
                what: format!("database {db:?}"),
                reason: format!(
                    "skipped: it is the maintenance database of target server {:?}, which pgvault connects to \
                     and never replaces in a whole-server restore",
                    server.name
                ),
            });
            continue;
        }
        match choose(&list, &src.backup, &what) {
            Ok((m, _))
                if let Some(g) = reference
                    && let Some(listed) = &g.databases
                    && !listed.contains(db)
                    && m.started_at < g.started_at =>
            {
                choices.push(Choice {
                    what: format!("database {db:?}"),
                    reason: format!(
                        "skipped: it was not on the server when the globals were backed up ({}), and its newest \
                         backup ({}) is older, so it had been dropped; name it in source.database to restore it",
                        ts(g.started_at),
                        ts(m.started_at)
                    ),
                });
            }
            Ok((m, reason)) => {
                choices.push(Choice { what: format!("backup {}", m.id), reason });
                chosen.push((db.clone(), m, what));
            }
            // A whole-server restore takes the databases that have a backup before the time.
            Err(e) if src.database.is_none() => {
                choices.push(Choice { what: format!("database {db:?}"), reason: format!("skipped: {}", e.message()) })
            }
            Err(e) => return Err(e),
        }
    }
    if chosen.is_empty() {
        return Err(Error::permanent(format!(
            "nothing to restore: no database backup of server {:?} matches the request",
            src.server
        )));
    }

    // Globals.
    let globals = if req.options.globals {
        let list: Vec<&Manifest> = of_server.iter().copied().filter(|m| m.kind == BackupKind::Globals).collect();
        let what = format!("the globals of server {:?}", src.server);
        let (m, reason) = match &src.backup {
            // The globals that go with a named backup: the newest requested before it finished.
            // Those of the same run share its requested_at, and may well start after it finished.
            BackupChoice::Id(_) => {
                let until = chosen[0].1.finished_at;
                let m = list.iter().rev().find(|m| m.requested_at <= until).ok_or_else(|| {
                    Error::permanent(format!(
                        "no backup of {what} was requested at or before {} (when the named backup finished)",
                        ts(until)
                    ))
                })?;
                (
                    *m,
                    format!(
                        "the globals of the named backup's time: the newest requested at or before it finished ({})",
                        ts(m.requested_at)
                    ),
                )
            }
            other => choose(&list, other, &what)?,
        };
        choices.push(Choice { what: format!("globals {}", m.id), reason: format!("options.globals; {reason}") });
        Some(m)
    } else {
        None
    };

    let mut tasks = Vec::new();
    let mut push = |backup: &Manifest, target: Target, globals: Option<String>, reason: String| {
        tasks.push(RestoreTask {
            version: MESSAGE_VERSION,
            task_id: format!("{}-{}", req.request_id, tasks.len() + 1),
            request_id: req.request_id.clone(),
            requested_by: req.requested_by.clone(),
            backup: backup.id.clone(),
            globals,
            target,
            options: req.options.clone(),
            reason,
        })
    };
    match target.mode {
        Mode::Create | Mode::Replace => {
            let server = target_server.expect("checked above");
            for (db, m, _) in &chosen {
                let (name, why) = match &target.database {
                    Some(t) => (t.clone(), "named in the request"),
                    None => (db.clone(), "the source database's name"),
                };
                choices.push(Choice {
                    what: format!("target database {name:?} on server {:?}", server.name),
                    reason: why.to_string(),
                });
                let t = Target {
                    mode: target.mode,
                    server: Some(server.name.clone()),
                    database: Some(name.clone()),
                    container: None,
                    prefix: None,
                    expires_in_seconds: None,
                };
                push(
                    m,
                    t,
                    globals.map(|g| g.id.clone()),
                    format!("restore {} into {name:?} on {:?} ({})", m.id, server.name, target.mode.as_str()),
                );
            }
        }
        Mode::AsFiles => {
            let prefix = normalize_prefix(target.prefix.as_deref().unwrap_or(""))?;
            let t = Target {
                mode: Mode::AsFiles,
                server: None,
                database: None,
                container: target.container.clone(),
                prefix: Some(prefix),
                expires_in_seconds: Some(target.expires_in_seconds.unwrap_or(DEFAULT_EXPIRY_SECS)),
            };
            for (_, m, _) in &chosen {
                push(m, t.clone(), None, format!("export {} as files", m.id));
            }
            if let Some(g) = globals {
                push(g, t.clone(), None, format!("export globals {} as files", g.id));
            }
        }
    }
    Ok(Plan { request_id: req.request_id.clone(), tasks, choices })
}

// ---- submitting: claim, record, enqueue -------------------------------------------------------

/// What [`submit`] did.
#[derive(Debug)]
pub enum Submitted {
    /// Planned, recorded, and (with a queue) enqueued.
    Planned(Plan),
    /// The request id was used before; nothing was done. The record says what became of it.
    Duplicate(Box<JobRecord>),
}

/// Validate and plan a request, claim its id, record the plan and the tasks, and send the tasks
/// to `restore-tasks` (when `queue` is given; the CLI runs them itself).
///
/// A permanent error (invalid, impossible) is recorded as a failed request (marked `rejected`,
/// so the id may be posted again once fixed) and returned. A request id that was planned before
/// is a duplicate: nothing is done, whatever the new text says. A request whose tasks were not
/// all sent (the host retries it) resumes sending the recorded plan.
pub async fn submit(ctx: &Ctx, queue: Option<&dyn JobQueue>, req: &RestoreRequest) -> Result<Submitted> {
    req.validate()?;
    let store = ctx.store.as_ref();
    let existing = jobrecords::get(store, JobKind::RestoreRequest, &req.request_id).await?;
    let rejected_before = existing.as_ref().is_some_and(|r| r.detail["rejected"] == true);
    let resume = existing.as_ref().filter(|r| {
        r.detail["enqueued"] == false && r.detail["request"] == serde_json::to_value(req).unwrap_or_default()
    });
    let plan = match (resume, &existing) {
        (Some(r), _) => serde_json::from_value::<Plan>(r.detail["plan"].clone()).map_err(|e| {
            Error::permanent(format!("restore request {:?}: recorded plan unreadable: {e}", req.request_id))
        })?,
        (None, Some(r)) if !rejected_before => return Ok(Submitted::Duplicate(Box::new(r.clone()))),
        _ => {
            let backups = catalog::list(store, Some(&req.source.server), None).await?;
            match plan(req, &ctx.settings, &backups) {
                Ok(p) => p,
                Err(e) => {
                    if e.is_permanent() {
                        record_rejection(ctx, req, &e).await;
                    }
                    return Err(e);
                }
            }
        }
    };

    let now = OffsetDateTime::now_utc();
    let mut rec = JobRecord::new(JobKind::RestoreRequest, &req.request_id, req.describe(), now);
    rec.requested_by = req.requested_by.clone();
    rec.detail = serde_json::json!({ "request": req, "plan": plan, "enqueued": false, "rejected": false });
    if resume.is_none() {
        let claimed = if rejected_before {
            jobrecords::put(store, &rec).await.map(|()| CreateOutcome::Created)?
        } else {
            jobrecords::create(store, &rec).await?
        };
        if claimed == CreateOutcome::AlreadyExists {
            // Someone else claimed it between our read and our create.
            let theirs = jobrecords::get(store, JobKind::RestoreRequest, &req.request_id).await?.unwrap_or(rec);
            return Ok(Submitted::Duplicate(Box::new(theirs)));
        }
        for c in &plan.choices {
            tracing::info!(request = %req.request_id, what = %c.what, reason = %c.reason, "restore plan");
        }
    }
    for task in &plan.tasks {
        if jobrecords::get(store, JobKind::RestoreTask, &task.task_id).await?.is_none() {
            let mut t = JobRecord::new(JobKind::RestoreTask, &task.task_id, task.describe(), now);
            t.parent = Some(req.request_id.clone());
            t.requested_by = req.requested_by.clone();
            t.detail = serde_json::json!({ "task": task });
            jobrecords::put(store, &t).await?;
        }
        if let Some(q) = queue {
            q.send(RESTORE_TASKS_QUEUE, &task.to_json(), false)
                .await
                .map_err(|e| e.context(format!("enqueue restore task {}", task.task_id)))?;
            tracing::info!(request = %req.request_id, task = %task.task_id, what = %task.describe(), "restore task enqueued");
        }
    }
    if let Some(r) = resume {
        rec.created_at = r.created_at;
    }
    rec.detail["enqueued"] = serde_json::Value::Bool(true);
    jobrecords::put(store, &rec).await?;
    // A fast worker may have recorded progress before the put above overwrote it.
    update_request(ctx, &req.request_id).await;
    Ok(Submitted::Planned(plan))
}

/// Record a request that can never run: a failed record marked `rejected`.
async fn record_rejection(ctx: &Ctx, req: &RestoreRequest, why: &Error) {
    let now = OffsetDateTime::now_utc();
    let mut rec = JobRecord::new(JobKind::RestoreRequest, &req.request_id, req.describe(), now);
    rec.status = Status::Failed;
    rec.reason = Some(why.to_string());
    rec.requested_by = req.requested_by.clone();
    rec.finished_at = Some(now);
    rec.detail = serde_json::json!({ "request": req, "rejected": true });
    jobrecords::put_logged(ctx.store.as_ref(), &rec).await;
}

// ---- running one task -------------------------------------------------------------------------

/// What one task did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskReport {
    pub task_id: String,
    pub backup: String,
    pub mode: String,
    pub stored_bytes: u64,
    pub raw_bytes: u64,
    pub seconds: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<DatabaseReport>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub globals: Option<GlobalsReport>,
    /// as-files: the copies and their read-only URLs. The URLs are secrets (they carry a
    /// signature): they go to the job record and the CLI's output, never to a log.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<ExportedFile>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DatabaseReport {
    pub server: String,
    pub database: String,
    /// The temporary database it was restored into.
    pub temp_database: String,
    /// `stream` or `parallel`, and why.
    pub method: String,
    pub method_reason: String,
    pub pg_restore: String,
    pub target_version: String,
    /// Tables whose row count was checked against the manifest's exact counts.
    pub tables_checked: usize,
    /// replace: the name the old database was kept under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_kept_as: Option<String>,
    /// The database's own properties: what was applied, what was not and why, and whether they
    /// were read back as planned. Absent in reports written before pgvault restored them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub properties: Option<dbprops::PropertiesReport>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GlobalsReport {
    pub backup: String,
    pub created: Vec<String>,
    /// Roles that existed already; pgvault does not change them.
    pub skipped: Vec<String>,
    /// Statements not applied, and why (tablespaces, settings of existing roles, failures).
    pub not_applied: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportedFile {
    pub container: String,
    pub blob: String,
    pub bytes: u64,
    pub sha256: String,
    /// The read-only user-delegation SAS URL: a bearer credential (its `sig=`). `Debug` shows
    /// `**redacted**`; it is serialized as the plain URL, because the job record is where the
    /// operator gets it.
    #[serde(serialize_with = "serialize_exposed")]
    pub url: crate::domain::secret::Secret,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

/// Serialize a secret as its plain value. Only for fields whose serialized form goes to the
/// secret's rightful reader (here: the job record and the CLI's output), never to a log.
fn serialize_exposed<S: serde::Serializer>(
    secret: &crate::domain::secret::Secret,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(secret.expose())
}

/// What [`execute_task`] did.
#[derive(Debug)]
pub enum TaskOutcome {
    Done(Box<TaskReport>),
    /// The task's record says it succeeded before (a redelivered message); nothing was done.
    AlreadyDone(Box<JobRecord>),
    /// Another delivery of the task (a duplicate message) is running it now; nothing was done.
    RunningElsewhere(crate::features::claim::Holder),
    /// The backup is in the Archive tier: rehydration was started (or is under way) and the task
    /// is recorded as `rehydration-pending`. The caller re-enqueues it to run after `recheck_secs`.
    RehydrationPending {
        /// The archived data blobs (the backup's, and the globals' when asked), comma-separated.
        blob: String,
        recheck_secs: u32,
    },
}

// ---- archived backups -----------------------------------------------------------------------------

/// How long a task waits between looks at a rehydrating blob.
pub const REHYDRATION_RECHECK_SECS: u32 = 30 * 60;
/// The longest a task waits for rehydration in total. Standard priority takes up to 15 hours;
/// after this the task fails with the reason.
pub const REHYDRATION_MAX_WAIT: time::Duration = time::Duration::hours(24);

/// What to do about a backup blob before restoring it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Availability {
    /// Readable now (any online tier, or a store without tiers).
    Online,
    /// Archived, no rehydration under way: start one (set tier Hot, standard priority).
    Rehydrate,
    /// Archived, rehydration under way: look again later.
    Pending,
    /// Waited longer than the bound: fail with this reason.
    GiveUp(String),
}

/// Pure: from a blob's properties (`None`: a store without tiers) and how long this task has
/// waited so far, what to do.
pub fn availability(
    props: Option<&crate::seams::store::BlobProps>,
    waited: Option<time::Duration>,
    max_wait: time::Duration,
) -> Availability {
    let Some(p) = props else { return Availability::Online };
    if p.tier != Some(crate::seams::store::Tier::Archive) {
        return Availability::Online;
    }
    if let Some(w) = waited
        && w > max_wait
    {
        return Availability::GiveUp(format!(
            "the backup is still in the archive tier after waiting {} h for rehydration (at most {} h); \
             check the blob's archive status, or rehydrate it (set tier hot) and submit the restore again",
            w.whole_hours(),
            max_wait.whole_hours()
        ));
    }
    match &p.archive_status {
        Some(s) if s.to_ascii_lowercase().starts_with("rehydrate-pending") => Availability::Pending,
        _ => Availability::Rehydrate,
    }
}

/// The data blobs a task reads (its backup, and the globals backup when asked) that are not
/// online, each with what to do about it: all of them, so that their rehydrations run at the same
/// time, not one after the other. Errors other than "no tiers" are left to the restore.
async fn check_archived(ctx: &Ctx, task: &RestoreTask, waited: Option<time::Duration>) -> Vec<(String, Availability)> {
    let store = ctx.store.as_ref();
    let mut offline = Vec::new();
    for id in std::iter::once(&task.backup).chain(task.globals.as_ref()) {
        let Ok(m) = catalog::manifest(store, id).await else { continue };
        let props = match store.properties(&m.data_blob).await {
            Ok(p) => Some(p),
            Err(e) if e.is_unsupported() => None,
            Err(e) => {
                tracing::warn!(blob = %m.data_blob, error = %e, "cannot read the backup's access tier; restoring anyway");
                None
            }
        };
        match availability(props.as_ref(), waited, REHYDRATION_MAX_WAIT) {
            Availability::Online => {}
            other => offline.push((m.data_blob, other)),
        }
    }
    offline
}

/// Start the rehydration of one archived blob. Another task may have started it a moment ago
/// (several tasks of a whole-server restore share one globals backup): the service then refuses
/// the second start (409 `BlobBeingRehydrated`), which is fine when the blob now says so.
async fn start_rehydration(ctx: &Ctx, task: &RestoreTask, blob: &str, waited: Option<time::Duration>) -> Result<()> {
    let store = ctx.store.as_ref();
    match store.set_tier(blob, crate::seams::store::Tier::Hot).await {
        Ok(()) => {
            tracing::info!(task = %task.task_id, blob = %blob, "backup is archived: rehydration to hot started (standard priority)");
            Ok(())
        }
        Err(e) => match store.properties(blob).await {
            Ok(p) if availability(Some(&p), waited, REHYDRATION_MAX_WAIT) == Availability::Pending => {
                tracing::info!(task = %task.task_id, blob = %blob, "rehydration was started meanwhile by another task");
                Ok(())
            }
            _ => Err(e.context(format!("start rehydration of backup {:?}", task.backup))),
        },
    }
}

/// Run one task and keep its job record (and its request's) up to date. `last_attempt` says
/// whether a transient failure will be retried by the host.
///
/// `delivery` says who runs it: one delivery at a time runs a task (see [`crate::features::claim`]);
/// another delivery of it meanwhile gets [`TaskOutcome::RunningElsewhere`].
pub async fn execute_task(
    ctx: &Ctx,
    task: &RestoreTask,
    last_attempt: bool,
    delivery: &crate::features::claim::Delivery,
) -> Result<TaskOutcome> {
    use crate::features::claim::{self, Claimed};
    task.validate()?;
    let store = ctx.store.as_ref();
    let now = OffsetDateTime::now_utc();
    let claim = match claim::acquire(store, "restore-task", &task.task_id, delivery, now).await? {
        Claimed::Owned(c) => c,
        Claimed::HeldBy(holder) => {
            // A holder whose run has ended (its record was written after it claimed, and says
            // it is not running) only failed to remove its claim: take it over.
            let ended = matches!(
                jobrecords::get(store, JobKind::RestoreTask, &task.task_id).await,
                Ok(Some(r)) if r.status != Status::Running && r.updated_at >= holder.since
            );
            match ended {
                true => match claim::take_over(store, "restore-task", &task.task_id, delivery, now).await? {
                    Claimed::Owned(c) => c,
                    Claimed::HeldBy(h) => return Ok(TaskOutcome::RunningElsewhere(h)),
                },
                false => {
                    tracing::info!(task = %task.task_id, holder = %holder.message_id, since = %ts(holder.since), "restore task is being run by another delivery; this one stands down");
                    return Ok(TaskOutcome::RunningElsewhere(holder));
                }
            }
        }
    };
    // Read under the claim: a delivery that finished released it only after writing its record.
    // A CLI run prints its own failure once; the error log line is for the host's runs.
    let interactive = delivery.lease.is_none();
    let outcome = execute_claimed(ctx, task, last_attempt, interactive, now).await;
    if let Err(e) = claim.release(store).await
        && matches!(outcome, Ok(TaskOutcome::RehydrationPending { .. }))
    {
        // The next look is another message. It would find the claim, and also this record
        // saying the run ended, so it would take over; but retrying this very message is
        // simpler and certain (a redelivery takes its own claim over).
        return Err(Error::transient(format!(
            "task {}: rehydration pending, but its claim could not be removed: {e}",
            task.task_id
        )));
    }
    outcome
}

async fn execute_claimed(
    ctx: &Ctx,
    task: &RestoreTask,
    last_attempt: bool,
    interactive: bool,
    now: OffsetDateTime,
) -> Result<TaskOutcome> {
    let store = ctx.store.as_ref();
    let mut rec = match jobrecords::get(store, JobKind::RestoreTask, &task.task_id).await {
        Ok(Some(r)) if r.status == Status::Succeeded => return Ok(TaskOutcome::AlreadyDone(Box::new(r))),
        Ok(Some(r)) => r,
        Ok(None) => {
            let mut r = JobRecord::new(JobKind::RestoreTask, &task.task_id, task.describe(), now);
            r.parent = Some(task.request_id.clone());
            r.requested_by = task.requested_by.clone();
            r
        }
        Err(e) => {
            tracing::warn!(task = %task.task_id, error = %e, "cannot read the task's job record; running it");
            JobRecord::new(JobKind::RestoreTask, &task.task_id, task.describe(), now)
        }
    };
    // An archived backup: start rehydration and come back later, within a bound.
    let rehydration_started =
        rec.detail["rehydration_started_at"].as_str().and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok());
    let waited = rehydration_started.map(|t| now - t);
    let offline = check_archived(ctx, task, waited).await;
    let gave_up = offline.iter().find_map(|(blob, a)| match a {
        Availability::GiveUp(why) => Some(Error::permanent(format!("backup {:?}, data {blob:?}: {why}", task.backup))),
        _ => None,
    });
    if gave_up.is_none() && !offline.is_empty() {
        for (blob, action) in &offline {
            if *action == Availability::Rehydrate {
                start_rehydration(ctx, task, blob, waited).await?;
            }
        }
        let blobs: Vec<&str> = offline.iter().map(|(b, _)| b.as_str()).collect();
        let started = rehydration_started.unwrap_or(now);
        rec.status = Status::RehydrationPending;
        rec.reason = Some(format!("rehydration pending: backup data {blobs:?} in the archive tier"));
        rec.updated_at = now;
        rec.detail = serde_json::json!({
            "task": task, "rehydration_started_at": ts(started), "blobs": blobs,
            "recheck_secs": REHYDRATION_RECHECK_SECS,
        });
        jobrecords::put_logged(store, &rec).await;
        update_request(ctx, &task.request_id).await;
        tracing::info!(task = %task.task_id, blobs = ?blobs, recheck_secs = REHYDRATION_RECHECK_SECS, "restore task waits for rehydration");
        return Ok(TaskOutcome::RehydrationPending { blob: blobs.join(", "), recheck_secs: REHYDRATION_RECHECK_SECS });
    }
    rec.start_attempt(now);
    rec.detail = serde_json::json!({ "task": task });
    jobrecords::put_logged(store, &rec).await;
    update_request(ctx, &task.request_id).await;
    tracing::info!(task = %task.task_id, what = %task.describe(), attempt = rec.attempts, "restore task started");

    let started = std::time::Instant::now();
    let result = match gave_up {
        Some(e) => Err(e),
        None => run_task(ctx, task).await,
    };
    let now = OffsetDateTime::now_utc();
    rec.updated_at = now;
    rec.finished_at = Some(now);
    let outcome = match result {
        Ok(mut report) => {
            report.seconds = started.elapsed().as_secs_f64();
            rec.status = Status::Succeeded;
            rec.bytes = Some(report.stored_bytes);
            rec.detail = serde_json::json!({ "task": task, "report": report });
            tracing::info!(
                task = %task.task_id, what = %task.describe(), stored_bytes = report.stored_bytes,
                raw_bytes = report.raw_bytes, seconds = report.seconds, "restore task succeeded"
            );
            Ok(TaskOutcome::Done(Box::new(report)))
        }
        Err(e) => {
            let will_retry = !e.is_permanent() && !last_attempt;
            rec.status = Status::Failed;
            rec.reason = Some(e.to_string());
            rec.detail = serde_json::json!({ "task": task, "will_retry": will_retry });
            if interactive {
                tracing::debug!(task = %task.task_id, will_retry, error = %e, "restore task failed");
            } else {
                tracing::error!(task = %task.task_id, what = %task.describe(), will_retry, error = %e, "restore task failed");
            }
            Err(e)
        }
    };
    jobrecords::put_logged(store, &rec).await;
    update_request(ctx, &task.request_id).await;
    outcome
}

/// Bring a request's record in line with its tasks: running while any runs, succeeded when all
/// succeeded, failed when all ended and one failed. Best effort (it is bookkeeping).
async fn update_request(ctx: &Ctx, request_id: &str) {
    let store = ctx.store.as_ref();
    let Ok(Some(mut req)) = jobrecords::get(store, JobKind::RestoreRequest, request_id).await else { return };
    let Ok(plan) = serde_json::from_value::<Plan>(req.detail["plan"].clone()) else { return };
    let mut states = Vec::new();
    let mut bytes = 0;
    for t in &plan.tasks {
        match jobrecords::get(store, JobKind::RestoreTask, &t.task_id).await {
            Ok(Some(r)) => {
                bytes += r.bytes.unwrap_or(0);
                states.push((r.status, r.detail["will_retry"] == true, r.reason));
            }
            _ => states.push((Status::Queued, false, None)),
        }
    }
    let finished = |s: &(Status, bool, Option<String>)| s.0 == Status::Succeeded || (s.0 == Status::Failed && !s.1);
    let now = OffsetDateTime::now_utc();
    let status = if states.iter().all(|s| s.0 == Status::Succeeded) {
        Status::Succeeded
    } else if states.iter().all(finished) {
        Status::Failed
    } else if states.iter().any(|s| s.0 != Status::Queued) {
        Status::Running
    } else {
        Status::Queued
    };
    if req.status == Status::Queued && status != Status::Queued {
        req.started_at = Some(now);
    }
    req.status = status;
    req.bytes = Some(bytes);
    req.updated_at = now;
    if matches!(status, Status::Succeeded | Status::Failed) {
        req.finished_at = Some(now);
    }
    req.reason = (status == Status::Failed).then(|| {
        let failed: Vec<String> = plan
            .tasks
            .iter()
            .zip(&states)
            .filter(|(_, s)| s.0 == Status::Failed)
            .map(|(t, s)| format!("task {}: {}", t.task_id, s.2.as_deref().unwrap_or("failed")))
            .collect();
        failed.join("; ")
    });
    jobrecords::put_logged(store, &req).await;
}

/// Run one task: export it, or restore (globals first when asked, then the database).
pub async fn run_task(ctx: &Ctx, task: &RestoreTask) -> Result<TaskReport> {
    task.validate()?;
    let m = catalog::manifest(ctx.store.as_ref(), &task.backup).await?;
    let mut report = TaskReport {
        task_id: task.task_id.clone(),
        backup: m.id.clone(),
        mode: task.target.mode.as_str().into(),
        stored_bytes: m.stored_bytes,
        raw_bytes: m.raw_bytes,
        ..Default::default()
    };
    match task.target.mode {
        Mode::AsFiles => {
            report.files = export(ctx, task, &m).await?;
        }
        Mode::Create | Mode::Replace => {
            if m.kind != BackupKind::Database {
                return Err(Error::permanent(format!(
                    "backup {:?} holds globals, not a database; restore it with options.globals",
                    m.id
                )));
            }
            // The globals are restored inside, once the temporary database exists: a target that
            // cannot create it (a missing locale) fails before any role is created.
            let (globals, database) = restore_database(ctx, task, &m).await?;
            report.globals = globals;
            report.database = Some(database);
        }
    }
    Ok(report)
}

// ---- the database pipeline --------------------------------------------------------------------

/// How a database is fed to pg_restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Blob -> verified blocks -> zstd -> pg_restore's stdin. No disk.
    Stream,
    /// Blob -> verified blocks -> zstd -> a local file -> `pg_restore --jobs=N file`.
    Parallel(u32),
}

/// Parallel only when asked for and the scratch disk keeps `reserve` bytes free after holding
/// the archive. Pure.
pub fn choose_method(jobs: u32, raw_bytes: u64, free: Option<u64>, reserve: u64) -> (Method, String) {
    if jobs <= 1 {
        return (Method::Stream, "jobs is 1: streamed from storage into pg_restore".into());
    }
    let Some(free) = free else {
        return (Method::Stream, "the scratch directory's free space is unknown: streamed with one job".into());
    };
    let need = raw_bytes.saturating_add(reserve);
    if free < need {
        return (
            Method::Stream,
            format!(
                "a parallel restore needs {need} bytes free in the scratch directory (archive {raw_bytes} + reserve \
                 {reserve}), it has {free}: streamed with one job"
            ),
        );
    }
    (
        Method::Parallel(jobs),
        format!(
            "the scratch directory has {free} bytes free: archive of {raw_bytes} bytes copied, pg_restore --jobs={jobs}"
        ),
    )
}

fn free_space(dir: &Path) -> Option<u64> {
    let s = rustix::fs::statvfs(dir).ok()?;
    Some(s.f_bavail.saturating_mul(s.f_frsize))
}

/// `<name>_pre_restore_<YYYYMMDD_HHMMSS>`, the name cut (at a character boundary) so the whole
/// stays within 63 bytes.
pub fn pre_restore_name(name: &str, at: OffsetDateTime) -> String {
    let fmt = time::macros::format_description!("[year][month][day]_[hour][minute][second]");
    let suffix = format!("{PRE_RESTORE_INFIX}{}", at.to_offset(time::UtcOffset::UTC).format(&fmt).expect("format"));
    let mut cut = MAX_IDENT_BYTES - suffix.len();
    while !name.is_char_boundary(cut.min(name.len())) {
        cut -= 1;
    }
    format!("{}{suffix}", &name[..cut.min(name.len())])
}

async fn db_exists(client: &tokio_postgres::Client, name: &str) -> Result<bool> {
    let n: i64 = client
        .query_one("SELECT count(*) FROM pg_database WHERE datname = $1", &[&name])
        .await
        .map_err(|e| pg::query_error(&format!("look up database {name:?}"), e))?
        .get(0);
    Ok(n > 0)
}

async fn sessions_on(client: &tokio_postgres::Client, name: &str) -> Result<i64> {
    Ok(client
        .query_one("SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()", &[&name])
        .await
        .map_err(|e| pg::query_error(&format!("count sessions on database {name:?}"), e))?
        .get(0))
}

/// Wait (with a deadline) until the backends of a finished pg_restore and of our own checks have
/// left the temporary database, so it can be renamed.
async fn wait_until_unused(client: &tokio_postgres::Client, name: &str) -> Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if sessions_on(client, name).await? == 0 {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(Error::transient(format!("sessions stayed on temporary database {name:?} for 30 s")));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn drop_temp(admin: &tokio_postgres::Client, temp: &str) -> std::result::Result<(), String> {
    // FORCE: only pgvault's own pg_restore can be connected to a temporary database.
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote_ident(temp)))
        .await
        .map_err(|e| redact(&pg::error_text(&e)))
}

/// The restoring login and what it may do, read before anything is touched.
struct Login {
    name: String,
    superuser: bool,
    createdb: bool,
    /// `SET` (16+) or `MEMBER` (older) is what `ALTER … OWNER TO` needs of the new owner.
    set_privilege: &'static str,
}

impl Login {
    async fn read(admin: &tokio_postgres::Client, version_num: u32) -> Result<Login> {
        let row = admin
            .query_one(
                "SELECT current_user::text, rolsuper, rolcreatedb FROM pg_roles WHERE rolname = current_user",
                &[],
            )
            .await
            .map_err(|e| pg::query_error("read the restoring role's attributes", e))?;
        Ok(Login {
            name: row.get(0),
            superuser: row.get(1),
            createdb: row.get(2),
            set_privilege: if pg::major_of(version_num) >= 16 { "SET" } else { "MEMBER" },
        })
    }

    /// Whether the login has `privilege` (`USAGE`: acts as the role; `SET`/`MEMBER`: may become
    /// it) in `role`.
    async fn has_role(&self, admin: &tokio_postgres::Client, role: &str, privilege: &str) -> Result<bool> {
        if self.superuser || role == self.name {
            return Ok(true);
        }
        admin
            .query_one("SELECT pg_has_role(current_user, $1::text::name, $2)", &[&role, &privilege])
            .await
            .map(|r| r.get(0))
            .map_err(|e| pg::query_error(&format!("check the restoring role's membership in {role:?}"), e))
    }
}

async fn role_exists(admin: &tokio_postgres::Client, role: &str) -> Result<bool> {
    let n: i64 = admin
        .query_one("SELECT count(*) FROM pg_roles WHERE rolname = $1", &[&role])
        .await
        .map_err(|e| pg::query_error(&format!("look up role {role:?}"), e))?
        .get(0);
    Ok(n > 0)
}

async fn owner_of(admin: &tokio_postgres::Client, database: &str) -> Result<Option<String>> {
    Ok(admin
        .query_opt("SELECT pg_get_userbyid(datdba)::text FROM pg_database WHERE datname = $1", &[&database])
        .await
        .map_err(|e| pg::query_error(&format!("read the owner of database {database:?}"), e))?
        .map(|r| r.get(0)))
}

/// Who the restored database belongs to, checked: the role exists (after the globals, which may
/// have created it) and the restoring login may give the database to it. Refused otherwise,
/// before pg_restore starts, with a HINT naming the ways out.
async fn choose_owner(
    admin: &tokio_postgres::Client,
    login: &Login,
    task: &RestoreTask,
    m: &Manifest,
    previous_owner: Option<&str>,
    server_name: &str,
) -> Result<dbprops::OwnerChoice> {
    use dbprops::OwnerChoice;
    let o = &task.options;
    let choice = match (&o.owner, o.no_owner, &m.database_properties, previous_owner) {
        (Some(r), _, _, _) => OwnerChoice::Mapped(r.clone()),
        (None, true, _, _) => OwnerChoice::NotApplied,
        (None, false, Some(p), _) => OwnerChoice::Backup(p.owner.clone()),
        (None, false, None, Some(prev)) => OwnerChoice::Previous(prev.to_string()),
        (None, false, None, None) => OwnerChoice::NotApplied,
    };
    let Some(role) = choice.role() else { return Ok(choice) };
    if let OwnerChoice::Mapped(_) = &choice
        && !role_exists(admin, role).await?
    {
        return Err(Error::permanent(format!("options.owner role {role:?} does not exist on server {server_name:?}")));
    }
    // pg_restore gives every object back to its owner (unless no_owner or owner says otherwise):
    // the login must be able to become each of them, or pg_restore would fail half-way.
    let mut owners = vec![role.to_string()];
    if let (OwnerChoice::Backup(_), Some(p)) = (&choice, &m.database_properties) {
        owners.extend(p.object_owners.iter().cloned());
    }
    let mut missing = Vec::new();
    let mut not_member = Vec::new();
    for r in &owners {
        if !role_exists(admin, r).await? {
            missing.push(r.clone());
        } else if !login.has_role(admin, r, login.set_privilege).await? {
            not_member.push(r.clone());
        }
    }
    if !missing.is_empty() {
        return Err(Error::permanent(format!(
            "objects of the backup's database belong to {}, which do not exist on server {server_name:?}",
            quoted_list(&missing)
        ))
        .with_hint(
            "restore the roles first (options.globals), give everything to an existing role (options.owner), or \
             restore with options.no_owner (everything then belongs to the restoring role)",
        ));
    }
    if !not_member.is_empty() {
        let me = &login.name;
        let grants: Vec<String> =
            not_member.iter().map(|r| format!("GRANT {} TO {};", quote_ident(r), quote_ident(me))).collect();
        let flags: Vec<String> = not_member.iter().map(|r| format!("--member-of {r}")).collect();
        return Err(Error::permanent(format!(
            "role {me:?} cannot give the restored database and its objects to {} on server {server_name:?}: it is \
             not a member of {}",
            quoted_list(&not_member),
            if not_member.len() == 1 { "that role" } else { "those roles" }
        ))
        .with_hint(format!(
            "{} (`pgvault grant-sql --restore --role {me} {}` prints it), or restore with options.no_owner \
             (everything then belongs to {me:?})",
            grants.join(" "),
            flags.join(" ")
        )));
    }
    Ok(choice)
}

fn quoted_list(items: &[String]) -> String {
    items.iter().map(|i| format!("{i:?}")).collect::<Vec<_>>().join(", ")
}

async fn restore_database(
    ctx: &Ctx,
    task: &RestoreTask,
    m: &Manifest,
) -> Result<(Option<GlobalsReport>, DatabaseReport)> {
    let settings = &ctx.settings;
    let server_name = task.target.server.as_deref().expect("validated");
    let target = task.target.database.as_deref().expect("validated");
    let server = settings.server(server_name).ok_or_else(|| crate::config::context::unknown_server(server_name))?;
    let admin_spec = ctx.conn_spec(server_name, &server.maintenance_db).await?;
    let mut admin = pg::connect(&admin_spec).await?;
    let (version, version_num) = pg::server_version(&admin).await?;
    let target_major = pg::major_of(version_num);
    let where_ = format!("database {target:?} on server {server_name:?}");
    if m.tool.major > target_major {
        return Err(Error::permanent(format!(
            "backup {:?} was made by pg_dump {}; server {server_name:?} runs PostgreSQL {target_major}: a logical \
             backup restores into the same or a newer major version only",
            m.id, m.tool.major
        )));
    }
    let tool =
        pg::pick_tool("pg_restore", &settings.bin_dirs_for(server), target_major, &format!("server {server_name:?}"))
            .await?;
    if tool.major > target_major && tool.major >= 17 && target_major < 17 {
        return Err(Error::permanent(format!(
            "the only pg_restore for server {server_name:?} (PostgreSQL {target_major}) is {} ({}), which sends \
             `SET transaction_timeout`, a setting PostgreSQL {target_major} rejects",
            tool.major,
            tool.path.display()
        ))
        .with_hint(format!("list PostgreSQL {target_major}'s bin directory in PGVAULT_PG_BIN_DIRS")));
    }
    let exists = db_exists(&admin, target).await?;
    let mode = task.target.mode;
    if mode == Mode::Create && exists {
        return Err(Error::permanent(format!("{where_} exists; mode create never touches an existing database"))
            .with_hint("use mode replace (the old database is kept), or another target database"));
    }
    if mode == Mode::Replace && target == server.maintenance_db {
        return Err(Error::permanent(format!(
            "{where_} is the server's maintenance database, which pgvault connects to: it cannot be replaced"
        ))
        .with_hint("restore it under another name, or set another maintenance_db in the inventory"));
    }
    // What the restoring login may do, before anything is touched.
    let login = Login::read(&admin, version_num).await?;
    if !login.superuser && !login.createdb {
        return Err(Error::permanent(format!(
            "role {:?} cannot restore into server {server_name:?}: it may not create databases (CREATEDB)",
            login.name
        ))
        .with_hint(format!("`pgvault grant-sql --restore --role {}` prints what the restore role needs", login.name)));
    }
    let previous_owner = if exists { owner_of(&admin, target).await? } else { None };
    if mode == Mode::Replace
        && let Some(owner) = &previous_owner
        && !login.has_role(&admin, owner, "USAGE").await?
    {
        let me = &login.name;
        return Err(Error::permanent(format!(
            "role {me:?} cannot replace {where_}: the database belongs to {owner:?}, and only its owner (or a member \
             of that role) may rename it out of the way"
        ))
        .with_hint(format!(
            "GRANT {} TO {} (`pgvault grant-sql --restore --role {me} --member-of {owner}` prints it), or restore with \
             mode create under another name",
            quote_ident(owner),
            quote_ident(me)
        )));
    }
    // Without globals to restore first, the owner's role must exist now: check before any work.
    let owner = match task.globals {
        None => Some(choose_owner(&admin, &login, task, m, previous_owner.as_deref(), server_name).await?),
        Some(_) => None,
    };
    // The temporary database has the source's encoding and locale. A target that cannot make
    // it fails here, before anything is touched.
    let props = m.database_properties.as_ref();
    let locale = match props {
        Some(p) if !task.options.default_locale => {
            let default_locale_hint = format!(
                "install the locale on server {server_name:?}, or restore with options.default_locale to create the \
                 database with the server's default encoding and locale instead (text then sorts and compares by \
                 the target's rules, not the source's)"
            );
            let clauses = dbprops::create_clauses(p, target_major)
                .map_err(|e| e.context(format!("server {server_name:?}")).with_hint(&default_locale_hint))?;
            Some((clauses, p.describe_locale(), default_locale_hint))
        }
        _ => None,
    };
    if target_major >= 16 && props.is_some_and(|p| p.locale_provider == dbprops::LocaleProvider::Icu) {
        // An ICU locale the target's ICU does not know must fail, not fall back to root rules.
        admin
            .batch_execute("SET icu_validation_level = error")
            .await
            .map_err(|e| pg::query_error("set icu_validation_level", e))?;
    }
    let jobs = task.options.jobs.unwrap_or(1);
    let (method, method_reason) =
        choose_method(jobs, m.raw_bytes, free_space(&settings.restore_scratch_dir), settings.restore_scratch_reserve);
    let temp = format!("{TEMP_DB_PREFIX}{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let create = format!(
        "CREATE DATABASE {} TEMPLATE template0{}",
        quote_ident(&temp),
        locale.as_ref().map(|l| l.0.as_str()).unwrap_or("")
    );
    if let Err(e) = admin.batch_execute(&create).await {
        let what = format!("create temporary database {temp:?} on server {server_name:?}");
        return Err(match (&locale, e.as_db_error()) {
            (Some((_, described, hint)), Some(db)) => Error::permanent(format!(
                "server {server_name:?} cannot create a database like the backup's ({described}): {}",
                redact(db.message())
            ))
            .with_hint(hint),
            _ => pg::query_error(&what, e),
        });
    }
    tracing::info!(task = %task.task_id, backup = %m.id, temp = %temp, target = %target, method = ?method, "restoring into a temporary database");

    let mut report = DatabaseReport {
        server: server_name.into(),
        database: target.into(),
        temp_database: temp.clone(),
        method: match method {
            Method::Stream => "stream".into(),
            Method::Parallel(_) => "parallel".into(),
        },
        method_reason,
        pg_restore: tool.version.clone(),
        target_version: version,
        ..Default::default()
    };
    let temp_spec = admin_spec.with_db(&temp);
    let restored = async {
        // Closed while it is restored, and if it is kept after a failed swap: the privileges the
        // database ends up with are set in the swap transaction.
        admin
            .batch_execute(&format!("REVOKE ALL ON DATABASE {} FROM PUBLIC", quote_ident(&temp)))
            .await
            .map_err(|e| pg::query_error(&format!("close temporary database {temp:?}"), e))?;
        // The locale as the target stored it (newer servers canonicalize ICU locale names).
        let stored = match props {
            Some(_) if locale.is_some() => Some(pg::database_properties(&admin, &temp, version_num).await?),
            _ => None,
        };
        let globals = match &task.globals {
            Some(g) => Some(restore_globals(ctx, server_name, g).await?),
            None => None,
        };
        let owner = match owner {
            Some(o) => o,
            // The globals may have created the owner: check now.
            None => choose_owner(&admin, &login, task, m, previous_owner.as_deref(), server_name).await?,
        };
        let mut args = vec![format!("--dbname={temp}"), "--no-password".to_string(), "--exit-on-error".to_string()];
        if task.options.no_owner || task.options.owner.is_some() {
            args.push("--no-owner".into());
        }
        if let Some(owner) = &task.options.owner {
            args.push(format!("--role={owner}"));
        }
        if task.options.no_privileges {
            args.push("--no-privileges".into());
        }
        feed_pg_restore(ctx, m, &tool.path, &temp_spec, args, method).await?;
        let checked = check_row_counts(&temp_spec, m).await?;
        wait_until_unused(&admin, &temp).await?;
        Ok::<_, Error>((globals, owner, checked, stored))
    }
    .await;
    let (globals, owner, stored) = match restored {
        Ok((globals, owner, n, stored)) => {
            report.tables_checked = n;
            (globals, owner, stored)
        }
        Err(e) => {
            let dropped = drop_temp(&admin, &temp).await;
            let note = match dropped {
                Ok(()) => format!("temporary database {temp:?} dropped; {where_} untouched"),
                Err(d) => format!("dropping temporary database {temp:?} failed too ({d}); drop it by hand"),
            };
            // Name the backup once: many reasons (a corrupt block, say) name it already.
            let what = if e.message().contains(&m.id) {
                format!("restore into {where_} ({note})")
            } else {
                format!("restore backup {:?} into {where_} ({note})", m.id)
            };
            return Err(e.context(what));
        }
    };
    if m.row_counts.as_ref().is_none_or(|r| r.method != "exact") {
        report.notes.push("the manifest has no exact row counts: row counts were not compared".into());
    }
    if let (Some(p), Some(s)) = (props, &stored)
        && p.locale != s.locale
    {
        report.notes.push(format!(
            "the ICU locale {:?} is stored as {:?} by PostgreSQL {target_major}",
            p.locale.as_deref().unwrap_or(""),
            s.locale.as_deref().unwrap_or("")
        ));
    }

    // Put it in place: the properties, the owner and both renames in one transaction, checked
    // before it commits. The target name never points at nothing, and a failure changes nothing.
    let now = OffsetDateTime::now_utc();
    let previous = (mode == Mode::Replace && exists).then(|| pre_restore_name(target, now));
    if let Some(p) = &previous
        && db_exists(&admin, p).await?
    {
        return Err(swap_failed(
            &where_,
            &temp,
            &format!("database {p:?} (the name for the old copy) exists"),
            None,
            &[],
        ));
    }
    let facts = dbprops::TargetFacts {
        restorer: login.name.clone(),
        roles: admin
            .query("SELECT rolname::text FROM pg_roles", &[])
            .await
            .map_err(|e| pg::query_error("list the target's roles", e))?
            .iter()
            .map(|r| r.get(0))
            .collect(),
    };
    // A backup that records no properties (made before pgvault recorded them): in replace, the
    // replaced database's privileges, settings and comment are the best there is.
    let fallback = match (props, exists) {
        (None, true) => Some(pg::database_properties(&admin, target, version_num).await?),
        _ => None,
    };
    let applied_props = props.or(fallback.as_ref());
    let plan = match applied_props {
        Some(p) => dbprops::plan_apply(p, &temp, target, &owner, task.options.no_privileges, &facts),
        None => {
            // Nothing to go by: the owner as chosen, and the default privileges back.
            let mut plan =
                dbprops::ApplyPlan { owner: dbprops::owner_step(&owner, None, target), ..Default::default() };
            let defaults = dbprops::DatabaseProperties {
                owner: owner.role().unwrap_or(&login.name).to_string(),
                ..dbprops::DatabaseProperties::empty()
            };
            let p = dbprops::plan_apply(&defaults, &temp, target, &dbprops::OwnerChoice::NotApplied, true, &facts);
            plan.acl_role = owner.role().filter(|r| *r != login.name).map(String::from);
            plan.acl = p.acl;
            plan.expect_acl = dbprops::default_privileges(owner.role().unwrap_or(&login.name));
            plan
        }
    };
    let mut props_report = dbprops::PropertiesReport { skipped: plan.skipped.clone(), ..Default::default() };
    let mut renames = Vec::new();
    if let Some(p) = &previous {
        renames.push(format!("ALTER DATABASE {} RENAME TO {}", quote_ident(target), quote_ident(p)));
    }
    renames.push(format!("ALTER DATABASE {} RENAME TO {}", quote_ident(&temp), quote_ident(target)));
    let finish = plan.sql(&renames);
    let tx = admin.transaction().await.map_err(|e| pg::query_error("begin the swap transaction", e))?;
    let swapped = async {
        let mut tx = tx;
        let sql_err = |e: tokio_postgres::Error| (redact(&pg::error_text(&e)), Some(e));
        let mut applied_checks = Vec::new();
        for step in &plan.steps {
            let sp = tx.savepoint("pgvault_property").await.map_err(sql_err)?;
            match sp.batch_execute(&step.sql).await {
                Ok(()) => {
                    sp.commit().await.map_err(sql_err)?;
                    applied_checks.push(&step.check);
                    props_report.applied.push(step.what.clone());
                }
                Err(e) => {
                    let mut reason = redact(&pg::error_text(&e));
                    if let dbprops::Check::Setting(s) = &step.check
                        && e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE)
                    {
                        reason.push_str(&format!(
                            " (on PostgreSQL 15+ an admin may `GRANT SET ON PARAMETER {} TO {}`)",
                            s.name,
                            quote_ident(&login.name)
                        ));
                    }
                    sp.rollback().await.map_err(sql_err)?;
                    props_report.skipped.push(dbprops::Skipped { what: step.what.clone(), reason });
                }
            }
        }
        for sql in &renames {
            tx.batch_execute(sql).await.map_err(|e| (rename_error(&e), Some(e)))?;
        }
        if let Some(step) = &plan.owner {
            tx.batch_execute(&step.sql).await.map_err(|e| (step_error(&step.what, &e), Some(e)))?;
            props_report.applied.push(step.what.clone());
        }
        // The privileges as the owner: its grants, with itself as grantor, as in the source.
        if let Some(r) = &plan.acl_role {
            tx.batch_execute(&format!("SET LOCAL ROLE {}", quote_ident(r))).await.map_err(sql_err)?;
        }
        for step in &plan.acl {
            tx.batch_execute(&step.sql).await.map_err(|e| (step_error(&step.what, &e), Some(e)))?;
            props_report.applied.push(step.what.clone());
        }
        if plan.acl_role.is_some() {
            tx.batch_execute("RESET ROLE").await.map_err(sql_err)?;
        }
        let actual = pg::database_properties(&tx, target, version_num).await.map_err(|e| (e.to_string(), None))?;
        let expected_owner = owner.role().unwrap_or(&login.name);
        let empty = dbprops::DatabaseProperties::empty();
        let diffs = dbprops::compare(
            applied_props.unwrap_or(&empty),
            stored.as_ref(),
            &plan,
            &applied_checks,
            expected_owner,
            &actual,
        );
        if !diffs.is_empty() {
            return Err((format!("the database's properties did not come out as planned: {}", diffs.join("; ")), None));
        }
        props_report.checked = true;
        tx.commit().await.map_err(sql_err)?;
        Ok::<_, (String, Option<tokio_postgres::Error>)>(())
    }
    .await;
    if let Err((why, e)) = swapped {
        // Dropping the transaction rolled it back; nothing was renamed.
        return Err(swap_failed(&where_, &temp, &why, e.as_ref(), &finish));
    }
    report.previous_kept_as = previous.clone();
    if mode == Mode::Replace && !exists {
        report.notes.push(format!("{where_} did not exist: nothing was replaced"));
    }
    if let Some(p) = &previous {
        report.notes.push(format!("the old database is kept as {p:?}, with its own properties"));
    }
    match (props, &locale, &fallback) {
        (None, _, Some(_)) => report.notes.push(
            "the backup's manifest does not record the database's own properties (it was made before pgvault \
             recorded them): the encoding and locale are the target server's defaults, and the owner, privileges, \
             settings and comment are the replaced database's"
                .into(),
        ),
        (None, _, None) => report.notes.push(
            "the backup's manifest does not record the database's own properties (it was made before pgvault \
             recorded them): the encoding and locale are the target server's defaults, the database belongs to the \
             restoring role (or options.owner), and it has the default privileges, no settings and no comment"
                .into(),
        ),
        (Some(p), None, _) => props_report.skipped.insert(
            0,
            dbprops::Skipped {
                what: format!("encoding and locale ({})", p.describe_locale()),
                reason: "not applied: default_locale was asked for (the target server's defaults)".into(),
            },
        ),
        (Some(p), Some(_), _) => props_report.applied.insert(0, p.describe_locale()),
    }
    report.properties = Some(props_report);
    tracing::info!(task = %task.task_id, backup = %m.id, target = %target, previous = ?previous, "restored database is in place");
    Ok((globals, report))
}

/// A required property step failed: name the step and the server's reason.
fn step_error(what: &str, e: &tokio_postgres::Error) -> String {
    format!("applying the backup's {what} failed: {}", redact(&pg::error_text(e)))
}

fn rename_error(e: &tokio_postgres::Error) -> String {
    let mut why = redact(&pg::error_text(e));
    if let Some(db) = e.as_db_error()
        && let Some(detail) = db.detail()
    {
        why.push_str(&format!(" ({detail})"));
    }
    why
}

/// The copy was restored and verified but could not be put in place. The HINT follows the
/// cause: sessions on the old database, a missing privilege, or anything else.
fn swap_failed(where_: &str, temp: &str, why: &str, cause: Option<&tokio_postgres::Error>, finish: &[String]) -> Error {
    use tokio_postgres::error::SqlState;
    let code = cause.and_then(|e| e.code());
    let first = if code == Some(&SqlState::OBJECT_IN_USE) {
        "end the sessions that hold the database"
    } else if code == Some(&SqlState::INSUFFICIENT_PRIVILEGE) {
        "grant the restoring role the privilege the reason names"
    } else {
        "fix the cause"
    };
    // Renaming the copy alone would give a database without the backup's owner, privileges and
    // settings (it is closed to PUBLIC meanwhile): the whole swap, as pgvault would have run it.
    let finish = if finish.is_empty() {
        format!("rename {temp:?}")
    } else {
        format!("run in one transaction: BEGIN; {}; COMMIT;", finish.join("; "))
    };
    Error::permanent(format!(
        "the backup was restored and verified, but could not be put in place as {where_}: {why}; the restored copy \
         is kept as database {temp:?}"
    ))
    .with_hint(format!(
        "{first}, then finish by hand ({finish}), or drop {temp:?} and post the request again with a new request_id"
    ))
}

/// Keep the last 64 KiB of a tool's stderr.
async fn collect_stderr(mut stderr: tokio::process::ChildStderr) -> String {
    use tokio::io::AsyncReadExt;
    const KEEP: usize = 64 * 1024;
    let mut kept = Vec::new();
    let mut buf = vec![0u8; 8192];
    while let Ok(n) = stderr.read(&mut buf).await {
        if n == 0 {
            break;
        }
        kept.extend_from_slice(&buf[..n]);
        if kept.len() > 2 * KEEP {
            kept.drain(..kept.len() - KEEP);
        }
    }
    if kept.len() > KEEP {
        kept.drain(..kept.len() - KEEP);
    }
    String::from_utf8_lossy(&kept).into_owned()
}

fn pg_restore_command(tool: &Path, spec: &ConnSpec, args: &[String]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(tool);
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("LANG", "C.UTF-8")
        .envs(spec.tool_env())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// Wait for a tool, killing it if the shutdown token fires.
async fn wait_or_kill(ctx: &Ctx, child: &mut tokio::process::Child) -> Result<std::process::ExitStatus> {
    tokio::select! {
        s = child.wait() => s.map_err(|e| Error::transient(format!("wait for pg_restore: {e}"))),
        _ = ctx.cancel.cancelled() => {
            let _ = child.kill().await;
            Err(Error::transient("restore cancelled by shutdown"))
        }
    }
}

/// pg_restore's verdict: exit 0 and no error line.
fn pg_restore_verdict(status: std::process::ExitStatus, stderr: &str) -> Result<()> {
    use std::os::unix::process::ExitStatusExt;
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("error:") || l.contains("FATAL:")).collect();
    if status.success() && errors.is_empty() {
        return Ok(());
    }
    let detail = redact(if errors.is_empty() { stderr.trim().to_string() } else { errors.join("\n") }.trim());
    if let Some(sig) = status.signal() {
        return Err(Error::transient(format!("pg_restore was killed by signal {sig}: {detail}")));
    }
    let text = format!("pg_restore failed ({status}): {detail}");
    let lower = detail.to_ascii_lowercase();
    if ["could not connect", "server closed the connection", "terminating connection", "connection to server"]
        .iter()
        .any(|p| lower.contains(p))
    {
        return Err(Error::transient(text));
    }
    let e = Error::permanent(text);
    Err(if lower.contains("role") && lower.contains("does not exist") {
        e.with_hint("restore the roles first (options.globals), or restore with options.no_owner / options.owner")
    } else if ["must be member of role", "must be able to set role", "permission denied to set role"]
        .iter()
        .any(|p| lower.contains(p))
    {
        // Objects in the archive belong to a role the restoring login may not become.
        e.with_hint(
            "make the restoring role a member of the objects' owner (`pgvault grant-sql --restore --role <restore \
             role> --member-of <owner>`), or restore with options.no_owner / options.owner",
        )
    } else if lower.contains("permission denied for schema") || lower.contains("permission denied for database") {
        // A non-superuser pg_restore gives each object its owner as it creates it, and PostgreSQL
        // then wants that owner to hold CREATE on the schema (or database) already; the archive
        // grants it only later, with the other privileges.
        e.with_hint(
            "an object's owner lacks CREATE on its schema while pg_restore gives it the object (the archive grants \
             it later): restore with options.no_owner, or as an admin role",
        )
    } else {
        e
    })
}

/// Open a backup's data for reading, with progress (bytes as stored, rate, elapsed, time left
/// against the manifest's stored size) logged at the steady interval of `ctx.progress`, or a bar
/// on a terminal. The final line is logged when the stream ends.
async fn read_with_progress(ctx: &Ctx, m: &Manifest, what: &str) -> Result<crate::seams::store::ByteStream> {
    let stream = ctx.store.read(&m.data_blob).await.map_err(|e| e.context(format!("read backup {:?}", m.id)))?;
    let progress =
        crate::seams::progress::Progress::start(ctx.progress, format!("{what} {}", m.id), Some(m.stored_bytes));
    Ok(with_progress(stream, progress))
}

/// Count a stream's bytes into `progress`, and finish it when the stream ends.
fn with_progress(
    stream: crate::seams::store::ByteStream,
    progress: crate::seams::progress::Progress,
) -> crate::seams::store::ByteStream {
    use futures::StreamExt;
    let end = progress.clone();
    stream
        .inspect(move |r| {
            if let Ok(b) = r {
                progress.add(b.len() as u64);
            }
        })
        .chain(
            futures::stream::once(async move {
                end.finish();
                None
            })
            .filter_map(futures::future::ready),
        )
        .boxed()
}

/// Read the backup through the verified reader, decompress, and restore into the temporary
/// database, streaming or (parallel) from a local copy.
async fn feed_pg_restore(
    ctx: &Ctx,
    m: &Manifest,
    tool: &Path,
    spec: &ConnSpec,
    mut args: Vec<String>,
    method: Method,
) -> Result<()> {
    let stream = read_with_progress(ctx, m, "restore").await?;
    let (tx, rx) = mpsc::channel::<Bytes>(2);
    let compression = m.compression;
    let raw = match method {
        Method::Stream => {
            let mut child = pg_restore_command(tool, spec, &args)
                .stdin(Stdio::piped())
                .spawn()
                .map_err(|e| Error::permanent(format!("start {}: {e}", tool.display())))?;
            let stdin = std::fs::File::from(
                child
                    .stdin
                    .take()
                    .expect("piped")
                    .into_owned_fd()
                    .map_err(|e| Error::transient(format!("pg_restore stdin: {e}")))?,
            );
            let stderr = tokio::spawn(collect_stderr(child.stderr.take().expect("piped")));
            let consumer = tokio::task::spawn_blocking(move || catalog::feed(rx, compression, stdin, false));
            let (pumped, fed, status) =
                tokio::join!(catalog::verified_blocks(m, stream, tx), consumer, wait_or_kill(ctx, &mut child));
            let stderr = stderr.await.unwrap_or_default();
            // Precedence: shutdown, then corruption (pg_restore saw only verified bytes and then
            // an early end), then pg_restore's own failure, then reading errors.
            let status = status?;
            if let Err(e) = &pumped
                && e.is_permanent()
            {
                return Err(pumped.expect_err("checked"));
            }
            pg_restore_verdict(status, &stderr)?;
            pumped?;
            fed.map_err(|e| Error::transient(format!("restore stream task failed: {e}")))?
                .map_err(|e| Error::permanent(format!("backup {:?}: decompress into pg_restore: {e}", m.id)))?
        }
        Method::Parallel(jobs) => {
            let path = ctx
                .settings
                .restore_scratch_dir
                .join(format!("pgvault-restore-{}.dump", &uuid::Uuid::new_v4().simple().to_string()[..12]));
            let file = ScratchFile::create(&path)?;
            let out = file.file.try_clone().map_err(|e| Error::transient(format!("scratch file: {e}")))?;
            let consumer = tokio::task::spawn_blocking(move || {
                let mut w = std::io::BufWriter::with_capacity(1 << 20, out);
                let n = catalog::feed(rx, compression, &mut w, false)?;
                std::io::Write::flush(&mut w)?;
                Ok::<_, std::io::Error>(n)
            });
            let (pumped, fed) = tokio::join!(catalog::verified_blocks(m, stream, tx), consumer);
            let fed = fed.map_err(|e| Error::transient(format!("restore download task failed: {e}")))?;
            // Corruption first; then a failed write (which stops the reader, so its own error
            // would only say that the consumer stopped); then reading errors.
            let raw = match (pumped, fed) {
                (Err(e), _) if e.is_permanent() => return Err(e),
                (_, Err(e)) => {
                    return Err(Error::transient(format!("write scratch file {}: {e}", path.display())));
                }
                (Err(e), _) => return Err(e),
                (Ok(_), Ok(raw)) => raw,
            };
            args.push(format!("--jobs={jobs}"));
            args.push(path.display().to_string());
            let mut child = pg_restore_command(tool, spec, &args)
                .stdin(Stdio::null())
                .spawn()
                .map_err(|e| Error::permanent(format!("start {}: {e}", tool.display())))?;
            let stderr = tokio::spawn(collect_stderr(child.stderr.take().expect("piped")));
            let status = wait_or_kill(ctx, &mut child).await?;
            let stderr = stderr.await.unwrap_or_default();
            drop(file);
            pg_restore_verdict(status, &stderr)?;
            raw
        }
    };
    if raw != m.raw_bytes {
        return Err(Error::permanent(format!(
            "backup {:?} decompresses to {raw} bytes, the manifest says {}",
            m.id, m.raw_bytes
        )));
    }
    Ok(())
}

/// A scratch file readable only by us, removed when dropped.
struct ScratchFile {
    path: PathBuf,
    file: std::fs::File,
}

impl ScratchFile {
    fn create(path: &Path) -> Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| Error::transient(format!("create scratch file {}: {e}", path.display())))?;
        Ok(Self { path: path.to_path_buf(), file })
    }
}

impl Drop for ScratchFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// With exact counts in the manifest, every table must have exactly as many rows.
async fn check_row_counts(spec: &ConnSpec, m: &Manifest) -> Result<usize> {
    let Some(counts) = m.row_counts.as_ref().filter(|r| r.method == "exact") else { return Ok(0) };
    let client = pg::connect(spec).await?;
    for t in &counts.tables {
        let sql = format!("SELECT count(*) FROM {}.{}", quote_ident(&t.schema), quote_ident(&t.table));
        let rows: i64 = client
            .query_one(&sql, &[])
            .await
            .map_err(|e| {
                Error::permanent(format!(
                    "check restored table {}.{}: {}",
                    quote_ident(&t.schema),
                    quote_ident(&t.table),
                    redact(&pg::error_text(&e))
                ))
            })?
            .get(0);
        if rows != t.rows {
            return Err(Error::permanent(format!(
                "restored table {}.{} has {rows} rows, the backup's manifest says {}",
                quote_ident(&t.schema),
                quote_ident(&t.table),
                t.rows
            )));
        }
    }
    Ok(counts.tables.len())
}

// ---- globals ----------------------------------------------------------------------------------

/// A statement of a `pg_dumpall --globals-only` script, as far as restoring it is concerned.
#[derive(Debug, PartialEq, Eq)]
enum GlobalStmt {
    /// `SET ...`: session settings of the script.
    Session,
    CreateRole(String),
    /// `ALTER ROLE r ...`, `COMMENT ON ROLE r ...`: about one role.
    AboutRole(String),
    /// `GRANT a TO r ...`: a membership of role r.
    Membership(String),
    Tablespace,
    Other,
}

/// Parse an identifier at the start of `s` (quoted or not); returns it and the rest.
fn parse_ident(s: &str) -> Option<(String, &str)> {
    let s = s.trim_start();
    if let Some(rest) = s.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = rest.char_indices();
        while let Some((i, c)) = chars.next() {
            if c == '"' {
                if rest[i + 1..].starts_with('"') {
                    out.push('"');
                    chars.next();
                } else {
                    return Some((out, &rest[i + 1..]));
                }
            } else {
                out.push(c);
            }
        }
        None
    } else {
        let end = s.find(|c: char| c.is_whitespace() || c == ';' || c == ',').unwrap_or(s.len());
        (end > 0).then(|| (s[..end].to_string(), &s[end..]))
    }
}

fn classify(stmt: &str) -> GlobalStmt {
    let upper = stmt.to_ascii_uppercase();
    let after = |p: &str| stmt.get(p.len()..).unwrap_or("");
    if upper.starts_with("SET ") {
        GlobalStmt::Session
    } else if upper.starts_with("CREATE ROLE ") {
        parse_ident(after("CREATE ROLE ")).map_or(GlobalStmt::Other, |(r, _)| GlobalStmt::CreateRole(r))
    } else if upper.starts_with("ALTER ROLE ") {
        parse_ident(after("ALTER ROLE ")).map_or(GlobalStmt::Other, |(r, _)| GlobalStmt::AboutRole(r))
    } else if upper.starts_with("COMMENT ON ROLE ") {
        parse_ident(after("COMMENT ON ROLE ")).map_or(GlobalStmt::Other, |(r, _)| GlobalStmt::AboutRole(r))
    } else if upper.contains("TABLESPACE") {
        GlobalStmt::Tablespace
    } else if upper.starts_with("GRANT ") && !upper.contains(" ON ") {
        // GRANT a, b TO r [WITH ...] [GRANTED BY g]
        let mut rest = after("GRANT ");
        loop {
            let Some((_, r)) = parse_ident(rest) else { return GlobalStmt::Other };
            let r = r.trim_start();
            if let Some(r) = r.strip_prefix(',') {
                rest = r;
                continue;
            }
            return match r.get(..3).map(|p| p.eq_ignore_ascii_case("TO ")) {
                Some(true) => parse_ident(&r[3..]).map_or(GlobalStmt::Other, |(m, _)| GlobalStmt::Membership(m)),
                _ => GlobalStmt::Other,
            };
        }
    } else {
        GlobalStmt::Other
    }
}

/// Split a psql script into statements: `;` at the end of a line outside quotes ends one;
/// comment lines and psql meta-commands (`\restrict`) are dropped.
fn split_statements(script: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let (mut in_single, mut in_double) = (false, false);
    for line in script.lines() {
        if cur.is_empty() && (line.starts_with("--") || line.starts_with('\\') || line.trim().is_empty()) {
            continue;
        }
        for c in line.chars() {
            match c {
                '\'' if !in_double => in_single = !in_single,
                '"' if !in_single => in_double = !in_double,
                _ => {}
            }
        }
        if !cur.is_empty() {
            cur.push('\n');
        }
        cur.push_str(line);
        if !in_single && !in_double && line.trim_end().ends_with(';') {
            out.push(std::mem::take(&mut cur));
        }
    }
    if !cur.trim().is_empty() {
        out.push(cur);
    }
    out
}

/// Restore the roles of a globals backup into a server: create the roles it lacks (with their
/// attributes, settings, comments and memberships); leave existing roles exactly as they are.
pub async fn restore_globals(ctx: &Ctx, server_name: &str, id: &str) -> Result<GlobalsReport> {
    let m = catalog::manifest(ctx.store.as_ref(), id).await?;
    if m.kind != BackupKind::Globals {
        return Err(Error::permanent(format!("backup {id:?} is not a globals backup")));
    }
    let server = ctx.settings.server(server_name).ok_or_else(|| crate::config::context::unknown_server(server_name))?;
    let stream = read_with_progress(ctx, &m, "restore globals").await?;
    let (tx, rx) = mpsc::channel::<Bytes>(2);
    let compression = m.compression;
    let consumer = tokio::task::spawn_blocking(move || {
        let mut buf = Vec::new();
        catalog::feed(rx, compression, &mut buf, false).map(|_| buf)
    });
    let (pumped, fed) = tokio::join!(catalog::verified_blocks(&m, stream, tx), consumer);
    pumped?;
    let script = fed
        .map_err(|e| Error::transient(format!("read globals task failed: {e}")))?
        .map_err(|e| Error::permanent(format!("backup {id:?}: decompress: {e}")))?;
    if script.len() > MAX_GLOBALS_BYTES
        || !String::from_utf8_lossy(&script).contains("PostgreSQL database cluster dump")
    {
        return Err(Error::permanent(format!("backup {id:?} is not a pg_dumpall globals script")));
    }
    let script = String::from_utf8(script).map_err(|_| Error::permanent(format!("backup {id:?} is not UTF-8")))?;

    let spec = ctx.conn_spec(server_name, &server.maintenance_db).await?;
    let client = pg::connect(&spec).await?;
    let existing: std::collections::HashSet<String> = client
        .query("SELECT rolname FROM pg_roles", &[])
        .await
        .map_err(|e| pg::query_error("list roles", e))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut report = GlobalsReport { backup: m.id.clone(), ..Default::default() };
    let short = |s: &str| s.lines().next().unwrap_or("").chars().take(120).collect::<String>();
    for stmt in split_statements(&script) {
        let kind = classify(&stmt);
        let apply = match &kind {
            GlobalStmt::Session => true,
            GlobalStmt::CreateRole(r) => {
                if existing.contains(r) {
                    report.skipped.push(r.clone());
                    false
                } else {
                    true
                }
            }
            GlobalStmt::AboutRole(r) | GlobalStmt::Membership(r) => report.created.contains(r),
            GlobalStmt::Tablespace => {
                report.not_applied.push(format!("{} (tablespaces are server-specific)", short(&stmt)));
                false
            }
            GlobalStmt::Other => {
                report.not_applied.push(format!("{} (not a role statement)", short(&stmt)));
                false
            }
        };
        if !apply {
            continue;
        }
        match client.batch_execute(&stmt).await {
            Ok(()) => {
                if let GlobalStmt::CreateRole(r) = &kind {
                    report.created.push(r.clone());
                }
            }
            Err(e) if matches!(kind, GlobalStmt::CreateRole(_)) => {
                let GlobalStmt::CreateRole(r) = kind else { unreachable!() };
                if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_OBJECT) {
                    // Created meanwhile (another task of the same request).
                    report.skipped.push(r);
                    continue;
                }
                return Err(Error::permanent(format!(
                    "restore globals {id:?} into server {server_name:?}: create role {r:?}: {}",
                    redact(&pg::error_text(&e))
                )));
            }
            Err(e) => report.not_applied.push(format!("{}: {}", short(&stmt), redact(&pg::error_text(&e)))),
        }
    }
    tracing::info!(
        server = %server_name, backup = %id, created = ?report.created, skipped = ?report.skipped,
        not_applied = report.not_applied.len(), "globals restored"
    );
    Ok(report)
}

// ---- as files ---------------------------------------------------------------------------------

/// Copy a backup (verified block by block on the way) and its manifest into the target
/// container, and sign a read-only URL for each.
async fn export(ctx: &Ctx, task: &RestoreTask, m: &Manifest) -> Result<Vec<ExportedFile>> {
    let exporter = ctx.store.file_export().ok_or_else(|| {
        Error::permanent("mode as-files needs Azure storage: the local store cannot sign read-only URLs")
            .with_hint("set PGVAULT_STORAGE=azure")
    })?;
    let container = task.target.container.as_deref().expect("validated");
    let prefix = normalize_prefix(task.target.prefix.as_deref().unwrap_or(""))?;
    let secs = task.target.expires_in_seconds.unwrap_or(DEFAULT_EXPIRY_SECS).clamp(MIN_EXPIRY_SECS, MAX_EXPIRY_SECS);
    let dest = exporter.container(container).await?;
    let data_name = format!("{prefix}{}", m.data_blob);
    let manifest_blob = layout::manifest_for_id(&m.id);
    let manifest_name = format!("{prefix}{manifest_blob}");

    // The copy keeps the block structure, so the manifest's block hashes describe it too.
    let stream = read_with_progress(ctx, m, "export").await?;
    let (tx, mut rx) = mpsc::channel::<Bytes>(1);
    let (itx, irx) = mpsc::channel::<(usize, Bytes)>(1);
    let forward = async move {
        let mut i = 0;
        while let Some(b) = rx.recv().await {
            if itx.send((i, b)).await.is_err() {
                break;
            }
            i += 1;
        }
    };
    let upload =
        backup::upload_blocks(dest.clone(), data_name.clone(), irx, ctx.settings.blocks_in_flight, ctx.cancel.clone());
    let (pumped, (), uploaded) = tokio::join!(catalog::verified_blocks(m, stream, tx), forward, upload);
    pumped?;
    let staged = uploaded?;
    if staged != m.blocks.len() {
        let _ = dest.discard_staged(&data_name).await;
        return Err(Error::transient(format!("export {:?}: staged {staged} of {} blocks", m.id, m.blocks.len())));
    }
    let mut tags = Tags::new();
    tags.insert("pgvault".into(), "export".into());
    tags.insert("kind".into(), m.kind.as_str().into());
    let ids: Vec<String> = (0..staged).map(crate::seams::store::block_id).collect();
    dest.commit_blocks(&data_name, &ids, &tags).await.map_err(|e| e.context(format!("commit copy {data_name:?}")))?;
    let manifest_bytes = ctx.store.get(&manifest_blob).await?;
    let id0 = crate::seams::store::block_id(0);
    dest.stage_block(&manifest_name, &id0, manifest_bytes.clone()).await?;
    dest.commit_blocks(&manifest_name, &[id0], &tags).await?;

    // Whole seconds: the URL's `se` has no fraction, and the record must say the same time.
    let expires_at = (OffsetDateTime::now_utc() + time::Duration::seconds(secs as i64))
        .replace_nanosecond(0)
        .expect("0 is a valid nanosecond");
    let mut files = Vec::new();
    for (blob, bytes, sha) in [
        (data_name, m.stored_bytes, m.sha256.clone()),
        (
            manifest_name,
            manifest_bytes.len() as u64,
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&manifest_bytes)),
        ),
    ] {
        let url = exporter.read_only_url(container, &blob, expires_at).await?;
        files.push(ExportedFile { container: container.into(), blob, bytes, sha256: sha, url, expires_at });
    }
    tracing::info!(
        task = %task.task_id, backup = %m.id, container, files = ?files.iter().map(|f| &f.blob).collect::<Vec<_>>(),
        expires_at = %ts(expires_at), "backup exported as files"
    );
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::manifest::{Compression, Tool};
    use time::macros::datetime;

    #[test]
    fn a_membership_refusal_in_pg_restore_says_how_to_fix_it() {
        use std::os::unix::process::ExitStatusExt;
        let failed = std::process::ExitStatus::from_raw(1 << 8);
        for line in [
            "pg_restore: error: could not execute query: ERROR:  must be member of role \"app_owner\"",
            "pg_restore: error: could not execute query: ERROR:  must be able to SET ROLE \"app_owner\"",
            "pg_restore: error: could not execute query: ERROR:  permission denied to set role \"app_owner\"",
        ] {
            let e = pg_restore_verdict(failed, line).unwrap_err();
            assert!(e.is_permanent());
            assert!(e.to_string().contains("HINT: make the restoring role a member"), "{e}");
        }
    }

    fn settings(storage: &str) -> Settings {
        let mut map = std::collections::HashMap::new();
        map.insert(
            "PGVAULT_INVENTORY".to_string(),
            r#"[{"name":"main","host":"h","user":"u"},{"name":"new","host":"h2","user":"u"}]"#.to_string(),
        );
        if storage == "azure" {
            map.insert("PGVAULT_STORAGE".into(), "azure".into());
            map.insert("PGVAULT_BLOB_ENDPOINT".into(), "https://acct.blob.core.windows.net".into());
            map.insert("PGVAULT_BACKUP_CONTAINER".into(), "backups".into());
        }
        Settings::from_map(map).unwrap()
    }

    fn manifest(kind: BackupKind, server: &str, db: &str, started: OffsetDateTime, job: &str) -> Manifest {
        let paths = layout::backup_paths(kind, server, db, started, job);
        Manifest {
            format: crate::domain::manifest::FORMAT_NAME.into(),
            format_version: 1,
            pgvault_version: "0".into(),
            id: paths.id.clone(),
            kind,
            job_id: job.into(),
            server: server.into(),
            database: db.into(),
            server_version: "15.0".into(),
            server_version_num: 150000,
            tool: Tool { name: "pg_dump".into(), version: "15".into(), major: 15, args: vec![] },
            archive_format: "custom".into(),
            compression: Compression::Zstd { level: 3 },
            data_blob: format!("{}.x.dump.zst", paths.id),
            raw_bytes: 1,
            stored_bytes: 1,
            sha256: String::new(),
            blocks: vec![],
            requested_at: started,
            started_at: started,
            finished_at: started + time::Duration::minutes(5),
            row_counts: None,
            databases: (kind == BackupKind::Globals).then(|| vec!["app".into(), "shop".into(), "postgres".into()]),
            database_properties: None,
            restore_hint: String::new(),
        }
    }

    fn catalog() -> Vec<Manifest> {
        let d1 = datetime!(2026-11-20 02:00:00 UTC);
        let d2 = datetime!(2026-11-21 02:00:00 UTC);
        vec![
            manifest(BackupKind::Database, "main", "app", d1, "a1"),
            manifest(BackupKind::Database, "main", "shop", d1, "s1"),
            manifest(BackupKind::Globals, "main", "", d1, "g1"),
            manifest(BackupKind::Database, "main", "app", d2, "a2"),
            manifest(BackupKind::Globals, "main", "", d2, "g2"),
            manifest(BackupKind::Database, "main", "postgres", d2, "p2"),
        ]
    }

    fn request(json: serde_json::Value) -> RestoreRequest {
        let mut base = serde_json::json!({
            "version": 1, "request_id": "r1", "requested_by": "test",
            "source": {"server": "main", "database": "app"},
            "target": {"mode": "create", "server": "new"}
        });
        for (k, v) in json.as_object().unwrap() {
            base[k] = v.clone();
        }
        RestoreRequest::from_json(&base.to_string()).unwrap()
    }

    #[test]
    fn latest_latest_before_and_id_choose_with_reasons() {
        let s = settings("local");
        let p = plan(&request(serde_json::json!({})), &s, &catalog()).unwrap();
        assert_eq!(p.tasks.len(), 1);
        assert!(p.tasks[0].backup.ends_with("-a2"), "{:?}", p.tasks[0]);
        assert_eq!(p.tasks[0].target.database.as_deref(), Some("app"));
        assert!(p.choices.iter().any(|c| c.reason.contains("newest of 2 backups")), "{:?}", p.choices);

        let r = request(serde_json::json!({"source": {"server": "main", "database": "app",
            "backup": {"latest_before": "2026-11-20T12:00:00Z"}}}));
        let p = plan(&r, &s, &catalog()).unwrap();
        assert!(p.tasks[0].backup.ends_with("-a1"));
        assert!(p.choices.iter().any(|c| c.reason.contains("1 newer skipped")), "{:?}", p.choices);

        let id = catalog()[0].id.clone();
        let r = request(serde_json::json!({"source": {"server": "main", "database": "app", "backup": {"id": id}},
            "target": {"mode": "replace", "server": "new", "database": "other"}, "options": {"globals": true}}));
        let p = plan(&r, &s, &catalog()).unwrap();
        assert_eq!(p.tasks[0].backup, id);
        assert_eq!(p.tasks[0].target.database.as_deref(), Some("other"));
        assert!(p.tasks[0].globals.as_deref().unwrap().ends_with("-g1"), "globals of the named backup's time");
    }

    #[test]
    fn a_named_backup_gets_the_globals_of_its_run_even_when_they_started_after_it_finished() {
        let s = settings("local");
        let mut cat = catalog();
        // g1 was requested with a1 (one scheduler run) but started after a1 finished.
        cat[2].started_at = cat[0].finished_at + time::Duration::minutes(1);
        let id = cat[0].id.clone();
        let r = request(serde_json::json!({"source": {"server": "main", "database": "app", "backup": {"id": id}},
            "options": {"globals": true}}));
        let p = plan(&r, &s, &cat).unwrap();
        assert!(p.tasks[0].globals.as_deref().unwrap().ends_with("-g1"), "{:?}", p.tasks[0]);
    }

    #[test]
    fn whole_server_takes_every_database_but_the_maintenance_db() {
        let s = settings("local");
        let r = request(serde_json::json!({"source": {"server": "main"}, "options": {"globals": true}}));
        let p = plan(&r, &s, &catalog()).unwrap();
        let dbs: Vec<_> = p.tasks.iter().map(|t| t.target.database.clone().unwrap()).collect();
        assert_eq!(dbs, ["app", "shop"]);
        assert!(p.tasks.iter().all(|t| t.globals.as_deref().is_some_and(|g| g.ends_with("-g2"))));
        assert!(p.choices.iter().any(|c| c.what.contains("postgres") && c.reason.contains("maintenance")));
        assert_eq!(p.tasks[1].task_id, "r1-2");
        // A database dropped after the first day: its old backup stays out of a whole-server
        // restore of the second day, with the reason, and can still be named.
        let mut cat = catalog();
        cat.insert(0, manifest(BackupKind::Database, "main", "gone", datetime!(2026-11-19 02:00:00 UTC), "x0"));
        cat[3].databases = Some(vec!["app".into(), "shop".into(), "gone".into(), "postgres".into()]);
        let p = plan(&r, &s, &cat).unwrap();
        let dbs: Vec<_> = p.tasks.iter().map(|t| t.target.database.clone().unwrap()).collect();
        assert_eq!(dbs, ["app", "shop"]);
        let why = p.choices.iter().find(|c| c.what.contains("gone")).unwrap();
        assert!(why.reason.contains("not on the server when the globals were backed up"), "{why:?}");
        let r1 = request(serde_json::json!({"source": {"server": "main",
            "backup": {"latest_before": "2026-11-20T12:00:00Z"}}}));
        let dbs: Vec<_> =
            plan(&r1, &s, &cat).unwrap().tasks.iter().map(|t| t.target.database.clone().unwrap()).collect();
        assert_eq!(dbs, ["app", "gone", "shop"], "on the first day it was there");
        let named = request(serde_json::json!({"source": {"server": "main", "database": "gone"}}));
        assert_eq!(plan(&named, &s, &cat).unwrap().tasks.len(), 1);
        // Before the first day's backups: nothing.
        let r = request(serde_json::json!({"source": {"server": "main",
            "backup": {"latest_before": "2026-11-01T00:00:00Z"}}}));
        assert!(plan(&r, &s, &catalog()).unwrap_err().to_string().contains("nothing to restore"));
    }

    #[test]
    fn impossible_requests_say_why() {
        let s = settings("local");
        let cases = [
            (serde_json::json!({"source": {"server": "gone", "database": "app"}}), "unknown source server"),
            (serde_json::json!({"target": {"mode": "create", "server": "elsewhere"}}), "not in the inventory"),
            (serde_json::json!({"source": {"server": "main", "database": "nope"}}), "has no backups"),
            (
                serde_json::json!({"source": {"server": "main", "database": "app",
                    "backup": {"latest_before": "2020-01-01T00:00:00Z"}}}),
                "no backup of database \"app\" of server \"main\" was taken at or before",
            ),
            (
                serde_json::json!({"source": {"server": "main", "database": "app", "backup": {"id": "main/app/x"}}}),
                "is not a backup of",
            ),
            (serde_json::json!({"target": {"mode": "as-files", "container": "out"}}), "needs Azure storage"),
        ];
        for (json, want) in cases {
            let e = plan(&request(json.clone()), &s, &catalog()).unwrap_err();
            assert!(e.is_permanent());
            assert!(e.to_string().contains(want), "{json}: {e}");
        }
        let az = settings("azure");
        let e = plan(
            &request(serde_json::json!({"target": {"mode": "as-files", "container": "backups"}})),
            &az,
            &catalog(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("is the backup container"), "{e}");
        let p = plan(
            &request(serde_json::json!({"target": {"mode": "as-files", "container": "out", "prefix": "case-1"},
                "options": {"globals": true}})),
            &az,
            &catalog(),
        )
        .unwrap();
        assert_eq!(p.tasks.len(), 2, "the database and the globals");
        assert_eq!(p.tasks[0].target.prefix.as_deref(), Some("case-1/"));
        assert_eq!(p.tasks[0].target.expires_in_seconds, Some(DEFAULT_EXPIRY_SECS));
    }

    #[test]
    fn malformed_requests_are_rejected_by_shape() {
        let cases = [
            ("{", "not valid"),
            (r#"{"version":1,"request_id":"r","source":{"server":"s"}}"#, "missing field `target`"),
            (
                r#"{"version":1,"request_id":"r","source":{"server":"s","database":"d"},"target":{"mode":"create","server":"t"},"bogus":1}"#,
                "unknown field `bogus`",
            ),
            (
                r#"{"version":1,"request_id":"a b","source":{"server":"s","database":"d"},"target":{"mode":"create","server":"t"}}"#,
                "request_id",
            ),
            (
                r#"{"version":1,"request_id":"r","source":{"server":"s","database":"d"},"target":{"mode":"create"}}"#,
                "target.server is required",
            ),
            (
                r#"{"version":1,"request_id":"r","source":{"server":"s"},"target":{"mode":"create","server":"t","database":"x"}}"#,
                "whole-server",
            ),
            (
                r#"{"version":1,"request_id":"r","source":{"server":"s","database":"d"},"target":{"mode":"create","server":"t","database":"pgvault_restore_1"}}"#,
                "reserves",
            ),
            (
                r#"{"version":1,"request_id":"r","source":{"server":"s","database":"d"},"target":{"mode":"as-files","container":"Bad_Name"}}"#,
                "container name",
            ),
            (
                r#"{"version":1,"request_id":"r","source":{"server":"s","database":"d"},"target":{"mode":"create","server":"t"},"options":{"jobs":0}}"#,
                "options.jobs",
            ),
            (
                r#"{"version":1,"request_id":"r","source":{"server":"s","database":"d"},"target":{"mode":"teleport","server":"t"}}"#,
                "unknown variant `teleport`",
            ),
        ];
        for (text, want) in cases {
            let e = RestoreRequest::from_json(text).unwrap_err();
            assert!(e.is_permanent());
            assert!(e.to_string().contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn method_and_names() {
        assert_eq!(choose_method(1, 10, Some(1 << 40), 0).0, Method::Stream);
        assert_eq!(choose_method(4, 100, Some(1000), 100).0, Method::Parallel(4));
        let (m, why) = choose_method(4, 1000, Some(1000), 100);
        assert_eq!(m, Method::Stream);
        assert!(why.contains("needs 1100 bytes"), "{why}");
        assert_eq!(choose_method(4, 1, None, 0).0, Method::Stream);
        let at = datetime!(2026-11-21 02:03:04 UTC);
        assert_eq!(pre_restore_name("app", at), "app_pre_restore_20261121_020304");
        let long = "é".repeat(40);
        let n = pre_restore_name(&long, at);
        assert!(n.len() <= 63 && n.ends_with("_pre_restore_20261121_020304"), "{n}");
    }

    #[test]
    fn globals_script_is_understood() {
        let script = "--\n-- PostgreSQL database cluster dump\n--\n\n\\restrict abc\n\nSET default_transaction_read_only = off;\n\
                      CREATE ROLE app_owner;\nALTER ROLE app_owner WITH NOSUPERUSER INHERIT LOGIN;\n\
                      CREATE ROLE \"Odd \"\"Role\"\"\";\nCOMMENT ON ROLE \"Odd \"\"Role\"\"\" IS 'it''s; odd\nreally';\n\
                      GRANT reader, \"Odd \"\"Role\"\"\" TO app_owner GRANTED BY postgres;\n\
                      CREATE TABLESPACE ts OWNER postgres LOCATION '/x';\n\\unrestrict abc\n";
        let stmts = split_statements(script);
        let kinds: Vec<GlobalStmt> = stmts.iter().map(|s| classify(s)).collect();
        assert_eq!(
            kinds,
            [
                GlobalStmt::Session,
                GlobalStmt::CreateRole("app_owner".into()),
                GlobalStmt::AboutRole("app_owner".into()),
                GlobalStmt::CreateRole("Odd \"Role\"".into()),
                GlobalStmt::AboutRole("Odd \"Role\"".into()),
                GlobalStmt::Membership("app_owner".into()),
                GlobalStmt::Tablespace,
            ]
        );
        assert!(stmts[4].contains("really';"), "a quoted newline stays in the statement: {}", stmts[4]);
    }

    #[test]
    fn archived_backups_are_rehydrated_then_waited_for_within_a_bound() {
        use crate::seams::store::{BlobProps, Tier};
        let props = |tier: Option<Tier>, status: Option<&str>| BlobProps {
            size: 1,
            tier,
            archive_status: status.map(str::to_string),
            tier_changed_at: None,
        };
        let max = REHYDRATION_MAX_WAIT;
        let h = time::Duration::hours;
        // No tiers (local store), or an online tier: restore now.
        assert_eq!(availability(None, None, max), Availability::Online);
        for t in [None, Some(Tier::Hot), Some(Tier::Cool), Some(Tier::Cold)] {
            assert_eq!(availability(Some(&props(t, None)), Some(h(30)), max), Availability::Online, "{t:?}");
        }
        // Rehydration finished: Azure reports hot and no archive status.
        assert_eq!(availability(Some(&props(Some(Tier::Hot), None)), Some(h(10)), max), Availability::Online);
        // Archived and nothing under way: start it (first look, or it was re-archived meanwhile).
        assert_eq!(availability(Some(&props(Some(Tier::Archive), None)), None, max), Availability::Rehydrate);
        assert_eq!(availability(Some(&props(Some(Tier::Archive), None)), Some(h(2)), max), Availability::Rehydrate);
        // Under way: wait.
        let pending = props(Some(Tier::Archive), Some("rehydrate-pending-to-hot"));
        assert_eq!(availability(Some(&pending), Some(h(1)), max), Availability::Pending);
        assert_eq!(availability(Some(&pending), Some(max), max), Availability::Pending);
        // Bounded: past the limit the task fails with a clear reason.
        match availability(Some(&pending), Some(max + h(1)), max) {
            Availability::GiveUp(why) => assert!(why.contains("still in the archive tier after waiting 25 h"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn progress_counts_the_restore_stream_and_passes_it_through() {
        use futures::StreamExt;
        let chunks: Vec<Result<Bytes>> = vec![Ok(Bytes::from_static(b"abc")), Ok(Bytes::from_static(b"defgh"))];
        let progress = crate::seams::progress::Progress::start(crate::seams::progress::Mode::Off, "restore t", Some(8));
        let out: Vec<Bytes> =
            with_progress(futures::stream::iter(chunks).boxed(), progress.clone()).map(|r| r.unwrap()).collect().await;
        assert_eq!(out, [Bytes::from_static(b"abc"), Bytes::from_static(b"defgh")]);
        assert_eq!(progress.bytes(), 8);
    }

    #[test]
    fn tasks_round_trip_and_validate() {
        let p = plan(&request(serde_json::json!({})), &settings("local"), &catalog()).unwrap();
        let t = &p.tasks[0];
        assert_eq!(RestoreTask::from_json(&t.to_json()).unwrap(), *t);
        let mut bad = t.clone();
        bad.target.database = None;
        assert!(RestoreTask::from_json(&bad.to_json()).is_err());
        let back: Plan = serde_json::from_value(serde_json::to_value(&p).unwrap()).unwrap();
        assert_eq!(back, p);
    }

    #[test]
    fn exported_file_url_is_redacted_in_debug_but_serialized_plainly() {
        let sig = "q7Zl3cRnb%2BsecretSIGvalue%3D";
        let url = format!(
            "https://acct.blob.core.windows.net/exports/d/x.dump?sv=2024-11-04&sr=b&sp=r&se=2026-11-21T02%3A03%3A04Z&sig={sig}"
        );
        let f = ExportedFile {
            container: "exports".into(),
            blob: "d/x.dump".into(),
            bytes: 42,
            sha256: "ab".repeat(32),
            url: crate::domain::secret::Secret::new(url.clone()),
            expires_at: datetime!(2026-11-21 02:03:04 UTC),
        };
        let debug = format!("{f:?}");
        assert!(!debug.contains(sig) && !debug.contains("sig=") && !debug.contains("sv=2024"), "{debug}");
        assert!(debug.contains("d/x.dump") && debug.contains("**redacted**"), "{debug}");
        let report = TaskReport { files: vec![f.clone()], ..Default::default() };
        assert!(!format!("{report:?}").contains(sig));

        // The job record keeps the same shape as before: `url` is a plain string.
        let json = serde_json::to_string(&f).unwrap();
        assert!(json.contains(&serde_json::to_string(&url).unwrap()), "{json}");
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["url"].as_str(), Some(url.as_str()));
        let back: ExportedFile = serde_json::from_str(&json).unwrap();
        assert_eq!(back, f);
        assert_eq!(back.url.expose(), url);
    }
}
