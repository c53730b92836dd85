//! The `wharf` command: parse arguments, load the app, bind, serve.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use wharf::manifest::{KeyValueBackendKind, Manifest};

/// mimalloc, counting the host memory each instance makes the host hold.
#[global_allocator]
static GLOBAL: wharf::runtime::host_memory::CountingAllocator =
    wharf::runtime::host_memory::CountingAllocator;

#[derive(Parser)]
#[command(name = "wharf", version, about = "Serve WebAssembly HTTP components, a fresh instance per request")]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value = "pretty", env = "WHARF_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the app described by the manifest.
    Up {
        #[command(flatten)]
        app: AppArgs,
        /// Address to listen on (overrides `server.listen`).
        #[arg(long, env = "WHARF_LISTEN")]
        listen: Option<SocketAddr>,
        /// Key-value backend (overrides `server.key_value`).
        #[arg(long, value_enum)]
        kv: Option<KvArg>,
        /// Redis URL for `--kv redis` and shared rate limits (overrides
        /// `server.redis_url`).
        #[arg(long, env = "WHARF_REDIS_URL")]
        redis_url: Option<String>,
        /// Admin listener address, or `off` (overrides `server.admin_listen`).
        #[arg(long, env = "WHARF_ADMIN_LISTEN")]
        admin_listen: Option<String>,
        /// PEM certificate chain: serve HTTPS (with `--tls-key`).
        #[arg(long, requires = "tls_key", env = "WHARF_TLS_CERT")]
        tls_cert: Option<PathBuf>,
        /// PEM private key for `--tls-cert`.
        #[arg(long, requires = "tls_cert", env = "WHARF_TLS_KEY")]
        tls_key: Option<PathBuf>,
        /// Turn epoch interruption off, to measure what it costs. CPU-bound
        /// guests then can neither be stopped nor made to yield.
        #[arg(long, hide = true)]
        no_epoch_interruption: bool,
        /// Do not use the kernel's pagemap scan for pool resets, to measure
        /// the fallback other kernels take.
        #[arg(long, hide = true)]
        no_pagemap_scan: bool,
        /// Allocate every instance on demand instead of from the pool, to
        /// measure what the pool saves.
        #[arg(long, hide = true)]
        no_pooling: bool,
    },
    /// Validate the manifest and its components without serving.
    Check {
        #[command(flatten)]
        app: AppArgs,
    },
}

#[derive(clap::Args)]
struct AppArgs {
    /// Path of the app manifest: a wharf.toml or a Spin app's spin.toml.
    /// Default: wharf.toml here, else spin.toml (with a wharf.toml beside
    /// it as Wharf's settings).
    #[arg(long, short, env = "WHARF_MANIFEST")]
    manifest: Option<PathBuf>,
    /// Run each component's build command first.
    #[arg(long)]
    build: bool,
    /// A Spin app's variable (repeatable; wins over SPIN_VARIABLE_NAME and
    /// the default).
    #[arg(long = "variable", value_name = "NAME=VALUE", value_parser = parse_variable)]
    variables: Vec<(String, String)>,
    /// Directory for the app's data: key-value, SQLite, staged files,
    /// compile cache (overrides `server.data_dir`; Spin's `--state-dir`).
    #[arg(long, env = "WHARF_DATA_DIR")]
    data_dir: Option<PathBuf>,
}

fn parse_variable(text: &str) -> Result<(String, String), String> {
    let (name, value) = text.split_once('=').ok_or("expected NAME=VALUE")?;
    Ok((name.to_string(), value.to_string()))
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Pretty,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum KvArg {
    Redb,
    Memory,
    Redis,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let (_flush_logs_on_exit, access_log) = init_logging(cli.log_format);
    match cli.command {
        Command::Check { app } => {
            let manifest = load_manifest(&app)?;
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let _in_runtime = runtime.enter();
            wharf::App::load(&manifest, &wharf::LoadOptions { watch: false, ..Default::default() })?;
            println!("{}: ok ({} routes)", manifest.path.display(), manifest.routes.len());
            Ok(())
        }
        Command::Up {
            app,
            listen,
            kv,
            redis_url,
            admin_listen,
            tls_cert,
            tls_key,
            no_epoch_interruption,
            no_pagemap_scan,
            no_pooling,
        } => {
            let mut manifest = load_manifest(&app)?;
            if let Some(listen) = listen {
                manifest.server.listen = listen;
            }
            if let Some(kv) = kv {
                manifest.server.key_value = match kv {
                    KvArg::Redb => KeyValueBackendKind::Redb,
                    KvArg::Memory => KeyValueBackendKind::Memory,
                    KvArg::Redis => KeyValueBackendKind::Redis,
                };
            }
            if let Some(url) = redis_url {
                manifest.server.redis_url = url;
            }
            if let Some(admin) = admin_listen {
                manifest.server.admin_listen = match admin.as_str() {
                    "off" => None,
                    addr => Some(
                        addr.parse().with_context(|| format!("--admin-listen {addr:?} is not an address"))?,
                    ),
                };
            }
            if let (Some(cert), Some(key)) = (tls_cert, tls_key) {
                manifest.server.tls = Some(wharf::manifest::TlsFiles { cert, key });
            }
            // Idle connections are cheap; let the connection cap, not the
            // default descriptor limit, decide how many we hold.
            let _ = rlimit::increase_nofile_limit(u64::MAX);
            let options = wharf::LoadOptions {
                epoch_interruption: !no_epoch_interruption,
                pagemap_scan: !no_pagemap_scan,
                pooling: !no_pooling,
                access_log: Some(access_log),
                ..Default::default()
            };
            // The app is loaded inside the main runtime: the Redis
            // connection (when there is one) lives on it.
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let app = {
                let _in_runtime = runtime.enter();
                wharf::App::load(&manifest, &options)?
            };
            return_compilation_memory();
            let listeners = wharf::Listeners::bind_for(&manifest.server)?;
            runtime.block_on(async move {
                let shutdown = wharf::app::signals::shutdown_signal(app.clone());
                wharf::run(listeners, app, shutdown).await
            })
        }
    }
}

/// Compiling components (cranelift, on rayon's threads) is the largest
/// allocation a server makes, and it is over once the app is loaded: every
/// thread that compiled hands its freed memory back to the kernel now,
/// rather than keep it for allocations that never come.
fn return_compilation_memory() {
    fn collect() {
        // SAFETY: `mi_collect` only walks and releases the calling thread's
        // own free memory; it may be called at any time.
        #[allow(unsafe_code, reason = "mimalloc's collect has no safe wrapper")]
        unsafe {
            libmimalloc_sys::mi_collect(true);
        }
    }
    rayon::broadcast(|_| collect());
    collect();
}

fn load_manifest(args: &AppArgs) -> Result<Manifest> {
    let path = match &args.manifest {
        Some(path) => path.clone(),
        None => Manifest::discover(std::path::Path::new(""))?,
    };
    let options = wharf::manifest::ManifestOptions {
        variables: args.variables.clone(),
        data_dir: args.data_dir.clone(),
    };
    if args.build {
        let manifest = Manifest::load_with(&path, false, &options)?;
        wharf::manifest::build::build_components(&manifest).context("build failed")?;
    }
    Manifest::load_with(&path, true, &options)
}

/// Logs go to stderr. Request lines are gathered per runtime thread and
/// written when the thread runs out of work (`telemetry::batch`); the rest
/// go through a background writer. Nothing is dropped (the writer's queue
/// blocks when full); the guard flushes on exit.
fn init_logging(
    format: LogFormat,
) -> (tracing_appender::non_blocking::WorkerGuard, Arc<wharf::telemetry::access_log::AccessLog>) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("wharf-log")
        .finish(std::io::BufWriter::with_capacity(64 << 10, std::io::stderr()));
    let access_format = match format {
        LogFormat::Pretty => wharf::telemetry::access_log::AccessLogFormat::Pretty,
        LogFormat::Json => wharf::telemetry::access_log::AccessLogFormat::Json,
    };
    let access_log = Arc::new(wharf::telemetry::access_log::AccessLog::batched_stderr(access_format));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer);
    match format {
        LogFormat::Pretty => builder.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    (guard, access_log)
}
