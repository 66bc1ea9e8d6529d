//! Hostile input, fuzzed: property tests (proptest) for every parser of outside input.
//!
//! Properties, for every target: no panic; no hang (each case runs on a thread of its own and
//! must finish within [`CASE_LIMIT`]); bounded memory (the test binary's allocator refuses to
//! hold more than [`MEMORY_LIMIT`] at once, which aborts the run); and, where a value can be
//! written back, parse → serialise → parse gives the same value.
//!
//! Inputs are arbitrary text, arbitrary JSON, and valid samples mutated byte by byte (flips,
//! cuts, insertions), so the parsers are driven past their first check.
//!
//! `cargo test --test hostile_input` runs [`DEFAULT_CASES`] cases per target (CI);
//! `scripts/fuzz` runs a long campaign with `PROPTEST_CASES` set. A failing case is written to
//! `proptest-regressions/hostile_input.txt` and replayed first on every later run; commit it.

use pgvault::domain::connstr;
use pgvault::domain::inventory::TlsMode;
use pgvault::domain::jobs::{BackupJob, Trigger};
use pgvault::domain::layout::BackupKind;
use pgvault::domain::manifest::Manifest;
use pgvault::features::restore::{RestoreRequest, RestoreTask, split_statements};
use pgvault::handler;
use pgvault::monitor::records::{JobKind, JobRecord};
use proptest::prelude::*;
use serde_json::{Value, json};
use std::alloc::System;
use std::time::{Duration, Instant};

/// The most the whole test binary may hold at once. A parser that tried to allocate without
/// bound on a small input would hit it and abort the run.
const MEMORY_LIMIT: usize = 512 << 20;

#[global_allocator]
static ALLOCATOR: cap::Cap<System> = cap::Cap::new(System, MEMORY_LIMIT);

/// The longest one case may take (the slowest parser here needs microseconds; the bound is
/// generous for a loaded 2-core machine).
const CASE_LIMIT: Duration = Duration::from_secs(5);

/// Cases per target when `PROPTEST_CASES` is not set.
const DEFAULT_CASES: u32 = 256;

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_CASES);
    ProptestConfig { cases, max_shrink_iters: 2048, ..ProptestConfig::default() }
}

/// Run `f` on a thread of its own and fail the case if it does not finish within
/// [`CASE_LIMIT`] (a hang), or panics.
fn bounded<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    let started = Instant::now();
    std::thread::spawn(move || {
        let _ = tx.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
    });
    match rx.recv_timeout(CASE_LIMIT) {
        Ok(Ok(v)) => v,
        Ok(Err(panic)) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("{what} panicked: {msg}")
        }
        Err(_) => panic!("{what} did not finish within {:?} (started {:?} ago)", CASE_LIMIT, started.elapsed()),
    }
}

// ---- input strategies ------------------------------------------------------------------------

/// Arbitrary JSON, a few levels deep, with keys the parsers know mixed in.
fn json_value() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        Just("version".to_string()),
        Just("kind".to_string()),
        Just("server".to_string()),
        Just("database".to_string()),
        Just("job_id".to_string()),
        Just("request_id".to_string()),
        Just("Data".to_string()),
        Just("Metadata".to_string()),
        Just("format".to_string()),
        Just("name".to_string()),
        "[a-zA-Z_]{0,12}",
        any::<String>(),
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map(Value::Number).unwrap_or(Value::Null)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<String>().prop_map(Value::String),
        Just(json!(1)),
        Just(json!("database")),
    ];
    leaf.prop_recursive(4, 48, 8, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::vec((key.clone(), inner), 0..8).prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// One edit of a byte string.
#[derive(Debug, Clone)]
enum Edit {
    Flip(usize, u8),
    Cut(usize),
    Insert(usize, Vec<u8>),
    Remove(usize, usize),
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    let edit = prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Flip(i, b)),
        any::<usize>().prop_map(Edit::Cut),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..16)).prop_map(|(i, b)| Edit::Insert(i, b)),
        (any::<usize>(), 1usize..32).prop_map(|(i, n)| Edit::Remove(i, n)),
        (
            any::<usize>(),
            prop::sample::select(vec![
                &b"\""[..],
                b"\\",
                b"{",
                b"}",
                b"[",
                b"]",
                b",",
                b":",
                b"null",
                b"\\u0000",
                b"\n",
                b"="
            ])
        )
            .prop_map(|(i, t)| Edit::Insert(i, t.to_vec())),
    ];
    prop::collection::vec(edit, 1..6)
}

fn apply(sample: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut b = sample.to_vec();
    for e in edits {
        let at = |i: usize, len: usize| if len == 0 { 0 } else { i % (len + 1) };
        match e {
            Edit::Flip(i, x) if !b.is_empty() => {
                let n = b.len();
                b[i % n] ^= x | 1;
            }
            Edit::Flip(..) => {}
            Edit::Cut(i) => b.truncate(at(*i, b.len())),
            Edit::Insert(i, bytes) => {
                let p = at(*i, b.len());
                b.splice(p..p, bytes.iter().copied());
            }
            Edit::Remove(i, n) => {
                let p = at(*i, b.len());
                let end = (p + n).min(b.len());
                b.drain(p..end);
            }
        }
    }
    b
}

/// Arbitrary text, arbitrary JSON text, or a mutation of `sample`.
fn hostile(sample: String) -> impl Strategy<Value = String> {
    let bytes = sample.into_bytes();
    prop_oneof![
        any::<String>(),
        json_value().prop_map(|v| v.to_string()),
        edits().prop_map(move |e| String::from_utf8_lossy(&apply(&bytes, &e)).into_owned()),
    ]
}

// ---- valid samples ---------------------------------------------------------------------------

fn now() -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(1_795_222_800).unwrap()
}

fn sample_job() -> String {
    BackupJob::new(BackupKind::Database, "prod", Some("app"), now(), Trigger::Timer).to_json()
}

const SAMPLE_REQUEST: &str = r#"{"version":1,"request_id":"inc-42-app","requested_by":"alice (INC-42)",
 "source":{"server":"prod","database":"app","backup":{"latest_before":"2026-11-21T09:00:00Z"}},
 "target":{"mode":"create","server":"staging","database":"app_copy"},
 "options":{"no_owner":true,"globals":true,"jobs":4}}"#;

const SAMPLE_MANIFEST: &str = r#"{"format":"pgvault-backup-manifest","format_version":1,"pgvault_version":"0.1.0",
 "id":"prod/app/20261121T020000Z-j1","kind":"database","job_id":"j1","server":"prod","database":"app",
 "server_version":"15.18","server_version_num":150018,
 "tool":{"name":"pg_dump","version":"pg_dump (PostgreSQL) 15.18","major":15,"args":["--format=custom"]},
 "archive_format":"custom","compression":{"algorithm":"zstd","level":3},
 "data_blob":"prod/app/20261121T020000Z-j1.1a2b3c4d.dump.zst","raw_bytes":123,"stored_bytes":45,
 "sha256":"00","blocks":[{"size":45,"sha256":"00"}],
 "requested_at":"2026-11-21T02:00:00Z","started_at":"2026-11-21T02:00:01Z","finished_at":"2026-11-21T02:00:09Z",
 "row_counts":{"method":"exact","tables":[{"schema":"public","table":"t","rows":42}]},
 "database_properties":{"encoding":"UTF8","locale_provider":"libc","collate":"C","ctype":"C","owner":"app_owner",
   "acl":[{"grantee":"app_reader","grantor":"app_owner","privilege":"CONNECT","grantable":false}],
   "connection_limit":-1,"tablespace":"pg_default",
   "settings":[{"name":"search_path","value":"app, public"},{"role":"app_reader","name":"work_mem","value":"8MB"}],
   "comment":"the app"},
 "restore_hint":"zstd -d < x | pg_restore"}"#;

const SAMPLE_INVENTORY: &str = r#"[{"name":"prod","host":"db.example.com","port":5432,"user":"backup",
 "tls":"verify-full","credentials":{"key_vault":{"vault":"https://kv.vault.azure.net","secret":"prod-login"}},
 "exclude":["scratch"],"schedule":"0 0 2 * * *","retention":{"daily":7,"weekly":4}},
 {"name":"dev","host":"/var/run/postgresql","user":"postgres","tls":"disable","include":["app"]}]"#;

const SAMPLE_TARGETS: &str = r#"[{"name":"vm1","vm_resource_id":"/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/pg1",
 "blob_endpoint":"https://acct.blob.core.windows.net","container":"pgbackrest","repo":1,"delivery":"pull","vault":"my-vault",
 "lifetime":"2d","renew_before":"1d","alarm_window":"12h","stanzas":["main"],"mode":"0640"}]"#;

const SAMPLE_BACKUP_INFO: &str = "[backrest]\nbackrest-format=5\nbackrest-version=\"2.45\"\n\n[backup:current]\n\
20261121-010000F={\"backrest-format\":5,\"backup-timestamp-start\":1795222800,\"backup-timestamp-stop\":1795222860,\"backup-type\":\"full\"}\n\
20261121-010000F_20261121-020000I={\"backrest-format\":5,\"backup-timestamp-start\":1795226400,\"backup-timestamp-stop\":1795226420,\"backup-type\":\"incr\"}\n\n[db]\ndb-id=1\n";

const SAMPLE_GLOBALS: &str = "--\n-- PostgreSQL database cluster dump\n--\n\\restrict abc\nSET default_transaction_read_only = off;\n\
CREATE ROLE app_owner;\nALTER ROLE app_owner WITH NOSUPERUSER INHERIT NOCREATEROLE NOCREATEDB LOGIN;\n\
COMMENT ON ROLE app_owner IS 'owns; the app''s \"tables\"';\nGRANT app_owner TO app_reader GRANTED BY postgres;\n";

fn sample_record() -> String {
    let mut r = JobRecord::new(JobKind::Backup, "j1", "database \"app\" on server \"prod\"", now());
    r.detail = pgvault::domain::records::Detail::Backup(pgvault::domain::records::BackupDetail {
        backup: Some("prod/app/20261121T020000Z-j1".into()),
        will_retry: Some(false),
        ..Default::default()
    });
    String::from_utf8(r.to_json()).unwrap()
}

fn sample_invocation(job: &str) -> String {
    pgvault::cli::hostsim::queue_payload(
        "backup-worker",
        "job",
        job,
        "id-1",
        "pr",
        2,
        pgvault::cli::hostsim::Form::Host,
    )
    .to_string()
}

// ---- the targets -----------------------------------------------------------------------------

proptest! {
    #![proptest_config(config())]

    /// The host's invocation payloads: queue, timer and HTTP forms.
    #[test]
    fn invocation_payloads(body in hostile(sample_invocation(&sample_job()))) {
        bounded("invocation", move || {
            if let Ok(inv) = handler::parse_invocation(body.as_bytes()) {
                let _ = (inv.text("job"), inv.meta_str("Id"), inv.dequeue_count(), inv.method());
            }
            let _ = handler::queue_message(body.as_bytes(), "job");
            let _ = handler::jobs::http_request(body.as_bytes());
            let _ = handler::unquote(&body);
        });
    }

    /// A message's text survives the host's encoding (both forms) unchanged, whatever it holds,
    /// unless it is itself a JSON string literal (which the handler peels on purpose: a producer
    /// that double-encodes its job is read as meant).
    #[test]
    fn queue_message_text_round_trips(text in prop_oneof![any::<String>(), json_value().prop_map(|v| v.to_string())],
                                      id in "[a-f0-9-]{0,36}", count in 1u32..100) {
        prop_assume!(serde_json::from_str::<String>(text.trim()).is_err());
        for form in [pgvault::cli::hostsim::Form::Host, pgvault::cli::hostsim::Form::Clean] {
            let payload = pgvault::cli::hostsim::queue_payload("backup-worker", "job", &text, &id, "pr", count, form).to_string();
            let msg = handler::queue_message(payload.as_bytes(), "job").map_err(|r| r.logs.join(";")).unwrap();
            // A text that is JSON is handed over as JSON text: compare its meaning.
            match serde_json::from_str::<Value>(&text) {
                Ok(v) => prop_assert_eq!(serde_json::from_str::<Value>(&msg.text).ok(), Some(v)),
                Err(_) => prop_assert_eq!(&msg.text, &text),
            }
            prop_assert_eq!(&msg.id, &id);
            prop_assert_eq!(msg.dequeue_count, count);
        }
    }

    /// Backup jobs: anything parses or is refused; a valid job round-trips.
    #[test]
    fn backup_jobs(text in hostile(sample_job())) {
        bounded("backup job", move || {
            if let Ok(job) = BackupJob::from_json(&text) {
                assert_eq!(BackupJob::from_json(&job.to_json()).unwrap(), job);
            }
        });
    }

    /// Jobs for any server and database names round-trip through their message text.
    #[test]
    fn backup_jobs_round_trip(server in any::<String>(), db in proptest::option::of(any::<String>()), globals in any::<bool>()) {
        let kind = if globals { BackupKind::Globals } else { BackupKind::Database };
        let job = BackupJob::new(kind, &server, db.as_deref(), now(), Trigger::Http);
        match job.validate() {
            Ok(()) => prop_assert_eq!(BackupJob::from_json(&job.to_json()).unwrap(), job),
            Err(e) => prop_assert!(BackupJob::from_json(&job.to_json()).unwrap_err().to_string() == e.to_string()),
        }
    }

    /// Restore requests and tasks.
    #[test]
    fn restore_requests_and_tasks(text in hostile(SAMPLE_REQUEST.to_string())) {
        bounded("restore request", move || {
            if let Ok(r) = RestoreRequest::from_json(&text) {
                assert_eq!(RestoreRequest::from_json(&r.to_json()).unwrap(), r);
            }
            if let Ok(t) = RestoreTask::from_json(&text) {
                assert_eq!(RestoreTask::from_json(&t.to_json()).unwrap(), t);
            }
        });
    }

    /// Manifests.
    #[test]
    fn manifests(text in hostile(SAMPLE_MANIFEST.to_string())) {
        bounded("manifest", move || {
            if let Ok(m) = Manifest::from_json("m", text.as_bytes()) {
                let again = Manifest::from_json("m", &m.to_json()).unwrap();
                assert_eq!(again, m);
                let _ = m.check_consistent();
            }
        });
    }

    /// Job records.
    #[test]
    fn job_records(text in hostile(sample_record())) {
        bounded("job record", move || {
            if let Ok(r) = JobRecord::from_json("r", text.as_bytes()) {
                let again = JobRecord::from_json("r", &r.to_json()).unwrap();
                assert_eq!(again.to_json(), r.to_json());
            }
        });
    }

    /// Connection strings: anything is parsed or refused, and no refusal quotes the input.
    #[test]
    fn connection_strings(text in prop_oneof![
        any::<String>(),
        "(postgres(ql)?://)?[a-zA-Z0-9@:/?&=%;'\\\\ .,-]{0,80}",
        "([A-Za-z ]{1,12}=[^;]{0,12};){1,6}",
        "([a-z_]{1,12} ?= ?('[^']{0,12}'|[^ ]{0,12}) ){1,6}",
    ]) {
        bounded("connection string", move || {
            let _ = connstr::parse(&text);
        });
    }

    /// The three accepted forms of one login mean the same, and a refusal never quotes the
    /// password.
    #[test]
    fn connection_strings_agree_across_forms(
        user in "[a-zA-Z0-9_.@-]{1,20}",
        password in "[ -~]{8,40}",
        host in "[a-z0-9.-]{1,30}",
        port in 1u16..,
        db in "[a-zA-Z0-9_]{1,20}",
        mode in prop::sample::select(vec!["disable", "require", "verify-ca", "verify-full", "prefer"]),
    ) {
        let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>().replace('+', "%20");
        let libpq_quote = |s: &str| format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"));
        let uri = format!("postgresql://{}:{}@{host}:{port}/{db}?sslmode={mode}", enc(&user), enc(&password));
        let kv = format!("host={host} port={port} user={} password={} dbname={db} sslmode={mode}", libpq_quote(&user), libpq_quote(&password));
        let npgsql_mode = match mode { "verify-ca" => "VerifyCA", "verify-full" => "VerifyFull", m => m };
        // Quoted when it must be: a `;` or a quote inside, or spaces at either end.
        let semi_value = if password.contains(';') || password.contains('"') || password.trim() != password {
            format!("\"{}\"", password.replace('"', "\"\""))
        } else {
            password.clone()
        };
        let semi = format!("Host={host};Port={port};Username={user};Password={semi_value};Database={db};SSL Mode={npgsql_mode}");
        let expected_tls = match mode {
            "disable" => TlsMode::Disable,
            "require" | "prefer" => TlsMode::Require,
            "verify-ca" => TlsMode::VerifyCa,
            _ => TlsMode::VerifyFull,
        };
        for text in [uri, kv, semi] {
            match connstr::parse(&text) {
                Ok(c) => {
                    prop_assert_eq!(c.user.as_deref(), Some(user.as_str()), "{}", text);
                    prop_assert_eq!(c.password.as_ref().map(|p| p.expose().to_string()), Some(password.clone()), "{}", text);
                    prop_assert_eq!(c.host.as_deref(), Some(host.as_str()));
                    prop_assert_eq!(c.port, Some(port));
                    prop_assert_eq!(c.dbname.as_deref(), Some(db.as_str()));
                    prop_assert_eq!(c.tls, Some(expected_tls));
                }
                Err(e) => prop_assert!(false, "{text:?} refused: {e}"),
            }
        }
        // Broken forms of it are refused without quoting the password.
        for cut in [password.len() / 2, password.len()] {
            let broken = format!("host={host} password='{}", &password[..cut]);
            if let Err(e) = connstr::parse(&broken) {
                prop_assert!(!e.contains(&password[..cut.max(8).min(password.len())]), "{e}");
            }
        }
    }

    /// The inventory and the pgBackRest target list.
    #[test]
    fn inventory_and_targets(inv in hostile(SAMPLE_INVENTORY.to_string()), targets in hostile(SAMPLE_TARGETS.to_string())) {
        bounded("inventory", move || {
            let _ = pgvault::domain::inventory::parse_inventory(&inv);
            let _ = pgvault::domain::pgbackrest_target::parse_targets(&targets);
        });
    }

    /// NCRONTAB schedules: any text parses or is refused, and the next run of one that parses is
    /// found (or not) in bounded time, after the given time.
    #[test]
    fn ncrontab_schedules(expr in prop_oneof![
        any::<String>(),
        "([0-9*/,LW#?-]{1,8} ){5}[0-9A-Za-z*/,L#?-]{1,8}",
        "(([0-9]{1,2}|\\*)(/[0-9]{1,2})? ){5}([0-7]|\\*|MON|SUN)",
    ], t in 0i64..4_102_444_800) {
        let at = time::OffsetDateTime::from_unix_timestamp(t).unwrap();
        bounded("ncrontab", move || {
            if pgvault::domain::schedule::parse_ncrontab(&expr).is_ok()
                && let Some(next) = pgvault::features::report::next_after(&expr, at)
            {
                assert!(next > at, "{expr:?}: next run {next} is not after {at}");
            }
        });
    }

    /// The globals script splitter: anything splits; statements built with quoted names that
    /// hold `;`, quotes and line breaks come back exactly, whatever comments lie between.
    #[test]
    fn globals_splitter(script in hostile(SAMPLE_GLOBALS.to_string())) {
        bounded("globals splitter", move || {
            let stmts = split_statements(&script);
            assert!(stmts.iter().all(|s| !s.trim().is_empty()));
        });
    }

    #[test]
    fn globals_splitter_keeps_statements(names in prop::collection::vec(any::<String>(), 1..8), comments in any::<bool>()) {
        let stmts: Vec<String> = names
            .iter()
            .map(|n| {
                let n: String = n.chars().filter(|c| *c != '\r' && *c != '\u{0}').collect();
                format!("COMMENT ON ROLE \"{}\" IS '{}';", n.replace('"', "\"\""), n.replace('\'', "''"))
            })
            .collect();
        let sep = if comments { "\n--\n-- next\n--\n\\restrict x\n\n" } else { "\n" };
        let script = stmts.join(sep);
        prop_assume!(stmts.iter().all(|s| s.lines().count() == s.split('\n').count()));
        prop_assert_eq!(split_statements(&script), stmts);
    }

    /// pg_dump custom-format archives, as the backup stream's parser reads them: arbitrary
    /// bytes, bytes after the magic, and mutated archives, fed whole and in pieces of any size.
    /// Whole or split, the answer is the same; a read archive's blocks tile its data exactly.
    #[test]
    fn dump_archives(bytes in prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..512),
        proptest::collection::vec(any::<u8>(), 0..512).prop_map(|b| [&b"PGDMP"[..], &b].concat()),
        edits().prop_map(|e| apply(&sample_archive(), &e)),
    ], split in 1usize..200) {
        bounded("archive", move || {
            use pgvault::domain::archive::{Scanner, scan};
            let whole = scan(&bytes);
            let mut s = Scanner::new();
            let fed = bytes.chunks(split).try_for_each(|piece| s.feed(piece));
            let pieces = fed.and_then(|_| s.finish());
            match (whole, pieces) {
                (Ok(a), Ok(b)) => {
                    assert_eq!(a, b);
                    let mut at = a.toc_length;
                    for block in &a.blocks {
                        assert_eq!(block.offset, at);
                        at += block.length;
                    }
                    assert_eq!(at, bytes.len() as u64);
                }
                (Err(_), Err(_)) => {}
                (a, b) => panic!("whole {a:?}, in pieces {b:?}"),
            }
        });
    }

    /// pgBackRest's `backup.info`.
    #[test]
    fn backup_info(text in hostile(SAMPLE_BACKUP_INFO.to_string())) {
        bounded("backup.info", move || {
            if let Ok(entries) = pgvault::features::pgbackrest::freshness::parse_backup_info(&text) {
                assert!(entries.iter().all(|e| !e.label.is_empty()));
            }
        });
    }
}

/// A small custom-format archive as pg_dump 17 writes one to a pipe (version 1.16, 4-byte ints):
/// a table with three rows (one with an escaped newline) and pg_dump's end-of-data marker, and a
/// large object.
fn sample_archive() -> Vec<u8> {
    fn int(out: &mut Vec<u8>, v: i64) {
        out.push(u8::from(v < 0));
        out.extend_from_slice(&(v.unsigned_abs() as u32).to_le_bytes());
    }
    fn str(out: &mut Vec<u8>, s: Option<&str>) {
        match s {
            None => int(out, -1),
            Some(s) => {
                int(out, s.len() as i64);
                out.extend_from_slice(s.as_bytes());
            }
        }
    }
    let mut o = b"PGDMP".to_vec();
    o.extend_from_slice(&[1, 16, 0, 4, 8, 1, 0]);
    for v in [0, 1, 2, 3, 4, 126, 0] {
        int(&mut o, v);
    }
    for s in ["db", "17.2", "17.2"] {
        str(&mut o, Some(s));
    }
    int(&mut o, 3);
    let entries: [(i64, bool, &str, &str, Option<&str>); 3] = [
        (1, false, "TABLE", "t", None),
        (2, true, "TABLE DATA", "t", Some("COPY public.t (a) FROM stdin;\n")),
        (3, true, "BLOBS", "BLOBS", None),
    ];
    for (id, data, desc, tag, copy) in entries {
        int(&mut o, id);
        int(&mut o, data as i64);
        str(&mut o, Some("0"));
        str(&mut o, Some("0"));
        str(&mut o, Some(tag));
        str(&mut o, Some(desc));
        int(&mut o, 1);
        str(&mut o, Some(""));
        str(&mut o, Some(""));
        str(&mut o, copy);
        str(&mut o, Some("public"));
        str(&mut o, Some(""));
        str(&mut o, None);
        int(&mut o, 0);
        str(&mut o, Some("postgres"));
        str(&mut o, Some("false"));
        str(&mut o, Some("1"));
        str(&mut o, None);
        o.push(if data { 1 } else { 3 });
        o.extend_from_slice(&[0; 8]);
    }
    o.push(1);
    int(&mut o, 2);
    for row in ["1\n", "a\\nb\n", "3\n", "\\.\n\n\n"] {
        int(&mut o, row.len() as i64);
        o.extend_from_slice(row.as_bytes());
    }
    int(&mut o, 0);
    o.push(3);
    int(&mut o, 3);
    int(&mut o, 16384);
    int(&mut o, 4);
    o.extend_from_slice(b"blob");
    int(&mut o, 0);
    int(&mut o, 0);
    o
}

/// The samples themselves parse: the mutations start from valid input.
#[test]
fn samples_are_valid() {
    BackupJob::from_json(&sample_job()).unwrap();
    RestoreRequest::from_json(SAMPLE_REQUEST).unwrap();
    Manifest::from_json("m", SAMPLE_MANIFEST.as_bytes()).unwrap();
    JobRecord::from_json("r", sample_record().as_bytes()).unwrap();
    pgvault::domain::inventory::parse_inventory(SAMPLE_INVENTORY).unwrap();
    pgvault::domain::pgbackrest_target::parse_targets(SAMPLE_TARGETS).unwrap();
    assert_eq!(pgvault::features::pgbackrest::freshness::parse_backup_info(SAMPLE_BACKUP_INFO).unwrap().len(), 2);
    assert_eq!(split_statements(SAMPLE_GLOBALS).len(), 5);
    let archive = pgvault::domain::archive::scan(&sample_archive()).unwrap();
    assert_eq!(archive.blocks.iter().map(|b| (b.rows, b.large_objects)).collect::<Vec<_>>(), [(Some(3), 0), (None, 1)]);
    let job = sample_job();
    let msg = handler::queue_message(sample_invocation(&job).as_bytes(), "job").map_err(|r| r.logs.join(";")).unwrap();
    assert_eq!(msg.text, job);
    assert!(ALLOCATOR.max_allocated() < MEMORY_LIMIT);
}
