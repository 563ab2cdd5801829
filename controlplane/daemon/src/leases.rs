//! The lease table: which phone holds which LAN address right now (class, MAC, offset, port
//! block), and the fan-out point through which DHCP lease changes reach every service that needs
//! them.
//!
//! Seeded once from the store's snapshot at start ([`LeaseTable::seed`]), then kept current by
//! the DHCP server's `LeaseSink`: [`LeaseFanout::sink`] builds that sink, and every event goes
//! first to the table, then to each subscriber added with [`LeaseFanout::subscribe`] (the
//! dataplane's session tables subscribe there the same way), in order, on the DHCP thread, after
//! the lease is durable. Subscribers must not block.
//!
//! The table implements [`dialtone_tftp::ClientDirectory`]: TFTP identifies a phone by the
//! address its request comes from (claims 001: 12-14), and a per-phone file is rendered with the
//! device's own provisioning parameters (device id = the MAC as 12 hex digits) from the
//! pre-provisioning registry, over the class's.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, RwLock};

use dialtone_config::portblock::PortBlock;
use dialtone_config::{Config, MacAddr};
use dialtone_dhcp::{LeaseChange, LeaseEvent};
use dialtone_preprov::{DeviceId, Registry};
use dialtone_store::{LeaseSnapshot, LeaseState};
use dialtone_tftp::{ClientDirectory, ClientInfo};

/// One current lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseEntry {
    /// Index of the class in `Config::classes`.
    pub class: usize,
    /// The holder.
    pub mac: MacAddr,
    /// Offset in the class's LAN pool.
    pub offset: u32,
    /// The port block granted with the lease.
    pub block: PortBlock,
}

/// Current leases by LAN address, shared between the DHCP thread (writer) and readers (TFTP).
pub struct LeaseTable {
    leases: RwLock<HashMap<Ipv4Addr, LeaseEntry>>,
    registry: Option<Arc<dyn Registry>>,
}

impl std::fmt::Debug for LeaseTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseTable").field("leases", &self.len()).finish_non_exhaustive()
    }
}

impl LeaseTable {
    /// An empty table; `registry` supplies per-device parameters (none when absent).
    pub fn new(registry: Option<Arc<dyn Registry>>) -> Self {
        Self { leases: RwLock::new(HashMap::new()), registry }
    }

    /// Loads the bound leases of `snapshot` whose class still exists in `config`. Offered
    /// leases are not current yet: the phone has no address until the ACK.
    pub fn seed(&self, config: &Config, snapshot: &LeaseSnapshot) {
        let mut map = self.write();
        for lease in snapshot.leases.iter().filter(|l| l.state == LeaseState::Bound) {
            let Some(class) = config.classes.iter().position(|c| c.name == lease.class) else { continue };
            let Some(address) = config.classes[class].address_at(lease.offset) else { continue };
            map.insert(address, LeaseEntry { class, mac: lease.mac, offset: lease.offset, block: lease.block });
        }
    }

    /// Applies one lease change: granted and renewed leases are current, the rest are gone.
    pub fn apply(&self, event: &LeaseEvent) {
        let mut map = self.write();
        match event.change {
            LeaseChange::Granted | LeaseChange::Renewed => {
                map.insert(
                    event.address,
                    LeaseEntry { class: event.class, mac: event.mac, offset: event.offset, block: event.block },
                );
            }
            LeaseChange::Released | LeaseChange::Expired | LeaseChange::Declined => {
                // Only the holder's own release removes it (a late event must not drop a newer
                // holder's lease).
                if map.get(&event.address).is_some_and(|e| e.mac == event.mac) {
                    map.remove(&event.address);
                }
            }
        }
    }

    /// The lease on `address`.
    pub fn get(&self, address: Ipv4Addr) -> Option<LeaseEntry> {
        self.leases.read().unwrap_or_else(std::sync::PoisonError::into_inner).get(&address).copied()
    }

    /// Every current lease, by address.
    pub fn entries(&self) -> Vec<(Ipv4Addr, LeaseEntry)> {
        let map = self.leases.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        map.iter().map(|(address, entry)| (*address, *entry)).collect()
    }

    /// Number of current leases.
    pub fn len(&self) -> usize {
        self.leases.read().unwrap_or_else(std::sync::PoisonError::into_inner).len()
    }

    /// No current lease.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<Ipv4Addr, LeaseEntry>> {
        // A panicking writer leaves a consistent map (each write is one insert or remove).
        self.leases.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl ClientDirectory for LeaseTable {
    fn lookup(&self, ip: Ipv4Addr) -> Option<ClientInfo> {
        let entry = self.get(ip)?;
        let parameters = match (&self.registry, DeviceId::parse(&entry.mac.to_hex12())) {
            (Some(registry), Ok(id)) => match registry.parameters(&id) {
                Ok(p) => p.unwrap_or_default(),
                Err(e) => {
                    tracing::warn!(mac = %entry.mac, error = %e, "lease table: device parameters unavailable");
                    Default::default()
                }
            },
            _ => Default::default(),
        };
        Some(ClientInfo { class: entry.class, mac: entry.mac, lan_ip: ip, port_block: entry.block, parameters })
    }
}

/// A subscriber to lease changes: [`event`](Self::event) for each change of a burst (the
/// events of one commit), in order, then [`flush`](Self::flush) once. A closure over one event
/// is a subscriber that needs no flush.
pub trait LeaseSubscriber: Send + Sync {
    /// One change.
    fn event(&self, event: &LeaseEvent);
    /// The burst is over (a subscriber that defers work, such as waking a worker, does it now).
    fn flush(&self) {}
}

impl<F: Fn(&LeaseEvent) + Send + Sync> LeaseSubscriber for F {
    fn event(&self, event: &LeaseEvent) {
        self(event);
    }
}

/// The one place DHCP lease events fan out from: the lease table, then each subscriber.
pub struct LeaseFanout {
    table: Arc<LeaseTable>,
    subscribers: Vec<Box<dyn LeaseSubscriber>>,
}

impl std::fmt::Debug for LeaseFanout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseFanout").field("subscribers", &self.subscribers.len()).finish_non_exhaustive()
    }
}

impl LeaseFanout {
    /// Fan-out to `table` first.
    pub fn new(table: Arc<LeaseTable>) -> Self {
        Self { table, subscribers: Vec::new() }
    }

    /// Adds a subscriber, called after the table is updated. Add all before [`Self::sink`].
    pub fn subscribe(&mut self, subscriber: Box<dyn LeaseSubscriber>) {
        self.subscribers.push(subscriber);
    }

    /// Delivers a burst of events: each to the table, then to every subscriber, in order; then
    /// flushes the subscribers.
    pub fn publish(&self, events: &[LeaseEvent]) {
        for event in events {
            self.table.apply(event);
            for subscriber in &self.subscribers {
                subscriber.event(event);
            }
        }
        for subscriber in &self.subscribers {
            subscriber.flush();
        }
    }

    /// The DHCP server's sink: logs each change and publishes the burst.
    pub fn sink(self) -> dialtone_dhcp::server::LeaseSink {
        Arc::new(move |events: &[LeaseEvent]| {
            for event in events {
                tracing::info!(
                    change = ?event.change,
                    mac = %event.mac,
                    address = %event.address,
                    public = %event.block.public_ip,
                    ports = %format!("{}-{}", event.block.port_lo, event.block.port_hi),
                    "lease"
                );
            }
            self.publish(events);
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dialtone_config::{load_str, CpuPolicy};
    use dialtone_preprov::MemoryRegistry;
    use dialtone_store::Lease;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn config() -> Config {
        let text = include_str!("../../../config/examples/dialtone.toml");
        load_str("dialtone.toml", text, std::path::Path::new("."), CpuPolicy::Ignore).expect("lab config").config
    }

    const MAC: MacAddr = MacAddr([0x80, 0x5e, 0xc0, 0, 0, 0x11]);

    fn event(config: &Config, change: LeaseChange, offset: u32, mac: MacAddr) -> LeaseEvent {
        let class = &config.classes[0];
        LeaseEvent {
            change,
            class: 0,
            offset,
            address: class.address_at(offset).expect("in pool"),
            mac,
            block: class.plan.port_block_for(offset).expect("block"),
            until: 0,
        }
    }

    #[test]
    fn events_insert_and_remove_and_reach_subscribers() {
        let config = config();
        let table = Arc::new(LeaseTable::new(None));
        let seen = Arc::new(AtomicUsize::new(0));
        let mut fanout = LeaseFanout::new(Arc::clone(&table));
        let counter = Arc::clone(&seen);
        fanout.subscribe(Box::new(move |_: &LeaseEvent| {
            counter.fetch_add(1, Ordering::Relaxed);
        }));
        let sink = fanout.sink();
        let granted = event(&config, LeaseChange::Granted, 5, MAC);
        sink(std::slice::from_ref(&granted));
        let info = table.lookup(granted.address).expect("leased");
        assert_eq!((info.class, info.mac, info.port_block), (0, MAC, granted.block));
        // Another MAC's release of the same address does not remove the holder's lease.
        sink(&[event(&config, LeaseChange::Released, 5, MacAddr([2, 0, 0, 0, 0, 1]))]);
        assert!(table.get(granted.address).is_some());
        sink(&[event(&config, LeaseChange::Expired, 5, MAC)]);
        assert!(table.get(granted.address).is_none());
        sink(&[event(&config, LeaseChange::Renewed, 6, MAC), event(&config, LeaseChange::Declined, 6, MAC)]);
        assert!(table.is_empty());
        assert_eq!(seen.load(Ordering::Relaxed), 5);
    }

    /// Records the events and flushes it is given, in order.
    #[derive(Default)]
    struct Recorder {
        log: std::sync::Mutex<Vec<String>>,
    }

    impl LeaseSubscriber for Arc<Recorder> {
        fn event(&self, event: &LeaseEvent) {
            self.log.lock().expect("log").push(format!("{:?} {}", event.change, event.offset));
        }
        fn flush(&self) {
            self.log.lock().expect("log").push("flush".into());
        }
    }

    #[test]
    fn a_burst_reaches_subscribers_in_order_then_one_flush() {
        let config = config();
        let table = Arc::new(LeaseTable::new(None));
        let recorder = Arc::new(Recorder::default());
        let mut fanout = LeaseFanout::new(Arc::clone(&table));
        fanout.subscribe(Box::new(Arc::clone(&recorder)));
        let sink = fanout.sink();
        sink(&[
            event(&config, LeaseChange::Granted, 7, MAC),
            event(&config, LeaseChange::Granted, 8, MacAddr([2, 0, 0, 0, 0, 2])),
            event(&config, LeaseChange::Released, 7, MAC),
        ]);
        sink(&[event(&config, LeaseChange::Renewed, 8, MacAddr([2, 0, 0, 0, 0, 2]))]);
        assert_eq!(
            *recorder.log.lock().expect("log"),
            ["Granted 7", "Granted 8", "Released 7", "flush", "Renewed 8", "flush"]
        );
        assert_eq!(table.len(), 1, "the table applied every event of the burst");
    }

    #[test]
    fn seeded_from_bound_leases_with_device_parameters() {
        let config = config();
        let class = &config.classes[0];
        let lease = |offset: u32, state: LeaseState, class: &str| Lease {
            class: class.into(),
            offset,
            mac: MAC,
            client_id: None,
            start: 1,
            expiry: 2,
            state,
            block: config.classes[0].plan.port_block_for(offset).expect("block"),
        };
        let snapshot = LeaseSnapshot {
            bindings: Vec::new(),
            leases: vec![
                lease(7, LeaseState::Bound, "yealink-t5"),
                lease(8, LeaseState::Offered, "yealink-t5"),
                lease(9, LeaseState::Bound, "gone-class"),
            ],
            quarantine: Vec::new(),
        };
        let registry = Arc::new(MemoryRegistry::default());
        let id = DeviceId::parse(&MAC.to_hex12()).expect("id");
        registry
            .transact(&mut |txn| {
                txn.put_parameters(&id, [("sip_user".to_owned(), "1001".to_owned())].into_iter().collect())
            })
            .expect("parameters");
        let table = LeaseTable::new(Some(registry));
        table.seed(&config, &snapshot);
        assert_eq!(table.len(), 1);
        let address = class.address_at(7).expect("address");
        assert_eq!(table.entries().iter().map(|(a, e)| (*a, e.offset)).collect::<Vec<_>>(), vec![(address, 7)]);
        let info = table.lookup(address).expect("seeded");
        assert_eq!(info.parameters.get("sip_user").map(String::as_str), Some("1001"));
        assert_eq!(info.lan_ip, address);
        assert!(table.lookup(class.address_at(8).expect("address")).is_none());
    }
}
