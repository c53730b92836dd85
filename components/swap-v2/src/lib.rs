//! `swap-v2` (tests only): answers 200 `v2`. With `swap-v1` it gives
//! hot-swap tests two versions of one component to swap between.

use wharf_guest::bindings::exports::wasi::http::incoming_handler::Guest;
use wharf_guest::bindings::wasi::http::types::{IncomingRequest, ResponseOutparam};

struct Swap;

impl Guest for Swap {
    fn handle(_request: IncomingRequest, out: ResponseOutparam) {
        wharf_guest::respond(out, 200, "text/plain", b"v2");
    }
}

wharf_guest::export!(Swap);
