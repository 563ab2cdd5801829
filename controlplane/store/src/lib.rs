//! dialtone's durable subscriber state behind one [`Store`] trait.
//!
//! Layer: control plane, below the DHCP shell and the management API.
//! Inputs: batches of [`Write`]s (from the DHCP engine's effects) and queries.
//! Outputs: durable records — sticky bindings `(class, MAC) -> offset`, current leases, lease
//! history (who held which public address and port block, from when to when) and quarantined
//! addresses — and answers such as [`Store::who_held`].
//! It must never acknowledge a write before it is durable: [`Store::apply`] returns only after the
//! batch is on stable storage (redb `Durability::Immediate`, i.e. fsync), and the
//! [`group::GroupCommitter`] returns to its caller only after the commit that carried its writes.
//!
//! Two implementations: [`MemoryStore`] (tests, tools) and [`RedbStore`] (the product). Classes are
//! recorded by **name**, not by their index in the config, so records survive a reordering of
//! classes; history records carry the public address and port block themselves, so "who held
//! `public_ip:port` at time T" is answered correctly after a change of port-block plan too.
//!
//! The trait grows by adding methods and [`Write`] variants: later issues add device and account
//! tables to the same store, committed through the same group committer.
#![forbid(unsafe_code)]
// Tests may unwrap: a panic there is a failed assertion, not a remote crash.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod group;
mod memory;
mod record;
mod redb_store;

use std::net::Ipv4Addr;

pub use dialtone_config::portblock::PortBlock;
pub use dialtone_config::MacAddr;
pub use group::GroupCommitter;
pub use memory::MemoryStore;
pub use redb_store::RedbStore;

/// Seconds since the UNIX epoch: the one clock unit of leases and history.
pub type UnixSecs = u64;

/// Why the store could not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The database engine failed (I/O, corruption, lock held by another process).
    #[error("database: {0}")]
    Database(String),
    /// A stored record does not decode (written by an incompatible version, or damaged).
    #[error("stored record in table {table} does not decode")]
    Corrupt {
        /// The table holding it.
        table: &'static str,
    },
}

/// Offered (reserved for a client that has not yet requested it) or bound (acknowledged).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LeaseState {
    /// Sent in an OFFER, not yet requested.
    Offered,
    /// Acknowledged with a DHCPACK.
    Bound,
}

/// A phone's current lease: class, offset in the class's LAN pool, who holds it and until when.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Lease {
    /// Class name.
    pub class: String,
    /// Offset in the class's LAN pool (the port block is a function of it).
    pub offset: u32,
    /// The holder.
    pub mac: MacAddr,
    /// DHCP client identifier (option 61), if the client sent one.
    pub client_id: Option<Vec<u8>>,
    /// When the holder first got this lease (the start of its history record).
    pub start: UnixSecs,
    /// When it ends unless renewed.
    pub expiry: UnixSecs,
    /// Offered or bound.
    pub state: LeaseState,
    /// The port block granted with it, as computed then: its history record is keyed by it, so
    /// the record can be closed even after the class's plan changed.
    pub block: PortBlock,
}

/// One stretch of time during which one MAC held one address, and so one public port block.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HistoryRecord {
    /// Class name at the time.
    pub class: String,
    /// Offset in the class's LAN pool.
    pub offset: u32,
    /// The phone's LAN address.
    pub lan_address: Ipv4Addr,
    /// The holder.
    pub mac: MacAddr,
    /// Shared public address of the block.
    pub public_ip: Ipv4Addr,
    /// First port of the block.
    pub port_lo: u16,
    /// Last port of the block (inclusive).
    pub port_hi: u16,
    /// Start (inclusive).
    pub from: UnixSecs,
    /// End (exclusive); `None` while the lease is current.
    pub to: Option<UnixSecs>,
}

impl HistoryRecord {
    /// Did this record's holder own `public_ip:port` at `at`?
    pub fn covers(&self, public_ip: Ipv4Addr, port: u16, at: UnixSecs) -> bool {
        self.public_ip == public_ip
            && (self.port_lo..=self.port_hi).contains(&port)
            && self.from <= at
            && self.to.is_none_or(|to| at < to)
    }
}

/// An address resting after use before anyone else may have it (RFC 6888 REQ-8).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Quarantine {
    /// Class name.
    pub class: String,
    /// Offset in the class's LAN pool.
    pub offset: u32,
    /// When the address may be leased to another MAC.
    pub release: UnixSecs,
}

/// A sticky binding: this MAC gets this offset back in this class while the binding lives.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Binding {
    /// Class name.
    pub class: String,
    /// The phone.
    pub mac: MacAddr,
    /// Its offset.
    pub offset: u32,
}

/// One change to the store. A batch of them is applied atomically and durably.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Write {
    /// Create or replace the binding of `(class, mac)`.
    PutBinding(Binding),
    /// Forget the binding of `(class, mac)`.
    RemoveBinding {
        /// Class name.
        class: String,
        /// The phone.
        mac: MacAddr,
    },
    /// Create or replace the lease at `(class, offset)`.
    PutLease(Lease),
    /// Remove the lease at `(class, offset)`.
    RemoveLease {
        /// Class name.
        class: String,
        /// Offset.
        offset: u32,
    },
    /// Start a history record (its `to` is normally `None`).
    OpenHistory(HistoryRecord),
    /// End the open history record of `mac` on `public_ip:port_lo` started at `from`.
    CloseHistory {
        /// Public address of the block.
        public_ip: Ipv4Addr,
        /// First port of the block.
        port_lo: u16,
        /// Start of the record.
        from: UnixSecs,
        /// The holder.
        mac: MacAddr,
        /// End time.
        to: UnixSecs,
    },
    /// Quarantine `(class, offset)` until `release`.
    PutQuarantine(Quarantine),
    /// Lift the quarantine of `(class, offset)`.
    RemoveQuarantine {
        /// Class name.
        class: String,
        /// Offset.
        offset: u32,
    },
}

/// Everything the DHCP engine needs to resume after a restart.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaseSnapshot {
    /// Sticky bindings.
    pub bindings: Vec<Binding>,
    /// Current leases.
    pub leases: Vec<Lease>,
    /// Quarantined addresses.
    pub quarantine: Vec<Quarantine>,
}

/// Durable subscriber state. Implementations are shared between threads.
pub trait Store: Send + Sync {
    /// Applies `writes` atomically and returns only once they are durable.
    fn apply(&self, writes: &[Write]) -> Result<(), StoreError>;

    /// Bindings, current leases and quarantine, for the engine to start from.
    fn snapshot(&self) -> Result<LeaseSnapshot, StoreError>;

    /// Current leases of `mac` (one per class at most).
    fn leases_of(&self, mac: MacAddr) -> Result<Vec<Lease>, StoreError> {
        Ok(self.snapshot()?.leases.into_iter().filter(|l| l.mac == mac).collect())
    }

    /// Every history record whose holder owned `public_ip:port` at `at` (normally one; more only
    /// if records overlap, which the caller should report).
    fn who_held(&self, public_ip: Ipv4Addr, port: u16, at: UnixSecs) -> Result<Vec<HistoryRecord>, StoreError>;

    /// Drops history records that ended before `ended_before`; returns how many.
    fn prune_history(&self, ended_before: UnixSecs) -> Result<usize, StoreError>;
}

impl<S: Store + ?Sized> Store for std::sync::Arc<S> {
    fn apply(&self, writes: &[Write]) -> Result<(), StoreError> {
        (**self).apply(writes)
    }
    fn snapshot(&self) -> Result<LeaseSnapshot, StoreError> {
        (**self).snapshot()
    }
    fn leases_of(&self, mac: MacAddr) -> Result<Vec<Lease>, StoreError> {
        (**self).leases_of(mac)
    }
    fn who_held(&self, public_ip: Ipv4Addr, port: u16, at: UnixSecs) -> Result<Vec<HistoryRecord>, StoreError> {
        (**self).who_held(public_ip, port, at)
    }
    fn prune_history(&self, ended_before: UnixSecs) -> Result<usize, StoreError> {
        (**self).prune_history(ended_before)
    }
}

/// Shared test vectors for both implementations.
#[cfg(test)]
pub(crate) mod conformance {
    use super::*;

    pub fn mac(last: u8) -> MacAddr {
        MacAddr([0x80, 0x5e, 0xc0, 0, 0, last])
    }

    pub fn lease(class: &str, offset: u32, last: u8, start: UnixSecs) -> Lease {
        Lease {
            class: class.into(),
            offset,
            mac: mac(last),
            client_id: Some(vec![1, 0x80, 0x5e, 0xc0, 0, 0, last]),
            start,
            expiry: start + 3600,
            state: LeaseState::Bound,
            block: PortBlock { public_ip: Ipv4Addr::new(198, 51, 100, 1), port_lo: 1024, port_hi: 2047 },
        }
    }

    pub fn history(offset: u32, last: u8, port_lo: u16, from: UnixSecs, to: Option<UnixSecs>) -> HistoryRecord {
        HistoryRecord {
            class: "yealink".into(),
            offset,
            lan_address: Ipv4Addr::new(100, 64, 16, offset as u8),
            mac: mac(last),
            public_ip: Ipv4Addr::new(198, 51, 100, 1),
            port_lo,
            port_hi: port_lo + 1023,
            from,
            to,
        }
    }

    /// Runs every behaviour both stores must share.
    pub fn exercise(store: &dyn Store) {
        // Leases, bindings and quarantine round-trip and replace by key.
        store
            .apply(&[
                Write::PutBinding(Binding { class: "yealink".into(), mac: mac(1), offset: 7 }),
                Write::PutLease(lease("yealink", 7, 1, 1000)),
                Write::PutLease(lease("polycom", 7, 2, 1000)),
                Write::PutQuarantine(Quarantine { class: "yealink".into(), offset: 9, release: 2000 }),
            ])
            .unwrap();
        let mut renewed = lease("yealink", 7, 1, 1000);
        renewed.expiry = 9999;
        renewed.client_id = None;
        store.apply(&[Write::PutLease(renewed.clone())]).unwrap();
        let snap = store.snapshot().unwrap();
        assert_eq!(snap.bindings, vec![Binding { class: "yealink".into(), mac: mac(1), offset: 7 }]);
        assert_eq!(snap.leases.len(), 2);
        assert!(snap.leases.contains(&renewed));
        assert!(snap.leases.contains(&lease("polycom", 7, 2, 1000)));
        assert_eq!(snap.quarantine, vec![Quarantine { class: "yealink".into(), offset: 9, release: 2000 }]);
        assert_eq!(store.leases_of(mac(2)).unwrap(), vec![lease("polycom", 7, 2, 1000)]);

        store
            .apply(&[
                Write::RemoveLease { class: "polycom".into(), offset: 7 },
                Write::RemoveBinding { class: "yealink".into(), mac: mac(1) },
                Write::RemoveQuarantine { class: "yealink".into(), offset: 9 },
            ])
            .unwrap();
        let snap = store.snapshot().unwrap();
        assert!(snap.bindings.is_empty());
        assert_eq!(snap.leases, vec![renewed]);
        assert!(snap.quarantine.is_empty());

        // History: two holders of neighbouring blocks, then the first block changes hands.
        let ip = Ipv4Addr::new(198, 51, 100, 1);
        store
            .apply(&[
                Write::OpenHistory(history(0, 1, 1024, 100, None)),
                Write::OpenHistory(history(1, 2, 2048, 150, None)),
            ])
            .unwrap();
        store.apply(&[Write::CloseHistory { public_ip: ip, port_lo: 1024, from: 100, mac: mac(1), to: 200 }]).unwrap();
        store.apply(&[Write::OpenHistory(history(0, 3, 1024, 300, None))]).unwrap();

        let who = |port, at| store.who_held(ip, port, at).unwrap().into_iter().map(|r| r.mac).collect::<Vec<_>>();
        assert_eq!(who(1500, 99), vec![]);
        assert_eq!(who(1500, 100), vec![mac(1)]);
        assert_eq!(who(2047, 199), vec![mac(1)]);
        assert_eq!(who(2048, 199), vec![mac(2)]);
        assert_eq!(who(1024, 200), vec![]);
        assert_eq!(who(1024, 250), vec![]);
        assert_eq!(who(1024, 300), vec![mac(3)]);
        assert_eq!(who(3071, 1_000_000), vec![mac(2)]);
        assert_eq!(who(3072, 1_000_000), vec![]);
        assert_eq!(store.who_held(Ipv4Addr::new(198, 51, 100, 2), 1500, 150).unwrap(), vec![]);

        // After a plan change the same address carries 256-port blocks: both eras answer right.
        let mut small = history(5, 4, 1280, 400, None);
        small.port_hi = 1535;
        store.apply(&[Write::OpenHistory(small)]).unwrap();
        assert_eq!(who(1300, 400), vec![mac(3), mac(4)]);
        assert_eq!(who(1300, 250), vec![]);
        assert_eq!(who(1100, 150), vec![mac(1)]);

        // Pruning drops ended records only.
        assert_eq!(store.prune_history(201).unwrap(), 1);
        assert_eq!(who(1500, 150), vec![]);
        assert_eq!(who(2048, 150), vec![mac(2)]);
        assert_eq!(store.prune_history(201).unwrap(), 0);
    }
}
