//! The status page as one server-rendered HTML document: no JavaScript, inline CSS, inline SVG
//! sparklines. A pure function of the view. `maud` escapes every interpolated value, so a
//! database named `<img src=x onerror=alert(1)>` is text; nothing is emitted unescaped.

use crate::domain::status::*;
use crate::seams::progress::human_bytes as bytes;
use maud::{DOCTYPE, Markup, PreEscaped, html};

const CSS: &str = r#"
body{font:14px/1.4 "Segoe UI",Roboto,"Helvetica Neue","Liberation Sans","DejaVu Sans",Arial,sans-serif;margin:0;background:#f4f6f8;color:#1b1f24}
header{background:#0f2a44;color:#fff;padding:14px 24px}
header h1{margin:0;font-size:20px} header p{margin:4px 0 0;color:#c9d6e3;font-size:12px}
main{padding:16px 24px;max-width:1400px}
section{margin:0 0 20px} h2{font-size:16px;margin:18px 0 8px}
table{border-collapse:collapse;width:100%;background:#fff;box-shadow:0 1px 2px #0002}
th,td{padding:6px 8px;border-bottom:1px solid #e3e7eb;text-align:left;vertical-align:top}
th{background:#eef2f6;font-weight:600;font-size:12px;text-transform:uppercase;color:#4a5561}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600;color:#fff}
.ok{background:#1a7f37}.late{background:#bf8700}.missed{background:#cf222e}.unknown{background:#6e7781}
.Maximum{background:#1a7f37}.Adequate{background:#bf8700}.Minimum{background:#cf222e}
.counts .badge{margin-right:6px}
.muted{color:#6e7781;font-size:12px}
.name{font-weight:600;word-break:break-all}
svg.spark{vertical-align:middle;background:#f6f8fa;border:1px solid #e3e7eb}
svg.spark polyline{fill:none;stroke:#0969da;stroke-width:1.5} svg.spark circle{fill:#0969da}
ul{margin:0;padding-left:18px} code{font-size:12px;word-break:break-all}
td.trend div{white-space:nowrap}
.fail{color:#cf222e;font-weight:600}.pass{color:#1a7f37;font-weight:600}
"#;

/// The page.
pub fn render(v: &StatusView) -> String {
    let counts = v.counts();
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "pgvault status" }
                // A constant of ours: escaping it would break the quoted font names.
                style { (PreEscaped(CSS)) }
            }
            body {
                header {
                    h1 { "pgvault status" }
                    p { "generated " (rfc(v.generated_at)) " · store " (v.store) " · RPO margin " (v.rpo_margin_minutes) " min" }
                }
                main {
                    section id="summary" class="counts" {
                        @for state in [RpoState::Ok, RpoState::Late, RpoState::Missed, RpoState::Unknown] {
                            span class={ "badge " (state.as_str()) } {
                                (counts.get(state.as_str()).copied().unwrap_or(0)) " " (state.as_str())
                            }
                        }
                    }
                    (databases(v))
                    (trouble(v))
                    (posture(v))
                    (pgbackrest(v))
                    (doctor(v))
                    @if !v.gaps.is_empty() {
                        section id="gaps" {
                            h2 { "Not read" }
                            ul { @for g in &v.gaps { li { (g) } } }
                        }
                    }
                }
            }
        }
    }
    .into_string()
}

fn databases(v: &StatusView) -> Markup {
    html! {
        section id="databases" {
            h2 { "Databases" }
            @if v.databases.is_empty() {
                p class="muted" { "no backup and no backup job recorded yet" }
            } @else {
                table {
                    thead { tr {
                        th { "Server / database" } th { "Protection" } th { "Trend (last " (TREND_LEN) ")" }
                        th { "Proof" } th { "Retention" } th { "Posture" }
                    } }
                    tbody {
                        @for d in &v.databases { (row(d)) }
                    }
                }
            }
        }
    }
}

fn row(d: &DbStatus) -> Markup {
    let p = &d.protection;
    html! {
        tr class="db" data-state=(p.state.as_str()) {
            td class="name" { (d.server) " / " span class="database" { (d.database) } }
            td class="protection" {
                span class={ "badge rpo " (p.state.as_str()) } { (p.state.as_str()) }
                div class="muted" { (p.why) }
                @if let Some(n) = &p.newest {
                    div { "newest " (rfc(n.at)) @if let Some(a) = p.age_seconds { " (" (age(a)) " ago)" } }
                    div class="muted" { code { (n.id) } }
                }
                div { "next run " (p.next_run.map(rfc).unwrap_or_else(|| "none".into())) }
            }
            td class="trend" {
                @if d.trend.is_empty() {
                    span class="muted" { "no backup yet" }
                } @else {
                    @let sizes: Vec<f64> = d.trend.iter().map(|t| t.stored_bytes as f64).collect();
                    @let secs: Vec<f64> = d.trend.iter().map(|t| t.duration_seconds).collect();
                    div { (sparkline(&sizes, "stored size")) " " (bytes(d.trend.last().map(|t| t.stored_bytes).unwrap_or(0))) }
                    div { (sparkline(&secs, "duration")) " " (format!("{:.1} s", secs.last().copied().unwrap_or(0.0))) }
                }
            }
            td class="proof" {
                @match &d.proof {
                    None => span class="muted" { "no drill yet" },
                    Some(pr) => {
                        @if pr.ok { span class="pass" { "drill passed" } } @else { span class="fail" { "drill failed" } }
                        div { (rfc(pr.at)) }
                        @if let Some(rto) = pr.rto_seconds { div { "RTO " (format!("{rto:.1} s")) } }
                        @if let Some(b) = &pr.backup { div class="muted" { code { (b) } } }
                        @if let Some(r) = &pr.reason { div class="muted" { (r) } }
                    }
                }
            }
            td class="retention" {
                div { (d.retention.backups) @if d.retention.backups == 1 { " backup · " } @else { " backups · " } span class="muted" { (d.retention.policy) } }
                div { "GFS: " (tally(&d.retention.gfs)) }
                div { "access: " (tally(&d.retention.access)) }
                @if let Some(n) = &d.retention.access_note { div class="muted" { (n) } }
            }
            td class="posture" {
                span class={ "badge rating " (d.posture.rating.as_str()) } { (d.posture.rating.as_str()) }
                div class="muted" { "encryption: " (d.posture.encryption.text()) }
            }
        }
    }
}

fn trouble(v: &StatusView) -> Markup {
    let rows: Vec<(&str, &Trouble)> = v
        .databases
        .iter()
        .flat_map(|d| d.trouble.iter().map(move |t| (d.database.as_str(), t)))
        .chain(v.other_trouble.iter().map(|t| ("", t)))
        .collect();
    html! {
        section id="trouble" {
            h2 { "Trouble: failed jobs in the last " (TROUBLE_DAYS) " days" }
            @if rows.is_empty() {
                p class="muted" { "none" }
            } @else {
                table {
                    thead { tr { th { "When" } th { "Kind" } th { "Target" } th { "Job" } th { "Reason" } } }
                    tbody {
                        @for (_, t) in &rows {
                            tr class="failed-job" {
                                td { (rfc(t.at)) } td { (t.kind) } td { (t.target.as_deref().unwrap_or("")) }
                                td { code { (t.job_id) } } td { (t.reason) }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn posture(v: &StatusView) -> Markup {
    let s = &v.store_posture;
    html! {
        section id="posture" {
            h2 { "Posture" }
            table {
                tbody {
                    tr { th { "Immutability" } td { (s.immutability.text()) } }
                    tr { th { "Soft delete" } td { (s.soft_delete.text()) } }
                    tr { th { "Who may delete" } td { (s.who_may_delete.text()) } }
                }
            }
            p class="muted" {
                "Rating, modelled on Azure Business Continuity Center's security levels: Maximum needs immutability, \
                 soft delete and encryption with a Key Vault key; Adequate needs immutability or soft delete; \
                 otherwise Minimum. What is not known counts as not shown."
            }
            table {
                thead { tr { th { "Server / database" } th { "Rating" } th { "Encryption" } th { "Reasons" } } }
                tbody {
                    @for d in &v.databases {
                        tr {
                            td class="name" { (d.server) " / " (d.database) }
                            td { span class={ "badge " (d.posture.rating.as_str()) } { (d.posture.rating.as_str()) } }
                            td { (d.posture.encryption.text()) }
                            td { ul { @for r in &d.posture.reasons { li { (r) } } } }
                        }
                    }
                }
            }
        }
    }
}

fn pgbackrest(v: &StatusView) -> Markup {
    html! {
        section id="pgbackrest" {
            h2 { "VM pgBackRest targets" }
            @if v.pgbackrest.is_empty() {
                p class="muted" { "none configured (PGVAULT_PGBACKREST_TARGETS)" }
            } @else {
                table {
                    thead { tr { th { "Target" } th { "Delivery" } th { "SAS expiry" } th { "Stanzas" } } }
                    tbody {
                        @for t in &v.pgbackrest {
                            tr {
                                td class="name" { (t.name) }
                                td { (t.delivery) }
                                td { (t.sas_expiry.text()) @if let Some(p) = &t.sas_problem { div class="fail" { (p) } } }
                                td {
                                    @if let Some(n) = &t.stanzas_note { div class="muted" { (n) } }
                                    ul { @for s in &t.stanzas {
                                        li {
                                            (s.stanza) ": "
                                            @if s.fresh { span class="pass" { "fresh" } } @else { span class="fail" { "stale" } }
                                            " newest " (s.newest.map(rfc).unwrap_or_else(|| "none".into()))
                                            @if let Some(p) = &s.problem { " · " (p) }
                                        }
                                    } }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn doctor(v: &StatusView) -> Markup {
    html! {
        section id="doctor" {
            h2 { "Doctor" }
            @if v.findings.is_empty() {
                p class="muted" { "no findings recorded" }
            } @else {
                table {
                    thead { tr { th { "Severity" } th { "Object" } th { "Problem" } th { "Hint" } } }
                    tbody {
                        @for f in &v.findings {
                            tr class="finding" {
                                td { (f.severity) } td class="name" { (f.object) } td { (f.problem) }
                                td { (f.hint.as_deref().unwrap_or("")) }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Width and height of a sparkline, in CSS pixels.
pub const SPARK_W: f64 = 120.0;
pub const SPARK_H: f64 = 24.0;

/// The points of a sparkline through `values` (oldest first) in a `SPARK_W` x `SPARK_H` box
/// less a 3 px margin, one decimal each; the lowest value at the bottom, the highest at the top,
/// a flat line in the middle. Non-finite values count as 0.
pub fn spark_points(values: &[f64]) -> String {
    let vals: Vec<f64> = values.iter().map(|v| if v.is_finite() { *v } else { 0.0 }).collect();
    let (lo, hi) = vals.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), v| (l.min(*v), h.max(*v)));
    let pad = 3.0;
    let step = if vals.len() > 1 { (SPARK_W - 2.0 * pad) / (vals.len() - 1) as f64 } else { 0.0 };
    // A single value sits at the right end, where the newest does.
    let x0 = if vals.len() > 1 { pad } else { SPARK_W - pad };
    vals.iter()
        .enumerate()
        .map(|(i, v)| {
            let y = if hi > lo { pad + (hi - v) / (hi - lo) * (SPARK_H - 2.0 * pad) } else { SPARK_H / 2.0 };
            format!("{:.1},{:.1}", x0 + i as f64 * step, y)
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// An inline SVG sparkline, labelled for screen readers, the newest value marked.
pub fn sparkline(values: &[f64], label: &str) -> Markup {
    let points = spark_points(values);
    // The newest value as a dot: with a single backup the line alone would draw nothing.
    let last = points.rsplit(' ').next().and_then(|p| p.split_once(',')).map(|(x, y)| (x.to_string(), y.to_string()));
    html! {
        svg class="spark" xmlns="http://www.w3.org/2000/svg" width=(SPARK_W) height=(SPARK_H)
            viewBox={ "0 0 " (SPARK_W) " " (SPARK_H) } role="img" aria-label=(label) {
            title { (label) }
            polyline points=(points);
            @if let Some((x, y)) = last { circle cx=(x) cy=(y) r="2.5"; }
        }
    }
}
