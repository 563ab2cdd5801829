//! Many simulated phones' DHCP clients in one sans-IO engine (claims 001: 10, 11, 25, 26).
//!
//! Inputs: "start phone `slot` with MAC m", received Ethernet frames and `now`. Outputs: Ethernet
//! frames to send (DISCOVER, REQUEST, RELEASE with the broadcast flag set so that every reply is
//! broadcast and needs no ARP on the phones' side) and events (leased, failed). It holds no
//! socket and reads no clock: [`crate::sys::PacketSocket`] and the binaries drive it.
//!
//! A phone's exchange is DISCOVER -> OFFER -> REQUEST -> ACK. An exchange with no answer within
//! `retry_ns` starts again from DISCOVER with a new transaction id; after `attempts` tries the
//! phone is reported failed. A NAK restarts at once. The lease's port block is read from the
//! class's RFC 7618 option (159 unless configured otherwise) and cross-checked with the
//! port-block function of the configuration; the public address is not carried by DHCP and comes
//! from the configuration.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use dialtone_config::portblock::decode_option159;
use dialtone_config::Config;
use dialtone_dhcp::wire::{code, BOOTREPLY, FLAG_BROADCAST};
use dialtone_dhcp::{Message, Options};
use serde::{Deserialize, Serialize};

use crate::frame::{parse_udp, udp_frame, UdpFlow, BROADCAST_MAC};

/// DHCP message types (RFC 2132 section 9.6).
mod message_type {
    pub const DISCOVER: u8 = 1;
    pub const OFFER: u8 = 2;
    pub const REQUEST: u8 = 3;
    pub const ACK: u8 = 5;
    pub const NAK: u8 = 6;
    pub const RELEASE: u8 = 7;
}

const CLIENT_PORT: u16 = 68;
const SERVER_PORT: u16 = 67;

/// A phone's lease, as the phone learned it plus the public address of its block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The phone's MAC.
    pub mac: [u8; 6],
    /// Leased private address.
    pub address: Ipv4Addr,
    /// Class index in the configuration.
    pub class: u8,
    /// Offset in the class's LAN pool.
    pub offset: u32,
    /// Public address of the block (from the configuration's port-block function).
    pub public: Ipv4Addr,
    /// First port of the block (from the DHCP port option).
    pub port_lo: u16,
    /// Last port of the block.
    pub port_hi: u16,
    /// DHCP server identifier.
    pub server: Ipv4Addr,
    /// Ethernet source of the server's replies: the gateway's LAN MAC.
    pub gateway_mac: [u8; 6],
}

/// What the engine reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Phone `slot` holds `lease`.
    Leased {
        /// The caller's slot.
        slot: usize,
        /// The lease.
        lease: Lease,
    },
    /// Phone `slot` got no lease after every attempt.
    Failed {
        /// The caller's slot.
        slot: usize,
        /// Its MAC.
        mac: [u8; 6],
    },
}

/// Counters of the exchanges (published in the binaries' summaries).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct LeaseCounters {
    /// DISCOVERs sent (first tries and retries).
    pub discovers: u64,
    /// REQUESTs sent.
    pub requests: u64,
    /// ACKs accepted.
    pub acks: u64,
    /// NAKs received.
    pub naks: u64,
    /// Exchanges restarted after a lost message.
    pub retries: u64,
    /// Phones given up on.
    pub failures: u64,
    /// RELEASEs sent.
    pub releases: u64,
    /// ACKs whose port option disagreed with the port-block function (or was missing).
    pub block_mismatches: u64,
    /// Replies for no pending exchange, or not parseable.
    pub ignored: u64,
}

#[derive(Debug, Clone, Copy)]
enum Stage {
    Selecting,
    Requesting { offered: Ipv4Addr, server: Ipv4Addr, gateway_mac: [u8; 6] },
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    slot: usize,
    mac: [u8; 6],
    stage: Stage,
    deadline_ns: u64,
    attempt: u32,
}

/// The DHCP clients of many phones.
#[derive(Debug)]
pub struct LeaseEngine {
    config: Config,
    vendor_class: Vec<u8>,
    retry_ns: u64,
    attempts: u32,
    next_xid: u32,
    pending: HashMap<u32, Pending>,
    counters: LeaseCounters,
}

impl LeaseEngine {
    /// Clients presenting `vendor_class` (option 60) to the gateway running `config`; a lost
    /// exchange is retried after `retry_ns`, `attempts` times in all. `xid_seed` makes transaction
    /// ids differ between processes.
    pub fn new(config: Config, vendor_class: &[u8], retry_ns: u64, attempts: u32, xid_seed: u32) -> Self {
        Self {
            config,
            vendor_class: vendor_class.to_vec(),
            retry_ns,
            attempts: attempts.max(1),
            next_xid: xid_seed,
            pending: HashMap::new(),
            counters: LeaseCounters::default(),
        }
    }

    /// Exchanges in flight.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Counters so far.
    pub fn counters(&self) -> LeaseCounters {
        self.counters
    }

    /// Starts phone `slot` with `mac`: returns the DISCOVER frame to send.
    pub fn start(&mut self, now_ns: u64, slot: usize, mac: [u8; 6]) -> Vec<u8> {
        self.begin(now_ns, Pending { slot, mac, stage: Stage::Selecting, deadline_ns: 0, attempt: 1 })
    }

    fn begin(&mut self, now_ns: u64, mut pending: Pending) -> Vec<u8> {
        let xid = self.fresh_xid();
        pending.stage = Stage::Selecting;
        pending.deadline_ns = now_ns.saturating_add(self.retry_ns);
        self.pending.insert(xid, pending);
        self.counters.discovers += 1;
        let mut options = Options::new();
        options.set(code::MESSAGE_TYPE, vec![message_type::DISCOVER]);
        self.client_options(&mut options, pending.mac);
        self.broadcast(xid, pending.mac, options)
    }

    fn fresh_xid(&mut self) -> u32 {
        loop {
            self.next_xid = self.next_xid.wrapping_add(0x9e37_79b9);
            if !self.pending.contains_key(&self.next_xid) {
                return self.next_xid;
            }
        }
    }

    fn client_options(&self, options: &mut Options, mac: [u8; 6]) {
        let mut client_id = vec![1u8];
        client_id.extend_from_slice(&mac);
        options.set(code::CLIENT_ID, client_id);
        options.set(code::VENDOR_CLASS, self.vendor_class.clone());
        options.set(
            code::PARAMETER_REQUEST_LIST,
            vec![
                code::SUBNET_MASK,
                code::ROUTER,
                code::DNS,
                code::TFTP_SERVER_NAME,
                code::BOOT_FILE,
                code::V4_PORTPARAMS,
            ],
        );
    }

    fn message(xid: u32, mac: [u8; 6], flags: u16, ciaddr: Ipv4Addr, options: Options) -> Message {
        Message { flags, ciaddr, ..Message::request(xid, mac, options) }
    }

    /// A client message from 0.0.0.0:68 to 255.255.255.255:67, broadcast flag set.
    fn broadcast(&self, xid: u32, mac: [u8; 6], options: Options) -> Vec<u8> {
        let message = Self::message(xid, mac, FLAG_BROADCAST, Ipv4Addr::UNSPECIFIED, options);
        let (bytes, _) = message.encode(1500);
        let flow = UdpFlow {
            src_mac: mac,
            dst_mac: BROADCAST_MAC,
            src: Ipv4Addr::UNSPECIFIED,
            dst: Ipv4Addr::BROADCAST,
            src_port: CLIENT_PORT,
            dst_port: SERVER_PORT,
        };
        udp_frame(&flow, &bytes)
    }

    /// The RELEASE of `lease`, unicast to its server (RFC 2131 section 4.4.6).
    pub fn release(&mut self, lease: &Lease) -> Vec<u8> {
        self.counters.releases += 1;
        let xid = self.fresh_xid();
        let mut options = Options::new();
        options.set(code::MESSAGE_TYPE, vec![message_type::RELEASE]);
        options.set(code::SERVER_ID, lease.server.octets().to_vec());
        let mut client_id = vec![1u8];
        client_id.extend_from_slice(&lease.mac);
        options.set(code::CLIENT_ID, client_id);
        // Gateways that check the vendor class on every message (dialtone does) need it here too.
        options.set(code::VENDOR_CLASS, self.vendor_class.clone());
        let message = Self::message(xid, lease.mac, 0, lease.address, options);
        let (bytes, _) = message.encode(1500);
        let flow = UdpFlow {
            src_mac: lease.mac,
            dst_mac: lease.gateway_mac,
            src: lease.address,
            dst: lease.server,
            src_port: CLIENT_PORT,
            dst_port: SERVER_PORT,
        };
        udp_frame(&flow, &bytes)
    }

    /// Handles one received frame: a reply to send (REQUEST after an OFFER, DISCOVER after a NAK)
    /// and/or an event.
    pub fn handle(&mut self, now_ns: u64, frame: &[u8]) -> (Option<Vec<u8>>, Option<Event>) {
        let Some((message, gateway_mac)) = Self::reply_of(frame) else {
            return (None, None);
        };
        let Some(pending) = self.pending.get(&message.xid).copied() else {
            self.counters.ignored += 1;
            return (None, None);
        };
        if message.hardware_address() != pending.mac {
            self.counters.ignored += 1;
            return (None, None);
        }
        let kind = message.options.get(code::MESSAGE_TYPE).and_then(|t| t.first().copied());
        match (kind, pending.stage) {
            (Some(message_type::OFFER), Stage::Selecting) => {
                let Some(server) = message.options.get(code::SERVER_ID).and_then(ipv4) else {
                    self.counters.ignored += 1;
                    return (None, None);
                };
                let offered = message.yiaddr;
                self.pending.remove(&message.xid);
                let xid = self.fresh_xid();
                self.pending.insert(
                    xid,
                    Pending {
                        stage: Stage::Requesting { offered, server, gateway_mac },
                        deadline_ns: now_ns.saturating_add(self.retry_ns),
                        ..pending
                    },
                );
                self.counters.requests += 1;
                let mut options = Options::new();
                options.set(code::MESSAGE_TYPE, vec![message_type::REQUEST]);
                options.set(code::REQUESTED_IP, offered.octets().to_vec());
                options.set(code::SERVER_ID, server.octets().to_vec());
                self.client_options(&mut options, pending.mac);
                (Some(self.broadcast(xid, pending.mac, options)), None)
            }
            (Some(message_type::ACK), Stage::Requesting { offered, server, gateway_mac })
                if message.yiaddr == offered =>
            {
                self.pending.remove(&message.xid);
                match self.lease_of(&message, pending.mac, server, gateway_mac) {
                    Some(lease) => {
                        self.counters.acks += 1;
                        (None, Some(Event::Leased { slot: pending.slot, lease }))
                    }
                    None => {
                        self.counters.failures += 1;
                        (None, Some(Event::Failed { slot: pending.slot, mac: pending.mac }))
                    }
                }
            }
            (Some(message_type::NAK), Stage::Requesting { .. }) => {
                self.counters.naks += 1;
                self.pending.remove(&message.xid);
                self.retry(now_ns, pending).into_parts()
            }
            _ => {
                self.counters.ignored += 1;
                (None, None)
            }
        }
    }

    /// Exchanges whose deadline passed: the DISCOVERs that restart them, and the phones that
    /// used up their attempts.
    pub fn poll_timeouts(&mut self, now_ns: u64, frames: &mut Vec<Vec<u8>>, events: &mut Vec<Event>) {
        let expired: Vec<u32> =
            self.pending.iter().filter(|(_, p)| p.deadline_ns <= now_ns).map(|(xid, _)| *xid).collect();
        for xid in expired {
            let Some(pending) = self.pending.remove(&xid) else { continue };
            let (frame, event) = self.retry(now_ns, pending).into_parts();
            frames.extend(frame);
            events.extend(event);
        }
    }

    fn retry(&mut self, now_ns: u64, pending: Pending) -> Retry {
        if pending.attempt >= self.attempts {
            self.counters.failures += 1;
            return Retry::GaveUp(Event::Failed { slot: pending.slot, mac: pending.mac });
        }
        self.counters.retries += 1;
        Retry::Again(self.begin(now_ns, Pending { attempt: pending.attempt + 1, ..pending }))
    }

    /// The DHCP reply in `frame` with the Ethernet source it came from.
    fn reply_of(frame: &[u8]) -> Option<(Message, [u8; 6])> {
        let udp = parse_udp(frame).ok()?;
        if udp.flow.dst_port != CLIENT_PORT || udp.flow.src_port != SERVER_PORT {
            return None;
        }
        let message = Message::decode(udp.body).ok()?;
        (message.op == BOOTREPLY).then_some((message, udp.flow.src_mac))
    }

    fn lease_of(&mut self, ack: &Message, mac: [u8; 6], server: Ipv4Addr, gateway_mac: [u8; 6]) -> Option<Lease> {
        let address = ack.yiaddr;
        let (class_index, class) = self.config.class_of_address(address)?;
        let block = class.port_block_of(address)?;
        let offset = class.offset_of(address)?;
        let from_dhcp = class.port_option.and_then(|c| ack.options.get(c)).and_then(|p| decode_option159(p).ok());
        if from_dhcp != Some((block.port_lo, block.port_hi)) {
            self.counters.block_mismatches += 1;
        }
        let (port_lo, port_hi) = from_dhcp.unwrap_or((block.port_lo, block.port_hi));
        Some(Lease {
            mac,
            address,
            class: u8::try_from(class_index).ok()?,
            offset,
            public: block.public_ip,
            port_lo,
            port_hi,
            server,
            gateway_mac,
        })
    }
}

enum Retry {
    Again(Vec<u8>),
    GaveUp(Event),
}

impl Retry {
    fn into_parts(self) -> (Option<Vec<u8>>, Option<Event>) {
        match self {
            Retry::Again(frame) => (Some(frame), None),
            Retry::GaveUp(event) => (None, Some(event)),
        }
    }
}

fn ipv4(bytes: &[u8]) -> Option<Ipv4Addr> {
    let octets: [u8; 4] = bytes.try_into().ok()?;
    Some(Ipv4Addr::from(octets))
}

/// A locally administered unicast MAC for simulated phone number `serial` of run `run`.
pub fn phone_mac(run: u8, serial: u32) -> [u8; 6] {
    let [_, a, b, c] = serial.to_be_bytes();
    let top = (serial >> 24) as u8;
    [0x02, 0x64 ^ top, run, a, b, c]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::bench_config;
    use dialtone_dhcp::wire::MAGIC_COOKIE;

    const GATEWAY_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const SERVER: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 1);

    fn engine() -> LeaseEngine {
        LeaseEngine::new(bench_config(), b"dialtone-bench", 1_000, 3, 7)
    }

    /// The client message inside a frame the engine sent.
    fn sent(frame: &[u8]) -> (UdpFlow, Message) {
        let udp = parse_udp(frame).expect("engine frames are valid UDP");
        (udp.flow, Message::decode(udp.body).expect("engine messages decode"))
    }

    fn reply(to: &Message, kind: u8, yiaddr: Ipv4Addr, port_option: Option<[u8; 4]>) -> Vec<u8> {
        let mut m = Message::reply_to(to);
        m.yiaddr = yiaddr;
        m.options.set(code::MESSAGE_TYPE, vec![kind]);
        m.options.set(code::SERVER_ID, SERVER.octets().to_vec());
        if let Some(p) = port_option {
            m.options.set(code::V4_PORTPARAMS, p.to_vec());
        }
        let (bytes, _) = m.encode(1500);
        let flow = UdpFlow {
            src_mac: GATEWAY_MAC,
            dst_mac: BROADCAST_MAC,
            src: SERVER,
            dst: Ipv4Addr::BROADCAST,
            src_port: SERVER_PORT,
            dst_port: CLIENT_PORT,
        };
        udp_frame(&flow, &bytes)
    }

    #[test]
    fn full_dora_yields_the_lease_and_its_block() {
        let mut e = engine();
        let mac = phone_mac(1, 5);
        let discover = e.start(0, 3, mac);
        let (flow, d) = sent(&discover);
        assert_eq!((flow.src, flow.dst, flow.dst_mac), (Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST, BROADCAST_MAC));
        assert_eq!(d.flags, FLAG_BROADCAST);
        assert_eq!(d.options.get(code::MESSAGE_TYPE), Some(&[1u8][..]));
        assert_eq!(d.options.get(code::VENDOR_CLASS), Some(&b"dialtone-bench"[..]));
        assert_eq!(d.hardware_address(), &mac);

        let config = bench_config();
        let address = config.classes[0].address_at(1500).expect("offset");
        let block = config.classes[0].port_block_of(address).expect("block");
        let (request, event) = e.handle(10, &reply(&d, 2, address, None));
        assert_eq!(event, None);
        let (_, r) = sent(&request.expect("a REQUEST answers the OFFER"));
        assert_eq!(r.options.get(code::MESSAGE_TYPE), Some(&[3u8][..]));
        assert_eq!(r.options.get(code::REQUESTED_IP), Some(&address.octets()[..]));
        assert_eq!(r.options.get(code::SERVER_ID), Some(&SERVER.octets()[..]));

        let (none, event) = e.handle(20, &reply(&r, 5, address, Some(block.option159_payload())));
        assert_eq!(none, None);
        let want = Lease {
            mac,
            address,
            class: 0,
            offset: 1500,
            public: block.public_ip,
            port_lo: block.port_lo,
            port_hi: block.port_hi,
            server: SERVER,
            gateway_mac: GATEWAY_MAC,
        };
        assert_eq!(event, Some(Event::Leased { slot: 3, lease: want }));
        assert_eq!(e.in_flight(), 0);
        assert_eq!(e.counters().block_mismatches, 0);

        let release = e.release(&want);
        let (flow, m) = sent(&release);
        assert_eq!((flow.src, flow.dst, flow.dst_mac), (address, SERVER, GATEWAY_MAC));
        assert_eq!(m.ciaddr, address);
        assert_eq!(m.options.get(code::MESSAGE_TYPE), Some(&[7u8][..]));
        assert_eq!(m.options.get(code::VENDOR_CLASS), Some(&b"dialtone-bench"[..]));
    }

    #[test]
    fn a_wrong_port_option_is_counted() {
        let mut e = engine();
        let (_, d) = sent(&e.start(0, 0, phone_mac(1, 1)));
        let address = bench_config().classes[0].address_at(0).expect("offset");
        let (request, _) = e.handle(1, &reply(&d, 2, address, None));
        let (_, r) = sent(&request.expect("REQUEST"));
        let (_, event) = e.handle(2, &reply(&r, 5, address, Some([0, 10, 0x08, 0])));
        assert!(matches!(event, Some(Event::Leased { .. })));
        assert_eq!(e.counters().block_mismatches, 1);
    }

    #[test]
    fn lost_replies_restart_and_finally_fail() {
        let mut e = engine();
        let (_, first) = sent(&e.start(0, 9, phone_mac(1, 2)));
        let (mut frames, mut events) = (Vec::new(), Vec::new());
        e.poll_timeouts(999, &mut frames, &mut events);
        assert!(frames.is_empty() && events.is_empty());
        e.poll_timeouts(1_000, &mut frames, &mut events);
        assert_eq!(frames.len(), 1);
        let (_, second) = sent(&frames[0]);
        assert_ne!(second.xid, first.xid);
        // A late OFFER for the abandoned transaction is ignored.
        let address = bench_config().classes[0].address_at(0).expect("offset");
        assert_eq!(e.handle(1_001, &reply(&first, 2, address, None)), (None, None));
        frames.clear();
        e.poll_timeouts(2_000, &mut frames, &mut events);
        e.poll_timeouts(3_000, &mut frames, &mut events);
        assert_eq!(events, vec![Event::Failed { slot: 9, mac: phone_mac(1, 2) }]);
        assert_eq!(e.counters().retries, 2);
        assert_eq!(e.in_flight(), 0);
    }

    #[test]
    fn garbage_and_foreign_replies_are_ignored() {
        let mut e = engine();
        let _ = e.start(0, 0, phone_mac(1, 3));
        assert_eq!(e.handle(1, &[0u8; 10]), (None, None));
        let mut frame = vec![0u8; 300];
        frame[236..240].copy_from_slice(&MAGIC_COOKIE);
        assert_eq!(e.handle(1, &frame), (None, None));
        assert_eq!(e.in_flight(), 1);
    }

    #[test]
    fn macs_are_unicast_locally_administered_and_distinct() {
        let a = phone_mac(1, 0x01_000001);
        let b = phone_mac(1, 0x000001);
        assert_ne!(a, b);
        assert_eq!(a[0] & 0x03, 0x02);
    }
}
