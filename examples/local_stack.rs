//! The whole local stack pgvault runs against, on loopback with random ports:
//!
//! - a throwaway certificate authority (and a leaf for 127.0.0.1 / localhost),
//! - Azurite (Blob + Queue) over HTTPS with `--oauth basic`,
//! - the App Service managed-identity endpoint (`IDENTITY_ENDPOINT` / `IDENTITY_HEADER`),
//! - the Key Vault test server with an RSA key `pgvault-backup`, named in
//!   `PGVAULT_ENCRYPTION_KEY`, so backups are encrypted as in production (unset it for plain
//!   backups; `DEMO_ENCRYPTION_KEY` keeps the value), and, with `--auth scram|password`, the
//!   secret `pg-local`: the server's login as a connection string, which the inventory names
//!   (Key Vault credentials, as in production),
//! - the ARM test server (the VMs' managed Run Command), with one VM registered, so pgBackRest
//!   SAS push delivery runs for real,
//! - a PostgreSQL 15 cluster (run as OS user `postgres` when started as root), with trust auth
//!   (default), or `--auth scram` / `--auth password` (scram-sha-256 or cleartext `password`
//!   on TCP; the password is then only in the vault and in `DEMO_PGPASSWORD`, for scripts),
//! - when `pgbackrest` is installed: a pgBackRest configuration for that cluster whose repository
//!   is container `pgbackrest` on Azurite, archiving through it, and the pgBackRest target
//!   `local` (push delivery) in `PGVAULT_PGBACKREST_TARGETS`; see docs/vm-pgbackrest.md
//!   ("Try it locally").
//!
//! It writes an env file of `export K='V'` lines with every setting `pgvault` needs to use that
//! stack exactly as in production (managed identity, HTTPS, the real SDK), prints one line
//! `ready` on stdout, and stays up until SIGTERM, SIGINT, SIGHUP or end of stdin. Then it stops
//! everything and removes its files (the env file too).
//!
//! ```text
//! cargo run --example local_stack -- --env-file /tmp/stack.env [--sample-databases 3] [--ignore-stdin]
//!     [--auth trust|scram|password]
//! ```
//!
//! `--ignore-stdin` is for callers that start it with `&` (stdin is then /dev/null): it stays up
//! until a signal only.

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use support::arm::{ArmServer, VmMode};
use support::{Azurite, Cluster, ClusterOptions, IdentityServer, KeyVault, TestCa};
use tokio::signal::unix::{SignalKind, signal};

const USAGE: &str =
    "usage: local_stack --env-file PATH [--sample-databases N] [--ignore-stdin] [--auth trust|scram|password]";

/// Blob container the local stack's pgvault writes to.
const CONTAINER: &str = "pgvault-backups";
/// The Key Vault key that wraps the local stack's data keys.
const ENCRYPTION_KEY_NAME: &str = "pgvault-backup";
/// Server name in the inventory.
const SERVER: &str = "local";
/// The Key Vault secret holding the server's login (a connection string).
const LOGIN_SECRET: &str = "pg-local";
/// The pgBackRest target, its container on Azurite, and its stanza.
const PGBR_TARGET: &str = "local";
const PGBR_CONTAINER: &str = "pgbackrest";
const PGBR_STANZA: &str = "main";
/// The VM the ARM test server knows (push delivery's Run Command runs here).
const PGBR_VM: &str = "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/local/providers/Microsoft.Compute/virtualMachines/local-pg";

/// How clients authenticate over TCP.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Auth {
    Trust,
    Scram,
    Password,
}

struct Args {
    env_file: PathBuf,
    sample_databases: u32,
    ignore_stdin: bool,
    auth: Auth,
}

fn parse_args() -> Result<Args, String> {
    let mut env_file = None;
    let mut sample_databases = 0;
    let mut ignore_stdin = false;
    let mut auth = Auth::Trust;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = |what: &str| -> Result<String, String> {
            inline.clone().or_else(|| args.next()).ok_or_else(|| format!("{what} needs a value\n{USAGE}"))
        };
        match name.as_str() {
            "--env-file" => env_file = Some(PathBuf::from(value("--env-file")?)),
            "--sample-databases" => {
                let v = value("--sample-databases")?;
                sample_databases = v
                    .parse()
                    .ok()
                    .filter(|n| *n <= 100)
                    .ok_or_else(|| format!("--sample-databases: {v:?} is not a number from 0 to 100"))?;
            }
            "--ignore-stdin" => ignore_stdin = true,
            "--auth" => {
                auth = match value("--auth")?.as_str() {
                    "trust" => Auth::Trust,
                    "scram" => Auth::Scram,
                    "password" => Auth::Password,
                    other => return Err(format!("--auth: {other:?} is not trust, scram or password\n{USAGE}")),
                }
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    let env_file = env_file.ok_or_else(|| format!("--env-file is required\n{USAGE}"))?;
    Ok(Args { env_file, sample_databases, ignore_stdin, auth })
}

/// `'value'` for a POSIX shell (a `'` becomes `'\''`).
fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

/// Write `export K='V'` lines atomically (temp file in the same directory, fsync, rename), mode
/// 0600: the file holds the identity endpoint's secret header.
fn write_env_file(path: &Path, vars: &[(String, String)]) -> std::io::Result<()> {
    let mut text = String::from("# Written by `cargo run --example local_stack`; removed when the stack stops.\n");
    for (k, v) in vars {
        text.push_str(&format!("export {k}={}\n", shell_quote(v)));
    }
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        std::process::id()
    ));
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)
}

/// A few tables of varied data (text of varying entropy, numerics, timestamps, jsonb, bytea,
/// arrays, a foreign key, an index, a view) in database `sample_<n>`; sizes differ per database.
fn sample_sql(n: u32) -> String {
    let rows = 2_000 * n;
    format!(
        r#"
CREATE TABLE customers (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text NOT NULL,
    email       text NOT NULL UNIQUE,
    country     char(2) NOT NULL,
    balance     numeric(12,2) NOT NULL,
    created_at  timestamptz NOT NULL,
    tags        text[] NOT NULL DEFAULT '{{}}'
);
INSERT INTO customers (name, email, country, balance, created_at, tags)
SELECT initcap((ARRAY['ada','grace','alan','edsger','barbara','donald','ken','linus'])[1 + i % 8])
         || ' ' || substr(md5(i::text), 1, 6),
       'user' || i || '@example.' || (ARRAY['com','org','net'])[1 + i % 3],
       (ARRAY['DE','FR','US','JP','BR','IN'])[1 + i % 6],
       round((random() * 10000)::numeric, 2),
       timestamptz '2020-01-01 00:00:00+00' + i * interval '37 minutes',
       ARRAY[(ARRAY['vip','new','churned','trial'])[1 + i % 4]]
FROM generate_series(1, {rows}) AS i;

CREATE TABLE orders (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id bigint NOT NULL REFERENCES customers(id),
    placed_at   timestamptz NOT NULL,
    total       numeric(14,2) NOT NULL,
    status      text NOT NULL,
    details     jsonb NOT NULL
);
INSERT INTO orders (customer_id, placed_at, total, status, details)
SELECT 1 + (i * 7919) % {rows},
       now() - (i % 1000) * interval '1 hour',
       round((random() * 500)::numeric, 2),
       (ARRAY['placed','paid','shipped','returned'])[1 + i % 4],
       jsonb_build_object('items', jsonb_build_array(
                              jsonb_build_object('sku', 'SKU-' || (i % 97), 'qty', 1 + i % 5),
                              jsonb_build_object('sku', 'SKU-' || (i % 89), 'qty', 1 + i % 3)),
                          'note', md5(random()::text),
                          'gift', i % 10 = 0)
FROM generate_series(1, {orders}) AS i;
CREATE INDEX orders_customer_idx ON orders (customer_id);

CREATE TABLE attachments (
    id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    order_id  bigint NOT NULL REFERENCES orders(id),
    filename  text NOT NULL,
    content   bytea NOT NULL
);
INSERT INTO attachments (order_id, filename, content)
SELECT i, 'scan-' || i || '.bin', decode(md5(i::text) || md5(random()::text), 'hex')
FROM generate_series(1, {attachments}) AS i;

CREATE VIEW customer_totals AS
SELECT c.id, c.name, count(o.id) AS orders, coalesce(sum(o.total), 0) AS spent
FROM customers c LEFT JOIN orders o ON o.customer_id = c.id
GROUP BY c.id, c.name;
ANALYZE;
"#,
        orders = rows * 3,
        attachments = rows / 4,
    )
}

/// Where the stack's pgBackRest configuration lives, and who owns the include file.
struct PgBackRestSetup {
    conf: PathBuf,
    include_dir: PathBuf,
    include_file: PathBuf,
    owner: String,
    group: String,
}

/// When `pgbackrest` is installed: a configuration for the cluster (repository 1 = container
/// `pgbackrest` on Azurite, with the option names pgBackRest 2.45 accepts), a `conf.d` for the
/// include file that push delivery writes, and WAL archiving through it. Archiving fails (and
/// PostgreSQL keeps the WAL) until the first rotation delivers a token.
fn pgbackrest_setup(cluster: &Cluster, azurite: &Azurite, ca: &TestCa) -> Result<Option<PgBackRestSetup>, String> {
    let found = std::process::Command::new("pgbackrest").arg("version").output();
    if !found.is_ok_and(|o| o.status.success()) {
        eprintln!("local_stack: pgbackrest is not installed: no pgBackRest target");
        return Ok(None);
    }
    let dir = cluster.owned_dir("pgbackrest");
    for d in ["lock", "log", "spool", "conf.d"] {
        cluster.owned_dir(&format!("pgbackrest/{d}"));
    }
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.ca_pem()).map_err(|e| format!("write {}: {e}", ca_file.display()))?;
    let conf = dir.join("pgbackrest.conf");
    let d = dir.display();
    let text = format!(
        "[global]\nrepo1-type=azure\nrepo1-path=/\nrepo1-azure-account=devstoreaccount1\n\
         repo1-azure-container={PGBR_CONTAINER}\nrepo1-azure-uri-style=path\n\
         # pgBackRest matches DNS names only, not IP SANs: localhost, not 127.0.0.1.\n\
         repo1-storage-host=localhost\nrepo1-storage-port={}\nrepo1-storage-ca-file={}\n\
         repo1-retention-full=2\nlock-path={d}/lock\nlog-path={d}/log\nspool-path={d}/spool\n\
         log-level-console=info\nlog-level-file=off\nstart-fast=y\narchive-timeout=60\n\n\
         [{PGBR_STANZA}]\npg1-path={}\npg1-port={}\npg1-socket-path={}\npg1-user={}\n",
        azurite.blob_port,
        ca_file.display(),
        cluster.data_dir().display(),
        cluster.port,
        cluster.socket_dir.display(),
        cluster.superuser,
    );
    std::fs::write(&conf, text).map_err(|e| format!("write {}: {e}", conf.display()))?;
    let include_dir = dir.join("conf.d");
    let archive = format!(
        "pgbackrest --config={} --config-include-path={} --stanza={PGBR_STANZA} archive-push %p",
        conf.display(),
        include_dir.display()
    );
    cluster.try_psql(
        "postgres",
        &format!("ALTER SYSTEM SET archive_mode = on; ALTER SYSTEM SET archive_command = '{archive}';"),
    )?;
    cluster.restart();
    // The push script runs as this process's user (the ARM test server runs it here) and gives
    // the file to root:<cluster group> 0640, as on a VM; without root, to this user.
    let (owner, group) = match cluster.os_user() {
        Some(user) => ("root".to_string(), user.to_string()),
        None => (id("-un")?, id("-gn")?),
    };
    Ok(Some(PgBackRestSetup { conf, include_file: include_dir.join("pgvault-sas.conf"), include_dir, owner, group }))
}

/// `id <flag>` of this process.
fn id(flag: &str) -> Result<String, String> {
    let out = std::process::Command::new("id").arg(flag).output().map_err(|e| format!("run id {flag}: {e}"))?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

async fn run(args: Args) -> Result<(), String> {
    // Listen for signals before starting anything, so a signal during start-up still ends in
    // a clean stop (the notification waits in the stream).
    let mut sigterm = signal(SignalKind::terminate()).map_err(|e| format!("SIGTERM handler: {e}"))?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(|e| format!("SIGINT handler: {e}"))?;
    let mut sighup = signal(SignalKind::hangup()).map_err(|e| format!("SIGHUP handler: {e}"))?;

    eprintln!("local_stack: starting test CA, Azurite, identity endpoint, Key Vault, ARM, PostgreSQL 15");
    let ca = TestCa::new();
    let azurite = Azurite::start(&ca).await;
    let identity = IdentityServer::start().await;
    let vault = KeyVault::start(&ca);
    vault.create_key(ENCRYPTION_KEY_NAME);
    let arm = ArmServer::start(&ca);
    arm.add_vm(PGBR_VM, VmMode::Run);
    let options = ClusterOptions {
        password_auth: args.auth != Auth::Trust,
        // First match wins: cleartext `password` ahead of the default scram-sha-256 line.
        hba: if args.auth == Auth::Password { vec!["host all all 127.0.0.1/32 password".into()] } else { vec![] },
        ..ClusterOptions::default()
    };
    let cluster = tokio::task::spawn_blocking(move || Cluster::start_with(options))
        .await
        .map_err(|e| format!("start PostgreSQL: {e}"))?;
    // With a password, the login is kept as Azure Backup keeps it: a connection string in a Key
    // Vault secret, which the inventory names. (A Key Vault login must hold a password, so
    // trust auth keeps `credentials: none`.)
    let credentials = match &cluster.password {
        Some(pw) => {
            let login = format!(
                "postgresql://{}:{pw}@{}:{}/postgres?sslmode=disable",
                cluster.superuser, cluster.host, cluster.port
            );
            vault.set_secret(LOGIN_SECRET, &login);
            serde_json::json!({"key_vault": {"vault": vault.url, "secret": LOGIN_SECRET}})
        }
        None => serde_json::json!("none"),
    };
    eprintln!(
        "local_stack: Azurite blob {} queue {}; identity {}; Key Vault {}; ARM {}; PostgreSQL {} on {}:{} ({} auth)",
        azurite.blob_endpoint,
        azurite.queue_endpoint,
        identity.endpoint,
        vault.url,
        arm.url,
        cluster.version,
        cluster.host,
        cluster.port,
        match args.auth {
            Auth::Trust => "trust",
            Auth::Scram => "scram-sha-256",
            Auth::Password => "password",
        }
    );

    for n in 1..=args.sample_databases {
        let db = format!("sample_{n}");
        cluster.try_psql("postgres", &format!("CREATE DATABASE {db}")).map_err(|e| format!("create {db}: {e}"))?;
        cluster.try_psql(&db, &sample_sql(n)).map_err(|e| format!("fill {db}: {e}"))?;
        eprintln!("local_stack: sample database {db} created");
    }

    // A signal that came during start-up: stop without announcing a stack that is going away.
    let early = tokio::select! {
        biased;
        _ = sigterm.recv() => Some("SIGTERM"),
        _ = sigint.recv() => Some("SIGINT"),
        _ = sighup.recv() => Some("SIGHUP"),
        _ = std::future::ready(()) => None,
    };
    if let Some(why) = early {
        eprintln!("local_stack: {why} during start-up: stopping");
        tokio::task::spawn_blocking(move || drop(cluster)).await.map_err(|e| format!("stop PostgreSQL: {e}"))?;
        return Ok(());
    }

    let inventory = serde_json::json!([{
        "name": SERVER,
        "host": cluster.host,
        "port": cluster.port,
        "user": cluster.superuser,
        // The demo cluster has no TLS; production uses verify-full.
        "tls": "disable",
        "exclude": ["postgres"],
        "credentials": credentials,
    }]);
    let mut vars: Vec<(String, String)> = vec![
        ("PGVAULT_STORAGE".into(), "azure".into()),
        ("PGVAULT_BLOB_ENDPOINT".into(), azurite.blob_endpoint.clone()),
        ("PGVAULT_BACKUP_CONTAINER".into(), CONTAINER.into()),
        ("JobsQueue__queueServiceUri".into(), azurite.queue_endpoint.clone()),
        ("JobsQueue__credential".into(), "managedidentity".into()),
        ("PGVAULT_IDENTITY".into(), "managed-identity".into()),
    ];
    vars.extend(identity.env());
    vars.extend([
        ("PGVAULT_CA_FILE".into(), ca.ca_pem_path().display().to_string()),
        ("PGVAULT_INVENTORY".into(), inventory.to_string()),
        ("PGVAULT_PG_BIN_DIRS".into(), cluster.bin_dir.display().to_string()),
        ("PGVAULT_BACKUP_SCHEDULE".into(), "0 0 2 * * *".into()),
        ("PGVAULT_ENCRYPTION_KEY".into(), vault.key_id(ENCRYPTION_KEY_NAME)),
        ("DEMO_ENCRYPTION_KEY".into(), vault.key_id(ENCRYPTION_KEY_NAME)),
        // For scripts (psql, pg_dump) and the benchmark; pgvault itself does not read these.
        ("DEMO_PGHOST".into(), cluster.host.clone()),
        ("DEMO_PGPORT".into(), cluster.port.to_string()),
        ("DEMO_PGUSER".into(), cluster.superuser.clone()),
        ("DEMO_PG_BIN".into(), cluster.bin_dir.display().to_string()),
        ("DEMO_PG_DATA".into(), cluster.data_dir().display().to_string()),
        ("DEMO_AZURITE_PID".into(), azurite.pid().to_string()),
        ("DEMO_AZURITE_DIR".into(), azurite.location().display().to_string()),
        ("DEMO_SERVER".into(), SERVER.into()),
        ("DEMO_KEY_VAULT".into(), vault.url.clone()),
        // Push delivery's Run Command goes here (the ARM test server).
        ("PGVAULT_ARM_ENDPOINT".into(), arm.url.clone()),
        // Restore drills restore into the same cluster (as pgvault_drill_<hex>, then dropped).
        ("PGVAULT_DRILL_SERVER".into(), SERVER.into()),
    ]);
    if let Some(pw) = &cluster.password {
        vars.push(("DEMO_PGPASSWORD".into(), pw.clone()));
    }
    if let Some(pgbr) = pgbackrest_setup(&cluster, &azurite, &ca)? {
        let target = serde_json::json!([{
            "name": PGBR_TARGET,
            "vm_resource_id": PGBR_VM,
            "location": "local",
            "delivery": "push",
            "blob_endpoint": azurite.blob_endpoint,
            "container": PGBR_CONTAINER,
            "repo": 1,
            "vault": vault.url,
            "include_file": pgbr.include_file,
            "owner": pgbr.owner,
            "group": pgbr.group,
            "stanzas": [PGBR_STANZA],
        }]);
        vars.extend([
            ("PGVAULT_PGBACKREST_TARGETS".into(), target.to_string()),
            ("DEMO_PGBACKREST_CONF".into(), pgbr.conf.display().to_string()),
            ("DEMO_PGBACKREST_INCLUDE_PATH".into(), pgbr.include_dir.display().to_string()),
            ("DEMO_PGBACKREST_STANZA".into(), PGBR_STANZA.into()),
        ]);
    }
    write_env_file(&args.env_file, &vars).map_err(|e| format!("write {}: {e}", args.env_file.display()))?;

    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "ready").and_then(|_| out.flush()).map_err(|e| format!("print ready: {e}"))?;
    }
    eprintln!(
        "local_stack: ready; settings in {} (stop with Ctrl-C, SIGTERM{})",
        args.env_file.display(),
        if args.ignore_stdin { "" } else { " or end of stdin" }
    );

    // End of stdin: a plain thread (a blocked read in Tokio's blocking pool would hold up the
    // runtime's shutdown), reporting through a channel.
    let (eof_tx, mut eof_rx) = tokio::sync::mpsc::channel::<()>(1);
    if !args.ignore_stdin {
        std::thread::spawn(move || {
            let mut sink = [0u8; 4096];
            let mut stdin = std::io::stdin().lock();
            loop {
                match std::io::Read::read(&mut stdin, &mut sink) {
                    Ok(0) => break,
                    Ok(_) => continue,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                }
            }
            let _ = eof_tx.blocking_send(());
        });
    } else {
        std::mem::forget(eof_tx);
    }

    let why = tokio::select! {
        _ = sigterm.recv() => "SIGTERM",
        _ = sigint.recv() => "SIGINT",
        _ = sighup.recv() => "SIGHUP",
        _ = eof_rx.recv() => "end of stdin",
    };
    eprintln!("local_stack: {why}: stopping");
    let _ = std::fs::remove_file(&args.env_file);
    tokio::task::spawn_blocking(move || drop(cluster)).await.map_err(|e| format!("stop PostgreSQL: {e}"))?;
    drop(azurite);
    drop(arm);
    drop(vault);
    drop(identity);
    drop(ca);
    eprintln!("local_stack: stopped, files removed");
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("local_stack: {e}");
            return ExitCode::from(2);
        }
    };
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("local_stack: {e}");
            ExitCode::FAILURE
        }
    }
}
