//! The echo server behind `kmcl-echo`: every in-band packet that requests a completion is
//! answered with a completion carrying the same payload, one channel per connection, until
//! the peer closes. A library module so that other programs (the `nmr` command) can serve
//! it too.

#![forbid(unsafe_code)]

use std::path::Path;
use std::sync::mpsc;

use crate::{Channel, ChannelHandle, Connector, Error, Role, StateCallbacks, UnixListener};

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
    channel.set_process_packet_callbacks(
        |_ch, packet| {
            let payload = packet.payload();
            if let Err(e) = packet.complete(payload) {
                tracing::warn!(error = %e, "could not send the echo");
            }
        },
        None::<fn(&ChannelHandle, u32)>,
    )?;
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
