//! Seams: the capabilities the features depend on, as traits with their contracts (the blob
//! store, the job queue, the secret source), PostgreSQL connections, the one runner of its client
//! tools ([`tools`]), and where alerts go (the log and a webhook).

pub mod alerts;
pub mod bundle;
pub mod credentials;
pub mod failpoint;
pub mod keys;
pub mod pg;
pub mod progress;
pub mod queue;
pub mod store;
pub mod tools;
