//! Features: backup, catalog and verify, restore, retention and holds, drills, pgBackRest SAS
//! rotation, the scheduler, reports, the least-privilege SQL and doctor.

pub mod archive_stream;
pub mod backup;
pub mod catalog;
pub mod claim;
pub mod doctor;
pub mod drill;
pub mod grant;
pub mod holds;
pub mod pgbackrest;
pub mod report;
pub mod restore;
pub mod retention;
pub mod row_counts;
pub mod scheduler;
pub mod status;
