//! `pgvault doctor` names what would fail before the schedule runs it, one check at a time, on
//! the local stack: PostgreSQL 15 (the source, with a locale of its own) and the newer major
//! from `.pgvault-local/pg` (a server newer than the configured tools, and a restore target
//! whose `azure.extensions` lacks `hstore` and which lacks the source's locale), Azurite over
//! HTTPS with OAuth, the identity endpoint, the Key Vault test server, and the real binary.
//! One stack for all: each check is run alone (`--server`, `--restore-target`) and asserted
//! with its finding and the exit status.

#[path = "support/app.rs"]
mod app;
mod support;

use app::Stack;
use serde_json::{Value, json};
use std::process::Output;
use support::data::{blocking, psql_blocking};
use support::webhook::Webhook;
use support::{Cluster, ClusterOptions, KeyVault};

fn cli(stack: &Stack, args: &[&str]) -> Output {
    blocking(|| stack.cli(args))
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// `pgvault doctor ARGS --json`: the exit code and the findings.
fn doctor(stack: &Stack, args: &[&str]) -> (i32, Vec<Value>) {
    let mut all = vec!["doctor", "--json"];
    all.extend_from_slice(args);
    let out = cli(stack, &all);
    let report: Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("doctor {args:?}: {e}: {}", text(&out)));
    (out.status.code().expect("exited"), report["findings"].as_array().unwrap().clone())
}

/// The findings of one check.
fn of<'a>(findings: &'a [Value], check: &str) -> Vec<&'a Value> {
    findings.iter().filter(|f| f["check"] == check).collect()
}

/// `<object>: <problem>` of each error finding.
fn errors(findings: &[Value]) -> Vec<String> {
    findings
        .iter()
        .filter(|f| f["severity"] == "error")
        .map(|f| format!("{}: {}", f["object"].as_str().unwrap(), f["problem"].as_str().unwrap()))
        .collect()
}

const SOURCE: &str = "CREATE EXTENSION hstore;
CREATE TABLE open_t (id int, h hstore); INSERT INTO open_t VALUES (1, 'a=>1');
CREATE TABLE hidden (id int); INSERT INTO hidden VALUES (1);
CREATE TABLE forced (id int, owner text); INSERT INTO forced VALUES (1, 'someone');
ALTER TABLE forced ENABLE ROW LEVEL SECURITY; ALTER TABLE forced FORCE ROW LEVEL SECURITY;
CREATE POLICY mine ON forced USING (owner = current_user);";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_names_each_problem_before_the_schedule_runs_into_it() {
    let locales = support::pg::private_locale();
    let locpath = locales.path().display().to_string();
    // TLS on (plain TCP still allowed) with the stack CA's leaf, valid for 30 days.
    let mut stack = Stack::start_with(|ca| ClusterOptions {
        server_env: vec![("LOCPATH".into(), locpath)],
        ssl: Some((ca.cert_path().to_path_buf(), ca.key_path().to_path_buf())),
        ..Default::default()
    })
    .await;
    let newer = support::newer_bin_dir().expect("no PostgreSQL newer than 15 in .pgvault-local/pg: run scripts/setup");
    let new = blocking(|| Cluster::start_with(ClusterOptions { bin_dir: newer.clone(), ..Default::default() }));
    // An Azure-like allow-list on the newer server, without hstore: a custom setting, here of
    // the database doctor connects to (read at connection start, so no reload to wait for).
    blocking(|| new.psql("postgres", "ALTER DATABASE postgres SET azure.extensions = 'pg_trgm,uuid-ossp'"));
    psql_blocking(&stack.pg, "postgres", "CREATE DATABASE app");
    psql_blocking(&stack.pg, "app", SOURCE);
    psql_blocking(
        &stack.pg,
        "postgres",
        "CREATE DATABASE german TEMPLATE template0 ENCODING 'UTF8' LC_COLLATE 'de_DE.UTF-8' LC_CTYPE 'de_DE.UTF-8'",
    );
    // The newest backups, taken by the admin: hstore in `app`, de_DE in `german`.
    let out = cli(&stack, &["backup", "--server", "main"]);
    assert!(out.status.success(), "{}", text(&out));

    // grant-sql --apply reports what its grants cannot give: the forced RLS table.
    let out = cli(&stack, &["grant-sql", "--role", "pgvault_backup", "--per-schema", "--apply", "--server", "main"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("applied: database app: grants applied"), "{t}");
    assert!(
        t.contains(
            "ERROR: table \"public\".\"forced\" in database \"app\" of server \"main\": the table forces row-level \
             security and its policies apply to the backup role \"pgvault_backup\": pg_dump would fail"
        ),
        "{t}"
    );
    assert!(t.contains("HINT: ALTER ROLE \"pgvault_backup\" BYPASSRLS;"), "{t}");
    assert!(!t.contains("checked: role"), "{t}");

    // Doctor as the backup role, which also lost SELECT on one table, and was never granted a
    // large object created after the grants.
    psql_blocking(&stack.pg, "app", "REVOKE SELECT ON hidden FROM pgvault_backup");
    let lo = psql_blocking(&stack.pg, "app", "SELECT lo_from_bytea(0, '\\x01'::bytea)");
    let mut main = Stack::server_entry("main", &stack.pg);
    main["user"] = json!("pgvault_backup");
    main["exclude"] = json!(["postgres"]);
    let inventory = json!([main, Stack::server_entry("new", &new)]).to_string();
    stack.set("PGVAULT_INVENTORY", &inventory);
    let webhook = Webhook::start().await;
    stack.set("PGVAULT_ALERT_WEBHOOK", &webhook.url);

    // A backup role without SELECT on one table.
    let (code, findings) = doctor(&stack, &["--server", "main"]);
    assert_eq!(code, 1, "{findings:#?}");
    let privileges = of(&findings, "table-privileges");
    assert_eq!(privileges.len(), 1, "{findings:#?}");
    assert_eq!(privileges[0]["object"], "table \"public\".\"hidden\" in database \"app\" of server \"main\"");
    assert_eq!(
        privileges[0]["problem"],
        "the backup role \"pgvault_backup\" cannot read it (no SELECT): pg_dump would fail"
    );
    assert!(privileges[0]["hint"].as_str().unwrap().starts_with("GRANT SELECT ON TABLE \"public\".\"hidden\""));
    // A table with forced row-level security.
    let rls = of(&findings, "row-level-security");
    assert_eq!(rls.len(), 1, "{findings:#?}");
    assert_eq!(rls[0]["object"], "table \"public\".\"forced\" in database \"app\" of server \"main\"");
    assert!(rls[0]["problem"].as_str().unwrap().starts_with("the table forces row-level security"), "{rls:?}");
    // A large object the role cannot read.
    let lobs = of(&findings, "large-objects");
    assert_eq!(lobs.len(), 1, "{findings:#?}");
    assert_eq!(lobs[0]["object"], "database \"app\" of server \"main\"");
    assert_eq!(
        lobs[0]["problem"],
        "the backup role \"pgvault_backup\" cannot read 1 large objects: pg_dump would fail"
    );
    assert_eq!(errors(&findings).len(), 3, "nothing else is wrong with server main: {findings:#?}");
    // Fixed, the same run finds nothing and exits 0 (the local stack's TLS-less server warns).
    psql_blocking(
        &stack.pg,
        "app",
        &format!(
            "GRANT SELECT ON hidden TO pgvault_backup; GRANT SELECT ON LARGE OBJECT {lo} TO pgvault_backup; \
             ALTER ROLE pgvault_backup BYPASSRLS"
        ),
    );
    let (code, findings) = doctor(&stack, &["--server", "main"]);
    assert_eq!((code, errors(&findings)), (0, vec![]), "{findings:#?}");
    assert!(of(&findings, "tls").iter().all(|f| f["severity"] == "warning"), "{findings:#?}");

    // TLS verify-full, with a certificate inside the 30-day window: a warning, and exit 0.
    let mut tls = Stack::server_entry("main-tls", &stack.pg);
    tls["tls"] = json!("verify-full");
    tls["exclude"] = json!(["postgres"]);
    stack.set("PGVAULT_INVENTORY", &json!([main, tls, Stack::server_entry("new", &new)]).to_string());
    let (code, findings) = doctor(&stack, &["--server", "main-tls"]);
    assert_eq!((code, errors(&findings)), (0, vec![]), "{findings:#?}");
    let expiry = of(&findings, "tls-expiry");
    assert_eq!(expiry.len(), 1, "{findings:#?}");
    assert_eq!(expiry[0]["severity"], "warning");
    assert_eq!(expiry[0]["object"], "server \"main-tls\"");
    assert!(
        expiry[0]["problem"].as_str().unwrap().starts_with("the server's TLS certificate expires in 29 days ("),
        "{expiry:?}"
    );
    assert!(of(&findings, "tls").is_empty(), "verify-full holds: {findings:#?}");

    // A server newer than every configured pg_dump: the upgrade trap.
    let (code, findings) = doctor(&stack, &["--server", "new"]);
    assert_eq!(code, 1, "{findings:#?}");
    let trap = of(&findings, "pg-dump-version");
    assert_eq!(trap.len(), 1, "{findings:#?}");
    assert_eq!(trap[0]["object"], "server \"new\"");
    let problem = trap[0]["problem"].as_str().unwrap();
    assert!(
        problem.starts_with(&format!("the server runs PostgreSQL {}.", new.version))
            && problem.contains("newer than every configured pg_dump: no pg_dump of PostgreSQL")
            && problem.contains("found: 15 (/usr/lib/postgresql/15/bin/pg_dump)"),
        "{problem}"
    );
    assert!(trap[0]["hint"].as_str().unwrap().contains("PGVAULT_PG_BIN_DIRS"), "{trap:?}");
    assert_eq!(errors(&findings).len(), 1, "{findings:#?}");

    // A restore target whose azure.extensions lacks hstore, and without the source's locale.
    let (code, findings) = doctor(&stack, &["--server", "main", "--restore-target", "new"]);
    assert_eq!(code, 1, "{findings:#?}");
    let refused: Vec<&Value> = of(&findings, "extensions")
        .into_iter()
        .filter(|f| f["problem"].as_str().unwrap().contains("azure.extensions"))
        .collect();
    assert_eq!(refused.len(), 1, "{findings:#?}");
    assert!(refused[0]["object"].as_str().unwrap().starts_with("restore target \"new\" for backup \"main/app/"));
    assert_eq!(
        refused[0]["problem"],
        "extension \"hstore\" is not allowed by the server's azure.extensions (\"pg_trgm,uuid-ossp\"): the restore \
         would fail at CREATE EXTENSION"
    );
    assert!(refused[0]["hint"].as_str().unwrap().starts_with("add hstore to the server parameter azure.extensions"));
    let locale = of(&findings, "locale");
    assert_eq!(locale.len(), 1, "only german's locale is missing: {findings:#?}");
    assert!(locale[0]["object"].as_str().unwrap().starts_with("restore target \"new\" for backup \"main/german/"));
    let problem = locale[0]["problem"].as_str().unwrap();
    assert!(
        problem.starts_with("the server cannot create a database like the backup's (encoding UTF8, locale provider libc, LC_COLLATE \"de_DE.UTF-8\"")
            && problem.contains("de_DE.UTF-8"),
        "{problem}"
    );
    assert!(locale[0]["hint"].as_str().unwrap().contains("--default-locale"));
    assert!(
        blocking(|| new.psql("postgres", "SELECT count(*) FROM pg_database WHERE datname LIKE 'pgvault\\_doctor\\_%'"))
            == "0",
        "the locale probe leaves no database"
    );

    // Key Vault: the login secret and the encryption key, then a revoked role (403).
    let kv = KeyVault::start(&stack.ca);
    kv.set_secret(
        "pg-main",
        &format!("host=127.0.0.1 port={} user=postgres password=x sslmode=disable", stack.pg.port),
    );
    kv.create_key("backup-key");
    let vaulted = json!({
        "name": "vaulted", "host": stack.pg.host, "port": stack.pg.port, "user": "nobody", "exclude": ["postgres"],
        "credentials": {"key_vault": {"vault": kv.url, "secret": "pg-main"}},
    });
    stack.set("PGVAULT_INVENTORY", &json!([main, vaulted, Stack::server_entry("new", &new)]).to_string());
    stack.set("PGVAULT_ENCRYPTION_KEY", &kv.key_id("backup-key"));
    let (code, findings) = doctor(&stack, &["--server", "vaulted"]);
    assert_eq!((code, errors(&findings)), (0, vec![]), "{findings:#?}");
    kv.set_forbidden(true);
    let (code, findings) = doctor(&stack, &["--server", "vaulted"]);
    assert_eq!(code, 1, "{findings:#?}");
    let secret = of(&findings, "key-vault-secret");
    assert_eq!(secret.len(), 1, "{findings:#?}");
    assert_eq!(
        secret[0]["object"],
        format!("secret \"pg-main\" in vault \"{}\" (server \"vaulted\"'s login)", kv.url).as_str()
    );
    assert!(secret[0]["problem"].as_str().unwrap().contains("access denied (http 403 ForbiddenByRbac)"), "{secret:?}");
    let key = of(&findings, "encryption-key");
    assert_eq!(key.len(), 1, "{findings:#?}");
    assert!(key[0]["problem"].as_str().unwrap().contains("http 403"), "{key:?}");

    // The text form: each finding with its HINT, and the exit status.
    let out = cli(&stack, &["doctor", "--server", "vaulted"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("ERROR: secret \"pg-main\" in vault"), "{t}");
    assert!(t.contains("doctor: 2 errors"), "{t}");
    assert!(!t.contains("password=x"), "no secret in the output: {t}");

    // The timer: a `doctor` record with the findings, failed, and one `doctor` alert.
    let served = stack.serve();
    let (status, reply) = served.invoke("doctor", &pgvault::cli::hostsim::timer_payload("doctor", false)).await;
    assert_eq!(status, 200, "{reply}");
    let out = cli(&stack, &["jobs", "--json", "--kind", "doctor"]);
    let jobs: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    let records = jobs["jobs"].as_array().unwrap();
    assert_eq!(records.len(), 1, "{jobs}");
    assert_eq!(records[0]["status"], "failed");
    assert_eq!(records[0]["trigger"], "timer");
    let recorded = records[0]["detail"]["findings"].as_array().unwrap();
    assert!(recorded.iter().any(|f| f["check"] == "key-vault-secret" && f["severity"] == "error"), "{jobs}");
    assert!(recorded.iter().any(|f| f["check"] == "pg-dump-version"), "{jobs}");
    let hits = webhook.hits();
    assert_eq!(hits.len(), 1, "{hits:?}");
    assert_eq!(hits[0]["kind"], "doctor");
    assert!(hits[0]["summary"].as_str().unwrap().contains("doctor found"), "{hits:?}");
    drop(locales);
}
