//! Request handling, sans-IO: a datagram on the listening port becomes a transfer (a
//! [`ReadTransfer`], or a [`WriteTransfer`] into a `tftp.writable_dirs` directory) or a refusal
//! (an ERROR packet to send back), with no socket and no clock.

use std::fs::OpenOptions;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dialtone_config::{PhoneClass, Tftp};

use crate::content::{self, ClientDirectory, ClientInfo, Refusal, Root};
use crate::options::{self, Limits, OptionUse};
use crate::packet::{self, Mode, Packet, Request};
use crate::transfer::{Content, ReadTransfer, Transfer, TransferParams};
use crate::write::{FileSink, Sink, WriteParams, WriteTransfer};

/// Largest upload accepted into a writable directory (phones upload logs and call lists).
pub const MAX_UPLOAD_BYTES: u64 = 16 << 20;

/// Distinguishes temporary upload files of this process.
static UPLOAD_SEQUENCE: AtomicU64 = AtomicU64::new(0);

/// What to do with a datagram that arrived on the listening port.
#[derive(Debug)]
pub enum Disposition {
    /// Start this transfer (on a new socket: its port is the server's transfer ID).
    Start(Box<dyn Transfer>, OptionUse),
    /// Send `reply` (an ERROR packet) back to the sender and forget it.
    Refuse(Refusal, Vec<u8>),
    /// Not a request (a stray DATA, ACK, ERROR or OACK): drop it silently.
    Ignore,
}

/// The request-level engine: configuration, class roots and the lease table.
pub struct Engine {
    tftp: Tftp,
    classes: Vec<PhoneClass>,
    roots: Vec<Root>,
    directory: Arc<dyn ClientDirectory>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("tftp", &self.tftp).field("roots", &self.roots).finish_non_exhaustive()
    }
}

fn client_ipv4(addr: SocketAddr) -> Option<Ipv4Addr> {
    match addr.ip() {
        IpAddr::V4(v4) => Some(v4),
        IpAddr::V6(v6) => v6.to_ipv4_mapped(),
    }
}

impl Engine {
    /// Canonicalizes each class root once; a missing root serves nothing but virtual files.
    pub fn new(tftp: Tftp, classes: Vec<PhoneClass>, directory: Arc<dyn ClientDirectory>) -> Self {
        let roots = classes.iter().map(|c| Root::new(&c.tftp_root)).collect();
        Self { tftp, classes, roots, directory }
    }

    /// The TFTP configuration in force.
    pub fn config(&self) -> &Tftp {
        &self.tftp
    }

    /// Handles one datagram from `from` on the listening port, with `active` transfers running.
    pub fn handle_request(&self, from: SocketAddr, bytes: &[u8], active: usize) -> Disposition {
        let request = match Packet::parse(bytes) {
            Ok(Packet::Rrq(r)) => r,
            Ok(Packet::Wrq(r)) => return self.handle_write(from, &r, active),
            Ok(_) => return Disposition::Ignore,
            Err(_) => return refuse(Refusal::Malformed),
        };
        if request.mode == Mode::Mail {
            return refuse(Refusal::MailMode);
        }
        // Cheap checks first: a full server answers at once instead of opening files.
        if active >= self.tftp.max_transfers as usize {
            return refuse(Refusal::Busy);
        }
        match self.resolve(from, &request) {
            Ok(content) => self.start(from, &request, content),
            Err(why) => refuse(why),
        }
    }

    /// Write requests are refused with ERROR 2 (RFC 1350 "access violation") unless the path
    /// lies in one of `tftp.writable_dirs` of the client's class root, so a phone can never
    /// replace a firmware image or write a virtual per-phone file.
    fn handle_write(&self, from: SocketAddr, request: &Request, active: usize) -> Disposition {
        if request.mode == Mode::Mail {
            return refuse(Refusal::MailMode);
        }
        if self.tftp.writable_dirs.is_empty() {
            return refuse(Refusal::WriteRefused);
        }
        if active >= self.tftp.max_transfers as usize {
            return refuse(Refusal::Busy);
        }
        // RFC 2349: a WRQ's tsize is the size of the upload; refuse what would not fit.
        let announced = request
            .options
            .iter()
            .find(|o| o.name.eq_ignore_ascii_case("tsize"))
            .and_then(|o| o.value.parse::<u64>().ok());
        if announced.is_some_and(|size| size > MAX_UPLOAD_BYTES) {
            return refuse(Refusal::UploadTooLarge);
        }
        let Ok(negotiated) = options::negotiate(&request.options, self.limits(), announced) else {
            return refuse(Refusal::BadOption);
        };
        let sink = match self.resolve_upload(from, request) {
            Ok(sink) => sink,
            Err(why) => return refuse(why),
        };
        let params = WriteParams {
            blksize: negotiated.blksize,
            windowsize: negotiated.windowsize,
            timeout: negotiated.timeout,
            retries: self.tftp.retries,
            oack: negotiated.oack,
            max_bytes: MAX_UPLOAD_BYTES,
        };
        Disposition::Start(Box::new(WriteTransfer::new(from, sink, params)), negotiated.used)
    }

    /// The client's class index and lease (a lease names the class; else the LAN pool does).
    fn client_class(&self, from: SocketAddr) -> Result<(usize, Option<ClientInfo>), Refusal> {
        let ip = client_ipv4(from).ok_or(Refusal::UnknownClient)?;
        let lease = self.directory.lookup(ip);
        let index = match &lease {
            Some(info) => info.class,
            None => self.classes.iter().position(|c| c.lan_pool.contains(&ip)).ok_or(Refusal::UnknownClient)?,
        };
        if index >= self.classes.len() {
            return Err(Refusal::UnknownClient);
        }
        Ok((index, lease))
    }

    /// A temporary file beside the upload's target, confined to a writable directory.
    fn resolve_upload(&self, from: SocketAddr, request: &Request) -> Result<Box<dyn Sink>, Refusal> {
        let (class_index, _) = self.client_class(from)?;
        let class = self.classes.get(class_index).ok_or(Refusal::UnknownClient)?;
        let name = request.filename.as_str();
        let relative = content::confined_relative(name)?;
        if class.config_files.iter().any(|p| content::match_pattern(p, name).is_some()) {
            return Err(Refusal::WriteRefused);
        }
        let depth = relative.components().count();
        let dir = self
            .tftp
            .writable_dirs
            .iter()
            .find(|d| relative.starts_with(d) && depth > d.components().count())
            .ok_or(Refusal::WriteRefused)?;
        let root = self.roots.get(class_index).and_then(Root::path).ok_or(Refusal::NotFound)?;
        let file_name = relative.file_name().ok_or(Refusal::WriteRefused)?;
        let allowed = root.join(dir).canonicalize().map_err(|_| Refusal::NotFound)?;
        let parent =
            root.join(relative.parent().unwrap_or(Path::new(""))).canonicalize().map_err(|_| Refusal::NotFound)?;
        // Symlinked directories leading out of the writable one are refused here.
        if !allowed.starts_with(root) || !parent.starts_with(&allowed) {
            return Err(Refusal::PathEscape);
        }
        let target = parent.join(file_name);
        if let Ok(meta) = std::fs::symlink_metadata(&target) {
            if !meta.is_file() {
                return Err(Refusal::NotRegular);
            }
        }
        let sequence = UPLOAD_SEQUENCE.fetch_add(1, Ordering::Relaxed);
        let mut temporary_name = std::ffi::OsString::from(".");
        temporary_name.push(file_name);
        temporary_name.push(format!(".upload-{}-{sequence}", std::process::id()));
        let temporary = parent.join(temporary_name);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&temporary)
            .map_err(|_| Refusal::NotRegular)?;
        Ok(Box::new(FileSink::new(file, temporary, target)))
    }

    fn limits(&self) -> Limits {
        Limits {
            max_blksize: u16::try_from(self.tftp.max_blksize).unwrap_or(options::MAX_BLKSIZE),
            max_windowsize: u16::try_from(self.tftp.max_windowsize).unwrap_or(u16::MAX),
            default_timeout: self.tftp.timeout,
        }
    }

    /// Lease (or LAN pool) -> class; then a virtual file or a confined file under its root.
    fn resolve(&self, from: SocketAddr, request: &Request) -> Result<Box<dyn Content>, Refusal> {
        let (class_index, lease) = self.client_class(from)?;
        let class = self.classes.get(class_index).ok_or(Refusal::UnknownClient)?;
        let name = request.filename.as_str();
        // Escapes are refused before anything else, virtual names included.
        content::confined_relative(name)?;
        for pattern in &class.config_files {
            let Some(named_mac) = content::match_pattern(pattern, name) else { continue };
            let info = lease.as_ref().ok_or(Refusal::NoLease)?;
            if named_mac.is_some_and(|mac| mac != info.mac) {
                return Err(Refusal::OtherPhone);
            }
            return Ok(Box::new(content::render_phone_config(class, info)));
        }
        let root = self.roots.get(class_index).and_then(Root::path).ok_or(Refusal::NotFound)?;
        Ok(Box::new(content::open_confined(root, name)?))
    }

    fn start(&self, from: SocketAddr, request: &Request, mut content: Box<dyn Content>) -> Disposition {
        if request.mode == Mode::Netascii {
            // Converted in memory (bounded); tsize then reports the converted length.
            let size = content.size();
            if size > content::NETASCII_MAX_BYTES {
                return refuse(Refusal::NetasciiTooLarge);
            }
            let mut raw = vec![0; usize::try_from(size).unwrap_or(0)];
            match content.read_at(0, &mut raw) {
                Ok(n) if n == raw.len() => content = Box::new(content::to_netascii(&raw)),
                _ => return refuse(Refusal::NotRegular),
            }
        }
        let Ok(negotiated) = options::negotiate(&request.options, self.limits(), Some(content.size())) else {
            return refuse(Refusal::BadOption);
        };
        let params = TransferParams {
            blksize: negotiated.blksize,
            windowsize: negotiated.windowsize,
            timeout: negotiated.timeout,
            retries: self.tftp.retries,
            oack: negotiated.oack,
        };
        Disposition::Start(Box::new(ReadTransfer::new(from, content, params)), negotiated.used)
    }

    /// The canonical root of class `index`, if it exists.
    pub fn root(&self, index: usize) -> Option<&Path> {
        self.roots.get(index).and_then(Root::path)
    }
}

fn refuse(why: Refusal) -> Disposition {
    let mut reply = Vec::new();
    packet::emit_error(&mut reply, why.code(), why.message());
    Disposition::Refuse(why, reply)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::{BTreeMap, HashMap};
    use std::path::PathBuf;
    use std::time::Instant;

    use dialtone_config::{CpuPolicy, MacAddr};

    use crate::packet::{ErrorCode, TftpOption};
    use crate::transfer::Outcome;

    pub(crate) struct Leases(pub HashMap<Ipv4Addr, ClientInfo>);

    impl ClientDirectory for Leases {
        fn lookup(&self, ip: Ipv4Addr) -> Option<ClientInfo> {
            self.0.get(&ip).cloned()
        }
    }

    /// A scratch directory under the system temp dir, removed on drop.
    pub(crate) struct Scratch(pub PathBuf);

    impl Scratch {
        pub(crate) fn new(tag: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("dialtone-tftp-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("temp dir is writable");
            Self(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    pub(crate) const PHONE_IP: Ipv4Addr = Ipv4Addr::new(100, 64, 16, 5);
    pub(crate) const PHONE_MAC: MacAddr = MacAddr([0x80, 0x5e, 0xc0, 0xa1, 0xb2, 0xc3]);
    pub(crate) const UNLEASED_IP: Ipv4Addr = Ipv4Addr::new(100, 64, 16, 9);

    pub(crate) fn firmware() -> Vec<u8> {
        (0..100_000u32).map(|i| (i ^ (i >> 8)) as u8).collect()
    }

    /// The lab config with the yealink root in `scratch/root`, files and symlinks laid out,
    /// and one leased phone at `PHONE_IP` (plus 127.0.0.1 for loopback tests).
    pub(crate) fn fixture(scratch: &Scratch) -> (dialtone_config::Config, Arc<Leases>) {
        let root = scratch.0.join("root");
        std::fs::create_dir_all(root.join("yealink")).expect("mkdir");
        std::fs::create_dir_all(root.join("dir")).expect("mkdir");
        std::fs::write(root.join("yealink/t5.rom"), firmware()).expect("write");
        std::fs::write(scratch.0.join("secret"), b"outside the root").expect("write");
        std::os::unix::fs::symlink(scratch.0.join("secret"), root.join("escape")).expect("symlink");
        std::os::unix::fs::symlink("yealink/t5.rom", root.join("inside")).expect("symlink");
        std::os::unix::fs::symlink(&scratch.0, root.join("up")).expect("symlink");
        let text = include_str!("../../../config/examples/dialtone.toml")
            .replace("/var/lib/dialtone/tftp/yealink-t5", &root.display().to_string());
        let config = dialtone_config::load_str("lab.toml", &text, &scratch.0, CpuPolicy::Ignore)
            .expect("lab config is valid")
            .config;
        let class = &config.classes[0];
        let mut leases = HashMap::new();
        for (ip, lan_ip) in [(PHONE_IP, PHONE_IP), (Ipv4Addr::LOCALHOST, PHONE_IP)] {
            leases.insert(
                ip,
                ClientInfo {
                    class: 0,
                    mac: PHONE_MAC,
                    lan_ip,
                    port_block: class.port_block_of(lan_ip).expect("in pool"),
                    parameters: BTreeMap::from([
                        ("sip_user".to_owned(), "4711".to_owned()),
                        ("codecs".to_owned(), "PCMU".to_owned()),
                        ("port_lo".to_owned(), "1".to_owned()),
                    ]),
                },
            );
        }
        (config, Arc::new(Leases(leases)))
    }

    fn engine(scratch: &Scratch) -> Engine {
        let (config, leases) = fixture(scratch);
        Engine::new(config.tftp.clone(), config.classes.clone(), leases)
    }

    /// An encoded octet-mode read request with `options` (shared with the server tests).
    pub(crate) fn rrq(name: &str, options: &[(&str, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        Packet::Rrq(Request {
            filename: name.into(),
            mode: Mode::Octet,
            options: options.iter().map(|(n, v)| TftpOption { name: (*n).into(), value: (*v).into() }).collect(),
        })
        .emit(&mut out);
        out
    }

    fn from(ip: Ipv4Addr) -> SocketAddr {
        SocketAddr::from((ip, 40000))
    }

    /// Runs a transfer against a lossless client acknowledging each window; returns the bytes.
    fn fetch(mut t: Box<dyn Transfer>) -> Vec<u8> {
        let now = Instant::now();
        let mut out = Vec::new();
        let mut got = Vec::new();
        loop {
            let mut last = None;
            while t.poll_transmit(now, &mut out).is_some() {
                match Packet::parse(&out).expect("valid") {
                    Packet::Oack(_) => last = Some(0),
                    Packet::Data { block, data } => {
                        got.extend_from_slice(data);
                        last = Some(block);
                    }
                    other => panic!("{other:?}"),
                }
            }
            let Some(block) = last else { break };
            let mut ack = Vec::new();
            Packet::Ack { block }.emit(&mut ack);
            t.handle_datagram(now, t.peer(), &ack);
        }
        assert_eq!(t.outcome(), Some(Outcome::Completed));
        got
    }

    fn refusal(d: Disposition) -> (Refusal, ErrorCode) {
        match d {
            Disposition::Refuse(why, reply) => match Packet::parse(&reply) {
                Ok(Packet::Error { code, .. }) => (why, code),
                other => panic!("{other:?}"),
            },
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn firmware_is_served_byte_identical_with_options() {
        let scratch = Scratch::new("fw");
        let e = engine(&scratch);
        for options in [&[][..], &[("blksize", "1468"), ("windowsize", "16"), ("tsize", "0")][..]] {
            let Disposition::Start(t, used) = e.handle_request(from(PHONE_IP), &rrq("yealink/t5.rom", options), 0)
            else {
                panic!("refused")
            };
            assert_eq!(used.windowsize, !options.is_empty());
            assert_eq!(fetch(t), firmware());
        }
        // A symlink that stays inside the root is fine; so is an unleased phone of the class.
        let Disposition::Start(t, _) = e.handle_request(from(UNLEASED_IP), &rrq("inside", &[]), 0) else {
            panic!("refused")
        };
        assert_eq!(fetch(t), firmware());
    }

    #[test]
    fn escapes_refused() {
        let scratch = Scratch::new("escape");
        let e = engine(&scratch);
        for name in ["../secret", "yealink/../../secret", "/etc/passwd", "escape", "up/secret"] {
            let (why, code) = refusal(e.handle_request(from(PHONE_IP), &rrq(name, &[]), 0));
            assert_eq!((why, code), (Refusal::PathEscape, ErrorCode::AccessViolation), "{name}");
        }
        assert_eq!(refusal(e.handle_request(from(PHONE_IP), &rrq("missing.rom", &[]), 0)).1, ErrorCode::FileNotFound);
        assert_eq!(refusal(e.handle_request(from(PHONE_IP), &rrq("dir", &[]), 0)).0, Refusal::NotRegular);
    }

    #[test]
    fn virtual_file_for_leased_phone_names_its_block_and_account() {
        let scratch = Scratch::new("virtual");
        let (config, leases) = fixture(&scratch);
        let e = Engine::new(config.tftp.clone(), config.classes.clone(), leases);
        let block = config.classes[0].port_block_of(PHONE_IP).expect("in pool");
        for name in ["805ec0a1b2c3.cfg", "y0000000000805ec0a1b2c3.cfg"] {
            let Disposition::Start(t, _) = e.handle_request(from(PHONE_IP), &rrq(name, &[("tsize", "0")]), 0) else {
                panic!("refused {name}")
            };
            let text = String::from_utf8(fetch(t)).expect("text");
            let lines: Vec<&str> = text.lines().collect();
            assert!(lines.contains(&"mac = 805ec0a1b2c3"), "{text}");
            assert!(lines.contains(&format!("public_ip = {}", block.public_ip).as_str()), "{text}");
            assert!(lines.contains(&format!("port_lo = {}", block.port_lo).as_str()), "{text}");
            assert!(lines.contains(&format!("port_hi = {}", block.port_hi).as_str()), "{text}");
            assert!(lines.contains(&"sip_registrar = sip.lab.dialtone.test"), "{text}");
            assert!(lines.contains(&"sip_user = 4711"), "{text}");
            assert!(lines.contains(&"codecs = PCMU"), "device override wins: {text}");
            assert!(!lines.contains(&"port_lo = 1"), "lease wins over parameters: {text}");
        }
    }

    #[test]
    fn netascii_request_gets_crlf_lines() {
        let scratch = Scratch::new("netascii");
        let e = engine(&scratch);
        let mut bytes = Vec::new();
        Packet::Rrq(Request { filename: "805ec0a1b2c3.cfg".into(), mode: Mode::Netascii, options: vec![] })
            .emit(&mut bytes);
        let Disposition::Start(t, _) = e.handle_request(from(PHONE_IP), &bytes, 0) else { panic!("refused") };
        let text = String::from_utf8(fetch(t)).expect("text");
        assert!(text.contains("\r\nmac = 805ec0a1b2c3\r\n"), "{text:?}");
        assert!(!text.replace("\r\n", "").contains('\n'), "{text:?}");
    }

    #[test]
    fn virtual_file_refused_without_lease_or_for_another_phone() {
        let scratch = Scratch::new("virtual-refused");
        let e = engine(&scratch);
        let (why, code) = refusal(e.handle_request(from(UNLEASED_IP), &rrq("805ec0a1b2c3.cfg", &[]), 0));
        assert_eq!((why, code), (Refusal::NoLease, ErrorCode::AccessViolation));
        let (why, _) = refusal(e.handle_request(from(PHONE_IP), &rrq("805ec0a1b2c4.cfg", &[]), 0));
        assert_eq!(why, Refusal::OtherPhone);
        let (why, _) = refusal(e.handle_request(from(Ipv4Addr::new(10, 9, 9, 9)), &rrq("yealink/t5.rom", &[]), 0));
        assert_eq!(why, Refusal::UnknownClient);
    }

    #[test]
    fn writes_refused_with_access_violation() {
        let scratch = Scratch::new("write");
        let e = engine(&scratch);
        let mut wrq = Vec::new();
        Packet::Wrq(Request { filename: "yealink/t5.rom".into(), mode: Mode::Octet, options: vec![] }).emit(&mut wrq);
        assert_eq!(
            refusal(e.handle_request(from(PHONE_IP), &wrq, 0)),
            (Refusal::WriteRefused, ErrorCode::AccessViolation)
        );
    }

    fn wrq(name: &str, options: &[(&str, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        Packet::Wrq(Request {
            filename: name.into(),
            mode: Mode::Octet,
            options: options.iter().map(|(n, v)| TftpOption { name: (*n).into(), value: (*v).into() }).collect(),
        })
        .emit(&mut out);
        out
    }

    #[test]
    fn uploads_confined_to_writable_dirs() {
        let scratch = Scratch::new("upload");
        let (config, leases) = fixture(&scratch);
        let root = scratch.0.join("root");
        std::fs::create_dir_all(root.join("uploads")).expect("mkdir");
        std::os::unix::fs::symlink(&scratch.0, root.join("uploads/out")).expect("symlink");
        std::os::unix::fs::symlink(scratch.0.join("secret"), root.join("uploads/link")).expect("symlink");
        let mut tftp = config.tftp.clone();
        tftp.writable_dirs = vec![PathBuf::from("uploads")];
        let e = Engine::new(tftp, config.classes.clone(), leases);

        let Disposition::Start(mut t, _) = e.handle_request(from(PHONE_IP), &wrq("uploads/log.txt", &[]), 0) else {
            panic!("refused")
        };
        let now = Instant::now();
        let mut out = Vec::new();
        assert!(t.poll_transmit(now, &mut out).is_some());
        assert_eq!(Packet::parse(&out), Ok(Packet::Ack { block: 0 }));
        let mut data = Vec::new();
        Packet::Data { block: 1, data: b"hello" }.emit(&mut data);
        t.handle_datagram(now, from(PHONE_IP), &data);
        assert!(t.poll_transmit(now, &mut out).is_some());
        assert_eq!(Packet::parse(&out), Ok(Packet::Ack { block: 1 }));
        assert_eq!(std::fs::read(root.join("uploads/log.txt")).expect("stored"), b"hello");

        let cases: &[(&str, Refusal, ErrorCode)] = &[
            ("yealink/t5.rom", Refusal::WriteRefused, ErrorCode::AccessViolation),
            ("uploads", Refusal::WriteRefused, ErrorCode::AccessViolation),
            ("805ec0a1b2c3.cfg", Refusal::WriteRefused, ErrorCode::AccessViolation),
            ("uploads/../yealink/t5.rom", Refusal::PathEscape, ErrorCode::AccessViolation),
            ("/uploads/x", Refusal::PathEscape, ErrorCode::AccessViolation),
            ("uploads/out/x", Refusal::PathEscape, ErrorCode::AccessViolation),
            ("uploads/link", Refusal::NotRegular, ErrorCode::AccessViolation),
            ("uploads/missing/x", Refusal::NotFound, ErrorCode::FileNotFound),
        ];
        for (name, why, code) in cases {
            assert_eq!(refusal(e.handle_request(from(PHONE_IP), &wrq(name, &[]), 0)), (*why, *code), "{name}");
        }
        let huge = (MAX_UPLOAD_BYTES + 1).to_string();
        assert_eq!(
            refusal(e.handle_request(from(PHONE_IP), &wrq("uploads/big", &[("tsize", &huge)]), 0)),
            (Refusal::UploadTooLarge, ErrorCode::DiskFull)
        );
        // An abandoned upload leaves nothing behind.
        let Disposition::Start(t, _) = e.handle_request(from(PHONE_IP), &wrq("uploads/abandoned", &[]), 0) else {
            panic!("refused")
        };
        drop(t);
        let mut names: Vec<String> = std::fs::read_dir(root.join("uploads"))
            .expect("list")
            .map(|d| d.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["link", "log.txt", "out"]);
        assert_eq!(std::fs::read(scratch.0.join("secret")).expect("untouched"), b"outside the root");
    }

    #[test]
    fn bad_option_busy_malformed_and_stray() {
        let scratch = Scratch::new("misc");
        let e = engine(&scratch);
        let (why, code) = refusal(e.handle_request(from(PHONE_IP), &rrq("yealink/t5.rom", &[("blksize", "4")]), 0));
        assert_eq!((why, code), (Refusal::BadOption, ErrorCode::OptionRefused));
        let max = e.config().max_transfers as usize;
        let (why, _) = refusal(e.handle_request(from(PHONE_IP), &rrq("yealink/t5.rom", &[]), max));
        assert_eq!(why, Refusal::Busy);
        assert!(matches!(
            e.handle_request(from(PHONE_IP), &rrq("yealink/t5.rom", &[]), max - 1),
            Disposition::Start(..)
        ));
        assert_eq!(refusal(e.handle_request(from(PHONE_IP), b"\x00\x01x", 0)).1, ErrorCode::IllegalOperation);
        assert!(matches!(e.handle_request(from(PHONE_IP), b"\x00\x04\x00\x01", 0), Disposition::Ignore));
        let mut netascii = Vec::new();
        Packet::Rrq(Request { filename: "yealink/t5.rom".into(), mode: Mode::Netascii, options: vec![] })
            .emit(&mut netascii);
        assert_eq!(refusal(e.handle_request(from(PHONE_IP), &netascii, 0)).0, Refusal::NetasciiTooLarge);
        let mut mail = Vec::new();
        Packet::Rrq(Request { filename: "x".into(), mode: Mode::Mail, options: vec![] }).emit(&mut mail);
        assert_eq!(refusal(e.handle_request(from(PHONE_IP), &mail, 0)).0, Refusal::MailMode);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        #[test]
        fn any_request_bytes_never_panic(
            name in "[a-z0-9./\\\\{}-]{0,40}",
            mode in proptest::prop_oneof![proptest::strategy::Just("octet"), proptest::strategy::Just("netascii"), proptest::strategy::Just("x")],
            tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
            op in 0u16..8,
        ) {
            let scratch = Scratch::new("fuzz");
            let e = engine(&scratch);
            let mut bytes = op.to_be_bytes().to_vec();
            bytes.extend_from_slice(name.as_bytes());
            bytes.push(0);
            bytes.extend_from_slice(mode.as_bytes());
            bytes.push(0);
            bytes.extend_from_slice(&tail);
            match e.handle_request(from(PHONE_IP), &bytes, 0) {
                Disposition::Start(t, _) => {
                    // Whatever starts is confined: the only files outside the root are `secret`.
                    let mut out = Vec::new();
                    let mut t = t;
                    while t.poll_transmit(Instant::now(), &mut out).is_some() {
                        proptest::prop_assert!(!out.windows(7).any(|w| w == b"outside"));
                    }
                }
                Disposition::Refuse(_, reply) => {
                    let is_error = matches!(Packet::parse(&reply), Ok(Packet::Error { .. }));
                    proptest::prop_assert!(is_error);
                }
                Disposition::Ignore => {}
            }
        }
    }
}
