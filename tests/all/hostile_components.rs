//! Components that misbehave: work after their response, dropped
//! outparams, spinning, self-amplification, memory in many places, a
//! tampered compile cache, oversized key-value data, forged log lines, and
//! failing upstreams.

use crate::harness::*;
use crate::outbound::aggregate_app;
use crate::upstream::Upstream;
use std::time::{Duration, Instant};

const SECOND: Duration = Duration::from_secs(1);

const FAULT_APP: &str = r#"
[server]
key_value = "memory"
{server}

[[route]]
path = "/fault"
component = "fault"
timeout_secs = 2
max_duration_secs = 2

[[route]]
path = "/hello"
component = "hello"

[component.fault]
source = "{components}/fault.wasm"
allowed_outbound_hosts = ["http://self"]

[component.hello]
source = "{components}/hello.wasm"
"#;

fn fault_app(server: &str) -> String {
    FAULT_APP.replace("{server}", server)
}

#[tokio::test]
async fn guests_working_after_their_response_are_killed_at_their_lifetime_bound() {
    let (server, _dir) =
        TestServer::start(&fault_app("max_concurrent_requests = 4\nmax_requests_in_flight_per_client = 0"))
            .await;
    let client = http1_client();
    let started = Instant::now();
    let url = server.url("/fault?mode=spin-after");
    let spinners = futures::future::join_all((0..4).map(|_| get(&client, &url))).await;
    for reply in &spinners {
        assert_eq!((reply.status, reply.body.as_str()), (200, "fine"));
    }
    // Answered, and still holding every permit.
    assert_eq!(get(&client, &server.url("/hello")).await.status, 503);
    let mut hello = 503;
    while hello != 200 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        hello = get(&client, &server.url("/hello")).await.status;
        assert!(started.elapsed() < 30 * SECOND, "the spinners were never killed");
    }
    let took = started.elapsed();
    assert!(took < 3 * SECOND, "hello served again after {took:?}; the bound is 2 s (+ 1 s)");
    let metrics = &server.app.telemetry.metrics;
    eventually("all four killed", 5 * SECOND, || {
        metrics.instances_killed("max_duration", "after_response") == 4
    })
    .await;
    eventually("instances gone", 5 * SECOND, || live(&server) == 0).await;
    server.stop().await;
}

#[tokio::test]
async fn a_guest_that_drops_its_outparam_gets_500_and_is_killed_at_its_bound() {
    let (server, _dir) = TestServer::start(&fault_app("")).await;
    let client = http1_client();
    for mode in ["drop-outparam", "drop-outparam&then=sleep"] {
        let reply = get(&client, &server.url(&format!("/fault?mode={mode}"))).await;
        assert_eq!(reply.status, 500, "{mode}");
    }
    eventually("both instances killed", 10 * SECOND, || live(&server) == 0 && in_flight(&server) == 0).await;
    assert_eq!(server.app.telemetry.metrics.instances_killed("max_duration", "after_response"), 2);
    server.stop().await;
}

#[tokio::test]
async fn a_spinning_guest_delays_its_neighbours_by_about_one_tick() {
    // One runtime thread, and on it a guest that never stops computing.
    let manifest =
        fault_app("threads = 1").replace("timeout_secs = 2\nmax_duration_secs = 2", "timeout_secs = 60");
    let (server, _dir) = TestServer::start(&manifest).await;
    let spinner = {
        let (client, url) = (http1_client(), server.url("/fault?mode=loop"));
        tokio::spawn(async move { get(&client, &url).await })
    };
    eventually("the spinner runs", 5 * SECOND, || live(&server) == 1).await;
    let client = http1_client();
    let mut latencies = Vec::new();
    for _ in 0..200 {
        let started = Instant::now();
        assert_eq!(get(&client, &server.url("/hello")).await.status, 200);
        latencies.push(started.elapsed());
    }
    latencies.sort();
    let (p50, p99) = (latencies[100], latencies[198]);
    println!("hello beside a spinning guest: p50 {p50:?}, p99 {p99:?}");
    // A tick is 10 ms; before the fix the median was about half a second.
    assert!(p99 < Duration::from_millis(25), "p50 {p50:?}, p99 {p99:?}");
    spinner.abort();
    server.stop().await;
}

#[tokio::test]
async fn a_request_shorter_than_half_a_tick_runs_through_the_tick_it_meets_and_a_long_one_yields() {
    let manifest = r#"
[server]
key_value = "memory"
threads = 1

[[route]]
path = "/busy"
component = "long-running"

[component.long-running]
source = "{components}/long_running.wasm"
"#;
    let (server, _dir) = TestServer::start(manifest).await;
    let ticks = server.app.telemetry.metrics.epoch_ticks().clone();
    let client = http1_client();
    // 2 ms of CPU a request, one after another: most ticks fall inside a
    // request that started less than half a tick before, and it runs on.
    // (Where other work shares the cores, a 2 ms request can take longer
    // than half a tick and rightly yields at the tick it meets: a few may.
    // Without the rule, every tick met would yield.)
    for _ in 0..100 {
        assert_eq!(get(&client, &server.url("/busy?mode=cpu&ms=2")).await.status, 200);
    }
    let (ran_on, yielded) = (ticks.ran_on.get(), ticks.yielded.get());
    assert!(ran_on >= 1, "200 ms of computing met no tick");
    assert!(yielded * 5 <= ran_on, "{yielded} yielded, {ran_on} ran on");
    assert_eq!(ticks.parked.get(), 0, "a 2 ms request was parked ({ran_on} ran on)");
    // The other side: 30 ms of CPU meets two ticks or more; it yields at
    // one and is parked at the next.
    for _ in 0..3 {
        assert_eq!(get(&client, &server.url("/busy?mode=cpu&ms=30")).await.status, 200);
    }
    assert!(ticks.yielded.get() >= 3, "yielded {}", ticks.yielded.get());
    assert!(ticks.parked.get() >= 3, "parked {}", ticks.parked.get());
    server.stop().await;
}

#[tokio::test]
async fn self_calls_stop_at_the_hop_limit_with_508() {
    let (server, _dir) = TestServer::start(&fault_app("max_self_hops = 3")).await;
    let client = http1_client();
    let within = get(&client, &server.url("/fault?mode=selfcall&depth=3")).await;
    assert_eq!((within.status, within.json()["requests"].as_u64()), (200, Some(4)), "{}", within.body);
    let beyond = get(&client, &server.url("/fault?mode=selfcall&depth=10")).await;
    assert_eq!(beyond.status, 508, "{}", beyond.body);
    assert_eq!(beyond.json()["requests"], 4, "the chain stopped at hop 4");
    let metrics = get(&client, &server.admin_url("/metrics")).await.body;
    assert!(metrics.contains(r#"wharf_rejections_total{reason="loop_detected"} 1"#), "{metrics}");
    server.stop().await;
}

#[tokio::test]
async fn a_tree_of_self_calls_shares_one_outbound_budget() {
    let manifest = fault_app("max_self_hops = 5").replace(
        r#"allowed_outbound_hosts = ["http://self"]"#,
        "allowed_outbound_hosts = [\"http://self\"]\nmax_outbound_requests = 12",
    );
    let (server, _dir) = TestServer::start(&manifest).await;
    let client = http1_client();
    let metrics = &server.app.telemetry.metrics;
    // Three calls a level, two levels: 3 + 9 = 12 calls, the whole budget.
    let within = get(&client, &server.url("/fault?mode=selfcall&depth=2&fanout=3")).await;
    assert_eq!((within.status, within.json()["requests"].as_u64()), (200, Some(13)), "{}", within.body);
    assert_eq!(metrics.outbound.over_budget_total(), 0);
    // Six a level, three levels: 258 calls unbounded; the tree gets 12.
    let before = metrics.requests_total();
    let tree = get(&client, &server.url("/fault?mode=selfcall&depth=3&fanout=6")).await;
    assert_eq!(tree.status, 502, "some calls were refused: {}", tree.body);
    assert_eq!(tree.json()["requests"].as_u64(), Some(13), "the root and the 12 calls of its tree");
    eventually("every request of the tree logged", 5 * SECOND, || metrics.requests_total() - before == 13)
        .await;
    assert!(metrics.outbound.over_budget_total() > 0, "the refusals were counted");
    server.stop().await;
}

#[tokio::test]
async fn self_calls_count_against_the_originating_client() {
    // A chain of 5 needs 6 requests in flight at once; the client may have 3.
    let manifest = fault_app("max_requests_in_flight_per_client = 3");
    let (server, _dir) = TestServer::start(&manifest).await;
    let from = http1_client_from("127.0.0.2".parse().unwrap());
    let reply = get(&from, &server.url("/fault?mode=selfcall&depth=5")).await;
    assert_eq!(reply.status, 503, "{}", reply.body);
    let line = server.access_line("a refused self-call", |l| l["reason"] == "client_overloaded").await;
    assert_eq!(line["client"], "127.0.0.2", "counted as the originating client: {line}");
    server.stop().await;
}

#[tokio::test]
async fn a_forty_url_fan_out_to_the_app_itself_is_bounded() {
    let manifest = r#"
[server]
key_value = "memory"
max_concurrent_requests = 64

[[route]]
path = "/aggregate"
component = "aggregate"

[[route]]
path = "/hold"
component = "hold"

[[route]]
path = "/hello"
component = "hello"

[component.aggregate]
source = "{components}/aggregate.wasm"
config = { allow_query_urls = "true", deadline_ms = "30000" }
allowed_outbound_hosts = ["http://self"]

[component.hold]
source = "{components}/hold.wasm"
key_value_stores = ["default"]

[component.hello]
source = "{components}/hello.wasm"
"#;
    let (server, _dir) = TestServer::start(manifest).await;
    let query: Vec<String> = (0..40).map(|i| format!("url=%2Fhold%3Fwait%3Dfan%26n%3D{i}")).collect();
    let url = server.url(&format!("/aggregate?{}", query.join("&")));
    let fan_out = {
        let client = http1_client();
        tokio::spawn(async move { get(&client, &url).await })
    };
    // The aggregate instance and 16 held calls: its outbound concurrency.
    eventually("the first wave held", 10 * SECOND, || live(&server) == 17).await;
    let other = http1_client_from("127.0.0.2".parse().unwrap());
    for _ in 0..5 {
        assert_eq!(get(&other, &server.url("/hello")).await.status, 200, "another client is served");
    }
    assert_eq!(live(&server), 17, "never more than 16 calls at once");
    release(&server, "fan").await;
    let reply = fan_out.await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.body);
    let results = reply.json()["results"].as_array().unwrap().clone();
    assert_eq!(results.len(), 40);
    assert!(results.iter().all(|r| r["status"] == 200), "all 40 done, 16 at a time");
    server.stop().await;
}

#[tokio::test]
async fn an_instance_may_send_only_its_outbound_budget() {
    let manifest = aggregate_app("", "max_outbound_requests = 3\nmax_concurrent_outbound_requests = 2");
    let (server, _dir) = TestServer::start(&manifest).await;
    let upstream = Upstream::start().await;
    let client = http1_client();
    let path = |urls: &[String], extra: &str| {
        let query: Vec<String> = urls
            .iter()
            .map(|u| {
                format!(
                    "url={}",
                    u.replace(':', "%3A")
                        .replace('/', "%2F")
                        .replace('?', "%3F")
                        .replace('&', "%26")
                        .replace('=', "%3D")
                )
            })
            .collect();
        server.url(&format!("/aggregate?{}{extra}", query.join("&")))
    };
    let five: Vec<String> = (0..5).map(|i| upstream.url(&format!("/ok?i={i}"))).collect();
    let reply = get(&client, &path(&five, "&mode=partial")).await.json();
    let errors: Vec<_> =
        reply["results"].as_array().unwrap().iter().filter_map(|r| r["error"].as_str()).collect();
    assert_eq!(errors, ["ErrorCode::HttpRequestDenied", "ErrorCode::HttpRequestDenied"], "{reply}");
    // Two at once: a barrier for two is passed, one for three is not.
    let two: Vec<String> = (0..2).map(|_| upstream.url("/barrier?key=two&n=2")).collect();
    assert_eq!(get(&client, &path(&two, "&timeout_ms=10000")).await.status, 200);
    let three: Vec<String> = (0..3).map(|_| upstream.url("/barrier?key=three&n=3")).collect();
    assert_eq!(get(&client, &path(&three, "&timeout_ms=1000")).await.status, 504);
    server.stop().await;
}

#[tokio::test]
async fn a_failing_upstream_trips_its_breaker_and_a_good_probe_closes_it() {
    let manifest = aggregate_app("breaker_failures = 5\nbreaker_open_secs = 1", "");
    let (server, _dir) = TestServer::start(&manifest).await;
    let upstream = Upstream::start().await;
    let client = http1_client();
    let target = upstream.url("/switchable").replace(':', "%3A").replace('/', "%2F");
    let call = || {
        let (client, url) = (client.clone(), server.url(&format!("/aggregate?url={target}&mode=partial")));
        async move { get(&client, &url).await.json()["results"][0].clone() }
    };
    let breakers = || {
        let client = client.clone();
        let url = server.admin_url("/healthz");
        async move { get(&client, &url).await.json()["outbound_breakers"].clone() }
    };
    upstream.set_failing(true);
    for _ in 0..5 {
        assert_eq!(call().await["error"], "status 500");
    }
    assert_eq!(upstream.switchable_hits(), 5);
    // Open: calls fail at once, nothing reaches the upstream.
    for _ in 0..3 {
        assert_eq!(call().await["error"], "ErrorCode::DestinationUnavailable");
    }
    assert_eq!(upstream.switchable_hits(), 5, "an open breaker sends nothing");
    assert_eq!(breakers().await[0]["state"], "open");
    let metrics = get(&client, &server.admin_url("/metrics")).await.body;
    assert!(metrics.contains("wharf_outbound_breakers_open 1"), "{metrics}");
    // After its open time, one probe goes; a good one closes the breaker.
    upstream.set_failing(false);
    let deadline = Instant::now() + 10 * SECOND;
    while breakers().await[0]["state"] != "half_open" {
        assert!(Instant::now() < deadline, "the breaker never half-opened");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(call().await["status"], 200);
    assert_eq!(upstream.switchable_hits(), 6, "exactly one probe");
    assert_eq!(breakers().await, serde_json::json!([]), "closed and forgotten");
    assert_eq!(call().await["status"], 200);
    server.stop().await;
}

const TWO_MEMORIES: &str = include_str!("../fixtures/two-memories.wat");

#[tokio::test]
async fn memories_are_summed_against_the_components_ceiling() {
    let dir = tempfile::tempdir().unwrap();
    // 10 MiB in each of two memories: 20 MiB in all.
    let binary = wat::parse_str(TWO_MEMORIES.replace("PAGES", "160")).unwrap();
    std::fs::write(dir.path().join("two-memories.wasm"), binary).unwrap();
    let manifest = r#"
[server]
key_value = "memory"

[[route]]
path = "/tight"
component = "tight"

[[route]]
path = "/roomy"
component = "roomy"

[[route]]
path = "/hello"
component = "hello"

[component.tight]
source = "two-memories.wasm"
max_memory_mb = 16

[component.roomy]
source = "two-memories.wasm"
max_memory_mb = 32

[component.hello]
source = "{components}/hello.wasm"
"#;
    let server = TestServer::start_in(dir.path(), manifest).await;
    let client = http1_client();
    for _ in 0..3 {
        assert_eq!(get(&client, &server.url("/tight")).await.status, 500);
        assert_eq!(get(&client, &server.url("/roomy")).await.status, 500);
        assert_eq!(get(&client, &server.url("/hello")).await.status, 200, "others are served");
    }
    let tight = server.access_line("tight", |l| l["path"] == "/tight").await;
    assert!(tight["reason"].as_str().unwrap().starts_with("guest trapped"), "{tight}");
    let roomy = server.access_line("roomy", |l| l["path"] == "/roomy").await;
    assert_eq!(roomy["reason"], "guest returned without a response", "20 MiB fit in 32: {roomy}");
    eventually("instances gone", 5 * SECOND, || live(&server) == 0).await;
    server.stop().await;
}

const CACHE_APP: &str = r#"
[server]
key_value = "memory"

[[route]]
path = "/hello"
component = "hello"

[[route]]
path = "/counter"
component = "counter"

[component.hello]
source = "hello.wasm"

[component.counter]
source = "counter.wasm"
key_value_stores = ["default"]
"#;

#[tokio::test]
async fn a_swapped_modified_or_symlinked_cache_entry_is_rebuilt_never_run() {
    use wharf::runtime::cache::CacheOutcome;
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(component("hello"), dir.path().join("hello.wasm")).unwrap();
    std::fs::copy(component("counter"), dir.path().join("counter.wasm")).unwrap();
    let outcome =
        |server: &TestServer, name: &str| server.app.routes.current().component(name).unwrap().cache;
    let server = TestServer::start_in(dir.path(), CACHE_APP).await;
    let hello_entry = server
        .app
        .runtime
        .compile_cache_entry(server.app.routes.current().component("hello").unwrap())
        .unwrap();
    let counter_entry = server
        .app
        .runtime
        .compile_cache_entry(server.app.routes.current().component("counter").unwrap())
        .unwrap();
    server.stop().await;
    let cache_dir = hello_entry.parent().unwrap().to_path_buf();
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&cache_dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "the cache directory is private");
        let key = std::fs::metadata(cache_dir.join("mac.key")).unwrap().permissions().mode() & 0o777;
        assert_eq!(key, 0o600, "the key is private");
    }
    let tamperings: [(&str, &dyn Fn()); 3] = [
        ("swapped", &|| {
            std::fs::copy(&counter_entry, &hello_entry).unwrap();
        }),
        ("modified", &|| {
            let mut bytes = std::fs::read(&hello_entry).unwrap();
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0x55;
            std::fs::write(&hello_entry, bytes).unwrap();
        }),
        ("symlinked", &|| {
            std::fs::remove_file(&hello_entry).unwrap();
            std::os::unix::fs::symlink(&counter_entry, &hello_entry).unwrap();
        }),
    ];
    for (how, tamper) in tamperings {
        tamper();
        let server = TestServer::start_in(dir.path(), CACHE_APP).await;
        assert_eq!(outcome(&server, "hello"), CacheOutcome::Rebuilt, "{how}");
        assert_eq!(outcome(&server, "counter"), CacheOutcome::Hit, "{how}: the other entry is untouched");
        let reply = get(&http1_client(), &server.url("/hello")).await;
        assert_eq!(reply.body, "Hello, world!\n", "{how}: the counter's code never ran as hello");
        server.stop().await;
        assert!(!std::fs::symlink_metadata(&hello_entry).unwrap().file_type().is_symlink(), "{how}");
        let server = TestServer::start_in(dir.path(), CACHE_APP).await;
        assert_eq!(outcome(&server, "hello"), CacheOutcome::Hit, "{how}: the rebuilt entry is used");
        server.stop().await;
    }
}

const KV_APP: &str = r#"
[server]
key_value = "memory"
max_key_bytes = 100
max_value_bytes = 1000
max_keys_per_store = 3000

[[route]]
path = "/kv"
component = "kv"

[component.kv]
source = "{components}/kv.wasm"
key_value_stores = ["default"]
"#;

#[tokio::test]
async fn oversized_keys_and_values_and_full_stores_are_refused() {
    let (server, _dir) = TestServer::start(KV_APP).await;
    let kv = |query: String| {
        let (client, url) = (http1_client(), server.url(&format!("/kv?{query}")));
        async move { get(&client, &url).await }
    };
    let long_key = "k".repeat(101);
    let refused = kv(format!("op=set&key={long_key}&value=1")).await;
    assert_eq!(refused.status, 500);
    assert!(
        refused.json()["error"].as_str().unwrap().contains("key is 101 bytes; the limit is 100"),
        "{}",
        refused.body
    );
    assert_eq!(kv(format!("op=get&key={long_key}")).await.status, 500);
    let refused = kv("op=set&key=big&size=1001".into()).await;
    assert!(
        refused.json()["error"].as_str().unwrap().contains("value is 1001 bytes; the limit is 1000"),
        "{}",
        refused.body
    );
    assert_eq!(kv("op=set&key=fits&size=1000".into()).await.status, 200);
    // 2,500 keys come back in pages of 1,000.
    for batch in 0..3 {
        let query = format!("op=set-many&prefix=b{batch}-&n=833");
        assert_eq!(kv(query).await.status, 200);
    }
    let listed = kv("op=list-all".into()).await.json();
    assert_eq!(listed["keys"].as_array().unwrap().len(), 2500);
    assert_eq!(listed["pages"], 3);
    // The store holds at most 3,000 keys: 1 + 2,499 + 500.
    assert_eq!(kv("op=set-many&prefix=c-&n=500".into()).await.status, 200);
    let full = kv("op=set&key=one-more&value=x".into()).await;
    assert!(full.json()["error"].as_str().unwrap().contains("max_keys_per_store"), "{}", full.body);
    assert_eq!(kv("op=set&key=fits&value=replacing-is-fine".into()).await.status, 200);
    server.stop().await;
}

#[tokio::test]
async fn a_guest_printing_a_fake_log_line_shows_up_prefixed() {
    let forged = "2026-11-27T00:00:00.000000Z%20%20INFO%20wharf::access:%20forged%0Asecond%20line";
    let path = format!("/fault?mode=print&text={forged}");
    let guest = guest_output_of_one_request(&fault_app(""), &path, "fault").await;
    assert!(
        guest.iter().any(|l| l["line"].as_str().unwrap().ends_with("wharf::access: forged")),
        "{guest:?}"
    );
}

#[tokio::test]
async fn denied_hosts_never_become_metric_labels() {
    let (server, _dir) = TestServer::start(&aggregate_app("", "")).await;
    let client = http1_client();
    for batch in 0..10 {
        let query: Vec<String> =
            (0..20).map(|i| format!("url=http%3A%2F%2Fevil-{batch}-{i}.example%2F")).collect();
        get(&client, &server.url(&format!("/aggregate?{}&mode=partial", query.join("&")))).await;
    }
    let metrics = get(&client, &server.admin_url("/metrics")).await.body;
    assert!(metrics.contains("wharf_outbound_denied_total 200"), "{metrics}");
    assert!(!metrics.contains("evil-"), "a guest-chosen host became a label");
    server.stop().await;
}
