//! Prints the table of `BENCHMARKS.md`: one row per target, medians of several runs.
//!
//! `cargo bench -p nmr --features bench --bench report` (about a minute on 2 cores);
//! `-- --quick` for a few-second smoke run.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// Counts live bytes and allocations, for the memory-per-binding row.
///
/// Per thread and without atomics: the memory row is measured on one thread, and an atomic
/// counter would add three locked read-modify-writes (about 30 ns here) to every
/// allocation and free of every other row, a cost no program without this allocator pays.
struct Counting;

std::thread_local! {
    /// Live bytes on this thread, offset by 2^62 so that frees of other threads' blocks
    /// never wrap it (only differences are reported).
    static LIVE: Cell<usize> = const { Cell::new(1 << 62) };
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
}

fn add(c: &'static std::thread::LocalKey<Cell<usize>>, n: usize) {
    // `try_with`: a thread's last frees may come after its thread-locals are gone. The
    // const-initialised `Cell`s need no destructor, so this never allocates.
    let _ = c.try_with(|c| c.set(c.get().wrapping_add(n)));
}

fn sub(c: &'static std::thread::LocalKey<Cell<usize>>, n: usize) {
    let _ = c.try_with(|c| c.set(c.get().wrapping_sub(n)));
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; the
// counters are only statistics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        add(&LIVE, l.size());
        add(&ALLOCS, 1);
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which we pass on.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        sub(&LIVE, l.size());
        // SAFETY: `p` came from `System` through `alloc`/`realloc` above with layout `l`.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        add(&LIVE, new);
        sub(&LIVE, l.size());
        add(&ALLOCS, 1);
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
    let counters = || (LIVE.with(Cell::get), ALLOCS.with(Cell::get));
    let start = std::time::Instant::now();
    let report = nmr::bench::report(effort, Some(&counters));
    println!("{report}");
    println!("(took {:.0} s)", start.elapsed().as_secs_f64());
}
