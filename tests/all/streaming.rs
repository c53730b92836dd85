//! Streaming responses, client-disconnect cancellation and deadlines.

use crate::harness::*;
use std::time::Duration;

const APP: &str = r#"
[server]
key_value = "memory"

[[route]]
path = "/hello"
component = "hello"

[[route]]
path = "/stream"
component = "stream"

[[route]]
path = "/long"
component = "long-running"
timeout_secs = 1

[[route]]
path = "/hold"
component = "hold"

[[route]]
path = "/fault"
component = "fault"
timeout_secs = 1
idle_timeout_secs = 0.3

[[route]]
path = "/short-stream"
component = "stream"
timeout_secs = 1
max_duration_secs = 1

[component.hello]
source = "{components}/hello.wasm"

[component.stream]
source = "{components}/stream.wasm"

[component.long-running]
source = "{components}/long_running.wasm"

[component.hold]
source = "{components}/hold.wasm"
key_value_stores = ["default"]

[component.fault]
source = "{components}/fault.wasm"
max_memory_mb = 32
"#;

const SECOND: Duration = Duration::from_secs(1);

#[tokio::test]
async fn stream_sends_server_sent_events_in_order() {
    let (server, _dir) = TestServer::start(APP).await;
    let reply = get(&http1_client(), &server.url("/stream?n=3&interval_ms=5")).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.headers["content-type"], "text/event-stream");
    assert_eq!(reply.headers["cache-control"], "no-cache");
    assert_eq!(
        reply.body,
        "id: 1\ndata: event 1 of 3\n\nid: 2\ndata: event 2 of 3\n\nid: 3\ndata: event 3 of 3\n\n"
    );
    server.stop().await;
}

#[tokio::test]
async fn each_event_reaches_the_client_before_the_next_is_produced() {
    let (server, _dir) = TestServer::start(APP).await;
    for (index, client) in [http1_client(), http2_client()].into_iter().enumerate() {
        // The guest sends `first`, then holds until the test releases it.
        let key = format!("go-{index}");
        let response = get_streaming(&client, &server.url(&format!("/hold?wait={key}&stream=1"))).await;
        assert_eq!(response.status(), 200);
        let mut body = response.into_body();
        assert_eq!(next_data(&mut body, 5 * SECOND).await.as_deref(), Some("first\n"));
        assert_eq!(next_data(&mut body, Duration::from_millis(200)).await, None, "second came unreleased");
        assert_eq!(get(&client, &server.url(&format!("/hold?release={key}"))).await.status, 200);
        assert_eq!(next_data(&mut body, 5 * SECOND).await.as_deref(), Some("second\n"));
    }

    // The stream component too: event 1 arrives while event 2 is 2 s away.
    let response = get_streaming(&http1_client(), &server.url("/stream?n=2&interval_ms=2000")).await;
    let mut body = response.into_body();
    let first = next_data(&mut body, 5 * SECOND).await.unwrap();
    assert!(first.starts_with("id: 1\n"), "{first:?}");
    assert_eq!(next_data(&mut body, Duration::from_millis(300)).await, None);
    server.stop().await;
}

#[tokio::test]
async fn http1_disconnect_before_headers_frees_the_instance() {
    let (server, _dir) = TestServer::start(APP).await;
    let socket = raw_get(&server, "/long?ms=10000").await;
    eventually("instance started", 5 * SECOND, || live(&server) == 1).await;
    drop(socket);
    eventually("instance dropped", 5 * SECOND, || live(&server) == 0).await;
    eventually("cancellation counted", 5 * SECOND, || cancelled(&server) == 1).await;
    eventually("admission permit released", 5 * SECOND, || in_flight(&server) == 0).await;
    server.stop().await;
}

#[tokio::test]
async fn http1_disconnect_mid_stream_frees_the_instance() {
    let (server, _dir) = TestServer::start(APP).await;
    let mut socket = raw_get(&server, "/stream?n=100&interval_ms=500").await;
    let head = read_until(&mut socket, "data: event 1").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(live(&server), 1);
    drop(socket);
    eventually("instance dropped", 5 * SECOND, || live(&server) == 0).await;
    eventually("cancellation counted", 5 * SECOND, || cancelled(&server) == 1).await;
    server.stop().await;
}

#[tokio::test]
async fn http2_reset_before_headers_frees_the_instance() {
    let (server, _dir) = TestServer::start(APP).await;
    let client = http2_client();
    let url = server.url("/long?ms=10000");
    let pending = tokio::spawn(async move { get(&client, &url).await });
    eventually("instance started", 5 * SECOND, || live(&server) == 1).await;
    pending.abort(); // drops the request future: the client resets the stream
    eventually("instance dropped", 5 * SECOND, || live(&server) == 0).await;
    eventually("cancellation counted", 5 * SECOND, || cancelled(&server) == 1).await;
    server.stop().await;
}

#[tokio::test]
async fn http2_reset_mid_stream_frees_the_instance() {
    let (server, _dir) = TestServer::start(APP).await;
    let client = http2_client();
    let response = get_streaming(&client, &server.url("/stream?n=100&interval_ms=500")).await;
    let mut body = response.into_body();
    assert!(next_data(&mut body, 5 * SECOND).await.unwrap().starts_with("id: 1"));
    assert_eq!(live(&server), 1);
    drop(body);
    eventually("instance dropped", 5 * SECOND, || live(&server) == 0).await;
    eventually("cancellation counted", 5 * SECOND, || cancelled(&server) == 1).await;
    // The connection itself is still good.
    assert_eq!(get(&client, &server.url("/hello")).await.status, 200);
    server.stop().await;
}

#[tokio::test]
async fn a_spinning_guest_gets_504_while_others_are_served() {
    // One runtime thread: hello is served only if the spinners yield it.
    let (server, _dir) = TestServer::start(&APP.replace("[server]", "[server]\nthreads = 1")).await;
    let client = http1_client();
    let spin_url = server.url("/fault?mode=loop");
    let spinning = {
        let client = client.clone();
        tokio::spawn(async move { get(&client, &spin_url).await })
    };
    let cpu_url = server.url("/long?ms=60000&mode=cpu");
    let burning = {
        let client = client.clone();
        tokio::spawn(async move { get(&client, &cpu_url).await })
    };
    eventually("guests running", 5 * SECOND, || live(&server) == 2).await;
    // The one thread has two guests spinning; hello still gets through.
    for _ in 0..20 {
        assert_eq!(get(&client, &server.url("/hello")).await.status, 200);
    }
    let spun = spinning.await.unwrap();
    assert_eq!(spun.status, 504);
    assert_eq!(spun.body, "Gateway Timeout\n");
    assert_eq!(burning.await.unwrap().status, 504);
    eventually("instances dropped", 5 * SECOND, || live(&server) == 0).await;
    assert_eq!(server.app.telemetry.metrics.timed_out_total(), 2);
    assert_eq!(get(&client, &server.url("/hello")).await.status, 200);
    server.stop().await;
}

#[tokio::test]
async fn an_idle_stream_is_cut_at_its_idle_timeout() {
    let (server, _dir) = TestServer::start(APP).await;
    let client = http1_client();
    let response = get_streaming(&client, &server.url("/fault?mode=slow&chunks=3&ms=5000")).await;
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    assert_eq!(next_data(&mut body, 5 * SECOND).await.as_deref(), Some("chunk 0\n"));
    // The next chunk is 5 s away; the route allows 0.3 s of silence.
    let rest = tokio::time::timeout(5 * SECOND, http_body_util::BodyExt::collect(body)).await.unwrap();
    assert!(rest.is_err(), "the stream should end with an error, not complete");
    eventually("instance dropped", 5 * SECOND, || live(&server) == 0).await;
    assert_eq!(server.app.telemetry.metrics.timed_out_total(), 1);
    assert_eq!(get(&client, &server.url("/hello")).await.status, 200);
    server.stop().await;
}

#[tokio::test]
async fn a_stream_is_cut_at_its_max_duration() {
    let (server, _dir) = TestServer::start(APP).await;
    let client = http1_client();
    // 100 events 100 ms apart would take 10 s; the route allows 1 s in all.
    let response = get_streaming(&client, &server.url("/short-stream?n=100&interval_ms=100")).await;
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    assert!(next_data(&mut body, 5 * SECOND).await.unwrap().starts_with("id: 1\n"));
    let rest = tokio::time::timeout(10 * SECOND, http_body_util::BodyExt::collect(body)).await;
    assert!(rest.expect("the stream outlived its max duration").is_err(), "ended with an error");
    eventually("instance dropped", 5 * SECOND, || live(&server) == 0).await;
    let line = server.access_line("the stream's line", |l| l["path"] == "/short-stream").await;
    assert_eq!(line["outcome"], "timed_out", "{line}");
    assert_eq!(line["reason"], "response stream ended by its max duration deadline", "{line}");
    server.stop().await;
}

#[tokio::test]
async fn memory_is_bounded_by_the_components_limit_below_the_servers_ceiling() {
    // The server allows 64 MiB (the default); the component 16 MiB.
    let app = APP.replace("max_memory_mb = 32", "max_memory_mb = 16")
        + "\n[[route]]\npath = \"/roomy\"\ncomponent = \"roomy\"\n\n[component.roomy]\nsource = \"{components}/fault.wasm\"\n";
    let (server, _dir) = TestServer::start(&app).await;
    let client = http1_client();
    // The guest grows its memory a page at a time until the host refuses,
    // and says how far it got: measured on the instance itself.
    let reached = |path: &str| {
        let (client, url) = (client.clone(), server.url(path));
        async move { get(&client, &url).await.json()["memory_bytes"].as_u64().unwrap() }
    };
    assert_eq!(reached("/fault?mode=grow").await, 16 << 20, "the component's own limit");
    assert_eq!(reached("/roomy?mode=grow").await, 64 << 20, "the server's ceiling");
    // An allocator that hits the limit traps; the host serves on.
    for _ in 0..5 {
        let reply = get(&client, &server.url("/fault?mode=hog")).await;
        assert_eq!((reply.status, reply.body.as_str()), (500, "Internal Server Error\n"));
    }
    assert_eq!(get(&client, &server.url("/fault?mode=ok")).await.status, 200);
    eventually("instances dropped", 5 * SECOND, || live(&server) == 0).await;
    server.stop().await;
}

#[tokio::test]
async fn a_component_over_its_table_limit_fails_to_instantiate() {
    let app = APP.replace(
        "source = \"{components}/hello.wasm\"",
        "source = \"{components}/hello.wasm\"\nmax_table_elements = 1",
    );
    let (server, _dir) = TestServer::start(&app).await;
    let client = http1_client();
    assert_eq!(get(&client, &server.url("/hello")).await.status, 500);
    let line = server.access_line("hello's line", |l| l["path"] == "/hello").await;
    assert!(line["reason"].as_str().unwrap().starts_with("instantiation failed"), "{line}");
    // The same component under the default limit instantiates.
    assert_eq!(get(&client, &server.url("/fault?mode=ok")).await.status, 200);
    server.stop().await;
}

#[tokio::test]
async fn a_panicking_guest_gets_500_and_the_host_keeps_serving() {
    let (server, _dir) = TestServer::start(APP).await;
    let client = http2_client();
    for _ in 0..3 {
        assert_eq!(get(&client, &server.url("/fault?mode=panic")).await.status, 500);
        assert_eq!(get(&client, &server.url("/hello")).await.status, 200);
    }
    server.stop().await;
}

#[tokio::test]
async fn fuel_bounds_a_guest_when_configured() {
    let app = APP.replace("max_memory_mb = 32", "max_memory_mb = 32\nfuel = 5000000");
    let (server, _dir) = TestServer::start(&app).await;
    let client = http1_client();
    assert_eq!(get(&client, &server.url("/fault?mode=ok")).await.status, 200);
    assert_eq!(get(&client, &server.url("/fault?mode=loop")).await.status, 500, "out of fuel traps");
    // 300 ms of CPU is far more than 5M fuel: only an unmetered guest ends.
    let burn = get(&client, &server.url("/long?ms=300&mode=cpu")).await;
    assert_eq!((burn.status, burn.body.as_str()), (200, "Done"), "others are unmetered");
    server.stop().await;
}

/// Not a test of speed (those belong in benchmarks): prints how long after
/// a client disconnect the instance is gone, median of 100 tries. Run with
/// `cargo test --release --test all -- --ignored --nocapture measure_`.
#[tokio::test]
#[ignore]
async fn measure_disconnect_to_instance_drop() {
    let (server, _dir) = TestServer::start(APP).await;
    let mut samples = Vec::new();
    for _ in 0..100 {
        let socket = raw_get(&server, "/long?ms=10000").await;
        eventually("instance started", 5 * SECOND, || live(&server) == 1).await;
        let closed = std::time::Instant::now();
        drop(socket);
        while live(&server) != 0 {
            tokio::task::yield_now().await;
        }
        samples.push(closed.elapsed());
    }
    samples.sort();
    println!(
        "disconnect -> instance dropped: median {:?}, p90 {:?}, max {:?}",
        samples[50], samples[90], samples[99]
    );
    server.stop().await;
}
