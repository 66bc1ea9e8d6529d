//! The database's own properties: what `CREATE DATABASE`, `ALTER DATABASE`, `GRANT … ON
//! DATABASE`, `COMMENT ON DATABASE` and `SECURITY LABEL` give a database, as opposed to what is
//! inside it. pg_restore without `--create` skips them (the archive's `DATABASE` and `DATABASE
//! PROPERTIES` entries), so a restore into a temporary database would silently lose them: the
//! encoding and locale, the owner, the privileges (a database that refused a role would let it
//! in), the settings, the comment.
//!
//! - [`read`] reads them at backup time, in the dump's own snapshot, into the manifest.
//! - [`create_clauses`] makes the temporary database like the source (pure).
//! - [`plan_apply`] turns them into the statements a restore runs in its swap transaction, with
//!   a reason for everything it leaves out (pure).
//! - [`compare`] checks, in the same transaction, that what was planned is what the database
//!   now says (pure; the caller reads the database back with [`read`]).

use crate::domain::error::{Error, Result};
use crate::seams::pg::{self, quote_ident};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// A database's properties, as recorded in the manifest (`database_properties`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatabaseProperties {
    /// `pg_encoding_to_char(encoding)`: `UTF8`, `LATIN1`, `SQL_ASCII`, ...
    pub encoding: String,
    pub locale_provider: LocaleProvider,
    /// `datcollate` and `datctype` (libc locales; kept with the ICU and builtin providers too).
    pub collate: String,
    pub ctype: String,
    /// The ICU locale (`daticulocale`, 15-16) or the provider's locale (`datlocale`, 17+).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale: Option<String>,
    /// `daticurules` (16+).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icu_rules: Option<String>,
    pub owner: String,
    /// `datacl` item by item; `None` when it is NULL (the default privileges: the owner has all,
    /// PUBLIC has CONNECT and TEMPORARY).
    pub acl: Option<Vec<AclItem>>,
    /// `datconnlimit`; -1 is no limit.
    pub connection_limit: i32,
    /// The default tablespace's name (tablespaces are not restored: see DESIGN.md).
    pub tablespace: String,
    /// `pg_db_role_setting` of this database: database-wide (`role` absent) and per role.
    #[serde(default)]
    pub settings: Vec<Setting>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub security_labels: Vec<SecurityLabel>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LocaleProvider {
    Libc,
    Icu,
    Builtin,
}

impl LocaleProvider {
    fn from_catalog(c: &str) -> Result<Self> {
        match c {
            "c" => Ok(Self::Libc),
            "i" => Ok(Self::Icu),
            "b" => Ok(Self::Builtin),
            other => Err(Error::permanent(format!("unknown locale provider {other:?} in pg_database"))),
        }
    }

    pub fn as_sql(self) -> &'static str {
        match self {
            Self::Libc => "libc",
            Self::Icu => "icu",
            Self::Builtin => "builtin",
        }
    }
}

/// One privilege of one grantee (a row of `aclexplode(datacl)`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AclItem {
    /// `None`: PUBLIC.
    pub grantee: Option<String>,
    pub grantor: String,
    /// `CONNECT`, `CREATE` or `TEMPORARY`.
    pub privilege: String,
    pub grantable: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Setting {
    /// `None`: for every role (`ALTER DATABASE … SET`); else `ALTER ROLE … IN DATABASE … SET`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    pub name: String,
    /// As stored in `setconfig` (list values flattened: `app, "My Schema"`).
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityLabel {
    pub provider: String,
    pub label: String,
}

impl DatabaseProperties {
    /// `UTF8, libc, collate "C", ctype "C"` and the like, for messages.
    pub fn describe_locale(&self) -> String {
        let mut s = format!(
            "encoding {}, locale provider {}, LC_COLLATE {:?}, LC_CTYPE {:?}",
            self.encoding,
            self.locale_provider.as_sql(),
            self.collate,
            self.ctype
        );
        if let Some(l) = &self.locale {
            s.push_str(&format!(", locale {l:?}"));
        }
        if let Some(r) = &self.icu_rules {
            s.push_str(&format!(", ICU rules {r:?}"));
        }
        s
    }
}

// ---- reading ------------------------------------------------------------------------------------

/// Read database `datname`'s properties. At backup time this runs in the transaction whose
/// snapshot pg_dump dumps, so the properties and the dump describe the same moment (`pg_database`
/// and `pg_db_role_setting` are read through the transaction's snapshot like any table).
pub async fn read(
    client: &impl tokio_postgres::GenericClient,
    datname: &str,
    version_num: u32,
) -> Result<DatabaseProperties> {
    let major = pg::major_of(version_num);
    let provider = if major >= 15 { "d.datlocprovider::text" } else { "'c'" };
    let locale = match major {
        17.. => "d.datlocale",
        15 | 16 => "d.daticulocale",
        _ => "NULL::text",
    };
    let rules = if major >= 16 { "d.daticurules" } else { "NULL::text" };
    let sql = format!(
        "SELECT pg_encoding_to_char(d.encoding)::text, {provider}, d.datcollate::text, d.datctype::text, \
         {locale}, {rules}, pg_get_userbyid(d.datdba)::text, d.datacl IS NULL, d.datconnlimit, t.spcname::text, \
         shobj_description(d.oid, 'pg_database') \
         FROM pg_database d JOIN pg_tablespace t ON t.oid = d.dattablespace WHERE d.datname = $1"
    );
    let what = format!("read the properties of database {datname:?}");
    let row = client
        .query_opt(&sql, &[&datname])
        .await
        .map_err(|e| pg::query_error(&what, e))?
        .ok_or_else(|| Error::permanent(format!("{what}: no such database")))?;
    let acl_is_null: bool = row.get(7);
    let acl = if acl_is_null {
        None
    } else {
        let rows = client
            .query(
                "SELECT CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee)::text END, \
                 pg_get_userbyid(a.grantor)::text, a.privilege_type, a.is_grantable \
                 FROM pg_database d, aclexplode(d.datacl) a WHERE d.datname = $1",
                &[&datname],
            )
            .await
            .map_err(|e| pg::query_error(&what, e))?;
        let mut items: Vec<AclItem> = rows
            .iter()
            .map(|r| AclItem { grantee: r.get(0), grantor: r.get(1), privilege: r.get(2), grantable: r.get(3) })
            .collect();
        items.sort();
        Some(items)
    };
    let rows = client
        .query(
            "SELECT CASE WHEN s.setrole = 0 THEN NULL ELSE pg_get_userbyid(s.setrole)::text END, c.setting \
             FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase, \
             unnest(s.setconfig) WITH ORDINALITY AS c(setting, n) WHERE d.datname = $1 ORDER BY 1 NULLS FIRST, c.n",
            &[&datname],
        )
        .await
        .map_err(|e| pg::query_error(&what, e))?;
    let settings = rows
        .iter()
        .filter_map(|r| {
            let role: Option<String> = r.get(0);
            let text: String = r.get(1);
            let (name, value) = text.split_once('=')?;
            Some(Setting { role, name: name.to_string(), value: value.to_string() })
        })
        .collect();
    let rows = client
        .query(
            "SELECT l.provider, l.label FROM pg_shseclabel l JOIN pg_database d ON d.oid = l.objoid \
             WHERE l.classoid = 'pg_database'::regclass AND d.datname = $1 ORDER BY 1",
            &[&datname],
        )
        .await
        .map_err(|e| pg::query_error(&what, e))?;
    let security_labels = rows.iter().map(|r| SecurityLabel { provider: r.get(0), label: r.get(1) }).collect();
    Ok(DatabaseProperties {
        encoding: row.get(0),
        locale_provider: LocaleProvider::from_catalog(row.get::<_, String>(1).as_str())?,
        collate: row.get(2),
        ctype: row.get(3),
        locale: row.get::<_, Option<String>>(4).filter(|s| !s.is_empty()),
        icu_rules: row.get::<_, Option<String>>(5).filter(|s| !s.is_empty()),
        owner: row.get(6),
        acl,
        connection_limit: row.get(8),
        tablespace: row.get(9),
        settings,
        comment: row.get(10),
        security_labels,
    })
}

// ---- creating -----------------------------------------------------------------------------------

/// `SQL literal` of a string (`E'…'` when it holds a backslash, so the text is the same whatever
/// `standard_conforming_strings` says).
pub fn quote_literal(s: &str) -> String {
    if s.contains('\\') {
        format!("E'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
    } else {
        format!("'{}'", s.replace('\'', "''"))
    }
}

/// The clauses after `CREATE DATABASE <name> TEMPLATE template0` that give a database the
/// source's encoding and locale on a server of `target_major`. Pure. An error names what the
/// target's version cannot reproduce.
pub fn create_clauses(p: &DatabaseProperties, target_major: u32) -> Result<String> {
    let mut s = format!(
        " ENCODING {} LC_COLLATE {} LC_CTYPE {}",
        quote_literal(&p.encoding),
        quote_literal(&p.collate),
        quote_literal(&p.ctype)
    );
    let cannot = |what: &str, since: u32| {
        Error::permanent(format!(
            "the backup's database uses {what}, which PostgreSQL {target_major} cannot create (it needs {since} or newer)"
        ))
    };
    match p.locale_provider {
        LocaleProvider::Libc => {
            if target_major >= 15 {
                s.push_str(" LOCALE_PROVIDER libc");
            }
        }
        LocaleProvider::Icu => {
            if target_major < 15 {
                return Err(cannot("the ICU locale provider", 15));
            }
            let locale = p.locale.as_deref().ok_or_else(|| {
                Error::permanent("the backup's database uses the ICU locale provider but records no ICU locale")
            })?;
            s.push_str(&format!(" LOCALE_PROVIDER icu ICU_LOCALE {}", quote_literal(locale)));
        }
        LocaleProvider::Builtin => {
            if target_major < 17 {
                return Err(cannot("the builtin locale provider", 17));
            }
            let locale = p.locale.as_deref().unwrap_or("C");
            s.push_str(&format!(" LOCALE_PROVIDER builtin BUILTIN_LOCALE {}", quote_literal(locale)));
        }
    }
    if let Some(rules) = &p.icu_rules {
        if target_major < 16 {
            return Err(cannot("ICU rules", 16));
        }
        s.push_str(&format!(" ICU_RULES {}", quote_literal(rules)));
    }
    Ok(s)
}

// ---- applying -----------------------------------------------------------------------------------

/// Who the restored database (and, without `--no-owner`, everything in it) belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnerChoice {
    /// The backup's owner.
    Backup(String),
    /// `options.owner`.
    Mapped(String),
    /// The replaced database's owner: the backup records no owner of its own (a manifest
    /// written before pgvault recorded the database's properties).
    Previous(String),
    /// `options.no_owner`: the restoring login keeps it.
    NotApplied,
}

impl OwnerChoice {
    pub fn role(&self) -> Option<&str> {
        match self {
            Self::Backup(r) | Self::Mapped(r) | Self::Previous(r) => Some(r),
            Self::NotApplied => None,
        }
    }
}

/// What [`plan_apply`] needs to know about the target.
#[derive(Debug, Clone, Default)]
pub struct TargetFacts {
    /// The restoring login (`current_user`).
    pub restorer: String,
    /// Roles that exist on the target server.
    pub roles: BTreeSet<String>,
}

/// One statement of the apply step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// What it applies, for the report.
    pub what: String,
    pub sql: String,
    /// A required step that fails fails the restore (the target stays untouched); an optional
    /// one is rolled back to its savepoint and reported as skipped with the server's reason.
    pub required: bool,
    /// What reading the database back must show once the step ran.
    pub check: Check,
}

/// What an applied step leaves behind that [`compare`] looks for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Check {
    #[default]
    Nothing,
    Setting(Setting),
    Comment,
}

/// A property that was not applied, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    pub what: String,
    pub reason: String,
}

/// What the restore did with the backup's database properties (in the report and job record).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PropertiesReport {
    pub applied: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<Skipped>,
    /// Read back in the swap transaction and found as planned.
    pub checked: bool,
}

/// A database's privileges as (grantee, privilege, grantable); the grantee `None` is PUBLIC.
pub type Privileges = BTreeSet<(Option<String>, String, bool)>;

/// The apply step's plan: statements on the temporary database `db` (which the restoring login
/// created, so it owns it while they run), the owner's statement to run last (after the renames,
/// on the final name), what was skipped, and what to check afterwards.
#[derive(Debug, Clone, Default)]
pub struct ApplyPlan {
    pub steps: Vec<Step>,
    pub owner: Option<Step>,
    pub skipped: Vec<Skipped>,
    /// The privileges the database must end up with: `None` to leave them unchecked.
    pub expect_acl: Option<Option<Privileges>>,
}

/// GUCs whose values are lists of separately quoted elements (pg_dump's
/// `variable_is_guc_list_quote`): their stored text must be split and each element passed as
/// its own literal, or `search_path` would become one schema named `app, public`.
const LIST_QUOTE_GUCS: &[&str] = &[
    "local_preload_libraries",
    "search_path",
    "session_preload_libraries",
    "shared_preload_libraries",
    "temp_tablespaces",
    "unix_socket_directories",
];

/// Split a flattened GUC list (`app, "My Schema"`) into its elements, dequoted (PostgreSQL's
/// `SplitGUCList`). Pure.
pub fn split_guc_list(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = value.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let Some(&first) = chars.peek() else { break };
        let mut item = String::new();
        if first == '"' {
            chars.next();
            while let Some(c) = chars.next() {
                if c == '"' {
                    if chars.peek() == Some(&'"') {
                        chars.next();
                        item.push('"');
                    } else {
                        break;
                    }
                } else {
                    item.push(c);
                }
            }
            while chars.peek().is_some_and(|c| *c != ',') {
                chars.next();
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                item.push(c);
                chars.next();
            }
            item = item.trim_end().to_string();
        }
        out.push(item);
        if chars.next().is_none() {
            break;
        }
    }
    out
}

/// `TO 'v'` or `TO 'a', 'b'` for a setting's stored value.
fn setting_value_sql(name: &str, value: &str) -> String {
    if LIST_QUOTE_GUCS.contains(&name.to_ascii_lowercase().as_str()) {
        let items = split_guc_list(value);
        if items.is_empty() {
            return "''".into();
        }
        items.iter().map(|i| quote_literal(i)).collect::<Vec<_>>().join(", ")
    } else {
        quote_literal(value)
    }
}

/// The statements that give the temporary database `db` the backup's properties. Pure.
///
/// - ACL: unless `no_privileges`, the database's privileges are set to exactly the backup's
///   (`REVOKE ALL` from PUBLIC and the owner, then one `GRANT` per grantee). The backup owner's
///   own entry follows the owner that is applied. A grantee missing on the target is skipped and
///   reported; the grantor is always the owner (as pg_restore --create does it).
/// - Settings: database-wide, and per role (a role missing on the target is skipped).
/// - Comment, security labels, connection limit.
/// - Owner last, on `final_name`, unless not applied.
pub fn plan_apply(
    p: &DatabaseProperties,
    db: &str,
    final_name: &str,
    owner: &OwnerChoice,
    no_privileges: bool,
    facts: &TargetFacts,
) -> ApplyPlan {
    let mut plan = ApplyPlan::default();
    let qdb = quote_ident(db);
    let exists = |r: &str| facts.roles.contains(r);
    let final_owner = owner.role().unwrap_or(&facts.restorer).to_string();
    // Privileges.
    match (&p.acl, no_privileges) {
        (_, true) => plan.skipped.push(Skipped {
            what: "privileges".into(),
            reason: "not restored: no_privileges was asked for (the database has the target's default privileges)"
                .into(),
        }),
        (None, false) => {
            plan.expect_acl = Some(None);
        }
        (Some(items), false) => {
            let mut expect = BTreeSet::new();
            plan.steps.push(Step {
                what: "privileges: revoke the defaults".into(),
                sql: format!(
                    "REVOKE ALL ON DATABASE {qdb} FROM PUBLIC; REVOKE ALL ON DATABASE {qdb} FROM CURRENT_USER"
                ),
                required: true,
                check: Check::Nothing,
            });
            // grantee -> (plain privileges, grantable privileges), in a stable order.
            let mut by_grantee: BTreeMap<Option<String>, (Vec<String>, Vec<String>)> = BTreeMap::new();
            for item in items {
                let grantee = match &item.grantee {
                    Some(g) if *g == p.owner => Some(final_owner.clone()),
                    other => other.clone(),
                };
                if let Some(g) = &grantee
                    && !exists(g)
                {
                    plan.skipped.push(Skipped {
                        what: format!("privilege {} for role {g:?}", item.privilege),
                        reason: format!("role {g:?} does not exist on the target server"),
                    });
                    continue;
                }
                if item.grantor != p.owner {
                    plan.skipped.push(Skipped {
                        what: format!(
                            "grantor {:?} of privilege {} for {}",
                            item.grantor,
                            item.privilege,
                            who(&grantee)
                        ),
                        reason: "the privilege is granted by the database's owner instead".into(),
                    });
                }
                let entry = by_grantee.entry(grantee.clone()).or_default();
                if item.grantable { &mut entry.1 } else { &mut entry.0 }.push(item.privilege.clone());
                expect.insert((grantee, item.privilege.clone(), item.grantable));
            }
            for (grantee, (plain, grantable)) in by_grantee {
                let to = grantee.as_deref().map(quote_ident).unwrap_or_else(|| "PUBLIC".into());
                for (privs, option) in [(plain, ""), (grantable, " WITH GRANT OPTION")] {
                    if privs.is_empty() {
                        continue;
                    }
                    plan.steps.push(Step {
                        what: format!("privileges: {} to {}{option}", privs.join(", "), who(&grantee)),
                        sql: format!("GRANT {} ON DATABASE {qdb} TO {to}{option}", privs.join(", ")),
                        required: true,
                        check: Check::Nothing,
                    });
                }
            }
            plan.expect_acl = Some(Some(expect));
        }
    }
    // Settings.
    for s in &p.settings {
        let value = setting_value_sql(&s.name, &s.value);
        match &s.role {
            None => plan.steps.push(Step {
                what: format!("setting {}={}", s.name, s.value),
                sql: format!("ALTER DATABASE {qdb} SET {} TO {value}", quote_ident(&s.name)),
                required: false,
                check: Check::Setting(s.clone()),
            }),
            Some(r) if !exists(r) => plan.skipped.push(Skipped {
                what: format!("setting {}={} for role {r:?}", s.name, s.value),
                reason: format!("role {r:?} does not exist on the target server"),
            }),
            Some(r) => plan.steps.push(Step {
                what: format!("setting {}={} for role {r:?}", s.name, s.value),
                sql: format!("ALTER ROLE {} IN DATABASE {qdb} SET {} TO {value}", quote_ident(r), quote_ident(&s.name)),
                required: false,
                check: Check::Setting(s.clone()),
            }),
        }
    }
    if let Some(c) = &p.comment {
        plan.steps.push(Step {
            what: "comment".into(),
            sql: format!("COMMENT ON DATABASE {qdb} IS {}", quote_literal(c)),
            required: false,
            check: Check::Comment,
        });
    }
    for l in &p.security_labels {
        plan.steps.push(Step {
            what: format!("security label of provider {:?}", l.provider),
            sql: format!(
                "SECURITY LABEL FOR {} ON DATABASE {qdb} IS {}",
                quote_ident(&l.provider),
                quote_literal(&l.label)
            ),
            required: false,
            check: Check::Nothing,
        });
    }
    if p.connection_limit >= 0 {
        plan.steps.push(Step {
            what: format!("connection limit {}", p.connection_limit),
            sql: format!("ALTER DATABASE {qdb} CONNECTION LIMIT {}", p.connection_limit),
            required: false,
            check: Check::Nothing,
        });
    }
    if p.tablespace != "pg_default" {
        plan.skipped.push(Skipped {
            what: format!("tablespace {:?}", p.tablespace),
            reason: "tablespaces are not restored: the database is in the target's default tablespace".into(),
        });
    }
    match owner {
        OwnerChoice::NotApplied => plan.skipped.push(Skipped {
            what: format!("owner {:?}", p.owner),
            reason: format!("not applied: no_owner was asked for (the database belongs to {:?})", facts.restorer),
        }),
        OwnerChoice::Backup(_) | OwnerChoice::Mapped(_) | OwnerChoice::Previous(_) => {
            plan.owner = owner_step(owner, Some(&p.owner), final_name);
        }
    }
    plan
}

/// `ALTER DATABASE <final name> OWNER TO <role>`, unless the owner is not applied.
pub fn owner_step(owner: &OwnerChoice, backup_owner: Option<&str>, final_name: &str) -> Option<Step> {
    let r = owner.role()?;
    let what = match (owner, backup_owner) {
        (OwnerChoice::Mapped(_), Some(b)) if b != r => format!("owner {r:?} (options.owner; the backup's was {b:?})"),
        (OwnerChoice::Mapped(_), _) => format!("owner {r:?} (options.owner)"),
        (OwnerChoice::Previous(_), _) => format!("owner {r:?} (the replaced database's)"),
        _ => format!("owner {r:?}"),
    };
    Some(Step {
        what,
        sql: format!("ALTER DATABASE {} OWNER TO {}", quote_ident(final_name), quote_ident(r)),
        required: true,
        check: Check::Nothing,
    })
}

fn who(grantee: &Option<String>) -> String {
    grantee.as_deref().map(|g| format!("{g:?}")).unwrap_or_else(|| "PUBLIC".into())
}

/// What differs between the plan and the database read back (empty: as planned). Pure.
pub fn compare(
    p: &DatabaseProperties,
    plan: &ApplyPlan,
    applied: &[&Check],
    locale_applied: bool,
    expected_owner: &str,
    actual: &DatabaseProperties,
) -> Vec<String> {
    let mut diffs = Vec::new();
    if locale_applied {
        for (what, want, got) in [
            ("encoding", p.encoding.as_str(), actual.encoding.as_str()),
            ("locale provider", p.locale_provider.as_sql(), actual.locale_provider.as_sql()),
            ("LC_COLLATE", &p.collate, &actual.collate),
            ("LC_CTYPE", &p.ctype, &actual.ctype),
            ("locale", p.locale.as_deref().unwrap_or(""), actual.locale.as_deref().unwrap_or("")),
            ("ICU rules", p.icu_rules.as_deref().unwrap_or(""), actual.icu_rules.as_deref().unwrap_or("")),
        ] {
            // The builtin and libc providers need no locale of their own before 17.
            if what == "locale" && p.locale_provider == LocaleProvider::Libc {
                continue;
            }
            // ICU locale names are canonicalized by newer servers (`de_DE` becomes `de-DE`).
            let same = if what == "locale" { canonical_locale(want) == canonical_locale(got) } else { want == got };
            if !same {
                diffs.push(format!("{what} is {got:?}, the backup's is {want:?}"));
            }
        }
    }
    if actual.owner != expected_owner {
        diffs.push(format!("owner is {:?}, expected {expected_owner:?}", actual.owner));
    }
    if let Some(expect) = &plan.expect_acl {
        let got: Option<Privileges> = actual
            .acl
            .as_ref()
            .map(|items| items.iter().map(|i| (i.grantee.clone(), i.privilege.clone(), i.grantable)).collect());
        if *expect != got {
            diffs.push(format!("privileges are {}, expected {}", acl_text(&got), acl_text(expect)));
        }
    }
    for check in applied {
        match check {
            Check::Setting(s)
                if !actual.settings.iter().any(|a| a.role == s.role && a.name == s.name && a.value == s.value) =>
            {
                diffs.push(format!("setting {}={} is missing", s.name, s.value));
            }
            Check::Comment if actual.comment != p.comment => {
                diffs.push(format!("comment is {:?}, the backup's is {:?}", actual.comment, p.comment));
            }
            _ => {}
        }
    }
    diffs
}

fn canonical_locale(l: &str) -> String {
    l.replace('_', "-").to_ascii_lowercase()
}

fn acl_text(acl: &Option<Privileges>) -> String {
    match acl {
        None => "the defaults".into(),
        Some(items) if items.is_empty() => "none".into(),
        Some(items) => items
            .iter()
            .map(|(g, p, o)| format!("{p} to {}{}", who(g), if *o { " with grant option" } else { "" }))
            .collect::<Vec<_>>()
            .join(", "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props() -> DatabaseProperties {
        DatabaseProperties {
            encoding: "UTF8".into(),
            locale_provider: LocaleProvider::Libc,
            collate: "C".into(),
            ctype: "C".into(),
            locale: None,
            icu_rules: None,
            owner: "app_owner".into(),
            acl: Some(vec![
                AclItem {
                    grantee: Some("app_owner".into()),
                    grantor: "app_owner".into(),
                    privilege: "CONNECT".into(),
                    grantable: false,
                },
                AclItem {
                    grantee: Some("app_owner".into()),
                    grantor: "app_owner".into(),
                    privilege: "CREATE".into(),
                    grantable: false,
                },
                AclItem {
                    grantee: Some("app_reader".into()),
                    grantor: "app_owner".into(),
                    privilege: "CONNECT".into(),
                    grantable: false,
                },
                AclItem {
                    grantee: Some("gone".into()),
                    grantor: "app_owner".into(),
                    privilege: "CONNECT".into(),
                    grantable: false,
                },
            ]),
            connection_limit: -1,
            tablespace: "pg_default".into(),
            settings: vec![
                Setting { role: None, name: "search_path".into(), value: "app, \"My Schema\"".into() },
                Setting { role: Some("app_reader".into()), name: "statement_timeout".into(), value: "5min".into() },
                Setting { role: Some("gone".into()), name: "work_mem".into(), value: "8MB".into() },
            ],
            comment: Some("it's the app".into()),
            security_labels: vec![],
        }
    }

    fn facts() -> TargetFacts {
        TargetFacts {
            restorer: "pgvault_restore".into(),
            roles: ["app_owner", "app_reader", "pgvault_restore"].map(String::from).into(),
        }
    }

    #[test]
    fn guc_lists_split_like_postgres() {
        assert_eq!(split_guc_list("app, public"), ["app", "public"]);
        assert_eq!(split_guc_list("\"My Schema\", \"a\"\"b\",x"), ["My Schema", "a\"b", "x"]);
        assert_eq!(split_guc_list("\"$user\", public"), ["$user", "public"]);
        assert!(split_guc_list("").is_empty());
        assert_eq!(setting_value_sql("search_path", "app, \"My Schema\""), "'app', 'My Schema'");
        assert_eq!(setting_value_sql("statement_timeout", "5min"), "'5min'");
        assert_eq!(setting_value_sql("DateStyle", "ISO, MDY"), "'ISO, MDY'", "not a list-quote GUC: one literal");
    }

    #[test]
    fn literals_survive_quotes_and_backslashes() {
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal(r"a\b'"), r"E'a\\b'''");
    }

    #[test]
    fn create_clauses_follow_the_provider_and_the_target_version() {
        let mut p = props();
        p.encoding = "LATIN1".into();
        assert_eq!(
            create_clauses(&p, 17).unwrap(),
            " ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' LOCALE_PROVIDER libc"
        );
        assert_eq!(create_clauses(&p, 14).unwrap(), " ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C'");
        p.locale_provider = LocaleProvider::Icu;
        p.locale = Some("de-DE".into());
        assert!(create_clauses(&p, 15).unwrap().ends_with(" LOCALE_PROVIDER icu ICU_LOCALE 'de-DE'"));
        let e = create_clauses(&p, 14).unwrap_err();
        assert!(e.to_string().contains("ICU locale provider, which PostgreSQL 14 cannot create"), "{e}");
        p.icu_rules = Some("&a < b".into());
        assert!(create_clauses(&p, 15).unwrap_err().to_string().contains("ICU rules"));
        assert!(create_clauses(&p, 16).unwrap().ends_with(" ICU_RULES '&a < b'"));
        p.locale_provider = LocaleProvider::Builtin;
        p.icu_rules = None;
        p.locale = Some("C.UTF-8".into());
        assert!(create_clauses(&p, 16).is_err());
        assert!(create_clauses(&p, 17).unwrap().ends_with(" LOCALE_PROVIDER builtin BUILTIN_LOCALE 'C.UTF-8'"));
    }

    #[test]
    fn the_plan_sets_exactly_the_backups_privileges_and_reports_missing_roles() {
        let p = props();
        let plan =
            plan_apply(&p, "pgvault_restore_1", "app", &OwnerChoice::Backup("app_owner".into()), false, &facts());
        let sql: Vec<&str> = plan.steps.iter().map(|s| s.sql.as_str()).collect();
        assert_eq!(
            sql[0],
            "REVOKE ALL ON DATABASE \"pgvault_restore_1\" FROM PUBLIC; REVOKE ALL ON DATABASE \"pgvault_restore_1\" FROM CURRENT_USER"
        );
        assert!(sql.contains(&"GRANT CONNECT, CREATE ON DATABASE \"pgvault_restore_1\" TO \"app_owner\""), "{sql:?}");
        assert!(sql.contains(&"GRANT CONNECT ON DATABASE \"pgvault_restore_1\" TO \"app_reader\""), "{sql:?}");
        assert!(
            sql.contains(&"ALTER DATABASE \"pgvault_restore_1\" SET \"search_path\" TO 'app', 'My Schema'"),
            "{sql:?}"
        );
        assert!(sql.contains(
            &"ALTER ROLE \"app_reader\" IN DATABASE \"pgvault_restore_1\" SET \"statement_timeout\" TO '5min'"
        ));
        assert!(sql.contains(&"COMMENT ON DATABASE \"pgvault_restore_1\" IS 'it''s the app'"));
        assert!(!sql.iter().any(|s| s.contains("gone")), "missing roles get no statement: {sql:?}");
        let skipped: Vec<&str> = plan.skipped.iter().map(|s| s.what.as_str()).collect();
        assert_eq!(skipped, ["privilege CONNECT for role \"gone\"", "setting work_mem=8MB for role \"gone\""]);
        assert_eq!(plan.owner.as_ref().unwrap().sql, "ALTER DATABASE \"app\" OWNER TO \"app_owner\"");
        let expect = plan.expect_acl.clone().unwrap().unwrap();
        assert_eq!(expect.len(), 3);
    }

    #[test]
    fn the_owners_own_privileges_follow_the_owner_that_is_applied() {
        let p = props();
        let plan = plan_apply(&p, "t", "app", &OwnerChoice::NotApplied, false, &facts());
        assert!(plan.owner.is_none());
        assert!(plan.steps.iter().any(|s| s.sql == "GRANT CONNECT, CREATE ON DATABASE \"t\" TO \"pgvault_restore\""));
        assert!(plan.skipped.iter().any(|s| s.what == "owner \"app_owner\"" && s.reason.contains("no_owner")));
        let plan = plan_apply(&p, "t", "app", &OwnerChoice::Mapped("app_reader".into()), false, &facts());
        assert!(plan.owner.as_ref().unwrap().what.contains("the backup's was \"app_owner\""));
        let plan = plan_apply(&p, "t", "app", &OwnerChoice::Backup("app_owner".into()), true, &facts());
        assert!(plan.expect_acl.is_none());
        assert!(!plan.steps.iter().any(|s| s.sql.contains("GRANT") || s.sql.contains("REVOKE")));
        let mut p = props();
        p.acl = None;
        let plan = plan_apply(&p, "t", "app", &OwnerChoice::Backup("app_owner".into()), false, &facts());
        assert_eq!(plan.expect_acl, Some(None), "default privileges stay the default");
        assert!(!plan.steps.iter().any(|s| s.sql.contains("REVOKE")));
    }

    #[test]
    fn compare_names_each_difference() {
        let p = props();
        let plan = plan_apply(&p, "t", "app", &OwnerChoice::Backup("app_owner".into()), false, &facts());
        let mut actual = p.clone();
        actual.acl =
            Some(vec![AclItem { grantee: None, grantor: "x".into(), privilege: "CONNECT".into(), grantable: false }]);
        actual.collate = "en_US.UTF-8".into();
        actual.comment = None;
        let checks = [Check::Setting(p.settings[0].clone()), Check::Comment];
        let applied: Vec<&Check> = checks.iter().collect();
        actual.settings.clear();
        let diffs = compare(&p, &plan, &applied, true, "app_owner", &actual);
        assert_eq!(diffs.len(), 4, "{diffs:?}");
        assert!(diffs[0].contains("LC_COLLATE is \"en_US.UTF-8\""));
        assert!(diffs[1].starts_with("privileges are CONNECT to PUBLIC, expected"));
        assert!(diffs[2].contains("search_path"));
        assert!(diffs[3].starts_with("comment is None"));
        let mut same = p.clone();
        same.acl = Some(p.acl.clone().unwrap().into_iter().filter(|i| i.grantee.as_deref() != Some("gone")).collect());
        assert!(compare(&p, &plan, &applied, true, "app_owner", &same).is_empty());
        assert_eq!(compare(&p, &plan, &applied, true, "someone", &same).len(), 1);
    }
}
