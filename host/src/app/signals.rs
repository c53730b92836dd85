//! Unix signals for a running server: SIGINT or SIGTERM starts a graceful
//! shutdown and a second one cancels what is still in flight; SIGHUP
//! reloads the manifest.

use super::App;
use std::sync::Arc;
use tokio::signal::unix::{SignalKind, signal};

/// Resolves on the first SIGINT or SIGTERM. After that, a second one makes
/// `app` cancel every request still draining. SIGHUP reloads the manifest
/// meanwhile.
pub async fn shutdown_signal(app: Arc<App>) {
    let mut interrupt = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    let mut terminate = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut hangup = signal(SignalKind::hangup()).expect("install SIGHUP handler");
    loop {
        tokio::select! {
            _ = interrupt.recv() => break,
            _ = terminate.recv() => break,
            _ = hangup.recv() => {
                let app = app.clone();
                tracing::info!("SIGHUP: reloading the manifest");
                let _ = tokio::task::spawn_blocking(move || app.reload_manifest()).await;
            }
        }
    }
    tokio::spawn(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        tracing::warn!("second signal: cancelling requests still in flight");
        app.cancel_in_flight();
    });
}
