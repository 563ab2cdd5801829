//! The phone's non-volatile memory (claims 000: 13, 19): a JSON file holding what a phone keeps
//! across reboots. Written atomically — temporary file, fsync, rename, fsync of the directory —
//! so a power cut leaves either the old or the new content, never a torn file.
//!
//! ```json
//! {
//!   "device_id": "02dc00000001",
//!   "mac": "02:dc:00:00:00:01",
//!   "vendor_class": "dialtone-phone-zt",
//!   "preprov_contact": "100.64.0.1:8080",
//!   "provisioning_contact": "100.64.0.1:8081",
//!   "firmware_version": "softphone-1.4.2",
//!   "firmware_sha256": "9f86d0…"
//! }
//! ```

use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use dialtone_config::MacAddr;
use serde::{Deserialize, Serialize};

/// What the phone remembers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Nvram {
    /// The unique device ID (claims 000: 13, 19), sent in the pre-provisioning and provisioning
    /// inquiries.
    pub device_id: String,
    /// The phone's hardware address, used as DHCP `chaddr`.
    pub mac: String,
    /// DHCP option 60.
    pub vendor_class: String,
    /// Where to ask "who provisions me?" (claim 000: 13), `host:port`.
    pub preprov_contact: String,
    /// The provisioning contact learned from the pre-provisioning server (claims 000: 16, 18, 22,
    /// 24), or set at the factory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provisioning_contact: Option<String>,
    /// Version of the operational software installed (claims 001: 13, 28, 43).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware_version: Option<String>,
    /// SHA-256 of that software, lowercase hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware_sha256: Option<String>,
}

/// Why the NVRAM file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum NvramError {
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Not the JSON shape above.
    #[error("{path}: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: serde_json::Error,
    },
    /// A field with a value no phone could use.
    #[error("{path}: {field}: {reason}")]
    Field {
        /// The file.
        path: PathBuf,
        /// The field.
        field: &'static str,
        /// Why.
        reason: String,
    },
}

impl Nvram {
    /// The MAC as a typed value (checked by [`Nvram::load`]).
    pub fn mac_addr(&self) -> Result<MacAddr, String> {
        let mac: MacAddr = self.mac.parse().map_err(|e: dialtone_config::MacParseError| e.to_string())?;
        if mac.is_group() || mac.is_zero() {
            return Err(format!("{mac:?} is a group or zero address, which no phone may have"));
        }
        Ok(mac)
    }

    /// Checks every field a phone depends on; `path` is only for the messages.
    pub fn validate(&self, path: &Path) -> Result<(), NvramError> {
        let field = |field: &'static str, reason: String| NvramError::Field { path: path.to_owned(), field, reason };
        dialtone_preprov::DeviceId::parse(&self.device_id).map_err(|e| field("device_id", e.to_string()))?;
        self.mac_addr().map_err(|e| field("mac", e))?;
        if self.vendor_class.is_empty() || self.vendor_class.len() > 255 {
            return Err(field("vendor_class", "must be 1-255 bytes".into()));
        }
        dialtone_preprov::Contact::parse(&self.preprov_contact).map_err(|e| field("preprov_contact", e.to_string()))?;
        if let Some(c) = &self.provisioning_contact {
            dialtone_preprov::Contact::parse(c).map_err(|e| field("provisioning_contact", e.to_string()))?;
        }
        Ok(())
    }

    /// Reads and validates the file.
    pub fn load(path: &Path) -> Result<Self, NvramError> {
        let text = fs::read(path).map_err(|source| NvramError::Io { path: path.to_owned(), source })?;
        let nvram: Self =
            serde_json::from_slice(&text).map_err(|source| NvramError::Json { path: path.to_owned(), source })?;
        nvram.validate(path)?;
        Ok(nvram)
    }

    /// Writes the file atomically: `FILE.tmp` written and fsynced, renamed over `FILE`, then the
    /// directory fsynced so the rename itself is durable.
    pub fn store(&self, path: &Path) -> Result<(), NvramError> {
        let io = |source| NvramError::Io { path: path.to_owned(), source };
        let mut text =
            serde_json::to_vec_pretty(self).map_err(|source| NvramError::Json { path: path.to_owned(), source })?;
        text.push(b'\n');
        let mut tmp_name = path.file_name().map(|n| n.to_os_string()).unwrap_or_else(|| "nvram".into());
        tmp_name.push(".tmp");
        let tmp = path.with_file_name(tmp_name);
        let mut file = OpenOptions::new().write(true).create(true).truncate(true).open(&tmp).map_err(io)?;
        file.write_all(&text).map_err(io)?;
        file.sync_all().map_err(io)?;
        drop(file);
        fs::rename(&tmp, path).map_err(io)?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> Nvram {
        Nvram {
            device_id: "02dc00000001".into(),
            mac: "02:dc:00:00:00:01".into(),
            vendor_class: "dialtone-phone-zt".into(),
            preprov_contact: "100.64.0.1:8080".into(),
            provisioning_contact: None,
            firmware_version: None,
            firmware_sha256: None,
        }
    }

    #[test]
    fn store_then_load_round_trips_and_leaves_no_temporary() {
        let dir = std::env::temp_dir().join(format!("dialtone-nvram-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("nvram.json");
        let mut n = sample();
        n.store(&path).unwrap();
        assert_eq!(Nvram::load(&path).unwrap(), n);
        n.provisioning_contact = Some("prov.example.net:8081".into());
        n.store(&path).unwrap();
        assert_eq!(Nvram::load(&path).unwrap(), n);
        assert!(!dir.join("nvram.json.tmp").exists());
        let text = fs::read_to_string(&path).unwrap();
        assert!(!text.contains("firmware_version"), "absent fields are not written: {text}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn refuses_what_a_phone_could_not_use() {
        let p = Path::new("n.json");
        let mut n = sample();
        n.mac = "01:00:5e:00:00:01".into();
        assert!(matches!(n.validate(p), Err(NvramError::Field { field: "mac", .. })));
        let mut n = sample();
        n.preprov_contact = "100.64.0.1".into();
        assert!(matches!(n.validate(p), Err(NvramError::Field { field: "preprov_contact", .. })));
        let mut n = sample();
        n.device_id = "bad/id".into();
        assert!(matches!(n.validate(p), Err(NvramError::Field { field: "device_id", .. })));
        assert!(serde_json::from_str::<Nvram>(r#"{"device_id":"x","surprise":1}"#).is_err());
    }
}
