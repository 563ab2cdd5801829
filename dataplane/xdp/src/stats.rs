//! Per-worker counters. The worker counts in plain integers ([`Tally`]) and publishes them once
//! per batch into its [`WorkerStats`] with Relaxed stores (one writer per cache line, no
//! read-modify-write); readers (`/metrics`, `dialtone stats`) take a [`StatsSnapshot`].

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use dialtone_nappt::{Counters, DropReason};

/// Why the engine itself (not the translator) let a frame go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum EngineDrop {
    /// The transmit ring had no room (the peer or the kernel is slower than the receive side).
    TxRingFull = 0,
    /// The translator said "to the kernel": the XDP program passes those itself, so one reaching
    /// a socket is counted here and its frame reused.
    ToKernel,
    /// Plain forwarding: the side's next-hop MAC is not known yet.
    ForwardNoNextHop,
}

impl EngineDrop {
    /// Number of reasons.
    pub const COUNT: usize = 3;
    /// Every reason, in discriminant order.
    pub const ALL: [EngineDrop; Self::COUNT] = [Self::TxRingFull, Self::ToKernel, Self::ForwardNoNextHop];

    /// Stable snake_case name for metrics.
    pub fn name(self) -> &'static str {
        match self {
            Self::TxRingFull => "tx_ring_full",
            Self::ToKernel => "to_kernel",
            Self::ForwardNoNextHop => "forward_no_next_hop",
        }
    }
}

/// The worker's own running totals (plain integers, never shared).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Frames received on the LAN sockets.
    pub rx_lan: u64,
    /// Frames received on the WAN sockets.
    pub rx_wan: u64,
    /// Frames put on the LAN transmit ring.
    pub tx_lan: u64,
    /// Frames put on the WAN transmit ring.
    pub tx_wan: u64,
    /// Engine drops by [`EngineDrop`].
    pub engine_drops: [u64; EngineDrop::COUNT],
    /// Non-empty receive batches.
    pub batches: u64,
    /// Frames in those batches (mean batch size = batch_frames / batches).
    pub batch_frames: u64,
    /// Batches that were full (`batch_size` frames): the worker is saturated when this grows.
    pub full_batches: u64,
    /// Kernel wake-ups for transmission (sendto on a ring flagged `needs_wakeup`).
    pub tx_wakeups: u64,
    /// Kernel wake-ups for the fill ring (poll on a ring flagged `needs_wakeup`).
    pub fill_wakeups: u64,
    /// Times the worker found nothing to do for a while and slept in poll(2).
    pub idle_sleeps: u64,
    /// Control-ring updates applied.
    pub updates: u64,
    /// Control-ring updates the tables refused (a control-plane bug, logged).
    pub update_errors: u64,
    /// Frames on the worker's free list (gauge).
    pub frames_free: u64,
    /// Frames given to the fill rings and not yet received back (gauge).
    pub frames_in_fill: u64,
    /// Frames given to the transmit rings and not yet completed (gauge).
    pub frames_in_tx: u64,
    /// The kernel's own socket counters (XDP_STATISTICS, summed over the worker's sockets,
    /// read every [`crate::worker::SOCKET_STATS_MS`]): frames the kernel could not place
    /// because the receive ring was full.
    pub socket_rx_ring_full: u64,
    /// ... because the fill ring was empty (or for other reasons, the kernel's `rx_dropped`).
    pub socket_rx_dropped: u64,
    /// Fill-ring empty events.
    pub socket_fill_ring_empty: u64,
    /// Invalid receive or transmit descriptors.
    pub socket_invalid_descs: u64,
}

/// One worker's published counters.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct WorkerStats {
    rx_lan: AtomicU64,
    rx_wan: AtomicU64,
    tx_lan: AtomicU64,
    tx_wan: AtomicU64,
    engine_drops: [AtomicU64; EngineDrop::COUNT],
    batches: AtomicU64,
    batch_frames: AtomicU64,
    full_batches: AtomicU64,
    tx_wakeups: AtomicU64,
    fill_wakeups: AtomicU64,
    idle_sleeps: AtomicU64,
    updates: AtomicU64,
    update_errors: AtomicU64,
    frames_free: AtomicU64,
    frames_in_fill: AtomicU64,
    frames_in_tx: AtomicU64,
    socket_rx_ring_full: AtomicU64,
    socket_rx_dropped: AtomicU64,
    socket_fill_ring_empty: AtomicU64,
    socket_invalid_descs: AtomicU64,
    translator_drops: [AtomicU64; DropReason::COUNT],
    translator_to_kernel: AtomicU64,
    time_exceeded_sent: AtomicU64,
    echo_remapped: AtomicU64,
    fragments_followed: AtomicU64,
    fragment_evictions: AtomicU64,
    hairpinned: AtomicU64,
    /// Control-plane side: pushes that found the ring full and waited (written by the control
    /// plane, not the worker).
    pub(crate) ring_full: AtomicU64,
    /// Control-plane side: updates given up after the bounded wait (logged as errors).
    pub(crate) updates_lost: AtomicU64,
}

/// A copy of one worker's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Engine totals.
    pub engine: Tally,
    /// Translator totals (zero in plain forwarding mode).
    pub translator: Counters,
    /// Control-ring pushes that found the ring full.
    pub ring_full: u64,
    /// Updates lost after the bounded wait.
    pub updates_lost: u64,
}

impl WorkerStats {
    /// Publishes the worker's totals (Relaxed stores; called once per batch).
    #[inline]
    pub fn publish(&self, tally: &Tally, translator: &Counters) {
        self.rx_lan.store(tally.rx_lan, Relaxed);
        self.rx_wan.store(tally.rx_wan, Relaxed);
        self.tx_lan.store(tally.tx_lan, Relaxed);
        self.tx_wan.store(tally.tx_wan, Relaxed);
        for (slot, value) in self.engine_drops.iter().zip(tally.engine_drops) {
            slot.store(value, Relaxed);
        }
        self.batches.store(tally.batches, Relaxed);
        self.batch_frames.store(tally.batch_frames, Relaxed);
        self.full_batches.store(tally.full_batches, Relaxed);
        self.tx_wakeups.store(tally.tx_wakeups, Relaxed);
        self.fill_wakeups.store(tally.fill_wakeups, Relaxed);
        self.idle_sleeps.store(tally.idle_sleeps, Relaxed);
        self.updates.store(tally.updates, Relaxed);
        self.update_errors.store(tally.update_errors, Relaxed);
        self.frames_free.store(tally.frames_free, Relaxed);
        self.frames_in_fill.store(tally.frames_in_fill, Relaxed);
        self.frames_in_tx.store(tally.frames_in_tx, Relaxed);
        self.socket_rx_ring_full.store(tally.socket_rx_ring_full, Relaxed);
        self.socket_rx_dropped.store(tally.socket_rx_dropped, Relaxed);
        self.socket_fill_ring_empty.store(tally.socket_fill_ring_empty, Relaxed);
        self.socket_invalid_descs.store(tally.socket_invalid_descs, Relaxed);
        for (slot, value) in self.translator_drops.iter().zip(translator.drops) {
            slot.store(value, Relaxed);
        }
        self.translator_to_kernel.store(translator.to_kernel, Relaxed);
        self.time_exceeded_sent.store(translator.time_exceeded_sent, Relaxed);
        self.echo_remapped.store(translator.echo_remapped, Relaxed);
        self.fragments_followed.store(translator.fragments_followed, Relaxed);
        self.fragment_evictions.store(translator.fragment_evictions, Relaxed);
        self.hairpinned.store(translator.hairpinned, Relaxed);
    }

    /// A copy of everything published so far.
    pub fn snapshot(&self) -> StatsSnapshot {
        let mut engine_drops = [0; EngineDrop::COUNT];
        for (value, slot) in engine_drops.iter_mut().zip(&self.engine_drops) {
            *value = slot.load(Relaxed);
        }
        let mut drops = [0; DropReason::COUNT];
        for (value, slot) in drops.iter_mut().zip(&self.translator_drops) {
            *value = slot.load(Relaxed);
        }
        StatsSnapshot {
            engine: Tally {
                rx_lan: self.rx_lan.load(Relaxed),
                rx_wan: self.rx_wan.load(Relaxed),
                tx_lan: self.tx_lan.load(Relaxed),
                tx_wan: self.tx_wan.load(Relaxed),
                engine_drops,
                batches: self.batches.load(Relaxed),
                batch_frames: self.batch_frames.load(Relaxed),
                full_batches: self.full_batches.load(Relaxed),
                tx_wakeups: self.tx_wakeups.load(Relaxed),
                fill_wakeups: self.fill_wakeups.load(Relaxed),
                idle_sleeps: self.idle_sleeps.load(Relaxed),
                updates: self.updates.load(Relaxed),
                update_errors: self.update_errors.load(Relaxed),
                frames_free: self.frames_free.load(Relaxed),
                frames_in_fill: self.frames_in_fill.load(Relaxed),
                frames_in_tx: self.frames_in_tx.load(Relaxed),
                socket_rx_ring_full: self.socket_rx_ring_full.load(Relaxed),
                socket_rx_dropped: self.socket_rx_dropped.load(Relaxed),
                socket_fill_ring_empty: self.socket_fill_ring_empty.load(Relaxed),
                socket_invalid_descs: self.socket_invalid_descs.load(Relaxed),
            },
            translator: Counters {
                to_wan: 0,
                to_lan: 0,
                to_kernel: self.translator_to_kernel.load(Relaxed),
                drops,
                time_exceeded_sent: self.time_exceeded_sent.load(Relaxed),
                echo_remapped: self.echo_remapped.load(Relaxed),
                fragments_followed: self.fragments_followed.load(Relaxed),
                fragment_evictions: self.fragment_evictions.load(Relaxed),
                hairpinned: self.hairpinned.load(Relaxed),
            },
            ring_full: self.ring_full.load(Relaxed),
            updates_lost: self.updates_lost.load(Relaxed),
        }
    }
}

/// One counter: metric name, optional `(label key, label value)`, value.
pub type Sample = (&'static str, Option<(&'static str, &'static str)>, u64);

impl StatsSnapshot {
    /// Every counter, in a stable order, for Prometheus text and JSON.
    pub fn samples(&self) -> Vec<Sample> {
        let e = &self.engine;
        let mut out = vec![
            ("dialtone_dataplane_rx_frames_total", Some(("side", "lan")), e.rx_lan),
            ("dialtone_dataplane_rx_frames_total", Some(("side", "wan")), e.rx_wan),
            ("dialtone_dataplane_tx_frames_total", Some(("side", "lan")), e.tx_lan),
            ("dialtone_dataplane_tx_frames_total", Some(("side", "wan")), e.tx_wan),
        ];
        for reason in DropReason::ALL {
            out.push((
                "dialtone_dataplane_drops_total",
                Some(("reason", reason.name())),
                self.translator.dropped(reason),
            ));
        }
        for reason in EngineDrop::ALL {
            out.push((
                "dialtone_dataplane_drops_total",
                Some(("reason", reason.name())),
                e.engine_drops[reason as usize],
            ));
        }
        out.extend([
            ("dialtone_dataplane_batches_total", None, e.batches),
            ("dialtone_dataplane_batch_frames_total", None, e.batch_frames),
            ("dialtone_dataplane_full_batches_total", None, e.full_batches),
            ("dialtone_dataplane_wakeups_total", Some(("ring", "tx")), e.tx_wakeups),
            ("dialtone_dataplane_wakeups_total", Some(("ring", "fill")), e.fill_wakeups),
            ("dialtone_dataplane_idle_sleeps_total", None, e.idle_sleeps),
            ("dialtone_dataplane_updates_total", None, e.updates),
            ("dialtone_dataplane_update_errors_total", None, e.update_errors),
            ("dialtone_dataplane_control_ring_full_total", None, self.ring_full),
            ("dialtone_dataplane_updates_lost_total", None, self.updates_lost),
            ("dialtone_dataplane_hairpinned_total", None, self.translator.hairpinned),
            ("dialtone_dataplane_echo_remapped_total", None, self.translator.echo_remapped),
            ("dialtone_dataplane_time_exceeded_sent_total", None, self.translator.time_exceeded_sent),
            ("dialtone_dataplane_fragments_followed_total", None, self.translator.fragments_followed),
            ("dialtone_dataplane_fragment_evictions_total", None, self.translator.fragment_evictions),
            ("dialtone_dataplane_socket_drops_total", Some(("reason", "rx_ring_full")), e.socket_rx_ring_full),
            ("dialtone_dataplane_socket_drops_total", Some(("reason", "rx_dropped")), e.socket_rx_dropped),
            ("dialtone_dataplane_socket_drops_total", Some(("reason", "fill_ring_empty")), e.socket_fill_ring_empty),
            ("dialtone_dataplane_socket_drops_total", Some(("reason", "invalid_desc")), e.socket_invalid_descs),
            ("dialtone_dataplane_frames", Some(("where", "free")), e.frames_free),
            ("dialtone_dataplane_frames", Some(("where", "fill")), e.frames_in_fill),
            ("dialtone_dataplane_frames", Some(("where", "tx")), e.frames_in_tx),
        ]);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_then_snapshot_round_trips() {
        let stats = WorkerStats::default();
        let tally = Tally {
            rx_lan: 1,
            rx_wan: 2,
            tx_lan: 3,
            tx_wan: 4,
            engine_drops: [5, 6, 7],
            batches: 8,
            batch_frames: 9,
            full_batches: 10,
            tx_wakeups: 11,
            fill_wakeups: 12,
            idle_sleeps: 13,
            updates: 14,
            update_errors: 15,
            frames_free: 16,
            frames_in_fill: 20,
            frames_in_tx: 21,
            socket_rx_ring_full: 22,
            socket_rx_dropped: 23,
            socket_fill_ring_empty: 24,
            socket_invalid_descs: 25,
        };
        let mut translator = Counters::default();
        translator.drops[DropReason::PortOutsideBlock.index()] = 17;
        translator.hairpinned = 18;
        translator.to_kernel = 19;
        stats.publish(&tally, &translator);
        let snapshot = stats.snapshot();
        assert_eq!(snapshot.engine, tally);
        assert_eq!(snapshot.translator.dropped(DropReason::PortOutsideBlock), 17);
        assert_eq!(snapshot.translator.hairpinned, 18);
        assert_eq!(snapshot.translator.to_kernel, 19);
        let samples = snapshot.samples();
        let value = |name: &str, label: &str| {
            samples.iter().find(|(n, l, _)| *n == name && l.is_some_and(|l| l.1 == label)).map(|s| s.2)
        };
        assert_eq!(value("dialtone_dataplane_drops_total", "port_outside_block"), Some(17));
        assert_eq!(value("dialtone_dataplane_drops_total", "tx_ring_full"), Some(5));
        assert_eq!(value("dialtone_dataplane_rx_frames_total", "wan"), Some(2));
        assert_eq!(value("dialtone_dataplane_socket_drops_total", "rx_ring_full"), Some(22));
    }
}
