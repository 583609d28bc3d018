//! Ring throughput between two threads, against the baselines named in DESIGN.md:
//! 64-byte packets vs a bounded crossbeam channel and `std::sync::mpsc::sync_channel`, and
//! 64 KiB packets vs single-thread `memcpy` bandwidth. The ring side uses the real
//! publish/signal protocol: the writer sleeps on `pending_send_size` when the ring is full,
//! the reader sleeps after `arm` when it is empty, and signals go through `kmcl::event`.
#![expect(
    missing_docs,
    reason = "criterion_group! generates an undocumented public function"
)]

mod contenders;

use contenders::{
    LARGE, channel_in_band, crossbeam, gpadl_slots, handoff_ceiling, memcpy_hot, memcpy_set, mpsc,
    ring, ring_packets, ring_single_staged, ring_single_thread,
};
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn small_packets(c: &mut Criterion) {
    // Same capacity for everyone: 1024 x 64 B = 64 KiB (16 ring pages).
    const N: u64 = 200_000;
    let mut g = c.benchmark_group("two_threads_64B");
    g.throughput(Throughput::Elements(N));
    // One channel (or ring) and one reader thread per sample, `iters * N` packets through it.
    g.bench_function("crossbeam_bounded", |b| {
        b.iter_custom(|it| crossbeam(it * N))
    });
    g.bench_function("std_mpsc_sync", |b| b.iter_custom(|it| mpsc(it * N)));
    // Reference: the ring's own cost with no second core involved (write 32, read 32).
    g.bench_function("kmcl_ring_single_thread", |b| {
        b.iter_custom(|it| ring_single_thread(it * N))
    });
    // The pipe's default: automatic batching, small messages coalesced into ring packets.
    g.bench_function("kmcl_ring_default", |b| {
        b.iter_custom(|it| ring(it * N, 64, 16, 0))
    });
    g.bench_function("kmcl_ring_commit_each", |b| {
        b.iter_custom(|it| ring(it * N, 64, 16, 1))
    });
    g.bench_function("kmcl_ring_commit_32", |b| {
        b.iter_custom(|it| ring(it * N, 64, 16, 32))
    });
    // One VMBus packet per message, automatic publication.
    g.bench_function("kmcl_ring_packets", |b| {
        b.iter_custom(|it| ring_packets(it * N, 64, 16))
    });
    g.bench_function("kmcl_ring_single_thread_staged", |b| {
        b.iter_custom(|it| ring_single_staged(it * N))
    });
    g.finish();
}

fn large_packets(c: &mut Criterion) {
    const N: u64 = 2_000;
    let mut g = c.benchmark_group("64KiB");
    g.throughput(Throughput::Bytes(N * LARGE as u64));
    g.bench_function("memcpy_one_thread", |b| {
        b.iter_custom(|it| memcpy_hot(it * N))
    });
    // The same 1 MiB footprint as the ring below: 16 source and 16 destination buffers.
    g.bench_function("memcpy_one_thread_1MiB_working_set", |b| {
        b.iter_custom(|it| memcpy_set(it * N))
    });
    // The two-core ceiling: a plain SPSC queue of 16 x 64 KiB buffers, no VMBus format.
    g.bench_function("handoff_ceiling_16x64KiB", |b| {
        b.iter_custom(|it| handoff_ceiling(it * N, 16))
    });
    // 1 MiB ring: 15 packets in flight; 256 KiB ring: 3 (stays in the L2 caches).
    g.bench_function("kmcl_ring_two_threads_1MiB_ring", |b| {
        b.iter_custom(|it| ring(it * N, LARGE, 256, 1))
    });
    g.bench_function("kmcl_ring_two_threads_256KiB_ring", |b| {
        b.iter_custom(|it| ring(it * N, LARGE, 64, 1))
    });
    // Channels: 16 GPADL slots named by GPA-direct packets, and 16 in-band packets in flight.
    g.bench_function("kmcl_channel_gpadl_16_slots", |b| {
        b.iter_custom(|it| gpadl_slots(it * N, 16, true))
    });
    g.bench_function("kmcl_channel_in_band_16", |b| {
        b.iter_custom(|it| channel_in_band(it * N, 16))
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
