//! IPv4 headers (RFC 791), options allowed.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |Version|  IHL  |Type of Service|          Total Length         |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |         Identification        |Flags|      Fragment Offset    |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |  Time to Live |    Protocol   |         Header Checksum       |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                       Source Address                          |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                    Destination Address                        |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                    Options                    |    Padding    |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```

use std::net::Ipv4Addr;

use crate::checksum;
use crate::{read_u16, read_u32, write_u16, write_u32, WireError};

/// Protocol number of ICMP.
pub const PROTOCOL_ICMP: u8 = 1;
/// Protocol number of TCP.
pub const PROTOCOL_TCP: u8 = 6;
/// Protocol number of UDP.
pub const PROTOCOL_UDP: u8 = 17;

/// Length of a header without options.
pub const MIN_HEADER_LEN: usize = 20;

mod field {
    pub const VER_IHL: usize = 0;
    pub const TOS: usize = 1;
    pub const TOTAL_LEN: usize = 2;
    pub const IDENT: usize = 4;
    pub const FLAGS_FRAG: usize = 6;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: usize = 10;
    pub const SRC: usize = 12;
    pub const DST: usize = 16;
}

/// A view of an IPv4 packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Packet<T> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    /// Wraps a buffer the caller already checked.
    pub fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps untrusted bytes of a whole packet: version 4, IHL >= 5, the header and the total
    /// length it announces are present (trailing link-layer padding is allowed and ignored).
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let packet = Self::new_checked_header(buffer)?;
        let total = usize::from(packet.total_len());
        if total < packet.header_len() {
            return Err(WireError::Malformed);
        }
        if total > packet.buffer.as_ref().len() {
            return Err(WireError::Truncated);
        }
        Ok(packet)
    }

    /// Wraps untrusted bytes of which only the header need be present: the packet quoted inside
    /// an ICMP error, which is cut after its first bytes (RFC 792, RFC 1812 section 4.3.2.3).
    pub fn new_checked_header(buffer: T) -> Result<Self, WireError> {
        let packet = Self::new_unchecked(buffer);
        let data = packet.buffer.as_ref();
        if data.len() < MIN_HEADER_LEN {
            return Err(WireError::Truncated);
        }
        if packet.version() != 4 || packet.header_len() < MIN_HEADER_LEN {
            return Err(WireError::Malformed);
        }
        if packet.header_len() > data.len() {
            return Err(WireError::Truncated);
        }
        Ok(packet)
    }

    /// The wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// IP version (4).
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_IHL] >> 4
    }

    /// Header length in bytes (IHL x 4), options included.
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::VER_IHL] & 0x0F) * 4
    }

    /// Type of service / DSCP and ECN byte.
    pub fn tos(&self) -> u8 {
        self.buffer.as_ref()[field::TOS]
    }

    /// Total length, header included.
    pub fn total_len(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::TOTAL_LEN)
    }

    /// Identification (fragment reassembly key).
    pub fn ident(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::IDENT)
    }

    /// Don't-fragment flag.
    pub fn dont_frag(&self) -> bool {
        read_u16(self.buffer.as_ref(), field::FLAGS_FRAG) & 0x4000 != 0
    }

    /// More-fragments flag.
    pub fn more_frags(&self) -> bool {
        read_u16(self.buffer.as_ref(), field::FLAGS_FRAG) & 0x2000 != 0
    }

    /// Fragment offset in bytes.
    pub fn frag_offset(&self) -> u16 {
        (read_u16(self.buffer.as_ref(), field::FLAGS_FRAG) & 0x1FFF) << 3
    }

    /// True for any fragment of a fragmented datagram (first, middle or last).
    pub fn is_fragment(&self) -> bool {
        read_u16(self.buffer.as_ref(), field::FLAGS_FRAG) & 0x3FFF != 0
    }

    /// Time to live.
    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[field::TTL]
    }

    /// Protocol of the payload.
    pub fn protocol(&self) -> u8 {
        self.buffer.as_ref()[field::PROTOCOL]
    }

    /// The TTL and protocol bytes as the one 16-bit word the checksum sees.
    pub fn ttl_protocol_word(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::TTL)
    }

    /// Header checksum.
    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// Source address as a number (network order interpreted big-endian).
    pub fn src_u32(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::SRC)
    }

    /// Destination address as a number.
    pub fn dst_u32(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::DST)
    }

    /// Source address.
    pub fn src_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.src_u32())
    }

    /// Destination address.
    pub fn dst_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.dst_u32())
    }

    /// Options (empty without).
    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[MIN_HEADER_LEN..self.header_len()]
    }

    /// The header, options included.
    pub fn header(&self) -> &[u8] {
        &self.buffer.as_ref()[..self.header_len()]
    }

    /// The payload up to the total length, or up to the end of the buffer when that comes first
    /// (a quoted packet).
    pub fn payload(&self) -> &[u8] {
        let data = self.buffer.as_ref();
        let end = usize::from(self.total_len()).min(data.len()).max(self.header_len());
        &data[self.header_len()..end]
    }

    /// True when the header checksum is right (RFC 1071).
    pub fn verify_checksum(&self) -> bool {
        checksum::fold(checksum::sum(self.header())) == 0xFFFF
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4Packet<T> {
    /// Sets version 4 and the header length in bytes (a multiple of 4, 20..=60).
    pub fn set_version_and_header_len(&mut self, header_len: usize) {
        self.buffer.as_mut()[field::VER_IHL] = 0x40 | ((header_len / 4) as u8 & 0x0F);
    }

    /// Sets the type of service byte.
    pub fn set_tos(&mut self, tos: u8) {
        self.buffer.as_mut()[field::TOS] = tos;
    }

    /// Sets the total length.
    pub fn set_total_len(&mut self, len: u16) {
        write_u16(self.buffer.as_mut(), field::TOTAL_LEN, len);
    }

    /// Sets the identification.
    pub fn set_ident(&mut self, ident: u16) {
        write_u16(self.buffer.as_mut(), field::IDENT, ident);
    }

    /// Sets flags and fragment offset from their raw 16-bit word.
    pub fn set_flags_and_frag_word(&mut self, word: u16) {
        write_u16(self.buffer.as_mut(), field::FLAGS_FRAG, word);
    }

    /// Sets the time to live.
    pub fn set_ttl(&mut self, ttl: u8) {
        self.buffer.as_mut()[field::TTL] = ttl;
    }

    /// Sets the protocol.
    pub fn set_protocol(&mut self, protocol: u8) {
        self.buffer.as_mut()[field::PROTOCOL] = protocol;
    }

    /// Sets the header checksum field.
    pub fn set_checksum(&mut self, checksum: u16) {
        write_u16(self.buffer.as_mut(), field::CHECKSUM, checksum);
    }

    /// Sets the source address.
    pub fn set_src_u32(&mut self, addr: u32) {
        write_u32(self.buffer.as_mut(), field::SRC, addr);
    }

    /// Sets the destination address.
    pub fn set_dst_u32(&mut self, addr: u32) {
        write_u32(self.buffer.as_mut(), field::DST, addr);
    }

    /// Recomputes the header checksum from scratch (for headers the gateway builds).
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let ck = checksum::internet_checksum(self.header());
        self.set_checksum(ck);
    }

    /// The payload up to the total length (or the end of the buffer), writable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let header_len = self.header_len();
        let end = usize::from(self.total_len()).min(self.buffer.as_ref().len()).max(header_len);
        &mut self.buffer.as_mut()[header_len..end]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // 100.64.16.5 -> 192.0.2.10, UDP, TTL 64, ident 0x1234, DF, 28 bytes, one NOP-padded option
    // word would make IHL 6; this one has none.
    static PACKET: [u8; 30] = [
        0x45, 0x00, 0x00, 0x1c, 0x12, 0x34, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 100, 64, 16, 5, 192, 0, 2,
        10, // header
        0x04, 0x00, 0x00, 0x35, 0x00, 0x08, 0x00, 0x00, // UDP
        0xee, 0xee, // link padding
    ];

    fn with_checksum() -> [u8; 30] {
        let mut bytes = PACKET;
        Ipv4Packet::new_unchecked(&mut bytes[..]).fill_checksum();
        bytes
    }

    #[test]
    fn deconstruct() {
        let bytes = with_checksum();
        let p = Ipv4Packet::new_checked(&bytes[..]).expect("valid packet");
        assert_eq!(p.header_len(), 20);
        assert_eq!(p.total_len(), 28);
        assert_eq!(p.ident(), 0x1234);
        assert!(p.dont_frag() && !p.more_frags() && !p.is_fragment());
        assert_eq!((p.ttl(), p.protocol()), (64, PROTOCOL_UDP));
        assert_eq!(p.src_addr(), Ipv4Addr::new(100, 64, 16, 5));
        assert_eq!(p.dst_addr(), Ipv4Addr::new(192, 0, 2, 10));
        assert_eq!(p.payload().len(), 8, "padding after total length is not payload");
        assert!(p.verify_checksum());
    }

    #[test]
    fn refuses_bad_version_ihl_and_lengths() {
        let mut bytes = with_checksum();
        bytes[0] = 0x65;
        assert_eq!(Ipv4Packet::new_checked(&bytes[..]), Err(WireError::Malformed));
        bytes[0] = 0x44;
        assert_eq!(Ipv4Packet::new_checked(&bytes[..]), Err(WireError::Malformed));
        bytes[0] = 0x4f;
        assert_eq!(Ipv4Packet::new_checked(&bytes[..]), Err(WireError::Truncated));
        let mut bytes = with_checksum();
        bytes[3] = 0x40;
        assert_eq!(Ipv4Packet::new_checked(&bytes[..]), Err(WireError::Truncated));
        assert!(Ipv4Packet::new_checked_header(&bytes[..]).is_ok(), "a quoted header may be cut");
        bytes[3] = 0x10;
        assert_eq!(Ipv4Packet::new_checked(&bytes[..]), Err(WireError::Malformed));
        assert_eq!(Ipv4Packet::new_checked(&bytes[..19]), Err(WireError::Truncated));
    }

    #[test]
    fn options_and_fragments() {
        let mut bytes = [0u8; 32];
        let mut p = Ipv4Packet::new_unchecked(&mut bytes[..]);
        p.set_version_and_header_len(24);
        p.set_total_len(32);
        p.set_flags_and_frag_word(0x2000 | 3);
        p.set_ttl(1);
        p.set_protocol(PROTOCOL_TCP);
        p.set_src_u32(0x0a00_0001);
        p.set_dst_u32(0x0a00_0002);
        p.fill_checksum();
        let p = Ipv4Packet::new_checked(&bytes[..]).expect("valid packet");
        assert_eq!(p.options().len(), 4);
        assert!(p.more_frags() && p.is_fragment());
        assert_eq!(p.frag_offset(), 24);
        assert_eq!(p.payload().len(), 8);
        assert!(p.verify_checksum());
        assert_eq!(p.ttl_protocol_word(), 0x0106);
    }
}
