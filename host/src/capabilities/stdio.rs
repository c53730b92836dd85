//! A guest's stdout and stderr: never the host's own streams. Each line a
//! guest writes becomes one log event (target `wharf::guest`) carrying the
//! component, the request id and the stream, with control and line
//! separator characters escaped, through the same non-blocking writer as
//! every other log line; so a guest can neither forge a host log line nor
//! block a runtime thread on a slow terminal. Output past the per-request
//! budget is dropped, with one line saying so.

use bytes::Bytes;
use std::sync::{Arc, Mutex};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Longest line kept whole; longer ones are split.
const MAX_LINE: usize = 4096;

/// One instance's output: both streams share its budget.
#[derive(Clone)]
pub struct GuestOutput {
    inner: Arc<Mutex<Budget>>,
    component: Arc<str>,
    request_id: Arc<str>,
    /// The request's trace, when it is recorded.
    trace_id: Option<Arc<str>>,
}

struct Budget {
    remaining: usize,
    truncated: bool,
}

impl GuestOutput {
    /// Output of `component` serving `request_id` (in trace `trace_id`),
    /// at most `budget` bytes.
    pub fn new(component: Arc<str>, request_id: Arc<str>, trace_id: Option<Arc<str>>, budget: usize) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Budget { remaining: budget, truncated: false })),
            component,
            request_id,
            trace_id,
        }
    }

    /// The guest's stdout.
    pub fn stdout(&self) -> GuestStream {
        GuestStream { output: self.clone(), name: "stdout" }
    }

    /// The guest's stderr.
    pub fn stderr(&self) -> GuestStream {
        GuestStream { output: self.clone(), name: "stderr" }
    }
}

/// `wasi:cli/stdout` or `stderr` of one instance.
#[derive(Clone)]
pub struct GuestStream {
    output: GuestOutput,
    name: &'static str,
}

impl IsTerminal for GuestStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestStream {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(LineWriter { stream: self.clone(), line: Vec::new() })
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(LineWriter { stream: self.clone(), line: Vec::new() })
    }
}

/// Gathers bytes into lines and logs each one.
struct LineWriter {
    stream: GuestStream,
    line: Vec<u8>,
}

impl LineWriter {
    fn accept(&mut self, mut bytes: &[u8]) {
        let output = &self.stream.output;
        {
            let mut budget = output.inner.lock().unwrap_or_else(|e| e.into_inner());
            if bytes.len() > budget.remaining {
                bytes = &bytes[..budget.remaining];
                if !budget.truncated {
                    budget.truncated = true;
                    tracing::warn!(target: "wharf::guest", component = %output.component, request_id = %output.request_id,
                        "guest output over its budget for this request; the rest is dropped");
                }
            }
            budget.remaining -= bytes.len();
        }
        for &byte in bytes {
            if byte == b'\n' {
                self.emit();
            } else {
                self.line.push(byte);
                if self.line.len() >= MAX_LINE {
                    self.emit();
                }
            }
        }
    }

    fn emit(&mut self) {
        if self.line.is_empty() {
            return;
        }
        let text = String::from_utf8_lossy(&self.line);
        let mut escaped = String::with_capacity(text.len());
        crate::telemetry::access_log::escape_into(&mut escaped, text.trim_end_matches('\r'));
        let output = &self.stream.output;
        tracing::info!(target: "wharf::guest", component = %output.component, request_id = %output.request_id,
            trace_id = output.trace_id.as_deref(), stream = self.stream.name, line = %escaped, "guest output");
        self.line.clear();
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        self.emit();
    }
}

impl OutputStream for LineWriter {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.accept(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LineWriter {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for LineWriter {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.accept(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.emit();
        std::task::Poll::Ready(Ok(()))
    }
}
