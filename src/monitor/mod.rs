//! Monitoring: job records, alerts, and the one wrapper every kind of job runs in.

pub mod alerts;
pub mod records;
