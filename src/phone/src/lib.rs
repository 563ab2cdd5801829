//! dialtone's phone side (claims 000: 13-24; the phone side of claims 001: 3-5, 10-14).
//!
//! Layer: device. Inputs: the phone's NVRAM, DHCP answers, HTTP answers of the pre-provisioning
//! server and provisioning entry points, TFTP transfers, echoes of the far end. Outputs: one log
//! line per step, the NVRAM file (written atomically), a configured interface. The protocol cores
//! ([`dhcp::Client`], [`tftp::Download`], [`provision`]) are sans-IO; [`agent::boot`] runs the
//! steps over a small [`agent::Link`] so `dialtone phone` and the fleet simulator share them.
//!
//! It must never panic on anything received from the network, and never run software whose size
//! or SHA-256 does not match what provisioning announced.
#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod agent;
pub mod dhcp;
pub mod link;
pub mod netlink;
pub mod nvram;
pub mod provision;
pub mod tftp;

pub use agent::{boot, Booted, DiscoveryPath, Link, Observer, Settings, Step, StepError};
pub use nvram::Nvram;
