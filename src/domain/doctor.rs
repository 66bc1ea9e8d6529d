//! `pgvault doctor`'s findings: what a check found, about which object, how bad, and what to do.
//! Pure: the checks (`features::doctor`) produce findings; the CLI, the `doctor` timer's job
//! record and the status page show them.
//!
//! A finding reads like every pgvault error: `<object>: <problem>` and a `HINT:` line. Its
//! severity decides the exit status: an `error` means a scheduled backup or restore would fail
//! (or silently miss data); a `warning` means it works today but needs attention (a certificate
//! about to expire, an unchecked allow-list); an `info` says what was checked or could not be.

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fmt;

/// How bad a finding is. Ordered: `Info < Warning < Error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Error,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
        }
    }
}

/// One thing a check found. Serialized as is in `pgvault doctor --json` and in the `doctor` job
/// record (every field but `hint` always present; field names are stable).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// Which check: `connection`, `tls-expiry`, `pg-dump-version`, `table-privileges`,
    /// `row-level-security`, `large-objects`, `createdb`, `roles`, `locale`, `extensions`,
    /// `azure-owned`, `free-space`, `key-vault-secret`, `encryption-key`, `storage`, ...
    pub check: String,
    /// The object it is about: `server "prod"`, `table "public"."t" in database "app" of server
    /// "prod"`, `container "backups"`.
    pub object: String,
    pub severity: Severity,
    /// What will go wrong (lower case, no trailing full stop).
    pub problem: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl Finding {
    pub fn new(check: &str, severity: Severity, object: impl Into<String>, problem: impl Into<String>) -> Self {
        Finding { check: check.into(), object: object.into(), severity, problem: problem.into(), hint: None }
    }

    pub fn error(check: &str, object: impl Into<String>, problem: impl Into<String>) -> Self {
        Self::new(check, Severity::Error, object, problem)
    }

    pub fn warning(check: &str, object: impl Into<String>, problem: impl Into<String>) -> Self {
        Self::new(check, Severity::Warning, object, problem)
    }

    pub fn info(check: &str, object: impl Into<String>, problem: impl Into<String>) -> Self {
        Self::new(check, Severity::Info, object, problem)
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

/// `<object>: <problem>` and, with a hint, `\nHINT: <hint>`.
impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.object, self.problem)?;
        if let Some(h) = &self.hint {
            write!(f, "\nHINT: {h}")?;
        }
        Ok(())
    }
}

/// The worst severity among `findings` (`None` when there are none).
pub fn worst(findings: &[Finding]) -> Option<Severity> {
    findings.iter().map(|f| f.severity).max()
}

/// How many findings there are of each severity: (errors, warnings, infos).
pub fn counts(findings: &[Finding]) -> (usize, usize, usize) {
    let n = |s: Severity| findings.iter().filter(|f| f.severity == s).count();
    (n(Severity::Error), n(Severity::Warning), n(Severity::Info))
}

/// `2 errors, 1 warning`.
pub fn summary_counts(findings: &[Finding]) -> String {
    let (e, w, _) = counts(findings);
    let plural = |n: usize, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
    format!("{}, {}", plural(e, "error"), plural(w, "warning"))
}

/// One line for a record's summary or an alert: `2 errors, 1 warning: <first error>`.
pub fn summary(findings: &[Finding]) -> String {
    let head = summary_counts(findings);
    match findings.iter().find(|f| f.severity == Severity::Error) {
        Some(first) => format!("{head}: {}: {}", first.object, first.problem),
        None => head,
    }
}

/// The names of the objects of one `kind` (`EXTENSION`, `SCHEMA`) in a pg_dump archive's table
/// of contents (`pg_restore --list`): lines like `3; 3079 16385 EXTENSION - hstore ` or
/// `5; 2615 16386 SCHEMA - cron postgres`. Sorted, each once.
pub fn toc_names(toc: &str, kind: &str) -> Vec<String> {
    let mut out = BTreeSet::new();
    for line in toc.lines() {
        if line.starts_with(';') {
            continue;
        }
        // `<dumpId>; <catalogId> <objectId> <KIND> - <name> [<owner>]`; a comment on one reads
        // `COMMENT - EXTENSION <name>` and is not a second one.
        let mut words = line.split_whitespace().skip(3);
        if let (Some(k), Some("-"), Some(name)) = (words.next(), words.next(), words.next())
            && k == kind
        {
            out.insert(name.to_string());
        }
    }
    out.into_iter().collect()
}

/// The extensions a pg_dump archive creates (see [`toc_names`]).
pub fn extensions_in_toc(toc: &str) -> Vec<String> {
    toc_names(toc, "EXTENSION")
}

/// Azure's `azure.extensions` allow-list (`hstore,pg_trgm`; spaces and case as an admin typed
/// them): lower-cased names. An empty setting allows nothing.
pub fn allow_list(setting: &str) -> BTreeSet<String> {
    setting.split(',').map(|s| s.trim().to_ascii_lowercase()).filter(|s| !s.is_empty()).collect()
}

/// Extensions that are always there: `plpgsql` is in every database and never on the list.
const ALWAYS_AVAILABLE: &[&str] = &["plpgsql"];

/// The extensions of `needed` the allow-list does not allow, in order.
pub fn not_allowed(needed: &[String], allowed: &BTreeSet<String>) -> Vec<String> {
    needed
        .iter()
        .filter(|e| !ALWAYS_AVAILABLE.contains(&e.as_str()) && !allowed.contains(&e.to_ascii_lowercase()))
        .cloned()
        .collect()
}

/// Roles Azure Database for PostgreSQL reserves: objects they own are not restorable by a
/// customer's role, and the role cannot be created on another server.
pub const AZURE_RESERVED_ROLES: &[&str] = &["azuresu", "azure_pg_admin", "azure_superuser", "replication"];

/// Schemas extensions create that need special handling on Flexible Server (pg_cron's `cron`
/// lives in one database only and is restored by enabling the extension there).
pub const SPECIAL_SCHEMAS: &[&str] = &["cron"];

/// How many days of validity a certificate has left at `now` (negative: expired).
pub fn days_left(not_after: time::OffsetDateTime, now: time::OffsetDateTime) -> i64 {
    (not_after - now).whole_days()
}

/// Days before a server certificate's expiry from which doctor warns.
pub const CERT_WARN_DAYS: i64 = 30;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_finding_reads_like_an_error_with_a_hint() {
        let f = Finding::error("table-privileges", "table \"public\".\"t\"", "the backup role cannot read it")
            .hint("GRANT SELECT");
        assert_eq!(f.to_string(), "table \"public\".\"t\": the backup role cannot read it\nHINT: GRANT SELECT");
        let json = serde_json::to_value(&f).unwrap();
        assert_eq!(json["severity"], "error");
        assert_eq!(json["check"], "table-privileges");
        let back: Finding = serde_json::from_value(json).unwrap();
        assert_eq!(back, f);
        let w = Finding::warning("tls-expiry", "server \"a\"", "expires in 3 days");
        assert_eq!(w.to_string(), "server \"a\": expires in 3 days");
        assert!(serde_json::to_value(&w).unwrap().get("hint").is_none());
    }

    #[test]
    fn the_worst_finding_decides() {
        let i = Finding::info("x", "o", "p");
        let w = Finding::warning("x", "o", "p");
        let e = Finding::error("x", "o", "bad");
        assert_eq!(worst(&[]), None);
        assert_eq!(worst(&[i.clone(), w.clone()]), Some(Severity::Warning));
        assert_eq!(worst(&[w.clone(), e.clone(), i.clone()]), Some(Severity::Error));
        assert_eq!(counts(&[w.clone(), e.clone(), i]), (1, 1, 1));
        assert_eq!(summary(&[w.clone(), e]), "1 error, 1 warning: o: bad");
        assert_eq!(summary(&[w.clone(), w]), "0 errors, 2 warnings");
    }

    #[test]
    fn extensions_come_from_the_table_of_contents() {
        let toc = ";\n; Archive created at 2026-01-01\n;\n\
                   2; 3079 16385 EXTENSION - hstore \n\
                   4004; 0 0 COMMENT - EXTENSION hstore \n\
                   3; 3079 16390 EXTENSION - pg_trgm \n\
                   215; 1259 16400 TABLE public t postgres\n\
                   ;2; 3079 1 EXTENSION - commented_out\n";
        assert_eq!(extensions_in_toc(toc), vec!["hstore".to_string(), "pg_trgm".to_string()]);
        let schemas = "6; 2615 2200 SCHEMA - public pg_database_owner\n7; 2615 16386 SCHEMA - cron postgres\n";
        assert_eq!(toc_names(schemas, "SCHEMA"), vec!["cron".to_string(), "public".to_string()]);
        let allowed = allow_list(" PG_TRGM, uuid-ossp ,");
        assert_eq!(allowed.iter().cloned().collect::<Vec<_>>(), vec!["pg_trgm", "uuid-ossp"]);
        let needed = vec!["hstore".to_string(), "pg_trgm".to_string(), "plpgsql".to_string()];
        assert_eq!(not_allowed(&needed, &allowed), vec!["hstore".to_string()]);
        assert_eq!(not_allowed(&needed, &allow_list("")), vec!["hstore".to_string(), "pg_trgm".to_string()]);
    }

    #[test]
    fn days_left_counts_whole_days() {
        let now = time::macros::datetime!(2026-01-01 00:00 UTC);
        assert_eq!(days_left(time::macros::datetime!(2026-01-11 12:00 UTC), now), 10);
        assert_eq!(days_left(time::macros::datetime!(2025-12-30 00:00 UTC), now), -2);
    }
}
