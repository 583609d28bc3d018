//! Which registrations' callbacks are running on a thread, innermost last: what
//! `Nmr*WaitFor*DeregisterComplete` checks to refuse waiting from inside one of the
//! registration's own callbacks (it would wait for itself).
//!
//! Every callback pushes and pops, so the common depths (up to [`NEAR`]) live in cells: no
//! borrow flag, no allocation. Deeper nesting (callbacks registering modules whose
//! callbacks register modules...) spills to a vector and is checked just the same.

use std::cell::{Cell, RefCell};

/// Depths kept in cells.
const NEAR: usize = 8;

/// A stack of registration handles (raw values).
#[derive(Debug)]
pub(crate) struct CallbackStack {
    depth: Cell<usize>,
    near: [Cell<u64>; NEAR],
    far: RefCell<Vec<u64>>,
}

impl CallbackStack {
    /// An empty stack.
    pub(crate) const fn new() -> Self {
        CallbackStack {
            depth: Cell::new(0),
            near: [const { Cell::new(0) }; NEAR],
            far: RefCell::new(Vec::new()),
        }
    }

    /// A callback of `reg` starts.
    #[inline]
    pub(crate) fn push(&self, reg: u64) {
        let d = self.depth.get();
        match self.near.get(d) {
            Some(c) => c.set(reg),
            None => self.far.borrow_mut().push(reg),
        }
        self.depth.set(d + 1);
    }

    /// The innermost callback returned (or unwound).
    #[inline]
    pub(crate) fn pop(&self) {
        let d = self.depth.get().saturating_sub(1);
        if d >= NEAR {
            self.far.borrow_mut().pop();
        }
        self.depth.set(d);
    }

    /// Is a callback of `reg` running on this thread?
    pub(crate) fn contains(&self, reg: u64) -> bool {
        let d = self.depth.get();
        self.near[..d.min(NEAR)].iter().any(|c| c.get() == reg)
            || (d > NEAR && self.far.borrow().contains(&reg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nesting_past_the_cells_is_tracked_and_unwinds_in_order() {
        let s = CallbackStack::new();
        assert!(!s.contains(1));
        for reg in 1..=20 {
            s.push(reg);
        }
        assert!((1..=20).all(|r| s.contains(r)));
        assert!(!s.contains(21));
        for top in (1..=20).rev() {
            s.pop();
            assert!(!s.contains(top), "{top} still listed after its pop");
            assert!((1..top).all(|r| s.contains(r)));
        }
        assert_eq!(s.depth.get(), 0);
        assert!(s.far.borrow().is_empty());
    }

    #[test]
    fn a_slot_reused_at_the_same_depth_forgets_the_old_handle() {
        let s = CallbackStack::new();
        s.push(5);
        s.pop();
        s.push(6);
        assert!(s.contains(6));
        assert!(!s.contains(5));
    }
}
