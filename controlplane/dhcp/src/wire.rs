//! The DHCPv4 message on the wire (RFC 2131 section 2, RFC 2132, RFC 3396), decoded strictly.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +---------------+---------------+---------------+---------------+
//! |     op (1)    |   htype (1)   |   hlen (1)    |   hops (1)    |
//! +---------------+---------------+---------------+---------------+
//! |                            xid (4)                            |
//! +-------------------------------+-------------------------------+
//! |           secs (2)            |           flags (2)           |
//! +-------------------------------+-------------------------------+
//! |  ciaddr (4) | yiaddr (4) | siaddr (4) | giaddr (4)            |
//! +---------------------------------------------------------------+
//! |  chaddr (16)  |  sname (64)  |  file (128)                    |
//! +---------------------------------------------------------------+
//! |  magic cookie 99.130.83.99 (4)  |  options (variable)         |
//! +---------------------------------------------------------------+
//! ```
//!
//! Decoding refuses, rather than guesses: a datagram shorter than the fixed part plus cookie, a
//! wrong cookie, `hlen > 16`, an option whose length runs past its field, a field without an End
//! option, and an option 52 (overload) that is not exactly one byte of 1, 2 or 3, that appears
//! twice, or that appears inside `file`/`sname`. With overload, options are read from the options
//! field, then `file`, then `sname`, and every instance of a code is concatenated in that order
//! (RFC 3396 section 7). Nothing is dropped silently: an option is either kept or the whole message
//! is refused with a [`DecodeError`].

use std::net::Ipv4Addr;

/// BOOTP/DHCP magic cookie (RFC 2131 section 3).
pub const MAGIC_COOKIE: [u8; 4] = [99, 130, 83, 99];
/// Bytes before the options: fixed header and cookie.
pub const FIXED_LEN: usize = 240;
/// Smallest DHCP message every client must accept (RFC 2131 section 2: 576-byte IP datagram).
pub const MIN_MAX_MESSAGE: usize = 576 - 28;
/// BOOTP relays expect at least this many bytes (RFC 1542 section 2.1).
pub const MIN_BOOTP_LEN: usize = 300;

/// Option codes used here (RFC 2132 unless noted).
pub mod code {
    /// Padding.
    pub const PAD: u8 = 0;
    /// Subnet mask.
    pub const SUBNET_MASK: u8 = 1;
    /// Routers.
    pub const ROUTER: u8 = 3;
    /// DNS servers.
    pub const DNS: u8 = 6;
    /// Host name.
    pub const HOST_NAME: u8 = 12;
    /// Domain name.
    pub const DOMAIN_NAME: u8 = 15;
    /// Vendor-specific information.
    pub const VENDOR_SPECIFIC: u8 = 43;
    /// Requested IP address.
    pub const REQUESTED_IP: u8 = 50;
    /// Lease time.
    pub const LEASE_TIME: u8 = 51;
    /// Option overload.
    pub const OVERLOAD: u8 = 52;
    /// Message type.
    pub const MESSAGE_TYPE: u8 = 53;
    /// Server identifier.
    pub const SERVER_ID: u8 = 54;
    /// Parameter request list.
    pub const PARAMETER_REQUEST_LIST: u8 = 55;
    /// Message (error text).
    pub const MESSAGE: u8 = 56;
    /// Maximum DHCP message size.
    pub const MAX_MESSAGE_SIZE: u8 = 57;
    /// Renewal time T1.
    pub const RENEWAL_TIME: u8 = 58;
    /// Rebinding time T2.
    pub const REBINDING_TIME: u8 = 59;
    /// Vendor class identifier.
    pub const VENDOR_CLASS: u8 = 60;
    /// Client identifier.
    pub const CLIENT_ID: u8 = 61;
    /// TFTP server name.
    pub const TFTP_SERVER_NAME: u8 = 66;
    /// Boot file name.
    pub const BOOT_FILE: u8 = 67;
    /// Relay agent information (RFC 3046).
    pub const RELAY_AGENT_INFO: u8 = 82;
    /// TFTP server addresses (RFC 5859).
    pub const TFTP_SERVER_ADDRESS: u8 = 150;
    /// OPTION_V4_PORTPARAMS (RFC 7618).
    pub const V4_PORTPARAMS: u8 = 159;
    /// End.
    pub const END: u8 = 255;
}

/// `op` of a client message.
pub const BOOTREQUEST: u8 = 1;
/// `op` of a server message.
pub const BOOTREPLY: u8 = 2;
/// The broadcast bit of `flags` (RFC 2131 section 2, figure 2).
pub const FLAG_BROADCAST: u16 = 0x8000;

/// Why a datagram is not a DHCP message dialtone will read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Shorter than the fixed header plus cookie.
    #[error("{0} bytes is shorter than the 240-byte fixed part")]
    TooShort(usize),
    /// `hlen` larger than the 16-byte `chaddr` field.
    #[error("hlen {0} exceeds the 16-byte chaddr field")]
    HardwareLength(u8),
    /// No magic cookie at offset 236.
    #[error("missing magic cookie")]
    MagicCookie,
    /// An option's length byte or data runs past the end of its field.
    #[error("option {code} runs past the end of the {field} field")]
    OptionOverrun {
        /// Option code.
        code: u8,
        /// `options`, `file` or `sname`.
        field: &'static str,
    },
    /// A field's options are not terminated by End.
    #[error("the {0} field has no End option")]
    MissingEnd(&'static str),
    /// Option 52 malformed: wrong length, value not 1..=3, repeated, or not in the options field.
    #[error("malformed option overload (52)")]
    Overload,
}

/// The options of a message: each code once, instances concatenated (RFC 3396), in order of first
/// appearance.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options(Vec<(u8, Vec<u8>)>);

impl Options {
    /// No options.
    pub fn new() -> Self {
        Self::default()
    }

    /// The payload of `code`, if present.
    pub fn get(&self, code: u8) -> Option<&[u8]> {
        self.0.iter().find(|(c, _)| *c == code).map(|(_, v)| v.as_slice())
    }

    /// Appends to `code` (concatenating, as a repeated option on the wire would).
    pub fn append(&mut self, code: u8, data: &[u8]) {
        match self.0.iter_mut().find(|(c, _)| *c == code) {
            Some((_, v)) => v.extend_from_slice(data),
            None => self.0.push((code, data.to_vec())),
        }
    }

    /// Sets `code` to `data`, replacing any previous value (keeps its position).
    pub fn set(&mut self, code: u8, data: Vec<u8>) {
        match self.0.iter_mut().find(|(c, _)| *c == code) {
            Some((_, v)) => *v = data,
            None => self.0.push((code, data)),
        }
    }

    /// Every `(code, payload)` in order.
    pub fn iter(&self) -> impl Iterator<Item = (u8, &[u8])> {
        self.0.iter().map(|(c, v)| (*c, v.as_slice()))
    }

    /// Number of distinct codes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True without options.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A whole DHCP message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// 1 request, 2 reply.
    pub op: u8,
    /// Hardware type (1 = Ethernet).
    pub htype: u8,
    /// Hardware address length, at most 16.
    pub hlen: u8,
    /// Relay hops.
    pub hops: u8,
    /// Transaction id.
    pub xid: u32,
    /// Seconds since the client began.
    pub secs: u16,
    /// Flags (broadcast bit).
    pub flags: u16,
    /// Client address (bound clients).
    pub ciaddr: Ipv4Addr,
    /// "Your" address.
    pub yiaddr: Ipv4Addr,
    /// Next server (TFTP).
    pub siaddr: Ipv4Addr,
    /// Relay agent address.
    pub giaddr: Ipv4Addr,
    /// Client hardware address, `hlen` significant bytes.
    pub chaddr: [u8; 16],
    /// Server host name (zeroed when it carried overloaded options).
    pub sname: [u8; 64],
    /// Boot file name (zeroed when it carried overloaded options).
    pub file: [u8; 128],
    /// Options, overload resolved.
    pub options: Options,
}

impl Message {
    /// A client's BOOTREQUEST from the Ethernet address `mac`: transaction `xid`, `options`, and
    /// every other field zero (callers set flags, secs or ciaddr where their state needs them).
    pub fn request(xid: u32, mac: [u8; 6], options: Options) -> Self {
        let mut chaddr = [0u8; 16];
        chaddr[..6].copy_from_slice(&mac);
        Self {
            op: BOOTREQUEST,
            htype: 1,
            hlen: 6,
            hops: 0,
            xid,
            secs: 0,
            flags: 0,
            ciaddr: Ipv4Addr::UNSPECIFIED,
            yiaddr: Ipv4Addr::UNSPECIFIED,
            siaddr: Ipv4Addr::UNSPECIFIED,
            giaddr: Ipv4Addr::UNSPECIFIED,
            chaddr,
            sname: [0; 64],
            file: [0; 128],
            options,
        }
    }

    /// A reply skeleton echoing the request's identifying fields (RFC 2131 table 3).
    pub fn reply_to(request: &Message) -> Self {
        Self {
            op: BOOTREPLY,
            htype: request.htype,
            hlen: request.hlen,
            hops: 0,
            xid: request.xid,
            secs: 0,
            flags: request.flags,
            ciaddr: Ipv4Addr::UNSPECIFIED,
            yiaddr: Ipv4Addr::UNSPECIFIED,
            siaddr: Ipv4Addr::UNSPECIFIED,
            giaddr: request.giaddr,
            chaddr: request.chaddr,
            sname: [0; 64],
            file: [0; 128],
            options: Options::new(),
        }
    }

    /// The significant bytes of `chaddr`.
    pub fn hardware_address(&self) -> &[u8] {
        self.chaddr.get(..usize::from(self.hlen)).unwrap_or(&self.chaddr)
    }

    /// Decodes `bytes` strictly (see the module doc).
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let Some((fixed, mut rest)) = bytes.split_at_checked(FIXED_LEN) else {
            return Err(DecodeError::TooShort(bytes.len()));
        };
        let fixed: &[u8; FIXED_LEN] = fixed.try_into().map_err(|_| DecodeError::TooShort(bytes.len()))?;
        let hlen = fixed[2];
        if hlen > 16 {
            return Err(DecodeError::HardwareLength(hlen));
        }
        if fixed[236..240] != MAGIC_COOKIE {
            return Err(DecodeError::MagicCookie);
        }
        let addr = |at: usize| Ipv4Addr::new(fixed[at], fixed[at + 1], fixed[at + 2], fixed[at + 3]);
        let mut msg = Self {
            op: fixed[0],
            htype: fixed[1],
            hlen,
            hops: fixed[3],
            xid: u32::from_be_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]),
            secs: u16::from_be_bytes([fixed[8], fixed[9]]),
            flags: u16::from_be_bytes([fixed[10], fixed[11]]),
            ciaddr: addr(12),
            yiaddr: addr(16),
            siaddr: addr(20),
            giaddr: addr(24),
            chaddr: [0; 16],
            sname: [0; 64],
            file: [0; 128],
            options: Options::new(),
        };
        msg.chaddr.copy_from_slice(&fixed[28..44]);
        msg.sname.copy_from_slice(&fixed[44..108]);
        msg.file.copy_from_slice(&fixed[108..236]);

        let mut overload = None;
        parse_field(&mut rest, "options", &mut msg.options, Some(&mut overload))?;
        let overload = overload.unwrap_or(0);
        // RFC 3396 section 7: options, then file, then sname.
        if overload & 1 != 0 {
            let mut field: &[u8] = &fixed[108..236];
            parse_field(&mut field, "file", &mut msg.options, None)?;
            msg.file = [0; 128];
        }
        if overload & 2 != 0 {
            let mut field: &[u8] = &fixed[44..108];
            parse_field(&mut field, "sname", &mut msg.options, None)?;
            msg.sname = [0; 64];
        }
        Ok(msg)
    }

    /// Encodes with at most `max_len` bytes (clamped to at least [`MIN_MAX_MESSAGE`]). Options that
    /// do not fit are left out and their codes returned, in order, for the caller to count; the
    /// options are written in the order of [`Options::iter`], so callers put essential ones first.
    /// Payloads longer than 255 bytes are split into consecutive instances (RFC 3396).
    pub fn encode(&self, max_len: usize) -> (Vec<u8>, Vec<u8>) {
        self.encode_with(max_len, self.options.iter())
    }

    /// [`encode`](Self::encode) with `options` in place of [`Message::options`] (which is not
    /// read): a server builds its replies from payloads it already holds, without copying each
    /// into an [`Options`] first. Each code must appear once.
    pub fn encode_with<'a>(
        &self,
        max_len: usize,
        options: impl IntoIterator<Item = (u8, &'a [u8])>,
    ) -> (Vec<u8>, Vec<u8>) {
        let max_len = max_len.max(MIN_MAX_MESSAGE);
        let mut out = Vec::with_capacity(max_len.min(1500));
        out.extend_from_slice(&[self.op, self.htype, self.hlen, self.hops]);
        out.extend_from_slice(&self.xid.to_be_bytes());
        out.extend_from_slice(&self.secs.to_be_bytes());
        out.extend_from_slice(&self.flags.to_be_bytes());
        for a in [self.ciaddr, self.yiaddr, self.siaddr, self.giaddr] {
            out.extend_from_slice(&a.octets());
        }
        out.extend_from_slice(&self.chaddr);
        out.extend_from_slice(&self.sname);
        out.extend_from_slice(&self.file);
        out.extend_from_slice(&MAGIC_COOKIE);
        let mut left_out = Vec::new();
        for (code, data) in options {
            let instances = data.len().div_ceil(255).max(1);
            let needed = data.len() + 2 * instances;
            // One byte stays for End.
            if out.len() + needed + 1 > max_len {
                left_out.push(code);
                continue;
            }
            if data.is_empty() {
                out.extend_from_slice(&[code, 0]);
            }
            for chunk in data.chunks(255) {
                out.push(code);
                out.push(chunk.len() as u8);
                out.extend_from_slice(chunk);
            }
        }
        out.push(code::END);
        if out.len() < MIN_BOOTP_LEN {
            out.resize(MIN_BOOTP_LEN, code::PAD);
        }
        (out, left_out)
    }
}

/// Reads one field's options into `options`. `overload` is `Some` only for the options field,
/// the one place option 52 may appear.
fn parse_field(
    field: &mut &[u8],
    name: &'static str,
    options: &mut Options,
    mut overload: Option<&mut Option<u8>>,
) -> Result<(), DecodeError> {
    loop {
        let Some((&code, rest)) = field.split_first() else {
            return Err(DecodeError::MissingEnd(name));
        };
        *field = rest;
        match code {
            code::PAD => continue,
            code::END => return Ok(()),
            _ => {}
        }
        let Some((&len, rest)) = field.split_first() else {
            return Err(DecodeError::OptionOverrun { code, field: name });
        };
        let Some((data, rest)) = rest.split_at_checked(usize::from(len)) else {
            return Err(DecodeError::OptionOverrun { code, field: name });
        };
        *field = rest;
        if code == code::OVERLOAD {
            let Some(slot) = overload.as_deref_mut() else {
                return Err(DecodeError::Overload);
            };
            match (data, *slot) {
                (&[value @ 1..=3], None) => *slot = Some(value),
                _ => return Err(DecodeError::Overload),
            }
            continue;
        }
        options.append(code, data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A minimal DISCOVER from 80:5e:c0:00:00:01 with vendor class "Yealink SIP-T54W".
    pub(crate) fn discover_bytes() -> Vec<u8> {
        let mut b = vec![0u8; FIXED_LEN];
        b[0] = 1;
        b[1] = 1;
        b[2] = 6;
        b[4..8].copy_from_slice(&0x1234_5678u32.to_be_bytes());
        b[28..34].copy_from_slice(&[0x80, 0x5e, 0xc0, 0, 0, 1]);
        b[236..240].copy_from_slice(&MAGIC_COOKIE);
        b.extend_from_slice(&[53, 1, 1]);
        b.extend_from_slice(&[60, 16]);
        b.extend_from_slice(b"Yealink SIP-T54W");
        b.push(255);
        b
    }

    #[test]
    fn decodes_a_discover() {
        let m = Message::decode(&discover_bytes()).unwrap();
        assert_eq!(m.op, 1);
        assert_eq!(m.xid, 0x1234_5678);
        assert_eq!(m.hardware_address(), &[0x80, 0x5e, 0xc0, 0, 0, 1]);
        assert_eq!(m.options.get(53), Some(&[1u8][..]));
        assert_eq!(m.options.get(60), Some(&b"Yealink SIP-T54W"[..]));
    }

    #[test]
    fn refuses_what_it_cannot_trust() {
        let good = discover_bytes();
        assert_eq!(Message::decode(&good[..239]), Err(DecodeError::TooShort(239)));
        let mut b = good.clone();
        b[2] = 17;
        assert_eq!(Message::decode(&b), Err(DecodeError::HardwareLength(17)));
        let mut b = good.clone();
        b[239] = 0;
        assert_eq!(Message::decode(&b), Err(DecodeError::MagicCookie));
        let mut b = good.clone();
        b.pop();
        assert_eq!(Message::decode(&b), Err(DecodeError::MissingEnd("options")));
        let mut b = good[..FIXED_LEN].to_vec();
        b.extend_from_slice(&[53, 5, 1]);
        assert_eq!(Message::decode(&b), Err(DecodeError::OptionOverrun { code: 53, field: "options" }));
        let mut b = good[..FIXED_LEN].to_vec();
        b.extend_from_slice(&[53]);
        assert_eq!(Message::decode(&b), Err(DecodeError::OptionOverrun { code: 53, field: "options" }));
        for bad in [&[52u8, 1, 0][..], &[52, 1, 4], &[52, 2, 1, 1], &[52, 0], &[52, 1, 1, 52, 1, 1]] {
            let mut b = good[..FIXED_LEN].to_vec();
            b.extend_from_slice(bad);
            b.push(255);
            // A file field of End only, so a valid overload would parse.
            b[108] = 255;
            b[44] = 255;
            assert_eq!(Message::decode(&b), Err(DecodeError::Overload), "{bad:?}");
        }
    }

    #[test]
    fn overload_reads_file_then_sname_and_concatenates() {
        let mut b = discover_bytes();
        b.pop();
        b.extend_from_slice(&[52, 1, 3, 12, 2, b'a', b'b', 255]);
        // file: more of option 12, then a TFTP name; sname: still more of 12.
        b[108..116].copy_from_slice(&[12, 1, b'c', 66, 2, b'x', b'y', 255]);
        b[44..48].copy_from_slice(&[12, 1, b'd', 255]);
        let m = Message::decode(&b).unwrap();
        assert_eq!(m.options.get(12), Some(&b"abcd"[..]));
        assert_eq!(m.options.get(66), Some(&b"xy"[..]));
        assert_eq!(m.file, [0; 128]);
        assert_eq!(m.sname, [0; 64]);

        // Overload in file is refused; overrun inside sname is refused.
        let mut c = b.clone();
        c[108..111].copy_from_slice(&[52, 1, 1]);
        assert_eq!(Message::decode(&c), Err(DecodeError::Overload));
        let mut c = b.clone();
        c[44..47].copy_from_slice(&[12, 200, 0]);
        assert_eq!(Message::decode(&c), Err(DecodeError::OptionOverrun { code: 12, field: "sname" }));
        // A file field without End.
        let mut c = b;
        c[108..236].fill(0);
        assert_eq!(Message::decode(&c), Err(DecodeError::MissingEnd("file")));
    }

    #[test]
    fn encode_splits_long_options_and_respects_the_limit() {
        let mut m = Message::decode(&discover_bytes()).unwrap();
        m.options = Options::new();
        m.options.set(53, vec![2]);
        m.options.set(43, vec![7; 350]);
        m.options.set(12, vec![1; 200]);
        let (bytes, left) = m.encode(1500);
        assert!(left.is_empty());
        let back = Message::decode(&bytes).unwrap();
        assert_eq!(back.options, m.options);
        let (small, left) = m.encode(0);
        assert_eq!(small.len(), MIN_MAX_MESSAGE.min(small.len()));
        assert!(small.len() <= MIN_MAX_MESSAGE);
        assert_eq!(left, vec![43]);
        assert_eq!(Message::decode(&small).unwrap().options.get(12), Some(&[1u8; 200][..]));
    }

    proptest! {
        #[test]
        fn any_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..700)) {
            let _ = Message::decode(&bytes);
        }

        #[test]
        fn any_options_after_a_valid_header_never_panic(tail in proptest::collection::vec(any::<u8>(), 0..400),
                                                        file in proptest::collection::vec(any::<u8>(), 128),
                                                        hlen: u8) {
            let mut b = discover_bytes()[..FIXED_LEN].to_vec();
            b[2] = hlen;
            b[108..236].copy_from_slice(&file);
            b.extend_from_slice(&tail);
            if let Ok(m) = Message::decode(&b) {
                prop_assert!(m.hlen <= 16);
                let (again, left) = m.encode(usize::MAX);
                prop_assert!(left.is_empty());
                prop_assert_eq!(Message::decode(&again).map(|x| x.options), Ok(m.options));
            }
        }
    }
}
