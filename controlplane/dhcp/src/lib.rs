//! dialtone's DHCPv4 server core: strict wire codec, per-class allocator and a sans-IO engine.
//!
//! Layer: control plane, between the UDP socket shell and the store/dataplane.
//! Inputs: datagrams received on port 67 with the time `now` (seconds since the UNIX epoch), and
//! the store's [`dialtone_store::LeaseSnapshot`] at start. Outputs: replies with their
//! destination, lease effects for the dataplane (class, offset, MAC, block) and the store writes
//! that must be durable before the replies go out.
//! It must never panic on any datagram, reply to a phone whose MAC or vendor class failed
//! validation (claims 001: 9, 24, 39), send an ACK before its lease is durable, or take a leased
//! address from its holder. [`wire`], [`allocator`] and [`engine`] do no I/O and read no clock;
//! [`server`] is the thin shell around them (socket, clock, group commit, sweep timer).
#![forbid(unsafe_code)]
// Tests may unwrap: a panic there is a failed assertion, not a remote crash.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod allocator;
pub mod engine;
pub mod server;
pub mod wire;

pub use engine::{
    vendor_port_payload, Counters, Disposition, Effect, Engine, LeaseChange, LeaseEvent, Limits, MessageType, Output,
    Reply,
};
pub use wire::{DecodeError, Message, Options};
