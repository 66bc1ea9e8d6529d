//! What a task did: the report in its job record and the CLI's output.

use super::*;
use crate::domain::secret::SecretUrl;

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

impl TaskReport {
    /// Whether the task changed anything (what a failed task's record must still say).
    pub fn has_effects(&self) -> bool {
        self.globals.is_some() || self.database.is_some() || !self.files.is_empty()
    }

    /// Put `note` in place of every secret URL (a view for readers other than the operator).
    pub fn withhold_secrets(&mut self, note: &str) {
        for f in &mut self.files {
            f.url.withhold(note);
        }
    }
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
    /// A backup in parts: each part as it was loaded (schema part first, then the data and COPY
    /// parts in the order they finished).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<PartReport>,
}

/// One part of a backup in parts, as it was restored.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PartReport {
    pub name: String,
    /// `schema`, `data` or `copy`.
    pub kind: String,
    pub stored_bytes: u64,
    pub raw_bytes: u64,
    /// Wall time of its load (the schema part: pre-data and post-data together).
    pub seconds: f64,
    /// COPY parts: the rows the server loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
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
    /// The read-only user-delegation SAS URL: a bearer credential (see [`SecretUrl`]).
    pub url: SecretUrl,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}
