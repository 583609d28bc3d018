//! # wsk — the Winsock Kernel subsystem over the OS's sockets
//!
//! This crate is the WSK subsystem of a user-mode NMR: the provider of
//! `NPI_WSK_INTERFACE_ID` whose clients ("WSK applications") create sockets and do real
//! network I/O through it, and the client-side registration functions
//! (`WskRegister`, `WskCaptureProviderNPI`, ...).
//!
//! ## Layers
//!
//! ```text
//!   WSK application ──(WskRegistration / raw NMR Client<WskNpi>)──► NMR binding
//!        │                                                         │
//!        ▼ provider dispatch (WskClient)                           ▼ detach pends while sockets open
//!   sockets: Basic / Listen / Connection / Datagram   ──►   ClientCore (socket count)
//!        │ ops tried inline, else queued
//!        ▼
//!   Reactor: N I/O threads in epoll (mio)  ── completes ops, raises event callbacks
//! ```
//!
//! * **Operations** ([`Op`]) complete exactly once (the IRP rule), can be awaited, waited on
//!   or given a completion routine, and can be cancelled.
//! * **Events** ([`ListenEvents`], [`ConnectionEvents`], [`DatagramEvents`]) start disabled,
//!   are enabled per socket, and run on the I/O threads.
//! * **Close** cancels pending operations, waits for callbacks in progress and resets a live
//!   connection.
//!
//! Only IPv4/IPv6 TCP and UDP are supported. Stream sockets (`WSK_FLAG_STREAM_SOCKET`) become
//! listening or connection sockets by use (`listen` or `connect` after `bind`).
//!
//! ## Usage: the life of a WSK application
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use wsk::*;
//! let nmr = nmr::Registrar::new();
//! let provider = WskProvider::start(&nmr, ProviderConfig::default())?;        // the subsystem
//!
//! let reg = WskRegistration::register(&nmr, WskClientDispatch::new(npi::WSK_VERSION_1_0))?; // WskRegister
//! let wsk = reg.capture_provider_npi(WSK_INFINITE_WAIT)?;                      // WskCaptureProviderNPI
//!
//! let listener = wsk.listen_socket(Family::V4, None)?;                         // WskSocket
//! listener.bind("127.0.0.1:0".parse()?).wait()?;                               // WskBind (listens)
//! let accept = listener.accept();                                              // WskAccept: PENDING
//! let conn = wsk
//!     .socket_connect(SOCK_STREAM, IPPROTO_TCP, "127.0.0.1:0".parse()?, listener.local_address()?, 0, None)
//!     .wait()?;                                                                // WskSocketConnect
//! let server_side = accept.wait()?.socket;
//!
//! conn.send(b"ping".to_vec()).wait()?;                                         // WskSend
//! let got = server_side.receive(vec![0; 16]).wait()?;                          // WskReceive
//! assert_eq!(got.data(), b"ping");
//!
//! drop((conn, server_side, listener));   // WskCloseSocket (abortive for live connections)
//! drop(wsk);                             // WskReleaseProviderNPI
//! reg.deregister();                      // WskDeregister: returns once everything is closed
//! provider.unload();                     // the subsystem leaves the registrar
//! # Ok(()) }
//! ```
//!
//! ## Where things are
//!
//! | file | what |
//! |---|---|
//! | `op.rs` | [`Op`] / [`Completer`]: one-shot completion (the IRP rule) |
//! | `reactor.rs` | the I/O threads (mio/epoll), readiness dispatch, commands |
//! | `socket.rs` | socket state machine per category, operations, events, close |
//! | `client.rs` | [`Subsystem`], [`WskClient`] (provider-level functions), socket accounting |
//! | `provider.rs` | [`WskNpi`], [`WskProvider`]: the NMR provider, version negotiation, detach |
//! | `registration.rs` | [`WskRegistration`] and capture: the client registration functions |
//! | `addrinfo.rs`, `sys.rs` | name resolution; the only `unsafe` (two OS calls) |
//! | `echo.rs` | echo server and load client applications (CLI, example, benchmark) |
//!
//! ## Gotchas
//!
//! * Event callbacks and completion routines run on I/O threads: do not block there. A
//!   blocking wait on an I/O thread is refused with [`Error::WouldDeadlock`].
//! * Dropping a pending [`Op`] does not cancel it: it still completes (a receive still
//!   consumes data). Call [`Op::cancel`] to cancel.
//! * Two callbacks on different I/O threads that close each other's sockets wait for each
//!   other (close waits for callbacks in progress); close your *own* socket from its
//!   callback freely.
//! * Dropping a [`WskProvider`] or [`WskRegistration`] deregisters and waits — until the
//!   applications' sockets are closed.

// Unsafe code is confined to small modules; every block says why it holds, one operation
// at a time (the workspace denies these; here they cannot be allowed at all).
#![forbid(
    clippy::undocumented_unsafe_blocks,
    clippy::multiple_unsafe_ops_per_block
)]
#![deny(unsafe_code)]

mod addrinfo;
mod client;
pub mod echo;
mod error;
mod events;
pub mod npi;
pub use npi::WskProviderCharacteristics;
mod op;
mod provider;
mod reactor;
mod registration;
mod socket;
mod status;
mod sync;
#[expect(
    unsafe_code,
    reason = "the two OS calls std and socket2 do not wrap safely"
)]
mod sys;

pub use addrinfo::{AddrInfo, AddrInfoHints, AddrInfoList, NameInfo, NameInfoFlags};
pub use client::{
    CounterSnapshot, Subsystem, Transport, WSK_CACHE_SD, WSK_RELEASE_SD,
    WSK_SET_STATIC_EVENT_CALLBACKS, WSK_TDI_BEHAVIOR, WSK_TDI_DEVICENAME_MAPPING,
    WSK_TRANSPORT_LIST_CHANGE, WSK_TRANSPORT_LIST_QUERY, WskClient,
};
pub use error::{Error, Result};
pub use events::{
    ConnectionEvents, DatagramEvents, DisconnectKind, EventMask, ListenEvents, ReceiveVerdict,
    SocketDispatch,
};
pub use op::{Completer, Op};
pub use provider::{
    ClientEventFn, NPI_WSK_INTERFACE_ID, ProviderConfig, WSK_PROVIDER_MODULE_ID, WskClientDispatch,
    WskNpi, WskProvider,
};
pub use registration::{WSK_INFINITE_WAIT, WSK_NO_WAIT, WskProviderNpi, WskRegistration};
pub use socket::{
    AF_INET, AF_INET6, Accepted, BasicRef, BasicSocket, Category, ConnectionRef, ConnectionSocket,
    Datagram, DatagramRef, DatagramSocket, Disconnect, Family, IPPROTO_TCP, IPPROTO_UDP, ListenRef,
    ListenSocket, SOCK_DGRAM, SOCK_STREAM, SockOpt, Socket, SocketControl, StreamRef, StreamSocket,
    Transfer, WSK_FLAG_BASIC_SOCKET, WSK_FLAG_CONNECTION_SOCKET, WSK_FLAG_DATAGRAM_SOCKET,
    WSK_FLAG_LISTEN_SOCKET, WSK_FLAG_STREAM_SOCKET,
};
pub use status::Status;
