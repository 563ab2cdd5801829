//! The shape of the configuration file, exactly as written by the operator.
//!
//! Every table refuses unknown fields, so a typo is an error with its line rather than a silently
//! ignored setting. Leaves are kept as [`Spanned`] text or numbers; [`crate::load`] parses them
//! into typed values and uses the spans to name the line of each problem. Nothing here is trusted
//! by the rest of the product: only [`crate::model`] is.

use std::collections::BTreeMap;

use serde::Deserialize;
pub use toml::Spanned;

/// Text with its place in the file.
pub type Text = Spanned<String>;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// The phone-facing side.
    pub lan: Spanned<LanFile>,
    /// The network-facing side.
    pub wan: Spanned<WanFile>,
    /// Durable state.
    #[serde(default)]
    pub store: Option<Spanned<StoreFile>>,
    /// Log level and format.
    #[serde(default)]
    pub logging: Option<Spanned<LoggingFile>>,
    /// AF_XDP workers.
    #[serde(default)]
    pub dataplane: Option<Spanned<DataplaneFile>>,
    /// DHCP server.
    #[serde(default)]
    pub dhcp: Option<Spanned<DhcpFile>>,
    /// TFTP server.
    #[serde(default)]
    pub tftp: Option<Spanned<TftpFile>>,
    /// Pre-provisioning service (claims 000: 1-12).
    #[serde(default)]
    pub preprov: Option<Spanned<PreprovFile>>,
    /// Provisioning entry point (claims 000: 4, 10).
    #[serde(default)]
    pub provisioning: Option<Spanned<ProvisioningFile>>,
    /// Operator management API.
    pub management: Spanned<ManagementFile>,
    /// Phone classes, in match order.
    #[serde(default, rename = "class")]
    pub classes: Vec<Spanned<ClassFile>>,
}

/// `[lan]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LanFile {
    /// Interface facing the phones.
    pub interface: Text,
    /// The gateway's own LAN address with the subnet length, `100.64.0.1/16`.
    pub address: Text,
}

/// `[wan]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WanFile {
    /// Interface facing the carrier network.
    pub interface: Text,
    /// The gateway's own WAN address with the subnet length, `192.0.2.1/24`.
    pub address: Text,
    /// The WAN next hop all translated traffic is sent to.
    pub next_hop: Text,
}

/// `[store]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreFile {
    /// Path of the embedded database file.
    pub path: Option<Text>,
    /// Longest a write waits for companions before its group is committed.
    pub group_commit_wait: Option<Text>,
    /// Most writes one commit carries.
    pub group_commit_max: Option<Spanned<u32>>,
    /// How long finished leases stay in history (for `whois`).
    pub history_retention: Option<Text>,
}

/// `[logging]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggingFile {
    /// `error`, `warn`, `info`, `debug` or `trace`.
    pub level: Option<Text>,
    /// `text` or `json`.
    pub format: Option<Text>,
}

/// `[dataplane]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataplaneFile {
    /// Start the AF_XDP dataplane.
    pub enabled: Option<Spanned<bool>>,
    /// One worker per CPU id; worker `i` owns queue `i` of both interfaces.
    pub cpus: Option<Spanned<Vec<Spanned<u32>>>>,
    /// `auto`, `native` or `generic` XDP attachment.
    pub xdp_mode: Option<Text>,
    /// `auto`, `zero-copy` or `copy` AF_XDP binding.
    pub bind_mode: Option<Text>,
    /// Frames handled per batch.
    pub batch_size: Option<Spanned<u32>>,
    /// UMEM frames per worker (shared by its LAN and WAN sockets).
    pub frames_per_worker: Option<Spanned<u32>>,
    /// Size of one UMEM frame: 2048 or 4096.
    pub frame_size: Option<Spanned<u32>>,
    /// Entries of each worker's fragment table.
    pub fragment_slots: Option<Spanned<u32>>,
    /// How long a fragment-table entry lives.
    pub fragment_timeout: Option<Text>,
    /// Capacity of each worker's control ring (lease and neighbour updates).
    pub control_ring: Option<Spanned<u32>>,
    /// How often the WAN next hop's MAC is re-read from the kernel.
    pub neighbour_refresh: Option<Text>,
}

/// `[dhcp]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DhcpFile {
    /// Serve DHCP on the LAN interface.
    pub enabled: Option<Spanned<bool>>,
    /// DNS servers given to phones (option 6).
    pub dns: Option<Spanned<Vec<Text>>>,
    /// Domain name given to phones (option 15).
    pub domain_name: Option<Text>,
    /// How long a freed address rests before another MAC may get it.
    pub quarantine: Option<Text>,
    /// How long an offered address is held for the client that was offered it.
    pub offer_hold: Option<Text>,
    /// How often expired leases are swept.
    pub expiry_sweep: Option<Text>,
    /// When not empty, only these MACs are served.
    pub allow_macs: Option<Vec<Text>>,
    /// These MACs are never served.
    pub deny_macs: Option<Vec<Text>>,
}

/// `[tftp]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TftpFile {
    /// Serve TFTP on the LAN address.
    pub enabled: Option<Spanned<bool>>,
    /// UDP port of the TFTP server.
    pub port: Option<Spanned<u16>>,
    /// Worker threads for transfers.
    pub threads: Option<Spanned<u32>>,
    /// Most transfers at once; requests past it get a TFTP error.
    pub max_transfers: Option<Spanned<u32>>,
    /// Retransmission timeout when the client does not ask for one.
    pub timeout: Option<Text>,
    /// Retransmissions before a transfer is abandoned.
    pub retries: Option<Spanned<u32>>,
    /// Largest block size granted (RFC 2348).
    pub max_blksize: Option<Spanned<u32>>,
    /// Largest window granted (RFC 7440).
    pub max_windowsize: Option<Spanned<u32>>,
    /// Directories (relative to a class root) where write requests are allowed.
    pub writable_dirs: Option<Vec<Text>>,
}

/// `[preprov]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreprovFile {
    /// Run the pre-provisioning service.
    pub enabled: Option<Spanned<bool>>,
    /// Socket address the device and management applications listen on.
    pub listen: Option<Text>,
    /// PEM certificate chain; with `tls_key`, the service speaks HTTPS.
    pub tls_cert: Option<Text>,
    /// PEM private key for `tls_cert`.
    pub tls_key: Option<Text>,
    /// Request-handling threads.
    pub threads: Option<Spanned<u32>>,
    /// Most open connections; more are closed at once.
    pub max_connections: Option<Spanned<u32>>,
    /// Device inquiries allowed per second from one source address.
    pub rate_per_source: Option<Spanned<u32>>,
    /// Burst allowed above `rate_per_source`.
    pub burst_per_source: Option<Spanned<u32>>,
    /// Time allowed to receive a whole request.
    pub read_timeout: Option<Text>,
    /// Time an idle keep-alive connection is kept.
    pub idle_timeout: Option<Text>,
    /// Largest request head.
    pub max_header_bytes: Option<Spanned<u32>>,
    /// Largest request body (bulk CSV imports).
    pub max_body_bytes: Option<Spanned<u64>>,
    /// Admin bearer token; or use `admin_token_file`.
    pub admin_token: Option<Text>,
    /// File holding the admin bearer token.
    pub admin_token_file: Option<Text>,
}

/// `[provisioning]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvisioningFile {
    /// Run the provisioning entry point.
    pub enabled: Option<Spanned<bool>>,
    /// Socket address it listens on.
    pub listen: Option<Text>,
    /// Provisioning servers to name when a device has no parameters here (claim 000: 4).
    pub next_servers: Option<Vec<Text>>,
}

/// `[management]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManagementFile {
    /// Socket address of the operator API.
    pub listen: Option<Text>,
    /// Bearer token; or use `token_file`.
    pub token: Option<Text>,
    /// File holding the bearer token.
    pub token_file: Option<Text>,
}

/// `vendor_class = { exact = "…" }` (or `prefix`, or `regex`): the option-60 rule of a class.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "lowercase")]
pub enum VendorClassFile {
    /// Option 60 equals this text.
    Exact(String),
    /// Option 60 starts with this text.
    Prefix(String),
    /// Option 60, as a whole, matches this regular expression.
    Regex(String),
}

/// `[[class]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassFile {
    /// Unique name.
    pub name: Text,
    /// Option-60 rule (claims 001: 8, 9).
    pub vendor_class: Spanned<VendorClassFile>,
    /// MAC OUIs accepted for this class; empty accepts any vendor's MAC.
    pub mac_oui: Option<Vec<Text>>,
    /// Ports in each phone's block: a power of two in 16..=32768.
    pub ports_per_phone: Spanned<u32>,
    /// Private addresses leased to this class, inside the LAN subnet.
    pub lan_pool: Text,
    /// Public addresses this class shares.
    pub public_pool: Text,
    /// TFTP server named in leases (siaddr, 66, 150); the gateway's LAN address by default.
    pub tftp_server: Option<Text>,
    /// Operational software file named in leases (file, 67).
    pub boot_file: Option<Text>,
    /// Lease duration.
    pub lease_time: Option<Text>,
    /// DHCP option code that carries the RFC 7618 port parameters; 0 sends none.
    pub port_option: Option<Spanned<u32>>,
    /// Also send the block in option 43 with explicit first and last port.
    pub vendor_port_option: Option<Spanned<bool>>,
    /// Directory served by TFTP to this class.
    pub tftp_root: Option<Text>,
    /// Virtual per-phone file names; `{mac}` is the 12-hex-digit MAC, `{MAC}` upper case.
    pub config_files: Option<Vec<Text>>,
    /// Provisioning parameters every phone of the class gets (per-device values override).
    pub parameters: Option<BTreeMap<String, Text>>,
}
