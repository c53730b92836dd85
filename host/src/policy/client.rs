//! Who a request is from: the address limits and logs attribute it to.

use http::HeaderMap;
use std::net::IpAddr;

/// The client address of a request: the socket peer, or the right-most
/// address in the trusted proxy header when one is configured.
pub fn client_addr(headers: &HeaderMap, peer: IpAddr, trusted_header: Option<&http::HeaderName>) -> IpAddr {
    let Some(name) = trusted_header else { return peer };
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|part| part.trim().parse::<IpAddr>().ok())
        .next_back()
        .unwrap_or(peer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn trusted_proxy_header_gives_the_right_most_address() {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", HeaderValue::from_static("1.1.1.1, 2.2.2.2"));
        let peer: IpAddr = "127.0.0.1".parse().unwrap();
        let name = http::HeaderName::from_static("x-forwarded-for");
        assert_eq!(client_addr(&headers, peer, Some(&name)), "2.2.2.2".parse::<IpAddr>().unwrap());
        assert_eq!(client_addr(&headers, peer, None), peer, "ignored unless configured");
    }
}
