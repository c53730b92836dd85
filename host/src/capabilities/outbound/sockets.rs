//! Outbound TCP and UDP through `wasi:sockets`, allowed by the component's
//! `allowed_outbound_hosts` (Spin's `tcp://`, `udp://`, `*://` entries, by
//! address or range) and drawn from the same budget as its HTTP requests:
//! each TCP connection, and each new UDP peer, is one request of
//! `max_outbound_requests` (and of its request tree's). Listening and
//! accepting are never allowed; binds only to let the system pick the
//! local address. Denials are counted and logged like HTTP's.

use super::{OutboundClient, Spent};
use crate::manifest::AllowList;
use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use wasmtime_wasi::sockets::SocketAddrUse;

/// The check wasmtime asks about every address a guest's socket uses.
pub type SocketCheck =
    Box<dyn Fn(SocketAddr, SocketAddrUse) -> Pin<Box<dyn Future<Output = bool> + Send + Sync>> + Send + Sync>;

/// The socket check of one instance of `component`.
pub fn check(
    allowed: Arc<AllowList>,
    spent: Arc<Spent>,
    max: u32,
    client: Arc<OutboundClient>,
    component: Arc<str>,
) -> SocketCheck {
    let udp_peers = Arc::new(Mutex::new(HashSet::new()));
    Box::new(move |address, usage| {
        let verdict = decide(&allowed, &spent, max, &udp_peers, address, usage);
        if let Err(why) = verdict {
            client.metrics.denied();
            if let Some(count) = client.denied_log.note() {
                tracing::warn!(%component, %address, ?usage, denied = count,
                    "socket use denied: {why} (this one and the count since the last such line)");
            }
        }
        let allowed = verdict.is_ok();
        Box::pin(async move { allowed })
    })
}

fn decide(
    allowed: &AllowList,
    spent: &Spent,
    max: u32,
    udp_peers: &Mutex<HashSet<SocketAddr>>,
    address: SocketAddr,
    usage: SocketAddrUse,
) -> Result<(), &'static str> {
    let kind = match usage {
        // The system picks the local address for a connection or datagram.
        SocketAddrUse::TcpBind | SocketAddrUse::UdpBind
            if address.ip().is_unspecified() && address.port() == 0 =>
        {
            return Ok(());
        }
        SocketAddrUse::TcpBind | SocketAddrUse::UdpBind => {
            return Err("binding to a chosen address is not allowed");
        }
        SocketAddrUse::TcpListen | SocketAddrUse::TcpAccept => return Err("listening is not allowed"),
        SocketAddrUse::TcpConnect => "tcp",
        SocketAddrUse::UdpSend | SocketAddrUse::UdpReceive => "udp",
        #[allow(unreachable_patterns, reason = "wasmtime may add uses")]
        _ => return Err("this socket use is not allowed"),
    };
    if allowed.matching_socket(kind, address).is_none() {
        return Err("not in allowed_outbound_hosts");
    }
    let counts = match usage {
        SocketAddrUse::TcpConnect => true,
        SocketAddrUse::UdpSend => udp_peers.lock().unwrap_or_else(|e| e.into_inner()).insert(address),
        _ => false,
    };
    if counts {
        spent.take(max).map(drop)?;
    }
    Ok(())
}
