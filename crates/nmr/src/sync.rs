//! The synchronisation facade: std types normally, loom's under `--cfg loom`, so the same
//! registrar and rundown code runs inside loom models.

#[cfg(not(loom))]
pub(crate) use std::sync::{Condvar, Mutex, MutexGuard, atomic};
#[cfg(not(loom))]
pub(crate) use std::thread_local;

/// `Arc` is std's under loom too: it appears in the public API (which must not change
/// with the cfg) and needs unsizing coercions loom's `Arc` lacks.
pub(crate) use std::sync::Arc;

#[cfg(loom)]
pub(crate) use loom::sync::{Condvar, Mutex, MutexGuard, atomic};
#[cfg(loom)]
pub(crate) use loom::thread_local;

/// Locks a mutex, ignoring poisoning: the registrar never runs foreign code while holding a
/// lock, so a poisoned lock still guards consistent data.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Waits on a condition variable, ignoring poisoning (see [`lock`]).
pub(crate) fn wait<'a, T>(c: &Condvar, g: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
    c.wait(g).unwrap_or_else(std::sync::PoisonError::into_inner)
}
