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
    /// Run the gateway until SIGINT or SIGTERM.
    Run {
        /// Configuration file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::CheckConfig { file } => check_config(&file),
        Command::Run { config } => run(&config),
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
