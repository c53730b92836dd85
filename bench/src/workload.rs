//! What the benchmark measures: the workloads, the servers that answer them,
//! and one measured cell.

/// One kind of request.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Workload {
    /// A fixed body, nothing else: the per-request cost of the platform.
    Hello,
    /// The shared counter, on the in-memory store (native: a mutex).
    CounterMemory,
    /// The shared counter on redb (the default store): one durable commit
    /// per group of increments.
    CounterRedb,
    /// The shared counter on Redis.
    CounterRedis,
    /// Waits 100 ms on the host clock, then answers: many requests in
    /// flight, little CPU.
    Sleep,
    /// Hello from a WASI 0.3 component, a fresh instance per request.
    HelloP3,
    /// The same with instances reused (`wasmtime serve`'s p3 defaults).
    HelloP3Reuse,
    /// Hello behind a rate limit whose bucket is in Redis.
    HelloRedisRateLimit,
    /// A Spin SDK 7 hello: on a `spin.toml` route or a `wharf.toml` one, to
    /// show what the Spin layer costs.
    SpinHello,
    /// Hello far past capacity (c=1,000 and 5,000): admission by count (the
    /// default) or by queueing delay.
    Overload,
    /// A guest burning 1 ms of CPU, offered at a fixed rate of about twice
    /// what the server can serve (an open loop over 1,000 connections),
    /// where refusing is far cheaper than serving: the same two modes.
    OverloadCpu,
    /// A Python hello (componentize-py), a fresh instance per request.
    PythonHello,
    /// The same, instances reused.
    PythonHelloReuse,
    /// A JavaScript hello (componentize-js), a fresh instance per request
    /// (its engine takes one request per instance).
    JsHello,
}

impl Workload {
    pub const ALL: [Workload; 14] = [
        Self::Hello,
        Self::CounterMemory,
        Self::CounterRedb,
        Self::CounterRedis,
        Self::Sleep,
        Self::HelloP3,
        Self::HelloP3Reuse,
        Self::HelloRedisRateLimit,
        Self::SpinHello,
        Self::Overload,
        Self::OverloadCpu,
        Self::PythonHello,
        Self::PythonHelloReuse,
        Self::JsHello,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Hello => "hello",
            Self::CounterMemory => "counter (memory)",
            Self::CounterRedb => "counter (redb)",
            Self::CounterRedis => "counter (redis)",
            Self::Sleep => "sleep-100ms",
            Self::HelloP3 => "hello-p3",
            Self::HelloP3Reuse => "hello-p3 (reuse)",
            Self::HelloRedisRateLimit => "hello + redis rate limit",
            Self::SpinHello => "spin-hello",
            Self::Overload => "hello (overload)",
            Self::OverloadCpu => "cpu 1 ms (overload)",
            Self::PythonHello => "python hello",
            Self::PythonHelloReuse => "python hello (reuse)",
            Self::JsHello => "js hello",
        }
    }

    /// The path on a Wharf or native server.
    pub fn path(self) -> &'static str {
        match self {
            Self::Hello => "/hello",
            Self::CounterMemory | Self::CounterRedb | Self::CounterRedis => "/api/count",
            Self::Sleep => "/sleep",
            Self::HelloP3 => "/hello-p3",
            Self::HelloP3Reuse => "/hello-p3-reuse",
            Self::HelloRedisRateLimit => "/limited",
            Self::SpinHello => "/spin-hello",
            Self::Overload => "/hello",
            Self::OverloadCpu => "/sleep?ms=1&mode=cpu",
            Self::PythonHello => "/python",
            Self::PythonHelloReuse => "/python-reuse",
            Self::JsHello => "/js",
        }
    }

    /// The concurrencies measured unless the command line says otherwise.
    pub fn default_concurrency(self) -> &'static [usize] {
        match self {
            Self::Hello => &[1, 10, 100, 1000],
            Self::CounterMemory | Self::CounterRedb | Self::CounterRedis => &[1, 100],
            Self::Sleep => &[100, 1000, 2000],
            Self::HelloP3 | Self::HelloP3Reuse | Self::HelloRedisRateLimit | Self::SpinHello => &[100],
            Self::Overload => &[1000, 5000],
            Self::OverloadCpu => &[1000],
            Self::PythonHello | Self::PythonHelloReuse | Self::JsHello => &[10],
        }
    }

    /// The workload another server answers the same way, for ratios: the
    /// native counter is a mutex, like the in-memory store.
    pub fn comparable(self, other: Workload) -> bool {
        self == other
            || matches!(
                (self, other),
                (Self::HelloP3 | Self::HelloP3Reuse, Self::HelloP3)
                    | (Self::PythonHello | Self::PythonHelloReuse, Self::PythonHello)
            )
    }
}

/// What one cell measured (one repetition).
#[derive(Clone, Debug)]
pub struct Cell {
    pub server: String,
    /// Which repetition (cells are repeated, interleaved across servers).
    pub rep: usize,
    /// The machine's steal time during the cell, in percent of all CPU time.
    pub steal_pct: f64,
    /// Server on one core, load generator on the other.
    pub pinned: bool,
    pub workload: Workload,
    pub concurrency: usize,
    pub ok_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub errors: u64,
    pub cpu_us_per_req: f64,
    pub cpu_cores: f64,
    pub peak_rss_mib: f64,
    pub idle_rss_mib: f64,
    /// Responses that were refused (non-2xx), over all responses.
    pub refused_share: f64,
    /// p99 of the successful responses alone (the overload cells; wrk's
    /// cells give all responses').
    pub ok_p99_ms: f64,
    /// p99 of the refused responses alone (the overload cells).
    pub refused_p99_ms: f64,
}

impl Cell {
    /// Memory per request in flight: what the cell added to the idle RSS,
    /// over its concurrency.
    pub fn kib_per_request_in_flight(&self) -> f64 {
        (self.peak_rss_mib - self.idle_rss_mib).max(0.0) * 1024.0 / self.concurrency as f64
    }
}
