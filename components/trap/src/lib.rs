//! `trap` (tests only): panics, so the instance traps before it responds,
//! unless the query has `ok=1`, which answers 200 `fine`.

use wharf_guest::bindings::exports::wasi::http::incoming_handler::Guest;
use wharf_guest::bindings::wasi::http::types::{IncomingRequest, ResponseOutparam};

struct Trap;

impl Guest for Trap {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        if wharf_guest::query_param(&request, "ok").as_deref() == Some("1") {
            return wharf_guest::respond(out, 200, "text/plain", b"fine");
        }
        panic!("trap component asked to fail");
    }
}

wharf_guest::export!(Trap);
