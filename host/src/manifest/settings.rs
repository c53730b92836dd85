//! Server-wide settings: the `[server]` and `[outbound]` tables, shared by
//! both manifest formats (a `spin.toml` app takes them from a `wharf.toml`
//! beside it or its `[wharf]` section), their raw serde types and their
//! validation.

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

const DEFAULT_LISTEN: &str = "127.0.0.1:3000";
const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:3001";
/// Requests per window and burst at most: past it a limit limits nothing,
/// and the shared buckets' arithmetic stays exact.
const MAX_RATE: u32 = 100_000_000;
/// Largest request head: HTTP/2's header-list limit is a u32, and nothing
/// legitimate comes near.
const MAX_HEADER_BYTES: usize = 16 << 20;

/// The `[server]` table.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// Address the public listener binds. Default `127.0.0.1:3000`.
    pub listen: SocketAddr,
    /// Directory for persistent state (the key-value database, caches).
    /// Default `.wharf` beside the manifest.
    pub data_dir: PathBuf,
    /// Key-value backend: `redb` (default, persistent in `data_dir`) or
    /// `memory`.
    pub key_value: KeyValueBackendKind,
    /// Requests served at once across the whole server; further requests get
    /// 503 with `Retry-After: 1` at once. Also sizes the instance pool.
    /// Default 1000.
    pub max_concurrent_requests: usize,
    /// Largest linear memory one instance may have, in bytes. Default 64 MiB.
    pub max_instance_memory: u64,
    /// Runtime threads, each with its own listener socket (`SO_REUSEPORT`).
    /// Default: one per available core.
    pub threads: usize,
    /// How long a graceful shutdown waits for requests in flight. Default 30 s.
    pub shutdown_timeout: Duration,
    /// How long after SIGTERM the host keeps accepting (readiness already
    /// 503) before it stops and drains, so load balancers notice first.
    /// Default 0.
    pub drain_delay: Duration,
    /// Whether `/readyz` says 503 while Redis is away (for an app that uses
    /// it). Default true.
    pub readiness_requires_redis: bool,
    /// Address of the admin listener (`/healthz`, `/metrics`, reload), or
    /// `None` for no admin listener. Default `127.0.0.1:3001`.
    pub admin_listen: Option<SocketAddr>,
    /// Bearer token the admin listener requires (required when it listens
    /// on an address that is not loopback). Default: none.
    pub admin_auth: Option<AuthSpec>,
    /// Bounds on connections: counts, deadlines, header size.
    pub connections: ConnectionSettings,
    /// Who a request is from, and what one client may hold.
    pub clients: ClientSettings,
    /// Largest request body, in bytes, unless a route says otherwise; larger
    /// gets 413. Default 10 MiB.
    pub max_request_body_bytes: u64,
    /// How request bodies are read from clients before admission.
    pub request_body: RequestBodySettings,
    /// Inbound TLS (HTTPS, with HTTP/2 through ALPN), if configured.
    pub tls: Option<TlsFiles>,
    /// The global token bucket, if any.
    pub rate_limit: Option<RateLimitSpec>,
    /// The per-client-address limiter, if any.
    pub client_rate_limit: Option<RateLimitSpec>,
    /// The outbound HTTP client's settings (`[outbound]`).
    pub outbound: OutboundSettings,
    /// Where traces go (`[tracing]`); off by default.
    pub tracing: super::traces::TraceSettings,
    /// How many `http://self` requests deep a chain may go; deeper ones get
    /// 508 Loop Detected. Default 4.
    pub max_self_hops: u32,
    /// Bounds on what guests put in `wasi:keyvalue`.
    pub key_value_limits: KeyValueLimits,
    /// Bytes of stdout and stderr one request's instance may write; the
    /// rest is dropped. Default 64 KiB.
    pub max_guest_output_bytes: usize,
    /// How long one SQLite statement may run before it is interrupted.
    /// Default 5 s.
    pub max_sqlite_query: Duration,
    /// Bytes of rows one SQLite statement may return. Default 16 MiB.
    pub max_sqlite_result_bytes: usize,
    /// The Redis the Redis key-value backend and shared rate limits use
    /// (`WHARF_REDIS_URL` overrides). Default `redis://127.0.0.1:6379/0`.
    pub redis_url: String,
    /// How long any one Redis call may take. Default 1 s.
    pub redis_timeout: Duration,
    /// Where rate-limit buckets live. Default `local`.
    pub rate_limit_store: RateLimitStore,
    /// What shared rate limits do while Redis is away. Default `local`.
    pub rate_limit_on_store_error: OnStoreError,
    /// Admission by queueing delay, when set: `(target, interval)`. Default
    /// off (admission by count alone).
    pub queue_delay: Option<(Duration, Duration)>,
}

impl ServerSettings {
    /// Whether anything uses Redis.
    pub fn uses_redis(&self) -> bool {
        self.key_value == KeyValueBackendKind::Redis || self.rate_limit_store == RateLimitStore::Redis
    }
}

/// Bounds on inbound connections (all in `[server]`).
#[derive(Debug, Clone)]
pub struct ConnectionSettings {
    /// Open connections at most; further ones are closed at once. Default
    /// 10,000: an idle connection is cheap, the concurrency limit is what
    /// protects the instances.
    pub max_connections: usize,
    /// Open connections from one peer address at most (0: no cap). Default
    /// half of `max_connections`.
    pub max_connections_per_client: usize,
    /// From accept, the TLS handshake, protocol detection and the first
    /// request head must be done within this; later, a request head must
    /// arrive within this of its first byte. Default 10 s.
    pub header_read_timeout: Duration,
    /// An idle connection (no request in flight) is closed after this; an
    /// HTTP/2 one gets GOAWAY. Default 60 s.
    pub keepalive_timeout: Duration,
    /// A response the client takes no bytes of for this long has its
    /// connection closed and its guest aborted. Default 60 s.
    pub send_timeout: Duration,
    /// HTTP/2: a PING after this much silence from the client... Default 30 s.
    pub http2_ping_interval: Duration,
    /// ...and the connection is closed if the PING is not answered within
    /// this. Default 20 s.
    pub http2_ping_timeout: Duration,
    /// HTTP/2 streams one connection may have open at once. Default 100.
    pub http2_max_concurrent_streams: u32,
    /// Largest request head (request line and headers), in bytes; larger
    /// gets 431. Default 32 KiB.
    pub max_header_bytes: usize,
}

/// How request bodies are taken from clients (all in `[server]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestBodySettings {
    /// A body up to this size is read in full before its request takes an
    /// admission slot, a worker or an instance; a larger one streams to the
    /// guest after this much (routes may override; 0: every body streams).
    /// Default 1 MiB.
    pub buffer_bytes: u64,
    /// Bytes of read-ahead bodies held in memory across the server; past
    /// it they go to unlinked files in `data_dir/tmp`. Default 64 MiB.
    pub max_memory_bytes: u64,
    /// Longest wait for the next bytes of a body, and the allowance before
    /// `min_rate` applies; past it, 408. Default 20 s.
    pub timeout: Duration,
    /// Bytes a second a body must average past `timeout` (0: no minimum).
    /// Default 1024.
    pub min_rate: u64,
}

/// Client identity and per-client shares (all in `[server]`).
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// Proxies (CIDRs) whose forwarded header is believed. Default: none.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// The header a trusted proxy puts the client address in. Default
    /// `x-forwarded-for`.
    pub trusted_proxy_header: http::HeaderName,
    /// Requests in flight from one client address at most (0: no cap);
    /// more get 503. Default half of `max_concurrent_requests`.
    pub max_requests_in_flight_per_client: usize,
}

/// The `[outbound]` table: the shared client behind
/// `wasi:http/outgoing-handler`.
#[derive(Debug, Clone)]
pub struct OutboundSettings {
    /// Pool connections (default true). `false` sends each request on a new
    /// connection with wasmtime-wasi-http's default sender (for comparison).
    pub pool: bool,
    /// Idle connections kept per host. Default 10.
    pub max_idle_per_host: usize,
    /// An idle connection is closed after this. Default 90 s.
    pub idle_timeout: Duration,
    /// Requests in flight per host at most; more wait, for at most the
    /// connect timeout. Default 100.
    pub max_connections_per_host: usize,
    /// TCP connect timeout. Default 5 s.
    pub connect_timeout: Duration,
    /// TLS handshake timeout. Default 5 s.
    pub tls_handshake_timeout: Duration,
    /// Whole exchange, response body included. Default 10 s.
    pub total_timeout: Duration,
    /// PEM file of extra CA certificates to trust beside the system roots.
    pub extra_ca_file: Option<PathBuf>,
    /// Consecutive failures (transport errors, timeouts, 5xx) that open a
    /// host's circuit breaker (0: no breaker). Default 5.
    pub breaker_failures: u32,
    /// How long an open breaker fails calls at once before one probe may
    /// try the host again. Default 10 s.
    pub breaker_open: Duration,
}

/// Certificate chain and private key, PEM files.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// Private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// A token bucket: `requests` per `window`, bursting up to `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitSpec {
    /// Requests allowed per window on average.
    pub requests: u32,
    /// The window. Default 1 s.
    pub window: Duration,
    /// Requests allowed at once after a quiet spell. Default `requests`.
    pub burst: u32,
}

/// Which key-value backend serves `wasi:keyvalue`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyValueBackendKind {
    /// An embedded `redb` database in the data directory: persistent.
    Redb,
    /// A process-local map: gone when the process exits.
    Memory,
    /// Redis at `redis_url`: shared by every host that points there.
    Redis,
}

/// Where rate-limit buckets live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RateLimitStore {
    /// In this host (the default).
    Local,
    /// In Redis at `redis_url`, shared by every host that points there.
    Redis,
}

/// What shared rate limits do while Redis cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnStoreError {
    /// This host's own buckets take over (the default).
    Local,
    /// Every request is refused (429).
    Deny,
    /// Every request is let through.
    Allow,
}

/// Where a route's bearer token comes from (never the manifest itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthSpec {
    /// The token is the value of this environment variable.
    BearerTokenEnv(String),
    /// The token is the content of this file (trimmed).
    BearerTokenFile(PathBuf),
}

/// The bounds on what guests put in key-value stores (the `[server]`
/// settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyValueLimits {
    /// Longest key, in bytes. Default 1 KiB.
    pub max_key_bytes: usize,
    /// Largest value, in bytes. Default 1 MiB.
    pub max_value_bytes: usize,
    /// Keys one store may hold (0: no bound). Default 0.
    pub max_keys_per_store: u64,
}

impl Default for KeyValueLimits {
    fn default() -> Self {
        Self { max_key_bytes: 1024, max_value_bytes: 1 << 20, max_keys_per_store: 0 }
    }
}

impl ServerSettings {
    /// Validates the `[server]` table `raw`, relative to `dir`.
    pub(super) fn from_raw(raw: RawServer, dir: &Path) -> Result<Self> {
        let listen = raw.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
        let listen = listen.parse().map_err(|_| {
            anyhow::anyhow!("server.listen: {listen:?} is not an address like \"127.0.0.1:3000\"")
        })?;
        let max_concurrent_requests = raw.max_concurrent_requests.unwrap_or(1000);
        if max_concurrent_requests == 0 {
            bail!("server.max_concurrent_requests must be at least 1");
        }
        let memory_mb = raw.max_instance_memory_mb.unwrap_or(64);
        if !(1..=4096).contains(&memory_mb) {
            bail!("server.max_instance_memory_mb must be between 1 and 4096, not {memory_mb}");
        }
        let threads = match raw.threads {
            Some(0) => bail!("server.threads must be at least 1"),
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        let admin_listen: Option<SocketAddr> = match raw.admin_listen.as_deref() {
            None => Some(DEFAULT_ADMIN_LISTEN.parse().expect("valid default")),
            Some("off") => None,
            Some(addr) => Some(addr.parse().map_err(|_| {
                anyhow::anyhow!(
                    "server.admin_listen: {addr:?} is not an address like \"127.0.0.1:3001\" (or \"off\")"
                )
            })?),
        };
        let max_header_bytes = raw.max_header_bytes.unwrap_or(32 << 10);
        if !(8192..=MAX_HEADER_BYTES).contains(&max_header_bytes) {
            bail!(
                "server.max_header_bytes must be between 8192 and {MAX_HEADER_BYTES}, not {max_header_bytes}"
            );
        }
        let secs = |value, default, field: &str| {
            parse_secs(value, Duration::from_secs(default), &format!("server.{field}"))
        };
        let max_connections = match raw.max_connections {
            Some(0) => bail!(
                "server.max_connections must be at least 1 (unlike the per-client caps, it has no \"no cap\" value)"
            ),
            Some(n) => n,
            None => 10_000,
        };
        let connections = ConnectionSettings {
            max_connections,
            max_connections_per_client: raw.max_connections_per_client.unwrap_or(max_connections.div_ceil(2)),
            header_read_timeout: secs(raw.header_read_timeout_secs, 10, "header_read_timeout_secs")?,
            keepalive_timeout: secs(raw.keepalive_timeout_secs, 60, "keepalive_timeout_secs")?,
            send_timeout: secs(raw.send_timeout_secs, 60, "send_timeout_secs")?,
            http2_ping_interval: secs(raw.http2_ping_interval_secs, 30, "http2_ping_interval_secs")?,
            http2_ping_timeout: secs(raw.http2_ping_timeout_secs, 20, "http2_ping_timeout_secs")?,
            http2_max_concurrent_streams: match raw.http2_max_concurrent_streams {
                Some(0) => bail!("server.http2_max_concurrent_streams must be at least 1"),
                Some(n) => n,
                None => 100,
            },
            max_header_bytes,
        };
        let clients = ClientSettings::from_raw(
            raw.trusted_proxies,
            raw.trusted_proxy_header,
            raw.max_requests_in_flight_per_client.unwrap_or(max_concurrent_requests.div_ceil(2)),
        )?;
        let admin_auth = raw.admin_auth.map(|a| a.validate(dir)).transpose().context("server.admin_auth")?;
        if let Some(admin) = admin_listen
            && !admin.ip().is_loopback()
            && admin_auth.is_none()
        {
            bail!(
                "server.admin_listen {admin} is not a loopback address: set server.admin_auth \
                 (bearer_token_env or bearer_token_file) so that only operators can reload the app"
            );
        }
        Ok(Self {
            admin_listen,
            admin_auth,
            connections,
            clients,
            max_request_body_bytes: raw.max_request_body_bytes.unwrap_or(10 << 20),
            request_body: RequestBodySettings {
                buffer_bytes: raw.request_body_buffer_bytes.unwrap_or(1 << 20),
                max_memory_bytes: raw.max_request_body_memory_bytes.unwrap_or(64 << 20),
                timeout: secs(raw.request_body_timeout_secs, 20, "request_body_timeout_secs")?,
                min_rate: raw.request_body_min_rate.unwrap_or(1024),
            },
            tls: raw.tls.map(|t| TlsFiles { cert: dir.join(t.cert), key: dir.join(t.key) }),
            rate_limit: raw.rate_limit.map(|r| r.validate("server.rate_limit")).transpose()?,
            client_rate_limit: raw
                .client_rate_limit
                .map(|r| r.validate("server.client_rate_limit"))
                .transpose()?,
            outbound: OutboundSettings::from_raw(RawOutbound::default(), dir)?,
            tracing: Default::default(),
            max_self_hops: raw.max_self_hops.unwrap_or(4),
            key_value_limits: {
                let defaults = KeyValueLimits::default();
                let limits = KeyValueLimits {
                    max_key_bytes: raw.max_key_bytes.unwrap_or(defaults.max_key_bytes),
                    max_value_bytes: raw.max_value_bytes.unwrap_or(defaults.max_value_bytes),
                    max_keys_per_store: raw.max_keys_per_store.unwrap_or(defaults.max_keys_per_store),
                };
                if limits.max_key_bytes == 0 || limits.max_value_bytes == 0 {
                    bail!("server.max_key_bytes and server.max_value_bytes must be at least 1");
                }
                limits
            },
            max_guest_output_bytes: raw.max_guest_output_bytes.unwrap_or(64 << 10),
            max_sqlite_query: match raw.max_sqlite_query_ms {
                Some(0) => bail!("server.max_sqlite_query_ms must be at least 1"),
                Some(ms) => Duration::from_millis(ms),
                None => Duration::from_secs(5),
            },
            max_sqlite_result_bytes: raw.max_sqlite_result_bytes.unwrap_or(16 << 20),
            redis_url: std::env::var("WHARF_REDIS_URL")
                .ok()
                .or(raw.redis_url)
                .unwrap_or_else(|| "redis://127.0.0.1:6379/0".into()),
            redis_timeout: match raw.redis_timeout_ms {
                Some(0) => bail!("server.redis_timeout_ms must be at least 1"),
                Some(ms) => Duration::from_millis(ms),
                None => Duration::from_secs(1),
            },
            rate_limit_store: raw.rate_limit_store.unwrap_or(RateLimitStore::Local),
            rate_limit_on_store_error: raw.rate_limit_on_store_error.unwrap_or(OnStoreError::Local),
            queue_delay: match raw.queue_delay {
                None => None,
                Some(q) => {
                    let target = q.target_ms.unwrap_or(10);
                    let interval = q.interval_ms.unwrap_or(100);
                    if !(1..=60_000).contains(&target) || !(1..=60_000).contains(&interval) {
                        bail!("server.queue_delay: target_ms and interval_ms must be between 1 and 60000");
                    }
                    Some((Duration::from_millis(target), Duration::from_millis(interval)))
                }
            },
            listen,
            data_dir: dir.join(raw.data_dir.unwrap_or_else(|| ".wharf".into())),
            key_value: raw.key_value.unwrap_or(KeyValueBackendKind::Redb),
            max_concurrent_requests,
            max_instance_memory: memory_mb << 20,
            threads,
            shutdown_timeout: parse_secs(
                raw.shutdown_timeout_secs,
                Duration::from_secs(30),
                "server.shutdown_timeout_secs",
            )?,
            drain_delay: match raw.drain_delay_secs {
                None => Duration::ZERO,
                Some(secs) if secs.is_finite() && (0.0..=3600.0).contains(&secs) => {
                    Duration::from_secs_f64(secs)
                }
                Some(secs) => {
                    bail!("server.drain_delay_secs must be a number of seconds from 0 to 3600, not {secs}")
                }
            },
            readiness_requires_redis: raw.readiness_requires_redis.unwrap_or(true),
        })
    }
}

impl ClientSettings {
    fn from_raw(
        trusted_proxies: Option<Vec<String>>,
        header: Option<String>,
        max_requests_in_flight_per_client: usize,
    ) -> Result<Self> {
        let trusted_proxies: Vec<ipnet::IpNet> = trusted_proxies
            .unwrap_or_default()
            .iter()
            .map(|entry| {
                entry
                    .parse::<ipnet::IpNet>()
                    .or_else(|_| entry.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| {
                        anyhow::anyhow!(
                            "server.trusted_proxies: {entry:?} is not an address or a CIDR like \"10.0.0.0/8\""
                        )
                    })
            })
            .collect::<Result<_>>()?;
        if header.is_some() && trusted_proxies.is_empty() {
            bail!(
                "server.trusted_proxy_header needs server.trusted_proxies: the addresses (CIDRs) of the \
                 proxies allowed to set it; from anyone else it is ignored"
            );
        }
        let header = header.as_deref().unwrap_or("x-forwarded-for");
        let trusted_proxy_header = http::HeaderName::try_from(header)
            .map_err(|_| anyhow::anyhow!("server.trusted_proxy_header: {header:?} is not a header name"))?;
        Ok(Self { trusted_proxies, trusted_proxy_header, max_requests_in_flight_per_client })
    }
}

impl OutboundSettings {
    /// Validates the `[outbound]` table `raw`, relative to `dir`.
    pub(super) fn from_raw(raw: RawOutbound, dir: &Path) -> Result<Self> {
        let secs = |value, default, field: &str| {
            parse_secs(value, Duration::from_secs(default), &format!("outbound.{field}"))
        };
        let max_connections_per_host = raw.max_connections_per_host.unwrap_or(100);
        if max_connections_per_host == 0 {
            bail!("outbound.max_connections_per_host must be at least 1");
        }
        Ok(Self {
            pool: raw.pool.unwrap_or(true),
            max_idle_per_host: raw.max_idle_per_host.unwrap_or(10),
            idle_timeout: secs(raw.idle_timeout_secs, 90, "idle_timeout_secs")?,
            max_connections_per_host,
            connect_timeout: secs(raw.connect_timeout_secs, 5, "connect_timeout_secs")?,
            tls_handshake_timeout: secs(raw.tls_handshake_timeout_secs, 5, "tls_handshake_timeout_secs")?,
            total_timeout: secs(raw.total_timeout_secs, 10, "total_timeout_secs")?,
            extra_ca_file: raw.extra_ca_file.map(|f| dir.join(f)),
            breaker_failures: raw.breaker_failures.unwrap_or(5),
            breaker_open: secs(raw.breaker_open_secs, 10, "breaker_open_secs")?,
        })
    }
}

impl RawRateLimit {
    pub(super) fn validate(self, field: &str) -> Result<RateLimitSpec> {
        if !(1..=MAX_RATE).contains(&self.requests) {
            bail!("{field}.requests must be between 1 and {MAX_RATE}, not {}", self.requests);
        }
        let burst = self.burst.unwrap_or(self.requests);
        if !(1..=MAX_RATE).contains(&burst) {
            bail!("{field}.burst must be between 1 and {MAX_RATE}, not {burst}");
        }
        let window = parse_secs(self.window_secs, Duration::from_secs(1), &format!("{field}.window_secs"))?;
        Ok(RateLimitSpec { requests: self.requests, window, burst })
    }
}

impl RawAuth {
    pub(super) fn validate(self, dir: &Path) -> Result<AuthSpec> {
        match (self.bearer_token_env, self.bearer_token_file) {
            (Some(var), None) if !var.is_empty() => Ok(AuthSpec::BearerTokenEnv(var)),
            (None, Some(file)) => Ok(AuthSpec::BearerTokenFile(dir.join(file))),
            _ => bail!("auth needs exactly one of bearer_token_env or bearer_token_file"),
        }
    }
}

/// A number of seconds from the manifest, in (0, 86400], or `default`.
pub(super) fn parse_secs(value: Option<f64>, default: Duration, field: &str) -> Result<Duration> {
    match value {
        None => Ok(default),
        Some(secs) if secs.is_finite() && secs > 0.0 && secs <= 86_400.0 => Ok(Duration::from_secs_f64(secs)),
        Some(secs) => bail!("{field} must be a number of seconds above 0 and at most 86400, not {secs}"),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    key_value: Option<KeyValueBackendKind>,
    max_concurrent_requests: Option<usize>,
    max_instance_memory_mb: Option<u64>,
    threads: Option<usize>,
    shutdown_timeout_secs: Option<f64>,
    drain_delay_secs: Option<f64>,
    readiness_requires_redis: Option<bool>,
    admin_listen: Option<String>,
    admin_auth: Option<RawAuth>,
    max_connections: Option<usize>,
    max_connections_per_client: Option<usize>,
    header_read_timeout_secs: Option<f64>,
    keepalive_timeout_secs: Option<f64>,
    send_timeout_secs: Option<f64>,
    http2_ping_interval_secs: Option<f64>,
    http2_ping_timeout_secs: Option<f64>,
    http2_max_concurrent_streams: Option<u32>,
    max_header_bytes: Option<usize>,
    max_request_body_bytes: Option<u64>,
    request_body_buffer_bytes: Option<u64>,
    max_request_body_memory_bytes: Option<u64>,
    request_body_timeout_secs: Option<f64>,
    request_body_min_rate: Option<u64>,
    tls: Option<RawTls>,
    rate_limit: Option<RawRateLimit>,
    client_rate_limit: Option<RawRateLimit>,
    trusted_proxies: Option<Vec<String>>,
    trusted_proxy_header: Option<String>,
    max_requests_in_flight_per_client: Option<usize>,
    max_self_hops: Option<u32>,
    max_key_bytes: Option<usize>,
    max_value_bytes: Option<usize>,
    max_keys_per_store: Option<u64>,
    max_guest_output_bytes: Option<usize>,
    max_sqlite_query_ms: Option<u64>,
    max_sqlite_result_bytes: Option<usize>,
    redis_url: Option<String>,
    redis_timeout_ms: Option<u64>,
    rate_limit_store: Option<RateLimitStore>,
    rate_limit_on_store_error: Option<OnStoreError>,
    queue_delay: Option<RawQueueDelay>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawQueueDelay {
    target_ms: Option<u64>,
    interval_ms: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOutbound {
    pool: Option<bool>,
    max_idle_per_host: Option<usize>,
    idle_timeout_secs: Option<f64>,
    max_connections_per_host: Option<usize>,
    connect_timeout_secs: Option<f64>,
    tls_handshake_timeout_secs: Option<f64>,
    total_timeout_secs: Option<f64>,
    extra_ca_file: Option<PathBuf>,
    breaker_failures: Option<u32>,
    breaker_open_secs: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: PathBuf,
    key: PathBuf,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRateLimit {
    requests: u32,
    window_secs: Option<f64>,
    burst: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAuth {
    bearer_token_env: Option<String>,
    bearer_token_file: Option<PathBuf>,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self::from_raw(RawServer::default(), Path::new(".")).expect("the defaults are valid")
    }
}
