//! An in-process event: a set of pending bits, a mutex and a condition variable.
//!
//! Used as the "interrupt" between two endpoints in one process and as the wake-up source
//! of a channel's dispatcher. Raising bits that are already pending coalesces, like an
//! eventfd or a VMBus interrupt. Built on [`crate::sync`], so loom can model it.

#![forbid(unsafe_code)]

use crate::sync::{Condvar, Mutex, lock};

/// Bit: the peer signalled (ring data or ring space).
pub const SIGNAL: u32 = 1;
/// Bit: a local request needs the waiter's attention.
pub const KICK: u32 = 2;
/// Bit: the peer is gone. Sticky: never cleared by [`Event::wait`].
pub const GONE: u32 = 4;

/// A coalescing event with pending bits.
#[derive(Debug, Default)]
pub struct Event {
    bits: Mutex<u32>,
    cv: Condvar,
}

impl Event {
    /// A new event with nothing pending.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes `bits` pending and wakes the waiter.
    pub fn raise(&self, bits: u32) {
        let mut b = lock(&self.bits);
        *b |= bits;
        drop(b);
        self.cv.notify_one();
    }

    /// Blocks until some bit is pending; returns and clears the pending bits (except
    /// [`GONE`], which stays set).
    pub fn wait(&self) -> u32 {
        let mut b = lock(&self.bits);
        while *b == 0 {
            b = match self.cv.wait(b) {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
        }
        let got = *b;
        *b &= GONE;
        got
    }

    /// Pending bits, without waiting or clearing.
    pub fn peek(&self) -> u32 {
        *lock(&self.bits)
    }
}
