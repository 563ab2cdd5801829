//! The generator's loops: leasing a fleet, transmitting test frames at a paced or maximal rate,
//! and churning leases while traffic flows.
//!
//! The transmit loop works in batches (up to [`BATCH`] frames per `sendto` kick, the most a copy-
//! mode AF_XDP socket sends per call), reads the clock once per batch, allocates nothing and
//! logs nothing. Pacing is a token bucket measured from the start: after a stall the loop catches
//! up with bursts of at most one batch, never more than the schedule.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use dialtone_config::Config;
use serde::Serialize;

use crate::fleet::{SlotPhone, Slots};
use crate::frame::{write_test_frame, Payload, PhoneId, UdpFlow, FRAME_LEN};
use crate::lease::{phone_mac, Event, Lease, LeaseCounters, LeaseEngine};
use crate::sys::{monotonic_ns, PacketSocket, XskTx};

/// Frames per transmit batch.
pub const BATCH: usize = 32;
/// UDP port of the far end's side of every flow (discard).
pub const FAR_PORT: u16 = 9;

/// Which way the frames go through the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// From phones (private source, ports of their blocks) to the far end, sent on the LAN side.
    Outbound {
        /// The gateway's LAN MAC (destination of every frame).
        gateway_mac: [u8; 6],
        /// The far end's address.
        far: Ipv4Addr,
        /// Send from ports just outside each phone's block (the gateway must drop them all).
        outside: bool,
    },
    /// From the far end to phones' public address and port, sent on the WAN side.
    Inbound {
        /// This side's MAC (source of every frame).
        local_mac: [u8; 6],
        /// The gateway's WAN MAC.
        gateway_mac: [u8; 6],
        /// The far end's address (source).
        far: Ipv4Addr,
    },
}

/// What the transmit loop needs of the configuration, precomputed.
#[derive(Debug, Clone)]
pub struct Classes {
    lan_base: Vec<u32>,
    config: Config,
}

impl Classes {
    /// From the gateway's configuration.
    pub fn new(config: Config) -> Self {
        Self { lan_base: config.classes.iter().map(|c| u32::from(c.lan_pool.network())).collect(), config }
    }

    /// The phone id and public address of `phone`.
    #[inline]
    pub fn identify(&self, phone: &SlotPhone) -> Option<(PhoneId, Ipv4Addr)> {
        let class = usize::from(phone.class);
        let offset = u32::from(phone.address).checked_sub(*self.lan_base.get(class)?)?;
        let block = self.config.classes.get(class)?.plan.port_block_for(offset)?;
        Some((PhoneId::new(class, offset)?, block.public_ip))
    }
}

/// Rate and shape of a transmit run.
#[derive(Debug, Clone, Copy)]
pub struct SendPlan {
    /// Frames per second; 0 sends as fast as the socket takes them.
    pub rate_pps: u64,
    /// How long to send.
    pub duration: Duration,
    /// Distinct ports used per phone, spread evenly over its block.
    pub flows_per_phone: u32,
}

/// What a transmit run did.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct SendSummary {
    /// Frames handed to the kernel.
    pub sent: u64,
    /// Seconds spent sending.
    pub seconds: f64,
    /// `sent / seconds`.
    pub achieved_pps: f64,
    /// The rate asked for (0 = maximum).
    pub offered_pps: u64,
    /// Batches the TX ring could not take at once (the socket was the limit).
    pub ring_full: u64,
    /// Slot picks that found no leased phone (churn in progress).
    pub empty_slots: u64,
    /// Frames not completed by the kernel when the run ended.
    pub not_completed: u64,
}

/// Token bucket from a fixed start: how many frames the schedule allows by `now`.
#[derive(Debug, Clone, Copy)]
pub struct Pacer {
    rate_pps: u64,
    start_ns: u64,
    sent: u64,
}

impl Pacer {
    /// `rate_pps` frames per second from `start_ns` (0 = unlimited).
    pub fn new(rate_pps: u64, start_ns: u64) -> Self {
        Self { rate_pps, start_ns, sent: 0 }
    }

    /// Frames allowed now, at most `cap`.
    pub fn allowance(&self, now_ns: u64, cap: usize) -> usize {
        if self.rate_pps == 0 {
            return cap;
        }
        let elapsed = u128::from(now_ns.saturating_sub(self.start_ns));
        let due = elapsed * u128::from(self.rate_pps) / 1_000_000_000;
        let allowed = due.saturating_sub(u128::from(self.sent));
        allowed.min(cap as u128) as usize
    }

    /// Nanoseconds until `frames` more are allowed.
    pub fn wait_ns(&self, now_ns: u64, frames: usize) -> u64 {
        if self.rate_pps == 0 {
            return 0;
        }
        let target = u128::from(self.sent + frames as u64) * 1_000_000_000 / u128::from(self.rate_pps);
        let at = u128::from(self.start_ns) + target;
        at.saturating_sub(u128::from(now_ns)).min(u128::from(u64::MAX)) as u64
    }

    /// Records `frames` sent.
    pub fn sent(&mut self, frames: usize) {
        self.sent += frames as u64;
    }
}

/// Chooses the next phone and port: round robin over slots, then over each phone's flows, so
/// that every phone sends at the same rate from `flows_per_phone` ports of its block.
#[derive(Debug, Clone, Copy)]
pub struct FlowCursor {
    slot: usize,
    flow: u32,
    slots: usize,
    flows: u32,
}

impl FlowCursor {
    /// Over `slots` slots and `flows` ports per phone (at least 1 each).
    pub fn new(slots: usize, flows: u32) -> Self {
        Self { slot: 0, flow: 0, slots: slots.max(1), flows: flows.max(1) }
    }

    /// The next (slot, flow index).
    #[inline]
    pub fn advance(&mut self) -> (usize, u32) {
        let here = (self.slot, self.flow);
        self.slot += 1;
        if self.slot == self.slots {
            self.slot = 0;
            self.flow = (self.flow + 1) % self.flows;
        }
        here
    }
}

/// The phone-side port of flow `flow` of `phone`: inside its block, evenly spread, or just above
/// it (just below when the block ends at 65535) when `outside`.
#[inline]
pub fn flow_port(phone: &SlotPhone, flow: u32, flows: u32, outside: bool) -> u16 {
    let ports = phone.ports();
    let flows = flows.clamp(1, ports);
    let step = ports / flows;
    let within = (flow % flows) * step;
    if !outside {
        return phone.port_lo + within as u16;
    }
    let above = u32::from(phone.port_lo) + ports + within;
    match u16::try_from(above) {
        Ok(port) => port,
        Err(_) => phone.port_lo.wrapping_sub(1 + within as u16),
    }
}

/// Writes the frame for `phone`'s flow into `frame`; `None` when the phone cannot be identified.
#[inline]
pub fn build_frame(
    frame: &mut [u8; FRAME_LEN],
    mode: &Mode,
    classes: &Classes,
    phone: &SlotPhone,
    port: u16,
    sent_ns: u64,
    sequence: u16,
) -> Option<()> {
    let (id, public) = classes.identify(phone)?;
    let payload = Payload { phone: id, port, sent_ns, sequence };
    let flow = match *mode {
        Mode::Outbound { gateway_mac, far, .. } => UdpFlow {
            src_mac: phone.mac,
            dst_mac: gateway_mac,
            src: phone.address,
            dst: far,
            src_port: port,
            dst_port: FAR_PORT,
        },
        Mode::Inbound { local_mac, gateway_mac, far } => UdpFlow {
            src_mac: local_mac,
            dst_mac: gateway_mac,
            src: far,
            dst: public,
            src_port: FAR_PORT,
            dst_port: port,
        },
    };
    write_test_frame(frame, &flow, &payload);
    Some(())
}

/// The transmit loop: sends `plan` from the phones in `slots` until the duration ends or `stop`
/// is set.
pub fn transmit(
    xsk: &mut XskTx,
    slots: &Slots,
    classes: &Classes,
    mode: &Mode,
    plan: &SendPlan,
    stop: &AtomicBool,
) -> SendSummary {
    let outside = matches!(mode, Mode::Outbound { outside: true, .. });
    let start = monotonic_ns();
    let end = start.saturating_add(plan.duration.as_nanos() as u64);
    let mut pacer = Pacer::new(plan.rate_pps, start);
    let mut cursor = FlowCursor::new(slots.len(), plan.flows_per_phone);
    let mut summary = SendSummary { offered_pps: plan.rate_pps, ..SendSummary::default() };
    let mut sequence: u16 = 0;
    let mut picks = [None::<(SlotPhone, u16)>; BATCH];
    let mut now = start;
    while now < end && !stop.load(Ordering::Relaxed) {
        xsk.reap();
        let want = pacer.allowance(now, BATCH).min(xsk.available());
        if want == 0 {
            xsk.kick();
            let wait = pacer.wait_ns(now, BATCH.min(8));
            if wait > 200_000 {
                std::thread::sleep(Duration::from_nanos(wait - 100_000));
            } else {
                std::hint::spin_loop();
            }
            now = monotonic_ns();
            continue;
        }
        // Choose the batch's phones first (a slot emptied by churn is skipped, within reason).
        let mut chosen = 0;
        let mut tries = 0;
        while chosen < want && tries < want * 4 {
            tries += 1;
            let (slot, flow) = cursor.advance();
            match slots.get(slot) {
                Some(phone) => {
                    picks[chosen] = Some((phone, flow_port(&phone, flow, plan.flows_per_phone, outside)));
                    chosen += 1;
                }
                None => summary.empty_slots += 1,
            }
        }
        if chosen == 0 {
            now = monotonic_ns();
            continue;
        }
        let queued = xsk.send_batch(chosen, |i, frame| {
            if let Some((phone, port)) = picks[i] {
                let seq = sequence.wrapping_add(i as u16);
                // An unidentifiable phone (outside the configuration) leaves a zeroed frame,
                // which no gateway forwards.
                let _ = build_frame(frame, mode, classes, &phone, port, now, seq);
            }
        });
        if queued == 0 {
            summary.ring_full += 1;
        }
        sequence = sequence.wrapping_add(queued as u16);
        pacer.sent(queued);
        summary.sent += queued as u64;
        now = monotonic_ns();
    }
    let finished = monotonic_ns();
    // Let the kernel finish what is on the ring.
    let drain_until = finished + 500_000_000;
    while xsk.outstanding() > 0 && monotonic_ns() < drain_until {
        xsk.kick();
        xsk.reap();
    }
    summary.not_completed = xsk.outstanding() as u64;
    summary.seconds = (finished - start) as f64 / 1e9;
    summary.achieved_pps = if summary.seconds > 0.0 { summary.sent as f64 / summary.seconds } else { 0.0 };
    summary
}

/// Drives a [`LeaseEngine`] over a [`PacketSocket`].
#[derive(Debug)]
pub struct LeaseDriver {
    socket: PacketSocket,
    engine: LeaseEngine,
    buffer: Vec<u8>,
    frames: Vec<Vec<u8>>,
    send_errors: u64,
}

impl LeaseDriver {
    /// Over `socket`.
    pub fn new(socket: PacketSocket, engine: LeaseEngine) -> Self {
        Self { socket, engine, buffer: vec![0; 2048], frames: Vec::new(), send_errors: 0 }
    }

    /// Engine counters.
    pub fn counters(&self) -> LeaseCounters {
        self.engine.counters()
    }

    /// Exchanges in flight.
    pub fn in_flight(&self) -> usize {
        self.engine.in_flight()
    }

    /// Frames the socket refused (counted, retried by the engine's timeouts).
    pub fn send_errors(&self) -> u64 {
        self.send_errors
    }

    fn send(&mut self, frame: &[u8]) {
        if self.socket.send(frame).is_err() {
            self.send_errors += 1;
        }
    }

    /// Starts a DORA for `slot` with `mac`.
    pub fn start(&mut self, slot: usize, mac: [u8; 6]) {
        let frame = self.engine.start(monotonic_ns(), slot, mac);
        self.send(&frame);
    }

    /// Sends the RELEASE of `lease`.
    pub fn release(&mut self, lease: &Lease) {
        let frame = self.engine.release(lease);
        self.send(&frame);
    }

    /// Waits up to `timeout_ms` for replies, answers them and handles timeouts; returns the
    /// events.
    pub fn pump(&mut self, timeout_ms: i32) -> std::io::Result<Vec<Event>> {
        let mut events = Vec::new();
        if self.socket.wait(timeout_ms)? {
            let mut buffer = std::mem::take(&mut self.buffer);
            while let Some(frame) = self.socket.try_recv(&mut buffer)? {
                let (reply, event) = self.engine.handle(monotonic_ns(), frame);
                if let Some(reply) = reply {
                    self.send(&reply);
                }
                events.extend(event);
            }
            self.buffer = buffer;
        }
        let mut frames = std::mem::take(&mut self.frames);
        self.engine.poll_timeouts(monotonic_ns(), &mut frames, &mut events);
        for frame in frames.drain(..) {
            self.send(&frame);
        }
        self.frames = frames;
        Ok(events)
    }
}

/// Leases `count` phones (MACs `phone_mac(run, 0..count)`) at up to `rate` DORAs per second with
/// at most `max_in_flight` exchanges open. Slots without a lease after every retry stay `None`.
pub fn lease_fleet(
    driver: &mut LeaseDriver,
    count: usize,
    run: u8,
    rate: u64,
    max_in_flight: usize,
) -> std::io::Result<Vec<Option<Lease>>> {
    let mut leases = vec![None; count];
    let mut pacer = Pacer::new(rate, monotonic_ns());
    let mut next = 0usize;
    let mut done = 0usize;
    while done < count {
        let room = max_in_flight.saturating_sub(driver.in_flight());
        let allowed = pacer.allowance(monotonic_ns(), room.min(count - next));
        for _ in 0..allowed {
            driver.start(next, phone_mac(run, next as u32));
            next += 1;
        }
        pacer.sent(allowed);
        for event in driver.pump(1)? {
            done += 1;
            if let Event::Leased { slot, lease } = event {
                leases[slot] = Some(lease);
            }
        }
    }
    Ok(leases)
}

/// What a churn run did.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ChurnSummary {
    /// Phones released (slot emptied, RELEASE sent).
    pub released: u64,
    /// Fresh phones leased in their place.
    pub leased: u64,
    /// Fresh phones that got no lease.
    pub failed: u64,
    /// Lease changes per second achieved (released over the run).
    pub changes_per_second: f64,
    /// DHCP exchange counters.
    pub dhcp: LeaseCounters,
}

/// Churns leases at `rate` changes per second until `stop`: each change empties a leased slot,
/// releases its lease and starts a DORA for a fresh MAC (`phone_mac(run, serial…)`) that fills the
/// slot on ACK.
pub fn churn(
    driver: &mut LeaseDriver,
    slots: &Slots,
    leases: &mut [Option<Lease>],
    run: u8,
    first_serial: u32,
    rate: u64,
    stop: &AtomicBool,
) -> std::io::Result<ChurnSummary> {
    let start = monotonic_ns();
    let mut pacer = Pacer::new(rate, start);
    let mut summary = ChurnSummary::default();
    let mut serial = first_serial;
    let mut victim = 0usize;
    let count = leases.len();
    while !stop.load(Ordering::Relaxed) {
        let allowed = pacer.allowance(monotonic_ns(), 64);
        for _ in 0..allowed {
            // The next leased slot after the previous victim.
            let Some(index) = (0..count).map(|k| (victim + k) % count).find(|&i| leases[i].is_some()) else {
                break;
            };
            victim = (index + 1) % count;
            slots.clear(index);
            if let Some(lease) = leases[index].take() {
                driver.release(&lease);
            }
            driver.start(index, phone_mac(run, serial));
            serial = serial.wrapping_add(1);
            summary.released += 1;
        }
        // A change the schedule allowed but no leased phone could take is skipped, not owed:
        // it would otherwise come later as a burst.
        pacer.sent(allowed);
        for event in driver.pump(1)? {
            match event {
                Event::Leased { slot, lease } => {
                    if let Some(phone) = SlotPhone::of(&lease) {
                        slots.set(slot, &phone);
                    }
                    leases[slot] = Some(lease);
                    summary.leased += 1;
                }
                Event::Failed { .. } => summary.failed += 1,
            }
        }
    }
    let seconds = (monotonic_ns() - start) as f64 / 1e9;
    summary.changes_per_second = if seconds > 0.0 { summary.released as f64 / seconds } else { 0.0 };
    summary.dhcp = driver.counters();
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::{Checker, Direction, Verdict};
    use crate::frame::parse_udp;
    use crate::testing::bench_config;

    #[test]
    fn pacer_follows_the_schedule() {
        let mut p = Pacer::new(1_000_000, 0);
        assert_eq!(p.allowance(0, 32), 0);
        assert_eq!(p.allowance(10_000, 32), 10);
        assert_eq!(p.allowance(1_000_000, 32), 32);
        p.sent(32);
        assert_eq!(p.allowance(40_000, 64), 8);
        assert_eq!(p.wait_ns(32_000, 1), 1_000);
        assert_eq!(Pacer::new(0, 0).allowance(0, 32), 32);
    }

    #[test]
    fn cursor_visits_every_phone_then_every_flow() {
        let mut c = FlowCursor::new(3, 2);
        let seen: Vec<_> = (0..7).map(|_| c.advance()).collect();
        assert_eq!(seen, vec![(0, 0), (1, 0), (2, 0), (0, 1), (1, 1), (2, 1), (0, 0)]);
    }

    fn phone(config: &Config, class: usize, offset: u32) -> SlotPhone {
        let c = &config.classes[class];
        let block = c.plan.port_block_for(offset).expect("offset in pool");
        SlotPhone {
            address: c.address_at(offset).expect("offset in pool"),
            port_lo: block.port_lo,
            ports_log2: block.len().trailing_zeros() as u8,
            class: class as u8,
            mac: phone_mac(1, offset),
        }
    }

    #[test]
    fn ports_inside_and_outside_the_block() {
        let config = bench_config();
        let p = phone(&config, 0, 5);
        let block = config.classes[0].plan.port_block_for(5).expect("block");
        let inside: Vec<u16> = (0..4).map(|f| flow_port(&p, f, 4, false)).collect();
        assert_eq!(inside, vec![block.port_lo, block.port_lo + 16, block.port_lo + 32, block.port_lo + 48]);
        for f in 0..4 {
            assert!(!block.contains(flow_port(&p, f, 4, true)));
        }
        // The last block of an address: outside means below it.
        let last = phone(&config, 0, 1007);
        let last_block = config.classes[0].plan.port_block_for(1007).expect("block");
        assert_eq!(last_block.port_hi, 65535);
        assert_eq!(flow_port(&last, 0, 1, true), last_block.port_lo - 1);
    }

    /// A frame built for a phone, translated as the gateway must, passes the receiver's check.
    #[test]
    fn generated_frames_check_correct_after_translation() {
        let config = bench_config();
        let classes = Classes::new(config.clone());
        let checker = Checker::new(config.clone());
        let far = Ipv4Addr::new(203, 0, 113, 10);
        let mode = Mode::Outbound { gateway_mac: [2, 0, 0, 0, 0, 1], far, outside: false };
        for (class, offset) in [(0, 0), (0, 4000), (1, 77)] {
            let p = phone(&config, class, offset);
            let port = flow_port(&p, 3, 8, false);
            let mut frame = [0u8; FRAME_LEN];
            build_frame(&mut frame, &mode, &classes, &p, port, 5, 1).expect("identified");
            let parsed = parse_udp(&frame).expect("valid");
            let payload = Payload::decode(parsed.body).expect("ours");
            let public = config.classes[class].port_block_of(p.address).expect("block").public_ip;
            let translated = UdpFlow { src: public, ..parsed.flow };
            assert_eq!(checker.check(Direction::Outbound, &translated, &payload), Verdict::Correct);
            assert_eq!(checker.check(Direction::Outbound, &parsed.flow, &payload), Verdict::OutOfBlock);
        }
        let inbound = Mode::Inbound { local_mac: [2, 0, 0, 0, 1, 0xfe], gateway_mac: [2, 0, 0, 0, 1, 1], far };
        let p = phone(&config, 1, 12);
        let mut frame = [0u8; FRAME_LEN];
        build_frame(&mut frame, &inbound, &classes, &p, p.port_lo + 1, 5, 1).expect("identified");
        let parsed = parse_udp(&frame).expect("valid");
        let payload = Payload::decode(parsed.body).expect("ours");
        let translated = UdpFlow { dst: p.address, ..parsed.flow };
        assert_eq!(checker.check(Direction::Inbound, &translated, &payload), Verdict::Correct);
    }
}
