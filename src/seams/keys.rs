//! The key-wrapping seam: where a backup's data key is wrapped (at backup) and unwrapped (at
//! restore, drill, `verify --decrypt` and `cat`) with a key that never leaves its vault.
//!
//! `azure::keys` implements it with Key Vault's `wrapKey` / `unwrapKey` (RSA-OAEP-256) and the
//! managed identity. Nothing here caches a key: every operation asks the vault, so a disabled
//! key version takes effect at once (crypto-shredding, see DESIGN.md).

use crate::domain::envelope::DataKey;
use crate::domain::error::Result;
use async_trait::async_trait;

/// A data key as the vault wrapped it: what the manifest records, never the plain key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrappedKey {
    /// The vault key's full identifier **with** its version:
    /// `https://<vault>/keys/<name>/<version>`.
    pub key_id: String,
    /// The wrap algorithm, e.g. `RSA-OAEP-256`.
    pub algorithm: String,
    pub wrapped: Vec<u8>,
}

/// Whether a key version can unwrap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyStatus {
    Available,
    /// It cannot, and will not without an operator's action: `disabled`, `deleted`, `expired`.
    Unavailable(String),
}

#[async_trait]
pub trait KeyWrapper: Send + Sync + 'static {
    /// Wrap `key` with the vault key `key_id` (with or without a version; without one, its
    /// current version). The result names the version used. Errors: transient when the vault
    /// cannot be reached or throttles (the backup is retried), permanent when the key does not
    /// exist, is disabled, or access is denied.
    async fn wrap(&self, key_id: &str, key: &DataKey) -> Result<WrappedKey>;

    /// Unwrap with exactly the version `wrapped.key_id` names. A key version that is disabled
    /// or deleted is a permanent error whose message says `key version <id> not available:
    /// <why>`.
    async fn unwrap(&self, wrapped: &WrappedKey) -> Result<DataKey>;

    /// Whether the key version `key_id` can unwrap now, without unwrapping anything (needs only
    /// read access to the key). Errors only when the vault cannot say.
    async fn status(&self, key_id: &str) -> Result<KeyStatus>;
}

/// The words every "this key cannot unwrap" message uses, so list, verify and restore agree.
pub fn not_available(key_id: &str, why: &str) -> String {
    format!("key version {key_id} not available: {why}")
}
