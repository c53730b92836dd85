//! `swap-v1` (tests only): answers 200 `v1`; with `?wait=KEY` it first
//! holds until KEY exists in key-value store `default`. With `swap-v2` it
//! gives hot-swap tests two versions of one component to swap between, and
//! a request held across a swap shows which version served it.

use wharf_guest::bindings::exports::wasi::http::incoming_handler::Guest;
use wharf_guest::bindings::wasi::http::types::{IncomingRequest, ResponseOutparam};

struct Swap;

impl Guest for Swap {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        if let Some(key) = wharf_guest::query_param(&request, "wait") {
            wharf_guest::wait_for_key(&key);
        }
        wharf_guest::respond(out, 200, "text/plain", b"v1");
    }
}

wharf_guest::export!(Swap);
