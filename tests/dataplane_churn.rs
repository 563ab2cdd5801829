//! Churn under traffic (issue 5 acceptance; claims 001: 3-7): while phones send UDP from their
//! port blocks through dialtone's AF_XDP dataplane, leases come and go at 1,000 per second
//! (RELEASE of a phone, DORA for a fresh MAC, traffic only from leased phones), and the receiver
//! behind the gateway finds no frame whose public address and port map back to another phone.

mod common;

use std::time::Duration;

use common::traffic::{drop_test_frames_at_far_end, lease_phones, send_from_phones, write_bench_config, Receiving};
use common::{Gateway, Lab, Scratch};
use dialtone_traffic::check::Direction;
use dialtone_traffic::generator::SendPlan;

const PHONES: usize = 200;
const CHURN_PER_SECOND: u64 = 1000;
const TRAFFIC_PPS: u64 = 20_000;
const SECONDS: u64 = 4;

#[test]
fn churn_at_1000_leases_per_second_never_mistranslates() {
    let lab = Lab::up("ch");
    let scratch = Scratch::new("churn");
    let (config_path, config) = write_bench_config(&scratch.0, true);
    let mut gateway = Gateway::start(&lab, &config_path, scratch.0.join("gateway.log"));
    gateway.wait_for_log("dataplane started", Duration::from_secs(30));
    drop_test_frames_at_far_end(&lab);

    let (leases, counters) = lease_phones(&lab, &config, PHONES, 1);
    assert!(leases.iter().all(Option::is_some), "every phone leased: {counters:?}");
    let receiving = Receiving::start(&lab, "net", &config, Direction::Outbound);
    let plan = SendPlan { rate_pps: TRAFFIC_PPS, duration: Duration::from_secs(SECONDS), flows_per_phone: 4 };
    let (sent, churn) = send_from_phones(&lab, &config, leases, false, plan, Some(CHURN_PER_SECOND));
    let got = receiving.finish(Duration::from_millis(500));
    let churn = churn.expect("churn ran");
    let numbers = format!("sent {sent:?}\nchurn {churn:?}\nreceived {got:?}");
    println!("{numbers}");
    let report = format!("{numbers}\ngateway log:\n{}", gateway.log_text());

    // The churn ran at the asked rate, and DHCP kept up with it.
    assert!(churn.changes_per_second >= 0.95 * CHURN_PER_SECOND as f64, "{report}");
    assert!(churn.leased as f64 >= 0.9 * churn.released as f64, "{report}");
    // Traffic flowed through the dataplane while it did.
    assert!(sent.sent as f64 >= 0.95 * (TRAFFIC_PPS * SECONDS) as f64, "{report}");
    assert!(got.received as f64 >= 0.5 * sent.sent as f64, "{report}");
    // And nothing was mistranslated.
    assert_eq!(got.mistranslated, 0, "{report}");
    assert_eq!(got.out_of_block, 0, "{report}");
    assert_eq!(got.port_changed, 0, "{report}");
    assert_eq!(got.bad_checksum, 0, "{report}");
}
