//! One poll-mode worker: its AF_XDP sockets over one shared UMEM, and its loop.
//!
//! Worker `i` owns queues `i, i + n, i + 2n, ...` of the LAN and of the WAN interface (`n`
//! workers; see [`crate::netdev::queues_of`]), one socket per queue, all over ONE UMEM: a frame
//! received on a LAN socket is transmitted on the WAN socket (or the LAN one, for hairpin and
//! gateway answers) by handing its descriptor over, without a copy. Each socket has its own fill
//! and completion ring (the kernel's shared-UMEM mode across devices and queues); the
//! [`FrameLedger`] accounts for every frame.
//!
//! Loop (DESIGN.md "Workers"): drain the control ring; reap completions; receive a batch per
//! socket; translate it ([`dialtone_nappt::Nappt::translate`]) or, in plain forwarding mode,
//! rewrite its MACs; transmit on the other side (or the same one); kick the kernel when a ring
//! says `needs_wakeup`; refill the fill rings; publish counters. The worker busy-polls while
//! traffic flows; [`BUSY_POLL_MS`] after its last frame it sleeps in poll(2) on its sockets and
//! its control eventfd. Control messages wake it and are applied, but do not count as traffic:
//! lease events alone never keep it polling.
//!
//! `unsafe` here is the AF_XDP contract (xsk-rs): a descriptor handed to a ring is not touched
//! until the kernel gives it back, and each received frame's bytes are borrowed once, for one
//! batch. Every block says which part of the contract it relies on.
#![allow(unsafe_code)]

use std::num::NonZeroU32;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use dialtone_config::{BindMode, Config, MacAddr};
use dialtone_nappt::{Counters, DropReason, Frame, Nappt, Side, Update, Verdict};
use xsk_rs::config::{BindFlags, FrameSize, LibxdpFlags, QueueSize, SocketConfig, UmemConfig};
use xsk_rs::umem::frame::FrameDesc;
use xsk_rs::{CompQueue, FillQueue, RxQueue, Socket, TxQueue, Umem};

use crate::control::{Control, ControlReceiver, Waker};
use crate::ledger::FrameLedger;
use crate::netdev::{queues_of, Interface};
use crate::stats::{EngineDrop, Tally, WorkerStats};
use crate::Error;

/// Frames translated together (the translator's own look-ahead window).
const CHUNK: usize = 64;
/// How long the worker keeps polling after its last frame before it sleeps in poll(2). While
/// traffic flows it never sleeps: a core woken from poll(2) can take milliseconds to run the
/// worker again (on a virtual machine above all), and every frame of the burst that woke it waits
/// that long. Measured in the lab with `perf/dataplane.sh` at 200,000 frames/s: sleeping after
/// 2,000 empty iterations (a fraction of a millisecond, so between the generator's bursts) gave
/// p99 125 µs, p99.9 3.4 ms; polling on gave p99 68 µs, p99.9 146 µs.
const BUSY_POLL_MS: u64 = 100;
/// Longest sleep (a safety net: stop and control messages wake the worker at once).
const IDLE_POLL_MS: i32 = 100;
/// How often the worker reads the kernel's socket counters (XDP_STATISTICS, one getsockopt per
/// socket): often enough for a benchmark to see where frames went, rare enough to cost nothing.
pub const SOCKET_STATS_MS: u64 = 250;
/// Copy-mode transmission sends at most this many frames per sendto (the kernel's
/// TX_BATCH_SIZE) and answers EAGAIN when more remain.
const KERNEL_TX_BUDGET: usize = 32;

/// What the worker does with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// NAPPT (claims 001: 3-7, 18-22).
    Translate,
    /// Plain forwarding, no translation: LAN frames go to the WAN next hop, WAN frames to the
    /// LAN peer, only the MACs rewritten (the I/O ceiling of the benchmark).
    Forward,
}

/// How the sockets are bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binding {
    /// The driver places frames in the UMEM itself.
    ZeroCopy,
    /// The kernel copies frames between its buffers and the UMEM (veth, generic XDP).
    Copy,
}

impl Binding {
    /// Name for logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::ZeroCopy => "zero-copy",
            Self::Copy => "copy",
        }
    }
}

/// One socket: a side, a queue, its four rings.
struct Port {
    side: Side,
    queue: u32,
    rx: RxQueue,
    tx: TxQueue,
    fill: FillQueue,
    comp: CompQueue,
    tx_ring: u32,
}

impl std::fmt::Debug for Port {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Port").field("side", &self.side).field("queue", &self.queue).finish_non_exhaustive()
    }
}

/// A worker's sockets, opened on the control thread and moved to the worker's thread.
#[derive(Debug)]
pub struct Sockets {
    umem: Umem,
    ports: Vec<Port>,
    frames: Vec<FrameDesc>,
    /// How they ended up bound.
    pub binding: Binding,
}

impl Sockets {
    /// `(lan, queue, socket fd)` of every socket, for the XSKMAPs.
    pub fn slots(&self) -> Vec<(bool, u32, std::os::fd::RawFd)> {
        self.ports.iter().map(|p| (p.side == Side::Lan, p.queue, p.rx.fd().as_raw_fd())).collect()
    }

    /// Queues per side, for logs.
    pub fn queues(&self, side: Side) -> Vec<u32> {
        self.ports.iter().filter(|p| p.side == side).map(|p| p.queue).collect()
    }
}

/// Opens worker `index`'s sockets (of `workers`), zero-copy first when `bind_mode` allows.
pub fn open_sockets(
    index: usize,
    workers: usize,
    config: &Config,
    lan: &Interface,
    wan: &Interface,
) -> Result<Sockets, Error> {
    let lan_queues = queues_of(index, workers, lan.rx_queues);
    let wan_queues = queues_of(index, workers, wan.rx_queues);
    for (interface, queues) in [(lan, &lan_queues), (wan, &wan_queues)] {
        if queues.is_empty() {
            return Err(Error::Config(format!(
                "dataplane.cpus: worker {index} of {workers} would own no queue of {} ({} receive queues): list at most {} CPUs",
                interface.name, interface.rx_queues, interface.rx_queues
            )));
        }
    }
    let candidates: &[Binding] = match config.dataplane.bind_mode {
        BindMode::Auto => &[Binding::ZeroCopy, Binding::Copy],
        BindMode::ZeroCopy => &[Binding::ZeroCopy],
        BindMode::Copy => &[Binding::Copy],
    };
    let mut last = None;
    for &binding in candidates {
        match try_open(config, lan, &lan_queues, wan, &wan_queues, binding) {
            Ok(sockets) => return Ok(sockets),
            Err(e) => {
                if candidates.len() > 1 {
                    tracing::info!(worker = index, binding = binding.name(), error = %e, "socket binding not available");
                }
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or_else(|| Error::Config("no socket binding to try".into())))
}

fn try_open(
    config: &Config,
    lan: &Interface,
    lan_queues: &[u32],
    wan: &Interface,
    wan_queues: &[u32],
    binding: Binding,
) -> Result<Sockets, Error> {
    let d = &config.dataplane;
    let frames = d.frames_per_worker;
    let xsk = |what: &str, e: &dyn std::fmt::Display| Error::Xsk(format!("{what}: {e}"));
    let ring = QueueSize::new(frames).map_err(|e| xsk("ring size", &e))?;
    let umem_config = UmemConfig::builder()
        .frame_size(FrameSize::new(d.frame_size).map_err(|e| xsk("frame size", &e))?)
        .fill_queue_size(ring)
        .comp_queue_size(ring)
        .frame_headroom(0)
        .build()
        .map_err(|e| xsk("umem config", &e))?;
    let count = NonZeroU32::new(frames).ok_or_else(|| Error::Config("dataplane.frames_per_worker is 0".into()))?;
    let (umem, descs) = Umem::new(umem_config, count, false).map_err(|e| xsk("creating the UMEM", &e))?;
    let mode_flag = match binding {
        Binding::ZeroCopy => BindFlags::XDP_ZEROCOPY,
        Binding::Copy => BindFlags::XDP_COPY,
    };
    // dialtone loads its own XDP program and puts the sockets in its XSKMAPs: libxdp must not
    // load one. Sockets after the first share the UMEM and inherit these bind flags.
    let socket_config = SocketConfig::builder()
        .rx_queue_size(ring)
        .tx_queue_size(ring)
        .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
        .bind_flags(BindFlags::XDP_USE_NEED_WAKEUP | mode_flag)
        .build();
    let mut ports = Vec::new();
    for (side, interface, queues) in [(Side::Lan, lan, lan_queues), (Side::Wan, wan, wan_queues)] {
        let name: xsk_rs::config::Interface = interface.name.parse().map_err(|e| xsk("interface name", &e))?;
        for &queue in queues {
            // SAFETY: each (interface, queue) pair is bound once per UMEM here, and program
            // loading is inhibited (the xsk-rs contract for shared UMEMs).
            let (tx, rx, rings) = unsafe { Socket::new(socket_config, &umem, &name, queue) }.map_err(|e| {
                let cause = std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_default();
                Error::Xsk(format!("{} queue {queue} ({} mode): {e} {cause}", interface.name, binding.name()))
            })?;
            let (fill, comp) = rings.ok_or_else(|| {
                Error::Xsk(format!("{} queue {queue}: no fill and completion ring for a new queue", interface.name))
            })?;
            ports.push(Port { side, queue, rx, tx, fill, comp, tx_ring: frames });
        }
    }
    Ok(Sockets { umem, ports, frames: descs, binding })
}

/// Plain-forwarding state: the MACs frames are sent from and to.
#[derive(Debug, Default)]
struct Forward {
    lan_mac: Option<[u8; 6]>,
    wan_mac: Option<[u8; 6]>,
    wan_next_hop: Option<[u8; 6]>,
    lan_peer: Option<[u8; 6]>,
}

#[derive(Debug)]
enum Engine {
    Translate(Box<Nappt>),
    Forward(Forward),
}

/// Everything a worker thread owns.
pub struct Worker {
    index: usize,
    umem: Umem,
    ports: Vec<Port>,
    lan_tx: usize,
    wan_tx: usize,
    ledger: FrameLedger<FrameDesc>,
    fill_target: u32,
    batch: usize,
    engine: Engine,
    control: ControlReceiver,
    waker: Arc<Waker>,
    stats: Arc<WorkerStats>,
    stop: Arc<AtomicBool>,
    tally: Tally,
    rx_descs: Vec<FrameDesc>,
    verdicts: Vec<Verdict>,
    to_lan: Vec<FrameDesc>,
    to_wan: Vec<FrameDesc>,
    comp_descs: Vec<FrameDesc>,
    pollfds: Vec<libc::pollfd>,
    clock: Instant,
    socket_stats_at_ms: u64,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker").field("index", &self.index).field("ports", &self.ports).finish_non_exhaustive()
    }
}

/// What a worker needs besides its sockets.
#[derive(Debug)]
pub struct WorkerParts {
    /// Worker index.
    pub index: usize,
    /// Translate or forward.
    pub mode: Mode,
    /// Its control ring.
    pub control: ControlReceiver,
    /// Its waker (shared with the control plane).
    pub waker: Arc<Waker>,
    /// Its counters (shared with readers).
    pub stats: Arc<WorkerStats>,
    /// The dataplane's stop flag.
    pub stop: Arc<AtomicBool>,
    /// Interface MACs.
    pub lan_mac: MacAddr,
    /// Interface MACs.
    pub wan_mac: MacAddr,
    /// Fragment-table hash seed.
    pub seed: u64,
}

impl Worker {
    /// Builds the worker and primes its fill rings (before its sockets enter the XSKMAPs).
    pub fn new(config: &Config, sockets: Sockets, parts: WorkerParts) -> Result<Self, Error> {
        let Sockets { umem, ports, frames, .. } = sockets;
        let lan_tx =
            ports.iter().position(|p| p.side == Side::Lan).ok_or_else(|| Error::Xsk("no LAN socket".into()))?;
        let wan_tx =
            ports.iter().position(|p| p.side == Side::Wan).ok_or_else(|| Error::Xsk("no WAN socket".into()))?;
        let batch = usize::try_from(config.dataplane.batch_size).unwrap_or(64).max(1);
        let total = frames.len();
        // Half of the frames wait in the fill rings, the other half are in flight (receive
        // rings, the worker's hands, transmit and completion rings) or free.
        let fill_target = u32::try_from(total / (2 * ports.len())).unwrap_or(u32::MAX).max(1);
        let engine = match parts.mode {
            Mode::Translate => {
                let mut nappt = Box::new(Nappt::new(config, parts.seed));
                nappt
                    .apply(Update::InterfaceMacs { lan: parts.lan_mac, wan: parts.wan_mac })
                    .map_err(|e| Error::Config(format!("interface MACs: {e}")))?;
                Engine::Translate(nappt)
            }
            Mode::Forward => Engine::Forward(Forward {
                lan_mac: Some(parts.lan_mac.0),
                wan_mac: Some(parts.wan_mac.0),
                ..Forward::default()
            }),
        };
        let mut pollfds: Vec<libc::pollfd> = ports
            .iter()
            .map(|p| libc::pollfd { fd: p.rx.fd().as_raw_fd(), events: libc::POLLIN, revents: 0 })
            .collect();
        pollfds.push(libc::pollfd { fd: parts.waker.fd(), events: libc::POLLIN, revents: 0 });
        let ports_count = ports.len();
        let mut worker = Worker {
            index: parts.index,
            umem,
            ports,
            lan_tx,
            wan_tx,
            ledger: FrameLedger::new(frames, ports_count),
            fill_target,
            batch,
            engine,
            control: parts.control,
            waker: parts.waker,
            stats: parts.stats,
            stop: parts.stop,
            tally: Tally::default(),
            rx_descs: vec![FrameDesc::default(); batch],
            verdicts: vec![Verdict::ToKernel; batch],
            to_lan: Vec::with_capacity(batch),
            to_wan: Vec::with_capacity(batch),
            comp_descs: vec![FrameDesc::default(); batch.max(CHUNK)],
            pollfds,
            clock: Instant::now(),
            socket_stats_at_ms: 0,
        };
        worker.refill();
        worker.publish();
        Ok(worker)
    }

    /// Runs until the stop flag is set.
    pub fn run(mut self) {
        let mut last_work_ms = 0u64;
        while !self.stop.load(Ordering::Relaxed) {
            // Table updates are not traffic: a stream of lease events (a DHCP burst) must not
            // keep the worker spinning, only frames do. The updates are applied either way.
            let updated = self.drain_control();
            let mut work = self.reap_completions();
            let now_ms = u64::try_from(self.clock.elapsed().as_millis()).unwrap_or(u64::MAX);
            for port in 0..self.ports.len() {
                work |= self.receive(port, now_ms) > 0;
            }
            work |= self.kick_pending();
            self.refill();
            if now_ms >= self.socket_stats_at_ms {
                self.socket_stats_at_ms = now_ms + SOCKET_STATS_MS;
                self.read_socket_stats();
            }
            if work {
                last_work_ms = now_ms;
                self.publish();
                continue;
            }
            if updated {
                self.publish();
            }
            if now_ms.saturating_sub(last_work_ms) >= BUSY_POLL_MS {
                self.sleep();
            }
        }
        self.publish();
        if let Err(e) = self.ledger.check() {
            tracing::error!(worker = self.index, error = %e, "dataplane worker stopped with unbalanced frames");
        }
    }

    fn drain_control(&mut self) -> bool {
        let mut any = false;
        while let Some(message) = self.control.pop() {
            any = true;
            self.tally.updates += 1;
            match (&mut self.engine, message) {
                (Engine::Translate(nappt), Control::Nappt(update)) => {
                    if let Err(e) = nappt.apply(update) {
                        self.tally.update_errors += 1;
                        tracing::warn!(worker = self.index, error = %e, "dataplane update refused");
                    }
                }
                (Engine::Translate(_), Control::LanPeer(_)) => {}
                (Engine::Forward(forward), Control::Nappt(Update::NextHop { mac })) => {
                    forward.wan_next_hop = mac.map(|m| m.0);
                }
                (Engine::Forward(forward), Control::Nappt(Update::InterfaceMacs { lan, wan })) => {
                    forward.lan_mac = Some(lan.0);
                    forward.wan_mac = Some(wan.0);
                }
                (Engine::Forward(forward), Control::LanPeer(mac)) => forward.lan_peer = mac.map(|m| m.0),
                (Engine::Forward(_), Control::Nappt(_)) => {}
            }
        }
        any
    }

    fn reap_completions(&mut self) -> bool {
        let mut any = false;
        for port in 0..self.ports.len() {
            loop {
                // SAFETY: the completion ring hands back descriptors this worker put on the
                // same socket's transmit ring; they are free again from here on.
                let n = unsafe { self.ports[port].comp.consume(&mut self.comp_descs) };
                if n == 0 {
                    break;
                }
                any = true;
                self.ledger.completed(port, &self.comp_descs[..n]);
                if n < self.comp_descs.len() {
                    break;
                }
            }
        }
        any
    }

    /// Receives, handles and transmits one batch from `port`; returns the frames received.
    fn receive(&mut self, port: usize, now_ms: u64) -> usize {
        // SAFETY: the receive ring hands over frames the kernel filled from this socket's fill
        // ring; the worker owns them until it gives them to a ring again.
        let n = unsafe { self.ports[port].rx.consume(&mut self.rx_descs[..self.batch]) };
        if n == 0 {
            return 0;
        }
        self.ledger.received(port, n);
        let side = self.ports[port].side;
        match side {
            Side::Lan => self.tally.rx_lan += n as u64,
            Side::Wan => self.tally.rx_wan += n as u64,
        }
        self.tally.batches += 1;
        self.tally.batch_frames += n as u64;
        if n == self.batch {
            self.tally.full_batches += 1;
        }
        match &mut self.engine {
            Engine::Translate(nappt) => {
                translate(&self.umem, nappt, now_ms, side, &mut self.rx_descs[..n], &mut self.verdicts[..n]);
            }
            Engine::Forward(forward) => {
                forward_batch(&self.umem, forward, side, &mut self.rx_descs[..n], &mut self.verdicts[..n]);
            }
        }
        let forwarding = matches!(self.engine, Engine::Forward(_));
        for i in 0..n {
            let desc = self.rx_descs[i];
            match self.verdicts[i] {
                Verdict::ToWan => self.to_wan.push(desc),
                Verdict::ToLan => self.to_lan.push(desc),
                Verdict::ToKernel => {
                    self.tally.engine_drops[EngineDrop::ToKernel as usize] += 1;
                    self.ledger.release(desc);
                }
                Verdict::Drop(_) => {
                    // The translator counts its own drops; plain forwarding's are the engine's.
                    if forwarding {
                        self.tally.engine_drops[EngineDrop::ForwardNoNextHop as usize] += 1;
                    }
                    self.ledger.release(desc);
                }
            }
        }
        self.transmit(Side::Wan);
        self.transmit(Side::Lan);
        n
    }

    fn transmit(&mut self, side: Side) {
        let (port, pending) = match side {
            Side::Lan => (self.lan_tx, &mut self.to_lan),
            Side::Wan => (self.wan_tx, &mut self.to_wan),
        };
        if pending.is_empty() {
            return;
        }
        // SAFETY: the descriptors are frames this worker owns (received this batch, lengths
        // set by the translator within their chunk); the ring owns them until completion.
        let sent = unsafe { self.ports[port].tx.produce(pending) };
        self.ledger.transmitted(port, sent);
        match side {
            Side::Lan => self.tally.tx_lan += sent as u64,
            Side::Wan => self.tally.tx_wan += sent as u64,
        }
        for &desc in &pending[sent..] {
            self.tally.engine_drops[EngineDrop::TxRingFull as usize] += 1;
            self.ledger.release(desc);
        }
        pending.clear();
        self.kick(port);
    }

    /// Tells the kernel to send what `port`'s transmit ring holds, when the ring asks for it.
    /// Copy mode sends [`KERNEL_TX_BUDGET`] frames per call and says EAGAIN while more wait.
    fn kick(&mut self, port: usize) {
        let p = &mut self.ports[port];
        if !p.tx.needs_wakeup() {
            return;
        }
        let queued = p.tx_ring.saturating_sub(p.tx.nb_free_exact()) as usize;
        let fd = p.tx.fd().as_raw_fd();
        for _ in 0..queued.div_ceil(KERNEL_TX_BUDGET).max(1) {
            self.tally.tx_wakeups += 1;
            // SAFETY: a zero-length sendto on our own AF_XDP socket (the documented kick).
            let rc = unsafe { libc::sendto(fd, std::ptr::null(), 0, libc::MSG_DONTWAIT, std::ptr::null(), 0) };
            if rc >= 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EAGAIN) {
                break;
            }
        }
    }

    /// Kicks transmit rings that still hold frames the kernel has not taken.
    fn kick_pending(&mut self) -> bool {
        let mut any = false;
        for port in 0..self.ports.len() {
            let p = &mut self.ports[port];
            if self.ledger.in_tx(port) > 0 && p.tx.nb_free_exact() < p.tx_ring {
                any = true;
                self.kick(port);
            }
        }
        any
    }

    fn refill(&mut self) {
        for port in 0..self.ports.len() {
            let want = self.fill_target.saturating_sub(self.ledger.in_fill(port)) as usize;
            if want == 0 {
                continue;
            }
            let offer = self.ledger.offer_for_fill(want);
            if offer.is_empty() {
                continue;
            }
            let offered = offer.len();
            // SAFETY: the offered frames are free (on no ring, in no one's hands); the fill
            // ring owns those it takes until they come back on the receive ring.
            let taken = unsafe { self.ports[port].fill.produce(offer) };
            self.ledger.filled(port, offered, taken);
            let p = &mut self.ports[port];
            if p.fill.needs_wakeup() {
                self.tally.fill_wakeups += 1;
                let _ = p.fill.wakeup(p.rx.fd_mut(), 0);
            }
        }
    }

    fn sleep(&mut self) {
        // Frames still waiting on a transmit ring need kicks, not sleep.
        if (0..self.ports.len())
            .any(|p| self.ports[p].tx.nb_free_exact() < self.ports[p].tx_ring && self.ledger.in_tx(p) > 0)
        {
            return;
        }
        self.waker.park();
        if !self.control.is_empty() || self.stop.load(Ordering::Relaxed) {
            self.waker.unpark();
            return;
        }
        self.publish();
        self.tally.idle_sleeps += 1;
        for pollfd in &mut self.pollfds {
            pollfd.revents = 0;
        }
        // SAFETY: poll(2) over our own array of pollfd structs, its exact length.
        let _ = unsafe { libc::poll(self.pollfds.as_mut_ptr(), self.pollfds.len() as libc::nfds_t, IDLE_POLL_MS) };
        self.waker.unpark();
    }

    /// Sums the kernel's counters over the worker's sockets.
    fn read_socket_stats(&mut self) {
        let (mut ring_full, mut dropped, mut fill_empty, mut invalid) = (0, 0, 0, 0);
        for port in &self.ports {
            if let Ok(s) = port.rx.fd().xdp_statistics() {
                ring_full += s.rx_ring_full();
                dropped += s.rx_dropped();
                fill_empty += s.rx_fill_ring_empty_descs();
                invalid += s.rx_invalid_descs() + s.tx_invalid_descs();
            }
        }
        self.tally.socket_rx_ring_full = ring_full;
        self.tally.socket_rx_dropped = dropped;
        self.tally.socket_fill_ring_empty = fill_empty;
        self.tally.socket_invalid_descs = invalid;
    }

    fn publish(&mut self) {
        debug_assert_eq!(self.ledger.check(), Ok(()));
        self.tally.frames_free = self.ledger.free_count() as u64;
        self.tally.frames_in_fill = u64::from(self.ledger.total_in_fill());
        self.tally.frames_in_tx = u64::from(self.ledger.total_in_tx());
        let translator = match &self.engine {
            Engine::Translate(nappt) => nappt.counters(),
            Engine::Forward(_) => Counters::default(),
        };
        self.stats.publish(&self.tally, &translator);
    }
}

/// The bytes of a received frame: its buffer up to the end of its UMEM chunk (the room a
/// gateway answer may use) and its length.
///
/// # Safety
/// `desc` must be a frame the caller owns (received, not yet given back to a ring), and no
/// other slice over it may exist while the returned one lives.
unsafe fn frame_bytes<'a>(umem: &Umem, desc: &mut FrameDesc) -> (&'a mut [u8], usize) {
    // SAFETY: the caller owns the frame (function contract).
    let mut data = unsafe { umem.data_mut(desc) };
    let len = data.len();
    let capacity = data.cursor().buf_len();
    let start = data.contents_mut().as_mut_ptr();
    // SAFETY: xsk-rs sizes the data region from the descriptor's address to the end of its
    // chunk (`capacity` bytes), inside the UMEM mapping that outlives the batch; the caller
    // guarantees this is the only slice over it.
    (unsafe { std::slice::from_raw_parts_mut(start, capacity) }, len)
}

/// Sets the length the frame is transmitted with.
fn set_len(umem: &Umem, desc: &mut FrameDesc, len: usize) {
    // SAFETY: called on frames the worker owns, after their batch's slices are gone.
    unsafe { umem.data_mut(desc) }.cursor().set_pos(len);
}

fn translate(
    umem: &Umem,
    nappt: &mut Nappt,
    now_ms: u64,
    side: Side,
    descs: &mut [FrameDesc],
    verdicts: &mut [Verdict],
) {
    for (descs, verdicts) in descs.chunks_mut(CHUNK).zip(verdicts.chunks_mut(CHUNK)) {
        let count = descs.len();
        let mut lengths = [0usize; CHUNK];
        {
            let mut each = descs.iter_mut();
            let mut frames: [Frame<'_>; CHUNK] = std::array::from_fn(|_| match each.next() {
                Some(desc) => {
                    // SAFETY: every descriptor of the batch is a distinct frame the worker
                    // received; the slices live only until the end of this block.
                    let (bytes, len) = unsafe { frame_bytes(umem, desc) };
                    Frame::new(bytes, len, side)
                }
                None => Frame::new(&mut [], 0, side),
            });
            nappt.translate(now_ms, &mut frames[..count], verdicts);
            for (length, frame) in lengths.iter_mut().zip(&frames[..count]) {
                *length = frame.len();
            }
        }
        for (desc, &length) in descs.iter_mut().zip(&lengths) {
            set_len(umem, desc, length);
        }
    }
}

/// Plain forwarding: LAN frames to the WAN next hop, WAN frames to the LAN peer, MACs only.
fn forward_batch(umem: &Umem, forward: &Forward, side: Side, descs: &mut [FrameDesc], verdicts: &mut [Verdict]) {
    let (macs, verdict) = match side {
        Side::Lan => ((forward.wan_next_hop, forward.wan_mac), Verdict::ToWan),
        Side::Wan => ((forward.lan_peer, forward.lan_mac), Verdict::ToLan),
    };
    for (desc, out) in descs.iter_mut().zip(verdicts.iter_mut()) {
        // SAFETY: a frame of this batch, owned by the worker; one slice at a time.
        let (bytes, len) = unsafe { frame_bytes(umem, desc) };
        *out = match (macs, bytes.get_mut(..12)) {
            ((Some(dst), Some(src)), Some(header)) if len >= 14 => {
                header[..6].copy_from_slice(&dst);
                header[6..12].copy_from_slice(&src);
                verdict
            }
            _ => Verdict::Drop(DropReason::NoNextHop),
        };
    }
}
