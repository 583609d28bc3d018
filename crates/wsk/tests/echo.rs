//! The echo server and load client, both WSK applications on a registrar, over loopback.

use nmr::Registrar;
use std::time::Duration;
use wsk::echo::{EchoServer, LoadClient, LoadConfig, RunLimit, run_load};
use wsk::{ProviderConfig, WskProvider};

#[test]
fn echo_round_trips_over_ipv4_and_ipv6_with_many_connections() {
    let nmr = Registrar::new();
    let provider = WskProvider::start(&nmr, ProviderConfig::default()).unwrap();
    for bind in ["127.0.0.1:0", "[::1]:0"] {
        let server = EchoServer::start(&nmr, bind.parse().unwrap()).unwrap();
        let cfg = LoadConfig {
            connections: 64,
            message_size: 100,
        };
        let stats = run_load(
            &nmr,
            server.local_addr(),
            &cfg,
            RunLimit {
                requests: Some(2_000),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(stats.errors, 0);
        assert_eq!(stats.connections, 64);
        assert!(stats.requests >= 2_000);
        assert_eq!(stats.bytes_echoed, stats.requests * 100);
        let s = server.stop();
        assert_eq!(s.connections, 64);
        assert_eq!(s.bytes_echoed, stats.bytes_echoed);
    }
    let c = provider.counters();
    assert_eq!(c.sockets_opened, c.sockets_closed);
    provider.unload();
}

#[test]
fn large_messages_echo_intact_and_persistent_clients_run_repeatedly() {
    let nmr = Registrar::new();
    let provider = WskProvider::start(&nmr, ProviderConfig::default()).unwrap();
    let server = EchoServer::start(&nmr, "127.0.0.1:0".parse().unwrap()).unwrap();
    let client = LoadClient::connect(
        &nmr,
        server.local_addr(),
        LoadConfig {
            connections: 4,
            message_size: 1 << 20,
        },
    )
    .unwrap();
    for _ in 0..3 {
        let s = client.run(RunLimit {
            bytes: Some(16 << 20),
            duration: Some(Duration::from_secs(20)),
            ..Default::default()
        });
        assert_eq!(s.errors, 0);
        assert!(s.bytes_echoed >= 16 << 20, "{s:?}");
    }
    client.close();
    // The server learns of each close through its disconnect event (or a failed receive).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while server.stats().active != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "server still has {:?}",
            server.stats()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    server.stop();
    provider.unload();
}

#[test]
fn the_provider_can_leave_while_echo_applications_run() {
    let nmr = Registrar::new();
    let provider = WskProvider::start(&nmr, ProviderConfig::default()).unwrap();
    let server = EchoServer::start(&nmr, "127.0.0.1:0".parse().unwrap()).unwrap();
    let client = LoadClient::connect(
        &nmr,
        server.local_addr(),
        LoadConfig {
            connections: 8,
            message_size: 64,
        },
    )
    .unwrap();
    assert_eq!(
        client
            .run(RunLimit {
                requests: Some(500),
                ..Default::default()
            })
            .errors,
        0
    );
    let dereg = provider.deregister();
    // Detach pends: both applications hold captures and sockets.
    assert!(!dereg.is_complete());
    // The applications shut down (close sockets, release captures, deregister).
    client.close();
    server.stop();
    dereg
        .wait_timeout(Duration::from_secs(10))
        .expect("provider deregistration completes");
    assert!(nmr.snapshot().bindings.is_empty());
}

#[test]
fn echo_server_back_pressure_keeps_the_stream_intact() {
    use wsk::{IPPROTO_TCP, SOCK_STREAM, WSK_NO_WAIT, WskClientDispatch, WskRegistration};
    let nmr = Registrar::new();
    let provider = WskProvider::start(&nmr, ProviderConfig::default()).unwrap();
    let server = EchoServer::start(&nmr, "127.0.0.1:0".parse().unwrap()).unwrap();
    let reg =
        WskRegistration::register(&nmr, WskClientDispatch::new(wsk::npi::WSK_VERSION_1_0)).unwrap();
    let npi = reg.capture_provider_npi(WSK_NO_WAIT).unwrap();
    let s = npi
        .socket_connect(
            SOCK_STREAM,
            IPPROTO_TCP,
            "127.0.0.1:0".parse().unwrap(),
            server.local_addr(),
            0,
            None,
        )
        .wait()
        .unwrap();
    // Write far more than socket buffers plus the server's send backlog, reading nothing yet:
    // the server must stop taking data (DATA_NOT_ACCEPTED) and resume later, in order.
    let total = 24usize << 20;
    let data: Vec<u8> = (0..total)
        .map(|i| (i % 251) as u8 ^ (i >> 16) as u8)
        .collect();
    let sends: Vec<_> = data.chunks(256 << 10).map(|c| s.send(c.to_vec())).collect();
    std::thread::sleep(Duration::from_millis(100));
    let mut got = Vec::with_capacity(total);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while got.len() < total {
        assert!(
            std::time::Instant::now() < deadline,
            "echo stalled at {} of {total} bytes",
            got.len()
        );
        let t = s
            .receive(vec![0; 1 << 20])
            .wait_timeout(Duration::from_secs(10))
            .expect("receive completes")
            .unwrap();
        assert!(t.bytes > 0);
        got.extend_from_slice(t.data());
    }
    for op in sends {
        op.wait().unwrap();
    }
    assert!(got == data, "echoed stream differs");
    assert!(
        server.stats().pauses > 0,
        "the server never had to refuse data: {:?}",
        server.stats()
    );
    drop(s);
    drop(npi);
    reg.deregister();
    server.stop();
    provider.unload();
}
