//! Schedules: the Functions host's NCRONTAB expressions (six fields, seconds first, UTC).

use crate::domain::error::{Error, Result};

/// Parse an NCRONTAB expression as the Functions timer trigger reads it: six fields,
/// `{second} {minute} {hour} {day} {month} {day-of-week}`, in UTC.
pub fn parse_ncrontab(expr: &str) -> Result<croner::Cron> {
    if expr.split_whitespace().count() != 6 {
        return Err(Error::permanent(format!(
            "{expr:?} is not an NCRONTAB expression: it needs six fields, {{second}} {{minute}} {{hour}} {{day}} {{month}} {{day-of-week}}"
        )));
    }
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Required)
        .year(croner::parser::Year::Disallowed)
        .build()
        .parse(expr)
        .map_err(|e| Error::permanent(format!("{expr:?} is not a valid NCRONTAB expression: {e}")))
}

/// The next run of an NCRONTAB schedule strictly after `t` (`None`: the expression does not
/// parse, or it never fires again).
pub fn next_after(schedule: &str, t: time::OffsetDateTime) -> Option<time::OffsetDateTime> {
    let cron = parse_ncrontab(schedule).ok()?;
    let from = chrono::DateTime::from_timestamp(t.unix_timestamp(), 0).unwrap_or_default();
    let next = cron.find_next_occurrence(&from, false).ok()?;
    time::OffsetDateTime::from_unix_timestamp(next.timestamp()).ok()
}
