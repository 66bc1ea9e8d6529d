//! Error kinds shared by every layer.
//!
//! Rules, in the spirit of pgBackRest and rustic:
//! - A message names the operation and the object ("stage block 17 of blob x"), in lower case,
//!   and may end with a `HINT:` line that tells the operator what to do.
//! - Every error carries a [`Kind`]. The kind, not the text, decides what happens next: the
//!   handler replies non-2xx for [`Kind::Transient`] so the Functions host retries, and keeps a
//!   [`Kind::Permanent`] message with its reason instead of retrying it five times.
//! - No error ever holds a secret. Values that might carry one (connection strings, SAS URLs)
//!   pass through [`crate::domain::secret::redact`] before they reach a message.

use std::fmt;

/// What the caller should do about an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Trying again later may succeed: network, throttling, a server restarting, a killed dump.
    Transient,
    /// Trying again cannot succeed: bad input, an unknown server or database, a missing tool.
    Permanent,
}

/// The one error type of the domain core.
#[derive(Debug, thiserror::Error)]
pub struct Error {
    kind: Kind,
    message: String,
    hint: Option<String>,
    marker: Option<Marker>,
}

/// What an adapter recognised about a refusal, independent of [`Kind`] and of the message text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Marker {
    /// Storage refused a change because of an immutability (WORM) policy or a legal hold.
    Immutable,
    /// The store does not implement the operation (e.g. access tiers in the local store).
    Unsupported,
}

impl Error {
    pub fn transient(message: impl Into<String>) -> Self {
        Self { kind: Kind::Transient, message: message.into(), hint: None, marker: None }
    }

    pub fn permanent(message: impl Into<String>) -> Self {
        Self { kind: Kind::Permanent, message: message.into(), hint: None, marker: None }
    }

    /// A permanent refusal by an immutability (WORM) policy or legal hold, as an adapter
    /// recognised it from the service's error code. See [`Error::is_immutable`].
    pub fn immutable(message: impl Into<String>) -> Self {
        Self { marker: Some(Marker::Immutable), ..Self::permanent(message) }
    }

    /// A permanent "this store cannot do that" (a capability it lacks). See
    /// [`Error::is_unsupported`].
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self { marker: Some(Marker::Unsupported), ..Self::permanent(message) }
    }

    /// Whether storage refused the operation because of an immutability policy or legal hold.
    pub fn is_immutable(&self) -> bool {
        self.marker == Some(Marker::Immutable)
    }

    /// Whether the store does not support the operation at all.
    pub fn is_unsupported(&self) -> bool {
        self.marker == Some(Marker::Unsupported)
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Prefix the message with what was being done, keeping kind and hint.
    pub fn context(mut self, what: impl fmt::Display) -> Self {
        self.message = format!("{what}: {}", self.message);
        self
    }

    /// The same error with its message and hint rewritten (the CLI names its flags where the
    /// request names its JSON fields).
    pub fn reworded(mut self, f: impl Fn(&str) -> String) -> Self {
        self.message = f(&self.message);
        self.hint = self.hint.as_deref().map(&f);
        self
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn is_permanent(&self) -> bool {
        self.kind == Kind::Permanent
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    /// What the operator should do, if the error says (the `HINT:` line without its label).
    pub fn hint(&self) -> Option<&str> {
        self.hint.as_deref()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, "\nHINT: {hint}")?;
        }
        Ok(())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Add context to any `Result<_, Error>`.
pub trait Context<T> {
    fn context(self, what: impl fmt::Display) -> Result<T>;
    fn with_context<D: fmt::Display>(self, what: impl FnOnce() -> D) -> Result<T>;
}

impl<T> Context<T> for Result<T> {
    fn context(self, what: impl fmt::Display) -> Result<T> {
        self.map_err(|e| e.context(what))
    }

    fn with_context<D: fmt::Display>(self, what: impl FnOnce() -> D) -> Result<T> {
        self.map_err(|e| e.context(what()))
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        use std::io::ErrorKind as K;
        match e.kind() {
            K::NotFound | K::PermissionDenied | K::InvalidInput | K::InvalidData => Error::permanent(e.to_string()),
            _ => Error::transient(e.to_string()),
        }
    }
}
