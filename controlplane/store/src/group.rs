//! Group commit: many requests' writes share one durable transaction.
//!
//! A [`GroupCommitter`] owns a blocking thread. Callers [`submit`](GroupCommitter::submit) a batch
//! of [`Write`]s with a completion callback (or use [`commit`](GroupCommitter::commit) to block).
//! The thread takes the first pending batch, gathers more for at most `max_wait` or until
//! `max_writes` writes are collected, applies them all in one [`Store::apply`] (one fsync), and only
//! then runs every callback with the result: a caller that answers from the callback never
//! announces a write before it is durable, and a burst of writers costs one fsync.
//!
//! While it gathers, the thread sleeps out the wait once and then takes everything queued, rather
//! than blocking on the queue: a submitter then never has to wake it (no futex call, no context
//! switch per submission), and a group costs the thread one wake-up however many batches it holds.
//!
//! A caller that gathers its own groups (the DHCP thread: every datagram queued behind the one
//! that woke it) commits them with [`apply_here`](GroupCommitter::apply_here) on its own thread
//! instead: the same durable transaction and the same counters, without the hand-off to the
//! committer thread and back, which on a virtual machine costs more CPU than the fsync itself
//! (each side's wake-up is a context switch).

use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::{Store, StoreError, Write};

/// Called once the batch is durable (`Ok`) or has failed (`Err`, nothing of it applied).
pub type Completion = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

struct Job {
    writes: Vec<Write>,
    done: Completion,
}

/// Counters of the committer (read with [`GroupCommitter::stats`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CommitStats {
    /// Durable transactions committed.
    pub commits: u64,
    /// Batches (submissions) carried by them.
    pub batches: u64,
    /// Transactions that failed.
    pub failures: u64,
}

/// A pending batch's result, for callers that block.
#[derive(Debug)]
pub struct CommitTicket(Receiver<Result<(), StoreError>>);

impl CommitTicket {
    /// Blocks until the batch is durable or failed.
    pub fn wait(self) -> Result<(), StoreError> {
        self.0.recv().unwrap_or(Err(StoreError::CommitterStopped))
    }
}

/// The group-commit thread and its queue.
pub struct GroupCommitter {
    store: Arc<dyn Store>,
    max_wait: Duration,
    max_writes: usize,
    queue: Option<SyncSender<Job>>,
    thread: Option<JoinHandle<()>>,
    stats: Arc<std::sync::Mutex<CommitStats>>,
}

impl std::fmt::Debug for GroupCommitter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommitter").field("stats", &self.stats()).finish_non_exhaustive()
    }
}

impl GroupCommitter {
    /// Starts the committer over `store`. `max_wait` bounds how long the first batch of a group
    /// waits for companions (config `store.group_commit_wait`); `max_writes` bounds a group's size
    /// (`store.group_commit_max`); `queue_depth` bounds the batches waiting (back-pressure).
    pub fn start(
        store: Arc<dyn Store>,
        max_wait: Duration,
        max_writes: usize,
        queue_depth: usize,
    ) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::sync_channel::<Job>(queue_depth.max(1));
        let stats = Arc::new(std::sync::Mutex::new(CommitStats::default()));
        let (thread_stats, thread_store) = (Arc::clone(&stats), Arc::clone(&store));
        let thread = std::thread::Builder::new()
            .name("store-commit".into())
            .spawn(move || run(&*thread_store, &rx, max_wait, max_writes.max(1), &thread_stats))?;
        Ok(Self { store, max_wait, max_writes: max_writes.max(1), queue: Some(tx), thread: Some(thread), stats })
    }

    /// How long a group may wait for companions (`store.group_commit_wait`): the committer
    /// thread's gather, and the bound a caller gathering its own groups for
    /// [`apply_here`](Self::apply_here) keeps to (the DHCP thread's pause under load).
    pub fn max_wait(&self) -> Duration {
        self.max_wait
    }

    /// The most writes one group carries (`store.group_commit_max`), at least 1; a caller
    /// gathering its own groups stops gathering at it.
    pub fn max_writes(&self) -> usize {
        self.max_writes
    }

    /// Commits `writes` on the calling thread, as one durable transaction of one batch, and
    /// returns once it is durable (`Ok`) or has failed (`Err`, nothing of it applied). For a
    /// caller that already holds a whole group: it spares the hand-off to the committer thread.
    /// The store orders this transaction against the thread's (one write transaction at a time);
    /// a caller that needs its writes ordered after batches it submitted waits for those first.
    pub fn apply_here(&self, writes: &[Write]) -> Result<(), StoreError> {
        let result = self.store.apply(writes);
        if let Err(e) = &result {
            tracing::error!(error = %e, writes = writes.len(), "commit failed");
        }
        record(&self.stats, 1, &result);
        result
    }

    /// Queues `writes`; `done` runs on the committer thread once they are durable.
    pub fn submit(&self, writes: Vec<Write>, done: Completion) {
        let job = Job { writes, done };
        let job = match &self.queue {
            Some(queue) => match queue.send(job) {
                Ok(()) => return,
                Err(mpsc::SendError(job)) => job,
            },
            None => job,
        };
        (job.done)(Err(StoreError::CommitterStopped));
    }

    /// Queues `writes` and returns a ticket to wait on.
    pub fn commit(&self, writes: Vec<Write>) -> CommitTicket {
        let (tx, rx) = mpsc::sync_channel(1);
        self.submit(
            writes,
            Box::new(move |result| {
                // The waiter may have given up; then nobody needs the result.
                let _ = tx.send(result);
            }),
        );
        CommitTicket(rx)
    }

    /// Commits and batches so far.
    pub fn stats(&self) -> CommitStats {
        self.stats.lock().map(|s| *s).unwrap_or_default()
    }
}

impl Drop for GroupCommitter {
    /// Commits what is queued, then stops the thread.
    fn drop(&mut self) {
        self.queue = None;
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("store commit thread panicked");
            }
        }
    }
}

fn run(
    store: &dyn Store,
    rx: &Receiver<Job>,
    max_wait: Duration,
    max_writes: usize,
    stats: &std::sync::Mutex<CommitStats>,
) {
    while let Ok(first) = rx.recv() {
        let deadline = Instant::now() + max_wait;
        let mut writes = first.writes;
        let mut waiters = vec![first.done];
        let mut slept = false;
        while writes.len() < max_writes {
            let next = match rx.try_recv() {
                Ok(job) => job,
                // Stopping: commit what was gathered.
                Err(TryRecvError::Disconnected) => break,
                Err(TryRecvError::Empty) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if slept || left.is_zero() {
                        break;
                    }
                    std::thread::sleep(left);
                    slept = true;
                    continue;
                }
            };
            writes.extend(next.writes);
            waiters.push(next.done);
        }
        let result = store.apply(&writes);
        if let Err(e) = &result {
            tracing::error!(error = %e, writes = writes.len(), "group commit failed; its replies are withheld");
        }
        record(stats, waiters.len(), &result);
        for done in waiters {
            done(result.clone());
        }
    }
}

/// Counts one transaction carrying `batches` batches.
fn record(stats: &std::sync::Mutex<CommitStats>, batches: usize, result: &Result<(), StoreError>) {
    if let Ok(mut s) = stats.lock() {
        s.commits += 1;
        s.batches += batches as u64;
        s.failures += u64::from(result.is_err());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::lease;
    use crate::{LeaseSnapshot, MemoryStore, RedbStore};
    use std::net::Ipv4Addr;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Counts applies and checks that nothing is signalled before its apply returned.
    #[derive(Default)]
    struct CountingStore {
        inner: MemoryStore,
        applies: AtomicUsize,
    }

    impl Store for CountingStore {
        fn apply(&self, writes: &[Write]) -> Result<(), StoreError> {
            std::thread::sleep(Duration::from_millis(5));
            self.applies.fetch_add(1, Ordering::SeqCst);
            self.inner.apply(writes)
        }
        fn snapshot(&self) -> Result<LeaseSnapshot, StoreError> {
            self.inner.snapshot()
        }
        fn who_held(&self, ip: Ipv4Addr, port: u16, at: u64) -> Result<Vec<crate::HistoryRecord>, StoreError> {
            self.inner.who_held(ip, port, at)
        }
        fn prune_history(&self, before: u64) -> Result<usize, StoreError> {
            self.inner.prune_history(before)
        }
    }

    #[test]
    fn many_batches_share_few_commits_and_are_visible_when_signalled() {
        let store = Arc::new(CountingStore::default());
        let committer = GroupCommitter::start(store.clone(), Duration::from_millis(20), 10_000, 1024).unwrap();
        let tickets: Vec<_> = (0..200u32)
            .map(|i| committer.commit(vec![Write::PutLease(lease("softphone", i, (i % 250) as u8, 0))]))
            .collect();
        for (i, t) in tickets.into_iter().enumerate() {
            t.wait().unwrap();
            // Signalled only after the apply that carried it: the lease is already there.
            assert!(store.inner.snapshot().unwrap().leases.iter().any(|l| l.offset == i as u32));
        }
        let applies = store.applies.load(Ordering::SeqCst);
        assert!(applies < 50, "200 batches took {applies} commits");
        assert_eq!(committer.stats().batches, 200);
        assert_eq!(committer.stats().commits as usize, applies);
    }

    #[test]
    fn apply_here_commits_on_the_calling_thread_and_counts_one_batch() {
        /// Records the name of the thread each apply ran on.
        #[derive(Default)]
        struct ThreadRecording {
            inner: MemoryStore,
            threads: std::sync::Mutex<Vec<Option<String>>>,
        }
        impl Store for ThreadRecording {
            fn apply(&self, writes: &[Write]) -> Result<(), StoreError> {
                self.threads.lock().unwrap().push(std::thread::current().name().map(str::to_string));
                self.inner.apply(writes)
            }
            fn snapshot(&self) -> Result<LeaseSnapshot, StoreError> {
                self.inner.snapshot()
            }
            fn who_held(&self, ip: Ipv4Addr, port: u16, at: u64) -> Result<Vec<crate::HistoryRecord>, StoreError> {
                self.inner.who_held(ip, port, at)
            }
            fn prune_history(&self, before: u64) -> Result<usize, StoreError> {
                self.inner.prune_history(before)
            }
        }
        let store = Arc::new(ThreadRecording::default());
        let committer = GroupCommitter::start(store.clone(), Duration::from_millis(1), 64, 64).unwrap();
        let here = std::thread::Builder::new()
            .name("caller".into())
            .spawn({
                let store = store.clone();
                move || {
                    committer.apply_here(&[Write::PutLease(lease("a", 7, 1, 0))]).unwrap();
                    // Durable when it returns: no waiting for another thread.
                    assert_eq!(store.inner.snapshot().unwrap().leases.len(), 1);
                    committer.stats()
                }
            })
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(here, CommitStats { commits: 1, batches: 1, failures: 0 });
        assert_eq!(*store.threads.lock().unwrap(), [Some("caller".to_string())]);
    }

    #[test]
    fn apply_here_reports_and_counts_a_failure() {
        let committer = GroupCommitter::start(Arc::new(Failing), Duration::from_millis(1), 16, 16).unwrap();
        assert_eq!(committer.apply_here(&[]), Err(StoreError::Database("disk full".into())));
        assert_eq!(committer.stats(), CommitStats { commits: 1, batches: 1, failures: 1 });
    }

    #[test]
    fn group_size_is_capped() {
        let store = Arc::new(CountingStore::default());
        let committer = GroupCommitter::start(store.clone(), Duration::from_millis(50), 3, 64).unwrap();
        let tickets: Vec<_> = (0..9u32).map(|i| committer.commit(vec![Write::PutLease(lease("a", i, 1, 0))])).collect();
        tickets.into_iter().for_each(|t| t.wait().unwrap());
        assert!(store.applies.load(Ordering::SeqCst) >= 3);
    }

    #[test]
    fn durable_through_redb_across_reopen() {
        let path = std::env::temp_dir().join(format!("dialtone-group-{}.redb", std::process::id()));
        let _ = std::fs::remove_file(&path);
        {
            let store: Arc<dyn Store> = Arc::new(RedbStore::open(&path).unwrap());
            let committer = GroupCommitter::start(store, Duration::from_millis(2), 512, 256).unwrap();
            let (tx, rx) = mpsc::channel();
            for i in 0..50u32 {
                let tx = tx.clone();
                committer.submit(
                    vec![Write::PutLease(lease("yealink", i, i as u8, 100))],
                    Box::new(move |r| tx.send(r).unwrap()),
                );
            }
            for _ in 0..50 {
                rx.recv().unwrap().unwrap();
            }
        }
        let reopened = RedbStore::open(&path).unwrap();
        assert_eq!(reopened.snapshot().unwrap().leases.len(), 50);
        drop(reopened);
        std::fs::remove_file(path).unwrap();
    }

    /// A store whose every apply fails.
    struct Failing;
    impl Store for Failing {
        fn apply(&self, _: &[Write]) -> Result<(), StoreError> {
            Err(StoreError::Database("disk full".into()))
        }
        fn snapshot(&self) -> Result<LeaseSnapshot, StoreError> {
            Ok(LeaseSnapshot::default())
        }
        fn who_held(&self, _: Ipv4Addr, _: u16, _: u64) -> Result<Vec<crate::HistoryRecord>, StoreError> {
            Ok(vec![])
        }
        fn prune_history(&self, _: u64) -> Result<usize, StoreError> {
            Ok(0)
        }
    }

    #[test]
    fn failures_reach_every_waiter() {
        let committer = GroupCommitter::start(Arc::new(Failing), Duration::from_millis(1), 16, 16).unwrap();
        let t1 = committer.commit(vec![]);
        let t2 = committer.commit(vec![]);
        assert_eq!(t1.wait(), Err(StoreError::Database("disk full".into())));
        assert!(t2.wait().is_err());
        assert!(committer.stats().failures >= 1);
    }
}
