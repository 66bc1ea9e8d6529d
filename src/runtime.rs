//! Wiring: turn [`Settings`] into the adapters behind the seams. Sends nothing over the network,
//! so `pgvault serve` can bind its port first and build this right after.

use crate::azure::{self, CredentialKind, RetrySettings};
use crate::config::context::Ctx;
use crate::config::secrets::SettingsSecrets;
use crate::config::settings::{IdentitySettings, Settings, StorageSettings};
use crate::domain::error::{Error, Result};
use crate::domain::fanout::BACKUP_PARTS_QUEUE;
use crate::domain::jobs::{BACKUP_JOBS_QUEUE, rejected_queue};
use crate::features::restore::{RESTORE_REQUESTS_QUEUE, RESTORE_TASKS_QUEUE};
use crate::seams::progress;
use crate::seams::queue::JobQueue;
use crate::seams::store::BlobStore;
use crate::seams::store::local::LocalStore;
use crate::seams::store::retry::{RetryPolicy, RetryingStore};
use azure_core::credentials::TokenCredential;
use azure_core::http::ClientOptions;
use std::sync::Arc;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

/// The queues pgvault sends to or that the host reads; `pgvault init` creates them.
pub const QUEUES: &[&str] = &[BACKUP_JOBS_QUEUE, RESTORE_REQUESTS_QUEUE, RESTORE_TASKS_QUEUE, BACKUP_PARTS_QUEUE];

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
            || cloud_credentials
            || settings.encrypts();
        let azure = if needs_azure { Some(azure_parts(&settings, &sdk_retries(&settings))?) } else { None };
        let mut azure_store = None;
        let inner: Arc<dyn BlobStore> = match &settings.storage {
            StorageSettings::Local { dir } => {
                std::fs::create_dir_all(dir).map_err(|e| {
                    Error::permanent(format!("setting PGVAULT_LOCAL_DIR: cannot create {}: {e}", dir.display()))
                })?;
                Arc::new(LocalStore::new(dir))
            }
            StorageSettings::Azure { blob_endpoint, container } => {
                let (credential, _) = azure.clone().expect("built above");
                // RetryingStore (below) does the patient retries; the SDK only a few quick ones.
                let beneath =
                    RetrySettings::beneath_store_retries().limited(settings.http_retries, settings.http_timeout);
                let options = azure::client_options(settings.ca_file.as_deref(), &beneath)?;
                let s = Arc::new(azure::AzureBlobStore::new(blob_endpoint, container, credential, options).await?);
                azure_store = Some(s.clone());
                s
            }
        };
        let store = retrying(inner, &settings);
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
        let alerter = Arc::new(crate::seams::alerts::Alerter::new(
            settings.alert_webhook.as_ref().and_then(|s| url::Url::parse(s.expose()).ok()),
        ));
        // Data keys are wrapped and unwrapped in Key Vault with the same identity.
        let keys = azure.clone().map(|(credential, options)| {
            Arc::new(azure::AzureKeyWrapper::new(credential, options)) as Arc<dyn crate::seams::keys::KeyWrapper>
        });
        let ctx =
            Ctx { secrets: Arc::new(secrets), settings, store, progress, cancel, alerter, keys, queue: queue.clone() };
        Ok(Runtime { ctx, queue, azure_store })
    }

    /// The queues, or an error naming the setting.
    pub fn require_queue(&self) -> Result<Arc<dyn JobQueue>> {
        self.queue.clone().ok_or_else(|| {
            Error::permanent("setting JobsQueue__queueServiceUri: required for the queue-based functions")
        })
    }

    /// Create the backup container (Azure), the job queues and each pgBackRest target's
    /// container, if missing. Idempotent. In production Bicep creates the first two; this serves
    /// local stacks and first runs.
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
        // pgBackRest's repositories: `stanza-create` does not create the container, and a VM's
        // SAS cannot (it is container-scoped), so the function's identity does it here.
        let settings = &self.ctx.settings;
        if !settings.pgbackrest_targets.is_empty() {
            let (credential, options) = azure_parts(settings, &sdk_retries(settings))?;
            for t in &settings.pgbackrest_targets {
                let what = || format!("pgBackRest target {:?}", t.name);
                let store =
                    azure::AzureBlobStore::new(&t.blob_endpoint, &t.container, credential.clone(), options.clone())
                        .await
                        .map_err(|e| e.context(what()))?;
                store.ensure_container().await.map_err(|e| {
                    e.context(what()).with_hint(
                        "pgvault's identity needs Storage Blob Data Contributor on that account to create the \
                         container; or create it yourself and run init again",
                    )
                })?;
                done.push(format!("pgBackRest container {}/{} (target {})", t.blob_endpoint, t.container, t.name));
            }
        }
        Ok(done)
    }
}

/// Every store the features get retries transient errors, with the one policy.
fn retrying(store: Arc<dyn BlobStore>, settings: &Settings) -> Arc<dyn BlobStore> {
    let policy = RetryPolicy { max_retries: settings.storage_retries as usize, ..RetryPolicy::default() };
    Arc::new(RetryingStore::new(store, policy))
}

/// The SDK's retries and read timeout for the queues, Key Vault and the identity endpoint.
fn sdk_retries(settings: &Settings) -> RetrySettings {
    RetrySettings::default().limited(settings.http_retries, settings.http_timeout)
}

// ---- pgBackRest SAS rotation: its Azure parts, composed here like everything else ----------

/// Credential and client options from the settings.
pub fn azure_parts(settings: &Settings, retry: &RetrySettings) -> Result<(Arc<dyn TokenCredential>, ClientOptions)> {
    let options = azure::client_options(settings.ca_file.as_deref(), retry)?;
    let kind = match &settings.identity {
        IdentitySettings::ManagedIdentity { client_id } => {
            CredentialKind::ManagedIdentity { client_id: client_id.clone() }
        }
        IdentitySettings::AzureCli => CredentialKind::AzureCli,
    };
    let credential = azure::credential(&kind, &options)?;
    Ok((credential, options))
}

/// Rotation (and optionally freshness) over the settings' targets: the function and the CLI.
pub async fn rotate_pgbackrest(
    settings: &Settings,
    monitor: crate::monitor::tracked::Monitor<'_>,
    target: Option<&str>,
    with_freshness: bool,
) -> Result<crate::features::pgbackrest::RotatorRun> {
    let targets = crate::features::pgbackrest::pick(settings, target)?;
    let (credential, options) = azure_parts(settings, &sdk_retries(settings))?;
    let signer = azure::pgbackrest::AzureSasSigner::new(credential.clone(), options.clone());
    let vault = azure::pgbackrest::AzureTokenVault::new(credential.clone(), options.clone());
    let arm = azure::arm::ArmRunCommands::new(&settings.arm_endpoint, credential.clone(), &options)?;
    let r = crate::features::pgbackrest::Rotator {
        signer: &signer,
        vault: &vault,
        run_commands: Some(&arm as &dyn crate::features::pgbackrest::run_command::RunCommands),
        monitor,
    };
    let now = OffsetDateTime::now_utc();
    let mut run = crate::features::pgbackrest::RotatorRun {
        rotation: crate::features::pgbackrest::rotate_all(&r, &targets, now).await,
        freshness: Vec::new(),
    };
    if with_freshness {
        for t in targets.iter().filter(|t| !t.stanzas.is_empty()) {
            run.freshness.push(freshness_one(settings, t, credential.clone(), options.clone(), monitor, now).await);
        }
    }
    Ok(run)
}

async fn freshness_one(
    settings: &Settings,
    t: &crate::domain::pgbackrest_target::Target,
    credential: Arc<dyn TokenCredential>,
    options: ClientOptions,
    monitor: crate::monitor::tracked::Monitor<'_>,
    now: OffsetDateTime,
) -> crate::monitor::records::FreshnessDetail {
    match azure::AzureBlobStore::new(&t.blob_endpoint, &t.container, credential, options).await {
        Ok(store) => {
            let store = retrying(Arc::new(store), settings);
            crate::features::pgbackrest::freshness::check(store.as_ref(), t, monitor, now).await
        }
        Err(e) => {
            tracing::error!(target_name = %t.name, error = %e, "cannot open the pgBackRest container");
            crate::monitor::records::FreshnessDetail {
                target: t.name.clone(),
                ok: false,
                error: Some(e.to_string()),
                ..Default::default()
            }
        }
    }
}

/// Freshness of one target's stanzas, with the settings' identity (`pgvault pgbackrest-sas
/// freshness`).
pub async fn pgbackrest_freshness(
    settings: &Settings,
    t: &crate::domain::pgbackrest_target::Target,
    monitor: crate::monitor::tracked::Monitor<'_>,
    now: time::OffsetDateTime,
) -> Result<crate::monitor::records::FreshnessDetail> {
    let (credential, options) = azure_parts(settings, &sdk_retries(settings))?;
    Ok(freshness_one(settings, t, credential, options, monitor, now).await)
}

/// The VM side's Key Vault reader (`pgvault pgbackrest-sas sync`): a few quick retries, since the
/// timer runs again soon and a failure must not hang.
pub fn vm_cloud_secrets(settings: &Settings) -> Result<Arc<dyn crate::seams::credentials::CloudSecrets>> {
    let retry = RetrySettings {
        max_retries: 2,
        initial_delay: std::time::Duration::from_millis(500),
        max_delay: std::time::Duration::from_secs(2),
        ..RetrySettings::default()
    }
    .limited(settings.http_retries, settings.http_timeout);
    let (credential, options) = azure_parts(settings, &retry)?;
    Ok(Arc::new(azure::AzureCloudSecrets::new(credential, options)))
}
