//! `swap-v1` (tests only): answers 200 `v1`. With `swap-v2` it gives
//! hot-swap tests two versions of one component to swap between.

use wharf_guest::bindings::exports::wasi::http::incoming_handler::Guest;
use wharf_guest::bindings::wasi::http::types::{IncomingRequest, ResponseOutparam};

struct Swap;

impl Guest for Swap {
    fn handle(_request: IncomingRequest, out: ResponseOutparam) {
        wharf_guest::respond(out, 200, "text/plain", b"v1");
    }
}

wharf_guest::export!(Swap);
