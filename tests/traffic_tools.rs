//! The traffic tools against a gateway whose behaviour is known: dialtone's DHCP leases the
//! phones (port block in option 159), Linux forwards with an nftables SNAT map built from those
//! leases. The receiver must find every frame from inside the blocks correct, flag every frame
//! from outside them (nftables, unlike NAPPT, forwards those), and flag every frame of a
//! deliberately wrong map as mistranslated: the check that the dataplane benchmark and the churn
//! test rely on can fail.

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::traffic::{
    drop_test_frames_at_far_end, lease_phones, nft_snat, nft_snat_off, release_phones, send_from_phones,
    write_bench_config, Receiving,
};
use common::{Gateway, Lab, Scratch};
use dialtone_traffic::check::Direction;
use dialtone_traffic::generator::SendPlan;
use dialtone_traffic::lease::Lease;

const PHONES: usize = 60;

fn plan() -> SendPlan {
    SendPlan { rate_pps: 5_000, duration: Duration::from_secs(1), flows_per_phone: 4 }
}

#[test]
fn receiver_checks_every_translation_through_nftables_snat() {
    let lab = Lab::up("tt");
    let scratch = Scratch::new("traffic");
    let (config_path, config) = write_bench_config(&scratch.0, false);
    let mut gateway = Gateway::start(&lab, &config_path, scratch.0.join("gateway.log"));
    gateway.wait_for_log("dhcp server started", Duration::from_secs(20));
    drop_test_frames_at_far_end(&lab);

    // Leasing: every phone gets an address of the class and the block the function gives it.
    let (leases, counters) = lease_phones(&lab, &config, PHONES, 1);
    let leased: Vec<Lease> = leases.iter().flatten().copied().collect();
    assert_eq!(leased.len(), PHONES, "{counters:?}");
    assert_eq!(counters.block_mismatches, 0, "option 159 carries the function's block");
    let class = &config.classes[0];
    for lease in &leased {
        let block = class.port_block_of(lease.address).expect("address in the class's pool");
        assert_eq!((lease.public, lease.port_lo, lease.port_hi), (block.public_ip, block.port_lo, block.port_hi));
    }
    let mut addresses: Vec<Ipv4Addr> = leased.iter().map(|l| l.address).collect();
    addresses.sort();
    addresses.dedup();
    assert_eq!(addresses.len(), PHONES, "distinct addresses");

    // Right map, ports inside the blocks: every frame correct.
    nft_snat(&lab, &leased, |l| l.public);
    let receiving = Receiving::start(&lab, "net", &config, Direction::Outbound);
    let (sent, _) = send_from_phones(&lab, &config, leases.clone(), false, plan(), None);
    let got = receiving.finish(Duration::from_millis(500));
    assert!(sent.sent >= 4_500, "{sent:?}");
    assert!(got.received as f64 >= 0.99 * sent.sent as f64, "{sent:?} {got:?}");
    assert_eq!(got.correct, got.received, "{got:?}");
    assert_eq!(got.bad_checksum, 0, "{got:?}");
    assert!(got.latency.p50_ns > 0 && got.latency.p50_ns < 50_000_000, "{got:?}");

    // Ports outside the blocks: nftables forwards them (rewriting a port when it clashes with a
    // connection of the neighbour's block), and the receiver flags each one.
    nft_snat_off(&lab);
    nft_snat(&lab, &leased, |l| l.public);
    let receiving = Receiving::start(&lab, "net", &config, Direction::Outbound);
    let (sent, _) = send_from_phones(&lab, &config, leases.clone(), true, plan(), None);
    let got = receiving.finish(Duration::from_millis(500));
    assert!(got.received as f64 >= 0.99 * sent.sent as f64, "{sent:?} {got:?}");
    assert_eq!(got.correct, 0, "{got:?}");
    assert_eq!(got.mistranslated + got.out_of_block + got.port_changed, got.received, "{got:?}");

    // A wrong map (every phone on the next public address): every frame mistranslated.
    nft_snat_off(&lab);
    nft_snat(&lab, &leased, |l| Ipv4Addr::from(u32::from(l.public) + 1));
    let receiving = Receiving::start(&lab, "net", &config, Direction::Outbound);
    let (sent, _) = send_from_phones(&lab, &config, leases, false, plan(), None);
    let got = receiving.finish(Duration::from_millis(500));
    assert!(got.received as f64 >= 0.99 * sent.sent as f64, "{sent:?} {got:?}");
    assert_eq!(got.mistranslated, got.received, "{got:?}");

    // Every RELEASE reaches the gateway and ends a lease it holds.
    release_phones(&lab, &config, &leased);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let released = lab.metric("dialtone_dhcp_messages_total{disposition=\"release\"}");
        if released == PHONES as u64 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{released} of {PHONES} RELEASEs applied");
        std::thread::sleep(Duration::from_millis(100));
    }
}
