//! The control ring: how lease and neighbour changes reach a worker without a lock on the hot
//! path (DESIGN.md "Per-core lockless tables").
//!
//! One bounded single-producer single-consumer ring (rtrb) per worker. The worker drains it
//! between batches. The control plane's senders (DHCP's lease events, the neighbour thread)
//! share the producer end behind a mutex that only control-plane threads ever take.
//!
//! A full ring: the sender counts the event (`control_ring_full`), wakes the worker and retries
//! with a short back-off for at most [`FULL_RING_WAIT`]. A worker drains the whole ring every
//! loop iteration (microseconds), so a ring of `dataplane.control_ring` entries that stays full
//! for that long means the worker is stuck; the update is then counted in `updates_lost` and
//! logged as an error naming it, and the sender goes on: the control plane is never blocked
//! for longer than the bound, and no lease is lost silently.
//!
//! A worker with nothing to do sleeps in poll(2) on its sockets and an eventfd; a sender writes
//! the eventfd only when the worker says it is parked (a Dekker handshake with SeqCst fences),
//! so an update reaches a sleeping worker in microseconds, not at its next timeout. The sender
//! that finds the worker parked takes the announcement back as it writes, so a burst of updates
//! (a group commit's worth of lease events) costs one eventfd write and one wake-up, not one each.
#![allow(unsafe_code)]

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use dialtone_config::MacAddr;
use dialtone_nappt::Update;

use crate::stats::WorkerStats;
use crate::Error;

/// Longest a sender waits for room in a full ring before it counts the update as lost.
pub const FULL_RING_WAIT: Duration = Duration::from_millis(100);

/// One message to a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// A change to the translator's tables (leases, next hop, interface MACs).
    Nappt(Update),
    /// Plain forwarding only: the MAC frames forwarded to the LAN are sent to.
    LanPeer(Option<MacAddr>),
}

/// Wakes a worker that sleeps in poll(2).
#[derive(Debug)]
pub struct Waker {
    parked: AtomicBool,
    eventfd: OwnedFd,
}

impl Waker {
    /// A waker with its own eventfd.
    pub fn new() -> Result<Self, Error> {
        // SAFETY: eventfd(2) takes two integers and returns a new descriptor or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(Error::Io("eventfd".into(), std::io::Error::last_os_error()));
        }
        // SAFETY: `fd` was just returned by eventfd and is owned by nobody else.
        let eventfd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { parked: AtomicBool::new(false), eventfd })
    }

    /// The descriptor the worker polls.
    pub fn fd(&self) -> RawFd {
        self.eventfd.as_raw_fd()
    }

    /// Worker side, before sleeping: announces it. The caller must re-check its ring after
    /// this and skip the sleep when something arrived.
    pub fn park(&self) {
        self.parked.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
    }

    /// Worker side, after sleeping: clears the announcement and the eventfd's count.
    pub fn unpark(&self) {
        self.parked.store(false, Ordering::SeqCst);
        let mut count = [0u8; 8];
        // SAFETY: reads at most 8 bytes into an 8-byte buffer from our own non-blocking eventfd.
        let _ = unsafe { libc::read(self.eventfd.as_raw_fd(), count.as_mut_ptr().cast(), count.len()) };
    }

    /// Sender side, after publishing something: wakes the worker if it is (about to be) asleep.
    /// Only the first sender to see the announcement writes the eventfd; the ones after it find
    /// the worker already woken (it drains the whole ring when it runs).
    pub fn wake_if_parked(&self) {
        fence(Ordering::SeqCst);
        if self.parked.swap(false, Ordering::SeqCst) {
            self.wake();
        }
    }

    /// Wakes the worker unconditionally (stop, full ring).
    pub fn wake(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from an 8-byte buffer to our own eventfd; a full counter
        // (EAGAIN) already means "wake up".
        let _ = unsafe { libc::write(self.eventfd.as_raw_fd(), one.as_ptr().cast(), one.len()) };
    }
}

/// Control-plane end of one worker's ring.
pub struct ControlSender {
    worker: usize,
    producer: Mutex<rtrb::Producer<Control>>,
    waker: Arc<Waker>,
    stats: Arc<WorkerStats>,
}

/// Worker end of its ring.
pub struct ControlReceiver {
    consumer: rtrb::Consumer<Control>,
}

impl std::fmt::Debug for ControlSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlSender").field("worker", &self.worker).finish_non_exhaustive()
    }
}

impl std::fmt::Debug for ControlReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlReceiver").field("pending", &self.consumer.slots()).finish()
    }
}

/// An update that could not be delivered within [`FULL_RING_WAIT`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("worker {worker}'s control ring stayed full: {update:?} lost")]
pub struct Lost {
    /// The worker.
    pub worker: usize,
    /// The update.
    pub update: Control,
}

/// A ring of `capacity` entries between the control plane and worker `worker`.
pub fn ring(
    worker: usize,
    capacity: usize,
    waker: Arc<Waker>,
    stats: Arc<WorkerStats>,
) -> (ControlSender, ControlReceiver) {
    let (producer, consumer) = rtrb::RingBuffer::new(capacity.max(1));
    (ControlSender { worker, producer: Mutex::new(producer), waker, stats }, ControlReceiver { consumer })
}

impl ControlSender {
    /// Delivers `update`, waiting at most [`FULL_RING_WAIT`] for room (see the module docs).
    pub fn send(&self, update: Control) -> Result<(), Lost> {
        self.send_within(update, FULL_RING_WAIT)
    }

    /// Queues `update` like [`send`](Self::send) but leaves a parked worker asleep: the sender
    /// of a burst pushes every update of it, then calls [`wake_if_parked`](Self::wake_if_parked)
    /// once, so that the worker wakes once for the burst instead of once per update (on a shared
    /// core a woken worker runs at once and parks again between two updates).
    pub fn push(&self, update: Control) -> Result<(), Lost> {
        self.push_within(update, FULL_RING_WAIT)
    }

    /// Wakes the worker if it is parked (after [`push`](Self::push)es).
    pub fn wake_if_parked(&self) {
        self.waker.wake_if_parked();
    }

    fn send_within(&self, update: Control, wait: Duration) -> Result<(), Lost> {
        let pushed = self.push_within(update, wait);
        if pushed.is_ok() {
            self.waker.wake_if_parked();
        }
        pushed
    }

    fn push_within(&self, update: Control, wait: Duration) -> Result<(), Lost> {
        // A panicking sender leaves the producer consistent (push is all or nothing).
        let mut producer = self.producer.lock().unwrap_or_else(PoisonError::into_inner);
        let mut pending = update;
        let mut deadline = None;
        let mut attempts = 0u32;
        loop {
            match producer.push(pending) {
                Ok(()) => return Ok(()),
                Err(rtrb::PushError::Full(back)) => {
                    pending = back;
                    let now = Instant::now();
                    let deadline = *deadline.get_or_insert_with(|| {
                        self.stats.ring_full.fetch_add(1, Ordering::Relaxed);
                        now + wait
                    });
                    self.waker.wake();
                    if now >= deadline {
                        self.stats.updates_lost.fetch_add(1, Ordering::Relaxed);
                        let lost = Lost { worker: self.worker, update };
                        tracing::error!(worker = self.worker, update = ?update, "dataplane control ring full: update lost");
                        return Err(lost);
                    }
                    attempts += 1;
                    if attempts < 64 {
                        std::thread::yield_now();
                    } else {
                        std::thread::sleep(Duration::from_micros(50));
                    }
                }
            }
        }
    }

    /// Wakes the worker (used to make it see its stop flag at once).
    pub fn wake(&self) {
        self.waker.wake();
    }
}

impl ControlReceiver {
    /// The next pending message.
    #[inline]
    pub fn pop(&mut self) -> Option<Control> {
        self.consumer.pop().ok()
    }

    /// True when nothing is pending.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.consumer.is_empty()
    }
}

/// Every worker's sender: updates from the control plane go to all of them.
#[derive(Debug, Clone)]
pub struct Broadcast {
    senders: Arc<Vec<ControlSender>>,
}

impl Broadcast {
    /// Over these senders (worker order).
    pub fn new(senders: Vec<ControlSender>) -> Self {
        Self { senders: Arc::new(senders) }
    }

    /// Sends `update` to every worker; returns how many lost it (each loss is counted and
    /// logged by [`ControlSender::send`]).
    pub fn send(&self, update: Control) -> usize {
        self.senders.iter().filter(|s| s.send(update).is_err()).count()
    }

    /// Sends a translator update to every worker.
    pub fn update(&self, update: Update) -> usize {
        self.send(Control::Nappt(update))
    }

    /// Queues a translator update for every worker without waking a parked one (one update of a
    /// burst; see [`ControlSender::push`]); returns how many lost it. End the burst with
    /// [`wake_parked`](Self::wake_parked).
    pub fn push_update(&self, update: Update) -> usize {
        self.senders.iter().filter(|s| s.push(Control::Nappt(update)).is_err()).count()
    }

    /// Wakes every parked worker: the end of a burst of [`push_update`](Self::push_update)s.
    pub fn wake_parked(&self) {
        for sender in self.senders.iter() {
            sender.wake_if_parked();
        }
    }

    /// Wakes every worker.
    pub fn wake_all(&self) {
        for sender in self.senders.iter() {
            sender.wake();
        }
    }

    /// Number of workers.
    pub fn workers(&self) -> usize {
        self.senders.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(capacity: usize) -> (ControlSender, ControlReceiver, Arc<Waker>, Arc<WorkerStats>) {
        let waker = Arc::new(Waker::new().expect("eventfd"));
        let stats = Arc::new(WorkerStats::default());
        let (tx, rx) = ring(0, capacity, Arc::clone(&waker), Arc::clone(&stats));
        (tx, rx, waker, stats)
    }

    fn lease(offset: u32) -> Control {
        Control::Nappt(Update::LeaseUp { class: 0, offset, mac: MacAddr([2, 0, 0, 0, 0, 1]) })
    }

    fn eventfd_count(waker: &Waker) -> u64 {
        let mut count = [0u8; 8];
        // SAFETY: 8-byte read into an 8-byte buffer from the test's own eventfd.
        let n = unsafe { libc::read(waker.fd(), count.as_mut_ptr().cast(), 8) };
        if n == 8 {
            u64::from_ne_bytes(count)
        } else {
            0
        }
    }

    #[test]
    fn updates_arrive_in_order() {
        let (tx, mut rx, _, _) = pair(8);
        for offset in 0..8 {
            tx.send(lease(offset)).expect("room");
        }
        for offset in 0..8 {
            assert_eq!(rx.pop(), Some(lease(offset)));
        }
        assert!(rx.pop().is_none() && rx.is_empty());
    }

    #[test]
    fn a_full_ring_waits_for_the_worker_then_delivers() {
        let (tx, mut rx, _, stats) = pair(2);
        tx.send(lease(0)).expect("room");
        tx.send(lease(1)).expect("room");
        let worker = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            let first = rx.pop();
            (first, rx)
        });
        let started = Instant::now();
        tx.send(lease(2)).expect("the worker made room within the bound");
        assert!(started.elapsed() < FULL_RING_WAIT);
        let (first, mut rx) = worker.join().expect("worker");
        assert_eq!(first, Some(lease(0)));
        assert_eq!((rx.pop(), rx.pop(), rx.pop()), (Some(lease(1)), Some(lease(2)), None));
        let snapshot = stats.snapshot();
        assert_eq!((snapshot.ring_full, snapshot.updates_lost), (1, 0));
    }

    #[test]
    fn a_ring_that_stays_full_loses_the_update_after_the_bound_and_counts_it() {
        let (tx, mut rx, _, stats) = pair(1);
        tx.send(lease(0)).expect("room");
        let started = Instant::now();
        let lost = tx.send_within(lease(1), Duration::from_millis(30)).expect_err("nobody drains");
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(30) && waited < Duration::from_secs(2), "{waited:?}");
        assert_eq!(lost, Lost { worker: 0, update: lease(1) });
        let snapshot = stats.snapshot();
        assert_eq!((snapshot.ring_full, snapshot.updates_lost), (1, 1));
        assert_eq!((rx.pop(), rx.pop()), (Some(lease(0)), None));
    }

    #[test]
    fn a_parked_worker_is_woken_and_a_running_one_is_not() {
        let (tx, mut rx, waker, _) = pair(4);
        tx.send(lease(0)).expect("room");
        assert_eq!(eventfd_count(&waker), 0, "not parked: no syscall, no wake");
        waker.park();
        tx.send(lease(1)).expect("room");
        assert_eq!(eventfd_count(&waker), 1, "parked: woken");
        waker.unpark();
        assert_eq!((rx.pop(), rx.pop()), (Some(lease(0)), Some(lease(1))));
    }

    #[test]
    fn a_burst_to_a_parked_worker_wakes_it_once() {
        let (tx, mut rx, waker, _) = pair(16);
        waker.park();
        for i in 0..8 {
            tx.send(lease(i)).expect("room");
        }
        assert_eq!(eventfd_count(&waker), 1, "one write for the whole burst");
        waker.unpark();
        assert_eq!((0..8).map(|_| rx.pop()).collect::<Vec<_>>(), (0..8).map(|i| Some(lease(i))).collect::<Vec<_>>());
        waker.park();
        tx.send(lease(8)).expect("room");
        assert_eq!(eventfd_count(&waker), 1, "parked again: woken again");
    }

    #[test]
    fn a_pushed_burst_wakes_a_parked_worker_only_when_it_ends() {
        let (tx, mut rx, waker, _) = pair(16);
        let all = Broadcast::new(vec![tx]);
        waker.park();
        for i in 0..4 {
            assert_eq!(all.push_update(Update::LeaseDown { class: 0, offset: i }), 0);
        }
        assert_eq!(eventfd_count(&waker), 0, "pushes leave the worker asleep");
        all.wake_parked();
        assert_eq!(eventfd_count(&waker), 1, "the burst's end wakes it once");
        all.wake_parked();
        assert_eq!(eventfd_count(&waker), 0, "no longer parked: no second write");
        waker.unpark();
        let expected = (0..4).map(|i| Some(Control::Nappt(Update::LeaseDown { class: 0, offset: i })));
        assert_eq!((0..4).map(|_| rx.pop()).collect::<Vec<_>>(), expected.collect::<Vec<_>>());
    }

    #[test]
    fn broadcast_reaches_every_worker() {
        let (a, mut ra, _, _) = pair(4);
        let (b, mut rb, _, _) = pair(4);
        let all = Broadcast::new(vec![a, b]);
        assert_eq!(all.update(Update::NextHop { mac: None }), 0);
        assert_eq!(all.workers(), 2);
        let expected = Some(Control::Nappt(Update::NextHop { mac: None }));
        assert_eq!((ra.pop(), rb.pop()), (expected, expected));
    }
}
