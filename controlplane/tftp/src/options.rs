//! Option negotiation for read requests (RFC 2347) with blksize (RFC 2348), timeout and tsize
//! (RFC 2349) and windowsize (RFC 7440).
//!
//! The server answers every option it understands in an OACK and ignores the others (RFC 2347:
//! "options not acknowledged by the server must be ignored by the client"). A value that is not
//! what the RFC allows (not a decimal number, blksize below 8, timeout outside 1..=255, windowsize
//! 0) refuses the whole request with ERROR 8, as RFC 2347 permits. Values above the operator's cap
//! (`tftp.max_blksize`, `tftp.max_windowsize`) are lowered to it, which RFC 2348 and RFC 7440
//! allow; a timeout is either accepted exactly or refused (RFC 2349 leaves no third choice).

use std::time::Duration;

use crate::packet::TftpOption;

/// RFC 1350 block size, used when the client does not ask for another.
pub const DEFAULT_BLKSIZE: u16 = 512;
/// RFC 2348 upper bound.
pub const MAX_BLKSIZE: u16 = 65464;
/// RFC 2348 lower bound.
pub const MIN_BLKSIZE: u16 = 8;

/// What the operator allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest blksize granted (config `tftp.max_blksize`).
    pub max_blksize: u16,
    /// Largest windowsize granted (config `tftp.max_windowsize`).
    pub max_windowsize: u16,
    /// Retransmission timeout when the client does not set one (config `tftp.timeout`).
    pub default_timeout: Duration,
}

/// Which options a request used and had acknowledged (for counters).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OptionUse {
    /// blksize acknowledged.
    pub blksize: bool,
    /// tsize acknowledged.
    pub tsize: bool,
    /// timeout acknowledged.
    pub timeout: bool,
    /// windowsize acknowledged.
    pub windowsize: bool,
}

/// The parameters a read transfer runs with, and the OACK that announces them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// Bytes per DATA block.
    pub blksize: u16,
    /// Blocks sent before waiting for an ACK.
    pub windowsize: u16,
    /// Retransmission timeout.
    pub timeout: Duration,
    /// Options to acknowledge; empty means no OACK (the transfer starts with DATA 1).
    pub oack: Vec<TftpOption>,
    /// For counters.
    pub used: OptionUse,
}

/// A value the client sent that the RFCs do not allow; the request is refused with ERROR 8.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("option {name}: invalid value `{value}`")]
pub struct OptionRefused {
    /// Option name as sent.
    pub name: String,
    /// Value as sent.
    pub value: String,
}

/// A decimal number of at most 10 digits, without sign or spaces.
fn decimal(value: &str) -> Option<u64> {
    if value.is_empty() || value.len() > 10 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok()
}

/// Negotiates the options of a read request for a file of `size` bytes (if known).
pub fn negotiate(options: &[TftpOption], limits: Limits, size: Option<u64>) -> Result<Negotiated, OptionRefused> {
    let mut out = Negotiated {
        blksize: DEFAULT_BLKSIZE,
        windowsize: 1,
        timeout: limits.default_timeout,
        oack: Vec::new(),
        used: OptionUse::default(),
    };
    for option in options {
        let refuse = || OptionRefused { name: option.name.clone(), value: option.value.clone() };
        let name = option.name.to_ascii_lowercase();
        let granted = match name.as_str() {
            "blksize" => {
                let asked = decimal(&option.value).filter(|&v| v >= u64::from(MIN_BLKSIZE)).ok_or_else(refuse)?;
                let cap = limits.max_blksize.clamp(MIN_BLKSIZE, MAX_BLKSIZE);
                out.blksize = u16::try_from(asked).unwrap_or(u16::MAX).min(cap);
                out.used.blksize = true;
                out.blksize.to_string()
            }
            "windowsize" => {
                let asked = decimal(&option.value).filter(|&v| v >= 1).ok_or_else(refuse)?;
                let cap = limits.max_windowsize.max(1);
                out.windowsize = u16::try_from(asked).unwrap_or(u16::MAX).min(cap);
                out.used.windowsize = true;
                out.windowsize.to_string()
            }
            "timeout" => {
                let secs = decimal(&option.value).filter(|v| (1..=255).contains(v)).ok_or_else(refuse)?;
                out.timeout = Duration::from_secs(secs);
                out.used.timeout = true;
                secs.to_string()
            }
            "tsize" => {
                // RFC 2349: a read request carries tsize 0 and the server answers the size.
                decimal(&option.value).ok_or_else(refuse)?;
                let Some(size) = size else { continue };
                out.used.tsize = true;
                size.to_string()
            }
            _ => continue,
        };
        out.oack.push(TftpOption { name: option.name.clone(), value: granted });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits { max_blksize: 1468, max_windowsize: 64, default_timeout: Duration::from_secs(1) };

    fn opts(pairs: &[(&str, &str)]) -> Vec<TftpOption> {
        pairs.iter().map(|(n, v)| TftpOption { name: (*n).into(), value: (*v).into() }).collect()
    }

    #[test]
    fn no_options_no_oack() {
        let n = negotiate(&[], LIMITS, Some(10)).expect("valid");
        assert_eq!((n.blksize, n.windowsize, n.timeout), (512, 1, Duration::from_secs(1)));
        assert!(n.oack.is_empty());
    }

    #[test]
    fn grants_and_caps() {
        let n = negotiate(
            &opts(&[("BLKSIZE", "9000"), ("windowsize", "1000"), ("timeout", "3"), ("tsize", "0"), ("multicast", "")]),
            LIMITS,
            Some(123_456),
        )
        .expect("valid");
        assert_eq!((n.blksize, n.windowsize, n.timeout), (1468, 64, Duration::from_secs(3)));
        assert_eq!(n.oack, opts(&[("BLKSIZE", "1468"), ("windowsize", "64"), ("timeout", "3"), ("tsize", "123456")]));
        assert_eq!(n.used, OptionUse { blksize: true, tsize: true, timeout: true, windowsize: true });
        let n = negotiate(&opts(&[("blksize", "1024"), ("windowsize", "16")]), LIMITS, None).expect("valid");
        assert_eq!((n.blksize, n.windowsize), (1024, 16));
        let n = negotiate(&opts(&[("blksize", "99999999")]), LIMITS, None).expect("valid");
        assert_eq!(n.blksize, 1468);
    }

    #[test]
    fn tsize_without_known_size_is_not_acknowledged() {
        let n = negotiate(&opts(&[("tsize", "0")]), LIMITS, None).expect("valid");
        assert!(n.oack.is_empty());
        assert!(!n.used.tsize);
    }

    #[test]
    fn refuses_invalid_values() {
        for (name, value) in [
            ("blksize", "7"),
            ("blksize", "abc"),
            ("blksize", "-512"),
            ("blksize", ""),
            ("windowsize", "0"),
            ("windowsize", "1e3"),
            ("timeout", "0"),
            ("timeout", "256"),
            ("tsize", "x"),
        ] {
            let err = negotiate(&opts(&[(name, value)]), LIMITS, Some(1)).expect_err("must refuse");
            assert_eq!((err.name.as_str(), err.value.as_str()), (name, value));
        }
    }
}
