//! `long-running`: a computation of configurable length, answering 200
//! `Done`. `?ms=` (else config `duration_ms`, default 10000) sets the
//! length; `?mode=sleep` (default) waits on the host clock, `?mode=cpu`
//! burns CPU in a loop that checks the clock.

use wharf_guest::bindings::exports::wasi::http::incoming_handler::Guest;
use wharf_guest::bindings::wasi::clocks::monotonic_clock;
use wharf_guest::bindings::wasi::http::types::{IncomingRequest, ResponseOutparam};

struct LongRunning;

impl Guest for LongRunning {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let ms: u64 = wharf_guest::query_param(&request, "ms")
            .or_else(|| wharf_guest::config("duration_ms"))
            .and_then(|v| v.parse().ok())
            .unwrap_or(10_000);
        match wharf_guest::query_param(&request, "mode").as_deref() {
            Some("cpu") => {
                let end = monotonic_clock::now() + ms * 1_000_000;
                let mut work: u64 = 0;
                while monotonic_clock::now() < end {
                    for _ in 0..10_000 {
                        work = std::hint::black_box(work.wrapping_mul(6364136223846793005).wrapping_add(1));
                    }
                }
            }
            _ => wharf_guest::sleep_ms(ms),
        }
        wharf_guest::respond(out, 200, "text/plain", b"Done");
    }
}

wharf_guest::export!(LongRunning);
