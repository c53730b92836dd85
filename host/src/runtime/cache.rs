//! The on-disk cache of compiled components, so a restart with unchanged
//! components skips compilation.
//!
//! A cached entry is native code that wasmtime loads with an unsafe
//! deserialise, so whoever can write an entry chooses the code Wharf runs.
//! Each entry is therefore bound to its component and authenticated:
//!
//! - its header names the component's SHA-256 and the engine's settings
//!   hash, and an entry is used only for exactly that component and engine
//!   (an entry copied over another's file is refused);
//! - a keyed MAC (HMAC-SHA256) covers the header and the code; the key is
//!   32 random bytes in `cache/mac.key` (mode 0600), made on first use;
//! - the cache directory is 0700; entries are written to a new file
//!   created exclusively (never through a symlink), synced and renamed
//!   into place, and read without following symlinks.
//!
//! An entry that fails any check is logged, rebuilt from the component and
//! never loaded.

use anyhow::{Context, Result, bail, ensure};
use ring::hmac;
use std::hash::{Hash, Hasher};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use wasmtime::Engine;
use wasmtime::component::Component;

const MAGIC: &[u8; 8] = b"WHARFC02";
const DIGEST_LEN: usize = 64;
const HEADER_LEN: usize = MAGIC.len() + DIGEST_LEN + 8 + 8;
const MAC_LEN: usize = 32;
/// Entries larger than this are refused unread (no component compiles to it).
const MAX_ENTRY_BYTES: u64 = 1 << 30;

/// Where a component came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Loaded from a valid cache entry.
    Hit,
    /// No entry: compiled and stored.
    Miss,
    /// An entry was there but failed a check: compiled and replaced.
    Rebuilt,
    /// No cache configured (or it could not be written): compiled.
    Disabled,
}

/// The compile cache in one directory.
pub struct CompileCache {
    dir: PathBuf,
    engine_key: u64,
    mac_key: Option<hmac::Key>,
}

impl std::fmt::Debug for CompileCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompileCache").field("dir", &self.dir).field("engine_key", &self.engine_key).finish()
    }
}

impl CompileCache {
    /// A cache in `dir` for components compiled by `engine`. If the
    /// directory or its key cannot be set up safely, the cache is off (and
    /// says so in the log): components are compiled every time.
    pub fn new(dir: PathBuf, engine: &Engine) -> Self {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let mac_key = match prepare(&dir) {
            Ok(key) => Some(key),
            Err(error) => {
                tracing::warn!(dir = %dir.display(), error = %format!("{error:#}"), "compile cache off: compiling every component at start");
                None
            }
        };
        Self { dir, engine_key: hasher.finish(), mac_key }
    }

    /// The entry path for a component with SHA-256 `digest`.
    pub fn entry_path(&self, digest: &str) -> PathBuf {
        self.dir.join(format!("{digest}-{:016x}.cwasm", self.engine_key))
    }

    /// The compiled `bytes` (whose SHA-256 is `digest`), from the cache if
    /// a valid entry exists, else compiled and stored.
    pub fn load_or_compile(
        &self,
        engine: &Engine,
        bytes: &[u8],
        digest: &str,
    ) -> Result<(Component, CacheOutcome)> {
        let Some(key) = &self.mac_key else {
            return Ok((compile(engine, bytes)?, CacheOutcome::Disabled));
        };
        let path = self.entry_path(digest);
        let mut outcome = CacheOutcome::Miss;
        match read_entry(&path) {
            Ok(None) => {}
            Ok(Some(entry)) => match self.verify(key, &entry, digest) {
                Ok(payload) => {
                    // SAFETY: wasmtime requires bytes produced by
                    // `Component::serialize` with a compatible engine. This
                    // payload's MAC was made with our key when we wrote it,
                    // for this component's digest and this engine's
                    // settings; wasmtime checks its own header again.
                    #[allow(unsafe_code)]
                    let component = unsafe { Component::deserialize(engine, payload) };
                    match component {
                        Ok(component) => return Ok((component, CacheOutcome::Hit)),
                        Err(error) => {
                            tracing::warn!(path = %path.display(), error = %error, "compile cache entry refused by wasmtime; rebuilding it");
                            outcome = CacheOutcome::Rebuilt;
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(path = %path.display(), %error, "compile cache entry failed its checks; rebuilding it, never loading it");
                    outcome = CacheOutcome::Rebuilt;
                }
            },
            Err(error) => {
                tracing::warn!(path = %path.display(), error = %format!("{error:#}"), "compile cache entry unreadable; rebuilding it");
                outcome = CacheOutcome::Rebuilt;
            }
        }
        let component = compile(engine, bytes)?;
        if let Err(error) = self.store(key, &path, digest, &component) {
            tracing::warn!(path = %path.display(), error = %format!("{error:#}"), "cannot write the compile cache");
            return Ok((component, CacheOutcome::Disabled));
        }
        Ok((component, outcome))
    }

    fn header(&self, digest: &str, payload_len: usize) -> Result<[u8; HEADER_LEN]> {
        ensure!(digest.len() == DIGEST_LEN && digest.is_ascii(), "a component digest is 64 hex characters");
        let mut header = [0u8; HEADER_LEN];
        header[..8].copy_from_slice(MAGIC);
        header[8..8 + DIGEST_LEN].copy_from_slice(digest.as_bytes());
        header[8 + DIGEST_LEN..16 + DIGEST_LEN].copy_from_slice(&self.engine_key.to_le_bytes());
        header[16 + DIGEST_LEN..].copy_from_slice(&(payload_len as u64).to_le_bytes());
        Ok(header)
    }

    /// The payload of `entry` if it is this component's, for this engine,
    /// whole, and made with our key.
    fn verify<'a>(&self, key: &hmac::Key, entry: &'a [u8], digest: &str) -> Result<&'a [u8]> {
        ensure!(entry.len() > HEADER_LEN + MAC_LEN, "entry is truncated");
        let (header, rest) = entry.split_at(HEADER_LEN);
        let (mac, payload) = rest.split_at(MAC_LEN);
        ensure!(&header[..8] == MAGIC, "not a Wharf cache entry (or an older format)");
        ensure!(&header[8..8 + DIGEST_LEN] == digest.as_bytes(), "entry is for another component");
        ensure!(
            header[8 + DIGEST_LEN..16 + DIGEST_LEN] == self.engine_key.to_le_bytes(),
            "entry is for other engine settings"
        );
        ensure!(header[16 + DIGEST_LEN..] == (payload.len() as u64).to_le_bytes(), "entry is truncated");
        let mut signed = Vec::with_capacity(HEADER_LEN + payload.len());
        signed.extend_from_slice(header);
        signed.extend_from_slice(payload);
        hmac::verify(key, &signed, mac)
            .map_err(|_| anyhow::anyhow!("entry MAC does not match its contents"))?;
        Ok(payload)
    }

    fn store(&self, key: &hmac::Key, path: &Path, digest: &str, component: &Component) -> Result<()> {
        let payload = component.serialize().map_err(anyhow::Error::from)?;
        let header = self.header(digest, payload.len())?;
        let mut signed = Vec::with_capacity(HEADER_LEN + payload.len());
        signed.extend_from_slice(&header);
        signed.extend_from_slice(&payload);
        let mac = hmac::sign(key, &signed);
        let mut nonce = [0u8; 8];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce)
            .map_err(|_| anyhow::anyhow!("no randomness for a temporary file name"))?;
        let partial = path.with_extension(format!("partial-{:016x}", u64::from_le_bytes(nonce)));
        // Created exclusively: never an existing file, never through a link.
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&partial)
            .with_context(|| format!("cannot create {}", partial.display()))?;
        let written = file
            .write_all(&header)
            .and_then(|()| file.write_all(mac.as_ref()))
            .and_then(|()| file.write_all(&payload))
            .and_then(|()| file.sync_all());
        if let Err(error) = written {
            let _ = std::fs::remove_file(&partial);
            return Err(error).with_context(|| format!("cannot write {}", partial.display()));
        }
        // The rename replaces whatever is at `path`, a symlink included.
        std::fs::rename(&partial, path).with_context(|| format!("cannot rename to {}", path.display()))?;
        Ok(())
    }
}

/// Makes the cache directory (0700) and returns its MAC key, making one
/// if there is none.
fn prepare(dir: &Path) -> Result<hmac::Key> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let metadata = std::fs::symlink_metadata(dir)?;
    ensure!(metadata.is_dir(), "{} is not a directory", dir.display());
    if metadata.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot make {} private (0700)", dir.display()))?;
    }
    let key_path = dir.join("mac.key");
    let key = match read_key(&key_path) {
        Ok(key) => key,
        Err(error) => {
            if key_path.exists() || std::fs::symlink_metadata(&key_path).is_ok() {
                tracing::warn!(path = %key_path.display(), error = %format!("{error:#}"), "compile cache key unusable; making a new one (every entry will be rebuilt)");
                std::fs::remove_file(&key_path)
                    .with_context(|| format!("cannot remove {}", key_path.display()))?;
            }
            make_key(&key_path)?
        }
    };
    Ok(hmac::Key::new(hmac::HMAC_SHA256, &key))
}

fn read_key(path: &Path) -> Result<[u8; 32]> {
    let mut file = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(path)?;
    let metadata = file.metadata()?;
    ensure!(metadata.is_file() && metadata.len() == 32, "not a 32-byte key file");
    ensure!(metadata.permissions().mode() & 0o077 == 0, "readable or writable by others");
    let mut key = [0u8; 32];
    file.read_exact(&mut key)?;
    Ok(key)
}

fn make_key(path: &Path) -> Result<[u8; 32]> {
    let mut key = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key)
        .map_err(|_| anyhow::anyhow!("no randomness for the compile cache key"))?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(&key)?;
    file.sync_all()?;
    Ok(key)
}

/// The entry at `path`, `None` if there is none; a symlink or anything
/// but a plain file of sane size is an error.
fn read_entry(path: &Path) -> Result<Option<Vec<u8>>> {
    let file = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(path);
    let mut file = match file {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) if error.raw_os_error() == Some(libc::ELOOP) => bail!("entry is a symbolic link"),
        Err(error) => return Err(error.into()),
    };
    let metadata = file.metadata()?;
    ensure!(metadata.is_file(), "entry is not a regular file");
    ensure!(metadata.len() <= MAX_ENTRY_BYTES, "entry is too large");
    let mut entry = Vec::with_capacity(metadata.len() as usize);
    file.read_to_end(&mut entry)?;
    Ok(Some(entry))
}

/// Compiles a component from its bytes.
pub fn compile(engine: &Engine, bytes: &[u8]) -> Result<Component> {
    Component::new(engine, bytes).map_err(anyhow::Error::from).context("not a valid WebAssembly component")
}
