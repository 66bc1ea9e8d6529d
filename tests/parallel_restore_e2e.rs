//! Parallel restore of a backup in parts (manifest format version 3) straight from storage, end
//! to end on the local stack (PostgreSQL, Azurite over HTTPS with OAuth, the real `pgvault`):
//! pre-data, the data and COPY parts two at a time, post-data, compared with the source; a
//! corrupt block in one part; as-files with its README run by plain tools.
//!
//! The part-sets are made here by hand from plain `pg_dump` outputs in one exported snapshot
//! (the way the parallel backup makes them, see DESIGN.md "Manifest format version 3"), uploaded
//! through the store and published with a set manifest, so the restore is proven on its own.

#[path = "support/app.rs"]
mod app;
mod support;

use app::Stack;
use pgvault::domain::manifest::Manifest;
use pgvault::seams::store::BlobStore;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::process::Command;
use support::Cluster;
use support::data::{blocking, databases_like, schema, table_sums};

const SOURCE: &str = "shop";

fn make_source(c: &Cluster) {
    c.psql("postgres", &format!("CREATE DATABASE {SOURCE}"));
    c.psql(SOURCE, SOURCE_SQL);
}

/// Every hostile case of issue 15 in one small database: a foreign key between tables that go to
/// different parts, an identity column and a free sequence, a partitioned table whose partitions
/// sit in different parts, inheritance, an unlogged table, a materialized view, a table with row
/// level security, a large object, and a "huge" table split into two ctid ranges.
const SOURCE_SQL: &str = r#"
CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL);
INSERT INTO customers SELECT i, 'customer ' || i FROM generate_series(1, 500) i;
CREATE TABLE orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                     customer int NOT NULL REFERENCES customers (id), total numeric(10,2),
                     note_len int GENERATED ALWAYS AS (length(coalesce(note, ''))) STORED, note text);
INSERT INTO orders (customer, total, note) SELECT 1 + i % 500, i * 1.25, repeat('n', i % 7) FROM generate_series(1, 3000) i;
CREATE INDEX orders_customer ON orders (customer);
CREATE SEQUENCE invoice_no START 1000;
SELECT setval('invoice_no', 4242);
CREATE TABLE readings (at_day int NOT NULL, v double precision) PARTITION BY RANGE (at_day);
CREATE TABLE readings_early PARTITION OF readings FOR VALUES FROM (0) TO (100);
CREATE TABLE readings_late PARTITION OF readings FOR VALUES FROM (100) TO (1000);
INSERT INTO readings SELECT i % 1000, i / 7.0 FROM generate_series(1, 2000) i;
CREATE TABLE animals (id int PRIMARY KEY, name text);
CREATE TABLE dogs (good boolean DEFAULT true) INHERITS (animals);
INSERT INTO animals VALUES (1, 'cat'), (2, 'owl');
INSERT INTO dogs VALUES (3, 'rex', true), (4, 'fido', false);
CREATE UNLOGGED TABLE cache (k text PRIMARY KEY, v text);
INSERT INTO cache SELECT 'k' || i, md5(i::text) FROM generate_series(1, 100) i;
CREATE MATERIALIZED VIEW customer_totals AS
    SELECT customer, count(*) AS n, sum(total) AS total FROM orders GROUP BY customer;
CREATE UNIQUE INDEX customer_totals_customer ON customer_totals (customer);
CREATE TABLE secrets (id int PRIMARY KEY, owner_name text, body text);
ALTER TABLE secrets ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_rows ON secrets USING (owner_name = current_user);
INSERT INTO secrets SELECT i, 'user' || (i % 3), 'secret ' || i FROM generate_series(1, 60) i;
CREATE TABLE documents (name text PRIMARY KEY, lo oid);
INSERT INTO documents SELECT 'manual', lo_from_bytea(0, decode(repeat(md5('x'), 200), 'hex'));
CREATE TABLE huge (id int PRIMARY KEY, customer int REFERENCES customers (id), payload text, "Odd Col" text);
INSERT INTO huge SELECT i, 1 + i % 500, repeat(md5(i::text), 4), CASE WHEN i % 5 = 0 THEN NULL ELSE 'tab	and \ slash' END
FROM generate_series(1, 20000) i;
CREATE TRIGGER huge_touch BEFORE UPDATE ON huge FOR EACH ROW EXECUTE FUNCTION suppress_redundant_updates_trigger();
ANALYZE;
"#;

/// What lands in which data part: the parent (`customers`) and its referencing tables are apart,
/// so are the two partitions, and the inheritance parent and child.
const DATA_01: &[&str] = &["customers", "readings_early", "animals", "cache", "secrets"];
const DATA_02: &[&str] = &["orders", "readings_late", "dogs", "documents"];

fn cli_ok(stack: &Stack, args: &[&str]) -> String {
    let out = blocking(|| stack.cli(args));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "pgvault {args:?} failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

fn pg_dump(c: &Cluster, db: &str, args: &[String]) -> Vec<u8> {
    let out = Command::new(c.bin_dir.join("pg_dump"))
        .args(["--format=custom", "--compress=0", "-h", &c.host, "-p", &c.port.to_string(), "-U", &c.superuser])
        .arg(format!("--dbname={db}"))
        .args(args)
        .env_remove("PGPASSWORD")
        .output()
        .unwrap();
    assert!(out.status.success(), "pg_dump {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// Upload `raw` zstd-compressed as one blob, and describe it as a part of `blocks`-byte blocks.
async fn upload_part(store: &dyn BlobStore, blob: &str, raw: &[u8], spec: Value, rows: Option<i64>) -> Value {
    let stored = zstd::encode_all(raw, 3).unwrap();
    store.put(blob, bytes::Bytes::from(stored.clone()), &Default::default()).await.unwrap();
    let blocks: Vec<Value> =
        stored.chunks(16 << 10).map(|b| json!({ "size": b.len(), "sha256": hex::encode(Sha256::digest(b)) })).collect();
    let mut part = spec;
    let copy = part["kind"] == "copy";
    let extra = json!({
        "data_blob": blob, "raw_bytes": raw.len(), "stored_bytes": stored.len(),
        "sha256": hex::encode(Sha256::digest(&stored)), "blocks": blocks, "snapshot": "S",
        "archive_format": if copy { "copy-text" } else { "custom" }, "command": [], "restore_hint": "",
        "row_counts": rows.map(|n| json!({ "method": "exact", "tables": [
            { "schema": "public", "table": part["table"]["table"], "rows": n }] })),
    });
    part.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    part
}

/// Back `db` up in parts by hand, as the parallel backup does, and publish its set manifest:
/// a schema part, two data parts (tables as [`DATA_01`] / [`DATA_02`]; the sequences and the
/// large objects in the second) and two COPY parts of `huge` split at its middle page, all in one
/// exported snapshot with exact row counts taken in it.
async fn back_up_in_parts(stack: &Stack, db: &str, job: &str) -> Manifest {
    let c = &stack.pg;
    let client = c.client(db).await;
    client.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await.unwrap();
    let snapshot: String = client.query_one("SELECT pg_export_snapshot()", &[]).await.unwrap().get(0);
    let snap = format!("--snapshot={snapshot}");
    let tables = |names: &[&str]| names.iter().map(|t| format!("--table=public.{t}")).collect::<Vec<_>>();
    let schema = blocking(|| {
        pg_dump(c, db, &[snap.clone(), "--section=pre-data".into(), "--section=post-data".into(), "--no-blobs".into()])
    });
    let d1 = blocking(|| pg_dump(c, db, &[&[snap.clone(), "--data-only".into()][..], &tables(DATA_01)].concat()));
    let mut d2_args = vec![snap.clone(), "--data-only".into(), "--blobs".into()];
    d2_args.extend(tables(DATA_02));
    d2_args.extend(tables(&["invoice_no"]));
    let d2 = blocking(|| pg_dump(c, db, &d2_args));
    let pages: i64 = client.query_one("SELECT pg_relation_size('huge') / 8192", &[]).await.unwrap().get(0);
    let mid = pages / 2;
    let mut copies = Vec::new();
    for (from, to) in [(0, Some(mid)), (mid, None)] {
        let cond = match to {
            Some(to) => format!("ctid >= '({from},0)'::tid AND ctid < '({to},0)'::tid"),
            None => format!("ctid >= '({from},0)'::tid"),
        };
        let rows: i64 =
            client.query_one(&format!("SELECT count(*) FROM ONLY huge WHERE {cond}"), &[]).await.unwrap().get(0);
        let sql = format!("COPY (SELECT id, customer, payload, \"Odd Col\" FROM ONLY huge WHERE {cond}) TO STDOUT");
        let stream = client.copy_out(&sql).await.unwrap();
        use futures::TryStreamExt;
        let chunks: Vec<bytes::Bytes> = stream.try_collect().await.unwrap();
        copies.push((from, to, chunks.concat(), rows));
    }
    let counted = client
        .query(
            "SELECT n.nspname::text, c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind = 'r' AND n.nspname = 'public' ORDER BY 2",
            &[],
        )
        .await
        .unwrap();
    let mut counts = Vec::new();
    for r in counted {
        let (s, t): (String, String) = (r.get(0), r.get(1));
        let n: i64 = client.query_one(&format!("SELECT count(*) FROM public.{t}"), &[]).await.unwrap().get(0);
        counts.push(json!({ "schema": s, "table": t, "rows": n }));
    }
    client.batch_execute("COMMIT").await.unwrap();

    let store = stack.store().await;
    let now = time::OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
    let paths =
        pgvault::domain::layout::backup_paths(pgvault::domain::layout::BackupKind::Database, "main", db, now, job);
    let blob = |name: &str, ext: &str| format!("{}.0000abcd.{name}.{ext}.zst", paths.id);
    let names = |ts: &[&str]| ts.iter().map(|t| json!({ "schema": "public", "table": t })).collect::<Vec<_>>();
    let mut parts = vec![
        upload_part(&store, &blob("schema", "dump"), &schema, json!({ "name": "schema", "kind": "schema" }), None).await,
        upload_part(&store, &blob("data-01", "dump"), &d1, json!({ "name": "data-01", "kind": "data", "tables": names(DATA_01) }), None)
            .await,
        upload_part(
            &store,
            &blob("data-02", "dump"),
            &d2,
            json!({ "name": "data-02", "kind": "data", "tables": names(DATA_02), "large_objects": true, "sequences": true,
                    "sequence_list": [{ "sequence": { "schema": "public", "table": "invoice_no" } }] }),
            None,
        )
        .await,
    ];
    for (i, (from, to, raw, rows)) in copies.into_iter().enumerate() {
        let name = format!("copy-{:02}", i + 1);
        let spec = json!({ "name": name, "kind": "copy", "table": { "schema": "public", "table": "huge" },
                           "columns": ["id", "customer", "payload", "Odd Col"],
                           "ctid_range": { "from_page": from, "to_page": to } });
        parts.push(upload_part(&store, &blob(&name, "copy"), &raw, spec, Some(rows)).await);
    }
    let sum = |k: &str| parts.iter().map(|p| p[k].as_u64().unwrap()).sum::<u64>();
    let version: String = c.client("postgres").await.query_one("SHOW server_version", &[]).await.unwrap().get(0);
    let num: String = c.client("postgres").await.query_one("SHOW server_version_num", &[]).await.unwrap().get(0);
    let m = json!({
        "format": "pgvault-backup-manifest", "format_version": 3, "pgvault_version": "test",
        "id": paths.id, "kind": "database", "job_id": job, "server": "main", "database": db,
        "server_version": version, "server_version_num": num.parse::<u32>().unwrap(),
        "tool": { "name": "pg_dump", "version": format!("pg_dump (PostgreSQL) {version}"), "major": c.version, "args": [] },
        "archive_format": "parts", "compression": { "algorithm": "zstd", "level": 3 },
        "data_blob": "", "raw_bytes": sum("raw_bytes"), "stored_bytes": sum("stored_bytes"), "sha256": "", "blocks": [],
        "requested_at": now.format(&time::format_description::well_known::Rfc3339).unwrap(),
        "started_at": now.format(&time::format_description::well_known::Rfc3339).unwrap(),
        "finished_at": now.format(&time::format_description::well_known::Rfc3339).unwrap(),
        "row_counts": { "method": "exact", "tables": counts },
        "restore_hint": "", "layout": "parts", "snapshot": "S", "parts": parts,
    });
    let text = serde_json::to_vec_pretty(&m).unwrap();
    let manifest = Manifest::from_json(&paths.manifest, &text).unwrap();
    manifest.check_consistent().unwrap();
    store.put(&paths.manifest, bytes::Bytes::from(text), &Default::default()).await.unwrap();
    manifest
}

fn temp_databases(c: &Cluster) -> Vec<String> {
    databases_like(c, "pgvault\\_restore\\_%")
}

/// The restored database equals the source: content (every table and view, the large objects),
/// schema (indexes, constraints, triggers, policies, the RLS flag), sequences, and the
/// materialized view populated.
fn assert_same(c: &Cluster, restored: &str) {
    assert_eq!(table_sums(c, restored), table_sums(c, SOURCE), "content");
    assert_eq!(schema(c, restored, &c.bin_dir), schema(c, SOURCE, &c.bin_dir), "schema");
    let facts = "SELECT (SELECT last_value || '/' || is_called FROM invoice_no) || ' ' || \
                 (SELECT last_value FROM orders_id_seq) || ' ' || \
                 (SELECT count(*) || ':' || sum(n) FROM customer_totals) || ' ' || \
                 (SELECT relrowsecurity FROM pg_class WHERE relname = 'secrets') || ' ' || \
                 (SELECT count(*) FROM pg_constraint WHERE contype = 'f') || ' ' || \
                 (SELECT count(*) FROM dogs) || '/' || (SELECT count(*) FROM animals) || ' ' || \
                 (SELECT count(*) FROM readings_early) || '/' || (SELECT count(*) FROM readings_late)";
    let expected = c.psql(SOURCE, facts);
    assert_eq!(c.psql(restored, facts), expected);
    assert!(expected.starts_with("4242/true 3000 500:3000 true 2 2/4 "), "{expected}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_part_set_restores_two_parts_at_a_time_like_the_source() {
    let stack = Stack::start().await;
    blocking(|| make_source(&stack.pg));
    let m = back_up_in_parts(&stack, SOURCE, "parts1").await;
    assert_eq!(m.parts.len(), 5);
    let out = cli_ok(
        &stack,
        &[
            "restore",
            "--server",
            "main",
            "--database",
            SOURCE,
            "--target-database",
            "shop_copy",
            "--jobs",
            "2",
            "--json",
        ],
    );
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let db = &v["tasks"][0]["report"]["database"];
    assert_eq!(db["method"], "parts", "{v}");
    assert!(db["method_reason"].as_str().unwrap().contains("up to 2 parts at once"), "{db}");
    assert!(
        db["method_reason"].as_str().unwrap().contains("pg_restore --jobs=2"),
        "post-data from a scratch copy: {db}"
    );
    let parts: Vec<&str> = db["parts"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(parts[0], "schema", "{db}");
    assert_eq!(parts.len(), 5, "{db}");
    let copies: u64 = db["parts"].as_array().unwrap().iter().filter_map(|p| p["rows"].as_u64()).sum();
    assert_eq!(copies, 20000, "the two COPY parts loaded every row of huge: {db}");
    assert_eq!(db["tables_checked"], m.row_counts.as_ref().unwrap().tables.len(), "{db}");
    blocking(|| assert_same(&stack.pg, "shop_copy"));
    assert!(blocking(|| temp_databases(&stack.pg)).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_block_in_one_data_part_fails_before_the_target_is_touched() {
    let stack = Stack::start().await;
    blocking(|| {
        make_source(&stack.pg);
        // The database to replace: a failed restore must leave it exactly as it is.
        stack.pg.psql("postgres", "CREATE DATABASE shop_live");
        stack.pg.psql("shop_live", "CREATE TABLE keep (v text); INSERT INTO keep VALUES ('untouched')");
    });
    let m = back_up_in_parts(&stack, SOURCE, "corrupt1").await;
    // One byte of the last block of data-02 flipped in storage (the schema part and data-01 are
    // intact, so pre-data and the other part run first).
    let part = m.part("data-02").unwrap();
    let store = stack.store().await;
    let mut stored = store.get(&part.data_blob).await.unwrap().to_vec();
    let at = stored.len() - 10;
    stored[at] ^= 0x55;
    store.put(&part.data_blob, bytes::Bytes::from(stored), &Default::default()).await.unwrap();
    let out = blocking(|| {
        stack.cli(&[
            "restore",
            "--server",
            "main",
            "--database",
            SOURCE,
            "--mode",
            "replace",
            "--target-database",
            "shop_live",
        ])
    });
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let block = part.blocks.len() - 1;
    assert!(
        text.contains(&format!("backup \"{}/data-02\" is corrupt: block {block}", m.id)),
        "names the part and the block: {text}"
    );
    assert!(text.contains("temporary database") && text.contains("dropped"), "{text}");
    assert_eq!(blocking(|| stack.pg.psql("shop_live", "SELECT v FROM keep")), "untouched");
    assert!(blocking(|| temp_databases(&stack.pg)).is_empty(), "the temporary database was dropped");
    assert!(blocking(|| databases_like(&stack.pg, "shop\\_live\\_pre\\_restore%")).is_empty(), "nothing renamed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as_files_gives_one_file_per_part_and_a_readme_whose_commands_restore_it() {
    let stack = Stack::start().await;
    blocking(|| make_source(&stack.pg));
    let m = back_up_in_parts(&stack, SOURCE, "files1").await;
    let out = cli_ok(
        &stack,
        &["restore", "--server", "main", "--database", SOURCE, "--mode", "as-files", "--container", "out", "--json"],
    );
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let files = v["tasks"][0]["report"]["files"].as_array().unwrap().clone();
    let names: Vec<String> = files.iter().map(|f| f["blob"].as_str().unwrap().to_string()).collect();
    let mut want: Vec<String> = m.parts.iter().map(|p| p.data_blob.clone()).collect();
    want.push(format!("{}.manifest.json", m.id));
    want.push(format!("{}{}", m.id, pgvault::features::restore::README_SUFFIX));
    assert_eq!(names, want, "one file per part, the manifest and the README");
    assert!(files.iter().all(|f| f["url"].as_str().unwrap().contains("sig=")), "a read-only URL each");

    // Download them and run the README's commands, as someone without pgvault would.
    let options =
        pgvault::azure::client_options(Some(stack.ca.ca_pem_path()), &pgvault::azure::RetrySettings::fast()).unwrap();
    let out_store =
        pgvault::azure::AzureBlobStore::new(&stack.azurite.blob_endpoint, "out", support::test_credential(), options)
            .await
            .unwrap();
    let dir = tempfile::tempdir().unwrap();
    for n in &names {
        let data = out_store.get(n).await.unwrap();
        let file = dir.path().join(n.rsplit('/').next().unwrap());
        std::fs::write(&file, &data).unwrap();
        if let Some(f) = files.iter().find(|f| f["blob"] == n.as_str()) {
            assert_eq!(f["sha256"], hex::encode(Sha256::digest(&data)), "{n}");
        }
    }
    let readme = std::fs::read_to_string(dir.path().join(format!(
        "{}{}",
        m.id.rsplit('/').next().unwrap(),
        pgvault::features::restore::README_SUFFIX
    )))
    .unwrap();
    let pre = readme.find("1. ").expect("step 1");
    let data = readme.find("2. ").expect("step 2");
    let post = readme.find("3. ").expect("step 3");
    assert!(pre < data && data < post, "{readme}");
    let commands: Vec<String> = readme
        .lines()
        .filter(|l| l.starts_with("   ") && l.contains("<target>"))
        .map(|l| l.trim().replace("<target>", "from_files"))
        .collect();
    assert_eq!(commands.len(), m.parts.len() + 1, "pre-data, every part, post-data: {readme}");
    blocking(|| {
        stack.pg.psql("postgres", "CREATE DATABASE from_files TEMPLATE template0");
        let c = &stack.pg;
        for cmd in &commands {
            let out = Command::new("bash")
                .args(["-o", "pipefail", "-c", cmd])
                .current_dir(dir.path())
                .env("PATH", format!("{}:/usr/bin:/bin", c.bin_dir.display()))
                .env("PGHOST", &c.host)
                .env("PGPORT", c.port.to_string())
                .env("PGUSER", &c.superuser)
                .output()
                .unwrap();
            assert!(out.status.success(), "{cmd}: {}", String::from_utf8_lossy(&out.stderr));
        }
        assert_same(c, "from_files");
    });
}

/// The consistency proof's restore side: transfers (one transaction each, the total never
/// changes) run while `pgvault backup` makes a backup in parts; `pgvault restore` of it, two
/// parts at a time, gives exactly the invariant total, over tables in different parts and a
/// table split into COPY ranges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_during_a_parallel_backup_restore_to_the_invariant_total() {
    static ACCOUNTS: [&str; 3] = ["acct_a", "acct_b", "acct_big"];
    let mut stack = Stack::start().await;
    stack.set("PGVAULT_PARALLEL_ABOVE_MIB", "0");
    stack.set("PGVAULT_BACKUP_JOBS", "2");
    blocking(|| {
        stack.pg.psql("postgres", "CREATE DATABASE bank");
        // COPY parts are text: the values must not depend on the session's styles.
        stack.pg.psql("postgres", "ALTER DATABASE bank SET DateStyle = 'SQL, DMY'");
        stack.pg.psql("postgres", "ALTER DATABASE bank SET IntervalStyle = 'sql_standard'");
        for t in ACCOUNTS {
            let rows = if t == "acct_big" { 20000 } else { 1000 };
            stack.pg.psql(
                "bank",
                &format!(
                    "CREATE TABLE {t} (id int PRIMARY KEY, balance bigint NOT NULL, pad text, at timestamptz,
                                       span interval, f float8);
                     INSERT INTO {t} SELECT g, 100, repeat('x', 200), timestamptz '2026-01-13 10:00Z' + g * interval '7 h',
                            make_interval(days => -g, secs => g / 3.0), 1.0 / g
                     FROM generate_series(1, {rows}) g; ANALYZE {t};"
                ),
            );
        }
    });
    let total_sql = ACCOUNTS.map(|t| format!("(SELECT sum(balance) FROM {t})")).join(" + ");
    let invariant = 22000 * 100;
    let transfers = support::data::Transfers::start(stack.pg.client("bank").await, &ACCOUNTS);
    transfers.wait_for(50).await;
    let before = transfers.done();
    cli_ok(&stack, &["backup", "--server", "main", "--database", "bank"]);
    let during = transfers.done() - before;
    transfers.stop().await;
    assert!(during > 0, "transfers committed while the backup ran");

    let store = stack.store().await;
    let m =
        support::data::manifests(&store, &pgvault::domain::layout::prefix(Some("main"), Some("bank"))).await.remove(0);
    assert!(m.is_parts(), "{m:?}");
    let snapshot = m.snapshot.clone().unwrap();
    assert!(m.parts.iter().all(|p| p.snapshot == snapshot), "every part in the coordinator's snapshot");
    let copies = m.parts.iter().filter(|p| p.spec.kind == pgvault::domain::parts::PartKind::Copy).count();
    assert!(copies >= 2, "acct_big is split into COPY ranges: {:?}", m.parts);

    let out = cli_ok(
        &stack,
        &["restore", "--server", "main", "--database", "bank", "--target-database", "bank_copy", "--json"],
    );
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let db = &v["tasks"][0]["report"]["database"];
    assert_eq!(db["method"], "parts", "{db}");
    assert!(db["method_reason"].as_str().unwrap().contains("up to 2 parts at once"), "the default jobs: {db}");
    assert_eq!(db["parts"].as_array().unwrap().len(), m.parts.len(), "{db}");
    let restored: i64 = blocking(|| stack.pg.psql("bank_copy", &format!("SELECT {total_sql}"))).parse().unwrap();
    assert_eq!(restored, invariant, "one consistent moment across every part");
    let moved: i64 =
        blocking(|| stack.pg.psql("bank_copy", "SELECT count(*) FROM acct_a WHERE balance <> 100")).parse().unwrap();
    assert!(moved > 0, "the restored copy holds transfers, not just the starting state");
    let values = "SELECT md5(string_agg(format('%s %s %s %s', id, at, span, f), ',' ORDER BY id)) FROM acct_big";
    assert_eq!(
        blocking(|| stack.pg.psql("bank_copy", values)),
        blocking(|| stack.pg.psql("bank", values)),
        "timestamps, intervals and floats of the COPY parts"
    );

    // A drill of the backup in parts goes through the same restore.
    stack.set("PGVAULT_DRILL_SERVER", "main");
    let out = cli_ok(&stack, &["drill"]);
    assert!(out.contains("1 drills, 0 failed"), "{out}");
    assert!(blocking(|| databases_like(&stack.pg, "pgvault\\_drill\\_%")).is_empty(), "no drill database left");
}
