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
