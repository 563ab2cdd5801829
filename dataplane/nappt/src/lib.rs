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
//! Memory: [`BITS_PER_PHONE`] (121: 15 bytes and a bit) per phone offset of every class,
//! allocated once, in three arrays: the [`HOT_BYTES_PER_PHONE`] (8: leased flag and MAC) an
//! inbound translation reads, held in 2 MiB transparent huge pages ([`entries::EntryTable`]) so
//! that random lookups do not pay a page walk; the 7 of the echo reverse table; and the leased
//! flag again as one bit, which is all an outbound translation reads (128 KiB for a million
//! phones, which stays in the core's L2 cache where the 8 MiB of entries do not).
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

pub use table::{ClassTable, Update, UpdateError, BITS_PER_PHONE, HOT_BYTES_PER_PHONE};
pub use translate::{Frame, Nappt, Side};
pub use verdict::{Counters, DropReason, Verdict};

#[cfg(test)]
mod tests;
