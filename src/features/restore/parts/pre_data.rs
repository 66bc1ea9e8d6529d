//! Phase 1 of a backup in parts: the schema part's pre-data (types, tables, functions, sequences;
//! no index, constraint or trigger yet), streamed from storage through the verified reader.

use super::*;

pub(super) async fn run(run: &PartsRun<'_>, schema: &Part) -> Result<()> {
    let view = run.m.part_view(schema);
    let args = run.args_with("--section=pre-data");
    feed_pg_restore(run.ctx, &view, run.key, run.tool, run.spec, args, Method::Stream).await
}
