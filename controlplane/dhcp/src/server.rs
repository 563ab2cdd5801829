//! The DHCP server shell: the only part of this crate that does I/O.
//!
//! One blocking thread owns the [`Engine`]: it waits for a datagram and reads it with every datagram
//! already queued behind it (up to 64; one `recvmmsg(2)` on a UDP socket,
//! [`Transport::recv_batch`]; while a read fills its batch, the next follows without waiting),
//! reads the clock once per read, calls [`Engine::handle_into`] on each datagram, and dispatches
//! the [`Output`]s of that wake-up as two batches. Replies that need no write (OFFER, NAK, INFORM
//! ACK) go out after each read, together ([`Transport::send_batch`]: one `sendmmsg(2)` on a UDP
//! socket). Replies whose lease must be durable (ACK) wait for the wake-up's group commit: the
//! thread commits the writes of all of them in one durable transaction itself
//! ([`GroupCommitter::apply_here`], one fsync), then publishes their lease events and sends them
//! together — so many ACKs share one fsync, one lease-sink call and one send, and none precedes
//! its lease (claims 001: 10, 25, 40). The thread commits itself, rather than handing the writes
//! to another thread and waiting for it, because on a virtual machine the two wake-ups of such a
//! hand-off cost more CPU than the fsync; datagrams that arrive meanwhile wait in the socket
//! buffer. A group stops growing at `store.group_commit_max` writes. Under load the thread then
//! sleeps up to `store.group_commit_wait`, less when it found more than [`TARGET_GROUP`]
//! datagrams: fewer wake-ups and fsyncs per lease, with bursts of replies small enough for a
//! client's socket buffer. The same thread runs the expiry sweep every `sweep_every`.
//!
//! If a commit fails, its replies are withheld (the clients retry) and an error is logged; the
//! engine's memory already holds the lease, so the retry is answered as a renewal and re-writes
//! the lease record.

use std::io;
use std::net::{SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dialtone_store::{GroupCommitter, UnixSecs};
use nix::sys::socket::{MultiHeaders, SockaddrStorage};

use crate::engine::{Counters, Effect, Engine, LeaseEvent, Output, Reply};

/// Where datagrams come from and go to.
pub trait Transport: Send + Sync + 'static {
    /// Receives one datagram into `buf`; `Ok(None)` when the read timed out.
    fn recv(&self, buf: &mut [u8]) -> io::Result<Option<usize>>;
    /// Receives one datagram already queued, without waiting; `Ok(None)` when none is.
    fn try_recv(&self, buf: &mut [u8]) -> io::Result<Option<usize>>;
    /// Reads into `batch` the datagrams queued, up to [`DRAIN`]; when `wait`, first waits (up to
    /// the read timeout) for one to arrive. `batch` is left empty when none came. An error after
    /// the first datagram ends the batch (it is logged; the next wake-up reads on).
    /// Transports that can read several datagrams in one system call override this.
    fn recv_batch(&self, batch: &mut RecvBatch, wait: bool) -> io::Result<()> {
        batch.clear();
        let first = if wait { self.recv(batch.next_slot())? } else { self.try_recv(batch.next_slot())? };
        let Some(first) = first else {
            return Ok(());
        };
        batch.filled(first);
        while batch.len() < DRAIN {
            match self.try_recv(batch.next_slot()) {
                Ok(Some(n)) => batch.filled(n),
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "dhcp: receive failed");
                    break;
                }
            }
        }
        Ok(())
    }
    /// Sends `bytes` to `to`.
    fn send(&self, bytes: &[u8], to: SocketAddrV4) -> io::Result<()>;
    /// Sends every reply, in order, each to its address; a reply that cannot be sent is logged
    /// and skipped. Transports that can send several datagrams in one system call override this.
    fn send_batch(&self, replies: &[Reply]) {
        for reply in replies {
            if let Err(e) = self.send(&reply.bytes, reply.to) {
                tracing::warn!(error = %e, to = %reply.to, "dhcp: send failed");
            }
        }
    }
}

/// Bytes of one datagram's slot in a [`RecvBatch`]. A client's DHCP message fits an Ethernet frame
/// (RFC 2131 section 2: at least 576 bytes must be accepted; phones send 300 to 600); a longer one
/// is not read whole and is dropped as malformed.
pub const RECV_SLOT_BYTES: usize = 4096;

/// The datagrams of one wake-up: [`DRAIN`] slots of [`RECV_SLOT_BYTES`], allocated once and reused.
pub struct RecvBatch {
    bytes: Vec<u8>,
    /// Length of each datagram read, in slot order; `None` for one longer than its slot.
    lengths: Vec<Option<usize>>,
    /// `recvmmsg(2)`'s message headers (for [`UdpTransport`]), allocated once.
    headers: MultiHeaders<SockaddrStorage>,
}

impl std::fmt::Debug for RecvBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBatch").field("lengths", &self.lengths).finish_non_exhaustive()
    }
}

impl Default for RecvBatch {
    fn default() -> Self {
        Self {
            bytes: vec![0; DRAIN * RECV_SLOT_BYTES],
            lengths: Vec::with_capacity(DRAIN),
            headers: MultiHeaders::preallocate(DRAIN, None),
        }
    }
}

impl RecvBatch {
    /// Forgets the datagrams read.
    pub fn clear(&mut self) {
        self.lengths.clear();
    }

    /// Datagrams read.
    pub fn len(&self) -> usize {
        self.lengths.len()
    }

    /// No datagram read?
    pub fn is_empty(&self) -> bool {
        self.lengths.is_empty()
    }

    /// The slot the next datagram goes to (empty when all [`DRAIN`] are full).
    pub fn next_slot(&mut self) -> &mut [u8] {
        let start = self.lengths.len() * RECV_SLOT_BYTES;
        self.bytes.get_mut(start..start + RECV_SLOT_BYTES).unwrap_or_default()
    }

    /// Records that [`next_slot`](Self::next_slot) received a datagram of `len` bytes.
    pub fn filled(&mut self, len: usize) {
        self.lengths.push((len <= RECV_SLOT_BYTES).then_some(len));
    }

    /// The datagrams read, in order: `Some(bytes)`, or `None` for one too long for its slot.
    pub fn datagrams(&self) -> impl Iterator<Item = Option<&[u8]>> + '_ {
        self.lengths
            .iter()
            .zip(self.bytes.chunks_exact(RECV_SLOT_BYTES))
            .map(|(len, slot)| len.and_then(|n| slot.get(..n)))
    }
}

/// Replies handed to one `sendmmsg(2)` at most (a wake-up's batch is sent in chunks of this).
const SEND_CHUNK: usize = 64;

/// Receive buffer asked for the server socket: about a thousand queued datagrams, so that a burst
/// arriving while the thread commits (an fsync) or gathers waits instead of being dropped.
pub const RECV_BUFFER_BYTES: usize = 1 << 20;

/// A UDP socket on the server port, optionally bound to one interface.
#[derive(Debug)]
pub struct UdpTransport {
    socket: UdpSocket,
}

impl UdpTransport {
    /// Binds `addr` (normally `0.0.0.0:67`), restricted to `interface` when given
    /// (SO_BINDTODEVICE), with broadcast allowed, a receive buffer of [`RECV_BUFFER_BYTES`] and a
    /// read timeout so the loop can sweep and stop.
    pub fn bind(addr: SocketAddrV4, interface: Option<&str>, read_timeout: Duration) -> io::Result<Self> {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
        socket.set_reuse_address(true)?;
        socket.set_broadcast(true)?;
        // The kernel caps this at net.core.rmem_max; the default (about 200 kB) holds only a
        // couple of hundred small datagrams, a few milliseconds of a boot storm.
        socket.set_recv_buffer_size(RECV_BUFFER_BYTES)?;
        if let Some(interface) = interface {
            socket.bind_device(Some(interface.as_bytes()))?;
        }
        socket.set_read_timeout(Some(read_timeout.max(Duration::from_millis(1))))?;
        socket.bind(&std::net::SocketAddr::V4(addr).into())?;
        Ok(Self { socket: socket.into() })
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.socket.local_addr()
    }
}

impl Transport for UdpTransport {
    /// One `recvmmsg(2)`, with `MSG_WAITFORONE` when `wait`: it waits (up to the socket's read
    /// timeout) for the first datagram, then takes what is queued without waiting — one system
    /// call per read instead of one per datagram and one more to find the queue empty. Without
    /// `wait`, `MSG_DONTWAIT`.
    fn recv_batch(&self, batch: &mut RecvBatch, wait: bool) -> io::Result<()> {
        use nix::sys::socket::{recvmmsg, MsgFlags};
        use std::os::fd::AsRawFd;
        batch.clear();
        let RecvBatch { bytes, lengths, headers } = batch;
        let mut slots = bytes.chunks_exact_mut(RECV_SLOT_BYTES);
        let mut buffers: [[io::IoSliceMut<'_>; 1]; DRAIN] =
            std::array::from_fn(|_| [io::IoSliceMut::new(slots.next().unwrap_or_default())]);
        let flags = if wait { MsgFlags::MSG_WAITFORONE } else { MsgFlags::MSG_DONTWAIT };
        match recvmmsg(self.socket.as_raw_fd(), headers, buffers.iter_mut(), flags, None) {
            Ok(received) => {
                for message in received {
                    let truncated = message.flags.contains(MsgFlags::MSG_TRUNC);
                    lengths.push((!truncated && message.bytes <= RECV_SLOT_BYTES).then_some(message.bytes));
                }
                Ok(())
            }
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
    fn recv(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        match self.socket.recv_from(buf) {
            Ok((n, _)) => Ok(Some(n)),
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => Ok(None),
            Err(e) => Err(e),
        }
    }
    fn try_recv(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        match rustix::net::recv(&self.socket, &mut *buf, rustix::net::RecvFlags::DONTWAIT) {
            Ok((_, n)) => Ok(Some(n.min(buf.len()))),
            Err(rustix::io::Errno::AGAIN) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
    fn send(&self, bytes: &[u8], to: SocketAddrV4) -> io::Result<()> {
        self.socket.send_to(bytes, to).map(|_| ())
    }

    /// One `sendmmsg(2)` per [`SEND_CHUNK`] replies. It returns how many datagrams left; the
    /// first one not sent is retried alone with `sendto(2)`, so its error is reported and the
    /// rest still go out.
    fn send_batch(&self, replies: &[Reply]) {
        use rustix::net::{sendmmsg, MMsgHdr, SendAncillaryBuffer, SendFlags, SocketAddrAny};
        let mut rest = replies;
        while !rest.is_empty() {
            let chunk = rest.get(..SEND_CHUNK.min(rest.len())).unwrap_or(rest);
            let addresses: Vec<SocketAddrAny> = chunk.iter().map(|r| SocketAddrAny::from(r.to)).collect();
            let payloads: Vec<[io::IoSlice<'_>; 1]> = chunk.iter().map(|r| [io::IoSlice::new(&r.bytes)]).collect();
            let mut controls: Vec<SendAncillaryBuffer<'_, '_, '_>> =
                chunk.iter().map(|_| SendAncillaryBuffer::default()).collect();
            let mut messages: Vec<MMsgHdr<'_>> = addresses
                .iter()
                .zip(&payloads)
                .zip(controls.iter_mut())
                .map(|((to, payload), control)| MMsgHdr::new_with_addr(to, payload, control))
                .collect();
            let sent = sendmmsg(&self.socket, &mut messages, SendFlags::empty()).unwrap_or(0);
            // The first datagram refused: sent alone, for its error; then the rest.
            let skip = if sent < chunk.len() {
                if let Some(failed) = chunk.get(sent) {
                    if let Err(e) = self.send(&failed.bytes, failed.to) {
                        tracing::warn!(error = %e, to = %failed.to, "dhcp: send failed");
                    }
                }
                sent + 1
            } else {
                sent
            };
            rest = rest.get(skip..).unwrap_or(&[]);
        }
    }
}

/// Datagrams read per `recvmmsg(2)` at most: what is already queued after the first is read
/// without waiting. A wake-up reads on while its reads fill, until its writes reach the
/// committer's [`max_writes`](GroupCommitter::max_writes) (`store.group_commit_max`), and commits
/// the writes of all of them as one transaction, instead of one per datagram.
pub const DRAIN: usize = 64;

/// How long the thread waits after a failed read before reading again (at most ten warnings a
/// second while an error lasts).
const RECV_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// The number of datagrams a wake-up should find: past it, the thread pauses for less than the
/// whole gather. It bounds the bursts of replies towards one relay or client (the OFFERs of a
/// read, the ACKs of a commit), which a client's default socket buffer (about 200 kB, 150 to 200
/// small datagrams) must hold until the client reads them.
const TARGET_GROUP: usize = DRAIN;

/// How long the thread lets datagrams gather after a wake-up that handled `handled` (more than
/// one: the server is under load) before it reads again: `gather` (the committer's
/// [`max_wait`](GroupCommitter::max_wait), `store.group_commit_wait`) up to [`TARGET_GROUP`]
/// datagrams, then less in proportion, so that at a higher rate the next wake-up again finds
/// about as many. A wake-up (a context switch) and a commit (an fsync) are the dearest parts of a
/// datagram's cost on a virtual machine; letting datagrams gather spreads them over more leases,
/// for at most `gather` more latency (RFC 2131 clients wait seconds).
fn gather_after(handled: usize, gather: Duration) -> Duration {
    let handled = u32::try_from(handled.max(TARGET_GROUP)).unwrap_or(u32::MAX);
    gather * u32::try_from(TARGET_GROUP).unwrap_or(u32::MAX) / handled
}

/// Receives lease events (the dataplane's channel, metrics); called after durability, once per
/// reply set with all of its events, in order.
pub type LeaseSink = Arc<dyn Fn(&[LeaseEvent]) + Send + Sync>;
/// The clock, in seconds since the UNIX epoch (injected so tests run in virtual time).
pub type Clock = Arc<dyn Fn() -> UnixSecs + Send + Sync>;

/// The system clock.
pub fn system_clock() -> Clock {
    Arc::new(|| SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()))
}

/// A running server thread.
#[derive(Debug)]
pub struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    counters: Arc<Mutex<Counters>>,
}

impl Server {
    /// Starts the server loop on its own thread.
    pub fn spawn<T: Transport>(
        mut engine: Engine,
        transport: Arc<T>,
        committer: Arc<GroupCommitter>,
        leases: LeaseSink,
        clock: Clock,
        sweep_every: Duration,
    ) -> io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Mutex::new(engine.counters().clone()));
        let (thread_stop, thread_counters) = (Arc::clone(&stop), Arc::clone(&counters));
        let thread = std::thread::Builder::new().name("dhcp".into()).spawn(move || {
            let mut received = RecvBatch::default();
            let mut next_sweep = Instant::now() + sweep_every;
            // Reused every wake-up: one datagram's output, what leaves without a write, and what
            // leaves after the wake-up's commit.
            let mut one = Output::default();
            let mut at_once = Output::default();
            let mut durable = Output::default();
            while !thread_stop.load(Ordering::Relaxed) {
                let mut handled = 0;
                let mut now = None;
                // The first read waits; more reads follow, without waiting, only while the last
                // one filled the batch (more is queued), until the writes reach the commit bound.
                loop {
                    let result = transport.recv_batch(&mut received, handled == 0);
                    if let Err(e) = result {
                        tracing::warn!(error = %e, "dhcp: receive failed");
                        if handled == 0 {
                            // A lasting error (the interface gone, say) must not turn the loop
                            // into a spin: wait as long as an idle read would.
                            std::thread::sleep(RECV_ERROR_PAUSE);
                        }
                        break;
                    }
                    if received.is_empty() {
                        break;
                    }
                    let at = clock();
                    now = Some(at);
                    for datagram in received.datagrams() {
                        match datagram {
                            Some(bytes) => engine.handle_into(at, bytes, &mut one),
                            None => engine.refuse_oversized(&mut one),
                        }
                        sort(&mut one, &mut at_once, &mut durable);
                    }
                    deliver(&*transport, &leases, &mut at_once);
                    handled += received.len();
                    if received.len() < DRAIN || durable.writes.len() >= committer.max_writes() {
                        break;
                    }
                }
                if Instant::now() >= next_sweep {
                    next_sweep = Instant::now() + sweep_every;
                    let mut swept = engine.sweep(now.unwrap_or_else(|| clock()));
                    sort(&mut swept, &mut at_once, &mut durable);
                    deliver(&*transport, &leases, &mut at_once);
                }
                commit(&committer, &mut durable, &*transport, &leases);
                if let Ok(mut c) = thread_counters.lock() {
                    c.clone_from(engine.counters());
                }
                if handled > 1 {
                    std::thread::sleep(gather_after(handled, committer.max_wait()));
                }
            }
        })?;
        Ok(Self { stop, thread: Some(thread), counters })
    }

    /// The live counters, updated after every datagram (for `/metrics`).
    pub fn counters_handle(&self) -> Arc<Mutex<Counters>> {
        Arc::clone(&self.counters)
    }

    /// The engine's counters as of its last datagram.
    pub fn counters(&self) -> Option<Counters> {
        self.counters.lock().ok().map(|c| c.clone())
    }

    /// Stops the loop (within one read timeout) and waits for it.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("dhcp server thread panicked");
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A background thread that drops lease history older than the retention
/// (config `store.history_retention`), checking every `every`. Pruning is its own durable
/// transaction, off the DHCP thread, so it never delays a reply.
#[derive(Debug)]
pub struct HistoryPruner {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HistoryPruner {
    /// Starts pruning `store`.
    pub fn spawn(
        store: Arc<dyn dialtone_store::Store>,
        retention: Duration,
        every: Duration,
        clock: Clock,
    ) -> io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = Arc::clone(&stop);
        let thread = std::thread::Builder::new().name("history-prune".into()).spawn(move || {
            let mut next = Instant::now();
            while !thread_stop.load(Ordering::Relaxed) {
                if Instant::now() >= next {
                    next = Instant::now() + every;
                    let cutoff = clock().saturating_sub(retention.as_secs());
                    match store.prune_history(cutoff) {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(records = n, cutoff, "lease history pruned"),
                        Err(e) => tracing::error!(error = %e, "lease history pruning failed"),
                    }
                }
                std::thread::sleep(Duration::from_millis(50).min(every));
            }
        })?;
        Ok(Self { stop, thread: Some(thread) })
    }
}

impl Drop for HistoryPruner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("history pruner panicked");
            }
        }
    }
}

fn publish(leases: &LeaseSink, effects: impl IntoIterator<Item = Effect>) {
    let events: Vec<LeaseEvent> = effects
        .into_iter()
        .filter_map(|effect| match effect {
            Effect::Lease(event) => Some(event),
            _ => None,
        })
        .collect();
    if !events.is_empty() {
        leases(&events);
    }
}

/// Publishes a reply set's lease events, then sends its replies, leaving `out` empty. Events go
/// first so a phone that uses its address the moment its ACK arrives (a TFTP request for its
/// per-phone file) finds the lease table current.
fn deliver<T: Transport>(transport: &T, leases: &LeaseSink, out: &mut Output) {
    publish(leases, out.effects.drain(..));
    if !out.replies.is_empty() {
        transport.send_batch(&out.replies);
    }
    out.replies.clear();
    out.writes.clear();
}

/// Moves one datagram's output (`one`, left empty) to `at_once` when it needs no write (OFFER,
/// NAK, INFORM), else to `durable`, whose replies leave only after the commit carrying all of
/// its writes. Replies keep their order within each.
fn sort(one: &mut Output, at_once: &mut Output, durable: &mut Output) {
    let to = if one.writes.is_empty() { at_once } else { durable };
    to.replies.append(&mut one.replies);
    to.effects.append(&mut one.effects);
    to.writes.append(&mut one.writes);
}

/// Commits the writes of a wake-up (`durable`, left empty) in one durable transaction on this
/// thread, then publishes their lease events and sends their replies (the ACKs) together. If the
/// commit fails, the replies are withheld (the clients retry) and an error is logged.
fn commit<T: Transport>(committer: &GroupCommitter, durable: &mut Output, transport: &T, leases: &LeaseSink) {
    if durable.writes.is_empty() && durable.replies.is_empty() && durable.effects.is_empty() {
        return;
    }
    match committer.apply_here(&durable.writes) {
        Ok(()) => deliver(transport, leases, durable),
        Err(e) => {
            tracing::error!(error = %e, withheld = durable.replies.len(), "dhcp: lease not durable, replies withheld");
            durable.replies.clear();
            durable.effects.clear();
            durable.writes.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::tests::{example, mac, Msg, YEALINK};
    use crate::engine::{Limits, MessageType};
    use crate::wire::{code, Message};
    use dialtone_store::{HistoryRecord, LeaseSnapshot, MemoryStore, Store, StoreError, Write};
    use std::collections::VecDeque;
    use std::net::Ipv4Addr;
    use std::sync::mpsc;

    /// A transport fed from a queue, recording what is sent and whether the addressee's lease
    /// was already in the store at that moment.
    struct Fake {
        inbox: Mutex<VecDeque<Vec<u8>>>,
        sent: Mutex<Vec<(Vec<u8>, bool)>>,
        /// How many replies each `send_batch` call carried.
        batches: Mutex<Vec<usize>>,
        store: Arc<MemoryStore>,
    }

    impl Fake {
        fn new(store: Arc<MemoryStore>) -> Arc<Self> {
            Arc::new(Fake {
                inbox: Mutex::new(VecDeque::new()),
                sent: Mutex::new(Vec::new()),
                batches: Mutex::new(Vec::new()),
                store,
            })
        }
    }

    impl Transport for Fake {
        fn recv(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
            let next = self.inbox.lock().unwrap().pop_front();
            match next {
                Some(d) => {
                    buf[..d.len()].copy_from_slice(&d);
                    Ok(Some(d.len()))
                }
                None => {
                    std::thread::sleep(Duration::from_millis(2));
                    Ok(None)
                }
            }
        }
        fn try_recv(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
            Ok(self.inbox.lock().unwrap().pop_front().map(|d| {
                buf[..d.len()].copy_from_slice(&d);
                d.len()
            }))
        }
        fn send(&self, bytes: &[u8], _to: SocketAddrV4) -> io::Result<()> {
            let chaddr = Message::decode(bytes).unwrap().chaddr;
            let durable = self.store.snapshot().unwrap().leases.iter().any(|l| l.mac.0 == chaddr[..6]);
            self.sent.lock().unwrap().push((bytes.to_vec(), durable));
            Ok(())
        }
        fn send_batch(&self, replies: &[Reply]) {
            self.batches.lock().unwrap().push(replies.len());
            for reply in replies {
                self.send(&reply.bytes, reply.to).unwrap();
            }
        }
    }

    /// The in-memory store, each commit delayed by `delay` (a slow disk, so an ACK sent too
    /// early would be caught) and the name of the thread it ran on recorded.
    struct TestStore {
        inner: Arc<MemoryStore>,
        delay: Duration,
        threads: Mutex<Vec<Option<String>>>,
    }

    impl TestStore {
        fn new(inner: Arc<MemoryStore>, delay: Duration) -> Arc<Self> {
            Arc::new(Self { inner, delay, threads: Mutex::new(Vec::new()) })
        }
    }

    impl Store for TestStore {
        fn apply(&self, writes: &[Write]) -> Result<(), StoreError> {
            self.threads.lock().unwrap().push(std::thread::current().name().map(str::to_string));
            std::thread::sleep(self.delay);
            self.inner.apply(writes)
        }
        fn snapshot(&self) -> Result<LeaseSnapshot, StoreError> {
            self.inner.snapshot()
        }
        fn who_held(&self, ip: Ipv4Addr, port: u16, at: u64) -> Result<Vec<HistoryRecord>, StoreError> {
            self.inner.who_held(ip, port, at)
        }
        fn prune_history(&self, before: u64) -> Result<usize, StoreError> {
            self.inner.prune_history(before)
        }
    }

    #[test]
    fn acks_leave_only_after_their_lease_is_durable() {
        let memory = Arc::new(MemoryStore::new());
        let fake = Fake::new(memory.clone());
        let committer = slow_committer(&memory);
        let (events_tx, events_rx) = mpsc::channel();
        let events_tx = Mutex::new(events_tx);
        let sink: LeaseSink = Arc::new(move |events: &[LeaseEvent]| {
            for e in events {
                let _ = events_tx.lock().unwrap().send(e.clone());
            }
        });
        let engine = Engine::new(example(), &LeaseSnapshot::default(), Limits::default());
        let server = Server::spawn(
            engine,
            fake.clone(),
            Arc::clone(&committer),
            sink,
            Arc::new(|| 1000),
            Duration::from_secs(3600),
        )
        .unwrap();

        // Three phones: DISCOVERs first, then REQUESTs for what each was offered.
        for n in 1..=3 {
            fake.inbox.lock().unwrap().push_back(Msg::new(MessageType::Discover, mac(n), YEALINK).bytes());
        }
        let offers = wait_for(&fake, 3);
        let mut requests = Vec::new();
        for (bytes, durable) in &offers {
            let offer = Message::decode(bytes).unwrap();
            assert!(!durable, "offers need no durable write");
            let n = offer.chaddr[5];
            let req = Msg::new(MessageType::Request, mac(n), YEALINK)
                .requested(offer.yiaddr)
                .server(Ipv4Addr::new(100, 64, 0, 1));
            requests.push(req.bytes());
        }
        // Queued together, the three REQUESTs are read in one wake-up and their writes reach the
        // committer as one batch.
        fake.inbox.lock().unwrap().extend(requests);
        let all = wait_for(&fake, 6);
        assert_eq!(committer.stats().batches, 1, "queued REQUESTs were handed over one by one");
        let mut acks = 0;
        for (bytes, durable) in &all[3..] {
            let ack = Message::decode(bytes).unwrap();
            assert_eq!(ack.options.get(code::MESSAGE_TYPE), Some(&[MessageType::Ack as u8][..]));
            let lease = memory.snapshot().unwrap().leases.into_iter().find(|l| l.mac.0[5] == ack.chaddr[5]).unwrap();
            assert!(*durable, "an ACK left before its lease was durable");
            assert_eq!(Ipv4Addr::new(100, 64, 16, 0).to_bits() + lease.offset, ack.yiaddr.to_bits());
            acks += 1;
        }
        assert_eq!(acks, 3);
        let events: Vec<_> = (0..3).map(|_| events_rx.recv_timeout(Duration::from_secs(5)).unwrap()).collect();
        assert_eq!(events.len(), 3);
        server.stop();
    }

    /// The message type and the last MAC byte of a sent reply.
    fn kind_and_phone(bytes: &[u8]) -> (u8, u8) {
        let reply = Message::decode(bytes).unwrap();
        (reply.options.get(code::MESSAGE_TYPE).unwrap()[0], reply.chaddr[5])
    }

    #[test]
    fn a_wake_up_sends_its_offers_together_and_its_acks_together_after_their_commit() {
        let memory = Arc::new(MemoryStore::new());
        let fake = Fake::new(memory.clone());
        let committer = slow_committer(&memory);
        let server = spawn_example(fake.clone(), Arc::clone(&committer));
        for n in 1..=3 {
            fake.inbox.lock().unwrap().push_back(Msg::new(MessageType::Discover, mac(n), YEALINK).bytes());
            wait_for(&fake, usize::from(n));
        }
        let offered: Vec<Ipv4Addr> =
            fake.sent.lock().unwrap().iter().map(|(b, _)| Message::decode(b).unwrap().yiaddr).collect();
        fake.batches.lock().unwrap().clear();
        // One wake-up: REQUESTs of phones 3, 1, 2 interleaved with DISCOVERs of phones 4 and 5.
        let request = |n: u8| {
            Msg::new(MessageType::Request, mac(n), YEALINK)
                .requested(offered[usize::from(n) - 1])
                .server(Ipv4Addr::new(100, 64, 0, 1))
                .bytes()
        };
        let discover = |n: u8| Msg::new(MessageType::Discover, mac(n), YEALINK).bytes();
        fake.inbox.lock().unwrap().extend([request(3), discover(4), request(1), discover(5), request(2)]);
        let all = wait_for(&fake, 8);
        let (offer, ack) = (MessageType::Offer as u8, MessageType::Ack as u8);
        let order: Vec<(u8, u8)> = all[3..].iter().map(|(b, _)| kind_and_phone(b)).collect();
        assert_eq!(order, [(offer, 4), (offer, 5), (ack, 3), (ack, 1), (ack, 2)], "OFFERs first, each set in order");
        assert_eq!(*fake.batches.lock().unwrap(), [2, 3], "one send per set");
        assert!(all[3..5].iter().all(|(_, durable)| !durable));
        assert!(all[5..].iter().all(|(_, durable)| *durable), "an ACK left before its lease was durable");
        assert_eq!(memory.snapshot().unwrap().leases.len(), 3);
        assert_eq!(committer.stats().batches, 1, "the three REQUESTs' writes went as one batch");
        server.stop();
    }

    #[test]
    fn a_queue_longer_than_one_read_is_committed_once_by_the_dhcp_thread_itself() {
        let (phones, committer, store, batches) = queue_of_requests(4096);
        assert_eq!(committer.stats().commits, 1, "one commit for the whole queue");
        assert_eq!(*store.threads.lock().unwrap(), [Some("dhcp".to_string())], "committed on the DHCP thread");
        assert_eq!(batches, [phones], "the ACKs leave in one send, after the commit");
    }

    #[test]
    fn a_group_stops_growing_at_store_group_commit_max() {
        // Each REQUEST writes more than one record: once the first read's writes reach the bound
        // the thread commits them and reads the rest of the queue in the next group.
        let (phones, committer, _, batches) = queue_of_requests(1);
        assert_eq!(committer.stats().commits, 2, "the bound splits the queue");
        assert_eq!(batches, [DRAIN, phones - DRAIN], "each group's ACKs leave after its own commit");
    }

    /// Leases `DRAIN + DRAIN / 2` phones through a server whose committer has `max_writes`: the
    /// DISCOVERs first, then all the REQUESTs queued at once. Returns the number of phones, the
    /// committer, the store (with the threads that committed) and the sizes of the ACK sends.
    fn queue_of_requests(max_writes: usize) -> (usize, Arc<GroupCommitter>, Arc<TestStore>, Vec<usize>) {
        let memory = Arc::new(MemoryStore::new());
        let fake = Fake::new(memory.clone());
        let store = TestStore::new(memory.clone(), Duration::ZERO);
        let committer = Arc::new(GroupCommitter::new(store.clone(), Duration::from_millis(5), max_writes));
        let server = spawn_example(fake.clone(), Arc::clone(&committer));
        let phones = u8::try_from(DRAIN + DRAIN / 2).unwrap();
        fake.inbox
            .lock()
            .unwrap()
            .extend((1..=phones).map(|n| Msg::new(MessageType::Discover, mac(n), YEALINK).bytes()));
        let offers = wait_for(&fake, usize::from(phones));
        fake.batches.lock().unwrap().clear();
        let requests = offers.iter().map(|(bytes, _)| {
            let offer = Message::decode(bytes).unwrap();
            Msg::new(MessageType::Request, mac(offer.chaddr[5]), YEALINK)
                .requested(offer.yiaddr)
                .server(Ipv4Addr::new(100, 64, 0, 1))
                .bytes()
        });
        // More REQUESTs queued than one read takes: the full first read is followed at once by a
        // second, and the writes of both go in one commit (up to the bound), made on the DHCP
        // thread (no hand-off).
        fake.inbox.lock().unwrap().extend(requests);
        let all = wait_for(&fake, 2 * usize::from(phones));
        assert!(
            all[usize::from(phones)..].iter().all(|(_, durable)| *durable),
            "an ACK left before its lease was durable"
        );
        assert_eq!(memory.snapshot().unwrap().leases.len(), usize::from(phones));
        server.stop();
        let batches = fake.batches.lock().unwrap().clone();
        (usize::from(phones), committer, store, batches)
    }

    #[test]
    fn a_lasting_receive_error_does_not_spin_the_thread() {
        /// Every read fails at once, as on a socket whose interface is gone.
        struct Broken(std::sync::atomic::AtomicUsize);
        impl Transport for Broken {
            fn recv(&self, _: &mut [u8]) -> io::Result<Option<usize>> {
                self.0.fetch_add(1, Ordering::SeqCst);
                Err(io::Error::from(io::ErrorKind::NetworkDown))
            }
            fn try_recv(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
                self.recv(buf)
            }
            fn send(&self, _: &[u8], _: SocketAddrV4) -> io::Result<()> {
                Ok(())
            }
        }
        let broken = Arc::new(Broken(std::sync::atomic::AtomicUsize::new(0)));
        let committer = Arc::new(GroupCommitter::new(Arc::new(MemoryStore::new()), Duration::from_millis(1), 64));
        let server = spawn_example(broken.clone(), committer);
        std::thread::sleep(Duration::from_millis(350));
        server.stop();
        let reads = broken.0.load(Ordering::SeqCst);
        assert!((1..=6).contains(&reads), "{reads} failed reads in 350 ms");
    }

    /// A committer over `memory` whose every commit takes 20 ms.
    fn slow_committer(memory: &Arc<MemoryStore>) -> Arc<GroupCommitter> {
        Arc::new(GroupCommitter::new(
            TestStore::new(memory.clone(), Duration::from_millis(20)),
            Duration::from_millis(5),
            1024,
        ))
    }

    /// A server of the example configuration, no leases yet, over `transport` and `committer`,
    /// at a fixed clock, with no lease sink and no sweep during a test.
    fn spawn_example<T: Transport>(transport: Arc<T>, committer: Arc<GroupCommitter>) -> Server {
        let engine = Engine::new(example(), &LeaseSnapshot::default(), Limits::default());
        Server::spawn(
            engine,
            transport,
            committer,
            Arc::new(|_: &[LeaseEvent]| {}),
            Arc::new(|| 1000),
            Duration::from_secs(3600),
        )
        .unwrap()
    }

    fn wait_for(fake: &Fake, n: usize) -> Vec<(Vec<u8>, bool)> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let sent = fake.sent.lock().unwrap().clone();
            if sent.len() >= n || Instant::now() > deadline {
                assert!(sent.len() >= n, "only {} of {n} replies", sent.len());
                return sent;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    #[test]
    fn history_older_than_the_retention_is_pruned() {
        let memory = Arc::new(MemoryStore::new());
        let record = |from, to| HistoryRecord {
            class: "c".into(),
            offset: 0,
            lan_address: Ipv4Addr::new(100, 64, 16, 0),
            mac: mac(1),
            public_ip: Ipv4Addr::new(198, 51, 100, 0),
            port_lo: 1024,
            port_hi: 2047,
            from,
            to,
        };
        memory
            .apply(&[
                Write::OpenHistory(record(0, Some(100))),
                Write::OpenHistory(record(500, Some(950))),
                Write::OpenHistory(record(960, None)),
            ])
            .unwrap();
        let pruner = HistoryPruner::spawn(
            memory.clone(),
            Duration::from_secs(100),
            Duration::from_millis(10),
            Arc::new(|| 1000),
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !memory.who_held(Ipv4Addr::new(198, 51, 100, 0), 1024, 50).unwrap().is_empty() {
            assert!(Instant::now() < deadline, "not pruned");
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(pruner);
        assert_eq!(memory.who_held(Ipv4Addr::new(198, 51, 100, 0), 1024, 600).unwrap().len(), 1, "inside retention");
        assert_eq!(memory.who_held(Ipv4Addr::new(198, 51, 100, 0), 1024, 990).unwrap().len(), 1, "open record");
    }

    #[test]
    fn udp_transport_round_trip_on_loopback() {
        let server =
            UdpTransport::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0), None, Duration::from_millis(50)).unwrap();
        let std::net::SocketAddr::V4(addr) = server.local_addr().unwrap() else { panic!("IPv4 bound") };
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client.send_to(b"hello", addr).unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(server.recv(&mut buf).unwrap(), Some(5));
        assert_eq!(server.recv(&mut buf).unwrap(), None, "timeout reads as None");
        let std::net::SocketAddr::V4(back) = client.local_addr().unwrap() else { panic!("IPv4 bound") };
        server.send(b"world", back).unwrap();
        let (n, _) = client.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"world");
    }

    #[test]
    fn udp_recv_batch_reads_what_is_queued_in_one_call_and_marks_oversized_datagrams() {
        let server =
            UdpTransport::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0), None, Duration::from_millis(50)).unwrap();
        let std::net::SocketAddr::V4(addr) = server.local_addr().unwrap() else { panic!("IPv4 bound") };
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut batch = RecvBatch::default();
        server.recv_batch(&mut batch, true).unwrap();
        assert!(batch.is_empty(), "a timed-out read leaves the batch empty");
        let started = Instant::now();
        server.recv_batch(&mut batch, false).unwrap();
        assert!(batch.is_empty());
        assert!(started.elapsed() < Duration::from_millis(40), "a read without wait returned only at the timeout");

        client.send_to(&[1; 300], addr).unwrap();
        client.send_to(&[2; RECV_SLOT_BYTES + 1], addr).unwrap();
        client.send_to(&[3; RECV_SLOT_BYTES], addr).unwrap();
        server.recv_batch(&mut batch, true).unwrap();
        let got: Vec<Option<(usize, u8)>> = batch.datagrams().map(|d| d.map(|b| (b.len(), b[0]))).collect();
        assert_eq!(got, [Some((300, 1)), None, Some((RECV_SLOT_BYTES, 3))]);

        // More than one batch's worth queued: DRAIN now, the rest at the next read, in order.
        for n in 0..DRAIN + 6 {
            client.send_to(&[n as u8; 20], addr).unwrap();
        }
        server.recv_batch(&mut batch, true).unwrap();
        assert_eq!(batch.len(), DRAIN);
        server.recv_batch(&mut batch, true).unwrap();
        let rest: Vec<u8> = batch.datagrams().map(|d| d.unwrap()[0]).collect();
        assert_eq!(rest, (DRAIN as u8..DRAIN as u8 + 6).collect::<Vec<_>>());
    }

    #[test]
    fn an_oversized_datagram_is_counted_as_malformed_and_answered_by_nothing() {
        let mut engine = Engine::new(example(), &LeaseSnapshot::default(), Limits::default());
        let mut out = Output::default();
        engine.refuse_oversized(&mut out);
        assert_eq!(engine.counters().get(crate::engine::Disposition::Malformed), 1);
        assert!(out.replies.is_empty() && out.writes.is_empty());
    }

    #[test]
    fn udp_send_batch_sends_in_order_and_skips_a_datagram_the_kernel_refuses() {
        let server =
            UdpTransport::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0), None, Duration::from_millis(50)).unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let std::net::SocketAddr::V4(back) = client.local_addr().unwrap() else { panic!("IPv4 bound") };
        let reply = |n: u8, to| Reply { to, broadcast: false, message_type: MessageType::Offer, bytes: vec![n; 300] };
        // Port 0 is no destination (EINVAL): that one datagram is dropped, the others still leave.
        let nowhere = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0);
        let mut replies: Vec<Reply> = (0..SEND_CHUNK as u8 + 5).map(|n| reply(n, back)).collect();
        replies.insert(3, reply(0xee, nowhere));
        server.send_batch(&replies);
        let mut buf = [0u8; 512];
        for n in 0..SEND_CHUNK as u8 + 5 {
            let got = client.recv(&mut buf).unwrap();
            assert_eq!((got, buf[0]), (300, n), "datagram {n} in order");
        }
        client.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        assert!(client.recv(&mut buf).is_err(), "nothing more");
    }
}
