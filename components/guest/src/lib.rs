//! Guest-side bindings for Wharf's world (`wit/world.wit`) and the few helpers
//! every example component needs: reading the request line, answering with a
//! status and a body, waiting on the host clock, reading config.
//!
//! A component depends on this crate, implements
//! `bindings::exports::wasi::http::incoming_handler::Guest` and calls
//! `wharf_guest::export!(MyComponent);`.

pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "wharf:app/http-app",
        pub_export_macro: true,
        default_bindings_module: "wharf_guest::bindings",
        generate_all,
    });
}

pub use bindings::export;
use bindings::wasi::clocks::monotonic_clock;
use bindings::wasi::http::types::{
    Fields, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

/// The request's method as an upper-case string (`GET`, `POST`, ...).
pub fn method_name(request: &IncomingRequest) -> String {
    match request.method() {
        Method::Get => "GET".into(),
        Method::Head => "HEAD".into(),
        Method::Post => "POST".into(),
        Method::Put => "PUT".into(),
        Method::Delete => "DELETE".into(),
        Method::Connect => "CONNECT".into(),
        Method::Options => "OPTIONS".into(),
        Method::Trace => "TRACE".into(),
        Method::Patch => "PATCH".into(),
        Method::Other(other) => other,
    }
}

/// The request's path without its query string.
pub fn path(request: &IncomingRequest) -> String {
    let path_with_query = request.path_with_query().unwrap_or_else(|| "/".into());
    match path_with_query.split_once('?') {
        Some((path, _)) => path.into(),
        None => path_with_query,
    }
}

/// The value of query parameter `name`, if present (no percent-decoding).
pub fn query_param(request: &IncomingRequest, name: &str) -> Option<String> {
    let path_with_query = request.path_with_query()?;
    let (_, query) = path_with_query.split_once('?')?;
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then(|| value.to_string())
    })
}

/// Sends a complete response: status, one content type and a body.
pub fn respond(out: ResponseOutparam, status: u16, content_type: &str, body: &[u8]) {
    let headers = Fields::from_list(&[("content-type".into(), content_type.as_bytes().to_vec())])
        .expect("valid content-type header");
    let response = OutgoingResponse::new(headers);
    response.set_status_code(status).expect("valid status code");
    let outgoing_body = response.body().expect("response body taken once");
    ResponseOutparam::set(out, Ok(response));
    write_all(&outgoing_body, body);
    OutgoingBody::finish(outgoing_body, None).expect("body finished once");
}

/// Writes `bytes` to a response body, in chunks the host accepts (4 KiB).
pub fn write_all(body: &OutgoingBody, bytes: &[u8]) {
    let stream = body.write().expect("body stream taken once");
    for chunk in bytes.chunks(4096) {
        stream.blocking_write_and_flush(chunk).expect("client still reading");
    }
}

/// Waits on the host's monotonic clock (the instance yields; no busy loop).
pub fn sleep_ms(ms: u64) {
    monotonic_clock::subscribe_duration(ms * 1_000_000).block();
}

/// Waits until `key` exists in key-value store `default` (polling every
/// 2 ms on the host clock), so a test can hold a request until it releases
/// it by setting the key.
pub fn wait_for_key(key: &str) {
    let bucket = bindings::wasi::keyvalue::store::open("default").expect("store `default` is allowed");
    while !bucket.exists(key).expect("exists") {
        sleep_ms(2);
    }
}

/// The config value `key` from `wasi:config/store`, if set.
pub fn config(key: &str) -> Option<String> {
    bindings::wasi::config::store::get(key).ok().flatten()
}
