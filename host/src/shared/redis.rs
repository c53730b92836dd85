//! One Redis connection per host, shared by everything that talks to Redis:
//! the `redis` crate's `ConnectionManager` (one multiplexed connection that
//! reconnects by itself, with backoff). Every call is bounded by the
//! configured timeout, so a slow or silent Redis costs a request at most
//! that; a failed call marks Redis down (logged once per outage, shown in
//! `/healthz`), the next good one marks it up again.

use redis::aio::ConnectionManager;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Why a Redis call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RedisError {
    /// No answer within the timeout.
    #[error("Redis did not answer within {0:?}")]
    TimedOut(Duration),
    /// An error from Redis or the connection to it.
    #[error("Redis error: {0}")]
    Failed(String),
}

/// The shared connection and its health.
pub struct SharedRedis {
    connection: ConnectionManager,
    timeout: Duration,
    down: AtomicBool,
    outages: AtomicU64,
    last_error: Mutex<Option<String>>,
    url_for_logs: String,
}

impl SharedRedis {
    /// A connection to `url`, made lazily (the host starts even while Redis
    /// is away), every call bounded by `timeout`.
    pub fn new(url: &str, timeout: Duration) -> anyhow::Result<Self> {
        let client = redis::Client::open(url)
            .map_err(|e| anyhow::anyhow!("server.redis_url {:?} is not a Redis URL: {e}", redact(url)))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(1));
        let connection = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| anyhow::anyhow!("cannot set up the Redis connection: {e}"))?;
        Ok(Self {
            connection,
            timeout,
            down: AtomicBool::new(false),
            outages: AtomicU64::new(0),
            last_error: Mutex::new(None),
            url_for_logs: redact(url),
        })
    }

    /// Runs `command` on the connection within the timeout, noting health.
    pub async fn run<T, F, Fut>(&self, command: F) -> Result<T, RedisError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let outcome = tokio::time::timeout(self.timeout, command(self.connection.clone())).await;
        let result = match outcome {
            Err(_) => Err(RedisError::TimedOut(self.timeout)),
            Ok(Err(error)) if is_connection_error(&error) => Err(RedisError::Failed(error.to_string())),
            // A reply error (a script's, a wrong type) is Redis answering.
            Ok(Err(error)) => {
                self.mark_up();
                return Err(RedisError::Failed(error.to_string()));
            }
            Ok(Ok(value)) => Ok(value),
        };
        match &result {
            Ok(_) => self.mark_up(),
            Err(error) => self.mark_down(error),
        }
        result
    }

    fn mark_down(&self, error: &RedisError) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(error.to_string());
        if !self.down.swap(true, Ordering::AcqRel) {
            self.outages.fetch_add(1, Ordering::Relaxed);
            tracing::error!(redis = %self.url_for_logs, %error, "Redis is unreachable: key-value calls fail, rate limits follow rate_limit_on_store_error (logged once per outage)");
        }
    }

    fn mark_up(&self) {
        if self.down.swap(false, Ordering::AcqRel) {
            tracing::info!(redis = %self.url_for_logs, "Redis is reachable again");
        }
    }

    /// Whether the last call failed to reach Redis.
    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Acquire)
    }

    /// The `/healthz` entry.
    pub fn health(&self) -> serde_json::Value {
        serde_json::json!({
            "url": self.url_for_logs,
            "status": if self.is_down() { "degraded" } else { "ok" },
            "outages": self.outages.load(Ordering::Relaxed),
            "last_error": *self.last_error.lock().unwrap_or_else(|e| e.into_inner()),
        })
    }
}

fn is_connection_error(error: &redis::RedisError) -> bool {
    error.is_io_error()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_timeout()
}

/// `url` without a password, for logs.
fn redact(url: &str) -> String {
    match url.split_once('@') {
        Some((credentials, rest)) => match credentials.rsplit_once(':') {
            Some((user, _password)) if user.contains("//") => format!("{user}:***@{rest}"),
            _ => format!("***@{rest}"),
        },
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_never_reach_the_log() {
        assert_eq!(super::redact("redis://:s3cret@10.0.0.1:6379/0"), "redis://:***@10.0.0.1:6379/0");
        assert_eq!(super::redact("redis://user:s3cret@h/0"), "redis://user:***@h/0");
        assert_eq!(super::redact("redis://127.0.0.1:6379/0"), "redis://127.0.0.1:6379/0");
    }
}
