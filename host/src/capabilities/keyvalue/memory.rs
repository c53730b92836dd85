//! The in-memory backend: a process-local map, gone when the process exits.

use super::{Backend, BackendResult, add, parse_counter};
use futures::future::BoxFuture;
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

/// A process-local map; nothing survives a restart.
#[derive(Default)]
pub struct MemoryBackend {
    stores: Mutex<HashMap<String, BTreeMap<String, Vec<u8>>>>,
}

impl MemoryBackend {
    fn with<T>(&self, store: &str, f: impl FnOnce(&mut BTreeMap<String, Vec<u8>>) -> T) -> T {
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
