//! The phone's boot, step by step (claims 000: 13-24; claims 001: 3-5, 10-14):
//!
//! 1. `dhcp` — network configuration by DHCP with option 60, asking for 66/67/150/43/159;
//! 2. `discovery` — who provisions me: DHCP's telephony provisioning resources (claims 17, 23),
//!    else the provisioning contact in NVRAM, else the pre-provisioning inquiry with the device ID
//!    (claims 14, 20), whose answer is stored in NVRAM (claims 16, 18, 22, 24);
//! 3. `provisioning` — the provisioning inquiry (claims 13, 19): parameters, or next servers;
//! 4. `firmware` — the operational software over TFTP, size and SHA-256 checked, version recorded;
//! 5. `line` — UDP from ports of the assigned block to a far-end responder, replies checked.
//!
//! The steps run over a [`Link`] (how DHCP datagrams move and how a lease is applied): the
//! single agent uses the interface it owns, the fleet simulator shares one interface among
//! thousands of phones. Everything after DHCP uses ordinary sockets bound to the leased address.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use dialtone_http::ClientRequest;

use crate::dhcp::{self, DhcpProvisioning, Lease};
use crate::nvram::Nvram;
use crate::provision::{self, FirmwarePlan, ProvisioningAnswer};
use crate::tftp;

/// The steps, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Step {
    /// Lease by DHCP.
    Dhcp,
    /// Finding the provisioning entity.
    Discovery,
    /// The provisioning inquiry.
    Provisioning,
    /// Operational software.
    Firmware,
    /// Traffic from the port block.
    Line,
}

impl Step {
    /// Every step, in order.
    pub const ALL: [Self; 5] = [Self::Dhcp, Self::Discovery, Self::Provisioning, Self::Firmware, Self::Line];

    /// The step's name in logs, `--until` and reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Dhcp => "dhcp",
            Self::Discovery => "discovery",
            Self::Provisioning => "provisioning",
            Self::Firmware => "firmware",
            Self::Line => "line",
        }
    }

    /// Parses a name of [`Step::name`].
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// How the phone found its provisioning entity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DiscoveryPath {
    /// Telephony provisioning resources in the DHCP answer (claims 000: 17, 23).
    DhcpOptions,
    /// The provisioning contact already in NVRAM (claims 000: 16, 18).
    NvramContact,
    /// Asked the pre-provisioning server (claims 000: 14, 20) and stored the answer.
    PreProvisioning,
}

impl DiscoveryPath {
    /// The path's name in logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::DhcpOptions => "dhcp-options",
            Self::NvramContact => "nvram-contact",
            Self::PreProvisioning => "pre-provisioning",
        }
    }
}

/// A failed step: which one, a short reason class (for the fleet's counts) and the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("step {} failed: {message}", step.name())]
pub struct StepError {
    /// The step.
    pub step: Step,
    /// Short reason class, e.g. `no-answer`, `not-registered`, `digest-mismatch`.
    pub reason: &'static str,
    /// What happened, for a person.
    pub message: String,
}

fn fail(step: Step, reason: &'static str, message: impl Into<String>) -> StepError {
    StepError { step, reason, message: message.into() }
}

/// Knobs of the boot.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Attempts at an exchange whose server does not answer (DHCP, HTTP, TFTP).
    pub attempts: u32,
    /// First wait between attempts; doubled after each, at most 8 s.
    pub backoff: Duration,
    /// Wait for one answer (DHCP reply, HTTP response, TFTP packet).
    pub timeout: Duration,
    /// Last step to run.
    pub until: Step,
    /// The far-end echo responder of the line step.
    pub far_end: SocketAddr,
    /// Datagrams (each from its own port of the block) the line step sends.
    pub line_ports: u16,
    /// Most provisioning servers followed through `next_servers`.
    pub max_referrals: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            attempts: 5,
            backoff: Duration::from_millis(500),
            timeout: Duration::from_secs(2),
            until: Step::Line,
            far_end: SocketAddr::from(([203, 0, 113, 10], 7)),
            line_ports: 3,
            max_referrals: 4,
        }
    }
}

impl Settings {
    fn wait_before(&self, attempt: u32) -> Duration {
        self.backoff.saturating_mul(1 << attempt.min(5)).min(Duration::from_secs(8))
    }
}

/// How DHCP datagrams reach the server and come back, and how a lease is applied.
pub trait Link {
    /// Broadcasts a client message to port 67.
    fn send_dhcp(&mut self, bytes: &[u8]) -> std::io::Result<()>;
    /// The next datagram for this phone on port 68, or None after `timeout`.
    fn recv_dhcp(&mut self, timeout: Duration) -> std::io::Result<Option<Vec<u8>>>;
    /// Applies the lease (address on the interface, routes), so sockets can bind to it.
    fn configure(&mut self, lease: &Lease) -> std::io::Result<()>;
    /// The next datagram answering what `socket` (bound to `local`) sent, or None after
    /// `timeout`. A phone owning its interface reads the socket; the fleet, whose phones' MACs
    /// are not the interface's, reads frames the gateway addressed to those MACs elsewhere.
    fn recv_line(
        &mut self,
        socket: &UdpSocket,
        local: SocketAddrV4,
        timeout: Duration,
    ) -> std::io::Result<Option<(SocketAddr, Vec<u8>)>> {
        let _ = local;
        socket.set_read_timeout(Some(timeout.max(Duration::from_millis(1))))?;
        let mut buf = [0u8; 1500];
        match socket.recv_from(&mut buf) {
            Ok((n, from)) => Ok(Some((from, buf.get(..n).unwrap_or_default().to_vec()))),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Where the agent reports: one line per finished step, with the step's duration.
pub trait Observer {
    /// `step` finished after `elapsed`; `line` says what it did.
    fn step_done(&mut self, step: Step, elapsed: Duration, line: &str);
    /// The NVRAM changed; persist it (the single agent writes its file atomically).
    fn nvram_changed(&mut self, nvram: &Nvram) -> Result<(), String>;
}

/// What a completed boot knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Booted {
    /// The lease.
    pub lease: Lease,
    /// The discovery path, if the boot got that far.
    pub path: Option<DiscoveryPath>,
    /// The last step run.
    pub last_step: Step,
}

/// The agent's DHCP exchange: DISCOVER/REQUEST with retransmission and backoff until ACK.
pub fn obtain_lease(link: &mut dyn Link, nvram: &Nvram, xid: u32, settings: &Settings) -> Result<Lease, StepError> {
    let mac = nvram.mac_addr().map_err(|e| fail(Step::Dhcp, "nvram", e))?;
    let mut client = dhcp::Client::new(mac, &nvram.vendor_class, xid);
    let started = Instant::now();
    let io = |e: std::io::Error| fail(Step::Dhcp, "socket", format!("DHCP socket: {e}"));
    let mut naks = 0;
    let mut unanswered_requests = 0;
    let mut attempt = 0;
    while attempt < settings.attempts {
        // RFC 2131 section 4.4.1: a REQUEST that stays unanswered (its offer may have lapsed at
        // the server) sends the client back to DISCOVER.
        if client.is_requesting() {
            unanswered_requests += 1;
            if unanswered_requests > 2 {
                client.restart();
                unanswered_requests = 0;
            }
        }
        client.set_secs(u16::try_from(started.elapsed().as_secs()).unwrap_or(u16::MAX));
        link.send_dhcp(&client.message()).map_err(io)?;
        // RFC 2131 section 4.1: retransmit with exponential backoff.
        let deadline = Instant::now() + settings.timeout.max(settings.wait_before(attempt));
        attempt += 1;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let Some(datagram) = link.recv_dhcp(left).map_err(io)? else { break };
            match client.handle(&datagram) {
                dhcp::Event::Ignore => {}
                dhcp::Event::Send(request) => {
                    link.send_dhcp(&request).map_err(io)?;
                }
                dhcp::Event::Bound(lease) => return Ok(lease),
                dhcp::Event::Nak(why) => {
                    naks += 1;
                    if naks >= settings.attempts {
                        return Err(fail(Step::Dhcp, "nak", format!("the server refused every request: {why}")));
                    }
                    break;
                }
            }
        }
    }
    Err(fail(
        Step::Dhcp,
        "no-answer",
        format!(
            "no DHCP answer to {} after {} attempts (vendor class {:?})",
            nvram.mac, settings.attempts, nvram.vendor_class
        ),
    ))
}

/// A GET from `local` with retries while the server does not answer, is rate limiting (429) or
/// failing (5xx). Returns the final status and body.
fn http_get(
    step: Step,
    local: Ipv4Addr,
    contact: &str,
    path: &str,
    settings: &Settings,
) -> Result<(u16, String), StepError> {
    let addr = provision::resolve(contact).map_err(|e| fail(step, "contact", e.to_string()))?;
    let mut last = String::new();
    for attempt in 0..settings.attempts {
        if attempt > 0 {
            std::thread::sleep(settings.wait_before(attempt - 1));
        }
        let request = ClientRequest {
            method: "GET",
            addr,
            path_and_query: path,
            token: None,
            body: None,
            local: Some(local.into()),
        };
        match dialtone_http::request(&request, settings.timeout) {
            Ok((status, body)) if status == 429 || status >= 500 || status == 0 => {
                last = format!("HTTP {status}: {}", body.trim());
            }
            Ok(answer) => return Ok(answer),
            Err(e) => last = e.to_string(),
        }
    }
    Err(fail(
        step,
        "no-answer",
        format!("no answer from {contact} ({addr}) after {} attempts: {last}", settings.attempts),
    ))
}

/// Where the provisioning inquiry goes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    /// The per-phone configuration file on the DHCP-named TFTP server.
    Tftp { server: Ipv4Addr },
    /// A provisioning entry point, `host:port`.
    Contact(String),
}

/// Step 2: the discovery order of claims 000: 16-18 and 22-24.
fn discover(
    lease: &Lease,
    nvram: &mut Nvram,
    settings: &Settings,
    observer: &mut dyn Observer,
) -> Result<(DiscoveryPath, Source, String), StepError> {
    let step = Step::Discovery;
    match lease.provisioning() {
        Some(DhcpProvisioning::Tftp { server, boot_file }) => {
            let line = format!("path=dhcp-options tftp server {server}, boot file {boot_file} (claims 000: 17, 23)");
            return Ok((DiscoveryPath::DhcpOptions, Source::Tftp { server }, line));
        }
        Some(DhcpProvisioning::Url(url)) => {
            if let Some(contact) = provision::contact_of_url(&url) {
                let line = format!("path=dhcp-options provisioning URL {url} in option 43 (claims 000: 17, 23)");
                return Ok((DiscoveryPath::DhcpOptions, Source::Contact(contact), line));
            }
        }
        None => {}
    }
    if let Some(contact) = &nvram.provisioning_contact {
        let line =
            format!("path=nvram-contact provisioning contact {contact} from NVRAM, no inquiry (claims 000: 16, 18)");
        return Ok((DiscoveryPath::NvramContact, Source::Contact(contact.clone()), line));
    }
    // Claims 000: 14, 20 — the inquiry over HTTP with the device ID to the pre-provisioning
    // contact stored in NVRAM.
    let path = format!("/v1/contact/{}", nvram.device_id);
    let (status, body) = http_get(step, lease.address, &nvram.preprov_contact, &path, settings)?;
    match status {
        200 => {}
        404 => {
            return Err(fail(
                step,
                "not-registered",
                format!(
                    "device ID {} is not registered at the pre-provisioning server {} (HTTP 404)",
                    nvram.device_id, nvram.preprov_contact
                ),
            ))
        }
        other => {
            return Err(fail(
                step,
                "refused",
                format!("pre-provisioning server answered HTTP {other}: {}", body.trim()),
            ))
        }
    }
    let contact = provision::parse_contact_answer(&body).map_err(|e| fail(step, "bad-answer", e.to_string()))?;
    // Claims 000: 16, 18, 22, 24 — stored, so the next boot skips the inquiry.
    nvram.provisioning_contact = Some(contact.clone());
    observer.nvram_changed(nvram).map_err(|e| fail(step, "nvram", format!("storing the contact: {e}")))?;
    let line = format!(
        "path=pre-provisioning asked {} for device {}: provisioning contact {contact}, stored in NVRAM (claims 000: 14, 16)",
        nvram.preprov_contact, nvram.device_id
    );
    Ok((DiscoveryPath::PreProvisioning, Source::Contact(contact), line))
}

/// Step 3: the provisioning inquiry (claims 000: 13, 19), following next servers (bounded).
fn provision_inquiry(
    lease: &Lease,
    nvram: &Nvram,
    source: &Source,
    settings: &Settings,
) -> Result<(BTreeMap<String, String>, String), StepError> {
    let step = Step::Provisioning;
    let mac = nvram.mac_addr().map_err(|e| fail(step, "nvram", e))?;
    match source {
        Source::Tftp { server } => {
            let name = format!("{}.cfg", mac.to_hex12());
            let fetched = fetch_with_retries(step, lease.address, *server, &name, true, settings)?;
            let text = String::from_utf8_lossy(fetched.content.as_deref().unwrap_or_default()).into_owned();
            let parameters = provision::parse_config_file(&text);
            let line = format!("{} parameters from tftp://{server}/{name}", parameters.len());
            Ok((parameters, line))
        }
        Source::Contact(first) => {
            let mut contact = first.clone();
            let mut visited = vec![contact.clone()];
            loop {
                let path = format!("/v1/provision/{}", nvram.device_id);
                let (status, body) = http_get(step, lease.address, &contact, &path, settings)?;
                if status == 404 {
                    return Err(fail(
                        step,
                        "not-provisioned",
                        format!("{contact} has no provisioning parameters for device {} (HTTP 404)", nvram.device_id),
                    ));
                }
                if status != 200 {
                    return Err(fail(step, "refused", format!("{contact} answered HTTP {status}: {}", body.trim())));
                }
                match provision::parse_provisioning_answer(&body)
                    .map_err(|e| fail(step, "bad-answer", e.to_string()))?
                {
                    ProvisioningAnswer::Parameters(p) => {
                        let via =
                            if visited.len() > 1 { format!(" (via {})", visited.join(" -> ")) } else { String::new() };
                        let line = format!("{} parameters from http://{contact}{path}{via}", p.len());
                        return Ok((p, line));
                    }
                    ProvisioningAnswer::NextServers(servers) => {
                        let next = servers.into_iter().find(|s| !visited.contains(s));
                        match next {
                            Some(next) if visited.len() <= settings.max_referrals => {
                                visited.push(next.clone());
                                contact = next;
                            }
                            _ => {
                                return Err(fail(
                                    step,
                                    "referral-loop",
                                    format!("no parameters after asking {}", visited.join(" -> ")),
                                ))
                            }
                        }
                    }
                }
            }
        }
    }
}

fn fetch_with_retries(
    step: Step,
    local: Ipv4Addr,
    server: Ipv4Addr,
    file: &str,
    keep: bool,
    settings: &Settings,
) -> Result<tftp::Fetched, StepError> {
    let mut last = None;
    for attempt in 0..settings.attempts {
        if attempt > 0 {
            std::thread::sleep(settings.wait_before(attempt - 1));
        }
        match tftp::fetch(local, server, file, keep, settings.timeout.min(Duration::from_secs(1)), 5) {
            Ok(f) => return Ok(f),
            Err(e @ (tftp::TftpError::Timeout(..) | tftp::TftpError::Io(_))) => last = Some(e),
            Err(e) if e.is_not_found() => {
                return Err(fail(step, "not-found", format!("tftp://{server}/{file}: {e}")));
            }
            Err(e) => return Err(fail(step, "tftp", format!("tftp://{server}/{file}: {e}"))),
        }
    }
    let last = last.map_or_else(String::new, |e| e.to_string());
    Err(fail(step, "no-answer", format!("tftp://{server}/{file}: {last} ({} attempts)", settings.attempts)))
}

/// Step 4: operational software (claims 001: 12, 13, 27, 28, 42, 43).
fn firmware(
    lease: &Lease,
    nvram: &mut Nvram,
    parameters: &BTreeMap<String, String>,
    settings: &Settings,
    observer: &mut dyn Observer,
) -> Result<String, StepError> {
    let step = Step::Firmware;
    let plan = FirmwarePlan::from_parameters(parameters, lease.tftp_server, lease.boot_file.as_deref())
        .map_err(|e| fail(step, "parameters", e.to_string()))?;
    if nvram.firmware_sha256.as_deref() == Some(plan.sha256.as_str()) {
        return Ok(format!(
            "{} version {} already installed (sha256 {}), not fetched",
            plan.file,
            plan.version,
            &plan.sha256[..16]
        ));
    }
    let fetched = fetch_with_retries(step, lease.address, plan.server, &plan.file, false, settings)?;
    if let Some(announced) = fetched.announced_size.filter(|&a| a != fetched.size) {
        return Err(fail(
            step,
            "size-mismatch",
            format!("{}: announced {announced} bytes, received {}", plan.file, fetched.size),
        ));
    }
    if let Some(expected) = plan.size.filter(|&s| s != fetched.size) {
        return Err(fail(
            step,
            "size-mismatch",
            format!("{}: expected {expected} bytes, received {}; refused", plan.file, fetched.size),
        ));
    }
    let got = tftp::hex(&fetched.sha256);
    if got != plan.sha256 {
        return Err(fail(
            step,
            "digest-mismatch",
            format!(
                "{}: SHA-256 {got} does not match the expected {}; image refused, not installed",
                plan.file, plan.sha256
            ),
        ));
    }
    nvram.firmware_version = Some(plan.version.clone());
    nvram.firmware_sha256 = Some(got);
    observer.nvram_changed(nvram).map_err(|e| fail(step, "nvram", format!("recording the version: {e}")))?;
    Ok(format!(
        "{} from tftp://{}: {} bytes, sha256 verified, version {} recorded in NVRAM",
        plan.file, plan.server, fetched.size, plan.version
    ))
}

/// The ports of the block the line step sends from: first, last and evenly between.
pub fn line_ports(lo: u16, hi: u16, count: u16) -> Vec<u16> {
    let count = count.max(1);
    if count == 1 || lo == hi {
        return vec![lo];
    }
    let span = u32::from(hi - lo);
    let mut ports: Vec<u16> = (0..count).map(|i| lo + (span * u32::from(i) / u32::from(count - 1)) as u16).collect();
    ports.dedup();
    ports
}

/// Step 5: the line (claims 001: 3-5): one datagram from each chosen port of the block to the
/// far-end responder, which answers `<payload> seen <address>:<port>`; the port it saw must be
/// the one sent from (NAPPT keeps ports).
fn line(lease: &Lease, nvram: &Nvram, link: &mut dyn Link, settings: &Settings) -> Result<String, StepError> {
    let step = Step::Line;
    let ports = lease.ports.ok_or_else(|| fail(step, "no-block", "the lease carried no port block (159 or 43)"))?;
    let chosen = line_ports(ports.lo, ports.hi, settings.line_ports);
    let mut seen_addresses = Vec::new();
    for &port in &chosen {
        let socket = UdpSocket::bind(SocketAddrV4::new(lease.address, port))
            .map_err(|e| fail(step, "socket", format!("binding {}:{port}: {e}", lease.address)))?;
        let local = SocketAddrV4::new(lease.address, port);
        let payload = format!("dialtone-line {} {port}", nvram.device_id);
        let mut answered = None;
        for attempt in 0..settings.attempts {
            if attempt > 0 {
                std::thread::sleep(settings.wait_before(attempt - 1).min(Duration::from_secs(1)));
            }
            socket
                .send_to(payload.as_bytes(), settings.far_end)
                .map_err(|e| fail(step, "socket", format!("sending from port {port}: {e}")))?;
            match link.recv_line(&socket, local, settings.timeout) {
                Ok(Some((from, bytes))) if from == settings.far_end => {
                    answered = Some(String::from_utf8_lossy(&bytes).into_owned());
                    break;
                }
                Ok(_) => {}
                Err(e) => return Err(fail(step, "socket", format!("receiving on port {port}: {e}"))),
            }
        }
        let reply = answered.ok_or_else(|| {
            fail(
                step,
                "no-answer",
                format!("no echo from {} to port {port} after {} attempts", settings.far_end, settings.attempts),
            )
        })?;
        let seen = reply
            .strip_prefix(&payload)
            .and_then(|r| r.strip_prefix(" seen "))
            .and_then(|s| s.trim().parse::<SocketAddrV4>().ok())
            .ok_or_else(|| fail(step, "bad-echo", format!("unexpected echo {reply:?}")))?;
        if seen.port() != port {
            return Err(fail(step, "port-rewritten", format!("sent from port {port}, the far end saw {seen}")));
        }
        seen_addresses.push(seen.ip().to_string());
    }
    seen_addresses.dedup();
    Ok(format!(
        "{} echoes from {} via ports {:?} of block {}-{}; the far end saw source {} with each port unchanged",
        chosen.len(),
        settings.far_end,
        chosen,
        ports.lo,
        ports.hi,
        seen_addresses.join(",")
    ))
}

/// Boots a phone: runs the steps up to `settings.until`, reporting each to `observer`.
pub fn boot(
    nvram: &mut Nvram,
    link: &mut dyn Link,
    xid: u32,
    settings: &Settings,
    observer: &mut dyn Observer,
) -> Result<Booted, StepError> {
    let t = Instant::now();
    let lease = obtain_lease(link, nvram, xid, settings)?;
    link.configure(&lease).map_err(|e| fail(Step::Dhcp, "configure", format!("applying {}: {e}", lease.address)))?;
    let block = lease.ports.map_or_else(
        || "no port block".to_owned(),
        |p| match p.public_ip {
            Some(ip) => format!("port block {}-{} on {ip}", p.lo, p.hi),
            None => format!("port block {}-{} (option 159)", p.lo, p.hi),
        },
    );
    let router = lease.router.map_or_else(|| "none".to_owned(), |r| r.to_string());
    observer.step_done(
        Step::Dhcp,
        t.elapsed(),
        &format!(
            "leased {}/{} from {} for {} s, router {router}, {block}",
            lease.address, lease.prefix_len, lease.server_id, lease.lease_secs
        ),
    );
    let mut booted = Booted { lease, path: None, last_step: Step::Dhcp };
    if settings.until == Step::Dhcp {
        return Ok(booted);
    }

    let t = Instant::now();
    let (path, source, text) = discover(&booted.lease, nvram, settings, observer)?;
    observer.step_done(Step::Discovery, t.elapsed(), &text);
    booted.path = Some(path);
    booted.last_step = Step::Discovery;
    if settings.until == Step::Discovery {
        return Ok(booted);
    }

    let t = Instant::now();
    let (parameters, text) = provision_inquiry(&booted.lease, nvram, &source, settings)?;
    observer.step_done(Step::Provisioning, t.elapsed(), &text);
    booted.last_step = Step::Provisioning;
    if settings.until == Step::Provisioning {
        return Ok(booted);
    }

    let t = Instant::now();
    let text = firmware(&booted.lease, nvram, &parameters, settings, observer)?;
    observer.step_done(Step::Firmware, t.elapsed(), &text);
    booted.last_step = Step::Firmware;
    if settings.until == Step::Firmware {
        return Ok(booted);
    }

    let t = Instant::now();
    let text = line(&booted.lease, nvram, link, settings)?;
    observer.step_done(Step::Line, t.elapsed(), &text);
    booted.last_step = Step::Line;
    Ok(booted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    use dialtone_config::{load_str, CpuPolicy};
    use dialtone_dhcp::{Engine, Limits};

    /// The phone's DHCP client against the gateway's real DHCP engine, in memory.
    struct EngineLink {
        engine: Engine,
        queue: VecDeque<Vec<u8>>,
        lose: usize,
        sent: usize,
        configured: Option<Lease>,
    }

    impl EngineLink {
        fn new(lose: usize) -> Self {
            let text = include_str!("../../../config/examples/dialtone.toml");
            let config = load_str("dialtone.toml", text, std::path::Path::new("."), CpuPolicy::Ignore)
                .expect("lab config")
                .config;
            let engine = Engine::new(config, &dialtone_store::LeaseSnapshot::default(), Limits::default());
            Self { engine, queue: VecDeque::new(), lose, sent: 0, configured: None }
        }
    }

    impl Link for EngineLink {
        fn send_dhcp(&mut self, bytes: &[u8]) -> std::io::Result<()> {
            self.sent += 1;
            if self.lose > 0 {
                self.lose -= 1;
                return Ok(());
            }
            for reply in self.engine.handle(1_000, bytes).replies {
                self.queue.push_back(reply.bytes);
            }
            Ok(())
        }

        fn recv_dhcp(&mut self, _timeout: Duration) -> std::io::Result<Option<Vec<u8>>> {
            Ok(self.queue.pop_front())
        }

        fn configure(&mut self, lease: &Lease) -> std::io::Result<()> {
            self.configured = Some(lease.clone());
            Ok(())
        }
    }

    #[derive(Default)]
    struct Recorder {
        lines: Vec<(Step, String)>,
        stored: usize,
    }

    impl Observer for Recorder {
        fn step_done(&mut self, step: Step, _elapsed: Duration, line: &str) {
            self.lines.push((step, line.to_owned()));
        }

        fn nvram_changed(&mut self, _nvram: &Nvram) -> Result<(), String> {
            self.stored += 1;
            Ok(())
        }
    }

    fn nvram(mac: &str, vendor_class: &str, contact: Option<&str>) -> Nvram {
        Nvram {
            device_id: mac.replace(':', ""),
            mac: mac.into(),
            vendor_class: vendor_class.into(),
            preprov_contact: "100.64.0.1:8080".into(),
            provisioning_contact: contact.map(str::to_owned),
            firmware_version: None,
            firmware_sha256: None,
        }
    }

    fn fast(until: Step) -> Settings {
        Settings {
            attempts: 3,
            backoff: Duration::from_millis(1),
            timeout: Duration::from_millis(5),
            until,
            ..Settings::default()
        }
    }

    #[test]
    fn dhcp_options_path_against_the_real_engine() {
        let mut link = EngineLink::new(0);
        let mut n = nvram("02:dc:00:00:00:01", "dialtone-phone", None);
        let mut rec = Recorder::default();
        let booted = boot(&mut n, &mut link, 42, &fast(Step::Discovery), &mut rec).expect("boots");
        assert_eq!(booted.path, Some(DiscoveryPath::DhcpOptions));
        let lease = link.configured.expect("lease applied");
        let class = link.engine.config().classes.iter().find(|c| c.name == "softphone").expect("class");
        assert!(class.lan_pool.contains(&lease.address));
        let block = class.port_block_of(lease.address).expect("block");
        assert_eq!(lease.ports.map(|p| (p.lo, p.hi)), Some((block.port_lo, block.port_hi)));
        assert_eq!(lease.boot_file.as_deref(), Some("softphone/firmware.bin"));
        assert_eq!(rec.lines.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [Step::Dhcp, Step::Discovery]);
        assert!(rec.lines[1].1.starts_with("path=dhcp-options"), "{:?}", rec.lines);
        assert_eq!(rec.stored, 0);
    }

    #[test]
    fn zero_touch_class_falls_back_to_the_nvram_contact() {
        let mut link = EngineLink::new(0);
        let mut n = nvram("02:dc:00:00:00:02", "dialtone-phone-zt", Some("100.64.0.1:8081"));
        let mut rec = Recorder::default();
        let booted = boot(&mut n, &mut link, 7, &fast(Step::Discovery), &mut rec).expect("boots");
        assert_eq!(booted.path, Some(DiscoveryPath::NvramContact));
        let lease = link.configured.expect("lease");
        assert_eq!(lease.provisioning(), None, "the zero-touch class names no boot file");
        assert!(rec.lines[1].1.contains("100.64.0.1:8081"), "{:?}", rec.lines);
    }

    #[test]
    fn lost_messages_are_retransmitted_and_silence_fails_the_step() {
        let mut link = EngineLink::new(2);
        let mut n = nvram("02:dc:00:00:00:03", "dialtone-phone", None);
        let booted = boot(&mut n, &mut link, 9, &fast(Step::Dhcp), &mut Recorder::default()).expect("third try");
        assert_eq!(booted.last_step, Step::Dhcp);
        assert_eq!(link.sent, 4, "two lost DISCOVERs, one answered, one REQUEST");

        // A vendor class no class accepts: the server stays silent (claims 001: 8, 9).
        let mut link = EngineLink::new(0);
        let mut n = nvram("02:dc:00:00:00:04", "unknown-vendor", None);
        let err = boot(&mut n, &mut link, 10, &fast(Step::Line), &mut Recorder::default()).unwrap_err();
        assert_eq!((err.step, err.reason), (Step::Dhcp, "no-answer"));
        assert!(err.to_string().starts_with("step dhcp failed: no DHCP answer"), "{err}");
    }

    #[test]
    fn step_names_round_trip() {
        for s in Step::ALL {
            assert_eq!(Step::parse(s.name()), Some(s));
        }
        assert_eq!(Step::parse("nope"), None);
    }

    #[test]
    fn line_ports_stay_in_the_block() {
        assert_eq!(line_ports(1024, 1279, 3), vec![1024, 1151, 1279]);
        assert_eq!(line_ports(1024, 1279, 1), vec![1024]);
        assert_eq!(line_ports(5, 6, 5), vec![5, 6]);
        for p in line_ports(40_000, 40_255, 7) {
            assert!((40_000..=40_255).contains(&p));
        }
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let s = Settings::default();
        assert_eq!(s.wait_before(0), Duration::from_millis(500));
        assert_eq!(s.wait_before(1), Duration::from_secs(1));
        assert_eq!(s.wait_before(30), Duration::from_secs(8));
    }
}
