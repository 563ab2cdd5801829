//! Per-worker class tables: one flat array per phone class, indexed by the phone's offset in the
//! class's LAN pool, plus the arithmetic of the port-block function in hot-path form.
//!
//! The arithmetic is the one of `dialtone_config::portblock` (tests prove them equal); it is
//! restated here only to take the hardware divide out of the outbound path: `offset /
//! blocks_per_address` becomes one 64x64->128 multiply by a precomputed reciprocal ([`Divisor`]),
//! and the block size being a power of two turns the rest into shifts and masks.

use dialtone_config::{MacAddr, PhoneClass};

use crate::entries::EntryTable;

/// Number of remapped echo identifiers one phone can have outstanding (RFC 5508 REQ-7 allows a
/// translator to remap identifiers; three concurrent out-of-block pings per phone is plenty for
/// a desk phone, and a fourth replaces the oldest).
pub const ECHO_SLOTS: usize = 3;

const LEASED: u8 = 1;

/// What every translation reads about one phone offset: 8 bytes, so a cache line holds eight
/// phones and a million phones take 8 MiB.
///
/// ```text
/// +-------------+-------+----------+
/// | MAC (6)     | flags | reserved |
/// +-------------+-------+----------+
/// flags: bit 0 leased
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct PhoneEntry {
    mac: [u8; 6],
    flags: u8,
    reserved: u8,
}

/// The per-phone reverse table of remapped echo identifiers: 7 bytes, kept apart from
/// [`PhoneEntry`] because only ICMP echo touches it.
///
/// ```text
/// +-----------------------------+-------+
/// | echo originals: 3 x u16     | state |
/// +-----------------------------+-------+
/// state: bit i (0-2) set when slot i holds an original; bits 3-4 the round-robin victim
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct EchoSlots {
    original: [[u8; 2]; ECHO_SLOTS],
    state: u8,
}

/// Bytes of per-phone state read by an inbound translation (the entry; outbound reads one bit
/// of the leased bitmap).
pub const HOT_BYTES_PER_PHONE: usize = size_of::<PhoneEntry>();
/// Bits of per-phone state a worker holds in all: the entry, the echo slots and one bit of the
/// leased bitmap (15 bytes and a bit).
pub const BITS_PER_PHONE: usize = 8 * (size_of::<PhoneEntry>() + size_of::<EchoSlots>()) + 1;
const _: () = assert!(HOT_BYTES_PER_PHONE == 8 && BITS_PER_PHONE == 121 && BITS_PER_PHONE <= 16 * 8);

impl PhoneEntry {
    /// True when the phone holds a lease.
    #[inline(always)]
    pub fn is_leased(&self) -> bool {
        self.flags & LEASED != 0
    }

    /// The phone's MAC (meaningful only when leased).
    #[inline(always)]
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// The entry from its 8 bytes, laid out as drawn above.
    #[inline(always)]
    pub fn from_bytes(bytes: [u8; 8]) -> Self {
        let [m0, m1, m2, m3, m4, m5, flags, reserved] = bytes;
        Self { mac: [m0, m1, m2, m3, m4, m5], flags, reserved }
    }

    /// The entry's 8 bytes, laid out as drawn above.
    #[inline(always)]
    pub fn to_bytes(self) -> [u8; 8] {
        let [m0, m1, m2, m3, m4, m5] = self.mac;
        [m0, m1, m2, m3, m4, m5, self.flags, self.reserved]
    }
}

impl EchoSlots {
    const VALID: u8 = (1 << ECHO_SLOTS) - 1;
    const NEXT_SHIFT: u32 = ECHO_SLOTS as u32;

    fn slot_valid(&self, slot: usize) -> bool {
        self.state & (1 << slot) != 0
    }

    fn original(&self, slot: usize) -> u16 {
        u16::from_ne_bytes(self.original[slot])
    }

    fn set_valid(&mut self, slot: usize, valid: bool) {
        self.state = (self.state & !(1 << slot)) | (u8::from(valid) << slot);
    }

    /// The next round-robin victim, advanced.
    fn take_victim(&mut self) -> usize {
        let victim = usize::from(self.state >> Self::NEXT_SHIFT) % ECHO_SLOTS;
        let next = ((victim + 1) % ECHO_SLOTS) as u8;
        self.state = (self.state & Self::VALID) | (next << Self::NEXT_SHIFT);
        victim
    }

    /// Outbound echo request with identifier `ident` from a phone whose block starts at
    /// `port_lo` with `ports` ports: the identifier to send, and whether it was remapped.
    ///
    /// An identifier inside the block is kept (and frees any slot that mapped onto it, so each
    /// in-block identifier means one flow). One outside is folded into the block as
    /// `port_lo + (ident mod ports)` and remembered so the reply can be restored.
    pub fn echo_outbound(&mut self, ident: u16, port_lo: u16, ports: u16) -> (u16, bool) {
        let mask = ports - 1;
        let in_block = ident.wrapping_sub(port_lo) < ports;
        let mapped = if in_block { ident } else { port_lo | (ident & mask) };
        let mut reuse = None;
        for slot in 0..ECHO_SLOTS {
            if !self.slot_valid(slot) {
                continue;
            }
            let original = self.original(slot);
            if !in_block && original == ident {
                reuse = Some(slot);
            } else if port_lo | (original & mask) == mapped {
                self.set_valid(slot, false);
            }
        }
        if in_block {
            return (ident, false);
        }
        let slot = match reuse {
            Some(slot) => slot,
            None => {
                let free = (0..ECHO_SLOTS).find(|s| !self.slot_valid(*s));
                free.unwrap_or_else(|| self.take_victim())
            }
        };
        self.original[slot] = ident.to_ne_bytes();
        self.set_valid(slot, true);
        (mapped, true)
    }

    /// Inbound echo identifier `mapped` (inside the block): the identifier the phone sent.
    pub fn echo_inbound(&self, mapped: u16, port_lo: u16, ports: u16) -> u16 {
        let mask = ports - 1;
        for slot in 0..ECHO_SLOTS {
            let original = self.original(slot);
            if self.slot_valid(slot) && port_lo | (original & mask) == mapped {
                return original;
            }
        }
        mapped
    }
}

/// `n / d` and `n % d` for any 32-bit `n` by multiplication (Lemire, Kaser, Kurz, "Faster
/// remainder by direct computation", 2019): with `c = ceil(2^64 / d)`, `n / d = (c * n) >> 64`
/// exactly for every `n < 2^32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Divisor {
    divisor: u32,
    /// `ceil(2^64 / d)`, or 0 for `d == 1` (where it would not fit).
    reciprocal: u64,
}

impl Divisor {
    /// Precomputes the reciprocal of `divisor` (which must not be 0; a plan's
    /// `blocks_per_address` is at least 1).
    pub fn new(divisor: u32) -> Self {
        let divisor = divisor.max(1);
        let reciprocal = if divisor == 1 { 0 } else { u64::MAX / u64::from(divisor) + 1 };
        Self { divisor, reciprocal }
    }

    /// `(n / d, n % d)`.
    #[inline(always)]
    pub fn div_rem(&self, n: u32) -> (u32, u32) {
        if self.reciprocal == 0 {
            return (n, 0);
        }
        let quotient = ((u128::from(self.reciprocal) * u128::from(n)) >> 64) as u32;
        (quotient, n - quotient * self.divisor)
    }
}

/// Which class's pool holds an address, found by one table lookup on the address's prefix
/// instead of a scan over the classes (pools are CIDR blocks that never overlap, so every
/// block of the smallest pool's size lies in one pool or in none).
#[derive(Debug, Clone)]
pub(crate) struct PoolMap {
    /// First address of the lowest pool.
    base: u32,
    /// log2 of the smallest pool's size.
    shift: u32,
    /// Class of each block from `base` on, [`PoolMap::NONE`] between pools.
    slots: Vec<u16>,
}

impl PoolMap {
    const NONE: u16 = u16::MAX;
    /// Largest map built (128 KiB); wider or more fragmented plans use the scan.
    const MAX_SLOTS: u64 = 1 << 16;

    /// The map of `pools` (class `i` owns `pools[i]`), or `None` when it would exceed
    /// [`PoolMap::MAX_SLOTS`] or there are more classes than a slot can name.
    pub(crate) fn new(pools: &[(u32, u8)]) -> Option<Self> {
        if pools.is_empty() || pools.len() >= usize::from(Self::NONE) {
            return None;
        }
        // Each pool as (first address, log2 of its size).
        let pools: Vec<(u32, u32)> =
            pools.iter().map(|&(network, prefix)| (network, 32 - u32::from(prefix.clamp(1, 32)))).collect();
        let shift = pools.iter().map(|&(_, bits)| bits).min()?;
        let base = pools.iter().map(|&(network, _)| network).min()?;
        let end = pools.iter().map(|&(network, bits)| u64::from(network) + (1u64 << bits)).max()?;
        let count = (end - u64::from(base)) >> shift;
        if count > Self::MAX_SLOTS {
            return None;
        }
        let mut slots = vec![Self::NONE; usize::try_from(count).ok()?];
        for (class, &(network, bits)) in pools.iter().enumerate() {
            let first = ((network - base) >> shift) as usize;
            slots[first..first + (1usize << (bits - shift))].fill(u16::try_from(class).ok()?);
        }
        Some(Self { base, shift, slots })
    }

    /// The class whose pool holds `addr`, if any.
    #[cfg(test)]
    pub(crate) fn class(&self, addr: u32) -> Option<usize> {
        Some(self.slot(addr)).filter(|&class| class != usize::from(Self::NONE))
    }

    /// The class whose pool holds `addr`, or [`PoolMap::NONE`] (65,535, never a class index:
    /// [`PoolMap::new`] refuses that many classes), so that the caller's index into its class
    /// list is the only check.
    #[inline(always)]
    pub(crate) fn slot(&self, addr: u32) -> usize {
        let slot = (addr.wrapping_sub(self.base) >> self.shift) as usize;
        usize::from(self.slots.get(slot).copied().unwrap_or(Self::NONE))
    }
}

/// A set of /16 prefixes as 65,536 bits (8 KiB): one load and a shift say whether an address
/// may need a closer look. The fast path keeps the few exact range tests behind it, so they
/// run only for addresses in a marked /16, and the worker's loop holds one constant for them
/// instead of five.
#[derive(Debug, Clone)]
pub(crate) struct PrefixFilter {
    bits: Box<[u64; 1024]>,
}

impl PrefixFilter {
    /// The /16 prefixes for which `marked(first, last)` (the prefix's first and last address)
    /// is true.
    pub(crate) fn new(marked: impl Fn(u32, u32) -> bool) -> Self {
        let mut bits = Box::new([0u64; 1024]);
        for prefix in 0u32..1 << 16 {
            let first = prefix << 16;
            if marked(first, first | 0xFFFF) {
                bits[(prefix >> 6) as usize] |= 1 << (prefix & 63);
            }
        }
        Self { bits }
    }

    /// Whether `addr`'s /16 is marked.
    #[inline(always)]
    pub(crate) fn contains(&self, addr: u32) -> bool {
        // `addr >> 22` is below 1024: no bounds check.
        (self.bits[(addr >> 22) as usize] >> ((addr >> 16) & 63)) & 1 != 0
    }
}

/// One class's table and its port-block arithmetic.
#[derive(Debug, Clone)]
pub struct ClassTable {
    /// First address of the LAN pool.
    pub(crate) lan_base: u32,
    /// Phone offsets in the pool (`plan.phones`).
    pub(crate) phones: u32,
    /// First address of the public pool.
    pub(crate) public_base: u32,
    /// Addresses in the public pool.
    pub(crate) public_addresses: u32,
    /// `R`, first port of the first block.
    pub(crate) reserved_ports: u32,
    /// `log2 B`.
    pub(crate) ports_shift: u32,
    /// `B`, as u16 (at most 32768).
    pub(crate) ports_per_phone: u16,
    /// `blocks_per_address`.
    pub(crate) blocks_per_address: u32,
    /// Reciprocal of `blocks_per_address`.
    pub(crate) per_address: Divisor,
    /// One entry per offset, in huge pages when large ([`EntryTable`]).
    pub(crate) entries: EntryTable,
    /// One echo reverse table per offset.
    pub(crate) echo: Vec<EchoSlots>,
    /// The entries' leased flags again, one bit per offset (128 KiB for a million phones):
    /// what the outbound fast path reads, small enough to stay in the core's L2 where the
    /// entries (8 MiB for a million) do not.
    pub(crate) leased: Vec<u64>,
}

// 128 bytes on 64-bit targets: the fast path finds a class's table with one shift.
#[cfg(target_pointer_width = "64")]
const _: () = assert!(size_of::<ClassTable>() == 128);

impl ClassTable {
    /// An empty (nothing leased) table for `class`.
    pub fn new(class: &PhoneClass) -> Self {
        let plan = &class.plan;
        Self {
            lan_base: u32::from(class.lan_pool.network()),
            phones: plan.phones,
            public_base: u32::from(plan.public_base),
            public_addresses: plan.public_addresses,
            reserved_ports: plan.reserved_ports,
            ports_shift: plan.ports_per_phone.trailing_zeros(),
            ports_per_phone: u16::try_from(plan.ports_per_phone).unwrap_or(u16::MAX),
            blocks_per_address: plan.blocks_per_address,
            per_address: Divisor::new(plan.blocks_per_address),
            entries: EntryTable::new(plan.phones),
            echo: vec![EchoSlots::default(); plan.phones as usize],
            leased: vec![0; (plan.phones as usize).div_ceil(64)],
        }
    }

    /// Whether the phone at `offset` holds a lease, by the bitmap: false past the phones.
    #[inline(always)]
    pub fn is_leased(&self, offset: u64) -> bool {
        let word = usize::try_from(offset >> 6).ok().and_then(|word| self.leased.get(word));
        word.is_some_and(|word| (word >> (offset & 63)) & 1 != 0)
    }

    /// The offset of a LAN address, if it is in this class's pool.
    #[inline(always)]
    pub fn offset_of(&self, addr: u32) -> Option<u32> {
        let offset = addr.wrapping_sub(self.lan_base);
        (offset < self.phones).then_some(offset)
    }

    /// The public address (as a number) and first port of the block at `offset` (< phones).
    #[inline(always)]
    pub fn block_of(&self, offset: u32) -> (u32, u16) {
        let (address_index, block_index) = self.per_address.div_rem(offset);
        let port_lo = self.reserved_ports + (block_index << self.ports_shift);
        (self.public_base + address_index, port_lo as u16)
    }

    /// The index of a public address in this class's pool, if it is in it.
    #[inline(always)]
    pub fn public_index(&self, addr: u32) -> Option<u32> {
        let index = addr.wrapping_sub(self.public_base);
        (index < self.public_addresses).then_some(index)
    }

    /// The inverse function: which offset owns `port` on the public address at `public_index`.
    /// In 64 bits: a public pool far larger than the plan needs (a /8 with small blocks) puts
    /// `public_index * blocks_per_address` past 2^32, where 32-bit arithmetic would wrap onto
    /// some leased phone's offset.
    #[inline(always)]
    pub fn offset_for(&self, public_index: u32, port: u16) -> Option<u32> {
        let offset = self.block_offset(public_index, port)?;
        if offset < u64::from(self.phones) {
            Some(offset as u32)
        } else {
            None
        }
    }

    /// [`ClassTable::offset_for`] before its last check: the offset of the block, which may be
    /// at or past `phones` (the fast path reads such an offset's entry as not leased). Below
    /// 2^48: `public_index < 2^32`, `blocks_per_address <= 2^16`.
    #[inline(always)]
    pub fn block_offset(&self, public_index: u32, port: u16) -> Option<u64> {
        // A port below the reserved ones wraps to a block index far past the last block, so
        // one comparison rejects both.
        let block_index = u32::from(port).wrapping_sub(self.reserved_ports) >> self.ports_shift;
        if block_index >= self.blocks_per_address {
            return None;
        }
        Some(u64::from(public_index) * u64::from(self.blocks_per_address) + u64::from(block_index))
    }

    /// The LAN address at `offset`.
    #[inline(always)]
    pub fn address_at(&self, offset: u32) -> u32 {
        self.lan_base + offset
    }

    /// The entry at `offset`; not leased past the end.
    #[inline(always)]
    pub fn entry(&self, offset: u32) -> PhoneEntry {
        self.entries.get(offset as usize).unwrap_or_default()
    }

    /// The echo reverse table at `offset` (< phones).
    #[inline(always)]
    pub fn echo_slots(&self, offset: u32) -> &EchoSlots {
        &self.echo[offset as usize]
    }

    /// The echo reverse table at `offset` (< phones), writable.
    #[inline(always)]
    pub fn echo_slots_mut(&mut self, offset: u32) -> &mut EchoSlots {
        &mut self.echo[offset as usize]
    }

    /// Bytes of per-phone state this table holds (the bitmap rounded up to whole words).
    pub fn bytes(&self) -> usize {
        self.entries.len() * (size_of::<PhoneEntry>() + size_of::<EchoSlots>()) + self.leased.len() * 8
    }

    /// `offset` is below `phones` (checked by [`crate::Nappt::apply`]).
    pub(crate) fn lease_up(&mut self, offset: u32, mac: MacAddr) {
        self.set_phone(offset, PhoneEntry { mac: mac.0, flags: LEASED, reserved: 0 });
    }

    /// `offset` is below `phones` (checked by [`crate::Nappt::apply`]).
    pub(crate) fn lease_down(&mut self, offset: u32) {
        self.set_phone(offset, PhoneEntry::default());
    }

    /// Writes the entry at `offset`, its leased bit from the entry (the one place both change)
    /// and a fresh echo table.
    fn set_phone(&mut self, offset: u32, entry: PhoneEntry) {
        let (word, bit) = (offset as usize / 64, 1u64 << (offset % 64));
        self.leased[word] = if entry.is_leased() { self.leased[word] | bit } else { self.leased[word] & !bit };
        self.entries.set(offset as usize, entry);
        self.echo[offset as usize] = EchoSlots::default();
    }
}

/// A change the control plane pushes to a worker (through its control ring, between batches).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Update {
    /// The phone at `offset` of class `class` (its index in `Config::classes`) now holds a lease.
    LeaseUp {
        /// Class index.
        class: u16,
        /// Offset in the class's LAN pool.
        offset: u32,
        /// The phone's MAC (destination of inbound traffic).
        mac: MacAddr,
    },
    /// The lease ended (released, expired, declined): traffic from and to it is dropped.
    LeaseDown {
        /// Class index.
        class: u16,
        /// Offset in the class's LAN pool.
        offset: u32,
    },
    /// The WAN next hop's MAC changed (from the kernel neighbour table), or became unknown.
    NextHop {
        /// Its MAC, if resolved.
        mac: Option<MacAddr>,
    },
    /// The gateway's own interface MACs (source of everything the worker transmits).
    InterfaceMacs {
        /// LAN interface MAC.
        lan: MacAddr,
        /// WAN interface MAC.
        wan: MacAddr,
    },
}

/// Why an update could not be applied (the control plane sent something the config does not
/// have: a bug on its side, reported rather than panicking).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UpdateError {
    /// No class with this index.
    #[error("no class {0}")]
    NoSuchClass(u16),
    /// The offset is outside the class's LAN pool.
    #[error("offset {offset} is outside class {class}")]
    NoSuchOffset {
        /// Class index.
        class: u16,
        /// Offset.
        offset: u32,
    },
    /// A group address cannot be a phone or a neighbour.
    #[error("group MAC {0:?} cannot be a unicast neighbour")]
    GroupMac(MacAddr),
}

#[cfg(test)]
mod tests {
    use super::*;
    use dialtone_config::portblock::PortBlockPlan;
    use proptest::prelude::*;
    use std::net::Ipv4Addr;

    #[test]
    fn pool_map_names_the_pool_of_every_address() {
        // 10.0.0.0/13, 10.8.0.0/14, 10.16.0.0/16 (a gap at 10.12.0.0/14), 10.17.0.0/18.
        let pools = [(0x0A00_0000, 13), (0x0A08_0000, 14), (0x0A10_0000, 16), (0x0A11_0000, 18)];
        let map = PoolMap::new(&pools).expect("small enough for a map");
        let owner =
            |addr: u32| pools.iter().position(|&(network, prefix)| (addr ^ network) >> (32 - u32::from(prefix)) == 0);
        for addr in (0x09FF_FF00u32..0x0A12_0100).step_by(251).chain([
            0x0A00_0000,
            0x0A07_FFFF,
            0x0A0C_0000,
            0x0A11_3FFF,
            0x0A11_4000,
            0,
            u32::MAX,
        ]) {
            assert_eq!(map.class(addr), owner(addr), "{addr:#x}");
        }
        // A map wider than the limit is not built: a /8 pool next to a /30 one.
        assert!(PoolMap::new(&[(0x0A00_0000, 8), (0x0B00_0000, 30)]).is_none());
    }

    /// A class around `plan` (only the plan matters to the tables).
    fn class_of(plan: PortBlockPlan) -> PhoneClass {
        PhoneClass {
            name: "t".into(),
            vendor_class: dialtone_config::VendorClassRule::Exact(b"t".to_vec()),
            mac_oui: vec![],
            lan_pool: "100.64.0.0/16".parse().expect("valid net"),
            public_pool: "198.51.100.0/24".parse().expect("valid net"),
            plan,
            tftp_server: Ipv4Addr::new(100, 64, 0, 1),
            boot_file: None,
            lease_time: std::time::Duration::from_secs(60),
            port_option: None,
            vendor_port_option: false,
            tftp_root: "/".into(),
            config_files: vec![],
            parameters: Default::default(),
        }
    }

    #[test]
    fn the_inverse_does_not_wrap_onto_a_leased_phone() {
        // 1,000 phones, a /8 of public addresses, 16-port blocks (4,032 per address): in 32
        // bits, address 15,978,301 times 4,032 wraps to 192, phone 192's offset.
        let plan = PortBlockPlan::new(1000, Ipv4Addr::new(10, 0, 0, 0), 1 << 24, 16).expect("plan fits");
        let table = ClassTable::new(&class_of(plan));
        assert_eq!(table.offset_for(15_978_301, 1024), None);
        assert_eq!(plan.offset_for(Ipv4Addr::from(0x0A00_0000 + 15_978_301), 1024), None);
        assert_eq!(table.offset_for(0, 1024 + 192 * 16), Some(192), "phone 192's own block");
    }

    #[test]
    fn divisor_edges() {
        for d in [1u32, 2, 3, 7, 15, 63, 64, 127, 4032, u32::MAX] {
            let div = Divisor::new(d);
            for n in [0u32, 1, d - 1, d, d.wrapping_add(1), u32::MAX - 1, u32::MAX] {
                assert_eq!(div.div_rem(n), (n / d, n % d), "{n} / {d}");
            }
        }
    }

    proptest! {
        #[test]
        fn divisor_matches_hardware_divide(d in 1u32..=4032, n in any::<u32>()) {
            prop_assert_eq!(Divisor::new(d).div_rem(n), (n / d, n % d));
        }

        #[test]
        fn arithmetic_matches_the_config_port_block_function(
            log2_ports in 4u32..=15,
            addresses in 1u32..64,
            offset_seed in any::<u32>(),
            port in any::<u16>(),
        ) {
            let ports = 1u32 << log2_ports;
            let per_address = (65536 - ports.max(1024)) / ports;
            let phones = (addresses * per_address).min(1 << 16);
            let plan = PortBlockPlan::new(phones, Ipv4Addr::new(198, 51, 100, 0), addresses, ports)
                .expect("plan fits by construction");
            let table = ClassTable::new(&class_of(plan));
            let offset = offset_seed % phones;
            let block = plan.port_block_for(offset).expect("offset in plan");
            let (public, port_lo) = table.block_of(offset);
            prop_assert_eq!(public, u32::from(block.public_ip));
            prop_assert_eq!(port_lo, block.port_lo);
            let index = table.public_index(u32::from(block.public_ip)).expect("public in pool");
            prop_assert_eq!(table.offset_for(index, port), plan.offset_for(block.public_ip, port));
        }

        /// The leased bitmap the outbound fast path reads says what the entries say, for every
        /// offset and past the end, through any sequence of leases and releases.
        #[test]
        fn the_leased_bitmap_agrees_with_the_entries(
            changes in proptest::collection::vec((0u32..200, any::<bool>()), 0..60),
        ) {
            let plan = PortBlockPlan::new(130, Ipv4Addr::new(198, 51, 100, 0), 4, 1024).expect("plan fits");
            let mut table = ClassTable::new(&class_of(plan));
            for (offset, up) in changes {
                let offset = offset % 130;
                if up {
                    table.lease_up(offset, MacAddr([2, 0, 0, 0, 0, offset as u8]));
                } else {
                    table.lease_down(offset);
                }
                for probe in 0..200u64 {
                    let entry = u32::try_from(probe).map(|o| table.entry(o).is_leased()).unwrap_or(false);
                    prop_assert_eq!(table.is_leased(probe), entry, "offset {}", probe);
                }
            }
            prop_assert!(!table.is_leased(u64::MAX));
        }

        #[test]
        fn echo_identifiers_stay_in_block_and_come_back(
            idents in proptest::collection::vec(any::<u16>(), 1..12),
            block in 1u16..63,
        ) {
            let port_lo = 1024 * block;
            let mut entry = EchoSlots::default();
            let mut live: Vec<(u16, u16)> = Vec::new();
            // Once more remapped flows were live than there are slots, one of them was evicted
            // (round robin) and is gone for good: from then on the model cannot say which.
            let mut overflowed = false;
            for ident in idents {
                let (mapped, remapped) = entry.echo_outbound(ident, port_lo, 1024);
                prop_assert!(mapped.wrapping_sub(port_lo) < 1024);
                prop_assert_eq!(remapped, ident.wrapping_sub(port_lo) >= 1024);
                live.retain(|(_, m)| *m != mapped);
                live.push((ident, mapped));
                // The newest flow on each mapped identifier comes back as its original, as long
                // as there were never more than ECHO_SLOTS remapped flows live.
                let remapped_live = live.iter().filter(|(i, m)| i != m).count();
                overflowed |= remapped_live > ECHO_SLOTS;
                if !overflowed {
                    for (original, mapped) in &live {
                        prop_assert_eq!(entry.echo_inbound(*mapped, port_lo, 1024), *original);
                    }
                }
            }
        }
    }
}
