//! The part types of a set manifest (format version 3, `"layout": "parts"`): what each part of a
//! database backed up in parts holds and how it was stored. The planner is `domain::parts`.

use super::{ArchiveIndex, Block, RowCounts};
use crate::domain::error::{Error, Result};
use crate::domain::sql::quote_ident;
use serde::{Deserialize, Serialize};

/// The manifest format version of a set manifest. 2 was taken by encrypted single-stream
/// manifests, so the "version 2" became 3.
pub const FORMAT_VERSION_PARTS: u32 = 3;

/// `archive_format` of the set manifest itself (each part has its own).
pub const ARCHIVE_FORMAT_PARTS: &str = "parts";
/// `archive_format` of a schema or data part: a pg_dump custom archive.
pub const ARCHIVE_CUSTOM: &str = "custom";
/// `archive_format` of a COPY part: `COPY … TO STDOUT` text format, one row per line.
pub const ARCHIVE_COPY_TEXT: &str = "copy-text";

/// How the backup's data is laid out. Absent in a manifest means [`Layout::Single`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// One archive in `data_blob` (format versions 1 and 2).
    #[default]
    Single,
    /// Several parts, listed in `parts` (format version 3); the top-level `data_blob`, `sha256`
    /// and `blocks` are empty, `raw_bytes` / `stored_bytes` are the parts' sums.
    Parts,
}

impl Layout {
    pub fn is_single(&self) -> bool {
        *self == Layout::Single
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PartKind {
    /// `pg_dump --section=pre-data --section=post-data` (the whole schema, and the refresh of
    /// materialized views in post-data).
    Schema,
    /// `pg_dump --data-only -t …` of whole tables (and, in exactly one part each, the large
    /// objects and the sequence values).
    Data,
    /// `COPY (SELECT cols FROM t WHERE ctid >= '(a,0)' AND ctid < '(b,0)') TO STDOUT` of one
    /// page range of one huge table.
    Copy,
}

/// A table by its schema and name (unquoted).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TableRef {
    pub schema: String,
    pub table: String,
}

impl TableRef {
    pub fn new(schema: impl Into<String>, table: impl Into<String>) -> Self {
        Self { schema: schema.into(), table: table.into() }
    }

    /// `"schema"."table"`, quoted for SQL.
    pub fn sql(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.table))
    }

    /// A pg_dump `-t` / `--exclude-table-data` pattern matching exactly this relation: both
    /// names in double quotes (inside which pattern characters are literal), quotes doubled.
    pub fn pattern(&self) -> String {
        let q = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
        format!("{}.{}", q(&self.schema), q(&self.table))
    }
}

impl std::fmt::Display for TableRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.schema, self.table)
    }
}

/// A sequence, and the table whose identity column it serves: pg_dump will not select an
/// identity sequence by name (only through its table), so its value is dumped with
/// `--table=<owner> --exclude-table-data=<owner>` where the owner's rows are elsewhere.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SequenceRef {
    pub sequence: TableRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_of: Option<TableRef>,
}

/// A page range of a table: `ctid >= '(from_page,0)'` and, when `to_page` is set,
/// `ctid < '(to_page,0)'`. The last range of a table is open, so pages added after the plan
/// (which hold no row visible in the snapshot, but could if the size was read early) are never
/// left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CtidRange {
    pub from_page: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_page: Option<u64>,
}

impl CtidRange {
    /// The `WHERE` condition.
    pub fn condition(&self) -> String {
        match self.to_page {
            Some(to) => format!("ctid >= '({},0)'::tid AND ctid < '({to},0)'::tid", self.from_page),
            None => format!("ctid >= '({},0)'::tid", self.from_page),
        }
    }
}

/// What one part holds: the plan of a part, and the first half of its manifest entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartSpec {
    /// `schema`, `data-01`, `copy-01`, …: unique in the set, a blob-name segment.
    pub name: String,
    pub kind: PartKind,
    /// Data parts: the tables (and partitions, inheritance children) whose rows it holds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tables: Vec<TableRef>,
    /// Data parts: the sequences whose values it holds (`SEQUENCE SET`). Non-empty in at most
    /// one part.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sequence_list: Vec<SequenceRef>,
    /// Owned sequences of `tables` that pg_dump would bring along; excluded here because the
    /// sequence part holds their values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude_sequences: Vec<TableRef>,
    /// True in exactly one part when the database has large objects.
    #[serde(default)]
    pub large_objects: bool,
    /// True in exactly one part: the one that holds the sequence values.
    #[serde(default)]
    pub sequences: bool,
    /// Copy parts: the table, its (non-generated) columns in order, and the page range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<TableRef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub columns: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ctid_range: Option<CtidRange>,
}

impl PartSpec {
    pub fn new(name: String, kind: PartKind) -> Self {
        Self {
            name,
            kind,
            tables: vec![],
            sequence_list: vec![],
            exclude_sequences: vec![],
            large_objects: false,
            sequences: false,
            table: None,
            columns: vec![],
            ctid_range: None,
        }
    }

    /// The archive format the part is stored in (before pgvault's compression).
    pub fn archive_format(&self) -> &'static str {
        match self.kind {
            PartKind::Schema | PartKind::Data => ARCHIVE_CUSTOM,
            PartKind::Copy => ARCHIVE_COPY_TEXT,
        }
    }

    /// pg_dump's arguments for a schema or data part, without the format, compression,
    /// connection and snapshot arguments the coordinator adds. `None` for a COPY part.
    pub fn pg_dump_args(&self) -> Option<Vec<String>> {
        match self.kind {
            PartKind::Copy => None,
            // pre-data + post-data rather than --schema-only: the latter leaves out the
            // materialized views' REFRESH (post-data), which must run after the data parts.
            // --no-blobs: pg_dump before 17 puts a large object's creation in pre-data; its
            // one part holds it.
            PartKind::Schema => {
                Some(vec!["--section=pre-data".into(), "--section=post-data".into(), "--no-blobs".into()])
            }
            PartKind::Data => {
                let mut a = vec!["--data-only".to_string()];
                let mut named: Vec<&TableRef> = self.tables.iter().collect();
                let mut excluded: Vec<&TableRef> = Vec::new();
                for s in &self.sequence_list {
                    match &s.identity_of {
                        // Comes along with its table's rows.
                        Some(owner) if self.tables.contains(owner) => {}
                        Some(owner) => {
                            named.push(owner);
                            excluded.push(owner);
                        }
                        None => named.push(&s.sequence),
                    }
                }
                named.dedup();
                excluded.dedup();
                for t in &named {
                    a.push(format!("--table={}", t.pattern()));
                }
                if named.is_empty() {
                    // Large objects only: every relation's data left out.
                    a.push("--exclude-table-data=*.*".into());
                }
                for t in excluded.into_iter().chain(&self.exclude_sequences) {
                    a.push(format!("--exclude-table-data={}", t.pattern()));
                }
                if self.large_objects {
                    // Named tables turn large objects off unless asked for (-b: every version).
                    a.push("--blobs".into());
                }
                Some(a)
            }
        }
    }

    /// The `COPY … TO STDOUT` statement of a COPY part.
    pub fn copy_sql(&self) -> Option<String> {
        let (table, range) = (self.table.as_ref()?, self.ctid_range?);
        let cols: Vec<String> = self.columns.iter().map(|c| quote_ident(c)).collect();
        Some(format!(
            "COPY (SELECT {} FROM ONLY {} WHERE {}) TO STDOUT",
            cols.join(", "),
            table.sql(),
            range.condition()
        ))
    }

    /// The plain-tools restore line of this part's file.
    pub fn restore_hint(&self, file: &str, zstd: bool, encrypted_id: Option<&str>) -> String {
        let source = match (encrypted_id, zstd) {
            (Some(id), _) => format!("pgvault cat {id}/{} |", self.name),
            (None, true) => format!("zstd -d < {file} |"),
            (None, false) => format!("cat {file} |"),
        };
        match self.kind {
            PartKind::Schema => format!(
                "first: {source} pg_restore --section=pre-data --dbname=<target> --no-owner; \
                 after every data part: {source} pg_restore --section=post-data --dbname=<target> --no-owner"
            ),
            PartKind::Data => format!("{source} pg_restore --data-only --dbname=<target> --no-owner"),
            PartKind::Copy => {
                let table = self.table.as_ref().map(|t| t.sql()).unwrap_or_default();
                let cols: Vec<String> = self.columns.iter().map(|c| quote_ident(c)).collect();
                // The COPY text is UTF-8 (pgvault's connection reads it so), whatever the
                // target database's encoding, which psql would otherwise assume.
                format!(
                    "{source} PGCLIENTENCODING=UTF8 psql --dbname=<target> -c '\\copy {table} ({}) FROM STDIN'",
                    cols.join(", ").replace('\'', "'\\''")
                )
            }
        }
    }
}

/// One part as recorded in the set manifest: its spec and what was stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Part {
    #[serde(flatten)]
    pub spec: PartSpec,
    /// The blob, relative to the container: `<id>.<attempt>.<part name>.<ext>`.
    pub data_blob: String,
    pub raw_bytes: u64,
    pub stored_bytes: u64,
    /// SHA-256 of the stored bytes, hex.
    pub sha256: String,
    pub blocks: Vec<Block>,
    /// The snapshot the part was dumped in: always the set's `snapshot`.
    pub snapshot: String,
    /// `custom` (schema and data parts) or `copy-text` (COPY parts).
    pub archive_format: String,
    /// The pg_dump arguments (schema and data parts) or the COPY statement (COPY parts), never
    /// a secret.
    pub command: Vec<String>,
    /// Rows this part holds, when counted: a data part's tables' own rows read from its archive
    /// as it streamed (method `stream`), a COPY part's lines (method `exact`). The set's
    /// `row_counts` in `stream` mode are their sum per table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub row_counts: Option<RowCounts>,
    /// Data parts whose archive the stream tap could read: its data entries and zstd frames, as
    /// one archive's `archive_index`, with offsets in this part's own stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive_index: Option<ArchiveIndex>,
    pub restore_hint: String,
}

impl Part {
    /// The id an encrypted part's envelope binds (`<backup id>/<part name>`), so a part cannot
    /// be moved into another part's place or another backup.
    pub fn envelope_id(backup_id: &str, part_name: &str) -> String {
        envelope_id(backup_id, part_name)
    }

    /// Blocks add up to the stored size; the part's snapshot is the set's.
    pub fn check_consistent(&self, backup: &str, snapshot: &str) -> Result<()> {
        let sum: u64 = self.blocks.iter().map(|b| b.size).sum();
        if sum != self.stored_bytes {
            return Err(Error::permanent(format!(
                "manifest {backup:?} is inconsistent: the blocks of part {:?} add up to {sum} bytes, its stored size is {}",
                self.spec.name, self.stored_bytes
            )));
        }
        if self.snapshot != snapshot {
            return Err(Error::permanent(format!(
                "manifest {backup:?} is inconsistent: part {:?} was dumped in snapshot {:?}, not the set's {snapshot:?}",
                self.spec.name, self.snapshot
            )));
        }
        Ok(())
    }
}

/// The id an encrypted part's envelope binds: `<backup id>/<part name>`.
pub fn envelope_id(backup_id: &str, part_name: &str) -> String {
    format!("{backup_id}/{part_name}")
}
