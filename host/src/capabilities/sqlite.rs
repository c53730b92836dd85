//! SQLite for guests (Spin's `sqlite_databases`): an embedded database
//! file per label under `data_dir/sqlite` (`default` is the one Spin apps
//! use), opened on first use. Statements run on the blocking pool, one at
//! a time per database (SQLite writes one at a time anyway), each bounded
//! in time (interrupted past `max_sqlite_query_ms`) and in the size of its
//! result (refused past `max_sqlite_result_bytes`), so one guest's query
//! can neither hold a database nor make the host hold its whole table.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The bounds on one query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SqliteLimits {
    /// How long one statement may run.
    pub query_timeout: Duration,
    /// Bytes of rows one statement may return.
    pub max_result_bytes: usize,
}

/// A value in a row or a parameter.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlValue {
    /// An integer.
    Integer(i64),
    /// A floating-point number.
    Real(f64),
    /// Text.
    Text(String),
    /// Bytes.
    Blob(Vec<u8>),
    /// NULL.
    Null,
}

/// What a statement returned, and what it did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueryResult {
    /// The columns' names.
    pub columns: Vec<String>,
    /// The rows, each a value per column.
    pub rows: Vec<Vec<SqlValue>>,
    /// The rowid of the last row inserted on the connection.
    pub last_insert_rowid: i64,
    /// Rows the statement changed.
    pub changes: u64,
}

/// Why a statement did not run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SqliteError {
    /// The component may not open that database.
    #[error("access denied")]
    AccessDenied,
    /// The database is full (or its file could not grow).
    #[error("database full")]
    Full,
    /// Anything else, with a message for the guest.
    #[error("{0}")]
    Io(String),
}

/// Every database of the server.
pub struct Sqlite {
    dir: PathBuf,
    limits: SqliteLimits,
    databases: Mutex<HashMap<String, Arc<Database>>>,
    /// Where each statement's span goes, when tracing is on.
    tracing: Option<Arc<crate::telemetry::trace::Tracing>>,
}

struct Database {
    connection: Mutex<rusqlite::Connection>,
    interrupt: rusqlite::InterruptHandle,
}

impl Sqlite {
    /// Databases in `dir`, one file per label, under `limits`.
    pub fn new(dir: PathBuf, limits: SqliteLimits) -> Self {
        Self { dir, limits, databases: Mutex::default(), tracing: None }
    }

    /// The databases, with a span for each statement (when `tracing` is
    /// some).
    pub fn with_tracing(mut self, tracing: Option<Arc<crate::telemetry::trace::Tracing>>) -> Self {
        self.tracing = tracing;
        self
    }

    /// The limits queries run under.
    pub fn limits(&self) -> SqliteLimits {
        self.limits
    }

    fn database(&self, label: &str) -> Result<Arc<Database>, SqliteError> {
        let mut databases = self.databases.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(database) = databases.get(label) {
            return Ok(database.clone());
        }
        if label.is_empty() || !label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(SqliteError::Io(format!("{label:?} is not a database label")));
        }
        std::fs::create_dir_all(&self.dir).map_err(|e| SqliteError::Io(e.to_string()))?;
        let path = self.dir.join(format!("{label}.db"));
        let connection = rusqlite::Connection::open(&path).map_err(|e| {
            tracing::error!(path = %path.display(), error = %e, "cannot open a SQLite database");
            SqliteError::Io("cannot open the database".into())
        })?;
        // Readers do not wait for writers; a writer waits for another a while.
        let _ = connection.pragma_update(None, "journal_mode", "WAL");
        let _ = connection.busy_timeout(Duration::from_secs(5));
        let database = Arc::new(Database {
            interrupt: connection.get_interrupt_handle(),
            connection: Mutex::new(connection),
        });
        databases.insert(label.to_string(), database.clone());
        Ok(database)
    }

    /// Runs `statement` with `parameters` on database `label`.
    pub async fn execute(
        &self,
        label: &str,
        statement: String,
        parameters: Vec<SqlValue>,
    ) -> Result<QueryResult, SqliteError> {
        let span = self.tracing.as_ref().and_then(|tracing| {
            use opentelemetry::KeyValue;
            let operation: String =
                statement.split_whitespace().next().unwrap_or("").chars().take(16).collect();
            let operation = operation.to_ascii_uppercase();
            let attributes = vec![
                KeyValue::new("db.system.name", "sqlite"),
                KeyValue::new("db.namespace", label.to_string()),
                KeyValue::new("db.operation.name", operation),
            ];
            tracing.span_in_current("wharf.sqlite", attributes)
        });
        let result = self.execute_untraced(label, statement, parameters).await;
        if let Some(span) = &span {
            crate::telemetry::trace::end(span, result.as_ref().map(drop).map_err(|e| e.to_string().into()));
        }
        result
    }

    async fn execute_untraced(
        &self,
        label: &str,
        statement: String,
        parameters: Vec<SqlValue>,
    ) -> Result<QueryResult, SqliteError> {
        let database = self.database(label)?;
        let limits = self.limits;
        let runner = database.clone();
        let run = tokio::task::spawn_blocking(move || {
            let connection = runner.connection.lock().unwrap_or_else(|e| e.into_inner());
            run(&connection, &statement, parameters, limits.max_result_bytes)
        });
        match tokio::time::timeout(limits.query_timeout, run).await {
            Ok(done) => done.map_err(|e| SqliteError::Io(format!("query task failed: {e}")))?,
            Err(_) => {
                // The statement stops at its next step; the lock follows.
                database.interrupt.interrupt();
                Err(SqliteError::Io(format!(
                    "the statement ran past {} ms (server.max_sqlite_query_ms) and was interrupted",
                    limits.query_timeout.as_millis()
                )))
            }
        }
    }
}

fn run(
    connection: &rusqlite::Connection,
    statement: &str,
    parameters: Vec<SqlValue>,
    max_result_bytes: usize,
) -> Result<QueryResult, SqliteError> {
    let mut prepared = connection.prepare(statement).map_err(sql_error)?;
    let columns: Vec<String> = prepared.column_names().map(str::to_string).collect();
    let parameters: Vec<rusqlite::types::Value> = parameters.into_iter().map(to_sql).collect();
    let mut rows = prepared.query(rusqlite::params_from_iter(parameters)).map_err(sql_error)?;
    let mut result = QueryResult { columns, ..Default::default() };
    let mut bytes = 0usize;
    while let Some(row) = rows.next().map_err(sql_error)? {
        let mut values = Vec::with_capacity(result.columns.len());
        for index in 0..result.columns.len() {
            let value = from_sql(row.get_ref(index).map_err(sql_error)?);
            bytes += match &value {
                SqlValue::Text(text) => text.len(),
                SqlValue::Blob(blob) => blob.len(),
                _ => 8,
            };
            values.push(value);
        }
        if bytes > max_result_bytes {
            return Err(SqliteError::Io(format!(
                "the result is over {max_result_bytes} bytes (server.max_sqlite_result_bytes): page it with LIMIT"
            )));
        }
        result.rows.push(values);
    }
    drop(rows);
    result.last_insert_rowid = connection.last_insert_rowid();
    result.changes = connection.changes();
    Ok(result)
}

fn sql_error(error: rusqlite::Error) -> SqliteError {
    match error.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DiskFull) => SqliteError::Full,
        Some(rusqlite::ErrorCode::OperationInterrupted) => {
            SqliteError::Io("the statement was interrupted (server.max_sqlite_query_ms)".into())
        }
        _ => SqliteError::Io(error.to_string()),
    }
}

fn to_sql(value: SqlValue) -> rusqlite::types::Value {
    use rusqlite::types::Value;
    match value {
        SqlValue::Integer(i) => Value::Integer(i),
        SqlValue::Real(r) => Value::Real(r),
        SqlValue::Text(t) => Value::Text(t),
        SqlValue::Blob(b) => Value::Blob(b),
        SqlValue::Null => Value::Null,
    }
}

fn from_sql(value: rusqlite::types::ValueRef<'_>) -> SqlValue {
    use rusqlite::types::ValueRef;
    match value {
        ValueRef::Integer(i) => SqlValue::Integer(i),
        ValueRef::Real(r) => SqlValue::Real(r),
        ValueRef::Text(t) => SqlValue::Text(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => SqlValue::Blob(b.to_vec()),
        ValueRef::Null => SqlValue::Null,
    }
}

/// Per-instance SQLite state: the databases and those it may open.
#[derive(Clone)]
pub struct SqliteCtx {
    /// The server's databases.
    pub shared: Arc<Sqlite>,
    /// The labels the component lists.
    pub allowed: Arc<[String]>,
}

impl SqliteCtx {
    /// Checks that the component may open database `label`.
    pub fn check_open(&self, label: &str) -> Result<(), SqliteError> {
        if self.allowed.iter().any(|a| a == label) { Ok(()) } else { Err(SqliteError::AccessDenied) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sqlite(limits: SqliteLimits) -> (Sqlite, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        (Sqlite::new(dir.path().join("sqlite"), limits), dir)
    }

    const LIMITS: SqliteLimits =
        SqliteLimits { query_timeout: Duration::from_secs(5), max_result_bytes: 1000 };

    #[tokio::test]
    async fn statements_run_with_parameters_and_say_what_they_did() {
        let (db, _dir) = sqlite(LIMITS);
        db.execute("default", "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT)".into(), vec![])
            .await
            .unwrap();
        let inserted = db
            .execute(
                "default",
                "INSERT INTO t (name) VALUES (?), (?)".into(),
                vec![SqlValue::Text("a".into()), SqlValue::Text("b".into())],
            )
            .await
            .unwrap();
        assert_eq!((inserted.changes, inserted.last_insert_rowid), (2, 2));
        let read = db.execute("default", "SELECT id, name FROM t ORDER BY id".into(), vec![]).await.unwrap();
        assert_eq!(read.columns, ["id", "name"]);
        assert_eq!(read.rows[1], vec![SqlValue::Integer(2), SqlValue::Text("b".into())]);
        let bad = db.execute("default", "SELECT nope FROM t".into(), vec![]).await.unwrap_err();
        assert!(matches!(bad, SqliteError::Io(ref m) if m.contains("nope")), "{bad:?}");
    }

    #[tokio::test]
    async fn a_query_is_bounded_in_time_and_in_the_bytes_it_returns() {
        let (db, _dir) = sqlite(SqliteLimits { query_timeout: Duration::from_millis(200), ..LIMITS });
        // 900 bytes pass; 1,100 do not.
        let small = db.execute("x", "SELECT zeroblob(900)".into(), vec![]).await.unwrap();
        assert_eq!(small.rows.len(), 1);
        let big = db.execute("x", "SELECT zeroblob(1100)".into(), vec![]).await.unwrap_err();
        assert!(matches!(big, SqliteError::Io(ref m) if m.contains("max_sqlite_result_bytes")), "{big:?}");
        let started = std::time::Instant::now();
        let endless =
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c";
        let stopped = db.execute("x", endless.into(), vec![]).await.unwrap_err();
        assert!(
            matches!(stopped, SqliteError::Io(ref m) if m.contains("max_sqlite_query_ms")),
            "{stopped:?}"
        );
        assert!(
            started.elapsed() >= Duration::from_millis(200) && started.elapsed() < Duration::from_secs(2)
        );
        // The database serves the next statement.
        assert_eq!(db.execute("x", "SELECT 1".into(), vec![]).await.unwrap().rows.len(), 1);
    }
}
