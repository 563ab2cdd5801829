//! The hot per-phone entries of one class ([`PhoneEntry`], 8 bytes each) in a memory mapping of
//! their own, backed by 2 MiB transparent huge pages when the table is that large.
//!
//! Why: every translated packet reads one entry at a random offset. With a million phones the
//! entries span 8 MiB, 2,048 pages of 4 KiB: far more than the data TLB holds, so nearly every
//! lookup paid a page walk on top of its cache miss (two-dimensional under a hypervisor). In
//! 2 MiB pages the same table is four TLB entries. Measured with the `nappt` bench at a million
//! phones: 20.3 -> 17.8 ns per packet outbound (perf/RESULTS.md).
//!
//! How: an anonymous mapping one huge page larger than needed, the table placed at its first
//! 2 MiB boundary, `madvise(MADV_HUGEPAGE)` on that range (the kernel's default THP mode is
//! `madvise`), then every byte written once so the pages are faulted in, huge, at start-up
//! instead of on the first leases. The advice is a hint: without THP the table still works in
//! 4 KiB pages. Tables of at least half a huge page (131,072 phones) are laid out so, padded to
//! whole huge pages (at most 1 MiB of padding per class and worker); smaller ones get an exactly
//! sized mapping and no advice (a huge page would waste most of itself). Entries are read and
//! written by value, as bytes: no `unsafe` here.

use std::fmt;

use memmap2::{Advice, MmapMut};

use crate::table::PhoneEntry;

/// Size of a transparent huge page on x86-64 and the alignment the table needs to use them.
pub const HUGE_PAGE_BYTES: usize = 2 << 20;

/// Tables of this many bytes or more are laid out for huge pages.
pub const HUGE_TABLE_MIN_BYTES: usize = HUGE_PAGE_BYTES / 2;

/// Bytes of one entry.
const ENTRY_BYTES: usize = size_of::<PhoneEntry>();

/// The entries of one class, indexed by phone offset; all start not leased (zero bytes).
pub struct EntryTable {
    map: MmapMut,
    /// Index of entry 0 among the mapping's 8-byte chunks (at a 2 MiB boundary for huge
    /// tables).
    first: usize,
    /// Number of entries (a class's phones: 32 bits, which keeps a class table at 128 bytes
    /// and the fast path's index into the classes a single shift).
    len: u32,
    /// Whether the table was laid out for huge pages (the kernel decides whether it got them).
    huge: bool,
}

impl EntryTable {
    /// A table of `len` entries, none leased.
    ///
    /// # Panics
    /// When the kernel refuses the anonymous mapping: out of memory at start-up, as a `Vec` of
    /// the same size would abort.
    pub fn new(len: u32) -> Self {
        let bytes = len as usize * ENTRY_BYTES;
        let huge = bytes >= HUGE_TABLE_MIN_BYTES;
        let mapped = if huge { bytes.next_multiple_of(HUGE_PAGE_BYTES) + HUGE_PAGE_BYTES } else { bytes.max(1) };
        let mut map = MmapMut::map_anon(mapped)
            .unwrap_or_else(|error| panic!("cannot map {mapped} bytes for {len} phone entries: {error}"));
        let start = if huge {
            let address = map.as_ptr() as usize;
            address.next_multiple_of(HUGE_PAGE_BYTES) - address
        } else {
            0
        };
        if huge {
            // A hint only: a kernel without THP, or with THP disabled, keeps 4 KiB pages.
            let _ = map.advise_range(Advice::HugePage, start, bytes.next_multiple_of(HUGE_PAGE_BYTES));
        }
        // Fault every page in now (huge where advised), not in the middle of a batch.
        map[start..start + bytes].fill(0);
        Self { map, first: start / ENTRY_BYTES, len, huge }
    }

    /// Byte position of entry 0 in the mapping.
    #[inline(always)]
    fn start(&self) -> usize {
        self.first * ENTRY_BYTES
    }

    /// Number of entries.
    #[inline(always)]
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// True when the table has no entries.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether entry 0 sits on a huge-page boundary with the range advised for huge pages.
    pub fn is_huge_page_aligned(&self) -> bool {
        self.huge && (self.map.as_ptr() as usize + self.start()).is_multiple_of(HUGE_PAGE_BYTES)
    }

    /// The entry at `offset`, or `None` past the end.
    #[inline(always)]
    pub fn get(&self, offset: usize) -> Option<PhoneEntry> {
        if offset >= self.len() {
            return None;
        }
        self.map.as_chunks::<ENTRY_BYTES>().0.get(self.first + offset).map(|bytes| PhoneEntry::from_bytes(*bytes))
    }

    /// The bytes of the entry at `offset` ([`PhoneEntry::from_bytes`]) as a reference to read
    /// later, with a prefetch of its cache line started (a hint: it never faults). One bounds
    /// check, against the mapping: `None` past it, and an offset past the end but inside the
    /// mapping's padding reads as not leased (the padding is zero and [`EntryTable::set`] never
    /// writes it). The fast path takes the reference in its first pass, where the offset is
    /// found, and reads through it in the second, when the line has arrived, without finding
    /// the entry again.
    #[inline(always)]
    pub fn prefetched(&self, offset: usize) -> Option<&[u8; ENTRY_BYTES]> {
        // The mapping as whole entries (entry 0 is the `first`th): one check.
        let entry = self.map.as_chunks::<ENTRY_BYTES>().0.get(self.first + offset)?;
        prefetch_index::prefetch_index(std::slice::from_ref(entry), 0);
        Some(entry)
    }

    /// Replaces the entry at `offset`; does nothing past the end (callers check offsets first).
    #[inline(always)]
    pub fn set(&mut self, offset: usize, entry: PhoneEntry) {
        if offset >= self.len() {
            return;
        }
        if let Some(bytes) = self.map.as_chunks_mut::<ENTRY_BYTES>().0.get_mut(self.first + offset) {
            *bytes = entry.to_bytes();
        }
    }
}

impl Clone for EntryTable {
    fn clone(&self) -> Self {
        let mut copy = Self::new(self.len);
        let bytes = self.len() * ENTRY_BYTES;
        let (to, from) = (copy.start(), self.start());
        copy.map[to..to + bytes].copy_from_slice(&self.map[from..from + bytes]);
        copy
    }
}

impl fmt::Debug for EntryTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EntryTable").field("len", &self.len).field("huge", &self.huge).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leased(byte: u8) -> PhoneEntry {
        PhoneEntry::from_bytes([byte, 2, 3, 4, 5, 6, 1, 0])
    }

    /// A table of `len` entries (test sizes fit 32 bits).
    fn table_of(len: usize) -> EntryTable {
        EntryTable::new(u32::try_from(len).expect("test sizes fit"))
    }

    #[test]
    fn entries_start_not_leased_and_keep_what_is_set() {
        for len in [2, 3, 1000, HUGE_PAGE_BYTES / ENTRY_BYTES, HUGE_PAGE_BYTES / ENTRY_BYTES * 2 + 5] {
            let mut table = table_of(len);
            assert_eq!(table.len(), len);
            assert!((0..len).step_by(997).all(|o| table.get(o) == Some(PhoneEntry::default())));
            table.set(0, leased(1));
            table.set(len - 1, leased(2));
            assert_eq!(table.get(0), Some(leased(1)));
            assert_eq!(table.get(len - 1), Some(leased(2)));
            assert!(table.get(len - 1).is_some_and(|e| e.is_leased()));
            assert_eq!(table.get(len), None, "past the end");
            table.set(len, leased(3));
            assert_eq!(table.get(len), None, "a write past the end changes nothing");
            let read = |offset| table.prefetched(offset).map(|bytes| PhoneEntry::from_bytes(*bytes));
            assert!(read(len).is_none_or(|e| !e.is_leased()), "padding reads not leased");
            assert_eq!(read(len - 1), Some(leased(2)));
            assert_eq!(read(usize::MAX / 16), None, "far past the mapping");
        }
    }

    #[test]
    fn tables_of_a_huge_page_or_more_start_on_a_huge_page_boundary() {
        assert!(!table_of(1000).is_huge_page_aligned(), "small tables are not padded");
        assert!(!table_of(HUGE_TABLE_MIN_BYTES / ENTRY_BYTES - 1).is_huge_page_aligned());
        for len in [HUGE_TABLE_MIN_BYTES / ENTRY_BYTES, HUGE_PAGE_BYTES / ENTRY_BYTES, 1_000_000] {
            assert!(table_of(len).is_huge_page_aligned(), "{len} entries");
        }
    }

    #[test]
    fn a_clone_is_an_independent_copy() {
        let mut table = table_of(HUGE_PAGE_BYTES / ENTRY_BYTES + 1);
        table.set(7, leased(7));
        let mut copy = table.clone();
        assert_eq!(copy.get(7), Some(leased(7)));
        assert!(copy.is_huge_page_aligned());
        copy.set(7, PhoneEntry::default());
        assert_eq!(table.get(7), Some(leased(7)), "the original is untouched");
    }
}
