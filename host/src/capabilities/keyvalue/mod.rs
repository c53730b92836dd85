//! `wasi:keyvalue` (store, atomics, batch) on the host side, over pluggable
//! backends: an embedded persistent `redb` database (the default) and an
//! in-memory map. A component sees only the standard interface, so adding a
//! backend (Redis, say) never touches a component.
//!
//! Stores are named; a component may open only the stores its manifest entry
//! lists, and two components that list the same name share it. Values
//! written by `atomics.increment` are decimal strings, like Redis' `INCRBY`.

use crate::runtime::host::Host;
use futures::future::BoxFuture;
use std::path::Path;
use std::sync::Arc;
use wasmtime::component::{HasData, Linker, Resource, ResourceTable};

mod memory;
mod redb;

pub use self::redb::RedbBackend;
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
        crate::manifest::KeyValueBackendKind::Memory => Arc::new(memory::MemoryBackend::default()),
        crate::manifest::KeyValueBackendKind::Redb => {
            Arc::new(self::redb::RedbBackend::open(&data_dir.join("keyvalue.redb"))?)
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

pub(crate) fn parse_counter(bytes: Option<&[u8]>) -> BackendResult<u64> {
    let Some(bytes) = bytes else { return Ok(0) };
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| KeyValueError::Other("value is not a decimal number; cannot increment".into()))
}

pub(crate) fn add(current: u64, delta: u64) -> BackendResult<u64> {
    current.checked_add(delta).ok_or_else(|| KeyValueError::Other("increment overflows u64".into()))
}
