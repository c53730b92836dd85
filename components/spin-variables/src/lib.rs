//! `spin-variables` (tests only): Spin's variables interface from Spin SDK 7
//! (`spin:variables/variables@3.0.0`): `?name=N` answers the component's
//! variable N, or 500 with Spin's error.

use spin_sdk::http::{IntoResponse, Request, StatusCode};
use spin_sdk::http_service;

#[http_service]
async fn handle(request: Request) -> impl IntoResponse {
    let query = request.uri().query().unwrap_or("").to_string();
    let name = query.strip_prefix("name=").unwrap_or("").to_string();
    match spin_sdk::variables::get(&name).await {
        Ok(value) => (StatusCode::OK, value),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{error:?}")),
    }
}
