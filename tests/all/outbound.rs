//! Outbound HTTP through the pooled, allow-listed client, driven by the
//! `aggregate` component against in-process upstreams.

use crate::harness::*;
use crate::upstream::{Silent, Unaccepting, Upstream};
use std::time::{Duration, Instant};

const SECOND: Duration = Duration::from_secs(1);

fn app(outbound: &str) -> String {
    aggregate_app(outbound, "")
}

/// `aggregate` (taking its URLs from the query, allowed to call 127.0.0.1,
/// https://localhost and `self`) and `hello`; `outbound` fills the
/// `[outbound]` table and `component` adds to aggregate's.
pub fn aggregate_app(outbound: &str, component: &str) -> String {
    format!(
        r#"
[server]
key_value = "memory"

[outbound]
{outbound}

[[route]]
path = "/aggregate"
component = "aggregate"

[[route]]
path = "/hello"
component = "hello"

[component.hello]
source = "{{components}}/hello.wasm"

[component.aggregate]
source = "{{components}}/aggregate.wasm"
config = {{ allow_query_urls = "true" }}
allowed_outbound_hosts = ["http://127.0.0.1:*", "https://localhost:*", "http://self"]
{component}
"#
    )
}

fn encode(url: &str) -> String {
    url.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn aggregate_path(urls: &[String], extra: &str) -> String {
    let query: Vec<String> = urls.iter().map(|u| format!("url={}", encode(u))).collect();
    format!("/aggregate?{}{extra}", query.join("&"))
}

#[tokio::test]
async fn five_upstream_calls_are_in_flight_at_once() {
    let (server, _dir) = TestServer::start(&app("")).await;
    let upstream = Upstream::start().await;
    // The barrier answers only once all five calls are waiting at it: calls
    // made one after another would never get through (504 at the deadline).
    let urls: Vec<String> = (0..5).map(|i| upstream.url(&format!("/barrier?key=five&n=5&i={i}"))).collect();
    let reply = get(&http1_client(), &server.url(&aggregate_path(&urls, "&timeout_ms=10000"))).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let results = reply.json()["results"].as_array().unwrap().clone();
    assert_eq!(results.len(), 5);
    assert!(results.iter().all(|r| r["status"] == 200 && r["size"] == 7), "{results:?}");
    server.stop().await;
}

#[tokio::test]
async fn a_hanging_upstream_meets_the_two_second_deadline() {
    let (server, _dir) = TestServer::start(&app("")).await;
    let fast = Upstream::start().await;
    let hanging = Upstream::start().await;
    let urls = vec![fast.url("/ok"), hanging.url("/hang")];
    let client = http1_client();

    let started = Instant::now();
    let fail_fast = get(&client, &server.url(&aggregate_path(&urls, ""))).await;
    assert_eq!(fail_fast.status, 504, "{}", fail_fast.body);
    assert!(started.elapsed() >= Duration::from_secs(2), "answered before its deadline");

    let partial = get(&client, &server.url(&aggregate_path(&urls, "&mode=partial"))).await;
    assert_eq!(partial.status, 200);
    let json = partial.json();
    assert_eq!(json["timed_out"], serde_json::json!([urls[1]]));
    assert_eq!(json["results"][0]["status"], 200);
    assert_eq!(json["results"][1]["timed_out"], true);
    eventually("the instances (and their outbound calls) are gone", 10 * SECOND, || live(&server) == 0).await;
    server.stop().await;
}

#[tokio::test]
async fn a_failing_upstream_fails_fast_or_is_reported() {
    let (server, _dir) = TestServer::start(&app("")).await;
    let upstream = Upstream::start().await;
    // The first call never answers: only failing fast on the second gives
    // 502; waiting for both would give 504 at the deadline.
    let urls = vec![upstream.url("/hang"), upstream.url("/fail")];
    let client = http1_client();
    let fail_fast = get(&client, &server.url(&aggregate_path(&urls, "&timeout_ms=30000"))).await;
    assert_eq!(fail_fast.status, 502, "{}", fail_fast.body);
    assert_eq!(fail_fast.json()["url"], urls[1]);
    let urls = vec![upstream.url("/ok"), upstream.url("/fail")];
    let partial = get(&client, &server.url(&aggregate_path(&urls, "&mode=partial"))).await.json();
    assert_eq!(partial["results"][0]["status"], 200);
    assert_eq!(partial["results"][1]["error"], "status 500");
    server.stop().await;
}

#[tokio::test]
async fn hosts_off_the_allow_list_are_denied() {
    let (server, _dir) = TestServer::start(&app("")).await;
    let upstream = Upstream::start().await;
    // Allowed as 127.0.0.1, not as localhost over plain HTTP.
    let denied = format!("http://localhost:{}/ok", upstream.addr.port());
    let reply =
        get(&http1_client(), &server.url(&aggregate_path(std::slice::from_ref(&denied), "&mode=partial")))
            .await;
    assert_eq!(reply.json()["results"][0]["error"], "ErrorCode::HttpRequestDenied");
    assert_eq!(upstream.accepted(), 0, "nothing reached the upstream");
    let metrics = get(&http1_client(), &server.admin_url("/metrics")).await.body;
    assert!(metrics.contains("wharf_outbound_denied_total 1"), "{metrics}");
    server.stop().await;
}

#[tokio::test]
async fn connections_are_pooled_and_bounded_per_host() {
    let (server, _dir) = TestServer::start(&app("max_connections_per_host = 10")).await;
    let upstreams = futures::future::join_all((0..5).map(|_| Upstream::start())).await;
    let urls: Vec<String> = upstreams.iter().map(|u| u.url("/delay?ms=20")).collect();
    let client = http1_client();

    // One after another: one connection per upstream, reused.
    let path = aggregate_path(&urls, "");
    for _ in 0..10 {
        assert_eq!(get(&client, &server.url(&path)).await.status, 200);
    }
    for upstream in &upstreams {
        assert_eq!(upstream.accepted(), 1, "sequential calls reuse one connection");
    }

    // 100 at once: 500 calls, at most 10 connections per upstream.
    let url = server.url(&path);
    let replies = futures::future::join_all((0..100).map(|_| get(&client, &url))).await;
    assert!(
        replies.iter().all(|r| r.status == 200),
        "{:?}",
        replies.iter().find(|r| r.status != 200).map(|r| &r.body)
    );
    for upstream in &upstreams {
        let accepted = upstream.accepted();
        assert!(accepted <= 10, "upstream {} accepted {accepted} connections", upstream.addr);
    }
    let opened: u64 = upstreams
        .iter()
        .map(|u| server.app.telemetry.metrics.outbound.connections_opened_to(&u.addr.to_string()))
        .sum();
    assert_eq!(opened as usize, upstreams.iter().map(Upstream::accepted).sum::<usize>());
    server.stop().await;
}

#[tokio::test]
async fn https_upstreams_signed_by_an_extra_ca_are_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca_cert.pem()).unwrap();

    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls_pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap(),
        )
        .unwrap();
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let upstream = Upstream::start_with(Some(std::sync::Arc::new(tls))).await;

    let server = TestServer::start_in(dir.path(), &app("extra_ca_file = \"ca.pem\"")).await;
    let url = format!("https://localhost:{}/ok", upstream.addr.port());
    let reply = get(&http1_client(), &server.url(&aggregate_path(&[url], "&mode=partial"))).await;
    assert_eq!(reply.json()["results"][0]["status"], 200, "{}", reply.body);
    server.stop().await;
}

#[tokio::test]
async fn self_requests_reach_the_app_itself() {
    let (server, _dir) = TestServer::start(&app("")).await;
    let reply = get(&http1_client(), &server.url(&aggregate_path(&["/hello".to_string()], ""))).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["results"][0]["size"], 14);
    server.stop().await;
}

#[tokio::test]
async fn connect_tls_and_total_timeouts_end_outbound_calls() {
    let (server, _dir) = TestServer::start(&app(
        "connect_timeout_secs = 0.5\ntls_handshake_timeout_secs = 0.5\ntotal_timeout_secs = 3",
    ))
    .await;
    let client = http1_client();
    let partial = |url: String| {
        let path = aggregate_path(&[url], "&mode=partial&timeout_ms=30000");
        let (client, url) = (client.clone(), server.url(&path));
        async move { get(&client, &url).await.json()["results"][0].clone() }
    };
    // Connect: the upstream's backlog is full, so the SYN goes unanswered.
    let unaccepting = Unaccepting::start();
    let result = partial(format!("http://127.0.0.1:{}/ok", unaccepting.addr.port())).await;
    assert_eq!(result["error"], "ErrorCode::ConnectionTimeout", "{result}");
    // TLS: the upstream accepts and never answers the ClientHello.
    let silent = Silent::start().await;
    let result = partial(format!("https://localhost:{}/ok", silent.addr.port())).await;
    assert_eq!(result["error"], "ErrorCode::ConnectionTimeout", "{result}");
    // Total: headers come, the body never does.
    let upstream = Upstream::start().await;
    let result = partial(upstream.url("/stall-body")).await;
    assert_eq!(result["error"], "connection read timeout", "{result}");
    server.stop().await;
}

#[tokio::test]
async fn without_the_pool_every_call_opens_a_connection() {
    let (server, _dir) = TestServer::start(&app("pool = false")).await;
    let upstream = Upstream::start().await;
    let path = aggregate_path(&[upstream.url("/ok")], "");
    let client = http1_client();
    for _ in 0..5 {
        assert_eq!(get(&client, &server.url(&path)).await.status, 200);
    }
    assert_eq!(upstream.accepted(), 5, "pool = false: one connection per request");
    server.stop().await;
}

/// Not a test of speed: prints connections opened and the median latency
/// of 1,000 aggregate calls (10 at a time, 5 upstreams each) through the
/// pooled client and through wasmtime-wasi-http's default sender, in the
/// same run. `cargo test --release --test all -- --ignored --nocapture measure_`.
#[tokio::test]
#[ignore]
async fn measure_pooled_versus_default_sender() {
    for pooled in [true, false] {
        let (server, _dir) = TestServer::start(&app(if pooled { "" } else { "pool = false" })).await;
        let upstreams = futures::future::join_all((0..5).map(|_| Upstream::start())).await;
        let urls: Vec<String> = upstreams.iter().map(|u| u.url("/ok")).collect();
        let url = server.url(&aggregate_path(&urls, ""));
        let client = http1_client();
        let mut latencies = Vec::new();
        for _ in 0..100 {
            let batch = futures::future::join_all((0..10).map(|_| async {
                let started = Instant::now();
                assert_eq!(get(&client, &url).await.status, 200);
                started.elapsed()
            }))
            .await;
            latencies.extend(batch);
        }
        latencies.sort();
        let opened: usize = upstreams.iter().map(Upstream::accepted).sum();
        println!(
            "{}: 1000 aggregate calls (5000 upstream requests): {opened} connections opened, median {:?}, p99 {:?}",
            if pooled { "pooled client" } else { "default sender" },
            latencies[500],
            latencies[990]
        );
        server.stop().await;
    }
}
