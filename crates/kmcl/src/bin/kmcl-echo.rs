//! `kmcl-echo SOCKET_PATH`: a KMCL server that echoes.
//!
//! Listens on the Unix socket `SOCKET_PATH`. Every connection carries one channel (see
//! `PROTOCOL.md`): the server offers it, the peer opens it, and from then on every in-band
//! packet that requests a completion is answered with a completion carrying the same
//! payload (packets that request none are completed silently). When the peer closes or
//! dies, the channel is disabled and cleaned up; the server keeps listening.
//!
//! Set `RUST_LOG`-style filtering with `KMCL_ECHO_LOG=debug` (errors only by default).

use std::sync::mpsc;

use kmcl::{Channel, Role, StateCallbacks, UnixListener};

fn serve(connector: kmcl::Connector, id: u64) -> Result<(), kmcl::Error> {
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
        None::<fn(&kmcl::ChannelHandle, u32)>,
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

fn main() {
    let filter = std::env::var("KMCL_ECHO_LOG").unwrap_or_else(|_| "error".into());
    let max_level = match filter.as_str() {
        "trace" => tracing::Level::TRACE,
        "debug" => tracing::Level::DEBUG,
        "info" => tracing::Level::INFO,
        "warn" => tracing::Level::WARN,
        _ => tracing::Level::ERROR,
    };
    tracing_subscriber::fmt()
        .with_max_level(max_level)
        .with_writer(std::io::stderr)
        .init();

    let Some(path) = std::env::args_os().nth(1) else {
        eprintln!("usage: kmcl-echo SOCKET_PATH");
        std::process::exit(2);
    };
    let listener = match UnixListener::bind(&path) {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "kmcl-echo: cannot listen on {}: {e}",
                path.to_string_lossy()
            );
            std::process::exit(1);
        }
    };
    eprintln!("kmcl-echo: listening on {}", listener.path().display());
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
