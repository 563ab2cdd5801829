//! The receiver's verdict on one frame: did the gateway translate it as NAPPT must?
//!
//! Claims 001: 3-7 (18-22, 33-37): outbound, the phone's private source becomes the public address
//! of its block and the port is left unchanged; inbound, the public destination inside a phone's
//! block becomes that phone's private address, port unchanged. The check runs the port-block
//! function backwards on what arrived and compares with the phone id the generator wrote into
//! the payload, so it needs the gateway's configuration but no lease table.

use std::net::Ipv4Addr;

use dialtone_config::Config;

use crate::frame::{Payload, PhoneId, UdpFlow};

/// Which side of the gateway the frame was generated on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Phone -> far end: the receiver sits behind the WAN side and reads the source.
    Outbound,
    /// Far end -> phone's public address: the receiver sits on the LAN side and reads the
    /// destination.
    Inbound,
}

/// The verdict on one received frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Address and port map back to the phone in the payload.
    Correct,
    /// Address and port map back to another phone: a mistranslation.
    Mistranslated,
    /// Address and port are in no phone's block (outbound) or the address is in no class's LAN
    /// pool (inbound): the frame should never have been forwarded like this.
    OutOfBlock,
    /// The phone-side port differs from the one the generator sent (NAPPT never rewrites it).
    PortChanged,
}

impl Verdict {
    /// Every verdict, in counter order.
    pub const ALL: [Verdict; 4] = [Verdict::Correct, Verdict::Mistranslated, Verdict::OutOfBlock, Verdict::PortChanged];

    /// Counter name in summaries.
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Correct => "correct",
            Verdict::Mistranslated => "mistranslated",
            Verdict::OutOfBlock => "out_of_block",
            Verdict::PortChanged => "port_changed",
        }
    }
}

/// Runs the inverse of the port-block function of one configuration.
#[derive(Debug, Clone)]
pub struct Checker {
    config: Config,
}

impl Checker {
    /// A checker for the gateway running `config`.
    pub fn new(config: Config) -> Self {
        Self { config }
    }

    /// The phone owning `public:port`, by the inverse function (claims 001: 5, 20, 35).
    pub fn owner_of_public(&self, public: Ipv4Addr, port: u16) -> Option<PhoneId> {
        let (index, class) = self.config.class_of_public(public)?;
        let offset = class.plan.offset_for(public, port)?;
        PhoneId::new(index, offset)
    }

    /// The phone holding private address `address`.
    pub fn owner_of_private(&self, address: Ipv4Addr) -> Option<PhoneId> {
        let (index, class) = self.config.class_of_address(address)?;
        PhoneId::new(index, class.offset_of(address)?)
    }

    /// The verdict on a frame received with `flow` and carrying `payload`.
    pub fn check(&self, direction: Direction, flow: &UdpFlow, payload: &Payload) -> Verdict {
        let (port, owner) = match direction {
            Direction::Outbound => (flow.src_port, self.owner_of_public(flow.src, flow.src_port)),
            Direction::Inbound => (flow.dst_port, self.owner_of_private(flow.dst)),
        };
        if port != payload.port {
            return Verdict::PortChanged;
        }
        match owner {
            None => Verdict::OutOfBlock,
            Some(owner) if owner == payload.phone => Verdict::Correct,
            Some(_) => Verdict::Mistranslated,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::bench_config;
    use proptest::prelude::*;

    fn flow(src: Ipv4Addr, src_port: u16, dst: Ipv4Addr, dst_port: u16) -> UdpFlow {
        UdpFlow { src_mac: [2, 0, 0, 0, 0, 2], dst_mac: [2, 0, 0, 0, 0, 1], src, dst, src_port, dst_port }
    }

    fn payload(phone: PhoneId, port: u16) -> Payload {
        Payload { phone, port, sent_ns: 0, sequence: 0 }
    }

    const FAR: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);

    #[test]
    fn outbound_verdicts() {
        let config = bench_config();
        let class = &config.classes[1];
        let checker = Checker::new(config.clone());
        let phone = PhoneId { class: 1, offset: 1500 };
        let block = class.plan.port_block_for(1500).expect("offset in pool");
        let port = block.port_lo + 5;
        let sent = payload(phone, port);
        let good = flow(block.public_ip, port, FAR, 9);
        assert_eq!(checker.check(Direction::Outbound, &good, &sent), Verdict::Correct);
        // The neighbour's block on the same address: another phone.
        let other = flow(block.public_ip, block.port_hi + 1, FAR, 9);
        assert_eq!(
            checker.check(Direction::Outbound, &other, &payload(phone, block.port_hi + 1)),
            Verdict::Mistranslated
        );
        // Right port, the next public address: another phone.
        let next_ip = Ipv4Addr::from(u32::from(block.public_ip) + 1);
        assert_eq!(checker.check(Direction::Outbound, &flow(next_ip, port, FAR, 9), &sent), Verdict::Mistranslated);
        // The port was rewritten.
        assert_eq!(
            checker.check(Direction::Outbound, &flow(block.public_ip, port + 1, FAR, 9), &sent),
            Verdict::PortChanged
        );
        // Untranslated private source, and a reserved port on a public address.
        let private = class.address_at(1500).expect("offset in pool");
        assert_eq!(checker.check(Direction::Outbound, &flow(private, port, FAR, 9), &sent), Verdict::OutOfBlock);
        assert_eq!(
            checker.check(Direction::Outbound, &flow(block.public_ip, 80, FAR, 9), &payload(phone, 80)),
            Verdict::OutOfBlock
        );
    }

    #[test]
    fn inbound_verdicts() {
        let config = bench_config();
        let class = &config.classes[0];
        let checker = Checker::new(config.clone());
        let phone = PhoneId { class: 0, offset: 42 };
        let private = class.address_at(42).expect("offset in pool");
        let sent = payload(phone, 2000);
        assert_eq!(checker.check(Direction::Inbound, &flow(FAR, 9, private, 2000), &sent), Verdict::Correct);
        let next = class.address_at(43).expect("offset in pool");
        assert_eq!(checker.check(Direction::Inbound, &flow(FAR, 9, next, 2000), &sent), Verdict::Mistranslated);
        assert_eq!(checker.check(Direction::Inbound, &flow(FAR, 9, private, 2001), &sent), Verdict::PortChanged);
        let public = class.plan.port_block_for(42).expect("offset").public_ip;
        assert_eq!(checker.check(Direction::Inbound, &flow(FAR, 9, public, 2000), &sent), Verdict::OutOfBlock);
    }

    proptest! {
        /// Every port of every phone's block maps back to that phone, and to no other.
        #[test]
        fn inverse_mapping_names_the_sender(class_pick: usize, pick: u32, port_pick: u32, other: u32) {
            let config = bench_config();
            let checker = Checker::new(config.clone());
            let class_index = class_pick % config.classes.len();
            let plan = config.classes[class_index].plan;
            let offset = pick % plan.phones;
            let block = plan.port_block_for(offset).expect("offset in pool");
            let port = block.port_lo + (port_pick % block.len()) as u16;
            let phone = PhoneId::new(class_index, offset).expect("fits");
            let translated = flow(block.public_ip, port, FAR, 9);
            prop_assert_eq!(checker.check(Direction::Outbound, &translated, &payload(phone, port)), Verdict::Correct);
            let impostor = PhoneId::new(class_index, other % plan.phones).expect("fits");
            let verdict = checker.check(Direction::Outbound, &translated, &payload(impostor, port));
            prop_assert_eq!(verdict == Verdict::Correct, impostor == phone);
        }
    }
}
