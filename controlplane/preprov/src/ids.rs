//! Device IDs and provisioning contacts: untrusted text in, typed values out (claims 000: 3, 4, 9, 10).

use std::fmt;
use std::net::IpAddr;

use dialtone_config::MacAddr;

/// A device's unique ID, the key of the look-up table (claims 000: 3, 9).
///
/// Canonical forms: a MAC address as 12 lowercase hex digits (any common spelling is accepted and
/// folded), or a vendor serial of 4-64 characters from `A-Z a-z 0-9 - _ .`, kept as written.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeviceId(String);

/// Why text is not a device ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a device ID is a MAC address (12 hex digits, separators allowed) or a serial of 4-64 letters, digits, '-', '_' or '.'")]
pub struct DeviceIdError;

impl DeviceId {
    /// Parses and canonicalises untrusted text.
    pub fn parse(text: &str) -> Result<Self, DeviceIdError> {
        if let Ok(mac) = text.parse::<MacAddr>() {
            return Ok(Self(mac.to_hex12()));
        }
        let valid = (4..=64).contains(&text.len())
            && text.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && !text.starts_with('.');
        if valid {
            Ok(Self(text.to_owned()))
        } else {
            Err(DeviceIdError)
        }
    }

    /// The canonical text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The host part of a provisioning contact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContactHost {
    /// A domain name of a provisioning entry point server (RFC 1123).
    Domain(String),
    /// An IP address of a provisioning entry point server.
    Address(IpAddr),
}

/// Where a device finds its provisioning entity (claims 000: 4, 10): a domain name (optional port)
/// or an IP address and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contact {
    /// Domain or address.
    pub host: ContactHost,
    /// Port; required with an address.
    pub port: Option<u16>,
}

/// Why text is not a provisioning contact.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContactError {
    /// Neither a domain name nor an address.
    #[error("`{0}` is neither a domain name (RFC 1123) nor an IP address")]
    Host(String),
    /// Port not a number in 1..=65535.
    #[error("`{0}` is not a port in 1..=65535")]
    Port(String),
    /// An IP address needs its port (claim 000: 4).
    #[error("an IP address contact needs a port (address:port)")]
    AddressWithoutPort,
    /// The stored blob is not one this version wrote.
    #[error("stored contact blob is malformed")]
    Blob,
}

const BLOB_VERSION: u8 = 1;
const BLOB_DOMAIN: u8 = 1;
const BLOB_V4: u8 = 4;
const BLOB_V6: u8 = 6;

impl Contact {
    /// Parses `host`, `host:port`, `a.b.c.d:port` or `[v6]:port`.
    pub fn parse(text: &str) -> Result<Self, ContactError> {
        let text = text.trim();
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let (v6, after) = rest.split_once(']').ok_or_else(|| ContactError::Host(text.to_owned()))?;
            let port = after.strip_prefix(':').ok_or(ContactError::AddressWithoutPort)?;
            (v6, Some(port))
        } else {
            match text.rsplit_once(':') {
                Some((h, p)) if !h.contains(':') => (h, Some(p)),
                _ => (text, None),
            }
        };
        let port = port
            .map(|p| p.parse::<u16>().ok().filter(|&p| p != 0).ok_or_else(|| ContactError::Port(p.to_owned())))
            .transpose()?;
        let host = if let Ok(ip) = host.parse::<IpAddr>() {
            if port.is_none() {
                return Err(ContactError::AddressWithoutPort);
            }
            ContactHost::Address(ip)
        } else if is_domain(host) {
            ContactHost::Domain(host.trim_end_matches('.').to_ascii_lowercase())
        } else {
            return Err(ContactError::Host(host.to_owned()));
        };
        Ok(Self { host, port })
    }

    /// The binary object stored in the look-up table's contact field (claims 000: 3, 9).
    ///
    /// ```text
    /// +---------+------+-----------+------------------------------+
    /// | version | kind | port (BE) | host: name bytes or address  |
    /// |  1 byte |  1   |  2 bytes  | (port 0 = none)              |
    /// +---------+------+-----------+------------------------------+
    /// ```
    pub fn to_blob(&self) -> Vec<u8> {
        let port = self.port.unwrap_or(0).to_be_bytes();
        let (kind, host): (u8, Vec<u8>) = match &self.host {
            ContactHost::Domain(name) => (BLOB_DOMAIN, name.as_bytes().to_vec()),
            ContactHost::Address(IpAddr::V4(a)) => (BLOB_V4, a.octets().to_vec()),
            ContactHost::Address(IpAddr::V6(a)) => (BLOB_V6, a.octets().to_vec()),
        };
        let mut blob = vec![BLOB_VERSION, kind, port[0], port[1]];
        blob.extend_from_slice(&host);
        blob
    }

    /// Reads a blob written by [`Contact::to_blob`].
    pub fn from_blob(blob: &[u8]) -> Result<Self, ContactError> {
        let [BLOB_VERSION, kind, hi, lo, host @ ..] = blob else { return Err(ContactError::Blob) };
        let port = Some(u16::from_be_bytes([*hi, *lo])).filter(|&p| p != 0);
        let host = match *kind {
            BLOB_DOMAIN => {
                let name = std::str::from_utf8(host).map_err(|_| ContactError::Blob)?;
                if !is_domain(name) {
                    return Err(ContactError::Blob);
                }
                ContactHost::Domain(name.to_owned())
            }
            BLOB_V4 => ContactHost::Address(IpAddr::from(<[u8; 4]>::try_from(host).map_err(|_| ContactError::Blob)?)),
            BLOB_V6 => ContactHost::Address(IpAddr::from(<[u8; 16]>::try_from(host).map_err(|_| ContactError::Blob)?)),
            _ => return Err(ContactError::Blob),
        };
        if matches!(host, ContactHost::Address(_)) && port.is_none() {
            return Err(ContactError::Blob);
        }
        Ok(Self { host, port })
    }

    /// The host as text (IPv6 without brackets).
    pub fn host_text(&self) -> String {
        match &self.host {
            ContactHost::Domain(d) => d.clone(),
            ContactHost::Address(a) => a.to_string(),
        }
    }
}

impl fmt::Display for Contact {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.host, self.port) {
            (ContactHost::Address(IpAddr::V6(a)), Some(p)) => write!(f, "[{a}]:{p}"),
            (host, Some(p)) => write!(f, "{}:{p}", Self { host: host.clone(), port: None }.host_text()),
            (_, None) => f.write_str(&self.host_text()),
        }
    }
}

/// RFC 1123 host name: dot-separated labels of letters, digits and inner hyphens.
fn is_domain(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
        // An all-numeric last label would be a malformed address, not a name.
        && !name.rsplit('.').next().is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn device_ids() {
        assert_eq!(DeviceId::parse("80:5E:C0:12:34:56").map(|d| d.0), Ok("805ec0123456".to_owned()));
        assert_eq!(DeviceId::parse("805ec0123456").map(|d| d.0), Ok("805ec0123456".to_owned()));
        assert_eq!(DeviceId::parse("SN-T54W.0042").map(|d| d.0), Ok("SN-T54W.0042".to_owned()));
        for bad in ["", "abc", "a/b/c/d", "../etc/passwd", "x y z w", ".hidden", &"a".repeat(65), "caf\u{e9}1"] {
            assert_eq!(DeviceId::parse(bad), Err(DeviceIdError), "{bad:?}");
        }
    }

    #[test]
    fn contacts() {
        let c = Contact::parse("Prov.Example.NET").expect("domain");
        assert_eq!((c.to_string(), c.port), ("prov.example.net".to_owned(), None));
        assert_eq!(Contact::parse("prov.example.net:8443").map(|c| c.port), Ok(Some(8443)));
        assert_eq!(Contact::parse("203.0.113.10:8081").map(|c| c.to_string()), Ok("203.0.113.10:8081".to_owned()));
        assert_eq!(Contact::parse("[2001:db8::1]:443").map(|c| c.to_string()), Ok("[2001:db8::1]:443".to_owned()));
        assert_eq!(Contact::parse("203.0.113.10"), Err(ContactError::AddressWithoutPort));
        assert_eq!(Contact::parse("prov.example.net:0"), Err(ContactError::Port("0".into())));
        assert_eq!(Contact::parse("prov.example.net:http"), Err(ContactError::Port("http".into())));
        for bad in ["", "-bad.example", "bad_name.example", "a..b", "999.1.1.1:80", "http://x/"] {
            assert!(Contact::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn blob_rejects_garbage() {
        for bad in [
            &[][..],
            &[2, 1, 0, 0, b'a'],
            &[1, 4, 0, 80, 1, 2, 3],
            &[1, 4, 0, 0, 1, 2, 3, 4],
            &[1, 9, 0, 0],
            &[1, 1, 0, 0, b'-'],
        ] {
            assert!(Contact::from_blob(bad).is_err(), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn blob_round_trips(text in "([a-z][a-z0-9]{0,10}\\.){1,3}[a-z]{2,6}(:[1-9][0-9]{0,3})?|[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}:[1-9][0-9]{0,4}") {
            if let Ok(contact) = Contact::parse(&text) {
                prop_assert_eq!(Contact::from_blob(&contact.to_blob()), Ok(contact.clone()));
                prop_assert_eq!(Contact::parse(&contact.to_string()), Ok(contact));
            }
        }

        #[test]
        fn parsers_never_panic(text in "\\PC{0,80}", blob in proptest::collection::vec(any::<u8>(), 0..40)) {
            let _ = DeviceId::parse(&text);
            let _ = Contact::parse(&text);
            let _ = Contact::from_blob(&blob);
        }
    }
}
