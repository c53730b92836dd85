//! Responses the host writes itself (404, 503, 500, each rejection's) and
//! the one body type every response has.

use crate::policy::{Rejection, retry_after_secs};
use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};

pub use crate::telemetry::record::BoxError;

/// The body of every response Wharf sends.
pub type ResponseBody = UnsyncBoxBody<Bytes, BoxError>;

/// Boxes any body into a [`ResponseBody`].
pub fn boxed<B>(body: B) -> ResponseBody
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// A short plain-text response from the host; the body never carries
/// internals (those go to the log).
pub fn plain(status: StatusCode, message: &str) -> http::Response<ResponseBody> {
    let mut response = http::Response::new(boxed(Full::new(Bytes::from(format!("{message}\n")))));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

/// 503 with `Retry-After`, for load shedding.
pub fn overloaded(retry_after_secs: u64) -> http::Response<ResponseBody> {
    let mut response =
        plain(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable: server is at capacity, retry later");
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
    response
}

/// The host's answer for a request that got no response from its component.
pub fn for_status(status: StatusCode) -> http::Response<ResponseBody> {
    if status == StatusCode::SERVICE_UNAVAILABLE {
        return overloaded(1);
    }
    plain(status, status.canonical_reason().unwrap_or("Error"))
}

/// The answer to a request turned away by admission control.
pub fn rejection(rejection: &Rejection) -> http::Response<ResponseBody> {
    let status = rejection.status();
    let mut response = match rejection {
        Rejection::Overloaded | Rejection::QueueDelay | Rejection::QueueFull => return overloaded(1),
        Rejection::ClientOverloaded => {
            plain(status, "Service Unavailable: too many requests of yours in flight, retry later")
        }
        Rejection::BadRequest(why) => plain(status, &format!("Bad Request: {why}")),
        Rejection::LoopDetected { .. } => plain(status, "Loop Detected: too many self-requests deep"),
        Rejection::RateLimited { .. } => plain(status, "Too Many Requests: slow down and retry later"),
        Rejection::Unauthorized => {
            let mut response = plain(status, "Unauthorized: a valid bearer token is required");
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            response
        }
        // The rest of the body is not read: the connection cannot go on.
        Rejection::BodyTooLarge { .. } | Rejection::BodyTimeout => {
            let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
                "Payload Too Large"
            } else {
                "Request Timeout: the request body came too slowly"
            };
            let mut response = plain(status, message);
            response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            response
        }
    };
    if let Some(wait) = rejection.retry_after() {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs(wait)));
    }
    response
}
