//! OpenTelemetry traces, exported over OTLP/HTTP to a receiver the tests
//! run: it decodes each export request with the OpenTelemetry proto types,
//! as a collector would.

use crate::harness::*;
use crate::upstream::{Silent, Upstream};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One span as the collector got it.
#[derive(Debug, Clone)]
struct Got {
    name: String,
    kind: SpanKind,
    trace_id: String,
    span_id: String,
    parent: String,
    attributes: HashMap<String, String>,
    events: Vec<String>,
    error: bool,
    service: String,
    start_ns: u64,
    end_ns: u64,
}

/// An OTLP/HTTP trace receiver on 127.0.0.1.
struct Collector {
    addr: SocketAddr,
    spans: Arc<Mutex<Vec<Got>>>,
    arrived: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Collector {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let spans: Arc<Mutex<Vec<Got>>> = Arc::default();
        let arrived = Arc::new(tokio::sync::Notify::new());
        let (task_spans, task_arrived) = (spans.clone(), arrived.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (spans, arrived) = (task_spans.clone(), task_arrived.clone());
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                            let (spans, arrived) = (spans.clone(), arrived.clone());
                            async move {
                                assert_eq!(request.uri().path(), "/v1/traces");
                                assert_eq!(request.headers()["content-type"], "application/x-protobuf");
                                let body = request.into_body().collect().await.unwrap().to_bytes();
                                let export =
                                    ExportTraceServiceRequest::decode(body).expect("a valid OTLP export");
                                spans.lock().unwrap().extend(flatten(export));
                                arrived.notify_waiters();
                                Ok::<_, std::convert::Infallible>(
                                    http::Response::builder()
                                        .header("content-type", "application/x-protobuf")
                                        .body(Full::new(Bytes::new()))
                                        .unwrap(),
                                )
                            }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, spans, arrived, task }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Waits (10 s at most) until the spans received satisfy `done`.
    async fn wait_for(&self, what: &str, done: impl Fn(&[Got]) -> bool) -> Vec<Got> {
        let wait = async {
            loop {
                let arrived = self.arrived.notified();
                let spans = self.spans.lock().unwrap().clone();
                if done(&spans) {
                    return spans;
                }
                arrived.await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), wait)
            .await
            .unwrap_or_else(|_| panic!("{what}: got {:#?}", self.spans.lock().unwrap()))
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn flatten(export: ExportTraceServiceRequest) -> Vec<Got> {
    let text = |value: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>| match value
        .as_ref()
        .and_then(|v| v.value.as_ref())
    {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    };
    let mut out = Vec::new();
    for resource_spans in export.resource_spans {
        let service = resource_spans
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .map(|kv| text(&kv.value))
            .unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                out.push(Got {
                    kind: SpanKind::try_from(span.kind).unwrap(),
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent: hex(&span.parent_span_id),
                    attributes: span.attributes.iter().map(|kv| (kv.key.clone(), text(&kv.value))).collect(),
                    events: span.events.iter().map(|e| e.name.clone()).collect(),
                    error: span.status.as_ref().is_some_and(|s| s.code == 2),
                    service: service.clone(),
                    start_ns: span.start_time_unix_nano,
                    end_ns: span.end_time_unix_nano,
                    name: span.name,
                });
            }
        }
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn tracing_table(endpoint: &str, extra: &str) -> String {
    format!(
        "[tracing]\nendpoint = \"{endpoint}\"\nschedule_delay_ms = 20\nservice_name = \"wharf-test\"\n{extra}\n"
    )
}

fn children<'a>(spans: &'a [Got], parent: &Got) -> Vec<&'a Got> {
    spans.iter().filter(|s| s.parent == parent.span_id).collect()
}

fn one<'a>(spans: Vec<&'a Got>, name: &str) -> &'a Got {
    let found: Vec<_> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(found.len(), 1, "one {name:?} among {spans:#?}");
    found[0]
}

#[tokio::test]
async fn an_aggregate_request_is_one_trace_through_its_outbound_and_self_calls() {
    let collector = Collector::start().await;
    let upstream = Upstream::start().await;
    let manifest = format!(
        r#"{tracing}
[server]
key_value = "memory"

[[route]]
path = "/aggregate"
component = "aggregate"

[[route]]
path = "/hello"
component = "hello"

[[route]]
path = "/api/..."
component = "counter"

[component.hello]
source = "{{components}}/hello.wasm"

[component.counter]
source = "{{components}}/counter.wasm"
key_value_stores = ["default"]
config = {{ delay_ms = "0" }}

[component.aggregate]
source = "{{components}}/aggregate.wasm"
config = {{ urls = "/hello,/api/count,http://{upstream}/ok?secret=1" }}
allowed_outbound_hosts = ["http://127.0.0.1:*", "http://self"]
"#,
        tracing = tracing_table(&collector.endpoint(), ""),
        upstream = upstream.addr,
    );
    let (server, _dir) = TestServer::start(&manifest).await;
    let reply = get(&http1_client(), &server.url("/aggregate")).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let request_id = reply.headers["x-request-id"].to_str().unwrap().to_string();

    // Sixteen spans: the aggregate's server, queue, guest and instantiate
    // spans and its three client spans; two self calls of four spans
    // each; the counter's key-value call.
    let spans = collector
        .wait_for("the whole tree", |spans| {
            spans.iter().filter(|s| s.kind == SpanKind::Server).count() == 3
                && spans.iter().filter(|s| s.kind == SpanKind::Client).count() == 3
                && spans.iter().any(|s| s.name == "wharf.kv")
                && spans.iter().filter(|s| s.name == "wharf.guest").count() == 3
        })
        .await;
    let root = one(spans.iter().filter(|s| s.parent.is_empty()).collect(), "GET /aggregate");
    assert!(spans.iter().all(|s| s.trace_id == root.trace_id), "one trace: {spans:#?}");
    assert!(spans.iter().all(|s| s.service == "wharf-test"));
    assert_eq!(root.kind, SpanKind::Server);
    for (key, value) in [
        ("http.request.method", "GET"),
        ("http.route", "/aggregate"),
        ("url.path", "/aggregate"),
        ("url.scheme", "http"),
        ("http.response.status_code", "200"),
        ("client.address", "127.0.0.1"),
        ("network.protocol.version", "1.1"),
        ("wharf.outcome", "completed"),
        ("wharf.request_id", request_id.as_str()),
    ] {
        assert_eq!(root.attributes.get(key).map(String::as_str), Some(value), "{key} of {root:#?}");
    }
    let under_root = children(&spans, root);
    one(under_root.clone(), "wharf.queue");
    let guest = one(under_root, "wharf.guest");
    assert_eq!(guest.attributes["wharf.component"], "aggregate");
    assert_eq!(guest.attributes["wharf.instance"], "fresh");
    let under_guest = children(&spans, guest);
    one(under_guest.clone(), "wharf.instantiate");
    let calls: Vec<_> = under_guest.iter().filter(|s| s.kind == SpanKind::Client).collect();
    assert_eq!(calls.len(), 3, "{under_guest:#?}");
    // The upstream's URL shows only as far as the allow-list entry.
    let outside = calls.iter().find(|c| c.attributes["url.full"] == "http://127.0.0.1:*").unwrap();
    assert_eq!(outside.name, "GET");
    assert_eq!(outside.attributes["server.port"], upstream.addr.port().to_string());
    assert_eq!(outside.attributes["http.response.status_code"], "200");
    assert!(!spans.iter().any(|s| s.attributes.values().any(|v| v.contains("secret"))));
    // Each self call continues the trace in process: its server span is a
    // child of the client span that sent it.
    for (path, route) in [("/hello", "/hello"), ("/api/count", "/api/...")] {
        let served =
            spans.iter().find(|s| s.attributes.get("url.path").map(String::as_str) == Some(path)).unwrap();
        assert_eq!(served.name, format!("GET {route}"));
        assert_eq!(served.attributes["wharf.self_hops"], "1");
        let call = spans.iter().find(|s| s.span_id == served.parent).unwrap();
        assert_eq!((call.kind, call.attributes["url.full"].as_str()), (SpanKind::Client, "http://self"));
        assert_eq!(call.parent, guest.span_id);
    }
    let kv = spans.iter().find(|s| s.name == "wharf.kv").unwrap();
    assert_eq!(kv.attributes["db.operation.name"], "increment");
    assert_eq!(kv.attributes["db.system.name"], "memory");
    let counter_guest = spans.iter().find(|s| s.span_id == kv.parent).unwrap();
    assert_eq!(
        (counter_guest.name.as_str(), counter_guest.attributes["wharf.component"].as_str()),
        ("wharf.guest", "counter")
    );
    // The log line carries the trace id.
    let line = server.access_line("the aggregate's line", |l| l["path"] == "/aggregate").await;
    assert_eq!(line["trace_id"], root.trace_id.as_str());
    let tracing = server.app.telemetry.tracing.clone().unwrap();
    tokio::task::spawn_blocking(move || tracing.flush(Duration::from_secs(10))).await.unwrap();
    assert_eq!(server.app.telemetry.metrics.traces.exported(), collector.spans.lock().unwrap().len() as u64);
    server.stop().await;
}

#[tokio::test]
async fn an_inbound_traceparent_continues_and_the_guest_sees_its_own_span() {
    let collector = Collector::start().await;
    let manifest = format!(
        r#"{tracing}
[[route]]
path = "/echo"
component = "echo"

[component.echo]
source = "{{components}}/echo.wasm"

[[route]]
path = "/fault"
component = "fault"

[component.fault]
source = "{{components}}/fault.wasm"
max_host_memory_mb = 1
"#,
        tracing = tracing_table(&collector.endpoint(), ""),
    );
    let (server, _dir) = TestServer::start(&manifest).await;
    // Not sampled by the caller: the decision is Wharf's (every trace).
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let request = http::Request::get(server.url("/echo?inspect"))
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-00"))
        .header("tracestate", "vendor=opaque")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let reply = send(&http1_client(), request).await;
    assert_eq!(reply.status, 200);
    // The server span ends after the response, so it may come in a later
    // export than the guest's.
    let spans = collector
        .wait_for("the echo's spans", |s| {
            s.iter().any(|s| s.name == "wharf.guest") && s.iter().any(|s| s.kind == SpanKind::Server)
        })
        .await;
    let root = spans.iter().find(|s| s.kind == SpanKind::Server).unwrap();
    assert_eq!((root.trace_id.as_str(), root.parent.as_str()), (trace_id, "00f067aa0ba902b7"));
    let guest = spans.iter().find(|s| s.name == "wharf.guest").unwrap();
    let seen = reply.json()["headers"].as_array().unwrap().clone();
    let header = |name: &str| seen.iter().find(|h| h[0] == name).map(|h| h[1].as_str().unwrap().to_string());
    assert_eq!(header("traceparent"), Some(format!("00-{trace_id}-{}-01", guest.span_id)));
    assert_eq!(header("tracestate").as_deref(), Some("vendor=opaque"));

    // A kill shows on the guest's span with its reason, and fails the trace.
    let reply = get(&http1_client(), &server.url("/fault?mode=fields")).await;
    assert_eq!(reply.status, 500, "{}", reply.body);
    let killed_with_root = |spans: &[Got]| {
        let killed = spans.iter().find(|s| s.events.iter().any(|e| e == "wharf.kill"))?;
        Some((killed.clone(), spans.iter().find(|s| s.span_id == killed.parent)?.clone()))
    };
    let spans = collector.wait_for("the kill and its request", |s| killed_with_root(s).is_some()).await;
    let (killed, root) = killed_with_root(&spans).unwrap();
    assert_eq!((killed.name.as_str(), killed.error), ("wharf.guest", true));
    assert_eq!((root.name.as_str(), root.error), ("GET /fault", true));
    assert_eq!(root.attributes["http.response.status_code"], "500");
    server.stop().await;

    // A ratio of 0: nothing recorded, nothing exported, no trace id logged;
    // the context still goes on.
    let quiet = Collector::start().await;
    let manifest = manifest.replace(
        &tracing_table(&collector.endpoint(), ""),
        &tracing_table(&quiet.endpoint(), "sampler = \"traceidratio\"\nsampler_arg = 0.0"),
    );
    let (server, _dir) = TestServer::start(&manifest).await;
    let request = http::Request::get(server.url("/echo?inspect"))
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let reply = send(&http1_client(), request).await;
    let seen = reply.json()["headers"].as_array().unwrap().clone();
    let traceparent = seen.iter().find(|h| h[0] == "traceparent").unwrap()[1].as_str().unwrap().to_string();
    assert!(
        traceparent.starts_with(&format!("00-{trace_id}-")) && traceparent.ends_with("-00"),
        "{traceparent}"
    );
    let line = server.access_line("the echo's line", |l| l["path"] == "/echo").await;
    assert!(line.get("trace_id").is_none(), "{line}");
    let tracing = server.app.telemetry.tracing.clone().unwrap();
    tokio::task::spawn_blocking(move || tracing.flush(Duration::from_secs(10))).await.unwrap();
    assert_eq!(server.app.telemetry.metrics.traces.exported(), 0);
    assert!(quiet.spans.lock().unwrap().is_empty());
    server.stop().await;
}

/// Spans one traced `hello` request makes: server, queue, guest,
/// instantiate.
const HELLO_SPANS: u64 = 4;

#[tokio::test]
async fn with_the_collector_away_requests_are_served_and_drops_are_counted() {
    // The drain (and the last flush) waits a second at most for the silent one.
    let hello = |tracing: String| {
        format!(
            "{tracing}\n[server]\nshutdown_timeout_secs = 1\n\n[[route]]\npath = \"/hello\"\ncomponent = \"hello\"\n\n[component.hello]\nsource = \"{{components}}/hello.wasm\"\n"
        )
    };
    // A collector that never answers: the one export in flight waits for
    // its timeout, the queue (4 spans) fills, and the rest are dropped.
    let silent = Silent::start().await;
    let settings = "max_queue_spans = 4\nmax_export_batch = 4\nexport_timeout_secs = 60";
    let (server, _dir) =
        TestServer::start(&hello(tracing_table(&format!("http://{}", silent.addr), settings))).await;
    let client = http1_client();
    let requests = 20;
    for _ in 0..requests {
        assert_eq!(get(&client, &server.url("/hello")).await.status, 200);
    }
    let traces = &server.app.telemetry.metrics.traces;
    let made = requests * HELLO_SPANS;
    // At most the batch in flight and a full queue are held.
    let dropped = traces.dropped("queue_full");
    assert!((made - 4 - 4..=made).contains(&dropped), "{dropped} of {made} dropped");
    assert_eq!(traces.exported(), 0);
    let metrics = get(&client, &server.admin_url("/metrics")).await.body;
    assert!(
        metrics.contains(&format!("wharf_trace_spans_dropped_total{{reason=\"queue_full\"}} {dropped}")),
        "{metrics}"
    );
    server.stop().await;

    // A collector that is not there: each batch fails and is counted.
    let gone = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let (server, _dir) = TestServer::start(&hello(tracing_table(&format!("http://{gone}"), ""))).await;
    for _ in 0..requests {
        assert_eq!(get(&client, &server.url("/hello")).await.status, 200);
    }
    let tracing = server.app.telemetry.tracing.clone().unwrap();
    tokio::task::spawn_blocking(move || tracing.flush(Duration::from_secs(10))).await.unwrap();
    let traces = &server.app.telemetry.metrics.traces;
    assert_eq!(traces.dropped("export_failed"), requests * HELLO_SPANS);
    assert_eq!((traces.exported(), traces.dropped("queue_full")), (0, 0));
    server.stop().await;
}

/// The example app's aggregate request as a trace, printed as a tree (the
/// README shows one): `cargo test -p wharf-tests --test all -- --ignored
/// --nocapture the_example_apps_aggregate_trace`.
#[tokio::test]
#[ignore = "prints a trace for the README"]
async fn the_example_apps_aggregate_trace() {
    let collector = Collector::start().await;
    let example = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../wharf.toml")).unwrap();
    let example = example.replace("target/components/wasm32-wasip2/release", "{components}");
    let manifest = format!("{}\n{example}", tracing_table(&collector.endpoint(), ""));
    let (server, _dir) = TestServer::start(&manifest).await;
    let reply = get(&http1_client(), &server.url("/aggregate")).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    collector.wait_for("the tree", |s| s.iter().filter(|s| s.kind == SpanKind::Server).count() == 4).await;
    let tracing = server.app.telemetry.tracing.clone().unwrap();
    tokio::task::spawn_blocking(move || tracing.flush(Duration::from_secs(10))).await.unwrap();
    let spans = collector.spans.lock().unwrap().clone();
    let root = spans.iter().find(|s| s.parent.is_empty()).unwrap();
    fn print(spans: &[Got], span: &Got, origin: u64, depth: usize) {
        let keys = [
            "http.route",
            "http.response.status_code",
            "url.full",
            "wharf.component",
            "wharf.instance",
            "db.operation.name",
            "db.system.name",
        ];
        let attributes: Vec<String> =
            keys.iter().filter_map(|k| span.attributes.get(*k).map(|v| format!("{k}={v}"))).collect();
        println!(
            "{:>8.3} ms {:>8.3} ms  {}{} [{:?}] {}",
            (span.start_ns - origin) as f64 / 1e6,
            (span.end_ns - span.start_ns) as f64 / 1e6,
            "  ".repeat(depth),
            span.name,
            span.kind,
            attributes.join(" ")
        );
        let mut under: Vec<&Got> = children(spans, span);
        under.sort_by_key(|s| s.start_ns);
        for child in under {
            print(spans, child, origin, depth + 1);
        }
    }
    println!("trace {}", root.trace_id);
    print(&spans, root, root.start_ns, 0);
    server.stop().await;
}
