//! dialtone wire views: typed, zero-copy windows onto packet bytes.
//!
//! Layer: the bottom of the dataplane (`wire <- nappt <- engine`); it depends on nothing.
//! Inputs: byte buffers straight from the NIC, untrusted. Outputs: views whose getters and setters
//! only touch bytes that `new_checked` proved present, and RFC 1071 / RFC 1624 checksum helpers.
//! It must never allocate, copy a packet, panic on any input, or know about phones and leases.
//!
//! Shape as in smoltcp's `src/wire/`: one file per header, `Packet<T: AsRef<[u8]>>` with a private
//! `mod field` of byte ranges, getters on `AsRef`, setters on `AsMut`, `new_checked` for untrusted
//! input and `new_unchecked` for buffers already checked by the caller.
#![forbid(unsafe_code)]

pub mod arp;
pub mod checksum;
pub mod ethernet;
pub mod icmpv4;
pub mod ipv4;
pub mod tcp;
pub mod udp;

pub use arp::ArpPacket;
pub use checksum::Incremental;
pub use ethernet::EthernetFrame;
pub use icmpv4::Icmpv4Packet;
pub use ipv4::Ipv4Packet;
pub use tcp::TcpPacket;
pub use udp::UdpPacket;

/// Why a buffer is not a well-formed header of the kind asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireError {
    /// Fewer bytes than the header (or the length it announces) needs.
    Truncated,
    /// A field holds a value the header cannot have (IPv4 version, header length).
    Malformed,
}

impl core::fmt::Display for WireError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::Truncated => "truncated header",
            Self::Malformed => "malformed header",
        })
    }
}

impl std::error::Error for WireError {}

/// Reads a big-endian `u16` at `at`; callers pass offsets their `new_checked` proved in bounds.
#[inline(always)]
pub(crate) fn read_u16(data: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([data[at], data[at + 1]])
}

/// Writes a big-endian `u16` at `at` (same bounds contract as [`read_u16`]).
#[inline(always)]
pub(crate) fn write_u16(data: &mut [u8], at: usize, value: u16) {
    data[at..at + 2].copy_from_slice(&value.to_be_bytes());
}

/// Reads a big-endian `u32` at `at` (same bounds contract as [`read_u16`]).
#[inline(always)]
pub(crate) fn read_u32(data: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]])
}

/// Writes a big-endian `u32` at `at` (same bounds contract as [`read_u16`]).
#[inline(always)]
pub(crate) fn write_u32(data: &mut [u8], at: usize, value: u32) {
    data[at..at + 4].copy_from_slice(&value.to_be_bytes());
}
