//! `dialtone`: the command line. Wiring only — every behaviour lives in the workspace crates.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use dialtone_config::{load, online_cpus, CpuPolicy, LogFormat};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// mimalloc rather than glibc's malloc: glibc hands a thread arena's freed top back to the kernel
/// (and faults it in again) around every DHCP group commit; mimalloc keeps freed pages for reuse.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Carrier-edge gateway for IP phones: DHCP leases with port blocks, NAPPT dataplane, TFTP and
/// zero-touch pre-provisioning.
#[derive(Debug, Parser)]
#[command(name = "dialtone", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate a configuration file and print the capacity plan of every phone class.
    ///
    /// Exits 1 and prints `file:line: field: reason` for each problem. Worker CPU ids that this
    /// machine lacks are only a warning here, so a plan can be checked away from its box.
    CheckConfig {
        /// Configuration file (TOML).
        file: PathBuf,
    },
    /// Run the gateway until SIGINT or SIGTERM: DHCP, TFTP, pre-provisioning, the management
    /// API and, when `dataplane.enabled` (the default), the AF_XDP dataplane that translates the
    /// phones' traffic. Stopping detaches the XDP program from both interfaces.
    Run {
        /// Configuration file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// List current leases with their public address and port block (asks the running gateway's
    /// management API named in the configuration).
    Leases {
        /// Only this phone's leases.
        mac: Option<String>,
        /// Configuration file of the running gateway (management address and token).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Print the dataplane's counters: per worker received and sent frames, every drop reason,
    /// batches, kernel wake-ups, control-ring events and where its UMEM frames are; and the XDP
    /// program's pass/redirect counts (asks the running gateway's management API).
    Stats {
        /// Configuration file of the running gateway (management address and token).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Manage pre-provisioning accounts' bearer tokens.
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
    /// Boot a phone from its NVRAM to line up, one log line per step (claims 000: 13-24).
    ///
    /// Steps: dhcp (lease, option 60 sent, 66/67/150/43/159 asked; the interface takes the NVRAM
    /// MAC and the leased address), discovery (DHCP provisioning resources, else the NVRAM
    /// provisioning contact, else the pre-provisioning inquiry whose answer is stored in NVRAM),
    /// provisioning (the inquiry to the provisioning entity, or the per-phone file on the DHCP TFTP
    /// server), firmware (TFTP, size and SHA-256 checked, version recorded in NVRAM), line (UDP
    /// from ports of the block to the far-end echo responder). Servers that do not answer are
    /// retried with doubling waits. Exits 1 naming the step and the reason when one fails.
    ///
    /// NVRAM is a JSON file: {"device_id", "mac", "vendor_class", "preprov_contact"} written at the
    /// factory, plus "provisioning_contact", "firmware_version" and "firmware_sha256" once learnt.
    Phone {
        /// NVRAM file (JSON), rewritten atomically when the phone learns something.
        #[arg(long)]
        nvram: PathBuf,
        /// Interface the phone owns (run inside the phones' namespace).
        #[arg(long)]
        iface: String,
        /// Last step to run: dhcp, discovery, provisioning, firmware or line.
        #[arg(long, default_value = "line", value_parser = ["dhcp", "discovery", "provisioning", "firmware", "line"])]
        until: String,
        /// Far-end UDP echo responder of the line step (answers `<payload> seen <ip>:<port>`).
        #[arg(long, default_value = "203.0.113.10:7")]
        far_end: std::net::SocketAddr,
        /// Attempts while a server does not answer (DHCP, HTTP, TFTP, echo).
        #[arg(long, default_value_t = 5)]
        attempts: u32,
        /// First wait between attempts, doubled after each (at most 8 s), in milliseconds.
        #[arg(long, default_value_t = 500)]
        backoff_ms: u64,
        /// Wait for one answer, in milliseconds.
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
    },
    /// Who held a public address and port, now or at a past time (from lease history).
    Whois {
        /// PUBLIC_IP:PORT, e.g. 198.51.100.7:41022.
        addr: String,
        /// When (RFC 3339, e.g. 2026-11-21T10:04:00Z); now by default.
        #[arg(long)]
        at: Option<String>,
        /// Configuration file of the running gateway (management address and token).
        #[arg(long, short)]
        config: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum TokenAction {
    /// Create an account of the pre-provisioning management application and print its token
    /// (shown once; only its hash is stored). Works on the store file directly, so run it while
    /// the gateway is stopped; a running gateway takes `POST /v1/accounts` with the admin token.
    Create {
        /// Account name (a provisioning entity's name is what points of sale assign devices to).
        #[arg(long)]
        name: String,
        /// entity, point-of-sale or admin.
        #[arg(long, value_parser = ["entity", "point-of-sale", "admin"])]
        role: String,
        /// An entity's own provisioning contact (domain[:port] or address:port).
        #[arg(long)]
        default_contact: Option<String>,
        /// Configuration file (for the store path).
        #[arg(long, short)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::CheckConfig { file } => check_config(&file),
        Command::Run { config } => run(&config),
        Command::Leases { mac, config } => {
            let path = mac.map_or_else(|| "/v1/leases".to_owned(), |m| format!("/v1/leases/{}", encode(&m)));
            ask_management(&config, &path)
        }
        Command::Stats { config } => ask_management(&config, "/v1/stats"),
        Command::Token { action: TokenAction::Create { name, role, default_contact, config } } => {
            token_create(&config, &name, &role, default_contact.as_deref())
        }
        Command::Phone { nvram, iface, until, far_end, attempts, backoff_ms, timeout_ms } => {
            let settings = dialtone_phone::Settings {
                attempts: attempts.max(1),
                backoff: std::time::Duration::from_millis(backoff_ms),
                timeout: std::time::Duration::from_millis(timeout_ms.max(1)),
                until: dialtone_phone::Step::parse(&until).unwrap_or(dialtone_phone::Step::Line),
                far_end,
                ..dialtone_phone::Settings::default()
            };
            phone(&nvram, &iface, &settings)
        }
        Command::Whois { addr, at, config } => {
            let at = at.map_or(String::new(), |t| format!("&at={}", encode(&t)));
            ask_management(&config, &format!("/v1/whois?addr={}{at}", encode(&addr)))
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("dialtone: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check_config(file: &std::path::Path) -> anyhow::Result<ExitCode> {
    match load(file, CpuPolicy::Warn(online_cpus())) {
        Ok(loaded) => {
            for warning in &loaded.warnings {
                eprintln!("{warning}");
            }
            print!("{}", loaded.config.capacity_report());
            Ok(ExitCode::SUCCESS)
        }
        Err(errors) => {
            eprintln!("{errors}");
            Ok(ExitCode::FAILURE)
        }
    }
}

fn run(file: &std::path::Path) -> anyhow::Result<ExitCode> {
    let loaded = match load(file, CpuPolicy::Refuse(online_cpus())) {
        Ok(loaded) => loaded,
        Err(errors) => {
            eprintln!("{errors}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let config = loaded.config;
    init_logging(&config.logging)?;
    for warning in &loaded.warnings {
        tracing::warn!("{warning}");
    }
    // Register for the stop signals before anything starts, so none is missed.
    let mut signals = Signals::new([SIGINT, SIGTERM]).context("installing SIGINT/SIGTERM handlers")?;
    tracing::info!(
        config = %file.display(),
        classes = config.classes.len(),
        lan = %config.lan.interface,
        wan = %config.wan.interface,
        "dialtone started"
    );
    let gateway = dialtone_daemon::Gateway::start(&config).context("starting the gateway")?;
    tracing::info!("dialtone running");
    let signal = signals.forever().next().unwrap_or(SIGTERM);
    tracing::info!(signal, "stop signal received");
    gateway.stop();
    tracing::info!("dialtone stopped");
    Ok(ExitCode::SUCCESS)
}

fn token_create(config: &std::path::Path, name: &str, role: &str, contact: Option<&str>) -> anyhow::Result<ExitCode> {
    let loaded = match load(config, CpuPolicy::Ignore) {
        Ok(loaded) => loaded,
        Err(errors) => {
            eprintln!("{errors}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let role = match role {
        "entity" => dialtone_preprov::Role::Entity,
        "point-of-sale" => dialtone_preprov::Role::PointOfSale,
        _ => dialtone_preprov::Role::Admin,
    };
    let db = dialtone_daemon::open_database(&loaded.config).context(
        "the store is in use or unreadable (while the gateway runs, create accounts with POST /v1/accounts and the admin token)",
    )?;
    let registry = dialtone_preprov::RedbRegistry::new(db)?;
    let token = dialtone_preprov::create_account(&registry, "cli", name, role, contact)?;
    println!("{token}");
    Ok(ExitCode::SUCCESS)
}

/// The single phone's log: one line per step on stdout, NVRAM written to its file.
#[derive(Debug)]
struct PhoneLog<'a> {
    nvram_path: &'a std::path::Path,
}

impl dialtone_phone::Observer for PhoneLog<'_> {
    fn step_done(&mut self, step: dialtone_phone::Step, elapsed: std::time::Duration, line: &str) {
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}: {line} [{} ms]", step.name(), elapsed.as_millis());
        let _ = out.flush();
    }

    fn nvram_changed(&mut self, nvram: &dialtone_phone::Nvram) -> Result<(), String> {
        nvram.store(self.nvram_path).map_err(|e| e.to_string())
    }
}

fn phone(nvram_path: &std::path::Path, iface: &str, settings: &dialtone_phone::Settings) -> anyhow::Result<ExitCode> {
    let mut nvram = dialtone_phone::Nvram::load(nvram_path)?;
    let mac = nvram.mac_addr().map_err(anyhow::Error::msg)?;
    let mut link = dialtone_phone::link::InterfaceLink::open(iface, mac.0)
        .with_context(|| format!("taking interface {iface} with MAC {}", nvram.mac))?;
    // A transaction id that differs per boot: the clock's nanoseconds mixed with the MAC.
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let xid = nanos ^ u32::from_be_bytes([mac.0[2], mac.0[3], mac.0[4], mac.0[5]]);
    let booted = dialtone_phone::boot(&mut nvram, &mut link, xid, settings, &mut PhoneLog { nvram_path })?;
    println!(
        "phone {}: up to {} ({})",
        nvram.device_id,
        booted.last_step.name(),
        booted.path.map_or("no discovery", |p| p.name())
    );
    Ok(ExitCode::SUCCESS)
}

/// Percent-encodes a query or path value.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Sends a GET to the management API of the gateway that runs `config`; prints the answer.
fn ask_management(config: &std::path::Path, path: &str) -> anyhow::Result<ExitCode> {
    let loaded = match load(config, CpuPolicy::Ignore) {
        Ok(loaded) => loaded,
        Err(errors) => {
            eprintln!("{errors}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let management = &loaded.config.management;
    let token = dialtone_daemon::read_token(&management.token)?;
    let (status, body) = dialtone_http::get(management.listen, path, Some(&token), std::time::Duration::from_secs(10))
        .with_context(|| format!("asking the management API at {}", management.listen))?;
    print!("{body}");
    Ok(if status == 200 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn init_logging(logging: &dialtone_config::Logging) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(logging.level.as_str()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let result = match logging.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    result.map_err(|e| anyhow::anyhow!("initialising logging: {e}"))
}
