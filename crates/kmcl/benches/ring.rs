//! Ring throughput between two threads, against the baselines named in DESIGN.md:
//! 64-byte packets vs a bounded crossbeam channel and `std::sync::mpsc::sync_channel`, and
//! 64 KiB packets vs single-thread `memcpy` bandwidth. The ring side uses the real
//! publish/signal protocol: the writer sleeps on `pending_send_size` when the ring is full,
//! the reader sleeps after `arm` when it is empty, and signals go through `kmcl::event`.
#![expect(
    missing_docs,
    reason = "criterion_group! generates an undocumented public function"
)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

/// Sends `n` packets of `payload_len` bytes through a [`kmcl::pipe`] ring of `pages` data
/// pages from one thread to another, publishing every `batch` packets (0: the pipe's
/// default, automatic batching); returns the time.
fn ring_transfer(n: u64, payload_len: usize, pages: u32, batch: u32) -> Duration {
    let (mut tx, mut rx) = kmcl::pipe::pipe(pages).unwrap();
    tx.set_batch(batch);
    let reader = std::thread::spawn(move || {
        let mut sum = 0u64;
        for _ in 0..n {
            sum = sum.wrapping_add(u64::from(rx.recv().unwrap()[0]));
        }
        sum
    });
    let payload = vec![7u8; payload_len];
    let start = Instant::now();
    for _ in 0..n {
        tx.send(black_box(&payload)).unwrap();
    }
    tx.flush().unwrap();
    black_box(reader.join().unwrap());
    start.elapsed()
}

fn crossbeam_transfer(n: u64) -> Duration {
    let (tx, rx) = crossbeam_channel::bounded::<[u8; 64]>(1024);
    let reader = std::thread::spawn(move || {
        let mut sum = 0u64;
        for _ in 0..n {
            sum = sum.wrapping_add(u64::from(rx.recv().unwrap()[0]));
        }
        sum
    });
    let start = Instant::now();
    for _ in 0..n {
        tx.send(black_box([7u8; 64])).unwrap();
    }
    black_box(reader.join().unwrap());
    start.elapsed()
}

fn mpsc_transfer(n: u64) -> Duration {
    let (tx, rx) = std::sync::mpsc::sync_channel::<[u8; 64]>(1024);
    let reader = std::thread::spawn(move || {
        let mut sum = 0u64;
        for _ in 0..n {
            sum = sum.wrapping_add(u64::from(rx.recv().unwrap()[0]));
        }
        sum
    });
    let start = Instant::now();
    for _ in 0..n {
        tx.send(black_box([7u8; 64])).unwrap();
    }
    black_box(reader.join().unwrap());
    start.elapsed()
}

fn small_packets(c: &mut Criterion) {
    // Same capacity for everyone: 1024 x 64 B = 64 KiB (16 ring pages).
    const N: u64 = 200_000;
    let mut g = c.benchmark_group("two_threads_64B");
    g.throughput(Throughput::Elements(N));
    // One channel (or ring) and one reader thread per sample, `iters * N` packets through it.
    g.bench_function("crossbeam_bounded", |b| {
        b.iter_custom(|it| crossbeam_transfer(it * N))
    });
    g.bench_function("std_mpsc_sync", |b| {
        b.iter_custom(|it| mpsc_transfer(it * N))
    });
    // Reference: the ring's own cost with no second core involved (write 32, read 32).
    g.bench_function("kmcl_ring_single_thread", |b| {
        use kmcl::ring::{IncomingRing, OutgoingRing, PacketHeader, TYPE_IN_BAND};
        let view = kmcl::shmem::RingView::heap(16).unwrap();
        let mut w = OutgoingRing::new(view.clone()).unwrap();
        let mut r = IncomingRing::new(view).unwrap();
        let header = PacketHeader {
            packet_type: TYPE_IN_BAND,
            flags: 0,
            trans_id: 0,
        };
        let payload = [7u8; 64];
        let mut buf = Vec::new();
        b.iter_custom(|it| {
            let start = Instant::now();
            for _ in 0..it * N / 32 {
                for _ in 0..32 {
                    w.try_write(header, &[0; 8], black_box(&payload)).unwrap();
                }
                w.commit().unwrap();
                while let Some(i) = r.read_packet(&mut buf).unwrap() {
                    black_box(&buf[i.payload]);
                }
                r.commit_read().unwrap();
            }
            start.elapsed()
        })
    });
    // The pipe's default: automatic batching, small messages coalesced into ring packets.
    g.bench_function("kmcl_ring_default", |b| {
        b.iter_custom(|it| ring_transfer(it * N, 64, 16, 0))
    });
    g.bench_function("kmcl_ring_commit_each", |b| {
        b.iter_custom(|it| ring_transfer(it * N, 64, 16, 1))
    });
    g.bench_function("kmcl_ring_commit_32", |b| {
        b.iter_custom(|it| ring_transfer(it * N, 64, 16, 32))
    });
    g.finish();
}

fn large_packets(c: &mut Criterion) {
    const N: u64 = 2_000;
    const LEN: usize = 64 * 1024;
    let mut g = c.benchmark_group("64KiB");
    g.throughput(Throughput::Bytes(N * LEN as u64));
    g.bench_function("memcpy_one_thread", |b| {
        let src = vec![7u8; LEN];
        let mut dst = vec![0u8; LEN];
        b.iter_custom(|it| {
            let start = Instant::now();
            for _ in 0..it * N {
                dst.copy_from_slice(black_box(&src));
                black_box(&mut dst);
            }
            start.elapsed()
        })
    });
    // The same 1 MiB footprint as the ring below: 16 source and 16 destination buffers.
    g.bench_function("memcpy_one_thread_1MiB_working_set", |b| {
        let src: Vec<Vec<u8>> = (0..16).map(|_| vec![7u8; LEN]).collect();
        let mut dst: Vec<Vec<u8>> = (0..16).map(|_| vec![0u8; LEN]).collect();
        b.iter_custom(|it| {
            let start = Instant::now();
            for i in 0..it * N {
                let k = (i % 16) as usize;
                dst[k].copy_from_slice(black_box(&src[k]));
                black_box(&mut dst[k]);
            }
            start.elapsed()
        })
    });
    // 1 MiB ring: 15 packets in flight; 256 KiB ring: 3 (stays in the L2 caches).
    g.bench_function("kmcl_ring_two_threads_1MiB_ring", |b| {
        b.iter_custom(|it| ring_transfer(it * N, LEN, 256, 1))
    });
    g.bench_function("kmcl_ring_two_threads_256KiB_ring", |b| {
        b.iter_custom(|it| ring_transfer(it * N, LEN, 64, 1))
    });
    g.finish();
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
    targets = small_packets, large_packets
}
criterion_main!(benches);
