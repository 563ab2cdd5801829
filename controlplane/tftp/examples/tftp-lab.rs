//! Runs the TFTP server alone, for trying it with real clients (tftp-hpa, atftp, curl).
//!
//! ```text
//! cargo run -p dialtone-tftp --example tftp-lab -- CONFIG \
//!     [--listen 127.0.0.1:6969] [--root CLASS=DIR]... [--lease IP=CLASS,MAC,LAN_IP]...
//! ```
//!
//! `--lease` stands in for the lease table: requests from `IP` are treated as the phone `MAC` of
//! `CLASS` holding `LAN_IP` (which fixes its port block). Non-zero counters are printed when they change.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use dialtone_config::{CpuPolicy, MacAddr};
use dialtone_tftp::{spawn, ClientDirectory, ClientInfo, Engine, TftpMetrics};

struct StaticLeases(HashMap<Ipv4Addr, ClientInfo>);

impl ClientDirectory for StaticLeases {
    fn lookup(&self, ip: Ipv4Addr) -> Option<ClientInfo> {
        self.0.get(&ip).cloned()
    }
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let path = PathBuf::from(
        args.next()
            .context("usage: tftp-lab CONFIG [--listen ADDR] [--root CLASS=DIR] [--lease IP=CLASS,MAC,LAN_IP]")?,
    );
    let mut config = dialtone_config::load(&path, CpuPolicy::Ignore)
        .map_err(|e| anyhow!("{e:?}"))
        .with_context(|| format!("loading {}", path.display()))?
        .config;
    let mut leases = HashMap::new();
    while let Some(flag) = args.next() {
        let value = args.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--listen" => config.tftp.listen = value.parse().context("--listen")?,
            "--root" => {
                let (class, dir) = value.split_once('=').context("--root CLASS=DIR")?;
                let c = config.classes.iter_mut().find(|c| c.name == class).context("unknown class")?;
                c.tftp_root = Path::new(dir).to_path_buf();
            }
            "--lease" => {
                let (ip, rest) = value.split_once('=').context("--lease IP=CLASS,MAC,LAN_IP")?;
                let parts: Vec<&str> = rest.split(',').collect();
                let [class, mac, lan_ip] = parts[..] else { bail!("--lease IP=CLASS,MAC,LAN_IP") };
                let index = config.classes.iter().position(|c| c.name == class).context("unknown class")?;
                let lan_ip: Ipv4Addr = lan_ip.parse()?;
                let port_block = config.classes[index].port_block_of(lan_ip).context("LAN_IP not in the class pool")?;
                let mac: MacAddr = mac.parse()?;
                leases.insert(
                    ip.parse::<Ipv4Addr>()?,
                    ClientInfo { class: index, mac, lan_ip, port_block, parameters: BTreeMap::new() },
                );
            }
            other => bail!("unknown flag {other}"),
        }
    }
    let metrics = Arc::new(TftpMetrics::default());
    let engine = Arc::new(Engine::new(config.tftp.clone(), config.classes.clone(), Arc::new(StaticLeases(leases))));
    let server = spawn(engine, Arc::clone(&metrics))?;
    let listen: SocketAddr = server.local_addr();
    println!("tftp-lab listening on {listen} with {} threads", server.thread_count());
    let mut last = Vec::new();
    loop {
        std::thread::sleep(Duration::from_secs(2));
        let now: Vec<_> = metrics.samples().into_iter().filter(|(_, _, v)| *v != 0).collect();
        if now != last {
            for (name, label, value) in &now {
                match label {
                    Some((k, v)) => println!("{name}{{{k}=\"{v}\"}} {value}"),
                    None => println!("{name} {value}"),
                }
            }
            println!("--");
            last = now;
        }
    }
}
