//! The model's mutex and condition variable: what `std::mutex` and
//! `std::condition_variable` are on Linux with glibc, where usersim's figures were taken.
//!
//! Uncontended, glibc's default `pthread_mutex_t` costs what `std::sync::Mutex` does: one
//! compare-exchange to lock, one exchange to unlock. **Contended, they differ**: glibc's
//! default mutex never spins — a thread that finds it held marks it contended and sleeps
//! in `futex(FUTEX_WAIT)` at once, and the unlocking thread pays a `futex(FUTEX_WAKE)` —
//! while Rust's spins about a hundred times first and usually gets the lock without a
//! system call. usersim's engine takes its one mutex about ten times per register/deregister
//! cycle, so with two threads cycling this decides its throughput. [`Lock`] is therefore
//! glibc's algorithm (`lll_lock`/`__lll_lock_wait`/`lll_unlock`) on a futex word.
//!
//! [`Cond`] is a sequence-number futex: waiting reads the sequence, unlocks, sleeps while
//! the sequence is unchanged, relocks; notifying bumps the sequence and wakes every
//! sleeper. The engine notifies only while someone waits (it counts its waiters under the
//! lock), as glibc's broadcast returns at once when nobody waits.
//!
//! On other systems both are thin wrappers over `std::sync::{Mutex, Condvar}`.

use std::ops::{Deref, DerefMut};
#[cfg(not(target_os = "linux"))]
use std::time::Duration;

#[cfg(target_os = "linux")]
mod imp {
    use std::cell::UnsafeCell;
    use std::sync::atomic::{AtomicU32, Ordering};

    const UNLOCKED: u32 = 0;
    const LOCKED: u32 = 1;
    /// Locked, and a thread may be sleeping on the word.
    const CONTENDED: u32 = 2;

    /// How long one condition-variable wait sleeps at most: usersim's wait slice.
    const SLICE: libc::timespec = libc::timespec {
        tv_sec: 10,
        tv_nsec: 0,
    };

    /// Sleeps while `*word == expected` (or until `timeout`, or spuriously).
    fn futex_wait(word: &AtomicU32, expected: u32, timeout: Option<&libc::timespec>) {
        let tsp: *const libc::timespec = timeout.map_or(std::ptr::null(), |t| t);
        // SAFETY: FUTEX_WAIT reads the 4-byte word `word` points at (a live, aligned
        // `AtomicU32`) and `tsp` (NULL or a live `timespec`); it writes no memory of ours.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                word.as_ptr(),
                libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
                expected,
                tsp,
            );
        }
    }

    /// Wakes up to `n` threads sleeping on `word`.
    fn futex_wake(word: &AtomicU32, n: i32) {
        // SAFETY: FUTEX_WAKE only uses the address as a key; it reads and writes no memory.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                word.as_ptr(),
                libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
                n,
            );
        }
    }

    pub(super) struct Lock<T> {
        word: AtomicU32,
        data: UnsafeCell<T>,
    }

    // SAFETY: the lock hands out access to `data` to one thread at a time (the guard exists
    // only between a successful acquire and the release), so `T: Send` suffices, as for
    // `std::sync::Mutex`.
    unsafe impl<T: Send> Sync for Lock<T> {}

    impl<T> Lock<T> {
        pub(super) const fn new(data: T) -> Self {
            Lock {
                word: AtomicU32::new(UNLOCKED),
                data: UnsafeCell::new(data),
            }
        }

        #[inline]
        pub(super) fn acquire(&self) {
            if self
                .word
                .compare_exchange(UNLOCKED, LOCKED, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
            {
                self.acquire_contended();
            }
        }

        /// glibc's `__lll_lock_wait`: no spinning; mark contended and sleep.
        #[cold]
        fn acquire_contended(&self) {
            if self.word.load(Ordering::Relaxed) == CONTENDED {
                futex_wait(&self.word, CONTENDED, None);
            }
            while self.word.swap(CONTENDED, Ordering::Acquire) != UNLOCKED {
                futex_wait(&self.word, CONTENDED, None);
            }
        }

        #[inline]
        pub(super) fn release(&self) {
            if self.word.swap(UNLOCKED, Ordering::Release) == CONTENDED {
                futex_wake(&self.word, 1);
            }
        }

        /// The protected value, shared.
        ///
        /// # Safety
        /// The caller holds the lock, and no reference from [`data_mut`](Self::data_mut)
        /// is live.
        pub(super) unsafe fn data(&self) -> &T {
            // SAFETY: the caller holds the lock, so no other thread writes `data`, and no
            // exclusive reference to it is live.
            unsafe { &*self.data.get() }
        }

        /// The protected value, exclusive.
        ///
        /// # Safety
        /// The caller holds the lock, and no other reference to the value is live.
        #[expect(clippy::mut_from_ref, reason = "exclusivity comes from the lock")]
        pub(super) unsafe fn data_mut(&self) -> &mut T {
            // SAFETY: the caller holds the lock, so no other thread accesses `data`, and
            // it holds no other reference to it.
            unsafe { &mut *self.data.get() }
        }
    }

    pub(super) struct Cond {
        seq: AtomicU32,
    }

    impl Cond {
        pub(super) const fn new() -> Self {
            Cond {
                seq: AtomicU32::new(0),
            }
        }

        /// With `lock` held: releases it, sleeps until notified (or 10 s passed, or
        /// spuriously), reacquires it.
        pub(super) fn wait<T>(&self, lock: &Lock<T>) {
            let seq = self.seq.load(Ordering::Relaxed);
            lock.release();
            futex_wait(&self.seq, seq, Some(&SLICE));
            lock.acquire();
        }

        pub(super) fn notify_all(&self) {
            self.seq.fetch_add(1, Ordering::Relaxed);
            futex_wake(&self.seq, i32::MAX);
        }
    }
}

/// glibc's `std::mutex` (see the module docs).
pub(super) struct Lock<T> {
    #[cfg(target_os = "linux")]
    inner: imp::Lock<T>,
    #[cfg(not(target_os = "linux"))]
    inner: std::sync::Mutex<T>,
}

/// Access to the value of a held [`Lock`]; releases it when dropped.
pub(super) struct Guard<'l, T> {
    #[cfg(target_os = "linux")]
    lock: &'l imp::Lock<T>,
    #[cfg(not(target_os = "linux"))]
    guard: Option<std::sync::MutexGuard<'l, T>>,
}

impl<T> Lock<T> {
    pub(super) fn new(data: T) -> Self {
        Lock {
            #[cfg(target_os = "linux")]
            inner: imp::Lock::new(data),
            #[cfg(not(target_os = "linux"))]
            inner: std::sync::Mutex::new(data),
        }
    }

    #[inline]
    pub(super) fn lock(&self) -> Guard<'_, T> {
        #[cfg(target_os = "linux")]
        {
            self.inner.acquire();
            Guard { lock: &self.inner }
        }
        #[cfg(not(target_os = "linux"))]
        {
            Guard {
                guard: Some(
                    self.inner
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner),
                ),
            }
        }
    }
}

#[cfg(target_os = "linux")]
impl<T> Drop for Guard<'_, T> {
    #[inline]
    fn drop(&mut self) {
        self.lock.release();
    }
}

impl<T> Deref for Guard<'_, T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        #[cfg(target_os = "linux")]
        {
            // SAFETY: a guard exists only while its thread holds the lock, and the returned
            // reference borrows the guard, so no `data` reference outlives or overlaps it.
            unsafe { self.lock.data() }
        }
        #[cfg(not(target_os = "linux"))]
        {
            self.guard
                .as_deref()
                .unwrap_or_else(|| unreachable!("a guard holds its lock"))
        }
    }
}

impl<T> DerefMut for Guard<'_, T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        #[cfg(target_os = "linux")]
        {
            // SAFETY: as in `deref`; the reference borrows the guard mutably, so no other
            // reference to the value is live.
            unsafe { self.lock.data_mut() }
        }
        #[cfg(not(target_os = "linux"))]
        {
            self.guard
                .as_deref_mut()
                .unwrap_or_else(|| unreachable!("a guard holds its lock"))
        }
    }
}

/// glibc's `std::condition_variable` (see the module docs).
pub(super) struct Cond {
    #[cfg(target_os = "linux")]
    inner: imp::Cond,
    #[cfg(not(target_os = "linux"))]
    inner: std::sync::Condvar,
}

impl Cond {
    pub(super) fn new() -> Self {
        Cond {
            #[cfg(target_os = "linux")]
            inner: imp::Cond::new(),
            #[cfg(not(target_os = "linux"))]
            inner: std::sync::Condvar::new(),
        }
    }

    /// Releases `guard`'s lock, sleeps until notified, 10 s passed (usersim's wait
    /// slice), or spuriously, and reacquires the lock. Callers re-check their condition.
    pub(super) fn wait<T>(&self, guard: &mut Guard<'_, T>) {
        #[cfg(target_os = "linux")]
        {
            self.inner.wait(guard.lock);
        }
        #[cfg(not(target_os = "linux"))]
        {
            let g = guard
                .guard
                .take()
                .unwrap_or_else(|| unreachable!("a guard holds its lock"));
            let (g, _) = self
                .inner
                .wait_timeout(g, Duration::from_secs(10))
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            guard.guard = Some(g);
        }
    }

    pub(super) fn notify_all(&self) {
        self.inner.notify_all();
    }
}
