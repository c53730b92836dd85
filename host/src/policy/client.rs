//! Who a request is from, and how much one client may hold at once.
//!
//! The client is the socket's peer, unless the peer is one of the trusted
//! proxies: then the forwarded header is walked from the right, past every
//! trusted proxy, to the first address that is not one. An entry that does
//! not parse ends the walk at the last good hop: a client cannot hide
//! behind garbage to make the walk skip to an address it chose.
//!
//! [`PerClient`] counts what each client holds (connections by peer address,
//! requests in flight by client address) and refuses past a cap; a client
//! with nothing held has no entry, so memory is bounded by what is held.

use crate::manifest::ClientSettings;
use http::{HeaderMap, HeaderName};
use ipnet::IpNet;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Resolves the client address of a request.
#[derive(Debug, Clone)]
pub struct ClientIdentity {
    trusted_proxies: Vec<IpNet>,
    header: HeaderName,
}

impl ClientIdentity {
    /// The identity rules `settings` describe.
    pub fn new(settings: &ClientSettings) -> Self {
        Self {
            trusted_proxies: settings.trusted_proxies.clone(),
            header: settings.trusted_proxy_header.clone(),
        }
    }

    /// Whether `peer` is a trusted proxy (its forwarded headers count).
    pub fn is_trusted_proxy(&self, peer: IpAddr) -> bool {
        let peer = canonical(peer);
        self.trusted_proxies.iter().any(|net| net.contains(&peer))
    }

    /// The client address: `peer`, or, when `peer` is a trusted proxy, the
    /// right-most forwarded address that is not a trusted proxy.
    pub fn client_addr(&self, headers: &HeaderMap, peer: IpAddr) -> IpAddr {
        if !self.is_trusted_proxy(peer) {
            return peer;
        }
        let mut client = canonical(peer);
        // Right to left across every occurrence of the header, in order.
        let values: Vec<&str> =
            headers.get_all(&self.header).iter().filter_map(|v| v.to_str().ok()).collect();
        for entry in values.iter().rev().flat_map(|v| v.rsplit(',')) {
            let Some(hop) = parse_hop(entry.trim()) else { return client };
            client = hop;
            if !self.is_trusted_proxy(hop) {
                return hop;
            }
        }
        client
    }
}

/// An address as proxies write it: `1.2.3.4`, `2001:db8::1`, or with a
/// port (`1.2.3.4:80`, `[2001:db8::1]:80`).
fn parse_hop(entry: &str) -> Option<IpAddr> {
    if let Ok(addr) = entry.parse::<IpAddr>() {
        return Some(canonical(addr));
    }
    entry.parse::<std::net::SocketAddr>().ok().map(|s| canonical(s.ip()))
}

/// IPv4-mapped IPv6 addresses as the IPv4 address they are.
fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
    }
}

/// Counts of something each client holds, capped per client.
#[derive(Clone)]
pub struct PerClient {
    held: Arc<Mutex<HashMap<IpAddr, usize>>>,
    cap: usize,
}

impl PerClient {
    /// At most `cap` per client; 0 means no cap (nothing is counted).
    pub fn new(cap: usize) -> Self {
        Self { held: Arc::default(), cap }
    }

    /// One more for `client`, or `None` if it already holds `cap`.
    pub fn try_acquire(&self, client: IpAddr) -> Option<ClientSlot> {
        if self.cap == 0 {
            return Some(ClientSlot { owner: None, client });
        }
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let count = held.entry(client).or_insert(0);
        if *count >= self.cap {
            return None;
        }
        *count += 1;
        Some(ClientSlot { owner: Some(self.clone()), client })
    }

    /// What `client` holds now.
    pub fn held_by(&self, client: IpAddr) -> usize {
        self.held.lock().unwrap_or_else(|e| e.into_inner()).get(&client).copied().unwrap_or(0)
    }

    /// Clients holding something now.
    pub fn clients(&self) -> usize {
        self.held.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// One unit a client holds; given back when dropped.
pub struct ClientSlot {
    owner: Option<PerClient>,
    client: IpAddr,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let Some(owner) = &self.owner else { return };
        let mut held = owner.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = held.get_mut(&self.client) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn identity(trusted: &[&str]) -> ClientIdentity {
        ClientIdentity {
            trusted_proxies: trusted.iter().map(|t| t.parse().unwrap()).collect(),
            header: HeaderName::from_static("x-forwarded-for"),
        }
    }

    fn forwarded(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append("x-forwarded-for", HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn forwarded_addresses_count_only_from_trusted_proxies() {
        let rules = identity(&["10.0.0.0/8"]);
        let headers = forwarded(&["6.6.6.6"]);
        assert_eq!(rules.client_addr(&headers, ip("203.0.113.9")), ip("203.0.113.9"), "untrusted peer");
        assert_eq!(rules.client_addr(&headers, ip("10.1.2.3")), ip("6.6.6.6"), "trusted peer");
        assert_eq!(rules.client_addr(&HeaderMap::new(), ip("10.1.2.3")), ip("10.1.2.3"), "no header");
    }

    #[test]
    fn the_walk_skips_trusted_hops_and_stops_at_the_first_other_one() {
        let rules = identity(&["10.0.0.0/8", "192.168.0.1/32"]);
        // The client put 1.1.1.1 itself; 2.2.2.2 is what the proxy saw.
        let headers = forwarded(&["1.1.1.1, 2.2.2.2, 10.0.0.7", "192.168.0.1"]);
        assert_eq!(rules.client_addr(&headers, ip("10.0.0.1")), ip("2.2.2.2"));
        // Every hop trusted: the left-most of them.
        let headers = forwarded(&["10.9.9.9, 10.0.0.7"]);
        assert_eq!(rules.client_addr(&headers, ip("10.0.0.1")), ip("10.9.9.9"));
    }

    #[test]
    fn garbage_ends_the_walk_at_the_last_good_hop() {
        let rules = identity(&["10.0.0.0/8"]);
        // A proxy appended "ip:port"-style garbage: never skip left of it.
        let headers = forwarded(&["6.6.6.6, not-an-address"]);
        assert_eq!(rules.client_addr(&headers, ip("10.0.0.1")), ip("10.0.0.1"));
        let headers = forwarded(&["6.6.6.6, 10.0.0.5, bogus, 10.0.0.6"]);
        assert_eq!(rules.client_addr(&headers, ip("10.0.0.1")), ip("10.0.0.6"));
        // Ports are understood, not garbage.
        let headers = forwarded(&["6.6.6.6, 7.7.7.7:5555"]);
        assert_eq!(rules.client_addr(&headers, ip("10.0.0.1")), ip("7.7.7.7"));
        let headers = forwarded(&["[2001:db8::1]:443"]);
        assert_eq!(rules.client_addr(&headers, ip("10.0.0.1")), ip("2001:db8::1"));
    }

    #[test]
    fn ipv4_mapped_peers_match_ipv4_proxies() {
        let rules = identity(&["127.0.0.1/32"]);
        assert!(rules.is_trusted_proxy(ip("::ffff:127.0.0.1")));
    }

    #[test]
    fn per_client_counts_are_capped_and_forgotten_when_released() {
        let per_client = PerClient::new(2);
        let (a, b) = (ip("10.0.0.1"), ip("10.0.0.2"));
        let first = per_client.try_acquire(a).unwrap();
        let _second = per_client.try_acquire(a).unwrap();
        assert!(per_client.try_acquire(a).is_none(), "a third for the same client");
        assert!(per_client.try_acquire(b).is_some(), "another client is unaffected");
        drop(first);
        assert_eq!(per_client.held_by(a), 1);
        assert!(per_client.try_acquire(a).is_some());
        drop(_second);
        assert_eq!(per_client.clients(), 0, "nothing held, nothing remembered");
        assert!(PerClient::new(0).try_acquire(a).is_some(), "0 means no cap");
    }
}
