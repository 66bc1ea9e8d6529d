//! Quoting for the SQL pgvault writes itself. Values from outside (role, database and setting
//! names, comments) only ever reach SQL through these.

/// Quote an identifier for SQL.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// `SQL literal` of a string (`E'…'` when it holds a backslash, so the text is the same whatever
/// `standard_conforming_strings` says).
pub fn quote_literal(s: &str) -> String {
    if s.contains('\\') {
        format!("E'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
    } else {
        format!("'{}'", s.replace('\'', "''"))
    }
}
