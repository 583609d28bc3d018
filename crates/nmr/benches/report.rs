//! Prints the table of `BENCHMARKS.md`: one row per target, medians of several runs.
//!
//! `cargo bench -p nmr --features bench --bench report` (about a minute on 2 cores);
//! `-- --quick` for a few-second smoke run.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Counts live bytes and allocations, for the memory-per-binding row.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; the
// counters are only statistics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size(), Ordering::Relaxed);
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which we pass on.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        // SAFETY: `p` came from `System` through `alloc`/`realloc` above with layout `l`.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new, Ordering::Relaxed);
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as for `dealloc`; `new` is the caller's valid new size.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let effort = if quick {
        nmr::bench::Effort::QUICK
    } else {
        nmr::bench::Effort::FULL
    };
    let counters = || (LIVE.load(Ordering::Relaxed), ALLOCS.load(Ordering::Relaxed));
    let start = std::time::Instant::now();
    let report = nmr::bench::report(effort, Some(&counters));
    println!("{report}");
    println!("(took {:.0} s)", start.elapsed().as_secs_f64());
}
