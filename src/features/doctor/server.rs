//! Doctor's checks of one server as a backup reads it: the login (a Key Vault secret is read
//! as a backup reads it), the connection, TLS with the certificate's expiry, and a pg_dump of
//! the right major (the upgrade trap: a server upgraded past every configured tool).

use super::{from_error, server_object};
use crate::config::context::Ctx;
use crate::domain::doctor::{CERT_WARN_DAYS, Finding, Severity, days_left};
use crate::domain::inventory::{CredentialRef, Server, TlsMode};
use crate::seams::pg::{self, ConnSpec};

/// The checks of `server`; with a working connection, its login for the next checks.
pub async fn check(ctx: &Ctx, server: &Server) -> (Vec<Finding>, Option<ConnSpec>) {
    let object = server_object(&server.name);
    let mut out = Vec::new();
    let spec = match ctx.conn_spec(&server.name, &server.maintenance_db).await {
        Ok(spec) => spec,
        Err(e) => {
            out.push(login_failed(server, &e));
            return (out, None);
        }
    };
    if spec.tls != TlsMode::VerifyFull && !spec.host.starts_with('/') {
        out.push(
            Finding::warning(
                "tls",
                &object,
                format!("the connection uses sslmode {}, not verify-full", spec.tls.as_libpq()),
            )
            .hint("set \"tls\": \"verify-full\" in the inventory (and trust the server's CA with PGVAULT_CA_FILE)"),
        );
    }
    let client = match pg::connect(&spec).await {
        Ok(c) => c,
        Err(e) => {
            out.push(from_error("connection", Severity::Error, &object, &e));
            return (out, None);
        }
    };
    if spec.tls != TlsMode::Disable && !spec.host.starts_with('/') {
        out.extend(certificate(&spec, &object).await);
    }
    match pg::server_version(&client).await {
        Err(e) => out.push(from_error("connection", Severity::Error, &object, &e)),
        Ok((version, num)) => {
            let dirs = ctx.settings.bin_dirs_for(server);
            let major = pg::major_of(num);
            // The very choice a backup makes (seams::pg::pick_tool), so doctor and backup agree.
            if let Err(e) = pg::pick_tool("pg_dump", &dirs, major, &object).await {
                let mut f = from_error("pg-dump-version", Severity::Error, &object, &e);
                f.problem =
                    format!("the server runs PostgreSQL {version}, newer than every configured pg_dump: {}", f.problem);
                out.push(f);
            }
        }
    }
    (out, Some(spec))
}

/// A login that could not be read (a Key Vault secret, an Entra token, a setting), named after
/// where it comes from.
pub fn login_failed(server: &Server, e: &crate::domain::error::Error) -> Finding {
    match &server.credentials {
        CredentialRef::KeyVault { vault, secret } => from_error(
            "key-vault-secret",
            Severity::Error,
            format!("secret {secret:?} in vault {vault:?} ({}'s login)", server_object(&server.name)),
            e,
        ),
        _ => from_error("credentials", Severity::Error, server_object(&server.name), e),
    }
}

/// The server certificate's expiry, checked as verify-full checks it.
async fn certificate(spec: &ConnSpec, object: &str) -> Option<Finding> {
    let now = time::OffsetDateTime::now_utc();
    match pg::server_certificate_expiry(spec).await {
        Ok(None) => Some(Finding::error("tls", object, "the server does not offer TLS").hint(
            "turn on ssl on the server, or set \"tls\": \"disable\" in the inventory for a local socket or test server",
        )),
        Ok(Some(not_after)) => {
            let left = days_left(not_after, now);
            let until = crate::features::report::rfc(not_after);
            if left < 0 {
                Some(Finding::error("tls-expiry", object, format!("the server's TLS certificate expired at {until}")))
            } else if left < CERT_WARN_DAYS {
                Some(
                    Finding::warning(
                        "tls-expiry",
                        object,
                        format!("the server's TLS certificate expires in {left} days ({until})"),
                    )
                    .hint("renew the server's certificate before then: verify-full refuses an expired one"),
                )
            } else {
                None
            }
        }
        // Only verify-full needs the host name and chain to hold; weaker modes were warned about.
        Err(e) if spec.tls == TlsMode::VerifyFull => Some(from_error("tls", Severity::Error, object, &e)),
        Err(e) => Some(from_error("tls", Severity::Warning, object, &e)),
    }
}
