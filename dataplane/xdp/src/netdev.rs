//! What the engine needs to know about an interface, read from sysfs (`/sys/class/net/NAME/`:
//! `ip netns exec` mounts the namespace's own view there): its index, its MAC and how many
//! receive queues it has.

use std::path::PathBuf;

use dialtone_config::MacAddr;

use crate::Error;

/// One network interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    /// Name, e.g. `lan0`.
    pub name: String,
    /// Kernel interface index.
    pub ifindex: u32,
    /// Its MAC (source of every frame the workers send on it).
    pub mac: MacAddr,
    /// Number of receive queues (each gets an AF_XDP socket of one worker).
    pub rx_queues: u32,
}

impl Interface {
    /// Reads `name` from sysfs.
    pub fn lookup(name: &str) -> Result<Self, Error> {
        let dir = PathBuf::from("/sys/class/net").join(name);
        let fail = |what: &str, e: &dyn std::fmt::Display| Error::Interface(format!("{name}: {what}: {e}"));
        let read = |file: &str| std::fs::read_to_string(dir.join(file)).map(|s| s.trim().to_owned());
        let ifindex =
            read("ifindex").map_err(|e| fail("no such interface", &e))?.parse().map_err(|e| fail("ifindex", &e))?;
        let mac = current_mac(name).map_err(|e| fail("address", &e))?;
        let rx_queues = std::fs::read_dir(dir.join("queues"))
            .map_err(|e| fail("queues", &e))?
            .filter_map(Result::ok)
            .filter(|entry| entry.file_name().to_string_lossy().starts_with("rx-"))
            .count();
        let rx_queues = u32::try_from(rx_queues.max(1)).unwrap_or(1);
        Ok(Self { name: name.to_owned(), ifindex, mac, rx_queues })
    }
}

/// The current MAC of interface `name`, from sysfs.
pub fn current_mac(name: &str) -> Result<MacAddr, String> {
    let text = std::fs::read_to_string(PathBuf::from("/sys/class/net").join(name).join("address"))
        .map_err(|e| e.to_string())?;
    text.trim().parse::<MacAddr>().map_err(|e| e.to_string())
}

/// The queues worker `worker` of `workers` owns on an interface with `queues` receive queues:
/// `worker`, `worker + workers`, `worker + 2 * workers`, ... — so every queue has exactly one
/// owner whatever the queue and worker counts, and a frame's queue (chosen by the sender's hash
/// on a veth, by RSS on a NIC) always reaches a socket.
pub fn queues_of(worker: usize, workers: usize, queues: u32) -> Vec<u32> {
    let queues = usize::try_from(queues).unwrap_or(usize::MAX);
    (worker..queues).step_by(workers.max(1)).filter_map(|q| u32::try_from(q).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_queue_has_exactly_one_owner() {
        for workers in 1..5 {
            for queues in 1..9u32 {
                let mut owned: Vec<u32> = (0..workers).flat_map(|w| queues_of(w, workers, queues)).collect();
                owned.sort_unstable();
                assert_eq!(owned, (0..queues).collect::<Vec<_>>(), "{workers} workers, {queues} queues");
            }
        }
        assert_eq!(queues_of(1, 2, 5), vec![1, 3]);
        assert!(queues_of(2, 3, 2).is_empty());
    }

    #[test]
    fn loopback_is_readable() {
        let lo = Interface::lookup("lo").expect("lo exists in every namespace");
        assert_eq!(lo.ifindex, 1);
        assert_eq!(lo.mac, MacAddr([0; 6]));
        assert!(Interface::lookup("no-such-interface-0").is_err());
    }
}
