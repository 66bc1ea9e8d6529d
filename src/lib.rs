//! pgvault: PostgreSQL backups for Azure, run as Azure Functions through a custom handler.
//!
//! # Layout
//! - Domain core (no SDK types):
//!   - [`layout`]: the one place that knows blob names.
//!   - [`manifest`]: the versioned, self-describing manifest written last.
//!   - [`backup`]: the streaming pipeline (pg_dump -> zstd -> staged blocks -> commit -> manifest).
//!   - [`catalog`]: listing and verifying backups.
//!   - [`dbprops`]: the database's own properties (encoding, locale, owner, privileges,
//!     settings, comment), recorded by the backup and applied by the restore.
//!   - [`restore`]: restore requests, their plan, and the never-destructive restore pipeline
//!     (verified blocks -> zstd -> pg_restore into a temporary database -> verify -> rename).
//!   - [`jobrecords`]: the status record of every restore request and task (`pgvault jobs`);
//!     [`claim`]: one delivery at a time runs a restore task.
//!   - [`jobs`]: the queue messages and the scheduler's planning.
//!   - [`retention`]: policies and the pure GFS plan, and its execution (manifest first);
//!     [`holds`]: legal holds retention never removes.
//!   - [`monitor`]: backup job records, `pgvault jobs` filters and summary, RPO checks, alerts.
//!   - [`drill`]: restore drills into the scratch server (RTO evidence).
//!   - [`pgbackrest`]: SAS rotation for VM-hosted pgBackRest (plan, token, include file,
//!     rotator, VM sync and doctor, repository freshness).
//!   - [`pg`]: PostgreSQL connections and the tool binaries (pg_dump, pg_restore, pg_dumpall).
//! - Seams (traits the core depends on): [`store::BlobStore`], [`queue::JobQueue`],
//!   [`credentials::SecretSource`] (with [`credentials::CloudSecrets`] for Key Vault and Entra).
//!   [`connstr`] reads the connection strings kept in Key Vault.
//! - Adapters: [`store::local`] (a directory) and [`azure`] (Blob, Queue, Key Vault, identity
//!   via the official SDK).
//! - Edges: [`settings`] (typed, validated app settings), [`handler`] (the axum custom handler,
//!   one module per function), [`cli`] (the same operations as subcommands), [`grant`] (the
//!   least-privilege SQL of `pgvault grant-sql`).
//! - Packaging: [`bundle`] (the PostgreSQL tools shipped in the Flex package, copied to a
//!   writable directory at start-up).
//! - Cross-cutting: [`error`] (kinds that decide retry vs keep), [`secret`] (secret types and
//!   redaction), [`progress`].

pub mod azure;
pub mod cli;
pub mod config;
pub mod domain;
pub mod features;
pub mod handler;
pub mod monitor;
pub mod runtime;
pub mod seams;
