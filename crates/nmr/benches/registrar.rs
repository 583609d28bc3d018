//! Criterion: the registrar's targets (pair lifecycle, N providers, 2-thread registration
//! throughput, detach latency), each registrar scenario also on the usersim model
//! (`usersim_*`), the baseline.
#![expect(
    missing_docs,
    reason = "criterion_group! generates an undocumented function"
)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use nmr::bench;
use std::time::Duration;

fn registrar(c: &mut Criterion) {
    let mut g = c.benchmark_group("registrar");
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(10);
    g.bench_function("pair_lifecycle", |b| {
        b.iter_custom(|iters| {
            Duration::from_secs_f64(bench::pair_lifecycle_ns(iters) * iters as f64 / 1e9)
        });
    });
    g.bench_function("usersim_pair_lifecycle", |b| {
        b.iter_custom(|iters| {
            Duration::from_secs_f64(bench::usersim_pair_lifecycle_ns(iters) * iters as f64 / 1e9)
        });
    });
    for n in [10usize, 100, 1000, 10_000] {
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(format!("client_vs_{n}_providers"), |b| {
            b.iter_custom(|iters| {
                Duration::from_secs_f64(
                    bench::per_binding_ns(n, iters) * (iters * n as u64) as f64 / 1e9,
                )
            });
        });
        g.bench_function(format!("usersim_client_vs_{n}_providers"), |b| {
            b.iter_custom(|iters| {
                Duration::from_secs_f64(
                    bench::usersim_per_binding_ns(n, iters) * (iters * n as u64) as f64 / 1e9,
                )
            });
        });
    }
    g.throughput(Throughput::Elements(1));
    g.bench_function("two_thread_register_pair", |b| {
        b.iter_custom(|iters| {
            // Time per pair at the measured 2-thread rate.
            let rate = bench::register_pairs_per_sec(Duration::from_millis(100));
            Duration::from_secs_f64(iters as f64 / rate)
        });
    });
    g.bench_function("usersim_two_thread_register_pair", |b| {
        b.iter_custom(|iters| {
            let rate = bench::usersim_register_pairs_per_sec(Duration::from_millis(100));
            Duration::from_secs_f64(iters as f64 / rate)
        });
    });
    g.bench_function("detach_no_call_in_flight", |b| {
        b.iter_custom(|iters| {
            let n = usize::try_from(iters).unwrap_or(usize::MAX).min(10_000);
            Duration::from_secs_f64(bench::detach_us(n, 0) * iters as f64 / 1e6)
        });
    });
    g.finish();
}

criterion_group!(benches, registrar);
criterion_main!(benches);
