//! Nothing outlives its owners: once the provider (or subsystem) and every socket are gone,
//! the I/O threads stop and every socket was closed.

use std::net::SocketAddr;
use std::time::{Duration, Instant};
use wsk::*;

fn io_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm"))
                .is_ok_and(|n| n.trim_end().starts_with("wsk-io"))
        })
        .count()
}

fn wait_no_io_threads() {
    let deadline = Instant::now() + Duration::from_secs(10);
    while io_threads() != 0 {
        assert!(
            Instant::now() < deadline,
            "{} I/O threads still running",
            io_threads()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn io_threads_stop_when_the_subsystem_and_its_sockets_are_gone() {
    let v4: SocketAddr = "127.0.0.1:0".parse().unwrap();
    {
        let wsk = Subsystem::new(2).unwrap();
        // Threads name themselves as they start.
        let deadline = Instant::now() + Duration::from_secs(10);
        while io_threads() != 2 {
            assert!(
                Instant::now() < deadline,
                "expected 2 I/O threads, saw {}",
                io_threads()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        let c = wsk.client();
        let l = c.listen_socket(Family::V4, None).unwrap();
        l.bind(v4).wait().unwrap();
        let acc = l.accept();
        let a = c
            .socket_connect(SOCK_STREAM, 0, v4, l.local_address().unwrap(), 0, None)
            .wait()
            .unwrap();
        let b = acc.wait().unwrap().socket;
        // Pending sends and receives left behind at teardown.
        let sends: Vec<_> = (0..16).map(|_| a.send(vec![0; 1 << 20])).collect();
        let _recv = a.receive(vec![0; 16]);
        drop(b.receive(vec![0; 1 << 16]).wait());
        drop(wsk);
        drop((a, b, l));
        drop(sends);
    }
    wait_no_io_threads();
    {
        let nmr = nmr::Registrar::new();
        let provider = WskProvider::start(&nmr, ProviderConfig::default()).unwrap();
        let server = echo::EchoServer::start(&nmr, v4).unwrap();
        let cfg = echo::LoadConfig {
            connections: 8,
            message_size: 1000,
        };
        let s = echo::run_load(
            &nmr,
            server.local_addr(),
            &cfg,
            echo::RunLimit {
                requests: Some(200),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(s.errors, 0);
        server.stop();
        let c = provider.counters();
        assert_eq!(c.sockets_opened, c.sockets_closed);
        provider.unload();
    }
    wait_no_io_threads();
}
