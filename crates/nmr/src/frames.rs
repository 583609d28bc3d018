//! The module callbacks running on a thread, innermost first: a list threaded through the
//! callers' stack frames.
//!
//! Every callback the registrar invokes runs inside [`run`], which links a [`Node`] on its
//! own stack to the thread's list for the duration of the call. What the list answers:
//!
//! * whether a callback of a registration is running on this thread ([`in_callback`]):
//!   `Nmr*WaitFor*DeregisterComplete` refuses to wait from inside one of the registration's
//!   own callbacks (it would wait for itself);
//! * which attach a `NmrClientAttachProvider` belongs to ([`with_attach`]): the client's
//!   `ClientAttachProvider` runs with its attach's state linked in, and the nested call
//!   finds it there without taking a lock;
//! * which registrar runs the innermost callback ([`with_registrar`]): the typed layer's
//!   adapters call back into it without holding a reference of their own (which would also
//!   make a cycle: registrar → registration → adapter → registrar).
//!
//! Linking and unlinking are two stores to a thread-local cell; nothing is allocated or
//! copied, at any nesting depth (callbacks registering modules whose callbacks register
//! modules...).

use crate::Registrar;
use crate::handle::BindingHandle;
use crate::registrar::AttachFrame;
use std::cell::{Cell, RefCell};
use std::ptr;

/// One running callback: a node of the thread's list, on the stack of [`run`].
pub(crate) struct Node {
    /// The registration whose callback runs (raw handle).
    reg: u64,
    /// The registrar running it.
    registrar: *const Registrar,
    /// For a `ClientAttachProvider`: the attach's binding (in `registrar`) and state.
    attach: Option<(BindingHandle, *const RefCell<AttachFrame>)>,
    /// The next outer callback's node, or null.
    outer: *const Node,
}

#[cfg(not(loom))]
crate::sync::thread_local! {
    /// The innermost running callback's node, or null.
    static INNERMOST: Cell<*const Node> = const { Cell::new(ptr::null()) };
}
#[cfg(loom)]
crate::sync::thread_local! {
    static INNERMOST: Cell<*const Node> = Cell::new(ptr::null());
}

/// Unlinks its node when [`run`] returns or unwinds.
struct Unlink(*const Node);

impl Drop for Unlink {
    fn drop(&mut self) {
        INNERMOST.with(|top| top.set(self.0));
    }
}

/// Runs `f`, a callback of registration `reg` run by `registrar`, linked into this thread's
/// list; `attach` is the binding and state of the attach `f` performs (a
/// `ClientAttachProvider`).
pub(crate) fn run<R>(
    reg: u64,
    registrar: &Registrar,
    attach: Option<(BindingHandle, &RefCell<AttachFrame>)>,
    f: impl FnOnce() -> R,
) -> R {
    let outer = INNERMOST.with(Cell::get);
    let node = Node {
        reg,
        registrar: ptr::from_ref(registrar),
        attach: attach.map(|(b, a)| (b, ptr::from_ref(a))),
        outer,
    };
    // From here until `_unlink` drops, `node` stays where it is and is only read.
    INNERMOST.with(|top| top.set(&raw const node));
    let _unlink = Unlink(outer);
    f()
}

/// Calls `visit` on each running callback's node, innermost first, until it returns `Some`.
fn find<R>(mut visit: impl FnMut(&Node) -> Option<R>) -> Option<R> {
    let mut at = INNERMOST.with(Cell::get);
    while !at.is_null() {
        // SAFETY: a non-null `INNERMOST` or `outer` points at the node of a `run` still on
        // this thread's stack: `run` links its node for exactly the duration of its call and
        // unlinks it (restoring the outer one) when that call returns or unwinds, so nodes
        // leave the list in the reverse order they joined it, before their frames die. Nodes
        // are never written after linking, so a shared reference is sound.
        let node = unsafe { &*at };
        if let Some(r) = visit(node) {
            return Some(r);
        }
        at = node.outer;
    }
    None
}

/// Runs `f` with the registrar running the innermost callback on this thread; `None` outside
/// any callback.
pub(crate) fn with_registrar<R>(f: impl FnOnce(&Registrar) -> R) -> Option<R> {
    let at = INNERMOST.with(Cell::get);
    if at.is_null() {
        return None;
    }
    // SAFETY: as in `find`: a non-null `INNERMOST` points at the node of a `run` still on
    // this thread's stack.
    let node = unsafe { &*at };
    // SAFETY: that `run` borrows the registrar for its whole call, so it outlives the node,
    // and the borrow given to `f` cannot escape it.
    Some(f(unsafe { &*node.registrar }))
}

/// Is a callback of registration `reg` running on this thread?
pub(crate) fn in_callback(reg: u64) -> bool {
    find(|n| (n.reg == reg).then_some(())).is_some()
}

/// Runs `g` on the state of the attach of `binding` in `registrar` running on this thread
/// (innermost first); `None` if there is none, or if its state is already borrowed (`g` of
/// an outer call re-entered: never done by the registrar).
pub(crate) fn with_attach<R>(
    registrar: &Registrar,
    binding: BindingHandle,
    g: impl FnOnce(&mut AttachFrame) -> R,
) -> Option<R> {
    let state = find(|n| match n.attach {
        // SAFETY: the node's `run` borrows its registrar for the node's whole life.
        Some((b, state)) if b == binding && unsafe { &*n.registrar }.same_as(registrar) => {
            Some(state)
        }
        _ => None,
    })?;
    // SAFETY: `state` was linked by the `run` whose node we just read, still on this
    // thread's stack (see `find`), and it borrows the `RefCell` for that whole call.
    let state = unsafe { &*state };
    let mut state = state.try_borrow_mut().ok()?;
    Some(g(&mut state))
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::{in_callback, run, with_registrar};
    use crate::Registrar;

    fn registrar() -> &'static Registrar {
        Registrar::global()
    }

    #[test]
    fn the_innermost_callbacks_registrar_is_seen() {
        let (a, b) = (Registrar::new(), Registrar::new());
        assert!(with_registrar(|_| ()).is_none());
        run(1, &a, None, || {
            assert!(with_registrar(|r| std::ptr::eq(r, &a)).unwrap_or(false));
            run(2, &b, None, || {
                assert!(with_registrar(|r| std::ptr::eq(r, &b)).unwrap_or(false));
            });
            assert!(with_registrar(|r| std::ptr::eq(r, &a)).unwrap_or(false));
        });
        assert!(with_registrar(|_| ()).is_none());
    }

    /// Nests `depth` callbacks of registrations 1..=depth and checks, at the innermost,
    /// that each is seen running.
    fn nest(reg: u64, depth: u64) {
        run(reg, registrar(), None, || {
            if reg < depth {
                nest(reg + 1, depth);
            } else {
                assert!((1..=depth).all(in_callback));
                assert!(!in_callback(depth + 1));
            }
            // Inner callbacks returned: they are no longer running, this one still is.
            assert!(in_callback(reg));
            assert!(!in_callback(reg + 1));
        });
    }

    #[test]
    fn nested_callbacks_are_seen_at_any_depth() {
        assert!(!in_callback(1));
        nest(1, 100);
        assert!(!in_callback(1));
    }

    #[test]
    fn an_unwinding_callback_is_unlinked() {
        run(7, registrar(), None, || {
            let r = std::panic::catch_unwind(|| run(8, registrar(), None, || panic!("module bug")));
            assert!(r.is_err());
            assert!(in_callback(7));
            assert!(!in_callback(8));
        });
        assert!(!in_callback(7));
    }

    #[test]
    fn other_threads_do_not_see_this_threads_callbacks() {
        run(9, registrar(), None, || {
            let seen = std::thread::spawn(|| in_callback(9)).join();
            assert_eq!(seen.ok(), Some(false));
            assert!(in_callback(9));
        });
    }
}
