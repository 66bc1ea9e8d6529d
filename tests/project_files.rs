//! The files the Functions host reads agree with the code: routes and `functions/` folders,
//! binding names, host.json's queue settings, and the settings documented in the sample and
//! the README.

use pgvault::handler::FUNCTIONS;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn json(path: &str) -> Value {
    let text = std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn every_function_folder_has_a_route_and_every_route_a_folder() {
    let folders: BTreeSet<String> = std::fs::read_dir(root().join("functions"))
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.path().join("function.json").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let routes: BTreeSet<String> = FUNCTIONS.iter().map(|s| s.to_string()).collect();
    assert_eq!(folders, routes);
}

#[tokio::test]
async fn the_router_answers_every_listed_function() {
    // A route that is listed but not wired would answer 404; a wired one answers 400 to junk.
    let dir = tempfile::tempdir().unwrap();
    let mut map = std::collections::HashMap::new();
    map.insert("PGVAULT_LOCAL_DIR".to_string(), dir.path().display().to_string());
    let settings = pgvault::config::settings::Settings::from_map(map).unwrap();
    let rt = pgvault::runtime::Runtime::build(settings, pgvault::seams::progress::Mode::Off, Default::default())
        .await
        .unwrap();
    struct NoQueue;
    #[async_trait::async_trait]
    impl pgvault::seams::queue::JobQueue for NoQueue {
        async fn ensure(&self, _: &str) -> pgvault::domain::error::Result<()> {
            unreachable!()
        }
        async fn send(&self, _: &str, _: &str, _: bool) -> pgvault::domain::error::Result<()> {
            unreachable!()
        }
        async fn send_delayed(&self, _: &str, _: &str, _: u32) -> pgvault::domain::error::Result<()> {
            unreachable!()
        }
        async fn receive(
            &self,
            _: &str,
            _: u8,
            _: u32,
        ) -> pgvault::domain::error::Result<Vec<pgvault::seams::queue::Received>> {
            unreachable!()
        }
        async fn peek(&self, _: &str, _: u8) -> pgvault::domain::error::Result<Vec<String>> {
            unreachable!()
        }
        async fn delete(&self, _: &str, _: &str, _: &str) -> pgvault::domain::error::Result<()> {
            unreachable!()
        }
        async fn release(&self, _: &str, _: &str, _: &str, _: u32) -> pgvault::domain::error::Result<()> {
            unreachable!()
        }
    }
    let state = pgvault::handler::AppState { ctx: rt.ctx, queue: std::sync::Arc::new(NoQueue), max_dequeue_count: 3 };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, pgvault::handler::app(state)).await });
    let client = reqwest::Client::new();
    let root = client.get(format!("http://{addr}/")).send().await.unwrap();
    assert_eq!(root.status(), 200);
    for f in FUNCTIONS {
        let r = client.post(format!("http://{addr}/{f}")).body("not json").send().await.unwrap();
        assert_eq!(r.status(), 400, "{f}");
        let body: Value = r.json().await.unwrap();
        assert!(body["ReturnValue"]["error"].as_str().unwrap().contains("not a Functions host payload"), "{body}");
    }
    let r = client.post(format!("http://{addr}/no-such-function")).body("{}").send().await.unwrap();
    assert_eq!(r.status(), 404);
}

#[test]
fn function_bindings_match_the_handlers() {
    let worker = json("functions/backup-worker/function.json");
    let b = &worker["bindings"][0];
    assert_eq!(b["type"], "queueTrigger");
    assert_eq!(b["name"], pgvault::handler::backup_worker::BINDING);
    assert_eq!(b["queueName"], pgvault::domain::jobs::BACKUP_JOBS_QUEUE);
    assert_eq!(b["connection"], "JobsQueue", "identity-based connection prefix of JobsQueue__queueServiceUri");
    for (folder, binding, queue) in [
        (
            "restore-requests",
            pgvault::handler::restore_requests::BINDING,
            pgvault::features::restore::RESTORE_REQUESTS_QUEUE,
        ),
        ("restore-worker", pgvault::handler::restore_worker::BINDING, pgvault::features::restore::RESTORE_TASKS_QUEUE),
        ("backup-parts", pgvault::handler::backup_parts::BINDING, pgvault::domain::fanout::BACKUP_PARTS_QUEUE),
    ] {
        let f = json(&format!("functions/{folder}/function.json"));
        let b = &f["bindings"][0];
        assert_eq!(b["type"], "queueTrigger", "{folder}");
        assert_eq!(b["direction"], "in", "{folder}");
        assert_eq!(b["name"], binding, "{folder}");
        assert_eq!(b["queueName"], queue, "{folder}");
        assert_eq!(b["connection"], "JobsQueue", "{folder}");
        assert!(pgvault::runtime::QUEUES.contains(&queue), "`pgvault init` creates {queue}");
    }
    let sched = json("functions/backup-scheduler/function.json");
    let b = &sched["bindings"][0];
    assert_eq!(b["type"], "timerTrigger");
    assert_eq!(b["name"], "timer");
    assert_eq!(b["schedule"], "%PGVAULT_BACKUP_SCHEDULE%");
    let rot = json("functions/sas-rotator/function.json");
    let b = &rot["bindings"][0];
    assert_eq!(b["type"], "timerTrigger");
    assert_eq!(b["direction"], "in");
    assert_eq!(b["name"], "timer");
    assert_eq!(b["schedule"], "%PGVAULT_SAS_ROTATOR_SCHEDULE%");
}

#[test]
fn host_json_is_deliberate() {
    let host = json("host.json");
    let q = &host["extensions"]["queues"];
    assert_eq!(q["batchSize"], 1, "one dump per instance");
    assert_eq!(q["newBatchThreshold"], 0);
    assert_eq!(q["maxDequeueCount"], pgvault::cli::MAX_DEQUEUE_COUNT);
    assert_eq!(q["messageEncoding"], "none", "pgvault sends JSON text verbatim");
    assert!(host["functionTimeout"].is_string());
    let exe = &host["customHandler"]["description"];
    assert_eq!(exe["defaultExecutablePath"], "pgvault");
    assert_eq!(exe["arguments"][0], "serve");
}

#[test]
fn sample_settings_parse_and_list_every_setting() {
    use pgvault::config::settings::{ALL, find};
    let sample = json("local.settings.sample.json");
    let values = sample["Values"].as_object().unwrap();
    for s in ALL {
        assert!(values.contains_key(s.name), "local.settings.sample.json lacks {}", s.name);
    }
    // Nothing dead: every pgvault setting of the sample is one the code reads.
    for name in values.keys().filter(|k| k.starts_with("PGVAULT_")) {
        assert!(find(name).is_some(), "local.settings.sample.json sets {name}, which settings::ALL does not define");
    }
    // Where the sample sets a setting that has a default, it shows that default, unless it
    // deliberately sets another value.
    const NOT_THE_DEFAULT: &[(&str, &str)] = &[("PGVAULT_STORAGE", "the sample is a deployment to Azure")];
    for s in ALL {
        let v = values[s.name].as_str().unwrap().trim();
        if let Some(default) = s.default_value()
            && !v.is_empty()
            && !NOT_THE_DEFAULT.iter().any(|(n, _)| *n == s.name)
        {
            assert_eq!(v, default, "local.settings.sample.json: {} is not the table's default", s.name);
        }
    }
    let map = values.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string())).collect();
    let s = pgvault::config::settings::Settings::from_map(map).unwrap();
    assert_eq!(s.inventory.len(), 1);
    assert_eq!(s.handler_port, Some(7071));
    assert_eq!(s.pgbackrest_targets.len(), 1);
}

/// The README's settings table is `settings::markdown_table()`, between the markers
/// `<!-- settings -->` and `<!-- /settings -->`: every setting, its doc line, default and range
/// as the table defines them. `PGVAULT_WRITE_README=1` rewrites the section.
#[test]
fn readme_settings_table_is_rendered_from_the_table() {
    const START: &str = "<!-- settings -->\n";
    const END: &str = "<!-- /settings -->";
    let path = root().join("README.md");
    let readme = std::fs::read_to_string(&path).unwrap();
    let start = readme.find(START).expect("README.md has a <!-- settings --> marker") + START.len();
    let end = start + readme[start..].find(END).expect("README.md closes the settings table");
    let want = pgvault::config::settings::markdown_table();
    if readme[start..end] == want {
        return;
    }
    if std::env::var_os("PGVAULT_WRITE_README").is_some() {
        std::fs::write(&path, format!("{}{want}{}", &readme[..start], &readme[end..])).unwrap();
        return;
    }
    panic!(
        "README's settings table is not settings::ALL's rendering; run \
         `PGVAULT_WRITE_README=1 cargo test --test project_files readme` or put this between the markers:\n{want}"
    );
}
