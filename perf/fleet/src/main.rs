//! `dialtone-fleet`: thousands of phone agents from one process on one interface — the boot storm
//! after a site's power cut — reporting per-step latency percentiles (hdrhistogram) and counts of
//! phones that finished or failed, by step and reason.
//!
//! Every phone runs the same steps as `dialtone phone` ([`dialtone_phone::boot`]); only the
//! [`Link`] differs:
//! - DHCP: one UDP socket on port 68 bound to the interface carries every phone's messages, each
//!   with its own MAC as `chaddr` and its own transaction id; a dispatcher thread hands each
//!   broadcast answer to the phone whose xid it carries.
//! - Addresses: each leased address is added to the interface as a /32 over rtnetlink (no `ip`
//!   process per phone), and every later socket of that phone (HTTP, TFTP, line) binds to it. The
//!   kernel answers the gateway's ARP for all of them with the interface's MAC, so HTTP and TFTP
//!   answers come back through the normal stack.
//! - Line: the dataplane addresses translated traffic to the MAC of the lease, which is not the
//!   interface's, so the kernel would drop it (PACKET_OTHERHOST). A packet socket with a classic
//!   BPF filter (source = the far end) receives those datagrams instead and a thread hands each to
//!   the phone whose address it is for. This kernel has neither `act_skbedit` nor `matchall`, so
//!   rewriting the packet type in tc is not an option.
//!
//! Phones are a deterministic mix of kinds: provisioned from DHCP options (vendor class of a
//! class with a boot file), zero-touch through the pre-provisioning inquiry (factory-fresh NVRAM),
//! and zero-touch with the provisioning contact already in NVRAM. Phone `i` has MAC
//! `first_mac + i` and device ID = that MAC as 12 hex digits, so `register` and `run` agree.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, HashMap};
use std::io::Read as _;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::{Args, Parser, Subcommand};
use dialtone_config::MacAddr;
use dialtone_http::ClientRequest;
use dialtone_phone::dhcp::Lease;
use dialtone_phone::link::{dhcp_socket, DHCP_SERVER_BROADCAST};
use dialtone_phone::netlink::{Netlink, Route};
use dialtone_phone::{DiscoveryPath, Link, Nvram, Observer, Settings, Step};
use hdrhistogram::Histogram;
use socket2::{Domain, Protocol, SockFilter, Socket, Type};

/// Thousands of dialtone phone agents from one process.
#[derive(Debug, Parser)]
#[command(name = "dialtone-fleet", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Boot the fleet (run inside the phones' namespace) and print per-step percentiles.
    Run(RunArgs),
    /// Register the fleet's zero-touch phones in the pre-provisioning service: an entity account,
    /// a bulk CSV import of device IDs with the provisioning contact, and per-device parameters
    /// naming the zero-touch class template.
    Register(RegisterArgs),
    /// The far-end UDP echo responder of the line step: answers `<payload> seen <ip>:<port>`.
    Echo {
        /// Address to listen on (inside the far network).
        #[arg(long, default_value = "203.0.113.10:7")]
        listen: SocketAddr,
    },
}

/// Who the phones are.
#[derive(Debug, Clone, Args)]
struct Population {
    /// Number of phones.
    #[arg(long, default_value_t = 1000)]
    phones: u32,
    /// MAC of phone 0; phone i has this plus i.
    #[arg(long, default_value = "02:dc:00:00:00:00")]
    first_mac: MacAddr,
    /// Percentage of zero-touch phones (the rest are provisioned from DHCP options).
    #[arg(long, default_value_t = 50)]
    zero_touch_percent: u32,
    /// Percentage of the zero-touch phones whose NVRAM already holds the provisioning contact.
    #[arg(long, default_value_t = 0)]
    nvram_contact_percent: u32,
    /// Vendor class (option 60) of the DHCP-provisioned phones.
    #[arg(long, default_value = "dialtone-phone")]
    dhcp_vendor_class: String,
    /// Vendor class of the zero-touch phones.
    #[arg(long, default_value = "dialtone-phone-zt")]
    zero_touch_vendor_class: String,
    /// The pre-provisioning contact in every phone's NVRAM.
    #[arg(long, default_value = "100.64.0.1:8080")]
    preprov: String,
    /// The provisioning contact (already in NVRAM for some phones; registered for the others).
    #[arg(long, default_value = "100.64.0.1:8081")]
    provisioning: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Kind {
    DhcpOptions,
    PreProvisioning,
    NvramContact,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Self::DhcpOptions => "dhcp-options",
            Self::PreProvisioning => "pre-provisioning",
            Self::NvramContact => "nvram-contact",
        }
    }
}

impl Population {
    fn mac(&self, i: u32) -> MacAddr {
        let mut m = self.first_mac.0;
        let low = u32::from_be_bytes([m[2], m[3], m[4], m[5]]).wrapping_add(i);
        m[2..6].copy_from_slice(&low.to_be_bytes());
        MacAddr(m)
    }

    /// A deterministic spread of kinds (multiplying by primes mixes neighbours).
    fn kind(&self, i: u32) -> Kind {
        let zero_touch = (u64::from(i) * 7919 % 100) < u64::from(self.zero_touch_percent);
        if !zero_touch {
            Kind::DhcpOptions
        } else if (u64::from(i) * 104_729 / 7 % 100) < u64::from(self.nvram_contact_percent) {
            Kind::NvramContact
        } else {
            Kind::PreProvisioning
        }
    }

    fn nvram(&self, i: u32) -> Nvram {
        let mac = self.mac(i);
        let kind = self.kind(i);
        let vendor_class = match kind {
            Kind::DhcpOptions => self.dhcp_vendor_class.clone(),
            Kind::PreProvisioning | Kind::NvramContact => self.zero_touch_vendor_class.clone(),
        };
        Nvram {
            device_id: mac.to_hex12(),
            mac: format!(
                "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
                mac.0[0], mac.0[1], mac.0[2], mac.0[3], mac.0[4], mac.0[5]
            ),
            vendor_class,
            preprov_contact: self.preprov.clone(),
            provisioning_contact: (kind == Kind::NvramContact).then(|| self.provisioning.clone()),
            firmware_version: None,
            firmware_sha256: None,
        }
    }
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Interface the fleet shares.
    #[arg(long, default_value = "eth0")]
    iface: String,
    #[command(flatten)]
    population: Population,
    /// Phones booting at the same time (worker threads).
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Last step: dhcp, discovery, provisioning, firmware or line.
    #[arg(long, default_value = "line", value_parser = ["dhcp", "discovery", "provisioning", "firmware", "line"])]
    until: String,
    /// Far-end echo responder of the line step.
    #[arg(long, default_value = "203.0.113.10:7")]
    far_end: SocketAddr,
    /// Attempts while a server does not answer.
    #[arg(long, default_value_t = 5)]
    attempts: u32,
    /// First wait between attempts (doubled), milliseconds.
    #[arg(long, default_value_t = 500)]
    backoff_ms: u64,
    /// Wait for one answer, milliseconds.
    #[arg(long, default_value_t = 3000)]
    timeout_ms: u64,
    /// Also write the summary as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct RegisterArgs {
    #[command(flatten)]
    population: Population,
    /// The pre-provisioning service (management application).
    #[arg(long, default_value = "100.64.0.1:8080")]
    service: SocketAddr,
    /// Admin token (creates the entity account).
    #[arg(long)]
    admin_token: String,
    /// Entity account to create and register the devices under.
    #[arg(long, default_value = "fleet")]
    entity: String,
    /// The class template zero-touch devices get (`{"class": NAME}` parameters).
    #[arg(long, default_value = "softphone-zt")]
    class: String,
    /// Parallel requests for the per-device parameters.
    #[arg(long, default_value_t = 8)]
    parallel: usize,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(&args),
        Command::Register(args) => register(&args),
        Command::Echo { listen } => echo(listen),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("dialtone-fleet: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------------------------
// register

fn http(
    service: SocketAddr,
    method: &str,
    path: &str,
    token: &str,
    body: Option<(&str, &[u8])>,
) -> anyhow::Result<(u16, String)> {
    let req = ClientRequest { method, addr: service, path_and_query: path, token: Some(token), body, local: None };
    dialtone_http::request(&req, Duration::from_secs(120)).with_context(|| format!("{method} {path} at {service}"))
}

fn register(args: &RegisterArgs) -> anyhow::Result<std::process::ExitCode> {
    let p = &args.population;
    let body = format!(r#"{{"name":"{}","role":"entity"}}"#, args.entity);
    let (status, answer) =
        http(args.service, "POST", "/v1/accounts", &args.admin_token, Some(("application/json", body.as_bytes())))?;
    if status != 201 {
        bail!("creating account {}: HTTP {status}: {}", args.entity, answer.trim());
    }
    let token = answer
        .split("\"token\":\"")
        .nth(1)
        .and_then(|t| t.split('"').next())
        .context("no token in the account answer")?
        .to_owned();
    let ids: Vec<String> =
        (0..p.phones).filter(|&i| p.kind(i) != Kind::DhcpOptions).map(|i| p.mac(i).to_hex12()).collect();
    let mut csv = String::from("device_id,contact\n");
    for id in &ids {
        csv.push_str(&format!("{id},{}\n", p.provisioning));
    }
    let started = Instant::now();
    let (status, answer) = http(args.service, "POST", "/v1/bulk/devices", &token, Some(("text/csv", csv.as_bytes())))?;
    if status != 200 {
        bail!("bulk import: HTTP {status}: {}", answer.trim());
    }
    println!("registered {} zero-touch devices with contact {} in {:?}", ids.len(), p.provisioning, started.elapsed());
    let started = Instant::now();
    let next = AtomicU32::new(0);
    let failures = AtomicU32::new(0);
    let parameters = format!(r#"{{"class":"{}"}}"#, args.class);
    std::thread::scope(|s| {
        for _ in 0..args.parallel.max(1) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(id) = ids.get(i) else { break };
                let path = format!("/v1/devices/{id}/parameters");
                match http(args.service, "PUT", &path, &token, Some(("application/json", parameters.as_bytes()))) {
                    Ok((200, _)) => {}
                    Ok((status, body)) => {
                        if failures.fetch_add(1, Ordering::Relaxed) < 5 {
                            eprintln!("{path}: HTTP {status}: {}", body.trim());
                        }
                    }
                    Err(e) => {
                        if failures.fetch_add(1, Ordering::Relaxed) < 5 {
                            eprintln!("{e:#}");
                        }
                    }
                }
            });
        }
    });
    let failed = failures.load(Ordering::Relaxed);
    println!(
        "parameters {{\"class\":\"{}\"}} set on {} devices in {:?}",
        args.class,
        ids.len() as u32 - failed,
        started.elapsed()
    );
    if failed > 0 {
        bail!("{failed} devices did not take their parameters");
    }
    Ok(std::process::ExitCode::SUCCESS)
}

// ---------------------------------------------------------------------------------------------
// echo

fn echo(listen: SocketAddr) -> anyhow::Result<std::process::ExitCode> {
    let socket = Socket::new(Domain::for_address(listen), Type::DGRAM, Some(Protocol::UDP))?;
    let _ = socket.set_recv_buffer_size(8 << 20);
    socket.bind(&listen.into()).with_context(|| format!("binding {listen}"))?;
    let socket: UdpSocket = socket.into();
    eprintln!("dialtone-fleet echo: answering on {listen}");
    let mut buf = [0u8; 1500];
    loop {
        let (n, from) = socket.recv_from(&mut buf)?;
        let mut answer = buf.get(..n).unwrap_or_default().to_vec();
        answer.extend_from_slice(format!(" seen {from}").as_bytes());
        let _ = socket.send_to(&answer, from);
    }
}

// ---------------------------------------------------------------------------------------------
// run: the shared link

/// Answers routed to the phone waiting for them.
struct Hub<K, V> {
    waiting: Mutex<HashMap<K, Sender<V>>>,
}

impl<K: std::hash::Hash + Eq, V> Hub<K, V> {
    fn new() -> Self {
        Self { waiting: Mutex::new(HashMap::new()) }
    }

    fn subscribe(&self, key: K) -> Receiver<V> {
        let (tx, rx) = mpsc::channel();
        self.waiting.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(key, tx);
        rx
    }

    fn unsubscribe(&self, key: &K) {
        self.waiting.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(key);
    }

    fn deliver(&self, key: &K, value: V) {
        if let Some(tx) = self.waiting.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(key) {
            let _ = tx.send(value);
        }
    }
}

type LineDatagram = (SocketAddrV4, SocketAddr, Vec<u8>);

struct Shared {
    dhcp: UdpSocket,
    dhcp_hub: Hub<u32, Vec<u8>>,
    line_hub: Hub<Ipv4Addr, LineDatagram>,
    index: u32,
    routes: OnceLock<()>,
    stop: AtomicBool,
}

fn dhcp_dispatcher(shared: &Shared) {
    let mut buf = vec![0u8; 1500];
    let _ = shared.dhcp.set_read_timeout(Some(Duration::from_millis(100)));
    while !shared.stop.load(Ordering::Relaxed) {
        let Ok((n, _)) = shared.dhcp.recv_from(&mut buf) else { continue };
        let Some(xid) = buf.get(4..8).and_then(|x| <[u8; 4]>::try_from(x).ok()) else { continue };
        shared.dhcp_hub.deliver(&u32::from_be_bytes(xid), buf.get(..n).unwrap_or_default().to_vec());
    }
}

/// A packet socket receiving the far end's UDP datagrams (IPv4 without link header), whatever
/// their destination MAC.
fn line_socket(far_end: SocketAddrV4) -> std::io::Result<Socket> {
    const ETH_P_IP: u16 = 0x0800;
    let socket = Socket::new(Domain::PACKET, Type::DGRAM, Some(Protocol::from(i32::from(ETH_P_IP.to_be()))))?;
    // Classic BPF over the IPv4 header: source address, protocol UDP, source port (IHL 5).
    let filter = [
        SockFilter::new(0x20, 0, 0, 12),
        SockFilter::new(0x15, 0, 5, u32::from(*far_end.ip())),
        SockFilter::new(0x30, 0, 0, 9),
        SockFilter::new(0x15, 0, 3, 17),
        SockFilter::new(0x28, 0, 0, 20),
        SockFilter::new(0x15, 0, 1, u32::from(far_end.port())),
        SockFilter::new(0x06, 0, 0, 0xffff),
        SockFilter::new(0x06, 0, 0, 0),
    ];
    socket.attach_filter(&filter)?;
    let _ = socket.set_recv_buffer_size(8 << 20);
    socket.set_read_timeout(Some(Duration::from_millis(100)))?;
    Ok(socket)
}

fn line_dispatcher(shared: &Shared, mut socket: Socket) {
    let mut buf = vec![0u8; 2048];
    while !shared.stop.load(Ordering::Relaxed) {
        let Ok(n) = socket.read(&mut buf) else { continue };
        let Ok(ip) = dialtone_wire::Ipv4Packet::new_checked(buf.get(..n).unwrap_or_default()) else { continue };
        if ip.protocol() != 17 || ip.is_fragment() {
            continue;
        }
        let Ok(udp) = dialtone_wire::UdpPacket::new_checked(ip.payload()) else { continue };
        let end = usize::from(udp.len()).min(ip.payload().len());
        let data = ip.payload().get(8..end).unwrap_or_default().to_vec();
        let to = SocketAddrV4::new(ip.dst_addr(), udp.dst_port());
        let from = SocketAddr::V4(SocketAddrV4::new(ip.src_addr(), udp.src_port()));
        shared.line_hub.deliver(&ip.dst_addr(), (to, from, data));
    }
}

struct FleetLink<'a> {
    shared: &'a Shared,
    netlink: &'a mut Netlink,
    xid: u32,
    dhcp_rx: Receiver<Vec<u8>>,
    line: Option<(Ipv4Addr, Receiver<LineDatagram>)>,
}

impl Drop for FleetLink<'_> {
    fn drop(&mut self) {
        self.shared.dhcp_hub.unsubscribe(&self.xid);
        if let Some((address, _)) = &self.line {
            self.shared.line_hub.unsubscribe(address);
        }
    }
}

impl Link for FleetLink<'_> {
    fn send_dhcp(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.shared.dhcp.send_to(bytes, DHCP_SERVER_BROADCAST).map(|_| ())
    }

    fn recv_dhcp(&mut self, timeout: Duration) -> std::io::Result<Option<Vec<u8>>> {
        Ok(self.dhcp_rx.recv_timeout(timeout).ok())
    }

    fn configure(&mut self, lease: &Lease) -> std::io::Result<()> {
        if self.shared.routes.get().is_none() {
            let subnet = u32::from(lease.address) & u32::MAX.checked_shl(32 - u32::from(lease.prefix_len)).unwrap_or(0);
            let on_link = Route { destination: Ipv4Addr::from(subnet), prefix_len: lease.prefix_len, gateway: None };
            self.netlink.add_route(self.shared.index, on_link)?;
            if let Some(router) = lease.router {
                let default = Route { destination: Ipv4Addr::UNSPECIFIED, prefix_len: 0, gateway: Some(router) };
                self.netlink.add_route(self.shared.index, default)?;
            }
            let _ = self.shared.routes.set(());
        }
        self.line = Some((lease.address, self.shared.line_hub.subscribe(lease.address)));
        self.netlink.add_addresses(self.shared.index, &[(lease.address, 32)])
    }

    fn recv_line(
        &mut self,
        _socket: &UdpSocket,
        local: SocketAddrV4,
        timeout: Duration,
    ) -> std::io::Result<Option<(SocketAddr, Vec<u8>)>> {
        let Some((_, rx)) = &self.line else { return Ok(None) };
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok((to, from, data)) if to == local => return Ok(Some((from, data))),
                Ok(_) => {}
                Err(_) => return Ok(None),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// run: workers and the report

fn histogram() -> Histogram<u64> {
    // Microseconds up to one hour, 3 significant digits.
    Histogram::new_with_bounds(1, 3_600_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).expect("3 significant digits is valid"))
}

/// One worker's tallies, merged at the end.
struct Tally {
    steps: BTreeMap<Step, Histogram<u64>>,
    boot: Histogram<u64>,
    finished: BTreeMap<Kind, u32>,
    paths: BTreeMap<&'static str, u32>,
    failed: BTreeMap<(Step, &'static str), u32>,
    examples: BTreeMap<(Step, &'static str), String>,
}

impl Tally {
    fn new() -> Self {
        Self {
            steps: BTreeMap::new(),
            boot: histogram(),
            finished: BTreeMap::new(),
            paths: BTreeMap::new(),
            failed: BTreeMap::new(),
            examples: BTreeMap::new(),
        }
    }

    fn merge(&mut self, other: Tally) {
        for (step, h) in other.steps {
            let _ = self.steps.entry(step).or_insert_with(histogram).add(&h);
        }
        let _ = self.boot.add(&other.boot);
        for (k, v) in other.finished {
            *self.finished.entry(k).or_default() += v;
        }
        for (k, v) in other.paths {
            *self.paths.entry(k).or_default() += v;
        }
        for (k, v) in other.failed {
            *self.failed.entry(k).or_default() += v;
        }
        for (k, v) in other.examples {
            self.examples.entry(k).or_insert(v);
        }
    }
}

struct FleetObserver<'a> {
    tally: &'a mut Tally,
}

impl Observer for FleetObserver<'_> {
    fn step_done(&mut self, step: Step, elapsed: Duration, _line: &str) {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX).max(1);
        let _ = self.tally.steps.entry(step).or_insert_with(histogram).record(micros);
    }

    fn nvram_changed(&mut self, _nvram: &Nvram) -> Result<(), String> {
        // The fleet's NVRAM lives in memory for the length of the run.
        Ok(())
    }
}

fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

fn run(args: &RunArgs) -> anyhow::Result<std::process::ExitCode> {
    let until = Step::parse(&args.until).context("--until")?;
    let settings = Settings {
        attempts: args.attempts.max(1),
        backoff: Duration::from_millis(args.backoff_ms),
        timeout: Duration::from_millis(args.timeout_ms.max(1)),
        until,
        far_end: args.far_end,
        ..Settings::default()
    };
    let SocketAddr::V4(far_end) = args.far_end else { bail!("--far-end must be IPv4") };
    let netlink = Netlink::open().context("rtnetlink")?;
    let index = netlink.index_of(&args.iface).with_context(|| format!("interface {}", args.iface))?;
    let shared = Shared {
        dhcp: dhcp_socket(&args.iface).with_context(|| format!("DHCP socket on {}", args.iface))?,
        dhcp_hub: Hub::new(),
        line_hub: Hub::new(),
        index,
        routes: OnceLock::new(),
        stop: AtomicBool::new(false),
    };
    let line = if until == Step::Line { Some(line_socket(far_end).context("line packet socket")?) } else { None };
    let population = &args.population;
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let next = AtomicU32::new(0);
    let mut total = Tally::new();
    let started = Instant::now();
    eprintln!(
        "dialtone-fleet: {} phones on {}, {} at a time, until {}",
        population.phones,
        args.iface,
        args.concurrency,
        until.name()
    );
    std::thread::scope(|s| {
        let shared = &shared;
        s.spawn(move || dhcp_dispatcher(shared));
        if let Some(socket) = line {
            s.spawn(move || line_dispatcher(shared, socket));
        }
        let workers: Vec<_> = (0..args.concurrency.max(1))
            .map(|_| {
                let next = &next;
                let settings = &settings;
                s.spawn(move || {
                    let mut tally = Tally::new();
                    let Ok(mut netlink) = Netlink::open() else { return tally };
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= population.phones {
                            break;
                        }
                        let mut nvram = population.nvram(i);
                        let kind = population.kind(i);
                        // Unique per phone within the run (phones < 2^20), different across runs.
                        let xid = (seed << 20) ^ i;
                        let dhcp_rx = shared.dhcp_hub.subscribe(xid);
                        let mut link = FleetLink { shared, netlink: &mut netlink, xid, dhcp_rx, line: None };
                        let t = Instant::now();
                        let result = dialtone_phone::boot(
                            &mut nvram,
                            &mut link,
                            xid,
                            settings,
                            &mut FleetObserver { tally: &mut tally },
                        );
                        drop(link);
                        match result {
                            Ok(booted) => {
                                let micros = u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX).max(1);
                                let _ = tally.boot.record(micros);
                                *tally.finished.entry(kind).or_default() += 1;
                                let path = booted.path.map_or("none", DiscoveryPath::name);
                                *tally.paths.entry(path).or_default() += 1;
                            }
                            Err(e) => {
                                *tally.failed.entry((e.step, e.reason)).or_default() += 1;
                                tally.examples.entry((e.step, e.reason)).or_insert(e.message);
                            }
                        }
                    }
                    tally
                })
            })
            .collect();
        for w in workers {
            if let Ok(t) = w.join() {
                total.merge(t);
            }
        }
        shared.stop.store(true, Ordering::Relaxed);
    });
    let elapsed = started.elapsed();
    let finished: u32 = total.finished.values().sum();
    let failed: u32 = total.failed.values().sum();

    let mut json = String::from("{");
    println!(
        "fleet: {} phones, {finished} finished, {failed} failed, total {:.2} s",
        population.phones,
        elapsed.as_secs_f64()
    );
    json.push_str(&format!(
        "\"phones\":{},\"finished\":{finished},\"failed\":{failed},\"total_secs\":{:.3},\"concurrency\":{},\"until\":\"{}\",",
        population.phones,
        elapsed.as_secs_f64(),
        args.concurrency,
        until.name()
    ));
    for (kind, n) in &total.finished {
        println!("  finished {:<17} {n}", kind.name());
    }
    for (path, n) in &total.paths {
        println!("  discovery path {:<11} {n}", path);
    }
    json.push_str("\"steps\":{");
    let mut first = true;
    for step in Step::ALL {
        let Some(h) = total.steps.get(&step) else { continue };
        println!(
            "  step {:<13} n={:<6} p50={:>9.2} ms  p99={:>9.2} ms  max={:>9.2} ms",
            step.name(),
            h.len(),
            ms(h.value_at_quantile(0.5)),
            ms(h.value_at_quantile(0.99)),
            ms(h.max())
        );
        if !first {
            json.push(',');
        }
        first = false;
        json.push_str(&format!(
            "\"{}\":{{\"n\":{},\"p50_ms\":{:.3},\"p99_ms\":{:.3},\"max_ms\":{:.3}}}",
            step.name(),
            h.len(),
            ms(h.value_at_quantile(0.5)),
            ms(h.value_at_quantile(0.99)),
            ms(h.max())
        ));
    }
    json.push_str("},");
    let b = &total.boot;
    if !b.is_empty() {
        println!(
            "  whole boot         n={:<6} p50={:>9.2} ms  p99={:>9.2} ms  max={:>9.2} ms",
            b.len(),
            ms(b.value_at_quantile(0.5)),
            ms(b.value_at_quantile(0.99)),
            ms(b.max())
        );
    }
    json.push_str(&format!(
        "\"boot\":{{\"n\":{},\"p50_ms\":{:.3},\"p99_ms\":{:.3},\"max_ms\":{:.3}}},\"failures\":[",
        b.len(),
        ms(b.value_at_quantile(0.5)),
        ms(b.value_at_quantile(0.99)),
        ms(b.max())
    ));
    let mut first = true;
    for ((step, reason), n) in &total.failed {
        let example = total.examples.get(&(*step, *reason)).cloned().unwrap_or_default();
        println!("  FAILED at {:<12} {reason:<16} {n}  e.g. {example}", step.name());
        if !first {
            json.push(',');
        }
        first = false;
        json.push_str(&format!(
            "{{\"step\":\"{}\",\"reason\":\"{reason}\",\"count\":{n},\"example\":{}}}",
            step.name(),
            dialtone_http::json_string(&example)
        ));
    }
    json.push_str("]}\n");
    if let Some(path) = &args.json {
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(if failed == 0 && finished == population.phones {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn population(phones: u32, zero_touch: u32, nvram: u32) -> Population {
        Population {
            phones,
            first_mac: "02:dc:00:00:ff:ff".parse().expect("mac"),
            zero_touch_percent: zero_touch,
            nvram_contact_percent: nvram,
            dhcp_vendor_class: "dialtone-phone".into(),
            zero_touch_vendor_class: "dialtone-phone-zt".into(),
            preprov: "100.64.0.1:8080".into(),
            provisioning: "100.64.0.1:8081".into(),
        }
    }

    #[test]
    fn the_mix_follows_the_percentages_and_macs_are_distinct() {
        let p = population(10_000, 40, 25);
        let mut counts: BTreeMap<Kind, u32> = BTreeMap::new();
        for i in 0..p.phones {
            *counts.entry(p.kind(i)).or_default() += 1;
        }
        assert_eq!(counts[&Kind::DhcpOptions], 6000);
        let zero_touch = counts[&Kind::PreProvisioning] + counts[&Kind::NvramContact];
        assert_eq!(zero_touch, 4000);
        assert!((800..1200).contains(&counts[&Kind::NvramContact]), "{counts:?}");
        assert_eq!(p.mac(0).to_hex12(), "02dc0000ffff");
        assert_eq!(p.mac(1).to_hex12(), "02dc00010000", "carries into the next byte");
        let n = p.nvram(3);
        n.validate(std::path::Path::new("fleet")).expect("a valid NVRAM");
        assert_eq!(n.device_id, p.mac(3).to_hex12());
        assert_eq!(n.provisioning_contact.is_some(), p.kind(3) == Kind::NvramContact);
    }
}
