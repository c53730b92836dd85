//! Admission control and middleware: load shedding, rate limits, worker
//! pools, auth, connection limits, request ids, health and metrics.

use crate::harness::*;
use bytes::Bytes;
use http_body_util::Full;
use std::time::Duration;

const SECOND: Duration = Duration::from_secs(1);

fn app(server_extra: &str, hold_route_extra: &str) -> String {
    format!(
        r#"
[server]
key_value = "memory"
{server_extra}

[[route]]
path = "/hello"
component = "hello"

[[route]]
path = "/hold"
component = "hold"
{hold_route_extra}

[[route]]
path = "/echo"
component = "echo"
max_request_body_bytes = 1000

[component.hello]
source = "{{components}}/hello.wasm"

[component.hold]
source = "{{components}}/hold.wasm"
key_value_stores = ["default"]

[component.echo]
source = "{{components}}/echo.wasm"
"#
    )
}

#[tokio::test]
async fn a_burst_past_the_concurrency_limit_gets_exactly_the_extra_503s() {
    let (server, _dir) =
        TestServer::start(&app("max_concurrent_requests = 4\nmax_requests_in_flight_per_client = 0", ""))
            .await;
    let client = http1_client();
    let held: Vec<_> = (0..4)
        .map(|_| {
            let (client, url) = (client.clone(), server.url("/hold?wait=go"));
            tokio::spawn(async move { get(&client, &url).await })
        })
        .collect();
    eventually("4 instances holding", 5 * SECOND, || live(&server) == 4).await;
    let url = server.url("/hello");
    let burst = futures::future::join_all((0..6).map(|_| get(&client, &url))).await;
    for reply in &burst {
        assert_eq!(reply.status, 503);
        assert_eq!(reply.headers["retry-after"], "1");
    }
    release(&server, "go").await;
    for reply in futures::future::join_all(held).await {
        assert_eq!(reply.unwrap().status, 200);
    }
    eventually("instances gone", 5 * SECOND, || live(&server) == 0).await;
    assert_eq!(get(&client, &server.url("/hello")).await.status, 200, "capacity is back");
    let metrics = get(&client, &server.admin_url("/metrics")).await.body;
    assert!(metrics.contains(r#"wharf_rejections_total{reason="overloaded"} 6"#), "{metrics}");
    assert!(!metrics.contains(r#"status="500""#));
    server.stop().await;
}

#[tokio::test]
async fn the_global_bucket_answers_429_with_retry_after() {
    let (server, _dir) =
        TestServer::start(&app("rate_limit = { requests = 5, window_secs = 60, burst = 5 }", "")).await;
    let client = http1_client();
    for _ in 0..5 {
        assert_eq!(get(&client, &server.url("/hello")).await.status, 200);
    }
    let limited = get(&client, &server.url("/hello")).await;
    assert_eq!(limited.status, 429);
    // One token every 12 s.
    let retry_after: u64 = limited.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((11..=12).contains(&retry_after), "retry-after {retry_after}");
    // Global: another address is limited too.
    assert_eq!(
        get(&http1_client_from("127.0.0.2".parse().unwrap()), &server.url("/hello")).await.status,
        429
    );
    server.stop().await;
}

#[tokio::test]
async fn the_per_client_limit_spares_other_addresses() {
    let (server, _dir) =
        TestServer::start(&app("client_rate_limit = { requests = 3, window_secs = 60 }", "")).await;
    let first = http1_client();
    for _ in 0..3 {
        assert_eq!(get(&first, &server.url("/hello")).await.status, 200);
    }
    let limited = get(&first, &server.url("/hello")).await;
    assert_eq!(limited.status, 429);
    assert_eq!(limited.headers["retry-after"], "20");
    let second = http1_client_from("127.0.0.2".parse().unwrap());
    for _ in 0..3 {
        assert_eq!(get(&second, &server.url("/hello")).await.status, 200, "127.0.0.2 has its own bucket");
    }
    server.stop().await;
}

#[tokio::test]
async fn a_worker_pool_queues_in_order_and_sheds_past_its_queue() {
    let (server, _dir) = TestServer::start(&app("", "workers = 1\nqueue = 2")).await;
    let client = http1_client();
    let spawn_get = |path: &str| {
        let (client, url) = (client.clone(), server.url(path));
        tokio::spawn(async move { get(&client, &url).await })
    };
    let depth = |server: &TestServer| crate::harness::queue_depth(server, "/hold");
    let running = spawn_get("/hold?wait=a");
    eventually("first request running", 5 * SECOND, || live(&server) == 1).await;
    let second = spawn_get("/hold?wait=b");
    eventually("second queued", 5 * SECOND, || depth(&server) == 1).await;
    let third = spawn_get("/hold?wait=c");
    eventually("third queued", 5 * SECOND, || depth(&server) == 2).await;

    let overflow = get(&client, &server.url("/hold?wait=d")).await;
    assert_eq!(overflow.status, 503);
    assert_eq!(overflow.headers["retry-after"], "1");
    let health = get(&client, &server.admin_url("/healthz")).await.json();
    let hold = health["routes"].as_array().unwrap().iter().find(|r| r["path"] == "/hold").unwrap().clone();
    assert_eq!((hold["workers"].as_u64(), hold["queue_depth"].as_u64()), (Some(1), Some(2)));

    for key in ["b", "c", "a"] {
        release(&server, key).await;
    }
    assert_eq!(running.await.unwrap().body, "a 1");
    assert_eq!(second.await.unwrap().body, "b 2", "queued requests run in arrival order");
    assert_eq!(third.await.unwrap().body, "c 3");
    server.stop().await;
}

#[tokio::test]
async fn a_queued_request_whose_client_leaves_leaves_the_queue() {
    let (server, _dir) = TestServer::start(&app("", "workers = 1\nqueue = 1")).await;
    let client = http1_client();
    let (c, url) = (client.clone(), server.url("/hold?wait=a"));
    let running = tokio::spawn(async move { get(&c, &url).await });
    eventually("first request running", 5 * SECOND, || live(&server) == 1).await;
    let queued = raw_get(&server, "/hold?wait=b").await;
    eventually("second queued", 5 * SECOND, || queue_depth(&server, "/hold") == 1).await;
    drop(queued);
    eventually("queue emptied", 5 * SECOND, || queue_depth(&server, "/hold") == 0).await;
    // Its place is free again.
    let (c, url) = (client.clone(), server.url("/hold?wait=c"));
    let third = tokio::spawn(async move { get(&c, &url).await });
    eventually("third queued", 5 * SECOND, || queue_depth(&server, "/hold") == 1).await;
    release(&server, "a").await;
    release(&server, "c").await;
    assert_eq!(running.await.unwrap().status, 200);
    assert_eq!(third.await.unwrap().status, 200);
    server.stop().await;
}

#[tokio::test]
async fn bearer_auth_guards_a_route() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), "s3cret-token\n").unwrap();
    let server = TestServer::start_in(dir.path(), &app("", "auth = { bearer_token_file = \"token\" }")).await;
    let client = http1_client();
    let url = server.url("/hold?release=x");
    let missing = get(&client, &url).await;
    assert_eq!(missing.status, 401);
    assert_eq!(missing.headers["www-authenticate"], "Bearer");
    let with = |token: &str| {
        http::Request::get(&url)
            .header("authorization", format!("Bearer {token}"))
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    assert_eq!(send(&client, with("wrong")).await.status, 401);
    assert_eq!(send(&client, with("s3cret-token")).await.status, 200);
    assert_eq!(get(&client, &server.url("/hello")).await.status, 200, "other routes need no token");
    server.stop().await;
}

#[tokio::test]
async fn a_routes_own_bucket_limits_only_that_route() {
    let (server, _dir) = TestServer::start(&app("", "rate_limit = { requests = 2, window_secs = 60 }")).await;
    let client = http1_client();
    for _ in 0..2 {
        assert_eq!(get(&client, &server.url("/hold?release=x")).await.status, 200);
    }
    let limited = get(&client, &server.url("/hold?release=x")).await;
    assert_eq!(limited.status, 429);
    assert_eq!(limited.headers["retry-after"], "30", "one token every 60 s / 2");
    assert_eq!(get(&client, &server.url("/hello")).await.status, 200, "other routes are not limited");
    let metrics = get(&client, &server.admin_url("/metrics")).await.body;
    assert!(metrics.contains(r#"wharf_rejections_total{reason="rate_limited_route"} 1"#), "{metrics}");
    server.stop().await;
}

#[tokio::test]
async fn bearer_auth_reads_its_token_from_the_environment() {
    // The real binary, the variable in its own environment.
    let dir = tempfile::tempdir().unwrap();
    let manifest = app("", "auth = { bearer_token_env = \"WHARF_TEST_AUTH_ENV_TOKEN\" }");
    let server =
        WharfProcess::start_with_env(dir.path(), &manifest, &[("WHARF_TEST_AUTH_ENV_TOKEN", "from-the-env")]);
    let client = http1_client();
    let with = |token: &str| {
        http::Request::get(server.url("/hold?release=x"))
            .header("authorization", format!("Bearer {token}"))
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    assert_eq!(get(&client, &server.url("/hold?release=x")).await.status, 401);
    assert_eq!(send(&client, with("s3cret-token")).await.status, 401);
    assert_eq!(send(&client, with("from-the-env")).await.status, 200);
}

#[tokio::test]
async fn connections_past_max_connections_are_closed_at_once() {
    let (server, _dir) =
        TestServer::start(&app("max_connections = 2\nmax_connections_per_client = 0", "")).await;
    let first = raw_get(&server, "/hold?wait=a").await;
    let second = raw_get(&server, "/hold?wait=b").await;
    eventually("two requests running", 5 * SECOND, || live(&server) == 2).await;
    // Closed at accept, with no answer: long before any deadline (the
    // header deadline is 10 s) could close it.
    let started = std::time::Instant::now();
    assert_eq!(raw_get_to_end(&server, "/hello").await, "", "the third connection was served");
    assert!(started.elapsed() < SECOND, "closed after {:?}, not at once", started.elapsed());
    let metrics = &server.app.telemetry.metrics;
    eventually("the refusal counted", 5 * SECOND, || metrics.connections_refused("max_connections") == 1)
        .await;
    // Once a connection closes, its slot serves a new one.
    drop(first);
    let deadline = tokio::time::Instant::now() + 10 * SECOND;
    while !raw_get_to_end(&server, "/hello").await.starts_with("HTTP/1.1 200") {
        assert!(tokio::time::Instant::now() < deadline, "the freed slot never served a new connection");
    }
    drop(second);
    server.stop().await;
}

#[tokio::test]
async fn a_running_request_whose_client_leaves_frees_its_worker() {
    let (server, _dir) = TestServer::start(&app("", "workers = 1\nqueue = 1")).await;
    let running = raw_get(&server, "/hold?wait=never").await;
    eventually("first request running", 5 * SECOND, || live(&server) == 1).await;
    let client = http1_client();
    let (c, url) = (client.clone(), server.url("/hold?wait=b"));
    let queued = tokio::spawn(async move { get(&c, &url).await });
    eventually("second queued", 5 * SECOND, || queue_depth(&server, "/hold") == 1).await;
    // The first client leaves: its instance is dropped and its worker slot
    // goes to the queued request.
    drop(running);
    eventually("queued request running", 5 * SECOND, || {
        queue_depth(&server, "/hold") == 0 && live(&server) == 1
    })
    .await;
    release(&server, "b").await;
    assert_eq!(queued.await.unwrap().body, "b 2");
    server.stop().await;
}

#[tokio::test]
async fn a_slow_header_client_is_cut_off_while_others_are_served() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (server, _dir) = TestServer::start(&app("header_read_timeout_secs = 0.5", "")).await;
    let mut slow = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let client = http1_client();
    for _ in 0..5 {
        assert_eq!(get(&client, &server.url("/hello")).await.status, 200);
    }
    let mut rest = Vec::new();
    let read = tokio::time::timeout(5 * SECOND, slow.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the slow client was never cut off");
    let text = String::from_utf8_lossy(&rest);
    assert!(text.is_empty() || text.starts_with("HTTP/1.1 408"), "{text}");
    server.stop().await;
}

#[tokio::test]
async fn oversized_headers_get_431_and_oversized_bodies_413() {
    let (server, _dir) = TestServer::start(&app("", "")).await;
    let client = http1_client();
    let big_header = http::Request::get(server.url("/hello"))
        .header("x-big", "a".repeat(40 << 10))
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(send(&client, big_header).await.status, 431);

    let post =
        |body: Vec<u8>| http::Request::post(server.url("/echo")).body(Full::new(Bytes::from(body))).unwrap();
    let fits = send(&client, post(vec![b'x'; 1000])).await;
    assert_eq!((fits.status, fits.body.len()), (200, 1000));
    assert_eq!(send(&client, post(vec![b'x'; 1001])).await.status, 413, "declared length over the limit");

    // Without a declared length the limit is found while streaming.
    let chunks = futures::stream::iter(
        (0..8).map(|_| Ok::<_, std::io::Error>(http_body::Frame::data(Bytes::from(vec![b'y'; 500])))),
    );
    let streamed =
        http::Request::post(server.url("/echo")).body(http_body_util::StreamBody::new(chunks)).unwrap();
    let stream_client: hyper_util::client::legacy::Client<_, _> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let response = stream_client.request(streamed).await.unwrap();
    assert_eq!(response.status(), 413);
    assert_eq!(get(&client, &server.url("/hello")).await.status, 200);
    server.stop().await;
}

#[tokio::test]
async fn request_ids_are_made_by_wharf_and_kept_only_from_trusted_proxies() {
    let (server, _dir) = TestServer::start(&app("trusted_proxies = [\"127.0.0.2/32\"]", "")).await;
    let with_id = |path: &str| {
        http::Request::get(server.url(path))
            .header("x-request-id", "abc-123")
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let client = http1_client();
    let generated = get(&client, &server.url("/hello")).await;
    let id = generated.headers["x-request-id"].to_str().unwrap();
    assert_eq!(id.len(), 32);
    // From an ordinary client, a chosen id is replaced...
    let replaced = send(&client, with_id("/nope")).await;
    assert_eq!(replaced.status, 404);
    assert_ne!(replaced.headers["x-request-id"], "abc-123");
    // ...from a trusted proxy, it is kept.
    let proxy = http1_client_from("127.0.0.2".parse().unwrap());
    let kept = send(&proxy, with_id("/nope")).await;
    assert_eq!(kept.headers["x-request-id"], "abc-123");

    // The component sees the same id the client gets back and the log has.
    let seen = send(&client, with_id("/echo?inspect")).await;
    let id = seen.headers["x-request-id"].to_str().unwrap().to_string();
    assert_ne!(id, "abc-123");
    let headers = seen.json()["headers"].as_array().unwrap().clone();
    assert!(headers.contains(&serde_json::json!(["x-request-id", id])), "{headers:?}");
    assert!(!headers.contains(&serde_json::json!(["x-request-id", "abc-123"])), "{headers:?}");
    let line = server.access_line("the inspect request", |l| l["path"] == "/echo").await;
    assert_eq!(line["request_id"], id.as_str());
    server.stop().await;
}

#[tokio::test]
async fn health_and_metrics_reflect_exactly_what_happened() {
    let (server, _dir) = TestServer::start(&app("", "")).await;
    let client = http1_client();
    for _ in 0..3 {
        assert_eq!(get(&client, &server.url("/hello")).await.status, 200);
    }
    assert_eq!(get(&client, &server.url("/missing")).await.status, 404);
    let post =
        http::Request::post(server.url("/echo")).body(Full::new(Bytes::from(vec![0u8; 2000]))).unwrap();
    assert_eq!(send(&client, post).await.status, 413);

    let health = get(&client, &server.admin_url("/healthz")).await;
    assert_eq!(health.status, 200);
    let health = health.json();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["in_flight"], 0);
    assert_eq!(health["live_instances"], 0);
    assert_eq!(health["requests"], 5);
    let components = health["components"].as_array().unwrap();
    let hello = components.iter().find(|c| c["name"] == "hello").unwrap();
    assert_eq!(hello["digest"].as_str().unwrap().len(), 64);

    let metrics = get(&client, &server.admin_url("/metrics")).await.body;
    for line in [
        r#"wharf_requests_total{route="/hello",status="200"} 3"#,
        r#"wharf_requests_total{route="",status="404"} 1"#,
        r#"wharf_requests_total{route="/echo",status="413"} 1"#,
        r#"wharf_rejections_total{reason="body_too_large"} 1"#,
        r#"wharf_request_duration_seconds_count{route="/hello"} 3"#,
        r#"wharf_instantiation_seconds_count 3"#,
        "wharf_live_instances 0",
        "wharf_requests_in_flight 0",
    ] {
        assert!(metrics.contains(line), "missing {line:?} in\n{metrics}");
    }
    assert!(metrics.contains(&format!(
        r#"wharf_component_info{{component="hello",digest="{}"}} 1"#,
        hello["digest"].as_str().unwrap()
    )));
    server.stop().await;
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap()
}

/// Not a test of speed: 1,000 concurrent clients for 5 s against a 100 ms
/// route with `max_concurrent_requests = 100`; prints the statuses seen and
/// the latency of 200s and 503s. `cargo test --release --test all --
/// --ignored --nocapture measure_load_shedding`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn measure_load_shedding() {
    let manifest = r#"
[server]
key_value = "memory"
max_concurrent_requests = 100

[[route]]
path = "/sleep"
component = "long-running"

[component.long-running]
source = "{components}/long_running.wasm"
config = { duration_ms = "100" }
"#;
    let (server, _dir) = TestServer::start(manifest).await;
    let url = server.url("/sleep");
    let deadline = tokio::time::Instant::now() + 5 * SECOND;
    let clients: Vec<_> = (0..1000)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                let client = http1_client();
                let mut seen = Vec::new();
                while tokio::time::Instant::now() < deadline {
                    let started = std::time::Instant::now();
                    let status = get(&client, &url).await.status;
                    seen.push((status, started.elapsed()));
                }
                seen
            })
        })
        .collect();
    let mut by_status: std::collections::BTreeMap<u16, Vec<Duration>> = Default::default();
    for client in clients {
        for (status, latency) in client.await.unwrap() {
            by_status.entry(status).or_default().push(latency);
        }
    }
    for (status, latencies) in &mut by_status {
        latencies.sort();
        let n = latencies.len();
        println!(
            "status {status}: {n} responses, median {:?}, p99 {:?}, max {:?}",
            latencies[n / 2],
            latencies[n * 99 / 100],
            latencies[n - 1]
        );
    }
    assert!(by_status.keys().all(|s| *s == 200 || *s == 503), "{:?}", by_status.keys());
    server.stop().await;
}

/// Not a test of speed: prints the per-client limiter's memory with 100,000
/// distinct client keys. Run alone: `cargo test --release --test all --
/// --ignored --nocapture --test-threads=1 measure_client_limiter_memory`.
#[test]
#[ignore]
fn measure_client_limiter_memory() {
    let spec = wharf::manifest::RateLimitSpec { requests: 100, window: Duration::from_secs(60), burst: 100 };
    let before = rss_kib();
    let limiter = wharf::policy::ClientLimiter::new(&spec);
    for i in 0..100_000u32 {
        let _ = limiter.check(std::net::IpAddr::from(i.to_be_bytes()));
    }
    let after = rss_kib();
    println!(
        "per-client limiter: {} keys, RSS grew {} KiB ({} bytes a key)",
        limiter.tracked(),
        after - before,
        (after - before) * 1024 / 100_000
    );
}

/// Admission by queueing delay: a closed loop of clients past one thread's
/// capacity makes requests wait past the target for whole intervals, so
/// some are refused at once (503, `queue_delay`), while the same server
/// under a load it can carry refuses none.
#[tokio::test]
async fn admission_by_queueing_delay_sheds_a_standing_queue_and_nothing_else() {
    let manifest = r#"
[server]
key_value = "memory"
threads = 1
max_requests_in_flight_per_client = 0
queue_delay = { target_ms = 5, interval_ms = 20 }

[[route]]
path = "/busy"
component = "long-running"

[component.long-running]
source = "{components}/long_running.wasm"
"#;
    let (server, _dir) = TestServer::start(manifest).await;
    let metrics = &server.app.telemetry.metrics;
    let url = server.url("/busy?mode=cpu&ms=2");
    // One client at a time: no queue, nothing refused.
    let client = http1_client();
    for _ in 0..30 {
        assert_eq!(get(&client, &url).await.status, 200);
    }
    assert_eq!(metrics.rejections("queue_delay"), 0);
    // Forty clients in a closed loop for a second: 80 ms of work queued
    // behind each arrival, against a 5 ms target.
    let deadline = tokio::time::Instant::now() + SECOND;
    let loops: Vec<_> = (0..40)
        .map(|_| {
            let (client, url) = (http1_client(), url.clone());
            tokio::spawn(async move {
                let (mut served, mut refused) = (0, 0);
                while tokio::time::Instant::now() < deadline {
                    match get(&client, &url).await.status {
                        200 => served += 1,
                        503 => refused += 1,
                        other => panic!("status {other}"),
                    }
                }
                (served, refused)
            })
        })
        .collect();
    let (mut served, mut refused) = (0, 0);
    for outcome in loops {
        let (s, r) = outcome.await.unwrap();
        served += s;
        refused += r;
    }
    assert!(served > 0, "the overloaded server still serves");
    assert!(refused > 0, "nothing was refused");
    assert_eq!(metrics.rejections("queue_delay"), refused, "every refusal was for queueing delay");
    assert_eq!(metrics.rejections("overloaded"), 0);
    server.stop().await;
}
