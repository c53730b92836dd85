//! The in-memory backend: a process-local map, gone when the process exits.

use super::{Backend, BackendResult, KeyPage, KeyValueLimits, ListStart, add, parse_counter, store_full};
use futures::future::BoxFuture;
use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::Mutex;

/// A process-local map; nothing survives a restart.
#[derive(Default)]
pub struct MemoryBackend {
    stores: Mutex<HashMap<String, BTreeMap<String, Vec<u8>>>>,
    limits: KeyValueLimits,
}

impl MemoryBackend {
    /// An empty map holding stores to `limits`.
    pub fn new(limits: KeyValueLimits) -> Self {
        Self { stores: Mutex::default(), limits }
    }

    fn with<T>(&self, store: &str, f: impl FnOnce(&mut BTreeMap<String, Vec<u8>>) -> T) -> T {
        let mut stores = self.stores.lock().unwrap_or_else(|e| e.into_inner());
        f(stores.entry(store.to_string()).or_default())
    }

    fn has_room(&self, map: &BTreeMap<String, Vec<u8>>, key: &str) -> BackendResult<()> {
        let max = self.limits.max_keys_per_store;
        if max > 0 && map.len() as u64 >= max && !map.contains_key(key) {
            return Err(store_full(max));
        }
        Ok(())
    }
}

impl Backend for MemoryBackend {
    fn get_many(
        &self,
        store: String,
        keys: Vec<String>,
    ) -> BoxFuture<'static, BackendResult<Vec<Option<Vec<u8>>>>> {
        let values = self.with(&store, |map| keys.iter().map(|k| map.get(k).cloned()).collect());
        Box::pin(async move { Ok(values) })
    }

    fn set_many(
        &self,
        store: String,
        entries: Vec<(String, Vec<u8>)>,
    ) -> BoxFuture<'static, BackendResult<()>> {
        let result = self.with(&store, |map| {
            for (key, value) in entries {
                self.has_room(map, &key)?;
                map.insert(key, value);
            }
            Ok(())
        });
        Box::pin(async move { result })
    }

    fn delete_many(&self, store: String, keys: Vec<String>) -> BoxFuture<'static, BackendResult<()>> {
        self.with(&store, |map| keys.iter().for_each(|k| drop(map.remove(k))));
        Box::pin(async { Ok(()) })
    }

    fn list_keys(
        &self,
        store: String,
        start: ListStart,
        limit: usize,
    ) -> BoxFuture<'static, BackendResult<KeyPage>> {
        let page = self.with(&store, |map| {
            let from = match &start {
                ListStart::After(key) => Bound::Excluded(key.clone()),
                _ => Bound::Unbounded,
            };
            let mut keys: Vec<String> =
                map.range((from, Bound::Unbounded)).map(|(k, _)| k.clone()).take(limit + 1).collect();
            let next = (keys.len() > limit).then(|| {
                keys.truncate(limit);
                ListStart::After(keys.last().cloned().unwrap_or_default())
            });
            KeyPage { keys, next }
        });
        Box::pin(async move { Ok(page) })
    }

    fn increment(&self, store: String, key: String, delta: i64) -> BoxFuture<'static, BackendResult<i64>> {
        let result = self.with(&store, |map| {
            self.has_room(map, &key)?;
            let next = add(parse_counter(map.get(&key).map(Vec::as_slice))?, delta)?;
            map.insert(key, next.to_string().into_bytes());
            Ok(next)
        });
        Box::pin(async move { result })
    }

    fn compare_and_swap(
        &self,
        store: String,
        key: String,
        expected: Option<Vec<u8>>,
        value: Vec<u8>,
    ) -> BoxFuture<'static, BackendResult<bool>> {
        let result = self.with(&store, |map| {
            if map.get(&key) != expected.as_ref() {
                return Ok(false);
            }
            self.has_room(map, &key)?;
            map.insert(key, value);
            Ok(true)
        });
        Box::pin(async move { result })
    }
}
