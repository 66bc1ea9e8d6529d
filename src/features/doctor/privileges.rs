//! Doctor's checks of the backup role, per database: pg_dump reads every table and sequence
//! (and needs USAGE on their schemas), runs with `row_security = off` so a table whose policy
//! applies to the role fails the whole dump, and reads every large object.
//!
//! The checks ask the catalog about a role by name (`has_table_privilege(role, …)`), so they
//! run as the backup login itself (doctor) or as an admin right after granting
//! (`grant-sql --apply`).

use super::{from_error, server_object};
use crate::domain::doctor::{Finding, Severity};
use crate::domain::inventory::Server;
use crate::domain::sql::quote_ident;
use crate::seams::pg::{self, ConnSpec};

/// At most this many objects are named one by one per check and database; the rest are counted.
const NAMED: usize = 10;

/// Relations pg_dump reads (tables, partitioned tables, sequences) that `$1` cannot, with why.
const UNREADABLE_SQL: &str = "\
SELECT n.nspname, c.relname, CASE WHEN c.relkind = 'S' THEN 'sequence' ELSE 'table' END,
       has_schema_privilege($1, n.oid, 'USAGE')
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'S')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%'
  AND n.nspname NOT LIKE 'pg\\_temp%'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
  AND NOT (has_schema_privilege($1, n.oid, 'USAGE') AND has_table_privilege($1, c.oid, 'SELECT'))
ORDER BY 1, 2";

/// Tables whose row-level security applies to `$1`: superusers and BYPASSRLS roles are exempt,
/// and a table's owner (or a member of it) too unless the table forces it.
const RLS_SQL: &str = "\
SELECT n.nspname, c.relname, c.relforcerowsecurity
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND c.relrowsecurity
  AND NOT EXISTS (SELECT 1 FROM pg_roles r WHERE r.rolname = $1 AND (r.rolsuper OR r.rolbypassrls))
  AND (c.relforcerowsecurity OR NOT pg_has_role($1, c.relowner, 'USAGE'))
ORDER BY 1, 2";

/// Large objects `$1` cannot read (`lo_compat_privileges` off): not its own (or a role's it
/// inherits), and no SELECT granted to it, a role it inherits, or PUBLIC.
const LARGE_OBJECTS_SQL: &str = "\
SELECT count(*)
FROM pg_largeobject_metadata l
WHERE current_setting('lo_compat_privileges') = 'off'
  AND NOT EXISTS (SELECT 1 FROM pg_roles r WHERE r.rolname = $1 AND r.rolsuper)
  AND NOT pg_has_role($1, l.lomowner, 'USAGE')
  AND NOT EXISTS (SELECT 1 FROM aclexplode(l.lomacl) a
                  WHERE a.privilege_type = 'SELECT' AND (a.grantee = 0 OR pg_has_role($1, a.grantee, 'USAGE')))";

/// The checks on every database the inventory backs up of `server`, logged in as `login`.
pub async fn check_server(server: &Server, login: &ConnSpec) -> Vec<Finding> {
    let object = server_object(&server.name);
    let client = match pg::connect(login).await {
        Ok(c) => c,
        Err(e) => return vec![from_error("connection", Severity::Error, object, &e)],
    };
    let role: String = match client.query_one("SELECT current_user::text", &[]).await {
        Ok(row) => row.get(0),
        Err(e) => return vec![from_error("connection", Severity::Error, object, &pg::query_error("current_user", e))],
    };
    let databases = match pg::list_databases(&client).await {
        Ok(d) => crate::domain::jobs::select_databases(server, &d).0,
        Err(e) => return vec![from_error("connection", Severity::Error, object, &e)],
    };
    check_databases(login, &server.name, &role, &databases).await
}

/// The checks of `role` in each of `databases`, connected as `login` (the role itself, or an
/// admin).
pub async fn check_databases(login: &ConnSpec, server: &str, role: &str, databases: &[String]) -> Vec<Finding> {
    let mut out = Vec::new();
    for db in databases {
        let object = format!("database {db:?} of server {server:?}");
        match pg::connect(&login.with_db(db)).await {
            Err(e) => out.push(from_error("connection", Severity::Error, object, &e)),
            Ok(client) => out.extend(check_database(&client, server, db, role).await),
        }
    }
    out
}

async fn check_database(client: &tokio_postgres::Client, server: &str, db: &str, role: &str) -> Vec<Finding> {
    let mut out = Vec::new();
    let in_db = format!("in database {db:?} of server {server:?}");
    let failed = |what: &str, e| {
        from_error(
            "privileges",
            Severity::Error,
            format!("database {db:?} of server {server:?}"),
            &pg::query_error(what, e),
        )
    };
    let who = quote_ident(role);
    match client.query(UNREADABLE_SQL, &[&role]).await {
        Err(e) => out.push(failed("read the backup role's table privileges", e)),
        Ok(rows) => {
            for row in rows.iter().take(NAMED) {
                let (schema, name, kind, usage): (String, String, String, bool) =
                    (row.get(0), row.get(1), row.get(2), row.get(3));
                let (problem, hint) = if usage {
                    (
                        format!("the backup role {role:?} cannot read it (no SELECT): pg_dump would fail"),
                        format!(
                            "GRANT SELECT ON {} {}.{} TO {who};",
                            kind.to_uppercase(),
                            quote_ident(&schema),
                            quote_ident(&name)
                        ),
                    )
                } else {
                    (
                        format!(
                            "the backup role {role:?} cannot read it (no USAGE on schema {schema:?}): pg_dump would fail"
                        ),
                        format!("GRANT USAGE ON SCHEMA {} TO {who}; and SELECT on its tables", quote_ident(&schema)),
                    )
                };
                let hint = format!("{hint} (`pgvault grant-sql --role {role}` prints every grant the role needs)");
                out.push(
                    Finding::error("table-privileges", format!("{kind} {schema:?}.{name:?} {in_db}"), problem)
                        .hint(hint),
                );
            }
            out.extend(more(
                rows.len(),
                "table-privileges",
                db,
                server,
                "tables or sequences the backup role cannot read",
            ));
        }
    }
    match client.query(RLS_SQL, &[&role]).await {
        Err(e) => out.push(failed("read row-level security", e)),
        Ok(rows) => {
            for row in rows.iter().take(NAMED) {
                let (schema, name, forced): (String, String, bool) = (row.get(0), row.get(1), row.get(2));
                let how = if forced { "forces row-level security" } else { "has row-level security" };
                out.push(
                    Finding::error(
                        "row-level-security",
                        format!("table {schema:?}.{name:?} {in_db}"),
                        format!(
                            "the table {how} and its policies apply to the backup role {role:?}: pg_dump would fail \
                             (it refuses to dump a table whose rows a policy would hide)"
                        ),
                    )
                    .hint(format!(
                        "ALTER ROLE {who} BYPASSRLS; (on Azure Flexible Server 16+, as a member of azure_pg_admin), or \
                         exclude the database"
                    )),
                );
            }
            out.extend(more(
                rows.len(),
                "row-level-security",
                db,
                server,
                "tables whose row-level security applies to the backup role",
            ));
        }
    }
    match client.query_one(LARGE_OBJECTS_SQL, &[&role]).await {
        Err(e) => out.push(failed("read large object privileges", e)),
        Ok(row) => {
            let n: i64 = row.get(0);
            if n > 0 {
                out.push(
                    Finding::error(
                        "large-objects",
                        format!("database {db:?} of server {server:?}"),
                        format!("the backup role {role:?} cannot read {n} large objects: pg_dump would fail"),
                    )
                    .hint(format!(
                        "grant SELECT on each large object (`pgvault grant-sql --role {role}` prints a loop that does)"
                    )),
                );
            }
        }
    }
    out
}

/// The objects past the first [`NAMED`] of a check, counted in one finding.
fn more(found: usize, check: &str, db: &str, server: &str, what: &str) -> Option<Finding> {
    (found > NAMED).then(|| {
        Finding::error(check, format!("database {db:?} of server {server:?}"), format!("{} more {what}", found - NAMED))
    })
}
