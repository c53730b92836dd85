//! Many hosts on one Redis: key-value state and rate limits shared and
//! exact, and what happens while Redis is away. A real `redis-server`.

use crate::harness::*;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const SECOND: Duration = Duration::from_secs(1);

/// The `redis_timeout_ms` of the test that has Redis go away (the others
/// give Redis 5 s: the suite runs its tests in parallel on a loaded machine,
/// where a reply can be later than half a second).
const REDIS_TIMEOUT: Duration = Duration::from_millis(500);

fn app(redis: &RedisServer, server: &str) -> String {
    app_at(&redis.url(), server, "")
}

/// The counter and hello on the Redis at `url`; `server` adds to
/// `[server]` (`redis_timeout_ms` there replaces the 5 s default), `hello`
/// to hello's route.
fn app_at(url: &str, server: &str, hello: &str) -> String {
    let timeout = if server.contains("redis_timeout_ms") { "" } else { "redis_timeout_ms = 5000" };
    format!(
        r#"
[server]
key_value = "redis"
redis_url = "{url}"
{timeout}
max_requests_in_flight_per_client = 0
{server}

[[route]]
path = "/api/..."
component = "counter"

[[route]]
path = "/hello"
component = "hello"
{hello}

[component.counter]
source = "{{components}}/counter.wasm"
key_value_stores = ["default"]
config = {{ delay_ms = "0" }}

[component.hello]
source = "{{components}}/hello.wasm"
"#
    )
}

async fn count(server: &TestServer) -> u64 {
    let reply = get(&http1_client(), &server.url("/api")).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.json()["request_num"].as_u64().unwrap()
}

/// `n` increments at once, alternating between two hosts.
async fn increments_on_both(first: &TestServer, second: &TestServer, n: usize) -> Vec<Reply> {
    let (one, two) = (http1_client(), http1_client());
    let (url_one, url_two) = (first.url("/api"), second.url("/api"));
    let requests = (0..n).map(|i| {
        let (client, url) = if i % 2 == 0 { (&one, &url_one) } else { (&two, &url_two) };
        get(client, url)
    });
    futures::future::join_all(requests).await
}

#[tokio::test]
async fn two_hosts_count_exactly_together_and_a_restart_loses_nothing() {
    let redis = RedisServer::start().await;
    let manifest = app(&redis, "");
    let (first, _a) = TestServer::start(&manifest).await;
    let (second, _b) = TestServer::start(&manifest).await;
    let replies = increments_on_both(&first, &second, 2000).await;
    let mut seen = BTreeSet::new();
    for reply in &replies {
        assert_eq!(reply.status, 200, "{}", reply.body);
        seen.insert(reply.json()["request_num"].as_u64().unwrap());
    }
    assert_eq!(
        seen,
        (1..=2000).collect::<BTreeSet<u64>>(),
        "2,000 increments on two hosts: each number once"
    );
    first.stop().await;
    let (first, _c) = TestServer::start(&manifest).await;
    assert_eq!(count(&first).await, 2001, "the restarted host sees every increment");
    assert_eq!(count(&second).await, 2002);
    first.stop().await;
    second.stop().await;
}

#[tokio::test]
async fn rate_limits_in_redis_admit_the_quota_across_hosts() {
    let redis = RedisServer::start().await;
    let limits = "rate_limit_store = \"redis\"\nclient_rate_limit = { requests = 5, window_secs = 60 }";
    let manifest = app(&redis, limits);
    let (first, _a) = TestServer::start(&manifest).await;
    let (second, _b) = TestServer::start(&manifest).await;
    let client = http1_client();
    let mut statuses = Vec::new();
    for i in 0..12 {
        let server = if i % 2 == 0 { &first } else { &second };
        let reply = get(&client, &server.url("/hello")).await;
        if reply.status == 429 {
            let wait: u64 = reply.headers["retry-after"].to_str().unwrap().parse().unwrap();
            assert!((1..=12).contains(&wait), "one token every 12 s: retry after {wait}");
        }
        statuses.push(reply.status);
    }
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 5, "5 in all across both hosts: {statuses:?}");
    // Another client has its own bucket; a global bucket is shared too.
    let other = http1_client_from("127.0.0.2".parse().unwrap());
    assert_eq!(get(&other, &second.url("/hello")).await.status, 200);
    first.stop().await;
    second.stop().await;

    let manifest =
        app(&redis, "rate_limit_store = \"redis\"\nrate_limit = { requests = 4, window_secs = 60 }");
    let (first, _c) = TestServer::start(&manifest).await;
    let (second, _d) = TestServer::start(&manifest).await;
    let mut admitted = 0;
    for i in 0..10 {
        let (server, client) = if i % 2 == 0 { (&first, &client) } else { (&second, &other) };
        admitted += usize::from(get(client, &server.url("/hello")).await.status == 200);
    }
    assert_eq!(admitted, 4, "a global limit of 4 admits 4 in all");
    first.stop().await;
    second.stop().await;
}

#[tokio::test]
async fn while_redis_is_away_calls_fail_fast_limits_follow_the_policy_and_it_all_recovers() {
    let mut redis = RedisServer::start().await;
    let limits = "redis_timeout_ms = 500\nrate_limit_store = \"redis\"\nrate_limit_on_store_error = \"deny\"\nclient_rate_limit = { requests = 1000, window_secs = 1 }";
    let manifest = app(&redis, limits);
    let (server, _dir) = TestServer::start(&manifest).await;
    let client = http1_client();
    let mut told_ok = 0;
    for _ in 0..20 {
        assert_eq!(count(&server).await, told_ok + 1);
        told_ok += 1;
    }
    let health = get(&client, &server.admin_url("/healthz")).await.json();
    assert_eq!((health["status"].as_str(), health["redis"]["status"].as_str()), (Some("ok"), Some("ok")));

    redis.stop();
    // The limit's policy is deny: refused at once (429), never hung.
    let started = Instant::now();
    let refused = get(&client, &server.url("/api")).await;
    assert_eq!(refused.status, 429, "{}", refused.body);
    assert!(
        started.elapsed() < REDIS_TIMEOUT + SECOND,
        "took {:?} against a 500 ms timeout",
        started.elapsed()
    );
    let health = get(&client, &server.admin_url("/healthz")).await.json();
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(health["redis"]["status"], "degraded");
    let readiness = get(&client, &server.admin_url("/readyz")).await;
    assert_eq!((readiness.status, readiness.json()["status"].as_str()), (503, Some("redis_down")));

    // With the local fallback, requests go through and the key-value calls
    // fail within the timeout.
    server.stop().await;
    let manifest = app(&redis, &limits.replace("\"deny\"", "\"local\""));
    let (server, _dir) = TestServer::start(&manifest).await;
    // Readiness may leave Redis out of it.
    let lenient = manifest.replace("[server]", "[server]\nreadiness_requires_redis = false");
    let (tolerant, _lenient_dir) = TestServer::start(&lenient).await;
    for _ in 0..3 {
        let started = Instant::now();
        let reply = get(&client, &server.url("/api")).await;
        assert_eq!(reply.status, 500, "the counter cannot count: {}", reply.body);
        assert!(
            reply.body.contains("unavailable") || reply.body.contains("did not answer"),
            "{}",
            reply.body
        );
        let took = started.elapsed();
        assert!(took < REDIS_TIMEOUT + SECOND, "took {took:?} against a 500 ms timeout");
    }
    assert_eq!(get(&client, &server.url("/hello")).await.status, 200, "local buckets took over");
    get(&client, &tolerant.url("/api")).await;
    assert_eq!(get(&client, &tolerant.admin_url("/healthz")).await.json()["status"], "degraded");
    assert_eq!(get(&client, &tolerant.admin_url("/readyz")).await.status, 200);
    tolerant.stop().await;

    // Redis is back: no restart needed, and nothing told ok was lost.
    redis.restart().await;
    let deadline = Instant::now() + 20 * SECOND;
    let next = loop {
        let reply = get(&client, &server.url("/api")).await;
        if reply.status == 200 {
            break reply.json()["request_num"].as_u64().unwrap();
        }
        assert!(Instant::now() < deadline, "never recovered: {}", reply.body);
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(next, told_ok + 1, "every increment a guest was told of survived");
    let health = get(&client, &server.admin_url("/healthz")).await.json();
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(get(&client, &server.admin_url("/readyz")).await.status, 200);
    server.stop().await;
}

#[tokio::test]
async fn the_deployment_example_serves_through_nginx() {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/run.sh");
    let output = tokio::process::Command::new("bash")
        .arg(&script)
        .env("WHARF", wharf_binary())
        .output()
        .await
        .expect("run deploy/run.sh");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "deploy/run.sh failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("ok: 40 increments exact across 2 hosts behind nginx"), "{stdout}");
}

#[tokio::test]
async fn the_whole_key_value_interface_works_on_redis_with_its_limits() {
    let redis = RedisServer::start().await;
    let manifest = format!(
        r#"
[server]
key_value = "redis"
redis_url = "{}"
max_key_bytes = 100
max_keys_per_store = 3000

[[route]]
path = "/kv"
component = "kv"

[[route]]
path = "/other"
component = "other"

[component.kv]
source = "{{components}}/kv.wasm"
key_value_stores = ["default"]

[component.other]
source = "{{components}}/kv.wasm"
key_value_stores = ["second"]
"#,
        redis.url()
    );
    let (server, _dir) = TestServer::start(&manifest).await;
    let kv = |query: String| {
        let (client, url) = (http1_client(), server.url(&format!("/kv?{query}")));
        async move { get(&client, &url).await }
    };
    assert_eq!(kv("op=set-many&prefix=b&n=3".into()).await.status, 200);
    let got = kv("op=get-many&keys=b0,b2,missing".into()).await.json();
    assert_eq!(got["values"], serde_json::json!([["b0", "0"], ["b2", "2"], null]));
    assert_eq!(kv("op=delete-many&keys=b0,b1,b2".into()).await.status, 200);
    assert_eq!(kv("op=increment&key=n&delta=5".into()).await.json()["value"], 5);
    assert_eq!(kv("op=set&key=word&value=abc".into()).await.status, 200);
    assert_eq!(kv("op=increment&key=word".into()).await.status, 500, "not a number");
    let denied = get(&http1_client(), &server.url("/other?op=get&key=n")).await;
    assert_eq!(denied.json()["error"], "Error::AccessDenied");
    assert_eq!(
        get(&http1_client(), &server.url("/other?op=get&key=n&store=second")).await.json()["value"],
        serde_json::Value::Null,
        "stores are apart"
    );
    assert!(
        kv(format!("op=set&key={}&value=1", "k".repeat(101))).await.json()["error"]
            .as_str()
            .unwrap()
            .contains("limit is 100")
    );
    // 2,500 keys listed in pages with the SCAN cursor.
    for batch in 0..5 {
        assert_eq!(kv(format!("op=set-many&prefix=p{batch}-&n=500")).await.status, 200);
    }
    let listed = kv("op=list-all".into()).await.json();
    let keys = listed["keys"].as_array().unwrap();
    let distinct: BTreeSet<&str> = keys.iter().map(|k| k.as_str().unwrap()).collect();
    assert_eq!(distinct.len(), 2502, "2,500 keys plus n and word");
    assert!(listed["pages"].as_u64().unwrap() > 1, "{}", listed["pages"]);
    // 2,502 keys now; the store takes 498 more, then no new key.
    assert_eq!(kv("op=set-many&prefix=q-&n=498".into()).await.status, 200);
    let full = kv("op=set&key=one-more&value=x".into()).await;
    assert!(full.json()["error"].as_str().unwrap().contains("max_keys_per_store"), "{}", full.body);
    assert!(
        kv("op=increment&key=new-counter".into()).await.json()["error"]
            .as_str()
            .unwrap()
            .contains("max_keys_per_store")
    );
    assert_eq!(kv("op=set&key=word&value=replacing".into()).await.status, 200);
    server.stop().await;
}

/// A host drains worker by worker; the Redis connection's driver runs on
/// the worker that first used it. That worker, drained first, must not take
/// the connection away from a request still running on another (seen in a
/// rolling restart: "broken pipe", a 500 for an increment Redis applied).
#[tokio::test]
async fn a_worker_that_drains_first_keeps_the_redis_connection_for_the_others() {
    use tokio::io::AsyncWriteExt;
    let redis = RedisServer::start().await;
    let (mut server, _dir) = TestServer::start(&app(&redis, "")).await;
    // The host's first Redis call connects, on the worker that made it.
    let mut first = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let reply = exchange_raw(&mut first, "/api").await;
    assert!(reply.contains(r#""request_num":1"#), "{reply}");
    let connected_on = worker_of(&server, &reply).await;
    // A connection the other worker serves (the kernel spreads them).
    let mut other = loop {
        let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        let reply = exchange_raw(&mut stream, "/hello").await;
        if worker_of(&server, &reply).await != connected_on {
            break stream;
        }
    };
    drop(first);
    // Its increment waits in Redis while the host shuts down; the worker
    // holding the connection has nothing left to serve.
    redis.pause_writes(Duration::from_millis(1500)).await;
    other.write_all(b"GET /api HTTP/1.1\r\nHost: test\r\n\r\n").await.unwrap();
    eventually("the increment in flight", 10 * SECOND, || in_flight(&server) == 1).await;
    server.begin_shutdown();
    let reply = read_response(&mut other).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains(r#""request_num":2"#), "{reply}");
    server.wait_stopped().await;
}

#[tokio::test]
async fn a_rolling_restart_behind_nginx_fails_no_request_and_loses_no_increment() {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/run.sh");
    let output = tokio::process::Command::new("bash")
        .arg(&script)
        .arg("roll")
        .env("WHARF", wharf_binary())
        .output()
        .await
        .expect("run deploy/run.sh roll");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "deploy/run.sh roll failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("ok: rolled 2 hosts under load with no failed request and no lost increment"),
        "{stdout}"
    );
    println!("{stdout}");
}

#[tokio::test]
async fn a_redis_cluster_counts_exactly_shares_limits_and_survives_a_failover() {
    let cluster = RedisCluster::start(3).await;
    let manifest = app_at(
        &cluster.url(),
        "rate_limit_store = \"redis\"",
        "rate_limit = { requests = 30, window_secs = 3600 }",
    );
    let (first, _a) = TestServer::start(&manifest).await;
    let (second, _b) = TestServer::start(&manifest).await;
    let health = get(&http1_client(), &first.admin_url("/healthz")).await.json();
    assert_eq!(health["redis"]["cluster"], true, "{health}");

    // Increments from both hosts at once: each number exactly once.
    let replies = increments_on_both(&first, &second, 400).await;
    let numbers: BTreeSet<u64> = replies
        .iter()
        .map(|r| {
            assert_eq!(r.status, 200, "{}", r.body);
            r.json()["request_num"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(numbers, (1..=400).collect::<BTreeSet<u64>>());

    // A route's limit, shared through the cluster: 30 in all, not per host.
    let client = http1_client();
    let mut admitted = 0;
    for i in 0..60 {
        let url = if i % 2 == 0 { first.url("/hello") } else { second.url("/hello") };
        match get(&client, &url).await.status {
            200 => admitted += 1,
            429 => {}
            other => panic!("status {other}"),
        }
    }
    assert_eq!(admitted, 30);

    // The master holding the store hands over to its replica while
    // increments keep coming; every acknowledged one is kept.
    let (master, replica) = cluster.master_and_replica_of("wharf:kv:{default}");
    use std::sync::atomic::{AtomicU8, Ordering::Relaxed};
    // 0: before the failover, 1: during it, 2: after it, 3: stop.
    let phase = std::sync::Arc::new(AtomicU8::new(0));
    let load = {
        let (phase, client, url) = (phase.clone(), http1_client(), first.url("/api"));
        tokio::spawn(async move {
            let (mut ok, mut failed) = (Vec::new(), [0; 3]);
            loop {
                let started_in = phase.load(Relaxed);
                if started_in == 3 {
                    break (ok, failed);
                }
                let reply = get(&client, &url).await;
                match reply.status {
                    200 => ok.push(reply.json()["request_num"].as_u64().unwrap()),
                    _ => failed[usize::from(started_in)] += 1,
                }
            }
        })
    };
    eventually("increments flowing", 10 * SECOND, || !load.is_finished()).await;
    phase.store(1, Relaxed);
    assert!(cluster.cli(replica, &["cluster", "failover"]).contains("OK"));
    eventually("the replica took over", 30 * SECOND, || {
        cluster.cli(replica, &["role"]).starts_with("master")
            && cluster.cli(master, &["role"]).starts_with("slave")
    })
    .await;
    phase.store(2, Relaxed);
    // Enough increments after the handover to show both hosts follow it.
    let mut handed_out = vec![count(&first).await];
    while handed_out.len() < 50 {
        handed_out.push(count(&second).await);
    }
    phase.store(3, Relaxed);
    let (during, failed) = load.await.unwrap();
    let acknowledged = during.len();
    handed_out.extend(during);
    let last = count(&first).await;
    handed_out.push(last);
    // An acknowledged increment lost in the handover would hand its number
    // out again: every number is distinct, and the last is the highest.
    let distinct: BTreeSet<u64> = handed_out.iter().copied().collect();
    assert_eq!(distinct.len(), handed_out.len(), "a number was handed out twice: an increment was lost");
    assert_eq!(distinct.iter().next_back(), Some(&last));
    assert!(*distinct.iter().next().unwrap() > 400);
    println!(
        "cluster: 400 concurrent increments exact; 30 of 60 admitted; failover: {acknowledged} increments acknowledged under load, failed before/during/after it: {failed:?}, {} numbers handed out from its start, none twice; counter at {last}",
        handed_out.len()
    );
    // Errors only while the slot moved: none before, none once it had.
    assert_eq!((failed[0], failed[2]), (0, 0), "failures outside the failover: {failed:?}");
    first.stop().await;
    second.stop().await;
}
