//! Where every UMEM frame of a worker is: the frame ledger.
//!
//! A frame is always in exactly one place: the worker's free list, a fill ring (given to the
//! kernel to receive into, until it comes back on that socket's receive ring), a transmit ring
//! (given to the kernel to send, until it comes back on that socket's completion ring), or the
//! worker's hands during one batch. The ledger keeps the free list and one "in fill" and one
//! "in tx" count per socket, and every move of the worker goes through it, so
//! `free + Σ in_fill + Σ in_tx == total` holds between batches ([`FrameLedger::check`], asserted
//! in debug builds and published as gauges). A leak (a frame the worker forgot to give back)
//! breaks it.

/// The ledger over descriptors of type `D` for `ports` sockets.
#[derive(Debug)]
pub struct FrameLedger<D> {
    free: Vec<D>,
    in_fill: Vec<u32>,
    in_tx: Vec<u32>,
    total: u32,
}

/// The books do not balance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("frame ledger: {free} free + {in_fill} in fill rings + {in_tx} in tx rings != {total} frames")]
pub struct Imbalance {
    /// Free frames.
    pub free: u32,
    /// Frames in fill rings.
    pub in_fill: u32,
    /// Frames in transmit rings.
    pub in_tx: u32,
    /// Frames the worker owns.
    pub total: u32,
}

impl<D: Copy> FrameLedger<D> {
    /// All of `frames` free, for `ports` sockets. The free list never grows past its initial
    /// capacity, so no move allocates.
    pub fn new(frames: Vec<D>, ports: usize) -> Self {
        let total = u32::try_from(frames.len()).unwrap_or(u32::MAX);
        let mut free = Vec::with_capacity(frames.len());
        free.extend(frames);
        Self { free, in_fill: vec![0; ports], in_tx: vec![0; ports], total }
    }

    /// Frames on the free list.
    #[inline]
    pub fn free_count(&self) -> usize {
        self.free.len()
    }

    /// Frames in `port`'s fill ring.
    #[inline]
    pub fn in_fill(&self, port: usize) -> u32 {
        self.in_fill[port]
    }

    /// Frames in `port`'s transmit ring or its completion ring.
    #[inline]
    pub fn in_tx(&self, port: usize) -> u32 {
        self.in_tx[port]
    }

    /// Frames in all fill rings.
    pub fn total_in_fill(&self) -> u32 {
        self.in_fill.iter().sum()
    }

    /// Frames in all transmit rings.
    pub fn total_in_tx(&self) -> u32 {
        self.in_tx.iter().sum()
    }

    /// Frames the worker owns.
    pub fn total(&self) -> u32 {
        self.total
    }

    /// Up to `want` free frames, to offer to `port`'s fill ring; call [`Self::filled`] with how
    /// many the ring took.
    #[inline]
    pub fn offer_for_fill(&self, want: usize) -> &[D] {
        let n = want.min(self.free.len());
        &self.free[self.free.len() - n..]
    }

    /// The fill ring of `port` took the first `taken` frames of the last offer of `offered`.
    #[inline]
    pub fn filled(&mut self, port: usize, offered: usize, taken: usize) {
        let taken = taken.min(offered);
        let start = self.free.len() - offered.min(self.free.len());
        // The untaken tail of the offer moves down over the taken head.
        self.free.copy_within(start + taken.., start);
        self.free.truncate(self.free.len() - taken);
        self.in_fill[port] += taken as u32;
    }

    /// `n` frames arrived on `port`'s receive ring: they are in the worker's hands.
    #[inline]
    pub fn received(&mut self, port: usize, n: usize) {
        self.in_fill[port] = self.in_fill[port].saturating_sub(n as u32);
    }

    /// `n` frames from the worker's hands went onto `port`'s transmit ring.
    #[inline]
    pub fn transmitted(&mut self, port: usize, n: usize) {
        self.in_tx[port] += n as u32;
    }

    /// Frames came back on `port`'s completion ring.
    #[inline]
    pub fn completed(&mut self, port: usize, frames: &[D]) {
        self.in_tx[port] = self.in_tx[port].saturating_sub(frames.len() as u32);
        self.free.extend_from_slice(frames);
    }

    /// A frame in the worker's hands is done with (dropped, or not sent).
    #[inline]
    pub fn release(&mut self, frame: D) {
        self.free.push(frame);
    }

    /// Checks `free + Σ in_fill + Σ in_tx == total` (true between batches).
    pub fn check(&self) -> Result<(), Imbalance> {
        let free = self.free.len() as u32;
        let (in_fill, in_tx) = (self.total_in_fill(), self.total_in_tx());
        if free + in_fill + in_tx == self.total {
            Ok(())
        } else {
            Err(Imbalance { free, in_fill, in_tx, total: self.total })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::VecDeque;

    /// A kernel that moves frames the way AF_XDP does: fill -> rx when a packet arrives,
    /// tx -> completion when it is sent. Rings are bounded.
    struct FakeKernel {
        fill: Vec<VecDeque<u64>>,
        rx: Vec<VecDeque<u64>>,
        tx: Vec<VecDeque<u64>>,
        comp: Vec<VecDeque<u64>>,
        ring: usize,
    }

    impl FakeKernel {
        fn new(ports: usize, ring: usize) -> Self {
            let rings = || (0..ports).map(|_| VecDeque::new()).collect::<Vec<_>>();
            Self { fill: rings(), rx: rings(), tx: rings(), comp: rings(), ring }
        }

        fn all_frames(&self) -> Vec<u64> {
            [&self.fill, &self.rx, &self.tx, &self.comp]
                .iter()
                .flat_map(|rings| rings.iter().flatten().copied())
                .collect()
        }
    }

    #[derive(Debug, Clone)]
    enum Step {
        /// The kernel receives up to n packets on a port.
        Arrive(usize, usize),
        /// The kernel sends up to n queued frames of a port.
        Send(usize, usize),
        /// The worker runs one loop iteration, sending received frame i to port (i % ports) or
        /// dropping it when `drop_every` divides i.
        Work(usize, usize),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0..4usize, 0..40usize).prop_map(|(p, n)| Step::Arrive(p, n)),
            (0..4usize, 0..40usize).prop_map(|(p, n)| Step::Send(p, n)),
            (0..64usize, 1..5usize).prop_map(|(batch, d)| Step::Work(batch, d)),
        ]
    }

    /// One worker iteration against the fake kernel, written like the real loop.
    fn work(ledger: &mut FrameLedger<u64>, kernel: &mut FakeKernel, batch: usize, drop_every: usize, target: u32) {
        let ports = kernel.fill.len();
        for port in 0..ports {
            let done: Vec<u64> = kernel.comp[port].drain(..).collect();
            ledger.completed(port, &done);
        }
        let mut hands = Vec::new();
        for port in 0..ports {
            let n = batch.min(kernel.rx[port].len());
            hands.extend(kernel.rx[port].drain(..n));
            ledger.received(port, n);
        }
        let mut out: Vec<Vec<u64>> = vec![Vec::new(); ports];
        for (i, frame) in hands.into_iter().enumerate() {
            if i % drop_every == 0 {
                ledger.release(frame);
            } else {
                out[i % ports].push(frame);
            }
        }
        for (port, frames) in out.into_iter().enumerate() {
            let room = kernel.ring - kernel.tx[port].len();
            let sent = frames.len().min(room);
            kernel.tx[port].extend(&frames[..sent]);
            ledger.transmitted(port, sent);
            for &frame in &frames[sent..] {
                ledger.release(frame);
            }
        }
        for port in 0..ports {
            let want = target.saturating_sub(ledger.in_fill(port)) as usize;
            let offer: Vec<u64> = ledger.offer_for_fill(want).to_vec();
            let room = kernel.ring - kernel.fill[port].len();
            let taken = offer.len().min(room);
            kernel.fill[port].extend(&offer[..taken]);
            ledger.filled(port, offer.len(), taken);
        }
    }

    proptest! {
        #[test]
        fn no_frame_leaks_or_doubles(steps in proptest::collection::vec(step(), 1..200)) {
            let (ports, frames, ring) = (4usize, 256u64, 64usize);
            let mut ledger = FrameLedger::new((0..frames).map(|f| f * 2048).collect(), ports);
            let mut kernel = FakeKernel::new(ports, ring);
            work(&mut ledger, &mut kernel, 0, 1, 32);
            for step in steps {
                match step {
                    Step::Arrive(port, n) => {
                        let room = ring - kernel.rx[port].len();
                        for _ in 0..n.min(room) {
                            if let Some(frame) = kernel.fill[port].pop_front() {
                                kernel.rx[port].push_back(frame);
                            }
                        }
                    }
                    Step::Send(port, n) => {
                        for _ in 0..n {
                            if let Some(frame) = kernel.tx[port].pop_front() {
                                kernel.comp[port].push_back(frame);
                            }
                        }
                    }
                    Step::Work(batch, drop_every) => work(&mut ledger, &mut kernel, batch, drop_every, 32),
                }
                prop_assert!(ledger.check().is_ok(), "{:?}", ledger.check());
                // Every frame is in exactly one place.
                let mut everywhere = kernel.all_frames();
                everywhere.extend(&ledger.free);
                everywhere.sort_unstable();
                prop_assert_eq!(everywhere, (0..frames).map(|f| f * 2048).collect::<Vec<_>>());
                // The ledger's per-port counts match the fake kernel's rings.
                for port in 0..ports {
                    prop_assert_eq!(ledger.in_fill(port) as usize, kernel.fill[port].len() + kernel.rx[port].len());
                    prop_assert_eq!(ledger.in_tx(port) as usize, kernel.tx[port].len() + kernel.comp[port].len());
                }
            }
        }
    }

    #[test]
    fn a_forgotten_frame_is_an_imbalance() {
        let mut ledger = FrameLedger::new(vec![1u64, 2, 3, 4], 1);
        let offered = ledger.offer_for_fill(2).len();
        ledger.filled(0, offered, 2);
        ledger.received(0, 2);
        ledger.release(7);
        assert_eq!(ledger.check(), Err(Imbalance { free: 3, in_fill: 0, in_tx: 0, total: 4 }));
    }

    #[test]
    fn a_partial_fill_keeps_the_untaken_frames_free() {
        let mut ledger = FrameLedger::new(vec![10u64, 20, 30, 40], 1);
        assert_eq!(ledger.offer_for_fill(3), &[20, 30, 40]);
        ledger.filled(0, 3, 1);
        assert_eq!(ledger.free, vec![10, 30, 40]);
        assert_eq!(ledger.in_fill(0), 1);
        assert!(ledger.check().is_ok());
    }
}
