//! What runs on the VM: `pgvault pgbackrest-sas sync` (pull delivery) and `doctor`.
//!
//! `sync` reads the target's secret with the VM's managed identity (its only Azure right: read
//! on that one secret), checks the token's shape and expiry, and replaces the include file
//! atomically ([`super::include`]). Any failure leaves the existing file untouched and exits
//! non-zero with a message that names the step.

use super::include::{self, FileOwnership, WriteOutcome};
use super::plan::rfc3339;
use super::token;
use crate::domain::error::{Error, Result};
use crate::domain::secret::{Secret, redact};
use crate::seams::credentials::CloudSecrets;
use std::path::PathBuf;
use std::process::Stdio;
use time::OffsetDateTime;

/// How to run pgBackRest on this VM.
#[derive(Debug, Clone)]
pub struct PgBackRest {
    pub bin: PathBuf,
    /// Options placed before the command, e.g. `--config=...`, `--lock-path=...`.
    pub options: Vec<String>,
    /// OS user to run as (through runuser); pgBackRest must run as the cluster's user.
    pub run_as: Option<String>,
}

impl PgBackRest {
    /// Run `pgbackrest <options> <args>`; (success, combined output, redacted).
    pub async fn run(&self, args: &[String]) -> Result<(bool, String)> {
        let mut cmd = match &self.run_as {
            Some(u) => {
                let mut c = tokio::process::Command::new("runuser");
                c.args(["-u", u, "--"]).arg(&self.bin);
                c
            }
            None => tokio::process::Command::new(&self.bin),
        };
        cmd.args(&self.options).args(args).stdin(Stdio::null()).kill_on_drop(true);
        let out = cmd.output().await.map_err(|e| {
            Error::permanent(format!("run {}: {e}", self.bin.display())).with_hint("install pgbackrest")
        })?;
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        Ok((out.status.success(), redact(&text)))
    }

    /// `pgbackrest version` → (major, minor), e.g. (2, 45).
    pub async fn version(&self) -> Result<(u32, u32, String)> {
        let (ok, text) = self.run(&["version".into()]).await?;
        let v = text.trim().strip_prefix("pgBackRest ").map(str::to_string);
        match (ok, v) {
            (true, Some(v)) => {
                let mut it = v.split(|c: char| !c.is_ascii_digit()).filter_map(|p| p.parse::<u32>().ok());
                Ok((it.next().unwrap_or(0), it.next().unwrap_or(0), v))
            }
            _ => Err(Error::permanent(format!("pgbackrest version: {}", text.trim()))),
        }
    }
}

/// The sync request.
#[derive(Debug, Clone)]
pub struct SyncRequest {
    pub vault: String,
    pub secret: String,
    pub repo: u8,
    pub file: PathBuf,
    pub owner: String,
    pub group: String,
    pub mode: u32,
    /// Run `pgbackrest --stanza=<s> check` afterwards.
    pub check_stanza: Option<String>,
    pub pgbackrest: PgBackRest,
}

/// Sync once. Returns the lines to print (never the token).
pub async fn sync(secrets: &dyn CloudSecrets, req: &SyncRequest, now: OffsetDateTime) -> Result<Vec<String>> {
    let vault = crate::config::settings::key_vault_url(&req.vault)?;
    let fail = |e: Error| e.context("sync").with_hint(format!("{} was left as it was", req.file.display()));
    let own = FileOwnership::resolve(&req.owner, &req.group, req.mode).map_err(fail)?;
    let s = secrets.key_vault_secret(&vault, &req.secret).await.map_err(fail)?;
    if !s.enabled {
        return Err(fail(Error::permanent(format!("secret {:?} is disabled", req.secret))));
    }
    token::check_shape(s.value.expose())
        .map_err(|why| fail(Error::permanent(format!("secret {:?}: {why}", req.secret))))?;
    let expiry = token::expiry(s.value.expose()).or(s.expires);
    if expiry.is_some_and(|e| e <= now) {
        return Err(fail(
            Error::permanent(format!(
                "secret {:?} holds a token that expired at {}",
                req.secret,
                expiry.map(rfc3339).unwrap_or_default()
            ))
            .with_hint("the sas-rotator function has not rotated it: check its job records and alarms"),
        ));
    }
    let content = include::render(req.repo, &Secret::new(s.value.expose().trim()));
    let outcome = include::write_atomic(&req.file, &content, &own)?;
    let mut lines = vec![format!(
        "sync: include file {} {} (token expires {}, secret version {})",
        req.file.display(),
        if outcome == WriteOutcome::Written { "written" } else { "unchanged" },
        expiry.map(rfc3339).unwrap_or_else(|| "?".into()),
        s.version
    )];
    tracing::info!(
        file = %req.file.display(),
        written = outcome == WriteOutcome::Written,
        expiry = expiry.map(rfc3339),
        secret_version = %s.version,
        "pgbackrest sas synced"
    );
    if let Some(stanza) = &req.check_stanza {
        let (ok, out) = req.pgbackrest.run(&[format!("--stanza={stanza}"), "check".into()]).await?;
        if !ok {
            return Err(Error::permanent(format!(
                "pgbackrest check of stanza {stanza:?} failed after the sync; pgBackRest said:\n{}",
                quote_output(&out)
            ))
            .with_hint("the include file holds the newest token: fix what pgBackRest reports above, then run sync --check again"));
        }
        lines.push(format!("check: stanza {stanza:?} ok"));
    }
    Ok(lines)
}

/// pgBackRest's own output for an error message (already redacted by [`PgBackRest::run`]),
/// each line indented with `  | `: from its first `ERROR:` line on (or all of it), without the
/// HTTP header blocks of a failed request, at most 30 lines.
pub fn quote_output(out: &str) -> String {
    const MAX: usize = 30;
    let all: Vec<&str> = out.lines().map(str::trim_end).filter(|l| !l.trim().is_empty()).collect();
    let first_error = all.iter().position(|l| l.contains("ERROR:")).unwrap_or(0);
    let mut lines = Vec::new();
    let mut in_headers = false;
    for l in &all[first_error..] {
        let t = l.trim_start();
        if t.starts_with("*** ") {
            in_headers = t.contains("Headers");
            if in_headers {
                continue;
            }
        } else if in_headers {
            continue;
        }
        lines.push(format!("  | {l}"));
    }
    if lines.is_empty() {
        return "  | (no output)".into();
    }
    if lines.len() > MAX {
        let more = lines.len() - MAX;
        lines.truncate(MAX);
        lines.push(format!("  | ({more} more lines left out)"));
    }
    lines.join("\n")
}

/// `doctor`: what is in effect on this VM. Returns (report lines, healthy).
pub async fn doctor(
    file: &std::path::Path,
    repo: u8,
    stanza: &str,
    pgbr: &PgBackRest,
    now: OffsetDateTime,
) -> (Vec<String>, bool) {
    let mut lines = Vec::new();
    let mut healthy = true;
    let version = pgbr.version().await;
    match &version {
        Ok((_, _, v)) => lines.push(format!("pgbackrest version: {v}")),
        Err(e) => {
            healthy = false;
            lines.push(format!("pgbackrest version: unknown ({e})"));
        }
    }
    match std::fs::read_to_string(file) {
        Ok(text) => {
            let (kt, key) = include::parse(&text, repo);
            lines.push(format!(
                "key type in effect: {} (repo{repo}, from {})",
                kt.as_deref().unwrap_or("not set in the include file"),
                file.display()
            ));
            match key.as_ref().and_then(|k| token::expiry(k.expose())) {
                Some(e) if e <= now => {
                    healthy = false;
                    lines.push(format!("token expiry: {} (EXPIRED)", rfc3339(e)));
                }
                Some(e) => lines.push(format!("token expiry: {} ({}h left)", rfc3339(e), (e - now).whole_hours())),
                None => lines.push("token expiry: no SAS in the include file".into()),
            }
        }
        Err(e) => {
            healthy = false;
            lines.push(format!("key type in effect: unknown: cannot read {}: {e}", file.display()));
        }
    }
    match pgbr.run(&[format!("--stanza={stanza}"), format!("--repo={repo}"), "repo-ls".into()]).await {
        Ok((true, _)) => lines.push(format!("repository repo{repo}: answers")),
        Ok((false, out)) => {
            healthy = false;
            lines.push(format!("repository repo{repo}: does not answer: {}", out.trim().lines().last().unwrap_or("")));
        }
        Err(e) => {
            healthy = false;
            lines.push(format!("repository repo{repo}: cannot run pgbackrest: {e}"));
        }
    }
    match version {
        Ok((maj, min, v)) if (maj, min) >= (2, 58) => lines.push(format!(
            "auto: pgBackRest {v} supports repo{repo}-azure-key-type=auto (the VM's managed identity): this VM \
             could switch to `auto` and drop the SAS (give the VM identity a data role on the container, set \
             delivery auto in the target)"
        )),
        Ok((_, _, v)) => lines.push(format!("auto: not possible: pgBackRest {v} is older than 2.58; keep the SAS")),
        Err(_) => {}
    }
    (lines, healthy)
}

#[cfg(test)]
mod tests {
    #[test]
    fn quote_output_starts_at_the_error_and_drops_header_blocks() {
        let out = "P00   INFO: check command begin 2.45\nP00  ERROR: [039]: HTTP request failed with 403\n\
                   *** Path/Query ***:\nGET /devstoreaccount1/pgbr?sig=<redacted>\n*** Request Headers ***:\n\
                   authorization: <redacted>\n*** Response Headers ***:\nserver: Azurite\n\
                   *** Response Content ***:\n<Code>AuthorizationFailure</Code>\nHINT: has a stanza-create been performed?\n";
        let q = super::quote_output(out);
        assert!(q.starts_with("  | P00  ERROR: [039]"), "{q}");
        assert!(q.contains("AuthorizationFailure") && q.contains("HINT: has a stanza-create"), "{q}");
        assert!(!q.contains("check command begin") && !q.contains("server: Azurite"), "{q}");
        assert!(!q.contains("authorization:"), "{q}");
        assert_eq!(super::quote_output(" \n"), "  | (no output)");
        let long: String = (0..50).map(|i| format!("line {i}\n")).collect();
        assert!(super::quote_output(&long).ends_with("  | (20 more lines left out)"));
    }
}
