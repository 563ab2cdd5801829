//! `dialtone-recv`: counts the generator's frames behind the gateway, checks every translation
//! by the inverse port-block function and records one-way latency; prints a JSON summary.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context as _};
use clap::Parser;
use dialtone_config::CpuPolicy;
use dialtone_traffic::check::{Checker, Direction};
use dialtone_traffic::receiver::Receiver;
use dialtone_traffic::sys::{self, RxRing};

#[derive(Parser, Debug)]
#[command(
    name = "dialtone-recv",
    version,
    about = "Receive dialtone-gen's frames on a PACKET_MMAP (TPACKET_V3) ring, check translations, record latency",
    long_about = "Receives the generator's frames behind the gateway (the far end's eth0, or the phones' eth0\n\
    with --inbound) on a TPACKET_V3 receive ring. Every frame's translated address and port are\n\
    mapped back by the inverse port-block function of the gateway's configuration and compared\n\
    with the phone id in its payload: another phone is a mistranslation, no phone is out-of-block,\n\
    a different port is port_changed. One-way latency goes into an HDR histogram. Prints one JSON\n\
    summary: received, correct, mistranslated, out_of_block, port_changed, bad_checksum,\n\
    ring_drops, latency p50/p99/p99.9/max in ns."
)]
struct Cli {
    /// The gateway's configuration file.
    #[arg(long)]
    config: PathBuf,
    /// Interface to receive on.
    #[arg(long)]
    interface: String,
    /// Frames come from the far end to the phones (check the destination, not the source).
    #[arg(long)]
    inbound: bool,
    /// Count and time only: for a plain forwarder that translates nothing.
    #[arg(long)]
    no_check: bool,
    /// Longest run in seconds.
    #[arg(long, default_value_t = 60.0)]
    duration: f64,
    /// Stop this many seconds after the last generated frame (once one arrived).
    #[arg(long)]
    idle: Option<f64>,
    /// CPU to pin to.
    #[arg(long)]
    cpu: Option<usize>,
    /// Ring blocks of 4 MiB (frames are packed: about 30,000 test frames a block).
    #[arg(long, default_value_t = 16)]
    blocks: usize,
    /// File to write a line "ready" to once the ring is open (for scripts to wait on).
    #[arg(long)]
    ready_file: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = match dialtone_config::load(&cli.config, CpuPolicy::Ignore) {
        Ok(loaded) => loaded.config,
        Err(errors) => bail!("{}: invalid configuration:\n{errors}", cli.config.display()),
    };
    if let Some(cpu) = cli.cpu {
        sys::pin_to_cpu(cpu)?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop)).context("signal handler")?;
    }
    let mut ring = RxRing::open(&cli.interface, 4 << 20, cli.blocks, 2)?;
    // Counters reset on read: start from zero.
    let _ = ring.statistics();
    let offset = i128::from(sys::realtime_ns()) - i128::from(sys::monotonic_ns());
    let direction = if cli.inbound { Direction::Inbound } else { Direction::Outbound };
    let checker = (!cli.no_check).then(|| Checker::new(config));
    let mut receiver = Receiver::new(checker, direction, offset);
    if let Some(path) = &cli.ready_file {
        std::fs::write(path, "ready\n").with_context(|| format!("write {}", path.display()))?;
    }
    let start = sys::monotonic_ns();
    let end = start + (cli.duration * 1e9) as u64;
    let idle_ns = cli.idle.map(|s| (s * 1e9) as u64);
    let mut last_ours = None::<u64>;
    while !stop.load(Ordering::Relaxed) {
        let mut ours = 0usize;
        ring.receive(50, |frame| ours += usize::from(receiver.frame(frame.bytes, frame.realtime_ns)))?;
        let now = sys::monotonic_ns();
        if ours > 0 {
            last_ours = Some(now);
        }
        if now >= end {
            break;
        }
        if let (Some(idle), Some(last)) = (idle_ns, last_ours) {
            if now - last >= idle {
                break;
            }
        }
    }
    // What is still in the ring was received within the run.
    ring.receive(0, |frame| {
        receiver.frame(frame.bytes, frame.realtime_ns);
    })?;
    let (_, drops) = ring.statistics()?;
    receiver.ring_drops(drops);
    println!("{}", serde_json::to_string(&receiver.summary()).context("encode summary")?);
    Ok(())
}
