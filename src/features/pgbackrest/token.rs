//! The token pgBackRest gets: a container-scoped (`sr=c`), HTTPS-only user-delegation SAS.
//!
//! It is signed (by the [`SasSigner`](super::SasSigner) seam, on Azure with the official
//! `azure_storage_sas` builder) with a user delegation key obtained with the function's managed
//! identity, so it grants at most what that identity may do, dies with the key, and needs no
//! account key. This module only reads tokens: their fields, expiry and shape.

use std::collections::HashMap;
use time::OffsetDateTime;

/// `2026-11-21T02:00:00Z`: how SAS fields (`st`, `se`, `skt`, `ske`) write times.
pub fn sas_time(t: OffsetDateTime) -> String {
    let fmt = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    t.to_offset(time::UtcOffset::UTC).format(&fmt).expect("valid format")
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
    use time::macros::datetime;

    #[test]
    fn reads_fields_expiry_and_shape() {
        let sas = "sv=2026-04-06&sr=c&st=2026-11-21T00%3A00%3A00Z&se=2026-11-21T12%3A00%3A00Z&sp=racwdl&spr=https\
                   &skoid=oid&sktid=tid&sig=abc%2B%3D";
        let f = fields(sas);
        assert_eq!((f["sr"].as_str(), f["spr"].as_str(), f["sp"].as_str()), ("c", "https", "racwdl"));
        assert_eq!(f["sig"], "abc+=");
        assert_eq!(expiry(sas), Some(datetime!(2026-11-21 12:00 UTC)));
        assert_eq!(sas_time(datetime!(2026-11-21 12:00 UTC)), "2026-11-21T12:00:00Z");
        assert!(check_shape(sas).is_ok());
        assert!(check_shape("sv=1&sig=x&se=y&sp=r&sr=b&spr=https&skoid=o").unwrap_err().contains("container-scoped"));
        assert!(check_shape(&sas.replace("spr=https", "spr=https,http")).unwrap_err().contains("HTTPS-only"));
        assert!(check_shape(&sas.replace("&skoid=oid", "")).unwrap_err().contains("skoid"));
    }
}
