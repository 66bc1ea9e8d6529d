//! The one runner of PostgreSQL's client tools (pg_dump, pg_dumpall, pg_restore): how a tool is
//! started, stopped on shutdown, and judged.
//!
//! # Contract
//!
//! [`ToolRun::spawn`] promises:
//! - **Environment**: the child's environment is cleared; it gets `PATH` (the parent's),
//!   `LANG=C.UTF-8` (so messages are in English and the verdict's patterns match), and, with
//!   [`ToolRun::conn`], the connection's variables ([`ConnSpec::tool_env`]). Connection details
//!   and the password reach the tool only there, never through its arguments, and the runner
//!   never logs them or the environment.
//! - **Cancellation**: the child is killed as soon as the token given to `spawn` is cancelled,
//!   whether or not anyone is waiting for it yet, and then reaped; [`Running::wait`] then
//!   returns a transient "cancelled by shutdown" error. A [`Running`] dropped before it was
//!   waited for kills its child too, so an early return never leaves a tool running.
//! - **Streams**: stdin and stdout are each closed (`/dev/null`), a pipe handed over as a
//!   blocking [`std::fs::File`] (for the pipeline's blocking threads), or (stdout) captured
//!   whole. stderr is always read, concurrently, and its last [`STDERR_TAIL`] bytes are kept.
//! - **Verdict**: one rule for every tool ([`verdict`]): the run is ok only if the tool exited 0
//!   *and* no stderr line holds `error:` or `fatal:` (any case). A failure is transient when
//!   the tool was killed by a signal or lost its connection (the patterns in
//!   [`CONNECTION_LOST`]); else it is permanent, with a hint where PostgreSQL's refusal has a
//!   known remedy (a missing role, a membership refusal, a permission denied on a schema or
//!   database). The failure's text is redacted and holds the error lines, or the whole stderr
//!   tail when there is none.
//!
//! What a caller decides itself: the order in which the tool's verdict and the rest of its
//! pipeline are reported (the root cause first), and, for a dump, that every failure is
//! retried (see `features::backup`).

use crate::domain::error::{Error, Result};
use crate::domain::secret::redact;
use crate::seams::pg::{ConnSpec, ToolBinary};
use std::fmt;
use std::process::{ExitStatus, Stdio};
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};

/// How much of a tool's stderr is kept: the last 64 KiB, where its final errors are.
pub const STDERR_TAIL: usize = 64 * 1024;

/// Lowercased stderr text that says the tool lost (or never had) its connection: trying again
/// may succeed.
pub const CONNECTION_LOST: &[&str] =
    &["could not connect", "server closed the connection", "terminating connection", "connection to server"];

/// The tool's stdin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Stdin {
    /// `/dev/null`.
    #[default]
    Null,
    /// A pipe, taken with [`Running::take_stdin`].
    Pipe,
}

/// The tool's stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Stdout {
    /// `/dev/null`.
    #[default]
    Null,
    /// A pipe, taken with [`Running::take_stdout`].
    Pipe,
    /// Read whole, into [`Exit::stdout`].
    Capture,
}

/// One run of a tool, to be spawned.
pub struct ToolRun<'a> {
    tool: &'a ToolBinary,
    args: &'a [String],
    conn: Option<&'a ConnSpec>,
    stdin: Stdin,
    stdout: Stdout,
}

impl<'a> ToolRun<'a> {
    pub fn new(tool: &'a ToolBinary, args: &'a [String]) -> Self {
        Self { tool, args, conn: None, stdin: Stdin::Null, stdout: Stdout::Null }
    }

    /// Connect as `spec` says, through the child's environment only.
    pub fn conn(mut self, spec: &'a ConnSpec) -> Self {
        self.conn = Some(spec);
        self
    }

    pub fn stdin(mut self, stdin: Stdin) -> Self {
        self.stdin = stdin;
        self
    }

    pub fn stdout(mut self, stdout: Stdout) -> Self {
        self.stdout = stdout;
        self
    }

    /// Start the tool; it is killed when `cancel` is cancelled. A tool that cannot be started
    /// is a permanent error naming its path.
    pub fn spawn(self, cancel: &CancellationToken) -> Result<Running> {
        let name = tool_name(self.tool);
        let mut cmd = tokio::process::Command::new(&self.tool.path);
        cmd.args(self.args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("LANG", "C.UTF-8")
            .stdin(match self.stdin {
                Stdin::Null => Stdio::null(),
                Stdin::Pipe => Stdio::piped(),
            })
            .stdout(match self.stdout {
                Stdout::Null => Stdio::null(),
                Stdout::Pipe | Stdout::Capture => Stdio::piped(),
            })
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(spec) = self.conn {
            cmd.envs(spec.tool_env()?);
        }
        let mut child =
            cmd.spawn().map_err(|e| Error::permanent(format!("start {}: {e}", self.tool.path.display())))?;
        let pid = child.id();
        let pipe = |what: &str, fd: std::io::Result<std::os::fd::OwnedFd>| {
            fd.map(std::fs::File::from).map_err(|e| Error::transient(format!("{name} {what}: {e}")))
        };
        // Until the waiter below owns it, an early return drops the child, which kills it.
        let stdin = child.stdin.take().map(|s| pipe("stdin", s.into_owned_fd())).transpose()?;
        let (stdout, captured) = match (self.stdout, child.stdout.take()) {
            (Stdout::Pipe, Some(out)) => (Some(pipe("stdout", out.into_owned_fd())?), None),
            (Stdout::Capture, Some(out)) => (None, Some(tokio::spawn(read_all(out)))),
            _ => (None, None),
        };
        let stderr = tokio::spawn(stderr_tail(child.stderr.take().expect("stderr is piped")));
        // The waiter owns the child: it kills it on shutdown (or when the `Running` is dropped,
        // through the guard) even while nobody awaits `wait`, e.g. while a pipeline is blocked.
        let stop = cancel.child_token();
        let guard = stop.clone().drop_guard();
        let exited = tokio::spawn(async move {
            tokio::select! {
                biased;
                _ = stop.cancelled() => {
                    let _ = child.start_kill();
                    child.wait().await.map(|s| (s, true))
                }
                s = child.wait() => s.map(|s| (s, false)),
            }
        });
        Ok(Running { name, pid, stdin, stdout, exited, stderr, captured, _stop: guard })
    }
}

/// The tool's name for messages: `pg_restore`.
fn tool_name(tool: &ToolBinary) -> String {
    tool.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| tool.path.display().to_string())
}

/// A started tool. Dropping it kills the tool.
pub struct Running {
    name: String,
    pid: Option<u32>,
    stdin: Option<std::fs::File>,
    stdout: Option<std::fs::File>,
    exited: JoinHandle<std::io::Result<(ExitStatus, bool)>>,
    stderr: JoinHandle<String>,
    captured: Option<JoinHandle<Vec<u8>>>,
    _stop: DropGuard,
}

impl Running {
    /// The write end of the tool's stdin ([`Stdin::Pipe`]); dropping it is the end of input.
    pub fn take_stdin(&mut self) -> Option<std::fs::File> {
        self.stdin.take()
    }

    /// The read end of the tool's stdout ([`Stdout::Pipe`]).
    pub fn take_stdout(&mut self) -> Option<std::fs::File> {
        self.stdout.take()
    }

    /// The child's process id, while it runs.
    pub fn id(&self) -> Option<u32> {
        self.pid
    }

    /// Wait until the tool has exited (an untaken stdin is closed first) and its stderr is read.
    /// Fails (transient) only when the shutdown token killed it, or waiting failed; otherwise
    /// the [`Exit`] holds what [`Exit::verdict`] judges.
    pub async fn wait(mut self) -> Result<Exit> {
        drop(self.stdin.take());
        drop(self.stdout.take());
        let name = &self.name;
        let waited = (&mut self.exited).await.map_err(std::io::Error::other).and_then(|r| r);
        let stderr = (&mut self.stderr).await.unwrap_or_default();
        let stdout = match self.captured.take() {
            Some(task) => task.await.unwrap_or_default(),
            None => Vec::new(),
        };
        match waited {
            Err(e) => Err(Error::transient(format!("wait for {name}: {e}"))),
            Ok((_, true)) => Err(Error::transient(format!("{name} cancelled by shutdown"))),
            Ok((status, false)) => Ok(Exit { tool: self.name, status, stderr, stdout }),
        }
    }
}

/// How a tool ended.
#[derive(Debug)]
pub struct Exit {
    pub tool: String,
    pub status: ExitStatus,
    /// The last [`STDERR_TAIL`] bytes of stderr, lossily UTF-8.
    pub stderr: String,
    /// All of stdout with [`Stdout::Capture`], else empty.
    pub stdout: Vec<u8>,
}

impl Exit {
    /// The one verdict: see [`verdict`].
    pub fn verdict(&self) -> std::result::Result<(), Failure> {
        verdict(&self.tool, self.status, &self.stderr)
    }
}

/// A line of a tool's stderr that reports an error: `pg_restore: error: …`, libpq's `FATAL:`.
pub fn is_error_line(line: &str) -> bool {
    let l = line.to_ascii_lowercase();
    l.contains("error:") || l.contains("fatal:")
}

/// The server's own words under an error (`pg_dump: detail: Error message from server: server
/// closed the connection unexpectedly`): the cause of a failed COPY, which the error line above
/// it (`PQgetCopyData() failed.`) does not say.
/// Also the query of a lock pg_dump gave up waiting for (`--lock-wait-timeout` fails as a
/// statement timeout, which alone does not say which table).
fn is_server_detail(line: &str) -> bool {
    let l = line.to_ascii_lowercase();
    l.contains("detail: error message from server") || l.contains("detail: query was: lock table")
}

/// The one verdict rule of a finished tool: ok when it exited 0 and no stderr line is an error
/// line; else a [`Failure`] holding the (redacted) error lines, or the whole stderr when none.
pub fn verdict(tool: &str, status: ExitStatus, stderr: &str) -> std::result::Result<(), Failure> {
    let errors: Vec<&str> = stderr.lines().filter(|l| is_error_line(l)).collect();
    if status.success() && errors.is_empty() {
        return Ok(());
    }
    let errors: Vec<&str> = stderr.lines().filter(|l| is_error_line(l) || is_server_detail(l)).collect();
    let detail = if errors.is_empty() { stderr.trim().to_string() } else { errors.join("\n") };
    Err(Failure { tool: tool.to_string(), status, detail: redact(detail.trim()) })
}

/// A tool that ran and failed. `Display` says which tool and how, with its error lines.
#[derive(Debug, Clone)]
pub struct Failure {
    tool: String,
    status: ExitStatus,
    detail: String,
}

impl Failure {
    /// The signal that killed the tool, if one did.
    pub fn signal(&self) -> Option<i32> {
        use std::os::unix::process::ExitStatusExt;
        self.status.signal()
    }

    /// Killed by a signal, or its connection was lost: trying again may succeed.
    pub fn is_transient(&self) -> bool {
        let lower = self.detail.to_ascii_lowercase();
        self.signal().is_some() || CONNECTION_LOST.iter().any(|p| lower.contains(p))
    }

    /// The error by the one rule: transient as [`Failure::is_transient`] says, else permanent
    /// with the hint for PostgreSQL's refusal where there is one.
    pub fn into_error(self) -> Error {
        if self.is_transient() {
            return Error::transient(self.to_string());
        }
        let hint = self.hint();
        let e = Error::permanent(self.to_string());
        match hint {
            Some(hint) => e.with_hint(hint),
            None => e,
        }
    }

    /// The error of a failed dump (pg_dump, pg_dumpall). A dump changes nothing, and most of
    /// its failures pass (concurrent DDL, a recovery conflict on a replica, a restart), so they
    /// are transient, even a lost connection. These never pass by trying again, so they are
    /// permanent at once, with the remedy: a server certificate the tool does not trust (libpq's
    /// `certificate verify failed`, reported as a failed connection), a table whose row-level
    /// security policy would hide rows, a privilege the role lacks, a server newer than the tool.
    pub fn into_dump_error(self) -> Error {
        let lower = self.detail.to_ascii_lowercase();
        let hint = if self.signal().is_some() {
            None
        } else if lower.contains("certificate verify failed") || lower.contains("certificate has expired") {
            Some(
                "the server's TLS certificate is not trusted by the tool: pgvault gives it the system's \
                 roots and PGVAULT_CA_FILE; add the CA that signed it there, or check the host name in the \
                 inventory",
            )
        } else if lower.contains("row-level security") {
            Some(
                "the backup role is subject to a row-level security policy, so a dump would miss rows: give \
                 it BYPASSRLS (`ALTER ROLE <role> BYPASSRLS`), or exclude the table's database",
            )
        } else if lower.contains("permission denied for") {
            Some("grant the backup role read access (`pgvault grant-sql --role <role>` prints the statements)")
        } else if lower.contains("server version mismatch") {
            Some("install a pg_dump at least as new as the server and list its directory in PGVAULT_PG_BIN_DIRS")
        } else {
            None
        };
        match hint {
            Some(hint) => Error::permanent(self.to_string()).with_hint(hint),
            None => Error::transient(self.to_string()),
        }
    }

    /// The remedy of a permanent refusal. These arise when pg_restore gives objects their
    /// owners and privileges, so they name the restore request's options.
    fn hint(&self) -> Option<&'static str> {
        let lower = self.detail.to_ascii_lowercase();
        if lower.contains("role") && lower.contains("does not exist") {
            Some("restore the roles first (options.globals), or restore with options.no_owner / options.owner")
        } else if ["must be member of role", "must be able to set role", "permission denied to set role"]
            .iter()
            .any(|p| lower.contains(p))
        {
            // Objects in the archive belong to a role the restoring login may not become.
            Some(
                "make the restoring role a member of the objects' owner (`pgvault grant-sql --restore --role \
                 <restore role> --member-of <owner>`), or restore with options.no_owner / options.owner",
            )
        } else if lower.contains("permission denied for schema") || lower.contains("permission denied for database") {
            // A non-superuser pg_restore gives each object its owner as it creates it, and
            // PostgreSQL then wants that owner to hold CREATE on the schema (or database)
            // already; the archive grants it only later, with the other privileges.
            Some(
                "an object's owner lacks CREATE on its schema while pg_restore gives it the object (the archive \
                 grants it later): restore with options.no_owner, or as an admin role",
            )
        } else {
            None
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.signal() {
            Some(sig) => write!(f, "{} was killed by signal {sig}", self.tool)?,
            None => write!(f, "{} failed ({})", self.tool, self.status)?,
        }
        if !self.detail.is_empty() {
            write!(f, ": {}", self.detail)?;
        }
        Ok(())
    }
}

/// Keep the last [`STDERR_TAIL`] bytes of a tool's stderr.
async fn stderr_tail(mut stderr: tokio::process::ChildStderr) -> String {
    use tokio::io::AsyncReadExt;
    let mut kept = Vec::new();
    let mut buf = vec![0u8; 8192];
    while let Ok(n) = stderr.read(&mut buf).await {
        if n == 0 {
            break;
        }
        kept.extend_from_slice(&buf[..n]);
        if kept.len() > 2 * STDERR_TAIL {
            kept.drain(..kept.len() - STDERR_TAIL);
        }
    }
    if kept.len() > STDERR_TAIL {
        kept.drain(..kept.len() - STDERR_TAIL);
    }
    String::from_utf8_lossy(&kept).into_owned()
}

async fn read_all(mut out: tokio::process::ChildStdout) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut all = Vec::new();
    let _ = out.read_to_end(&mut all).await;
    all
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::inventory::TlsMode;
    use crate::domain::secret::Secret;
    use std::os::unix::process::ExitStatusExt;
    use std::path::PathBuf;
    use std::time::Duration;

    fn exited(code: i32) -> ExitStatus {
        ExitStatus::from_raw(code << 8)
    }

    fn killed(sig: i32) -> ExitStatus {
        ExitStatus::from_raw(sig)
    }

    #[test]
    fn ok_needs_exit_zero_and_no_error_line() {
        assert!(verdict("pg_dump", exited(0), "").is_ok());
        assert!(verdict("pg_dump", exited(0), "pg_dump: warning: could not find where to insert\n").is_ok());
        // Exit 0 with an error line is a failure: the tool said something went wrong.
        let f = verdict("pg_dump", exited(0), "pg_dump: error: query failed: ERROR:  boom\n").unwrap_err();
        assert!(f.to_string().contains("pg_dump failed (exit status: 0): pg_dump: error: query failed"), "{f}");
        let f = verdict("pg_restore", exited(0), "psql: FATAL:  the database system is shutting down").unwrap_err();
        assert!(f.to_string().contains("FATAL"), "{f}");
        // A non-zero exit without an error line fails with the whole stderr as its detail.
        let f = verdict("pg_restore", exited(1), "  something odd\nand more  \n").unwrap_err();
        assert_eq!(f.to_string(), "pg_restore failed (exit status: 1): something odd\nand more");
        assert_eq!(verdict("pg_restore", exited(1), "").unwrap_err().to_string(), "pg_restore failed (exit status: 1)");
    }

    #[test]
    fn the_detail_holds_only_error_lines_redacted() {
        let stderr = "pg_restore: processing item\npg_restore: error: could not execute query: ERROR:  x \
                      https://a.blob.core.windows.net/c/b?sv=1&sig=SECRETSIG\npg_restore: warning: errors ignored\n";
        let f = verdict("pg_restore", exited(1), stderr).unwrap_err();
        let text = f.to_string();
        assert!(!text.contains("processing item") && !text.contains("warning"), "{text}");
        assert!(!text.contains("SECRETSIG"), "{text}");
        assert!(text.contains("could not execute query"), "{text}");
        // The server's words under a failed COPY are kept: they say why.
        let stderr = "pg_dump: error: Dumping the contents of table \"t\" failed: PQgetCopyData() failed.\n\
                      pg_dump: detail: Error message from server: server closed the connection unexpectedly\n\
                      pg_dump: detail: Command was: COPY public.t (i, v) TO stdout;\n";
        let text = verdict("pg_dump", exited(1), stderr).unwrap_err().to_string();
        assert!(text.contains("server closed the connection unexpectedly"), "{text}");
        assert!(!text.contains("Command was"), "{text}");
        // A lock pg_dump gave up on: the query names the table.
        let stderr = "pg_dump: error: query failed: ERROR:  canceling statement due to statement timeout\n\
                      pg_dump: detail: Query was: LOCK TABLE public.t IN ACCESS SHARE MODE\n";
        let text = verdict("pg_dump", exited(1), stderr).unwrap_err().to_string();
        assert!(text.contains("LOCK TABLE public.t"), "{text}");
    }

    #[test]
    fn killed_by_a_signal_is_transient() {
        let f = verdict("pg_restore", killed(9), "").unwrap_err();
        assert_eq!(f.signal(), Some(9));
        let e = f.into_error();
        assert!(!e.is_permanent());
        assert!(e.to_string().contains("pg_restore was killed by signal 9"), "{e}");
        // Even when its last words would have been a permanent refusal.
        let f = verdict("pg_restore", killed(15), "pg_restore: error: role \"x\" does not exist").unwrap_err();
        assert!(!f.into_error().is_permanent());
    }

    #[test]
    fn a_lost_connection_is_transient() {
        for line in [
            "pg_dump: error: connection to server at \"db\" (10.0.0.1), port 5432 failed: Connection refused",
            "pg_restore: error: could not connect to database \"x\"",
            "pg_restore: error: could not execute query: server closed the connection unexpectedly",
            "pg_dump: error: Dumping the contents of table \"t\" failed: FATAL:  terminating connection due to \
             administrator command",
        ] {
            let f = verdict("pg_restore", exited(1), line).unwrap_err();
            assert!(f.is_transient(), "{line}");
            assert!(!f.into_error().is_permanent(), "{line}");
        }
    }

    #[test]
    fn anything_else_is_permanent_with_the_known_hints() {
        let hint_of = |line: &str| {
            let e = verdict("pg_restore", exited(1), line).unwrap_err().into_error();
            assert!(e.is_permanent(), "{line}");
            e.to_string()
        };
        let e = hint_of("pg_restore: error: could not execute query: ERROR:  role \"app_owner\" does not exist");
        assert!(e.contains("HINT: restore the roles first (options.globals)"), "{e}");
        for line in [
            "pg_restore: error: could not execute query: ERROR:  must be member of role \"app_owner\"",
            "pg_restore: error: could not execute query: ERROR:  must be able to SET ROLE \"app_owner\"",
            "pg_restore: error: could not execute query: ERROR:  permission denied to set role \"app_owner\"",
        ] {
            let e = hint_of(line);
            assert!(e.contains("HINT: make the restoring role a member"), "{e}");
        }
        for line in [
            "pg_restore: error: could not execute query: ERROR:  permission denied for schema app",
            "pg_restore: error: could not execute query: ERROR:  permission denied for database app",
        ] {
            let e = hint_of(line);
            assert!(e.contains("HINT: an object's owner lacks CREATE on its schema"), "{e}");
        }
        let e = hint_of("pg_restore: error: input file does not appear to be a valid archive");
        assert!(!e.contains("HINT"), "{e}");
    }

    #[test]
    fn a_dump_fails_for_good_only_where_retrying_cannot_help() {
        let dump = |line: &str| verdict("pg_dump", exited(1), line).unwrap_err().into_dump_error();
        for (line, hint) in [
            (
                "pg_dump: error: connection to server at \"db\" (10.0.0.1), port 5432 failed: SSL error: \
                 certificate verify failed",
                "not trusted by the tool",
            ),
            (
                "pg_dump: error: query failed: ERROR:  query would be affected by row-level security policy for \
                 table \"accounts\"",
                "BYPASSRLS",
            ),
            ("pg_dump: error: query failed: ERROR:  permission denied for table secret_t", "grant-sql"),
            ("pg_dump: error: aborting because of server version mismatch", "at least as new as the server"),
        ] {
            let e = dump(line);
            assert!(e.is_permanent(), "{line}");
            let text = e.to_string();
            assert!(text.starts_with("pg_dump failed (exit status: 1): pg_dump: error:"), "the cause first: {text}");
            assert!(text.contains(hint), "{text}");
        }
        for line in [
            "pg_dump: error: connection to server at \"db\" (10.0.0.1), port 5432 failed: Connection refused",
            "pg_dump: error: Dumping the contents of table \"t\" failed: FATAL:  terminating connection",
            "pg_dump: error: query failed: ERROR:  could not obtain lock on relation \"t\"",
        ] {
            assert!(!dump(line).is_permanent(), "{line}");
        }
        let killed = verdict("pg_dump", killed(9), "pg_dump: error: permission denied for table t").unwrap_err();
        assert!(!killed.into_dump_error().is_permanent());
    }

    /// A program on PATH, run through the runner as if it were a PostgreSQL tool.
    fn program(name: &str) -> ToolBinary {
        let path = std::env::var_os("PATH")
            .iter()
            .flat_map(std::env::split_paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
            .unwrap_or_else(|| panic!("{name} is not on PATH"));
        ToolBinary { path, version: String::new(), major: 0 }
    }

    fn spec(password: &str) -> ConnSpec {
        ConnSpec {
            server: "s".into(),
            host: "db.invalid".into(),
            port: 5433,
            user: "runner_user".into(),
            dbname: "runner_db".into(),
            tls: TlsMode::Disable,
            password: Some(Secret::new(password)),
            ca_file: None::<PathBuf>,
        }
    }

    #[tokio::test]
    async fn a_cancelled_run_kills_the_child() {
        let cancel = CancellationToken::new();
        let args = vec!["1000".to_string()];
        let running = ToolRun::new(&program("sleep"), &args).spawn(&cancel).unwrap();
        let pid = running.id().expect("running");
        assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
        cancel.cancel();
        let e = tokio::time::timeout(Duration::from_secs(30), running.wait())
            .await
            .expect("the killed child is reaped at once")
            .unwrap_err();
        assert!(!e.is_permanent());
        assert_eq!(e.to_string(), "sleep cancelled by shutdown");
        // Reaped: the process is gone.
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    }

    #[tokio::test]
    async fn a_dropped_run_kills_the_child() {
        let cancel = CancellationToken::new();
        let args = vec!["1000".to_string()];
        let mut running = ToolRun::new(&program("sleep"), &args).stdout(Stdout::Pipe).spawn(&cancel).unwrap();
        let stdout = running.take_stdout().expect("piped");
        drop(running);
        // The pipe ends only when its writer, the child, is gone.
        let read = tokio::task::spawn_blocking(move || std::io::Read::read_to_end(&mut &stdout, &mut Vec::new()));
        let n = tokio::time::timeout(Duration::from_secs(30), read).await.expect("the child was killed").unwrap();
        assert_eq!(n.unwrap(), 0);
        assert!(!cancel.is_cancelled(), "dropping one run cancels nothing else");
    }

    #[tokio::test]
    async fn the_environment_is_cleared_but_for_path_lang_and_the_connection() {
        let parent: Vec<String> =
            std::env::vars().map(|(k, _)| k).filter(|k| !["PATH", "LANG"].contains(&k.as_str())).collect();
        assert!(!parent.is_empty(), "the test process has variables of its own (HOME, CARGO_*, ...)");
        let spec = spec("pw-runner-test-5e3");
        let args: Vec<String> = vec![];
        let running =
            ToolRun::new(&program("env"), &args).conn(&spec).stdout(Stdout::Capture).spawn(&CancellationToken::new());
        let exit = running.unwrap().wait().await.unwrap();
        assert!(exit.verdict().is_ok(), "env failed: {}", exit.status);
        let out = String::from_utf8(exit.stdout).unwrap();
        let names: Vec<&str> = out.lines().filter_map(|l| l.split_once('=').map(|(k, _)| k)).collect();
        // Never print the child's environment: it holds the password.
        for k in &parent {
            assert!(!names.contains(&k.as_str()), "the parent's {k} reached the child");
        }
        let mut expected: Vec<String> = spec.tool_env().unwrap().into_iter().map(|(k, _)| k).collect();
        expected.extend(["PATH".to_string(), "LANG".to_string()]);
        let mut got: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        expected.sort();
        got.sort();
        assert_eq!(got, expected, "only PATH, LANG and the connection's variables");
        assert!(out.lines().any(|l| l == "LANG=C.UTF-8"));
        assert!(out.lines().any(|l| l == "PGUSER=runner_user") && out.lines().any(|l| l == "PGPORT=5433"));
        assert!(out.lines().any(|l| l == "PGPASSWORD=pw-runner-test-5e3"), "PGPASSWORD is missing or wrong");
    }
}
