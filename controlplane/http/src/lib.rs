//! dialtone's HTTP/1.1 server, shared by the management API, the pre-provisioning service and the
//! provisioning entry point.
//!
//! Layer: control-plane I/O shell. Inputs: a bound `TcpListener`, [`Limits`] and a [`Handler`].
//! Outputs: responses on the wire. It must never let one client hold more than its share: threads
//! are a fixed pool, connections are capped, every connection has a header deadline and an idle
//! deadline, request heads and bodies have size limits, and sockets get `TCP_NODELAY` so keep-alive
//! is not throttled by Nagle's algorithm against delayed ACKs.
//!
//! Handlers are plain blocking functions (`&Request -> Response`). Reads that finish in
//! microseconds run in place; handlers of mutating methods, which may wait for an fsync, run
//! through `block_in_place` so they never stall the other connections of their worker.
//!
//! Why hyper on a fixed-size tokio runtime rather than a thread per connection: thousands of slow
//! or idle clients must not cost thousands of threads (DESIGN.md: tiny_http spawns one thread per
//! connection without bound and has no read timeout). Here 2,000 held connections cost only a few
//! kilobytes each.
#![forbid(unsafe_code)]

mod io;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use tokio::sync::{oneshot, Semaphore};

pub use hyper::{HeaderMap, Method, StatusCode};

/// What the server allows each client.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Worker threads of the runtime (and most blocking handler calls at once).
    pub threads: usize,
    /// Most connections open at once; more are closed at accept.
    pub max_connections: usize,
    /// Deadline for receiving a request head once it has started.
    pub read_timeout: Duration,
    /// A connection with no bytes received for this long is closed.
    pub idle_timeout: Duration,
    /// Largest request head (at least 8 KiB: hyper's smallest read buffer).
    pub max_header_bytes: usize,
    /// Largest request body.
    pub max_body_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            threads: 2,
            max_connections: 1024,
            read_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            max_header_bytes: 8192,
            max_body_bytes: 1 << 20,
        }
    }
}

/// A request with its body fully received (within the limit).
#[derive(Debug)]
pub struct Request {
    /// Method.
    pub method: Method,
    /// Path, percent-encoding untouched.
    pub path: String,
    /// Query string without `?`, if any.
    pub query: Option<String>,
    /// Header map.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
    /// The client's address.
    pub peer: SocketAddr,
}

impl Request {
    /// Path segments after the leading `/` (`/v1/devices/x` -> `["v1", "devices", "x"]`).
    pub fn segments(&self) -> Vec<&str> {
        self.path.trim_start_matches('/').split('/').collect()
    }

    /// Query parameters (last one wins); values are percent-decoded.
    pub fn query_params(&self) -> HashMap<String, String> {
        self.query
            .as_deref()
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (percent_decode(k), percent_decode(v))
            })
            .collect()
    }

    /// The bearer token of the `Authorization` header, if present and well-formed.
    pub fn bearer_token(&self) -> Option<&str> {
        let value = self.headers.get(hyper::header::AUTHORIZATION)?.to_str().ok()?;
        let (scheme, token) = value.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
    }

    /// Does the client prefer `text/plain` over JSON (`Accept` header)?
    pub fn wants_text(&self) -> bool {
        self.headers
            .get(hyper::header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("text/plain") && !v.contains("application/json"))
    }
}

/// Percent-decodes `+`-free query text; invalid escapes are kept as written.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (bytes[i], bytes.get(i + 1..i + 3)) {
            (b'%', Some(hex)) => match std::str::from_utf8(hex).ok().and_then(|h| u8::from_str_radix(h, 16).ok()) {
                Some(b) => {
                    out.push(b);
                    i += 3;
                    continue;
                }
                None => out.push(b'%'),
            },
            (b, _) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A response.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: StatusCode,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// Body.
    pub body: Bytes,
    /// Extra headers.
    pub headers: Vec<(&'static str, String)>,
}

impl Response {
    /// A JSON body (already serialised).
    pub fn json(status: StatusCode, body: impl Into<Bytes>) -> Self {
        Self { status, content_type: "application/json", body: body.into(), headers: Vec::new() }
    }

    /// A plain-text body.
    pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Self {
        Self { status, content_type: "text/plain; charset=utf-8", body: body.into(), headers: Vec::new() }
    }

    /// A JSON error `{"error": "..."}`.
    pub fn error(status: StatusCode, message: &str) -> Self {
        Self::json(status, format!("{{\"error\":{}}}\n", json_string(message)))
    }

    /// 401 with the `WWW-Authenticate` challenge.
    pub fn unauthorized() -> Self {
        let mut r = Self::error(StatusCode::UNAUTHORIZED, "a valid bearer token is required");
        r.headers.push(("www-authenticate", "Bearer".to_owned()));
        r
    }
}

/// Quotes `text` as a JSON string.
pub fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Compares two secrets in time independent of where they first differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Loads a PEM certificate chain and private key into a TLS server configuration (HTTP/1.1 only,
/// TLS 1.2 and 1.3, ring as the crypto provider).
pub fn tls_config(cert_pem: &std::path::Path, key_pem: &std::path::Path) -> Result<Arc<rustls::ServerConfig>, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_pem)
        .map_err(|e| format!("{}: {e}", cert_pem.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", cert_pem.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in the file", cert_pem.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key_pem).map_err(|e| format!("{}: {e}", key_pem.display()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("certificate and key do not match or are unusable: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Serves requests.
pub trait Handler: Send + Sync + 'static {
    /// Answers one request. Runs on a runtime thread: no long waits except in mutating methods.
    fn handle(&self, request: &Request) -> Response;
}

impl<F> Handler for F
where
    F: Fn(&Request) -> Response + Send + Sync + 'static,
{
    fn handle(&self, request: &Request) -> Response {
        self(request)
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The listener could not be prepared.
    #[error("preparing the listener: {0}")]
    Listener(#[source] std::io::Error),
    /// The runtime could not be built.
    #[error("building the runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

/// A running server; dropping it stops it.
#[derive(Debug)]
pub struct Server {
    local_addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Starts serving `listener` with `handler` on a runtime of `limits.threads` threads.
    pub fn start(
        name: &str,
        listener: TcpListener,
        limits: Limits,
        handler: Arc<dyn Handler>,
    ) -> Result<Self, ServerError> {
        Self::start_with_tls(name, listener, limits, handler, None)
    }

    /// Like [`Server::start`], speaking HTTPS when `tls` is given (the handshake must finish within
    /// the read timeout).
    pub fn start_with_tls(
        name: &str,
        listener: TcpListener,
        limits: Limits,
        handler: Arc<dyn Handler>,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> Result<Self, ServerError> {
        listener.set_nonblocking(true).map_err(ServerError::Listener)?;
        let local_addr = listener.local_addr().map_err(ServerError::Listener)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(limits.threads.max(1))
            .max_blocking_threads(limits.threads.max(1))
            .thread_name(format!("{name}-http"))
            .enable_io()
            .enable_time()
            .build()
            .map_err(ServerError::Runtime)?;
        let (stop_tx, stop_rx) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name(format!("{name}-accept"))
            .spawn(move || runtime.block_on(accept_loop(listener, limits, handler, tls, stop_rx)))
            .map_err(ServerError::Runtime)?;
        Ok(Self { local_addr, stop: Some(stop_tx), thread: Some(thread) })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, closes connections and waits for the runtime to end.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown();
    }
}

async fn accept_loop(
    listener: TcpListener,
    limits: Limits,
    handler: Arc<dyn Handler>,
    tls: Option<Arc<rustls::ServerConfig>>,
    mut stop: oneshot::Receiver<()>,
) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "http listener cannot join the runtime");
            return;
        }
    };
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let limits = Arc::new(limits);
    loop {
        let accepted = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "http accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            // Over the connection cap: close at once; the client may retry.
            drop(stream);
            continue;
        };
        prepare_socket(&stream);
        let handler = Arc::clone(&handler);
        let limits = Arc::clone(&limits);
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let (io, activity) = io::Tracked::new(stream);
            match acceptor {
                None => serve_connection(io, activity, peer, &limits, handler).await,
                Some(acceptor) => match tokio::time::timeout(limits.read_timeout, acceptor.accept(io)).await {
                    Ok(Ok(tls_stream)) => serve_connection(tls_stream, activity, peer, &limits, handler).await,
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                },
            }
            drop(permit);
        });
    }
}

/// Per-connection socket options: `TCP_NODELAY`, so a response leaves as soon as it is written.
fn prepare_socket(stream: &tokio::net::TcpStream) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "TCP_NODELAY not set");
    }
}

async fn serve_connection<I>(
    io: I,
    activity: io::Activity,
    peer: SocketAddr,
    limits: &Arc<Limits>,
    handler: Arc<dyn Handler>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service_limits = Arc::clone(limits);
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let handler = Arc::clone(&handler);
        let limits = Arc::clone(&service_limits);
        async move { Ok::<_, std::convert::Infallible>(respond(req, peer, &limits, handler).await) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(true);
    let connection = builder.serve_connection(hyper_util::rt::TokioIo::new(io), service);
    tokio::pin!(connection);
    let idle = limits.idle_timeout;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "http connection ended with an error");
                }
                return;
            }
            _ = tokio::time::sleep(idle / 4) => {
                if activity.idle_for() >= idle {
                    // Let an in-flight response finish, then close.
                    connection.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

async fn respond(
    req: hyper::Request<Incoming>,
    peer: SocketAddr,
    limits: &Limits,
    handler: Arc<dyn Handler>,
) -> hyper::Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let declared = parts.headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limits.max_body_bytes) {
        return into_hyper(too_large(limits.max_body_bytes), true);
    }
    let limit = usize::try_from(limits.max_body_bytes).unwrap_or(usize::MAX);
    let body = match Limited::new(body, limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
            return into_hyper(too_large(limits.max_body_bytes), true);
        }
        Err(_) => {
            return into_hyper(Response::error(StatusCode::BAD_REQUEST, "the request body could not be read"), true)
        }
    };
    let request = Request {
        method: parts.method,
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        headers: parts.headers,
        body,
        peer,
    };
    let mutating = !matches!(request.method, Method::GET | Method::HEAD | Method::OPTIONS);
    let response =
        if mutating { tokio::task::block_in_place(|| handler.handle(&request)) } else { handler.handle(&request) };
    into_hyper(response, false)
}

fn too_large(max: u64) -> Response {
    Response::error(StatusCode::PAYLOAD_TOO_LARGE, &format!("the request body is larger than {max} bytes"))
}

fn into_hyper(response: Response, close: bool) -> hyper::Response<Full<Bytes>> {
    let mut out = hyper::Response::new(Full::new(response.body));
    *out.status_mut() = response.status;
    let headers = out.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(response.content_type));
    for (name, value) in response.headers {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
    if close {
        headers.insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
    }
    out
}

#[cfg(test)]
mod tests;

/// A one-shot blocking `GET` for the command line (`dialtone leases`, `dialtone whois`): returns
/// the status code and the body. `Connection: close`, so the body is everything after the head.
pub fn get(
    addr: SocketAddr,
    path_and_query: &str,
    token: Option<&str>,
    timeout: Duration,
) -> std::io::Result<(u16, String)> {
    request(&ClientRequest { method: "GET", addr, path_and_query, token, body: None, local: None }, timeout)
}

/// One blocking HTTP/1.1 request of [`request`].
#[derive(Debug, Clone, Copy)]
pub struct ClientRequest<'a> {
    /// `GET`, `PUT`, `POST`, `DELETE`.
    pub method: &'a str,
    /// Server.
    pub addr: SocketAddr,
    /// Path and query.
    pub path_and_query: &'a str,
    /// Bearer token.
    pub token: Option<&'a str>,
    /// Content type and body.
    pub body: Option<(&'a str, &'a [u8])>,
    /// Source address to connect from (a phone's leased address), else the kernel's choice.
    pub local: Option<std::net::IpAddr>,
}

/// Sends one request with `Connection: close` and returns the status code and the body (at most
/// 16 MiB). The phone agent and the fleet simulator use it with `local` set, so each phone's
/// inquiry leaves from its own address.
pub fn request(req: &ClientRequest<'_>, timeout: Duration) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = match req.local {
        None => std::net::TcpStream::connect_timeout(&req.addr, timeout)?,
        Some(local) => {
            let socket = socket2::Socket::new(socket2::Domain::for_address(req.addr), socket2::Type::STREAM, None)?;
            socket.bind(&SocketAddr::new(local, 0).into())?;
            socket.connect_timeout(&req.addr.into(), timeout)?;
            socket.into()
        }
    };
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.set_nodelay(true)?;
    let auth = req.token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let (content, body) = match req.body {
        Some((kind, bytes)) => (format!("Content-Type: {kind}\r\nContent-Length: {}\r\n", bytes.len()), bytes),
        None => (String::new(), &[][..]),
    };
    let head = format!(
        "{} {} HTTP/1.1\r\nHost: {}\r\n{auth}{content}Connection: close\r\n\r\n",
        req.method, req.path_and_query, req.addr
    );
    let mut message = head.into_bytes();
    message.extend_from_slice(body);
    stream.write_all(&message)?;
    let mut raw = Vec::new();
    stream.take(16 << 20).read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    Ok((status, body.to_owned()))
}
