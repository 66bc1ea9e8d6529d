//! The database: checks before any work, the temporary database created like the source,
//! pg_restore into it, then the checked swap transaction that gives it the backup's properties.

use super::*;
use serde::{Deserialize, Serialize};

/// How a database is fed to pg_restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Blob -> verified blocks -> zstd -> pg_restore's stdin. No disk.
    Stream,
    /// Blob -> verified blocks -> zstd -> a local file -> `pg_restore --jobs=N file`.
    Parallel(u32),
    /// A backup in parts: pre-data, then up to N parts at once, each Blob -> verified blocks ->
    /// zstd -> its own pg_restore or COPY, then post-data (see [`super::parts`]).
    Parts(u32),
}

/// Parallel only when asked for and the scratch disk keeps `reserve` bytes free after holding
/// the archive. Pure.
pub fn choose_method(jobs: u32, raw_bytes: u64, free: Option<u64>, reserve: u64) -> (Method, String) {
    if jobs <= 1 {
        return (Method::Stream, "jobs is 1: streamed from storage into pg_restore".into());
    }
    let Some(free) = free else {
        return (Method::Stream, "the scratch directory's free space is unknown: streamed with one job".into());
    };
    let need = raw_bytes.saturating_add(reserve);
    if free < need {
        return (
            Method::Stream,
            format!(
                "a parallel restore needs {need} bytes free in the scratch directory (archive {raw_bytes} + reserve \
                 {reserve}), it has {free}: streamed with one job"
            ),
        );
    }
    (
        Method::Parallel(jobs),
        format!(
            "the scratch directory has {free} bytes free: archive of {raw_bytes} bytes copied, pg_restore --jobs={jobs}"
        ),
    )
}

pub(super) fn free_space(dir: &Path) -> Option<u64> {
    let s = rustix::fs::statvfs(dir).ok()?;
    Some(s.f_bavail.saturating_mul(s.f_frsize))
}

/// `<name>_pre_restore_<YYYYMMDD_HHMMSS>`, the name cut (at a character boundary) so the whole
/// stays within 63 bytes.
pub fn pre_restore_name(name: &str, at: OffsetDateTime) -> String {
    let fmt = time::macros::format_description!("[year][month][day]_[hour][minute][second]");
    let suffix = format!("{PRE_RESTORE_INFIX}{}", at.to_offset(time::UtcOffset::UTC).format(&fmt).expect("format"));
    let mut cut = MAX_IDENT_BYTES - suffix.len();
    while !name.is_char_boundary(cut.min(name.len())) {
        cut -= 1;
    }
    format!("{}{suffix}", &name[..cut.min(name.len())])
}

/// The temporary database of a task: `pgvault_restore_<8 hex of the task id's SHA-256>`. One name
/// per task, so a delivery finds (and drops) what an earlier, killed delivery of the task left.
pub fn temp_name(task_id: &str) -> String {
    use sha2::Digest;
    format!("{TEMP_DB_PREFIX}{}", &hex::encode(sha2::Sha256::digest(task_id.as_bytes()))[..8])
}

/// The advisory lock namespace of restore targets (`pgvr`).
const TARGET_LOCK_NAMESPACE: i32 = 0x7067_7672;

/// Hold the restore lock of the task's target database for as long as the returned connection
/// lives: a session-level advisory lock on the target server, so it ends with the process that
/// holds it (a killed worker's connections close, and the server lets go of the lock). A
/// delivery whose earlier delivery of the same message still runs (the host lost track of it,
/// and the claim was taken over as if it had died), or another task restoring into the same
/// database, finds it held: a transient error, so the host retries the message later and finds
/// the run's outcome then. `None` when the server cannot be reached now: the run itself then
/// fails on that and records why.
pub(super) async fn lock_target(ctx: &Ctx, task: &RestoreTask) -> Result<Option<tokio_postgres::Client>> {
    let (Some(server_name), Some(target)) = (task.target.server.as_deref(), task.target.database.as_deref()) else {
        return Ok(None);
    };
    let Some(server) = ctx.settings.server(server_name) else { return Ok(None) };
    let locked = async {
        let spec = ctx.conn_spec(server_name, &server.maintenance_db).await?;
        let client = pg::connect(&spec).await?;
        let got: bool = client
            .query_one("SELECT pg_try_advisory_lock($1, hashtext($2))", &[&TARGET_LOCK_NAMESPACE, &target])
            .await
            .map_err(|e| pg::query_error("take the restore target's lock", e))?
            .get(0);
        Ok::<_, Error>((client, got))
    }
    .await;
    match locked {
        Ok((client, true)) => Ok(Some(client)),
        Ok((_, false)) => Err(Error::transient(format!(
            "task {}: database {target:?} on server {server_name:?} is being restored by a run that is still \
             running (an earlier delivery of this task, or another task into the same database); nothing was done",
            task.task_id
        ))
        .with_hint("the host retries this message later; by then the running restore has recorded its outcome")),
        Err(e) => {
            tracing::warn!(task = %task.task_id, error = %e, "cannot take the restore target's lock; the run reports the cause");
            Ok(None)
        }
    }
}

/// Where a run notes, just before its swap transaction, which database (by OID, which a rename
/// keeps) it is about to put in place: a delivery after a kill between the swap's commit and the
/// task's record finds the swap done instead of restoring again. Removed when the run ends.
pub fn swap_marker(task_id: &str) -> String {
    format!("{}restore-swap/{task_id}", crate::features::claim::PREFIX)
}

#[derive(Debug, Serialize, Deserialize)]
struct SwapMarker {
    temp: String,
    oid: u32,
    target: String,
    previous: Option<String>,
}

/// The swap of an earlier delivery of this task committed (the database its marker names is in
/// place under the target's name), but that delivery was killed before it recorded so.
async fn swapped_earlier(
    ctx: &Ctx,
    admin: &tokio_postgres::Client,
    task: &RestoreTask,
    server_name: &str,
    target: &str,
) -> Result<Option<DatabaseReport>> {
    let name = swap_marker(&task.task_id);
    if !ctx.store.exists(&name).await? {
        return Ok(None);
    }
    let Ok(marker) = serde_json::from_slice::<SwapMarker>(&ctx.store.get(&name).await?) else { return Ok(None) };
    let now_named: Option<String> = admin
        .query_opt("SELECT datname::text FROM pg_database WHERE oid = $1", &[&marker.oid])
        .await
        .map_err(|e| pg::query_error("look up the database an earlier delivery put in place", e))?
        .map(|r| r.get(0));
    if now_named.as_deref() != Some(target) || marker.target != target {
        return Ok(None);
    }
    tracing::warn!(task = %task.task_id, target = %target, "an earlier delivery of this task put the restored database in place and was stopped before recording it");
    Ok(Some(DatabaseReport {
        server: server_name.into(),
        database: target.into(),
        temp_database: marker.temp,
        method: "earlier delivery".into(),
        method_reason: "restored by an earlier delivery of this task".into(),
        previous_kept_as: marker.previous,
        notes: vec![
            "an earlier delivery of this task restored and verified the database and put it in place, then was \
             stopped (killed) before it recorded that: nothing was restored again"
                .into(),
        ],
        ..Default::default()
    }))
}

pub(super) async fn db_exists(client: &tokio_postgres::Client, name: &str) -> Result<bool> {
    let n: i64 = client
        .query_one("SELECT count(*) FROM pg_database WHERE datname = $1", &[&name])
        .await
        .map_err(|e| pg::query_error(&format!("look up database {name:?}"), e))?
        .get(0);
    Ok(n > 0)
}

pub(super) async fn sessions_on(client: &tokio_postgres::Client, name: &str) -> Result<i64> {
    Ok(client
        .query_one("SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()", &[&name])
        .await
        .map_err(|e| pg::query_error(&format!("count sessions on database {name:?}"), e))?
        .get(0))
}

/// Wait (with a deadline) until the backends of a finished pg_restore and of our own checks have
/// left the temporary database, so it can be renamed.
pub(super) async fn wait_until_unused(client: &tokio_postgres::Client, name: &str) -> Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if sessions_on(client, name).await? == 0 {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(Error::transient(format!("sessions stayed on temporary database {name:?} for 30 s")));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(super) async fn drop_temp(admin: &tokio_postgres::Client, temp: &str) -> std::result::Result<(), String> {
    // FORCE: only pgvault's own pg_restore can be connected to a temporary database.
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote_ident(temp)))
        .await
        .map_err(|e| redact(&pg::error_text(&e)))
}

/// The restoring login and what it may do, read before anything is touched.
pub(super) struct Login {
    name: String,
    superuser: bool,
    createdb: bool,
    /// `SET` (16+) or `MEMBER` (older) is what `ALTER … OWNER TO` needs of the new owner.
    set_privilege: &'static str,
}

impl Login {
    async fn read(admin: &tokio_postgres::Client, version_num: u32) -> Result<Login> {
        let row = admin
            .query_one(
                "SELECT current_user::text, rolsuper, rolcreatedb FROM pg_roles WHERE rolname = current_user",
                &[],
            )
            .await
            .map_err(|e| pg::query_error("read the restoring role's attributes", e))?;
        Ok(Login {
            name: row.get(0),
            superuser: row.get(1),
            createdb: row.get(2),
            set_privilege: if pg::major_of(version_num) >= 16 { "SET" } else { "MEMBER" },
        })
    }

    /// Whether the login has `privilege` (`USAGE`: acts as the role; `SET`/`MEMBER`: may become
    /// it) in `role`.
    async fn has_role(&self, admin: &tokio_postgres::Client, role: &str, privilege: &str) -> Result<bool> {
        if self.superuser || role == self.name {
            return Ok(true);
        }
        admin
            .query_one("SELECT pg_has_role(current_user, $1::text::name, $2)", &[&role, &privilege])
            .await
            .map(|r| r.get(0))
            .map_err(|e| pg::query_error(&format!("check the restoring role's membership in {role:?}"), e))
    }
}

pub(super) async fn role_exists(admin: &tokio_postgres::Client, role: &str) -> Result<bool> {
    let n: i64 = admin
        .query_one("SELECT count(*) FROM pg_roles WHERE rolname = $1", &[&role])
        .await
        .map_err(|e| pg::query_error(&format!("look up role {role:?}"), e))?
        .get(0);
    Ok(n > 0)
}

pub(super) async fn owner_of(admin: &tokio_postgres::Client, database: &str) -> Result<Option<String>> {
    Ok(admin
        .query_opt("SELECT pg_get_userbyid(datdba)::text FROM pg_database WHERE datname = $1", &[&database])
        .await
        .map_err(|e| pg::query_error(&format!("read the owner of database {database:?}"), e))?
        .map(|r| r.get(0)))
}

/// Who the restored database belongs to, checked: the role exists (after the globals, which may
/// have created it) and the restoring login may give the database to it. Refused otherwise,
/// before pg_restore starts, with a HINT naming the ways out.
pub(super) async fn choose_owner(
    admin: &tokio_postgres::Client,
    login: &Login,
    task: &RestoreTask,
    m: &Manifest,
    previous_owner: Option<&str>,
    server_name: &str,
) -> Result<dbprops::OwnerChoice> {
    use dbprops::OwnerChoice;
    let o = &task.options;
    let choice = match (&o.owner, o.no_owner, &m.database_properties, previous_owner) {
        (Some(r), _, _, _) => OwnerChoice::Mapped(r.clone()),
        (None, true, _, _) => OwnerChoice::NotApplied,
        (None, false, Some(p), _) => OwnerChoice::Backup(p.owner.clone()),
        (None, false, None, Some(prev)) => OwnerChoice::Previous(prev.to_string()),
        (None, false, None, None) => OwnerChoice::NotApplied,
    };
    let Some(role) = choice.role() else { return Ok(choice) };
    if let OwnerChoice::Mapped(_) = &choice
        && !role_exists(admin, role).await?
    {
        return Err(Error::permanent(format!("options.owner role {role:?} does not exist on server {server_name:?}")));
    }
    // pg_restore gives every object back to its owner (unless no_owner or owner says otherwise):
    // the login must be able to become each of them, or pg_restore would fail half-way.
    let mut owners = vec![role.to_string()];
    if let (OwnerChoice::Backup(_), Some(p)) = (&choice, &m.database_properties) {
        owners.extend(p.object_owners.iter().cloned());
    }
    let mut missing = Vec::new();
    let mut not_member = Vec::new();
    for r in &owners {
        if !role_exists(admin, r).await? {
            missing.push(r.clone());
        } else if !login.has_role(admin, r, login.set_privilege).await? {
            not_member.push(r.clone());
        }
    }
    if !missing.is_empty() {
        return Err(Error::permanent(format!(
            "objects of the backup's database belong to {}, which do not exist on server {server_name:?}",
            quoted_list(&missing)
        ))
        .with_hint(
            "restore the roles first (options.globals), give everything to an existing role (options.owner), or \
             restore with options.no_owner (everything then belongs to the restoring role)",
        ));
    }
    if !not_member.is_empty() {
        let me = &login.name;
        let grants: Vec<String> =
            not_member.iter().map(|r| format!("GRANT {} TO {};", quote_ident(r), quote_ident(me))).collect();
        let flags: Vec<String> = not_member.iter().map(|r| format!("--member-of {r}")).collect();
        return Err(Error::permanent(format!(
            "role {me:?} cannot give the restored database and its objects to {} on server {server_name:?}: it is \
             not a member of {}",
            quoted_list(&not_member),
            if not_member.len() == 1 { "that role" } else { "those roles" }
        ))
        .with_hint(format!(
            "{} (`pgvault grant-sql --restore --role {me} {}` prints it), or restore with options.no_owner \
             (everything then belongs to {me:?})",
            grants.join(" "),
            flags.join(" ")
        )));
    }
    Ok(choice)
}

pub(super) fn quoted_list(items: &[String]) -> String {
    items.iter().map(|i| format!("{i:?}")).collect::<Vec<_>>().join(", ")
}

/// Restore `m` as `task` says. The globals' report is also put in `applied` as soon as they are
/// restored: roles created stay created whatever happens next, and a failed task's record says so.
pub(super) async fn restore_database(
    ctx: &Ctx,
    task: &RestoreTask,
    m: &Manifest,
    applied: &mut Option<GlobalsReport>,
) -> Result<(Option<GlobalsReport>, DatabaseReport)> {
    let settings = &ctx.settings;
    let server_name = task.target.server.as_deref().expect("validated");
    let target = task.target.database.as_deref().expect("validated");
    let server = settings.server(server_name).ok_or_else(|| crate::config::context::unknown_server(server_name))?;
    // An encrypted backup's key is unwrapped before anything is touched: a key version that was
    // disabled or deleted refuses the restore here, with that reason.
    let key = catalog::data_key(ctx, m).await?;
    let admin_spec = ctx.conn_spec(server_name, &server.maintenance_db).await?;
    let mut admin = pg::connect(&admin_spec).await?;
    let (version, version_num) = pg::server_version(&admin).await?;
    let target_major = pg::major_of(version_num);
    let where_ = format!("database {target:?} on server {server_name:?}");
    if let Some(done) = swapped_earlier(ctx, &admin, task, server_name, target).await? {
        return Ok((None, done));
    }
    if m.tool.major > target_major {
        return Err(Error::permanent(format!(
            "backup {:?} was made by pg_dump {}; server {server_name:?} runs PostgreSQL {target_major}: a logical \
             backup restores into the same or a newer major version only",
            m.id, m.tool.major
        )));
    }
    let tool =
        pg::pick_tool("pg_restore", &settings.bin_dirs_for(server), target_major, &format!("server {server_name:?}"))
            .await?;
    if tool.major > target_major && tool.major >= 17 && target_major < 17 {
        return Err(Error::permanent(format!(
            "the only pg_restore for server {server_name:?} (PostgreSQL {target_major}) is {} ({}), which sends \
             `SET transaction_timeout`, a setting PostgreSQL {target_major} rejects",
            tool.major,
            tool.path.display()
        ))
        .with_hint(format!("list PostgreSQL {target_major}'s bin directory in PGVAULT_PG_BIN_DIRS")));
    }
    let exists = db_exists(&admin, target).await?;
    let mode = task.target.mode;
    if mode == Mode::Create && exists {
        return Err(Error::permanent(format!("{where_} exists; mode create never touches an existing database"))
            .with_hint("use mode replace (the old database is kept), or another target database"));
    }
    if mode == Mode::Replace && target == server.maintenance_db {
        return Err(Error::permanent(format!(
            "{where_} is the server's maintenance database, which pgvault connects to: it cannot be replaced"
        ))
        .with_hint("restore it under another name, or set another maintenance_db in the inventory"));
    }
    // What the restoring login may do, before anything is touched.
    let login = Login::read(&admin, version_num).await?;
    if !login.superuser && !login.createdb {
        return Err(Error::permanent(format!(
            "role {:?} cannot restore into server {server_name:?}: it may not create databases (CREATEDB)",
            login.name
        ))
        .with_hint(format!("`pgvault grant-sql --restore --role {}` prints what the restore role needs", login.name)));
    }
    let previous_owner = if exists { owner_of(&admin, target).await? } else { None };
    if mode == Mode::Replace
        && let Some(owner) = &previous_owner
        && !login.has_role(&admin, owner, "USAGE").await?
    {
        let me = &login.name;
        return Err(Error::permanent(format!(
            "role {me:?} cannot replace {where_}: the database belongs to {owner:?}, and only its owner (or a member \
             of that role) may rename it out of the way"
        ))
        .with_hint(format!(
            "GRANT {} TO {} (`pgvault grant-sql --restore --role {me} --member-of {owner}` prints it), or restore with \
             mode create under another name",
            quote_ident(owner),
            quote_ident(me)
        )));
    }
    // Without globals to restore first, the owner's role must exist now: check before any work.
    let owner = match task.globals {
        None => Some(choose_owner(&admin, &login, task, m, previous_owner.as_deref(), server_name).await?),
        Some(_) => None,
    };
    // The temporary database has the source's encoding and locale. A target that cannot make
    // it fails here, before anything is touched.
    let props = m.database_properties.as_ref();
    let locale = match props {
        Some(p) if !task.options.default_locale => {
            let default_locale_hint = format!(
                "install the locale on server {server_name:?}, or restore with options.default_locale to create the \
                 database with the server's default encoding and locale instead (text then sorts and compares by \
                 the target's rules, not the source's)"
            );
            let clauses = dbprops::create_clauses(p, target_major)
                .map_err(|e| e.context(format!("server {server_name:?}")).with_hint(&default_locale_hint))?;
            Some((clauses, p.describe_locale(), default_locale_hint))
        }
        _ => None,
    };
    if target_major >= 16 && props.is_some_and(|p| p.locale_provider == dbprops::LocaleProvider::Icu) {
        // An ICU locale the target's ICU does not know must fail, not fall back to root rules.
        admin
            .batch_execute("SET icu_validation_level = error")
            .await
            .map_err(|e| pg::query_error("set icu_validation_level", e))?;
    }
    let (method, method_reason) = if m.is_parts() {
        check_parts(m)?;
        parts_method(task.options.jobs.unwrap_or(DEFAULT_PART_JOBS), m)
    } else {
        let jobs = task.options.jobs.unwrap_or(1);
        choose_method(jobs, m.raw_bytes, free_space(&settings.restore_scratch_dir), settings.restore_scratch_reserve)
    };
    let temp = temp_name(&task.task_id);
    // A delivery of this task that was killed left it (no run of the task is alive: the caller
    // holds the target's lock). Its content is not trusted: restored again from the start.
    let leftover = db_exists(&admin, &temp).await?;
    if leftover {
        tracing::warn!(task = %task.task_id, temp = %temp, "dropping the temporary database an earlier, killed delivery of this task left");
        drop_temp(&admin, &temp).await.map_err(|d| {
            Error::transient(format!("drop temporary database {temp:?}, left by an earlier delivery of this task: {d}"))
        })?;
    }
    let create = format!(
        "CREATE DATABASE {} TEMPLATE template0{}",
        quote_ident(&temp),
        locale.as_ref().map(|l| l.0.as_str()).unwrap_or("")
    );
    if let Err(e) = admin.batch_execute(&create).await {
        let what = format!("create temporary database {temp:?} on server {server_name:?}");
        return Err(match (&locale, e.as_db_error()) {
            (Some((_, described, hint)), Some(db)) => Error::permanent(format!(
                "server {server_name:?} cannot create a database like the backup's ({described}): {}",
                redact(db.message())
            ))
            .with_hint(hint),
            _ => pg::query_error(&what, e),
        });
    }
    tracing::info!(task = %task.task_id, backup = %m.id, temp = %temp, target = %target, method = ?method, "restoring into a temporary database");

    let mut report = DatabaseReport {
        server: server_name.into(),
        database: target.into(),
        temp_database: temp.clone(),
        method: match method {
            Method::Stream => "stream".into(),
            Method::Parallel(_) => "parallel".into(),
            Method::Parts(_) => "parts".into(),
        },
        method_reason,
        pg_restore: tool.version.clone(),
        target_version: version,
        ..Default::default()
    };
    if leftover {
        report
            .notes
            .push(format!("temporary database {temp:?}, left by an earlier delivery that was stopped, was dropped"));
    }
    let temp_spec = admin_spec.with_db(&temp);
    let restored = async {
        // Closed while it is restored, and if it is kept after a failed swap: the privileges the
        // database ends up with are set in the swap transaction.
        admin
            .batch_execute(&format!("REVOKE ALL ON DATABASE {} FROM PUBLIC", quote_ident(&temp)))
            .await
            .map_err(|e| pg::query_error(&format!("close temporary database {temp:?}"), e))?;
        // The locale as the target stored it (newer servers canonicalize ICU locale names).
        let stored = match props {
            Some(_) if locale.is_some() => Some(pg::database_properties(&admin, &temp, version_num).await?),
            _ => None,
        };
        let globals = match &task.globals {
            Some(g) => Some(restore_globals(ctx, server_name, g).await?),
            None => None,
        };
        applied.clone_from(&globals);
        let owner = match owner {
            Some(o) => o,
            // The globals may have created the owner: check now.
            None => choose_owner(&admin, &login, task, m, previous_owner.as_deref(), server_name).await?,
        };
        let mut args = vec![format!("--dbname={temp}"), "--no-password".to_string(), "--exit-on-error".to_string()];
        if task.options.no_owner || task.options.owner.is_some() {
            args.push("--no-owner".into());
        }
        if let Some(owner) = &task.options.owner {
            args.push(format!("--role={owner}"));
        }
        if task.options.no_privileges {
            args.push("--no-privileges".into());
        }
        let parts = match method {
            Method::Parts(jobs) => {
                let run = parts::PartsRun {
                    ctx,
                    m,
                    key: key.as_ref(),
                    tool: &tool,
                    spec: &temp_spec,
                    args: &args,
                    role: task.options.owner.as_deref(),
                    jobs,
                };
                Some(parts::restore_parts(&run).await?)
            }
            _ => {
                feed_pg_restore(ctx, m, key.as_ref(), &tool, &temp_spec, args, method).await?;
                None
            }
        };
        crate::seams::failpoint::hit("restore.after-pg-restore");
        let checked = check_row_counts(&temp_spec, m).await?;
        wait_until_unused(&admin, &temp).await?;
        Ok::<_, Error>((globals, owner, checked, stored, parts))
    }
    .await;
    let (globals, owner, stored) = match restored {
        Ok((globals, owner, n, stored, parts)) => {
            report.tables_checked = n;
            if let Some((parts, post_data)) = parts {
                report.parts = parts;
                report.method_reason = format!("{}; {post_data}", report.method_reason);
            }
            (globals, owner, stored)
        }
        Err(e) => {
            let dropped = drop_temp(&admin, &temp).await;
            let note = match dropped {
                Ok(()) => format!("temporary database {temp:?} dropped; {where_} untouched"),
                Err(d) => format!("dropping temporary database {temp:?} failed too ({d}); drop it by hand"),
            };
            // Name the backup once: many reasons (a corrupt block, say) name it already.
            let what = if e.message().contains(&m.id) {
                format!("restore into {where_} ({note})")
            } else {
                format!("restore backup {:?} into {where_} ({note})", m.id)
            };
            return Err(e.context(what));
        }
    };
    if m.row_counts.as_ref().is_none_or(|r| !r.is_exact()) {
        report.notes.push("the manifest has no exact row counts: row counts were not compared".into());
    }
    if let (Some(p), Some(s)) = (props, &stored)
        && p.locale != s.locale
    {
        report.notes.push(format!(
            "the ICU locale {:?} is stored as {:?} by PostgreSQL {target_major}",
            p.locale.as_deref().unwrap_or(""),
            s.locale.as_deref().unwrap_or("")
        ));
    }

    // Put it in place: the properties, the owner and both renames in one transaction, checked
    // before it commits. The target name never points at nothing, and a failure changes nothing.
    let now = OffsetDateTime::now_utc();
    let previous = (mode == Mode::Replace && exists).then(|| pre_restore_name(target, now));
    if let Some(p) = &previous
        && db_exists(&admin, p).await?
    {
        return Err(swap_failed(
            &where_,
            &temp,
            &format!("database {p:?} (the name for the old copy) exists"),
            None,
            &[],
        ));
    }
    let facts = dbprops::TargetFacts {
        restorer: login.name.clone(),
        roles: admin
            .query("SELECT rolname::text FROM pg_roles", &[])
            .await
            .map_err(|e| pg::query_error("list the target's roles", e))?
            .iter()
            .map(|r| r.get(0))
            .collect(),
    };
    // A backup that records no properties (made before pgvault recorded them): in replace, the
    // replaced database's privileges, settings and comment are the best there is.
    let fallback = match (props, exists) {
        (None, true) => Some(pg::database_properties(&admin, target, version_num).await?),
        _ => None,
    };
    let applied_props = props.or(fallback.as_ref());
    let plan = match applied_props {
        Some(p) => dbprops::plan_apply(p, &temp, target, &owner, task.options.no_privileges, &facts),
        None => {
            // Nothing to go by: the owner as chosen, and the default privileges back.
            let mut plan =
                dbprops::ApplyPlan { owner: dbprops::owner_step(&owner, None, target), ..Default::default() };
            let defaults = dbprops::DatabaseProperties {
                owner: owner.role().unwrap_or(&login.name).to_string(),
                ..dbprops::DatabaseProperties::empty()
            };
            let p = dbprops::plan_apply(&defaults, &temp, target, &dbprops::OwnerChoice::NotApplied, true, &facts);
            plan.acl_role = owner.role().filter(|r| *r != login.name).map(String::from);
            plan.acl = p.acl;
            plan.expect_acl = dbprops::default_privileges(owner.role().unwrap_or(&login.name));
            plan
        }
    };
    let mut props_report = dbprops::PropertiesReport { skipped: plan.skipped.clone(), ..Default::default() };
    let mut renames = Vec::new();
    if let Some(p) = &previous {
        renames.push(format!("ALTER DATABASE {} RENAME TO {}", quote_ident(target), quote_ident(p)));
    }
    renames.push(format!("ALTER DATABASE {} RENAME TO {}", quote_ident(&temp), quote_ident(target)));
    let finish = plan.sql(&renames);
    let oid: u32 = admin
        .query_one("SELECT oid FROM pg_database WHERE datname = $1", &[&temp])
        .await
        .map_err(|e| pg::query_error(&format!("look up temporary database {temp:?}"), e))?
        .get(0);
    let marker = SwapMarker { temp: temp.clone(), oid, target: target.into(), previous: previous.clone() };
    ctx.store
        .put(
            &swap_marker(&task.task_id),
            Bytes::from(serde_json::to_vec(&marker).expect("serializes")),
            &Tags::default(),
        )
        .await
        .map_err(|e| e.context(format!("note the swap of task {}", task.task_id)))?;
    let tx = admin.transaction().await.map_err(|e| pg::query_error("begin the swap transaction", e))?;
    let swapped = async {
        let mut tx = tx;
        let sql_err = |e: tokio_postgres::Error| (redact(&pg::error_text(&e)), Some(e));
        let mut applied_checks = Vec::new();
        for step in &plan.steps {
            let sp = tx.savepoint("pgvault_property").await.map_err(sql_err)?;
            match sp.batch_execute(&step.sql).await {
                Ok(()) => {
                    sp.commit().await.map_err(sql_err)?;
                    applied_checks.push(&step.check);
                    props_report.applied.push(step.what.clone());
                }
                Err(e) => {
                    let mut reason = redact(&pg::error_text(&e));
                    if let dbprops::Check::Setting(s) = &step.check
                        && e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE)
                    {
                        reason.push_str(&format!(
                            " (on PostgreSQL 15+ an admin may `GRANT SET ON PARAMETER {} TO {}`)",
                            s.name,
                            quote_ident(&login.name)
                        ));
                    }
                    sp.rollback().await.map_err(sql_err)?;
                    props_report.skipped.push(dbprops::Skipped { what: step.what.clone(), reason });
                }
            }
        }
        for sql in &renames {
            tx.batch_execute(sql).await.map_err(|e| (rename_error(&e), Some(e)))?;
            crate::seams::failpoint::hit("restore.between-renames");
        }
        if let Some(step) = &plan.owner {
            tx.batch_execute(&step.sql).await.map_err(|e| (step_error(&step.what, &e), Some(e)))?;
            props_report.applied.push(step.what.clone());
        }
        // The privileges as the owner: its grants, with itself as grantor, as in the source.
        if let Some(r) = &plan.acl_role {
            tx.batch_execute(&format!("SET LOCAL ROLE {}", quote_ident(r))).await.map_err(sql_err)?;
        }
        for step in &plan.acl {
            tx.batch_execute(&step.sql).await.map_err(|e| (step_error(&step.what, &e), Some(e)))?;
            props_report.applied.push(step.what.clone());
        }
        if plan.acl_role.is_some() {
            tx.batch_execute("RESET ROLE").await.map_err(sql_err)?;
        }
        let actual = pg::database_properties(&tx, target, version_num).await.map_err(|e| (e.to_string(), None))?;
        let expected_owner = owner.role().unwrap_or(&login.name);
        let empty = dbprops::DatabaseProperties::empty();
        let diffs = dbprops::compare(
            applied_props.unwrap_or(&empty),
            stored.as_ref(),
            &plan,
            &applied_checks,
            expected_owner,
            &actual,
        );
        if !diffs.is_empty() {
            return Err((format!("the database's properties did not come out as planned: {}", diffs.join("; ")), None));
        }
        props_report.checked = true;
        tx.commit().await.map_err(sql_err)?;
        Ok::<_, (String, Option<tokio_postgres::Error>)>(())
    }
    .await;
    if let Err((why, e)) = swapped {
        // Dropping the transaction rolled it back; nothing was renamed.
        return Err(swap_failed(&where_, &temp, &why, e.as_ref(), &finish));
    }
    crate::seams::failpoint::hit("restore.after-swap");
    report.previous_kept_as = previous.clone();
    if mode == Mode::Replace && !exists {
        report.notes.push(format!("{where_} did not exist: nothing was replaced"));
    }
    if let Some(p) = &previous {
        report.notes.push(format!("the old database is kept as {p:?}, with its own properties"));
    }
    match (props, &locale, &fallback) {
        (None, _, Some(_)) => report.notes.push(
            "the backup's manifest does not record the database's own properties (it was made before pgvault \
             recorded them): the encoding and locale are the target server's defaults, and the owner, privileges, \
             settings and comment are the replaced database's"
                .into(),
        ),
        (None, _, None) => report.notes.push(
            "the backup's manifest does not record the database's own properties (it was made before pgvault \
             recorded them): the encoding and locale are the target server's defaults, the database belongs to the \
             restoring role (or options.owner), and it has the default privileges, no settings and no comment"
                .into(),
        ),
        (Some(p), None, _) => props_report.skipped.insert(
            0,
            dbprops::Skipped {
                what: format!("encoding and locale ({})", p.describe_locale()),
                reason: "not applied: default_locale was asked for (the target server's defaults)".into(),
            },
        ),
        (Some(p), Some(_), _) => props_report.applied.insert(0, p.describe_locale()),
    }
    report.properties = Some(props_report);
    tracing::info!(task = %task.task_id, backup = %m.id, target = %target, previous = ?previous, "restored database is in place");
    Ok((globals, report))
}

/// A required property step failed: name the step and the server's reason.
pub(super) fn step_error(what: &str, e: &tokio_postgres::Error) -> String {
    format!("applying the backup's {what} failed: {}", redact(&pg::error_text(e)))
}

pub(super) fn rename_error(e: &tokio_postgres::Error) -> String {
    let mut why = redact(&pg::error_text(e));
    if let Some(db) = e.as_db_error()
        && let Some(detail) = db.detail()
    {
        why.push_str(&format!(" ({detail})"));
    }
    why
}

/// The copy was restored and verified but could not be put in place. The HINT follows the
/// cause: sessions on the old database, a missing privilege, or anything else.
pub(super) fn swap_failed(
    where_: &str,
    temp: &str,
    why: &str,
    cause: Option<&tokio_postgres::Error>,
    finish: &[String],
) -> Error {
    use tokio_postgres::error::SqlState;
    let code = cause.and_then(|e| e.code());
    let first = if code == Some(&SqlState::OBJECT_IN_USE) {
        "end the sessions that hold the database"
    } else if code == Some(&SqlState::INSUFFICIENT_PRIVILEGE) {
        "grant the restoring role the privilege the reason names"
    } else {
        "fix the cause"
    };
    // Renaming the copy alone would give a database without the backup's owner, privileges and
    // settings (it is closed to PUBLIC meanwhile): the whole swap, as pgvault would have run it.
    let finish = if finish.is_empty() {
        format!("rename {temp:?}")
    } else {
        format!("run in one transaction: BEGIN; {}; COMMIT;", finish.join("; "))
    };
    Error::permanent(format!(
        "the backup was restored and verified, but could not be put in place as {where_}: {why}; the restored copy \
         is kept as database {temp:?}"
    ))
    .with_hint(format!(
        "{first}, then finish by hand ({finish}), or drop {temp:?} and post the request again with a new request_id"
    ))
}
