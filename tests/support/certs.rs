//! A throwaway certificate authority and server certificates signed by it.
//!
//! rustls rejects a lone self-signed server certificate, so tests get a CA plus a leaf
//! (SANs `IP:127.0.0.1`, `DNS:localhost`). `TestCa::new()` twice gives two independent CAs; the
//! second one serves as an "untrusted CA".

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use tempfile::TempDir;

pub struct TestCa {
    dir: TempDir,
    ca_pem: String,
    ca_path: PathBuf,
    cert_path: PathBuf,
    key_path: PathBuf,
    issuer: Issuer<'static, KeyPair>,
    leaves: AtomicUsize,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").field("dir", &self.dir.path()).finish_non_exhaustive()
    }
}

impl TestCa {
    /// A new CA and a leaf signed by it with SANs `IP:127.0.0.1` and `DNS:localhost`, written
    /// as PEM files into a fresh directory under /tmp (removed on drop).
    pub fn new() -> TestCa {
        let dir = tempfile::Builder::new().prefix("pgvault-ca-").tempdir_in("/tmp").expect("create CA tempdir");
        // Traversable by other users (e.g. `postgres` when tests run as root); keys stay 0600.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod CA tempdir");

        let ca_key = KeyPair::generate().expect("generate CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("pgvault test CA {}", uuid::Uuid::new_v4()));
        dn.push(DnType::OrganizationName, "pgvault tests");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + time::Duration::days(365);
        let ca_cert = params.self_signed(&ca_key).expect("self-sign CA");
        let ca_pem = ca_cert.pem();
        let ca_path = dir.path().join("ca.pem");
        write_file(&ca_path, ca_pem.as_bytes(), 0o644);

        let mut ca = TestCa {
            ca_pem,
            ca_path,
            cert_path: PathBuf::new(),
            key_path: PathBuf::new(),
            issuer: Issuer::new(params, ca_key),
            leaves: AtomicUsize::new(0),
            dir,
        };
        let (cert_path, key_path) = ca.issue_leaf(&["127.0.0.1", "localhost"]);
        ca.cert_path = cert_path;
        ca.key_path = key_path;
        ca
    }

    /// The CA certificate (PEM file).
    pub fn ca_pem_path(&self) -> &Path {
        &self.ca_path
    }

    /// The default leaf (server) certificate, PEM, for 127.0.0.1 and localhost.
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// The default leaf's private key (PKCS#8 PEM, mode 0600).
    pub fn key_path(&self) -> &Path {
        &self.key_path
    }

    /// The CA certificate as PEM text.
    pub fn ca_pem(&self) -> String {
        self.ca_pem.clone()
    }

    /// Directory holding this CA's files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Another server certificate signed by this CA. Each entry of `sans` that parses as an IP
    /// address becomes an IP SAN, anything else a DNS SAN (e.g. `&["wrong.example"]` for a
    /// host-name mismatch test). Returns (certificate PEM path, private key PEM path).
    pub fn issue_leaf(&self, sans: &[&str]) -> (PathBuf, PathBuf) {
        let n = self.leaves.fetch_add(1, Ordering::Relaxed);
        let key = KeyPair::generate().expect("generate leaf key");
        let mut params = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .expect("leaf params (invalid SAN?)");
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, sans.first().copied().unwrap_or("pgvault test leaf"));
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + time::Duration::days(30);
        let cert = params.signed_by(&key, &self.issuer).expect("sign leaf certificate");

        let name = if n == 0 { "server".to_string() } else { format!("leaf-{n}") };
        let cert_path = self.dir.path().join(format!("{name}.crt"));
        let key_path = self.dir.path().join(format!("{name}.key"));
        write_file(&cert_path, cert.pem().as_bytes(), 0o644);
        write_file(&key_path, key.serialize_pem().as_bytes(), 0o600);
        (cert_path, key_path)
    }

    /// A reqwest client that trusts only this CA (no system roots), no proxy.
    pub fn reqwest_client(&self) -> reqwest::Client {
        let cert = reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).expect("parse CA PEM");
        reqwest::Client::builder().tls_certs_only([cert]).no_proxy().build().expect("build reqwest client")
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

fn write_file(path: &Path, contents: &[u8], mode: u32) {
    std::fs::write(path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}
