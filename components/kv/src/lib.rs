//! `kv` (tests only): drives every `wasi:keyvalue` call from the query
//! string, so tests reach the whole interface over HTTP. `&store=` picks the
//! store (default `default`). Answers 200 with JSON, or 500
//! `{"error": "..."}` with the interface's error.
//! - `op=get&key=K`: `{"value": "..."|null}`
//! - `op=set&key=K&value=V` (or `&size=N`: N bytes of `x`)
//! - `op=delete&key=K`, `op=exists&key=K`
//! - `op=increment&key=K&delta=D`: `{"value": N}`
//! - `op=set-many&prefix=P&n=N`: sets P0..P(N-1) to their index
//! - `op=get-many&keys=a,b`: `{"values": [["a","..."], null]}`
//! - `op=delete-many&keys=a,b`
//! - `op=list&cursor=C`: one page, `{"keys": [...], "cursor": C|null}`
//! - `op=list-all`: follows the cursor, `{"keys": [...], "pages": N}`

use serde_json::json;
use wharf_guest::bindings::exports::wasi::http::incoming_handler::Guest;
use wharf_guest::bindings::wasi::http::types::{IncomingRequest, ResponseOutparam};
use wharf_guest::bindings::wasi::keyvalue::{atomics, batch, store};

struct Kv;

impl Guest for Kv {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let param = |name: &str| wharf_guest::query_param(&request, name);
        let (status, body) = match run(&param) {
            Ok(body) => (200, body),
            Err(error) => (500, json!({ "error": error })),
        };
        wharf_guest::respond(out, status, "application/json", body.to_string().as_bytes());
    }
}

fn run(param: &dyn Fn(&str) -> Option<String>) -> Result<serde_json::Value, String> {
    let error = |e: store::Error| format!("{e:?}");
    let store_name = param("store").unwrap_or_else(|| "default".into());
    let bucket = store::open(&store_name).map_err(error)?;
    let key = || param("key").unwrap_or_else(|| "key".into());
    let keys = || -> Vec<String> {
        param("keys").map(|k| k.split(',').map(str::to_string).collect()).unwrap_or_default()
    };
    let text = |bytes: Vec<u8>| String::from_utf8_lossy(&bytes).into_owned();
    Ok(match param("op").as_deref().unwrap_or("get") {
        "get" => json!({ "value": bucket.get(&key()).map_err(error)?.map(text) }),
        "set" => {
            let value = match param("size").and_then(|s| s.parse::<usize>().ok()) {
                Some(size) => vec![b'x'; size],
                None => param("value").unwrap_or_default().into_bytes(),
            };
            bucket.set(&key(), &value).map_err(error)?;
            json!({ "ok": true })
        }
        "delete" => {
            bucket.delete(&key()).map_err(error)?;
            json!({ "ok": true })
        }
        "exists" => json!({ "exists": bucket.exists(&key()).map_err(error)? }),
        "increment" => {
            let delta = param("delta").and_then(|d| d.parse().ok()).unwrap_or(1);
            json!({ "value": atomics::increment(&bucket, &key(), delta).map_err(error)? })
        }
        "set-many" => {
            let prefix = param("prefix").unwrap_or_else(|| "k".into());
            let n: usize = param("n").and_then(|n| n.parse().ok()).unwrap_or(1);
            let entries: Vec<(String, Vec<u8>)> =
                (0..n).map(|i| (format!("{prefix}{i}"), i.to_string().into_bytes())).collect();
            batch::set_many(&bucket, &entries).map_err(error)?;
            json!({ "ok": true })
        }
        "get-many" => {
            let values = batch::get_many(&bucket, &keys()).map_err(error)?;
            let values: Vec<_> = values.into_iter().map(|v| v.map(|(k, v)| json!([k, text(v)]))).collect();
            json!({ "values": values })
        }
        "delete-many" => {
            batch::delete_many(&bucket, &keys()).map_err(error)?;
            json!({ "ok": true })
        }
        "list" => {
            let cursor = param("cursor").and_then(|c| c.parse().ok());
            let page = bucket.list_keys(cursor).map_err(error)?;
            json!({ "keys": page.keys, "cursor": page.cursor })
        }
        "list-all" => {
            let (mut keys, mut pages, mut cursor) = (Vec::new(), 0, None);
            loop {
                let page = bucket.list_keys(cursor).map_err(error)?;
                pages += 1;
                keys.extend(page.keys);
                match page.cursor {
                    Some(next) if pages < 10_000 => cursor = Some(next),
                    _ => break,
                }
            }
            json!({ "keys": keys, "pages": pages })
        }
        other => return Err(format!("unknown op {other:?}")),
    })
}

wharf_guest::export!(Kv);
