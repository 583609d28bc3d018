//! The registry lock: a mutex whose uncontended release is one plain store.
//!
//! Every registrar operation is a few short lock sections (a pair lifecycle has five), and
//! on this machine class each atomic read-modify-write costs about 5–10 ns. A usual mutex
//! spends two per section: one to acquire and one to release, the release needing to know,
//! atomically, whether a thread sleeps on the lock. This lock spends one: it keeps the
//! sleepers in a separate counter and orders "store unlocked, then read the sleepers" against
//! "count myself a sleeper, then read the lock" with the asymmetric barrier pair of
//! [`crate::sys`], the same one the rundown's fast path uses. The releasing thread's half is a
//! compiler fence; the half of a thread about to sleep is the process-wide barrier (a
//! `membarrier` system call, microseconds), paid only after spinning failed, so only when a
//! section is long (registering against thousands of peers) or its holder was preempted.
//!
//! Without the asymmetric barrier (an old kernel, another OS), both halves are `SeqCst`
//! fences: as costly as a usual mutex, and as correct.
//!
//! Sleeping and waking go through [`parking_lot_core`] (under loom: a model of it built from
//! loom's mutex and condition variable), whose validation callback gives the futex rule:
//! a thread only sleeps if the lock is still held when it goes to sleep, atomically with
//! respect to wake-ups.

#[cfg(not(loom))]
use crate::bias::{BiasedLock, Held};
#[cfg(any(not(loom), test))]
use crate::sync::atomic::{AtomicU32, Ordering, fence};
#[cfg(any(not(loom), test))]
use crate::sys;
use std::cell::UnsafeCell;
use std::fmt;
use std::ops::{Deref, DerefMut};

/// Spins before a contended acquisition sleeps (each a `spin_loop` hint and a load).
#[cfg(not(loom))]
const SPINS: u32 = 200;
/// Under loom every spin is a scheduling point; the model sleeps at once.
#[cfg(all(loom, test))]
const SPINS: u32 = 0;

/// The lock word and the sleeper count: the algorithm of the module docs, without data.
/// Loom models it directly (`loom_lock`).
/// (Under loom only the `loom_lock` tests use it: the registrar uses loom's mutex.)
#[cfg(any(not(loom), test))]
pub(crate) struct RawLock {
    /// 0 free, 1 held.
    locked: AtomicU32,
    /// Threads that announced they may sleep on `locked`.
    sleepers: AtomicU32,
    /// Whether the asymmetric barrier pair is in use (else `SeqCst` fences on both sides).
    asymmetric: bool,
    #[cfg(loom)]
    park: loom_park::Park,
}

#[cfg(any(not(loom), test))]
impl fmt::Debug for RawLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawLock")
            .field("locked", &self.locked.load(Ordering::Relaxed))
            .field("asymmetric", &self.asymmetric)
            .finish_non_exhaustive()
    }
}

#[cfg(any(not(loom), test))]
impl RawLock {
    /// A free lock; `asymmetric` selects the barrier pair where the platform has it
    /// (`false`: `SeqCst` fences, the fallback, also used by tests to cover that path).
    pub(crate) fn new(asymmetric: bool) -> Self {
        RawLock {
            locked: AtomicU32::new(0),
            sleepers: AtomicU32::new(0),
            asymmetric: asymmetric && sys::init(),
            #[cfg(loom)]
            park: loom_park::Park::new(),
        }
    }

    /// Whether the asymmetric barrier pair is in use (else `SeqCst` fences).
    pub(crate) const fn is_asymmetric(&self) -> bool {
        self.asymmetric
    }

    /// Acquires the lock, spinning briefly and then sleeping while another thread holds it.
    #[inline]
    pub(crate) fn lock(&self) {
        if self
            .locked
            .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            self.lock_contended();
        }
    }

    #[cold]
    fn lock_contended(&self) {
        for _ in 0..SPINS {
            std::hint::spin_loop();
            if self.locked.load(Ordering::Relaxed) == 0
                && self
                    .locked
                    .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                return;
            }
        }
        // Announce the sleeper, then make sure that any release from now on either sees the
        // announcement or happened before the `swap` below (see `unlock`).
        self.sleepers.fetch_add(1, Ordering::SeqCst);
        if self.asymmetric {
            sys::heavy_fence();
        } else {
            fence(Ordering::SeqCst);
        }
        while self.locked.swap(1, Ordering::Acquire) != 0 {
            self.sleep();
        }
        self.sleepers.fetch_sub(1, Ordering::Relaxed);
    }

    /// Sleeps until a release wakes this thread, unless the lock is free by then.
    #[cfg(not(loom))]
    fn sleep(&self) {
        let key = std::ptr::from_ref(&self.locked).addr();
        // SAFETY: `park`'s contract: the key is an address this lock owns (so no other kind
        // of waiter shares it), and the callbacks neither panic nor call into
        // `parking_lot_core` (they only load an atomic).
        let _ = unsafe {
            parking_lot_core::park(
                key,
                || self.locked.load(Ordering::Relaxed) != 0,
                || {},
                |_, _| {},
                parking_lot_core::DEFAULT_PARK_TOKEN,
                None,
            )
        };
    }

    #[cfg(loom)]
    fn sleep(&self) {
        self.park.park(|| self.locked.load(Ordering::Relaxed) != 0);
    }

    /// Wakes one sleeper, if any sleeps.
    #[cfg(not(loom))]
    fn wake_one(&self) {
        let key = std::ptr::from_ref(&self.locked).addr();
        // SAFETY: as for `park`: our own address, and a callback that only returns a token.
        let _ = unsafe {
            parking_lot_core::unpark_one(key, |_| parking_lot_core::DEFAULT_UNPARK_TOKEN)
        };
    }

    #[cfg(loom)]
    fn wake_one(&self) {
        self.park.unpark_all();
    }

    /// Releases the lock, which this thread holds.
    #[inline]
    pub(crate) fn unlock(&self) {
        #[cfg(not(loom))]
        self.locked.store(0, Ordering::Release);
        // Loom keeps modification order as a partial order and lets a later `swap` of a
        // sleeper read past a plain store it must see (the store happens before the swap
        // through the wake-up), reporting a deadlock C++ forbids. A swap is totally ordered
        // with the sleeper's swaps in loom too; the fences below are still what the model
        // checks (remove either and it deadlocks).
        #[cfg(loom)]
        self.locked.swap(0, Ordering::Release);
        // With the sleeper's half (`lock_contended`) this orders the store before the load:
        // either this load sees the announcement, or the sleeper's `swap` sees the store.
        if self.asymmetric {
            sys::light_fence();
        } else {
            fence(Ordering::SeqCst);
        }
        if self.sleepers.load(Ordering::Relaxed) != 0 {
            self.wake_one();
        }
    }
}

/// Raw acquisitions in a row before the registry lock first biases to a thread (see
/// [`crate::bias`]); low, so that tests run through both paths and their revocations, and it
/// doubles with every revocation.
#[cfg(not(loom))]
const FIRST_BIAS_THRESHOLD: u32 = 64;

/// A mutex over `T` whose release, with no sleeper, is a plain store (module docs), and
/// which a thread that keeps taking it takes with no read-modify-write at all
/// ([`crate::bias`]).
///
/// Under loom it is loom's mutex, so that the registrar's models explore the registrar
/// rather than this lock's spin and sleep paths, which `loom_lock` models on their own.
pub(crate) struct RegistryLock<T> {
    #[cfg(not(loom))]
    raw: BiasedLock,
    #[cfg(loom)]
    raw: loom::sync::Mutex<()>,
    data: UnsafeCell<T>,
}

// SAFETY: the lock hands out access to `data` to one thread at a time (a guard exists only
// between a successful acquisition and the release), so sharing the lock shares `T` only by
// moving access between threads, which `T: Send` allows.
unsafe impl<T: Send> Sync for RegistryLock<T> {}

impl<T> fmt::Debug for RegistryLock<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryLock")
            .field("raw", &self.raw)
            .finish_non_exhaustive()
    }
}

impl<T> RegistryLock<T> {
    /// A free lock over `data`, using the asymmetric barrier where the platform has it.
    pub(crate) fn new(data: T) -> Self {
        RegistryLock {
            #[cfg(not(loom))]
            raw: BiasedLock::new(true, FIRST_BIAS_THRESHOLD),
            #[cfg(loom)]
            raw: loom::sync::Mutex::new(()),
            data: UnsafeCell::new(data),
        }
    }

    /// Acquires the lock (see [`BiasedLock::lock`]).
    #[cfg(not(loom))]
    #[inline]
    pub(crate) fn lock(&self) -> RegistryGuard<'_, T> {
        RegistryGuard {
            lock: self,
            held: self.raw.lock(),
        }
    }

    /// The biased lock underneath (for tests).
    #[cfg(not(loom))]
    #[cfg_attr(not(test), expect(dead_code, reason = "unit tests"))]
    pub(crate) const fn biased(&self) -> &BiasedLock {
        &self.raw
    }

    /// Acquires loom's mutex.
    #[cfg(loom)]
    pub(crate) fn lock(&self) -> RegistryGuard<'_, T> {
        RegistryGuard {
            lock: self,
            _held: self
                .raw
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        }
    }
}

/// Access to the data of a held [`RegistryLock`]; releases it when dropped.
pub(crate) struct RegistryGuard<'a, T> {
    lock: &'a RegistryLock<T>,
    #[cfg(not(loom))]
    held: Held,
    #[cfg(loom)]
    _held: loom::sync::MutexGuard<'a, ()>,
}

impl<T> Deref for RegistryGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: this guard exists only while its thread holds the lock, so no `&mut T`
        // exists elsewhere; the returned borrow cannot outlive the guard.
        unsafe { &*self.lock.data.get() }
    }
}

impl<T> DerefMut for RegistryGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as for `deref`, and `&mut self` makes this the only borrow through the guard.
        unsafe { &mut *self.lock.data.get() }
    }
}

#[cfg(not(loom))]
impl<T> Drop for RegistryGuard<'_, T> {
    #[inline]
    fn drop(&mut self) {
        self.lock.raw.unlock(self.held);
    }
}

#[cfg(all(loom, test))]
mod loom_park {
    //! `parking_lot_core`'s park/unpark for one key, modelled with loom's mutex and
    //! condition variable (validation under the mutex, as `parking_lot_core` validates under
    //! its bucket lock).
    use loom::sync::{Condvar, Mutex};

    pub(super) struct Park {
        m: Mutex<()>,
        cv: Condvar,
    }

    impl Park {
        pub(super) fn new() -> Self {
            Park {
                m: Mutex::new(()),
                cv: Condvar::new(),
            }
        }

        pub(super) fn park(&self, validate: impl FnOnce() -> bool) {
            let g = self
                .m
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if validate() {
                drop(self.cv.wait(g));
            }
        }

        pub(super) fn unpark_all(&self) {
            let _g = self
                .m
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            self.cv.notify_all();
        }
    }
}

#[cfg(test)]
pub(crate) mod counter {
    //! A counter updated by a non-atomic read-modify-write under a lock (the [`RawLock`] here,
    //! the biased lock in `bias`): only the lock keeps increments from getting lost.
    use super::RawLock;
    use crate::sync::atomic::{AtomicUsize, Ordering};

    /// A lock the counter can run under.
    pub(crate) trait TestLock {
        /// What `acquire` hands back for `release`.
        type Held;
        fn acquire(&self) -> Self::Held;
        fn release(&self, held: Self::Held);
    }

    impl TestLock for RawLock {
        type Held = ();
        fn acquire(&self) {
            self.lock();
        }
        fn release(&self, (): ()) {
            self.unlock();
        }
    }

    pub(crate) struct Counter<L> {
        pub(crate) lock: L,
        value: AtomicUsize,
    }

    impl<L: TestLock> Counter<L> {
        pub(crate) fn new(lock: L) -> Self {
            Counter {
                lock,
                value: AtomicUsize::new(0),
            }
        }

        pub(crate) fn increment(&self) {
            let held = self.lock.acquire();
            let v = self.value.load(Ordering::Relaxed);
            self.value.store(v + 1, Ordering::Relaxed);
            self.lock.release(held);
        }

        /// The value, read by a thread that holds the lock.
        #[cfg_attr(loom, expect(dead_code, reason = "unit tests only"))]
        pub(crate) fn value_for_test(&self) -> usize {
            self.value.load(Ordering::Relaxed)
        }

        /// Sets the value; the calling thread holds the lock.
        #[cfg_attr(loom, expect(dead_code, reason = "unit tests only"))]
        pub(crate) fn set_for_test(&self, v: usize) {
            self.value.store(v, Ordering::Relaxed);
        }

        pub(crate) fn get(&self) -> usize {
            let held = self.lock.acquire();
            let v = self.value.load(Ordering::Relaxed);
            self.lock.release(held);
            v
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::RawLock;
    use super::counter::Counter;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    /// Threads incrementing a plain counter under the lock lose no update, on both barrier
    /// paths.
    fn exclusive(asymmetric: bool) {
        let lock = Arc::new(Counter::new(RawLock::new(asymmetric)));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let lock = Arc::clone(&lock);
                std::thread::spawn(move || {
                    for _ in 0..50_000 {
                        lock.increment();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("incrementing thread");
        }
        assert_eq!(lock.get(), 200_000);
    }

    #[test]
    fn mutual_exclusion_with_the_asymmetric_barrier() {
        exclusive(true);
    }

    #[test]
    fn mutual_exclusion_with_seqcst_fences() {
        exclusive(false);
    }

    /// A thread that finds the lock held for long sleeps (it announces itself) and is woken
    /// by the release.
    fn sleeper_is_woken(asymmetric: bool) {
        let lock = Arc::new(Counter::new(RawLock::new(asymmetric)));
        lock.lock.lock();
        let done = Arc::new(AtomicBool::new(false));
        let t = {
            let (lock, done) = (Arc::clone(&lock), Arc::clone(&done));
            std::thread::spawn(move || {
                lock.increment();
                done.store(true, Ordering::SeqCst);
            })
        };
        while lock.lock.sleepers.load(Ordering::SeqCst) == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(!done.load(Ordering::SeqCst), "acquired while held");
        lock.lock.unlock();
        t.join().expect("sleeping thread");
        assert!(done.load(Ordering::SeqCst));
        assert_eq!(lock.lock.sleepers.load(Ordering::SeqCst), 0);
        assert_eq!(lock.get(), 1);
    }

    /// Holders keep the lock far longer than the spin phase, so the other threads sleep;
    /// every sleeper is woken in turn (no lost wake-up: the test would hang) and exclusion
    /// holds throughout.
    fn many_sleepers(asymmetric: bool) {
        let lock = Arc::new(Counter::new(RawLock::new(asymmetric)));
        let slept = Arc::new(AtomicBool::new(false));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (lock, slept) = (Arc::clone(&lock), Arc::clone(&slept));
                std::thread::spawn(move || {
                    for _ in 0..100 {
                        lock.lock.lock();
                        if lock.lock.sleepers.load(Ordering::Relaxed) > 0 {
                            slept.store(true, Ordering::Relaxed);
                        }
                        // Hold it for ~50 µs: well past any spinning.
                        let start = std::time::Instant::now();
                        while start.elapsed() < Duration::from_micros(50) {
                            std::hint::spin_loop();
                        }
                        lock.lock.unlock();
                        lock.increment();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("contending thread");
        }
        assert_eq!(lock.get(), 400);
        assert_eq!(lock.lock.sleepers.load(Ordering::SeqCst), 0);
        assert!(
            slept.load(Ordering::Relaxed),
            "no thread ever slept on the lock"
        );
    }

    /// Runs `f` on a thread; fails the test if it has not finished within 60 s (a lost
    /// wake-up hangs a sleeper forever).
    fn within(f: impl FnOnce() + Send + 'static) {
        let (tx, rx) = std::sync::mpsc::channel();
        let t = std::thread::spawn(move || {
            f();
            let _ = tx.send(());
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(()) => t.join().expect("test body"),
            Err(_) if t.is_finished() => {
                if let Err(p) = t.join() {
                    std::panic::resume_unwind(p);
                }
            }
            Err(_) => panic!("a thread never woke up: lost wake-up"),
        }
    }

    #[test]
    fn many_sleepers_are_all_woken_with_the_asymmetric_barrier() {
        within(|| many_sleepers(true));
    }

    #[test]
    fn many_sleepers_are_all_woken_with_seqcst_fences() {
        within(|| many_sleepers(false));
    }

    #[test]
    fn a_sleeper_is_woken_by_the_release() {
        sleeper_is_woken(true);
    }

    #[test]
    fn a_sleeper_is_woken_by_the_release_with_seqcst_fences() {
        sleeper_is_woken(false);
    }
}

#[cfg(all(test, loom))]
mod loom_lock {
    //! The lock algorithm under loom: the asymmetric pair is two `SeqCst` fences (see
    //! `sys`), the spin phase is skipped, and sleeping is `loom_park`. A lost wake-up is a
    //! deadlock loom reports; a broken exclusion is a lost update of the counter.
    use super::RawLock;
    use super::counter::Counter;
    use loom::sync::Arc;

    fn increments(threads: usize, asymmetric: bool) {
        let mut b = loom::model::Builder::new();
        if b.preemption_bound.is_none() {
            b.preemption_bound = Some(2);
        }
        b.check(move || {
            let lock = Arc::new(Counter::new(RawLock::new(asymmetric)));
            let handles: Vec<_> = (0..threads)
                .map(|_| {
                    let lock = Arc::clone(&lock);
                    loom::thread::spawn(move || lock.increment())
                })
                .collect();
            lock.increment();
            for h in handles {
                h.join().expect("loom thread");
            }
            assert_eq!(lock.get(), threads + 1);
            assert_eq!(
                lock.lock
                    .sleepers
                    .load(std::sync::atomic::Ordering::Relaxed),
                0
            );
        });
    }

    #[test]
    fn loom_lock_two_threads() {
        increments(1, true);
    }

    #[test]
    fn loom_lock_two_threads_fallback_fences() {
        increments(1, false);
    }

    #[test]
    fn loom_lock_three_threads() {
        increments(2, true);
    }
}
