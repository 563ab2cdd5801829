//! The port-block function: which public address and which ports a phone owns.
//!
//! Layer: pure arithmetic shared by the control plane (DHCP puts the block in the lease, `whois`
//! answers from lease history) and the dataplane (NAPPT translates with it, no per-flow state).
//! Inputs: a class's pools and block size, a phone's offset in its LAN pool. Outputs: the public
//! address and the port range; and the inverse, from public address and port back to the offset.
//! It must never allocate, panic on any input, or depend on anything but its arguments.
//!
//! With `B = ports_per_phone` (a power of two), `R = max(1024, B)` ports reserved at the bottom of
//! every public address (claims 001: 2, 17, 32 — the range holds no ports reserved for other
//! protocols), `per_ip = (65536 - R) / B` blocks per public address and `o` the phone's offset in
//! its LAN pool:
//!
//! ```text
//! public_ip = public_base + o / per_ip
//! port_lo   = R + (o % per_ip) * B        port_hi = port_lo + B - 1
//! inverse:    o = (public_ip - public_base) * per_ip + (port - R) / B
//! ```
//!
//! Because ports are never rewritten (NAPPT, claims 001: 5, 7), `public_ip:port` names exactly one
//! phone at any instant, and lease history alone answers "who was this address and port".

use std::net::Ipv4Addr;

/// Smallest and largest block sizes a class may use.
pub const MIN_PORTS_PER_PHONE: u32 = 16;
/// See [`MIN_PORTS_PER_PHONE`].
pub const MAX_PORTS_PER_PHONE: u32 = 32768;
/// Ports below this are never handed to a phone, whatever its block size (well-known ports).
pub const RESERVED_PORTS_FLOOR: u32 = 1024;

/// A phone's share of one public address: `port_lo..=port_hi` on `public_ip`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortBlock {
    /// The shared public address the phone's traffic leaves with.
    pub public_ip: Ipv4Addr,
    /// First port of the block (inclusive).
    pub port_lo: u16,
    /// Last port of the block (inclusive).
    pub port_hi: u16,
}

impl PortBlock {
    /// Number of ports in the block.
    pub fn len(&self) -> u32 {
        u32::from(self.port_hi) - u32::from(self.port_lo) + 1
    }

    /// A block always holds at least [`MIN_PORTS_PER_PHONE`] ports.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// True when `port` belongs to the block.
    pub fn contains(&self, port: u16) -> bool {
        (self.port_lo..=self.port_hi).contains(&port)
    }

    /// RFC 7618 OPTION_V4_PORTPARAMS payload (4 bytes) for this block, with PSID offset 0.
    ///
    /// ```text
    ///  0                   1                   2                   3
    ///  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
    /// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    /// |     offset    |    PSID-len   |              PSID             |
    /// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    /// ```
    ///
    /// With offset 0 the PSID is the top `PSID-len` bits of every port in the block
    /// (RFC 7597 section 5.1), so PSID-len is `16 - log2(B)` and the left-aligned PSID field
    /// equals `port_lo` itself.
    pub fn option159_payload(&self) -> [u8; 4] {
        let psid_len = 16 - self.len().trailing_zeros() as u8;
        let [hi, lo] = self.port_lo.to_be_bytes();
        [0, psid_len, hi, lo]
    }
}

/// Why an RFC 7618 payload does not describe a port block dialtone could have sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PortParamsError {
    /// The payload is not exactly 4 bytes long.
    #[error("OPTION_V4_PORTPARAMS must be 4 bytes, got {0}")]
    Length(usize),
    /// PSID-len outside 1..=16.
    #[error("PSID length {0} out of range 1..=16")]
    PsidLength(u8),
    /// A PSID offset other than 0 (dialtone's blocks are contiguous).
    #[error("PSID offset {0} is not 0")]
    Offset(u8),
    /// Bits set below the PSID in the left-aligned PSID field.
    #[error("PSID field {0:#06x} has bits set below its {1} significant bits")]
    PsidNotAligned(u16, u8),
}

/// Decodes an RFC 7618 payload (offset 0) into the inclusive port range it grants.
pub fn decode_option159(payload: &[u8]) -> Result<(u16, u16), PortParamsError> {
    let &[offset, psid_len, hi, lo] = payload else {
        return Err(PortParamsError::Length(payload.len()));
    };
    if offset != 0 {
        return Err(PortParamsError::Offset(offset));
    }
    if !(1..=16).contains(&psid_len) {
        return Err(PortParamsError::PsidLength(psid_len));
    }
    let field = u16::from_be_bytes([hi, lo]);
    let port_bits = 16 - u32::from(psid_len);
    let low_mask = ((1u32 << port_bits) - 1) as u16;
    if field & low_mask != 0 {
        return Err(PortParamsError::PsidNotAligned(field, psid_len));
    }
    Ok((field, field | low_mask))
}

/// The port-block plan of one phone class: everything the function needs, precomputed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortBlockPlan {
    /// Number of phone offsets in the class's LAN pool.
    pub phones: u32,
    /// First address of the class's public pool.
    pub public_base: Ipv4Addr,
    /// Number of addresses in the public pool.
    pub public_addresses: u32,
    /// `B`, a power of two in 16..=32768.
    pub ports_per_phone: u32,
    /// `R = max(1024, B)`: ports below this are never in a block.
    pub reserved_ports: u32,
    /// `(65536 - R) / B`: blocks carved from each public address.
    pub blocks_per_address: u32,
}

/// Why a class's numbers cannot form a port-block plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// `ports_per_phone` not a power of two in range.
    #[error("{0} is not a power of two in {MIN_PORTS_PER_PHONE}..={MAX_PORTS_PER_PHONE}")]
    BlockSize(u32),
    /// The LAN pool holds more phones than the public pool has blocks.
    #[error(
        "the LAN pool holds {phones} phones but the public pool has only {blocks} blocks \
         ({addresses} addresses x {per_address} blocks of {ports} ports)"
    )]
    Capacity {
        /// Phones in the LAN pool.
        phones: u64,
        /// Blocks in the public pool.
        blocks: u64,
        /// Public addresses.
        addresses: u32,
        /// Blocks per public address.
        per_address: u32,
        /// Ports per block.
        ports: u32,
    },
}

impl PortBlockPlan {
    /// Builds the plan of a class, refusing block sizes out of range and pools that do not fit.
    pub fn new(
        phones: u32,
        public_base: Ipv4Addr,
        public_addresses: u32,
        ports_per_phone: u32,
    ) -> Result<Self, PlanError> {
        if !ports_per_phone.is_power_of_two() || !(MIN_PORTS_PER_PHONE..=MAX_PORTS_PER_PHONE).contains(&ports_per_phone)
        {
            return Err(PlanError::BlockSize(ports_per_phone));
        }
        let reserved_ports = RESERVED_PORTS_FLOOR.max(ports_per_phone);
        let blocks_per_address = (65536 - reserved_ports) / ports_per_phone;
        let blocks = u64::from(public_addresses) * u64::from(blocks_per_address);
        if u64::from(phones) > blocks {
            return Err(PlanError::Capacity {
                phones: u64::from(phones),
                blocks,
                addresses: public_addresses,
                per_address: blocks_per_address,
                ports: ports_per_phone,
            });
        }
        Ok(Self { phones, public_base, public_addresses, ports_per_phone, reserved_ports, blocks_per_address })
    }

    /// Public addresses the plan actually uses (the rest of the public pool stays idle).
    pub fn public_addresses_used(&self) -> u32 {
        self.phones.div_ceil(self.blocks_per_address)
    }

    /// The block of the phone at `offset`, or `None` when the offset is outside the LAN pool.
    pub fn port_block_for(&self, offset: u32) -> Option<PortBlock> {
        if offset >= self.phones {
            return None;
        }
        let address_index = offset / self.blocks_per_address;
        let block_index = offset % self.blocks_per_address;
        let port_lo = self.reserved_ports + block_index * self.ports_per_phone;
        let port_hi = port_lo + self.ports_per_phone - 1;
        Some(PortBlock {
            public_ip: Ipv4Addr::from(u32::from(self.public_base) + address_index),
            // Both fit: port_hi < R + per_ip * B <= 65536 by construction of per_ip.
            port_lo: u16::try_from(port_lo).ok()?,
            port_hi: u16::try_from(port_hi).ok()?,
        })
    }

    /// The inverse: which phone offset owns `public_ip:port`, if any phone of this class does.
    pub fn offset_for(&self, public_ip: Ipv4Addr, port: u16) -> Option<u32> {
        let address_index = u32::from(public_ip).checked_sub(u32::from(self.public_base))?;
        if address_index >= self.public_addresses {
            return None;
        }
        let above_reserved = u32::from(port).checked_sub(self.reserved_ports)?;
        let block_index = above_reserved / self.ports_per_phone;
        if block_index >= self.blocks_per_address {
            return None;
        }
        // In 64 bits: with a public pool far larger than the plan needs (a /8 with small
        // blocks), `address_index * blocks_per_address` passes 2^32 and would wrap onto the
        // offset of some other phone.
        let offset = u64::from(address_index) * u64::from(self.blocks_per_address) + u64::from(block_index);
        u32::try_from(offset).ok().filter(|&offset| offset < self.phones)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn plan(phones: u32, addresses: u32, ports: u32) -> PortBlockPlan {
        PortBlockPlan::new(phones, Ipv4Addr::new(198, 51, 100, 0), addresses, ports).expect("test plan fits")
    }

    #[test]
    fn design_example_1024_ports() {
        let p = plan(4096, 128, 1024);
        assert_eq!(p.reserved_ports, 1024);
        assert_eq!(p.blocks_per_address, 63);
        let first = p.port_block_for(0).expect("offset 0");
        assert_eq!(first.public_ip, Ipv4Addr::new(198, 51, 100, 0));
        assert_eq!((first.port_lo, first.port_hi), (1024, 2047));
        let last_on_first = p.port_block_for(62).expect("offset 62");
        assert_eq!((last_on_first.port_lo, last_on_first.port_hi), (64512, 65535));
        let second = p.port_block_for(63).expect("offset 63");
        assert_eq!(second.public_ip, Ipv4Addr::new(198, 51, 100, 1));
        assert_eq!(second.port_lo, 1024);
        assert_eq!(p.public_addresses_used(), 66);
    }

    #[test]
    fn the_inverse_does_not_wrap_onto_another_phone() {
        // 4,032 blocks per address: address index 15,978,301 times 4,032 is 192 modulo 2^32.
        let p = PortBlockPlan::new(1000, Ipv4Addr::new(10, 0, 0, 0), 1 << 24, 16).expect("plan fits");
        assert_eq!(p.offset_for(Ipv4Addr::from(0x0A00_0000 + 15_978_301), 1024), None);
        assert_eq!(p.offset_for(Ipv4Addr::new(10, 0, 0, 0), 1024 + 192 * 16), Some(192));
    }

    #[test]
    fn large_blocks_reserve_their_own_size() {
        let p = plan(30, 10, 4096);
        assert_eq!(p.reserved_ports, 4096);
        assert_eq!(p.blocks_per_address, 15);
        assert_eq!(p.port_block_for(0).map(|b| b.port_lo), Some(4096));
        let p = plan(1, 1, 32768);
        assert_eq!(p.blocks_per_address, 1);
        let b = p.port_block_for(0).expect("offset 0");
        assert_eq!((b.port_lo, b.port_hi), (32768, 65535));
    }

    #[test]
    fn refuses_bad_sizes_and_overflowing_pools() {
        for bad in [0, 8, 15, 17, 1000, 65536] {
            assert_eq!(PortBlockPlan::new(1, Ipv4Addr::UNSPECIFIED, 1, bad), Err(PlanError::BlockSize(bad)));
        }
        assert!(matches!(
            PortBlockPlan::new(64, Ipv4Addr::UNSPECIFIED, 1, 1024),
            Err(PlanError::Capacity { phones: 64, blocks: 63, .. })
        ));
    }

    #[test]
    fn inverse_rejects_foreign_addresses_and_ports() {
        let p = plan(100, 2, 1024);
        assert_eq!(p.offset_for(Ipv4Addr::new(198, 51, 100, 2), 5000), None);
        assert_eq!(p.offset_for(Ipv4Addr::new(198, 51, 99, 255), 5000), None);
        assert_eq!(p.offset_for(Ipv4Addr::new(198, 51, 100, 0), 1023), None);
        // Offset 100 would be on the second address, but the pool only has 100 phones.
        assert_eq!(p.offset_for(Ipv4Addr::new(198, 51, 100, 1), 1024 + 37 * 1024), None);
        assert_eq!(p.offset_for(Ipv4Addr::new(198, 51, 100, 1), 1024 + 36 * 1024), Some(99));
    }

    #[test]
    fn option159_golden_bytes() {
        // 1024 ports at 1024: PSID-len 6, PSID field 0x0400.
        let b = PortBlock { public_ip: Ipv4Addr::LOCALHOST, port_lo: 1024, port_hi: 2047 };
        assert_eq!(b.option159_payload(), [0, 6, 0x04, 0x00]);
        assert_eq!(decode_option159(&[0, 6, 0x04, 0x00]), Ok((1024, 2047)));
        assert_eq!(decode_option159(&[0, 6, 0x04]), Err(PortParamsError::Length(3)));
        assert_eq!(decode_option159(&[1, 6, 0x04, 0]), Err(PortParamsError::Offset(1)));
        assert_eq!(decode_option159(&[0, 0, 0, 0]), Err(PortParamsError::PsidLength(0)));
        assert!(matches!(decode_option159(&[0, 6, 0x04, 0x01]), Err(PortParamsError::PsidNotAligned(..))));
    }

    /// A random class: block size, and a LAN pool no larger than the public pool can hold.
    fn any_plan() -> impl Strategy<Value = PortBlockPlan> {
        (4u32..=15, 1u32..=256, 0u32..=0xFFFF_0000).prop_flat_map(|(log2, addresses, base)| {
            let ports = 1u32 << log2;
            let per_ip = (65536 - RESERVED_PORTS_FLOOR.max(ports)) / ports;
            let max_phones = (addresses * per_ip).min(1 << 20);
            (1..=max_phones).prop_map(move |phones| {
                PortBlockPlan::new(phones, Ipv4Addr::from(base), addresses, ports).expect("generated plan fits")
            })
        })
    }

    proptest! {
        #[test]
        fn inverse_of_forward_is_identity(p in any_plan(), pick in any::<u32>(), port_pick in any::<u32>()) {
            let offset = pick % p.phones;
            let block = p.port_block_for(offset).expect("offset inside pool");
            prop_assert_eq!(block.len(), p.ports_per_phone);
            prop_assert_eq!(p.offset_for(block.public_ip, block.port_lo), Some(offset));
            prop_assert_eq!(p.offset_for(block.public_ip, block.port_hi), Some(offset));
            let port = block.port_lo + (port_pick % p.ports_per_phone) as u16;
            prop_assert_eq!(p.offset_for(block.public_ip, port), Some(offset));
        }

        #[test]
        fn no_block_touches_reserved_ports(p in any_plan(), pick in any::<u32>()) {
            let block = p.port_block_for(pick % p.phones).expect("offset inside pool");
            prop_assert!(u32::from(block.port_lo) >= RESERVED_PORTS_FLOOR.max(p.ports_per_phone));
            prop_assert!(block.port_lo <= block.port_hi);
        }

        #[test]
        fn no_two_phones_share_a_port(p in any_plan(), a in any::<u32>(), b in any::<u32>()) {
            let (a, b) = (a % p.phones, b % p.phones);
            let (ba, bb) = (p.port_block_for(a).expect("a"), p.port_block_for(b).expect("b"));
            let overlap = ba.public_ip == bb.public_ip
                && ba.port_lo <= bb.port_hi && bb.port_lo <= ba.port_hi;
            prop_assert_eq!(overlap, a == b);
        }

        #[test]
        fn every_port_maps_to_at_most_the_phone_whose_block_holds_it(p in any_plan(), ip_pick in any::<u32>(), port in any::<u16>()) {
            let ip = Ipv4Addr::from(u32::from(p.public_base).wrapping_add(ip_pick % (p.public_addresses + 2)));
            if let Some(offset) = p.offset_for(ip, port) {
                let block = p.port_block_for(offset).expect("inverse yields a valid offset");
                prop_assert_eq!(block.public_ip, ip);
                prop_assert!(block.contains(port));
            }
        }

        #[test]
        fn option159_round_trips(p in any_plan(), pick in any::<u32>()) {
            let block = p.port_block_for(pick % p.phones).expect("offset inside pool");
            let decoded = decode_option159(&block.option159_payload());
            prop_assert_eq!(decoded, Ok((block.port_lo, block.port_hi)));
        }

        #[test]
        fn option159_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..8)) {
            let _ = decode_option159(&bytes);
        }
    }
}
