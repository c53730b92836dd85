//! `allowed_outbound_hosts`: Spin's syntax for where a component's outgoing
//! HTTP requests and sockets may go, parsed at load and checked on every
//! request and connection (default deny).
//!
//! An entry is `scheme://host[:port]`: the scheme (`http`, `https`, `tcp`,
//! `udp`, ... or `*`), the host (a name, an address, a CIDR range, `*`,
//! `*.domain`), the port (a number, a range `start..end`, `*`, or left out
//! for the scheme's well-known one). `http://self` is the app itself;
//! `http://NAME.spin.internal` a component of a Spin app (service
//! chaining). Sockets are checked by address, so a host name never
//! matches one (as on Spin): give the address or range.

use anyhow::{Context as _, Result, bail};
use std::net::{IpAddr, SocketAddr};

/// One entry of `allowed_outbound_hosts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowedHost {
    /// The app itself (`http://self` or `self`): requests whose authority
    /// is `self`, served in process.
    SelfApp,
    /// `scheme://host[:port]`.
    Pattern {
        /// The scheme, or `*` for any.
        scheme: String,
        /// Which hosts.
        host: HostPattern,
        /// Which ports.
        port: PortPattern,
        /// The entry as written (what logs and metric labels show).
        written: String,
    },
}

/// The host part of an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// `*`: any host.
    Any,
    /// `*.domain`: any name below the domain (stored with its dot).
    Subdomain(String),
    /// A host name, lowercase.
    Name(String),
    /// An address, or a range of them.
    Network(ipnet::IpNet),
}

/// The port part of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortPattern {
    /// `*`.
    Any,
    /// `start..end` (end excluded, as Spin writes it); one port is `p..p+1`.
    Range(u16, u32),
}

/// A component's outbound allow-list; empty denies everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList(Vec<AllowedHost>);

impl AllowList {
    /// Parses Spin-style entries: `https://api.example.com`,
    /// `http://127.0.0.1:8080`, `https://*.example.com`, `http://*:*`,
    /// `*://localhost:*`, `tcp://10.0.0.0/8:5432`, `http://self`.
    pub fn parse(entries: &[String]) -> Result<Self> {
        entries
            .iter()
            .map(|entry| parse_entry(entry).with_context(|| format!("allowed_outbound_hosts: {entry:?}")))
            .collect::<Result<_>>()
            .map(Self)
    }

    /// Like [`Self::parse`], for a Spin app with `components`: a
    /// `*.spin.internal` entry may chain to each of them, a
    /// `NAME.spin.internal` one must name one.
    pub fn parse_spin(entries: &[String], components: &[String]) -> Result<Self> {
        let list = Self::parse(entries)?;
        for entry in &list.0 {
            if let AllowedHost::Pattern { host: HostPattern::Name(name), written, .. } = entry
                && let Some(component) = name.strip_suffix(crate::manifest::spin::SERVICE_CHAINING_SUFFIX)
                && !components.iter().any(|c| c == component)
            {
                bail!("{written:?} chains to component {component:?}, which the app does not have");
            }
        }
        Ok(list)
    }

    /// Whether a request to `scheme://host:port` may go out.
    pub fn allows(&self, scheme: &str, host: &str, port: u16) -> bool {
        self.matching(scheme, host, port).is_some()
    }

    /// The first entry that lets a request to `scheme://host:port` go out.
    pub fn matching(&self, scheme: &str, host: &str, port: u16) -> Option<&AllowedHost> {
        self.0.iter().find(|entry| match entry {
            AllowedHost::SelfApp => host == "self",
            AllowedHost::Pattern { scheme: s, host: h, port: p, .. } => {
                (s == "*" || s == scheme) && p.allows(port) && h.allows_name(host)
            }
        })
    }

    /// The first entry that lets a socket of `kind` (`tcp` or `udp`) reach
    /// `address`.
    pub fn matching_socket(&self, kind: &str, address: SocketAddr) -> Option<&AllowedHost> {
        self.0.iter().find(|entry| match entry {
            AllowedHost::SelfApp => false,
            AllowedHost::Pattern { scheme, host, port, .. } => {
                (scheme == "*" || scheme == kind)
                    && port.allows(address.port())
                    && host.allows_address(address.ip())
            }
        })
    }

    /// Whether any entry is for sockets (`tcp`, `udp` or `*`): only then
    /// may the component look names up.
    pub fn has_sockets(&self) -> bool {
        self.0.iter().any(|entry| {
            matches!(entry, AllowedHost::Pattern { scheme, .. } if matches!(scheme.as_str(), "tcp" | "udp" | "*"))
        })
    }
}

impl HostPattern {
    fn allows_name(&self, host: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Subdomain(suffix) => is_subdomain(host, suffix),
            Self::Name(name) => name.as_bytes().eq_ignore_ascii_case(host.as_bytes()),
            Self::Network(network) => {
                let host = host.trim_start_matches('[').trim_end_matches(']');
                host.parse::<IpAddr>().is_ok_and(|ip| network.contains(&ip))
            }
        }
    }

    fn allows_address(&self, ip: IpAddr) -> bool {
        match self {
            Self::Any => true,
            Self::Network(network) => network.contains(&ip),
            Self::Name(_) | Self::Subdomain(_) => false,
        }
    }
}

impl PortPattern {
    fn allows(&self, port: u16) -> bool {
        match *self {
            Self::Any => true,
            Self::Range(start, end) => port >= start && u32::from(port) < end,
        }
    }
}

/// Whether `host` (the guest's choice: any bytes) is a name under `suffix`
/// (`.domain`), compared as bytes so no host can split a character.
fn is_subdomain(host: &str, suffix: &str) -> bool {
    let (host, suffix) = (host.as_bytes(), suffix.as_bytes());
    host.len() > suffix.len() && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
}

impl std::fmt::Display for AllowedHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::SelfApp => write!(f, "http://self"),
            Self::Pattern { written, .. } => f.write_str(written),
        }
    }
}

/// The port a scheme uses when an entry gives none.
fn well_known_port(scheme: &str) -> Option<u16> {
    Some(match scheme {
        "http" => 80,
        "https" => 443,
        "postgres" => 5432,
        "mysql" => 3306,
        "redis" => 6379,
        "mqtt" => 1883,
        _ => return None,
    })
}

fn parse_entry(entry: &str) -> Result<AllowedHost> {
    let entry = entry.trim();
    if entry == "self" || entry == "http://self" {
        return Ok(AllowedHost::SelfApp);
    }
    if entry == "insecure:allow-all" {
        bail!("'insecure:allow-all' is not allowed: write '*://*:*' if you really mean every host");
    }
    let Some((scheme, rest)) = entry.split_once("://") else {
        bail!("expected scheme://host[:port], like \"https://api.example.com\"");
    };
    if scheme != "*" && (scheme.is_empty() || !scheme.chars().all(|c| c.is_ascii_alphabetic())) {
        bail!("scheme must be letters (http, https, tcp, udp...) or *");
    }
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    // A CIDR range has a slash of its own: `10.0.0.0/8`, `10.0.0.0/8:5432`.
    let (host, port) = split_port(rest);
    if host.contains('/') && host.parse::<ipnet::IpNet>().is_err() {
        bail!("paths are not allowed, only scheme://host[:port]");
    }
    let port = match port {
        None => match well_known_port(scheme) {
            Some(port) => PortPattern::Range(port, u32::from(port) + 1),
            None => bail!("scheme {scheme:?} has no well-known port: give one (or :*)"),
        },
        Some("*") => PortPattern::Any,
        Some(port) => match port.split_once("..") {
            Some((start, end)) => {
                let number = |p: &str| {
                    p.parse::<u16>().map_err(|_| anyhow::anyhow!("port range {port:?} is not numbers"))
                };
                let (start, end) = (number(start)?, number(end)?);
                if start >= end {
                    bail!("port range {port:?} is empty");
                }
                PortPattern::Range(start, u32::from(end))
            }
            None => {
                let port =
                    port.parse::<u16>().map_err(|_| anyhow::anyhow!("port {port:?} is not a number or *"))?;
                PortPattern::Range(port, u32::from(port) + 1)
            }
        },
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let host = if host == "*" {
        HostPattern::Any
    } else if let Some(domain) = host.strip_prefix("*.") {
        if domain.is_empty() || domain.contains('*') {
            bail!("host must be a name, an address, a CIDR range, * or *.domain");
        }
        HostPattern::Subdomain(format!(".{}", domain.to_ascii_lowercase()))
    } else if let Ok(network) = host.parse::<ipnet::IpNet>() {
        HostPattern::Network(network)
    } else if let Ok(ip) = host.parse::<IpAddr>() {
        HostPattern::Network(ip.into())
    } else if host.is_empty() || host.contains('*') {
        bail!("host must be a name, an address, a CIDR range, * or *.domain");
    } else {
        HostPattern::Name(host.to_ascii_lowercase())
    };
    Ok(AllowedHost::Pattern { scheme: scheme.into(), host, port, written: entry.to_string() })
}

/// Splits `host[:port]`, minding IPv6 brackets and a CIDR's slash.
fn split_port(rest: &str) -> (&str, Option<&str>) {
    if let Some(end) = rest.find(']') {
        let (host, after) = rest.split_at(end + 1);
        return (host, after.strip_prefix(':'));
    }
    if rest.matches(':').count() > 1 {
        // A bare IPv6 address or range: no port.
        return (rest, None);
    }
    match rest.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (rest, None),
    }
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
        assert!(!allowed.allows("http", "api.example.com", 80));
        assert!(!allowed.allows("https", "api.example.com", 8443));
        assert!(allowed.allows("http", "127.0.0.1", 9999));
        assert!(allowed.allows("https", "img.cdn.net", 443));
        assert!(!allowed.allows("https", "cdn.net", 443));
        assert!(!allowed.allows("https", "evilcdn.net", 443));
        assert!(allowed.allows("http", "self", 80));
        assert!(list(&["*://*:*"]).allows("https", "anything", 1));
        for bad in ["example.com", "ft p://x", "http://a/b", "http://x:notaport", "tcp://x", "http://a*b"] {
            assert!(AllowList::parse(&[bad.to_string()]).is_err(), "{bad} should be rejected");
        }
        // Hosts that are not ASCII never split a character, nor match.
        let cdn = list(&["https://*.cdn.net"]);
        assert!(!cdn.allows("https", ".cdn.net", 443));
        assert!(cdn.allows("https", "é.cdn.net", 443), "any label, compared as bytes");
        assert!(!cdn.allows("https", "xé.net", 443));
        assert!(!cdn.allows("https", "ééééééééé", 443));
    }

    #[test]
    fn sockets_are_allowed_by_address_range_and_port() {
        let allowed = list(&[
            "tcp://10.0.0.0/8:5432",
            "udp://127.0.0.1:53",
            "tcp://db.example.com:5432",
            "*://[::1]:7000..7002",
        ]);
        let at = |addr: &str| addr.parse::<SocketAddr>().unwrap();
        assert!(allowed.matching_socket("tcp", at("10.1.2.3:5432")).is_some());
        assert!(allowed.matching_socket("tcp", at("10.1.2.3:5433")).is_none());
        assert!(allowed.matching_socket("tcp", at("11.0.0.1:5432")).is_none());
        assert!(allowed.matching_socket("udp", at("10.1.2.3:5432")).is_none(), "tcp only");
        assert!(allowed.matching_socket("udp", at("127.0.0.1:53")).is_some());
        assert!(allowed.matching_socket("tcp", at("[::1]:7001")).is_some());
        assert!(allowed.matching_socket("tcp", at("[::1]:7002")).is_none(), "the range's end is excluded");
        assert!(allowed.has_sockets());
        assert!(!list(&["https://example.com"]).has_sockets());
        assert!(list(&["https://example.com"]).matching_socket("tcp", at("1.2.3.4:443")).is_none());
    }

    #[test]
    fn service_chaining_names_a_component_of_the_app() {
        let components = ["api".to_string(), "web".to_string()];
        let entries = |e: &str| vec![e.to_string()];
        let wildcard = AllowList::parse_spin(&entries("http://*.spin.internal"), &components).unwrap();
        assert!(wildcard.allows("http", "api.spin.internal", 80));
        assert!(AllowList::parse_spin(&entries("http://api.spin.internal"), &components).is_ok());
        assert!(AllowList::parse_spin(&entries("http://nope.spin.internal"), &components).is_err());
    }
}
