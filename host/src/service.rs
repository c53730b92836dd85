//! The path every request takes before and after its component: route,
//! admit, invoke, record. Each rejection is answered here with its status
//! code, so hyper never sees an error (it would close the connection).

use crate::App;
use crate::invoke::{self, InvokeError};
use crate::observe::RequestRecord;
use crate::response::{self, ResponseBody};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// Serves one request.
pub async fn handle(
    app: Arc<App>,
    request: http::Request<hyper::body::Incoming>,
    peer: SocketAddr,
) -> http::Response<ResponseBody> {
    let mut record = RequestRecord::new(app.stats.clone(), &request, peer);
    let table = app.registry.current();
    let Some(route) = table.find(request.uri().path()) else {
        return record.attach(response::plain(http::StatusCode::NOT_FOUND, "Not Found"));
    };
    record.route = Some(route.spec.path.clone());
    let Ok(permit) = app.admission.clone().try_acquire_owned() else {
        app.stats.shed.fetch_add(1, Ordering::Relaxed);
        record.set_reason("overloaded: max_concurrent_requests reached");
        return record.attach(response::overloaded(1));
    };
    match invoke::invoke(&app, route, request, permit).await {
        Ok(response) => record.attach(response),
        Err(error) => {
            if matches!(error, InvokeError::TimedOut) {
                record.set_timed_out();
            }
            record.set_reason(error.to_string());
            record.attach(response::for_status(error.status()))
        }
    }
}
