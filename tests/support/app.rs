#![allow(dead_code)]
//! The whole local stack for end-to-end tests, and the real `pgvault` binary run against it
//! exactly as the Functions host runs it: every Azure credential comes through the identity
//! endpoint, storage is Azurite over HTTPS with OAuth.

use crate::support::{Azurite, Cluster, ClusterOptions, IdentityServer, TestCa, spawn_tied, test_credential};
use pgvault::azure::{AzureBlobStore, AzureQueue, RetrySettings, client_options};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};

pub const CONTAINER: &str = "backups";

pub struct Stack {
    pub ca: TestCa,
    pub azurite: Azurite,
    pub identity: IdentityServer,
    pub pg: Cluster,
    /// Extra settings for the pgvault processes (override the defaults below).
    pub env: Vec<(String, String)>,
}

impl Stack {
    pub async fn start() -> Stack {
        let ca = TestCa::new();
        let azurite = Azurite::start(&ca).await;
        let identity = IdentityServer::start().await;
        let pg = tokio::task::spawn_blocking(Cluster::start).await.expect("cluster thread");
        let stack = Stack { ca, azurite, identity, pg, env: Vec::new() };
        let out = stack.cli(&["init"]);
        assert!(out.status.success(), "pgvault init failed: {}", String::from_utf8_lossy(&out.stderr));
        stack
    }

    /// Like [`Stack::start`], with the cluster built from options that may use the stack's CA
    /// (e.g. its leaf certificate for `ssl`).
    pub async fn start_with(cluster: impl FnOnce(&TestCa) -> ClusterOptions) -> Stack {
        let ca = TestCa::new();
        let azurite = Azurite::start(&ca).await;
        let identity = IdentityServer::start().await;
        let opts = cluster(&ca);
        let pg = tokio::task::spawn_blocking(move || Cluster::start_with(opts)).await.expect("cluster thread");
        let stack = Stack { ca, azurite, identity, pg, env: Vec::new() };
        let out = stack.cli(&["init"]);
        assert!(out.status.success(), "pgvault init failed: {}", String::from_utf8_lossy(&out.stderr));
        stack
    }

    /// The inventory: server "main" is the test cluster.
    pub fn inventory(&self, exclude: &[&str]) -> String {
        serde_json::json!([{
            "name": "main",
            "host": self.pg.host,
            "port": self.pg.port,
            "user": self.pg.superuser,
            "tls": "disable",
            "exclude": exclude,
        }])
        .to_string()
    }

    /// An inventory entry for another cluster (trust auth over TCP, no TLS).
    pub fn server_entry(name: &str, cluster: &Cluster) -> serde_json::Value {
        serde_json::json!({
            "name": name,
            "host": cluster.host,
            "port": cluster.port,
            "user": cluster.superuser,
            "tls": "disable",
        })
    }

    /// The inventory with server "main" (excluding `exclude`) plus more servers.
    pub fn inventory_with(&self, exclude: &[&str], extra: &[(&str, &Cluster)]) -> String {
        let mut servers: Vec<serde_json::Value> = serde_json::from_str(&self.inventory(exclude)).unwrap();
        servers.extend(extra.iter().map(|(name, c)| Stack::server_entry(name, c)));
        serde_json::Value::Array(servers).to_string()
    }

    /// Settings of a pgvault process on this stack.
    pub fn settings(&self) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = vec![
            ("PGVAULT_STORAGE".into(), "azure".into()),
            ("PGVAULT_BLOB_ENDPOINT".into(), self.azurite.blob_endpoint.clone()),
            ("PGVAULT_BACKUP_CONTAINER".into(), CONTAINER.into()),
            ("JobsQueue__queueServiceUri".into(), self.azurite.queue_endpoint.clone()),
            ("PGVAULT_CA_FILE".into(), self.ca.ca_pem_path().display().to_string()),
            ("PGVAULT_INVENTORY".into(), self.inventory(&["postgres"])),
            ("PGVAULT_PG_BIN_DIRS".into(), self.pg.bin_dir.display().to_string()),
            ("PGVAULT_BLOCK_SIZE_MIB".into(), "1".into()),
            ("PGVAULT_LOG_FORMAT".into(), "text".into()),
            ("PGVAULT_LOG".into(), "info".into()),
        ];
        env.extend(self.identity.env());
        for (k, v) in &self.env {
            env.retain(|(ek, _)| ek != k);
            env.push((k.clone(), v.clone()));
        }
        env
    }

    pub fn set(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.into(), value.into()));
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgvault"));
        cmd.args(args).env_clear().env("PATH", std::env::var_os("PATH").unwrap_or_default()).envs(self.settings());
        cmd
    }

    /// Run a CLI command to completion.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.command(args).stdin(Stdio::null()).output().expect("run pgvault")
    }

    /// Start `pgvault serve` on a port of its choosing.
    pub fn serve(&self) -> Served {
        let mut cmd = self.command(&["serve"]);
        cmd.env("FUNCTIONS_CUSTOMHANDLER_PORT", "0");
        Served::start(cmd)
    }

    /// Start `pgvault serve` with extra settings for this process only (fail points, say).
    pub fn serve_with(&self, extra: &[(&str, &str)]) -> Served {
        let mut cmd = self.command(&["serve"]);
        cmd.env("FUNCTIONS_CUSTOMHANDLER_PORT", "0").envs(extra.iter().copied());
        Served::start(cmd)
    }

    /// Post a restore request to `served` (it must be planned) and take its first task off
    /// `restore-tasks`, so the test delivers it as the host would. Returns the task's text.
    pub async fn take_restore_task(&self, served: &Served, id: &str, request: &str) -> String {
        use pgvault::cli::hostsim::{Form, queue_payload};
        use pgvault::seams::queue::JobQueue;
        let payload = queue_payload("restore-requests", "request", request, &format!("rq-{id}"), "p", 1, Form::Host);
        let (status, reply) = served.invoke("restore-requests", &payload).await;
        assert_eq!((status, reply["ReturnValue"]["status"].as_str()), (200, Some("planned")), "{reply}");
        let queue = self.queue();
        let tasks = pgvault::features::restore::RESTORE_TASKS_QUEUE;
        let msg = queue.receive(tasks, 1, 600).await.unwrap().remove(0);
        queue.delete(tasks, &msg.id, &msg.pop_receipt).await.unwrap();
        msg.text
    }

    pub async fn store(&self) -> AzureBlobStore {
        let options = client_options(Some(self.ca.ca_pem_path()), &RetrySettings::fast()).unwrap();
        AzureBlobStore::new(&self.azurite.blob_endpoint, CONTAINER, test_credential(), options).await.unwrap()
    }

    /// Deliver each message text to the function `queue` triggers (the host's and the clean
    /// payload form in turn) and check that each is rejected without a retry (200) and kept on
    /// `<queue>-rejected` with its original text, its queue, and a reason containing `why`.
    pub async fn assert_rejected_and_kept(&self, served: &Served, queue: &str, cases: &[(String, &str)]) {
        use pgvault::cli::hostsim::{Form, queue_payload};
        use pgvault::seams::queue::JobQueue;
        let (function, binding) = function_of(queue);
        for (i, (text, _)) in cases.iter().enumerate() {
            let form = if i % 2 == 0 { Form::Host } else { Form::Clean };
            let payload = queue_payload(function, binding, text, &format!("m{i}"), "pr", 1, form);
            let (status, reply) = served.invoke(function, &payload).await;
            assert_eq!(status, 200, "not retried: {reply}");
            assert_eq!(reply["ReturnValue"]["status"], "rejected", "{text}: {reply}");
        }
        let kept = self.queue().peek(&format!("{queue}-rejected"), 32).await.unwrap();
        assert_eq!(kept.len(), cases.len(), "{kept:?}");
        for (text, why) in cases {
            let record: serde_json::Value = kept
                .iter()
                .map(|k| serde_json::from_str::<serde_json::Value>(k).unwrap())
                .find(|r| r["message"] == *text)
                .unwrap_or_else(|| panic!("{text} was not kept: {kept:?}"));
            assert!(record["reason"].as_str().unwrap().contains(why), "{why}: {record}");
            assert_eq!(record["queue"], queue);
        }
    }

    /// Deliver every message on `queue` to the function it triggers (`backup-jobs`,
    /// `restore-requests` or `restore-tasks`) the way the host does: host payload form, up to 3
    /// deliveries, then poison.
    pub async fn drain(&self, served: &Served, queue: &str) -> pgvault::cli::hostsim::DrainReport {
        let (function, binding) = function_of(queue);
        pgvault::cli::hostsim::drain(
            &self.queue(),
            queue,
            &served.url,
            function,
            binding,
            3,
            pgvault::cli::hostsim::Form::Host,
        )
        .await
        .unwrap()
    }

    pub fn queue(&self) -> AzureQueue {
        let options = client_options(Some(self.ca.ca_pem_path()), &RetrySettings::fast()).unwrap();
        AzureQueue::new(&self.azurite.queue_endpoint, test_credential(), options).unwrap()
    }
}

/// Wait until a fail point armed with `return(hold:<go>)` was reached (its `<go>.reached` file
/// exists); `served` is the held process, whose output a timeout shows.
pub fn wait_held(go: &std::path::Path, served: &Served) {
    let reached = go.with_extension("reached");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !reached.exists() {
        assert!(std::time::Instant::now() < deadline, "fail point never reached:\n{}", served.output());
        std::thread::yield_now();
    }
}

/// Deliver `payload` to `function` of `served` in the background, and wait until the run stands
/// at its fail point held by `go` (see [`wait_held`]). The handle gives the reply once released.
pub fn invoke_until_held(
    served: &Served,
    function: &'static str,
    payload: serde_json::Value,
    go: &std::path::Path,
) -> tokio::task::JoinHandle<pgvault::domain::error::Result<(u16, serde_json::Value)>> {
    let url = served.url.clone();
    let running = tokio::spawn(async move { pgvault::cli::hostsim::invoke(&url, function, &payload).await });
    tokio::task::block_in_place(|| wait_held(go, served));
    running
}

/// The function a queue triggers, and its binding name.
fn function_of(queue: &str) -> (&'static str, &'static str) {
    match queue {
        pgvault::domain::jobs::BACKUP_JOBS_QUEUE => ("backup-worker", "job"),
        pgvault::features::restore::RESTORE_REQUESTS_QUEUE => ("restore-requests", "request"),
        pgvault::features::restore::RESTORE_TASKS_QUEUE => ("restore-worker", "task"),
        pgvault::domain::fanout::BACKUP_PARTS_QUEUE => ("backup-parts", "part"),
        other => panic!("no function is triggered by {other}"),
    }
}

/// A running `pgvault serve`; its output is captured (for log assertions) and it is killed on
/// drop.
pub struct Served {
    pub child: Child,
    pub url: String,
    output: Arc<Mutex<String>>,
}

impl Served {
    fn start(cmd: Command) -> Served {
        let mut child = spawn_tied(cmd).expect("spawn pgvault serve");
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        let output = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let output = output.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if let Some(addr) = line.strip_prefix("pgvault listening on ") {
                        let _ = tx.send(addr.to_string());
                    }
                    output.lock().unwrap().push_str(&format!("{line}\n"));
                }
            });
        }
        {
            let output = output.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    output.lock().unwrap().push_str(&format!("{line}\n"));
                }
            });
        }
        let addr = rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("pgvault serve did not start: {}", output.lock().unwrap()));
        Served { child, url: format!("http://{addr}"), output }
    }

    /// Everything it printed so far.
    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// POST an invocation payload to a function.
    pub async fn invoke(&self, function: &str, payload: &serde_json::Value) -> (u16, serde_json::Value) {
        pgvault::cli::hostsim::invoke(&self.url, function, payload).await.expect("invoke")
    }

    /// Send SIGTERM and wait for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        self.child.wait().expect("wait for pgvault serve")
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
