//! The task: one unit of work on `restore-tasks`, and the plan a request resolves to.

use super::*;

/// One unit of work on `restore-tasks`: restore one backup into one database, or export one
/// backup as files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreTask {
    pub version: u32,
    /// `<request id>-<n>`.
    pub task_id: String,
    pub request_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<String>,
    /// The backup id to restore or export.
    pub backup: String,
    /// create / replace: the globals backup whose roles are restored first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub globals: Option<String>,
    /// Resolved: create / replace name the server and database; as-files the container, the
    /// normalized prefix and the expiry.
    pub target: Target,
    #[serde(default)]
    pub options: Options,
    /// Why this backup and this target were chosen.
    pub reason: String,
}

impl RestoreTask {
    pub fn from_json(text: &str) -> Result<Self> {
        let task: RestoreTask =
            serde_json::from_str(text).map_err(|e| crate::domain::jobs::not_json("restore task", text, &e))?;
        task.validate()?;
        Ok(task)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("task serializes")
    }

    pub fn validate(&self) -> Result<()> {
        if self.version != MESSAGE_VERSION {
            return Err(Error::permanent(format!(
                "restore task has version {}, this pgvault reads version {MESSAGE_VERSION}",
                self.version
            )));
        }
        check_id("task_id", &self.task_id, 80)?;
        check_id("request_id", &self.request_id, 64)?;
        if self.backup.is_empty() {
            return Err(Error::permanent("restore task names no backup"));
        }
        match self.target.mode {
            Mode::Create | Mode::Replace => {
                if self.target.server.is_none() {
                    return Err(Error::permanent("restore task names no target server"));
                }
                check_db_name("target database", self.target.database.as_deref().unwrap_or(""))?;
            }
            Mode::AsFiles => {
                check_container(self.target.container.as_deref().unwrap_or(""))?;
            }
        }
        Ok(())
    }

    pub fn describe(&self) -> String {
        match self.target.mode {
            Mode::AsFiles => format!(
                "export backup {:?} as files into container {:?}",
                self.backup,
                self.target.container.as_deref().unwrap_or("")
            ),
            m => format!(
                "restore backup {:?} into database {:?} on server {:?} ({})",
                self.backup,
                self.target.database.as_deref().unwrap_or(""),
                self.target.server.as_deref().unwrap_or(""),
                m.as_str()
            ),
        }
    }
}

/// One decision of the plan and why it was made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Choice {
    pub what: String,
    pub reason: String,
}

/// What a request resolves to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub request_id: String,
    pub tasks: Vec<RestoreTask>,
    pub choices: Vec<Choice>,
}
