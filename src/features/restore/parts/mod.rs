//! A backup in parts (manifest format version 3) restored into the temporary database, one phase
//! per file: the schema part's pre-data ([`pre_data`]), then up to `jobs` data and COPY parts at
//! once, each streamed from storage through the verified reader into its own `pg_restore
//! --data-only` or `COPY … FROM STDIN` ([`data`]), then the schema part's post-data with
//! `pg_restore --jobs` from a scratch copy of that small part ([`post_data`]). The row counts and
//! the swap follow in [`super::database`], exactly as for one archive. As files, a backup in
//! parts is one file per part, its manifest and a README ([`export`]).

use super::*;
use crate::domain::envelope::DataKey;
use crate::domain::parts::{ARCHIVE_COPY_TEXT, ARCHIVE_CUSTOM, Part, PartKind};
use crate::seams::pg::ToolBinary;

mod data;
mod export;
mod post_data;
mod pre_data;

pub(super) use export::export_parts;
pub use export::{README_SUFFIX, readme};

/// `options.jobs` of a backup in parts when the request does not say: data parts loaded at once,
/// and pg_restore's jobs in post-data. Two keep a small instance's two cores busy (one server
/// backend each) without taking the server's every core.
pub const DEFAULT_PART_JOBS: u32 = 2;

/// How a backup in parts is loaded, and why. Pure.
pub fn parts_method(jobs: u32, m: &Manifest) -> (Method, String) {
    let count = |k: PartKind| m.parts.iter().filter(|p| p.spec.kind == k).count();
    let (data, copy) = (count(PartKind::Data), count(PartKind::Copy));
    (
        Method::Parts(jobs.max(1)),
        format!(
            "backup in {} parts ({data} data, {copy} COPY, 1 schema): pre-data first, then up to {} parts at once, each \
             streamed from storage into its own pg_restore or COPY, then post-data",
            m.parts.len(),
            jobs.max(1)
        ),
    )
}

/// Refuse a set manifest this restore cannot load, before anything is touched: exactly one
/// schema part, every part in the archive format of its kind, and a COPY part with its table and
/// columns. Pure.
pub fn check_parts(m: &Manifest) -> Result<()> {
    let schemas = m.parts.iter().filter(|p| p.spec.kind == PartKind::Schema).count();
    if schemas != 1 {
        return Err(Error::permanent(format!("backup {:?} has {schemas} schema parts, not one", m.id))
            .with_hint("the manifest was altered or made by another tool; restore from another backup"));
    }
    for p in &m.parts {
        let want = match p.spec.kind {
            PartKind::Schema | PartKind::Data => ARCHIVE_CUSTOM,
            PartKind::Copy => ARCHIVE_COPY_TEXT,
        };
        if p.archive_format != want {
            return Err(Error::permanent(format!(
                "backup {:?}: part {:?} is stored as {:?}; a {} part must be {want:?}",
                m.id,
                p.spec.name,
                p.archive_format,
                kind_name(p.spec.kind)
            ))
            .with_hint("upgrade pgvault"));
        }
        if p.spec.kind == PartKind::Copy && (p.spec.table.is_none() || p.spec.columns.is_empty()) {
            return Err(Error::permanent(format!(
                "backup {:?}: COPY part {:?} names no table or no columns",
                m.id, p.spec.name
            )));
        }
    }
    Ok(())
}

pub(super) fn kind_name(kind: PartKind) -> &'static str {
    match kind {
        PartKind::Schema => "schema",
        PartKind::Data => "data",
        PartKind::Copy => "copy",
    }
}

/// What every phase needs.
pub(super) struct PartsRun<'a> {
    pub ctx: &'a Ctx,
    pub m: &'a Manifest,
    pub key: Option<&'a DataKey>,
    pub tool: &'a ToolBinary,
    /// The temporary database.
    pub spec: &'a ConnSpec,
    /// pg_restore's arguments common to every section (`--dbname`, `--exit-on-error`, the owner
    /// and privilege options).
    pub args: &'a [String],
    /// `options.owner`: COPY parts load as this role, as pg_restore's `--role` does.
    pub role: Option<&'a str>,
    pub jobs: u32,
}

impl PartsRun<'_> {
    fn args_with(&self, extra: &str) -> Vec<String> {
        let mut a = self.args.to_vec();
        a.push(extra.to_string());
        a
    }

    /// Name the part in an error that does not (pg_restore's own failure does not know it).
    fn in_part(&self, part: &Part, e: Error) -> Error {
        let id = crate::domain::parts::envelope_id(&self.m.id, &part.spec.name);
        if e.message().contains(&id) {
            e
        } else {
            e.context(format!("backup {:?}, part {:?}", self.m.id, part.spec.name))
        }
    }
}

/// Load every part into the temporary database, in order: pre-data, the data and COPY parts (up
/// to `jobs` at once; the first failure stops the others), post-data. Returns what each part did,
/// and how post-data ran.
pub(super) async fn restore_parts(run: &PartsRun<'_>) -> Result<(Vec<PartReport>, String)> {
    check_parts(run.m)?;
    let schema = run.m.parts.iter().find(|p| p.spec.kind == PartKind::Schema).expect("checked: one schema part");
    let started = std::time::Instant::now();
    pre_data::run(run, schema).await.map_err(|e| run.in_part(schema, e))?;
    let pre_seconds = started.elapsed().as_secs_f64();
    let loads: Vec<&Part> = run.m.parts.iter().filter(|p| p.spec.kind != PartKind::Schema).collect();
    let mut reports = data::run(run, &loads).await?;
    let started = std::time::Instant::now();
    let how = post_data::run(run, schema).await.map_err(|e| run.in_part(schema, e))?;
    reports.insert(0, PartReport { seconds: pre_seconds + started.elapsed().as_secs_f64(), ..report_of(schema) });
    Ok((reports, how))
}

fn report_of(p: &Part) -> PartReport {
    PartReport {
        name: p.spec.name.clone(),
        kind: kind_name(p.spec.kind).into(),
        stored_bytes: p.stored_bytes,
        raw_bytes: p.raw_bytes,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A set manifest of a schema part, two data parts and one COPY part.
    fn set() -> Manifest {
        let part = |name: &str, kind: &str, format: &str, extra: serde_json::Value| {
            let mut p = serde_json::json!({
                "name": name, "kind": kind, "data_blob": format!("s/d/20260101T000000Z-j.0000abcd.{name}.zst"),
                "raw_bytes": 10, "stored_bytes": 5, "sha256": "ab", "blocks": [{"size": 5, "sha256": "ab"}],
                "snapshot": "S", "archive_format": format, "command": [], "restore_hint": ""
            });
            p.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            p
        };
        let none = serde_json::json!({});
        let m = serde_json::json!({
            "format": "pgvault-backup-manifest", "format_version": 3, "pgvault_version": "0", "id": "s/d/20260101T000000Z-j",
            "kind": "database", "job_id": "j", "server": "s", "database": "d", "server_version": "17.1",
            "server_version_num": 170001, "tool": {"name": "pg_dump", "version": "pg_dump (PostgreSQL) 17.1", "major": 17, "args": []},
            "archive_format": "parts", "compression": {"algorithm": "zstd", "level": 3}, "data_blob": "", "raw_bytes": 40,
            "stored_bytes": 20, "sha256": "", "blocks": [], "requested_at": "2026-01-01T00:00:00Z",
            "started_at": "2026-01-01T00:00:00Z", "finished_at": "2026-01-01T00:00:00Z", "row_counts": null,
            "restore_hint": "", "layout": "parts", "snapshot": "S", "notes": ["table t2 was created after the snapshot"],
            "parts": [
                part("schema", "schema", "custom", none.clone()),
                part("data-01", "data", "custom", serde_json::json!({"tables": [{"schema": "public", "table": "a"}]})),
                part("data-02", "data", "custom", none.clone()),
                part("copy-01", "copy", "copy-text", serde_json::json!({
                    "table": {"schema": "public", "table": "Big"}, "columns": ["id", "it's"],
                    "ctid_range": {"from_page": 0}})),
            ]
        });
        let m = Manifest::from_json("x", &serde_json::to_vec(&m).unwrap()).unwrap();
        m.check_consistent().unwrap();
        m
    }

    #[test]
    fn a_set_is_loaded_in_parts_with_the_jobs_asked_for() {
        let m = set();
        check_parts(&m).unwrap();
        let (method, why) = parts_method(3, &m);
        assert_eq!(method, Method::Parts(3));
        assert!(why.contains("backup in 4 parts (2 data, 1 COPY, 1 schema)") && why.contains("up to 3 parts"), "{why}");
        assert_eq!(parts_method(0, &m).0, Method::Parts(1));
    }

    #[test]
    fn a_set_this_restore_cannot_load_is_refused_naming_why() {
        let mut two_schemas = set();
        two_schemas.parts[2].spec.kind = PartKind::Schema;
        assert!(check_parts(&two_schemas).unwrap_err().to_string().contains("has 2 schema parts, not one"));
        let mut odd = set();
        odd.parts[1].archive_format = "directory".into();
        let e = check_parts(&odd).unwrap_err().to_string();
        assert!(e.contains("part \"data-01\" is stored as \"directory\"; a data part must be \"custom\""), "{e}");
        let mut bare = set();
        bare.parts[3].spec.columns.clear();
        assert!(check_parts(&bare).unwrap_err().to_string().contains("COPY part \"copy-01\" names no table"));
    }

    #[test]
    fn the_readme_gives_the_order_and_a_plain_command_per_file() {
        let m = set();
        let text = readme(&m, "20260101T000000Z-j.manifest.json", false);
        let at = |s: &str| text.find(s).unwrap_or_else(|| panic!("{s:?} not in:\n{text}"));
        assert!(at("1. The schema part's pre-data") < at("2. Every data and COPY part"));
        assert!(at("2. Every data and COPY part") < at("3. The schema part's post-data"));
        at("zstd -d < 20260101T000000Z-j.0000abcd.schema.zst | pg_restore --section=pre-data --dbname=<target>");
        at("zstd -d < 20260101T000000Z-j.0000abcd.data-02.zst | pg_restore --data-only --dbname=<target>");
        // Quoted for SQL and for the shell: the column's own quote survives both.
        at(r#"| PGCLIENTENCODING=UTF8 psql --dbname=<target> -c '\copy "public"."Big" ("id", "it'\''s") FROM STDIN'"#);
        at("- table t2 was created after the snapshot");
        assert_eq!(text.matches("<target>").count(), 6, "pre-data, three parts, post-data, and the intro: {text}");
        let encrypted = readme(&m, "x", true);
        assert!(
            encrypted.contains("pgvault cat s/d/20260101T000000Z-j/data-01 | pg_restore --data-only"),
            "{encrypted}"
        );
    }
}
