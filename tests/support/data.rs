//! Shared data and checks for the end-to-end tests: the varied database, reading manifests
//! from a store, and content and schema fingerprints of a database.

use super::Cluster;
use pgvault::domain::manifest::Manifest;
use pgvault::seams::store::BlobStore;
use std::path::Path;
use std::process::Command;

/// The varied database's name (needs quoting).
pub const VARIED_DB: &str = "Round \"Trip\" DB";

/// SQL that fills the varied database: several schemas, text, numeric, timestamps, jsonb,
/// bytea, a large object, indexes, a view, and names that need quoting. Every row count is
/// proportional to `scale`: 5 makes a few hundred MB (180,000 orders a unit).
pub fn varied_sql(scale: u32) -> String {
    let orders = 180_000 * scale;
    let mixed = 40_000 * scale;
    let events = 20_000 * scale;
    let blob_md5s = 10_000 * scale;
    format!(
        r#"
CREATE SCHEMA sales;
CREATE SCHEMA "Weird Schema";
CREATE TABLE sales.orders (
    id bigserial PRIMARY KEY,
    customer text NOT NULL,
    amount numeric(12,2),
    placed_at timestamptz,
    doc jsonb,
    payload bytea
);
INSERT INTO sales.orders (customer, amount, placed_at, doc, payload)
SELECT md5(i::text) || ' ' || repeat(chr(65 + i % 26), i % 60),
       (i * 7.13) % 100000,
       timestamptz '2020-01-01 00:00:00+00' + i * interval '37 seconds',
       jsonb_build_object('i', i, 'tags', jsonb_build_array(md5((i * 3)::text), i % 7), 'ok', i % 2 = 0),
       decode(md5(i::text) || md5((i + 1)::text) || md5((i + 2)::text), 'hex')
FROM generate_series(1, {orders}) AS i;
CREATE INDEX orders_placed ON sales.orders (placed_at);
CREATE INDEX orders_doc ON sales.orders USING gin (doc);
CREATE TABLE "Weird Schema"."Mixed ""Quoted"" Table" ("Key Col" int PRIMARY KEY, "väl" text, note varchar(200));
INSERT INTO "Weird Schema"."Mixed ""Quoted"" Table"
SELECT i, repeat(md5(i::text), 1 + i % 5), CASE WHEN i % 3 = 0 THEN NULL ELSE 'note ' || i END
FROM generate_series(1, {mixed}) AS i;
CREATE TABLE public.events (at timestamp, kind text, n int);
INSERT INTO public.events SELECT timestamp '2024-02-29 12:00' + i * interval '1 minute', 'k' || (i % 13), i FROM generate_series(1, {events}) i;
CREATE TABLE public.blobs (name text PRIMARY KEY, lo oid);
INSERT INTO public.blobs SELECT 'big', lo_from_bytea(0, decode(string_agg(md5(i::text), ''), 'hex')) FROM generate_series(1, {blob_md5s}) i;
CREATE VIEW sales.big_orders AS SELECT id, amount FROM sales.orders WHERE amount > 50000;
ANALYZE;
"#
    )
}

/// Run blocking work (psql, pg_dump, the CLI) off the async runtime's worker.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// [`Cluster::psql`] through [`blocking`].
pub fn psql_blocking(c: &Cluster, db: &str, sql: &str) -> String {
    blocking(|| c.psql(db, sql))
}

/// Every manifest under `prefix`, in listing order.
pub async fn manifests(store: &dyn BlobStore, prefix: &str) -> Vec<Manifest> {
    let mut out = Vec::new();
    for b in store.list(prefix).await.unwrap() {
        if b.name.ends_with(".manifest.json") {
            out.push(Manifest::from_json(&b.name, &store.get(&b.name).await.unwrap()).unwrap());
        }
    }
    out
}

/// The names of the databases that match the SQL `LIKE` pattern, sorted.
pub fn databases_like(c: &Cluster, pattern: &str) -> Vec<String> {
    let out = c.psql("postgres", &format!("SELECT datname FROM pg_database WHERE datname LIKE '{pattern}' ORDER BY 1"));
    out.lines().map(str::to_string).collect()
}

/// Per-table and per-view content checksums (`name=count:sum`), sorted by name, and the large
/// objects' checksum last.
pub fn table_sums(c: &Cluster, db: &str) -> Vec<String> {
    let tables = c.psql(
        db,
        "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind IN ('r', 'v') AND n.nspname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1",
    );
    let mut sums = Vec::new();
    for t in tables.lines() {
        let sum = c.psql(
            db,
            &format!(
                "SELECT count(*) || ':' || coalesce(sum(('x' || substr(md5(t::text), 1, 15))::bit(60)::bigint), 0) FROM {t} t"
            ),
        );
        sums.push(format!("{t}={sum}"));
    }
    sums.push(format!(
        "largeobjects={}",
        c.psql(
            db,
            "SELECT count(*) || ':' || coalesce(sum(('x' || substr(md5(lo_get(oid)), 1, 15))::bit(60)::bigint), 0) FROM pg_largeobject_metadata"
        )
    ));
    sums
}

/// The schema as `pg_dump --schema-only --no-owner` from `bin` prints it, without comments,
/// blank lines and the per-dump `\restrict` key (pg_dump 15.14+). Compare two databases with
/// the same `bin`.
pub fn schema(c: &Cluster, db: &str, bin: &Path) -> String {
    let out = Command::new(bin.join("pg_dump"))
        .args(["--schema-only", "--no-owner", "-h", &c.host, "-p", &c.port.to_string(), "-U", &c.superuser])
        .arg(format!("--dbname=dbname='{}'", db.replace('\'', "\\'")))
        .env_remove("PGPASSWORD")
        .output()
        .unwrap();
    assert!(out.status.success(), "pg_dump --schema-only: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| {
            !l.starts_with("--")
                && !l.trim().is_empty()
                && !l.starts_with("\\restrict")
                && !l.starts_with("\\unrestrict")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A [`schema`] with each view's body dropped and its `CREATE VIEW` line kept: a view's body is
/// the server's own deparse, which differs between majors (16 stopped qualifying the columns of
/// a one-table query), so across versions compare views by their columns and content instead.
pub fn without_view_bodies(schema: &str) -> String {
    let mut kept = Vec::new();
    let mut in_view = false;
    for l in schema.lines() {
        if in_view {
            in_view = !l.trim_end().ends_with(';');
            continue;
        }
        if l.starts_with("CREATE VIEW ") {
            in_view = !l.trim_end().ends_with(';');
        }
        kept.push(l);
    }
    kept.join("\n")
}

/// Money moving between `tables` (each `id int, balance bigint` with ids 1 to 1000 at least),
/// one transaction per transfer, as fast as the server takes them, until stopped: their total
/// never changes. For consistency tests of backups taken meanwhile.
pub struct Transfers {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    done: std::sync::Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Transfers {
    pub fn start(client: tokio_postgres::Client, tables: &'static [&'static str]) -> Transfers {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let done = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (s, d) = (stop.clone(), done.clone());
        let n = tables.len() as u64;
        let task = tokio::spawn(async move {
            let mut i: u64 = 0;
            while !s.load(Ordering::Relaxed) {
                i += 1;
                let (from, to) = (tables[(i % n) as usize], tables[((i + 1 + i / n) % n) as usize]);
                let (a, b, amount) = (1 + (i * 7919) % 1000, 1 + (i * 104_729) % 1000, 1 + i % 50);
                client
                    .batch_execute(&format!(
                        "BEGIN; UPDATE {from} SET balance = balance - {amount} WHERE id = {a};
                         UPDATE {to} SET balance = balance + {amount} WHERE id = {b}; COMMIT"
                    ))
                    .await
                    .unwrap();
                d.fetch_add(1, Ordering::Relaxed);
            }
        });
        Transfers { stop, done, task }
    }

    /// Transfers committed so far.
    pub fn done(&self) -> u64 {
        self.done.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Wait (without sleeping: the runtime runs the workload meanwhile) until at least `n`
    /// transfers have committed.
    pub async fn wait_for(&self, n: u64) {
        while self.done() < n {
            tokio::task::yield_now().await;
        }
    }

    /// Stop after the transfer under way; returns how many committed.
    pub async fn stop(self) -> u64 {
        let Transfers { stop, done, task } = self;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        task.await.unwrap();
        done.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// The hostile database for row counts: partitions (a range-partitioned parent, its partitions
/// and a default one), inheritance (rows in parent and child), an unlogged table, empty tables,
/// a table without columns, rows with embedded newlines, carriage returns, tabs, backslashes and
/// a `\.` line, NULLs, an identity column, row level security, a materialized view and large
/// objects.
pub fn hostile_sql() -> String {
    r#"
CREATE TABLE measure (at date NOT NULL, v int) PARTITION BY RANGE (at);
CREATE TABLE measure_2024 PARTITION OF measure FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE measure_2025 PARTITION OF measure FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE measure_other PARTITION OF measure DEFAULT;
INSERT INTO measure SELECT date '2024-01-01' + i, i FROM generate_series(0, 900) i;
CREATE TABLE animal (name text, legs int);
CREATE TABLE bird (wings int) INHERITS (animal);
INSERT INTO animal VALUES ('cat', 4), ('snake', 0);
INSERT INTO bird SELECT 'bird ' || i, 2, 2 FROM generate_series(1, 37) i;
CREATE UNLOGGED TABLE scratch (k int);
INSERT INTO scratch SELECT generate_series(1, 1234);
CREATE TABLE empty_one (k int);
CREATE TABLE nocols ();
INSERT INTO nocols SELECT FROM generate_series(1, 11);
CREATE TABLE texts (id int GENERATED ALWAYS AS IDENTITY, body text, raw bytea);
INSERT INTO texts (body, raw) VALUES
  (E'line one\nline two\n', E'\\x0a0d5c'),
  (E'carriage\rreturn\ttab', NULL),
  (E'back\\slash \\. and \\N', E'\\x00'),
  (E'\\.', NULL),
  (NULL, NULL),
  ('', '');
INSERT INTO texts (body) SELECT repeat(E'x\n', i % 5) || i FROM generate_series(1, 500) i;
CREATE TABLE secret (owner_name text, v int);
ALTER TABLE secret ENABLE ROW LEVEL SECURITY;
CREATE POLICY own ON secret USING (owner_name = current_user);
INSERT INTO secret SELECT 'nobody', i FROM generate_series(1, 17) i;
CREATE MATERIALIZED VIEW texts_summary AS SELECT count(*) AS n FROM texts;
SELECT lo_from_bytea(0, decode(repeat('0a5c2e0a', 1000), 'hex')) FROM generate_series(1, 3);
"#
    .to_string()
}
