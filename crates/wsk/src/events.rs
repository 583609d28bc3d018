//! Event callbacks (the client's socket dispatch tables) and event masks.
//!
//! Event callbacks are how the provider tells a client about something it did not ask for
//! with an operation: a connection arrived ([`ListenEvents::on_accept`]), data arrived
//! ([`ConnectionEvents::on_receive`], [`DatagramEvents::on_receive_from`]) or the peer
//! disconnected ([`ConnectionEvents::on_disconnect`]).
//!
//! * Every callback starts **disabled**; enable it per socket with
//!   [`EventMask`] through `enable_events`, or for all sockets of a client with
//!   `WSK_SET_STATIC_EVENT_CALLBACKS` (then they cannot be disabled).
//! * Callbacks run on a provider I/O thread and **must not block**: starting operations is
//!   fine, waiting for them is refused with [`crate::Error::WouldDeadlock`].
//! * A pending receive operation takes priority over the receive event.
//! * Closing a socket waits for its callbacks in progress (except when it is closed from
//!   inside its own callback).
//! * A callback (or completion routine) that panics is caught and logged; the I/O thread, the
//!   socket and the provider carry on (a panicking receive callback counts as `Accepted`).

use crate::socket::{Accepted, ConnectionRef, DatagramRef, ListenRef};
use std::net::SocketAddr;
use std::sync::Arc;

/// A set of WSK event callbacks, with the `WSK_EVENT_*` values of wsk.h.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct EventMask(pub u32);

impl EventMask {
    /// No events.
    pub const NONE: EventMask = EventMask(0);
    /// `WSK_EVENT_SEND_BACKLOG` (connection sockets; accepted but never raised here).
    pub const SEND_BACKLOG: EventMask = EventMask(0x0000_0010);
    /// `WSK_EVENT_RECEIVE` (connection sockets).
    pub const RECEIVE: EventMask = EventMask(0x0000_0040);
    /// `WSK_EVENT_DISCONNECT` (connection sockets).
    pub const DISCONNECT: EventMask = EventMask(0x0000_0080);
    /// `WSK_EVENT_RECEIVE_FROM` (datagram sockets).
    pub const RECEIVE_FROM: EventMask = EventMask(0x0000_0100);
    /// `WSK_EVENT_ACCEPT` (listening sockets).
    pub const ACCEPT: EventMask = EventMask(0x0000_0200);
    /// `WSK_EVENT_DISABLE`: with the bits above, disables them.
    pub const DISABLE: EventMask = EventMask(0x8000_0000);

    /// True if every bit of `other` is set.
    pub const fn contains(self, other: EventMask) -> bool {
        self.0 & other.0 == other.0
    }

    /// Union of two masks.
    pub const fn union(self, other: EventMask) -> EventMask {
        EventMask(self.0 | other.0)
    }
}

impl core::ops::BitOr for EventMask {
    type Output = EventMask;
    fn bitor(self, rhs: EventMask) -> EventMask {
        self.union(rhs)
    }
}

/// What a receive callback did with the data it was shown.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum ReceiveVerdict {
    /// The client consumed the data (`STATUS_SUCCESS`).
    #[default]
    Accepted,
    /// The client did not take the data (`STATUS_DATA_NOT_ACCEPTED`): the provider keeps it,
    /// stops raising receive events, and hands it to the next receive operations; events
    /// resume once it has been drained.
    NotAccepted,
}

/// How a connection ended, as reported by [`ConnectionEvents::on_disconnect`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum DisconnectKind {
    /// The peer shut down its sending side (FIN).
    Graceful,
    /// The connection was reset or failed.
    Abortive,
}

/// The client's event table for a listening socket (`WSK_CLIENT_LISTEN_DISPATCH`).
pub trait ListenEvents: Send + Sync + 'static {
    /// `WskAcceptEvent`: a connection was accepted. Keep `accepted.socket` to own it, or drop
    /// it to refuse (the provider then closes it abortively, like `STATUS_REQUEST_NOT_ACCEPTED`).
    fn on_accept(&self, listener: &ListenRef, accepted: Accepted);
}

/// The client's event table for a connection socket (`WSK_CLIENT_CONNECTION_DISPATCH`).
pub trait ConnectionEvents: Send + Sync + 'static {
    /// `WskReceiveEvent`: data arrived and no receive operation was pending.
    fn on_receive(&self, socket: &ConnectionRef, data: &[u8]) -> ReceiveVerdict {
        let _ = (socket, data);
        ReceiveVerdict::Accepted
    }

    /// `WskDisconnectEvent`: the peer disconnected.
    fn on_disconnect(&self, socket: &ConnectionRef, kind: DisconnectKind) {
        let _ = (socket, kind);
    }
}

/// The client's event table for a datagram socket (`WSK_CLIENT_DATAGRAM_DISPATCH`).
pub trait DatagramEvents: Send + Sync + 'static {
    /// `WskReceiveFromEvent`: a datagram arrived and no receive-from operation was pending.
    fn on_receive_from(&self, socket: &DatagramRef, data: &[u8], from: SocketAddr);
}

/// The event table given when a socket is created (the `Dispatch` argument of `WskSocket`).
#[derive(Clone, Default)]
pub enum SocketDispatch {
    /// No events (basic sockets, or clients that only use operations).
    #[default]
    None,
    /// Events of a listening socket.
    Listen(Arc<dyn ListenEvents>),
    /// Events of a connection socket.
    Connection(Arc<dyn ConnectionEvents>),
    /// Events of a datagram socket.
    Datagram(Arc<dyn DatagramEvents>),
    /// Events of a stream socket (`WSK_CLIENT_STREAM_DISPATCH`): the listen table for when
    /// it listens, the connection table for when it connects.
    Stream {
        /// Used once the socket listens.
        listen: Option<Arc<dyn ListenEvents>>,
        /// Used once the socket is connected.
        connection: Option<Arc<dyn ConnectionEvents>>,
    },
}

impl SocketDispatch {
    pub(crate) fn listen_events(&self) -> Option<Arc<dyn ListenEvents>> {
        match self {
            SocketDispatch::Listen(e)
            | SocketDispatch::Stream {
                listen: Some(e), ..
            } => Some(e.clone()),
            _ => None,
        }
    }

    pub(crate) fn connection_events(&self) -> Option<Arc<dyn ConnectionEvents>> {
        match self {
            SocketDispatch::Connection(e)
            | SocketDispatch::Stream {
                connection: Some(e),
                ..
            } => Some(e.clone()),
            _ => None,
        }
    }

    /// Whether this table may be given to a socket of `category`.
    pub(crate) fn fits(&self, category: crate::Category) -> bool {
        use crate::Category as C;
        matches!(
            (self, category),
            (SocketDispatch::None, _)
                | (SocketDispatch::Listen(_), C::Listen)
                | (SocketDispatch::Connection(_), C::Connection)
                | (SocketDispatch::Datagram(_), C::Datagram)
                | (SocketDispatch::Stream { .. }, C::Stream)
        )
    }
}

impl std::fmt::Debug for SocketDispatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SocketDispatch::None => "None",
            SocketDispatch::Listen(_) => "Listen(..)",
            SocketDispatch::Connection(_) => "Connection(..)",
            SocketDispatch::Datagram(_) => "Datagram(..)",
            SocketDispatch::Stream { .. } => "Stream(..)",
        })
    }
}
