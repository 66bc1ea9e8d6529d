//! A database backed up in parts in one snapshot (manifest format version 3), end to end on the
//! local stack (PostgreSQL, Azurite over HTTPS with OAuth, the real `pgvault` binary), with
//! `PGVAULT_PARALLEL_ABOVE_MIB=0` so that small databases go in parts: the hostile schema
//! restores with plain tools per the parts' restore hints, a transfer workload running during
//! the backup restores to its invariant total, and a coordinator that ends publishes nothing.

#[path = "support/app.rs"]
mod app;
mod support;

use app::Stack;
use pgvault::domain::manifest::Manifest;
use pgvault::domain::parts::{PartKind, TableRef};
use pgvault::seams::pg::quote_ident;
use pgvault::seams::store::BlobStore;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::data::{blocking, manifests, psql_blocking, schema, table_sums};

const HOSTILE_SQL: &str = r#"
CREATE TABLE big (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, pad text NOT NULL,
                  twice bigint GENERATED ALWAYS AS (id * 2) STORED);
INSERT INTO big (pad) SELECT repeat(md5(g::text), 8) FROM generate_series(1, 20000) g;
ALTER TABLE big DROP COLUMN IF EXISTS nothing_here;
CREATE TABLE measurements (id serial, at date NOT NULL, v int) PARTITION BY RANGE (at);
CREATE TABLE m2025 PARTITION OF measurements FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE m2026 PARTITION OF measurements FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
INSERT INTO measurements (at, v) SELECT date '2025-01-01' + (g % 730), g FROM generate_series(1, 8000) g;
CREATE TABLE animals (id int, name text);
CREATE TABLE dogs (breed text) INHERITS (animals);
INSERT INTO animals VALUES (1, 'cat');
INSERT INTO dogs VALUES (2, 'rex', 'collie');
CREATE UNLOGGED TABLE scratch AS SELECT g AS n FROM generate_series(1, 100) g;
CREATE TABLE customers (id int PRIMARY KEY, name text);
CREATE TABLE orders (id int PRIMARY KEY, customer int NOT NULL REFERENCES customers (id), amount int);
INSERT INTO customers SELECT g, 'c' || g FROM generate_series(1, 500) g;
INSERT INTO orders SELECT g, 1 + g % 500, g FROM generate_series(1, 2000) g;
CREATE MATERIALIZED VIEW order_totals AS SELECT customer, sum(amount) AS total FROM orders GROUP BY customer;
CREATE TABLE secrets (id int, owner text);
ALTER TABLE secrets ENABLE ROW LEVEL SECURITY;
ALTER TABLE secrets FORCE ROW LEVEL SECURITY;
CREATE POLICY only_mine ON secrets USING (owner = current_user);
INSERT INTO secrets VALUES (1, 'alice'), (2, 'bob');
CREATE SEQUENCE free_seq;
SELECT setval('free_seq', 42);
SELECT lo_from_bytea(0, convert_to('large object one', 'UTF8'));
SELECT lo_from_bytea(0, decode(repeat('ab', 5000), 'hex'));
"#;

fn parts_stack_settings(stack: &mut Stack) {
    stack.set("PGVAULT_PARALLEL_ABOVE_MIB", "0");
    stack.set("PGVAULT_BACKUP_JOBS", "2");
    stack.set("PGVAULT_INVENTORY", &stack.inventory(&["postgres"]));
}

/// Start `pgvault backup` of `db` held at fail point `point` (or killed there with `kill`).
fn spawn_backup(stack: &Stack, db: &str, failpoints: &str) -> Child {
    stack
        .command(&["backup", "--server", "main", "--database", db])
        .env("PGVAULT_FAILPOINTS", failpoints)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start pgvault backup")
}

fn wait_reached(go: &Path, child: &mut Child) {
    let reached = go.with_extension("reached");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !reached.exists() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("pgvault backup ended ({status}) before its fail point");
        }
        assert!(Instant::now() < deadline, "fail point never reached");
        std::thread::yield_now();
    }
}

fn finish(child: Child) -> (bool, String) {
    let out = child.wait_with_output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

async fn download(store: &dyn BlobStore, name: &str, to: &Path) {
    use futures::StreamExt;
    use std::io::Write;
    let mut f = std::fs::File::create(to).unwrap();
    let mut s = store.read(name).await.unwrap();
    while let Some(chunk) = s.next().await {
        f.write_all(&chunk.unwrap()).unwrap();
    }
}

/// Restore a backup in parts into a new database `target` with plain tools only, as the parts'
/// restore hints say: the schema part's pre-data, every data part and COPY part, then its
/// post-data.
async fn restore_parts_plainly(stack: &Stack, m: &Manifest, target: &str) {
    let store = stack.store().await;
    let dir = tempfile::tempdir().unwrap();
    let mut files: Vec<(PartKind, PathBuf, usize)> = Vec::new();
    for (i, part) in m.parts.iter().enumerate() {
        let zst = dir.path().join(format!("{}.zst", part.spec.name));
        let plain = dir.path().join(&part.spec.name);
        download(&store, &part.data_blob, &zst).await;
        let ok = Command::new("zstd").args(["-q", "-d", "-o"]).arg(&plain).arg(&zst).status().unwrap();
        assert!(ok.success(), "zstd -d of part {}", part.spec.name);
        assert_eq!(std::fs::metadata(&plain).unwrap().len(), part.raw_bytes, "part {}", part.spec.name);
        files.push((part.spec.kind, plain, i));
    }
    psql_blocking(&stack.pg, "postgres", &format!("CREATE DATABASE {}", quote_ident(target)));
    let pg = &stack.pg;
    let port = pg.port.to_string();
    let pg_restore = |args: &[&str], file: &Path| {
        let out = Command::new(pg.bin_dir.join("pg_restore"))
            .args(["-h", &pg.host, "-p", &port, "-U", &pg.superuser, "-d", target, "--no-owner", "--exit-on-error"])
            .args(args)
            .arg(file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_restore {args:?} {}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let schema_file = &files.iter().find(|f| f.0 == PartKind::Schema).expect("a schema part").1;
    blocking(|| pg_restore(&["--section=pre-data"], schema_file));
    for (kind, file, i) in &files {
        match kind {
            PartKind::Schema => {}
            PartKind::Data => blocking(|| pg_restore(&["--data-only"], file)),
            PartKind::Copy => {
                let spec = &m.parts[*i].spec;
                let table = spec.table.as_ref().unwrap();
                let cols: Vec<String> = spec.columns.iter().map(|c| quote_ident(c)).collect();
                let copy = format!("\\copy {} ({}) FROM '{}'", table_sql(table), cols.join(", "), file.display());
                let out = blocking(|| {
                    Command::new(pg.bin_dir.join("psql"))
                        .args([
                            "-X",
                            "-v",
                            "ON_ERROR_STOP=1",
                            "-h",
                            &pg.host,
                            "-p",
                            &port,
                            "-U",
                            &pg.superuser,
                            "-d",
                            target,
                        ])
                        .args(["-c", &copy])
                        .output()
                        .unwrap()
                });
                assert!(out.status.success(), "{copy}: {}", String::from_utf8_lossy(&out.stderr));
            }
        }
    }
    blocking(|| pg_restore(&["--section=post-data"], schema_file));
}

fn table_sql(t: &TableRef) -> String {
    format!("{}.{}", quote_ident(&t.schema), quote_ident(&t.table))
}

fn sequences(stack: &Stack, db: &str) -> String {
    psql_blocking(
        &stack.pg,
        db,
        "SELECT string_agg(format('%s.%s=%s', schemaname, sequencename, last_value), ' ' ORDER BY schemaname, sequencename) FROM pg_sequences",
    )
}

fn part_of<'a>(m: &'a Manifest, table: &str) -> Vec<&'a str> {
    m.parts
        .iter()
        .filter(|p| {
            p.spec.tables.iter().any(|t| t.table == table) || p.spec.table.as_ref().is_some_and(|t| t.table == table)
        })
        .map(|p| p.spec.name.as_str())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_database_in_parts_restores_with_plain_tools() {
    let mut stack = Stack::start().await;
    parts_stack_settings(&mut stack);
    psql_blocking(&stack.pg, "postgres", "CREATE DATABASE hostile");
    psql_blocking(&stack.pg, "hostile", HOSTILE_SQL);

    // Held once the snapshot is exported and the parts planned: a table created now is not in
    // the backup, and the manifest says so.
    let dir = tempfile::tempdir().unwrap();
    let go = dir.path().join("go");
    let mut child = spawn_backup(&stack, "hostile", &format!("backup.parts-planned=return(hold:{})", go.display()));
    blocking(|| wait_reached(&go, &mut child));
    psql_blocking(&stack.pg, "hostile", "CREATE TABLE late (x int); INSERT INTO late VALUES (1)");
    std::fs::write(&go, "").unwrap();
    let (ok, out) = blocking(|| finish(child));
    assert!(ok, "{out}");

    let store = stack.store().await;
    let found = manifests(&store, &pgvault::domain::layout::prefix(Some("main"), Some("hostile"))).await;
    assert_eq!(found.len(), 1, "{out}");
    let m = &found[0];
    assert_eq!(m.format_version, 3);
    assert!(m.is_parts());
    let snapshot = m.snapshot.clone().expect("the set's snapshot");
    assert!(m.parts.iter().all(|p| p.snapshot == snapshot), "every part in the coordinator's snapshot");
    assert_eq!(m.parts[0].spec.kind, PartKind::Schema);
    assert!(m.parts.iter().filter(|p| p.spec.kind == PartKind::Data).count() >= 2, "{:?}", m.parts);
    let copies: Vec<_> = m.parts.iter().filter(|p| p.spec.kind == PartKind::Copy).collect();
    assert!(
        copies.len() >= 2,
        "the big table is split: {:?}",
        m.parts.iter().map(|p| &p.spec.name).collect::<Vec<_>>()
    );
    assert!(copies.iter().all(|p| p.spec.table.as_ref().unwrap().table == "big"));
    assert_eq!(copies[0].spec.columns, ["id", "pad"], "the generated column is not copied");
    let copied: i64 = copies.iter().map(|p| p.row_counts.as_ref().unwrap().tables[0].rows).sum();
    assert_eq!(copied, 20000, "the ranges hold every row once");
    assert_eq!(m.parts.iter().filter(|p| p.spec.large_objects).count(), 1);
    assert_eq!(m.parts.iter().filter(|p| p.spec.sequences).count(), 1);
    // The partitions, and the two ends of the foreign key, sit in different parts.
    assert_ne!(part_of(m, "m2025"), part_of(m, "m2026"));
    assert_ne!(part_of(m, "orders"), part_of(m, "customers"));
    assert!(part_of(m, "measurements").is_empty(), "a partitioned parent has no rows of its own");
    assert!(part_of(m, "order_totals").is_empty(), "a materialized view is refreshed in post-data");
    for t in ["dogs", "animals", "scratch", "secrets"] {
        assert_eq!(part_of(m, t).len(), 1, "{t} in exactly one part");
    }
    assert!(m.notes.iter().any(|n| n.contains("public.late") && n.contains("after the snapshot")), "{:?}", m.notes);
    assert!(m.row_counts.as_ref().unwrap().tables.iter().all(|t| t.table != "late"));

    // verify reads every part: blocks and hashes, pg_restore --list of the custom ones.
    let out = stack.cli(&["verify", &m.id]);
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    // A part reads on its own through `cat <id>/<part>`; the set as a whole does not.
    let out = stack.cli(&["cat", &format!("{}/schema", m.id)]);
    assert!(out.status.success() && out.stdout.starts_with(b"PGDMP"), "{}", String::from_utf8_lossy(&out.stderr));
    let out = stack.cli(&["cat", &m.id]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("is in parts"));

    // Plain tools, as the restore hints say: everything comes back.
    psql_blocking(&stack.pg, "hostile", "DROP TABLE late");
    restore_parts_plainly(&stack, m, "restored").await;
    let bin = &stack.pg.bin_dir;
    let (a, b) = blocking(|| (table_sums(&stack.pg, "hostile"), table_sums(&stack.pg, "restored")));
    assert_eq!(a, b);
    assert!(a.iter().any(|s| s.starts_with("largeobjects=2:")), "{a:?}");
    let (a, b) = blocking(|| (schema(&stack.pg, "hostile", bin), schema(&stack.pg, "restored", bin)));
    assert_eq!(a, b);
    assert_eq!(sequences(&stack, "hostile"), sequences(&stack, "restored"));
    let mv = "SELECT count(*) || ':' || sum(total) FROM order_totals";
    assert_eq!(psql_blocking(&stack.pg, "hostile", mv), psql_blocking(&stack.pg, "restored", mv), "refreshed");
    // Counted from the parts' streams (the default): each table's own rows, as pg_dump's COPY and
    // the COPY parts hold them, in the source and in the restored copy.
    let counts = m.row_counts.as_ref().unwrap();
    assert_eq!(counts.method, "stream");
    for t in &counts.tables {
        let sql = format!("SELECT count(*) FROM ONLY {}", table_sql(&TableRef::new(&t.schema, &t.table)));
        for db in ["hostile", "restored"] {
            let n = psql_blocking(&stack.pg, db, &sql);
            assert_eq!(n.parse::<i64>().unwrap(), t.rows, "{db}: {}.{}", t.schema, t.table);
        }
    }
    let counted = |t: &str| counts.tables.iter().find(|c| c.table == t).map(|c| c.rows);
    assert_eq!((counted("animals"), counted("dogs")), (Some(1), Some(1)), "a parent's own rows, not its child's");
    assert_eq!(counted("big"), Some(20000), "the COPY parts' lines, summed");
    assert_eq!(counted("scratch"), Some(100), "unlogged");
    assert_eq!(counted("measurements"), None, "a partitioned parent has no rows of its own");
}

static ACCOUNTS: [&str; 4] = ["acct_a", "acct_b", "acct_c", "acct_big"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_during_a_backup_in_parts_restore_to_the_invariant_total() {
    let mut stack = Stack::start().await;
    parts_stack_settings(&mut stack);
    psql_blocking(&stack.pg, "postgres", "CREATE DATABASE bank");
    let mut sql = String::new();
    for t in ACCOUNTS {
        let rows = if t == "acct_big" { 20000 } else { 1000 };
        sql.push_str(&format!(
            "CREATE TABLE {t} (id int PRIMARY KEY, balance bigint NOT NULL, pad text);
             INSERT INTO {t} SELECT g, 100, repeat('x', 200) FROM generate_series(1, {rows}) g;"
        ));
    }
    psql_blocking(&stack.pg, "bank", &sql);
    let total_sql = ACCOUNTS.map(|t| format!("(SELECT sum(balance) FROM {t})")).join(" + ");
    let invariant: i64 = psql_blocking(&stack.pg, "bank", &format!("SELECT {total_sql}")).parse().unwrap();
    assert_eq!(invariant, 23000 * 100);

    // Money moves between the tables (and so between parts), one transaction per transfer.
    let transfers = support::data::Transfers::start(stack.pg.client("bank").await, &ACCOUNTS);

    let dir = tempfile::tempdir().unwrap();
    let go = dir.path().join("go");
    let mut child = spawn_backup(&stack, "bank", &format!("backup.parts-planned=return(hold:{})", go.display()));
    blocking(|| wait_reached(&go, &mut child));
    // Transfers commit after the snapshot and before any part starts, and go on while they run.
    let at_snapshot = transfers.done();
    transfers.wait_for(at_snapshot + 200).await;
    std::fs::write(&go, "").unwrap();
    let (ok, out) = blocking(|| finish(child));
    let done = transfers.stop().await;
    assert!(ok, "{out}");
    assert!(done > at_snapshot + 200, "transfers ran during the backup");

    let store = stack.store().await;
    let found = manifests(&store, &pgvault::domain::layout::prefix(Some("main"), Some("bank"))).await;
    assert_eq!(found.len(), 1);
    let m = &found[0];
    let snapshot = m.snapshot.clone().unwrap();
    assert!(m.parts.iter().all(|p| p.snapshot == snapshot));
    assert!(m.parts.iter().any(|p| p.spec.kind == PartKind::Copy), "acct_big is split into ranges");
    let parts_with_accounts: BTreeSet<&str> = ACCOUNTS.iter().flat_map(|t| part_of(m, t)).collect();
    assert!(parts_with_accounts.len() >= 3, "accounts spread over parts: {parts_with_accounts:?}");

    restore_parts_plainly(&stack, m, "bank_restored").await;
    let restored: i64 = psql_blocking(&stack.pg, "bank_restored", &format!("SELECT {total_sql}")).parse().unwrap();
    assert_eq!(restored, invariant, "one consistent moment across every part");
    let now: i64 = psql_blocking(&stack.pg, "bank", &format!("SELECT {total_sql}")).parse().unwrap();
    assert_eq!(now, invariant);
    // And not merely the starting state: the snapshot saw the transfers committed before it.
    let changed: i64 =
        psql_blocking(&stack.pg, "bank_restored", "SELECT count(*) FROM acct_a WHERE balance <> 100").parse().unwrap();
    assert!(changed > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_that_ends_publishes_nothing_and_the_retry_succeeds() {
    let mut stack = Stack::start().await;
    parts_stack_settings(&mut stack);
    psql_blocking(&stack.pg, "postgres", "CREATE DATABASE shop");
    psql_blocking(
        &stack.pg,
        "shop",
        "CREATE TABLE a AS SELECT g AS id FROM generate_series(1, 3000) g;
         CREATE TABLE b AS SELECT g AS id FROM generate_series(1, 2000) g;",
    );
    let store = stack.store().await;
    let prefix = pgvault::domain::layout::prefix(Some("main"), Some("shop"));

    // The coordinator's session ends while the parts wait to start: its snapshot is gone, each
    // part fails naming why, and nothing is published.
    let dir = tempfile::tempdir().unwrap();
    let go = dir.path().join("go");
    let mut child = spawn_backup(&stack, "shop", &format!("backup.parts-planned=return(hold:{})", go.display()));
    blocking(|| wait_reached(&go, &mut child));
    let ended = psql_blocking(
        &stack.pg,
        "postgres",
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = 'shop' AND application_name = 'pgvault' AND state = 'idle in transaction'",
    );
    assert_eq!(ended, "1", "the coordinator's snapshot transaction");
    std::fs::write(&go, "").unwrap();
    let (ok, out) = blocking(|| finish(child));
    assert!(!ok, "{out}");
    assert!(out.contains("no longer exists (the coordinator ended)"), "{out}");
    assert!(manifests(&store, &prefix).await.is_empty(), "nothing published");

    // Killed hard after every part was committed, before the set manifest: still nothing
    // published; the committed parts are orphans of the job.
    let child = spawn_backup(&stack, "shop", "backup.parts-committed=return");
    let (ok, out) = blocking(|| finish(child));
    assert!(!ok, "{out}");
    assert!(out.contains("fail point backup.parts-committed: SIGKILL"), "{out}");
    assert!(manifests(&store, &prefix).await.is_empty(), "nothing published");
    let left: Vec<String> = store.list(&prefix).await.unwrap().into_iter().map(|b| b.name).collect();
    assert!(!left.is_empty() && left.iter().all(|n| !n.ends_with(".manifest.json")), "{left:?}");

    // The job again, as a whole, in a new snapshot: published; verify cleans the orphans.
    let out = stack.cli(&["backup", "--server", "main", "--database", "shop"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let found = manifests(&store, &prefix).await;
    assert_eq!(found.len(), 1);
    assert!(found[0].is_parts());
    // verify names exactly the killed attempt's parts as orphans (not backups), and reads the
    // published set.
    let out = stack.cli(&["verify", "--all"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("1 verified, 0 failed"), "{text}");
    let orphans: BTreeSet<&str> =
        text.lines().filter_map(|l| l.strip_prefix("orphan (data without manifest, not a backup): ")).collect();
    assert_eq!(orphans, left.iter().map(String::as_str).collect::<BTreeSet<_>>(), "{text}");
    assert!(found[0].data_blobs().iter().all(|b| !orphans.contains(b)));

    // A timeout for idle transactions set on the database does not end the coordinator's
    // snapshot while it waits for its parts: it turns the timeout off for its own transaction,
    // as pg_dump does for its sessions. Held at the plan until the coordinator has been idle in
    // its transaction for three times the timeout.
    psql_blocking(&stack.pg, "postgres", "ALTER DATABASE shop SET idle_in_transaction_session_timeout = '300ms'");
    let go = dir.path().join("go-idle");
    let mut child = spawn_backup(&stack, "shop", &format!("backup.parts-planned=return(hold:{})", go.display()));
    blocking(|| wait_reached(&go, &mut child));
    let deadline = Instant::now() + Duration::from_secs(60);
    while psql_blocking(
        &stack.pg,
        "postgres",
        "SELECT count(*) FROM pg_stat_activity WHERE datname = 'shop' AND application_name = 'pgvault' \
         AND state = 'idle in transaction' AND clock_timestamp() - state_change > interval '900 ms'",
    ) != "1"
    {
        assert!(Instant::now() < deadline, "the coordinator's transaction was never idle that long (or was ended)");
    }
    std::fs::write(&go, "").unwrap();
    let (ok, out) = blocking(|| finish(child));
    assert!(ok, "{out}");
    assert_eq!(manifests(&store, &prefix).await.len(), 2, "{out}");
    psql_blocking(&stack.pg, "postgres", "ALTER DATABASE shop RESET idle_in_transaction_session_timeout");
}
