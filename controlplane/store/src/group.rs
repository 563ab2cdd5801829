//! Group commit: many requests' writes share one durable transaction.
//!
//! A [`GroupCommitter`] owns a blocking thread. Callers [`submit`](GroupCommitter::submit) a batch
//! of [`Write`]s with a completion callback (or use [`commit`](GroupCommitter::commit) to block).
//! The thread takes the first pending batch, gathers more for at most `max_wait` or until
//! `max_writes` writes are collected, applies them all in one [`Store::apply`] (one fsync), and only
//! then runs every callback with the result. A DHCP shell sends its ACK from the callback, so the
//! ACK never precedes the durability of the lease it announces, and a burst of ACKs costs one fsync.
//!
//! While it gathers, the thread sleeps out the wait once and then takes everything queued, rather
//! than blocking on the queue: a submitter then never has to wake it (no futex call, no context
//! switch per submission), and a group costs the thread one wake-up however many batches it holds.

use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::{Store, StoreError, Write};

/// Called once the batch is durable (`Ok`) or has failed (`Err`, nothing of it applied).
pub type Completion = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

/// Called once after every completion of a group that carried at least one batch submitted with
/// it ([`GroupCommitter::submit_then`]): a caller whose completions only gather their results
/// acts on the whole group at once (one send for all of its replies, say).
pub type GroupDone = Arc<dyn Fn() + Send + Sync>;

struct Job {
    writes: Vec<Write>,
    done: Completion,
    then: Option<GroupDone>,
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
        let thread_stats = Arc::clone(&stats);
        let thread = std::thread::Builder::new()
            .name("store-commit".into())
            .spawn(move || run(&*store, &rx, max_wait, max_writes.max(1), &thread_stats))?;
        Ok(Self { queue: Some(tx), thread: Some(thread), stats })
    }

    /// Queues `writes`; `done` runs on the committer thread once they are durable.
    pub fn submit(&self, writes: Vec<Write>, done: Completion) {
        self.enqueue(Job { writes, done, then: None });
    }

    /// [`submit`](Self::submit), and `then` runs once after all the completions of the group
    /// that carries these writes (once per group however many of its batches name the same
    /// `then`).
    pub fn submit_then(&self, writes: Vec<Write>, done: Completion, then: &GroupDone) {
        self.enqueue(Job { writes, done, then: Some(Arc::clone(then)) });
    }

    fn enqueue(&self, job: Job) {
        let job = match &self.queue {
            Some(queue) => match queue.send(job) {
                Ok(()) => return,
                Err(mpsc::SendError(job)) => job,
            },
            None => job,
        };
        (job.done)(Err(StoreError::CommitterStopped));
        if let Some(then) = job.then {
            then();
        }
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
        let mut thens: Vec<GroupDone> = Vec::new();
        add_then(&mut thens, first.then);
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
            add_then(&mut thens, next.then);
        }
        let result = store.apply(&writes);
        if let Err(e) = &result {
            tracing::error!(error = %e, writes = writes.len(), "group commit failed; its replies are withheld");
        }
        if let Ok(mut s) = stats.lock() {
            s.commits += 1;
            s.batches += waiters.len() as u64;
            s.failures += u64::from(result.is_err());
        }
        for done in waiters {
            done(result.clone());
        }
        for then in thens {
            then();
        }
    }
}

/// Adds `then` to a group's list unless the same one is there already.
fn add_then(thens: &mut Vec<GroupDone>, then: Option<GroupDone>) {
    if let Some(then) = then {
        if !thens.iter().any(|t| Arc::ptr_eq(t, &then)) {
            thens.push(then);
        }
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
    fn a_group_runs_its_then_once_after_all_its_completions() {
        let store = Arc::new(CountingStore::default());
        let committer = GroupCommitter::start(store.clone(), Duration::from_millis(30), 10_000, 64).unwrap();
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let then: GroupDone = {
            let log = Arc::clone(&log);
            Arc::new(move || log.lock().unwrap().push("then".to_string()))
        };
        let (tx, rx) = mpsc::channel();
        for i in 0..5u32 {
            let (log, tx) = (Arc::clone(&log), tx.clone());
            committer.submit_then(
                vec![Write::PutLease(lease("a", i, 1, 0))],
                Box::new(move |r| {
                    r.unwrap();
                    log.lock().unwrap().push(format!("done {i}"));
                    tx.send(()).unwrap();
                }),
                &then,
            );
        }
        for _ in 0..5 {
            rx.recv_timeout(Duration::from_secs(5)).unwrap();
        }
        drop(committer);
        assert_eq!(store.applies.load(Ordering::SeqCst), 1, "one group");
        assert_eq!(*log.lock().unwrap(), ["done 0", "done 1", "done 2", "done 3", "done 4", "then"]);
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

    #[test]
    fn failures_reach_every_waiter() {
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
        let committer = GroupCommitter::start(Arc::new(Failing), Duration::from_millis(1), 16, 16).unwrap();
        let t1 = committer.commit(vec![]);
        let t2 = committer.commit(vec![]);
        assert_eq!(t1.wait(), Err(StoreError::Database("disk full".into())));
        assert!(t2.wait().is_err());
        assert!(committer.stats().failures >= 1);
    }
}
