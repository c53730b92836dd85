//! One Redis connection per host, shared by everything that talks to Redis:
//! the `redis` crate's `ConnectionManager` (one multiplexed connection that
//! reconnects by itself, with backoff), or, when `redis_url` lists several
//! nodes, its cluster connection (one multiplexed connection per node,
//! following the slot map through `MOVED`, `ASK` and failovers). Every call
//! is bounded by the configured timeout, so a slow or silent Redis costs a
//! request at most that; a failed call marks Redis down (logged once per
//! outage, shown in `/healthz`), the next good one marks it up again.
//!
//! Every key Wharf writes carries a hash tag, so each script and
//! multi-key call touches one slot: the same commands work on one server
//! and on a cluster.

use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// A connection to one Redis server or to a cluster; cheap to clone.
#[derive(Clone)]
pub enum Connection {
    /// One server.
    Single(ConnectionManager),
    /// A Redis Cluster.
    Cluster(ClusterConnection),
}

impl redis::aio::ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Self::Single(connection) => connection.req_packed_command(cmd),
            Self::Cluster(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Self::Single(connection) => connection.req_packed_commands(pipeline, offset, count),
            Self::Cluster(connection) => connection.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(connection) => connection.get_db(),
            Self::Cluster(connection) => connection.get_db(),
        }
    }
}

/// How the host reaches Redis.
enum Target {
    Single(ConnectionManager),
    /// Connected at the first call (and again after a failed connect), so
    /// the host starts while the cluster is away.
    Cluster(Box<ClusterTarget>),
}

/// A cluster's client and its connection, once made.
struct ClusterTarget {
    client: redis::cluster::ClusterClient,
    connection: tokio::sync::OnceCell<ClusterConnection>,
}

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
    target: Target,
    timeout: Duration,
    down: AtomicBool,
    outages: AtomicU64,
    last_error: Mutex<Option<String>>,
    url_for_logs: String,
}

impl SharedRedis {
    /// A connection to `url`, made lazily (the host starts even while Redis
    /// is away), every call bounded by `timeout`.
    /// `url` may list several nodes, separated by commas: they are the seed
    /// nodes of a Redis Cluster.
    pub fn new(url: &str, timeout: Duration) -> anyhow::Result<Self> {
        let nodes: Vec<&str> = url.split(',').map(str::trim).filter(|n| !n.is_empty()).collect();
        let target = if nodes.len() > 1 {
            let client = redis::cluster::ClusterClient::builder(nodes)
                .connection_timeout(timeout)
                .response_timeout(timeout)
                .retries(3)
                .build()
                .map_err(|e| {
                    anyhow::anyhow!("server.redis_url {:?} does not name a cluster: {e}", redact(url))
                })?;
            Target::Cluster(Box::new(ClusterTarget { client, connection: tokio::sync::OnceCell::new() }))
        } else {
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
            Target::Single(connection)
        };
        Ok(Self {
            target,
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
        F: FnOnce(Connection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let call = async {
            let connection = self.connection().await?;
            command(connection).await
        };
        let outcome = tokio::time::timeout(self.timeout, call).await;
        let result = match outcome {
            // The client's own response timeout is ours too; when the task
            // is polled late both have passed and the inner one answers.
            Err(_) => Err(RedisError::TimedOut(self.timeout)),
            Ok(Err(error)) if error.is_timeout() => Err(RedisError::TimedOut(self.timeout)),
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

    /// The connection (for a cluster, made now if there is none yet).
    async fn connection(&self) -> redis::RedisResult<Connection> {
        match &self.target {
            Target::Single(connection) => Ok(Connection::Single(connection.clone())),
            Target::Cluster(cluster) => {
                let connection =
                    cluster.connection.get_or_try_init(|| cluster.client.get_async_connection()).await?;
                Ok(Connection::Cluster(connection.clone()))
            }
        }
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
            "cluster": matches!(self.target, Target::Cluster(_)),
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

/// `url` (one node or several) without passwords, for logs.
fn redact(url: &str) -> String {
    url.split(',').map(redact_one).collect::<Vec<_>>().join(",")
}

fn redact_one(url: &str) -> String {
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
