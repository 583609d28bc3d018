//! `wsk-echo`: the WSK subsystem as an NMR provider, an echo server and a load client as WSK
//! applications on the same registrar, over loopback. Prints a summary.
//!
//! ```text
//! cargo run -p wsk --release --example wsk-echo -- [--seconds N] [--connections N] [--size BYTES] [--ipv6]
//! ```

use std::time::Duration;
use wsk::echo::{EchoServer, LoadClient, LoadConfig, RunLimit};
use wsk::{ProviderConfig, WskProvider};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut seconds = 2.0f64;
    let mut cfg = LoadConfig {
        connections: 16,
        message_size: 64,
    };
    let mut bind = "127.0.0.1:0";
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--seconds" => seconds = val()?.parse()?,
            "--connections" => cfg.connections = val()?.parse()?,
            "--size" => cfg.message_size = val()?.parse()?,
            "--ipv6" => bind = "[::1]:0",
            "-h" | "--help" => {
                println!("usage: wsk-echo [--seconds N] [--connections N] [--size BYTES] [--ipv6]");
                return Ok(());
            }
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let seconds = seconds.clamp(0.1, 60.0);

    let nmr = nmr::Registrar::new();
    let provider = WskProvider::start(&nmr, ProviderConfig::default())?;
    println!(
        "provider  : WSK subsystem registered for NPI {}",
        wsk::NPI_WSK_INTERFACE_ID
    );
    let server = EchoServer::start(&nmr, bind.parse()?)?;
    println!(
        "server    : echo application listening on {}",
        server.local_addr()
    );
    let client = LoadClient::connect(&nmr, server.local_addr(), cfg)?;
    println!(
        "client    : {} connections, {}-byte requests, {seconds}s",
        cfg.connections, cfg.message_size
    );
    println!(
        "registrar : {} registration(s), {} binding(s)",
        nmr.snapshot().registrations.len(),
        nmr.snapshot().bindings.len()
    );

    let stats = client.run(RunLimit {
        duration: Some(Duration::from_secs_f64(seconds)),
        ..Default::default()
    });
    client.close();
    let echo = server.stop();
    let counters = provider.counters();
    provider.unload();

    println!();
    println!(
        "requests  : {} ({:.0}/s)",
        stats.requests,
        stats.requests_per_sec()
    );
    println!(
        "bytes     : {} sent, {} echoed ({:.1} MiB/s)",
        stats.bytes_sent,
        stats.bytes_echoed,
        stats.echoed_bytes_per_sec() / (1024.0 * 1024.0)
    );
    println!("errors    : {}", stats.errors);
    println!(
        "server    : {} connections accepted, {} bytes echoed",
        echo.connections, echo.bytes_echoed
    );
    println!(
        "provider  : {} sockets opened, {} closed, {} reactor wakeups for {} events",
        counters.sockets_opened,
        counters.sockets_closed,
        counters.reactor_wakeups,
        counters.reactor_events
    );
    println!(
        "registrar : {} binding(s) left after unload",
        nmr.snapshot().bindings.len()
    );
    if stats.errors != 0 {
        return Err("load run saw errors".into());
    }
    Ok(())
}
