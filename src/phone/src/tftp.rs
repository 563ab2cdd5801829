//! The phone's TFTP client (RFC 1350 with RFC 2347 options: blksize 2348, tsize 2349, windowsize
//! 7440), built on the project's packet codec ([`dialtone_tftp::packet`]). [`Download`] is the
//! sans-IO core; [`fetch`] is the blocking shell over one UDP socket bound to the phone's address.
//!
//! The content is hashed (SHA-256) and counted as it arrives and, when asked, kept in memory.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use dialtone_tftp::packet::{Mode, Packet, Request, TftpOption};
use sha2::{Digest as _, Sha256};

/// TFTP's well-known port.
pub const PORT: u16 = 69;
/// Block size asked for: fits a 1500-byte MTU with IP, UDP and TFTP headers.
pub const BLKSIZE: usize = 1468;
/// Blocks per acknowledgment asked for (RFC 7440).
pub const WINDOWSIZE: u32 = 16;
/// Largest file a phone accepts.
pub const MAX_BYTES: u64 = 256 << 20;

/// What the transfer produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// Bytes received.
    pub size: u64,
    /// The size the server announced (tsize), if it did.
    pub announced_size: Option<u64>,
    /// SHA-256 of the content.
    pub sha256: [u8; 32],
    /// The content, when the caller asked to keep it.
    pub content: Option<Vec<u8>>,
}

/// Why a transfer failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TftpError {
    /// The server answered with an error packet.
    #[error("server error {code}: {message}")]
    Server {
        /// TFTP error code.
        code: u16,
        /// Its message.
        message: String,
    },
    /// Nothing arrived after every retransmission.
    #[error("no answer from {0} after {1} retransmissions")]
    Timeout(SocketAddr, u32),
    /// A malformed or out-of-protocol packet from the transfer's peer.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// More than [`MAX_BYTES`].
    #[error("file larger than {MAX_BYTES} bytes")]
    TooLarge,
    /// Socket failure.
    #[error("socket: {0}")]
    Io(String),
}

impl TftpError {
    /// True for "file not found" (TFTP error 1).
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::Server { code: 1, .. })
    }
}

/// What the core asks the shell to do after a datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing to send (a datagram from a stranger, or mid-window).
    Wait,
    /// Send this to the transfer's peer.
    Send(Vec<u8>),
    /// Send this final ACK; the transfer is complete.
    Finish(Vec<u8>),
    /// The transfer failed.
    Fail(TftpError),
}

/// One download, sans-IO.
#[derive(Debug, Clone)]
pub struct Download {
    filename: String,
    peer: Option<SocketAddr>,
    blksize: usize,
    windowsize: u32,
    expected: u16,
    in_window: u32,
    size: u64,
    announced: Option<u64>,
    hasher: Sha256,
    content: Option<Vec<u8>>,
    last_sent: Vec<u8>,
}

impl Download {
    /// A download of `filename`; `keep` keeps the content in memory.
    pub fn new(filename: &str, keep: bool) -> Self {
        let mut d = Self {
            filename: filename.to_owned(),
            peer: None,
            blksize: 512,
            windowsize: 1,
            expected: 1,
            in_window: 0,
            size: 0,
            announced: None,
            hasher: Sha256::new(),
            content: keep.then(Vec::new),
            last_sent: Vec::new(),
        };
        let option = |name: &str, value: String| TftpOption { name: name.into(), value };
        let request = Request {
            filename: filename.to_owned(),
            mode: Mode::Octet,
            options: vec![
                option("blksize", BLKSIZE.to_string()),
                option("tsize", "0".into()),
                option("windowsize", WINDOWSIZE.to_string()),
            ],
        };
        Packet::Rrq(request).emit(&mut d.last_sent);
        d
    }

    /// The packet to (re)send now: the RRQ at first, then the last ACK.
    pub fn last_sent(&self) -> &[u8] {
        &self.last_sent
    }

    /// Where the next packet goes: the server's transfer port once known, else `server`.
    pub fn peer_or(&self, server: SocketAddr) -> SocketAddr {
        self.peer.unwrap_or(server)
    }

    fn ack(&mut self, block: u16) -> Vec<u8> {
        let mut out = Vec::with_capacity(4);
        Packet::Ack { block }.emit(&mut out);
        self.last_sent.clone_from(&out);
        out
    }

    /// Reads one datagram from `from`.
    pub fn handle(&mut self, from: SocketAddr, bytes: &[u8]) -> Step {
        // RFC 1350 section 4: the first answer fixes the server's transfer identifier; packets
        // from any other port are someone else's.
        if *self.peer.get_or_insert(from) != from {
            return Step::Wait;
        }
        match Packet::parse(bytes) {
            Ok(Packet::Oack(options)) if self.expected == 1 && self.size == 0 => {
                for o in options {
                    let value = o.value.parse::<u64>().ok();
                    match (o.name.to_ascii_lowercase().as_str(), value) {
                        ("blksize", Some(v @ 8..=65464)) => self.blksize = v as usize,
                        ("windowsize", Some(v @ 1..=65535)) => self.windowsize = v as u32,
                        ("tsize", Some(v)) => self.announced = Some(v),
                        (name, _) => {
                            return Step::Fail(TftpError::Protocol(format!("unacceptable option {name}={}", o.value)))
                        }
                    }
                }
                if self.announced.is_some_and(|s| s > MAX_BYTES) {
                    return Step::Fail(TftpError::TooLarge);
                }
                Step::Send(self.ack(0))
            }
            Ok(Packet::Data { block, data }) => {
                if block != self.expected {
                    // A gap or a repeat: acknowledge the last block received in order (RFC 7440
                    // section 4), once per window.
                    if self.in_window != 0 || self.windowsize > 1 {
                        self.in_window = 0;
                        return Step::Send(self.ack(self.expected.wrapping_sub(1)));
                    }
                    return Step::Wait;
                }
                if data.len() > self.blksize {
                    return Step::Fail(TftpError::Protocol(format!("block of {} bytes > blksize", data.len())));
                }
                self.size += data.len() as u64;
                if self.size > MAX_BYTES {
                    return Step::Fail(TftpError::TooLarge);
                }
                self.hasher.update(data);
                if let Some(c) = &mut self.content {
                    c.extend_from_slice(data);
                }
                self.expected = self.expected.wrapping_add(1);
                self.in_window += 1;
                if data.len() < self.blksize {
                    return Step::Finish(self.ack(block));
                }
                if self.in_window >= self.windowsize {
                    self.in_window = 0;
                    return Step::Send(self.ack(block));
                }
                Step::Wait
            }
            Ok(Packet::Error { code, message }) => Step::Fail(TftpError::Server { code: code.to_u16(), message }),
            Ok(_) => Step::Wait,
            Err(e) => Step::Fail(TftpError::Protocol(e.to_string())),
        }
    }

    /// The result, once [`Step::Finish`] was returned.
    pub fn into_fetched(self) -> Fetched {
        Fetched {
            size: self.size,
            announced_size: self.announced,
            sha256: self.hasher.finalize().into(),
            content: self.content,
        }
    }

    /// The file asked for.
    pub fn filename(&self) -> &str {
        &self.filename
    }
}

/// Downloads `filename` from `server` with a socket bound to `local` (the phone's leased address).
/// Repeats its last packet after `timeout` of silence, at most `retransmissions` times in a row.
pub fn fetch(
    local: Ipv4Addr,
    server: Ipv4Addr,
    filename: &str,
    keep: bool,
    timeout: Duration,
    retransmissions: u32,
) -> Result<Fetched, TftpError> {
    let io = |e: std::io::Error| TftpError::Io(e.to_string());
    let socket = UdpSocket::bind(SocketAddrV4::new(local, 0)).map_err(io)?;
    let server = SocketAddr::V4(SocketAddrV4::new(server, PORT));
    let mut download = Download::new(filename, keep);
    socket.send_to(download.last_sent(), server).map_err(io)?;
    let mut buf = vec![0u8; 65536];
    let mut silent_repeats = 0;
    let mut deadline = Instant::now() + timeout;
    loop {
        let now = Instant::now();
        if now >= deadline {
            if silent_repeats >= retransmissions {
                return Err(TftpError::Timeout(server, retransmissions));
            }
            silent_repeats += 1;
            socket.send_to(download.last_sent(), download.peer_or(server)).map_err(io)?;
            deadline = Instant::now() + timeout;
            continue;
        }
        socket.set_read_timeout(Some(deadline - now)).map_err(io)?;
        let (n, from) = match socket.recv_from(&mut buf) {
            Ok(r) => r,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => continue,
            Err(e) => return Err(io(e)),
        };
        if from.ip() != server.ip() {
            continue;
        }
        match download.handle(from, buf.get(..n).unwrap_or_default()) {
            Step::Wait => {}
            Step::Send(out) => {
                socket.send_to(&out, from).map_err(io)?;
            }
            Step::Finish(out) => {
                socket.send_to(&out, from).map_err(io)?;
                return Ok(download.into_fetched());
            }
            Step::Fail(e) => return Err(e),
        }
        silent_repeats = 0;
        deadline = Instant::now() + timeout;
    }
}

/// Lowercase hex of a digest.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use dialtone_tftp::packet::{emit_data, ErrorCode};

    const SERVER: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(100, 64, 0, 1), 40000));

    fn data(block: u16, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        emit_data(&mut out, block, payload);
        out
    }

    fn oack(options: &[(&str, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        Packet::Oack(options.iter().map(|(n, v)| TftpOption { name: (*n).into(), value: (*v).into() }).collect())
            .emit(&mut out);
        out
    }

    #[test]
    fn request_asks_for_the_options() {
        let d = Download::new("softphone/firmware.bin", false);
        let Ok(Packet::Rrq(r)) = Packet::parse(d.last_sent()) else { panic!() };
        assert_eq!(r.filename, "softphone/firmware.bin");
        let names: Vec<&str> = r.options.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(names, ["blksize", "tsize", "windowsize"]);
    }

    #[test]
    fn windowed_transfer_hashes_and_counts() {
        let content: Vec<u8> = (0..2000u32).map(|i| (i % 251) as u8).collect();
        let mut d = Download::new("f", true);
        assert_eq!(
            d.handle(SERVER, &oack(&[("blksize", "512"), ("tsize", "2000"), ("windowsize", "2")])),
            Step::Send(vec![0, 4, 0, 0])
        );
        let blocks: Vec<&[u8]> = content.chunks(512).collect();
        assert_eq!(d.handle(SERVER, &data(1, blocks[0])), Step::Wait);
        assert_eq!(d.handle(SERVER, &data(2, blocks[1])), Step::Send(vec![0, 4, 0, 2]));
        // A stranger's packet changes nothing.
        let stranger = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(100, 64, 0, 1), 40001));
        assert_eq!(d.handle(stranger, &data(3, blocks[2])), Step::Wait);
        // Block 4 before 3: acknowledge 2 again.
        assert_eq!(d.handle(SERVER, &data(4, blocks[3])), Step::Send(vec![0, 4, 0, 2]));
        assert_eq!(d.handle(SERVER, &data(3, blocks[2])), Step::Wait);
        assert_eq!(d.handle(SERVER, &data(4, blocks[3])), Step::Finish(vec![0, 4, 0, 4]));
        let f = d.into_fetched();
        assert_eq!(f.size, 2000);
        assert_eq!(f.announced_size, Some(2000));
        assert_eq!(f.sha256, <[u8; 32]>::from(Sha256::digest(&content)));
        assert_eq!(f.content.as_deref(), Some(&content[..]));
    }

    #[test]
    fn server_errors_and_bad_options_fail() {
        let mut d = Download::new("f", false);
        let mut err = Vec::new();
        dialtone_tftp::packet::emit_error(&mut err, ErrorCode::FileNotFound, "no such file");
        let Step::Fail(e) = d.handle(SERVER, &err) else { panic!() };
        assert!(e.is_not_found(), "{e}");
        let mut d = Download::new("f", false);
        assert!(matches!(d.handle(SERVER, &oack(&[("blksize", "3")])), Step::Fail(TftpError::Protocol(_))));
        let mut d = Download::new("f", false);
        assert_eq!(
            d.handle(SERVER, &oack(&[("tsize", &(MAX_BYTES + 1).to_string())])),
            Step::Fail(TftpError::TooLarge)
        );
    }

    proptest::proptest! {
        #[test]
        fn any_datagram_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..700)) {
            let mut d = Download::new("f", true);
            let _ = d.handle(SERVER, &bytes);
            let _ = d.handle(SERVER, &bytes);
        }
    }
}
