//! `wasi:keyvalue` (store, atomics, batch) on the host side, over pluggable
//! backends, one file each: an embedded persistent `redb` database (the
//! default, `redb.rs`), an in-memory map (`memory.rs`), and Redis, shared by
//! many hosts (`redis.rs`). A component sees only the standard interface,
//! so adding a backend never touches a component.
//!
//! Stores are named; a component may open only the stores its manifest entry
//! lists, and two components that list the same name share it. Values
//! written by `atomics.increment` are decimal strings, like Redis' `INCRBY`.
//!
//! Bounds, checked here before a backend is asked: key and value sizes,
//! keys per batch call and the bytes a `get-many` may bring into the host;
//! keys per store are checked by the backend as it inserts. `list-keys`
//! returns pages of [`LIST_PAGE`] keys; its cursor is a handle to where the
//! page ended, valid across requests on this host for [`CURSOR_TTL`].

use futures::future::BoxFuture;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use wasmtime::component::{HasData, Linker, Resource, ResourceTable};

pub mod draft2;
mod memory;
mod redb;
mod redis;
mod traced;

pub use self::redb::RedbBackend;
pub use self::redis::RedisBackend;
pub use memory::MemoryBackend;

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

/// Keys in one `list-keys` page.
pub const LIST_PAGE: usize = 1000;
/// Keys in one batch call at most.
pub const MAX_BATCH_KEYS: usize = 1000;
/// How long a `list-keys` cursor stays valid.
pub const CURSOR_TTL: Duration = Duration::from_secs(600);
/// Cursors remembered at most (the oldest are forgotten first).
const MAX_CURSORS: usize = 10_000;

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

pub(crate) type BackendResult<T> = Result<T, KeyValueError>;

/// The values of some keys, in order (`None`: absent).
pub(crate) type Values = Vec<Option<Vec<u8>>>;

pub use crate::manifest::KeyValueLimits;

/// Where a `list-keys` page starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListStart {
    /// At the first key.
    Beginning,
    /// After this key (ordered stores).
    After(String),
    /// At this server-side cursor (Redis `SCAN`).
    Scan(u64),
}

/// One page of keys and where the next one starts, if there is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPage {
    /// The keys of this page.
    pub keys: Vec<String>,
    /// Where the next page starts; `None` when this was the last.
    pub next: Option<ListStart>,
}

/// Where key-value data lives. Methods take owned arguments and return
/// boxed futures so a backend may block on a thread pool or talk to a
/// server. Writes are durable (as far as the backend is) before their
/// future resolves.
pub trait Backend: Send + Sync + 'static {
    /// The values of `keys` in `store`, in order.
    fn get_many(
        &self,
        store: String,
        keys: Vec<String>,
    ) -> BoxFuture<'static, BackendResult<Vec<Option<Vec<u8>>>>>;
    /// Sets each key of `entries` in `store`.
    fn set_many(
        &self,
        store: String,
        entries: Vec<(String, Vec<u8>)>,
    ) -> BoxFuture<'static, BackendResult<()>>;
    /// Removes `keys` from `store` (absent ones are skipped).
    fn delete_many(&self, store: String, keys: Vec<String>) -> BoxFuture<'static, BackendResult<()>>;
    /// At most `limit` keys of `store` from `start`.
    fn list_keys(
        &self,
        store: String,
        start: ListStart,
        limit: usize,
    ) -> BoxFuture<'static, BackendResult<KeyPage>>;
    /// Adds `delta` to the decimal number at `key` (0 if absent) atomically
    /// and durably, returning the new value.
    fn increment(&self, store: String, key: String, delta: i64) -> BoxFuture<'static, BackendResult<i64>>;
    /// Sets `key` to `value` if it still holds `expected` (`None`: absent),
    /// atomically and durably; whether it did.
    fn compare_and_swap(
        &self,
        store: String,
        key: String,
        expected: Option<Vec<u8>>,
        value: Vec<u8>,
    ) -> BoxFuture<'static, BackendResult<bool>>;
}

/// Opens the backend Wharf is configured with (`redis`: the shared
/// connection, for the Redis backend).
pub fn open_backend(
    kind: crate::manifest::KeyValueBackendKind,
    data_dir: &Path,
    limits: KeyValueLimits,
    redis: Option<&Arc<crate::shared::redis::SharedRedis>>,
    tracing: Option<&Arc<crate::telemetry::trace::Tracing>>,
) -> anyhow::Result<Arc<dyn Backend>> {
    use crate::manifest::KeyValueBackendKind as Kind;
    let backend: Arc<dyn Backend> = match kind {
        Kind::Memory => Arc::new(memory::MemoryBackend::new(limits)),
        Kind::Redb => Arc::new(self::redb::RedbBackend::open(&data_dir.join("keyvalue.redb"), limits)?),
        Kind::Redis => {
            let redis =
                redis.ok_or_else(|| anyhow::anyhow!("key_value = \"redis\" needs server.redis_url"))?;
            Arc::new(self::redis::RedisBackend::new(redis.clone(), limits))
        }
    };
    Ok(match tracing {
        None => backend,
        Some(tracing) => {
            let system = match kind {
                Kind::Memory => "memory",
                Kind::Redb => "redb",
                Kind::Redis => "redis",
            };
            Arc::new(traced::Traced { inner: backend, tracing: tracing.clone(), system })
        }
    })
}

/// The shared state behind `wasi:keyvalue`: the backend, the limits, and
/// the `list-keys` cursors handed out.
pub struct KeyValue {
    backend: Arc<dyn Backend>,
    limits: KeyValueLimits,
    cursors: Mutex<Cursors>,
}

impl KeyValue {
    /// Serves `backend` under `limits`.
    pub fn new(backend: Arc<dyn Backend>, limits: KeyValueLimits) -> Self {
        Self { backend, limits, cursors: Mutex::default() }
    }

    /// The backend (for operators and tests).
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// The limits guests are held to.
    pub fn limits(&self) -> KeyValueLimits {
        self.limits
    }

    fn check_key(&self, key: &str) -> BackendResult<()> {
        if key.len() > self.limits.max_key_bytes {
            return Err(KeyValueError::Other(format!(
                "key is {} bytes; the limit is {} (server.max_key_bytes)",
                key.len(),
                self.limits.max_key_bytes
            )));
        }
        Ok(())
    }

    fn check_value(&self, value: &[u8]) -> BackendResult<()> {
        if value.len() > self.limits.max_value_bytes {
            return Err(KeyValueError::Other(format!(
                "value is {} bytes; the limit is {} (server.max_value_bytes)",
                value.len(),
                self.limits.max_value_bytes
            )));
        }
        Ok(())
    }

    fn check_batch(&self, count: usize) -> BackendResult<()> {
        if count > MAX_BATCH_KEYS {
            return Err(KeyValueError::Other(format!(
                "{count} keys in one batch call; the limit is {MAX_BATCH_KEYS}"
            )));
        }
        Ok(())
    }
}

/// `list-keys` cursors: handles to where a page ended, per store.
#[derive(Default)]
struct Cursors {
    next_id: u64,
    by_id: HashMap<u64, (String, ListStart, Instant)>,
}

impl Cursors {
    fn remember(&mut self, store: &str, start: ListStart) -> u64 {
        let now = Instant::now();
        if self.by_id.len() >= MAX_CURSORS {
            self.by_id.retain(|_, (_, _, at)| now.duration_since(*at) < CURSOR_TTL);
        }
        if self.by_id.len() >= MAX_CURSORS
            && let Some(oldest) = self.by_id.iter().min_by_key(|(_, (_, _, at))| *at).map(|(id, _)| *id)
        {
            self.by_id.remove(&oldest);
        }
        self.next_id += 1;
        self.by_id.insert(self.next_id, (store.to_string(), start, now));
        self.next_id
    }

    fn take(&mut self, store: &str, id: u64) -> Option<ListStart> {
        match self.by_id.remove(&id) {
            Some((owner, start, at)) if owner == store && at.elapsed() < CURSOR_TTL => Some(start),
            _ => None,
        }
    }
}

/// Per-instance key-value state: the shared state and the stores it may open.
#[derive(Clone)]
pub struct KeyValueCtx {
    pub(crate) shared: Arc<KeyValue>,
    pub(crate) allowed_stores: Arc<[String]>,
    /// Bytes a `get-many` may bring into the host (the instance's memory
    /// ceiling: the answer has to fit in the guest anyway).
    pub(crate) max_response_bytes: usize,
}

/// Borrowed view the generated host traits are implemented for.
pub struct KeyValueView<'a> {
    pub(crate) ctx: &'a KeyValueCtx,
    pub(crate) table: &'a mut ResourceTable,
}

/// An open store, as a `wasi:keyvalue/store.bucket` resource (and Spin's
/// `store`).
pub struct Bucket {
    store: String,
}

struct HasKeyValue;

impl HasData for HasKeyValue {
    type Data<'a> = KeyValueView<'a>;
}

/// Adds `wasi:keyvalue/{store,atomics,batch}` to `linker`; `view` finds an
/// instance's key-value state in its store's data.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> KeyValueView<'_>,
) -> wasmtime::Result<()> {
    store::add_to_linker::<_, HasKeyValue>(linker, view)?;
    atomics::add_to_linker::<_, HasKeyValue>(linker, view)?;
    batch::add_to_linker::<_, HasKeyValue>(linker, view)?;
    Ok(())
}

impl KeyValueView<'_> {
    fn store_of(&self, bucket: &Resource<Bucket>) -> BackendResult<String> {
        Ok(self.table.get(bucket)?.store.clone())
    }

    /// The value of `key` in `bucket`'s store.
    pub(crate) async fn get_one(
        &mut self,
        bucket: &Resource<Bucket>,
        key: String,
    ) -> BackendResult<Option<Vec<u8>>> {
        Ok(self.get_later(bucket, key)?.await?.pop().flatten())
    }

    /// Sets `key` in `bucket`'s store.
    pub(crate) async fn set_one(
        &mut self,
        bucket: &Resource<Bucket>,
        key: String,
        value: Vec<u8>,
    ) -> BackendResult<()> {
        self.set_later(bucket, key, value)?.await
    }

    /// Removes `key` from `bucket`'s store.
    pub(crate) async fn delete_one(&mut self, bucket: &Resource<Bucket>, key: String) -> BackendResult<()> {
        self.delete_later(bucket, key)?.await
    }

    /// Reading `key` from `bucket`'s store, as a future that needs nothing
    /// of the instance (a WASI 0.3 host call awaits it outside the store).
    pub(crate) fn get_later(
        &mut self,
        bucket: &Resource<Bucket>,
        key: String,
    ) -> BackendResult<BoxFuture<'static, BackendResult<Values>>> {
        let store = self.store_of(bucket)?;
        Ok(self.get_values(store, vec![key]))
    }

    /// Setting `key` in `bucket`'s store, as a future like [`Self::get_later`].
    pub(crate) fn set_later(
        &mut self,
        bucket: &Resource<Bucket>,
        key: String,
        value: Vec<u8>,
    ) -> BackendResult<BoxFuture<'static, BackendResult<()>>> {
        let store = self.store_of(bucket)?;
        Ok(self.set_values(store, vec![(key, value)]))
    }

    /// Removing `key` from `bucket`'s store, as a future like
    /// [`Self::get_later`].
    pub(crate) fn delete_later(
        &mut self,
        bucket: &Resource<Bucket>,
        key: String,
    ) -> BackendResult<BoxFuture<'static, BackendResult<()>>> {
        let store = self.store_of(bucket)?;
        self.shared().check_key(&key)?;
        Ok(self.shared().backend.delete_many(store, vec![key]))
    }

    /// Every key of `bucket`'s store, page by page, up to `max` (past it,
    /// an error), as a future like [`Self::get_later`].
    pub(crate) fn keys_later(
        &mut self,
        bucket: &Resource<Bucket>,
        max: usize,
    ) -> BackendResult<BoxFuture<'static, BackendResult<Vec<String>>>> {
        let store = self.store_of(bucket)?;
        let backend = self.shared().backend.clone();
        Ok(Box::pin(async move {
            let mut keys = Vec::new();
            let mut start = ListStart::Beginning;
            loop {
                let page = backend.list_keys(store.clone(), start, LIST_PAGE).await?;
                keys.extend(page.keys);
                if keys.len() > max {
                    return Err(KeyValueError::Other(format!(
                        "the store has more than {max} keys; list them with wasi:keyvalue's list-keys, a page at a time"
                    )));
                }
                match page.next {
                    Some(next) => start = next,
                    None => return Ok(keys),
                }
            }
        }))
    }

    /// Every key of `bucket`'s store, up to `max`.
    pub(crate) async fn all_keys(
        &mut self,
        bucket: &Resource<Bucket>,
        max: usize,
    ) -> BackendResult<Vec<String>> {
        self.keys_later(bucket, max)?.await
    }

    /// Opens store `identifier`, if the component may.
    pub(crate) fn open_bucket(&mut self, identifier: String) -> BackendResult<Resource<Bucket>> {
        if !self.ctx.allowed_stores.contains(&identifier) {
            return Err(KeyValueError::AccessDenied);
        }
        Ok(self.table.push(Bucket { store: identifier })?)
    }

    /// One page of `bucket`'s keys from `cursor` (a handle to where the last
    /// ended), and the handle to where this one ended, if more follow.
    async fn list_page(
        &mut self,
        bucket: &Resource<Bucket>,
        cursor: Option<u64>,
    ) -> BackendResult<(Vec<String>, Option<u64>)> {
        let store = self.store_of(bucket)?;
        let start = match cursor {
            None => ListStart::Beginning,
            Some(id) => {
                let mut cursors = self.shared().cursors.lock().unwrap_or_else(|e| e.into_inner());
                cursors.take(&store, id).ok_or_else(|| {
                    KeyValueError::Other(format!("cursor {id} is unknown or expired; list from the start"))
                })?
            }
        };
        let page = self.shared().backend.list_keys(store.clone(), start, LIST_PAGE).await?;
        let cursor = page.next.map(|next| {
            self.shared().cursors.lock().unwrap_or_else(|e| e.into_inner()).remember(&store, next)
        });
        Ok((page.keys, cursor))
    }

    fn shared(&self) -> &KeyValue {
        &self.ctx.shared
    }

    fn get_values(
        &self,
        store: String,
        keys: Vec<String>,
    ) -> BoxFuture<'static, BackendResult<Vec<Option<Vec<u8>>>>> {
        let ctx = self.ctx.clone();
        Box::pin(async move { ctx.get_values(store, keys).await })
    }

    fn set_values(
        &self,
        store: String,
        entries: Vec<(String, Vec<u8>)>,
    ) -> BoxFuture<'static, BackendResult<()>> {
        let ctx = self.ctx.clone();
        Box::pin(async move { ctx.set_values(store, entries).await })
    }
}

impl KeyValueCtx {
    async fn get_values(&self, store: String, keys: Vec<String>) -> BackendResult<Vec<Option<Vec<u8>>>> {
        for key in &keys {
            self.shared.check_key(key)?;
        }
        let values = self.shared.backend.get_many(store, keys).await?;
        let total: usize = values.iter().flatten().map(Vec::len).sum();
        if total > self.max_response_bytes {
            return Err(KeyValueError::Other(format!(
                "the values come to {total} bytes, more than this instance's memory ceiling"
            )));
        }
        Ok(values)
    }

    async fn set_values(&self, store: String, entries: Vec<(String, Vec<u8>)>) -> BackendResult<()> {
        for (key, value) in &entries {
            self.shared.check_key(key)?;
            self.shared.check_value(value)?;
        }
        self.shared.backend.set_many(store, entries).await
    }
}

impl store::Host for KeyValueView<'_> {
    async fn open(&mut self, identifier: String) -> BackendResult<Resource<Bucket>> {
        self.open_bucket(identifier)
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
        Ok(self.get_values(store, vec![key]).await?.pop().flatten())
    }

    async fn set(&mut self, bucket: Resource<Bucket>, key: String, value: Vec<u8>) -> BackendResult<()> {
        let store = self.store_of(&bucket)?;
        self.set_values(store, vec![(key, value)]).await
    }

    async fn delete(&mut self, bucket: Resource<Bucket>, key: String) -> BackendResult<()> {
        let store = self.store_of(&bucket)?;
        self.shared().check_key(&key)?;
        self.shared().backend.delete_many(store, vec![key]).await
    }

    async fn exists(&mut self, bucket: Resource<Bucket>, key: String) -> BackendResult<bool> {
        let store = self.store_of(&bucket)?;
        Ok(self.get_values(store, vec![key]).await?.pop().flatten().is_some())
    }

    async fn list_keys(
        &mut self,
        bucket: Resource<Bucket>,
        cursor: Option<u64>,
    ) -> BackendResult<store::KeyResponse> {
        let (keys, cursor) = self.list_page(&bucket, cursor).await?;
        Ok(store::KeyResponse { keys, cursor })
    }

    async fn drop(&mut self, bucket: Resource<Bucket>) -> wasmtime::Result<()> {
        self.table.delete(bucket)?;
        Ok(())
    }
}

impl atomics::Host for KeyValueView<'_> {
    async fn increment(&mut self, bucket: Resource<Bucket>, key: String, delta: u64) -> BackendResult<u64> {
        let store = self.store_of(&bucket)?;
        self.shared().check_key(&key)?;
        let delta = i64::try_from(delta).map_err(|_| KeyValueError::Other("increment overflows".into()))?;
        let value = self.shared().backend.increment(store, key, delta).await?;
        u64::try_from(value).map_err(|_| KeyValueError::Other("the counter is negative".into()))
    }
}

impl batch::Host for KeyValueView<'_> {
    async fn get_many(
        &mut self,
        bucket: Resource<Bucket>,
        keys: Vec<String>,
    ) -> BackendResult<Vec<Option<(String, Vec<u8>)>>> {
        let store = self.store_of(&bucket)?;
        self.shared().check_batch(keys.len())?;
        let values = self.get_values(store, keys.clone()).await?;
        Ok(keys.into_iter().zip(values).map(|(key, value)| value.map(|v| (key, v))).collect())
    }

    async fn set_many(
        &mut self,
        bucket: Resource<Bucket>,
        entries: Vec<(String, Vec<u8>)>,
    ) -> BackendResult<()> {
        let store = self.store_of(&bucket)?;
        self.shared().check_batch(entries.len())?;
        self.set_values(store, entries).await
    }

    async fn delete_many(&mut self, bucket: Resource<Bucket>, keys: Vec<String>) -> BackendResult<()> {
        let store = self.store_of(&bucket)?;
        self.shared().check_batch(keys.len())?;
        for key in &keys {
            self.shared().check_key(key)?;
        }
        self.shared().backend.delete_many(store, keys).await
    }
}

pub(crate) fn parse_counter(bytes: Option<&[u8]>) -> BackendResult<i64> {
    let Some(bytes) = bytes else { return Ok(0) };
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| KeyValueError::Other("value is not a decimal number; cannot increment".into()))
}

pub(crate) fn add(current: i64, delta: i64) -> BackendResult<i64> {
    current
        .checked_add(delta)
        .ok_or_else(|| KeyValueError::Other("increment overflows a 64-bit counter".into()))
}

/// The error for a store that holds `max` keys already.
pub(crate) fn store_full(max: u64) -> KeyValueError {
    KeyValueError::Other(format!("the store holds {max} keys, its limit (server.max_keys_per_store)"))
}
