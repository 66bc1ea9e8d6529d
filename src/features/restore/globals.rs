//! Globals: the roles of a `pg_dumpall --globals-only` script, created where missing.

use super::*;

/// A statement of a `pg_dumpall --globals-only` script, as far as restoring it is concerned.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum GlobalStmt {
    /// `SET ...`: session settings of the script.
    Session,
    CreateRole(String),
    /// `ALTER ROLE r ...`, `COMMENT ON ROLE r ...`: about one role.
    AboutRole(String),
    /// `GRANT a TO r ...`: a membership of role r.
    Membership(String),
    Tablespace,
    Other,
}

/// Parse an identifier at the start of `s` (quoted or not); returns it and the rest.
pub(super) fn parse_ident(s: &str) -> Option<(String, &str)> {
    let s = s.trim_start();
    if let Some(rest) = s.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = rest.char_indices();
        while let Some((i, c)) = chars.next() {
            if c == '"' {
                if rest[i + 1..].starts_with('"') {
                    out.push('"');
                    chars.next();
                } else {
                    return Some((out, &rest[i + 1..]));
                }
            } else {
                out.push(c);
            }
        }
        None
    } else {
        let end = s.find(|c: char| c.is_whitespace() || c == ';' || c == ',').unwrap_or(s.len());
        (end > 0).then(|| (s[..end].to_string(), &s[end..]))
    }
}

pub(super) fn classify(stmt: &str) -> GlobalStmt {
    let upper = stmt.to_ascii_uppercase();
    let after = |p: &str| stmt.get(p.len()..).unwrap_or("");
    if upper.starts_with("SET ") {
        GlobalStmt::Session
    } else if upper.starts_with("CREATE ROLE ") {
        parse_ident(after("CREATE ROLE ")).map_or(GlobalStmt::Other, |(r, _)| GlobalStmt::CreateRole(r))
    } else if upper.starts_with("ALTER ROLE ") {
        parse_ident(after("ALTER ROLE ")).map_or(GlobalStmt::Other, |(r, _)| GlobalStmt::AboutRole(r))
    } else if upper.starts_with("COMMENT ON ROLE ") {
        parse_ident(after("COMMENT ON ROLE ")).map_or(GlobalStmt::Other, |(r, _)| GlobalStmt::AboutRole(r))
    } else if upper.contains("TABLESPACE") {
        GlobalStmt::Tablespace
    } else if upper.starts_with("GRANT ") && !upper.contains(" ON ") {
        // GRANT a, b TO r [WITH ...] [GRANTED BY g]
        let mut rest = after("GRANT ");
        loop {
            let Some((_, r)) = parse_ident(rest) else { return GlobalStmt::Other };
            let r = r.trim_start();
            if let Some(r) = r.strip_prefix(',') {
                rest = r;
                continue;
            }
            return match r.get(..3).map(|p| p.eq_ignore_ascii_case("TO ")) {
                Some(true) => parse_ident(&r[3..]).map_or(GlobalStmt::Other, |(m, _)| GlobalStmt::Membership(m)),
                _ => GlobalStmt::Other,
            };
        }
    } else {
        GlobalStmt::Other
    }
}

/// Split a psql script into statements: `;` at the end of a line outside quotes ends one;
/// comment lines and psql meta-commands (`\restrict`) are dropped. Public for the property tests
/// of `tests/hostile_input.rs`.
pub fn split_statements(script: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let (mut in_single, mut in_double) = (false, false);
    for line in script.lines() {
        if cur.is_empty() && (line.starts_with("--") || line.starts_with('\\') || line.trim().is_empty()) {
            continue;
        }
        for c in line.chars() {
            match c {
                '\'' if !in_double => in_single = !in_single,
                '"' if !in_single => in_double = !in_double,
                _ => {}
            }
        }
        if !cur.is_empty() {
            cur.push('\n');
        }
        cur.push_str(line);
        if !in_single && !in_double && line.trim_end().ends_with(';') {
            out.push(std::mem::take(&mut cur));
        }
    }
    if !cur.trim().is_empty() {
        out.push(cur);
    }
    out
}

/// Restore the roles of a globals backup into a server: create the roles it lacks (with their
/// attributes, settings, comments and memberships); leave existing roles exactly as they are.
pub async fn restore_globals(ctx: &Ctx, server_name: &str, id: &str) -> Result<GlobalsReport> {
    let m = catalog::manifest(ctx.store.as_ref(), id).await?;
    if m.kind != BackupKind::Globals {
        return Err(Error::permanent(format!("backup {id:?} is not a globals backup")));
    }
    let server = ctx.settings.server(server_name).ok_or_else(|| crate::config::context::unknown_server(server_name))?;
    let key = catalog::data_key(ctx, &m).await?;
    let stream = read_with_progress(ctx, &m, "restore globals").await?;
    let (tx, rx) = mpsc::channel::<Bytes>(catalog::QUEUED);
    let compression = m.compression;
    let consumer = tokio::task::spawn_blocking(move || {
        let mut buf = Vec::new();
        catalog::feed(rx, compression, &mut buf, false).map(|_| buf)
    });
    let (pumped, fed) = tokio::join!(catalog::plain_blocks(&m, key.as_ref(), stream, tx), consumer);
    pumped?;
    let script = fed
        .map_err(|e| Error::transient(format!("read globals task failed: {e}")))?
        .map_err(|e| Error::permanent(format!("backup {id:?}: decompress: {e}")))?;
    if script.len() > MAX_GLOBALS_BYTES
        || !String::from_utf8_lossy(&script).contains("PostgreSQL database cluster dump")
    {
        return Err(Error::permanent(format!("backup {id:?} is not a pg_dumpall globals script")));
    }
    let script = String::from_utf8(script).map_err(|_| Error::permanent(format!("backup {id:?} is not UTF-8")))?;

    let spec = ctx.conn_spec(server_name, &server.maintenance_db).await?;
    let client = pg::connect(&spec).await?;
    let existing: std::collections::HashSet<String> = client
        .query("SELECT rolname FROM pg_roles", &[])
        .await
        .map_err(|e| pg::query_error("list roles", e))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut report = GlobalsReport { backup: m.id.clone(), ..Default::default() };
    let short = |s: &str| s.lines().next().unwrap_or("").chars().take(120).collect::<String>();
    for stmt in split_statements(&script) {
        let kind = classify(&stmt);
        let apply = match &kind {
            GlobalStmt::Session => true,
            GlobalStmt::CreateRole(r) => {
                if existing.contains(r) {
                    report.skipped.push(r.clone());
                    false
                } else {
                    true
                }
            }
            GlobalStmt::AboutRole(r) | GlobalStmt::Membership(r) => report.created.contains(r),
            GlobalStmt::Tablespace => {
                report.not_applied.push(format!("{} (tablespaces are server-specific)", short(&stmt)));
                false
            }
            GlobalStmt::Other => {
                report.not_applied.push(format!("{} (not a role statement)", short(&stmt)));
                false
            }
        };
        if !apply {
            continue;
        }
        match client.batch_execute(&stmt).await {
            Ok(()) => {
                if let GlobalStmt::CreateRole(r) = &kind {
                    report.created.push(r.clone());
                }
            }
            Err(e) if matches!(kind, GlobalStmt::CreateRole(_)) => {
                let GlobalStmt::CreateRole(r) = kind else { unreachable!() };
                if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_OBJECT) {
                    // Created meanwhile (another task of the same request).
                    report.skipped.push(r);
                    continue;
                }
                return Err(Error::permanent(format!(
                    "restore globals {id:?} into server {server_name:?}: create role {r:?}: {}",
                    redact(&pg::error_text(&e))
                )));
            }
            Err(e) => report.not_applied.push(format!("{}: {}", short(&stmt), redact(&pg::error_text(&e)))),
        }
    }
    tracing::info!(
        server = %server_name, backup = %id, created = ?report.created, skipped = ?report.skipped,
        not_applied = report.not_applied.len(), "globals restored"
    );
    Ok(report)
}
