//! The pre-provisioning service and the provisioning entry point (claims 000: 1-12, and the server
//! side of 13-24).
//!
//! Layer: control plane. Inputs: HTTP requests from phones (untrusted, unauthenticated: the
//! device application) and from provisioning entities, points of sale and the admin (bearer
//! tokens: the management application). Outputs: HTTP responses and durable changes to the
//! look-up table (device ID key -> provisioning contact blob) through a [`Registry`].
//! It must never show or change one entity's devices to or for another, never reveal who owns a
//! device it refuses, and never acknowledge a change that is not durable.
#![forbid(unsafe_code)]

pub mod ids;
mod ratelimit;
mod redb_registry;
pub mod registry;
mod service;

pub use ids::{Contact, ContactError, ContactHost, DeviceId, DeviceIdError};
pub use ratelimit::RateLimiter;
pub use redb_registry::RedbRegistry;
pub use registry::{Account, AuditEntry, DeviceRecord, MemoryRegistry, Registry, RegistryError, Role, Txn};
pub use service::{create_account, new_token, token_hash, AccountError, Counters, Service, ServiceSettings};

#[cfg(test)]
mod tests;
