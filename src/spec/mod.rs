//! Experiment specs: the TOML schema, defaults, `extends`, and validation with
//! file/line/column messages.

mod types;

pub use types::*;
