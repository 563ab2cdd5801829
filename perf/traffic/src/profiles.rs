//! The bare-metal profiles (perf/trex/dialtone_phones.py, perf/pktgen/dialtone_phones.lua)
//! compile, and every flow they generate lies inside the sending phone's port block by the Rust
//! port-block function (claims 001: 1-7 on bare metal as in the lab).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::testing::bench_config;

fn perf_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} (scripts/setup.sh installs it): {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// Checks `direction class offset private public port` lines against class `class` of the bench
/// configuration; returns (outbound, inbound) line counts.
fn check_flows(listing: &str, phones: u32) -> (usize, usize) {
    let config = bench_config();
    let (mut outbound, mut inbound) = (0, 0);
    for line in listing.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [direction, class, offset, private, public, port] = fields[..] else {
            panic!("malformed line {line:?}");
        };
        let class: usize = class.parse().expect("class index");
        let offset: u32 = offset.parse().expect("offset");
        let private: Ipv4Addr = private.parse().expect("private address");
        let public: Ipv4Addr = public.parse().expect("public address");
        let port: u16 = port.parse().expect("port");
        let c = &config.classes[class];
        assert!(offset < phones, "{line}: offset beyond the leased phones");
        assert_eq!(c.address_at(offset), Some(private), "{line}: private address");
        let block = c.plan.port_block_for(offset).expect("offset in pool");
        assert_eq!(block.public_ip, public, "{line}: public address");
        assert!(block.contains(port), "{line}: port outside the block {block:?}");
        assert_eq!(c.plan.offset_for(public, port), Some(offset), "{line}: inverse");
        match direction {
            "outbound" => outbound += 1,
            "inbound" => inbound += 1,
            other => panic!("unknown direction {other}"),
        }
    }
    (outbound, inbound)
}

#[test]
fn trex_profile_compiles_and_stays_inside_blocks() {
    let profile = perf_dir().join("trex/dialtone_phones.py");
    let profile = profile.to_str().expect("UTF-8 path");
    // py_compile, with the byte code written outside the source tree.
    let cfile = std::env::temp_dir().join(format!("dialtone_phones-{}.pyc", std::process::id()));
    let cfile = cfile.to_str().expect("UTF-8 path");
    let _ = run(
        "/usr/bin/python3",
        &[
            "-c",
            "import py_compile, sys; py_compile.compile(sys.argv[1], cfile=sys.argv[2], doraise=True)",
            profile,
            cfile,
        ],
    );
    let _ = std::fs::remove_file(cfile);
    // Class 0 of the bench configuration: 64-port blocks; 1,100 phones span two public addresses.
    let listing = run(
        "/usr/bin/python3",
        &[
            profile,
            "--list",
            "--phones",
            "1100",
            "--flows",
            "4",
            "--ports_per_phone",
            "64",
            "--lan_pool",
            "100.64.128.0/17",
            "--public_pool",
            "198.51.100.0/26",
        ],
    );
    assert_eq!(check_flows(&listing, 1100), (4400, 4400));
    // Class 1: 1024-port blocks.
    let listing = run(
        "/usr/bin/python3",
        &[
            profile,
            "--list",
            "--phones",
            "130",
            "--flows",
            "3",
            "--ports_per_phone",
            "1024",
            "--class_index",
            "1",
            "--lan_pool",
            "100.64.16.0/20",
            "--public_pool",
            "198.51.100.128/25",
        ],
    );
    assert_eq!(check_flows(&listing, 130), (390, 390));
}

#[test]
fn pktgen_script_compiles_and_stays_inside_blocks() {
    let script = perf_dir().join("pktgen/dialtone_phones.lua");
    let script = script.to_str().expect("UTF-8 path");
    let _ = run("luac5.4", &["-p", script]);
    // 1,000 phones round up to 1,008 (one public address of 64-port blocks).
    let listing = run("lua5.4", &[script, "--list", "phones=1000", "ports_per_phone=64", "flow=17"]);
    assert_eq!(check_flows(&listing, 1008), (1008, 1008));
    let listing = run(
        "lua5.4",
        &[
            script,
            "--list",
            "phones=100",
            "ports_per_phone=1024",
            "class_index=1",
            "flow=1023",
            "lan_pool=100.64.16.0/20",
            "public_pool=198.51.100.128/25",
        ],
    );
    assert_eq!(check_flows(&listing, 126), (126, 126));
}
