//! dialtone TFTP server: operational software and per-phone files (claims 001: 12-14, 27-29,
//! 42-44).
//!
//! Layer: control plane. Inputs: datagrams on UDP 69 and on one ephemeral port per transfer, the
//! validated [`dialtone_config::Tftp`] settings and phone classes, and the lease table through
//! [`ClientDirectory`] (client address -> class, MAC, port block, device parameters). Outputs:
//! files from each class's root, virtual per-phone files rendered from the lease, TFTP errors
//! for everything refused, and [`TftpMetrics`] counters.
//!
//! It must never serve a byte from outside a class root, accept an upload outside the class's
//! `tftp.writable_dirs` (none by default), serve one phone's file to another address, panic on
//! anything from the network, or grow threads, sockets or memory without bound (`tftp.threads`
//! worker threads, `tftp.max_transfers` transfers).
//!
//! Structure (sans-IO core, thin shell, as in quinn-proto): [`packet`] is the codec, [`options`]
//! the RFC 2347/2348/2349/7440 negotiation, [`transfer`] one read transfer driven by
//! `handle_datagram` / `handle_timeout` / `poll_transmit` / `poll_timeout` with `now` passed in
//! ([`mod@write`] the same for uploads), [`engine`] turns a request into a transfer or a refusal,
//! [`content`] confines paths and renders per-phone files, and [`server`] is the only part with
//! sockets, threads and a clock.
#![forbid(unsafe_code)]

pub mod content;
pub mod engine;
pub mod metrics;
pub mod options;
pub mod packet;
pub mod server;
pub mod transfer;
pub mod write;

pub use content::{ClientDirectory, ClientInfo, Refusal};
pub use engine::{Disposition, Engine};
pub use metrics::TftpMetrics;
pub use server::{spawn, ServerHandle};
pub use transfer::{FailReason, Outcome, ReadTransfer, Transfer};
pub use write::WriteTransfer;
