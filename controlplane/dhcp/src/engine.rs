//! The DHCPv4 server engine, sans-IO: `handle(now, datagram) -> Output`.
//!
//! A fixed pipeline (claims 001: 8, 9, 23, 24, 38, 39 — MAC first, then vendor class):
//!
//! ```text
//! strict decode -> op/message type -> MAC check (format, group/zero, deny, allow, some class's OUI)
//!   -> vendor-class check (option 60: first class whose rule matches AND whose OUI list passes)
//!   -> message type: DISCOVER | REQUEST (SELECTING, INIT-REBOOT, RENEWING, REBINDING)
//!                    | RELEASE | DECLINE | INFORM
//!   -> allocation (sticky per MAC per class, quarantine, exhaustion refused)
//!   -> options (mask, router, DNS, domain, lease/T1/T2, siaddr/66/150, file/67, port block
//!      as RFC 7618 option on the class's code, option 43 with explicit ports, 82 echoed)
//!   -> reply addressing (relay via giaddr, broadcast flag, unicast to ciaddr)
//! ```
//!
//! A phone failing the MAC or vendor-class check gets no reply and changes no state: the engine
//! counts the reason, logs a line and returns a [`Effect::Refused`].
//!
//! Durability contract: when [`Output::writes`] is not empty, the shell must commit those writes
//! durably (e.g. through `dialtone_store::GroupCommitter`) and only then send [`Output::replies`]
//! (claims 001: 10, 25, 40 — the lease is stored on REQUEST, before the ACK). Offers are held in
//! memory only (capped by [`Limits::max_offers`]); an OFFER needs no write.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddrV4};

use dialtone_config::portblock::PortBlock;
use dialtone_config::{Config, MacAddr, PhoneClass};
use dialtone_store::{Binding, HistoryRecord, Lease, LeaseSnapshot, LeaseState, Quarantine, UnixSecs, Write};

use crate::allocator::{Hold, Pool};
use crate::wire::{self, code, Message, Options, BOOTREQUEST, FLAG_BROADCAST};

/// DHCP server and client ports.
pub const SERVER_PORT: u16 = 67;
/// See [`SERVER_PORT`].
pub const CLIENT_PORT: u16 = 68;

/// Sub-options of dialtone's option 43 (vendor-specific information, RFC 2132 section 8.4) that
/// carry the port block with explicit bounds, for phones that do not read RFC 7618:
///
/// ```text
/// +------+-----+------------------+------+-----+----------------+------+-----+---------------+
/// | 1    | 4   | public IPv4 (4)  | 2    | 2   | first port (2) | 3    | 2   | last port (2) |
/// +------+-----+------------------+------+-----+----------------+------+-----+---------------+
/// ```
///
/// Ports are big-endian and inclusive.
pub mod vendor_suboption {
    /// Public IPv4 address of the block.
    pub const PUBLIC_IP: u8 = 1;
    /// First port (inclusive).
    pub const FIRST_PORT: u8 = 2;
    /// Last port (inclusive).
    pub const LAST_PORT: u8 = 3;
}

/// The option-43 payload for `block` (see [`vendor_suboption`]).
pub fn vendor_port_payload(block: &PortBlock) -> Vec<u8> {
    let mut out = Vec::with_capacity(16);
    out.extend_from_slice(&[vendor_suboption::PUBLIC_IP, 4]);
    out.extend_from_slice(&block.public_ip.octets());
    out.extend_from_slice(&[vendor_suboption::FIRST_PORT, 2]);
    out.extend_from_slice(&block.port_lo.to_be_bytes());
    out.extend_from_slice(&[vendor_suboption::LAST_PORT, 2]);
    out.extend_from_slice(&block.port_hi.to_be_bytes());
    out
}

/// DHCP message types (RFC 2132 section 9.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum MessageType {
    /// Client looking for servers.
    Discover = 1,
    /// Server offering an address.
    Offer = 2,
    /// Client requesting an address.
    Request = 3,
    /// Client saying the address is in use.
    Decline = 4,
    /// Server acknowledging.
    Ack = 5,
    /// Server refusing.
    Nak = 6,
    /// Client giving the address up.
    Release = 7,
    /// Client asking for configuration only.
    Inform = 8,
}

impl MessageType {
    fn from_wire(value: u8) -> Option<Self> {
        Some(match value {
            1 => Self::Discover,
            2 => Self::Offer,
            3 => Self::Request,
            4 => Self::Decline,
            5 => Self::Ack,
            6 => Self::Nak,
            7 => Self::Release,
            8 => Self::Inform,
            _ => return None,
        })
    }
}

macro_rules! dispositions {
    ($($(#[$doc:meta])* $name:ident = $text:literal,)*) => {
        /// Every outcome of a datagram, each with a counter (VPP-style error counters).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum Disposition { $($(#[$doc])* $name,)* }

        impl Disposition {
            /// All dispositions, in counter order.
            pub const ALL: &'static [Disposition] = &[$(Disposition::$name,)*];
            /// The metric name.
            pub fn name(self) -> &'static str {
                match self { $(Disposition::$name => $text,)* }
            }
        }
    };
}

dispositions! {
    /// OFFER sent.
    Offered = "offer",
    /// ACK for a new or re-established lease.
    Acked = "ack",
    /// ACK for a renewal of a current lease.
    Renewed = "ack_renew",
    /// ACK to an INFORM.
    Informed = "ack_inform",
    /// NAK sent.
    Naked = "nak",
    /// RELEASE applied.
    Released = "release",
    /// DECLINE applied.
    Declined = "decline",
    /// Lease expired by the sweep.
    Expired = "expired",
    /// Offer lapsed without a REQUEST.
    OfferLapsed = "offer_lapsed",
    /// Refused: not a DHCP message (decode error).
    Malformed = "drop_malformed",
    /// Refused: a BOOTREPLY or non-DHCP BOOTP request.
    NotRequest = "drop_not_request",
    /// Refused: a client-side option with a wrong length (50, 54, 57, 53).
    BadOption = "drop_bad_option",
    /// Refused: a server message type from a client.
    UnexpectedType = "drop_unexpected_type",
    /// Refused: hardware type or length not Ethernet's.
    MacFormat = "drop_mac_format",
    /// Refused: group or all-zero MAC.
    MacInvalid = "drop_mac_invalid",
    /// Refused: MAC on the deny list.
    MacDenied = "drop_mac_denied",
    /// Refused: allow list in force and the MAC not on it.
    MacNotAllowed = "drop_mac_not_allowed",
    /// Refused: no class accepts this MAC's OUI.
    MacOuiUnknown = "drop_mac_oui_unknown",
    /// Refused: no option 60.
    VendorClassMissing = "drop_vendor_class_missing",
    /// Refused: option 60 matches no class that accepts this MAC.
    VendorClassUnknown = "drop_vendor_class_unknown",
    /// Refused: the class's pool has no address for a new phone.
    PoolExhausted = "drop_pool_exhausted",
    /// Refused: the table of offers in flight is full.
    OfferTableFull = "drop_offer_table_full",
    /// Ignored: REQUEST or RELEASE addressed to another server.
    OtherServer = "ignore_other_server",
    /// Ignored: INIT-REBOOT/RENEW/REBIND for an address the server has no record of.
    NoRecord = "ignore_no_record",
    /// Ignored: RELEASE or DECLINE for a lease this MAC does not hold.
    NotHeld = "ignore_not_held",
}

/// Kinds of lease changes announced to the dataplane and the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseChange {
    /// A phone got an address (ACK of a new lease).
    Granted,
    /// A current lease was extended.
    Renewed,
    /// The phone gave it up.
    Released,
    /// It ran out.
    Expired,
    /// The phone declined it (address conflict).
    Declined,
}

/// A lease change with everything the dataplane needs (class, offset, MAC) and the block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseEvent {
    /// What happened.
    pub change: LeaseChange,
    /// Class index in the config.
    pub class: usize,
    /// Offset in the class's LAN pool.
    pub offset: u32,
    /// The phone's LAN address.
    pub address: Ipv4Addr,
    /// The phone.
    pub mac: MacAddr,
    /// Its port block.
    pub block: PortBlock,
    /// Lease expiry (for Granted/Renewed), else the time of the change.
    pub until: UnixSecs,
}

/// Something the shell acts on besides sending replies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// A lease changed (dataplane tables, metrics).
    Lease(LeaseEvent),
    /// A datagram was refused or ignored; already counted and logged.
    Refused {
        /// Why.
        reason: Disposition,
        /// The client's MAC, when it got that far.
        mac: Option<MacAddr>,
    },
    /// Options that did not fit the client's maximum message size.
    OptionsLeftOut {
        /// The client.
        mac: MacAddr,
        /// Codes left out.
        codes: Vec<u8>,
    },
}

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Destination address and port.
    pub to: SocketAddrV4,
    /// Sent to the limited broadcast address (the socket needs SO_BROADCAST).
    pub broadcast: bool,
    /// The message type, for counters and logs.
    pub message_type: MessageType,
    /// The encoded DHCP message.
    pub bytes: Vec<u8>,
}

/// What one call produced.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Output {
    /// Datagrams to send — only after `writes` are durable.
    pub replies: Vec<Reply>,
    /// Lease changes and refusals.
    pub effects: Vec<Effect>,
    /// Store writes, to commit durably as one batch before sending the replies.
    pub writes: Vec<Write>,
}

/// Caps on the engine's memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Offers in flight (DISCOVER answered, REQUEST not yet seen) across all classes.
    pub max_offers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_offers: 65_536 }
    }
}

/// Per-disposition counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counters([u64; Disposition::ALL.len()]);

impl Counters {
    /// The count of `d`.
    pub fn get(&self, d: Disposition) -> u64 {
        self.0[d as usize]
    }

    /// `(name, count)` of every disposition.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        Disposition::ALL.iter().map(|d| (d.name(), self.get(*d)))
    }
}

/// The engine: pools of every class and the offers in flight.
#[derive(Debug)]
pub struct Engine {
    config: Config,
    limits: Limits,
    server_id: Ipv4Addr,
    pools: Vec<Pool>,
    /// `(until, class, offset)` of every offer in flight.
    offers: BTreeSet<(UnixSecs, usize, u32)>,
    counters: Counters,
}

/// A request's typed fields, read once from the options.
struct Request<'a> {
    msg: &'a Message,
    kind: MessageType,
    mac: MacAddr,
    requested_ip: Option<Ipv4Addr>,
    server_id: Option<Ipv4Addr>,
    client_id: Option<Vec<u8>>,
    max_message: usize,
    parameters: &'a [u8],
}

fn ipv4_option(options: &Options, code: u8) -> Result<Option<Ipv4Addr>, ()> {
    match options.get(code) {
        None => Ok(None),
        Some(&[a, b, c, d]) => Ok(Some(Ipv4Addr::new(a, b, c, d))),
        Some(_) => Err(()),
    }
}

impl Engine {
    /// An engine serving `config`, resuming from `snapshot` (records of classes no longer
    /// configured, or offsets outside the pool, are ignored).
    pub fn new(config: Config, snapshot: &LeaseSnapshot, limits: Limits) -> Self {
        let quarantine_secs = config.dhcp.quarantine.as_secs().max(120);
        let lan = config.lan.address;
        let pools = config
            .classes
            .iter()
            .map(|class| {
                // Never lease the LAN subnet's network or broadcast address, nor the gateway's.
                let never = [lan.network(), lan.broadcast(), lan.addr()].into_iter().filter_map(|a| class.offset_of(a));
                Pool::new(class.plan.phones, never, quarantine_secs)
            })
            .collect();
        let mut engine = Self {
            server_id: lan.addr(),
            config,
            limits,
            pools,
            offers: BTreeSet::new(),
            counters: Counters([0; Disposition::ALL.len()]),
        };
        engine.restore(snapshot);
        engine
    }

    fn class_index(&self, name: &str) -> Option<usize> {
        self.config.classes.iter().position(|c| c.name == name)
    }

    fn restore(&mut self, snapshot: &LeaseSnapshot) {
        for b in &snapshot.bindings {
            if let Some(i) = self.class_index(&b.class) {
                self.pools[i].restore_binding(b.mac, b.offset);
            }
        }
        for l in snapshot.leases.iter().filter(|l| l.state == LeaseState::Bound) {
            if let Some(i) = self.class_index(&l.class) {
                self.pools[i].restore_lease(l.offset, l.mac, l.start, l.expiry, l.client_id.clone());
            }
        }
        for q in &snapshot.quarantine {
            if let Some(i) = self.class_index(&q.class) {
                self.pools[i].restore_quarantine(q.offset, q.release);
            }
        }
        self.pools.iter_mut().for_each(Pool::finish_restore);
    }

    /// The configuration served.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Counters so far.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Offers in flight.
    pub fn offers_in_flight(&self) -> usize {
        self.offers.len()
    }

    /// Bound leases of class `class`.
    pub fn bound_leases(&self, class: usize) -> usize {
        self.pools.get(class).map_or(0, Pool::bound_count)
    }

    fn count(&mut self, d: Disposition) {
        self.counters.0[d as usize] += 1;
    }

    fn refuse(&mut self, out: &mut Output, reason: Disposition, mac: Option<MacAddr>, detail: &str) {
        self.count(reason);
        match mac {
            Some(mac) => tracing::info!(reason = reason.name(), %mac, detail, "dhcp: no reply"),
            None => tracing::debug!(reason = reason.name(), detail, "dhcp: no reply"),
        }
        out.effects.push(Effect::Refused { reason, mac });
    }

    /// Handles one datagram received on the server port at `now`.
    pub fn handle(&mut self, now: UnixSecs, datagram: &[u8]) -> Output {
        let mut out = Output::default();
        self.lapse_offers(now);
        let msg = match Message::decode(datagram) {
            Ok(m) => m,
            Err(e) => {
                self.refuse(&mut out, Disposition::Malformed, None, &e.to_string());
                return out;
            }
        };
        let Some(request) = self.parse_request(&msg, &mut out) else {
            return out;
        };
        let Some(class) = self.classify(&request, &mut out) else {
            return out;
        };
        match request.kind {
            MessageType::Discover => self.discover(now, &request, class, &mut out),
            MessageType::Request => self.request(now, &request, class, &mut out),
            MessageType::Release => self.release(now, &request, class, &mut out),
            MessageType::Decline => self.decline(now, &request, class, &mut out),
            MessageType::Inform => self.inform(&request, class, &mut out),
            MessageType::Offer | MessageType::Ack | MessageType::Nak => {
                self.refuse(&mut out, Disposition::UnexpectedType, Some(request.mac), "server message type");
            }
        }
        out
    }

    /// Stage 1: a BOOTREQUEST with a well-formed message type and client options.
    fn parse_request<'a>(&mut self, msg: &'a Message, out: &mut Output) -> Option<Request<'a>> {
        if msg.op != BOOTREQUEST {
            self.refuse(out, Disposition::NotRequest, None, "op is not BOOTREQUEST");
            return None;
        }
        let kind = match msg.options.get(code::MESSAGE_TYPE) {
            None => {
                self.refuse(out, Disposition::NotRequest, None, "no option 53 (plain BOOTP)");
                return None;
            }
            Some(&[t]) => MessageType::from_wire(t),
            Some(_) => None,
        };
        let requested_ip = ipv4_option(&msg.options, code::REQUESTED_IP);
        let server_id = ipv4_option(&msg.options, code::SERVER_ID);
        let max_message = match msg.options.get(code::MAX_MESSAGE_SIZE) {
            None => Ok(wire::MIN_MAX_MESSAGE),
            // The value counts the IP and UDP headers (RFC 2131 section 2, 576-byte minimum).
            Some(&[hi, lo]) => Ok(usize::from(u16::from_be_bytes([hi, lo])).saturating_sub(28)),
            Some(_) => Err(()),
        };
        let (Some(kind), Ok(requested_ip), Ok(server_id), Ok(max_message)) =
            (kind, requested_ip, server_id, max_message)
        else {
            self.refuse(out, Disposition::BadOption, None, "option 50, 53, 54 or 57 malformed");
            return None;
        };
        // Stage 2: the MAC (claims 001: 9, 24, 39 — checked before the vendor class).
        let mac = match (msg.htype, msg.hardware_address()) {
            (1, &[a, b, c, d, e, f]) => MacAddr([a, b, c, d, e, f]),
            _ => {
                self.refuse(out, Disposition::MacFormat, None, "hardware type/length is not Ethernet");
                return None;
            }
        };
        let dhcp = &self.config.dhcp;
        let verdict = if mac.is_group() || mac.is_zero() {
            Some(Disposition::MacInvalid)
        } else if dhcp.deny_macs.contains(&mac) {
            Some(Disposition::MacDenied)
        } else if !dhcp.allow_macs.is_empty() && !dhcp.allow_macs.contains(&mac) {
            Some(Disposition::MacNotAllowed)
        } else if !self.config.classes.iter().any(|c| c.accepts_mac(&mac)) {
            Some(Disposition::MacOuiUnknown)
        } else {
            None
        };
        if let Some(reason) = verdict {
            self.refuse(out, reason, Some(mac), "MAC check failed");
            return None;
        }
        Some(Request {
            msg,
            kind,
            mac,
            requested_ip,
            server_id,
            client_id: msg.options.get(code::CLIENT_ID).map(<[u8]>::to_vec),
            max_message,
            parameters: msg.options.get(code::PARAMETER_REQUEST_LIST).unwrap_or(&[]),
        })
    }

    /// Stage 3: the vendor class (option 60) picks the class (claims 001: 8, 23, 38).
    fn classify(&mut self, request: &Request<'_>, out: &mut Output) -> Option<usize> {
        let Some(vendor_class) = request.msg.options.get(code::VENDOR_CLASS) else {
            self.refuse(out, Disposition::VendorClassMissing, Some(request.mac), "no option 60");
            return None;
        };
        let found = self
            .config
            .classes
            .iter()
            .position(|c| c.vendor_class.matches(vendor_class) && c.accepts_mac(&request.mac));
        if found.is_none() {
            let detail = String::from_utf8_lossy(vendor_class).into_owned();
            self.refuse(out, Disposition::VendorClassUnknown, Some(request.mac), &detail);
        }
        found
    }

    fn lapse_offers(&mut self, now: UnixSecs) {
        while let Some(&(until, class, offset)) = self.offers.first() {
            if until > now {
                break;
            }
            self.offers.pop_first();
            if let Some(Hold::Offered { mac, .. }) = self.pools[class].hold(offset).cloned() {
                self.pools[class].drop_offer(offset, mac);
                self.count(Disposition::OfferLapsed);
            }
        }
    }

    /// Removes the tracking entry of an offer that is being taken up or withdrawn.
    fn forget_offer(&mut self, class: usize, offset: u32) {
        if let Some(Hold::Offered { until, .. }) = self.pools[class].hold(offset) {
            self.offers.remove(&(*until, class, offset));
        }
    }

    fn discover(&mut self, now: UnixSecs, request: &Request<'_>, class: usize, out: &mut Output) {
        let mac = request.mac;
        let holds_already = self.pools[class].held_by(mac).is_some();
        if !holds_already && self.offers.len() >= self.limits.max_offers {
            self.refuse(out, Disposition::OfferTableFull, Some(mac), "offers in flight at the cap");
            return;
        }
        let Some(pick) = self.pools[class].pick(mac, now) else {
            let name = self.config.classes[class].name.clone();
            self.refuse(out, Disposition::PoolExhausted, Some(mac), &name);
            return;
        };
        let offset = pick.offset;
        let until = now.saturating_add(self.config.dhcp.offer_hold.as_secs().max(1));
        if !matches!(self.pools[class].hold(offset), Some(Hold::Bound { .. })) {
            self.forget_offer(class, offset);
            self.pools[class].offer(offset, mac, until);
            self.offers.insert((until, class, offset));
        }
        self.count(Disposition::Offered);
        self.reply(request, class, Some(offset), MessageType::Offer, out);
    }

    fn request(&mut self, now: UnixSecs, request: &Request<'_>, class: usize, out: &mut Output) {
        let mac = request.mac;
        let pool_class = &self.config.classes[class];
        // SELECTING: the client names the server it chose (RFC 2131 section 4.3.2).
        if let Some(server_id) = request.server_id {
            if server_id != self.server_id {
                if let Some(offset) = self.pools[class].held_by(mac) {
                    self.forget_offer(class, offset);
                    self.pools[class].drop_offer(offset, mac);
                }
                self.refuse(out, Disposition::OtherServer, Some(mac), "client chose another server");
                return;
            }
            let wanted = request.requested_ip.or((!request.msg.ciaddr.is_unspecified()).then_some(request.msg.ciaddr));
            let offset = wanted.and_then(|a| pool_class.offset_of(a));
            match offset {
                Some(offset)
                    if self.pools[class].held_by(mac) == Some(offset)
                        && self.pools[class].available_to(offset, mac, now) =>
                {
                    self.grant(now, request, class, offset, out);
                }
                _ => self.nak(request, "requested address is not the one offered", out),
            }
            return;
        }
        // INIT-REBOOT (option 50, no ciaddr) or RENEWING/REBINDING (ciaddr).
        let (address, init_reboot) = match (request.requested_ip, request.msg.ciaddr.is_unspecified()) {
            (Some(requested), true) => (requested, true),
            (_, false) => (request.msg.ciaddr, false),
            (None, true) => {
                self.nak(request, "REQUEST names no address", out);
                return;
            }
        };
        let Some(offset) = pool_class.offset_of(address) else {
            if init_reboot {
                // Wrong network for this class (RFC 2131 section 4.3.2: NAK).
                self.nak(request, "address is not in the class's pool", out);
            } else {
                self.refuse(out, Disposition::NoRecord, Some(mac), "renewal of an address not served here");
            }
            return;
        };
        let pool = &self.pools[class];
        let held = pool.held_by(mac);
        let ours = held == Some(offset) || (held.is_none() && pool.binding_of(mac) == Some(offset));
        if ours && pool.available_to(offset, mac, now) {
            self.grant(now, request, class, offset, out);
        } else if pool.hold(offset).is_some() || pool.bound_mac(offset).is_some() || held.is_some() {
            self.nak(request, "address belongs to another client", out);
        } else {
            // RFC 2131 section 4.3.2: no record of the client, stay silent.
            self.refuse(out, Disposition::NoRecord, Some(mac), "no record of this client");
        }
    }

    fn block_of(&self, class: usize, offset: u32) -> Option<(PortBlock, Ipv4Addr)> {
        let c = &self.config.classes[class];
        Some((c.plan.port_block_for(offset)?, c.address_at(offset)?))
    }

    /// ACKs `offset` to the requester: binds, writes, announces.
    fn grant(&mut self, now: UnixSecs, request: &Request<'_>, class: usize, offset: u32, out: &mut Output) {
        let Some((block, address)) = self.block_of(class, offset) else {
            self.nak(request, "offset outside the port-block plan", out);
            return;
        };
        let mac = request.mac;
        let class_name = self.config.classes[class].name.clone();
        let lease_secs = self.config.classes[class].lease_time.as_secs().max(1);
        let expiry = now.saturating_add(lease_secs);
        let renewal = match self.pools[class].hold(offset) {
            Some(Hold::Bound { mac: m, start, .. }) if *m == mac => Some(*start),
            _ => None,
        };
        let start = renewal.unwrap_or(now);
        let was_quarantined = self.pools[class].quarantined_until(offset).is_some();
        let had_binding = self.pools[class].binding_of(mac) == Some(offset);
        self.forget_offer(class, offset);
        let displaced = self.pools[class].bind(offset, mac, start, expiry, request.client_id.clone());

        if let Some(old) = displaced {
            out.writes.push(Write::RemoveBinding { class: class_name.clone(), mac: old });
        }
        if !had_binding {
            out.writes.push(Write::PutBinding(Binding { class: class_name.clone(), mac, offset }));
        }
        if was_quarantined {
            out.writes.push(Write::RemoveQuarantine { class: class_name.clone(), offset });
        }
        out.writes.push(Write::PutLease(Lease {
            class: class_name.clone(),
            offset,
            mac,
            client_id: request.client_id.clone(),
            start,
            expiry,
            state: LeaseState::Bound,
        }));
        if renewal.is_none() {
            out.writes.push(Write::OpenHistory(HistoryRecord {
                class: class_name,
                offset,
                lan_address: address,
                mac,
                public_ip: block.public_ip,
                port_lo: block.port_lo,
                port_hi: block.port_hi,
                from: start,
                to: None,
            }));
        }
        let change = if renewal.is_some() { LeaseChange::Renewed } else { LeaseChange::Granted };
        self.count(if renewal.is_some() { Disposition::Renewed } else { Disposition::Acked });
        out.effects.push(Effect::Lease(LeaseEvent { change, class, offset, address, mac, block, until: expiry }));
        self.reply(request, class, Some(offset), MessageType::Ack, out);
    }

    /// Ends the bound lease at `offset` (release, expiry or decline): store writes and event.
    fn end_lease(&mut self, now: UnixSecs, class: usize, offset: u32, change: LeaseChange, out: &mut Output) {
        let Some(Hold::Bound { mac, start, .. }) = self.pools[class].hold(offset).cloned() else {
            return;
        };
        let class_name = self.config.classes[class].name.clone();
        let until = match change {
            LeaseChange::Declined => self.pools[class].decline(offset, now),
            _ => self.pools[class].unbind(offset, now),
        };
        out.writes.push(Write::RemoveLease { class: class_name.clone(), offset });
        if change == LeaseChange::Declined {
            out.writes.push(Write::RemoveBinding { class: class_name.clone(), mac });
        }
        out.writes.push(Write::PutQuarantine(Quarantine { class: class_name, offset, release: until }));
        if let Some((block, address)) = self.block_of(class, offset) {
            out.writes.push(Write::CloseHistory {
                public_ip: block.public_ip,
                port_lo: block.port_lo,
                from: start,
                mac,
                to: now,
            });
            out.effects.push(Effect::Lease(LeaseEvent { change, class, offset, address, mac, block, until: now }));
        }
    }

    fn release(&mut self, now: UnixSecs, request: &Request<'_>, class: usize, out: &mut Output) {
        if request.server_id.is_some_and(|s| s != self.server_id) {
            self.refuse(out, Disposition::OtherServer, Some(request.mac), "RELEASE for another server");
            return;
        }
        let offset = self.config.classes[class].offset_of(request.msg.ciaddr);
        match offset {
            Some(offset) if matches!(self.pools[class].hold(offset), Some(Hold::Bound { mac, .. }) if *mac == request.mac) =>
            {
                self.count(Disposition::Released);
                self.end_lease(now, class, offset, LeaseChange::Released, out);
            }
            _ => self.refuse(out, Disposition::NotHeld, Some(request.mac), "RELEASE of a lease not held"),
        }
    }

    fn decline(&mut self, now: UnixSecs, request: &Request<'_>, class: usize, out: &mut Output) {
        if request.server_id.is_some_and(|s| s != self.server_id) {
            self.refuse(out, Disposition::OtherServer, Some(request.mac), "DECLINE for another server");
            return;
        }
        let offset = request.requested_ip.and_then(|a| self.config.classes[class].offset_of(a));
        let Some(offset) = offset.filter(|o| self.pools[class].hold(*o).is_some_and(|h| h.mac() == request.mac)) else {
            self.refuse(out, Disposition::NotHeld, Some(request.mac), "DECLINE of an address not held");
            return;
        };
        self.count(Disposition::Declined);
        if matches!(self.pools[class].hold(offset), Some(Hold::Offered { .. })) {
            // Declined straight after the offer (RFC 2131 section 3.1 step 5 allows it after ACK
            // only, but a conflicting address must not be offered again either way).
            self.forget_offer(class, offset);
            self.pools[class].drop_offer(offset, request.mac);
            let class_name = self.config.classes[class].name.clone();
            let until = self.pools[class].decline(offset, now);
            out.writes.push(Write::PutQuarantine(Quarantine { class: class_name, offset, release: until }));
            return;
        }
        self.end_lease(now, class, offset, LeaseChange::Declined, out);
    }

    fn inform(&mut self, request: &Request<'_>, class: usize, out: &mut Output) {
        self.count(Disposition::Informed);
        self.reply(request, class, None, MessageType::Ack, out);
    }

    fn nak(&mut self, request: &Request<'_>, why: &str, out: &mut Output) {
        self.count(Disposition::Naked);
        tracing::info!(mac = %request.mac, why, "dhcp: NAK");
        let mut reply = Message::reply_to(request.msg);
        reply.options.set(code::MESSAGE_TYPE, vec![MessageType::Nak as u8]);
        reply.options.set(code::SERVER_ID, self.server_id.octets().to_vec());
        reply.options.set(code::MESSAGE, why.as_bytes().to_vec());
        if let Some(relay) = request.msg.options.get(code::RELAY_AGENT_INFO) {
            reply.options.set(code::RELAY_AGENT_INFO, relay.to_vec());
        }
        // RFC 2131 section 4.3.2: a relayed NAK asks the relay to broadcast it.
        let relayed = !request.msg.giaddr.is_unspecified();
        if relayed {
            reply.flags |= FLAG_BROADCAST;
        }
        let (to, broadcast) = if relayed {
            (SocketAddrV4::new(request.msg.giaddr, SERVER_PORT), false)
        } else {
            (SocketAddrV4::new(Ipv4Addr::BROADCAST, CLIENT_PORT), true)
        };
        let (bytes, _) = reply.encode(request.max_message);
        out.replies.push(Reply { to, broadcast, message_type: MessageType::Nak, bytes });
    }

    /// Builds an OFFER/ACK (with an address) or an INFORM ACK (`offset` None).
    fn reply(&self, request: &Request<'_>, class: usize, offset: Option<u32>, kind: MessageType, out: &mut Output) {
        let c: &PhoneClass = &self.config.classes[class];
        let mut reply = Message::reply_to(request.msg);
        reply.siaddr = c.tftp_server;
        if let Some(boot) = &c.boot_file {
            if boot.len() < reply.file.len() {
                reply.file[..boot.len()].copy_from_slice(boot.as_bytes());
            }
        }
        // Candidate options, each once; the header options first, the rest by the PRL.
        let mut available: Vec<(u8, Vec<u8>)> = Vec::with_capacity(16);
        let lan = self.config.lan.address;
        available.push((code::SUBNET_MASK, lan.netmask().octets().to_vec()));
        available.push((code::ROUTER, lan.addr().octets().to_vec()));
        let dns: Vec<u8> = self.config.dhcp.dns.iter().flat_map(|a| a.octets()).collect();
        if !dns.is_empty() {
            available.push((code::DNS, dns));
        }
        if let Some(domain) = &self.config.dhcp.domain_name {
            available.push((code::DOMAIN_NAME, domain.as_bytes().to_vec()));
        }
        // TFTP server as a name (66) and as a list of addresses (150, RFC 5859).
        available.push((code::TFTP_SERVER_NAME, c.tftp_server.to_string().into_bytes()));
        available.push((code::TFTP_SERVER_ADDRESS, c.tftp_server.octets().to_vec()));
        if let Some(boot) = &c.boot_file {
            available.push((code::BOOT_FILE, boot.as_bytes().to_vec()));
        }
        let mut head: Vec<(u8, Vec<u8>)> =
            vec![(code::MESSAGE_TYPE, vec![kind as u8]), (code::SERVER_ID, self.server_id.octets().to_vec())];
        if let Some(offset) = offset {
            let Some((block, address)) = self.block_of(class, offset) else {
                return;
            };
            reply.yiaddr = address;
            let lease_secs = u32::try_from(c.lease_time.as_secs()).unwrap_or(u32::MAX).max(1);
            head.push((code::LEASE_TIME, lease_secs.to_be_bytes().to_vec()));
            head.push((code::RENEWAL_TIME, (lease_secs / 2).to_be_bytes().to_vec()));
            head.push((code::REBINDING_TIME, (lease_secs / 8 * 7).to_be_bytes().to_vec()));
            // The port block (claims 001: 1, 11, 26, 41): RFC 7618 on the class's code, and
            // option 43 with explicit bounds for phones that need it.
            if let Some(port_option) = c.port_option {
                available.push((port_option, block.option159_payload().to_vec()));
            }
            if c.vendor_port_option {
                available.push((code::VENDOR_SPECIFIC, vendor_port_payload(&block)));
            }
        } else {
            reply.ciaddr = request.msg.ciaddr;
        }
        for (code, data) in head {
            reply.options.set(code, data);
        }
        // Honour the parameter request list: requested options first, in the client's order.
        for wanted in request.parameters {
            if let Some(i) = available.iter().position(|(c, _)| c == wanted) {
                let (code, data) = available.swap_remove(i);
                reply.options.set(code, data);
            }
        }
        // The rest are always sent: a phone must learn its block and software even unasked.
        available.sort_by_key(|(c, _)| *c);
        for (code, data) in available {
            reply.options.set(code, data);
        }
        if let Some(relay) = request.msg.options.get(code::RELAY_AGENT_INFO) {
            // RFC 3046 section 2.2: echoed, as the last option.
            reply.options.set(code::RELAY_AGENT_INFO, relay.to_vec());
        }
        let (to, broadcast) = if !request.msg.giaddr.is_unspecified() {
            (SocketAddrV4::new(request.msg.giaddr, SERVER_PORT), false)
        } else if !request.msg.ciaddr.is_unspecified() {
            (SocketAddrV4::new(request.msg.ciaddr, CLIENT_PORT), false)
        } else {
            // Broadcast when the client asks or has no address yet (RFC 2131 section 4.1; a
            // unicast to yiaddr would need an ARP entry the shell cannot add portably).
            (SocketAddrV4::new(Ipv4Addr::BROADCAST, CLIENT_PORT), true)
        };
        let (bytes, left_out) = reply.encode(request.max_message);
        if !left_out.is_empty() {
            tracing::warn!(mac = %request.mac, ?left_out, "dhcp: options left out (client max message size)");
            out.effects.push(Effect::OptionsLeftOut { mac: request.mac, codes: left_out });
        }
        out.replies.push(Reply { to, broadcast, message_type: kind, bytes });
    }

    /// Expiry sweep at `now`: lapsed offers are dropped, expired leases ended (quarantined,
    /// history closed) with [`LeaseChange::Expired`] events and the writes to commit.
    pub fn sweep(&mut self, now: UnixSecs) -> Output {
        let mut out = Output::default();
        self.lapse_offers(now);
        for class in 0..self.pools.len() {
            for (offset, _, _) in self.pools[class].expired(now) {
                self.count(Disposition::Expired);
                self.end_lease(now, class, offset, LeaseChange::Expired, &mut out);
            }
        }
        out
    }
}
