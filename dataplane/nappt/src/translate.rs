//! The translator: one worker's tables, the batch entry point and the per-packet rules.
//!
//! Rules (claims 001: 3-7, 18-22, 33-37; DESIGN.md "Translation"):
//! - outbound (LAN): the source must be a leased phone and its source port (or echo identifier)
//!   inside its block; the source address becomes the block's public address, the port stays.
//! - inbound (WAN): `(public address, port)` names the phone by the inverse port-block function;
//!   it must be leased; the destination becomes its LAN address, the port stays.
//! - hairpin: an outbound UDP/TCP packet to a public address of a leased phone is translated both
//!   ways and goes back to the LAN (RFC 4787 REQ-9: its source is the sender's public address).
//! - ICMP: echo identifiers are ports; errors have their quoted header translated (RFC 5508).
//! - TTL: decremented once; a packet that would leave with TTL 0 is answered with a time exceeded
//!   built by the gateway (RFC 1812 section 5.3.1), quoting the header and 8 bytes (RFC 792).
//! - every checksum is updated incrementally (RFC 1624): a bad incoming checksum stays bad, so the
//!   gateway need not verify it and the receiver still rejects the packet.

use std::marker::PhantomData;

use arrayvec::ArrayVec;
use dialtone_config::Config;
use dialtone_wire::checksum::Incremental;
use dialtone_wire::ethernet::{EthernetFrame, ETHERTYPE_IPV4};
use dialtone_wire::icmpv4::{self, Icmpv4Packet};
use dialtone_wire::ipv4::{self, Ipv4Packet, PROTOCOL_ICMP, PROTOCOL_TCP, PROTOCOL_UDP};
use dialtone_wire::{tcp, udp};

use crate::fragment::{FragmentKey, FragmentRewrite, FragmentTable};
use crate::table::{ClassTable, PhoneEntry, PoolMap, PrefixFilter, Update, UpdateError};
use crate::verdict::{Counters, DropReason, Verdict};

/// Which interface a frame arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// From the phones.
    Lan,
    /// From the carrier network.
    Wan,
}

/// One received frame: a buffer (a UMEM chunk: its length is the capacity a gateway answer may
/// use), the frame's length in it, and the side it came from. Translation rewrites it in place
/// and may change its length.
#[derive(Debug)]
pub struct Frame<'a> {
    buffer: &'a mut [u8],
    len: usize,
    side: Side,
}

impl<'a> Frame<'a> {
    /// A frame of `len` bytes at the start of `buffer` (`len` is clamped to the buffer).
    pub fn new(buffer: &'a mut [u8], len: usize, side: Side) -> Self {
        let len = len.min(buffer.len());
        Self { buffer, len, side }
    }

    /// The frame's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.buffer[..self.len]
    }

    /// The frame's length.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for an empty frame.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The side it arrived on.
    pub fn side(&self) -> Side {
        self.side
    }
}

/// The fields of an IPv4 header every rule reads, taken once.
#[derive(Debug, Clone, Copy)]
struct Ip {
    /// Ethernet header length (start of the IP header in the frame).
    l2: usize,
    /// IP header length.
    header_len: usize,
    /// End of the IP packet in the frame (padding excluded).
    end: usize,
    src: u32,
    dst: u32,
    protocol: u8,
    ttl: u8,
    ttl_protocol_word: u16,
    ident: u16,
    /// Fragment offset is not zero: no transport header here.
    later_fragment: bool,
    /// First fragment of a fragmented datagram.
    first_fragment: bool,
}

impl Ip {
    fn l4(&self) -> usize {
        self.l2 + self.header_len
    }

    fn key(&self) -> FragmentKey {
        FragmentKey { src: self.src, dst: self.dst, ident: self.ident, protocol: self.protocol }
    }
}

/// What the transport header says about the phone side of a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    /// UDP or TCP: source and destination ports.
    Ports { src: u16, dst: u16 },
    /// ICMP echo request or reply with this identifier.
    Echo { request: bool, ident: u16 },
    /// ICMP error (unreachable, time exceeded, parameter problem).
    IcmpError,
}

/// A phone of some class: class index and offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Phone {
    class: usize,
    offset: u32,
}

/// One worker's NAPPT state. Built once from the configuration, changed only by [`Update`]s
/// applied between batches, used by [`Nappt::translate`].
#[derive(Debug, Clone)]
pub struct Nappt {
    classes: Vec<ClassTable>,
    lan_addr: u32,
    lan_net: u32,
    lan_mask: u32,
    wan_addr: u32,
    lan_mac: Option<[u8; 6]>,
    wan_mac: Option<[u8; 6]>,
    next_hop_mac: Option<[u8; 6]>,
    /// First public address of any class and the span to the last one (inclusive range as
    /// `base, len`): addresses outside it are in no public pool.
    public_hull: (u32, u32),
    /// Class of a LAN address by its prefix (`None`: the classes are scanned).
    lan_map: Option<PoolMap>,
    /// Class of a public address by its prefix (`None`: the classes are scanned).
    public_map: Option<PoolMap>,
    /// The /16s an outbound destination must be in to be the kernel's ([`Nappt::for_kernel_from_lan`])
    /// or a public pool's (hairpin): the others skip those tests.
    special_destinations: PrefixFilter,
    fragments: FragmentTable,
    counters: Counters,
}

/// TTL of the messages the gateway builds.
const GATEWAY_TTL: u8 = 64;
/// TOS of the messages the gateway builds: precedence 6, internetwork control (RFC 1812
/// section 4.3.2.5).
const GATEWAY_TOS: u8 = 0xC0;
/// Frames whose table entries are loaded together before they are translated (at most 64: a
/// group's frames are bits of a `u64`).
const LOOKAHEAD: usize = 64;
const _: () = assert!(LOOKAHEAD <= 64);
/// How many frames ahead the fast path's first pass prefetches a frame's headers. Measured
/// with frames in L2 (perf/RESULTS.md): 2, 4 and 7 ahead saved up to 3 % (7 the most), 11
/// ahead nothing. Frames a NIC has just written are further away than L2.
const PREFETCH_AHEAD: usize = 7;
const _: () = assert!(PREFETCH_AHEAD >= 1);
/// Bytes of the offending datagram's data quoted after its header (RFC 792).
const QUOTED_DATA: usize = 8;

impl Nappt {
    /// A worker's tables for `config` (classes in order: a class's index is its id), nothing
    /// leased, MACs unknown. `hash_seed` keys the fragment table's hash (pick it at random per
    /// process: fragment keys are chosen by the sender).
    pub fn new(config: &Config, hash_seed: u64) -> Self {
        let lan = config.lan.address;
        let timeout_ms = u64::try_from(config.dataplane.fragment_timeout.as_millis()).unwrap_or(u64::MAX);
        let classes: Vec<ClassTable> = config.classes.iter().map(ClassTable::new).collect();
        let low = classes.iter().map(|c| c.public_base).min().unwrap_or(0);
        let high = classes.iter().map(|c| u64::from(c.public_base) + u64::from(c.public_addresses)).max().unwrap_or(0);
        let span = u32::try_from(high.saturating_sub(u64::from(low))).unwrap_or(u32::MAX);
        let lan_pools: Vec<(u32, u8)> =
            config.classes.iter().map(|c| (u32::from(c.lan_pool.network()), c.lan_pool.prefix_len())).collect();
        let public_pools: Vec<(u32, u8)> =
            config.classes.iter().map(|c| (u32::from(c.public_pool.network()), c.public_pool.prefix_len())).collect();
        let (lan_net, lan_mask) = (u32::from(lan.network()), u32::from(lan.netmask()));
        let wan_addr = u32::from(config.wan.address.addr());
        let special_destinations = PrefixFilter::new(|first, last| {
            let in_hull = u64::from(last) >= u64::from(low) && u64::from(first) < u64::from(low) + u64::from(span);
            let lan = (first ^ lan_net) & lan_mask & 0xFFFF_0000 == 0;
            in_hull || lan || (first..=last).contains(&wan_addr) || last >= 0xE000_0000
        });
        Self {
            classes,
            special_destinations,
            public_hull: (low, span),
            lan_map: PoolMap::new(&lan_pools),
            public_map: PoolMap::new(&public_pools),
            lan_addr: u32::from(lan.addr()),
            lan_net,
            lan_mask,
            wan_addr,
            lan_mac: None,
            wan_mac: None,
            next_hop_mac: None,
            fragments: FragmentTable::new(config.dataplane.fragment_slots, timeout_ms, hash_seed),
            counters: Counters::default(),
        }
    }

    /// Applies one change from the control plane.
    pub fn apply(&mut self, update: Update) -> Result<(), UpdateError> {
        match update {
            Update::LeaseUp { class, offset, mac } => {
                if mac.is_group() {
                    return Err(UpdateError::GroupMac(mac));
                }
                self.class_offset(class, offset)?.lease_up(offset, mac);
            }
            Update::LeaseDown { class, offset } => self.class_offset(class, offset)?.lease_down(offset),
            Update::NextHop { mac } => {
                if let Some(mac) = mac.filter(|m| m.is_group()) {
                    return Err(UpdateError::GroupMac(mac));
                }
                self.next_hop_mac = mac.map(|m| m.0);
            }
            Update::InterfaceMacs { lan, wan } => {
                self.lan_mac = Some(lan.0);
                self.wan_mac = Some(wan.0);
            }
        }
        Ok(())
    }

    fn class_offset(&mut self, class: u16, offset: u32) -> Result<&mut ClassTable, UpdateError> {
        let table = self.classes.get_mut(usize::from(class)).ok_or(UpdateError::NoSuchClass(class))?;
        if offset >= table.phones {
            return Err(UpdateError::NoSuchOffset { class, offset });
        }
        Ok(table)
    }

    /// The counters so far.
    pub fn counters(&self) -> Counters {
        self.counters.snapshot()
    }

    /// The class tables, in configuration order.
    pub fn classes(&self) -> &[ClassTable] {
        &self.classes
    }

    /// Bytes of per-phone state across all classes.
    pub fn table_bytes(&self) -> usize {
        self.classes.iter().map(ClassTable::bytes).sum()
    }

    /// Translates a batch in place: `out[i]` receives the verdict of `frames[i]` (frames beyond
    /// `out.len()` are left alone). `now_ms` is read once per batch by the caller (any monotonic
    /// millisecond clock); it only ages fragment-table entries. No allocation, lock, log or
    /// system call happens here.
    ///
    /// Every group of up to `LOOKAHEAD` (64) frames first goes through the fast path
    /// (plain UDP and TCP between a leased phone and the carrier side, which reads the tables
    /// only); the frames it leaves go through the general path, which may change state
    /// (fragment and echo tables). Within a group the fast frames are therefore translated
    /// first: no fast-path result depends on that state (it takes no fragment and no ICMP), so
    /// the order changes nothing.
    ///
    /// The fast path is compiled for one side at a time, and runs over each run of frames from
    /// one side (the AF_XDP engine hands over one interface's frames at a time: one run per
    /// group).
    pub fn translate(&mut self, now_ms: u64, frames: &mut [Frame<'_>], out: &mut [Verdict]) {
        let count = frames.len().min(out.len());
        let mut start = 0;
        while start < count {
            let end = count.min(start + LOOKAHEAD);
            let (group, verdicts) = (&mut frames[start..end], &mut out[start..end]);
            // Each run of frames from one side goes through the fast path of that side. The
            // usual group, from one side, is found so with a branch-free look at all its frames
            // (a search for the end of the first run cost 7 instructions per frame).
            let sides = group.iter().fold(0u8, |sides, frame| sides | (1 << frame.side as u8));
            let one_side = sides.count_ones() == 1;
            let mut general = 0u64;
            let mut run = 0;
            while let Some(side) = group.get(run).map(|frame| frame.side) {
                let run_end = if one_side {
                    group.len()
                } else {
                    group[run..].iter().position(|frame| frame.side != side).map_or(group.len(), |n| run + n)
                };
                let (frames, out) = (&mut group[run..run_end], &mut verdicts[run..run_end]);
                general |= match side {
                    Side::Lan => self.fast_outbound(frames, out),
                    Side::Wan => self.fast_inbound(frames, out),
                } << run;
                run = run_end;
            }
            while general != 0 {
                let i = general.trailing_zeros() as usize;
                general &= general - 1;
                let frame = &mut group[i];
                let verdict = match frame.side {
                    Side::Lan => self.translate_lan_frame(now_ms, frame),
                    Side::Wan => self.translate_wan_frame(now_ms, frame),
                }
                .unwrap_or_else(Verdict::Drop);
                verdicts[i] = verdict;
                self.counters.count(verdict);
            }
            start = end;
        }
    }

    /// The outbound fast path over one group (at most [`LOOKAHEAD`] frames): the LAN frames
    /// from leased phones, in their blocks, to ordinary destinations. Returns the frames it
    /// did not take as a bit mask (bit `i` for `frames[i]`).
    ///
    /// In two passes, as [`Nappt::fast_inbound`], though there is no miss to overlap (an
    /// outbound frame needs only its phone's leased bit, from a bitmap small enough to stay in
    /// L2, and its class table): a single pass measured 30 instructions per packet more, from
    /// registers spilled with the lookup and the rewrite in one loop.
    ///
    /// Nothing here writes the worker's state but a counter, and no frame is written unless
    /// the fast path takes it all the way. `frames` all come from the LAN.
    #[inline(never)]
    fn fast_outbound(&mut self, frames: &mut [Frame<'_>], out: &mut [Verdict]) -> u64 {
        let (frames, out, all) = one_group(frames, out);
        let (Some(dst), Some(src)) = (self.next_hop_mac, self.wan_mac) else {
            return all;
        };
        let macs = MacWords::of(mac_pair(dst, src));
        // The lookup is chosen once for the group, not tested per frame.
        let taken = match &self.lan_map {
            Some(map) => {
                let lan = ByMap::<LanPool>::new(map);
                fast_passes(frames, |ip| self.locate_outbound(lan, ip), |frame| apply_outbound(frame, macs))
            }
            None => {
                let lan = ByScan::<LanPool>::NEW;
                fast_passes(frames, |ip| self.locate_outbound(lan, ip), |frame| apply_outbound(frame, macs))
            }
        };
        self.counters.to_wan += u64::from(taken.count_ones());
        fill_verdicts(out, taken, all, Verdict::ToWan)
    }

    /// The inbound fast path over one group (at most [`LOOKAHEAD`] frames), in two passes;
    /// returns the frames it did not take as a bit mask (bit `i` for `frames[i]`).
    ///
    /// 1. locate ([`fast_passes`]): each WAN frame's phone from its headers alone, and a
    ///    software prefetch of its entry (the MAC): with 8 MiB of entries for a million phones
    ///    most of them miss the cache, and prefetched, the misses of the whole group are in
    ///    flight together while the other frames' headers are parsed, instead of one after the
    ///    other. (Loading each entry here instead measured 35 % slower: a load that misses
    ///    holds up the frames behind it; a tight loop of plain loads between the passes, an
    ///    earlier design, 10 % slower than the prefetch: nothing else ran while it waited.)
    /// 2. apply ([`apply_group`]): the leased check, then the rewrite.
    ///
    /// Nothing here writes the worker's state but a counter, and no frame is written unless
    /// the fast path takes it all the way. `frames` all come from the WAN.
    #[inline(never)]
    fn fast_inbound(&mut self, frames: &mut [Frame<'_>], out: &mut [Verdict]) -> u64 {
        let (frames, out, all) = one_group(frames, out);
        let Some(lan_mac) = self.lan_mac.map(LanMac::of) else {
            return all;
        };
        // The lookup is chosen once for the group, not tested per frame.
        let taken = match &self.public_map {
            Some(map) => {
                let public = ByMap::<PublicPool>::new(map);
                fast_passes(frames, |ip| self.locate_inbound(public, ip), |frame| apply_inbound(frame, lan_mac))
            }
            None => {
                let public = ByScan::<PublicPool>::NEW;
                fast_passes(frames, |ip| self.locate_inbound(public, ip), |frame| apply_inbound(frame, lan_mac))
            }
        };
        self.counters.to_lan += u64::from(taken.count_ones());
        fill_verdicts(out, taken, all, Verdict::ToLan)
    }

    /// The common outbound case, located: an unfragmented UDP or TCP packet without IP
    /// options from a leased phone, TTL above 1, to a destination that is neither the gateway
    /// nor anywhere in the span of the public pools. Reads headers only, and the leased bit
    /// from the bitmap (in L2): outbound needs nothing else of the phone. Returns the phone's
    /// offset and class table.
    #[inline(always)]
    fn locate_outbound<L: PoolLookup>(&self, lan: L, ip: &[u8; FAST_L3_LEN]) -> Option<(&ClassTable, u32)> {
        let src = u32::from_be_bytes([ip[12], ip[13], ip[14], ip[15]]);
        let dst = u32::from_be_bytes([ip[16], ip[17], ip[18], ip[19]]);
        if self.special_destinations.contains(dst) && self.special_destination_exact(dst) {
            return None;
        }
        let (offset, table) = lan.find_fast(&self.classes, src)?;
        table.is_leased(u64::from(offset)).then_some((table, offset))
    }

    /// The common inbound case, located: an unfragmented UDP or TCP packet without IP options
    /// to a public address and port some phone of the plan owns, TTL above 1. Returns the
    /// phone's entry, prefetched, and its LAN address.
    #[inline(always)]
    fn locate_inbound<P: PoolLookup>(&self, public: P, ip: &[u8; FAST_L3_LEN]) -> Option<(&[u8; 8], u32)> {
        let dst = u32::from_be_bytes([ip[16], ip[17], ip[18], ip[19]]);
        // The scan needs the fast reject of addresses outside every public pool; a map rejects
        // them itself.
        if !P::MAPPED && !self.in_public_hull(dst) {
            return None;
        }
        let (public_index, table) = public.find_fast(&self.classes, dst)?;
        // An offset past the class's phones reads as not leased, as in `PoolLookup::find_fast`.
        let offset = table.block_offset(public_index, u16::from_be_bytes([ip[22], ip[23]]))?;
        let entry = table.entries.prefetched(usize::try_from(offset).ok()?)?;
        // Pass 2 needs the phone's LAN address, not its offset: computed here, where the class
        // table is at hand (it matters only when the entry is leased, so below `phones`).
        Some((entry, table.lan_base.wrapping_add(offset as u32)))
    }

    /// `(lan_phone, public_class)` of `addr` as `(class, offset or index)`, by the prefix maps
    /// and by the scan, for tests.
    #[cfg(test)]
    pub(crate) fn lookups_both_ways(&self, addr: u32) -> [Lookups; 2] {
        let mut scan = self.clone();
        scan.lan_map = None;
        scan.public_map = None;
        assert!(self.lan_map.is_some() && self.public_map.is_some(), "the test plan is small enough for maps");
        [self, &scan]
            .map(|worker| (worker.lan_phone(addr).map(|phone| (phone.class, phone.offset)), worker.public_class(addr)))
    }

    /// For an outbound destination: (whether its /16 is marked in the filter, whether the exact
    /// tests make it the kernel's or a public pool's), for tests.
    #[cfg(test)]
    pub(crate) fn special_destination(&self, dst: u32) -> (bool, bool) {
        (self.special_destinations.contains(dst), self.special_destination_exact(dst))
    }

    /// The fast path on one frame (a group of one), for tests: its verdict when it takes it.
    #[cfg(test)]
    pub(crate) fn fast_one(&mut self, frame: &mut Frame<'_>) -> Option<Verdict> {
        let mut out = [Verdict::ToKernel];
        let general = match frame.side {
            Side::Lan => self.fast_outbound(std::slice::from_mut(frame), &mut out),
            Side::Wan => self.fast_inbound(std::slice::from_mut(frame), &mut out),
        };
        (general == 0).then_some(out[0])
    }

    /// Ethernet and IPv4 parsing shared by both sides: `None` when the frame is not IPv4.
    #[inline(always)]
    fn parse(frame: &Frame<'_>) -> Result<Option<Ip>, DropReason> {
        let bytes = frame.bytes();
        let eth = EthernetFrame::new_checked(bytes).map_err(|_| DropReason::Malformed)?;
        if eth.ethertype() != ETHERTYPE_IPV4 {
            return Ok(None);
        }
        let l2 = eth.header_len();
        let ip = Ipv4Packet::new_checked(&bytes[l2..]).map_err(|_| DropReason::Malformed)?;
        let frag_offset = ip.frag_offset();
        Ok(Some(Ip {
            l2,
            header_len: ip.header_len(),
            end: l2 + usize::from(ip.total_len()),
            src: ip.src_u32(),
            dst: ip.dst_u32(),
            protocol: ip.protocol(),
            ttl: ip.ttl(),
            ttl_protocol_word: ip.ttl_protocol_word(),
            ident: ip.ident(),
            later_fragment: frag_offset != 0,
            first_fragment: frag_offset == 0 && ip.more_frags(),
        }))
    }

    /// Reads the transport header of a packet that is not a later fragment.
    #[inline(always)]
    fn transport(frame: &Frame<'_>, ip: &Ip) -> Result<Transport, DropReason> {
        let l4 = &frame.buffer[ip.l4()..ip.end];
        match ip.protocol {
            PROTOCOL_UDP => {
                let udp = udp::UdpPacket::new_checked(l4).map_err(|_| DropReason::Malformed)?;
                Ok(Transport::Ports { src: udp.src_port(), dst: udp.dst_port() })
            }
            PROTOCOL_TCP => {
                let tcp = tcp::TcpPacket::new_checked(l4).map_err(|_| DropReason::Malformed)?;
                Ok(Transport::Ports { src: tcp.src_port(), dst: tcp.dst_port() })
            }
            PROTOCOL_ICMP => {
                let icmp = Icmpv4Packet::new_checked(l4).map_err(|_| DropReason::Malformed)?;
                if icmp.is_echo() {
                    Ok(Transport::Echo {
                        request: icmp.msg_type() == icmpv4::TYPE_ECHO_REQUEST,
                        ident: icmp.echo_ident(),
                    })
                } else if icmp.is_error() {
                    Ok(Transport::IcmpError)
                } else {
                    Err(DropReason::UnsupportedIcmp)
                }
            }
            _ => Err(DropReason::UnsupportedProtocol),
        }
    }

    /// Addressed to the gateway, or to more than one host: the kernel's business.
    #[inline(always)]
    fn for_kernel_from_lan(&self, dst: u32) -> bool {
        (dst == self.wan_addr) | (dst >= 0xE000_0000) | (dst & self.lan_mask == self.lan_net)
    }

    /// Whether `addr` is in the span from the first to the last public pool: one range check
    /// that most outbound destinations fail, before any pool lookup.
    #[inline(always)]
    fn in_public_hull(&self, addr: u32) -> bool {
        addr.wrapping_sub(self.public_hull.0) < self.public_hull.1
    }

    /// An outbound destination the fast path leaves alone: the kernel's, or in the public pools'
    /// span (a hairpin, maybe).
    #[inline(always)]
    fn special_destination_exact(&self, dst: u32) -> bool {
        self.for_kernel_from_lan(dst) || self.in_public_hull(dst)
    }

    /// The class and offset of a LAN address, by the prefix map or the scan ([`PoolLookup`]).
    #[inline(always)]
    fn lan_phone(&self, addr: u32) -> Option<Phone> {
        let found = match &self.lan_map {
            Some(map) => ByMap::<LanPool>::new(map).find(&self.classes, addr),
            None => ByScan::<LanPool>::NEW.find(&self.classes, addr),
        };
        found.map(|(class, offset, _)| Phone { class, offset })
    }

    /// The class of a public address and its index in the class's public addresses (as
    /// [`Nappt::lan_phone`]).
    #[inline(always)]
    fn public_class(&self, addr: u32) -> Option<(usize, u32)> {
        if !self.in_public_hull(addr) {
            return None;
        }
        let found = match &self.public_map {
            Some(map) => ByMap::<PublicPool>::new(map).find(&self.classes, addr),
            None => ByScan::<PublicPool>::NEW.find(&self.classes, addr),
        };
        found.map(|(class, index, _)| (class, index))
    }

    /// The leased phone owning `port` on public address `addr` (whose class and index are known).
    #[inline(always)]
    fn public_phone(&self, class: usize, public_index: u32, port: u16) -> Result<Phone, DropReason> {
        let table = &self.classes[class];
        let offset = table.offset_for(public_index, port).ok_or(DropReason::DestinationNotPhone)?;
        if !table.entry(offset).is_leased() {
            return Err(DropReason::DestinationNotLeased);
        }
        Ok(Phone { class, offset })
    }

    #[inline(always)]
    pub(crate) fn translate_lan_frame(&mut self, now_ms: u64, frame: &mut Frame<'_>) -> Result<Verdict, DropReason> {
        let Some(ip) = Self::parse(frame)? else { return Ok(Verdict::ToKernel) };
        if self.for_kernel_from_lan(ip.dst) {
            return Ok(Verdict::ToKernel);
        }
        if ip.later_fragment {
            return self.follow_fragment(now_ms, frame, &ip);
        }
        let phone = self.lan_phone(ip.src).ok_or(DropReason::SourceNotPhone)?;
        let table = &self.classes[phone.class];
        if !table.entry(phone.offset).is_leased() {
            return Err(DropReason::SourceNotLeased);
        }
        let (public, port_lo) = table.block_of(phone.offset);
        let ports = table.ports_per_phone;
        let in_block = |port: u16| port.wrapping_sub(port_lo) < ports;
        let transport = Self::transport(frame, &ip)?;
        match transport {
            Transport::Ports { src, .. } if !in_block(src) => return Err(DropReason::PortOutsideBlock),
            Transport::Echo { request: false, ident } if !in_block(ident) => return Err(DropReason::PortOutsideBlock),
            _ => {}
        }
        // Hairpin: the destination is some phone's public address.
        let hairpin = match (self.public_class(ip.dst), transport) {
            (None, _) => None,
            (Some((class, index)), Transport::Ports { dst, .. }) => Some(self.public_phone(class, index, dst)?),
            (Some(_), _) => return Err(DropReason::UnsupportedIcmp),
        };
        if ip.ttl <= 1 {
            return self.time_exceeded(frame, &ip, transport);
        }
        let (src_mac, dst_mac, new_dst, verdict) = match hairpin {
            Some(to) => {
                let table = &self.classes[to.class];
                let mac = table.entry(to.offset).mac();
                (self.lan_mac, Some(mac), table.address_at(to.offset), Verdict::ToLan)
            }
            None => (self.wan_mac, self.next_hop_mac, ip.dst, Verdict::ToWan),
        };
        let src_mac = src_mac.ok_or(DropReason::NoInterfaceMac)?;
        let dst_mac = dst_mac.ok_or(DropReason::NoNextHop)?;

        let mut addresses = Incremental::new();
        addresses.replace32(ip.src, public);
        addresses.replace32(ip.dst, new_dst);
        match transport {
            Transport::Ports { .. } => Self::fix_transport_checksum(frame, &ip, &addresses),
            Transport::Echo { request, ident } => {
                if request {
                    let (mapped, remapped) =
                        self.classes[phone.class].echo_slots_mut(phone.offset).echo_outbound(ident, port_lo, ports);
                    if remapped {
                        self.counters.echo_remapped += 1;
                        Self::set_echo_ident(frame, ip.l4(), ident, mapped);
                    }
                }
            }
            Transport::IcmpError => self.outbound_icmp_error(frame, &ip, phone, public, port_lo)?,
        }
        Self::rewrite_ip(frame, &ip, public, new_dst, addresses);
        Self::set_macs(frame, src_mac, dst_mac);
        if hairpin.is_some() {
            self.counters.hairpinned += 1;
        }
        if ip.first_fragment {
            self.remember_fragment(now_ms, &ip, public, new_dst, dst_mac, verdict);
        }
        Ok(verdict)
    }

    #[inline(always)]
    pub(crate) fn translate_wan_frame(&mut self, now_ms: u64, frame: &mut Frame<'_>) -> Result<Verdict, DropReason> {
        let Some(ip) = Self::parse(frame)? else { return Ok(Verdict::ToKernel) };
        let Some((class, public_index)) = self.public_class(ip.dst) else { return Ok(Verdict::ToKernel) };
        if ip.later_fragment {
            return self.follow_fragment(now_ms, frame, &ip);
        }
        let transport = Self::transport(frame, &ip)?;
        let phone_port = match transport {
            Transport::Ports { dst, .. } => dst,
            Transport::Echo { ident, .. } => ident,
            Transport::IcmpError => {
                return self.inbound_icmp_error(now_ms, frame, &ip, class, public_index);
            }
        };
        let phone = self.public_phone(class, public_index, phone_port)?;
        if ip.ttl <= 1 {
            return self.time_exceeded(frame, &ip, transport);
        }
        let src_mac = self.lan_mac.ok_or(DropReason::NoInterfaceMac)?;
        let table = &self.classes[phone.class];
        let entry = table.entry(phone.offset);
        let private = table.address_at(phone.offset);
        let dst_mac = entry.mac();
        let mut addresses = Incremental::new();
        addresses.replace32(ip.dst, private);
        match transport {
            Transport::Ports { .. } => Self::fix_transport_checksum(frame, &ip, &addresses),
            Transport::Echo { request: false, ident } => {
                let (_, port_lo) = table.block_of(phone.offset);
                let original = table.echo_slots(phone.offset).echo_inbound(ident, port_lo, table.ports_per_phone);
                if original != ident {
                    Self::set_echo_ident(frame, ip.l4(), ident, original);
                }
            }
            Transport::Echo { request: true, .. } | Transport::IcmpError => {}
        }
        Self::rewrite_ip(frame, &ip, ip.src, private, addresses);
        Self::set_macs(frame, src_mac, dst_mac);
        if ip.first_fragment {
            self.remember_fragment(now_ms, &ip, ip.src, private, dst_mac, Verdict::ToLan);
        }
        Ok(Verdict::ToLan)
    }

    /// An ICMP error sent by a phone about a packet it received (RFC 5508 section 3.3 REQ-3):
    /// the quoted packet went to the phone, so its destination (and the outer source) become
    /// the public address; its destination port must be in the phone's block.
    fn outbound_icmp_error(
        &mut self,
        frame: &mut Frame<'_>,
        ip: &Ip,
        phone: Phone,
        public: u32,
        port_lo: u16,
    ) -> Result<(), DropReason> {
        let quote_at = ip.l4() + icmpv4::HEADER_LEN;
        let quote = Quote::parse(&frame.buffer[quote_at..ip.end])?;
        let private = self.classes[phone.class].address_at(phone.offset);
        if quote.dst != private {
            return Err(DropReason::IcmpQuoteMismatch);
        }
        let ports = self.classes[phone.class].ports_per_phone;
        if quote.dst_port.wrapping_sub(port_lo) >= ports {
            return Err(DropReason::PortOutsideBlock);
        }
        if ip.ttl <= 1 {
            return Err(DropReason::TtlExpired);
        }
        let changes = quote.rewrite(&mut frame.buffer[quote_at..ip.end], QuotedAddress::Destination, public, None);
        Self::fix_icmp_checksum(frame, ip.l4(), &changes);
        Ok(())
    }

    /// An ICMP error from the WAN about a packet a phone sent (RFC 5508 section 3.3 REQ-3): the
    /// quoted source and source port name the phone; the quoted source and the outer destination
    /// become its LAN address, and a remapped echo identifier is restored.
    fn inbound_icmp_error(
        &mut self,
        now_ms: u64,
        frame: &mut Frame<'_>,
        ip: &Ip,
        class: usize,
        public_index: u32,
    ) -> Result<Verdict, DropReason> {
        let quote_at = ip.l4() + icmpv4::HEADER_LEN;
        let quote = Quote::parse(&frame.buffer[quote_at..ip.end])?;
        if quote.src != ip.dst {
            return Err(DropReason::IcmpQuoteMismatch);
        }
        let phone = self.public_phone(class, public_index, quote.src_port)?;
        if ip.ttl <= 1 {
            return Err(DropReason::TtlExpired);
        }
        let src_mac = self.lan_mac.ok_or(DropReason::NoInterfaceMac)?;
        let table = &self.classes[phone.class];
        let entry = table.entry(phone.offset);
        let private = table.address_at(phone.offset);
        let dst_mac = entry.mac();
        let restored_ident = match quote.echo {
            Some(ident) => {
                let (_, port_lo) = table.block_of(phone.offset);
                Some((ident, table.echo_slots(phone.offset).echo_inbound(ident, port_lo, table.ports_per_phone)))
            }
            None => None,
        };
        let changes =
            quote.rewrite(&mut frame.buffer[quote_at..ip.end], QuotedAddress::Source, private, restored_ident);
        Self::fix_icmp_checksum(frame, ip.l4(), &changes);
        let mut addresses = Incremental::new();
        addresses.replace32(ip.dst, private);
        Self::rewrite_ip(frame, ip, ip.src, private, addresses);
        Self::set_macs(frame, src_mac, dst_mac);
        if ip.first_fragment {
            self.remember_fragment(now_ms, ip, ip.src, private, dst_mac, Verdict::ToLan);
        }
        Ok(Verdict::ToLan)
    }

    /// A later fragment: replays its first fragment's rewrite.
    fn follow_fragment(&mut self, now_ms: u64, frame: &mut Frame<'_>, ip: &Ip) -> Result<Verdict, DropReason> {
        let rewrite = self.fragments.lookup(now_ms, &ip.key()).ok_or(DropReason::FragmentWithoutFirst)?;
        if ip.ttl <= 1 {
            // RFC 1812 section 4.3.2.7: no ICMP error about a non-initial fragment.
            return Err(DropReason::TtlExpired);
        }
        let src_mac = if rewrite.to_lan { self.lan_mac } else { self.wan_mac };
        let src_mac = src_mac.ok_or(DropReason::NoInterfaceMac)?;
        let mut addresses = Incremental::new();
        addresses.replace32(ip.src, rewrite.src);
        addresses.replace32(ip.dst, rewrite.dst);
        Self::rewrite_ip(frame, ip, rewrite.src, rewrite.dst, addresses);
        Self::set_macs(frame, src_mac, rewrite.dst_mac);
        self.counters.fragments_followed += 1;
        Ok(if rewrite.to_lan { Verdict::ToLan } else { Verdict::ToWan })
    }

    fn remember_fragment(&mut self, now_ms: u64, ip: &Ip, src: u32, dst: u32, dst_mac: [u8; 6], verdict: Verdict) {
        let rewrite = FragmentRewrite { src, dst, dst_mac, to_lan: verdict == Verdict::ToLan };
        if self.fragments.insert(now_ms, ip.key(), rewrite) {
            self.counters.fragment_evictions += 1;
        }
    }

    /// Replaces the frame with a time exceeded (type 11, code 0) from the gateway to the sender,
    /// quoting the offending header and 8 bytes of its data (RFC 792, RFC 1812 section 5.3.1).
    /// Never about an ICMP error or a later fragment (RFC 1812 section 4.3.2.7).
    fn time_exceeded(&mut self, frame: &mut Frame<'_>, ip: &Ip, transport: Transport) -> Result<Verdict, DropReason> {
        if transport == Transport::IcmpError || ip.later_fragment {
            return Err(DropReason::TtlExpired);
        }
        let (our_mac, our_addr, verdict) = match frame.side {
            Side::Lan => (self.lan_mac, self.lan_addr, Verdict::ToLan),
            Side::Wan => (self.wan_mac, self.wan_addr, Verdict::ToWan),
        };
        let our_mac = our_mac.ok_or(DropReason::NoInterfaceMac)?;
        let quote_len = ip.header_len + (ip.end - ip.l4()).min(QUOTED_DATA);
        let icmp_len = icmpv4::HEADER_LEN + quote_len;
        let total_len = ipv4::MIN_HEADER_LEN + icmp_len;
        let new_end = ip.l2 + total_len;
        if new_end > frame.buffer.len() {
            return Err(DropReason::FrameTooSmall);
        }
        let icmp_at = ip.l2 + ipv4::MIN_HEADER_LEN;
        frame.buffer.copy_within(ip.l2..ip.l2 + quote_len, icmp_at + icmpv4::HEADER_LEN);
        let buffer = &mut frame.buffer[..new_end];
        {
            let mut eth = EthernetFrame::new_unchecked(&mut *buffer);
            let sender_mac = eth.src_addr();
            eth.set_dst_addr(sender_mac);
            eth.set_src_addr(our_mac);
        }
        {
            let mut icmp = Icmpv4Packet::new_unchecked(&mut buffer[icmp_at..]);
            icmp.set_msg_type(icmpv4::TYPE_TIME_EXCEEDED);
            icmp.set_code(0);
            icmp.set_rest_of_header([0; 4]);
            icmp.fill_checksum();
        }
        let mut out = Ipv4Packet::new_unchecked(&mut buffer[ip.l2..]);
        out.set_version_and_header_len(ipv4::MIN_HEADER_LEN);
        out.set_tos(GATEWAY_TOS);
        out.set_total_len(total_len as u16);
        out.set_ident(0);
        out.set_flags_and_frag_word(0);
        out.set_ttl(GATEWAY_TTL);
        out.set_protocol(PROTOCOL_ICMP);
        out.set_src_u32(our_addr);
        out.set_dst_u32(ip.src);
        out.fill_checksum();
        frame.len = new_end;
        self.counters.time_exceeded_sent += 1;
        Ok(verdict)
    }

    /// Writes new addresses, decrements the TTL and updates the header checksum by `addresses`
    /// plus the TTL change.
    #[inline(always)]
    fn rewrite_ip(frame: &mut Frame<'_>, ip: &Ip, src: u32, dst: u32, addresses: Incremental) {
        let mut header = addresses;
        header.replace16(ip.ttl_protocol_word, ip.ttl_protocol_word.wrapping_sub(0x0100));
        let mut packet = Ipv4Packet::new_unchecked(&mut frame.buffer[ip.l2..ip.end]);
        let checksum = header.apply(packet.checksum());
        packet.set_src_u32(src);
        packet.set_dst_u32(dst);
        packet.set_ttl(ip.ttl.wrapping_sub(1));
        packet.set_checksum(checksum);
    }

    /// UDP/TCP checksum after the pseudo-header's addresses changed (UDP 0 stays 0).
    #[inline(always)]
    fn fix_transport_checksum(frame: &mut Frame<'_>, ip: &Ip, addresses: &Incremental) {
        let l4 = &mut frame.buffer[ip.l4()..ip.end];
        if ip.protocol == PROTOCOL_UDP {
            let mut udp = udp::UdpPacket::new_unchecked(l4);
            let checksum = addresses.apply_udp(udp.checksum());
            udp.set_checksum(checksum);
        } else {
            let mut tcp = tcp::TcpPacket::new_unchecked(l4);
            let checksum = addresses.apply(tcp.checksum());
            tcp.set_checksum(checksum);
        }
    }

    fn set_echo_ident(frame: &mut Frame<'_>, icmp_at: usize, old: u16, new: u16) {
        let mut icmp = Icmpv4Packet::new_unchecked(&mut frame.buffer[icmp_at..]);
        let mut change = Incremental::new();
        change.replace16(old, new);
        let checksum = change.apply(icmp.checksum());
        icmp.set_echo_ident(new);
        icmp.set_checksum(checksum);
    }

    fn fix_icmp_checksum(frame: &mut Frame<'_>, icmp_at: usize, changes: &Incremental) {
        let mut icmp = Icmpv4Packet::new_unchecked(&mut frame.buffer[icmp_at..]);
        let checksum = changes.apply(icmp.checksum());
        icmp.set_checksum(checksum);
    }

    #[inline(always)]
    fn set_macs(frame: &mut Frame<'_>, src: [u8; 6], dst: [u8; 6]) {
        let mut eth = EthernetFrame::new_unchecked(&mut frame.buffer[..]);
        eth.set_dst_addr(dst);
        eth.set_src_addr(src);
    }
}

/// IPv4 header without options plus the first 20 bytes of the transport header: what the fast
/// paths read and write (a TCP checksum is at bytes 16..18 of its header).
const FAST_L3_LEN: usize = 40;

/// Bytes from the frame's start the fast paths read or write: a tagged Ethernet header and
/// [`FAST_L3_LEN`].
const FAST_HEAD_LEN: usize = 18 + FAST_L3_LEN;

/// Classes the lookups consider: a class is named in 16 bits (by [`Update`]s and in the prefix
/// maps), so a phone of a class past these could never be leased.
const CLASS_LIMIT: usize = 1 << 16;

/// How an address is matched to the class whose pool holds it: by a prefix map, or (for plans
/// too wide for one) by checking every class without an early exit, the first match (pools
/// never overlap) selected without a branch. Traffic comes from phones of all classes in no
/// order, and a scan that stopped at the match cost a mispredicted branch on most packets.
/// The fast path picks the way once per group.
trait PoolLookup: Copy {
    /// Whether this is a prefix map (which answers `None` for any address outside its pools
    /// with one check).
    const MAPPED: bool = false;

    /// The class of `addr`, the address's index in that class's pool (the phone offset for a
    /// LAN pool, the public address index for a public pool) and the class table.
    fn find(self, classes: &[ClassTable], addr: u32) -> Option<(usize, u32, &ClassTable)>;

    /// [`PoolLookup::find`] for the fast path, which may also return an index past the class's
    /// phones or public addresses (but inside its pool): the offset the fast path derives from
    /// it is then at or past the class's phones (a plan's public addresses hold all its
    /// phones' blocks), where it reads the entry's padding or finds no entry
    /// (`EntryTable::prefetched`), sees no lease and leaves the frame to the general path. So
    /// the bound need not be checked twice.
    #[inline(always)]
    fn find_fast(self, classes: &[ClassTable], addr: u32) -> Option<(u32, &ClassTable)> {
        self.find(classes, addr).map(|(_, index, table)| (index, table))
    }
}

/// Which pool of a class a lookup matches: the LAN pool (as far as the class has phones) or
/// the public pool.
trait Pool: Copy {
    /// The pool's first address.
    fn base(table: &ClassTable) -> u32;
    /// The index of `addr` in the pool, if it is in it.
    fn index(table: &ClassTable, addr: u32) -> Option<u32>;
}

/// The LAN pool: an address's index is the phone's offset.
#[derive(Clone, Copy)]
struct LanPool;

/// The public pool: an address's index is its public address index.
#[derive(Clone, Copy)]
struct PublicPool;

impl Pool for LanPool {
    #[inline(always)]
    fn base(table: &ClassTable) -> u32 {
        table.lan_base
    }

    #[inline(always)]
    fn index(table: &ClassTable, addr: u32) -> Option<u32> {
        table.offset_of(addr)
    }
}

impl Pool for PublicPool {
    #[inline(always)]
    fn base(table: &ClassTable) -> u32 {
        table.public_base
    }

    #[inline(always)]
    fn index(table: &ClassTable, addr: u32) -> Option<u32> {
        table.public_index(addr)
    }
}

/// Pools of kind `P` by their prefix map.
#[derive(Clone, Copy)]
struct ByMap<'m, P>(&'m PoolMap, PhantomData<P>);

/// Pools of kind `P` by the scan.
#[derive(Clone, Copy)]
struct ByScan<P>(PhantomData<P>);

impl<'m, P> ByMap<'m, P> {
    fn new(map: &'m PoolMap) -> Self {
        ByMap(map, PhantomData)
    }
}

impl<P> ByScan<P> {
    const NEW: Self = ByScan(PhantomData);
}

impl<P: Pool> PoolLookup for ByMap<'_, P> {
    const MAPPED: bool = true;

    #[inline(always)]
    fn find(self, classes: &[ClassTable], addr: u32) -> Option<(usize, u32, &ClassTable)> {
        let class = self.0.slot(addr);
        let table = classes.get(class)?;
        P::index(table, addr).map(|index| (class, index, table))
    }

    #[inline(always)]
    fn find_fast(self, classes: &[ClassTable], addr: u32) -> Option<(u32, &ClassTable)> {
        // The map names the pool, so the index is inside it.
        let table = classes.get(self.0.slot(addr))?;
        Some((addr.wrapping_sub(P::base(table)), table))
    }
}

impl<P: Pool> PoolLookup for ByScan<P> {
    #[inline(always)]
    fn find(self, classes: &[ClassTable], addr: u32) -> Option<(usize, u32, &ClassTable)> {
        let mut found = (usize::MAX, 0u32);
        for (class, table) in classes.iter().take(CLASS_LIMIT).enumerate().rev() {
            found = match P::index(table, addr) {
                Some(index) => (class, index),
                None => found,
            };
        }
        Some((found.0, found.1, classes.get(found.0)?))
    }
}

/// `(lan_phone, public_class)` of one address as `(class, offset or index)`, for tests.
#[cfg(test)]
pub(crate) type Lookups = (Option<(usize, u32)>, Option<(usize, u32)>);

/// The two passes of the fast paths ([`Nappt::fast_outbound`], [`Nappt::fast_inbound`], each
/// given frames from its side only); returns the frames `apply` took as a bit mask (bit `i`
/// for `frames[i]`).
///
/// 1. The frames that `locate` finds a phone for, in frame order, as [`FastFrame`]s: their
///    headers as writable arrays and what `locate` found, so pass 2 neither finds nor checks
///    any of it again. They go into an `ArrayVec`: only the located frames cost a store (the
///    array of 64 optional slots it replaced was cleared for every group). It lives here, in
///    the caller's frame: returned from a function, it was copied (2 KiB per group). While
///    a frame is parsed, the first line of the frame [`PREFETCH_AHEAD`] on is prefetched.
/// 2. [`apply_group`].
#[inline(always)]
fn fast_passes<T>(
    frames: &mut [Frame<'_>],
    locate: impl Fn(&[u8; FAST_L3_LEN]) -> Option<(T, u32)>,
    apply: impl Fn(&mut FastFrame<'_, T>) -> bool,
) -> u64 {
    let mut located = ArrayVec::<_, LOOKAHEAD>::new();
    // `frames` holds at most LOOKAHEAD frames (the callers take no more).
    let mut rest = frames;
    let mut next = 0;
    while let Some((frame, tail)) = rest.split_first_mut() {
        rest = tail;
        let i = next;
        next += 1;
        // The headers of the frame PREFETCH_AHEAD on, on their way while this one is read.
        if let Some(ahead) = rest.get(PREFETCH_AHEAD - 1) {
            prefetch_index::prefetch_index(&*ahead.buffer, 0);
        }
        let Some((eth, ip)) = fast_headers(frame) else {
            continue;
        };
        if let Some((phone, at)) = locate(ip) {
            // Never full: a group has at most LOOKAHEAD frames.
            let _ = located.try_push(FastFrame { eth, ip, phone, at, index: i as u32 });
        }
    }
    apply_group(&mut located, apply)
}

/// Pass 2 of the fast paths over the located frames: returns the frames `apply` took as a
/// bit mask (bit `i` for the group's frame `i`).
#[inline(never)]
fn apply_group<T>(located: &mut [FastFrame<'_, T>], apply: impl Fn(&mut FastFrame<'_, T>) -> bool) -> u64 {
    let mut taken = 0u64;
    for frame in located {
        if apply(frame) {
            taken |= 1 << frame.index;
        }
    }
    taken
}

/// A frame pass 1 located: the MAC pair and the IP header with the first 20 bytes of the
/// transport header, both writable, and its phone: for an outbound frame its class table
/// (with `at` its offset: the bitmap said leased), for an inbound one its entry, prefetched
/// ([`EntryTable::prefetched`](crate::entries::EntryTable::prefetched)), with `at` its LAN
/// address (meaningful when the entry is leased, whose offset is then below the class's phones:
/// [`EntryTable::set`](crate::entries::EntryTable::set) writes no other entry).
struct FastFrame<'f, T> {
    eth: &'f mut [u8; 12],
    ip: &'f mut [u8; FAST_L3_LEN],
    phone: T,
    at: u32,
    /// The frame's index in its group (below [`LOOKAHEAD`]).
    index: u32,
}

/// Finishes a located outbound frame: port in block, then rewritten. Returns false before
/// writing a byte when the port is outside the phone's block, and the general path (which
/// gives the same result, a property test checks) takes the frame.
#[inline(always)]
fn apply_outbound(frame: &mut FastFrame<'_, &ClassTable>, macs: MacWords) -> bool {
    let table = frame.phone;
    let (public, port_lo) = table.block_of(frame.at);
    let ip = &mut *frame.ip;
    let sport = u16::from_be_bytes([ip[20], ip[21]]);
    if sport.wrapping_sub(port_lo) >= table.ports_per_phone {
        return false;
    }
    let src = u32::from_ne_bytes([ip[12], ip[13], ip[14], ip[15]]);
    let public = public.to_be_bytes();
    fast_rewrite(ip, src, u32::from_ne_bytes(public));
    ip[12..16].copy_from_slice(&public);
    macs.write(frame.eth);
    true
}

/// Finishes a located inbound frame: leased, then rewritten (as [`apply_outbound`]).
#[inline(always)]
fn apply_inbound(frame: &mut FastFrame<'_, &[u8; 8]>, lan_mac: LanMac) -> bool {
    let entry = frame.phone;
    if !PhoneEntry::from_bytes(*entry).is_leased() {
        return false;
    }
    let private = frame.at.to_be_bytes();
    let ip = &mut *frame.ip;
    let dst = u32::from_ne_bytes([ip[16], ip[17], ip[18], ip[19]]);
    fast_rewrite(ip, dst, u32::from_ne_bytes(private));
    ip[16..20].copy_from_slice(&private);
    lan_mac.write(entry, frame.eth);
    true
}

/// The first group of `frames` (at most [`LOOKAHEAD`]) with its verdict slots, and the mask of
/// all its frames (bit `i` for frame `i`).
#[inline(always)]
fn one_group<'a, 'f>(
    frames: &'a mut [Frame<'f>],
    out: &'a mut [Verdict],
) -> (&'a mut [Frame<'f>], &'a mut [Verdict], u64) {
    let n = frames.len().min(out.len()).min(LOOKAHEAD);
    let all = if n >= 64 { u64::MAX } else { (1u64 << n) - 1 };
    (&mut frames[..n], &mut out[..n], all)
}

/// Writes `verdict` for the taken frames of a group (`all` is every frame of it): all of them,
/// usually, a fill of 64 bytes. Returns the frames not taken.
#[inline(always)]
fn fill_verdicts(out: &mut [Verdict], taken: u64, all: u64, verdict: Verdict) -> u64 {
    if taken == all {
        out.fill(verdict);
        return 0;
    }
    let mut rest = taken;
    while rest != 0 {
        let i = rest.trailing_zeros() as usize;
        rest &= rest - 1;
        if let Some(slot) = out.get_mut(i) {
            *slot = verdict;
        }
    }
    all & !taken
}

/// A [`mac_pair`] as one 8-byte and one 4-byte word: two stores per frame.
#[derive(Debug, Clone, Copy)]
struct MacWords(u64, u32);

impl MacWords {
    #[inline(always)]
    fn of(pair: [u8; 12]) -> Self {
        let [a, b, c, d, e, f, g, h, i, j, k, l] = pair;
        MacWords(u64::from_ne_bytes([a, b, c, d, e, f, g, h]), u32::from_ne_bytes([i, j, k, l]))
    }

    /// Writes the pair over the first 12 bytes of an Ethernet header.
    #[inline(always)]
    fn write(self, eth: &mut [u8; 12]) {
        let (head, tail) = eth.split_at_mut(8);
        head.copy_from_slice(&self.0.to_ne_bytes());
        tail.copy_from_slice(&self.1.to_ne_bytes());
    }
}

/// The gateway's LAN MAC as the inbound MAC pair needs it: its first two bytes and its last
/// four, as words.
#[derive(Debug, Clone, Copy)]
struct LanMac(u16, u32);

impl LanMac {
    #[inline(always)]
    fn of(mac: [u8; 6]) -> Self {
        let [a, b, c, d, e, f] = mac;
        LanMac(u16::from_ne_bytes([a, b]), u32::from_ne_bytes([c, d, e, f]))
    }

    /// Writes the phone's MAC (destination) and the gateway's (source) over the first 12 bytes
    /// of an Ethernet header: the entry's 8 bytes as they are (they start with the phone's
    /// MAC), then the gateway's MAC over their last two and the four after. Three stores and
    /// no arithmetic (masking the entry instead made the compiler split its load in four).
    #[inline(always)]
    fn write(self, entry: &[u8; 8], eth: &mut [u8; 12]) {
        let (head, tail) = eth.split_at_mut(8);
        head.copy_from_slice(entry);
        head[6..].copy_from_slice(&self.0.to_ne_bytes());
        tail.copy_from_slice(&self.1.to_ne_bytes());
    }
}

/// A destination MAC then a source MAC, as they sit at the start of an Ethernet header.
#[inline(always)]
fn mac_pair(dst: [u8; 6], src: [u8; 6]) -> [u8; 12] {
    let mut pair = [0u8; 12];
    pair[..6].copy_from_slice(&dst);
    pair[6..].copy_from_slice(&src);
    pair
}

/// For a frame the fast paths can take (UDP or TCP, [`fast_l3`]): its MAC pair and the first
/// [`FAST_L3_LEN`] bytes from its IP header, writable.
#[inline(always)]
fn fast_headers<'f>(frame: &'f mut Frame<'_>) -> Option<(&'f mut [u8; 12], &'f mut [u8; FAST_L3_LEN])> {
    let len = frame.len;
    // One bounds check for all the fast path reads (Ethernet, a VLAN tag, 40 bytes of IP and
    // transport header); a frame in a smaller buffer takes the general path.
    let head: &mut [u8; FAST_HEAD_LEN] = frame.buffer.first_chunk_mut()?;
    // Ethertypes compared as 16-bit words in memory order (one load and compare for the
    // untagged case, no byte swap).
    const IPV4: u16 = u16::from_ne_bytes([0x08, 0x00]);
    const VLAN: u16 = u16::from_ne_bytes([0x81, 0x00]);
    let ethertype = u16::from_ne_bytes([head[12], head[13]]);
    let tagged = if ethertype == IPV4 {
        false
    } else if ethertype == VLAN && u16::from_ne_bytes([head[16], head[17]]) == IPV4 {
        true
    } else {
        return None;
    };
    let (eth, rest) = head.split_first_chunk_mut::<12>()?;
    let (l2, ip) = if tagged { (18, rest.get_mut(6..)?) } else { (14, rest.get_mut(2..2 + FAST_L3_LEN)?) };
    let ip: &mut [u8; FAST_L3_LEN] = ip.try_into().ok()?;
    fast_l3(ip, len, l2)?;
    Some((eth, ip))
}

/// For a fast-path packet (in a frame of `len` bytes, `l2` of them before the IP header):
/// whether it is TCP (else UDP), or `None` when it needs the general path. The caller only
/// needs the `None`; returning a plain `bool` instead compiled the checks into 9 more
/// instructions per packet, so the form stays.
///
/// The general path's conditions: version 4 with a 20-byte header, neither more fragments nor
/// a fragment offset (the flag bit 0x8000 and DF are not looked at),
/// TTL above 1, UDP or TCP, a total length that holds the transport header and fits the frame,
/// and for TCP a data offset from 20 bytes to what the packet holds.
#[inline(always)]
fn fast_l3(ip: &[u8; FAST_L3_LEN], len: usize, l2: usize) -> Option<bool> {
    // The flags and fragment offset (bytes 6-7, big-endian) with DF and the reserved bit
    // masked out: zero for an unfragmented datagram, tested as one word in memory order.
    const FRAGMENT_MASK: u16 = u16::from_ne_bytes([0x3F, 0xFF]);
    let unfragmented = u16::from_ne_bytes([ip[6], ip[7]]) & FRAGMENT_MASK == 0;
    let tcp = ip[9] == PROTOCOL_TCP;
    if !tcp && ip[9] != PROTOCOL_UDP {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    // UDP needs 28 bytes, TCP 40 (the length of the data offset is checked below).
    let needed = ipv4::MIN_HEADER_LEN + udp::HEADER_LEN + usize::from(tcp) * (tcp::MIN_HEADER_LEN - udp::HEADER_LEN);
    let tcp_header_len = usize::from(ip[32] >> 4) * 4;
    let tcp_offset_ok =
        !tcp || (tcp_header_len >= tcp::MIN_HEADER_LEN && tcp_header_len + ipv4::MIN_HEADER_LEN <= total);
    (ip[0] == 0x45 && unfragmented && ip[8] > 1 && total >= needed && total + l2 <= len && tcp_offset_ok).then_some(tcp)
}

/// `a + b` in 32-bit one's-complement arithmetic (the carry out added back in: `add`, `adc`).
/// Zero only when both are zero.
#[inline(always)]
fn add_end_around(a: u32, b: u32) -> u32 {
    let (sum, carry) = a.overflowing_add(b);
    sum + u32::from(carry)
}

/// Folds a 32-bit one's-complement sum to 16 bits: the high half of `x + rotl(x, 16)` is
/// `hi + lo` with its end-around carry already in (the low half's carry is it). Zero only for 0.
#[inline(always)]
fn fold32(x: u32) -> u16 {
    (x.wrapping_add(x.rotate_left(16)) >> 16) as u16
}

/// `a + b` in 16-bit one's-complement arithmetic (`add`, `adc`). Zero only when both are zero.
#[inline(always)]
fn add16_end_around(a: u16, b: u16) -> u16 {
    let (sum, carry) = a.overflowing_add(b);
    sum + u16::from(carry)
}

/// Applies an address change `old -> new` to the fast-path packet: transport checksum (UDP 0
/// stays 0), TTL and header checksum. The caller writes the address itself. `old` and `new` are
/// the address's 4 bytes read in memory order (`u32::from_ne_bytes`).
///
/// RFC 1624 eqn. 3 with the address taken as one 32-bit term (2^16 = 1 in one's-complement
/// arithmetic, so `~old32 + new32` is the sum of the two 16-bit changes, and a sum kept in 32
/// bits with end-around carry folds to the same 16 bits) and the TTL decrement as the constant
/// it always adds. The address change is folded to 16 bits once and added to each checksum
/// in 16 bits (one's-complement addition is associative, and a sum is zero only when every
/// term is, so the bits are those of one long sum). All of it in memory byte order, without a
/// byte swap: a one's-complement sum of byte-swapped words is the byte-swapped sum (RFC 1071,
/// 2.(B)), and the checksums are read and written in that same order. The TTL/protocol word
/// `w` read so loses `d` = `u16::from_ne_bytes([1, 0])` (the TTL is above 1, so no borrow), and
/// `~w + (w - d) = 0xFFFF - d` for every such `w`. The result is bit for bit what the general
/// path's [`Incremental`] gives (a property test compares them on every field).
#[inline(always)]
fn fast_rewrite(ip: &mut [u8; FAST_L3_LEN], old: u32, new: u32) {
    const TTL_DECREMENT: u16 = 0xFFFF - u16::from_ne_bytes([1, 0]);
    let address = fold32(add_end_around(!old, new));
    // UDP or TCP ([`fast_l3`]).
    if ip[9] == PROTOCOL_TCP {
        let old = u16::from_ne_bytes([ip[36], ip[37]]);
        ip[36..38].copy_from_slice(&(!add16_end_around(address, !old)).to_ne_bytes());
    } else {
        let old = u16::from_ne_bytes([ip[26], ip[27]]);
        let new = match !add16_end_around(address, !old) {
            _ if old == 0 => 0,
            0 => 0xFFFF,
            other => other,
        };
        ip[26..28].copy_from_slice(&new.to_ne_bytes());
    }
    let old = u16::from_ne_bytes([ip[10], ip[11]]);
    let header = add16_end_around(add16_end_around(address, TTL_DECREMENT), !old);
    ip[10..12].copy_from_slice(&(!header).to_ne_bytes());
    ip[8] -= 1;
}

/// Which quoted address a translation changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum QuotedAddress {
    Source,
    Destination,
}

/// The packet quoted by an ICMP error, parsed once: at least its IP header and 8 bytes, not a
/// later fragment, UDP, TCP or an ICMP echo.
#[derive(Debug, Clone, Copy)]
struct Quote {
    header_len: usize,
    src: u32,
    dst: u32,
    protocol: u8,
    src_port: u16,
    dst_port: u16,
    /// Echo identifier, for a quoted echo.
    echo: Option<u16>,
}

impl Quote {
    fn parse(bytes: &[u8]) -> Result<Self, DropReason> {
        let ip = Ipv4Packet::new_checked_header(bytes).map_err(|_| DropReason::Malformed)?;
        let header_len = ip.header_len();
        let data = &bytes[header_len..];
        if data.len() < QUOTED_DATA {
            return Err(DropReason::Malformed);
        }
        if ip.frag_offset() != 0 {
            return Err(DropReason::IcmpQuoteMismatch);
        }
        let word = |at: usize| u16::from_be_bytes([data[at], data[at + 1]]);
        let (src_port, dst_port, echo) = match ip.protocol() {
            PROTOCOL_UDP | PROTOCOL_TCP => (word(0), word(2), None),
            PROTOCOL_ICMP if matches!(data[0], icmpv4::TYPE_ECHO_REQUEST | icmpv4::TYPE_ECHO_REPLY) => {
                (word(4), word(4), Some(word(4)))
            }
            PROTOCOL_ICMP => return Err(DropReason::UnsupportedIcmp),
            _ => return Err(DropReason::UnsupportedProtocol),
        };
        Ok(Self { header_len, src: ip.src_u32(), dst: ip.dst_u32(), protocol: ip.protocol(), src_port, dst_port, echo })
    }

    /// Rewrites one quoted address to `to` (and a quoted echo identifier `(old, new)`), fixing
    /// the quoted IP checksum and the quoted transport checksum when the quote holds it. Returns
    /// every 16-bit change made, for the outer ICMP checksum (which covers the quote).
    fn rewrite(&self, bytes: &mut [u8], which: QuotedAddress, to: u32, ident: Option<(u16, u16)>) -> Incremental {
        let mut outer = Incremental::new();
        let mut addresses = Incremental::new();
        let from = match which {
            QuotedAddress::Source => self.src,
            QuotedAddress::Destination => self.dst,
        };
        addresses.replace32(from, to);
        outer.merge(addresses);
        {
            let mut ip = Ipv4Packet::new_unchecked(&mut *bytes);
            let old = ip.checksum();
            let new = addresses.apply(old);
            match which {
                QuotedAddress::Source => ip.set_src_u32(to),
                QuotedAddress::Destination => ip.set_dst_u32(to),
            }
            ip.set_checksum(new);
            outer.replace16(old, new);
        }
        let data = &mut bytes[self.header_len..];
        match self.protocol {
            PROTOCOL_UDP => {
                let mut udp = udp::UdpPacket::new_unchecked(data);
                let old = udp.checksum();
                let new = addresses.apply_udp(old);
                udp.set_checksum(new);
                outer.replace16(old, new);
            }
            PROTOCOL_TCP if data.len() >= tcp::CHECKSUM_END => {
                let mut tcp = tcp::TcpPacket::new_unchecked(data);
                let old = tcp.checksum();
                let new = addresses.apply(old);
                tcp.set_checksum(new);
                outer.replace16(old, new);
            }
            PROTOCOL_ICMP => {
                if let Some((old_ident, new_ident)) = ident.filter(|(old, new)| old != new) {
                    let mut icmp = Icmpv4Packet::new_unchecked(data);
                    let mut change = Incremental::new();
                    change.replace16(old_ident, new_ident);
                    let old = icmp.checksum();
                    let new = change.apply(old);
                    icmp.set_echo_ident(new_ident);
                    icmp.set_checksum(new);
                    outer.merge(change);
                    outer.replace16(old, new);
                }
            }
            _ => {}
        }
        outer
    }
}

#[cfg(test)]
mod checksum_arithmetic {
    use proptest::prelude::*;

    use super::{add16_end_around, add_end_around, fold32};

    /// The plain reference: the integer sum folded 16 bits at a time until it fits.
    fn reference_fold(mut total: u64) -> u16 {
        while total > 0xFFFF {
            total = (total & 0xFFFF) + (total >> 16);
        }
        total as u16
    }

    proptest! {
        /// The fast path's sums (a 32-bit end-around-carry sum folded to 16 bits, then 16-bit
        /// end-around-carry additions) give exactly the 16 bits of the integer sum of the same
        /// terms, folded (zero included: only all-zero terms give 0).
        #[test]
        fn end_around_sums_fold_like_the_integer_sum(
            old in prop_oneof![Just(0u32), Just(u32::MAX), any::<u32>()],
            new in prop_oneof![Just(0u32), Just(u32::MAX), any::<u32>()],
            word in prop_oneof![Just(0u16), Just(u16::MAX), any::<u16>()],
            ttl_term in prop_oneof![Just(0u16), Just(0xFEFFu16)],
        ) {
            let fast = add16_end_around(add16_end_around(fold32(add_end_around(old, new)), ttl_term), word);
            let slow = reference_fold(u64::from(old) + u64::from(new) + u64::from(ttl_term) + u64::from(word));
            prop_assert_eq!(fast, slow);
        }
    }
}
