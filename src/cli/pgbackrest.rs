//! `pgvault pgbackrest-sas ...`: rotate and freshness (operator, like the function), sync and
//! doctor (on the VM).

use crate::config::settings::Settings;
use crate::domain::error::{Error, Result};
use crate::features::pgbackrest::vm::{PgBackRest, SyncRequest};
use crate::features::pgbackrest::{pick, vm};
use crate::runtime;
use clap::Subcommand;
use std::path::PathBuf;
use std::process::ExitCode;
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
        #[arg(long, default_value = crate::domain::pgbackrest_target::DEFAULT_INCLUDE_FILE)]
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
        #[arg(long, default_value = crate::domain::pgbackrest_target::DEFAULT_INCLUDE_FILE)]
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

/// Commands that use the runtime (backup store for records).
pub async fn run(
    settings: &Settings,
    monitor: crate::monitor::tracked::Monitor<'_>,
    cmd: PgbackrestSas,
) -> Result<ExitCode> {
    match cmd {
        PgbackrestSas::Rotate { target, freshness } => {
            let run = runtime::rotate_pgbackrest(settings, monitor, target.as_deref(), freshness).await?;
            outln!("{}", serde_json::to_string_pretty(&run).expect("json"));
            Ok(if run.ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        PgbackrestSas::Freshness { target } => {
            let targets = pick(settings, target.as_deref())?;
            let mut ok = true;
            let now = OffsetDateTime::now_utc();
            for t in &targets {
                let v = runtime::pgbackrest_freshness(settings, t, monitor, now).await?;
                ok &= v.ok;
                outln!("{}", serde_json::to_string_pretty(&v).expect("json"));
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
            let secrets = runtime::vm_cloud_secrets(settings)?;
            let req = SyncRequest {
                vault,
                secret,
                repo,
                file,
                owner,
                group,
                mode: crate::domain::pgbackrest_target::parse_mode(&mode)?,
                check_stanza: if check { stanza } else { None },
                pgbackrest: pgbackrest.tool(),
            };
            for line in vm::sync(secrets.as_ref(), &req, OffsetDateTime::now_utc()).await? {
                outln!("{line}");
            }
            Ok(ExitCode::SUCCESS)
        }
        PgbackrestSas::Doctor { file, repo, stanza, pgbackrest } => {
            let (lines, healthy) =
                vm::doctor(&file, repo, &stanza, &pgbackrest.tool(), OffsetDateTime::now_utc()).await;
            for l in lines {
                outln!("{l}");
            }
            Ok(if healthy { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        other => Err(Error::permanent(format!("{other:?} does not run on the VM side"))),
    }
}
