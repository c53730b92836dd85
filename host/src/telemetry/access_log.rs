//! The access log: one line per request, written without going through
//! `tracing`'s per-field formatting, which measured 5 us a request at 40k
//! requests/s (an eighth of the whole budget). Lines look like the rest of
//! the log (same timestamp, level and target, `pretty` or `json`) and go to
//! the same writer, so they interleave in one stream; `RUST_LOG` still
//! filters them (target `wharf::access`).
//!
//! The binary installs one with [`AccessLog::batched_stderr`]; without one (tests,
//! embedders), the request line is an ordinary `tracing` event.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

/// Line format, matching `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLogFormat {
    /// `2026-11-27T03:55:32.458199Z  INFO wharf::access: request method=GET ...`
    Pretty,
    /// One JSON object per line, fields flattened.
    Json,
}

/// Writes one whole line.
type LineWriter = Box<dyn Fn(&[u8]) + Send + Sync>;

/// Where request lines go.
pub struct AccessLog {
    writer: LineWriter,
    format: AccessLogFormat,
    follows_log_filter: bool,
}

/// One request line's fields.
pub struct AccessLine<'a> {
    /// `true` for a failure (5xx other than 503, or a failed stream).
    pub error: bool,
    pub method: &'a str,
    pub path: &'a str,
    pub route: Option<&'a str>,
    pub status: Option<u16>,
    pub latency_ms: f64,
    pub bytes_out: u64,
    pub client: std::net::IpAddr,
    /// The server worker thread that served it, when one did.
    pub worker: Option<usize>,
    pub request_id: &'a str,
    pub outcome: &'a str,
    pub reason: Option<&'a str>,
    /// The request's trace, when it is recorded.
    pub trace_id: Option<&'a str>,
}

impl AccessLog {
    /// Writes whole lines through `make_writer` (each line in one write).
    pub fn new<W>(make_writer: impl Fn() -> W + Send + Sync + 'static, format: AccessLogFormat) -> Self
    where
        W: std::io::Write,
    {
        Self {
            writer: Box::new(move |line| {
                let _ = make_writer().write_all(line);
            }),
            format,
            follows_log_filter: true,
        }
    }

    /// Lines to stderr, gathered per runtime thread (see [`super::batch`]).
    pub fn batched_stderr(format: AccessLogFormat) -> Self {
        Self { writer: Box::new(super::batch::append), format, follows_log_filter: true }
    }

    /// Like [`Self::new`], but writes every line whatever `RUST_LOG` says
    /// (for embedders and tests that read the lines back).
    pub fn unfiltered<W>(make_writer: impl Fn() -> W + Send + Sync + 'static, format: AccessLogFormat) -> Self
    where
        W: std::io::Write,
    {
        Self { follows_log_filter: false, ..Self::new(make_writer, format) }
    }

    /// Whether request lines are written (the log filter may turn them off).
    pub fn enabled(&self) -> bool {
        !self.follows_log_filter || tracing::enabled!(target: "wharf::access", tracing::Level::INFO)
    }

    /// Formats and writes `line`.
    pub fn write(&self, line: &AccessLine<'_>) {
        thread_local! {
            static BUFFER: std::cell::RefCell<String> = std::cell::RefCell::new(String::with_capacity(512));
        }
        BUFFER.with_borrow_mut(|buffer| {
            buffer.clear();
            match self.format {
                AccessLogFormat::Pretty => pretty(buffer, line),
                AccessLogFormat::Json => json(buffer, line),
            }
            (self.writer)(buffer.as_bytes());
        });
    }
}

fn pretty(out: &mut String, line: &AccessLine<'_>) {
    timestamp(out);
    let level = if line.error { "ERROR" } else { " INFO" };
    let _ = write!(out, " {level} wharf::access: request method=");
    escape_into(out, line.method);
    out.push_str(" path=");
    escape_into(out, line.path);
    if let Some(route) = line.route {
        out.push_str(" route=");
        escape_into(out, route);
    }
    if let Some(status) = line.status {
        let _ = write!(out, " status={status}");
    }
    let _ =
        write!(out, " latency_ms={:.3} bytes_out={} client={}", line.latency_ms, line.bytes_out, line.client);
    if let Some(worker) = line.worker {
        let _ = write!(out, " worker={worker}");
    }
    out.push_str(" request_id=");
    escape_into(out, line.request_id);
    let _ = write!(out, " outcome={}", line.outcome);
    if let Some(trace_id) = line.trace_id {
        let _ = write!(out, " trace_id={trace_id}");
    }
    if let Some(reason) = line.reason {
        out.push_str(" reason=\"");
        escape_into(out, reason);
        out.push('"');
    }
    out.push('\n');
}

/// Whether `c` could break a log line or forge one: control characters
/// (C0, DEL, C1 such as NEL) and Unicode line and paragraph separators.
fn is_line_breaking(c: char) -> bool {
    c.is_control() || matches!(c, '\u{2028}' | '\u{2029}')
}

/// Writes `text` with every line-breaking character (and `"` and `\`)
/// escaped, so one request is always one line.
pub fn escape_into(out: &mut String, text: &str) {
    if !text.chars().any(|c| is_line_breaking(c) || c == '"' || c == '\\') {
        out.push_str(text);
        return;
    }
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if is_line_breaking(c) => {
                let _ = write!(out, "\\u{{{:04x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
}

/// Writes `text` as a JSON string; beyond what JSON requires, DEL, C1
/// controls and the Unicode line separators are escaped too.
fn json_string(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if is_line_breaking(c) => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn json(out: &mut String, line: &AccessLine<'_>) {
    out.push_str("{\"timestamp\":\"");
    timestamp(out);
    let _ =
        write!(out, "\",\"level\":\"{}\",\"message\":\"request\"", if line.error { "ERROR" } else { "INFO" });
    let text = |out: &mut String, key: &str, value: &str| {
        let _ = write!(out, ",\"{key}\":");
        json_string(out, value);
    };
    text(out, "method", line.method);
    text(out, "path", line.path);
    if let Some(route) = line.route {
        text(out, "route", route);
    }
    if let Some(status) = line.status {
        let _ = write!(out, ",\"status\":{status}");
    }
    let _ = write!(out, ",\"latency_ms\":{:.3},\"bytes_out\":{}", line.latency_ms, line.bytes_out);
    let _ = write!(out, ",\"client\":\"{}\"", line.client);
    if let Some(worker) = line.worker {
        let _ = write!(out, ",\"worker\":{worker}");
    }
    text(out, "request_id", line.request_id);
    text(out, "outcome", line.outcome);
    if let Some(trace_id) = line.trace_id {
        text(out, "trace_id", trace_id);
    }
    if let Some(reason) = line.reason {
        text(out, "reason", reason);
    }
    out.push_str(",\"target\":\"wharf::access\"}\n");
}

/// RFC 3339 UTC with microseconds, like `tracing-subscriber`'s.
fn timestamp(out: &mut String) {
    timestamp_at(out, SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default());
}

/// The RFC 3339 form of `now`, a time since the Unix epoch.
fn timestamp_at(out: &mut String, now: std::time::Duration) {
    let secs = now.as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil-from-days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rest / 3600,
        rest / 60 % 60,
        rest % 60,
        now.subsec_micros()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_dates_and_times() {
        use std::time::Duration;
        let at = |secs: u64, micros: u64| {
            let mut out = String::new();
            timestamp_at(&mut out, Duration::from_secs(secs) + Duration::from_micros(micros));
            out
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(at(951_782_400, 1), "2000-02-29T00:00:00.000001Z", "a leap day of a leap century");
        assert_eq!(at(1_709_251_199, 999_999), "2024-02-29T23:59:59.999999Z");
        assert_eq!(at(1_709_251_200, 0), "2024-03-01T00:00:00.000000Z");
        assert_eq!(at(4_107_542_400, 0), "2100-03-01T00:00:00.000000Z", "2100 is not a leap year");
        assert_eq!(at(1_798_761_599, 0), "2026-12-31T23:59:59.000000Z");
        let mut now = String::new();
        timestamp(&mut now);
        assert!(now.starts_with("20") && now.len() == 27, "{now}");
    }

    #[test]
    fn json_lines_are_valid_json() {
        let mut out = String::new();
        let line = AccessLine {
            error: false,
            method: "GET",
            path: "/a\"b",
            route: Some("/a/..."),
            status: Some(200),
            latency_ms: 1.5,
            bytes_out: 14,
            client: "127.0.0.1".parse().unwrap(),
            worker: Some(1),
            request_id: "x",
            outcome: "completed",
            reason: None,
            trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736"),
        };
        json(&mut out, &line);
        let value: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!((value["path"].as_str(), value["status"].as_u64()), (Some("/a\"b"), Some(200)));
        assert_eq!(value["trace_id"].as_str(), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        assert_eq!(value["worker"].as_u64(), Some(1));
    }

    #[test]
    fn nothing_a_client_or_guest_sends_can_break_or_forge_a_line() {
        let hostile = "/x\n2026-01-01T00:00:00Z  INFO forged\r\u{2028}\u{2029}\u{85}\u{7f}\u{1b}[31m\"\\";
        let line = AccessLine {
            error: true,
            method: "GET",
            path: hostile,
            route: Some(hostile),
            status: Some(500),
            latency_ms: 1.0,
            bytes_out: 0,
            client: "127.0.0.1".parse().unwrap(),
            worker: None,
            request_id: hostile,
            outcome: "failed",
            reason: Some(hostile),
            trace_id: None,
        };
        for format in [AccessLogFormat::Pretty, AccessLogFormat::Json] {
            let mut out = String::new();
            match format {
                AccessLogFormat::Pretty => pretty(&mut out, &line),
                AccessLogFormat::Json => json(&mut out, &line),
            }
            let body = out.strip_suffix('\n').unwrap();
            assert!(!body.chars().any(is_line_breaking), "{format:?}: {out:?}");
            if format == AccessLogFormat::Json {
                let value: serde_json::Value = serde_json::from_str(body).unwrap();
                assert_eq!(value["path"], hostile, "JSON escapes round-trip");
            }
        }
    }
}
