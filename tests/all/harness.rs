//! The shared test harness: starts the real host on a port-0 listener with
//! the real compiled components, gives clients for HTTP/1.1 and HTTP/2, and
//! stops the server when the test says so.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use wharf::App;
use wharf::manifest::Manifest;

/// Directory holding the compiled components (`hello.wasm`, ...).
pub fn component_dir() -> PathBuf {
    PathBuf::from(env!("WHARF_COMPONENT_DIR"))
}

/// Path of one compiled component.
pub fn component(name: &str) -> PathBuf {
    component_dir().join(format!("{name}.wasm"))
}

/// A running Wharf server.
pub struct TestServer {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub app: Arc<App>,
    access_log: Arc<Mutex<Vec<u8>>>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestServer {
    /// Starts a server for `manifest` (TOML text) written into `dir`, where
    /// `{components}` stands for the compiled components' directory. The
    /// listen address is always 127.0.0.1 on a free port; the server runs
    /// two threads unless the manifest sets `threads`.
    pub async fn start_in(dir: &Path, manifest: &str) -> Self {
        Self::start_with(dir, manifest, wharf::LoadOptions::default()).await
    }

    /// Like [`Self::start_in`] with load options of the test's choosing
    /// (the access log is always captured, for [`Self::access_lines`]).
    pub async fn start_with(dir: &Path, manifest: &str, options: wharf::LoadOptions) -> Self {
        Self::start_file(dir, "wharf.toml", manifest, options).await
    }

    /// Starts a server for a Spin app: `spin_toml` written as `spin.toml`
    /// into a fresh temporary directory, with `wharf_toml` beside it if
    /// given (`{components}` as in [`Self::start_in`]).
    pub async fn start_spin(spin_toml: &str, wharf_toml: Option<&str>) -> (Self, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        if let Some(settings) = wharf_toml {
            std::fs::write(dir.path().join("wharf.toml"), settings).unwrap();
        }
        let server =
            Self::start_file(dir.path(), "spin.toml", spin_toml, wharf::LoadOptions::default()).await;
        (server, dir)
    }

    async fn start_file(dir: &Path, file: &str, manifest: &str, options: wharf::LoadOptions) -> Self {
        let text = manifest.replace("{components}", &component_dir().display().to_string());
        let path = dir.join(file);
        std::fs::write(&path, &text).unwrap();
        let mut manifest = Manifest::load(&path, true).expect("valid test manifest");
        manifest.server.listen = "127.0.0.1:0".parse().unwrap();
        manifest.server.admin_listen = Some("127.0.0.1:0".parse().unwrap());
        if !text.contains("threads") {
            manifest.server.threads = 2;
        }
        let access_log = Arc::new(Mutex::new(Vec::new()));
        let sink = access_log.clone();
        let options = wharf::LoadOptions {
            access_log: Some(Arc::new(wharf::telemetry::access_log::AccessLog::unfiltered(
                move || LineSink(sink.clone()),
                wharf::telemetry::access_log::AccessLogFormat::Json,
            ))),
            ..options
        };
        let app = App::load(&manifest, &options).expect("app loads");
        let listeners = wharf::Listeners::bind_for(&manifest.server).unwrap();
        let addr = listeners.local_addr();
        let admin = listeners.admin_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(wharf::run(listeners, app.clone(), async move {
            let _ = rx.await;
        }));
        Self { addr, admin, app, access_log, shutdown: Some(tx), task: Some(task) }
    }

    /// Every access-log line written so far, parsed.
    pub fn access_lines(&self) -> Vec<serde_json::Value> {
        let bytes = self.access_log.lock().unwrap().clone();
        String::from_utf8_lossy(&bytes)
            .lines()
            .map(|line| {
                serde_json::from_str(line).unwrap_or_else(|e| panic!("bad access line {line:?}: {e}"))
            })
            .collect()
    }

    /// Waits until an access line matching `matches` has been written, and
    /// returns it (a request is logged when its record is dropped, which
    /// may be just after the client saw the response end).
    pub async fn access_line(
        &self,
        what: &str,
        matches: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let mut found = None;
        eventually(what, std::time::Duration::from_secs(10), || {
            found = self.access_lines().into_iter().find(|line| matches(line));
            found.is_some()
        })
        .await;
        found.unwrap()
    }

    /// Like [`Self::start_in`], in a fresh temporary directory kept alive by
    /// the returned guard.
    pub async fn start(manifest: &str) -> (Self, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        (Self::start_in(dir.path(), manifest).await, dir)
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// `http://ADMIN{path}` on the admin listener.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    /// Triggers a graceful shutdown and waits for the server to return.
    pub async fn stop(mut self) {
        self.begin_shutdown();
        self.wait_stopped().await;
    }

    /// Triggers a graceful shutdown without waiting for it.
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            tx.send(()).unwrap();
        }
    }

    /// Waits until the server has returned (after a shutdown began).
    pub async fn wait_stopped(&mut self) {
        self.task.take().unwrap().await.unwrap().expect("server stops cleanly");
        // Once the server has returned, nothing but this handle holds the
        // app (and so its database): a restart can open the data dir at once.
        assert_eq!(Arc::strong_count(&self.app), 1, "something still holds the app after shutdown");
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Appends whole lines to the shared capture buffer.
struct LineSink(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LineSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A pooled HTTP/1.1 client.
pub fn http1_client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// An HTTP/2 client speaking h2c with prior knowledge.
pub fn http2_client() -> HttpClient {
    Client::builder(TokioExecutor::new()).http2_only(true).build_http()
}

/// A response read to the end.
pub struct Reply {
    pub status: u16,
    pub version: http::Version,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

/// A pooled HTTP/1.1 client whose connections come from `local` (for
/// example 127.0.0.2, to look like a second client address).
pub fn http1_client_from(local: std::net::IpAddr) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_local_address(Some(local));
    Client::builder(TokioExecutor::new()).build(connector)
}

/// Sends `request` with `client` and reads the whole body.
pub async fn send(client: &HttpClient, request: http::Request<Full<Bytes>>) -> Reply {
    let response = client.request(request).await.expect("request sent");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("body read").to_bytes();
    Reply {
        status: parts.status.as_u16(),
        version: parts.version,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// Releases every `hold` request waiting for `key` (writes it to the
/// key-value store directly, so it works even when the server is full).
pub async fn release(server: &TestServer, key: &str) {
    server.app.key_value().set_many("default".into(), vec![(key.into(), b"1".to_vec())]).await.unwrap();
}

/// GETs `url` with `client` and reads the whole body.
pub async fn get(client: &HttpClient, url: &str) -> Reply {
    send(client, http::Request::get(url).body(Full::new(Bytes::new())).unwrap()).await
}

/// Waits until `condition` holds, checking every 5 ms, for at most
/// `within`; panics with `what` otherwise. For state the server exposes
/// only as counters (there is no event to await from outside).
pub async fn eventually(what: &str, within: std::time::Duration, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// Live instances on `server` now.
pub fn live(server: &TestServer) -> usize {
    server.app.telemetry.metrics.live_instances()
}

/// Requests holding an admission permit on `server` now.
pub fn in_flight(server: &TestServer) -> usize {
    server.app.admission.in_flight()
}

/// Requests `server` counted as cancelled.
pub fn cancelled(server: &TestServer) -> u64 {
    server.app.telemetry.metrics.cancelled_total()
}

/// Opens a raw TCP connection and writes a `GET path` HTTP/1.1 request.
pub async fn raw_get(server: &TestServer, path: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes()).await.unwrap();
    stream
}

/// Sends `GET path` with `Connection: close` on a new connection and reads
/// until the server closes it (or 10 s pass): the raw response, or `""`
/// if the connection was closed without one.
pub async fn raw_get_to_end(server: &TestServer, path: &str) -> String {
    use tokio::io::AsyncReadExt;
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    let Ok(mut stream) = tokio::net::TcpStream::connect(server.addr).await else { return String::new() };
    let _ = tokio::io::AsyncWriteExt::write_all(&mut stream, request.as_bytes()).await;
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), stream.read_to_end(&mut reply)).await;
    String::from_utf8_lossy(&reply).into_owned()
}

/// Reads from `stream` until the bytes read so far contain `needle`.
pub async fn read_until(stream: &mut tokio::net::TcpStream, needle: &str) -> String {
    use tokio::io::AsyncReadExt;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains(needle) {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "connection closed before {needle:?}; got {:?}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&seen).into_owned()
}

/// Sends `GET path` on an open HTTP/1.1 connection and reads one whole
/// response (head and a `Content-Length` body).
pub async fn exchange_raw(stream: &mut tokio::net::TcpStream, path: &str) -> String {
    use tokio::io::AsyncWriteExt;
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes()).await.unwrap();
    read_response(stream).await
}

/// Reads one whole response (head and a `Content-Length` body).
pub async fn read_response(stream: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut response = read_until(stream, "\r\n\r\n").await.into_bytes();
    let head_end = response.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8_lossy(&response[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .map_or(0, |n| n.trim().parse().unwrap());
    let mut buf = [0u8; 4096];
    while response.len() < head_end + length {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "connection closed inside a response: {:?}", String::from_utf8_lossy(&response));
        response.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&response).into_owned()
}

/// The worker thread that served the request whose raw response is
/// `response` (by its `x-request-id`, from the access log).
pub async fn worker_of(server: &TestServer, response: &str) -> u64 {
    let id = response
        .lines()
        .find_map(|line| {
            line.to_ascii_lowercase().strip_prefix("x-request-id:").map(|id| id.trim().to_string())
        })
        .unwrap_or_else(|| panic!("no x-request-id in {response:?}"));
    let line = server.access_line("the request's line", |line| line["request_id"] == id.as_str()).await;
    line["worker"].as_u64().unwrap_or_else(|| panic!("no worker in {line}"))
}

/// Sends a GET and returns the response head and its body still streaming.
pub async fn get_streaming(client: &HttpClient, url: &str) -> http::Response<hyper::body::Incoming> {
    let request = http::Request::get(url).body(Full::new(Bytes::new())).unwrap();
    client.request(request).await.expect("request sent")
}

/// The next data frame of `body`, or `None` if none arrives within `wait`.
pub async fn next_data(body: &mut hyper::body::Incoming, wait: std::time::Duration) -> Option<String> {
    loop {
        match tokio::time::timeout(wait, body.frame()).await {
            Err(_) => return None,
            Ok(None) => return Some(String::new()),
            Ok(Some(frame)) => {
                if let Ok(data) = frame.expect("body frame").into_data() {
                    return Some(String::from_utf8_lossy(&data).into_owned());
                }
            }
        }
    }
}

/// Requests waiting in `route`'s worker queue now.
pub fn queue_depth(server: &TestServer, route: &str) -> usize {
    let table = server.app.routes.current();
    let route = table.routes().iter().find(|r| r.spec.path == route).expect("route exists");
    route.policy.workers.as_ref().map_or(0, |pool| pool.queue_depth())
}

/// The `wharf` binary `cargo test` built beside this test binary.
pub fn wharf_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().and_then(Path::parent).unwrap().join("wharf");
    assert!(
        path.is_file(),
        "{} is missing: run `cargo test` from the workspace root, which builds it",
        path.display()
    );
    path
}

/// Reads the JSON log lines of a `wharf` process and hands them out.
pub fn spawn_log_reader(stderr: std::process::ChildStderr) -> std::sync::mpsc::Receiver<serde_json::Value> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)) {
            let Ok(line) = line else { return };
            if let Ok(value) = serde_json::from_str::<serde_json::Value>(&line) {
                let _ = tx.send(value);
            }
        }
    });
    rx
}

/// A `wharf up` process on `manifest` (written into `dir` with free
/// loopback ports), its JSON log lines, and its public and admin addresses.
pub struct WharfProcess {
    child: Option<std::process::Child>,
    pub logs: std::sync::mpsc::Receiver<serde_json::Value>,
    pub addr: std::net::SocketAddr,
    pub admin: String,
}

impl WharfProcess {
    pub fn start(dir: &Path, manifest: &str) -> Self {
        Self::start_with_env(dir, manifest, &[])
    }

    /// Like [`Self::start`], with `env` in the process's own environment
    /// (tests never write their own: other test threads read it).
    pub fn start_with_env(dir: &Path, manifest: &str, env: &[(&str, &str)]) -> Self {
        let manifest = manifest
            .replace("{components}", &component_dir().display().to_string())
            .replace("[server]", "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"");
        std::fs::write(dir.join("wharf.toml"), manifest).unwrap();
        let manifest = dir.join("wharf.toml");
        Self::run(&["--manifest", &manifest.to_string_lossy()], env)
    }

    /// `wharf up` with `args` (and loopback port-0 listeners), `env` in its
    /// own environment.
    pub fn run(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = std::process::Command::new(wharf_binary())
            .args(["--log-format", "json", "up"])
            .args(args)
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .env("RUST_LOG", "info,wharf::access=warn")
            .envs(env.iter().copied())
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let logs = spawn_log_reader(child.stderr.take().unwrap());
        let addr = wait_for_log(&logs, "listening")["addr"].as_str().unwrap().parse().unwrap();
        let admin =
            wait_for_log(&logs, "admin listening (/healthz, /metrics)")["addr"].as_str().unwrap().to_string();
        Self { child: Some(child), logs, addr, admin }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// `http://ADDR{path}` on the public listener.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `http://ADMIN{path}` on the admin listener.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    pub fn signal(&self, name: &str) {
        let pid = self.child.as_ref().unwrap().id().to_string();
        assert!(
            std::process::Command::new("kill").args([&format!("-{name}"), &pid]).status().unwrap().success()
        );
    }

    pub async fn health(&self) -> serde_json::Value {
        get(&http1_client(), &format!("http://{}/healthz", self.admin)).await.json()
    }

    /// Waits for the process to exit; its log lines stay readable.
    pub async fn wait(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        tokio::task::spawn_blocking(move || child.wait()).await.unwrap().unwrap()
    }
}

impl Drop for WharfProcess {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Serves `path` once from a `wharf` process on `manifest`, stops it, and
/// checks that the guest's output (a forged host log line and a second line,
/// on stdout and on stderr) came out as four `guest output` lines carrying
/// `component` and the request's id, with no forged line standing alone.
/// Returns those four lines.
pub async fn guest_output_of_one_request(
    manifest: &str,
    path: &str,
    component: &str,
) -> Vec<serde_json::Value> {
    let dir = tempfile::tempdir().unwrap();
    let mut wharf = WharfProcess::start(dir.path(), manifest);
    let reply = get(&http1_client(), &format!("http://{}{path}", wharf.addr)).await;
    assert_eq!(reply.status, 200);
    let request_id = reply.headers["x-request-id"].to_str().unwrap().to_string();
    wharf.signal("TERM");
    assert!(wharf.wait().await.success());
    let lines: Vec<serde_json::Value> = wharf.logs.iter().collect();
    let guest: Vec<_> = lines.iter().filter(|l| l["message"] == "guest output").cloned().collect();
    assert_eq!(guest.len(), 4, "two lines each on stdout and stderr: {guest:?}");
    for line in &guest {
        assert_eq!(
            (line["component"].as_str(), line["request_id"].as_str()),
            (Some(component), Some(request_id.as_str()))
        );
    }
    assert!(
        !lines.iter().any(|l| l["message"].as_str().is_some_and(|m| m.contains("forged"))),
        "a forged line stands alone"
    );
    guest
}

pub fn wait_for_log(logs: &std::sync::mpsc::Receiver<serde_json::Value>, message: &str) -> serde_json::Value {
    loop {
        let line = logs
            .recv_timeout(std::time::Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("no log line {message:?}"));
        if line["message"] == message {
            return line;
        }
    }
}

/// A real `redis-server` on a free loopback port, its data (append-only,
/// synced on every write) in a directory of its own; stopped when dropped.
pub struct RedisServer {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<std::process::Child>,
}

impl RedisServer {
    pub async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut server = Self { port, dir: tempfile::tempdir().unwrap(), child: None };
        server.restart().await;
        server
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Starts it (again), on the same port and data, and waits until it
    /// answers.
    pub async fn restart(&mut self) {
        self.start_with(&[]).await;
    }

    /// Starts it with `extra` arguments and waits until it answers.
    async fn start_with(&mut self, extra: &[&str]) {
        let child = std::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .args(extra)
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server must be installed (apt-get install redis-server; .ci/run does it)");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            if let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                if stream.write_all(b"PING\r\n").await.is_ok() {
                    let mut reply = [0u8; 16];
                    if let Ok(n) = stream.read(&mut reply).await
                        && reply[..n].starts_with(b"+PONG")
                    {
                        return;
                    }
                }
            }
            assert!(std::time::Instant::now() < deadline, "redis-server did not start on port {}", self.port);
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Holds every write command (scripts among them) of every client for
    /// `duration` (`CLIENT PAUSE ... WRITE`): the writes wait, then run.
    pub async fn pause_writes(&self, duration: std::time::Duration) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.unwrap();
        let command = format!("CLIENT PAUSE {} WRITE\r\n", duration.as_millis());
        stream.write_all(command.as_bytes()).await.unwrap();
        let mut reply = [0u8; 64];
        let n = stream.read(&mut reply).await.unwrap();
        assert!(reply[..n].starts_with(b"+OK"), "{:?}", String::from_utf8_lossy(&reply[..n]));
    }

    /// Kills it and waits until it is gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A real Redis Cluster on loopback: `masters` masters with one replica
/// each, made with `redis-cli --cluster create`; stopped when dropped.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub async fn start(masters: usize) -> Self {
        let mut nodes = Vec::new();
        for _ in 0..masters * 2 {
            let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let mut node = RedisServer { port, dir: tempfile::tempdir().unwrap(), child: None };
            node.start_with(&["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"]).await;
            nodes.push(node);
        }
        let addresses: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let created = std::process::Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli must be installed (it comes with redis-server)");
        assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stdout));
        let cluster = Self { nodes };
        for node in &cluster.nodes {
            let port = node.port;
            eventually("the cluster is ok on every node", std::time::Duration::from_secs(30), || {
                cluster.cli(port, &["cluster", "info"]).contains("cluster_state:ok")
            })
            .await;
        }
        cluster
    }

    /// `redis_url` for the cluster: its masters' addresses.
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .take(3)
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// What `redis-cli -p PORT ARGS...` prints.
    pub fn cli(&self, port: u16, args: &[&str]) -> String {
        let output = std::process::Command::new("redis-cli")
            .args(["-p", &port.to_string()])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// The master serving `key`'s slot and its replica, as ports.
    pub fn master_and_replica_of(&self, key: &str) -> (u16, u16) {
        let any = self.nodes[0].port;
        let slot: u16 = self.cli(any, &["cluster", "keyslot", key]).trim().parse().unwrap();
        let table = self.cli(any, &["cluster", "nodes"]);
        let rows: Vec<Vec<&str>> = table.lines().map(|l| l.split_whitespace().collect()).collect();
        let port_of = |row: &Vec<&str>| -> u16 { row[1].split(['@', ':']).nth(1).unwrap().parse().unwrap() };
        let master = rows
            .iter()
            .find(|row| {
                row[2].contains("master")
                    && row[8..].iter().any(|range| {
                        let (from, to) = range.split_once('-').unwrap_or((range, range));
                        matches!((from.parse::<u16>(), to.parse::<u16>()), (Ok(a), Ok(b)) if (a..=b).contains(&slot))
                    })
            })
            .expect("a master for the slot");
        let replica = rows.iter().find(|row| row[3] == master[0]).expect("a replica of that master");
        (port_of(master), port_of(replica))
    }
}
