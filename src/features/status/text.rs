//! The status view for a terminal (`pgvault status`): the same content as the page, styled with
//! ANSI colours that the CLI's writer (`anstream`) keeps only on a terminal. Names come from
//! databases and may hold control characters: each is shown escaped, so a name cannot move the
//! cursor or recolour the screen.

use crate::domain::status::*;
use crate::seams::progress::human_bytes as bytes;
use anstyle::{AnsiColor, Style};
use std::fmt::Write;

fn color(c: AnsiColor) -> Style {
    Style::new().fg_color(Some(c.into())).bold()
}

fn state_style(s: RpoState) -> Style {
    match s {
        RpoState::Ok => color(AnsiColor::Green),
        RpoState::Late => color(AnsiColor::Yellow),
        RpoState::Missed => color(AnsiColor::Red),
        RpoState::Unknown => color(AnsiColor::BrightBlack),
    }
}

fn rating_style(r: Rating) -> Style {
    match r {
        Rating::Maximum => color(AnsiColor::Green),
        Rating::Adequate => color(AnsiColor::Yellow),
        Rating::Minimum => color(AnsiColor::Red),
    }
}

/// Text safe for a terminal: control characters escaped (`\u{1b}`), the rest as it is.
pub fn clean(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() }).collect()
}

/// A sparkline of block characters (`▁▂▃▄▅▆▇█`), oldest first.
pub fn spark(values: &[f64]) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let (lo, hi) = values.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), v| (l.min(*v), h.max(*v)));
    values
        .iter()
        .map(|v| if hi > lo && v.is_finite() { BARS[(((v - lo) / (hi - lo)) * 7.0).round() as usize] } else { BARS[3] })
        .collect()
}

/// The view as text, with ANSI styles.
pub fn render(v: &StatusView) -> String {
    let mut o = String::new();
    let bold = Style::new().bold();
    let dim = color(AnsiColor::BrightBlack);
    let _ = writeln!(
        o,
        "{bold}pgvault status{bold:#}  generated {}  store {}  RPO margin {} min",
        rfc(v.generated_at),
        clean(&v.store),
        v.rpo_margin_minutes
    );
    let counts = v.counts();
    let summary: Vec<String> = [RpoState::Ok, RpoState::Late, RpoState::Missed, RpoState::Unknown]
        .iter()
        .map(|s| {
            let st = state_style(*s);
            format!("{st}{} {}{st:#}", counts.get(s.as_str()).copied().unwrap_or(0), s.as_str())
        })
        .collect();
    let _ = writeln!(o, "{}\n", summary.join(", "));
    if v.databases.is_empty() {
        let _ = writeln!(o, "no backup and no backup job recorded yet");
    }
    for d in &v.databases {
        let p = &d.protection;
        let st = state_style(p.state);
        let _ = writeln!(
            o,
            "{bold}{}/{}{bold:#}  {st}{}{st:#}  {}",
            clean(&d.server),
            clean(&d.database),
            p.state.as_str(),
            clean(&p.why)
        );
        match &p.newest {
            Some(n) => {
                let ago = p.age_seconds.map(|a| format!(" ({} ago)", age(a))).unwrap_or_default();
                let _ = writeln!(o, "  protection  newest {}{ago}  {}", rfc(n.at), clean(&n.id));
            }
            None => {
                let _ = writeln!(o, "  protection  no good backup");
            }
        }
        let _ = writeln!(o, "              next run {}", p.next_run.map(rfc).unwrap_or_else(|| "none".into()));
        if !d.trend.is_empty() {
            let sizes: Vec<f64> = d.trend.iter().map(|t| t.stored_bytes as f64).collect();
            let secs: Vec<f64> = d.trend.iter().map(|t| t.duration_seconds).collect();
            let _ = writeln!(
                o,
                "  trend       size {} {}  duration {} {:.1} s",
                spark(&sizes),
                bytes(d.trend.last().map(|t| t.stored_bytes).unwrap_or(0)),
                spark(&secs),
                secs.last().copied().unwrap_or(0.0)
            );
        }
        match &d.proof {
            None => {
                let _ = writeln!(o, "  proof       {dim}no drill yet{dim:#}");
            }
            Some(pr) => {
                let (s, word) = if pr.ok {
                    (color(AnsiColor::Green), "drill passed")
                } else {
                    (color(AnsiColor::Red), "drill failed")
                };
                let rto = pr.rto_seconds.map(|r| format!(", RTO {r:.1} s")).unwrap_or_default();
                let why = pr.reason.as_deref().map(|r| format!(": {}", clean(r))).unwrap_or_default();
                let _ = writeln!(o, "  proof       {s}{word}{s:#} {}{rto}{why}", rfc(pr.at));
            }
        }
        let r = &d.retention;
        let _ = writeln!(
            o,
            "  retention   {} backups ({}); GFS {}; access {}{}",
            r.backups,
            clean(&r.policy),
            tally(&r.gfs),
            tally(&r.access),
            r.access_note.as_deref().map(|n| format!(" ({})", clean(n))).unwrap_or_default()
        );
        let rs = rating_style(d.posture.rating);
        let _ = writeln!(
            o,
            "  posture     {rs}{}{rs:#}; encryption {}",
            d.posture.rating.as_str(),
            clean(&d.posture.encryption.text())
        );
        for t in &d.trouble {
            let red = color(AnsiColor::Red);
            let _ = writeln!(
                o,
                "  {red}failed{red:#}      {} {} {}: {}",
                rfc(t.at),
                t.kind,
                clean(&t.job_id),
                clean(&t.reason)
            );
        }
        let _ = writeln!(o);
    }
    if !v.other_trouble.is_empty() {
        let _ = writeln!(o, "{bold}Other failed jobs (last {TROUBLE_DAYS} days){bold:#}");
        for t in &v.other_trouble {
            let target = t.target.as_deref().map(|t| format!(" {}", clean(t))).unwrap_or_default();
            let _ = writeln!(o, "  {} {}{target} {}: {}", rfc(t.at), t.kind, clean(&t.job_id), clean(&t.reason));
        }
        let _ = writeln!(o);
    }
    let s = &v.store_posture;
    let _ = writeln!(o, "{bold}Posture{bold:#}");
    let _ = writeln!(o, "  immutability    {}", clean(&s.immutability.text()));
    let _ = writeln!(o, "  soft delete     {}", clean(&s.soft_delete.text()));
    let _ = writeln!(o, "  who may delete  {}", clean(&s.who_may_delete.text()));
    let _ = writeln!(o);
    let _ = writeln!(o, "{bold}VM pgBackRest targets{bold:#}");
    if v.pgbackrest.is_empty() {
        let _ = writeln!(o, "  none configured");
    }
    for t in &v.pgbackrest {
        let _ = writeln!(o, "  {} ({}): SAS expiry {}", clean(&t.name), t.delivery, clean(&t.sas_expiry.text()));
        if let Some(p) = &t.sas_problem {
            let _ = writeln!(o, "    problem: {}", clean(p));
        }
        if let Some(n) = &t.stanzas_note {
            let _ = writeln!(o, "    stanzas: {}", clean(n));
        }
        for st in &t.stanzas {
            let word = if st.fresh { "fresh" } else { "stale" };
            let newest = st.newest.map(rfc).unwrap_or_else(|| "none".into());
            let problem = st.problem.as_deref().map(|p| format!(" ({})", clean(p))).unwrap_or_default();
            let _ = writeln!(o, "    {}: {word}, newest {newest}{problem}", clean(&st.stanza));
        }
    }
    let _ = writeln!(o);
    let _ = writeln!(o, "{bold}Doctor{bold:#}");
    if v.findings.is_empty() {
        let _ = writeln!(o, "  no findings recorded");
    }
    for f in &v.findings {
        let hint = f.hint.as_deref().map(|h| format!("\n    HINT: {}", clean(h))).unwrap_or_default();
        let _ = writeln!(o, "  {} {}: {}{hint}", clean(&f.severity), clean(&f.object), clean(&f.problem));
    }
    for g in &v.gaps {
        let _ = writeln!(o, "not read: {}", clean(g));
    }
    o
}
