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
//! - A backup in parts (manifest format version 3) goes through the same steps; only its load
//!   differs: pre-data, then its data parts at once, then post-data ([`parts`]).

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
use std::path::{Path, PathBuf};
use std::time::Duration;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::mpsc;

pub const RESTORE_REQUESTS_QUEUE: &str = "restore-requests";
pub const RESTORE_TASKS_QUEUE: &str = "restore-tasks";
/// `replace` keeps the old database as `<name>_pre_restore_<YYYYMMDD_HHMMSS>` (UTC).
pub const PRE_RESTORE_INFIX: &str = "_pre_restore_";
/// A globals script larger than this is not a pg_dumpall --globals-only script.
pub(super) const MAX_GLOBALS_BYTES: usize = 64 << 20;

mod database;
mod export;
mod globals;
mod parts;
mod pg_restore;
mod plan;
mod rehydrate;
mod submit;
mod table;
mod task;
#[cfg(test)]
mod tests;

/// The messages, the plan and the report: pure types, in the domain (job records hold them).
pub use crate::domain::restore::*;
pub use database::*;
use export::*;
pub use globals::*;
pub use parts::{DEFAULT_PART_JOBS, README_SUFFIX, check_parts, parts_method, readme};
use pg_restore::*;
pub use plan::*;
pub use rehydrate::*;
pub use submit::*;
pub use table::*;
pub use task::*;
