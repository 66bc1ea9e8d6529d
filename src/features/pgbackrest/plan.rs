//! When to rotate a target's SAS and what the new one looks like: a pure function of (the
//! newest token's attributes, the target's policy, now), so a controlled clock can walk it
//! through many lifetimes (tests/pgbackrest_sas.rs proves there is never an instant without a
//! valid token).
//!
//! Invariants:
//! - A token with more than `renew_before` left is kept: no rotation, nothing written.
//! - A new token starts [`START_BACKDATE`] before now (clock skew between us, Storage and the
//!   VM) and expires `lifetime` after now; its user delegation key covers exactly that span.
//! - The previous token is never revoked: it stays valid until its own expiry, so a backup or
//!   WAL push that started with it finishes.

use super::target::Policy;
use serde::Serialize;
use time::{Duration, OffsetDateTime};

/// How far a new token's start is backdated.
pub const START_BACKDATE: Duration = Duration::minutes(5);

/// What the vault says about the newest token (its secret's attributes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenState {
    pub enabled: bool,
    pub not_before: Option<OffsetDateTime>,
    pub expires: Option<OffsetDateTime>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "lowercase")]
pub enum Action {
    /// The current token has margin; `renew_at` is when it enters its renew-before window.
    Keep {
        #[serde(with = "time::serde::rfc3339")]
        renew_at: OffsetDateTime,
    },
    /// Sign a new token valid from `start` to `expiry`.
    Rotate {
        #[serde(with = "time::serde::rfc3339")]
        start: OffsetDateTime,
        #[serde(with = "time::serde::rfc3339")]
        expiry: OffsetDateTime,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    #[serde(flatten)]
    pub action: Action,
    pub reason: String,
}

/// Decide for one target.
pub fn plan(current: Option<&TokenState>, policy: &Policy, now: OffsetDateTime) -> Plan {
    // SAS times have whole seconds; so do the secret's attributes and tags.
    let whole = now.replace_nanosecond(0).unwrap_or(now);
    let rotate = |reason: String| Plan {
        action: Action::Rotate { start: whole - START_BACKDATE, expiry: whole + policy.lifetime },
        reason,
    };
    let Some(cur) = current else {
        return rotate("no token yet".into());
    };
    if !cur.enabled {
        return rotate("the current token's secret is disabled".into());
    }
    let Some(exp) = cur.expires else {
        return rotate("the current token's secret has no expiry attribute".into());
    };
    if exp <= now {
        return rotate(format!("the current token expired at {}", rfc3339(exp)));
    }
    if let Some(nbf) = cur.not_before
        && nbf > now + START_BACKDATE
    {
        return rotate(format!("the current token is not valid before {}", rfc3339(nbf)));
    }
    let left = exp - now;
    if left <= policy.renew_before {
        return rotate(format!(
            "the current token expires at {} ({} left, renew before {})",
            rfc3339(exp),
            super::target::show(Duration::seconds(left.whole_seconds())),
            super::target::show(policy.renew_before)
        ));
    }
    Plan {
        action: Action::Keep { renew_at: exp - policy.renew_before },
        reason: format!("the current token is valid until {}", rfc3339(exp)),
    }
}

/// Whether the newest token is inside the alarm window (or missing or expired): the reason.
pub fn alarm(newest: Option<&TokenState>, policy: &Policy, now: OffsetDateTime) -> Option<String> {
    match newest.and_then(|t| t.expires.filter(|_| t.enabled)) {
        None => Some("no valid token exists".into()),
        Some(exp) if exp <= now => Some(format!("the newest token expired at {}", rfc3339(exp))),
        Some(exp) if exp - now <= policy.alarm_window => Some(format!(
            "the newest token expires at {}, inside the alarm window of {}",
            rfc3339(exp),
            super::target::show(policy.alarm_window)
        )),
        Some(_) => None,
    }
}

pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn policy() -> Policy {
        Policy::new(Duration::hours(12), None, None).unwrap()
    }

    #[test]
    fn keeps_until_the_renew_window_then_rotates() {
        let now = datetime!(2026-11-21 00:00 UTC);
        let p = plan(None, &policy(), now);
        assert_eq!(p.action, Action::Rotate { start: now - START_BACKDATE, expiry: now + Duration::hours(12) });
        let cur = TokenState { enabled: true, not_before: Some(now), expires: Some(now + Duration::hours(12)) };
        let keep = plan(Some(&cur), &policy(), now + Duration::hours(5));
        assert_eq!(keep.action, Action::Keep { renew_at: now + Duration::hours(6) });
        let rot = plan(Some(&cur), &policy(), now + Duration::hours(6));
        assert!(matches!(rot.action, Action::Rotate { .. }), "{rot:?}");
        assert!(rot.reason.contains("renew before 6h"), "{}", rot.reason);
        let disabled = TokenState { enabled: false, ..cur };
        assert!(matches!(plan(Some(&disabled), &policy(), now).action, Action::Rotate { .. }));
        assert!(alarm(Some(&cur), &policy(), now + Duration::hours(8)).is_none());
        assert!(alarm(Some(&cur), &policy(), now + Duration::hours(9)).unwrap().contains("alarm window"));
        assert!(alarm(Some(&cur), &policy(), now + Duration::hours(13)).unwrap().contains("expired"));
        assert!(alarm(None, &policy(), now).is_some());
    }
}
