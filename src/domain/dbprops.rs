//! The database's own properties: what `CREATE DATABASE`, `ALTER DATABASE`, `GRANT … ON
//! DATABASE`, `COMMENT ON DATABASE` and `SECURITY LABEL` give a database, as opposed to what is
//! inside it. pg_restore without `--create` skips them (the archive's `DATABASE` and `DATABASE
//! PROPERTIES` entries), so a restore into a temporary database would silently lose them: the
//! encoding and locale, the owner, the privileges (a database that refused a role would let it
//! in), the settings, the comment.
//!
//! - `seams::pg::database_properties` reads them at backup time, in the dump's own snapshot,
//!   into the manifest.
//! - [`create_clauses`] makes the temporary database like the source (pure).
//! - [`plan_apply`] turns them into the statements a restore runs in its swap transaction, with
//!   a reason for everything it leaves out (pure).
//! - [`compare`] checks, in the same transaction, that what was planned is what the database
//!   now says (pure; the caller reads the database back with [`read`]).

use crate::domain::error::{Error, Result};
use crate::domain::sql::{quote_ident, quote_literal};
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
    /// The roles that own objects in the database (schemas, tables, functions, types, large
    /// objects, ...), besides the database's owner: pg_restore gives every object back to its
    /// owner, so a restore checks up front that the login may become each of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub object_owners: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LocaleProvider {
    Libc,
    Icu,
    Builtin,
}

impl LocaleProvider {
    pub fn from_catalog(c: &str) -> Result<Self> {
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
    /// No properties at all (the defaults of a new database owned by nobody in particular).
    pub fn empty() -> Self {
        DatabaseProperties {
            encoding: String::new(),
            locale_provider: LocaleProvider::Libc,
            collate: String::new(),
            ctype: String::new(),
            locale: None,
            icu_rules: None,
            owner: String::new(),
            acl: None,
            connection_limit: -1,
            tablespace: "pg_default".into(),
            settings: Vec::new(),
            comment: None,
            security_labels: Vec::new(),
            object_owners: Vec::new(),
        }
    }

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

// ---- creating -----------------------------------------------------------------------------------

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

/// A database's privileges as (grantee, privilege) -> grantable; the grantee `None` is PUBLIC.
/// PostgreSQL keeps one entry per grantee and privilege, with the grant option if any grant had
/// it, whoever granted it.
pub type Privileges = BTreeMap<(Option<String>, String), bool>;

/// The privileges a database has while its ACL is NULL: the owner all, PUBLIC CONNECT and
/// TEMPORARY (`acldefault('d', owner)`).
pub fn default_privileges(owner: &str) -> Privileges {
    let mut p = Privileges::new();
    for privilege in ["CONNECT", "CREATE", "TEMPORARY"] {
        p.insert((Some(owner.to_string()), privilege.to_string()), false);
    }
    for privilege in ["CONNECT", "TEMPORARY"] {
        p.insert((None, privilege.to_string()), false);
    }
    p
}

/// A database's privileges as a set, whether its ACL is NULL (the defaults) or explicit.
pub fn privileges_of(p: &DatabaseProperties) -> Privileges {
    match &p.acl {
        None => default_privileges(&p.owner),
        Some(items) => {
            let mut out = Privileges::new();
            for i in items {
                *out.entry((i.grantee.clone(), i.privilege.clone())).or_default() |= i.grantable;
            }
            out
        }
    }
}

/// The privileges a database can have: anything else in a manifest is refused, never put in SQL.
const DATABASE_PRIVILEGES: &[&str] = &["CONNECT", "CREATE", "TEMPORARY"];

/// The apply step's plan, in the order the swap transaction runs it:
/// 1. `steps` (settings, comment, labels, connection limit) on the temporary database, which the
///    restoring login created and so owns, each under a savepoint;
/// 2. the renames (not part of the plan);
/// 3. `owner`: `ALTER DATABASE <final name> OWNER TO <owner>`, before
/// 4. `acl`, run as that owner (`SET LOCAL ROLE`): every grant then has the owner as grantor, as
///    in the source, and no entry of the login is merged into the owner's by the owner change
///    (which rewrites the old owner's entries as the new owner's).
///
/// The temporary database was created with no privileges for PUBLIC (nothing is open while it
/// is restored, and a copy kept after a failed swap stays closed), so `acl` always sets the
/// privileges, to the backup's or to the defaults.
#[derive(Debug, Clone, Default)]
pub struct ApplyPlan {
    pub owner: Option<Step>,
    /// The role `acl` runs as (`None`: the login, which stays the owner).
    pub acl_role: Option<String>,
    pub acl: Vec<Step>,
    pub steps: Vec<Step>,
    pub skipped: Vec<Skipped>,
    /// The privileges the database must end up with.
    pub expect_acl: Privileges,
}

impl ApplyPlan {
    /// The SQL of the whole swap with `renames` in their place, for an operator finishing a
    /// kept copy by hand.
    pub fn sql(&self, renames: &[String]) -> Vec<String> {
        // A setting's value may be a secret and this text goes into an error: the value is named,
        // not given (the manifest's `database_properties` has it).
        let mut out: Vec<String> = self
            .steps
            .iter()
            .map(|s| match &s.check {
                Check::Setting(set) => match s.sql.rfind(" TO ") {
                    Some(at) => format!("{} TO <the value of {} in the manifest>", &s.sql[..at], set.name),
                    None => s.sql.clone(),
                },
                _ => s.sql.clone(),
            })
            .collect();
        out.extend(renames.iter().cloned());
        out.extend(self.owner.iter().map(|s| s.sql.clone()));
        if let Some(r) = &self.acl_role {
            out.push(format!("SET LOCAL ROLE {}", quote_ident(r)));
        }
        out.extend(self.acl.iter().map(|s| s.sql.clone()));
        if self.acl_role.is_some() {
            out.push("RESET ROLE".into());
        }
        out
    }
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
/// - Owner: unless not applied, first (see [`ApplyPlan`]).
/// - Privileges: the backup's exactly (`REVOKE ALL` from PUBLIC and the owner, then one `GRANT`
///   per grantee), or with `no_privileges` the defaults. The backup owner's own entry follows the
///   owner that is applied. A grantee missing on the target is skipped and reported; the grantor
///   is always the owner (as pg_restore --create does it).
/// - Settings: database-wide, and per role (a role missing on the target is skipped).
/// - Comment, security labels, connection limit.
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
    let qfinal = quote_ident(final_name);
    let exists = |r: &str| facts.roles.contains(r);
    let final_owner = owner.role().unwrap_or(&facts.restorer).to_string();
    plan.owner = owner_step(owner, Some(&p.owner), final_name);
    plan.acl_role = owner.role().filter(|r| *r != facts.restorer).map(String::from);
    if let OwnerChoice::NotApplied = owner {
        plan.skipped.push(Skipped {
            what: format!("owner {:?}", p.owner),
            reason: format!("not applied: no_owner was asked for (the database belongs to {:?})", facts.restorer),
        });
    }
    // Privileges: (grantee, privilege) -> grantable, mapped to the target.
    let wanted: Privileges = if no_privileges {
        plan.skipped.push(Skipped {
            what: "privileges".into(),
            reason: "not restored: no_privileges was asked for (the database has the default privileges)".into(),
        });
        default_privileges(&final_owner)
    } else {
        let mut wanted = Privileges::new();
        for ((grantee, privilege), grantable) in privileges_of(p) {
            let grantee = match grantee {
                Some(g) if g == p.owner => Some(final_owner.clone()),
                other => other,
            };
            if !DATABASE_PRIVILEGES.contains(&privilege.as_str()) {
                plan.skipped.push(Skipped {
                    what: format!("privilege {privilege:?} for {}", who(&grantee)),
                    reason: "not a database privilege".into(),
                });
                continue;
            }
            if let Some(g) = &grantee
                && !exists(g)
            {
                plan.skipped.push(Skipped {
                    what: format!("privilege {privilege} for role {g:?}"),
                    reason: format!("role {g:?} does not exist on the target server"),
                });
                continue;
            }
            *wanted.entry((grantee, privilege)).or_default() |= grantable;
        }
        if let Some(items) = &p.acl {
            for item in items.iter().filter(|i| i.grantor != p.owner) {
                plan.skipped.push(Skipped {
                    what: format!(
                        "grantor {:?} of privilege {} for {}",
                        item.grantor,
                        item.privilege,
                        who(&item.grantee)
                    ),
                    reason: "the privilege is granted by the database's owner instead".into(),
                });
            }
        }
        wanted
    };
    plan.acl.push(Step {
        what: "privileges: revoke the defaults".into(),
        sql: format!("REVOKE ALL ON DATABASE {qfinal} FROM PUBLIC; REVOKE ALL ON DATABASE {qfinal} FROM CURRENT_USER"),
        required: true,
        check: Check::Nothing,
    });
    // grantee -> (plain privileges, grantable privileges), in a stable order.
    let mut by_grantee: BTreeMap<Option<String>, (Vec<&str>, Vec<&str>)> = BTreeMap::new();
    for ((grantee, privilege), grantable) in &wanted {
        let entry = by_grantee.entry(grantee.clone()).or_default();
        if *grantable { &mut entry.1 } else { &mut entry.0 }.push(privilege);
    }
    for (grantee, (plain, grantable)) in by_grantee {
        let to = grantee.as_deref().map(quote_ident).unwrap_or_else(|| "PUBLIC".into());
        for (privs, option) in [(plain, ""), (grantable, " WITH GRANT OPTION")] {
            if privs.is_empty() {
                continue;
            }
            plan.acl.push(Step {
                what: format!("privileges: {} to {}{option}", privs.join(", "), who(&grantee)),
                sql: format!("GRANT {} ON DATABASE {qfinal} TO {to}{option}", privs.join(", ")),
                required: true,
                check: Check::Nothing,
            });
        }
    }
    plan.expect_acl = wanted;
    // Settings.
    for s in &p.settings {
        let value = setting_value_sql(&s.name, &s.value);
        match &s.role {
            None => plan.steps.push(Step {
                what: format!("setting {}", shown(s)),
                sql: format!("ALTER DATABASE {qdb} SET {} TO {value}", quote_ident(&s.name)),
                required: false,
                check: Check::Setting(s.clone()),
            }),
            Some(r) if !exists(r) => plan.skipped.push(Skipped {
                what: format!("setting {} for role {r:?}", shown(s)),
                reason: format!("role {r:?} does not exist on the target server"),
            }),
            Some(r) => plan.steps.push(Step {
                what: format!("setting {} for role {r:?}", shown(s)),
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
    plan
}

/// `ALTER DATABASE <db> OWNER TO <role>`, unless the owner is not applied.
pub fn owner_step(owner: &OwnerChoice, backup_owner: Option<&str>, db: &str) -> Option<Step> {
    let r = owner.role()?;
    let what = match (owner, backup_owner) {
        (OwnerChoice::Mapped(_), Some(b)) if b != r => format!("owner {r:?} (options.owner; the backup's was {b:?})"),
        (OwnerChoice::Mapped(_), _) => format!("owner {r:?} (options.owner)"),
        (OwnerChoice::Previous(_), _) => format!("owner {r:?} (the replaced database's)"),
        _ => format!("owner {r:?}"),
    };
    Some(Step {
        what,
        sql: format!("ALTER DATABASE {} OWNER TO {}", quote_ident(db), quote_ident(r)),
        required: true,
        check: Check::Nothing,
    })
}

/// `name=value` of a setting for reports and records, through `redact`: an application may keep
/// a password in a database setting (`ALTER DATABASE … SET myapp.password = …`), and reports
/// reach job records, the CLI and the `jobs` function.
fn shown(s: &Setting) -> String {
    crate::domain::secret::redact(&format!("{}={}", s.name, s.value))
}

fn who(grantee: &Option<String>) -> String {
    grantee.as_deref().map(|g| format!("{g:?}")).unwrap_or_else(|| "PUBLIC".into())
}

/// What differs between the plan and the database read back (empty: as planned). Pure.
/// `expected` holds the encoding and locale the database must have (the backup's, as the
/// target stored them), or `None` when they were not applied.
pub fn compare(
    p: &DatabaseProperties,
    expected_locale: Option<&DatabaseProperties>,
    plan: &ApplyPlan,
    applied: &[&Check],
    expected_owner: &str,
    actual: &DatabaseProperties,
) -> Vec<String> {
    let mut diffs = Vec::new();
    if let Some(loc) = expected_locale {
        let (want, libc) = (loc, loc.locale_provider == LocaleProvider::Libc);
        for (what, want, got) in [
            ("encoding", want.encoding.as_str(), actual.encoding.as_str()),
            ("locale provider", want.locale_provider.as_sql(), actual.locale_provider.as_sql()),
            ("LC_COLLATE", &want.collate, &actual.collate),
            ("LC_CTYPE", &want.ctype, &actual.ctype),
            ("locale", want.locale.as_deref().unwrap_or(""), actual.locale.as_deref().unwrap_or("")),
            ("ICU rules", want.icu_rules.as_deref().unwrap_or(""), actual.icu_rules.as_deref().unwrap_or("")),
        ] {
            // The libc provider has no locale of its own.
            if what == "locale" && libc {
                continue;
            }
            if want != got {
                diffs.push(format!("{what} is {got:?}, the backup's is {want:?}"));
            }
        }
    }
    if actual.owner != expected_owner {
        diffs.push(format!("owner is {:?}, expected {expected_owner:?}", actual.owner));
    }
    let got = privileges_of(actual);
    if got != plan.expect_acl {
        diffs.push(format!("privileges are {}, expected {}", acl_text(&got), acl_text(&plan.expect_acl)));
    }
    for check in applied {
        match check {
            Check::Setting(s)
                if !actual.settings.iter().any(|a| a.role == s.role && a.name == s.name && a.value == s.value) =>
            {
                diffs.push(format!("setting {} is missing", shown(s)));
            }
            Check::Comment if actual.comment != p.comment => {
                diffs.push(format!("comment is {:?}, the backup's is {:?}", actual.comment, p.comment));
            }
            _ => {}
        }
    }
    diffs
}

fn acl_text(acl: &Privileges) -> String {
    if acl.is_empty() {
        return "none".into();
    }
    acl.iter()
        .map(|((g, p), o)| format!("{p} to {}{}", who(g), if *o { " with grant option" } else { "" }))
        .collect::<Vec<_>>()
        .join(", ")
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
            object_owners: vec![],
        }
    }

    fn facts() -> TargetFacts {
        TargetFacts {
            restorer: "pgvault_restore".into(),
            roles: ["app_owner", "app_reader", "pgvault_restore"].map(String::from).into(),
        }
    }

    #[test]
    fn a_setting_that_holds_a_password_is_redacted_in_reports() {
        let mut p = props();
        p.settings = vec![Setting { role: None, name: "myapp.password".into(), value: "hunter2-secret".into() }];
        let plan = plan_apply(&p, "t", "app", &OwnerChoice::Backup("app_owner".into()), false, &facts());
        let what = &plan.steps[0].what;
        assert!(what.starts_with("setting myapp.password=") && !what.contains("hunter2-secret"), "{what}");
        // The statement itself carries the value: it goes to the server, never to a report, nor
        // to the finish-by-hand SQL of a failed swap's HINT.
        assert!(plan.steps[0].sql.contains("'hunter2-secret'"));
        let finish = plan.sql(&[]).join("; ");
        assert!(!finish.contains("hunter2-secret"), "{finish}");
        assert!(finish.contains("SET \"myapp.password\" TO <the value of myapp.password in the manifest>"), "{finish}");
        let checks = [Check::Setting(p.settings[0].clone())];
        let mut actual = p.clone();
        actual.settings.clear();
        let diffs = compare(&p, None, &plan, &checks.iter().collect::<Vec<_>>(), "app_owner", &actual);
        assert!(diffs.iter().all(|d| !d.contains("hunter2-secret")), "{diffs:?}");
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
        // Settings go to the temporary database, before the renames; the owner and the
        // privileges to the final name, after them, the privileges as the owner.
        let steps: Vec<&str> = plan.steps.iter().map(|s| s.sql.as_str()).collect();
        assert!(steps.contains(&"ALTER DATABASE \"pgvault_restore_1\" SET \"search_path\" TO 'app', 'My Schema'"));
        assert!(steps.contains(
            &"ALTER ROLE \"app_reader\" IN DATABASE \"pgvault_restore_1\" SET \"statement_timeout\" TO '5min'"
        ));
        assert!(steps.contains(&"COMMENT ON DATABASE \"pgvault_restore_1\" IS 'it''s the app'"));
        assert_eq!(plan.owner.as_ref().unwrap().sql, "ALTER DATABASE \"app\" OWNER TO \"app_owner\"");
        assert_eq!(plan.acl_role.as_deref(), Some("app_owner"));
        let acl: Vec<&str> = plan.acl.iter().map(|s| s.sql.as_str()).collect();
        assert_eq!(
            acl[0],
            "REVOKE ALL ON DATABASE \"app\" FROM PUBLIC; REVOKE ALL ON DATABASE \"app\" FROM CURRENT_USER"
        );
        assert!(acl.contains(&"GRANT CONNECT, CREATE ON DATABASE \"app\" TO \"app_owner\""), "{acl:?}");
        assert!(acl.contains(&"GRANT CONNECT ON DATABASE \"app\" TO \"app_reader\""), "{acl:?}");
        let all = plan.sql(&["RENAME".into()]);
        assert!(!all.iter().any(|s| s.contains("gone")), "missing roles get no statement: {all:?}");
        let at = |needle: &str| all.iter().position(|s| s.starts_with(needle)).unwrap();
        assert!(at("ALTER DATABASE \"pgvault_restore_1\" SET") < at("RENAME"));
        assert!(
            at("RENAME") < at("ALTER DATABASE \"app\" OWNER")
                && at("ALTER DATABASE \"app\" OWNER") < at("SET LOCAL ROLE")
        );
        assert!(at("SET LOCAL ROLE") < at("GRANT") && at("GRANT") < at("RESET ROLE"));
        let skipped: Vec<&str> = plan.skipped.iter().map(|s| s.what.as_str()).collect();
        assert_eq!(skipped, ["privilege CONNECT for role \"gone\"", "setting work_mem=8MB for role \"gone\""]);
        assert_eq!(plan.expect_acl.len(), 3);
    }

    #[test]
    fn the_owners_own_privileges_follow_the_owner_that_is_applied() {
        let p = props();
        let plan = plan_apply(&p, "t", "app", &OwnerChoice::NotApplied, false, &facts());
        assert!(plan.owner.is_none() && plan.acl_role.is_none());
        assert!(plan.acl.iter().any(|s| s.sql == "GRANT CONNECT, CREATE ON DATABASE \"app\" TO \"pgvault_restore\""));
        assert!(plan.skipped.iter().any(|s| s.what == "owner \"app_owner\"" && s.reason.contains("no_owner")));
        let plan = plan_apply(&p, "t", "app", &OwnerChoice::Mapped("app_reader".into()), false, &facts());
        assert!(plan.owner.as_ref().unwrap().what.contains("the backup's was \"app_owner\""));
        // no_privileges and a NULL ACL both give the defaults back (the temporary database was
        // created closed to PUBLIC).
        let plan = plan_apply(&p, "t", "app", &OwnerChoice::Backup("app_owner".into()), true, &facts());
        assert_eq!(plan.expect_acl, default_privileges("app_owner"));
        assert!(plan.acl.iter().any(|s| s.sql == "GRANT CONNECT, TEMPORARY ON DATABASE \"app\" TO PUBLIC"));
        let mut p = props();
        p.acl = None;
        let plan = plan_apply(&p, "t", "app", &OwnerChoice::Backup("app_owner".into()), false, &facts());
        assert_eq!(plan.expect_acl, default_privileges("app_owner"));
    }

    #[test]
    fn grant_options_merge_and_unknown_privileges_never_reach_sql() {
        let mut p = props();
        let item = |privilege: &str, grantable: bool, grantor: &str| AclItem {
            grantee: Some("app_reader".into()),
            grantor: grantor.into(),
            privilege: privilege.into(),
            grantable,
        };
        p.acl = Some(vec![
            item("CONNECT", false, "app_owner"),
            item("CONNECT", true, "someone"),
            item("CONNECT; DROP DATABASE x", false, "app_owner"),
        ]);
        let plan = plan_apply(&p, "t", "app", &OwnerChoice::Backup("app_owner".into()), false, &facts());
        assert_eq!(plan.expect_acl.get(&(Some("app_reader".into()), "CONNECT".into())), Some(&true));
        assert_eq!(plan.expect_acl.len(), 1);
        assert!(plan.acl.iter().all(|s| !s.sql.contains("DROP")), "{:?}", plan.acl);
        assert!(plan.skipped.iter().any(|s| s.reason == "not a database privilege"));
        assert!(plan.skipped.iter().any(|s| s.what.starts_with("grantor \"someone\"")));
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
        let diffs = compare(&p, Some(&p), &plan, &applied, "app_owner", &actual);
        assert_eq!(diffs.len(), 4, "{diffs:?}");
        assert!(diffs[0].contains("LC_COLLATE is \"en_US.UTF-8\""));
        assert!(diffs[1].starts_with("privileges are CONNECT to PUBLIC, expected"));
        assert!(diffs[2].contains("search_path"));
        assert!(diffs[3].starts_with("comment is None"));
        let mut same = p.clone();
        same.acl = Some(p.acl.clone().unwrap().into_iter().filter(|i| i.grantee.as_deref() != Some("gone")).collect());
        assert!(compare(&p, Some(&p), &plan, &applied, "app_owner", &same).is_empty());
        assert_eq!(compare(&p, Some(&p), &plan, &applied, "someone", &same).len(), 1);
        assert!(
            compare(&p, None, &plan, &applied, "app_owner", &{
                let mut other_locale = same.clone();
                other_locale.collate = "de_DE.UTF-8".into();
                other_locale
            })
            .is_empty(),
            "locale not applied: not compared"
        );
        // A NULL ACL is the defaults, however it is spelled.
        let mut p = props();
        p.acl = None;
        let plan = plan_apply(&p, "t", "app", &OwnerChoice::Backup("app_owner".into()), false, &facts());
        let mut explicit = p.clone();
        explicit.acl = Some(
            default_privileges("app_owner")
                .into_keys()
                .map(|(grantee, privilege)| AclItem {
                    grantee,
                    grantor: "app_owner".into(),
                    privilege,
                    grantable: false,
                })
                .collect(),
        );
        assert!(compare(&p, None, &plan, &[], "app_owner", &explicit).is_empty());
    }
}
