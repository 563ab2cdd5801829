//! dialtone configuration: the operator's TOML file turned into validated runtime types.
//!
//! Layer: the bottom of the workspace; every other crate depends on it and it depends on none.
//! Inputs: the text of a configuration file (and, for `run`, the CPU ids of this machine).
//! Outputs: a [`Config`] that cannot hold an invalid value, or every problem found, each as
//! `file:line: field: reason`. It must never touch the network, the dataplane or the store.
//!
//! Two layers, as in dora: [`file`] is the shape of the file (`deny_unknown_fields`, spans kept for
//! error lines); [`model`] is what the rest of the product uses. [`load`] goes from one to the
//! other. [`portblock`] is the port-block function both planes share.
#![forbid(unsafe_code)]

mod error;
pub mod file;
mod mac;
pub mod model;
pub mod portblock;
mod report;
mod validate;

pub use error::{ConfigError, ConfigErrors, Severity};
pub use mac::{MacAddr, MacParseError, Oui};
pub use model::*;
pub use validate::{load, load_str, online_cpus, CpuPolicy, Loaded};
