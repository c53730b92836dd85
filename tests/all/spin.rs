//! Spin apps served unchanged: components built with Spin's SDK 7 (WASI
//! 0.3) and on Spin's older interfaces (WASI 0.2), each Spin interface on
//! Wharf's backends with Wharf's permissions, Spin's routing, headers,
//! private routes and service chaining, `spin.toml` with variables, and the
//! example app through the real binary. The answers are the ones Spin's
//! interfaces and documentation give.

use crate::harness::*;
use std::time::Duration;

const SECOND: Duration = Duration::from_secs(1);

/// A Spin app with one component of each Spin interface.
const APP: &str = r#"
spin_manifest_version = 2

[application]
name = "probes"
version = "1.2.3"

[variables]
greeting = { default = "Hello" }
name = { required = true }
api_token = { default = "t0k3n", secret = true }

[[trigger.http]]
route = "/kv"
component = "kv"

[[trigger.http]]
route = "/vars"
component = "vars"

[[trigger.http]]
route = "/sql"
component = "sql"

[[trigger.http]]
route = "/wasi-kv"
component = "wasi-kv"

[[trigger.http]]
route = "/v2"
component = "v2"

[[trigger.http]]
route = "/wharf-kv"
component = "wharf-kv"

[component.kv]
source = "{components}/spin_kv.wasm"
key_value_stores = ["default", "other"]

[component.vars]
source = "{components}/spin_variables.wasm"
[component.vars.variables]
message = "{{ greeting }}, {{ name }}!"
token = "{{ api_token }}"

[component.sql]
source = "{components}/spin_sqlite.wasm"
sqlite_databases = ["default", "second"]

[component.wasi-kv]
source = "{components}/spin_wasi_kv.wasm"
key_value_stores = ["default"]
variables = { region = "eu", tier = "gold" }

[component.v2]
source = "{components}/spin2_probe.wasm"
key_value_stores = ["default"]
sqlite_databases = ["default"]
variables = { who = "{{ name }}" }

[component.wharf-kv]
source = "{components}/kv.wasm"
key_value_stores = ["default"]
"#;

/// Wharf's settings beside the Spin app: the in-memory store, and the
/// required variable.
const SETTINGS: &str = r#"
[server]
key_value = "memory"
"#;

async fn start() -> (TestServer, tempfile::TempDir) {
    // `name` is required: give it a default for these tests by declaring
    // it again would change the app; the environment is the process's, so
    // the required value comes from a wharf.toml-free route: the manifest
    // with a default.
    let app = APP.replace("name = { required = true }", "name = { default = \"Wharf\" }");
    TestServer::start_spin(&app, Some(SETTINGS)).await
}

async fn body(server: &TestServer, path: &str) -> (u16, String) {
    let reply = get(&http1_client(), &server.url(path)).await;
    (reply.status, reply.body)
}

#[tokio::test]
async fn spin_key_value_3_from_sdk_7_keeps_and_shares_data() {
    let (server, _dir) = start().await;
    for n in 1..=5 {
        assert_eq!(body(&server, "/kv?op=incr&key=visits").await, (200, n.to_string()));
    }
    assert_eq!(body(&server, "/kv?op=set&key=a&value=1").await, (200, "ok".into()));
    assert_eq!(body(&server, "/kv?op=exists&key=a").await, (200, "true".into()));
    assert_eq!(body(&server, "/kv?op=keys").await, (200, "a,visits".into()));
    assert_eq!(body(&server, "/kv?op=delete&key=a").await, (200, "ok".into()));
    assert_eq!(body(&server, "/kv?op=get&key=a").await, (200, "(none)".into()));
    assert_eq!(body(&server, "/kv?op=keys&store=other").await, (200, "".into()), "stores are apart");
    // A store the component does not list: Spin's access-denied.
    assert_eq!(body(&server, "/kv?op=get&store=secret").await, (500, "open: Error::AccessDenied".into()));
    // The same store through wasi:keyvalue (Wharf's own component) and
    // through the draft Spin ships.
    assert_eq!(body(&server, "/wharf-kv?op=get&key=visits").await.1, r#"{"value":"5"}"#);
    assert_eq!(body(&server, "/wasi-kv?op=get&key=visits").await, (200, "5".into()));
    server.stop().await;
}

#[tokio::test]
async fn spin_variables_come_from_the_apps_variables() {
    let (server, _dir) = start().await;
    assert_eq!(body(&server, "/vars?name=message").await, (200, "Hello, Wharf!".into()));
    assert_eq!(body(&server, "/vars?name=token").await, (200, "t0k3n".into()));
    let (status, error) = body(&server, "/vars?name=nope").await;
    assert!(status == 500 && error.starts_with("Error::Undefined("), "{error}");
    let (status, error) = body(&server, "/vars?name=Not-A-Name").await;
    assert!(status == 500 && error.starts_with("Error::InvalidName("), "{error}");
    // The standard config interface at Spin's version sees the same.
    assert_eq!(body(&server, "/wasi-kv?op=config&key=region").await, (200, "eu".into()));
    assert_eq!(body(&server, "/wasi-kv?op=config&key=none").await, (200, "(none)".into()));
    assert_eq!(body(&server, "/wasi-kv?op=config-all").await, (200, "region=eu,tier=gold".into()));
    server.stop().await;
}

#[tokio::test]
async fn variables_come_from_the_command_line_then_the_environment_then_the_default() {
    let dir = tempfile::tempdir().unwrap();
    let app = APP.replace("{components}", &component_dir().display().to_string());
    std::fs::write(dir.path().join("spin.toml"), &app).unwrap();
    std::fs::write(dir.path().join("wharf.toml"), SETTINGS).unwrap();
    let manifest = dir.path().join("spin.toml");
    let manifest = manifest.to_string_lossy();
    // The required variable from the environment, the default overridden
    // on the command line (which wins over the environment).
    let wharf = WharfProcess::run(
        &["--manifest", &manifest, "--variable", "greeting=Howdy"],
        &[("SPIN_VARIABLE_NAME", "Env"), ("SPIN_VARIABLE_GREETING", "Ignored")],
    );
    let reply = get(&http1_client(), &wharf.url("/vars?name=message")).await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "Howdy, Env!"));
    drop(wharf);
    // Without it, the app does not start, and says which variable.
    let output =
        std::process::Command::new(wharf_binary()).args(["check", "--manifest", &manifest]).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("variable \"name\" is required") && stderr.contains("SPIN_VARIABLE_NAME"),
        "{stderr}"
    );
}

#[tokio::test]
async fn spin_sqlite_3_1_runs_statements_per_database_with_its_counters() {
    let (server, dir) = start().await;
    assert_eq!(body(&server, "/sql?op=setup").await, (200, "ok".into()));
    assert_eq!(body(&server, "/sql?op=add&name=rex").await, (200, "rowid 1 changes 1".into()));
    assert_eq!(body(&server, "/sql?op=add&name=tom").await, (200, "rowid 2 changes 1".into()));
    assert_eq!(body(&server, "/sql?op=list").await, (200, "rex\ntom".into()));
    // Another label is another database.
    assert_eq!(body(&server, "/sql?op=setup&db=second").await, (200, "ok".into()));
    assert_eq!(body(&server, "/sql?op=list&db=second").await, (200, "".into()));
    let (status, error) = body(&server, "/sql?op=bad").await;
    assert!(status == 500 && error.starts_with("Error::Io(") && error.contains("nowhere"), "{error}");
    // A database the component does not list.
    assert_eq!(body(&server, "/sql?op=list&db=other").await, (500, "open: Error::AccessDenied".into()));
    assert!(dir.path().join(".wharf/sqlite/default.db").is_file());
    assert!(dir.path().join(".wharf/sqlite/second.db").is_file());
    server.stop().await;
}

#[tokio::test]
async fn the_draft_keyvalue_spin_ships_increments_and_compares_and_swaps() {
    let (server, _dir) = start().await;
    assert_eq!(body(&server, "/wasi-kv?op=incr&key=n&by=5").await, (200, "5".into()));
    assert_eq!(body(&server, "/wasi-kv?op=incr&key=n&by=-7").await, (200, "-2".into()), "signed");
    assert_eq!(body(&server, "/wasi-kv?op=cas&key=c&value=first").await, (200, "swapped".into()));
    assert_eq!(body(&server, "/wasi-kv?op=get&key=c").await, (200, "first".into()));
    // A write between the read and the swap: the swap fails, the write stays.
    assert_eq!(
        body(&server, "/wasi-kv?op=cas&key=c&value=mine&meanwhile=theirs").await,
        (200, "changed".into())
    );
    assert_eq!(body(&server, "/wasi-kv?op=get&key=c").await, (200, "theirs".into()));
    assert_eq!(body(&server, "/wasi-kv?op=keys").await, (200, "c,n".into()));
    server.stop().await;
}

#[tokio::test]
async fn spins_older_interfaces_serve_a_wasi_0_2_component() {
    let (server, _dir) = start().await;
    assert_eq!(body(&server, "/v2?op=incr&key=k").await, (200, "1".into()));
    assert_eq!(body(&server, "/v2?op=incr&key=k").await, (200, "2".into()));
    assert_eq!(body(&server, "/v2?op=keys").await, (200, "k".into()));
    assert_eq!(body(&server, "/v2?op=var&name=who").await, (200, "Wharf".into()));
    assert_eq!(body(&server, "/v2?op=sql&name=a").await, (200, "a".into()));
    assert_eq!(body(&server, "/v2?op=sql&name=b").await, (200, "a,b".into()));
    assert_eq!(body(&server, "/v2?op=denied").await, (500, "Error::AccessDenied".into()));
    server.stop().await;
}

#[tokio::test]
async fn a_spin_interface_wharf_does_not_serve_fails_at_load_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let app = r#"
spin_manifest_version = 2
[application]
name = "redis"
[[trigger.http]]
route = "/..."
component = "redis"
[component.redis]
source = "{components}/spin_redis.wasm"
"#
    .replace("{components}", &component_dir().display().to_string());
    std::fs::write(dir.path().join("spin.toml"), app).unwrap();
    let manifest = wharf::manifest::Manifest::load(&dir.path().join("spin.toml"), true).unwrap();
    let error = match wharf::App::load(&manifest, &wharf::LoadOptions::default()) {
        Ok(_) => panic!("an app importing spin:redis loaded"),
        Err(error) => format!("{error:#}"),
    };
    assert!(
        error.contains(
            "it imports spin:redis/redis@3.0.0, a Spin interface (Redis) that Wharf does not serve"
        ),
        "{error}"
    );
}

/// A Spin app of routes to the `echo` component, which answers the
/// request as it saw it (`?inspect`).
const ROUTES: &str = r#"
spin_manifest_version = 2
[application]
name = "routes"

[[trigger.http]]
route = "/exact"
component = "exact"

[[trigger.http]]
route = "/users/:id/..."
component = "users"

[[trigger.http]]
route = "/..."
component = "fallback"

[[trigger.http]]
route = { private = true }
component = "hidden"

[[trigger.http]]
route = "/chain/..."
component = "chainer"

[component.exact]
source = "{components}/echo.wasm"
[component.users]
source = "{components}/echo.wasm"
[component.fallback]
source = "{components}/echo.wasm"
[component.hidden]
source = "{components}/echo.wasm"
[component.chainer]
source = "{components}/probe_p3.wasm"
allowed_outbound_hosts = ["http://hidden.spin.internal", "http://exact.spin.internal"]
"#;

/// The value of header `name` in what `echo?inspect` saw.
fn header<'a>(seen: &'a serde_json::Value, name: &str) -> &'a str {
    seen["headers"]
        .as_array()
        .and_then(|headers| headers.iter().find(|pair| pair[0] == name))
        .and_then(|pair| pair[1].as_str())
        .unwrap_or_else(|| panic!("no {name} in {seen}"))
}

#[tokio::test]
async fn spin_routes_headers_and_private_routes_behave_as_on_spin() {
    let (server, _dir) = TestServer::start_spin(ROUTES, Some("[server]\nkey_value = \"memory\"")).await;
    let client = http1_client();
    let inspect = |path: &str| {
        let (client, url) = (client.clone(), server.url(path));
        async move { get(&client, &url).await.json() }
    };
    let seen = inspect("/exact?inspect&x=1").await;
    assert_eq!(header(&seen, "spin-matched-route"), "/exact");
    assert_eq!(header(&seen, "spin-component-route"), "/exact");
    assert_eq!(header(&seen, "spin-raw-component-route"), "/exact");
    assert_eq!(header(&seen, "spin-path-info"), "");
    assert_eq!(header(&seen, "spin-base-path"), "/");
    assert_eq!(header(&seen, "spin-full-url"), format!("http://{}/exact?inspect&x=1", server.addr));
    assert!(header(&seen, "spin-client-addr").starts_with("127.0.0.1:"));

    let seen = inspect("/users/42/posts/7?inspect").await;
    assert_eq!(header(&seen, "spin-matched-route"), "/users/:id/...");
    assert_eq!(header(&seen, "spin-component-route"), "/users/:id");
    assert_eq!(header(&seen, "spin-path-info"), "/posts/7");
    assert_eq!(header(&seen, "spin-path-match-id"), "42");

    // Exact beats wildcard; the rest falls to the root wildcard, whose path
    // info keeps a trailing slash as Spin's does.
    let seen = inspect("/exact/more/?inspect").await;
    assert_eq!(header(&seen, "spin-matched-route"), "/...");
    assert_eq!(header(&seen, "spin-path-info"), "/exact/more/");
    // A private route is never matched by its path.
    let seen = inspect("/hidden?inspect").await;
    assert_eq!(header(&seen, "spin-matched-route"), "/...");
    // Spin's well-known paths.
    assert_eq!(get(&client, &server.url("/.well-known/spin/health")).await.body, "OK");
    assert_eq!(get(&client, &server.url("/.well-known/spin/info")).await.json()["name"], "routes");
    server.stop().await;
}

#[tokio::test]
async fn service_chaining_reaches_a_private_component_only_when_allowed() {
    let (server, _dir) = TestServer::start_spin(ROUTES, Some("[server]\nkey_value = \"memory\"")).await;
    let client = http1_client();
    let chain =
        |target: &str| server.url(&format!("/chain?fetch=http://{target}.spin.internal/some/path?inspect"));
    let reply = get(&client, &chain("hidden")).await;
    let (status, seen) = reply.body.split_once(' ').unwrap();
    assert_eq!(status, "200", "{}", reply.body);
    let seen: serde_json::Value = serde_json::from_str(seen).unwrap();
    assert_eq!(header(&seen, "spin-matched-route"), "/...");
    assert_eq!(header(&seen, "spin-path-info"), "/some/path");
    assert_eq!(header(&seen, "spin-client-addr"), "0.0.0.0:0");
    let passed_on = |name: &str| seen["headers"].as_array().unwrap().iter().any(|pair| pair[0] == name);
    assert!(!passed_on("host"), "the chaining host is not passed on: {seen}");
    // Not in allowed_outbound_hosts: denied.
    let reply = get(&client, &chain("users")).await;
    assert!(reply.body.contains("HttpRequestDenied"), "{}", reply.body);
    eventually("the chained request logged", 5 * SECOND, || {
        server.access_lines().iter().any(|l| l["route"] == "/..." && l["path"] == "/some/path")
    })
    .await;
    server.stop().await;
}

#[tokio::test]
async fn the_example_spin_app_runs_unchanged_through_wharf_up() {
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../components/spin-app/spin.toml");
    let data = tempfile::tempdir().unwrap();
    let wharf = WharfProcess::run(
        &[
            "--manifest",
            &example.to_string_lossy(),
            "--data-dir",
            &data.path().to_string_lossy(),
            "--kv",
            "memory",
        ],
        &[],
    );
    let client = http1_client();
    for visit in 1..=3 {
        let reply = get(&client, &wharf.url("/anything")).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(
            reply.body,
            format!("Hello, Wharf (reached as /... /name)! Visit {visit}, {visit} logged.\n")
        );
    }
    assert!(data.path().join("sqlite/default.db").is_file());
}

/// A TCP server on a free loopback port that answers each `ping` line with
/// `pong N` (N: the connections it has taken).
async fn pong_server() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut taken = 0;
        while let Ok((stream, _)) = listener.accept().await {
            taken += 1;
            tokio::spawn(async move {
                use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
                let (read, mut write) = stream.into_split();
                let mut line = String::new();
                if tokio::io::BufReader::new(read).read_line(&mut line).await.is_ok() {
                    let _ = write.write_all(format!("pong {taken}\n").as_bytes()).await;
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn outbound_tcp_goes_where_allowed_outbound_hosts_says_within_the_budget() {
    let pong = pong_server().await;
    let elsewhere = pong_server().await;
    let app = format!(
        r#"
spin_manifest_version = 2
[application]
name = "sockets"
[[trigger.http]]
route = "/tcp"
component = "tcp"
[[trigger.http]]
route = "/closed"
component = "closed"
[component.tcp]
source = "{{components}}/tcp_probe.wasm"
allowed_outbound_hosts = ["tcp://127.0.0.0/8:{}"]
[component.closed]
source = "{{components}}/tcp_probe.wasm"
allowed_outbound_hosts = ["http://127.0.0.1:{}"]
"#,
        pong.port(),
        pong.port()
    );
    let settings = "[server]\nkey_value = \"memory\"\n[component.tcp]\nmax_outbound_requests = 3\n";
    let (server, _dir) = TestServer::start_spin(&app, Some(settings)).await;
    let denied = || server.app.telemetry.metrics.outbound.denied_total();
    // Within the range and the port, within the budget of three.
    assert_eq!(body(&server, &format!("/tcp?addr={pong}&n=3")).await, (200, "ok 3 pong 3".into()));
    // The fourth connection is past the budget.
    let (status, answer) = body(&server, &format!("/tcp?addr={pong}&n=4")).await;
    assert_eq!(status, 502);
    assert!(answer.starts_with("failed after 3:"), "{answer}");
    // Another port: not allowed, and counted.
    let before = denied();
    let (status, answer) = body(&server, &format!("/tcp?addr={elsewhere}")).await;
    assert!(status == 502 && answer.starts_with("failed after 0:"), "{answer}");
    assert_eq!(denied(), before + 1, "the denial was counted");
    // A component whose entries are all http:// has no sockets at all.
    let (status, answer) = body(&server, &format!("/closed?addr={pong}")).await;
    assert!(status == 502 && answer.starts_with("failed after 0:"), "{answer}");
    server.stop().await;
}
