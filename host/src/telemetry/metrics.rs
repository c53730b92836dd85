//! Prometheus metrics (through `prometheus-client`): the one set of counters
//! the server keeps. `/metrics` renders them, `/healthz` and the tests read
//! them through the accessors here. Counters and histograms are updated as
//! things happen; the live-instance gauge moves as instances are created
//! and dropped; the gauges that describe a moment (requests in flight,
//! queue depths, loaded components) are set from a [`Snapshot`] at scrape.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::Arc;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteStatus {
    route: Arc<str>,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ComponentInfo {
    component: String,
    digest: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HostStatus {
    host: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HostLabel {
    host: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TickAction {
    action: &'static str,
}

/// Epoch ticks met by running guests, by what the guest did at each (see
/// `runtime::fair`): ran on (a first slice shorter than half a tick),
/// yielded (back of its thread's run queue), parked (its thread's idle
/// queue, computing for long). Made once; each store holds a handle.
#[derive(Debug)]
pub struct EpochTicks {
    /// The guest ran on through the tick.
    pub ran_on: Counter,
    /// The guest went to the back of its thread's run queue.
    pub yielded: Counter,
    /// The guest went to its thread's idle queue.
    pub parked: Counter,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Kill {
    reason: &'static str,
    phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadResult {
    result: &'static str,
}

/// Outbound HTTP metrics; the client holds them, `/metrics` shows them.
/// Label values come from bounded sets: requests by the allow-list entry
/// that let them out, connections by host for the first
/// [`MAX_HOST_LABELS`] hosts and `other` after that.
pub struct OutboundMetrics {
    requests: Family<HostStatus, Counter>,
    connections_opened: Family<HostLabel, Counter>,
    denied: Counter,
    over_budget: Counter,
    wait: Histogram,
    hosts_seen: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// Distinct hosts that get a connection label of their own.
pub const MAX_HOST_LABELS: usize = 64;

impl OutboundMetrics {
    fn register(registry: &mut Registry) -> Self {
        let requests = Family::<HostStatus, Counter>::default();
        registry.register(
            "outbound_requests",
            "Outgoing requests by the allow-list entry that let them out, and status (0: no response)",
            requests.clone(),
        );
        let connections_opened = Family::<HostLabel, Counter>::default();
        registry.register(
            "outbound_connections_opened",
            "Outgoing connections opened, by host",
            connections_opened.clone(),
        );
        let denied = Counter::default();
        registry.register(
            "outbound_denied",
            "Outgoing requests denied by allowed_outbound_hosts (the hosts are in the log)",
            denied.clone(),
        );
        let over_budget = Counter::default();
        registry.register(
            "outbound_over_budget",
            "Outgoing requests refused because their instance used its max_outbound_requests",
            over_budget.clone(),
        );
        let wait = Histogram::new(exponential_buckets(0.000_01, 4.0, 10));
        registry.register(
            "outbound_pool_wait_seconds",
            "Time waiting for a per-host connection slot",
            wait.clone(),
        );
        Self { requests, connections_opened, denied, over_budget, wait, hosts_seen: Default::default() }
    }

    /// Counts a request let out by allow-list entry `entry` that ended with
    /// `status` (0: none).
    pub fn request(&self, entry: &str, status: u16) {
        self.requests.get_or_create(&HostStatus { host: entry.to_string(), status }).inc();
    }

    /// The label for `host`: itself if it is among the first hosts seen.
    fn host_label(&self, host: &str) -> String {
        let mut seen = self.hosts_seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.contains(host) || (seen.len() < MAX_HOST_LABELS && seen.insert(host.to_string())) {
            host.to_string()
        } else {
            "other".to_string()
        }
    }

    /// Counts a new connection to `host`.
    pub fn connection_opened(&self, host: &str) {
        self.connections_opened.get_or_create(&HostLabel { host: self.host_label(host) }).inc();
    }

    /// Connections opened to `host` so far.
    pub fn connections_opened_to(&self, host: &str) -> u64 {
        self.connections_opened.get_or_create(&HostLabel { host: self.host_label(host) }).get()
    }

    /// Counts a denied request.
    pub fn denied(&self) {
        self.denied.inc();
    }

    /// Requests denied so far.
    pub fn denied_total(&self) -> u64 {
        self.denied.get()
    }

    /// Counts a request refused for its instance's outbound budget.
    pub fn over_budget(&self) {
        self.over_budget.inc();
    }

    /// Requests refused for their instance's budget so far.
    pub fn over_budget_total(&self) -> u64 {
        self.over_budget.get()
    }

    /// Records time spent waiting for a host slot.
    pub fn waited(&self, wait: std::time::Duration) {
        self.wait.observe(wait.as_secs_f64());
    }
}

/// The state of the moment that `/metrics` shows as gauges.
#[derive(Default)]
pub struct Snapshot {
    /// Requests holding an admission permit.
    pub in_flight: usize,
    /// `(route, requests waiting for its workers)` for each pooled route.
    pub queue_depths: Vec<(String, usize)>,
    /// `(component, digest)` for each loaded component.
    pub components: Vec<(String, String)>,
    /// Outbound circuit breakers open or half-open.
    pub breakers_open: usize,
    /// Times an outbound circuit breaker has opened.
    pub breaker_trips: u64,
}

/// Every metric Wharf exports.
pub struct Metrics {
    registry: Registry,
    requests: Family<RouteStatus, Counter>,
    requests_ended: Counter,
    duration: Family<RouteLabel, Histogram>,
    rejections: Family<Reason, Counter>,
    cancelled: Counter,
    timed_out: Counter,
    instantiation: Histogram,
    in_flight: Gauge,
    live_instances: Gauge,
    bodies_reading: Gauge,
    body_spills: Counter,
    queue_depth: Family<RouteLabel, Gauge>,
    components: Family<ComponentInfo, Gauge>,
    reloads: Family<ReloadResult, Counter>,
    instances_killed: Family<Kill, Counter>,
    epoch_ticks: Arc<EpochTicks>,
    connections_refused: Family<Reason, Counter>,
    connections_timed_out: Family<Reason, Counter>,
    connections_cut_off: Counter,
    breakers_open: Gauge,
    breaker_trips: Gauge,
    /// Outbound HTTP metrics.
    pub outbound: Arc<OutboundMetrics>,
    /// What became of trace spans.
    pub traces: Arc<super::trace::TraceMetrics>,
}

fn latency_histogram() -> Histogram {
    // 100 us to about 52 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 20))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("wharf");
        let requests = Family::<RouteStatus, Counter>::default();
        registry.register("requests", "Requests ended, by route and status", requests.clone());
        let requests_ended = Counter::default();
        registry.register(
            "requests_ended",
            "Requests ended, whatever their route, status or outcome",
            requests_ended.clone(),
        );
        let duration = Family::<RouteLabel, Histogram>::new_with_constructor(latency_histogram as fn() -> _);
        registry.register(
            "request_duration_seconds",
            "Time from request to end of response",
            duration.clone(),
        );
        let rejections = Family::<Reason, Counter>::default();
        registry.register(
            "rejections",
            "Requests turned away before their component, by reason",
            rejections.clone(),
        );
        let cancelled = Counter::default();
        registry.register(
            "requests_cancelled",
            "Requests whose client left before the response ended",
            cancelled.clone(),
        );
        let timed_out = Counter::default();
        registry.register("requests_timed_out", "Requests ended by a deadline", timed_out.clone());
        let instantiation = Histogram::new(exponential_buckets(0.000_005, 2.0, 16));
        registry.register("instantiation_seconds", "Time to instantiate a component", instantiation.clone());
        let in_flight = Gauge::default();
        registry.register("requests_in_flight", "Requests holding an admission permit", in_flight.clone());
        let live_instances = Gauge::default();
        registry.register("live_instances", "Component instances alive", live_instances.clone());
        let bodies_reading = Gauge::default();
        registry.register(
            "request_bodies_reading",
            "Request bodies being read ahead of admission (they hold a connection, not a slot)",
            bodies_reading.clone(),
        );
        let body_spills = Counter::default();
        registry.register(
            "request_body_spills",
            "Request bodies read ahead that went past the memory budget into a temporary file",
            body_spills.clone(),
        );
        let queue_depth = Family::<RouteLabel, Gauge>::default();
        registry.register(
            "route_queue_depth",
            "Requests waiting for a route's worker pool",
            queue_depth.clone(),
        );
        let components = Family::<ComponentInfo, Gauge>::default();
        registry.register("component_info", "Loaded components and their digests", components.clone());
        let reloads = Family::<ReloadResult, Counter>::default();
        registry.register(
            "reloads",
            "Component and manifest reloads, by result (ok or rejected)",
            reloads.clone(),
        );
        let instances_killed = Family::<Kill, Counter>::default();
        registry.register(
            "instances_killed",
            "Instances killed by a bound (max_duration: their lifetime; host_memory: what they made the host hold), by phase",
            instances_killed.clone(),
        );
        let tick_actions = Family::<TickAction, Counter>::default();
        registry.register(
            "epoch_ticks",
            "Epoch ticks met by running guests, by what the guest did (ran_on: a first slice shorter than half a tick; yielded: back of its thread's run queue; parked: its thread's idle queue)",
            tick_actions.clone(),
        );
        let tick_action = |action| tick_actions.get_or_create(&TickAction { action }).clone();
        let epoch_ticks = Arc::new(EpochTicks {
            ran_on: tick_action("ran_on"),
            yielded: tick_action("yielded"),
            parked: tick_action("parked"),
        });
        let connections_refused = Family::<Reason, Counter>::default();
        registry.register(
            "connections_refused",
            "Connections closed at accept, by the cap they met",
            connections_refused.clone(),
        );
        let connections_timed_out = Family::<Reason, Counter>::default();
        registry.register(
            "connections_timed_out",
            "Connections ended by a deadline (header, keepalive, send, response)",
            connections_timed_out.clone(),
        );
        let connections_cut_off = Counter::default();
        registry.register(
            "connections_cut_off",
            "Connections cut off for flooding the server (HTTP/2 GOAWAY ENHANCE_YOUR_CALM: rapid reset, endless header blocks, refused streams)",
            connections_cut_off.clone(),
        );
        let breakers_open = Gauge::default();
        registry.register(
            "outbound_breakers_open",
            "Upstream hosts whose circuit breaker is open or half-open (each is in /healthz)",
            breakers_open.clone(),
        );
        let breaker_trips = Gauge::default();
        registry.register(
            "outbound_breaker_trips",
            "Times an upstream host's circuit breaker has opened",
            breaker_trips.clone(),
        );
        let outbound = Arc::new(OutboundMetrics::register(&mut registry));
        let traces = Arc::new(super::trace::TraceMetrics::register(&mut registry));
        Self {
            traces,
            breakers_open,
            breaker_trips,
            instances_killed,
            epoch_ticks,
            connections_refused,
            connections_timed_out,
            connections_cut_off,
            registry,
            requests,
            requests_ended,
            duration,
            rejections,
            cancelled,
            timed_out,
            instantiation,
            in_flight,
            live_instances,
            bodies_reading,
            body_spills,
            queue_depth,
            components,
            reloads,
            outbound,
        }
    }
}

impl Metrics {
    /// Counts one ended request.
    /// `route` is shared with the route (labels made without allocating).
    pub fn request_ended(&self, route: Option<&Arc<str>>, status: Option<u16>, seconds: f64) {
        static NO_ROUTE: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| Arc::from(""));
        let route = route.unwrap_or(&NO_ROUTE).clone();
        self.requests_ended.inc();
        self.requests.get_or_create(&RouteStatus { route: route.clone(), status: status.unwrap_or(0) }).inc();
        self.duration.get_or_create(&RouteLabel { route }).observe(seconds);
    }

    /// Requests ended so far, whatever their outcome.
    pub fn requests_total(&self) -> u64 {
        self.requests_ended.get()
    }

    /// Counts a rejection under its reason.
    pub fn rejected(&self, reason: &'static str) {
        self.rejections.get_or_create(&Reason { reason }).inc();
    }

    /// Rejections counted so far under `reason`.
    pub fn rejections(&self, reason: &'static str) -> u64 {
        self.rejections.get_or_create(&Reason { reason }).get()
    }

    /// Counts a cancellation (client gone).
    pub fn cancelled(&self) {
        self.cancelled.inc();
    }

    /// Requests cancelled so far.
    pub fn cancelled_total(&self) -> u64 {
        self.cancelled.get()
    }

    /// Counts a request ended by a deadline.
    pub fn timed_out(&self) {
        self.timed_out.inc();
    }

    /// Requests ended by a deadline so far.
    pub fn timed_out_total(&self) -> u64 {
        self.timed_out.get()
    }

    /// Counts a reload, swapped in (`ok`) or rejected.
    pub fn reload(&self, ok: bool) {
        self.reloads.get_or_create(&ReloadResult { result: if ok { "ok" } else { "rejected" } }).inc();
    }

    /// Reloads counted so far with this result.
    pub fn reloads(&self, ok: bool) -> u64 {
        self.reloads.get_or_create(&ReloadResult { result: if ok { "ok" } else { "rejected" } }).get()
    }

    /// Counts an instance killed by the bound `reason` (`max_duration`,
    /// `host_memory`) in `phase`.
    pub fn instance_killed(&self, reason: &'static str, phase: &'static str) {
        self.instances_killed.get_or_create(&Kill { reason, phase }).inc();
    }

    /// The epoch-tick counters, for each store's deadline callback.
    pub fn epoch_ticks(&self) -> &Arc<EpochTicks> {
        &self.epoch_ticks
    }

    /// Instances killed by the bound `reason` in `phase` so far.
    pub fn instances_killed(&self, reason: &'static str, phase: &'static str) -> u64 {
        self.instances_killed.get_or_create(&Kill { reason, phase }).get()
    }

    /// Counts a connection refused at accept for `reason`.
    pub fn connection_refused(&self, reason: &'static str) {
        self.connections_refused.get_or_create(&Reason { reason }).inc();
    }

    /// Connections refused for `reason` so far.
    pub fn connections_refused(&self, reason: &'static str) -> u64 {
        self.connections_refused.get_or_create(&Reason { reason }).get()
    }

    /// Counts a connection ended by its `reason` deadline.
    pub fn connection_timed_out(&self, reason: &'static str) {
        self.connections_timed_out.get_or_create(&Reason { reason }).inc();
    }

    /// Connections ended by their `reason` deadline so far.
    pub fn connections_timed_out(&self, reason: &'static str) -> u64 {
        self.connections_timed_out.get_or_create(&Reason { reason }).get()
    }

    /// Counts a connection cut off for flooding the server.
    pub fn connection_cut_off(&self) {
        self.connections_cut_off.inc();
    }

    /// Connections cut off for flooding so far.
    pub fn connections_cut_off(&self) -> u64 {
        self.connections_cut_off.get()
    }

    /// Records one instantiation's duration.
    pub fn instantiated(&self, seconds: f64) {
        self.instantiation.observe(seconds);
    }

    /// The gauge of live instances, for the guard each instance holds.
    pub fn live_instances_gauge(&self) -> &Gauge {
        &self.live_instances
    }

    /// Component instances alive now.
    pub fn live_instances(&self) -> usize {
        self.live_instances.get().max(0) as usize
    }

    /// The gauge of request bodies being read ahead of admission.
    pub fn bodies_reading_gauge(&self) -> &Gauge {
        &self.bodies_reading
    }

    /// Request bodies being read ahead of admission now.
    pub fn bodies_reading(&self) -> usize {
        self.bodies_reading.get().max(0) as usize
    }

    /// The counter of read-ahead bodies that went to a file.
    pub fn body_spills_counter(&self) -> &Counter {
        &self.body_spills
    }

    /// Read-ahead bodies that went to a file so far.
    pub fn body_spills(&self) -> u64 {
        self.body_spills.get()
    }

    /// The text exposition, with the moment's gauges from `snapshot`.
    pub fn render(&self, snapshot: &Snapshot) -> String {
        self.in_flight.set(snapshot.in_flight as i64);
        self.breakers_open.set(snapshot.breakers_open as i64);
        self.breaker_trips.set(snapshot.breaker_trips as i64);
        for (route, depth) in &snapshot.queue_depths {
            self.queue_depth.get_or_create(&RouteLabel { route: route.as_str().into() }).set(*depth as i64);
        }
        self.components.clear();
        for (component, digest) in &snapshot.components {
            self.components
                .get_or_create(&ComponentInfo { component: component.clone(), digest: digest.clone() })
                .set(1);
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).expect("writing to a String");
        text
    }
}
