//! Phase 3 of a backup in parts: the schema part's post-data (indexes, constraints, foreign keys,
//! triggers, policies, the refresh of materialized views) once every data part has loaded, with
//! `pg_restore --jobs` from a scratch copy of the schema part (small: no table data), or
//! streamed with one job when the scratch disk has no room for it.

use super::*;

/// Returns how it ran (the reason of the method chosen).
pub(super) async fn run(run: &PartsRun<'_>, schema: &Part) -> Result<String> {
    let view = run.m.part_view(schema);
    let settings = &run.ctx.settings;
    let (method, why) = choose_method(
        run.jobs,
        view.raw_bytes,
        free_space(&settings.restore_scratch_dir),
        settings.restore_scratch_reserve,
    );
    let args = run.args_with("--section=post-data");
    feed_pg_restore(run.ctx, &view, run.key, run.tool, run.spec, args, method).await?;
    Ok(format!("post-data: {why}"))
}
