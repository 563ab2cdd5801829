//! Group commit: many requests' writes share one durable transaction.
//!
//! The caller gathers a group itself (the DHCP thread: every datagram queued behind the one that
//! woke it, for up to [`max_wait`](GroupCommitter::max_wait) under load and at most
//! [`max_writes`](GroupCommitter::max_writes) writes), commits it on its own thread with
//! [`apply_here`](GroupCommitter::apply_here) (one [`Store::apply`], one fsync), and only then
//! answers: a reply never announces a write before it is durable, and a burst of requests costs one
//! fsync. The [`GroupCommitter`] holds the bounds (config `store.group_commit_wait` and
//! `store.group_commit_max`) and counts the commits for `/metrics`.
//!
//! An earlier design handed each group to a committer thread and waited for its callback; on a
//! virtual machine the two wake-ups of that hand-off (a context switch each) cost more CPU than the
//! fsync itself, so the thread was removed (perf/RESULTS.md, DHCP, 2026-12-02).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::{Store, StoreError, Write};

/// Counters of the committer (read with [`GroupCommitter::stats`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CommitStats {
    /// Durable transactions committed.
    pub commits: u64,
    /// Batches (groups) carried by them.
    pub batches: u64,
    /// Transactions that failed.
    pub failures: u64,
}

/// The store, the bounds of a group and the commit counters.
pub struct GroupCommitter {
    store: Arc<dyn Store>,
    max_wait: Duration,
    max_writes: usize,
    stats: Mutex<CommitStats>,
}

impl std::fmt::Debug for GroupCommitter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommitter")
            .field("max_wait", &self.max_wait)
            .field("max_writes", &self.max_writes)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl GroupCommitter {
    /// A committer over `store`. `max_wait` bounds how long a group may gather (config
    /// `store.group_commit_wait`); `max_writes` bounds a group's size (`store.group_commit_max`,
    /// at least 1).
    pub fn new(store: Arc<dyn Store>, max_wait: Duration, max_writes: usize) -> Self {
        Self { store, max_wait, max_writes: max_writes.max(1), stats: Mutex::new(CommitStats::default()) }
    }

    /// How long a group may gather (`store.group_commit_wait`): the DHCP thread's pause under
    /// load.
    pub fn max_wait(&self) -> Duration {
        self.max_wait
    }

    /// The most writes one group carries (`store.group_commit_max`), at least 1: the gatherer
    /// stops gathering at it.
    pub fn max_writes(&self) -> usize {
        self.max_writes
    }

    /// Commits `writes` on the calling thread, as one durable transaction of one batch, and
    /// returns once it is durable (`Ok`) or has failed (`Err`, nothing of it applied). The store
    /// runs one write transaction at a time, so concurrent callers are ordered by it.
    pub fn apply_here(&self, writes: &[Write]) -> Result<(), StoreError> {
        let result = self.store.apply(writes);
        if let Err(e) = &result {
            tracing::error!(error = %e, writes = writes.len(), "commit failed");
        }
        if let Ok(mut s) = self.stats.lock() {
            s.commits += 1;
            s.batches += 1;
            s.failures += u64::from(result.is_err());
        }
        result
    }

    /// Commits and batches so far.
    pub fn stats(&self) -> CommitStats {
        self.stats.lock().map(|s| *s).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::lease;
    use crate::{LeaseSnapshot, MemoryStore, RedbStore};
    use std::net::Ipv4Addr;

    #[test]
    fn apply_here_commits_on_the_calling_thread_and_counts_one_batch() {
        /// Records the name of the thread each apply ran on.
        #[derive(Default)]
        struct ThreadRecording {
            inner: MemoryStore,
            threads: Mutex<Vec<Option<String>>>,
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
        let committer = GroupCommitter::new(store.clone(), Duration::from_millis(1), 64);
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
        let committer = GroupCommitter::new(Arc::new(Failing), Duration::from_millis(1), 16);
        assert_eq!(committer.apply_here(&[]), Err(StoreError::Database("disk full".into())));
        assert_eq!(committer.stats(), CommitStats { commits: 1, batches: 1, failures: 1 });
    }

    #[test]
    fn bounds_are_kept_and_a_group_carries_at_least_one_write() {
        let committer = GroupCommitter::new(Arc::new(MemoryStore::new()), Duration::from_micros(1500), 0);
        assert_eq!((committer.max_wait(), committer.max_writes()), (Duration::from_micros(1500), 1));
    }

    #[test]
    fn a_group_is_durable_through_redb_across_reopen() {
        let path = std::env::temp_dir().join(format!("dialtone-group-{}.redb", std::process::id()));
        let _ = std::fs::remove_file(&path);
        {
            let store: Arc<dyn Store> = Arc::new(RedbStore::open(&path).unwrap());
            let committer = GroupCommitter::new(store, Duration::from_millis(2), 512);
            let group: Vec<Write> = (0..50u32).map(|i| Write::PutLease(lease("yealink", i, i as u8, 100))).collect();
            committer.apply_here(&group).unwrap();
            assert_eq!(committer.stats(), CommitStats { commits: 1, batches: 1, failures: 0 });
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
}
