//! Transports: how two endpoints find each other, share ring memory and signal.
//!
//! A [`Connector`] is handed to [`crate::Channel::allocate`]. When the channel is enabled,
//! its dispatcher thread runs the transport's handshake (offer/open), then moves packets
//! through the two rings and waits on the transport's signal.
//!
//! * [`Connector::local_pair`]: both endpoints in this process; rings on the heap, signals
//!   through [`crate::event::Event`].
//! * [`Connector::connect_unix`] / [`UnixListener`]: two processes; rings in a memfd shared
//!   mapping, signals through eventfds, a control protocol over a Unix socket
//!   (`PROTOCOL.md`).

use std::fmt;

use crate::Error;
use crate::gpadl::{GpadlBuffer, GpadlFlags, GpadlHandle, Gpadls};
use crate::lifecycle::Role;
use crate::shmem::RingView;
use crate::sync::Arc;

pub(crate) mod local;
pub mod unix;

pub use unix::UnixListener;

/// Ring geometry requested by the client (the side that supplies the memory).
#[derive(Debug, Clone, Copy)]
pub(crate) struct OpenParams {
    pub(crate) role: Role,
    /// Data pages of the client→server ring.
    pub(crate) client_to_server_pages: u32,
    /// Data pages of the server→client ring.
    pub(crate) server_to_client_pages: u32,
}

/// The two rings of an open channel, from this endpoint's point of view.
#[derive(Debug)]
pub(crate) struct Established {
    pub(crate) outgoing: RingView,
    pub(crate) incoming: RingView,
}

/// Why [`Link::wait`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wake {
    /// A signal from the peer, a local kick, or both.
    Events,
    /// The peer closed or died.
    PeerGone,
}

/// One endpoint's side of a transport.
pub(crate) trait Link: Send + Sync + fmt::Debug {
    /// Runs the open handshake. Blocks until it completes, the peer goes away, or
    /// `cancelled()` returns true after a [`Link::kick`].
    fn establish(
        &self,
        params: &OpenParams,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Established, Error>;
    /// Signals the peer (its ring has data, or ours has space).
    fn signal_peer(&self);
    /// Wakes this endpoint's own [`Link::wait`].
    fn kick(&self);
    /// Blocks until signalled, kicked, or the peer is gone.
    fn wait(&self) -> Wake;
    /// Tells the peer this endpoint is closing; idempotent. Disconnects [`Link::gpadls`].
    fn close(&self);
    /// This endpoint's GPADL tables; the transport records the peer's GPADL messages in
    /// them and disconnects them when the peer goes away.
    fn gpadls(&self) -> &Arc<Gpadls>;
    /// Client: offers GPADL `handle` (registered as pending in [`Link::gpadls`]) to the
    /// peer. Returns once the answer is recorded there, or the peer is gone, or at once if
    /// the answer will be delivered by the dispatcher (`on_dispatcher` false: the caller is
    /// not the dispatcher thread and waits on the tables).
    fn create_gpadl(
        &self,
        handle: GpadlHandle,
        buffer: &GpadlBuffer,
        flags: GpadlFlags,
        on_dispatcher: bool,
    ) -> Result<(), Error>;
    /// Client: asks the peer to tear down GPADL `handle`; the same waiting rules.
    fn teardown_gpadl(&self, handle: GpadlHandle, on_dispatcher: bool) -> Result<(), Error>;
    /// Server: a teardown the client is waiting for completed (the GPADL was unmapped).
    fn gpadl_torn_down(&self, handle: GpadlHandle);
    /// Handles pending control messages without blocking (the dispatcher calls it now and
    /// then while traffic keeps it from sleeping in [`Link::wait`]). `Wake::PeerGone` if
    /// the peer went away.
    fn service_control(&self) -> Wake {
        Wake::Events
    }
    /// Short name for logs.
    fn kind(&self) -> &'static str;
}

/// One end of a transport, to be given to [`crate::Channel::allocate`].
#[derive(Debug)]
pub struct Connector {
    pub(crate) link: Box<dyn Link>,
    /// The role the transport dictates, if any (an accepted Unix connection is a server).
    pub(crate) role: Option<Role>,
}

impl Connector {
    /// Two connected endpoints in this process. One must be allocated as a client and the
    /// other as a server.
    pub fn local_pair() -> (Connector, Connector) {
        let (a, b) = local::pair();
        (
            Connector {
                link: Box::new(a),
                role: None,
            },
            Connector {
                link: Box::new(b),
                role: None,
            },
        )
    }

    /// Connects to a server (for example `kmcl-echo`) listening on the Unix socket `path`.
    /// The channel using it must be a client. The handshake runs when the channel is enabled.
    pub fn connect_unix(path: impl AsRef<std::path::Path>) -> Result<Connector, Error> {
        let link = unix::UnixLink::connect(path.as_ref())?;
        Ok(Connector {
            link: Box::new(link),
            role: Some(Role::Client),
        })
    }

    /// Transport name (`"local"` or `"unix"`).
    pub fn kind(&self) -> &'static str {
        self.link.kind()
    }
}
