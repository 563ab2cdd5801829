//! End-to-end: real DHCP clients (udhcpc, dhclient, dhcpcd) against `dialtone run` in the lab
//! (claims 001: 1, 8-10, 15-16, 23-25): MAC then vendor class validated, an address from the
//! class's pool, and its port block in option 159 exactly as the port-block function gives it.

mod common;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Gateway, Lab, Scratch};
use dialtone_config::portblock::decode_option159;
use dialtone_config::{load, CpuPolicy};

/// A client script that records its environment per event and configures the address it got.
const SCRIPT: &str = r#"#!/bin/sh
event="${1:-$reason}"
env | sort > "$(dirname "$0")/env.$event"
case "$event" in
  bound|renew|BOUND|RENEW) [ -n "$ip" ] && ip addr replace "$ip/$mask" dev "$interface" ;;
esac
exit 0
"#;

fn read_env(path: &Path) -> BTreeMap<String, String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect()
}

/// Option-159 bytes as each client prints them: udhcpc/dhcpcd `00060400`, dhclient `0:6:4:0`.
fn parse_bytes(text: &str) -> Vec<u8> {
    if text.contains(':') {
        text.split(':').filter_map(|b| u8::from_str_radix(b, 16).ok()).collect()
    } else {
        (0..text.len() / 2).filter_map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()).collect()
    }
}

struct Fixture {
    lab: Lab,
    scratch: Scratch,
    config: dialtone_config::Config,
    gw: Option<Gateway>,
}

impl Fixture {
    fn new(tag: &str) -> Self {
        let lab = Lab::up(tag);
        let scratch = Scratch::new(tag);
        let path = scratch.lab_config();
        let config = load(&path, CpuPolicy::Ignore).expect("lab config").config;
        let script = scratch.0.join("script.sh");
        std::fs::write(&script, SCRIPT).expect("script");
        common::run(Command::new("chmod").arg("+x").arg(&script));
        let mut f = Fixture { lab, scratch, config, gw: None };
        f.start_gateway("gw1.log");
        f
    }

    fn start_gateway(&mut self, log: &str) {
        let mut gw = Gateway::start(&self.lab, &self.scratch.0.join("dialtone.toml"), self.scratch.0.join(log));
        gw.wait_for_log("dhcp server started", Duration::from_secs(20));
        self.gw = Some(gw);
    }

    fn stop_gateway(&mut self) {
        if let Some(mut gw) = self.gw.take() {
            assert!(gw.stop_with(15, Duration::from_secs(20)).success(), "{}", gw.log_text());
        }
    }

    /// A fresh client directory and the phone's MAC.
    fn phone(&self, name: &str, mac: &str) -> std::path::PathBuf {
        let dir = self.scratch.0.join(name);
        std::fs::create_dir_all(&dir).expect("client dir");
        std::fs::copy(self.scratch.0.join("script.sh"), dir.join("script.sh")).expect("script");
        common::run(self.lab.exec("phones", "ip").args(["addr", "flush", "dev", "eth0"]));
        let out = common::run(self.lab.exec("phones", "ip").args(["link", "set", "eth0", "address", mac]));
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        dir
    }

    /// Checks an address and option-159 bytes against the class's pool and port-block function.
    fn assert_block(&self, class_name: &str, ip: &str, option159: &str) -> Ipv4Addr {
        let class = self.config.classes.iter().find(|c| c.name == class_name).expect("class");
        let ip: Ipv4Addr = ip.parse().unwrap_or_else(|_| panic!("client reported no address: {ip:?}"));
        assert!(class.lan_pool.contains(&ip), "{ip} is not in {}'s pool {}", class.name, class.lan_pool);
        let block = class.port_block_of(ip).expect("block");
        let bytes = parse_bytes(option159);
        assert_eq!(bytes, block.option159_payload(), "option 159 for {ip}");
        assert_eq!(decode_option159(&bytes), Ok((block.port_lo, block.port_hi)));
        ip
    }

    fn udhcpc(&self, dir: &Path, vendor: &str, extra: &[&str]) -> std::process::Output {
        common::run(
            self.lab
                .exec("phones", "udhcpc")
                .args([
                    "-i", "eth0", "-f", "-q", "-n", "-t", "3", "-T", "1", "-A", "1", "-V", vendor, "-O", "159", "-s",
                ])
                .arg(dir.join("script.sh"))
                .args(extra),
        )
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.gw.take();
    }
}

#[test]
fn udhcpc_gets_its_class_pool_and_block_and_keeps_them_across_renewal_and_restart() {
    let mut f = Fixture::new("du");
    let dir = f.phone("udhcpc", "80:5e:c0:00:00:11");
    let out = f.udhcpc(&dir, "Yealink SIP-T54W", &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let env = read_env(&dir.join("env.bound"));
    let ip = f.assert_block("yealink-t5", &env["ip"], &env["opt159"]);
    assert_eq!(env.get("boot_file").map(String::as_str), Some("yealink/t5.rom"));
    assert_eq!(env.get("siaddr").map(String::as_str), Some("100.64.0.1"));

    // Renewal: udhcpc stays in the foreground; SIGUSR1 makes it renew by unicast REQUEST.
    let mut daemon: Child = f
        .lab
        .exec("phones", "udhcpc")
        .args(["-i", "eth0", "-f", "-t", "3", "-T", "1", "-V", "Yealink SIP-T54W", "-O", "159", "-s"])
        .arg(dir.join("script.sh"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("udhcpc");
    let renew = dir.join("env.renew");
    let started = Instant::now();
    let mut sent = false;
    while !renew.exists() && started.elapsed() < Duration::from_secs(20) {
        if !sent
            && dir
                .join("env.bound")
                .metadata()
                .is_ok_and(|m| m.modified().is_ok_and(|t| t.elapsed().is_ok_and(|e| e < started.elapsed())))
        {
            common::run(Command::new("kill").args(["-USR1", &daemon.id().to_string()]));
            sent = true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = daemon.kill();
    let _ = daemon.wait();
    let env = read_env(&renew);
    assert_eq!(env.get("ip").map(String::as_str), Some(ip.to_string().as_str()), "renewal changed the address");
    f.assert_block("yealink-t5", &env["ip"], &env["opt159"]);

    // A restart of the gateway: the same MAC gets the same address and block back.
    f.stop_gateway();
    f.start_gateway("gw2.log");
    let dir = f.phone("udhcpc-again", "80:5e:c0:00:00:11");
    let out = f.udhcpc(&dir, "Yealink SIP-T54W", &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let env = read_env(&dir.join("env.bound"));
    assert_eq!(env["ip"], ip.to_string(), "restart changed the address");
    f.assert_block("yealink-t5", &env["ip"], &env["opt159"]);

    // The management API lists the lease with its block, and whois answers from history.
    let class = f.config.classes.iter().find(|c| c.name == "yealink-t5").expect("class");
    let block = class.port_block_of(ip).expect("block");
    let cfg = f.scratch.0.join("dialtone.toml");
    let out = common::run(f.lab.exec("gw", common::dialtone()).args(["leases", "--config"]).arg(&cfg));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("\"mac\":\"80:5e:c0:00:00:11\"") && text.contains(&format!("\"port_lo\":{}", block.port_lo)),
        "{text}"
    );
    let query = format!("{}:{}", block.public_ip, block.port_lo + 7);
    let out = common::run(f.lab.exec("gw", common::dialtone()).args(["whois", &query, "--config"]).arg(&cfg));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("80:5e:c0:00:00:11"), "{text}");
}

#[test]
fn unknown_vendor_class_and_refused_oui_get_no_offer() {
    let f = Fixture::new("dr");
    // Vendor class no class matches.
    let dir = f.phone("unknown", "80:5e:c0:00:00:21");
    let out = f.udhcpc(&dir, "Acme Phone 9000", &[]);
    assert!(!out.status.success(), "an unknown vendor class got a lease");
    assert!(!dir.join("env.bound").exists());
    // Yealink's vendor class from a MAC outside Yealink's OUI list (claim 001: 9: MAC first).
    let dir = f.phone("oui", "02:11:22:00:00:21");
    let out = f.udhcpc(&dir, "Yealink SIP-T54W", &[]);
    assert!(!out.status.success(), "a refused OUI got a lease");
    // Both refusals are counted: the second as an unknown vendor class too, since the classes
    // that accept its MAC (no OUI list) have other vendor-class rules.
    let cfg = f.scratch.0.join("dialtone.toml");
    assert!(f.lab.metric("dialtone_dhcp_messages_total{disposition=\"drop_vendor_class_unknown\"}") >= 6);
    assert_eq!(f.lab.metric("dialtone_dhcp_messages_total{disposition=\"offer\"}"), 0);
    let out = common::run(f.lab.exec("gw", common::dialtone()).args(["leases", "--config"]).arg(&cfg));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "{\"leases\":[]}\n");
}

#[test]
fn dhclient_and_dhcpcd_get_their_class_pool_and_block() {
    let f = Fixture::new("dc");
    // ISC dhclient as a Polycom (regex class, 4096-port blocks).
    let dir = f.phone("dhclient", "00:04:f2:00:00:22");
    std::fs::write(
        dir.join("dhclient.conf"),
        "option port-params code 159 = string;\nsend vendor-class-identifier \"Polycom-VVX450\";\nrequest subnet-mask, routers, tftp-server-name, bootfile-name, port-params;\n",
    )
    .expect("conf");
    let out = common::run(
        f.lab
            .exec("phones", "timeout")
            .args(["30", "dhclient", "-1", "-cf"])
            .arg(dir.join("dhclient.conf"))
            .arg("-sf")
            .arg(dir.join("script.sh"))
            .arg("-lf")
            .arg(dir.join("leases"))
            .arg("-pf")
            .arg(dir.join("pid"))
            .arg("eth0"),
    );
    if let Ok(pid) = std::fs::read_to_string(dir.join("pid")) {
        common::run(Command::new("kill").arg(pid.trim()));
    }
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let env = read_env(&dir.join("env.BOUND"));
    f.assert_block("polycom-vvx", &env["new_ip_address"], &env["new_port_params"]);
    assert_eq!(env.get("new_filename").map(String::as_str), Some("polycom/vvx.sip.ld"));

    // dhcpcd as dialtone's own softphone class (exact match, 256-port blocks).
    let dir = f.phone("dhcpcd", "02:00:00:00:00:33");
    std::fs::write(
        dir.join("dhcpcd.conf"),
        "define 159 binhex port_params\noption port_params\nvendorclassid dialtone-phone\nnohook resolv.conf\n",
    )
    .expect("conf");
    // dhcpcd keeps leases and its control socket under /var/lib and /run, which network
    // namespaces share: give it private, empty ones (`ip netns exec` runs in its own mount
    // namespace, so these mounts are not seen outside).
    let command = format!(
        "mkdir -p /var/lib/dhcpcd /run/dhcpcd && mount -t tmpfs tmpfs /var/lib/dhcpcd && mount -t tmpfs tmpfs /run/dhcpcd \
         && exec timeout 30 dhcpcd -f {dir}/dhcpcd.conf -c {dir}/script.sh -4 -1 -B -t 20 eth0",
        dir = dir.display()
    );
    let out = common::run(f.lab.exec("phones", "sh").args(["-c", &command]));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let env = read_env(&dir.join("env.BOUND"));
    f.assert_block("softphone", &env["new_ip_address"], &env["new_port_params"]);
}
