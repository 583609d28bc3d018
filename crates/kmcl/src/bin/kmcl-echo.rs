//! `kmcl-echo SOCKET_PATH`: a KMCL server that echoes.
//!
//! Listens on the Unix socket `SOCKET_PATH`. Every connection carries one channel (see
//! `PROTOCOL.md`): the server offers it, the peer opens it, and from then on every in-band
//! packet that requests a completion is answered with a completion carrying the same
//! payload (packets that request none are completed silently). When the peer closes or
//! dies, the channel is disabled and cleaned up; the server keeps listening.
//!
//! Set `RUST_LOG`-style filtering with `KMCL_ECHO_LOG=debug` (errors only by default).

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
    if let Err(e) = kmcl::echo::run(&path, |p| {
        eprintln!("kmcl-echo: listening on {}", p.display());
    }) {
        eprintln!(
            "kmcl-echo: cannot listen on {}: {e}",
            path.to_string_lossy()
        );
        std::process::exit(1);
    }
}
