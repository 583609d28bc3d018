//! Rundown protection for calls through a binding.
//!
//! A [`Rundown`] counts calls in flight. [`Rundown::try_enter`] fails once
//! [`Rundown::close`] has begun, so no call starts after detach began; `close` hands back a
//! [`DrainRef`] that itself counts as one call, and the `on_drained` closure runs exactly
//! once, on whichever thread releases the last reference (the `DrainRef` or a guard).
//!
//! This implementation is a cache-aware sharded counter (`EX_RUNDOWN_REF_CACHE_AWARE`
//! style): each thread increments a shard on its own cache line, bit 0 of every shard is the
//! "closed" flag, and closing sums the shards into one drain counter.
//!
//! Drain accounting: `close` sets the closed bit on each shard and learns that shard's count
//! at that instant; every guard counted there releases exactly once afterwards, and seeing
//! the closed bit it decrements `drain`. `close` adds the total (+1 for the `DrainRef`) to
//! `drain`. Releases before that add push `drain` below zero, so it can only reach zero once
//! every counted guard and the `DrainRef` are gone, and exactly one thread sees the 1 → 0 step.

use crate::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};
use crate::sync::{self, Arc, Mutex};
use crossbeam_utils::CachePadded;
use std::fmt;

const CLOSED: usize = 1;
const ONE: usize = 2;

type OnDrained = Box<dyn FnOnce() + Send>;

/// Rundown protection for one side of a binding.
pub struct Rundown {
    /// Per-shard `count * 2 | CLOSED`. Padded to 128 bytes: adjacent-line prefetch on x86
    /// pulls cache lines in pairs, so 64-byte padding still shares traffic between shards.
    shards: Box<[CachePadded<AtomicUsize>]>,
    drain: AtomicIsize,
    on_drained: Mutex<Option<OnDrained>>,
}

impl fmt::Debug for Rundown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rundown")
            .field("closed", &self.is_closed())
            .field("in_flight", &self.in_flight())
            .finish()
    }
}

fn shard_count() -> usize {
    #[cfg(loom)]
    {
        2
    }
    #[cfg(not(loom))]
    {
        static N: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
        *N.get_or_init(|| {
            std::thread::available_parallelism()
                .map_or(4, std::num::NonZero::get)
                .next_power_of_two()
                .min(64)
        })
    }
}

fn my_shard(mask: usize) -> usize {
    #[cfg(loom)]
    {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        sync::current_thread().hash(&mut h);
        #[expect(
            clippy::cast_possible_truncation,
            reason = "only the low bits are used"
        )]
        let v = h.finish() as usize;
        v & mask
    }
    #[cfg(not(loom))]
    {
        use std::cell::Cell;
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        std::thread_local! {
            static SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
        }
        SHARD.with(|s| {
            let mut v = s.get();
            if v == usize::MAX {
                v = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                s.set(v);
            }
            v & mask
        })
    }
}

impl Default for Rundown {
    fn default() -> Self {
        Self::new()
    }
}

impl Rundown {
    /// An open rundown with no calls in flight.
    #[must_use]
    pub fn new() -> Self {
        Rundown {
            shards: (0..shard_count())
                .map(|_| CachePadded::new(AtomicUsize::new(0)))
                .collect(),
            drain: AtomicIsize::new(0),
            on_drained: Mutex::new(None),
        }
    }

    /// Starts a call; `None` once [`close`](Self::close) has begun. The returned shard must
    /// be passed to [`exit`](Self::exit).
    #[inline]
    pub(crate) fn enter_raw(&self) -> Option<usize> {
        let i = my_shard(self.shards.len() - 1);
        let s = &self.shards[i];
        let mut v = s.load(Ordering::Relaxed);
        loop {
            if v & CLOSED != 0 {
                return None;
            }
            match s.compare_exchange_weak(v, v + ONE, Ordering::Acquire, Ordering::Relaxed) {
                Ok(_) => return Some(i),
                Err(cur) => v = cur,
            }
        }
    }

    /// Ends a call started on `shard` (any thread may end it).
    #[inline]
    pub(crate) fn exit(&self, shard: usize) {
        let prev = self.shards[shard].fetch_sub(ONE, Ordering::Release);
        if prev & CLOSED != 0 {
            self.release_drain();
        }
    }

    #[cold]
    fn release_drain(&self) {
        if self.drain.fetch_sub(1, Ordering::AcqRel) == 1 {
            let f = sync::lock(&self.on_drained).take();
            if let Some(f) = f {
                f();
            }
        }
    }

    /// Starts a call: `None` once closing began.
    #[must_use]
    pub fn try_enter(&self) -> Option<RundownGuard<'_>> {
        self.enter_raw().map(|shard| RundownGuard {
            rundown: self,
            shard,
            _not_send: std::marker::PhantomData,
        })
    }

    /// Starts a call with a guard that may move to other threads.
    #[must_use]
    pub fn try_enter_owned(self: &Arc<Self>) -> Option<OwnedRundownGuard> {
        self.enter_raw().map(|shard| OwnedRundownGuard {
            rundown: Arc::clone(self),
            shard,
        })
    }

    /// Begins rundown: every later `try_enter` fails. `on_drained` runs exactly once, on the
    /// thread that releases the last outstanding reference: a guard entered before the close,
    /// or the returned [`DrainRef`], which counts as one. Returns `None` (dropping
    /// `on_drained`) if the rundown was already closed.
    pub fn close(self: &Arc<Self>, on_drained: impl FnOnce() + Send + 'static) -> Option<DrainRef> {
        {
            let mut slot = sync::lock(&self.on_drained);
            if self.is_closed() {
                return None;
            }
            *slot = Some(Box::new(on_drained));
        }
        let mut total: isize = 1;
        for s in &*self.shards {
            let prev = s.fetch_or(CLOSED, Ordering::AcqRel);
            #[expect(clippy::cast_possible_wrap, reason = "counts are far below isize::MAX")]
            {
                total += (prev >> 1) as isize;
            }
        }
        self.drain.fetch_add(total, Ordering::AcqRel);
        Some(DrainRef {
            rundown: Arc::clone(self),
        })
    }

    /// Has closing begun?
    #[must_use]
    pub fn is_closed(&self) -> bool {
        self.shards[0].load(Ordering::Acquire) & CLOSED != 0
    }

    /// Calls in flight right now (a racy snapshot, for diagnostics).
    #[must_use]
    pub fn in_flight(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.load(Ordering::Relaxed) >> 1)
            .sum()
    }
}

/// A call in flight on this thread. Not `Send`: use [`OwnedRundownGuard`] to move one.
#[derive(Debug)]
#[must_use = "the call ends when the guard drops"]
pub struct RundownGuard<'a> {
    rundown: &'a Rundown,
    shard: usize,
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Drop for RundownGuard<'_> {
    fn drop(&mut self) {
        self.rundown.exit(self.shard);
    }
}

/// A call in flight that may move between threads (held by async tasks, open sockets…).
#[derive(Debug)]
#[must_use = "the call ends when the guard drops"]
pub struct OwnedRundownGuard {
    rundown: Arc<Rundown>,
    shard: usize,
}

impl Drop for OwnedRundownGuard {
    fn drop(&mut self) {
        self.rundown.exit(self.shard);
    }
}

/// The closer's own reference: `on_drained` cannot run before this drops.
#[derive(Debug)]
#[must_use = "dropping it releases the closer's reference"]
pub struct DrainRef {
    rundown: Arc<Rundown>,
}

impl Drop for DrainRef {
    fn drop(&mut self) {
        self.rundown.release_drain();
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize as StdAtomic;

    fn counter() -> (Arc<StdAtomic>, impl FnOnce() + Send + 'static) {
        let c = Arc::new(StdAtomic::new(0));
        let c2 = Arc::clone(&c);
        (c, move || {
            c2.fetch_add(1, Ordering::SeqCst);
        })
    }

    #[test]
    fn close_with_no_calls_drains_when_the_drain_ref_drops() {
        let r = Arc::new(Rundown::new());
        let (fired, f) = counter();
        let d = r.close(f).unwrap();
        assert_eq!(fired.load(Ordering::SeqCst), 0);
        drop(d);
        assert_eq!(fired.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn no_call_enters_after_close() {
        let r = Arc::new(Rundown::new());
        let d = r.close(|| {}).unwrap();
        assert!(r.try_enter().is_none());
        assert!(r.try_enter_owned().is_none());
        drop(d);
        assert!(r.try_enter().is_none());
    }

    #[test]
    fn drain_waits_for_the_last_guard() {
        let r = Arc::new(Rundown::new());
        let g1 = r.try_enter_owned().unwrap();
        let g2 = r.try_enter().unwrap();
        let (fired, f) = counter();
        drop(r.close(f).unwrap());
        drop(g2);
        assert_eq!(fired.load(Ordering::SeqCst), 0);
        assert_eq!(r.in_flight(), 1);
        let t = std::thread::spawn(move || drop(g1));
        t.join().unwrap();
        assert_eq!(fired.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn closing_twice_is_refused() {
        let r = Arc::new(Rundown::new());
        let d = r.close(|| {}).unwrap();
        assert!(
            r.close(|| panic!("second close must not install its callback"))
                .is_none()
        );
        drop(d);
    }

    #[test]
    fn guards_released_on_other_threads_are_counted() {
        let r = Arc::new(Rundown::new());
        let guards: Vec<_> = (0..8).map(|_| r.try_enter_owned().unwrap()).collect();
        let (fired, f) = counter();
        let d = r.close(f).unwrap();
        let handles: Vec<_> = guards
            .into_iter()
            .map(|g| std::thread::spawn(move || drop(g)))
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(fired.load(Ordering::SeqCst), 0);
        drop(d);
        assert_eq!(fired.load(Ordering::SeqCst), 1);
    }
}
