//! Every refusal of issue 2 names the file, the line and the field.

use std::path::Path;

use dialtone_config::{load, load_str, ConfigError, CpuPolicy, Severity};

/// A small valid configuration; each case below breaks one line of it.
const BASE: &str = r#"[lan]
interface = "lan0"
address = "100.64.0.1/16"

[wan]
interface = "wan0"
address = "192.0.2.1/24"
next_hop = "192.0.2.254"

[dataplane]
cpus = [0]

[management]
token = "0123456789abcdef0123"

[[class]]
name = "a"
vendor_class = { prefix = "Yealink" }
mac_oui = ["80:5e:c0"]
ports_per_phone = 1024
lan_pool = "100.64.16.0/24"
public_pool = "198.51.100.0/28"

[[class]]
name = "b"
vendor_class = { exact = "Polycom" }
ports_per_phone = 4096
lan_pool = "100.64.32.0/25"
public_pool = "198.51.100.16/28"
"#;

fn errors_of(text: &str, cpus: CpuPolicy) -> Vec<ConfigError> {
    match load_str("site.toml", text, Path::new("/etc/dialtone"), cpus) {
        Ok(loaded) => panic!("expected a refusal, got a config; warnings: {:?}", loaded.warnings),
        Err(e) => e.0,
    }
}

/// Replaces the one line that starts with `old` and returns the text and that line's number.
fn with_line(old: &str, new: &str) -> (String, usize) {
    let mut found = None;
    let lines: Vec<String> = BASE
        .lines()
        .enumerate()
        .map(|(i, l)| {
            if l.starts_with(old) && found.is_none() {
                found = Some(i + 1);
                new.to_owned()
            } else {
                l.to_owned()
            }
        })
        .collect();
    (lines.join("\n") + "\n", found.unwrap_or_else(|| panic!("no line starts with {old:?}")))
}

/// Asserts that the one error is on `line`, names `field`, and says `reason`.
fn assert_refused(text: &str, line: usize, field: &str, reason: &str) {
    let errors = errors_of(text, CpuPolicy::Ignore);
    let hit = errors.iter().find(|e| e.line == line && e.field == field && e.reason.contains(reason));
    assert!(hit.is_some(), "wanted {line}: {field}: ..{reason}.., got:\n{errors:#?}");
    let shown = hit.map(ToString::to_string).unwrap_or_default();
    assert!(shown.starts_with(&format!("site.toml:{line}: {field}: ")), "{shown}");
}

#[test]
fn base_is_valid() {
    let loaded = load_str("site.toml", BASE, Path::new("/etc"), CpuPolicy::Ignore).expect("base config is valid");
    assert_eq!(loaded.config.classes.len(), 2);
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
}

#[test]
fn malformed_cidr() {
    let (text, line) = with_line("lan_pool = \"100.64.16.0/24\"", "lan_pool = \"100.64.16.0/33\"");
    assert_refused(&text, line, "class[0].lan_pool", "is not an IPv4 network");
    let (text, line) = with_line("public_pool = \"198.51.100.0/28\"", "public_pool = \"198.51.100.3/28\"");
    assert_refused(&text, line, "class[0].public_pool", "host bits set");
}

#[test]
fn malformed_address() {
    let (text, line) = with_line("next_hop", "next_hop = \"192.0.2.300\"");
    assert_refused(&text, line, "wan.next_hop", "is not an IPv4 address");
    let (text, line) = with_line("address = \"100.64.0.1/16\"", "address = \"100.64.0.0/16\"");
    assert_refused(&text, line, "lan.address", "network or broadcast");
}

#[test]
fn class_pool_outside_lan_subnet() {
    let (text, line) = with_line("lan_pool = \"100.64.16.0/24\"", "lan_pool = \"100.65.16.0/24\"");
    assert_refused(&text, line, "class[0].lan_pool", "is not inside the LAN subnet 100.64.0.0/16");
}

#[test]
fn overlapping_lan_pools() {
    let (text, line) = with_line("lan_pool = \"100.64.32.0/25\"", "lan_pool = \"100.64.16.128/25\"");
    assert_refused(&text, line, "class[1].lan_pool", "overlaps class[0].lan_pool");
}

#[test]
fn overlapping_public_pools() {
    let (text, line) = with_line("public_pool = \"198.51.100.16/28\"", "public_pool = \"198.51.100.0/27\"");
    assert_refused(&text, line, "class[1].public_pool", "overlaps class[0].public_pool");
}

#[test]
fn public_pool_holding_the_wan_address() {
    let (text, line) = with_line("public_pool = \"198.51.100.16/28\"", "public_pool = \"192.0.2.0/28\"");
    assert_refused(&text, line, "class[1].public_pool", "contains the gateway's WAN address 192.0.2.1");
}

#[test]
fn ports_per_phone_not_a_power_of_two_in_range() {
    for bad in ["1000", "8", "65536"] {
        let (text, line) = with_line("ports_per_phone = 1024", &format!("ports_per_phone = {bad}"));
        assert_refused(&text, line, "class[0].ports_per_phone", "is not a power of two");
    }
}

#[test]
fn lan_pool_larger_than_public_blocks() {
    // 256 phones, 16 addresses x 15 blocks of 4096 ports = 240 blocks.
    let (text, line) = with_line("lan_pool = \"100.64.32.0/25\"", "lan_pool = \"100.64.32.0/24\"");
    assert_refused(&text, line, "class[1].lan_pool", "holds 256 phones but the public pool has only 240 blocks");
}

#[test]
fn vendor_class_regex_that_does_not_compile() {
    let (text, line) = with_line("vendor_class = { exact = \"Polycom\" }", "vendor_class = { regex = \"Poly(com\" }");
    assert_refused(&text, line, "class[1].vendor_class", "does not compile");
}

#[test]
fn bad_oui_and_mac() {
    let (text, line) = with_line("mac_oui", "mac_oui = [\"80:5e:zz\"]");
    assert_refused(&text, line, "class[0].mac_oui[0]", "is not an OUI");
    let text = format!("{BASE}\n[dhcp]\ndeny_macs = [\"01:00:5e:00:00:01\", \"80:5e:c0:12:34\"]\n");
    let line = text.lines().count();
    assert_refused(&text, line, "dhcp.deny_macs[0]", "group or zero address");
    assert_refused(&text, line, "dhcp.deny_macs[1]", "is not a MAC address");
}

#[test]
fn duplicate_class_names() {
    let (text, line) = with_line("name = \"b\"", "name = \"a\"");
    assert_refused(&text, line, "class[1].name", "already the name of class[0]");
}

#[test]
fn cpu_ids_the_machine_lacks() {
    let (text, line) = with_line("cpus = [0]", "cpus = [0, 7]");
    static ONLINE: [u32; 2] = [0, 1];
    let errors = errors_of(&text, CpuPolicy::Refuse(&ONLINE));
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(
        errors[0].to_string(),
        format!("site.toml:{line}: dataplane.cpus[1]: CPU 7 is not online on this machine (online: [0, 1])")
    );
    // check-config only warns, so a plan can be checked away from its box.
    let loaded = load_str("site.toml", &text, Path::new("/"), CpuPolicy::Warn(&ONLINE)).expect("warning only");
    assert_eq!(loaded.warnings.len(), 1);
    assert_eq!(loaded.warnings[0].severity, Severity::Warning);
    assert_eq!((loaded.warnings[0].line, loaded.warnings[0].field.as_str()), (line, "dataplane.cpus[1]"));
}

#[test]
fn unknown_field_is_refused_with_its_line() {
    let (text, line) = with_line("ports_per_phone = 1024", "ports_per_phone = 1024\nport_per_phone = 64");
    let errors = errors_of(&text, CpuPolicy::Ignore);
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].line, line + 1);
    assert_eq!(errors[0].field, "class[0].port_per_phone");
    assert!(errors[0].reason.contains("unknown field `port_per_phone`"), "{}", errors[0]);
}

#[test]
fn wrong_type_names_the_field() {
    let (text, line) = with_line("ports_per_phone = 4096", "ports_per_phone = \"many\"");
    let errors = errors_of(&text, CpuPolicy::Ignore);
    assert_eq!((errors[0].line, errors[0].field.as_str()), (line, "class[1].ports_per_phone"), "{errors:?}");
}

#[test]
fn management_needs_a_token() {
    let (text, line) = with_line("token =", "listen = \"127.0.0.1:9000\"");
    let errors = errors_of(&text, CpuPolicy::Ignore);
    assert!(errors.iter().any(|e| e.field == "management.token" && e.line == line - 1), "{errors:?}");
}

#[test]
fn quarantine_below_rfc6888_floor() {
    let text = format!("{BASE}\n[dhcp]\nquarantine = \"60s\"\n");
    assert_refused(&text, text.lines().count(), "dhcp.quarantine", "outside 2m..");
}

#[test]
fn every_error_is_reported_not_just_the_first() {
    let text = BASE.replace("192.0.2.254", "10.0.0.1").replace("ports_per_phone = 1024", "ports_per_phone = 1000");
    let errors = errors_of(&text, CpuPolicy::Ignore);
    let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
    assert!(fields.contains(&"wan.next_hop") && fields.contains(&"class[0].ports_per_phone"), "{fields:?}");
}

#[test]
fn every_example_loads() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("config/examples exists") {
        let path = entry.expect("directory entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            let loaded = load(&path, CpuPolicy::Ignore).unwrap_or_else(|e| panic!("{}:\n{e}", path.display()));
            assert!(!loaded.config.classes.is_empty());
            seen += 1;
        }
    }
    assert!(seen >= 2, "expected dialtone.toml and carrier.toml, saw {seen} files");
}

#[test]
fn lab_default_has_classes_of_different_block_sizes() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/dialtone.toml");
    let config = load(&path, CpuPolicy::Ignore).expect("lab config loads").config;
    let mut sizes: Vec<u32> = config.classes.iter().map(|c| c.plan.ports_per_phone).collect();
    sizes.dedup();
    assert!(sizes.len() >= 2, "{sizes:?}");
    assert_eq!(config.lan.address.to_string(), "100.64.0.1/16");
    assert_eq!(config.wan.address.to_string(), "192.0.2.1/24");
    for class in &config.classes {
        assert!("198.51.100.0/24".parse::<ipnet::Ipv4Net>().expect("net").contains(&class.public_pool));
    }
}
