//! The status page in a real headless browser (Debian's `chromium`, installed by
//! `scripts/setup`), on the local stack: PostgreSQL, Azurite over HTTPS with OAuth, the identity
//! endpoint, and `pgvault serve` reached the way the Functions host reaches it (`GET
//! /api/status` turned into an invocation, the `res` binding turned back into the response).
//!
//! The store holds real backups: one fresh (ok), one whose next hourly run is overdue within the
//! margin (late), one three days old (missed), one of a database named
//! `<img src=x onerror=alert(1)>`; a failed job; a drill. The browser's DOM must show the hostile
//! name as text with no element made from it, every section, the right states, the drill's RTO,
//! and no SAS signature anywhere; a screenshot is saved under the test's temp dir
//! (`PGVAULT_STATUS_SCREENSHOT=<file>` keeps a copy).

#[path = "support/app.rs"]
mod app;
mod support;

use app::Stack;
use pgvault::domain::jobs::{BACKUP_JOBS_QUEUE, BackupJob, Trigger};
use pgvault::domain::layout::BackupKind;
use pgvault::seams::queue::JobQueue;
use serde_json::Value;
use std::process::Command;
use support::data::blocking;
use support::httphost::HttpHost;
use time::{Duration, OffsetDateTime};

const HOSTILE: &str = "<img src=x onerror=alert(1)>";

/// Run chromium headless (as root it needs `--no-sandbox`) with its own profile directory.
fn chromium(profile: &std::path::Path, args: &[&str]) -> std::process::Output {
    let out = Command::new("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .output()
        .expect("chromium runs (scripts/setup installs it)");
    assert!(out.status.success(), "chromium failed: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// Each database row of the page: (state, database name as the DOM has it).
fn rows(dom: &str) -> Vec<(String, String)> {
    dom.split("<tr class=\"db\" data-state=\"")
        .skip(1)
        .map(|chunk| {
            let state = chunk.split('"').next().unwrap().to_string();
            let name = chunk.split("<span class=\"database\">").nth(1).unwrap().split("</span>").next().unwrap();
            (state, name.to_string())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_in_a_real_browser_shows_states_and_hostile_names_as_text() {
    let mut stack = Stack::start().await;
    // The server backs up daily at 02:00; `late_db` hourly. A backup more than the margin (5 h)
    // past its due time is missed.
    let inventory = serde_json::json!([{
        "name": "main", "host": stack.pg.host, "port": stack.pg.port, "user": stack.pg.superuser,
        "tls": "disable", "exclude": ["postgres"], "schedule": "0 0 2 * * *",
        "databases": { "late_db": { "schedule": "0 0 * * * *" } },
        "retention": { "daily": 7, "weekly": 4, "min_keep": 1 },
    }]);
    stack.set("PGVAULT_INVENTORY", &inventory.to_string());
    stack.set("PGVAULT_RPO_MARGIN_MINUTES", "300");
    stack.set("PGVAULT_DRILL_SERVER", "main");
    blocking(|| {
        for db in ["app", "late_db", "missed_db", HOSTILE] {
            stack.pg.psql("postgres", &format!("CREATE DATABASE \"{db}\""));
        }
        // (psql's -d would read the hostile name as a connection string: it stays empty.)
        for db in ["app", "late_db", "missed_db"] {
            stack.pg.psql(db, "CREATE TABLE t AS SELECT i, md5(i::text) AS h FROM generate_series(1, 2000) i");
        }
    });
    // Three backups of app, growing, for a trend line.
    for (i, db) in ["app", "app", "app", HOSTILE].into_iter().enumerate() {
        if i > 0 && db == "app" {
            blocking(|| stack.pg.psql("app", "INSERT INTO t SELECT i, md5(i::text) FROM generate_series(1, 20000) i"));
        }
        let out = stack.cli(&["backup", "--server", "main", "--database", db]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    // Backups requested in the past, as the scheduler would have sent them then, and a job for
    // a database that is gone (it fails), all delivered by the host stand-in.
    let served = stack.serve();
    let queue = stack.queue();
    let now = OffsetDateTime::now_utc();
    for (db, ago) in
        [("late_db", Duration::hours(2)), ("missed_db", Duration::days(3)), ("gone_db", Duration::hours(1))]
    {
        let job = BackupJob::new(BackupKind::Database, "main", Some(db), now - ago, Trigger::Timer);
        queue.send(BACKUP_JOBS_QUEUE, &serde_json::to_string(&job).unwrap(), false).await.unwrap();
    }
    let report = stack.drain(&served, BACKUP_JOBS_QUEUE).await;
    assert_eq!(report.succeeded, 3, "the gone database's job is rejected (200), not retried: {report:?}");
    let out = stack.cli(&["drill", "--server", "main"]);
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));

    // The function, the way the host serves it.
    let host = HttpHost::start(&served.url).await;
    let page_url = format!("{}/api/status", host.url);
    let resp = reqwest::get(&page_url).await.unwrap();
    assert_eq!(resp.status(), 200);
    let csp = resp.headers()["content-security-policy"].to_str().unwrap().to_string();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    let served_html = resp.text().await.unwrap();
    assert!(!served_html.contains("sig="), "no SAS on the page");
    let json: Value = reqwest::get(format!("{page_url}?format=json")).await.unwrap().json().await.unwrap();
    let state_of = |v: &Value, db: &str| {
        v["databases"].as_array().unwrap().iter().find(|d| d["database"] == db).unwrap()["protection"]["state"].clone()
    };
    assert_eq!(state_of(&json, "late_db"), "late", "{json}");

    // The real browser.
    let tmp = tempfile::tempdir().unwrap();
    let profile = tmp.path().join("profile");
    let dom = String::from_utf8(
        blocking(|| chromium(&profile, &["--dump-dom", "--virtual-time-budget=2000", &page_url])).stdout,
    )
    .unwrap();
    assert!(dom.contains("pgvault status"), "{dom}");
    // The hostile name is text: escaped in the serialized DOM, and no <img> element exists.
    assert!(dom.contains("&lt;img src=x onerror=alert(1)&gt;"), "{dom}");
    assert!(!dom.contains("<img"), "an element was made from a name: {dom}");
    for section in ["summary", "databases", "trouble", "posture", "pgbackrest", "doctor"] {
        assert!(dom.contains(&format!("<section id=\"{section}\"")), "section {section} missing");
    }
    let rows = rows(&dom);
    let state = |name: &str| rows.iter().find(|(_, n)| n == name).map(|(s, _)| s.as_str());
    assert_eq!(state("app"), Some("ok"), "{rows:?}");
    assert_eq!(state("late_db"), Some("late"), "{rows:?}");
    assert_eq!(state("missed_db"), Some("missed"), "{rows:?}");
    assert_eq!(state("&lt;img src=x onerror=alert(1)&gt;"), Some("ok"), "{rows:?}");
    assert_eq!(state("gone_db"), Some("missed"), "no good backup at all: {rows:?}");
    // Proof, trouble, trend, retention, posture.
    assert!(dom.contains("drill passed") && dom.contains("RTO "), "the drill shows");
    let trouble = dom.split("<section id=\"trouble\"").nth(1).unwrap().split("</section>").next().unwrap();
    assert!(trouble.contains("main/gone_db") && trouble.contains("failed-job"), "{trouble}");
    assert!(dom.contains("<svg class=\"spark\""), "sparklines");
    assert!(dom.contains("GFS: "), "retention");
    assert!(dom.contains("Minimum") || dom.contains("Adequate") || dom.contains("Maximum"), "a rating");
    assert!(dom.contains("unknown ("), "what cannot be known says why");
    assert!(!dom.contains("sig="), "no SAS signature anywhere");

    let shot = tmp.path().join("status.png");
    blocking(|| {
        chromium(
            &profile,
            &[
                "--window-size=1500,1650",
                &format!("--screenshot={}", shot.display()),
                "--virtual-time-budget=2000",
                &page_url,
            ],
        )
    });
    let png = std::fs::read(&shot).expect("the screenshot");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000, "a real screenshot ({} bytes)", png.len());
    // The temp dir goes with the test; PGVAULT_STATUS_SCREENSHOT=<file> keeps a copy (the
    // README's docs/status.png is made so).
    if let Some(keep) = std::env::var_os("PGVAULT_STATUS_SCREENSHOT") {
        std::fs::copy(&shot, &keep).unwrap();
        eprintln!("screenshot kept as {}", std::path::Path::new(&keep).display());
    }

    // The terminal: no colour into a pipe, the same states; --json; --html writes the page.
    let out = stack.cli(&["status"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(!text.contains('\u{1b}'), "no colour into a pipe: {text}");
    assert!(text.contains(&format!("main/{HOSTILE}")) && text.contains("main/late_db  late"), "{text}");
    let out = stack.cli(&["status", "--json"]);
    let cli_json: Value = serde_json::from_slice(&out.stdout).unwrap();
    for db in ["app", "late_db", "missed_db"] {
        assert_eq!(state_of(&cli_json, db), state_of(&json, db), "{db}");
    }
    let file = tmp.path().join("page.html");
    let out = stack.cli(&["status", "--html", file.to_str().unwrap()]);
    assert!(out.status.success());
    let written = std::fs::read_to_string(&file).unwrap();
    assert!(written.contains("&lt;img src=x onerror=alert(1)&gt;") && !written.contains("<img"));
}
