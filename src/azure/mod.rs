//! Azure adapters: Blob Storage and Queue Storage through the official SDK, with a token
//! credential (managed identity in production). The only module that uses SDK types.
