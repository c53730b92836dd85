//! `wasi:keyvalue` through the `kv` component: store access control, the
//! batch interface, listing keys.

use crate::harness::*;

const APP: &str = r#"
[server]
key_value = "memory"

[[route]]
path = "/kv"
component = "kv"

[[route]]
path = "/other"
component = "other"

[component.kv]
source = "{components}/kv.wasm"
key_value_stores = ["default", "second"]

[component.other]
source = "{components}/kv.wasm"
key_value_stores = ["second"]
"#;

async fn kv(server: &TestServer, path_and_query: &str) -> Reply {
    get(&http1_client(), &server.url(path_and_query)).await
}

#[tokio::test]
async fn a_component_may_open_only_the_stores_it_lists() {
    let (server, _dir) = TestServer::start(APP).await;
    assert_eq!(kv(&server, "/kv?op=set&key=a&value=1").await.status, 200);
    let denied = kv(&server, "/other?op=get&key=a").await;
    assert_eq!((denied.status, denied.json()["error"].as_str()), (500, Some("Error::AccessDenied")));
    let undeclared = kv(&server, "/kv?op=get&key=a&store=third").await;
    assert_eq!(undeclared.json()["error"], "Error::AccessDenied");
    // Two components listing the same store share it.
    assert_eq!(kv(&server, "/kv?op=set&key=shared&value=yes&store=second").await.status, 200);
    assert_eq!(kv(&server, "/other?op=get&key=shared&store=second").await.json()["value"], "yes");
    server.stop().await;
}

#[tokio::test]
async fn batch_calls_set_get_and_delete_many_keys() {
    let (server, _dir) = TestServer::start(APP).await;
    assert_eq!(kv(&server, "/kv?op=set-many&prefix=b&n=3").await.status, 200);
    let got = kv(&server, "/kv?op=get-many&keys=b0,b2,missing").await.json();
    assert_eq!(got["values"], serde_json::json!([["b0", "0"], ["b2", "2"], null]));
    assert_eq!(kv(&server, "/kv?op=delete-many&keys=b0,b1").await.status, 200);
    let got = kv(&server, "/kv?op=get-many&keys=b0,b1,b2").await.json();
    assert_eq!(got["values"], serde_json::json!([null, null, ["b2", "2"]]));
    assert_eq!(kv(&server, "/kv?op=exists&key=b2").await.json()["exists"], true);
    assert_eq!(kv(&server, "/kv?op=exists&key=b0").await.json()["exists"], false);
    server.stop().await;
}

#[tokio::test]
async fn list_keys_returns_every_key_of_the_store() {
    let (server, _dir) = TestServer::start(APP).await;
    assert_eq!(kv(&server, "/kv?op=set-many&prefix=k&n=25").await.status, 200);
    assert_eq!(kv(&server, "/kv?op=set&key=elsewhere&value=1&store=second").await.status, 200);
    let listed = kv(&server, "/kv?op=list-all").await.json();
    let mut keys: Vec<String> =
        listed["keys"].as_array().unwrap().iter().map(|k| k.as_str().unwrap().to_string()).collect();
    keys.sort();
    let mut expected: Vec<String> = (0..25).map(|i| format!("k{i}")).collect();
    expected.sort();
    assert_eq!(keys, expected, "all keys of `default`, none of `second`");
    server.stop().await;
}

#[tokio::test]
async fn increments_and_deletes_behave_like_redis() {
    let (server, _dir) = TestServer::start(APP).await;
    assert_eq!(kv(&server, "/kv?op=increment&key=n&delta=5").await.json()["value"], 5);
    assert_eq!(kv(&server, "/kv?op=increment&key=n&delta=2").await.json()["value"], 7);
    assert_eq!(kv(&server, "/kv?op=get&key=n").await.json()["value"], "7");
    assert_eq!(kv(&server, "/kv?op=set&key=word&value=abc").await.status, 200);
    let refused = kv(&server, "/kv?op=increment&key=word").await;
    assert_eq!(refused.status, 500, "{}", refused.body);
    assert_eq!(kv(&server, "/kv?op=delete&key=n").await.status, 200);
    assert_eq!(kv(&server, "/kv?op=get&key=n").await.json()["value"], serde_json::Value::Null);
    assert_eq!(kv(&server, "/kv?op=delete&key=n").await.status, 200, "deleting an absent key is fine");
    server.stop().await;
}

/// The shared counter on the default store (redb), in a real `wharf`
/// process killed with SIGKILL under load: every increment a client was
/// told about is on disk after the restart. An increment whose response the
/// kill cut off may be on disk too, so the count lies between the 200s
/// received and those plus the requests in flight at the kill. (A killed
/// process leaves its writes in the page cache, so this cannot tell a
/// missing fsync: `keyvalue/redb.rs`'s power-loss test, on a disk that
/// keeps only what was synced, does.)
#[tokio::test]
async fn no_acknowledged_increment_is_lost_when_the_process_is_killed() {
    const CLIENTS: u64 = 16;
    let dir = tempfile::tempdir().unwrap();
    let manifest = r#"
[server]

[[route]]
path = "/count"
component = "counter"

[component.counter]
source = "{components}/counter.wasm"
key_value_stores = ["default"]
config = { delay_ms = "0" }
"#;
    let mut wharf = WharfProcess::start(dir.path(), manifest);
    let url = format!("http://{}/count", wharf.addr);
    let acknowledged = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let highest_seen = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (client, url) = (http1_client(), url.clone());
            let (acknowledged, highest_seen) = (acknowledged.clone(), highest_seen.clone());
            tokio::spawn(async move {
                // Until the server is gone: every 200 is one durable increment.
                while let Ok(response) = client.get(url.parse().unwrap()).await {
                    let status = response.status();
                    let Ok(body) = http_body_util::BodyExt::collect(response.into_body()).await else {
                        break;
                    };
                    assert_eq!(status, 200);
                    let n =
                        serde_json::from_slice::<serde_json::Value>(&body.to_bytes()).unwrap()["request_num"]
                            .as_u64()
                            .unwrap();
                    highest_seen.fetch_max(n, std::sync::atomic::Ordering::SeqCst);
                    acknowledged.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            })
        })
        .collect();
    eventually("500 increments acknowledged", std::time::Duration::from_secs(60), || {
        acknowledged.load(std::sync::atomic::Ordering::SeqCst) >= 500
    })
    .await;
    wharf.signal("KILL");
    for client in clients {
        client.await.unwrap();
    }
    let status = wharf.wait().await;
    assert!(!status.success(), "killed, not exited: {status}");
    let acknowledged = acknowledged.load(std::sync::atomic::Ordering::SeqCst);
    let highest_seen = highest_seen.load(std::sync::atomic::Ordering::SeqCst);

    let wharf = WharfProcess::start(dir.path(), manifest);
    let after = get(&http1_client(), &format!("http://{}/count", wharf.addr)).await;
    let stored = after.json()["request_num"].as_u64().unwrap() - 1;
    assert!(stored >= acknowledged, "{acknowledged} increments acknowledged, {stored} on disk");
    assert!(stored >= highest_seen, "a client saw {highest_seen}, {stored} on disk");
    assert!(
        stored <= acknowledged + CLIENTS,
        "{stored} on disk, only {acknowledged} acknowledged (+{CLIENTS} in flight)"
    );
}
