//! End-to-end: the lab script, `check-config` and `run` of the real binary.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{dialtone, repo, run, Gateway, Lab, Scratch};

#[test]
fn lab_up_is_idempotent_and_down_leaves_nothing() {
    common::require_root();
    let before = common::netns_list();
    let lab = Lab::up("lab");
    let ours = [lab.ns("phones"), lab.ns("gw"), lab.ns("net")];
    let during = common::netns_list();
    for ns in &ours {
        assert!(during.contains(ns), "{ns} missing from {during:?}");
    }
    // The address plan every later test relies on.
    let addrs = |side: &str| {
        String::from_utf8_lossy(&run(lab.exec(side, "ip").args(["-4", "-br", "addr"])).stdout).into_owned()
    };
    let gw = addrs("gw");
    assert!(gw.contains("100.64.0.1/16") && gw.contains("192.0.2.1/24"), "{gw}");
    let net = addrs("net");
    assert!(net.contains("192.0.2.254/24") && net.contains("203.0.113.10/24"), "{net}");
    let route = run(lab.exec("net", "ip").args(["route", "get", "198.51.100.7"]));
    assert!(String::from_utf8_lossy(&route.stdout).contains("via 192.0.2.1"), "{route:?}");
    // The next hop reaches the gateway's WAN address.
    let ping = run(lab.exec("net", "ping").args(["-c1", "-W2", "192.0.2.1"]));
    assert!(ping.status.success(), "{}", String::from_utf8_lossy(&ping.stdout));
    // Multi-queue veths: one queue per CPU by default.
    let queues = run(lab.exec("gw", "ls").arg("/sys/class/net/lan0/queues"));
    let rx = String::from_utf8_lossy(&queues.stdout).lines().filter(|l| l.starts_with("rx-")).count();
    assert_eq!(rx, std::thread::available_parallelism().map_or(1, |n| n.get()));

    // `up` again changes nothing and does not fail.
    let again = run(Command::new(repo().join("scripts/lab.sh")).args(["up", "--prefix", &lab.prefix]));
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    assert_eq!(addrs("gw"), gw);

    drop(lab);
    let after = common::netns_list();
    for ns in &ours {
        assert!(!after.contains(ns), "{ns} still present after down");
    }
    // Only our namespaces came and went (other tests may run side by side, so compare ours).
    assert!(before.iter().all(|ns| !ours.contains(ns)));
}

#[test]
fn check_config_prints_the_plan_of_every_example() {
    for name in ["dialtone.toml", "carrier.toml"] {
        let out = run(Command::new(dialtone()).arg("check-config").arg(repo().join("config/examples").join(name)));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(stdout.contains("is valid") && stdout.contains("blocks per address"), "{stdout}");
    }
    let out = run(Command::new(dialtone()).arg("check-config").arg(repo().join("config/examples/dialtone.toml")));
    let stdout = String::from_utf8_lossy(&out.stdout);
    // yealink-t5: 100.64.16.0/20 with 1024-port blocks: 4096 phones, 63 blocks per address.
    assert!(stdout.contains("phones             4096 (100.64.16.0/20)"), "{stdout}");
    assert!(stdout.contains("first block        100.64.16.0 -> 198.51.100.0:1024-2047"), "{stdout}");
    assert!(stdout.contains("option 159         00 06 04 00"), "{stdout}");
}

#[test]
fn check_config_refuses_with_file_line_and_field() {
    let scratch = Scratch::new("bad");
    let text = std::fs::read_to_string(repo().join("config/examples/dialtone.toml")).expect("read example");
    let bad = text.replacen("ports_per_phone = 4096", "ports_per_phone = 3000", 1);
    let line = bad.lines().position(|l| l.contains("ports_per_phone = 3000")).expect("edited line") + 1;
    let path = scratch.0.join("bad.toml");
    std::fs::write(&path, bad).expect("write bad config");
    let out = run(Command::new(dialtone()).arg("check-config").arg(&path));
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let want = format!("{}:{line}: class[1].ports_per_phone: 3000 is not a power of two", path.display());
    assert!(stderr.contains(&want), "wanted {want:?} in:\n{stderr}");
    assert!(out.stdout.is_empty(), "no plan is printed for a refused file");
}

#[test]
fn run_refuses_cpu_ids_the_machine_lacks() {
    let scratch = Scratch::new("cpu");
    let config = scratch.lab_config();
    let text = std::fs::read_to_string(&config).expect("read config").replace("cpus = [1]", "cpus = [4095]");
    std::fs::write(&config, text).expect("write config");
    let out = run(Command::new(dialtone()).args(["run", "--config"]).arg(&config));
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("dataplane.cpus[0]: CPU 4095 is not online"), "{stderr}");
    // check-config on the same file only warns.
    let out = run(Command::new(dialtone()).arg("check-config").arg(&config));
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("warning: dataplane.cpus[0]"));
}

#[test]
fn run_stops_cleanly_on_sigterm_and_sigint() {
    let lab = Lab::up("run");
    let scratch = Scratch::new("run");
    let config = scratch.lab_config();
    for (signal, name) in [(15, "SIGTERM"), (2, "SIGINT")] {
        let mut gw = Gateway::start(&lab, &config, scratch.0.join(format!("gw-{name}.log")));
        gw.wait_for_log("dialtone started", Duration::from_secs(10));
        let status = gw.stop_with(signal, Duration::from_secs(10));
        assert!(status.success(), "{name}: exit {status}; log:\n{}", gw.log_text());
        assert!(gw.log_text().contains("dialtone stopped"), "{}", gw.log_text());
    }
}

#[test]
fn version_and_help_are_true() {
    let out = run(Command::new(dialtone()).arg("--version"));
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("dialtone {}", env!("CARGO_PKG_VERSION")));
    let out = run(Command::new(dialtone()).arg("--help"));
    let help = String::from_utf8_lossy(&out.stdout);
    for sub in ["check-config", "run"] {
        assert!(help.contains(sub), "{help}");
    }
}
