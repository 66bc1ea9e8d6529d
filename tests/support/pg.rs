//! Throwaway PostgreSQL clusters for tests.
//!
//! PostgreSQL refuses to run as root: when the test process has euid 0, initdb/pg_ctl run as
//! the OS user `postgres` through `runuser`, in a tempdir under /tmp chowned to that user.
//! Otherwise they run as the current user. Each cluster listens on 127.0.0.1 on a free port
//! and has its own Unix socket directory; it is stopped (`-m immediate`) and deleted on drop.

use super::is_root;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use tempfile::TempDir;

/// Debian's PostgreSQL 15 binaries.
pub const PG15_BIN: &str = "/usr/lib/postgresql/15/bin";
/// Superuser password when `ClusterOptions::password_auth` is set.
pub const TEST_PASSWORD: &str = "postgres-test-pw";
/// OS user that runs the server when the tests run as root.
pub const CLUSTER_OS_USER: &str = "postgres";

/// Environment variables that would change what initdb/pg_ctl/psql do.
const PG_ENV: &[&str] = &[
    "PGDATA",
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGUSER",
    "PGDATABASE",
    "PGPASSWORD",
    "PGPASSFILE",
    "PGSERVICE",
    "PGSERVICEFILE",
    "PGOPTIONS",
    "PGSSLMODE",
    "PGSSLROOTCERT",
    "PGSSLCERT",
    "PGSSLKEY",
    "PGTZ",
    "PGCLIENTENCODING",
];

#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Directory with initdb, pg_ctl, postgres and psql.
    pub bin_dir: PathBuf,
    /// (certificate PEM, key PEM): copied into the data dir (0600, cluster user) and `ssl=on`.
    pub ssl: Option<(PathBuf, PathBuf)>,
    /// Extra pg_hba.conf lines placed before the defaults (first match wins).
    pub hba: Vec<String>,
    /// Superuser password [`TEST_PASSWORD`] and scram-sha-256 on the `host` lines (local
    /// socket connections stay trust).
    pub password_auth: bool,
    /// Environment of the server process (e.g. `LOCPATH`, to give it locales the machine lacks).
    pub server_env: Vec<(String, String)>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            bin_dir: PathBuf::from(PG15_BIN),
            ssl: None,
            hba: Vec::new(),
            password_auth: false,
            server_env: Vec::new(),
        }
    }
}

impl ClusterOptions {
    /// TLS with this (certificate PEM, key PEM), and plain-text TCP refused.
    pub fn tls_only(cert: (PathBuf, PathBuf)) -> ClusterOptions {
        ClusterOptions {
            hba: vec!["hostnossl all all 127.0.0.1/32 reject".into()],
            ssl: Some(cert),
            ..Default::default()
        }
    }
}

#[derive(Debug)]
pub struct Cluster {
    pub port: u16,
    /// Always "127.0.0.1".
    pub host: String,
    pub socket_dir: PathBuf,
    pub bin_dir: PathBuf,
    /// Always "postgres".
    pub superuser: String,
    /// Major version (from the data dir's PG_VERSION).
    pub version: u32,
    /// `Some(TEST_PASSWORD)` with `password_auth`.
    pub password: Option<String>,
    data_dir: PathBuf,
    log_file: PathBuf,
    server_env: Vec<(String, String)>,
    dir: TempDir,
}

impl Cluster {
    /// A PostgreSQL 15 cluster with trust auth.
    pub fn start() -> Cluster {
        Cluster::start_with(ClusterOptions::default())
    }

    pub fn start_with(opts: ClusterOptions) -> Cluster {
        let bin_dir = opts.bin_dir.clone();
        assert!(bin_dir.join("postgres").is_file(), "no PostgreSQL server binary in {}", bin_dir.display());
        let dir = tempfile::Builder::new().prefix("pgvault-pg-").tempdir_in("/tmp").expect("create cluster tempdir");
        chown_to_cluster_user(dir.path());
        let data_dir = dir.path().join("data");
        let socket_dir = dir.path().join("sock");
        std::fs::create_dir(&socket_dir).expect("create socket dir");
        chown_to_cluster_user(&socket_dir);
        let log_file = dir.path().join("postgres.log");

        if is_root() {
            let probe = Command::new("runuser")
                .args(["-u", CLUSTER_OS_USER, "--", "test", "-x"])
                .arg(bin_dir.join("postgres"))
                .current_dir(dir.path())
                .status()
                .expect("run runuser");
            assert!(
                probe.success(),
                "{} is not executable by OS user {CLUSTER_OS_USER} (is a parent directory \
                 not traversable?)",
                bin_dir.join("postgres").display()
            );
        }

        // initdb
        let mut initdb = cluster_command(&bin_dir.join("initdb"), dir.path());
        initdb
            .arg("-D")
            .arg(&data_dir)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C"])
            .arg("--no-sync")
            .arg("--no-instructions");
        if opts.password_auth {
            let pwfile = dir.path().join("pwfile");
            std::fs::write(&pwfile, format!("{TEST_PASSWORD}\n")).expect("write pwfile");
            chown_to_cluster_user(&pwfile);
            initdb.arg(format!("--pwfile={}", pwfile.display()));
        }
        run_checked(&mut initdb, "initdb");

        let version: u32 = std::fs::read_to_string(data_dir.join("PG_VERSION"))
            .expect("read PG_VERSION")
            .trim()
            .parse()
            .expect("parse PG_VERSION");

        // pg_hba.conf: caller's lines first, then the defaults.
        let method = if opts.password_auth { "scram-sha-256" } else { "trust" };
        let mut hba = String::new();
        for line in &opts.hba {
            hba.push_str(line);
            hba.push('\n');
        }
        hba.push_str(&format!(
            "local all all trust\n\
             host all all 127.0.0.1/32 {method}\n\
             local replication all trust\n\
             host replication all 127.0.0.1/32 {method}\n"
        ));
        // Overwriting an existing file keeps its owner (the cluster user).
        std::fs::write(data_dir.join("pg_hba.conf"), hba).expect("write pg_hba.conf");

        let mut conf = format!(
            "\n# pgvault test settings\n\
             listen_addresses = '127.0.0.1'\n\
             unix_socket_directories = '{}'\n\
             fsync = off\n\
             synchronous_commit = off\n\
             full_page_writes = off\n\
             max_connections = 50\n",
            socket_dir.display()
        );
        if let Some((cert, key)) = &opts.ssl {
            for (src, name) in [(cert, "server.crt"), (key, "server.key")] {
                let dst = data_dir.join(name);
                std::fs::copy(src, &dst).unwrap_or_else(|e| panic!("copy {} into data dir: {e}", src.display()));
                std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o600)).expect("chmod ssl file");
                chown_to_cluster_user(&dst);
            }
            conf.push_str("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
        }
        append(&data_dir.join("postgresql.conf"), &conf);

        let mut cluster = Cluster {
            port: 0,
            host: "127.0.0.1".to_string(),
            socket_dir,
            bin_dir,
            superuser: "postgres".to_string(),
            version,
            password: opts.password_auth.then(|| TEST_PASSWORD.to_string()),
            data_dir,
            log_file,
            server_env: opts.server_env.clone(),
            dir,
        };

        // The port is free when picked but could be taken before the server binds it:
        // retry with another port when that happens.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let port = free_port();
            append(&cluster.data_dir.join("postgresql.conf"), &format!("port = {port}\n"));
            cluster.port = port;
            let out = cluster.pg_ctl(&["-w", "-t", "60", "start"]);
            if out.status.success() {
                break;
            }
            let log = cluster.log();
            if attempt < 5 && log.contains("could not bind") {
                continue;
            }
            panic!(
                "pg_ctl start failed ({}):\nstdout: {}\nstderr: {}\nserver log:\n{log}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        cluster
    }

    /// Run SQL (from stdin, so several statements and psql meta-commands work) with
    /// `psql -X -q -At -v ON_ERROR_STOP=1` over TCP; returns stdout without the final newline.
    /// Panics with psql's stderr on failure.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        self.try_psql(db, sql).unwrap_or_else(|e| panic!("psql -d {db} failed: {e}\nSQL: {sql}"))
    }

    /// Like [`Cluster::psql`], but returns psql's stderr as the error.
    pub fn try_psql(&self, db: &str, sql: &str) -> Result<String, String> {
        let mut cmd = Command::new(self.bin_dir.join("psql"));
        for var in PG_ENV {
            cmd.env_remove(var);
        }
        if let Some(pw) = &self.password {
            cmd.env("PGPASSWORD", pw);
        }
        cmd.env("PGCONNECT_TIMEOUT", "10")
            .args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-f", "-"])
            .args(["-h", &self.host, "-p", &self.port.to_string()])
            .args(["-U", &self.superuser, "-d", db])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn psql");
        let mut stdin = child.stdin.take().expect("psql stdin");
        let sql = sql.to_string();
        // Write from another thread so a large script cannot deadlock against large output.
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(sql.as_bytes());
        });
        let out = child.wait_with_output().expect("wait for psql");
        let _ = writer.join();
        if out.status.success() {
            let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
            if s.ends_with('\n') {
                s.pop();
            }
            Ok(s)
        } else {
            Err(format!("{} (exit {})", String::from_utf8_lossy(&out.stderr).trim_end(), out.status))
        }
    }

    /// libpq-style connection string over TCP, e.g.
    /// `host=127.0.0.1 port=5555 user=postgres dbname=app` (plus `password=..` with
    /// `password_auth`).
    pub fn conninfo(&self, db: &str) -> String {
        let mut s = format!("host={} port={} user={} dbname={db}", self.host, self.port, self.superuser);
        if let Some(pw) = &self.password {
            s.push_str(&format!(" password={pw}"));
        }
        s
    }

    /// A tokio-postgres client (NoTls) with its connection task spawned on the current runtime.
    pub async fn client(&self, db: &str) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&self.conninfo(db), tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("connect to {}: {e}", self.conninfo(db)));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                eprintln!("test cluster connection error: {e}");
            }
        });
        client
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The tempdir holding data dir, socket dir and server log (removed on drop).
    pub fn base_dir(&self) -> &Path {
        self.dir.path()
    }

    /// A new directory `name` in [`Self::base_dir`], owned by the cluster's OS user (for tools
    /// that run as that user, such as pgBackRest's lock, log and spool paths). Removed on drop.
    pub fn owned_dir(&self, name: &str) -> PathBuf {
        let dir = self.dir.path().join(name);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        chown_to_cluster_user(&dir);
        dir
    }

    /// The server log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_file).unwrap_or_default()
    }

    /// OS user the server runs as when tests run as root (`None` when not root).
    pub fn os_user(&self) -> Option<&'static str> {
        is_root().then_some(CLUSTER_OS_USER)
    }

    /// A command for `program` that runs as the cluster's OS user (via runuser when root),
    /// with the cluster tempdir as working directory and PG* environment variables removed.
    pub fn command(&self, program: impl AsRef<Path>) -> Command {
        cluster_command(program.as_ref(), self.dir.path())
    }

    /// `pg_ctl restart` (fast shutdown), e.g. after `ALTER SYSTEM` of a restart-only setting.
    pub fn restart(&self) {
        let out = self.pg_ctl(&["-w", "-t", "60", "-m", "fast", "restart"]);
        assert!(
            out.status.success(),
            "pg_ctl restart failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
    }

    /// `pg_ctl reload` (re-read postgresql.conf / pg_hba.conf).
    pub fn reload(&self) {
        let out = self.pg_ctl(&["reload"]);
        assert!(out.status.success(), "pg_ctl reload failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    fn pg_ctl(&self, args: &[&str]) -> Output {
        let mut cmd = cluster_command(&self.bin_dir.join("pg_ctl"), self.dir.path());
        cmd.arg("-D").arg(&self.data_dir).arg("-l").arg(&self.log_file).args(args).stdin(Stdio::null());
        cmd.envs(self.server_env.iter().map(|(k, v)| (k, v)));
        cmd.output().expect("run pg_ctl")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.port != 0 {
            let _ = self.pg_ctl(&["-w", "-t", "30", "-m", "immediate", "stop"]);
        }
        // The TempDir field then removes data dir, sockets and log.
    }
}

/// A newer major version's bin dir, if one is installed: `$PGVAULT_TEST_PG_NEWER_BIN`, else
/// the newest `${CARGO_MANIFEST_DIR}/.pgvault-local/pg/*/bin` whose server is newer than 15.
/// Panics if the variable is set but does not point at a PostgreSQL bin dir.
pub fn newer_bin_dir() -> Option<PathBuf> {
    if let Some(v) = std::env::var_os("PGVAULT_TEST_PG_NEWER_BIN").filter(|v| !v.is_empty()) {
        let p = PathBuf::from(v);
        assert!(p.join("postgres").is_file(), "PGVAULT_TEST_PG_NEWER_BIN={} has no postgres binary", p.display());
        return Some(p);
    }
    let root = super::repo_root().join(".pgvault-local/pg");
    let entries = std::fs::read_dir(root).ok()?;
    entries
        .filter_map(Result::ok)
        .map(|e| e.path().join("bin"))
        .filter(|bin| bin.join("postgres").is_file())
        .filter_map(|bin| bin_major(&bin).map(|m| (m, bin)))
        .filter(|(m, _)| *m > 15)
        .max_by_key(|(m, _)| *m)
        .map(|(_, bin)| bin)
}

/// A locale the machine lacks (`de_DE.UTF-8`), built with localedef into a directory that only
/// a server started with `LOCPATH` there can see ([`ClusterOptions::server_env`]).
pub fn private_locale() -> TempDir {
    let dir = tempfile::Builder::new().prefix("pgvault-locale-").tempdir_in("/tmp").unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new("localedef")
        .args(["-i", "de_DE", "-f", "UTF-8"])
        .arg(dir.path().join("de_DE.UTF-8"))
        .output()
        .expect("run localedef (package locales)");
    assert!(dir.path().join("de_DE.UTF-8").is_dir(), "localedef failed: {}", String::from_utf8_lossy(&out.stderr));
    dir
}

/// Major version of the server in `bin_dir` (`postgres --version`), if it runs.
pub fn bin_major(bin_dir: &Path) -> Option<u32> {
    let out = Command::new(bin_dir.join("postgres")).arg("--version").output().ok()?;
    // "postgres (PostgreSQL) 17.11" / "postgres (PostgreSQL) 15.14 (Debian 15.14-0+deb12u1)"
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text.split(") ").nth(1)?;
    version.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

fn cluster_command(program: &Path, cwd: &Path) -> Command {
    let mut cmd = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", CLUSTER_OS_USER, "--"]).arg(program);
        c
    } else {
        Command::new(program)
    };
    for var in PG_ENV {
        cmd.env_remove(var);
    }
    cmd.current_dir(cwd);
    cmd
}

fn run_checked(cmd: &mut Command, what: &str) {
    let out = cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("run {what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn append(path: &Path, text: &str) {
    let mut f =
        std::fs::OpenOptions::new().append(true).open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    f.write_all(text.as_bytes()).unwrap_or_else(|e| panic!("append to {}: {e}", path.display()));
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("bind 127.0.0.1:0").port()
}

/// (uid, gid) of the cluster OS user, when running as root.
fn cluster_user_ids() -> Option<(u32, u32)> {
    static IDS: OnceLock<Option<(u32, u32)>> = OnceLock::new();
    *IDS.get_or_init(|| {
        if !is_root() {
            return None;
        }
        let id = |flag: &str| -> u32 {
            let out = Command::new("id").arg(flag).arg(CLUSTER_OS_USER).output().expect("run id");
            assert!(
                out.status.success(),
                "OS user {CLUSTER_OS_USER} is needed to run PostgreSQL as root (install the \
                 postgresql package): {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).trim().parse().expect("numeric id")
        };
        Some((id("-u"), id("-g")))
    })
}

fn chown_to_cluster_user(path: &Path) {
    if let Some((uid, gid)) = cluster_user_ids() {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
    }
}
