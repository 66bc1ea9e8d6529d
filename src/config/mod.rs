//! Configuration and context: the typed settings, read once and validated, and the context
//! every operation runs with.

pub mod settings;
