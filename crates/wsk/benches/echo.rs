//! Echo over loopback: WSK applications (echo server + load client on the WSK provider)
//! against a plain mio echo server and client measured in the same run.
//!
//! `cargo bench -p wsk --bench echo`
//!
//! * `requests/*`: 16 connections, 64-byte request/response round trips (one element = one
//!   round trip).
//! * `throughput/*`: 4 connections, 256 KiB requests echoed back (bytes = echoed bytes).

use criterion::{Criterion, Throughput, criterion_main};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use wsk::echo::{EchoServer, LoadClient, LoadConfig, RunLimit};
use wsk::{ProviderConfig, WskProvider};

// ---------------- plain mio baseline ----------------

struct MioServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MioServer {
    fn start() -> MioServer {
        let mut listener = TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut poll = Poll::new().unwrap();
            poll.registry()
                .register(&mut listener, Token(usize::MAX), Interest::READABLE)
                .unwrap();
            // Per connection: the stream, and bytes owed to it (`out[off..]`).
            let mut conns: slab::Slab<(TcpStream, Vec<u8>, usize)> = slab::Slab::new();
            let mut events = Events::with_capacity(256);
            let mut buf = vec![0u8; 64 << 10];
            while !stop2.load(Ordering::Relaxed) {
                poll.poll(&mut events, Some(Duration::from_millis(50)))
                    .unwrap();
                for ev in events.iter() {
                    if ev.token() == Token(usize::MAX) {
                        while let Ok((mut s, _)) = listener.accept() {
                            s.set_nodelay(true).unwrap();
                            let e = conns.vacant_entry();
                            poll.registry()
                                .register(
                                    &mut s,
                                    Token(e.key()),
                                    Interest::READABLE | Interest::WRITABLE,
                                )
                                .unwrap();
                            e.insert((s, Vec::new(), 0));
                        }
                        continue;
                    }
                    let k = ev.token().0;
                    let Some((s, out, off)) = conns.get_mut(k) else {
                        continue;
                    };
                    let mut closed = false;
                    // Flush what is owed; only then take more data (back-pressure).
                    loop {
                        if *off < out.len() {
                            match s.write(&out[*off..]) {
                                Ok(n) => {
                                    *off += n;
                                    continue;
                                }
                                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                                Err(_) => {
                                    closed = true;
                                    break;
                                }
                            }
                        }
                        out.clear();
                        *off = 0;
                        match s.read(&mut buf) {
                            Ok(0) => {
                                closed = true;
                                break;
                            }
                            Ok(n) => match s.write(&buf[..n]) {
                                Ok(w) => out.extend_from_slice(&buf[w..n]),
                                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                                    out.extend_from_slice(&buf[..n])
                                }
                                Err(_) => {
                                    closed = true;
                                    break;
                                }
                            },
                            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                            Err(_) => {
                                closed = true;
                                break;
                            }
                        }
                    }
                    if closed {
                        let (mut s, _, _) = conns.remove(k);
                        let _ = poll.registry().deregister(&mut s);
                    }
                }
            }
        });
        MioServer {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for MioServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

struct MioConn {
    s: TcpStream,
    msg: Vec<u8>,
    sent: usize,
    got: usize,
    busy: bool,
}

struct MioClient {
    poll: Poll,
    conns: Vec<MioConn>,
    buf: Vec<u8>,
}

impl MioClient {
    fn connect(addr: SocketAddr, n: usize, size: usize) -> MioClient {
        let poll = Poll::new().unwrap();
        let mut conns = Vec::new();
        for i in 0..n {
            let std = std::net::TcpStream::connect(addr).unwrap();
            std.set_nodelay(true).unwrap();
            std.set_nonblocking(true).unwrap();
            let mut s = TcpStream::from_std(std);
            poll.registry()
                .register(&mut s, Token(i), Interest::READABLE | Interest::WRITABLE)
                .unwrap();
            conns.push(MioConn {
                s,
                msg: vec![(i % 251) as u8 + 1; size],
                sent: 0,
                got: 0,
                busy: false,
            });
        }
        MioClient {
            poll,
            conns,
            buf: vec![0; 256 << 10],
        }
    }

    fn pump(c: &mut MioConn, buf: &mut [u8], done: &mut u64, issued: &mut u64, target: u64) {
        loop {
            if c.busy && c.sent < c.msg.len() {
                match c.s.write(&c.msg[c.sent..]) {
                    Ok(n) => {
                        c.sent += n;
                        continue;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(e) => panic!("{e}"),
                }
            }
            if !c.busy {
                return;
            }
            match c.s.read(buf) {
                Ok(0) => panic!("server closed"),
                Ok(n) => {
                    assert!(buf[..n].iter().all(|&b| b == c.msg[0]));
                    c.got += n;
                    if c.got == c.msg.len() {
                        *done += 1;
                        c.busy = false;
                        if *issued < target {
                            *issued += 1;
                            c.busy = true;
                            c.sent = 0;
                            c.got = 0;
                        }
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) => panic!("{e}"),
            }
        }
    }

    /// Run `target` round trips over all connections.
    fn run(&mut self, target: u64) -> Duration {
        let start = Instant::now();
        let (mut done, mut issued) = (0u64, 0u64);
        for c in &mut self.conns {
            if issued < target {
                issued += 1;
                c.busy = true;
                c.sent = 0;
                c.got = 0;
            }
        }
        for c in &mut self.conns {
            Self::pump(c, &mut self.buf, &mut done, &mut issued, target);
        }
        let mut events = Events::with_capacity(256);
        while done < issued {
            self.poll
                .poll(&mut events, Some(Duration::from_secs(5)))
                .unwrap();
            for ev in events.iter() {
                let c = &mut self.conns[ev.token().0];
                Self::pump(c, &mut self.buf, &mut done, &mut issued, target);
            }
        }
        start.elapsed()
    }
}

// ---------------- benchmarks ----------------

fn bench_pair(
    c: &mut Criterion,
    group: &str,
    connections: usize,
    size: usize,
    throughput: Throughput,
) {
    let mut g = c.benchmark_group(group);
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    g.throughput(throughput);

    {
        let server = MioServer::start();
        let mut client = MioClient::connect(server.addr, connections, size);
        g.bench_function("mio", |b| b.iter_custom(|iters| client.run(iters)));
        drop(client);
        drop(server);
    }
    {
        let nmr = nmr::Registrar::new();
        let provider = WskProvider::start(&nmr, ProviderConfig::default()).unwrap();
        let server = EchoServer::start(&nmr, "127.0.0.1:0".parse().unwrap()).unwrap();
        let client = LoadClient::connect(
            &nmr,
            server.local_addr(),
            LoadConfig {
                connections,
                message_size: size,
            },
        )
        .unwrap();
        g.bench_function("wsk", |b| {
            b.iter_custom(|iters| {
                let s = client.run(RunLimit {
                    requests: Some(iters),
                    ..Default::default()
                });
                assert_eq!(s.errors, 0);
                // Normalise the small overshoot (connections finishing their last round trip).
                s.elapsed.mul_f64(iters as f64 / s.requests.max(1) as f64)
            })
        });
        client.close();
        server.stop();
        provider.unload();
    }
    g.finish();
}

fn requests(c: &mut Criterion) {
    bench_pair(c, "requests", 16, 64, Throughput::Elements(1));
}

fn throughput(c: &mut Criterion) {
    bench_pair(c, "throughput", 4, 256 << 10, Throughput::Bytes(256 << 10));
}

/// CPU time used so far by every thread of this process, in ns (`/proc/self/task/*/schedstat`).
fn cpu_ns() -> u64 {
    let mut total = 0;
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for t in tasks.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("schedstat")) {
                total += s
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    total
}

fn median(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

/// Interleaved A/B rounds in one process: the median per-round ratio is robust to the load
/// drifting on a shared machine (criterion measures the two functions seconds apart). Also
/// reports CPU time per round trip (all threads of the process), which other processes on
/// the machine disturb far less than wall-clock time.
fn interleaved(name: &str, connections: usize, size: usize, requests: u64) {
    let server = MioServer::start();
    let mut mio_client = MioClient::connect(server.addr, connections, size);
    let nmr = nmr::Registrar::new();
    let provider = WskProvider::start(&nmr, ProviderConfig::default()).unwrap();
    let echo = EchoServer::start(&nmr, "127.0.0.1:0".parse().unwrap()).unwrap();
    let client = LoadClient::connect(
        &nmr,
        echo.local_addr(),
        LoadConfig {
            connections,
            message_size: size,
        },
    )
    .unwrap();
    let (mut wall, mut cpu) = (Vec::new(), Vec::new());
    for _ in 0..11 {
        let c0 = cpu_ns();
        let m = mio_client.run(requests);
        let c1 = cpu_ns();
        let w = client.run(RunLimit {
            requests: Some(requests),
            ..Default::default()
        });
        let c2 = cpu_ns();
        assert_eq!(w.errors, 0);
        let m_rate = requests as f64 / m.as_secs_f64();
        wall.push(w.requests_per_sec() / m_rate);
        let m_cpu = (c1 - c0) as f64 / requests as f64;
        let w_cpu = (c2 - c1) as f64 / w.requests as f64;
        cpu.push(m_cpu / w_cpu);
    }
    let (wm, wlo, whi) = median(wall);
    let (cm, clo, chi) = median(cpu);
    println!(
        "{name}: wall-clock rate wsk/mio = {wm:.3} (median of 11 interleaved rounds; min {wlo:.3}, max {whi:.3})"
    );
    println!(
        "{name}: CPU efficiency wsk/mio = {cm:.3} (mio CPU per round trip / wsk CPU per round trip; min {clo:.3}, max {chi:.3})"
    );
    client.close();
    echo.stop();
    provider.unload();
}

fn ratios(_: &mut Criterion) {
    interleaved("requests (16 conns x 64 B)", 16, 64, 100_000);
    interleaved("throughput (4 conns x 256 KiB)", 4, 256 << 10, 2_000);
}

/// The benchmark group: criterion comparisons, then the interleaved ratios.
fn benches() {
    let mut c = Criterion::default().configure_from_args();
    requests(&mut c);
    throughput(&mut c);
    ratios(&mut c);
}

criterion_main!(benches);
