//! `echo` (tests only): reads the whole request body and answers 200 with
//! it, as `application/octet-stream`. A body cut off by the host (too large)
//! gets 400 `incomplete body`.

use wharf_guest::bindings::exports::wasi::http::incoming_handler::Guest;
use wharf_guest::bindings::wasi::http::types::{IncomingBody, IncomingRequest, ResponseOutparam};
use wharf_guest::bindings::wasi::io::streams::StreamError;

struct Echo;

impl Guest for Echo {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let body = request.consume().expect("body taken once");
        let stream = body.stream().expect("stream taken once");
        let mut bytes = Vec::new();
        loop {
            match stream.blocking_read(64 * 1024) {
                Ok(chunk) => bytes.extend_from_slice(&chunk),
                Err(StreamError::Closed) => break,
                Err(StreamError::LastOperationFailed(_)) => {
                    return wharf_guest::respond(out, 400, "text/plain", b"incomplete body");
                }
            }
        }
        drop(stream);
        let _ = IncomingBody::finish(body);
        wharf_guest::respond(out, 200, "application/octet-stream", &bytes);
    }
}

wharf_guest::export!(Echo);
