//! The simulated phones a generator sends from: a table of slots that the churn thread changes
//! while the transmit loop reads it, and the leases file the `lease` step writes.
//!
//! A slot is two atomic words. The transmit loop reads the lease word with Acquire and skips the
//! slot when it is empty; the churn thread empties it before it releases the lease (so no frame
//! is generated from an address after its RELEASE is sent) and fills it only after the ACK. No
//! lock is taken on the transmit path.

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::lease::Lease;

/// What the transmit loop needs of a leased phone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotPhone {
    /// Leased private address.
    pub address: Ipv4Addr,
    /// First port of its block.
    pub port_lo: u16,
    /// log2 of the block size.
    pub ports_log2: u8,
    /// Class index.
    pub class: u8,
    /// Its MAC.
    pub mac: [u8; 6],
}

impl SlotPhone {
    /// The slot view of `lease`, or `None` if its block is not a power-of-two range.
    pub fn of(lease: &Lease) -> Option<Self> {
        let ports = u32::from(lease.port_hi).checked_sub(u32::from(lease.port_lo))? + 1;
        ports.is_power_of_two().then_some(Self {
            address: lease.address,
            port_lo: lease.port_lo,
            ports_log2: ports.trailing_zeros() as u8,
            class: lease.class,
            mac: lease.mac,
        })
    }

    /// Ports in the block.
    pub fn ports(&self) -> u32 {
        1 << self.ports_log2
    }
}

/// The phones' slots.
#[derive(Debug)]
pub struct Slots {
    leases: Vec<AtomicU64>,
    macs: Vec<AtomicU64>,
}

impl Slots {
    /// `count` empty slots.
    pub fn new(count: usize) -> Self {
        Self {
            leases: (0..count).map(|_| AtomicU64::new(0)).collect(),
            macs: (0..count).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Number of slots.
    pub fn len(&self) -> usize {
        self.leases.len()
    }

    /// True without slots.
    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }

    /// Fills slot `index` (MAC first, then the lease word with Release).
    pub fn set(&self, index: usize, phone: &SlotPhone) {
        let mut mac = [0u8; 8];
        mac[2..].copy_from_slice(&phone.mac);
        self.macs[index].store(u64::from_be_bytes(mac), Ordering::Relaxed);
        let word = (u64::from(u32::from(phone.address)) << 32)
            | (u64::from(phone.port_lo) << 16)
            | (u64::from(phone.ports_log2) << 8)
            | u64::from(phone.class);
        self.leases[index].store(word, Ordering::Release);
    }

    /// Empties slot `index`.
    pub fn clear(&self, index: usize) {
        self.leases[index].store(0, Ordering::Release);
    }

    /// The phone in slot `index`, if leased.
    #[inline]
    pub fn get(&self, index: usize) -> Option<SlotPhone> {
        let word = self.leases[index].load(Ordering::Acquire);
        if word == 0 {
            return None;
        }
        let mac = self.macs[index].load(Ordering::Relaxed).to_be_bytes();
        let mut phone_mac = [0u8; 6];
        phone_mac.copy_from_slice(&mac[2..]);
        Some(SlotPhone {
            address: Ipv4Addr::from((word >> 32) as u32),
            port_lo: (word >> 16) as u16,
            ports_log2: (word >> 8) as u8,
            class: word as u8,
            mac: phone_mac,
        })
    }

    /// Slots that hold a phone now.
    pub fn leased(&self) -> usize {
        self.leases.iter().filter(|w| w.load(Ordering::Relaxed) != 0).count()
    }
}

/// The leases file: what `dialtone-gen lease` obtained, for later `send` and `release` runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeasesFile {
    /// Every phone that got a lease.
    pub leases: Vec<Lease>,
}

impl LeasesFile {
    /// Reads a leases file.
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))
    }

    /// Writes it.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let text = serde_json::to_string_pretty(self).context("encode leases")?;
        std::fs::write(path, text).with_context(|| format!("write {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_round_trip_and_clear() {
        let slots = Slots::new(3);
        let phone = SlotPhone {
            address: Ipv4Addr::new(100, 64, 200, 7),
            port_lo: 64512,
            ports_log2: 6,
            class: 3,
            mac: [2, 0x64, 1, 2, 3, 4],
        };
        assert_eq!(slots.get(1), None);
        slots.set(1, &phone);
        assert_eq!(slots.get(1), Some(phone));
        assert_eq!(slots.leased(), 1);
        slots.clear(1);
        assert_eq!(slots.get(1), None);
        assert_eq!(slots.leased(), 0);
    }

    #[test]
    fn slot_view_of_a_lease() {
        let lease = Lease {
            mac: [2, 0, 0, 0, 0, 9],
            address: Ipv4Addr::new(100, 64, 128, 9),
            class: 0,
            offset: 9,
            public: Ipv4Addr::new(198, 51, 100, 0),
            port_lo: 1024 + 9 * 64,
            port_hi: 1024 + 10 * 64 - 1,
            server: Ipv4Addr::new(100, 64, 0, 1),
            gateway_mac: [2, 0, 0, 0, 0, 1],
        };
        let phone = SlotPhone::of(&lease).expect("64-port block");
        assert_eq!((phone.ports(), phone.port_lo), (64, 1600));
        assert_eq!(SlotPhone::of(&Lease { port_hi: lease.port_lo + 9, ..lease }), None);
        let file = LeasesFile { leases: vec![lease] };
        let text = serde_json::to_string(&file).expect("encode");
        assert_eq!(serde_json::from_str::<LeasesFile>(&text).expect("decode"), file);
    }
}
