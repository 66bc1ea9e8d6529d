//! Doctor's checks of a restore target (an inventory server a restore or a drill writes into),
//! against the newest backup of each database: the login may create databases; the roles the
//! backup's objects belong to exist; a database with the backup's encoding and locale can be
//! created; every extension the archive creates is available and, on Azure, on the server's
//! `azure.extensions` allow-list; objects owned by Azure's reserved roles and schemas such as
//! `cron` are named; free space is reported where it can be known.
//!
//! Two checks act on the target: the locale is proved by creating (and at once dropping) an
//! empty database `pgvault_doctor_<8 hex>` with the backup's clauses, exactly as a restore
//! creates its temporary database; and the extensions are read from the archive's table of
//! contents, which downloads and verifies the newest backup of each database once.

use super::from_error;
use crate::config::context::Ctx;
use crate::domain::dbprops;
use crate::domain::doctor::{self, Finding, Severity};
use crate::domain::layout::BackupKind;
use crate::domain::manifest::Manifest;
use crate::domain::sql::quote_ident;
use crate::seams::pg;
use std::collections::{BTreeMap, BTreeSet};

/// What the target server offers, read once.
struct Facts {
    major: u32,
    can_create: bool,
    roles: BTreeSet<String>,
    available: BTreeSet<String>,
    /// `azure.extensions`, when the server has that setting.
    allow_list: Option<String>,
}

/// The checks of restore target `target` against the newest backups (of `only_server`, or of
/// every server). `drill_only`: the target is only the drill server, whose restores run with
/// no owner and no privileges, so roles do not matter.
pub async fn check(ctx: &Ctx, target: &str, only_server: Option<&str>, drill_only: bool) -> Vec<Finding> {
    let object = format!("restore target {target:?}");
    let Some(server) = ctx.settings.server(target) else {
        return vec![Finding::error("restore-target", object, "it is not a server of the inventory")];
    };
    let spec = match ctx.conn_spec(target, &server.maintenance_db).await {
        Ok(s) => s,
        Err(e) => return vec![super::server::login_failed(server, &e)],
    };
    let admin = match pg::connect(&spec).await {
        Ok(c) => c,
        Err(e) => return vec![from_error("connection", Severity::Error, object, &e)],
    };
    let facts = match facts(&admin).await {
        Ok(f) => f,
        Err(e) => return vec![from_error("connection", Severity::Error, object, &e)],
    };
    let mut out = Vec::new();
    if !facts.can_create {
        out.push(
            Finding::error(
                "createdb",
                &object,
                format!("role {:?} may not create databases: every restore into it would fail", spec.user),
            )
            .hint(format!(
                "ALTER ROLE {} CREATEDB; (`pgvault grant-sql --restore --role {}` prints what a restore role needs)",
                quote_ident(&spec.user),
                spec.user
            )),
        );
    }
    let newest = match newest_backups(ctx, only_server).await {
        Ok(n) => n,
        Err(e) => {
            out.push(from_error("catalog", Severity::Error, ctx.store.describe(), &e));
            return out;
        }
    };
    let mut probed: BTreeMap<String, Option<String>> = BTreeMap::new();
    let mut raw_total = 0u64;
    for m in newest {
        raw_total += m.raw_bytes;
        let backup = format!("backup {:?} ({} of server {:?})", m.id, quote_database(&m.database), m.server);
        let into = format!("{object} for {backup}");
        if let Some(p) = &m.database_properties {
            // Drills restore with no owner and no privileges: roles and owners do not matter.
            if !drill_only {
                out.extend(roles(&facts, p, &into));
                out.extend(azure_owned(p, &into));
            }
            if facts.can_create {
                out.extend(locale(&admin, &facts, p, &into, &mut probed).await);
            }
        }
        out.extend(extensions(ctx, &facts, &m, &into).await);
    }
    if raw_total > 0 {
        out.push(Finding::info(
            "free-space",
            &object,
            format!(
                "the newest backups hold {} of data; free space on a server cannot be read over SQL: make sure its \
                 storage has room (indexes are rebuilt on restore and take more)",
                crate::seams::progress::human_bytes(raw_total)
            ),
        ));
    }
    out
}

fn quote_database(db: &str) -> String {
    format!("database {db:?}")
}

async fn facts(admin: &tokio_postgres::Client) -> crate::domain::error::Result<Facts> {
    let q = |what: &'static str| move |e| pg::query_error(what, e);
    let (_, num) = pg::server_version(admin).await?;
    let row = admin
        .query_one(
            "SELECT r.rolsuper OR r.rolcreatedb, current_setting('azure.extensions', true) \
             FROM pg_roles r WHERE r.rolname = current_user",
            &[],
        )
        .await
        .map_err(q("read the restore role"))?;
    let roles = admin.query("SELECT rolname::text FROM pg_roles", &[]).await.map_err(q("list roles"))?;
    let available =
        admin.query("SELECT name::text FROM pg_available_extensions", &[]).await.map_err(q("list extensions"))?;
    Ok(Facts {
        major: pg::major_of(num),
        can_create: row.get(0),
        allow_list: row.get(1),
        roles: roles.iter().map(|r| r.get(0)).collect(),
        available: available.iter().map(|r| r.get(0)).collect(),
    })
}

/// The newest database backup of each database (of one server, or all).
async fn newest_backups(ctx: &Ctx, only_server: Option<&str>) -> crate::domain::error::Result<Vec<Manifest>> {
    let mut newest: BTreeMap<(String, String), Manifest> = BTreeMap::new();
    // Oldest first: the last one seen per database is the newest.
    for m in crate::features::catalog::list(ctx.store.as_ref(), only_server, None).await? {
        if m.kind == BackupKind::Database {
            newest.insert((m.server.clone(), m.database.clone()), m);
        }
    }
    Ok(newest.into_values().collect())
}

/// The roles a restore gives objects and privileges to: each must exist on the target.
fn roles(facts: &Facts, p: &dbprops::DatabaseProperties, into: &str) -> Option<Finding> {
    let mut needed: BTreeSet<&str> = BTreeSet::new();
    needed.insert(&p.owner);
    needed.extend(p.object_owners.iter().map(String::as_str));
    needed.extend(p.acl.iter().flatten().filter_map(|a| a.grantee.as_deref()));
    let missing: Vec<&str> =
        needed.into_iter().filter(|r| !facts.roles.contains(*r) && !doctor::AZURE_RESERVED_ROLES.contains(r)).collect();
    if missing.is_empty() {
        return None;
    }
    Some(
        Finding::warning(
            "roles",
            into,
            format!(
                "roles {} that the backup's objects belong to (or are granted to) do not exist there: a restore \
                 without the globals fails",
                missing.iter().map(|r| format!("{r:?}")).collect::<Vec<_>>().join(", ")
            ),
        )
        .hint("restore with the globals (--globals) to create the roles first, or with --no-owner --no-privileges"),
    )
}

/// Objects owned by Azure's reserved roles: no customer role can own them on another server.
fn azure_owned(p: &dbprops::DatabaseProperties, into: &str) -> Option<Finding> {
    let reserved: Vec<&str> = std::iter::once(&p.owner)
        .chain(p.object_owners.iter())
        .map(String::as_str)
        .filter(|r| doctor::AZURE_RESERVED_ROLES.contains(r))
        .collect();
    if reserved.is_empty() {
        return None;
    }
    Some(
        Finding::warning(
            "azure-owned",
            into,
            format!("objects in the backup belong to Azure's reserved roles {reserved:?}, which a restore cannot give them to"),
        )
        .hint("restore with --no-owner (the restoring role then owns them)"),
    )
}

/// Whether the target can create a database with the backup's encoding and locale: tried, as a
/// restore would, once per distinct set of clauses.
async fn locale(
    admin: &tokio_postgres::Client,
    facts: &Facts,
    p: &dbprops::DatabaseProperties,
    into: &str,
    probed: &mut BTreeMap<String, Option<String>>,
) -> Option<Finding> {
    let hint = "install the locale on the target server, or restore with --default-locale (the target's defaults: text \
                then sorts by the target's rules)";
    let clauses = match dbprops::create_clauses(p, facts.major) {
        Ok(c) => c,
        Err(e) => return Some(from_error("locale", Severity::Error, into, &e.with_hint(hint))),
    };
    if !probed.contains_key(&clauses) {
        let refusal = probe_create(admin, facts.major, p, &clauses).await;
        probed.insert(clauses.clone(), refusal);
    }
    let refusal = probed[&clauses].clone()?;
    Some(
        Finding::error(
            "locale",
            into,
            format!("the server cannot create a database like the backup's ({}): {refusal}", p.describe_locale()),
        )
        .hint(hint),
    )
}

/// Create and drop an empty database with `clauses`; the server's refusal, if it refuses.
async fn probe_create(
    admin: &tokio_postgres::Client,
    major: u32,
    p: &dbprops::DatabaseProperties,
    clauses: &str,
) -> Option<String> {
    if major >= 16 && p.locale_provider == dbprops::LocaleProvider::Icu {
        // As the restore does: an ICU locale the target does not know must fail, not fall back.
        if let Err(e) = admin.batch_execute("SET icu_validation_level = error").await {
            return Some(pg::error_text(&e));
        }
    }
    let name = format!("pgvault_doctor_{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let create = format!("CREATE DATABASE {} TEMPLATE template0{clauses}", quote_ident(&name));
    match admin.batch_execute(&create).await {
        Err(e) => Some(e.as_db_error().map(|d| d.message().to_string()).unwrap_or_else(|| pg::error_text(&e))),
        Ok(()) => {
            if let Err(e) = admin.batch_execute(&format!("DROP DATABASE IF EXISTS {}", quote_ident(&name))).await {
                tracing::warn!(database = %name, error = %pg::error_text(&e), "doctor could not drop its probe database");
            }
            None
        }
    }
}

/// The extensions the archive creates: available on the target, and allowed by
/// `azure.extensions` when the server has that setting; `cron` named.
async fn extensions(ctx: &Ctx, facts: &Facts, m: &Manifest, into: &str) -> Vec<Finding> {
    let toc = match crate::features::catalog::archive_toc(ctx, m).await {
        Ok(toc) => toc,
        Err(e) => {
            return vec![from_error(
                "extensions",
                Severity::Warning,
                into,
                &e.context("the archive's extensions could not be read"),
            )];
        }
    };
    let needed = doctor::extensions_in_toc(&toc);
    let mut out = Vec::new();
    let unavailable: Vec<&String> =
        needed.iter().filter(|e| e.as_str() != "plpgsql" && !facts.available.contains(*e)).collect();
    if !unavailable.is_empty() {
        out.push(
            Finding::error(
                "extensions",
                into,
                format!("extensions {unavailable:?} that the backup creates are not installed on the server: the restore would fail"),
            )
            .hint("install them on the target server (its contrib package), or restore elsewhere"),
        );
    }
    if let Some(setting) = &facts.allow_list {
        let refused = doctor::not_allowed(&needed, &doctor::allow_list(setting));
        for ext in refused {
            out.push(
                Finding::error(
                    "extensions",
                    into,
                    format!(
                        "extension {ext:?} is not allowed by the server's azure.extensions ({setting:?}): the restore \
                         would fail at CREATE EXTENSION"
                    ),
                )
                .hint(format!("add {ext} to the server parameter azure.extensions (Azure portal or `az postgres flexible-server parameter set`)")),
            );
        }
    }
    let special: Vec<String> = doctor::toc_names(&toc, "SCHEMA")
        .into_iter()
        .filter(|s| doctor::SPECIAL_SCHEMAS.contains(&s.as_str()))
        .collect();
    if !special.is_empty() || needed.iter().any(|e| e == "pg_cron") {
        out.push(
            Finding::warning(
                "special-schema",
                into,
                format!(
                    "the backup has pg_cron or its schema {special:?}: on Azure Flexible Server pg_cron lives in one \
                     database (cron.database_name), and its jobs do not come back with a restored database"
                ),
            )
            .hint("enable pg_cron in the target's cron database and create its jobs again"),
        );
    }
    out
}
