//! Golden vectors (built by scapy in tests/vectors/make_nappt_vectors.py, never by this crate)
//! and property tests of the translator against full-recompute checksums from `dialtone-wire`.

use std::net::Ipv4Addr;
use std::path::Path;
use std::str::FromStr;
use std::sync::OnceLock;

use dialtone_config::{Config, CpuPolicy, MacAddr};
use dialtone_wire::ethernet::EthernetFrame;
use dialtone_wire::icmpv4::Icmpv4Packet;
use dialtone_wire::ipv4::{Ipv4Packet, PROTOCOL_ICMP, PROTOCOL_TCP, PROTOCOL_UDP};
use dialtone_wire::{TcpPacket, UdpPacket};
use proptest::prelude::*;
use serde_json::Value;

use crate::{DropReason, Frame, Nappt, Side, Update, Verdict};

const VECTORS: &str = include_str!("../../../tests/vectors/nappt_vectors.json");
const FRAME_CAPACITY: usize = 2048;

fn vectors() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| serde_json::from_str(VECTORS).expect("the checked-in vectors are JSON"))
}

fn config_from(toml: &str) -> Config {
    dialtone_config::load_str("vectors.toml", toml, Path::new("/"), CpuPolicy::Ignore)
        .unwrap_or_else(|e| panic!("vector config does not load: {e:?}"))
        .config
}

fn mac(text: &str) -> MacAddr {
    MacAddr::from_str(text).expect("vector MACs parse")
}

fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or_else(|| panic!("`{key}` is a string in {v}"))
}

fn unhex(hex: &str) -> Vec<u8> {
    (0..hex.len() / 2).map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex")).collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn verdict_name(verdict: Verdict) -> String {
    match verdict {
        Verdict::ToWan => "to_wan".into(),
        Verdict::ToLan => "to_lan".into(),
        Verdict::ToKernel => "to_kernel".into(),
        Verdict::Drop(reason) => format!("drop:{}", reason.name()),
    }
}

/// The worker of the vectors' fixed table state.
fn vector_worker(doc: &Value) -> (Config, Nappt) {
    let (config, _) = property_worker(&[]);
    let mut worker = Nappt::new(&config, 0x5eed);
    let macs = &doc["interface_macs"];
    worker
        .apply(Update::InterfaceMacs { lan: mac(text(macs, "lan")), wan: mac(text(macs, "wan")) })
        .expect("interface MACs apply");
    worker.apply(Update::NextHop { mac: Some(mac(text(doc, "next_hop_mac"))) }).expect("next hop applies");
    for lease in doc["leases"].as_array().expect("leases") {
        let class = lease["class"].as_u64().expect("class") as u16;
        let offset = lease["offset"].as_u64().expect("offset") as u32;
        let address: Ipv4Addr = text(lease, "address").parse().expect("address");
        assert_eq!(config.classes[usize::from(class)].address_at(offset), Some(address), "lease {lease}");
        worker.apply(Update::LeaseUp { class, offset, mac: mac(text(lease, "mac")) }).expect("lease applies");
    }
    (config, worker)
}

/// Runs one frame through the worker; returns the verdict and the output bytes.
fn run(worker: &mut Nappt, now_ms: u64, side: Side, input: &[u8]) -> (Verdict, Vec<u8>) {
    let mut buffer = vec![0u8; FRAME_CAPACITY];
    buffer[..input.len()].copy_from_slice(input);
    let mut frames = [Frame::new(&mut buffer, input.len(), side)];
    let mut out = [Verdict::ToKernel];
    worker.translate(now_ms, &mut frames, &mut out);
    let bytes = frames[0].bytes().to_vec();
    (out[0], bytes)
}

#[test]
fn golden_vectors() {
    let doc = vectors();
    let (_, mut worker) = vector_worker(doc);
    let cases = doc["cases"].as_array().expect("cases");
    assert!(cases.len() >= 60, "the vector file lost cases");
    let mut failures = Vec::new();
    for case in cases {
        let name = text(case, "name");
        let side = match text(case, "side") {
            "lan" => Side::Lan,
            "wan" => Side::Wan,
            other => panic!("{name}: side {other}"),
        };
        let input = unhex(text(case, "input"));
        let now_ms = case["now_ms"].as_u64().expect("now_ms");
        let (verdict, output) = run(&mut worker, now_ms, side, &input);
        let want_verdict = text(case, "verdict");
        if verdict_name(verdict) != want_verdict {
            failures.push(format!("{name}: verdict {} want {want_verdict}", verdict_name(verdict)));
            continue;
        }
        if let Some(expected) = case["expected"].as_str() {
            if hex(&output) != expected {
                failures.push(format!("{name}:\n  got  {}\n  want {expected}", hex(&output)));
                continue;
            }
        }
        if matches!(verdict, Verdict::ToWan | Verdict::ToLan) {
            if let Err(why) = checksums_are_full_recompute(&output) {
                failures.push(format!("{name}: {why}"));
            }
        }
    }
    assert!(failures.is_empty(), "{} of {} vectors fail:\n{}", failures.len(), cases.len(), failures.join("\n"));
    let counters = worker.counters();
    assert!(counters.dropped_total() > 0 && counters.time_exceeded_sent > 0 && counters.echo_remapped > 0);
    assert!(counters.fragments_followed >= 4 && counters.hairpinned >= 2);
}

/// Every checksum of `frame` equals what a full recompute (`dialtone-wire`, RFC 1071) gives,
/// bit for bit (the transport checksum only when the packet is not a fragment).
fn checksums_are_full_recompute(frame: &[u8]) -> Result<(), String> {
    let eth = EthernetFrame::new_checked(frame).map_err(|e| format!("ethernet: {e}"))?;
    let ip_bytes = &frame[eth.header_len()..];
    let ip = Ipv4Packet::new_checked(ip_bytes).map_err(|e| format!("ipv4: {e}"))?;
    let mut header = ip.header().to_vec();
    let mut fresh = Ipv4Packet::new_unchecked(&mut header[..]);
    fresh.fill_checksum();
    if fresh.checksum() != ip.checksum() {
        return Err(format!("IP checksum {:04x}, full recompute {:04x}", ip.checksum(), fresh.checksum()));
    }
    if ip.is_fragment() {
        return Ok(());
    }
    let (src, dst) = (ip.src_addr().octets(), ip.dst_addr().octets());
    let mut l4 = ip.payload().to_vec();
    let (got, want) = match ip.protocol() {
        PROTOCOL_UDP => {
            let mut udp = UdpPacket::new_checked(&mut l4[..]).map_err(|e| format!("udp: {e}"))?;
            let got = udp.checksum();
            if got == 0 {
                return Ok(());
            }
            udp.fill_checksum(src, dst);
            (got, udp.checksum())
        }
        PROTOCOL_TCP => {
            let mut tcp = TcpPacket::new_checked(&mut l4[..]).map_err(|e| format!("tcp: {e}"))?;
            let got = tcp.checksum();
            tcp.fill_checksum(src, dst);
            (got, tcp.checksum())
        }
        PROTOCOL_ICMP => {
            let mut icmp = Icmpv4Packet::new_checked(&mut l4[..]).map_err(|e| format!("icmp: {e}"))?;
            let got = icmp.checksum();
            icmp.fill_checksum();
            (got, icmp.checksum())
        }
        _ => return Ok(()),
    };
    if got != want {
        return Err(format!("transport checksum {got:04x}, full recompute {want:04x}"));
    }
    Ok(())
}

// ------------------------------------------------------------------------------ properties

const GW_LAN_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
const GW_WAN_MAC: [u8; 6] = [2, 0, 0, 0, 1, 1];
const NEXT_HOP_MAC: [u8; 6] = [2, 0, 0, 0, 1, 0xfe];

/// A worker over the vectors' configuration with the given offsets of every class leased.
fn property_worker(leased: &[(u16, u32)]) -> (Config, Nappt) {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    let config = CONFIG.get_or_init(|| config_from(text(vectors(), "config_toml"))).clone();
    let mut worker = Nappt::new(&config, 1);
    worker.apply(Update::InterfaceMacs { lan: MacAddr(GW_LAN_MAC), wan: MacAddr(GW_WAN_MAC) }).expect("macs");
    worker.apply(Update::NextHop { mac: Some(MacAddr(NEXT_HOP_MAC)) }).expect("next hop");
    for &(class, offset) in leased {
        let phone_mac = MacAddr([0x80, 0x5e, 0xc0, class as u8, (offset >> 8) as u8, offset as u8]);
        worker.apply(Update::LeaseUp { class, offset, mac: phone_mac }).expect("lease");
    }
    (config, worker)
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Udp { zero_checksum: bool },
    Tcp,
    Echo { request: bool },
}

/// A frame built field by field with `dialtone-wire` setters and full-recompute checksums.
#[allow(clippy::too_many_arguments)]
fn build(kind: Kind, src: u32, dst: u32, sport: u16, dport: u16, ttl: u8, payload: &[u8], src_mac: [u8; 6]) -> Vec<u8> {
    let (protocol, l4_len) = match kind {
        Kind::Udp { .. } => (PROTOCOL_UDP, 8 + payload.len()),
        Kind::Tcp => (PROTOCOL_TCP, 20 + payload.len()),
        Kind::Echo { .. } => (PROTOCOL_ICMP, 8 + payload.len()),
    };
    let mut frame = vec![0u8; 14 + 20 + l4_len];
    frame[..6].copy_from_slice(&GW_LAN_MAC);
    frame[6..12].copy_from_slice(&src_mac);
    frame[12..14].copy_from_slice(&[0x08, 0x00]);
    let (s, d) = (src.to_be_bytes(), dst.to_be_bytes());
    {
        let l4 = &mut frame[34..];
        match kind {
            Kind::Udp { zero_checksum } => {
                l4[8..].copy_from_slice(payload);
                let mut udp = UdpPacket::new_unchecked(&mut *l4);
                udp.set_src_port(sport);
                udp.set_dst_port(dport);
                udp.set_len(l4_len as u16);
                if !zero_checksum {
                    udp.fill_checksum(s, d);
                }
            }
            Kind::Tcp => {
                l4[20..].copy_from_slice(payload);
                l4[12] = 0x50;
                l4[13] = 0x18;
                let mut tcp = TcpPacket::new_unchecked(&mut *l4);
                tcp.set_src_port(sport);
                tcp.set_dst_port(dport);
                tcp.fill_checksum(s, d);
            }
            Kind::Echo { request } => {
                l4[8..].copy_from_slice(payload);
                let mut icmp = Icmpv4Packet::new_unchecked(&mut *l4);
                icmp.set_msg_type(if request { 8 } else { 0 });
                icmp.set_echo_ident(sport);
                icmp.fill_checksum();
            }
        }
    }
    let mut ip = Ipv4Packet::new_unchecked(&mut frame[14..]);
    ip.set_version_and_header_len(20);
    ip.set_total_len((20 + l4_len) as u16);
    ip.set_ident(0xabcd);
    ip.set_ttl(ttl);
    ip.set_protocol(protocol);
    ip.set_src_u32(src);
    ip.set_dst_u32(dst);
    ip.fill_checksum();
    frame
}

struct Seen {
    src: u32,
    dst: u32,
    sport: u16,
    dport: u16,
}

fn addresses_and_ports(frame: &[u8]) -> Seen {
    let ip = Ipv4Packet::new_checked(&frame[14..]).expect("translated frames are IPv4");
    let l4 = ip.payload();
    let (sport, dport) = if ip.protocol() == PROTOCOL_ICMP {
        let id = u16::from_be_bytes([l4[4], l4[5]]);
        (id, id)
    } else {
        (u16::from_be_bytes([l4[0], l4[1]]), u16::from_be_bytes([l4[2], l4[3]]))
    };
    Seen { src: ip.src_u32(), dst: ip.dst_u32(), sport, dport }
}

fn kind_strategy() -> impl Strategy<Value = Kind> {
    prop_oneof![
        any::<bool>().prop_map(|zero_checksum| Kind::Udp { zero_checksum }),
        Just(Kind::Tcp),
        Just(Kind::Echo { request: true }),
    ]
}

const REMOTE: u32 = 0xcb00_710a; // 203.0.113.10

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Outbound then inbound: checksums equal a full recompute both ways, the port never
    /// changes, the public (address, port) names the sender, and the reply gets back to it.
    #[test]
    fn outbound_then_inbound_round_trip(
        class in 0u16..2,
        offset_seed in any::<u32>(),
        port_seed in any::<u16>(),
        kind in kind_strategy(),
        ttl in 2u8..=255,
        payload in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let (config, _) = property_worker(&[]);
        let plan = config.classes[usize::from(class)].plan;
        let offset = offset_seed % plan.phones;
        let (_, mut worker) = property_worker(&[(class, offset)]);
        let block = plan.port_block_for(offset).expect("offset in plan");
        let port = block.port_lo + port_seed % (block.len() as u16);
        let private = u32::from(config.classes[usize::from(class)].address_at(offset).expect("address"));
        let input = build(kind, private, REMOTE, port, 5060, ttl, &payload, [0x80, 0x5e, 0xc0, 0, 0, 9]);
        let (verdict, out) = run(&mut worker, 0, Side::Lan, &input);
        prop_assert_eq!(verdict, Verdict::ToWan);
        prop_assert_eq!(checksums_are_full_recompute(&out), Ok(()));
        let seen = addresses_and_ports(&out);
        prop_assert_eq!(seen.src, u32::from(block.public_ip));
        prop_assert_eq!(seen.dst, REMOTE);
        prop_assert_eq!(seen.sport, port, "ports are never rewritten");
        prop_assert_eq!(plan.offset_for(Ipv4Addr::from(seen.src), seen.sport), Some(offset));
        prop_assert_eq!(out[14 + 8], ttl - 1);
        prop_assert_eq!(&out[..6], &NEXT_HOP_MAC[..]);
        prop_assert_eq!(&out[6..12], &GW_WAN_MAC[..]);

        let reply_kind = match kind { Kind::Echo { .. } => Kind::Echo { request: false }, other => other };
        // An echo reply carries the request's identifier; UDP and TCP swap the ports.
        let reply_sport = if matches!(kind, Kind::Echo { .. }) { seen.sport } else { 5060 };
        let reply = build(reply_kind, REMOTE, seen.src, reply_sport, seen.sport, ttl, &payload, NEXT_HOP_MAC);
        let (verdict, back) = run(&mut worker, 0, Side::Wan, &reply);
        prop_assert_eq!(verdict, Verdict::ToLan);
        prop_assert_eq!(checksums_are_full_recompute(&back), Ok(()));
        let seen = addresses_and_ports(&back);
        prop_assert_eq!(seen.dst, private, "the reply gets the phone's address back");
        prop_assert_eq!(seen.dport, port);
        prop_assert_eq!(seen.src, REMOTE);
    }

    /// Whatever a LAN host sends (any pool address, leased or not, any port, any echo id),
    /// nothing leaves with a port outside the sender's block or another phone's address.
    #[test]
    fn no_output_outside_the_senders_block(
        leased in proptest::collection::vec((0u16..2, 0u32..64), 1..8),
        sender in (0u16..2, 0u32..64),
        port in any::<u16>(),
        kind in kind_strategy(),
        dst_is_phone in any::<bool>(),
    ) {
        let (config, mut worker) = property_worker(&leased);
        let (class, offset) = sender;
        let class_config = &config.classes[usize::from(class)];
        let private = u32::from(class_config.address_at(offset).expect("offset < 64 is in both pools"));
        let dst = if dst_is_phone { u32::from(config.classes[0].plan.public_base) } else { REMOTE };
        let input = build(kind, private, dst, port, 9000, 64, b"x", [2, 2, 2, 2, 2, 2]);
        let (verdict, out) = run(&mut worker, 0, Side::Lan, &input);
        let sender_leased = leased.contains(&(class, offset));
        let block = class_config.plan.port_block_for(offset).expect("block");
        match verdict {
            Verdict::ToWan | Verdict::ToLan if out[14 + 9] != PROTOCOL_ICMP || out[34] != 11 => {
                prop_assert!(sender_leased);
                let seen = addresses_and_ports(&out);
                prop_assert_eq!(seen.src, u32::from(block.public_ip));
                prop_assert!(block.contains(seen.sport), "port {} outside {:?}", seen.sport, block);
                if verdict == Verdict::ToLan {
                    // Hairpin: the destination is the leased phone owning (dst, dport).
                    let owner = config.classes[0].plan.offset_for(Ipv4Addr::from(dst), 9000);
                    prop_assert!(owner.is_some_and(|o| leased.contains(&(0, o))));
                }
            }
            Verdict::Drop(DropReason::SourceNotLeased) => prop_assert!(!sender_leased),
            _ => {}
        }
    }

    /// Arbitrary bytes, on either side, with any capacity, never panic and never grow a frame
    /// past its buffer.
    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..200),
        spare in 0usize..64,
        wan in any::<bool>(),
    ) {
        let (_, mut worker) = property_worker(&[(0, 5), (1, 3)]);
        let mut buffer = bytes.clone();
        buffer.resize(bytes.len() + spare, 0);
        let side = if wan { Side::Wan } else { Side::Lan };
        let mut frames = [Frame::new(&mut buffer, bytes.len(), side)];
        let mut out = [Verdict::ToKernel];
        worker.translate(0, &mut frames, &mut out);
        prop_assert!(frames[0].len() <= bytes.len() + spare);
    }

    /// Valid frames with a few bytes changed explore the deep paths (ICMP quotes, fragments,
    /// options) that random bytes rarely reach.
    #[test]
    fn mutated_vectors_never_panic(
        case in 0usize..67,
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
        truncate in any::<Option<usize>>(),
    ) {
        let doc = vectors();
        let (_, mut worker) = vector_worker(doc);
        let cases = doc["cases"].as_array().expect("cases");
        let case = &cases[case % cases.len()];
        let mut input = unhex(text(case, "input"));
        for (at, value) in flips {
            let len = input.len();
            input[at % len] = value;
        }
        if let Some(keep) = truncate {
            input.truncate(keep % (input.len() + 1));
        }
        for side in [Side::Lan, Side::Wan] {
            let _ = run(&mut worker, 0, side, &input);
        }
    }
}

proptest! {
    /// The fast paths give exactly the general path's verdict and bytes whenever they take a
    /// frame (and leave it untouched when they do not).
    #[test]
    fn fast_paths_agree_with_the_general_path(
        case in 0usize..67,
        flips in proptest::collection::vec((0usize..60, any::<u8>()), 0..3),
        wan in any::<bool>(),
    ) {
        let doc = vectors();
        let (_, worker) = vector_worker(doc);
        let cases = doc["cases"].as_array().expect("cases");
        let mut input = unhex(text(&cases[case % cases.len()], "input"));
        for (at, value) in flips {
            let len = input.len();
            input[at % len] = value;
        }
        let side = if wan { Side::Wan } else { Side::Lan };
        let (mut fast_worker, mut slow_worker) = (worker.clone(), worker);
        let mut fast_buffer = input.clone();
        fast_buffer.resize(FRAME_CAPACITY, 0);
        let mut slow_buffer = fast_buffer.clone();
        let mut fast_frame = Frame::new(&mut fast_buffer, input.len(), side);
        let fast = fast_worker.fast_one(&mut fast_frame);
        let fast_bytes = fast_frame.bytes().to_vec();
        let mut slow_frame = Frame::new(&mut slow_buffer, input.len(), side);
        let slow = match side {
            Side::Lan => slow_worker.translate_lan_frame(0, &mut slow_frame),
            Side::Wan => slow_worker.translate_wan_frame(0, &mut slow_frame),
        };
        match fast {
            Some(verdict) => {
                prop_assert_eq!(Ok(verdict), slow);
                prop_assert_eq!(hex(&fast_bytes), hex(slow_frame.bytes()));
            }
            None => prop_assert_eq!(hex(&fast_bytes), hex(&input)),
        }
    }
}

proptest! {
    /// Every outbound destination the exact tests send elsewhere (the gateway, the LAN,
    /// multicast and broadcast, the span of the public pools) is in a /16 the filter marks:
    /// the filter may only add work, never skip a test that matters.
    #[test]
    fn the_destination_filter_marks_every_special_destination(anywhere in any::<u32>(), delta in 0u32..70_000) {
        let (_, worker) = vector_worker(vectors());
        // The gateway's WAN address (192.0.2.1), the LAN (100.64.0.0/16), multicast: ± delta.
        let mut addrs = vec![anywhere, 0xE000_0000 + delta, 0xDFFF_FFFF - delta, 0xC000_0201, 0x6440_0000 + delta];
        for table in worker.classes() {
            for edge in [table.lan_base, table.lan_base + table.phones, table.public_base, table.public_base + table.public_addresses] {
                addrs.extend([edge.wrapping_add(delta), edge.wrapping_sub(delta)]);
            }
        }
        let mut special = 0;
        for addr in addrs {
            let (marked, exact) = worker.special_destination(addr);
            prop_assert!(marked || !exact, "{:#010x} is special but its /16 is not marked", addr);
            special += usize::from(exact);
        }
        prop_assert!(special > 0 || delta > 0, "the pool edges themselves are special");
    }

    /// The prefix maps find the same class, offset and public index as checking every class,
    /// for addresses anywhere and at the edges of every pool.
    #[test]
    fn prefix_maps_agree_with_the_class_scan(anywhere in any::<u32>(), delta in 0u32..300) {
        let (_, worker) = vector_worker(vectors());
        let mut addrs = vec![anywhere];
        for table in worker.classes() {
            for edge in [table.lan_base, table.lan_base + table.phones, table.public_base, table.public_base + table.public_addresses] {
                addrs.extend([edge.wrapping_add(delta), edge.wrapping_sub(delta)]);
            }
        }
        for addr in addrs {
            let [mapped, scanned] = worker.lookups_both_ways(addr);
            prop_assert_eq!(mapped, scanned, "{:#x}", addr);
        }
    }

    /// A batch (fast frames first, then the rest in order) gives every frame the verdict and
    /// bytes the general path gives it frame by frame in arrival order, and the same counters,
    /// across group boundaries.
    #[test]
    fn batches_agree_with_frame_by_frame_translation(
        picks in proptest::collection::vec((0usize..67, any::<bool>(), proptest::option::of((0usize..60, any::<u8>()))), 1..140),
    ) {
        let doc = vectors();
        let (_, worker) = vector_worker(doc);
        let cases = doc["cases"].as_array().expect("cases");
        let inputs: Vec<(Vec<u8>, Side)> = picks
            .iter()
            .map(|&(case, wan, flip)| {
                let mut input = unhex(text(&cases[case % cases.len()], "input"));
                if let Some((at, value)) = flip {
                    let len = input.len();
                    input[at % len] = value;
                }
                (input, if wan { Side::Wan } else { Side::Lan })
            })
            .collect();
        let (mut batch_worker, mut single_worker) = (worker.clone(), worker);
        let mut batch_buffers: Vec<Vec<u8>> = inputs.iter().map(|(input, _)| {
            let mut buffer = input.clone();
            buffer.resize(FRAME_CAPACITY, 0);
            buffer
        }).collect();
        let mut single_buffers = batch_buffers.clone();
        let mut frames: Vec<Frame<'_>> = batch_buffers
            .iter_mut()
            .zip(&inputs)
            .map(|(buffer, (input, side))| Frame::new(buffer, input.len(), *side))
            .collect();
        let mut out = vec![Verdict::ToKernel; frames.len()];
        batch_worker.translate(7, &mut frames, &mut out);
        let batch_bytes: Vec<String> = frames.iter().map(|frame| hex(frame.bytes())).collect();
        let mut verdicts = Vec::new();
        for (i, (buffer, (input, side))) in single_buffers.iter_mut().zip(&inputs).enumerate() {
            let mut frame = Frame::new(buffer, input.len(), *side);
            let verdict = match side {
                Side::Lan => single_worker.translate_lan_frame(7, &mut frame),
                Side::Wan => single_worker.translate_wan_frame(7, &mut frame),
            }
            .unwrap_or_else(Verdict::Drop);
            verdicts.push(verdict);
            prop_assert_eq!(out[i], verdict, "frame {}", i);
            prop_assert_eq!(&batch_bytes[i], &hex(frame.bytes()), "frame {}", i);
        }
        // The general path counts its side effects (time exceeded sent, echo remapped, …)
        // itself; the batch also counts every verdict.
        let mut expected = single_worker.counters();
        verdicts.into_iter().for_each(|verdict| expected.count(verdict));
        prop_assert_eq!(batch_worker.counters(), expected);
    }
}

#[test]
fn updates_out_of_range_are_refused() {
    let (_, mut worker) = property_worker(&[]);
    let m = MacAddr([2, 0, 0, 0, 0, 9]);
    assert_eq!(worker.apply(Update::LeaseUp { class: 9, offset: 0, mac: m }), Err(crate::UpdateError::NoSuchClass(9)));
    assert!(worker.apply(Update::LeaseUp { class: 0, offset: 256, mac: m }).is_err());
    assert!(worker.apply(Update::LeaseUp { class: 0, offset: 255, mac: m }).is_ok());
    assert!(worker.apply(Update::LeaseUp { class: 0, offset: 1, mac: MacAddr([1, 0, 0, 0, 0, 1]) }).is_err());
    assert!(worker.apply(Update::LeaseDown { class: 1, offset: 64 }).is_err());
}

#[test]
fn lease_down_stops_traffic_and_unknown_next_hop_drops() {
    let (config, mut worker) = property_worker(&[(0, 5)]);
    let private = u32::from(config.classes[0].address_at(5).expect("address"));
    let input = build(Kind::Tcp, private, REMOTE, 6144, 443, 64, b"", [2, 2, 2, 2, 2, 2]);
    assert_eq!(run(&mut worker, 0, Side::Lan, &input).0, Verdict::ToWan);
    worker.apply(Update::NextHop { mac: None }).expect("next hop unknown");
    assert_eq!(run(&mut worker, 0, Side::Lan, &input).0, Verdict::Drop(DropReason::NoNextHop));
    worker.apply(Update::LeaseDown { class: 0, offset: 5 }).expect("lease down");
    assert_eq!(run(&mut worker, 0, Side::Lan, &input).0, Verdict::Drop(DropReason::SourceNotLeased));
    assert_eq!(worker.counters().dropped(DropReason::SourceNotLeased), 1);
    // 256 and 64 offsets: 15 bytes each and one bit, in whole 8-byte words (4 and 1).
    assert_eq!(worker.table_bytes(), (256 + 64) * 15 + (4 + 1) * 8);
    assert_eq!(crate::BITS_PER_PHONE, 15 * 8 + 1);
}

#[test]
fn a_released_phone_is_dropped_on_the_fast_path_too() {
    // With the next hop known the outbound fast path sees the frame: it must find the lease
    // gone (its leased bitmap follows every release) and leave the drop to the general path.
    let (config, mut worker) = property_worker(&[(0, 5), (0, 70)]);
    for offset in [5, 70] {
        let private = u32::from(config.classes[0].address_at(offset).expect("address"));
        let port_lo = config.classes[0].plan.port_block_for(offset).expect("block").port_lo;
        let input = build(Kind::Udp { zero_checksum: false }, private, REMOTE, port_lo, 5060, 64, b"", [2; 6]);
        assert_eq!(run(&mut worker, 0, Side::Lan, &input).0, Verdict::ToWan, "offset {offset} leased");
        worker.apply(Update::LeaseDown { class: 0, offset }).expect("lease down");
        assert_eq!(
            run(&mut worker, 0, Side::Lan, &input).0,
            Verdict::Drop(DropReason::SourceNotLeased),
            "offset {offset} released"
        );
        worker.apply(Update::LeaseUp { class: 0, offset, mac: MacAddr([2, 0, 0, 0, 0, 9]) }).expect("lease up");
        assert_eq!(run(&mut worker, 0, Side::Lan, &input).0, Verdict::ToWan, "offset {offset} leased again");
    }
}

#[test]
fn time_exceeded_needs_room_in_the_buffer() {
    let (config, mut worker) = property_worker(&[(0, 5)]);
    let private = u32::from(config.classes[0].address_at(5).expect("address"));
    let mut input = build(Kind::Udp { zero_checksum: false }, private, REMOTE, 6144, 53, 1, b"", [2; 6]);
    let len = input.len();
    let mut frames = [Frame::new(&mut input, len, Side::Lan)];
    let mut out = [Verdict::ToKernel];
    worker.translate(0, &mut frames, &mut out);
    assert_eq!(out[0], Verdict::Drop(DropReason::FrameTooSmall));
}

#[test]
fn batch_gets_one_verdict_per_frame() {
    let (config, mut worker) = property_worker(&[(0, 5)]);
    let private = u32::from(config.classes[0].address_at(5).expect("address"));
    let mut a = build(Kind::Tcp, private, REMOTE, 6144, 443, 64, b"", [2; 6]);
    let mut b = build(Kind::Tcp, private, REMOTE, 80, 443, 64, b"", [2; 6]);
    let mut c = vec![0u8; 10];
    let (la, lb) = (a.len(), b.len());
    let mut frames =
        [Frame::new(&mut a, la, Side::Lan), Frame::new(&mut b, lb, Side::Lan), Frame::new(&mut c, 10, Side::Wan)];
    let mut out = [Verdict::ToKernel; 3];
    worker.translate(0, &mut frames, &mut out);
    assert_eq!(
        out,
        [Verdict::ToWan, Verdict::Drop(DropReason::PortOutsideBlock), Verdict::Drop(DropReason::Malformed)]
    );
    let counters = worker.counters();
    assert_eq!((counters.to_wan, counters.dropped_total()), (1, 2));
}
