//! Both directions through dialtone's AF_XDP dataplane, checked frame by frame (claims 001: 3-7,
//! 18-22): phones leased from dialtone's DHCP send from their blocks and arrive behind the WAN with
//! their public address and the same port; the far end sends to their public address and port and
//! the frames arrive on the LAN at the phone's private address, same port; frames from ports
//! outside the blocks never leave the gateway. Once with the XDP program attached as the
//! interfaces allow (native on veth), once forced into the generic (SKB) path, the fallback on
//! drivers without native XDP.

mod common;

use std::time::Duration;

use common::traffic::{
    drop_test_frames_at_far_end, lease_phones, send_from_phones, send_to_phones, write_bench_config_xdp, Receiving,
};
use common::{Gateway, Lab, Scratch};
use dialtone_traffic::check::Direction;
use dialtone_traffic::generator::SendPlan;
use dialtone_traffic::lease::Lease;

const PHONES: usize = 100;

fn plan() -> SendPlan {
    SendPlan { rate_pps: 10_000, duration: Duration::from_secs(1), flows_per_phone: 4 }
}

#[test]
fn both_directions_translate_and_outside_ports_are_dropped() {
    both_directions("dt", "auto", "native");
}

#[test]
fn generic_xdp_translates_both_directions_too() {
    both_directions("dg", "generic", "generic");
}

/// The whole check with `dataplane.xdp_mode = xdp_mode`; the program must be attached in
/// `attached` mode.
fn both_directions(tag: &str, xdp_mode: &str, attached: &str) {
    let _alone = common::one_dataplane_at_a_time();
    let lab = Lab::up(tag);
    let scratch = Scratch::new(&format!("dptraffic-{xdp_mode}"));
    let (config_path, config) = write_bench_config_xdp(&scratch.0, xdp_mode);
    let mut gateway = Gateway::start(&lab, &config_path, scratch.0.join("gateway.log"));
    gateway.wait_for_log("dataplane started", Duration::from_secs(30));
    let log = gateway.log_text();
    let attach = log.lines().find(|line| line.contains("xdp program attached")).unwrap_or_default();
    assert!(attach.contains(attached), "wanted the program attached in {attached} mode:\n{log}");
    drop_test_frames_at_far_end(&lab);
    let (leases, counters) = lease_phones(&lab, &config, PHONES, 1);
    assert!(leases.iter().all(Option::is_some), "{counters:?}");
    let leased: Vec<Lease> = leases.iter().flatten().copied().collect();

    // Outbound: every frame arrives, translated to its phone's block, port unchanged.
    let receiving = Receiving::start(&lab, "net", &config, Direction::Outbound);
    let (sent, _) = send_from_phones(&lab, &config, leases.clone(), false, plan(), None);
    let got = receiving.finish(Duration::from_millis(500));
    assert!(got.received as f64 >= 0.99 * sent.sent as f64, "{sent:?} {got:?}");
    assert_eq!(got.correct, got.received, "{got:?}");

    // Inbound: from the far end to each phone's public address and port.
    let receiving = Receiving::start(&lab, "phones", &config, Direction::Inbound);
    let sent = send_to_phones(&lab, &config, &leased, plan());
    let got = receiving.finish(Duration::from_millis(500));
    assert!(got.received as f64 >= 0.99 * sent.sent as f64, "{sent:?} {got:?}");
    assert_eq!(got.correct, got.received, "{got:?}");

    // Outside the blocks: nothing leaves, every frame is a counted drop.
    let before = lab.metric("dialtone_dataplane_drops_total{worker=\"0\",reason=\"port_outside_block\"}");
    let receiving = Receiving::start(&lab, "net", &config, Direction::Outbound);
    let (sent, _) = send_from_phones(&lab, &config, leases, true, plan(), None);
    let got = receiving.finish(Duration::from_millis(500));
    assert_eq!(got.received, 0, "{got:?}");
    let dropped = lab.metric("dialtone_dataplane_drops_total{worker=\"0\",reason=\"port_outside_block\"}") - before;
    assert!(dropped as f64 >= 0.99 * sent.sent as f64, "{dropped} of {} dropped as outside the block", sent.sent);
}
