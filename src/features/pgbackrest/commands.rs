//! `pgvault pgbackrest-sas ...`: rotate and freshness (operator, like the function), sync and
//! doctor (on the VM).

use super::vm::{PgBackRest, SyncRequest};
use super::{Rotator, freshness};
use crate::azure::arm::{ArmRunCommands, RunCommands};
use crate::azure::pgbackrest::{AzureDelegationKeys, AzureTokenVault};
use crate::azure::{self, CredentialKind, RetrySettings};
use crate::config::settings::{IdentitySettings, Settings};
use crate::domain::error::{Error, Result};
use crate::seams::store::BlobStore;
use azure_core::credentials::TokenCredential;
use azure_core::http::ClientOptions;
use clap::Subcommand;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use time::OffsetDateTime;

#[derive(Debug, Clone, clap::Args)]
pub struct PgBackRestArgs {
    /// The pgbackrest binary.
    #[arg(long, default_value = "pgbackrest")]
    pub pgbackrest_bin: PathBuf,
    /// An option for pgbackrest, e.g. `--pgbackrest-option=--config=/etc/pgbackrest/pgbackrest.conf`
    /// (repeatable).
    #[arg(long = "pgbackrest-option", allow_hyphen_values = true)]
    pub pgbackrest_options: Vec<String>,
    /// OS user pgbackrest runs as (default: postgres when run as root, else the current user).
    #[arg(long)]
    pub run_as: Option<String>,
}

impl PgBackRestArgs {
    fn tool(&self) -> PgBackRest {
        let run_as = self.run_as.clone().or_else(|| is_root().then(|| "postgres".to_string()));
        let run_as = run_as.filter(|u| !u.is_empty() && u != "-");
        PgBackRest { bin: self.pgbackrest_bin.clone(), options: self.pgbackrest_options.clone(), run_as }
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("Uid:")).and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

#[derive(Debug, Subcommand)]
pub enum PgbackrestSas {
    /// Rotate the SAS of every target (or one) whose token is inside its renew-before window,
    /// push it to push-delivery VMs, and check alarms: what the sas-rotator function does.
    Rotate {
        #[arg(long)]
        target: Option<String>,
        /// Also run the freshness check.
        #[arg(long)]
        freshness: bool,
    },
    /// Read each target's backup.info and report the newest full/diff/incr per stanza.
    Freshness {
        #[arg(long)]
        target: Option<String>,
    },
    /// On the VM: read the target's secret with the VM's identity and write the include file.
    Sync {
        /// Key Vault name or URL.
        #[arg(long)]
        vault: String,
        #[arg(long)]
        secret: String,
        #[arg(long, default_value_t = 1)]
        repo: u8,
        #[arg(long, default_value = super::target::DEFAULT_INCLUDE_FILE)]
        file: PathBuf,
        #[arg(long, default_value = "root")]
        owner: String,
        #[arg(long, default_value = "postgres")]
        group: String,
        #[arg(long, default_value = "0640")]
        mode: String,
        /// Afterwards run `pgbackrest --stanza=<stanza> check`.
        #[arg(long, requires = "stanza")]
        check: bool,
        #[arg(long)]
        stanza: Option<String>,
        #[command(flatten)]
        pgbackrest: PgBackRestArgs,
    },
    /// On the VM: pgBackRest version, key type in effect, token expiry, whether the repository
    /// answers, and whether the VM could switch to `auto` (2.58+).
    Doctor {
        #[arg(long, default_value = super::target::DEFAULT_INCLUDE_FILE)]
        file: PathBuf,
        #[arg(long, default_value_t = 1)]
        repo: u8,
        #[arg(long)]
        stanza: String,
        #[command(flatten)]
        pgbackrest: PgBackRestArgs,
    },
}

impl PgbackrestSas {
    /// Commands that run on the VM and need no backup store.
    pub fn is_vm_side(&self) -> bool {
        matches!(self, PgbackrestSas::Sync { .. } | PgbackrestSas::Doctor { .. })
    }
}

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

fn pick(settings: &Settings, name: Option<&str>) -> Result<Vec<super::target::Target>> {
    let all = &settings.pgbackrest_targets;
    if all.is_empty() {
        return Err(Error::permanent("setting PGVAULT_PGBACKREST_TARGETS: no pgBackRest targets are configured"));
    }
    match name {
        None => Ok(all.clone()),
        Some(n) => all
            .iter()
            .find(|t| t.name == n)
            .cloned()
            .map(|t| vec![t])
            .ok_or_else(|| Error::permanent(format!("no pgBackRest target named {n:?}"))),
    }
}

/// Rotation (and optionally freshness) over the settings' targets: the function and the CLI.
pub async fn rotate(
    settings: &Settings,
    records: Option<&dyn BlobStore>,
    target: Option<&str>,
    with_freshness: bool,
) -> Result<(serde_json::Value, bool)> {
    let targets = pick(settings, target)?;
    let (credential, options) = azure_parts(settings, &RetrySettings::default())?;
    let keys = AzureDelegationKeys::new(credential.clone(), options.clone());
    let vault = AzureTokenVault::new(credential.clone(), options.clone());
    let arm = ArmRunCommands::new(&settings.arm_endpoint, credential.clone(), &options)?;
    let r = Rotator { keys: &keys, vault: &vault, run_commands: Some(&arm as &dyn RunCommands), records };
    let now = OffsetDateTime::now_utc();
    let results = super::rotate_all(&r, &targets, now).await;
    let mut ok = results.iter().all(|v| v["ok"] == serde_json::json!(true) || v["action"] == "skip");
    let mut fresh = Vec::new();
    if with_freshness {
        for t in targets.iter().filter(|t| !t.stanzas.is_empty()) {
            let v = freshness_one(t, credential.clone(), options.clone(), records, now).await;
            ok &= v["ok"] == serde_json::json!(true);
            fresh.push(v);
        }
    }
    Ok((serde_json::json!({"rotation": results, "freshness": fresh}), ok))
}

async fn freshness_one(
    t: &super::target::Target,
    credential: Arc<dyn TokenCredential>,
    options: ClientOptions,
    records: Option<&dyn BlobStore>,
    now: OffsetDateTime,
) -> serde_json::Value {
    match azure::AzureBlobStore::new(&t.blob_endpoint, &t.container, credential, options).await {
        Ok(store) => freshness::check(&store, t, records, now).await,
        Err(e) => {
            tracing::error!(target_name = %t.name, error = %e, "cannot open the pgBackRest container");
            serde_json::json!({"target": t.name, "ok": false, "error": e.to_string()})
        }
    }
}

/// Commands that use the runtime (backup store for records).
pub async fn run(settings: &Settings, records: Option<&dyn BlobStore>, cmd: PgbackrestSas) -> Result<ExitCode> {
    match cmd {
        PgbackrestSas::Rotate { target, freshness } => {
            let (v, ok) = rotate(settings, records, target.as_deref(), freshness).await?;
            println!("{}", serde_json::to_string_pretty(&v).expect("json"));
            Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        PgbackrestSas::Freshness { target } => {
            let targets = pick(settings, target.as_deref())?;
            let (credential, options) = azure_parts(settings, &RetrySettings::default())?;
            let mut ok = true;
            let now = OffsetDateTime::now_utc();
            for t in &targets {
                let v = freshness_one(t, credential.clone(), options.clone(), records, now).await;
                ok &= v["ok"] == serde_json::json!(true);
                println!("{}", serde_json::to_string_pretty(&v).expect("json"));
            }
            Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        vm => run_vm(settings, vm).await,
    }
}

/// Commands that run on the VM.
pub async fn run_vm(settings: &Settings, cmd: PgbackrestSas) -> Result<ExitCode> {
    match cmd {
        PgbackrestSas::Sync { vault, secret, repo, file, owner, group, mode, check, stanza, pgbackrest } => {
            // A few quick retries: the timer runs again soon, and a failure must not hang.
            let retry = RetrySettings {
                max_retries: 2,
                initial_delay: std::time::Duration::from_millis(500),
                max_delay: std::time::Duration::from_secs(2),
            };
            let (credential, options) = azure_parts(settings, &retry)?;
            let secrets = azure::AzureCloudSecrets::new(credential, options);
            let req = SyncRequest {
                vault,
                secret,
                repo,
                file,
                owner,
                group,
                mode: super::target::parse_mode(&mode)?,
                check_stanza: if check { stanza } else { None },
                pgbackrest: pgbackrest.tool(),
            };
            for line in super::vm::sync(&secrets, &req, OffsetDateTime::now_utc()).await? {
                println!("{line}");
            }
            Ok(ExitCode::SUCCESS)
        }
        PgbackrestSas::Doctor { file, repo, stanza, pgbackrest } => {
            let (lines, healthy) =
                super::vm::doctor(&file, repo, &stanza, &pgbackrest.tool(), OffsetDateTime::now_utc()).await;
            for l in lines {
                println!("{l}");
            }
            Ok(if healthy { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        other => Err(Error::permanent(format!("{other:?} does not run on the VM side"))),
    }
}
