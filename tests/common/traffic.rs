//! dialtone-traffic's loops run in threads moved into the lab's namespaces: leasing phones from
//! the real gateway's DHCP, sending from their port blocks, receiving and checking behind it.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use dialtone_config::{Config, CpuPolicy};
use dialtone_traffic::check::{Checker, Direction};
use dialtone_traffic::fleet::{SlotPhone, Slots};
use dialtone_traffic::generator::{self, ChurnSummary, Classes, LeaseDriver, Mode, SendPlan, SendSummary};
use dialtone_traffic::lease::{Lease, LeaseCounters, LeaseEngine};
use dialtone_traffic::receiver::{Receiver, Summary};
use dialtone_traffic::sys::{self, PacketSocket, RxRing, XskTx};

use super::{run, Lab};

/// Vendor class of the benchmark phones.
pub const VENDOR_CLASS: &[u8] = b"dialtone-bench";
/// The far end's address in the lab.
pub const FAR: std::net::Ipv4Addr = std::net::Ipv4Addr::new(203, 0, 113, 10);

/// The benchmark configuration (one class of 64-port phones) with state under `dir`.
pub fn bench_config_text(dir: &Path, dataplane: bool) -> String {
    format!(
        r#"
[lan]
interface = "lan0"
address = "100.64.0.1/16"

[wan]
interface = "wan0"
address = "192.0.2.1/24"
next_hop = "192.0.2.254"

[store]
path = "{dir}/dialtone.redb"

[logging]
level = "info"

[dataplane]
enabled = {dataplane}
cpus = [1]

[tftp]
enabled = false

[preprov]
enabled = false

[provisioning]
enabled = false

[management]
listen = "127.0.0.1:9000"
token = "lab-management-token-not-for-production"

[[class]]
name = "bench"
vendor_class = {{ exact = "dialtone-bench" }}
ports_per_phone = 64
lan_pool = "100.64.128.0/17"
public_pool = "198.51.100.0/26"
lease_time = "1h"
tftp_root = "{dir}"
"#,
        dir = dir.display()
    )
}

/// Writes the benchmark configuration to `dir/dialtone.toml` and loads it.
pub fn write_bench_config(dir: &Path, dataplane: bool) -> (std::path::PathBuf, Config) {
    write_config(dir, bench_config_text(dir, dataplane))
}

/// As [`write_bench_config`] with the dataplane on and `dataplane.xdp_mode = xdp_mode`.
pub fn write_bench_config_xdp(dir: &Path, xdp_mode: &str) -> (std::path::PathBuf, Config) {
    let text =
        bench_config_text(dir, true).replace("cpus = [1]\n", &format!("cpus = [1]\nxdp_mode = \"{xdp_mode}\"\n"));
    assert!(text.contains("xdp_mode"), "the dataplane section moved");
    write_config(dir, text)
}

fn write_config(dir: &Path, text: String) -> (std::path::PathBuf, Config) {
    let path = dir.join("dialtone.toml");
    std::fs::write(&path, text).expect("write config");
    let config = dialtone_config::load(&path, CpuPolicy::Ignore).expect("valid configuration").config;
    (path, config)
}

/// Loads an nft ruleset inside namespace `side`.
pub fn nft(lab: &Lab, side: &str, ruleset: &str) {
    let path = std::env::temp_dir().join(format!("dialtone-{}-{side}-{}.nft", lab.prefix, ruleset.len()));
    std::fs::write(&path, ruleset).expect("write nft ruleset");
    let out = run(lab.exec(side, "nft").arg("-f").arg(&path));
    let _ = std::fs::remove_file(&path);
    assert!(out.status.success(), "nft in {side}: {}\n{ruleset}", String::from_utf8_lossy(&out.stderr));
}

/// The far end drops the test frames at ingress, after the receiver's packet tap saw them, so
/// no ICMP port unreachable goes back through the gateway.
pub fn drop_test_frames_at_far_end(lab: &Lab) {
    nft(
        lab,
        "net",
        "table netdev sink {\n  chain in {\n    type filter hook ingress device \"eth0\" priority 0; policy accept;\n    \
         ip daddr 203.0.113.10 udp dport 9 drop\n  }\n}\n",
    );
}

/// Linux forwarding with nftables SNAT in the gateway: each leased phone's address to the public
/// address `public_of(lease)`, ports preserved.
pub fn nft_snat(lab: &Lab, leases: &[Lease], public_of: impl Fn(&Lease) -> std::net::Ipv4Addr) {
    let out = run(lab.exec("gw", "sysctl").args(["-qw", "net.ipv4.ip_forward=1"]));
    assert!(out.status.success(), "ip_forward");
    // The kernel routes by its table (the dataplane by `wan.next_hop`): the far end via the next hop.
    let out = run(lab.exec("gw", "ip").args(["route", "replace", "default", "via", "192.0.2.254"]));
    assert!(out.status.success(), "default route: {}", String::from_utf8_lossy(&out.stderr));
    let elements: Vec<String> = leases.iter().map(|l| format!("{} : {}", l.address, public_of(l))).collect();
    nft(
        lab,
        "gw",
        &format!(
            "table ip lab_snat {{\n  map phones {{\n    type ipv4_addr : ipv4_addr\n    elements = {{ {} }}\n  }}\n  \
             chain post {{\n    type nat hook postrouting priority srcnat; policy accept;\n    \
             oifname \"wan0\" snat ip to ip saddr map @phones\n  }}\n}}\n",
            elements.join(", ")
        ),
    );
}

/// Removes the SNAT table and forgets every connection it translated (a new map applies only to
/// new connections).
pub fn nft_snat_off(lab: &Lab) {
    let _ = run(lab.exec("gw", "nft").args(["delete", "table", "ip", "lab_snat"]));
    let out = run(lab.exec("gw", "conntrack").arg("-F"));
    assert!(out.status.success(), "conntrack -F: {}", String::from_utf8_lossy(&out.stderr));
}

/// A receiver thread in namespace `side`, checking `direction`.
#[derive(Debug)]
pub struct Receiving {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Summary>,
}

impl Receiving {
    /// Starts it and waits until its ring is open.
    pub fn start(lab: &Lab, side: &str, config: &Config, direction: Direction) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel();
        let (ns, config, flag) = (lab.ns(side), config.clone(), Arc::clone(&stop));
        let handle = std::thread::spawn(move || {
            sys::enter_network_namespace(&ns).expect("enter the receiver's namespace");
            let mut ring = RxRing::open("eth0", 4 << 20, 8, 2).expect("receive ring");
            let offset = i128::from(sys::realtime_ns()) - i128::from(sys::monotonic_ns());
            let mut receiver = Receiver::new(Some(Checker::new(config)), direction, offset);
            ready_tx.send(()).expect("signal ready");
            loop {
                let stopping = flag.load(Ordering::Relaxed);
                ring.receive(if stopping { 0 } else { 50 }, |f| {
                    receiver.frame(f.bytes, f.realtime_ns);
                })
                .expect("receive");
                if stopping {
                    break;
                }
            }
            let (_, drops) = ring.statistics().expect("ring statistics");
            receiver.ring_drops(drops);
            receiver.summary()
        });
        ready_rx.recv_timeout(Duration::from_secs(10)).expect("receiver ready");
        Self { stop, handle }
    }

    /// Waits `linger` for frames in flight, stops and returns the summary.
    pub fn finish(self, linger: Duration) -> Summary {
        std::thread::sleep(linger);
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().expect("receiver thread")
    }
}

/// Leases `count` phones (MACs of run `run`) from the gateway's DHCP in the phones' namespace.
pub fn lease_phones(lab: &Lab, config: &Config, count: usize, run: u8) -> (Vec<Option<Lease>>, LeaseCounters) {
    let (ns, config) = (lab.ns("phones"), config.clone());
    std::thread::spawn(move || {
        sys::enter_network_namespace(&ns).expect("enter P-phones");
        let engine = LeaseEngine::new(config, VENDOR_CLASS, 500_000_000, 6, std::process::id() ^ u32::from(run));
        let mut driver = LeaseDriver::new(PacketSocket::open("eth0").expect("packet socket"), engine);
        let leases = generator::lease_fleet(&mut driver, count, run, 2000, 256).expect("lease");
        (leases, driver.counters())
    })
    .join()
    .expect("lease thread")
}

/// Releases `leases` from the phones' namespace.
pub fn release_phones(lab: &Lab, config: &Config, leases: &[Lease]) {
    let (ns, config, leases) = (lab.ns("phones"), config.clone(), leases.to_vec());
    std::thread::spawn(move || {
        sys::enter_network_namespace(&ns).expect("enter P-phones");
        let engine = LeaseEngine::new(config, VENDOR_CLASS, 500_000_000, 1, 1);
        let mut driver = LeaseDriver::new(PacketSocket::open("eth0").expect("packet socket"), engine);
        for lease in &leases {
            driver.release(lease);
        }
        assert_eq!(driver.send_errors(), 0, "every RELEASE sent");
    })
    .join()
    .expect("release thread");
}

/// Sends `plan` from `leases` in the phones' namespace (outbound to the far end); with
/// `churn_per_second`, leases change at that rate while it sends.
pub fn send_from_phones(
    lab: &Lab,
    config: &Config,
    leases: Vec<Option<Lease>>,
    outside: bool,
    plan: SendPlan,
    churn_per_second: Option<u64>,
) -> (SendSummary, Option<ChurnSummary>) {
    let (ns, config) = (lab.ns("phones"), config.clone());
    std::thread::spawn(move || {
        sys::enter_network_namespace(&ns).expect("enter P-phones");
        let mut leases = leases;
        let slots = Slots::new(leases.len());
        for (i, lease) in leases.iter().enumerate() {
            if let Some(lease) = lease {
                slots.set(i, &SlotPhone::of(lease).expect("power-of-two block"));
            }
        }
        let gateway_mac = leases.iter().flatten().next().expect("at least one lease").gateway_mac;
        let mode = Mode::Outbound { gateway_mac, far: FAR, outside };
        let classes = Classes::new(config.clone());
        let mut xsk = XskTx::open("eth0", 0, 4096).expect("AF_XDP socket");
        let (stop_send, stop_churn) = (AtomicBool::new(false), AtomicBool::new(false));
        std::thread::scope(|scope| {
            let churner = churn_per_second.map(|rate| {
                let engine =
                    LeaseEngine::new(config.clone(), VENDOR_CLASS, 500_000_000, 6, std::process::id() ^ 0x5a5a);
                let mut driver = LeaseDriver::new(PacketSocket::open("eth0").expect("packet socket"), engine);
                let (slots, leases, stop) = (&slots, &mut leases, &stop_churn);
                scope.spawn(move || generator::churn(&mut driver, slots, leases, 2, 0, rate, stop).expect("churn"))
            });
            let sent = generator::transmit(&mut xsk, &slots, &classes, &mode, &plan, &stop_send);
            stop_churn.store(true, Ordering::Relaxed);
            (sent, churner.map(|c| c.join().expect("churn thread")))
        })
    })
    .join()
    .expect("generator thread")
}

/// Sends `plan` from the far end (P-net) to the leased phones' public address and port, to the
/// gateway's WAN MAC.
pub fn send_to_phones(lab: &Lab, config: &Config, leases: &[Lease], plan: SendPlan) -> SendSummary {
    let (ns, config, leases) = (lab.ns("net"), config.clone(), leases.to_vec());
    let out = run(lab.exec("gw", "cat").arg("/sys/class/net/wan0/address"));
    let gateway_mac: dialtone_config::MacAddr =
        String::from_utf8_lossy(&out.stdout).trim().parse().expect("the gateway's WAN MAC");
    std::thread::spawn(move || {
        sys::enter_network_namespace(&ns).expect("enter P-net");
        let slots = Slots::new(leases.len());
        for (i, lease) in leases.iter().enumerate() {
            slots.set(i, &SlotPhone::of(lease).expect("power-of-two block"));
        }
        let local_mac = sys::interface_mac("eth0").expect("P-net's eth0 MAC");
        let mode = Mode::Inbound { local_mac, gateway_mac: gateway_mac.0, far: FAR };
        let mut xsk = XskTx::open("eth0", 0, 4096).expect("AF_XDP socket");
        generator::transmit(&mut xsk, &slots, &Classes::new(config), &mode, &plan, &AtomicBool::new(false))
    })
    .join()
    .expect("generator thread")
}
