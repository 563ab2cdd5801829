//! The durable [`Store`] on redb: one file, one write transaction per batch, committed with
//! `Durability::Immediate` (fsync) before [`Store::apply`] returns.

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use crate::record;
use crate::{Binding, HistoryRecord, LeaseSnapshot, MacAddr, Quarantine, Store, StoreError, UnixSecs, Write};

const BINDINGS: TableDefinition<'_, &[u8], u32> = TableDefinition::new("dhcp_bindings");
const LEASES: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("dhcp_leases");
const HISTORY: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("dhcp_lease_history");
const QUARANTINE: TableDefinition<'_, &[u8], u64> = TableDefinition::new("dhcp_quarantine");

fn db_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Database(e.to_string())
}

/// A [`Store`] in a redb database file.
pub struct RedbStore {
    db: Arc<Database>,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore").finish_non_exhaustive()
    }
}

impl RedbStore {
    /// Opens the database at `path`, creating it (and its tables) if needed.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::from_database(Arc::new(Database::create(path).map_err(db_err)?))
    }

    /// Uses an open database (shared with the other services that keep state in the same file),
    /// creating the lease tables if needed.
    pub fn from_database(db: Arc<Database>) -> Result<Self, StoreError> {
        let mut txn = db.begin_write().map_err(db_err)?;
        txn.set_durability(Durability::Immediate).map_err(db_err)?;
        {
            txn.open_table(BINDINGS).map_err(db_err)?;
            txn.open_table(LEASES).map_err(db_err)?;
            txn.open_table(HISTORY).map_err(db_err)?;
            txn.open_table(QUARANTINE).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)?;
        Ok(Self { db })
    }
}

impl Store for RedbStore {
    fn apply(&self, writes: &[Write]) -> Result<(), StoreError> {
        let mut txn = self.db.begin_write().map_err(db_err)?;
        // Immediate is redb's default; said explicitly because the DHCP ACK depends on it.
        txn.set_durability(Durability::Immediate).map_err(db_err)?;
        {
            let mut bindings = txn.open_table(BINDINGS).map_err(db_err)?;
            let mut leases = txn.open_table(LEASES).map_err(db_err)?;
            let mut history = txn.open_table(HISTORY).map_err(db_err)?;
            let mut quarantine = txn.open_table(QUARANTINE).map_err(db_err)?;
            for write in writes {
                match write {
                    Write::PutBinding(b) => {
                        bindings.insert(record::binding_key(&b.class, b.mac).as_slice(), b.offset).map_err(db_err)?;
                    }
                    Write::RemoveBinding { class, mac } => {
                        bindings.remove(record::binding_key(class, *mac).as_slice()).map_err(db_err)?;
                    }
                    Write::PutLease(l) => {
                        let key = record::offset_key(&l.class, l.offset);
                        leases.insert(key.as_slice(), record::lease_value(l).as_slice()).map_err(db_err)?;
                    }
                    Write::RemoveLease { class, offset } => {
                        leases.remove(record::offset_key(class, *offset).as_slice()).map_err(db_err)?;
                    }
                    Write::OpenHistory(h) => {
                        let key = record::history_key(h.public_ip, h.port_lo, h.from, h.mac);
                        history.insert(key.as_slice(), record::history_value(h).as_slice()).map_err(db_err)?;
                    }
                    Write::CloseHistory { public_ip, port_lo, from, mac, to } => {
                        let key = record::history_key(*public_ip, *port_lo, *from, *mac);
                        let found = match history.get(key.as_slice()).map_err(db_err)? {
                            Some(v) => Some(
                                record::decode_history(&key, v.value())
                                    .ok_or(StoreError::Corrupt { table: "dhcp_lease_history" })?,
                            ),
                            None => None,
                        };
                        if let Some(mut h) = found {
                            h.to = Some(*to);
                            history.insert(key.as_slice(), record::history_value(&h).as_slice()).map_err(db_err)?;
                        }
                    }
                    Write::PutQuarantine(q) => {
                        quarantine
                            .insert(record::offset_key(&q.class, q.offset).as_slice(), q.release)
                            .map_err(db_err)?;
                    }
                    Write::RemoveQuarantine { class, offset } => {
                        quarantine.remove(record::offset_key(class, *offset).as_slice()).map_err(db_err)?;
                    }
                }
            }
        }
        txn.commit().map_err(db_err)
    }

    fn snapshot(&self) -> Result<LeaseSnapshot, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let mut snap = LeaseSnapshot::default();
        for entry in txn.open_table(BINDINGS).map_err(db_err)?.iter().map_err(db_err)? {
            let (k, v) = entry.map_err(db_err)?;
            let (class, mac) =
                record::decode_binding_key(k.value()).ok_or(StoreError::Corrupt { table: "dhcp_bindings" })?;
            snap.bindings.push(Binding { class, mac, offset: v.value() });
        }
        for entry in txn.open_table(LEASES).map_err(db_err)?.iter().map_err(db_err)? {
            let (k, v) = entry.map_err(db_err)?;
            let lease = record::decode_offset_key(k.value())
                .and_then(|(class, offset)| record::decode_lease(class, offset, v.value()))
                .ok_or(StoreError::Corrupt { table: "dhcp_leases" })?;
            snap.leases.push(lease);
        }
        for entry in txn.open_table(QUARANTINE).map_err(db_err)?.iter().map_err(db_err)? {
            let (k, v) = entry.map_err(db_err)?;
            let (class, offset) =
                record::decode_offset_key(k.value()).ok_or(StoreError::Corrupt { table: "dhcp_quarantine" })?;
            snap.quarantine.push(Quarantine { class, offset, release: v.value() });
        }
        Ok(snap)
    }

    fn who_held(&self, public_ip: Ipv4Addr, port: u16, at: UnixSecs) -> Result<Vec<HistoryRecord>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(HISTORY).map_err(db_err)?;
        let low = record::history_key(public_ip, 0, 0, MacAddr([0; 6]));
        let high = record::history_key(public_ip, port, UnixSecs::MAX, MacAddr([0xff; 6]));
        let mut out = Vec::new();
        for entry in table.range(low.as_slice()..=high.as_slice()).map_err(db_err)? {
            let (k, v) = entry.map_err(db_err)?;
            let h = record::decode_history(k.value(), v.value())
                .ok_or(StoreError::Corrupt { table: "dhcp_lease_history" })?;
            if h.covers(public_ip, port, at) {
                out.push(h);
            }
        }
        Ok(out)
    }

    fn prune_history(&self, ended_before: UnixSecs) -> Result<usize, StoreError> {
        let mut txn = self.db.begin_write().map_err(db_err)?;
        txn.set_durability(Durability::Immediate).map_err(db_err)?;
        let mut pruned = 0;
        {
            let mut table = txn.open_table(HISTORY).map_err(db_err)?;
            table
                .retain(|k, v| {
                    // An undecodable record is kept: pruning must not destroy evidence.
                    let ended = record::decode_history(k, v).and_then(|h| h.to).is_some_and(|to| to < ended_before);
                    pruned += usize::from(ended);
                    !ended
                })
                .map_err(db_err)?;
        }
        txn.commit().map_err(db_err)?;
        Ok(pruned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance;

    fn temp_path(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("dialtone-store-{}-{name}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        dir
    }

    #[test]
    fn redb_store_conforms() {
        let path = temp_path("conform.redb");
        conformance::exercise(&RedbStore::open(&path).unwrap());
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn writes_survive_reopen() {
        let path = temp_path("reopen.redb");
        let lease = conformance::lease("yealink", 42, 7, 1000);
        let hist = conformance::history(42, 7, 1024, 1000, None);
        {
            let store = RedbStore::open(&path).unwrap();
            store
                .apply(&[
                    Write::PutBinding(Binding { class: "yealink".into(), mac: lease.mac, offset: 42 }),
                    Write::PutLease(lease.clone()),
                    Write::OpenHistory(hist.clone()),
                    Write::PutQuarantine(Quarantine { class: "yealink".into(), offset: 3, release: 5000 }),
                ])
                .unwrap();
        }
        let store = RedbStore::open(&path).unwrap();
        let snap = store.snapshot().unwrap();
        assert_eq!(snap.leases, vec![lease.clone()]);
        assert_eq!(snap.bindings, vec![Binding { class: "yealink".into(), mac: lease.mac, offset: 42 }]);
        assert_eq!(snap.quarantine.len(), 1);
        assert_eq!(store.who_held(hist.public_ip, 1500, 2000).unwrap(), vec![hist]);
        drop(store);
        std::fs::remove_file(path).unwrap();
    }
}
