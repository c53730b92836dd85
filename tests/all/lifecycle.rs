//! Lifecycle: graceful shutdown (in process and with real signals), hot-swap
//! under load, invalid versions, manifest reload, the compile cache.

use crate::harness::*;
use std::path::Path;
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
        // The request runs 60 s. Not forced, the drain waits its 0.5 s and
        // gives up then; forced (with 60 s to wait), it gives up at once.
        let took = started.elapsed();
        if forced {
            assert!(took < SECOND, "a forced drain took {took:?}");
        } else {
            let timeout = Duration::from_millis(500);
            assert!(took >= timeout && took < timeout + SECOND, "drain took {took:?} against 0.5 s");
        }
        assert!(pending.await.unwrap().is_err(), "the request was cut off");
        eventually("instance dropped", 5 * SECOND, || live(&server) == 0).await;
        assert_eq!(cancelled(&server), 1);
    }
}

#[tokio::test]
async fn sigterm_drains_every_request_in_flight_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = STREAM_APP
        .replace("shutdown_timeout_secs = 5", "shutdown_timeout_secs = 30\nmax_concurrent_requests = 200");
    let mut wharf = WharfProcess::start(dir.path(), &manifest);
    let addr = wharf.addr;

    // 100 requests, each held 1 s by its instance.
    let client = http1_client();
    let requests: Vec<_> = (0..100)
        .map(|_| {
            let (client, url) = (client.clone(), format!("http://{addr}/long?ms=1000"));
            tokio::spawn(async move { get(&client, &url).await })
        })
        .collect();
    let deadline = Instant::now() + 10 * SECOND;
    loop {
        let health = wharf.health().await;
        if health["in_flight"] == 100 {
            break;
        }
        assert!(Instant::now() < deadline, "requests never all in flight: {health}");
    }

    let signalled = Instant::now();
    wharf.signal("TERM");
    // New connections are refused while the old ones drain.
    let deadline = Instant::now() + 10 * SECOND;
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(Instant::now() < deadline, "still accepting after SIGTERM");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for request in requests {
        let reply = request.await.unwrap();
        assert_eq!((reply.status, reply.body.as_str()), (200, "Done"));
    }
    let status = wharf.wait().await;
    assert!(status.success(), "exit status {status}");
    // Not the 30 s drain timeout: the drain ended when the requests did.
    assert!(signalled.elapsed() < 25 * SECOND, "took {:?} against a 30 s drain timeout", signalled.elapsed());
    let done = wait_for_log(&wharf.logs, "shutdown complete");
    assert_eq!((done["drained"].as_u64(), done["cancelled"].as_u64()), (Some(100), Some(0)), "{done}");
}

#[tokio::test]
async fn a_second_signal_cancels_what_is_still_draining() {
    let dir = tempfile::tempdir().unwrap();
    let mut wharf = WharfProcess::start(dir.path(), STREAM_APP);
    let (client, url) = (http1_client(), format!("http://{}/long?ms=600000", wharf.addr));
    let pending = tokio::spawn(async move { client.get(url.parse().unwrap()).await });
    let deadline = Instant::now() + 10 * SECOND;
    while wharf.health().await["in_flight"] != 1 {
        assert!(Instant::now() < deadline, "the request never started");
    }
    wharf.signal("TERM");
    wait_for_log(&wharf.logs, "shutting down: no new connections; draining requests in flight");
    wharf.signal("INT");
    assert!(pending.await.unwrap().is_err(), "the request was cut off");
    let status = wharf.wait().await;
    assert!(status.success(), "exit status {status}");
    let done = wait_for_log(&wharf.logs, "shutdown complete");
    assert_eq!((done["drained"].as_u64(), done["cancelled"].as_u64()), (Some(0), Some(1)), "{done}");
}

#[tokio::test]
async fn sighup_reloads_the_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let mut wharf = WharfProcess::start(dir.path(), STREAM_APP);
    let client = http1_client();
    let hello_url = format!("http://{}/hello", wharf.addr);
    assert_eq!(get(&client, &hello_url).await.status, 404);
    let text = std::fs::read_to_string(dir.path().join("wharf.toml")).unwrap();
    let hello = component("hello").display().to_string();
    std::fs::write(
        dir.path().join("wharf.toml"),
        format!("{text}\n[[route]]\npath = \"/hello\"\ncomponent = \"hello\"\n\n[component.hello]\nsource = \"{hello}\"\n"),
    )
    .unwrap();
    wharf.signal("HUP");
    wait_for_log(&wharf.logs, "manifest reloaded");
    assert_eq!(get(&client, &hello_url).await.body, "Hello, world!\n");
    wharf.signal("TERM");
    assert!(wharf.wait().await.success());
}

#[tokio::test]
async fn http1_responses_in_flight_at_shutdown_close_their_connection() {
    use tokio::io::AsyncReadExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(component("swap_v1"), dir.path().join("swap.wasm")).unwrap();
    let mut server = TestServer::start_in(dir.path(), SWAP_APP).await;
    let mut held = raw_get(&server, "/swap?wait=drain").await;
    eventually("request running", 5 * SECOND, || live(&server) == 1).await;
    server.begin_shutdown();
    eventually("listener closed", 10 * SECOND, || std::net::TcpStream::connect(server.addr).is_err()).await;
    release(&server, "drain").await;
    let mut reply = Vec::new();
    tokio::time::timeout(10 * SECOND, held.read_to_end(&mut reply)).await.unwrap().unwrap();
    let reply = String::from_utf8_lossy(&reply).to_ascii_lowercase();
    assert!(reply.starts_with("http/1.1 200"), "{reply}");
    assert!(reply.contains("connection: close"), "{reply}");
    // The whole body was ready with the headers: sent with its length.
    assert!(reply.contains("content-length: 2\r\n") && reply.ends_with("\r\n\r\nv1"), "{reply}");
    server.wait_stopped().await;
}

#[tokio::test]
async fn http2_connections_get_goaway_and_finish_their_streams_at_shutdown() {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(component("swap_v1"), dir.path().join("swap.wasm")).unwrap();
    let mut server = TestServer::start_in(dir.path(), SWAP_APP).await;
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await.unwrap();
    let connection = tokio::spawn(connection);
    let addr = server.addr;
    let request = |path: &str| {
        http::Request::get(format!("http://{addr}{path}"))
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap()
    };
    let held = sender.send_request(request("/swap?wait=goaway"));
    let held = tokio::spawn(held);
    eventually("request running", 5 * SECOND, || live(&server) == 1).await;
    server.begin_shutdown();
    // After GOAWAY, the connection takes no new stream...
    let deadline = Instant::now() + 10 * SECOND;
    loop {
        match sender.send_request(request("/swap")).await {
            Err(_) => break,
            Ok(response) => assert_eq!(response.status(), 200),
        }
        assert!(Instant::now() < deadline, "new streams still accepted after shutdown began");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // ...but the stream in flight completes, and then the connection ends.
    release(&server, "goaway").await;
    let response = held.await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    let body = http_body_util::BodyExt::collect(response.into_body()).await.unwrap().to_bytes();
    assert_eq!(&body[..], b"v1");
    tokio::time::timeout(10 * SECOND, connection).await.expect("connection ended").unwrap().unwrap();
    server.wait_stopped().await;
}

const SWAP_APP: &str = r#"
[server]
key_value = "memory"

[[route]]
path = "/swap"
component = "swap"

[component.swap]
source = "swap.wasm"
key_value_stores = ["default"]
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
async fn a_request_held_across_a_swap_finishes_on_the_version_it_started_with() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("swap.wasm");
    std::fs::copy(component("swap_v1"), &target).unwrap();
    let server = TestServer::start_in(dir.path(), SWAP_APP).await;
    let client = http1_client();
    let (c, url) = (client.clone(), server.url("/swap?wait=across"));
    let held = tokio::spawn(async move { get(&c, &url).await });
    eventually("v1 holding", 5 * SECOND, || live(&server) == 1).await;
    install_atomically(&component("swap_v2"), &target);
    eventually("v2 swapped in", 10 * SECOND, || server.app.telemetry.metrics.reloads(true) == 1).await;
    assert_eq!(get(&client, &server.url("/swap")).await.body, "v2", "new requests get v2");
    release(&server, "across").await;
    let reply = held.await.unwrap();
    assert_eq!((reply.status, reply.body.as_str()), (200, "v1"), "the held request stays on v1");
    server.stop().await;
}

#[tokio::test]
async fn admin_reload_of_one_component_swaps_only_when_it_changed() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("swap.wasm");
    std::fs::copy(component("swap_v1"), &target).unwrap();
    let options = wharf::LoadOptions { watch: false, ..Default::default() };
    let server = TestServer::start_with(dir.path(), SWAP_APP, options).await;
    let client = http1_client();
    let reload = |query: &str| {
        let request = http::Request::post(server.admin_url(&format!("/admin/reload{query}")))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        send(&client, request)
    };
    let reply = reload("?component=swap").await;
    assert_eq!(reply.json()["unchanged"], serde_json::json!(["swap"]), "{}", reply.body);
    install_atomically(&component("swap_v2"), &target);
    assert_eq!(get(&client, &server.url("/swap")).await.body, "v1", "nothing watches: still v1");
    let reply = reload("?component=swap").await;
    assert_eq!((reply.status, reply.json()["swapped"].clone()), (200, serde_json::json!(["swap"])));
    assert_eq!(get(&client, &server.url("/swap")).await.body, "v2");
    let reply = reload("?component=nope").await;
    assert_eq!(reply.status, 422);
    assert!(reply.json()["error"].as_str().unwrap().contains("no component \"nope\""), "{}", reply.body);
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

    let entries: Vec<_> = std::fs::read_dir(dir.path().join(".wharf/cache"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .collect();
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

#[tokio::test]
async fn during_the_drain_delay_the_host_serves_says_not_ready_and_sends_clients_away() {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    // A delay far longer than the test: it ends with the second signal.
    let manifest = "[server]\nkey_value = \"memory\"\ndrain_delay_secs = 600\nshutdown_timeout_secs = 5\n\n[[route]]\npath = \"/hello\"\ncomponent = \"hello\"\n\n[component.hello]\nsource = \"{components}/hello.wasm\"\n";
    let (mut server, _dir) = TestServer::start(manifest).await;
    let client = http1_client();
    let (ready, live) = (server.admin_url("/readyz"), server.admin_url("/livez"));
    assert_eq!(get(&client, &ready).await.status, 200);
    let alive = get(&client, &live).await;
    assert_eq!((alive.status, alive.json()["status"].as_str()), (200, Some("alive")));
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let (mut h2, h2_connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await.unwrap();
    let h2_connection = tokio::spawn(h2_connection);
    let hello =
        http::Request::get(server.url("/hello")).body(http_body_util::Empty::<bytes::Bytes>::new()).unwrap();
    assert_eq!(h2.send_request(hello).await.unwrap().status(), 200);

    server.begin_shutdown();
    eventually("the drain begun", 5 * SECOND, || server.app.is_draining()).await;
    let readiness = get(&client, &ready).await;
    assert_eq!((readiness.status, readiness.json()["status"].as_str()), (503, Some("draining")));
    assert_eq!(get(&client, &server.admin_url("/healthz")).await.json()["status"], "draining");
    assert_eq!(get(&client, &live).await.status, 200, "draining is not dying");
    // The HTTP/2 connection is sent GOAWAY and ends...
    tokio::time::timeout(10 * SECOND, h2_connection)
        .await
        .expect("GOAWAY ends the connection")
        .unwrap()
        .unwrap();
    // ...while new connections are still accepted and served, each told to
    // close after its response.
    for _ in 0..3 {
        let reply = get(&http1_client(), &server.url("/hello")).await;
        assert_eq!(
            (reply.status, reply.headers.get("connection").map(|v| v.to_str().unwrap())),
            (200, Some("close"))
        );
    }
    // The second signal ends the delay: the listener closes, then the drain.
    server.app.cancel_in_flight();
    server.wait_stopped().await;
    assert!(tokio::net::TcpStream::connect(server.addr).await.is_err(), "no longer accepting");
}
