//! The status page's view model (`status` function, `pgvault status`): per database its
//! protection against the RPO, trend, proof, trouble, retention and posture, plus the
//! pgBackRest targets and the doctor's findings. Pure: `features::status` gathers it, the
//! renderers (HTML, terminal, JSON) only show it.
//!
//! Nothing here is invented: a fact pgvault cannot know from where it runs is
//! [`Fact::Unknown`] with the reason, and the page says so.

use crate::domain::schedule::next_after;
use serde::Serialize;
use std::collections::BTreeMap;
use time::{Duration, OffsetDateTime};

/// How many backups the trend shows (newest last).
pub const TREND_LEN: usize = 30;
/// How far back the trouble list reaches.
pub const TROUBLE_DAYS: i64 = 7;

/// A fact, or why it is not known here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fact {
    Known(String),
    Unknown(String),
}

impl Fact {
    pub fn known(v: impl Into<String>) -> Fact {
        Fact::Known(v.into())
    }
    pub fn unknown(why: impl Into<String>) -> Fact {
        Fact::Unknown(why.into())
    }
    /// `value`, or `unknown (why)`.
    pub fn text(&self) -> String {
        match self {
            Fact::Known(v) => v.clone(),
            Fact::Unknown(why) => format!("unknown ({why})"),
        }
    }
}

/// The whole page.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatusView {
    #[serde(with = "time::serde::rfc3339")]
    pub generated_at: OffsetDateTime,
    /// Where the backups are (`azure:<container url>` or `local:<dir>`; never a SAS).
    pub store: String,
    pub rpo_margin_minutes: i64,
    pub databases: Vec<DbStatus>,
    /// Failed jobs of the last [`TROUBLE_DAYS`] days that are not about one database (retention,
    /// verify, pgBackRest, a message that was not a job).
    pub other_trouble: Vec<Trouble>,
    /// The store's own protection, the same for every database (each database's posture adds
    /// its encryption).
    pub store_posture: StorePosture,
    pub pgbackrest: Vec<TargetStatus>,
    /// The doctor's findings (records of kind `doctor`).
    pub findings: Vec<Finding>,
    /// What could not be read while gathering (the page is still shown).
    pub gaps: Vec<String>,
}

impl StatusView {
    /// How many databases are in each protection state.
    pub fn counts(&self) -> BTreeMap<&'static str, usize> {
        let mut out = BTreeMap::new();
        for d in &self.databases {
            *out.entry(d.protection.state.as_str()).or_insert(0) += 1;
        }
        out
    }
}

/// One database (or a server's globals, database `@globals`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DbStatus {
    pub server: String,
    pub database: String,
    pub protection: Protection,
    /// The last [`TREND_LEN`] backups, oldest first.
    pub trend: Vec<TrendPoint>,
    pub proof: Option<Proof>,
    /// Failed jobs of the last [`TROUBLE_DAYS`] days, newest first.
    pub trouble: Vec<Trouble>,
    pub retention: RetentionView,
    pub posture: Posture,
}

/// Where a database stands against its RPO.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RpoState {
    /// The next backup is not due yet.
    Ok,
    /// The next backup was due and has not arrived, within the margin (it may be running).
    Late,
    /// Past due by more than the margin (the missed-schedule alert fires), or no good backup.
    Missed,
    /// No schedule applies: the RPO cannot be judged.
    Unknown,
}

impl RpoState {
    pub fn as_str(self) -> &'static str {
        match self {
            RpoState::Ok => "ok",
            RpoState::Late => "late",
            RpoState::Missed => "missed",
            RpoState::Unknown => "unknown",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Protection {
    pub state: RpoState,
    /// Why that state, in words.
    pub why: String,
    pub newest: Option<BackupRef>,
    /// The newest good backup's age in seconds.
    pub age_seconds: Option<i64>,
    pub schedule: Option<String>,
    /// When the backup after the newest was due.
    #[serde(with = "time::serde::rfc3339::option")]
    pub due: Option<OffsetDateTime>,
    /// The schedule's next run after now.
    #[serde(with = "time::serde::rfc3339::option")]
    pub next_run: Option<OffsetDateTime>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BackupRef {
    pub id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub stored_bytes: u64,
}

/// The RPO classification, pure. The newest good backup `last` (its requested time) was
/// followed by a run due at `due` (the schedule's next run after it): before `due` the database
/// is ok; after it, late for as long as `margin`; after that, missed (the missed-schedule alert
/// fires at the same moment, see `features::report::breaches`). No good backup at all is missed;
/// no schedule (or one that does not parse) is unknown.
pub fn classify_rpo(
    last: Option<OffsetDateTime>,
    schedule: Option<&str>,
    margin: Duration,
    now: OffsetDateTime,
) -> (RpoState, String, Option<OffsetDateTime>) {
    let Some(schedule) = schedule else {
        return (RpoState::Unknown, "no schedule applies (PGVAULT_BACKUP_SCHEDULE or the inventory's)".into(), None);
    };
    let Some(last) = last else {
        return (RpoState::Missed, "no good backup at all".into(), None);
    };
    let Some(due) = next_after(schedule, last) else {
        return (RpoState::Unknown, format!("schedule {schedule:?} has no run after the newest backup"), None);
    };
    if now <= due {
        (RpoState::Ok, format!("the next backup is due {}", rfc(due)), Some(due))
    } else if now <= due + margin {
        (
            RpoState::Late,
            format!(
                "the backup due {} has not arrived; missed after the {} min margin",
                rfc(due),
                margin.whole_minutes()
            ),
            Some(due),
        )
    } else {
        (
            RpoState::Missed,
            format!("the backup due {} is more than {} min overdue", rfc(due), margin.whole_minutes()),
            Some(due),
        )
    }
}

/// One backup on the trend lines.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrendPoint {
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub stored_bytes: u64,
    pub duration_seconds: f64,
}

/// The last drill of a database.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Proof {
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub ok: bool,
    pub backup: Option<String>,
    /// The drill's restore time in seconds (RTO evidence).
    pub rto_seconds: Option<f64>,
    pub reason: Option<String>,
}

/// A failed job.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Trouble {
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub kind: String,
    pub job_id: String,
    pub target: Option<String>,
    pub reason: String,
}

/// Backups kept per GFS tier (what retention's plan keeps each for) and per access tier.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RetentionView {
    pub backups: usize,
    /// `daily 7, weekly 4, ...`, or why nothing is pruned.
    pub policy: String,
    /// `daily`/`weekly`/`monthly`/`yearly`/`newest`/`held`/`kept (no policy)`/`to remove` → count. A
    /// backup kept for several reasons counts in each.
    pub gfs: BTreeMap<String, usize>,
    /// `hot`/`cool`/`cold`/`archive`, or `unknown` with [`RetentionView::access_note`].
    pub access: BTreeMap<String, usize>,
    pub access_note: Option<String>,
}

/// The GFS tiers a retention keep-reason names (`newest daily of 2026-11-21`, `held`,
/// `among the newest 3`), as the page counts them.
pub fn gfs_tiers(reasons: &[String]) -> Vec<&'static str> {
    let mut out = Vec::new();
    for r in reasons {
        let tier = ["daily", "weekly", "monthly", "yearly"]
            .into_iter()
            .find(|t| r.starts_with(&format!("newest {t} of ")))
            .or_else(|| (r == "held").then_some("held"))
            .or_else(|| r.starts_with("among the newest ").then_some("newest"))
            .or_else(|| (r == "dated in the future").then_some("future"));
        if let Some(t) = tier
            && !out.contains(&t)
        {
            out.push(t);
        }
    }
    out
}

/// The store's protection against deletion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StorePosture {
    /// Version-level or container WORM.
    pub immutability: Fact,
    pub soft_delete: Fact,
    pub who_may_delete: Fact,
}

/// Protected-item security level, modelled on Azure Business Continuity Center's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Rating {
    Maximum,
    Adequate,
    Minimum,
}

impl Rating {
    pub fn as_str(self) -> &'static str {
        match self {
            Rating::Maximum => "Maximum",
            Rating::Adequate => "Adequate",
            Rating::Minimum => "Minimum",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Posture {
    /// `key <name> version <v>` of the newest backup, or `none`.
    pub encryption: Fact,
    pub immutability: Fact,
    pub soft_delete: Fact,
    pub who_may_delete: Fact,
    pub rating: Rating,
    pub reasons: Vec<String>,
}

/// Whether a fact shows the protection on: `Some(true)` when known and not `none`/`off`.
fn is_on(f: &Fact) -> Option<bool> {
    match f {
        Fact::Known(v) => Some(!(v == "none" || v.starts_with("none ") || v == "off" || v.starts_with("off "))),
        Fact::Unknown(_) => None,
    }
}

/// Rate a database's posture, pure. Like Azure Business Continuity Center's security levels,
/// the rating is about surviving deletion (by mistake or by an attacker) and reading by others:
/// **Maximum** needs immutability (WORM) and soft delete on and the backups encrypted with a
/// Key Vault key; **Adequate** needs immutability or soft delete on; anything less is
/// **Minimum**. What is not known counts as not shown, and the reasons say so.
pub fn rate(encryption: &Fact, store: &StorePosture) -> Posture {
    let mut reasons = Vec::new();
    let mut say = |name: &str, f: &Fact| match (is_on(f), f) {
        (Some(true), Fact::Known(v)) => reasons.push(format!("{name}: {v}")),
        (Some(false), _) => reasons.push(format!("{name} is off")),
        // Why it is unknown is the fact's own text, shown beside the rating.
        (_, Fact::Unknown(_)) => reasons.push(format!("{name} not shown (unknown)")),
        _ => {}
    };
    say("immutability", &store.immutability);
    say("soft delete", &store.soft_delete);
    say("encryption", encryption);
    let worm = is_on(&store.immutability) == Some(true);
    let soft = is_on(&store.soft_delete) == Some(true);
    let enc = is_on(encryption) == Some(true);
    let rating = if worm && soft && enc {
        Rating::Maximum
    } else if worm || soft {
        Rating::Adequate
    } else {
        Rating::Minimum
    };
    Posture {
        encryption: encryption.clone(),
        immutability: store.immutability.clone(),
        soft_delete: store.soft_delete.clone(),
        who_may_delete: store.who_may_delete.clone(),
        rating,
        reasons,
    }
}

/// A VM pgBackRest target: its SAS and its stanzas' freshness, from the newest records.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TargetStatus {
    pub name: String,
    pub delivery: String,
    /// When the SAS in Key Vault expires (the newest rotation record's), or why unknown.
    pub sas_expiry: Fact,
    /// The rotator's alarm or error, if its newest run had one.
    pub sas_problem: Option<String>,
    pub stanzas: Vec<StanzaStatus>,
    /// Why no stanza is shown (no freshness check recorded, or it failed to open the container).
    pub stanzas_note: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StanzaStatus {
    pub stanza: String,
    #[serde(with = "time::serde::rfc3339::option")]
    pub newest: Option<OffsetDateTime>,
    pub fresh: bool,
    pub problem: Option<String>,
}

/// A doctor finding (h16-doctor's records of kind `doctor`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub object: String,
    pub severity: String,
    pub problem: String,
    pub hint: Option<String>,
}

/// Free text fit for the page: [`crate::domain::secret::redact`]ed, and the query of every URL
/// in it withheld (a SAS is a query: the page carries no part of one, not even `sig=`).
pub fn scrub(text: &str) -> String {
    let text = crate::domain::secret::redact(text);
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(i) = rest.find("://") {
        let end =
            rest[i..].find(|c: char| c.is_whitespace() || "\"'<>()[]{}".contains(c)).map_or(rest.len(), |e| i + e);
        let url = &rest[..end];
        match url[i..].find('?') {
            Some(q) => {
                out.push_str(&url[..i + q]);
                out.push_str("?(query withheld)");
            }
            None => out.push_str(url),
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// Counts as `daily 3, weekly 1`, or `none`.
pub fn tally(m: &BTreeMap<String, usize>) -> String {
    if m.is_empty() {
        return "none".into();
    }
    m.iter().map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join(", ")
}

/// RFC 3339, UTC, to the second.
pub fn rfc(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC).replace_nanosecond(0).unwrap_or(t);
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

/// A short human age: `42 s`, `17 min`, `5.5 h`, `3.2 d`.
pub fn age(seconds: i64) -> String {
    let s = seconds.max(0) as f64;
    if s < 120.0 {
        format!("{s:.0} s")
    } else if s < 2.0 * 3600.0 {
        format!("{:.0} min", s / 60.0)
    } else if s < 2.0 * 86400.0 {
        format!("{:.1} h", s / 3600.0)
    } else {
        format!("{:.1} d", s / 86400.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn rpo_is_ok_before_due_late_within_the_margin_and_missed_after() {
        let hourly = Some("0 0 * * * *");
        let margin = Duration::minutes(30);
        let last = Some(datetime!(2026-11-21 02:00 UTC));
        let at =
            |h: u8, m: u8| datetime!(2026-11-21 00:00 UTC) + Duration::hours(h.into()) + Duration::minutes(m.into());
        let state = |now| classify_rpo(last, hourly, margin, now).0;
        assert_eq!(state(at(2, 59)), RpoState::Ok);
        assert_eq!(state(at(3, 0)), RpoState::Ok, "exactly at the due time it is not late yet");
        assert_eq!(state(at(3, 1)), RpoState::Late);
        assert_eq!(state(at(3, 30)), RpoState::Late, "the margin's last minute");
        assert_eq!(state(at(3, 31)), RpoState::Missed);
        let (_, why, due) = classify_rpo(last, hourly, margin, at(3, 31));
        assert_eq!(due, Some(datetime!(2026-11-21 03:00 UTC)));
        assert!(why.contains("2026-11-21T03:00:00Z") && why.contains("30 min"), "{why}");
        assert_eq!(classify_rpo(None, hourly, margin, at(3, 0)).0, RpoState::Missed, "never backed up");
        assert_eq!(classify_rpo(last, None, margin, at(9, 0)).0, RpoState::Unknown, "no schedule");
        assert_eq!(classify_rpo(last, Some("0 2 * * *"), margin, at(9, 0)).0, RpoState::Unknown, "five fields");
    }

    #[test]
    fn a_rating_needs_proof_and_says_why() {
        let on = |v: &str| Fact::known(v);
        let store = |w: Fact, s: Fact| StorePosture {
            immutability: w,
            soft_delete: s,
            who_may_delete: Fact::unknown("roles are not read"),
        };
        let key = on("key https://kv.vault.azure.net/keys/k/abc");
        let full = store(on("version-level WORM"), on("14 days"));
        assert_eq!(rate(&key, &full).rating, Rating::Maximum);
        assert_eq!(rate(&on("none"), &full).rating, Rating::Adequate, "not encrypted");
        let unknown = store(Fact::unknown("not readable here"), Fact::unknown("not readable here"));
        let p = rate(&key, &unknown);
        assert_eq!(p.rating, Rating::Minimum, "unknown is not shown");
        assert!(p.reasons.iter().any(|r| r == "immutability not shown (unknown)"), "{:?}", p.reasons);
        let p = rate(&key, &store(on("none (a local directory)"), on("14 days")));
        assert_eq!(p.rating, Rating::Adequate);
        assert!(p.reasons.contains(&"immutability is off".to_string()), "{:?}", p.reasons);
    }

    #[test]
    fn gfs_tiers_are_read_from_the_plans_reasons() {
        let r = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            gfs_tiers(&r(&["held", "among the newest 3", "newest daily of 2026-11-21", "newest weekly of 2026-W47"])),
            ["held", "newest", "daily", "weekly"]
        );
        assert!(gfs_tiers(&r(&["something else"])).is_empty());
        // The words come from `domain::policy::plan`; if they change, this must follow.
        let now = datetime!(2026-11-21 12:00 UTC);
        let items = [crate::domain::policy::Item { id: "a".into(), time: now, held: true }];
        let policy = crate::domain::policy::Policy { daily: 1, weekly: 1, monthly: 1, yearly: 1, min_keep: 1 };
        let planned = crate::domain::policy::plan(&items, &policy, now);
        let crate::domain::policy::Decision::Keep { reasons } = &planned[0].decision else { panic!("kept") };
        assert_eq!(gfs_tiers(reasons), ["held", "newest", "daily", "weekly", "monthly", "yearly"]);
    }

    #[test]
    fn scrub_withholds_every_url_query() {
        let t =
            "put https://a.blob.core.windows.net/c/x?sv=2025&sig=AbC%3D failed (see http://h/p?x=1); Bearer eyJa.b.c";
        let s = scrub(t);
        assert_eq!(
            s,
            "put https://a.blob.core.windows.net/c/x?(query withheld) failed (see http://h/p?(query withheld)); Bearer **redacted**"
        );
        assert_eq!(scrub("no url here?"), "no url here?");
        assert_eq!(scrub("sig=abc&x"), "sig=**redacted**&x", "redact still applies outside URLs");
    }

    #[test]
    fn ages_read_well() {
        assert_eq!(age(42), "42 s");
        assert_eq!(age(17 * 60), "17 min");
        assert_eq!(age(3 * 86400), "3.0 d");
    }
}
