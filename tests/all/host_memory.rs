//! What a guest makes the host hold, outside its own memory: counted per
//! instance against `max_host_memory_mb`, and live resources capped at
//! `max_resources`; past either, the instance is killed with its reason.

use crate::harness::*;
use std::time::Duration;

const SECOND: Duration = Duration::from_secs(1);

fn fault_app(component: &str) -> String {
    format!(
        r#"
[server]
key_value = "memory"

[[route]]
path = "/fault"
component = "fault"

[[route]]
path = "/hello"
component = "hello"

[component.fault]
source = "{{components}}/fault.wasm"
{component}

[component.hello]
source = "{{components}}/hello.wasm"
"#
    )
}

#[tokio::test]
async fn a_guest_holding_host_memory_past_its_limit_is_killed_and_one_under_it_is_not() {
    let (server, _dir) = TestServer::start(&fault_app("max_host_memory_mb = 16")).await;
    let client = http1_client();
    // 100 headers of 100 KB: about 10 MB, under the limit.
    let under = get(&client, &server.url("/fault?mode=fields&count=100&size=100000")).await;
    assert_eq!((under.status, under.json()["fields"].as_u64()), (200, Some(100)), "{}", under.body);
    // 1,000 of them: about 100 MB, killed on the way.
    let over = get(&client, &server.url("/fault?mode=fields&count=1000&size=100000")).await;
    assert_eq!(over.status, 500);
    let metrics = &server.app.telemetry.metrics;
    assert_eq!(metrics.instances_killed("host_memory", "before_headers"), 1);
    let line = server.access_line("the killed request", |l| l["status"] == 500).await;
    assert!(line["reason"].as_str().unwrap().contains("max_host_memory_mb"), "{line}");
    assert_eq!(get(&client, &server.url("/hello")).await.status, 200, "the host keeps serving");
    eventually("every instance gone", 5 * SECOND, || live(&server) == 0).await;
    server.stop().await;
}

#[tokio::test]
async fn a_guest_holding_too_many_resources_is_killed_and_one_under_the_cap_is_not() {
    let (server, _dir) = TestServer::start(&fault_app("max_resources = 1000")).await;
    let client = http1_client();
    let under = get(&client, &server.url("/fault?mode=fields&count=900&size=0")).await;
    assert_eq!((under.status, under.json()["fields"].as_u64()), (200, Some(900)), "{}", under.body);
    let over = get(&client, &server.url("/fault?mode=fields&count=5000&size=0")).await;
    assert_eq!(over.status, 500);
    assert_eq!(server.app.telemetry.metrics.instances_killed("max_resources", "before_headers"), 1);
    let line = server.access_line("the killed request", |l| l["status"] == 500).await;
    assert!(line["reason"].as_str().unwrap().contains("max_resources"), "{line}");
    server.stop().await;
}

/// Peak resident memory of process `pid`, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

#[tokio::test]
async fn one_such_request_raises_the_peak_rss_by_about_its_limit_and_n_by_n_times_it() {
    // The real binary with its default limit (the component's 64 MiB of
    // memory), asked to hold 1,000 headers of 100 KB (100 MB) each time.
    // Started twice: the second start loads the compiled components from
    // its cache, so compiling does not set the peak to beat.
    let dir = tempfile::tempdir().unwrap();
    let mut first = WharfProcess::start(dir.path(), &fault_app(""));
    first.signal("TERM");
    assert!(first.wait().await.success());
    let wharf = WharfProcess::start(dir.path(), &fault_app(""));
    let client = http1_client();
    let url = |path: &str| format!("http://{}{path}", wharf.addr);
    assert_eq!(get(&client, &url("/hello")).await.status, 200);
    let attack = url("/fault?mode=fields&count=1000&size=100000");
    let baseline = peak_rss(wharf.pid());
    const LIMIT: u64 = 64 << 20;
    assert_eq!(get(&client, &attack).await.status, 500);
    let one = peak_rss(wharf.pid()) - baseline;
    assert!(one <= LIMIT + LIMIT / 2, "one request raised the peak by {} MiB", one >> 20);
    let four = futures::future::join_all((0..4).map(|_| get(&client, &attack))).await;
    assert!(four.iter().all(|r| r.status == 500));
    let all = peak_rss(wharf.pid()) - baseline;
    eprintln!("peak RSS above the baseline: one request {} MiB, then four {} MiB", one >> 20, all >> 20);
    assert!(all <= 4 * (LIMIT + LIMIT / 2), "four requests raised the peak by {} MiB", all >> 20);
    let health = wharf.health().await;
    assert_eq!(health["status"], "ok", "{health}");
}
