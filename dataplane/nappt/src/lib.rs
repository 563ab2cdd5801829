//! dialtone NAPPT engine: network address persistent port translation for phones (claims 001:
//! 3-7, 18-22, 33-37). Addresses are rewritten; ports never are.
//!
//! Layer: the sans-IO heart of the dataplane (`wire <- nappt <- engine`). The AF_XDP engine owns
//! one [`Nappt`] per worker, applies [`Update`]s from its control ring between batches and calls
//! [`Nappt::translate`] on each received batch.
//! Inputs: the validated [`dialtone_config::Config`] (classes in order, a class's index is its
//! id), updates (leases, neighbour and interface MACs), and batches of raw Ethernet frames with
//! the side they arrived on. Outputs: the frames rewritten in place, one [`Verdict`] each, and
//! per-worker [`Counters`].
//! It must never allocate, lock, log or make a system call per packet, panic on any frame, keep
//! per-flow state (the port-block function makes it unnecessary; only the bounded fragment and
//! echo-identifier tables exist), or rewrite a port.
//!
//! Memory: [`BYTES_PER_PHONE`] (16) bytes per phone offset of every class, allocated once; the
//! [`HOT_BYTES_PER_PHONE`] (8: leased flag and MAC) every translation reads are kept apart from
//! the 8 of the echo reverse table, so a million phones' hot state is 8 MiB, held in 2 MiB
//! transparent huge pages ([`entries::EntryTable`]) so that random lookups do not pay a page walk.
//!
//! Hot-path division: the outbound direction needs `offset / blocks_per_address` and
//! `offset % blocks_per_address`. They are computed by one multiplication with a reciprocal
//! precomputed per class ([`table::Divisor`], Lemire-Kaser-Kurz), exact for every 32-bit
//! offset; the inbound direction only multiplies and shifts, the block size being a power of two.
#![forbid(unsafe_code)]

pub mod entries;
pub mod fragment;
pub mod table;
mod translate;
pub mod verdict;

pub use table::{ClassTable, Update, UpdateError, BYTES_PER_PHONE, HOT_BYTES_PER_PHONE};
pub use translate::{Frame, Nappt, Side};
pub use verdict::{Counters, DropReason, Verdict};

#[cfg(test)]
mod tests;
