//! Identity and secrets on the local stack: every Azure credential through the managed-identity
//! endpoint, database credentials from the Key Vault server, Entra tokens as passwords,
//! verified TLS to PostgreSQL, the least-privilege roles of `grant-sql`, and no secret in any
//! output. The real `pgvault` binary runs as the Functions host runs it.

#[path = "support/app.rs"]
mod app;
mod support;

use app::Stack;
use base64::Engine;
use pgvault::cli::hostsim::{self, Form};
use pgvault::domain::jobs::{BACKUP_JOBS_QUEUE, BackupJob, Trigger};
use pgvault::domain::layout::BackupKind;
use pgvault::domain::manifest::Manifest;
use pgvault::seams::credentials::CloudSecrets;
use pgvault::seams::queue::JobQueue;
use pgvault::seams::store::BlobStore;
use serde_json::{Value, json};
use std::process::{Command, Output};
use support::pg::TEST_PASSWORD;
use support::{Cluster, ClusterOptions, KeyVault, TestCa};

const STORAGE: &str = "https://storage.azure.com";
const VAULT: &str = "https://vault.azure.net";
const OSSRDBMS: &str = "https://ossrdbms-aad.database.windows.net";

/// A cluster that speaks TLS with `cert`, refuses plain-text TCP, and wants passwords.
fn tls_cluster(cert: (std::path::PathBuf, std::path::PathBuf), extra_hba: &[&str]) -> ClusterOptions {
    let mut hba = vec!["hostnossl all all 127.0.0.1/32 reject".to_string()];
    hba.extend(extra_hba.iter().map(|s| s.to_string()));
    ClusterOptions { ssl: Some(cert), hba, password_auth: true, ..ClusterOptions::default() }
}

async fn kv_stack(extra_hba: &[&str]) -> (Stack, KeyVault) {
    let hba: Vec<String> = extra_hba.iter().map(|s| s.to_string()).collect();
    let stack = Stack::start_with(move |ca| {
        let hba: Vec<&str> = hba.iter().map(String::as_str).collect();
        tls_cluster((ca.cert_path().to_path_buf(), ca.key_path().to_path_buf()), &hba)
    })
    .await;
    let kv = KeyVault::start(&stack.ca);
    (stack, kv)
}

fn psql(stack: &Stack, db: &str, sql: &str) -> String {
    tokio::task::block_in_place(|| stack.pg.psql(db, sql))
}

/// psql as another role over TCP (TLS when the server offers it), with an optional password.
fn psql_as(cluster: &Cluster, user: &str, password: Option<&str>, db: &str, sql: &str) -> Result<String, String> {
    let mut cmd = Command::new(cluster.bin_dir.join("psql"));
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("PGCONNECT_TIMEOUT", "10")
        .args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .args(["-h", &cluster.host, "-p", &cluster.port.to_string(), "-U", user, "-d", db]);
    match password {
        Some(pw) => cmd.env("PGPASSWORD", pw),
        None => cmd.arg("--no-password"),
    };
    let out = tokio::task::block_in_place(|| cmd.output().expect("run psql"));
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn cli(stack: &Stack, args: &[&str]) -> Output {
    tokio::task::block_in_place(|| stack.cli(args))
}

fn kv_server(stack: &Stack, name: &str, kv: &KeyVault, secret: &str) -> Value {
    json!({
        "name": name,
        "host": stack.pg.host,
        "port": stack.pg.port,
        "user": "not-this-role",
        "exclude": ["postgres"],
        "credentials": {"key_vault": {"vault": kv.url, "secret": secret}},
    })
}

async fn manifests(store: &dyn BlobStore, prefix: &str) -> Vec<Manifest> {
    let mut out = Vec::new();
    for b in store.list(prefix).await.unwrap() {
        if b.name.ends_with(".manifest.json") {
            out.push(Manifest::from_json(&b.name, &store.get(&b.name).await.unwrap()).unwrap());
        }
    }
    out
}

/// A JWT as long as a real Entra token with group claims (about 2.6 KB), which the identity
/// server will hand out for the PostgreSQL resource.
fn long_entra_token() -> String {
    let enc = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let groups: Vec<String> = (0..45).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    let claims = json!({
        "aud": OSSRDBMS, "iss": format!("https://sts.windows.net/{}/", support::identity::TEST_TENANT_ID),
        "iat": now - 60, "nbf": now - 60, "exp": now + 3600, "oid": support::identity::TEST_OBJECT_ID,
        "tid": support::identity::TEST_TENANT_ID, "groups": groups,
    });
    format!("{}.{}.{}", enc(&json!({"typ": "JWT", "alg": "RS256"})), enc(&claims), "c2lnbmF0dXJlLW5vdC12ZXJpZmllZA")
}

// ---- the Key Vault server speaks the contract the official client expects ---------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_vault_server_follows_the_contract_of_the_official_client() {
    use azure_security_keyvault_secrets::models::SetSecretParameters;
    use azure_security_keyvault_secrets::{SecretClient, SecretClientOptions};
    let ca = TestCa::new();
    let kv = KeyVault::start(&ca);
    let options =
        pgvault::azure::client_options(Some(ca.ca_pem_path()), &pgvault::azure::RetrySettings::none()).unwrap();
    let client = SecretClient::new(
        &kv.url,
        support::test_credential(),
        Some(SecretClientOptions {
            client_options: options.clone(),
            verify_challenge_resource: Some(false),
            ..Default::default()
        }),
    )
    .unwrap();
    // PUT through the SDK, then read the latest and a pinned version.
    let params = SetSecretParameters { value: Some("v1".into()), ..Default::default() };
    let first = client.set_secret("db", params.try_into().unwrap(), None).await.unwrap().into_model().unwrap();
    let v1 = first.id.unwrap().rsplit('/').next().unwrap().to_string();
    assert_eq!(v1.len(), 32);
    let v2 = kv.set_secret("db", "v2");
    let latest = client.get_secret("db", None).await.unwrap().into_model().unwrap();
    assert_eq!(latest.value.as_deref(), Some("v2"));
    assert!(latest.id.unwrap().ends_with(&format!("/secrets/db/{v2}")));
    let opts = azure_security_keyvault_secrets::models::SecretClientGetSecretOptions {
        secret_version: Some(v1.clone()),
        ..Default::default()
    };
    let old = client.get_secret("db", Some(opts)).await.unwrap().into_model().unwrap();
    assert_eq!(old.value.as_deref(), Some("v1"));
    // The first request carried no token and got the challenge; every later one was authorized.
    let log = kv.requests();
    assert_eq!((log[0].status, log[0].authorized), (401, false), "{log:?}");
    assert!(log[1..].iter().all(|r| r.authorized), "{log:?}");
    assert!(
        log.iter().any(|r| r.path.starts_with("/secrets/db/?api-version=")),
        "latest is read with a slash: {log:?}"
    );

    // The same through pgvault's adapter: values, attributes, and the errors.
    let adapter = pgvault::azure::AzureCloudSecrets::new(support::test_credential(), options);
    let s = adapter.key_vault_secret(&kv.url, "db").await.unwrap();
    assert_eq!((s.value.expose(), s.version.as_str(), s.enabled), ("v2", v2.as_str(), true));
    let exp = time::OffsetDateTime::now_utc() - time::Duration::minutes(1);
    kv.set_expires("db", Some(exp));
    let s = adapter.key_vault_secret(&kv.url, "db").await.unwrap();
    assert_eq!(s.expires.map(|t| t.unix_timestamp()), Some(exp.unix_timestamp()), "expired secrets are returned");
    kv.set_enabled("db", false);
    let e = adapter.key_vault_secret(&kv.url, "db").await.unwrap_err();
    assert!(e.to_string().contains(&format!("Key Vault {} secret \"db\": the secret is disabled", kv.url)), "{e}");
    let e = adapter.key_vault_secret(&kv.url, "nope").await.unwrap_err();
    assert!(e.to_string().contains("secret \"nope\": the secret does not exist (http 404 SecretNotFound)"), "{e}");
    kv.set_forbidden(true);
    let e = adapter.key_vault_secret(&kv.url, "db").await.unwrap_err();
    assert!(e.is_permanent());
    assert!(e.to_string().contains("access denied (http 403 ForbiddenByRbac)"), "{e}");
    assert!(e.to_string().contains("Key Vault Secrets User"), "{e}");
    assert!(!e.to_string().contains("v1") && !e.to_string().contains("v2"), "{e}");
    // A vault whose certificate is not trusted fails fast and says so.
    let other = TestCa::new();
    let untrusted = KeyVault::start(&other);
    let e = adapter.key_vault_secret(&untrusted.url, "db").await.unwrap_err();
    assert!(e.is_permanent() && e.to_string().contains("TLS certificate is not trusted"), "{e}");
}

// ---- a full backup where every credential comes through identity and Key Vault ----------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_backup_gets_every_credential_from_the_identity_endpoint_and_key_vault() {
    let (mut stack, kv) = kv_stack(&[]).await;
    let password = "Vault-Only_pw.7f3a~x";
    psql(
        &stack,
        "postgres",
        &format!("CREATE ROLE kv_backup LOGIN SUPERUSER PASSWORD '{password}'; CREATE DATABASE appdb"),
    );
    psql(&stack, "appdb", "CREATE TABLE t AS SELECT i, md5(i::text) AS h FROM generate_series(1, 5000) i");
    kv.set_secret(
        "pg-main",
        &format!("postgresql://kv_backup:{password}@{}:{}/postgres?sslmode=verify-full", stack.pg.host, stack.pg.port),
    );
    stack.set("PGVAULT_INVENTORY", &json!([kv_server(&stack, "main", &kv, "pg-main")]).to_string());
    // No other path could supply the password: the server wants one and none is configured.
    assert!(psql_as(&stack.pg, "kv_backup", None, "appdb", "select 1").is_err());

    let served = stack.serve();
    let (status, reply) = served.invoke("backup-scheduler", &hostsim::timer_payload("backup-scheduler", false)).await;
    assert_eq!(status, 200, "{reply}\n{}", served.output());
    let report = stack.drain(&served, BACKUP_JOBS_QUEUE).await;
    assert_eq!(report.succeeded, 2, "appdb and the globals: {:?}\n{}", report.replies, served.output());

    let store = stack.store().await;
    let found = manifests(&store, "main/appdb/").await;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].row_counts.as_ref().unwrap().tables[0].rows, 5000);
    assert_eq!(manifests(&store, "main/@globals/").await.len(), 1);

    // And a restore, posted on the queue: the same credentials, from the same two servers.
    let request = json!({
        "version": 1, "request_id": "kv-restore-1", "requested_by": "identity_secrets",
        "source": { "server": "main", "database": "appdb", "backup": "latest" },
        "target": { "mode": "create", "server": "main", "database": "appdb_restored" },
        "options": {}
    });
    stack.queue().send(pgvault::features::restore::RESTORE_REQUESTS_QUEUE, &request.to_string(), false).await.unwrap();
    let planned = stack.drain(&served, pgvault::features::restore::RESTORE_REQUESTS_QUEUE).await;
    assert_eq!(planned.succeeded, 1, "{:?}", planned.replies);
    let restored = stack.drain(&served, pgvault::features::restore::RESTORE_TASKS_QUEUE).await;
    assert_eq!(restored.replies[0]["reply"]["ReturnValue"]["status"], "succeeded", "{:?}", restored.replies);
    assert_eq!(psql(&stack, "appdb_restored", "SELECT count(*) FROM t"), "5000");

    let resources = stack.identity.resources();
    assert!(resources.iter().any(|r| r == STORAGE), "storage (blob and queue) tokens: {resources:?}");
    assert!(resources.iter().any(|r| r == VAULT), "vault token: {resources:?}");
    // The scheduler, each of the two jobs and the restore read the secret: nothing is cached.
    assert!(kv.reads("pg-main") >= 4, "{:?}", kv.requests());
    assert!(
        kv.tokens().iter().all(|t| stack.identity.issued_tokens().contains(t)),
        "vault tokens came from the endpoint"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_secret_takes_effect_on_the_next_job() {
    let (mut stack, kv) = kv_stack(&[]).await;
    psql(&stack, "postgres", "CREATE ROLE rotating LOGIN SUPERUSER PASSWORD 'First-Pw-1111'; CREATE DATABASE appdb");
    psql(&stack, "appdb", "CREATE TABLE t AS SELECT 1 AS i");
    let (host, port) = (stack.pg.host.clone(), stack.pg.port);
    let conn = |pw: &str| format!("host={host} port={port} user=rotating password={pw}");
    kv.set_secret("pg-main", &conn("First-Pw-1111"));
    stack.set("PGVAULT_INVENTORY", &json!([kv_server(&stack, "main", &kv, "pg-main")]).to_string());
    let backup = ["backup", "--server", "main", "--database", "appdb"];

    let out = cli(&stack, &backup);
    assert!(out.status.success(), "{}", text(&out));

    // The DBA changes the role's password first: the next job fails cleanly, naming the role.
    psql(&stack, "postgres", "ALTER ROLE rotating PASSWORD 'Second-Pw-2222'");
    let out = cli(&stack, &backup);
    let t = text(&out);
    assert!(!out.status.success());
    assert!(t.contains("authentication failed for role \"rotating\""), "{t}");
    assert!(!t.contains("First-Pw-1111") && !t.contains("Second-Pw-2222"), "{t}");

    // Then stores the new version in Key Vault: the next job uses it, without a restart.
    kv.set_secret("pg-main", &conn("Second-Pw-2222"));
    let out = cli(&stack, &backup);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        psql_as(&stack.pg, "rotating", Some("First-Pw-1111"), "appdb", "select 1").is_err(),
        "old password is dead"
    );
    assert_eq!(manifests(&stack.store().await, "main/appdb/").await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_errors_name_vault_and_secret_never_the_value() {
    let (mut stack, kv) = kv_stack(&[]).await;
    psql(&stack, "postgres", "CREATE DATABASE appdb");
    let value =
        |n: u32| format!("postgresql://postgres:{TEST_PASSWORD}@{}:{}/x#VALUE-{n}", stack.pg.host, stack.pg.port);
    let now = time::OffsetDateTime::now_utc();
    kv.set_secret("pg-disabled", &value(1));
    kv.set_enabled("pg-disabled", false);
    kv.set_secret("pg-expired", &value(2));
    kv.set_expires("pg-expired", Some(now - time::Duration::hours(1)));
    kv.set_secret("pg-early", &value(3));
    kv.set_not_before("pg-early", Some(now + time::Duration::hours(1)));
    kv.set_secret("pg-garbled", "this is VALUE-4 and no connection string");
    kv.set_secret("pg-ok", &format!("host={} user=postgres password={TEST_PASSWORD}", stack.pg.host));
    let cases = [
        ("missing", "pg-missing", "the secret does not exist"),
        ("disabled", "pg-disabled", "the secret is disabled"),
        ("expired", "pg-expired", "the secret expired at"),
        ("early", "pg-early", "the secret is not valid before"),
        ("garbled", "pg-garbled", "is not a postgresql:// URI"),
    ];
    let mut inventory: Vec<Value> = cases.iter().map(|(s, secret, _)| kv_server(&stack, s, &kv, secret)).collect();
    inventory.push(kv_server(&stack, "ok", &kv, "pg-ok"));
    stack.set("PGVAULT_INVENTORY", &Value::Array(inventory).to_string());

    let out = cli(&stack, &["backup"]);
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    for (server, secret, why) in cases {
        let line = t
            .lines()
            .find(|l| l.starts_with(&format!("FAILED server {server}:")))
            .unwrap_or_else(|| panic!("no failure for {server}:\n{t}"));
        assert!(line.contains(&format!("Key Vault {} secret \"{secret}\"", kv.url)), "{line}");
        assert!(line.contains(why), "{why}: {line}");
    }
    assert!(t.contains("ok ok/appdb/"), "the healthy server is still backed up: {t}");
    assert!(!t.contains("VALUE-") && !t.contains(TEST_PASSWORD), "{t}");

    // 403: the identity lacks the role on the vault.
    kv.set_forbidden(true);
    let out = cli(&stack, &["backup", "--server", "ok"]);
    let t = text(&out);
    assert!(
        t.contains(&format!("Key Vault {} secret \"pg-ok\": access denied (http 403 ForbiddenByRbac)", kv.url)),
        "{t}"
    );
    assert!(t.contains("HINT: grant the function's identity the Key Vault Secrets User role"), "{t}");
    assert!(!t.contains(TEST_PASSWORD), "{t}");
    kv.set_forbidden(false);

    // Through the worker: a permanent error, so the message is kept with its reason, not retried.
    let served = stack.serve();
    let job = BackupJob::new(BackupKind::Database, "disabled", Some("appdb"), now, Trigger::Queue);
    let payload = hostsim::queue_payload("backup-worker", "job", &job.to_json(), "m1", "p1", 1, Form::Host);
    let (status, reply) = served.invoke("backup-worker", &payload).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["ReturnValue"]["status"], "rejected", "{reply}");
    let reason = reply["ReturnValue"]["reason"].as_str().unwrap();
    assert!(reason.contains("secret \"pg-disabled\": the secret is disabled"), "{reason}");
    assert!(!reply.to_string().contains("VALUE-") && !served.output().contains("VALUE-"));
}

// ---- TLS to PostgreSQL ------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_verify_full_accepts_the_trusted_ca_and_rejects_a_wrong_name_or_an_untrusted_ca() {
    let mut stack = Stack::start().await;
    let other_ca = TestCa::new();
    let wrong_name = stack.ca.issue_leaf(&["wrong.example"]);
    let good_cert = (stack.ca.cert_path().to_path_buf(), stack.ca.key_path().to_path_buf());
    let untrusted_cert = (other_ca.cert_path().to_path_buf(), other_ca.key_path().to_path_buf());
    let clusters = tokio::task::spawn_blocking(move || {
        [good_cert, wrong_name, untrusted_cert].map(|cert| Cluster::start_with(ClusterOptions::tls_only(cert)))
    })
    .await
    .unwrap();
    for c in &clusters {
        tokio::task::block_in_place(|| c.psql("postgres", "CREATE DATABASE tlsdb"));
    }
    let kv = KeyVault::start(&stack.ca);
    let server = |name: &str, c: &Cluster| json!({"name": name, "host": c.host, "port": c.port, "user": "postgres", "include": ["tlsdb"]});
    let mut relaxed = server("relaxed", &clusters[1]);
    relaxed["credentials"] = json!({"key_vault": {"vault": kv.url, "secret": "pg-relaxed"}});
    kv.set_secret("pg-relaxed", &format!("host={} user=postgres password=unused sslmode=verify-ca", clusters[1].host));
    let inventory = json!([
        server("trusted", &clusters[0]),
        server("wrongname", &clusters[1]),
        server("untrusted", &clusters[2]),
        relaxed,
    ]);
    stack.set("PGVAULT_INVENTORY", &inventory.to_string());

    let out = cli(&stack, &["backup"]);
    let t = text(&out);
    assert!(t.contains("ok trusted/tlsdb/"), "pgvault and pg_dump both verify the full chain and name: {t}");
    let line = |server: &str| {
        t.lines()
            .find(|l| l.starts_with(&format!("FAILED server {server}:")))
            .unwrap_or_else(|| panic!("{server}: {t}"))
            .to_string()
    };
    let wrong = line("wrongname");
    assert!(wrong.contains("TLS certificate rejected") && wrong.contains("not valid for name"), "{wrong}");
    let untrusted = line("untrusted");
    assert!(untrusted.contains("TLS certificate rejected") && untrusted.contains("UnknownIssuer"), "{untrusted}");
    assert!(t.contains("HINT: trust the server's CA with PGVAULT_CA_FILE"), "{t}");
    // sslmode=verify-ca in the Key Vault connection string is honoured by pgvault and by pg_dump
    // (PGSSLMODE), so the wrong name passes there, with a warning.
    assert!(t.contains("ok relaxed/tlsdb/"), "{t}");
    assert!(t.contains("TLS to PostgreSQL is not verify-full") && t.contains("verify-ca"), "{t}");
    assert!(!out.status.success());
}

// ---- Entra: the identity's token is the password ------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entra_token_is_the_password_over_tls() {
    let mut stack = Stack::start_with(|ca| {
        tls_cluster(
            (ca.cert_path().to_path_buf(), ca.key_path().to_path_buf()),
            &["hostssl all entra_app 127.0.0.1/32 password"],
        )
    })
    .await;
    let token = long_entra_token();
    assert!(token.len() > 2500, "as long as a real token with groups: {}", token.len());
    stack.identity.pin_token(OSSRDBMS, &token);
    psql(
        &stack,
        "postgres",
        &format!("CREATE ROLE entra_app LOGIN SUPERUSER PASSWORD '{token}'; CREATE DATABASE appdb"),
    );
    psql(&stack, "appdb", "CREATE TABLE t AS SELECT i FROM generate_series(1, 10) i");
    let inventory = json!([{"name": "main", "host": stack.pg.host, "port": stack.pg.port, "user": "entra_app",
                            "credentials": "entra", "exclude": ["postgres"]}]);
    stack.set("PGVAULT_INVENTORY", &inventory.to_string());

    let out = cli(&stack, &["backup", "--server", "main"]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("ok main/appdb/") && t.contains("ok main/@globals/"), "{t}");
    assert!(stack.identity.resources().iter().any(|r| r == OSSRDBMS), "{:?}", stack.identity.resources());
    assert!(!t.contains(&token[token.len() - 40..]), "{t}");

    // Another identity's token is refused, and says so without printing the token.
    let impostor = support::mint_jwt(OSSRDBMS);
    stack.identity.pin_token(OSSRDBMS, &impostor);
    let out = cli(&stack, &["backup", "--server", "main"]);
    let t = text(&out);
    assert!(!out.status.success());
    assert!(t.contains("authentication failed for role \"entra_app\""), "{t}");
    assert!(!t.contains(impostor.split('.').nth(1).unwrap()), "{t}");
}

// ---- least privilege ----------------------------------------------------------------------------

const LP_DATA: &str = "
CREATE SCHEMA sales;
CREATE TABLE sales.orders (id bigserial PRIMARY KEY, amount numeric);
INSERT INTO sales.orders (amount) SELECT i FROM generate_series(1, 300) i;
CREATE VIEW sales.big AS SELECT * FROM sales.orders WHERE amount > 100;
CREATE TABLE public.events (at timestamptz DEFAULT now(), n int);
INSERT INTO public.events (n) SELECT i FROM generate_series(1, 50) i;
CREATE TABLE public.blobs (name text, lo oid);
INSERT INTO public.blobs SELECT 'x', lo_from_bytea(0, 'large object bytes');
";

/// Relations in `db` that `role` could write to in any way.
fn writable(stack: &Stack, db: &str, role: &str) -> String {
    psql(
        stack,
        db,
        &format!(
            "SELECT coalesce(string_agg(format('%I.%I', n.nspname, c.relname), ','), '') FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r','p','v','m','S','f') \
             AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
             AND has_table_privilege('{role}', c.oid, 'INSERT,UPDATE,DELETE,TRUNCATE,REFERENCES,TRIGGER')"
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grant_sql_backup_role_backs_up_and_cannot_write() {
    let mut stack = Stack::start().await;
    psql(&stack, "postgres", "CREATE DATABASE appdb; CREATE DATABASE other");
    psql(&stack, "appdb", LP_DATA);
    psql(&stack, "other", "CREATE TABLE t AS SELECT 1 AS i");

    let out = cli(&stack, &["grant-sql", "--role", "pgvault_backup"]);
    let script = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{}", text(&out));
    assert!(script.contains("pg_read_all_data") && script.contains("GRANT SELECT ON LARGE OBJECT"), "{script}");
    let sql: String = script.lines().filter(|l| !l.starts_with("--")).collect();
    assert!(!sql.contains("INSERT") && !sql.contains("UPDATE") && !sql.contains("DELETE"), "{script}");

    let admin_inventory = stack.inventory(&["postgres"]);
    for (role, extra) in [("pgvault_backup", None), ("pgvault_backup_ps", Some("--per-schema"))] {
        stack.set("PGVAULT_INVENTORY", &admin_inventory);
        let mut args = vec!["grant-sql", "--role", role, "--apply", "--server", "main"];
        args.extend(extra);
        let out = cli(&stack, &args);
        let t = text(&out);
        assert!(out.status.success(), "{t}");
        assert!(t.contains("applied: database appdb") && t.contains("applied: database other"), "{t}");
        if extra.is_some() {
            // A table created after the grants is readable through the default privileges.
            psql(&stack, "appdb", "CREATE TABLE sales.later AS SELECT 7 AS n");
        }

        let inventory =
            stack.inventory(&["postgres"]).replace("\"user\":\"postgres\"", &format!("\"user\":\"{role}\""));
        assert!(inventory.contains(role));
        stack.set("PGVAULT_INVENTORY", &inventory);
        let out = cli(&stack, &["backup", "--server", "main"]);
        let t = text(&out);
        assert!(out.status.success(), "{role}: {t}");
        assert!(t.contains("ok main/appdb/") && t.contains("ok main/other/") && t.contains("ok main/@globals/"), "{t}");

        for db in ["appdb", "other"] {
            assert_eq!(writable(&stack, db, role), "", "{role} can write in {db}");
        }
        for sql in [
            "INSERT INTO sales.orders (amount) VALUES (1)",
            "UPDATE public.events SET n = 0",
            "DELETE FROM public.blobs",
            "TRUNCATE sales.orders",
            "CREATE TABLE public.mine (i int)",
            "SELECT lo_put((SELECT lo FROM public.blobs LIMIT 1), 0, 'x')",
        ] {
            let e = psql_as(&stack.pg, role, None, "appdb", sql).expect_err(sql);
            assert!(e.contains("permission denied"), "{role}: {sql}: {e}");
        }
    }
    let store = stack.store().await;
    let latest = manifests(&store, "main/appdb/").await.into_iter().max_by_key(|m| m.finished_at).unwrap();
    let counts = &latest.row_counts.as_ref().unwrap().tables;
    assert!(counts.iter().any(|t| t.schema == "sales" && t.table == "later" && t.rows == 1), "{counts:?}");

    // The restore role creates a database and pg_restore fills it from that backup.
    stack.set("PGVAULT_INVENTORY", &admin_inventory);
    let out = cli(&stack, &["grant-sql", "--role", "pgvault_restore", "--restore", "--apply", "--server", "main"]);
    assert!(out.status.success(), "{}", text(&out));
    psql_as(&stack.pg, "pgvault_restore", None, "postgres", "CREATE DATABASE restored").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let zst = dir.path().join("b.dump.zst");
    {
        use futures::StreamExt;
        use std::io::Write;
        let mut f = std::fs::File::create(&zst).unwrap();
        let mut s = store.read(&latest.data_blob).await.unwrap();
        while let Some(chunk) = s.next().await {
            f.write_all(&chunk.unwrap()).unwrap();
        }
    }
    let dump = dir.path().join("b.dump");
    assert!(Command::new("zstd").args(["-q", "-d", "-o"]).arg(&dump).arg(&zst).status().unwrap().success());
    let out = tokio::task::block_in_place(|| {
        Command::new(stack.pg.bin_dir.join("pg_restore"))
            .args(["--no-owner", "--no-privileges", "--exit-on-error", "-h", &stack.pg.host])
            .args(["-p", &stack.pg.port.to_string(), "-U", "pgvault_restore", "-d", "restored"])
            .arg(&dump)
            .output()
            .unwrap()
    });
    assert!(out.status.success(), "pg_restore as the restore role: {}", text(&out));
    assert_eq!(psql(&stack, "restored", "SELECT count(*) FROM sales.orders"), "300");
    assert_eq!(
        psql(&stack, "restored", "SELECT convert_from(lo_get(lo), 'UTF8') FROM public.blobs"),
        "large object bytes"
    );
    let attrs = psql(
        &stack,
        "postgres",
        "SELECT rolcreatedb, rolsuper, rolcreaterole FROM pg_roles WHERE rolname = 'pgvault_restore'",
    );
    assert_eq!(attrs, "t|f|f");
}

// ---- no secret in any output ------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_appears_in_any_output_at_debug_level() {
    let (mut stack, kv) = kv_stack(&["hostssl all entra_app 127.0.0.1/32 password"]).await;
    let password = "Distinctive-Pw_93kq7Zt";
    let entra = long_entra_token();
    stack.identity.pin_token(OSSRDBMS, &entra);
    psql(
        &stack,
        "postgres",
        &format!(
            "CREATE ROLE kv_reader LOGIN CREATEDB PASSWORD '{password}'; GRANT pg_read_all_data TO kv_reader;
             CREATE ROLE entra_app LOGIN PASSWORD '{entra}'; GRANT pg_read_all_data TO entra_app;
             CREATE DATABASE appdb; CREATE DATABASE denied"
        ),
    );
    psql(&stack, "appdb", "CREATE TABLE t AS SELECT i, md5(i::text) FROM generate_series(1, 2000) i");
    // Encrypted backups: neither a data key nor a plaintext row may appear anywhere.
    let marker = "Plaintext-Row_Marker-93f1c";
    psql(&stack, "appdb", &format!("CREATE TABLE marker AS SELECT '{marker}'::text AS m"));
    kv.create_key("backup-key");
    stack.set("PGVAULT_ENCRYPTION_KEY", &kv.key_id("backup-key"));
    // A table under row-level security the readers do not bypass: the backup fails (rejected at
    // once: retrying cannot help), and the database's words reach the replies and the rejected
    // queue.
    psql(&stack, "denied", "CREATE TABLE guarded AS SELECT 1 AS i; ALTER TABLE guarded ENABLE ROW LEVEL SECURITY");
    kv.set_secret(
        "pg-main",
        &format!(
            "Server={};Port={};User Id=kv_reader;Password={password};Ssl Mode=VerifyFull;",
            stack.pg.host, stack.pg.port
        ),
    );
    kv.set_secret("pg-wrong", &format!("host={} user=kv_reader password={password}-but-wrong", stack.pg.host));
    let mut entra_server = kv_server(&stack, "entra", &kv, "unused");
    entra_server["credentials"] = json!("entra");
    entra_server["user"] = json!("entra_app");
    let inventory =
        json!([kv_server(&stack, "main", &kv, "pg-main"), kv_server(&stack, "wrong", &kv, "pg-wrong"), entra_server]);
    stack.set("PGVAULT_INVENTORY", &inventory.to_string());
    stack.set("PGVAULT_LOG", "debug");
    // Without row counts, pg_dump itself meets the policy: its stderr is what must be redacted.
    stack.set("PGVAULT_ROW_COUNTS", "off");

    let mut outputs: Vec<(String, String)> = Vec::new();
    let served = stack.serve();
    let (status, reply) = served.invoke("backup-scheduler", &hostsim::timer_payload("backup-scheduler", false)).await;
    outputs.push(("scheduler reply".into(), reply.to_string()));
    assert_eq!(status, 500, "server \"wrong\" cannot be listed: {reply}");
    let report = stack.drain(&served, BACKUP_JOBS_QUEUE).await;
    outputs.push(("worker replies".into(), serde_json::to_string(&report.replies).unwrap()));
    // main and entra: appdb and the globals succeed; `denied` is rejected (and kept) at once.
    assert_eq!((report.succeeded, report.poisoned), (6, 0), "{:?}", report.replies);
    let replies = serde_json::to_string(&report.replies).unwrap();
    assert!(
        replies.contains("pg_dump failed") && replies.contains("row-level security"),
        "pg_dump's stderr is in the replies: {replies}"
    );
    let rejected = stack.queue().peek("backup-jobs-rejected", 32).await.unwrap();
    assert_eq!(rejected.len(), 2, "{rejected:?}");
    outputs.push(("rejected messages".into(), rejected.join("\n")));
    for args in [
        &["backup", "--server", "main", "--database", "appdb"][..],
        &["backup", "--server", "wrong"],
        &["backup", "--server", "entra", "--database", "appdb"],
        &["list"],
        &["verify", "--all"],
    ] {
        let out = cli(&stack, args);
        outputs.push((format!("pgvault {}", args.join(" ")), text(&out)));
    }
    // A restore and an export as files (a SAS in play), through the handler at debug level.
    for (id, target, options) in [
        (
            "leak-restore",
            json!({ "mode": "create", "server": "main", "database": "appdb_copy" }),
            json!({ "no_owner": true, "no_privileges": true }),
        ),
        ("leak-files", json!({ "mode": "as-files", "container": "exports", "prefix": "leak" }), json!({})),
    ] {
        let request = json!({ "version": 1, "request_id": id, "requested_by": "leak test",
            "source": { "server": "main", "database": "appdb" }, "target": target,
            "options": options });
        stack
            .queue()
            .send(pgvault::features::restore::RESTORE_REQUESTS_QUEUE, &request.to_string(), false)
            .await
            .unwrap();
    }
    for queue in [pgvault::features::restore::RESTORE_REQUESTS_QUEUE, pgvault::features::restore::RESTORE_TASKS_QUEUE] {
        let report = stack.drain(&served, queue).await;
        assert_eq!(report.succeeded, 2, "{queue}: {:?}", report.replies);
        for r in &report.replies {
            let status = r["reply"]["ReturnValue"]["status"].as_str().unwrap_or_default();
            assert!(["planned", "succeeded"].contains(&status), "{queue}: {r}");
        }
        outputs.push((format!("{queue} replies"), serde_json::to_string(&report.replies).unwrap()));
    }
    assert_eq!(psql(&stack, "appdb_copy", "SELECT count(*) FROM t"), "2000");
    // The SAS URLs are delivered in the job record (that is their channel, so it is not
    // checked); their signatures must appear nowhere else.
    let records = cli(&stack, &["jobs", "--json", "--show-urls"]);
    let records: Value = serde_json::from_slice(&records.stdout).unwrap();
    let mut sas_sigs = Vec::new();
    for r in records["jobs"].as_array().unwrap() {
        for f in r["detail"]["report"]["files"].as_array().into_iter().flatten() {
            let url = url::Url::parse(f["url"].as_str().unwrap()).unwrap();
            let sig = url.query_pairs().find(|(k, _)| k == "sig").map(|(_, v)| v.into_owned()).unwrap();
            sas_sigs.push(sig);
        }
    }
    assert_eq!(sas_sigs.len(), 2, "the dump and its manifest were exported: {records}");
    // Stop the handler and wait for its last log line, so the whole log is checked.
    let mut served = served;
    assert!(tokio::task::block_in_place(|| served.terminate()).success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !served.output().contains("shutting down") {
        assert!(std::time::Instant::now() < deadline, "no shutdown line: {}", served.output());
        std::thread::yield_now();
    }
    outputs.push(("serve log".into(), served.output()));
    // The manifests and the job records hold no data key and no plaintext (the records' SAS
    // URLs are their channel, so these two are checked for keys and data only).
    let store = stack.store().await;
    let mut kept: Vec<(String, String)> = vec![("job records".into(), serde_json::to_string(&records).unwrap())];
    for b in store.list("").await.unwrap() {
        if b.name.ends_with(".manifest.json") {
            let m = store.get(&b.name).await.unwrap();
            assert!(Manifest::from_json(&b.name, &m).unwrap().encryption.is_some(), "{} is encrypted", b.name);
            kept.push((b.name.clone(), String::from_utf8_lossy(&m).into_owned()));
        }
    }
    let data_keys = kv.wrapped_plain_values();
    assert!(data_keys.len() >= 4, "every backup wrapped a fresh key: {}", data_keys.len());
    assert_eq!(data_keys.iter().collect::<std::collections::HashSet<_>>().len(), data_keys.len(), "never the same key");
    for key in &data_keys {
        let b64 = base64::engine::general_purpose::STANDARD;
        let b64url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let forms = [hex::encode(key), hex::encode_upper(key), b64.encode(key), b64url.encode(key), format!("{key:?}")];
        for (what, t) in outputs.iter().chain(&kept) {
            for form in &forms {
                assert!(!t.contains(form.as_str()), "a data key appears in {what}");
            }
        }
    }
    for (what, t) in outputs.iter().chain(&kept) {
        assert!(!t.contains(marker), "plaintext appears in {what}");
    }

    let all: String = outputs.iter().map(|(what, t)| format!("==== {what}\n{t}\n")).collect();
    assert!(all.contains("password authentication failed for user \"kv_reader\""), "the failure was reported: {all}");
    assert!(all.contains("DEBUG"), "debug logging was on: {all}");
    let mut secrets: Vec<String> = vec![password.into(), stack.identity.header.clone(), entra.clone()];
    secrets.extend(sas_sigs.iter().cloned());
    secrets.extend(stack.identity.issued_tokens());
    assert!(
        stack.identity.resources().iter().any(|r| r == VAULT)
            && stack.identity.resources().iter().any(|r| r == OSSRDBMS)
    );
    for secret in &secrets {
        for (what, t) in &outputs {
            assert!(!t.contains(secret.as_str()), "a secret ({} chars) appears in {what}:\n{t}", secret.len());
            // Nor any one part of a token (the signature, the claims).
            for part in secret.split('.').filter(|p| p.len() >= 16) {
                assert!(!t.contains(part), "part of a token appears in {what}:\n{t}");
            }
        }
    }
    for (what, t) in &outputs {
        for (i, _) in t.match_indices("sig=") {
            assert!(
                t[i + 4..].starts_with("**redacted**") || t[i + 4..].starts_with(['&', '"', ' ', '\n']),
                "a SAS signature in {what}: {t}"
            );
        }
    }
}
