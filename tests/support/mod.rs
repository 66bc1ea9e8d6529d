//! Shared integration-test kit: a test CA, Azurite over HTTPS with OAuth, an App Service
//! managed-identity token server, a Key Vault (secrets) server, and throwaway PostgreSQL
//! clusters.
//!
//! Use from an integration test file with `mod support;`.
#![allow(dead_code, unused_imports)]

pub mod arm;
pub mod azurite;
pub mod certs;
pub mod data;
pub mod front;
pub mod httphost;
pub mod identity;
pub mod keyvault;
pub mod pg;
pub mod server;
pub mod webhook;

pub use azurite::Azurite;
pub use certs::TestCa;
pub use identity::{IdentityServer, mint_jwt, test_credential};
pub use keyvault::KeyVault;
pub use pg::{Cluster, ClusterOptions, newer_bin_dir};

use std::io;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

/// The repository root (where `Cargo.toml`, `package.json` and `node_modules/` live).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Whether this process runs with effective uid 0 (read from `/proc/self/status`, no unsafe).
pub fn is_root() -> bool {
    static ROOT: OnceLock<bool> = OnceLock::new();
    *ROOT.get_or_init(|| {
        let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
        let uid_line = status.lines().find(|l| l.starts_with("Uid:")).expect("Uid: line in /proc/self/status");
        // "Uid:\treal\teffective\tsaved\tfs"
        let euid = uid_line.split_whitespace().nth(2).expect("effective uid in /proc/self/status");
        euid == "0"
    })
}

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

/// Spawn a long-running child that the kernel kills (SIGKILL) when this test process dies,
/// even if it dies without running destructors (abort, SIGKILL, harness timeout).
///
/// `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits, so every such child
/// is spawned from one dedicated thread that lives as long as the process. The parent-death
/// signal is set through `setpriv --pdeathsig KILL` (util-linux), which then execs `cmd`, so the
/// returned `Child`'s pid is that of the real program. Program, args, env and current dir are
/// taken from `cmd`; stdin is null and stdout/stderr are piped (drain them).
pub fn spawn_tied(cmd: Command) -> io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let tx = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("support-spawner".into())
            .spawn(move || {
                for (cmd, reply) in rx {
                    let _ = reply.send(spawn_with_pdeathsig(cmd));
                }
            })
            .expect("spawn support-spawner thread");
        Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    tx.lock().unwrap_or_else(|e| e.into_inner()).send((cmd, reply_tx)).expect("support-spawner thread is gone");
    reply_rx.recv().expect("support-spawner thread dropped the request")
}

fn spawn_with_pdeathsig(cmd: Command) -> io::Result<Child> {
    let mut wrapped = Command::new("setpriv");
    wrapped.arg("--pdeathsig").arg("KILL").arg("--");
    wrapped.arg(cmd.get_program()).args(cmd.get_args());
    if let Some(dir) = cmd.get_current_dir() {
        wrapped.current_dir(dir);
    }
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => wrapped.env(k, v),
            None => wrapped.env_remove(k),
        };
    }
    // Stdio settings cannot be read back from a Command: tied children always get a null
    // stdin and piped stdout/stderr, which the caller must drain.
    wrapped
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    wrapped.spawn()
}

/// Keep only the last `max` lines pushed (for error messages from child output).
#[derive(Debug, Default)]
pub struct LogTail {
    lines: Mutex<std::collections::VecDeque<String>>,
}

impl LogTail {
    pub fn push(&self, line: String) {
        let mut lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        if lines.len() >= 200 {
            lines.pop_front();
        }
        lines.push_back(line);
    }

    pub fn text(&self) -> String {
        let lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        lines.iter().map(|l| format!("{l}\n")).collect()
    }
}
