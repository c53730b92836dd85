//! Spin's SQLite interface in its three versions, `fermyon:spin/sqlite@2.0.0`,
//! `spin:sqlite/sqlite@3.0.0` and `spin:sqlite/sqlite@3.1.0` (which adds
//! async calls and rows as a stream), on Wharf's databases
//! (`capabilities/sqlite.rs`): a database per label, opened only by the
//! components that list it, each statement bounded in time and result size.

use crate::capabilities::sqlite::{QueryResult, SqlValue, SqliteCtx, SqliteError};
use wasmtime::component::{Accessor, FutureReader, HasData, Linker, Resource, ResourceTable, StreamReader};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit/spin",
        world: "wharf:spin/sqlite",
        imports: { default: async },
        with: {
            "fermyon:spin/sqlite.connection": super::Connection,
            "spin:sqlite/sqlite@3.0.0.connection": super::Connection,
            "spin:sqlite/sqlite@3.1.0.connection": super::Connection,
        },
    });
}

use bindings::fermyon::spin::sqlite as v2;
use bindings::spin::sqlite3_0_0::sqlite as v3_0;
use bindings::spin::sqlite3_1_0::sqlite as v3_1;

/// An open database, as the guest holds it, with what its last statement
/// did (SQLite's own counters are per connection, and the host's
/// connection is shared).
pub struct Connection {
    label: String,
    last_insert_rowid: i64,
    changes: u64,
}

/// The view Spin's SQLite calls borrow: the instance's SQLite state and its
/// resource table.
pub struct SqliteView<'a> {
    /// What the instance may open.
    pub ctx: &'a SqliteCtx,
    /// The instance's resources.
    pub table: &'a mut ResourceTable,
}

struct HasSqlite;

impl HasData for HasSqlite {
    type Data<'a> = SqliteView<'a>;
}

/// Adds `fermyon:spin/sqlite@2.0.0` and `spin:sqlite/sqlite@3.0.0` to
/// `linker`.
pub fn add_sync_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> SqliteView<'_>,
) -> wasmtime::Result<()> {
    v2::add_to_linker::<_, HasSqlite>(linker, view)?;
    v3_0::add_to_linker::<_, HasSqlite>(linker, view)?;
    Ok(())
}

/// Adds `spin:sqlite/sqlite@3.1.0` to `linker` (a WASI 0.3 engine's).
pub fn add_async_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> SqliteView<'_>,
) -> wasmtime::Result<()> {
    v3_1::add_to_linker::<_, HasSqlite>(linker, view)
}

impl SqliteView<'_> {
    fn open(&mut self, label: String) -> Result<Resource<Connection>, SqliteError> {
        self.ctx.check_open(&label)?;
        self.table
            .push(Connection { label, last_insert_rowid: 0, changes: 0 })
            .map_err(|e| SqliteError::Io(e.to_string()))
    }

    fn label(&self, connection: &Resource<Connection>) -> Result<String, SqliteError> {
        Ok(self
            .table
            .get(connection)
            .map_err(|_| SqliteError::Io("invalid connection".into()))?
            .label
            .clone())
    }

    /// Notes what a statement did on `connection`.
    fn record(&mut self, connection: &Resource<Connection>, result: &QueryResult) {
        if let Ok(held) = self.table.get_mut(connection) {
            held.last_insert_rowid = result.last_insert_rowid;
            held.changes = result.changes;
        }
    }

    async fn execute(
        &mut self,
        connection: &Resource<Connection>,
        statement: String,
        parameters: Vec<SqlValue>,
    ) -> Result<QueryResult, SqliteError> {
        let label = self.label(connection)?;
        let result = self.ctx.shared.execute(&label, statement, parameters).await?;
        self.record(connection, &result);
        Ok(result)
    }

    fn counters(&self, connection: &Resource<Connection>) -> (i64, u64) {
        self.table.get(connection).map_or((0, 0), |c| (c.last_insert_rowid, c.changes))
    }
}

/// The conversions between one version's types and Wharf's.
macro_rules! conversions {
    ($version:ident) => {
        impl From<$version::Value> for SqlValue {
            fn from(value: $version::Value) -> Self {
                match value {
                    $version::Value::Integer(i) => SqlValue::Integer(i),
                    $version::Value::Real(r) => SqlValue::Real(r),
                    $version::Value::Text(t) => SqlValue::Text(t),
                    $version::Value::Blob(b) => SqlValue::Blob(b),
                    $version::Value::Null => SqlValue::Null,
                }
            }
        }

        impl From<SqlValue> for $version::Value {
            fn from(value: SqlValue) -> Self {
                match value {
                    SqlValue::Integer(i) => $version::Value::Integer(i),
                    SqlValue::Real(r) => $version::Value::Real(r),
                    SqlValue::Text(t) => $version::Value::Text(t),
                    SqlValue::Blob(b) => $version::Value::Blob(b),
                    SqlValue::Null => $version::Value::Null,
                }
            }
        }

        impl From<SqliteError> for $version::Error {
            fn from(error: SqliteError) -> Self {
                match error {
                    SqliteError::AccessDenied => $version::Error::AccessDenied,
                    SqliteError::Full => $version::Error::DatabaseFull,
                    SqliteError::Io(message) => $version::Error::Io(message),
                }
            }
        }

        impl From<QueryResult> for $version::QueryResult {
            fn from(result: QueryResult) -> Self {
                $version::QueryResult {
                    columns: result.columns,
                    rows: result
                        .rows
                        .into_iter()
                        .map(|row| $version::RowResult { values: row.into_iter().map(Into::into).collect() })
                        .collect(),
                }
            }
        }
    };
}

conversions!(v2);
conversions!(v3_0);
conversions!(v3_1);

impl v2::Host for SqliteView<'_> {}

impl v2::HostConnection for SqliteView<'_> {
    async fn open(&mut self, database: String) -> Result<Resource<Connection>, v2::Error> {
        Ok(SqliteView::open(self, database)?)
    }

    async fn execute(
        &mut self,
        connection: Resource<Connection>,
        statement: String,
        parameters: Vec<v2::Value>,
    ) -> Result<v2::QueryResult, v2::Error> {
        let parameters = parameters.into_iter().map(Into::into).collect();
        Ok(SqliteView::execute(self, &connection, statement, parameters).await?.into())
    }

    async fn drop(&mut self, connection: Resource<Connection>) -> wasmtime::Result<()> {
        self.table.delete(connection)?;
        Ok(())
    }
}

impl v3_0::Host for SqliteView<'_> {}

impl v3_0::HostConnection for SqliteView<'_> {
    async fn open(&mut self, database: String) -> Result<Resource<Connection>, v3_0::Error> {
        Ok(SqliteView::open(self, database)?)
    }

    async fn execute(
        &mut self,
        connection: Resource<Connection>,
        statement: String,
        parameters: Vec<v3_0::Value>,
    ) -> Result<v3_0::QueryResult, v3_0::Error> {
        let parameters = parameters.into_iter().map(Into::into).collect();
        Ok(SqliteView::execute(self, &connection, statement, parameters).await?.into())
    }

    async fn last_insert_rowid(&mut self, connection: Resource<Connection>) -> i64 {
        self.counters(&connection).0
    }

    async fn changes(&mut self, connection: Resource<Connection>) -> u64 {
        self.counters(&connection).1
    }

    async fn drop(&mut self, connection: Resource<Connection>) -> wasmtime::Result<()> {
        self.table.delete(connection)?;
        Ok(())
    }
}

impl v3_1::Host for SqliteView<'_> {}

impl v3_1::HostConnection for SqliteView<'_> {
    async fn open(&mut self, database: String) -> Result<Resource<Connection>, v3_1::Error> {
        Ok(SqliteView::open(self, database)?)
    }

    async fn execute(
        &mut self,
        connection: Resource<Connection>,
        statement: String,
        parameters: Vec<v3_1::Value>,
    ) -> Result<v3_1::QueryResult, v3_1::Error> {
        let parameters = parameters.into_iter().map(Into::into).collect();
        Ok(SqliteView::execute(self, &connection, statement, parameters).await?.into())
    }

    async fn last_insert_rowid(&mut self, connection: Resource<Connection>) -> i64 {
        self.counters(&connection).0
    }

    async fn changes(&mut self, connection: Resource<Connection>) -> u64 {
        self.counters(&connection).1
    }

    async fn drop(&mut self, connection: Resource<Connection>) -> wasmtime::Result<()> {
        self.table.delete(connection)?;
        Ok(())
    }
}

impl<T> v3_1::HostConnectionWithStore<T> for HasSqlite {
    async fn open_async(
        accessor: &Accessor<T, Self>,
        database: String,
    ) -> Result<Resource<Connection>, v3_1::Error> {
        Ok(accessor.with(|mut access| access.get().open(database))?)
    }

    async fn execute_async(
        accessor: &Accessor<T, Self>,
        connection: Resource<Connection>,
        statement: String,
        parameters: Vec<v3_1::Value>,
    ) -> Result<
        (Vec<String>, StreamReader<v3_1::RowResult>, FutureReader<Result<(), v3_1::Error>>),
        v3_1::Error,
    > {
        let parameters: Vec<SqlValue> = parameters.into_iter().map(Into::into).collect();
        let prepared = accessor.with(|mut access| {
            let view = access.get();
            view.label(&connection).map(|label| (label, view.ctx.shared.clone()))
        });
        let (label, shared) = prepared?;
        let result = shared.execute(&label, statement, parameters).await?;
        accessor.with(|mut access| {
            access.get().record(&connection, &result);
            let v3_1::QueryResult { columns, rows } = result.into();
            let streams = StreamReader::new(&mut access, rows).and_then(|rows| {
                let done = FutureReader::new(&mut access, async { wasmtime::Result::<_>::Ok(Ok(())) })?;
                Ok((rows, done))
            });
            let (rows, done) = streams.map_err(|e| v3_1::Error::Io(format!("{e:#}")))?;
            Ok((columns, rows, done))
        })
    }

    async fn last_insert_rowid_async(accessor: &Accessor<T, Self>, connection: Resource<Connection>) -> i64 {
        accessor.with(|mut access| access.get().counters(&connection).0)
    }

    async fn changes_async(accessor: &Accessor<T, Self>, connection: Resource<Connection>) -> u64 {
        accessor.with(|mut access| access.get().counters(&connection).1)
    }
}
