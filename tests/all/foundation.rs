//! The foundation: hello over HTTP/1.1 and HTTP/2, the concurrent counter
//! and its durability, traps, routing.

use crate::harness::{TestServer, eventually, get, http1_client, http2_client, live};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const APP: &str = r#"
[server]
data_dir = "data"

[[route]]
path = "/hello"
component = "hello"

[[route]]
path = "/api/..."
component = "counter"

[[route]]
path = "/trap"
component = "trap"

[component.hello]
source = "{components}/hello.wasm"

[component.counter]
source = "{components}/counter.wasm"
key_value_stores = ["default"]

[component.trap]
source = "{components}/fault.wasm"
"#;

#[tokio::test]
async fn hello_over_http1_and_http2() {
    let (server, _dir) = TestServer::start(APP).await;
    let reply = get(&http1_client(), &server.url("/hello")).await;
    assert_eq!((reply.status, reply.version), (200, http::Version::HTTP_11));
    assert_eq!(reply.body, "Hello, world!\n");
    assert_eq!(reply.headers["content-type"], "text/plain; charset=utf-8");

    let reply = get(&http2_client(), &server.url("/hello")).await;
    assert_eq!((reply.status, reply.version), (200, http::Version::HTTP_2));
    assert_eq!(reply.body, "Hello, world!\n");
    server.stop().await;
}

#[tokio::test]
async fn unknown_paths_get_404() {
    let (server, _dir) = TestServer::start(APP).await;
    let client = http1_client();
    assert_eq!(get(&client, &server.url("/nope")).await.status, 404);
    assert_eq!(get(&client, &server.url("/hello/deeper")).await.status, 404);
    // `/api/...` is a prefix route: the path below it reaches the counter.
    let reply = get(&client, &server.url("/api/users/7?x=1")).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["path"], "/api/users/7");
    server.stop().await;
}

#[tokio::test]
async fn ten_concurrent_counter_requests_overlap_and_count_distinctly() {
    let app = APP.replace(
        "key_value_stores = [\"default\"]",
        "key_value_stores = [\"default\"]\nconfig = { delay_ms = \"2000\" }",
    );
    let (server, _dir) = TestServer::start(&app).await;
    let client = http1_client();
    let url = server.url("/api");
    let started = Instant::now();
    let replies =
        tokio::spawn(async move { futures::future::join_all((0..10).map(|_| get(&client, &url))).await });
    // All ten are inside their instances at once.
    eventually("ten instances at once", Duration::from_secs(2), || live(&server) == 10).await;
    let replies = replies.await.unwrap();
    let elapsed = started.elapsed();

    let mut numbers = BTreeSet::new();
    for reply in &replies {
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(reply.headers["content-type"], "application/json");
        let json = reply.json();
        assert_eq!(json["method"], "GET");
        assert_eq!(json["path"], "/api");
        numbers.insert(json["request_num"].as_u64().unwrap());
    }
    assert_eq!(numbers, (1..=10).collect::<BTreeSet<u64>>());
    // Each request waits 2 s inside its instance: together, about 2 s.
    assert!(elapsed >= Duration::from_secs(2), "answered before the 2 s delay: {elapsed:?}");
    assert!(elapsed < Duration::from_secs(3), "requests did not overlap: {elapsed:?}");
    server.stop().await;
}

#[tokio::test]
async fn a_thousand_concurrent_increments_are_exact_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let app = APP
        .replace(
            "key_value_stores = [\"default\"]",
            "key_value_stores = [\"default\"]\nconfig = { delay_ms = \"0\" }",
        )
        .replace("[server]", "[server]\nmax_requests_in_flight_per_client = 0");
    let server = TestServer::start_in(dir.path(), &app).await;
    let client = http1_client();
    let url = server.url("/api");
    let replies = futures::future::join_all((0..1000).map(|_| get(&client, &url))).await;
    let mut numbers = BTreeSet::new();
    for reply in &replies {
        assert_eq!(reply.status, 200, "{}", reply.body);
        numbers.insert(reply.json()["request_num"].as_u64().unwrap());
    }
    assert_eq!(numbers, (1..=1000).collect::<BTreeSet<u64>>());
    server.stop().await;

    let server = TestServer::start_in(dir.path(), &app).await;
    let reply = get(&http1_client(), &server.url("/api")).await;
    assert_eq!(reply.json()["request_num"], 1001);
    server.stop().await;
}

#[tokio::test]
async fn a_trapping_component_gets_500_and_the_host_keeps_serving() {
    let (server, _dir) = TestServer::start(APP).await;
    let client = http1_client();
    let reply = get(&client, &server.url("/trap")).await;
    assert_eq!(reply.status, 500);
    assert_eq!(reply.body, "Internal Server Error\n", "no internals leak to the client");
    assert_eq!(get(&client, &server.url("/trap?mode=ok")).await.status, 200);
    assert_eq!(get(&client, &server.url("/hello")).await.status, 200);
    crate::harness::eventually("instances dropped", Duration::from_secs(5), || {
        server.app.telemetry.metrics.live_instances() == 0
    })
    .await;
    server.stop().await;
}

#[tokio::test]
async fn exact_routes_beat_prefixes_and_longer_prefixes_beat_shorter() {
    let manifest = r#"
[server]
key_value = "memory"

[[route]]
path = "/..."
component = "v2"

[[route]]
path = "/a/..."
component = "echo"

[[route]]
path = "/a/b/..."
component = "v1"

[[route]]
path = "/a/b/c"
component = "hello"

[component.hello]
source = "{components}/hello.wasm"

[component.v1]
source = "{components}/swap_v1.wasm"

[component.v2]
source = "{components}/swap_v2.wasm"

[component.echo]
source = "{components}/echo.wasm"
"#;
    let (server, _dir) = TestServer::start(manifest).await;
    let client = http1_client();
    let body = |path: &'static str| {
        let (client, url) = (client.clone(), server.url(path));
        async move { get(&client, &url).await.body }
    };
    assert_eq!(body("/a/b/c").await, "Hello, world!\n", "exact");
    assert_eq!(body("/a/b/c/").await, "Hello, world!\n", "exact, trailing slash");
    assert_eq!(body("/a/b/c/d").await, "v1", "below the exact path: the longer prefix");
    assert_eq!(body("/a/b").await, "v1", "a prefix matches itself");
    assert_eq!(body("/a/bc").await, "", "/a/bc is under /a, not /a/b (echo of an empty body)");
    assert_eq!(body("/a").await, "");
    assert_eq!(body("/b").await, "v2", "everything else: the catch-all");
    assert_eq!(body("/").await, "v2");
    server.stop().await;
}
