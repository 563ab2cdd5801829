//! UDP headers (RFC 768).
//!
//! ```text
//!  0      7 8     15 16    23 24    31
//! +--------+--------+--------+--------+
//! |   source port   |  dest. port     |
//! +--------+--------+--------+--------+
//! |     length      |    checksum     |
//! +--------+--------+--------+--------+
//! ```
//!
//! A checksum of 0 means "none was computed" and must stay 0 through a translator.

use crate::checksum;
use crate::{read_u16, write_u16, WireError};

/// Length of the header.
pub const HEADER_LEN: usize = 8;

mod field {
    pub const SRC_PORT: usize = 0;
    pub const DST_PORT: usize = 2;
    pub const LENGTH: usize = 4;
    pub const CHECKSUM: usize = 6;
}

/// A view of a UDP datagram (or of its first bytes, in a first fragment or an ICMP quote).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpPacket<T> {
    buffer: T,
}

impl<T: AsRef<[u8]>> UdpPacket<T> {
    /// Wraps a buffer the caller already checked.
    pub fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps untrusted bytes: the 8-byte header is present. The length field is not checked
    /// against the buffer, since a first fragment carries only part of the datagram.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        Ok(Self::new_unchecked(buffer))
    }

    /// Source port.
    pub fn src_port(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::SRC_PORT)
    }

    /// Destination port.
    pub fn dst_port(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::DST_PORT)
    }

    /// Length field (header and data).
    pub fn len(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::LENGTH)
    }

    /// True when the length field says there is no data.
    pub fn is_empty(&self) -> bool {
        usize::from(self.len()) <= HEADER_LEN
    }

    /// Checksum field (0: none).
    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// True when the checksum is absent or right for these addresses over the whole buffer.
    pub fn verify_checksum(&self, src: [u8; 4], dst: [u8; 4]) -> bool {
        if self.checksum() == 0 {
            return true;
        }
        let data = self.buffer.as_ref();
        let total = checksum::pseudo_header_sum(src, dst, crate::ipv4::PROTOCOL_UDP, self.len()) + checksum::sum(data);
        checksum::fold(total) == 0xFFFF
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> UdpPacket<T> {
    /// Sets the source port.
    pub fn set_src_port(&mut self, port: u16) {
        write_u16(self.buffer.as_mut(), field::SRC_PORT, port);
    }

    /// Sets the destination port.
    pub fn set_dst_port(&mut self, port: u16) {
        write_u16(self.buffer.as_mut(), field::DST_PORT, port);
    }

    /// Sets the length field.
    pub fn set_len(&mut self, len: u16) {
        write_u16(self.buffer.as_mut(), field::LENGTH, len);
    }

    /// Sets the checksum field.
    pub fn set_checksum(&mut self, checksum: u16) {
        write_u16(self.buffer.as_mut(), field::CHECKSUM, checksum);
    }

    /// Computes the checksum over the whole buffer from scratch (0 is sent as 0xFFFF).
    pub fn fill_checksum(&mut self, src: [u8; 4], dst: [u8; 4]) {
        self.set_checksum(0);
        let total = checksum::pseudo_header_sum(src, dst, crate::ipv4::PROTOCOL_UDP, self.len())
            + checksum::sum(self.buffer.as_ref());
        let ck = !checksum::fold(total);
        self.set_checksum(if ck == 0 { 0xFFFF } else { ck });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: [u8; 4] = [100, 64, 16, 5];
    const DST: [u8; 4] = [192, 0, 2, 10];

    #[test]
    fn construct_and_verify() {
        let mut bytes = [0x04, 0x00, 0x00, 0x35, 0x00, 0x0a, 0x00, 0x00, 0xab, 0xcd];
        let mut p = UdpPacket::new_checked(&mut bytes[..]).expect("valid header");
        p.fill_checksum(SRC, DST);
        assert_ne!(p.checksum(), 0);
        assert!(p.verify_checksum(SRC, DST));
        assert!(!p.verify_checksum(DST, [1, 1, 1, 1]));
        assert_eq!((p.src_port(), p.dst_port(), p.len()), (1024, 53, 10));
        assert!(!p.is_empty());
        p.set_checksum(0);
        assert!(p.verify_checksum(DST, [1, 1, 1, 1]), "checksum 0 means none");
    }

    #[test]
    fn truncated() {
        assert_eq!(UdpPacket::new_checked(&[0u8; 7][..]), Err(WireError::Truncated));
    }
}
