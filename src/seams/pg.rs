//! PostgreSQL: connections (tokio-postgres with rustls), catalog queries, and the client tools.
//!
//! The tools (pg_dump, pg_dumpall, pg_restore) are PostgreSQL's own, chosen per server version
//! from the configured bin directories, and run by [`super::tools`]. Connection details and the
//! password reach them through the environment (`PGHOST`, `PGPASSWORD`, ...), never the command
//! line.

use crate::domain::error::{Error, Result};
use crate::domain::inventory::TlsMode;
use crate::domain::secret::{Secret, redact};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Everything needed to open a connection. `Debug` hides the password.
#[derive(Debug, Clone)]
pub struct ConnSpec {
    pub server: String,
    pub host: String,
    pub port: u16,
    pub user: String,
    pub dbname: String,
    pub tls: TlsMode,
    pub password: Option<Secret>,
    pub ca_file: Option<PathBuf>,
}

impl ConnSpec {
    pub fn with_db(&self, dbname: &str) -> Self {
        Self { dbname: dbname.to_string(), ..self.clone() }
    }

    fn is_socket(&self) -> bool {
        self.host.starts_with('/')
    }

    /// `server "prod" (db.example.com:5432, database "app")`, for messages.
    pub fn describe(&self) -> String {
        format!("server {:?} ({}:{}, database {:?})", self.server, self.host, self.port, self.dbname)
    }

    /// Environment for libpq-based tools. Carries the password; never log it. With
    /// `verify-ca`/`verify-full` the tools trust exactly what pgvault's own connection trusts
    /// ([`tool_ca_bundle`]); writing that bundle is the only way this fails.
    pub fn tool_env(&self) -> Result<Vec<(String, String)>> {
        let mut env = vec![
            ("PGHOST".to_string(), self.host.clone()),
            ("PGPORT".to_string(), self.port.to_string()),
            ("PGUSER".to_string(), self.user.clone()),
            ("PGDATABASE".to_string(), self.dbname.clone()),
            ("PGAPPNAME".to_string(), "pgvault".to_string()),
            ("PGCONNECT_TIMEOUT".to_string(), "30".to_string()),
        ];
        if !self.is_socket() {
            env.push(("PGSSLMODE".to_string(), self.tls.as_libpq().to_string()));
            if matches!(self.tls, TlsMode::VerifyCa | TlsMode::VerifyFull) {
                let bundle = tool_ca_bundle(self.ca_file.as_deref())?;
                env.push(("PGSSLROOTCERT".to_string(), bundle.display().to_string()));
            }
        }
        if let Some(pw) = &self.password {
            env.push(("PGPASSWORD".to_string(), pw.expose().to_string()));
        }
        Ok(env)
    }
}

/// The CA bundle handed to libpq (`PGSSLROOTCERT`): the very roots of pgvault's own
/// connections ([`root_store`]: the system's as `rustls-native-certs` finds them, which honours
/// `SSL_CERT_FILE` and `SSL_CERT_DIR`, plus `PGVAULT_CA_FILE`), as PEM. Written once per process
/// and CA file, to a file of its own (0600) in a new private directory (0700), so no other
/// local user can swap a CA in. Not libpq 16+'s `sslrootcert=system`: that reads OpenSSL's
/// default locations (the tools run with a cleared environment, so not even `SSL_CERT_FILE`),
/// cannot add the CA file, and would leave pg_dump trusting less than pgvault checked.
pub fn tool_ca_bundle(ca_file: Option<&Path>) -> Result<PathBuf> {
    use std::collections::BTreeMap;
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    use std::sync::Mutex;
    static WRITTEN: Mutex<BTreeMap<Option<PathBuf>, PathBuf>> = Mutex::new(BTreeMap::new());
    let key = ca_file.map(Path::to_path_buf);
    let mut written = WRITTEN.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(path) = written.get(&key).filter(|p| p.is_file()) {
        return Ok(path.clone());
    }
    let (roots, _) = native_and_extra_roots(ca_file)?;
    let mut pem = String::new();
    for der in &roots {
        pem.push_str("-----BEGIN CERTIFICATE-----\n");
        let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, der.as_ref());
        for line in b64.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
            pem.push('\n');
        }
        pem.push_str("-----END CERTIFICATE-----\n");
    }
    let fail = |e: std::io::Error| {
        Error::permanent(format!(
            "write the CA bundle for PostgreSQL's tools under {}: {e}",
            std::env::temp_dir().display()
        ))
    };
    let dir = std::env::temp_dir().join(format!("pgvault-ca-{}", uuid::Uuid::new_v4().simple()));
    std::fs::DirBuilder::new().mode(0o700).create(&dir).map_err(fail)?;
    let path = dir.join("roots.pem");
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path).map_err(fail)?;
    f.write_all(pem.as_bytes()).and_then(|()| f.sync_all()).map_err(fail)?;
    written.insert(key, path.clone());
    Ok(path)
}

/// Open a connection; the connection task runs in the background until the client drops.
pub async fn connect(spec: &ConnSpec) -> Result<tokio_postgres::Client> {
    let mut config = tokio_postgres::Config::new();
    config
        .user(&spec.user)
        .dbname(&spec.dbname)
        .port(spec.port)
        .application_name("pgvault")
        .connect_timeout(std::time::Duration::from_secs(30));
    if let Some(pw) = &spec.password {
        config.password(pw.expose());
    }
    let fail = |e: tokio_postgres::Error| connect_error(spec, e);
    if spec.is_socket() {
        config.host_path(&spec.host);
        let (client, conn) = config.connect(tokio_postgres::NoTls).await.map_err(fail)?;
        tokio::spawn(conn);
        return Ok(client);
    }
    config.host(&spec.host);
    match spec.tls {
        TlsMode::Disable => {
            config.ssl_mode(tokio_postgres::config::SslMode::Disable);
            let (client, conn) = config.connect(tokio_postgres::NoTls).await.map_err(fail)?;
            tokio::spawn(conn);
            Ok(client)
        }
        mode => {
            config.ssl_mode(tokio_postgres::config::SslMode::Require);
            let tls = tokio_postgres_rustls::MakeRustlsConnect::new(tls_config(mode, spec.ca_file.as_deref())?);
            let (client, conn) = config.connect(tls).await.map_err(fail)?;
            tokio::spawn(conn);
            Ok(client)
        }
    }
}

fn connect_error(spec: &ConnSpec, e: tokio_postgres::Error) -> Error {
    let text = redact(&error_text(&e));
    let what = format!("connect to {}", spec.describe());
    match e.as_db_error().map(|d| d.code().clone()) {
        Some(code) if code == tokio_postgres::error::SqlState::INVALID_CATALOG_NAME => {
            Error::permanent(format!("{what}: database {:?} does not exist", spec.dbname))
        }
        Some(code)
            if code == tokio_postgres::error::SqlState::INVALID_PASSWORD
                || code == tokio_postgres::error::SqlState::INVALID_AUTHORIZATION_SPECIFICATION =>
        {
            Error::permanent(format!("{what}: authentication failed for role {:?}: {text}", spec.user))
                .with_hint("check the role and the credentials secret named in the inventory")
        }
        _ if text.contains("certificate")
            || text.contains("InvalidCertificate")
            || text.contains("NotValidForName") =>
        {
            Error::permanent(format!("{what}: TLS certificate rejected: {text}"))
                .with_hint("trust the server's CA with PGVAULT_CA_FILE, or check the host name in the inventory")
        }
        _ => Error::transient(format!("{what}: {text}")),
    }
}

/// The full text of a tokio-postgres error, including its source chain.
pub fn error_text(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{}: {}", db.severity(), db.message());
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// A database query failed; name what was being done.
pub fn query_error(what: &str, e: tokio_postgres::Error) -> Error {
    let text = redact(&error_text(&e));
    let passes = e.as_db_error().is_some_and(|d| passes_by_itself(d.code().code()));
    if e.is_closed() || e.as_db_error().is_none() || passes {
        Error::transient(format!("{what}: {text}"))
    } else if e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE)
        && text.contains("row-level security")
    {
        Error::permanent(format!("{what}: {text}")).with_hint(
            "the backup role is subject to a row-level security policy, so a dump would miss rows: give it \
             BYPASSRLS (`ALTER ROLE <role> BYPASSRLS`), or exclude the table's database",
        )
    } else {
        Error::permanent(format!("{what}: {text}"))
    }
}

/// Whether a server error (by SQLSTATE) may pass when the same work is tried again: a lost or
/// refused connection (class 08), a serialization failure or deadlock (40), a lack of resources
/// (53: disk full, out of memory, too many connections), a lock not available within
/// `lock_timeout` (55P03), an operator's intervention (57: a cancelled statement, a terminated
/// backend, a server shutting down or starting) and an I/O error (58). Anything else (a missing
/// object, a permission, bad data) stays as it is until someone changes something.
pub fn passes_by_itself(sqlstate: &str) -> bool {
    ["08", "40", "53", "57", "58"].iter().any(|class| sqlstate.starts_with(class)) || sqlstate == "55P03"
}

fn tls_config(mode: TlsMode, ca_file: Option<&Path>) -> Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let roots = Arc::new(root_store(ca_file)?);
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::permanent(format!("TLS setup: {e}")))?;
    let config = match mode {
        TlsMode::VerifyFull => builder.with_root_certificates(roots).with_no_client_auth(),
        TlsMode::VerifyCa | TlsMode::Require => {
            let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| Error::permanent(format!("TLS setup: {e}")))?;
            let verifier = Arc::new(relaxed::Verifier { inner, check_chain: mode == TlsMode::VerifyCa });
            builder.dangerous().with_custom_certificate_verifier(verifier).with_no_client_auth()
        }
        TlsMode::Disable => unreachable!("no TLS config for sslmode=disable"),
    };
    Ok(config)
}

/// The certificate a server presents for TLS, checked as `verify-full` checks it (chain to the
/// roots pgvault trusts, host name), by a handshake of its own after PostgreSQL's
/// `SSLRequest`. Returns when it expires; `None` when the server does not offer TLS. An
/// untrusted or expired certificate, or a name that does not match, is a permanent error.
pub async fn server_certificate_expiry(spec: &ConnSpec) -> Result<Option<time::OffsetDateTime>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use x509_cert::der::Decode;
    let what = format!("TLS handshake with {}", spec.describe());
    let io = |e: std::io::Error| Error::transient(format!("{what}: {e}"));
    let connect = tokio::net::TcpStream::connect((spec.host.as_str(), spec.port));
    let mut tcp = tokio::time::timeout(std::time::Duration::from_secs(30), connect)
        .await
        .map_err(|_| Error::transient(format!("{what}: timed out connecting")))?
        .map_err(io)?;
    // SSLRequest: length 8, code 80877103; the server answers `S` (go ahead) or `N`.
    tcp.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]).await.map_err(io)?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await.map_err(io)?;
    if answer[0] != b'S' {
        return Ok(None);
    }
    let config = tls_config(TlsMode::VerifyFull, spec.ca_file.as_deref())?;
    let name = rustls::pki_types::ServerName::try_from(spec.host.clone())
        .map_err(|e| Error::permanent(format!("{what}: host name {:?}: {e}", spec.host)))?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.map_err(|e| {
        Error::permanent(format!("{what}: TLS certificate rejected: {e}"))
            .with_hint("trust the server's CA with PGVAULT_CA_FILE, or check the host name in the inventory")
    })?;
    let der = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or_else(|| Error::permanent(format!("{what}: the server sent no certificate")))?;
    let cert = x509_cert::Certificate::from_der(der.as_ref())
        .map_err(|e| Error::permanent(format!("{what}: the server's certificate does not parse: {e}")))?;
    let secs = cert.tbs_certificate.validity.not_after.to_unix_duration().as_secs();
    let not_after = time::OffsetDateTime::from_unix_timestamp(secs as i64)
        .map_err(|e| Error::permanent(format!("{what}: the certificate's expiry: {e}")))?;
    Ok(Some(not_after))
}

/// System roots plus an optional CA file.
pub fn root_store(ca_file: Option<&Path>) -> Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    let (certs, native) = native_and_extra_roots(ca_file)?;
    for (i, cert) in certs.into_iter().enumerate() {
        match roots.add(cert) {
            // A malformed system certificate is skipped, as every TLS client does.
            Err(_) if i < native => {}
            Err(e) => {
                let path = ca_file.map(|p| p.display().to_string()).unwrap_or_default();
                return Err(Error::permanent(format!("CA file {path}: {e}")));
            }
            Ok(()) => {}
        }
    }
    Ok(roots)
}

/// The system's root certificates, then those of the CA file (which must hold at least one),
/// and how many of them are the system's.
type Roots = (Vec<rustls::pki_types::CertificateDer<'static>>, usize);
fn native_and_extra_roots(ca_file: Option<&Path>) -> Result<Roots> {
    let mut certs = rustls_native_certs::load_native_certs().certs;
    let native = certs.len();
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).map_err(|e| Error::permanent(format!("read CA file {}: {e}", path.display())))?;
        let before = certs.len();
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            certs.push(cert.map_err(|e| Error::permanent(format!("CA file {}: {e}", path.display())))?);
        }
        if certs.len() == before {
            return Err(Error::permanent(format!("CA file {} holds no PEM certificate", path.display())));
        }
    }
    Ok((certs, native))
}

/// Verifiers for libpq's weaker modes, chosen explicitly in the inventory (and logged as a
/// warning): `verify-ca` checks the chain but not the host name; `require` checks nothing.
mod relaxed {
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{CertificateError, DigitallySignedStruct, Error, SignatureScheme};
    use std::sync::Arc;

    #[derive(Debug)]
    pub struct Verifier {
        pub inner: Arc<rustls::client::WebPkiServerVerifier>,
        pub check_chain: bool,
    }

    impl ServerCertVerifier for Verifier {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            intermediates: &[CertificateDer<'_>],
            server_name: &ServerName<'_>,
            ocsp: &[u8],
            now: UnixTime,
        ) -> Result<ServerCertVerified, Error> {
            if !self.check_chain {
                return Ok(ServerCertVerified::assertion());
            }
            match self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
                Ok(v) => Ok(v),
                Err(Error::InvalidCertificate(CertificateError::NotValidForName))
                | Err(Error::InvalidCertificate(CertificateError::NotValidForNameContext { .. })) => {
                    Ok(ServerCertVerified::assertion())
                }
                Err(e) => Err(e),
            }
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            self.inner.verify_tls12_signature(message, cert, dss)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            self.inner.verify_tls13_signature(message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.inner.supported_verify_schemes()
        }
    }
}

/// The server's version: (`server_version`, `server_version_num`).
pub async fn server_version(client: &tokio_postgres::Client) -> Result<(String, u32)> {
    let row = client
        .query_one("SELECT current_setting('server_version'), current_setting('server_version_num')::int", &[])
        .await
        .map_err(|e| query_error("read server version", e))?;
    let num: i32 = row.get(1);
    Ok((row.get(0), num as u32))
}

/// The major version of a `server_version_num` (10 and later).
pub fn major_of(version_num: u32) -> u32 {
    version_num / 10000
}

/// Databases that can be backed up: connectable, not templates.
pub async fn list_databases(client: &tokio_postgres::Client) -> Result<Vec<String>> {
    let rows = client
        .query("SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY datname", &[])
        .await
        .map_err(|e| query_error("list databases", e))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// User tables whose rows pg_dump dumps (ordinary tables and partitions, not extension members).
pub const USER_TABLES_SQL: &str = "\
SELECT n.nspname, c.relname, c.reltuples::bigint
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%'
  AND n.nspname NOT LIKE 'pg\\_temp%'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
ORDER BY 1, 2";

pub use crate::domain::sql::quote_ident;

// ---- tools -----------------------------------------------------------------------------------

/// The bin directories found on this machine: `/usr/lib/postgresql/*/bin`, newest first.
pub fn default_bin_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let major = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.is_dir().then_some((major, bin))
        })
        .collect();
    dirs.sort_by_key(|d| std::cmp::Reverse(d.0));
    dirs.into_iter().map(|(_, d)| d).collect()
}

/// A PostgreSQL client tool found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolBinary {
    pub path: PathBuf,
    /// `pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)`.
    pub version: String,
    pub major: u32,
}

/// Run `<tool> --version` in each directory that has it.
pub async fn find_tools(tool: &str, dirs: &[PathBuf]) -> Vec<ToolBinary> {
    let mut found = Vec::new();
    for dir in dirs {
        let path = dir.join(tool);
        if !path.is_file() {
            continue;
        }
        let Ok(out) = tokio::process::Command::new(&path).arg("--version").output().await else { continue };
        if !out.status.success() {
            continue;
        }
        let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if let Some(major) = parse_tool_major(&version)
            && !found.iter().any(|t: &ToolBinary| t.path == path)
        {
            found.push(ToolBinary { path, version, major });
        }
    }
    found
}

/// `pg_dump (PostgreSQL) 15.18 (Debian ...)` -> 15.
pub fn parse_tool_major(version: &str) -> Option<u32> {
    let after = version.split(") ").nth(1)?;
    let num = after.split(|c: char| !c.is_ascii_digit()).next()?;
    num.parse().ok()
}

/// Pick the tool for a server of major `server_major`: the same major if present, else the
/// oldest newer one. pg_dump must be at least as new as the server; pg_restore must be at least
/// as new as the archive and is best matched to the target server.
pub async fn pick_tool(tool: &str, dirs: &[PathBuf], min_major: u32, for_what: &str) -> Result<ToolBinary> {
    let mut found = find_tools(tool, dirs).await;
    found.sort_by_key(|t| t.major);
    if let Some(t) = found.iter().find(|t| t.major >= min_major) {
        return Ok(t.clone());
    }
    let have: Vec<String> = found.iter().map(|t| format!("{} ({})", t.major, t.path.display())).collect();
    let searched: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    Err(Error::permanent(format!(
        "no {tool} of PostgreSQL {min_major} or newer for {for_what}; found: {}; searched: {}",
        if have.is_empty() { "none".to_string() } else { have.join(", ") },
        if searched.is_empty() { "nothing".to_string() } else { searched.join(":") }
    ))
    .with_hint(format!(
        "install PostgreSQL {min_major}+ client tools and list their bin directory in PGVAULT_PG_BIN_DIRS"
    )))
}

// ---- a database's own properties -----------------------------------------------------------

/// Read database `datname`'s properties. At backup time this runs in the transaction whose
/// snapshot pg_dump dumps, so the properties and the dump describe the same moment (`pg_database`
/// and `pg_db_role_setting` are read through the transaction's snapshot like any table).
pub async fn database_properties(
    client: &impl tokio_postgres::GenericClient,
    datname: &str,
    version_num: u32,
) -> Result<crate::domain::dbprops::DatabaseProperties> {
    use crate::domain::dbprops::{AclItem, LocaleProvider, SecurityLabel, Setting};
    let major = major_of(version_num);
    let provider = if major >= 15 { "d.datlocprovider::text" } else { "'c'" };
    let locale = match major {
        17.. => "d.datlocale",
        15 | 16 => "d.daticulocale",
        _ => "NULL::text",
    };
    let rules = if major >= 16 { "d.daticurules" } else { "NULL::text" };
    let sql = format!(
        "SELECT pg_encoding_to_char(d.encoding)::text, {provider}, d.datcollate::text, d.datctype::text, \
         {locale}, {rules}, pg_get_userbyid(d.datdba)::text, d.datacl IS NULL, d.datconnlimit, t.spcname::text, \
         shobj_description(d.oid, 'pg_database') \
         FROM pg_database d JOIN pg_tablespace t ON t.oid = d.dattablespace WHERE d.datname = $1"
    );
    let what = format!("read the properties of database {datname:?}");
    let row = client
        .query_opt(&sql, &[&datname])
        .await
        .map_err(|e| query_error(&what, e))?
        .ok_or_else(|| Error::permanent(format!("{what}: no such database")))?;
    let acl_is_null: bool = row.get(7);
    let acl = if acl_is_null {
        None
    } else {
        let rows = client
            .query(
                "SELECT CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee)::text END, \
                 pg_get_userbyid(a.grantor)::text, a.privilege_type, a.is_grantable \
                 FROM pg_database d, aclexplode(d.datacl) a WHERE d.datname = $1",
                &[&datname],
            )
            .await
            .map_err(|e| query_error(&what, e))?;
        let mut items: Vec<AclItem> = rows
            .iter()
            .map(|r| AclItem { grantee: r.get(0), grantor: r.get(1), privilege: r.get(2), grantable: r.get(3) })
            .collect();
        items.sort();
        Some(items)
    };
    let rows = client
        .query(
            "SELECT CASE WHEN s.setrole = 0 THEN NULL ELSE pg_get_userbyid(s.setrole)::text END, c.setting \
             FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase, \
             unnest(s.setconfig) WITH ORDINALITY AS c(setting, n) WHERE d.datname = $1 ORDER BY 1 NULLS FIRST, c.n",
            &[&datname],
        )
        .await
        .map_err(|e| query_error(&what, e))?;
    let settings = rows
        .iter()
        .filter_map(|r| {
            let role: Option<String> = r.get(0);
            let text: String = r.get(1);
            let (name, value) = text.split_once('=')?;
            Some(Setting { role, name: name.to_string(), value: value.to_string() })
        })
        .collect();
    let rows = client
        .query(
            "SELECT l.provider, l.label FROM pg_shseclabel l JOIN pg_database d ON d.oid = l.objoid \
             WHERE l.classoid = 'pg_database'::regclass AND d.datname = $1 ORDER BY 1",
            &[&datname],
        )
        .await
        .map_err(|e| query_error(&what, e))?;
    let security_labels = rows.iter().map(|r| SecurityLabel { provider: r.get(0), label: r.get(1) }).collect();
    // Owners of the database's own objects (oids from FirstNormalObjectId on: not the system's).
    // Only meaningful in the database itself, which is where the backup reads it.
    let rows = client
        .query(
            "SELECT DISTINCT pg_get_userbyid(o)::text FROM ( \
               SELECT nspowner AS o FROM pg_namespace WHERE oid >= 16384 \
               UNION SELECT relowner FROM pg_class WHERE oid >= 16384 \
               UNION SELECT proowner FROM pg_proc WHERE oid >= 16384 \
               UNION SELECT typowner FROM pg_type WHERE oid >= 16384 \
               UNION SELECT collowner FROM pg_collation WHERE oid >= 16384 \
               UNION SELECT conowner FROM pg_conversion WHERE oid >= 16384 \
               UNION SELECT oprowner FROM pg_operator WHERE oid >= 16384 \
               UNION SELECT opfowner FROM pg_opfamily WHERE oid >= 16384 \
               UNION SELECT opcowner FROM pg_opclass WHERE oid >= 16384 \
               UNION SELECT extowner FROM pg_extension WHERE oid >= 16384 \
               UNION SELECT lomowner FROM pg_largeobject_metadata \
               UNION SELECT pubowner FROM pg_publication \
               UNION SELECT evtowner FROM pg_event_trigger \
               UNION SELECT fdwowner FROM pg_foreign_data_wrapper WHERE oid >= 16384 \
               UNION SELECT srvowner FROM pg_foreign_server \
               UNION SELECT stxowner FROM pg_statistic_ext \
               UNION SELECT dictowner FROM pg_ts_dict WHERE oid >= 16384 \
               UNION SELECT cfgowner FROM pg_ts_config WHERE oid >= 16384 \
             ) owners ORDER BY 1",
            &[],
        )
        .await
        .map_err(|e| query_error(&what, e))?;
    let owner: String = row.get(6);
    let object_owners = rows.iter().map(|r| r.get::<_, String>(0)).filter(|o| *o != owner).collect();
    Ok(crate::domain::dbprops::DatabaseProperties {
        encoding: row.get(0),
        locale_provider: LocaleProvider::from_catalog(row.get::<_, String>(1).as_str())?,
        collate: row.get(2),
        ctype: row.get(3),
        locale: row.get::<_, Option<String>>(4).filter(|s| !s.is_empty()),
        icu_rules: row.get::<_, Option<String>>(5).filter(|s| !s.is_empty()),
        owner,
        acl,
        connection_limit: row.get(8),
        tablespace: row.get(9),
        settings,
        comment: row.get(10),
        security_labels,
        object_owners,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_versions_parse() {
        assert_eq!(parse_tool_major("pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"), Some(15));
        assert_eq!(parse_tool_major("pg_restore (PostgreSQL) 17.11"), Some(17));
        assert_eq!(parse_tool_major("garbage"), None);
        assert_eq!(major_of(150018), 15);
        assert_eq!(major_of(170011), 17);
    }

    #[test]
    fn tool_env_carries_password_only_in_pgpassword_and_trusts_what_pgvault_trusts() {
        use std::os::unix::fs::PermissionsExt;
        let ca = rcgen::generate_simple_self_signed(vec!["ca.example".into()]).unwrap().cert.pem();
        let ca_file = std::env::temp_dir().join(format!("pgvault-test-ca-{}.pem", uuid::Uuid::new_v4().simple()));
        std::fs::write(&ca_file, &ca).unwrap();
        let spec = ConnSpec {
            server: "s".into(),
            host: "db.example".into(),
            port: 5432,
            user: "u".into(),
            dbname: "d".into(),
            tls: TlsMode::VerifyFull,
            password: Some(Secret::new("pw-123")),
            ca_file: Some(ca_file.clone()),
        };
        let env = spec.tool_env().unwrap();
        let with_pw: Vec<_> = env.iter().filter(|(_, v)| v.contains("pw-123")).map(|(k, _)| k.as_str()).collect();
        assert_eq!(with_pw, ["PGPASSWORD"]);
        assert!(env.contains(&("PGSSLMODE".into(), "verify-full".into())));
        assert!(!format!("{spec:?}").contains("pw-123"));
        // The tools get a bundle: the system's roots and the CA file, in a private file.
        let bundle = PathBuf::from(&env.iter().find(|(k, _)| k == "PGSSLROOTCERT").unwrap().1);
        assert_ne!(bundle, ca_file);
        let text = std::fs::read_to_string(&bundle).unwrap();
        assert!(text.contains(ca.trim()), "the CA file's certificate is in the bundle");
        let native = rustls_native_certs::load_native_certs().certs.len();
        assert_eq!(text.matches("-----BEGIN CERTIFICATE-----").count(), native + 1);
        assert_eq!(std::fs::metadata(&bundle).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(bundle.parent().unwrap()).unwrap().permissions().mode() & 0o777, 0o700);
        // Written once per process and CA file.
        assert_eq!(tool_ca_bundle(Some(&ca_file)).unwrap(), bundle);
        // pgvault's own root store holds the same certificates.
        assert_eq!(root_store(Some(&ca_file)).unwrap().len(), native + 1);
        let _ = std::fs::remove_file(&ca_file);
    }

    #[tokio::test]
    async fn missing_tool_error_names_versions() {
        let e = pick_tool("pg_dump", &[PathBuf::from("/nonexistent")], 99, "server \"x\"").await.unwrap_err();
        assert!(e.is_permanent());
        assert!(e.to_string().contains("no pg_dump of PostgreSQL 99"), "{e}");
    }
}
