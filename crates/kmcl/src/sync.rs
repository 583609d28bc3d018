//! Synchronisation facade: `std` types normally, `loom` types under `--cfg loom`.
//!
//! The ring protocol ([`crate::ring`]) and the in-process [`crate::event::Event`] take their
//! atomics, fences, mutexes and condition variables from here, so the loom models in
//! `tests/loom_*.rs` exercise the same code that ships.

#![forbid(unsafe_code)]

#[cfg(not(loom))]
pub use std::sync::{Arc, Condvar, Mutex, MutexGuard};

#[cfg(loom)]
pub use loom::sync::{Arc, Condvar, Mutex, MutexGuard};

/// Atomics and fences.
pub mod atomic {
    #[cfg(not(loom))]
    pub use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering, fence};

    #[cfg(loom)]
    pub use loom::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering, fence};
}

/// Locks a mutex, ignoring poisoning: every critical section in this crate leaves its data
/// consistent before it can panic (user callbacks never run under a lock).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}
