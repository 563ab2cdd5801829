//! `dialtone`: the command line. Wiring only — every behaviour lives in the workspace crates.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use dialtone_config::{load, online_cpus, CpuPolicy, LogFormat};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

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
