//! Select: the pure plan of a request, one backup per database (and the globals) with a reason
//! for every choice, and the tasks it makes.

use super::*;

pub(super) fn ts(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

/// Choose one backup from `backups` (one database's or the globals', oldest first).
pub(super) fn choose<'a>(
    backups: &[&'a Manifest],
    choice: &BackupChoice,
    what: &str,
) -> Result<(&'a Manifest, String)> {
    match choice {
        BackupChoice::Latest => {
            let m = backups.last().ok_or_else(|| Error::permanent(format!("{what} has no backup")))?;
            Ok((m, format!("latest: the newest of {} backups of {what}, taken {}", backups.len(), ts(m.started_at))))
        }
        BackupChoice::LatestBefore(t) => {
            let eligible: Vec<_> = backups.iter().filter(|m| m.started_at <= *t).collect();
            let m = eligible.last().ok_or_else(|| {
                let oldest = backups.first().map(|m| ts(m.started_at)).unwrap_or_else(|| "none".into());
                Error::permanent(format!(
                    "no backup of {what} was taken at or before {}; the oldest was taken {oldest}",
                    ts(*t)
                ))
            })?;
            Ok((
                m,
                format!(
                    "latest_before {}: the newest backup of {what} taken at or before then ({}); {} newer skipped",
                    ts(*t),
                    ts(m.started_at),
                    backups.len() - eligible.len()
                ),
            ))
        }
        BackupChoice::Id(id) => {
            let id = id.strip_suffix(layout::MANIFEST_SUFFIX).unwrap_or(id);
            let m = backups.iter().find(|m| m.id == id).ok_or_else(|| {
                Error::permanent(format!("source.backup.id {id:?} is not a backup of {what}"))
                    .with_hint("`pgvault list --server S --database D` shows the backups")
            })?;
            Ok((m, format!("named by id; taken {}", ts(m.started_at))))
        }
    }
}

/// Resolve a request into tasks. Pure: `backups` is the catalog of the source server.
pub fn plan(req: &RestoreRequest, settings: &Settings, backups: &[Manifest]) -> Result<Plan> {
    req.validate()?;
    let src = &req.source;
    let mut choices = Vec::new();
    let of_server: Vec<&Manifest> = backups.iter().filter(|m| m.server == src.server).collect();
    if of_server.is_empty() {
        return Err(if settings.server(&src.server).is_some() {
            Error::permanent(format!("source server {:?} has no backups", src.server))
        } else {
            Error::permanent(format!(
                "unknown source server {:?}: it is not in the inventory and has no backups",
                src.server
            ))
            .with_hint("`pgvault list` shows the servers with backups")
        });
    }

    let target = &req.target;
    let target_server = match target.mode {
        Mode::Create | Mode::Replace => {
            let name = target.server.as_deref().expect("validated");
            let server = settings.server(name).ok_or_else(|| {
                Error::permanent(format!("target.server {name:?} is not in the inventory"))
                    .with_hint("a restore writes only to servers of PGVAULT_INVENTORY")
            })?;
            choices.push(Choice {
                what: format!("target server {name:?}"),
                reason: format!("named in the request; mode {}", target.mode.as_str()),
            });
            Some(server)
        }
        Mode::AsFiles => {
            let container = target.container.as_deref().expect("validated");
            match &settings.storage {
                StorageSettings::Local { .. } => {
                    return Err(Error::permanent(
                        "mode as-files needs Azure storage: it returns read-only user-delegation SAS URLs, \
                         which the local store cannot sign",
                    )
                    .with_hint("set PGVAULT_STORAGE=azure, or copy the files from PGVAULT_LOCAL_DIR yourself"));
                }
                StorageSettings::Azure { container: backups, .. } if backups == container => {
                    return Err(Error::permanent(format!(
                        "target.container {container:?} is the backup container; as-files copies into another one"
                    )));
                }
                StorageSettings::Azure { .. } => {}
            }
            None
        }
    };

    // Databases.
    let databases: Vec<String> = match &src.database {
        Some(db) => vec![db.clone()],
        None => {
            let mut names: Vec<String> =
                of_server.iter().filter(|m| m.kind == BackupKind::Database).map(|m| m.database.clone()).collect();
            names.sort();
            names.dedup();
            names
        }
    };
    // A whole-server restore restores the server as it was: the databases its globals backup of
    // that time lists (the newest globals at or before the chosen time), and any database backed
    // up after it. A database missing from that list whose newest backup is older was dropped.
    let reference = if src.database.is_none() {
        let globals: Vec<&Manifest> = of_server.iter().copied().filter(|m| m.kind == BackupKind::Globals).collect();
        choose(&globals, &src.backup, "the globals").ok().map(|(m, _)| m).filter(|m| m.databases.is_some())
    } else {
        None
    };
    let mut chosen: Vec<(String, &Manifest, String)> = Vec::new();
    for db in &databases {
        let what = format!("database {db:?} of server {:?}", src.server);
        let list: Vec<&Manifest> =
            of_server.iter().copied().filter(|m| m.kind == BackupKind::Database && &m.database == db).collect();
        if src.database.is_some() && list.is_empty() {
            return Err(Error::permanent(format!("{what} has no backups"))
                .with_hint("`pgvault list --server S` shows the databases with backups"));
        }
        if src.database.is_none()
            && let Some(server) = target_server
            && db == &server.maintenance_db
        {
            choices.push(Choice {
                what: format!("database {db:?}"),
                reason: format!(
                    "skipped: it is the maintenance database of target server {:?}, which pgvault connects to \
                     and never replaces in a whole-server restore",
                    server.name
                ),
            });
            continue;
        }
        match choose(&list, &src.backup, &what) {
            Ok((m, _))
                if let Some(g) = reference
                    && let Some(listed) = &g.databases
                    && !listed.contains(db)
                    && m.started_at < g.started_at =>
            {
                choices.push(Choice {
                    what: format!("database {db:?}"),
                    reason: format!(
                        "skipped: it was not on the server when the globals were backed up ({}), and its newest \
                         backup ({}) is older, so it had been dropped; name it in source.database to restore it",
                        ts(g.started_at),
                        ts(m.started_at)
                    ),
                });
            }
            Ok((m, reason)) => {
                choices.push(Choice { what: format!("backup {}", m.id), reason });
                chosen.push((db.clone(), m, what));
            }
            // A whole-server restore takes the databases that have a backup before the time.
            Err(e) if src.database.is_none() => {
                choices.push(Choice { what: format!("database {db:?}"), reason: format!("skipped: {}", e.message()) })
            }
            Err(e) => return Err(e),
        }
    }
    if chosen.is_empty() {
        return Err(Error::permanent(format!(
            "nothing to restore: no database backup of server {:?} matches the request",
            src.server
        )));
    }

    // Globals.
    let globals = if req.options.globals {
        let list: Vec<&Manifest> = of_server.iter().copied().filter(|m| m.kind == BackupKind::Globals).collect();
        let what = format!("the globals of server {:?}", src.server);
        let (m, reason) = match &src.backup {
            // The globals that go with a named backup: the newest requested before it finished.
            // Those of the same run share its requested_at, and may well start after it finished.
            BackupChoice::Id(_) => {
                let until = chosen[0].1.finished_at;
                let m = list.iter().rev().find(|m| m.requested_at <= until).ok_or_else(|| {
                    Error::permanent(format!(
                        "no backup of {what} was requested at or before {} (when the named backup finished)",
                        ts(until)
                    ))
                })?;
                (
                    *m,
                    format!(
                        "the globals of the named backup's time: the newest requested at or before it finished ({})",
                        ts(m.requested_at)
                    ),
                )
            }
            other => choose(&list, other, &what)?,
        };
        choices.push(Choice { what: format!("globals {}", m.id), reason: format!("options.globals; {reason}") });
        Some(m)
    } else {
        None
    };

    let mut tasks = Vec::new();
    let mut push = |backup: &Manifest, target: Target, globals: Option<String>, reason: String| {
        tasks.push(RestoreTask {
            version: MESSAGE_VERSION,
            task_id: format!("{}-{}", req.request_id, tasks.len() + 1),
            request_id: req.request_id.clone(),
            requested_by: req.requested_by.clone(),
            backup: backup.id.clone(),
            globals,
            target,
            options: req.options.clone(),
            reason,
        })
    };
    match target.mode {
        Mode::Create | Mode::Replace => {
            let server = target_server.expect("checked above");
            for (db, m, _) in &chosen {
                let (name, why) = match &target.database {
                    Some(t) => (t.clone(), "named in the request"),
                    None => (db.clone(), "the source database's name"),
                };
                choices.push(Choice {
                    what: format!("target database {name:?} on server {:?}", server.name),
                    reason: why.to_string(),
                });
                let t = Target {
                    mode: target.mode,
                    server: Some(server.name.clone()),
                    database: Some(name.clone()),
                    container: None,
                    prefix: None,
                    expires_in_seconds: None,
                };
                push(
                    m,
                    t,
                    globals.map(|g| g.id.clone()),
                    format!("restore {} into {name:?} on {:?} ({})", m.id, server.name, target.mode.as_str()),
                );
            }
        }
        Mode::AsFiles => {
            let prefix = normalize_prefix(target.prefix.as_deref().unwrap_or(""))?;
            let t = Target {
                mode: Mode::AsFiles,
                server: None,
                database: None,
                container: target.container.clone(),
                prefix: Some(prefix),
                expires_in_seconds: Some(target.expires_in_seconds.unwrap_or(DEFAULT_EXPIRY_SECS)),
            };
            for (_, m, _) in &chosen {
                push(m, t.clone(), None, format!("export {} as files", m.id));
            }
            if let Some(g) = globals {
                push(g, t.clone(), None, format!("export globals {} as files", g.id));
            }
        }
    }
    Ok(Plan { request_id: req.request_id.clone(), tasks, choices })
}
