//! The whole local stack pgvault runs against, on loopback with random ports:
//!
//! - a throwaway certificate authority (and a leaf for 127.0.0.1 / localhost),
//! - Azurite (Blob + Queue) over HTTPS with `--oauth basic`,
//! - the App Service managed-identity endpoint (`IDENTITY_ENDPOINT` / `IDENTITY_HEADER`),
//! - the Key Vault test server with an RSA key `pgvault-backup`, named in
//!   `PGVAULT_ENCRYPTION_KEY`, so backups are encrypted as in production (unset it for plain
//!   backups; `DEMO_ENCRYPTION_KEY` keeps the value),
//! - a PostgreSQL 15 cluster (run as OS user `postgres` when started as root).
//!
//! It writes an env file of `export K='V'` lines with every setting `pgvault` needs to use that
//! stack exactly as in production (managed identity, HTTPS, the real SDK), prints one line
//! `ready` on stdout, and stays up until SIGTERM, SIGINT, SIGHUP or end of stdin. Then it stops
//! everything and removes its files (the env file too).
//!
//! ```text
//! cargo run --example local_stack -- --env-file /tmp/stack.env [--sample-databases 3] [--ignore-stdin]
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
use support::{Azurite, Cluster, IdentityServer, KeyVault, TestCa};
use tokio::signal::unix::{SignalKind, signal};

const USAGE: &str = "usage: local_stack --env-file PATH [--sample-databases N] [--ignore-stdin]";

/// Blob container the local stack's pgvault writes to.
const CONTAINER: &str = "pgvault-backups";
/// The Key Vault key that wraps the local stack's data keys.
const ENCRYPTION_KEY_NAME: &str = "pgvault-backup";
/// Server name in the inventory.
const SERVER: &str = "local";

struct Args {
    env_file: PathBuf,
    sample_databases: u32,
    ignore_stdin: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut env_file = None;
    let mut sample_databases = 0;
    let mut ignore_stdin = false;
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
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    let env_file = env_file.ok_or_else(|| format!("--env-file is required\n{USAGE}"))?;
    Ok(Args { env_file, sample_databases, ignore_stdin })
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

async fn run(args: Args) -> Result<(), String> {
    // Listen for signals before starting anything, so a signal during start-up still ends in
    // a clean stop (the notification waits in the stream).
    let mut sigterm = signal(SignalKind::terminate()).map_err(|e| format!("SIGTERM handler: {e}"))?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(|e| format!("SIGINT handler: {e}"))?;
    let mut sighup = signal(SignalKind::hangup()).map_err(|e| format!("SIGHUP handler: {e}"))?;

    eprintln!("local_stack: starting test CA, Azurite, identity endpoint, PostgreSQL 15");
    let ca = TestCa::new();
    let azurite = Azurite::start(&ca).await;
    let identity = IdentityServer::start().await;
    let vault = KeyVault::start(&ca);
    vault.create_key(ENCRYPTION_KEY_NAME);
    let cluster = tokio::task::spawn_blocking(Cluster::start).await.map_err(|e| format!("start PostgreSQL: {e}"))?;
    eprintln!(
        "local_stack: Azurite blob {} queue {}; identity {}; Key Vault {}; PostgreSQL {} on {}:{}",
        azurite.blob_endpoint,
        azurite.queue_endpoint,
        identity.endpoint,
        vault.url,
        cluster.version,
        cluster.host,
        cluster.port
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
    ]);
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
