//! A backup in parts fanned out on the `backup-parts` queue (`PGVAULT_PARTS_RUN=queue`): the
//! message the coordinator sends for each part, and the result a part worker writes back to the
//! store (`domain::layout::part_result`). Pure types and their checks; the coordinator and the
//! worker are `features::backup::fanout`.
//!
//! A message carries everything a worker on another instance needs to dump its part in the
//! coordinator's snapshot, and nothing secret: the login is read again by the worker (Key Vault,
//! Entra), and an encrypted backup's data key travels only **wrapped** (the worker unwraps it
//! through the key seam).

use crate::domain::error::{Error, Result};
use crate::domain::jobs::{BackupJob, not_json};
use crate::domain::layout::{self, BackupKind};
use crate::domain::manifest::Compression;
use crate::domain::parts::{Part, PartSpec};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// The queue the parts go on; function `backup-parts` is its trigger.
pub const BACKUP_PARTS_QUEUE: &str = "backup-parts";

/// The version of [`PartMessage`] this pgvault writes and reads.
pub const PART_MESSAGE_VERSION: u32 = 1;

/// The wrapped data key of an encrypted backup, as the set manifest records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrappedDataKey {
    pub key_id: String,
    pub wrap_algorithm: String,
    /// The wrapped key, base64.
    pub wrapped_key: String,
}

/// One part of a backup in parts, for a worker on another instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartMessage {
    pub version: u32,
    /// The backup job (job id, server, database, `requested_at`): the backup id follows from it.
    pub job: BackupJob,
    /// The backup id, as the coordinator computed it (checked against the job's).
    pub backup_id: String,
    /// The coordinator's attempt: the part's blob and its result are named after it.
    pub attempt: String,
    pub part: PartSpec,
    /// The snapshot `pg_export_snapshot()` gave the coordinator.
    pub snapshot: String,
    /// The server's `server_version_num` (the worker picks its pg_dump by it, as the coordinator
    /// did) and the coordinator's pg_dump major.
    pub server_version_num: u32,
    pub tool_major: u32,
    /// pg_dump's common arguments: format, compression, `--no-password`, lock wait, `--snapshot`.
    pub pg_dump_args: Vec<String>,
    pub compression: Compression,
    /// Encrypted backups only: the data key as the vault wrapped it (never the plain key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<WrappedDataKey>,
    #[serde(with = "time::serde::rfc3339")]
    pub sent_at: OffsetDateTime,
}

/// The arguments a part message may give pg_dump besides its part's own: what the coordinator
/// adds, nothing that names a file, a host or a connection.
const COMMON_ARGS: &[&str] =
    &["--format=custom", "--compress=", "--no-password", "--lock-wait-timeout=", "--snapshot="];

impl PartMessage {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a part message serializes")
    }

    /// Parse and check a message; every error is permanent and names what is wrong.
    pub fn from_json(text: &str) -> Result<PartMessage> {
        let m: PartMessage = serde_json::from_str(text).map_err(|e| not_json("backup part message", text, &e))?;
        m.validate()?;
        Ok(m)
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |why: String| Err(Error::permanent(format!("backup part message: {why}")));
        if self.version != PART_MESSAGE_VERSION {
            return bad(format!("version {}, this pgvault reads version {PART_MESSAGE_VERSION}", self.version));
        }
        self.job.validate().map_err(|e| e.context("backup part message"))?;
        if self.job.kind != BackupKind::Database {
            return bad("a part belongs to a database backup, not to globals".into());
        }
        let database = self.job.database.as_deref().unwrap_or_default();
        let id =
            layout::backup_paths(self.job.kind, &self.job.server, database, self.job.requested_at, &self.job.job_id).id;
        if self.backup_id != id {
            return bad(format!("backup id {:?} is not the job's ({id:?})", self.backup_id));
        }
        if self.attempt.len() != 8 || !self.attempt.bytes().all(|b| b.is_ascii_hexdigit()) {
            return bad(format!("attempt {:?} is not 8 hex digits", self.attempt));
        }
        // The name is a blob-name segment: nothing that could leave the backup's prefix.
        let name = &self.part.name;
        if name.is_empty()
            || name.len() > 32
            || !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return bad(format!("part name {name:?} is not 1-32 lowercase letters, digits or '-'"));
        }
        if self.part.pg_dump_args().is_none() && self.part.copy_sql().is_none() {
            return bad(format!("copy part {name:?} names no table or page range"));
        }
        let snapshot_ok = !self.snapshot.is_empty()
            && self.snapshot.len() <= 64
            && self.snapshot.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
        if !snapshot_ok {
            return bad(format!("snapshot {:?} is not a snapshot id", self.snapshot));
        }
        for a in &self.pg_dump_args {
            if !COMMON_ARGS.iter().any(|c| if c.ends_with('=') { a.starts_with(c) } else { a == c }) {
                return bad(format!("pg_dump argument {a:?} is not one the coordinator gives"));
            }
        }
        let own = format!("--snapshot={}", self.snapshot);
        if !self.pg_dump_args.contains(&own) {
            return bad(format!("pg_dump arguments lack {own:?}"));
        }
        Ok(())
    }
}

/// How a part ended, as its worker reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum PartOutcome {
    /// The part's blob is committed; this is its entry for the set manifest.
    Committed { record: Box<Part> },
    /// The part failed for good: its snapshot is gone, the message is malformed, or its last
    /// delivery failed. The coordinator fails the backup with this reason.
    Failed { error: String },
}

/// What a part worker writes to `domain::layout::part_result`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartResult {
    pub part: String,
    pub attempt: String,
    #[serde(flatten)]
    pub outcome: PartOutcome,
    /// The delivery that wrote it.
    pub message_id: String,
    pub dequeue_count: u32,
    #[serde(with = "time::serde::rfc3339")]
    pub finished_at: OffsetDateTime,
}

impl PartResult {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a part result serializes")
    }

    pub fn from_json(name: &str, bytes: &[u8]) -> Result<PartResult> {
        serde_json::from_slice(bytes).map_err(|e| Error::permanent(format!("part result {name:?} is not valid: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::jobs::Trigger;
    use crate::domain::parts::PartKind;

    fn message() -> PartMessage {
        let job = BackupJob::new(
            BackupKind::Database,
            "main",
            Some("app"),
            OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap(),
            Trigger::Cli,
        );
        let id = layout::backup_paths(BackupKind::Database, "main", "app", job.requested_at, &job.job_id).id;
        PartMessage {
            version: PART_MESSAGE_VERSION,
            job,
            backup_id: id,
            attempt: "0123abcd".into(),
            part: PartSpec::new("data-01".into(), PartKind::Data),
            snapshot: "00000003-00000002-1".into(),
            server_version_num: 170000,
            tool_major: 17,
            pg_dump_args: vec![
                "--format=custom".into(),
                "--compress=0".into(),
                "--no-password".into(),
                "--snapshot=00000003-00000002-1".into(),
            ],
            compression: Compression::Zstd { level: 3 },
            encryption: None,
            sent_at: OffsetDateTime::from_unix_timestamp(1_700_000_100).unwrap(),
        }
    }

    #[test]
    fn a_message_round_trips_and_every_bad_field_is_named() {
        let m = message();
        assert_eq!(PartMessage::from_json(&m.to_json()).unwrap(), m);
        type Spoil = fn(&mut PartMessage);
        let cases: Vec<(Spoil, &str)> = vec![
            (|m| m.part.name = "../x".into(), "part name \"../x\""),
            (|m| m.attempt = "zz".into(), "attempt \"zz\""),
            (|m| m.backup_id = "main/other/x".into(), "backup id \"main/other/x\" is not the job's"),
            (|m| m.pg_dump_args.push("--file=/etc/x".into()), "pg_dump argument \"--file=/etc/x\""),
            (|m| m.pg_dump_args.retain(|a| !a.starts_with("--snapshot")), "lack \"--snapshot="),
            (|m| m.snapshot = "1; DROP".into(), "is not a snapshot id"),
            (|m| m.part = PartSpec::new("copy-01".into(), PartKind::Copy), "names no table"),
            (|m| m.version = 9, "version 9"),
        ];
        for (spoil, why) in cases {
            let mut bad = message();
            spoil(&mut bad);
            let e = PartMessage::from_json(&bad.to_json()).unwrap_err();
            assert!(e.is_permanent());
            assert!(e.to_string().starts_with("backup part message") && e.to_string().contains(why), "{why}: {e}");
        }
        let e = PartMessage::from_json("{\"version\":1}").unwrap_err();
        assert!(e.to_string().contains("backup part message"), "{e}");
    }

    #[test]
    fn a_result_says_how_the_part_ended() {
        let r = PartResult {
            part: "data-01".into(),
            attempt: "0123abcd".into(),
            outcome: PartOutcome::Failed { error: "snapshot x no longer exists".into() },
            message_id: "m".into(),
            dequeue_count: 1,
            finished_at: OffsetDateTime::from_unix_timestamp(1_700_000_200).unwrap(),
        };
        let json = r.to_json();
        assert!(json.contains("\"status\": \"failed\""), "{json}");
        assert_eq!(PartResult::from_json("x", json.as_bytes()).unwrap(), r);
    }
}
