//! dialtone performance tooling: the phone fleets and frame generators benchmarks run on.
//!
//! Layer: outside the product; depends on config, wire and nappt, nothing depends on it.
//! Inputs: a fleet size and a seed. Outputs: a configured NAPPT worker with that many leased
//! phones over several classes, and batches of Ethernet frames to translate, outbound or inbound,
//! in random phone order. It must never open a socket or send traffic anywhere: benchmarks here
//! measure code, the lab scripts measure networks.

#![forbid(unsafe_code)]

use std::net::Ipv4Addr;
use std::path::Path;

use dialtone_config::{Config, CpuPolicy, MacAddr};
use dialtone_nappt::{Nappt, Update};
use dialtone_wire::ipv4::{Ipv4Packet, PROTOCOL_UDP};
use dialtone_wire::UdpPacket;

/// Four classes, 1,048,576 phone offsets in all (16 MiB of worker tables): desk phones with
/// 1024 ports, softphones with 256, conference units with 4096 and low-end phones with 64.
pub const FLEET_CONFIG: &str = r#"
[lan]
interface = "lan0"
address = "10.0.0.1/8"

[wan]
interface = "wan0"
address = "192.0.2.1/24"
next_hop = "192.0.2.254"

[store]
path = "/tmp/dialtone-perf.redb"

[dataplane]
cpus = [0]

[management]
listen = "127.0.0.1:9000"
token = "perf-fleet-token-not-secret"

[[class]]
name = "desk"
vendor_class = { prefix = "Desk" }
ports_per_phone = 1024
lan_pool = "10.0.0.0/13"
public_pool = "100.0.0.0/18"
tftp_root = "/tmp"

[[class]]
name = "soft"
vendor_class = { prefix = "Soft" }
ports_per_phone = 256
lan_pool = "10.8.0.0/14"
public_pool = "100.1.0.0/21"
tftp_root = "/tmp"

[[class]]
name = "conference"
vendor_class = { prefix = "Conf" }
ports_per_phone = 4096
lan_pool = "10.12.0.0/15"
public_pool = "100.2.0.0/18"
tftp_root = "/tmp"

[[class]]
name = "basic"
vendor_class = { prefix = "Basic" }
ports_per_phone = 64
lan_pool = "10.14.0.0/15"
public_pool = "100.3.0.0/24"
tftp_root = "/tmp"
"#;

/// MAC of the gateway's LAN interface in generated frames.
pub const GATEWAY_LAN_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
/// MAC of the gateway's WAN interface.
pub const GATEWAY_WAN_MAC: [u8; 6] = [2, 0, 0, 0, 1, 1];
/// MAC of the WAN next hop.
pub const NEXT_HOP_MAC: [u8; 6] = [2, 0, 0, 0, 1, 0xfe];
/// The far end every generated flow talks to.
pub const REMOTE: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
/// Bytes reserved per generated frame (a UMEM chunk would be 2048 or 4096).
pub const FRAME_STRIDE: usize = 128;
/// Length of a generated frame: Ethernet + IPv4 + UDP + 32 bytes (a small RTP-sized packet).
pub const FRAME_LEN: usize = 14 + 20 + 8 + 32;

/// SplitMix64: a small deterministic generator, so every run draws the same phones.
#[derive(Debug, Clone)]
pub struct SplitMix(u64);

impl SplitMix {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number below `bound` (> 0).
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound
    }
}

/// A leased phone of the fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FleetPhone {
    /// Class index.
    pub class: u16,
    /// Offset in the class's LAN pool.
    pub offset: u32,
    /// LAN address.
    pub private: Ipv4Addr,
    /// Public address of its block.
    pub public: Ipv4Addr,
    /// First port of its block.
    pub port_lo: u16,
    /// Ports in its block.
    pub ports: u16,
}

/// A worker with `leased` phones (spread evenly over every class's pool) and the list of them.
#[derive(Debug)]
pub struct Fleet {
    /// The configuration.
    pub config: Config,
    /// The worker, MACs and leases applied.
    pub worker: Nappt,
    /// Every leased phone.
    pub phones: Vec<FleetPhone>,
}

impl Fleet {
    /// Builds the fleet of [`FLEET_CONFIG`] with `leased` phones (at most the offsets it has).
    pub fn new(leased: usize) -> Self {
        let config = dialtone_config::load_str("fleet.toml", FLEET_CONFIG, Path::new("/"), CpuPolicy::Ignore)
            .expect("the fleet configuration is valid")
            .config;
        let mut worker = Nappt::new(&config, 0x5eed);
        worker
            .apply(Update::InterfaceMacs { lan: MacAddr(GATEWAY_LAN_MAC), wan: MacAddr(GATEWAY_WAN_MAC) })
            .expect("interface MACs are unicast");
        worker.apply(Update::NextHop { mac: Some(MacAddr(NEXT_HOP_MAC)) }).expect("next hop is unicast");
        let total: u64 = config.classes.iter().map(|c| u64::from(c.plan.phones)).sum();
        let leased = (leased as u64).min(total);
        let mut phones = Vec::with_capacity(leased as usize);
        for (class_index, class) in config.classes.iter().enumerate() {
            let class_phones = u64::from(class.plan.phones);
            let want = leased * class_phones / total;
            for k in 0..want {
                // Spread over the whole pool so the table is touched end to end.
                let offset = (k * class_phones / want.max(1)) as u32;
                let block = class.plan.port_block_for(offset).expect("offset inside the pool");
                let class_id = class_index as u16;
                let mac = MacAddr([0x80, 0x5e, 0xc0, class_id as u8, (offset >> 8) as u8, offset as u8]);
                worker.apply(Update::LeaseUp { class: class_id, offset, mac }).expect("offset inside the pool");
                phones.push(FleetPhone {
                    class: class_id,
                    offset,
                    private: class.address_at(offset).expect("offset inside the pool"),
                    public: block.public_ip,
                    port_lo: block.port_lo,
                    ports: block.len() as u16,
                });
            }
        }
        Self { config, worker, phones }
    }

    /// `batches` batches of `batch` frames, [`FRAME_STRIDE`] bytes apart in one buffer, from
    /// random leased phones (outbound, `inbound == false`) or to them (inbound).
    pub fn frames(&self, batches: usize, batch: usize, inbound: bool, seed: u64) -> Vec<Vec<u8>> {
        let mut random = SplitMix::new(seed);
        (0..batches)
            .map(|_| {
                let mut buffer = vec![0u8; batch * FRAME_STRIDE];
                for chunk in buffer.chunks_exact_mut(FRAME_STRIDE) {
                    let phone = self.phones[random.below(self.phones.len() as u64) as usize];
                    let port = phone.port_lo + random.below(u64::from(phone.ports)) as u16;
                    if inbound {
                        udp_frame(chunk, NEXT_HOP_MAC, GATEWAY_WAN_MAC, REMOTE, phone.public, 5060, port);
                    } else {
                        let mac = [0x80, 0x5e, 0xc0, 0, 0, 1];
                        udp_frame(chunk, mac, GATEWAY_LAN_MAC, phone.private, REMOTE, port, 5060);
                    }
                }
                buffer
            })
            .collect()
    }
}

/// Writes a UDP frame of [`FRAME_LEN`] bytes with full checksums into `chunk`.
pub fn udp_frame(
    chunk: &mut [u8],
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
) {
    let frame = &mut chunk[..FRAME_LEN];
    frame[..6].copy_from_slice(&dst_mac);
    frame[6..12].copy_from_slice(&src_mac);
    frame[12..14].copy_from_slice(&[0x08, 0x00]);
    for (i, byte) in frame[42..].iter_mut().enumerate() {
        *byte = i as u8;
    }
    {
        let mut udp = UdpPacket::new_unchecked(&mut frame[34..]);
        udp.set_src_port(sport);
        udp.set_dst_port(dport);
        udp.set_len((FRAME_LEN - 34) as u16);
        udp.fill_checksum(src.octets(), dst.octets());
    }
    let mut ip = Ipv4Packet::new_unchecked(&mut frame[14..]);
    ip.set_version_and_header_len(20);
    ip.set_total_len((FRAME_LEN - 14) as u16);
    ip.set_ident(1);
    ip.set_flags_and_frag_word(0x4000);
    ip.set_ttl(64);
    ip.set_protocol(PROTOCOL_UDP);
    ip.set_src_u32(u32::from(src));
    ip.set_dst_u32(u32::from(dst));
    ip.fill_checksum();
}

#[cfg(test)]
mod tests {
    use super::*;
    use dialtone_nappt::{Frame, Side, Verdict};

    #[test]
    fn generated_frames_translate_both_ways() {
        let mut fleet = Fleet::new(4000);
        assert!(fleet.phones.len() > 3900 && fleet.phones.len() <= 4000);
        assert_eq!(fleet.config.classes.len(), 4);
        for (inbound, side, want) in [(false, Side::Lan, Verdict::ToWan), (true, Side::Wan, Verdict::ToLan)] {
            let mut batches = fleet.frames(2, 8, inbound, 7);
            for buffer in &mut batches {
                let mut frames: Vec<Frame<'_>> =
                    buffer.chunks_exact_mut(FRAME_STRIDE).map(|c| Frame::new(c, FRAME_LEN, side)).collect();
                let mut out = [Verdict::ToKernel; 8];
                fleet.worker.translate(0, &mut frames, &mut out);
                assert_eq!(out, [want; 8]);
            }
        }
    }
}
