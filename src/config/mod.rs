//! Configuration and context: the typed settings, read once and validated, and the context
//! every operation runs with.

pub mod context;
pub mod secrets;
pub mod settings;
