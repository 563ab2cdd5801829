//! MAC addresses and OUIs as typed values (parsed once, at the config or wire boundary).

use std::fmt;
use std::str::FromStr;

/// A 48-bit IEEE MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct MacAddr(pub [u8; 6]);

/// The first three bytes of a MAC address, the vendor's organisationally unique identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Oui(pub [u8; 3]);

/// Why text is not a MAC address or OUI.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{text}` is not {what} (expected {expected})")]
pub struct MacParseError {
    text: String,
    what: &'static str,
    expected: &'static str,
}

/// Parses `n` bytes written as hex pairs separated by `:` or `-`, or as `2n` bare hex digits.
fn parse_hex_bytes<const N: usize>(text: &str) -> Option<[u8; N]> {
    let digits: String = if text.len() == 2 * N {
        text.to_owned()
    } else {
        let sep = if text.contains(':') { ':' } else { '-' };
        let parts: Vec<&str> = text.split(sep).collect();
        if parts.len() != N || parts.iter().any(|p| p.len() != 2) {
            return None;
        }
        parts.concat()
    };
    if digits.len() != 2 * N || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(digits.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

impl MacAddr {
    /// The OUI of this address.
    pub fn oui(&self) -> Oui {
        Oui([self.0[0], self.0[1], self.0[2]])
    }

    /// 12 lowercase hex digits, the canonical device-id form of a MAC (`805ec0a1b2c3`).
    pub fn to_hex12(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// True for a group (multicast or broadcast) address, which no phone may have.
    pub fn is_group(&self) -> bool {
        self.0[0] & 1 == 1
    }

    /// True for the all-zero address.
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 6]
    }
}

impl FromStr for MacAddr {
    type Err = MacParseError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        parse_hex_bytes::<6>(text).map(MacAddr).ok_or_else(|| MacParseError {
            text: text.to_owned(),
            what: "a MAC address",
            expected: "six hex pairs such as 80:5e:c0:12:34:56",
        })
    }
}

impl FromStr for Oui {
    type Err = MacParseError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        parse_hex_bytes::<3>(text).map(Oui).ok_or_else(|| MacParseError {
            text: text.to_owned(),
            what: "an OUI",
            expected: "three hex pairs such as 80:5e:c0",
        })
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl fmt::Display for Oui {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_spellings() {
        let want = MacAddr([0x80, 0x5e, 0xc0, 0x12, 0x34, 0x56]);
        for text in ["80:5e:c0:12:34:56", "80-5E-C0-12-34-56", "805ec0123456"] {
            assert_eq!(text.parse::<MacAddr>(), Ok(want), "{text}");
        }
        assert_eq!(want.to_string(), "80:5e:c0:12:34:56");
        assert_eq!(want.to_hex12(), "805ec0123456");
        assert_eq!(want.oui().to_string(), "80:5e:c0");
        assert_eq!("24:9A:d8".parse::<Oui>(), Ok(Oui([0x24, 0x9a, 0xd8])));
    }

    #[test]
    fn refuses_malformed() {
        for text in
            ["", "80:5e:c0:12:34", "80:5e:c0:12:34:5g", "80:5e:c0:12:34:567", "80:5e-c0:12:34:56", "805ec012345"]
        {
            assert!(text.parse::<MacAddr>().is_err(), "{text}");
        }
        for text in ["80:5e", "80:5e:c0:00", "zz:5e:c0", "805ec"] {
            assert!(text.parse::<Oui>().is_err(), "{text}");
        }
    }
}
