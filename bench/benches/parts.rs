//! Where one request's CPU goes, part by part, in process (no socket):
//! wasmtime's own floor (a bare store with only WASI and `wasi:http`, on
//! Wharf's engine settings) for a WASI 0.2 and a WASI 0.3 hello, fresh and
//! reused, beside Wharf's whole request path on the same components.
//! `cargo bench -p wharf-bench --bench parts` (after building the
//! components); prints a Markdown table of microseconds per request.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use std::path::Path;
use std::time::{Duration, Instant};
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};
use wharf::runtime::HandlerKind;
use wharf::runtime::engine::{EngineSettings, build_engine};

/// The allocator `wharf up` runs with (mimalloc, host allocations during a
/// guest's host calls charged to its instance), so Wharf's rows cost what
/// the server's requests do; the bare rows share it.
#[global_allocator]
static GLOBAL: wharf::runtime::host_memory::CountingAllocator =
    wharf::runtime::host_memory::CountingAllocator;

/// Requests a row measures (`PARTS_ROUNDS` overrides, e.g. to profile one).
fn rounds() -> u32 {
    std::env::var("PARTS_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(20_000)
}

/// The least a store can hold to serve `wasi:http`.
struct Bare {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
}

impl WasiView for Bare {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl WasiHttpView for Bare {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: wasmtime_wasi_http::default_hooks(),
        }
    }
}

fn bare_store(engine: &Engine) -> Store<Bare> {
    let mut store = Store::new(
        engine,
        Bare { wasi: WasiCtx::builder().build(), http: WasiHttpCtx::new(), table: ResourceTable::new() },
    );
    store.set_epoch_deadline(u64::MAX / 2);
    store
}

/// Microseconds a request, each part timed separately.
#[derive(Default)]
struct Parts {
    store: Duration,
    instantiate: Duration,
    call: Duration,
    drop: Duration,
}

impl Parts {
    fn row(&self, name: &str, rounds: u32) -> String {
        let us = |d: Duration| d.as_secs_f64() * 1e6 / f64::from(rounds);
        let total = self.store + self.instantiate + self.call + self.drop;
        format!(
            "| {name} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
            us(self.store),
            us(self.instantiate),
            us(self.call),
            us(self.drop),
            us(total)
        )
    }
}

fn request() -> http::Request<Empty<Bytes>> {
    http::Request::get("http://bench/hello").body(Empty::new()).unwrap()
}

async fn bare_p2(engine: &Engine, component: &Component, reuse: bool) -> Parts {
    use wasmtime_wasi_http::p2::bindings::ProxyPre;
    use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
    let mut linker = Linker::<Bare>::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).unwrap();
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).unwrap();
    let pre = ProxyPre::new(linker.instantiate_pre(component).unwrap()).unwrap();
    let mut parts = Parts::default();
    let mut kept = None;
    for round in 0..rounds() + 1000 {
        let measured = round >= 1000;
        let t = Instant::now();
        let (mut store, proxy) = match kept.take() {
            Some(kept) => kept,
            None => {
                let mut store = bare_store(engine);
                let t_store = t.elapsed();
                let t = Instant::now();
                let proxy = pre.instantiate_async(&mut store).await.unwrap();
                if measured {
                    parts.store += t_store;
                    parts.instantiate += t.elapsed();
                }
                (store, proxy)
            }
        };
        let t = Instant::now();
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let incoming = store.data_mut().http().new_incoming_request(Scheme::Http, request()).unwrap();
        let outparam = store.data_mut().http().new_response_outparam(sender).unwrap();
        proxy.wasi_http_incoming_handler().call_handle(&mut store, incoming, outparam).await.unwrap();
        let response = receiver.await.unwrap().unwrap();
        response.into_body().collect().await.unwrap();
        if measured {
            parts.call += t.elapsed();
        }
        if reuse {
            kept = Some((store, proxy));
        } else {
            let t = Instant::now();
            drop(store);
            if measured {
                parts.drop += t.elapsed();
            }
        }
    }
    parts
}

async fn bare_p3(engine: &Engine, component: &Component, reuse: bool) -> Parts {
    use wasmtime_wasi_http::p3::bindings::ServicePre;
    let mut linker = Linker::<Bare>::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).unwrap();
    wasmtime_wasi::p3::add_to_linker(&mut linker).unwrap();
    wasmtime_wasi_http::p3::add_to_linker(&mut linker).unwrap();
    let pre = ServicePre::new(linker.instantiate_pre(component).unwrap()).unwrap();
    let mut parts = Parts::default();
    let mut kept = None;
    for round in 0..rounds() + 1000 {
        let measured = round >= 1000;
        let t = Instant::now();
        let (mut store, service) = match kept.take() {
            Some(kept) => kept,
            None => {
                let mut store = bare_store(engine);
                let t_store = t.elapsed();
                let t = Instant::now();
                let service = pre.instantiate_async(&mut store).await.unwrap();
                if measured {
                    parts.store += t_store;
                    parts.instantiate += t.elapsed();
                }
                (store, service)
            }
        };
        let t = Instant::now();
        let (req, io) =
            wasmtime_wasi_http::p3::Request::from_http(wasmtime_wasi_http::default_hooks(), request());
        store
            .run_concurrent(async |accessor| {
                let response = service.handle(accessor, req).await.unwrap().unwrap();
                let response = accessor
                    .with(|mut access| {
                        response.into_http_with_getter(&mut access, io, <Bare as WasiHttpView>::http)
                    })
                    .unwrap();
                response.into_body().collect().await.unwrap();
                std::future::poll_fn(|cx| accessor.poll_no_interesting_tasks(cx)).await;
            })
            .await
            .unwrap();
        if measured {
            parts.call += t.elapsed();
        }
        if reuse {
            kept = Some((store, service));
        } else {
            let t = Instant::now();
            drop(store);
            if measured {
                parts.drop += t.elapsed();
            }
        }
    }
    parts
}

/// Wharf's whole path (routing, admission, record, store, instance, call,
/// body, drop), timed as one.
async fn wharf_path(app: &std::sync::Arc<wharf::App>, path: &str) -> Duration {
    let peer = "127.0.0.1:1".parse().unwrap();
    let mut total = Duration::ZERO;
    for round in 0..rounds() + 1000 {
        let t = Instant::now();
        let request = http::Request::get(format!("http://bench{path}")).body(Empty::<Bytes>::new()).unwrap();
        let response =
            wharf::http::service::handle(app.clone(), request, wharf::http::service::Caller::direct(peer))
                .await;
        assert_eq!(response.status(), 200);
        response.into_body().collect().await.unwrap();
        if round >= 1000 {
            total += t.elapsed();
        }
    }
    total
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let wasm = |name: &str| root.join(format!("target/components/wasm32-wasip2/release/{name}.wasm"));
    assert!(
        wasm("hello").is_file() && wasm("hello_p3").is_file(),
        "build the components first: cd components && cargo build --release --target wasm32-wasip2"
    );
    let settings = EngineSettings {
        max_instances: 1000,
        max_instance_memory: 128 << 20,
        pooling: true,
        fuel: false,
        epoch_interruption: true,
        pagemap_scan: true,
    };
    let (p2_engine, _) = build_engine(&settings, HandlerKind::P2).unwrap();
    let (p3_engine, _) = build_engine(&settings, HandlerKind::P3).unwrap();
    let p2 = Component::from_file(&p2_engine, wasm("hello")).unwrap();
    let p3 = Component::from_file(&p3_engine, wasm("hello_p3")).unwrap();

    let dir = std::env::temp_dir().join(format!("wharf-parts-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let manifest = format!(
        "[server]\nkey_value = \"memory\"\nadmin_listen = \"off\"\n\
         [[route]]\npath = \"/hello\"\ncomponent = \"hello\"\n\
         [[route]]\npath = \"/hello-p3\"\ncomponent = \"hello-p3\"\n\
         [[route]]\npath = \"/hello-p3-reuse\"\ncomponent = \"hello-p3\"\nreuse = {{ max_requests = 128, max_concurrent = 16 }}\n\
         [component.hello]\nsource = \"{}\"\n[component.hello-p3]\nsource = \"{}\"\n",
        wasm("hello").display(),
        wasm("hello_p3").display()
    );
    std::fs::write(dir.join("wharf.toml"), manifest).unwrap();
    let manifest = wharf::manifest::Manifest::load(&dir.join("wharf.toml"), true).unwrap();
    let app =
        wharf::App::load(&manifest, &wharf::LoadOptions { watch: false, ..Default::default() }).unwrap();

    // `-- NAME` measures only the rows whose name contains NAME (to profile one).
    let only: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let wanted = |name: &str| only.is_empty() || only.iter().any(|o| name.contains(o.as_str()));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        println!(
            "| {} requests, one at a time | store | instantiate | call and body | drop | total |",
            rounds()
        );
        println!("|---|---:|---:|---:|---:|---:|");
        for (name, p3_kind, reuse) in [
            ("wasmtime bare, 0.2, fresh", false, false),
            ("wasmtime bare, 0.2, reused", false, true),
            ("wasmtime bare, 0.3, fresh", true, false),
            ("wasmtime bare, 0.3, reused", true, true),
        ] {
            if wanted(name) {
                let parts = if p3_kind {
                    bare_p3(&p3_engine, &p3, reuse).await
                } else {
                    bare_p2(&p2_engine, &p2, reuse).await
                };
                println!("{}", parts.row(name, rounds()));
            }
        }
        for (name, path) in [
            ("Wharf, 0.2, fresh", "/hello"),
            ("Wharf, 0.3, fresh", "/hello-p3"),
            ("Wharf, 0.3, reused", "/hello-p3-reuse"),
        ] {
            if wanted(name) {
                let total = wharf_path(&app, path).await;
                println!(
                    "| {name} (whole path) | | | | | {:.1} |",
                    total.as_secs_f64() * 1e6 / f64::from(rounds())
                );
            }
        }
    });
    let _ = std::fs::remove_dir_all(&dir);
}
