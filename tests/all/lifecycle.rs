//! Lifecycle: graceful shutdown (in process and with real signals), hot-swap
//! under load, invalid versions, manifest reload, the compile cache.

use crate::harness::*;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const SECOND: Duration = Duration::from_secs(1);

const STREAM_APP: &str = r#"
[server]
key_value = "memory"
shutdown_timeout_secs = 5

[[route]]
path = "/stream"
component = "stream"

[[route]]
path = "/long"
component = "long-running"

[component.stream]
source = "{components}/stream.wasm"

[component.long-running]
source = "{components}/long_running.wasm"
"#;

#[tokio::test]
async fn a_stream_in_progress_finishes_during_the_drain() {
    let (mut server, _dir) = TestServer::start(STREAM_APP).await;
    let client = http1_client();
    let response = get_streaming(&client, &server.url("/stream?n=5&interval_ms=100")).await;
    let mut body = response.into_body();
    let mut text = next_data(&mut body, 5 * SECOND).await.unwrap();
    server.begin_shutdown();
    while let Some(chunk) = next_data(&mut body, 5 * SECOND).await {
        if chunk.is_empty() {
            break;
        }
        text.push_str(&chunk);
    }
    assert!(text.ends_with("id: 5\ndata: event 5 of 5\n\n"), "stream cut short: {text:?}");
    server.wait_stopped().await;
    // Stopped: nobody is listening any more.
    assert!(tokio::net::TcpStream::connect(server.addr).await.is_err());
}

#[tokio::test]
async fn the_drain_gives_up_at_the_shutdown_timeout_or_when_told() {
    for forced in [false, true] {
        let app = STREAM_APP.replace("shutdown_timeout_secs = 5", "shutdown_timeout_secs = 0.5");
        let app = if forced { app.replace("0.5", "60") } else { app };
        let (mut server, _dir) = TestServer::start(&app).await;
        let (client, url) = (http1_client(), server.url("/long?ms=60000"));
        let pending = tokio::spawn(async move { client.get(url.parse().unwrap()).await });
        eventually("request running", 5 * SECOND, || live(&server) == 1).await;
        let started = Instant::now();
        server.begin_shutdown();
        if forced {
            server.app.cancel_in_flight();
        }
        server.wait_stopped().await;
        assert!(started.elapsed() < 5 * SECOND, "drain took {:?}", started.elapsed());
        assert!(pending.await.unwrap().is_err(), "the request was cut off");
        eventually("instance dropped", 5 * SECOND, || live(&server) == 0).await;
        assert_eq!(cancelled(&server), 1);
    }
}

/// Reads the JSON log lines of a `wharf` process and hands them out.
fn spawn_log_reader(stderr: std::process::ChildStderr) -> std::sync::mpsc::Receiver<serde_json::Value> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { return };
            if let Ok(value) = serde_json::from_str::<serde_json::Value>(&line) {
                let _ = tx.send(value);
            }
        }
    });
    rx
}

fn wait_for_log(logs: &std::sync::mpsc::Receiver<serde_json::Value>, message: &str) -> serde_json::Value {
    loop {
        let line = logs.recv_timeout(30 * SECOND).unwrap_or_else(|_| panic!("no log line {message:?}"));
        if line["message"] == message {
            return line;
        }
    }
}

#[tokio::test]
async fn sigterm_drains_every_request_in_flight_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = STREAM_APP.replace("{components}", &component_dir().display().to_string()).replace(
        "shutdown_timeout_secs = 5",
        "shutdown_timeout_secs = 30\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nmax_concurrent_requests = 200",
    );
    std::fs::write(dir.path().join("wharf.toml"), manifest).unwrap();
    let mut child = Command::new(wharf_binary())
        .args(["--log-format", "json", "up", "--manifest"])
        .arg(dir.path().join("wharf.toml"))
        .env("RUST_LOG", "info,wharf::observe=warn")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let logs = spawn_log_reader(child.stderr.take().unwrap());
    let addr: std::net::SocketAddr =
        wait_for_log(&logs, "listening")["addr"].as_str().unwrap().parse().unwrap();
    let admin =
        wait_for_log(&logs, "admin listening (/healthz, /metrics)")["addr"].as_str().unwrap().to_string();

    // 100 requests, each held 1 s by its instance.
    let client = http1_client();
    let requests: Vec<_> = (0..100)
        .map(|_| {
            let (client, url) = (client.clone(), format!("http://{addr}/long?ms=1000"));
            tokio::spawn(async move { get(&client, &url).await })
        })
        .collect();
    let admin_client = http1_client();
    let deadline = Instant::now() + 10 * SECOND;
    loop {
        let health = get(&admin_client, &format!("http://{admin}/healthz")).await.json();
        if health["in_flight"] == 100 {
            break;
        }
        assert!(Instant::now() < deadline, "requests never all in flight: {health}");
    }

    let signalled = Instant::now();
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    // New connections are refused while the old ones drain.
    let deadline = Instant::now() + 5 * SECOND;
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(Instant::now() < deadline, "still accepting after SIGTERM");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for request in requests {
        let reply = request.await.unwrap();
        assert_eq!((reply.status, reply.body.as_str()), (200, "Done"));
    }
    let status = tokio::task::spawn_blocking(move || child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "exit status {status}");
    assert!(signalled.elapsed() < 10 * SECOND, "took {:?} against a 30 s drain timeout", signalled.elapsed());
    let done = wait_for_log(&logs, "shutdown complete");
    assert_eq!((done["drained"].as_u64(), done["cancelled"].as_u64()), (Some(100), Some(0)), "{done}");
}

const SWAP_APP: &str = r#"
[server]
key_value = "memory"

[[route]]
path = "/swap"
component = "swap"

[component.swap]
source = "swap.wasm"
"#;

/// Replaces `target` with `source` the way deploy tools do: write beside,
/// then rename over.
fn install_atomically(source: &Path, target: &Path) {
    let partial = target.with_extension("partial");
    std::fs::copy(source, &partial).unwrap();
    std::fs::rename(&partial, target).unwrap();
}

#[tokio::test]
async fn swapping_back_and_forth_under_load_fails_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("swap.wasm");
    std::fs::copy(component("swap_v1"), &target).unwrap();
    let server = TestServer::start_in(dir.path(), SWAP_APP).await;
    let client = http1_client();
    assert_eq!(get(&client, &server.url("/swap")).await.body, "v1");

    let stop = Arc::new(AtomicBool::new(false));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (client, url, stop) = (http1_client(), server.url("/swap"), stop.clone());
            tokio::spawn(async move {
                let mut replies = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let reply = get(&client, &url).await;
                    replies.push((reply.status, reply.body));
                }
                replies
            })
        })
        .collect();

    for swap in 1..=20 {
        let version = if swap % 2 == 1 { "v2" } else { "v1" };
        install_atomically(&component(&format!("swap_{version}")), &target);
        let deadline = Instant::now() + 10 * SECOND;
        while get(&client, &server.url("/swap")).await.body != version {
            assert!(Instant::now() < deadline, "swap {swap} to {version} never took effect");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut served = 0;
    for task in load {
        for (status, body) in task.await.unwrap() {
            assert_eq!(status, 200);
            assert!(body == "v1" || body == "v2", "unexpected body {body:?}");
            served += 1;
        }
    }
    assert!(served > 20, "the load never ran ({served} requests)");
    // After the last swap (to v1), only v1 answers.
    for _ in 0..20 {
        assert_eq!(get(&client, &server.url("/swap")).await.body, "v1");
    }
    assert_eq!(server.app.telemetry.metrics.reloads(true), 20);
    server.stop().await;
}

#[tokio::test]
async fn an_invalid_file_written_in_place_leaves_the_old_version_serving() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("swap.wasm");
    std::fs::copy(component("swap_v1"), &target).unwrap();
    let server = TestServer::start_in(dir.path(), SWAP_APP).await;
    let client = http1_client();
    std::fs::write(&target, b"\0asm garbage, not a component").unwrap();
    eventually("reload rejected", 10 * SECOND, || server.app.telemetry.metrics.reloads(false) >= 1).await;
    assert_eq!(get(&client, &server.url("/swap")).await.body, "v1");
    let health = get(&client, &server.admin_url("/healthz")).await.json();
    let digest = health["components"][0]["digest"].as_str().unwrap().to_string();
    // A valid file afterwards is picked up.
    install_atomically(&component("swap_v2"), &target);
    eventually("v2 swapped in", 10 * SECOND, || server.app.telemetry.metrics.reloads(true) >= 1).await;
    assert_eq!(get(&client, &server.url("/swap")).await.body, "v2");
    let health = get(&client, &server.admin_url("/healthz")).await.json();
    assert_ne!(health["components"][0]["digest"].as_str().unwrap(), digest, "health shows the new digest");
    server.stop().await;
}

#[tokio::test]
async fn admin_reload_applies_manifest_changes_and_rejects_bad_ones() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(component("swap_v1"), dir.path().join("swap.wasm")).unwrap();
    std::fs::copy(component("hello"), dir.path().join("hello.wasm")).unwrap();
    let server = TestServer::start_in(dir.path(), SWAP_APP).await;
    let client = http1_client();
    let reload = || {
        let request = http::Request::post(server.admin_url("/admin/reload"))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        send(&client, request)
    };
    assert_eq!(get(&client, &server.url("/hello")).await.status, 404);

    let with_hello = format!(
        "{SWAP_APP}\n[[route]]\npath = \"/hello\"\ncomponent = \"hello\"\n\n[component.hello]\nsource = \"hello.wasm\"\n"
    );
    std::fs::write(dir.path().join("wharf.toml"), &with_hello).unwrap();
    let reply = reload().await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["swapped"], serde_json::json!(["hello"]));
    assert_eq!(get(&client, &server.url("/hello")).await.status, 200, "route added");

    std::fs::write(
        dir.path().join("wharf.toml"),
        with_hello.replace("component = \"hello\"", "component = \"nope\""),
    )
    .unwrap();
    let reply = reload().await;
    assert_eq!(reply.status, 422);
    assert!(reply.json()["error"].as_str().unwrap().contains("component \"nope\" is not defined"));
    assert_eq!(get(&client, &server.url("/hello")).await.status, 200, "old app still serving");

    std::fs::write(dir.path().join("wharf.toml"), SWAP_APP).unwrap();
    assert_eq!(reload().await.status, 200);
    assert_eq!(get(&client, &server.url("/hello")).await.status, 404, "route removed");
    assert_eq!(get(&client, &server.url("/swap")).await.body, "v1");
    server.stop().await;
}

#[tokio::test]
async fn a_truncated_cache_entry_is_rebuilt_not_loaded() {
    use wharf::runtime::cache::CacheOutcome;
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(component("swap_v1"), dir.path().join("swap.wasm")).unwrap();
    let outcome = |server: &TestServer| server.app.routes.current().component("swap").unwrap().cache;

    let server = TestServer::start_in(dir.path(), SWAP_APP).await;
    assert_eq!(outcome(&server), CacheOutcome::Miss);
    server.stop().await;
    let server = TestServer::start_in(dir.path(), SWAP_APP).await;
    assert_eq!(outcome(&server), CacheOutcome::Hit, "a restart skips compilation");
    server.stop().await;

    let entries: Vec<_> =
        std::fs::read_dir(dir.path().join(".wharf/cache")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(entries.len(), 1);
    let full_size = std::fs::metadata(&entries[0]).unwrap().len();
    let bytes = std::fs::read(&entries[0]).unwrap();
    std::fs::write(&entries[0], &bytes[..bytes.len() / 2]).unwrap();

    let server = TestServer::start_in(dir.path(), SWAP_APP).await;
    assert_eq!(outcome(&server), CacheOutcome::Rebuilt);
    assert_eq!(get(&http1_client(), &server.url("/swap")).await.body, "v1");
    assert_eq!(std::fs::metadata(&entries[0]).unwrap().len(), full_size, "entry rewritten");
    server.stop().await;
    let server = TestServer::start_in(dir.path(), SWAP_APP).await;
    assert_eq!(outcome(&server), CacheOutcome::Hit);
    server.stop().await;
}

/// Not a test of speed: prints how long a swap takes from the file write to
/// the first response from the new version (median of 20). Run with
/// `cargo test --release --test all -- --ignored --nocapture measure_`.
#[tokio::test]
#[ignore]
async fn measure_swap_latency() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("swap.wasm");
    std::fs::copy(component("swap_v1"), &target).unwrap();
    let server = TestServer::start_in(dir.path(), SWAP_APP).await;
    let client = http1_client();
    let mut samples = Vec::new();
    for swap in 1..=20 {
        let version = if swap % 2 == 1 { "v2" } else { "v1" };
        let written = Instant::now();
        install_atomically(&component(&format!("swap_{version}")), &target);
        while get(&client, &server.url("/swap")).await.body != version {}
        samples.push(written.elapsed());
    }
    samples.sort();
    println!(
        "file write -> first response from the new version: median {:?}, max {:?}",
        samples[10], samples[19]
    );
    server.stop().await;
}
