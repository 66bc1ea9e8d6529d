//! The one definition of every setting pgvault reads, after pgBackRest's `build/config.yaml`:
//! each entry gives the name, whether the value is a secret, the default, the range or allowed
//! values, and the doc line. The parser ([`super::Settings::from_map`]) takes defaults and bounds
//! from here, and the README's settings table is [`markdown_table`] (a test compares them).

use super::DEFAULT_ARM_ENDPOINT;

/// What an unset (or blank) setting means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// Nothing: the feature is off, or another setting makes it required.
    Nothing,
    /// This value, exactly as if it had been set.
    Value(&'static str),
    /// A value found at start-up (the system temp dir, say), described for the docs.
    Described(&'static str),
}

/// The values a setting accepts, where the table rather than a format decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allowed {
    /// Whatever the doc line describes (a URL, a schedule, JSON, a path).
    Any,
    /// A whole number from `min` to `max`, both included.
    Whole { min: u64, max: u64 },
    /// One of these words.
    OneOf(&'static [&'static str]),
}

/// One setting: its name, and everything the parser and the docs need to know about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    pub name: &'static str,
    /// The value is never echoed: not in an error, not in `Debug` output, not in a log.
    pub secret: bool,
    pub default: Fallback,
    pub allowed: Allowed,
    /// One line of Markdown: what the setting is for (its default and range are rendered
    /// from the fields above, not repeated here).
    pub doc: &'static str,
}

impl Setting {
    const fn new(name: &'static str, doc: &'static str) -> Self {
        Setting { name, secret: false, default: Fallback::Nothing, allowed: Allowed::Any, doc }
    }

    const fn secret(self) -> Self {
        Setting { secret: true, ..self }
    }

    const fn defaults_to(self, value: &'static str) -> Self {
        Setting { default: Fallback::Value(value), ..self }
    }

    const fn defaults_to_described(self, what: &'static str) -> Self {
        Setting { default: Fallback::Described(what), ..self }
    }

    const fn whole(self, min: u64, max: u64) -> Self {
        Setting { allowed: Allowed::Whole { min, max }, ..self }
    }

    const fn one_of(self, words: &'static [&'static str]) -> Self {
        Setting { allowed: Allowed::OneOf(words), ..self }
    }

    /// The default the parser uses when the setting is unset, if the table gives one.
    pub fn default_value(&self) -> Option<&'static str> {
        match self.default {
            Fallback::Value(v) => Some(v),
            Fallback::Nothing | Fallback::Described(_) => None,
        }
    }
}

/// Every setting pgvault reads (and the two the Functions host reads for the queue triggers).
pub const ALL: &[Setting] = &[
    Setting::new("PGVAULT_INVENTORY", "the server inventory as JSON (or use PGVAULT_INVENTORY_FILE)"),
    Setting::new("PGVAULT_INVENTORY_FILE", "path of a file holding the inventory JSON"),
    Setting::new("PGVAULT_STORAGE", "where backups go").defaults_to("local").one_of(&["azure", "local"]),
    Setting::new("PGVAULT_LOCAL_DIR", "directory of the local store").defaults_to(".pgvault-local/store"),
    Setting::new(
        "PGVAULT_BLOB_ENDPOINT",
        "Blob service URL of the backup account, e.g. `https://acct.blob.core.windows.net`",
    ),
    Setting::new("PGVAULT_BACKUP_CONTAINER", "container for dumps and manifests").defaults_to("pgvault-backups"),
    Setting::new(
        "JobsQueue__queueServiceUri",
        "Queue service URL of the job queues (identity-based connection `JobsQueue`)",
    ),
    Setting::new("JobsQueue__credential", "`managedidentity`: read by the Functions host for the queue triggers"),
    Setting::new("JobsQueue__clientId", "client id of the user-assigned identity, for the host's queue triggers"),
    Setting::new("PGVAULT_IDENTITY", "how pgvault signs in to Azure; `azure-cli` is for local runs")
        .defaults_to("managed-identity")
        .one_of(&["managed-identity", "azure-cli"]),
    Setting::new("PGVAULT_IDENTITY_CLIENT_ID", "client id of a user-assigned managed identity")
        .defaults_to_described("the system-assigned identity"),
    Setting::new("PGVAULT_CA_FILE", "extra CA certificates (PEM) trusted for Azure endpoints and PostgreSQL"),
    Setting::new("PGVAULT_BACKUP_SCHEDULE", "NCRONTAB schedule (UTC) of `backup-scheduler`, e.g. `0 0 2 * * *`"),
    Setting::new("PGVAULT_COMPRESSION", "`zstd:<1-19>`, `none`, or `pg_dump`").defaults_to("zstd:3"),
    Setting::new(
        "PGVAULT_ENCRYPTION_KEY",
        "Key Vault key (`https://<vault>/keys/<name>`, optionally `/<version>`) that wraps each backup's data key; backups are then encrypted (AES-256-GCM) before upload. An inventory server's `encryption_key` overrides it",
    )
    .defaults_to_described("unencrypted"),
    Setting::new("PGVAULT_ZSTD_THREADS", "zstd worker threads").defaults_to("2").whole(0, 64),
    Setting::new("PGVAULT_BLOCK_SIZE_MIB", "initial block size in MiB; grows for very long streams")
        .defaults_to("8")
        .whole(1, 4000),
    Setting::new(
        "PGVAULT_BLOCKS_IN_FLIGHT",
        "blocks uploaded concurrently; memory is about (this + 2) times the block size, plus about 8 MiB per zstd thread",
    )
    .defaults_to("4")
    .whole(1, 64),
    Setting::new(
        "PGVAULT_MAX_DUMPS_PER_SERVER",
        "the most backup jobs that dump one PostgreSQL server at once, across all instances",
    )
    .defaults_to("2")
    .whole(1, 64),
    Setting::new(
        "PGVAULT_DUMP_SLOT_RETRY_SECONDS",
        "seconds a backup job that found all its server's dump slots taken waits on the queue before its next try (up to twice this, jittered)",
    )
    .defaults_to("120")
    .whole(1, 3600),
    Setting::new(
        "PGVAULT_STORAGE_RETRIES",
        "retries of a storage call that failed transiently (each block on its own), backing off from 0.5 s doubling to 30 s",
    )
    .defaults_to("6")
    .whole(0, 20),
    Setting::new(
        "PGVAULT_HTTP_RETRIES",
        "the Azure SDK's retries of one request (throttling, 5xx, a dropped connection) to the queues, Key Vault and the identity endpoint; storage requests take at most 2 of them, beneath `PGVAULT_STORAGE_RETRIES`",
    )
    .defaults_to("8")
    .whole(0, 20),
    Setting::new(
        "PGVAULT_HTTP_TIMEOUT_SECONDS",
        "seconds an Azure request waits for the next byte of its answer before it counts as failed (and is retried)",
    )
    .defaults_to("60")
    .whole(1, 3600),
    Setting::new("PGVAULT_PG_BIN_DIRS", "`:`-separated PostgreSQL bin directories")
        .defaults_to_described("`/usr/lib/postgresql/*/bin`, newest first"),
    Setting::new(
        "PGVAULT_ROW_COUNTS",
        "row counts of each backup: `stream` counts COPY rows in the archive as it streams by (exact, no work for the server), `exact` is count(*) in pg_dump's snapshot, `cross-check` does both and fails the backup if they differ, `estimate` reads pg_class, `off` takes none",
    )
    .defaults_to("stream")
    .one_of(&["stream", "exact", "cross-check", "estimate", "off"]),
    Setting::new(
        "PGVAULT_PARALLEL_ABOVE_MIB",
        "a database larger than this (MiB) is backed up in parts, all in one snapshot (manifest format version 3); smaller ones stay one archive",
    )
    .defaults_to("16384")
    .whole(0, 1 << 40),
    Setting::new("PGVAULT_BACKUP_JOBS", "parts of one backup in parts that run at once in the coordinator's process")
        .defaults_to("2")
        .whole(1, 64),
    Setting::new(
        "PGVAULT_PARTS_RUN",
        "where the parts of a backup in parts run: `process` in the coordinator's own process (`PGVAULT_BACKUP_JOBS` at once), `queue` fanned out as messages on `backup-parts` to other instances (function `backup-parts`) while the coordinator holds the snapshot and waits; `queue` needs `JobsQueue__queueServiceUri`",
    )
    .defaults_to("process")
    .one_of(&["process", "queue"]),
    Setting::new(
        "PGVAULT_RESTORE_SCRATCH_DIR",
        "where a parallel restore (`jobs` > 1) keeps its local copy of the archive",
    )
    .defaults_to_described("the system temp dir"),
    Setting::new(
        "PGVAULT_RESTORE_SCRATCH_RESERVE_MIB",
        "free space (MiB) that must remain in the scratch dir after that copy, else the restore streams",
    )
    .defaults_to("1024")
    .whole(0, 1 << 30),
    Setting::new(
        "PGVAULT_PGBACKREST_TARGETS",
        "pgBackRest targets whose SAS `sas-rotator` rotates, as JSON (see [docs/vm-pgbackrest.md](docs/vm-pgbackrest.md))",
    ),
    Setting::new("PGVAULT_SAS_ROTATOR_SCHEDULE", "NCRONTAB schedule (UTC) of `sas-rotator`, e.g. `0 0 * * * *` (hourly)"),
    Setting::new("PGVAULT_ARM_ENDPOINT", "Azure Resource Manager URL for push delivery").defaults_to(DEFAULT_ARM_ENDPOINT),
    Setting::new("PGVAULT_ALERT_WEBHOOK", "incoming-webhook URL (Teams/Slack) that alerts are POSTed to; never logged")
        .secret(),
    Setting::new(
        "PGVAULT_RETENTION_SCHEDULE",
        "NCRONTAB schedule (UTC) of `retention` (prune, then RPO check), e.g. `0 30 * * * *`",
    ),
    Setting::new("PGVAULT_RPO_MARGIN_MINUTES", "minutes a scheduled backup may be late before a missed-schedule alert")
        .defaults_to("60")
        .whole(0, 10_000_000),
    Setting::new("PGVAULT_DRILL_SCHEDULE", "NCRONTAB schedule (UTC) of `restore-drill`, e.g. `0 0 5 * * 0`"),
    Setting::new("PGVAULT_DRILL_SERVER", "inventory server that restore drills restore into (a scratch server)"),
    Setting::new(
        "PGVAULT_DOCTOR_SCHEDULE",
        "NCRONTAB schedule (UTC) of `doctor` (the checks of `pgvault doctor`, recorded; errors alert)",
    )
    .defaults_to("0 15 6 * * *"),
    Setting::new("PGVAULT_JOB_RECORD_DAYS", "days finished job records are kept").defaults_to("400").whole(1, 100_000),
    Setting::new(
        "PGVAULT_TIER_AFTER_DAYS",
        "retention moves data blobs of backups older than this many days to `PGVAULT_TIER`",
    )
    .defaults_to_described("no tiering by pgvault")
    .whole(0, 100_000),
    Setting::new("PGVAULT_TIER", "access tier of that move").defaults_to("cool").one_of(&["cool", "cold", "archive"]),
    Setting::new("PGVAULT_LOG", "log filter, e.g. `info` or `pgvault=debug`").defaults_to("info"),
    Setting::new("PGVAULT_LOG_FORMAT", "format of the log lines")
        .defaults_to_described("`json` under the Functions host, else `text`")
        .one_of(&["json", "text"]),
    Setting::new("FUNCTIONS_CUSTOMHANDLER_PORT", "set by the Functions host: the port `pgvault serve` listens on"),
];

/// The entry of a setting, if pgvault reads it.
pub fn find(name: &str) -> Option<&'static Setting> {
    ALL.iter().find(|s| s.name == name)
}

/// Words as a reader lists them: "`a`", "`a` or `b`", "`a`, `b` or `c`".
fn listed(words: &[&str]) -> String {
    let quoted: Vec<String> = words.iter().map(|w| format!("`{w}`")).collect();
    match quoted.split_last() {
        None => String::new(),
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
    }
}

/// The end of the error for a word that is not allowed: "neither `a` nor `b`" for two
/// choices, "not `a`, `b` or `c`" for more.
pub fn not_one_of(words: &[&str]) -> String {
    match words {
        [a, b] => format!("neither `{a}` nor `{b}`"),
        _ => format!("not {}", listed(words)),
    }
}

/// The README's settings table: one row per entry of [`ALL`], in its order.
pub fn markdown_table() -> String {
    let mut out = String::from("| setting | default | allowed | meaning |\n|---|---|---|---|\n");
    for s in ALL {
        let default = match s.default {
            Fallback::Nothing => String::new(),
            Fallback::Value(v) => format!("`{v}`"),
            Fallback::Described(what) => what.to_string(),
        };
        let allowed = match s.allowed {
            Allowed::Any => String::new(),
            Allowed::Whole { min, max } => format!("{min} to {max}"),
            Allowed::OneOf(words) => listed(words),
        };
        let secret = if s.secret { "secret: " } else { "" };
        out.push_str(&format!("| `{}` | {default} | {allowed} | {secret}{} |\n", s.name, s.doc));
    }
    out
}
