//! Clients that try to take the server down or walk around its bounds:
//! silent and half-open connections, clients that stop reading, one client
//! taking every permit, spoofed forwarded addresses, path spellings that
//! dodge auth, a second server on the same address, HTTP/2 rapid reset and
//! CONTINUATION floods.

use crate::harness::*;
use bytes::Bytes;
use http_body_util::Full;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SECOND: Duration = Duration::from_secs(1);

/// 16 connections at most, a 2 s header deadline, a 2 s keep-alive.
fn tight(extra: &str) -> String {
    format!(
        r#"
[server]
key_value = "memory"
max_connections = 16
max_connections_per_client = 16
header_read_timeout_secs = 2
keepalive_timeout_secs = 2
{extra}

[[route]]
path = "/hello"
component = "hello"

[[route]]
path = "/echo"
component = "echo"

[component.hello]
source = "{{components}}/hello.wasm"

[component.echo]
source = "{{components}}/echo.wasm"
"#
    )
}

/// When the server closed `stream` (EOF or error).
async fn closed_at(mut stream: TcpStream) -> Instant {
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(30 * SECOND, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Instant::now(),
            Ok(Ok(_)) => continue,
            Err(_) => panic!("a connection was still open after 30 s"),
        }
    }
}

/// The 2 s deadline of [`tight`], as the server's timer sees it: a
/// connection is closed no sooner than this after the moment its deadline
/// counts from (the accept follows the connect, so a little is allowed)...
const NOT_BEFORE: Duration = Duration::from_millis(2000 - 50);
/// ...and no later than this, with a margin for a loaded machine.
const NOT_AFTER: Duration = Duration::from_secs(4);

/// Opens 16 connections that each do `misbehave` (taking every connection
/// slot); checks that each is closed by its 2 s deadline and not before
/// it (counted from when `misbehave` is done), and that the watchdog
/// counted 16 closes for `reason`.
async fn sixteen_are_closed_in_time<F, Fut>(server: &TestServer, reason: &'static str, misbehave: F)
where
    F: Fn(TcpStream) -> Fut,
    Fut: std::future::Future<Output = TcpStream>,
{
    let metrics = &server.app.telemetry.metrics;
    let before = metrics.connections_timed_out(reason);
    let mut closes = Vec::new();
    for _ in 0..16 {
        let stream = misbehave(TcpStream::connect(server.addr).await.unwrap()).await;
        let from = Instant::now();
        closes.push(async move { closed_at(stream).await - from });
    }
    for took in futures::future::join_all(closes).await {
        assert!(took >= NOT_BEFORE, "closed after {took:?}, before its 2 s deadline");
        assert!(took < NOT_AFTER, "closed after {took:?} against a 2 s deadline");
    }
    eventually("16 closes counted", 5 * SECOND, || metrics.connections_timed_out(reason) - before == 16)
        .await;
}

/// A normal plain-HTTP client is served (retrying while the slots of the
/// closed connections come free).
async fn a_normal_client_is_served(server: &TestServer) {
    let deadline = Instant::now() + 10 * SECOND;
    while !raw_get_to_end(server, "/hello").await.starts_with("HTTP/1.1 200") {
        assert!(Instant::now() < deadline, "a normal client was not served afterwards");
    }
}

#[tokio::test]
async fn silent_connections_are_closed_at_the_header_deadline() {
    let (server, _dir) = TestServer::start(&tight("")).await;
    sixteen_are_closed_in_time(&server, "header_timeout", |stream| async { stream }).await;
    a_normal_client_is_served(&server).await;
    server.stop().await;
}

#[tokio::test]
async fn half_an_http2_preface_is_closed_at_the_header_deadline() {
    let (server, _dir) = TestServer::start(&tight("")).await;
    sixteen_are_closed_in_time(&server, "header_timeout", |mut stream| async {
        stream.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
        stream
    })
    .await;
    a_normal_client_is_served(&server).await;
    server.stop().await;
}

/// The HTTP/2 preface and an empty SETTINGS frame: a connection that never
/// opens a stream.
const H2_PREFACE_AND_SETTINGS: &[u8] =
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

#[tokio::test]
async fn idle_http2_connections_are_closed() {
    let (server, _dir) = TestServer::start(&tight("")).await;
    sixteen_are_closed_in_time(&server, "header_timeout", |mut stream| async {
        stream.write_all(H2_PREFACE_AND_SETTINGS).await.unwrap();
        stream
    })
    .await;
    a_normal_client_is_served(&server).await;
    server.stop().await;
}

#[tokio::test]
async fn idle_http1_keep_alive_connections_are_closed_at_the_keepalive_timeout() {
    let (server, _dir) = TestServer::start(&tight("")).await;
    sixteen_are_closed_in_time(&server, "keepalive_timeout", |mut stream| async {
        stream.write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 1024];
        while !String::from_utf8_lossy(&seen).contains("Hello, world!") {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0);
            seen.extend_from_slice(&buf[..n]);
        }
        stream
    })
    .await;
    a_normal_client_is_served(&server).await;
    server.stop().await;
}

#[tokio::test]
async fn the_keepalive_timeout_is_its_own_setting() {
    // A long keep-alive and a short header deadline: an idle connection
    // outlives the header deadline...
    let (server, _dir) =
        TestServer::start(&tight("").replace("keepalive_timeout_secs = 2", "keepalive_timeout_secs = 30"))
            .await;
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    idle.write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 4096];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let still_open = tokio::time::timeout(4 * SECOND, idle.read(&mut buf)).await;
    assert!(still_open.is_err(), "closed before its keep-alive timeout");
    // ...and is still served; but a next request head that trickles in is
    // held to the header deadline.
    idle.write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let n = idle.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    idle.write_all(b"GET /hello HTTP/1.1\r\n").await.unwrap();
    let started = Instant::now();
    let closed =
        tokio::time::timeout(10 * SECOND, idle.read(&mut buf)).await.expect("a slow head was never cut off");
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
    let took = started.elapsed();
    assert!(took >= NOT_BEFORE && took < NOT_AFTER, "cut off after {took:?} against a 2 s header deadline");
    let metrics = &server.app.telemetry.metrics;
    eventually("the cut counted", 5 * SECOND, || metrics.connections_timed_out("header_timeout") == 1).await;
    assert_eq!(metrics.connections_timed_out("keepalive_timeout"), 0);
    server.stop().await;
}

fn tls_files(dir: &std::path::Path) -> rustls::RootCertStore {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(dir.join("cert.pem"), certified.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), certified.signing_key.serialize_pem()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(certified.cert.der().clone()).unwrap();
    roots
}

fn tls_connector(roots: &rustls::RootCertStore, alpn: &[u8]) -> tokio_rustls::TlsConnector {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// A GET over HTTPS with `Connection: close`: the raw response, or `""`.
async fn https_get(server: &TestServer, roots: &rustls::RootCertStore, path: &str) -> String {
    let Ok(tcp) = TcpStream::connect(server.addr).await else { return String::new() };
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let Ok(mut tls) = tls_connector(roots, b"http/1.1").connect(name, tcp).await else {
        return String::new();
    };
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    if tls.write_all(request.as_bytes()).await.is_err() {
        return String::new();
    }
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(10 * SECOND, tls.read_to_end(&mut reply)).await;
    String::from_utf8_lossy(&reply).into_owned()
}

#[tokio::test]
async fn stalled_tls_handshakes_are_closed_at_the_header_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let roots = tls_files(dir.path());
    let server =
        TestServer::start_in(dir.path(), &tight("tls = { cert = \"cert.pem\", key = \"key.pem\" }")).await;
    // The first bytes of a ClientHello, and then nothing.
    sixteen_are_closed_in_time(&server, "header_timeout", |mut stream| async {
        stream.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).await.unwrap();
        stream
    })
    .await;
    let deadline = Instant::now() + 10 * SECOND;
    while !https_get(&server, &roots, "/hello").await.starts_with("HTTP/1.1 200") {
        assert!(Instant::now() < deadline, "a normal client was not served afterwards");
    }
    server.stop().await;
}

#[tokio::test]
async fn quiet_tls_connections_are_closed_at_the_header_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let roots = tls_files(dir.path());
    let server =
        TestServer::start_in(dir.path(), &tight("tls = { cert = \"cert.pem\", key = \"key.pem\" }")).await;
    let connector = tls_connector(&roots, b"http/1.1");
    let metrics = &server.app.telemetry.metrics;
    let mut waits = Vec::new();
    for _ in 0..16 {
        let connected = Instant::now();
        let tcp = TcpStream::connect(server.addr).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let mut stream = connector.connect(name, tcp).await.expect("TLS handshake");
        waits.push(async move {
            let mut buf = [0u8; 64];
            let read = tokio::time::timeout(30 * SECOND, stream.read(&mut buf)).await;
            assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "still open: {read:?}");
            connected.elapsed()
        });
    }
    // The deadline counts from accept, the handshake included.
    for took in futures::future::join_all(waits).await {
        assert!(took >= NOT_BEFORE && took < NOT_AFTER, "closed after {took:?} against a 2 s deadline");
    }
    eventually("16 closes counted", 5 * SECOND, || metrics.connections_timed_out("header_timeout") == 16)
        .await;
    server.stop().await;
}

#[tokio::test]
async fn an_http2_connection_idle_after_its_requests_gets_goaway() {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let (server, _dir) = TestServer::start(&tight("")).await;
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await.unwrap();
    let connection = tokio::spawn(connection);
    let request = http::Request::get(format!("http://{}/hello", server.addr))
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    assert_eq!(sender.send_request(request).await.unwrap().status(), 200);
    let started = Instant::now();
    let ended =
        tokio::time::timeout(30 * SECOND, connection).await.expect("the idle connection was never closed");
    assert!(ended.unwrap().is_ok(), "closed with GOAWAY, cleanly");
    let took = started.elapsed();
    assert!(took >= NOT_BEFORE && took < NOT_AFTER, "closed after {took:?} against a 2 s keep-alive");
    let metrics = &server.app.telemetry.metrics;
    eventually("the GOAWAY counted", 5 * SECOND, || metrics.connections_timed_out("keepalive_timeout") == 1)
        .await;
    server.stop().await;
}

const STREAM_APP: &str = r#"
[server]
key_value = "memory"
{server}

[[route]]
path = "/stream"
component = "stream"
timeout_secs = 4
max_duration_secs = 4

[[route]]
path = "/long-stream"
component = "stream"

[[route]]
path = "/hello"
component = "hello"

[component.stream]
source = "{components}/stream.wasm"

[component.hello]
source = "{components}/hello.wasm"
"#;

/// A connection with a 4 KiB receive buffer that asks for `path` and then
/// never reads.
async fn non_reading_client(server: &TestServer, path: &str) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(server.addr).await.unwrap();
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await.unwrap();
    stream
}

#[tokio::test]
async fn a_client_that_stops_reading_loses_its_instance_at_the_max_duration() {
    let (server, _dir) = TestServer::start(&STREAM_APP.replace("{server}", "")).await;
    let started = Instant::now();
    let _stuck = non_reading_client(&server, "/stream?n=10000000&interval_ms=0").await;
    eventually("the instance started", 5 * SECOND, || live(&server) == 1).await;
    eventually("instance gone and slots free", 10 * SECOND, || live(&server) == 0 && in_flight(&server) == 0)
        .await;
    let took = started.elapsed();
    assert!(took >= 4 * SECOND, "ended before its max duration: {took:?}");
    assert!(took < 5 * SECOND + SECOND, "instance lived {took:?} against a 4 s maximum");
    assert_eq!(server.app.telemetry.metrics.instances_killed("max_duration", "streaming"), 1);
    server.stop().await;
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_off_at_the_send_timeout() {
    let (server, _dir) = TestServer::start(&STREAM_APP.replace("{server}", "send_timeout_secs = 2")).await;
    let stuck = non_reading_client(&server, "/long-stream?n=10000000&interval_ms=0").await;
    eventually("the instance started", 5 * SECOND, || live(&server) == 1).await;
    eventually("instance gone and slots free", 10 * SECOND, || live(&server) == 0 && in_flight(&server) == 0)
        .await;
    let line = server.access_line("the stream's line", |l| l["path"] == "/long-stream").await;
    assert_eq!(line["outcome"], "timed_out", "{line}");
    assert_eq!(line["reason"], "connection ended by its send_timeout", "{line}");
    let metrics = &server.app.telemetry.metrics;
    eventually("the send timeout counted", 5 * SECOND, || metrics.connections_timed_out("send_timeout") == 1)
        .await;
    drop(stuck);
    assert_eq!(get(&http1_client(), &server.url("/hello")).await.status, 200);
    server.stop().await;
}

const SHARES_APP: &str = r#"
[server]
key_value = "memory"
max_concurrent_requests = 32

[[route]]
path = "/hold"
component = "hold"

[[route]]
path = "/hello"
component = "hello"

[component.hold]
source = "{components}/hold.wasm"
key_value_stores = ["default"]

[component.hello]
source = "{components}/hello.wasm"
"#;

#[tokio::test]
async fn one_client_with_forty_connections_cannot_shut_out_another() {
    let (server, _dir) = TestServer::start(SHARES_APP).await;
    let mut greedy = Vec::new();
    for _ in 0..40 {
        greedy.push(raw_get(&server, "/hold?wait=never").await);
    }
    // Its half of the 32 permits: the rest of its requests are refused.
    eventually("the greedy client holds its share", 10 * SECOND, || live(&server) == 16).await;
    let other = http1_client_from("127.0.0.2".parse().unwrap());
    for _ in 0..5 {
        assert_eq!(get(&other, &server.url("/hello")).await.status, 200);
    }
    let metrics = get(&other, &server.admin_url("/metrics")).await.body;
    assert!(metrics.contains(r#"wharf_rejections_total{reason="client_overloaded"} 24"#), "{metrics}");
    drop(greedy);
    server.stop().await;
}

#[tokio::test]
async fn one_http2_connection_with_forty_streams_cannot_shut_out_another() {
    let (server, _dir) = TestServer::start(SHARES_APP).await;
    let greedy = http2_client();
    let streams: Vec<_> = (0..40)
        .map(|_| {
            let (client, url) = (greedy.clone(), server.url("/hold?wait=never"));
            tokio::spawn(async move { get(&client, &url).await.status })
        })
        .collect();
    eventually("the greedy client holds its share", 10 * SECOND, || live(&server) == 16).await;
    let other = http1_client_from("127.0.0.2".parse().unwrap());
    for _ in 0..5 {
        assert_eq!(get(&other, &server.url("/hello")).await.status, 200);
    }
    for stream in streams {
        stream.abort();
    }
    server.stop().await;
}

#[tokio::test]
async fn forwarded_addresses_are_believed_only_from_trusted_proxies() {
    let manifest =
        tight("trusted_proxies = [\"127.0.0.2/32\"]\nclient_rate_limit = { requests = 5, window_secs = 60 }")
            .replace("max_connections = 16\nmax_connections_per_client = 16", "");
    let (server, _dir) = TestServer::start(&manifest).await;
    let forwarded = |client: &HttpClient, xff: String| {
        let request = http::Request::get(server.url("/hello"))
            .header("x-forwarded-for", xff)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let client = client.clone();
        async move { send(&client, request).await.status }
    };
    // A direct client rotating X-Forwarded-For is still one client.
    let direct = http1_client();
    let mut statuses = Vec::new();
    for i in 0..8 {
        statuses.push(forwarded(&direct, format!("10.9.9.{i}")).await);
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429, 429]);
    // Through the trusted proxy, each forwarded client has its own bucket.
    let proxy = http1_client_from("127.0.0.2".parse().unwrap());
    for i in 0..8 {
        assert_eq!(forwarded(&proxy, format!("6.6.6.6, 10.8.8.{i}")).await, 200, "client {i}");
    }
    // Garbage appended by a proxy ends the walk: the client cannot pick
    // the address to its left.
    let line_for = |xff: &'static str| {
        let proxy = proxy.clone();
        let request = http::Request::get(server.url(&format!("/echo?xff={}", xff.len())))
            .header("x-forwarded-for", xff)
            .body(Full::new(Bytes::new()))
            .unwrap();
        async move { send(&proxy, request).await }
    };
    let reply = line_for("7.7.7.7, 10.1.1.1:5555").await;
    assert_eq!(reply.status, 200);
    let reply = line_for("5.5.5.5, bogus").await;
    let id = reply.headers["x-request-id"].to_str().unwrap().to_string();
    let line = server.access_line("the garbage request", |l| l["request_id"] == id.as_str()).await;
    assert_eq!(line["client"], "127.0.0.2", "{line}");
    let lines = server.access_lines();
    assert!(lines.iter().any(|l| l["client"] == "10.1.1.1"), "ip:port is an address, not garbage");
    assert!(!lines.iter().any(|l| l["client"] == "5.5.5.5" || l["client"] == "7.7.7.7"));
    server.stop().await;
}

const PROTECTED_APP: &str = r#"
[server]
key_value = "memory"

[[route]]
path = "/admin/..."
component = "echo"
auth = { bearer_token_file = "token" }

[[route]]
path = "/..."
component = "echo"

[component.echo]
source = "{components}/echo.wasm"
"#;

async fn raw_status(server: &TestServer, path: &str, token: Option<&str>) -> (u16, String) {
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let request = format!("GET {path}?inspect HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).await.unwrap();
    let reply = String::from_utf8_lossy(&reply).into_owned();
    let status = reply.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, reply)
}

#[tokio::test]
async fn every_spelling_of_a_protected_path_needs_the_token() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), "t0ken").unwrap();
    let server = TestServer::start_in(dir.path(), PROTECTED_APP).await;
    for path in [
        "/admin/secret",
        "//admin/secret",
        "/x/../admin/secret",
        "/%61dmin/secret",
        "/./admin//secret",
        "/%2e%2e/admin/secret",
    ] {
        let (status, reply) = raw_status(&server, path, None).await;
        assert_eq!(status, 401, "{path} reached a component without the token: {reply}");
        let (status, reply) = raw_status(&server, path, Some("t0ken")).await;
        assert_eq!(status, 200, "{path}: {reply}");
        assert!(
            reply.contains(r#""path_with_query":"/admin/secret?inspect""#),
            "{path}: the guest sees {reply}"
        );
    }
    for path in ["/admin%2Fsecret", "/admin%5csecret", "/admin\\secret", "/admin%00", "/adm%FFin"] {
        let (status, reply) = raw_status(&server, path, Some("t0ken")).await;
        assert_eq!(status, 400, "{path}: {reply}");
    }
    // Matching stays case-sensitive: /Admin is another path.
    assert_eq!(raw_status(&server, "/Admin/secret", None).await.0, 200);
    server.stop().await;
}

#[tokio::test]
async fn a_second_server_on_a_busy_address_refuses_to_start() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let manifest = "[[route]]\npath = \"/hello\"\ncomponent = \"hello\"\n\n[component.hello]\nsource = \"{components}/hello.wasm\"\n"
        .replace("{components}", &component_dir().display().to_string());
    std::fs::write(dir.path().join("wharf.toml"), manifest).unwrap();
    let output = std::process::Command::new(wharf_binary())
        .args(["up", "--kv", "memory", "--admin-listen", "off", "--listen", &addr.to_string(), "--manifest"])
        .arg(dir.path().join("wharf.toml"))
        .output()
        .unwrap();
    assert!(!output.status.success(), "a second server started on {addr}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("cannot listen on {addr}: something is already listening there")),
        "{stderr}"
    );
    drop(busy);
}

#[tokio::test]
async fn a_flood_of_refused_connections_is_summarised_in_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = SHARES_APP
        .replace("max_concurrent_requests = 32", "max_connections = 1\nmax_connections_per_client = 1");
    let mut wharf = WharfProcess::start(dir.path(), &manifest);
    // One keep-alive connection, surely accepted: it has been served.
    let mut held = TcpStream::connect(wharf.addr).await.unwrap();
    held.write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 1024];
    assert!(held.read(&mut buf).await.unwrap() > 0);
    let client = http1_client();
    for _ in 0..300 {
        if let Ok(mut stream) = TcpStream::connect(wharf.addr).await {
            let _ = stream.read(&mut [0u8; 16]).await;
        }
    }
    let metrics = get(&client, &format!("http://{}/metrics", wharf.admin)).await.body;
    assert!(
        metrics.contains(r#"wharf_connections_refused_total{reason="max_connections_per_client"} 300"#),
        "{metrics}"
    );
    drop(held);
    wharf.signal("TERM");
    assert!(wharf.wait().await.success());
    let lines: Vec<_> = wharf
        .logs
        .iter()
        .filter(|l| l["message"].as_str().is_some_and(|m| m.starts_with("connections refused")))
        .collect();
    assert!(!lines.is_empty() && lines.len() < 20, "{} refusal lines for 300 refusals", lines.len());
    let counted: u64 = lines.iter().map(|l| l["max_connections_per_client"].as_u64().unwrap()).sum();
    assert_eq!(counted, 300, "every refusal is in some line: {lines:?}");
}

#[tokio::test]
async fn self_requests_work_under_tls_and_guests_see_https() {
    let dir = tempfile::tempdir().unwrap();
    let roots = tls_files(dir.path());
    let manifest = r#"
[server]
key_value = "memory"
tls = { cert = "cert.pem", key = "key.pem" }

[[route]]
path = "/aggregate"
component = "aggregate"

[[route]]
path = "/echo"
component = "echo"

[[route]]
path = "/hello"
component = "hello"

[component.aggregate]
source = "{components}/aggregate.wasm"
config = { urls = "/hello" }
allowed_outbound_hosts = ["http://self"]

[component.echo]
source = "{components}/echo.wasm"

[component.hello]
source = "{components}/hello.wasm"
"#;
    let server = TestServer::start_in(dir.path(), manifest).await;
    let reply = https_get(&server, &roots, "/aggregate").await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains(r#""status":200"#) && reply.contains(r#""size":14"#), "{reply}");
    let reply = https_get(&server, &roots, "/echo?inspect").await;
    assert!(reply.contains(r#""scheme":"https""#), "{reply}");
    server.stop().await;
}

#[tokio::test]
async fn a_reload_keeps_the_buckets_and_queues_of_unchanged_routes() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = r#"
[server]
key_value = "memory"

[[route]]
path = "/limited"
component = "hello"
rate_limit = { requests = 2, window_secs = 60 }

[[route]]
path = "/hello"
component = "hello"

[component.hello]
source = "{components}/hello.wasm"
"#;
    let options = wharf::LoadOptions { watch: false, ..Default::default() };
    let server = TestServer::start_with(dir.path(), manifest, options).await;
    let client = http1_client();
    let reload = || {
        let request =
            http::Request::post(server.admin_url("/admin/reload")).body(Full::new(Bytes::new())).unwrap();
        send(&client, request)
    };
    for _ in 0..2 {
        assert_eq!(get(&client, &server.url("/limited")).await.status, 200);
    }
    assert_eq!(get(&client, &server.url("/limited")).await.status, 429);
    assert_eq!(reload().await.status, 200);
    assert_eq!(
        get(&client, &server.url("/limited")).await.status,
        429,
        "the reload did not refill the bucket"
    );
    // A changed limit is a new bucket.
    let path = dir.path().join("wharf.toml");
    let text = std::fs::read_to_string(&path).unwrap().replace("requests = 2,", "requests = 3,");
    std::fs::write(&path, text).unwrap();
    assert_eq!(reload().await.status, 200);
    assert_eq!(get(&client, &server.url("/limited")).await.status, 200);
    server.stop().await;
}

#[tokio::test]
async fn the_admin_listener_takes_a_bearer_token() {
    // The real binary, the variable in its own environment.
    let dir = tempfile::tempdir().unwrap();
    let manifest = tight("admin_auth = { bearer_token_env = \"WHARF_TEST_ADMIN_TOKEN\" }");
    let server = WharfProcess::start_with_env(dir.path(), &manifest, &[("WHARF_TEST_ADMIN_TOKEN", "adm1n")]);
    let client = http1_client();
    for path in ["/healthz", "/metrics"] {
        assert_eq!(get(&client, &server.admin_url(path)).await.status, 401);
    }
    let reload =
        http::Request::post(server.admin_url("/admin/reload")).body(Full::new(Bytes::new())).unwrap();
    assert_eq!(send(&client, reload).await.status, 401);
    let with_token = http::Request::get(server.admin_url("/healthz"))
        .header("authorization", "Bearer adm1n")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(send(&client, with_token).await.status, 200);
    // The probes answer without one: they say only yes or no.
    for path in ["/livez", "/readyz"] {
        assert_eq!(get(&client, &server.admin_url(path)).await.status, 200, "{path}");
    }
}

/// Opens up to 20,000 HTTP/2 streams on one connection, resetting each at
/// once, and returns how the connection ended. A careless attacker floods
/// before the server's SETTINGS arrive (so it exceeds the stream limit); a
/// careful one sends an honest request first and keeps to the limit.
async fn rapid_reset_flood(server: &TestServer, careful: bool) -> Result<(), h2::Error> {
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let (mut client, connection) = h2::client::handshake(tcp).await.unwrap();
    let connection = tokio::spawn(connection);
    if careful {
        let request = http::Request::get(server.url("/hello")).body(()).unwrap();
        let (response, _) = client.send_request(request, true).unwrap();
        assert_eq!(response.await.unwrap().status(), 200);
    }
    for _ in 0..20_000 {
        let Ok(ready) = client.ready().await else { break };
        client = ready;
        let request = http::Request::get(server.url("/hello")).body(()).unwrap();
        let Ok((_response, mut stream)) = client.send_request(request, true) else { break };
        stream.send_reset(h2::Reason::CANCEL);
    }
    tokio::time::timeout(30 * SECOND, connection).await.expect("the connection was never closed").unwrap()
}

/// HTTP/2 rapid reset (CVE-2023-44487): a client that opens streams and
/// resets them at once is cut off with GOAWAY (h2's limits: 20 resets of
/// streams not yet taken, 1,024 streams refused), before its streams reach
/// a guest, and nothing is left behind.
#[tokio::test]
async fn an_http2_rapid_reset_flood_is_cut_off_and_leaves_nothing_behind() {
    let (server, _dir) = TestServer::start(&tight("")).await;
    let metrics = &server.app.telemetry.metrics;
    for (careful, cut_off) in [(false, 1), (true, 2)] {
        // Without the limits the careful flood ends cleanly at the
        // keep-alive timeout, with all 20,000 streams served. (The careless
        // one may see its write fail before it reads the GOAWAY.)
        let ended = rapid_reset_flood(&server, careful).await.expect_err("cut off, not closed cleanly");
        assert!(ended.is_io() || ended.is_go_away(), "careful={careful}: ended by {ended:?}");
        eventually("the server counted the cut-off", 5 * SECOND, || metrics.connections_cut_off() == cut_off)
            .await;
    }
    let served = server.app.telemetry.metrics.requests_total();
    assert!(served < 1_000, "{served} of 40,000 reset streams reached the server's request path");
    a_normal_client_is_served(&server).await;
    eventually("no instance left", 5 * SECOND, || live(&server) == 0).await;
    server.stop().await;
}

/// One HTTP/2 frame: 24-bit length, type, flags, stream id, payload.
fn http2_frame(kind: u8, flags: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
    let mut frame = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    frame.extend([kind, flags]);
    frame.extend(stream_id.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// HTTP/2 CONTINUATION flood (CVE-2024-27316 and its kin): a header block
/// that never ends is cut off after a few frames (h2 allows as many as
/// `max_header_bytes` needs, and at least 5), not read until a deadline.
#[tokio::test]
async fn an_endless_http2_header_block_is_cut_off() {
    const HEADERS: u8 = 0x1;
    const SETTINGS: u8 = 0x4;
    const CONTINUATION: u8 = 0x9;
    const END_STREAM: u8 = 0x1;
    let (server, _dir) = TestServer::start(&tight("")).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let mut opening = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    opening.extend(http2_frame(SETTINGS, 0, 0, &[]));
    // HPACK: GET, http, /, then :authority localhost; no END_HEADERS, ever.
    let mut block = vec![0x82, 0x86, 0x84, 0x41, 9];
    block.extend(b"localhost");
    opening.extend(http2_frame(HEADERS, END_STREAM, 1, &block));
    stream.write_all(&opening).await.unwrap();
    // 150 literal headers `x-a: aaa...` (100 bytes) a frame: 20 KiB decoded.
    let mut header = vec![0x00, 3];
    header.extend(b"x-a");
    header.push(100);
    header.extend([b'a'; 100]);
    let continuation = http2_frame(CONTINUATION, 0, 1, &header.repeat(150));
    // Loopback takes 64 MiB in well under the 2 s header deadline: only a
    // server that gives up after a few frames fails the writes before it.
    let mut written = 0usize;
    let cut_off = loop {
        if written > 64 << 20 {
            break false;
        }
        match tokio::time::timeout(10 * SECOND, stream.write_all(&continuation)).await {
            Ok(Ok(())) => written += continuation.len(),
            Ok(Err(_)) => break true,
            Err(_) => panic!("the server stopped reading but kept the connection ({written} bytes written)"),
        }
    };
    assert!(cut_off, "the server read {written} bytes of one header block");
    let metrics = &server.app.telemetry.metrics;
    eventually("the server counted the cut-off", 5 * SECOND, || metrics.connections_cut_off() == 1).await;
    a_normal_client_is_served(&server).await;
    assert_eq!(server.app.telemetry.metrics.requests_total(), 1, "only the normal client's request");
    server.stop().await;
}
