//! The token pgBackRest gets: a container-scoped (`sr=c`), HTTPS-only user-delegation SAS.
//!
//! It is signed with a user delegation key obtained with the function's managed identity, so it
//! grants at most what that identity may do, dies with the key, and needs no account key. The
//! signature follows service version [`SAS_VERSION`](crate::azure::sas::SAS_VERSION) (2025-07-05), which Azure and Azurite both
//! validate; see `crate::azure::sas` for why the SDK's own builder is not used. That module's
//! [`DelegationKey`] is reused as is.

use crate::domain::sas::{DelegationKey, sign_user_delegation_sas};
use crate::domain::secret::Secret;
use std::collections::HashMap;
use time::OffsetDateTime;

pub use crate::domain::sas::sas_time;

/// Sign a container SAS for `account`/`container` with `permissions` (letters of `racwdl`),
/// valid from `start` to `expiry`, HTTPS only. Returns the query string (no leading `?`).
pub fn container_sas(
    account: &str,
    container: &str,
    permissions: &str,
    key: &DelegationKey,
    start: OffsetDateTime,
    expiry: OffsetDateTime,
) -> Secret {
    Secret::new(sign_user_delegation_sas(
        key,
        "c",
        &format!("/blob/{account}/{container}"),
        permissions,
        Some(&sas_time(start)),
        &sas_time(expiry),
    ))
}

/// The query fields of a SAS.
pub fn fields(sas: &str) -> HashMap<String, String> {
    url::form_urlencoded::parse(sas.trim_start_matches('?').as_bytes()).into_owned().collect()
}

/// A SAS's `se` (expiry), if it has a readable one.
pub fn expiry(sas: &str) -> Option<OffsetDateTime> {
    let se = fields(sas).remove("se")?;
    OffsetDateTime::parse(&se, &time::format_description::well_known::Rfc3339).ok()
}

/// Whether `sas` looks like a user-delegation container SAS for HTTPS (what sync accepts).
pub fn check_shape(sas: &str) -> Result<(), String> {
    let f = fields(sas);
    for k in ["sig", "se", "sv", "sp", "skoid"] {
        if !f.contains_key(k) {
            return Err(format!("the token has no `{k}` field: it is not a user-delegation SAS"));
        }
    }
    if f.get("sr").map(String::as_str) != Some("c") {
        return Err("the token is not container-scoped (sr=c)".into());
    }
    if f.get("spr").map(String::as_str) != Some("https") {
        return Err("the token is not HTTPS-only (spr=https)".into());
    }
    if sas.contains(['\n', '\r']) {
        return Err("the token contains a line break".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use hmac::{Hmac, Mac};
    use time::macros::datetime;

    #[test]
    fn container_sas_signs_the_documented_layout() {
        let key = DelegationKey {
            oid: "oid".into(),
            tid: "tid".into(),
            start: "2026-11-21T00:00:00Z".into(),
            expiry: "2026-11-22T00:00:00Z".into(),
            service: "b".into(),
            version: "2025-11-05".into(),
            value: b"secret key".to_vec(),
        };
        let sas = container_sas(
            "acct",
            "pgbr",
            "racwdl",
            &key,
            datetime!(2026-11-21 00:00 UTC),
            datetime!(2026-11-21 12:00 UTC),
        );
        let f = fields(sas.expose());
        assert_eq!((f["sr"].as_str(), f["spr"].as_str(), f["sp"].as_str()), ("c", "https", "racwdl"));
        assert_eq!(f["skoid"], "oid");
        let sts = "racwdl\n2026-11-21T00:00:00Z\n2026-11-21T12:00:00Z\n/blob/acct/pgbr\noid\ntid\n\
                   2026-11-21T00:00:00Z\n2026-11-22T00:00:00Z\nb\n2025-11-05\n\n\n\n\n\n\nhttps\n2025-07-05\nc\n\n\n\n\n\n\n";
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"secret key").unwrap();
        mac.update(sts.as_bytes());
        assert_eq!(f["sig"], base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()));
        assert_eq!(expiry(sas.expose()), Some(datetime!(2026-11-21 12:00 UTC)));
        assert!(check_shape(sas.expose()).is_ok());
        assert!(check_shape("sv=1&sig=x&se=y&sp=r&sr=b&spr=https").is_err());
        assert!(format!("{sas:?}").find(&f["sig"]).is_none());
    }
}
