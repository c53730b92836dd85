//! `allowed_outbound_hosts`: Spin's syntax for the hosts a component's
//! outgoing HTTP requests may reach, parsed at load and checked on every
//! request (default deny).

use anyhow::{Context as _, Result, bail};

/// One entry of `allowed_outbound_hosts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowedHost {
    /// The app itself (`http://self` or `self`): requests whose authority
    /// is `self`, sent to Wharf's own listener.
    SelfApp,
    /// `scheme://host[:port]` with `*` wildcards.
    Pattern {
        /// `http`, `https` or `*`.
        scheme: String,
        /// A host, `*`, or `*.suffix`.
        host: String,
        /// A port, or `None` for any (`*`); an omitted port means the
        /// scheme's default.
        port: Option<u16>,
    },
}

/// A component's outbound allow-list; empty denies everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList(Vec<AllowedHost>);

impl AllowList {
    /// Parses Spin-style entries: `https://api.example.com`,
    /// `http://127.0.0.1:8080`, `https://*.example.com`, `http://*:*`,
    /// `*://localhost:*`, `http://self`.
    pub fn parse(entries: &[String]) -> Result<Self> {
        entries
            .iter()
            .map(|entry| parse_entry(entry).with_context(|| format!("allowed_outbound_hosts: {entry:?}")))
            .collect::<Result<_>>()
            .map(Self)
    }

    /// Whether a request to `scheme://host:port` may go out.
    pub fn allows(&self, scheme: &str, host: &str, port: u16) -> bool {
        self.matching(scheme, host, port).is_some()
    }

    /// The first entry that lets a request to `scheme://host:port` go out.
    pub fn matching(&self, scheme: &str, host: &str, port: u16) -> Option<&AllowedHost> {
        self.0.iter().find(|entry| match entry {
            AllowedHost::SelfApp => host == "self",
            AllowedHost::Pattern { scheme: s, host: h, port: p } => {
                (s == "*" || s == scheme)
                    && p.is_none_or(|p| p == port)
                    && (h == "*"
                        || h.eq_ignore_ascii_case(host)
                        || h.strip_prefix("*.").is_some_and(|suffix| is_subdomain(host, suffix)))
            }
        })
    }
}

/// Whether `host` (the guest's choice: any bytes) is a name under `suffix`:
/// `a.suffix`, `a.b.suffix`, compared as bytes so no host can split a
/// character.
fn is_subdomain(host: &str, suffix: &str) -> bool {
    let (host, suffix) = (host.as_bytes(), suffix.as_bytes());
    host.len() > suffix.len() + 1
        && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
        && host[host.len() - suffix.len() - 1] == b'.'
}

impl std::fmt::Display for AllowedHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::SelfApp => write!(f, "http://self"),
            Self::Pattern { scheme, host, port: Some(port) } => write!(f, "{scheme}://{host}:{port}"),
            Self::Pattern { scheme, host, port: None } => write!(f, "{scheme}://{host}:*"),
        }
    }
}

fn parse_entry(entry: &str) -> Result<AllowedHost> {
    if entry == "self" || entry == "http://self" {
        return Ok(AllowedHost::SelfApp);
    }
    let Some((scheme, rest)) = entry.split_once("://") else {
        bail!("expected scheme://host[:port], like \"https://api.example.com\"");
    };
    if !matches!(scheme, "http" | "https" | "*") {
        bail!("scheme must be http, https or *");
    }
    let rest = rest.trim_end_matches('/');
    if rest.contains('/') {
        bail!("paths are not allowed, only scheme://host[:port]");
    }
    let (host, port) = match rest.rsplit_once(':') {
        Some((host, "*")) => (host, None),
        Some((host, port)) => (
            host,
            Some(port.parse::<u16>().map_err(|_| anyhow::anyhow!("port {port:?} is not a number or *"))?),
        ),
        None => match scheme {
            "http" => (rest, Some(80)),
            "https" => (rest, Some(443)),
            _ => bail!("with scheme * give a port (or :*)"),
        },
    };
    let wildcard_ok =
        host == "*" || host.strip_prefix("*.").is_some_and(|rest| !rest.is_empty() && !rest.contains('*'));
    if host.is_empty() || (host.contains('*') && !wildcard_ok) {
        bail!("host must be a name, an address, * or *.domain");
    }
    Ok(AllowedHost::Pattern { scheme: scheme.into(), host: host.to_ascii_lowercase(), port })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(entries: &[&str]) -> AllowList {
        AllowList::parse(&entries.iter().map(|e| e.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn allow_list_follows_spin_syntax() {
        let allowed =
            list(&["https://api.example.com", "http://127.0.0.1:*", "https://*.cdn.net", "http://self"]);
        assert!(allowed.allows("https", "api.example.com", 443));
        assert!(!allowed.allows("https", "api.example.com", 8443), "omitted port means the default");
        assert!(!allowed.allows("http", "api.example.com", 80), "scheme must match");
        assert!(allowed.allows("http", "127.0.0.1", 9999));
        assert!(allowed.allows("https", "a.cdn.net", 443));
        assert!(!allowed.allows("https", "cdn.net", 443), "*.x does not match x itself");
        assert!(!allowed.allows("https", "evilcdn.net", 443));
        assert!(allowed.allows("http", "self", 80));
        assert!(!AllowList::default().allows("http", "example.com", 80), "default deny");
        assert!(list(&["*://*:*"]).allows("https", "anything", 1));
        // Hosts that are not ASCII never split a character, nor match.
        let cdn = list(&["https://*.cdn.net"]);
        assert!(!cdn.allows("https", "é.cdn.net".trim_start_matches('é'), 443));
        assert!(cdn.allows("https", "é.cdn.net", 443), "any label, compared as bytes");
        assert!(!cdn.allows("https", "xé.net", 443));
        assert!(!cdn.allows("https", "ééééééééé", 443));
        for bad in ["example.com", "ftp://x", "http://a/b", "http://x:notaport", "*://x", "http://a*b"] {
            assert!(AllowList::parse(&[bad.to_string()]).is_err(), "{bad} should be rejected");
        }
    }
}
