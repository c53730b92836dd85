//! `spin-hello` (tests only): a plain hello built with Spin's SDK 7
//! (`#[http_service]`, WASI 0.3), using no Spin-only interface, to show
//! Wharf runs Spin components unchanged: 200 `Hello from Spin!`.

use spin_sdk::http::{IntoResponse, Request};
use spin_sdk::http_service;

#[http_service]
async fn hello(_request: Request) -> impl IntoResponse {
    "Hello from Spin!\n"
}
