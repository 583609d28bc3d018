//! Biased ownership of the registry lock: the thread that takes the lock again and again
//! takes it with no atomic read-modify-write at all.
//!
//! A registrar is usually driven by one thread at a time (a module loading, a test, a
//! service starting), and each of its lock sections costs one compare-and-swap on the
//! [`RawLock`] (5–10 ns on this machine class, a third of a pair lifecycle's five
//! sections). After a thread has taken the lock [`BiasedLock::new`]'s `threshold` times in a
//! row, the lock becomes *biased* to it: it enters by storing its `busy` flag and re-reading
//! the owner, and leaves by clearing the flag, two plain stores and a load.
//!
//! Any other thread first takes the raw lock (so at most one thread revokes, and every
//! section is still mutually exclusive with every other raw section), then *revokes* the
//! bias: it clears the owner, passes the process-wide barrier of [`crate::sys`] and waits
//! for the owner's `busy` flag to clear. The pair "owner: store busy, light fence, load
//! owner" / "revoker: store owner, heavy fence, load busy" is the asymmetric Dekker of the
//! rundown and of [`RawLock`]'s sleepers: either the owner sees the revocation and takes the
//! raw lock like everyone else, or the revoker sees the owner inside and waits for it to
//! leave (its release store then happens before the revoker's section).
//!
//! Revoking costs a `membarrier` (microseconds), so the threshold doubles with each
//! revocation up to [`MAX_THRESHOLD`]: threads that alternate on the lock stay on the raw
//! path, and the barrier's cost per acquisition stays bounded. Without the asymmetric
//! barrier the owner's half would need a `SeqCst` fence, as costly as the compare-and-swap,
//! so the lock never biases.

use crate::lock::RawLock;
use crate::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering, fence};
use crate::sys;
use std::fmt;

/// The most raw acquisitions in a row a thread needs before the lock biases to it.
pub(crate) const MAX_THRESHOLD: u32 = 1 << 16;

/// Spins while waiting for a biased owner to leave before yielding the processor.
#[cfg(not(loom))]
const SPINS: u32 = 200;

/// How a [`BiasedLock::lock`] entered; [`BiasedLock::unlock`] needs it back.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[must_use = "the lock stays held until unlock is called with this"]
pub(crate) enum Held {
    /// Through the bias: only the owner's `busy` flag is set.
    Biased,
    /// Through the raw lock.
    Raw,
}

/// A [`RawLock`] that biases to the thread that keeps taking it (module docs).
pub(crate) struct BiasedLock {
    raw: RawLock,
    /// The thread the lock is biased to ([`thread_id`]), or 0. Set by a raw holder for
    /// itself, cleared by a raw holder revoking it.
    owner: AtomicU64,
    /// The owner is inside a section it entered through the bias. Written only by the owner.
    busy: AtomicBool,
    /// The raw holder before, how many raw sections in a row it had, and how many it needs
    /// to be granted the bias; read and written only with the raw lock held (atomics only
    /// so that loom checks that claim).
    last: AtomicU64,
    streak: AtomicU32,
    threshold: AtomicU32,
    /// Revocations so far (with the raw lock held), for tests and the benchmark report.
    revocations: AtomicU64,
    /// Whether the lock may bias at all (the asymmetric barrier is available).
    biasable: bool,
}

impl fmt::Debug for BiasedLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BiasedLock")
            .field("raw", &self.raw)
            .field("owner", &self.owner.load(Ordering::Relaxed))
            .field("revocations", &self.revocations.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl BiasedLock {
    /// A free, unbiased lock. `asymmetric` as for [`RawLock::new`]; without the asymmetric
    /// barrier it never biases. `threshold` (at least 1): raw acquisitions in a row before
    /// the first bias.
    pub(crate) fn new(asymmetric: bool, threshold: u32) -> Self {
        let raw = RawLock::new(asymmetric);
        BiasedLock {
            biasable: raw.is_asymmetric(),
            raw,
            owner: AtomicU64::new(0),
            busy: AtomicBool::new(false),
            last: AtomicU64::new(0),
            streak: AtomicU32::new(0),
            threshold: AtomicU32::new(threshold.clamp(1, MAX_THRESHOLD)),
            revocations: AtomicU64::new(0),
        }
    }

    /// Acquires the lock: through the bias when it is this thread's, else through the raw
    /// lock (revoking another thread's bias first).
    #[inline]
    pub(crate) fn lock(&self) -> Held {
        let me = thread_id();
        if self.owner.load(Ordering::Relaxed) == me {
            self.busy.store(true, Ordering::Relaxed);
            // The owner's half of the pair (module docs): the store above is ordered before
            // the load below against a revoker's store of `owner` and its heavy fence.
            sys::light_fence();
            if self.owner.load(Ordering::Relaxed) == me {
                return Held::Biased;
            }
            // Revoked meanwhile: the revoker may be waiting for this.
            self.busy.store(false, Ordering::Release);
        }
        self.raw.lock();
        self.after_raw_acquire(me);
        Held::Raw
    }

    /// Releases the lock this thread holds, entered as `held` says.
    #[inline]
    pub(crate) fn unlock(&self, held: Held) {
        match held {
            // Publishes the section to a revoker waiting on the flag.
            Held::Biased => self.busy.store(false, Ordering::Release),
            Held::Raw => self.raw.unlock(),
        }
    }

    /// With the raw lock held: revokes another thread's bias, then counts this acquisition
    /// towards this thread's own.
    fn after_raw_acquire(&self, me: u64) {
        if self.owner.load(Ordering::Relaxed) != 0 {
            self.revoke();
        }
        if !self.biasable {
            return;
        }
        let streak = if self.last.load(Ordering::Relaxed) == me {
            self.streak.load(Ordering::Relaxed).saturating_add(1)
        } else {
            self.last.store(me, Ordering::Relaxed);
            1
        };
        if streak >= self.threshold.load(Ordering::Relaxed) {
            self.owner.store(me, Ordering::Relaxed);
            self.streak.store(0, Ordering::Relaxed);
        } else {
            self.streak.store(streak, Ordering::Relaxed);
        }
    }

    /// With the raw lock held: takes the bias away from its owner (never this thread: its own
    /// `lock` saw the revocation before coming here) and waits until it is outside.
    #[cold]
    fn revoke(&self) {
        self.owner.store(0, Ordering::Relaxed);
        // The revoker's half: either the owner's re-read of `owner` sees 0, or the load of
        // `busy` below sees the owner inside.
        if self.raw.is_asymmetric() {
            sys::heavy_fence();
        } else {
            fence(Ordering::SeqCst);
        }
        let mut spins = 0u32;
        // Acquire: pairs with the owner's release of its last section.
        while self.busy.load(Ordering::Acquire) {
            backoff(&mut spins);
        }
        let t = self.threshold.load(Ordering::Relaxed);
        self.threshold
            .store(t.saturating_mul(2).min(MAX_THRESHOLD), Ordering::Relaxed);
        let n = self.revocations.load(Ordering::Relaxed);
        self.revocations.store(n + 1, Ordering::Relaxed);
    }

    /// How many times a bias was revoked.
    #[cfg_attr(any(loom, not(test)), expect(dead_code, reason = "unit tests"))]
    pub(crate) fn revocations(&self) -> u64 {
        self.revocations.load(Ordering::Relaxed)
    }

    /// Whether the lock is biased to the calling thread right now.
    #[cfg_attr(any(loom, not(test)), expect(dead_code, reason = "unit tests"))]
    pub(crate) fn biased_to_me(&self) -> bool {
        self.owner.load(Ordering::Relaxed) == thread_id()
    }
}

/// Waits a little for the owner to leave: spins first, then yields the processor (the owner
/// may have been preempted inside its section).
#[cfg(not(loom))]
fn backoff(spins: &mut u32) {
    if *spins < SPINS {
        *spins += 1;
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}

#[cfg(loom)]
fn backoff(_: &mut u32) {
    loom::thread::yield_now();
}

/// A non-zero id for the calling thread, unique for the life of the process (ids are never
/// reused, so a dead owner's bias cannot pass to a new thread unrevoked).
#[inline]
fn thread_id() -> u64 {
    /// The next id to hand out (a real atomic under loom too: only uniqueness matters).
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    #[cfg(not(loom))]
    crate::sync::thread_local! {
        static ME: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    }
    #[cfg(loom)]
    crate::sync::thread_local! {
        static ME: std::cell::Cell<u64> = std::cell::Cell::new(0);
    }
    ME.with(|me| {
        let id = me.get();
        if id != 0 {
            return id;
        }
        let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        me.set(id);
        id
    })
}

#[cfg(test)]
impl crate::lock::counter::TestLock for BiasedLock {
    type Held = Held;
    fn acquire(&self) -> Held {
        self.lock()
    }
    fn release(&self, held: Held) {
        self.unlock(held);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::{BiasedLock, Held, MAX_THRESHOLD};
    use crate::lock::counter::Counter;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    /// Whether this machine has the asymmetric barrier (else the lock never biases, and the
    /// bias tests check that instead).
    fn asymmetric() -> bool {
        crate::sys::init()
    }

    #[test]
    fn a_thread_that_keeps_the_lock_gets_the_bias() {
        let lock = BiasedLock::new(true, 3);
        for _ in 0..3 {
            let held = lock.lock();
            assert_eq!(held, Held::Raw);
            lock.unlock(held);
        }
        assert_eq!(lock.biased_to_me(), asymmetric());
        let held = lock.lock();
        assert_eq!(held == Held::Biased, asymmetric());
        lock.unlock(held);
    }

    #[test]
    fn without_the_asymmetric_barrier_the_lock_never_biases() {
        let lock = BiasedLock::new(false, 1);
        for _ in 0..10 {
            let held = lock.lock();
            assert_eq!(held, Held::Raw);
            lock.unlock(held);
        }
        assert!(!lock.biased_to_me());
    }

    /// Threads taking turns with a threshold of 1 bias and revoke constantly; no increment
    /// is lost, and the threshold doubles with each revocation up to its cap.
    #[test]
    fn mutual_exclusion_across_bias_and_revocation() {
        let c = Arc::new(Counter::new(BiasedLock::new(true, 1)));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let c = Arc::clone(&c);
                std::thread::spawn(move || {
                    for _ in 0..20_000 {
                        c.increment();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("incrementing thread");
        }
        assert_eq!(c.get(), 80_000);
        if asymmetric() {
            let n = c.lock.revocations();
            assert!(n > 0, "threads never revoked each other's bias");
            let expected = 1u32
                .checked_shl(u32::try_from(n).unwrap_or(u32::MAX))
                .unwrap_or(0);
            assert_eq!(
                c.lock.threshold.load(Ordering::Relaxed),
                if expected == 0 || expected > MAX_THRESHOLD {
                    MAX_THRESHOLD
                } else {
                    expected
                }
            );
        }
    }

    /// An owner that stays inside a biased section (as if preempted) holds a revoking thread
    /// off until it leaves, and its writes are visible to that thread.
    #[test]
    fn a_revoker_waits_for_the_owner_to_leave() {
        if !asymmetric() {
            return;
        }
        let c = Arc::new(Counter::new(BiasedLock::new(true, 1)));
        c.increment();
        assert!(c.lock.biased_to_me());
        let held = c.lock.lock();
        assert_eq!(held, Held::Biased);
        let entered = Arc::new(AtomicBool::new(false));
        let t = {
            let (c, entered) = (Arc::clone(&c), Arc::clone(&entered));
            std::thread::spawn(move || {
                let v = c.get();
                entered.store(true, Ordering::SeqCst);
                v
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            !entered.load(Ordering::SeqCst),
            "entered while the owner was inside"
        );
        // Still inside: the write below must be what the other thread reads.
        let v = c.value_for_test();
        c.set_for_test(v + 41);
        c.lock.unlock(held);
        assert_eq!(t.join().expect("revoking thread"), 42);
        assert!(!c.lock.biased_to_me());
        assert_eq!(c.lock.revocations(), 1);
    }
}

#[cfg(all(test, loom))]
mod loom_bias {
    //! The bias under loom: the asymmetric pair is two `SeqCst` fences (see `sys`) and the
    //! threshold is 1, so the first raw acquisition biases and every other thread revokes. A
    //! broken exclusion is a lost update of the counter.
    use super::BiasedLock;
    use crate::lock::counter::Counter;
    use loom::sync::Arc;

    fn increments(threads: usize, per_thread: usize) {
        let mut b = loom::model::Builder::new();
        if b.preemption_bound.is_none() {
            b.preemption_bound = Some(2);
        }
        b.check(move || {
            let c = Arc::new(Counter::new(BiasedLock::new(true, 1)));
            let handles: Vec<_> = (0..threads)
                .map(|_| {
                    let c = Arc::clone(&c);
                    loom::thread::spawn(move || {
                        for _ in 0..per_thread {
                            c.increment();
                        }
                    })
                })
                .collect();
            // The main thread biases the lock first, then uses the bias while the others
            // revoke it.
            for _ in 0..2 {
                c.increment();
            }
            for h in handles {
                h.join().expect("loom thread");
            }
            assert_eq!(c.get(), threads * per_thread + 2);
        });
    }

    #[test]
    fn loom_bias_owner_and_one_revoker() {
        increments(1, 1);
    }

    #[test]
    fn loom_bias_revoker_that_biases_back() {
        increments(1, 2);
    }

    #[test]
    fn loom_bias_two_revokers() {
        increments(2, 1);
    }
}
