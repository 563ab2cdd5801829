//! One write transfer (client uploads a file), sans-IO, for directories the operator listed in
//! `tftp.writable_dirs` only.
//!
//! The server answers the WRQ with an OACK (when options were negotiated) or ACK 0, then takes
//! DATA blocks in order, acknowledging the last block of each window and the final short block
//! (RFC 7440 section 4: a block out of order is answered with an ACK of the last block held, so
//! the sender resumes after it). The upload goes to a temporary file beside the target and is
//! renamed into place only when complete, so a phone never sees half a file; an abandoned upload
//! leaves nothing. Uploads are capped at `max_bytes` (ERROR 3). After the final ACK the server
//! dallies one timeout to acknowledge a repeated final block (its ACK may have been lost).

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::packet::{self, ErrorCode, Packet, TftpOption};
use crate::transfer::{FailReason, Outcome, Transfer, TransferStats};

/// Where an upload's bytes go.
pub trait Sink: Send {
    /// Writes `data` at `offset`.
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// The upload is complete: make it visible under its final name.
    fn commit(&mut self) -> io::Result<()>;
}

impl Sink for Vec<u8> {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| io::Error::from(io::ErrorKind::OutOfMemory))?;
        let end = start + data.len();
        if self.len() < end {
            self.resize(end, 0);
        }
        if let Some(place) = self.get_mut(start..end) {
            place.copy_from_slice(data);
        }
        Ok(())
    }

    fn commit(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A temporary file renamed over `target` on commit and removed if the upload is abandoned.
#[derive(Debug)]
pub struct FileSink {
    file: File,
    temporary: PathBuf,
    target: PathBuf,
    committed: bool,
}

impl FileSink {
    /// Wraps a freshly created temporary file.
    pub fn new(file: File, temporary: PathBuf, target: PathBuf) -> Self {
        Self { file, temporary, target, committed: false }
    }
}

impl Sink for FileSink {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.file.write_all_at(data, offset)
    }

    fn commit(&mut self) -> io::Result<()> {
        self.file.sync_data()?;
        std::fs::rename(&self.temporary, &self.target)?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for FileSink {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.temporary);
        }
    }
}

/// Parameters of one upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteParams {
    /// Bytes per block.
    pub blksize: u16,
    /// Blocks per window.
    pub windowsize: u16,
    /// Retransmission timeout before backoff.
    pub timeout: Duration,
    /// Timeouts in a row before giving up.
    pub retries: u32,
    /// OACK to send first; empty for ACK 0.
    pub oack: Vec<TftpOption>,
    /// Largest upload accepted.
    pub max_bytes: u64,
}

/// What the server must (re)send to move the upload on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Control {
    Oack,
    Ack(u16),
}

/// Most pending "unknown transfer ID" errors kept.
const MAX_STRAY_ERRORS: usize = 4;
/// Largest backoff multiplier of the retransmission timeout.
const MAX_BACKOFF_SHIFT: u32 = 3;

/// An upload in progress.
pub struct WriteTransfer {
    peer: SocketAddr,
    sink: Box<dyn Sink>,
    blksize: u64,
    windowsize: u64,
    timeout: Duration,
    max_retries: u32,
    max_bytes: u64,
    oack: Vec<TftpOption>,
    /// Blocks received in order.
    received: u64,
    in_window: u64,
    /// Last control packet sent, resent on timeout.
    last_control: Control,
    pending: Option<Control>,
    retries_used: u32,
    deadline: Option<Instant>,
    /// The final block arrived and was committed; waiting one timeout for a repeat of it.
    dallying: bool,
    stray_errors: VecDeque<SocketAddr>,
    final_error: Option<(ErrorCode, &'static str)>,
    outcome: Option<Outcome>,
    stats: TransferStats,
}

impl std::fmt::Debug for WriteTransfer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteTransfer")
            .field("peer", &self.peer)
            .field("received", &self.received)
            .field("outcome", &self.outcome)
            .finish_non_exhaustive()
    }
}

impl WriteTransfer {
    /// Starts receiving from `peer` into `sink`.
    pub fn new(peer: SocketAddr, sink: Box<dyn Sink>, params: WriteParams) -> Self {
        let first = if params.oack.is_empty() { Control::Ack(0) } else { Control::Oack };
        Self {
            peer,
            sink,
            blksize: u64::from(params.blksize.max(1)),
            windowsize: u64::from(params.windowsize.max(1)),
            timeout: params.timeout,
            max_retries: params.retries,
            max_bytes: params.max_bytes,
            oack: params.oack,
            received: 0,
            in_window: 0,
            last_control: first,
            pending: Some(first),
            retries_used: 0,
            deadline: None,
            dallying: false,
            stray_errors: VecDeque::new(),
            final_error: None,
            outcome: None,
            stats: TransferStats::default(),
        }
    }

    fn fail(&mut self, reason: FailReason, error: Option<(ErrorCode, &'static str)>) {
        self.outcome = Some(Outcome::Failed(reason));
        self.final_error = error;
        self.deadline = None;
        self.pending = None;
    }

    fn send(&mut self, control: Control) {
        self.last_control = control;
        self.pending = Some(control);
    }

    fn handle_data(&mut self, block: u16, data: &[u8]) {
        if data.len() as u64 > self.blksize {
            self.fail(FailReason::IllegalPacket, Some((ErrorCode::IllegalOperation, "block larger than blksize")));
            return;
        }
        let expected = (self.received + 1) as u16;
        if self.dallying || block != expected {
            // A repeat or a gap: say what is held (RFC 7440); the sender resumes after it.
            self.in_window = 0;
            self.send(Control::Ack(self.received as u16));
            return;
        }
        let offset = self.received * self.blksize;
        if offset + data.len() as u64 > self.max_bytes {
            self.fail(FailReason::WriteError, Some((ErrorCode::DiskFull, "upload too large")));
            return;
        }
        if self.sink.write_at(offset, data).is_err() {
            self.fail(FailReason::WriteError, Some((ErrorCode::DiskFull, "write failed")));
            return;
        }
        self.received += 1;
        self.in_window += 1;
        self.retries_used = 0;
        self.stats.received_bytes += data.len() as u64;
        if (data.len() as u64) < self.blksize {
            if self.sink.commit().is_err() {
                self.fail(FailReason::WriteError, Some((ErrorCode::DiskFull, "write failed")));
                return;
            }
            self.dallying = true;
            self.send(Control::Ack(block));
        } else if self.in_window >= self.windowsize {
            self.in_window = 0;
            self.send(Control::Ack(block));
        } else {
            // Mid-window: the sender's next block will come; keep the timer running.
        }
    }
}

impl Transfer for WriteTransfer {
    fn peer(&self) -> SocketAddr {
        self.peer
    }

    fn size(&self) -> u64 {
        self.stats.received_bytes
    }

    fn stats(&self) -> TransferStats {
        self.stats
    }

    fn outcome(&self) -> Option<Outcome> {
        if self.final_error.is_some() {
            return None;
        }
        self.outcome
    }

    fn poll_timeout(&self) -> Option<Instant> {
        if self.outcome.is_some() {
            return None;
        }
        self.deadline
    }

    fn handle_datagram(&mut self, _now: Instant, from: SocketAddr, bytes: &[u8]) {
        if self.outcome.is_some() {
            return;
        }
        if from != self.peer {
            if self.stray_errors.len() < MAX_STRAY_ERRORS {
                self.stray_errors.push_back(from);
            }
            return;
        }
        match Packet::parse(bytes) {
            Ok(Packet::Data { block, data }) => self.handle_data(block, data),
            Ok(Packet::Error { .. }) => self.fail(FailReason::PeerError, None),
            Ok(_) => self.fail(
                FailReason::IllegalPacket,
                Some((ErrorCode::IllegalOperation, "only DATA or ERROR expected during a write transfer")),
            ),
            Err(_) => {}
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        let Some(deadline) = self.deadline else { return };
        if self.outcome.is_some() || now < deadline {
            return;
        }
        self.deadline = None;
        self.stats.timeouts += 1;
        if self.dallying {
            self.outcome = Some(Outcome::Completed);
            return;
        }
        if self.retries_used >= self.max_retries {
            self.fail(FailReason::Timeout, Some((ErrorCode::Undefined, "transfer timed out")));
            return;
        }
        self.retries_used += 1;
        self.pending = Some(self.last_control);
    }

    fn poll_transmit(&mut self, now: Instant, out: &mut Vec<u8>) -> Option<SocketAddr> {
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
        let control = self.pending.take()?;
        match control {
            Control::Oack => Packet::Oack(self.oack.clone()).emit(out),
            Control::Ack(block) => Packet::Ack { block }.emit(out),
        }
        self.deadline = Some(now + self.timeout * (1 << self.retries_used.min(MAX_BACKOFF_SHIFT)));
        Some(self.peer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    const CLIENT: SocketAddr =
        SocketAddr::V4(std::net::SocketAddrV4::new(std::net::Ipv4Addr::new(100, 64, 16, 5), 50000));
    const SECOND: Duration = Duration::from_secs(1);

    /// A sink the test can look into after the transfer owns it.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<(Vec<u8>, bool)>>);
    impl Sink for Shared {
        fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
            self.0.lock().map_err(|_| io::Error::other("poisoned"))?.0.write_at(offset, data)
        }
        fn commit(&mut self) -> io::Result<()> {
            self.0.lock().map_err(|_| io::Error::other("poisoned"))?.1 = true;
            Ok(())
        }
    }

    fn params(windowsize: u16, oack: bool) -> WriteParams {
        WriteParams {
            blksize: 8,
            windowsize,
            timeout: SECOND,
            retries: 2,
            oack: if oack { vec![TftpOption { name: "blksize".into(), value: "8".into() }] } else { vec![] },
            max_bytes: 100,
        }
    }

    fn sent(t: &mut WriteTransfer, now: Instant) -> Vec<Packet<'static>> {
        let mut out = Vec::new();
        let mut all = Vec::new();
        while t.poll_transmit(now, &mut out).is_some() {
            let p = match Packet::parse(&out).expect("valid") {
                Packet::Ack { block } => Packet::Ack { block },
                Packet::Oack(o) => Packet::Oack(o),
                Packet::Error { code, message } => Packet::Error { code, message },
                other => panic!("{other:?}"),
            };
            all.push(p);
        }
        all
    }

    fn data(t: &mut WriteTransfer, now: Instant, block: u16, bytes: &[u8]) {
        let mut out = Vec::new();
        Packet::Data { block, data: bytes }.emit(&mut out);
        t.handle_datagram(now, CLIENT, &out);
    }

    #[test]
    fn windowed_upload_with_gap_and_dally() {
        let sink = Shared::default();
        let mut t = WriteTransfer::new(CLIENT, Box::new(sink.clone()), params(2, true));
        let t0 = Instant::now();
        assert!(matches!(sent(&mut t, t0)[..], [Packet::Oack(_)]));
        data(&mut t, t0, 1, b"aaaaaaaa");
        assert!(sent(&mut t, t0).is_empty(), "mid-window");
        data(&mut t, t0, 2, b"bbbbbbbb");
        assert_eq!(sent(&mut t, t0), [Packet::Ack { block: 2 }]);
        data(&mut t, t0, 4, b"dddddddd"); // block 3 lost
        assert_eq!(sent(&mut t, t0), [Packet::Ack { block: 2 }]);
        data(&mut t, t0, 3, b"cccccccc");
        data(&mut t, t0, 4, b"dd");
        assert_eq!(sent(&mut t, t0), [Packet::Ack { block: 4 }]);
        {
            let guard = sink.0.lock().expect("lock");
            assert_eq!(guard.0, b"aaaaaaaabbbbbbbbccccccccdd");
            assert!(guard.1, "committed");
        }
        assert_eq!(t.outcome(), None, "dallying");
        data(&mut t, t0, 4, b"dd"); // our ACK was lost
        assert_eq!(sent(&mut t, t0), [Packet::Ack { block: 4 }]);
        t.handle_timeout(t0 + SECOND);
        assert_eq!(t.outcome(), Some(Outcome::Completed));
    }

    #[test]
    fn lost_ack_zero_is_resent_then_gives_up() {
        let mut t = WriteTransfer::new(CLIENT, Box::new(Vec::new()), params(1, false));
        let mut now = Instant::now();
        assert_eq!(sent(&mut t, now), [Packet::Ack { block: 0 }]);
        for _ in 0..2 {
            now = t.poll_timeout().expect("armed");
            t.handle_timeout(now);
            assert_eq!(sent(&mut t, now), [Packet::Ack { block: 0 }]);
        }
        now = t.poll_timeout().expect("armed");
        t.handle_timeout(now);
        assert!(matches!(sent(&mut t, now)[..], [Packet::Error { code: ErrorCode::Undefined, .. }]));
        assert_eq!(t.outcome(), Some(Outcome::Failed(FailReason::Timeout)));
    }

    #[test]
    fn oversize_upload_and_oversize_block_refused() {
        let sink = Shared::default();
        let mut t = WriteTransfer::new(CLIENT, Box::new(sink.clone()), params(1, false));
        let t0 = Instant::now();
        sent(&mut t, t0);
        for block in 1..=20u16 {
            data(&mut t, t0, block, b"xxxxxxxx");
            if t.outcome().is_some() || t.final_error.is_some() {
                break;
            }
            sent(&mut t, t0);
        }
        assert!(matches!(sent(&mut t, t0)[..], [Packet::Error { code: ErrorCode::DiskFull, .. }]));
        assert_eq!(t.outcome(), Some(Outcome::Failed(FailReason::WriteError)));
        assert!(!sink.0.lock().expect("lock").1, "never committed");

        let mut t = WriteTransfer::new(CLIENT, Box::new(Vec::new()), params(1, false));
        sent(&mut t, t0);
        data(&mut t, t0, 1, b"123456789");
        assert_eq!(t.outcome(), None);
        assert!(matches!(sent(&mut t, t0)[..], [Packet::Error { code: ErrorCode::IllegalOperation, .. }]));
    }

    #[test]
    fn file_sink_renames_on_commit_and_cleans_up_on_drop() {
        let dir = std::env::temp_dir().join(format!("dialtone-tftp-sink-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        let (tmp, target) = (dir.join(".up.tmp"), dir.join("up.log"));
        let mut sink = FileSink::new(File::create(&tmp).expect("create"), tmp.clone(), target.clone());
        sink.write_at(0, b"hello").expect("write");
        sink.commit().expect("commit");
        drop(sink);
        assert_eq!(std::fs::read(&target).expect("read"), b"hello");
        assert!(!tmp.exists());
        let sink = FileSink::new(File::create(&tmp).expect("create"), tmp.clone(), dir.join("other.log"));
        drop(sink);
        assert!(!tmp.exists() && !dir.join("other.log").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
