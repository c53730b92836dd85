//! `spin-redis` (tests only): imports Spin's Redis interface
//! (`spin:redis/redis@3.0.0`), which Wharf does not serve: it must fail to
//! load, saying so.

use spin_sdk::http::{IntoResponse, Request};
use spin_sdk::http_service;

#[http_service]
async fn handle(_request: Request) -> impl IntoResponse {
    match spin_sdk::redis::Connection::open("redis://127.0.0.1:6379").await {
        Ok(_) => "connected",
        Err(_) => "no redis",
    }
}
