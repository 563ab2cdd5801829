//! dialtone's AF_XDP poll-mode dataplane: the phones' traffic through the gateway, translated by
//! NAPPT (claims 001: 3-7, 18-22) at the speed of a few pinned CPUs.
//!
//! Layer: the engine (`wire <- nappt <- xdp`), below the daemon. Inputs: the validated
//! [`dialtone_config::Config`] (interfaces, pools, `[dataplane]`), lease and neighbour changes
//! through [`Broadcast`]. Outputs: frames on the wire, per-worker counters ([`StatsHandle`]).
//!
//! Pieces:
//! - [`program`]: the XDP program (C, `bpf/dialtone.bpf.c`, built by build.rs, loaded with aya)
//!   that sends the kernel's frames to the kernel and the phones' to the AF_XDP sockets;
//! - [`worker`]: one pinned thread per `dataplane.cpus` entry, owning its queues' sockets over
//!   one UMEM, running [`dialtone_nappt::Nappt`] on each batch;
//! - [`control`]: the bounded per-worker control rings;
//! - [`neighbour`]: the WAN next hop's MAC from the kernel's neighbour table;
//! - [`ledger`], [`stats`], [`netdev`]: frame accounting, counters, interface facts.
//!
//! It must never allocate, lock, log or make a system call per packet (the kernel kicks are per
//! batch), leave the XDP program attached when it stops or fails to start, or block the control
//! plane for longer than [`control::FULL_RING_WAIT`].

pub mod control;
pub mod ledger;
pub mod neighbour;
pub mod netdev;
pub mod program;
pub mod stats;
pub mod worker;

use std::io::Read as _;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use dialtone_config::Config;

pub use control::{Broadcast, Control};
pub use program::{Attachment, XdpVerdicts};
pub use stats::{EngineDrop, StatsSnapshot, WorkerStats};
pub use worker::{Binding, Mode};

use control::Waker;
use neighbour::{NeighbourWatch, OwnInterfaces, Role, Target};
use netdev::Interface;
use program::XdpProgram;
use worker::{Worker, WorkerParts};

/// Why the dataplane could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An interface is missing or unreadable.
    #[error("interface {0}")]
    Interface(String),
    /// Loading, filling or attaching the XDP program failed.
    #[error("xdp program: {0}")]
    Xdp(String),
    /// Creating the UMEM or a socket failed.
    #[error("af_xdp: {0}")]
    Xsk(String),
    /// The configuration cannot work on this machine.
    #[error("{0}")]
    Config(String),
    /// A system call failed.
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
}

/// One worker as readers see it.
#[derive(Debug, Clone, Copy)]
pub struct WorkerReport {
    /// Worker index (the `worker` label).
    pub worker: usize,
    /// The CPU it is pinned to.
    pub cpu: u32,
    /// Its counters.
    pub stats: StatsSnapshot,
}

/// Read access to the counters, for `/metrics` and `dialtone stats`; cheap to clone.
#[derive(Clone)]
pub struct StatsHandle {
    workers: Arc<Vec<(u32, Arc<WorkerStats>)>>,
    program: Arc<Mutex<Option<XdpProgram>>>,
    binding: Binding,
    attachment: Attachment,
}

impl std::fmt::Debug for StatsHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatsHandle").field("workers", &self.workers.len()).finish_non_exhaustive()
    }
}

impl StatsHandle {
    /// Every worker's counters.
    pub fn workers(&self) -> Vec<WorkerReport> {
        self.workers
            .iter()
            .enumerate()
            .map(|(worker, (cpu, stats))| WorkerReport { worker, cpu: *cpu, stats: stats.snapshot() })
            .collect()
    }

    /// The XDP program's pass/redirect counters (none once the dataplane stopped).
    pub fn xdp(&self) -> Option<XdpVerdicts> {
        self.program.lock().unwrap_or_else(PoisonError::into_inner).as_ref().map(XdpProgram::verdicts)
    }

    /// How the sockets are bound.
    pub fn binding(&self) -> Binding {
        self.binding
    }

    /// How the XDP program is attached.
    pub fn attachment(&self) -> Attachment {
        self.attachment
    }
}

/// The running dataplane. [`Dataplane::stop`] (or dropping it) stops the workers, closes the
/// sockets and detaches the XDP program.
pub struct Dataplane {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    control: Broadcast,
    neighbour: Option<NeighbourWatch>,
    program: Arc<Mutex<Option<XdpProgram>>>,
    stats: Option<StatsHandle>,
}

impl std::fmt::Debug for Dataplane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dataplane").field("workers", &self.threads.len()).finish_non_exhaustive()
    }
}

fn random_seed() -> u64 {
    let mut bytes = [0u8; 8];
    let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    if read.is_err() {
        // Fall back to the clock: the seed only keys the fragment table's hash.
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        return nanos as u64 ^ u64::from(std::process::id());
    }
    u64::from_ne_bytes(bytes)
}

/// Pins the calling thread to `cpu`.
#[allow(unsafe_code)]
fn pin_to(cpu: u32) -> Result<(), Error> {
    let index = usize::try_from(cpu).unwrap_or(usize::MAX);
    // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET writes inside it for any index below
    // CPU_SETSIZE (checked), and sched_setaffinity reads exactly size_of::<cpu_set_t>() bytes.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if index >= libc::CPU_SETSIZE as usize {
            return Err(Error::Config(format!("CPU {cpu} is beyond CPU_SETSIZE")));
        }
        libc::CPU_SET(index, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(Error::Io(format!("pinning to CPU {cpu}"), std::io::Error::last_os_error()))
    }
}

impl Dataplane {
    /// Attaches the XDP program, opens every worker's sockets, starts the pinned workers and
    /// the neighbour thread. In [`Mode::Forward`], `lan_peer` names the LAN-side host whose MAC
    /// frames forwarded to the LAN are sent to. Anything that fails undoes what was done.
    pub fn start(config: &Config, mode: Mode, lan_peer: Option<Ipv4Addr>) -> Result<Self, Error> {
        let lan = Interface::lookup(&config.lan.interface)?;
        let wan = Interface::lookup(&config.wan.interface)?;
        let program = XdpProgram::attach(config, &lan, &wan)?;
        let attachment = program.attachment();
        let stop = Arc::new(AtomicBool::new(false));
        let mut dataplane = Dataplane {
            stop: Arc::clone(&stop),
            threads: Vec::new(),
            control: Broadcast::new(Vec::new()),
            neighbour: None,
            program: Arc::new(Mutex::new(Some(program))),
            stats: None,
        };
        let cpus = &config.dataplane.cpus;
        let capacity = usize::try_from(config.dataplane.control_ring).unwrap_or(4096);
        let mut senders = Vec::new();
        let mut stats = Vec::new();
        let mut slots = Vec::new();
        let mut binding = Binding::Copy;
        for (index, &cpu) in cpus.iter().enumerate() {
            let sockets = worker::open_sockets(index, cpus.len(), config, &lan, &wan)?;
            binding = sockets.binding;
            tracing::info!(
                worker = index,
                cpu,
                binding = binding.name(),
                lan_queues = ?sockets.queues(dialtone_nappt::Side::Lan),
                wan_queues = ?sockets.queues(dialtone_nappt::Side::Wan),
                "dataplane worker sockets bound"
            );
            slots.extend(sockets.slots());
            let waker = Arc::new(Waker::new()?);
            let worker_stats = Arc::new(WorkerStats::default());
            let (sender, receiver) = control::ring(index, capacity, Arc::clone(&waker), Arc::clone(&worker_stats));
            let parts = WorkerParts {
                index,
                mode,
                control: receiver,
                waker,
                stats: Arc::clone(&worker_stats),
                stop: Arc::clone(&stop),
                lan_mac: lan.mac,
                wan_mac: wan.mac,
                seed: random_seed(),
            };
            let worker = Worker::new(config, sockets, parts)?;
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            let thread = std::thread::Builder::new()
                .name(format!("dataplane-{index}"))
                .spawn(move || {
                    let pinned = pin_to(cpu);
                    let failed = pinned.is_err();
                    let _ = ready_tx.send(pinned);
                    if !failed {
                        worker.run();
                    }
                })
                .map_err(|e| Error::Io("spawning a dataplane worker".into(), e))?;
            dataplane.threads.push(thread);
            ready_rx.recv().map_err(|_| Error::Config(format!("dataplane worker {index} died while starting")))??;
            senders.push(sender);
            stats.push((cpu, worker_stats));
        }
        dataplane.control = Broadcast::new(senders);
        {
            let mut guard = dataplane.program.lock().unwrap_or_else(PoisonError::into_inner);
            let program = guard.as_mut().ok_or_else(|| Error::Xdp("program gone".into()))?;
            for (is_lan, queue, fd) in slots {
                program.set_socket(is_lan, queue, fd)?;
            }
        }
        let mut targets = vec![Target { address: config.wan.next_hop, ifindex: wan.ifindex, role: Role::WanNextHop }];
        if let (Mode::Forward, Some(peer)) = (mode, lan_peer) {
            targets.push(Target { address: peer, ifindex: lan.ifindex, role: Role::LanPeer });
        }
        let own = OwnInterfaces { lan: (lan.name.clone(), lan.mac), wan: (wan.name.clone(), wan.mac) };
        dataplane.neighbour =
            Some(NeighbourWatch::spawn(targets, own, config.dataplane.neighbour_refresh, dataplane.control.clone())?);
        dataplane.stats = Some(StatsHandle {
            workers: Arc::new(stats),
            program: Arc::clone(&dataplane.program),
            binding,
            attachment,
        });
        tracing::info!(
            workers = cpus.len(),
            ?mode,
            xdp = attachment.name(),
            binding = binding.name(),
            lan = %lan.name,
            wan = %wan.name,
            "dataplane started"
        );
        Ok(dataplane)
    }

    /// Where the control plane sends lease changes (every worker gets each one).
    pub fn control(&self) -> Broadcast {
        self.control.clone()
    }

    /// Read access to the counters.
    pub fn stats(&self) -> Option<StatsHandle> {
        self.stats.clone()
    }

    /// Stops the neighbour thread and the workers, closes the sockets and detaches XDP.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(mut neighbour) = self.neighbour.take() {
            neighbour.stop();
        }
        self.stop.store(true, Ordering::Relaxed);
        self.control.wake_all();
        let threads = std::mem::take(&mut self.threads);
        let stopped = !threads.is_empty();
        for thread in threads {
            if thread.join().is_err() {
                tracing::error!("a dataplane worker panicked");
            }
        }
        // Detach the program: from here on the kernel handles every frame (and forwards none).
        let program = self.program.lock().unwrap_or_else(PoisonError::into_inner).take();
        let had_program = program.is_some();
        drop(program);
        if stopped || had_program {
            tracing::info!("dataplane stopped");
        }
    }
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        self.shutdown();
    }
}
