//! WASI 0.3 components beside WASI 0.2 ones, through the same request
//! path: the p3 twins of `hello` and `stream`, `probe-p3` (outbound,
//! key-value, memory, CPU and output from the 0.3 side), and a component
//! built with Spin's SDK 7.

use crate::harness::*;
use crate::upstream::Upstream;
use std::time::Duration;

const SECOND: Duration = Duration::from_secs(1);

const APP: &str = r#"
[server]
key_value = "memory"
{server}

[[route]]
path = "/hello"
component = "hello"

[[route]]
path = "/hello-p3"
component = "hello-p3"
timeout_secs = 1

[[route]]
path = "/probe-p3"
component = "probe-p3"
timeout_secs = 60

[[route]]
path = "/small-p3"
component = "small-p3"

[[route]]
path = "/stream-p3"
component = "stream-p3"

[[route]]
path = "/spin"
component = "spin"

[component.hello]
source = "{components}/hello.wasm"

[component.hello-p3]
source = "{components}/hello_p3.wasm"

[component.probe-p3]
source = "{components}/probe_p3.wasm"
allowed_outbound_hosts = ["http://127.0.0.1:*", "http://self"]
key_value_stores = ["default"]

[component.small-p3]
source = "{components}/probe_p3.wasm"
max_memory_mb = 16

[component.stream-p3]
source = "{components}/stream_p3.wasm"

[component.spin]
source = "{components}/spin_hello.wasm"
"#;

fn app(server: &str) -> String {
    APP.replace("{server}", server)
}

#[tokio::test]
async fn p3_hello_answers_over_http1_and_http2_beside_p2() {
    let (server, _dir) = TestServer::start(&app("")).await;
    for client in [http1_client(), http2_client()] {
        let reply = get(&client, &server.url("/hello-p3")).await;
        assert_eq!((reply.status, reply.body.as_str()), (200, "Hello, world!\n"), "{:?}", reply.version);
        assert_eq!(reply.headers["content-type"], "text/plain; charset=utf-8");
        assert_eq!(get(&client, &server.url("/hello")).await.body, "Hello, world!\n");
    }
    eventually("instances gone", 5 * SECOND, || live(&server) == 0).await;
    server.stop().await;
}

#[tokio::test]
async fn a_spin_sdk_7_component_answers_through_a_route() {
    let (server, _dir) = TestServer::start(&app("")).await;
    let reply = get(&http1_client(), &server.url("/spin")).await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "Hello from Spin!\n"));
    server.stop().await;
}

#[tokio::test]
async fn p3_outbound_calls_go_through_the_pooled_allow_listed_client() {
    let (server, _dir) = TestServer::start(&app("")).await;
    let upstream = Upstream::start().await;
    let client = http1_client();
    let fetch = |url: String| server.url(&format!("/probe-p3?fetch={url}"));

    for _ in 0..3 {
        let reply = get(&client, &fetch(upstream.url("/ok"))).await;
        assert_eq!((reply.status, reply.body.as_str()), (200, "200 ok"));
    }
    assert_eq!(upstream.accepted(), 1, "one pooled connection for three calls one after another");

    let own = get(&client, &fetch("http://self/hello".into())).await;
    assert_eq!((own.status, own.body.as_str()), (200, "200 Hello, world!\n"), "self is served in process");

    // Allowed as 127.0.0.1, not as localhost.
    let denied = get(&client, &fetch(format!("http://localhost:{}/ok", upstream.addr.port()))).await;
    assert_eq!((denied.status, denied.body.as_str()), (502, "ErrorCode::HttpRequestDenied"));
    assert_eq!(upstream.accepted(), 1, "nothing more reached the upstream");
    let metrics = get(&client, &server.admin_url("/metrics")).await.body;
    assert!(metrics.contains("wharf_outbound_denied_total 1"), "{metrics}");
    eventually("instances gone", 5 * SECOND, || live(&server) == 0).await;
    server.stop().await;
}

#[tokio::test]
async fn a_spinning_p3_guest_delays_its_neighbours_by_about_one_tick() {
    // One runtime thread, and on it a 0.3 guest that never stops computing.
    let (server, _dir) = TestServer::start(&app("threads = 1")).await;
    let spinner = {
        let (client, url) = (http1_client(), server.url("/probe-p3?spin=1"));
        tokio::spawn(async move { get(&client, &url).await })
    };
    eventually("the spinner runs", 5 * SECOND, || live(&server) == 1).await;
    let client = http1_client();
    let mut latencies = Vec::new();
    for path in ["/hello", "/hello-p3"] {
        for _ in 0..100 {
            let started = std::time::Instant::now();
            assert_eq!(get(&client, &server.url(path)).await.status, 200);
            latencies.push(started.elapsed());
        }
    }
    latencies.sort();
    let (p50, p99) = (latencies[100], latencies[198]);
    println!("hello (0.2 and 0.3) beside a spinning 0.3 guest: p50 {p50:?}, p99 {p99:?}");
    // A tick is 10 ms; a guest that never yielded would hold the one
    // thread for its whole life (60 s).
    assert!(p99 < Duration::from_millis(40), "p50 {p50:?}, p99 {p99:?}");
    // The spinner's client leaves: the spinning instance goes with it.
    spinner.abort();
    eventually("the spinner is gone", 5 * SECOND, || live(&server) == 0).await;
    server.stop().await;
}

#[tokio::test]
async fn a_p3_guest_is_held_to_its_memory_limit_below_the_servers_ceiling() {
    let (server, _dir) = TestServer::start(&app("")).await;
    let client = http1_client();
    // The guest grows its memory until the host refuses: measured on the
    // instance itself.
    let small = get(&client, &server.url("/small-p3?grow=1")).await;
    assert_eq!((small.status, small.body), (200, format!("memory_bytes {}\n", 16 << 20)));
    let roomy = get(&client, &server.url("/probe-p3?grow=1")).await;
    assert_eq!((roomy.status, roomy.body), (200, format!("memory_bytes {}\n", 64 << 20)));
    assert_eq!(get(&client, &server.url("/small-p3")).await.body, "Hello, world!\n");
    eventually("instances gone", 5 * SECOND, || live(&server) == 0).await;
    server.stop().await;
}

#[tokio::test]
async fn p3_guests_share_key_value_state_on_each_embedded_store() {
    for store in ["memory", "redb"] {
        let (server, _dir) = TestServer::start(
            &app("").replace("key_value = \"memory\"", &format!("key_value = \"{store}\"")),
        )
        .await;
        let client = http2_client();
        for expected in 1..=3 {
            let reply = get(&client, &server.url("/probe-p3?incr=hits")).await;
            assert_eq!((reply.status, reply.body), (200, format!("count {expected}\n")), "{store}");
        }
        // 40 instances at once, each its own increment: none lost or repeated.
        let replies = futures::future::join_all((0..40).map(|_| {
            let (client, url) = (client.clone(), server.url("/probe-p3?incr=hits"));
            async move { get(&client, &url).await }
        }))
        .await;
        let mut counts: Vec<u64> = replies
            .iter()
            .map(|r| r.body.trim().strip_prefix("count ").and_then(|n| n.parse().ok()).expect(&r.body))
            .collect();
        counts.sort();
        assert_eq!(counts, (4..=43).collect::<Vec<u64>>(), "{store}");
        // A component not granted the store is refused.
        let denied = get(&client, &server.url("/small-p3?incr=hits")).await;
        assert_eq!((denied.status, denied.body.as_str()), (500, "Error::AccessDenied\n"), "{store}");
        eventually("instances gone", 5 * SECOND, || live(&server) == 0).await;
        server.stop().await;
    }
}

#[tokio::test]
async fn p3_guest_output_is_prefixed_and_escaped_like_p2s() {
    guest_output_of_one_request(&app(""), "/probe-p3?print=1", "probe-p3").await;
}

#[tokio::test]
async fn p3_requests_past_the_limit_get_503_and_slow_ones_504() {
    let (server, _dir) =
        TestServer::start(&app("max_concurrent_requests = 4\nmax_requests_in_flight_per_client = 0")).await;
    let client = http1_client();
    let held: Vec<_> = (0..4).map(|_| raw_get(&server, "/stream-p3?n=2&interval_ms=60000")).collect();
    let held = futures::future::join_all(held).await;
    eventually("4 p3 instances alive", 5 * SECOND, || live(&server) == 4).await;
    for _ in 0..3 {
        let reply = get(&client, &server.url("/hello-p3")).await;
        assert_eq!((reply.status, reply.headers["retry-after"].to_str().unwrap()), (503, "1"));
    }
    drop(held);
    eventually("instances gone", 5 * SECOND, || live(&server) == 0 && in_flight(&server) == 0).await;
    // No headers within the route's 1 s: 504, and the instance is dropped.
    let slow = get(&client, &server.url("/hello-p3?wait_ms=10000")).await;
    assert_eq!(slow.status, 504);
    eventually("slow instance gone", 5 * SECOND, || live(&server) == 0).await;
    server.stop().await;
}

#[tokio::test]
async fn p3_streams_arrive_in_order_one_event_at_a_time() {
    let (server, _dir) = TestServer::start(&app("")).await;
    let reply = get(&http1_client(), &server.url("/stream-p3?n=3&interval_ms=5")).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.headers["content-type"], "text/event-stream");
    assert_eq!(
        reply.body,
        "id: 1\ndata: event 1 of 3\n\nid: 2\ndata: event 2 of 3\n\nid: 3\ndata: event 3 of 3\n\n"
    );
    for client in [http1_client(), http2_client()] {
        let response = get_streaming(&client, &server.url("/stream-p3?n=2&interval_ms=2000")).await;
        let mut body = response.into_body();
        let first = next_data(&mut body, 5 * SECOND).await.unwrap();
        assert!(first.starts_with("id: 1\n"), "{first:?}");
        assert_eq!(
            next_data(&mut body, Duration::from_millis(300)).await,
            None,
            "the second event came early"
        );
    }
    server.stop().await;
}

/// A body the guest has written by the time its headers would go out leaves
/// with them, its length known (a WASI 0.3 guest's is written by a task it
/// spawns as it returns the response); a body still coming streams chunked.
#[tokio::test]
async fn a_body_ready_with_its_headers_goes_out_with_its_length_and_a_coming_one_chunked() {
    let (server, _dir) = TestServer::start(&app("")).await;
    let client = http1_client();
    for path in ["/hello-p3", "/hello"] {
        for _ in 0..3 {
            let reply = get(&client, &server.url(path)).await;
            assert_eq!(reply.body, "Hello, world!\n");
            assert_eq!(
                reply.headers.get("content-length").map(|v| v.to_str().unwrap()),
                Some("14"),
                "{path}"
            );
            assert!(reply.headers.get("transfer-encoding").is_none(), "{path}");
        }
    }
    let response = get_streaming(&client, &server.url("/stream-p3?n=2&interval_ms=100")).await;
    assert_eq!(response.headers()["transfer-encoding"], "chunked");
    assert!(response.headers().get("content-length").is_none());
    let body = http_body_util::BodyExt::collect(response.into_body()).await.unwrap().to_bytes();
    assert_eq!(body, "id: 1\ndata: event 1 of 2\n\nid: 2\ndata: event 2 of 2\n\n");
    server.stop().await;
}

#[tokio::test]
async fn p3_instances_are_dropped_when_the_client_leaves() {
    let (server, _dir) = TestServer::start(&app("")).await;
    // HTTP/1.1: before the headers, and mid-stream.
    let before = raw_get(&server, "/hello-p3?wait_ms=60000").await;
    eventually("instance started", 5 * SECOND, || live(&server) == 1).await;
    drop(before);
    eventually("instance dropped", 5 * SECOND, || live(&server) == 0).await;
    let mut mid = raw_get(&server, "/stream-p3?n=100&interval_ms=500").await;
    read_until(&mut mid, "data: event 1").await;
    drop(mid);
    eventually("instance dropped", 5 * SECOND, || live(&server) == 0).await;
    // HTTP/2: a reset stream, before the headers and mid-stream.
    let client = http2_client();
    let url = server.url("/hello-p3?wait_ms=60000");
    let pending = {
        let client = client.clone();
        tokio::spawn(async move { get(&client, &url).await })
    };
    eventually("instance started", 5 * SECOND, || live(&server) == 1).await;
    pending.abort();
    eventually("instance dropped", 5 * SECOND, || live(&server) == 0).await;
    let response = get_streaming(&client, &server.url("/stream-p3?n=100&interval_ms=500")).await;
    let mut body = response.into_body();
    assert!(next_data(&mut body, 5 * SECOND).await.unwrap().starts_with("id: 1"));
    drop(body);
    eventually("instance dropped", 5 * SECOND, || live(&server) == 0 && in_flight(&server) == 0).await;
    assert_eq!(cancelled(&server), 4);
    server.stop().await;
}

#[tokio::test]
async fn a_p3_instance_lives_at_most_its_max_duration() {
    let manifest = app("").replace(
        "path = \"/stream-p3\"\ncomponent = \"stream-p3\"",
        "path = \"/stream-p3\"\ncomponent = \"stream-p3\"\ntimeout_secs = 1\nmax_duration_secs = 1",
    );
    let (server, _dir) = TestServer::start(&manifest).await;
    // A stream that would run 1,000 s.
    let started = std::time::Instant::now();
    let response = get_streaming(&http1_client(), &server.url("/stream-p3?n=10000&interval_ms=100")).await;
    let body = response.into_body();
    let rest = tokio::time::timeout(10 * SECOND, http_body_util::BodyExt::collect(body)).await;
    assert!(rest.expect("the stream outlived its max duration").is_err(), "cut with an error");
    let took = started.elapsed();
    assert!(took >= SECOND && took < 2 * SECOND, "cut after {took:?} against a 1 s max duration");
    eventually("instance gone", 5 * SECOND, || live(&server) == 0 && in_flight(&server) == 0).await;
    let killed = server.app.telemetry.metrics.instances_killed("max_duration", "streaming");
    assert_eq!(killed, 1, "killed by its lifetime bound");
    server.stop().await;
}

#[tokio::test]
async fn hot_swap_between_p2_and_p3_under_load_fails_no_request() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("hello.wasm");
    std::fs::copy(component("hello"), &target).unwrap();
    let manifest = "[server]\nkey_value = \"memory\"\n\n[[route]]\npath = \"/hello\"\ncomponent = \"hello\"\n\n[component.hello]\nsource = \"hello.wasm\"\n";
    let server = TestServer::start_in(dir.path(), manifest).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (client, url, stop) = (http1_client(), server.url("/hello"), stop.clone());
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    statuses.push(get(&client, &url).await.status);
                }
                statuses
            })
        })
        .collect();
    let client = http1_client();
    for (swap, (file, p3)) in
        [("hello_p3", true), ("hello", false), ("hello_p3", true), ("hello", false)].into_iter().enumerate()
    {
        let partial = target.with_extension("partial");
        std::fs::copy(component(file), &partial).unwrap();
        std::fs::rename(&partial, &target).unwrap();
        let deadline = std::time::Instant::now() + 20 * SECOND;
        loop {
            let reply = get(&client, &server.url("/hello")).await;
            assert_eq!(reply.status, 200);
            if reply.headers.contains_key("x-wasi") == p3 {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "swap {swap} to {file} never took effect");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut served = 0;
    for task in load {
        for status in task.await.unwrap() {
            assert_eq!(status, 200);
            served += 1;
        }
    }
    assert!(served > 20, "the load never ran ({served} requests)");
    assert!(server.app.runtime.has_p3_engine());
    server.stop().await;
}

const REUSE_APP: &str = r#"
[server]
key_value = "memory"

[[route]]
path = "/p3"
component = "hello-p3"
reuse = { max_requests = 3, max_concurrent = 2 }

[[route]]
path = "/p2"
component = "echo"
reuse = { max_requests = 4 }

[[route]]
path = "/fresh"
component = "echo"

[component.hello-p3]
source = "{components}/hello_p3.wasm"
allowed_outbound_hosts = ["http://127.0.0.1:*", "http://self"]
key_value_stores = ["default"]

[component.echo]
source = "{components}/echo.wasm"
"#;

fn header(reply: &Reply, name: &str) -> u64 {
    reply.headers[name].to_str().unwrap().parse().unwrap()
}

#[tokio::test]
async fn reused_instances_count_their_requests_and_retire_at_their_maximum() {
    let (server, _dir) = TestServer::start(REUSE_APP).await;
    let client = http1_client();
    let mut taken = Vec::new();
    for _ in 0..7 {
        let reply = get(&client, &server.url("/p3")).await;
        assert_eq!(reply.status, 200);
        taken.push(header(&reply, "x-instance-requests"));
    }
    assert_eq!(taken, [1, 2, 3, 1, 2, 3, 1], "a new instance after every third request");
    let mut counts = Vec::new();
    for _ in 0..5 {
        counts.push(get(&client, &server.url("/p2?count")).await.body);
    }
    assert_eq!(counts, ["1", "2", "3", "4", "1"], "WASI 0.2 instances are reused one request at a time");
    // Without reuse, every request has an instance of its own.
    for _ in 0..3 {
        assert_eq!(get(&client, &server.url("/fresh?count")).await.body, "1");
    }
    server.stop().await;
}

#[tokio::test]
async fn a_reused_instance_never_takes_more_than_its_concurrency() {
    // One server thread: reused instances are kept per thread, so which
    // instance B and C may share depends on the threads their connections
    // land on.
    let manifest = REUSE_APP
        .replace("max_requests = 3,", "max_requests = 100,")
        .replace("[server]", "[server]\nthreads = 1");
    let (server, _dir) = TestServer::start(&manifest).await;
    let client = http1_client();
    // A waits in its instance; B and C come while it does. The instance
    // has room for one of them (two at once); the other needs a new one.
    let first = {
        let (client, url) = (client.clone(), server.url("/p3?wait_ms=1500"));
        tokio::spawn(async move { get(&client, &url).await })
    };
    eventually("the first request waits in its instance", 5 * SECOND, || live(&server) == 1).await;
    let url = server.url("/p3?wait_ms=300");
    let (b, c) = tokio::join!(get(&client, &url), get(&client, &url));
    let first = first.await.unwrap();
    assert_eq!(header(&first, "x-instance-in-hand"), 1);
    let mut in_hand = [header(&b, "x-instance-in-hand"), header(&c, "x-instance-in-hand")];
    in_hand.sort();
    assert_eq!(in_hand, [1, 2], "one shared the first's instance, the other got its own");
    server.stop().await;
}

#[tokio::test]
async fn a_busy_reused_instance_still_sends_its_body_with_its_headers() {
    // One server thread and instances serving 16 requests at once: each
    // instance's worker yields to the thread between its requests' tasks,
    // so a body ends many turns after its headers (0 to 60 measured at 100
    // connections). Waiting two turns sent 61-67% of these responses with
    // their length, the rest chunked, the terminator in a write of its own;
    // the wait's 10 ms cap lets a few go chunked where the machine is busy
    // (444-480 of 480 measured with two other processes spinning).
    let manifest = REUSE_APP
        .replace("max_requests = 3, max_concurrent = 2", "max_requests = 100000, max_concurrent = 16")
        .replace("[server]", "[server]\nthreads = 1")
        + "\n[[route]]\npath = \"/stream\"\ncomponent = \"stream-p3\"\n\
           reuse = { max_requests = 100, max_concurrent = 16 }\n\
           [component.stream-p3]\nsource = \"{components}/stream_p3.wasm\"\n";
    let (server, _dir) = TestServer::start(&manifest).await;
    let client = http1_client();
    let loads: Vec<_> = (0..24)
        .map(|_| {
            let (client, url) = (client.clone(), server.url("/p3"));
            tokio::spawn(async move {
                let mut with_length = 0;
                for _ in 0..20 {
                    let reply = get(&client, &url).await;
                    assert_eq!(reply.body, "Hello, world!\n");
                    with_length += usize::from(reply.headers.get("content-length").is_some());
                }
                with_length
            })
        })
        .collect();
    // The wait is bounded (32 turns, none started after 10 ms): a stream
    // whose second event is 5 s away gets its headers and first event
    // while the thread is busy, chunked, not held until it ends.
    let stream =
        tokio::time::timeout(2 * SECOND, get_streaming(&client, &server.url("/stream?n=2&interval_ms=5000")))
            .await
            .expect("the headers of a reused stream are not held until it ends");
    assert_eq!(stream.headers()["transfer-encoding"], "chunked");
    let mut body = stream.into_body();
    assert!(next_data(&mut body, 2 * SECOND).await.unwrap().starts_with("id: 1"));
    drop(body);
    let mut with_length = 0;
    for load in loads {
        with_length += load.await.unwrap();
    }
    assert!(with_length >= 384, "{with_length} of 480 responses went out with their length");
    server.stop().await;
}
