//! The generated UDP frames and the payload they carry (claims 001: 3-7 are checked through it).
//!
//! Every test frame is 60 bytes (64 on the wire with the FCS), full checksums, IPv4 DF set:
//!
//! ```text
//!  0            14                 34          42                                        60
//! +-------------+------------------+-----------+------------------------------------------+
//! | Ethernet    | IPv4 (20, no     | UDP (8)   | payload (18)                             |
//! | dst src 0800| options, TTL 64) |           |                                          |
//! +-------------+------------------+-----------+------------------------------------------+
//!
//! payload:
//!  0       2               6       8                               16      18
//! +-------+---------------+-------+-------------------------------+-------+
//! | magic | phone id      | port  | sent at, CLOCK_MONOTONIC ns   | seq   |
//! +-------+---------------+-------+-------------------------------+-------+
//! phone id = class index (8 bits) << 24 | offset in the class's LAN pool (24 bits)
//! port     = the phone-side port as the generator sent it (source outbound, destination inbound)
//! ```
//!
//! The receiver needs no lease table: the phone id names the sender, and the port-block function
//! run backwards on what arrives must name the same phone with the same port.

use std::net::Ipv4Addr;

use dialtone_wire::ipv4::{Ipv4Packet, PROTOCOL_UDP};
use dialtone_wire::UdpPacket;

/// Length of every generated frame without the FCS (64 bytes on the wire).
pub const FRAME_LEN: usize = 60;
/// Ethernet + IPv4 + UDP headers.
pub const HEADERS_LEN: usize = 14 + 20 + 8;
/// Payload bytes in a [`FRAME_LEN`] frame.
pub const PAYLOAD_LEN: usize = FRAME_LEN - HEADERS_LEN;
/// First two payload bytes of every generated frame.
pub const PAYLOAD_MAGIC: [u8; 2] = [0xd7, 0x01];
/// EtherType of IPv4.
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// The Ethernet broadcast address.
pub const BROADCAST_MAC: [u8; 6] = [0xff; 6];

/// A phone as the gateway's tables name it: class index and offset in the class's LAN pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PhoneId {
    /// Class index in the configuration.
    pub class: u8,
    /// Offset in the class's LAN pool (below 2^24).
    pub offset: u32,
}

impl PhoneId {
    /// Largest offset the payload can carry (a /8 LAN pool).
    pub const MAX_OFFSET: u32 = (1 << 24) - 1;

    /// The id, or `None` when the class index or offset does not fit the payload.
    pub fn new(class: usize, offset: u32) -> Option<Self> {
        let class = u8::try_from(class).ok()?;
        (offset <= Self::MAX_OFFSET).then_some(Self { class, offset })
    }

    fn to_bits(self) -> u32 {
        (u32::from(self.class) << 24) | self.offset
    }

    fn from_bits(bits: u32) -> Self {
        Self { class: (bits >> 24) as u8, offset: bits & Self::MAX_OFFSET }
    }
}

/// What a generated frame says about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Payload {
    /// The sending (outbound) or addressed (inbound) phone.
    pub phone: PhoneId,
    /// The phone-side port as generated.
    pub port: u16,
    /// CLOCK_MONOTONIC nanoseconds when the frame was written.
    pub sent_ns: u64,
    /// Generator sequence number (wrapping), for captures.
    pub sequence: u16,
}

impl Payload {
    /// Writes the payload into `out`.
    pub fn encode(&self, out: &mut [u8; PAYLOAD_LEN]) {
        out[0..2].copy_from_slice(&PAYLOAD_MAGIC);
        out[2..6].copy_from_slice(&self.phone.to_bits().to_be_bytes());
        out[6..8].copy_from_slice(&self.port.to_be_bytes());
        out[8..16].copy_from_slice(&self.sent_ns.to_be_bytes());
        out[16..18].copy_from_slice(&self.sequence.to_be_bytes());
    }

    /// Reads a payload, or `None` when `bytes` is not one of ours (length or magic).
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let bytes: &[u8; PAYLOAD_LEN] = bytes.get(..PAYLOAD_LEN)?.try_into().ok()?;
        if bytes[0..2] != PAYLOAD_MAGIC {
            return None;
        }
        Some(Self {
            phone: PhoneId::from_bits(u32::from_be_bytes([bytes[2], bytes[3], bytes[4], bytes[5]])),
            port: u16::from_be_bytes([bytes[6], bytes[7]]),
            sent_ns: u64::from_be_bytes([
                bytes[8], bytes[9], bytes[10], bytes[11], bytes[12], bytes[13], bytes[14], bytes[15],
            ]),
            sequence: u16::from_be_bytes([bytes[16], bytes[17]]),
        })
    }
}

/// Addresses and ports of one UDP datagram in its Ethernet frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpFlow {
    /// Ethernet source.
    pub src_mac: [u8; 6],
    /// Ethernet destination.
    pub dst_mac: [u8; 6],
    /// IPv4 source.
    pub src: Ipv4Addr,
    /// IPv4 destination.
    pub dst: Ipv4Addr,
    /// UDP source port.
    pub src_port: u16,
    /// UDP destination port.
    pub dst_port: u16,
}

/// Writes Ethernet, IPv4 and UDP headers with full checksums in front of the UDP payload that
/// already sits at `frame[42..]`; the datagram is the whole of `frame`. `ident` is the IPv4
/// identification.
///
/// # Panics
/// When `frame` is shorter than [`HEADERS_LEN`] or longer than 65535 bytes of IPv4: both are
/// callers' constants, never network input.
pub fn fill_udp_headers(frame: &mut [u8], flow: &UdpFlow, ident: u16) {
    assert!(frame.len() >= HEADERS_LEN && frame.len() - 14 <= usize::from(u16::MAX), "frame length");
    frame[0..6].copy_from_slice(&flow.dst_mac);
    frame[6..12].copy_from_slice(&flow.src_mac);
    frame[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    let ip_len = (frame.len() - 14) as u16;
    {
        let mut udp = UdpPacket::new_unchecked(&mut frame[34..]);
        udp.set_src_port(flow.src_port);
        udp.set_dst_port(flow.dst_port);
        udp.set_len(ip_len - 20);
        udp.fill_checksum(flow.src.octets(), flow.dst.octets());
    }
    let mut ip = Ipv4Packet::new_unchecked(&mut frame[14..]);
    ip.set_version_and_header_len(20);
    ip.set_tos(0);
    ip.set_total_len(ip_len);
    ip.set_ident(ident);
    ip.set_flags_and_frag_word(0x4000);
    ip.set_ttl(64);
    ip.set_protocol(PROTOCOL_UDP);
    ip.set_src_u32(u32::from(flow.src));
    ip.set_dst_u32(u32::from(flow.dst));
    ip.fill_checksum();
}

/// Writes one [`FRAME_LEN`]-byte test frame: headers for `flow`, then `payload`.
pub fn write_test_frame(frame: &mut [u8; FRAME_LEN], flow: &UdpFlow, payload: &Payload) {
    let body: &mut [u8; PAYLOAD_LEN] = (&mut frame[HEADERS_LEN..]).try_into().expect("PAYLOAD_LEN bytes after headers");
    payload.encode(body);
    fill_udp_headers(frame, flow, payload.sequence);
}

/// A UDP datagram in an Ethernet frame of its own length (DHCP messages).
pub fn udp_frame(flow: &UdpFlow, body: &[u8]) -> Vec<u8> {
    let mut frame = vec![0u8; HEADERS_LEN + body.len()];
    frame[HEADERS_LEN..].copy_from_slice(body);
    fill_udp_headers(&mut frame, flow, 0);
    frame
}

/// A received IPv4/UDP frame, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParsedUdp<'a> {
    /// Addresses and ports as received.
    pub flow: UdpFlow,
    /// The UDP payload.
    pub body: &'a [u8],
}

/// Why a received frame is not a well-formed IPv4/UDP datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// Not IPv4 over Ethernet, not UDP, a fragment, or truncated: not traffic of ours.
    NotUdp,
    /// IPv4 or UDP checksum wrong: something rewrote the frame without fixing it.
    BadChecksum,
}

/// Parses an Ethernet frame holding an unfragmented IPv4/UDP datagram, verifying both checksums
/// (a zero UDP checksum is accepted, RFC 768).
pub fn parse_udp(frame: &[u8]) -> Result<ParsedUdp<'_>, ParseError> {
    let (ethernet, rest) = frame.split_at_checked(14).ok_or(ParseError::NotUdp)?;
    if ethernet[12..14] != ETHERTYPE_IPV4.to_be_bytes() {
        return Err(ParseError::NotUdp);
    }
    let ip = Ipv4Packet::new_checked(rest).map_err(|_| ParseError::NotUdp)?;
    if ip.protocol() != PROTOCOL_UDP || ip.is_fragment() {
        return Err(ParseError::NotUdp);
    }
    if !ip.verify_checksum() {
        return Err(ParseError::BadChecksum);
    }
    let (src, dst) = (ip.src_addr(), ip.dst_addr());
    let header_len = ip.header_len();
    let total = usize::from(ip.total_len());
    let datagram = rest.get(header_len..total).ok_or(ParseError::NotUdp)?;
    let udp = UdpPacket::new_checked(datagram).map_err(|_| ParseError::NotUdp)?;
    if udp.checksum() != 0 && !udp.verify_checksum(src.octets(), dst.octets()) {
        return Err(ParseError::BadChecksum);
    }
    let udp_len = usize::from(udp.len());
    let body = datagram.get(8..udp_len).ok_or(ParseError::NotUdp)?;
    let mut src_mac = [0u8; 6];
    let mut dst_mac = [0u8; 6];
    dst_mac.copy_from_slice(&ethernet[0..6]);
    src_mac.copy_from_slice(&ethernet[6..12]);
    Ok(ParsedUdp {
        flow: UdpFlow { src_mac, dst_mac, src, dst, src_port: udp.src_port(), dst_port: udp.dst_port() },
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Independent RFC 1071 sum: 16-bit big-endian words, odd byte padded, carries folded.
    fn ones_complement(words: &[u8]) -> u16 {
        let mut total: u32 = 0;
        for pair in words.chunks(2) {
            let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
            total += u32::from(word);
        }
        while total > 0xffff {
            total = (total & 0xffff) + (total >> 16);
        }
        !(total as u16)
    }

    fn recomputed(frame: &[u8]) -> (u16, u16) {
        let mut ip = frame[14..34].to_vec();
        ip[10] = 0;
        ip[11] = 0;
        let ip_sum = ones_complement(&ip);
        let udp = &frame[34..];
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&frame[26..34]);
        pseudo.extend_from_slice(&[0, 17]);
        pseudo.extend_from_slice(&(udp.len() as u16).to_be_bytes());
        pseudo.extend_from_slice(&udp[..6]);
        pseudo.extend_from_slice(&[0, 0]);
        pseudo.extend_from_slice(&udp[8..]);
        let udp_sum = match ones_complement(&pseudo) {
            0 => 0xffff,
            sum => sum,
        };
        (ip_sum, udp_sum)
    }

    fn flow(src: u32, dst: u32, src_port: u16, dst_port: u16) -> UdpFlow {
        UdpFlow {
            src_mac: [2, 0x64, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 1],
            src: Ipv4Addr::from(src),
            dst: Ipv4Addr::from(dst),
            src_port,
            dst_port,
        }
    }

    #[test]
    fn test_frame_layout() {
        let mut frame = [0u8; FRAME_LEN];
        let payload = Payload {
            phone: PhoneId { class: 2, offset: 0x01_0203 },
            port: 4096,
            sent_ns: 0x1122_3344_5566_7788,
            sequence: 9,
        };
        write_test_frame(&mut frame, &flow(0x6440_8001, 0xcb00_710a, 4096, 9), &payload);
        assert_eq!(&frame[0..14], &[2, 0, 0, 0, 0, 1, 2, 0x64, 0, 0, 0, 1, 0x08, 0x00]);
        assert_eq!(&frame[14..18], &[0x45, 0, 0, 46]);
        assert_eq!(&frame[18..24], &[0, 9, 0x40, 0, 64, 17]);
        assert_eq!(&frame[26..34], &[100, 64, 128, 1, 203, 0, 113, 10]);
        assert_eq!(&frame[34..40], &[0x10, 0, 0, 9, 0, 26]);
        assert_eq!(&frame[42..], &[0xd7, 1, 2, 1, 2, 3, 0x10, 0, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0, 9]);
        let parsed = parse_udp(&frame).expect("our frame parses");
        assert_eq!(Payload::decode(parsed.body), Some(payload));
    }

    #[test]
    fn corrupted_frames_are_refused() {
        let mut frame = [0u8; FRAME_LEN];
        let payload = Payload { phone: PhoneId { class: 0, offset: 7 }, port: 1024, sent_ns: 1, sequence: 1 };
        write_test_frame(&mut frame, &flow(0x6440_0007, 0xcb00_710a, 1024, 9), &payload);
        let mut bad_ip = frame;
        bad_ip[26] ^= 1;
        assert_eq!(parse_udp(&bad_ip), Err(ParseError::BadChecksum));
        let mut bad_udp = frame;
        bad_udp[50] ^= 1;
        assert_eq!(parse_udp(&bad_udp), Err(ParseError::BadChecksum));
        let mut arp = frame;
        arp[12..14].copy_from_slice(&[8, 6]);
        assert_eq!(parse_udp(&arp), Err(ParseError::NotUdp));
        assert_eq!(parse_udp(&frame[..40]), Err(ParseError::NotUdp));
        let mut other = frame;
        other[42] = 0;
        assert_eq!(Payload::decode(parse_udp(&other).map(|p| p.body).unwrap_or_default()), None);
    }

    proptest! {
        #[test]
        fn checksums_equal_a_full_recompute(src: u32, dst: u32, sport: u16, dport: u16,
                                            class: u8, offset in 0u32..=PhoneId::MAX_OFFSET,
                                            port: u16, sent_ns: u64, sequence: u16) {
            let mut frame = [0u8; FRAME_LEN];
            let payload = Payload { phone: PhoneId { class, offset }, port, sent_ns, sequence };
            write_test_frame(&mut frame, &flow(src, dst, sport, dport), &payload);
            let stored = (u16::from_be_bytes([frame[24], frame[25]]), u16::from_be_bytes([frame[40], frame[41]]));
            prop_assert_eq!(stored, recomputed(&frame));
            let parsed = parse_udp(&frame).expect("generated frames parse");
            prop_assert_eq!(parsed.flow, flow(src, dst, sport, dport));
            prop_assert_eq!(Payload::decode(parsed.body), Some(payload));
        }

        #[test]
        fn variable_length_datagrams_checksum_right(body in proptest::collection::vec(any::<u8>(), 0..600)) {
            let frame = udp_frame(&flow(0, u32::MAX, 68, 67), &body);
            let stored = (u16::from_be_bytes([frame[24], frame[25]]), u16::from_be_bytes([frame[40], frame[41]]));
            prop_assert_eq!(stored, recomputed(&frame));
            prop_assert_eq!(parse_udp(&frame).map(|p| p.body.to_vec()), Ok(body));
        }

        #[test]
        fn payload_round_trips(class: u8, offset in 0u32..=PhoneId::MAX_OFFSET, port: u16, sent_ns: u64, sequence: u16) {
            let payload = Payload { phone: PhoneId { class, offset }, port, sent_ns, sequence };
            let mut bytes = [0u8; PAYLOAD_LEN];
            payload.encode(&mut bytes);
            prop_assert_eq!(Payload::decode(&bytes), Some(payload));
        }

        #[test]
        fn parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..120)) {
            if let Ok(p) = parse_udp(&bytes) {
                let _ = Payload::decode(p.body);
            }
        }
    }
}
