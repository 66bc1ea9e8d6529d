//! The scheduler run: list each server's databases and enqueue one job per database plus one
//! globals job per server. Used by the `backup-scheduler` function and `pgvault backup`.

use crate::config::context::Ctx;
use crate::config::settings::Server;
use crate::domain::error::{Error, Result};
use crate::domain::jobs::{self, BackupJob, Trigger};
use crate::seams::pg;
use time::OffsetDateTime;

/// The plan for one server, or why there is none.
#[derive(Debug)]
pub struct ServerPlan {
    pub server: String,
    pub jobs: Result<Vec<BackupJob>>,
    /// Databases named in `include` that the server does not have.
    pub missing: Vec<String>,
    /// The server's connectable, non-template databases, as listed (empty when it could not be
    /// listed).
    pub listed: Vec<String>,
}

/// Which servers a run covers: all, or the named one (unknown names are an error).
pub fn servers<'a>(ctx: &'a Ctx, only: Option<&str>) -> Result<Vec<&'a Server>> {
    match only {
        None => Ok(ctx.settings.inventory.iter().collect()),
        Some(name) => {
            ctx.settings.server(name).map(|s| vec![s]).ok_or_else(|| crate::config::context::unknown_server(name))
        }
    }
}

/// Plan the jobs for each server. A server that cannot be reached gets an error in its plan;
/// the other servers are planned all the same.
pub async fn plan(
    ctx: &Ctx,
    only_server: Option<&str>,
    only_databases: &[String],
    trigger: Trigger,
    now: OffsetDateTime,
) -> Result<Vec<ServerPlan>> {
    let mut plans = Vec::new();
    for server in servers(ctx, only_server)? {
        let planned = plan_server(ctx, server, only_databases, trigger, now).await;
        let (jobs, missing, listed) = match planned {
            Ok((jobs, missing, listed)) => (Ok(jobs), missing, listed),
            Err(e) => (Err(e), Vec::new(), Vec::new()),
        };
        plans.push(ServerPlan { server: server.name.clone(), jobs, missing, listed });
    }
    Ok(plans)
}

async fn plan_server(
    ctx: &Ctx,
    server: &Server,
    only_databases: &[String],
    trigger: Trigger,
    now: OffsetDateTime,
) -> Result<(Vec<BackupJob>, Vec<String>, Vec<String>)> {
    let spec = ctx.conn_spec(&server.name, &server.maintenance_db).await?;
    let client = pg::connect(&spec).await?;
    let existing = pg::list_databases(&client).await?;
    let (mut chosen, missing) = jobs::select_databases(server, &existing);
    if !only_databases.is_empty() {
        for d in only_databases {
            if !existing.contains(d) {
                return Err(Error::permanent(format!("database {d:?} does not exist on server {:?}", server.name)));
            }
        }
        chosen.retain(|d| only_databases.contains(d));
        // An explicit request backs up what it names, without the globals.
        return Ok((
            chosen
                .iter()
                .map(|d| {
                    BackupJob::new(crate::domain::layout::BackupKind::Database, &server.name, Some(d), now, trigger)
                })
                .collect(),
            missing,
            existing,
        ));
    }
    Ok((jobs::plan_backups(server, &chosen, now, trigger), missing, existing))
}
