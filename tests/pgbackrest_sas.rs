//! SAS rotation for VM-hosted pgBackRest, with the real parts: Debian's pgBackRest, a real
//! PostgreSQL cluster archiving through it, Azurite over HTTPS/OAuth (which validates
//! user-delegation SAS), the test Key Vault, the managed-identity endpoint and a local ARM for
//! the VM Run Command. The real `pgvault` binary runs the rotator and the VM-side sync.

#[path = "support/app.rs"]
mod app;
mod support;

use app::Stack;
use pgvault::azure::arm::ArmRunCommands;
use pgvault::azure::pgbackrest::{AzureSasSigner, AzureTokenVault};
use pgvault::azure::{RetrySettings, client_options};
use pgvault::domain::pgbackrest_target::{Policy, parse_targets};
use pgvault::domain::secret::Secret;
use pgvault::features::pgbackrest::plan::{self, Action, TokenState};
use pgvault::features::pgbackrest::run_command::RunCommands;
use pgvault::features::pgbackrest::{SasSigner, TokenVault, include, token};
use serde_json::{Value, json};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration as StdDuration;
use support::arm::{ArmServer, VmMode};
use support::{IdentityServer, KeyVault, TestCa, is_root, test_credential};
use time::{Duration, OffsetDateTime};

const CONTAINER: &str = "pgbr";
const STANZA: &str = "main";

fn vm_id(name: &str) -> String {
    format!(
        "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/db/providers/Microsoft.Compute/virtualMachines/{name}"
    )
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Log text without terminal colour codes.
fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn ids(flag: &str, name: &str) -> u32 {
    let out = Command::new("id").arg(flag).arg(name).output().expect("run id");
    String::from_utf8_lossy(&out.stdout).trim().parse().expect("numeric id")
}

/// A pgBackRest set-up in a temp dir: config, conf.d (where the include file goes), lock, log
/// and spool paths, all usable by the cluster's OS user.
struct Pgbr {
    dir: tempfile::TempDir,
    conf: PathBuf,
    include_dir: PathBuf,
    include_file: PathBuf,
}

impl Pgbr {
    fn options(&self) -> Vec<String> {
        vec![
            format!("--config={}", self.conf.display()),
            format!("--config-include-path={}", self.include_dir.display()),
        ]
    }

    /// `pgbackrest <options> --stanza=main <args>`, as the cluster's OS user.
    fn run(&self, args: &[&str]) -> Output {
        let mut cmd = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--", "pgbackrest"]);
            c
        } else {
            Command::new("pgbackrest")
        };
        cmd.args(self.options()).arg(format!("--stanza={STANZA}")).args(args).current_dir(self.dir.path());
        cmd.stdin(Stdio::null()).output().expect("run pgbackrest")
    }

    /// The sync/doctor arguments that point pgvault at this set-up.
    fn pgvault_args(&self) -> Vec<String> {
        let mut a: Vec<String> = self.options().into_iter().map(|o| format!("--pgbackrest-option={o}")).collect();
        if !is_root() {
            a.push("--run-as=-".into());
        }
        a
    }
}

fn setup_pgbackrest(stack: &Stack) -> Pgbr {
    let dir = tempfile::Builder::new().prefix("pgvault-pgbr-").tempdir_in("/tmp").unwrap();
    let chown = |p: &Path| {
        if is_root() {
            std::os::unix::fs::chown(p, Some(ids("-u", "postgres")), Some(ids("-g", "postgres"))).unwrap();
        }
    };
    chown(dir.path());
    for d in ["lock", "log", "spool"] {
        std::fs::create_dir(dir.path().join(d)).unwrap();
        chown(&dir.path().join(d));
    }
    let include_dir = dir.path().join("conf.d");
    std::fs::create_dir(&include_dir).unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, stack.ca.ca_pem()).unwrap();
    let conf = dir.path().join("pgbackrest.conf");
    let d = dir.path().display();
    std::fs::write(
        &conf,
        format!(
            "[global]\nrepo1-type=azure\nrepo1-path=/\nrepo1-azure-account=devstoreaccount1\n\
             repo1-azure-container={CONTAINER}\nrepo1-azure-uri-style=path\nrepo1-storage-host=localhost\n\
             repo1-storage-port={}\nrepo1-storage-ca-file={}\nrepo1-retention-full=2\n\
             lock-path={d}/lock\nlog-path={d}/log\nspool-path={d}/spool\nlog-level-file=off\n\
             log-level-console=warn\nstart-fast=y\narchive-timeout=60\n\n\
             [{STANZA}]\npg1-path={}\npg1-port={}\npg1-socket-path={}\npg1-user=postgres\n",
            stack.azurite.blob_port,
            ca.display(),
            stack.pg.data_dir().display(),
            stack.pg.port,
            stack.pg.socket_dir.display(),
        ),
    )
    .unwrap();
    let include_file = include_dir.join("pgvault-sas.conf");
    let p = Pgbr { dir, conf, include_dir, include_file };
    let archive = format!("pgbackrest {} --stanza={STANZA} archive-push %p", p.options().join(" "));
    stack.pg.psql(
        "postgres",
        &format!("ALTER SYSTEM SET archive_mode = on; ALTER SYSTEM SET archive_command = '{archive}';"),
    );
    stack.pg.restart();
    p
}

fn targets(stack: &Stack, kv: &KeyVault, pgbr: &Pgbr, push_file: &Path, broken_endpoint: &str) -> String {
    json!([
        {
            "name": "pg1", "vm_resource_id": vm_id("pg1"), "blob_endpoint": stack.azurite.blob_endpoint,
            "container": CONTAINER, "repo": 1, "vault": kv.url, "stanzas": [STANZA],
            "include_file": pgbr.include_file, "max_backup_age": "1h",
        },
        {
            "name": "pg2", "vm_resource_id": vm_id("pg2"), "location": "westeurope", "delivery": "push",
            "blob_endpoint": stack.azurite.blob_endpoint, "container": CONTAINER, "repo": 2, "vault": kv.url,
            "include_file": push_file,
        },
        {
            "name": "pg3", "vm_resource_id": vm_id("pg3"), "blob_endpoint": broken_endpoint,
            "container": CONTAINER, "vault": kv.url,
        },
        {
            "name": "pg4", "vm_resource_id": vm_id("pg4"), "delivery": "auto",
            "blob_endpoint": stack.azurite.blob_endpoint, "container": CONTAINER, "vault": kv.url,
        },
    ])
    .to_string()
}

async fn vault_reader(ca: &TestCa) -> AzureTokenVault {
    AzureTokenVault::new(test_credential(), client_options(Some(ca.ca_pem_path()), &RetrySettings::fast()).unwrap())
}

fn cli(stack: &Stack, outputs: &mut String, args: &[&str]) -> Output {
    let out = tokio::task::block_in_place(|| stack.cli(args));
    outputs.push_str(&text(&out));
    out
}

fn by_target<'a>(rotation: &'a Value, name: &str) -> &'a Value {
    rotation["rotation"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["target"] == name)
        .unwrap_or_else(|| panic!("{rotation}"))
}

/// Fresh token works; rotation is idempotent inside the margin; push, auto skip and alarm;
/// expired token is caught and fixed; freshness reads the real backup.info; doctor; no token in
/// any output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_sync_backup_expire_and_recover() {
    let mut stack = Stack::start().await;
    let kv = KeyVault::start(&stack.ca);
    let arm = ArmServer::start(&stack.ca);
    arm.add_vm(&vm_id("pg2"), VmMode::Run);
    let pgbr = tokio::task::block_in_place(|| setup_pgbackrest(&stack));
    let push_dir = tempfile::tempdir().unwrap();
    let push_file = push_dir.path().join("pgvault-sas.conf");
    let options = client_options(Some(stack.ca.ca_pem_path()), &RetrySettings::fast()).unwrap();
    let all_targets = targets(&stack, &kv, &pgbr, &push_file, &format!("{}/devstoreaccount1", arm.url));
    let mut outputs = String::new();

    // `pgvault init` creates a target's container (stanza-create below needs it; a
    // container-scoped SAS could not create it); one it cannot reach fails init, named.
    let pg1_only = json!([serde_json::from_str::<Value>(&all_targets).unwrap()[0]]).to_string();
    stack.set("PGVAULT_PGBACKREST_TARGETS", &pg1_only);
    let out = cli(&stack, &mut outputs, &["init"]);
    assert!(out.status.success(), "{}", text(&out));
    let line = format!("pgBackRest container {}/{CONTAINER} (target pg1)", stack.azurite.blob_endpoint);
    assert!(String::from_utf8_lossy(&out.stdout).contains(&line), "{}", text(&out));
    stack.set("PGVAULT_PGBACKREST_TARGETS", &all_targets);
    let out = cli(&stack, &mut outputs, &["init"]);
    assert!(!out.status.success(), "pg3's endpoint refuses: {}", text(&out));
    assert!(text(&out).contains("pgBackRest target \"pg3\""), "{}", text(&out));
    stack.set("PGVAULT_ARM_ENDPOINT", &arm.url);
    let hook = support::webhook::Webhook::start().await;
    stack.set("PGVAULT_ALERT_WEBHOOK", &hook.url);

    // Rotate: pg1 and pg2 get tokens; pg3 cannot (its endpoint refuses), pg4 is auto.
    let out = cli(&stack, &mut outputs, &["pgbackrest-sas", "rotate"]);
    assert!(!out.status.success(), "pg3 fails, so the run reports failure: {}", text(&out));
    let first: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    let pg1 = by_target(&first, "pg1");
    assert_eq!(pg1["action"], "rotate", "{first}");
    assert_eq!(pg1["reason"], "no token yet");
    assert_eq!(pg1["ok"], true, "{first}");
    assert_eq!(by_target(&first, "pg4")["action"], "skip");
    assert_eq!(by_target(&first, "pg2")["delivery_result"]["ok"], true, "{first}");
    let pg3 = by_target(&first, "pg3");
    assert_eq!(pg3["ok"], false);
    assert!(pg3["alarm"].as_str().unwrap().contains("no valid token"), "{pg3}");
    assert!(pg3["error"].as_str().unwrap().contains("user delegation key"), "{pg3}");
    let stderr = strip_ansi(&String::from_utf8_lossy(&out.stderr));
    // pg3 has no valid token: inside its alarm window. One alert of kind pgbackrest, as an
    // error-level alert record and on the webhook; pg1, pg2 and pg4 raise none.
    let alert_lines: Vec<&str> = stderr.lines().filter(|l| l.contains("alert=true")).collect();
    assert_eq!(alert_lines.len(), 1, "{stderr}");
    assert!(
        alert_lines[0].contains("ERROR")
            && alert_lines[0].contains("alert_kind=\"pgbackrest\"")
            && alert_lines[0].contains("subject=pg3")
            && alert_lines[0].contains("pgbackrest sas alarm"),
        "{stderr}"
    );
    let hits = hook.hits();
    assert_eq!(hits.len(), 1, "{hits:?}");
    assert_eq!((hits[0]["kind"].as_str(), hits[0]["subject"].as_str()), (Some("pgbackrest"), Some("pg3")), "{hits:?}");

    // Token shape and secret attributes.
    let vault = vault_reader(&stack.ca).await;
    let stored = vault.current(&kv.url, "pgbackrest-sas-pg1").await.unwrap().expect("pg1's secret");
    let sas = stored.value.clone().unwrap();
    let f = token::fields(sas.expose());
    assert!(f.contains_key("skoid") && f.contains_key("sktid"), "user delegation SAS: {:?}", f.keys());
    assert_eq!((f["sr"].as_str(), f["spr"].as_str(), f["sp"].as_str()), ("c", "https", "racwdl"));
    // Signed by the official builder (azure_storage_sas), whose only service version this is.
    assert_eq!(f["sv"], "2026-04-06", "{:?}", f.keys());
    let exp = stored.state.expires.unwrap();
    let nbf = stored.state.not_before.unwrap();
    let now = OffsetDateTime::now_utc();
    assert!((exp - (now + Duration::hours(12))).abs() < Duration::minutes(2), "12h lifetime: {exp}");
    assert!(nbf < now - Duration::minutes(4) && nbf > now - Duration::minutes(7), "start backdated: {nbf}");
    assert_eq!(token::expiry(sas.expose()), Some(exp));
    assert_eq!(stored.tags["target"], "pg1");
    assert_eq!(stored.tags["expiry"], plan::rfc3339(exp));
    assert!(stored.tags.contains_key("key-version"));
    let key_expiry = OffsetDateTime::parse(&f["ske"], &time::format_description::well_known::Rfc3339).unwrap();
    assert!(key_expiry >= exp, "the token expires within its key's validity");

    // Push delivery wrote pg2's include file through the run command, with the SAS only in
    // protectedParameters.
    let pushed = std::fs::read_to_string(&push_file).unwrap();
    let pg2 = vault.current(&kv.url, "pgbackrest-sas-pg2").await.unwrap().unwrap().value.unwrap();
    assert_eq!(pushed, include::render(2, &pg2).expose());
    let meta = std::fs::metadata(&push_file).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o640);
    if is_root() {
        assert_eq!(meta.gid(), ids("-g", "postgres"));
    }
    // (init's attempt to create pg3's container also reached this server: not a run command.)
    let put =
        arm.requests().into_iter().find(|r| r.method == "PUT" && r.path.contains("/runCommands/")).expect("a PUT");
    let body: Value = serde_json::from_str(&put.body).unwrap();
    assert!(body["properties"]["protectedParameters"].to_string().contains(pg2.expose()));
    assert!(!body["properties"]["parameters"].to_string().contains("sig="));
    assert!(!body["properties"]["source"].to_string().contains("sig="));

    // Within the margin a second run keeps the token (no new version).
    let out = cli(&stack, &mut outputs, &["pgbackrest-sas", "rotate", "--target", "pg1"]);
    assert!(out.status.success(), "{}", text(&out));
    let again: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(by_target(&again, "pg1")["action"], "keep", "{again}");
    let same = vault.current(&kv.url, "pgbackrest-sas-pg1").await.unwrap().unwrap();
    assert_eq!(same.version, stored.version);

    // Sync (the VM side) writes the include file; pgBackRest works with that token.
    let mut sync: Vec<String> =
        ["pgbackrest-sas", "sync", "--vault", &kv.url, "--secret", "pgbackrest-sas-pg1", "--repo", "1"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    sync.extend(["--file".to_string(), pgbr.include_file.display().to_string()]);
    sync.extend(pgbr.pgvault_args());
    let sync_ref: Vec<&str> = sync.iter().map(String::as_str).collect();
    let out = cli(&stack, &mut outputs, &sync_ref);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("written"), "{}", text(&out));
    let out = cli(&stack, &mut outputs, &sync_ref);
    assert!(text(&out).contains("unchanged"), "{}", text(&out));
    let meta = std::fs::metadata(&pgbr.include_file).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o640);
    for args in [&["stanza-create"][..], &["check"][..], &["--type=full", "backup"][..]] {
        let out = tokio::task::block_in_place(|| pgbr.run(args));
        assert!(out.status.success(), "pgbackrest {args:?}: {}", text(&out));
        outputs.push_str(&text(&out));
    }

    // Freshness reads the real backup.info and reports pgBackRest's own label and stop time.
    let info = tokio::task::block_in_place(|| pgbr.run(&["--output=json", "info"]));
    assert!(info.status.success(), "{}", text(&info));
    let info: Value = serde_json::from_slice(&info.stdout).unwrap();
    let last = info[0]["backup"].as_array().unwrap().last().unwrap().clone();
    let out = cli(&stack, &mut outputs, &["pgbackrest-sas", "freshness", "--target", "pg1"]);
    assert!(out.status.success(), "{}", text(&out));
    let fresh: Value = serde_json::from_slice(&out.stdout).unwrap();
    let st = &fresh["stanzas"][0];
    assert_eq!(st["stanza"], STANZA);
    assert_eq!(st["newest_label"], last["label"], "{fresh}");
    assert_eq!(st["full"]["label"], last["label"]);
    let stop = OffsetDateTime::from_unix_timestamp(last["timestamp"]["stop"].as_i64().unwrap()).unwrap();
    assert_eq!(st["newest_time"], plan::rfc3339(stop));
    assert_eq!(st["fresh"], true);
    assert!(st["diff"].is_null() && st["incr"].is_null());

    // Doctor on the VM.
    let mut doctor: Vec<String> =
        ["pgbackrest-sas", "doctor", "--stanza", STANZA, "--file"].iter().map(|s| s.to_string()).collect();
    doctor.push(pgbr.include_file.display().to_string());
    doctor.extend(pgbr.pgvault_args());
    let doctor_ref: Vec<&str> = doctor.iter().map(String::as_str).collect();
    let out = cli(&stack, &mut outputs, &doctor_ref);
    let report = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{}", text(&out));
    assert!(report.contains("pgbackrest version: 2."), "{report}");
    assert!(report.contains("key type in effect: sas"), "{report}");
    assert!(report.contains(&format!("token expiry: {}", plan::rfc3339(exp))), "{report}");
    assert!(report.contains("repository repo1: answers"), "{report}");
    assert!(report.contains("auto: not possible") || report.contains("could switch to `auto`"), "{report}");

    // sync --check with a token pgBackRest cannot use (well formed, valid for hours, but a
    // wrong signature): the sync installs it, pgBackRest's check fails, and pgvault shows
    // pgBackRest's own error (Azurite's 403), not just a pointer to it.
    let sync_check: Vec<String> =
        sync.iter().cloned().chain(["--check".into(), "--stanza".into(), STANZA.into()]).collect();
    let sync_check: Vec<&str> = sync_check.iter().map(String::as_str).collect();
    kv.set_secret("pgbackrest-sas-pg1", &fake_sas(OffsetDateTime::now_utc() + Duration::hours(6), "bad"));
    let out = cli(&stack, &mut outputs, &sync_check);
    assert!(!out.status.success(), "{}", text(&out));
    let said = strip_ansi(&text(&out));
    assert!(said.contains("pgbackrest check of stanza \"main\" failed after the sync; pgBackRest said:"), "{said}");
    assert!(
        said.contains("  | ") && said.contains("ERROR: [") && said.contains("403"),
        "pgBackRest's own error: {said}"
    );
    assert!(said.contains("HINT: the include file holds the newest token"), "{said}");
    assert!(!said.contains("bad+sig") && !said.contains("bad%2Bsig"), "no token in the error: {said}");

    // An expired token: pgBackRest's check fails.
    let signer = AzureSasSigner::new(test_credential(), options.clone());
    let now = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
    let expired = signer
        .container_sas(
            &stack.azurite.blob_endpoint,
            CONTAINER,
            "racwdl",
            now - Duration::minutes(10),
            now - Duration::minutes(1),
        )
        .await
        .unwrap()
        .token;
    kv.set_secret("pgbackrest-sas-pg1", expired.expose());
    kv.set_expires("pgbackrest-sas-pg1", Some(now - Duration::minutes(1)));
    std::fs::write(&pgbr.include_file, include::render(1, &expired).expose()).unwrap();
    let out = tokio::task::block_in_place(|| pgbr.run(&["check"]));
    assert!(!out.status.success(), "check with an expired token must fail: {}", text(&out));
    outputs.push_str(&text(&out));
    // Sync refuses to install the expired token (and says why).
    let out = cli(&stack, &mut outputs, &sync_ref);
    assert!(!out.status.success());
    assert!(text(&out).contains("expired"), "{}", text(&out));
    // Doctor says so too.
    let out = cli(&stack, &mut outputs, &doctor_ref);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("EXPIRED"), "{}", text(&out));
    // The rotator replaces it, sync --check installs it and pgBackRest works again.
    let out = cli(&stack, &mut outputs, &["pgbackrest-sas", "rotate", "--target", "pg1"]);
    assert!(out.status.success(), "{}", text(&out));
    let fixed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let pg1 = by_target(&fixed, "pg1");
    assert_eq!(pg1["action"], "rotate");
    assert!(pg1["reason"].as_str().unwrap().contains("expired"), "{pg1}");
    assert_eq!(pg1["old_expiry"], plan::rfc3339(now - Duration::minutes(1)));
    let out = cli(&stack, &mut outputs, &sync_check);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("check: stanza \"main\" ok"), "{}", text(&out));
    let out = tokio::task::block_in_place(|| pgbr.run(&["--type=incr", "backup"]));
    assert!(out.status.success(), "{}", text(&out));

    // Job records: every rotation, with old and new expiry and the delivery result.
    let store = stack.store().await;
    let records =
        pgvault::monitor::records::list(&store, Some(pgvault::monitor::records::JobKind::PgbackrestSas)).await.unwrap();
    let rotation = |r: &pgvault::monitor::records::JobRecord| r.detail.rotation().cloned().expect("a typed rotation");
    let pg1_records: Vec<_> = records.iter().filter(|r| rotation(r).target == "pg1").collect();
    assert!(pg1_records.len() >= 3, "{records:?}");
    let last = pg1_records
        .iter()
        .map(|r| rotation(r))
        .find(|d| d.reason.as_deref().is_some_and(|s| s.contains("expired")))
        .unwrap();
    assert!(last.new_expiry.is_some() && last.old_expiry.is_some(), "{last:?}");
    assert!(last.delivery_result.is_some(), "{last:?}");
    let pg3_rec = records.iter().find(|r| rotation(r).target == "pg3").unwrap();
    assert_eq!(pg3_rec.status, pgvault::monitor::records::Status::Failed);
    let fresh_records =
        pgvault::monitor::records::list(&store, Some(pgvault::monitor::records::JobKind::PgbackrestFreshness))
            .await
            .unwrap();
    assert!(!fresh_records.is_empty());

    // The sas-rotator function, as the Functions host invokes it: rotation and freshness.
    let served = stack.serve();
    let timer = json!({"Data": {"timer": {"Schedule": {"AdjustForDST": true}, "ScheduleStatus": null, "IsPastDue": false}},
                       "Metadata": {"sys": {"MethodName": "sas-rotator"}}});
    let (status, reply) = served.invoke("sas-rotator", &timer).await;
    assert_eq!(status, 200, "{reply}");
    let value = &reply["ReturnValue"];
    assert_eq!(by_target(value, "pg1")["action"], "keep", "{value}");
    assert_eq!(by_target(value, "pg2")["delivery_result"]["ok"], true, "{value}");
    assert!(by_target(value, "pg3")["alarm"].is_string());
    assert_eq!(value["freshness"][0]["stanzas"][0]["fresh"], true, "{value}");
    outputs.push_str(&served.output());
    drop(served);

    // No token appears in any output (pgvault's or pgBackRest's).
    let newest = vault.current(&kv.url, "pgbackrest-sas-pg1").await.unwrap().unwrap().value.unwrap();
    for s in [&sas, &pg2, &expired, &newest] {
        let sig = token::fields(s.expose())["sig"].clone();
        let encoded: String = url::form_urlencoded::byte_serialize(sig.as_bytes()).collect();
        assert!(!outputs.contains(&sig) && !outputs.contains(&encoded), "a SAS signature leaked into the output");
    }
    drop(pgbr);
}

/// A controlled clock walks the rotator and the VM's sync through several lifetimes, with
/// missed and failed runs; at no instant does the VM hold an invalid token. A policy whose
/// renew-before margin is shorter than the outage shows the checker does find gaps.
#[test]
fn no_gap_in_validity_over_several_lifetimes() {
    fn simulate(policy: &Policy, fail_every: u32, outage: Option<(i64, i64)>) -> (Vec<OffsetDateTime>, usize) {
        let t0 = time::macros::datetime!(2026-11-21 00:00 UTC);
        // The vault: every version ever stored (nothing is ever revoked early).
        let mut versions: Vec<(OffsetDateTime, OffsetDateTime)> = Vec::new();
        let mut vm: Option<(OffsetDateTime, OffsetDateTime)> = None;
        let mut gaps = Vec::new();
        let mut rotations = 0;
        let total: i64 = (policy.lifetime * 5i32).whole_minutes();
        for m in 0..=total {
            let now = t0 + Duration::minutes(m);
            let down = outage.is_some_and(|(a, b)| m >= a && m < b);
            // The timer fires hourly; every `fail_every`-th run fails, and none run in an outage.
            if m % 60 == 0 && !down && (m / 60 + 1) % fail_every as i64 != 0 {
                let cur =
                    versions.last().map(|(s, e)| TokenState { enabled: true, not_before: Some(*s), expires: Some(*e) });
                if let Action::Rotate { start, expiry } = plan::plan(cur.as_ref(), policy, now).action {
                    assert!(start < now && expiry - now == policy.lifetime, "whole minutes here");
                    versions.push((start, expiry));
                    rotations += 1;
                }
            }
            // The VM syncs every 15 minutes (offset by 7), not during an outage.
            if m % 15 == 7
                && !down
                && let Some(v) = versions.last()
            {
                vm = Some(*v);
            }
            let valid = |t: &(OffsetDateTime, OffsetDateTime)| t.0 <= now && now < t.1;
            // pgBackRest may still be using the previous token: it must remain valid too.
            if m > 10 && !vm.as_ref().is_some_and(valid) {
                gaps.push(now);
            }
        }
        (gaps, rotations)
    }
    let policy = Policy::new(Duration::hours(12), None, None).unwrap();
    let (gaps, rotations) = simulate(&policy, 4, None);
    assert!(gaps.is_empty(), "the VM held no valid token at {:?}", gaps.first());
    assert!(rotations >= 9, "5 lifetimes at renew-half rotate about 10 times: {rotations}");
    // A 5-hour outage of the rotator and the VM is ridden out by a 6 h margin...
    let (gaps, _) = simulate(&policy, 1000, Some((13 * 60, 18 * 60)));
    assert!(gaps.is_empty(), "{:?}", gaps.first());
    // ...but not by a 1 h margin: the checker does find the gap.
    let thin = Policy::new(Duration::hours(12), Some(Duration::hours(1)), Some(Duration::minutes(30))).unwrap();
    let (gaps, _) = simulate(&thin, 1000, Some((10 * 60, 13 * 60)));
    assert!(!gaps.is_empty(), "a 3 h outage with a 1 h margin must leave a gap");
}

fn fake_sas(expiry: OffsetDateTime, tag: &str) -> String {
    format!(
        "sv=2025-07-05&sr=c&st=2026-01-01T00%3A00%3A00Z&se={}&sp=racwdl&spr=https&skoid=oid&sktid=tid&sig={tag}%2Bsig%3D",
        token::sas_time(expiry).replace(':', "%3A")
    )
}

/// Sync under faults: killed at every step it leaves the old or the new file, never a partial
/// one; a Key Vault outage, a 403 or a bad token leave the old file and exit with a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_is_atomic_and_fails_safe() {
    let ca = TestCa::new();
    let identity = IdentityServer::start().await;
    let kv = KeyVault::start(&ca);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pgvault-sas.conf");
    let future = OffsetDateTime::now_utc() + Duration::hours(6);
    let old = include::render(1, &Secret::new(fake_sas(future, "old")));
    let vault_url = kv.url.clone();
    let run = |extra_env: &[(&str, &str)]| -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgvault"));
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("PGVAULT_CA_FILE", ca.ca_pem_path())
            .env("PGVAULT_LOG_FORMAT", "text")
            .envs(identity.env())
            .envs(extra_env.iter().copied())
            .args(["pgbackrest-sas", "sync", "--vault", &vault_url, "--secret", "pgbackrest-sas-vm1", "--file"])
            .arg(&file)
            .args(["--owner", "root", "--group", if is_root() { "postgres" } else { "0" }])
            .stdin(Stdio::null());
        tokio::task::block_in_place(|| cmd.output().expect("run pgvault"))
    };
    let mut all_output = String::new();
    for (i, step) in ["created", "half-written", "written", "synced", "owned", "renamed"].iter().enumerate() {
        std::fs::write(&file, old.expose()).unwrap();
        let new_sas = fake_sas(future, &format!("new{i}"));
        let new = include::render(1, &Secret::new(new_sas.clone()));
        kv.set_secret("pgbackrest-sas-vm1", &new_sas);
        let points = format!("sas-sync.{step}=return(kill)");
        let out = run(&[(pgvault::seams::failpoint::SETTING, &points)]);
        all_output.push_str(&text(&out));
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(out.status.signal(), Some(9), "{step}: SIGKILLed at the fail point, {}", text(&out));
        let now = std::fs::read_to_string(&file).unwrap();
        let expected = if *step == "renamed" { &new } else { &old };
        assert_eq!(&now, expected.expose(), "after a kill at {step:?} the file is whole");
        // The next run finishes the job and clears the leftovers.
        let out = run(&[]);
        assert!(out.status.success(), "{}", text(&out));
        assert_eq!(std::fs::read_to_string(&file).unwrap(), new.expose());
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["pgvault-sas.conf"], "no temp file left behind");
        all_output.push_str(&text(&out));
    }
    let good = std::fs::read_to_string(&file).unwrap();

    // A token that is not a container user-delegation SAS is refused.
    kv.set_secret("pgbackrest-sas-vm1", "sv=2025-07-05&sr=b&se=2099-01-01T00%3A00%3A00Z&sp=r&spr=https&skoid=o&sig=x");
    let out = run(&[]);
    assert!(!out.status.success());
    assert!(text(&out).contains("container-scoped"), "{}", text(&out));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), good);

    // 403: access denied, file untouched.
    kv.set_forbidden(true);
    let out = run(&[]);
    assert!(!out.status.success());
    let t = text(&out);
    assert!(t.contains("access denied") && t.contains("left as it was"), "{t}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), good);

    // The vault is gone: a clear error, file untouched.
    let url = vault_url.clone();
    drop(kv);
    let started = std::time::Instant::now();
    let out = run(&[]);
    assert!(!out.status.success());
    let t = text(&out);
    assert!(t.contains(&format!("Key Vault {url}")) && t.contains("left as it was"), "{t}");
    assert!(started.elapsed() < StdDuration::from_secs(60), "sync gives up quickly: {:?}", started.elapsed());
    assert_eq!(std::fs::read_to_string(&file).unwrap(), good);
    all_output.push_str(&t);
    assert!(!all_output.contains("sig=new") && !all_output.contains("%2Bsig"), "no token in any output");
}

/// Push delivery against the ARM test server: success (synchronous and long-running), and each
/// failure answer mapped to a clear, correctly classified error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_through_run_command_and_its_failures() {
    let ca = TestCa::new();
    let arm = ArmServer::start(&ca);
    let options = client_options(Some(ca.ca_pem_path()), &RetrySettings::fast()).unwrap();
    let rc = ArmRunCommands::new(&arm.url, test_credential(), &options)
        .unwrap()
        .with_polling(StdDuration::from_millis(20), StdDuration::from_secs(20));
    let dir = tempfile::tempdir().unwrap();
    let target = |vm: &str, group: &str| {
        let json = json!([{
            "name": vm, "vm_resource_id": vm_id(vm), "location": "westeurope", "delivery": "push",
            "blob_endpoint": "https://acct.blob.core.windows.net", "container": "c", "repo": 2,
            "vault": "my-vault", "include_file": dir.path().join(format!("{vm}.conf")), "group": group,
        }]);
        parse_targets(&json.to_string()).unwrap().remove(0)
    };
    let group = if is_root() { "postgres" } else { "0" };
    let sas = Secret::new(fake_sas(OffsetDateTime::now_utc() + Duration::hours(1), "push"));
    for (vm, mode) in [("sync-vm", VmMode::Run), ("async-vm", VmMode::Async)] {
        arm.add_vm(&vm_id(vm), mode);
        let t = target(vm, group);
        let out = pgvault::features::pgbackrest::push(&rc, &t, &sas).await.unwrap_or_else(|e| panic!("{vm}: {e}"));
        assert!(out.contains("written"), "{out}");
        assert_eq!(std::fs::read_to_string(&t.include_file).unwrap(), include::render(2, &sas).expose());
        assert_eq!(std::fs::metadata(&t.include_file).unwrap().mode() & 0o777, 0o640);
        // Unchanged on a second push.
        let out = pgvault::features::pgbackrest::push(&rc, &t, &sas).await.unwrap();
        assert!(out.contains("unchanged"), "{out}");
    }
    let reqs = arm.requests();
    assert!(reqs.iter().any(|r| r.path.starts_with("/operations/")), "the long-running answer was polled");
    assert!(reqs.iter().any(|r| r.method == "DELETE"), "the run command is deleted afterwards");
    assert!(reqs.iter().all(|r| r.path.contains("api-version=")));

    arm.add_vm(&vm_id("denied-vm"), VmMode::Forbidden);
    let e = pgvault::features::pgbackrest::push(&rc, &target("denied-vm", group), &sas).await.unwrap_err();
    assert!(e.is_permanent());
    let t = e.to_string();
    assert!(t.contains("http 403 AuthorizationFailed") && t.contains("runCommands"), "{t}");

    let e = pgvault::features::pgbackrest::push(&rc, &target("missing-vm", group), &sas).await.unwrap_err();
    assert!(e.is_permanent());
    assert!(e.to_string().contains("http 404 ParentResourceNotFound"), "{e}");

    arm.add_vm(&vm_id("busy-vm"), VmMode::Conflict);
    let e = pgvault::features::pgbackrest::push(&rc, &target("busy-vm", group), &sas).await.unwrap_err();
    assert!(!e.is_permanent(), "409 is retried by the next run: {e}");
    assert!(e.to_string().contains("http 409"), "{e}");

    // The script fails on the VM (no such group): Failed, exit code, file untouched.
    arm.add_vm(&vm_id("bad-vm"), VmMode::Async);
    let bad = target("bad-vm", "no-such-group-pgvault");
    std::fs::write(&bad.include_file, "old\n").unwrap();
    let e = pgvault::features::pgbackrest::push(&rc, &bad, &sas).await.unwrap_err();
    assert!(e.to_string().contains("Failed, exit code Some(1)"), "{e}");
    assert_eq!(std::fs::read_to_string(&bad.include_file).unwrap(), "old\n");
    assert!(!e.to_string().contains("sig=push") && !e.to_string().contains("%2Bsig"), "{e}");

    // A token without ARM's audience is refused with 401 (the credential is the contract).
    #[derive(Debug)]
    struct WrongAudience;
    #[async_trait::async_trait]
    impl azure_core::credentials::TokenCredential for WrongAudience {
        async fn get_token(
            &self,
            _: &[&str],
            _: Option<azure_core::credentials::TokenRequestOptions<'_>>,
        ) -> azure_core::Result<azure_core::credentials::AccessToken> {
            test_credential().get_token(&["https://storage.azure.com/.default"], None).await
        }
    }
    let wrong = ArmRunCommands::new(&arm.url, std::sync::Arc::new(WrongAudience), &options).unwrap();
    let e = pgvault::features::pgbackrest::push(&wrong, &target("sync-vm", group), &sas).await.unwrap_err();
    assert!(e.to_string().contains("http 401"), "{e}");
    let _: &dyn RunCommands = &rc;
    let _: Option<&dyn SasSigner> = None;
}
