//! `spin-sqlite` (tests only): Spin's SQLite interface from Spin SDK 7
//! (`spin:sqlite/sqlite@3.1.0`, rows as a stream), on database `db=`
//! (default `default`), by `op=`: `setup` creates table `pets`, `add`
//! inserts `name=` and answers `rowid R changes C`, `list` answers the
//! names in order, one a line, `bad` runs invalid SQL. 500 with Spin's
//! error otherwise.

use spin_sdk::http::{IntoResponse, Request, StatusCode};
use spin_sdk::http_service;
use spin_sdk::sqlite::{Connection, Value};

fn param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| pair.strip_prefix(name)?.strip_prefix('=').map(str::to_string))
}

#[http_service]
async fn handle(request: Request) -> impl IntoResponse {
    let query = request.uri().query().unwrap_or("").to_string();
    let db = param(&query, "db").unwrap_or_else(|| "default".into());
    let connection = match Connection::open(&db).await {
        Ok(connection) => connection,
        Err(error) => return (StatusCode::INTERNAL_SERVER_ERROR, format!("open: {error:?}")),
    };
    let answer = match param(&query, "op").as_deref().unwrap_or("list") {
        "setup" => connection
            .execute("CREATE TABLE IF NOT EXISTS pets (id INTEGER PRIMARY KEY, name TEXT NOT NULL)", [])
            .await
            .map(|_| "ok".to_string()),
        "add" => match connection
            .execute("INSERT INTO pets (name) VALUES (?)", [Value::text(param(&query, "name").unwrap_or_default())])
            .await
        {
            Ok(_) => Ok(format!("rowid {} changes {}", connection.last_insert_rowid().await, connection.changes().await)),
            Err(error) => Err(error),
        },
        "list" => match connection.execute("SELECT name FROM pets ORDER BY id", []).await {
            Ok(result) => result.collect().await.map(|rows| {
                rows.iter().filter_map(|row| row.get::<&str>(0).map(str::to_string)).collect::<Vec<_>>().join("\n")
            }),
            Err(error) => Err(error),
        },
        "bad" => connection.execute("SELECT nope FROM nowhere", []).await.map(|_| "ran".to_string()),
        other => return (StatusCode::BAD_REQUEST, format!("unknown op {other:?}")),
    };
    match answer {
        Ok(body) => (StatusCode::OK, body),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{error:?}")),
    }
}
