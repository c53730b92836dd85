//! Spin's request conventions, for apps from a `spin.toml`: the headers
//! Spin adds to every request (`spin-full-url`, `spin-path-info`,
//! `spin-matched-route`, `spin-component-route`, `spin-raw-component-route`,
//! `spin-base-path`, `spin-client-addr`, `spin-path-match-NAME`), and its
//! well-known paths (`/.well-known/spin/health`, `/.well-known/spin/info`).
//! Facts from Spin's `crates/trigger-http`; Wharf's own code.

use super::response::{self, ResponseBody};
use crate::app::routes::{RouteMatch, SpinRouting};
use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode, header};
use http_body_util::Full;
use std::net::SocketAddr;

/// The prefix of Spin's well-known paths.
const WELL_KNOWN: &str = "/.well-known/spin/";

/// The address Spin gives chained requests as their client's.
pub const CHAINED_CLIENT: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0);

/// The answer to one of Spin's well-known paths, if `path` is one.
pub fn well_known(path: &str, app: &SpinRouting) -> Option<http::Response<ResponseBody>> {
    let name = path.strip_prefix(WELL_KNOWN)?;
    Some(match name {
        "health" => http::Response::new(response::boxed(Full::new(Bytes::from_static(b"OK")))),
        "info" => {
            let mut info = serde_json::json!({ "name": app.name });
            if !app.version.is_empty() {
                info["version"] = app.version.clone().into();
            }
            let mut answer = http::Response::new(response::boxed(Full::new(Bytes::from(info.to_string()))));
            answer.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            answer
        }
        _ => response::plain(StatusCode::NOT_FOUND, "Not Found"),
    })
}

/// The headers Spin gives a request that `matched` a route, from `client`.
pub fn headers(
    uri: &http::Uri,
    request_headers: &http::HeaderMap,
    matched: &RouteMatch<'_, '_>,
    client: SocketAddr,
    https: bool,
) -> Vec<(HeaderName, HeaderValue)> {
    // A chained request matches as if the component's route were `/...`.
    let (raw_route, path_info) = if matched.is_chained() {
        ("/...".to_string(), uri.path().to_string())
    } else {
        (matched.route.spec.path.clone(), matched.wildcard())
    };
    let component_route = raw_route.strip_suffix("/...").unwrap_or(&raw_route).to_string();
    let host = request_headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost");
    let path_and_query = uri.path_and_query().map_or("/", |p| p.as_str());
    let scheme = if https { "https" } else { "http" };
    let mut headers = vec![
        ("spin-full-url".to_string(), format!("{scheme}://{host}{path_and_query}")),
        ("spin-path-info".to_string(), path_info),
        ("spin-matched-route".to_string(), raw_route.clone()),
        ("spin-base-path".to_string(), "/".to_string()),
        ("spin-raw-component-route".to_string(), raw_route),
        ("spin-component-route".to_string(), component_route),
        ("spin-client-addr".to_string(), client.to_string()),
    ];
    for (name, value) in matched.named_segments() {
        headers.push((format!("spin-path-match-{}", name.to_ascii_lowercase()), value));
    }
    headers
        .into_iter()
        .filter_map(|(name, value)| {
            Some((HeaderName::try_from(name).ok()?, HeaderValue::try_from(value).ok()?))
        })
        .collect()
}
