//! TCP headers (RFC 9293). The translator reads the ports and fixes the checksum; the rest is
//! here for tests and diagnostics.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |          Source Port          |       Destination Port        |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                        Sequence Number                        |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                    Acknowledgment Number                      |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |  Data |       |C|E|U|A|P|R|S|F|                               |
//! | Offset| Rsrvd |W|C|R|C|S|S|Y|I|            Window             |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |           Checksum            |         Urgent Pointer        |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```

use crate::checksum;
use crate::{read_u16, read_u32, write_u16, WireError};

/// Length of a header without options.
pub const MIN_HEADER_LEN: usize = 20;
/// Offset of the checksum field: a quote shorter than this cannot have it fixed.
pub const CHECKSUM_END: usize = 18;

mod field {
    pub const SRC_PORT: usize = 0;
    pub const DST_PORT: usize = 2;
    pub const SEQ: usize = 4;
    pub const ACK: usize = 8;
    pub const OFFSET_FLAGS: usize = 12;
    pub const WINDOW: usize = 14;
    pub const CHECKSUM: usize = 16;
    pub const URGENT: usize = 18;
}

/// A view of a TCP segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpPacket<T> {
    buffer: T,
}

impl<T: AsRef<[u8]>> TcpPacket<T> {
    /// Wraps a buffer the caller already checked.
    pub fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps untrusted bytes: the header, with the options its data offset announces, is present.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let packet = Self::new_unchecked(buffer);
        let len = packet.buffer.as_ref().len();
        if len < MIN_HEADER_LEN {
            return Err(WireError::Truncated);
        }
        if packet.header_len() < MIN_HEADER_LEN {
            return Err(WireError::Malformed);
        }
        if packet.header_len() > len {
            return Err(WireError::Truncated);
        }
        Ok(packet)
    }

    /// Source port.
    pub fn src_port(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::SRC_PORT)
    }

    /// Destination port.
    pub fn dst_port(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::DST_PORT)
    }

    /// Sequence number.
    pub fn seq_number(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::SEQ)
    }

    /// Acknowledgment number.
    pub fn ack_number(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::ACK)
    }

    /// Header length in bytes, options included.
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::OFFSET_FLAGS] >> 4) * 4
    }

    /// Flag bits (CWR..FIN).
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::OFFSET_FLAGS + 1]
    }

    /// Window.
    pub fn window(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::WINDOW)
    }

    /// Checksum field.
    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// Urgent pointer.
    pub fn urgent(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::URGENT)
    }

    /// True when the checksum is right for these addresses over the whole buffer (the segment).
    pub fn verify_checksum(&self, src: [u8; 4], dst: [u8; 4]) -> bool {
        let data = self.buffer.as_ref();
        let Ok(len) = u16::try_from(data.len()) else { return false };
        let total = checksum::pseudo_header_sum(src, dst, crate::ipv4::PROTOCOL_TCP, len) + checksum::sum(data);
        checksum::fold(total) == 0xFFFF
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> TcpPacket<T> {
    /// Sets the source port.
    pub fn set_src_port(&mut self, port: u16) {
        write_u16(self.buffer.as_mut(), field::SRC_PORT, port);
    }

    /// Sets the destination port.
    pub fn set_dst_port(&mut self, port: u16) {
        write_u16(self.buffer.as_mut(), field::DST_PORT, port);
    }

    /// Sets the checksum field.
    pub fn set_checksum(&mut self, checksum: u16) {
        write_u16(self.buffer.as_mut(), field::CHECKSUM, checksum);
    }

    /// Computes the checksum over the whole buffer from scratch.
    pub fn fill_checksum(&mut self, src: [u8; 4], dst: [u8; 4]) {
        self.set_checksum(0);
        let len = u16::try_from(self.buffer.as_ref().len()).unwrap_or(u16::MAX);
        let total =
            checksum::pseudo_header_sum(src, dst, crate::ipv4::PROTOCOL_TCP, len) + checksum::sum(self.buffer.as_ref());
        self.set_checksum(!checksum::fold(total));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static SYN: [u8; 24] = [
        0x04, 0x01, 0x01, 0xbb, 0, 0, 0, 1, 0, 0, 0, 0, 0x60, 0x02, 0xff, 0xff, 0, 0, 0, 0, // header
        0x02, 0x04, 0x05, 0xb4, // MSS option
    ];

    #[test]
    fn deconstruct_and_checksum() {
        let mut bytes = SYN;
        let mut p = TcpPacket::new_checked(&mut bytes[..]).expect("valid header");
        assert_eq!((p.src_port(), p.dst_port()), (1025, 443));
        assert_eq!((p.seq_number(), p.ack_number(), p.header_len(), p.flags()), (1, 0, 24, 0x02));
        assert_eq!((p.window(), p.urgent()), (0xffff, 0));
        p.fill_checksum([10, 0, 0, 1], [10, 0, 0, 2]);
        assert!(p.verify_checksum([10, 0, 0, 1], [10, 0, 0, 2]));
        assert!(!p.verify_checksum([10, 0, 0, 1], [10, 0, 0, 3]));
    }

    #[test]
    fn data_offset_is_bounds_checked() {
        assert_eq!(TcpPacket::new_checked(&SYN[..22]), Err(WireError::Truncated));
        let mut bytes = SYN;
        bytes[12] = 0x40;
        assert_eq!(TcpPacket::new_checked(&bytes[..]), Err(WireError::Malformed));
        bytes[12] = 0xf0;
        assert_eq!(TcpPacket::new_checked(&bytes[..]), Err(WireError::Truncated));
    }
}
