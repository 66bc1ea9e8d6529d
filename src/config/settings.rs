//! One typed settings struct, read once from the environment (the Functions app settings) and
//! validated at start-up. Every error names the setting.
//!
//! A value that still holds a Key Vault reference (`@Microsoft.KeyVault(...)`) is refused: the
//! platform passes the reference text on when it could not resolve it (the identity lacks the
//! role, the vault is not reachable yet), and that text must never pass for the value.
//!
//! The README's settings table and `local.settings.sample.json` list the same names; a test
//! checks all three agree with [`ALL`].

use crate::domain::error::{Error, Result};
pub use crate::domain::inventory::{CredentialRef, Server, TlsMode, key_vault_url, parse_inventory};
use crate::domain::manifest::Compression;
use std::collections::HashMap;
use std::path::PathBuf;

/// Every setting pgvault reads, with a one-line description (the README table is checked
/// against this list).
pub const ALL: &[(&str, &str)] = &[
    ("PGVAULT_INVENTORY", "the server inventory as JSON (or use PGVAULT_INVENTORY_FILE)"),
    ("PGVAULT_INVENTORY_FILE", "path of a file holding the inventory JSON"),
    ("PGVAULT_STORAGE", "where backups go: `azure` or `local` (default `local`)"),
    ("PGVAULT_LOCAL_DIR", "directory of the local store (default `.pgvault-local/store`)"),
    ("PGVAULT_BLOB_ENDPOINT", "Blob service URL of the backup account, e.g. `https://acct.blob.core.windows.net`"),
    ("PGVAULT_BACKUP_CONTAINER", "container for dumps and manifests (default `pgvault-backups`)"),
    ("JobsQueue__queueServiceUri", "Queue service URL of the job queues (identity-based connection `JobsQueue`)"),
    ("JobsQueue__credential", "`managedidentity`: read by the Functions host for the queue triggers"),
    ("JobsQueue__clientId", "client id of the user-assigned identity, for the host's queue triggers"),
    ("PGVAULT_IDENTITY", "`managed-identity` (default) or `azure-cli` for local runs"),
    ("PGVAULT_IDENTITY_CLIENT_ID", "client id of a user-assigned managed identity (default: system-assigned)"),
    ("PGVAULT_CA_FILE", "extra CA certificates (PEM) trusted for Azure endpoints and PostgreSQL"),
    ("PGVAULT_BACKUP_SCHEDULE", "NCRONTAB schedule (UTC) of `backup-scheduler`, e.g. `0 0 2 * * *`"),
    ("PGVAULT_COMPRESSION", "`zstd:<1-19>` (default `zstd:3`), `none`, or `pg_dump`"),
    ("PGVAULT_ZSTD_THREADS", "zstd worker threads (default 2)"),
    ("PGVAULT_BLOCK_SIZE_MIB", "initial block size in MiB (default 8); grows for very long streams"),
    (
        "PGVAULT_BLOCKS_IN_FLIGHT",
        "blocks uploaded concurrently (default 4); memory is about (this + 2) times the block size, plus about 8 MiB per zstd thread",
    ),
    (
        "PGVAULT_MAX_DUMPS_PER_SERVER",
        "the most backup jobs that dump one PostgreSQL server at once, across all instances (default 2)",
    ),
    (
        "PGVAULT_DUMP_SLOT_RETRY_SECONDS",
        "seconds a backup job that found all its server's dump slots taken waits on the queue before its next try (default 120; up to twice this, jittered)",
    ),
    ("PGVAULT_PG_BIN_DIRS", "`:`-separated PostgreSQL bin directories (default: /usr/lib/postgresql/*/bin)"),
    ("PGVAULT_ROW_COUNTS", "`exact` (default, count(*) in pg_dump's snapshot), `estimate`, or `off`"),
    (
        "PGVAULT_RESTORE_SCRATCH_DIR",
        "where a parallel restore (`jobs` > 1) keeps its local copy of the archive (default: the system temp dir)",
    ),
    (
        "PGVAULT_RESTORE_SCRATCH_RESERVE_MIB",
        "free space (MiB) that must remain in the scratch dir after that copy, else the restore streams (default 1024)",
    ),
    (
        "PGVAULT_PGBACKREST_TARGETS",
        "pgBackRest targets whose SAS `sas-rotator` rotates, as JSON (see docs/vm-pgbackrest.md)",
    ),
    ("PGVAULT_SAS_ROTATOR_SCHEDULE", "NCRONTAB schedule (UTC) of `sas-rotator`, e.g. `0 0 * * * *` (hourly)"),
    ("PGVAULT_ARM_ENDPOINT", "Azure Resource Manager URL for push delivery (default `https://management.azure.com`)"),
    ("PGVAULT_ALERT_WEBHOOK", "secret: incoming-webhook URL (Teams/Slack) that alerts are POSTed to; never logged"),
    (
        "PGVAULT_RETENTION_SCHEDULE",
        "NCRONTAB schedule (UTC) of `retention` (prune, then RPO check), e.g. `0 30 * * * *`",
    ),
    (
        "PGVAULT_RPO_MARGIN_MINUTES",
        "minutes a scheduled backup may be late before a missed-schedule alert (default 60)",
    ),
    ("PGVAULT_DRILL_SCHEDULE", "NCRONTAB schedule (UTC) of `restore-drill`, e.g. `0 0 5 * * 0`"),
    ("PGVAULT_DRILL_SERVER", "inventory server that restore drills restore into (a scratch server)"),
    ("PGVAULT_JOB_RECORD_DAYS", "days finished job records are kept (default 400)"),
    (
        "PGVAULT_TIER_AFTER_DAYS",
        "retention moves data blobs of backups older than this many days to `PGVAULT_TIER` (unset: no tiering by pgvault)",
    ),
    ("PGVAULT_TIER", "access tier of that move: `cool` (default), `cold` or `archive`"),
    ("PGVAULT_LOG", "log filter, e.g. `info` or `pgvault=debug` (default `info`)"),
    ("PGVAULT_LOG_FORMAT", "`json` (default under the Functions host) or `text`"),
    ("FUNCTIONS_CUSTOMHANDLER_PORT", "set by the Functions host: the port `pgvault serve` listens on"),
];

/// Azure Resource Manager of the public cloud (`PGVAULT_ARM_ENDPOINT` overrides it).
pub const DEFAULT_ARM_ENDPOINT: &str = "https://management.azure.com";

#[derive(Debug, Clone, PartialEq)]
pub enum StorageSettings {
    Local { dir: PathBuf },
    Azure { blob_endpoint: String, container: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowCountMode {
    Exact,
    Estimate,
    Off,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentitySettings {
    ManagedIdentity { client_id: Option<String> },
    AzureCli,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub inventory: Vec<Server>,
    pub storage: StorageSettings,
    pub queue_service_uri: Option<String>,
    pub identity: IdentitySettings,
    pub ca_file: Option<PathBuf>,
    pub backup_schedule: Option<String>,
    pub compression: Compression,
    pub zstd_threads: u32,
    pub block_size: usize,
    pub blocks_in_flight: usize,
    /// Dump slots per server (`backup-worker` claims one before it dumps).
    pub max_dumps_per_server: u32,
    /// Base delay of a backup job put back on the queue for want of a slot.
    pub dump_slot_retry_secs: u32,
    pub pg_bin_dirs: Vec<PathBuf>,
    pub row_counts: RowCountMode,
    /// Where a parallel restore downloads its archive.
    pub restore_scratch_dir: PathBuf,
    /// Bytes that must stay free in `restore_scratch_dir` after the download.
    pub restore_scratch_reserve: u64,
    /// VM-hosted pgBackRest repositories whose SAS `sas-rotator` rotates.
    pub pgbackrest_targets: Vec<crate::domain::pgbackrest_target::Target>,
    pub sas_rotator_schedule: Option<String>,
    pub arm_endpoint: String,
    /// Where alerts are POSTed (a secret: the token is in the URL).
    pub alert_webhook: Option<crate::domain::secret::Secret>,
    pub retention_schedule: Option<String>,
    pub rpo_margin: time::Duration,
    pub drill_schedule: Option<String>,
    pub drill_server: Option<String>,
    pub job_record_days: u64,
    /// Retention moves the data blobs of backups older than this to `tier` (None: off).
    pub tier_after_days: Option<u32>,
    pub tier: crate::seams::store::Tier,
    pub log_filter: String,
    pub log_format: Option<LogFormat>,
    pub handler_port: Option<u16>,
    /// The raw environment, for credential references such as `password_env`.
    env: HashMap<String, String>,
}

fn bad(name: &str, why: impl std::fmt::Display) -> Error {
    Error::permanent(format!("setting {name}: {why}"))
}

impl Settings {
    /// Read from the process environment.
    pub fn from_env() -> Result<Self> {
        Self::from_map(std::env::vars().collect())
    }

    /// Read from a map of settings (the environment, or a `local.settings.json` `Values`).
    pub fn from_map(env: HashMap<String, String>) -> Result<Self> {
        for (name, _) in ALL {
            if let Some(v) = env.get(*name) {
                refuse_key_vault_reference(name, v)?;
            }
        }
        let get = |k: &str| env.get(k).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        let inventory_json = match (get("PGVAULT_INVENTORY"), get("PGVAULT_INVENTORY_FILE")) {
            (Some(_), Some(_)) => {
                return Err(bad(
                    "PGVAULT_INVENTORY",
                    "set either PGVAULT_INVENTORY or PGVAULT_INVENTORY_FILE, not both",
                ));
            }
            (Some(j), None) => Some(("PGVAULT_INVENTORY", j)),
            (None, Some(path)) => Some((
                "PGVAULT_INVENTORY_FILE",
                std::fs::read_to_string(&path)
                    .map_err(|e| bad("PGVAULT_INVENTORY_FILE", format!("cannot read {path}: {e}")))?,
            )),
            (None, None) => None,
        };
        let inventory = match inventory_json {
            Some((name, json)) => parse_inventory(&json).map_err(|e| bad(name, e))?,
            None => Vec::new(),
        };
        // Settings the inventory names hold passwords: refused the same way, at start-up rather
        // than at the first job.
        for server in &inventory {
            if let CredentialRef::PasswordEnv(name) = &server.credentials
                && let Some(v) = env.get(name)
            {
                refuse_key_vault_reference(name, v)?;
            }
        }

        let storage = match get("PGVAULT_STORAGE").as_deref().unwrap_or("local") {
            "local" => StorageSettings::Local {
                dir: get("PGVAULT_LOCAL_DIR").unwrap_or_else(|| ".pgvault-local/store".into()).into(),
            },
            "azure" => {
                let blob_endpoint = get("PGVAULT_BLOB_ENDPOINT")
                    .ok_or_else(|| bad("PGVAULT_BLOB_ENDPOINT", "required when PGVAULT_STORAGE=azure"))?;
                check_https_url("PGVAULT_BLOB_ENDPOINT", &blob_endpoint)?;
                let container = get("PGVAULT_BACKUP_CONTAINER").unwrap_or_else(|| "pgvault-backups".into());
                check_container_name("PGVAULT_BACKUP_CONTAINER", &container)?;
                StorageSettings::Azure { blob_endpoint: blob_endpoint.trim_end_matches('/').to_string(), container }
            }
            other => return Err(bad("PGVAULT_STORAGE", format!("{other:?} is neither `azure` nor `local`"))),
        };

        let queue_service_uri = get("JobsQueue__queueServiceUri");
        if let Some(q) = &queue_service_uri {
            check_https_url("JobsQueue__queueServiceUri", q)?;
        }
        let client_id = get("PGVAULT_IDENTITY_CLIENT_ID");
        let identity = match get("PGVAULT_IDENTITY").as_deref().unwrap_or("managed-identity") {
            "managed-identity" => IdentitySettings::ManagedIdentity { client_id },
            "azure-cli" => IdentitySettings::AzureCli,
            other => {
                return Err(bad(
                    "PGVAULT_IDENTITY",
                    format!("{other:?} is neither `managed-identity` nor `azure-cli`"),
                ));
            }
        };
        let ca_file = get("PGVAULT_CA_FILE").map(PathBuf::from);
        if let Some(ca) = &ca_file
            && !ca.is_file()
        {
            return Err(bad("PGVAULT_CA_FILE", format!("{} is not a readable file", ca.display())));
        }
        let backup_schedule = get("PGVAULT_BACKUP_SCHEDULE");
        if let Some(s) = &backup_schedule {
            crate::domain::schedule::parse_ncrontab(s).map_err(|e| bad("PGVAULT_BACKUP_SCHEDULE", e))?;
        }
        let compression = Compression::parse(get("PGVAULT_COMPRESSION").as_deref().unwrap_or("zstd:3"))
            .map_err(|e| bad("PGVAULT_COMPRESSION", e))?;
        let zstd_threads = number(&get, "PGVAULT_ZSTD_THREADS", 2, 0, 64)? as u32;
        let block_size = number(&get, "PGVAULT_BLOCK_SIZE_MIB", 8, 1, 4000)? as usize * 1024 * 1024;
        let blocks_in_flight = number(&get, "PGVAULT_BLOCKS_IN_FLIGHT", 4, 1, 64)? as usize;
        let max_dumps_per_server = number(&get, "PGVAULT_MAX_DUMPS_PER_SERVER", 2, 1, 64)? as u32;
        let dump_slot_retry_secs = number(&get, "PGVAULT_DUMP_SLOT_RETRY_SECONDS", 120, 1, 3600)? as u32;
        let pg_bin_dirs = match get("PGVAULT_PG_BIN_DIRS") {
            Some(dirs) => dirs.split(':').filter(|d| !d.is_empty()).map(PathBuf::from).collect(),
            None => crate::seams::pg::default_bin_dirs(),
        };
        let row_counts = match get("PGVAULT_ROW_COUNTS").as_deref().unwrap_or("exact") {
            "exact" => RowCountMode::Exact,
            "estimate" => RowCountMode::Estimate,
            "off" => RowCountMode::Off,
            other => return Err(bad("PGVAULT_ROW_COUNTS", format!("{other:?} is not `exact`, `estimate` or `off`"))),
        };
        let restore_scratch_dir =
            get("PGVAULT_RESTORE_SCRATCH_DIR").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
        let restore_scratch_reserve = number(&get, "PGVAULT_RESTORE_SCRATCH_RESERVE_MIB", 1024, 0, 1 << 30)? << 20;
        let pgbackrest_targets = match get("PGVAULT_PGBACKREST_TARGETS") {
            Some(j) => {
                crate::domain::pgbackrest_target::parse_targets(&j).map_err(|e| bad("PGVAULT_PGBACKREST_TARGETS", e))?
            }
            None => Vec::new(),
        };
        let sas_rotator_schedule = get("PGVAULT_SAS_ROTATOR_SCHEDULE");
        if let Some(s) = &sas_rotator_schedule {
            crate::domain::schedule::parse_ncrontab(s).map_err(|e| bad("PGVAULT_SAS_ROTATOR_SCHEDULE", e))?;
        }
        let arm_endpoint = get("PGVAULT_ARM_ENDPOINT").unwrap_or_else(|| DEFAULT_ARM_ENDPOINT.into());
        check_https_url("PGVAULT_ARM_ENDPOINT", &arm_endpoint)?;
        let alert_webhook = match get("PGVAULT_ALERT_WEBHOOK") {
            Some(u) => match url::Url::parse(&u) {
                Ok(p) if matches!(p.scheme(), "https" | "http") => Some(crate::domain::secret::Secret::new(u)),
                // The value is a secret: name the setting, never echo it.
                _ => return Err(bad("PGVAULT_ALERT_WEBHOOK", "is not an http(s) URL")),
            },
            None => None,
        };
        let retention_schedule = get("PGVAULT_RETENTION_SCHEDULE");
        let drill_schedule = get("PGVAULT_DRILL_SCHEDULE");
        for (name, v) in
            [("PGVAULT_RETENTION_SCHEDULE", &retention_schedule), ("PGVAULT_DRILL_SCHEDULE", &drill_schedule)]
        {
            if let Some(s) = v {
                crate::domain::schedule::parse_ncrontab(s).map_err(|e| bad(name, e))?;
            }
        }
        let rpo_margin = time::Duration::minutes(number(&get, "PGVAULT_RPO_MARGIN_MINUTES", 60, 0, 10_000_000)? as i64);
        let drill_server = get("PGVAULT_DRILL_SERVER");
        if let Some(d) = &drill_server
            && !inventory.iter().any(|s| &s.name == d)
        {
            return Err(bad("PGVAULT_DRILL_SERVER", format!("{d:?} is not a server of the inventory")));
        }
        let job_record_days = number(&get, "PGVAULT_JOB_RECORD_DAYS", 400, 1, 100_000)?;
        let tier_after_days = match get("PGVAULT_TIER_AFTER_DAYS") {
            None => None,
            Some(_) => Some(number(&get, "PGVAULT_TIER_AFTER_DAYS", 0, 0, 100_000)? as u32),
        };
        let tier = match get("PGVAULT_TIER").as_deref().map(crate::seams::store::Tier::parse) {
            None => crate::seams::store::Tier::Cool,
            Some(Some(t)) if t != crate::seams::store::Tier::Hot => t,
            Some(_) => return Err(bad("PGVAULT_TIER", "is not `cool`, `cold` or `archive`")),
        };
        let log_format = match get("PGVAULT_LOG_FORMAT").as_deref() {
            None => None,
            Some("json") => Some(LogFormat::Json),
            Some("text") => Some(LogFormat::Text),
            Some(other) => return Err(bad("PGVAULT_LOG_FORMAT", format!("{other:?} is neither `json` nor `text`"))),
        };
        let handler_port = match get("FUNCTIONS_CUSTOMHANDLER_PORT") {
            None => None,
            Some(p) => Some(
                p.parse::<u16>().map_err(|_| bad("FUNCTIONS_CUSTOMHANDLER_PORT", format!("{p:?} is not a port")))?,
            ),
        };
        Ok(Settings {
            inventory,
            storage,
            queue_service_uri,
            identity,
            ca_file,
            backup_schedule,
            compression,
            zstd_threads,
            block_size,
            blocks_in_flight,
            max_dumps_per_server,
            dump_slot_retry_secs,
            pg_bin_dirs,
            row_counts,
            restore_scratch_dir,
            restore_scratch_reserve,
            pgbackrest_targets,
            sas_rotator_schedule,
            arm_endpoint,
            alert_webhook,
            retention_schedule,
            rpo_margin,
            drill_schedule,
            drill_server,
            job_record_days,
            tier_after_days,
            tier,
            log_filter: get("PGVAULT_LOG").unwrap_or_else(|| "info".into()),
            log_format,
            handler_port,
            env,
        })
    }

    pub fn server(&self, name: &str) -> Option<&Server> {
        self.inventory.iter().find(|s| s.name == name)
    }

    /// An environment value named by the inventory (e.g. `password_env`).
    pub fn env_value(&self, name: &str) -> Option<&str> {
        self.env.get(name).map(String::as_str)
    }

    /// Bin directories for a server: its own, then the global ones.
    pub fn bin_dirs_for(&self, server: &Server) -> Vec<PathBuf> {
        server.pg_bin_dirs.iter().chain(self.pg_bin_dirs.iter()).cloned().collect()
    }
}

/// The text App Service leaves in a setting whose Key Vault reference it could not resolve.
const KEY_VAULT_REFERENCE: &str = "@microsoft.keyvault(";

/// Refuse a value that is still a Key Vault reference. The reference names a vault and a secret,
/// not a secret value, so it may be shown.
fn refuse_key_vault_reference(name: &str, value: &str) -> Result<()> {
    let v = value.trim();
    if !v.to_ascii_lowercase().starts_with(KEY_VAULT_REFERENCE) {
        return Ok(());
    }
    let shown: String = v.chars().take(200).collect();
    Err(bad(name, format!("holds the unresolved Key Vault reference {shown}: the platform could not fetch the secret"))
        .with_hint(
            "give the app's identity Key Vault Secrets User on that vault, make sure the vault is reachable (its private endpoint and DNS zone exist) and the secret exists, then restart the app so the platform resolves its references again (otherwise it tries only every 24 hours)",
        ))
}

fn number(get: &impl Fn(&str) -> Option<String>, name: &str, default: u64, min: u64, max: u64) -> Result<u64> {
    match get(name) {
        None => Ok(default),
        Some(v) => match v.parse::<u64>() {
            Ok(n) if (min..=max).contains(&n) => Ok(n),
            _ => Err(bad(name, format!("{v:?} is not a whole number from {min} to {max}"))),
        },
    }
}

fn check_https_url(name: &str, value: &str) -> Result<()> {
    match url::Url::parse(value) {
        Ok(u) if u.scheme() == "https" && u.host().is_some() => Ok(()),
        Ok(_) => Err(bad(name, format!("{value:?} must be an https:// URL"))),
        Err(e) => Err(bad(name, format!("{value:?} is not a URL: {e}"))),
    }
}

fn check_container_name(name: &str, value: &str) -> Result<()> {
    let ok = (3..=63).contains(&value.len())
        && value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !value.starts_with('-')
        && !value.ends_with('-')
        && !value.contains("--");
    if ok { Ok(()) } else { Err(bad(name, format!("{value:?} is not a valid container name (3-63 of a-z, 0-9, -)"))) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults() {
        let s = Settings::from_map(map(&[])).unwrap();
        assert_eq!(s.storage, StorageSettings::Local { dir: ".pgvault-local/store".into() });
        assert_eq!(s.compression, Compression::Zstd { level: 3 });
        assert_eq!(s.block_size, 8 << 20);
        assert_eq!(s.row_counts, RowCountMode::Exact);
        assert!(s.inventory.is_empty());
    }

    #[test]
    fn errors_name_the_setting() {
        let cases = [
            ("PGVAULT_STORAGE", "s3"),
            ("PGVAULT_COMPRESSION", "gzip"),
            ("PGVAULT_BLOCK_SIZE_MIB", "0"),
            ("PGVAULT_BLOCKS_IN_FLIGHT", "many"),
            ("PGVAULT_INVENTORY", "[{\"name\":\"a\"}]"),
            ("PGVAULT_ROW_COUNTS", "some"),
            ("PGVAULT_RESTORE_SCRATCH_RESERVE_MIB", "-1"),
            ("PGVAULT_BACKUP_SCHEDULE", "every day"),
            ("FUNCTIONS_CUSTOMHANDLER_PORT", "99999"),
            ("PGVAULT_CA_FILE", "/nonexistent/ca.pem"),
        ];
        for (k, v) in cases {
            let e = Settings::from_map(map(&[(k, v)])).unwrap_err();
            assert!(e.to_string().contains(k), "{k}={v}: {e}");
        }
        let e = Settings::from_map(map(&[("PGVAULT_STORAGE", "azure")])).unwrap_err();
        assert!(e.to_string().contains("PGVAULT_BLOB_ENDPOINT"), "{e}");
        let e = Settings::from_map(map(&[
            ("PGVAULT_STORAGE", "azure"),
            ("PGVAULT_BLOB_ENDPOINT", "http://acct.blob.core.windows.net"),
        ]))
        .unwrap_err();
        assert!(e.to_string().contains("https"), "{e}");
    }

    #[test]
    fn unresolved_key_vault_references_are_refused_naming_the_setting() {
        let reference = "@Microsoft.KeyVault(VaultName=pgvault-db-abc;SecretName=webhook)";
        // The reference in a setting pgvault reads: refused at start-up, never taken as the value
        // (here it would even have been "valid": the webhook check only needs a URL).
        for name in ["PGVAULT_ALERT_WEBHOOK", "PGVAULT_BLOB_ENDPOINT", "PGVAULT_INVENTORY"] {
            let e = Settings::from_map(map(&[(name, reference)])).unwrap_err();
            let text = e.to_string();
            assert!(e.is_permanent());
            assert!(text.starts_with(&format!("setting {name}: holds the unresolved Key Vault reference")), "{text}");
            assert!(text.contains("VaultName=pgvault-db-abc;SecretName=webhook"), "{text}");
            assert!(text.contains("\nHINT: "), "{text}");
        }
        // Any case, and with blanks around it, as the platform may pass it.
        let e = Settings::from_map(map(&[(
            "PGVAULT_ALERT_WEBHOOK",
            "  @microsoft.keyvault(SecretUri=https://v/secrets/s)",
        )]))
        .unwrap_err();
        assert!(e.to_string().contains("setting PGVAULT_ALERT_WEBHOOK:"), "{e}");
        // A password setting the inventory names is checked at start-up too.
        let inv = r#"[{"name":"a","host":"h","user":"u","credentials":{"password_env":"PG_A_PASSWORD"}}]"#;
        let e = Settings::from_map(map(&[("PGVAULT_INVENTORY", inv), ("PG_A_PASSWORD", reference)])).unwrap_err();
        assert!(e.to_string().starts_with("setting PG_A_PASSWORD: holds the unresolved"), "{e}");
        // Resolved values pass; a setting pgvault does not read is none of its business.
        let s = Settings::from_map(map(&[
            ("PGVAULT_ALERT_WEBHOOK", "https://hooks.example/x"),
            ("PGVAULT_INVENTORY", inv),
            ("PG_A_PASSWORD", "resolved"),
            ("SOMETHING_ELSE", reference),
        ]))
        .unwrap();
        assert!(s.alert_webhook.is_some());
    }

    #[test]
    fn dump_slots() {
        let s = Settings::from_map(map(&[])).unwrap();
        assert_eq!((s.max_dumps_per_server, s.dump_slot_retry_secs), (2, 120));
        let s = Settings::from_map(map(&[
            ("PGVAULT_MAX_DUMPS_PER_SERVER", "5"),
            ("PGVAULT_DUMP_SLOT_RETRY_SECONDS", "30"),
        ]))
        .unwrap();
        assert_eq!((s.max_dumps_per_server, s.dump_slot_retry_secs), (5, 30));
        for (k, v) in [
            ("PGVAULT_MAX_DUMPS_PER_SERVER", "0"),
            ("PGVAULT_MAX_DUMPS_PER_SERVER", "65"),
            ("PGVAULT_DUMP_SLOT_RETRY_SECONDS", "0"),
            ("PGVAULT_DUMP_SLOT_RETRY_SECONDS", "soon"),
        ] {
            let e = Settings::from_map(map(&[(k, v)])).unwrap_err();
            assert!(e.to_string().starts_with(&format!("setting {k}: ")), "{k}={v}: {e}");
        }
    }

    #[test]
    fn inventory_rules() {
        let ok = r#"[{"name":"a","host":"h","user":"u","exclude":["x"],"credentials":{"password_env":"PW"}}]"#;
        let inv = parse_inventory(ok).unwrap();
        assert_eq!(inv[0].port, 5432);
        assert_eq!(inv[0].tls, TlsMode::VerifyFull);
        assert_eq!(inv[0].credentials, CredentialRef::PasswordEnv("PW".into()));
        let dup = r#"[{"name":"a","host":"h","user":"u"},{"name":"a","host":"h","user":"u"}]"#;
        assert!(parse_inventory(dup).unwrap_err().to_string().contains("twice"));
        let both = r#"[{"name":"a","host":"h","user":"u","include":["x"],"exclude":["y"]}]"#;
        assert!(parse_inventory(both).unwrap_err().to_string().contains("both include and exclude"));
        let typo = r#"[{"name":"a","host":"h","user":"u","exlude":["y"]}]"#;
        assert!(parse_inventory(typo).unwrap_err().to_string().contains("exlude"));
    }

    #[test]
    fn key_vault_and_entra_credentials() {
        let kv = r#"[{"name":"a","host":"h","user":"u","credentials":{"key_vault":{"vault":"my-vault","secret":"pg-a"}}},
                     {"name":"b","host":"h","user":"u","credentials":{"key_vault":{"vault":"https://127.0.0.1:8443/","secret":"pg-b"}}},
                     {"name":"c","host":"h","user":"mi-name","credentials":"entra"}]"#;
        let inv = parse_inventory(kv).unwrap();
        assert_eq!(inv[0].credentials, CredentialRef::KeyVault { vault: "my-vault".into(), secret: "pg-a".into() });
        assert_eq!(key_vault_url("my-vault").unwrap(), "https://my-vault.vault.azure.net");
        assert_eq!(key_vault_url("https://127.0.0.1:8443/").unwrap(), "https://127.0.0.1:8443");
        assert_eq!(inv[2].credentials, CredentialRef::Entra);
        assert!(inv.iter().all(|s| s.credentials.needs_azure()));
        for (bad, why) in [
            (r#"{"key_vault":{"vault":"http://v.example","secret":"s"}}"#, "https://"),
            (r#"{"key_vault":{"vault":"v","secret":"s"}}"#, "vault name"),
            (r#"{"key_vault":{"vault":"good-vault","secret":"no_underscores"}}"#, "secret name"),
            (r#"{"key_vault":{"vault":"good-vault","secret":"s","version":"x"}}"#, "version"),
        ] {
            let json = format!(r#"[{{"name":"a","host":"h","user":"u","credentials":{bad}}}]"#);
            let e = parse_inventory(&json).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
        let plain = r#"[{"name":"a","host":"h","user":"u","tls":"disable","credentials":"entra"}]"#;
        assert!(parse_inventory(plain).unwrap_err().to_string().contains("needs TLS"));
    }
}
