//! Listening sockets: the public address bound once per runtime thread
//! with `SO_REUSEPORT` (the kernel spreads connections across them), the
//! admin address, and the TLS acceptor when HTTPS is configured.

use anyhow::{Context, Result};
use std::net::SocketAddr;

/// Listening sockets bound to one address, one per runtime thread, and the
/// admin listener's socket.
pub struct Listeners {
    pub(super) sockets: Vec<std::net::TcpListener>,
    pub(super) local_addr: SocketAddr,
    pub(super) admin: Option<std::net::TcpListener>,
    pub(super) tls: Option<tokio_rustls::TlsAcceptor>,
}

impl Listeners {
    /// Binds what `settings` asks for: `listen` once per thread (with TLS
    /// if configured), and `admin_listen` if set.
    pub fn bind_for(settings: &crate::manifest::ServerSettings) -> Result<Self> {
        let mut listeners = Self::bind(settings.listen, settings.threads)?;
        listeners.tls = settings.tls.as_ref().map(super::tls::acceptor).transpose()?;
        if let Some(admin) = settings.admin_listen {
            let socket = std::net::TcpListener::bind(admin).with_context(|| {
                format!(
                    "cannot listen on {admin} (server.admin_listen): is something already listening there?"
                )
            })?;
            socket.set_nonblocking(true)?;
            listeners.admin = Some(socket);
        }
        Ok(listeners)
    }

    /// The admin listener's address, if there is one.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|s| s.local_addr().ok())
    }

    /// Binds `count` sockets to `addr` with `SO_REUSEPORT`, so the kernel
    /// spreads connections across them. Port 0 picks one free port for all.
    ///
    /// Something already listening on `addr` is an error: `SO_REUSEPORT`
    /// would otherwise let a second server start and silently take half
    /// the connections. A plain bind first (without the option) finds out.
    pub fn bind(addr: SocketAddr, count: usize) -> Result<Self> {
        if addr.port() != 0 {
            probe(addr)?;
        }
        let first = reuseport_listener(addr).with_context(|| format!("cannot listen on {addr}"))?;
        let local_addr = first.local_addr()?;
        let mut sockets = vec![first];
        for _ in 1..count.max(1) {
            sockets.push(
                reuseport_listener(local_addr).with_context(|| format!("cannot listen on {local_addr}"))?,
            );
        }
        Ok(Self { sockets, local_addr, admin: None, tls: None })
    }

    /// The address actually bound (with the real port when 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

/// Fails with a clear message if anything is bound to `addr`.
fn probe(addr: SocketAddr) -> Result<()> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    // Tolerate connections of a previous run still in TIME_WAIT; a
    // listening socket (with or without SO_REUSEPORT) still conflicts.
    socket.set_reuse_address(true)?;
    match socket.bind(&addr.into()) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::AddrInUse => anyhow::bail!(
            "cannot listen on {addr}: something is already listening there (another wharf?); \
             stop it or choose another address with --listen or server.listen"
        ),
        Err(error) => Err(error).with_context(|| format!("cannot listen on {addr}")),
    }
}

fn reuseport_listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}
