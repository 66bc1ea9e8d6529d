//! Least-privilege SQL for the roles pgvault logs in as (`pgvault grant-sql`).
//!
//! - **Backup role:** `CONNECT` on every database; then on PostgreSQL 14+ membership in
//!   `pg_read_all_data` (SELECT on every table, view and sequence and USAGE on every schema,
//!   present and future), or on older servers (or with `--per-schema`) Azure Backup's script:
//!   USAGE on each schema, SELECT on its tables and sequences, and default privileges so future
//!   ones are readable too. Large objects are granted one by one in every database: no
//!   predefined role covers them. The role gets no write privilege of any kind.
//! - **Restore role:** `CREATEDB` (pg_restore goes into a database the role creates, and so
//!   owns) and `CONNECT`. What the archive may additionally need on Azure (`azure_pg_admin` for
//!   some extensions) is printed as a comment, never applied.
//!
//! One script works on every version: version checks run in `DO` blocks on the server. The same
//! text is printed for an admin to run and executed by `--apply`, which then runs doctor's
//! backup-role checks and exits non-zero when the role still cannot dump everything (row-level
//! security, which grants cannot lift).

use crate::config::context::Ctx;
use crate::domain::error::{Error, Result};
use crate::seams::pg;
use std::process::ExitCode;

/// What to grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantOptions {
    pub role: String,
    /// The restore role instead of the backup role.
    pub restore: bool,
    /// Per-schema grants even where `pg_read_all_data` exists (14+).
    pub per_schema: bool,
    /// Restore role: the roles that own the databases it restores. It becomes a member of each
    /// (with INHERIT and SET, the defaults), which is what giving restored objects and the
    /// database to that owner, and renaming the owner's database aside in `replace`, require.
    pub member_of: Vec<String>,
}

/// The SQL, in the two places it must run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Script {
    /// Run once per server, in any database.
    pub server_wide: String,
    /// Run in every database pgvault backs up (None: nothing per database).
    pub per_database: Option<String>,
}

/// Role names pgvault writes into SQL: 1-63 bytes, no control characters, no `$` (the scripts
/// use dollar quoting). Managed identity and group names fit.
pub fn check_role(role: &str) -> Result<()> {
    if role.is_empty() || role.len() > 63 || role.chars().any(|c| c.is_control() || c == '$') {
        return Err(Error::permanent(format!(
            "role {role:?}: a role name must be 1-63 bytes without control characters or `$`"
        )));
    }
    if role.starts_with("pg_") {
        return Err(Error::permanent(format!("role {role:?}: names starting with pg_ are reserved by PostgreSQL")));
    }
    Ok(())
}

fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Build the script.
pub fn script(opts: &GrantOptions) -> Result<Script> {
    check_role(&opts.role)?;
    let ident = pg::quote_ident(&opts.role);
    let lit = literal(&opts.role);
    let create_role = format!(
        "DO $pgvault$\nBEGIN\n  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = {lit}) THEN\n    \
         CREATE ROLE {ident} LOGIN;\n  END IF;\nEND\n$pgvault$;\n"
    );
    let connect_everywhere = format!(
        "  FOR db IN SELECT datname FROM pg_catalog.pg_database WHERE datallowconn AND NOT datistemplate LOOP\n    \
         EXECUTE format('GRANT CONNECT ON DATABASE %I TO %I', db, {lit});\n  END LOOP;\n"
    );
    if opts.restore {
        let mut server_wide = format!(
            "{create_role}ALTER ROLE {ident} CREATEDB;\n\
             DO $pgvault$\nDECLARE db text;\nBEGIN\n{connect_everywhere}END\n$pgvault$;\n"
        );
        for owner in &opts.member_of {
            check_role(owner)?;
            // Membership lets the restore role act as the owner: never as a superuser or a role
            // that can create roles, which would make it one in all but name.
            let owner_lit = literal(owner);
            server_wide.push_str(&format!(
                "DO $pgvault$\nBEGIN\n  IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = {owner_lit} \
                 AND (rolsuper OR rolcreaterole)) THEN\n    \
                 RAISE EXCEPTION 'pgvault grant-sql: --member-of %: a superuser or CREATEROLE role would give the \
                 restore role its powers; restore its databases with --no-owner instead', {owner_lit};\n  \
                 END IF;\nEND\n$pgvault$;\nGRANT {} TO {ident};\n",
                pg::quote_ident(owner)
            ));
        }
        return Ok(Script { server_wide, per_database: None });
    }
    if !opts.member_of.is_empty() {
        return Err(Error::permanent("--member-of is for the restore role (--restore)"));
    }
    let read_all = if opts.per_schema {
        String::new()
    } else {
        format!(
            "  IF current_setting('server_version_num')::int >= 140000 THEN\n    \
             EXECUTE format('GRANT pg_read_all_data TO %I', {lit});\n  END IF;\n"
        )
    };
    let server_wide =
        format!("{create_role}DO $pgvault$\nDECLARE db text;\nBEGIN\n{connect_everywhere}{read_all}END\n$pgvault$;\n");
    let (open_if, close_if) = if opts.per_schema {
        ("", "")
    } else {
        ("  IF current_setting('server_version_num')::int < 140000 THEN\n", "  END IF;\n")
    };
    // Default privileges apply to objects created later by one role: the role running this,
    // and every role owning the schema or something in it that it may act for.
    let per_database = format!(
        "DO $pgvault$\nDECLARE\n  sch text;\n  owner text;\n  lo oid;\nBEGIN\n{open_if}\
         FOR sch IN SELECT nspname FROM pg_catalog.pg_namespace\n    \
         WHERE nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')\n      \
         AND nspname NOT LIKE 'pg\\_temp\\_%' AND nspname NOT LIKE 'pg\\_toast\\_temp\\_%'\n  LOOP\n    \
         EXECUTE format('GRANT USAGE ON SCHEMA %I TO %I', sch, {lit});\n    \
         EXECUTE format('GRANT SELECT ON ALL TABLES IN SCHEMA %I TO %I', sch, {lit});\n    \
         EXECUTE format('GRANT SELECT ON ALL SEQUENCES IN SCHEMA %I TO %I', sch, {lit});\n    \
         FOR owner IN SELECT r.rolname FROM pg_catalog.pg_roles r\n      \
         WHERE (r.rolname = current_user\n         \
         OR r.oid = (SELECT n.nspowner FROM pg_catalog.pg_namespace n WHERE n.nspname = sch)\n         \
         OR r.oid IN (SELECT c.relowner FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = sch))\n        \
         AND r.rolname NOT LIKE 'pg\\_%' AND pg_catalog.pg_has_role(r.oid, 'USAGE')\n    LOOP\n      \
         EXECUTE format('ALTER DEFAULT PRIVILEGES FOR ROLE %I IN SCHEMA %I GRANT SELECT ON TABLES TO %I', owner, sch, {lit});\n      \
         EXECUTE format('ALTER DEFAULT PRIVILEGES FOR ROLE %I IN SCHEMA %I GRANT SELECT ON SEQUENCES TO %I', owner, sch, {lit});\n    \
         END LOOP;\n  END LOOP;\n{close_if}\
         FOR lo IN SELECT oid FROM pg_catalog.pg_largeobject_metadata LOOP\n    \
         EXECUTE format('GRANT SELECT ON LARGE OBJECT %s TO %I', lo, {lit});\n  END LOOP;\nEND\n$pgvault$;\n"
    );
    Ok(Script { server_wide, per_database: Some(per_database) })
}

/// The script with the comments an admin needs to run it by hand.
pub fn render(opts: &GrantOptions, script: &Script) -> String {
    let role = &opts.role;
    let mut out = String::new();
    if opts.restore {
        out.push_str(&format!(
            "-- pgvault restore role {role:?}: CREATEDB and CONNECT; pg_restore runs into a database it creates.\n\
             -- A restore gives the database and its objects back to their owners: the role must be a\n\
             -- member of each owning role (--member-of R adds GRANT R TO the role), or restores run\n\
             -- with --no-owner. Per-role settings in a database (ALTER ROLE .. IN DATABASE) need\n\
             -- CREATEROLE and are otherwise reported as not applied.\n\
             -- Run as the server admin (on Azure Flexible Server, a member of azure_pg_admin).\n\
             -- The role gets no password here: set one and keep it in Key Vault, or use Entra\n\
             -- (on Azure, create the role first with pgaadauth_create_principal).\n\
             -- Archives with extensions outside Azure's allow list, or restores into databases\n\
             -- owned by other roles, need more; on Azure Flexible Server an admin may add\n\
             -- GRANT azure_pg_admin TO {};  (broad: not applied by --apply)\n\n",
            pg::quote_ident(role)
        ));
        out.push_str(&script.server_wide);
        return out;
    }
    out.push_str(&format!(
        "-- pgvault backup role {role:?}: read-only. No INSERT, UPDATE, DELETE, TRUNCATE or DDL.\n\
         -- Run as the server admin (on Azure Flexible Server, a member of azure_pg_admin), who\n\
         -- must own the tables or be a member of their owners for per-schema grants to apply.\n\
         -- The role gets no password here: set one and keep it in Key Vault, or use Entra\n\
         -- (on Azure, create the role first with pgaadauth_create_principal).\n\
         -- Tables with row-level security also need BYPASSRLS (PostgreSQL 16+ on Azure).\n\n\
         -- 1. Once per server, in any database (e.g. postgres):\n\n"
    ));
    out.push_str(&script.server_wide);
    if let Some(per_db) = &script.per_database {
        let what = if opts.per_schema {
            "schemas, tables, sequences, future objects and large objects"
        } else {
            "large objects (and on PostgreSQL 13 and older: schemas, tables, sequences, future objects)"
        };
        out.push_str(&format!(
            "\n-- 2. In every database to back up (psql: \\c <database>), for its {what}.\n\
             --    Run it again after creating a database (or large objects).\n\n"
        ));
        out.push_str(per_db);
    }
    out
}

/// What `--apply` did, and for the backup role what doctor's checks still find.
#[derive(Debug, Default)]
pub struct Applied {
    pub done: Vec<String>,
    /// The backup-role checks of `pgvault doctor` ([`crate::features::doctor::privileges`]),
    /// run right after granting: what the grants could not give (row-level security needs
    /// BYPASSRLS, a table the admin may not grant on).
    pub findings: Vec<crate::domain::doctor::Finding>,
}

/// Run the script on `server`, connected with the server's inventory login (which must be an
/// admin: a superuser, or on Azure a member of azure_pg_admin), then check the backup role as
/// doctor does. Returns what was done and found.
pub async fn apply(ctx: &Ctx, server_name: &str, opts: &GrantOptions) -> Result<Applied> {
    let script = script(opts)?;
    let server = ctx.settings.server(server_name).ok_or_else(|| crate::config::context::unknown_server(server_name))?;
    let spec = ctx.conn_spec(server_name, &server.maintenance_db).await?;
    let client = pg::connect(&spec).await?;
    let what = |db: &str| format!("grant-sql for role {:?} on server {server_name:?}, database {db:?}", opts.role);
    client.batch_execute(&script.server_wide).await.map_err(|e| pg::query_error(&what(&server.maintenance_db), e))?;
    let mut done = vec![format!("server {server_name}: role {} ready ({})", opts.role, spec.describe())];
    let mut findings = Vec::new();
    if let Some(per_db) = &script.per_database {
        let existing = pg::list_databases(&client).await?;
        let (chosen, _missing) = crate::domain::jobs::select_databases(server, &existing);
        for db in &chosen {
            let c = pg::connect(&spec.with_db(db)).await?;
            c.batch_execute(per_db).await.map_err(|e| pg::query_error(&what(db), e))?;
            done.push(format!("database {db}: grants applied"));
        }
        findings = crate::features::doctor::privileges::check_databases(&spec, server_name, &opts.role, &chosen).await;
    }
    Ok(Applied { done, findings })
}

/// `pgvault grant-sql`: print the script, or apply it to `apply_to`.
pub async fn run(ctx: &Ctx, opts: GrantOptions, apply_to: Option<&str>) -> Result<ExitCode> {
    let s = script(&opts)?;
    match apply_to {
        None => print!("{}", render(&opts, &s)),
        Some(server) => {
            let applied = apply(ctx, server, &opts).await?;
            for line in &applied.done {
                println!("applied: {line}");
            }
            // Granting is not the goal: a backup that works is. Say what still stands in its way.
            if !applied.findings.is_empty() {
                println!("the grants are applied, but doctor's checks of role {:?} find:", opts.role);
                for f in &applied.findings {
                    println!("{}: {f}", f.severity.as_str().to_uppercase());
                }
            }
            if applied.findings.iter().any(|f| f.severity == crate::domain::doctor::Severity::Error) {
                return Ok(ExitCode::FAILURE);
            }
            if !opts.restore {
                println!("checked: role {:?} can read every table, sequence and large object", opts.role);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(role: &str, restore: bool, per_schema: bool) -> GrantOptions {
        GrantOptions { role: role.into(), restore, per_schema, member_of: Vec::new() }
    }

    #[test]
    fn backup_script_reads_and_never_writes() {
        let s = script(&opts("pgvault_backup", false, false)).unwrap();
        assert!(s.server_wide.contains("GRANT pg_read_all_data TO %I"), "{}", s.server_wide);
        assert!(s.server_wide.contains("GRANT CONNECT ON DATABASE"));
        let per_db = s.per_database.as_deref().unwrap();
        assert!(per_db.contains("< 140000"), "per-schema grants only before 14");
        assert!(per_db.contains("GRANT SELECT ON LARGE OBJECT"));
        let all = format!("{}{per_db}", s.server_wide).to_uppercase();
        for write in ["INSERT", "UPDATE", "DELETE", "TRUNCATE", "ALL PRIVILEGES", "CREATEDB"] {
            assert!(!all.contains(write), "{write} in the backup script");
        }
        let s = script(&opts("pgvault_backup", false, true)).unwrap();
        assert!(!s.server_wide.contains("pg_read_all_data"));
        assert!(!s.per_database.unwrap().contains("140000"));
    }

    #[test]
    fn restore_script_creates_databases() {
        let s = script(&opts("pgvault_restore", true, false)).unwrap();
        assert!(s.server_wide.contains("ALTER ROLE \"pgvault_restore\" CREATEDB;"));
        assert_eq!(s.per_database, None);
        let text = render(&opts("pgvault_restore", true, false), &s);
        assert!(text.contains("-- GRANT azure_pg_admin TO \"pgvault_restore\";"), "{text}");
        let with_owner = GrantOptions { member_of: vec!["app_owner".into()], ..opts("pgvault_restore", true, false) };
        let s = script(&with_owner).unwrap();
        assert!(s.server_wide.ends_with("GRANT \"app_owner\" TO \"pgvault_restore\";\n"), "{}", s.server_wide);
        assert!(s.server_wide.contains("rolsuper OR rolcreaterole"), "never a superuser's member: {}", s.server_wide);
        let backup_with_owner = GrantOptions { member_of: vec!["app_owner".into()], ..opts("b", false, false) };
        assert!(script(&backup_with_owner).is_err(), "--member-of needs --restore");
    }

    #[test]
    fn role_names_are_quoted_or_refused() {
        let s = script(&opts("it's \"odd\"", false, false)).unwrap();
        assert!(s.server_wide.contains("rolname = 'it''s \"odd\"'"), "{}", s.server_wide);
        assert!(s.server_wide.contains("CREATE ROLE \"it's \"\"odd\"\"\" LOGIN"), "{}", s.server_wide);
        for bad in ["", "a$pgvault$b", "pg_read_all_data", "a\nb", &"x".repeat(64)] {
            assert!(script(&opts(bad, false, false)).is_err(), "{bad:?}");
        }
    }
}
