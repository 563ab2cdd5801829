//! A fleet of TFTP clients downloading one file at the same moment, on one thread: the load of
//! a site's phones after a power cut. Works against any TFTP server (dialtone, tftpd-hpa).
//!
//! ```text
//! cargo run --release -p dialtone-tftp --example tftp-fleet -- SERVER FILE COUNT [BLKSIZE [WINDOWSIZE]]
//! ```
//!
//! Each client is a separate UDP socket acting as RFC 1350/2347/7440 asks: it acknowledges each
//! window end (or the last in-order block on a gap) and repeats its last packet after 1 s of
//! silence, giving up after 10 repeats. Prints time, aggregate MB/s and failures. Options are
//! only sent when BLKSIZE or WINDOWSIZE is given; a server that ignores one is followed.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use dialtone_tftp::packet::{Mode, Packet, Request, TftpOption};
use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token};

struct Client {
    socket: UdpSocket,
    peer: Option<SocketAddr>,
    blksize: usize,
    windowsize: u32,
    expected: u16,
    in_window: u32,
    bytes: u64,
    last_sent: Vec<u8>,
    last_activity: Instant,
    repeats: u32,
    done: Option<Result<(), String>>,
}

impl Client {
    fn send(&mut self, bytes: Vec<u8>, server: SocketAddr) {
        let _ = self.socket.send_to(&bytes, self.peer.unwrap_or(server));
        self.last_sent = bytes;
    }

    fn ack(&mut self, block: u16, server: SocketAddr) {
        let mut out = Vec::new();
        Packet::Ack { block }.emit(&mut out);
        self.send(out, server);
    }

    fn handle(&mut self, from: SocketAddr, bytes: &[u8], server: SocketAddr, now: Instant) {
        if self.done.is_some() {
            return;
        }
        if *self.peer.get_or_insert(from) != from {
            return;
        }
        self.last_activity = now;
        self.repeats = 0;
        match Packet::parse(bytes) {
            Ok(Packet::Oack(options)) => {
                for o in options {
                    match o.name.to_ascii_lowercase().as_str() {
                        "blksize" => self.blksize = o.value.parse().unwrap_or(512),
                        "windowsize" => self.windowsize = o.value.parse().unwrap_or(1),
                        _ => {}
                    }
                }
                self.ack(0, server);
            }
            Ok(Packet::Data { block, data }) => {
                if block != self.expected {
                    if self.in_window != 0 || self.windowsize > 1 {
                        self.ack(self.expected.wrapping_sub(1), server);
                    }
                    self.in_window = 0;
                    return;
                }
                self.bytes += data.len() as u64;
                self.expected = self.expected.wrapping_add(1);
                self.in_window += 1;
                if data.len() < self.blksize {
                    self.ack(block, server);
                    self.done = Some(Ok(()));
                } else if self.in_window >= self.windowsize {
                    self.ack(block, server);
                    self.in_window = 0;
                }
            }
            Ok(Packet::Error { code, message }) => self.done = Some(Err(format!("error {code}: {message}"))),
            _ => {}
        }
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: tftp-fleet SERVER FILE COUNT [BLKSIZE [WINDOWSIZE]]";
    let server: SocketAddr = args.first().context(usage)?.parse()?;
    let file = args.get(1).context(usage)?.clone();
    let count: usize = args.get(2).context(usage)?.parse()?;
    let mut options = Vec::new();
    if let Some(b) = args.get(3) {
        options.push(TftpOption { name: "blksize".into(), value: b.clone() });
    }
    if let Some(w) = args.get(4) {
        options.push(TftpOption { name: "windowsize".into(), value: w.clone() });
    }
    let mut request = Vec::new();
    Packet::Rrq(Request { filename: file, mode: Mode::Octet, options }).emit(&mut request);

    let mut poll = Poll::new()?;
    let start = Instant::now();
    let mut clients = Vec::with_capacity(count);
    for i in 0..count {
        let mut socket = UdpSocket::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)))?;
        poll.registry().register(&mut socket, Token(i), Interest::READABLE)?;
        let mut c = Client {
            socket,
            peer: None,
            blksize: 512,
            windowsize: 1,
            expected: 1,
            in_window: 0,
            bytes: 0,
            last_sent: Vec::new(),
            last_activity: start,
            repeats: 0,
            done: None,
        };
        c.send(request.clone(), server);
        clients.push(c);
    }
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 65536];
    let mut remaining = count;
    let mut last_sweep = Instant::now();
    while remaining > 0 {
        poll.poll(&mut events, Some(Duration::from_millis(100)))?;
        let now = Instant::now();
        for event in &events {
            let Some(c) = clients.get_mut(event.token().0) else { continue };
            while let Ok((len, from)) = c.socket.recv_from(&mut buf) {
                let was_done = c.done.is_some();
                c.handle(from, &buf[..len], server, now);
                if !was_done && c.done.is_some() {
                    remaining -= 1;
                }
            }
        }
        if now - last_sweep >= Duration::from_millis(100) {
            last_sweep = now;
            for c in clients.iter_mut().filter(|c| c.done.is_none()) {
                if now - c.last_activity >= Duration::from_secs(1) {
                    if c.repeats == 10 {
                        c.done = Some(Err("timed out".into()));
                        remaining -= 1;
                        continue;
                    }
                    c.repeats += 1;
                    c.last_activity = now;
                    let again = c.last_sent.clone();
                    c.send(again, server);
                }
            }
        }
    }
    let elapsed = start.elapsed();
    let bytes: u64 = clients.iter().map(|c| c.bytes).sum();
    let failures: Vec<&String> = clients.iter().filter_map(|c| c.done.as_ref()?.as_ref().err()).collect();
    println!(
        "clients={count} ok={} failed={} time={:.3}s bytes={} MB/s={:.1}",
        count - failures.len(),
        failures.len(),
        elapsed.as_secs_f64(),
        bytes,
        bytes as f64 / 1e6 / elapsed.as_secs_f64()
    );
    if let Some(first) = failures.first() {
        println!("first failure: {first}");
    }
    Ok(())
}
