//! Abstractions of Tcp and Unix socket types

#[cfg(unix)]
use std::os::unix::net as unix_net;
use std::{
    net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs},
    path::PathBuf,
};

/// Unified listener. Either a [`TcpListener`] or [`std::os::unix::net::UnixListener`]
pub enum Listener {
    Tcp(TcpListener),
    #[cfg(unix)]
    Unix(unix_net::UnixListener),
}
impl Listener {
    pub(crate) fn local_addr(&self) -> std::io::Result<ListenAddr> {
        match self {
            Self::Tcp(l) => l.local_addr().map(ListenAddr::from),
            #[cfg(unix)]
            Self::Unix(l) => l.local_addr().map(ListenAddr::from),
        }
    }

    pub(crate) fn accept(&self) -> std::io::Result<(Connection, Option<SocketAddr>)> {
        match self {
            Self::Tcp(l) => l
                .accept()
                .map(|(conn, addr)| (Connection::from(conn), Some(addr))),
            #[cfg(unix)]
            Self::Unix(l) => l.accept().map(|(conn, _)| (Connection::from(conn), None)),
        }
    }
}
impl From<TcpListener> for Listener {
    fn from(s: TcpListener) -> Self {
        Self::Tcp(s)
    }
}
#[cfg(unix)]
impl From<unix_net::UnixListener> for Listener {
    fn from(s: unix_net::UnixListener) -> Self {
        Self::Unix(s)
    }
}

/// Unified connection. Either a [`TcpStream`] or [`std::os::unix::net::UnixStream`].
#[derive(Debug)]
pub(crate) enum Connection {
    Tcp(TcpStream),
    #[cfg(unix)]
    Unix(unix_net::UnixStream),
}
impl std::io::Read for Connection {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Self::Tcp(s) => s.read(buf),
            #[cfg(unix)]
            Self::Unix(s) => s.read(buf),
        }
    }
}
impl std::io::Write for Connection {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Self::Tcp(s) => s.write(buf),
            #[cfg(unix)]
            Self::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Self::Tcp(s) => s.flush(),
            #[cfg(unix)]
            Self::Unix(s) => s.flush(),
        }
    }
}
// swapd: reads and writes through a shared reference, so that the read and write halves of a
// connection (and the handle given to the application) share one descriptor instead of each
// holding a `dup` of it.
impl std::io::Read for &Connection {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match *self {
            Connection::Tcp(s) => (&*s).read(buf),
            #[cfg(unix)]
            Connection::Unix(s) => (&*s).read(buf),
        }
    }
}
impl std::io::Write for &Connection {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match *self {
            Connection::Tcp(s) => (&*s).write(buf),
            #[cfg(unix)]
            Connection::Unix(s) => (&*s).write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match *self {
            Connection::Tcp(s) => (&*s).flush(),
            #[cfg(unix)]
            Connection::Unix(s) => (&*s).flush(),
        }
    }
}

/// swapd: one accepted client connection, shared by its reader, its writer and every
/// [`ConnectionHandle`]. The descriptor is closed when the last of them is dropped, so a handle
/// can never name a recycled descriptor.
pub(crate) struct Socket {
    pub(crate) connection: Connection,
    pub(crate) peer: Option<SocketAddr>,
    pub(crate) id: u64,
    /// The application's own per-connection state (`ConnectionHandle::attach`).
    pub(crate) attachment: std::sync::OnceLock<std::sync::Arc<dyn std::any::Any + Send + Sync>>,
}

impl Socket {
    pub(crate) fn new(connection: Connection, peer: Option<SocketAddr>, id: u64) -> Socket {
        Socket {
            connection,
            peer,
            id,
            attachment: std::sync::OnceLock::new(),
        }
    }
}

impl std::fmt::Debug for Socket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Socket")
            .field("connection", &self.connection)
            .field("peer", &self.peer)
            .field("id", &self.id)
            .finish()
    }
}

/// swapd: a handle to the connection a request arrived on, owned by whoever holds it.
///
/// It lets the application notice that a client left and cut a connection in O(1), without
/// searching the process's descriptors. It keeps the socket open (not the connection: the
/// server still closes both directions when it is done with it) for as long as it lives.
#[derive(Clone, Debug)]
pub struct ConnectionHandle {
    socket: std::sync::Arc<Socket>,
}

impl ConnectionHandle {
    pub(crate) fn new(socket: std::sync::Arc<Socket>) -> ConnectionHandle {
        ConnectionHandle { socket }
    }

    /// A number unique to this connection among those the process accepted.
    pub fn id(&self) -> u64 {
        self.socket.id
    }

    /// The client's address (`None` for a Unix socket).
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.socket.peer
    }

    /// The TCP socket, for socket options and `TCP_INFO` (`None` for a Unix socket).
    pub fn tcp_stream(&self) -> Option<&TcpStream> {
        match &self.socket.connection {
            Connection::Tcp(stream) => Some(stream),
            #[cfg(unix)]
            Connection::Unix(_) => None,
        }
    }

    /// Shuts the connection down (the server's pending reads and writes on it fail).
    pub fn shutdown(&self, how: Shutdown) -> std::io::Result<()> {
        self.socket.connection.shutdown(how)
    }

    /// Attaches the application's per-connection state, once; `false` if something was
    /// attached already. It lives as long as the connection's socket, so it must not hold a
    /// `ConnectionHandle` of its own (that would keep the socket open for good).
    pub fn attach(&self, value: std::sync::Arc<dyn std::any::Any + Send + Sync>) -> bool {
        self.socket.attachment.set(value).is_ok()
    }

    /// The state attached with [`ConnectionHandle::attach`], if it is a `T`.
    pub fn attachment<T: std::any::Any + Send + Sync>(&self) -> Option<std::sync::Arc<T>> {
        self.socket.attachment.get()?.clone().downcast::<T>().ok()
    }
}

#[cfg(unix)]
impl std::os::fd::AsRawFd for ConnectionHandle {
    /// The descriptor, valid for as long as this handle lives.
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        match &self.socket.connection {
            Connection::Tcp(stream) => stream.as_raw_fd(),
            Connection::Unix(stream) => stream.as_raw_fd(),
        }
    }
}

impl Connection {
    /// Gets the peer's address. Some for TCP, None for Unix sockets.
    pub(crate) fn peer_addr(&mut self) -> std::io::Result<Option<SocketAddr>> {
        match self {
            Self::Tcp(s) => s.peer_addr().map(Some),
            #[cfg(unix)]
            Self::Unix(_) => Ok(None),
        }
    }

    pub(crate) fn shutdown(&self, how: Shutdown) -> std::io::Result<()> {
        match self {
            Self::Tcp(s) => s.shutdown(how),
            #[cfg(unix)]
            Self::Unix(s) => s.shutdown(how),
        }
    }

    pub(crate) fn try_clone(&self) -> std::io::Result<Self> {
        match self {
            Self::Tcp(s) => s.try_clone().map(Self::from),
            #[cfg(unix)]
            Self::Unix(s) => s.try_clone().map(Self::from),
        }
    }
}
impl From<TcpStream> for Connection {
    fn from(s: TcpStream) -> Self {
        Self::Tcp(s)
    }
}
#[cfg(unix)]
impl From<unix_net::UnixStream> for Connection {
    fn from(s: unix_net::UnixStream) -> Self {
        Self::Unix(s)
    }
}

#[derive(Debug, Clone)]
pub enum ConfigListenAddr {
    IP(Vec<SocketAddr>),
    #[cfg(unix)]
    // TODO: use SocketAddr when bind_addr is stabilized
    Unix(std::path::PathBuf),
}
impl ConfigListenAddr {
    pub fn from_socket_addrs<A: ToSocketAddrs>(addrs: A) -> std::io::Result<Self> {
        addrs.to_socket_addrs().map(|it| Self::IP(it.collect()))
    }

    #[cfg(unix)]
    pub fn unix_from_path<P: Into<PathBuf>>(path: P) -> Self {
        Self::Unix(path.into())
    }

    pub(crate) fn bind(&self) -> std::io::Result<Listener> {
        match self {
            Self::IP(a) => TcpListener::bind(a.as_slice()).map(Listener::from),
            #[cfg(unix)]
            Self::Unix(a) => unix_net::UnixListener::bind(a).map(Listener::from),
        }
    }
}

/// Unified listen socket address. Either a [`SocketAddr`] or [`std::os::unix::net::SocketAddr`].
#[derive(Debug, Clone)]
pub enum ListenAddr {
    IP(SocketAddr),
    #[cfg(unix)]
    Unix(unix_net::SocketAddr),
}
impl ListenAddr {
    pub fn to_ip(self) -> Option<SocketAddr> {
        match self {
            Self::IP(s) => Some(s),
            #[cfg(unix)]
            Self::Unix(_) => None,
        }
    }

    /// Gets the Unix socket address.
    ///
    /// This is also available on non-Unix platforms, for ease of use, but always returns `None`.
    #[cfg(unix)]
    pub fn to_unix(self) -> Option<unix_net::SocketAddr> {
        match self {
            Self::IP(_) => None,
            Self::Unix(s) => Some(s),
        }
    }
    #[cfg(not(unix))]
    pub fn to_unix(self) -> Option<SocketAddr> {
        None
    }
}
impl From<SocketAddr> for ListenAddr {
    fn from(s: SocketAddr) -> Self {
        Self::IP(s)
    }
}
#[cfg(unix)]
impl From<unix_net::SocketAddr> for ListenAddr {
    fn from(s: unix_net::SocketAddr) -> Self {
        Self::Unix(s)
    }
}
impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::IP(s) => s.fmt(f),
            #[cfg(unix)]
            Self::Unix(s) => std::fmt::Debug::fmt(s, f),
        }
    }
}
