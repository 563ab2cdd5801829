//! ARP packets (RFC 826). The dataplane only recognises them (they go to the kernel), but the
//! view is here so every header the gateway sees has one boundary.
//!
//! ```text
//! +--------+--------+------+------+--------+-----------+-----------+-----------+-----------+
//! | htype  | ptype  | hlen | plen |  oper  | sender hw | sender pr | target hw | target pr |
//! |   2    |   2    |  1   |  1   |   2    |   hlen    |   plen    |   hlen    |   plen    |
//! +--------+--------+------+------+--------+-----------+-----------+-----------+-----------+
//! ```

use crate::{read_u16, WireError};

/// ARP request.
pub const OPERATION_REQUEST: u16 = 1;
/// ARP reply.
pub const OPERATION_REPLY: u16 = 2;

mod field {
    pub const HTYPE: usize = 0;
    pub const PTYPE: usize = 2;
    pub const HLEN: usize = 4;
    pub const PLEN: usize = 5;
    pub const OPER: usize = 6;
    pub const ADDRESSES: usize = 8;
}

/// A view of an ARP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArpPacket<T> {
    buffer: T,
}

impl<T: AsRef<[u8]>> ArpPacket<T> {
    /// Wraps a buffer the caller already checked.
    pub fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps untrusted bytes: the fixed part and the four addresses it announces are present.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let packet = Self::new_unchecked(buffer);
        let data = packet.buffer.as_ref();
        if data.len() < field::ADDRESSES {
            return Err(WireError::Truncated);
        }
        let needed = field::ADDRESSES + 2 * usize::from(packet.hardware_len()) + 2 * usize::from(packet.protocol_len());
        if data.len() < needed {
            return Err(WireError::Truncated);
        }
        Ok(packet)
    }

    /// Hardware type (1 for Ethernet).
    pub fn hardware_type(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::HTYPE)
    }

    /// Protocol type (0x0800 for IPv4).
    pub fn protocol_type(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::PTYPE)
    }

    /// Hardware address length.
    pub fn hardware_len(&self) -> u8 {
        self.buffer.as_ref()[field::HLEN]
    }

    /// Protocol address length.
    pub fn protocol_len(&self) -> u8 {
        self.buffer.as_ref()[field::PLEN]
    }

    /// Operation (request, reply).
    pub fn operation(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::OPER)
    }

    fn address(&self, index: usize) -> &[u8] {
        let h = usize::from(self.hardware_len());
        let p = usize::from(self.protocol_len());
        let starts = [field::ADDRESSES, field::ADDRESSES + h, field::ADDRESSES + h + p, field::ADDRESSES + 2 * h + p];
        let lens = [h, p, h, p];
        &self.buffer.as_ref()[starts[index]..starts[index] + lens[index]]
    }

    /// Sender hardware address.
    pub fn sender_hardware_addr(&self) -> &[u8] {
        self.address(0)
    }

    /// Sender protocol address.
    pub fn sender_protocol_addr(&self) -> &[u8] {
        self.address(1)
    }

    /// Target hardware address.
    pub fn target_hardware_addr(&self) -> &[u8] {
        self.address(2)
    }

    /// Target protocol address.
    pub fn target_protocol_addr(&self) -> &[u8] {
        self.address(3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static REQUEST: [u8; 28] = [
        0, 1, 8, 0, 6, 4, 0, 1, // fixed part
        2, 0, 0, 0, 0, 1, 100, 64, 16, 5, // sender
        0, 0, 0, 0, 0, 0, 100, 64, 0, 1, // target
    ];

    #[test]
    fn deconstruct() {
        let p = ArpPacket::new_checked(&REQUEST[..]).expect("valid ARP");
        assert_eq!((p.hardware_type(), p.protocol_type(), p.operation()), (1, 0x0800, OPERATION_REQUEST));
        assert_eq!(p.sender_hardware_addr(), &[2, 0, 0, 0, 0, 1]);
        assert_eq!(p.sender_protocol_addr(), &[100, 64, 16, 5]);
        assert_eq!(p.target_hardware_addr(), &[0; 6]);
        assert_eq!(p.target_protocol_addr(), &[100, 64, 0, 1]);
    }

    #[test]
    fn announced_lengths_are_bounds_checked() {
        assert_eq!(ArpPacket::new_checked(&REQUEST[..27]), Err(WireError::Truncated));
        let mut long = REQUEST;
        long[4] = 255;
        assert_eq!(ArpPacket::new_checked(&long[..]), Err(WireError::Truncated));
    }
}
