//! What a task did: the reports in its job record and the CLI's output.

use super::*;

/// What one task did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskReport {
    pub task_id: String,
    pub backup: String,
    pub mode: String,
    pub stored_bytes: u64,
    pub raw_bytes: u64,
    pub seconds: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<DatabaseReport>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub globals: Option<GlobalsReport>,
    /// as-files: the copies and their read-only URLs. The URLs are secrets (they carry a
    /// signature): they go to the job record and the CLI's output, never to a log.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<ExportedFile>,
    /// as-files with keep_encrypted: how to decrypt the exported data file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decrypt_hint: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DatabaseReport {
    pub server: String,
    pub database: String,
    /// The temporary database it was restored into.
    pub temp_database: String,
    /// `stream` or `parallel`, and why.
    pub method: String,
    pub method_reason: String,
    pub pg_restore: String,
    pub target_version: String,
    /// Tables whose row count was checked against the manifest's exact counts.
    pub tables_checked: usize,
    /// replace: the name the old database was kept under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_kept_as: Option<String>,
    /// The database's own properties: what was applied, what was not and why, and whether they
    /// were read back as planned. Absent in reports written before pgvault restored them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub properties: Option<dbprops::PropertiesReport>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GlobalsReport {
    pub backup: String,
    pub created: Vec<String>,
    /// Roles that existed already; pgvault does not change them.
    pub skipped: Vec<String>,
    /// Statements not applied, and why (tablespaces, settings of existing roles, failures).
    pub not_applied: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportedFile {
    pub container: String,
    pub blob: String,
    pub bytes: u64,
    pub sha256: String,
    /// The read-only user-delegation SAS URL: a bearer credential (its `sig=`). `Debug` shows
    /// `**redacted**`; it is serialized as the plain URL, because the job record is where the
    /// operator gets it.
    #[serde(serialize_with = "serialize_exposed")]
    pub url: crate::domain::secret::Secret,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

/// Serialize a secret as its plain value. Only for fields whose serialized form goes to the
/// secret's rightful reader (here: the job record and the CLI's output), never to a log.
pub(super) fn serialize_exposed<S: serde::Serializer>(
    secret: &crate::domain::secret::Secret,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(secret.expose())
}

/// What [`execute_task`] did.
#[derive(Debug)]
pub enum TaskOutcome {
    Done(Box<TaskReport>),
    /// The task's record says it succeeded before (a redelivered message); nothing was done.
    AlreadyDone(Box<JobRecord>),
    /// Another delivery of the task (a duplicate message) is running it now; nothing was done.
    RunningElsewhere(crate::features::claim::Holder),
    /// The backup is in the Archive tier: rehydration was started (or is under way) and the task
    /// is recorded as `rehydration-pending`. The caller re-enqueues it to run after `recheck_secs`.
    RehydrationPending {
        /// The archived data blobs (the backup's, and the globals' when asked), comma-separated.
        blob: String,
        recheck_secs: u32,
    },
}
