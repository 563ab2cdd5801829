//! What happens to a frame, why a frame is dropped, and the per-worker counters.

/// The fate of one frame after [`crate::Nappt::translate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Transmit on the WAN interface (translated outbound, or a gateway answer to the WAN).
    ToWan,
    /// Transmit on the LAN interface (translated inbound, hairpinned, or a gateway answer).
    ToLan,
    /// Hand to the kernel unchanged (not IPv4, or addressed to the gateway itself).
    ToKernel,
    /// Drop, for this reason (counted).
    Drop(DropReason),
}

/// Every reason a frame is dropped, declared once (VPP error-counter style). The discriminant
/// indexes [`Counters::drops`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum DropReason {
    /// A header is truncated or malformed.
    Malformed = 0,
    /// LAN source address in no class's LAN pool.
    SourceNotPhone,
    /// LAN source is a phone address with no lease (anti-spoofing, claims 001: 5).
    SourceNotLeased,
    /// Source port (or echo identifier of a reply) outside the phone's block (claims 001: 5).
    PortOutsideBlock,
    /// Public address and port that no phone of the plan owns (reserved ports, unused blocks).
    DestinationNotPhone,
    /// Public address and port of a phone that has no lease (claims 001: 7).
    DestinationNotLeased,
    /// An IP protocol without ports to translate by (only UDP, TCP and ICMP are).
    UnsupportedProtocol,
    /// An ICMP type the translator does not forward (RFC 5508 section 3.4 lists the ones it does).
    UnsupportedIcmp,
    /// An ICMP error whose quoted packet does not belong to the flow it claims (RFC 5508 REQ-3).
    IcmpQuoteMismatch,
    /// TTL would reach zero and no time exceeded may be sent (about an ICMP error, or a later
    /// fragment; RFC 1812 section 4.3.2.7).
    TtlExpired,
    /// A later fragment whose first fragment was not seen (or has timed out).
    FragmentWithoutFirst,
    /// The WAN next hop's MAC is not known yet.
    NoNextHop,
    /// The gateway's own interface MACs are not known yet.
    NoInterfaceMac,
    /// The frame buffer is too small for the time exceeded message that answers it.
    FrameTooSmall,
}

impl DropReason {
    /// Number of reasons.
    pub const COUNT: usize = 14;

    /// Every reason, in discriminant order.
    pub const ALL: [DropReason; Self::COUNT] = [
        Self::Malformed,
        Self::SourceNotPhone,
        Self::SourceNotLeased,
        Self::PortOutsideBlock,
        Self::DestinationNotPhone,
        Self::DestinationNotLeased,
        Self::UnsupportedProtocol,
        Self::UnsupportedIcmp,
        Self::IcmpQuoteMismatch,
        Self::TtlExpired,
        Self::FragmentWithoutFirst,
        Self::NoNextHop,
        Self::NoInterfaceMac,
        Self::FrameTooSmall,
    ];

    /// Stable snake_case name, used for metrics labels and logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::SourceNotPhone => "source_not_phone",
            Self::SourceNotLeased => "source_not_leased",
            Self::PortOutsideBlock => "port_outside_block",
            Self::DestinationNotPhone => "destination_not_phone",
            Self::DestinationNotLeased => "destination_not_leased",
            Self::UnsupportedProtocol => "unsupported_protocol",
            Self::UnsupportedIcmp => "unsupported_icmp",
            Self::IcmpQuoteMismatch => "icmp_quote_mismatch",
            Self::TtlExpired => "ttl_expired",
            Self::FragmentWithoutFirst => "fragment_without_first",
            Self::NoNextHop => "no_next_hop",
            Self::NoInterfaceMac => "no_interface_mac",
            Self::FrameTooSmall => "frame_too_small",
        }
    }

    /// Index into [`Counters::drops`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Per-worker counters: plain integers owned by the worker, copied out with
/// [`Counters::snapshot`] between batches (never shared while counting).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counters {
    /// Frames sent to the WAN.
    pub to_wan: u64,
    /// Frames sent to the LAN.
    pub to_lan: u64,
    /// Frames handed to the kernel.
    pub to_kernel: u64,
    /// Frames dropped, by [`DropReason::index`].
    pub drops: [u64; DropReason::COUNT],
    /// Time exceeded messages built by the gateway.
    pub time_exceeded_sent: u64,
    /// Outbound echo requests whose identifier was moved into the phone's block.
    pub echo_remapped: u64,
    /// Later fragments forwarded through the fragment table.
    pub fragments_followed: u64,
    /// Fragment-table entries overwritten while still live (table too small for the load).
    pub fragment_evictions: u64,
    /// Hairpinned frames (phone to another phone's public address).
    pub hairpinned: u64,
}

impl Counters {
    /// A copy for the control plane.
    pub fn snapshot(&self) -> Counters {
        *self
    }

    /// Drops for one reason.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.drops[reason.index()]
    }

    /// All drops.
    pub fn dropped_total(&self) -> u64 {
        self.drops.iter().sum()
    }

    /// Counts one verdict.
    #[inline(always)]
    pub(crate) fn count(&mut self, verdict: Verdict) {
        match verdict {
            Verdict::ToWan => self.to_wan += 1,
            Verdict::ToLan => self.to_lan += 1,
            Verdict::ToKernel => self.to_kernel += 1,
            Verdict::Drop(reason) => self.drops[reason.index()] += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_in_discriminant_order_with_unique_names() {
        for (i, reason) in DropReason::ALL.iter().enumerate() {
            assert_eq!(reason.index(), i);
        }
        let mut names: Vec<_> = DropReason::ALL.iter().map(|r| r.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), DropReason::COUNT);
    }

    #[test]
    fn counting() {
        let mut c = Counters::default();
        c.count(Verdict::ToWan);
        c.count(Verdict::Drop(DropReason::NoNextHop));
        c.count(Verdict::Drop(DropReason::NoNextHop));
        let s = c.snapshot();
        assert_eq!((s.to_wan, s.dropped(DropReason::NoNextHop), s.dropped_total()), (1, 2, 2));
    }
}
