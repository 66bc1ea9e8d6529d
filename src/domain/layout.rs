//! The blob layout: the one place that builds and parses blob names.
//!
//! ```text
//! <server>/<database>/<stamp>-<job id>.manifest.json          the manifest, written last
//! <server>/<database>/<stamp>-<job id>.<attempt>.dump[.zst]   the pg_dump archive
//! <server>/<database>/<stamp>-<job id>.<attempt>[-<delivery>].<part>.<ext>  a part (in parts)
//! <server>/<database>/<stamp>-<job id>.<attempt>.<part>.result.json   a part worker's report
//!                                                             (PGVAULT_PARTS_RUN=queue)
//! <server>/@globals/<stamp>-<job id>.manifest.json            pg_dumpall --globals-only
//! <server>/@globals/<stamp>-<job id>.<attempt>.sql[.zst]
//! @rejected/<queue>/<stamp>-<unique>.txt                     a rejected message too large to keep
//!                                                             on its -rejected queue
//! ```
//!
//! `<stamp>` is the job's `requested_at` in UTC (`20261121T073500Z`), so names sort by time and a
//! redelivered job maps to the same manifest name. `<attempt>` is random per attempt, so two
//! attempts of one job never write the same data blob; only the attempt that creates the manifest
//! (create-if-absent) publishes its data. Server and database names are encoded by
//! [`encode_segment`]: a real database named `@globals` becomes `=40globals`, so it cannot collide.

use crate::domain::error::{Error, Result};
use time::OffsetDateTime;
use time::macros::format_description;

pub const MANIFEST_SUFFIX: &str = ".manifest.json";
pub const GLOBALS_SEGMENT: &str = "@globals";

/// Encode a name as one path segment that is also a valid blob index tag value: bytes outside
/// `[A-Za-z0-9_.-]` become `=HH`. Reversible, and a leading `.` is encoded so that no segment is
/// hidden or relative.
pub fn encode_segment(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for (i, b) in name.bytes().enumerate() {
        let plain = b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || (b == b'.' && i > 0);
        if plain {
            out.push(b as char);
        } else {
            out.push_str(&format!("={b:02X}"));
        }
    }
    out
}

/// The inverse of [`encode_segment`].
pub fn decode_segment(seg: &str) -> Result<String> {
    let bytes = seg.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'=' {
            let hex = seg
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| Error::permanent(format!("bad escape in blob name segment {seg:?}")))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| Error::permanent(format!("blob name segment {seg:?} is not UTF-8")))
}

/// What a backup holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackupKind {
    /// One database, `pg_dump --format=custom`.
    Database,
    /// Roles, memberships and tablespaces, `pg_dumpall --globals-only --no-role-passwords`.
    Globals,
}

impl BackupKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BackupKind::Database => "database",
            BackupKind::Globals => "globals",
        }
    }
}

/// `20261121T073500Z`.
pub fn stamp(t: OffsetDateTime) -> String {
    let fmt = format_description!("[year][month][day]T[hour][minute][second]Z");
    t.to_offset(time::UtcOffset::UTC).format(&fmt).expect("valid format")
}

pub fn parse_stamp(s: &str) -> Result<OffsetDateTime> {
    let fmt = format_description!("[year][month][day]T[hour][minute][second]Z");
    time::PrimitiveDateTime::parse(s, &fmt)
        .map(|p| p.assume_utc())
        .map_err(|_| Error::permanent(format!("bad timestamp {s:?} in backup id")))
}

/// Where one backup lives. A backup id is `<server>/<database segment>/<stamp>-<job id>`: the
/// manifest name without its suffix, so an id is enough to find everything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupPaths {
    pub id: String,
    pub manifest: String,
}

fn db_segment(kind: BackupKind, database: &str) -> String {
    match kind {
        BackupKind::Database => encode_segment(database),
        BackupKind::Globals => GLOBALS_SEGMENT.to_string(),
    }
}

pub fn backup_paths(
    kind: BackupKind,
    server: &str,
    database: &str,
    requested_at: OffsetDateTime,
    job_id: &str,
) -> BackupPaths {
    let id = format!(
        "{}/{}/{}-{}",
        encode_segment(server),
        db_segment(kind, database),
        stamp(requested_at),
        encode_segment(job_id)
    );
    BackupPaths { manifest: format!("{id}{MANIFEST_SUFFIX}"), id }
}

/// The data blob name for one attempt. `extension` is e.g. `dump.zst`.
pub fn data_blob(id: &str, attempt: &str, extension: &str) -> String {
    format!("{id}.{attempt}.{extension}")
}

/// The blob of one part of a backup in parts: `<id>.<attempt>.<part name>.<ext>`, under the
/// backup id's prefix (so [`data_blob_owner`] names its backup and job, as for one archive).
pub fn part_blob(id: &str, attempt: &str, part: &str, extension: &str) -> String {
    format!("{id}.{attempt}.{part}.{extension}")
}

/// Where a part worker of a fanned-out backup in parts (`PGVAULT_PARTS_RUN=queue`) reports on
/// one part: `<id>.<attempt>.<part name>.result.json`, beside the parts, read and deleted by the
/// coordinator before it writes the set manifest. Left behind only by an attempt that ended
/// (an orphan of its job, as its parts are).
pub fn part_result(id: &str, attempt: &str, part: &str) -> String {
    format!("{}{part}{PART_RESULT_SUFFIX}", part_results_prefix(id, attempt))
}

/// The listing prefix of one attempt's part results: `<id>.<attempt>.`.
pub fn part_results_prefix(id: &str, attempt: &str) -> String {
    format!("{id}.{attempt}.")
}

pub const PART_RESULT_SUFFIX: &str = ".result.json";

/// The listing prefix for a server, or a server and database.
pub fn prefix(server: Option<&str>, database: Option<&str>) -> String {
    match (server, database) {
        (None, _) => String::new(),
        (Some(s), None) => format!("{}/", encode_segment(s)),
        (Some(s), Some(d)) => format!("{}/{}/", encode_segment(s), encode_segment(d)),
    }
}

/// Where the text of a rejected message too large for its record on `<queue>-rejected` is kept:
/// `@rejected/<queue>/<stamp>-<unique>.txt`. The `@` prefix keeps it out of every backup
/// listing, like `@jobs/`; nothing removes it (like the rejected record, it waits for an
/// operator).
pub fn rejected_message(queue: &str, at: OffsetDateTime, unique: &str) -> String {
    format!("{REJECTED_PREFIX}{}/{}-{}.txt", encode_segment(queue), stamp(at), encode_segment(unique))
}

/// The prefix of kept rejected message texts.
pub const REJECTED_PREFIX: &str = "@rejected/";

/// Where `pgvault doctor` writes (and at once deletes) its probe blob: `@doctor/probe-<unique>`,
/// out of every backup listing like `@jobs/`.
pub fn doctor_probe(unique: &str) -> String {
    format!("@doctor/probe-{}", encode_segment(unique))
}

/// Accept a backup id, or a manifest name, and return the manifest name.
/// The backup id and the job id a data blob was written for (`<id>.<attempt>.<ext>`, the id's
/// last segment `<stamp>-<job id>`), or `None` for a name of another shape.
pub fn data_blob_owner(name: &str) -> Option<(&str, &str)> {
    let seg_start = name.rfind('/').map_or(0, |i| i + 1);
    let id_end = seg_start + name[seg_start..].find('.')?;
    let job = name[seg_start..id_end].split_once('-')?.1;
    (!job.is_empty()).then_some((&name[..id_end], job))
}

/// The server and database (none for globals) a backup id names, decoded from its first two
/// segments; `(None, None)` for a name of another shape.
pub fn backup_owner(id: &str) -> (Option<String>, Option<String>) {
    let mut segs = id.split('/');
    let (Some(server), Some(db), Some(_)) = (segs.next(), segs.next(), segs.next()) else { return (None, None) };
    let Ok(server) = decode_segment(server) else { return (None, None) };
    let database = if db == GLOBALS_SEGMENT { None } else { decode_segment(db).ok() };
    (Some(server), database)
}

pub fn manifest_for_id(id: &str) -> String {
    if id.ends_with(MANIFEST_SUFFIX) { id.to_string() } else { format!("{id}{MANIFEST_SUFFIX}") }
}

/// Data-blob extension for a compression and a kind.
pub fn extension(kind: BackupKind, compressed_by_pgvault: bool) -> &'static str {
    match (kind, compressed_by_pgvault) {
        (BackupKind::Database, true) => "dump.zst",
        (BackupKind::Database, false) => "dump",
        (BackupKind::Globals, true) => "sql.zst",
        (BackupKind::Globals, false) => "sql",
    }
}

/// Blob index tags. Values are encoded segments, which Azure's tag character set
/// (`a-z A-Z 0-9 space + - . / : = _`) accepts.
pub fn tags(kind: BackupKind, server: &str, database: &str, role: &str) -> Tags {
    let mut t = Tags::new();
    t.insert("pgvault".into(), role.into());
    t.insert("kind".into(), kind.as_str().into());
    t.insert("server".into(), encode_segment(server));
    // `@` is not a tag character; a globals backup is found by kind.
    if kind == BackupKind::Database {
        t.insert("database".into(), encode_segment(database));
    }
    t
}

/// Blob index tags (Azure) or their local equivalent: small key/value strings, set at commit.
pub type Tags = std::collections::BTreeMap<String, String>;

/// A blob's access tier (Azure). Ordered from the most to the least readily available: a move
/// to a later tier is "colder"; Archive is offline until rehydrated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    Hot,
    Cool,
    Cold,
    Archive,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Hot => "hot",
            Tier::Cool => "cool",
            Tier::Cold => "cold",
            Tier::Archive => "archive",
        }
    }

    /// Case-insensitive: `hot`, `cool`, `cold`, `archive` (Azure answers `Hot`, `Cool`, ...).
    pub fn parse(s: &str) -> Option<Tier> {
        match s.to_ascii_lowercase().as_str() {
            "hot" => Some(Tier::Hot),
            "cool" => Some(Tier::Cool),
            "cold" => Some(Tier::Cold),
            "archive" => Some(Tier::Archive),
            _ => None,
        }
    }
}

impl std::fmt::Display for Tier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use time::macros::datetime;

    #[test]
    fn a_data_blob_names_its_backup_and_job() {
        let paths =
            backup_paths(BackupKind::Database, "prod", "my.db", parse_stamp("20261121T020000Z").unwrap(), "j-1");
        let blob = data_blob(&paths.id, "1a2b3c4d", "dump.zst");
        assert_eq!(data_blob_owner(&blob), Some((paths.id.as_str(), "j-1")));
        assert_eq!(data_blob_owner("prod/app/notes.txt"), None);
    }

    #[test]
    fn a_backup_id_names_its_server_and_database() {
        let at = parse_stamp("20261121T020000Z").unwrap();
        let id = backup_paths(BackupKind::Database, "pr/od", "my db", at, "j").id;
        assert_eq!(backup_owner(&id), (Some("pr/od".into()), Some("my db".into())));
        let globals = backup_paths(BackupKind::Globals, "prod", "", at, "j").id;
        assert_eq!(backup_owner(&globals), (Some("prod".into()), None));
        let db_named_globals = backup_paths(BackupKind::Database, "prod", "@globals", at, "j").id;
        assert_eq!(backup_owner(&db_named_globals), (Some("prod".into()), Some("@globals".into())));
        assert_eq!(backup_owner("not-an-id"), (None, None));
    }

    #[test]
    fn segment_round_trip() {
        for name in ["plain", "My DB", "we\"ird/na=me", "@globals", ".hidden", "zürich", ""] {
            let e = encode_segment(name);
            assert!(e.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.=".contains(&b)), "{e}");
            assert!(!e.starts_with('.'));
            assert_eq!(decode_segment(&e).unwrap(), name);
        }
        assert_ne!(encode_segment("@globals"), GLOBALS_SEGMENT);
    }

    #[test]
    fn tag_values_use_only_azure_tag_characters() {
        for kind in [BackupKind::Database, BackupKind::Globals] {
            for (k, v) in tags(kind, "prod/1", "we\"ird db@x", "data") {
                let ok = |s: &str| s.bytes().all(|b| b.is_ascii_alphanumeric() || b" +-./:=_".contains(&b));
                assert!(ok(&k) && ok(&v), "{k}={v}");
            }
        }
    }

    #[test]
    fn paths_are_deterministic_per_job() {
        let t = datetime!(2026-11-21 07:35:00 UTC);
        let a = backup_paths(BackupKind::Database, "prod", "app db", t, "j1");
        assert_eq!(a.id, "prod/app=20db/20261121T073500Z-j1");
        assert_eq!(a.manifest, "prod/app=20db/20261121T073500Z-j1.manifest.json");
        assert_eq!(a, backup_paths(BackupKind::Database, "prod", "app db", t, "j1"));
        let g = backup_paths(BackupKind::Globals, "prod", "", t, "j2");
        assert_eq!(g.id, "prod/@globals/20261121T073500Z-j2");
        assert_eq!(parse_stamp("20261121T073500Z").unwrap(), t);
    }
}
