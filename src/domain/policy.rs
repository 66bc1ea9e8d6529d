//! Retention policy: the pure plan of which backups to keep, each decision with its reason
//! (executed by `features::retention`).
//!
//! Grandfather-father-son over a real UTC calendar: the newest backup of each of the `daily`
//! most recent days that have a backup, of the `weekly` most recent ISO weeks, the `monthly`
//! most recent months and the `yearly` most recent years (at most 10). On top of that the newest
//! `min_keep` backups are never pruned, and a held backup is never removed.
//!
//! The plan is idempotent: every kept backup is the newest of its bucket among all backups, so
//! it is still the newest among the kept ones, and planning again removes nothing more.

use crate::domain::error::{Error, Result};
use crate::domain::layout::Tier as AccessTier;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use time::OffsetDateTime;

/// The most years a policy may keep.
pub const MAX_YEARS: u32 = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    #[serde(default)]
    pub daily: u32,
    #[serde(default)]
    pub weekly: u32,
    #[serde(default)]
    pub monthly: u32,
    #[serde(default)]
    pub yearly: u32,
    /// The newest `min_keep` backups are kept whatever the rest says.
    #[serde(default = "default_min_keep")]
    pub min_keep: u32,
}

fn default_min_keep() -> u32 {
    1
}

impl Policy {
    pub fn validate(&self) -> Result<()> {
        if self.yearly > MAX_YEARS {
            return Err(Error::permanent(format!(
                "retention policy keeps {} yearly backups; the most is {MAX_YEARS}",
                self.yearly
            )));
        }
        if self.min_keep == 0 && self.daily + self.weekly + self.monthly + self.yearly == 0 {
            return Err(Error::permanent("retention policy keeps nothing")
                .with_hint("set min_keep or at least one of daily, weekly, monthly, yearly"));
        }
        Ok(())
    }
}

/// One backup as retention sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub id: String,
    pub time: OffsetDateTime,
    /// A legal hold (`keep` flag): never removed.
    pub held: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "lowercase")]
pub enum Decision {
    Keep { reasons: Vec<String> },
    Remove { reason: String },
}

impl Decision {
    pub fn is_keep(&self) -> bool {
        matches!(self, Decision::Keep { .. })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Planned {
    pub id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    #[serde(flatten)]
    pub decision: Decision,
}

/// A GFS tier (`pub(crate)` for the retention tests, which check its calendar buckets).
#[derive(Clone, Copy)]
pub(crate) enum Tier {
    Daily,
    Weekly,
    Monthly,
    Yearly,
}

impl Tier {
    fn name(self) -> &'static str {
        match self {
            Tier::Daily => "daily",
            Tier::Weekly => "weekly",
            Tier::Monthly => "monthly",
            Tier::Yearly => "yearly",
        }
    }

    /// The calendar bucket of a time (UTC), as a label that is also its identity.
    pub(crate) fn bucket(self, t: OffsetDateTime) -> String {
        let t = t.to_offset(time::UtcOffset::UTC);
        match self {
            Tier::Daily => format!("{:04}-{:02}-{:02}", t.year(), u8::from(t.month()), t.day()),
            Tier::Weekly => {
                let (year, week, _) = t.to_iso_week_date();
                format!("{year:04}-W{week:02}")
            }
            Tier::Monthly => format!("{:04}-{:02}", t.year(), u8::from(t.month())),
            Tier::Yearly => format!("{:04}", t.year()),
        }
    }
}

/// Decide, for every backup, keep or remove, with reasons. Backups dated after `now` (clock
/// skew) are kept. The result is ordered newest first.
pub fn plan(items: &[Item], policy: &Policy, now: OffsetDateTime) -> Vec<Planned> {
    let mut order: Vec<&Item> = items.iter().collect();
    order.sort_by(|a, b| b.time.cmp(&a.time).then_with(|| b.id.cmp(&a.id)));
    let mut reasons: Vec<Vec<String>> = vec![Vec::new(); order.len()];

    for (i, item) in order.iter().enumerate() {
        if item.held {
            reasons[i].push("held".to_string());
        }
        if (i as u32) < policy.min_keep {
            reasons[i].push(format!("among the newest {}", policy.min_keep));
        }
        if item.time > now {
            reasons[i].push("dated in the future".to_string());
        }
    }
    let tiers = [
        (Tier::Daily, policy.daily),
        (Tier::Weekly, policy.weekly),
        (Tier::Monthly, policy.monthly),
        (Tier::Yearly, policy.yearly),
    ];
    let mut kept_buckets: Vec<HashSet<String>> = Vec::new();
    for (tier, count) in tiers {
        let mut seen = HashSet::new();
        for (i, item) in order.iter().enumerate() {
            if seen.len() as u32 >= count {
                break;
            }
            let bucket = tier.bucket(item.time);
            // Newest first, so the first item of a bucket is its newest.
            if seen.insert(bucket.clone()) {
                reasons[i].push(format!("newest {} of {bucket}", tier.name()));
            }
        }
        kept_buckets.push(seen);
    }

    order
        .iter()
        .zip(reasons)
        .map(|(item, reasons)| {
            let decision = if reasons.is_empty() {
                Decision::Remove { reason: removal_reason(item.time, &tiers, &kept_buckets) }
            } else {
                Decision::Keep { reasons }
            };
            Planned { id: item.id.clone(), time: item.time, decision }
        })
        .collect()
}

/// Why a backup goes: a newer one holds its day/week/month/year, or it is older than every
/// bucket the policy keeps ("beyond daily 7, weekly 4, monthly 12, yearly 10").
fn removal_reason(t: OffsetDateTime, tiers: &[(Tier, u32)], kept: &[HashSet<String>]) -> String {
    for ((tier, _), buckets) in tiers.iter().zip(kept) {
        let bucket = tier.bucket(t);
        if buckets.contains(&bucket) {
            return format!("a newer backup is the {} of {bucket}", tier.name());
        }
    }
    let limits: Vec<String> =
        tiers.iter().filter(|(_, n)| *n > 0).map(|(tier, n)| format!("{} {n}", tier.name())).collect();
    if limits.is_empty() {
        "the policy keeps only the newest backups".to_string()
    } else {
        format!("beyond {}", limits.join(", "))
    }
}

/// Per-database overrides in the inventory (`servers[].databases.<name>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DatabasePolicy {
    #[serde(default)]
    pub schedule: Option<String>,
    #[serde(default)]
    pub retention: Option<Policy>,
}

/// The plan for one database (or the globals) of one server.
#[derive(Debug, Clone, Serialize)]
pub struct TargetPlan {
    pub server: String,
    /// `None`: the server's globals.
    pub database: Option<String>,
    pub policy: Option<Policy>,
    /// Why nothing is planned (no policy), if so.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    pub backups: Vec<Planned>,
    /// Kept backups whose data blob moves to a colder access tier (`PGVAULT_TIER_AFTER_DAYS`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tiering: Vec<TierMove>,
}

/// One planned access-tier move: always a backup's data blob, never its manifest (listing and
/// planning read manifests, and must never touch an offline blob).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TierMove {
    pub id: String,
    pub data_blob: String,
    pub tier: AccessTier,
    pub reason: String,
    /// `PGVAULT_TIER_AFTER_DAYS` and the plan's time: execution also leaves alone a blob whose
    /// tier changed less than this long before (see [`recent_tier_change`]).
    #[serde(skip)]
    pub after_days: u32,
    #[serde(skip)]
    pub planned_at: OffsetDateTime,
}

/// Which kept backups move to `tier`: those older than `after_days` at `now`. Pure; each move
/// carries its reason ("older than 30 days (41 days): data to cool").
pub fn plan_tiering(
    kept: &[(&Planned, &str)],
    after_days: u32,
    tier: AccessTier,
    now: OffsetDateTime,
) -> Vec<TierMove> {
    kept.iter()
        .filter(|(p, _)| p.decision.is_keep())
        .filter_map(|(p, data_blob)| {
            let age = (now - p.time).whole_days();
            (age > i64::from(after_days)).then(|| TierMove {
                id: p.id.clone(),
                data_blob: data_blob.to_string(),
                tier,
                reason: format!("older than {after_days} days ({age} days): data to {tier}"),
                after_days,
                planned_at: now,
            })
        })
        .collect()
}

/// Why a blob whose access tier last changed at `changed` is not moved yet, if so: its tier
/// changed less than `after_days` before `now`. The usual cause is a restore that rehydrated an
/// archived backup (the blob is now hot, with no archive status): moving it back at once would
/// make the waiting restore task start a second rehydration, or fail a read under way with 409
/// `BlobArchived`. So a blob gets the same `after_days` from its last tier change as a backup gets
/// from its creation. Unknown (`None`: never set explicitly, or a store that does not say): no
/// reason, the move goes ahead. Pure.
pub fn recent_tier_change(changed: Option<OffsetDateTime>, after_days: u32, now: OffsetDateTime) -> Option<String> {
    let changed = changed?;
    let since = now - changed;
    (since < time::Duration::days(i64::from(after_days))).then(|| {
        format!(
            "its tier changed {} days ago (a rehydration?): left alone until {after_days} days after that",
            since.whole_days().max(0)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;
    use time::{Duration, Month};

    fn daily_for_years(years: i64, end: OffsetDateTime) -> Vec<Item> {
        let days = years * 366;
        (0..days).map(|d| Item { id: format!("b{d:05}"), time: end - Duration::days(d), held: false }).collect()
    }

    fn kept(plan: &[Planned]) -> Vec<&Planned> {
        plan.iter().filter(|p| p.decision.is_keep()).collect()
    }

    fn tier_count(plan: &[Planned], tier: &str) -> usize {
        plan.iter()
            .filter(|p| match &p.decision {
                Decision::Keep { reasons } => reasons.iter().any(|r| r.starts_with(&format!("newest {tier} of"))),
                _ => false,
            })
            .count()
    }

    #[test]
    fn eleven_years_of_dailies_keep_exact_tier_counts() {
        let now = datetime!(2026-11-21 03:00 UTC);
        let items = daily_for_years(11, datetime!(2026-11-21 02:00 UTC));
        for policy in [
            Policy { daily: 7, weekly: 4, monthly: 12, yearly: 10, min_keep: 3 },
            Policy { daily: 30, weekly: 0, monthly: 0, yearly: 0, min_keep: 1 },
            Policy { daily: 0, weekly: 52, monthly: 0, yearly: 10, min_keep: 0 },
            Policy { daily: 14, weekly: 8, monthly: 24, yearly: 5, min_keep: 20 },
        ] {
            let plan = plan(&items, &policy, now);
            assert_eq!(plan.len(), items.len());
            assert_eq!(tier_count(&plan, "daily"), policy.daily as usize, "{policy:?}");
            assert_eq!(tier_count(&plan, "weekly"), policy.weekly as usize, "{policy:?}");
            assert_eq!(tier_count(&plan, "monthly"), policy.monthly as usize, "{policy:?}");
            assert_eq!(tier_count(&plan, "yearly"), policy.yearly as usize, "{policy:?}");
            assert!(kept(&plan).len() >= policy.min_keep as usize);
            // The newest min_keep are kept.
            assert!(plan.iter().take(policy.min_keep as usize).all(|p| p.decision.is_keep()));

            // Idempotent: planning the survivors removes nothing.
            let survivors: Vec<Item> =
                kept(&plan).iter().map(|p| Item { id: p.id.clone(), time: p.time, held: false }).collect();
            let again = super::plan(&survivors, &policy, now);
            assert!(again.iter().all(|p| p.decision.is_keep()), "{policy:?}");
        }
    }

    #[test]
    fn yearly_ten_reaches_back_ten_calendar_years_and_uses_december_31() {
        let now = datetime!(2026-11-21 03:00 UTC);
        let items = daily_for_years(11, datetime!(2026-11-21 02:00 UTC));
        let policy = Policy { daily: 0, weekly: 0, monthly: 0, yearly: 10, min_keep: 0 };
        let plan = plan(&items, &policy, now);
        let years: Vec<(i32, Month, u8)> =
            kept(&plan).iter().map(|p| (p.time.year(), p.time.month(), p.time.day())).collect();
        assert_eq!(years[0], (2026, Month::November, 21), "the newest of this year");
        assert_eq!(years[1], (2025, Month::December, 31));
        assert_eq!(years.last().unwrap().0, 2017);
        assert_eq!(years.len(), 10);
        let removed = plan.iter().find(|p| p.time.year() == 2016).unwrap();
        assert_eq!(removed.decision, Decision::Remove { reason: "beyond yearly 10".into() });
        let superseded = plan.iter().find(|p| p.time.year() == 2020 && p.time.month() == Month::June).unwrap();
        assert_eq!(superseded.decision, Decision::Remove { reason: "a newer backup is the yearly of 2020".into() });
    }

    #[test]
    fn iso_weeks_cross_year_boundaries() {
        // 2026-01-01 is a Thursday: ISO week 2026-W01 starts on Monday 2025-12-29.
        assert_eq!(Tier::Weekly.bucket(datetime!(2025-12-29 00:00 UTC)), "2026-W01");
        assert_eq!(Tier::Weekly.bucket(datetime!(2025-12-28 23:59 UTC)), "2025-W52");
        assert_eq!(Tier::Weekly.bucket(datetime!(2021-01-03 12:00 UTC)), "2020-W53");
        // A time in another offset buckets by its UTC date.
        assert_eq!(Tier::Daily.bucket(datetime!(2026-03-01 01:00 +02:00)), "2026-02-28");
    }

    #[test]
    fn held_backups_are_never_removed() {
        let now = datetime!(2026-11-21 03:00 UTC);
        let mut items = daily_for_years(3, datetime!(2026-11-21 02:00 UTC));
        let held_ids: Vec<String> = items
            .iter_mut()
            .skip(400)
            .step_by(97)
            .map(|i| {
                i.held = true;
                i.id.clone()
            })
            .collect();
        let plan = plan(&items, &Policy { daily: 7, weekly: 0, monthly: 0, yearly: 0, min_keep: 1 }, now);
        for id in &held_ids {
            let p = plan.iter().find(|p| &p.id == id).unwrap();
            assert_eq!(p.decision, Decision::Keep { reasons: vec!["held".into()] });
        }
        assert_eq!(kept(&plan).len(), 7 + held_ids.len());
    }

    #[test]
    fn several_backups_a_day_keep_the_newest_of_the_day() {
        let now = datetime!(2026-11-21 23:00 UTC);
        let items: Vec<Item> = (0..6)
            .map(|h| Item {
                id: format!("h{h}"),
                time: datetime!(2026-11-21 00:00 UTC) + Duration::hours(h * 4),
                held: false,
            })
            .collect();
        let plan = plan(&items, &Policy { daily: 1, weekly: 0, monthly: 0, yearly: 0, min_keep: 0 }, now);
        let kept: Vec<&str> = kept(&plan).iter().map(|p| p.id.as_str()).collect();
        assert_eq!(kept, ["h5"]);
        assert_eq!(plan[0].decision, Decision::Keep { reasons: vec!["newest daily of 2026-11-21".into()] });
    }

    #[test]
    fn policy_limits() {
        assert!(Policy { daily: 0, weekly: 0, monthly: 0, yearly: 11, min_keep: 1 }.validate().is_err());
        assert!(Policy { daily: 0, weekly: 0, monthly: 0, yearly: 0, min_keep: 0 }.validate().is_err());
        assert!(Policy { daily: 7, weekly: 4, monthly: 12, yearly: 10, min_keep: 1 }.validate().is_ok());
    }
}
