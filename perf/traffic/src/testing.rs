//! A configuration shaped like the lab benchmark's, for unit tests.

use std::path::Path;

use dialtone_config::{Config, CpuPolicy};

/// Two classes: 64-port softphones (32,768 offsets) and 1024-port desk phones (4,096 offsets).
pub const BENCH_CONFIG: &str = r#"
[lan]
interface = "lan0"
address = "100.64.0.1/16"

[wan]
interface = "wan0"
address = "192.0.2.1/24"
next_hop = "192.0.2.254"

[store]
path = "/tmp/dialtone-traffic-test.redb"

[dataplane]
cpus = [0]

[management]
listen = "127.0.0.1:9000"
token = "traffic-test-token-not-secret"

[[class]]
name = "bench"
vendor_class = { exact = "dialtone-bench" }
ports_per_phone = 64
lan_pool = "100.64.128.0/17"
public_pool = "198.51.100.0/26"
tftp_root = "/tmp"

[[class]]
name = "desk"
vendor_class = { prefix = "Desk" }
ports_per_phone = 1024
lan_pool = "100.64.16.0/20"
public_pool = "198.51.100.128/25"
tftp_root = "/tmp"
"#;

/// [`BENCH_CONFIG`], validated.
pub fn bench_config() -> Config {
    dialtone_config::load_str("bench.toml", BENCH_CONFIG, Path::new("/"), CpuPolicy::Ignore)
        .expect("the test configuration is valid")
        .config
}
