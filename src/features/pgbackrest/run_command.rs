//! The VM Run Command seam: how a push target receives its SAS. `azure::arm` implements it with
//! ARM's managed Run Command; the rotator depends only on this trait.

use crate::domain::error::Result;
use crate::domain::secret::Secret;
use async_trait::async_trait;
use std::time::Duration;

/// One run command to execute on a VM.
#[derive(Debug, Clone)]
pub struct RunCommandRequest {
    pub vm_resource_id: String,
    pub location: String,
    /// The run command resource's name.
    pub name: String,
    /// A shell script.
    pub script: String,
    pub parameters: Vec<(String, String)>,
    /// Environment variables of the script that ARM never returns (the SAS).
    pub protected_parameters: Vec<(String, Secret)>,
    pub timeout: Duration,
}

/// How a run command ended on the VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunCommandResult {
    pub exit_code: Option<i64>,
    /// The script's stdout, redacted.
    pub output: String,
}

/// Run a command on a VM and wait for it. Errors name the VM and say what ARM answered.
#[async_trait]
pub trait RunCommands: Send + Sync {
    async fn run(&self, req: &RunCommandRequest) -> Result<RunCommandResult>;
}
