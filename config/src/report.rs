//! The capacity plan `dialtone check-config` prints: what each class can hold and what its first
//! phone is told.

use std::fmt::Write as _;

use crate::model::Config;

impl Config {
    /// A table of each class's capacity: phones, public addresses, block geometry, first and last
    /// block, and the RFC 7618 option bytes its first phone receives.
    pub fn capacity_report(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "configuration {} is valid", self.source.display());
        let _ = writeln!(
            out,
            "lan {} {}   wan {} {} via {}",
            self.lan.interface, self.lan.address, self.wan.interface, self.wan.address, self.wan.next_hop
        );
        let mut total_phones = 0u64;
        for (id, class) in self.classes.iter().enumerate() {
            let plan = &class.plan;
            total_phones += u64::from(plan.phones);
            let _ = writeln!(out, "\nclass {id} `{}`", class.name);
            let _ = writeln!(out, "  phones             {} ({})", plan.phones, class.lan_pool);
            let _ = writeln!(
                out,
                "  public addresses   {} used of {} ({})",
                plan.public_addresses_used(),
                plan.public_addresses,
                class.public_pool
            );
            let _ = writeln!(out, "  ports per phone    {}", plan.ports_per_phone);
            let _ = writeln!(
                out,
                "  blocks per address {} (ports {}..=65535, below {} reserved)",
                plan.blocks_per_address, plan.reserved_ports, plan.reserved_ports
            );
            let spare = u64::from(plan.public_addresses) * u64::from(plan.blocks_per_address) - u64::from(plan.phones);
            let _ = writeln!(out, "  spare blocks       {spare}");
            if let (Some(first), Some(last)) = (plan.port_block_for(0), plan.port_block_for(plan.phones - 1)) {
                let first_addr = class.address_at(0).map(|a| a.to_string()).unwrap_or_default();
                let last_addr = class.address_at(plan.phones - 1).map(|a| a.to_string()).unwrap_or_default();
                let _ = writeln!(
                    out,
                    "  first block        {first_addr} -> {}:{}-{}",
                    first.public_ip, first.port_lo, first.port_hi
                );
                let _ = writeln!(
                    out,
                    "  last block         {last_addr} -> {}:{}-{}",
                    last.public_ip, last.port_lo, last.port_hi
                );
                let bytes = first.option159_payload();
                let code = class.port_option.map_or("none".to_owned(), |c| c.to_string());
                let _ = writeln!(
                    out,
                    "  option {code:<11} {:02x} {:02x} {:02x} {:02x} (offset 0, PSID-len {}, PSID {:#06x}) for the first phone",
                    bytes[0], bytes[1], bytes[2], bytes[3], bytes[1], first.port_lo
                );
            }
        }
        let _ = writeln!(out, "\n{} classes, {total_phones} phones in all", self.classes.len());
        out
    }
}
