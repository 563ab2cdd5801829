//! The Internet checksum (RFC 1071) and its incremental update (RFC 1624).
//!
//! A translator changes a handful of 16-bit words (addresses, TTL, an ICMP identifier) and must
//! not re-read the whole payload to fix the checksums that cover them. RFC 1624 eqn. 3 gives
//! `HC' = ~(~HC + ~m + m')` for one changed word `m -> m'`; several changes simply add up, which
//! [`Incremental`] does. Eqn. 3 (unlike eqn. 2 of RFC 1141) never yields `0xFFFF` from non-zero
//! data, so its result is bit-for-bit what a full recompute gives.

/// One's-complement sum of `data` as big-endian 16-bit words (an odd last byte is padded with
/// zero), not yet folded.
pub fn sum(data: &[u8]) -> u64 {
    let mut total = 0u64;
    let mut words = data.chunks_exact(2);
    for word in &mut words {
        total += u64::from(u16::from_be_bytes([word[0], word[1]]));
    }
    if let [last] = words.remainder() {
        total += u64::from(*last) << 8;
    }
    total
}

/// Folds a wide sum to 16 bits with end-around carry.
///
/// A fixed sequence of four folds, no loop: whether a carry comes out of a fold depends on the
/// packet, and a loop that ran once or twice at random cost a mispredicted branch on most
/// translated packets. 64 -> at most 33 bits -> at most 0x2FFFF -> at most 0x10001 -> at most
/// 0xFFFF; a fold of a value already at most 0xFFFF leaves it unchanged, and no fold turns a
/// non-zero sum into 0, so the result is the same as folding until it fits.
#[inline(always)]
pub fn fold(total: u64) -> u16 {
    let total = (total & 0xFFFF_FFFF) + (total >> 32);
    let total = (total & 0xFFFF) + (total >> 16);
    let total = (total & 0xFFFF) + (total >> 16);
    let total = (total & 0xFFFF) + (total >> 16);
    total as u16
}

/// The checksum field value for `data` (whose own checksum field must be zero).
pub fn internet_checksum(data: &[u8]) -> u16 {
    !fold(sum(data))
}

/// Sum of the TCP/UDP pseudo-header (RFC 768, RFC 793 section 3.1).
pub fn pseudo_header_sum(src: [u8; 4], dst: [u8; 4], protocol: u8, length: u16) -> u64 {
    sum(&src) + sum(&dst) + u64::from(protocol) + u64::from(length)
}

/// RFC 1624 incremental update: record every changed word, then [`Incremental::apply`] it to
/// each checksum that covers them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Incremental {
    delta: u64,
}

impl Incremental {
    /// No change yet.
    #[inline(always)]
    pub fn new() -> Self {
        Self { delta: 0 }
    }

    /// A 16-bit word changed from `old` to `new`.
    #[inline(always)]
    pub fn replace16(&mut self, old: u16, new: u16) {
        self.delta += u64::from(!old) + u64::from(new);
    }

    /// A 32-bit (word-aligned) field changed from `old` to `new`, e.g. an IPv4 address.
    #[inline(always)]
    pub fn replace32(&mut self, old: u32, new: u32) {
        self.replace16((old >> 16) as u16, (new >> 16) as u16);
        self.replace16(old as u16, new as u16);
    }

    /// Adds every change recorded in `other`.
    #[inline(always)]
    pub fn merge(&mut self, other: Incremental) {
        self.delta += other.delta;
    }

    /// True when nothing was recorded.
    #[inline(always)]
    pub fn is_empty(&self) -> bool {
        self.delta == 0
    }

    /// The checksum field value after the recorded changes, given its value before them
    /// (RFC 1624 eqn. 3).
    #[inline(always)]
    pub fn apply(&self, checksum: u16) -> u16 {
        !fold(u64::from(!checksum) + self.delta)
    }

    /// As [`Incremental::apply`] for a UDP checksum: `0` means "no checksum" (RFC 768) and stays
    /// `0`; a computed `0` is sent as `0xFFFF`.
    #[inline(always)]
    pub fn apply_udp(&self, checksum: u16) -> u16 {
        if checksum == 0 {
            return 0;
        }
        match self.apply(checksum) {
            0 => 0xFFFF,
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3: the words 0001 f203 f4f5 f6f7 sum to ddf2 (folded).
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum(&data)), 0xddf2);
        assert_eq!(internet_checksum(&data), !0xddf2);
    }

    #[test]
    fn odd_length_pads_with_zero() {
        assert_eq!(sum(&[0x12, 0x34, 0x56]), 0x1234 + 0x5600);
    }

    #[test]
    fn udp_zero_stays_zero() {
        let mut inc = Incremental::new();
        inc.replace32(0x6440_1002, 0xc633_6400);
        assert_eq!(inc.apply_udp(0), 0);
        assert!(!inc.is_empty());
    }

    proptest! {
        #[test]
        fn fold_equals_folding_until_it_fits(total in any::<u64>(), small in 0u64..0x4_0000) {
            for total in [total, small] {
                let mut reference = total;
                while reference > 0xFFFF {
                    reference = (reference & 0xFFFF) + (reference >> 16);
                }
                prop_assert_eq!(u64::from(fold(total)), reference);
            }
        }

        #[test]
        fn incremental_equals_full_recompute(
            mut data in proptest::collection::vec(any::<u8>(), 4..64),
            changes in proptest::collection::vec((any::<usize>(), any::<u16>()), 1..6),
        ) {
            if data.len() % 2 == 1 { data.pop(); }
            // Word 0 holds the checksum.
            data[0] = 0; data[1] = 0;
            let ck = internet_checksum(&data);
            data[..2].copy_from_slice(&ck.to_be_bytes());
            let mut inc = Incremental::new();
            let words = data.len() / 2;
            for (at, new) in changes {
                let i = 1 + at % (words - 1);
                let old = u16::from_be_bytes([data[2 * i], data[2 * i + 1]]);
                data[2 * i..2 * i + 2].copy_from_slice(&new.to_be_bytes());
                inc.replace16(old, new);
            }
            let updated = inc.apply(ck);
            data[0] = 0; data[1] = 0;
            let full = internet_checksum(&data);
            // Identical bits whenever the data is not all zero (RFC 1624 section 3).
            if data.iter().any(|b| *b != 0) {
                prop_assert_eq!(updated, full);
            } else {
                prop_assert!(updated == full || updated == !full);
            }
        }
    }
}
