//! Wiring: turn [`Settings`] into the adapters behind the seams. Sends nothing over the network,
//! so `pgvault serve` can bind its port first and build this right after.

use crate::azure::{self, CredentialKind, RetrySettings};
use crate::config::settings::{IdentitySettings, Settings, StorageSettings};
use crate::domain::error::{Error, Result};
use crate::domain::jobs::{BACKUP_JOBS_QUEUE, rejected_queue};
use crate::features::backup::Ctx;
use crate::features::restore::{RESTORE_REQUESTS_QUEUE, RESTORE_TASKS_QUEUE};
use crate::seams::credentials::SettingsSecrets;
use crate::seams::progress;
use crate::seams::queue::JobQueue;
use crate::seams::store::BlobStore;
use crate::seams::store::local::LocalStore;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// The queues pgvault sends to or that the host reads; `pgvault init` creates them.
pub const QUEUES: &[&str] = &[BACKUP_JOBS_QUEUE, RESTORE_REQUESTS_QUEUE, RESTORE_TASKS_QUEUE];

pub struct Runtime {
    pub ctx: Ctx,
    /// The job queues, when `JobsQueue__queueServiceUri` is set.
    pub queue: Option<Arc<dyn JobQueue>>,
    azure_store: Option<Arc<azure::AzureBlobStore>>,
}

impl Runtime {
    pub async fn build(settings: Settings, progress: progress::Mode, cancel: CancellationToken) -> Result<Runtime> {
        let settings = Arc::new(settings);
        let cloud_credentials = settings.inventory.iter().any(|s| s.credentials.needs_azure());
        let needs_azure = matches!(settings.storage, StorageSettings::Azure { .. })
            || settings.queue_service_uri.is_some()
            || cloud_credentials;
        let azure = if needs_azure {
            let options = azure::client_options(settings.ca_file.as_deref(), &RetrySettings::default())?;
            let kind = match &settings.identity {
                IdentitySettings::ManagedIdentity { client_id } => {
                    CredentialKind::ManagedIdentity { client_id: client_id.clone() }
                }
                IdentitySettings::AzureCli => CredentialKind::AzureCli,
            };
            let credential = azure::credential(&kind, &options)?;
            Some((credential, options))
        } else {
            None
        };
        let mut azure_store = None;
        let store: Arc<dyn BlobStore> = match &settings.storage {
            StorageSettings::Local { dir } => {
                std::fs::create_dir_all(dir).map_err(|e| {
                    Error::permanent(format!("setting PGVAULT_LOCAL_DIR: cannot create {}: {e}", dir.display()))
                })?;
                Arc::new(LocalStore::new(dir))
            }
            StorageSettings::Azure { blob_endpoint, container } => {
                let (credential, options) = azure.clone().expect("built above");
                let s = Arc::new(azure::AzureBlobStore::new(blob_endpoint, container, credential, options).await?);
                azure_store = Some(s.clone());
                s
            }
        };
        let queue: Option<Arc<dyn JobQueue>> = match &settings.queue_service_uri {
            Some(uri) => {
                let (credential, options) = azure.clone().expect("built above");
                Some(Arc::new(azure::AzureQueue::new(uri, credential, options)?))
            }
            None => None,
        };
        let mut secrets = SettingsSecrets::new(settings.clone());
        if cloud_credentials {
            let (credential, options) = azure.clone().expect("built above");
            secrets = secrets.with_cloud(Arc::new(azure::AzureCloudSecrets::new(credential, options)));
        }
        let ctx = Ctx { secrets: Arc::new(secrets), settings, store, progress, cancel };
        Ok(Runtime { ctx, queue, azure_store })
    }

    /// The queues, or an error naming the setting.
    pub fn require_queue(&self) -> Result<Arc<dyn JobQueue>> {
        self.queue.clone().ok_or_else(|| {
            Error::permanent("setting JobsQueue__queueServiceUri: required for the queue-based functions")
        })
    }

    /// Create the backup container (Azure) and the job queues, if missing. Idempotent. In
    /// production Bicep creates them; this serves local stacks and first runs.
    pub async fn init(&self) -> Result<Vec<String>> {
        let mut done = Vec::new();
        if let Some(store) = &self.azure_store {
            store.ensure_container().await?;
        }
        done.push(format!("store {}", self.ctx.store.describe()));
        if let Some(q) = &self.queue {
            for name in QUEUES {
                for n in [name.to_string(), rejected_queue(name), format!("{name}-poison")] {
                    q.ensure(&n).await?;
                    done.push(format!("queue {n}"));
                }
            }
        }
        Ok(done)
    }
}
