//! `spin-wasi-kv` (tests only): the standard interfaces at the versions
//! Spin ships, from Spin SDK 7: `wasi:keyvalue@0.2.0-draft2` and
//! `wasi:config/store@0.2.0-draft-2024-09-27`. By `op=` on store `default`:
//! `incr` (atomics.increment by `by=`, default 1; answers the new value),
//! `get`, `cas` (compare-and-swap `key=` from what it holds to `value=`:
//! answers `swapped` or `changed`), `keys` (sorted, comma-separated),
//! `config` (config value `key=`, or `(none)`), `config-all`.

use spin_sdk::experimental::wasi::config::store as config;
use spin_sdk::experimental::wasi::keyvalue::{atomics, store};
use spin_sdk::http::{IntoResponse, Request, StatusCode};
use spin_sdk::http_service;

fn param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| pair.strip_prefix(name)?.strip_prefix('=').map(str::to_string))
}

#[http_service]
async fn handle(request: Request) -> impl IntoResponse {
    let query = request.uri().query().unwrap_or("").to_string();
    let key = param(&query, "key").unwrap_or_default();
    let op = param(&query, "op").unwrap_or_else(|| "get".into());
    if op == "config" {
        return match config::get(&key) {
            Ok(value) => (StatusCode::OK, value.unwrap_or_else(|| "(none)".into())),
            Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{error:?}")),
        };
    }
    if op == "config-all" {
        return match config::get_all() {
            Ok(mut all) => {
                all.sort();
                (StatusCode::OK, all.into_iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","))
            }
            Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{error:?}")),
        };
    }
    let bucket = match store::open("default") {
        Ok(bucket) => bucket,
        Err(error) => return (StatusCode::INTERNAL_SERVER_ERROR, format!("open: {error:?}")),
    };
    let answer: Result<String, String> = match op.as_str() {
        "incr" => {
            let by = param(&query, "by").and_then(|b| b.parse().ok()).unwrap_or(1);
            atomics::increment(&bucket, &key, by).map(|n| n.to_string()).map_err(|e| format!("{e:?}"))
        }
        "get" => bucket
            .get(&key)
            .map(|v| v.map_or("(none)".into(), |v| String::from_utf8_lossy(&v).into()))
            .map_err(|e| format!("{e:?}")),
        "cas" => match atomics::Cas::new(&bucket, &key) {
            Err(error) => Err(format!("{error:?}")),
            Ok(cas) => {
                // Another writer between the read and the swap, if asked.
                if let Some(meanwhile) = param(&query, "meanwhile") {
                    let _ = bucket.set(&key, meanwhile.as_bytes());
                }
                match atomics::swap(cas, param(&query, "value").unwrap_or_default().as_bytes()) {
                    Ok(()) => Ok("swapped".into()),
                    Err(atomics::CasError::CasFailed(_)) => Ok("changed".into()),
                    Err(atomics::CasError::StoreError(error)) => Err(format!("{error:?}")),
                }
            }
        },
        "keys" => bucket
            .list_keys(None)
            .map(|response| {
                let mut keys = response.keys;
                keys.sort();
                keys.join(",")
            })
            .map_err(|e| format!("{e:?}")),
        other => return (StatusCode::BAD_REQUEST, format!("unknown op {other:?}")),
    };
    match answer {
        Ok(body) => (StatusCode::OK, body),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, error),
    }
}
