//! The shared-memory transport under load against a real `kmcl-echo` process: throughput
//! and signals per packet with a window of outstanding transactions, and round-trip
//! latency of one synchronous request. Signals per packet are printed at the end
//! (criterion has no slot for them).
#![expect(
    missing_docs,
    reason = "criterion_group! generates an undocumented public function"
)]

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kmcl::{Channel, SendFlags};

struct Echo {
    child: Child,
    dir: std::path::PathBuf,
    path: std::path::PathBuf,
}

impl Echo {
    fn spawn() -> Echo {
        let dir = std::env::temp_dir().join(format!("kmcl-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("echo.sock");
        let child = Command::new(env!("CARGO_BIN_EXE_kmcl-echo"))
            .arg(&path)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        while std::os::unix::net::UnixStream::connect(&path).is_err() {
            std::thread::sleep(Duration::from_millis(2));
        }
        Echo { child, dir, path }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Sends `n` 64-byte requests keeping up to `window` outstanding; returns when all
/// completed.
fn pipelined(ch: &Channel, n: u64, window: usize) -> Duration {
    let (permit_tx, permit_rx) = crossbeam_channel::bounded::<()>(window);
    for _ in 0..window {
        permit_tx.send(()).unwrap();
    }
    let start = Instant::now();
    for i in 0..n {
        permit_rx.recv().unwrap();
        let tx = permit_tx.clone();
        ch.send(&[i as u8; 64], SendFlags::WAIT_FOR_COMPLETION, move |c| {
            assert!(c.result.is_ok());
            tx.send(()).unwrap();
        })
        .unwrap();
    }
    for _ in 0..window {
        permit_rx.recv().unwrap();
    }
    let t = start.elapsed();
    for _ in 0..window {
        permit_tx.send(()).unwrap();
    }
    t
}

fn cross_process(c: &mut Criterion) {
    let echo = Echo::spawn();
    let ch = Channel::connect_unix(&echo.path).unwrap();
    ch.set_ring_page_counts(16, 16).unwrap();
    ch.enable().unwrap();
    ch.send_synchronous_request(b"warm", None).unwrap();

    let stats = Arc::new(Mutex::new((0u64, 0u64, 0u64)));
    const N: u64 = 20_000;
    let mut g = c.benchmark_group("cross_process");
    g.throughput(Throughput::Elements(N));
    g.bench_function("pipelined_64B_window_256", |b| {
        b.iter_custom(|it| {
            let before = ch.counters();
            let t: Duration = (0..it).map(|_| pipelined(&ch, N, 256)).sum();
            let after = ch.counters();
            let mut s = stats.lock().unwrap();
            s.0 += after.packets_sent - before.packets_sent;
            s.1 += after.signals_sent - before.signals_sent;
            s.2 += after.wakeups - before.wakeups;
            t
        })
    });
    g.throughput(Throughput::Elements(1));
    g.bench_function("round_trip_64B", |b| {
        b.iter(|| ch.send_synchronous_request(&[1; 64], None).unwrap())
    });
    g.finish();
    let (packets, signals, wakeups) = *stats.lock().unwrap();
    println!(
        "cross_process under load: {packets} packets, {signals} signals sent by the client ({:.4} per packet), \
         {wakeups} client wakeups ({:.4} per packet)",
        signals as f64 / packets as f64,
        wakeups as f64 / packets as f64
    );
    ch.disable().unwrap();
    ch.cleanup().unwrap();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(15)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = benches;
    config = config();
    targets = cross_process
}
criterion_main!(benches);
