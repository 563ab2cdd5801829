//! Fuzz target: arbitrary table states, then arbitrary frames on either side, in batches, with
//! state (echo slots, fragment table) carried from frame to frame. The translator must never
//! panic, and a frame may never grow past its buffer.
//!
//! Input layout (every byte is optional; missing bytes end the run):
//!   byte 0         number of updates (mod 32)
//!   5 bytes each   update: kind, class, offset (2 bytes), MAC low byte
//!   then frames:   side+capacity byte, length (2 bytes), that many frame bytes
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use dialtone_config::{Config, CpuPolicy, MacAddr};
use dialtone_nappt::{Frame, Nappt, Side, Update, Verdict};
use libfuzzer_sys::fuzz_target;

const CONFIG: &str = r#"
[lan]
interface = "lan0"
address = "100.64.0.1/16"
[wan]
interface = "wan0"
address = "192.0.2.1/24"
next_hop = "192.0.2.254"
[store]
path = "/tmp/fuzz.redb"
[dataplane]
cpus = [0]
fragment_slots = 16
[management]
listen = "127.0.0.1:9000"
token = "fuzzing-token-not-secret"
[[class]]
name = "desk"
vendor_class = { prefix = "Desk" }
ports_per_phone = 1024
lan_pool = "100.64.16.0/28"
public_pool = "198.51.100.0/30"
tftp_root = "/tmp"
[[class]]
name = "soft"
vendor_class = { prefix = "Soft" }
ports_per_phone = 16
lan_pool = "100.64.32.0/28"
public_pool = "198.51.100.128/30"
tftp_root = "/tmp"
"#;

fn config() -> &'static Config {
    static C: OnceLock<Config> = OnceLock::new();
    C.get_or_init(|| {
        dialtone_config::load_str("fuzz.toml", CONFIG, Path::new("/"), CpuPolicy::Ignore)
            .expect("the fuzz config is valid")
            .config
    })
}

struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let mut worker = Nappt::new(config(), 42);
    let Some(&[count]) = input.take(1) else { return };
    for _ in 0..count % 32 {
        let Some(&[kind, class, hi, lo, mac]) = input.take(5) else { return };
        let offset = u32::from(u16::from_be_bytes([hi, lo]) % 20);
        let mac = MacAddr([2, 0, 0, 0, 0, mac]);
        let update = match kind % 4 {
            0 => Update::LeaseUp { class: u16::from(class % 3), offset, mac },
            1 => Update::LeaseDown { class: u16::from(class % 3), offset },
            2 => Update::NextHop { mac: (mac.0[5] != 0).then_some(mac) },
            _ => Update::InterfaceMacs { lan: mac, wan: MacAddr([2, 0, 0, 0, 1, mac.0[5]]) },
        };
        let _ = worker.apply(update);
    }
    let mut now_ms = 0;
    while let Some(&[side_capacity, hi, lo]) = input.take(3) {
        let len = usize::from(u16::from_be_bytes([hi, lo]) % 1600).min(input.0.len());
        let Some(bytes) = input.take(len) else { return };
        let spare = usize::from(side_capacity >> 1);
        let mut buffer = bytes.to_vec();
        buffer.resize(len + spare, 0);
        let side = if side_capacity & 1 == 0 { Side::Lan } else { Side::Wan };
        let mut frames = [Frame::new(&mut buffer, len, side)];
        let mut out = [Verdict::ToKernel];
        worker.translate(now_ms, &mut frames, &mut out);
        assert!(frames[0].len() <= len + spare);
        now_ms += 100;
    }
    let counters = worker.counters();
    let total = counters.to_wan + counters.to_lan + counters.to_kernel + counters.dropped_total();
    assert!(total <= (data.len() / 3) as u64 + 1);
});
