//! The command line: the same operations the functions run, for operators and local runs.

/// `println!` for the CLI's output. A reader that went away (`pgvault list --json | head`) ends
/// the command quietly with success, as `ripgrep` does, instead of a panic; any other write error
/// is named. (SIGPIPE stays ignored: a restore must see pg_restore's closed stdin as an error.)
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        $crate::cli::stdout_written(writeln!(std::io::stdout().lock(), $($arg)*))
    }};
}

pub mod hostsim;
pub mod monitor;
pub mod pgbackrest;
pub mod status;

use crate::domain::error::{Error, Result};
use crate::features::backup::Outcome;
use crate::features::catalog;
use crate::handler::{self, AppState};

use crate::config::settings::{LogFormat, Settings};
use crate::domain::jobs::{BACKUP_JOBS_QUEUE, Trigger};
use crate::runtime::Runtime;
use crate::seams::progress::{self, human_bytes};
use clap::{Parser, Subcommand};
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

/// What [`outln!`] does with a write to stdout that failed.
pub(crate) fn stdout_written(written: std::io::Result<()>) {
    if let Err(e) = written {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("pgvault: cannot write to standard output: {e}");
        std::process::exit(1);
    }
}

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
        /// With --all: remove the orphans (data without a manifest) it reports.
        #[arg(long, requires = "all")]
        clean_orphans: bool,
        /// Also unwrap the data key of each encrypted backup, authenticate every chunk and read
        /// the archive (without it, an encrypted backup's stored bytes are checked, keyless).
        #[arg(long)]
        decrypt: bool,
    },
    /// Write a backup's pg_dump archive (or globals SQL) to stdout, decrypted and decompressed,
    /// checked as it goes: `pgvault cat ID | pg_restore -d DB`.
    Cat {
        /// The backup id, as `pgvault list` prints it.
        id: String,
    },
    /// Restore now, in this process: the same request as one posted on restore-requests.
    Restore(Box<RestoreArgs>),
    /// List job records (backup, restore, retention, verify, drill, ...), or the summary view.
    Jobs {
        /// backup, restore-request, restore-task, retention, verify, drill, pgbackrest-sas, ...
        #[arg(long)]
        kind: Option<String>,
        /// Only this request (and its tasks) or task.
        #[arg(long)]
        id: Option<String>,
        /// Only failed jobs.
        #[arg(long)]
        failed: bool,
        /// Only jobs updated since: an RFC 3339 time or a duration back (36h, 7d).
        #[arg(long)]
        since: Option<String>,
        /// Only jobs about this server.
        #[arg(long)]
        server: Option<String>,
        /// Per database: last success, last failure, next scheduled run, last proven restore.
        #[arg(long)]
        summary: bool,
        /// Print JSON (with every detail) instead of a table.
        #[arg(long)]
        json: bool,
        /// With --json: include the download URLs of as-files exports (read-only SAS, valid
        /// until they expire), which are withheld otherwise.
        #[arg(long, requires = "json")]
        show_urls: bool,
    },
    /// Plan retention and remove what it says (manifest first, then data); --dry-run prints it.
    Retention {
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        server: Option<String>,
    },
    /// Set (or with --off release) a legal hold: retention never removes a held backup.
    Keep {
        id: String,
        #[arg(long)]
        off: bool,
    },
    /// Restore drills: newest and a random older backup of each database into PGVAULT_DRILL_SERVER.
    Drill {
        #[arg(long)]
        server: Option<String>,
    },
    /// Check what would make backups and restores fail, before the schedule runs them.
    /// Exit status: 0 with no error findings (warnings may be printed), 1 with error findings
    /// or when doctor cannot run, 2 for invalid settings.
    Doctor {
        /// Only this server (and only its backups for the restore-target checks).
        #[arg(long)]
        server: Option<String>,
        /// A server that backups are restored into (repeatable); the drill server always is.
        #[arg(long = "restore-target")]
        restore_targets: Vec<String>,
        /// Print the findings as JSON.
        #[arg(long)]
        json: bool,
    },
    /// The status page in the terminal: per database protection against the RPO, trend, proof,
    /// trouble, retention and posture; pgBackRest targets; the doctor's findings.
    Status {
        /// Print the view as JSON.
        #[arg(long)]
        json: bool,
        /// Write the HTML page (what the `status` function serves) to this file.
        #[arg(long, value_name = "FILE")]
        html: Option<std::path::PathBuf>,
    },
    /// Play the Functions host against a running `pgvault serve` (local stacks and tests).
    #[command(subcommand)]
    HostSim(HostSim),
    /// SAS for VM-hosted pgBackRest: rotate, freshness (operator); sync, doctor (on the VM).
    #[command(subcommand, name = "pgbackrest-sas")]
    PgbackrestSas(crate::cli::pgbackrest::PgbackrestSas),
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
        /// With --restore: a role owning databases it restores (repeatable). The restore role
        /// becomes its member, so restored databases and objects get their owner back.
        #[arg(long = "member-of", requires = "restore")]
        member_of: Vec<String>,
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
    let filter = log_directives(&settings.map(|s| s.log_filter.clone()).unwrap_or_else(|| "info".into()), serving);
    let json = match settings.and_then(|s| s.log_format.clone()) {
        Some(LogFormat::Json) => true,
        Some(LogFormat::Text) => false,
        None => serving,
    };
    // Colour only for a person at a terminal: log files and pipes get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&filter).unwrap_or_else(|_| log_directives("info", serving).into()),
        )
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

/// The log filter, from `PGVAULT_LOG`, with two directives added unless it names their targets:
/// - `azure_identity=warn` while the filter's level for everything is coarser than debug: the
///   identity crate says at INFO which managed identity it uses, on every command; that is
///   debugging detail, shown with `debug` (or by naming `azure_identity`);
/// - the job event (`pgvault::job`): `info` when serving, where it feeds the workbook and the log
///   alerts, so a quieter filter (`warn`) does not silence it; `warn` at the command line, where
///   nothing collects it and the command prints its own outcome (shown at debug, or by naming
///   the target).
pub fn log_directives(filter: &str, serving: bool) -> String {
    let parts: Vec<&str> = filter.split(',').map(str::trim).filter(|p| !p.is_empty()).collect();
    let names = |target: &str| parts.iter().any(|p| p.split('=').next().is_some_and(|t| t.starts_with(target)));
    let global_debug =
        parts.iter().any(|p| !p.contains('=') && matches!(p.to_ascii_lowercase().as_str(), "debug" | "trace"));
    let mut out = parts.join(",");
    let mut add = |d: &str| {
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(d);
    };
    if !global_debug && !names("azure_identity") {
        add("azure_identity=warn");
    }
    let job = crate::monitor::event::TARGET;
    if serving && !names(job) {
        add(&format!("{job}=info"));
    } else if !serving && !global_debug && !names(job) {
        add(&format!("{job}=warn"));
    }
    out
}

pub async fn run(cli: Cli) -> ExitCode {
    let serving = matches!(cli.command, Command::Serve);
    if let Err(e) = crate::seams::failpoint::setup() {
        init_logging(None, serving);
        eprintln!("pgvault: {e}");
        return ExitCode::from(2);
    }
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
        // Runs on a VM: no backup store, no queues.
        Command::PgbackrestSas(c) if c.is_vm_side() => crate::cli::pgbackrest::run_vm(&settings, c).await,
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
                outln!("ready: {line}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Backup { server, databases } => backup_now(&rt, server.as_deref(), &databases).await,
        Command::List { server, database, json } => {
            let list = catalog::list(rt.ctx.store.as_ref(), server.as_deref(), database.as_deref()).await?;
            let problems = catalog::key_problems(&rt.ctx, &list).await;
            if json {
                // Each manifest as stored, plus `unreadable` where its key version cannot unwrap.
                let rows: Vec<serde_json::Value> = list
                    .iter()
                    .zip(&problems)
                    .map(|(m, p)| {
                        let mut v = serde_json::to_value(m).expect("serializes");
                        if let Some(p) = p {
                            v["unreadable"] = serde_json::json!(p);
                        }
                        v
                    })
                    .collect();
                outln!("{}", serde_json::to_string_pretty(&rows).expect("serializes"));
            } else {
                let second = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
                let rows: Vec<[String; 8]> = list
                    .iter()
                    .map(|m| {
                        [
                            m.id.clone(),
                            m.server.clone(),
                            if m.database.is_empty() { "(globals)".into() } else { m.database.clone() },
                            m.finished_at.to_offset(time::UtcOffset::UTC).format(&second).unwrap_or_default(),
                            human_bytes(m.stored_bytes),
                            m.compression.to_string(),
                            if m.encryption.is_some() { "aes-256-gcm".into() } else { "-".into() },
                            m.sha256.clone(),
                        ]
                    })
                    .collect();
                let header = ["id", "server", "database", "finished (UTC)", "stored", "compr.", "encr.", "sha256"]
                    .map(String::from);
                let mut widths = header.clone().map(|h| h.len());
                for row in &rows {
                    for (w, cell) in widths.iter_mut().zip(row) {
                        *w = (*w).max(cell.chars().count());
                    }
                }
                for row in std::iter::once(&header).chain(&rows) {
                    let cells: Vec<String> = row
                        .iter()
                        .zip(widths)
                        .enumerate()
                        .map(|(i, (c, w))| if i == 4 { format!("{c:>w$}") } else { format!("{c:<w$}") })
                        .collect();
                    outln!("{}", cells.join("  ").trim_end());
                }
                for (m, p) in list.iter().zip(&problems) {
                    if let Some(p) = p {
                        outln!("unreadable {}: {p}", m.id);
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Cat { id } => {
            // `<backup id>/<part name>` names one part of a backup in parts.
            let backup = match id.rsplit_once('/') {
                Some((b, _)) if !rt.ctx.store.exists(&crate::domain::layout::manifest_for_id(&id)).await? => b,
                _ => id.as_str(),
            };
            if !rt.ctx.store.exists(&crate::domain::layout::manifest_for_id(backup)).await? {
                eprintln!("pgvault: cat: there is no backup {id:?}\nHINT: `pgvault list` prints the backup ids");
                return Ok(ExitCode::from(2));
            }
            // Logs go to stderr; stdout carries the archive only.
            catalog::cat(&rt.ctx, &id, std::io::BufWriter::with_capacity(1 << 20, std::io::stdout())).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify { ids, all, clean_orphans, decrypt } => {
            // A mistyped id is the caller's mistake, not a failed verification: no record, no alert.
            for id in &ids {
                if !rt.ctx.store.exists(&crate::domain::layout::manifest_for_id(id)).await? {
                    eprintln!("pgvault: verify: there is no backup {id:?}\nHINT: `pgvault list` prints the backup ids");
                    return Ok(ExitCode::from(2));
                }
            }
            let rec = crate::features::report::start_record(
                crate::monitor::records::JobKind::Verify,
                "*",
                "pgvault verify",
                "cli",
            );
            let ids = if all {
                catalog::list(rt.ctx.store.as_ref(), None, None).await?.into_iter().map(|m| m.id).collect()
            } else {
                ids
            };
            use crate::monitor::records::VerifyDetail;
            use crate::monitor::tracked::{Alerting, Monitor, Run, track};
            let alerting = Alerting::once(crate::seams::alerts::AlertKind::JobFailed);
            let verification_failed = std::cell::Cell::new(false);
            let (result, _) = track(Monitor::of(&rt.ctx), rec, alerting, async {
                let mut failed = 0;
                for id in &ids {
                    match catalog::verify(&rt.ctx, id, decrypt).await {
                        Ok(r) => match r.raw_bytes {
                            Some(raw) => outln!(
                                "ok {}: {} blocks, {} stored, {} raw, {} archive entries{}",
                                r.id,
                                r.blocks,
                                human_bytes(r.stored_bytes),
                                human_bytes(raw),
                                r.toc_entries,
                                if r.decrypted { ", every chunk authenticated" } else { "" }
                            ),
                            None => outln!(
                                "ok {}: {} blocks, {} stored, encrypted (stored bytes checked; --decrypt also \
                                 authenticates and reads it)",
                                r.id,
                                r.blocks,
                                human_bytes(r.stored_bytes)
                            ),
                        },
                        Err(e) => {
                            failed += 1;
                            outln!("FAILED {id}: {e}");
                        }
                    }
                }
                let mut orphans = Vec::new();
                let mut cleaned = Vec::new();
                let detail_of = |orphans: &[String], cleaned: &[String]| VerifyDetail {
                    verified: Some(ids.len() - failed),
                    failed: Some(failed),
                    orphans: orphans.to_vec(),
                    cleaned: cleaned.to_vec(),
                    ..Default::default()
                };
                if all {
                    match catalog::orphans(rt.ctx.store.as_ref(), None).await {
                        Ok(o) => orphans = o,
                        Err(e) => return Run::failed(e, detail_of(&[], &[])),
                    }
                    for orphan in &orphans {
                        outln!("orphan (data without manifest, not a backup): {orphan}");
                        if clean_orphans {
                            let now = time::OffsetDateTime::now_utc();
                            match catalog::in_flight(rt.ctx.store.as_ref(), orphan, now, crate::features::claim::LEASE)
                                .await
                            {
                                Ok(None) => {}
                                Ok(Some(why)) => {
                                    outln!("kept orphan {orphan}: {why}");
                                    continue;
                                }
                                Err(e) => {
                                    let detail = detail_of(&orphans, &cleaned);
                                    return Run::failed(e.context(format!("check orphan {orphan:?}")), detail);
                                }
                            }
                            if let Err(e) = rt.ctx.store.delete(orphan).await {
                                let detail = detail_of(&orphans, &cleaned);
                                return Run::failed(e.context(format!("remove orphan {orphan:?}")), detail);
                            }
                            outln!("removed orphan {orphan}");
                            cleaned.push(orphan.clone());
                        }
                    }
                }
                outln!("{} verified, {failed} failed", ids.len() - failed);
                let detail = detail_of(&orphans, &cleaned);
                if failed == 0 {
                    Run::ok((), detail)
                } else {
                    verification_failed.set(true);
                    Run::failed(
                        Error::permanent(format!("{failed} of {} backups failed verification", ids.len())),
                        detail,
                    )
                }
            })
            .await;
            Ok(match result {
                Ok(()) => ExitCode::SUCCESS,
                // Printed above, line by line: only the exit code is left to say it.
                Err(_) if verification_failed.get() => ExitCode::FAILURE,
                Err(e) => return Err(e),
            })
        }
        Command::GrantSql { role, restore, per_schema, member_of, apply, server } => {
            let opts = crate::features::grant::GrantOptions { role, restore, per_schema, member_of };
            crate::features::grant::run(&rt.ctx, opts, server.as_deref().filter(|_| apply)).await
        }
        Command::Restore(args) if args.table.is_some() => restore_table_now(&rt, &args).await,
        Command::Restore(args) => {
            // A request built from flags is reported in the flags' words; a --request file in
            // the JSON fields its author wrote.
            let flags = args.request.is_none();
            restore_now(&rt, *args).await.map_err(|e| if flags { e.reworded(flag_words) } else { e })
        }
        Command::PgbackrestSas(c) => {
            crate::cli::pgbackrest::run(&rt.ctx.settings, crate::monitor::tracked::Monitor::of(&rt.ctx), c).await
        }
        Command::Jobs { kind, id, failed, since, server, summary, json, show_urls } => {
            let now = time::OffsetDateTime::now_utc();
            let filter = crate::features::report::Filter {
                kind: kind.as_deref().map(crate::monitor::records::JobKind::parse).transpose()?,
                failed,
                since: since.as_deref().map(|s| crate::features::report::parse_since(s, now)).transpose()?,
                server,
                id,
            };
            list_jobs(&rt, &filter, summary, json, show_urls).await
        }
        Command::Retention { dry_run, server } => {
            crate::cli::monitor::retention(&rt.ctx, dry_run, server.as_deref()).await
        }
        Command::Keep { id, off } => crate::cli::monitor::keep(&rt.ctx, &id, off).await,
        Command::Drill { server } => crate::cli::monitor::drill(&rt.ctx, server.as_deref()).await,
        Command::Doctor { server, restore_targets, json } => {
            let opts = crate::features::doctor::Options { server, restore_targets };
            crate::cli::monitor::doctor(&rt.ctx, &opts, json).await
        }
        Command::Status { json, html } => crate::cli::status::run(&rt.ctx, json, html.as_deref()).await,
        Command::HostSim(HostSim::Timer { url, function }) => {
            let (status, reply) = hostsim::invoke(&url, &function, &hostsim::timer_payload(&function, false)).await?;
            outln!("{status} {}", serde_json::to_string_pretty(&reply).expect("serializes"));
            Ok(if (200..300).contains(&status) { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Command::HostSim(HostSim::Drain { url, queue, function, binding, form }) => {
            let q = rt.require_queue()?;
            let report = hostsim::drain(q.as_ref(), &queue, &url, &function, &binding, MAX_DEQUEUE_COUNT, form).await?;
            outln!("{}", serde_json::to_string_pretty(&report).expect("serializes"));
            // Like the host, a failed delivery is not an error of the simulator, but a caller
            // (the demo, a test) wants to know: exit 1 when any delivery failed.
            Ok(if report.failed_attempts == 0 && report.poisoned == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
    }
}

/// Plan like the scheduler, then run each job here, in order.
async fn backup_now(rt: &Runtime, server: Option<&str>, databases: &[String]) -> Result<ExitCode> {
    // A database the inventory leaves out is refused, as backup-now refuses it: never a silent
    // exit 0 that backed up nothing.
    if let Some(name) = server {
        let s = rt.ctx.settings.server(name).ok_or_else(|| crate::config::context::unknown_server(name))?;
        if let Some(why) = databases.iter().find_map(|d| s.leaves_out(d)) {
            return Err(Error::permanent(why)
                .with_hint("change the server's include or exclude in the inventory to back it up"));
        }
    }
    let now = time::OffsetDateTime::now_utc();
    let plans = crate::features::scheduler::plan(&rt.ctx, server, databases, Trigger::Cli, now).await?;
    let mut failed = 0;
    for plan in plans {
        let jobs = match plan.jobs {
            Ok(j) => j,
            Err(e) => {
                failed += 1;
                outln!("FAILED server {}: {e}", plan.server);
                continue;
            }
        };
        for job in jobs {
            match crate::features::report::run_backup(&rt.ctx, &job, true).await {
                Ok(Outcome::Created(m)) => {
                    outln!("ok {} ({} -> {} stored)", m.id, human_bytes(m.raw_bytes), human_bytes(m.stored_bytes))
                }
                Ok(Outcome::AlreadyDone { id }) => outln!("ok {id} (already there)"),
                Err(e) => {
                    failed += 1;
                    outln!("FAILED {}: {e}", job.describe());
                }
            }
        }
    }
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// `pgvault serve`: bind first (the host polls `GET /` within about 30 s), then wire up.
async fn serve(mut settings: Settings) -> Result<ExitCode> {
    let port = settings
        .handler_port
        .ok_or_else(|| Error::permanent("setting FUNCTIONS_CUSTOMHANDLER_PORT: required by `pgvault serve`"))?;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(|e| Error::permanent(format!("bind 127.0.0.1:{port}: {e}")))?;
    let addr = listener.local_addr().map_err(|e| Error::permanent(e.to_string()))?;
    // Tests and the local stack read this line to learn the port when it was 0.
    outln!("pgvault listening on {addr}");
    tracing::info!(%addr, "custom handler listening");
    // The Flex package's PostgreSQL tools: copied out of the read-only app folder now that the
    // host can see us (a second or so), searched after PGVAULT_PG_BIN_DIRS.
    if let Some(bundle) = crate::seams::bundle::package_bundle_dir() {
        let dest = std::path::Path::new(crate::seams::bundle::DEFAULT_DEST);
        let bins = tokio::task::spawn_blocking(move || crate::seams::bundle::install(&bundle, dest))
            .await
            .map_err(|e| Error::transient(format!("bundled PostgreSQL tools: {e}")))??;
        tracing::info!(dirs = ?bins, "bundled PostgreSQL tools installed");
        settings.pg_bin_dirs.extend(bins);
    }
    let cancel = CancellationToken::new();
    let rt =
        Runtime::build(settings, progress::Mode::Log { every: std::time::Duration::from_secs(30) }, cancel.clone())
            .await?;
    let queue = rt.require_queue()?;
    if rt.ctx.settings.drill_server.is_none() {
        tracing::info!(
            "restore drills are not configured (PGVAULT_DRILL_SERVER is unset): the restore-drill timer does nothing"
        );
    }
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

/// `pgvault restore`: the request, from flags or from a JSON file.
#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// A restore request as JSON (a file, or `-` for stdin), exactly as posted on restore-requests.
    #[arg(long, conflicts_with_all = ["server", "whole_server", "target_server"])]
    request: Option<std::path::PathBuf>,
    /// The source server (it may have left the inventory; its backups are what count).
    #[arg(long, required_unless_present = "request")]
    server: Option<String>,
    /// The source database.
    #[arg(long, conflicts_with = "whole_server")]
    database: Option<String>,
    /// Every database of --server with a backup (plus the globals with --globals).
    #[arg(long)]
    whole_server: bool,
    /// A backup id, as `pgvault list` prints it (default: the latest).
    #[arg(long, conflicts_with = "latest_before")]
    backup: Option<String>,
    /// The newest backup taken at or before this RFC 3339 time.
    #[arg(long)]
    latest_before: Option<String>,
    /// create, replace or as-files.
    #[arg(long, default_value = "create", value_parser = parse_mode)]
    mode: crate::features::restore::Mode,
    /// create / replace: a server of the inventory (default: --server).
    #[arg(long)]
    target_server: Option<String>,
    /// create / replace of one database: its new name (default: the same name).
    #[arg(long)]
    target_database: Option<String>,
    /// as-files: the container to copy into.
    #[arg(long)]
    container: Option<String>,
    /// as-files: a name prefix in that container.
    #[arg(long)]
    prefix: Option<String>,
    /// as-files: seconds the URLs work (default 3600).
    #[arg(long)]
    expires_in: Option<u64>,
    #[arg(long)]
    no_owner: bool,
    #[arg(long)]
    no_privileges: bool,
    /// Every restored object belongs to this existing role.
    #[arg(long)]
    owner: Option<String>,
    /// Restore the roles of the globals backup first (existing roles are skipped).
    #[arg(long)]
    globals: bool,
    /// pg_restore --jobs, when the scratch disk has room for the archive. A backup in parts: the
    /// parts loaded at once, each streamed from storage (default 2).
    #[arg(long)]
    jobs: Option<u32>,
    /// Create the database with the target server's default encoding and locale instead of the
    /// backup's (when the target lacks the backup's locale; text then sorts by the target's rules).
    #[arg(long)]
    default_locale: bool,
    /// as-files of an encrypted backup: export it as stored (encrypted), not decrypted.
    #[arg(long)]
    keep_encrypted: bool,
    /// The idempotency key (default: a new one).
    #[arg(long)]
    request_id: Option<String>,
    /// Free text recorded with the request (default: $USER).
    #[arg(long)]
    requested_by: Option<String>,
    /// Print the plan and do nothing.
    #[arg(long)]
    dry_run: bool,
    /// Run the tasks even if another delivery holds them: for a CLI run of this request that was
    /// killed. Never while that run (or a worker) may still be restoring.
    #[arg(long)]
    take_over: bool,
    /// Print JSON reports (with the as-files URLs) instead of text.
    #[arg(long)]
    json: bool,
    /// Restore one table, `SCHEMA.TABLE` (names as stored), into the existing
    /// --target-database: its rows, read from Blob by range, and its definition when the target
    /// lacks it. A table that exists with rows is refused.
    #[arg(long, requires = "target_database", conflicts_with_all = [
        "request", "whole_server", "globals", "jobs", "container", "prefix", "expires_in", "owner",
        "dry_run", "keep_encrypted", "default_locale", "take_over"])]
    table: Option<String>,
}

fn parse_mode(s: &str) -> std::result::Result<crate::features::restore::Mode, String> {
    use crate::features::restore::Mode;
    Mode::parse(s).ok_or_else(|| {
        let all: Vec<&str> = Mode::ALL.iter().map(|m| m.as_str()).collect();
        format!("{s:?} is not a mode: use one of {}", all.join(", "))
    })
}

/// The backup a restore's flags choose.
fn backup_choice(a: &RestoreArgs) -> Result<crate::features::restore::BackupChoice> {
    use crate::features::restore::BackupChoice;
    Ok(match (&a.backup, &a.latest_before) {
        (Some(id), _) => BackupChoice::Id(id.clone()),
        (None, Some(t)) => BackupChoice::LatestBefore(
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                .map_err(|e| Error::permanent(format!("--latest-before {t:?} is not an RFC 3339 time: {e}")))?,
        ),
        (None, None) => BackupChoice::Latest,
    })
}

fn restore_request(a: &RestoreArgs) -> Result<crate::features::restore::RestoreRequest> {
    use crate::features::restore::{MESSAGE_VERSION, Options, RestoreRequest, Source, Target};
    if let Some(path) = &a.request {
        let text = if path.as_os_str() == "-" {
            std::io::read_to_string(std::io::stdin()).map_err(|e| Error::permanent(format!("read stdin: {e}")))?
        } else {
            std::fs::read_to_string(path)
                .map_err(|e| Error::permanent(format!("read request file {}: {e}", path.display())))?
        };
        return RestoreRequest::from_json(&text);
    }
    if a.database.is_none() && !a.whole_server {
        return Err(Error::permanent("name the source database with --database, or restore all with --whole-server"));
    }
    let backup = backup_choice(a)?;
    let req = RestoreRequest {
        version: MESSAGE_VERSION,
        request_id: a.request_id.clone().unwrap_or_else(|| format!("cli-{}", uuid::Uuid::new_v4().simple())),
        requested_by: a.requested_by.clone().or_else(|| std::env::var("USER").ok().map(|u| format!("{u} (cli)"))),
        source: Source { server: a.server.clone().unwrap_or_default(), database: a.database.clone(), backup },
        target: Target {
            mode: a.mode,
            // A database goes back where it came from unless told otherwise.
            server: match a.mode {
                crate::features::restore::Mode::AsFiles => a.target_server.clone(),
                _ => a.target_server.clone().or_else(|| a.server.clone()),
            },
            database: a.target_database.clone(),
            container: a.container.clone(),
            prefix: a.prefix.clone(),
            expires_in_seconds: a.expires_in,
        },
        options: Options {
            no_owner: a.no_owner,
            no_privileges: a.no_privileges,
            owner: a.owner.clone(),
            globals: a.globals,
            jobs: a.jobs,
            default_locale: a.default_locale,
            keep_encrypted: a.keep_encrypted,
        },
    };
    req.validate()?;
    Ok(req)
}

/// The request's JSON fields and the `pgvault restore` flags that set them, for messages.
const FLAG_FOR_FIELD: &[(&str, &str)] = &[
    ("source.backup.latest_before", "--latest-before"),
    ("source.backup.id", "--backup"),
    ("source.server", "--server"),
    ("source.database", "--database"),
    ("target.expires_in_seconds", "--expires-in"),
    ("target.container", "--container"),
    ("target.database", "--target-database"),
    ("target.server", "--target-server"),
    ("target.prefix", "--prefix"),
    ("target.mode", "--mode"),
    ("options.keep_encrypted", "--keep-encrypted"),
    ("options.default_locale", "--default-locale"),
    ("options.no_privileges", "--no-privileges"),
    ("options.no_owner", "--no-owner"),
    ("options.globals", "--globals"),
    ("options.owner", "--owner"),
    ("options.jobs", "--jobs"),
    ("no_privileges", "--no-privileges"),
    ("no_owner", "--no-owner"),
    ("default_locale", "--default-locale"),
    ("requested_by", "--requested-by"),
    ("request_id", "--request-id"),
];

/// A restore message in the words of the flags the user typed. Only whole field names outside
/// double quotes are replaced (object names and server text are quoted, and stay as they are);
/// longer names come first in the table, so `options.no_owner` is replaced whole.
pub fn flag_words(text: &str) -> String {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '.';
    let mut out = String::with_capacity(text.len());
    let mut quoted = false;
    let mut rest = text;
    'outer: while let Some(c) = rest.chars().next() {
        if c == '"' {
            quoted = !quoted;
        } else if !quoted && !out.chars().next_back().is_some_and(word) {
            for (field, flag) in FLAG_FOR_FIELD {
                if let Some(after) = rest.strip_prefix(field)
                    && !after.chars().next().is_some_and(|n| n.is_ascii_alphanumeric() || n == '_')
                {
                    out.push_str(flag);
                    rest = after;
                    continue 'outer;
                }
            }
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// `pgvault restore --table`: one table into an existing database.
async fn restore_table_now(rt: &Runtime, a: &RestoreArgs) -> Result<ExitCode> {
    use crate::features::restore::{TableRestore, restore_table};
    let spec = a.table.as_deref().unwrap_or_default();
    let (schema, table) = spec
        .split_once('.')
        .filter(|(s, t)| !s.is_empty() && !t.is_empty())
        .ok_or_else(|| Error::permanent(format!("--table {spec:?} is not SCHEMA.TABLE")))?;
    let server = a.server.clone().unwrap_or_default();
    let database = a.database.clone().ok_or_else(|| Error::permanent("--table needs --database"))?;
    let backup = backup_choice(a)?;
    let req = TableRestore {
        target_server: a.target_server.clone().unwrap_or_else(|| server.clone()),
        target_database: a.target_database.clone().unwrap_or_default(),
        server,
        database,
        backup,
        schema: schema.into(),
        table: table.into(),
        no_owner: a.no_owner,
        no_privileges: a.no_privileges,
    };
    let report = restore_table(&rt.ctx, &req).await?;
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&report).expect("serializes"));
    } else {
        outln!(
            "restored table {} ({}, {} rows{}) into {} from backup {}",
            report.table,
            report.action,
            report.rows,
            if report.rows_checked { ", as the backup counted" } else { "" },
            report.target,
            report.backup
        );
        outln!(
            "read {} of {} stored bytes ({}: {})",
            report.stored_bytes_read,
            report.stored_bytes,
            report.read,
            report.read_reason
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn restore_now(rt: &Runtime, a: RestoreArgs) -> Result<ExitCode> {
    use crate::features::restore::{self, Submitted, TaskOutcome};
    let req = restore_request(&a)?;
    if a.dry_run {
        let backups = catalog::list(rt.ctx.store.as_ref(), Some(&req.source.server), None).await?;
        let plan = restore::plan(&req, &rt.ctx.settings, &backups)?;
        if a.json {
            outln!("{}", serde_json::to_string_pretty(&plan).expect("serializes"));
        } else {
            for c in &plan.choices {
                outln!("plan: {}: {}", c.what, c.reason);
            }
            for t in &plan.tasks {
                outln!("task {}: {}", t.task_id, t.describe());
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let plan = match restore::submit(&rt.ctx, None, &req).await? {
        Submitted::Duplicate(rec) if rec.status == crate::monitor::records::Status::Succeeded => {
            if a.json {
                let out = serde_json::json!({ "request_id": rec.id, "status": "already-done" });
                outln!("{}", serde_json::to_string_pretty(&out).expect("serializes"));
            } else {
                outln!("request {} succeeded before; nothing to do", rec.id);
            }
            return Ok(ExitCode::SUCCESS);
        }
        // The same request again (after a WAITING, BUSY or FAILED run; whoever runs it): run its
        // recorded plan's tasks; those that succeeded before are skipped by their records.
        Submitted::Duplicate(rec) if restore::RequestDetail::of(&rec).is_request(&req) => {
            let plan = restore::RequestDetail::of(&rec).plan.ok_or_else(|| {
                crate::domain::error::Error::permanent(format!(
                    "restore request {:?}: the record holds no readable plan",
                    rec.id
                ))
            })?;
            if !a.json {
                outln!("request {} was submitted before (status {}): resuming its plan", rec.id, rec.status.as_str());
            }
            plan
        }
        Submitted::Duplicate(rec) => {
            return Err(crate::domain::error::Error::permanent(format!(
                "request id {:?} was used before for a different request (status {})",
                rec.id,
                rec.status.as_str()
            ))
            .with_hint("give this request its own --request-id"));
        }
        Submitted::Planned(plan) => plan,
    };
    if !a.json {
        outln!("request {}", plan.request_id);
        for c in &plan.choices {
            outln!("plan: {}: {}", c.what, c.reason);
        }
    }
    let mut failed = 0;
    let mut reports = Vec::new();
    for task in &plan.tasks {
        let delivery = crate::features::claim::Delivery::cli(a.take_over);
        match restore::execute_task(&rt.ctx, task, true, &delivery).await {
            Ok(TaskOutcome::Done(r)) => {
                if !a.json {
                    print_task_report(
                        task,
                        &r,
                        |t: &str| if a.request.is_none() { flag_words(t) } else { t.to_string() },
                    );
                }
                reports.push(serde_json::json!({ "task_id": task.task_id, "status": "succeeded", "report": r }));
            }
            Ok(TaskOutcome::RehydrationPending { blob, .. }) => {
                failed += 1;
                if !a.json {
                    outln!(
                        "WAITING {}: backup data {blob} is archived; rehydration started (hours). Run the restore again when it is online",
                        task.task_id
                    );
                }
                reports.push(
                    serde_json::json!({ "task_id": task.task_id, "status": "rehydration-pending", "blob": blob }),
                );
            }
            Ok(TaskOutcome::RunningElsewhere(holder)) => {
                failed += 1;
                if !a.json {
                    outln!(
                        "BUSY {}: another delivery (message {}) is running this task; see `pgvault jobs` \
                         (--take-over if that was a CLI run that was killed)",
                        task.task_id,
                        holder.message_id
                    );
                }
                reports.push(serde_json::json!({ "task_id": task.task_id, "status": "running-elsewhere" }));
            }
            Ok(TaskOutcome::AlreadyDone(_)) => {
                if !a.json {
                    outln!("ok {}: done before", task.task_id);
                }
                reports.push(serde_json::json!({ "task_id": task.task_id, "status": "already-done" }));
            }
            Err(e) => {
                failed += 1;
                // The reason names the backup and the target: printed once, as the only line.
                let e = if a.request.is_none() { e.reworded(flag_words) } else { e };
                if !a.json {
                    outln!("FAILED {}: {e}", task.task_id);
                }
                reports
                    .push(serde_json::json!({ "task_id": task.task_id, "status": "failed", "error": e.to_string() }));
            }
        }
    }
    if a.json {
        let out = serde_json::json!({ "request_id": plan.request_id, "choices": plan.choices, "tasks": reports });
        outln!("{}", serde_json::to_string_pretty(&out).expect("serializes"));
    } else {
        outln!("{} restored, {failed} failed", plan.tasks.len() - failed);
    }
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn print_task_report(
    task: &crate::features::restore::RestoreTask,
    r: &crate::features::restore::TaskReport,
    words: impl Fn(&str) -> String,
) {
    outln!("ok {}: {} ({}, {:.1} s)", task.task_id, task.describe(), human_bytes(r.stored_bytes), r.seconds);
    if let Some(g) = &r.globals {
        outln!("   roles created: {:?}; existing, left as they are: {:?}", g.created, g.skipped);
        for n in &g.not_applied {
            outln!("   not applied: {n}");
        }
    }
    if let Some(d) = &r.database {
        outln!(
            "   into {:?} on {:?} (PostgreSQL {}) with {}: {} ({})",
            d.database,
            d.server,
            d.target_version,
            d.pg_restore,
            d.method,
            d.method_reason
        );
        outln!("   {} tables' row counts match the manifest", d.tables_checked);
        for p in &d.parts {
            let rows = p.rows.map(|n| format!(", {n} rows")).unwrap_or_default();
            outln!("   part {} ({}, {}{rows}): {:.1} s", p.name, p.kind, human_bytes(p.stored_bytes), p.seconds);
        }
        if let Some(p) = &d.properties {
            for a in &p.applied {
                outln!("   applied: {a}");
            }
            for s in &p.skipped {
                outln!("   not applied: {}: {}", s.what, words(&s.reason));
            }
            if p.checked {
                outln!("   the database's properties read back as planned");
            }
        }
        for n in &d.notes {
            outln!("   {n}");
        }
    }
    for f in &r.files {
        let expires = f.expires_at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
        outln!(
            "   file {}/{} ({} bytes, sha256 {}), until {expires}:\n   {}",
            f.container,
            f.blob,
            f.bytes,
            f.sha256,
            // Printed deliberately: the operator asked for these read-only URLs.
            f.url.expose().unwrap_or("(withheld)")
        );
    }
    if let Some(hint) = &r.decrypt_hint {
        outln!("   encrypted: {hint}");
    }
}

async fn list_jobs(
    rt: &Runtime,
    filter: &crate::features::report::Filter,
    summary: bool,
    json: bool,
    show_urls: bool,
) -> Result<ExitCode> {
    use crate::features::report::Reader;
    use crate::monitor::records as jobrecords;
    let now = time::OffsetDateTime::now_utc();
    if json {
        // What people paste into tickets: live download URLs only when asked for.
        let reader = if show_urls { Reader::Operator } else { Reader::Others };
        let v = crate::features::report::query(&rt.ctx, filter, summary, now, reader).await?;
        outln!("{}", serde_json::to_string_pretty(&v).expect("serializes"));
        return Ok(ExitCode::SUCCESS);
    }
    if summary {
        let records = jobrecords::list(rt.ctx.store.as_ref(), None).await?;
        crate::cli::monitor::print_summary(&crate::features::report::summary(&rt.ctx.settings, &records, now), filter);
        return Ok(ExitCode::SUCCESS);
    }
    let records: Vec<_> =
        jobrecords::list(rt.ctx.store.as_ref(), filter.kind).await?.into_iter().filter(|r| filter.matches(r)).collect();
    let rfc = |t: time::OffsetDateTime| t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
    outln!("{:<16} {:<40} {:<10} {:<21} {:>10} what", "kind", "id", "status", "updated", "bytes");
    for r in &records {
        outln!(
            "{:<16} {:<40} {:<10} {:<21} {:>10} {}",
            r.kind.as_str(),
            r.id,
            r.status.as_str(),
            rfc(r.updated_at),
            r.bytes.map(human_bytes).unwrap_or_default(),
            r.summary
        );
        if let Some(reason) = &r.reason {
            outln!("{:<16} {}", "", reason.replace('\n', " "));
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_identity_line_and_the_cli_job_event_are_debug_and_serving_keeps_the_event() {
        assert_eq!(log_directives("info", true), "info,azure_identity=warn,pgvault::job=info");
        assert_eq!(log_directives("warn", true), "warn,azure_identity=warn,pgvault::job=info");
        assert_eq!(log_directives("warn", false), "warn,azure_identity=warn,pgvault::job=warn");
        // At debug everything shows; a filter that names a target keeps its choice.
        assert_eq!(log_directives("debug", false), "debug");
        assert_eq!(log_directives("info,azure_identity=info", false), "info,azure_identity=info,pgvault::job=warn");
        assert_eq!(log_directives("pgvault::job=off, info", true), "pgvault::job=off,info,azure_identity=warn");
        assert_eq!(log_directives("info,pgvault::job=info", false), "info,pgvault::job=info,azure_identity=warn");
        assert_eq!(log_directives("", false), "azure_identity=warn,pgvault::job=warn");
        for f in ["info", "debug", "warn,pgvault=debug"] {
            assert!(tracing_subscriber::EnvFilter::try_new(log_directives(f, true)).is_ok(), "{f}");
        }
    }

    #[test]
    fn restore_messages_name_the_flags() {
        assert_eq!(
            flag_words("target.expires_in_seconds 5 is out of range; target.server \"x\" is not in the inventory"),
            "--expires-in 5 is out of range; --target-server \"x\" is not in the inventory"
        );
        assert_eq!(
            flag_words("restore with options.no_owner, or post it again with a new request_id"),
            "restore with --no-owner, or post it again with a new --request-id"
        );
        assert_eq!(flag_words("no_privileges was asked for"), "--no-privileges was asked for");
        assert_eq!(flag_words("source.backup.id \"a\""), "--backup \"a\"");
        // Object names and server text in quotes, and longer words, stay as they are.
        assert_eq!(
            flag_words("database \"app_no_owner\": column \"request_id\" of my_request_id; no_owner."),
            "database \"app_no_owner\": column \"request_id\" of my_request_id; --no-owner."
        );
    }
}
