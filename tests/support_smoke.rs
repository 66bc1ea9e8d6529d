//! Proves the shared test kit in `tests/support/` works.

mod support;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use support::{Azurite, Cluster, ClusterOptions, IdentityServer, TestCa, mint_jwt, test_credential};

const STORAGE: &str = "https://storage.azure.com";
const X_MS_VERSION: &str = "2023-11-03";

fn jwt_claims(jwt: &str) -> serde_json::Value {
    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(parts.len(), 3, "JWT has three parts: {jwt}");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).expect("base64url claims")).expect("JSON claims")
}

#[tokio::test]
async fn azurite_https_oauth_and_cleanup() {
    let ca = TestCa::new();
    let azurite = Azurite::start(&ca).await;
    assert!(azurite.blob_endpoint.starts_with("https://127.0.0.1:"));
    assert!(azurite.blob_endpoint.ends_with("/devstoreaccount1"));
    assert!(azurite.queue_endpoint.ends_with("/devstoreaccount1"));
    assert_ne!(azurite.blob_endpoint, azurite.queue_endpoint);

    let client = ca.reqwest_client();
    let container = format!("{}/smoke?restype=container", azurite.blob_endpoint);

    // Without a token: rejected.
    let anon = client
        .put(&container)
        .header("x-ms-version", X_MS_VERSION)
        .header("content-length", "0")
        .send()
        .await
        .expect("HTTPS request to Azurite");
    assert!(anon.status() == 401 || anon.status() == 403, "anonymous create container: {}", anon.status());

    // With a minted token: accepted (Azurite --oauth basic).
    let created = client
        .put(&container)
        .header("x-ms-version", X_MS_VERSION)
        .header("content-length", "0")
        .bearer_auth(mint_jwt(STORAGE))
        .send()
        .await
        .expect("create container");
    assert_eq!(created.status(), 201, "{}", created.text().await.unwrap());

    let listed = client
        .get(format!("{}?comp=list", azurite.blob_endpoint))
        .header("x-ms-version", X_MS_VERSION)
        .bearer_auth(mint_jwt(STORAGE))
        .send()
        .await
        .expect("list containers");
    assert_eq!(listed.status(), 200);
    assert!(listed.text().await.unwrap().contains("<Name>smoke</Name>"));

    // A token for another audience is refused.
    let wrong_aud = client
        .get(format!("{}?comp=list", azurite.blob_endpoint))
        .header("x-ms-version", X_MS_VERSION)
        .bearer_auth(mint_jwt("https://vault.azure.net"))
        .send()
        .await
        .expect("list containers, wrong audience");
    assert!(wrong_aud.status() == 401 || wrong_aud.status() == 403);

    // Queue endpoint, same token audience.
    let queue = client
        .put(format!("{}/smoke-q", azurite.queue_endpoint))
        .header("x-ms-version", X_MS_VERSION)
        .header("content-length", "0")
        .bearer_auth(mint_jwt(STORAGE))
        .send()
        .await
        .expect("create queue");
    assert_eq!(queue.status(), 201, "{}", queue.text().await.unwrap());

    // A client trusting another CA fails the TLS handshake.
    let other = TestCa::new();
    let err = other
        .reqwest_client()
        .get(format!("{}?comp=list", azurite.blob_endpoint))
        .send()
        .await
        .expect_err("untrusted CA must fail");
    assert!(err.is_connect(), "{err:?}");

    // Drop: process gone, workspace removed.
    let location = azurite.location().to_path_buf();
    let url = format!("{}?comp=list", azurite.blob_endpoint);
    assert!(location.exists());
    drop(azurite);
    assert!(!location.exists(), "Azurite workspace not removed");
    assert!(client.get(&url).send().await.is_err(), "Azurite still answering");
}

#[tokio::test]
async fn identity_server_issues_tokens_azurite_accepts() {
    let ids = IdentityServer::start().await;
    assert!(ids.endpoint.starts_with("http://127.0.0.1:"));
    let env = ids.env();
    assert_eq!(env[0], ("IDENTITY_ENDPOINT".to_string(), ids.endpoint.clone()));
    assert_eq!(env[1], ("IDENTITY_HEADER".to_string(), ids.header.clone()));

    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let url = format!("{}?api-version=2019-08-01&resource={STORAGE}", ids.endpoint);

    // Missing or wrong secret header: 401, no token counted.
    let no_header = http.get(&url).send().await.unwrap();
    assert_eq!(no_header.status(), 401);
    let wrong = http.get(&url).header("x-identity-header", "nope").send().await.unwrap();
    assert_eq!(wrong.status(), 401);
    assert!(wrong.text().await.unwrap().contains("error"));
    assert_eq!(ids.requests(), 0);

    let ok = http.get(&url).header("x-identity-header", &ids.header).send().await.unwrap();
    assert_eq!(ok.status(), 200);
    let body: serde_json::Value = serde_json::from_slice(&ok.bytes().await.unwrap()).unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["resource"], STORAGE);
    let expires_on: i64 = body["expires_on"].as_str().expect("expires_on is a string").parse().unwrap();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    assert!(expires_on > now + 3000 && expires_on <= now + 3600);
    let token = body["access_token"].as_str().unwrap().to_string();
    let claims = jwt_claims(&token);
    assert_eq!(claims["aud"], STORAGE);
    assert!(claims["iss"].as_str().unwrap().starts_with("https://sts.windows.net/"));
    assert!(claims["nbf"].as_i64().unwrap() < now);
    assert!(claims["oid"].is_string() && claims["tid"].is_string());
    assert_eq!(ids.requests(), 1);
    assert_eq!(ids.resources(), vec![STORAGE.to_string()]);

    // Failing mode.
    ids.set_failing(true);
    let failed = http.get(&url).header("x-identity-header", &ids.header).send().await.unwrap();
    assert_eq!(failed.status(), 500);
    ids.set_failing(false);
    assert_eq!(ids.requests(), 1);
    assert_eq!(ids.attempts(), 4);

    // The served token works against Azurite.
    let ca = TestCa::new();
    let azurite = Azurite::start(&ca).await;
    let created = ca
        .reqwest_client()
        .put(format!("{}/from-identity?restype=container", azurite.blob_endpoint))
        .header("x-ms-version", X_MS_VERSION)
        .header("content-length", "0")
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201, "{}", created.text().await.unwrap());
}

#[tokio::test]
async fn test_credential_mints_storage_tokens() {
    let cred = test_credential();
    let token = cred.get_token(&["https://storage.azure.com/.default"], None).await.unwrap();
    let claims = jwt_claims(token.token.secret());
    assert_eq!(claims["aud"], STORAGE);
    assert!(token.expires_on > time::OffsetDateTime::now_utc() + time::Duration::minutes(50));
    assert!(cred.get_token(&["a", "b"], None).await.is_err());
}

#[tokio::test]
async fn pg_cluster_answers_and_is_cleaned_up() {
    let cluster = Cluster::start();
    assert_eq!(cluster.version, 15);
    assert_eq!(cluster.host, "127.0.0.1");
    assert_eq!(cluster.psql("postgres", "select 1"), "1");
    assert_eq!(
        cluster.psql("postgres", "create table t(i int); insert into t values (1),(2); select sum(i) from t;"),
        "3"
    );
    let err = cluster.try_psql("postgres", "select * from no_such_table").unwrap_err();
    assert!(err.contains("no_such_table"), "{err}");
    assert!(cluster.conninfo("app").contains(&format!("port={}", cluster.port)));

    let client = cluster.client("postgres").await;
    let row = client.query_one("select 1::int4", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 1);
    let max: String = client.query_one("show max_connections", &[]).await.unwrap().get(0);
    assert_eq!(max, "50");
    drop(client);

    let base = cluster.base_dir().to_path_buf();
    let port = cluster.port;
    assert!(cluster.data_dir().join("PG_VERSION").exists());
    drop(cluster);
    assert!(!base.exists(), "cluster tempdir not removed");
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err(), "server still listening on {port}");
}

#[test]
fn pg_cluster_ssl_password_and_hba() {
    let ca = TestCa::new();
    let cluster = Cluster::start_with(ClusterOptions {
        ssl: Some((ca.cert_path().to_path_buf(), ca.key_path().to_path_buf())),
        password_auth: true,
        hba: vec!["host all nobody 127.0.0.1/32 reject".to_string()],
        ..Default::default()
    });
    assert_eq!(cluster.psql("postgres", "show ssl"), "on");
    assert_eq!(cluster.psql("postgres", "select ssl from pg_stat_ssl where pid = pg_backend_pid()"), "t");
    assert!(cluster.conninfo("postgres").contains("password=postgres-test-pw"));
    cluster.psql("postgres", "create role nobody login");

    // Wrong password is refused over TCP.
    let out = std::process::Command::new(cluster.bin_dir.join("psql"))
        .args(["-X", "-At", "-c", "select 1"])
        .arg(format!("host=127.0.0.1 port={} user=postgres dbname=postgres password=wrong", cluster.port))
        .env_remove("PGPASSWORD")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("password authentication failed"));

    // The prepended hba line wins over the defaults.
    let out = std::process::Command::new(cluster.bin_dir.join("psql"))
        .args(["-X", "-At", "-c", "select 1"])
        .arg(format!("host=127.0.0.1 port={} user=nobody dbname=postgres password=x", cluster.port))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("rejects connection"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn pg_newer_major_when_installed() {
    let Some(bin) = support::newer_bin_dir() else {
        eprintln!("no newer PostgreSQL installed (.pgvault-local/pg or PGVAULT_TEST_PG_NEWER_BIN)");
        return;
    };
    let cluster = Cluster::start_with(ClusterOptions { bin_dir: bin, ..Default::default() });
    assert!(cluster.version > 15);
    assert_eq!(
        cluster.psql("postgres", "select current_setting('server_version_num')::int / 10000"),
        cluster.version.to_string()
    );
}

/// Verify `cert_path` for `host` with a webpki verifier trusting only `ca`.
fn verify_leaf(ca: &TestCa, cert_path: &std::path::Path, host: &str) -> Result<(), rustls::Error> {
    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    let mut roots = rustls::RootCertStore::empty();
    let ca_der: CertificateDer<'static> = rustls_pemfile::certs(&mut ca.ca_pem().as_bytes()).next().unwrap().unwrap();
    roots.add(ca_der).unwrap();
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        std::sync::Arc::new(roots),
        std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
    )
    .build()
    .unwrap();
    let pem = std::fs::read(cert_path).unwrap();
    let leaf = rustls_pemfile::certs(&mut pem.as_slice()).next().unwrap().unwrap();
    verifier
        .verify_server_cert(&leaf, &[], &ServerName::try_from(host.to_string()).unwrap(), &[], UnixTime::now())
        .map(|_| ())
}

#[test]
fn leaves_verify_against_their_own_ca_and_names_only() {
    let ca = TestCa::new();
    let other = TestCa::new();
    verify_leaf(&ca, ca.cert_path(), "127.0.0.1").expect("default leaf for 127.0.0.1");
    verify_leaf(&ca, ca.cert_path(), "localhost").expect("default leaf for localhost");
    assert!(verify_leaf(&other, ca.cert_path(), "127.0.0.1").is_err(), "untrusted CA accepted");

    let (wrong, wrong_key) = ca.issue_leaf(&["wrong.example"]);
    assert!(wrong_key.exists());
    assert_ne!(wrong, ca.cert_path());
    verify_leaf(&ca, &wrong, "wrong.example").expect("extra leaf for its own name");
    assert!(verify_leaf(&ca, &wrong, "127.0.0.1").is_err(), "host-name mismatch accepted");
    assert!(ca.ca_pem_path().exists() && ca.ca_pem().contains("BEGIN CERTIFICATE"));
}
