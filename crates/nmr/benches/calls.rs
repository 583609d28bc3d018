//! Criterion: one call through a binding guard against the baselines, 1 and 2 threads.
//! Per-call time; the 2-thread groups report the time per call per thread.
#![expect(
    missing_docs,
    reason = "criterion_group! generates an undocumented function"
)]

use criterion::{Criterion, criterion_group, criterion_main};
use nmr::bench::{CallPath, CallTarget, call_ns_on};
use std::sync::Arc;
use std::time::Duration;

fn calls(c: &mut Criterion) {
    for threads in [1usize, 2] {
        let mut g = c.benchmark_group(format!("call_{threads}t"));
        g.warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2))
            .sample_size(20);
        for path in CallPath::ALL {
            let target = Arc::new(CallTarget::new(path));
            g.bench_function(path.name(), |b| {
                b.iter_custom(|iters| {
                    Duration::from_secs_f64(
                        call_ns_on(&target, threads, iters) * iters as f64 / 1e9,
                    )
                });
            });
        }
        g.finish();
    }
}

criterion_group!(benches, calls);
criterion_main!(benches);
