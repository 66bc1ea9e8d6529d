//! A restore gives back the whole database: its own properties (owner, privileges, settings,
//! comment), its encoding and locale, and it works for the least-privileged restore role or
//! says why before it starts. End to end on the local stack: PostgreSQL 15 and the newer major
//! from `.pgvault-local/pg`, Azurite over HTTPS with OAuth, the identity endpoint, and the real
//! `pgvault` binary.

#[path = "support/app.rs"]
mod app;
mod support;

use app::Stack;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use support::data::{blocking, databases_like, psql_blocking};
use support::{Cluster, ClusterOptions};

fn newer_bin() -> PathBuf {
    support::newer_bin_dir().expect("no PostgreSQL newer than 15 in .pgvault-local/pg: run scripts/setup")
}

/// Everything `pg_database` and `pg_db_role_setting` say about a database, minus its name and
/// oid: what a restore must reproduce.
fn props(c: &Cluster, db: &str) -> String {
    let lit = format!("'{}'", db.replace('\'', "''"));
    c.psql(
        "postgres",
        &format!(
            "SELECT format('owner=%s encoding=%s collate=%s ctype=%s connlimit=%s comment=%s', pg_get_userbyid(datdba), \
                    pg_encoding_to_char(encoding), datcollate, datctype, datconnlimit, \
                    coalesce(shobj_description(oid, 'pg_database'), '<none>')) \
             FROM pg_database WHERE datname = {lit} \
             UNION ALL \
             SELECT 'acl=' || coalesce((SELECT string_agg(x, ',' ORDER BY x) FROM (SELECT format('%s:%s:%s:%s', \
                    CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee)::text END, a.privilege_type, \
                    a.is_grantable, pg_get_userbyid(a.grantor)) AS x \
                    FROM pg_database d, aclexplode(d.datacl) a WHERE d.datname = {lit}) e), '<default>') \
             UNION ALL \
             (SELECT 'setting ' || coalesce(pg_get_userbyid(nullif(s.setrole, 0))::text, '*') || ' ' || \
                     array_to_string(s.setconfig, '|') \
              FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase WHERE d.datname = {lit} \
              ORDER BY 1)"
        ),
    )
}

/// psql as another login; `Err` carries psql's stderr.
fn connect_as(c: &Cluster, user: &str, db: &str, sql: &str) -> Result<String, String> {
    let out = Command::new(c.bin_dir.join("psql"))
        .env_clear()
        .env("PGCONNECT_TIMEOUT", "10")
        .args(["-X", "-At", "-h", &c.host, "-p", &c.port.to_string(), "-U", user, "-d", db, "-c", sql])
        .stdin(Stdio::null())
        .output()
        .expect("run psql");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// `pgvault ARGS`: (success, stdout, stderr).
fn cli(stack: &Stack, args: &[&str]) -> (bool, String, String) {
    let out = blocking(|| stack.cli(args));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn cli_ok(stack: &Stack, args: &[&str]) -> String {
    let (ok, stdout, stderr) = cli(stack, args);
    assert!(ok, "pgvault {args:?} failed:\n{stdout}\n{stderr}");
    stdout
}

/// A database hardened the way a careful DBA leaves it: its own owner, CONNECT and TEMPORARY
/// revoked from PUBLIC and granted to one role, database and per-role settings, a comment.
const HARDENED: &str = "CREATE ROLE app_owner; CREATE ROLE app_reader LOGIN; CREATE ROLE app_other LOGIN;
CREATE DATABASE appdb OWNER app_owner;
REVOKE CONNECT, TEMPORARY ON DATABASE appdb FROM PUBLIC;
GRANT CONNECT ON DATABASE appdb TO app_reader;
ALTER DATABASE appdb SET search_path = app, public;
ALTER DATABASE appdb SET statement_timeout = '5min';
ALTER ROLE app_reader IN DATABASE appdb SET work_mem = '8MB';
COMMENT ON DATABASE appdb IS 'the app''s database';";

/// The owner of table `app.t` and of the large objects.
const OWNERS: &str = "SELECT (SELECT tableowner FROM pg_tables WHERE tablename = 't') || ',' || \
                      (SELECT string_agg(pg_get_userbyid(lomowner)::text, ',') FROM pg_largeobject_metadata)";

const HARDENED_CONTENT: &str = "SET ROLE app_owner;
CREATE SCHEMA app; CREATE TABLE app.t (id int PRIMARY KEY, v text);
INSERT INTO app.t SELECT i, md5(i::text) FROM generate_series(1, 500) i;
GRANT USAGE ON SCHEMA app TO app_reader; GRANT SELECT ON app.t TO app_reader;";

fn harden(c: &Cluster) -> String {
    c.psql("postgres", HARDENED);
    c.psql("appdb", HARDENED_CONTENT);
    let p = props(c, "appdb");
    assert!(p.contains("acl=app_owner:CONNECT:f:app_owner,app_owner:CREATE:f:app_owner"), "{p}");
    assert!(!p.contains("PUBLIC"), "{p}");
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hardened_database_comes_back_whole_in_replace_and_into_a_newer_major() {
    let mut stack = Stack::start().await;
    let newer = newer_bin();
    let target = blocking(|| Cluster::start_with(ClusterOptions { bin_dir: newer.clone(), ..Default::default() }));
    assert!(target.version > 15);
    stack.set("PGVAULT_INVENTORY", &stack.inventory_with(&["postgres"], &[("new", &target)]));
    stack.set("PGVAULT_PG_BIN_DIRS", &format!("{}:{}", stack.pg.bin_dir.display(), newer.display()));
    let source = blocking(|| harden(&stack.pg));
    cli_ok(&stack, &["backup", "--server", "main"]);

    // The live database drifts after the backup: the replace must bring back the backup's
    // properties, and keep the old copy with its own.
    psql_blocking(
        &stack.pg,
        "postgres",
        "COMMENT ON DATABASE appdb IS 'live, changed'; GRANT CONNECT ON DATABASE appdb TO PUBLIC; \
         ALTER DATABASE appdb RESET statement_timeout;",
    );
    let live = blocking(|| props(&stack.pg, "appdb"));
    assert_ne!(live, source);
    let out = cli_ok(&stack, &["restore", "--server", "main", "--database", "appdb", "--mode", "replace"]);
    assert!(out.contains("the database's properties read back as planned"), "{out}");
    assert!(out.contains("applied: owner \"app_owner\""), "{out}");
    assert_eq!(
        blocking(|| props(&stack.pg, "appdb")),
        source,
        "replace: pg_database and pg_db_role_setting as in the backup"
    );
    let kept = blocking(|| databases_like(&stack.pg, "appdb\\_pre\\_restore\\_%"));
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(blocking(|| props(&stack.pg, &kept[0])), live, "the pre-restore copy keeps its own properties");

    // A role the source refused is refused by the restored copy; the one it let in still gets in,
    // with its settings.
    let refused = blocking(|| connect_as(&stack.pg, "app_other", "appdb", "SELECT 1")).unwrap_err();
    assert!(refused.contains("permission denied for database"), "{refused}");
    let shown = blocking(|| {
        connect_as(
            &stack.pg,
            "app_reader",
            "appdb",
            "SELECT current_setting('search_path') || ' ' || current_setting('work_mem') || ' ' || current_setting('statement_timeout') || ' ' || count(*) FROM app.t",
        )
    });
    assert_eq!(shown.unwrap(), "app, public 8MB 5min 500");

    // Into the newer major, with the roles from the globals backup.
    let out =
        cli_ok(&stack, &["restore", "--server", "main", "--database", "appdb", "--target-server", "new", "--globals"]);
    assert!(out.contains("the database's properties read back as planned"), "{out}");
    assert_eq!(blocking(|| props(&target, "appdb")), source, "PG15 -> PG{}: as in the backup", target.version);
    let refused = blocking(|| connect_as(&target, "app_other", "appdb", "SELECT 1")).unwrap_err();
    assert!(refused.contains("permission denied for database"), "{refused}");
    assert_eq!(blocking(|| connect_as(&target, "app_reader", "appdb", "SHOW work_mem")).unwrap(), "8MB");

    // The job record lists what was applied.
    let jobs: serde_json::Value =
        serde_json::from_str(&cli_ok(&stack, &["jobs", "--json", "--kind", "restore-task"])).unwrap();
    let applied: Vec<String> = jobs["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| {
            r["detail"]["report"]["database"]["properties"]["applied"].as_array().cloned().unwrap_or_default()
        })
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert!(applied.iter().any(|a| a == "comment"), "{applied:?}");
    assert!(applied.iter().any(|a| a.starts_with("setting work_mem=8MB for role \"app_reader\"")), "{applied:?}");
}

/// Encoding and locale fields of `pg_database`, the same on every version.
fn locale_fields(c: &Cluster, db: &str) -> String {
    let locale = if c.version >= 17 { "datlocale" } else { "daticulocale" };
    c.psql(
        "postgres",
        &format!(
            "SELECT concat_ws(' ', pg_encoding_to_char(encoding), datcollate, datctype, datlocprovider, {locale}) \
             FROM pg_database WHERE datname = '{db}'"
        ),
    )
}

const WORDS: &str = "SET client_encoding = 'UTF8'; CREATE TABLE words (w text);
INSERT INTO words VALUES ('apple'), ('Apple'), ('Äpfel'), ('zebra'), ('Zebra'), ('été'), ('ete'), ('Eta'), ('b');
CREATE UNIQUE INDEX ON words (w);";

fn order(c: &Cluster, db: &str) -> String {
    c.psql(db, "SET client_encoding = 'UTF8'; SELECT string_agg(w, ',' ORDER BY w) FROM words WHERE w > 'B'")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encoding_and_locale_come_back_and_a_target_without_the_locale_fails_cleanly() {
    let locales = support::pg::private_locale();
    let locpath = locales.path().display().to_string();
    let mut stack = Stack::start_with(|_| ClusterOptions {
        server_env: vec![("LOCPATH".into(), locpath.clone())],
        ..Default::default()
    })
    .await;
    let newer = newer_bin();
    let target = blocking(|| Cluster::start_with(ClusterOptions { bin_dir: newer.clone(), ..Default::default() }));
    stack.set("PGVAULT_INVENTORY", &stack.inventory_with(&["postgres"], &[("new", &target)]));
    stack.set("PGVAULT_PG_BIN_DIRS", &format!("{}:{}", stack.pg.bin_dir.display(), newer.display()));
    let created = [
        ("latin", "ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C'"),
        ("icu", "ENCODING 'UTF8' LOCALE_PROVIDER icu ICU_LOCALE 'de-DE' LC_COLLATE 'C' LC_CTYPE 'C'"),
        ("german", "ENCODING 'UTF8' LC_COLLATE 'de_DE.UTF-8' LC_CTYPE 'de_DE.UTF-8'"),
    ];
    for (db, how) in created {
        psql_blocking(&stack.pg, "postgres", &format!("CREATE DATABASE {db} TEMPLATE template0 {how}"));
        psql_blocking(&stack.pg, db, WORDS);
    }
    cli_ok(&stack, &["backup", "--server", "main"]);

    // LATIN1 with C collation: into the newer major, with the same fields and order.
    cli_ok(&stack, &["restore", "--server", "main", "--database", "latin", "--target-server", "new"]);
    assert_eq!(blocking(|| locale_fields(&target, "latin")), blocking(|| locale_fields(&stack.pg, "latin")));
    assert!(blocking(|| locale_fields(&target, "latin")).starts_with("LATIN1 C C c"));
    assert_eq!(blocking(|| order(&target, "latin")), blocking(|| order(&stack.pg, "latin")), "latin: ORDER BY");
    // ICU: into a server whose build has ICU (Debian's 15), with the same fields and order.
    cli_ok(&stack, &["restore", "--server", "main", "--database", "icu", "--target-database", "icu_copy"]);
    assert_eq!(blocking(|| locale_fields(&stack.pg, "icu_copy")), blocking(|| locale_fields(&stack.pg, "icu")));
    assert!(blocking(|| locale_fields(&stack.pg, "icu_copy")).ends_with(" i de-DE"));
    assert_eq!(blocking(|| order(&stack.pg, "icu_copy")), blocking(|| order(&stack.pg, "icu")), "icu: ORDER BY");
    // The newer major's build has no ICU: refused before anything is touched, with the reason.
    let (ok, stdout, _) = cli(&stack, &["restore", "--server", "main", "--database", "icu", "--target-server", "new"]);
    assert!(!ok);
    assert!(
        stdout.contains("locale provider icu") && stdout.contains("ICU is not supported in this build"),
        "{stdout}"
    );
    assert!(blocking(|| databases_like(&target, "icu")).is_empty(), "target untouched");

    // The newer cluster lacks de_DE.UTF-8: the restore fails before anything is touched, names
    // the locale and how to choose the target's defaults deliberately.
    let (ok, stdout, stderr) =
        cli(&stack, &["restore", "--server", "main", "--database", "german", "--target-server", "new"]);
    assert!(!ok);
    let text = format!("{stdout}{stderr}");
    assert!(text.contains("cannot create a database like the backup's"), "{text}");
    assert!(text.contains("LC_COLLATE \"de_DE.UTF-8\""), "{text}");
    assert!(text.contains("HINT: install the locale on server \"new\", or restore with --default-locale"), "{text}");
    assert!(!text.contains("options.default_locale"), "the CLI names its flags: {text}");
    assert!(blocking(|| databases_like(&target, "pgvault\\_restore\\_%")).is_empty(), "no temporary database left");
    assert!(blocking(|| databases_like(&target, "german")).is_empty(), "target untouched");

    // Where the locale exists, it comes back, and it is what decides the order.
    cli_ok(&stack, &["restore", "--server", "main", "--database", "german", "--target-database", "german_copy"]);
    let source_order = blocking(|| order(&stack.pg, "german"));
    assert_eq!(blocking(|| order(&stack.pg, "german_copy")), source_order);
    assert_eq!(blocking(|| locale_fields(&stack.pg, "german_copy")), blocking(|| locale_fields(&stack.pg, "german")));

    // Chosen deliberately: the target's defaults, said so in the report.
    let out = cli_ok(
        &stack,
        &["restore", "--server", "main", "--database", "german", "--target-server", "new", "--default-locale"],
    );
    assert!(
        out.contains(
            "not applied: encoding and locale (encoding UTF8, locale provider libc, LC_COLLATE \"de_DE.UTF-8\""
        ),
        "{out}"
    );
    assert!(out.contains("--default-locale was asked for"), "{out}");
    assert!(blocking(|| locale_fields(&target, "german")).starts_with("UTF8 C C"));
    assert_ne!(blocking(|| order(&target, "german")), source_order, "C order differs from de_DE's");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grant_sql_restore_role_restores_and_replaces_and_a_lesser_role_is_refused_up_front() {
    let mut stack = Stack::start().await;
    blocking(|| harden(&stack.pg));
    // A second role owns a large object: pg_restore gives it back to that role too.
    psql_blocking(&stack.pg, "postgres", "CREATE ROLE app_owner2");
    psql_blocking(&stack.pg, "appdb", "SET ROLE app_owner2; SELECT lo_from_bytea(0, '\\x01'::bytea)");
    // The documented role (a member of both owners), one that is a member of one owner only,
    // and one without membership. grant-sql runs before the backup, as in a deployment, so the
    // backup's privileges name the restore roles too.
    let grant = |role: &str, owners: &[&str]| {
        let mut args = vec!["grant-sql", "--restore", "--role", role, "--apply", "--server", "main"];
        for o in owners {
            args.extend(["--member-of", o]);
        }
        cli_ok(&stack, &args);
    };
    grant("pgvault_restore", &["app_owner", "app_owner2"]);
    grant("half_restore", &["app_owner"]);
    grant("weak_restore", &[]);
    let source = blocking(|| props(&stack.pg, "appdb"));
    assert!(source.contains("pgvault_restore:CONNECT:f:app_owner"), "{source}");
    cli_ok(&stack, &["backup", "--server", "main", "--database", "appdb"]);
    // A member of a superuser would be one: grant-sql refuses.
    let (ok, _, stderr) = cli(
        &stack,
        &["grant-sql", "--restore", "--role", "x_restore", "--member-of", "postgres", "--apply", "--server", "main"],
    );
    assert!(
        !ok && stderr.contains("a superuser or CREATEROLE role would give the restore role its powers"),
        "{stderr}"
    );
    let mut servers: Vec<serde_json::Value> = serde_json::from_str(&stack.inventory(&["postgres"])).unwrap();
    for (name, user) in [("as_restore", "pgvault_restore"), ("as_half", "half_restore"), ("as_weak", "weak_restore")] {
        let mut s = Stack::server_entry(name, &stack.pg);
        s["user"] = user.into();
        servers.push(s);
    }
    stack.set("PGVAULT_INVENTORY", &serde_json::Value::Array(servers).to_string());
    let restore = |target: &str, extra: &[&str]| {
        let mut args = vec!["restore", "--server", "main", "--database", "appdb", "--target-server", target];
        args.extend_from_slice(extra);
        cli(&stack, &args)
    };

    // create, as the role grant-sql made: the owner and privileges are applied, the restore
    // role's own CONNECT among them; the per-role setting needs CREATEROLE, so it is reported
    // as not applied, with the server's reason.
    let (ok, out, err) = restore("as_restore", &["--target-database", "appdb_copy"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("applied: owner \"app_owner\""), "{out}");
    assert!(out.contains("not applied: setting work_mem=8MB for role \"app_reader\": "), "{out}");
    let without_role_setting =
        |p: &str| p.lines().filter(|l| !l.starts_with("setting app_reader")).collect::<Vec<_>>().join("\n");
    assert_eq!(blocking(|| props(&stack.pg, "appdb_copy")), without_role_setting(&source));
    assert_eq!(blocking(|| stack.pg.psql("appdb_copy", OWNERS)), "app_owner,app_owner2", "objects keep their owners");

    // replace, as the same role, of the database app_owner owns.
    let (ok, out, err) = restore("as_restore", &["--mode", "replace"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("the database's properties read back as planned"), "{out}");
    assert_eq!(blocking(|| databases_like(&stack.pg, "appdb\\_pre\\_restore\\_%")).len(), 1);
    assert_eq!(without_role_setting(&blocking(|| props(&stack.pg, "appdb"))), without_role_setting(&source));

    // The lesser roles: refused before any work, with the way out, for create and for replace.
    let before = blocking(|| props(&stack.pg, "appdb"));
    let (ok, stdout, stderr) = restore("as_weak", &["--target-database", "appdb_weak"]);
    assert!(!ok);
    assert!(
        stdout.contains(
            "role \"weak_restore\" cannot give the restored database and its objects to \"app_owner\", \"app_owner2\""
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("HINT: GRANT \"app_owner\" TO \"weak_restore\"; GRANT \"app_owner2\" TO \"weak_restore\";"),
        "{stdout}"
    );
    assert!(stdout.contains("or restore with --no-owner"), "{stdout}");
    assert_eq!(stdout.lines().filter(|l| l.starts_with("FAILED")).count(), 1, "{stdout}");
    assert!(stderr.contains(" INFO "), "the logs are there: {stderr}");
    assert!(!stderr.contains("ERROR"), "a CLI failure is printed once, not logged again: {stderr}");
    assert!(!stderr.contains('\u{1b}'), "no colour codes off a terminal: {stderr:?}");
    // A member of the database's owner but not of every object's owner: refused up front too.
    let (ok, stdout, _) = restore("as_half", &["--target-database", "appdb_half"]);
    assert!(!ok);
    assert!(
        stdout.contains("role \"half_restore\" cannot give the restored database and its objects to \"app_owner2\""),
        "{stdout}"
    );
    let (ok, stdout, _) = restore("as_weak", &["--mode", "replace"]);
    assert!(!ok);
    assert!(
        stdout.contains(
            "role \"weak_restore\" cannot replace database \"appdb\" on server \"as_weak\": the database belongs to \
             \"app_owner\""
        ),
        "{stdout}"
    );
    assert!(blocking(|| databases_like(&stack.pg, "pgvault\\_restore\\_%")).is_empty(), "no work was started");
    assert!(blocking(|| databases_like(&stack.pg, "appdb\\_weak")).is_empty());
    assert!(blocking(|| databases_like(&stack.pg, "appdb\\_half")).is_empty());
    assert_eq!(blocking(|| props(&stack.pg, "appdb")), before, "the target is untouched");
    // The way out the HINT names works.
    let (ok, out, err) = restore("as_weak", &["--target-database", "appdb_weak", "--no-owner"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("not applied: owner \"app_owner\": not applied: --no-owner was asked for"), "{out}");
    assert!(blocking(|| props(&stack.pg, "appdb_weak")).starts_with("owner=weak_restore "));
    assert_eq!(blocking(|| stack.pg.psql("appdb_weak", OWNERS)), "weak_restore,weak_restore");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_errors_name_the_flags_and_are_printed_once() {
    let stack = Stack::start().await;
    psql_blocking(&stack.pg, "postgres", "CREATE DATABASE app");
    cli_ok(&stack, &["backup", "--server", "main", "--database", "app"]);
    let cases: [(&[&str], &str); 4] = [
        (&["--target-server", "nowhere"], "--target-server \"nowhere\" is not in the inventory"),
        (&["--mode", "as-files"], "--container is required by mode as-files"),
        (&["--mode", "as-files", "--container", "exports", "--expires-in", "5"], "--expires-in 5 is out of range"),
        (&["--backup", "main/app/nope"], "--backup \"main/app/nope\" is not a backup of database \"app\""),
    ];
    for (extra, want) in cases {
        let mut args = vec!["restore", "--server", "main", "--database", "app"];
        args.extend_from_slice(extra);
        let (ok, stdout, stderr) = cli(&stack, &args);
        assert!(!ok, "{args:?}");
        let text = format!("{stdout}{stderr}");
        assert!(text.contains(want), "{args:?}: {text}");
        for json_name in ["target.", "source.", "expires_in_seconds", "options."] {
            assert!(!text.contains(json_name), "{args:?} names a JSON field: {text}");
        }
        assert_eq!(text.matches(want).count(), 1, "printed once: {text}");
    }
    // --target-server defaults to --server: a create of a new name needs no more flags.
    cli_ok(&stack, &["restore", "--server", "main", "--database", "app", "--target-database", "app_again"]);
    assert_eq!(blocking(|| databases_like(&stack.pg, "app\\_again")), ["app_again"]);

    // A database the inventory leaves out is refused by `pgvault backup`, never a silent exit 0.
    let (ok, stdout, stderr) = cli(&stack, &["backup", "--server", "main", "--database", "postgres"]);
    assert!(!ok, "{stdout}");
    assert!(stderr.contains("database \"postgres\" of server \"main\" is excluded in the inventory"), "{stderr}");

    // A mistyped id is a usage error, not a failed verification that alerts.
    let out = blocking(|| stack.cli(&["verify", "main/app/20260101T000000Z-nope"]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("there is no backup \"main/app/20260101T000000Z-nope\""), "{stderr}");
    assert!(stderr.contains("HINT: `pgvault list` prints the backup ids"), "{stderr}");
    assert!(!stderr.contains("alert"), "{stderr}");
    let verify_records: serde_json::Value =
        serde_json::from_str(&cli_ok(&stack, &["jobs", "--json", "--kind", "verify"])).unwrap();
    assert_eq!(verify_records["jobs"], serde_json::json!([]), "a usage error leaves no record");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_whose_manifest_predates_the_properties_still_restores_and_says_what_it_did() {
    use pgvault::seams::store::BlobStore;
    let stack = Stack::start().await;
    blocking(|| harden(&stack.pg));
    cli_ok(&stack, &["backup", "--server", "main", "--database", "appdb"]);
    // Rewrite the manifest as an older pgvault wrote it: without database_properties.
    let store = stack.store().await;
    let m = support::data::manifests(&store, "main/appdb/").await.pop().unwrap();
    let name = format!("{}.manifest.json", m.id);
    let mut v: serde_json::Value = serde_json::from_slice(&store.get(&name).await.unwrap()).unwrap();
    assert!(v.as_object_mut().unwrap().remove("database_properties").is_some());
    store.delete(&name).await.unwrap();
    store.create(&name, serde_json::to_vec(&v).unwrap().into(), &Default::default()).await.unwrap();
    let live = blocking(|| props(&stack.pg, "appdb"));

    // replace: the replaced database's owner, privileges and settings, and a note saying so.
    let out = cli_ok(&stack, &["restore", "--server", "main", "--database", "appdb", "--mode", "replace"]);
    assert!(out.contains("the owner, privileges, settings and comment are the replaced database's"), "{out}");
    assert_eq!(blocking(|| props(&stack.pg, "appdb")), live, "not more open than the database it replaced");
    // create: nothing to go by; the defaults, said plainly.
    let out = cli_ok(&stack, &["restore", "--server", "main", "--database", "appdb", "--target-database", "appdb_old"]);
    assert!(out.contains("it has the default privileges, no settings and no comment"), "{out}");
    assert!(blocking(|| props(&stack.pg, "appdb_old")).contains("PUBLIC:CONNECT"), "the default privileges");
}
