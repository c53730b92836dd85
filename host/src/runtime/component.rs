//! Loading a component: its bytes are checked (a component, not a core
//! module or something else), compiled or taken from the compile cache,
//! checked against the linker (every import must be one Wharf provides) and
//! for the handler it exports, and pre-instantiated. A [`LoadedComponent`]
//! is what requests instantiate.

use super::cache::{CacheOutcome, CompileCache};
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

/// The export a WASI 0.2 HTTP component must have (any 0.2.x version).
const P2_HANDLER_PREFIX: &str = "wasi:http/incoming-handler@0.2";
/// The export of a WASI 0.3 HTTP component (recognised, not yet served).
const P3_HANDLER_PREFIX: &str = "wasi:http/handler@0.3";

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
    pub(crate) handler: HandlerPre,
    pub(crate) config: Arc<WasiConfigVariables>,
    pub(crate) key_value_stores: Arc<[String]>,
    pub(crate) limits: InstanceLimits,
    pub(crate) allowed_outbound_hosts: Arc<AllowList>,
    pub(crate) name_for_logs: Arc<str>,
}

/// The pre-instantiated handler, by WASI version.
pub(crate) enum HandlerPre {
    /// `wasi:http/incoming-handler@0.2.x`.
    P2(wasmtime_wasi_http::p2::bindings::ProxyPre<Host>),
}

/// Compiles (or loads from `cache`) one component and checks its exports
/// and imports.
pub fn load(
    engine: &Engine,
    linker: &Linker<Host>,
    spec: &ComponentSpec,
    cache: Option<&CompileCache>,
) -> Result<LoadedComponent> {
    let bytes = std::fs::read(&spec.source).context("cannot read the component file")?;
    check_is_component(&bytes)?;
    let digest = hex(&Sha256::digest(&bytes));
    let (component, cache) = match cache {
        Some(cache) => cache.load_or_compile(engine, &bytes, &digest)?,
        None => (super::cache::compile(engine, &bytes)?, CacheOutcome::Disabled),
    };
    super::limits::check_shares(&component)?;
    let handler = pre_instantiate(engine, linker, &component)?;
    Ok(LoadedComponent {
        name: spec.name.clone(),
        source: spec.source.clone(),
        digest,
        cache,
        loaded_at: SystemTime::now(),
        handler,
        config: Arc::new(spec.config.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()),
        key_value_stores: spec.key_value_stores.clone().into(),
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

fn pre_instantiate(engine: &Engine, linker: &Linker<Host>, component: &Component) -> Result<HandlerPre> {
    let instance_pre = linker
        .instantiate_pre(component)
        .map_err(|e| anyhow!("it imports something Wharf does not provide: {e}"))?;
    let exports: Vec<String> =
        component.component_type().exports(engine).map(|(name, _)| name.to_string()).collect();
    if exports.iter().any(|name| name.starts_with(P2_HANDLER_PREFIX)) {
        let pre = wasmtime_wasi_http::p2::bindings::ProxyPre::new(instance_pre)
            .map_err(anyhow::Error::from)
            .context("its wasi:http/incoming-handler export has an unexpected type")?;
        return Ok(HandlerPre::P2(pre));
    }
    if exports.iter().any(|name| name.starts_with(P3_HANDLER_PREFIX)) {
        bail!("WASI 0.3 (wasi:http/handler@0.3) components are not served yet; build for WASI 0.2");
    }
    bail!(
        "it does not export wasi:http/incoming-handler (it exports: {})",
        if exports.is_empty() { "nothing".to_string() } else { exports.join(", ") }
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
