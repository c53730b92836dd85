//! `tcp-probe` (tests only): outbound TCP through `wasi:sockets`, as Rust's
//! std makes it. `?addr=IP:PORT&n=N` (default 1) opens N connections one
//! after another, on each sends `ping\n` and reads a line back; answers
//! `ok N LINE` (the last line read), or `failed after K: ERROR` with the
//! connections that worked before one failed.

use std::io::{BufRead, BufReader, Write};
use wharf_guest::bindings::exports::wasi::http::incoming_handler::Guest;
use wharf_guest::bindings::wasi::http::types::{IncomingRequest, ResponseOutparam};

struct Probe;

impl Guest for Probe {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let addr = wharf_guest::query_param(&request, "addr").unwrap_or_default();
        let n: u32 = wharf_guest::query_param(&request, "n").and_then(|n| n.parse().ok()).unwrap_or(1);
        let mut last = String::new();
        for done in 0..n {
            let attempt = (|| -> std::io::Result<String> {
                let mut stream = std::net::TcpStream::connect(addr.as_str())?;
                stream.write_all(b"ping\n")?;
                let mut line = String::new();
                BufReader::new(stream).read_line(&mut line)?;
                Ok(line.trim_end().to_string())
            })();
            match attempt {
                Ok(line) => last = line,
                Err(error) => {
                    let body = format!("failed after {done}: {error}");
                    return wharf_guest::respond(out, 502, "text/plain", body.as_bytes());
                }
            }
        }
        wharf_guest::respond(out, 200, "text/plain", format!("ok {n} {last}").as_bytes());
    }
}

wharf_guest::export!(Probe);
