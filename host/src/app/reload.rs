//! Hot-swap: replacing components inside the running host without failing
//! a request.
//!
//! A new version is compiled and checked off the request path (on the
//! watcher's thread, or a blocking thread for admin and SIGHUP reloads),
//! then the route table is swapped atomically. Requests in flight keep the
//! table, and so the component, they started with; new requests get the new
//! one. A version that fails to load is logged and counted, and the old one
//! keeps serving.
//!
//! Triggers: a component's `.wasm` changing on disk (watched with `notify`,
//! debounced, so atomic renames and partial writes settle first; a partial
//! write that is caught anyway fails validation and is retried on the next
//! change), `POST /admin/reload`, and SIGHUP (the whole manifest). Only
//! changes count: a file merely opened (by our own reload, or by anyone
//! reading it) is no reason to reload, or every reload would trigger the
//! next.

use super::App;
use super::routes::{self, RouteTable};
use crate::manifest::Manifest;
use anyhow::{Context, Result};
use notify::{EventKind, RecursiveMode};
use notify_debouncer_full::{DebounceEventResult, Debouncer, RecommendedCache, new_debouncer};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// How long a component file must stay quiet before it is reloaded.
const DEBOUNCE: Duration = Duration::from_millis(100);

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReloadReport {
    /// Components whose new version is now serving.
    pub swapped: Vec<String>,
    /// Components whose file was unchanged.
    pub unchanged: Vec<String>,
}

impl App {
    /// Reloads component `name` from its file; swaps it in if its bytes
    /// changed. On error the old version keeps serving.
    pub fn reload_component(&self, name: &str) -> Result<ReloadReport> {
        let _one_at_a_time = self.lifecycle.reloading.lock().unwrap_or_else(|e| e.into_inner());
        let spec = {
            let manifest = self.lifecycle.manifest.lock().unwrap_or_else(|e| e.into_inner());
            manifest.components.get(name).cloned().with_context(|| format!("no component {name:?}"))?
        };
        let current = self.routes.current();
        let started = Instant::now();
        let outcome = self
            .runtime
            .load_component(&spec, current.reuses(name))
            .with_context(|| format!("component {name:?} ({})", spec.source.display()));
        let loaded = match outcome {
            Ok(loaded) => loaded,
            Err(error) => {
                self.telemetry.metrics.reload(false);
                tracing::error!(component = name, error = %format!("{error:#}"), "reload rejected; the previous version keeps serving");
                return Err(error);
            }
        };
        if current.component(name).is_some_and(|c| c.digest == loaded.digest) {
            return Ok(ReloadReport { swapped: vec![], unchanged: vec![name.to_string()] });
        }
        let loaded = Arc::new(loaded);
        self.routes.replace(current.with_component(&self.runtime, &loaded));
        self.telemetry.metrics.reload(true);
        tracing::info!(component = name, digest = %&loaded.digest[..12], cache = ?loaded.cache, took_ms = started.elapsed().as_millis() as u64, "component swapped");
        Ok(ReloadReport { swapped: vec![name.to_string()], unchanged: vec![] })
    }

    /// Re-reads the manifest and reloads every route and component: routes
    /// are added, changed and removed. Server settings that cannot change
    /// while serving (addresses, pool sizes) need a restart and are only
    /// reported. On error nothing changes.
    pub fn reload_manifest(self: &Arc<Self>) -> Result<ReloadReport> {
        let _one_at_a_time = self.lifecycle.reloading.lock().unwrap_or_else(|e| e.into_inner());
        let path = self.lifecycle.manifest.lock().unwrap_or_else(|e| e.into_inner()).path.clone();
        let result = Manifest::load(&path, true).and_then(|mut manifest| {
            if manifest.uses_fuel() && !self.runtime.fuel_metering() {
                anyhow::bail!("a component now sets `fuel`, which needs a restart to turn metering on");
            }
            // Settings fixed at start (possibly by CLI flags) stay as they are.
            manifest.server = self.settings.clone();
            let table = routes::load_routes(
                &self.runtime,
                &manifest,
                Some(&self.routes.current()),
                self.admission.shared_buckets.as_ref(),
            )
            .with_context(|| format!("cannot load the app in {}", path.display()))?;
            Ok((manifest, table))
        });
        let (manifest, table) = match result {
            Ok(loaded) => loaded,
            Err(error) => {
                self.telemetry.metrics.reload(false);
                tracing::error!(error = %format!("{error:#}"), "manifest reload rejected; the current app keeps serving");
                return Err(error);
            }
        };
        let report = compare(&self.routes.current(), &table);
        self.routes.replace(table);
        *self.lifecycle.manifest.lock().unwrap_or_else(|e| e.into_inner()) = manifest;
        self.telemetry.metrics.reload(true);
        tracing::info!(swapped = ?report.swapped, "manifest reloaded");
        if self.lifecycle.watcher.lock().unwrap_or_else(|e| e.into_inner()).is_some() {
            watch(self);
        }
        Ok(report)
    }
}

fn compare(old: &RouteTable, new: &RouteTable) -> ReloadReport {
    let mut report = ReloadReport { swapped: vec![], unchanged: vec![] };
    let mut names: Vec<&str> = new.routes().iter().map(|r| r.component.name.as_str()).collect();
    names.sort();
    names.dedup();
    for name in names {
        let same = old.component(name).map(|c| &c.digest) == new.component(name).map(|c| &c.digest);
        if same { &mut report.unchanged } else { &mut report.swapped }.push(name.to_string());
    }
    report
}

/// Keeps the file watcher alive; dropping it stops watching.
pub struct ComponentWatcher {
    _debouncer: Debouncer<notify::RecommendedWatcher, RecommendedCache>,
}

/// Starts (or restarts) watching every component file of `app`.
pub fn watch(app: &Arc<App>) {
    match start_watcher(app) {
        Ok(watcher) => *app.lifecycle.watcher.lock().unwrap_or_else(|e| e.into_inner()) = Some(watcher),
        Err(error) => {
            tracing::warn!(error = %format!("{error:#}"), "cannot watch component files; hot-swap on file change is off (POST /admin/reload still works)")
        }
    }
}

fn start_watcher(app: &Arc<App>) -> Result<ComponentWatcher> {
    // Components by watched file; directories are watched (not files) so
    // an atomic rename over a file is seen.
    let mut by_file: BTreeMap<PathBuf, Vec<String>> = BTreeMap::new();
    for spec in app.lifecycle.manifest.lock().unwrap_or_else(|e| e.into_inner()).components.values() {
        by_file.entry(normalize(&spec.source)).or_default().push(spec.name.clone());
    }
    let weak: Weak<App> = Arc::downgrade(app);
    let files = by_file.clone();
    let mut debouncer = new_debouncer(DEBOUNCE, None, move |events: DebounceEventResult| {
        let Ok(events) = events else { return };
        let mut names: Vec<&String> = events
            .iter()
            .filter(|event| !matches!(event.kind, EventKind::Access(_)))
            .flat_map(|event| event.paths.iter())
            .filter_map(|path| files.get(&normalize(path)))
            .flatten()
            .collect();
        if names.is_empty() {
            return;
        }
        let Some(app) = weak.upgrade() else { return };
        names.sort();
        names.dedup();
        for name in names {
            // Errors are logged and counted inside; the old version serves on.
            let _ = app.reload_component(name);
        }
    })
    .context("cannot start the file watcher")?;
    let mut dirs: Vec<PathBuf> = by_file.keys().filter_map(|f| f.parent().map(Path::to_path_buf)).collect();
    dirs.sort();
    dirs.dedup();
    for dir in dirs {
        debouncer
            .watch(&dir, RecursiveMode::NonRecursive)
            .with_context(|| format!("cannot watch {}", dir.display()))?;
    }
    Ok(ComponentWatcher { _debouncer: debouncer })
}

/// The file's canonical directory joined with its name (the file itself may
/// be mid-rename and not exist).
fn normalize(path: &Path) -> PathBuf {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    match path.file_name() {
        Some(name) => dir.join(name),
        None => dir,
    }
}
