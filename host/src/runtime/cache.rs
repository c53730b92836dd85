//! The on-disk cache of compiled components, so a restart with unchanged
//! components skips compilation.
//!
//! An entry is keyed by the component's SHA-256 and the engine's
//! compatibility hash (wasmtime version and every setting that affects
//! code), and stored as the SHA-256 of its payload followed by the payload.
//! The checksum is verified before the payload is handed to wasmtime, so a
//! corrupt or truncated entry is detected and rebuilt, never loaded.

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Where a component came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Loaded from a valid cache entry.
    Hit,
    /// No entry: compiled and stored.
    Miss,
    /// An entry was there but corrupt or stale: compiled and replaced.
    Rebuilt,
    /// No cache configured (or it could not be written): compiled.
    Disabled,
}

/// The compile cache in one directory.
#[derive(Debug, Clone)]
pub struct CompileCache {
    dir: PathBuf,
    engine_key: String,
}

impl CompileCache {
    /// A cache in `dir` for components compiled by `engine`.
    pub fn new(dir: PathBuf, engine: &Engine) -> Self {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Self { dir, engine_key: format!("{:016x}", hasher.finish()) }
    }

    /// The entry path for a component with SHA-256 `digest`.
    pub fn entry_path(&self, digest: &str) -> PathBuf {
        self.dir.join(format!("{digest}-{}.cwasm", self.engine_key))
    }

    /// The compiled `bytes` (whose SHA-256 is `digest`), from the cache if
    /// a valid entry exists, else compiled and stored.
    pub fn load_or_compile(
        &self,
        engine: &Engine,
        bytes: &[u8],
        digest: &str,
    ) -> Result<(Component, CacheOutcome)> {
        let path = self.entry_path(digest);
        let mut outcome = CacheOutcome::Miss;
        if let Ok(entry) = std::fs::read(&path) {
            match deserialize_verified(engine, &entry) {
                Ok(component) => return Ok((component, CacheOutcome::Hit)),
                Err(error) => {
                    tracing::warn!(path = %path.display(), %error, "compile cache entry is invalid; rebuilding it");
                    outcome = CacheOutcome::Rebuilt;
                }
            }
        }
        let component = compile(engine, bytes)?;
        if let Err(error) = self.store(&path, &component) {
            tracing::warn!(path = %path.display(), error = %format!("{error:#}"), "cannot write the compile cache");
            return Ok((component, CacheOutcome::Disabled));
        }
        Ok((component, outcome))
    }

    fn store(&self, path: &Path, component: &Component) -> Result<()> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("cannot create {}", self.dir.display()))?;
        let payload = component.serialize().map_err(anyhow::Error::from)?;
        let mut entry = Vec::with_capacity(32 + payload.len());
        entry.extend_from_slice(&Sha256::digest(&payload));
        entry.extend_from_slice(&payload);
        // Write beside, then rename: a reader never sees half an entry.
        let partial = path.with_extension(format!("partial-{}", std::process::id()));
        std::fs::write(&partial, &entry).with_context(|| format!("cannot write {}", partial.display()))?;
        std::fs::rename(&partial, path).with_context(|| format!("cannot rename to {}", path.display()))?;
        Ok(())
    }
}

/// Compiles a component from its bytes.
pub fn compile(engine: &Engine, bytes: &[u8]) -> Result<Component> {
    Component::new(engine, bytes).map_err(anyhow::Error::from).context("not a valid WebAssembly component")
}

fn deserialize_verified(engine: &Engine, entry: &[u8]) -> Result<Component> {
    anyhow::ensure!(entry.len() > 32, "entry is truncated");
    let (checksum, payload) = entry.split_at(32);
    anyhow::ensure!(
        Sha256::digest(payload).as_slice() == checksum,
        "entry checksum does not match its contents"
    );
    // SAFETY: wasmtime requires that the bytes were produced by
    // `Component::serialize` with a compatible engine. This entry was
    // written by `store` above (checksum verified), under a key that
    // includes the engine's compatibility hash; wasmtime checks the version
    // and settings in the header again.
    #[allow(unsafe_code)]
    let component = unsafe { Component::deserialize(engine, payload) };
    component.map_err(anyhow::Error::from)
}
