//! Loading a component: its bytes are checked (a component, not a core
//! module or something else), compiled or taken from the compile cache,
//! checked against the linker (every import must be one Wharf provides) and
//! for the handler it exports, and pre-instantiated. A [`LoadedComponent`]
//! is what requests instantiate.

use super::Runtime;
use super::cache::CacheOutcome;
use super::engine::HandlerKind;
use super::host::Host;
use crate::manifest::{AllowList, ComponentSpec, InstanceLimits};
use anyhow::{Context, Result, anyhow, bail};
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;
use wasmtime::Engine;
use wasmtime::component::{Component, Linker};
use wasmtime_wasi_config::WasiConfigVariables;

/// The export of a WASI 0.2 HTTP component (any 0.2.x version).
const P2_HANDLER_PREFIX: &str = "wasi:http/incoming-handler@0.2.";
/// The export of a WASI 0.3 HTTP component, any version...
const P3_HANDLER_PREFIX: &str = "wasi:http/handler@";
/// ...of which Wharf (wasmtime 48) serves this one.
const P3_HANDLER: &str = "wasi:http/handler@0.3.0";
/// What Wharf serves, for error messages.
const SERVED: &str = "wasi:http/incoming-handler@0.2.x (WASI 0.2) or wasi:http/handler@0.3.0 (WASI 0.3)";

/// A component compiled, checked against the linker and pre-instantiated.
pub struct LoadedComponent {
    /// Name from the manifest.
    pub name: String,
    /// The `.wasm` file it was loaded from.
    pub source: PathBuf,
    /// SHA-256 of the file's bytes, hex.
    pub digest: String,
    /// When it was loaded.
    pub loaded_at: SystemTime,
    /// Whether its compiled code came from the on-disk cache.
    pub cache: CacheOutcome,
    /// WASI 0.2 or 0.3.
    pub kind: HandlerKind,
    /// Whether it was loaded for instance reuse (on the WASI 0.3 engine).
    pub reused: bool,
    pub(crate) engine: wasmtime::Engine,
    pub(crate) handler: HandlerPre,
    pub(crate) config: Arc<WasiConfigVariables>,
    /// The same values, for Spin's variables interfaces.
    pub(crate) variables: crate::capabilities::spin::variables::Variables,
    pub(crate) environment: Arc<[(String, String)]>,
    pub(crate) files: Arc<[crate::manifest::FileMount]>,
    pub(crate) key_value_stores: Arc<[String]>,
    pub(crate) sqlite_databases: Arc<[String]>,
    pub(crate) limits: InstanceLimits,
    pub(crate) allowed_outbound_hosts: Arc<AllowList>,
    pub(crate) name_for_logs: Arc<str>,
}

/// The pre-instantiated handler, by WASI version.
pub(crate) enum HandlerPre {
    /// `wasi:http/incoming-handler@0.2.x`.
    P2(wasmtime_wasi_http::p2::bindings::ProxyPre<Host>),
    /// `wasi:http/handler@0.3.0`.
    P3(wasmtime_wasi_http::p3::bindings::ServicePre<Host>),
}

/// Reads one component, finds which handler it exports, compiles it (or
/// loads it from the cache) with that kind's engine, and checks its
/// imports and its share of the pool. `reused`: a route reuses its
/// instances, which takes the WASI 0.3 engine even for a 0.2 handler.
pub fn load(runtime: &Runtime, spec: &ComponentSpec, reused: bool) -> Result<LoadedComponent> {
    let bytes = std::fs::read(&spec.source).context("cannot read the component file")?;
    check_is_component(&bytes)?;
    let kind = handler_kind(&bytes)?;
    let engine_kind = if reused { HandlerKind::P3 } else { kind };
    let parts = runtime.engine_for(engine_kind)?;
    let digest = hex(&Sha256::digest(&bytes));
    let (component, cache) = match &parts.compile_cache {
        Some(cache) => cache.load_or_compile(&parts.engine, &bytes, &digest)?,
        None => (super::cache::compile(&parts.engine, &bytes)?, CacheOutcome::Disabled),
    };
    super::limits::check_shares(&component)?;
    let handler = pre_instantiate(&parts.engine, &parts.linker, &component, kind)?;
    Ok(LoadedComponent {
        kind,
        reused,
        engine: parts.engine.clone(),
        name: spec.name.clone(),
        source: spec.source.clone(),
        digest,
        cache,
        loaded_at: SystemTime::now(),
        handler,
        config: Arc::new(spec.config.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()),
        variables: crate::capabilities::spin::variables::Variables(Arc::new(spec.config.clone())),
        environment: spec.environment.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        files: spec.files.clone().into(),
        key_value_stores: spec.key_value_stores.clone().into(),
        sqlite_databases: spec.sqlite_databases.clone().into(),
        limits: spec.limits.clone(),
        allowed_outbound_hosts: Arc::new(spec.allowed_outbound_hosts.clone()),
        name_for_logs: spec.name.as_str().into(),
    })
}

fn check_is_component(bytes: &[u8]) -> Result<()> {
    const MAGIC: &[u8] = b"\0asm";
    const COMPONENT_LAYER: [u8; 2] = [0x01, 0x00];
    if bytes.len() < 8 || &bytes[..4] != MAGIC {
        bail!("not a WebAssembly component: the file does not start with the wasm magic bytes");
    }
    if bytes[6..8] != COMPONENT_LAYER {
        bail!(
            "this is a core WebAssembly module, not a component: build for `wasm32-wasip2` \
             (or use `cargo component build`) to produce a component"
        );
    }
    Ok(())
}

/// Which handler the component exports, read from its top-level export
/// section before anything is compiled (the two kinds need different
/// engines).
fn handler_kind(bytes: &[u8]) -> Result<HandlerKind> {
    let mut exports = Vec::new();
    let mut depth = 0usize;
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        match payload.context("not a valid WebAssembly component")? {
            wasmparser::Payload::Version { .. } => depth += 1,
            wasmparser::Payload::End(_) => depth = depth.saturating_sub(1),
            wasmparser::Payload::ComponentExportSection(reader) if depth == 1 => {
                for export in reader {
                    exports.push(export.context("not a valid WebAssembly component")?.name.name.to_string());
                }
            }
            _ => {}
        }
    }
    let p2 = exports.iter().find(|name| name.starts_with(P2_HANDLER_PREFIX));
    let p3 = exports.iter().find(|name| name.starts_with(P3_HANDLER_PREFIX));
    let listed = || if exports.is_empty() { "nothing".to_string() } else { exports.join(", ") };
    match (p2, p3) {
        (Some(_), Some(_)) => bail!(
            "it exports both a WASI 0.2 and a WASI 0.3 HTTP handler ({}); Wharf serves one handler per component: {SERVED}",
            listed()
        ),
        (Some(_), None) => Ok(HandlerKind::P2),
        (None, Some(name)) if name == P3_HANDLER => Ok(HandlerKind::P3),
        (None, Some(name)) => bail!(
            "it exports {name}, a version of WASI HTTP that Wharf does not serve; Wharf serves {SERVED}: build against wasi:http@0.3.0 (the wasip3 crate 0.7, spin-sdk 7)"
        ),
        (None, None) => bail!("it exports no HTTP handler (it exports: {}); Wharf serves {SERVED}", listed()),
    }
}

fn pre_instantiate(
    engine: &Engine,
    linker: &Linker<Host>,
    component: &Component,
    kind: HandlerKind,
) -> Result<HandlerPre> {
    for (import, _) in component.component_type().imports(engine) {
        if let Some(what) = crate::capabilities::spin::unserved(import) {
            bail!(
                "it imports {import}, a Spin interface ({what}) that Wharf does not serve; \
                 Wharf serves Spin's key-value, variables and SQLite"
            );
        }
    }
    let instance_pre = linker
        .instantiate_pre(component)
        .map_err(|e| anyhow!("it imports something Wharf does not provide: {e}"))?;
    Ok(match kind {
        HandlerKind::P2 => HandlerPre::P2(
            wasmtime_wasi_http::p2::bindings::ProxyPre::new(instance_pre)
                .map_err(anyhow::Error::from)
                .context("its wasi:http/incoming-handler export has an unexpected type")?,
        ),
        HandlerKind::P3 => HandlerPre::P3(
            wasmtime_wasi_http::p3::bindings::ServicePre::new(instance_pre)
                .map_err(anyhow::Error::from)
                .context("its wasi:http/handler export has an unexpected type")?,
        ),
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
