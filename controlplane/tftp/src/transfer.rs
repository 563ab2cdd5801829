//! One read transfer (server sends a file), sans-IO: datagrams and `now` in, datagrams and a
//! deadline out.
//!
//! Blocks are counted internally from 1 as `u64` (block `k` holds bytes `(k-1)*blksize ..`); the
//! wire number is `k mod 65536`, so a transfer past 65535 blocks wraps to 0, which tftp-hpa, atftp
//! and curl expect. A file of `size` bytes has `size / blksize + 1` blocks: the last one is short,
//! and zero-length when `size` is a multiple of `blksize` (RFC 1350 section 6).
//!
//! Sending (RFC 7440 section 4): up to `windowsize` blocks past the last acknowledged one are
//! sent back to back. An ACK for block `k` inside what was sent moves the window to `k+1`; when
//! `k` is short of the last block sent, the client saw a gap and sending resumes at `k+1`. A
//! duplicate ACK (the block already acknowledged) is ignored: only the timer retransmits, which
//! is what avoids the sorcerer's apprentice (RFC 1123 section 4.2.3.1). An ACK for a block not
//! yet sent, or older than the window, is ignored. After a timeout the window is resent from the
//! first unacknowledged block, the timeout doubling each time (at most 8x) and progress resetting
//! it; after `retries` timeouts in a row the transfer is abandoned with an ERROR to the client.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use crate::packet::{self, ErrorCode, Packet, TftpOption};

/// Bytes a transfer can read at any offset: a file on disk or a rendered virtual file.
pub trait Content: Send {
    /// Total size in bytes, fixed for the life of the transfer.
    fn size(&self) -> u64;
    /// Reads up to `buf.len()` bytes at `offset`; fewer only at the end.
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<usize>;
}

impl Content for Vec<u8> {
    fn size(&self) -> u64 {
        self.len() as u64
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(self.len());
        let src = self.get(start..).unwrap_or_default();
        let n = src.len().min(buf.len());
        buf.get_mut(..n).unwrap_or_default().copy_from_slice(src.get(..n).unwrap_or_default());
        Ok(n)
    }
}

/// An open regular file and the size it had when opened.
#[derive(Debug)]
pub struct FileContent {
    file: File,
    size: u64,
}

impl FileContent {
    /// Wraps an open file, reading its size once.
    pub fn new(file: File) -> io::Result<Self> {
        let size = file.metadata()?.len();
        Ok(Self { file, size })
    }
}

impl Content for FileContent {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let mut filled = 0;
        while filled < buf.len() {
            let rest = buf.get_mut(filled..).unwrap_or_default();
            match self.file.read_at(rest, offset + filled as u64) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(filled)
    }
}

/// Parameters of one transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferParams {
    /// Bytes per block.
    pub blksize: u16,
    /// Blocks per window.
    pub windowsize: u16,
    /// Retransmission timeout before backoff.
    pub timeout: Duration,
    /// Timeouts in a row before giving up.
    pub retries: u32,
    /// OACK to send first (and wait for ACK 0); empty for a plain RFC 1350 transfer.
    pub oack: Vec<TftpOption>,
}

/// Why a transfer ended without delivering the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FailReason {
    /// No progress after the configured number of retransmissions.
    Timeout,
    /// The client sent an ERROR (including RFC 2347 code 8 in answer to the OACK).
    PeerError,
    /// The client sent something other than ACK or ERROR.
    IllegalPacket,
    /// The file could not be read (or shrank) during the transfer.
    ReadError,
    /// An upload could not be stored, or exceeded the size cap.
    WriteError,
}

impl FailReason {
    /// Every reason, in counter order.
    pub const ALL: [Self; 5] = [Self::Timeout, Self::PeerError, Self::IllegalPacket, Self::ReadError, Self::WriteError];

    /// Counter label.
    pub fn name(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::PeerError => "peer_error",
            Self::IllegalPacket => "illegal_packet",
            Self::ReadError => "read_error",
            Self::WriteError => "write_error",
        }
    }
}

/// How a transfer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The last block was acknowledged.
    Completed,
    /// Abandoned.
    Failed(FailReason),
}

/// Per-transfer statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransferStats {
    /// DATA packets sent, retransmissions included.
    pub data_packets: u64,
    /// Payload bytes sent, retransmissions included.
    pub payload_bytes: u64,
    /// Payload bytes received and stored (uploads).
    pub received_bytes: u64,
    /// Blocks sent again (after a timeout or a gap report).
    pub retransmitted_blocks: u64,
    /// ACKs for the block already acknowledged (ignored).
    pub duplicate_acks: u64,
    /// ACKs for blocks outside what was sent (ignored).
    pub stray_acks: u64,
    /// Timer expiries.
    pub timeouts: u64,
}

/// A transfer as the I/O shell drives it: read or write, same inputs and outputs.
pub trait Transfer: Send + std::fmt::Debug {
    /// The client's address (its transfer ID).
    fn peer(&self) -> SocketAddr;
    /// File size (reads) or bytes stored so far (writes).
    fn size(&self) -> u64;
    /// Statistics so far.
    fn stats(&self) -> TransferStats;
    /// How it ended, once nothing is left to send.
    fn outcome(&self) -> Option<Outcome>;
    /// When [`Transfer::handle_timeout`] must next be called.
    fn poll_timeout(&self) -> Option<Instant>;
    /// A datagram arrived on this transfer's socket from `from`.
    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]);
    /// The timer fired (or may have).
    fn handle_timeout(&mut self, now: Instant);
    /// Writes the next datagram into `out` and returns its destination, or `None`.
    fn poll_transmit(&mut self, now: Instant, out: &mut Vec<u8>) -> Option<SocketAddr>;
}

impl Transfer for ReadTransfer {
    fn peer(&self) -> SocketAddr {
        ReadTransfer::peer(self)
    }
    fn size(&self) -> u64 {
        ReadTransfer::size(self)
    }
    fn stats(&self) -> TransferStats {
        ReadTransfer::stats(self)
    }
    fn outcome(&self) -> Option<Outcome> {
        ReadTransfer::outcome(self)
    }
    fn poll_timeout(&self) -> Option<Instant> {
        ReadTransfer::poll_timeout(self)
    }
    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        ReadTransfer::handle_datagram(self, now, from, bytes);
    }
    fn handle_timeout(&mut self, now: Instant) {
        ReadTransfer::handle_timeout(self, now);
    }
    fn poll_transmit(&mut self, now: Instant, out: &mut Vec<u8>) -> Option<SocketAddr> {
        ReadTransfer::poll_transmit(self, now, out)
    }
}

/// Most pending "unknown transfer ID" errors kept; more are dropped.
const MAX_STRAY_ERRORS: usize = 4;
/// Largest backoff multiplier of the retransmission timeout.
const MAX_BACKOFF_SHIFT: u32 = 3;

/// A read transfer in progress.
pub struct ReadTransfer {
    peer: SocketAddr,
    content: Box<dyn Content>,
    size: u64,
    blksize: u64,
    windowsize: u64,
    timeout: Duration,
    max_retries: u32,
    total_blocks: u64,
    oack: Vec<TftpOption>,
    /// True until the client acknowledges the OACK with ACK 0.
    awaiting_oack_ack: bool,
    /// The OACK must be (re)sent.
    oack_due: bool,
    /// Highest block acknowledged (0 before any).
    acked: u64,
    /// Next block `poll_transmit` emits.
    next_to_send: u64,
    /// Highest block ever emitted.
    highest_sent: u64,
    retries_used: u32,
    deadline: Option<Instant>,
    stray_errors: VecDeque<SocketAddr>,
    final_error: Option<(ErrorCode, &'static str)>,
    outcome: Option<Outcome>,
    stats: TransferStats,
}

impl std::fmt::Debug for ReadTransfer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadTransfer")
            .field("peer", &self.peer)
            .field("size", &self.size)
            .field("blksize", &self.blksize)
            .field("windowsize", &self.windowsize)
            .field("acked", &self.acked)
            .field("next_to_send", &self.next_to_send)
            .field("outcome", &self.outcome)
            .finish_non_exhaustive()
    }
}

impl ReadTransfer {
    /// Starts sending `content` to `peer`. Nothing is sent until [`Self::poll_transmit`].
    pub fn new(peer: SocketAddr, content: Box<dyn Content>, params: TransferParams) -> Self {
        let size = content.size();
        let blksize = u64::from(params.blksize.max(1));
        let awaiting = !params.oack.is_empty();
        Self {
            peer,
            content,
            size,
            blksize,
            windowsize: u64::from(params.windowsize.max(1)),
            timeout: params.timeout,
            max_retries: params.retries,
            total_blocks: size / blksize + 1,
            oack: params.oack,
            awaiting_oack_ack: awaiting,
            oack_due: awaiting,
            acked: 0,
            next_to_send: 1,
            highest_sent: 0,
            retries_used: 0,
            deadline: None,
            stray_errors: VecDeque::new(),
            final_error: None,
            outcome: None,
            stats: TransferStats::default(),
        }
    }

    /// The client's address (its transfer ID).
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// File size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Statistics so far.
    pub fn stats(&self) -> TransferStats {
        self.stats
    }

    /// How it ended, once nothing is left to send.
    pub fn outcome(&self) -> Option<Outcome> {
        if self.final_error.is_some() {
            return None;
        }
        self.outcome
    }

    /// When [`Self::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.outcome.is_some() {
            return None;
        }
        self.deadline
    }

    fn fail(&mut self, reason: FailReason, error: Option<(ErrorCode, &'static str)>) {
        self.outcome = Some(Outcome::Failed(reason));
        self.final_error = error;
        self.deadline = None;
    }

    /// A datagram arrived on this transfer's socket from `from`.
    pub fn handle_datagram(&mut self, _now: Instant, from: SocketAddr, bytes: &[u8]) {
        if self.outcome.is_some() {
            return;
        }
        if from != self.peer {
            // RFC 1350 section 4: answer a stranger with ERROR 5 and carry on.
            if self.stray_errors.len() < MAX_STRAY_ERRORS {
                self.stray_errors.push_back(from);
            }
            return;
        }
        match Packet::parse(bytes) {
            Ok(Packet::Ack { block }) => self.handle_ack(block),
            Ok(Packet::Error { .. }) => self.fail(FailReason::PeerError, None),
            Ok(_) => self.fail(
                FailReason::IllegalPacket,
                Some((ErrorCode::IllegalOperation, "only ACK or ERROR expected during a read transfer")),
            ),
            // Garbage from the peer's address is dropped; the timer covers whatever it meant.
            Err(_) => {}
        }
    }

    fn handle_ack(&mut self, block: u16) {
        if self.awaiting_oack_ack {
            if block == 0 {
                self.awaiting_oack_ack = false;
                self.oack_due = false;
                self.retries_used = 0;
                self.deadline = None;
            } else {
                self.stats.stray_acks += 1;
            }
            return;
        }
        // Distance forward from the last acknowledged block, modulo the 16-bit wrap. A window is
        // at most 65535 blocks, so every block sent and not yet acknowledged has a unique distance.
        let distance = u64::from(block.wrapping_sub(self.acked as u16));
        if distance == 0 {
            self.stats.duplicate_acks += 1;
            return;
        }
        let target = self.acked + distance;
        if target > self.highest_sent {
            self.stats.stray_acks += 1;
            return;
        }
        self.acked = target;
        self.retries_used = 0;
        self.deadline = None;
        if self.acked >= self.total_blocks {
            self.outcome = Some(Outcome::Completed);
            return;
        }
        if self.next_to_send <= self.acked {
            // A late ACK for a block sent before a timeout rewound the window.
            self.next_to_send = self.acked + 1;
        } else if self.acked + 1 < self.next_to_send {
            // RFC 7440 section 4: an ACK short of the last block sent means the client lost the
            // block after it; resume right after what it holds.
            self.stats.retransmitted_blocks += self.next_to_send - 1 - self.acked;
            self.next_to_send = self.acked + 1;
        }
    }

    fn window_end(&self) -> u64 {
        (self.acked + self.windowsize).min(self.total_blocks)
    }

    /// The timer fired (or may have): retransmit or give up.
    pub fn handle_timeout(&mut self, now: Instant) {
        let Some(deadline) = self.deadline else { return };
        if self.outcome.is_some() || now < deadline {
            return;
        }
        self.stats.timeouts += 1;
        self.deadline = None;
        if self.retries_used >= self.max_retries {
            self.fail(FailReason::Timeout, Some((ErrorCode::Undefined, "transfer timed out")));
            return;
        }
        self.retries_used += 1;
        if self.awaiting_oack_ack {
            self.oack_due = true;
        } else {
            self.stats.retransmitted_blocks += self.next_to_send.saturating_sub(self.acked + 1);
            self.next_to_send = self.acked + 1;
        }
    }

    fn arm_timer(&mut self, now: Instant) {
        self.deadline = Some(now + self.timeout * (1 << self.retries_used.min(MAX_BACKOFF_SHIFT)));
    }

    /// Writes the next datagram to send into `out` (cleared first) and returns its destination,
    /// or `None` when there is nothing to send now.
    pub fn poll_transmit(&mut self, now: Instant, out: &mut Vec<u8>) -> Option<SocketAddr> {
        out.clear();
        if let Some(stranger) = self.stray_errors.pop_front() {
            packet::emit_error(out, ErrorCode::UnknownTransferId, "unknown transfer ID");
            return Some(stranger);
        }
        if let Some((code, message)) = self.final_error.take() {
            packet::emit_error(out, code, message);
            return Some(self.peer);
        }
        if self.outcome.is_some() {
            return None;
        }
        if self.oack_due {
            self.oack_due = false;
            Packet::Oack(self.oack.clone()).emit(out);
            self.arm_timer(now);
            return Some(self.peer);
        }
        if self.awaiting_oack_ack || self.next_to_send > self.window_end() {
            return None;
        }
        let block = self.next_to_send;
        let offset = (block - 1) * self.blksize;
        let len = self.blksize.min(self.size.saturating_sub(offset));
        let Ok(len_usize) = usize::try_from(len) else {
            self.fail(FailReason::ReadError, Some((ErrorCode::Undefined, "read error")));
            return self.poll_transmit(now, out);
        };
        packet::emit_data(out, block as u16, &[]);
        out.resize(4 + len_usize, 0);
        match self.content.read_at(offset, out.get_mut(4..).unwrap_or_default()) {
            Ok(n) if n == len_usize => {}
            _ => {
                out.clear();
                self.fail(FailReason::ReadError, Some((ErrorCode::Undefined, "read error")));
                return self.poll_transmit(now, out);
            }
        }
        self.next_to_send += 1;
        self.highest_sent = self.highest_sent.max(block);
        self.stats.data_packets += 1;
        self.stats.payload_bytes += len;
        self.arm_timer(now);
        Some(self.peer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT: SocketAddr =
        SocketAddr::V4(std::net::SocketAddrV4::new(std::net::Ipv4Addr::new(100, 64, 16, 5), 50000));
    const STRANGER: SocketAddr =
        SocketAddr::V4(std::net::SocketAddrV4::new(std::net::Ipv4Addr::new(100, 64, 16, 6), 50000));
    const SECOND: Duration = Duration::from_secs(1);

    fn content(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    fn params(blksize: u16, windowsize: u16, oack: bool) -> TransferParams {
        TransferParams {
            blksize,
            windowsize,
            timeout: SECOND,
            retries: 3,
            oack: if oack { vec![TftpOption { name: "blksize".into(), value: blksize.to_string() }] } else { vec![] },
        }
    }

    /// What the server sent: DATA blocks (number, payload), or other packets.
    #[derive(Debug, PartialEq, Eq)]
    enum Sent {
        Data(u16, Vec<u8>),
        Oack,
        Error(ErrorCode, SocketAddr),
    }

    fn drain(t: &mut ReadTransfer, now: Instant) -> Vec<Sent> {
        let mut out = Vec::new();
        let mut sent = Vec::new();
        while let Some(dest) = t.poll_transmit(now, &mut out) {
            match Packet::parse(&out).expect("server emits valid packets") {
                Packet::Data { block, data } => {
                    assert_eq!(dest, CLIENT);
                    sent.push(Sent::Data(block, data.to_vec()));
                }
                Packet::Oack(_) => sent.push(Sent::Oack),
                Packet::Error { code, .. } => sent.push(Sent::Error(code, dest)),
                other => panic!("unexpected {other:?}"),
            }
        }
        sent
    }

    fn blocks(sent: &[Sent]) -> Vec<u16> {
        sent.iter()
            .filter_map(|s| match s {
                Sent::Data(b, _) => Some(*b),
                _ => None,
            })
            .collect()
    }

    fn ack(t: &mut ReadTransfer, now: Instant, block: u16) {
        let mut bytes = Vec::new();
        Packet::Ack { block }.emit(&mut bytes);
        t.handle_datagram(now, CLIENT, &bytes);
    }

    /// A lossless client: acknowledges every window, reassembles, and returns the bytes.
    fn run_lossless(t: &mut ReadTransfer, windowsize: u16) -> Vec<u8> {
        let now = Instant::now();
        let mut got = Vec::new();
        let mut sent = drain(t, now);
        if sent.first() == Some(&Sent::Oack) {
            ack(t, now, 0);
            sent = drain(t, now);
        }
        let mut expect: u16 = 1;
        while !sent.is_empty() {
            assert!(sent.len() <= usize::from(windowsize));
            let mut last = 0;
            for s in &sent {
                let Sent::Data(block, data) = s else { panic!("{s:?}") };
                assert_eq!(*block, expect);
                expect = expect.wrapping_add(1);
                got.extend_from_slice(data);
                last = *block;
            }
            ack(t, now, last);
            sent = drain(t, now);
        }
        got
    }

    #[test]
    fn plain_transfer_with_final_zero_length_block() {
        let data = content(1024);
        let mut t = ReadTransfer::new(CLIENT, Box::new(data.clone()), params(512, 1, false));
        let now = Instant::now();
        let sent = drain(&mut t, now);
        assert_eq!(blocks(&sent), [1]);
        ack(&mut t, now, 1);
        assert_eq!(blocks(&drain(&mut t, now)), [2]);
        ack(&mut t, now, 2);
        let sent = drain(&mut t, now);
        assert_eq!(sent, [Sent::Data(3, vec![])]);
        assert_eq!(t.outcome(), None);
        ack(&mut t, now, 3);
        assert_eq!(t.outcome(), Some(Outcome::Completed));
        assert!(drain(&mut t, now).is_empty());
        assert_eq!(t.poll_timeout(), None);
    }

    #[test]
    fn empty_file_is_one_empty_block() {
        let mut t = ReadTransfer::new(CLIENT, Box::new(Vec::new()), params(512, 4, false));
        assert_eq!(run_lossless(&mut t, 4), Vec::<u8>::new());
        assert_eq!(t.outcome(), Some(Outcome::Completed));
    }

    #[test]
    fn windowed_transfer_with_oack_delivers_the_file() {
        for (len, window) in [(10_000usize, 4u16), (1468 * 16, 16), (1468 * 16 + 1, 16), (5, 64)] {
            let data = content(len);
            let mut t = ReadTransfer::new(CLIENT, Box::new(data.clone()), params(1468, window, true));
            assert_eq!(run_lossless(&mut t, window), data, "len {len} window {window}");
            assert_eq!(t.outcome(), Some(Outcome::Completed));
        }
    }

    #[test]
    fn oack_is_retransmitted_then_data_starts_on_ack_zero() {
        let mut t = ReadTransfer::new(CLIENT, Box::new(content(100)), params(512, 1, true));
        let t0 = Instant::now();
        assert_eq!(drain(&mut t, t0), [Sent::Oack]);
        ack(&mut t, t0, 1); // nothing sent yet: ignored
        assert!(drain(&mut t, t0).is_empty());
        t.handle_timeout(t0 + SECOND);
        assert_eq!(drain(&mut t, t0 + SECOND), [Sent::Oack]);
        ack(&mut t, t0 + SECOND, 0);
        assert_eq!(blocks(&drain(&mut t, t0 + SECOND)), [1]);
    }

    #[test]
    fn lost_data_is_resent_after_timeout_with_backoff() {
        let mut t = ReadTransfer::new(CLIENT, Box::new(content(2000)), params(512, 1, false));
        let t0 = Instant::now();
        assert_eq!(blocks(&drain(&mut t, t0)), [1]); // lost on the way
        assert_eq!(t.poll_timeout(), Some(t0 + SECOND));
        t.handle_timeout(t0 + SECOND / 2); // early: nothing
        assert!(drain(&mut t, t0 + SECOND / 2).is_empty());
        t.handle_timeout(t0 + SECOND);
        let t1 = t0 + SECOND;
        assert_eq!(blocks(&drain(&mut t, t1)), [1]);
        assert_eq!(t.poll_timeout(), Some(t1 + 2 * SECOND), "second wait doubles");
        ack(&mut t, t1, 1);
        assert_eq!(blocks(&drain(&mut t, t1)), [2]);
        assert_eq!(t.poll_timeout(), Some(t1 + SECOND), "progress resets the backoff");
        assert_eq!(t.stats().retransmitted_blocks, 1);
    }

    #[test]
    fn lost_ack_resends_the_window_once_per_timeout() {
        let mut t = ReadTransfer::new(CLIENT, Box::new(content(512 * 10)), params(512, 4, false));
        let t0 = Instant::now();
        assert_eq!(blocks(&drain(&mut t, t0)), [1, 2, 3, 4]);
        // The client's ACK 4 is lost: the timer resends the whole window.
        t.handle_timeout(t0 + SECOND);
        assert_eq!(blocks(&drain(&mut t, t0 + SECOND)), [1, 2, 3, 4]);
        ack(&mut t, t0 + SECOND, 4);
        assert_eq!(blocks(&drain(&mut t, t0 + SECOND)), [5, 6, 7, 8]);
    }

    #[test]
    fn duplicate_ack_triggers_no_resend() {
        let mut t = ReadTransfer::new(CLIENT, Box::new(content(512 * 10)), params(512, 2, false));
        let t0 = Instant::now();
        assert_eq!(blocks(&drain(&mut t, t0)), [1, 2]);
        ack(&mut t, t0, 2);
        assert_eq!(blocks(&drain(&mut t, t0)), [3, 4]);
        for _ in 0..5 {
            ack(&mut t, t0, 2);
            assert!(drain(&mut t, t0).is_empty(), "sorcerer's apprentice");
        }
        assert_eq!(t.stats().duplicate_acks, 5);
        ack(&mut t, t0, 4);
        assert_eq!(blocks(&drain(&mut t, t0)), [5, 6]);
    }

    #[test]
    fn late_ack_after_timeout_moves_on_and_its_duplicate_is_ignored() {
        let mut t = ReadTransfer::new(CLIENT, Box::new(content(512 * 4)), params(512, 1, false));
        let t0 = Instant::now();
        assert_eq!(blocks(&drain(&mut t, t0)), [1]);
        t.handle_timeout(t0 + SECOND);
        assert_eq!(blocks(&drain(&mut t, t0 + SECOND)), [1]);
        // The first ACK 1 was only slow; it arrives now, then the ACK for the resent copy.
        ack(&mut t, t0 + SECOND, 1);
        assert_eq!(blocks(&drain(&mut t, t0 + SECOND)), [2]);
        ack(&mut t, t0 + SECOND, 1);
        assert!(drain(&mut t, t0 + SECOND).is_empty());
        ack(&mut t, t0 + SECOND, 2);
        assert_eq!(blocks(&drain(&mut t, t0 + SECOND)), [3]);
    }

    #[test]
    fn out_of_window_acks_are_ignored() {
        let mut t = ReadTransfer::new(CLIENT, Box::new(content(512 * 20)), params(512, 4, false));
        let t0 = Instant::now();
        assert_eq!(blocks(&drain(&mut t, t0)), [1, 2, 3, 4]);
        for block in [5, 9, 100, 65535, 40000] {
            ack(&mut t, t0, block);
            assert!(drain(&mut t, t0).is_empty(), "ACK {block} acknowledges nothing sent");
        }
        assert_eq!(t.stats().stray_acks, 5);
        ack(&mut t, t0, 4);
        assert_eq!(blocks(&drain(&mut t, t0)), [5, 6, 7, 8]);
        ack(&mut t, t0, 3); // older than the window
        assert!(drain(&mut t, t0).is_empty());
    }

    #[test]
    fn gap_report_inside_window_resumes_after_it() {
        let mut t = ReadTransfer::new(CLIENT, Box::new(content(512 * 20)), params(512, 8, false));
        let t0 = Instant::now();
        assert_eq!(blocks(&drain(&mut t, t0)), [1, 2, 3, 4, 5, 6, 7, 8]);
        // Block 4 was lost: the client (RFC 7440) acknowledges 3.
        ack(&mut t, t0, 3);
        assert_eq!(blocks(&drain(&mut t, t0)), [4, 5, 6, 7, 8, 9, 10, 11]);
        ack(&mut t, t0, 11);
        assert_eq!(blocks(&drain(&mut t, t0)), [12, 13, 14, 15, 16, 17, 18, 19]);
    }

    #[test]
    fn gives_up_after_retries_with_an_error() {
        let mut t = ReadTransfer::new(CLIENT, Box::new(content(100)), params(512, 1, false));
        let mut now = Instant::now();
        assert_eq!(blocks(&drain(&mut t, now)), [1]);
        for _ in 0..3 {
            now = t.poll_timeout().expect("armed");
            t.handle_timeout(now);
            assert_eq!(blocks(&drain(&mut t, now)), [1]);
        }
        now = t.poll_timeout().expect("armed");
        t.handle_timeout(now);
        assert_eq!(t.outcome(), None, "error still to send");
        assert_eq!(drain(&mut t, now), [Sent::Error(ErrorCode::Undefined, CLIENT)]);
        assert_eq!(t.outcome(), Some(Outcome::Failed(FailReason::Timeout)));
        assert_eq!(t.poll_timeout(), None);
    }

    #[test]
    fn block_numbers_wrap_past_65535() {
        // 70,000 blocks of 8 bytes: wire numbers go 65534, 65535, 0, 1, ...
        let data = content(8 * 70_000 + 3);
        let mut t = ReadTransfer::new(CLIENT, Box::new(data.clone()), params(8, 16, true));
        assert_eq!(run_lossless(&mut t, 16), data);
        assert_eq!(t.outcome(), Some(Outcome::Completed));
    }

    #[test]
    fn wrap_with_loss_and_duplicates_around_zero() {
        let data = content(65_540 * 8);
        let mut t = ReadTransfer::new(CLIENT, Box::new(data), params(8, 4, false));
        let t0 = Instant::now();
        // Fast-forward to the window containing the wrap.
        let mut last = 0u16;
        for _ in 0..16383 {
            let sent = blocks(&drain(&mut t, t0));
            last = *sent.last().expect("window");
            ack(&mut t, t0, last);
        }
        assert_eq!(last, 65532);
        assert_eq!(blocks(&drain(&mut t, t0)), [65533, 65534, 65535, 0]);
        ack(&mut t, t0, 65535); // block "0" (65536) lost
        assert_eq!(blocks(&drain(&mut t, t0)), [0, 1, 2, 3]);
        ack(&mut t, t0, 65535); // duplicate
        assert!(drain(&mut t, t0).is_empty());
        ack(&mut t, t0, 3);
        // 65540 full blocks + the final empty one = 65541 blocks: wire 4 and 5 remain.
        assert_eq!(blocks(&drain(&mut t, t0)), [4, 5]);
    }

    #[test]
    fn stranger_gets_error_5_and_transfer_continues() {
        let mut t = ReadTransfer::new(CLIENT, Box::new(content(600)), params(512, 1, false));
        let t0 = Instant::now();
        assert_eq!(blocks(&drain(&mut t, t0)), [1]);
        let mut bytes = Vec::new();
        Packet::Ack { block: 1 }.emit(&mut bytes);
        t.handle_datagram(t0, STRANGER, &bytes);
        assert_eq!(drain(&mut t, t0), [Sent::Error(ErrorCode::UnknownTransferId, STRANGER)]);
        ack(&mut t, t0, 1);
        assert_eq!(blocks(&drain(&mut t, t0)), [2]);
    }

    #[test]
    fn peer_error_ends_quietly_and_garbage_is_ignored() {
        let mut t = ReadTransfer::new(CLIENT, Box::new(content(600)), params(512, 1, true));
        let t0 = Instant::now();
        assert_eq!(drain(&mut t, t0), [Sent::Oack]);
        t.handle_datagram(t0, CLIENT, b"\x00");
        assert_eq!(t.outcome(), None);
        t.handle_datagram(t0, CLIENT, b"\x00\x05\x00\x08no thanks\x00");
        assert_eq!(t.outcome(), Some(Outcome::Failed(FailReason::PeerError)));
        assert!(drain(&mut t, t0).is_empty());
    }

    #[test]
    fn data_from_client_is_illegal() {
        let mut t = ReadTransfer::new(CLIENT, Box::new(content(600)), params(512, 1, false));
        let t0 = Instant::now();
        drain(&mut t, t0);
        t.handle_datagram(t0, CLIENT, b"\x00\x03\x00\x01abc");
        assert_eq!(drain(&mut t, t0), [Sent::Error(ErrorCode::IllegalOperation, CLIENT)]);
        assert_eq!(t.outcome(), Some(Outcome::Failed(FailReason::IllegalPacket)));
    }

    /// Content that claims more bytes than it has, as a file truncated during a transfer.
    struct Shrunk;
    impl Content for Shrunk {
        fn size(&self) -> u64 {
            2048
        }
        fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
            Ok(if offset == 0 { buf.len() } else { 0 })
        }
    }

    #[test]
    fn short_read_fails_with_error() {
        let mut t = ReadTransfer::new(CLIENT, Box::new(Shrunk), params(512, 2, false));
        let t0 = Instant::now();
        assert_eq!(drain(&mut t, t0), [Sent::Data(1, vec![0; 512]), Sent::Error(ErrorCode::Undefined, CLIENT)]);
        assert_eq!(t.outcome(), Some(Outcome::Failed(FailReason::ReadError)));
    }

    /// An RFC 7440 client and a lossy, duplicating, reordering channel, in virtual time.
    mod lossy {
        use super::*;
        use proptest::prelude::*;
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;

        /// A datagram on the wire: arrival time, sequence (ties), towards the server, bytes.
        type InFlight = (Instant, u64, bool, Vec<u8>);

        struct Dice(Vec<u8>, usize);
        impl Dice {
            fn roll(&mut self) -> u8 {
                self.1 += 1;
                self.0.get(self.1 % self.0.len().max(1)).copied().unwrap_or(0)
            }
        }

        struct Client {
            blksize: usize,
            windowsize: u16,
            expected: u16,
            in_window: u16,
            data: Vec<u8>,
            done: bool,
            last_ack: Option<u16>,
            last_heard: Instant,
        }

        impl Client {
            /// Handles one datagram from the server; returns the ACK to send, if any.
            fn handle(&mut self, now: Instant, bytes: &[u8]) -> Option<u16> {
                self.last_heard = now;
                let ack = match Packet::parse(bytes).expect("server emits valid packets") {
                    Packet::Oack(_) => Some(0),
                    Packet::Data { block, data } if !self.done && block == self.expected => {
                        self.data.extend_from_slice(data);
                        self.expected = self.expected.wrapping_add(1);
                        self.in_window += 1;
                        if data.len() < self.blksize {
                            self.done = true;
                            Some(block)
                        } else if self.in_window == self.windowsize {
                            self.in_window = 0;
                            Some(block)
                        } else {
                            None
                        }
                    }
                    // Out of order, a duplicate, or the final block again (dallying).
                    Packet::Data { .. } => {
                        self.in_window = 0;
                        Some(self.expected.wrapping_sub(1))
                    }
                    Packet::Error { .. } => None,
                    other => panic!("unexpected {other:?}"),
                };
                if ack.is_some() {
                    self.last_ack = ack;
                }
                ack
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]
            #[test]
            fn delivers_exact_bytes_or_times_out(
                len in 0usize..3000,
                blksize in 8u16..200,
                windowsize in 1u16..9,
                with_oack in any::<bool>(),
                loss_percent in 0u8..30,
                dup_percent in 0u8..20,
                dice in proptest::collection::vec(any::<u8>(), 64..256),
            ) {
                let data = content(len);
                let mut p = params(blksize, windowsize, with_oack);
                p.retries = 12;
                let mut server = ReadTransfer::new(CLIENT, Box::new(data.clone()), p);
                let t0 = Instant::now();
                let mut client = Client {
                    blksize: usize::from(blksize),
                    windowsize,
                    expected: 1,
                    in_window: 0,
                    data: Vec::new(),
                    done: false,
                    last_ack: None,
                    last_heard: t0,
                };
                let mut dice = Dice(dice, 0);
                let mut wire: BinaryHeap<Reverse<InFlight>> = BinaryHeap::new();
                let mut seq = 0u64;
                let mut send = |wire: &mut BinaryHeap<_>, now: Instant, to_server: bool, bytes: Vec<u8>, dice: &mut Dice| {
                    if dice.roll() % 100 < loss_percent {
                        return;
                    }
                    let copies = if dice.roll() % 100 < dup_percent { 2 } else { 1 };
                    for _ in 0..copies {
                        seq += 1;
                        let delay = Duration::from_millis(u64::from(dice.roll() % 40));
                        wire.push(Reverse((now + delay, seq, to_server, bytes.clone())));
                    }
                };
                let client_timeout = Duration::from_millis(1500);
                let mut now = t0;
                let mut out = Vec::new();
                for _ in 0..200_000 {
                    while let Some(dest) = server.poll_transmit(now, &mut out) {
                        prop_assert_eq!(dest, CLIENT);
                        send(&mut wire, now, false, out.clone(), &mut dice);
                    }
                    if server.outcome().is_some() && wire.is_empty() {
                        break;
                    }
                    let next_wire = wire.peek().map(|Reverse((t, ..))| *t);
                    let next_server = server.poll_timeout();
                    let next_client = (!client.done).then_some(client.last_heard + client_timeout);
                    let Some(next) = [next_wire, next_server, next_client].into_iter().flatten().min() else { break };
                    now = now.max(next);
                    if next_wire == Some(next) {
                        let Some(Reverse((_, _, to_server, bytes))) = wire.pop() else { break };
                        if to_server {
                            server.handle_datagram(now, CLIENT, &bytes);
                        } else if let Some(block) = client.handle(now, &bytes) {
                            let mut ack = Vec::new();
                            Packet::Ack { block }.emit(&mut ack);
                            send(&mut wire, now, true, ack, &mut dice);
                        }
                    } else if next_server == Some(next) {
                        server.handle_timeout(now);
                    } else {
                        // The client repeats its last ACK after silence (or its RRQ, modelled
                        // as nothing: the server already has it).
                        client.last_heard = now;
                        if let Some(block) = client.last_ack {
                            let mut ack = Vec::new();
                            Packet::Ack { block }.emit(&mut ack);
                            send(&mut wire, now, true, ack, &mut dice);
                        }
                    }
                }
                prop_assert!(data.starts_with(&client.data), "client holds wrong bytes");
                match server.outcome() {
                    Some(Outcome::Completed) => {
                        prop_assert!(client.done);
                        prop_assert_eq!(&client.data, &data);
                    }
                    Some(Outcome::Failed(FailReason::Timeout)) => prop_assert!(loss_percent > 0),
                    other => prop_assert!(false, "unexpected outcome {:?}", other),
                }
            }
        }
    }
}
