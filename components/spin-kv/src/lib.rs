//! `spin-kv` (tests only): Spin's key-value interface from Spin SDK 7
//! (`spin:key-value/key-value@3.0.0`, WASI 0.3), chosen by `op=`:
//! `incr` (get, add one, set; answers the new count), `get`, `set`
//! (`value=`), `delete`, `exists`, `keys` (sorted, comma-separated), on store
//! `store=` (default `default`), key `key=`. 500 with Spin's error otherwise.

use spin_sdk::http::{IntoResponse, Request, StatusCode};
use spin_sdk::http_service;
use spin_sdk::key_value::Store;

fn param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| pair.strip_prefix(name)?.strip_prefix('=').map(str::to_string))
}

#[http_service]
async fn handle(request: Request) -> impl IntoResponse {
    let query = request.uri().query().unwrap_or("").to_string();
    let store = param(&query, "store").unwrap_or_else(|| "default".into());
    let key = param(&query, "key").unwrap_or_default();
    let store = match Store::open(&store).await {
        Ok(store) => store,
        Err(error) => return (StatusCode::INTERNAL_SERVER_ERROR, format!("open: {error:?}")),
    };
    let answer = match param(&query, "op").as_deref().unwrap_or("get") {
        "incr" => async {
            let current = store.get(&key).await?;
            let count = current.and_then(|v| String::from_utf8(v).ok()?.parse::<u64>().ok()).unwrap_or(0) + 1;
            store.set(&key, count.to_string()).await?;
            Ok(count.to_string())
        }
        .await,
        "get" => store.get(&key).await.map(|v| v.map_or("(none)".into(), |v| String::from_utf8_lossy(&v).into())),
        "set" => store.set(&key, param(&query, "value").unwrap_or_default()).await.map(|()| "ok".into()),
        "delete" => store.delete(&key).await.map(|()| "ok".into()),
        "exists" => store.exists(&key).await.map(|e| e.to_string()),
        "keys" => store.get_keys().await.collect().await.map(|mut keys| {
            keys.sort();
            keys.join(",")
        }),
        other => return (StatusCode::BAD_REQUEST, format!("unknown op {other:?}")),
    };
    match answer {
        Ok(body) => (StatusCode::OK, body),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{error:?}")),
    }
}
