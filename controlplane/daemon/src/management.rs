//! The operator's management API: leases, `whois`, metrics. Every route but `/health` needs the
//! bearer token of `[management]`.
//!
//! ```text
//! GET /v1/leases                               current leases with their public address and block
//! GET /v1/leases/{mac}                         one phone's leases
//! GET /v1/whois?addr=IP:PORT[&at=RFC3339]      who held that public address and port at that time
//! GET /v1/stats                                the dataplane's per-worker counters (JSON)
//! GET /metrics                                 Prometheus text
//! GET /health                                  "ok"
//! ```

use std::fmt::Write as _;
use std::net::SocketAddrV4;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use dialtone_config::{Config, MacAddr};
use dialtone_http::{constant_time_eq, json_string, Handler, Method, Request, Response, StatusCode};
use dialtone_store::{GroupCommitter, HistoryRecord, Lease, LeaseState, Store};

/// Sources of the counters `/metrics` shows.
#[derive(Default)]
pub struct MetricSources {
    /// DHCP engine dispositions.
    pub dhcp: Option<Arc<Mutex<dialtone_dhcp::Counters>>>,
    /// Group commits.
    pub committer: Option<Arc<GroupCommitter>>,
    /// Pre-provisioning service.
    pub preprov: Option<Arc<dialtone_preprov::Counters>>,
    /// TFTP server.
    pub tftp: Option<Arc<dialtone_tftp::TftpMetrics>>,
    /// AF_XDP dataplane workers.
    pub dataplane: Option<dialtone_xdp::StatsHandle>,
}

impl std::fmt::Debug for MetricSources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricSources").finish_non_exhaustive()
    }
}

/// The management API handler.
pub struct Management {
    token: String,
    config: Arc<Config>,
    store: Arc<dyn Store>,
    metrics: MetricSources,
}

impl std::fmt::Debug for Management {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Management").finish_non_exhaustive()
    }
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn rfc3339(secs: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + std::time::Duration::from_secs(secs)).to_string()
}

impl Management {
    /// A handler over the store and the configuration.
    pub fn new(token: String, config: Arc<Config>, store: Arc<dyn Store>, metrics: MetricSources) -> Self {
        Self { token, config, store, metrics }
    }

    fn lease_json(&self, lease: &Lease) -> String {
        let class = self.config.classes.iter().find(|c| c.name == lease.class);
        let address = class.and_then(|c| c.address_at(lease.offset)).map(|a| a.to_string()).unwrap_or_default();
        let block = class.and_then(|c| c.plan.port_block_for(lease.offset));
        let (public_ip, lo, hi) =
            block.map_or((String::new(), 0, 0), |b| (b.public_ip.to_string(), b.port_lo, b.port_hi));
        let state = match lease.state {
            LeaseState::Offered => "offered",
            LeaseState::Bound => "bound",
        };
        format!(
            "{{\"mac\":\"{}\",\"class\":{},\"address\":\"{address}\",\"public_ip\":\"{public_ip}\",\"port_lo\":{lo},\"port_hi\":{hi},\"state\":\"{state}\",\"start\":\"{}\",\"expiry\":\"{}\"}}",
            lease.mac,
            json_string(&lease.class),
            rfc3339(lease.start),
            rfc3339(lease.expiry)
        )
    }

    fn leases(&self, mac: Option<&str>) -> Response {
        let mac = match mac.map(str::parse::<MacAddr>) {
            Some(Ok(m)) => Some(m),
            Some(Err(e)) => return Response::error(StatusCode::BAD_REQUEST, &e.to_string()),
            None => None,
        };
        let result = match mac {
            Some(m) => self.store.leases_of(m),
            None => self.store.snapshot().map(|s| s.leases),
        };
        let mut leases = match result {
            Ok(l) => l,
            Err(e) => return Response::error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        };
        if mac.is_some() && leases.is_empty() {
            return Response::error(StatusCode::NOT_FOUND, "this MAC holds no lease");
        }
        leases.sort_by(|a, b| (&a.class, a.offset).cmp(&(&b.class, b.offset)));
        let items: Vec<String> = leases.iter().map(|l| self.lease_json(l)).collect();
        Response::json(StatusCode::OK, format!("{{\"leases\":[{}]}}\n", items.join(",")))
    }

    fn whois(&self, req: &Request) -> Response {
        let params = req.query_params();
        let Some(addr) = params.get("addr").and_then(|a| a.parse::<SocketAddrV4>().ok()) else {
            return Response::error(StatusCode::BAD_REQUEST, "give addr=PUBLIC_IP:PORT");
        };
        let at = match params.get("at") {
            None => now_secs(),
            Some(t) => match humantime::parse_rfc3339_weak(t) {
                Ok(time) => time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
                Err(e) => {
                    return Response::error(StatusCode::BAD_REQUEST, &format!("`at` is not an RFC 3339 time: {e}"))
                }
            },
        };
        let records: Vec<HistoryRecord> = match self.store.who_held(*addr.ip(), addr.port(), at) {
            Ok(r) => r,
            Err(e) => return Response::error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        };
        let items: Vec<String> = records
            .iter()
            .map(|h| {
                format!(
                    "{{\"mac\":\"{}\",\"class\":{},\"lan_address\":\"{}\",\"public_ip\":\"{}\",\"port_lo\":{},\"port_hi\":{},\"from\":\"{}\",\"to\":{}}}",
                    h.mac,
                    json_string(&h.class),
                    h.lan_address,
                    h.public_ip,
                    h.port_lo,
                    h.port_hi,
                    rfc3339(h.from),
                    h.to.map_or("null".to_owned(), |t| format!("\"{}\"", rfc3339(t)))
                )
            })
            .collect();
        let status = if items.is_empty() { StatusCode::NOT_FOUND } else { StatusCode::OK };
        Response::json(
            status,
            format!("{{\"addr\":\"{addr}\",\"at\":\"{}\",\"holders\":[{}]}}\n", rfc3339(at), items.join(",")),
        )
    }

    fn metrics(&self) -> Response {
        let mut out = String::new();
        if let Some(dhcp) = &self.metrics.dhcp {
            let _ = writeln!(out, "# TYPE dialtone_dhcp_messages_total counter");
            if let Some(counters) = dhcp.lock().ok().map(|c| c.clone()) {
                for (name, value) in counters.iter() {
                    let _ = writeln!(out, "dialtone_dhcp_messages_total{{disposition=\"{name}\"}} {value}");
                }
            }
        }
        if let Some(committer) = &self.metrics.committer {
            let stats = committer.stats();
            let _ = writeln!(out, "# TYPE dialtone_store_commits_total counter");
            let _ = writeln!(out, "dialtone_store_commits_total {}", stats.commits);
            let _ = writeln!(out, "# TYPE dialtone_store_commit_batches_total counter");
            let _ = writeln!(out, "dialtone_store_commit_batches_total {}", stats.batches);
            let _ = writeln!(out, "# TYPE dialtone_store_commit_failures_total counter");
            let _ = writeln!(out, "dialtone_store_commit_failures_total {}", stats.failures);
        }
        if let Some(preprov) = &self.metrics.preprov {
            out.push_str(&preprov.render());
        }
        if let Some(tftp) = &self.metrics.tftp {
            let mut last = "";
            for (name, label, value) in tftp.samples() {
                write_sample(&mut out, &mut last, name, None, label, value);
            }
        }
        if let Some(dataplane) = &self.metrics.dataplane {
            render_dataplane(&mut out, dataplane);
        }
        let mut r = Response::text(StatusCode::OK, out);
        r.content_type = "text/plain; version=0.0.4; charset=utf-8";
        r
    }

    fn stats(&self) -> Response {
        let Some(dataplane) = &self.metrics.dataplane else {
            return Response::error(StatusCode::NOT_FOUND, "the dataplane is not running (dataplane.enabled = false)");
        };
        let workers: Vec<String> = dataplane
            .workers()
            .iter()
            .map(|w| {
                let counters: Vec<String> = w
                    .stats
                    .samples()
                    .iter()
                    .map(|(name, label, value)| format!("\"{}\":{value}", stats_key(name, *label)))
                    .collect();
                format!("{{\"worker\":{},\"cpu\":{},{}}}", w.worker, w.cpu, counters.join(","))
            })
            .collect();
        let xdp = dataplane.xdp().map_or("null".to_owned(), |v| {
            format!(
                "{{\"lan_pass\":{},\"lan_redirect\":{},\"wan_pass\":{},\"wan_redirect\":{}}}",
                v.lan_pass, v.lan_redirect, v.wan_pass, v.wan_redirect
            )
        });
        Response::json(
            StatusCode::OK,
            format!(
                "{{\"xdp_mode\":\"{}\",\"binding\":\"{}\",\"xdp\":{xdp},\"workers\":[{}]}}\n",
                dataplane.attachment().name(),
                dataplane.binding().name(),
                workers.join(",")
            ),
        )
    }
}

/// `dialtone_dataplane_rx_frames_total` + `side=lan` -> `rx_frames_lan`.
fn stats_key(name: &str, label: Option<(&str, &str)>) -> String {
    let short = name.trim_start_matches("dialtone_dataplane_").trim_end_matches("_total");
    match label {
        Some((_, value)) => format!("{short}_{value}"),
        None => short.to_owned(),
    }
}

/// Every worker's counters (label `worker="i"`) and the XDP program's verdicts.
/// One Prometheus sample line, preceded by its `# TYPE` line when `name` starts a new family
/// (`last` is the family written before; a `_total` name is a counter, any other a gauge).
fn write_sample(
    out: &mut String,
    last: &mut &'static str,
    name: &'static str,
    worker: Option<usize>,
    label: Option<(&str, &str)>,
    value: u64,
) {
    if name != *last {
        let kind = if name.ends_with("_total") { "counter" } else { "gauge" };
        let _ = writeln!(out, "# TYPE {name} {kind}");
        *last = name;
    }
    let labels = match (worker, label) {
        (Some(w), Some((key, val))) => format!("{{worker=\"{w}\",{key}=\"{val}\"}}"),
        (Some(w), None) => format!("{{worker=\"{w}\"}}"),
        (None, Some((key, val))) => format!("{{{key}=\"{val}\"}}"),
        (None, None) => String::new(),
    };
    let _ = writeln!(out, "{name}{labels} {value}");
}

fn render_dataplane(out: &mut String, dataplane: &dialtone_xdp::StatsHandle) {
    let workers = dataplane.workers();
    let mut samples: Vec<(usize, dialtone_xdp::stats::Sample)> = Vec::new();
    for w in &workers {
        samples.extend(w.stats.samples().into_iter().map(|sample| (w.worker, sample)));
    }
    // Stable: each metric's lines stay in worker order.
    samples.sort_by_key(|(_, sample)| sample.0);
    let mut last = "";
    for (worker, (name, label, value)) in samples {
        write_sample(out, &mut last, name, Some(worker), label, value);
    }
    if let Some(v) = dataplane.xdp() {
        let _ = writeln!(out, "# TYPE dialtone_xdp_frames_total counter");
        for (side, action, value) in [
            ("lan", "pass", v.lan_pass),
            ("lan", "redirect", v.lan_redirect),
            ("wan", "pass", v.wan_pass),
            ("wan", "redirect", v.wan_redirect),
        ] {
            let _ = writeln!(out, "dialtone_xdp_frames_total{{side=\"{side}\",action=\"{action}\"}} {value}");
        }
    }
}

impl Handler for Management {
    fn handle(&self, req: &Request) -> Response {
        let segments = req.segments();
        if req.method == Method::GET && segments == ["health"] {
            return Response::text(StatusCode::OK, "ok\n");
        }
        if !req.bearer_token().is_some_and(|t| constant_time_eq(t.as_bytes(), self.token.as_bytes())) {
            return Response::unauthorized();
        }
        match (&req.method, segments.as_slice()) {
            (&Method::GET, ["v1", "leases"]) => self.leases(None),
            (&Method::GET, ["v1", "leases", mac]) => self.leases(Some(mac)),
            (&Method::GET, ["v1", "whois"]) => self.whois(req),
            (&Method::GET, ["v1", "stats"]) => self.stats(),
            (&Method::GET, ["metrics"]) => self.metrics(),
            _ => Response::error(StatusCode::NOT_FOUND, "no such resource"),
        }
    }
}
