//! `dialtone-gen`: simulated phones on the gateway's LAN (or the far end on its WAN).
//!
//! `lease` obtains real leases from the gateway's DHCP for N phones and writes them to a file;
//! `send` transmits 64-byte UDP frames from those phones' port blocks over AF_XDP (optionally
//! churning leases while it sends); `release` gives every lease of a file back. Summaries are JSON
//! on stdout.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use dialtone_config::{Config, CpuPolicy, MacAddr};
use dialtone_traffic::fleet::{LeasesFile, SlotPhone, Slots};
use dialtone_traffic::generator::{self, Classes, LeaseDriver, Mode, SendPlan};
use dialtone_traffic::lease::LeaseEngine;
use dialtone_traffic::sys::{self, PacketSocket, XskTx};

#[derive(Parser, Debug)]
#[command(
    name = "dialtone-gen",
    version,
    about = "Simulated phones: lease from dialtone's DHCP, send UDP from their port blocks over AF_XDP, churn leases",
    long_about = "Simulated phones for the dialtone lab.\n\n\
    lease    DORA for N phones (distinct MACs, one vendor class) over AF_PACKET, broadcast flag set,\n\
    \x20        retrying lost exchanges; writes the leases (address, port block from the DHCP port\n\
    \x20        option, public address from the configuration) to a JSON file.\n\
    send     64-byte UDP frames (60 + FCS) over an AF_XDP socket (TX only, copy mode, no XDP\n\
    \x20        program), each from a port inside the sender's block (or --outside it), payload =\n\
    \x20        phone id + port + CLOCK_MONOTONIC send time. --inbound sends from the far end to the\n\
    \x20        phones' public address and port instead. --churn R releases R leases a second and\n\
    \x20        leases fresh MACs in their place while sending, sending only from leased phones.\n\
    release  RELEASE every lease of a leases file."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Lease N phones and write their leases to a file.
    Lease {
        #[command(flatten)]
        dhcp: DhcpArgs,
        /// Number of phones.
        #[arg(long)]
        phones: usize,
        /// Where to write the leases (JSON).
        #[arg(long)]
        out: PathBuf,
        /// DORAs started per second.
        #[arg(long, default_value_t = 2000)]
        rate: u64,
        /// Exchanges open at once.
        #[arg(long, default_value_t = 512)]
        in_flight: usize,
    },
    /// Send test frames from leased phones (or to them with --inbound).
    Send {
        /// The gateway's configuration file (classes and port-block plans).
        #[arg(long)]
        config: PathBuf,
        /// Interface to send on (the phones' eth0, or the far end's eth0 with --inbound).
        #[arg(long)]
        interface: String,
        /// Leases written by `lease`.
        #[arg(long)]
        leases: PathBuf,
        /// Frames per second (0 = as fast as the socket takes them).
        #[arg(long, default_value_t = 0)]
        rate: u64,
        /// Seconds to send.
        #[arg(long, default_value_t = 5.0)]
        duration: f64,
        /// CPU to pin the transmit loop to.
        #[arg(long)]
        cpu: Option<usize>,
        /// Ports per phone, spread over its block.
        #[arg(long, default_value_t = 4)]
        flows: u32,
        /// Send from ports just outside each phone's block (the gateway must drop every frame).
        #[arg(long)]
        outside: bool,
        /// Send from the far end to the phones' public address and port.
        #[arg(long)]
        inbound: bool,
        /// The gateway's MAC on the side sent to (default: the leases' gateway MAC, LAN side;
        /// required with --inbound: the gateway's WAN MAC).
        #[arg(long)]
        gateway_mac: Option<MacAddr>,
        /// The far end's address.
        #[arg(long, default_value = "203.0.113.10")]
        far: Ipv4Addr,
        /// AF_XDP queue to bind.
        #[arg(long, default_value_t = 0)]
        queue: u32,
        /// UMEM frames.
        #[arg(long, default_value_t = 4096)]
        umem_frames: u32,
        /// Lease changes per second while sending (RELEASE of a phone, DORA for a fresh MAC).
        #[arg(long, default_value_t = 0)]
        churn: u64,
        /// Vendor class of churned-in phones (needed with --churn).
        #[arg(long)]
        vendor_class: Option<String>,
        /// Run number mixed into churned-in MACs (must differ from the `lease` run's MACs' user).
        #[arg(long, default_value_t = 2)]
        churn_run: u8,
    },
    /// RELEASE every lease of a leases file.
    Release {
        /// Interface the phones are on.
        #[arg(long)]
        interface: String,
        /// Leases written by `lease`.
        #[arg(long)]
        leases: PathBuf,
        /// The gateway's configuration file.
        #[arg(long)]
        config: PathBuf,
        /// Vendor class (option 60) the phones present.
        #[arg(long)]
        vendor_class: String,
    },
}

#[derive(clap::Args, Debug)]
struct DhcpArgs {
    /// The gateway's configuration file (to place leases in their class and block).
    #[arg(long)]
    config: PathBuf,
    /// Interface the phones are on.
    #[arg(long)]
    interface: String,
    /// Vendor class (option 60) the phones present.
    #[arg(long)]
    vendor_class: String,
    /// Run number: the second byte of the phones' MACs' serial space, so runs do not collide.
    #[arg(long, default_value_t = 1)]
    run: u8,
    /// Milliseconds before a lost exchange is restarted.
    #[arg(long, default_value_t = 1000)]
    retry_ms: u64,
    /// Tries per phone.
    #[arg(long, default_value_t = 5)]
    attempts: u32,
}

fn load_config(path: &std::path::Path) -> anyhow::Result<Config> {
    match dialtone_config::load(path, CpuPolicy::Ignore) {
        Ok(loaded) => Ok(loaded.config),
        Err(errors) => bail!("{}: invalid configuration:\n{errors}", path.display()),
    }
}

fn driver(
    config: Config,
    interface: &str,
    vendor_class: &[u8],
    retry_ms: u64,
    attempts: u32,
) -> anyhow::Result<LeaseDriver> {
    let socket = PacketSocket::open(interface)?;
    let seed = std::process::id().wrapping_mul(2_654_435_761) ^ sys::monotonic_ns() as u32;
    let engine = LeaseEngine::new(config, vendor_class, retry_ms * 1_000_000, attempts, seed);
    Ok(LeaseDriver::new(socket, engine))
}

fn stop_flag() -> anyhow::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop)).context("signal handler")?;
    }
    Ok(stop)
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Lease { dhcp, phones, out, rate, in_flight } => {
            let config = load_config(&dhcp.config)?;
            let mut driver =
                driver(config, &dhcp.interface, dhcp.vendor_class.as_bytes(), dhcp.retry_ms, dhcp.attempts)?;
            let start = sys::monotonic_ns();
            let leases = generator::lease_fleet(&mut driver, phones, dhcp.run, rate, in_flight)?;
            let seconds = (sys::monotonic_ns() - start) as f64 / 1e9;
            let leased: Vec<_> = leases.into_iter().flatten().collect();
            let summary = serde_json::json!({
                "phones": phones,
                "leased": leased.len(),
                "seconds": seconds,
                "leases_per_second": leased.len() as f64 / seconds.max(1e-9),
                "dhcp": driver.counters(),
                "send_errors": driver.send_errors(),
            });
            LeasesFile { leases: leased }.write(&out)?;
            println!("{summary}");
        }
        Command::Release { interface, leases, config, vendor_class } => {
            let config = load_config(&config)?;
            let file = LeasesFile::read(&leases)?;
            let mut driver = driver(config, &interface, vendor_class.as_bytes(), 1000, 1)?;
            for lease in &file.leases {
                driver.release(lease);
            }
            println!("{}", serde_json::json!({ "released": file.leases.len(), "send_errors": driver.send_errors() }));
        }
        Command::Send {
            config,
            interface,
            leases,
            rate,
            duration,
            cpu,
            flows,
            outside,
            inbound,
            gateway_mac,
            far,
            queue,
            umem_frames,
            churn,
            vendor_class,
            churn_run,
        } => {
            let config = load_config(&config)?;
            let file = LeasesFile::read(&leases)?;
            let Some(first) = file.leases.first() else { bail!("{} holds no leases", leases.display()) };
            let mode = if inbound {
                let gateway_mac = gateway_mac.context("--inbound needs --gateway-mac (the gateway's WAN MAC)")?;
                Mode::Inbound { local_mac: sys::interface_mac(&interface)?, gateway_mac: gateway_mac.0, far }
            } else {
                Mode::Outbound { gateway_mac: gateway_mac.map_or(first.gateway_mac, |m| m.0), far, outside }
            };
            if churn > 0 && inbound {
                bail!("--churn changes the phones' leases: it runs on the phones' side, not with --inbound");
            }
            let slots = Slots::new(file.leases.len());
            for (i, lease) in file.leases.iter().enumerate() {
                let phone = SlotPhone::of(lease).with_context(|| format!("lease {i} has no power-of-two block"))?;
                slots.set(i, &phone);
            }
            let stop = stop_flag()?;
            let plan = SendPlan { rate_pps: rate, duration: Duration::from_secs_f64(duration), flows_per_phone: flows };
            let classes = Classes::new(config.clone());
            let mut xsk = XskTx::open(&interface, queue, umem_frames)?;
            let churn_done = Arc::new(AtomicBool::new(false));
            let (send_summary, churn_summary) = std::thread::scope(|scope| -> anyhow::Result<_> {
                let churner =
                    if churn > 0 {
                        let vendor_class = vendor_class.context("--churn needs --vendor-class")?;
                        let mut driver = driver(config.clone(), &interface, vendor_class.as_bytes(), 500, 5)?;
                        let mut leases: Vec<_> = file.leases.iter().copied().map(Some).collect();
                        let (slots, done) = (&slots, &churn_done);
                        Some(scope.spawn(move || {
                            generator::churn(&mut driver, slots, &mut leases, churn_run, 0, churn, done)
                        }))
                    } else {
                        None
                    };
                if let Some(cpu) = cpu {
                    sys::pin_to_cpu(cpu)?;
                }
                let sent = generator::transmit(&mut xsk, &slots, &classes, &mode, &plan, &stop);
                churn_done.store(true, Ordering::Relaxed);
                let churned = match churner {
                    Some(handle) => Some(handle.join().map_err(|_| anyhow::anyhow!("churn thread panicked"))??),
                    None => None,
                };
                Ok((sent, churned))
            })?;
            let summary = serde_json::json!({
                "send": send_summary,
                "churn": churn_summary,
                "phones": slots.len(),
                "leased_at_end": slots.leased(),
            });
            println!("{summary}");
        }
    }
    Ok(())
}
