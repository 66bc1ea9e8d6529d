//! Row counts read from the archive stream, against `count(*)`: the parser on real pg_dump
//! archives (PostgreSQL 15's and a newer pg_dump's), backups in `cross-check` mode on the varied
//! and the hostile databases, a restore that checks stream counts as exact, the same counts from
//! a backup in parts (summed over its parts' streams) as from one archive, and
//! `pgvault restore --table` reading one table from Blob by range.

#[path = "support/app.rs"]
mod app;
mod support;

use app::Stack;
use pgvault::domain::archive::{self, BlockKind, Scanner};
use pgvault::domain::parts::PartKind;
use pgvault::seams::pg::quote_ident;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use support::data::{VARIED_DB, blocking, hostile_sql, manifests, psql_blocking, varied_sql};
use support::pg::PG15_BIN;
use support::{Cluster, newer_bin_dir};

/// `pg_dump -Fc -Z0` of `db` to a pipe, as the backup runs it.
fn dump(c: &Cluster, bin: &Path, db: &str) -> Vec<u8> {
    let out = Command::new(bin.join("pg_dump"))
        .args(["--format=custom", "--compress=0", "--no-password"])
        .arg(format!(
            "--dbname=host={} port={} user={} dbname='{}'",
            c.host,
            c.port,
            c.superuser,
            db.replace('\'', "\\'")
        ))
        .env_remove("PGDATABASE")
        .output()
        .expect("run pg_dump");
    assert!(out.status.success(), "pg_dump: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// Each table's own rows (`count(*) FROM ONLY`), as `schema.table -> rows`, for the tables the
/// archive holds data of.
fn own_rows(c: &Cluster, db: &str, tables: &[(String, String)]) -> BTreeMap<String, u64> {
    tables
        .iter()
        .map(|(s, t)| {
            let n = c.psql(db, &format!("SELECT count(*) FROM ONLY {}.{}", quote_ident(s), quote_ident(t)));
            (format!("{s}.{t}"), n.trim().parse().unwrap())
        })
        .collect()
}

/// The archive's COPY row counts, as `schema.table -> rows`.
fn stream_rows(a: &archive::Archive) -> BTreeMap<String, u64> {
    a.blocks
        .iter()
        .filter(|b| b.kind == BlockKind::TableData)
        .map(|b| {
            let e = a.entry(b.dump_id).unwrap();
            (format!("{}.{}", e.namespace.as_deref().unwrap(), e.tag), b.rows.unwrap())
        })
        .collect()
}

#[test]
fn the_parser_counts_every_row_of_real_archives_split_anywhere() {
    let c = Cluster::start();
    c.psql("postgres", "CREATE DATABASE hostile");
    c.psql("hostile", &hostile_sql());
    c.psql("postgres", &format!("CREATE DATABASE {}", quote_ident(VARIED_DB)));
    c.psql(VARIED_DB, &varied_sql(1));
    let mut bins = vec![Path::new(PG15_BIN).to_path_buf()];
    bins.extend(newer_bin_dir());
    let mut versions = Vec::new();
    for bin in &bins {
        for db in ["hostile", VARIED_DB] {
            let bytes = dump(&c, bin, db);
            let whole = archive::scan(&bytes).unwrap_or_else(|e| panic!("{db} by {}: {e}", bin.display()));
            versions.push(whole.header.version);
            // Split at awkward places: every 4093 bytes, and byte by byte through the TOC.
            let mut s = Scanner::new();
            for b in bytes[..whole.toc_length as usize + 64].iter() {
                s.feed(std::slice::from_ref(b)).unwrap();
            }
            for piece in bytes[whole.toc_length as usize + 64..].chunks(4093) {
                s.feed(piece).unwrap();
            }
            assert_eq!(s.finish().unwrap(), whole, "{db}: the same whatever the splits");

            let counted = stream_rows(&whole);
            let tables: Vec<(String, String)> =
                counted.keys().map(|k| k.split_once('.').map(|(a, b)| (a.into(), b.into())).unwrap()).collect();
            assert_eq!(counted, own_rows(&c, db, &tables), "{db} by {}", bin.display());
            // The blocks tile the data: each starts where the previous ended, the last at the end.
            let mut at = whole.toc_length;
            for b in &whole.blocks {
                assert_eq!(
                    (b.offset, bytes[b.offset as usize]),
                    (at, if b.kind == BlockKind::TableData { 1 } else { 3 })
                );
                at += b.length;
            }
            assert_eq!(at, bytes.len() as u64);
            if db == "hostile" {
                for t in
                    ["public.measure_2024", "public.measure_other", "public.animal", "public.bird", "public.scratch"]
                {
                    assert!(counted.contains_key(t), "{t} in {counted:?}");
                }
                assert_eq!(counted["public.nocols"], 11, "a table without columns: one empty line a row");
                assert_eq!(counted["public.texts"], 506);
                assert_eq!(counted["public.empty_one"], 0);
                assert_eq!(counted["public.animal"], 2, "a parent's COPY holds its own rows only");
                let los = whole.blocks.iter().filter(|b| b.kind == BlockKind::LargeObjects).map(|b| b.large_objects);
                assert_eq!(los.sum::<u64>(), 3);
            }
        }
    }
    assert!(versions.contains(&(1, 14, 0)), "PostgreSQL 15's pg_dump writes 1.14: {versions:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_counts_agree_with_count_star_and_a_restore_checks_them() {
    let mut stack = Stack::start().await;
    psql_blocking(&stack.pg, "postgres", "CREATE DATABASE hostile");
    psql_blocking(&stack.pg, "hostile", &hostile_sql());
    psql_blocking(&stack.pg, "postgres", &format!("CREATE DATABASE {}", quote_ident(VARIED_DB)));
    psql_blocking(&stack.pg, VARIED_DB, &varied_sql(1));
    stack.set("PGVAULT_ROW_COUNTS", "cross-check");
    for db in ["hostile", VARIED_DB] {
        let out = blocking(|| stack.cli(&["backup", "--server", "main", "--database", db]));
        assert!(out.status.success(), "{db}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let store = stack.store().await;
    let hostile = manifests(&store, "main/hostile/").await.remove(0);
    let counts = hostile.row_counts.as_ref().unwrap();
    assert_eq!(counts.method, "cross-check", "stream and count(*) agreed");
    let by_name: BTreeMap<String, i64> =
        counts.tables.iter().map(|t| (format!("{}.{}", t.schema, t.table), t.rows)).collect();
    assert_eq!(by_name["public.texts"], 506);
    assert_eq!(by_name["public.nocols"], 11);
    assert_eq!(by_name["public.animal"], 2);
    assert_eq!(by_name["public.bird"], 37);
    assert_eq!(by_name["public.secret"], 17, "row level security does not hide rows from the dump");
    assert_eq!(by_name["public.measure_2024"] + by_name["public.measure_2025"] + by_name["public.measure_other"], 901);
    let index = hostile.archive_index.as_ref().expect("the manifest records the archive index");
    assert!(index.frames.len() >= 2, "header and TOC are a frame of their own: {:?}", index.frames);
    assert_eq!(index.frames[1].raw_offset, index.toc_bytes);
    assert!(index.entries.iter().any(|e| e.kind == "large_objects"));

    // The default mode: stream counts, no count(*); a restore treats them as exact.
    stack.set("PGVAULT_ROW_COUNTS", "stream");
    let out = blocking(|| stack.cli(&["backup", "--server", "main", "--database", "hostile"]));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ms = manifests(&store, "main/hostile/").await;
    let streamed = ms.iter().find(|m| m.id != hostile.id).unwrap();
    let sc = streamed.row_counts.as_ref().unwrap();
    assert_eq!((sc.method.as_str(), &sc.tables), ("stream", &counts.tables));
    let out = blocking(|| {
        stack.cli(&[
            "restore",
            "--server",
            "main",
            "--database",
            "hostile",
            "--backup",
            &streamed.id,
            "--target-database",
            "hostile_copy",
            "--json",
        ])
    });
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(!text.contains("no exact row counts"), "stream counts are exact: {text}");
    assert_eq!(psql_blocking(&stack.pg, "hostile_copy", "SELECT count(*) FROM texts").trim(), "506");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_table_reads_only_its_own_blocks_and_never_overwrites_rows() {
    let mut stack = Stack::start().await;
    psql_blocking(&stack.pg, "postgres", "CREATE DATABASE shop");
    psql_blocking(
        &stack.pg,
        "shop",
        "CREATE TABLE big AS SELECT i, md5(i::text) || md5((i * 7)::text) AS pad FROM generate_series(1, 600000) i;
         CREATE TABLE small (id int, note text);
         INSERT INTO small SELECT i, E'note\\n' || i FROM generate_series(1, 250) i;
         CREATE TABLE after AS SELECT i, md5(i::text) AS pad FROM generate_series(1, 300000) i;",
    );
    stack.set("PGVAULT_BLOCK_SIZE_MIB", "1");
    let out = blocking(|| stack.cli(&["backup", "--server", "main", "--database", "shop"]));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let store = stack.store().await;
    let m = manifests(&store, "main/shop/").await.remove(0);
    assert!(m.blocks.len() >= 8, "several blocks: {}", m.blocks.len());
    psql_blocking(&stack.pg, "postgres", "CREATE DATABASE target");

    let restore = |table: &str| {
        blocking(|| {
            stack.cli(&[
                "restore",
                "--server",
                "main",
                "--database",
                "shop",
                "--table",
                table,
                "--target-database",
                "target",
                "--json",
            ])
        })
    };
    let out = restore("public.small");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        (report["read"].as_str(), report["action"].as_str(), report["rows"].as_i64()),
        (Some("ranged"), Some("created"), Some(250))
    );
    assert_eq!(report["rows_checked"], true);
    let read = report["stored_bytes_read"].as_u64().unwrap();
    eprintln!("restore --table read {read} of {} stored bytes", m.stored_bytes);
    assert!(
        read * 4 < m.stored_bytes,
        "read {read} of {} stored bytes: only the TOC's and the table's blocks",
        m.stored_bytes
    );
    assert_eq!(
        psql_blocking(
            &stack.pg,
            "target",
            "SELECT count(*), sum(id), count(*) FILTER (WHERE note LIKE E'note\\n%') FROM small"
        )
        .trim(),
        "250|31375|250"
    );

    // The table is there with rows now: a second restore refuses and changes nothing.
    let out = restore("public.small");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("exists in the target and has rows: nothing was restored"), "{err}");
    // Emptied, it takes the rows (data only, into the table as it is).
    psql_blocking(&stack.pg, "target", "TRUNCATE small");
    let out = restore("public.small");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("\"action\": \"loaded\""), "{text}");
    // The last table of the archive, which reaches the end of the stored stream.
    let out = restore("public.after");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(psql_blocking(&stack.pg, "target", "SELECT count(*) FROM after").trim(), "300000");
    // A table the backup has no data of is named.
    let out = restore("public.nope");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success() && text.contains("the backup has no data for table \"public\".\"nope\""), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_in_parts_counts_its_streams_as_one_archive_does() {
    let mut stack = Stack::start().await;
    psql_blocking(&stack.pg, "postgres", "CREATE DATABASE hostile");
    psql_blocking(&stack.pg, "hostile", &hostile_sql());
    psql_blocking(&stack.pg, "postgres", &format!("CREATE DATABASE {}", quote_ident(VARIED_DB)));
    psql_blocking(&stack.pg, VARIED_DB, &varied_sql(1));
    let store = stack.store().await;
    for db in ["hostile", VARIED_DB] {
        let prefix = pgvault::domain::layout::prefix(Some("main"), Some(db));
        // One archive (the database is below the default threshold), then in parts, then in
        // parts with count(*) beside the streams; all with the default (stream) counts first.
        let mut made = Vec::new();
        for (above, mode) in [("16384", "stream"), ("0", "stream"), ("0", "cross-check")] {
            stack.set("PGVAULT_PARALLEL_ABOVE_MIB", above);
            stack.set("PGVAULT_ROW_COUNTS", mode);
            let out = blocking(|| stack.cli(&["backup", "--server", "main", "--database", db]));
            assert!(out.status.success(), "{db} {above} {mode}: {}", String::from_utf8_lossy(&out.stderr));
            let m = manifests(&store, &prefix).await.into_iter().find(|m| !made.iter().any(|(id, _)| id == &m.id));
            let m = m.expect("a new manifest");
            made.push((m.id.clone(), m));
        }
        let (one, parts, checked) = (&made[0].1, &made[1].1, &made[2].1);
        assert!(!one.is_parts() && parts.is_parts() && checked.is_parts(), "{db}");
        let one_counts = one.row_counts.as_ref().unwrap();
        let part_counts = parts.row_counts.as_ref().unwrap();
        assert_eq!(one_counts.method, "stream", "{db}");
        assert_eq!(part_counts.method, "stream", "{db}");
        assert_eq!(part_counts.tables, one_counts.tables, "{db}: the same tables and rows as one archive");
        let cc = checked.row_counts.as_ref().unwrap();
        assert_eq!((cc.method.as_str(), &cc.tables), ("cross-check", &one_counts.tables), "{db}: count(*) agreed");
        // Per table, against each table's own rows in the source (nothing has changed since).
        let tables: Vec<(String, String)> =
            part_counts.tables.iter().map(|t| (t.schema.clone(), t.table.clone())).collect();
        let counted: BTreeMap<String, u64> =
            part_counts.tables.iter().map(|t| (format!("{}.{}", t.schema, t.table), t.rows as u64)).collect();
        assert_eq!(counted, blocking(|| own_rows(&stack.pg, db, &tables)), "{db}");
        // Each data part carries its own counts and index; the streams were cut into frames.
        for p in parts.parts.iter().filter(|p| p.spec.kind == PartKind::Data) {
            let rc = p.row_counts.as_ref().unwrap_or_else(|| panic!("{db}: part {} counted", p.spec.name));
            assert_eq!(rc.method, "stream");
            let mut named: Vec<(String, String)> =
                rc.tables.iter().map(|t| (t.schema.clone(), t.table.clone())).collect();
            let mut listed: Vec<(String, String)> =
                p.spec.tables.iter().map(|t| (t.schema.clone(), t.table.clone())).collect();
            named.sort();
            listed.sort();
            assert_eq!(named, listed, "{db}: part {} counts exactly its tables", p.spec.name);
            let index = p.archive_index.as_ref().unwrap_or_else(|| panic!("{db}: part {} indexed", p.spec.name));
            assert!(index.frames.len() >= 2, "{db}: part {} frames {:?}", p.spec.name, index.frames);
        }
        if db == VARIED_DB {
            let copies: Vec<_> = parts.parts.iter().filter(|p| p.spec.kind == PartKind::Copy).collect();
            assert!(copies.len() >= 2, "sales.orders is split into page ranges: {:?}", parts.parts);
            assert_eq!(counted["sales.orders"], 180_000, "the COPY parts' lines, summed");
        } else {
            assert_eq!(counted["public.animal"], 2, "a parent's own rows");
            assert_eq!(counted["public.empty_one"], 0);
            assert_eq!(counted["public.scratch"], 1234, "unlogged");
            assert_eq!(counted["public.secret"], 17, "row level security does not hide rows");
        }
    }
    stack.set("PGVAULT_ROW_COUNTS", "stream");
    // A restore of the set in parts checks the stream counts as exact (inheritance included).
    let hostile = manifests(&store, "main/hostile/").await;
    let parts = hostile.iter().find(|m| m.is_parts() && m.row_counts.as_ref().unwrap().method == "stream").unwrap();
    let out = blocking(|| {
        stack.cli(&[
            "restore",
            "--server",
            "main",
            "--database",
            "hostile",
            "--backup",
            &parts.id,
            "--target-database",
            "hostile_parts",
            "--jobs",
            "2",
            "--json",
        ])
    });
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let report = &v["tasks"][0]["report"]["database"];
    assert_eq!(report["method"], "parts", "{v}");
    assert_eq!(report["tables_checked"], parts.row_counts.as_ref().unwrap().tables.len(), "{v}");
}
