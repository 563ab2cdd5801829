//! The phone's DHCP client (claims 000: 13, 19 — the IP module's network configuration module),
//! sans-IO: it builds DISCOVER and REQUEST, reads OFFER, ACK and NAK through the project's strict
//! codec ([`dialtone_dhcp::wire`]), and turns the ACK into a [`Lease`]. Sockets and timers are the
//! caller's.
//!
//! Every message sets the broadcast flag: the phone has no address until the ACK, so the server
//! answers by broadcast (RFC 2131 section 4.1) and a plain UDP socket on port 68 receives it.

use std::net::Ipv4Addr;

use dialtone_config::portblock::decode_option159;
use dialtone_config::MacAddr;
use dialtone_dhcp::engine::vendor_suboption;
use dialtone_dhcp::wire::{code, Message, Options, BOOTREPLY, FLAG_BROADCAST};

/// The parameter request list (option 55): network basics, then the TFTP server (66, 150), the
/// boot file (67), vendor information (43) and the port block (159), as the issue asks.
pub const PARAMETER_REQUEST_LIST: [u8; 11] = [
    code::SUBNET_MASK,
    code::ROUTER,
    code::DNS,
    code::DOMAIN_NAME,
    code::LEASE_TIME,
    code::SERVER_ID,
    code::TFTP_SERVER_NAME,
    code::BOOT_FILE,
    code::TFTP_SERVER_ADDRESS,
    code::VENDOR_SPECIFIC,
    code::V4_PORTPARAMS,
];

const DISCOVER: u8 = 1;
const OFFER: u8 = 2;
const REQUEST: u8 = 3;
const ACK: u8 = 5;
const NAK: u8 = 6;

/// The port block as the phone learnt it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    /// First port (inclusive).
    pub lo: u16,
    /// Last port (inclusive).
    pub hi: u16,
    /// The shared public address, when option 43 named it.
    pub public_ip: Option<Ipv4Addr>,
}

/// Telephony provisioning resources found in the DHCP answer (claims 000: 17, 23).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DhcpProvisioning {
    /// A TFTP server (150, else 66, else `siaddr`) and a boot file (67, else `file`).
    Tftp {
        /// The TFTP server.
        server: Ipv4Addr,
        /// The boot file it serves.
        boot_file: String,
    },
    /// Option 43 carrying a provisioning URL (`http://host[:port]`), as some phones read it.
    Url(String),
}

/// A bound lease: what the ACK said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The leased address.
    pub address: Ipv4Addr,
    /// Prefix length from the subnet mask (32 without option 1).
    pub prefix_len: u8,
    /// First router, if any.
    pub router: Option<Ipv4Addr>,
    /// The server that granted it.
    pub server_id: Ipv4Addr,
    /// Lease time in seconds.
    pub lease_secs: u32,
    /// The TFTP server the answer names (150, else 66 as an address, else `siaddr`).
    pub tftp_server: Option<Ipv4Addr>,
    /// The boot file (67, else `file`).
    pub boot_file: Option<String>,
    /// The port block (option 159, else dialtone's option 43 sub-options).
    pub ports: Option<PortRange>,
    /// A provisioning URL in option 43, if it carried one.
    pub provisioning_url: Option<String>,
}

impl Lease {
    /// The telephony provisioning resources of this answer, if it carries any (claims 000: 17,
    /// 23): a provisioning URL, or a TFTP server together with a boot file.
    pub fn provisioning(&self) -> Option<DhcpProvisioning> {
        if let Some(url) = &self.provisioning_url {
            return Some(DhcpProvisioning::Url(url.clone()));
        }
        match (self.tftp_server, &self.boot_file) {
            (Some(server), Some(boot_file)) => Some(DhcpProvisioning::Tftp { server, boot_file: boot_file.clone() }),
            _ => None,
        }
    }
}

/// What a received datagram meant to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Not for this client, or not in this state: keep waiting.
    Ignore,
    /// An OFFER was taken: send this REQUEST (and wait for the ACK).
    Send(Vec<u8>),
    /// ACKed.
    Bound(Lease),
    /// NAKed with the server's message; the client is back at DISCOVER.
    Nak(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Selecting,
    Requesting { offered: Ipv4Addr, server: Ipv4Addr },
    Bound,
}

/// One phone's DHCP exchange.
#[derive(Debug, Clone)]
pub struct Client {
    mac: MacAddr,
    vendor_class: Vec<u8>,
    xid: u32,
    secs: u16,
    state: State,
}

impl Client {
    /// A client for `mac` sending `vendor_class` (option 60) with transaction id `xid`.
    pub fn new(mac: MacAddr, vendor_class: &str, xid: u32) -> Self {
        Self { mac, vendor_class: vendor_class.as_bytes().to_vec(), xid, secs: 0, state: State::Selecting }
    }

    /// The transaction id (the fleet routes answers by it).
    pub fn xid(&self) -> u32 {
        self.xid
    }

    /// Seconds since the exchange began (RFC 2131 `secs`), set by the caller before sending.
    pub fn set_secs(&mut self, secs: u16) {
        self.secs = secs;
    }

    /// The message to send now: DISCOVER while selecting, REQUEST once an offer was taken. Sending
    /// it again is the retransmission.
    pub fn message(&self) -> Vec<u8> {
        match self.state {
            State::Requesting { offered, server } => self.build(REQUEST, Some((offered, server))),
            State::Selecting | State::Bound => self.build(DISCOVER, None),
        }
    }

    /// True after an OFFER was taken and before its ACK.
    pub fn is_requesting(&self) -> bool {
        matches!(self.state, State::Requesting { .. })
    }

    /// Back to DISCOVER (after too many unanswered REQUESTs).
    pub fn restart(&mut self) {
        self.state = State::Selecting;
    }

    fn build(&self, kind: u8, request: Option<(Ipv4Addr, Ipv4Addr)>) -> Vec<u8> {
        let mut options = Options::new();
        options.set(code::MESSAGE_TYPE, vec![kind]);
        let mut client_id = vec![1u8];
        client_id.extend_from_slice(&self.mac.0);
        options.set(code::CLIENT_ID, client_id);
        if let Some((offered, server)) = request {
            options.set(code::REQUESTED_IP, offered.octets().to_vec());
            options.set(code::SERVER_ID, server.octets().to_vec());
        }
        options.set(code::MAX_MESSAGE_SIZE, 1500u16.to_be_bytes().to_vec());
        options.set(code::VENDOR_CLASS, self.vendor_class.clone());
        options.set(code::PARAMETER_REQUEST_LIST, PARAMETER_REQUEST_LIST.to_vec());
        let msg = Message { secs: self.secs, flags: FLAG_BROADCAST, ..Message::request(self.xid, self.mac.0, options) };
        msg.encode(1500).0
    }

    /// Reads one datagram received on port 68. Never panics on any input.
    pub fn handle(&mut self, bytes: &[u8]) -> Event {
        let Ok(msg) = Message::decode(bytes) else { return Event::Ignore };
        if msg.op != BOOTREPLY || msg.xid != self.xid || msg.hardware_address() != self.mac.0 {
            return Event::Ignore;
        }
        let kind = msg.options.get(code::MESSAGE_TYPE).and_then(|k| k.first().copied());
        let server = ipv4(msg.options.get(code::SERVER_ID));
        match (self.state, kind) {
            (State::Selecting, Some(OFFER)) => {
                let Some(server) = server else { return Event::Ignore };
                if msg.yiaddr.is_unspecified() {
                    return Event::Ignore;
                }
                self.state = State::Requesting { offered: msg.yiaddr, server };
                Event::Send(self.message())
            }
            (State::Requesting { offered, server: chosen }, Some(ACK)) if server == Some(chosen) => {
                if msg.yiaddr != offered {
                    return Event::Ignore;
                }
                self.state = State::Bound;
                Event::Bound(lease_of(&msg, chosen))
            }
            (State::Requesting { server: chosen, .. }, Some(NAK)) if server == Some(chosen) => {
                self.state = State::Selecting;
                let why = msg.options.get(code::MESSAGE).map(|m| String::from_utf8_lossy(m).into_owned());
                Event::Nak(why.unwrap_or_else(|| "no reason given".into()))
            }
            _ => Event::Ignore,
        }
    }
}

fn ipv4(bytes: Option<&[u8]>) -> Option<Ipv4Addr> {
    let b: [u8; 4] = bytes?.get(..4)?.try_into().ok()?;
    Some(Ipv4Addr::from(b))
}

/// Text of a fixed field or option: up to the first NUL, UTF-8, non-empty.
fn text(bytes: &[u8]) -> Option<String> {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    let s = std::str::from_utf8(bytes.get(..end)?).ok()?.trim();
    (!s.is_empty()).then(|| s.to_owned())
}

/// dialtone's option-43 port sub-options (see [`vendor_suboption`]), if all three are present.
fn vendor_ports(payload: &[u8]) -> Option<PortRange> {
    let (mut ip, mut lo, mut hi) = (None, None, None);
    let mut rest = payload;
    while let [sub, len, tail @ ..] = rest {
        let data = tail.get(..usize::from(*len))?;
        match (*sub, data) {
            (vendor_suboption::PUBLIC_IP, &[a, b, c, d]) => ip = Some(Ipv4Addr::new(a, b, c, d)),
            (vendor_suboption::FIRST_PORT, &[x, y]) => lo = Some(u16::from_be_bytes([x, y])),
            (vendor_suboption::LAST_PORT, &[x, y]) => hi = Some(u16::from_be_bytes([x, y])),
            _ => {}
        }
        rest = tail.get(usize::from(*len)..)?;
    }
    match (lo, hi) {
        (Some(lo), Some(hi)) if lo <= hi => Some(PortRange { lo, hi, public_ip: ip }),
        _ => None,
    }
}

fn lease_of(msg: &Message, server_id: Ipv4Addr) -> Lease {
    let o = &msg.options;
    let prefix_len = ipv4(o.get(code::SUBNET_MASK)).map_or(32, |m| u32::from(m).leading_ones() as u8);
    let tftp_server = ipv4(o.get(code::TFTP_SERVER_ADDRESS))
        .or_else(|| o.get(code::TFTP_SERVER_NAME).and_then(text).and_then(|t| t.parse().ok()))
        .or_else(|| (!msg.siaddr.is_unspecified()).then_some(msg.siaddr));
    let boot_file = o.get(code::BOOT_FILE).and_then(text).or_else(|| text(&msg.file));
    let vendor = o.get(code::VENDOR_SPECIFIC);
    let ports = o
        .get(code::V4_PORTPARAMS)
        .and_then(|p| decode_option159(p).ok())
        .map(|(lo, hi)| PortRange { lo, hi, public_ip: None })
        .or_else(|| vendor.and_then(vendor_ports));
    // Ports from 159 with the public address from 43 when both came.
    let ports = match (ports, vendor.and_then(vendor_ports)) {
        (Some(p), Some(v)) if p.public_ip.is_none() && (v.lo, v.hi) == (p.lo, p.hi) => Some(v),
        (p, _) => p,
    };
    let provisioning_url = vendor.and_then(text).filter(|t| t.starts_with("http://"));
    Lease {
        address: msg.yiaddr,
        prefix_len,
        router: ipv4(o.get(code::ROUTER)),
        server_id,
        lease_secs: o.get(code::LEASE_TIME).and_then(|l| l.try_into().ok()).map_or(0, u32::from_be_bytes),
        tftp_server,
        boot_file,
        ports,
        provisioning_url,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: MacAddr = MacAddr([0x02, 0xdc, 0, 0, 0, 1]);
    const SERVER: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 1);

    fn reply(request: &[u8], kind: u8, yiaddr: Ipv4Addr, extra: &[(u8, Vec<u8>)]) -> Vec<u8> {
        let req = Message::decode(request).unwrap();
        let mut r = Message::reply_to(&req);
        r.yiaddr = yiaddr;
        r.options.set(code::MESSAGE_TYPE, vec![kind]);
        r.options.set(code::SERVER_ID, SERVER.octets().to_vec());
        for (c, d) in extra {
            r.options.set(*c, d.clone());
        }
        r.encode(1500).0
    }

    #[test]
    fn discover_asks_for_the_telephony_options_with_the_vendor_class() {
        let c = Client::new(MAC, "dialtone-phone", 7);
        let m = Message::decode(&c.message()).unwrap();
        assert_eq!(m.flags, FLAG_BROADCAST);
        assert_eq!(m.hardware_address(), &MAC.0);
        assert_eq!(m.options.get(code::MESSAGE_TYPE), Some(&[DISCOVER][..]));
        assert_eq!(m.options.get(code::VENDOR_CLASS), Some(&b"dialtone-phone"[..]));
        let prl = m.options.get(code::PARAMETER_REQUEST_LIST).unwrap();
        for wanted in [66, 67, 150, 43, 159] {
            assert!(prl.contains(&wanted), "{wanted} missing from {prl:?}");
        }
    }

    #[test]
    fn dora_yields_the_lease_with_block_and_resources() {
        let mut c = Client::new(MAC, "dialtone-phone", 7);
        let discover = c.message();
        let yi = Ipv4Addr::new(100, 64, 64, 9);
        // Someone else's offer and garbage are ignored.
        let mut other = Client::new(MacAddr([2, 0, 0, 0, 0, 9]), "x", 7);
        assert_eq!(c.handle(&reply(&other.message(), OFFER, yi, &[])), Event::Ignore);
        assert_eq!(c.handle(&[1, 2, 3]), Event::Ignore);
        let _ = other.handle(&[]);
        let Event::Send(request) = c.handle(&reply(&discover, OFFER, yi, &[])) else { panic!("no request") };
        let r = Message::decode(&request).unwrap();
        assert_eq!(r.options.get(code::MESSAGE_TYPE), Some(&[REQUEST][..]));
        assert_eq!(r.options.get(code::REQUESTED_IP), Some(&yi.octets()[..]));
        assert_eq!(r.options.get(code::SERVER_ID), Some(&SERVER.octets()[..]));
        // An ACK for another address is ignored.
        assert_eq!(c.handle(&reply(&request, ACK, Ipv4Addr::new(1, 1, 1, 1), &[])), Event::Ignore);
        let extra = [
            (code::SUBNET_MASK, vec![255, 255, 0, 0]),
            (code::ROUTER, SERVER.octets().to_vec()),
            (code::LEASE_TIME, 3600u32.to_be_bytes().to_vec()),
            (code::TFTP_SERVER_ADDRESS, SERVER.octets().to_vec()),
            (code::BOOT_FILE, b"softphone/firmware.bin".to_vec()),
            (code::V4_PORTPARAMS, vec![0, 8, 0x05, 0x00]),
        ];
        let Event::Bound(lease) = c.handle(&reply(&request, ACK, yi, &extra)) else { panic!("not bound") };
        assert_eq!(lease.address, yi);
        assert_eq!(lease.prefix_len, 16);
        assert_eq!(lease.router, Some(SERVER));
        assert_eq!(lease.lease_secs, 3600);
        assert_eq!(lease.ports, Some(PortRange { lo: 0x0500, hi: 0x05ff, public_ip: None }));
        assert_eq!(
            lease.provisioning(),
            Some(DhcpProvisioning::Tftp { server: SERVER, boot_file: "softphone/firmware.bin".into() })
        );
    }

    #[test]
    fn without_a_boot_file_the_answer_carries_no_resources_and_nak_restarts() {
        let mut c = Client::new(MAC, "dialtone-phone-zt", 9);
        let d = c.message();
        let yi = Ipv4Addr::new(100, 64, 96, 3);
        let Event::Send(request) = c.handle(&reply(&d, OFFER, yi, &[])) else { panic!() };
        let payload = {
            let mut v = vec![vendor_suboption::PUBLIC_IP, 4, 198, 51, 100, 160];
            v.extend_from_slice(&[vendor_suboption::FIRST_PORT, 2, 4, 0, vendor_suboption::LAST_PORT, 2, 4, 255]);
            v
        };
        let extra = [(code::TFTP_SERVER_ADDRESS, SERVER.octets().to_vec()), (code::VENDOR_SPECIFIC, payload)];
        let mut again = c.clone();
        let Event::Bound(lease) = c.handle(&reply(&request, ACK, yi, &extra)) else { panic!() };
        assert_eq!(lease.provisioning(), None);
        assert_eq!(
            lease.ports,
            Some(PortRange { lo: 0x400, hi: 0x4ff, public_ip: Some(Ipv4Addr::new(198, 51, 100, 160)) })
        );
        let mut nak = Message::decode(&reply(&request, NAK, Ipv4Addr::UNSPECIFIED, &[])).unwrap();
        nak.options.set(code::MESSAGE, b"address taken".to_vec());
        assert_eq!(again.handle(&nak.encode(1500).0), Event::Nak("address taken".into()));
        assert_eq!(Message::decode(&again.message()).unwrap().options.get(code::MESSAGE_TYPE), Some(&[DISCOVER][..]));
    }

    #[test]
    fn option_43_url_is_a_provisioning_resource() {
        let mut c = Client::new(MAC, "v", 1);
        let d = c.message();
        let yi = Ipv4Addr::new(100, 64, 96, 4);
        let Event::Send(r) = c.handle(&reply(&d, OFFER, yi, &[])) else { panic!() };
        let extra = [(code::VENDOR_SPECIFIC, b"http://100.64.0.1:8081".to_vec())];
        let Event::Bound(lease) = c.handle(&reply(&r, ACK, yi, &extra)) else { panic!() };
        assert_eq!(lease.provisioning(), Some(DhcpProvisioning::Url("http://100.64.0.1:8081".into())));
    }

    proptest::proptest! {
        #[test]
        fn any_datagram_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            let mut c = Client::new(MAC, "v", 1);
            let _ = c.handle(&bytes);
            let _ = vendor_ports(&bytes);
        }
    }
}
