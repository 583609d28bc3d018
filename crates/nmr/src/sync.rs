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

/// The current thread's id, under loom or std.
pub(crate) fn current_thread() -> ThreadId {
    #[cfg(not(loom))]
    {
        // A counter rather than `std::thread::current()`: no allocation, and nothing for a
        // leak checker to flag in a C program's main thread.
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        std::thread_local! { static ID: std::cell::Cell<u64> = const { std::cell::Cell::new(0) }; }
        ID.with(|id| {
            if id.get() == 0 {
                id.set(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
            }
            ThreadId(id.get())
        })
    }
    #[cfg(loom)]
    {
        loom::thread::current().id()
    }
}

#[cfg(loom)]
pub(crate) use loom::thread::ThreadId;
/// A thread's identity (for "is this the attaching thread?" checks).
#[cfg(not(loom))]
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(crate) struct ThreadId(u64);
