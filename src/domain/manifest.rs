//! The manifest: a versioned, self-describing JSON document written after the data blob is
//! committed. A backup exists if and only if its manifest exists.
//!
//! It says everything needed to check and restore the data with plain tools, even without
//! pgvault: which blob, how it was compressed, its SHA-256 (whole and per block), and the exact
//! pg_dump command that made it.

use crate::domain::error::{Error, Result};
use crate::domain::layout::BackupKind;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// Bumped when a reader of the old format would misread the new one: version 2 added
/// [`Encryption`]. Only encrypted manifests are written as 2 (a pgvault that predates encryption
/// refuses them instead of reading ciphertext as zstd); unencrypted ones stay 1, readable by
/// every pgvault.
pub const FORMAT_VERSION: u32 = 2;
/// The version an unencrypted manifest is written with.
pub const FORMAT_VERSION_PLAIN: u32 = 1;
/// The newest version this pgvault reads: 3, a database backed up in parts
/// ([`crate::domain::parts`]), encrypted or not.
pub const FORMAT_VERSION_MAX: u32 = set::FORMAT_VERSION_PARTS;

pub mod set;
pub use set::{Layout, Part};
pub const FORMAT_NAME: &str = "pgvault-backup-manifest";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub format_version: u32,
    pub pgvault_version: String,
    /// `<server>/<database segment>/<stamp>-<job id>`.
    pub id: String,
    pub kind: BackupKind,
    pub job_id: String,
    pub server: String,
    /// Empty for globals.
    pub database: String,
    pub server_version: String,
    pub server_version_num: u32,
    pub tool: Tool,
    /// `custom` (pg_dump archive) or `plain` (SQL text, for globals).
    pub archive_format: String,
    pub compression: Compression,
    /// Client-side encryption of the stored stream (after compression). Absent: stored as
    /// compressed, readable by anyone who can read the blob (every manifest before version 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<Encryption>,
    /// The blob holding the data, relative to the container.
    pub data_blob: String,
    /// Bytes pg_dump wrote.
    pub raw_bytes: u64,
    /// Bytes stored (after pgvault's compression, if any).
    pub stored_bytes: u64,
    /// SHA-256 of the stored bytes, hex.
    pub sha256: String,
    pub blocks: Vec<Block>,
    #[serde(with = "time::serde::rfc3339")]
    pub requested_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub finished_at: OffsetDateTime,
    pub row_counts: Option<RowCounts>,
    /// Globals only: the server's databases (connectable, not templates) when the globals were
    /// dumped. A whole-server restore uses it to leave out databases dropped before then. Absent
    /// for databases, and in manifests written before pgvault recorded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub databases: Option<Vec<String>>,
    /// Databases only: the database's own properties (encoding and locale, owner, privileges,
    /// settings, comment, security labels), read in the dump's snapshot. pg_restore without
    /// `--create` skips them, so a restore applies them from here. Absent in manifests written
    /// before pgvault recorded them; such a restore says what it could not give back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_properties: Option<crate::domain::dbprops::DatabaseProperties>,
    /// Databases only: where each data entry of the archive lies, read from the stream as it was
    /// written (see [`ArchiveIndex`]). Absent when the archive could not be read, and in
    /// manifests written before pgvault recorded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive_index: Option<ArchiveIndex>,
    /// How to restore with plain tools.
    pub restore_hint: String,
    /// `parts` for a backup in parts (format version 3); absent for one archive.
    #[serde(default, skip_serializing_if = "Layout::is_single")]
    pub layout: Layout,
    /// Parts only: the snapshot every part was dumped in (`pg_export_snapshot()`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// Parts only: the parts, schema part first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<Part>,
    /// What a reader should know about what the backup holds (e.g. a table created after the
    /// snapshot is not in it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tool {
    pub name: String,
    pub version: String,
    pub major: u32,
    /// The arguments pg_dump ran with (never a secret: connection details go by environment).
    pub args: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "algorithm", rename_all = "snake_case")]
pub enum Compression {
    /// pgvault compressed pg_dump's uncompressed (`-Z0`) output with zstd.
    Zstd { level: i32 },
    /// Stored as pg_dump wrote it, uncompressed.
    None,
    /// pg_dump's own compression (`--format=custom` default); pgvault stores it as is.
    PgDump,
}

impl Compression {
    pub fn parse(s: &str) -> Result<Self> {
        let bad = || {
            Error::permanent(format!("bad compression {s:?}"))
                .with_hint("use zstd:<level 1-19>, zstd (level 3), none, or pg_dump")
        };
        match s.trim() {
            "none" => Ok(Compression::None),
            "pg_dump" => Ok(Compression::PgDump),
            "zstd" => Ok(Compression::Zstd { level: 3 }),
            other => {
                let level = other.strip_prefix("zstd:").ok_or_else(bad)?.parse::<i32>().map_err(|_| bad())?;
                if !(1..=19).contains(&level) {
                    return Err(bad());
                }
                Ok(Compression::Zstd { level })
            }
        }
    }

    pub fn by_pgvault(self) -> bool {
        matches!(self, Compression::Zstd { .. })
    }
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Compression::Zstd { level } => write!(f, "zstd:{level}"),
            Compression::None => f.write_str("none"),
            Compression::PgDump => f.write_str("pg_dump"),
        }
    }
}

/// How the stored stream is encrypted (see `domain::envelope` and DESIGN.md): what a reader
/// needs besides the vault's unwrap. Never the plain data key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Encryption {
    /// `aes-256-gcm-chunked-v1`.
    pub algorithm: String,
    /// Plain bytes per chunk (every chunk but the last).
    pub chunk_size: u32,
    /// The Key Vault key that wrapped the data key, **with** its version.
    pub key_id: String,
    /// `RSA-OAEP-256`.
    pub wrap_algorithm: String,
    /// The wrapped data key, base64 (standard alphabet, padded).
    pub wrapped_key: String,
}

/// One staged block, in order. Blocks may differ in size (the block size grows for long streams).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Block {
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RowCounts {
    /// `stream`: COPY rows counted in the archive as it streamed by (exact, free for the server).
    /// `exact`: `count(*)` in the very snapshot pg_dump dumped (exported and shared with
    /// `pg_dump --snapshot`), so a restore must reproduce them exactly.
    /// `cross-check`: both, and they agreed. See [`RowCounts::is_exact`].
    /// `estimate`: `pg_class.reltuples`, for information only.
    pub method: String,
    pub tables: Vec<TableCount>,
}

/// Where the archive's data entries lie: raw offsets (in pg_dump's output) and, for a zstd stream,
/// where its frames start raw and stored, so one entry can be read by range and decompressed
/// without the rest (`pgvault restore --table`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveIndex {
    /// Raw bytes of the archive's header and TOC (the data starts here).
    pub toc_bytes: u64,
    pub entries: Vec<DataEntry>,
    /// Where each zstd frame starts, in order, the first at 0/0. Empty when the stored bytes are
    /// the raw bytes (no pgvault compression) or are not mapped (encrypted backups).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub frames: Vec<Frame>,
}

/// One data block of the archive (`TABLE DATA` or `BLOBS`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataEntry {
    pub dump_id: i32,
    /// `table_data` or `large_objects`.
    pub kind: String,
    /// The TOC entry's namespace and tag (empty for large objects).
    pub schema: String,
    pub table: String,
    /// Raw offset of the block's first byte and its length, closing zero length included.
    pub raw_offset: u64,
    pub raw_length: u64,
    /// COPY rows in the block (table data of an uncompressed archive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
}

/// Where one zstd frame starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frame {
    pub raw_offset: u64,
    pub stored_offset: u64,
}

impl ArchiveIndex {
    /// The table data entry of `schema.table`.
    pub fn table(&self, schema: &str, table: &str) -> Option<&DataEntry> {
        self.entries.iter().find(|e| e.kind == "table_data" && e.schema == schema && e.table == table)
    }

    /// The stored byte range to read for the raw range `start..end`, and the raw offset the read
    /// starts at (a frame start): frames are independently decodable, so a read from one frame's
    /// start to the start of the first frame at or after `end` holds the range. Without frames,
    /// stored bytes are raw bytes.
    pub fn stored_range(&self, start: u64, end: u64, stored_bytes: u64) -> (std::ops::Range<u64>, u64) {
        if self.frames.is_empty() {
            return (start..end, start);
        }
        let first = self.frames.iter().rev().find(|f| f.raw_offset <= start).copied().unwrap_or(self.frames[0]);
        let stop = self.frames.iter().find(|f| f.raw_offset >= end).map_or(stored_bytes, |f| f.stored_offset);
        (first.stored_offset..stop, first.raw_offset)
    }
}

impl RowCounts {
    /// Whether a restore must reproduce these counts exactly: `exact` (count(*) in the dump's
    /// snapshot), `stream` (COPY rows read from the archive) and `cross-check` (both, and they
    /// agreed) are exact; `estimate` is not.
    pub fn is_exact(&self) -> bool {
        matches!(self.method.as_str(), "exact" | "stream" | "cross-check")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableCount {
    pub schema: String,
    pub table: String,
    pub rows: i64,
}

impl Manifest {
    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("manifest serializes");
        v.push(b'\n');
        v
    }

    pub fn from_json(name: &str, bytes: &[u8]) -> Result<Self> {
        #[derive(Deserialize)]
        struct Head {
            format: String,
            format_version: u32,
        }
        let head: Head = serde_json::from_slice(bytes)
            .map_err(|e| Error::permanent(format!("manifest {name:?} is not a pgvault manifest: {e}")))?;
        if head.format != FORMAT_NAME {
            return Err(Error::permanent(format!(
                "manifest {name:?} has format {:?}, not {FORMAT_NAME:?}",
                head.format
            )));
        }
        if head.format_version > FORMAT_VERSION_MAX {
            return Err(Error::permanent(format!(
                "manifest {name:?} has format version {}, newer than this pgvault understands ({FORMAT_VERSION_MAX})",
                head.format_version
            ))
            .with_hint("upgrade pgvault"));
        }
        serde_json::from_slice(bytes).map_err(|e| Error::permanent(format!("manifest {name:?} is malformed: {e}")))
    }

    /// A format-version-1 manifest of one plain zstd archive, named as a backup of `kind` of
    /// `database` on `server` requested at `at` by job `job` would be, with no content: no
    /// blocks, sizes or counts. The base that fixtures and tests fill in with struct update
    /// syntax (`Manifest { blocks, ..Manifest::skeleton(…) }`), so a new field is added once.
    pub fn skeleton(kind: BackupKind, server: &str, database: &str, at: OffsetDateTime, job: &str) -> Manifest {
        let id = crate::domain::layout::backup_paths(kind, server, database, at, job).id;
        Manifest {
            format: FORMAT_NAME.into(),
            format_version: 1,
            pgvault_version: env!("CARGO_PKG_VERSION").into(),
            data_blob: crate::domain::layout::data_blob(&id, "a", "dump.zst"),
            id,
            kind,
            job_id: job.into(),
            server: server.into(),
            database: if kind == BackupKind::Globals { String::new() } else { database.into() },
            server_version: "17.0".into(),
            server_version_num: 170000,
            tool: Tool { name: "pg_dump".into(), version: "17".into(), major: 17, args: vec![] },
            archive_format: "custom".into(),
            compression: Compression::Zstd { level: 3 },
            encryption: None,
            raw_bytes: 0,
            stored_bytes: 0,
            sha256: String::new(),
            blocks: vec![],
            requested_at: at,
            started_at: at,
            finished_at: at,
            row_counts: None,
            databases: None,
            database_properties: None,
            archive_index: None,
            restore_hint: String::new(),
            layout: Layout::Single,
            snapshot: None,
            parts: vec![],
            notes: vec![],
        }
    }

    /// Every blob the backup's data is in: `data_blob`, or each part's.
    pub fn data_blobs(&self) -> Vec<&str> {
        match self.layout {
            Layout::Single => vec![self.data_blob.as_str()],
            Layout::Parts => self.parts.iter().map(|p| p.data_blob.as_str()).collect(),
        }
    }

    /// One part of a backup in parts seen as a single-archive manifest, so every reader of one
    /// archive (verified blocks, decryption, decompression) reads a part unchanged: its blob,
    /// sizes, hashes and blocks, and as `id` the part's envelope id (`<backup id>/<part name>`,
    /// which its encryption binds and which names it in errors).
    pub fn part_view(&self, part: &Part) -> Manifest {
        Manifest {
            id: set::envelope_id(&self.id, &part.spec.name),
            archive_format: part.archive_format.clone(),
            data_blob: part.data_blob.clone(),
            raw_bytes: part.raw_bytes,
            stored_bytes: part.stored_bytes,
            sha256: part.sha256.clone(),
            blocks: part.blocks.clone(),
            row_counts: part.row_counts.clone(),
            archive_index: part.archive_index.clone(),
            restore_hint: part.restore_hint.clone(),
            layout: Layout::Single,
            snapshot: Some(part.snapshot.clone()),
            parts: vec![],
            notes: vec![],
            ..self.clone()
        }
    }

    /// A part by name.
    pub fn part(&self, name: &str) -> Option<&Part> {
        self.parts.iter().find(|p| p.spec.name == name)
    }

    /// A backup in parts (format version 3).
    pub fn is_parts(&self) -> bool {
        self.layout == Layout::Parts
    }

    /// Blocks' sizes add up to the stored size (each part's, for a backup in parts, whose
    /// snapshot must be the set's). Checked on every read.
    pub fn check_consistent(&self) -> Result<()> {
        if self.is_parts() {
            let snapshot = self.snapshot.as_deref().ok_or_else(|| {
                Error::permanent(format!("manifest {:?} is inconsistent: a backup in parts names no snapshot", self.id))
            })?;
            if self.parts.is_empty() {
                return Err(Error::permanent(format!("manifest {:?} is inconsistent: it lists no parts", self.id)));
            }
            for p in &self.parts {
                p.check_consistent(&self.id, snapshot)?;
            }
            let sum: u64 = self.parts.iter().map(|p| p.stored_bytes).sum();
            if sum != self.stored_bytes {
                return Err(Error::permanent(format!(
                    "manifest {:?} is inconsistent: parts add up to {sum} bytes, stored size is {}",
                    self.id, self.stored_bytes
                )));
            }
            return Ok(());
        }
        let sum: u64 = self.blocks.iter().map(|b| b.size).sum();
        if sum != self.stored_bytes {
            return Err(Error::permanent(format!(
                "manifest {:?} is inconsistent: blocks add up to {sum} bytes, stored size is {}",
                self.id, self.stored_bytes
            )));
        }
        Ok(())
    }
}

/// The restore line for an encrypted backup: `pgvault cat` decrypts where the identity may
/// unwrap (DESIGN.md documents the format for a decryptor of one's own).
pub fn restore_hint_encrypted(kind: BackupKind, id: &str) -> String {
    match kind {
        BackupKind::Database => format!("pgvault cat {id} | pg_restore --dbname=<target> --no-owner"),
        BackupKind::Globals => format!("pgvault cat {id} | psql --dbname=postgres"),
    }
}

/// The plain-tools restore line for a backup.
pub fn restore_hint(kind: BackupKind, compression: Compression, data_blob: &str) -> String {
    let file = data_blob.rsplit('/').next().unwrap_or(data_blob);
    match (kind, compression.by_pgvault()) {
        (BackupKind::Database, true) => format!("zstd -d < {file} | pg_restore --dbname=<target> --no-owner"),
        (BackupKind::Database, false) => format!("pg_restore --dbname=<target> --no-owner {file}"),
        (BackupKind::Globals, true) => format!("zstd -d < {file} | psql --dbname=postgres"),
        (BackupKind::Globals, false) => format!("psql --dbname=postgres -f {file}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Written before pgvault recorded database properties or encryption.
    const OLD_MANIFEST: &[u8] = br#"{"format":"pgvault-backup-manifest","format_version":1,"pgvault_version":"0.1.0",
            "id":"s/d/20260101T000000Z-j","kind":"database","job_id":"j","server":"s","database":"d",
            "server_version":"15.18","server_version_num":150018,
            "tool":{"name":"pg_dump","version":"pg_dump (PostgreSQL) 15.18","major":15,"args":[]},
            "archive_format":"custom","compression":{"algorithm":"zstd","level":3},
            "data_blob":"s/d/x.dump.zst","raw_bytes":1,"stored_bytes":1,"sha256":"00","blocks":[],
            "requested_at":"2026-01-01T00:00:00Z","started_at":"2026-01-01T00:00:00Z",
            "finished_at":"2026-01-01T00:00:00Z","row_counts":null,"restore_hint":""}"#;

    #[test]
    fn compression_parses() {
        assert_eq!(Compression::parse("zstd:7").unwrap(), Compression::Zstd { level: 7 });
        assert_eq!(Compression::parse("zstd").unwrap(), Compression::Zstd { level: 3 });
        assert_eq!(Compression::parse("none").unwrap(), Compression::None);
        assert_eq!(Compression::parse("pg_dump").unwrap(), Compression::PgDump);
        for bad in ["zstd:0", "zstd:99", "gzip", "zstd:x", ""] {
            let e = Compression::parse(bad).unwrap_err();
            assert!(e.to_string().contains("bad compression"), "{e}");
        }
        assert_eq!(Compression::Zstd { level: 5 }.to_string(), "zstd:5");
    }

    #[test]
    fn a_manifest_without_database_properties_still_reads() {
        // Written before pgvault recorded the database's properties: restores with a plain
        // statement of what was not given back.
        let old = OLD_MANIFEST;
        let m = Manifest::from_json("x", old).unwrap();
        assert!(m.database_properties.is_none());
        assert!(!String::from_utf8(m.to_json()).unwrap().contains("database_properties"), "not written when absent");
    }

    #[test]
    fn an_old_manifest_reads_as_unencrypted_and_an_encrypted_one_round_trips() {
        let old = OLD_MANIFEST;
        let mut m = Manifest::from_json("x", old).unwrap();
        assert!(m.encryption.is_none());
        assert!(!String::from_utf8(m.to_json()).unwrap().contains("encryption"), "not written when absent");
        m.format_version = FORMAT_VERSION;
        m.encryption = Some(Encryption {
            algorithm: "aes-256-gcm-chunked-v1".into(),
            chunk_size: 1 << 20,
            key_id: "https://v.vault.azure.net/keys/k/0123".into(),
            wrap_algorithm: "RSA-OAEP-256".into(),
            wrapped_key: "AAAA".into(),
        });
        assert_eq!(Manifest::from_json("x", &m.to_json()).unwrap(), m);
    }

    #[test]
    fn a_set_manifest_round_trips_and_checks_its_parts() {
        use super::set::{PartKind, PartSpec};
        let mut m = Manifest::from_json("x", OLD_MANIFEST).unwrap();
        m.format_version = set::FORMAT_VERSION_PARTS;
        m.layout = Layout::Parts;
        m.snapshot = Some("00000003-0000001B-1".into());
        m.data_blob = String::new();
        m.archive_format = set::ARCHIVE_FORMAT_PARTS.into();
        let part = |name: &str, kind, size| Part {
            spec: PartSpec { name: name.into(), kind, ..serde_json::from_str(r#"{"name":"","kind":"data"}"#).unwrap() },
            data_blob: format!("s/d/20260101T000000Z-j.1234abcd.{name}.dump.zst"),
            raw_bytes: size * 2,
            stored_bytes: size,
            sha256: "00".into(),
            blocks: vec![Block { size, sha256: "00".into() }],
            snapshot: "00000003-0000001B-1".into(),
            archive_format: "custom".into(),
            command: vec![],
            row_counts: None,
            archive_index: None,
            restore_hint: String::new(),
        };
        m.parts = vec![part("schema", PartKind::Schema, 3), part("data-01", PartKind::Data, 4)];
        m.stored_bytes = 7;
        m.notes = vec!["a note".into()];
        let json = m.to_json();
        let text = String::from_utf8(json.clone()).unwrap();
        assert!(text.contains(r#""layout": "parts""#), "{text}");
        let back = Manifest::from_json("x", &json).unwrap();
        assert_eq!(back, m);
        back.check_consistent().unwrap();
        assert_eq!(back.data_blobs().len(), 2);
        let view = back.part_view(back.part("data-01").unwrap());
        assert_eq!(view.id, "s/d/20260101T000000Z-j/data-01");
        view.check_consistent().unwrap();
        let mut bad = m.clone();
        bad.parts[1].snapshot = "other".into();
        assert!(bad.check_consistent().unwrap_err().to_string().contains("part \"data-01\""));
        let mut bad = m.clone();
        bad.stored_bytes = 8;
        assert!(bad.check_consistent().is_err());
        // A single-archive manifest does not mention any of it.
        let plain = String::from_utf8(Manifest::from_json("x", OLD_MANIFEST).unwrap().to_json()).unwrap();
        assert!(!plain.contains("layout") && !plain.contains("parts") && !plain.contains("notes"), "{plain}");
    }

    #[test]
    fn rejects_foreign_and_future_manifests() {
        let e = Manifest::from_json("x", br#"{"format":"other","format_version":1}"#).unwrap_err();
        assert!(e.to_string().contains("has format"));
        let e = Manifest::from_json("x", br#"{"format":"pgvault-backup-manifest","format_version":99}"#).unwrap_err();
        assert!(e.to_string().contains("newer than this pgvault"));
        assert!(Manifest::from_json("x", b"not json").is_err());
    }
}
