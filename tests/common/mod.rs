//! Shared harness of the end-to-end tests: a private lab per test, torn down in `Drop`, and the
//! real `dialtone` binary started inside it.
#![allow(dead_code)]

pub mod traffic;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The `dialtone` binary under test.
pub fn dialtone() -> &'static str {
    env!("CARGO_BIN_EXE_dialtone")
}

/// The repository root.
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// End-to-end tests build network namespaces: they need root and say so plainly.
pub fn require_root() {
    // SAFETY-free check: /proc/self/status holds the effective uid on its "Uid:" line.
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .expect("Uid line in /proc/self/status");
    assert_eq!(euid, "0", "end-to-end tests create network namespaces and must run as root");
}

/// A prefix no other test (in this or another process) uses at the same time.
pub fn unique_prefix(tag: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!("t{}{}{}", tag, std::process::id() % 100_000, NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Runs a command to completion and returns its output.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Names of the network namespaces that exist now.
pub fn netns_list() -> Vec<String> {
    let out = run(Command::new("ip").args(["netns", "list"]));
    let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(String::from)
        .collect();
    names.sort();
    names
}

/// A lab (`scripts/lab.sh up --prefix P`), removed when dropped, even when the test fails.
#[derive(Debug)]
pub struct Lab {
    /// The namespace prefix.
    pub prefix: String,
}

impl Lab {
    /// Brings up a fresh lab with a unique prefix.
    pub fn up(tag: &str) -> Self {
        require_root();
        let lab = Lab { prefix: unique_prefix(tag) };
        let out = run(Command::new(repo().join("scripts/lab.sh")).args(["up", "--prefix", &lab.prefix]));
        assert!(out.status.success(), "lab up failed: {}", String::from_utf8_lossy(&out.stderr));
        lab
    }

    /// Namespace name of one side: `phones`, `gw` or `net`.
    pub fn ns(&self, side: &str) -> String {
        format!("{}-{side}", self.prefix)
    }

    /// Gives the phones' side a fixed address (for tests of services that do not need DHCP).
    pub fn phone_address(&self, cidr: &str) {
        let out = run(self.exec("phones", "ip").args(["addr", "add", cidr, "dev", "eth0"]));
        assert!(out.status.success(), "ip addr add {cidr}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// The value of the one `/metrics` line starting with `line_prefix`, read from the gateway's
    /// management API with the lab configuration's token; panics with the whole page if absent.
    pub fn metric(&self, line_prefix: &str) -> u64 {
        let out = run(self.exec("gw", "curl").args([
            "-sS",
            "-H",
            "Authorization: Bearer lab-management-token-not-for-production",
            "http://127.0.0.1:9000/metrics",
        ]));
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .find(|l| l.starts_with(line_prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no metric {line_prefix:?} in:\n{text}"))
    }

    /// A command run inside namespace `side`.
    pub fn exec(&self, side: &str, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns(side), program]);
        cmd
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("scripts/lab.sh"))
            .args(["down", "--prefix", &self.prefix])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A scratch directory removed when dropped.
#[derive(Debug)]
pub struct Scratch(pub PathBuf);

impl Scratch {
    /// Creates a fresh directory under the system temp dir.
    pub fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("dialtone-{}", unique_prefix(tag)));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        Scratch(dir)
    }

    /// The lab configuration, with every state path moved into this directory.
    pub fn lab_config(&self) -> PathBuf {
        let text = std::fs::read_to_string(repo().join("config/examples/dialtone.toml")).expect("read lab config");
        let path = self.0.join("dialtone.toml");
        std::fs::write(&path, text.replace("/var/lib/dialtone", &self.0.display().to_string())).expect("write config");
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running `dialtone run` inside a namespace; killed when dropped.
#[derive(Debug)]
pub struct Gateway {
    /// The `ip netns exec … dialtone run` child.
    pub child: Child,
    /// Where its stderr (the log) goes.
    pub log: PathBuf,
}

impl Gateway {
    /// Starts `dialtone run --config CONFIG` in the lab's gateway namespace.
    pub fn start(lab: &Lab, config: &Path, log: PathBuf) -> Self {
        let log_file = std::fs::File::create(&log).expect("create gateway log");
        let child = lab
            .exec("gw", dialtone())
            .args(["run", "--config"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("spawn dialtone run");
        Gateway { child, log }
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `needle`, or panics with the log after `timeout`.
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if self.log_text().contains(needle) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("gateway exited with {status} before logging {needle:?}; log:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("gateway did not log {needle:?} within {timeout:?}; log:\n{}", self.log_text());
    }

    /// Sends `signal` (by number) and waits for the exit status.
    pub fn stop_with(&mut self, signal: i32, timeout: Duration) -> std::process::ExitStatus {
        // `ip netns exec` execs the program, so the child's pid is dialtone's own.
        let pid = self.child.id().to_string();
        let out = run(Command::new("kill").args([&format!("-{signal}"), &pid]));
        assert!(out.status.success(), "kill -{signal} {pid} failed");
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for gateway") {
                return status;
            }
            assert!(start.elapsed() < timeout, "gateway still running {timeout:?} after signal {signal}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Held by a test while its gateway runs the dataplane: each runs a busy-polling worker on CPU 1
/// (the lab configurations' `dataplane.cpus`), so two at once in one test binary (the harness
/// runs a binary's tests in parallel) would halve each other's core and drop frames.
pub fn one_dataplane_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static DATAPLANE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    DATAPLANE.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
