//! The provider-level functions (`WSK_PROVIDER_DISPATCH`) and the per-client state behind
//! them (`WSK_CLIENT`): socket accounting, static event callbacks, and the I/O subsystem.

use crate::addrinfo::{self, AddrInfoHints, AddrInfoList, NameInfo, NameInfoFlags};
use crate::events::{EventMask, SocketDispatch};
use crate::op::Op;
use crate::reactor::Reactor;
use crate::socket::{
    Category, ConnectionRef, ConnectionSocket, DatagramSocket, Family, IPPROTO_TCP, IPPROTO_UDP,
    ListenSocket, SOCK_DGRAM, SOCK_STREAM, Socket, SocketCore, WSK_FLAG_BASIC_SOCKET,
    WSK_FLAG_CONNECTION_SOCKET, WSK_FLAG_DATAGRAM_SOCKET, WSK_FLAG_LISTEN_SOCKET,
    WSK_FLAG_STREAM_SOCKET,
};
use crate::{Error, Result};
use parking_lot::{Condvar, Mutex};
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

/// `WskControlClient` code `WSK_TRANSPORT_LIST_QUERY`.
pub const WSK_TRANSPORT_LIST_QUERY: u32 = 2;
/// `WskControlClient` code `WSK_TRANSPORT_LIST_CHANGE`: needs an IRP, so it is the typed
/// [`WskClient::transport_list_change`]; through `control_client` it is refused.
pub const WSK_TRANSPORT_LIST_CHANGE: u32 = 3;
/// `WskControlClient` code `WSK_CACHE_SD` (not supported).
pub const WSK_CACHE_SD: u32 = 4;
/// `WskControlClient` code `WSK_RELEASE_SD` (not supported).
pub const WSK_RELEASE_SD: u32 = 5;
/// `WskControlClient` code `WSK_TDI_DEVICENAME_MAPPING` (not supported).
pub const WSK_TDI_DEVICENAME_MAPPING: u32 = 6;
/// `WskControlClient` code `WSK_SET_STATIC_EVENT_CALLBACKS`.
pub const WSK_SET_STATIC_EVENT_CALLBACKS: u32 = 7;
/// `WskControlClient` code `WSK_TDI_BEHAVIOR` (not supported).
pub const WSK_TDI_BEHAVIOR: u32 = 8;

/// One `WSK_TRANSPORT` entry: `{u16 Version; u16 SocketType; u32 Protocol; u16 AddressFamily;
/// GUID ProviderId}`; encoded little-endian, 28 bytes with C padding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transport {
    /// Version of the transport entry.
    pub version: u16,
    /// `SOCK_STREAM` / `SOCK_DGRAM`.
    pub socket_type: u16,
    /// `IPPROTO_TCP` / `IPPROTO_UDP`.
    pub protocol: u32,
    /// `AF_INET` / `AF_INET6` (WSK numbering).
    pub address_family: u16,
}

impl Transport {
    /// Size of one encoded entry.
    pub const ENCODED_LEN: usize = 28;

    fn encode(&self, out: &mut [u8]) {
        out[..Self::ENCODED_LEN].fill(0);
        out[0..2].copy_from_slice(&self.version.to_le_bytes());
        out[2..4].copy_from_slice(&self.socket_type.to_le_bytes());
        out[4..8].copy_from_slice(&self.protocol.to_le_bytes());
        out[8..10].copy_from_slice(&self.address_family.to_le_bytes());
        // ProviderId (GUID, at offset 12) left zero: there is one provider.
    }

    /// Decode an entry written by `WSK_TRANSPORT_LIST_QUERY`.
    pub fn decode(b: &[u8]) -> Option<Transport> {
        if b.len() < Self::ENCODED_LEN {
            return None;
        }
        Some(Transport {
            version: u16::from_le_bytes([b[0], b[1]]),
            socket_type: u16::from_le_bytes([b[2], b[3]]),
            protocol: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
            address_family: u16::from_le_bytes([b[8], b[9]]),
        })
    }
}

const TRANSPORTS: [Transport; 4] = [
    Transport {
        version: 0,
        socket_type: SOCK_STREAM,
        protocol: IPPROTO_TCP,
        address_family: crate::socket::AF_INET,
    },
    Transport {
        version: 0,
        socket_type: SOCK_STREAM,
        protocol: IPPROTO_TCP,
        address_family: crate::socket::AF_INET6,
    },
    Transport {
        version: 0,
        socket_type: SOCK_DGRAM,
        protocol: IPPROTO_UDP,
        address_family: crate::socket::AF_INET,
    },
    Transport {
        version: 0,
        socket_type: SOCK_DGRAM,
        protocol: IPPROTO_UDP,
        address_family: crate::socket::AF_INET6,
    },
];

/// Provider-wide counters (monotonic).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) sockets_opened: AtomicU64,
    pub(crate) sockets_closed: AtomicU64,
    pub(crate) bytes_sent: AtomicU64,
    pub(crate) bytes_received: AtomicU64,
}

/// A snapshot of the provider's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CounterSnapshot {
    /// Sockets created or accepted.
    pub sockets_opened: u64,
    /// Sockets closed.
    pub sockets_closed: u64,
    /// Bytes handed to the OS by send operations (of sockets closed so far).
    pub bytes_sent: u64,
    /// Bytes received by operations and receive events (of sockets closed so far).
    pub bytes_received: u64,
    /// Reactor wakeups.
    pub reactor_wakeups: u64,
    /// Readiness events handled.
    pub reactor_events: u64,
    /// Clients (bindings) currently alive.
    pub clients: u64,
}

impl fmt::Display for CounterSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} sockets opened, {} closed, {} bytes sent, {} received, {} reactor wakeups for {} events, {} clients",
            self.sockets_opened,
            self.sockets_closed,
            self.bytes_sent,
            self.bytes_received,
            self.reactor_wakeups,
            self.reactor_events,
            self.clients
        )
    }
}

type Job = Box<dyn FnOnce() + Send>;

pub(crate) struct SubsystemInner {
    pub(crate) reactor: Arc<Reactor>,
    pub(crate) counters: Counters,
    resolver: Mutex<Option<mpsc::Sender<Job>>>,
    clients: AtomicUsize,
}

impl SubsystemInner {
    fn resolve(&self, job: Job) {
        let mut r = self.resolver.lock();
        if r.is_none() {
            let (tx, rx) = mpsc::channel::<Job>();
            let spawned = std::thread::Builder::new()
                .name("wsk-resolver".into())
                .spawn(move || {
                    while let Ok(job) = rx.recv() {
                        // A completion routine runs inside the job: keep the resolver alive.
                        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
                            tracing::error!(target: "wsk", "a name-lookup completion routine panicked");
                        }
                    }
                });
            if spawned.is_err() {
                drop(r);
                job();
                return;
            }
            *r = Some(tx);
        }
        if let Some(tx) = r.as_ref()
            && let Err(mpsc::SendError(job)) = tx.send(job)
        {
            drop(r);
            job();
        }
    }
}

/// The WSK subsystem's machinery: the I/O threads and the resolver. One per provider.
///
/// ```
/// # fn main() -> wsk::Result<()> {
/// let wsk = wsk::Subsystem::new(2)?;
/// let client = wsk.client();
/// let listener = client.listen_socket(wsk::Family::V4, None)?;
/// listener.bind("127.0.0.1:0".parse().unwrap()).wait()?;
/// assert!(listener.local_address()?.port() != 0);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Subsystem {
    pub(crate) inner: Arc<SubsystemInner>,
}

impl fmt::Debug for Subsystem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subsystem")
            .field("io_threads", &self.inner.reactor.thread_count())
            .finish()
    }
}

impl Subsystem {
    /// Start the subsystem with `io_threads` I/O threads (at least one).
    pub fn new(io_threads: usize) -> Result<Subsystem> {
        Ok(Subsystem {
            inner: Arc::new(SubsystemInner {
                reactor: Reactor::new(io_threads)?,
                counters: Counters::default(),
                resolver: Mutex::new(None),
                clients: AtomicUsize::new(0),
            }),
        })
    }

    /// A new client (what the provider hands out as `WSK_CLIENT` for one binding), outside
    /// any registrar: for tools and tests of the socket layer.
    pub fn client(&self) -> WskClient {
        self.client_with_version(crate::npi::WSK_VERSION_1_0)
    }

    pub(crate) fn client_with_version(&self, version: u16) -> WskClient {
        self.inner.clients.fetch_add(1, Ordering::Relaxed);
        WskClient {
            core: Arc::new(ClientCore {
                sub: self.inner.clone(),
                version,
                state: Mutex::new(ClientState::default()),
                cond: Condvar::new(),
            }),
        }
    }

    /// The provider's counters.
    pub fn counters(&self) -> CounterSnapshot {
        let c = &self.inner.counters;
        CounterSnapshot {
            sockets_opened: c.sockets_opened.load(Ordering::Relaxed),
            sockets_closed: c.sockets_closed.load(Ordering::Relaxed),
            bytes_sent: c.bytes_sent.load(Ordering::Relaxed),
            bytes_received: c.bytes_received.load(Ordering::Relaxed),
            reactor_wakeups: self.inner.reactor.counters.wakeups.load(Ordering::Relaxed) as u64,
            reactor_events: self.inner.reactor.counters.events.load(Ordering::Relaxed) as u64,
            clients: self.inner.clients.load(Ordering::Relaxed) as u64,
        }
    }
}

type IdleHook = Box<dyn FnOnce() + Send>;

#[derive(Default)]
struct ClientState {
    sockets: usize,
    /// Sockets plus operations still pending outside a socket (name lookups).
    outstanding: usize,
    created_any: bool,
    static_events: EventMask,
    /// No new sockets (the client detached or is closing).
    refuse_new: bool,
    idle_hooks: Vec<IdleHook>,
    /// Pending `WSK_TRANSPORT_LIST_CHANGE` requests; cancelled when the client detaches.
    list_change: Vec<crate::Completer<()>>,
}

/// Per-client state (`WSK_CLIENT`).
pub(crate) struct ClientCore {
    pub(crate) sub: Arc<SubsystemInner>,
    version: u16,
    state: Mutex<ClientState>,
    cond: Condvar,
}

impl Drop for ClientCore {
    fn drop(&mut self) {
        self.sub.clients.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Held by every open socket (and pending name lookup); dropping it releases the client's
/// count, and the last one lets a pending provider detach complete.
pub(crate) struct SocketTicket {
    owner: Arc<ClientCore>,
    socket: bool,
}

impl Drop for SocketTicket {
    fn drop(&mut self) {
        let hooks = {
            let mut st = self.owner.state.lock();
            st.outstanding -= 1;
            if self.socket {
                st.sockets -= 1;
            }
            if st.outstanding == 0 {
                self.owner.cond.notify_all();
                std::mem::take(&mut st.idle_hooks)
            } else {
                Vec::new()
            }
        };
        for h in hooks {
            h();
        }
    }
}

impl ClientCore {
    pub(crate) fn socket_opened(self: &Arc<Self>) -> Result<SocketTicket> {
        let mut st = self.state.lock();
        if st.refuse_new {
            return Err(Error::DeviceNotReady);
        }
        st.sockets += 1;
        st.outstanding += 1;
        st.created_any = true;
        Ok(SocketTicket {
            owner: self.clone(),
            socket: true,
        })
    }

    /// Count an operation in flight that holds no socket (a name lookup).
    pub(crate) fn op_started(self: &Arc<Self>) -> Result<SocketTicket> {
        let mut st = self.state.lock();
        if st.refuse_new {
            return Err(Error::DeviceNotReady);
        }
        st.outstanding += 1;
        Ok(SocketTicket {
            owner: self.clone(),
            socket: false,
        })
    }

    pub(crate) fn static_events(&self) -> EventMask {
        self.state.lock().static_events
    }

    /// Run `hook` once the client has no open socket and no pending lookup (now, if so).
    pub(crate) fn when_idle(&self, hook: impl FnOnce() + Send + 'static) {
        let mut st = self.state.lock();
        if st.outstanding == 0 {
            drop(st);
            hook();
        } else {
            st.idle_hooks.push(Box::new(hook));
        }
    }

    /// The client is detaching: no new sockets, and pending transport-list-change requests
    /// are cancelled (the list never changes here, so nothing else would complete them).
    pub(crate) fn refuse_new_sockets(&self) {
        let pending = {
            let mut st = self.state.lock();
            st.refuse_new = true;
            std::mem::take(&mut st.list_change)
        };
        for c in pending {
            c.complete(Err(Error::Cancelled));
        }
    }
}

/// A client of the WSK subsystem: the provider-level functions of `WSK_PROVIDER_DISPATCH`
/// bound to one `WSK_CLIENT`. Cheap to clone.
#[derive(Clone)]
pub struct WskClient {
    pub(crate) core: Arc<ClientCore>,
}

impl fmt::Debug for WskClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WskClient")
            .field("open_sockets", &self.open_sockets())
            .finish()
    }
}

fn category_of(flags: u32) -> Result<Category> {
    match flags {
        WSK_FLAG_BASIC_SOCKET => Ok(Category::Basic),
        WSK_FLAG_LISTEN_SOCKET => Ok(Category::Listen),
        WSK_FLAG_CONNECTION_SOCKET => Ok(Category::Connection),
        WSK_FLAG_DATAGRAM_SOCKET => Ok(Category::Datagram),
        WSK_FLAG_STREAM_SOCKET => Ok(Category::Stream),
        _ => Err(Error::InvalidParameter(
            "flags must name exactly one socket category",
        )),
    }
}

fn check_type(category: Category, socket_type: u16, protocol: u32) -> Result<()> {
    let (want_ty, want_proto) = match category {
        Category::Datagram => (SOCK_DGRAM, IPPROTO_UDP),
        Category::Listen | Category::Connection | Category::Stream => (SOCK_STREAM, IPPROTO_TCP),
        Category::Basic => match socket_type {
            SOCK_DGRAM => (SOCK_DGRAM, IPPROTO_UDP),
            _ => (SOCK_STREAM, IPPROTO_TCP),
        },
    };
    if socket_type != want_ty {
        return Err(Error::Unsupported("socket type for this category"));
    }
    if protocol != 0 && protocol != want_proto {
        return Err(Error::Unsupported("protocol for this socket type"));
    }
    Ok(())
}

impl WskClient {
    /// The WSK version the provider serves this client (negotiated at attach).
    pub fn version(&self) -> u16 {
        self.core.version
    }

    /// Sockets of this client still open.
    pub fn open_sockets(&self) -> usize {
        self.core.state.lock().sockets
    }

    /// Block until this client has no open socket and no pending lookup, or `timeout`
    /// passes. Returns whether idle.
    pub fn wait_no_sockets(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut st = self.core.state.lock();
        while st.outstanding != 0 {
            if self.core.cond.wait_until(&mut st, deadline).timed_out() {
                return st.outstanding == 0;
            }
        }
        true
    }

    /// `WskSocket`: create a socket. `family` is `AF_INET`/`AF_INET6`, `flags` one
    /// `WSK_FLAG_*_SOCKET`, `dispatch` the socket's event table (must match the category).
    pub fn socket(
        &self,
        family: u16,
        socket_type: u16,
        protocol: u32,
        flags: u32,
        dispatch: SocketDispatch,
    ) -> Op<Socket> {
        Op::ready(self.create(family, socket_type, protocol, flags, dispatch))
    }

    fn create(
        &self,
        family: u16,
        socket_type: u16,
        protocol: u32,
        flags: u32,
        dispatch: SocketDispatch,
    ) -> Result<Socket> {
        let family = Family::from_raw(family)?;
        let category = category_of(flags)?;
        check_type(category, socket_type, protocol)?;
        if !dispatch.fits(category) {
            return Err(Error::InvalidParameter(
                "dispatch table does not match the socket category",
            ));
        }
        let core = SocketCore::create(&self.core, category, family, dispatch)?;
        self.core
            .sub
            .counters
            .sockets_opened
            .fetch_add(1, Ordering::Relaxed);
        Ok(Socket::from_core(core))
    }

    /// Typed `WskSocket` for a listening socket.
    pub fn listen_socket(
        &self,
        family: Family,
        events: Option<Arc<dyn crate::ListenEvents>>,
    ) -> Result<ListenSocket> {
        let d = events.map_or(SocketDispatch::None, SocketDispatch::Listen);
        self.create(
            raw_family(family),
            SOCK_STREAM,
            IPPROTO_TCP,
            WSK_FLAG_LISTEN_SOCKET,
            d,
        )?
        .into_listen()
    }

    /// Typed `WskSocket` for a connection socket.
    pub fn connection_socket(
        &self,
        family: Family,
        events: Option<Arc<dyn crate::ConnectionEvents>>,
    ) -> Result<ConnectionSocket> {
        let d = events.map_or(SocketDispatch::None, SocketDispatch::Connection);
        self.create(
            raw_family(family),
            SOCK_STREAM,
            IPPROTO_TCP,
            WSK_FLAG_CONNECTION_SOCKET,
            d,
        )?
        .into_connection()
    }

    /// Typed `WskSocket` for a datagram socket.
    pub fn datagram_socket(
        &self,
        family: Family,
        events: Option<Arc<dyn crate::DatagramEvents>>,
    ) -> Result<DatagramSocket> {
        let d = events.map_or(SocketDispatch::None, SocketDispatch::Datagram);
        self.create(
            raw_family(family),
            SOCK_DGRAM,
            IPPROTO_UDP,
            WSK_FLAG_DATAGRAM_SOCKET,
            d,
        )?
        .into_datagram()
    }

    /// Typed `WskSocket` for a stream socket, with the event tables it uses when it listens
    /// and when it is connected.
    pub fn stream_socket(
        &self,
        family: Family,
        listen: Option<Arc<dyn crate::ListenEvents>>,
        connection: Option<Arc<dyn crate::ConnectionEvents>>,
    ) -> Result<crate::StreamSocket> {
        let d = if listen.is_none() && connection.is_none() {
            SocketDispatch::None
        } else {
            SocketDispatch::Stream { listen, connection }
        };
        self.create(
            raw_family(family),
            SOCK_STREAM,
            IPPROTO_TCP,
            WSK_FLAG_STREAM_SOCKET,
            d,
        )?
        .into_stream()
    }

    /// `WskSocketConnect`: create, bind to `local` and connect to `remote` in one step. The
    /// family comes from `local`; `flags` must be 0.
    pub fn socket_connect(
        &self,
        socket_type: u16,
        protocol: u32,
        local: SocketAddr,
        remote: SocketAddr,
        flags: u32,
        events: Option<Arc<dyn crate::ConnectionEvents>>,
    ) -> Op<ConnectionSocket> {
        let sock = (|| {
            if flags != 0 {
                return Err(Error::InvalidParameter("WskSocketConnect flags must be 0"));
            }
            if Family::of(&remote) != Family::of(&local) {
                return Err(Error::InvalidAddress("local and remote families differ"));
            }
            check_type(Category::Connection, socket_type, protocol)?;
            let s = self.connection_socket(Family::of(&local), events)?;
            s.bind(local).wait()?;
            Ok(s)
        })();
        let sock = match sock {
            Ok(s) => s,
            Err(e) => return Op::ready(Err(e)),
        };
        let connect = sock.connect(remote);
        let (op, c) = Op::pending();
        let handle: ConnectionRef = sock.handle();
        // Cancelling the combined op cancels the connect; the socket is closed on failure.
        c.set_cancel(move || handle.0.close());
        connect.on_complete(move |r| {
            c.complete(r.map(|()| sock));
        });
        op
    }

    /// `WskControlClient`. Supported codes: `WSK_TRANSPORT_LIST_QUERY` (output: an array of
    /// [`Transport`] entries; [`Error::BufferOverflow`] with the size needed if `output` is too small)
    /// and `WSK_SET_STATIC_EVENT_CALLBACKS` (input: `WSK_EVENT_CALLBACK_CONTROL` =
    /// 16-byte NPI id then a u32 event mask; only before the first socket). Returns the
    /// number of output bytes written (`*OutputSizeReturned`).
    pub fn control_client(&self, code: u32, input: &[u8], output: &mut [u8]) -> Result<usize> {
        match code {
            WSK_TRANSPORT_LIST_QUERY => {
                let needed = TRANSPORTS.len() * Transport::ENCODED_LEN;
                if output.len() < needed {
                    return Err(Error::BufferOverflow { needed });
                }
                for (t, chunk) in TRANSPORTS
                    .iter()
                    .zip(output.chunks_mut(Transport::ENCODED_LEN))
                {
                    t.encode(chunk);
                }
                Ok(needed)
            }
            WSK_SET_STATIC_EVENT_CALLBACKS => {
                if input.len() < 20 {
                    return Err(Error::BufferTooSmall { needed: 20 });
                }
                let npi = &input[..16];
                if npi != crate::npi::NPI_WSK_INTERFACE_ID_BYTES {
                    return Err(Error::InvalidParameter(
                        "NpiId must be NPI_WSK_INTERFACE_ID",
                    ));
                }
                let mask = u32::from_le_bytes([input[16], input[17], input[18], input[19]]);
                self.set_static_event_callbacks(EventMask(mask))?;
                Ok(0)
            }
            WSK_TRANSPORT_LIST_CHANGE => Err(Error::InvalidParameter(
                "WSK_TRANSPORT_LIST_CHANGE needs an IRP: use transport_list_change",
            )),
            WSK_CACHE_SD | WSK_RELEASE_SD | WSK_TDI_DEVICENAME_MAPPING | WSK_TDI_BEHAVIOR => {
                Err(Error::NotImplemented)
            }
            _ => Err(Error::InvalidParameter("unknown control code")),
        }
    }

    /// Typed `WSK_SET_STATIC_EVENT_CALLBACKS`: enable these events on every socket created
    /// from now on that has a matching dispatch table. Only before the first socket.
    pub fn set_static_event_callbacks(&self, mask: EventMask) -> Result<()> {
        let all = EventMask::ACCEPT
            | EventMask::RECEIVE
            | EventMask::DISCONNECT
            | EventMask::RECEIVE_FROM
            | EventMask::SEND_BACKLOG;
        if mask.0 & !all.0 != 0 {
            return Err(Error::InvalidParameter("unknown event bits"));
        }
        let mut st = self.core.state.lock();
        if st.created_any {
            return Err(Error::InvalidState(
                "static event callbacks must be set before the first socket",
            ));
        }
        st.static_events = mask;
        Ok(())
    }

    /// `WSK_TRANSPORT_LIST_CHANGE`: completes when the transport list changes. Here it never
    /// does, so the operation pends until it is cancelled or the client detaches (then it
    /// completes with `CANCELLED`, as `WskDeregister` requires).
    pub fn transport_list_change(&self) -> Op<()> {
        let mut st = self.core.state.lock();
        if st.refuse_new {
            return Op::ready(Err(Error::DeviceNotReady));
        }
        let (op, c) = Op::pending();
        // Cancelling completes it directly; the stale completer is dropped at detach.
        st.list_change.retain(|c| !c.is_done());
        st.list_change.push(c);
        op
    }

    /// Typed `WSK_TRANSPORT_LIST_QUERY`.
    pub fn transport_list(&self) -> Vec<Transport> {
        TRANSPORTS.to_vec()
    }

    /// `WskGetAddressInfo`: resolve on the resolver thread.
    pub fn get_address_info(
        &self,
        node: Option<&str>,
        service: Option<&str>,
        hints: AddrInfoHints,
    ) -> Op<AddrInfoList> {
        let node = node.map(str::to_owned);
        let service = service.map(str::to_owned);
        let ticket = match self.core.op_started() {
            Ok(t) => t,
            Err(e) => return Op::ready(Err(e)),
        };
        let (op, c) = Op::pending();
        self.core.sub.resolve(Box::new(move || {
            c.complete(addrinfo::lookup(node.as_deref(), service.as_deref(), hints));
            drop(ticket);
        }));
        op
    }

    /// `WskFreeAddressInfo`.
    pub fn free_address_info(&self, list: AddrInfoList) {
        drop(list);
    }

    /// `WskGetNameInfo`: reverse-resolve on the resolver thread.
    pub fn get_name_info(&self, addr: SocketAddr, flags: NameInfoFlags) -> Op<NameInfo> {
        let ticket = match self.core.op_started() {
            Ok(t) => t,
            Err(e) => return Op::ready(Err(e)),
        };
        let (op, c) = Op::pending();
        self.core.sub.resolve(Box::new(move || {
            c.complete(addrinfo::name_info(addr, flags));
            drop(ticket);
        }));
        op
    }
}

fn raw_family(f: Family) -> u16 {
    match f {
        Family::V4 => crate::socket::AF_INET,
        Family::V6 => crate::socket::AF_INET6,
    }
}
