//! `counter`: the basic concurrent server. Each request increments a shared
//! counter atomically through `wasi:keyvalue` (store `default`, key
//! `request_count`), waits `delay_ms` (config, default 100) on the host clock,
//! then answers `{"request_num": N, "method": "...", "path": "..."}`.

use wharf_guest::bindings::exports::wasi::http::incoming_handler::Guest;
use wharf_guest::bindings::wasi::http::types::{IncomingRequest, ResponseOutparam};
use wharf_guest::bindings::wasi::keyvalue::{atomics, store};

struct Counter;

const DEFAULT_DELAY_MS: u64 = 100;

impl Guest for Counter {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let request_num = match increment() {
            Ok(n) => n,
            Err(message) => {
                let body = serde_json::json!({ "error": message }).to_string();
                return wharf_guest::respond(out, 500, "application/json", body.as_bytes());
            }
        };
        let delay_ms =
            wharf_guest::config("delay_ms").and_then(|value| value.parse().ok()).unwrap_or(DEFAULT_DELAY_MS);
        wharf_guest::sleep_ms(delay_ms);
        let body = serde_json::json!({
            "request_num": request_num,
            "method": wharf_guest::method_name(&request),
            "path": wharf_guest::path(&request),
        })
        .to_string();
        wharf_guest::respond(out, 200, "application/json", body.as_bytes());
    }
}

fn increment() -> Result<u64, String> {
    let bucket = store::open("default").map_err(|e| format!("open store: {e:?}"))?;
    atomics::increment(&bucket, "request_count", 1).map_err(|e| format!("increment: {e:?}"))
}

wharf_guest::export!(Counter);
