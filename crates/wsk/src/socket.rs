//! WSK sockets: the per-category handles and the shared core that drives them.
//!
//! ```text
//!   WskSocket ──► Unbound ──bind──► Bound (connection) ──connect──► Connecting ──► Connected
//!                    │                                                     │
//!                    ├──bind (listen)────► Listening                         ├─disconnect(abortive)/reset─► Gone
//!                    └──bind (datagram)──► Datagram                          └─disconnect(graceful): send side shut
//!   close (any state): cancel pending ops, wait for callbacks in progress,
//!                      abortive disconnect if still connected, release the client's socket count
//! ```
//!
//! Operations are tried inline on the calling thread; if the OS would block they are queued
//! on the socket (FIFO per direction) and the socket's I/O thread finishes them when mio
//! reports readiness. Completions run with no socket lock held.

use crate::client::{ClientCore, SocketTicket};
use crate::events::{DisconnectKind, EventMask, ReceiveVerdict, SocketDispatch};
use crate::op::{Completer, Op};
use crate::reactor::{Command, Reactor};
use crate::sys;
use crate::{Error, Result};
use mio::Token;
use parking_lot::{Condvar, Mutex, MutexGuard};
use socket2::{Domain, Protocol, SockAddr, SockRef, Socket as OsSocket, Type};
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fmt;
use std::io::{self, Read};
use std::net::{Shutdown, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// `AF_INET` as WSK (Windows) numbers it.
pub const AF_INET: u16 = 2;
/// `AF_INET6` as WSK (Windows) numbers it.
pub const AF_INET6: u16 = 23;
/// `SOCK_STREAM`.
pub const SOCK_STREAM: u16 = 1;
/// `SOCK_DGRAM`.
pub const SOCK_DGRAM: u16 = 2;
/// `IPPROTO_TCP`.
pub const IPPROTO_TCP: u32 = 6;
/// `IPPROTO_UDP`.
pub const IPPROTO_UDP: u32 = 17;
/// `WSK_FLAG_BASIC_SOCKET`.
pub const WSK_FLAG_BASIC_SOCKET: u32 = 0;
/// `WSK_FLAG_LISTEN_SOCKET`.
pub const WSK_FLAG_LISTEN_SOCKET: u32 = 1;
/// `WSK_FLAG_CONNECTION_SOCKET`.
pub const WSK_FLAG_CONNECTION_SOCKET: u32 = 2;
/// `WSK_FLAG_DATAGRAM_SOCKET`.
pub const WSK_FLAG_DATAGRAM_SOCKET: u32 = 4;
/// `WSK_FLAG_STREAM_SOCKET` (not supported by this provider).
pub const WSK_FLAG_STREAM_SOCKET: u32 = 8;

const LISTEN_BACKLOG: i32 = 1024;
/// Readiness iterations per socket per wakeup before yielding to other sockets.
const BUDGET: usize = 64;
const SCRATCH: usize = 64 * 1024;

thread_local! {
    static SCRATCH_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// The socket whose event callback this thread is running (0 = none).
    static IN_CALLBACK: Cell<usize> = const { Cell::new(0) };
}

/// Socket category (`WSK_FLAG_*_SOCKET`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Category {
    /// Basic socket: control and close only.
    Basic,
    /// Listening socket.
    Listen,
    /// Connection-oriented socket.
    Connection,
    /// Datagram socket.
    Datagram,
    /// Stream socket: becomes a listening or a connection socket by what it is used for.
    Stream,
}

impl Category {
    fn name(self) -> &'static str {
        match self {
            Category::Basic => "basic",
            Category::Listen => "listen",
            Category::Connection => "connection",
            Category::Datagram => "datagram",
            Category::Stream => "stream",
        }
    }

    fn connects(self) -> bool {
        matches!(self, Category::Connection | Category::Stream)
    }

    fn listens(self) -> bool {
        matches!(self, Category::Listen | Category::Stream)
    }

    /// The events a socket of this category can raise.
    fn events(self) -> EventMask {
        match self {
            Category::Basic => EventMask::NONE,
            Category::Listen => EventMask::ACCEPT,
            Category::Connection => {
                EventMask::RECEIVE | EventMask::DISCONNECT | EventMask::SEND_BACKLOG
            }
            Category::Datagram => EventMask::RECEIVE_FROM,
            Category::Stream => {
                EventMask::ACCEPT
                    | EventMask::RECEIVE
                    | EventMask::DISCONNECT
                    | EventMask::SEND_BACKLOG
            }
        }
    }
}

/// IP version of a socket.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Family {
    /// IPv4 (`AF_INET`).
    V4,
    /// IPv6 (`AF_INET6`), created IPv6-only.
    V6,
}

impl Family {
    /// Parse a WSK address family value.
    pub fn from_raw(af: u16) -> Result<Family> {
        match af {
            AF_INET => Ok(Family::V4),
            AF_INET6 => Ok(Family::V6),
            _ => Err(Error::Unsupported("address family")),
        }
    }

    /// The family of an address.
    pub fn of(addr: &SocketAddr) -> Family {
        if addr.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }

    fn domain(self) -> Domain {
        match self {
            Family::V4 => Domain::IPV4,
            Family::V6 => Domain::IPV6,
        }
    }
}

/// Result of a send or receive: the caller's buffer handed back and the bytes moved.
#[derive(Debug, Default)]
pub struct Transfer {
    /// The buffer given to the operation.
    pub buf: Vec<u8>,
    /// Bytes sent, or bytes received into `buf[..bytes]` (0 = the peer disconnected gracefully).
    pub bytes: usize,
}

impl Transfer {
    /// The received bytes.
    pub fn data(&self) -> &[u8] {
        &self.buf[..self.bytes]
    }
}

/// Result of a receive-from on a datagram socket.
#[derive(Debug)]
pub struct Datagram {
    /// The buffer given to the operation.
    pub buf: Vec<u8>,
    /// Bytes stored in `buf[..bytes]`.
    pub bytes: usize,
    /// Sender.
    pub from: SocketAddr,
    /// The datagram was larger than `buf` and was cut (WSK: `STATUS_BUFFER_OVERFLOW`).
    pub truncated: bool,
}

impl Datagram {
    /// The received bytes.
    pub fn data(&self) -> &[u8] {
        &self.buf[..self.bytes]
    }

    /// `STATUS_SUCCESS`, or `STATUS_BUFFER_OVERFLOW` if truncated.
    pub fn status(&self) -> crate::Status {
        if self.truncated {
            crate::Status::BUFFER_OVERFLOW
        } else {
            crate::Status::SUCCESS
        }
    }
}

/// A connection accepted on a listening socket.
#[derive(Debug)]
pub struct Accepted {
    /// The new connection socket; dropping it closes it.
    pub socket: ConnectionSocket,
    /// Local address of the connection.
    pub local: SocketAddr,
    /// Address of the peer.
    pub remote: SocketAddr,
}

/// How to disconnect a connection socket (`WskDisconnect` flags).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Disconnect {
    /// Send FIN after all queued sends; receiving continues.
    Graceful,
    /// `WSK_FLAG_ABORTIVE`: reset the connection now, cancelling pending operations.
    Abortive,
}

/// Socket options reachable through [`SocketControl`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum SockOpt {
    /// `TCP_NODELAY` (connection sockets).
    NoDelay,
    /// `SO_REUSEADDR`.
    ReuseAddress,
    /// `SO_RCVBUF`.
    RecvBufferSize,
    /// `SO_SNDBUF`.
    SendBufferSize,
    /// `SO_KEEPALIVE` (connection sockets).
    KeepAlive,
}

/// A `WskControlSocket` request.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum SocketControl {
    /// `SO_WSK_EVENT_CALLBACK` with these event bits.
    EnableEvents(EventMask),
    /// `SO_WSK_EVENT_CALLBACK` with `WSK_EVENT_DISABLE` and these bits.
    DisableEvents(EventMask),
    /// `WskSetOption`.
    SetOption(SockOpt, u64),
    /// `WskGetOption`; the value is the operation's result.
    GetOption(SockOpt),
}

enum Io {
    Unbound(OsSocket),
    Bound(OsSocket),
    Connecting(mio::net::TcpStream),
    Connected(mio::net::TcpStream),
    Listening(mio::net::TcpListener),
    Datagram(OsSocket),
    Gone,
}

impl Io {
    fn fd(&self) -> Option<RawFd> {
        Some(match self {
            Io::Unbound(s) | Io::Bound(s) | Io::Datagram(s) => s.as_raw_fd(),
            Io::Connecting(s) | Io::Connected(s) => s.as_raw_fd(),
            Io::Listening(l) => l.as_raw_fd(),
            Io::Gone => return None,
        })
    }

    fn sockref(&self) -> Option<SockRef<'_>> {
        Some(match self {
            Io::Unbound(s) | Io::Bound(s) | Io::Datagram(s) => SockRef::from(s),
            Io::Connecting(s) | Io::Connected(s) => SockRef::from(s),
            Io::Listening(l) => SockRef::from(l),
            Io::Gone => return None,
        })
    }
}

struct PendingSend {
    done: Completer<Transfer>,
    buf: Vec<u8>,
    off: usize,
    /// Bytes of the request sent before it was queued (copied sends queue only the rest).
    base: usize,
}

struct Inner {
    io: Io,
    token: Option<Token>,
    closed: bool,
    /// Event callbacks running right now with the lock released.
    cb_running: u32,
    ticket: Option<SocketTicket>,
    events: SocketDispatch,
    enabled: EventMask,
    local: Option<SocketAddr>,
    remote: Option<SocketAddr>,
    /// Sticky failure of the connection (reset, aborted, failed connect).
    fault: Option<Error>,
    peer_closed: bool,
    send_shut: bool,
    disconnect_reported: bool,
    connecting: Option<Completer<()>>,
    graceful: Option<Completer<()>>,
    recvs: VecDeque<(Completer<Transfer>, Vec<u8>)>,
    sends: VecDeque<PendingSend>,
    held: Vec<u8>,
    held_off: usize,
    /// Bytes moved, added to the provider's counters at close (no shared atomics per op).
    sent: u64,
    received: u64,
    accepts: VecDeque<Completer<Accepted>>,
    recv_froms: VecDeque<(Completer<Datagram>, Vec<u8>)>,
    send_tos: VecDeque<(Completer<Transfer>, Vec<u8>, SockAddr)>,
}

enum Done {
    Xfer(Completer<Transfer>, Result<Transfer>),
    Unit(Completer<()>, Result<()>),
    Accept(Completer<Accepted>, Result<Accepted>),
    Dgram(Completer<Datagram>, Result<Datagram>),
}

impl Done {
    fn fire(self) {
        match self {
            Done::Xfer(c, r) => {
                c.complete(r);
            }
            Done::Unit(c, r) => {
                c.complete(r);
            }
            Done::Accept(c, r) => {
                c.complete(r);
            }
            Done::Dgram(c, r) => {
                c.complete(r);
            }
        }
    }
}

fn flush(done: &mut Vec<Done>) {
    for d in done.drain(..) {
        // A completion routine is user code: a panic there must not kill an I/O thread.
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| d.fire())).is_err() {
            tracing::error!(target: "wsk", "a completion routine panicked");
        }
    }
}

/// The state shared by every handle to one socket.
pub(crate) struct SocketCore {
    category: Category,
    family: Family,
    reactor: Arc<Reactor>,
    thread: usize,
    owner: Arc<ClientCore>,
    inner: Mutex<Inner>,
    cond: Condvar,
}

impl fmt::Debug for SocketCore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SocketCore")
            .field("category", &self.category)
            .field("family", &self.family)
            .finish_non_exhaustive()
    }
}

type Guard<'a> = MutexGuard<'a, Inner>;

impl SocketCore {
    fn build(
        owner: &Arc<ClientCore>,
        category: Category,
        family: Family,
        io: Io,
        events: SocketDispatch,
    ) -> Result<Arc<SocketCore>> {
        let ticket = owner.socket_opened()?;
        let enabled = if matches!(events, SocketDispatch::None) {
            EventMask::NONE
        } else {
            EventMask(owner.static_events().0 & category.events().0)
        };
        let reactor = owner.sub.reactor.clone();
        let thread = reactor.pick();
        Ok(Arc::new(SocketCore {
            category,
            family,
            reactor,
            thread,
            owner: owner.clone(),
            inner: Mutex::new(Inner {
                io,
                token: None,
                closed: false,
                cb_running: 0,
                ticket: Some(ticket),
                events,
                enabled,
                local: None,
                remote: None,
                fault: None,
                peer_closed: false,
                send_shut: false,
                disconnect_reported: false,
                connecting: None,
                graceful: None,
                recvs: VecDeque::new(),
                sends: VecDeque::new(),
                held: Vec::new(),
                held_off: 0,
                sent: 0,
                received: 0,
                accepts: VecDeque::new(),
                recv_froms: VecDeque::new(),
                send_tos: VecDeque::new(),
            }),
            cond: Condvar::new(),
        }))
    }

    /// Create an unbound socket of `category` (`WskSocket`).
    pub(crate) fn create(
        owner: &Arc<ClientCore>,
        category: Category,
        family: Family,
        events: SocketDispatch,
    ) -> Result<Arc<SocketCore>> {
        let (ty, proto) = match category {
            Category::Datagram => (Type::DGRAM, Protocol::UDP),
            _ => (Type::STREAM, Protocol::TCP),
        };
        let s = OsSocket::new(family.domain(), ty, Some(proto))?;
        s.set_nonblocking(true)?;
        if family == Family::V6 {
            s.set_only_v6(true)?;
        }
        SocketCore::build(owner, category, family, Io::Unbound(s), events)
    }

    fn check_open(&self, g: &Guard<'_>) -> Result<()> {
        if g.closed {
            Err(Error::SocketClosed)
        } else {
            Ok(())
        }
    }

    fn check_family(&self, addr: &SocketAddr) -> Result<()> {
        if Family::of(addr) != self.family {
            return Err(Error::InvalidAddress(
                "address family does not match the socket",
            ));
        }
        Ok(())
    }

    fn register(self: &Arc<Self>, g: &mut Guard<'_>) -> Result<()> {
        let fd =
            g.io.fd()
                .ok_or(Error::InvalidState("socket has no descriptor"))?;
        g.token = Some(self.reactor.register(self.thread, fd, self.clone())?);
        Ok(())
    }

    fn deregister(&self, g: &mut Guard<'_>) {
        if let (Some(token), Some(fd)) = (g.token.take(), g.io.fd()) {
            self.reactor.deregister(self.thread, fd, token);
        }
    }

    fn poke(self: &Arc<Self>) {
        self.reactor.send(self.thread, Command::Poke(self.clone()));
    }

    fn counters(&self) -> &crate::client::Counters {
        &self.owner.sub.counters
    }

    pub(crate) fn cancel_op(self: &Arc<Self>, id: usize) {
        let mut done = Vec::new();
        {
            let mut g = self.inner.lock();
            let g = &mut *g;
            if let Some(i) = g.recvs.iter().position(|(c, _)| c.id() == id)
                && let Some((c, _)) = g.recvs.remove(i)
            {
                done.push(Done::Xfer(c, Err(Error::Cancelled)));
            }
            if let Some(i) = g.sends.iter().position(|p| p.done.id() == id)
                && let Some(p) = g.sends.remove(i)
            {
                done.push(Done::Xfer(p.done, Err(Error::Cancelled)));
            }
            if let Some(i) = g.accepts.iter().position(|c| c.id() == id)
                && let Some(c) = g.accepts.remove(i)
            {
                done.push(Done::Accept(c, Err(Error::Cancelled)));
            }
            if let Some(i) = g.recv_froms.iter().position(|(c, _)| c.id() == id)
                && let Some((c, _)) = g.recv_froms.remove(i)
            {
                done.push(Done::Dgram(c, Err(Error::Cancelled)));
            }
            if let Some(i) = g.send_tos.iter().position(|(c, _, _)| c.id() == id)
                && let Some((c, _, _)) = g.send_tos.remove(i)
            {
                done.push(Done::Xfer(c, Err(Error::Cancelled)));
            }
            if g.graceful.as_ref().is_some_and(|c| c.id() == id)
                && let Some(c) = g.graceful.take()
            {
                done.push(Done::Unit(c, Err(Error::Cancelled)));
            }
            if g.connecting.as_ref().is_some_and(|c| c.id() == id)
                && let Some(c) = g.connecting.take()
            {
                // A half-made connection cannot be resumed: drop it.
                if let (Some(token), Some(fd)) = (g.token.take(), g.io.fd()) {
                    self.reactor.deregister(self.thread, fd, token);
                }
                g.io = Io::Gone;
                g.fault = Some(Error::Cancelled);
                done.push(Done::Unit(c, Err(Error::Cancelled)));
            }
        }
        flush(&mut done);
    }

    // ----- operations common to several categories -----

    pub(crate) fn bind(self: &Arc<Self>, addr: SocketAddr) -> Result<()> {
        if self.category == Category::Basic {
            return Err(Error::WrongCategory("basic"));
        }
        self.check_family(&addr)?;
        let mut g = self.inner.lock();
        self.check_open(&g)?;
        let s = match std::mem::replace(&mut g.io, Io::Gone) {
            Io::Unbound(s) => s,
            other => {
                g.io = other;
                return Err(Error::InvalidState("already bound"));
            }
        };
        if self.category.listens()
            && let Err(e) = s.set_reuse_address(true)
        {
            g.io = Io::Unbound(s);
            return Err(e.into());
        }
        if let Err(e) = s.bind(&addr.into()) {
            g.io = Io::Unbound(s);
            return Err(e.into());
        }
        g.local = s.local_addr().ok().and_then(|a| a.as_socket());
        match self.category {
            Category::Listen => self.start_listening(g, s)?,
            Category::Connection | Category::Stream => g.io = Io::Bound(s),
            Category::Datagram => {
                g.io = Io::Datagram(s);
                self.register(&mut g)?;
            }
            Category::Basic => unreachable!("checked above"),
        }
        Ok(())
    }

    /// Listen on a bound socket; `g.io` must have been taken out (it is `Gone`).
    fn start_listening(self: &Arc<Self>, mut g: Guard<'_>, s: OsSocket) -> Result<()> {
        if let Err(e) = s.listen(LISTEN_BACKLOG) {
            // A bound socket cannot be unbound; it stays unusable until closed.
            let err = Error::from_io(&e);
            g.fault = Some(err.clone());
            return Err(err);
        }
        g.io = Io::Listening(mio::net::TcpListener::from_std(s.into()));
        self.register(&mut g)?;
        if g.enabled.contains(EventMask::ACCEPT) {
            drop(g);
            self.poke();
        }
        Ok(())
    }

    /// `WskListen` (stream sockets): start listening on the bound socket.
    pub(crate) fn listen(self: &Arc<Self>) -> Result<()> {
        if self.category != Category::Stream {
            return Err(Error::WrongCategory(self.category.name()));
        }
        let mut g = self.inner.lock();
        self.check_open(&g)?;
        match std::mem::replace(&mut g.io, Io::Gone) {
            Io::Bound(s) => self.start_listening(g, s),
            other => {
                let why = match other {
                    Io::Unbound(_) => "not bound (bind before listen)",
                    Io::Listening(_) => "already listening",
                    _ => "connected or connecting",
                };
                g.io = other;
                Err(Error::InvalidState(why))
            }
        }
    }

    pub(crate) fn local_address(&self) -> Result<SocketAddr> {
        let g = self.inner.lock();
        self.check_open(&g)?;
        g.local.ok_or(Error::InvalidState("not bound"))
    }

    pub(crate) fn remote_address(&self) -> Result<SocketAddr> {
        let g = self.inner.lock();
        self.check_open(&g)?;
        g.remote.ok_or(Error::InvalidState("not connected"))
    }

    pub(crate) fn control(self: &Arc<Self>, req: SocketControl) -> Result<u64> {
        let mut g = self.inner.lock();
        self.check_open(&g)?;
        match req {
            SocketControl::EnableEvents(mask) | SocketControl::DisableEvents(mask) => {
                let enable = matches!(req, SocketControl::EnableEvents(_));
                let bits = EventMask(mask.0 & !EventMask::DISABLE.0);
                if bits.0 & !self.category.events().0 != 0 || bits.0 == 0 {
                    return Err(Error::InvalidParameter(
                        "event not defined for this socket category",
                    ));
                }
                if matches!(g.events, SocketDispatch::None) {
                    return Err(Error::InvalidState("socket has no event dispatch table"));
                }
                if enable {
                    g.enabled = g.enabled | bits;
                    drop(g);
                    self.poke();
                } else {
                    let statics = self.owner.static_events();
                    if statics.0 & bits.0 != 0 {
                        return Err(Error::InvalidParameter(
                            "static event callbacks cannot be disabled",
                        ));
                    }
                    g.enabled = EventMask(g.enabled.0 & !bits.0);
                }
                Ok(0)
            }
            SocketControl::SetOption(opt, v) => {
                let s =
                    g.io.sockref()
                        .ok_or(Error::InvalidState("connection is gone"))?;
                match opt {
                    SockOpt::NoDelay if self.category.connects() => s.set_nodelay(v != 0)?,
                    SockOpt::KeepAlive if self.category.connects() => s.set_keepalive(v != 0)?,
                    SockOpt::NoDelay | SockOpt::KeepAlive => {
                        return Err(Error::WrongCategory(self.category.name()));
                    }
                    SockOpt::ReuseAddress => s.set_reuse_address(v != 0)?,
                    SockOpt::RecvBufferSize => s.set_recv_buffer_size(
                        usize::try_from(v).map_err(|_| Error::InvalidParameter("size"))?,
                    )?,
                    SockOpt::SendBufferSize => s.set_send_buffer_size(
                        usize::try_from(v).map_err(|_| Error::InvalidParameter("size"))?,
                    )?,
                }
                Ok(0)
            }
            SocketControl::GetOption(opt) => {
                let s =
                    g.io.sockref()
                        .ok_or(Error::InvalidState("connection is gone"))?;
                Ok(match opt {
                    SockOpt::NoDelay if self.category.connects() => s.nodelay()? as u64,
                    SockOpt::KeepAlive if self.category.connects() => s.keepalive()? as u64,
                    SockOpt::NoDelay | SockOpt::KeepAlive => {
                        return Err(Error::WrongCategory(self.category.name()));
                    }
                    SockOpt::ReuseAddress => s.reuse_address()? as u64,
                    SockOpt::RecvBufferSize => s.recv_buffer_size()? as u64,
                    SockOpt::SendBufferSize => s.send_buffer_size()? as u64,
                })
            }
        }
    }

    pub(crate) fn set_dispatch(self: &Arc<Self>, events: SocketDispatch) -> Result<()> {
        if !events.fits(self.category) {
            return Err(Error::InvalidParameter(
                "dispatch table does not match the socket category",
            ));
        }
        let mut g = self.inner.lock();
        self.check_open(&g)?;
        let none = matches!(events, SocketDispatch::None);
        g.events = events;
        if none {
            g.enabled = EventMask::NONE;
        } else {
            g.enabled =
                g.enabled | EventMask(self.owner.static_events().0 & self.category.events().0);
        }
        let any = g.enabled.0 != 0;
        drop(g);
        if any {
            self.poke();
        }
        Ok(())
    }

    // ----- close -----

    /// `WskCloseSocket`: cancel pending operations, wait for callbacks in progress, abortive
    /// disconnect if still connected, release the socket. Idempotent.
    pub(crate) fn close(self: &Arc<Self>) {
        let mut done = Vec::new();
        let me = Arc::as_ptr(self) as *const () as usize;
        let (io, ticket) = {
            let mut g = self.inner.lock();
            if g.closed {
                return;
            }
            g.closed = true;
            let own = u32::from(IN_CALLBACK.with(Cell::get) == me);
            while g.cb_running > own {
                self.cond.wait(&mut g);
            }
            let g = &mut *g;
            for (c, _) in g.recvs.drain(..) {
                done.push(Done::Xfer(c, Err(Error::Cancelled)));
            }
            for p in g.sends.drain(..) {
                done.push(Done::Xfer(p.done, Err(Error::Cancelled)));
            }
            for c in g.accepts.drain(..) {
                done.push(Done::Accept(c, Err(Error::Cancelled)));
            }
            for (c, _) in g.recv_froms.drain(..) {
                done.push(Done::Dgram(c, Err(Error::Cancelled)));
            }
            for (c, _, _) in g.send_tos.drain(..) {
                done.push(Done::Xfer(c, Err(Error::Cancelled)));
            }
            if let Some(c) = g.connecting.take() {
                done.push(Done::Unit(c, Err(Error::Cancelled)));
            }
            if let Some(c) = g.graceful.take() {
                done.push(Done::Unit(c, Err(Error::Cancelled)));
            }
            if let (Some(token), Some(fd)) = (g.token.take(), g.io.fd()) {
                self.reactor.deregister(self.thread, fd, token);
            }
            let fully_closed = g.send_shut && g.peer_closed;
            let io = std::mem::replace(&mut g.io, Io::Gone);
            if matches!(io, Io::Connected(_) | Io::Connecting(_))
                && !fully_closed
                && let Some(s) = io.sockref()
            {
                // Abortive disconnect: closing with a zero linger sends RST.
                let _ = s.set_linger(Some(std::time::Duration::ZERO));
            }
            g.events = SocketDispatch::None;
            g.held = Vec::new();
            let c = &self.owner.sub.counters;
            c.bytes_sent
                .fetch_add(std::mem::take(&mut g.sent), Ordering::Relaxed);
            c.bytes_received
                .fetch_add(std::mem::take(&mut g.received), Ordering::Relaxed);
            (io, g.ticket.take())
        };
        drop(io);
        tracing::trace!(target: "wsk", category = self.category.name(), cancelled = done.len(), "socket closed");
        flush(&mut done);
        self.counters()
            .sockets_closed
            .fetch_add(1, Ordering::Relaxed);
        drop(ticket);
    }

    // ----- readiness -----

    /// Called by the I/O thread when the socket may be readable and/or writable.
    pub(crate) fn on_ready(self: &Arc<Self>, readable: bool, writable: bool) {
        let mut done = Vec::new();
        let mut g = self.inner.lock();
        if g.closed {
            return;
        }
        match self.category {
            Category::Connection | Category::Listen | Category::Stream => {
                if matches!(g.io, Io::Connecting(_)) {
                    self.finish_connect(&mut g, &mut done);
                }
                if matches!(g.io, Io::Connected(_)) {
                    if writable {
                        self.drive_sends(&mut g, &mut done);
                    }
                    if readable {
                        self.drive_receives(&mut g, &mut done);
                    }
                }
                if readable && matches!(g.io, Io::Listening(_)) {
                    self.drive_accepts(&mut g, &mut done);
                }
            }
            Category::Datagram => {
                if writable {
                    self.drive_send_tos(&mut g, &mut done);
                }
                if readable {
                    self.drive_receive_froms(&mut g, &mut done);
                }
            }
            Category::Basic => {}
        }
        drop(g);
        flush(&mut done);
    }

    /// Run `f` (an event callback) with the socket lock released, counted so close can wait.
    fn callback<R: Default>(
        &self,
        g: &mut Guard<'_>,
        done: &mut Vec<Done>,
        f: impl FnOnce() -> R,
    ) -> R {
        g.cb_running += 1;
        let me = self as *const Self as *const () as usize;
        let r = MutexGuard::unlocked(g, || {
            // Marked first: a completion routine flushed here that closes this socket must
            // not wait for the callback count it is itself part of.
            let prev = IN_CALLBACK.with(|c| c.replace(me));
            flush(done);
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
            IN_CALLBACK.with(|c| c.set(prev));
            r
        });
        g.cb_running -= 1;
        if g.closed && g.cb_running == 0 {
            self.cond.notify_all();
        }
        r.unwrap_or_else(|_| {
            tracing::error!(target: "wsk", category = self.category.name(), "an event callback panicked");
            R::default()
        })
    }

    // ----- connection sockets -----

    pub(crate) fn connect(self: &Arc<Self>, remote: SocketAddr) -> Op<()> {
        match self.start_connect(remote) {
            Ok(op) => op,
            Err(e) => Op::ready(Err(e)),
        }
    }

    fn start_connect(self: &Arc<Self>, remote: SocketAddr) -> Result<Op<()>> {
        if !self.category.connects() {
            return Err(Error::WrongCategory(self.category.name()));
        }
        self.check_family(&remote)?;
        if remote.port() == 0 || remote.ip().is_unspecified() {
            return Err(Error::InvalidAddress(
                "remote address must name a host and port",
            ));
        }
        let mut g = self.inner.lock();
        self.check_open(&g)?;
        let s = match std::mem::replace(&mut g.io, Io::Gone) {
            Io::Bound(s) => s,
            other => {
                let why = match other {
                    Io::Unbound(_) => "not bound (bind before connect)",
                    Io::Gone => "connection is gone",
                    _ => "already connected",
                };
                g.io = other;
                return Err(Error::InvalidState(why));
            }
        };
        match s.connect(&remote.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => {
                g.fault = Some(Error::from_io(&e));
                return Err(e.into());
            }
        }
        let stream = mio::net::TcpStream::from_std(s.into());
        g.io = Io::Connecting(stream);
        let (op, c) = Op::pending_on(self);
        g.connecting = Some(c);
        self.register(&mut g)?;
        Ok(op)
    }

    fn finish_connect(self: &Arc<Self>, g: &mut Guard<'_>, done: &mut Vec<Done>) {
        let Io::Connecting(stream) = &g.io else {
            return;
        };
        let outcome = match stream.take_error() {
            Ok(Some(e)) | Err(e) => Err(Error::from_io(&e)),
            Ok(None) => match stream.peer_addr() {
                Ok(peer) => Ok(peer),
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => Err(Error::from_io(&e)),
            },
        };
        let c = g.connecting.take();
        match outcome {
            Ok(peer) => {
                let Io::Connecting(stream) = std::mem::replace(&mut g.io, Io::Gone) else {
                    unreachable!("checked above")
                };
                g.local = stream.local_addr().ok();
                g.remote = Some(peer);
                g.io = Io::Connected(stream);
                if let Some(c) = c {
                    done.push(Done::Unit(c, Ok(())));
                }
            }
            Err(e) => {
                self.deregister(g);
                g.io = Io::Gone;
                g.fault = Some(e.clone());
                if let Some(c) = c {
                    done.push(Done::Unit(c, Err(e)));
                }
            }
        }
    }

    fn conn_state(&self, g: &Guard<'_>) -> Result<()> {
        self.check_open(g)?;
        if !self.category.connects() {
            return Err(Error::WrongCategory(self.category.name()));
        }
        if let Some(f) = &g.fault {
            return Err(f.clone());
        }
        match g.io {
            Io::Connected(_) => Ok(()),
            _ => Err(Error::InvalidState("not connected")),
        }
    }

    pub(crate) fn send(self: &Arc<Self>, buf: Vec<u8>) -> Op<Transfer> {
        let mut g = self.inner.lock();
        let off = match self.send_inline(&mut g, &buf) {
            Ok(off) if off == buf.len() => {
                drop(g);
                let bytes = buf.len();
                return Op::ready(Ok(Transfer { buf, bytes }));
            }
            Ok(off) => off,
            Err(e) => return Op::ready(Err(e)),
        };
        let (op, c) = Op::pending_on(self);
        g.sends.push_back(PendingSend {
            done: c,
            buf,
            off,
            base: 0,
        });
        op
    }

    /// Send from a borrowed slice: nothing is copied if the OS takes it all at once;
    /// otherwise the rest is copied and queued. The result's `buf` is empty.
    pub(crate) fn send_copy(self: &Arc<Self>, data: &[u8]) -> Op<Transfer> {
        let mut g = self.inner.lock();
        let off = match self.send_inline(&mut g, data) {
            Ok(off) if off == data.len() => {
                return Op::ready(Ok(Transfer {
                    buf: Vec::new(),
                    bytes: off,
                }));
            }
            Ok(off) => off,
            Err(e) => return Op::ready(Err(e)),
        };
        let (op, c) = Op::pending_on(self);
        g.sends.push_back(PendingSend {
            done: c,
            buf: data[off..].to_vec(),
            off: 0,
            base: off,
        });
        op
    }

    /// Checks the socket can send and, if nothing is queued ahead, writes as much of `data`
    /// as the OS takes now. Returns the bytes written.
    fn send_inline(&self, g: &mut Guard<'_>, data: &[u8]) -> Result<usize> {
        self.conn_state(g)?;
        if g.send_shut {
            return Err(Error::Disconnected);
        }
        let mut off = 0;
        if !g.sends.is_empty() {
            return Ok(0);
        }
        let Io::Connected(stream) = &g.io else {
            unreachable!("checked by conn_state")
        };
        while off < data.len() {
            match sys::send(stream, &data[off..]) {
                Ok(n) => off += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let err = Error::from_io(&e);
                    g.fault = Some(err.clone());
                    return Err(err);
                }
            }
        }
        g.sent += off as u64;
        Ok(off)
    }

    fn drive_sends(self: &Arc<Self>, g: &mut Guard<'_>, done: &mut Vec<Done>) {
        let inner = &mut **g;
        let Io::Connected(stream) = &inner.io else {
            return;
        };
        let mut sent = 0u64;
        while let Some(front) = inner.sends.front_mut() {
            match sys::send(stream, &front.buf[front.off..]) {
                Ok(n) => {
                    front.off += n;
                    sent += n as u64;
                    if front.off == front.buf.len() {
                        let p = inner.sends.pop_front().expect("front exists");
                        let bytes = p.base + p.buf.len();
                        done.push(Done::Xfer(p.done, Ok(Transfer { buf: p.buf, bytes })));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let err = Error::from_io(&e);
                    inner.fault = Some(err.clone());
                    for p in inner.sends.drain(..) {
                        done.push(Done::Xfer(p.done, Err(err.clone())));
                    }
                    break;
                }
            }
        }
        inner.sent += sent;
        if inner.sends.is_empty()
            && let Some(c) = inner.graceful.take()
        {
            let r = stream
                .shutdown(Shutdown::Write)
                .map_err(|e| Error::from_io(&e));
            done.push(Done::Unit(c, r));
        }
    }

    pub(crate) fn receive(self: &Arc<Self>, mut buf: Vec<u8>) -> Op<Transfer> {
        if buf.is_empty() {
            return Op::ready(Err(Error::BufferTooSmall { needed: 1 }));
        }
        let mut g = self.inner.lock();
        if g.held_off < g.held.len() && g.recvs.is_empty() && !g.closed {
            let inner = &mut *g;
            let n = (inner.held.len() - inner.held_off).min(buf.len());
            buf[..n].copy_from_slice(&inner.held[inner.held_off..inner.held_off + n]);
            inner.held_off += n;
            inner.received += n as u64;
            if inner.held_off == inner.held.len() {
                inner.held.clear();
                inner.held_off = 0;
                // Data drained: receive events resume.
                drop(g);
                self.poke();
            }
            return Op::ready(Ok(Transfer { buf, bytes: n }));
        }
        if let Err(e) = self.conn_state(&g) {
            return Op::ready(Err(e));
        }
        if g.peer_closed {
            return Op::ready(Ok(Transfer { buf, bytes: 0 }));
        }
        if g.recvs.is_empty() {
            let Io::Connected(stream) = &mut g.io else {
                unreachable!("checked by conn_state")
            };
            loop {
                match stream.read(&mut buf) {
                    Ok(0) => {
                        g.peer_closed = true;
                        drop(g);
                        self.poke(); // lets the I/O thread raise the disconnect event
                        return Op::ready(Ok(Transfer { buf, bytes: 0 }));
                    }
                    Ok(n) => {
                        g.received += n as u64;
                        drop(g);
                        return Op::ready(Ok(Transfer { buf, bytes: n }));
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        let err = Error::from_io(&e);
                        g.fault = Some(err.clone());
                        return Op::ready(Err(err));
                    }
                }
            }
        }
        let (op, c) = Op::pending_on(self);
        g.recvs.push_back((c, buf));
        op
    }

    fn report_disconnect(
        self: &Arc<Self>,
        g: &mut Guard<'_>,
        done: &mut Vec<Done>,
        kind: DisconnectKind,
    ) {
        if g.disconnect_reported || !g.enabled.contains(EventMask::DISCONNECT) {
            return;
        }
        g.disconnect_reported = true;
        let Some(ev) = g.events.connection_events() else {
            return;
        };
        let me = ConnectionRef(self.clone());
        self.callback(g, done, || ev.on_disconnect(&me, kind));
    }

    fn drive_receives(self: &Arc<Self>, g: &mut Guard<'_>, done: &mut Vec<Done>) {
        let mut received = 0u64;
        let mut budget = BUDGET;
        loop {
            if g.closed || !matches!(g.io, Io::Connected(_)) {
                break;
            }
            if budget == 0 {
                self.poke();
                break;
            }
            budget -= 1;
            if g.fault.is_some() {
                break;
            }
            if !g.recvs.is_empty() {
                if g.held_off < g.held.len() {
                    let inner = &mut **g;
                    let (c, mut buf) = inner.recvs.pop_front().expect("not empty");
                    let n = (inner.held.len() - inner.held_off).min(buf.len());
                    buf[..n].copy_from_slice(&inner.held[inner.held_off..inner.held_off + n]);
                    inner.held_off += n;
                    if inner.held_off == inner.held.len() {
                        inner.held.clear();
                        inner.held_off = 0;
                    }
                    received += n as u64;
                    done.push(Done::Xfer(c, Ok(Transfer { buf, bytes: n })));
                    continue;
                }
                if g.peer_closed {
                    for (c, buf) in g.recvs.drain(..) {
                        done.push(Done::Xfer(c, Ok(Transfer { buf, bytes: 0 })));
                    }
                    break;
                }
                let inner = &mut **g;
                let Io::Connected(stream) = &mut inner.io else {
                    break;
                };
                let (_, buf) = inner.recvs.front_mut().expect("not empty");
                let r = stream.read(buf);
                match r {
                    Ok(0) => {
                        g.peer_closed = true;
                        self.report_disconnect(g, done, DisconnectKind::Graceful);
                    }
                    Ok(n) => {
                        let (c, buf) = g.recvs.pop_front().expect("not empty");
                        received += n as u64;
                        done.push(Done::Xfer(c, Ok(Transfer { buf, bytes: n })));
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => self.fail_connection(g, done, Error::from_io(&e)),
                }
                continue;
            }
            // No receive pending: indicate data through the receive event, if enabled.
            if g.peer_closed {
                self.report_disconnect(g, done, DisconnectKind::Graceful);
                break;
            }
            if !g.enabled.contains(EventMask::RECEIVE) || g.held_off < g.held.len() {
                break;
            }
            if !done.is_empty() {
                // Deliver completed receives before indicating newer data: their routines may
                // post receives that must see the stream in order (they take priority).
                MutexGuard::unlocked(g, || flush(done));
                continue;
            }
            let Some(ev) = g.events.connection_events() else {
                break;
            };
            let mut scratch = SCRATCH_BUF.with(|s| std::mem::take(&mut *s.borrow_mut()));
            scratch.resize(SCRATCH, 0);
            let Io::Connected(stream) = &mut g.io else {
                break;
            };
            let r = stream.read(&mut scratch);
            match r {
                Ok(0) => {
                    g.peer_closed = true;
                    self.report_disconnect(g, done, DisconnectKind::Graceful);
                }
                Ok(n) => {
                    received += n as u64;
                    let me = ConnectionRef(self.clone());
                    let verdict = self.callback(g, done, || ev.on_receive(&me, &scratch[..n]));
                    if verdict == ReceiveVerdict::NotAccepted && !g.closed {
                        g.held.extend_from_slice(&scratch[..n]);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    SCRATCH_BUF.with(|s| *s.borrow_mut() = scratch);
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => self.fail_connection(g, done, Error::from_io(&e)),
            }
            SCRATCH_BUF.with(|s| *s.borrow_mut() = scratch);
        }
        g.received += received;
    }

    /// The connection broke (reset, error): fail everything pending, raise the disconnect event.
    fn fail_connection(self: &Arc<Self>, g: &mut Guard<'_>, done: &mut Vec<Done>, err: Error) {
        g.fault = Some(err.clone());
        for (c, _) in g.recvs.drain(..) {
            done.push(Done::Xfer(c, Err(err.clone())));
        }
        for p in g.sends.drain(..) {
            done.push(Done::Xfer(p.done, Err(err.clone())));
        }
        if let Some(c) = g.graceful.take() {
            done.push(Done::Unit(c, Err(err.clone())));
        }
        self.report_disconnect(g, done, DisconnectKind::Abortive);
    }

    pub(crate) fn disconnect(self: &Arc<Self>, how: Disconnect) -> Op<()> {
        let mut g = self.inner.lock();
        if let Err(e) = self.conn_state(&g) {
            return Op::ready(Err(e));
        }
        match how {
            Disconnect::Graceful => {
                if g.send_shut {
                    return Op::ready(Err(Error::InvalidState("already disconnected")));
                }
                g.send_shut = true;
                if g.sends.is_empty() {
                    let Io::Connected(stream) = &g.io else {
                        unreachable!("checked")
                    };
                    Op::ready(
                        stream
                            .shutdown(Shutdown::Write)
                            .map_err(|e| Error::from_io(&e)),
                    )
                } else {
                    let (op, c) = Op::pending_on(self);
                    g.graceful = Some(c);
                    op
                }
            }
            Disconnect::Abortive => {
                let mut done = Vec::new();
                self.deregister(&mut g);
                let io = std::mem::replace(&mut g.io, Io::Gone);
                if let Some(s) = io.sockref() {
                    let _ = s.set_linger(Some(std::time::Duration::ZERO));
                }
                drop(io);
                g.fault = Some(Error::ConnectionAborted);
                for (c, _) in g.recvs.drain(..) {
                    done.push(Done::Xfer(c, Err(Error::ConnectionAborted)));
                }
                for p in g.sends.drain(..) {
                    done.push(Done::Xfer(p.done, Err(Error::ConnectionAborted)));
                }
                if let Some(c) = g.graceful.take() {
                    done.push(Done::Unit(c, Err(Error::ConnectionAborted)));
                }
                drop(g);
                flush(&mut done);
                Op::ready(Ok(()))
            }
        }
    }

    /// Adopt a connection the OS accepted (from `WskAccept` or the accept event).
    fn adopt(
        owner: &Arc<ClientCore>,
        family: Family,
        stream: mio::net::TcpStream,
        remote: SocketAddr,
    ) -> Result<Accepted> {
        let local = stream.local_addr()?;
        let core = SocketCore::build(
            owner,
            Category::Connection,
            family,
            Io::Connected(stream),
            SocketDispatch::None,
        )?;
        {
            let mut g = core.inner.lock();
            g.local = Some(local);
            g.remote = Some(remote);
            core.register(&mut g)?;
        }
        core.counters()
            .sockets_opened
            .fetch_add(1, Ordering::Relaxed);
        Ok(Accepted {
            socket: ConnectionSocket(ConnectionRef(core)),
            local,
            remote,
        })
    }

    // ----- listening sockets -----

    pub(crate) fn accept(self: &Arc<Self>) -> Op<Accepted> {
        let mut g = self.inner.lock();
        if let Err(e) = self.check_open(&g) {
            return Op::ready(Err(e));
        }
        if !self.category.listens() {
            return Op::ready(Err(Error::WrongCategory(self.category.name())));
        }
        let Io::Listening(l) = &g.io else {
            return Op::ready(Err(Error::InvalidState(
                if self.category == Category::Stream {
                    "not listening"
                } else {
                    "not bound (a listening socket listens once bound)"
                },
            )));
        };
        if g.accepts.is_empty() {
            loop {
                match l.accept() {
                    Ok((s, remote)) => {
                        drop(g);
                        return Op::ready(SocketCore::adopt(&self.owner, self.family, s, remote));
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if is_transient_accept_error(&e) => {}
                    Err(e) => return Op::ready(Err(e.into())),
                }
            }
        }
        let (op, c) = Op::pending_on(self);
        g.accepts.push_back(c);
        op
    }

    fn drive_accepts(self: &Arc<Self>, g: &mut Guard<'_>, done: &mut Vec<Done>) {
        let mut budget = BUDGET;
        loop {
            if g.closed {
                break;
            }
            if budget == 0 {
                self.poke();
                break;
            }
            budget -= 1;
            let want_op = !g.accepts.is_empty();
            let event = if want_op {
                None
            } else if g.enabled.contains(EventMask::ACCEPT) {
                match g.events.listen_events() {
                    Some(ev) => Some(ev),
                    None => break,
                }
            } else {
                break;
            };
            let Io::Listening(l) = &g.io else { break };
            match l.accept() {
                Ok((s, remote)) => {
                    let r = SocketCore::adopt(&self.owner, self.family, s, remote);
                    match event {
                        None => {
                            let c = g.accepts.pop_front().expect("not empty");
                            done.push(Done::Accept(c, r));
                        }
                        Some(ev) => {
                            if let Ok(acc) = r {
                                let me = ListenRef(self.clone());
                                self.callback(g, done, || ev.on_accept(&me, acc));
                            }
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if is_transient_accept_error(&e) => {}
                Err(e) => {
                    if let Some(c) = g.accepts.pop_front() {
                        done.push(Done::Accept(c, Err(e.into())));
                    } else {
                        tracing::warn!(error = %e, "wsk accept failed");
                        break;
                    }
                }
            }
        }
    }

    // ----- datagram sockets -----

    fn dgram_state(&self, g: &Guard<'_>) -> Result<()> {
        self.check_open(g)?;
        if self.category != Category::Datagram {
            return Err(Error::WrongCategory(self.category.name()));
        }
        match g.io {
            Io::Datagram(_) => Ok(()),
            _ => Err(Error::InvalidState("not bound")),
        }
    }

    pub(crate) fn send_to(self: &Arc<Self>, buf: Vec<u8>, to: SocketAddr) -> Op<Transfer> {
        if let Err(e) = self.check_family(&to) {
            return Op::ready(Err(e));
        }
        if to.port() == 0 || to.ip().is_unspecified() {
            return Op::ready(Err(Error::InvalidAddress(
                "destination must name a host and port",
            )));
        }
        let mut g = self.inner.lock();
        if let Err(e) = self.dgram_state(&g) {
            return Op::ready(Err(e));
        }
        let addr = SockAddr::from(to);
        if g.send_tos.is_empty() {
            let Io::Datagram(s) = &g.io else {
                unreachable!("checked")
            };
            match s.send_to(&buf, &addr) {
                Ok(n) => {
                    g.sent += n as u64;
                    drop(g);
                    return Op::ready(Ok(Transfer { buf, bytes: n }));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Op::ready(Err(e.into())),
            }
        }
        let (op, c) = Op::pending_on(self);
        g.send_tos.push_back((c, buf, addr));
        op
    }

    fn drive_send_tos(self: &Arc<Self>, g: &mut Guard<'_>, done: &mut Vec<Done>) {
        let inner = &mut **g;
        let Io::Datagram(s) = &inner.io else { return };
        while let Some((_, buf, addr)) = inner.send_tos.front() {
            let r = s.send_to(buf, addr);
            match r {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                r => {
                    let (c, buf, _) = inner.send_tos.pop_front().expect("front exists");
                    let r = r
                        .map(|n| Transfer { buf, bytes: n })
                        .map_err(|e| Error::from_io(&e));
                    done.push(Done::Xfer(c, r));
                }
            }
        }
    }

    pub(crate) fn receive_from(self: &Arc<Self>, mut buf: Vec<u8>) -> Op<Datagram> {
        if buf.is_empty() {
            return Op::ready(Err(Error::BufferTooSmall { needed: 1 }));
        }
        let mut g = self.inner.lock();
        if let Err(e) = self.dgram_state(&g) {
            return Op::ready(Err(e));
        }
        if g.recv_froms.is_empty() {
            let Io::Datagram(s) = &g.io else {
                unreachable!("checked")
            };
            match sys::recv_from(s, &mut buf) {
                Ok((n, from)) => {
                    drop(g);
                    return Op::ready(Ok(datagram(buf, n, from)));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Op::ready(Err(e.into())),
            }
        }
        let (op, c) = Op::pending_on(self);
        g.recv_froms.push_back((c, buf));
        op
    }

    fn drive_receive_froms(self: &Arc<Self>, g: &mut Guard<'_>, done: &mut Vec<Done>) {
        let mut budget = BUDGET;
        loop {
            if g.closed {
                break;
            }
            if budget == 0 {
                self.poke();
                break;
            }
            budget -= 1;
            if !g.recv_froms.is_empty() {
                let inner = &mut **g;
                let Io::Datagram(s) = &inner.io else { break };
                let (_, buf) = inner.recv_froms.front_mut().expect("not empty");
                match sys::recv_from(s, buf) {
                    Ok((n, from)) => {
                        let (c, buf) = inner.recv_froms.pop_front().expect("not empty");
                        done.push(Done::Dgram(c, Ok(datagram(buf, n, from))));
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        // ICMP errors (port unreachable) surface here; report and go on.
                        let (c, _) = inner.recv_froms.pop_front().expect("not empty");
                        done.push(Done::Dgram(c, Err(e.into())));
                    }
                }
                continue;
            }
            if !g.enabled.contains(EventMask::RECEIVE_FROM) {
                break;
            }
            if !done.is_empty() {
                // Completed receive-froms first, so routines see datagrams in arrival order.
                MutexGuard::unlocked(g, || flush(done));
                continue;
            }
            let SocketDispatch::Datagram(ev) = g.events.clone() else {
                break;
            };
            let mut scratch = SCRATCH_BUF.with(|s| std::mem::take(&mut *s.borrow_mut()));
            scratch.resize(SCRATCH, 0);
            let Io::Datagram(s) = &g.io else { break };
            let r = sys::recv_from(s, &mut scratch);
            match r {
                Ok((n, from)) => {
                    let n = n.min(scratch.len());
                    let me = DatagramRef(self.clone());
                    self.callback(g, done, || ev.on_receive_from(&me, &scratch[..n], from));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    SCRATCH_BUF.with(|s| *s.borrow_mut() = scratch);
                    break;
                }
                Err(_) => {}
            }
            SCRATCH_BUF.with(|s| *s.borrow_mut() = scratch);
        }
    }
}

fn datagram(buf: Vec<u8>, n: usize, from: SocketAddr) -> Datagram {
    let truncated = n > buf.len();
    let bytes = n.min(buf.len());
    Datagram {
        buf,
        bytes,
        from,
        truncated,
    }
}

fn is_transient_accept_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
    )
}

// ===================== handles =====================

macro_rules! socket_handles {
    ($(#[$rdoc:meta])* $rname:ident, $(#[$odoc:meta])* $oname:ident) => {
        $(#[$rdoc])*
        #[derive(Clone)]
        pub struct $rname(pub(crate) Arc<SocketCore>);

        $(#[$odoc])*
        pub struct $oname(pub(crate) $rname);

        impl $rname {
            /// `WskControlSocket`: enable/disable events, set or get an option.
            pub fn control(&self, req: SocketControl) -> Op<u64> {
                Op::ready(self.0.control(req))
            }

            /// Enable event callbacks (`SO_WSK_EVENT_CALLBACK`).
            pub fn enable_events(&self, mask: EventMask) -> Result<()> {
                self.0.control(SocketControl::EnableEvents(mask)).map(|_| ())
            }

            /// Disable event callbacks (`SO_WSK_EVENT_CALLBACK` with `WSK_EVENT_DISABLE`).
            pub fn disable_events(&self, mask: EventMask) -> Result<()> {
                self.0.control(SocketControl::DisableEvents(mask)).map(|_| ())
            }

            /// Replace the socket's event dispatch table (needed for accepted sockets).
            pub fn set_dispatch(&self, events: SocketDispatch) -> Result<()> {
                self.0.set_dispatch(events)
            }

            /// True once closing has begun (it finishes on the closing thread).
            pub fn is_closed(&self) -> bool {
                self.0.inner.lock().closed
            }
        }

        impl fmt::Debug for $rname {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let g = self.0.inner.lock();
                f.debug_struct(stringify!($rname))
                    .field("family", &self.0.family)
                    .field("local", &g.local)
                    .field("remote", &g.remote)
                    .field("closed", &g.closed)
                    .finish()
            }
        }

        impl $oname {
            /// `WskCloseSocket`: cancel pending operations (they complete with
            /// `Cancelled`), wait for event callbacks in progress, abortively disconnect a
            /// live connection and free the socket. Always succeeds.
            pub fn close(self) -> Op<()> {
                self.0.0.close();
                Op::ready(Ok(()))
            }

            /// A non-owning handle usable from event callbacks and other threads; its
            /// operations fail with `SocketClosed` once this socket is closed.
            pub fn handle(&self) -> $rname {
                self.0.clone()
            }
        }

        impl std::ops::Deref for $oname {
            type Target = $rname;
            fn deref(&self) -> &$rname {
                &self.0
            }
        }

        impl Drop for $oname {
            fn drop(&mut self) {
                self.0.0.close();
            }
        }

        impl fmt::Debug for $oname {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }
    };
}

socket_handles!(
    /// Non-owning handle to a connection socket (what event callbacks receive).
    ConnectionRef,
    /// An open connection-oriented (TCP) socket. Dropping it closes it.
    ConnectionSocket
);
socket_handles!(
    /// Non-owning handle to a listening socket.
    ListenRef,
    /// An open listening (TCP) socket. It starts listening when bound. Dropping it closes it.
    ListenSocket
);
socket_handles!(
    /// Non-owning handle to a datagram socket.
    DatagramRef,
    /// An open datagram (UDP) socket. Dropping it closes it.
    DatagramSocket
);
socket_handles!(
    /// Non-owning handle to a stream socket.
    StreamRef,
    /// An open stream socket (`WSK_FLAG_STREAM_SOCKET`): bind, then either `listen` (it then
    /// accepts like a listening socket) or `connect` (it then sends and receives like a
    /// connection socket). Dropping it closes it.
    StreamSocket
);
socket_handles!(
    /// Non-owning handle to a basic socket.
    BasicRef,
    /// A basic socket: only control and close.
    BasicSocket
);

impl ConnectionRef {
    /// `WskBind`: bind to a local address (port 0 picks one). Required before connect.
    pub fn bind(&self, local: SocketAddr) -> Op<()> {
        Op::ready(self.0.bind(local))
    }

    /// `WskConnect`: connect a bound socket to `remote`.
    pub fn connect(&self, remote: SocketAddr) -> Op<()> {
        self.0.connect(remote)
    }

    /// `WskSend`: send all of `buf`; completes when the OS has taken every byte.
    pub fn send(&self, buf: Vec<u8>) -> Op<Transfer> {
        self.0.send(buf)
    }

    /// `WskSend` from a borrowed slice (e.g. inside a receive event): copies only what the OS
    /// does not take at once. `Transfer::bytes` counts all of `data`; `Transfer::buf` is empty.
    pub fn send_copy(&self, data: &[u8]) -> Op<Transfer> {
        self.0.send_copy(data)
    }

    /// `WskReceive`: receive up to `buf.len()` bytes into `buf`; 0 bytes means the peer
    /// disconnected gracefully.
    pub fn receive(&self, buf: Vec<u8>) -> Op<Transfer> {
        self.0.receive(buf)
    }

    /// `WskDisconnect`.
    pub fn disconnect(&self, how: Disconnect) -> Op<()> {
        self.0.disconnect(how)
    }

    /// `WskGetLocalAddress`.
    pub fn local_address(&self) -> Result<SocketAddr> {
        self.0.local_address()
    }

    /// `WskGetRemoteAddress`.
    pub fn remote_address(&self) -> Result<SocketAddr> {
        self.0.remote_address()
    }
}

impl ListenRef {
    /// `WskBind`: bind and start listening.
    pub fn bind(&self, local: SocketAddr) -> Op<()> {
        Op::ready(self.0.bind(local))
    }

    /// `WskAccept`: accept one incoming connection.
    pub fn accept(&self) -> Op<Accepted> {
        self.0.accept()
    }

    /// `WskGetLocalAddress`.
    pub fn local_address(&self) -> Result<SocketAddr> {
        self.0.local_address()
    }
}

impl DatagramRef {
    /// `WskBind`. Required before sending or receiving.
    pub fn bind(&self, local: SocketAddr) -> Op<()> {
        Op::ready(self.0.bind(local))
    }

    /// `WskSendTo`: send one datagram.
    pub fn send_to(&self, buf: Vec<u8>, to: SocketAddr) -> Op<Transfer> {
        self.0.send_to(buf, to)
    }

    /// `WskReceiveFrom`: receive one datagram into `buf` (cut and flagged `truncated` if
    /// larger).
    pub fn receive_from(&self, buf: Vec<u8>) -> Op<Datagram> {
        self.0.receive_from(buf)
    }

    /// `WskGetLocalAddress`.
    pub fn local_address(&self) -> Result<SocketAddr> {
        self.0.local_address()
    }
}

impl StreamRef {
    /// `WskBind`.
    pub fn bind(&self, local: SocketAddr) -> Op<()> {
        Op::ready(self.0.bind(local))
    }

    /// `WskListen`: start listening (the socket must be bound and not connected).
    pub fn listen(&self) -> Op<()> {
        Op::ready(self.0.listen())
    }

    /// `WskAccept` (once listening).
    pub fn accept(&self) -> Op<Accepted> {
        self.0.accept()
    }

    /// `WskConnect` (bound, not listening).
    pub fn connect(&self, remote: SocketAddr) -> Op<()> {
        self.0.connect(remote)
    }

    /// `WskSend` (once connected).
    pub fn send(&self, buf: Vec<u8>) -> Op<Transfer> {
        self.0.send(buf)
    }

    /// `WskReceive` (once connected).
    pub fn receive(&self, buf: Vec<u8>) -> Op<Transfer> {
        self.0.receive(buf)
    }

    /// `WskDisconnect` (once connected).
    pub fn disconnect(&self, how: Disconnect) -> Op<()> {
        self.0.disconnect(how)
    }

    /// `WskGetLocalAddress`.
    pub fn local_address(&self) -> Result<SocketAddr> {
        self.0.local_address()
    }

    /// `WskGetRemoteAddress`.
    pub fn remote_address(&self) -> Result<SocketAddr> {
        self.0.remote_address()
    }
}

/// A socket of any category, as returned by `WskSocket`.
#[derive(Debug)]
pub enum Socket {
    /// `WSK_FLAG_BASIC_SOCKET`.
    Basic(BasicSocket),
    /// `WSK_FLAG_LISTEN_SOCKET`.
    Listen(ListenSocket),
    /// `WSK_FLAG_CONNECTION_SOCKET`.
    Connection(ConnectionSocket),
    /// `WSK_FLAG_DATAGRAM_SOCKET`.
    Datagram(DatagramSocket),
    /// `WSK_FLAG_STREAM_SOCKET`.
    Stream(StreamSocket),
}

impl Socket {
    pub(crate) fn from_core(core: Arc<SocketCore>) -> Socket {
        match core.category {
            Category::Basic => Socket::Basic(BasicSocket(BasicRef(core))),
            Category::Listen => Socket::Listen(ListenSocket(ListenRef(core))),
            Category::Connection => Socket::Connection(ConnectionSocket(ConnectionRef(core))),
            Category::Datagram => Socket::Datagram(DatagramSocket(DatagramRef(core))),
            Category::Stream => Socket::Stream(StreamSocket(StreamRef(core))),
        }
    }

    /// The socket's category.
    pub fn category(&self) -> Category {
        match self {
            Socket::Basic(_) => Category::Basic,
            Socket::Listen(_) => Category::Listen,
            Socket::Connection(_) => Category::Connection,
            Socket::Datagram(_) => Category::Datagram,
            Socket::Stream(_) => Category::Stream,
        }
    }

    /// The connection socket, or `WrongCategory` (the socket is closed).
    pub fn into_connection(self) -> Result<ConnectionSocket> {
        match self {
            Socket::Connection(s) => Ok(s),
            other => Err(Error::WrongCategory(other.category().name())),
        }
    }

    /// The listening socket, or `WrongCategory` (the socket is closed).
    pub fn into_listen(self) -> Result<ListenSocket> {
        match self {
            Socket::Listen(s) => Ok(s),
            other => Err(Error::WrongCategory(other.category().name())),
        }
    }

    /// The datagram socket, or `WrongCategory` (the socket is closed).
    pub fn into_datagram(self) -> Result<DatagramSocket> {
        match self {
            Socket::Datagram(s) => Ok(s),
            other => Err(Error::WrongCategory(other.category().name())),
        }
    }

    /// The stream socket, or `WrongCategory` (the socket is closed).
    pub fn into_stream(self) -> Result<StreamSocket> {
        match self {
            Socket::Stream(s) => Ok(s),
            other => Err(Error::WrongCategory(other.category().name())),
        }
    }

    /// The basic socket, or `WrongCategory` (the socket is closed).
    pub fn into_basic(self) -> Result<BasicSocket> {
        match self {
            Socket::Basic(s) => Ok(s),
            other => Err(Error::WrongCategory(other.category().name())),
        }
    }
}
