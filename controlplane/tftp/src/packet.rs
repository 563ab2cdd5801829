//! TFTP packets (RFC 1350 section 5, RFC 2347 OACK): strict decode of untrusted bytes, encode.
//!
//! ```text
//!  RRQ/WRQ  | 01/02 | filename | 0 | mode | 0 | opt1 | 0 | value1 | 0 | ... |
//!  DATA     | 03    | block #  | data (0..=blksize bytes)            |
//!  ACK      | 04    | block #  |
//!  ERROR    | 05    | code     | message | 0 |
//!  OACK     | 06    | opt1 | 0 | value1 | 0 | ... |
//!            2 bytes  2 bytes
//! ```
//!
//! Decoding never panics and never trusts a length: strings must be NUL-terminated, UTF-8 (the
//! netascii they are meant to be is a subset) and within [`MAX_STRING`]; option names are matched
//! case-insensitively by the negotiation code, not here.

use std::fmt;

/// Longest filename, mode, option name, option value or error message accepted.
pub const MAX_STRING: usize = 512;
/// Most options one request may carry (RFC 2347 puts no limit; real clients send at most five).
pub const MAX_OPTIONS: usize = 16;

/// Opcode values (RFC 1350 section 5, RFC 2347 section "Option Acknowledgment").
mod opcode {
    pub const RRQ: u16 = 1;
    pub const WRQ: u16 = 2;
    pub const DATA: u16 = 3;
    pub const ACK: u16 = 4;
    pub const ERROR: u16 = 5;
    pub const OACK: u16 = 6;
}

/// TFTP error codes (RFC 1350 appendix, RFC 2347 code 8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// 0: not defined, see message.
    Undefined,
    /// 1: file not found.
    FileNotFound,
    /// 2: access violation.
    AccessViolation,
    /// 3: disk full or allocation exceeded.
    DiskFull,
    /// 4: illegal TFTP operation.
    IllegalOperation,
    /// 5: unknown transfer ID.
    UnknownTransferId,
    /// 6: file already exists.
    FileExists,
    /// 7: no such user.
    NoSuchUser,
    /// 8: option negotiation refused (RFC 2347).
    OptionRefused,
    /// Any other value a peer sent.
    Other(u16),
}

impl ErrorCode {
    /// Wire value.
    pub fn to_u16(self) -> u16 {
        match self {
            Self::Undefined => 0,
            Self::FileNotFound => 1,
            Self::AccessViolation => 2,
            Self::DiskFull => 3,
            Self::IllegalOperation => 4,
            Self::UnknownTransferId => 5,
            Self::FileExists => 6,
            Self::NoSuchUser => 7,
            Self::OptionRefused => 8,
            Self::Other(v) => v,
        }
    }

    /// From the wire value.
    pub fn from_u16(v: u16) -> Self {
        match v {
            0 => Self::Undefined,
            1 => Self::FileNotFound,
            2 => Self::AccessViolation,
            3 => Self::DiskFull,
            4 => Self::IllegalOperation,
            5 => Self::UnknownTransferId,
            6 => Self::FileExists,
            7 => Self::NoSuchUser,
            8 => Self::OptionRefused,
            other => Self::Other(other),
        }
    }
}

/// Transfer mode of a request. `octet` is served as is; `netascii` is converted (LF to CR LF,
/// CR to CR NUL) for files up to `content::NETASCII_MAX_BYTES`; `mail` is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `netascii`.
    Netascii,
    /// `octet`.
    Octet,
    /// `mail` (obsolete, refused).
    Mail,
}

impl Mode {
    /// The mode as written on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Netascii => "netascii",
            Self::Octet => "octet",
            Self::Mail => "mail",
        }
    }
}

/// One option as it appeared (name keeps the client's spelling; RFC 2347 says case-insensitive).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TftpOption {
    /// Option name.
    pub name: String,
    /// Option value.
    pub value: String,
}

/// A read or write request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Requested path as sent.
    pub filename: String,
    /// Transfer mode.
    pub mode: Mode,
    /// Options in the order sent.
    pub options: Vec<TftpOption>,
}

/// A decoded TFTP packet; `Data` borrows its payload from the datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet<'a> {
    /// Read request.
    Rrq(Request),
    /// Write request.
    Wrq(Request),
    /// A data block.
    Data {
        /// Block number (wraps past 65535).
        block: u16,
        /// Payload.
        data: &'a [u8],
    },
    /// Acknowledgment.
    Ack {
        /// Acknowledged block number.
        block: u16,
    },
    /// Error.
    Error {
        /// Code.
        code: ErrorCode,
        /// Message.
        message: String,
    },
    /// Option acknowledgment.
    Oack(Vec<TftpOption>),
}

/// Why bytes are not a TFTP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// Fewer than 2 bytes, or a fixed field cut short.
    #[error("packet truncated")]
    Truncated,
    /// Opcode outside 1..=6.
    #[error("unknown opcode {0}")]
    UnknownOpcode(u16),
    /// A string without its terminating NUL.
    #[error("string not NUL-terminated")]
    Unterminated,
    /// A string longer than [`MAX_STRING`].
    #[error("string too long")]
    StringTooLong,
    /// A string that is not UTF-8.
    #[error("string is not UTF-8")]
    NotUtf8,
    /// A mode other than netascii, octet or mail.
    #[error("unknown transfer mode")]
    UnknownMode,
    /// An option name without a value, an empty name, or a repeated name.
    #[error("malformed option list")]
    BadOptions,
    /// More than [`MAX_OPTIONS`] options.
    #[error("too many options")]
    TooManyOptions,
    /// ACK with trailing bytes.
    #[error("trailing bytes")]
    Trailing,
    /// An empty filename.
    #[error("empty filename")]
    EmptyFilename,
}

/// Splits NUL-terminated strings off the front of a byte slice.
struct Strings<'a> {
    rest: &'a [u8],
}

impl<'a> Strings<'a> {
    fn next_string(&mut self) -> Result<&'a str, PacketError> {
        let end = self.rest.iter().position(|&b| b == 0).ok_or(PacketError::Unterminated)?;
        if end > MAX_STRING {
            return Err(PacketError::StringTooLong);
        }
        let (text, after) = self.rest.split_at(end);
        self.rest = after.get(1..).unwrap_or_default();
        std::str::from_utf8(text).map_err(|_| PacketError::NotUtf8)
    }

    fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }
}

fn parse_options(strings: &mut Strings<'_>) -> Result<Vec<TftpOption>, PacketError> {
    let mut options: Vec<TftpOption> = Vec::new();
    while !strings.is_empty() {
        let name = strings.next_string()?;
        let value = strings.next_string().map_err(|e| match e {
            PacketError::Unterminated => PacketError::BadOptions,
            other => other,
        })?;
        if name.is_empty() || options.iter().any(|o| o.name.eq_ignore_ascii_case(name)) {
            return Err(PacketError::BadOptions);
        }
        if options.len() == MAX_OPTIONS {
            return Err(PacketError::TooManyOptions);
        }
        options.push(TftpOption { name: name.to_owned(), value: value.to_owned() });
    }
    Ok(options)
}

fn parse_request(body: &[u8]) -> Result<Request, PacketError> {
    let mut strings = Strings { rest: body };
    let filename = strings.next_string()?;
    if filename.is_empty() {
        return Err(PacketError::EmptyFilename);
    }
    let mode = strings.next_string()?;
    let mode = if mode.eq_ignore_ascii_case("octet") {
        Mode::Octet
    } else if mode.eq_ignore_ascii_case("netascii") {
        Mode::Netascii
    } else if mode.eq_ignore_ascii_case("mail") {
        Mode::Mail
    } else {
        return Err(PacketError::UnknownMode);
    };
    let options = parse_options(&mut strings)?;
    Ok(Request { filename: filename.to_owned(), mode, options })
}

impl<'a> Packet<'a> {
    /// Decodes one datagram. Never panics.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, PacketError> {
        let (&[op_hi, op_lo], body) = bytes.split_first_chunk::<2>().ok_or(PacketError::Truncated)?;
        let op = u16::from_be_bytes([op_hi, op_lo]);
        match op {
            opcode::RRQ => Ok(Self::Rrq(parse_request(body)?)),
            opcode::WRQ => Ok(Self::Wrq(parse_request(body)?)),
            opcode::DATA => {
                let (&block, data) = body.split_first_chunk::<2>().ok_or(PacketError::Truncated)?;
                Ok(Self::Data { block: u16::from_be_bytes(block), data })
            }
            opcode::ACK => {
                // Some clients pad; RFC 1350 says exactly 4 bytes. Be strict.
                let (&block, rest) = body.split_first_chunk::<2>().ok_or(PacketError::Truncated)?;
                if !rest.is_empty() {
                    return Err(PacketError::Trailing);
                }
                Ok(Self::Ack { block: u16::from_be_bytes(block) })
            }
            opcode::ERROR => {
                let (&code, rest) = body.split_first_chunk::<2>().ok_or(PacketError::Truncated)?;
                // A missing NUL after the message is tolerated from peers: the error ends the
                // transfer either way and some stacks omit it.
                let mut strings = Strings { rest };
                let message = if rest.is_empty() {
                    String::new()
                } else {
                    match strings.next_string() {
                        Ok(m) => m.to_owned(),
                        Err(PacketError::Unterminated) => {
                            String::from_utf8_lossy(rest.get(..MAX_STRING.min(rest.len())).unwrap_or_default())
                                .into_owned()
                        }
                        Err(e) => return Err(e),
                    }
                };
                Ok(Self::Error { code: ErrorCode::from_u16(u16::from_be_bytes(code)), message })
            }
            opcode::OACK => Ok(Self::Oack(parse_options(&mut Strings { rest: body })?)),
            other => Err(PacketError::UnknownOpcode(other)),
        }
    }

    /// Appends the wire form to `out`.
    pub fn emit(&self, out: &mut Vec<u8>) {
        fn string(out: &mut Vec<u8>, s: &str) {
            out.extend_from_slice(s.as_bytes());
            out.push(0);
        }
        fn options(out: &mut Vec<u8>, options: &[TftpOption]) {
            for o in options {
                string(out, &o.name);
                string(out, &o.value);
            }
        }
        match self {
            Self::Rrq(r) | Self::Wrq(r) => {
                let op = if matches!(self, Self::Rrq(_)) { opcode::RRQ } else { opcode::WRQ };
                out.extend_from_slice(&op.to_be_bytes());
                string(out, &r.filename);
                string(out, r.mode.as_str());
                options(out, &r.options);
            }
            Self::Data { block, data } => emit_data(out, *block, data),
            Self::Ack { block } => {
                out.extend_from_slice(&opcode::ACK.to_be_bytes());
                out.extend_from_slice(&block.to_be_bytes());
            }
            Self::Error { code, message } => emit_error(out, *code, message),
            Self::Oack(opts) => {
                out.extend_from_slice(&opcode::OACK.to_be_bytes());
                options(out, opts);
            }
        }
    }
}

/// Appends a DATA packet header and payload.
pub fn emit_data(out: &mut Vec<u8>, block: u16, data: &[u8]) {
    out.extend_from_slice(&opcode::DATA.to_be_bytes());
    out.extend_from_slice(&block.to_be_bytes());
    out.extend_from_slice(data);
}

/// Appends an ERROR packet. The message is cut at the first NUL so the packet stays well-formed.
pub fn emit_error(out: &mut Vec<u8>, code: ErrorCode, message: &str) {
    out.extend_from_slice(&opcode::ERROR.to_be_bytes());
    out.extend_from_slice(&code.to_u16().to_be_bytes());
    let message = message.split('\0').next().unwrap_or_default();
    out.extend_from_slice(message.as_bytes());
    out.push(0);
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_u16())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn deconstruct_rrq_with_options() {
        let bytes = b"\x00\x01fw/t5.rom\x00octet\x00blksize\x001468\x00windowsize\x0016\x00tsize\x000\x00";
        let Ok(Packet::Rrq(r)) = Packet::parse(bytes) else { panic!("not an RRQ") };
        assert_eq!(r.filename, "fw/t5.rom");
        assert_eq!(r.mode, Mode::Octet);
        assert_eq!(r.options.len(), 3);
        assert_eq!(r.options[0], TftpOption { name: "blksize".into(), value: "1468".into() });
        let mut out = Vec::new();
        Packet::Rrq(r).emit(&mut out);
        assert_eq!(out, bytes);
    }

    #[test]
    fn construct_data_ack_error_oack() {
        let mut out = Vec::new();
        Packet::Data { block: 0x1234, data: b"abc" }.emit(&mut out);
        assert_eq!(out, b"\x00\x03\x12\x34abc");
        out.clear();
        Packet::Ack { block: 65535 }.emit(&mut out);
        assert_eq!(out, b"\x00\x04\xff\xff");
        out.clear();
        emit_error(&mut out, ErrorCode::AccessViolation, "no\0pe");
        assert_eq!(out, b"\x00\x05\x00\x02no\x00");
        out.clear();
        Packet::Oack(vec![TftpOption { name: "blksize".into(), value: "512".into() }]).emit(&mut out);
        assert_eq!(out, b"\x00\x06blksize\x00512\x00");
    }

    #[test]
    fn refuses_malformed() {
        let cases: &[(&[u8], PacketError)] = &[
            (b"", PacketError::Truncated),
            (b"\x00", PacketError::Truncated),
            (b"\x00\x07", PacketError::UnknownOpcode(7)),
            (b"\x00\x01file", PacketError::Unterminated),
            (b"\x00\x01\x00octet\x00", PacketError::EmptyFilename),
            (b"\x00\x01f\x00binary\x00", PacketError::UnknownMode),
            (b"\x00\x01f\x00octet\x00blksize\x00", PacketError::BadOptions),
            (b"\x00\x01f\x00octet\x00blksize\x00512", PacketError::BadOptions),
            (b"\x00\x01f\x00octet\x00a\x001\x00A\x002\x00", PacketError::BadOptions),
            (b"\x00\x01f\x00octet\x00\x001\x00", PacketError::BadOptions),
            (b"\x00\x01\xff\xfe\x00octet\x00", PacketError::NotUtf8),
            (b"\x00\x04\x00", PacketError::Truncated),
            (b"\x00\x04\x00\x01\x00", PacketError::Trailing),
            (b"\x00\x03\x00", PacketError::Truncated),
        ];
        for (bytes, want) in cases {
            assert_eq!(Packet::parse(bytes), Err(*want), "{bytes:?}");
        }
        let mut long = b"\x00\x01".to_vec();
        long.extend(std::iter::repeat_n(b'a', MAX_STRING + 1));
        long.extend_from_slice(b"\x00octet\x00");
        assert_eq!(Packet::parse(&long), Err(PacketError::StringTooLong));
    }

    #[test]
    fn error_without_nul_is_tolerated() {
        assert_eq!(
            Packet::parse(b"\x00\x05\x00\x08refused"),
            Ok(Packet::Error { code: ErrorCode::OptionRefused, message: "refused".into() })
        );
    }

    fn arb_string() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9./_-]{1,40}"
    }

    fn arb_request() -> impl Strategy<Value = Request> {
        (
            arb_string(),
            prop_oneof![Just(Mode::Octet), Just(Mode::Netascii), Just(Mode::Mail)],
            proptest::collection::btree_map("[a-z]{1,10}", "[0-9]{0,6}", 0..MAX_OPTIONS),
        )
            .prop_map(|(filename, mode, opts)| Request {
                filename,
                mode,
                options: opts.into_iter().map(|(name, value)| TftpOption { name, value }).collect(),
            })
    }

    fn arb_packet() -> impl Strategy<Value = (u8, Request, u16, Vec<u8>, u16, String)> {
        (
            0u8..6,
            arb_request(),
            any::<u16>(),
            proptest::collection::vec(any::<u8>(), 0..600),
            any::<u16>(),
            arb_string(),
        )
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..1500)) {
            let _ = Packet::parse(&bytes);
        }

        #[test]
        fn parse_never_panics_on_plausible_headers(
            op in 0u16..8,
            body in proptest::collection::vec(prop_oneof![Just(0u8), any::<u8>(), Just(b'a')], 0..200),
        ) {
            let mut bytes = op.to_be_bytes().to_vec();
            bytes.extend(body);
            let _ = Packet::parse(&bytes);
        }

        #[test]
        fn emit_then_parse_round_trips((kind, req, block, data, code, message) in arb_packet()) {
            let packet = match kind {
                0 => Packet::Rrq(req),
                1 => Packet::Wrq(req),
                2 => Packet::Data { block, data: &data },
                3 => Packet::Ack { block },
                4 => Packet::Error { code: ErrorCode::from_u16(code), message },
                _ => Packet::Oack(req.options),
            };
            let mut out = Vec::new();
            packet.emit(&mut out);
            prop_assert_eq!(Packet::parse(&out), Ok(packet));
        }
    }
}
