//! Azurite (Blob + Queue, and Table which nobody uses) over HTTPS with `--oauth basic`.
//!
//! Started from the pinned `node_modules/azurite` at the repository root (`npm ci` first).
//! Ports are chosen by Azurite itself (`--blobPort 0` etc.) and read back from its
//! "successfully listening at" lines, so there is no port race between parallel tests.

use super::{LogTail, TestCa, repo_root, spawn_tied};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tempfile::TempDir;

const START_DEADLINE: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub struct Azurite {
    /// `https://127.0.0.1:<port>/devstoreaccount1`, no trailing slash.
    pub blob_endpoint: String,
    /// `https://127.0.0.1:<port>/devstoreaccount1`, no trailing slash.
    pub queue_endpoint: String,
    pub blob_port: u16,
    pub queue_port: u16,
    child: Child,
    log: Arc<LogTail>,
    dir: TempDir,
}

/// Path of Azurite's entry point inside the pinned npm install.
pub fn azurite_js() -> PathBuf {
    repo_root().join("node_modules/azurite/dist/src/azurite.js")
}

impl Azurite {
    /// Start Azurite with `ca`'s default leaf certificate and wait until both the blob and the
    /// queue endpoint answer over HTTPS (trusting only `ca`).
    pub async fn start(ca: &TestCa) -> Azurite {
        let js = azurite_js();
        assert!(js.exists(), "{} is missing: run `npm ci` in {}", js.display(), repo_root().display());
        let dir =
            tempfile::Builder::new().prefix("pgvault-azurite-").tempdir_in("/tmp").expect("create Azurite tempdir");

        let mut cmd = Command::new("node");
        cmd.arg(&js)
            .args(["--blobHost", "127.0.0.1", "--blobPort", "0"])
            .args(["--queueHost", "127.0.0.1", "--queuePort", "0"])
            .args(["--tableHost", "127.0.0.1", "--tablePort", "0"])
            .arg("--cert")
            .arg(ca.cert_path())
            .arg("--key")
            .arg(ca.key_path())
            .args(["--oauth", "basic"])
            .arg("--disableTelemetry")
            .arg("--skipApiVersionCheck")
            .arg("--silent")
            .arg("--location")
            .arg(dir.path())
            .current_dir(dir.path())
            .env_remove("AZURITE_DB") // never an external metadata DB
            .env_remove("AZURITE_ACCOUNTS"); // default devstoreaccount1 only
        let mut child = spawn_tied(cmd).expect("spawn node (is Node.js installed?)");

        // Drain stdout and stderr for the whole life of the child; report ports found.
        let log = Arc::new(LogTail::default());
        let (port_tx, port_rx) = mpsc::channel::<(String, u16)>();
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if let Some(found) = parse_listening(&line) {
                        let _ = port_tx.send(found);
                    }
                    log.push(line);
                }
            });
        }
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    log.push(format!("stderr: {line}"));
                }
            });
        }

        let mut az = Azurite {
            blob_endpoint: String::new(),
            queue_endpoint: String::new(),
            blob_port: 0,
            queue_port: 0,
            child,
            log,
            dir,
        };

        let deadline = Instant::now() + START_DEADLINE;
        while az.blob_port == 0 || az.queue_port == 0 {
            if let Some(status) = az.child.try_wait().expect("poll Azurite child") {
                panic!("Azurite exited early with {status}:\n{}", az.log.text());
            }
            assert!(
                Instant::now() < deadline,
                "Azurite did not report its ports within {START_DEADLINE:?}:\n{}",
                az.log.text()
            );
            match port_rx.try_recv() {
                Ok((service, port)) => match service.as_str() {
                    "Blob" => az.blob_port = port,
                    "Queue" => az.queue_port = port,
                    _ => {}
                },
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        az.blob_endpoint = format!("https://127.0.0.1:{}/devstoreaccount1", az.blob_port);
        az.queue_endpoint = format!("https://127.0.0.1:{}/devstoreaccount1", az.queue_port);

        // Readiness: an HTTPS answer (any status; without a token it is 401/403) from both.
        let client = ca.reqwest_client();
        for url in [format!("{}?comp=list", az.blob_endpoint), format!("{}?comp=list", az.queue_endpoint)] {
            loop {
                let attempt = client.get(&url).timeout(Duration::from_secs(5)).send().await;
                let err = match attempt {
                    Ok(_) => break,
                    Err(e) => e,
                };
                if let Some(status) = az.child.try_wait().expect("poll Azurite child") {
                    panic!("Azurite exited with {status}:\n{}", az.log.text());
                }
                assert!(
                    Instant::now() < deadline,
                    "Azurite at {url} not answering HTTPS within {START_DEADLINE:?}: {err:?}\n{}",
                    az.log.text()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        az
    }

    /// Azurite's workspace (`--location`), removed on drop.
    pub fn location(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Azurite's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Last lines Azurite printed (for assertion messages).
    pub fn output(&self) -> String {
        self.log.text()
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // `dir` (the workspace) is removed when the TempDir field drops after this.
    }
}

/// "Azurite Blob service is successfully listening at https://127.0.0.1:43653"
fn parse_listening(line: &str) -> Option<(String, u16)> {
    let rest = line.strip_prefix("Azurite ")?;
    let (service, rest) = rest.split_once(' ')?;
    let (_, url) = rest.split_once("successfully listening at ")?;
    let port = url.trim().rsplit(':').next()?.trim_end_matches('/').parse().ok()?;
    Some((service.to_string(), port))
}
