//! Next-hop MACs from the kernel's neighbour table (DESIGN.md "Neighbours").
//!
//! A control-plane thread dumps the IPv4 neighbour table over rtnetlink (RTM_GETNEIGH) every
//! `dataplane.neighbour_refresh` and pushes `Update::NextHop` to every worker when the WAN next
//! hop's MAC changes (or it is found unreachable). When the entry is missing, incomplete or
//! stale it sends one UDP datagram to the neighbour's discard port through the kernel, which
//! makes the kernel resolve (ARP) or re-confirm it; until the next hop is known it retries every
//! [`UNRESOLVED_RETRY`], so the first translated packets wait milliseconds, not a refresh period.
//!
//! The netlink exchange is hand-rolled on a socket2 socket (no `unsafe`): it is one 28-byte
//! request and a walk over `ndmsg` records with two attributes. The netlink crates
//! (netlink-packet-route with netlink-sys and netlink-packet-core, or neli) would add four crates
//! whose APIs change with most minor versions, for those 150 lines.
//!
//! ```text
//! nlmsghdr: len u32 | type u16 | flags u16 | seq u32 | pid u32
//! ndmsg:    family u8 | pad u8 | pad u16 | ifindex i32 | state u16 | flags u8 | type u8
//! rtattr:   len u16 | type u16 | payload, padded to 4      NDA_DST = 1, NDA_LLADDR = 2
//! ```

use std::io::Read as _;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use dialtone_config::MacAddr;
use dialtone_nappt::Update;
use socket2::{Domain, Protocol, Socket, Type};

use crate::control::{Broadcast, Control};
use crate::Error;

/// Retry period while a next hop is unresolved.
pub const UNRESOLVED_RETRY: Duration = Duration::from_millis(20);

const NLMSG_HEADER: usize = 16;
const NDMSG: usize = 12;
const RTM_NEWNEIGH: u16 = 28;
const RTM_GETNEIGH: u16 = 30;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const NDA_DST: u16 = 1;
const NDA_LLADDR: u16 = 2;
const AF_INET: u8 = 2;

/// Neighbour states (`NUD_*`, include/uapi/linux/neighbour.h).
pub mod state {
    /// Resolution in progress.
    pub const INCOMPLETE: u16 = 0x01;
    /// Confirmed recently.
    pub const REACHABLE: u16 = 0x02;
    /// Known, not confirmed recently.
    pub const STALE: u16 = 0x04;
    /// Waiting before probing.
    pub const DELAY: u16 = 0x08;
    /// Being re-confirmed.
    pub const PROBE: u16 = 0x10;
    /// Resolution failed.
    pub const FAILED: u16 = 0x20;
    /// No resolution needed.
    pub const NOARP: u16 = 0x40;
    /// Static entry.
    pub const PERMANENT: u16 = 0x80;
}

/// One IPv4 neighbour entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Neighbour {
    /// Interface index.
    pub ifindex: u32,
    /// Its address.
    pub address: Ipv4Addr,
    /// Its MAC, when the entry has one.
    pub mac: Option<MacAddr>,
    /// `NUD_*` bits.
    pub state: u16,
}

impl Neighbour {
    /// The MAC may be used to send.
    pub fn usable(&self) -> bool {
        let valid = state::REACHABLE | state::STALE | state::DELAY | state::PROBE | state::PERMANENT | state::NOARP;
        self.state & valid != 0 && self.mac.is_some_and(|m| !m.is_zero() && !m.is_group())
    }

    /// The kernel should be asked to (re)confirm it.
    pub fn wants_probe(&self) -> bool {
        self.state & (state::REACHABLE | state::PERMANENT | state::NOARP | state::DELAY | state::PROBE) == 0
    }
}

/// The RTM_GETNEIGH dump request for IPv4.
pub fn dump_request(seq: u32) -> [u8; NLMSG_HEADER + NDMSG] {
    let mut msg = [0u8; NLMSG_HEADER + NDMSG];
    msg[0..4].copy_from_slice(&((NLMSG_HEADER + NDMSG) as u32).to_ne_bytes());
    msg[4..6].copy_from_slice(&RTM_GETNEIGH.to_ne_bytes());
    msg[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    msg[8..12].copy_from_slice(&seq.to_ne_bytes());
    msg[NLMSG_HEADER] = AF_INET;
    msg
}

/// What one datagram of a dump answer held.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct DumpPart {
    /// The entries.
    pub neighbours: Vec<Neighbour>,
    /// NLMSG_DONE was seen: the dump is complete.
    pub done: bool,
    /// The kernel answered with this errno.
    pub error: Option<i32>,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Parses one datagram of a dump answer. Malformed records end the walk (the kernel never
/// sends them; nothing here trusts a length it has not checked).
pub fn parse_dump(datagram: &[u8], seq: u32) -> DumpPart {
    let mut part = DumpPart::default();
    let mut at = 0;
    while let (Some(len), Some(kind)) = (u32_at(datagram, at), u16_at(datagram, at + 4)) {
        let len = len as usize;
        if len < NLMSG_HEADER || at + len > datagram.len() {
            break;
        }
        let message = &datagram[at..at + len];
        if u32_at(message, 8) != Some(seq) {
            // An answer to some earlier request: skip it.
        } else if kind == NLMSG_DONE {
            part.done = true;
        } else if kind == NLMSG_ERROR {
            let errno = u32_at(message, NLMSG_HEADER).map_or(0, |e| e as i32);
            if errno != 0 {
                part.error = Some(-errno);
            }
            part.done = true;
        } else if kind == RTM_NEWNEIGH {
            if let Some(neighbour) = parse_neighbour(&message[NLMSG_HEADER..]) {
                part.neighbours.push(neighbour);
            }
        }
        at += (len + 3) & !3;
    }
    part
}

fn parse_neighbour(body: &[u8]) -> Option<Neighbour> {
    if *body.first()? != AF_INET {
        return None;
    }
    let ifindex = u32_at(body, 4)?;
    let state = u16_at(body, 8)?;
    let (mut address, mut mac) = (None, None);
    let mut at = NDMSG;
    while let (Some(len), Some(kind)) = (u16_at(body, at), u16_at(body, at + 2)) {
        let len = usize::from(len);
        if len < 4 || at + len > body.len() {
            break;
        }
        let payload = &body[at + 4..at + len];
        match kind {
            NDA_DST => address = <[u8; 4]>::try_from(payload).ok().map(Ipv4Addr::from),
            NDA_LLADDR => mac = <[u8; 6]>::try_from(payload).ok().map(MacAddr),
            _ => {}
        }
        at += (len + 3) & !3;
    }
    Some(Neighbour { ifindex, address: address?, mac, state })
}

/// A blocking rtnetlink socket for neighbour dumps.
#[derive(Debug)]
pub struct NeighbourTable {
    socket: Socket,
    seq: u32,
    buffer: Vec<u8>,
}

impl NeighbourTable {
    /// Opens the socket.
    pub fn open() -> Result<Self, Error> {
        let socket = Socket::new(Domain::from(libc::AF_NETLINK), Type::RAW, Some(Protocol::from(libc::NETLINK_ROUTE)))
            .map_err(|e| Error::Io("netlink socket".into(), e))?;
        socket.set_read_timeout(Some(Duration::from_secs(1))).map_err(|e| Error::Io("netlink timeout".into(), e))?;
        Ok(Self { socket, seq: 0, buffer: vec![0; 64 * 1024] })
    }

    /// Every IPv4 neighbour entry.
    pub fn dump(&mut self) -> Result<Vec<Neighbour>, Error> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        self.socket.send(&dump_request(seq)).map_err(|e| Error::Io("netlink send".into(), e))?;
        let mut neighbours = Vec::new();
        loop {
            let n = (&self.socket).read(&mut self.buffer).map_err(|e| Error::Io("netlink receive".into(), e))?;
            let part = parse_dump(&self.buffer[..n], seq);
            neighbours.extend(part.neighbours);
            if let Some(errno) = part.error {
                return Err(Error::Io("neighbour dump".into(), std::io::Error::from_raw_os_error(errno)));
            }
            if part.done {
                return Ok(neighbours);
            }
        }
    }
}

/// One address whose MAC the workers need.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    /// The neighbour's address.
    pub address: Ipv4Addr,
    /// The interface it is on.
    pub ifindex: u32,
    /// Which message carries its MAC to the workers.
    pub role: Role,
}

/// What a target's MAC is used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The WAN next hop (translated and forwarded traffic to the carrier).
    WanNextHop,
    /// Plain forwarding: the LAN-side peer.
    LanPeer,
}

fn message(role: Role, mac: Option<MacAddr>) -> Control {
    match role {
        Role::WanNextHop => Control::Nappt(Update::NextHop { mac }),
        Role::LanPeer => Control::LanPeer(mac),
    }
}

/// The gateway's own interfaces, whose MACs the workers put in every frame they send.
#[derive(Debug, Clone)]
pub struct OwnInterfaces {
    /// LAN interface name and the MAC the workers were given.
    pub lan: (String, MacAddr),
    /// WAN interface name and the MAC the workers were given.
    pub wan: (String, MacAddr),
}

impl OwnInterfaces {
    /// Reads both MACs again; when either changed (an operator set a new one, a bond failed
    /// over), returns the update that gives the workers both, and remembers them.
    fn changed(&mut self) -> Option<Update> {
        let lan = crate::netdev::current_mac(&self.lan.0).ok()?;
        let wan = crate::netdev::current_mac(&self.wan.0).ok()?;
        if (lan, wan) == (self.lan.1, self.wan.1) {
            return None;
        }
        tracing::info!(lan = %lan, wan = %wan, "interface MAC changed");
        self.lan.1 = lan;
        self.wan.1 = wan;
        Some(Update::InterfaceMacs { lan, wan })
    }
}

/// The thread that keeps the workers' next-hop MACs, and the gateway's own, current.
#[derive(Debug)]
pub struct NeighbourWatch {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl NeighbourWatch {
    /// Starts watching `targets` and `own`, refreshing every `refresh`.
    pub fn spawn(
        targets: Vec<Target>,
        own: OwnInterfaces,
        refresh: Duration,
        workers: Broadcast,
    ) -> Result<Self, Error> {
        let mut table = NeighbourTable::open()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("dataplane-neighbour".into())
            .spawn(move || watch(&mut table, &targets, own, refresh, &workers, &flag))
            .map_err(|e| Error::Io("spawning the neighbour thread".into(), e))?;
        Ok(Self { stop, thread: Some(thread) })
    }

    /// Stops the thread.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

impl Drop for NeighbourWatch {
    fn drop(&mut self) {
        self.stop();
    }
}

fn watch(
    table: &mut NeighbourTable,
    targets: &[Target],
    mut own: OwnInterfaces,
    refresh: Duration,
    workers: &Broadcast,
    stop: &AtomicBool,
) {
    let mut known: Vec<Option<MacAddr>> = vec![None; targets.len()];
    let probe = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)).ok();
    let mut warned = false;
    while !stop.load(Ordering::Relaxed) {
        if let Some(update) = own.changed() {
            workers.update(update);
        }
        let entries = match table.dump() {
            Ok(entries) => {
                warned = false;
                entries
            }
            Err(e) => {
                if !warned {
                    tracing::warn!(error = %e, "neighbour table dump failed; retrying");
                    warned = true;
                }
                Vec::new()
            }
        };
        let mut unresolved = false;
        for (target, last) in targets.iter().zip(known.iter_mut()) {
            let entry = entries.iter().find(|n| n.ifindex == target.ifindex && n.address == target.address);
            let mac = entry.filter(|n| n.usable()).and_then(|n| n.mac);
            let failed = entry.is_some_and(|n| n.state & state::FAILED != 0);
            if mac.is_some() && mac != *last {
                tracing::info!(address = %target.address, mac = %mac.unwrap_or_default(), role = ?target.role, "next hop resolved");
                workers.send(message(target.role, mac));
                *last = mac;
            } else if mac.is_none() && failed && last.is_some() {
                tracing::warn!(address = %target.address, role = ?target.role, "next hop unreachable");
                workers.send(message(target.role, None));
                *last = None;
            }
            unresolved |= last.is_none();
            if entry.is_none_or(|n| n.wants_probe()) {
                // Any datagram makes the kernel resolve (or re-confirm) the neighbour.
                if let Some(socket) = &probe {
                    let _ = socket.send_to(b"dialtone neighbour probe", SocketAddrV4::new(target.address, 9));
                }
            }
        }
        std::thread::park_timeout(if unresolved { UNRESOLVED_RETRY } else { refresh });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seq: u32, kind: u16, body: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&((NLMSG_HEADER + body.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&0x2u16.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(body);
        while m.len() % 4 != 0 {
            m.push(0);
        }
        m
    }

    fn neighbour_body(ifindex: u32, state: u16, dst: [u8; 4], mac: Option<[u8; 6]>) -> Vec<u8> {
        let mut b = vec![AF_INET, 0, 0, 0];
        b.extend_from_slice(&ifindex.to_ne_bytes());
        b.extend_from_slice(&state.to_ne_bytes());
        b.extend_from_slice(&[0, 1]);
        b.extend_from_slice(&8u16.to_ne_bytes());
        b.extend_from_slice(&NDA_DST.to_ne_bytes());
        b.extend_from_slice(&dst);
        if let Some(mac) = mac {
            b.extend_from_slice(&10u16.to_ne_bytes());
            b.extend_from_slice(&NDA_LLADDR.to_ne_bytes());
            b.extend_from_slice(&mac);
            b.extend_from_slice(&[0, 0]);
        }
        b
    }

    #[test]
    fn request_layout() {
        let r = dump_request(7);
        assert_eq!(u32_at(&r, 0), Some(28));
        assert_eq!(u16_at(&r, 4), Some(RTM_GETNEIGH));
        assert_eq!(u16_at(&r, 6), Some(0x301));
        assert_eq!(u32_at(&r, 8), Some(7));
        assert_eq!(r[16], AF_INET);
    }

    #[test]
    fn parses_entries_skips_foreign_sequence_numbers_and_sees_done() {
        let mac = [0x02, 0, 0, 0, 0, 0xfe];
        let mut datagram = record(5, RTM_NEWNEIGH, &neighbour_body(3, state::REACHABLE, [192, 0, 2, 254], Some(mac)));
        datagram.extend(record(5, RTM_NEWNEIGH, &neighbour_body(3, state::INCOMPLETE, [192, 0, 2, 9], None)));
        datagram.extend(record(4, RTM_NEWNEIGH, &neighbour_body(3, state::REACHABLE, [192, 0, 2, 8], Some(mac))));
        datagram.extend(record(5, NLMSG_DONE, &0u32.to_ne_bytes()));
        let part = parse_dump(&datagram, 5);
        assert!(part.done && part.error.is_none());
        assert_eq!(part.neighbours.len(), 2);
        let first = part.neighbours[0];
        assert_eq!(
            first,
            Neighbour {
                ifindex: 3,
                address: Ipv4Addr::new(192, 0, 2, 254),
                mac: Some(MacAddr(mac)),
                state: state::REACHABLE
            }
        );
        assert!(first.usable() && !first.wants_probe());
        let second = part.neighbours[1];
        assert!(!second.usable() && second.wants_probe() && second.mac.is_none());
    }

    #[test]
    fn stale_entries_are_usable_but_reconfirmed() {
        let stale = Neighbour {
            ifindex: 1,
            address: Ipv4Addr::LOCALHOST,
            mac: Some(MacAddr([2, 0, 0, 0, 0, 1])),
            state: state::STALE,
        };
        assert!(stale.usable() && stale.wants_probe());
        let failed = Neighbour { state: state::FAILED, ..stale };
        assert!(!failed.usable());
    }

    #[test]
    fn truncated_and_hostile_lengths_end_the_walk() {
        let body = neighbour_body(3, state::REACHABLE, [192, 0, 2, 254], Some([2, 0, 0, 0, 0, 1]));
        let full = record(1, RTM_NEWNEIGH, &body);
        for cut in 0..full.len() {
            let part = parse_dump(&full[..cut], 1);
            assert!(part.neighbours.len() <= 1 && !part.done);
        }
        let mut hostile = full.clone();
        hostile[0..4].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert_eq!(parse_dump(&hostile, 1), DumpPart::default());
        let error = record(1, NLMSG_ERROR, &(-1i32).to_ne_bytes());
        assert_eq!(parse_dump(&error, 1).error, Some(1));
    }

    #[test]
    fn the_kernel_answers_a_dump() {
        // Works unprivileged in any namespace; the loopback namespace may hold no entries.
        let mut table = NeighbourTable::open().expect("netlink socket");
        table.dump().expect("dump");
        table.dump().expect("a second dump on the same socket");
    }
}
