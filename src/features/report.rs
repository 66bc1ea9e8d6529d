//! Monitoring: the job records of backups, the filters and summary behind `pgvault jobs` and the
//! `jobs` function, the missed-schedule (RPO) check, alerts for failed jobs, and the retention
//! of job records themselves.
//!
//! A backup's record is `@jobs/backup/<job id>.json`: `queued` when `backup-now` enqueues it,
//! `running` while an attempt runs, then `succeeded` (with the backup id, bytes and rate) or
//! `failed` (with the error, and whether the host will retry).

use crate::config::context::Ctx;
use crate::config::settings::Settings;
use crate::domain::error::{Error, Result};
use crate::domain::jobs::BackupJob;
use crate::features::backup::{self, Outcome};
use crate::monitor::records::{self as jobrecords, BackupDetail, Detail, JobKind, JobRecord, Status};
use crate::monitor::tracked::{Alerting, Monitor, Run, conclude, track_recorded};
use crate::seams::alerts::{Alert, AlertKind};
use futures::StreamExt;
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use time::OffsetDateTime;

/// `server/database`, or `server/@globals`.
pub fn backup_target(job: &BackupJob) -> String {
    format!("{}/{}", job.server, job.database.as_deref().unwrap_or("@globals"))
}

/// A trigger's name as records and events carry it (`timer`, `queue`, `http`, `cli`).
pub fn trigger_name(t: crate::domain::jobs::Trigger) -> String {
    serde_json::to_value(t).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

/// A new `queued` record for a backup job.
pub fn backup_record(job: &BackupJob, now: OffsetDateTime) -> JobRecord {
    let mut r = JobRecord::new(JobKind::Backup, &job.job_id, format!("back up {}", job.describe()), now);
    r.target = Some(backup_target(job));
    r.trigger = Some(trigger_name(job.trigger));
    r.server = Some(job.server.clone());
    r.database = job.database.clone();
    r
}

/// By when the next backup after `job` must have succeeded: its schedule's next run after the
/// job was requested, plus the RPO margin (what [`breaches`] checks), when the job's server and
/// schedule are known.
pub fn rpo_due_at(settings: &Settings, job: &BackupJob) -> Option<OffsetDateTime> {
    let server = settings.server(&job.server)?;
    let schedule =
        crate::domain::inventory::schedule_for(server, job.database.as_deref(), settings.backup_schedule.as_deref())?;
    next_after(schedule, job.requested_at).map(|due| due + settings.rpo_margin)
}

/// Run one backup job and keep its record (`monitor::tracked`): a failure that will not be
/// retried (permanent, or the last attempt) raises one alert; the alert never changes the
/// outcome.
pub async fn run_backup(ctx: &Ctx, job: &BackupJob, last_attempt: bool) -> Result<Outcome> {
    let store = ctx.store.as_ref();
    let mut rec = match jobrecords::get(store, JobKind::Backup, &job.job_id).await {
        Ok(Some(r)) => r,
        _ => backup_record(job, OffsetDateTime::now_utc()),
    };
    if rec.server.is_none() {
        // Queued by a pgvault that did not name them yet: the job event needs them.
        rec.server = Some(job.server.clone());
        rec.database = job.database.clone();
    }
    let alerting = Alerting::delivery(AlertKind::JobFailed, last_attempt);
    let (result, rec, recorded) = track_recorded(Monitor::of(ctx), rec, alerting, async {
        match backup::run(ctx, job).await {
            Ok(Outcome::Created(m)) => {
                let detail = BackupDetail {
                    backup: Some(m.id.clone()),
                    raw_bytes: Some(m.raw_bytes),
                    stored_bytes: Some(m.stored_bytes),
                    rpo_due_at: rpo_due_at(&ctx.settings, job),
                    ..Default::default()
                };
                let bytes = Some(m.stored_bytes);
                Run::ok(Outcome::Created(m), detail).with_bytes(bytes)
            }
            Ok(Outcome::AlreadyDone { id }) => {
                // Another delivery published it (a redelivery, or two at once): the record
                // follows the published manifest, so whichever delivery writes last, the
                // record says what was backed up.
                let published = crate::features::catalog::manifest(store, &id).await.ok();
                let detail = BackupDetail {
                    backup: Some(id.clone()),
                    raw_bytes: published.as_ref().map(|m| m.raw_bytes),
                    stored_bytes: published.as_ref().map(|m| m.stored_bytes),
                    already_done: true,
                    rpo_due_at: rpo_due_at(&ctx.settings, job),
                    ..Default::default()
                };
                let bytes = published.map(|m| m.stored_bytes);
                Run::ok(Outcome::AlreadyDone { id }, detail).with_bytes(bytes)
            }
            Err(e) => Run::failed(e, Detail::None),
        }
    })
    .await;
    match result {
        // Published, but the record says otherwise (or nothing): a retried delivery finds the
        // manifest and writes the record; replying success would let the host delete the
        // message and the record stay lost.
        Ok(Outcome::Created(m)) if !recorded => Err(Error::transient(format!(
            "backup {} is published, but its job record {:?} could not be written; the next delivery writes it",
            m.id,
            jobrecords::name(rec.kind, &rec.id)
        ))),
        Ok(Outcome::AlreadyDone { id }) if !recorded => Err(Error::transient(format!(
            "backup {id} was published before, but its job record {:?} could not be written; the next delivery writes it",
            jobrecords::name(rec.kind, &rec.id)
        ))),
        other => other,
    }
}

/// Record a backup message that can never run (malformed, unknown server...) as failed, and
/// alert, once. `job` is the parsed job when it parsed.
pub async fn record_rejected(ctx: &Ctx, job: Option<&BackupJob>, message_id: &str, why: &Error) {
    let now = OffsetDateTime::now_utc();
    let mut rec = match job {
        Some(j) => backup_record(j, now),
        None => JobRecord::new(
            JobKind::Backup,
            // Named after the message, or a fresh id: rejected messages never share a record.
            &if message_id.is_empty() {
                format!("rejected-{}", uuid::Uuid::new_v4().simple())
            } else {
                format!("rejected-{}", crate::domain::layout::encode_segment(message_id))
            },
            "a backup message that is not a valid job",
            now,
        ),
    };
    let rejected = Error::permanent(format!("rejected: {why}"));
    conclude(Monitor::of(ctx), &mut rec, Err(rejected), Detail::None, None, Alerting::once(AlertKind::JobFailed)).await;
}

/// The filters of `pgvault jobs` and the `jobs` function.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub kind: Option<JobKind>,
    pub failed: bool,
    pub since: Option<OffsetDateTime>,
    pub server: Option<String>,
    pub id: Option<String>,
}

impl Filter {
    /// From query parameters (`kind`, `failed`, `since` (RFC 3339 or `<n>h`/`<n>d`), `server`).
    pub fn from_query(q: &BTreeMap<String, String>, now: OffsetDateTime) -> Result<Filter> {
        Ok(Filter {
            kind: q.get("kind").filter(|k| !k.is_empty()).map(|k| JobKind::parse(k)).transpose()?,
            failed: q.get("failed").is_some_and(|v| matches!(v.as_str(), "" | "1" | "true" | "yes")),
            since: q.get("since").filter(|s| !s.is_empty()).map(|s| parse_since(s, now)).transpose()?,
            server: q.get("server").filter(|s| !s.is_empty()).cloned(),
            id: q.get("id").filter(|s| !s.is_empty()).cloned(),
        })
    }

    pub fn matches(&self, r: &JobRecord) -> bool {
        self.kind.is_none_or(|k| k == r.kind)
            && (!self.failed || r.status == Status::Failed)
            && self.since.is_none_or(|t| r.updated_at >= t)
            && self.server.as_deref().is_none_or(|s| record_server(r) == Some(s))
            && self.id.as_deref().is_none_or(|id| r.id == id || r.parent.as_deref() == Some(id))
    }
}

/// `--since`: an RFC 3339 time, or a duration back from now (`36h`, `7d`, `90m`).
pub fn parse_since(s: &str, now: OffsetDateTime) -> Result<OffsetDateTime> {
    if let Ok(t) = OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339) {
        return Ok(t);
    }
    let (n, unit) = s.split_at(s.len().saturating_sub(1));
    let n: i64 = n.parse().map_err(|_| bad_since(s))?;
    let d = match unit {
        "m" => time::Duration::minutes(n),
        "h" => time::Duration::hours(n),
        "d" => time::Duration::days(n),
        _ => return Err(bad_since(s)),
    };
    Ok(now - d)
}

fn bad_since(s: &str) -> Error {
    Error::permanent(format!("since {s:?} is neither an RFC 3339 time nor a duration"))
        .with_hint("use e.g. 2026-11-20T00:00:00Z, 36h or 7d")
}

/// The server a record is about: its target's first segment, or the restore target's server.
fn record_server(r: &JobRecord) -> Option<&str> {
    if let Some(t) = &r.target {
        return t.split('/').next();
    }
    r.detail.restore_task()?.task.as_ref()?.target.server.as_deref()
}

/// Per database: the last success and failure of its backups, the next scheduled run, and the
/// last drill that proved a backup restorable (with its measured restore time).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DbSummary {
    pub server: String,
    pub database: String,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_success: Option<OffsetDateTime>,
    pub last_success_backup: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_failure: Option<OffsetDateTime>,
    pub last_failure_reason: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub next_run: Option<OffsetDateTime>,
    /// The newest backup a drill restored and checked.
    pub proven_backup: Option<String>,
    /// That drill's restore time in seconds (RTO evidence).
    pub proven_rto_seconds: Option<f64>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_drill_failure: Option<OffsetDateTime>,
}

/// The summary view, from the records (oldest first, as [`jobrecords::list`] returns them).
pub fn summary(settings: &Settings, records: &[JobRecord], now: OffsetDateTime) -> Vec<DbSummary> {
    let mut out: BTreeMap<(String, String), DbSummary> = BTreeMap::new();
    for r in records.iter().filter(|r| matches!(r.kind, JobKind::Backup | JobKind::Drill)) {
        let Some((server, database)) = r.target.as_deref().and_then(|t| t.split_once('/')) else { continue };
        let s = out.entry((server.to_string(), database.to_string())).or_insert_with(|| DbSummary {
            server: server.into(),
            database: database.into(),
            last_success: None,
            last_success_backup: None,
            last_failure: None,
            last_failure_reason: None,
            next_run: None,
            proven_backup: None,
            proven_rto_seconds: None,
            last_drill_failure: None,
        });
        let at = r.finished_at.unwrap_or(r.updated_at);
        match (r.kind, r.status) {
            (JobKind::Backup, Status::Succeeded) if s.last_success.is_none_or(|t| at >= t) => {
                s.last_success = Some(at);
                s.last_success_backup = r.detail.backup().and_then(|d| d.backup.clone());
            }
            (JobKind::Backup, Status::Failed) if s.last_failure.is_none_or(|t| at >= t) => {
                s.last_failure = Some(at);
                s.last_failure_reason = r.reason.clone();
            }
            (JobKind::Drill, Status::Succeeded) => {
                s.proven_backup = r.detail.drill().and_then(|d| d.backup.clone());
                s.proven_rto_seconds = r.detail.drill().and_then(|d| d.restore_seconds);
            }
            (JobKind::Drill, Status::Failed) => s.last_drill_failure = Some(at),
            _ => {}
        }
    }
    for s in out.values_mut() {
        let server = settings.server(&s.server);
        let db = (s.database != "@globals").then_some(s.database.as_str());
        s.next_run = server
            .and_then(|sv| crate::domain::inventory::schedule_for(sv, db, settings.backup_schedule.as_deref()))
            .and_then(|sch| next_after(sch, now));
    }
    out.into_values().collect()
}

/// The next run of an NCRONTAB schedule strictly after `t` (moved down to the domain, where the
/// status page's RPO classification uses it too).
pub use crate::domain::schedule::next_after;

/// A database whose newest backup is older than its schedule allows.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Breach {
    pub server: String,
    pub database: String,
    #[serde(with = "time::serde::rfc3339")]
    pub last_backup: OffsetDateTime,
    /// When the backup after it was due (plus the margin, it is overdue).
    #[serde(with = "time::serde::rfc3339")]
    pub due: OffsetDateTime,
}

/// What the RPO check reads from the catalog.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Newest {
    /// Each (server, database or `@globals`)'s newest backup (its `requested_at`).
    pub backups: BTreeMap<(String, String), OffsetDateTime>,
    /// Each server's newest globals backup (its `requested_at`) and the databases its manifest
    /// lists (absent in manifests written before pgvault recorded them).
    pub globals: BTreeMap<String, (OffsetDateTime, Option<Vec<String>>)>,
}

impl Newest {
    pub fn from_manifests<'a>(manifests: impl IntoIterator<Item = &'a crate::domain::manifest::Manifest>) -> Newest {
        let mut n = Newest::default();
        for m in manifests {
            let globals = m.kind != crate::domain::layout::BackupKind::Database;
            let db = if globals { "@globals".to_string() } else { m.database.clone() };
            let e = n.backups.entry((m.server.clone(), db)).or_insert(m.requested_at);
            *e = (*e).max(m.requested_at);
            if globals && n.globals.get(&m.server).is_none_or(|(at, _)| m.requested_at >= *at) {
                n.globals.insert(m.server.clone(), (m.requested_at, m.databases.clone()));
            }
        }
        n
    }
}

/// Whether the RPO check still expects backups of `database` (or `@globals`) of server `sv`
/// whose newest backup is `last`. Not when the inventory's `include`/`exclude` now leaves it
/// out, nor when the server's newest globals backup is newer than `last` and does not list it
/// (the database was dropped): retention always keeps a target's newest backup, so without this
/// such a database would be reported as missing its schedule forever.
pub fn still_expected(
    sv: &crate::config::settings::Server,
    database: &str,
    last: OffsetDateTime,
    globals: Option<&(OffsetDateTime, Option<Vec<String>>)>,
) -> bool {
    if database == "@globals" {
        return true;
    }
    if crate::domain::jobs::select_databases(sv, &[database.to_string()]).0.is_empty() {
        return false;
    }
    !matches!(globals, Some((at, Some(listed))) if *at > last && !listed.iter().any(|d| d == database))
}

/// The RPO check, pure. A backup is overdue when now is past the schedule's next run after the
/// newest backup plus the margin. Servers gone from the inventory, databases it now leaves out
/// and databases dropped from the server (see [`still_expected`]) are not checked.
pub fn breaches(settings: &Settings, newest: &Newest, now: OffsetDateTime) -> Vec<Breach> {
    let mut out = Vec::new();
    for ((server, database), last) in &newest.backups {
        let Some(sv) = settings.server(server) else { continue };
        if !still_expected(sv, database, *last, newest.globals.get(server)) {
            continue;
        }
        let db = (database != "@globals").then_some(database.as_str());
        let Some(schedule) = crate::domain::inventory::schedule_for(sv, db, settings.backup_schedule.as_deref()) else {
            continue;
        };
        let Some(due) = next_after(schedule, *last) else { continue };
        if now > due + settings.rpo_margin {
            out.push(Breach { server: server.clone(), database: database.clone(), last_backup: *last, due });
        }
    }
    out
}

/// Whether `queue` is being drained: a message that has waited at the head of the queue for at
/// least the RPO margin means no worker takes jobs (the function is stopped, its trigger
/// disabled, or its identity cannot read the queue), so every backup it holds is that late;
/// raise a missed-schedule alert (subject: the queue) and return since when it waits. The RPO
/// check alone would miss a database that never had a backup: it has no newest backup to age.
pub async fn check_draining(
    ctx: &Ctx,
    queues: &dyn crate::seams::queue::JobQueue,
    queue: &str,
    now: OffsetDateTime,
) -> Result<Option<OffsetDateTime>> {
    let Some(since) = queues.oldest_waiting(queue).await? else { return Ok(None) };
    if now - since < ctx.settings.rpo_margin {
        return Ok(None);
    }
    let alert = Alert {
        kind: AlertKind::MissedSchedule,
        subject: queue.to_string(),
        summary: format!(
            "missed schedule: the oldest message on {queue} has waited since {} ({} minutes, the RPO margin is {}): \
             nothing is taking jobs from it (is the worker function running and allowed to read the queue?)",
            rfc(since),
            (now - since).whole_minutes(),
            ctx.settings.rpo_margin.whole_minutes()
        ),
        job_id: None,
    };
    ctx.alerter.raise(&alert).await;
    Ok(Some(since))
}

/// Check every backed-up database of the inventory against its schedule and raise a
/// missed-schedule alert for each breach.
pub async fn check_rpo(ctx: &Ctx, now: OffsetDateTime) -> Result<Vec<Breach>> {
    let newest = Newest::from_manifests(&crate::features::catalog::list(ctx.store.as_ref(), None, None).await?);
    let found = breaches(&ctx.settings, &newest, now);
    let alerter = ctx.alerter.as_ref();
    // A few at a time: with a webhook that is down, each alert takes its retries (up to about
    // two minutes), and they should not queue up behind each other.
    futures::stream::iter(&found)
        .for_each_concurrent(4, |b| {
            let alert = Alert {
                kind: AlertKind::MissedSchedule,
                subject: format!("{}/{}", b.server, b.database),
                summary: format!(
                    "missed schedule: the newest backup of {}/{} is from {}, the next was due {}",
                    b.server,
                    b.database,
                    rfc(b.last_backup),
                    rfc(b.due)
                ),
                job_id: None,
            };
            let alerter = &alerter;
            async move {
                alerter.raise(&alert).await;
            }
        })
        .await;
    Ok(found)
}

pub fn rfc(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

/// Job records' own retention: remove finished records last updated more than `days` ago.
/// Returns how many were removed. A removal refused by the container's immutability policy
/// (or a legal hold) is skipped and logged, as retention does for backups.
///
/// The age comes from each record's `updated_at`; only records whose blob was last written
/// before the cutoff are read (a record is rewritten at every update).
pub async fn prune_records(
    store: &dyn crate::seams::store::BlobStore,
    days: u64,
    now: OffsetDateTime,
) -> Result<usize> {
    let cutoff = now - time::Duration::days(days as i64);
    let mut n = 0;
    // A record is written at every update, so one last written after the cutoff was updated
    // after it too: only older ones (or those the store gives no time for) are read.
    for r in jobrecords::list_written_before(store, cutoff).await? {
        if r.is_finished() && r.updated_at < cutoff {
            let name = jobrecords::name(r.kind, &r.id);
            match store.delete(&name).await {
                Ok(()) => n += 1,
                Err(e) if e.is_immutable() => {
                    tracing::warn!(record = %name, reason = %e, "job records: removal refused by the container's immutability policy; kept");
                }
                Err(e) => return Err(e.context(format!("job records: remove {name:?}"))),
            }
        }
    }
    Ok(n)
}

/// Who reads an answer of [`query`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reader {
    /// The operator (`pgvault jobs`, which reads the store itself): every detail, secret URLs
    /// included.
    Operator,
    /// Anyone with the `jobs` function's key (and whatever logs HTTP bodies), and
    /// `pgvault jobs --json` without `--show-urls` (what gets pasted into tickets): secrets are
    /// withheld ([`JobRecord::withhold_secrets`]); the operator reads them with
    /// `pgvault jobs --json --show-urls --id <id>`.
    Others,
}

/// The answer of `pgvault jobs --json` and the `jobs` function. A kind given reads only that
/// kind's records (and, for the summary, the backup and drill records).
pub async fn query(
    ctx: &Ctx,
    filter: &Filter,
    with_summary: bool,
    now: OffsetDateTime,
    reader: Reader,
) -> Result<Value> {
    let store = ctx.store.as_ref();
    let records = match filter.kind {
        Some(k) if with_summary => jobrecords::list_kinds(store, &[k, JobKind::Backup, JobKind::Drill]).await?,
        Some(k) => jobrecords::list_kinds(store, &[k]).await?,
        None => jobrecords::list(store, None).await?,
    };
    let mut jobs: Vec<JobRecord> = records.iter().filter(|r| filter.matches(r)).cloned().collect();
    if reader == Reader::Others {
        jobs.iter_mut().for_each(JobRecord::withhold_secrets);
    }
    let mut v = json!({ "jobs": jobs });
    if with_summary {
        let mut s = summary(&ctx.settings, &records, now);
        if let Some(server) = &filter.server {
            s.retain(|d| &d.server == server);
        }
        v["summary"] = serde_json::to_value(s).expect("serializes");
    }
    Ok(v)
}

/// A new record for a run of retention, verify or a drill (kinds without a queue message of
/// their own): [`track`](crate::monitor::tracked::track) runs it.
pub fn start_record(kind: JobKind, target: &str, summary: &str, trigger: &str) -> JobRecord {
    let now = OffsetDateTime::now_utc();
    let id = crate::monitor::event::run_id(now);
    let mut r = JobRecord::new(kind, &id, summary, now);
    r.target = Some(target.to_string());
    r.trigger = Some(trigger.to_string());
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::manifest::Manifest;
    use std::collections::HashMap;
    use time::macros::datetime;

    fn settings() -> Settings {
        let inv = r#"[{"name":"prod","host":"h","user":"u","schedule":"0 0 2 * * *",
            "retention":{"daily":7,"weekly":4,"monthly":12,"yearly":10,"min_keep":3},
            "databases":{"hourly":{"schedule":"0 0 * * * *"}}}]"#;
        Settings::from_map(HashMap::from([
            ("PGVAULT_INVENTORY".to_string(), inv.to_string()),
            ("PGVAULT_RPO_MARGIN_MINUTES".to_string(), "30".to_string()),
        ]))
        .unwrap()
    }

    #[test]
    fn rpo_breach_uses_the_database_schedule_and_the_margin() {
        let s = settings();
        let now = datetime!(2026-11-21 04:00 UTC);
        let backups = BTreeMap::from([
            (("prod".to_string(), "app".to_string()), datetime!(2026-11-21 02:00 UTC)),
            (("prod".to_string(), "old".to_string()), datetime!(2026-11-20 01:00 UTC)),
            (("prod".to_string(), "hourly".to_string()), datetime!(2026-11-21 02:00 UTC)),
            (("prod".to_string(), "hourly2".to_string()), datetime!(2026-11-21 03:00 UTC)),
            (("gone".to_string(), "x".to_string()), datetime!(2020-01-01 00:00 UTC)),
        ]);
        let b = breaches(&s, &Newest { backups, ..Default::default() }, now);
        let names: Vec<&str> = b.iter().map(|b| b.database.as_str()).collect();
        // old: due 2026-11-20 02:00; hourly: due 03:00, +30 min < 04:00. app and hourly2 are fine
        // (hourly2 follows the server's daily schedule); a server gone from the inventory is not checked.
        assert_eq!(names, ["hourly", "old"]);
        assert_eq!(b[1].due, datetime!(2026-11-20 02:00 UTC));
    }

    fn manifest(kind: crate::domain::layout::BackupKind, server: &str, db: &str, at: OffsetDateTime) -> Manifest {
        Manifest {
            compression: crate::domain::manifest::Compression::None,
            ..Manifest::skeleton(kind, server, db, at, "j")
        }
    }

    #[test]
    fn rpo_leaves_out_databases_the_inventory_filters_out_or_the_server_dropped() {
        use crate::domain::layout::BackupKind::{Database, Globals};
        let inv = r#"[{"name":"prod","host":"h","user":"u","exclude":["skipped"]},
            {"name":"few","host":"h","user":"u","include":["kept"]}]"#;
        let s = Settings::from_map(HashMap::from([
            ("PGVAULT_INVENTORY".to_string(), inv.to_string()),
            ("PGVAULT_BACKUP_SCHEDULE".to_string(), "0 0 2 * * *".to_string()),
        ]))
        .unwrap();
        let day1 = datetime!(2026-11-19 02:00 UTC);
        let day2 = datetime!(2026-11-20 02:00 UTC);
        let day3 = datetime!(2026-11-21 02:00 UTC);
        let now = datetime!(2026-11-22 12:00 UTC);
        let mut g1 = manifest(Globals, "prod", "", day1);
        g1.databases = Some(vec!["app".into(), "dropped".into(), "failing".into(), "postgres".into()]);
        let mut g3 = manifest(Globals, "prod", "", day3);
        g3.databases = Some(vec!["app".into(), "failing".into(), "postgres".into()]);
        let catalog = vec![
            g1,
            manifest(Database, "prod", "app", day1),
            manifest(Database, "prod", "dropped", day1),
            manifest(Database, "prod", "failing", day1),
            // Excluded later: its old backups stay, it is not expected any more.
            manifest(Database, "prod", "skipped", day1),
            manifest(Database, "prod", "app", day2),
            g3.clone(),
            manifest(Database, "prod", "app", day3),
            // Created after the last globals backup: not in its list, but backed up since.
            manifest(Database, "prod", "fresh", day3 + time::Duration::hours(1)),
            // A server with include: only "kept" is expected.
            manifest(Database, "few", "kept", day1),
            manifest(Database, "few", "other", day1),
        ];
        let newest = Newest::from_manifests(&catalog);
        assert_eq!(newest.globals["prod"], (day3, g3.databases.clone()));
        assert!(!newest.globals.contains_key("few"));
        let found: Vec<String> =
            breaches(&s, &newest, now).iter().map(|b| format!("{}/{}", b.server, b.database)).collect();
        // app and the globals are late (day3 02:00, the next was due a day later), like failing
        // (still on the server) and few/kept; dropped (gone from the newer globals), skipped
        // (excluded) and few/other (not included) are not checked; fresh was backed up after
        // the globals listed the server's databases, so it is checked.
        assert_eq!(found, ["few/kept", "prod/@globals", "prod/app", "prod/failing", "prod/fresh"]);

        // A globals backup older than the database's newest backup does not drop it, nor does
        // a globals manifest without the list (written before pgvault recorded it).
        let mut older = catalog.clone();
        older.retain(|m| m.database != "app" || m.requested_at == day1);
        older.push(manifest(Database, "prod", "dropped", day3 + time::Duration::hours(2)));
        let newest = Newest::from_manifests(&older);
        let found: Vec<String> = breaches(&s, &newest, now).iter().map(|b| b.database.clone()).collect();
        assert!(found.contains(&"dropped".to_string()), "{found:?}");
        let mut unlisted = catalog.clone();
        unlisted.push(manifest(Globals, "prod", "", day3 + time::Duration::hours(3)));
        let found: Vec<String> =
            breaches(&s, &Newest::from_manifests(&unlisted), now).iter().map(|b| b.database.clone()).collect();
        assert!(found.contains(&"dropped".to_string()), "{found:?}");
    }

    #[test]
    fn the_http_answer_withholds_exported_file_urls_the_record_keeps() {
        let t = datetime!(2026-11-21 02:00 UTC);
        let url = "https://acct.blob.core.windows.net/exports/incident-42/app.dump?sv=2025&se=x&sp=r&sig=SECRETSIG%3D";
        let mut task = JobRecord::new(JobKind::RestoreTask, "req-1-1", "export prod/app as files", t);
        let file = crate::domain::restore::ExportedFile {
            container: "exports".into(),
            blob: "incident-42/app.dump".into(),
            bytes: 3,
            sha256: "ab".into(),
            url: crate::domain::secret::SecretUrl::new(crate::domain::secret::Secret::new(url)),
            expires_at: t + time::Duration::hours(1),
        };
        let report =
            crate::domain::restore::TaskReport { mode: "as-files".into(), files: vec![file], ..Default::default() };
        let detail = crate::domain::records::TaskDetail { report: Some(report), ..Default::default() };
        task.succeed(t, detail, Some(3));
        let backup = backup_record(
            &BackupJob::new(
                crate::domain::layout::BackupKind::Database,
                "prod",
                Some("app"),
                t,
                crate::domain::jobs::Trigger::Timer,
            ),
            t,
        );
        let mut shown = vec![backup.clone(), task.clone()];
        shown.iter_mut().for_each(JobRecord::withhold_secrets);
        let answer = json!({ "jobs": shown });
        let body = answer.to_string();
        assert!(!body.contains("sig="), "{body}");
        assert!(!body.contains("SECRETSIG"), "{body}");
        let f = &answer["jobs"][1]["detail"]["report"]["files"][0];
        assert_eq!(f["url"], "withheld: see `pgvault jobs --json --show-urls --id req-1-1`");
        assert_eq!(f["blob"], "incident-42/app.dump", "the rest of the report stays");
        assert_eq!(answer["jobs"][0], serde_json::to_value(&backup).unwrap(), "a record without secrets is unchanged");
        // The record itself (what the CLI prints) still has the URL.
        assert!(String::from_utf8(task.to_json()).unwrap().contains("sig=SECRETSIG"));
    }

    /// A local store that records what is listed and read, and refuses deletes of names
    /// containing "locked" as an immutability policy would.
    struct Spy {
        inner: crate::seams::store::local::LocalStore,
        listed: std::sync::Mutex<Vec<String>>,
        reads: std::sync::atomic::AtomicUsize,
    }

    #[async_trait::async_trait]
    impl crate::seams::store::BlobStore for Spy {
        fn describe(&self) -> String {
            "spy".into()
        }
        async fn stage_block(&self, n: &str, id: &str, d: bytes::Bytes) -> Result<()> {
            self.inner.stage_block(n, id, d).await
        }
        async fn commit_blocks(&self, n: &str, ids: &[String], t: &crate::seams::store::Tags) -> Result<()> {
            self.inner.commit_blocks(n, ids, t).await
        }
        async fn put(&self, n: &str, d: bytes::Bytes, t: &crate::seams::store::Tags) -> Result<()> {
            self.inner.put(n, d, t).await
        }
        async fn create(
            &self,
            n: &str,
            d: bytes::Bytes,
            t: &crate::seams::store::Tags,
        ) -> Result<crate::seams::store::CreateOutcome> {
            self.inner.create(n, d, t).await
        }
        async fn get(&self, n: &str) -> Result<bytes::Bytes> {
            self.reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.inner.get(n).await
        }
        async fn read(&self, n: &str) -> Result<crate::seams::store::ByteStream> {
            self.inner.read(n).await
        }
        async fn tags(&self, n: &str) -> Result<crate::seams::store::Tags> {
            self.inner.tags(n).await
        }
        async fn list(&self, p: &str) -> Result<Vec<crate::seams::store::BlobInfo>> {
            self.listed.lock().unwrap().push(p.to_string());
            self.inner.list(p).await
        }
        async fn exists(&self, n: &str) -> Result<bool> {
            self.inner.exists(n).await
        }
        async fn delete(&self, n: &str) -> Result<()> {
            if n.contains("locked") {
                return Err(Error::immutable(format!("delete {n}: http 409 BlobImmutableDueToPolicy")));
            }
            self.inner.delete(n).await
        }
    }

    #[tokio::test]
    async fn pruning_skips_records_kept_by_immutability_and_a_kind_reads_only_its_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let store = Spy {
            inner: crate::seams::store::local::LocalStore::new(dir.path()),
            listed: Default::default(),
            reads: Default::default(),
        };
        // The files are written now; "now" for pruning is 500 days later.
        let written = OffsetDateTime::now_utc();
        let now = written + time::Duration::days(500);
        let old = now - time::Duration::days(500);
        for (kind, id, status, at) in [
            (JobKind::Backup, "old-ok", Status::Succeeded, old),
            (JobKind::Backup, "old-locked", Status::Failed, old),
            (JobKind::Backup, "old-running", Status::Running, old),
            (JobKind::Backup, "new", Status::Succeeded, now),
            (JobKind::Retention, "old-retention", Status::Succeeded, old),
        ] {
            let mut r = JobRecord::new(kind, id, "x", at);
            r.status = status;
            jobrecords::put(&store, &r).await.unwrap();
        }
        store.reads.store(0, std::sync::atomic::Ordering::SeqCst);
        let retention = jobrecords::list_kinds(&store, &[JobKind::Retention]).await.unwrap();
        assert_eq!(retention.len(), 1);
        assert_eq!(*store.listed.lock().unwrap(), ["@jobs/retention/"]);
        assert_eq!(store.reads.load(std::sync::atomic::Ordering::SeqCst), 1, "only that kind's records are read");

        // Records written after the cutoff are not even read.
        store.reads.store(0, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(prune_records(&store, 400, written).await.unwrap(), 0);
        assert_eq!(store.reads.load(std::sync::atomic::Ordering::SeqCst), 0, "no record read");

        // The refused removal is skipped (logged), not a failure of the run.
        assert_eq!(prune_records(&store, 400, now).await.unwrap(), 2);
        let left: Vec<String> = jobrecords::list(&store, None).await.unwrap().into_iter().map(|r| r.id).collect();
        assert_eq!(left, ["old-locked", "old-running", "new"]);
    }

    #[test]
    fn summary_and_filters() {
        let s = settings();
        let t = datetime!(2026-11-21 02:00 UTC);
        let job = |db: &str| {
            BackupJob::new(
                crate::domain::layout::BackupKind::Database,
                "prod",
                Some(db),
                t,
                crate::domain::jobs::Trigger::Timer,
            )
        };
        let mut ok = backup_record(&job("app"), t);
        ok.status = Status::Succeeded;
        ok.finished_at = Some(t + time::Duration::minutes(5));
        ok.detail = BackupDetail { backup: Some("prod/app/x".into()), ..Default::default() }.into();
        let mut bad = backup_record(&job("app"), t + time::Duration::hours(1));
        bad.status = Status::Failed;
        bad.reason = Some("boom".into());
        bad.finished_at = Some(t + time::Duration::hours(1));
        let mut drill = JobRecord::new(JobKind::Drill, "d1", "drill", t);
        drill.target = Some("prod/app".into());
        drill.status = Status::Succeeded;
        drill.detail = crate::domain::records::DrillDetail {
            backup: Some("prod/app/x".into()),
            restore_seconds: Some(12.5),
            ..Default::default()
        }
        .into();
        let records = vec![ok.clone(), bad.clone(), drill];
        let sum = summary(&s, &records, datetime!(2026-11-21 10:00 UTC));
        assert_eq!(sum.len(), 1);
        assert_eq!(sum[0].last_success_backup.as_deref(), Some("prod/app/x"));
        assert_eq!(sum[0].last_failure_reason.as_deref(), Some("boom"));
        assert_eq!(sum[0].next_run, Some(datetime!(2026-11-22 02:00 UTC)));
        assert_eq!(sum[0].proven_rto_seconds, Some(12.5));

        let q =
            BTreeMap::from([("failed".to_string(), "true".to_string()), ("server".to_string(), "prod".to_string())]);
        let f = Filter::from_query(&q, t).unwrap();
        let hits: Vec<_> = records.iter().filter(|r| f.matches(r)).map(|r| r.id.clone()).collect();
        assert_eq!(hits, [bad.id.clone()]);
        let f = Filter { server: Some("other".into()), ..Default::default() };
        assert!(!records.iter().any(|r| f.matches(r)));
        assert_eq!(parse_since("2d", t).unwrap(), t - time::Duration::days(2));
        assert!(parse_since("yesterday", t).is_err());
        assert!(Filter::from_query(&BTreeMap::from([("kind".to_string(), "nope".to_string())]), t).is_err());
    }

    #[test]
    fn policies_are_validated_with_clear_errors() {
        let bad_years = r#"[{"name":"p","host":"h","user":"u","retention":{"yearly":11}}]"#;
        let e = crate::config::settings::parse_inventory(bad_years).unwrap_err().to_string();
        assert!(e.contains("server \"p\"") && e.contains("11 yearly"), "{e}");
        let bad_db = r#"[{"name":"p","host":"h","user":"u","databases":{"app":{"schedule":"0 2 * * *"}}}]"#;
        let e = crate::config::settings::parse_inventory(bad_db).unwrap_err().to_string();
        assert!(e.contains("database \"app\"") && e.contains("six fields"), "{e}");
        let s = settings();
        let prod = s.server("prod").unwrap();
        assert_eq!(crate::domain::inventory::policy_for(prod, Some("app")).unwrap().yearly, 10);
        assert_eq!(crate::domain::inventory::schedule_for(prod, Some("hourly"), None), Some("0 0 * * * *"));
    }
}
