//! `wasi:keyvalue@0.2.0-draft2`, the version Spin ships, on the same
//! stores, permissions and bounds as the `0.2.0-draft` Wharf has always
//! served (`super`): a component built for Spin and one built for Wharf
//! share one store. It differs in signed increments, string cursors and a
//! compare-and-swap (`cas`, `swap`), which the backends do atomically.

pub use super::Bucket;
use super::{KeyValueError, KeyValueView, MAX_BATCH_KEYS};
use wasmtime::component::{HasData, Linker, Resource};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit/spin",
        world: "wharf:spin/keyvalue-draft2",
        imports: { default: async | trappable },
        with: {
            "wasi:keyvalue/store.bucket": super::Bucket,
            "wasi:keyvalue/atomics.cas": super::Cas,
        },
        trappable_error_type: {
            "wasi:keyvalue/store.error" => super::KeyValueError,
        },
    });
}

use bindings::wasi::keyvalue::{atomics, batch, store};

/// A compare-and-swap handle: the value `key` held when it was made.
pub struct Cas {
    store: String,
    key: String,
    current: Option<Vec<u8>>,
}

struct HasDraft2;

impl HasData for HasDraft2 {
    type Data<'a> = KeyValueView<'a>;
}

/// Adds `wasi:keyvalue@0.2.0-draft2` to `linker`.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> KeyValueView<'_>,
) -> wasmtime::Result<()> {
    store::add_to_linker::<_, HasDraft2>(linker, view)?;
    atomics::add_to_linker::<_, HasDraft2>(linker, view)?;
    batch::add_to_linker::<_, HasDraft2>(linker, view)?;
    Ok(())
}

impl store::Host for KeyValueView<'_> {
    async fn open(&mut self, identifier: String) -> Result<Resource<Bucket>, KeyValueError> {
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
    async fn get(&mut self, bucket: Resource<Bucket>, key: String) -> Result<Option<Vec<u8>>, KeyValueError> {
        let store = self.store_of(&bucket)?;
        Ok(self.get_values(store, vec![key]).await?.pop().flatten())
    }

    async fn set(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
        value: Vec<u8>,
    ) -> Result<(), KeyValueError> {
        let store = self.store_of(&bucket)?;
        self.set_values(store, vec![(key, value)]).await
    }

    async fn delete(&mut self, bucket: Resource<Bucket>, key: String) -> Result<(), KeyValueError> {
        let store = self.store_of(&bucket)?;
        self.shared().check_key(&key)?;
        self.shared().backend.delete_many(store, vec![key]).await
    }

    async fn exists(&mut self, bucket: Resource<Bucket>, key: String) -> Result<bool, KeyValueError> {
        let store = self.store_of(&bucket)?;
        Ok(self.get_values(store, vec![key]).await?.pop().flatten().is_some())
    }

    async fn list_keys(
        &mut self,
        bucket: Resource<Bucket>,
        cursor: Option<String>,
    ) -> Result<store::KeyResponse, KeyValueError> {
        let cursor = cursor
            .map(|c| {
                c.parse::<u64>().map_err(|_| KeyValueError::Other(format!("cursor {c:?} is not one of ours")))
            })
            .transpose()?;
        let (keys, cursor) = self.list_page(&bucket, cursor).await?;
        Ok(store::KeyResponse { keys, cursor: cursor.map(|c| c.to_string()) })
    }

    async fn drop(&mut self, bucket: Resource<Bucket>) -> wasmtime::Result<()> {
        self.table.delete(bucket)?;
        Ok(())
    }
}

impl atomics::Host for KeyValueView<'_> {
    async fn increment(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
        delta: i64,
    ) -> Result<i64, KeyValueError> {
        let store = self.store_of(&bucket)?;
        self.shared().check_key(&key)?;
        self.shared().backend.increment(store, key, delta).await
    }

    async fn swap(
        &mut self,
        cas: Resource<Cas>,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), atomics::CasError>> {
        let cas = self.table.delete(cas)?;
        if let Err(error) = self.shared().check_value(&value) {
            return Ok(Err(atomics::CasError::StoreError(self.convert_error(error)?)));
        }
        let swapped = self
            .shared()
            .backend
            .compare_and_swap(cas.store.clone(), cas.key.clone(), cas.current.clone(), value)
            .await;
        Ok(match swapped {
            Ok(true) => Ok(()),
            Ok(false) => Err(atomics::CasError::CasFailed(self.table.push(cas)?)),
            Err(error) => Err(atomics::CasError::StoreError(self.convert_error(error)?)),
        })
    }
}

impl atomics::HostCas for KeyValueView<'_> {
    async fn new(&mut self, bucket: Resource<Bucket>, key: String) -> Result<Resource<Cas>, KeyValueError> {
        let store = self.store_of(&bucket)?;
        let current = self.get_values(store.clone(), vec![key.clone()]).await?.pop().flatten();
        Ok(self.table.push(Cas { store, key, current })?)
    }

    async fn current(&mut self, cas: Resource<Cas>) -> Result<Option<Vec<u8>>, KeyValueError> {
        Ok(self.table.get(&cas)?.current.clone())
    }

    async fn drop(&mut self, cas: Resource<Cas>) -> wasmtime::Result<()> {
        self.table.delete(cas)?;
        Ok(())
    }
}

impl batch::Host for KeyValueView<'_> {
    async fn get_many(
        &mut self,
        bucket: Resource<Bucket>,
        keys: Vec<String>,
    ) -> Result<Vec<(String, Option<Vec<u8>>)>, KeyValueError> {
        let store = self.store_of(&bucket)?;
        self.shared().check_batch(keys.len())?;
        let values = self.get_values(store, keys.clone()).await?;
        Ok(keys.into_iter().zip(values).collect())
    }

    async fn set_many(
        &mut self,
        bucket: Resource<Bucket>,
        key_values: Vec<(String, Vec<u8>)>,
    ) -> Result<(), KeyValueError> {
        let store = self.store_of(&bucket)?;
        self.shared().check_batch(key_values.len())?;
        self.set_values(store, key_values).await
    }

    async fn delete_many(
        &mut self,
        bucket: Resource<Bucket>,
        keys: Vec<String>,
    ) -> Result<(), KeyValueError> {
        let store = self.store_of(&bucket)?;
        if keys.len() > MAX_BATCH_KEYS {
            self.shared().check_batch(keys.len())?;
        }
        for key in &keys {
            self.shared().check_key(key)?;
        }
        self.shared().backend.delete_many(store, keys).await
    }
}

impl KeyValueView<'_> {
    fn convert_error(&mut self, error: KeyValueError) -> wasmtime::Result<store::Error> {
        <Self as store::Host>::convert_error(self, error)
    }
}
