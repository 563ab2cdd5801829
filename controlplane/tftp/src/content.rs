//! What a requested name resolves to: a file confined to the class root, or a virtual per-phone
//! file rendered from the phone's lease and provisioning parameters (claims 001: 12-14).
//!
//! Confinement: absolute names and any `..` component are refused before touching the disk; the
//! kernel then resolves the name beneath the class root in the open itself (`openat2` with
//! `RESOLVE_BENEATH`), so no symlink, present at the start or swapped in while the request is
//! served, leads out of the root. Only regular files are served.
//!
//! Virtual files: a class lists name patterns (`config_files`) where `{mac}` stands for the
//! phone's MAC as 12 lowercase hex digits and `{MAC}` as 12 uppercase ones. A name matching a
//! pattern is never read from disk: it is rendered for the client whose leased address sent the
//! request, and refused when that address holds no lease or the MAC in the name is another
//! phone's. The rendered format is documented on [`render_phone_config`].

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io;
use std::net::Ipv4Addr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

use dialtone_config::portblock::PortBlock;
use dialtone_config::{MacAddr, PhoneClass};

use crate::packet::ErrorCode;
use crate::transfer::FileContent;

/// What the lease table knows about a client address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientInfo {
    /// Index of the phone's class in `Config::classes`.
    pub class: usize,
    /// The phone's MAC (from its lease).
    pub mac: MacAddr,
    /// The leased address.
    pub lan_ip: Ipv4Addr,
    /// The phone's port block (claims 001: 1, 11).
    pub port_block: PortBlock,
    /// Per-device provisioning parameters; they override the class's `parameters`.
    pub parameters: BTreeMap<String, String>,
}

/// Client address -> lease, implemented by the lease table (and by test doubles).
pub trait ClientDirectory: Send + Sync {
    /// The phone currently leased `ip`, if any.
    fn lookup(&self, ip: Ipv4Addr) -> Option<ClientInfo>;
}

/// Why a request is refused; each has a TFTP error code, a message and a counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Refusal {
    /// Not a well-formed RRQ/WRQ.
    Malformed,
    /// Mode `mail` (obsolete).
    MailMode,
    /// A write request (this server does not accept uploads).
    WriteRefused,
    /// An option value the RFCs do not allow (RFC 2347 ERROR 8).
    BadOption,
    /// `tftp.max_transfers` transfers already running.
    Busy,
    /// No such file under the root.
    NotFound,
    /// Absolute path, `..`, or a symlink leading out of the root.
    PathEscape,
    /// Not a regular file (directory, device, fifo) or not readable.
    NotRegular,
    /// A virtual per-phone file asked from an address holding no lease.
    NoLease,
    /// A virtual per-phone file of another phone.
    OtherPhone,
    /// The address is in no class's LAN pool and holds no lease.
    UnknownClient,
    /// A netascii request for a file larger than [`NETASCII_MAX_BYTES`].
    NetasciiTooLarge,
    /// A write request announcing (tsize) more than the upload cap.
    UploadTooLarge,
}

/// Largest file served in netascii mode. The conversion is done in memory, so this bounds the
/// memory a netascii transfer can hold; phones fetch firmware and configs in octet mode.
pub const NETASCII_MAX_BYTES: u64 = 64 * 1024;

/// RFC 1350 / RFC 764 netascii: LF becomes CR LF and a bare CR becomes CR NUL.
pub fn to_netascii(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + bytes.len() / 16);
    for &b in bytes {
        match b {
            b'\n' => out.extend_from_slice(b"\r\n"),
            b'\r' => out.extend_from_slice(b"\r\0"),
            other => out.push(other),
        }
    }
    out
}

impl Refusal {
    /// Every refusal, in counter order.
    pub const ALL: [Self; 13] = [
        Self::Malformed,
        Self::MailMode,
        Self::WriteRefused,
        Self::BadOption,
        Self::Busy,
        Self::NotFound,
        Self::PathEscape,
        Self::NotRegular,
        Self::NoLease,
        Self::OtherPhone,
        Self::UnknownClient,
        Self::NetasciiTooLarge,
        Self::UploadTooLarge,
    ];

    /// Counter label.
    pub fn name(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::MailMode => "mail_mode",
            Self::WriteRefused => "write_refused",
            Self::BadOption => "bad_option",
            Self::Busy => "busy",
            Self::NotFound => "not_found",
            Self::PathEscape => "path_escape",
            Self::NotRegular => "not_regular",
            Self::NoLease => "no_lease",
            Self::OtherPhone => "other_phone",
            Self::UnknownClient => "unknown_client",
            Self::NetasciiTooLarge => "netascii_too_large",
            Self::UploadTooLarge => "upload_too_large",
        }
    }

    /// TFTP error code sent (RFC 1350 appendix, RFC 2347).
    pub fn code(self) -> ErrorCode {
        match self {
            Self::Malformed | Self::MailMode => ErrorCode::IllegalOperation,
            Self::BadOption => ErrorCode::OptionRefused,
            Self::UploadTooLarge => ErrorCode::DiskFull,
            Self::Busy | Self::NetasciiTooLarge => ErrorCode::Undefined,
            Self::NotFound => ErrorCode::FileNotFound,
            Self::WriteRefused
            | Self::PathEscape
            | Self::NotRegular
            | Self::NoLease
            | Self::OtherPhone
            | Self::UnknownClient => ErrorCode::AccessViolation,
        }
    }

    /// Message sent in the ERROR packet; says no more than the client needs.
    pub fn message(self) -> &'static str {
        match self {
            Self::Malformed => "malformed request",
            Self::MailMode => "mail mode not supported",
            Self::WriteRefused => "write access denied",
            Self::BadOption => "invalid option value",
            Self::Busy => "server busy, try again later",
            Self::NotFound => "file not found",
            Self::PathEscape => "path outside the root",
            Self::NotRegular => "not a regular file",
            Self::NoLease => "no lease for this address",
            Self::OtherPhone => "not this phone's file",
            Self::UnknownClient => "unknown client",
            Self::NetasciiTooLarge => "file too large for netascii mode, use octet",
            Self::UploadTooLarge => "upload too large",
        }
    }
}

/// Refuses absolute names and names with a `..` component (either separator), before any I/O.
pub fn confined_relative(name: &str) -> Result<&Path, Refusal> {
    if name.starts_with('/') || name.starts_with('\\') || name.split(['/', '\\']).any(|c| c == "..") {
        return Err(Refusal::PathEscape);
    }
    let path = Path::new(name);
    if path.components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir)) {
        Ok(path)
    } else {
        Err(Refusal::PathEscape)
    }
}

/// Opens `name` under `root` (already canonical), confined to it.
///
/// The kernel resolves the whole path beneath an open descriptor of the root (`openat2` with
/// `RESOLVE_BENEATH`): a symlink that stays inside the root is followed, one that leads out (or is
/// absolute) fails the open, and since the check is the open itself, a directory swapped for a
/// symlink while a request is being served cannot lead out either. Kernels without `openat2`
/// (before 5.6) get the canonicalize-then-open check, which leaves that race open.
pub fn open_confined(root: &Path, name: &str) -> Result<FileContent, Refusal> {
    let relative = confined_relative(name)?;
    let file = match open_beneath(root, relative) {
        Ok(file) => file,
        Err(rustix::io::Errno::NOSYS) => return open_canonical(root, relative),
        Err(rustix::io::Errno::XDEV | rustix::io::Errno::LOOP) => return Err(Refusal::PathEscape),
        Err(rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR) => return Err(Refusal::NotFound),
        Err(_) => return Err(Refusal::NotRegular),
    };
    serve_regular(file)
}

fn open_beneath(root: &Path, relative: &Path) -> Result<std::fs::File, rustix::io::Errno> {
    use rustix::fs::{Mode, OFlags, ResolveFlags};
    let dir = rustix::fs::open(root, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
    let fd = rustix::fs::openat2(
        &dir,
        relative,
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
    )?;
    Ok(std::fs::File::from(fd))
}

fn open_canonical(root: &Path, relative: &Path) -> Result<FileContent, Refusal> {
    let joined = root.join(relative);
    let canonical = match joined.canonicalize() {
        Ok(p) => p,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(Refusal::NotFound),
        Err(_) => return Err(Refusal::NotRegular),
    };
    if !canonical.starts_with(root) {
        return Err(Refusal::PathEscape);
    }
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(&canonical)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => Refusal::PathEscape,
            _ if e.kind() == io::ErrorKind::NotFound => Refusal::NotFound,
            _ => Refusal::NotRegular,
        })?;
    serve_regular(file)
}

fn serve_regular(file: std::fs::File) -> Result<FileContent, Refusal> {
    let metadata = file.metadata().map_err(|_| Refusal::NotRegular)?;
    if !metadata.is_file() {
        return Err(Refusal::NotRegular);
    }
    FileContent::new(file).map_err(|_| Refusal::NotRegular)
}

/// If `name` matches `pattern`, the MAC it names (`None` for a pattern without a placeholder).
pub fn match_pattern(pattern: &str, name: &str) -> Option<Option<MacAddr>> {
    let mut rest = name;
    let mut pat = pattern;
    let mut found: Option<MacAddr> = None;
    loop {
        let (placeholder, upper) = if pat.starts_with("{mac}") {
            (true, false)
        } else if pat.starts_with("{MAC}") {
            (true, true)
        } else {
            (false, false)
        };
        if placeholder {
            pat = pat.get(5..)?;
            let digits = rest.get(..12)?;
            let case_ok = digits
                .bytes()
                .all(|b| b.is_ascii_digit() || if upper { b.is_ascii_uppercase() } else { b.is_ascii_lowercase() });
            if !case_ok {
                return None;
            }
            let mac: MacAddr = digits.parse().ok()?;
            if found.is_some_and(|m| m != mac) {
                return None;
            }
            found = Some(mac);
            rest = rest.get(12..)?;
            continue;
        }
        let mut chars = pat.chars();
        match chars.next() {
            None => return rest.is_empty().then_some(found),
            Some(c) => {
                rest = rest.strip_prefix(c)?;
                pat = chars.as_str();
            }
        }
    }
}

/// Renders the per-phone configuration file.
///
/// Format: UTF-8 text, one `key = value` per line, `#` starts a comment line; keys are the
/// fixed ones below, then the class's `parameters` overridden by the device's own, in key order.
/// A parameter whose key is one of the fixed keys is not written (the lease is authoritative).
/// Line breaks inside values become spaces.
///
/// ```text
/// # dialtone per-phone configuration
/// mac = 805ec0a1b2c3
/// class = yealink-t5
/// lan_ip = 100.64.16.5
/// public_ip = 198.51.100.0
/// port_lo = 6144
/// port_hi = 7167
/// codecs = G722,PCMU,PCMA
/// sip_registrar = sip.lab.dialtone.test
/// ```
pub fn render_phone_config(class: &PhoneClass, client: &ClientInfo) -> Vec<u8> {
    use std::fmt::Write as _;
    let block = client.port_block;
    let fixed: [(&str, String); 6] = [
        ("mac", client.mac.to_hex12()),
        ("class", class.name.clone()),
        ("lan_ip", client.lan_ip.to_string()),
        ("public_ip", block.public_ip.to_string()),
        ("port_lo", block.port_lo.to_string()),
        ("port_hi", block.port_hi.to_string()),
    ];
    let mut merged: BTreeMap<&str, &str> = class.parameters.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    merged.extend(client.parameters.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let one_line = |s: &str| s.replace(['\r', '\n'], " ");
    let mut text = String::from("# dialtone per-phone configuration\n");
    for (key, value) in &fixed {
        let _ = writeln!(text, "{key} = {value}");
    }
    for (key, value) in merged {
        if fixed.iter().any(|(k, _)| *k == key) {
            continue;
        }
        let _ = writeln!(text, "{} = {}", one_line(key), one_line(value));
    }
    text.into_bytes()
}

/// A canonicalized class root, or why it is unusable (then every file request is "not found").
#[derive(Debug, Clone)]
pub struct Root(Option<PathBuf>);

impl Root {
    /// Canonicalizes `path` once, at start.
    pub fn new(path: &Path) -> Self {
        Self(path.canonicalize().ok())
    }

    /// The canonical path, if the directory exists.
    pub fn path(&self) -> Option<&Path> {
        self.0.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_only_their_case() {
        let mac = Some(MacAddr([0x80, 0x5e, 0xc0, 0xa1, 0xb2, 0xc3]));
        assert_eq!(match_pattern("{mac}.cfg", "805ec0a1b2c3.cfg"), Some(mac));
        assert_eq!(match_pattern("{mac}.cfg", "805EC0A1B2C3.cfg"), None);
        assert_eq!(match_pattern("{MAC}.cfg", "805EC0A1B2C3.cfg"), Some(mac));
        assert_eq!(match_pattern("y0000000000{mac}.cfg", "y0000000000805ec0a1b2c3.cfg"), Some(mac));
        assert_eq!(match_pattern("{mac}.cfg", "805ec0a1b2c.cfg"), None);
        assert_eq!(match_pattern("{mac}.cfg", "805ec0a1b2c3.cfgx"), None);
        assert_eq!(match_pattern("{mac}.cfg", "805ec0a1b2c3"), None);
        assert_eq!(match_pattern("{mac}/{mac}.cfg", "805ec0a1b2c3/805ec0a1b2c3.cfg"), Some(mac));
        assert_eq!(match_pattern("{mac}/{mac}.cfg", "805ec0a1b2c3/805ec0a1b2c4.cfg"), None);
        assert_eq!(match_pattern("phone.cfg", "phone.cfg"), Some(None));
        assert_eq!(match_pattern("{mac}.cfg", "ü05ec0a1b2c3.cfg"), None);
    }

    #[test]
    fn netascii_conversion() {
        assert_eq!(to_netascii(b"a\nb\rc\r\n"), b"a\r\nb\r\0c\r\0\r\n");
        assert_eq!(to_netascii(b""), b"");
    }

    /// A directory of the root swapped back and forth with a symlink to a secret directory while
    /// requests are served: no request may ever read the secret. (With a check-then-open, a swap
    /// between the check of `real/f` and its open leads out of the root.)
    #[test]
    fn a_directory_swapped_for_a_symlink_never_leads_out() {
        use crate::transfer::Content;
        let scratch = crate::engine::tests::Scratch::new("swap");
        let root = scratch.0.join("root");
        let secret = scratch.0.join("secret");
        std::fs::create_dir_all(root.join("dir")).expect("test fixture");
        std::fs::create_dir_all(&secret).expect("test fixture");
        std::fs::write(root.join("dir/f"), b"inside").expect("test fixture");
        std::fs::write(secret.join("f"), b"SECRET").expect("test fixture");
        std::os::unix::fs::symlink(&secret, root.join("link")).expect("test fixture");
        let root = root.canonicalize().expect("test fixture");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let swapper = {
            let (root, stop) = (root.clone(), std::sync::Arc::clone(&stop));
            std::thread::spawn(move || {
                // `real` is alternately the directory and the symlink out (renames are atomic).
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    for held in ["dir", "link"] {
                        std::fs::rename(root.join(held), root.join("real")).expect("test fixture");
                        std::fs::rename(root.join("real"), root.join(held)).expect("test fixture");
                    }
                }
            })
        };
        let (mut served, mut refused) = (0u32, 0u32);
        let started = std::time::Instant::now();
        while started.elapsed() < std::time::Duration::from_millis(1500) {
            match open_confined(&root, "real/f") {
                Ok(mut content) => {
                    let mut buf = [0u8; 16];
                    let n = content.read_at(0, &mut buf).expect("test fixture");
                    assert_eq!(&buf[..n], b"inside", "a request read outside the root");
                    served += 1;
                }
                Err(_) => refused += 1,
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        swapper.join().expect("test fixture");
        assert!(served > 0 && refused > 0, "the race was not exercised: {served} served, {refused} refused");
    }

    #[test]
    fn syntactic_escapes_refused() {
        for name in ["/etc/passwd", "../x", "a/../../x", "a/..", "..", "\\x", "a\\..\\b"] {
            assert_eq!(confined_relative(name).err(), Some(Refusal::PathEscape), "{name}");
        }
        for name in ["a", "./a", "a/b/c.rom", "a..b", "...", "a//b"] {
            assert!(confined_relative(name).is_ok(), "{name}");
        }
    }
}
