//! The I/O shell: UDP sockets, `tftp.threads` event-loop threads and the clock around the sans-IO
//! [`Engine`] and its transfers.
//!
//! Worker 0 also owns the listening socket (UDP 69 on `tftp.listen`). A request becomes a
//! transfer with its own socket on an ephemeral port (its transfer ID, RFC 1350 section 4),
//! handed round-robin to a worker over a channel plus a `mio::Waker`. Each worker multiplexes its
//! transfers' non-blocking sockets with epoll (mio) and keeps their retransmission deadlines in an
//! ordered set, so thousands of transfers run on a handful of threads. The clock is read once per
//! event batch. A datagram the kernel refuses (send buffer full) is kept and sent when the
//! socket becomes writable. Counters go to the shared [`TftpMetrics`].

use std::collections::{BTreeSet, HashSet};
use std::io;
use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Instant;

use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token, Waker};

use crate::engine::{Disposition, Engine};
use crate::metrics::TftpMetrics;
use crate::transfer::Transfer;

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX - 2);
/// Largest datagram read (a request or an ACK is far smaller; anything longer is not TFTP).
const RECV_BUFFER: usize = 65536;
/// Requests taken from the listening socket per wake-up, so running transfers are not starved.
const ACCEPT_BATCH: usize = 64;
/// Receive buffer asked for the listening socket: after a power cut every phone of a site sends
/// its RRQ in the same second, and the default (~208 KiB, a few hundred requests) drops some.
/// The kernel caps it at `net.core.rmem_max`.
const LISTEN_RCVBUF: usize = 4 << 20;

/// A new transfer on its way to the worker that will run it.
struct NewTransfer {
    socket: StdUdpSocket,
    transfer: Box<dyn Transfer>,
}

/// A running server; dropping it does not stop it, [`ServerHandle::shutdown`] does.
#[derive(Debug)]
pub struct ServerHandle {
    local_addr: SocketAddr,
    stop: Arc<AtomicBool>,
    wakers: Vec<Arc<Waker>>,
    threads: Vec<JoinHandle<()>>,
}

impl ServerHandle {
    /// The listening address (with the real port when configured with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Threads the server runs on (`tftp.threads`).
    pub fn thread_count(&self) -> usize {
        self.threads.len()
    }

    /// Stops every worker and waits for them; running transfers are dropped.
    pub fn shutdown(self) {
        self.stop.store(true, Ordering::SeqCst);
        for waker in &self.wakers {
            let _ = waker.wake();
        }
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

/// Raises the soft open-file limit (often 1024 under systemd) so that `max_transfers` transfers,
/// each holding a socket and a file, fit; never above the hard limit. Returns the soft limit now.
fn raise_open_file_limit(needed: u64) -> Option<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    let current = limit.current?;
    if current >= needed {
        return Some(current);
    }
    let target = limit.maximum.map_or(needed, |max| needed.min(max));
    match setrlimit(Resource::Nofile, Rlimit { current: Some(target), maximum: limit.maximum }) {
        Ok(()) => Some(target),
        Err(_) => Some(current),
    }
}

/// Binds the listening socket and starts `tftp.threads` workers.
pub fn spawn(engine: Arc<Engine>, metrics: Arc<TftpMetrics>) -> io::Result<ServerHandle> {
    let needed = 2 * u64::from(engine.config().max_transfers) + 256;
    match raise_open_file_limit(needed) {
        Some(limit) if limit < needed => tracing::warn!(
            limit,
            needed,
            "tftp: open-file limit too low for tftp.max_transfers; requests past it get a busy error"
        ),
        _ => {}
    }
    let listen = engine.config().listen;
    let socket =
        socket2::Socket::new(socket2::Domain::for_address(listen), socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    // Best effort: a smaller buffer only means more clients retransmit their RRQ.
    let _ = socket.set_recv_buffer_size(LISTEN_RCVBUF);
    socket.bind(&listen.into())?;
    socket.set_nonblocking(true)?;
    let listener: StdUdpSocket = socket.into();
    let local_addr = listener.local_addr()?;
    let workers = engine.config().threads.max(1) as usize;
    let stop = Arc::new(AtomicBool::new(false));
    let peers = Arc::new(Mutex::new(HashSet::new()));

    let mut polls = Vec::with_capacity(workers);
    let mut wakers = Vec::with_capacity(workers);
    let mut senders = Vec::with_capacity(workers);
    let mut receivers = Vec::with_capacity(workers);
    for _ in 0..workers {
        let poll = Poll::new()?;
        wakers.push(Arc::new(Waker::new(poll.registry(), WAKER)?));
        polls.push(poll);
        let (tx, rx) = mpsc::channel::<NewTransfer>();
        senders.push(tx);
        receivers.push(rx);
    }
    let mut listener = Some(UdpSocket::from_std(listener));
    let mut threads = Vec::with_capacity(workers);
    for (index, (poll, inbox)) in polls.into_iter().zip(receivers).enumerate() {
        let mut worker = Worker {
            index,
            poll,
            inbox,
            listener: listener.take(),
            dispatch: Dispatch { senders: senders.clone(), wakers: wakers.clone(), next: 0 },
            engine: Arc::clone(&engine),
            metrics: Arc::clone(&metrics),
            stop: Arc::clone(&stop),
            peers: Arc::clone(&peers),
            slots: Vec::new(),
            free: Vec::new(),
            timers: BTreeSet::new(),
            buffer: vec![0; RECV_BUFFER],
            out: Vec::with_capacity(RECV_BUFFER),
        };
        if let Some(l) = worker.listener.as_mut() {
            worker.poll.registry().register(l, LISTENER, Interest::READABLE)?;
        }
        let thread = std::thread::Builder::new().name(format!("tftp-{index}")).spawn(move || worker.run())?;
        threads.push(thread);
    }
    Ok(ServerHandle { local_addr, stop, wakers, threads })
}

/// Round-robin hand-off of new transfers to workers.
struct Dispatch {
    senders: Vec<mpsc::Sender<NewTransfer>>,
    wakers: Vec<Arc<Waker>>,
    next: usize,
}

struct Slot {
    socket: UdpSocket,
    transfer: Box<dyn Transfer>,
    /// The deadline currently in the timer set for this slot.
    armed: Option<Instant>,
    /// A datagram the kernel refused, with its destination, sent again once writable.
    blocked: Option<(Vec<u8>, SocketAddr)>,
    /// WRITABLE is part of the registered interest.
    wants_writable: bool,
}

struct Worker {
    index: usize,
    poll: Poll,
    inbox: mpsc::Receiver<NewTransfer>,
    listener: Option<UdpSocket>,
    dispatch: Dispatch,
    engine: Arc<Engine>,
    metrics: Arc<TftpMetrics>,
    stop: Arc<AtomicBool>,
    /// Clients with a running transfer, across workers: a client that repeats its RRQ before
    /// the first DATA reaches it must not get a second transfer (it would only time out).
    peers: Arc<Mutex<HashSet<SocketAddr>>>,
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    timers: BTreeSet<(Instant, usize)>,
    buffer: Vec<u8>,
    out: Vec<u8>,
}

impl Worker {
    fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        // mio is edge-triggered: a listener left with unread requests is polled again at once.
        let mut backlog = false;
        while !self.stop.load(Ordering::Relaxed) {
            let timeout = if backlog {
                Some(std::time::Duration::ZERO)
            } else {
                self.timers.first().map(|(deadline, _)| deadline.saturating_duration_since(Instant::now()))
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!(worker = self.index, error = %e, "tftp: poll failed, worker stops");
                break;
            }
            let now = Instant::now();
            if backlog {
                backlog = self.accept(now);
            }
            for event in &events {
                match event.token() {
                    LISTENER => backlog = self.accept(now),
                    WAKER => self.take_inbox(now),
                    Token(index) => {
                        if event.is_readable() {
                            self.receive(index, now);
                        }
                        self.service(index, now);
                    }
                }
            }
            let now = Instant::now();
            while let Some(&(deadline, index)) = self.timers.first() {
                if deadline > now {
                    break;
                }
                self.timers.pop_first();
                if let Some(slot) = self.slots.get_mut(index).and_then(Option::as_mut) {
                    slot.armed = None;
                    slot.transfer.handle_timeout(now);
                }
                self.service(index, now);
            }
        }
        let live = self.slots.iter().filter(|s| s.is_some()).count() as u64;
        self.metrics.active_transfers.fetch_sub(live, Ordering::Relaxed);
    }

    /// Reads up to [`ACCEPT_BATCH`] requests from the listening socket and starts or refuses
    /// them; true when more may be waiting.
    fn accept(&mut self, now: Instant) -> bool {
        for _ in 0..ACCEPT_BATCH {
            let Some(listener) = self.listener.as_ref() else { return false };
            let (len, from) = match listener.recv_from(&mut self.buffer) {
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // ICMP errors surface here (ECONNREFUSED); keep reading.
                    tracing::debug!(error = %e, "tftp: receive on listening socket failed");
                    continue;
                }
            };
            self.metrics.requests.fetch_add(1, Ordering::Relaxed);
            if self.peers.lock().unwrap_or_else(PoisonError::into_inner).contains(&from) {
                self.metrics.duplicate_requests.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let active = self.metrics.active_transfers.load(Ordering::Relaxed) as usize;
            let request = self.buffer.get(..len).unwrap_or_default();
            match self.engine.handle_request(from, request, active) {
                Disposition::Ignore => {
                    self.metrics.ignored.fetch_add(1, Ordering::Relaxed);
                }
                Disposition::Refuse(why, reply) => {
                    self.metrics.refused(why);
                    tracing::debug!(client = %from, reason = why.name(), "tftp: request refused");
                    let _ = listener.send_to(&reply, from);
                }
                Disposition::Start(transfer, used) => {
                    let socket = match self.transfer_socket() {
                        Ok(s) => s,
                        Err(e) => {
                            // Out of sockets or ports: the same answer as the transfer cap.
                            tracing::warn!(error = %e, "tftp: cannot open a transfer socket");
                            self.metrics.refused(crate::Refusal::Busy);
                            let mut reply = Vec::new();
                            crate::packet::emit_error(
                                &mut reply,
                                crate::Refusal::Busy.code(),
                                crate::Refusal::Busy.message(),
                            );
                            let _ = listener.send_to(&reply, from);
                            continue;
                        }
                    };
                    self.metrics.started(used);
                    self.peers.lock().unwrap_or_else(PoisonError::into_inner).insert(from);
                    tracing::debug!(client = %from, size = transfer.size(), "tftp: transfer started");
                    let target = self.dispatch.next % self.dispatch.senders.len();
                    self.dispatch.next = self.dispatch.next.wrapping_add(1);
                    if target == self.index {
                        self.insert(NewTransfer { socket, transfer }, now);
                    } else {
                        let sent = match (self.dispatch.senders.get(target), self.dispatch.wakers.get(target)) {
                            (Some(tx), Some(waker)) => {
                                let sent = tx.send(NewTransfer { socket, transfer }).is_ok();
                                if sent {
                                    let _ = waker.wake();
                                }
                                sent
                            }
                            _ => false,
                        };
                        if !sent {
                            // The target worker has stopped: undo the bookkeeping of this start.
                            self.metrics.active_transfers.fetch_sub(1, Ordering::Relaxed);
                            self.peers.lock().unwrap_or_else(PoisonError::into_inner).remove(&from);
                        }
                    }
                }
            }
        }
        true
    }

    /// A fresh non-blocking socket on the listening address, ephemeral port.
    fn transfer_socket(&self) -> io::Result<StdUdpSocket> {
        let ip = self.engine.config().listen.ip();
        let socket = StdUdpSocket::bind(SocketAddr::new(ip, 0))?;
        socket.set_nonblocking(true)?;
        Ok(socket)
    }

    fn take_inbox(&mut self, now: Instant) {
        while let Ok(new) = self.inbox.try_recv() {
            self.insert(new, now);
        }
    }

    fn insert(&mut self, new: NewTransfer, now: Instant) {
        let index = self.free.pop().unwrap_or(self.slots.len());
        let mut socket = UdpSocket::from_std(new.socket);
        if let Err(e) = self.poll.registry().register(&mut socket, Token(index), Interest::READABLE) {
            tracing::warn!(error = %e, "tftp: cannot register a transfer socket");
            self.metrics.active_transfers.fetch_sub(1, Ordering::Relaxed);
            self.peers.lock().unwrap_or_else(PoisonError::into_inner).remove(&new.transfer.peer());
            self.free.push(index);
            return;
        }
        let slot = Slot { socket, transfer: new.transfer, armed: None, blocked: None, wants_writable: false };
        if index == self.slots.len() {
            self.slots.push(Some(slot));
        } else if let Some(place) = self.slots.get_mut(index) {
            *place = Some(slot);
        }
        self.service(index, now);
    }

    fn receive(&mut self, index: usize, now: Instant) {
        let Some(slot) = self.slots.get_mut(index).and_then(Option::as_mut) else { return };
        // Drain to WouldBlock (edge-triggered); other errors (a queued ICMP unreachable) are
        // consumed by the call that reports them, so a few are skipped before giving up.
        let mut errors = 0;
        loop {
            match slot.socket.recv_from(&mut self.buffer) {
                Ok((len, from)) => slot.transfer.handle_datagram(now, from, self.buffer.get(..len).unwrap_or_default()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) if errors < 8 => errors += 1,
                Err(_) => break,
            }
        }
    }

    /// Sends what the transfer has to send, re-arms its timer, and retires it when done.
    fn service(&mut self, index: usize, now: Instant) {
        let Some(slot) = self.slots.get_mut(index).and_then(Option::as_mut) else { return };
        let mut blocked = false;
        if let Some((bytes, dest)) = slot.blocked.take() {
            match slot.socket.send_to(&bytes, dest) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    slot.blocked = Some((bytes, dest));
                    blocked = true;
                }
                _ => {}
            }
        }
        while !blocked {
            let Some(dest) = slot.transfer.poll_transmit(now, &mut self.out) else { break };
            match slot.socket.send_to(&self.out, dest) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    slot.blocked = Some((self.out.clone(), dest));
                    blocked = true;
                }
                Err(_) => {
                    // Unreachable peer and the like: the retransmission timer covers it.
                    self.metrics.send_drops.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if blocked != slot.wants_writable {
            let interest = if blocked { Interest::READABLE | Interest::WRITABLE } else { Interest::READABLE };
            let _ = self.poll.registry().reregister(&mut slot.socket, Token(index), interest);
            slot.wants_writable = blocked;
        }
        if slot.blocked.is_none() {
            if let Some(outcome) = slot.transfer.outcome() {
                let stats = slot.transfer.stats();
                tracing::debug!(client = %slot.transfer.peer(), ?outcome, "tftp: transfer ended");
                self.metrics.ended(outcome, stats);
                self.peers.lock().unwrap_or_else(PoisonError::into_inner).remove(&slot.transfer.peer());
                if let Some(armed) = slot.armed {
                    self.timers.remove(&(armed, index));
                }
                let _ = self.poll.registry().deregister(&mut slot.socket);
                if let Some(place) = self.slots.get_mut(index) {
                    *place = None;
                }
                self.free.push(index);
                return;
            }
        }
        let deadline = slot.transfer.poll_timeout();
        if deadline != slot.armed {
            if let Some(old) = slot.armed {
                self.timers.remove(&(old, index));
            }
            if let Some(new) = deadline {
                self.timers.insert((new, index));
            }
            slot.armed = deadline;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use std::time::Duration;

    use crate::engine::tests::{firmware, fixture, rrq, Scratch};
    use crate::packet::{ErrorCode, Packet};

    fn start(scratch: &Scratch, tweak: impl FnOnce(&mut dialtone_config::Tftp)) -> (ServerHandle, Arc<TftpMetrics>) {
        let (config, leases) = fixture(scratch);
        let mut tftp = config.tftp.clone();
        tftp.listen = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        tftp.timeout = Duration::from_millis(200);
        tweak(&mut tftp);
        let engine = Arc::new(Engine::new(tftp, config.classes.clone(), leases));
        let metrics = Arc::new(TftpMetrics::default());
        let handle = spawn(engine, Arc::clone(&metrics)).expect("loopback bind");
        (handle, metrics)
    }

    fn ack(block: u16) -> Vec<u8> {
        let mut out = Vec::new();
        Packet::Ack { block }.emit(&mut out);
        out
    }

    /// One client as RFC 7440 describes it: ACK at each window end, at the last block, and for
    /// the last in-order block when a gap appears.
    struct Client {
        socket: StdUdpSocket,
        server: SocketAddr,
        peer: Option<SocketAddr>,
        blksize: usize,
        windowsize: u16,
        expected: u16,
        in_window: u16,
        data: Vec<u8>,
        result: Option<Result<(), (ErrorCode, String)>>,
        request: Vec<u8>,
        requested_at: Instant,
    }

    impl Client {
        fn new(server: SocketAddr, name: &str, options: &[(&str, &str)]) -> Self {
            let socket = StdUdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
            let request = rrq(name, options);
            socket.send_to(&request, server).expect("send");
            Client {
                request,
                requested_at: Instant::now(),
                socket,
                server,
                peer: None,
                blksize: 512,
                windowsize: 1,
                expected: 1,
                in_window: 0,
                data: Vec::new(),
                result: None,
            }
        }

        fn send(&self, bytes: &[u8]) {
            let _ = self.socket.send_to(bytes, self.peer.unwrap_or(self.server));
        }

        fn handle(&mut self, from: SocketAddr, bytes: &[u8]) {
            if self.result.is_some() {
                return;
            }
            if from.port() == self.server.port() {
                // Errors for refused requests come from the listening port.
                if let Ok(Packet::Error { code, message }) = Packet::parse(bytes) {
                    self.result = Some(Err((code, message)));
                }
                return;
            }
            let peer = *self.peer.get_or_insert(from);
            assert_eq!(from, peer, "transfer ID changed");
            match Packet::parse(bytes).expect("server sends valid packets") {
                Packet::Oack(options) => {
                    for o in options {
                        match o.name.as_str() {
                            "blksize" => self.blksize = o.value.parse().expect("number"),
                            "windowsize" => self.windowsize = o.value.parse().expect("number"),
                            _ => {}
                        }
                    }
                    self.send(&ack(0));
                }
                Packet::Data { block, data } => {
                    if block != self.expected {
                        // A gap or a duplicate: tell the server what we hold (RFC 7440).
                        self.send(&ack(self.expected.wrapping_sub(1)));
                        self.in_window = 0;
                        return;
                    }
                    self.data.extend_from_slice(data);
                    self.expected = self.expected.wrapping_add(1);
                    self.in_window += 1;
                    if data.len() < self.blksize {
                        self.send(&ack(block));
                        self.result = Some(Ok(()));
                    } else if self.in_window == self.windowsize {
                        self.send(&ack(block));
                        self.in_window = 0;
                    }
                }
                Packet::Error { code, message } => self.result = Some(Err((code, message))),
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    /// Drives clients together on this thread until all finish or `limit` passes.
    fn drive(clients: &mut [Client], limit: Duration) {
        for c in clients.iter() {
            c.socket.set_nonblocking(true).expect("nonblocking");
        }
        let end = Instant::now() + limit;
        let mut buf = vec![0u8; RECV_BUFFER];
        while clients.iter().any(|c| c.result.is_none()) && Instant::now() < end {
            let mut progress = false;
            let now = Instant::now();
            for c in clients.iter_mut() {
                while let Ok((len, from)) = c.socket.recv_from(&mut buf) {
                    progress = true;
                    c.handle(from, &buf[..len]);
                }
                // Like every real client, repeat an unanswered request.
                if c.peer.is_none() && c.result.is_none() && now - c.requested_at > Duration::from_secs(1) {
                    let _ = c.socket.send_to(&c.request, c.server);
                    c.requested_at = now;
                }
            }
            if !progress {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
    }

    fn fetch(server: SocketAddr, name: &str, options: &[(&str, &str)]) -> Result<Vec<u8>, (ErrorCode, String)> {
        let mut clients = [Client::new(server, name, options)];
        drive(&mut clients, Duration::from_secs(10));
        let [c] = clients;
        c.result.expect("finished in time").map(|()| c.data)
    }

    #[test]
    fn loopback_downloads_and_refusals() {
        let scratch = Scratch::new("server");
        let (server, metrics) = start(&scratch, |_| {});
        let addr = server.local_addr();
        assert_eq!(fetch(addr, "yealink/t5.rom", &[]).expect("plain"), firmware());
        let opts = [("blksize", "1468"), ("windowsize", "16"), ("tsize", "0")];
        assert_eq!(fetch(addr, "yealink/t5.rom", &opts).expect("windowed"), firmware());
        let text = String::from_utf8(fetch(addr, "805ec0a1b2c3.cfg", &[]).expect("virtual")).expect("utf8");
        assert!(text.contains("mac = 805ec0a1b2c3\n"), "{text}");
        assert!(text.contains("port_lo = "), "{text}");
        assert_eq!(fetch(addr, "805ec0a1b2c4.cfg", &[]).map_err(|e| e.0), Err(ErrorCode::AccessViolation));
        assert_eq!(fetch(addr, "../secret", &[]).map_err(|e| e.0), Err(ErrorCode::AccessViolation));
        assert_eq!(fetch(addr, "escape", &[]).map_err(|e| e.0), Err(ErrorCode::AccessViolation));
        assert_eq!(fetch(addr, "nope", &[]).map_err(|e| e.0), Err(ErrorCode::FileNotFound));
        assert_eq!(fetch(addr, "yealink/t5.rom", &[("blksize", "1")]).map_err(|e| e.0), Err(ErrorCode::OptionRefused));
        let get = |name: &str, label: Option<(&str, &str)>| {
            metrics.samples().into_iter().find(|(n, l, _)| *n == name && *l == label).map(|(_, _, v)| v)
        };
        // The server counts completion on the last ACK, which may trail the client's finish.
        let deadline = Instant::now() + Duration::from_secs(2);
        while get("dialtone_tftp_transfers_completed_total", None) != Some(3) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(get("dialtone_tftp_transfers_completed_total", None), Some(3));
        assert_eq!(get("dialtone_tftp_refused_total", Some(("reason", "path_escape"))), Some(2));
        assert_eq!(get("dialtone_tftp_option_total", Some(("option", "windowsize"))), Some(1));
        assert_eq!(get("dialtone_tftp_active_transfers", None), Some(0));
        server.shutdown();
    }

    #[test]
    fn transfer_cap_answers_busy_and_stalled_client_times_out() {
        let scratch = Scratch::new("server-cap");
        let (server, metrics) = start(&scratch, |t| {
            t.max_transfers = 2;
            t.timeout = Duration::from_millis(100);
            t.retries = 2;
        });
        let addr = server.local_addr();
        // Two clients that never acknowledge hold both slots.
        let silent: Vec<StdUdpSocket> = (0..2)
            .map(|_| {
                let s = StdUdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
                s.send_to(&rrq("yealink/t5.rom", &[]), addr).expect("send");
                s.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
                let mut buf = [0u8; 600];
                let (_, from) = s.recv_from(&mut buf).expect("first block");
                assert_ne!(from, addr);
                s
            })
            .collect();
        let err = fetch(addr, "yealink/t5.rom", &[]).expect_err("busy");
        assert_eq!(err.0, ErrorCode::Undefined);
        assert!(err.1.contains("busy"), "{}", err.1);
        // They are abandoned after 100 + 200 + 400 ms with an ERROR, freeing the slots.
        for s in &silent {
            let mut buf = [0u8; 600];
            let mut saw_error = false;
            while let Ok((len, _)) = s.recv_from(&mut buf) {
                if let Ok(Packet::Error { .. }) = Packet::parse(&buf[..len]) {
                    saw_error = true;
                    break;
                }
            }
            assert!(saw_error);
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while metrics.active_transfers.load(Ordering::Relaxed) != 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(fetch(addr, "yealink/t5.rom", &[]).expect("slot free again"), firmware());
        assert_eq!(metrics.transfers_failed[crate::FailReason::Timeout as usize].load(Ordering::Relaxed), 2);
        assert_eq!(metrics.refused[crate::Refusal::Busy as usize].load(Ordering::Relaxed), 1);
        server.shutdown();
    }

    #[test]
    fn repeated_request_does_not_start_a_second_transfer() {
        let scratch = Scratch::new("server-dup");
        let (server, metrics) = start(&scratch, |_| {});
        let s = StdUdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        s.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
        s.send_to(&rrq("yealink/t5.rom", &[]), server.local_addr()).expect("send");
        let mut buf = [0u8; 600];
        let (_, first) = s.recv_from(&mut buf).expect("block 1");
        s.send_to(&rrq("yealink/t5.rom", &[]), server.local_addr()).expect("send");
        let deadline = Instant::now() + Duration::from_secs(2);
        while metrics.duplicate_requests.load(Ordering::Relaxed) == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(metrics.duplicate_requests.load(Ordering::Relaxed), 1);
        assert_eq!(metrics.transfers_started.load(Ordering::Relaxed), 1);
        // Only the first transfer talks to us (its retransmission of block 1).
        let (_, from) = s.recv_from(&mut buf).expect("retransmitted block 1");
        assert_eq!(from, first);
        server.shutdown();
    }

    #[test]
    fn open_file_limit_is_raised_up_to_the_hard_limit() {
        use rustix::process::{getrlimit, Resource};
        let before = getrlimit(Resource::Nofile);
        let soft = before.current.expect("finite soft limit");
        let want = before.maximum.map_or(soft + 1, |hard| hard.min(soft + 1));
        assert_eq!(raise_open_file_limit(want), Some(want));
        assert_eq!(getrlimit(Resource::Nofile).current, Some(want));
    }

    #[test]
    fn many_concurrent_transfers_on_few_threads() {
        let scratch = Scratch::new("server-many");
        let (server, metrics) = start(&scratch, |t| t.threads = 2);
        assert_eq!(server.thread_count(), 2);
        let addr = server.local_addr();
        let opts = [("blksize", "1468"), ("windowsize", "8")];
        let mut clients: Vec<Client> = (0..300).map(|_| Client::new(addr, "yealink/t5.rom", &opts)).collect();
        drive(&mut clients, Duration::from_secs(30));
        for c in &clients {
            assert_eq!(c.result, Some(Ok(())));
            assert!(c.data == firmware());
        }
        assert!(metrics.requests.load(Ordering::Relaxed) >= 300);
        server.shutdown();
    }
}
