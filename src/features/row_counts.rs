//! A backup's row counts from the archive stream (`PGVAULT_ROW_COUNTS=stream`, the default),
//! checked against `count(*)` in `cross-check` mode, and the archive index the manifest records.
//!
//! `stream` counts the COPY rows of each `TABLE DATA` block as pg_dump writes it
//! (`domain::archive`): exact, because the dump *is* those rows, and free for the server. The
//! tables counted are the same as `exact`'s (ordinary tables and partitions outside system
//! schemas, not members of extensions), listed from the catalog in the dump's snapshot. When the
//! stream gives no count for one of them (pg_dump's own compression, an archive pgvault cannot
//! read), the backup counts with `count(*)` in the same snapshot instead, and says so.
//!
//! A backup in parts records each part's own rows in the part (a data part's read from its
//! archive, a COPY part's lines) and the set's counts are their sum per table ([`from_parts`]):
//! the same tables and numbers as one archive of the same snapshot would record.

use crate::domain::archive::{Archive, BlockKind};
use crate::domain::error::{Error, Result};
use crate::domain::manifest::set::{Part, PartKind};
use crate::domain::manifest::{ArchiveIndex, DataEntry, Frame, RowCounts, TableCount};
use crate::seams::pg;
use std::collections::HashMap;

/// The tables whose rows are counted, as `(schema, table)`, read in the dump's snapshot.
pub async fn listed_tables(client: &tokio_postgres::Client) -> Result<Vec<(String, String)>> {
    let rows = client.query(pg::USER_TABLES_SQL, &[]).await.map_err(|e| pg::query_error("list tables", e))?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// The listed tables' counts read from the archive, or why there are none.
pub fn from_archive(listed: &[(String, String)], archive: &Archive) -> std::result::Result<RowCounts, String> {
    let rows = archive_rows(archive);
    listed_counts(listed, &rows, |schema, table| {
        if archive.header.compressed {
            "pg_dump compressed the archive itself, so its rows cannot be counted as it streams".into()
        } else {
            format!("the archive has no COPY data for table {schema}.{table}")
        }
    })
}

/// The rows of each `TABLE DATA` block the archive counted, by `(schema, table)`.
fn archive_rows(archive: &Archive) -> HashMap<(&str, &str), u64> {
    let mut rows = HashMap::new();
    for b in archive.blocks.iter().filter(|b| b.kind == BlockKind::TableData) {
        let (Some(n), Some(e)) = (b.rows, archive.entry(b.dump_id)) else { continue };
        rows.insert((e.namespace.as_deref().unwrap_or(""), e.tag.as_str()), n);
    }
    rows
}

/// The rows a data part's archive holds, every table whose COPY data is in it (method
/// `stream`), or `None` when a table's rows could not be counted (pg_dump compressed the data).
pub fn part_rows(archive: &Archive) -> Option<RowCounts> {
    let data = || archive.blocks.iter().filter(|b| b.kind == BlockKind::TableData);
    if data().any(|b| b.rows.is_none()) {
        return None;
    }
    let rows = archive_rows(archive);
    let mut tables: Vec<TableCount> = rows
        .iter()
        .map(|((schema, table), n)| TableCount {
            schema: schema.to_string(),
            table: table.to_string(),
            rows: i64::try_from(*n).unwrap_or(i64::MAX),
        })
        .collect();
    tables.sort_by(|a, b| (&a.schema, &a.table).cmp(&(&b.schema, &b.table)));
    Some(RowCounts { method: "stream".into(), tables })
}

/// The listed tables' counts of a backup in parts, summed over the parts that hold their rows
/// (a data part's counts read from its archive, a COPY part's lines; a table split into page
/// ranges is in several COPY parts), or why there are none. The same tables and the same
/// meaning as one archive's [`from_archive`]: each table's own rows.
pub fn from_parts(listed: &[(String, String)], parts: &[&Part]) -> std::result::Result<RowCounts, String> {
    let mut rows: HashMap<(&str, &str), u64> = HashMap::new();
    for p in parts.iter().filter(|p| p.spec.kind != PartKind::Schema) {
        let Some(counts) = &p.row_counts else {
            return Err(format!(
                "part {:?} gave no row counts (pg_dump compressed its archive, or it could not be read)",
                p.spec.name
            ));
        };
        for t in &counts.tables {
            *rows.entry((t.schema.as_str(), t.table.as_str())).or_default() += t.rows.max(0) as u64;
        }
    }
    listed_counts(listed, &rows, |schema, table| format!("no part has COPY data for table {schema}.{table}"))
}

/// Every listed table's count from `rows` (method `stream`), or why the first one missing is,
/// as `missing` words it.
fn listed_counts(
    listed: &[(String, String)],
    rows: &HashMap<(&str, &str), u64>,
    missing: impl Fn(&str, &str) -> String,
) -> std::result::Result<RowCounts, String> {
    let mut tables = Vec::with_capacity(listed.len());
    for (schema, table) in listed {
        let Some(n) = rows.get(&(schema.as_str(), table.as_str())) else { return Err(missing(schema, table)) };
        let rows = i64::try_from(*n).map_err(|_| format!("table {schema}.{table} has too many rows to record"))?;
        tables.push(TableCount { schema: schema.clone(), table: table.clone(), rows });
    }
    Ok(RowCounts { method: "stream".into(), tables })
}

/// Compare stream counts with `count(*)` ones: every table counted both ways must agree, and
/// both must count the same tables.
pub fn cross_check(stream: &RowCounts, exact: &RowCounts) -> Result<RowCounts> {
    let by_name: HashMap<(&str, &str), i64> =
        stream.tables.iter().map(|t| ((t.schema.as_str(), t.table.as_str()), t.rows)).collect();
    let mut differ = Vec::new();
    for t in &exact.tables {
        match by_name.get(&(t.schema.as_str(), t.table.as_str())) {
            Some(n) if *n == t.rows => {}
            Some(n) => differ.push(format!("{}.{}: {n} in the stream, {} by count(*)", t.schema, t.table, t.rows)),
            None => differ.push(format!("{}.{}: not in the stream, {} by count(*)", t.schema, t.table, t.rows)),
        }
    }
    if stream.tables.len() != exact.tables.len() && differ.is_empty() {
        differ.push(format!("{} tables in the stream, {} by count(*)", stream.tables.len(), exact.tables.len()));
    }
    if !differ.is_empty() {
        return Err(Error::permanent(format!("row counts disagree: {}", differ.join("; ")))
            .with_hint("this is a bug or a broken archive: report it; PGVAULT_ROW_COUNTS=exact backs up meanwhile"));
    }
    Ok(RowCounts { method: "cross-check".into(), tables: stream.tables.clone() })
}

/// The manifest's index of the archive's data entries.
pub fn index(archive: &Archive, frames: Vec<Frame>) -> ArchiveIndex {
    let entries = archive
        .blocks
        .iter()
        .map(|b| {
            let e = archive.entry(b.dump_id);
            DataEntry {
                dump_id: b.dump_id,
                kind: match b.kind {
                    BlockKind::TableData => "table_data".into(),
                    BlockKind::LargeObjects => "large_objects".into(),
                },
                schema: e.and_then(|e| e.namespace.clone()).unwrap_or_default(),
                table: if b.kind == BlockKind::TableData {
                    e.map(|e| e.tag.clone()).unwrap_or_default()
                } else {
                    String::new()
                },
                raw_offset: b.offset,
                raw_length: b.length,
                rows: b.rows,
            }
        })
        .collect();
    ArchiveIndex { toc_bytes: archive.toc_length, entries, frames }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(method: &str, t: &[(&str, i64)]) -> RowCounts {
        RowCounts {
            method: method.into(),
            tables: t
                .iter()
                .map(|(n, r)| TableCount { schema: "public".into(), table: (*n).into(), rows: *r })
                .collect(),
        }
    }

    fn part(name: &str, kind: PartKind, counts: Option<RowCounts>) -> Part {
        Part {
            spec: crate::domain::manifest::set::PartSpec::new(name.into(), kind),
            data_blob: String::new(),
            raw_bytes: 0,
            stored_bytes: 0,
            sha256: String::new(),
            blocks: vec![],
            snapshot: "S".into(),
            archive_format: String::new(),
            command: vec![],
            row_counts: counts,
            archive_index: None,
            restore_hint: String::new(),
        }
    }

    fn listed(names: &[&str]) -> Vec<(String, String)> {
        names.iter().map(|n| ("public".to_string(), n.to_string())).collect()
    }

    #[test]
    fn a_set_sums_its_parts_counts_per_table_and_names_what_is_missing() {
        let parts = [
            part("schema", PartKind::Schema, None),
            part("data-01", PartKind::Data, Some(counts("stream", &[("a", 3), ("empty", 0)]))),
            part("data-02", PartKind::Data, Some(counts("stream", &[("b", 5)]))),
            part("copy-01", PartKind::Copy, Some(counts("exact", &[("huge", 7)]))),
            part("copy-02", PartKind::Copy, Some(counts("exact", &[("huge", 4)]))),
        ];
        let refs: Vec<&Part> = parts.iter().collect();
        let set = from_parts(&listed(&["a", "b", "empty", "huge"]), &refs).unwrap();
        assert_eq!(set.method, "stream");
        let rows: Vec<(&str, i64)> = set.tables.iter().map(|t| (t.table.as_str(), t.rows)).collect();
        assert_eq!(rows, [("a", 3), ("b", 5), ("empty", 0), ("huge", 11)], "listed order, COPY ranges summed");
        // A table created after the listing is not counted; a listed table no part holds is named.
        assert_eq!(from_parts(&listed(&["a"]), &refs).unwrap().tables.len(), 1);
        let e = from_parts(&listed(&["a", "gone"]), &refs).unwrap_err();
        assert_eq!(e, "no part has COPY data for table public.gone");
        // A data part without counts (pg_dump compressed it) gives none for the set.
        let mut uncounted = parts.clone();
        uncounted[2].row_counts = None;
        let refs: Vec<&Part> = uncounted.iter().collect();
        let e = from_parts(&listed(&["a"]), &refs).unwrap_err();
        assert!(e.contains("part \"data-02\" gave no row counts"), "{e}");
    }

    #[test]
    fn cross_check_names_every_table_that_differs() {
        let ok =
            cross_check(&counts("stream", &[("a", 1), ("b", 2)]), &counts("exact", &[("a", 1), ("b", 2)])).unwrap();
        assert_eq!(ok.method, "cross-check");
        let e =
            cross_check(&counts("stream", &[("a", 1), ("b", 3)]), &counts("exact", &[("a", 1), ("b", 2), ("c", 0)]))
                .unwrap_err();
        assert!(e.message().contains("public.b: 3 in the stream, 2 by count(*)"), "{e}");
        assert!(e.message().contains("public.c: not in the stream"), "{e}");
        let e = cross_check(&counts("stream", &[("a", 1), ("z", 0)]), &counts("exact", &[("a", 1)])).unwrap_err();
        assert!(e.message().contains("2 tables in the stream, 1 by count(*)"), "{e}");
    }
}
