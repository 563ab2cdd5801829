//! The in-memory [`Store`]: same semantics as the redb store, nothing durable. For unit tests and
//! for tools that replay a scenario.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Mutex;

use crate::{Binding, HistoryRecord, Lease, LeaseSnapshot, MacAddr, Quarantine, Store, StoreError, UnixSecs, Write};

/// History key: ordered like the redb table so both stores answer in the same order.
type HistoryKey = (u32, u16, UnixSecs, [u8; 6]);

#[derive(Debug, Default)]
struct Tables {
    bindings: BTreeMap<(String, MacAddr), u32>,
    leases: BTreeMap<(String, u32), Lease>,
    history: BTreeMap<HistoryKey, HistoryRecord>,
    quarantine: BTreeMap<(String, u32), UnixSecs>,
}

/// A [`Store`] held in memory.
#[derive(Debug, Default)]
pub struct MemoryStore {
    tables: Mutex<Tables>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Tables>, StoreError> {
        self.tables.lock().map_err(|_| StoreError::Database("memory store lock poisoned".into()))
    }
}

pub(crate) fn history_key(public_ip: Ipv4Addr, port_lo: u16, from: UnixSecs, mac: MacAddr) -> HistoryKey {
    (u32::from(public_ip), port_lo, from, mac.0)
}

impl Store for MemoryStore {
    fn apply(&self, writes: &[Write]) -> Result<(), StoreError> {
        let mut t = self.lock()?;
        // Apply to a copy so that a batch is all-or-nothing, like a transaction.
        let mut next = Tables {
            bindings: t.bindings.clone(),
            leases: t.leases.clone(),
            history: t.history.clone(),
            quarantine: t.quarantine.clone(),
        };
        for write in writes {
            match write {
                Write::PutBinding(b) => {
                    next.bindings.insert((b.class.clone(), b.mac), b.offset);
                }
                Write::RemoveBinding { class, mac } => {
                    next.bindings.remove(&(class.clone(), *mac));
                }
                Write::PutLease(l) => {
                    next.leases.insert((l.class.clone(), l.offset), l.clone());
                }
                Write::RemoveLease { class, offset } => {
                    next.leases.remove(&(class.clone(), *offset));
                }
                Write::OpenHistory(h) => {
                    next.history.insert(history_key(h.public_ip, h.port_lo, h.from, h.mac), h.clone());
                }
                Write::CloseHistory { public_ip, port_lo, from, mac, to } => {
                    if let Some(h) = next.history.get_mut(&history_key(*public_ip, *port_lo, *from, *mac)) {
                        h.to = Some(*to);
                    }
                }
                Write::PutQuarantine(q) => {
                    next.quarantine.insert((q.class.clone(), q.offset), q.release);
                }
                Write::RemoveQuarantine { class, offset } => {
                    next.quarantine.remove(&(class.clone(), *offset));
                }
            }
        }
        *t = next;
        Ok(())
    }

    fn snapshot(&self) -> Result<LeaseSnapshot, StoreError> {
        let t = self.lock()?;
        Ok(LeaseSnapshot {
            bindings: t
                .bindings
                .iter()
                .map(|((class, mac), offset)| Binding { class: class.clone(), mac: *mac, offset: *offset })
                .collect(),
            leases: t.leases.values().cloned().collect(),
            quarantine: t
                .quarantine
                .iter()
                .map(|((class, offset), release)| Quarantine {
                    class: class.clone(),
                    offset: *offset,
                    release: *release,
                })
                .collect(),
        })
    }

    fn who_held(&self, public_ip: Ipv4Addr, port: u16, at: UnixSecs) -> Result<Vec<HistoryRecord>, StoreError> {
        let t = self.lock()?;
        let low = history_key(public_ip, 0, 0, MacAddr([0; 6]));
        let high = history_key(public_ip, port, UnixSecs::MAX, MacAddr([0xff; 6]));
        Ok(t.history.range(low..=high).map(|(_, h)| h).filter(|h| h.covers(public_ip, port, at)).cloned().collect())
    }

    fn prune_history(&self, ended_before: UnixSecs) -> Result<usize, StoreError> {
        let mut t = self.lock()?;
        let before = t.history.len();
        t.history.retain(|_, h| h.to.is_none_or(|to| to >= ended_before));
        Ok(before - t.history.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_store_conforms() {
        crate::conformance::exercise(&MemoryStore::new());
    }

    #[test]
    fn a_batch_is_all_or_nothing_in_effect() {
        let store = MemoryStore::new();
        let lease = crate::conformance::lease("a", 1, 1, 10);
        store.apply(&[Write::PutLease(lease.clone()), Write::RemoveLease { class: "a".into(), offset: 1 }]).unwrap();
        assert!(store.snapshot().unwrap().leases.is_empty());
        store.apply(&[Write::PutLease(lease.clone())]).unwrap();
        assert_eq!(store.snapshot().unwrap().leases, vec![lease]);
    }
}
