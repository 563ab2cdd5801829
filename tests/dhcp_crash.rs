//! Crash test (issue 3 acceptance; claims 001: 10, 25, 40): while perfdhcp and the test's own
//! recording load client run DORA with many distinct clients, the gateway is killed with
//! SIGKILL. After a restart, every lease the recording client saw ACKed is in the store, with
//! the address it was ACKed with, and no two MACs hold the same address or port block.
//!
//! The recording client speaks DHCP as a relay (giaddr set to its own address), so it needs no
//! raw socket: it binds UDP 67 on a phone-side address from a thread moved into the phones'
//! network namespace, and the gateway answers it at giaddr:67.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsFd;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Gateway, Lab, Scratch};
use dialtone_config::{load, CpuPolicy, MacAddr};
use dialtone_store::{LeaseState, RedbStore, Store};

const VENDOR: &[u8] = b"dialtone-phone";
const SERVER: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 1);
/// The recording client's relay address; perfdhcp uses the next one.
const RELAY: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 2);
const PERF_RELAY: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 3);
const XID_BASE: u32 = 0x5a00_0000;
/// Distinct clients of the recording client (the softphone pool holds 8192 addresses).
const CLIENTS: u32 = 3000;
/// Transactions in flight at once.
const WINDOW: usize = 48;

fn mac_of(i: u32) -> [u8; 6] {
    let b = i.to_be_bytes();
    [0x02, 0xdc, b[0], b[1], b[2], b[3]]
}

/// A relayed DISCOVER (`requested` None) or SELECTING-state REQUEST.
fn message(i: u32, requested: Option<(Ipv4Addr, Ipv4Addr)>) -> Vec<u8> {
    let mut m = vec![0u8; 240];
    m[0] = 1; // BOOTREQUEST
    m[1] = 1; // Ethernet
    m[2] = 6;
    m[3] = 1; // one relay hop
    m[4..8].copy_from_slice(&(XID_BASE + i).to_be_bytes());
    m[24..28].copy_from_slice(&RELAY.octets());
    m[28..34].copy_from_slice(&mac_of(i));
    m[236..240].copy_from_slice(&[99, 130, 83, 99]);
    let kind = if requested.is_some() { 3 } else { 1 };
    m.extend_from_slice(&[53, 1, kind]);
    m.push(60);
    m.push(VENDOR.len() as u8);
    m.extend_from_slice(VENDOR);
    m.extend_from_slice(&[55, 4, 1, 3, 6, 159]);
    if let Some((addr, server)) = requested {
        m.extend_from_slice(&[50, 4]);
        m.extend_from_slice(&addr.octets());
        m.extend_from_slice(&[54, 4]);
        m.extend_from_slice(&server.octets());
    }
    m.push(255);
    m.resize(300, 0);
    m
}

/// (client index, message type, yiaddr, server id) of a reply to one of ours.
fn parse(reply: &[u8]) -> Option<(u32, u8, Ipv4Addr, Option<Ipv4Addr>)> {
    if reply.len() < 240 || reply[0] != 2 || reply[236..240] != [99, 130, 83, 99] {
        return None;
    }
    let xid = u32::from_be_bytes(reply[4..8].try_into().ok()?);
    let i = xid.checked_sub(XID_BASE).filter(|i| *i < CLIENTS)?;
    if reply[28..34] != mac_of(i) {
        return None;
    }
    let yiaddr = Ipv4Addr::new(reply[16], reply[17], reply[18], reply[19]);
    let (mut kind, mut server) = (None, None);
    let mut rest = &reply[240..];
    while let [code, tail @ ..] = rest {
        match code {
            0 => rest = tail,
            255 => break,
            _ => {
                let (&len, tail) = tail.split_first()?;
                let body = tail.get(..usize::from(len))?;
                match (code, body) {
                    (53, [t]) => kind = Some(*t),
                    (54, [a, b, c, d]) => server = Some(Ipv4Addr::new(*a, *b, *c, *d)),
                    _ => {}
                }
                rest = &tail[usize::from(len)..];
            }
        }
    }
    Some((i, kind?, yiaddr, server))
}

/// What the recording client saw.
#[derive(Debug, Default)]
struct Record {
    acked: BTreeMap<u32, Ipv4Addr>,
    naks: usize,
}

/// Runs DORA for clients 0..CLIENTS with `WINDOW` in flight, retransmitting after 300 ms, until
/// every client is ACKed or `stop` is set. Runs on the calling thread, which must already be in
/// the phones' namespace.
fn load_client(stop: &AtomicBool, acks: &AtomicUsize) -> Record {
    let socket = UdpSocket::bind(SocketAddrV4::new(RELAY, 67)).expect("bind the relay address");
    socket.set_read_timeout(Some(Duration::from_millis(5))).expect("timeout");
    let mut record = Record::default();
    // Client -> (when last sent, offered address and server if past the OFFER).
    let mut flight: HashMap<u32, (Instant, Option<(Ipv4Addr, Ipv4Addr)>)> = HashMap::new();
    let mut next = 0u32;
    let mut buf = [0u8; 1500];
    let to = SocketAddrV4::new(SERVER, 67);
    while !stop.load(Ordering::Relaxed) && (next < CLIENTS || !flight.is_empty()) {
        while flight.len() < WINDOW && next < CLIENTS {
            let _ = socket.send_to(&message(next, None), to);
            flight.insert(next, (Instant::now(), None));
            next += 1;
        }
        match socket.recv(&mut buf) {
            Ok(n) => match parse(&buf[..n]) {
                Some((i, 2, yiaddr, Some(server))) if flight.get(&i).is_some_and(|f| f.1.is_none()) => {
                    let _ = socket.send_to(&message(i, Some((yiaddr, server))), to);
                    flight.insert(i, (Instant::now(), Some((yiaddr, server))));
                }
                Some((i, 5, yiaddr, _)) if flight.contains_key(&i) => {
                    flight.remove(&i);
                    record.acked.insert(i, yiaddr);
                    acks.fetch_add(1, Ordering::Relaxed);
                }
                Some((i, 6, _, _)) if flight.contains_key(&i) => {
                    // Start over from DISCOVER.
                    record.naks += 1;
                    let _ = socket.send_to(&message(i, None), to);
                    flight.insert(i, (Instant::now(), None));
                }
                _ => {}
            },
            Err(_) => {
                let now = Instant::now();
                for (i, (sent, offered)) in flight.iter_mut() {
                    if now.duration_since(*sent) > Duration::from_millis(300) {
                        let _ = socket.send_to(&message(*i, *offered), to);
                        *sent = now;
                    }
                }
            }
        }
    }
    record
}

#[test]
fn sigkill_mid_load_loses_no_acked_lease_and_duplicates_nothing() {
    let lab = Lab::up("dk");
    let scratch = Scratch::new("dk");
    let path = scratch.lab_config();
    let config = load(&path, CpuPolicy::Ignore).expect("lab config").config;
    let class = config.classes.iter().find(|c| c.name == "softphone").expect("softphone class").clone();
    lab.phone_address(&format!("{RELAY}/16"));
    lab.phone_address(&format!("{PERF_RELAY}/16"));

    let mut gw = Gateway::start(&lab, &path, scratch.0.join("gw1.log"));
    gw.wait_for_log("dhcp server started", Duration::from_secs(20));

    // Background load: perfdhcp DORA with its own distinct clients through the same server.
    let vendor_hex: String = VENDOR.iter().map(|b| format!("{b:02x}")).collect();
    let perf = lab
        .exec("phones", "perfdhcp")
        .args(["-4", "-l", &PERF_RELAY.to_string(), "-r", "300", "-R", "2000", "-p", "8"])
        .args(["-o", &format!("60,{vendor_hex}"), "-b", "mac=02:ee:00:00:00:00", &SERVER.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("perfdhcp (scripts/setup.sh installs kea-admin)");

    // Let perfdhcp get going first.
    std::thread::sleep(Duration::from_millis(500));

    // The recording client, on a thread moved into the phones' namespace.
    let stop = Arc::new(AtomicBool::new(false));
    let acks = Arc::new(AtomicUsize::new(0));
    let netns = std::fs::File::open(format!("/run/netns/{}", lab.ns("phones"))).expect("phones netns");
    let client = {
        let (stop, acks) = (Arc::clone(&stop), Arc::clone(&acks));
        std::thread::spawn(move || {
            rustix::thread::move_into_link_name_space(netns.as_fd(), Some(rustix::thread::LinkNameSpaceType::Network))
                .expect("setns into the phones' namespace");
            load_client(&stop, &acks)
        })
    };

    // Kill the gateway mid-run: once some leases are ACKed, well before all are.
    let started = Instant::now();
    while acks.load(Ordering::Relaxed) < CLIENTS as usize / 2 {
        assert!(started.elapsed() < Duration::from_secs(20), "too few ACKs before the kill:\n{}", gw.log_text());
        assert!(!client.is_finished(), "the load client ended early");
        std::thread::sleep(Duration::from_millis(5));
    }
    let status = gw.stop_with(9, Duration::from_secs(10));
    assert!(!status.success(), "SIGKILL must end the gateway abnormally");
    let at_kill = acks.load(Ordering::Relaxed);
    // Replies already in flight may still arrive; then nothing answers.
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let record = client.join().expect("load client");
    assert!(record.acked.len() < CLIENTS as usize, "the kill came after the whole run");
    let perf_out = perf.wait_with_output().expect("perfdhcp");
    let perf_text = String::from_utf8_lossy(&perf_out.stdout);
    assert!(perf_text.contains("sent packets"), "perfdhcp did not run: {perf_text}");

    // Restart on the same store: it must come up from what the dead process left on disk…
    let mut gw = Gateway::start(&lab, &path, scratch.0.join("gw2.log"));
    gw.wait_for_log("dhcp server started", Duration::from_secs(20));
    assert!(gw.stop_with(15, Duration::from_secs(20)).success(), "{}", gw.log_text());

    // …and hold every ACKed lease with the ACKed address.
    let store = RedbStore::open(&scratch.0.join("lab.redb")).expect("open the store");
    let snapshot = store.snapshot().expect("snapshot");
    let mut by_mac: HashMap<(String, MacAddr), (Ipv4Addr, LeaseState)> = HashMap::new();
    let (mut addresses, mut blocks) = (HashSet::new(), HashSet::new());
    for lease in &snapshot.leases {
        let c = config.classes.iter().find(|c| c.name == lease.class).expect("lease of a configured class");
        let addr = c.address_at(lease.offset).expect("offset inside the pool");
        assert!(addresses.insert(addr), "two leases hold {addr}");
        assert!(
            blocks.insert((lease.block.public_ip, lease.block.port_lo)),
            "two leases hold the block {}:{}",
            lease.block.public_ip,
            lease.block.port_lo
        );
        assert_eq!(Some(lease.block), c.port_block_of(addr), "stored block of {addr}");
        assert!(
            by_mac.insert((lease.class.clone(), lease.mac), (addr, lease.state)).is_none(),
            "two leases for {} in {}",
            lease.mac,
            lease.class
        );
    }
    for (i, addr) in &record.acked {
        let mac = MacAddr(mac_of(*i));
        match by_mac.get(&("softphone".to_owned(), mac)) {
            Some((stored, LeaseState::Bound)) => assert_eq!(stored, addr, "{mac} was ACKed {addr}"),
            other => panic!("{mac} was ACKed {addr} but the store holds {other:?}"),
        }
        assert!(class.lan_pool.contains(addr), "{addr} outside the softphone pool");
    }
    // Sticky bindings too: one address per MAC and one MAC per address.
    let mut bound = HashSet::new();
    for b in &snapshot.bindings {
        assert!(bound.insert((b.class.clone(), b.offset)), "two bindings to {} offset {}", b.class, b.offset);
    }
    eprintln!(
        "crash test: {} ACKed before the kill ({} recorded, {} NAKs), {} leases in the store",
        at_kill,
        record.acked.len(),
        record.naks,
        snapshot.leases.len()
    );
}
