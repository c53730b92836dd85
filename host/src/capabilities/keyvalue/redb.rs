//! The embedded, persistent backend: a `redb` database in the data
//! directory, one table per store.
//!
//! Writes are group-committed: one writer thread takes every write that is
//! waiting, applies them in arrival order in one transaction, commits it
//! with one fsync, and only then answers each of them. So a write is
//! acknowledged only once durable, and a hundred concurrent increments cost
//! one fsync, not a hundred. Each write is applied whole or not at all (an
//! increment of a non-number, or a set past `max_keys_per_store`, fails
//! alone); if the commit itself fails, every write in it fails. Reads never
//! wait for a commit: they run on the blocking pool against the last
//! committed state.

use super::{
    Backend, BackendResult, KeyPage, KeyValueError, KeyValueLimits, ListStart, add, parse_counter, store_full,
};
use ::redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use anyhow::Context as _;
use futures::future::BoxFuture;
use std::ops::Bound;
use std::path::Path;
use std::sync::{Arc, Mutex, mpsc};
use tokio::sync::oneshot;

/// Writes gathered into one transaction at most.
const MAX_GROUP: usize = 1024;

/// An embedded `redb` database with a group-committing writer.
pub struct RedbBackend {
    db: Arc<::redb::Database>,
    writes: Mutex<Option<mpsc::Sender<Write>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// One write waiting for the writer thread.
struct Write {
    store: String,
    op: WriteOp,
    reply: oneshot::Sender<BackendResult<i64>>,
}

enum WriteOp {
    Set(Vec<(String, Vec<u8>)>),
    Delete(Vec<String>),
    Increment(String, i64),
    /// Key, the value it must hold (`None`: absent), the new value.
    CompareAndSwap(String, Option<Vec<u8>>, Vec<u8>),
}

fn table(store: &str) -> TableDefinition<'_, &'static str, &'static [u8]> {
    TableDefinition::new(store)
}

fn database_error(error: impl std::fmt::Display) -> KeyValueError {
    tracing::error!(%error, "key-value database error");
    KeyValueError::Other("key-value database error".into())
}

impl RedbBackend {
    /// Opens (or creates) the database file at `path`.
    pub fn open(path: &Path, limits: KeyValueLimits) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create data directory {}", dir.display()))?;
        }
        let db = ::redb::Database::create(path)
            .with_context(|| format!("cannot open key-value database {}", path.display()))?;
        Self::serve(db, limits)
    }

    /// Serves a database on storage of the caller's (tests: a disk that
    /// loses what was not synced when its power is cut).
    #[cfg(test)]
    fn on_storage(storage: impl ::redb::StorageBackend, limits: KeyValueLimits) -> anyhow::Result<Self> {
        Self::serve(::redb::Builder::new().create_with_backend(storage)?, limits)
    }

    fn serve(db: ::redb::Database, limits: KeyValueLimits) -> anyhow::Result<Self> {
        let db = Arc::new(db);
        let (sender, receiver) = mpsc::channel::<Write>();
        let writer_db = db.clone();
        let writer = std::thread::Builder::new()
            .name("wharf-kv-writer".into())
            .spawn(move || write_loop(&writer_db, &receiver, limits))
            .context("cannot start the key-value writer thread")?;
        Ok(Self { db, writes: Mutex::new(Some(sender)), writer: Mutex::new(Some(writer)) })
    }

    fn write(&self, store: String, op: WriteOp) -> BoxFuture<'static, BackendResult<i64>> {
        let (reply, answer) = oneshot::channel();
        let sent = self
            .writes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|writes| writes.send(Write { store, op, reply }).is_ok());
        Box::pin(async move {
            if !sent {
                return Err(KeyValueError::Other("key-value store is closed".into()));
            }
            answer.await.map_err(|_| KeyValueError::Other("key-value writer stopped".into()))?
        })
    }

    fn read<T: Send + 'static>(
        &self,
        op: impl FnOnce(&::redb::Database) -> Result<T, ::redb::Error> + Send + 'static,
    ) -> BoxFuture<'static, BackendResult<T>> {
        let db = self.db.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || op(&db))
                .await
                .map_err(|e| KeyValueError::Other(format!("key-value task failed: {e}")))?
                .map_err(database_error)
        })
    }
}

impl Drop for RedbBackend {
    fn drop(&mut self) {
        // The writer finishes what is queued, then lets the database go, so
        // the file can be opened again as soon as the backend is dropped.
        self.writes.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(writer) = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = writer.join();
        }
    }
}

fn write_loop(db: &::redb::Database, writes: &mpsc::Receiver<Write>, limits: KeyValueLimits) {
    while let Ok(first) = writes.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match writes.try_recv() {
                Ok(write) => group.push(write),
                Err(_) => break,
            }
        }
        let outcome = apply_group(db, &group, limits);
        match outcome {
            Ok(results) => {
                for (write, result) in group.into_iter().zip(results) {
                    let _ = write.reply.send(result);
                }
            }
            Err(error) => {
                let message = error.to_string();
                tracing::error!(error = %message, writes = group.len(), "key-value commit failed; none of its writes happened");
                for write in group {
                    let _ = write.reply.send(Err(KeyValueError::Other("key-value database error".into())));
                }
            }
        }
    }
}

/// Applies `group` in one transaction and commits it; a write that fails on
/// its own merits gets its error and changes nothing.
fn apply_group(
    db: &::redb::Database,
    group: &[Write],
    limits: KeyValueLimits,
) -> Result<Vec<BackendResult<i64>>, ::redb::Error> {
    let txn = db.begin_write()?;
    let mut results = Vec::with_capacity(group.len());
    for write in group {
        let mut store = txn.open_table(table(&write.store))?;
        let has_room =
            |store: &::redb::Table<&str, &[u8]>, new_keys: u64| -> Result<BackendResult<()>, ::redb::Error> {
                let max = limits.max_keys_per_store;
                Ok(if max > 0 && store.len()? + new_keys > max { Err(store_full(max)) } else { Ok(()) })
            };
        let result = match &write.op {
            WriteOp::Set(entries) => {
                let mut new_keys = 0;
                for (key, _) in entries {
                    new_keys += u64::from(store.get(key.as_str())?.is_none());
                }
                match has_room(&store, new_keys)? {
                    Err(error) => Err(error),
                    Ok(()) => {
                        for (key, value) in entries {
                            store.insert(key.as_str(), value.as_slice())?;
                        }
                        Ok(0)
                    }
                }
            }
            WriteOp::Delete(keys) => {
                for key in keys {
                    store.remove(key.as_str())?;
                }
                Ok(0)
            }
            WriteOp::CompareAndSwap(key, expected, value) => {
                let current = store.get(key.as_str())?.map(|v| v.value().to_vec());
                if current != *expected {
                    Ok(0)
                } else {
                    match if current.is_none() { has_room(&store, 1)? } else { Ok(()) } {
                        Err(error) => Err(error),
                        Ok(()) => {
                            store.insert(key.as_str(), value.as_slice())?;
                            Ok(1)
                        }
                    }
                }
            }
            WriteOp::Increment(key, delta) => {
                let current = store.get(key.as_str())?.map(|v| v.value().to_vec());
                let room = if current.is_none() { has_room(&store, 1)? } else { Ok(()) };
                match room.and_then(|()| parse_counter(current.as_deref()).and_then(|c| add(c, *delta))) {
                    Err(error) => Err(error),
                    Ok(next) => {
                        store.insert(key.as_str(), next.to_string().as_bytes())?;
                        Ok(next)
                    }
                }
            }
        };
        results.push(result);
    }
    txn.commit()?;
    Ok(results)
}

impl Backend for RedbBackend {
    fn get_many(
        &self,
        store: String,
        keys: Vec<String>,
    ) -> BoxFuture<'static, BackendResult<Vec<Option<Vec<u8>>>>> {
        self.read(move |db| {
            let txn = db.begin_read()?;
            let table = match txn.open_table(table(&store)) {
                Ok(table) => table,
                Err(::redb::TableError::TableDoesNotExist(_)) => return Ok(vec![None; keys.len()]),
                Err(e) => return Err(e.into()),
            };
            keys.iter().map(|key| Ok(table.get(key.as_str())?.map(|v| v.value().to_vec()))).collect()
        })
    }

    fn set_many(
        &self,
        store: String,
        entries: Vec<(String, Vec<u8>)>,
    ) -> BoxFuture<'static, BackendResult<()>> {
        let write = self.write(store, WriteOp::Set(entries));
        Box::pin(async move { write.await.map(drop) })
    }

    fn delete_many(&self, store: String, keys: Vec<String>) -> BoxFuture<'static, BackendResult<()>> {
        let write = self.write(store, WriteOp::Delete(keys));
        Box::pin(async move { write.await.map(drop) })
    }

    fn list_keys(
        &self,
        store: String,
        start: ListStart,
        limit: usize,
    ) -> BoxFuture<'static, BackendResult<KeyPage>> {
        self.read(move |db| {
            let txn = db.begin_read()?;
            let table = match txn.open_table(table(&store)) {
                Ok(table) => table,
                Err(::redb::TableError::TableDoesNotExist(_)) => {
                    return Ok(KeyPage { keys: Vec::new(), next: None });
                }
                Err(e) => return Err(e.into()),
            };
            let after = match &start {
                ListStart::After(key) => Some(key.as_str()),
                _ => None,
            };
            let range = match after {
                Some(key) => table.range::<&str>((Bound::Excluded(key), Bound::Unbounded))?,
                None => table.range::<&str>(..)?,
            };
            let mut keys = Vec::with_capacity(limit.min(1024));
            let mut more = false;
            for entry in range {
                if keys.len() == limit {
                    more = true;
                    break;
                }
                keys.push(entry?.0.value().to_string());
            }
            let next = more.then(|| ListStart::After(keys.last().cloned().unwrap_or_default()));
            Ok(KeyPage { keys, next })
        })
    }

    fn increment(&self, store: String, key: String, delta: i64) -> BoxFuture<'static, BackendResult<i64>> {
        self.write(store, WriteOp::Increment(key, delta))
    }

    fn compare_and_swap(
        &self,
        store: String,
        key: String,
        expected: Option<Vec<u8>>,
        value: Vec<u8>,
    ) -> BoxFuture<'static, BackendResult<bool>> {
        let write = self.write(store, WriteOp::CompareAndSwap(key, expected, value));
        Box::pin(async move { Ok(write.await? == 1) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capabilities::keyvalue::MemoryBackend;

    /// A disk that keeps what was written, and, apart, what was synced:
    /// cutting its power keeps only the second.
    #[derive(Debug, Default, Clone)]
    struct PowerLossDisk {
        written: Arc<Mutex<Vec<u8>>>,
        synced: Arc<Mutex<Vec<u8>>>,
    }

    impl PowerLossDisk {
        /// The disk as it is after the power comes back.
        fn after_power_loss(&self) -> Self {
            let synced = self.synced.lock().unwrap().clone();
            Self { written: Arc::new(Mutex::new(synced.clone())), synced: Arc::new(Mutex::new(synced)) }
        }
    }

    impl ::redb::StorageBackend for PowerLossDisk {
        fn len(&self) -> std::io::Result<u64> {
            Ok(self.written.lock().unwrap().len() as u64)
        }

        fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
            let written = self.written.lock().unwrap();
            let start = offset as usize;
            let bytes = written.get(start..start + out.len()).ok_or(std::io::ErrorKind::UnexpectedEof)?;
            out.copy_from_slice(bytes);
            Ok(())
        }

        fn set_len(&self, len: u64) -> std::io::Result<()> {
            self.written.lock().unwrap().resize(len as usize, 0);
            Ok(())
        }

        fn sync_data(&self) -> std::io::Result<()> {
            *self.synced.lock().unwrap() = self.written.lock().unwrap().clone();
            Ok(())
        }

        fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
            let mut written = self.written.lock().unwrap();
            let end = offset as usize + data.len();
            if written.len() < end {
                written.resize(end, 0);
            }
            written[offset as usize..end].copy_from_slice(data);
            Ok(())
        }
    }

    #[tokio::test]
    async fn every_acknowledged_increment_survives_a_power_loss() {
        // The disk model itself: a commit that is not synced is lost.
        let disk = PowerLossDisk::default();
        let db = ::redb::Builder::new().create_with_backend(disk.clone()).unwrap();
        let mut txn = db.begin_write().unwrap();
        txn.set_durability(::redb::Durability::None).unwrap();
        txn.open_table(table("s")).unwrap().insert("unsynced", b"1".as_slice()).unwrap();
        txn.commit().unwrap();
        let image = disk.after_power_loss();
        drop(db);
        let db = ::redb::Builder::new().create_with_backend(image).unwrap();
        let read = db.begin_read().unwrap();
        let lost = read.open_table(table("s")).map(|t| t.get("unsynced").unwrap().is_none()).unwrap_or(true);
        assert!(lost, "the disk model keeps what was never synced");

        // The backend: 300 concurrent increments, each acknowledged, then
        // the power goes.
        let disk = PowerLossDisk::default();
        let backend = Arc::new(RedbBackend::on_storage(disk.clone(), KeyValueLimits::default()).unwrap());
        let tasks: Vec<_> = (0..300)
            .map(|_| {
                let backend = backend.clone();
                tokio::spawn(async move { backend.increment("s".into(), "k".into(), 1).await })
            })
            .collect();
        let acknowledged =
            futures::future::join_all(tasks).await.into_iter().filter(|r| matches!(r, Ok(Ok(_)))).count();
        assert_eq!(acknowledged, 300);
        let image = disk.after_power_loss();
        let after = RedbBackend::on_storage(image, KeyValueLimits::default()).unwrap();
        let stored = after.get_many("s".into(), vec!["k".into()]).await.unwrap();
        assert_eq!(stored, vec![Some(b"300".to_vec())], "an acknowledged increment was not on disk");
    }

    fn temp_db(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("wharf-kv-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir.join("kv.redb")
    }

    #[tokio::test]
    async fn concurrent_increments_are_exact_and_durable() {
        let path = temp_db("increments");
        {
            let backend = Arc::new(RedbBackend::open(&path, KeyValueLimits::default()).unwrap());
            let tasks: Vec<_> = (0..200)
                .map(|_| {
                    let backend = backend.clone();
                    tokio::spawn(async move { backend.increment("s".into(), "k".into(), 1).await.unwrap() })
                })
                .collect();
            let mut seen: Vec<i64> =
                futures::future::join_all(tasks).await.into_iter().map(|r| r.unwrap()).collect();
            seen.sort();
            assert_eq!(seen, (1..=200).collect::<Vec<_>>(), "each increment saw its own value");
        }
        let reopened = RedbBackend::open(&path, KeyValueLimits::default()).unwrap();
        assert_eq!(
            reopened.get_many("s".into(), vec!["k".into()]).await.unwrap(),
            vec![Some(b"200".to_vec())]
        );
        let page = reopened.list_keys("s".into(), ListStart::Beginning, 10).await.unwrap();
        assert_eq!((page.keys, page.next), (vec!["k".to_string()], None));
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[tokio::test]
    async fn a_failing_write_does_not_spoil_the_others_in_its_group() {
        let path = temp_db("group");
        let backend = Arc::new(RedbBackend::open(&path, KeyValueLimits::default()).unwrap());
        backend.set_many("s".into(), vec![("word".into(), b"abc".to_vec())]).await.unwrap();
        let (good, bad) = tokio::join!(
            backend.increment("s".into(), "n".into(), 2),
            backend.increment("s".into(), "word".into(), 1),
        );
        assert_eq!(good.unwrap(), 2);
        assert!(bad.is_err(), "not a number");
        drop(backend);
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[tokio::test]
    async fn stores_are_held_to_their_key_count() {
        let limits = KeyValueLimits { max_keys_per_store: 3, ..KeyValueLimits::default() };
        let path = temp_db("full");
        let redb: Arc<dyn Backend> = Arc::new(RedbBackend::open(&path, limits).unwrap());
        let memory: Arc<dyn Backend> = Arc::new(MemoryBackend::new(limits));
        for backend in [redb, memory] {
            let three = (0..3).map(|i| (format!("k{i}"), b"v".to_vec())).collect();
            backend.set_many("s".into(), three).await.unwrap();
            assert!(backend.set_many("s".into(), vec![("k3".into(), b"v".to_vec())]).await.is_err());
            assert!(backend.increment("s".into(), "new".into(), 1).await.is_err());
            backend.set_many("s".into(), vec![("k0".into(), b"w".to_vec())]).await.unwrap();
            backend.delete_many("s".into(), vec!["k1".into()]).await.unwrap();
            backend.set_many("s".into(), vec![("k3".into(), b"v".to_vec())]).await.unwrap();
        }
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[tokio::test]
    async fn keys_are_listed_in_pages() {
        let path = temp_db("pages");
        let redb: Arc<dyn Backend> = Arc::new(RedbBackend::open(&path, KeyValueLimits::default()).unwrap());
        let memory: Arc<dyn Backend> = Arc::new(MemoryBackend::default());
        for backend in [redb, memory] {
            let keys: Vec<(String, Vec<u8>)> = (0..25).map(|i| (format!("k{i:02}"), vec![])).collect();
            backend.set_many("s".into(), keys).await.unwrap();
            let (mut all, mut start, mut pages) = (Vec::new(), ListStart::Beginning, 0);
            loop {
                let page = backend.list_keys("s".into(), start, 10).await.unwrap();
                pages += 1;
                all.extend(page.keys);
                match page.next {
                    Some(next) => start = next,
                    None => break,
                }
            }
            assert_eq!(pages, 3);
            assert_eq!(all, (0..25).map(|i| format!("k{i:02}")).collect::<Vec<_>>());
        }
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }
}
