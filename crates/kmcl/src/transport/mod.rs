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
use crate::lifecycle::Role;
use crate::shmem::RingView;

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
    /// Tells the peer this endpoint is closing; idempotent.
    fn close(&self);
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
