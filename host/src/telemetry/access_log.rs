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
    out.push_str(if line.error { " ERROR" } else { "  INFO" });
    out.push_str(" wharf::access: request method=");
    escape_into(out, line.method);
    out.push_str(" path=");
    escape_into(out, line.path);
    if let Some(route) = line.route {
        out.push_str(" route=");
        escape_into(out, route);
    }
    if let Some(status) = line.status {
        out.push_str(" status=");
        push_number(out, status);
    }
    out.push_str(" latency_ms=");
    push_millis(out, line.latency_ms);
    out.push_str(" bytes_out=");
    push_number(out, line.bytes_out);
    out.push_str(" client=");
    push_ip(out, line.client);
    if let Some(worker) = line.worker {
        out.push_str(" worker=");
        push_number(out, worker);
    }
    out.push_str(" request_id=");
    escape_into(out, line.request_id);
    out.push_str(" outcome=");
    out.push_str(line.outcome);
    if let Some(trace_id) = line.trace_id {
        out.push_str(" trace_id=");
        out.push_str(trace_id);
    }
    if let Some(reason) = line.reason {
        out.push_str(" reason=\"");
        escape_into(out, reason);
        out.push('"');
    }
    out.push('\n');
}

// The numbers of a line go through `itoa`, not `core::fmt`: formatting a
// line with `write!` measured 6,500 instructions a request (4.5% of a
// pinned hello's), most of them in `fmt`'s padding and float code.

fn push_number(out: &mut String, number: impl itoa::Integer) {
    out.push_str(itoa::Buffer::new().format(number));
}

/// `number` with leading zeros up to `width` digits.
fn push_padded(out: &mut String, number: u64, width: usize) {
    let mut buffer = itoa::Buffer::new();
    let digits = buffer.format(number);
    out.extend(std::iter::repeat_n('0', width.saturating_sub(digits.len())));
    out.push_str(digits);
}

/// Milliseconds with three decimals, as `{:.3}` writes them.
fn push_millis(out: &mut String, millis: f64) {
    let micros = if millis.is_finite() && millis > 0.0 { (millis * 1e3).round() as u64 } else { 0 };
    push_number(out, micros / 1000);
    out.push('.');
    push_padded(out, micros % 1000, 3);
}

fn push_ip(out: &mut String, ip: std::net::IpAddr) {
    match ip {
        std::net::IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                push_number(out, octet);
            }
        }
        std::net::IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// Whether every byte of `text` can go into a line as it is: printable
/// ASCII other than `"` and `\` (the common case, checked without decoding).
fn is_plain(text: &str) -> bool {
    text.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
}

/// Whether `c` could break a log line or forge one: control characters
/// (C0, DEL, C1 such as NEL) and Unicode line and paragraph separators.
fn is_line_breaking(c: char) -> bool {
    c.is_control() || matches!(c, '\u{2028}' | '\u{2029}')
}

/// Writes `text` with every line-breaking character (and `"` and `\`)
/// escaped, so one request is always one line.
pub fn escape_into(out: &mut String, text: &str) {
    if is_plain(text) || !text.chars().any(|c| is_line_breaking(c) || c == '"' || c == '\\') {
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
    if is_plain(text) {
        out.push_str(text);
        out.push('"');
        return;
    }
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

/// RFC 3339 UTC with microseconds, like `tracing-subscriber`'s. The date
/// and time of day are kept per thread and remade once a second (as hyper
/// keeps its `Date` header).
fn timestamp(out: &mut String) {
    thread_local! {
        static SECOND: std::cell::Cell<(u64, [u8; 19])> = const { std::cell::Cell::new((u64::MAX, [0; 19])) };
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = now.as_secs();
    let (cached, mut text) = SECOND.get();
    if cached != secs {
        text = date_time(secs);
        SECOND.set((secs, text));
    }
    push_stamp(out, &text, now.subsec_micros());
}

/// The RFC 3339 form of `now`, a time since the Unix epoch.
#[cfg(test)]
fn timestamp_at(out: &mut String, now: std::time::Duration) {
    push_stamp(out, &date_time(now.as_secs()), now.subsec_micros());
}

/// `date_time` and the microseconds, as `...T12:34:56.000789Z`.
fn push_stamp(out: &mut String, date_time: &[u8; 19], micros: u32) {
    out.push_str(std::str::from_utf8(date_time).unwrap_or_default());
    out.push('.');
    push_padded(out, u64::from(micros), 6);
    out.push('Z');
}

/// `YYYY-MM-DDTHH:MM:SS` of `secs` since the Unix epoch, UTC.
fn date_time(secs: u64) -> [u8; 19] {
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
    let text =
        format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}", rest / 3600, rest / 60 % 60, rest % 60);
    let mut out = [b'0'; 19];
    if text.len() == 19 {
        out.copy_from_slice(text.as_bytes());
    }
    out
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
    fn numbers_are_written_as_fmt_writes_them() {
        for millis in [0.0, 0.0004, 0.0005, 0.001, 1.5, 12.3456, 999.9999, 1_234_567.891] {
            let mut out = String::new();
            push_millis(&mut out, millis);
            assert_eq!(out, format!("{millis:.3}"), "{millis}");
        }
        for ip in ["127.0.0.1", "0.0.0.0", "255.255.255.255", "10.20.3.4", "::1", "2001:db8::8a2e:370:7334"] {
            let mut out = String::new();
            push_ip(&mut out, ip.parse().unwrap());
            assert_eq!(out, ip);
        }
        let mut out = String::new();
        push_padded(&mut out, 42, 6);
        push_padded(&mut out, 1_234_567, 6);
        assert_eq!(out, "0000421234567");
    }

    #[test]
    fn a_pretty_line_reads_like_the_rest_of_the_log() {
        let line = AccessLine {
            error: false,
            method: "GET",
            path: "/hello",
            route: Some("/hello"),
            status: Some(200),
            latency_ms: 0.25,
            bytes_out: 14,
            client: "127.0.0.2".parse().unwrap(),
            worker: Some(1),
            request_id: "0f3c",
            outcome: "completed",
            reason: Some("a \"quoted\" reason"),
            trace_id: None,
        };
        let mut out = String::new();
        pretty(&mut out, &line);
        let (stamp, rest) = out.split_at(27);
        assert!(stamp.starts_with("20") && stamp.ends_with('Z') && stamp.as_bytes()[10] == b'T', "{out}");
        assert_eq!(
            rest,
            "  INFO wharf::access: request method=GET path=/hello route=/hello status=200 latency_ms=0.250 \
             bytes_out=14 client=127.0.0.2 worker=1 request_id=0f3c outcome=completed \
             reason=\"a \\\"quoted\\\" reason\"\n"
        );
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
