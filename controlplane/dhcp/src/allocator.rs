//! The address allocator of one phone class, sans-IO (claims 001: 1, 16, 31).
//!
//! Inputs: the class's pool size, offsets that must never be leased, the quarantine, `now`.
//! Outputs: offsets, and the facts the engine turns into store writes.
//!
//! Rules:
//! - **sticky**: a MAC with a binding gets its offset back (and so its port block) as long as no
//!   other MAC holds it; the binding survives release and expiry and is dropped only when the
//!   offset is given to another MAC or the address is declined.
//! - **quarantine** (RFC 6888 REQ-8): an address given up (release, expiry, decline) goes to
//!   another MAC only after `quarantine_secs`; its previous holder may take it back at once
//!   (except after a decline, which drops the binding).
//! - order of choice for a MAC without a usable binding: never-used offsets (lowest first), then
//!   offsets whose quarantine has ended (lowest first).
//! - **exhaustion** is `None`, counted by the engine; a held address is never taken away.
//! - offered addresses are held for `offer_hold` in memory only; an unanswered offer returns its
//!   address to the reusable set without quarantine (nobody used it).

use std::collections::{BTreeSet, HashMap, HashSet};

use dialtone_config::portblock::PortBlock;
use dialtone_config::MacAddr;
use dialtone_store::UnixSecs;

/// How an offset is held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hold {
    /// Offered, reserved until `until`.
    Offered {
        /// Holder.
        mac: MacAddr,
        /// End of the reservation.
        until: UnixSecs,
    },
    /// Bound by an ACK.
    Bound {
        /// Holder.
        mac: MacAddr,
        /// First ACK of this holding (start of its history record).
        start: UnixSecs,
        /// Expiry unless renewed.
        expiry: UnixSecs,
        /// Client identifier it was bound with.
        client_id: Option<Vec<u8>>,
        /// Port block granted (and keyed in history) when this holding began.
        block: PortBlock,
    },
}

impl Hold {
    /// The holder.
    pub fn mac(&self) -> MacAddr {
        match self {
            Self::Offered { mac, .. } | Self::Bound { mac, .. } => *mac,
        }
    }
}

/// The choice of an offset for a MAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pick {
    /// The offset.
    pub offset: u32,
}

/// A map keyed by pool offset: a vector indexed by the offset, grown to the highest offset
/// stored (offsets are handed out lowest first, so it grows with the leases) and never past the
/// pool size. Offsets are small and dense, so this is an index, not a hash and a probe, and
/// neighbouring leases share cache lines.
#[derive(Debug)]
struct OffsetMap<V> {
    slots: Vec<Option<V>>,
    /// Offsets at or above this are never stored (the pool size).
    limit: u32,
}

impl<V> OffsetMap<V> {
    fn new(limit: u32) -> Self {
        Self { slots: Vec::new(), limit }
    }

    fn get(&self, offset: &u32) -> Option<&V> {
        self.slots.get(usize::try_from(*offset).ok()?)?.as_ref()
    }

    fn get_mut(&mut self, offset: &u32) -> Option<&mut V> {
        self.slots.get_mut(usize::try_from(*offset).ok()?)?.as_mut()
    }

    fn contains_key(&self, offset: &u32) -> bool {
        self.get(offset).is_some()
    }

    /// Stores `value` at `offset`, returning what was there. An offset outside the pool (every
    /// caller checks before) is not stored.
    fn insert(&mut self, offset: u32, value: V) -> Option<V> {
        let index = usize::try_from(offset).ok().filter(|_| offset < self.limit)?;
        if index >= self.slots.len() {
            self.slots.resize_with(index + 1, || None);
        }
        self.slots.get_mut(index)?.replace(value)
    }

    fn remove(&mut self, offset: &u32) -> Option<V> {
        self.slots.get_mut(usize::try_from(*offset).ok()?)?.take()
    }

    /// `(offset, value)` in offset order.
    fn iter(&self) -> impl Iterator<Item = (u32, &V)> + '_ {
        (0u32..).zip(&self.slots).filter_map(|(offset, slot)| Some((offset, slot.as_ref()?)))
    }
}

/// One class's pool state.
#[derive(Debug)]
pub struct Pool {
    size: u32,
    /// Sorted: a handful of offsets (network, gateway, broadcast), searched on every pick.
    never: Vec<u32>,
    quarantine_secs: UnixSecs,
    binding: HashMap<MacAddr, u32>,
    bound_mac: OffsetMap<MacAddr>,
    holds: OffsetMap<Hold>,
    held_by: HashMap<MacAddr, u32>,
    quarantined: OffsetMap<UnixSecs>,
    quarantine_order: BTreeSet<(UnixSecs, u32)>,
    reusable: BTreeSet<u32>,
    next_fresh: u32,
    /// Offsets whose quarantine the store may hold: quarantined here (the engine writes every
    /// quarantine) or restored from the store, and not lifted there since. A quarantine ends in
    /// memory without a write, so the store can hold one that no longer counts; a new lease of
    /// an offset not in this set has nothing to lift there.
    quarantine_on_record: HashSet<u32>,
}

impl Pool {
    /// A pool of `size` offsets, never leasing those in `never`.
    pub fn new(size: u32, never: impl IntoIterator<Item = u32>, quarantine_secs: UnixSecs) -> Self {
        Self {
            size,
            never: {
                let mut never: Vec<u32> = never.into_iter().collect();
                never.sort_unstable();
                never.dedup();
                never
            },
            quarantine_secs,
            binding: HashMap::new(),
            bound_mac: OffsetMap::new(size),
            holds: OffsetMap::new(size),
            held_by: HashMap::new(),
            quarantined: OffsetMap::new(size),
            quarantine_order: BTreeSet::new(),
            reusable: BTreeSet::new(),
            next_fresh: 0,
            quarantine_on_record: HashSet::new(),
        }
    }

    /// The quarantine period.
    pub fn quarantine_secs(&self) -> UnixSecs {
        self.quarantine_secs
    }

    /// Is `offset` a leasable offset of this pool?
    pub fn is_leasable(&self, offset: u32) -> bool {
        offset < self.size && self.never.binary_search(&offset).is_err()
    }

    /// The sticky binding of `mac`.
    pub fn binding_of(&self, mac: MacAddr) -> Option<u32> {
        self.binding.get(&mac).copied()
    }

    /// The MAC bound to `offset`.
    pub fn bound_mac(&self, offset: u32) -> Option<MacAddr> {
        self.bound_mac.get(&offset).copied()
    }

    /// The hold on `offset`.
    pub fn hold(&self, offset: u32) -> Option<&Hold> {
        self.holds.get(&offset)
    }

    /// What `mac` holds now.
    pub fn held_by(&self, mac: MacAddr) -> Option<u32> {
        self.held_by.get(&mac).copied()
    }

    /// Quarantine end of `offset`, if quarantined.
    pub fn quarantined_until(&self, offset: u32) -> Option<UnixSecs> {
        self.quarantined.get(&offset).copied()
    }

    /// May the store hold a quarantine of `offset` (written or restored, not lifted since)?
    pub fn quarantine_on_record(&self, offset: u32) -> bool {
        self.quarantine_on_record.contains(&offset)
    }

    /// How many offsets [`quarantine_on_record`](Self::quarantine_on_record).
    pub fn quarantines_on_record(&self) -> usize {
        self.quarantine_on_record.len()
    }

    /// Notes that the store's quarantine of `offset` is being lifted; true when it may hold one
    /// (otherwise lifting it would be a write with nothing to remove).
    pub fn lift_quarantine_record(&mut self, offset: u32) -> bool {
        self.quarantine_on_record.remove(&offset)
    }

    /// Number of bound leases.
    pub fn bound_count(&self) -> usize {
        self.holds.iter().filter(|(_, h)| matches!(h, Hold::Bound { .. })).count()
    }

    /// Could `mac` have `offset` now (free, or already its own)?
    pub fn available_to(&self, offset: u32, mac: MacAddr, now: UnixSecs) -> bool {
        if !self.is_leasable(offset) {
            return false;
        }
        if let Some(hold) = self.holds.get(&offset) {
            return hold.mac() == mac;
        }
        let own = self.bound_mac.get(&offset) == Some(&mac);
        own || self.quarantined.get(&offset).is_none_or(|until| *until <= now)
    }

    /// Chooses an offset for `mac`: what it holds, else its binding if free, else a fresh one,
    /// else one whose quarantine ended. `None` when the pool is exhausted.
    pub fn pick(&mut self, mac: MacAddr, now: UnixSecs) -> Option<Pick> {
        if let Some(offset) = self.held_by(mac) {
            return Some(Pick { offset });
        }
        if let Some(offset) = self.binding_of(mac) {
            if self.available_to(offset, mac, now) {
                return Some(Pick { offset });
            }
        }
        while self.next_fresh < self.size {
            let offset = self.next_fresh;
            self.next_fresh += 1;
            if self.is_leasable(offset)
                && !self.holds.contains_key(&offset)
                && !self.bound_mac.contains_key(&offset)
                && !self.quarantined.contains_key(&offset)
            {
                return Some(Pick { offset });
            }
        }
        self.release_due(now);
        while let Some(offset) = self.reusable.pop_first() {
            if self.available_to(offset, mac, now) {
                return Some(Pick { offset });
            }
        }
        None
    }

    /// Moves ended quarantines to the reusable set.
    fn release_due(&mut self, now: UnixSecs) {
        while let Some(&(until, offset)) = self.quarantine_order.first() {
            if until > now {
                break;
            }
            self.quarantine_order.pop_first();
            if self.quarantined.get(&offset) == Some(&until) {
                self.quarantined.remove(&offset);
                if !self.holds.contains_key(&offset) {
                    self.reusable.insert(offset);
                }
            }
        }
    }

    /// Reserves `offset` for `mac` until `until`. The offset must have come from [`Pool::pick`].
    pub fn offer(&mut self, offset: u32, mac: MacAddr, until: UnixSecs) {
        if let Some(previous) = self.held_by.insert(mac, offset) {
            if previous != offset {
                self.drop_offer(previous, mac);
            }
        }
        match self.holds.get_mut(&offset) {
            Some(Hold::Offered { until: u, .. }) => *u = until,
            Some(Hold::Bound { .. }) => {}
            None => {
                self.reusable.remove(&offset);
                self.holds.insert(offset, Hold::Offered { mac, until });
            }
        }
    }

    /// Ends an offer of `offset` to `mac` that was not taken up (no quarantine: never used).
    /// Returns true when there was such an offer.
    pub fn drop_offer(&mut self, offset: u32, mac: MacAddr) -> bool {
        if !matches!(self.holds.get(&offset), Some(Hold::Offered { mac: m, .. }) if *m == mac) {
            return false;
        }
        self.holds.remove(&offset);
        if self.held_by.get(&mac) == Some(&offset) {
            self.held_by.remove(&mac);
        }
        // Back among the candidates (it was fresh or reusable); a quarantined one (offered back
        // to its previous holder) returns when its quarantine ends.
        if !self.quarantined.contains_key(&offset) {
            self.reusable.insert(offset);
        }
        true
    }

    /// Binds `offset` to `mac` (ACK). Returns the MAC whose sticky binding it replaces, if any.
    pub fn bind(
        &mut self,
        offset: u32,
        mac: MacAddr,
        start: UnixSecs,
        expiry: UnixSecs,
        client_id: Option<Vec<u8>>,
        block: PortBlock,
    ) -> Option<MacAddr> {
        if let Some(previous) = self.held_by.insert(mac, offset) {
            if previous != offset {
                self.drop_offer(previous, mac);
                self.held_by.insert(mac, offset);
            }
        }
        self.reusable.remove(&offset);
        self.quarantined.remove(&offset);
        self.holds.insert(offset, Hold::Bound { mac, start, expiry, client_id, block });
        let displaced = match self.bound_mac.insert(offset, mac) {
            Some(old) if old != mac => {
                self.binding.remove(&old);
                Some(old)
            }
            _ => None,
        };
        if let Some(old_offset) = self.binding.insert(mac, offset) {
            if old_offset != offset && self.bound_mac.get(&old_offset) == Some(&mac) {
                self.bound_mac.remove(&old_offset);
            }
        }
        displaced
    }

    /// Ends the bound lease on `offset` (release or expiry) and quarantines it until the returned
    /// time. The sticky binding stays.
    pub fn unbind(&mut self, offset: u32, now: UnixSecs) -> UnixSecs {
        if let Some(hold) = self.holds.remove(&offset) {
            if self.held_by.get(&hold.mac()) == Some(&offset) {
                self.held_by.remove(&hold.mac());
            }
        }
        let until = now.saturating_add(self.quarantine_secs);
        self.quarantine(offset, until);
        until
    }

    /// Declined: the address is in use by someone else. Drops the lease and the binding and
    /// quarantines the address; returns the quarantine end and the MAC whose binding was dropped.
    pub fn decline(&mut self, offset: u32, now: UnixSecs) -> (UnixSecs, Option<MacAddr>) {
        let until = self.unbind(offset, now);
        let unbound = self.bound_mac.remove(&offset);
        if let Some(mac) = unbound {
            self.binding.remove(&mac);
        }
        (until, unbound)
    }

    fn quarantine(&mut self, offset: u32, until: UnixSecs) {
        self.quarantine_on_record.insert(offset);
        self.reusable.remove(&offset);
        if let Some(old) = self.quarantined.insert(offset, until) {
            self.quarantine_order.remove(&(old, offset));
        }
        self.quarantine_order.insert((until, offset));
    }

    /// Bound leases whose expiry is at or before `now`, as `(offset, mac, start)`.
    pub fn expired(&self, now: UnixSecs) -> Vec<(u32, MacAddr, UnixSecs)> {
        let mut out: Vec<_> = self
            .holds
            .iter()
            .filter_map(|(offset, hold)| match hold {
                Hold::Bound { mac, start, expiry, .. } if *expiry <= now => Some((offset, *mac, *start)),
                _ => None,
            })
            .collect();
        out.sort_unstable();
        out
    }

    /// Restores a binding from the store.
    pub fn restore_binding(&mut self, mac: MacAddr, offset: u32) {
        if offset < self.size {
            self.binding.insert(mac, offset);
            self.bound_mac.insert(offset, mac);
        }
    }

    /// Restores a bound lease from the store.
    pub fn restore_lease(
        &mut self,
        offset: u32,
        mac: MacAddr,
        start: UnixSecs,
        expiry: UnixSecs,
        client_id: Option<Vec<u8>>,
        block: PortBlock,
    ) {
        if offset < self.size {
            self.bind(offset, mac, start, expiry, client_id, block);
        }
    }

    /// Restores a quarantine from the store.
    pub fn restore_quarantine(&mut self, offset: u32, until: UnixSecs) {
        if offset >= self.size {
            return;
        }
        if self.holds.contains_key(&offset) {
            // Outdated (the address is leased) but still stored: the next new lease lifts it.
            self.quarantine_on_record.insert(offset);
        } else {
            self.quarantine(offset, until);
        }
    }

    /// After restoring: every bound-but-free, unquarantined offset is reusable.
    pub fn finish_restore(&mut self) {
        let free: Vec<u32> = self
            .bound_mac
            .iter()
            .map(|(offset, _)| offset)
            .filter(|o| !self.holds.contains_key(o) && !self.quarantined.contains_key(o))
            .collect();
        self.reusable.extend(free);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(n: u8) -> MacAddr {
        MacAddr([0x80, 0x5e, 0xc0, 0, 0, n])
    }

    const BLOCK: PortBlock =
        PortBlock { public_ip: std::net::Ipv4Addr::new(198, 51, 100, 1), port_lo: 1024, port_hi: 2047 };

    #[test]
    fn offset_maps_grow_with_the_offsets_stored_and_never_past_the_pool() {
        let mut map = OffsetMap::new(10);
        assert_eq!(map.insert(3, 'a'), None);
        assert_eq!(map.insert(3, 'b'), Some('a'));
        assert_eq!(map.insert(0, 'c'), None);
        assert_eq!(map.slots.len(), 4);
        assert_eq!(map.insert(10, 'x'), None, "outside the pool");
        assert_eq!(map.insert(u32::MAX, 'x'), None);
        assert_eq!(map.slots.len(), 4, "nothing stored outside the pool");
        assert_eq!((map.get(&3), map.get(&1), map.get(&10)), (Some(&'b'), None, None));
        *map.get_mut(&0).unwrap() = 'd';
        assert_eq!(map.iter().collect::<Vec<_>>(), [(0, &'d'), (3, &'b')]);
        assert_eq!(map.remove(&3), Some('b'));
        assert_eq!(map.remove(&3), None);
        assert!(!map.contains_key(&3) && map.contains_key(&0));
    }

    #[test]
    fn fresh_offsets_skip_the_never_list() {
        let mut pool = Pool::new(4, [0, 2], 600);
        let a = pool.pick(mac(1), 0).unwrap().offset;
        pool.offer(a, mac(1), 60);
        let b = pool.pick(mac(2), 0).unwrap().offset;
        pool.offer(b, mac(2), 60);
        assert_eq!((a, b), (1, 3));
        assert_eq!(pool.pick(mac(3), 0), None, "exhausted, nothing evicted");
        assert_eq!(pool.hold(1).map(Hold::mac), Some(mac(1)));
    }

    #[test]
    fn sticky_across_release_and_quarantine_for_others() {
        let mut pool = Pool::new(2, [], 600);
        let a = pool.pick(mac(1), 0).unwrap().offset;
        pool.bind(a, mac(1), 0, 3600, None, BLOCK);
        let b = pool.pick(mac(2), 0).unwrap().offset;
        pool.bind(b, mac(2), 0, 3600, None, BLOCK);
        let until = pool.unbind(a, 100);
        assert_eq!(until, 700);
        // Another MAC cannot have it during quarantine…
        assert_eq!(pool.pick(mac(3), 699), None);
        // …its owner can, at once.
        assert_eq!(pool.pick(mac(1), 101), Some(Pick { offset: a }));
        // After quarantine a newcomer takes it and the old binding is displaced.
        assert_eq!(pool.pick(mac(3), 700), Some(Pick { offset: a }));
        assert_eq!(pool.bind(a, mac(3), 700, 4300, None, BLOCK), Some(mac(1)));
        assert_eq!(pool.binding_of(mac(1)), None);
        assert_eq!(pool.pick(mac(1), 800), None);
    }

    #[test]
    fn decline_drops_the_binding_and_quarantines() {
        let mut pool = Pool::new(3, [], 120);
        let a = pool.pick(mac(1), 0).unwrap().offset;
        pool.bind(a, mac(1), 0, 3600, None, BLOCK);
        assert_eq!(pool.decline(a, 10), (130, Some(mac(1))));
        assert_eq!(pool.binding_of(mac(1)), None);
        let next = pool.pick(mac(1), 11).unwrap().offset;
        assert_ne!(next, a);
        assert_eq!(pool.quarantined_until(a), Some(130));
    }

    #[test]
    fn unanswered_offers_return_without_quarantine() {
        let mut pool = Pool::new(1, [], 600);
        pool.offer(0, mac(1), 60);
        assert_eq!(pool.pick(mac(2), 1), None);
        assert!(pool.drop_offer(0, mac(1)));
        assert_eq!(pool.pick(mac(2), 61), Some(Pick { offset: 0 }));
    }

    #[test]
    fn expiry_lists_bound_leases_only() {
        let mut pool = Pool::new(4, [], 600);
        pool.bind(0, mac(1), 0, 100, None, BLOCK);
        pool.bind(1, mac(2), 0, 200, None, BLOCK);
        pool.offer(2, mac(3), 50);
        assert_eq!(pool.expired(150), vec![(0, mac(1), 0)]);
    }

    #[test]
    fn quarantines_on_record_are_those_written_or_restored_and_not_lifted() {
        let mut pool = Pool::new(4, [], 600);
        pool.bind(0, mac(1), 0, 3600, None, BLOCK);
        assert!(!pool.quarantine_on_record(0), "a fresh offset was never quarantined");
        assert!(!pool.lift_quarantine_record(0));
        pool.unbind(0, 100);
        // The quarantine ends in memory (another MAC may have the offset), but stays on record.
        assert_eq!(pool.pick(mac(2), 800), Some(Pick { offset: 1 }));
        pool.bind(1, mac(2), 800, 4400, None, BLOCK);
        pool.bind(2, mac(3), 800, 4400, None, BLOCK);
        pool.bind(3, mac(4), 800, 4400, None, BLOCK);
        assert_eq!(pool.quarantined_until(0), Some(700));
        assert_eq!(pool.pick(mac(5), 800), Some(Pick { offset: 0 }));
        assert_eq!(pool.quarantined_until(0), None);
        assert!(pool.quarantine_on_record(0));
        assert!(pool.lift_quarantine_record(0));
        assert!(!pool.lift_quarantine_record(0), "lifted once");

        let mut restored = Pool::new(4, [], 600);
        restored.restore_lease(1, mac(2), 0, 3600, None, BLOCK);
        restored.restore_quarantine(1, 900);
        restored.restore_quarantine(2, 900);
        restored.finish_restore();
        assert!(restored.quarantine_on_record(1), "outdated, yet stored");
        assert!(restored.quarantine_on_record(2));
        assert!(!restored.quarantine_on_record(3));
    }

    #[test]
    fn restore_rebuilds_state() {
        let mut pool = Pool::new(4, [], 600);
        pool.restore_binding(mac(1), 0);
        pool.restore_binding(mac(2), 1);
        pool.restore_lease(1, mac(2), 0, 3600, None, BLOCK);
        pool.restore_quarantine(2, 900);
        pool.finish_restore();
        assert_eq!(pool.pick(mac(1), 10), Some(Pick { offset: 0 }));
        assert_eq!(pool.pick(mac(2), 10), Some(Pick { offset: 1 }));
        // Fresh offsets first: 3; then 0 (free, bound to mac 1) is reusable by others.
        assert_eq!(pool.pick(mac(3), 10), Some(Pick { offset: 3 }));
        pool.offer(3, mac(3), 70);
        assert_eq!(pool.pick(mac(4), 10), Some(Pick { offset: 0 }));
    }
}
