//! End-to-end: `dialtone phone` in the lab's phones namespace against `dialtone run` on the lab
//! configuration (claims 000: 13-24; claims 001: 10-14). One phone per discovery path — DHCP
//! options, the provisioning contact already in NVRAM, the pre-provisioning inquiry whose answer is
//! stored so the next boot skips it — and the failures a phone must report clearly: an
//! unregistered device ID, a pre-provisioning server that does not answer, a firmware image whose
//! digest does not match.
//!
//! Most tests stop after the firmware step (`--until firmware`); one goes on to the line step,
//! through the gateway's NAPPT dataplane to an echo responder in the far network.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use common::{Gateway, Lab, Scratch};
use sha2::{Digest as _, Sha256};

const ADMIN: &str = "lab-admin-token-not-for-production";
const FOUND: &str = "dialtone_preprov_inquiries_total{result=\"found\"}";
const UNKNOWN: &str = "dialtone_preprov_inquiries_total{result=\"unknown\"}";

/// A firmware image with no repeating pattern.
fn firmware(len: usize, seed: u32) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state.to_le_bytes()[0]
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

struct Fixture {
    lab: Lab,
    scratch: Scratch,
    sha256: String,
    _gw: Gateway,
}

impl Fixture {
    /// Lab, gateway on the lab configuration, the softphone firmware in its TFTP root and its
    /// digest in both softphone classes' parameters; `announced_sha256` overrides the digest the
    /// parameters state (to test a mismatch).
    fn new(tag: &str, announced_sha256: Option<&str>) -> Self {
        let lab = Lab::up(tag);
        let scratch = Scratch::new(tag);
        let config = scratch.lab_config();
        let image = firmware(300_001, 0x5eed);
        let sha256 = hex(&Sha256::digest(&image));
        let root = scratch.0.join("tftp/softphone/softphone");
        std::fs::create_dir_all(&root).expect("tftp root");
        std::fs::write(root.join("firmware.bin"), &image).expect("firmware");
        let stated = announced_sha256.unwrap_or(&sha256);
        let text = std::fs::read_to_string(&config).expect("config").replace(
            "firmware_version = \"softphone-1.0\"",
            &format!(
                "firmware_version = \"softphone-1.0\"\nfirmware_sha256 = \"{stated}\"\nfirmware_size = \"{}\"",
                image.len()
            ),
        );
        std::fs::write(&config, text).expect("write config");
        let mut gw = Gateway::start(&lab, &config, scratch.0.join("gw.log"));
        gw.wait_for_log("dialtone running", Duration::from_secs(20));
        Fixture { lab, scratch, sha256, _gw: gw }
    }

    /// A factory NVRAM file.
    fn nvram(&self, name: &str, mac: &str, vendor_class: &str, preprov: &str, contact: Option<&str>) -> PathBuf {
        let path = self.scratch.0.join(name);
        let contact = contact.map_or(String::new(), |c| format!(",\n  \"provisioning_contact\": \"{c}\""));
        let id = mac.replace(':', "");
        let text = format!(
            "{{\n  \"device_id\": \"{id}\",\n  \"mac\": \"{mac}\",\n  \"vendor_class\": \"{vendor_class}\",\n  \"preprov_contact\": \"{preprov}\"{contact}\n}}\n"
        );
        std::fs::write(&path, text).expect("write nvram");
        path
    }

    /// `dialtone phone` in the phones namespace, stopping after the firmware.
    fn boot(&self, nvram: &Path) -> Output {
        self.boot_until(nvram, "firmware")
    }

    /// `dialtone phone` in the phones namespace, stopping after `until`.
    fn boot_until(&self, nvram: &Path, until: &str) -> Output {
        common::run(
            self.lab
                .exec("phones", common::dialtone())
                .args(["phone", "--iface", "eth0", "--until", until, "--attempts", "3"])
                .args(["--backoff-ms", "200", "--timeout-ms", "1000", "--nvram"])
                .arg(nvram),
        )
    }

    /// curl to the pre-provisioning service from the gateway's own namespace.
    fn service(&self, method: &str, path: &str, token: &str, body: &str) -> (u16, String) {
        let out = common::run(self.lab.exec("gw", "curl").args([
            "-sS",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            "-X",
            method,
            "-H",
            &format!("Authorization: Bearer {token}"),
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            body,
            &format!("http://127.0.0.1:8080{path}"),
        ]));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        (code.trim().parse().unwrap_or(0), body.to_owned())
    }

    /// Registers `device_id` with a provisioning contact and the zero-touch class template.
    fn register(&self, device_id: &str, contact: &str) {
        let (code, body) = self.service("POST", "/v1/accounts", ADMIN, r#"{"name":"acme","role":"entity"}"#);
        let token = if code == 201 {
            body.split("\"token\":\"").nth(1).and_then(|t| t.split('"').next()).expect("token").to_owned()
        } else {
            std::fs::read_to_string(self.scratch.0.join("acme.token")).expect("acme exists, token kept")
        };
        std::fs::write(self.scratch.0.join("acme.token"), &token).expect("keep token");
        let (code, body) =
            self.service("PUT", &format!("/v1/devices/{device_id}"), &token, &format!(r#"{{"contact":"{contact}"}}"#));
        assert_eq!(code, 201, "{body}");
        let (code, body) =
            self.service("PUT", &format!("/v1/devices/{device_id}/parameters"), &token, r#"{"class":"softphone-zt"}"#);
        assert_eq!(code, 200, "{body}");
    }
}

fn text(out: &Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn nvram_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("nvram")).expect("nvram is JSON")
}

/// Lines of stdout that start with `step:`.
fn lines<'a>(stdout: &'a str, step: &str) -> Vec<&'a str> {
    stdout.lines().filter(|l| l.starts_with(&format!("{step}:"))).collect()
}

#[test]
fn dhcp_options_path_provisions_from_the_lease() {
    let f = Fixture::new("phd", None);
    let nvram = f.nvram("dhcp.json", "02:dc:00:00:00:01", "dialtone-phone", "100.64.0.1:8080", None);
    let out = f.boot(&nvram);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    // One line per step.
    for step in ["dhcp", "discovery", "provisioning", "firmware"] {
        assert_eq!(lines(&stdout, step).len(), 1, "{step}: {stdout}");
    }
    let dhcp = lines(&stdout, "dhcp")[0];
    assert!(dhcp.contains("leased 100.64.") && dhcp.contains("/16 from 100.64.0.1"), "{dhcp}");
    assert!(dhcp.contains("port block") && dhcp.contains("(option 159)"), "{dhcp}");
    assert!(lines(&stdout, "discovery")[0].contains("path=dhcp-options"), "{stdout}");
    assert!(
        lines(&stdout, "provisioning")[0].contains("parameters from tftp://100.64.0.1/02dc00000001.cfg"),
        "{stdout}"
    );
    let fw = lines(&stdout, "firmware")[0];
    assert!(fw.contains("300001 bytes, sha256 verified, version softphone-1.0"), "{fw}");
    // The leased address is on the interface, with the NVRAM MAC.
    let addr = common::run(f.lab.exec("phones", "ip").args(["-br", "-4", "addr", "show", "eth0"]));
    let leased = dhcp.split_whitespace().nth(2).expect("address").split('/').next().expect("ip").to_owned();
    assert!(String::from_utf8_lossy(&addr.stdout).contains(&leased), "{}", String::from_utf8_lossy(&addr.stdout));
    let link = common::run(f.lab.exec("phones", "ip").args(["-br", "link", "show", "eth0"]));
    assert!(String::from_utf8_lossy(&link.stdout).contains("02:dc:00:00:00:01"));
    // NVRAM: the version and digest recorded; no inquiry, so no contact learnt.
    let n = nvram_json(&nvram);
    assert_eq!(n["firmware_version"], "softphone-1.0");
    assert_eq!(n["firmware_sha256"], f.sha256.as_str());
    assert!(n.get("provisioning_contact").is_none(), "{n}");
    assert_eq!(f.lab.metric(FOUND) + f.lab.metric(UNKNOWN), 0);
}

#[test]
fn pre_provisioning_inquiry_is_stored_and_the_second_boot_skips_it() {
    let f = Fixture::new("php", None);
    f.register("02dc00000002", "100.64.0.1:8081");
    let nvram = f.nvram("pp.json", "02:dc:00:00:00:02", "dialtone-phone-zt", "100.64.0.1:8080", None);

    let out = f.boot(&nvram);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let discovery = lines(&stdout, "discovery");
    assert_eq!(discovery.len(), 1, "{stdout}");
    assert!(discovery[0].contains("path=pre-provisioning asked 100.64.0.1:8080 for device 02dc00000002"), "{stdout}");
    assert!(discovery[0].contains("provisioning contact 100.64.0.1:8081, stored in NVRAM"), "{stdout}");
    assert!(
        lines(&stdout, "provisioning")[0].contains("parameters from http://100.64.0.1:8081/v1/provision/02dc00000002"),
        "{stdout}"
    );
    assert!(lines(&stdout, "firmware")[0].contains("sha256 verified"), "{stdout}");
    let n = nvram_json(&nvram);
    assert_eq!(n["provisioning_contact"], "100.64.0.1:8081");
    assert_eq!(n["firmware_sha256"], f.sha256.as_str());
    assert_eq!(f.lab.metric(FOUND), 1);

    // Second boot: the contact comes from NVRAM, no inquiry reaches the server, and the
    // installed firmware is not fetched again.
    let out = f.boot(&nvram);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        lines(&stdout, "discovery")[0].contains("path=nvram-contact provisioning contact 100.64.0.1:8081"),
        "{stdout}"
    );
    assert!(lines(&stdout, "firmware")[0].contains("already installed"), "{stdout}");
    assert_eq!(f.lab.metric(FOUND), 1, "the second boot must not ask again");
}

#[test]
fn nvram_contact_path_asks_the_provisioning_entity_directly() {
    let f = Fixture::new("phn", None);
    f.register("02dc00000003", "100.64.0.1:8081");
    // A phone set up at the factory with its provisioning contact, and a pre-provisioning
    // contact nobody answers at: it must not be needed.
    let nvram =
        f.nvram("nv.json", "02:dc:00:00:00:03", "dialtone-phone-zt", "100.64.0.1:8089", Some("100.64.0.1:8081"));
    let out = f.boot(&nvram);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(lines(&stdout, "discovery")[0].contains("path=nvram-contact"), "{stdout}");
    assert!(lines(&stdout, "provisioning")[0].contains("from http://100.64.0.1:8081/v1/provision/02dc00000003"));
    assert_eq!(nvram_json(&nvram)["firmware_version"], "softphone-1.0");
    assert_eq!(f.lab.metric(FOUND) + f.lab.metric(UNKNOWN), 0);
}

#[test]
fn failures_name_their_step_and_reason() {
    let f = Fixture::new("phf", None);

    // A device ID nobody registered stops at the inquiry with a clear message; NVRAM unchanged.
    let nvram = f.nvram("unknown.json", "02:dc:00:00:00:04", "dialtone-phone-zt", "100.64.0.1:8080", None);
    let before = std::fs::read_to_string(&nvram).expect("nvram");
    let out = f.boot(&nvram);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert_eq!(lines(&stdout, "dhcp").len(), 1, "{stdout}");
    assert!(lines(&stdout, "discovery").is_empty(), "{stdout}");
    assert!(
        stderr.contains("step discovery failed: device ID 02dc00000004 is not registered at the pre-provisioning server 100.64.0.1:8080"),
        "{stderr}"
    );
    assert_eq!(std::fs::read_to_string(&nvram).expect("nvram"), before);
    assert_eq!(f.lab.metric(UNKNOWN), 1, "asked once: a 404 is an answer, not a reason to retry");

    // The pre-provisioning server does not answer: retried with doubling waits, then a clear
    // failure naming the server and the attempts.
    let nvram = f.nvram("down.json", "02:dc:00:00:00:05", "dialtone-phone-zt", "100.64.0.1:8089", None);
    let started = Instant::now();
    let out = f.boot(&nvram);
    let took = started.elapsed();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stderr.contains("step discovery failed: no answer from 100.64.0.1:8089"), "{stderr}");
    assert!(stderr.contains("after 3 attempts"), "{stderr}");
    assert!(took >= Duration::from_millis(600), "waits of 200 and 400 ms between the attempts, took {took:?}");
}

#[test]
fn firmware_with_a_wrong_digest_is_refused() {
    let wrong = hex(&Sha256::digest(b"some other image"));
    let f = Fixture::new("phw", Some(&wrong));
    let nvram = f.nvram("bad.json", "02:dc:00:00:00:06", "dialtone-phone", "100.64.0.1:8080", None);
    let out = f.boot(&nvram);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert_eq!(lines(&stdout, "provisioning").len(), 1, "{stdout}");
    assert!(lines(&stdout, "firmware").is_empty(), "{stdout}");
    assert!(stderr.contains("step firmware failed: softphone/firmware.bin: SHA-256"), "{stderr}");
    assert!(stderr.contains(&format!("does not match the expected {wrong}; image refused")), "{stderr}");
    let n = nvram_json(&nvram);
    assert!(n.get("firmware_version").is_none() && n.get("firmware_sha256").is_none(), "{n}");
}

/// The far end's UDP echo responder: answers `<payload> seen <ip>:<port>` (what `dialtone-fleet
/// echo` does), so the phone can check what NAPPT made of its source.
const ECHO: &str = "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.bind(('203.0.113.10', 7))\nwhile True:\n    d, a = s.recvfrom(2048)\n    s.sendto(d + (' seen %s:%d' % a).encode(), a)\n";

#[test]
fn line_step_goes_through_nappt_with_ports_unchanged() {
    let f = Fixture::new("phl", None);
    let mut echo = f.lab.exec("net", "/usr/bin/python3").args(["-c", ECHO]).spawn().expect("echo responder");
    std::thread::sleep(Duration::from_millis(300));
    let nvram = f.nvram("line.json", "02:dc:00:00:00:07", "dialtone-phone", "100.64.0.1:8080", None);
    let out = f.boot_until(&nvram, "line");
    let _ = echo.kill();
    let _ = echo.wait();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let line = lines(&stdout, "line");
    assert_eq!(line.len(), 1, "{stdout}");
    // The block of the lease, and the public address the far end saw: inside the softphone
    // class's public pool, never the phone's private address.
    let dhcp = lines(&stdout, "dhcp")[0];
    let block = dhcp.split("port block ").nth(1).and_then(|b| b.split(' ').next()).expect("block");
    assert!(line[0].contains(&format!("of block {block};")), "{line:?} vs {dhcp}");
    let seen = line[0].split("saw source ").nth(1).and_then(|s| s.split(' ').next()).expect("seen");
    let seen: std::net::Ipv4Addr = seen.parse().expect("one public address");
    assert!("198.51.100.192/26".parse::<ipnet::Ipv4Net>().expect("net").contains(&seen), "{seen}");
    assert!(line[0].contains("with each port unchanged"), "{line:?}");
    assert!(stdout.contains("up to line"), "{stdout}");
}
