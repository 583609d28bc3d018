//! The echo server behind `kmcl-echo`: every in-band packet that requests a completion is
//! answered with a completion carrying the same payload, one channel per connection, until
//! the peer closes. A library module so that other programs (the `nmr` command) can serve
//! it too.
//!
//! GPADLs and external data:
//! * a GPA-direct packet (external data) is answered with its payload followed by the
//!   bytes of its external data; if the external data does not validate, the packet is
//!   failed (no answer; the server's incoming queue stops);
//! * the in-band commands [`MAP_COMMAND`] and [`UNMAP_COMMAND`], each followed by a GPADL
//!   handle (`u32`, little-endian), map that GPADL for reading and hold the mapping, or
//!   drop it; the answer is `ok`, or the error's text. They let a client observe
//!   `delete_gpadl` blocking while the server has the GPADL mapped.
//!
//! An answer longer than the channel's maximum packet (a large external buffer echoed
//! back) cannot be sent; the answer is then a short text saying so, so the client's
//! transaction still completes.

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::path::Path;
use std::sync::mpsc;

use crate::{
    Channel, ChannelHandle, Connector, Error, GpadlHandle, IncomingPacket, MapAccess, Role,
    StateCallbacks, UnixListener,
};

/// In-band command: map the GPADL whose handle follows (4 bytes, little-endian).
pub const MAP_COMMAND: &[u8] = b"kmcl-echo:map ";
/// In-band command: unmap the GPADL whose handle follows.
pub const UNMAP_COMMAND: &[u8] = b"kmcl-echo:unmap ";

fn command_handle(payload: &[u8], command: &[u8]) -> Option<Result<GpadlHandle, Error>> {
    let rest = payload.strip_prefix(command)?;
    let raw = <[u8; 4]>::try_from(rest)
        .map(u32::from_le_bytes)
        .map_err(|_| Error::InvalidArgument("a GPADL handle is 4 bytes"));
    Some(raw.and_then(|r| GpadlHandle::from_raw(r).ok_or(Error::UnknownGpadl(0))))
}

/// Answers one packet (see the module documentation).
fn answer(
    ch: &ChannelHandle,
    packet: IncomingPacket<'_>,
    mappings: &mut HashMap<GpadlHandle, crate::GpadlMapping>,
) {
    let payload = packet.payload();
    let reply = if packet.has_external_data() {
        match packet.external_data() {
            Ok(data) => {
                let mut r = payload.to_vec();
                r.extend_from_slice(&data.to_vec());
                r
            }
            Err(e) => {
                tracing::warn!(error = %e, "external data refused; packet failed");
                let _ = packet.complete(&[]);
                return;
            }
        }
    } else if let Some(h) = command_handle(payload, MAP_COMMAND) {
        match h.and_then(|h| Ok((h, ch.map_gpadl(h, MapAccess::Read)?))) {
            Ok((h, m)) => {
                mappings.insert(h, m);
                b"ok".to_vec()
            }
            Err(e) => e.to_string().into_bytes(),
        }
    } else if let Some(h) = command_handle(payload, UNMAP_COMMAND) {
        match h.and_then(|h| mappings.remove(&h).ok_or(Error::UnknownGpadl(h.raw()))) {
            Ok(m) => {
                m.unmap();
                b"ok".to_vec()
            }
            Err(e) => e.to_string().into_bytes(),
        }
    } else {
        payload.to_vec()
    };
    // An echo longer than the channel's maximum packet cannot be sent, and the client would
    // wait for it until the channel closes: answer with the reason instead.
    let max = packet.max_response_len();
    let reply = if reply.len() > max {
        tracing::warn!(
            len = reply.len(),
            max,
            "echo larger than the maximum packet; refused"
        );
        let mut why = format!(
            "echo refused: {} bytes exceed the channel's maximum packet of {max} bytes",
            reply.len()
        )
        .into_bytes();
        why.truncate(max);
        why
    } else {
        reply
    };
    if let Err(e) = packet.complete(&reply) {
        tracing::warn!(error = %e, "could not send the echo");
    }
}

/// The echo server's process-packet callback (see the module documentation), with its own
/// table of held mappings: install it on any server channel with
/// [`Channel::set_process_packet_callbacks`].
pub fn handler() -> impl FnMut(&ChannelHandle, IncomingPacket<'_>) + Send + 'static {
    let mut mappings = HashMap::new();
    move |ch, packet| answer(ch, packet, &mut mappings)
}

/// Serves one channel on `connector` until the peer closes it, then disables and cleans it
/// up.
///
/// # Errors
/// Allocation or lifecycle errors of the channel.
pub fn serve(connector: Connector, id: u64) -> Result<(), Error> {
    let channel = Channel::allocate(Role::Server, connector)?;
    channel.set_friendly_name(&format!("echo-{id}"))?;
    // The client sizes the rings; accept any packet that fits them.
    channel.set_max_packet_size(512 * 1024 - 64)?;
    channel.set_process_packet_callbacks(handler(), None::<fn(&ChannelHandle, u32)>)?;
    let (closed_tx, closed_rx) = mpsc::channel();
    channel.set_state_change_callbacks(StateCallbacks::new().on_closed(move |_| {
        let _ = closed_tx.send(());
    }))?;
    channel.enable()?;
    channel.start()?;
    // Until the peer closes (or the handshake fails, which also ends in Closed or in the
    // callbacks being dropped).
    let _ = closed_rx.recv();
    let counters = channel.counters();
    tracing::info!(id, ?counters, "peer closed");
    channel.disable()?;
    channel.cleanup()
}

/// Listens on the Unix socket `path` and serves every connection on its own thread, until
/// the process ends. `on_listening` runs once the socket is bound.
///
/// # Errors
/// Only when the socket cannot be bound; later failures are logged and the server goes on.
pub fn run(path: impl AsRef<Path>, on_listening: impl FnOnce(&Path)) -> Result<(), Error> {
    let listener = UnixListener::bind(path)?;
    on_listening(listener.path());
    let mut next_id = 0u64;
    loop {
        match listener.accept() {
            Ok(connector) => {
                next_id += 1;
                let id = next_id;
                let spawned = std::thread::Builder::new()
                    .name(format!("echo-{id}"))
                    .spawn(move || {
                        if let Err(e) = serve(connector, id) {
                            tracing::error!(id, error = %e, "channel failed");
                        }
                    });
                if let Err(e) = spawned {
                    tracing::error!(error = %e, "cannot spawn a channel thread");
                }
            }
            Err(e) => tracing::error!(error = %e, "accept failed"),
        }
    }
}
