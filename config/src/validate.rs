//! From file shape to runtime types: every check, each problem pinned to its line and field.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Display;
use std::net::{Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use ipnet::Ipv4Net;

use crate::error::{ConfigError, ConfigErrors, Severity};
use crate::file::{self, Spanned, Text};
use crate::mac::{MacAddr, Oui};
use crate::model::*;
use crate::portblock::PortBlockPlan;

/// What to do with worker CPU ids this machine does not have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuPolicy {
    /// `run`: refuse, the workers could not be pinned.
    Refuse(&'static [u32]),
    /// `check-config`: warn, the plan may be meant for another box.
    Warn(&'static [u32]),
    /// Tests and tools that never start workers.
    Ignore,
}

/// An accepted configuration and the warnings found on the way.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The configuration.
    pub config: Config,
    /// Problems that do not refuse it.
    pub warnings: Vec<ConfigError>,
}

/// CPU ids online on this machine, from `/sys/devices/system/cpu/online` (`0-3,6`), leaked once so
/// [`CpuPolicy`] can hold them by reference.
pub fn online_cpus() -> &'static [u32] {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap_or_default();
    let mut cpus = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        let (lo, hi) = part.split_once('-').unwrap_or((part, part));
        if let (Ok(lo), Ok(hi)) = (lo.parse::<u32>(), hi.parse::<u32>()) {
            cpus.extend(lo..=hi.min(lo.saturating_add(4096)));
        }
    }
    Box::leak(cpus.into_boxed_slice())
}

/// Reads and validates the configuration file at `path`.
pub fn load(path: &Path, cpus: CpuPolicy) -> Result<Loaded, ConfigErrors> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: name.clone(),
            line: 0,
            field: "(file)".into(),
            reason: format!("cannot read: {e}"),
            severity: Severity::Error,
        }])
    })?;
    load_str(&name, &text, path.parent().unwrap_or(Path::new(".")), cpus)
}

/// Validates configuration text; `file` names it in messages and `base_dir` anchors relative paths.
pub fn load_str(file: &str, text: &str, base_dir: &Path, cpus: CpuPolicy) -> Result<Loaded, ConfigErrors> {
    let mut cx = Ctx { file, text, base_dir, problems: Vec::new() };
    let shape: file::FileConfig = match toml::from_str(text) {
        Ok(shape) => shape,
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            let field = field_at(text, span.start);
            cx.error(span, &field, e.message().trim_end());
            return Err(ConfigErrors(cx.problems));
        }
    };
    let config = cx.config(shape, PathBuf::from(file), cpus);
    let (errors, warnings): (Vec<_>, Vec<_>) = cx.problems.into_iter().partition(|p| p.severity == Severity::Error);
    match config {
        Some(config) if errors.is_empty() => Ok(Loaded { config, warnings }),
        _ => Err(ConfigErrors(errors)),
    }
}

/// Names the field on the line holding byte `pos`, for errors the TOML parser reports: the key
/// on that line, qualified by the table it sits in (`class[1].ports_per_phone`).
fn field_at(text: &str, pos: usize) -> String {
    let pos = pos.min(text.len());
    let line_start = text[..pos].rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("").trim();
    let mut table = String::new();
    let mut class_count = 0usize;
    for header in text[..line_start].lines().map(str::trim) {
        if header == "[[class]]" {
            class_count += 1;
            table = format!("class[{}]", class_count - 1);
        } else if let Some(name) = header.strip_prefix('[').and_then(|h| h.split(']').next()) {
            if !name.starts_with('[') {
                table = name.trim().to_owned();
            }
        }
    }
    if line.starts_with('[') {
        return if line == "[[class]]" {
            format!("class[{class_count}]")
        } else {
            line.trim_matches(['[', ']']).to_owned()
        };
    }
    let key = line.split('=').next().unwrap_or("").trim().trim_matches('"');
    match (table.is_empty(), key.is_empty()) {
        (_, true) if table.is_empty() => "(file)".into(),
        (_, true) => table,
        (true, false) => key.to_owned(),
        (false, false) => format!("{table}.{key}"),
    }
}

struct Ctx<'a> {
    file: &'a str,
    text: &'a str,
    base_dir: &'a Path,
    problems: Vec<ConfigError>,
}

impl Ctx<'_> {
    fn line(&self, span: &Range<usize>) -> usize {
        let end = span.start.min(self.text.len());
        self.text.as_bytes()[..end].iter().filter(|&&b| b == b'\n').count() + 1
    }

    fn push(&mut self, span: Range<usize>, field: &str, reason: impl Display, severity: Severity) {
        self.problems.push(ConfigError {
            file: self.file.to_owned(),
            line: self.line(&span),
            field: field.to_owned(),
            reason: reason.to_string(),
            severity,
        });
    }

    fn error(&mut self, span: Range<usize>, field: &str, reason: impl Display) {
        self.push(span, field, reason, Severity::Error);
    }

    fn warn(&mut self, span: Range<usize>, field: &str, reason: impl Display) {
        self.push(span, field, reason, Severity::Warning);
    }

    /// Parses a text leaf with `FromStr`, recording the error.
    fn parse<T: FromStr>(&mut self, value: &Text, field: &str, what: &str) -> Option<T>
    where
        T::Err: Display,
    {
        match value.get_ref().trim().parse::<T>() {
            Ok(v) => Some(v),
            Err(e) => {
                self.error(value.span(), field, format_args!("`{}` is not {what}: {e}", value.get_ref()));
                None
            }
        }
    }

    fn address(&mut self, value: &Text, field: &str) -> Option<Ipv4Addr> {
        self.parse(value, field, "an IPv4 address")
    }

    fn socket(&mut self, value: Option<&Text>, field: &str, default: &str) -> SocketAddr {
        let fallback = default.parse().expect("built-in default socket address parses");
        value.map_or(Some(fallback), |v| self.parse(v, field, "an address:port")).unwrap_or(fallback)
    }

    /// An interface address with its subnet, `100.64.0.1/16`: not the subnet's network or broadcast.
    fn interface_net(&mut self, value: &Text, field: &str) -> Option<Ipv4Net> {
        let net: Ipv4Net = self.parse(value, field, "an IPv4 address with a prefix length (a.b.c.d/n)")?;
        if net.prefix_len() < 31 && (net.addr() == net.network() || net.addr() == net.broadcast()) {
            self.error(
                value.span(),
                field,
                format_args!("{} is the network or broadcast address of {}", net.addr(), net.trunc()),
            );
            return None;
        }
        Some(net)
    }

    /// A pool, `100.64.16.0/20`: no host bits, at least a /8 and at most a single address.
    fn pool(&mut self, value: &Text, field: &str) -> Option<Ipv4Net> {
        let net: Ipv4Net = self.parse(value, field, "an IPv4 network (a.b.c.d/n)")?;
        if net.addr() != net.network() {
            self.error(value.span(), field, format_args!("{net} has host bits set; did you mean {}?", net.trunc()));
            return None;
        }
        if net.prefix_len() < 8 {
            self.error(value.span(), field, format_args!("{net} is larger than a /8"));
            return None;
        }
        Some(net)
    }

    fn duration(&mut self, value: Option<&Text>, field: &str, default: Duration, range: Range<Duration>) -> Duration {
        let Some(value) = value else { return default };
        let Some(d) = self.parse::<humantime::Duration>(value, field, "a duration (such as 90s, 10m, 1h)") else {
            return default;
        };
        let d: Duration = d.into();
        if !range.contains(&d) {
            self.error(
                value.span(),
                field,
                format_args!(
                    "{} is outside {}..{}",
                    humantime::format_duration(d),
                    humantime::format_duration(range.start),
                    humantime::format_duration(range.end)
                ),
            );
            return default;
        }
        d
    }

    fn number<T: Copy + PartialOrd + Display>(
        &mut self,
        value: Option<&Spanned<T>>,
        field: &str,
        default: T,
        min: T,
        max: T,
    ) -> T {
        let Some(value) = value else { return default };
        let v = *value.get_ref();
        if v < min || v > max {
            self.error(value.span(), field, format_args!("{v} is outside {min}..={max}"));
            return default;
        }
        v
    }

    fn flag(value: Option<&Spanned<bool>>, default: bool) -> bool {
        value.map_or(default, |v| *v.get_ref())
    }

    fn choice<T: Copy>(&mut self, value: Option<&Text>, field: &str, default: T, options: &[(&str, T)]) -> T {
        let Some(value) = value else { return default };
        if let Some((_, v)) = options.iter().find(|(name, _)| *name == value.get_ref()) {
            return *v;
        }
        let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
        self.error(value.span(), field, format_args!("`{}` is not one of {}", value.get_ref(), names.join(", ")));
        default
    }

    /// A path; relative ones are taken from the configuration file's directory.
    fn path(&mut self, value: Option<&Text>, field: &str, default: &str) -> PathBuf {
        let text = value.map_or(default, |v| v.get_ref().as_str());
        if text.is_empty() || text.contains('\0') {
            if let Some(v) = value {
                self.error(v.span(), field, "a path must be non-empty text");
            }
            return PathBuf::from(default);
        }
        let p = PathBuf::from(text);
        if p.is_absolute() {
            p
        } else {
            self.base_dir.join(p)
        }
    }

    fn interface_name(&mut self, value: &Text, field: &str) -> String {
        let name = value.get_ref();
        let valid = !name.is_empty()
            && name.len() <= 15
            && name != "."
            && name != ".."
            && name.bytes().all(|b| b.is_ascii_graphic() && b != b'/' && b != b':');
        if !valid {
            self.error(
                value.span(),
                field,
                format_args!("`{name}` is not an interface name (1-15 printable characters, no / or :)"),
            );
        }
        name.clone()
    }

    fn token(
        &mut self,
        inline: Option<&Text>,
        from_file: Option<&Text>,
        field: &str,
        table_span: Range<usize>,
        required: bool,
    ) -> Option<TokenSource> {
        match (inline, from_file) {
            (Some(t), None) => {
                if t.get_ref().len() < 16 || t.get_ref().chars().any(char::is_whitespace) {
                    self.error(
                        t.span(),
                        &format!("{field}token"),
                        "a token must be at least 16 characters with no white space",
                    );
                }
                Some(TokenSource::Inline(t.get_ref().clone()))
            }
            (None, Some(f)) => Some(TokenSource::File(self.path(Some(f), &format!("{field}token_file"), ""))),
            (Some(t), Some(_)) => {
                self.error(t.span(), &format!("{field}token"), "give either the token or token_file, not both");
                None
            }
            (None, None) => {
                if required {
                    self.error(
                        table_span,
                        &format!("{field}token"),
                        "an authentication token is required: set token or token_file",
                    );
                }
                None
            }
        }
    }

    fn mac_list(&mut self, values: Option<&Vec<Text>>, field: &str) -> Vec<MacAddr> {
        let mut out = Vec::new();
        for (i, v) in values.into_iter().flatten().enumerate() {
            let name = format!("{field}[{i}]");
            if let Some(mac) = self.parse::<MacAddr>(v, &name, "a MAC address") {
                if mac.is_group() || mac.is_zero() {
                    self.error(v.span(), &name, format_args!("{mac} is a group or zero address, which no phone has"));
                } else {
                    out.push(mac);
                }
            }
        }
        out
    }

    fn config(&mut self, f: file::FileConfig, source: PathBuf, cpus: CpuPolicy) -> Option<Config> {
        let lan_span = f.lan.span();
        let lan_file = f.lan.get_ref();
        let lan_interface = self.interface_name(&lan_file.interface, "lan.interface");
        let lan_address = self.interface_net(&lan_file.address, "lan.address");

        let wan_file = f.wan.get_ref();
        let wan_interface = self.interface_name(&wan_file.interface, "wan.interface");
        if wan_interface == lan_interface {
            self.error(
                wan_file.interface.span(),
                "wan.interface",
                "the WAN interface must differ from the LAN interface",
            );
        }
        let wan_address = self.interface_net(&wan_file.address, "wan.address");
        let next_hop = self.address(&wan_file.next_hop, "wan.next_hop");
        if let (Some(wan), Some(hop)) = (wan_address, next_hop) {
            if !wan.contains(&hop) || hop == wan.addr() || hop == wan.broadcast() || hop == wan.network() {
                self.error(
                    wan_file.next_hop.span(),
                    "wan.next_hop",
                    format_args!("{hop} must be another host of the WAN subnet {}", wan.trunc()),
                );
            }
        }
        if let (Some(lan), Some(wan)) = (lan_address, wan_address) {
            if overlaps(&lan.trunc(), &wan.trunc()) {
                self.error(
                    wan_file.address.span(),
                    "wan.address",
                    format_args!("WAN subnet {} overlaps LAN subnet {}", wan.trunc(), lan.trunc()),
                );
            }
        }

        let store = self.store(f.store.as_ref());
        let logging = self.logging(f.logging.as_ref());
        let dataplane = self.dataplane(f.dataplane.as_ref(), cpus);
        let dhcp = self.dhcp(f.dhcp.as_ref());
        let lan_ip = lan_address.map_or(Ipv4Addr::UNSPECIFIED, |n| n.addr());
        let tftp = self.tftp(f.tftp.as_ref(), lan_ip);
        let preprov = self.preprov(f.preprov.as_ref());
        let provisioning = self.provisioning(f.provisioning.as_ref());
        let management = self.management(&f.management);

        if f.classes.is_empty() {
            self.error(lan_span, "class", "no [[class]] is defined: at least one phone class is needed");
        }
        let classes = self.classes(&f.classes, lan_address, wan_address, next_hop);

        Some(Config {
            source,
            lan: Lan { interface: lan_interface, address: lan_address? },
            wan: Wan { interface: wan_interface, address: wan_address?, next_hop: next_hop? },
            store,
            logging,
            dataplane,
            dhcp,
            tftp,
            preprov,
            provisioning,
            management: management?,
            classes,
        })
    }

    fn store(&mut self, s: Option<&Spanned<file::StoreFile>>) -> Store {
        let s = s.map(Spanned::get_ref);
        Store {
            path: self.path(s.and_then(|s| s.path.as_ref()), "store.path", "/var/lib/dialtone/dialtone.redb"),
            group_commit_wait: self.duration(
                s.and_then(|s| s.group_commit_wait.as_ref()),
                "store.group_commit_wait",
                Duration::from_millis(1),
                Duration::ZERO..Duration::from_millis(101),
            ),
            group_commit_max: self.number(
                s.and_then(|s| s.group_commit_max.as_ref()),
                "store.group_commit_max",
                1024,
                1,
                65536,
            ),
            history_retention: self.duration(
                s.and_then(|s| s.history_retention.as_ref()),
                "store.history_retention",
                Duration::from_secs(90 * 86400),
                Duration::from_secs(3600)..Duration::from_secs(10 * 365 * 86400),
            ),
        }
    }

    fn logging(&mut self, l: Option<&Spanned<file::LoggingFile>>) -> Logging {
        let l = l.map(Spanned::get_ref);
        Logging {
            level: self.choice(
                l.and_then(|l| l.level.as_ref()),
                "logging.level",
                LogLevel::Info,
                &[
                    ("error", LogLevel::Error),
                    ("warn", LogLevel::Warn),
                    ("info", LogLevel::Info),
                    ("debug", LogLevel::Debug),
                    ("trace", LogLevel::Trace),
                ],
            ),
            format: self.choice(
                l.and_then(|l| l.format.as_ref()),
                "logging.format",
                LogFormat::Text,
                &[("text", LogFormat::Text), ("json", LogFormat::Json)],
            ),
        }
    }

    fn dataplane(&mut self, d: Option<&Spanned<file::DataplaneFile>>, policy: CpuPolicy) -> Dataplane {
        let table_span = d.map_or(0..0, Spanned::span);
        let d = d.map(Spanned::get_ref);
        let mut cpus = Vec::new();
        match d.and_then(|d| d.cpus.as_ref()) {
            None => cpus.push(0),
            Some(list) if list.get_ref().is_empty() => {
                self.error(list.span(), "dataplane.cpus", "list at least one CPU id for the dataplane workers");
            }
            Some(list) => {
                for (i, cpu) in list.get_ref().iter().enumerate() {
                    let id = *cpu.get_ref();
                    let field = format!("dataplane.cpus[{i}]");
                    if cpus.contains(&id) {
                        self.error(cpu.span(), &field, format_args!("CPU {id} is listed twice"));
                        continue;
                    }
                    match policy {
                        CpuPolicy::Refuse(online) if !online.contains(&id) => {
                            self.error(
                                cpu.span(),
                                &field,
                                format_args!("CPU {id} is not online on this machine (online: {online:?})"),
                            );
                        }
                        CpuPolicy::Warn(online) if !online.contains(&id) => {
                            self.warn(cpu.span(), &field, format_args!("CPU {id} is not online on this machine (online: {online:?}); `run` will refuse it here"));
                        }
                        _ => {}
                    }
                    cpus.push(id);
                }
            }
        }
        let frames_per_worker = self.number(
            d.and_then(|d| d.frames_per_worker.as_ref()),
            "dataplane.frames_per_worker",
            16384,
            512,
            1 << 20,
        );
        if !frames_per_worker.is_power_of_two() {
            self.error(
                table_span.clone(),
                "dataplane.frames_per_worker",
                format_args!("{frames_per_worker} is not a power of two"),
            );
        }
        let control_ring =
            self.number(d.and_then(|d| d.control_ring.as_ref()), "dataplane.control_ring", 4096, 64, 1 << 20);
        if !control_ring.is_power_of_two() {
            self.error(
                table_span.clone(),
                "dataplane.control_ring",
                format_args!("{control_ring} is not a power of two"),
            );
        }
        let frame_size = self.number(d.and_then(|d| d.frame_size.as_ref()), "dataplane.frame_size", 2048, 2048, 4096);
        if frame_size != 2048 && frame_size != 4096 {
            self.error(table_span, "dataplane.frame_size", format_args!("{frame_size} is neither 2048 nor 4096"));
        }
        Dataplane {
            enabled: Self::flag(d.and_then(|d| d.enabled.as_ref()), true),
            cpus,
            xdp_mode: self.choice(
                d.and_then(|d| d.xdp_mode.as_ref()),
                "dataplane.xdp_mode",
                XdpMode::Auto,
                &[("auto", XdpMode::Auto), ("native", XdpMode::Native), ("generic", XdpMode::Generic)],
            ),
            bind_mode: self.choice(
                d.and_then(|d| d.bind_mode.as_ref()),
                "dataplane.bind_mode",
                BindMode::Auto,
                &[("auto", BindMode::Auto), ("zero-copy", BindMode::ZeroCopy), ("copy", BindMode::Copy)],
            ),
            batch_size: self.number(d.and_then(|d| d.batch_size.as_ref()), "dataplane.batch_size", 64, 1, 256),
            frames_per_worker,
            frame_size,
            fragment_slots: self.number(
                d.and_then(|d| d.fragment_slots.as_ref()),
                "dataplane.fragment_slots",
                1024,
                16,
                65536,
            ),
            fragment_timeout: self.duration(
                d.and_then(|d| d.fragment_timeout.as_ref()),
                "dataplane.fragment_timeout",
                Duration::from_secs(2),
                Duration::from_millis(100)..Duration::from_secs(61),
            ),
            control_ring,
            neighbour_refresh: self.duration(
                d.and_then(|d| d.neighbour_refresh.as_ref()),
                "dataplane.neighbour_refresh",
                Duration::from_secs(1),
                Duration::from_millis(100)..Duration::from_secs(3601),
            ),
        }
    }

    fn dhcp(&mut self, d: Option<&Spanned<file::DhcpFile>>) -> Dhcp {
        let d = d.map(Spanned::get_ref);
        let mut dns = Vec::new();
        if let Some(list) = d.and_then(|d| d.dns.as_ref()) {
            for (i, v) in list.get_ref().iter().enumerate() {
                dns.extend(self.address(v, &format!("dhcp.dns[{i}]")));
            }
        }
        let domain_name = d.and_then(|d| d.domain_name.as_ref()).map(|v| {
            if !is_dns_name(v.get_ref()) {
                self.error(v.span(), "dhcp.domain_name", format_args!("`{}` is not a domain name", v.get_ref()));
            }
            v.get_ref().clone()
        });
        Dhcp {
            enabled: Self::flag(d.and_then(|d| d.enabled.as_ref()), true),
            dns,
            domain_name,
            // RFC 6888 REQ-8: an address (and so its port block) rests at least 120 s before reuse.
            quarantine: self.duration(
                d.and_then(|d| d.quarantine.as_ref()),
                "dhcp.quarantine",
                Duration::from_secs(600),
                Duration::from_secs(120)..Duration::from_secs(30 * 86400),
            ),
            offer_hold: self.duration(
                d.and_then(|d| d.offer_hold.as_ref()),
                "dhcp.offer_hold",
                Duration::from_secs(30),
                Duration::from_secs(1)..Duration::from_secs(601),
            ),
            expiry_sweep: self.duration(
                d.and_then(|d| d.expiry_sweep.as_ref()),
                "dhcp.expiry_sweep",
                Duration::from_secs(10),
                Duration::from_secs(1)..Duration::from_secs(3601),
            ),
            allow_macs: self.mac_list(d.and_then(|d| d.allow_macs.as_ref()), "dhcp.allow_macs"),
            deny_macs: self.mac_list(d.and_then(|d| d.deny_macs.as_ref()), "dhcp.deny_macs"),
        }
    }

    fn tftp(&mut self, t: Option<&Spanned<file::TftpFile>>, lan_ip: Ipv4Addr) -> Tftp {
        let t = t.map(Spanned::get_ref);
        let port = self.number(t.and_then(|t| t.port.as_ref()), "tftp.port", 69, 1, 65535);
        let mut writable_dirs = Vec::new();
        for (i, v) in t.and_then(|t| t.writable_dirs.as_ref()).into_iter().flatten().enumerate() {
            let p = PathBuf::from(v.get_ref());
            if !is_confined_relative(&p) {
                self.error(
                    v.span(),
                    &format!("tftp.writable_dirs[{i}]"),
                    "must be a relative path inside the class root, without `..`",
                );
            } else {
                writable_dirs.push(p);
            }
        }
        Tftp {
            enabled: Self::flag(t.and_then(|t| t.enabled.as_ref()), true),
            listen: SocketAddr::from((lan_ip, port)),
            threads: self.number(t.and_then(|t| t.threads.as_ref()), "tftp.threads", 2, 1, 64),
            max_transfers: self.number(t.and_then(|t| t.max_transfers.as_ref()), "tftp.max_transfers", 4096, 1, 65536),
            // RFC 2349: the timeout option is 1..=255 seconds.
            timeout: self.duration(
                t.and_then(|t| t.timeout.as_ref()),
                "tftp.timeout",
                Duration::from_secs(1),
                Duration::from_millis(100)..Duration::from_secs(256),
            ),
            retries: self.number(t.and_then(|t| t.retries.as_ref()), "tftp.retries", 5, 1, 50),
            // RFC 2348: 8..=65464 octets.
            max_blksize: self.number(t.and_then(|t| t.max_blksize.as_ref()), "tftp.max_blksize", 1468, 8, 65464),
            // RFC 7440: 1..=65535 blocks.
            max_windowsize: self.number(t.and_then(|t| t.max_windowsize.as_ref()), "tftp.max_windowsize", 64, 1, 65535),
            writable_dirs,
        }
    }

    fn preprov(&mut self, p: Option<&Spanned<file::PreprovFile>>) -> Preprov {
        let span = p.map_or(0..0, Spanned::span);
        let p = p.map(Spanned::get_ref);
        let tls = match (p.and_then(|p| p.tls_cert.as_ref()), p.and_then(|p| p.tls_key.as_ref())) {
            (Some(cert), Some(key)) => {
                Some((self.path(Some(cert), "preprov.tls_cert", ""), self.path(Some(key), "preprov.tls_key", "")))
            }
            (None, None) => None,
            (Some(v), None) | (None, Some(v)) => {
                self.error(v.span(), "preprov.tls_cert", "tls_cert and tls_key go together");
                None
            }
        };
        let rate_per_source =
            self.number(p.and_then(|p| p.rate_per_source.as_ref()), "preprov.rate_per_source", 20, 1, 1_000_000);
        Preprov {
            enabled: Self::flag(p.and_then(|p| p.enabled.as_ref()), false),
            listen: self.socket(p.and_then(|p| p.listen.as_ref()), "preprov.listen", "0.0.0.0:8080"),
            tls,
            threads: self.number(p.and_then(|p| p.threads.as_ref()), "preprov.threads", 4, 1, 256),
            max_connections: self.number(
                p.and_then(|p| p.max_connections.as_ref()),
                "preprov.max_connections",
                10_000,
                1,
                1_000_000,
            ),
            rate_per_source,
            burst_per_source: self.number(
                p.and_then(|p| p.burst_per_source.as_ref()),
                "preprov.burst_per_source",
                rate_per_source * 2,
                1,
                1_000_000,
            ),
            read_timeout: self.duration(
                p.and_then(|p| p.read_timeout.as_ref()),
                "preprov.read_timeout",
                Duration::from_secs(5),
                Duration::from_millis(100)..Duration::from_secs(301),
            ),
            idle_timeout: self.duration(
                p.and_then(|p| p.idle_timeout.as_ref()),
                "preprov.idle_timeout",
                Duration::from_secs(30),
                Duration::from_secs(1)..Duration::from_secs(3601),
            ),
            max_header_bytes: self.number(
                p.and_then(|p| p.max_header_bytes.as_ref()),
                "preprov.max_header_bytes",
                8192,
                1024,
                1 << 20,
            ),
            max_body_bytes: self.number(
                p.and_then(|p| p.max_body_bytes.as_ref()),
                "preprov.max_body_bytes",
                64 << 20,
                1024,
                1 << 32,
            ),
            admin_token: self.token(
                p.and_then(|p| p.admin_token.as_ref()),
                p.and_then(|p| p.admin_token_file.as_ref()),
                "preprov.admin_",
                span,
                false,
            ),
        }
    }

    fn provisioning(&mut self, p: Option<&Spanned<file::ProvisioningFile>>) -> Provisioning {
        let p = p.map(Spanned::get_ref);
        let mut next_servers = Vec::new();
        for (i, v) in p.and_then(|p| p.next_servers.as_ref()).into_iter().flatten().enumerate() {
            let text = v.get_ref().trim();
            if text.is_empty() || text.len() > 2048 || text.chars().any(|c| c.is_whitespace() || c.is_control()) {
                self.error(
                    v.span(),
                    &format!("provisioning.next_servers[{i}]"),
                    "must be a URL or host[:port] without spaces",
                );
            } else {
                next_servers.push(text.to_owned());
            }
        }
        Provisioning {
            enabled: Self::flag(p.and_then(|p| p.enabled.as_ref()), false),
            listen: self.socket(p.and_then(|p| p.listen.as_ref()), "provisioning.listen", "0.0.0.0:8081"),
            next_servers,
        }
    }

    fn management(&mut self, m: &Spanned<file::ManagementFile>) -> Option<Management> {
        let span = m.span();
        let m = m.get_ref();
        let listen = self.socket(m.listen.as_ref(), "management.listen", "127.0.0.1:9000");
        let token = self.token(m.token.as_ref(), m.token_file.as_ref(), "management.", span, true)?;
        Some(Management { listen, token })
    }

    fn classes(
        &mut self,
        list: &[Spanned<file::ClassFile>],
        lan: Option<Ipv4Net>,
        wan: Option<Ipv4Net>,
        next_hop: Option<Ipv4Addr>,
    ) -> Vec<PhoneClass> {
        let mut out: Vec<PhoneClass> = Vec::new();
        let mut names: HashMap<String, usize> = HashMap::new();
        let mut lan_pools: Vec<(usize, Ipv4Net)> = Vec::new();
        let mut public_pools: Vec<(usize, Ipv4Net)> = Vec::new();
        let mut exact_rules: HashMap<Vec<u8>, usize> = HashMap::new();
        for (i, spanned) in list.iter().enumerate() {
            let c = spanned.get_ref();
            let at = |field: &str| format!("class[{i}].{field}");

            let name = c.name.get_ref().clone();
            if name.is_empty()
                || name.len() > 64
                || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
            {
                self.error(
                    c.name.span(),
                    &at("name"),
                    format_args!("`{name}` must be 1-64 letters, digits, `-`, `_` or `.`"),
                );
            } else if let Some(first) = names.insert(name.clone(), i) {
                self.error(c.name.span(), &at("name"), format_args!("`{name}` is already the name of class[{first}]"));
            }

            let vendor_class = self.vendor_class(&c.vendor_class, &at("vendor_class"));
            if let Some(VendorClassRule::Exact(text)) = &vendor_class {
                if let Some(first) = exact_rules.insert(text.clone(), i) {
                    self.error(
                        c.vendor_class.span(),
                        &at("vendor_class"),
                        format_args!(
                            "class[{first}] already matches this exact vendor class, so this class could never match"
                        ),
                    );
                }
            }

            let mut mac_oui = Vec::new();
            for (j, v) in c.mac_oui.iter().flatten().enumerate() {
                mac_oui.extend(self.parse::<Oui>(v, &at(&format!("mac_oui[{j}]")), "an OUI"));
            }

            let lan_pool = self.pool(&c.lan_pool, &at("lan_pool"));
            if let (Some(pool), Some(lan)) = (lan_pool, lan) {
                if !lan.trunc().contains(&pool) {
                    self.error(
                        c.lan_pool.span(),
                        &at("lan_pool"),
                        format_args!("{pool} is not inside the LAN subnet {}", lan.trunc()),
                    );
                } else if pool.contains(&lan.addr()) {
                    self.warn(
                        c.lan_pool.span(),
                        &at("lan_pool"),
                        format_args!(
                            "{pool} holds the gateway's LAN address {}; that address is never leased",
                            lan.addr()
                        ),
                    );
                }
                if let Some((j, other)) = lan_pools.iter().find(|(_, o)| overlaps(o, &pool)) {
                    self.error(
                        c.lan_pool.span(),
                        &at("lan_pool"),
                        format_args!("{pool} overlaps class[{j}].lan_pool {other}"),
                    );
                }
                lan_pools.push((i, pool));
            }

            let public_pool = self.pool(&c.public_pool, &at("public_pool"));
            if let Some(pool) = public_pool {
                if let Some((j, other)) = public_pools.iter().find(|(_, o)| overlaps(o, &pool)) {
                    self.error(
                        c.public_pool.span(),
                        &at("public_pool"),
                        format_args!("{pool} overlaps class[{j}].public_pool {other}"),
                    );
                }
                if let Some(wan) = wan {
                    if pool.contains(&wan.addr()) {
                        self.error(
                            c.public_pool.span(),
                            &at("public_pool"),
                            format_args!("{pool} contains the gateway's WAN address {}", wan.addr()),
                        );
                    }
                }
                if let Some(hop) = next_hop.filter(|h| pool.contains(h)) {
                    self.error(
                        c.public_pool.span(),
                        &at("public_pool"),
                        format_args!("{pool} contains the WAN next hop {hop}"),
                    );
                }
                if let Some(lan) = lan.filter(|l| overlaps(&l.trunc(), &pool)) {
                    self.error(
                        c.public_pool.span(),
                        &at("public_pool"),
                        format_args!("{pool} overlaps the LAN subnet {}", lan.trunc()),
                    );
                }
                public_pools.push((i, pool));
            }

            let ports = *c.ports_per_phone.get_ref();
            let plan = match (lan_pool, public_pool) {
                (Some(lp), Some(pp)) => match PortBlockPlan::new(pool_size(&lp), pp.network(), pool_size(&pp), ports) {
                    Ok(plan) => Some(plan),
                    Err(e @ crate::portblock::PlanError::BlockSize(_)) => {
                        self.error(c.ports_per_phone.span(), &at("ports_per_phone"), e);
                        None
                    }
                    Err(e) => {
                        self.error(c.lan_pool.span(), &at("lan_pool"), e);
                        None
                    }
                },
                _ => {
                    if PortBlockPlan::new(1, Ipv4Addr::UNSPECIFIED, 1, ports).is_err() {
                        self.error(
                            c.ports_per_phone.span(),
                            &at("ports_per_phone"),
                            format_args!("{ports} is not a power of two in 16..=32768"),
                        );
                    }
                    None
                }
            };

            let tftp_server = match &c.tftp_server {
                Some(v) => self.address(v, &at("tftp_server")),
                None => lan.map(|l| l.addr()),
            };
            let boot_file = c.boot_file.as_ref().map(|v| {
                let text = v.get_ref();
                if text.is_empty() || text.len() > 255 || text.contains('\0') {
                    self.error(v.span(), &at("boot_file"), "must be 1-255 bytes with no NUL");
                }
                text.clone()
            });
            let lease_time = self.duration(
                c.lease_time.as_ref(),
                &at("lease_time"),
                Duration::from_secs(3600),
                Duration::from_secs(60)..Duration::from_secs(u64::from(u32::MAX)),
            );
            let port_option = match &c.port_option {
                None => Some(159),
                Some(v) if *v.get_ref() == 0 => None,
                Some(v) => {
                    let code = *v.get_ref();
                    // Codes dialtone itself sends or that carry DHCP's own machinery.
                    const TAKEN: [u32; 18] = [1, 3, 6, 12, 15, 43, 50, 51, 52, 53, 54, 55, 57, 58, 59, 66, 67, 82];
                    if code > 254 || TAKEN.contains(&code) || code == 150 {
                        self.error(v.span(), &at("port_option"), format_args!("option {code} is not free to carry port parameters (use 159, another free code in 1..=254, or 0 for none)"));
                    }
                    u8::try_from(code).ok()
                }
            };
            let tftp_root = self.path(c.tftp_root.as_ref(), &at("tftp_root"), &format!("/srv/dialtone/tftp/{name}"));
            let mut config_files = Vec::new();
            match &c.config_files {
                None => config_files.push("{mac}.cfg".to_owned()),
                Some(list) => {
                    for (j, v) in list.iter().enumerate() {
                        let pattern = v.get_ref();
                        let valid = (pattern.contains("{mac}") || pattern.contains("{MAC}"))
                            && is_confined_relative(Path::new(pattern));
                        if !valid {
                            self.error(
                                v.span(),
                                &at(&format!("config_files[{j}]")),
                                format_args!(
                                    "`{pattern}` must contain {{mac}} or {{MAC}} and be a relative name without `..`"
                                ),
                            );
                        } else {
                            config_files.push(pattern.clone());
                        }
                    }
                }
            }
            let parameters: BTreeMap<String, String> =
                c.parameters.iter().flatten().map(|(k, v)| (k.clone(), v.get_ref().clone())).collect();

            if let (Some(vendor_class), Some(lan_pool), Some(public_pool), Some(plan), Some(tftp_server)) =
                (vendor_class, lan_pool, public_pool, plan, tftp_server)
            {
                out.push(PhoneClass {
                    name,
                    vendor_class,
                    mac_oui,
                    lan_pool,
                    public_pool,
                    plan,
                    tftp_server,
                    boot_file,
                    lease_time,
                    port_option,
                    vendor_port_option: Self::flag(c.vendor_port_option.as_ref(), false),
                    tftp_root,
                    config_files,
                    parameters,
                });
            }
        }
        out
    }

    fn vendor_class(&mut self, rule: &Spanned<file::VendorClassFile>, field: &str) -> Option<VendorClassRule> {
        let (text, build): (&String, RuleBuilder) = match rule.get_ref() {
            file::VendorClassFile::Exact(t) => (t, |t| Ok(VendorClassRule::Exact(t.as_bytes().to_vec()))),
            file::VendorClassFile::Prefix(t) => (t, |t| Ok(VendorClassRule::Prefix(t.as_bytes().to_vec()))),
            file::VendorClassFile::Regex(t) => (t, |t| {
                regex::bytes::RegexBuilder::new(&format!("^(?:{t})$"))
                    .size_limit(1 << 20)
                    .build()
                    .map(VendorClassRule::Regex)
                    .map_err(|e| format!("the regex does not compile: {e}"))
            }),
        };
        // Option 60 is 1..=255 octets (RFC 2132 section 9.13).
        if text.is_empty() || text.len() > 255 {
            self.error(rule.span(), field, "must be 1-255 bytes");
            return None;
        }
        match build(text) {
            Ok(rule) => Some(rule),
            Err(e) => {
                self.error(rule.span(), field, e);
                None
            }
        }
    }
}

/// Turns the text of a vendor-class rule into the rule, or says why it cannot.
type RuleBuilder = fn(&str) -> Result<VendorClassRule, String>;

fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

fn pool_size(net: &Ipv4Net) -> u32 {
    // Prefixes are at least /8 (checked), so the size fits.
    1u32 << (32 - u32::from(net.prefix_len()))
}

fn is_confined_relative(p: &Path) -> bool {
    !p.as_os_str().is_empty() && p.components().all(|c| matches!(c, Component::Normal(_)))
}

/// RFC 1123 host name: labels of letters, digits and inner hyphens, 1-63 each, 253 in all.
pub(crate) fn is_dns_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}
