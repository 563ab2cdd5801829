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
pub fn vendor_port_payload(block: &PortBlock) -> [u8; 14] {
    let [a, b, c, d] = block.public_ip.octets();
    let [lo_hi, lo_lo] = block.port_lo.to_be_bytes();
    let [hi_hi, hi_lo] = block.port_hi.to_be_bytes();
    [
        vendor_suboption::PUBLIC_IP,
        4,
        a,
        b,
        c,
        d,
        vendor_suboption::FIRST_PORT,
        2,
        lo_hi,
        lo_lo,
        vendor_suboption::LAST_PORT,
        2,
        hi_hi,
        hi_lo,
    ]
}

/// Sets `code` to `data` in a reply's option list the way [`Options::set`] does: a later value
/// for a code already listed replaces the earlier one in its place.
fn set_option<'a>(options: &mut Vec<(u8, &'a [u8])>, code: u8, data: &'a [u8]) {
    match options.iter_mut().find(|(c, _)| *c == code) {
        Some(entry) => entry.1 = data,
        None => options.push((code, data)),
    }
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
    /// Option 6's payload (every DNS server's address), built once.
    dns_payload: Vec<u8>,
    /// Option 66's payload of each class (its TFTP server as text), built once.
    tftp_names: Vec<Vec<u8>>,
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
        let dns_payload = config.dhcp.dns.iter().flat_map(|a| a.octets()).collect();
        let tftp_names = config.classes.iter().map(|c| c.tftp_server.to_string().into_bytes()).collect();
        let mut engine = Self {
            dns_payload,
            tftp_names,
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
                self.pools[i].restore_lease(l.offset, l.mac, l.start, l.expiry, l.client_id.clone(), l.block);
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
        self.handle_into(now, datagram, &mut out);
        out
    }

    /// [`handle`](Self::handle), appending to `out` instead of returning a new [`Output`]: a
    /// shell that reuses one `Output` per datagram allocates its vectors once.
    pub fn handle_into(&mut self, now: UnixSecs, datagram: &[u8], out: &mut Output) {
        self.lapse_offers(now);
        let msg = match Message::decode(datagram) {
            Ok(m) => m,
            Err(e) => {
                self.refuse(out, Disposition::Malformed, None, &e.to_string());
                return;
            }
        };
        let Some(request) = self.parse_request(&msg, out) else {
            return;
        };
        let Some(class) = self.classify(&request, out) else {
            return;
        };
        match request.kind {
            MessageType::Discover => self.discover(now, &request, class, out),
            MessageType::Request => self.request(now, &request, class, out),
            MessageType::Release => self.release(now, &request, class, out),
            MessageType::Decline => self.decline(now, &request, class, out),
            MessageType::Inform => self.inform(&request, class, out),
            MessageType::Offer | MessageType::Ack | MessageType::Nak => {
                self.refuse(out, Disposition::UnexpectedType, Some(request.mac), "server message type");
            }
        }
    }

    /// Counts a datagram the shell could not read whole (longer than its receive slot): it is
    /// dropped as malformed, with no reply, like any datagram that does not decode.
    pub fn refuse_oversized(&mut self, out: &mut Output) {
        self.refuse(out, Disposition::Malformed, None, "datagram longer than the receive slot");
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
        // A renewal keeps its history record, unless the plan changed the block since (then the
        // old record is closed and a new one opened: whois must name the block actually granted).
        let (renewal, replaced) = match self.pools[class].hold(offset) {
            Some(Hold::Bound { mac: m, start, block: old, .. }) if *m == mac && *old == block => (Some(*start), None),
            Some(Hold::Bound { mac: m, start, block: old, .. }) if *m == mac => (None, Some((*start, *old))),
            _ => (None, None),
        };
        let start = renewal.unwrap_or(now);
        let had_binding = self.pools[class].binding_of(mac) == Some(offset);
        self.forget_offer(class, offset);
        let displaced = self.pools[class].bind(offset, mac, start, expiry, request.client_id.clone(), block);
        if let Some((from, old)) = replaced {
            out.writes.push(Write::CloseHistory { public_ip: old.public_ip, port_lo: old.port_lo, from, mac, to: now });
        }

        if let Some(old) = displaced {
            out.writes.push(Write::RemoveBinding { class: class_name.clone(), mac: old });
        }
        if !had_binding {
            out.writes.push(Write::PutBinding(Binding { class: class_name.clone(), mac, offset }));
        }
        if renewal.is_none() && self.pools[class].lift_quarantine_record(offset) {
            // The store may still hold a quarantine that ended in memory. A never-quarantined
            // offset (every new phone's, in a boot storm) has none: no write.
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
            block,
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
        let Some(Hold::Bound { mac, start, expiry, block, .. }) = self.pools[class].hold(offset).cloned() else {
            return;
        };
        let class_name = self.config.classes[class].name.clone();
        let (until, unbound) = match change {
            LeaseChange::Declined => self.pools[class].decline(offset, now),
            _ => (self.pools[class].unbind(offset, now), None),
        };
        out.writes.push(Write::RemoveLease { class: class_name.clone(), offset });
        if let Some(unbound) = unbound {
            out.writes.push(Write::RemoveBinding { class: class_name.clone(), mac: unbound });
        }
        out.writes.push(Write::PutQuarantine(Quarantine { class: class_name, offset, release: until }));
        // History ends when the phone stopped owning the block: at its expiry if the sweep (or a
        // restart) comes later than that.
        let to = if change == LeaseChange::Expired { expiry.min(now) } else { now };
        out.writes.push(Write::CloseHistory {
            public_ip: block.public_ip,
            port_lo: block.port_lo,
            from: start,
            mac,
            to,
        });
        if let Some(address) = self.config.classes[class].address_at(offset) {
            out.effects.push(Effect::Lease(LeaseEvent { change, class, offset, address, mac, block, until: to }));
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
            let (until, unbound) = self.pools[class].decline(offset, now);
            if let Some(unbound) = unbound {
                out.writes.push(Write::RemoveBinding { class: class_name.clone(), mac: unbound });
            }
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

    /// Builds an OFFER/ACK (with an address) or an INFORM ACK (`offset` None). The options are
    /// borrowed from the configuration, from payloads prepared in [`Engine::new`] and from small
    /// arrays here, and written straight into the reply's bytes ([`Message::encode_with`]).
    fn reply(&self, request: &Request<'_>, class: usize, offset: Option<u32>, kind: MessageType, out: &mut Output) {
        let c: &PhoneClass = &self.config.classes[class];
        let mut reply = Message::reply_to(request.msg);
        reply.siaddr = c.tftp_server;
        if let Some(boot) = &c.boot_file {
            if boot.len() < reply.file.len() {
                reply.file[..boot.len()].copy_from_slice(boot.as_bytes());
            }
        }
        let granted = match offset {
            Some(offset) => match self.block_of(class, offset) {
                Some(granted) => Some(granted),
                None => return,
            },
            None => None,
        };
        let lan = self.config.lan.address;
        let (mask, router, server_id) = (lan.netmask().octets(), lan.addr().octets(), self.server_id.octets());
        let message_type = [kind as u8];
        let tftp_address = c.tftp_server.octets();
        let lease_secs = u32::try_from(c.lease_time.as_secs()).unwrap_or(u32::MAX).max(1);
        let times = [lease_secs.to_be_bytes(), (lease_secs / 2).to_be_bytes(), (lease_secs / 8 * 7).to_be_bytes()];
        let port_params = granted.map(|(block, _)| block.option159_payload());
        let vendor_ports = granted.map(|(block, _)| vendor_port_payload(&block));

        // Candidate options, each once; the header options first, the rest by the PRL.
        let mut available: Vec<(u8, &[u8])> = Vec::with_capacity(16);
        available.push((code::SUBNET_MASK, &mask));
        available.push((code::ROUTER, &router));
        if !self.dns_payload.is_empty() {
            available.push((code::DNS, &self.dns_payload));
        }
        if let Some(domain) = &self.config.dhcp.domain_name {
            available.push((code::DOMAIN_NAME, domain.as_bytes()));
        }
        // TFTP server as a name (66) and as a list of addresses (150, RFC 5859).
        available.push((code::TFTP_SERVER_NAME, self.tftp_names.get(class).map_or(&[][..], Vec::as_slice)));
        available.push((code::TFTP_SERVER_ADDRESS, &tftp_address));
        if let Some(boot) = &c.boot_file {
            available.push((code::BOOT_FILE, boot.as_bytes()));
        }
        let mut options: Vec<(u8, &[u8])> = Vec::with_capacity(24);
        set_option(&mut options, code::MESSAGE_TYPE, &message_type);
        set_option(&mut options, code::SERVER_ID, &server_id);
        if let Some((_, address)) = granted {
            reply.yiaddr = address;
            set_option(&mut options, code::LEASE_TIME, &times[0]);
            set_option(&mut options, code::RENEWAL_TIME, &times[1]);
            set_option(&mut options, code::REBINDING_TIME, &times[2]);
            // The port block (claims 001: 1, 11, 26, 41): RFC 7618 on the class's code, and
            // option 43 with explicit bounds for phones that need it.
            if let (Some(port_option), Some(payload)) = (c.port_option, &port_params) {
                available.push((port_option, payload));
            }
            if let (true, Some(payload)) = (c.vendor_port_option, &vendor_ports) {
                available.push((code::VENDOR_SPECIFIC, payload));
            }
        } else {
            reply.ciaddr = request.msg.ciaddr;
        }
        // Honour the parameter request list: requested options first, in the client's order.
        for wanted in request.parameters {
            if let Some(i) = available.iter().position(|(c, _)| c == wanted) {
                let (code, data) = available.swap_remove(i);
                set_option(&mut options, code, data);
            }
        }
        // The rest are always sent: a phone must learn its block and software even unasked.
        available.sort_by_key(|(c, _)| *c);
        for (code, data) in available {
            set_option(&mut options, code, data);
        }
        if let Some(relay) = request.msg.options.get(code::RELAY_AGENT_INFO) {
            // RFC 3046 section 2.2: echoed, as the last option.
            set_option(&mut options, code::RELAY_AGENT_INFO, relay);
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
        let (bytes, left_out) = reply.encode_with(request.max_message, options.iter().copied());
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use dialtone_config::portblock::decode_option159;
    use dialtone_config::{load_str, CpuPolicy};
    use dialtone_store::{MemoryStore, Store};
    use proptest::prelude::*;
    use std::path::Path;

    const EXAMPLE: &str = include_str!("../../../config/examples/dialtone.toml");
    pub(crate) const YEALINK: &[u8] = b"Yealink SIP-T54W";
    pub(crate) const POLYCOM: &[u8] = b"Polycom-VVX450-UA/6.4";

    pub(crate) fn example() -> Config {
        load_str("dialtone.toml", EXAMPLE, Path::new("."), CpuPolicy::Ignore).unwrap().config
    }

    /// The example's global sections with `classes` (and `dhcp` extras) replacing its own.
    fn config_with(dhcp_extra: &str, classes: &str) -> Config {
        let globals = EXAMPLE.split("[[class]]").next().unwrap();
        let globals = globals.replace("[dhcp]\n", &format!("[dhcp]\n{dhcp_extra}\n"));
        load_str("t.toml", &format!("{globals}\n{classes}"), Path::new("."), CpuPolicy::Ignore).unwrap().config
    }

    /// One tiny class of 4 addresses: 100.64.0.0/30 holds the LAN network (0) and gateway (1).
    fn tiny() -> Config {
        config_with(
            "quarantine = \"2m\"\noffer_hold = \"10s\"",
            r#"[[class]]
name = "tiny"
vendor_class = { exact = "tiny-phone" }
mac_oui = ["80:5e:c0"]
ports_per_phone = 16384
lan_pool = "100.64.0.0/29"
public_pool = "198.51.100.0/30"
boot_file = "tiny.bin"
lease_time = "10m"
tftp_root = "/tmp"
"#,
        )
    }

    pub(crate) fn mac(n: u8) -> MacAddr {
        MacAddr([0x80, 0x5e, 0xc0, 0, 0, n])
    }

    /// A client message builder.
    #[derive(Clone)]
    pub(crate) struct Msg(pub(crate) Message);

    impl Msg {
        pub(crate) fn new(kind: MessageType, mac: MacAddr, vendor: &[u8]) -> Self {
            let mut m = Message::request(0xdead_beef, mac.0, Options::new());
            m.options.set(code::MESSAGE_TYPE, vec![kind as u8]);
            m.options.set(code::VENDOR_CLASS, vendor.to_vec());
            m.options.set(code::MAX_MESSAGE_SIZE, 1500u16.to_be_bytes().to_vec());
            Self(m)
        }
        pub(crate) fn opt(mut self, code: u8, data: &[u8]) -> Self {
            self.0.options.set(code, data.to_vec());
            self
        }
        pub(crate) fn requested(self, a: Ipv4Addr) -> Self {
            self.opt(code::REQUESTED_IP, &a.octets())
        }
        pub(crate) fn server(self, a: Ipv4Addr) -> Self {
            self.opt(code::SERVER_ID, &a.octets())
        }
        pub(crate) fn ciaddr(mut self, a: Ipv4Addr) -> Self {
            self.0.ciaddr = a;
            self
        }
        pub(crate) fn bytes(&self) -> Vec<u8> {
            self.0.encode(1500).0
        }
    }

    const GW: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 1);

    fn one_reply(out: &Output) -> Message {
        assert_eq!(out.replies.len(), 1, "{out:?}");
        Message::decode(&out.replies[0].bytes).unwrap()
    }

    fn msg_type(m: &Message) -> u8 {
        m.options.get(code::MESSAGE_TYPE).unwrap()[0]
    }

    /// DISCOVER then SELECTING REQUEST; returns the ACK and the REQUEST's output.
    fn dora(engine: &mut Engine, now: u64, mac: MacAddr, vendor: &[u8]) -> (Message, Output) {
        let offer = one_reply(&engine.handle(now, &Msg::new(MessageType::Discover, mac, vendor).bytes()));
        assert_eq!(msg_type(&offer), MessageType::Offer as u8);
        let req = Msg::new(MessageType::Request, mac, vendor).requested(offer.yiaddr).server(GW);
        let out = engine.handle(now, &req.bytes());
        let ack = one_reply(&out);
        assert_eq!(msg_type(&ack), MessageType::Ack as u8);
        assert_eq!(ack.yiaddr, offer.yiaddr);
        (ack, out)
    }

    fn snapshot_after(outputs: &[&Output]) -> LeaseSnapshot {
        let store = MemoryStore::new();
        for out in outputs {
            store.apply(&out.writes).unwrap();
        }
        store.snapshot().unwrap()
    }

    #[test]
    fn discover_gets_an_offer_with_the_class_options() {
        let config = example();
        let mut engine = Engine::new(config.clone(), &LeaseSnapshot::default(), Limits::default());
        let out = engine.handle(1000, &Msg::new(MessageType::Discover, mac(1), YEALINK).bytes());
        assert!(out.writes.is_empty(), "an offer needs no durable write");
        let offer = one_reply(&out);
        let yealink = &config.classes[0];
        assert!(yealink.lan_pool.contains(&offer.yiaddr));
        assert_eq!(out.replies[0].to, SocketAddrV4::new(Ipv4Addr::BROADCAST, 68));
        assert!(out.replies[0].broadcast);
        assert_eq!(offer.op, wire::BOOTREPLY);
        assert_eq!(offer.xid, 0xdead_beef);
        assert_eq!(offer.siaddr, yealink.tftp_server);
        assert!(offer.file.starts_with(b"yealink/t5.rom\0"));
        let o = &offer.options;
        assert_eq!(o.get(code::SERVER_ID), Some(&GW.octets()[..]));
        assert_eq!(o.get(code::SUBNET_MASK), Some(&[255, 255, 0, 0][..]));
        assert_eq!(o.get(code::ROUTER), Some(&GW.octets()[..]));
        assert_eq!(o.get(code::DNS), Some(&GW.octets()[..]));
        assert_eq!(o.get(code::DOMAIN_NAME), Some(&b"lab.dialtone.test"[..]));
        assert_eq!(o.get(code::LEASE_TIME), Some(&3600u32.to_be_bytes()[..]));
        assert_eq!(o.get(code::RENEWAL_TIME), Some(&1800u32.to_be_bytes()[..]));
        assert_eq!(o.get(code::REBINDING_TIME), Some(&3150u32.to_be_bytes()[..]));
        assert_eq!(o.get(code::TFTP_SERVER_ADDRESS), Some(&yealink.tftp_server.octets()[..]));
        assert_eq!(o.get(code::TFTP_SERVER_NAME), Some(yealink.tftp_server.to_string().as_bytes()));
        assert_eq!(o.get(code::BOOT_FILE), Some(&b"yealink/t5.rom"[..]));
        let block = yealink.port_block_of(offer.yiaddr).unwrap();
        let port_option = yealink.port_option.unwrap();
        assert_eq!(decode_option159(o.get(port_option).unwrap()), Ok((block.port_lo, block.port_hi)));
        assert_eq!(o.get(code::VENDOR_SPECIFIC), None, "yealink has no vendor port option");
        assert_eq!(engine.counters().get(Disposition::Offered), 1);
    }

    #[test]
    fn dora_binds_durably_and_announces_the_block() {
        let config = example();
        let mut engine = Engine::new(config.clone(), &LeaseSnapshot::default(), Limits::default());
        let (ack, out) = dora(&mut engine, 1000, mac(1), YEALINK);
        let class = &config.classes[0];
        let offset = class.offset_of(ack.yiaddr).unwrap();
        let block = class.port_block_of(ack.yiaddr).unwrap();
        assert_eq!(decode_option159(ack.options.get(159).unwrap()), Ok((block.port_lo, block.port_hi)));
        assert!(out.writes.contains(&Write::PutBinding(Binding { class: class.name.clone(), mac: mac(1), offset })));
        assert!(out.writes.iter().any(|w| matches!(w, Write::PutLease(l) if l.offset == offset && l.expiry == 4600)));
        assert!(out.writes.iter().any(|w| matches!(w, Write::OpenHistory(h) if h.port_lo == block.port_lo)));
        assert!(
            !out.writes.iter().any(|w| matches!(w, Write::RemoveQuarantine { .. })),
            "a never-quarantined address has no quarantine to lift"
        );
        assert_eq!(
            out.effects,
            vec![Effect::Lease(LeaseEvent {
                change: LeaseChange::Granted,
                class: 0,
                offset,
                address: ack.yiaddr,
                mac: mac(1),
                block,
                until: 4600
            })]
        );
        assert_eq!(engine.offers_in_flight(), 0);
        assert_eq!(engine.bound_leases(0), 1);
        // The history answers whois for the block.
        let snap_store = MemoryStore::new();
        snap_store.apply(&out.writes).unwrap();
        let who = snap_store.who_held(block.public_ip, block.port_hi, 2000).unwrap();
        assert_eq!(who.iter().map(|h| h.mac).collect::<Vec<_>>(), vec![mac(1)]);
    }

    #[test]
    fn phones_failing_mac_or_vendor_class_get_nothing_and_change_nothing() {
        let config = config_with("deny_macs = [\"80:5e:c0:00:00:09\"]", &EXAMPLE[EXAMPLE.find("[[class]]").unwrap()..]);
        let mut engine = Engine::new(config, &LeaseSnapshot::default(), Limits::default());
        let cases: Vec<(Vec<u8>, Disposition)> = vec![
            (
                Msg::new(MessageType::Discover, MacAddr([0x81, 0x5e, 0xc0, 0, 0, 1]), YEALINK).bytes(),
                Disposition::MacInvalid,
            ),
            (Msg::new(MessageType::Discover, MacAddr([0; 6]), YEALINK).bytes(), Disposition::MacInvalid),
            (Msg::new(MessageType::Discover, mac(9), YEALINK).bytes(), Disposition::MacDenied),
            // An OUI the Yealink class refuses, with a Yealink vendor class: MAC passes the global
            // check (other classes take any OUI) but no class matches both.
            (
                Msg::new(MessageType::Discover, MacAddr([0x00, 0x04, 0xf2, 0, 0, 1]), YEALINK).bytes(),
                Disposition::VendorClassUnknown,
            ),
            (Msg::new(MessageType::Discover, mac(1), b"Cisco CP-7945").bytes(), Disposition::VendorClassUnknown),
            (
                {
                    let mut m = Msg::new(MessageType::Discover, mac(1), YEALINK);
                    m.0.options = Options::new();
                    m.0.options.set(code::MESSAGE_TYPE, vec![1]);
                    m.bytes()
                },
                Disposition::VendorClassMissing,
            ),
            (
                {
                    let mut m = Msg::new(MessageType::Discover, mac(1), YEALINK);
                    m.0.htype = 6;
                    m.bytes()
                },
                Disposition::MacFormat,
            ),
            (
                {
                    let mut m = Msg::new(MessageType::Discover, mac(1), YEALINK);
                    m.0.hlen = 8;
                    m.bytes()
                },
                Disposition::MacFormat,
            ),
            (vec![0; 100], Disposition::Malformed),
            (
                Msg::new(MessageType::Discover, mac(1), YEALINK).opt(code::REQUESTED_IP, &[1, 2, 3]).bytes(),
                Disposition::BadOption,
            ),
            (Msg::new(MessageType::Offer, mac(1), YEALINK).bytes(), Disposition::UnexpectedType),
        ];
        for (bytes, reason) in cases {
            let before = engine.counters().get(reason);
            let out = engine.handle(1000, &bytes);
            assert!(out.replies.is_empty() && out.writes.is_empty(), "{reason:?}: {out:?}");
            assert_eq!(engine.counters().get(reason), before + 1, "{reason:?}");
            assert!(matches!(out.effects.as_slice(), [Effect::Refused { reason: r, .. }] if *r == reason));
        }
        assert_eq!(engine.offers_in_flight(), 0);
        // Nothing was reserved: the first phone still gets the first address.
        let offer = one_reply(&engine.handle(1000, &Msg::new(MessageType::Discover, mac(1), YEALINK).bytes()));
        assert_eq!(offer.yiaddr, Ipv4Addr::new(100, 64, 16, 0));
    }

    #[test]
    fn allow_list_and_global_oui_check() {
        let only_yealink = &EXAMPLE[EXAMPLE.find("[[class]]").unwrap()..EXAMPLE.find("# Polycom").unwrap()];
        let config = config_with("allow_macs = [\"80:5e:c0:00:00:01\", \"00:04:f2:00:00:01\"]", only_yealink);
        let mut engine = Engine::new(config, &LeaseSnapshot::default(), Limits::default());
        let out = engine.handle(0, &Msg::new(MessageType::Discover, mac(2), YEALINK).bytes());
        assert!(matches!(out.effects.as_slice(), [Effect::Refused { reason: Disposition::MacNotAllowed, .. }]));
        let out = engine.handle(0, &Msg::new(MessageType::Discover, MacAddr([0, 4, 0xf2, 0, 0, 1]), YEALINK).bytes());
        assert!(matches!(out.effects.as_slice(), [Effect::Refused { reason: Disposition::MacOuiUnknown, .. }]));
        assert_eq!(engine.handle(0, &Msg::new(MessageType::Discover, mac(1), YEALINK).bytes()).replies.len(), 1);
    }

    #[test]
    fn renewing_rebinding_and_init_reboot() {
        let mut engine = Engine::new(example(), &LeaseSnapshot::default(), Limits::default());
        let (ack, first) = dora(&mut engine, 1000, mac(1), YEALINK);
        let address = ack.yiaddr;
        // RENEWING: unicast, ciaddr set, no server id -> ACK unicast to ciaddr.
        let out = engine.handle(2800, &Msg::new(MessageType::Request, mac(1), YEALINK).ciaddr(address).bytes());
        let renewed = one_reply(&out);
        assert_eq!(msg_type(&renewed), MessageType::Ack as u8);
        assert_eq!(renewed.yiaddr, address);
        assert_eq!(out.replies[0].to, SocketAddrV4::new(address, 68));
        assert!(!out.replies[0].broadcast);
        assert!(matches!(
            out.effects.as_slice(),
            [Effect::Lease(LeaseEvent { change: LeaseChange::Renewed, until: 6400, .. })]
        ));
        assert!(!out.writes.iter().any(|w| matches!(w, Write::OpenHistory(_))), "a renewal keeps its history record");
        assert!(out.writes.iter().any(|w| matches!(w, Write::PutLease(l) if l.start == 1000 && l.expiry == 6400)));
        // Someone else renewing that address: NAK.
        let out = engine.handle(2800, &Msg::new(MessageType::Request, mac(2), YEALINK).ciaddr(address).bytes());
        assert_eq!(msg_type(&one_reply(&out)), MessageType::Nak as u8);
        assert_eq!(out.replies[0].to, SocketAddrV4::new(Ipv4Addr::BROADCAST, 68));
        // Renewal of an address no class serves: silence.
        let out = engine
            .handle(2800, &Msg::new(MessageType::Request, mac(1), YEALINK).ciaddr(Ipv4Addr::new(10, 0, 0, 1)).bytes());
        assert!(out.replies.is_empty());

        // Restart from the store: INIT-REBOOT of the same MAC gets the same address and block.
        let mut restarted = Engine::new(example(), &snapshot_after(&[&first]), Limits::default());
        let init = Msg::new(MessageType::Request, mac(1), YEALINK).requested(address);
        let out = restarted.handle(3000, &init.bytes());
        assert_eq!(one_reply(&out).yiaddr, address);
        // …and a DISCOVER after restart offers it too (sticky).
        let offer = one_reply(&restarted.handle(3000, &Msg::new(MessageType::Discover, mac(1), YEALINK).bytes()));
        assert_eq!(offer.yiaddr, address);
        // INIT-REBOOT for an address held by another MAC: NAK; by a stranger with no record: silence.
        let out = restarted.handle(3000, &Msg::new(MessageType::Request, mac(2), YEALINK).requested(address).bytes());
        assert_eq!(msg_type(&one_reply(&out)), MessageType::Nak as u8);
        let out = restarted.handle(
            3000,
            &Msg::new(MessageType::Request, mac(3), YEALINK).requested(Ipv4Addr::new(100, 64, 17, 9)).bytes(),
        );
        assert!(out.replies.is_empty());
        assert_eq!(restarted.counters().get(Disposition::NoRecord), 1);
        // INIT-REBOOT into another class's network: NAK.
        let out = restarted.handle(
            3000,
            &Msg::new(MessageType::Request, mac(1), YEALINK).requested(Ipv4Addr::new(100, 64, 32, 1)).bytes(),
        );
        assert_eq!(msg_type(&one_reply(&out)), MessageType::Nak as u8);
    }

    #[test]
    fn whois_stays_right_across_a_plan_change() {
        let (mut engine, store) =
            (Engine::new(example(), &LeaseSnapshot::default(), Limits::default()), MemoryStore::new());
        let (ack, out) = dora(&mut engine, 1000, mac(1), YEALINK);
        store.apply(&out.writes).unwrap();
        let old = example().classes[0].port_block_of(ack.yiaddr).unwrap();
        // The operator halves the block size; the gateway restarts with the new plan.
        let text = EXAMPLE.replacen("ports_per_phone = 1024", "ports_per_phone = 512", 1);
        let changed = load_str("t.toml", &text, Path::new("."), CpuPolicy::Ignore).unwrap().config;
        let new = changed.classes[0].port_block_of(ack.yiaddr).unwrap();
        assert_ne!(old, new);
        assert!(!new.contains(old.port_hi), "the probe port is in the old block only");
        let mut engine = Engine::new(changed, &store.snapshot().unwrap(), Limits::default());
        let out = engine.handle(2000, &Msg::new(MessageType::Request, mac(1), YEALINK).ciaddr(ack.yiaddr).bytes());
        let renewed = one_reply(&out);
        assert_eq!(decode_option159(renewed.options.get(159).unwrap()), Ok((new.port_lo, new.port_hi)));
        store.apply(&out.writes).unwrap();
        let out = engine.sweep(2000 + 3600);
        store.apply(&out.writes).unwrap();
        let who = |b: PortBlock, at| {
            store.who_held(b.public_ip, b.port_hi, at).unwrap().iter().map(|h| h.mac).collect::<Vec<_>>()
        };
        assert_eq!(who(old, 1500), vec![mac(1)]);
        assert_eq!(who(old, 2000), vec![], "the old block's record closed at the renewal");
        assert_eq!(who(new, 2000), vec![mac(1)]);
        assert_eq!(who(new, 5599), vec![mac(1)]);
        assert_eq!(who(new, 5600), vec![], "closed at expiry");
    }

    #[test]
    fn selecting_another_server_withdraws_our_offer() {
        let mut engine = Engine::new(tiny(), &LeaseSnapshot::default(), Limits::default());
        let offer = one_reply(&engine.handle(0, &Msg::new(MessageType::Discover, mac(1), b"tiny-phone").bytes()));
        let other = Msg::new(MessageType::Request, mac(1), b"tiny-phone")
            .requested(offer.yiaddr)
            .server(Ipv4Addr::new(100, 64, 0, 99));
        let out = engine.handle(1, &other.bytes());
        assert!(out.replies.is_empty() && out.writes.is_empty());
        assert_eq!(engine.offers_in_flight(), 0);
        // A REQUEST for an address we did not offer: NAK.
        let wrong =
            Msg::new(MessageType::Request, mac(1), b"tiny-phone").requested(Ipv4Addr::new(100, 64, 0, 5)).server(GW);
        assert_eq!(msg_type(&one_reply(&engine.handle(2, &wrong.bytes()))), MessageType::Nak as u8);
    }

    #[test]
    fn never_leases_network_broadcast_or_gateway_and_refuses_exhaustion() {
        let config = tiny();
        let mut engine = Engine::new(config.clone(), &LeaseSnapshot::default(), Limits::default());
        let mut got = Vec::new();
        for n in 1..=6 {
            let (ack, _) = dora(&mut engine, 0, mac(n), b"tiny-phone");
            got.push(ack.yiaddr.octets()[3]);
        }
        // 100.64.0.0 is the LAN network and 100.64.0.1 the gateway.
        assert_eq!(got, vec![2, 3, 4, 5, 6, 7]);
        let out = engine.handle(0, &Msg::new(MessageType::Discover, mac(7), b"tiny-phone").bytes());
        assert!(out.replies.is_empty());
        assert_eq!(engine.counters().get(Disposition::PoolExhausted), 1);
        assert_eq!(engine.bound_leases(0), 6, "exhaustion never evicts");
    }

    #[test]
    fn release_quarantines_but_the_owner_keeps_its_address() {
        let mut engine = Engine::new(tiny(), &LeaseSnapshot::default(), Limits::default());
        let mut addrs = Vec::new();
        for n in 1..=6 {
            addrs.push(dora(&mut engine, 0, mac(n), b"tiny-phone").0.yiaddr);
        }
        let release = Msg::new(MessageType::Release, mac(1), b"tiny-phone").ciaddr(addrs[0]).server(GW);
        let out = engine.handle(100, &release.bytes());
        assert!(out.replies.is_empty());
        assert!(out.writes.contains(&Write::PutQuarantine(Quarantine {
            class: "tiny".into(),
            offset: 2,
            release: 220
        })));
        assert!(out.writes.contains(&Write::RemoveLease { class: "tiny".into(), offset: 2 }));
        assert!(out.writes.iter().any(|w| matches!(w, Write::CloseHistory { to: 100, .. })));
        assert!(matches!(
            out.effects.as_slice(),
            [Effect::Lease(LeaseEvent { change: LeaseChange::Released, offset: 2, .. })]
        ));
        // A newcomer waits out the quarantine…
        let newcomer = Msg::new(MessageType::Discover, mac(7), b"tiny-phone");
        assert!(engine.handle(219, &newcomer.bytes()).replies.is_empty());
        // …the owner does not.
        assert_eq!(dora(&mut engine, 150, mac(1), b"tiny-phone").0.yiaddr, addrs[0]);
        engine.handle(160, &release.bytes());
        let (ack, out) = dora(&mut engine, 280, mac(7), b"tiny-phone");
        assert_eq!(ack.yiaddr, addrs[0]);
        assert!(out.writes.contains(&Write::RemoveBinding { class: "tiny".into(), mac: mac(1) }));
        assert!(out.writes.contains(&Write::RemoveQuarantine { class: "tiny".into(), offset: 2 }));
        // A RELEASE of a lease not held is ignored.
        let out = engine.handle(300, &release.bytes());
        assert!(out.writes.is_empty());
        assert_eq!(engine.counters().get(Disposition::NotHeld), 1);
    }

    #[test]
    fn decline_moves_the_phone_elsewhere() {
        let mut engine = Engine::new(tiny(), &LeaseSnapshot::default(), Limits::default());
        let (ack, _) = dora(&mut engine, 0, mac(1), b"tiny-phone");
        let decline = Msg::new(MessageType::Decline, mac(1), b"tiny-phone").requested(ack.yiaddr).server(GW);
        let out = engine.handle(5, &decline.bytes());
        assert!(out.replies.is_empty());
        assert!(out.writes.contains(&Write::RemoveBinding { class: "tiny".into(), mac: mac(1) }));
        assert!(matches!(out.effects.as_slice(), [Effect::Lease(LeaseEvent { change: LeaseChange::Declined, .. })]));
        let (again, _) = dora(&mut engine, 6, mac(1), b"tiny-phone");
        assert_ne!(again.yiaddr, ack.yiaddr);
        // Declining an offer (before any ACK) also quarantines it and moves on.
        let offer = one_reply(&engine.handle(7, &Msg::new(MessageType::Discover, mac(2), b"tiny-phone").bytes()));
        let decline = Msg::new(MessageType::Decline, mac(2), b"tiny-phone").requested(offer.yiaddr);
        let out = engine.handle(8, &decline.bytes());
        assert!(out.writes.iter().any(|w| matches!(w, Write::PutQuarantine(q) if q.release == 128)));
        assert_eq!(engine.offers_in_flight(), 0);
        let next = one_reply(&engine.handle(9, &Msg::new(MessageType::Discover, mac(2), b"tiny-phone").bytes()));
        assert_ne!(next.yiaddr, offer.yiaddr);
    }

    #[test]
    fn sweep_expires_leases_and_offers() {
        let mut engine = Engine::new(tiny(), &LeaseSnapshot::default(), Limits { max_offers: 1 });
        let (ack, _) = dora(&mut engine, 0, mac(1), b"tiny-phone");
        assert!(engine.sweep(599).writes.is_empty());
        let out = engine.sweep(600);
        assert!(
            matches!(out.effects.as_slice(), [Effect::Lease(LeaseEvent { change: LeaseChange::Expired, mac: m, .. })] if *m == mac(1))
        );
        assert!(out.writes.contains(&Write::PutQuarantine(Quarantine {
            class: "tiny".into(),
            offset: 2,
            release: 720
        })));
        assert_eq!(engine.bound_leases(0), 0);
        // Offer cap: one in flight; the next DISCOVER is refused until the first lapses.
        engine.handle(600, &Msg::new(MessageType::Discover, mac(2), b"tiny-phone").bytes());
        let out = engine.handle(601, &Msg::new(MessageType::Discover, mac(3), b"tiny-phone").bytes());
        assert!(matches!(out.effects.as_slice(), [Effect::Refused { reason: Disposition::OfferTableFull, .. }]));
        // A repeat DISCOVER of the holder is still answered.
        assert_eq!(
            engine.handle(601, &Msg::new(MessageType::Discover, mac(2), b"tiny-phone").bytes()).replies.len(),
            1
        );
        engine.sweep(612);
        assert_eq!(engine.offers_in_flight(), 0);
        assert_eq!(
            engine.handle(612, &Msg::new(MessageType::Discover, mac(3), b"tiny-phone").bytes()).replies.len(),
            1
        );
        // The expired owner comes back to its address (sticky) even during quarantine.
        let (back, _) = dora(&mut engine, 630, mac(1), b"tiny-phone");
        assert_eq!(back.yiaddr, ack.yiaddr);
    }

    #[test]
    fn relay_gets_the_reply_with_option_82_last() {
        let mut engine = Engine::new(example(), &LeaseSnapshot::default(), Limits::default());
        let mut m =
            Msg::new(MessageType::Discover, mac(1), YEALINK).opt(code::RELAY_AGENT_INFO, &[1, 3, b'p', b'1', b'0']);
        m.0.giaddr = Ipv4Addr::new(100, 64, 16, 254);
        let out = engine.handle(0, &m.bytes());
        assert_eq!(out.replies[0].to, SocketAddrV4::new(Ipv4Addr::new(100, 64, 16, 254), 67));
        let offer = one_reply(&out);
        assert_eq!(offer.giaddr, Ipv4Addr::new(100, 64, 16, 254));
        assert_eq!(offer.options.iter().last(), Some((code::RELAY_AGENT_INFO, &[1, 3, b'p', b'1', b'0'][..])));
    }

    #[test]
    fn parameter_request_list_orders_and_max_size_limits() {
        let mut engine = Engine::new(example(), &LeaseSnapshot::default(), Limits::default());
        let m = Msg::new(MessageType::Discover, mac(1), YEALINK).opt(code::PARAMETER_REQUEST_LIST, &[6, 159, 3, 1]);
        let offer = one_reply(&engine.handle(0, &m.bytes()));
        let codes: Vec<u8> = offer.options.iter().map(|(c, _)| c).collect();
        assert_eq!(&codes[..9], &[53, 54, 51, 58, 59, 6, 159, 3, 1]);
        // A huge option-43-free reply still fits 576 bytes; the wire limit is honoured.
        let small = Msg::new(MessageType::Discover, mac(2), YEALINK).opt(code::MAX_MESSAGE_SIZE, &576u16.to_be_bytes());
        let out = engine.handle(0, &small.bytes());
        assert!(out.replies[0].bytes.len() <= 548);
    }

    #[test]
    fn inform_and_vendor_port_option() {
        let config = example();
        let mut engine = Engine::new(config.clone(), &LeaseSnapshot::default(), Limits::default());
        let (ack, _) = dora(&mut engine, 0, mac(1), POLYCOM);
        let polycom = &config.classes[1];
        assert!(polycom.lan_pool.contains(&ack.yiaddr));
        let block = polycom.port_block_of(ack.yiaddr).unwrap();
        assert_eq!(ack.options.get(code::VENDOR_SPECIFIC), Some(vendor_port_payload(&block).as_slice()));
        let v = vendor_port_payload(&block);
        assert_eq!(
            &v[..6],
            &[
                1,
                4,
                block.public_ip.octets()[0],
                block.public_ip.octets()[1],
                block.public_ip.octets()[2],
                block.public_ip.octets()[3]
            ]
        );
        assert_eq!(
            &v[6..],
            &[
                2,
                2,
                (block.port_lo >> 8) as u8,
                block.port_lo as u8,
                3,
                2,
                (block.port_hi >> 8) as u8,
                block.port_hi as u8
            ]
        );

        let inform = Msg::new(MessageType::Inform, mac(1), POLYCOM).ciaddr(ack.yiaddr);
        let out = engine.handle(10, &inform.bytes());
        assert!(out.writes.is_empty());
        assert_eq!(out.replies[0].to, SocketAddrV4::new(ack.yiaddr, 68));
        let reply = one_reply(&out);
        assert_eq!(msg_type(&reply), MessageType::Ack as u8);
        assert_eq!(reply.yiaddr, Ipv4Addr::UNSPECIFIED);
        assert_eq!(reply.ciaddr, ack.yiaddr);
        assert_eq!(reply.options.get(code::LEASE_TIME), None);
        assert_eq!(reply.options.get(code::BOOT_FILE), Some(&b"polycom/vvx.sip.ld"[..]));
    }

    /// Which address a generated message names.
    #[derive(Debug, Clone, Copy)]
    enum Pick {
        /// None.
        Nothing,
        /// The last address offered to this MAC.
        LastOffer,
        /// The last address acknowledged to this MAC.
        LastAck,
        /// Offset `n` of the Yealink pool.
        Offset(u32),
    }

    /// A client action from a small alphabet, resolved against what the client was told before,
    /// so that the property walks through whole DORA, renew, release and decline sequences.
    #[derive(Debug, Clone)]
    struct Action {
        kind: MessageType,
        mac: u8,
        vendor: &'static [u8],
        requested: Pick,
        ciaddr: Pick,
        server: bool,
        prl: Vec<u8>,
        max: Option<u16>,
        relay: bool,
        step: u64,
    }

    fn action() -> impl Strategy<Value = Action> {
        // Mostly coherent choices (the address just offered or acknowledged), some arbitrary.
        let requested = prop_oneof![
            2 => Just(Pick::Nothing),
            5 => Just(Pick::LastOffer),
            2 => Just(Pick::LastAck),
            1 => (0u32..40).prop_map(Pick::Offset)
        ];
        let ciaddr = prop_oneof![
            5 => Just(Pick::Nothing),
            1 => Just(Pick::LastOffer),
            3 => Just(Pick::LastAck),
            1 => (0u32..40).prop_map(Pick::Offset)
        ];
        let kind = prop_oneof![
            3 => Just(MessageType::Discover),
            4 => Just(MessageType::Request),
            1 => Just(MessageType::Release),
            1 => Just(MessageType::Decline),
            1 => Just(MessageType::Inform),
            1 => (1u8..=8).prop_map(|k| MessageType::from_wire(k).unwrap_or(MessageType::Discover)),
        ];
        let vendor = prop_oneof![
            6 => Just(&b"Yealink SIP-T54W"[..]),
            2 => Just(POLYCOM),
            1 => Just(&b"dialtone-phone"[..]),
            1 => Just(&b"x"[..])
        ];
        (
            kind,
            0u8..3,
            vendor,
            requested,
            ciaddr,
            prop::bool::weighted(0.6),
            prop::collection::vec(any::<u8>(), 0..8),
            prop::option::of(0u16..2000),
            prop::bool::weighted(0.2),
            prop_oneof![30 => 0u64..5, 1 => 0u64..8000],
        )
            .prop_map(|(kind, mac, vendor, requested, ciaddr, server, prl, max, relay, step)| Action {
                kind,
                mac,
                vendor,
                requested,
                ciaddr,
                server,
                prl,
                max,
                relay,
                step,
            })
    }

    type Seen = std::collections::HashMap<(u8, &'static [u8]), (Option<Ipv4Addr>, Option<Ipv4Addr>)>;

    fn resolve(action: &Action, seen: &Seen) -> Vec<u8> {
        let (offer, ack) = seen.get(&(action.mac, action.vendor)).copied().unwrap_or((None, None));
        let address = |p: Pick| match p {
            Pick::Nothing => None,
            Pick::LastOffer => offer,
            Pick::LastAck => ack,
            Pick::Offset(o) => Some(Ipv4Addr::from(u32::from(Ipv4Addr::new(100, 64, 16, 0)) + o)),
        };
        let mut msg = Msg::new(action.kind, MacAddr([0x80, 0x5e, 0xc0, 0, 0, action.mac]), action.vendor)
            .opt(code::PARAMETER_REQUEST_LIST, &action.prl);
        if let Some(r) = address(action.requested) {
            msg = msg.requested(r);
        }
        if let Some(c) = address(action.ciaddr) {
            msg = msg.ciaddr(c);
        }
        if action.server {
            msg = msg.server(GW);
        }
        if let Some(max) = action.max {
            msg = msg.opt(code::MAX_MESSAGE_SIZE, &max.to_be_bytes());
        }
        if action.relay {
            msg.0.giaddr = Ipv4Addr::new(100, 64, 16, 254);
            msg = msg.opt(code::RELAY_AGENT_INFO, &[1, 2, 0xab, 0xcd]);
        }
        msg.bytes()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn any_bytes_never_panic_the_engine(datagrams in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..600), 1..8)) {
            let mut engine = Engine::new(example(), &LeaseSnapshot::default(), Limits { max_offers: 4 });
            for (i, d) in datagrams.iter().enumerate() {
                let out = engine.handle(i as u64, d);
                for r in &out.replies {
                    prop_assert!(Message::decode(&r.bytes).is_ok());
                }
            }
        }

        /// Any accepted sequence: every reply decodes, every ACK's option 159 is exactly the
        /// block of its address, and no two MACs hold the same address.
        #[test]
        fn replies_decode_and_blocks_match(actions in prop::collection::vec(action(), 1..60)) {
            run_actions(&actions)?;
        }
    }

    /// Runs `actions` against a fresh engine, checking the invariants; returns its counters.
    fn run_actions(actions: &[Action]) -> Result<Counters, TestCaseError> {
        let config = example();
        let mut engine = Engine::new(config.clone(), &LeaseSnapshot::default(), Limits { max_offers: 8 });
        let mut now = 0;
        let mut holders: std::collections::HashMap<Ipv4Addr, MacAddr> = Default::default();
        let mut seen = Seen::new();
        let store = MemoryStore::new();
        for action in actions {
            now += action.step;
            let mut out = engine.handle(now, &resolve(action, &seen));
            let swept = engine.sweep(now);
            out.effects.extend(swept.effects);
            store.apply(&out.writes).map_err(|e| TestCaseError::fail(e.to_string()))?;
            store.apply(&swept.writes).map_err(|e| TestCaseError::fail(e.to_string()))?;
            // The store's quarantines are exactly those the engine has on record (so a new lease
            // of any other offset has no quarantine to lift), and none is left on a leased address.
            let snapshot = store.snapshot().map_err(|e| TestCaseError::fail(e.to_string()))?;
            for q in &snapshot.quarantine {
                let class = engine.class_index(&q.class).ok_or_else(|| TestCaseError::fail("unknown class"))?;
                prop_assert!(engine.pools[class].quarantine_on_record(q.offset), "stored quarantine not on record");
                prop_assert!(
                    !snapshot.leases.iter().any(|l| l.class == q.class && l.offset == q.offset),
                    "a leased address is still quarantined in the store"
                );
            }
            for (class, pool) in engine.pools.iter().enumerate() {
                let on_record = pool.quarantines_on_record();
                let stored = snapshot.quarantine.iter().filter(|q| q.class == config.classes[class].name).count();
                prop_assert_eq!(on_record, stored, "quarantines on record that the store does not hold");
            }
            for r in &out.replies {
                let reply = Message::decode(&r.bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert!(r.bytes.len() >= wire::MIN_BOOTP_LEN);
                let entry = seen.entry((action.mac, action.vendor)).or_default();
                if reply.options.get(code::MESSAGE_TYPE) == Some(&[MessageType::Offer as u8][..]) {
                    entry.0 = Some(reply.yiaddr);
                }
                if reply.options.get(code::MESSAGE_TYPE) == Some(&[MessageType::Ack as u8][..])
                    && !reply.yiaddr.is_unspecified()
                {
                    entry.1 = Some(reply.yiaddr);
                    let (_, class) = config.class_of_address(reply.yiaddr).unwrap();
                    let block = class.port_block_of(reply.yiaddr).unwrap();
                    let payload = reply.options.get(class.port_option.unwrap()).unwrap();
                    prop_assert_eq!(decode_option159(payload), Ok((block.port_lo, block.port_hi)));
                    prop_assert_eq!(payload, &block.option159_payload()[..]);
                }
            }
            for e in &out.effects {
                if let Effect::Lease(ev) = e {
                    match ev.change {
                        LeaseChange::Granted | LeaseChange::Renewed => {
                            if let Some(other) = holders.insert(ev.address, ev.mac) {
                                prop_assert_eq!(other, ev.mac, "two MACs on one address");
                            }
                        }
                        _ => {
                            holders.remove(&ev.address);
                        }
                    }
                }
            }
        }
        Ok(engine.counters().clone())
    }

    /// The generator reaches deep: across a fixed set of generated runs every kind of outcome
    /// happens, so the property above checks real ACKs, renewals, releases and NAKs.
    #[test]
    fn generated_actions_cover_the_state_machine() {
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let strategy = prop::collection::vec(action(), 30..60);
        let mut totals = std::collections::HashMap::new();
        for _ in 0..64 {
            let actions = proptest::strategy::ValueTree::current(&strategy.new_tree(&mut runner).unwrap());
            for (name, n) in run_actions(&actions).unwrap().iter() {
                *totals.entry(name).or_insert(0u64) += n;
            }
        }
        for d in [
            Disposition::Offered,
            Disposition::Acked,
            Disposition::Renewed,
            Disposition::Naked,
            Disposition::Released,
            Disposition::Declined,
            Disposition::Informed,
        ] {
            assert!(totals[d.name()] > 0, "{} never happened: {totals:?}", d.name());
        }
    }
}
