//! End-to-end: the AF_XDP dataplane in the lab (claims 001: 3-7, 18-22). Phones get their
//! address from dialtone's own DHCP; their UDP, TCP and ICMP reach servers in the far network
//! translated to their public address with the port unchanged, and the answers come back; a port
//! outside the block and an unleased source are dropped and counted; two phones reach each other
//! through their public addresses (hairpin); DHCP and the gateway's own services still reach the
//! kernel while the dataplane runs; after SIGTERM no XDP program stays attached.

mod common;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Gateway, Lab, Scratch};
use dialtone_config::portblock::PortBlock;
use dialtone_config::{load, CpuPolicy};

const PHONE_A: &str = "80:5e:c0:00:00:0a";
const PHONE_B: &str = "80:5e:c0:00:00:0b";
const FAR: &str = "203.0.113.10";
const UDP_PORT: u16 = 7000;
const HTTP_PORT: u16 = 8000;

/// udhcpc's script: the address and default route it got, recorded in the script's directory.
const SCRIPT: &str = r#"#!/bin/sh
case "$1" in
  bound|renew)
    ip addr replace "$ip/$mask" dev "$interface"
    ip route replace default via "$router" dev "$interface"
    echo "$ip" > "$(dirname "$0")/ip"
    ;;
esac
exit 0
"#;

/// Far-end servers: a UDP echo that answers each datagram with the source it saw, and an HTTP
/// server that answers with the client's address and port.
const SERVERS: &str = r#"
import http.server, socket, sys, threading
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind((sys.argv[1], int(sys.argv[2])))
def echo():
    while True:
        data, peer = udp.recvfrom(2048)
        udp.sendto(("%s:%d" % peer).encode(), peer)
threading.Thread(target=echo, daemon=True).start()
class Who(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("%s:%d" % self.client_address).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.HTTPServer((sys.argv[1], int(sys.argv[3])), Who).serve_forever()
"#;

/// A UDP client: from (source address, source port) to (address, port); prints the answer.
const UDP_CLIENT: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
s.settimeout(0.5)
for attempt in range(6):
    s.sendto(b"hello", (sys.argv[3], int(sys.argv[4])))
    try:
        data, peer = s.recvfrom(2048)
        print(data.decode())
        sys.exit(0)
    except socket.timeout:
        pass
print("timeout")
sys.exit(1)
"#;

/// A UDP listener: prints the source of the first datagram to (address, port).
const UDP_LISTENER: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
s.settimeout(10)
open(sys.argv[3] + ".ready", "w").close()
data, peer = s.recvfrom(2048)
open(sys.argv[3], "w").write("%s:%d" % peer)
"#;

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// A namespace this test creates beside the lab (a second phone), removed when dropped.
struct ExtraNamespace(String);

impl Drop for ExtraNamespace {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "pids", &self.0]).output().map(|out| {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        });
        let _ = Command::new("ip").args(["netns", "del", &self.0]).stderr(Stdio::null()).status();
    }
}

/// A background process killed when dropped.
struct Background(Child);

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Fixture {
    lab: Lab,
    scratch: Scratch,
    config: dialtone_config::Config,
    gw: Option<Gateway>,
    /// Last, so it is released after the gateway and the lab are gone.
    _alone: std::sync::MutexGuard<'static, ()>,
}

impl Fixture {
    fn new(tag: &str) -> Self {
        let alone = common::one_dataplane_at_a_time();
        let lab = Lab::up(tag);
        let scratch = Scratch::new(tag);
        let path = scratch.lab_config();
        let config = load(&path, CpuPolicy::Ignore).expect("lab config").config;
        assert!(config.dataplane.enabled, "the lab configuration runs the dataplane");
        for (name, body) in [("servers.py", SERVERS), ("udp_client.py", UDP_CLIENT), ("udp_listener.py", UDP_LISTENER)]
        {
            std::fs::write(scratch.0.join(name), body).expect("script");
        }
        let mut gw = Gateway::start(&lab, &path, scratch.0.join("gw.log"));
        gw.wait_for_log("dialtone running", Duration::from_secs(30));
        assert!(gw.log_text().contains("dataplane started"), "{}", gw.log_text());
        gw.wait_for_log("next hop resolved", Duration::from_secs(10));
        Fixture { lab, scratch, config, gw: Some(gw), _alone: alone }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.scratch.0.join(name)
    }

    fn in_ns(&self, ns: &str, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns, program]);
        cmd
    }

    /// Runs udhcpc for `mac` on `interface` in namespace `ns`; returns the leased address and
    /// its port block, computed by dialtone-config's port-block function.
    fn lease(&self, ns: &str, interface: &str, mac: &str, dir: &str) -> (Ipv4Addr, PortBlock) {
        let dir = self.path(dir);
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("script.sh"), SCRIPT).expect("script");
        common::run(Command::new("chmod").arg("+x").arg(dir.join("script.sh")));
        let out = common::run(self.in_ns(ns, "ip").args(["link", "set", interface, "address", mac]));
        assert!(out.status.success(), "{}", text(&out));
        let out = common::run(
            self.in_ns(ns, "udhcpc")
                .args([
                    "-i",
                    interface,
                    "-f",
                    "-q",
                    "-n",
                    "-t",
                    "5",
                    "-T",
                    "1",
                    "-A",
                    "1",
                    "-V",
                    "Yealink SIP-T54W",
                    "-s",
                ])
                .arg(dir.join("script.sh")),
        );
        assert!(out.status.success(), "udhcpc: {}", text(&out));
        let ip: Ipv4Addr =
            std::fs::read_to_string(dir.join("ip")).expect("udhcpc bound").trim().parse().expect("address");
        let class = self.config.classes.iter().find(|c| c.name == "yealink-t5").expect("class");
        (ip, class.port_block_of(ip).expect("a leased address has a block"))
    }

    fn udp(&self, ns: &str, source: Ipv4Addr, port: u16, to: &str, to_port: u16) -> Output {
        common::run(self.in_ns(ns, "/usr/bin/python3").arg(self.path("udp_client.py")).args([
            &source.to_string(),
            &port.to_string(),
            to,
            &to_port.to_string(),
        ]))
    }

    fn metric(&self, line_prefix: &str) -> u64 {
        self.lab.metric(line_prefix)
    }
}

fn drop_metric(reason: &str) -> String {
    format!("dialtone_dataplane_drops_total{{worker=\"0\",reason=\"{reason}\"}}")
}

fn wait_for_file(path: &Path, timeout: Duration) {
    let start = Instant::now();
    while !path.exists() {
        assert!(start.elapsed() < timeout, "{} did not appear", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn phones_reach_the_far_network_translated_and_the_kernel_keeps_its_traffic() {
    let mut f = Fixture::new("xd");
    let phones = f.lab.ns("phones");
    let net = f.lab.ns("net");
    let _servers = Background(
        f.in_ns(&net, "/usr/bin/python3")
            .arg(f.path("servers.py"))
            .args([FAR, &UDP_PORT.to_string(), &HTTP_PORT.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("far-end servers"),
    );

    // Phone A's address and block come from dialtone's own DHCP, through the running dataplane.
    let (a, block_a) = f.lease(&phones, "eth0", PHONE_A, "phone-a");
    let public_a = block_a.public_ip;
    assert!(block_a.port_lo >= 1024 && block_a.port_hi > block_a.port_lo);

    // UDP from inside the block: the far end sees the public address and the same port, and
    // the answer comes back (claims 001: 5, 7).
    let port = block_a.port_lo + 17;
    let mut answered = None;
    for _ in 0..20 {
        let out = f.udp(&phones, a, port, FAR, UDP_PORT);
        if out.status.success() {
            answered = Some(String::from_utf8_lossy(&out.stdout).trim().to_owned());
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        answered.as_deref(),
        Some(format!("{public_a}:{port}").as_str()),
        "gateway log:\n{}",
        f.gw.as_ref().map(Gateway::log_text).unwrap_or_default()
    );

    // TCP: curl from a port inside the block; the server saw the public address and that port.
    let tcp_port = block_a.port_hi - 3;
    let out = common::run(f.in_ns(&phones, "curl").args([
        "-sS",
        "--max-time",
        "10",
        "--local-port",
        &tcp_port.to_string(),
        &format!("http://{FAR}:{HTTP_PORT}/who"),
    ]));
    assert!(out.status.success(), "curl: {}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("{public_a}:{tcp_port}"));

    // ICMP echo.
    let out = common::run(f.in_ns(&phones, "ping").args(["-c", "3", "-i", "0.2", "-W", "2", FAR]));
    assert!(out.status.success(), "ping: {}", text(&out));
    let forwarded = f.metric("dialtone_dataplane_tx_frames_total{worker=\"0\",side=\"wan\"}");
    assert!(forwarded >= 5, "only {forwarded} frames left on the WAN side");

    // A source port outside the block is dropped and counted.
    let outside_before = f.metric(&drop_metric("port_outside_block"));
    let outside = if block_a.port_lo > 1100 { block_a.port_lo - 1 } else { block_a.port_hi + 1 };
    let out = f.udp(&phones, a, outside, FAR, UDP_PORT);
    assert!(!out.status.success(), "a port outside the block got through: {}", text(&out));
    assert!(f.metric(&drop_metric("port_outside_block")) > outside_before);

    // An unleased source address of the class's pool is dropped and counted (anti-spoofing).
    let unleased = Ipv4Addr::new(100, 64, 31, 200);
    assert_ne!(unleased, a);
    let out = common::run(f.in_ns(&phones, "ip").args(["addr", "add", &format!("{unleased}/16"), "dev", "eth0"]));
    assert!(out.status.success(), "{}", text(&out));
    let unleased_before = f.metric(&drop_metric("source_not_leased"));
    let block_u = f.config.classes[0].port_block_of(unleased).expect("in the pool");
    let out = f.udp(&phones, unleased, block_u.port_lo, FAR, UDP_PORT);
    assert!(!out.status.success(), "an unleased source got through: {}", text(&out));
    assert!(f.metric(&drop_metric("source_not_leased")) > unleased_before);

    // Hairpin: phone B in a namespace of its own (a macvlan on the phones' link), leased by
    // dialtone too; A reaches B's public address and port, B sees A's public address.
    let phone_b_ns = format!("{}-pb", f.lab.prefix);
    let _b_ns = ExtraNamespace(phone_b_ns.clone());
    for args in [
        vec!["netns", "add", phone_b_ns.as_str()],
        vec!["-n", phones.as_str(), "link", "add", "link", "eth0", "name", "pb", "type", "macvlan", "mode", "bridge"],
        vec!["-n", phones.as_str(), "link", "set", "pb", "netns", phone_b_ns.as_str()],
        vec!["-n", phone_b_ns.as_str(), "link", "set", "lo", "up"],
        vec!["-n", phone_b_ns.as_str(), "link", "set", "pb", "up"],
    ] {
        let out = common::run(Command::new("ip").args(&args));
        assert!(out.status.success(), "ip {args:?}: {}", text(&out));
    }
    let (b, block_b) = f.lease(&phone_b_ns, "pb", PHONE_B, "phone-b");
    assert_ne!(a, b);
    let b_port = block_b.port_lo + 5;
    let seen = f.path("hairpin-seen");
    let _listener = Background(
        f.in_ns(&phone_b_ns, "/usr/bin/python3")
            .arg(f.path("udp_listener.py"))
            .args([&b.to_string(), &b_port.to_string()])
            .arg(&seen)
            .spawn()
            .expect("listener"),
    );
    wait_for_file(&seen.with_extension("ready"), Duration::from_secs(10));
    let hairpin_port = block_a.port_lo + 99;
    let _ = f.udp(&phones, a, hairpin_port, &block_b.public_ip.to_string(), b_port);
    wait_for_file(&seen, Duration::from_secs(10));
    let saw = std::fs::read_to_string(&seen).expect("listener result");
    assert_eq!(saw.trim(), format!("{public_a}:{hairpin_port}"), "B saw A as");
    assert!(f.metric("dialtone_dataplane_hairpinned_total{worker=\"0\"}") >= 1);

    // The kernel keeps its traffic while the dataplane runs: a DHCP renewal (a second run of
    // udhcpc keeps the address) and the pre-provisioning service on the gateway's LAN address.
    let (again, _) = f.lease(&phones, "eth0", PHONE_A, "phone-a-again");
    assert_eq!(again, a, "the renewal kept the address");
    let out = common::run(f.in_ns(&phones, "curl").args([
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--max-time",
        "10",
        "http://100.64.0.1:8080/v1/contact/805ec000000a",
    ]));
    let code = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(code.starts_with('2') || code.starts_with('4'), "pre-provisioning answered {code:?}: {}", text(&out));
    assert!(f.metric("dialtone_xdp_frames_total{side=\"lan\",action=\"pass\"}") > 0);
    assert!(f.metric("dialtone_xdp_frames_total{side=\"lan\",action=\"redirect\"}") >= forwarded);

    // `dialtone stats` shows the same counters, and every UMEM frame is accounted for once the
    // traffic is over (one snapshot: free + fill rings + transmit rings = the worker's frames).
    std::thread::sleep(Duration::from_millis(300));
    let out =
        common::run(f.lab.exec("gw", common::dialtone()).args(["stats", "--config"]).arg(f.path("dialtone.toml")));
    assert!(out.status.success(), "dialtone stats: {}", text(&out));
    let stats = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(stats.contains("\"worker\":0"), "{stats}");
    let counter = |key: &str| -> u64 {
        stats
            .split(&format!("\"{key}\":"))
            .nth(1)
            .and_then(|rest| rest.split([',', '}']).next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {stats}"))
    };
    assert!(counter("drops_port_outside_block") >= 1, "{stats}");
    let total = counter("frames_free") + counter("frames_fill") + counter("frames_tx");
    assert_eq!(total, u64::from(f.config.dataplane.frames_per_worker), "{stats}");

    // SIGTERM: dialtone exits cleanly and leaves no XDP program on either interface.
    let mut gw = f.gw.take().expect("gateway");
    let status = gw.stop_with(15, Duration::from_secs(20));
    assert!(status.success(), "{}", gw.log_text());
    assert!(gw.log_text().contains("xdp program detached"), "{}", gw.log_text());
    for interface in ["lan0", "wan0"] {
        let out = common::run(f.lab.exec("gw", "ip").args(["link", "show", interface]));
        let shown = text(&out);
        assert!(out.status.success() && !shown.contains("xdp"), "{interface} still has XDP: {shown}");
    }
}

/// A MAC set on the WAN interface while the gateway runs becomes the source of the frames the
/// workers send there, within the neighbour refresh (the lab's is 1 s).
#[test]
fn a_new_wan_mac_is_the_source_of_translated_frames() {
    let mut f = Fixture::new("xm");
    let phones = f.lab.ns("phones");
    let (gw, net) = (f.lab.ns("gw"), f.lab.ns("net"));
    let (a, block) = f.lease(&phones, "eth0", PHONE_A, "phone-m");
    const NEW_MAC: &str = "02:00:00:00:99:01";
    let out = common::run(f.in_ns(&gw, "ip").args(["link", "set", "wan0", "address", NEW_MAC]));
    assert!(out.status.success(), "{}", text(&out));
    f.gw.as_mut().expect("gateway").wait_for_log("interface MAC changed", Duration::from_secs(10));

    // The far end captures the next frame for the test port, link-layer header included.
    let capture = f.path("capture.txt");
    let mut tcpdump = Background(
        f.in_ns(&net, "tcpdump")
            .args(["-i", "eth0", "-e", "-n", "-l", "-c", "1", "udp", "and", "dst", "port", "7009"])
            .stdout(std::fs::File::create(&capture).expect("capture file"))
            .stderr(Stdio::null())
            .spawn()
            .expect("tcpdump"),
    );
    let start = Instant::now();
    loop {
        let _ = f.udp(&phones, a, block.port_lo + 5, FAR, 7009);
        if std::fs::read_to_string(&capture).is_ok_and(|c| !c.is_empty()) {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(15), "no frame reached the far end");
    }
    let _ = tcpdump.0.wait();
    let seen = std::fs::read_to_string(&capture).expect("capture");
    assert!(seen.starts_with(&format!("{NEW_MAC} >")) || seen.contains(&format!(" {NEW_MAC} >")), "{seen}");
}
