//! End-to-end: the pre-provisioning service of a running gateway, driven by curl from the
//! phones' namespace (claims 000: 1-12).

mod common;

use std::process::Output;
use std::time::{Duration, Instant};

use common::{Gateway, Lab, Scratch};

const ADMIN: &str = "lab-admin-token-not-for-production";
const BASE: &str = "http://100.64.0.1:8080";

/// curl from the phones' side; returns (HTTP status, body).
fn curl(lab: &Lab, method: &str, path: &str, token: Option<&str>, body: Option<&str>) -> (u16, String) {
    curl_args(
        lab,
        method,
        path,
        token,
        body.map(|b| vec!["--data-binary".to_owned(), b.to_owned()]).unwrap_or_default(),
    )
}

fn curl_args(lab: &Lab, method: &str, path: &str, token: Option<&str>, extra: Vec<String>) -> (u16, String) {
    let mut cmd = lab.exec("phones", "curl");
    cmd.args(["-sS", "--max-time", "60", "-o", "-", "-w", "\n%{http_code}", "-X", method]);
    if let Some(t) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    cmd.args(["-H", "Content-Type: application/json"]).args(extra).arg(format!("{BASE}{path}"));
    let out: Output = common::run(&mut cmd);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

fn create_account(lab: &Lab, name: &str, role: &str, contact: Option<&str>) -> String {
    let dc = contact.map_or(String::new(), |c| format!(",\"default_contact\":\"{c}\""));
    let (code, body) = curl(
        lab,
        "POST",
        "/v1/accounts",
        Some(ADMIN),
        Some(&format!("{{\"name\":\"{name}\",\"role\":\"{role}\"{dc}}}")),
    );
    assert_eq!(code, 201, "{body}");
    let token = body.split("\"token\":\"").nth(1).and_then(|t| t.split('"').next()).expect("token in answer");
    token.to_owned()
}

fn start(lab: &Lab, scratch: &Scratch, log: &str) -> Gateway {
    let mut gw = Gateway::start(lab, &scratch.0.join("dialtone.toml"), scratch.0.join(log));
    gw.wait_for_log("pre-provisioning service started", Duration::from_secs(20));
    gw
}

#[test]
fn preprov_service_end_to_end() {
    let lab = Lab::up("pp");
    lab.phone_address("100.64.200.50/16");
    let scratch = Scratch::new("pp");
    scratch.lab_config();
    let mut gw = start(&lab, &scratch, "gw1.log");

    // No token, bad token.
    assert_eq!(curl(&lab, "GET", "/v1/devices", None, None).0, 401);
    assert_eq!(curl(&lab, "GET", "/v1/devices", Some("wrong-token-0000000000"), None).0, 401);

    let a = create_account(&lab, "acme", "entity", Some("prov.acme.example:8081"));
    let b = create_account(&lab, "globex", "entity", None);
    let pos = create_account(&lab, "shop-17", "point-of-sale", None);

    // A registers a device; the phone gets exactly that contact.
    let (code, body) =
        curl(&lab, "PUT", "/v1/devices/80:5e:c0:00:00:01", Some(&a), Some(r#"{"contact":"203.0.113.10:8081"}"#));
    assert_eq!(code, 201, "{body}");
    let (code, body) = curl(&lab, "GET", "/v1/contact/805ec0000001", None, None);
    assert_eq!(code, 200);
    assert!(body.contains("\"contact\":\"203.0.113.10:8081\""), "{body}");
    let (_, text) =
        curl_args(&lab, "GET", "/v1/contact/805ec0000001", None, vec!["-H".into(), "Accept: text/plain".into()]);
    assert_eq!(text, "203.0.113.10:8081\n");
    assert_eq!(curl(&lab, "GET", "/v1/contact/805ec0ffffff", None, None).0, 404);

    // B sees nothing of A's, with the same answer as for a device that does not exist.
    let absent = curl(&lab, "GET", "/v1/devices/805ec0ffffff", Some(&b), None);
    assert_eq!(absent.0, 404);
    assert_eq!(curl(&lab, "GET", "/v1/devices/805ec0000001", Some(&b), None), absent);
    assert_eq!(
        curl(&lab, "DELETE", "/v1/devices/805ec0000001", Some(&b), None),
        curl(&lab, "DELETE", "/v1/devices/805ec0ffffff", Some(&b), None)
    );
    let (code, body) = curl(&lab, "PUT", "/v1/devices/805ec0000001", Some(&b), Some(r#"{"contact":"evil.example"}"#));
    assert_eq!(code, 409);
    assert!(!body.contains("acme"), "{body}");
    assert_eq!(curl(&lab, "GET", "/v1/devices", Some(&b), None).1, "{\"devices\":[],\"next\":null}\n");

    // A point of sale assigns a device to acme, which then sees it with its default contact.
    assert_eq!(curl(&lab, "PUT", "/v1/devices/SN-T54W-0042", Some(&pos), Some(r#"{"entity":"acme"}"#)).0, 201);
    let (code, body) = curl(&lab, "GET", "/v1/devices/SN-T54W-0042", Some(&a), None);
    assert_eq!(code, 200);
    assert!(body.contains("prov.acme.example:8081"), "{body}");

    // Malformed IDs and contacts: 400 with a message.
    let (code, body) = curl(&lab, "PUT", "/v1/devices/bad!id", Some(&a), Some(r#"{"contact":"prov.example"}"#));
    assert_eq!(code, 400);
    assert!(body.contains("device ID"), "{body}");
    let (code, body) = curl(&lab, "PUT", "/v1/devices/805ec0000002", Some(&a), Some(r#"{"contact":"203.0.113.1"}"#));
    assert_eq!(code, 400);
    assert!(body.contains("needs a port"), "{body}");
    assert_eq!(curl(&lab, "GET", "/v1/contact/x", None, None).0, 400);

    // A 10 MiB body is refused with 413 (the lab limit is the default 64 MiB for bulk imports,
    // so the test lowers nothing: it sends more than the configured limit of its own gateway).
    let big = scratch.0.join("big.json");
    std::fs::write(&big, vec![b'x'; 70 << 20]).expect("write big body");
    let (code, _) = curl_args(
        &lab,
        "PUT",
        "/v1/devices/805ec0000003",
        Some(&a),
        vec!["--data-binary".into(), format!("@{}", big.display())],
    );
    assert_eq!(code, 413);

    // Bulk import of 100,000 rows, three bad ones reported by line.
    let mut csv = String::from("device_id,contact\n");
    for i in 0..100_000u32 {
        match i {
            10 => csv.push_str("not/an/id,prov.acme.example\n"),
            500 => csv.push_str("aa00000001f4,198.51.100.1\n"),
            99_999 => csv.push_str("aa000001869f,bad_contact!\n"),
            _ => csv.push_str(&format!("aa{i:010x},prov.acme.example\n")),
        }
    }
    let file = scratch.0.join("bulk.csv");
    std::fs::write(&file, csv).expect("write csv");
    let started = Instant::now();
    let (code, body) = curl_args(
        &lab,
        "POST",
        "/v1/bulk/devices",
        Some(&a),
        vec!["-H".into(), "Content-Type: text/csv".into(), "--data-binary".into(), format!("@{}", file.display())],
    );
    let took = started.elapsed();
    assert_eq!(code, 207, "{body}");
    assert!(body.starts_with("{\"created\":99997,\"updated\":0,"), "{body}");
    for line in [12, 502, 100_001] {
        assert!(body.contains(&format!("\"line\":{line},")), "line {line} missing: {body}");
    }
    eprintln!("bulk import of 100,000 rows took {took:?}");

    // Everything survives a restart of the gateway.
    let status = gw.stop_with(15, Duration::from_secs(20));
    assert!(status.success(), "{}", gw.log_text());
    let _gw = start(&lab, &scratch, "gw2.log");
    let (code, body) = curl(&lab, "GET", "/v1/contact/aa00000186a0", None, None);
    assert_eq!((code, body.contains("prov.acme.example")), (404, false), "row 100,000 was the bad one: {body}");
    let (code, body) = curl(&lab, "GET", "/v1/contact/aa000001869e", None, None);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"contact\":\"prov.acme.example\""), "{body}");
    assert_eq!(curl(&lab, "GET", "/v1/devices/805ec0000001", Some(&a), None).0, 200);
    assert_eq!(curl(&lab, "GET", "/v1/devices/805ec0000001", Some(&b), None).0, 404);
}

#[test]
fn https_when_a_certificate_is_configured() {
    let lab = Lab::up("pps");
    lab.phone_address("100.64.200.60/16");
    let scratch = Scratch::new("pps");
    let config = scratch.lab_config();
    let (cert, key) = (scratch.0.join("cert.pem"), scratch.0.join("key.pem"));
    let out = common::run(
        std::process::Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=dialtone-lab",
                "-addext",
                "subjectAltName=IP:100.64.0.1",
                "-keyout",
            ])
            .arg(&key)
            .arg("-out")
            .arg(&cert),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&config).expect("config").replace(
        "listen = \"0.0.0.0:8080\"",
        &format!("listen = \"0.0.0.0:8080\"\ntls_cert = \"{}\"\ntls_key = \"{}\"", cert.display(), key.display()),
    );
    std::fs::write(&config, text).expect("write config");
    let mut gw = Gateway::start(&lab, &config, scratch.0.join("gw.log"));
    gw.wait_for_log("pre-provisioning service started", Duration::from_secs(20));
    assert!(gw.log_text().contains("https=true"), "{}", gw.log_text());
    let out = common::run(
        lab.exec("phones", "curl")
            .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
            .arg(&cert)
            .arg("https://100.64.0.1:8080/v1/contact/805ec0000001"),
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "404", "{}", String::from_utf8_lossy(&out.stderr));
    // Without trusting the certificate, curl refuses: the service really is speaking TLS.
    let out = common::run(lab.exec("phones", "curl").args([
        "-sS",
        "-o",
        "/dev/null",
        "https://100.64.0.1:8080/v1/contact/805ec0000001",
    ]));
    assert!(!out.status.success());
}

#[test]
fn slow_clients_do_not_hold_the_service() {
    let lab = Lab::up("ppl");
    lab.phone_address("100.64.200.70/16");
    lab.phone_address("100.64.200.71/16");
    let scratch = Scratch::new("ppl");
    scratch.lab_config();
    let mut gw = start(&lab, &scratch, "gw.log");
    let a = create_account(&lab, "acme", "entity", None);
    assert_eq!(
        curl(&lab, "PUT", "/v1/devices/805ec0000001", Some(&a), Some(r#"{"contact":"prov.acme.example"}"#)).0,
        201
    );

    let pid = gw.child.id();
    let count_threads = || std::fs::read_dir(format!("/proc/{pid}/task")).map(|d| d.count()).unwrap_or(0);
    let threads_before = count_threads();

    // 2,000 clients from one address that open a request and trickle header lines, never finishing.
    let mut slow = lab
        .exec("phones", "python3")
        .arg(common::repo().join("perf/slow_clients.py"))
        .args(["2000", "100.64.200.70", "100.64.0.1", "8080", "/v1/contact/805ec0000001", "8"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start slow clients");
    let mut first = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(slow.stdout.take().expect("stdout")), &mut first)
        .expect("read");
    assert_eq!(first.trim(), "holding 2000", "slow clients could not connect");

    // Legitimate inquiries from another address still succeed while they are held.
    let mut latencies = Vec::new();
    for _ in 0..30 {
        let started = Instant::now();
        let out = common::run(lab.exec("phones", "curl").args([
            "-sS",
            "--max-time",
            "5",
            "--interface",
            "100.64.200.71",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("{BASE}/v1/contact/805ec0000001"),
        ]));
        latencies.push(started.elapsed());
        assert_eq!(String::from_utf8_lossy(&out.stdout), "200", "{}", String::from_utf8_lossy(&out.stderr));
    }
    latencies.sort();
    eprintln!(
        "inquiries under 2,000 slow clients (curl process included): p50 {:?}, max {:?}",
        latencies[15], latencies[29]
    );

    // Thread count stays bounded: at most the pre-provisioning blocking pool (preprov.threads = 4
    // by default) may start, whatever the number of connections. (It may also be lower: an idle
    // blocking-pool thread of the account set-up above retires after 10 s on a loaded machine.)
    let threads = count_threads();
    assert!(
        threads > 0 && threads <= threads_before + 4,
        "{threads_before} threads before, {threads} while 2,000 slow clients are connected"
    );
    let _ = slow.kill();
    let _ = slow.wait();
    let _ = gw.stop_with(15, Duration::from_secs(20));
}

#[test]
fn token_create_makes_an_account_the_running_service_accepts() {
    let lab = Lab::up("ppt");
    lab.phone_address("100.64.200.80/16");
    let scratch = Scratch::new("ppt");
    let config = scratch.lab_config();
    let create = |name: &str| {
        common::run(
            std::process::Command::new(common::dialtone())
                .args([
                    "token",
                    "create",
                    "--name",
                    name,
                    "--role",
                    "entity",
                    "--default-contact",
                    "prov.acme.example",
                    "--config",
                ])
                .arg(&config),
        )
    };
    let out = create("acme");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert_eq!(token.len(), 64, "{token}");
    // The same name twice is refused.
    let again = create("acme");
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists"), "{}", String::from_utf8_lossy(&again.stderr));

    let _gw = start(&lab, &scratch, "gw.log");
    let (code, body) = curl(&lab, "PUT", "/v1/devices/805ec0000099", Some(&token), Some("{}"));
    assert_eq!(code, 201, "{body}");
    assert!(body.contains("prov.acme.example"), "{body}");
    // While the gateway holds the store, the command says how to proceed instead.
    let busy = create("globex");
    assert!(!busy.status.success());
    assert!(
        String::from_utf8_lossy(&busy.stderr).contains("POST /v1/accounts"),
        "{}",
        String::from_utf8_lossy(&busy.stderr)
    );
}
