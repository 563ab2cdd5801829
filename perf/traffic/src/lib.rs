//! dialtone's lab traffic tools: simulated phones that lease from the gateway's DHCP, an AF_XDP
//! generator that sends from their port blocks, and a receiver that checks every translation.
//!
//! Layer: outside the product (perf); depends on config (the port-block function), dhcp (its wire
//! codec) and wire (header views). Inputs: the gateway's configuration file, an interface in a
//! lab namespace, rates and durations from the command line. Outputs: leases files and
//! machine-readable JSON summaries (sent, received, mistranslated, out-of-block, latency
//! percentiles) for `perf/dataplane.sh` and `tests/dataplane_churn.rs`.
//! It must never send anywhere but the lab interface it is given, and it never needs a lease
//! table to judge a translation: the payload names the phone (claims 001: 3-7).
//!
//! Modules: [`frame`] (test frames and their payload), [`check`] (the inverse port-block
//! check), [`lease`] (sans-IO DHCP clients), [`fleet`] (slots shared with the churn thread),
//! [`generator`] (transmit, lease and churn loops), [`receiver`] (accounting), [`sys`] (sockets,
//! rings, pinning and clocks: the only `unsafe` code).
#![deny(unsafe_code)]
// Tests may unwrap: a panic there is a failed assertion.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod check;
pub mod fleet;
pub mod frame;
pub mod generator;
pub mod lease;
pub mod receiver;
pub mod sys;

#[cfg(test)]
mod profiles;
#[cfg(test)]
mod testing;
