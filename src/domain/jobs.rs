//! Queue messages and the scheduler's plan.
//!
//! A backup job is one JSON message on `backup-jobs`. The scheduler turns the inventory and each
//! server's database list into jobs with the pure function [`plan_backups`].

use crate::domain::error::{Error, Result};
use crate::domain::inventory::Server;
use crate::domain::layout::BackupKind;
pub use crate::domain::schedule::parse_ncrontab;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// The most a queue message may hold (64 KiB), counted as the service counts it: the text
/// XML-escaped (see [`queue_size`]). A rejected record kept on `<queue>-rejected` and a part
/// message on `backup-parts` must fit.
pub const MAX_QUEUE_MESSAGE_BYTES: usize = 64 * 1024;

/// The size of `text` in a queue message: the Queue REST API carries it inside XML, so each
/// `&` `<` `>` `"` `'` may grow to an entity (at most 6 bytes). An upper bound.
pub fn queue_size(text: &str) -> usize {
    text.bytes()
        .map(|b| match b {
            b'"' | b'\'' => 6,
            b'&' => 5,
            b'<' | b'>' => 4,
            _ => 1,
        })
        .sum()
}

pub const BACKUP_JOBS_QUEUE: &str = "backup-jobs";
/// Where messages that can never succeed are kept, with their reason, for an operator.
/// The error for a queue message that does not parse as `what`. A message that is base64
/// (what a producer sends for the host's default `messageEncoding`) is named as such: pgvault's
/// host.json sets `messageEncoding: none`, so that producer is misconfigured.
pub fn not_json(what: &str, text: &str, e: &serde_json::Error) -> Error {
    use base64::Engine;
    let t = text.trim();
    let looks_base64 = t.len() >= 4
        && t.len().is_multiple_of(4)
        && !t.starts_with('{')
        && base64::engine::general_purpose::STANDARD
            .decode(t)
            .is_ok_and(|raw| raw.trim_ascii_start().first() == Some(&b'{'));
    if looks_base64 {
        return Error::permanent(format!("{what} is base64-encoded JSON, not JSON text"))
            .with_hint("host.json sets messageEncoding: none: enqueue the JSON text itself, not its base64");
    }
    Error::permanent(format!("{what} is not valid: {e}"))
}

pub fn rejected_queue(queue: &str) -> String {
    format!("{queue}-rejected")
}

pub const MESSAGE_VERSION: u32 = 1;

/// What started a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    Timer,
    Queue,
    Http,
    Cli,
}

/// One backup job: one database, or the globals of one server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupJob {
    pub version: u32,
    pub job_id: String,
    pub kind: BackupKind,
    pub server: String,
    /// The database; absent for globals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub requested_at: OffsetDateTime,
    pub trigger: Trigger,
}

impl BackupJob {
    pub fn new(
        kind: BackupKind,
        server: &str,
        database: Option<&str>,
        requested_at: OffsetDateTime,
        trigger: Trigger,
    ) -> Self {
        BackupJob {
            version: MESSAGE_VERSION,
            job_id: uuid::Uuid::new_v4().to_string(),
            kind,
            server: server.to_string(),
            database: database.map(str::to_string),
            requested_at,
            trigger,
        }
    }

    /// `database "app" on server "prod"` or `globals of server "prod"`.
    pub fn describe(&self) -> String {
        match (&self.kind, &self.database) {
            (BackupKind::Database, Some(db)) => format!("database {db:?} on server {:?}", self.server),
            _ => format!("globals of server {:?}", self.server),
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("job serializes")
    }

    /// Parse and validate a message. Every error is permanent: the same text will never parse.
    pub fn from_json(text: &str) -> Result<Self> {
        let job: BackupJob = serde_json::from_str(text).map_err(|e| not_json("backup job message", text, &e))?;
        job.validate()?;
        Ok(job)
    }

    pub fn validate(&self) -> Result<()> {
        if self.version != MESSAGE_VERSION {
            return Err(Error::permanent(format!(
                "backup job message has version {}, this pgvault reads version {MESSAGE_VERSION}",
                self.version
            )));
        }
        let id_ok = (1..=64).contains(&self.job_id.len())
            && self.job_id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !id_ok {
            return Err(Error::permanent(format!(
                "backup job id {:?} is invalid: use 1-64 letters, digits, '-' or '_'",
                self.job_id
            )));
        }
        match (self.kind, &self.database) {
            (BackupKind::Database, None) => Err(Error::permanent("backup job of kind database names no database")),
            (BackupKind::Database, Some(d)) if d.is_empty() => {
                Err(Error::permanent("backup job has an empty database name"))
            }
            (BackupKind::Globals, Some(_)) => {
                Err(Error::permanent("backup job of kind globals must not name a database"))
            }
            _ => Ok(()),
        }
    }
}

/// Which databases of a server to back up, given the databases it has. Pure.
/// Returns the chosen databases and the include entries that name no existing database.
pub fn select_databases(server: &Server, existing: &[String]) -> (Vec<String>, Vec<String>) {
    if !server.include.is_empty() {
        let chosen = existing.iter().filter(|d| server.include.contains(d)).cloned().collect();
        let missing = server.include.iter().filter(|i| !existing.contains(i)).cloned().collect();
        return (chosen, missing);
    }
    (existing.iter().filter(|d| !server.exclude.contains(d)).cloned().collect(), Vec::new())
}

/// The jobs for one server in one scheduler run: one per chosen database, plus the globals.
pub fn plan_backups(server: &Server, databases: &[String], now: OffsetDateTime, trigger: Trigger) -> Vec<BackupJob> {
    let mut jobs: Vec<BackupJob> =
        databases.iter().map(|db| BackupJob::new(BackupKind::Database, &server.name, Some(db), now, trigger)).collect();
    jobs.push(BackupJob::new(BackupKind::Globals, &server.name, None, now, trigger));
    jobs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_base64_message_is_named_as_such() {
        use base64::Engine;
        let json = r#"{"version":1,"job_id":"x"}"#;
        let b64 = base64::engine::general_purpose::STANDARD.encode(json);
        let e = BackupJob::from_json(&b64).unwrap_err().to_string();
        assert!(e.contains("backup job message is base64-encoded JSON, not JSON text"), "{e}");
        assert!(e.contains("HINT: host.json sets messageEncoding: none"), "{e}");
        // Other garbage keeps the parser's own reason.
        let e = BackupJob::from_json("hello").unwrap_err().to_string();
        assert!(e.starts_with("backup job message is not valid: expected value"), "{e}");
    }
    use time::macros::datetime;

    fn server(include: &[&str], exclude: &[&str]) -> Server {
        crate::domain::inventory::parse_inventory(&format!(
            r#"[{{"name":"s","host":"h","user":"u","include":{},"exclude":{}}}]"#,
            serde_json::to_string(include).unwrap(),
            serde_json::to_string(exclude).unwrap()
        ))
        .unwrap()
        .remove(0)
    }

    #[test]
    fn on_demand_the_inventory_says_why_a_database_is_left_out() {
        assert_eq!(server(&["a"], &[]).leaves_out("a"), None);
        let why = server(&["a"], &[]).leaves_out("b").unwrap();
        assert_eq!(why, "database \"b\" of server \"s\" is not in the server's include list in the inventory");
        let why = server(&[], &["x"]).leaves_out("x").unwrap();
        assert_eq!(why, "database \"x\" of server \"s\" is excluded in the inventory");
        assert_eq!(server(&[], &["x"]).leaves_out("y"), None);
    }

    #[test]
    fn selection_honours_include_and_exclude() {
        let dbs: Vec<String> = ["a", "b", "postgres"].iter().map(|s| s.to_string()).collect();
        assert_eq!(select_databases(&server(&[], &["postgres"]), &dbs).0, ["a", "b"]);
        let (chosen, missing) = select_databases(&server(&["b", "zz"], &[]), &dbs);
        assert_eq!(chosen, ["b"]);
        assert_eq!(missing, ["zz"]);
        assert_eq!(select_databases(&server(&[], &[]), &dbs).0.len(), 3);
    }

    #[test]
    fn plan_has_one_job_per_database_and_globals() {
        let now = datetime!(2026-11-21 02:00:00 UTC);
        let jobs = plan_backups(&server(&[], &[]), &["a".into(), "b".into()], now, Trigger::Timer);
        assert_eq!(jobs.len(), 3);
        assert_eq!(jobs.iter().filter(|j| j.kind == BackupKind::Globals).count(), 1);
        for j in &jobs {
            j.validate().unwrap();
            assert_eq!(BackupJob::from_json(&j.to_json()).unwrap(), *j);
        }
    }

    #[test]
    fn bad_messages_are_permanent_and_say_why() {
        let cases = [
            ("{", "not valid"),
            (r#"{"version":1}"#, "missing field"),
            (
                r#"{"version":1,"job_id":"a b","kind":"database","server":"s","database":"d","requested_at":"2026-11-21T02:00:00Z","trigger":"timer"}"#,
                "job id",
            ),
            (
                r#"{"version":1,"job_id":"j","kind":"database","server":"s","requested_at":"2026-11-21T02:00:00Z","trigger":"timer"}"#,
                "names no database",
            ),
            (
                r#"{"version":2,"job_id":"j","kind":"globals","server":"s","requested_at":"2026-11-21T02:00:00Z","trigger":"timer"}"#,
                "version 2",
            ),
        ];
        for (text, want) in cases {
            let e = BackupJob::from_json(text).unwrap_err();
            assert!(e.is_permanent());
            assert!(e.to_string().contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn ncrontab() {
        assert!(parse_ncrontab("0 0 2 * * *").is_ok());
        assert!(parse_ncrontab("0 */15 * * * 1-5").is_ok());
        assert!(parse_ncrontab("0 2 * * *").unwrap_err().to_string().contains("six fields"));
        assert!(parse_ncrontab("0 0 25 * * *").is_err());
    }
}
