//! Fuzz target: hostile datagrams through the strict decoder and the whole engine pipeline.
//!
//! The input is a sequence of datagrams, each as `[time step: u8][length: u16 BE][bytes]`, fed to
//! one engine over the lab configuration (so state built by earlier datagrams is exercised by later
//! ones), with an expiry sweep after each. Invariants: nothing panics; every reply decodes again.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use dialtone_config::{load_str, Config, CpuPolicy};
use dialtone_dhcp::{Engine, Limits, Message};
use dialtone_store::LeaseSnapshot;
use libfuzzer_sys::fuzz_target;

fn config() -> &'static Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    CONFIG.get_or_init(|| {
        let text = include_str!("../../../../config/examples/dialtone.toml");
        load_str("dialtone.toml", text, Path::new("."), CpuPolicy::Ignore)
            .expect("the example configuration is valid")
            .config
    })
}

fuzz_target!(|data: &[u8]| {
    // The whole input as one datagram first: the plain decoder path.
    if let Ok(msg) = Message::decode(data) {
        let (bytes, _) = msg.encode(usize::MAX);
        assert!(Message::decode(&bytes).is_ok(), "re-encoded message must decode");
    }
    let mut engine = Engine::new(config().clone(), &LeaseSnapshot::default(), Limits { max_offers: 16 });
    let mut now = 1_000_000u64;
    let mut rest = data;
    while let [step, hi, lo, tail @ ..] = rest {
        let len = usize::from(u16::from_be_bytes([*hi, *lo])).min(tail.len());
        let (datagram, next) = tail.split_at(len);
        rest = next;
        now += u64::from(*step) * 16;
        let out = engine.handle(now, datagram);
        for reply in out.replies.iter().chain(engine.sweep(now).replies.iter()) {
            assert!(Message::decode(&reply.bytes).is_ok(), "every reply must decode");
        }
    }
});
