//! The running gateway: opens the durable store once and starts every service the configuration
//! enables, in dependency order; stops them in reverse.
//!
//! Layer: top of the control plane, below the command line. Inputs: a validated
//! [`dialtone_config::Config`]. Outputs: running services and a handle that stops them. It must
//! never start half a gateway: any service that cannot start stops those already started and the
//! error says which one and why.
//!
//! The AF_XDP dataplane (`dialtone-xdp`, when `dataplane.enabled`) starts before DHCP: the
//! current leases are pushed to every worker first, then every lease event DHCP publishes reaches
//! every worker's control ring on the DHCP thread, right after the lease is durable.
#![forbid(unsafe_code)]

pub mod leases;
mod management;

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use dialtone_config::{Config, TokenSource};
use dialtone_dhcp::{LeaseChange, LeaseEvent};
use dialtone_http::{Limits, Server};
use dialtone_nappt::Update;
use dialtone_preprov::{RedbRegistry, Registry, Service, ServiceSettings};
use dialtone_store::{GroupCommitter, RedbStore, Store};
use dialtone_xdp::{Broadcast, Dataplane};

pub use leases::{LeaseEntry, LeaseFanout, LeaseSubscriber, LeaseTable};
pub use management::{Management, MetricSources};

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The store's directory or file could not be opened.
    #[error("opening the store {path}: {reason}")]
    Store {
        /// The database file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// A token file could not be read.
    #[error("reading the token file {path}: {reason}")]
    TokenFile {
        /// The file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// A listener could not be bound.
    #[error("{service}: binding {addr}: {source}")]
    Bind {
        /// Which service.
        service: &'static str,
        /// The address.
        addr: std::net::SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// A service failed to start.
    #[error("{service}: {reason}")]
    Service {
        /// Which service.
        service: &'static str,
        /// What failed.
        reason: String,
    },
}

/// Reads a bearer token, from the config or from its file (first line, trimmed).
pub fn read_token(source: &TokenSource) -> Result<String, StartError> {
    match source {
        TokenSource::Inline(t) => Ok(t.clone()),
        TokenSource::File(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| StartError::TokenFile { path: path.clone(), reason: e.to_string() })?;
            let token = text.lines().next().unwrap_or("").trim().to_owned();
            if token.len() < 16 {
                return Err(StartError::TokenFile {
                    path: path.clone(),
                    reason: "the token must be at least 16 characters".into(),
                });
            }
            Ok(token)
        }
    }
}

/// Opens the store file (creating its directory), shared by every service that keeps state.
pub fn open_database(config: &Config) -> Result<Arc<redb::Database>, StartError> {
    let path = &config.store.path;
    let fail = |reason: String| StartError::Store { path: path.clone(), reason };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
    }
    redb::Database::create(path).map(Arc::new).map_err(|e| fail(e.to_string()))
}

fn bind(service: &'static str, addr: std::net::SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr).map_err(|source| StartError::Bind { service, addr, source })
}

/// Everything running; dropping it (or [`Gateway::stop`]) stops the services in reverse order.
#[derive(Debug)]
pub struct Gateway {
    servers: Vec<(&'static str, Server)>,
    dhcp: Option<dialtone_dhcp::server::Server>,
    pruner: Option<dialtone_dhcp::server::HistoryPruner>,
    tftp: Option<dialtone_tftp::ServerHandle>,
    dataplane: Option<Dataplane>,
    leases: Arc<LeaseTable>,
}

fn service_error(service: &'static str) -> impl Fn(String) -> StartError {
    move |reason| StartError::Service { service, reason }
}

impl Gateway {
    /// Starts every enabled service of `config`.
    pub fn start(config: &Config) -> Result<Self, StartError> {
        let db = open_database(config)?;
        let shared_config = Arc::new(config.clone());
        let store: Arc<dyn Store> =
            Arc::new(RedbStore::from_database(Arc::clone(&db)).map_err(|e| service_error("store")(e.to_string()))?);
        let mut metrics = MetricSources::default();
        // The registry holds per-device parameters for TFTP's per-phone files as well.
        let registry: Option<Arc<dyn Registry>> =
            if config.preprov.enabled || config.provisioning.enabled || config.tftp.enabled {
                Some(Arc::new(
                    RedbRegistry::new(Arc::clone(&db)).map_err(|e| service_error("pre-provisioning")(e.to_string()))?,
                ))
            } else {
                None
            };
        // Current leases by address: seeded from the store, then kept by DHCP's lease events.
        let leases = Arc::new(LeaseTable::new(registry.clone()));
        leases.seed(config, &store.snapshot().map_err(|e| service_error("store")(e.to_string()))?);
        let mut gateway =
            Gateway { servers: Vec::new(), dhcp: None, pruner: None, tftp: None, dataplane: None, leases };

        // The dataplane (claims 001: 3-7, 18-22): started before DHCP so that no lease event
        // is missed; the leases already current reach every worker first.
        if config.dataplane.enabled {
            let dataplane = Dataplane::start(config, dialtone_xdp::Mode::Translate, None)
                .map_err(|e| service_error("dataplane")(e.to_string()))?;
            let control = dataplane.control();
            let current = gateway.leases.entries();
            for (_, entry) in &current {
                if let Ok(class) = u16::try_from(entry.class) {
                    control.update(Update::LeaseUp { class, offset: entry.offset, mac: entry.mac });
                }
            }
            tracing::info!(leases = current.len(), "dataplane has the current leases");
            metrics.dataplane = dataplane.stats();
            gateway.dataplane = Some(dataplane);
        }

        // DHCP: the engine resumes from the durable leases; ACKs leave only once their lease is
        // durable (group commit, claims 001: 10, 25, 40).
        if config.dhcp.enabled {
            let snapshot = store.snapshot().map_err(|e| service_error("dhcp")(e.to_string()))?;
            let engine = dialtone_dhcp::Engine::new(config.clone(), &snapshot, dialtone_dhcp::Limits::default());
            let committer = Arc::new(GroupCommitter::new(
                Arc::clone(&store),
                config.store.group_commit_wait,
                usize::try_from(config.store.group_commit_max).unwrap_or(1024),
            ));
            let transport = dialtone_dhcp::server::UdpTransport::bind(
                SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 67),
                Some(&config.lan.interface),
                Duration::from_millis(100),
            )
            .map_err(|e| service_error("dhcp")(format!("binding UDP 67 on {}: {e}", config.lan.interface)))?;
            // The fan-out point of lease changes: the lease table first, then subscribers.
            let mut fanout = LeaseFanout::new(Arc::clone(&gateway.leases));
            if let Some(dataplane) = &gateway.dataplane {
                let control = dataplane.control();
                let table = Arc::clone(&gateway.leases);
                fanout.subscribe(Box::new(DataplaneLeases { control, table }));
            }
            let leases = fanout.sink();
            let server = dialtone_dhcp::server::Server::spawn(
                engine,
                Arc::new(transport),
                Arc::clone(&committer),
                leases,
                dialtone_dhcp::server::system_clock(),
                config.dhcp.expiry_sweep,
            )
            .map_err(|e| service_error("dhcp")(e.to_string()))?;
            metrics.dhcp = Some(server.counters_handle());
            metrics.committer = Some(Arc::clone(&committer));
            gateway.dhcp = Some(server);
            gateway.pruner = Some(
                dialtone_dhcp::server::HistoryPruner::spawn(
                    Arc::clone(&store),
                    config.store.history_retention,
                    Duration::from_secs(3600),
                    dialtone_dhcp::server::system_clock(),
                )
                .map_err(|e| service_error("store")(e.to_string()))?,
            );
            tracing::info!(interface = %config.lan.interface, "dhcp server started");
        }

        if config.tftp.enabled {
            let tftp = start_tftp(config, Arc::clone(&gateway.leases) as Arc<dyn dialtone_tftp::ClientDirectory>)?;
            metrics.tftp = Some(tftp.1);
            gateway.tftp = Some(tftp.0);
        }

        if let (true, Some(registry)) = (config.preprov.enabled || config.provisioning.enabled, registry) {
            let admin_token = config.preprov.admin_token.as_ref().map(read_token).transpose()?;
            let service = Arc::new(Service::new(
                registry,
                ServiceSettings {
                    admin_token,
                    rate_per_source: config.preprov.rate_per_source,
                    burst_per_source: config.preprov.burst_per_source,
                    next_servers: config.provisioning.next_servers.clone(),
                    class_parameters: config.classes.iter().map(|c| (c.name.clone(), c.parameters.clone())).collect(),
                },
            ));
            metrics.preprov = Some(service.counters());
            let p = &config.preprov;
            let limits = Limits {
                threads: usize::try_from(p.threads).unwrap_or(4),
                max_connections: usize::try_from(p.max_connections).unwrap_or(10_000),
                read_timeout: p.read_timeout,
                idle_timeout: p.idle_timeout,
                max_header_bytes: usize::try_from(p.max_header_bytes).unwrap_or(8192),
                max_body_bytes: p.max_body_bytes,
            };
            if p.enabled {
                let tls = match &p.tls {
                    Some((cert, key)) => {
                        Some(dialtone_http::tls_config(cert, key).map_err(service_error("pre-provisioning"))?)
                    }
                    None => None,
                };
                let https = tls.is_some();
                let server = Server::start_with_tls(
                    "preprov",
                    bind("pre-provisioning", p.listen)?,
                    limits.clone(),
                    service.clone(),
                    tls,
                )
                .map_err(|e| service_error("pre-provisioning")(e.to_string()))?;
                tracing::info!(listen = %server.local_addr(), https, "pre-provisioning service started");
                gateway.servers.push(("pre-provisioning", server));
            }
            if config.provisioning.enabled {
                let server =
                    Server::start("provision", bind("provisioning", config.provisioning.listen)?, limits, service)
                        .map_err(|e| service_error("provisioning")(e.to_string()))?;
                tracing::info!(listen = %server.local_addr(), "provisioning entry point started");
                gateway.servers.push(("provisioning", server));
            }
        }
        let token = read_token(&config.management.token)?;
        let management = Management::new(token, shared_config, Arc::clone(&store), metrics);
        let server = Server::start(
            "manage",
            bind("management", config.management.listen)?,
            Limits { threads: 1, max_connections: 64, ..Limits::default() },
            Arc::new(management),
        )
        .map_err(|e| service_error("management")(e.to_string()))?;
        tracing::info!(listen = %server.local_addr(), "management api started");
        gateway.servers.push(("management", server));
        Ok(gateway)
    }

    /// The current leases (the table TFTP reads).
    pub fn leases(&self) -> &Arc<LeaseTable> {
        &self.leases
    }

    /// Stops every service, last started first.
    pub fn stop(mut self) {
        while let Some((name, server)) = self.servers.pop() {
            server.stop();
            tracing::info!(service = name, "stopped");
        }
        if let Some(tftp) = self.tftp.take() {
            tftp.shutdown();
            tracing::info!(service = "tftp", "stopped");
        }
        self.pruner.take();
        if let Some(dhcp) = self.dhcp.take() {
            dhcp.stop();
            tracing::info!(service = "dhcp", "stopped");
        }
        // Last: no lease event can arrive any more. Stops the workers and detaches XDP.
        if let Some(dataplane) = self.dataplane.take() {
            dataplane.stop();
            tracing::info!(service = "dataplane", "stopped");
        }
    }
}

/// The dataplane's subscription to lease changes: each event becomes the update every worker
/// gets, queued without waking the workers; the end of the burst wakes them once (a commit's
/// worth of ACKs is one wake-up per worker, not one per lease). Runs on the committing thread
/// after the lease table has applied the event; waits at most `FULL_RING_WAIT` per worker when a
/// control ring is full (see `dialtone_xdp::control`).
struct DataplaneLeases {
    control: Broadcast,
    table: Arc<LeaseTable>,
}

impl LeaseSubscriber for DataplaneLeases {
    fn event(&self, event: &LeaseEvent) {
        let Ok(class) = u16::try_from(event.class) else { return };
        let update = match event.change {
            LeaseChange::Granted | LeaseChange::Renewed => {
                Update::LeaseUp { class, offset: event.offset, mac: event.mac }
            }
            LeaseChange::Released | LeaseChange::Expired | LeaseChange::Declined => match self.table.get(event.address)
            {
                // A late end of an earlier holder's lease: the current holder keeps its entry.
                Some(current) if current.mac != event.mac => return,
                _ => Update::LeaseDown { class, offset: event.offset },
            },
        };
        self.control.push_update(update);
    }

    fn flush(&self) {
        self.control.wake_parked();
    }
}

/// Starts the TFTP server on `tftp.listen`. A class whose root is missing is logged and serves
/// only its virtual per-phone files: one class's missing directory must not keep every other
/// class's phones from their firmware.
fn start_tftp(
    config: &Config,
    directory: Arc<dyn dialtone_tftp::ClientDirectory>,
) -> Result<(dialtone_tftp::ServerHandle, Arc<dialtone_tftp::TftpMetrics>), StartError> {
    for class in &config.classes {
        if !class.tftp_root.is_dir() {
            tracing::warn!(
                class = %class.name,
                root = %class.tftp_root.display(),
                "tftp root missing: this class gets only its per-phone files until it exists and dialtone restarts"
            );
        }
    }
    let engine = Arc::new(dialtone_tftp::Engine::new(config.tftp.clone(), config.classes.clone(), directory));
    let metrics = Arc::new(dialtone_tftp::TftpMetrics::default());
    let handle = dialtone_tftp::spawn(engine, Arc::clone(&metrics)).map_err(|source| StartError::Bind {
        service: "tftp",
        addr: config.tftp.listen,
        source,
    })?;
    tracing::info!(listen = %handle.local_addr(), threads = handle.thread_count(), "tftp server started");
    Ok((handle, metrics))
}
