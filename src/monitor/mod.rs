//! Monitoring: job records, alerts, and the one wrapper every kind of job runs in.

pub mod event;
pub mod records;
pub mod tracked;
