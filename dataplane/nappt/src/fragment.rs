//! The per-worker fragment table: later fragments of a datagram carry no ports, so they follow
//! the decision made for the first fragment (ports are never rewritten, so only addresses and
//! MACs change and no reassembly is needed).
//!
//! Bounded and allocation-free after construction: 4-way set-associative, indexed by a keyed hash
//! (the key is attacker-chosen, so the hash is seeded per worker); a new first fragment takes a
//! free or expired way of its set, or else evicts the way that expires first (counted).

/// What identifies a datagram's fragments as they arrive (RFC 791: source, destination,
/// protocol, identification).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FragmentKey {
    /// Source address as it arrived.
    pub src: u32,
    /// Destination address as it arrived.
    pub dst: u32,
    /// Identification.
    pub ident: u16,
    /// Protocol.
    pub protocol: u8,
}

/// How the first fragment was translated, replayed on the later ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FragmentRewrite {
    /// Source address to write.
    pub src: u32,
    /// Destination address to write.
    pub dst: u32,
    /// Destination MAC to write.
    pub dst_mac: [u8; 6],
    /// True: to the LAN (inbound, hairpin); false: to the WAN.
    pub to_lan: bool,
}

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    expires_ms: u64,
    key: FragmentKey,
    rewrite: FragmentRewrite,
    used: bool,
}

const WAYS: usize = 4;

/// The table.
#[derive(Debug, Clone)]
pub struct FragmentTable {
    slots: Vec<Slot>,
    set_mask: usize,
    timeout_ms: u64,
    seed: u64,
}

impl FragmentTable {
    /// A table of at least `capacity` entries (rounded up to a power of two, at least 4) whose
    /// entries live `timeout_ms`, hashing with `seed`.
    pub fn new(capacity: u32, timeout_ms: u64, seed: u64) -> Self {
        let capacity = (capacity as usize).max(WAYS).next_power_of_two();
        Self { slots: vec![Slot::default(); capacity], set_mask: capacity / WAYS - 1, timeout_ms, seed }
    }

    /// Entries the table can hold.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    fn set_of(&self, key: &FragmentKey) -> usize {
        let mut h = (u64::from(key.src) << 32 | u64::from(key.dst)) ^ self.seed;
        h = (h ^ (h >> 33)).wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= u64::from(key.ident) << 8 | u64::from(key.protocol);
        h = (h ^ (h >> 33)).wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^= h >> 33;
        (h as usize & self.set_mask) * WAYS
    }

    /// Remembers the first fragment's rewrite; returns true when a live entry was evicted.
    pub fn insert(&mut self, now_ms: u64, key: FragmentKey, rewrite: FragmentRewrite) -> bool {
        let base = self.set_of(&key);
        let expires_ms = now_ms.saturating_add(self.timeout_ms);
        let set = &mut self.slots[base..base + WAYS];
        let mut victim = 0;
        let mut evicted = true;
        for (i, slot) in set.iter().enumerate() {
            if slot.used && slot.key == key {
                victim = i;
                evicted = false;
                break;
            }
            if !slot.used || slot.expires_ms <= now_ms {
                victim = i;
                evicted = false;
            } else if evicted && slot.expires_ms < set[victim].expires_ms {
                victim = i;
            }
        }
        set[victim] = Slot { expires_ms, key, rewrite, used: true };
        evicted
    }

    /// The rewrite of a later fragment, if its first fragment was seen and has not expired.
    pub fn lookup(&self, now_ms: u64, key: &FragmentKey) -> Option<FragmentRewrite> {
        let base = self.set_of(key);
        self.slots[base..base + WAYS]
            .iter()
            .find(|slot| slot.used && slot.key == *key && slot.expires_ms > now_ms)
            .map(|slot| slot.rewrite)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ident: u16) -> FragmentKey {
        FragmentKey { src: 0x6440_1005, dst: 0xc000_020a, ident, protocol: 17 }
    }

    fn rewrite(src: u32) -> FragmentRewrite {
        FragmentRewrite { src, dst: 0xc000_020a, dst_mac: [2, 0, 0, 0, 0, 0xfe], to_lan: false }
    }

    #[test]
    fn lookup_until_timeout() {
        let mut t = FragmentTable::new(16, 1000, 7);
        assert!(!t.insert(10, key(1), rewrite(1)));
        assert_eq!(t.lookup(500, &key(1)), Some(rewrite(1)));
        assert_eq!(t.lookup(500, &key(2)), None);
        assert_eq!(t.lookup(1010, &key(1)), None, "expired");
    }

    #[test]
    fn bounded_with_eviction_of_the_oldest() {
        let mut t = FragmentTable::new(4, 1000, 7);
        assert_eq!(t.capacity(), 4);
        for i in 0..4u16 {
            assert!(!t.insert(u64::from(i), key(i), rewrite(u32::from(i))));
        }
        assert!(t.insert(10, key(9), rewrite(9)), "a full set evicts");
        assert_eq!(t.lookup(11, &key(0)), None, "the entry expiring first went");
        assert_eq!(t.lookup(11, &key(9)), Some(rewrite(9)));
        assert_eq!(t.lookup(11, &key(3)), Some(rewrite(3)));
        assert!(!t.insert(2000, key(5), rewrite(5)), "expired entries are free");
    }

    #[test]
    fn same_key_replaces_in_place() {
        let mut t = FragmentTable::new(4, 1000, 7);
        for i in 0..4u16 {
            t.insert(0, key(i), rewrite(1));
        }
        assert!(!t.insert(1, key(2), rewrite(2)));
        assert_eq!(t.lookup(2, &key(2)), Some(rewrite(2)));
        assert_eq!(t.lookup(2, &key(0)), Some(rewrite(1)));
    }
}
