//! The answers a phone reads while it finds its configuration, parsed at one boundary:
//! the pre-provisioning server's contact (claims 000: 14, 15, 20, 21), the provisioning entry
//! point's parameters or next servers (claims 000: 13, 19), and the per-phone configuration file
//! a DHCP-named TFTP server renders (`key = value` lines).
//!
//! Firmware parameters the phone understands (class templates or per-device values):
//!
//! | key | meaning |
//! |---|---|
//! | `firmware` | TFTP path of the operational software (else the DHCP boot file) |
//! | `firmware_server` | TFTP server address (else the DHCP TFTP server) |
//! | `firmware_sha256` | required: SHA-256 of the image, 64 hex digits |
//! | `firmware_size` | size in bytes, checked when present |
//! | `firmware_version` | version recorded in NVRAM (else the file name) |

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs as _};

use dialtone_preprov::{Contact, ContactHost};
use serde::Deserialize;

/// Port of a contact given as a bare domain name.
pub const DEFAULT_HTTP_PORT: u16 = 80;

/// Why an answer is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    /// Not the JSON shape expected.
    #[error("unreadable answer: {0}")]
    Shape(String),
    /// A contact that is not `host[:port]`.
    #[error("malformed contact `{0}`: {1}")]
    Contact(String, String),
    /// The name does not resolve to an IPv4 address.
    #[error("`{0}` does not resolve to an IPv4 address")]
    Resolve(String),
    /// Firmware parameters missing or malformed.
    #[error("{0}")]
    Firmware(String),
}

/// Resolves a contact (`host[:port]`) to the IPv4 socket address to ask.
pub fn resolve(contact: &str) -> Result<SocketAddr, AnswerError> {
    let parsed = Contact::parse(contact).map_err(|e| AnswerError::Contact(contact.to_owned(), e.to_string()))?;
    let port = parsed.port.unwrap_or(DEFAULT_HTTP_PORT);
    match &parsed.host {
        ContactHost::Address(IpAddr::V4(a)) => Ok(SocketAddr::from((*a, port))),
        ContactHost::Address(IpAddr::V6(_)) => Err(AnswerError::Resolve(contact.to_owned())),
        ContactHost::Domain(name) => (name.as_str(), port)
            .to_socket_addrs()
            .ok()
            .and_then(|mut it| it.find(SocketAddr::is_ipv4))
            .ok_or_else(|| AnswerError::Resolve(contact.to_owned())),
    }
}

/// A contact from an `http://host[:port][/...]` URL (option 43); the path is ignored because the
/// inquiry path is fixed (`/v1/provision/{id}`).
pub fn contact_of_url(url: &str) -> Option<String> {
    let rest = url.strip_prefix("http://")?;
    let authority = rest.split('/').next()?;
    Contact::parse(authority).ok().map(|c| c.to_string())
}

#[derive(Deserialize)]
struct ContactAnswer {
    contact: String,
}

/// The provisioning contact in a device-application answer (`{"contact": "..."}`), checked.
pub fn parse_contact_answer(body: &str) -> Result<String, AnswerError> {
    let a: ContactAnswer = serde_json::from_str(body).map_err(|e| AnswerError::Shape(e.to_string()))?;
    let c = Contact::parse(&a.contact).map_err(|e| AnswerError::Contact(a.contact.clone(), e.to_string()))?;
    Ok(c.to_string())
}

/// What the provisioning entry point answered (claims 000: 13, 19).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProvisioningAnswer {
    /// Telephony configuration parameters.
    Parameters(BTreeMap<String, String>),
    /// Provisioning servers to ask next, in order.
    NextServers(Vec<String>),
}

#[derive(Deserialize)]
struct RawAnswer {
    #[serde(default)]
    parameters: Option<BTreeMap<String, String>>,
    #[serde(default)]
    next_servers: Option<Vec<String>>,
}

/// Parses `{"parameters": {...}}` or `{"next_servers": [...]}`.
pub fn parse_provisioning_answer(body: &str) -> Result<ProvisioningAnswer, AnswerError> {
    let a: RawAnswer = serde_json::from_str(body).map_err(|e| AnswerError::Shape(e.to_string()))?;
    match (a.parameters, a.next_servers) {
        (Some(p), _) => Ok(ProvisioningAnswer::Parameters(p)),
        (None, Some(s)) if !s.is_empty() && s.len() <= 16 => Ok(ProvisioningAnswer::NextServers(s)),
        _ => Err(AnswerError::Shape("neither parameters nor 1-16 next_servers".into())),
    }
}

/// Parses the per-phone configuration file (`key = value` lines, `#` comments), as the gateway's
/// TFTP server renders it.
pub fn parse_config_file(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .filter(|(k, _)| !k.is_empty())
        .collect()
}

/// The operational software to fetch and how to check it (claims 001: 12, 13).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirmwarePlan {
    /// TFTP server.
    pub server: Ipv4Addr,
    /// Path on it.
    pub file: String,
    /// Expected SHA-256, lowercase hex.
    pub sha256: String,
    /// Expected size, if known.
    pub size: Option<u64>,
    /// Version to record.
    pub version: String,
}

impl FirmwarePlan {
    /// Reads the firmware parameters (module table); `default_server` and `default_file` come from
    /// the DHCP answer.
    pub fn from_parameters(
        parameters: &BTreeMap<String, String>,
        default_server: Option<Ipv4Addr>,
        default_file: Option<&str>,
    ) -> Result<Self, AnswerError> {
        let bad = |m: String| AnswerError::Firmware(m);
        let file = parameters
            .get("firmware")
            .map(String::as_str)
            .or(default_file)
            .ok_or_else(|| bad("no firmware named by the parameters nor by a DHCP boot file".into()))?
            .to_owned();
        let server = match parameters.get("firmware_server") {
            Some(s) => s.parse().map_err(|_| bad(format!("firmware_server `{s}` is not an IPv4 address")))?,
            None => default_server.ok_or_else(|| bad("no TFTP server for the firmware".into()))?,
        };
        let sha256 = parameters
            .get("firmware_sha256")
            .ok_or_else(|| bad(format!("no firmware_sha256 for {file}: the phone runs no unverified software")))?
            .to_ascii_lowercase();
        if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad(format!("firmware_sha256 `{sha256}` is not 64 hex digits")));
        }
        let size = match parameters.get("firmware_size") {
            Some(s) => Some(s.parse().map_err(|_| bad(format!("firmware_size `{s}` is not a number")))?),
            None => None,
        };
        let version = parameters
            .get("firmware_version")
            .cloned()
            .unwrap_or_else(|| file.rsplit('/').next().unwrap_or(&file).to_owned());
        Ok(Self { server, file, sha256, size, version })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_parse() {
        assert_eq!(
            parse_contact_answer(r#"{"device_id":"x","contact":"100.64.0.1:8081","host":"100.64.0.1","port":8081}"#),
            Ok("100.64.0.1:8081".into())
        );
        assert!(parse_contact_answer(r#"{"contact":"100.64.0.1"}"#).is_err());
        assert!(parse_contact_answer("no").is_err());
        let p = parse_provisioning_answer(r#"{"device_id":"x","parameters":{"a":"1"}}"#).unwrap();
        assert_eq!(p, ProvisioningAnswer::Parameters([("a".to_owned(), "1".to_owned())].into()));
        let n = parse_provisioning_answer(r#"{"device_id":"x","next_servers":["p.example:81"]}"#).unwrap();
        assert_eq!(n, ProvisioningAnswer::NextServers(vec!["p.example:81".into()]));
        assert!(parse_provisioning_answer(r#"{"next_servers":[]}"#).is_err());
        assert_eq!(resolve("100.64.0.1:8081"), Ok(SocketAddr::from(([100, 64, 0, 1], 8081))));
        assert!(resolve("100.64.0.1").is_err());
        assert_eq!(contact_of_url("http://100.64.0.1:8081/x"), Some("100.64.0.1:8081".into()));
        assert_eq!(contact_of_url("ftp://x"), None);
    }

    #[test]
    fn config_file_and_firmware_plan() {
        let p = parse_config_file("# c\nmac = 02dc00000001\nfirmware_sha256 = ABCDEF\n\nbroken line\n");
        assert_eq!(p.get("mac").map(String::as_str), Some("02dc00000001"));
        let gw = Some(Ipv4Addr::new(100, 64, 0, 1));
        let err = FirmwarePlan::from_parameters(&p, gw, Some("fw.bin")).unwrap_err();
        assert!(err.to_string().contains("64 hex"), "{err}");
        let mut p = BTreeMap::new();
        assert!(FirmwarePlan::from_parameters(&p, gw, None).is_err());
        p.insert("firmware_sha256".to_owned(), "A".repeat(64));
        p.insert("firmware_size".to_owned(), "12".to_owned());
        let plan = FirmwarePlan::from_parameters(&p, gw, Some("softphone/fw-1.2.bin")).unwrap();
        assert_eq!(plan.file, "softphone/fw-1.2.bin");
        assert_eq!(plan.sha256, "a".repeat(64));
        assert_eq!(plan.size, Some(12));
        assert_eq!(plan.version, "fw-1.2.bin");
        p.insert("firmware_server".to_owned(), "nope".to_owned());
        assert!(FirmwarePlan::from_parameters(&p, gw, Some("x")).is_err());
    }
}
