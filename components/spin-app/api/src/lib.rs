//! The example Spin app's front component: every request counts a visit in
//! the `default` key-value store, logs it in a SQLite table, takes its
//! greeting from the app's `greeting` variable, asks the private `greeter`
//! component for a name by service chaining, and answers what it learned.
//! Written against Spin SDK 7 as Spin's templates write components.

use spin_sdk::http::body::IncomingBodyExt;
use spin_sdk::http::{IntoResponse, Request, StatusCode};
use spin_sdk::http_service;
use spin_sdk::key_value::Store;
use spin_sdk::sqlite::{Connection, Value};

#[http_service]
async fn handle(request: Request) -> impl IntoResponse {
    match visit(request.uri().path()).await {
        Ok(answer) => (StatusCode::OK, answer),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{error}\n")),
    }
}

async fn visit(path: &str) -> Result<String, String> {
    let store = Store::open_default().await.map_err(|e| format!("key-value: {e:?}"))?;
    let visits = store.get("visits").await.map_err(|e| format!("key-value: {e:?}"))?;
    let visits = visits.and_then(|v| String::from_utf8(v).ok()?.parse::<u64>().ok()).unwrap_or(0) + 1;
    store.set("visits", visits.to_string()).await.map_err(|e| format!("key-value: {e:?}"))?;

    let db = Connection::open_default().await.map_err(|e| format!("sqlite: {e:?}"))?;
    db.execute("CREATE TABLE IF NOT EXISTS visits (id INTEGER PRIMARY KEY, path TEXT NOT NULL)", [])
        .await
        .map_err(|e| format!("sqlite: {e:?}"))?;
    db.execute("INSERT INTO visits (path) VALUES (?)", [Value::text(path)]).await.map_err(|e| format!("sqlite: {e:?}"))?;
    let logged = db
        .execute("SELECT count(*) FROM visits", [])
        .await
        .map_err(|e| format!("sqlite: {e:?}"))?
        .collect()
        .await
        .map_err(|e| format!("sqlite: {e:?}"))?
        .first()
        .and_then(|row| row.get::<i64>(0))
        .unwrap_or(0);

    let greeting = spin_sdk::variables::get("greeting").await.map_err(|e| format!("variables: {e:?}"))?;
    let mut request = Request::new(String::new());
    *request.uri_mut() = "http://greeter.spin.internal/name".parse().map_err(|e| format!("{e}"))?;
    let name = spin_sdk::http::send(request).await.map_err(|e| format!("greeter: {e:?}"))?;
    let name = name.into_body().bytes().await.map_err(|e| format!("greeter: {e:?}"))?;
    let name = String::from_utf8_lossy(&name);
    Ok(format!("{greeting}, {name}! Visit {visits}, {logged} logged.\n"))
}
