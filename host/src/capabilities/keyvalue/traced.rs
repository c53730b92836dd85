//! A backend that starts a span for each call, under the guest's (the
//! one current on the thread when the call is made), when tracing is on.

use super::{Backend, BackendResult, KeyPage, ListStart};
use crate::telemetry::trace::{self, Tracing};
use futures::future::BoxFuture;
use opentelemetry::KeyValue;
use std::sync::Arc;

/// `inner`, traced.
pub struct Traced {
    pub(super) inner: Arc<dyn Backend>,
    pub(super) tracing: Arc<Tracing>,
    /// `db.system.name`: which backend it is.
    pub(super) system: &'static str,
}

impl Traced {
    /// Runs `call` (operation `operation` on `store`) inside its span.
    fn traced<T: Send + 'static>(
        &self,
        operation: &'static str,
        store: &str,
        call: BoxFuture<'static, BackendResult<T>>,
    ) -> BoxFuture<'static, BackendResult<T>> {
        let attributes = vec![
            KeyValue::new("db.system.name", self.system),
            KeyValue::new("db.operation.name", operation),
            KeyValue::new("db.namespace", store.to_string()),
        ];
        let Some(span) = self.tracing.span_in_current("wharf.kv", attributes) else { return call };
        Box::pin(async move {
            let result = call.await;
            trace::end(&span, result.as_ref().map(drop).map_err(|e| e.to_string().into()));
            result
        })
    }
}

impl Backend for Traced {
    fn get_many(
        &self,
        store: String,
        keys: Vec<String>,
    ) -> BoxFuture<'static, BackendResult<Vec<Option<Vec<u8>>>>> {
        let call = self.inner.get_many(store.clone(), keys);
        self.traced("get", &store, call)
    }

    fn set_many(
        &self,
        store: String,
        entries: Vec<(String, Vec<u8>)>,
    ) -> BoxFuture<'static, BackendResult<()>> {
        let call = self.inner.set_many(store.clone(), entries);
        self.traced("set", &store, call)
    }

    fn delete_many(&self, store: String, keys: Vec<String>) -> BoxFuture<'static, BackendResult<()>> {
        let call = self.inner.delete_many(store.clone(), keys);
        self.traced("delete", &store, call)
    }

    fn list_keys(
        &self,
        store: String,
        start: ListStart,
        limit: usize,
    ) -> BoxFuture<'static, BackendResult<KeyPage>> {
        let call = self.inner.list_keys(store.clone(), start, limit);
        self.traced("list_keys", &store, call)
    }

    fn increment(&self, store: String, key: String, delta: i64) -> BoxFuture<'static, BackendResult<i64>> {
        let call = self.inner.increment(store.clone(), key, delta);
        self.traced("increment", &store, call)
    }

    fn compare_and_swap(
        &self,
        store: String,
        key: String,
        expected: Option<Vec<u8>>,
        value: Vec<u8>,
    ) -> BoxFuture<'static, BackendResult<bool>> {
        let call = self.inner.compare_and_swap(store.clone(), key, expected, value);
        self.traced("compare_and_swap", &store, call)
    }
}
