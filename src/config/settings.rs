//! One typed settings struct, read once from the environment (the Functions app settings) and
//! validated at start-up. Every error names the setting; the value of a secret setting is never
//! echoed, in an error or in `Debug` output.
//!
//! Every setting is defined once, in [`ALL`] (`settings/table.rs`): name, secret or not,
//! default, range or allowed values, doc line. The parser below takes its defaults and bounds
//! from there, and reads no setting the table does not list. The README's settings table is
//! rendered from it ([`markdown_table`]) and `local.settings.sample.json` lists every name; a
//! test checks both.
//!
//! A value that still holds a Key Vault reference (`@Microsoft.KeyVault(...)`) is refused: the
//! platform passes the reference text on when it could not resolve it (the identity lacks the
//! role, the vault is not reachable yet), and that text must never pass for the value.

mod table;

use crate::domain::error::{Error, Result};
pub use crate::domain::inventory::{CredentialRef, Server, TlsMode, key_vault_url, parse_inventory};
use crate::domain::manifest::Compression;
use std::collections::HashMap;
use std::path::PathBuf;
pub use table::{ALL, Allowed, Fallback, Setting, find, markdown_table};

/// Azure Resource Manager of the public cloud (`PGVAULT_ARM_ENDPOINT` overrides it).
pub const DEFAULT_ARM_ENDPOINT: &str = "https://management.azure.com";

#[derive(Debug, Clone, PartialEq)]
pub enum StorageSettings {
    Local { dir: PathBuf },
    Azure { blob_endpoint: String, container: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowCountMode {
    /// COPY rows counted in the archive as it streams by (the default): exact, no server work.
    Stream,
    /// `count(*)` of every table in pg_dump's snapshot, beside the dump.
    Exact,
    /// Both, and the backup fails if they disagree.
    CrossCheck,
    Estimate,
    Off,
}

/// Where the parts of a backup in parts run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartsRun {
    /// In the coordinator's own process, `PGVAULT_BACKUP_JOBS` at once (the default).
    Process,
    /// One message per part on `backup-parts`, run by other instances (function `backup-parts`)
    /// while the coordinator holds the snapshot and waits for their results.
    Queue,
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
    /// The Key Vault key that wraps data keys (`PGVAULT_ENCRYPTION_KEY`); a server's
    /// `encryption_key` overrides it ([`Settings::encryption_key_for`]).
    pub encryption_key: Option<String>,
    pub zstd_threads: u32,
    pub block_size: usize,
    pub blocks_in_flight: usize,
    /// Dump slots per server (`backup-worker` claims one before it dumps).
    pub max_dumps_per_server: u32,
    /// Base delay of a backup job put back on the queue for want of a slot.
    pub dump_slot_retry_secs: u32,
    /// Retries of a storage call that failed transiently (`RetryingStore`).
    pub storage_retries: u32,
    /// The Azure SDK's retries of one request (queues, Key Vault, identity).
    pub http_retries: u32,
    /// Longest an Azure request waits for the next byte of its answer.
    pub http_timeout: std::time::Duration,
    pub pg_bin_dirs: Vec<PathBuf>,
    pub row_counts: RowCountMode,
    /// Databases larger than this many bytes are backed up in parts (`None`: never).
    pub parallel_above: Option<u64>,
    /// Parts of one backup in parts that run at once.
    pub backup_jobs: usize,
    /// Where the parts of a backup in parts run (`PGVAULT_PARTS_RUN`).
    pub parts_run: PartsRun,
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
    /// NCRONTAB schedule of the `doctor` timer (what the host reads; validated here).
    pub doctor_schedule: String,
    pub drill_server: Option<String>,
    pub job_record_days: u64,
    /// Retention moves the data blobs of backups older than this to `tier` (None: off).
    pub tier_after_days: Option<u32>,
    pub tier: crate::seams::store::Tier,
    pub log_filter: String,
    pub log_format: Option<LogFormat>,
    pub handler_port: Option<u16>,
    /// The raw environment, for credential references such as `password_env`.
    env: Env,
}

/// The raw environment. It holds secrets (passwords that `password_env` names, the webhook), so
/// its `Debug` shows none of it.
#[derive(Clone)]
struct Env(HashMap<String, String>);

impl std::fmt::Debug for Env {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Env(**redacted**)")
    }
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
        for s in ALL {
            if let Some(v) = env.get(s.name) {
                refuse_key_vault_reference(s.name, v)?;
            }
        }
        let r = Reader { env: &env };
        let inventory_json = match (r.set("PGVAULT_INVENTORY"), r.set("PGVAULT_INVENTORY_FILE")) {
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

        let storage = match r.value("PGVAULT_STORAGE").as_str() {
            "local" => StorageSettings::Local { dir: r.value("PGVAULT_LOCAL_DIR").into() },
            "azure" => {
                let blob_endpoint = r
                    .set("PGVAULT_BLOB_ENDPOINT")
                    .ok_or_else(|| bad("PGVAULT_BLOB_ENDPOINT", "required when PGVAULT_STORAGE=azure"))?;
                check_https_url("PGVAULT_BLOB_ENDPOINT", &blob_endpoint)?;
                let container = r.value("PGVAULT_BACKUP_CONTAINER");
                check_container_name("PGVAULT_BACKUP_CONTAINER", &container)?;
                StorageSettings::Azure { blob_endpoint: blob_endpoint.trim_end_matches('/').to_string(), container }
            }
            other => return Err(r.not_allowed("PGVAULT_STORAGE", other)),
        };

        let queue_service_uri = r.set("JobsQueue__queueServiceUri");
        if let Some(q) = &queue_service_uri {
            check_https_url("JobsQueue__queueServiceUri", q)?;
        }
        let client_id = r.set("PGVAULT_IDENTITY_CLIENT_ID");
        let identity = match r.value("PGVAULT_IDENTITY").as_str() {
            "managed-identity" => IdentitySettings::ManagedIdentity { client_id },
            "azure-cli" => IdentitySettings::AzureCli,
            other => return Err(r.not_allowed("PGVAULT_IDENTITY", other)),
        };
        let ca_file = r.set("PGVAULT_CA_FILE").map(PathBuf::from);
        if let Some(ca) = &ca_file
            && !ca.is_file()
        {
            return Err(bad("PGVAULT_CA_FILE", format!("{} is not a readable file", ca.display())));
        }
        let backup_schedule = r.set("PGVAULT_BACKUP_SCHEDULE");
        if let Some(s) = &backup_schedule {
            crate::domain::schedule::parse_ncrontab(s).map_err(|e| bad("PGVAULT_BACKUP_SCHEDULE", e))?;
        }
        let compression =
            Compression::parse(&r.value("PGVAULT_COMPRESSION")).map_err(|e| bad("PGVAULT_COMPRESSION", e))?;
        let encryption_key = r.set("PGVAULT_ENCRYPTION_KEY");
        if let Some(k) = &encryption_key {
            crate::domain::envelope::KeyId::parse(k).map_err(|e| bad("PGVAULT_ENCRYPTION_KEY", e))?;
        }
        let zstd_threads = r.number("PGVAULT_ZSTD_THREADS")? as u32;
        let block_size = r.number("PGVAULT_BLOCK_SIZE_MIB")? as usize * 1024 * 1024;
        let blocks_in_flight = r.number("PGVAULT_BLOCKS_IN_FLIGHT")? as usize;
        let max_dumps_per_server = r.number("PGVAULT_MAX_DUMPS_PER_SERVER")? as u32;
        let dump_slot_retry_secs = r.number("PGVAULT_DUMP_SLOT_RETRY_SECONDS")? as u32;
        let storage_retries = r.number("PGVAULT_STORAGE_RETRIES")? as u32;
        let http_retries = r.number("PGVAULT_HTTP_RETRIES")? as u32;
        let http_timeout = std::time::Duration::from_secs(r.number("PGVAULT_HTTP_TIMEOUT_SECONDS")?);
        let pg_bin_dirs = match r.set("PGVAULT_PG_BIN_DIRS") {
            Some(dirs) => dirs.split(':').filter(|d| !d.is_empty()).map(PathBuf::from).collect(),
            None => crate::seams::pg::default_bin_dirs(),
        };
        let row_counts = match r.value("PGVAULT_ROW_COUNTS").as_str() {
            "stream" => RowCountMode::Stream,
            "exact" => RowCountMode::Exact,
            "cross-check" => RowCountMode::CrossCheck,
            "estimate" => RowCountMode::Estimate,
            "off" => RowCountMode::Off,
            other => return Err(r.not_allowed("PGVAULT_ROW_COUNTS", other)),
        };
        let parallel_above = Some(r.number("PGVAULT_PARALLEL_ABOVE_MIB")? << 20);
        let backup_jobs = r.number("PGVAULT_BACKUP_JOBS")? as usize;
        let parts_run = match r.value("PGVAULT_PARTS_RUN").as_str() {
            "process" => PartsRun::Process,
            "queue" if queue_service_uri.is_none() => {
                return Err(bad(
                    "PGVAULT_PARTS_RUN",
                    "queue needs the job queues: set JobsQueue__queueServiceUri, or PGVAULT_PARTS_RUN=process",
                ));
            }
            "queue" => PartsRun::Queue,
            other => return Err(r.not_allowed("PGVAULT_PARTS_RUN", other)),
        };
        let restore_scratch_dir =
            r.set("PGVAULT_RESTORE_SCRATCH_DIR").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
        let restore_scratch_reserve = r.number("PGVAULT_RESTORE_SCRATCH_RESERVE_MIB")? << 20;
        let pgbackrest_targets = match r.set("PGVAULT_PGBACKREST_TARGETS") {
            Some(j) => {
                crate::domain::pgbackrest_target::parse_targets(&j).map_err(|e| bad("PGVAULT_PGBACKREST_TARGETS", e))?
            }
            None => Vec::new(),
        };
        let sas_rotator_schedule = r.set("PGVAULT_SAS_ROTATOR_SCHEDULE");
        if let Some(s) = &sas_rotator_schedule {
            crate::domain::schedule::parse_ncrontab(s).map_err(|e| bad("PGVAULT_SAS_ROTATOR_SCHEDULE", e))?;
        }
        let arm_endpoint = r.value("PGVAULT_ARM_ENDPOINT");
        check_https_url("PGVAULT_ARM_ENDPOINT", &arm_endpoint)?;
        let alert_webhook = match r.set("PGVAULT_ALERT_WEBHOOK") {
            Some(u) => match url::Url::parse(&u) {
                Ok(p) if matches!(p.scheme(), "https" | "http") => Some(crate::domain::secret::Secret::new(u)),
                _ => return Err(r.bad_value("PGVAULT_ALERT_WEBHOOK", &u, "is not an http(s) URL")),
            },
            None => None,
        };
        let retention_schedule = r.set("PGVAULT_RETENTION_SCHEDULE");
        let drill_schedule = r.set("PGVAULT_DRILL_SCHEDULE");
        for (name, v) in
            [("PGVAULT_RETENTION_SCHEDULE", &retention_schedule), ("PGVAULT_DRILL_SCHEDULE", &drill_schedule)]
        {
            if let Some(s) = v {
                crate::domain::schedule::parse_ncrontab(s).map_err(|e| bad(name, e))?;
            }
        }
        let doctor_schedule = r.value("PGVAULT_DOCTOR_SCHEDULE");
        crate::domain::schedule::parse_ncrontab(&doctor_schedule).map_err(|e| bad("PGVAULT_DOCTOR_SCHEDULE", e))?;
        let rpo_margin = time::Duration::minutes(r.number("PGVAULT_RPO_MARGIN_MINUTES")? as i64);
        let drill_server = r.set("PGVAULT_DRILL_SERVER");
        if let Some(d) = &drill_server
            && !inventory.iter().any(|s| &s.name == d)
        {
            return Err(bad("PGVAULT_DRILL_SERVER", format!("{d:?} is not a server of the inventory")));
        }
        let job_record_days = r.number("PGVAULT_JOB_RECORD_DAYS")?;
        let tier_after_days = r.optional_number("PGVAULT_TIER_AFTER_DAYS")?.map(|n| n as u32);
        // Not `not_allowed`: the tier's message has never echoed the value.
        let tier = match crate::seams::store::Tier::parse(&r.value("PGVAULT_TIER")) {
            Some(t) if t != crate::seams::store::Tier::Hot => t,
            _ => return Err(bad("PGVAULT_TIER", format!("is {}", r.alternatives("PGVAULT_TIER")))),
        };
        let log_format = match r.set("PGVAULT_LOG_FORMAT").as_deref() {
            None => None,
            Some("json") => Some(LogFormat::Json),
            Some("text") => Some(LogFormat::Text),
            Some(other) => return Err(r.not_allowed("PGVAULT_LOG_FORMAT", other)),
        };
        let handler_port = match r.set("FUNCTIONS_CUSTOMHANDLER_PORT") {
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
            encryption_key,
            zstd_threads,
            block_size,
            blocks_in_flight,
            max_dumps_per_server,
            dump_slot_retry_secs,
            storage_retries,
            http_retries,
            http_timeout,
            pg_bin_dirs,
            row_counts,
            parallel_above,
            backup_jobs,
            parts_run,
            restore_scratch_dir,
            restore_scratch_reserve,
            pgbackrest_targets,
            sas_rotator_schedule,
            arm_endpoint,
            alert_webhook,
            retention_schedule,
            rpo_margin,
            drill_schedule,
            doctor_schedule,
            drill_server,
            job_record_days,
            tier_after_days,
            tier,
            log_filter: r.value("PGVAULT_LOG"),
            log_format,
            handler_port,
            env: Env(env),
        })
    }

    pub fn server(&self, name: &str) -> Option<&Server> {
        self.inventory.iter().find(|s| s.name == name)
    }

    /// The key that wraps `server`'s backups: its own `encryption_key` (an empty one means
    /// unencrypted), else `PGVAULT_ENCRYPTION_KEY`; `None`: unencrypted.
    pub fn encryption_key_for<'a>(&'a self, server: &'a Server) -> Option<&'a str> {
        match server.encryption_key.as_deref() {
            Some(k) => Some(k).filter(|k| !k.trim().is_empty()),
            None => self.encryption_key.as_deref(),
        }
    }

    /// Whether any backup is encrypted by this configuration.
    pub fn encrypts(&self) -> bool {
        self.encryption_key.is_some()
            || self.inventory.iter().any(|s| s.encryption_key.as_deref().is_some_and(|k| !k.trim().is_empty()))
    }

    /// An environment value named by the inventory (e.g. `password_env`).
    pub fn env_value(&self, name: &str) -> Option<&str> {
        self.env.0.get(name).map(String::as_str)
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

/// The environment, read through [`ALL`]: every lookup names a setting of the table (reading
/// one it lacks is a bug, and panics in the first test that takes that path), and defaults and
/// bounds come from its entry.
struct Reader<'a> {
    env: &'a HashMap<String, String>,
}

impl Reader<'_> {
    fn spec(name: &str) -> &'static Setting {
        find(name).unwrap_or_else(|| panic!("{name} is read but not defined in settings::ALL"))
    }

    /// The value as set, trimmed; blank counts as unset.
    fn set(&self, name: &str) -> Option<String> {
        Self::spec(name);
        self.env.get(name).map(|v| v.trim().to_string()).filter(|v| !v.is_empty())
    }

    /// The value as set, else the table's default (which this setting must have).
    fn value(&self, name: &str) -> String {
        self.set(name).unwrap_or_else(|| {
            Self::spec(name).default_value().unwrap_or_else(|| panic!("settings::ALL gives {name} no default")).into()
        })
    }

    /// A whole number in the table's range, else the table's default (if it has one).
    fn optional_number(&self, name: &str) -> Result<Option<u64>> {
        let spec = Self::spec(name);
        let Allowed::Whole { min, max } = spec.allowed else {
            panic!("settings::ALL gives {name} no whole-number range");
        };
        let Some(v) = self.set(name).or_else(|| spec.default_value().map(String::from)) else {
            return Ok(None);
        };
        match v.parse::<u64>() {
            Ok(n) if (min..=max).contains(&n) => Ok(Some(n)),
            _ => Err(self.bad_value(name, &v, format!("is not a whole number from {min} to {max}"))),
        }
    }

    /// A whole number in the table's range, else the table's default (which it must have).
    fn number(&self, name: &str) -> Result<u64> {
        Ok(self.optional_number(name)?.unwrap_or_else(|| panic!("settings::ALL gives {name} no default")))
    }

    /// "neither `a` nor `b`", from the table's allowed words.
    fn alternatives(&self, name: &str) -> String {
        match Self::spec(name).allowed {
            Allowed::OneOf(words) => table::not_one_of(words),
            _ => panic!("settings::ALL gives {name} no allowed words"),
        }
    }

    /// The error for a word the table does not allow.
    fn not_allowed(&self, name: &str, value: &str) -> Error {
        self.bad_value(name, value, format!("is {}", self.alternatives(name)))
    }

    /// `setting NAME: "value" why`, or `setting NAME: why` for a secret, whose value is never
    /// echoed.
    fn bad_value(&self, name: &str, value: &str, why: impl std::fmt::Display) -> Error {
        if Self::spec(name).secret { bad(name, why) } else { bad(name, format!("{value:?} {why}")) }
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
        // Today's defaults, held here so that a change to the table is a deliberate one.
        let s = Settings::from_map(map(&[])).unwrap();
        assert_eq!(s.storage, StorageSettings::Local { dir: ".pgvault-local/store".into() });
        assert_eq!(s.compression, Compression::Zstd { level: 3 });
        assert_eq!(s.zstd_threads, 2);
        assert_eq!(s.block_size, 8 << 20);
        assert_eq!(s.blocks_in_flight, 4);
        assert_eq!(s.row_counts, RowCountMode::Stream);
        assert_eq!(s.restore_scratch_dir, std::env::temp_dir());
        assert_eq!(s.restore_scratch_reserve, 1024 << 20);
        assert_eq!(s.identity, IdentitySettings::ManagedIdentity { client_id: None });
        assert_eq!(s.arm_endpoint, "https://management.azure.com");
        assert_eq!(s.rpo_margin, time::Duration::minutes(60));
        assert_eq!(s.job_record_days, 400);
        assert_eq!((s.tier_after_days, s.tier), (None, crate::seams::store::Tier::Cool));
        assert_eq!((s.log_filter.as_str(), s.log_format.clone()), ("info", None));
        assert!(s.inventory.is_empty());
        let s = Settings::from_map(map(&[
            ("PGVAULT_STORAGE", "azure"),
            ("PGVAULT_BLOB_ENDPOINT", "https://acct.blob.core.windows.net/"),
        ]))
        .unwrap();
        assert_eq!(
            s.storage,
            StorageSettings::Azure {
                blob_endpoint: "https://acct.blob.core.windows.net".into(),
                container: "pgvault-backups".into()
            }
        );
    }

    #[test]
    fn the_table_is_consistent() {
        let mut names = std::collections::BTreeSet::new();
        for s in ALL {
            assert!(names.insert(s.name), "{} is defined twice", s.name);
            assert!(!s.doc.is_empty() && !s.doc.contains('|') && !s.doc.contains('\n'), "{}: one line", s.name);
            // The default is a field of the entry; the doc line does not say it again.
            assert!(!s.doc.contains("(default"), "{}: the default belongs in `default`", s.name);
            match (s.default_value(), s.allowed) {
                (Some(v), Allowed::Whole { min, max }) => {
                    assert!(min <= max, "{}", s.name);
                    let n: u64 = v.parse().unwrap_or_else(|_| panic!("{}: default {v:?} is not a number", s.name));
                    assert!((min..=max).contains(&n), "{}: default {n} outside {min} to {max}", s.name);
                }
                (Some(v), Allowed::OneOf(words)) => assert!(words.contains(&v), "{}: default {v:?}", s.name),
                _ => {}
            }
        }
        assert_eq!(table::not_one_of(&["a", "b"]), "neither `a` nor `b`");
        assert_eq!(table::not_one_of(&["a", "b", "c"]), "not `a`, `b` or `c`");
    }

    /// Every bound and every allowed word of the table is the one the parser enforces: the ends
    /// of each range pass and one past them fails, each word passes and another fails, and each
    /// error names the setting.
    #[test]
    fn the_parser_takes_ranges_and_words_from_the_table() {
        // So that PGVAULT_STORAGE=azure and PGVAULT_PARTS_RUN=queue parse.
        let base = [
            ("PGVAULT_BLOB_ENDPOINT", "https://acct.blob.core.windows.net"),
            ("JobsQueue__queueServiceUri", "https://acct.queue.core.windows.net"),
        ];
        let parse = |name: &str, v: &str| {
            let mut m = map(&base);
            m.insert(name.to_string(), v.to_string());
            Settings::from_map(m)
        };
        let refused = |name: &str, v: &str| {
            let e = parse(name, v).expect_err(&format!("{name}={v} is refused"));
            assert!(e.to_string().starts_with(&format!("setting {name}: ")), "{name}={v}: {e}");
        };
        let mut ranges = 0;
        let mut words = 0;
        for s in ALL {
            match s.allowed {
                Allowed::Whole { min, max } => {
                    ranges += 1;
                    for ok in [min, max] {
                        parse(s.name, &ok.to_string()).unwrap_or_else(|e| panic!("{}={ok}: {e}", s.name));
                    }
                    refused(s.name, &(max + 1).to_string());
                    if min > 0 {
                        refused(s.name, &(min - 1).to_string());
                    }
                    refused(s.name, "many");
                }
                Allowed::OneOf(list) => {
                    words += 1;
                    for ok in list {
                        parse(s.name, ok).unwrap_or_else(|e| panic!("{}={ok}: {e}", s.name));
                    }
                    refused(s.name, "bogus");
                }
                Allowed::Any => {}
            }
        }
        assert!(ranges > 0 && words > 0, "the table has ranges and word lists to try");
        // Parts on the queue need the queues.
        let e = Settings::from_map(map(&[("PGVAULT_PARTS_RUN", "queue")])).unwrap_err();
        assert!(e.to_string().starts_with("setting PGVAULT_PARTS_RUN: queue needs the job queues"), "{e}");
        let e = parse("PGVAULT_TIER_AFTER_DAYS", "100001").unwrap_err();
        assert_eq!(e.to_string(), "setting PGVAULT_TIER_AFTER_DAYS: \"100001\" is not a whole number from 0 to 100000");
        // The messages as they have always read.
        let e = parse("PGVAULT_STORAGE", "s3").unwrap_err();
        assert_eq!(e.to_string(), "setting PGVAULT_STORAGE: \"s3\" is neither `azure` nor `local`");
        let e = parse("PGVAULT_ROW_COUNTS", "some").unwrap_err();
        assert_eq!(
            e.to_string(),
            "setting PGVAULT_ROW_COUNTS: \"some\" is not `stream`, `exact`, `cross-check`, `estimate` or `off`"
        );
        let e = parse("PGVAULT_TIER", "hot").unwrap_err();
        assert_eq!(e.to_string(), "setting PGVAULT_TIER: is not `cool`, `cold` or `archive`");
        assert_eq!(parse("PGVAULT_TIER", "Archive").unwrap().tier, crate::seams::store::Tier::Archive);
    }

    /// A secret's value is never echoed: not when it is refused, not in `Debug` once accepted.
    #[test]
    fn secret_values_are_not_echoed() {
        let secrets: Vec<&Setting> = ALL.iter().filter(|s| s.secret).collect();
        assert!(secrets.iter().any(|s| s.name == "PGVAULT_ALERT_WEBHOOK"));
        let token = "TOKEN-7f3a9c";
        for s in &secrets {
            for v in [
                format!("ftp://hooks.example/{token}"),
                format!("not a url {token}"),
                format!("https://hooks.example/{token}"),
            ] {
                match Settings::from_map(map(&[(s.name, &v)])) {
                    Err(e) => {
                        assert!(e.to_string().starts_with(&format!("setting {}: ", s.name)), "{e}");
                        assert!(!e.to_string().contains(token) && !format!("{e:?}").contains(token), "{e:?}");
                    }
                    Ok(parsed) => assert!(!format!("{parsed:?}").contains(token), "{} in Debug", s.name),
                }
            }
        }
        let e =
            Settings::from_map(map(&[("PGVAULT_ALERT_WEBHOOK", &format!("ftp://hooks.example/{token}"))])).unwrap_err();
        assert_eq!(e.to_string(), "setting PGVAULT_ALERT_WEBHOOK: is not an http(s) URL");
        // Nor a password that the inventory names: the raw environment is not in `Debug` either.
        let inv = r#"[{"name":"a","host":"h","user":"u","credentials":{"password_env":"PG_A_PASSWORD"}}]"#;
        let s = Settings::from_map(map(&[("PGVAULT_INVENTORY", inv), ("PG_A_PASSWORD", token)])).unwrap();
        assert_eq!(s.env_value("PG_A_PASSWORD"), Some(token));
        assert!(!format!("{s:?}").contains(token));
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
    fn retry_budget() {
        let s = Settings::from_map(map(&[])).unwrap();
        assert_eq!((s.storage_retries, s.http_retries, s.http_timeout.as_secs()), (6, 8, 60));
        let s = Settings::from_map(map(&[
            ("PGVAULT_STORAGE_RETRIES", "0"),
            ("PGVAULT_HTTP_RETRIES", "2"),
            ("PGVAULT_HTTP_TIMEOUT_SECONDS", "5"),
        ]))
        .unwrap();
        assert_eq!((s.storage_retries, s.http_retries, s.http_timeout.as_secs()), (0, 2, 5));
        for (k, v) in
            [("PGVAULT_STORAGE_RETRIES", "21"), ("PGVAULT_HTTP_RETRIES", "many"), ("PGVAULT_HTTP_TIMEOUT_SECONDS", "0")]
        {
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
