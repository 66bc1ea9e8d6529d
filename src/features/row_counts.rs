//! A backup's row counts from the archive stream (`PGVAULT_ROW_COUNTS=stream`, the default),
//! checked against `count(*)` in `cross-check` mode, and the archive index the manifest records.
//!
//! `stream` counts the COPY rows of each `TABLE DATA` block as pg_dump writes it
//! (`domain::archive`): exact, because the dump *is* those rows, and free for the server. The
//! tables counted are the same as `exact`'s (ordinary tables and partitions outside system
//! schemas, not members of extensions), listed from the catalog in the dump's snapshot. When the
//! stream gives no count for one of them (pg_dump's own compression, an archive pgvault cannot
//! read), the backup counts with `count(*)` in the same snapshot instead, and says so.

use crate::domain::archive::{Archive, BlockKind};
use crate::domain::error::{Error, Result};
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
    let mut rows: HashMap<(&str, &str), u64> = HashMap::new();
    for b in archive.blocks.iter().filter(|b| b.kind == BlockKind::TableData) {
        let (Some(n), Some(e)) = (b.rows, archive.entry(b.dump_id)) else { continue };
        rows.insert((e.namespace.as_deref().unwrap_or(""), e.tag.as_str()), n);
    }
    let mut tables = Vec::with_capacity(listed.len());
    for (schema, table) in listed {
        let Some(n) = rows.get(&(schema.as_str(), table.as_str())) else {
            return Err(if archive.header.compressed {
                "pg_dump compressed the archive itself, so its rows cannot be counted as it streams".into()
            } else {
                format!("the archive has no COPY data for table {schema}.{table}")
            });
        };
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
