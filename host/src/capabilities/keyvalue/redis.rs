//! The shared backend: Redis, so any number of hosts see one key-value
//! state. A store is a key prefix with a Redis Cluster hash tag,
//! `wharf:kv:{STORE}:KEY`, so a store's keys (and its key count,
//! `wharf:kv:{STORE}`) live together. Every write is one server-side
//! script (atomic: a batch is applied whole, an increment is one
//! `INCRBY`), keeping the store's key count for `max_keys_per_store`;
//! reads are `MGET`; `list-keys` pages with `SCAN` and its cursor, inside a
//! script keyed by the store so that on a cluster it runs on the node that
//! holds the store.
//!
//! Every call is bounded by the Redis timeout; a guest gets the
//! interface's error when Redis is away, and a write it was told succeeded
//! has been applied by Redis.

use super::{Backend, BackendResult, KeyPage, KeyValueError, KeyValueLimits, ListStart};
use crate::shared::redis::{RedisError, SharedRedis};
use futures::future::BoxFuture;
use std::sync::{Arc, LazyLock};

/// Sets KEYS[2..] to ARGV[2..]; KEYS[1] is the store's key count, ARGV[1]
/// its limit (0: none). Returns the number of new keys, or -1 if the store
/// would pass its limit (nothing is written then).
static SET_MANY: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
        local new = 0
        for i = 2, #KEYS do
            if redis.call('EXISTS', KEYS[i]) == 0 then new = new + 1 end
        end
        local limit = tonumber(ARGV[1])
        local count = tonumber(redis.call('GET', KEYS[1]) or '0')
        if limit > 0 and new > 0 and count + new > limit then return -1 end
        for i = 2, #KEYS do redis.call('SET', KEYS[i], ARGV[i]) end
        if new > 0 then redis.call('INCRBY', KEYS[1], new) end
        return new
        ",
    )
});

/// Deletes KEYS[2..], keeping the count in KEYS[1].
static DELETE_MANY: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
        local removed = 0
        for i = 2, #KEYS do removed = removed + redis.call('DEL', KEYS[i]) end
        if removed > 0 then redis.call('DECRBY', KEYS[1], removed) end
        return removed
        ",
    )
});

/// `INCRBY KEYS[2] ARGV[2]`, keeping the count in KEYS[1] (limit ARGV[1]).
/// Returns the new value, or an error reply for a non-number or a full
/// store.
static INCREMENT: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
        local exists = redis.call('EXISTS', KEYS[2])
        local limit = tonumber(ARGV[1])
        if exists == 0 and limit > 0 and tonumber(redis.call('GET', KEYS[1]) or '0') >= limit then
            return redis.error_reply('STOREFULL')
        end
        local value = redis.call('INCRBY', KEYS[2], ARGV[2])
        if exists == 0 then redis.call('INCR', KEYS[1]) end
        return value
        ",
    )
});

/// Sets KEYS[2] to ARGV[2] if it holds ARGV[4] (ARGV[3] = "1") or is
/// absent (ARGV[3] = "0"), keeping the count in KEYS[1] (limit ARGV[1]).
/// Returns 1 when it set it, 0 when the value had changed.
static COMPARE_AND_SWAP: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
        local current = redis.call('GET', KEYS[2])
        if ARGV[3] == '1' then
            if current ~= ARGV[4] then return 0 end
        elseif current then
            return 0
        end
        local limit = tonumber(ARGV[1])
        if not current and limit > 0 and tonumber(redis.call('GET', KEYS[1]) or '0') >= limit then
            return redis.error_reply('STOREFULL')
        end
        redis.call('SET', KEYS[2], ARGV[2])
        if not current then redis.call('INCR', KEYS[1]) end
        return 1
        ",
    )
});

/// `SCAN ARGV[1] MATCH ARGV[2] COUNT ARGV[3]` on the node that holds
/// KEYS[1] (the store's count key): a cluster routes a script by its keys,
/// and a store's keys share its slot.
static LIST_KEYS: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new("return redis.call('SCAN', ARGV[1], 'MATCH', ARGV[2], 'COUNT', ARGV[3])")
});

/// Key-value stores in Redis.
pub struct RedisBackend {
    redis: Arc<SharedRedis>,
    limits: KeyValueLimits,
}

impl RedisBackend {
    /// Stores in the Redis `redis` talks to.
    pub fn new(redis: Arc<SharedRedis>, limits: KeyValueLimits) -> Self {
        Self { redis, limits }
    }
}

fn store_prefix(store: &str) -> String {
    format!("wharf:kv:{{{store}}}:")
}

fn count_key(store: &str) -> String {
    format!("wharf:kv:{{{store}}}")
}

fn full_key(store: &str, key: &str) -> String {
    format!("{}{key}", store_prefix(store))
}

/// A glob pattern matching the keys of `store` (glob characters in the
/// store's name escaped).
fn store_pattern(store: &str) -> String {
    let mut pattern = String::with_capacity(store.len() + 16);
    pattern.push_str("wharf:kv:{");
    for c in store.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push_str("}:*");
    pattern
}

fn unavailable(error: RedisError) -> KeyValueError {
    match error {
        RedisError::TimedOut(limit) => {
            KeyValueError::Other(format!("key-value store did not answer within {limit:?}"))
        }
        RedisError::Failed(message)
            if message.contains("not an integer") || message.contains("out of range") =>
        {
            KeyValueError::Other("value is not a decimal number below 2^63; cannot increment".into())
        }
        RedisError::Failed(_) => KeyValueError::Other("key-value store unavailable".into()),
    }
}

impl Backend for RedisBackend {
    fn get_many(
        &self,
        store: String,
        keys: Vec<String>,
    ) -> BoxFuture<'static, BackendResult<Vec<Option<Vec<u8>>>>> {
        let redis = self.redis.clone();
        Box::pin(async move {
            if keys.is_empty() {
                return Ok(Vec::new());
            }
            let full: Vec<String> = keys.iter().map(|k| full_key(&store, k)).collect();
            redis
                .run(|mut connection| async move {
                    redis::cmd("MGET").arg(&full).query_async::<Vec<Option<Vec<u8>>>>(&mut connection).await
                })
                .await
                .map_err(unavailable)
        })
    }

    fn set_many(
        &self,
        store: String,
        entries: Vec<(String, Vec<u8>)>,
    ) -> BoxFuture<'static, BackendResult<()>> {
        let (redis, limit) = (self.redis.clone(), self.limits.max_keys_per_store);
        Box::pin(async move {
            if entries.is_empty() {
                return Ok(());
            }
            let new = redis
                .run(|mut connection| async move {
                    let mut invocation = SET_MANY.key(count_key(&store));
                    invocation.arg(limit);
                    for (key, value) in &entries {
                        invocation.key(full_key(&store, key)).arg(value.as_slice());
                    }
                    invocation.invoke_async::<i64>(&mut connection).await
                })
                .await
                .map_err(unavailable)?;
            if new < 0 {
                return Err(super::store_full(limit));
            }
            Ok(())
        })
    }

    fn delete_many(&self, store: String, keys: Vec<String>) -> BoxFuture<'static, BackendResult<()>> {
        let redis = self.redis.clone();
        Box::pin(async move {
            if keys.is_empty() {
                return Ok(());
            }
            redis
                .run(|mut connection| async move {
                    let mut invocation = DELETE_MANY.key(count_key(&store));
                    for key in &keys {
                        invocation.key(full_key(&store, key));
                    }
                    invocation.invoke_async::<i64>(&mut connection).await
                })
                .await
                .map(drop)
                .map_err(unavailable)
        })
    }

    fn list_keys(
        &self,
        store: String,
        start: ListStart,
        limit: usize,
    ) -> BoxFuture<'static, BackendResult<KeyPage>> {
        let redis = self.redis.clone();
        Box::pin(async move {
            let cursor = match start {
                ListStart::Scan(cursor) => cursor,
                _ => 0,
            };
            let pattern = store_pattern(&store);
            let count = count_key(&store);
            let (next, keys): (u64, Vec<String>) = redis
                .run(|mut connection| async move {
                    LIST_KEYS
                        .key(&count)
                        .arg(cursor)
                        .arg(&pattern)
                        .arg(limit)
                        .invoke_async(&mut connection)
                        .await
                })
                .await
                .map_err(unavailable)?;
            let prefix = store_prefix(&store);
            let keys = keys.into_iter().filter_map(|k| k.strip_prefix(&prefix).map(str::to_string)).collect();
            Ok(KeyPage { keys, next: (next != 0).then_some(ListStart::Scan(next)) })
        })
    }

    fn increment(&self, store: String, key: String, delta: i64) -> BoxFuture<'static, BackendResult<i64>> {
        let (redis, limit) = (self.redis.clone(), self.limits.max_keys_per_store);
        Box::pin(async move {
            redis
                .run(|mut connection| async move {
                    INCREMENT
                        .key(count_key(&store))
                        .key(full_key(&store, &key))
                        .arg(limit)
                        .arg(delta)
                        .invoke_async::<i64>(&mut connection)
                        .await
                })
                .await
                .map_err(|error| match &error {
                    RedisError::Failed(message) if message.contains("STOREFULL") => super::store_full(limit),
                    _ => unavailable(error),
                })
        })
    }

    fn compare_and_swap(
        &self,
        store: String,
        key: String,
        expected: Option<Vec<u8>>,
        value: Vec<u8>,
    ) -> BoxFuture<'static, BackendResult<bool>> {
        let (redis, limit) = (self.redis.clone(), self.limits.max_keys_per_store);
        Box::pin(async move {
            let swapped = redis
                .run(|mut connection| async move {
                    let mut call = COMPARE_AND_SWAP.key(count_key(&store));
                    call.key(full_key(&store, &key)).arg(limit).arg(value);
                    match expected {
                        Some(expected) => call.arg("1").arg(expected),
                        None => call.arg("0").arg(""),
                    };
                    call.invoke_async::<i64>(&mut connection).await
                })
                .await
                .map_err(|error| match &error {
                    RedisError::Failed(message) if message.contains("STOREFULL") => super::store_full(limit),
                    _ => unavailable(error),
                })?;
            Ok(swapped == 1)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_are_hash_tagged_prefixes_with_their_glob_characters_escaped() {
        assert_eq!(full_key("default", "k"), "wharf:kv:{default}:k");
        assert_eq!(count_key("default"), "wharf:kv:{default}");
        assert_eq!(store_pattern("a*b?[c]"), "wharf:kv:{a\\*b\\?\\[c\\]}:*");
    }
}
