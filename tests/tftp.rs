//! End-to-end: real TFTP clients (tftp-hpa, atftp, curl) in the phones' namespace against
//! `dialtone run` in the lab (claims 001: 12-14, 27-29): a phone that got a real DHCP lease
//! downloads its firmware byte for byte and its own per-phone file naming its port block and SIP
//! account; whatever would leave the class root, an unleased address's per-phone file and
//! uploads are refused with TFTP errors, and counted.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::{Gateway, Lab, Scratch};
use dialtone_config::{load, CpuPolicy};

const MAC: &str = "80:5e:c0:00:00:31";
const MAC_HEX: &str = "805ec0000031";
const SERVER: &str = "100.64.0.1";
const ADMIN: &str = "lab-admin-token-not-for-production";

/// udhcpc's script: configures the address it got and records it.
const SCRIPT: &str = r#"#!/bin/sh
case "$1" in
  bound|renew) ip addr replace "$ip/$mask" dev "$interface"; echo "$ip" > "$(dirname "$0")/ip" ;;
esac
exit 0
"#;

/// A firmware image whose last block is partial and whose bytes differ from block to block.
fn firmware() -> Vec<u8> {
    let mut state = 0x2545_f491_u32;
    (0..700_001)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state.to_le_bytes()[0]
        })
        .collect()
}

struct Fixture {
    lab: Lab,
    scratch: Scratch,
    root: PathBuf,
    config: dialtone_config::Config,
    /// Kept running for the test; killed when the fixture drops.
    _gw: Gateway,
}

impl Fixture {
    fn new(tag: &str) -> Self {
        let lab = Lab::up(tag);
        let scratch = Scratch::new(tag);
        let path = scratch.lab_config();
        let config = load(&path, CpuPolicy::Ignore).expect("lab config").config;
        let root = config.classes.iter().find(|c| c.name == "yealink-t5").expect("class").tftp_root.clone();
        std::fs::create_dir_all(root.join("yealink")).expect("root");
        std::fs::write(root.join("yealink/t5.rom"), firmware()).expect("firmware");
        std::fs::write(scratch.0.join("secret"), b"outside the root\n").expect("secret");
        std::os::unix::fs::symlink(scratch.0.join("secret"), root.join("escape")).expect("symlink");
        std::fs::write(scratch.0.join("script.sh"), SCRIPT).expect("script");
        common::run(Command::new("chmod").arg("+x").arg(scratch.0.join("script.sh")));
        let mut gw = Gateway::start(&lab, &path, scratch.0.join("gw.log"));
        gw.wait_for_log("dialtone running", Duration::from_secs(20));
        assert!(gw.log_text().contains("tftp server started"), "{}", gw.log_text());
        Fixture { lab, scratch, root, config, _gw: gw }
    }

    fn out(&self, name: &str) -> PathBuf {
        self.scratch.0.join(name)
    }

    /// tftp-hpa in binary mode running one command (`get R L` or `put L R`).
    fn tftp_hpa(&self, command: &str) -> Output {
        common::run(
            self.lab
                .exec("phones", "timeout")
                .args(["30", "tftp", "-m", "binary", SERVER, "-c"])
                .args(command.split(' ')),
        )
    }

    /// curl `tftp://SERVER/name` into `local`.
    fn curl_get(&self, name: &str, local: &Path) -> Output {
        common::run(
            self.lab
                .exec("phones", "curl")
                .args(["-sS", "--max-time", "30", "-o"])
                .arg(local)
                .arg(format!("tftp://{SERVER}/{name}")),
        )
    }

    /// curl against an HTTP service of the gateway from the phones' side (pre-provisioning).
    fn http(&self, method: &str, path: &str, token: &str, body: &str) -> String {
        let out = common::run(self.lab.exec("phones", "curl").args([
            "-sS",
            "--max-time",
            "30",
            "-X",
            method,
            "-H",
            &format!("Authorization: Bearer {token}"),
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            body,
            &format!("http://{SERVER}:8080{path}"),
        ]));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn leased_phone_downloads_firmware_and_its_own_config_and_escapes_are_refused() {
    let f = Fixture::new("tf");
    let image = firmware();

    // Before it has a lease: an address in the class's pool gets no per-phone file.
    common::run(f.lab.exec("phones", "ip").args(["link", "set", "eth0", "address", MAC]));
    f.lab.phone_address("100.64.16.250/16");
    let out = f.tftp_hpa(&format!("get {MAC_HEX}.cfg {}", f.out("unleased.cfg").display()));
    assert!(text(&out).contains("no lease for this address"), "{}", text(&out));
    assert!(std::fs::read(f.out("unleased.cfg")).unwrap_or_default().is_empty());
    assert_eq!(f.lab.metric("dialtone_tftp_refused_total{reason=\"no_lease\"}"), 1);

    // A real lease from dialtone's DHCP.
    common::run(f.lab.exec("phones", "ip").args(["addr", "flush", "dev", "eth0"]));
    let out = common::run(
        f.lab
            .exec("phones", "udhcpc")
            .args(["-i", "eth0", "-f", "-q", "-n", "-t", "3", "-T", "1", "-A", "1", "-V", "Yealink SIP-T54W", "-s"])
            .arg(f.scratch.0.join("script.sh")),
    );
    assert!(out.status.success(), "{}", text(&out));
    let ip: std::net::Ipv4Addr =
        std::fs::read_to_string(f.scratch.0.join("ip")).expect("udhcpc bound").trim().parse().expect("address");
    let class = f.config.classes.iter().find(|c| c.name == "yealink-t5").expect("class");
    let block = class.port_block_of(ip).expect("leased address in the class pool");

    // Its SIP account, registered through the pre-provisioning API.
    let answer = f.http("POST", "/v1/accounts", ADMIN, r#"{"name":"acme","role":"entity"}"#);
    let token = answer.split("\"token\":\"").nth(1).and_then(|t| t.split('"').next()).expect("token").to_owned();
    let answer = f.http("PUT", &format!("/v1/devices/{MAC}"), &token, r#"{"contact":"203.0.113.10:8081"}"#);
    assert!(answer.contains(MAC_HEX), "{answer}");
    let answer = f.http(
        "PUT",
        &format!("/v1/devices/{MAC_HEX}/parameters"),
        &token,
        r#"{"sip_user":"1031","sip_password":"s3cret-1031"}"#,
    );
    assert!(answer.contains("1031"), "{answer}");

    // Firmware, byte-identical, with three clients and their options.
    let out = f.tftp_hpa(&format!("get yealink/t5.rom {}", f.out("hpa.rom").display()));
    assert!(out.status.success(), "{}", text(&out));
    assert!(std::fs::read(f.out("hpa.rom")).expect("hpa download") == image, "tftp-hpa: bytes differ");
    let out = common::run(
        f.lab
            .exec("phones", "timeout")
            .args(["30", "atftp", "--option", "windowsize 16", "--option", "blksize 1468", "-g", "-r"])
            .arg("yealink/t5.rom")
            .arg("-l")
            .arg(f.out("atftp.rom"))
            .arg(SERVER),
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(std::fs::read(f.out("atftp.rom")).expect("atftp download") == image, "atftp: bytes differ");
    assert!(f.lab.metric("dialtone_tftp_option_total{option=\"windowsize\"}") >= 1, "atftp's windowsize not used");
    let out = f.curl_get("yealink/t5.rom", &f.out("curl.rom"));
    assert!(out.status.success(), "{}", text(&out));
    assert!(std::fs::read(f.out("curl.rom")).expect("curl download") == image, "curl: bytes differ");

    // Its own per-phone file: its port block, its class's registrar and its own SIP account.
    let out = f.tftp_hpa(&format!("get {MAC_HEX}.cfg {}", f.out("phone.cfg").display()));
    assert!(out.status.success(), "{}", text(&out));
    let cfg = std::fs::read_to_string(f.out("phone.cfg")).expect("phone.cfg");
    for line in [
        format!("mac = {MAC_HEX}"),
        format!("lan_ip = {ip}"),
        format!("public_ip = {}", block.public_ip),
        format!("port_lo = {}", block.port_lo),
        format!("port_hi = {}", block.port_hi),
        "sip_registrar = sip.lab.dialtone.test".to_owned(),
        "sip_user = 1031".to_owned(),
        "sip_password = s3cret-1031".to_owned(),
    ] {
        assert!(cfg.lines().any(|l| l == line), "{line:?} not in:\n{cfg}");
    }
    // Another phone's file is not this phone's to read.
    let out = f.curl_get("805ec0000032.cfg", &f.out("other.cfg"));
    assert!(!out.status.success(), "another phone's file was served");

    // Out of the root: `..`, an absolute path, a symlink; each refused and counted.
    for name in ["../secret", "/etc/passwd", "escape", "yealink/../../secret"] {
        let local = f.out("escaped");
        let _ = std::fs::remove_file(&local);
        let out = f.tftp_hpa(&format!("get {name} {}", local.display()));
        assert!(text(&out).contains("Error code 2"), "{name}: {}", text(&out));
        assert!(std::fs::read(&local).unwrap_or_default().is_empty(), "{name}: bytes from outside the root");
    }
    let out = f.curl_get("escape", &f.out("escaped-curl"));
    assert!(!out.status.success(), "curl got the symlink's target");
    assert!(std::fs::read(f.out("escaped-curl")).unwrap_or_default().is_empty());
    assert_eq!(f.lab.metric("dialtone_tftp_refused_total{reason=\"path_escape\"}"), 5);

    // Uploads are refused; nothing appears in the root.
    std::fs::write(f.out("upload.bin"), b"not firmware").expect("upload file");
    let out = f.tftp_hpa(&format!("put {} yealink/t5.rom", f.out("upload.bin").display()));
    assert!(text(&out).contains("write access denied"), "{}", text(&out));
    let out = f.tftp_hpa(&format!("put {} new.bin", f.out("upload.bin").display()));
    assert!(text(&out).contains("write access denied"), "{}", text(&out));
    assert!(std::fs::read(f.root.join("yealink/t5.rom")).expect("firmware") == image, "firmware replaced");
    assert!(!f.root.join("new.bin").exists(), "an upload landed in the root");
    assert_eq!(f.lab.metric("dialtone_tftp_refused_total{reason=\"write_refused\"}"), 2);
    assert!(f.lab.metric("dialtone_tftp_transfers_completed_total") >= 4);
    assert_eq!(f.lab.metric("dialtone_tftp_transfers_failed_total{reason=\"timeout\"}"), 0);
}
