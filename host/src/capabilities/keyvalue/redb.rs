//! The embedded, persistent backend: a `redb` database in the data
//! directory.

use super::{Backend, BackendResult, KeyValueError, add, parse_counter};
use ::redb::{ReadableDatabase, ReadableTable, TableDefinition};
use anyhow::Context as _;
use futures::future::BoxFuture;
use std::path::Path;
use std::sync::Arc;

/// An embedded `redb` database: one table per store, every write committed
/// durably before the guest sees it succeed. redb is synchronous, so each
/// operation runs on the blocking pool, never on a request thread.
pub struct RedbBackend {
    db: Arc<::redb::Database>,
}

impl RedbBackend {
    /// Opens (or creates) the database file at `path`.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create data directory {}", dir.display()))?;
        }
        let db = ::redb::Database::create(path)
            .with_context(|| format!("cannot open key-value database {}", path.display()))?;
        Ok(Self { db: Arc::new(db) })
    }

    fn run<T: Send + 'static>(
        &self,
        op: impl FnOnce(&::redb::Database) -> Result<T, ::redb::Error> + Send + 'static,
    ) -> BoxFuture<'static, BackendResult<T>> {
        let db = self.db.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || op(&db))
                .await
                .map_err(|e| KeyValueError::Other(format!("key-value task failed: {e}")))?
                .map_err(|e| {
                    tracing::error!(error = %e, "key-value database error");
                    KeyValueError::Other("key-value database error".into())
                })
        })
    }
}

fn table(store: &str) -> TableDefinition<'_, &'static str, &'static [u8]> {
    TableDefinition::new(store)
}

impl Backend for RedbBackend {
    fn get(&self, store: String, key: String) -> BoxFuture<'static, BackendResult<Option<Vec<u8>>>> {
        self.run(move |db| {
            let txn = db.begin_read()?;
            let table = match txn.open_table(table(&store)) {
                Ok(table) => table,
                Err(::redb::TableError::TableDoesNotExist(_)) => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            Ok(table.get(key.as_str())?.map(|v| v.value().to_vec()))
        })
    }

    fn set(&self, store: String, key: String, value: Vec<u8>) -> BoxFuture<'static, BackendResult<()>> {
        self.run(move |db| {
            let txn = db.begin_write()?;
            txn.open_table(table(&store))?.insert(key.as_str(), value.as_slice())?;
            txn.commit()?;
            Ok(())
        })
    }

    fn delete(&self, store: String, key: String) -> BoxFuture<'static, BackendResult<()>> {
        self.run(move |db| {
            let txn = db.begin_write()?;
            txn.open_table(table(&store))?.remove(key.as_str())?;
            txn.commit()?;
            Ok(())
        })
    }

    fn list_keys(&self, store: String) -> BoxFuture<'static, BackendResult<Vec<String>>> {
        self.run(move |db| {
            let txn = db.begin_read()?;
            let table = match txn.open_table(table(&store)) {
                Ok(table) => table,
                Err(::redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                Err(e) => return Err(e.into()),
            };
            let mut keys = Vec::new();
            for entry in table.iter()? {
                keys.push(entry?.0.value().to_string());
            }
            Ok(keys)
        })
    }

    fn increment(&self, store: String, key: String, delta: u64) -> BoxFuture<'static, BackendResult<u64>> {
        // The outer result is the database's, the inner one the value's
        // (not a number, overflow), which aborts the transaction.
        let update = self.run(move |db| {
            let txn = db.begin_write()?;
            let next = {
                let mut table = txn.open_table(table(&store))?;
                let current = table.get(key.as_str())?.map(|v| v.value().to_vec());
                let next = match parse_counter(current.as_deref()).and_then(|c| add(c, delta)) {
                    Ok(next) => next,
                    Err(e) => return Ok(Err(e)),
                };
                table.insert(key.as_str(), next.to_string().as_bytes())?;
                next
            };
            txn.commit()?;
            Ok(Ok(next))
        });
        Box::pin(async move { update.await? })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capabilities::keyvalue::MemoryBackend;

    #[tokio::test]
    async fn redb_increment_is_exact_and_durable() {
        let dir = std::env::temp_dir().join(format!("wharf-kv-test-{}", std::process::id()));
        let path = dir.join("kv.redb");
        let _ = std::fs::remove_file(&path);
        {
            let backend = Arc::new(RedbBackend::open(&path).unwrap());
            let tasks: Vec<_> = (0..50)
                .map(|_| {
                    let backend = backend.clone();
                    tokio::spawn(async move { backend.increment("s".into(), "k".into(), 1).await.unwrap() })
                })
                .collect();
            let mut seen: Vec<u64> =
                futures::future::join_all(tasks).await.into_iter().map(|r| r.unwrap()).collect();
            seen.sort();
            assert_eq!(seen, (1..=50).collect::<Vec<_>>());
        }
        let reopened = RedbBackend::open(&path).unwrap();
        assert_eq!(reopened.get("s".into(), "k".into()).await.unwrap(), Some(b"50".to_vec()));
        assert_eq!(reopened.list_keys("s".into()).await.unwrap(), vec!["k".to_string()]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn increment_rejects_non_numbers() {
        let backend = MemoryBackend::default();
        backend.set("s".into(), "k".into(), b"abc".to_vec()).await.unwrap();
        assert!(backend.increment("s".into(), "k".into(), 1).await.is_err());
    }
}
