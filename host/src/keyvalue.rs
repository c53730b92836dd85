//! `wasi:keyvalue` (store, atomics, batch) on the host side, over pluggable
//! backends: an embedded persistent `redb` database (the default) and an
//! in-memory map. A component sees only the standard interface, so adding a
//! backend (Redis, say) never touches a component.
//!
//! Stores are named; a component may open only the stores its manifest entry
//! lists, and two components that list the same name share it. Values
//! written by `atomics.increment` are decimal strings, like Redis' `INCRBY`.

use crate::host::Host;
use anyhow::Context as _;
use futures::future::BoxFuture;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use wasmtime::component::{HasData, Linker, Resource, ResourceTable};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "wasi:keyvalue/imports",
        imports: { default: async | trappable },
        with: {
            "wasi:keyvalue/store.bucket": super::Bucket,
        },
        trappable_error_type: {
            "wasi:keyvalue/store.error" => super::KeyValueError,
        },
    });
}

use bindings::wasi::keyvalue::{atomics, batch, store};

/// An error from a backend, as the guest will see it.
#[derive(Debug, thiserror::Error)]
pub enum KeyValueError {
    /// The store does not exist.
    #[error("no such store")]
    NoSuchStore,
    /// The component may not open that store.
    #[error("access denied")]
    AccessDenied,
    /// Anything else, with a message for the guest.
    #[error("{0}")]
    Other(String),
}

impl From<wasmtime::component::ResourceTableError> for KeyValueError {
    fn from(error: wasmtime::component::ResourceTableError) -> Self {
        Self::Other(error.to_string())
    }
}

type BackendResult<T> = Result<T, KeyValueError>;

/// Where key-value data lives. Methods take owned arguments and return
/// boxed futures so a backend may block on a thread pool or talk to a server.
pub trait Backend: Send + Sync + 'static {
    /// The value of `key` in `store`, if any.
    fn get(&self, store: String, key: String) -> BoxFuture<'static, BackendResult<Option<Vec<u8>>>>;
    /// Sets `key` in `store` to `value`.
    fn set(&self, store: String, key: String, value: Vec<u8>) -> BoxFuture<'static, BackendResult<()>>;
    /// Removes `key` from `store` (no error if absent).
    fn delete(&self, store: String, key: String) -> BoxFuture<'static, BackendResult<()>>;
    /// All keys of `store`, in order.
    fn list_keys(&self, store: String) -> BoxFuture<'static, BackendResult<Vec<String>>>;
    /// Adds `delta` to the decimal number at `key` (0 if absent) atomically
    /// and durably, returning the new value.
    fn increment(&self, store: String, key: String, delta: u64) -> BoxFuture<'static, BackendResult<u64>>;
}

/// Opens the backend Wharf is configured with.
pub fn open_backend(
    kind: crate::manifest::KeyValueBackendKind,
    data_dir: &Path,
) -> anyhow::Result<Arc<dyn Backend>> {
    Ok(match kind {
        crate::manifest::KeyValueBackendKind::Memory => Arc::new(MemoryBackend::default()),
        crate::manifest::KeyValueBackendKind::Redb => {
            Arc::new(RedbBackend::open(&data_dir.join("keyvalue.redb"))?)
        }
    })
}

/// Per-instance key-value state: the backend and the stores it may open.
#[derive(Clone)]
pub struct KeyValueCtx {
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) allowed_stores: Arc<[String]>,
}

/// Borrowed view the generated host traits are implemented for.
pub struct KeyValueView<'a> {
    pub(crate) ctx: &'a KeyValueCtx,
    pub(crate) table: &'a mut ResourceTable,
}

/// An open store, as a `wasi:keyvalue/store.bucket` resource.
pub struct Bucket {
    store: String,
}

struct HasKeyValue;

impl HasData for HasKeyValue {
    type Data<'a> = KeyValueView<'a>;
}

/// Adds `wasi:keyvalue/{store,atomics,batch}` to `linker`.
pub fn add_to_linker(linker: &mut Linker<Host>) -> wasmtime::Result<()> {
    store::add_to_linker::<_, HasKeyValue>(linker, Host::key_value)?;
    atomics::add_to_linker::<_, HasKeyValue>(linker, Host::key_value)?;
    batch::add_to_linker::<_, HasKeyValue>(linker, Host::key_value)?;
    Ok(())
}

impl KeyValueView<'_> {
    fn store_of(&self, bucket: &Resource<Bucket>) -> BackendResult<String> {
        Ok(self.table.get(bucket)?.store.clone())
    }
}

impl store::Host for KeyValueView<'_> {
    async fn open(&mut self, identifier: String) -> BackendResult<Resource<Bucket>> {
        if !self.ctx.allowed_stores.contains(&identifier) {
            return Err(KeyValueError::AccessDenied);
        }
        Ok(self.table.push(Bucket { store: identifier })?)
    }

    fn convert_error(&mut self, error: KeyValueError) -> wasmtime::Result<store::Error> {
        Ok(match error {
            KeyValueError::NoSuchStore => store::Error::NoSuchStore,
            KeyValueError::AccessDenied => store::Error::AccessDenied,
            KeyValueError::Other(message) => store::Error::Other(message),
        })
    }
}

impl store::HostBucket for KeyValueView<'_> {
    async fn get(&mut self, bucket: Resource<Bucket>, key: String) -> BackendResult<Option<Vec<u8>>> {
        let store = self.store_of(&bucket)?;
        self.ctx.backend.get(store, key).await
    }

    async fn set(&mut self, bucket: Resource<Bucket>, key: String, value: Vec<u8>) -> BackendResult<()> {
        let store = self.store_of(&bucket)?;
        self.ctx.backend.set(store, key, value).await
    }

    async fn delete(&mut self, bucket: Resource<Bucket>, key: String) -> BackendResult<()> {
        let store = self.store_of(&bucket)?;
        self.ctx.backend.delete(store, key).await
    }

    async fn exists(&mut self, bucket: Resource<Bucket>, key: String) -> BackendResult<bool> {
        let store = self.store_of(&bucket)?;
        Ok(self.ctx.backend.get(store, key).await?.is_some())
    }

    async fn list_keys(
        &mut self,
        bucket: Resource<Bucket>,
        cursor: Option<u64>,
    ) -> BackendResult<store::KeyResponse> {
        let store = self.store_of(&bucket)?;
        let keys = self.ctx.backend.list_keys(store).await?;
        let start = usize::try_from(cursor.unwrap_or(0)).unwrap_or(usize::MAX).min(keys.len());
        Ok(store::KeyResponse { keys: keys[start..].to_vec(), cursor: None })
    }

    async fn drop(&mut self, bucket: Resource<Bucket>) -> wasmtime::Result<()> {
        self.table.delete(bucket)?;
        Ok(())
    }
}

impl atomics::Host for KeyValueView<'_> {
    async fn increment(&mut self, bucket: Resource<Bucket>, key: String, delta: u64) -> BackendResult<u64> {
        let store = self.store_of(&bucket)?;
        self.ctx.backend.increment(store, key, delta).await
    }
}

impl batch::Host for KeyValueView<'_> {
    async fn get_many(
        &mut self,
        bucket: Resource<Bucket>,
        keys: Vec<String>,
    ) -> BackendResult<Vec<Option<(String, Vec<u8>)>>> {
        let store = self.store_of(&bucket)?;
        let mut values = Vec::with_capacity(keys.len());
        for key in keys {
            let value = self.ctx.backend.get(store.clone(), key.clone()).await?;
            values.push(value.map(|v| (key, v)));
        }
        Ok(values)
    }

    async fn set_many(
        &mut self,
        bucket: Resource<Bucket>,
        entries: Vec<(String, Vec<u8>)>,
    ) -> BackendResult<()> {
        let store = self.store_of(&bucket)?;
        for (key, value) in entries {
            self.ctx.backend.set(store.clone(), key, value).await?;
        }
        Ok(())
    }

    async fn delete_many(&mut self, bucket: Resource<Bucket>, keys: Vec<String>) -> BackendResult<()> {
        let store = self.store_of(&bucket)?;
        for key in keys {
            self.ctx.backend.delete(store.clone(), key).await?;
        }
        Ok(())
    }
}

fn parse_counter(bytes: Option<&[u8]>) -> BackendResult<u64> {
    let Some(bytes) = bytes else { return Ok(0) };
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| KeyValueError::Other("value is not a decimal number; cannot increment".into()))
}

fn add(current: u64, delta: u64) -> BackendResult<u64> {
    current.checked_add(delta).ok_or_else(|| KeyValueError::Other("increment overflows u64".into()))
}

/// A process-local map; nothing survives a restart.
#[derive(Default)]
pub struct MemoryBackend {
    stores: Mutex<HashMap<String, std::collections::BTreeMap<String, Vec<u8>>>>,
}

impl MemoryBackend {
    fn with<T>(
        &self,
        store: &str,
        f: impl FnOnce(&mut std::collections::BTreeMap<String, Vec<u8>>) -> T,
    ) -> T {
        let mut stores = self.stores.lock().unwrap_or_else(|e| e.into_inner());
        f(stores.entry(store.to_string()).or_default())
    }
}

impl Backend for MemoryBackend {
    fn get(&self, store: String, key: String) -> BoxFuture<'static, BackendResult<Option<Vec<u8>>>> {
        let value = self.with(&store, |map| map.get(&key).cloned());
        Box::pin(async move { Ok(value) })
    }

    fn set(&self, store: String, key: String, value: Vec<u8>) -> BoxFuture<'static, BackendResult<()>> {
        self.with(&store, |map| map.insert(key, value));
        Box::pin(async { Ok(()) })
    }

    fn delete(&self, store: String, key: String) -> BoxFuture<'static, BackendResult<()>> {
        self.with(&store, |map| map.remove(&key));
        Box::pin(async { Ok(()) })
    }

    fn list_keys(&self, store: String) -> BoxFuture<'static, BackendResult<Vec<String>>> {
        let keys = self.with(&store, |map| map.keys().cloned().collect());
        Box::pin(async move { Ok(keys) })
    }

    fn increment(&self, store: String, key: String, delta: u64) -> BoxFuture<'static, BackendResult<u64>> {
        let result = self.with(&store, |map| {
            let next = add(parse_counter(map.get(&key).map(Vec::as_slice))?, delta)?;
            map.insert(key, next.to_string().into_bytes());
            Ok(next)
        });
        Box::pin(async move { result })
    }
}

/// An embedded `redb` database: one table per store, every write committed
/// durably before the guest sees it succeed. redb is synchronous, so each
/// operation runs on the blocking pool, never on a request thread.
pub struct RedbBackend {
    db: Arc<redb::Database>,
}

impl RedbBackend {
    /// Opens (or creates) the database file at `path`.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create data directory {}", dir.display()))?;
        }
        let db = redb::Database::create(path)
            .with_context(|| format!("cannot open key-value database {}", path.display()))?;
        Ok(Self { db: Arc::new(db) })
    }

    fn run<T: Send + 'static>(
        &self,
        op: impl FnOnce(&redb::Database) -> Result<T, redb::Error> + Send + 'static,
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
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
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
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
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
