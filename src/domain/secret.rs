//! Secret values and redaction.
//!
//! Passwords, tokens, SAS strings and connection strings live in [`Secret`], which has no
//! `Display` and whose `Debug` prints `**redacted**`. The only way to the value is
//! [`Secret::expose`], so every place that hands a secret on is easy to find with grep.
//! [`redact`] scrubs free text (tool output, URLs, error messages from SDKs) of the shapes a
//! secret takes in the wild: a SAS `sig=`, an `Authorization` header, a password in a URI or a
//! key/value connection string.

use std::fmt;

/// A secret string. Not `Display`; `Debug` is redacted; compared in constant time is not needed
/// because secrets are never compared with attacker input here.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value itself. Call only where the secret leaves pgvault for its rightful consumer:
    /// an environment variable of a child process, a password message, a signed URL.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("**redacted**")
    }
}

impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

pub const REDACTED: &str = "**redacted**";

/// A URL that is itself a credential: a read-only SAS URL of an exported file (its `sig=`).
///
/// The one rule for secrets in job records: `Debug` prints `**redacted**`; it is serialized as
/// the plain URL, because the record is where its operator reads it (`pgvault jobs --json`);
/// a view for anyone else first calls [`SecretUrl::withhold`] (the `jobs` function does, through
/// `JobRecord::withhold_secrets`), which puts a note in its place.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretUrl {
    Url(Secret),
    /// Withheld from this view; the note says where the operator reads it.
    Withheld(String),
}

/// A note in place of a withheld URL starts so (how a serialized view reads back).
const WITHHELD: &str = "withheld:";

impl SecretUrl {
    pub fn new(url: Secret) -> Self {
        SecretUrl::Url(url)
    }

    /// The URL, for its rightful reader; `None` once withheld.
    pub fn expose(&self) -> Option<&str> {
        match self {
            SecretUrl::Url(s) => Some(s.expose()),
            SecretUrl::Withheld(_) => None,
        }
    }

    /// Put `note` (which must say where the operator reads the URL) in the URL's place.
    pub fn withhold(&mut self, note: &str) {
        debug_assert!(note.starts_with(WITHHELD), "{note}");
        *self = SecretUrl::Withheld(note.to_string());
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretUrl::Url(_) => f.write_str(REDACTED),
            SecretUrl::Withheld(note) => write!(f, "{note:?}"),
        }
    }
}

impl serde::Serialize for SecretUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            SecretUrl::Url(u) => s.serialize_str(u.expose()),
            SecretUrl::Withheld(note) => s.serialize_str(note),
        }
    }
}

impl<'de> serde::Deserialize<'de> for SecretUrl {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(if s.starts_with(WITHHELD) { SecretUrl::Withheld(s) } else { SecretUrl::Url(Secret(s)) })
    }
}

/// Scrub text of anything shaped like a secret.
///
/// Covers `sig=...` (SAS signatures, in URLs or bare query strings), `Authorization:`/`Bearer`
/// values, `password=...` in key/value connection strings, and `user:password@` in URIs.
pub fn redact(text: &str) -> String {
    let mut out = redact_after(text, "sig=", |c| c == '&' || c == '"' || c == '\'' || c.is_whitespace());
    out = redact_after(&out, "Bearer ", |c| c == '"' || c == '\'' || c == ',' || c.is_whitespace());
    out = redact_after(&out, "password=", |c| c == '&' || c == '"' || c == '\'' || c.is_whitespace());
    out = redact_after(&out, "PGPASSWORD=", |c| c == '"' || c == '\'' || c.is_whitespace());
    out = redact_jwts(&out);
    redact_uri_passwords(&out)
}

/// A bare JWT (an Entra access token, e.g. echoed by a tool as the password it was given):
/// `eyJ<base64url>.<base64url>.<base64url>`.
fn redact_jwts(text: &str) -> String {
    let is_b64 = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut pos = 0;
    while let Some(found) = text[pos..].find("eyJ") {
        let start = pos + found;
        // The token's three segments: two dots, base64url everywhere else.
        let mut end = start;
        let mut dots = 0;
        while end < bytes.len() && (is_b64(bytes[end]) || (bytes[end] == b'.' && dots < 2)) {
            dots += usize::from(bytes[end] == b'.');
            end += 1;
        }
        let preceded_by_b64 = start > 0 && is_b64(bytes[start - 1]);
        if dots == 2 && !preceded_by_b64 && end - start >= 20 {
            out.push_str(&text[pos..start]);
            out.push_str(REDACTED);
        } else {
            out.push_str(&text[pos..end.max(start + 3)]);
        }
        pos = end.max(start + 3);
    }
    out.push_str(&text[pos..]);
    out
}

/// Replace the value after every case-insensitive occurrence of `key` up to a stop character.
fn redact_after(text: &str, key: &str, stop: impl Fn(char) -> bool) -> String {
    let lower = text.to_ascii_lowercase();
    let key_lower = key.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut pos = 0;
    while let Some(found) = lower[pos..].find(&key_lower) {
        let value_start = pos + found + key.len();
        out.push_str(&text[pos..value_start]);
        let value_len = text[value_start..].find(&stop).unwrap_or(text.len() - value_start);
        if value_len > 0 {
            out.push_str(REDACTED);
        }
        pos = value_start + value_len;
    }
    out.push_str(&text[pos..]);
    out
}

/// `scheme://user:secret@host` -> `scheme://user:**redacted**@host`.
fn redact_uri_passwords(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let authority_end = tail.find(|c: char| c == '/' || c == '?' || c.is_whitespace()).unwrap_or(tail.len());
        let authority = &tail[..authority_end];
        match (authority.rfind('@'), authority.find(':')) {
            (Some(at), Some(colon)) if colon < at => {
                out.push_str(&authority[..=colon]);
                out.push_str(REDACTED);
                out.push_str(&authority[at..]);
            }
            _ => out.push_str(authority),
        }
        rest = &tail[authority_end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "**redacted**");
        assert!(!format!("{:?}", Some(&s)).contains("hunter2"));
    }

    #[test]
    fn redacts_sas_signature() {
        let url = "https://a.blob.core.windows.net/c?sv=2024&sig=abc%2Bdef&se=2026";
        let r = redact(url);
        assert!(!r.contains("abc%2Bdef"), "{r}");
        assert!(r.contains("sv=2024") && r.contains("se=2026"));
    }

    #[test]
    fn redacts_connection_string_passwords() {
        let r = redact("host=x user=u password=s3cret dbname=d");
        assert!(!r.contains("s3cret"), "{r}");
        let r = redact("postgres://u:s3cret@db.example:5432/d and Authorization: Bearer eyJhbGc.x.y");
        assert!(!r.contains("s3cret") && !r.contains("eyJhbGc"), "{r}");
        assert!(r.contains("postgres://u:**redacted**@db.example"), "{r}");
    }

    #[test]
    fn redacts_bare_jwts() {
        let jwt = "eyJ0eXAiOiJKV1QifQ.eyJhdWQiOiJ4In0.c2lnbmF0dXJl";
        let r = redact(&format!("password authentication failed; PGPASSWORD {jwt}, token=\"{jwt}\"."));
        assert!(!r.contains("eyJhdWQiOiJ4In0") && !r.contains("c2lnbmF0dXJl"), "{r}");
        assert_eq!(redact("keyJust.some.text"), "keyJust.some.text");
    }

    #[test]
    fn leaves_ordinary_text_alone() {
        let t = "pg_dump: error: connection to server failed: FATAL: role \"x\" does not exist";
        assert_eq!(redact(t), t);
    }
}
