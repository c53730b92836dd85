//! Spin's key-value interface, `fermyon:spin/key-value@2.0.0` (Spin 2 and 3
//! SDKs) and `spin:key-value/key-value@3.0.0` (SDK 7, WASI 0.3: async, with
//! the keys as a stream), on the same stores, permissions and bounds as
//! `wasi:keyvalue` (`capabilities/keyvalue`): a Spin app and a WASI app
//! that list the same store share it.

use crate::capabilities::keyvalue::{Bucket, KeyValueError, KeyValueView};
use wasmtime::component::{Accessor, FutureReader, HasData, Linker, Resource, StreamReader};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit/spin",
        world: "wharf:spin/key-value",
        imports: {
            "fermyon:spin/key-value": async | trappable,
            default: trappable,
        },
        with: {
            "fermyon:spin/key-value.store": crate::capabilities::keyvalue::Bucket,
            "spin:key-value/key-value.store": crate::capabilities::keyvalue::Bucket,
        },
        trappable_error_type: {
            "fermyon:spin/key-value.error" => crate::capabilities::keyvalue::KeyValueError,
            "spin:key-value/key-value.error" => crate::capabilities::keyvalue::KeyValueError,
        },
    });
}

use bindings::fermyon::spin::key_value as v2;
use bindings::spin::key_value::key_value as v3;

/// Keys `get-keys` hands out at most (the rest: an error on its future).
const MAX_KEYS: usize = 100_000;

struct HasKeyValue;

impl HasData for HasKeyValue {
    type Data<'a> = KeyValueView<'a>;
}

/// Adds `fermyon:spin/key-value@2.0.0` to `linker`.
pub fn add_v2_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> KeyValueView<'_>,
) -> wasmtime::Result<()> {
    v2::add_to_linker::<_, HasKeyValue>(linker, view)
}

/// Adds `spin:key-value/key-value@3.0.0` to `linker` (a WASI 0.3 engine's).
pub fn add_v3_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> KeyValueView<'_>,
) -> wasmtime::Result<()> {
    v3::add_to_linker::<_, HasKeyValue>(linker, view)
}

impl v2::Host for KeyValueView<'_> {
    fn convert_error(&mut self, error: KeyValueError) -> wasmtime::Result<v2::Error> {
        Ok(match error {
            KeyValueError::NoSuchStore => v2::Error::NoSuchStore,
            KeyValueError::AccessDenied => v2::Error::AccessDenied,
            KeyValueError::Other(message) => v2::Error::Other(message),
        })
    }
}

impl v2::HostStore for KeyValueView<'_> {
    async fn open(&mut self, label: String) -> Result<Resource<Bucket>, KeyValueError> {
        self.open_bucket(label)
    }

    async fn get(&mut self, store: Resource<Bucket>, key: String) -> Result<Option<Vec<u8>>, KeyValueError> {
        self.get_one(&store, key).await
    }

    async fn set(
        &mut self,
        store: Resource<Bucket>,
        key: String,
        value: Vec<u8>,
    ) -> Result<(), KeyValueError> {
        self.set_one(&store, key, value).await
    }

    async fn delete(&mut self, store: Resource<Bucket>, key: String) -> Result<(), KeyValueError> {
        self.delete_one(&store, key).await
    }

    async fn exists(&mut self, store: Resource<Bucket>, key: String) -> Result<bool, KeyValueError> {
        Ok(self.get_one(&store, key).await?.is_some())
    }

    async fn get_keys(&mut self, store: Resource<Bucket>) -> Result<Vec<String>, KeyValueError> {
        self.all_keys(&store, MAX_KEYS).await
    }

    async fn drop(&mut self, store: Resource<Bucket>) -> wasmtime::Result<()> {
        self.table.delete(store)?;
        Ok(())
    }
}

impl v3::Host for KeyValueView<'_> {
    fn convert_error(&mut self, error: KeyValueError) -> wasmtime::Result<v3::Error> {
        Ok(match error {
            KeyValueError::NoSuchStore => v3::Error::NoSuchStore,
            KeyValueError::AccessDenied => v3::Error::AccessDenied,
            KeyValueError::Other(message) => v3::Error::Other(message),
        })
    }
}

impl v3::HostStore for KeyValueView<'_> {
    fn drop(&mut self, store: Resource<Bucket>) -> wasmtime::Result<()> {
        self.table.delete(store)?;
        Ok(())
    }
}

impl<T> v3::HostStoreWithStore<T> for HasKeyValue {
    async fn open(accessor: &Accessor<T, Self>, label: String) -> Result<Resource<Bucket>, KeyValueError> {
        accessor.with(|mut access| access.get().open_bucket(label))
    }

    async fn get(
        accessor: &Accessor<T, Self>,
        store: Resource<Bucket>,
        key: String,
    ) -> Result<Option<Vec<u8>>, KeyValueError> {
        let get = accessor.with(|mut access| access.get().get_later(&store, key))?;
        Ok(get.await?.pop().flatten())
    }

    async fn set(
        accessor: &Accessor<T, Self>,
        store: Resource<Bucket>,
        key: String,
        value: Vec<u8>,
    ) -> Result<(), KeyValueError> {
        accessor.with(|mut access| access.get().set_later(&store, key, value))?.await
    }

    async fn delete(
        accessor: &Accessor<T, Self>,
        store: Resource<Bucket>,
        key: String,
    ) -> Result<(), KeyValueError> {
        accessor.with(|mut access| access.get().delete_later(&store, key))?.await
    }

    async fn exists(
        accessor: &Accessor<T, Self>,
        store: Resource<Bucket>,
        key: String,
    ) -> Result<bool, KeyValueError> {
        let get = accessor.with(|mut access| access.get().get_later(&store, key))?;
        Ok(get.await?.pop().flatten().is_some())
    }

    async fn get_keys(
        accessor: &Accessor<T, Self>,
        store: Resource<Bucket>,
    ) -> wasmtime::Result<(StreamReader<String>, FutureReader<Result<(), v3::Error>>)> {
        let listing = accessor.with(|mut access| access.get().keys_later(&store, MAX_KEYS));
        let (keys, outcome) = match listing {
            Ok(listing) => match listing.await {
                Ok(keys) => (keys, Ok(())),
                Err(error) => (Vec::new(), Err(error)),
            },
            Err(error) => (Vec::new(), Err(error)),
        };
        let outcome = match outcome {
            Ok(()) => Ok(()),
            Err(KeyValueError::NoSuchStore) => Err(v3::Error::NoSuchStore),
            Err(KeyValueError::AccessDenied) => Err(v3::Error::AccessDenied),
            Err(KeyValueError::Other(message)) => Err(v3::Error::Other(message)),
        };
        accessor.with(|mut access| {
            let stream = StreamReader::new(&mut access, keys)?;
            let future = FutureReader::new(&mut access, async move { wasmtime::Result::<_>::Ok(outcome) })?;
            Ok((stream, future))
        })
    }
}
