//! Two endpoints in one process: heap rings, [`Event`] signals, a rendezvous for the
//! offer/open handshake.

#![forbid(unsafe_code)]

use crate::sync::{Arc, Mutex};

use super::{Established, Link, OpenParams, Wake};
use crate::Error;
use crate::event::{Event, GONE, KICK, SIGNAL};
use crate::gpadl::{GpadlBuffer, GpadlFlags, GpadlHandle, Gpadls, Teardown};
use crate::lifecycle::Role;
use crate::shmem::{PAGE_SIZE, Region, RingView};
use crate::sync::lock;

#[derive(Debug, Default)]
struct Rendezvous {
    roles: [Option<Role>; 2],
    /// (client→server, server→client) rings, once the client opened.
    rings: Option<(RingView, RingView)>,
    closed: [bool; 2],
}

/// One side of an in-process pair.
#[derive(Debug)]
pub(crate) struct LocalLink {
    side: usize,
    shared: Arc<Mutex<Rendezvous>>,
    events: [Arc<Event>; 2],
    /// Each side's GPADL tables: a GPADL message is a direct call into the peer's.
    gpadls: [Arc<Gpadls>; 2],
}

pub(crate) fn pair() -> (LocalLink, LocalLink) {
    let shared = Arc::new(Mutex::new(Rendezvous::default()));
    let events = [Arc::new(Event::new()), Arc::new(Event::new())];
    let gpadls = [Arc::new(Gpadls::new()), Arc::new(Gpadls::new())];
    (
        LocalLink {
            side: 0,
            shared: shared.clone(),
            events: events.clone(),
            gpadls: gpadls.clone(),
        },
        LocalLink {
            side: 1,
            shared,
            events,
            gpadls,
        },
    )
}

impl LocalLink {
    fn mine(&self) -> &Event {
        &self.events[self.side]
    }
    fn peer(&self) -> &Event {
        &self.events[1 - self.side]
    }
    fn peer_gpadls(&self) -> &Gpadls {
        &self.gpadls[1 - self.side]
    }
}

impl Link for LocalLink {
    fn establish(
        &self,
        params: &OpenParams,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Established, Error> {
        {
            let mut r = lock(&self.shared);
            r.roles[self.side] = Some(params.role);
        }
        self.peer().raise(SIGNAL);
        loop {
            {
                let mut r = lock(&self.shared);
                if r.closed[1 - self.side] {
                    return Err(Error::DeviceRemoved);
                }
                if let Some(peer_role) = r.roles[1 - self.side] {
                    if peer_role == params.role {
                        return Err(Error::InvalidArgument(
                            "both endpoints of a local pair have the same role",
                        ));
                    }
                    match params.role {
                        Role::Client => {
                            // The client supplies the memory: both rings in one region, like a GPADL.
                            let c2s = params.client_to_server_pages;
                            let s2c = params.server_to_client_pages;
                            let len = (c2s as usize + s2c as usize + 2) * PAGE_SIZE;
                            let region = Region::heap(len)?;
                            let out = RingView::new(region.clone(), 0, c2s)?;
                            let inc = RingView::new(region, (c2s as usize + 1) * PAGE_SIZE, s2c)?;
                            r.rings = Some((out.clone(), inc.clone()));
                            drop(r);
                            self.peer().raise(SIGNAL);
                            return Ok(Established {
                                outgoing: out,
                                incoming: inc,
                            });
                        }
                        Role::Server => {
                            if let Some((c2s, s2c)) = r.rings.clone() {
                                return Ok(Established {
                                    outgoing: s2c,
                                    incoming: c2s,
                                });
                            }
                        }
                    }
                }
            }
            if cancelled() {
                return Err(Error::Cancelled);
            }
            if self.mine().wait() & GONE != 0 {
                return Err(Error::DeviceRemoved);
            }
        }
    }

    fn signal_peer(&self) {
        self.peer().raise(SIGNAL);
    }

    fn kick(&self) {
        self.mine().raise(KICK);
    }

    fn wait(&self) -> Wake {
        if self.mine().wait() & GONE != 0 {
            Wake::PeerGone
        } else {
            Wake::Events
        }
    }

    fn close(&self) {
        let mut r = lock(&self.shared);
        if !r.closed[self.side] {
            r.closed[self.side] = true;
            drop(r);
            self.gpadls[0].disconnect();
            self.gpadls[1].disconnect();
            self.peer().raise(GONE);
        }
    }

    fn gpadls(&self) -> &Arc<Gpadls> {
        &self.gpadls[self.side]
    }

    fn create_gpadl(
        &self,
        handle: GpadlHandle,
        buffer: &GpadlBuffer,
        flags: GpadlFlags,
        _on_dispatcher: bool,
    ) -> Result<(), Error> {
        // The "server's confirmation" is the insertion into its table.
        let status =
            match self
                .peer_gpadls()
                .offer(handle.raw(), buffer.region().clone(), flags.read_only)
            {
                Ok(()) => 0,
                Err(Error::DeviceRemoved) => return Err(Error::DeviceRemoved),
                Err(_) => super::unix::STATUS_INVALID_PARAMETER,
            };
        self.gpadls().finish_create(handle.raw(), status);
        Ok(())
    }

    fn teardown_gpadl(&self, handle: GpadlHandle, _on_dispatcher: bool) -> Result<(), Error> {
        if self.peer_gpadls().request_teardown(handle.raw()) == Teardown::Done {
            self.gpadls().finish_delete(handle.raw());
        }
        Ok(())
    }

    fn gpadl_torn_down(&self, handle: GpadlHandle) {
        self.peer_gpadls().finish_delete(handle.raw());
    }

    fn kind(&self) -> &'static str {
        "local"
    }
}

impl Drop for LocalLink {
    fn drop(&mut self) {
        self.close();
    }
}
