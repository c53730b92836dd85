//! `hello`: answers every request with 200 `Hello, world!`.

use wharf_guest::bindings::exports::wasi::http::incoming_handler::Guest;
use wharf_guest::bindings::wasi::http::types::{IncomingRequest, ResponseOutparam};

struct Hello;

impl Guest for Hello {
    fn handle(_request: IncomingRequest, out: ResponseOutparam) {
        wharf_guest::respond(out, 200, "text/plain; charset=utf-8", b"Hello, world!\n");
    }
}

wharf_guest::export!(Hello);
