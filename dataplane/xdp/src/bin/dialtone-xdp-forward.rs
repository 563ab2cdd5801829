//! `dialtone-xdp-forward`: dialtone's AF_XDP workers in plain forwarding mode, the I/O ceiling
//! the dataplane benchmark compares the NAPPT dataplane with.

use std::io::IsTerminal as _;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use dialtone_config::{load, online_cpus, CpuPolicy};
use dialtone_xdp::{Dataplane, Mode};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// Plain AF_XDP forwarding with dialtone's own XDP program, workers and sockets, but no
/// translation: IPv4 frames from the LAN interface leave on the WAN interface towards
/// `wan.next_hop`, frames for the public pools arriving on the WAN interface leave on the LAN
/// interface towards `--lan-peer`; only the Ethernet addresses are rewritten. Runs until SIGINT
/// or SIGTERM, then detaches the XDP program and prints each worker's counters.
///
/// Everything else comes from the `[lan]`, `[wan]`, `[dataplane]` and `[[class]]` sections of
/// the configuration (interfaces, worker CPUs, XDP and bind modes, batch and UMEM sizes; the
/// classes' public pools decide which WAN frames are taken).
#[derive(Debug, Parser)]
#[command(name = "dialtone-xdp-forward", version, about, long_about)]
struct Cli {
    /// dialtone configuration file (TOML).
    #[arg(long, short)]
    config: PathBuf,
    /// LAN-side host whose MAC (from the kernel's neighbour table, resolved on demand) frames
    /// forwarded to the LAN are sent to. Without it only the LAN -> WAN direction forwards.
    #[arg(long)]
    lan_peer: Option<Ipv4Addr>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("dialtone-xdp-forward: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> anyhow::Result<ExitCode> {
    let loaded = match load(&cli.config, CpuPolicy::Refuse(online_cpus())) {
        Ok(loaded) => loaded,
        Err(errors) => {
            eprintln!("{errors}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let config = loaded.config;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(config.logging.level.as_str())),
        )
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init()
        .map_err(|e| anyhow::anyhow!("initialising logging: {e}"))?;
    let mut signals = Signals::new([SIGINT, SIGTERM]).context("installing SIGINT/SIGTERM handlers")?;
    let dataplane = Dataplane::start(&config, Mode::Forward, cli.lan_peer).context("starting the forwarder")?;
    tracing::info!("forwarding");
    let signal = signals.forever().next().unwrap_or(SIGTERM);
    tracing::info!(signal, "stop signal received");
    let stats = dataplane.stats();
    dataplane.stop();
    if let Some(stats) = stats {
        for worker in stats.workers() {
            let e = worker.stats.engine;
            println!(
                "worker {} cpu {}: rx lan {} wan {}, tx lan {} wan {}, batches {} ({} frames), tx ring full {}, no next hop {}",
                worker.worker,
                worker.cpu,
                e.rx_lan,
                e.rx_wan,
                e.tx_lan,
                e.tx_wan,
                e.batches,
                e.batch_frames,
                e.engine_drops[dialtone_xdp::EngineDrop::TxRingFull as usize],
                e.engine_drops[dialtone_xdp::EngineDrop::ForwardNoNextHop as usize],
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
