//! The receiver's accounting: counts, the translation check and one-way latency.
//!
//! Latency is the kernel's receive timestamp of the frame (CLOCK_REALTIME, taken when the frame
//! reached the receiving interface) converted to CLOCK_MONOTONIC with the offset between the two
//! clocks sampled at start, minus the CLOCK_MONOTONIC time the generator wrote into the payload.
//! Both namespaces share both clocks, so this is the time from the generator writing the frame to
//! the receiver's interface getting it.

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::check::{Checker, Direction, Verdict};
use crate::frame::{parse_udp, ParseError, Payload};

/// Highest latency recorded (larger values are clamped): 60 s.
const MAX_LATENCY_NS: u64 = 60_000_000_000;

/// Latency percentiles in nanoseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Latency {
    /// Median.
    pub p50_ns: u64,
    /// 99th percentile.
    pub p99_ns: u64,
    /// 99.9th percentile.
    pub p999_ns: u64,
    /// Largest.
    pub max_ns: u64,
}

/// The receiver's machine-readable summary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Summary {
    /// Generated frames received (every verdict).
    pub received: u64,
    /// Translated as NAPPT must.
    pub correct: u64,
    /// Mapped back to another phone.
    pub mistranslated: u64,
    /// In no phone's block.
    pub out_of_block: u64,
    /// Phone-side port rewritten.
    pub port_changed: u64,
    /// Generated frames whose IPv4 or UDP checksum was wrong on arrival.
    pub bad_checksum: u64,
    /// Other frames seen on the interface (ARP, DHCP, ...).
    pub other_frames: u64,
    /// Frames the kernel dropped because the receive ring was full (not the gateway's loss).
    pub ring_drops: u64,
    /// Seconds from the first to the last generated frame received.
    pub seconds: f64,
    /// One-way latency of the generated frames.
    pub latency: Latency,
}

/// Counts and checks received frames.
#[derive(Debug)]
pub struct Receiver {
    checker: Option<Checker>,
    direction: Direction,
    realtime_minus_monotonic_ns: i128,
    histogram: Histogram<u64>,
    summary: Summary,
    first_ns: Option<u64>,
    last_ns: u64,
}

impl Receiver {
    /// A receiver checking `direction` with `checker` (none: count and time only, for a plain
    /// forwarder that translates nothing). `realtime_minus_monotonic_ns` converts kernel
    /// timestamps to the payload's clock.
    pub fn new(checker: Option<Checker>, direction: Direction, realtime_minus_monotonic_ns: i128) -> Self {
        let histogram = Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3).expect("static histogram bounds are valid");
        Self {
            checker,
            direction,
            realtime_minus_monotonic_ns,
            histogram,
            summary: Summary::default(),
            first_ns: None,
            last_ns: 0,
        }
    }

    /// Accounts one frame received at `realtime_ns`; returns true when it was a generated frame.
    pub fn frame(&mut self, bytes: &[u8], realtime_ns: u64) -> bool {
        let parsed = match parse_udp(bytes) {
            Ok(parsed) => parsed,
            Err(ParseError::BadChecksum) => {
                // Only ours count as corrupted; other traffic is not our business.
                if bytes.len() >= 60 && Payload::decode(&bytes[42..]).is_some() {
                    self.summary.bad_checksum += 1;
                    return true;
                }
                self.summary.other_frames += 1;
                return false;
            }
            Err(ParseError::NotUdp) => {
                self.summary.other_frames += 1;
                return false;
            }
        };
        let Some(payload) = Payload::decode(parsed.body) else {
            self.summary.other_frames += 1;
            return false;
        };
        self.summary.received += 1;
        let verdict = match &self.checker {
            Some(checker) => checker.check(self.direction, &parsed.flow, &payload),
            None => Verdict::Correct,
        };
        match verdict {
            Verdict::Correct => self.summary.correct += 1,
            Verdict::Mistranslated => self.summary.mistranslated += 1,
            Verdict::OutOfBlock => self.summary.out_of_block += 1,
            Verdict::PortChanged => self.summary.port_changed += 1,
        }
        let arrived = i128::from(realtime_ns) - self.realtime_minus_monotonic_ns;
        let latency = (arrived - i128::from(payload.sent_ns)).clamp(1, i128::from(MAX_LATENCY_NS)) as u64;
        self.histogram.saturating_record(latency);
        self.first_ns.get_or_insert(realtime_ns);
        self.last_ns = realtime_ns;
        true
    }

    /// Adds the kernel's ring-full drops.
    pub fn ring_drops(&mut self, drops: u64) {
        self.summary.ring_drops += drops;
    }

    /// The summary so far.
    pub fn summary(&self) -> Summary {
        let mut summary = self.summary;
        summary.seconds = self.first_ns.map_or(0.0, |first| (self.last_ns - first) as f64 / 1e9);
        if !self.histogram.is_empty() {
            summary.latency = Latency {
                p50_ns: self.histogram.value_at_quantile(0.50),
                p99_ns: self.histogram.value_at_quantile(0.99),
                p999_ns: self.histogram.value_at_quantile(0.999),
                max_ns: self.histogram.max(),
            };
        }
        summary
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{write_test_frame, PhoneId, UdpFlow, FRAME_LEN};
    use crate::testing::bench_config;
    use std::net::Ipv4Addr;

    fn frame(src: Ipv4Addr, port: u16, phone: PhoneId, sent_ns: u64) -> [u8; FRAME_LEN] {
        let mut f = [0u8; FRAME_LEN];
        let flow = UdpFlow {
            src_mac: [2, 0, 0, 0, 1, 1],
            dst_mac: [2, 0, 0, 0, 1, 0xfe],
            src,
            dst: Ipv4Addr::new(203, 0, 113, 10),
            src_port: port,
            dst_port: 9,
        };
        write_test_frame(&mut f, &flow, &Payload { phone, port, sent_ns, sequence: 0 });
        f
    }

    #[test]
    fn counts_verdicts_and_latency() {
        let config = bench_config();
        let block = config.classes[0].plan.port_block_for(10).expect("block");
        let phone = PhoneId { class: 0, offset: 10 };
        let mut r = Receiver::new(Some(Checker::new(config)), Direction::Outbound, 1_000_000);
        // Sent at monotonic 5_000, received at realtime 1_000_000 + 15_000: 10 µs.
        assert!(r.frame(&frame(block.public_ip, block.port_lo, phone, 5_000), 1_015_000));
        assert!(r.frame(&frame(block.public_ip, block.port_hi + 1, PhoneId { offset: 10, ..phone }, 5_000), 1_020_000));
        assert!(r.frame(&frame(Ipv4Addr::new(100, 64, 128, 10), block.port_lo, phone, 5_000), 1_025_000));
        let mut corrupt = frame(block.public_ip, block.port_lo, phone, 5_000);
        corrupt[30] ^= 0xff;
        assert!(r.frame(&corrupt, 1_030_000));
        assert!(!r.frame(&[0u8; 42], 1_030_000));
        let s = r.summary();
        assert_eq!((s.received, s.correct, s.mistranslated, s.out_of_block), (3, 1, 1, 1));
        assert_eq!((s.bad_checksum, s.other_frames), (1, 1));
        assert_eq!(s.latency.p50_ns / 1000, 15);
        assert!((s.seconds - 0.00001).abs() < 1e-9);
    }
}
