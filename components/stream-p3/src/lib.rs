//! `stream-p3`: `stream` for WASI 0.3: `n` server-sent events (query,
//! default 10) `interval_ms` apart (query, default 1000), each written as
//! soon as it is produced: `id: I\ndata: event I of N\n\n`, as
//! `text/event-stream` with `cache-control: no-cache`. Stops when the client
//! goes away.

use wasip3::http::types::{ErrorCode, Fields, Request, Response};
use wasip3::{wit_bindgen, wit_future, wit_stream};

struct Stream;

wasip3::http::service::export!(Stream);

fn query_param(path_with_query: &str, name: &str) -> Option<u64> {
    let (_, query) = path_with_query.split_once('?')?;
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key == name).then(|| value.parse().ok()).flatten()
    })
}

impl wasip3::exports::http::handler::Guest for Stream {
    async fn handle(request: Request) -> Result<Response, ErrorCode> {
        let path = request.get_path_with_query().unwrap_or_default();
        let n = query_param(&path, "n").unwrap_or(10);
        let interval_ms = query_param(&path, "interval_ms").unwrap_or(1000);
        let headers = Fields::from_list(&[
            ("content-type".into(), b"text/event-stream".to_vec()),
            ("cache-control".into(), b"no-cache".to_vec()),
        ])
        .map_err(|_| ErrorCode::InternalError(None))?;
        let (mut body, contents) = wit_stream::new();
        let (trailers_tx, trailers) = wit_future::new(|| Ok(None));
        let (response, _sent) = Response::new(headers, Some(contents), trailers);
        drop(trailers_tx);
        wit_bindgen::spawn(async move {
            for i in 1..=n {
                if i > 1 {
                    wasip3::clocks::monotonic_clock::wait_for(interval_ms * 1_000_000).await;
                }
                let event = format!("id: {i}\ndata: event {i} of {n}\n\n");
                if !body.write_all(event.into_bytes()).await.is_empty() {
                    return; // the client went away
                }
            }
        });
        Ok(response)
    }
}
