//! ICMPv4 messages (RFC 792), including the IP header quoted by an error message.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |     Type      |     Code      |          Checksum             |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |   Identifier (echo) / unused, pointer, next-hop MTU (errors)  |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |  echo data, or the quoted IP header + first bytes (errors)    |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! The checksum covers the whole message, quote included, and has no pseudo-header.

use crate::checksum;
use crate::{read_u16, write_u16, WireError};

/// Echo reply.
pub const TYPE_ECHO_REPLY: u8 = 0;
/// Destination unreachable (code 4: fragmentation needed).
pub const TYPE_DEST_UNREACHABLE: u8 = 3;
/// Echo request.
pub const TYPE_ECHO_REQUEST: u8 = 8;
/// Time exceeded (code 0: TTL exceeded in transit, code 1: reassembly time exceeded).
pub const TYPE_TIME_EXCEEDED: u8 = 11;
/// Parameter problem.
pub const TYPE_PARAMETER_PROBLEM: u8 = 12;

/// Length of the fixed header (type, code, checksum and the 4-byte rest of header).
pub const HEADER_LEN: usize = 8;

mod field {
    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: usize = 2;
    pub const IDENT: usize = 4;
    pub const SEQ: usize = 6;
    pub const REST: core::ops::Range<usize> = 4..8;
}

/// A view of an ICMPv4 message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Icmpv4Packet<T> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Icmpv4Packet<T> {
    /// Wraps a buffer the caller already checked.
    pub fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps untrusted bytes: the 8-byte header is present.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        Ok(Self::new_unchecked(buffer))
    }

    /// Message type.
    pub fn msg_type(&self) -> u8 {
        self.buffer.as_ref()[field::TYPE]
    }

    /// Message code.
    pub fn code(&self) -> u8 {
        self.buffer.as_ref()[field::CODE]
    }

    /// Checksum field.
    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// Echo identifier (echo request and reply only).
    pub fn echo_ident(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::IDENT)
    }

    /// Echo sequence number (echo request and reply only).
    pub fn echo_seq(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::SEQ)
    }

    /// True for echo request and echo reply.
    pub fn is_echo(&self) -> bool {
        matches!(self.msg_type(), TYPE_ECHO_REQUEST | TYPE_ECHO_REPLY)
    }

    /// True for the error messages that quote the packet that caused them and that a translator
    /// forwards (RFC 5508 section 3.4: unreachable, time exceeded, parameter problem).
    pub fn is_error(&self) -> bool {
        matches!(self.msg_type(), TYPE_DEST_UNREACHABLE | TYPE_TIME_EXCEEDED | TYPE_PARAMETER_PROBLEM)
    }

    /// Everything after the 8-byte header: echo data, or the quoted packet of an error.
    pub fn data(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }

    /// True when the checksum over the whole buffer is right.
    pub fn verify_checksum(&self) -> bool {
        checksum::fold(checksum::sum(self.buffer.as_ref())) == 0xFFFF
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Icmpv4Packet<T> {
    /// Sets the type.
    pub fn set_msg_type(&mut self, msg_type: u8) {
        self.buffer.as_mut()[field::TYPE] = msg_type;
    }

    /// Sets the code.
    pub fn set_code(&mut self, code: u8) {
        self.buffer.as_mut()[field::CODE] = code;
    }

    /// Sets the checksum field.
    pub fn set_checksum(&mut self, checksum: u16) {
        write_u16(self.buffer.as_mut(), field::CHECKSUM, checksum);
    }

    /// Sets the echo identifier.
    pub fn set_echo_ident(&mut self, ident: u16) {
        write_u16(self.buffer.as_mut(), field::IDENT, ident);
    }

    /// Sets the 4 bytes after the checksum (zero for time exceeded).
    pub fn set_rest_of_header(&mut self, rest: [u8; 4]) {
        self.buffer.as_mut()[field::REST].copy_from_slice(&rest);
    }

    /// The data after the header, writable.
    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[HEADER_LEN..]
    }

    /// Computes the checksum over the whole buffer from scratch (for messages the gateway builds).
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let ck = checksum::internet_checksum(self.buffer.as_ref());
        self.set_checksum(ck);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Ipv4Packet;

    #[test]
    fn echo_request() {
        let mut bytes = [8, 0, 0, 0, 0x12, 0x34, 0, 1, b'h', b'i'];
        let mut p = Icmpv4Packet::new_checked(&mut bytes[..]).expect("valid header");
        p.fill_checksum();
        assert!(p.verify_checksum());
        assert!(p.is_echo() && !p.is_error());
        assert_eq!((p.echo_ident(), p.echo_seq()), (0x1234, 1));
        p.set_echo_ident(0x0400);
        assert!(!p.verify_checksum());
        assert_eq!(p.data(), b"hi");
    }

    #[test]
    fn error_quotes_a_header() {
        let mut bytes = [0u8; 36];
        bytes[0] = TYPE_DEST_UNREACHABLE;
        bytes[1] = 3;
        bytes[8] = 0x45;
        bytes[10] = 0x00;
        bytes[11] = 0x40; // quoted total length 64, longer than the quote
        let p = Icmpv4Packet::new_checked(&bytes[..]).expect("valid header");
        assert!(p.is_error());
        let quoted = Ipv4Packet::new_checked_header(p.data()).expect("quoted header present");
        assert_eq!(quoted.header_len(), 20);
        assert_eq!(quoted.payload().len(), 8, "payload is what the quote holds");
        assert!(Ipv4Packet::new_checked(p.data()).is_err());
    }

    #[test]
    fn truncated() {
        assert_eq!(Icmpv4Packet::new_checked(&[0u8; 7][..]), Err(WireError::Truncated));
    }
}
