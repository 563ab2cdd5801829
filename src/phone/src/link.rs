//! The single phone's [`Link`]: it owns its interface. The interface takes the phone's MAC from
//! NVRAM (so frames the gateway addresses to the leased MAC are the interface's own), DHCP runs
//! over a UDP socket on port 68 bound to the interface with broadcast allowed, and the ACK is
//! applied with rtnetlink: the leased address with its prefix, and a default route via the router.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

use crate::agent::Link;
use crate::dhcp::Lease;
use crate::netlink::{Netlink, Route};

/// DHCP server port.
const SERVER_PORT: u16 = 67;
/// DHCP client port.
const CLIENT_PORT: u16 = 68;

/// A UDP socket on port 68 bound to `interface`, broadcast allowed: the DHCP socket of a phone
/// with no address yet (the server broadcasts its answers, RFC 2131 section 4.1).
pub fn dhcp_socket(interface: &str) -> std::io::Result<UdpSocket> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    socket.set_broadcast(true)?;
    // Room for a burst of broadcast answers (the fleet shares this socket among its phones);
    // the kernel caps it at net.core.rmem_max.
    socket.set_recv_buffer_size(4 << 20)?;
    socket.bind_device(Some(interface.as_bytes()))?;
    socket.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, CLIENT_PORT)).into())?;
    Ok(socket.into())
}

/// Broadcast destination of client messages.
pub const DHCP_SERVER_BROADCAST: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::BROADCAST, SERVER_PORT);

/// The interface a single phone owns.
#[derive(Debug)]
pub struct InterfaceLink {
    socket: UdpSocket,
    netlink: Netlink,
    index: u32,
}

impl InterfaceLink {
    /// Takes `interface` for the phone with hardware address `mac`.
    pub fn open(interface: &str, mac: [u8; 6]) -> std::io::Result<Self> {
        let mut netlink = Netlink::open()?;
        let index = netlink.index_of(interface)?;
        netlink.set_mac(index, mac)?;
        let socket = dhcp_socket(interface)?;
        Ok(Self { socket, netlink, index })
    }
}

impl Link for InterfaceLink {
    fn send_dhcp(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.socket.send_to(bytes, DHCP_SERVER_BROADCAST).map(|_| ())
    }

    fn recv_dhcp(&mut self, timeout: Duration) -> std::io::Result<Option<Vec<u8>>> {
        self.socket.set_read_timeout(Some(timeout.max(Duration::from_millis(1))))?;
        let mut buf = vec![0u8; 1500];
        match self.socket.recv_from(&mut buf) {
            Ok((n, _)) => {
                buf.truncate(n);
                Ok(Some(buf))
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn configure(&mut self, lease: &Lease) -> std::io::Result<()> {
        self.netlink.add_addresses(self.index, &[(lease.address, lease.prefix_len)])?;
        if let Some(router) = lease.router {
            let default = Route { destination: Ipv4Addr::UNSPECIFIED, prefix_len: 0, gateway: Some(router) };
            self.netlink.add_route(self.index, default)?;
        }
        Ok(())
    }
}
