//! Allocations the registrar reuses per thread instead of freeing and allocating again.
//!
//! * **List buffers** ([`take`], [`give_back`]): the lists a registration or deregistration
//!   builds and drops (the bindings it formed; the detaches it runs), when they do not fit
//!   inline. Freeing a large buffer makes glibc consolidate its fast bins, a walk over every
//!   small chunk freed since, after which small allocations take its slow path: with a
//!   client against 10 000 typed providers (20 000 small frees per cycle) that cost about
//!   20% per binding. A buffer is kept up to [`KEEP`] bytes; a nested call (from a callback)
//!   finds its thread's buffer taken and uses a fresh one; the larger one is kept.
//! * **One spare instance box** ([`boxed`], [`put`]): a registration's instance is boxed
//!   (attach callbacks borrow it past the lock), and a thread that waits for one
//!   registration and then registers the next (module reloads, the pair lifecycle) reuses
//!   the box instead of a free and a malloc.

#![forbid(unsafe_code)]

use crate::RegistrationInstance;
#[cfg(loom)]
use loom::thread::LocalKey;
use std::cell::Cell;
#[cfg(not(loom))]
use std::thread::LocalKey;

/// The largest buffer kept per list and thread.
const KEEP: usize = 1 << 20;

/// This thread's buffer from `home`: empty, a fresh one if taken or gone.
pub(crate) fn take<T: 'static>(home: &'static LocalKey<Cell<Vec<T>>>) -> Vec<T> {
    home.try_with(Cell::take).unwrap_or_default()
}

/// Returns `v`, emptied, to `home` (or frees it: too large, or smaller than a buffer
/// a nested call returned meanwhile).
pub(crate) fn give_back<T: 'static>(home: &'static LocalKey<Cell<Vec<T>>>, mut v: Vec<T>) {
    v.clear();
    if v.capacity().saturating_mul(size_of::<T>()) > KEEP {
        return;
    }
    let _ = home.try_with(|c| {
        let other = c.take();
        c.set(if other.capacity() > v.capacity() {
            other
        } else {
            v
        });
    });
}

#[cfg(not(loom))]
crate::sync::thread_local! {
    static SPARE: Cell<Option<Box<RegistrationInstance>>> = const { Cell::new(None) };
}
#[cfg(loom)]
crate::sync::thread_local! {
    static SPARE: Cell<Option<Box<RegistrationInstance>>> = Cell::new(None);
}

/// `instance` in a box, this thread's spare one if it has one.
#[inline]
pub(crate) fn boxed(instance: RegistrationInstance) -> Box<RegistrationInstance> {
    match SPARE.try_with(Cell::take) {
        Ok(Some(mut b)) => {
            *b = instance;
            b
        }
        _ => Box::new(instance),
    }
}

/// Keeps `b`'s allocation as this thread's spare, after dropping what it owns (the
/// characteristics and name may hold module objects, which must not outlive the
/// registration).
#[inline]
pub(crate) fn put(mut b: Box<RegistrationInstance>) {
    b.characteristics = None;
    b.name = None;
    let _ = SPARE.try_with(|s| drop(s.replace(Some(b))));
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    std::thread_local! {
        static HOME: Cell<Vec<u64>> = const { Cell::new(Vec::new()) };
    }

    #[test]
    fn a_buffer_comes_back_empty_and_the_larger_of_two_is_kept() {
        let mut outer = take(&HOME);
        outer.extend(0..100);
        // A nested call finds the home empty and makes its own.
        let mut inner = take(&HOME);
        assert_eq!(inner.capacity(), 0);
        inner.extend(0..10);
        let (outer_cap, inner_ptr) = (outer.capacity(), inner.as_ptr());
        give_back(&HOME, inner);
        give_back(&HOME, outer);
        let again = take(&HOME);
        assert!(again.is_empty());
        assert_eq!(again.capacity(), outer_cap, "the larger buffer is kept");
        assert_ne!(again.as_ptr(), inner_ptr);
    }

    #[test]
    fn buffers_over_the_limit_are_freed() {
        let mut big = take(&HOME);
        big.reserve_exact(KEEP / size_of::<u64>() + 1);
        give_back(&HOME, big);
        assert_eq!(take(&HOME).capacity(), 0);
    }

    #[test]
    fn the_spare_box_drops_what_the_instance_owned() {
        use crate::{ModuleId, NpiId};
        use std::sync::Arc;
        let owned: Arc<dyn std::any::Any + Send + Sync> = Arc::new(5u8);
        let instance = RegistrationInstance::new(NpiId::from_u128(1), ModuleId::default(), 0)
            .with_characteristics(Arc::clone(&owned))
            .with_name("first");
        let b = boxed(instance);
        let p = std::ptr::from_ref(&*b);
        put(b);
        assert_eq!(
            Arc::strong_count(&owned),
            1,
            "characteristics kept by the spare"
        );
        let b = boxed(RegistrationInstance::new(
            NpiId::from_u128(2),
            ModuleId::default(),
            7,
        ));
        assert_eq!(std::ptr::from_ref(&*b), p, "the spare box is reused");
        assert_eq!((b.number, b.name.is_none()), (7, true));
    }
}
