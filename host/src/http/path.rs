//! Path normalisation, before routing, auth and the guest, as Envoy's
//! `normalize_path` and `merge_slashes` do: percent-encoded unreserved
//! characters are decoded (`%61` is `a`), other escapes are kept with
//! upper-case hex, runs of slashes are merged, and dot segments are
//! resolved (`/x/../admin` is `/admin`). What would stay ambiguous is
//! refused (400): an encoded `/` or `\`, a backslash, NUL, a malformed
//! escape, bytes that are not UTF-8 once decoded, and control or line
//! separator characters. Matching stays case-sensitive.
//!
//! So one resource has one spelling: a route or an auth rule written for
//! `/admin/...` sees every request that a component normalising its own
//! path would treat as under `/admin`.

use std::borrow::Cow;

/// Why a path was refused.
pub type PathError = &'static str;

/// The normalised form of `path` (the path of a request target, without
/// its query), or why it is refused.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    if path == "*" {
        return Ok(Cow::Borrowed(path));
    }
    if is_already_normal(path) {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(path)?;
    check_fully_decoded(&decoded)?;
    Ok(Cow::Owned(remove_dot_segments(&merge_slashes(&decoded))))
}

/// The common case, checked without allocating: starts with `/`, only
/// plain characters, no `%`, no `//`, no dot segment.
fn is_already_normal(path: &str) -> bool {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return false;
    }
    let mut previous = 0u8;
    for (i, &b) in bytes.iter().enumerate() {
        let plain = b.is_ascii_alphanumeric() || b"-_~!$&'()*+,;=:@/".contains(&b);
        if !(plain || b == b'.') {
            return false;
        }
        if b == b'/' && previous == b'/' {
            return false;
        }
        if b == b'.' && previous == b'/' {
            // "/." starts a dot segment unless more follows ("/.well-known").
            let rest = &bytes[i..];
            if rest == b"." || rest == b".." || rest.starts_with(b"./") || rest.starts_with(b"../") {
                return false;
            }
        }
        previous = b;
    }
    true
}

fn hex_value(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Decodes unreserved escapes, upper-cases the others, refuses the
/// ambiguous ones and raw bytes that have no place in a path.
fn decode_unreserved(path: &str) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(bytes.len() + 1);
    if bytes.first() != Some(&b'/') {
        out.push('/');
    }
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let (Some(high), Some(low)) = (
                    bytes.get(i + 1).copied().and_then(hex_value),
                    bytes.get(i + 2).copied().and_then(hex_value),
                ) else {
                    return Err("malformed percent-encoding in the path");
                };
                let value = high * 16 + low;
                match value {
                    b'/' => return Err("encoded '/' in the path"),
                    b'\\' => return Err("encoded '\\' in the path"),
                    0 => return Err("encoded NUL in the path"),
                    v if is_unreserved(v) => out.push(v as char),
                    v => {
                        out.push('%');
                        out.push(char::from_digit(u32::from(v >> 4), 16).unwrap().to_ascii_uppercase());
                        out.push(char::from_digit(u32::from(v & 15), 16).unwrap().to_ascii_uppercase());
                    }
                }
                i += 3;
            }
            b'\\' => return Err("backslash in the path"),
            0 => return Err("NUL in the path"),
            _ => {
                // Raw non-ASCII passes through whole characters (the path is
                // a `str`); control characters are refused below.
                let ch = path[i..].chars().next().expect("in bounds");
                out.push(ch);
                i += ch.len_utf8();
            }
        }
    }
    Ok(out)
}

/// The path with every escape decoded must be UTF-8 without control or
/// line-separator characters.
fn check_fully_decoded(path: &str) -> Result<(), PathError> {
    let bytes = path.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            // Escapes left by `decode_unreserved` are well-formed.
            decoded.push(hex_value(bytes[i + 1]).unwrap() * 16 + hex_value(bytes[i + 2]).unwrap());
            i += 3;
        } else {
            decoded.push(bytes[i]);
            i += 1;
        }
    }
    let text = std::str::from_utf8(&decoded).map_err(|_| "the path is not UTF-8 once decoded")?;
    if text.chars().any(|c| c.is_control() || matches!(c, '\u{2028}' | '\u{2029}')) {
        return Err("control or line-separator character in the path");
    }
    Ok(())
}

fn merge_slashes(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for ch in path.chars() {
        if ch == '/' && out.ends_with('/') {
            continue;
        }
        out.push(ch);
    }
    out
}

/// RFC 3986 section 5.2.4, on a path that starts with `/`.
fn remove_dot_segments(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    let mut parts = path.split('/').skip(1).peekable();
    let mut trailing_slash = false;
    while let Some(segment) = parts.next() {
        let last = parts.peek().is_none();
        match segment {
            "." => trailing_slash = last,
            ".." => {
                segments.pop();
                trailing_slash = last;
            }
            other => {
                segments.push(other);
                trailing_slash = false;
            }
        }
    }
    let mut out = String::with_capacity(path.len());
    for segment in &segments {
        out.push('/');
        out.push_str(segment);
    }
    if trailing_slash || out.is_empty() {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(path: &str) -> String {
        normalize(path).unwrap_or_else(|e| panic!("{path:?} refused: {e}")).into_owned()
    }

    #[test]
    fn plain_paths_are_kept_as_they_are() {
        for path in ["/", "/hello", "/api/users/7", "/a/b/", "/.well-known/x", "/a.b/c..d", "/~user/a_b-c"] {
            assert!(matches!(normalize(path), Ok(Cow::Borrowed(_))), "{path}");
            assert_eq!(ok(path), path);
        }
    }

    #[test]
    fn every_spelling_of_a_protected_path_becomes_the_path() {
        for path in [
            "/admin/secret",
            "//admin/secret",
            "/admin//secret",
            "/x/../admin/secret",
            "/./admin/./secret",
            "/%61dmin/secret",
            "/%2e%2e/admin/secret",
            "/admin/x/%2E%2E/secret",
            "/../../admin/secret",
        ] {
            assert_eq!(ok(path), "/admin/secret", "{path}");
        }
    }

    #[test]
    fn dot_segments_resolve_like_rfc_3986() {
        assert_eq!(ok("/a/b/.."), "/a/");
        assert_eq!(ok("/a/b/."), "/a/b/");
        assert_eq!(ok("/a/b/../c"), "/a/c");
        assert_eq!(ok("/.."), "/");
        assert_eq!(ok("/a/..."), "/a/...", "three dots are a name");
    }

    #[test]
    fn other_escapes_are_kept_with_upper_case_hex() {
        assert_eq!(ok("/a%20b"), "/a%20b");
        assert_eq!(ok("/a%3fb"), "/a%3Fb");
        assert_eq!(ok("/caf%C3%A9"), "/caf%C3%A9");
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        for path in [
            "/admin%2Fsecret",
            "/admin%2fsecret",
            "/admin%5Csecret",
            "/admin\\secret",
            "/a%00b",
            "/a%zz",
            "/a%4",
            "/a%FFb",
            "/a%0Ab",
            "/a%E2%80%A8b",
            "/a\u{2028}b",
            "/a\u{85}b",
        ] {
            assert!(normalize(path).is_err(), "{path:?} should be refused");
        }
    }
}
