//! pgvault: PostgreSQL backups for Azure, run as Azure Functions through a custom handler.
//!
//! # Layout
//! The layers, from the bottom (DESIGN.md "Layers" is the table `tests/layering.rs` checks):
//! - [`domain`]: pure types and plans (errors, secrets, blob names, the manifest, the encrypted
//!   chunk format, the database's own properties, the inventory, retention policy, schedules, job
//!   messages, restore's messages and report, typed job records).
//! - [`seams`]: the contracts the features depend on: [`seams::store::BlobStore`],
//!   [`seams::queue::JobQueue`], [`seams::credentials::SecretSource`],
//!   [`seams::keys::KeyWrapper`], PostgreSQL connections and tools ([`seams::pg`], run by
//!   [`seams::tools`]), progress.
//! - [`config`]: the typed settings, logins as the inventory says, the [`config::context::Ctx`].
//! - [`monitor`]: job records in the store, the tracked-run wrapper, alerts.
//! - [`features`]: backup, catalog and verify, restore, retention and holds, drills, pgBackRest
//!   SAS rotation, the scheduler, reports, grant-sql.
//! - Adapters: [`azure`] (Blob, Queue, Key Vault, identity, ARM via the official SDK) and
//!   [`runtime`], the one composition root.
//! - Edges: [`handler`] (the axum custom handler, one module per function) and [`cli`].

pub mod azure;
pub mod cli;
pub mod config;
pub mod domain;
pub mod features;
pub mod handler;
pub mod monitor;
pub mod runtime;
pub mod seams;
