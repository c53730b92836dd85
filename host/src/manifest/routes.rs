//! Routes as both formats write them: the path pattern ([`RoutePattern`],
//! parsed and checked here; matched in `app/routes.rs`), the component
//! that serves it, and the route's own policy (deadlines, body limits,
//! rate limit, workers, auth, reuse) with its defaults.

use super::settings::{AuthSpec, RateLimitSpec, RawAuth, RawRateLimit, ServerSettings, parse_secs};
use anyhow::{Context, Result, bail};
use serde::Deserialize;
use std::path::Path;
use std::time::Duration;

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_MAX_DURATION: Duration = Duration::from_secs(600);

/// One route.
#[derive(Debug, Clone)]
pub struct RouteSpec {
    /// The path as written: `/hello` (exact), `/api/...` (prefix), with
    /// `:name` segments.
    pub path: String,
    /// How the path matches.
    pub pattern: RoutePattern,
    /// Name of the component that serves it.
    pub component: String,
    /// A private route (Spin's `route = { private = true }`) is never
    /// matched: its component is reached only by service chaining.
    pub private: bool,
    /// No response headers by then answers 504. Default 30 s.
    pub timeout: Duration,
    /// Once the body streams, a gap this long between chunks ends it.
    /// Default 60 s.
    pub idle_timeout: Duration,
    /// The whole response, headers and body, must end by then. Default 600 s.
    pub max_duration: Duration,
    /// Largest request body, in bytes. Default: the server's.
    pub max_request_body_bytes: u64,
    /// Bodies up to this size are read before admission. Default: the
    /// server's `request_body_buffer_bytes`.
    pub request_body_buffer_bytes: u64,
    /// A token bucket for this route alone, if any.
    pub rate_limit: Option<RateLimitSpec>,
    /// A worker pool: at most `workers` instances of this route at once.
    pub workers: Option<WorkerPoolSpec>,
    /// Bearer-token authentication, if required.
    pub auth: Option<AuthSpec>,
    /// Instance reuse, if the route asks for it (default: a fresh instance
    /// per request).
    pub reuse: Option<ReuseSpec>,
}

/// A route's instance reuse (`reuse = { ... }`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReuseSpec {
    /// Requests one instance serves before it is retired. Default 128.
    pub max_requests: usize,
    /// Requests one WASI 0.3 instance serves at once. Default 16.
    pub max_concurrent: usize,
    /// An instance idle this long is retired. Default 10 s.
    pub idle_timeout: Duration,
}

/// A route's worker pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerPoolSpec {
    /// Instances of the route running at once, at most.
    pub workers: usize,
    /// Requests waiting in order for a worker, at most; more get 503.
    pub queue: usize,
}

/// A route's path pattern: `/hello` matches that path (with or without a
/// trailing slash); `/api/...` (or `/api/*`) matches `/api` and everything
/// below it; a `:name` segment matches any one segment and names it. An
/// exact route beats a wildcard one, a longer prefix a shorter (Spin's
/// rules, which Wharf's have always been).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutePattern {
    /// The pattern as the router reads it (`*` for the wildcard, no
    /// trailing slash; `/` alone for the root).
    pub router_spec: String,
    /// The route without its trailing wildcard (Spin's "component route").
    pub prefix: String,
    /// Whether it ends in a wildcard.
    pub wildcard: bool,
}

impl RoutePattern {
    /// Parses a route as written (`path` must start with `/`).
    pub fn parse(path: &str) -> Result<Self, String> {
        if !path.starts_with('/') {
            return Err(format!("path {path:?} must start with '/'"));
        }
        let (prefix, wildcard) = match path.strip_suffix("/...").or_else(|| path.strip_suffix("/*")) {
            Some(prefix) => (prefix, true),
            None => (path.strip_suffix('/').unwrap_or(path), false),
        };
        if prefix.contains("...") || prefix.contains('*') {
            return Err(format!("path {path:?} may have a wildcard ('/...') only once, at the end"));
        }
        if let Some(segment) = prefix.split('/').find(|s| s.len() == 1 && s.starts_with(':')) {
            return Err(format!("path {path:?}: segment {segment:?} needs a name after ':'"));
        }
        let router_spec = match (prefix, wildcard) {
            ("", true) => "/*".to_string(),
            ("", false) => "/".to_string(),
            (prefix, true) => format!("{prefix}/*"),
            (prefix, false) => prefix.to_string(),
        };
        routefinder::RouteSpec::try_from(router_spec.as_str())
            .map_err(|e| format!("path {path:?} is not a route: {e}"))?;
        Ok(Self { router_spec, prefix: prefix.to_string(), wildcard })
    }
}

/// One `[[route]]` as written (in `wharf.toml`; beside a `spin.toml`,
/// without a component: the policy of the Spin route with that path).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    pub(super) path: String,
    pub(super) component: Option<String>,
    timeout_secs: Option<f64>,
    idle_timeout_secs: Option<f64>,
    max_duration_secs: Option<f64>,
    max_request_body_bytes: Option<u64>,
    request_body_buffer_bytes: Option<u64>,
    rate_limit: Option<RawRateLimit>,
    workers: Option<usize>,
    queue: Option<usize>,
    auth: Option<RawAuth>,
    reuse: Option<RawReuse>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReuse {
    max_requests: Option<usize>,
    max_concurrent: Option<usize>,
    idle_timeout_secs: Option<f64>,
}

impl RawRoute {
    /// A route's policy with nothing set: every default.
    pub(super) fn defaults(path: &str) -> Self {
        Self {
            path: path.to_string(),
            component: None,
            timeout_secs: None,
            idle_timeout_secs: None,
            max_duration_secs: None,
            max_request_body_bytes: None,
            request_body_buffer_bytes: None,
            rate_limit: None,
            workers: None,
            queue: None,
            auth: None,
            reuse: None,
        }
    }

    /// The route this policy describes, served by `component`; `dir` is
    /// where token files are relative to.
    pub(super) fn into_spec(
        self,
        pattern: RoutePattern,
        component: String,
        private: bool,
        server: &ServerSettings,
        dir: &Path,
    ) -> Result<RouteSpec> {
        let timeout = parse_secs(self.timeout_secs, DEFAULT_TIMEOUT, "timeout_secs")?;
        let idle_timeout = parse_secs(self.idle_timeout_secs, DEFAULT_IDLE_TIMEOUT, "idle_timeout_secs")?;
        let max_duration = parse_secs(self.max_duration_secs, DEFAULT_MAX_DURATION, "max_duration_secs")?;
        if max_duration < timeout {
            bail!("max_duration_secs must not be shorter than timeout_secs");
        }
        let workers = match (self.workers, self.queue) {
            (None, None) => None,
            (None, Some(_)) => bail!("queue needs workers"),
            (Some(0), _) => bail!("workers must be at least 1"),
            (Some(workers), queue) => Some(WorkerPoolSpec { workers, queue: queue.unwrap_or(0) }),
        };
        let reuse = self
            .reuse
            .map(|r| -> Result<ReuseSpec> {
                let spec = ReuseSpec {
                    max_requests: r.max_requests.unwrap_or(128),
                    max_concurrent: r.max_concurrent.unwrap_or(16),
                    idle_timeout: parse_secs(
                        r.idle_timeout_secs,
                        Duration::from_secs(10),
                        "reuse.idle_timeout_secs",
                    )?,
                };
                if spec.max_requests == 0 || spec.max_concurrent == 0 {
                    bail!("reuse.max_requests and reuse.max_concurrent must be at least 1");
                }
                Ok(spec)
            })
            .transpose()?;
        Ok(RouteSpec {
            pattern,
            component,
            private,
            timeout,
            idle_timeout,
            max_duration,
            max_request_body_bytes: self.max_request_body_bytes.unwrap_or(server.max_request_body_bytes),
            request_body_buffer_bytes: self
                .request_body_buffer_bytes
                .unwrap_or(server.request_body.buffer_bytes),
            rate_limit: self.rate_limit.map(|r| r.validate("rate_limit")).transpose()?,
            workers,
            auth: self.auth.map(|a| a.validate(dir)).transpose().context("auth")?,
            reuse,
            path: self.path,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_parse_into_router_specs() {
        let parse = |p: &str| RoutePattern::parse(p).map(|r| (r.router_spec, r.prefix, r.wildcard));
        assert_eq!(parse("/hello"), Ok(("/hello".into(), "/hello".into(), false)));
        assert_eq!(parse("/hello/"), Ok(("/hello".into(), "/hello".into(), false)));
        assert_eq!(parse("/api/..."), Ok(("/api/*".into(), "/api".into(), true)));
        assert_eq!(parse("/..."), Ok(("/*".into(), "".into(), true)));
        assert_eq!(parse("/"), Ok(("/".into(), "".into(), false)));
        assert_eq!(parse("/users/:id/..."), Ok(("/users/:id/*".into(), "/users/:id".into(), true)));
        for bad in ["hello", "/a/.../b", "/a/*/b", "/a/:/b"] {
            assert!(RoutePattern::parse(bad).is_err(), "{bad} should be refused");
        }
    }
}
