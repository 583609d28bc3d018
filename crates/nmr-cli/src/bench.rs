//! `nmr bench`: the benchmark scenarios of BENCHMARKS.md, quickly, each with its baselines
//! measured in the same run.
//!
//! * the registrar and the binding call path: `nmr::bench` (the same code as
//!   `cargo bench -p nmr --features bench --bench report`);
//! * KMCL rings: 64-byte packets between two threads against a bounded crossbeam channel and
//!   `std::sync::mpsc`; 64 KiB packets against `memcpy` bandwidth;
//! * WSK: echo round trips over loopback against a plain `std::net` echo.

use anyhow::{Context as _, Result};
use clap::Args;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Options of `nmr bench`.
#[derive(Args, Debug, Clone)]
pub(crate) struct BenchArgs {
    /// The longer runs of BENCHMARKS.md (about two minutes) instead of the quick ones.
    #[arg(long)]
    pub(crate) full: bool,
}

struct Row {
    name: String,
    value: String,
    target: String,
    ratios: String,
    met: Option<bool>,
}

fn print(rows: &[Row]) {
    println!("| what | measured | target | ratios | met |");
    println!("|---|---|---|---|---|");
    for r in rows {
        let met = match r.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "—",
        };
        println!(
            "| {} | {} | {} | {} | {} |",
            r.name, r.value, r.target, r.ratios, met
        );
    }
}

pub(crate) fn run(args: &BenchArgs) -> Result<ExitCode> {
    let started = Instant::now();
    let effort = if args.full {
        nmr::bench::Effort::FULL
    } else {
        nmr::bench::Effort::QUICK
    };
    let scale: u64 = if args.full { 5 } else { 1 };
    eprintln!("measuring the registrar and the call path ...");
    let report = nmr::bench::report(effort, None);
    println!("## Registrar and bindings (crates/nmr)\n");
    print!("{report}");
    println!();

    eprintln!("measuring KMCL rings ...");
    let mut rows = Vec::new();
    rows.extend(kmcl_small(200_000 * scale)?);
    rows.push(kmcl_large(2_000 * scale)?);
    println!("## KMCL rings (crates/kmcl)\n");
    print(&rows);
    println!();

    eprintln!("measuring WSK echo ...");
    let secs = if args.full { 3.0 } else { 1.0 };
    println!("## WSK echo over loopback (crates/wsk)\n");
    print(&[wsk_echo(Duration::from_secs_f64(secs))?]);
    println!(
        "\n(nmr bench took {:.1} s; quick runs on a shared 2-core machine are noisy: see BENCHMARKS.md for the full runs)",
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

fn rate(n: u64, d: Duration) -> f64 {
    #[expect(clippy::cast_precision_loss, reason = "rates for display")]
    let n = n as f64;
    n / d.as_secs_f64().max(1e-9)
}

/// 64-byte packets from one thread to another: the VMBus ring pipe, a bounded crossbeam
/// channel and std's mpsc, best of three each.
fn kmcl_small(n: u64) -> Result<Vec<Row>> {
    let ring = || -> Result<Duration> {
        let (mut tx, mut rx) = kmcl::pipe::pipe(16).context("allocating a ring pipe")?;
        let t = Instant::now();
        let w = std::thread::spawn(move || -> Result<(), kmcl::Error> {
            let p = [7u8; 64];
            for _ in 0..n {
                tx.send(&p)?;
            }
            tx.flush()
        });
        for _ in 0..n {
            let got = rx.recv().context("ring receive")?;
            anyhow::ensure!(got.len() == 64, "short packet");
        }
        w.join().map_err(|_| anyhow::anyhow!("writer panicked"))??;
        Ok(t.elapsed())
    };
    let cb = || -> Result<Duration> {
        let (tx, rx) = crossbeam_channel::bounded::<[u8; 64]>(1024);
        let t = Instant::now();
        let w = std::thread::spawn(move || {
            for _ in 0..n {
                let _ = tx.send([7u8; 64]);
            }
        });
        for _ in 0..n {
            rx.recv().context("crossbeam receive")?;
        }
        w.join().map_err(|_| anyhow::anyhow!("writer panicked"))?;
        Ok(t.elapsed())
    };
    let mpsc = || -> Result<Duration> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<[u8; 64]>(1024);
        let t = Instant::now();
        let w = std::thread::spawn(move || {
            for _ in 0..n {
                let _ = tx.send([7u8; 64]);
            }
        });
        for _ in 0..n {
            rx.recv().context("mpsc receive")?;
        }
        w.join().map_err(|_| anyhow::anyhow!("writer panicked"))?;
        Ok(t.elapsed())
    };
    let (mut r, mut c, mut m) = (Duration::MAX, Duration::MAX, Duration::MAX);
    for _ in 0..3 {
        r = r.min(ring()?);
        c = c.min(cb()?);
        m = m.min(mpsc()?);
    }
    let (rr, cr, mr) = (rate(n, r), rate(n, c), rate(n, m));
    Ok(vec![Row {
        name: "ring pipe, 64-byte messages (coalesced into ring packets), 2 threads".into(),
        value: format!("{:.2} M packets/s", rr / 1e6),
        target: "≥ 1.0× crossbeam".into(),
        ratios: format!(
            "{:.2}× crossbeam ({:.2} M/s); {:.2}× std mpsc ({:.2} M/s)",
            rr / cr,
            cr / 1e6,
            rr / mr,
            mr / 1e6
        ),
        met: Some(rr >= cr),
    }])
}

/// 64 KiB packets through the ring against plain copies of the same bytes.
fn kmcl_large(n: u64) -> Result<Row> {
    const SIZE: usize = 64 * 1024;
    let ring = || -> Result<Duration> {
        let (mut tx, mut rx) = kmcl::pipe::pipe(256).context("allocating a ring pipe")?;
        let t = Instant::now();
        let w = std::thread::spawn(move || -> Result<(), kmcl::Error> {
            let p = vec![3u8; SIZE];
            for _ in 0..n {
                tx.send(&p)?;
            }
            tx.flush()
        });
        for _ in 0..n {
            // The reader validates and copies each packet out of the shared ring before
            // handing it over (the peer is untrusted), so this is the receiving copy.
            let got = rx.recv().context("ring receive")?;
            anyhow::ensure!(got.len() == SIZE, "short packet");
            std::hint::black_box(got);
        }
        w.join().map_err(|_| anyhow::anyhow!("writer panicked"))??;
        Ok(t.elapsed())
    };
    let memcpy = || {
        let src = vec![3u8; SIZE];
        let mut dst = vec![0u8; SIZE];
        let t = Instant::now();
        for _ in 0..n {
            dst.copy_from_slice(std::hint::black_box(&src));
            std::hint::black_box(&mut dst);
        }
        t.elapsed()
    };
    let (mut r, mut m) = (Duration::MAX, Duration::MAX);
    for _ in 0..3 {
        r = r.min(ring()?);
        m = m.min(memcpy());
    }
    let bytes = n * SIZE as u64;
    let (rb, mb) = (rate(bytes, r), rate(bytes, m));
    Ok(Row {
        name: "ring, 64 KiB packets, 2 threads".into(),
        value: format!("{:.2} GB/s", rb / 1e9),
        target: "≥ 60% of memcpy".into(),
        ratios: format!(
            "{:.0}% of single-thread memcpy ({:.2} GB/s)",
            100.0 * rb / mb,
            mb / 1e9
        ),
        met: Some(rb >= 0.6 * mb),
    })
}

/// Echo round trips: WSK applications on the registrar against std's blocking sockets, with
/// the same connections and message size.
fn wsk_echo(duration: Duration) -> Result<Row> {
    const CONNS: usize = 8;
    const MSG: usize = 64;
    let nmr = nmr::Registrar::new();
    let provider = wsk::WskProvider::start(&nmr, wsk::ProviderConfig::default())?;
    let server = wsk::echo::EchoServer::start(&nmr, "127.0.0.1:0".parse()?)?;
    let cfg = wsk::echo::LoadConfig {
        connections: CONNS,
        message_size: MSG,
    };
    let stats = wsk::echo::run_load(
        &nmr,
        server.local_addr(),
        &cfg,
        wsk::echo::RunLimit {
            duration: Some(duration),
            ..Default::default()
        },
    )?;
    server.stop();
    provider.unload();
    let wsk_rate = stats.requests_per_sec();

    // Baseline: a thread per connection on each side, blocking std::net sockets.
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let acceptor = std::thread::spawn(move || {
        for _ in 0..CONNS {
            let Ok((mut s, _)) = listener.accept() else {
                return;
            };
            std::thread::spawn(move || {
                let mut buf = [0u8; MSG];
                while s.read_exact(&mut buf).is_ok() {
                    if s.write_all(&buf).is_err() {
                        return;
                    }
                }
            });
        }
    });
    let deadline = Instant::now() + duration;
    let t = Instant::now();
    let clients: Vec<_> = (0..CONNS)
        .map(|_| {
            std::thread::spawn(move || -> std::io::Result<u64> {
                let mut s = TcpStream::connect(addr)?;
                s.set_nodelay(true)?;
                let out = [5u8; MSG];
                let mut back = [0u8; MSG];
                let mut n = 0;
                while Instant::now() < deadline {
                    s.write_all(&out)?;
                    s.read_exact(&mut back)?;
                    n += 1;
                }
                Ok(n)
            })
        })
        .collect();
    let mut total = 0;
    for c in clients {
        total += c.join().map_err(|_| anyhow::anyhow!("client panicked"))??;
    }
    let std_rate = rate(total, t.elapsed());
    let _ = acceptor.join();
    Ok(Row {
        name: format!("WSK echo, {CONNS} connections × {MSG} B"),
        value: format!("{:.0} requests/s", wsk_rate),
        target: "≥ 0.9× plain sockets".into(),
        ratios: format!(
            "{:.2}× std::net thread-per-connection echo ({std_rate:.0}/s); {} errors",
            wsk_rate / std_rate,
            stats.errors
        ),
        met: Some(wsk_rate >= 0.9 * std_rate && stats.errors == 0),
    })
}
