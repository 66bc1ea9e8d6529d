//! The command line: the same operations the functions run, for operators and local runs.

use crate::backup::{self, Outcome};
use crate::catalog;
use crate::error::{Error, Result};
use crate::handler::{self, AppState};
use crate::hostsim;
use crate::jobs::{BACKUP_JOBS_QUEUE, Trigger};
use crate::progress::{self, human_bytes};
use crate::runtime::Runtime;
use crate::settings::{LogFormat, Settings};
use clap::{Parser, Subcommand};
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

/// `maxDequeueCount` in host.json (a test keeps them equal).
pub const MAX_DEQUEUE_COUNT: u32 = 3;

#[derive(Debug, Parser)]
#[command(name = "pgvault", version, about = "PostgreSQL backups for Azure, streamed into Blob Storage")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the Azure Functions custom handler on 127.0.0.1:$FUNCTIONS_CUSTOMHANDLER_PORT.
    Serve,
    /// Create the backup container and the job queues if they are missing.
    Init,
    /// Back up now: every database of every server, or those named.
    Backup {
        #[arg(long)]
        server: Option<String>,
        /// A database to back up (repeatable); needs --server.
        #[arg(long = "database", requires = "server")]
        databases: Vec<String>,
    },
    /// List backups.
    List {
        #[arg(long)]
        server: Option<String>,
        #[arg(long, requires = "server")]
        database: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Download backups, check their hashes, and prove the archives read (pg_restore --list).
    Verify {
        /// Backup ids, as `pgvault list` prints them.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        ids: Vec<String>,
        #[arg(long)]
        all: bool,
    },
    /// Play the Functions host against a running `pgvault serve` (local stacks and tests).
    #[command(subcommand)]
    HostSim(HostSim),
    /// Print, or apply, the least-privilege SQL for pgvault's database role.
    GrantSql {
        /// The role pgvault logs in as.
        #[arg(long)]
        role: String,
        /// The restore role (CREATEDB and what pg_restore needs) instead of the backup role.
        #[arg(long)]
        restore: bool,
        /// Grant per schema even on PostgreSQL 14+, instead of pg_read_all_data.
        #[arg(long, conflicts_with = "restore")]
        per_schema: bool,
        /// Run the SQL on --server, logged in as that server's inventory login (an admin).
        #[arg(long, requires = "server")]
        apply: bool,
        #[arg(long, requires = "apply")]
        server: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum HostSim {
    /// POST a timer payload to a timer-triggered function.
    Timer {
        #[arg(long)]
        url: String,
        #[arg(long, default_value = "backup-scheduler")]
        function: String,
    },
    /// Deliver every message of a queue to a queue-triggered function, as the host would.
    Drain {
        #[arg(long)]
        url: String,
        #[arg(long, default_value = BACKUP_JOBS_QUEUE)]
        queue: String,
        #[arg(long, default_value = "backup-worker")]
        function: String,
        #[arg(long, default_value = handler::backup_worker::BINDING)]
        binding: String,
        #[arg(long, value_enum, default_value = "host")]
        form: hostsim::Form,
    },
}

/// Set up logging: JSON lines under the Functions host, text otherwise; always to stderr, so
/// stdout carries only command output.
pub fn init_logging(settings: Option<&Settings>, serving: bool) {
    let filter = settings.map(|s| s.log_filter.clone()).unwrap_or_else(|| "info".into());
    let json = match settings.and_then(|s| s.log_format.clone()) {
        Some(LogFormat::Json) => true,
        Some(LogFormat::Text) => false,
        None => serving,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&filter).unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr);
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

pub async fn run(cli: Cli) -> ExitCode {
    let serving = matches!(cli.command, Command::Serve);
    let settings = match Settings::from_env() {
        Ok(s) => s,
        Err(e) => {
            init_logging(None, serving);
            eprintln!("pgvault: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(Some(&settings), serving);
    let result = match cli.command {
        Command::Serve => serve(settings).await,
        other => {
            let cancel = CancellationToken::new();
            let c = cancel.clone();
            tokio::spawn(async move {
                let _ = tokio::signal::ctrl_c().await;
                c.cancel();
            });
            match Runtime::build(settings, progress::Mode::auto(), cancel).await {
                Ok(rt) => command(rt, other).await,
                Err(e) => Err(e),
            }
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("pgvault: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn command(rt: Runtime, command: Command) -> Result<ExitCode> {
    match command {
        Command::Serve => unreachable!("handled by run"),
        Command::Init => {
            for line in rt.init().await? {
                println!("ready: {line}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Backup { server, databases } => backup_now(&rt, server.as_deref(), &databases).await,
        Command::List { server, database, json } => {
            let list = catalog::list(rt.ctx.store.as_ref(), server.as_deref(), database.as_deref()).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list).expect("serializes"));
            } else {
                println!(
                    "{:<62} {:<10} {:<20} {:<20} {:>10} {:<8} sha256",
                    "id", "server", "database", "time", "stored", "compr."
                );
                for m in &list {
                    let db = if m.database.is_empty() { "(globals)" } else { m.database.as_str() };
                    let time = m.finished_at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
                    println!(
                        "{:<62} {:<10} {:<20} {:<20} {:>10} {:<8} {}",
                        m.id,
                        m.server,
                        db,
                        time,
                        human_bytes(m.stored_bytes),
                        m.compression.to_string(),
                        m.sha256
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify { ids, all } => {
            let ids = if all {
                catalog::list(rt.ctx.store.as_ref(), None, None).await?.into_iter().map(|m| m.id).collect()
            } else {
                ids
            };
            let mut failed = 0;
            for id in &ids {
                match catalog::verify(&rt.ctx, id).await {
                    Ok(r) => println!(
                        "ok {}: {} blocks, {} stored, {} raw, {} archive entries",
                        r.id,
                        r.blocks,
                        human_bytes(r.stored_bytes),
                        human_bytes(r.raw_bytes),
                        r.toc_entries
                    ),
                    Err(e) => {
                        failed += 1;
                        println!("FAILED {id}: {e}");
                    }
                }
            }
            if all {
                for orphan in catalog::orphans(rt.ctx.store.as_ref(), None).await? {
                    println!("orphan (data without manifest, not a backup): {orphan}");
                }
            }
            println!("{} verified, {failed} failed", ids.len() - failed);
            Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Command::GrantSql { role, restore, per_schema, apply, server } => {
            let opts = crate::grant::GrantOptions { role, restore, per_schema };
            crate::grant::run(&rt.ctx, opts, server.as_deref().filter(|_| apply)).await
        }
        Command::HostSim(HostSim::Timer { url, function }) => {
            let (status, reply) = hostsim::invoke(&url, &function, &hostsim::timer_payload(&function, false)).await?;
            println!("{status} {}", serde_json::to_string_pretty(&reply).expect("serializes"));
            Ok(if (200..300).contains(&status) { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Command::HostSim(HostSim::Drain { url, queue, function, binding, form }) => {
            let q = rt.require_queue()?;
            let report = hostsim::drain(q.as_ref(), &queue, &url, &function, &binding, MAX_DEQUEUE_COUNT, form).await?;
            println!("{}", serde_json::to_string_pretty(&report).expect("serializes"));
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Plan like the scheduler, then run each job here, in order.
async fn backup_now(rt: &Runtime, server: Option<&str>, databases: &[String]) -> Result<ExitCode> {
    let now = time::OffsetDateTime::now_utc();
    let plans = crate::scheduler::plan(&rt.ctx, server, databases, Trigger::Cli, now).await?;
    let mut failed = 0;
    for plan in plans {
        let jobs = match plan.jobs {
            Ok(j) => j,
            Err(e) => {
                failed += 1;
                println!("FAILED server {}: {e}", plan.server);
                continue;
            }
        };
        for job in jobs {
            match backup::run(&rt.ctx, &job).await {
                Ok(Outcome::Created(m)) => {
                    println!("ok {} ({} -> {} stored)", m.id, human_bytes(m.raw_bytes), human_bytes(m.stored_bytes))
                }
                Ok(Outcome::AlreadyDone { id }) => println!("ok {id} (already there)"),
                Err(e) => {
                    failed += 1;
                    println!("FAILED {}: {e}", job.describe());
                }
            }
        }
    }
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// `pgvault serve`: bind first (the host polls `GET /` within about 30 s), then wire up.
async fn serve(settings: Settings) -> Result<ExitCode> {
    let port = settings
        .handler_port
        .ok_or_else(|| Error::permanent("setting FUNCTIONS_CUSTOMHANDLER_PORT: required by `pgvault serve`"))?;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(|e| Error::permanent(format!("bind 127.0.0.1:{port}: {e}")))?;
    let addr = listener.local_addr().map_err(|e| Error::permanent(e.to_string()))?;
    // Tests and the local stack read this line to learn the port when it was 0.
    println!("pgvault listening on {addr}");
    tracing::info!(%addr, "custom handler listening");
    let cancel = CancellationToken::new();
    let rt =
        Runtime::build(settings, progress::Mode::Log { every: std::time::Duration::from_secs(30) }, cancel.clone())
            .await?;
    let queue = rt.require_queue()?;
    let state = AppState { ctx: rt.ctx.clone(), queue, max_dequeue_count: MAX_DEQUEUE_COUNT };
    let shutdown = {
        let cancel = cancel.clone();
        async move {
            shutdown_signal().await;
            tracing::info!("shutting down: no new work; running jobs stop without committing");
            cancel.cancel();
        }
    };
    axum::serve(listener, handler::app(state))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| Error::transient(format!("serve: {e}")))?;
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
