//! Interface configuration over rtnetlink (RFC 3549): add the leased address, add routes. The
//! phone agent applies its lease with it, and the fleet simulator adds thousands of /32 addresses
//! with it without forking `ip` per phone.
//!
//! Messages (native byte order, 4-byte aligned attributes):
//!
//! ```text
//! nlmsghdr  | len u32 | type u16 | flags u16 | seq u32 | pid u32 |
//! ifaddrmsg | family u8 | prefixlen u8 | flags u8 | scope u8 | index u32 |   + IFA_LOCAL, IFA_ADDRESS
//! rtmsg     | family u8 | dst_len u8 | src_len u8 | tos u8 | table u8 | protocol u8 | scope u8 |
//!           | type u8 | flags u32 |                                          + RTA_DST, RTA_GATEWAY, RTA_OIF
//! ```
//!
//! Every request asks for an acknowledgment, and the answer's error code is returned.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;

use rustix::net::{recv, send, socket, AddressFamily, RecvFlags, SendFlags, SocketType};

const RTM_SETLINK: u16 = 19;
const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_CREATE: u16 = 0x400;
const AF_INET: u8 = 2;
const IFLA_ADDRESS: u16 = 1;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_DHCP: u8 = 16;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RT_SCOPE_LINK: u8 = 253;
const RTN_UNICAST: u8 = 1;

/// A route to add.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// Destination network (0.0.0.0 with `prefix_len` 0 for the default route).
    pub destination: Ipv4Addr,
    /// Destination prefix length.
    pub prefix_len: u8,
    /// Next hop, or None for an on-link route.
    pub gateway: Option<Ipv4Addr>,
}

/// An rtnetlink socket.
#[derive(Debug)]
pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
}

fn attr(out: &mut Vec<u8>, kind: u16, data: &[u8]) {
    let len = 4 + data.len();
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(data);
    out.resize(out.len().next_multiple_of(4), 0);
}

fn header(out: &mut Vec<u8>, kind: u16, flags: u16, seq: u32) {
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(&(flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
}

fn finish(out: &mut [u8]) {
    let len = (out.len() as u32).to_ne_bytes();
    out[..4].copy_from_slice(&len);
}

/// The RTM_NEWADDR message adding (or replacing) `address/prefix_len` on interface `index`.
pub fn new_address_message(seq: u32, index: u32, address: Ipv4Addr, prefix_len: u8) -> Vec<u8> {
    let mut m = Vec::with_capacity(40);
    header(&mut m, RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE, seq);
    m.extend_from_slice(&[AF_INET, prefix_len, 0, RT_SCOPE_UNIVERSE]);
    m.extend_from_slice(&index.to_ne_bytes());
    attr(&mut m, IFA_LOCAL, &address.octets());
    attr(&mut m, IFA_ADDRESS, &address.octets());
    finish(&mut m);
    m
}

/// The RTM_SETLINK message giving interface `index` the hardware address `mac`.
pub fn set_mac_message(seq: u32, index: u32, mac: [u8; 6]) -> Vec<u8> {
    let mut m = Vec::with_capacity(44);
    header(&mut m, RTM_SETLINK, 0, seq);
    // ifinfomsg: family, pad, type (u16), index (i32), flags (u32), change (u32).
    m.extend_from_slice(&[0, 0, 0, 0]);
    m.extend_from_slice(&index.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    attr(&mut m, IFLA_ADDRESS, &mac);
    finish(&mut m);
    m
}

/// The RTM_NEWROUTE message adding (or replacing) `route` through interface `index`.
pub fn new_route_message(seq: u32, index: u32, route: Route) -> Vec<u8> {
    let mut m = Vec::with_capacity(52);
    header(&mut m, RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, seq);
    let scope = if route.gateway.is_some() { RT_SCOPE_UNIVERSE } else { RT_SCOPE_LINK };
    m.extend_from_slice(&[AF_INET, route.prefix_len, 0, 0, RT_TABLE_MAIN, RTPROT_DHCP, scope, RTN_UNICAST]);
    m.extend_from_slice(&0u32.to_ne_bytes());
    if route.prefix_len > 0 {
        attr(&mut m, RTA_DST, &route.destination.octets());
    }
    if let Some(gw) = route.gateway {
        attr(&mut m, RTA_GATEWAY, &gw.octets());
    }
    attr(&mut m, RTA_OIF, &index.to_ne_bytes());
    finish(&mut m);
    m
}

/// Reads the acknowledgments in `buf`: Ok(number of acks), or the first error as an `io::Error`.
fn read_acks(buf: &[u8]) -> io::Result<usize> {
    let mut acks = 0;
    let mut rest = buf;
    while rest.len() >= 16 {
        let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let kind = u16::from_ne_bytes([rest[4], rest[5]]);
        if len < 16 || len > rest.len() {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "truncated netlink message"));
        }
        if kind == NLMSG_ERROR {
            let code = rest.get(16..20).map_or(0, |c| i32::from_ne_bytes([c[0], c[1], c[2], c[3]]));
            if code != 0 {
                return Err(io::Error::from_raw_os_error(-code));
            }
            acks += 1;
        }
        rest = &rest[len.next_multiple_of(4).min(rest.len())..];
    }
    Ok(acks)
}

impl Netlink {
    /// Opens a NETLINK_ROUTE socket in the current network namespace.
    pub fn open() -> io::Result<Self> {
        // NETLINK_ROUTE is protocol 0.
        let fd = socket(AddressFamily::NETLINK, SocketType::RAW, None)?;
        Ok(Self { fd, seq: 1 })
    }

    /// The index of interface `name`.
    pub fn index_of(&self, name: &str) -> io::Result<u32> {
        let probe = socket(AddressFamily::INET, SocketType::DGRAM, None)?;
        Ok(rustix::net::netdevice::name_to_index(&probe, name)?)
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Sends `messages` (each asking for an ack) in one datagram and waits for every ack.
    fn transact(&mut self, messages: &[Vec<u8>]) -> io::Result<()> {
        let batch: Vec<u8> = messages.concat();
        send(&self.fd, &batch, SendFlags::empty())?;
        let mut pending = messages.len();
        let mut buf = vec![0u8; 65536];
        while pending > 0 {
            let (n, _) = recv(&self.fd, &mut buf[..], RecvFlags::empty())?;
            let got = read_acks(buf.get(..n).unwrap_or_default())?;
            pending = pending.saturating_sub(got.max(1));
        }
        Ok(())
    }

    /// Adds (or replaces) addresses on interface `index`, at most 64 per datagram.
    pub fn add_addresses(&mut self, index: u32, addresses: &[(Ipv4Addr, u8)]) -> io::Result<()> {
        for chunk in addresses.chunks(64) {
            let messages: Vec<Vec<u8>> =
                chunk.iter().map(|&(a, p)| new_address_message(self.next_seq(), index, a, p)).collect();
            self.transact(&messages)?;
        }
        Ok(())
    }

    /// Gives interface `index` the hardware address `mac` (a phone's NIC carries its own MAC).
    pub fn set_mac(&mut self, index: u32, mac: [u8; 6]) -> io::Result<()> {
        let m = set_mac_message(self.next_seq(), index, mac);
        self.transact(&[m])
    }

    /// Adds (or replaces) a route through interface `index`.
    pub fn add_route(&mut self, index: u32, route: Route) -> io::Result<()> {
        let m = new_route_message(self.next_seq(), index, route);
        self.transact(&[m])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_message_layout() {
        let m = new_address_message(7, 3, Ipv4Addr::new(100, 64, 64, 5), 16);
        assert_eq!(m.len(), 16 + 8 + 8 + 8);
        assert_eq!(u32::from_ne_bytes(m[0..4].try_into().unwrap()), 40);
        assert_eq!(u16::from_ne_bytes(m[4..6].try_into().unwrap()), RTM_NEWADDR);
        assert_eq!(u32::from_ne_bytes(m[8..12].try_into().unwrap()), 7);
        assert_eq!(&m[16..20], &[AF_INET, 16, 0, 0]);
        assert_eq!(u32::from_ne_bytes(m[20..24].try_into().unwrap()), 3);
        assert_eq!(&m[28..32], &[100, 64, 64, 5]);
    }

    #[test]
    fn route_message_layout_and_acks() {
        let m = new_route_message(
            1,
            2,
            Route { destination: Ipv4Addr::UNSPECIFIED, prefix_len: 0, gateway: Some(Ipv4Addr::new(100, 64, 0, 1)) },
        );
        assert_eq!(u32::from_ne_bytes(m[0..4].try_into().unwrap()) as usize, m.len());
        assert_eq!(m.len(), 16 + 12 + 8 + 8);
        let mut ack = vec![0u8; 36];
        ack[0..4].copy_from_slice(&36u32.to_ne_bytes());
        ack[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        assert_eq!(read_acks(&ack).unwrap(), 1);
        ack[16..20].copy_from_slice(&(-17i32).to_ne_bytes());
        assert_eq!(read_acks(&ack).unwrap_err().raw_os_error(), Some(17));
        assert!(read_acks(&ack[..20]).is_err());
    }
}
