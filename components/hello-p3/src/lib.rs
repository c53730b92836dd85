//! `hello-p3`: `hello` for WASI 0.3 (`wasi:http/handler@0.3.0`, built with
//! the `wasip3` crate): any request gets 200, `text/plain; charset=utf-8`,
//! body `Hello, world!\n`, and header `x-wasi: 0.3`. Tests only: `?wait_ms=N` waits N ms on the host
//! clock before answering; `x-instance-requests` counts the requests this
//! instance has taken and `x-instance-in-hand` those it had in hand at once
//! (with this one), which only differ from 1 when the instance is reused.

use std::sync::atomic::{AtomicU64, Ordering};
use wasip3::http::types::{ErrorCode, Fields, Request, Response};

/// Requests this instance has taken, and has in hand now (instance memory:
/// shared by the requests of a reused instance, which tests count).
static TAKEN: AtomicU64 = AtomicU64::new(0);
static IN_HAND: AtomicU64 = AtomicU64::new(0);
use wasip3::{wit_bindgen, wit_future, wit_stream};

struct Hello;

wasip3::http::service::export!(Hello);

impl wasip3::exports::http::handler::Guest for Hello {
    async fn handle(request: Request) -> Result<Response, ErrorCode> {
        let taken = TAKEN.fetch_add(1, Ordering::Relaxed) + 1;
        let in_hand = IN_HAND.fetch_add(1, Ordering::Relaxed) + 1;
        let path = request.get_path_with_query().unwrap_or_default();
        let wait_ms =
            path.split_once("wait_ms=").and_then(|(_, rest)| rest.split('&').next()?.parse::<u64>().ok());
        if let Some(ms) = wait_ms {
            wasip3::clocks::monotonic_clock::wait_for(ms * 1_000_000).await;
        }
        let headers = Fields::from_list(&[
            ("content-type".into(), b"text/plain; charset=utf-8".to_vec()),
            ("x-wasi".into(), b"0.3".to_vec()),
            ("x-instance-requests".into(), taken.to_string().into_bytes()),
            ("x-instance-in-hand".into(), in_hand.to_string().into_bytes()),
        ])
        .map_err(|_| ErrorCode::InternalError(None))?;
        let (mut body, contents) = wit_stream::new();
        let (trailers_tx, trailers) = wit_future::new(|| Ok(None));
        let (response, _sent) = Response::new(headers, Some(contents), trailers);
        drop(trailers_tx);
        wit_bindgen::spawn(async move {
            body.write_all(b"Hello, world!\n".to_vec()).await;
        });
        IN_HAND.fetch_sub(1, Ordering::Relaxed);
        Ok(response)
    }
}
