//! The XDP program: loaded with aya, its maps filled from the configuration, attached to the LAN
//! and the WAN interface (native mode, falling back to generic mode per `dataplane.xdp_mode`),
//! and detached when [`XdpProgram`] is dropped — on every exit path, including a start that fails
//! halfway (the attachments are bpf_links owned by this value; the kernel also drops them when
//! the process dies, whatever the signal).

use std::net::Ipv4Addr;

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray, XskMap};
use aya::programs::xdp::XdpLinkId;
use aya::programs::{Xdp, XdpMode};
use aya::Ebpf;
use dialtone_config::{Config, XdpMode as ConfigXdpMode};

use crate::netdev::Interface;
use crate::Error;

/// The object clang built from `bpf/dialtone.bpf.c` (see build.rs).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/dialtone.bpf.o"));

/// Entries of each XSKMAP (`MAX_QUEUES` in the C program).
pub const MAX_QUEUES: u32 = 256;

/// How a program ended up attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attachment {
    /// In the driver (native XDP).
    Native,
    /// In the generic (SKB) path.
    Generic,
}

impl Attachment {
    /// Name for logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::Generic => "generic",
        }
    }
}

/// Frames the XDP program handed to the kernel or to the sockets, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct XdpVerdicts {
    /// LAN frames passed to the kernel.
    pub lan_pass: u64,
    /// LAN frames redirected to a socket.
    pub lan_redirect: u64,
    /// WAN frames passed to the kernel.
    pub wan_pass: u64,
    /// WAN frames redirected to a socket.
    pub wan_redirect: u64,
}

/// The loaded, attached program and its maps.
pub struct XdpProgram {
    // Field order: the maps and links go before `ebpf` is dropped; dropping `ebpf` drops the
    // programs, which detaches every link they still hold.
    #[allow(dead_code)]
    gateway: BpfHashMap<MapData, u32, u8>,
    #[allow(dead_code)]
    pools: LpmTrie<MapData, u32, u32>,
    lan_sockets: XskMap<MapData>,
    wan_sockets: XskMap<MapData>,
    verdicts: PerCpuArray<MapData, u64>,
    links: Vec<(&'static str, String, XdpLinkId)>,
    ebpf: Ebpf,
    attachment: Attachment,
}

impl std::fmt::Debug for XdpProgram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdpProgram")
            .field("attachment", &self.attachment)
            .field("links", &self.links.iter().map(|l| &l.1).collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

fn bpf_error(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Xdp(format!("{what}: {e}"))
}

impl XdpProgram {
    /// Loads the program, fills the address maps from `config` and attaches it to both
    /// interfaces. Sockets are added later with [`XdpProgram::set_socket`]; until then a queue's
    /// traffic falls back to the kernel.
    pub fn attach(config: &Config, lan: &Interface, wan: &Interface) -> Result<Self, Error> {
        let mut ebpf = Ebpf::load(OBJECT).map_err(|e| bpf_error("loading the XDP object", e))?;
        let mut gateway: BpfHashMap<MapData, u32, u8> = take(&mut ebpf, "gateway_addrs")?;
        for addr in gateway_addresses(config) {
            gateway.insert(u32::from(addr).to_be(), 1u8, 0).map_err(|e| bpf_error("filling gateway_addrs", e))?;
        }
        let mut pools: LpmTrie<MapData, u32, u32> = take(&mut ebpf, "public_pools")?;
        for (index, class) in config.classes.iter().enumerate() {
            let net = class.public_pool;
            let key = Key::new(u32::from(net.prefix_len()), u32::from(net.network()).to_be());
            let value = u32::try_from(index).unwrap_or(u32::MAX);
            pools.insert(&key, value, 0).map_err(|e| bpf_error("filling public_pools", e))?;
        }
        let lan_sockets: XskMap<MapData> = take(&mut ebpf, "lan_sockets")?;
        let wan_sockets: XskMap<MapData> = take(&mut ebpf, "wan_sockets")?;
        let verdicts: PerCpuArray<MapData, u64> = take(&mut ebpf, "verdicts")?;
        // Every map stays open as long as the programs: their instructions were relocated
        // against these descriptors.

        for name in ["dialtone_lan", "dialtone_wan"] {
            xdp_program(&mut ebpf, name)?.load().map_err(|e| bpf_error(&format!("loading {name}"), e))?;
        }
        let mut program = XdpProgram {
            gateway,
            pools,
            lan_sockets,
            wan_sockets,
            verdicts,
            links: Vec::new(),
            ebpf,
            attachment: Attachment::Native,
        };
        let modes: &[Attachment] = match config.dataplane.xdp_mode {
            ConfigXdpMode::Auto => &[Attachment::Native, Attachment::Generic],
            ConfigXdpMode::Native => &[Attachment::Native],
            ConfigXdpMode::Generic => &[Attachment::Generic],
        };
        let mut last_error = None;
        for &mode in modes {
            match program.attach_both(lan, wan, mode) {
                Ok(()) => {
                    program.attachment = mode;
                    tracing::info!(mode = mode.name(), lan = %lan.name, wan = %wan.name, "xdp program attached");
                    return Ok(program);
                }
                Err(e) => {
                    tracing::warn!(mode = mode.name(), error = %e, "xdp attach failed");
                    program.detach_all();
                    last_error = Some(e);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| Error::Xdp("no XDP mode to try".into())))
    }

    fn attach_both(&mut self, lan: &Interface, wan: &Interface, mode: Attachment) -> Result<(), Error> {
        let flags = match mode {
            Attachment::Native => XdpMode::Driver,
            Attachment::Generic => XdpMode::Skb,
        };
        for (name, interface) in [("dialtone_lan", lan), ("dialtone_wan", wan)] {
            let program = xdp_program(&mut self.ebpf, name)?;
            let link = program.attach_to_if_index(interface.ifindex, flags).map_err(|e| {
                bpf_error(&format!("attaching {name} to {} in {} mode", interface.name, mode.name()), e)
            })?;
            self.links.push((name, interface.name.clone(), link));
        }
        Ok(())
    }

    fn detach_all(&mut self) {
        while let Some((name, interface, link)) = self.links.pop() {
            match xdp_program(&mut self.ebpf, name).and_then(|p| p.detach(link).map_err(|e| bpf_error(name, e))) {
                Ok(()) => tracing::info!(program = name, interface = %interface, "xdp program detached"),
                Err(e) => tracing::warn!(program = name, interface = %interface, error = %e, "xdp detach failed"),
            }
        }
    }

    /// The mode both programs are attached in.
    pub fn attachment(&self) -> Attachment {
        self.attachment
    }

    /// Puts an AF_XDP socket into the slot of `queue` on the LAN (`lan == true`) or WAN side.
    pub fn set_socket(&mut self, lan: bool, queue: u32, fd: std::os::fd::RawFd) -> Result<(), Error> {
        let map = if lan { &mut self.lan_sockets } else { &mut self.wan_sockets };
        map.set(queue, fd, 0).map_err(|e| bpf_error(&format!("adding the socket of queue {queue} to the XSKMAP"), e))
    }

    /// Empties a socket slot (before the socket closes).
    pub fn clear_socket(&mut self, lan: bool, queue: u32) {
        let map = if lan { &mut self.lan_sockets } else { &mut self.wan_sockets };
        let _ = map.unset(queue);
    }

    /// The program's own counters, summed over CPUs.
    pub fn verdicts(&self) -> XdpVerdicts {
        let sum = |index: u32| -> u64 { self.verdicts.get(&index, 0).map_or(0, |values| values.iter().sum()) };
        XdpVerdicts { lan_pass: sum(0), lan_redirect: sum(1), wan_pass: sum(2), wan_redirect: sum(3) }
    }
}

impl Drop for XdpProgram {
    fn drop(&mut self) {
        self.detach_all();
    }
}

fn xdp_program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Xdp, Error> {
    ebpf.program_mut(name)
        .ok_or_else(|| Error::Xdp(format!("program {name} missing from the object")))?
        .try_into()
        .map_err(|e| bpf_error(name, e))
}

fn take<M>(ebpf: &mut Ebpf, name: &str) -> Result<M, Error>
where
    M: TryFrom<aya::maps::Map>,
    M::Error: std::fmt::Display,
{
    let map = ebpf.take_map(name).ok_or_else(|| Error::Xdp(format!("map {name} missing from the object")))?;
    M::try_from(map).map_err(|e| bpf_error(name, e))
}

/// Addresses whose traffic from the LAN belongs to the kernel: the gateway's LAN and WAN
/// addresses and the LAN subnet's broadcast address.
pub fn gateway_addresses(config: &Config) -> Vec<Ipv4Addr> {
    let mut addrs = vec![config.lan.address.addr(), config.wan.address.addr(), config.lan.address.broadcast()];
    addrs.sort_unstable();
    addrs.dedup();
    addrs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_keeps_the_gateways_own_addresses_and_the_lan_broadcast() {
        let text = include_str!("../../../config/examples/dialtone.toml");
        let config = dialtone_config::load_str(
            "dialtone.toml",
            text,
            std::path::Path::new("."),
            dialtone_config::CpuPolicy::Ignore,
        )
        .expect("lab config")
        .config;
        let expected: Vec<Ipv4Addr> =
            ["100.64.0.1", "100.64.255.255", "192.0.2.1"].iter().map(|a| a.parse().expect("address")).collect();
        assert_eq!(gateway_addresses(&config), expected);
    }

    #[test]
    fn the_embedded_object_is_bpf_elf() {
        // ELF magic, 64-bit, and machine EM_BPF (247) at offset 18.
        assert_eq!(&OBJECT[..4], b"\x7fELF");
        assert_eq!(OBJECT[4], 2);
        assert_eq!(u16::from_le_bytes([OBJECT[18], OBJECT[19]]), 247);
    }
}
