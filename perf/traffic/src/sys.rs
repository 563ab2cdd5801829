//! The operating-system shell of the traffic tools: AF_PACKET sockets, the TPACKET_V3 receive
//! ring, the AF_XDP transmit socket, CPU pinning and clocks.
//!
//! This is the one module of the crate allowed `unsafe`: every block says why it is sound. Nothing
//! here interprets packet contents; the callers hand bytes to [`crate::frame`] and
//! [`crate::lease`].
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{bail, Context as _};

const ETH_P_ALL: u16 = 0x0003;
const ETH_P_IP: u16 = 0x0800;

/// CLOCK_MONOTONIC in nanoseconds: the clock in every payload (network namespaces share it).
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// CLOCK_REALTIME in nanoseconds: the clock of the kernel's packet timestamps.
pub fn realtime_ns() -> u64 {
    clock_ns(libc::CLOCK_REALTIME)
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; both clock ids exist on every Linux.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    debug_assert_eq!(rc, 0, "clock_gettime of a standard clock");
    (ts.tv_sec as u64).wrapping_mul(1_000_000_000).wrapping_add(ts.tv_nsec as u64)
}

/// Pins the calling thread to CPU `cpu` (taken from the command line: the cores the generator,
/// receiver and gateway use are chosen by the operator, never guessed).
pub fn pin_to_cpu(cpu: usize) -> anyhow::Result<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        bail!("CPU {cpu} is beyond CPU_SETSIZE");
    }
    // SAFETY: cpu_set_t is plain data; an all-zero value is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` is below CPU_SETSIZE (checked above), so CPU_SET stays inside `set`.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: pid 0 is the calling thread; `set` is a valid cpu_set_t of the size passed.
    let rc = unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        return Err(io::Error::last_os_error()).with_context(|| format!("pin to CPU {cpu}"));
    }
    Ok(())
}

/// Moves the calling thread into the named network namespace (`ip netns add NAME`, bound at
/// `/run/netns/NAME`). Sockets the thread opens afterwards, and threads it spawns, live there.
pub fn enter_network_namespace(name: &str) -> anyhow::Result<()> {
    let path = format!("/run/netns/{name}");
    let file = std::fs::File::open(&path).with_context(|| format!("open {path}"))?;
    // SAFETY: `file` is an open namespace file for the duration of the call; setns only changes
    // this thread's network namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(io::Error::last_os_error()).with_context(|| format!("setns into {name}"));
    }
    Ok(())
}

/// The index of interface `name` in the current network namespace.
pub fn interface_index(name: &str) -> anyhow::Result<u32> {
    let c_name = CString::new(name).context("interface name holds a NUL byte")?;
    // SAFETY: `c_name` is a valid NUL-terminated string for the duration of the call.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    if index == 0 {
        return Err(io::Error::last_os_error()).with_context(|| format!("no interface {name}"));
    }
    Ok(index)
}

/// The MAC address of interface `name` in the calling thread's network namespace
/// (SIOCGIFHWADDR: sysfs would show the mount namespace's view, not a `setns` thread's).
pub fn interface_mac(name: &str) -> anyhow::Result<[u8; 6]> {
    // SAFETY: plain socket(2) call; the result is checked before use.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error()).context("socket for SIOCGIFHWADDR");
    }
    // SAFETY: `raw` is a fresh descriptor this function owns from here on.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ifreq is plain data; all-zero is a valid starting value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= request.ifr_name.len() {
        bail!("interface name {name:?} does not fit IFNAMSIZ");
    }
    for (slot, byte) in request.ifr_name.iter_mut().zip(bytes) {
        *slot = *byte as libc::c_char;
    }
    // SAFETY: `request` is a valid ifreq with a NUL-terminated name; the kernel writes the
    // hardware address into its union.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFHWADDR, &mut request) };
    if rc != 0 {
        return Err(io::Error::last_os_error()).with_context(|| format!("MAC of {name}"));
    }
    // SAFETY: SIOCGIFHWADDR succeeded, so the union holds `ifru_hwaddr`.
    let address = unsafe { request.ifr_ifru.ifru_hwaddr };
    let mut mac = [0u8; 6];
    for (out, byte) in mac.iter_mut().zip(address.sa_data.iter()) {
        *out = *byte as u8;
    }
    Ok(mac)
}

fn set_int_option(fd: &OwnedFd, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
    set_option(fd, level, name, &value)
}

fn set_option<T>(fd: &OwnedFd, level: libc::c_int, name: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: `value` points to a live T of the size passed; the kernel only reads it.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *const T).cast::<libc::c_void>(),
            size_of::<T>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// An AF_PACKET socket bound to `interface` for `protocol` (host order EtherType).
fn packet_socket(interface: &str, protocol: u16) -> anyhow::Result<OwnedFd> {
    let index = interface_index(interface)?;
    // SAFETY: plain socket(2) call; the result is checked before use.
    let raw = unsafe {
        libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::c_int::from(protocol.to_be()))
    };
    if raw < 0 {
        return Err(io::Error::last_os_error()).context("AF_PACKET socket (needs CAP_NET_RAW)");
    }
    // SAFETY: `raw` is a fresh descriptor this function owns from here on.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // Frames this host sends (our own DISCOVERs, the AF_XDP generator's copies through the
    // packet taps) are not for us.
    set_int_option(&fd, libc::SOL_PACKET, libc::PACKET_IGNORE_OUTGOING, 1).context("PACKET_IGNORE_OUTGOING")?;
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid starting value.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = protocol.to_be();
    addr.sll_ifindex = index as i32;
    // SAFETY: `addr` is a valid sockaddr_ll and the length passed is its size.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_ll).cast::<libc::sockaddr>(),
            size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error()).with_context(|| format!("bind AF_PACKET to {interface}"));
    }
    Ok(fd)
}

fn poll_in(fd: &OwnedFd, timeout_ms: i32) -> io::Result<bool> {
    let mut pfd = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd, count 1.
    let rc = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
    match rc {
        0 => Ok(false),
        n if n > 0 => Ok(true),
        _ => {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(err)
            }
        }
    }
}

/// An AF_PACKET socket for IPv4 frames on one interface: the DHCP clients' wire.
#[derive(Debug)]
pub struct PacketSocket {
    fd: OwnedFd,
}

impl PacketSocket {
    /// Opens and binds it to `interface`.
    pub fn open(interface: &str) -> anyhow::Result<Self> {
        Ok(Self { fd: packet_socket(interface, ETH_P_IP)? })
    }

    /// Sends one whole Ethernet frame.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: `frame` is a valid readable buffer of the length passed.
        let rc = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Receives one frame into `buffer` without blocking: `Ok(None)` when none is queued.
    pub fn try_recv<'a>(&self, buffer: &'a mut [u8]) -> io::Result<Option<&'a [u8]>> {
        // SAFETY: `buffer` is a valid writable buffer of the length passed.
        let rc =
            unsafe { libc::recv(self.fd.as_raw_fd(), buffer.as_mut_ptr().cast(), buffer.len(), libc::MSG_DONTWAIT) };
        if rc < 0 {
            let err = io::Error::last_os_error();
            return match err.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(None),
                _ => Err(err),
            };
        }
        Ok(buffer.get(..rc as usize))
    }

    /// Waits up to `timeout_ms` for a frame to arrive.
    pub fn wait(&self, timeout_ms: i32) -> io::Result<bool> {
        poll_in(&self.fd, timeout_ms)
    }
}

/// `struct tpacket_req3` (linux/if_packet.h).
#[repr(C)]
struct TpacketReq3 {
    block_size: u32,
    block_nr: u32,
    frame_size: u32,
    frame_nr: u32,
    retire_blk_tov: u32,
    sizeof_priv: u32,
    feature_req_word: u32,
}

/// `struct tpacket_stats_v3`.
#[repr(C)]
#[derive(Default)]
struct TpacketStatsV3 {
    packets: u32,
    drops: u32,
    freeze_q_cnt: u32,
}

const TPACKET_V3: libc::c_int = 2;
const TP_STATUS_KERNEL: u32 = 0;
const TP_STATUS_USER: u32 = 1;
// Offsets inside `struct tpacket_block_desc` (version, offset_to_priv, then tpacket_hdr_v1).
const BLOCK_STATUS: usize = 8;
const BLOCK_NUM_PKTS: usize = 12;
const BLOCK_FIRST_PKT: usize = 16;
// Offsets inside `struct tpacket3_hdr`.
const PKT_NEXT_OFFSET: usize = 0;
const PKT_SEC: usize = 4;
const PKT_NSEC: usize = 8;
const PKT_SNAPLEN: usize = 12;
const PKT_MAC: usize = 24;

/// A PACKET_MMAP receive ring (TPACKET_V3) on one interface: the receiver's wire. The kernel
/// fills whole blocks of frames and hands them over with one status word each, so the receiver
/// reads many frames per wakeup and never copies them through a syscall.
#[derive(Debug)]
pub struct RxRing {
    fd: OwnedFd,
    map: *mut u8,
    map_len: usize,
    block_size: usize,
    block_count: usize,
    next_block: usize,
}

/// One received frame: its bytes and the kernel's receive time (CLOCK_REALTIME ns).
#[derive(Debug, Clone, Copy)]
pub struct RxFrame<'a> {
    /// The frame from its Ethernet header on (at most the snap length).
    pub bytes: &'a [u8],
    /// When the kernel received it.
    pub realtime_ns: u64,
}

impl RxRing {
    /// Opens a ring of `block_count` blocks of `block_size` bytes on `interface`; a partly filled
    /// block is handed over after `retire_ms`.
    pub fn open(interface: &str, block_size: usize, block_count: usize, retire_ms: u32) -> anyhow::Result<Self> {
        const FRAME_SIZE: usize = 2048;
        if !block_size.is_multiple_of(4096) || block_size < FRAME_SIZE || block_count == 0 {
            bail!("ring block size must be a multiple of 4096 and at least one frame, count above 0");
        }
        let fd = packet_socket(interface, ETH_P_ALL)?;
        set_int_option(&fd, libc::SOL_PACKET, libc::PACKET_VERSION, TPACKET_V3).context("PACKET_VERSION v3")?;
        let req = TpacketReq3 {
            block_size: u32::try_from(block_size).context("block size")?,
            block_nr: u32::try_from(block_count).context("block count")?,
            frame_size: FRAME_SIZE as u32,
            frame_nr: u32::try_from(block_size / FRAME_SIZE * block_count).context("frame count")?,
            retire_blk_tov: retire_ms,
            sizeof_priv: 0,
            feature_req_word: 0,
        };
        set_option(&fd, libc::SOL_PACKET, libc::PACKET_RX_RING, &req).context("PACKET_RX_RING")?;
        let map_len = block_size * block_count;
        // SAFETY: maps the ring the kernel just allocated for this socket; the result is checked.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(io::Error::last_os_error()).context("mmap the receive ring");
        }
        Ok(Self { fd, map: map.cast::<u8>(), map_len, block_size, block_count, next_block: 0 })
    }

    fn block_status(&self, block: usize) -> &AtomicU32 {
        // SAFETY: the status word lies inside block `block` of the mapping (block < count), is
        // 4-byte aligned (blocks are page aligned), and is shared with the kernel, so it is only
        // accessed atomically.
        unsafe { &*self.map.add(block * self.block_size + BLOCK_STATUS).cast::<AtomicU32>() }
    }

    fn read_u32(&self, at: usize) -> u32 {
        debug_assert!(at + 4 <= self.map_len);
        // SAFETY: callers pass offsets inside a block the kernel handed to user space (status
        // USER, read with Acquire), so the kernel does not write it until it is given back.
        unsafe { self.map.add(at).cast::<u32>().read_unaligned() }
    }

    fn read_u16(&self, at: usize) -> u16 {
        // SAFETY: as in `read_u32`.
        unsafe { self.map.add(at).cast::<u16>().read_unaligned() }
    }

    /// Waits up to `timeout_ms` for a filled block, then hands every frame of every filled block
    /// to `each` and gives the blocks back. Returns the number of frames.
    pub fn receive(&mut self, timeout_ms: i32, mut each: impl FnMut(RxFrame<'_>)) -> io::Result<usize> {
        if self.block_status(self.next_block).load(Ordering::Acquire) & TP_STATUS_USER == 0 {
            poll_in(&self.fd, timeout_ms)?;
        }
        let mut frames = 0;
        for _ in 0..self.block_count {
            let block = self.next_block;
            if self.block_status(block).load(Ordering::Acquire) & TP_STATUS_USER == 0 {
                break;
            }
            let base = block * self.block_size;
            let count = self.read_u32(base + BLOCK_NUM_PKTS) as usize;
            let mut at = base + self.read_u32(base + BLOCK_FIRST_PKT) as usize;
            for _ in 0..count {
                if at + 32 > base + self.block_size {
                    break;
                }
                let next = self.read_u32(at + PKT_NEXT_OFFSET) as usize;
                let snaplen = self.read_u32(at + PKT_SNAPLEN) as usize;
                let mac = usize::from(self.read_u16(at + PKT_MAC));
                let seconds = u64::from(self.read_u32(at + PKT_SEC));
                let nanos = u64::from(self.read_u32(at + PKT_NSEC));
                let start = at + mac;
                if start + snaplen <= base + self.block_size {
                    // SAFETY: the frame lies inside this user-owned block (checked just above).
                    let bytes = unsafe { std::slice::from_raw_parts(self.map.add(start), snaplen) };
                    each(RxFrame { bytes, realtime_ns: seconds * 1_000_000_000 + nanos });
                    frames += 1;
                }
                if next == 0 {
                    break;
                }
                at += next;
            }
            self.block_status(block).store(TP_STATUS_KERNEL, Ordering::Release);
            self.next_block = (block + 1) % self.block_count;
        }
        Ok(frames)
    }

    /// Frames the kernel received for this socket and frames it dropped because the ring was
    /// full, since the previous call (the counters reset on read).
    pub fn statistics(&self) -> io::Result<(u64, u64)> {
        let mut stats = TpacketStatsV3::default();
        let mut len = size_of::<TpacketStatsV3>() as libc::socklen_t;
        // SAFETY: `stats` is writable for `len` bytes; the kernel writes at most that.
        let rc = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                (&mut stats as *mut TpacketStatsV3).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((u64::from(stats.packets), u64::from(stats.drops)))
    }
}

impl Drop for RxRing {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `open`, which nothing borrows any more
        // (frames handed out borrow `self`).
        unsafe { libc::munmap(self.map.cast(), self.map_len) };
    }
}

/// An AF_XDP socket used for transmission only, in copy mode (veth in the lab has no zero-copy)
/// and with no XDP program loaded: transmission needs none.
pub struct XskTx {
    umem: xsk_rs::Umem,
    tx: xsk_rs::TxQueue,
    completions: xsk_rs::CompQueue,
    free: Vec<xsk_rs::FrameDesc>,
    reaped: Vec<xsk_rs::FrameDesc>,
    outstanding: usize,
    ring_size: u32,
}

impl std::fmt::Debug for XskTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XskTx").field("free", &self.free.len()).field("outstanding", &self.outstanding).finish()
    }
}

impl XskTx {
    /// Binds to queue `queue` of `interface` with a UMEM of `frames` frames.
    pub fn open(interface: &str, queue: u32, frames: u32) -> anyhow::Result<Self> {
        use xsk_rs::config::{BindFlags, FrameSize, LibxdpFlags, QueueSize, SocketConfig, UmemConfig};
        let ring = QueueSize::new(frames.next_power_of_two()).context("ring size")?;
        let umem_config = UmemConfig::builder()
            .frame_size(FrameSize::new(2048).context("frame size")?)
            .comp_queue_size(ring)
            .fill_queue_size(QueueSize::new(64).context("fill ring size")?)
            .build()
            .context("UMEM configuration")?;
        let count = std::num::NonZeroU32::new(frames).context("at least one UMEM frame")?;
        let (umem, free) = xsk_rs::Umem::new(umem_config, count, false).context("create UMEM")?;
        let socket_config = SocketConfig::builder()
            .tx_queue_size(ring)
            .rx_queue_size(QueueSize::new(64).context("rx ring size")?)
            .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
            .bind_flags(BindFlags::XDP_COPY | BindFlags::XDP_USE_NEED_WAKEUP)
            .build();
        let name: xsk_rs::config::Interface = interface.parse().context("interface name")?;
        // SAFETY: the UMEM outlives the socket (both are fields of the returned value, and
        // xsk-rs keeps the UMEM alive while a socket references it); no other socket shares it.
        let (tx, _rx, rings) = unsafe { xsk_rs::Socket::new(socket_config, &umem, &name, queue) }
            .with_context(|| format!("AF_XDP socket on {interface} queue {queue}"))?;
        let (_fill, completions) = rings.context("the first socket of a UMEM gets its fill and completion rings")?;
        let reaped = free.clone();
        Ok(Self { umem, tx, completions, free, reaped, outstanding: 0, ring_size: ring.get() })
    }

    /// Frames that can be written now.
    pub fn available(&self) -> usize {
        self.free.len()
    }

    /// Reclaims transmitted frames; returns how many came back.
    pub fn reap(&mut self) -> usize {
        // SAFETY: the completion ring belongs to this UMEM and hands back only descriptors we
        // produced on the TX ring; `reaped` has room for every frame of the UMEM.
        let n = unsafe { self.completions.consume(&mut self.reaped) };
        self.free.extend_from_slice(&self.reaped[..n]);
        self.outstanding -= n.min(self.outstanding);
        n
    }

    /// Writes up to `count` frames with `write(i, frame)` (at most [`Self::available`]) and puts
    /// them on the TX ring; kicks the kernel, which in copy mode transmits in the `sendto`.
    /// Returns the frames queued.
    pub fn send_batch(
        &mut self,
        count: usize,
        mut write: impl FnMut(usize, &mut [u8; crate::frame::FRAME_LEN]),
    ) -> usize {
        let count = count.min(self.free.len());
        let start = self.free.len() - count;
        for (i, desc) in self.free[start..].iter_mut().enumerate() {
            let mut frame = [0u8; crate::frame::FRAME_LEN];
            write(i, &mut frame);
            // SAFETY: `desc` is a free frame of this UMEM: neither the kernel nor another
            // reference touches it until it is produced below.
            let mut data = unsafe { self.umem.data_mut(desc) };
            let mut cursor = data.cursor();
            cursor.set_pos(0);
            // A 60-byte frame always fits a 2048-byte UMEM frame.
            let _ = io::Write::write_all(&mut cursor, &frame);
        }
        // SAFETY: the descriptors are this UMEM's, written above and not used again until the
        // completion ring returns them.
        let queued = unsafe { self.tx.produce(&self.free[start..]) };
        self.free.truncate(self.free.len() - queued);
        self.outstanding += queued;
        self.kick();
        queued
    }

    /// Asks the kernel to transmit what is on the ring (copy mode sends from this call).
    pub fn kick(&mut self) {
        if self.tx.nb_free_exact() < self.ring_size {
            // ENOBUFS/EAGAIN/EBUSY are retried on the next kick; xsk-rs folds them into Ok.
            let _ = self.tx.wakeup();
        }
    }

    /// Frames queued and not yet completed.
    pub fn outstanding(&self) -> usize {
        self.outstanding
    }
}
