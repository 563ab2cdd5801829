//! Byte encodings of the redb tables' keys and values.
//!
//! Keys are big-endian so that redb's byte order is the numeric order (history range scans rely on
//! it). Class names are length-prefixed (`u16`), so a name is never a prefix-collision of another.
//! Decoding returns `None` on any malformed record; callers turn that into
//! [`crate::StoreError::Corrupt`].

use std::net::Ipv4Addr;

use crate::{HistoryRecord, Lease, LeaseState, MacAddr, PortBlock, UnixSecs};

/// Appends a length-prefixed class name.
fn put_name(out: &mut Vec<u8>, name: &str) {
    // Config names are short; a longer one is cut at the u16 limit rather than failing a commit.
    let bytes = &name.as_bytes()[..name.len().min(usize::from(u16::MAX))];
    out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// A cursor over a stored record.
pub(crate) struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Self(bytes)
    }
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, tail) = self.0.split_at_checked(n)?;
        self.0 = tail;
        Some(head)
    }
    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes(self.array()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.array()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.array()?))
    }
    fn name(&mut self) -> Option<String> {
        let len = self.u16()?;
        String::from_utf8(self.take(usize::from(len))?.to_vec()).ok()
    }
    fn mac(&mut self) -> Option<MacAddr> {
        Some(MacAddr(self.array()?))
    }
    fn end(self) -> Option<()> {
        self.0.is_empty().then_some(())
    }
}

/// Key of the bindings table: `name, mac`.
pub(crate) fn binding_key(class: &str, mac: MacAddr) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + class.len() + 6);
    put_name(&mut out, class);
    out.extend_from_slice(&mac.0);
    out
}

pub(crate) fn decode_binding_key(bytes: &[u8]) -> Option<(String, MacAddr)> {
    let mut r = Reader::new(bytes);
    let out = (r.name()?, r.mac()?);
    r.end()?;
    Some(out)
}

/// Key of the leases and quarantine tables: `name, offset`.
pub(crate) fn offset_key(class: &str, offset: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + class.len() + 4);
    put_name(&mut out, class);
    out.extend_from_slice(&offset.to_be_bytes());
    out
}

pub(crate) fn decode_offset_key(bytes: &[u8]) -> Option<(String, u32)> {
    let mut r = Reader::new(bytes);
    let out = (r.name()?, r.u32()?);
    r.end()?;
    Some(out)
}

/// Value of the leases table (class and offset are in the key).
pub(crate) fn lease_value(lease: &Lease) -> Vec<u8> {
    let mut out = Vec::with_capacity(32);
    out.extend_from_slice(&lease.mac.0);
    out.extend_from_slice(&lease.start.to_be_bytes());
    out.extend_from_slice(&lease.expiry.to_be_bytes());
    out.push(match lease.state {
        LeaseState::Offered => 0,
        LeaseState::Bound => 1,
    });
    out.extend_from_slice(&lease.block.public_ip.octets());
    out.extend_from_slice(&lease.block.port_lo.to_be_bytes());
    out.extend_from_slice(&lease.block.port_hi.to_be_bytes());
    match &lease.client_id {
        None => out.push(0),
        Some(id) => {
            // Option 61 is at most 255 bytes on the wire.
            let id = &id[..id.len().min(255)];
            out.push(1);
            out.push(id.len() as u8);
            out.extend_from_slice(id);
        }
    }
    out
}

pub(crate) fn decode_lease(class: String, offset: u32, bytes: &[u8]) -> Option<Lease> {
    let mut r = Reader::new(bytes);
    let mac = r.mac()?;
    let start = r.u64()?;
    let expiry = r.u64()?;
    let state = match r.u8()? {
        0 => LeaseState::Offered,
        1 => LeaseState::Bound,
        _ => return None,
    };
    let block = PortBlock { public_ip: Ipv4Addr::from(r.u32()?), port_lo: r.u16()?, port_hi: r.u16()? };
    let client_id = match r.u8()? {
        0 => None,
        1 => {
            let len = r.u8()?;
            Some(r.take(usize::from(len))?.to_vec())
        }
        _ => return None,
    };
    r.end()?;
    Some(Lease { class, offset, mac, client_id, start, expiry, state, block })
}

/// Key of the history table: `public_ip, port_lo, from, mac` — a range scan over one address
/// with `port_lo <= port` finds every candidate holder of `public_ip:port`.
pub(crate) fn history_key(public_ip: Ipv4Addr, port_lo: u16, from: UnixSecs, mac: MacAddr) -> [u8; 20] {
    let mut out = [0u8; 20];
    out[0..4].copy_from_slice(&public_ip.octets());
    out[4..6].copy_from_slice(&port_lo.to_be_bytes());
    out[6..14].copy_from_slice(&from.to_be_bytes());
    out[14..20].copy_from_slice(&mac.0);
    out
}

/// Value of the history table (the key's fields are not repeated).
pub(crate) fn history_value(h: &HistoryRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + h.class.len());
    put_name(&mut out, &h.class);
    out.extend_from_slice(&h.offset.to_be_bytes());
    out.extend_from_slice(&h.lan_address.octets());
    out.extend_from_slice(&h.port_hi.to_be_bytes());
    match h.to {
        None => out.push(0),
        Some(to) => {
            out.push(1);
            out.extend_from_slice(&to.to_be_bytes());
        }
    }
    out
}

pub(crate) fn decode_history(key: &[u8], value: &[u8]) -> Option<HistoryRecord> {
    let mut k = Reader::new(key);
    let public_ip = Ipv4Addr::from(k.u32()?);
    let port_lo = k.u16()?;
    let from = k.u64()?;
    let mac = k.mac()?;
    k.end()?;
    let mut v = Reader::new(value);
    let class = v.name()?;
    let offset = v.u32()?;
    let lan_address = Ipv4Addr::from(v.u32()?);
    let port_hi = v.u16()?;
    let to = match v.u8()? {
        0 => None,
        1 => Some(v.u64()?),
        _ => return None,
    };
    v.end()?;
    Some(HistoryRecord { class, offset, lan_address, mac, public_ip, port_lo, port_hi, from, to })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn leases_round_trip(class in "[a-z0-9-]{0,20}", offset: u32, mac: [u8; 6], start: u64, expiry: u64,
                             bound: bool, ip: u32, port_lo: u16, port_hi: u16, client_id in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..255))) {
            let lease = Lease { class: class.clone(), offset, mac: MacAddr(mac), client_id, start, expiry,
                                state: if bound { LeaseState::Bound } else { LeaseState::Offered },
                                block: PortBlock { public_ip: ip.into(), port_lo, port_hi } };
            let key = offset_key(&class, offset);
            let (c, o) = decode_offset_key(&key).unwrap();
            prop_assert_eq!(decode_lease(c, o, &lease_value(&lease)), Some(lease));
        }

        #[test]
        fn history_round_trips(class in "[a-z]{1,8}", offset: u32, lan: u32, mac: [u8; 6], ip: u32,
                               port_lo: u16, port_hi: u16, from: u64, to: Option<u64>) {
            let h = HistoryRecord { class, offset, lan_address: lan.into(), mac: MacAddr(mac), public_ip: ip.into(),
                                    port_lo, port_hi, from, to };
            let key = history_key(h.public_ip, h.port_lo, h.from, h.mac);
            prop_assert_eq!(decode_history(&key, &history_value(&h)), Some(h));
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_lease(String::new(), 0, &bytes);
            let _ = decode_history(&bytes, &bytes);
            let _ = decode_offset_key(&bytes);
            let _ = decode_binding_key(&bytes);
        }
    }

    #[test]
    fn binding_keys_round_trip_and_names_do_not_collide() {
        let mac = MacAddr([1, 2, 3, 4, 5, 6]);
        assert_eq!(decode_binding_key(&binding_key("ab", mac)), Some(("ab".into(), mac)));
        assert_ne!(offset_key("a", 0x6200_0000), offset_key("ab", 0));
        assert_eq!(decode_binding_key(&[0, 5, b'a']), None);
    }
}
