//! The example Spin app's private component, reached only by service
//! chaining (`http://greeter.spin.internal/...`): answers a name, and the
//! route Spin's headers say it was reached by.

use spin_sdk::http::{IntoResponse, Request};
use spin_sdk::http_service;

#[http_service]
async fn handle(request: Request) -> impl IntoResponse {
    let header = |name: &str| request.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    format!("Wharf (reached as {} {})", header("spin-matched-route"), header("spin-path-info"))
}
