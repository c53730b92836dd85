//! The servers under test, each its own process: the native baseline,
//! Wharf (on each store, and an earlier build for before/after runs),
//! `wasmtime serve` as it ships and tuned, and a `redis-server` for the
//! Redis workloads.

use crate::workload::Workload;
use anyhow::{Context, Result, bail};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How to start one server.
pub struct Launch {
    pub name: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    /// Answers 200 here once serving.
    pub ready_path: String,
    pub workloads: Vec<Workload>,
    /// Serves every workload at `/` (`wasmtime serve` runs one component).
    pub single_route: bool,
    /// Wharf's admin address, to read `/healthz`.
    pub admin: Option<SocketAddr>,
    /// Start on core 0 only (the load generator then runs on core 1).
    pub pinned: bool,
    /// Where its stderr goes.
    pub log: Option<PathBuf>,
    /// Environment variables it starts with.
    pub env: Vec<(String, String)>,
}

/// One server under test, as a running process.
pub struct Server {
    pub name: String,
    pub child: Child,
    pub addr: SocketAddr,
    pub single_route: bool,
    pub admin: Option<SocketAddr>,
    pub pinned: bool,
}

impl Server {
    pub fn path(&self, workload: Workload) -> &'static str {
        if self.single_route { "/" } else { workload.path() }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

fn stop(child: &mut Child) {
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Launch {
    pub fn start(&self) -> Result<Server> {
        let port = free_port()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut command = if self.pinned {
            let mut command = quiet_command("taskset");
            command.args(["-c", "0"]).arg(&self.program);
            command
        } else {
            quiet_command(&self.program)
        };
        command.args(self.args.iter().map(|a| a.replace("{port}", &port.to_string())));
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        match &self.log {
            Some(log) => command.stderr(std::fs::File::create(log)?),
            None => command.stderr(Stdio::null()),
        };
        let mut child = command.spawn().with_context(|| format!("start {}", self.program.display()))?;
        wait_until_serving(addr, &self.ready_path, &mut child)
            .with_context(|| format!("{} did not start", self.name))?;
        Ok(Server {
            name: self.name.clone(),
            child,
            addr,
            single_route: self.single_route,
            admin: self.admin,
            pinned: self.pinned,
        })
    }
}

pub fn native(pinned: bool) -> Result<Launch> {
    Ok(Launch {
        name: "native".into(),
        program: std::env::current_exe()?,
        args: vec!["native".into(), "--port".into(), "{port}".into()],
        ready_path: "/hello".into(),
        workloads: vec![Workload::Hello, Workload::CounterMemory, Workload::Sleep],
        single_route: false,
        admin: None,
        pinned,
        log: None,
        env: Vec::new(),
    })
}

/// Wharf (`binary`) on `manifest` with `extra` arguments.
pub fn wharf(
    name: &str,
    binary: &Path,
    root: &Path,
    manifest: &str,
    extra: &[String],
    workloads: Vec<Workload>,
    pinned: bool,
) -> Result<Launch> {
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let mut args: Vec<String> = vec!["up".into(), "--manifest".into()];
    args.push(root.join("bench").join(manifest).display().to_string());
    args.extend(["--listen".into(), "127.0.0.1:{port}".into(), "--admin-listen".into(), admin.to_string()]);
    args.extend(extra.iter().cloned());
    Ok(Launch {
        name: name.into(),
        program: binary.to_path_buf(),
        args,
        ready_path: workloads[0].path().into(),
        workloads,
        single_route: false,
        admin: Some(admin),
        pinned,
        log: Some(root.join(format!("target/bench-{}.log", name.replace(' ', "-")))),
        env: Vec::new(),
    })
}

/// `wasmtime serve` on `component`: as it ships, or tuned as its docs
/// suggest for throughput (pooling allocator, pagemap scan, keep-resident).
pub fn wasmtime(
    name: &str,
    wasmtime: &Path,
    component: &Path,
    tuned: bool,
    p3: bool,
    pinned: bool,
) -> Launch {
    let mut args: Vec<String> =
        vec!["serve".into(), "-Scli".into(), "--addr".into(), "127.0.0.1:{port}".into()];
    if p3 {
        args.extend(["-Sp3".into(), "-Wcomponent-model-async".into()]);
    }
    if tuned {
        args.extend([
            "-O".into(),
            "pooling-allocator=y,pooling-pagemap-scan=y,pooling-decommit-batch-size=100,\
             pooling-memory-keep-resident=10485760,pooling-table-keep-resident=1048576,\
             pooling-total-component-instances=4000,pooling-total-core-instances=40000,\
             pooling-total-memories=8000,pooling-total-tables=16000,pooling-total-stacks=4000"
                .into(),
        ]);
    }
    args.push(component.display().to_string());
    Launch {
        name: name.into(),
        program: wasmtime.to_path_buf(),
        args,
        ready_path: "/".into(),
        workloads: vec![if p3 { Workload::HelloP3 } else { Workload::Hello }],
        single_route: true,
        admin: None,
        pinned,
        log: None,
        env: Vec::new(),
    }
}

/// A `redis-server` on a free loopback port, without persistence (the
/// counter's durability on Redis is Redis's configuration, not Wharf's).
pub struct Redis {
    child: Child,
    pub url: String,
    pub version: String,
}

impl Redis {
    pub fn start() -> Result<Option<Self>> {
        let Some(program) = which("redis-server") else { return Ok(None) };
        let port = free_port()?;
        let version = Command::new(&program)
            .arg("--version")
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout).split_whitespace().nth(2).unwrap_or("").replace("v=", "")
            })
            .unwrap_or_default();
        let child = quiet_command(&program)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stderr(Stdio::null())
            .spawn()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            anyhow::ensure!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Some(Self { child, url: format!("redis://127.0.0.1:{port}/0"), version }))
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

pub fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|dir| Path::new(dir).join(name)).find(|p| p.is_file())
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Servers are started without `RUST_BACKTRACE` (it cost wasmtime ~10%).
fn quiet_command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut command = Command::new(program);
    command.env_remove("RUST_BACKTRACE").stdin(Stdio::null()).stdout(Stdio::null());
    command
}

fn wait_until_serving(addr: SocketAddr, path: &str, child: &mut Child) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            bail!("server exited with {status} before serving");
        }
        if let Ok(mut stream) = std::net::TcpStream::connect(addr) {
            use std::io::{Read, Write};
            let _ = write!(stream, "GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n");
            let mut reply = String::new();
            let _ = stream.read_to_string(&mut reply);
            if reply.starts_with("HTTP/1.1 200") {
                return Ok(());
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "server on {addr} did not answer 200 on {path}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The `pool` section of a Wharf server's `/healthz`.
pub fn pool_mechanisms(admin: SocketAddr) -> Option<serde_json::Value> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(admin).ok()?;
    write!(stream, "GET /healthz HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n").ok()?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply).ok()?;
    let body = reply.split_once("\r\n\r\n")?.1;
    let health: serde_json::Value = serde_json::from_str(body).ok()?;
    Some(health["pool"].clone())
}
