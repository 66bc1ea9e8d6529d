//! Database credentials as they are kept in a Key Vault secret: a libpq connection URI, a libpq
//! key/value string, or the `Key=Value;` form Azure Backup and .NET drivers use.
//!
//! Azure Backup for PostgreSQL keeps "username + password (or a connection string)" in a Key
//! Vault secret that the database admin seeds and rotates; pgvault reads the same kind of
//! secret. The secret names the login (user, password) and may state the TLS mode; the
//! inventory names the server, so a host or port in the secret must agree with it.
//!
//! Nothing here ever puts text from the secret into an error: a parse error names at most a
//! keyword pgvault knows (never an unknown one, which could be a piece of a password).

use crate::domain::inventory::TlsMode;
use crate::domain::secret::Secret;

/// What a connection-string secret says about the login.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ConnString {
    pub user: Option<String>,
    pub password: Option<Secret>,
    pub host: Option<String>,
    pub port: Option<u16>,
    /// The database in the string. pgvault picks databases per job, so it is not used.
    pub dbname: Option<String>,
    /// The `sslmode` it states, mapped onto pgvault's modes (`allow`/`prefer` become `require`:
    /// pgvault never falls back to plain text).
    pub tls: Option<TlsMode>,
    /// The `sslmode` as written, when it was `allow` or `prefer` (for the warning).
    pub tls_raised_from: Option<&'static str>,
    /// Keywords pgvault understood but does not use (for a log line; keywords only).
    pub ignored: Vec<String>,
}

/// Keywords libpq accepts in a connection string. Anything else is refused, as libpq does.
const LIBPQ_KEYWORDS: &[&str] = &[
    "host",
    "hostaddr",
    "port",
    "user",
    "password",
    "dbname",
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "sslpassword",
    "sslcrl",
    "sslcrldir",
    "sslsni",
    "sslcompression",
    "sslcertmode",
    "sslnegotiation",
    "ssl_min_protocol_version",
    "ssl_max_protocol_version",
    "connect_timeout",
    "application_name",
    "fallback_application_name",
    "options",
    "client_encoding",
    "target_session_attrs",
    "load_balance_hosts",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "tcp_user_timeout",
    "channel_binding",
    "gssencmode",
    "gsslib",
    "gssdelegation",
    "krbsrvname",
    "require_auth",
    "requirepeer",
    "replication",
    "passfile",
    "service",
];

/// Parse a secret's value. The error text never contains any part of `text`.
pub fn parse(text: &str) -> Result<ConnString, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("the secret is empty".into());
    }
    if let Some(rest) = text.strip_prefix("postgresql://").or_else(|| text.strip_prefix("postgres://")) {
        return parse_uri(rest);
    }
    // Another scheme (`mysql://`): a URI from its first character. A `://` further in may be
    // part of a password in the other forms.
    let scheme = text.find("://").map(|i| &text[..i]);
    if scheme.is_some_and(|s| {
        s.starts_with(|c: char| c.is_ascii_alphabetic())
            && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '.' | '-'))
    }) {
        return Err("the secret is a URI, but not a postgresql:// or postgres:// one".into());
    }
    // `host=h;user=u;password=p` is a valid libpq string (one host value holding the rest), so
    // when both readings work and the libpq one has a `;` in a value, the `;` form is meant.
    match (parse_keyword_value(text), parse_semicolon_form(text)) {
        (Ok(libpq), Some(semi)) if libpq.iter().any(|(_, v)| v.contains(';')) => from_pairs(semi),
        (Ok(libpq), _) => from_pairs(libpq),
        (Err(_), Some(semi)) => from_pairs(semi),
        (Err(e), None) => Err(e),
    }
}

/// libpq URI after the scheme: `[user[:password]@][host][:port][/dbname][?key=value&...]`.
/// Like libpq, the user info ends at the first `@` seen before any `/`; special characters in
/// it must be percent-encoded.
fn parse_uri(rest: &str) -> Result<ConnString, String> {
    let bad = |what: &str| format!("the postgresql:// URI {what}");
    let mut pairs: Vec<(String, String)> = Vec::new();
    let userinfo_end = rest.find(['@', '/']);
    let rest = match userinfo_end {
        Some(i) if rest.as_bytes()[i] == b'@' => {
            let userinfo = &rest[..i];
            let (user, password) = match userinfo.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (userinfo, None),
            };
            if !user.is_empty() {
                pairs.push(("user".into(), percent_decode(user).ok_or_else(|| bad("has a bad %-escape in the user"))?));
            }
            if let Some(p) = password {
                pairs.push((
                    "password".into(),
                    percent_decode(p).ok_or_else(|| bad("has a bad %-escape in the password"))?,
                ));
            }
            &rest[i + 1..]
        }
        _ => rest,
    };
    let (before_query, query) = match rest.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (rest, None),
    };
    let (hostport, dbname) = match before_query.split_once('/') {
        Some((h, d)) => (h, Some(d)),
        None => (before_query, None),
    };
    if hostport.contains(',') {
        return Err(bad("names several hosts; name one server per inventory entry"));
    }
    if !hostport.is_empty() {
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or_else(|| bad("has an unclosed [ in the host"))?;
            (h.to_string(), after.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (hostport.to_string(), None),
            }
        };
        if !host.is_empty() {
            pairs.push(("host".into(), percent_decode(&host).ok_or_else(|| bad("has a bad %-escape in the host"))?));
        }
        if let Some(p) = port.filter(|p| !p.is_empty()) {
            pairs.push(("port".into(), p.to_string()));
        }
    }
    if let Some(d) = dbname.filter(|d| !d.is_empty()) {
        pairs.push(("dbname".into(), percent_decode(d).ok_or_else(|| bad("has a bad %-escape in the database"))?));
    }
    for param in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = param.split_once('=').ok_or_else(|| bad("has a query parameter without a value"))?;
        let k = percent_decode(k).ok_or_else(|| bad("has a bad %-escape in a query parameter"))?;
        let v = percent_decode(v).ok_or_else(|| bad("has a bad %-escape in a query parameter"))?;
        pairs.push((k, v));
    }
    from_pairs(pairs)
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// libpq's `keyword = value` form: pairs separated by whitespace, values optionally in single
/// quotes with `\'` and `\\` escapes.
fn parse_keyword_value(text: &str) -> Result<Vec<(String, String)>, String> {
    let not_libpq = || {
        "the secret is not a postgresql:// URI, a libpq `keyword=value` string, or a \
         `Key=Value;` string"
            .to_string()
    };
    let mut pairs = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') || !LIBPQ_KEYWORDS.contains(&key.as_str()) {
            return Err(not_libpq());
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            loop {
                match chars.next() {
                    None => return Err(format!("the value of `{key}` has no closing quote")),
                    Some('\\') => match chars.next() {
                        Some(c) => value.push(c),
                        None => return Err(format!("the value of `{key}` has no closing quote")),
                    },
                    Some('\'') => break,
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                chars.next();
                if c == '\\' {
                    if let Some(n) = chars.next() {
                        value.push(n);
                    }
                } else {
                    value.push(c);
                }
            }
        }
        pairs.push((key, value));
    }
    if pairs.is_empty() {
        return Err(not_libpq());
    }
    Ok(pairs)
}

/// The `Key=Value;Key=Value;` form of Azure Backup and the .NET drivers (Npgsql), e.g.
/// `Server=db.example;Database=app;Port=5432;User Id=u;Password=p;Ssl Mode=Require;`.
/// Keywords are case-insensitive and spaces in them do not matter; a value holding `;` (or `=`,
/// except a password) must be double-quoted (`Password="a;b"`, `""` for a quote). Returns the pairs under libpq's
/// keyword names, or `None` if the text is not of this form.
fn parse_semicolon_form(text: &str) -> Option<Vec<(String, String)>> {
    if !text.contains(';') && !text.contains('=') {
        return None;
    }
    let mut pairs = Vec::new();
    let mut rest = text;
    loop {
        rest = rest.trim_start_matches(|c: char| c == ';' || c.is_whitespace());
        if rest.is_empty() {
            break;
        }
        let eq = rest.find('=')?;
        let key: String = rest[..eq].chars().filter(|c| !c.is_whitespace()).collect::<String>().to_ascii_lowercase();
        rest = rest[eq + 1..].trim_start();
        let value = if let Some(quoted) = rest.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let end = loop {
                match chars.next() {
                    None => return None,
                    Some((i, '"')) => {
                        if quoted[i + 1..].starts_with('"') {
                            value.push('"');
                            chars.next();
                        } else {
                            break i + 1;
                        }
                    }
                    Some((_, c)) => value.push(c),
                }
            };
            rest = quoted[end..].trim_start();
            if !(rest.is_empty() || rest.starts_with(';')) {
                return None;
            }
            value
        } else {
            let end = rest.find(';').unwrap_or(rest.len());
            let value = rest[..end].trim_end().to_string();
            // Generated passwords often hold `=`, and .NET reads `Password=a=b` as `a=b`; any
            // other value with `=` means this is not this form (`host=a port=5` is libpq's).
            if value.contains('=') && !matches!(key.as_str(), "password" | "pwd" | "psw") {
                return None;
            }
            rest = &rest[end..];
            value
        };
        let libpq = match key.as_str() {
            "server" | "host" | "datasource" | "address" | "addr" | "networkaddress" => "host",
            "port" => "port",
            "database" | "initialcatalog" | "db" | "dbname" => "dbname",
            "userid" | "uid" | "username" | "user" => "user",
            "password" | "pwd" | "psw" => "password",
            "sslmode" => "sslmode",
            "trustservercertificate"
            | "timeout"
            | "commandtimeout"
            | "applicationname"
            | "pooling"
            | "minpoolsize"
            | "maxpoolsize"
            | "connectionlifetime"
            | "includeerrordetail"
            | "keepalive"
            | "searchpath"
            | "sslnegotiation"
            | "rootcertificate"
            | "encoding"
            | "clientencoding" => {
                pairs.push((format!("({key})"), value));
                continue;
            }
            _ => return None,
        };
        let value = if libpq == "sslmode" { npgsql_sslmode(&value)?.to_string() } else { value };
        pairs.push((libpq.to_string(), value));
    }
    (!pairs.is_empty()).then_some(pairs)
}

/// Npgsql's `Ssl Mode` names (`VerifyFull`, `Require`, ...) in libpq's spelling.
fn npgsql_sslmode(v: &str) -> Option<&'static str> {
    let v: String = v.chars().filter(|c| *c != '-' && *c != '_').collect::<String>().to_ascii_lowercase();
    Some(match v.as_str() {
        "disable" => "disable",
        "allow" => "allow",
        "prefer" => "prefer",
        "require" => "require",
        "verifyca" => "verify-ca",
        "verifyfull" => "verify-full",
        _ => return None,
    })
}

fn from_pairs(pairs: Vec<(String, String)>) -> Result<ConnString, String> {
    let mut c = ConnString::default();
    for (key, value) in pairs {
        match key.as_str() {
            "user" => c.user = Some(value).filter(|v| !v.is_empty()),
            "password" => c.password = Some(Secret::new(value)),
            "host" => {
                if value.contains(',') {
                    return Err("the secret names several hosts; name one server per inventory entry".into());
                }
                c.host = Some(value).filter(|v| !v.is_empty());
            }
            "port" => c.port = Some(value.parse().map_err(|_| "the value of `port` is not a port number".to_string())?),
            "dbname" => c.dbname = Some(value).filter(|v| !v.is_empty()),
            "sslmode" => {
                let (mode, raised) = match value.as_str() {
                    "disable" => (TlsMode::Disable, None),
                    "allow" => (TlsMode::Require, Some("allow")),
                    "prefer" => (TlsMode::Require, Some("prefer")),
                    "require" => (TlsMode::Require, None),
                    "verify-ca" => (TlsMode::VerifyCa, None),
                    "verify-full" => (TlsMode::VerifyFull, None),
                    _ => {
                        return Err("the value of `sslmode` is not one of disable, allow, prefer, require, \
                                    verify-ca, verify-full"
                            .into());
                    }
                };
                c.tls = Some(mode);
                c.tls_raised_from = raised;
            }
            other => {
                let name = other.trim_start_matches('(').trim_end_matches(')').to_string();
                if !c.ignored.contains(&name) {
                    c.ignored.push(name);
                }
            }
        }
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pw(c: &ConnString) -> &str {
        c.password.as_ref().map(Secret::expose).unwrap_or("<none>")
    }

    #[test]
    fn libpq_uri() {
        let c = parse("postgresql://backup%40x:p%40ss%2Fw0rd@db.example:6432/app?sslmode=verify-ca&connect_timeout=5")
            .unwrap();
        assert_eq!(c.user.as_deref(), Some("backup@x"));
        assert_eq!(pw(&c), "p@ss/w0rd");
        assert_eq!(c.host.as_deref(), Some("db.example"));
        assert_eq!(c.port, Some(6432));
        assert_eq!(c.dbname.as_deref(), Some("app"));
        assert_eq!(c.tls, Some(TlsMode::VerifyCa));
        assert_eq!(c.ignored, ["connect_timeout"]);
        let c = parse("postgres://u@[::1]:5433").unwrap();
        assert_eq!((c.host.as_deref(), c.port, c.password.is_none()), (Some("::1"), Some(5433), true));
        assert!(parse("postgresql://u:p@a,b/db").unwrap_err().contains("several hosts"));
    }

    #[test]
    fn libpq_keyword_value() {
        let c = parse("host=db.example  port = 5432 user=u password='it\\'s a \\\\ b' sslmode=prefer").unwrap();
        assert_eq!(pw(&c), "it's a \\ b");
        assert_eq!(c.tls, Some(TlsMode::Require));
        assert_eq!(c.tls_raised_from, Some("prefer"));
        let c = parse("user=u password=a;b=c").unwrap();
        assert_eq!(pw(&c), "a;b=c");
        let c = parse("host=h;user=u;password=p").unwrap();
        assert_eq!((c.host.as_deref(), c.user.as_deref(), pw(&c)), (Some("h"), Some("u"), "p"));
    }

    /// Found by `tests/hostile_input.rs` (connection_strings_agree_across_forms): a password
    /// holding `://` made a libpq string read as "a URI of another scheme", and one holding `=`
    /// made the `Key=Value;` form refuse the whole secret.
    #[test]
    fn passwords_holding_uri_or_equals_signs() {
        let c = parse("host=a port=1 user='_' password='://0aAA ' dbname=0 sslmode=disable").unwrap();
        assert_eq!(pw(&c), "://0aAA ");
        let c = parse("Host=h;Port=1;Username=_;Password=000AA= #;Database=A;SSL Mode=disable").unwrap();
        assert_eq!(pw(&c), "000AA= #");
        assert_eq!(c.tls, Some(TlsMode::Disable));
        assert!(parse("mysql://u:p@h/db").unwrap_err().contains("not a postgresql://"));
        assert!(parse("host=a port=5 foo=b").is_err(), "an unknown libpq keyword is still refused");
    }

    #[test]
    fn semicolon_form_as_azure_backup_writes_it() {
        let c = parse(
            "Server=db.example;Database=app;Port=5432;User Id=backup;Password=\"p;w=\"\"x\"\"\";Ssl Mode=VerifyFull;",
        )
        .unwrap();
        assert_eq!(c.host.as_deref(), Some("db.example"));
        assert_eq!(c.user.as_deref(), Some("backup"));
        assert_eq!(pw(&c), "p;w=\"x\"");
        assert_eq!(c.tls, Some(TlsMode::VerifyFull));
        let c = parse("Host=h;Username=u;Password=secret;Trust Server Certificate=true").unwrap();
        assert_eq!(pw(&c), "secret");
        assert_eq!(c.ignored, ["trustservercertificate"]);
    }

    #[test]
    fn errors_never_quote_the_secret() {
        for bad in [
            "hunter2-plain-password",
            "host=x frobnicate=hunter2",
            "Server=x;Hunter2Key=hunter2",
            "host=x password='hunter2",
            "postgresql://u:hunter2@h:notaport/db",
            "host=x sslmode=hunter2",
            "https://hunter2.example/",
            "postgresql://u:hunter2%zz@h/db",
        ] {
            let e = parse(bad).unwrap_err();
            assert!(!e.to_lowercase().contains("hunter2"), "{bad} -> {e}");
        }
    }
}
