//! `stream`: server-sent events. Sends `n` events (query, default 10), one
//! every `interval_ms` (query, else config `interval_ms`, default 1000),
//! each written and flushed as soon as it is produced:
//! `id: I\ndata: event I of N\n\n`, as `text/event-stream` with
//! `cache-control: no-cache`.

use wharf_guest::bindings::exports::wasi::http::incoming_handler::Guest;
use wharf_guest::bindings::wasi::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

struct Stream;

impl Guest for Stream {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let n: u64 = wharf_guest::query_param(&request, "n").and_then(|v| v.parse().ok()).unwrap_or(10);
        let interval_ms: u64 = wharf_guest::query_param(&request, "interval_ms")
            .or_else(|| wharf_guest::config("interval_ms"))
            .and_then(|v| v.parse().ok())
            .unwrap_or(1000);

        let headers = Fields::from_list(&[
            ("content-type".into(), b"text/event-stream".to_vec()),
            ("cache-control".into(), b"no-cache".to_vec()),
        ])
        .expect("valid headers");
        let response = OutgoingResponse::new(headers);
        let body = response.body().expect("body");
        ResponseOutparam::set(out, Ok(response));
        let stream = body.write().expect("stream");
        for i in 1..=n {
            if i > 1 {
                wharf_guest::sleep_ms(interval_ms);
            }
            let event = format!("id: {i}\ndata: event {i} of {n}\n\n");
            if stream.blocking_write_and_flush(event.as_bytes()).is_err() {
                return; // the client went away
            }
        }
        drop(stream);
        let _ = OutgoingBody::finish(body, None);
    }
}

wharf_guest::export!(Stream);
