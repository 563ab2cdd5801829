//! The server against raw TCP clients on loopback: limits, deadlines and keep-alive.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;

fn echo_server(limits: Limits) -> Server {
    echo_server_named("test", limits)
}

/// Threads of this process whose name starts with `prefix` (tests run side by side in one process).
fn threads_named(prefix: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.starts_with(prefix)))
                .count()
        })
        .unwrap_or(0)
}

fn echo_server_named(name: &str, limits: Limits) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let handler = |req: &Request| -> Response {
        match (req.method.clone(), req.segments().as_slice()) {
            (Method::GET, ["hello", name]) => Response::text(StatusCode::OK, format!("hello {name}\n")),
            (Method::POST, ["echo"]) => Response::text(StatusCode::OK, req.body.clone()),
            (Method::GET, ["auth"]) => match req.bearer_token() {
                Some(t) if constant_time_eq(t.as_bytes(), b"secret-token-123456") => {
                    Response::text(StatusCode::OK, "ok")
                }
                _ => Response::unauthorized(),
            },
            (Method::GET, ["query"]) => {
                let q = req.query_params();
                Response::text(StatusCode::OK, q.get("addr").cloned().unwrap_or_default())
            }
            _ => Response::error(StatusCode::NOT_FOUND, "no such resource"),
        }
    };
    Server::start(name, listener, limits, Arc::new(handler)).expect("server starts")
}

fn connect(server: &Server) -> TcpStream {
    let s = TcpStream::connect(server.local_addr()).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    s
}

/// Reads one response (head and a Content-Length body) from a keep-alive stream.
fn read_response(s: &mut TcpStream) -> (u16, String, String) {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => buf.push(byte[0]),
            _ => return (0, String::from_utf8_lossy(&buf).into_owned(), String::new()),
        }
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let len = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap_or(0))
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).expect("body");
    (status, head, String::from_utf8_lossy(&body).into_owned())
}

/// True when the server has closed the stream (EOF or reset) within `within`.
fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).expect("timeout");
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {
                return false
            }
            Err(_) => return true,
        }
    }
}

#[test]
fn keep_alive_serves_many_requests_on_one_connection() {
    let server = echo_server(Limits::default());
    let mut s = connect(&server);
    for i in 0..50 {
        write!(s, "GET /hello/n{i} HTTP/1.1\r\nHost: x\r\n\r\n").expect("write");
        let (status, _, body) = read_response(&mut s);
        assert_eq!((status, body.as_str()), (200, format!("hello n{i}\n").as_str()));
    }
}

#[test]
fn bearer_auth_and_query_decoding() {
    let server = echo_server(Limits::default());
    let mut s = connect(&server);
    s.write_all(b"GET /auth HTTP/1.1\r\nHost: x\r\n\r\n").expect("write");
    let (status, head, _) = read_response(&mut s);
    assert_eq!(status, 401);
    assert!(head.to_ascii_lowercase().contains("www-authenticate: bearer"), "{head}");
    s.write_all(b"GET /auth HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong\r\n\r\n").expect("write");
    assert_eq!(read_response(&mut s).0, 401);
    s.write_all(b"GET /auth HTTP/1.1\r\nHost: x\r\nAuthorization: bearer secret-token-123456\r\n\r\n").expect("write");
    assert_eq!(read_response(&mut s).0, 200);
    s.write_all(b"GET /query?addr=198.51.100.7%3A41022&at=x HTTP/1.1\r\nHost: x\r\n\r\n").expect("write");
    assert_eq!(read_response(&mut s).2, "198.51.100.7:41022");
}

#[test]
fn oversized_body_is_refused_with_413() {
    let server = echo_server(Limits { max_body_bytes: 1024, ..Limits::default() });
    let mut s = connect(&server);
    // Declared too large: refused before the body is read.
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10485760\r\n\r\n").expect("write");
    assert_eq!(read_response(&mut s).0, 413);
    // Chunked and too large: refused once the limit is crossed.
    let mut s = connect(&server);
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n").expect("write");
    let chunk = vec![b'a'; 600];
    for _ in 0..3 {
        let _ = write!(s, "{:x}\r\n", chunk.len());
        let _ = s.write_all(&chunk);
        let _ = s.write_all(b"\r\n");
    }
    let _ = s.write_all(b"0\r\n\r\n");
    assert_eq!(read_response(&mut s).0, 413);
    // Within the limit: echoed.
    let mut s = connect(&server);
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello").expect("write");
    assert_eq!(read_response(&mut s).2, "hello");
}

#[test]
fn oversized_head_is_refused() {
    let server = echo_server(Limits { max_header_bytes: 8192, ..Limits::default() });
    let mut s = connect(&server);
    let big = "a".repeat(20_000);
    let _ = write!(s, "GET /hello/x HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n");
    let (status, _, _) = read_response(&mut s);
    // hyper answers 431 or closes; either way the request is not served.
    assert!(status == 431 || status == 0, "status {status}");
}

#[test]
fn slow_head_is_cut_off_after_the_read_timeout() {
    let server = echo_server(Limits { read_timeout: Duration::from_millis(300), ..Limits::default() });
    let mut s = connect(&server);
    s.write_all(b"GET /hello/slow HTTP/1.1\r\nHost: x\r\n").expect("write");
    let start = Instant::now();
    assert!(closed_within(&mut s, Duration::from_secs(5)), "slow client still connected");
    assert!(start.elapsed() < Duration::from_secs(3), "closed only after {:?}", start.elapsed());
}

#[test]
fn idle_keep_alive_connection_is_closed() {
    let server = echo_server(Limits { idle_timeout: Duration::from_millis(400), ..Limits::default() });
    let mut s = connect(&server);
    s.write_all(b"GET /hello/a HTTP/1.1\r\nHost: x\r\n\r\n").expect("write");
    assert_eq!(read_response(&mut s).0, 200);
    let start = Instant::now();
    assert!(closed_within(&mut s, Duration::from_secs(5)), "idle connection kept open");
    assert!(start.elapsed() >= Duration::from_millis(300), "closed too early: {:?}", start.elapsed());
    // A connection that never sends anything is closed too.
    let mut silent = connect(&server);
    assert!(closed_within(&mut silent, Duration::from_secs(5)));
}

#[test]
fn connections_over_the_cap_are_closed_and_threads_stay_bounded() {
    let server = echo_server_named("capped", Limits { max_connections: 50, threads: 2, ..Limits::default() });
    let held: Vec<TcpStream> = (0..50).map(|_| connect(&server)).collect();
    // Let the server accept all of them.
    std::thread::sleep(Duration::from_millis(200));
    let mut extra = connect(&server);
    assert!(closed_within(&mut extra, Duration::from_secs(5)), "connection over the cap was kept");
    // Runtime workers + accept thread (+ at most the blocking pool), whatever the connection count.
    let threads = threads_named("capped-");
    assert!((1..=2 + 1 + 2).contains(&threads), "{threads} server threads for 50 connections");
    drop(held);
    // Freed slots are usable again.
    std::thread::sleep(Duration::from_millis(200));
    let mut s = connect(&server);
    s.write_all(b"GET /hello/again HTTP/1.1\r\nHost: x\r\n\r\n").expect("write");
    assert_eq!(read_response(&mut s).0, 200);
}

#[test]
fn accepted_sockets_get_nodelay() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_io().build().expect("runtime");
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let _client = TcpStream::connect(addr).expect("connect");
        let (stream, _) = listener.accept().await.expect("accept");
        assert!(!stream.nodelay().expect("read option"), "the kernel default is Nagle on");
        prepare_socket(&stream);
        assert!(stream.nodelay().expect("read option"));
    });
}

#[test]
fn json_strings_are_escaped() {
    assert_eq!(json_string("a\"b\\c\n\u{1}"), "\"a\\\"b\\\\c\\n\\u0001\"");
    assert!(constant_time_eq(b"abc", b"abc"));
    assert!(!constant_time_eq(b"abc", b"abd"));
    assert!(!constant_time_eq(b"abc", b"ab"));
}

#[test]
fn https_when_a_certificate_is_given() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("self-signed cert");
    let dir = std::env::temp_dir().join(format!("dialtone-http-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).expect("cert");
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).expect("key");
    let tls = tls_config(&cert_path, &key_path).expect("tls config");
    assert!(tls_config(&key_path, &key_path).is_err(), "a key is not a certificate");

    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let handler = |_: &Request| Response::text(StatusCode::OK, "secure\n");
    let server =
        Server::start_with_tls("tls", listener, Limits::default(), Arc::new(handler), Some(tls)).expect("start");

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).expect("root");
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let body = rt.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let tcp = tokio::net::TcpStream::connect(server.local_addr()).await.expect("connect");
        let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(client)).connect(name, tcp).await.expect("handshake");
        tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.expect("write");
        let mut out = Vec::new();
        let _ = tls.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out).into_owned()
    });
    assert!(body.starts_with("HTTP/1.1 200") && body.ends_with("secure\n"), "{body}");
    // Plain HTTP to the TLS port gets nothing served.
    let mut plain = connect(&server);
    plain.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").expect("write");
    assert_eq!(read_response(&mut plain).0, 0);
    let _ = std::fs::remove_dir_all(dir);
}
