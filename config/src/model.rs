//! Validated runtime configuration: what the rest of dialtone reads.
//!
//! Every value here has passed [`crate::load`]: addresses parse, pools nest and do not overlap,
//! each class's port-block plan fits, regexes compile. Code holding a [`Config`] never re-checks.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::Ipv4Net;

use crate::mac::{MacAddr, Oui};
use crate::portblock::{PortBlock, PortBlockPlan};

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from, for messages.
    pub source: PathBuf,
    /// Phone-facing side.
    pub lan: Lan,
    /// Network-facing side.
    pub wan: Wan,
    /// Durable state.
    pub store: Store,
    /// Logging.
    pub logging: Logging,
    /// AF_XDP dataplane.
    pub dataplane: Dataplane,
    /// DHCP server.
    pub dhcp: Dhcp,
    /// TFTP server.
    pub tftp: Tftp,
    /// Pre-provisioning service.
    pub preprov: Preprov,
    /// Provisioning entry point.
    pub provisioning: Provisioning,
    /// Operator management API.
    pub management: Management,
    /// Phone classes in match order; a class's index is its id everywhere (`class` in tables).
    pub classes: Vec<PhoneClass>,
}

/// Phone-facing side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lan {
    /// Interface name.
    pub interface: String,
    /// The gateway's LAN address and subnet.
    pub address: Ipv4Net,
}

/// Network-facing side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wan {
    /// Interface name.
    pub interface: String,
    /// The gateway's WAN address and subnet.
    pub address: Ipv4Net,
    /// Next hop for translated traffic, inside the WAN subnet.
    pub next_hop: Ipv4Addr,
}

/// Durable state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Store {
    /// Database file.
    pub path: PathBuf,
    /// Longest a write waits for companions in its commit group.
    pub group_commit_wait: Duration,
    /// Most writes one commit carries.
    pub group_commit_max: u32,
    /// How long finished leases stay in history.
    pub history_retention: Duration,
}

/// Log verbosity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// Errors and warnings.
    Warn,
    /// Normal operation.
    Info,
    /// Troubleshooting.
    Debug,
    /// Everything.
    Trace,
}

impl LogLevel {
    /// The level as `tracing` spells it.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Error => "error",
            Self::Warn => "warn",
            Self::Info => "info",
            Self::Debug => "debug",
            Self::Trace => "trace",
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Logging.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logging {
    /// Verbosity.
    pub level: LogLevel,
    /// Format.
    pub format: LogFormat,
}

/// How the XDP program is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdpMode {
    /// Native (driver) mode, falling back to generic mode.
    Auto,
    /// Driver mode only.
    Native,
    /// Generic (SKB) mode only.
    Generic,
}

/// How AF_XDP sockets are bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindMode {
    /// Zero-copy where the driver supports it, copy mode otherwise.
    Auto,
    /// Zero-copy or fail.
    ZeroCopy,
    /// Copy mode.
    Copy,
}

/// AF_XDP dataplane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dataplane {
    /// Start it.
    pub enabled: bool,
    /// Worker CPU ids; worker `i` runs on `cpus[i]` and owns queue `i` of both interfaces.
    pub cpus: Vec<u32>,
    /// XDP attachment.
    pub xdp_mode: XdpMode,
    /// Socket binding.
    pub bind_mode: BindMode,
    /// Frames per batch.
    pub batch_size: u32,
    /// UMEM frames per worker.
    pub frames_per_worker: u32,
    /// Bytes per UMEM frame.
    pub frame_size: u32,
    /// Fragment-table entries per worker.
    pub fragment_slots: u32,
    /// Fragment-table entry lifetime.
    pub fragment_timeout: Duration,
    /// Control-ring capacity per worker.
    pub control_ring: u32,
    /// Neighbour-table refresh period.
    pub neighbour_refresh: Duration,
}

/// DHCP server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dhcp {
    /// Serve DHCP.
    pub enabled: bool,
    /// DNS servers (option 6).
    pub dns: Vec<Ipv4Addr>,
    /// Domain name (option 15).
    pub domain_name: Option<String>,
    /// Rest period of a freed address (RFC 6888 REQ-8: at least 120 s).
    pub quarantine: Duration,
    /// How long an offer reserves its address.
    pub offer_hold: Duration,
    /// Expiry sweep period.
    pub expiry_sweep: Duration,
    /// When not empty, only these MACs are served.
    pub allow_macs: Vec<MacAddr>,
    /// Never served.
    pub deny_macs: Vec<MacAddr>,
}

/// TFTP server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tftp {
    /// Serve TFTP.
    pub enabled: bool,
    /// Where it listens: the gateway's LAN address and the configured port.
    pub listen: SocketAddr,
    /// Transfer threads.
    pub threads: u32,
    /// Concurrent transfer cap.
    pub max_transfers: u32,
    /// Default retransmission timeout.
    pub timeout: Duration,
    /// Retransmissions before giving up.
    pub retries: u32,
    /// Largest block size granted.
    pub max_blksize: u32,
    /// Largest window granted.
    pub max_windowsize: u32,
    /// Writable directories, relative to a class root; empty means read-only.
    pub writable_dirs: Vec<PathBuf>,
}

/// Where a bearer token comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// Written in the config file.
    Inline(String),
    /// Read from this file at start.
    File(PathBuf),
}

/// Pre-provisioning service (claims 000: 1-12).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preprov {
    /// Run it.
    pub enabled: bool,
    /// Listening socket.
    pub listen: SocketAddr,
    /// Certificate and key for HTTPS.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Handler threads.
    pub threads: u32,
    /// Connection cap.
    pub max_connections: u32,
    /// Inquiries per second per source address.
    pub rate_per_source: u32,
    /// Burst per source address.
    pub burst_per_source: u32,
    /// Whole-request receive deadline.
    pub read_timeout: Duration,
    /// Idle keep-alive deadline.
    pub idle_timeout: Duration,
    /// Request head limit.
    pub max_header_bytes: u32,
    /// Request body limit.
    pub max_body_bytes: u64,
    /// Admin token, if any (accounts can also be made with `dialtone token create`).
    pub admin_token: Option<TokenSource>,
}

/// Provisioning entry point (claims 000: 4, 10, 13).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provisioning {
    /// Run it.
    pub enabled: bool,
    /// Listening socket.
    pub listen: SocketAddr,
    /// Servers named to devices that have no parameters here.
    pub next_servers: Vec<String>,
}

/// Operator management API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Management {
    /// Listening socket.
    pub listen: SocketAddr,
    /// Bearer token.
    pub token: TokenSource,
}

/// The option-60 rule of a class (claims 001: 8, 9, 24, 39).
#[derive(Debug, Clone)]
pub enum VendorClassRule {
    /// Option 60 equals this.
    Exact(Vec<u8>),
    /// Option 60 starts with this.
    Prefix(Vec<u8>),
    /// Option 60 as a whole matches this (anchored at both ends).
    Regex(regex::bytes::Regex),
}

impl VendorClassRule {
    /// Does this vendor class identifier belong to the class?
    pub fn matches(&self, vendor_class: &[u8]) -> bool {
        match self {
            Self::Exact(want) => vendor_class == want.as_slice(),
            Self::Prefix(want) => vendor_class.starts_with(want),
            Self::Regex(re) => re.is_match(vendor_class),
        }
    }
}

impl PartialEq for VendorClassRule {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Exact(a), Self::Exact(b)) | (Self::Prefix(a), Self::Prefix(b)) => a == b,
            (Self::Regex(a), Self::Regex(b)) => a.as_str() == b.as_str(),
            _ => false,
        }
    }
}

/// A phone class: what the vendor-class check yields, and everything a phone of it gets.
#[derive(Debug, Clone, PartialEq)]
pub struct PhoneClass {
    /// Unique name.
    pub name: String,
    /// Option-60 rule.
    pub vendor_class: VendorClassRule,
    /// Accepted OUIs; empty accepts any.
    pub mac_oui: Vec<Oui>,
    /// Private addresses leased to this class.
    pub lan_pool: Ipv4Net,
    /// Public addresses it shares.
    pub public_pool: Ipv4Net,
    /// Port-block plan (ports per phone, blocks per address, …).
    pub plan: PortBlockPlan,
    /// TFTP server in leases.
    pub tftp_server: Ipv4Addr,
    /// Operational software file.
    pub boot_file: Option<String>,
    /// Lease duration.
    pub lease_time: Duration,
    /// Option code carrying RFC 7618 port parameters, if any.
    pub port_option: Option<u8>,
    /// Send the block in option 43 too.
    pub vendor_port_option: bool,
    /// TFTP root directory.
    pub tftp_root: PathBuf,
    /// Virtual per-phone file-name patterns.
    pub config_files: Vec<String>,
    /// Class-wide provisioning parameters.
    pub parameters: BTreeMap<String, String>,
}

impl PhoneClass {
    /// The phone's offset in the LAN pool, if `addr` is in it.
    pub fn offset_of(&self, addr: Ipv4Addr) -> Option<u32> {
        self.lan_pool.contains(&addr).then(|| u32::from(addr) - u32::from(self.lan_pool.network()))
    }

    /// The LAN address at `offset`, if the pool has it.
    pub fn address_at(&self, offset: u32) -> Option<Ipv4Addr> {
        (offset < self.plan.phones).then(|| Ipv4Addr::from(u32::from(self.lan_pool.network()) + offset))
    }

    /// The port block of the phone holding `addr` (claims 001: 1, 16, 31).
    pub fn port_block_of(&self, addr: Ipv4Addr) -> Option<PortBlock> {
        self.plan.port_block_for(self.offset_of(addr)?)
    }

    /// Does this MAC pass the class's OUI list (claims 001: 9, 24, 39)?
    pub fn accepts_mac(&self, mac: &MacAddr) -> bool {
        self.mac_oui.is_empty() || self.mac_oui.contains(&mac.oui())
    }
}

impl Config {
    /// The class whose LAN pool holds `addr`, with its index.
    pub fn class_of_address(&self, addr: Ipv4Addr) -> Option<(usize, &PhoneClass)> {
        self.classes.iter().enumerate().find(|(_, c)| c.lan_pool.contains(&addr))
    }

    /// The class whose public pool holds `addr`, with its index.
    pub fn class_of_public(&self, addr: Ipv4Addr) -> Option<(usize, &PhoneClass)> {
        self.classes.iter().enumerate().find(|(_, c)| c.public_pool.contains(&addr))
    }
}
