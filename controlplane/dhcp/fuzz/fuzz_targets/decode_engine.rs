//! Fuzz target: hostile datagrams through the strict decoder and the whole engine pipeline.
//!
//! The input is a sequence of datagrams, each as `[time step: u8][length: u16 BE][bytes]`, fed to
//! one engine over the lab configuration (so state built by earlier datagrams is exercised by later
//! ones), with an expiry sweep after each. An odd time-step byte turns the chunk into a templated
//! client message (valid header, cookie, vendor class, server id, requested address, relay chosen
//! by its first bytes, the rest appended as raw options), so the fuzzer reaches the allocator and
//! every client state instead of stopping at the decoder. Invariants: nothing panics; every reply
//! decodes again.
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

/// A client message built around fuzz bytes: `[type][mac][vendor][flags][offset][raw options…]`.
fn templated(chunk: &[u8]) -> Vec<u8> {
    let at = |i: usize| chunk.get(i).copied().unwrap_or(0);
    let (kind, mac, vendor, flags, offset) = (at(0) % 9, at(1) % 8, at(2), at(3), at(4));
    let mut m = vec![0u8; 240];
    m[0] = 1;
    m[1] = 1;
    m[2] = 6;
    m[28..34].copy_from_slice(&[0x80, 0x5e, 0xc0, 0, 0, mac]);
    m[236..240].copy_from_slice(&[99, 130, 83, 99]);
    let lease_address = [100, 64, 16 + (offset >> 7), offset & 0x7f];
    if flags & 4 != 0 {
        m[12..16].copy_from_slice(&lease_address);
    }
    if flags & 8 != 0 {
        m[24..28].copy_from_slice(&[100, 64, 16, 254]);
        m.extend_from_slice(&[82, 4, 1, 2, 0xab, 0xcd]);
    }
    m.extend_from_slice(&[53, 1, kind]);
    let vendor_class: &[u8] = match vendor % 4 {
        0 => b"Yealink SIP-T54W",
        1 => b"Polycom-VVX450-UA/6.4",
        2 => b"dialtone-phone",
        _ => b"Cisco",
    };
    m.extend_from_slice(&[60, vendor_class.len() as u8]);
    m.extend_from_slice(vendor_class);
    if flags & 1 != 0 {
        m.extend_from_slice(&[54, 4, 100, 64, 0, 1]);
    }
    if flags & 2 != 0 {
        m.extend_from_slice(&[50, 4]);
        m.extend_from_slice(&lease_address);
    }
    m.extend_from_slice(chunk.get(5..).unwrap_or(&[]));
    m.push(255);
    m
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
        now += u64::from(*step / 2) * 8;
        let out = if step % 2 == 1 { engine.handle(now, &templated(datagram)) } else { engine.handle(now, datagram) };
        for reply in out.replies.iter().chain(engine.sweep(now).replies.iter()) {
            assert!(Message::decode(&reply.bytes).is_ok(), "every reply must decode");
        }
    }
});
