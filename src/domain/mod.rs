//! The domain core: pure types and plans. It imports nothing above it and no SDK type.

pub mod archive;
pub mod connstr;
pub mod dbprops;
pub mod doctor;
pub mod envelope;
pub mod error;
pub mod fanout;
pub mod inventory;
pub mod jobs;
pub mod layout;
pub mod manifest;
pub mod parts;
pub mod pgbackrest_target;
pub mod policy;
pub mod records;
pub mod restore;
pub mod schedule;
pub mod secret;
pub mod sql;
pub mod status;
