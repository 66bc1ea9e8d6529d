//! Restore's messages and results as pure types: the request (and its checks), the tasks a plan
//! makes, and what a task did. Job records hold them, so they live below the monitor; the
//! pipeline that acts on them is [`crate::features::restore`].

use crate::domain::dbprops;
use crate::domain::error::{Error, Result};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// The message version of requests and tasks.
pub const MESSAGE_VERSION: u32 = 1;
/// Temporary databases are `pgvault_restore_<8 hex>`; nothing else may be named like that.
pub const TEMP_DB_PREFIX: &str = "pgvault_restore_";
/// Read-only URLs of `as-files` live this long unless the request says otherwise.
pub const DEFAULT_EXPIRY_SECS: u64 = 3600;
pub const MIN_EXPIRY_SECS: u64 = 10;
pub const MAX_EXPIRY_SECS: u64 = 7 * 24 * 3600;
pub const MAX_JOBS: u32 = 32;
/// PostgreSQL's identifier limit (NAMEDATALEN - 1), in bytes.
pub const MAX_IDENT_BYTES: usize = 63;

mod report;
mod request;
mod task;

pub use report::*;
pub use request::*;
pub use task::*;
