//! One request's cost in process, without sockets: the whole Wharf request
//! path (routing, admission, the request record, a fresh instance of
//! `hello`, the call, the response body, the drop).
//! `cargo bench -p wharf-bench` (after building the components).

use criterion::{Criterion, criterion_group, criterion_main};
use std::path::Path;

fn instantiate_call_drop(c: &mut Criterion) {
    bench_component(c, "hello");
    bench_component(c, "hello_p3");
}

fn bench_component(c: &mut Criterion, name: &str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let hello = root.join(format!("target/components/wasm32-wasip2/release/{name}.wasm"));
    assert!(
        hello.is_file(),
        "build the components first: cd components && cargo build --release --target wasm32-wasip2"
    );
    let dir = std::env::temp_dir().join(format!("wharf-criterion-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let manifest = format!(
        "[server]\nkey_value = \"memory\"\nadmin_listen = \"off\"\n[[route]]\npath = \"/hello\"\ncomponent = \"hello\"\n[component.hello]\nsource = \"{}\"\n",
        hello.display()
    );
    std::fs::write(dir.join("wharf.toml"), manifest).unwrap();
    let manifest = wharf::manifest::Manifest::load(&dir.join("wharf.toml"), true).unwrap();
    let options = wharf::LoadOptions { watch: false, ..Default::default() };
    let app = wharf::App::load(&manifest, &options).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let peer = "127.0.0.1:1".parse().unwrap();
    c.bench_function(&format!("{name}: instantiate, call, drop (whole request path, no socket)"), |b| {
        b.iter(|| {
            runtime.block_on(async {
                let request = http::Request::get("http://bench/hello")
                    .body(http_body_util::Empty::<bytes::Bytes>::new())
                    .unwrap();
                let response = wharf::http::service::handle(
                    app.clone(),
                    request,
                    wharf::http::service::Caller::direct(peer),
                )
                .await;
                assert_eq!(response.status(), 200);
                http_body_util::BodyExt::collect(response.into_body()).await.unwrap();
            })
        })
    });
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, instantiate_call_drop);
criterion_main!(benches);
