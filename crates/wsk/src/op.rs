//! One-shot operation handles: the Rust shape of an IRP.
//!
//! Every WSK operation returns an [`Op<T>`]. Whatever the call "returned first" (see
//! [`Op::returned`]: `SUCCESS` if it finished inline, `PENDING` if it completes later, or the
//! failure status), the operation **completes exactly once** with a [`Result<T>`]. The owner of
//! the `Op` consumes that completion in one of three ways:
//!
//! * `op.await` (it implements [`Future`]),
//! * [`Op::wait`] / [`Op::wait_timeout`] on a thread that may block,
//! * [`Op::on_complete`], a completion routine that runs on the thread that completes it
//!   (the caller's thread if it already finished, otherwise a provider I/O thread; it must not
//!   block).
//!
//! [`Op::cancel`] asks the provider to cancel: a pending operation then completes with
//! [`Error::Cancelled`]; one that already finished keeps its result. Closing a socket cancels
//! every operation pending on it.
//!
//! The provider side holds a [`Completer`]; dropping it without completing completes the
//! operation with `Cancelled`, so no operation can be lost.

use crate::reactor::on_io_thread;
use crate::socket::SocketCore;
use crate::sync::{self, Condvar, Mutex};
use crate::{Error, Result, Status};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

type Routine<T> = Box<dyn FnOnce(Result<T>) + Send>;

/// What [`Op::cancel`] does for a pending operation.
enum CancelHook {
    /// Ask the socket to take the operation off its queues (no allocation per operation).
    Socket(Weak<SocketCore>),
    /// Anything else.
    Fn(Box<dyn FnOnce() + Send>),
}

enum State<T> {
    Pending {
        waker: Option<Waker>,
        routine: Option<Routine<T>>,
        cancel: Option<CancelHook>,
    },
    Ready(Result<T>),
    Taken,
}

struct Shared<T> {
    state: Mutex<State<T>>,
    cond: Condvar,
}

impl<T> Shared<T> {
    /// Deliver the result unless something else did first. Returns whether it was delivered.
    fn finish(&self, result: Result<T>) -> bool {
        let mut st = sync::lock(&self.state);
        match std::mem::replace(&mut *st, State::Taken) {
            State::Pending {
                waker,
                routine,
                cancel,
            } => {
                drop(cancel);
                if let Some(routine) = routine {
                    drop(st);
                    routine(result);
                } else {
                    *st = State::Ready(result);
                    drop(st);
                    self.cond.notify_all();
                    if let Some(w) = waker {
                        w.wake();
                    }
                }
                true
            }
            other => {
                *st = other;
                false
            }
        }
    }
}

/// Handle to one WSK operation (the Rust counterpart of the IRP passed to a WSK function).
///
/// ```
/// # fn main() -> wsk::Result<()> {
/// let wsk = wsk::Subsystem::new(1)?;
/// let client = wsk.client();
/// let op = client.get_name_info("127.0.0.1:80".parse().unwrap(), wsk::NameInfoFlags::NUMERIC);
/// let info = op.wait()?;                      // or `.await`, or `.on_complete(|r| ...)`
/// assert_eq!(info.host, "127.0.0.1");
/// # Ok(()) }
/// ```
#[must_use = "an operation completes even if dropped, but its result is lost"]
pub struct Op<T> {
    inner: Inner<T>,
    returned: Status,
}

/// An operation that finished inline needs no shared state (and no allocation).
enum Inner<T> {
    Ready(Option<Result<T>>),
    Shared(Arc<Shared<T>>),
}

/// The completing side of an [`Op`]: completes it at most once; dropping it without
/// completing completes the operation with [`Error::Cancelled`].
pub struct Completer<T> {
    shared: Option<Arc<Shared<T>>>,
}

impl<T: Send + 'static> Op<T> {
    /// A new pending operation and the [`Completer`] that completes it: the primitive every
    /// WSK operation is built on, public for code that layers its own operations on top.
    ///
    /// ```
    /// let (op, done) = wsk::Op::<u32>::pending();
    /// std::thread::spawn(move || done.complete(Ok(42)));
    /// assert_eq!(op.wait(), Ok(42));
    /// ```
    pub fn pending() -> (Op<T>, Completer<T>) {
        Self::with_hook(None)
    }

    /// A new pending operation queued on `socket`: cancelling it asks the socket.
    pub(crate) fn pending_on(socket: &Arc<SocketCore>) -> (Op<T>, Completer<T>) {
        Self::with_hook(Some(CancelHook::Socket(Arc::downgrade(socket))))
    }

    fn with_hook(cancel: Option<CancelHook>) -> (Op<T>, Completer<T>) {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::Pending {
                waker: None,
                routine: None,
                cancel,
            }),
            cond: Condvar::new(),
        });
        (
            Op {
                inner: Inner::Shared(shared.clone()),
                returned: Status::PENDING,
            },
            Completer {
                shared: Some(shared),
            },
        )
    }

    /// An operation that already completed (the call "returned" its status).
    pub(crate) fn ready(result: Result<T>) -> Op<T> {
        let returned = match &result {
            Ok(_) => Status::SUCCESS,
            Err(e) => e.status(),
        };
        Op {
            inner: Inner::Ready(Some(result)),
            returned,
        }
    }

    /// The status the WSK function returned when it was called: `SUCCESS` (finished inline),
    /// `PENDING` (completes later), or a failure. The operation completes in every case.
    pub fn returned(&self) -> Status {
        self.returned
    }

    /// True once the operation has completed.
    pub fn is_complete(&self) -> bool {
        match &self.inner {
            Inner::Ready(_) => true,
            Inner::Shared(s) => !matches!(&*sync::lock(&s.state), State::Pending { .. }),
        }
    }

    /// Ask the provider to cancel the operation. A still-pending operation completes with
    /// [`Error::Cancelled`]; a finished one is unaffected. Never blocks.
    pub fn cancel(&self) {
        let Inner::Shared(shared) = &self.inner else {
            return;
        };
        let hook = match &mut *sync::lock(&shared.state) {
            State::Pending { cancel, .. } => cancel.take(),
            _ => return,
        };
        match hook {
            Some(CancelHook::Socket(w)) => {
                if let Some(core) = w.upgrade() {
                    core.cancel_op(Arc::as_ptr(shared) as *const () as usize);
                }
            }
            Some(CancelHook::Fn(hook)) => hook(),
            None => {
                shared.finish(Err(Error::Cancelled));
            }
        }
    }

    /// Block until the operation completes and return its result.
    ///
    /// Returns [`Error::WouldDeadlock`] if called on a provider I/O thread (inside an event
    /// callback or completion routine) while the operation is still pending.
    pub fn wait(self) -> Result<T> {
        match self.wait_until(None) {
            Ok(r) => r,
            Err(_) => Err(Error::TimedOut),
        }
    }

    /// Block up to `timeout`; on timeout the still-pending operation is handed back.
    pub fn wait_timeout(self, timeout: Duration) -> std::result::Result<Result<T>, Op<T>> {
        self.wait_until(Some(Instant::now() + timeout))
    }

    fn wait_until(mut self, deadline: Option<Instant>) -> std::result::Result<Result<T>, Op<T>> {
        let shared = match &mut self.inner {
            Inner::Ready(r) => return Ok(r.take().unwrap_or(Err(Error::Cancelled))),
            Inner::Shared(s) => s.clone(),
        };
        let mut st = sync::lock(&shared.state);
        loop {
            match std::mem::replace(&mut *st, State::Taken) {
                State::Ready(r) => return Ok(r),
                State::Taken => return Ok(Err(Error::Cancelled)),
                pending => *st = pending,
            }
            if on_io_thread() {
                return Ok(Err(Error::WouldDeadlock));
            }
            match deadline {
                None => st = sync::wait(&shared.cond, st),
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    let (g, timed_out) = sync::wait_timeout(&shared.cond, st, left);
                    st = g;
                    if timed_out && !matches!(&*st, State::Ready(_)) {
                        drop(st);
                        return Err(self);
                    }
                }
            }
        }
    }

    /// Set a completion routine. It runs exactly once: now, on this thread, if the operation
    /// already completed, otherwise on the thread that completes it (usually an I/O thread,
    /// where it must not block).
    pub fn on_complete(mut self, f: impl FnOnce(Result<T>) + Send + 'static) {
        let shared = match &mut self.inner {
            Inner::Ready(r) => return f(r.take().unwrap_or(Err(Error::Cancelled))),
            Inner::Shared(s) => s.clone(),
        };
        let mut st = sync::lock(&shared.state);
        match &mut *st {
            State::Pending { routine, .. } => {
                *routine = Some(Box::new(f));
            }
            State::Ready(_) => {
                let State::Ready(r) = std::mem::replace(&mut *st, State::Taken) else {
                    unreachable!("checked above")
                };
                drop(st);
                f(r);
            }
            State::Taken => {
                drop(st);
                f(Err(Error::Cancelled));
            }
        }
    }
}

// The result is only ever moved out, never pinned in place.
impl<T> Unpin for Op<T> {}

impl<T> Future for Op<T> {
    type Output = Result<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T>> {
        let this = self.get_mut();
        let shared = match &mut this.inner {
            Inner::Ready(r) => return Poll::Ready(r.take().unwrap_or(Err(Error::Cancelled))),
            Inner::Shared(s) => s,
        };
        let mut st = sync::lock(&shared.state);
        match &mut *st {
            State::Pending { waker, .. } => {
                match waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => *waker = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
            State::Ready(_) => {
                let State::Ready(r) = std::mem::replace(&mut *st, State::Taken) else {
                    unreachable!("checked above")
                };
                Poll::Ready(r)
            }
            State::Taken => Poll::Ready(Err(Error::Cancelled)),
        }
    }
}

impl<T> fmt::Debug for Op<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.inner {
            Inner::Ready(Some(Ok(_))) => "completed",
            Inner::Ready(Some(Err(_))) => "failed",
            Inner::Ready(None) => "consumed",
            Inner::Shared(s) => match &*sync::lock(&s.state) {
                State::Pending { .. } => "pending",
                State::Ready(Ok(_)) => "completed",
                State::Ready(Err(_)) => "failed",
                State::Taken => "consumed",
            },
        };
        f.debug_struct("Op")
            .field("returned", &self.returned)
            .field("state", &state)
            .finish()
    }
}

impl<T> Completer<T> {
    /// Complete the operation. Returns false if it had already completed (e.g. cancelled),
    /// in which case `result` is dropped.
    pub fn complete(mut self, result: Result<T>) -> bool {
        match self.shared.take() {
            Some(s) => s.finish(result),
            None => false,
        }
    }

    /// Install the hook [`Op::cancel`] runs; it must complete the operation (usually by
    /// removing it from a socket queue and completing it with `Cancelled`).
    pub(crate) fn set_cancel(&self, hook: impl FnOnce() + Send + 'static) {
        if let Some(s) = &self.shared
            && let State::Pending { cancel, .. } = &mut *sync::lock(&s.state)
        {
            *cancel = Some(CancelHook::Fn(Box::new(hook)));
        }
    }

    /// True once the operation has completed (for instance cancelled by its owner).
    pub fn is_done(&self) -> bool {
        self.shared
            .as_ref()
            .is_none_or(|s| !matches!(&*sync::lock(&s.state), State::Pending { .. }))
    }

    /// Identity of the operation, to find it in a queue.
    pub(crate) fn id(&self) -> usize {
        self.shared
            .as_ref()
            .map_or(0, |s| Arc::as_ptr(s) as *const () as usize)
    }
}

impl<T> Drop for Completer<T> {
    fn drop(&mut self) {
        if let Some(s) = self.shared.take() {
            s.finish(Err(Error::Cancelled));
        }
    }
}

impl<T> fmt::Debug for Completer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Completer").field("id", &self.id()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn completes_exactly_once_first_wins() {
        let (op, c) = Op::<u32>::pending();
        op.cancel();
        assert!(!c.complete(Ok(5)));
        assert_eq!(op.wait(), Err(Error::Cancelled));
    }

    #[test]
    fn dropped_completer_cancels() {
        let (op, c) = Op::<u32>::pending();
        drop(c);
        assert_eq!(op.wait(), Err(Error::Cancelled));
    }

    #[test]
    fn routine_runs_once_inline_or_later() {
        let n = Arc::new(AtomicUsize::new(0));
        let (op, c) = Op::<u32>::pending();
        let n2 = n.clone();
        op.on_complete(move |r| {
            assert_eq!(r, Ok(7));
            n2.fetch_add(1, Ordering::SeqCst);
        });
        assert!(c.complete(Ok(7)));
        let n3 = n.clone();
        Op::ready(Ok(1u32)).on_complete(move |_| {
            n3.fetch_add(1, Ordering::SeqCst);
        });
        assert_eq!(n.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn wait_timeout_hands_back_pending_op() {
        let (op, c) = Op::<u32>::pending();
        let op = op.wait_timeout(Duration::from_millis(5)).unwrap_err();
        assert_eq!(op.returned(), Status::PENDING);
        std::thread::spawn(move || c.complete(Ok(3)));
        assert_eq!(op.wait(), Ok(3));
    }

    #[test]
    fn returned_status_is_what_the_call_said_first() {
        assert_eq!(
            Op::<u32>::ready(Err(Error::AddressInUse)).returned(),
            Status::ADDRESS_ALREADY_EXISTS
        );
        assert_eq!(Op::ready(Ok(1u32)).returned(), Status::SUCCESS);
        let (op, c) = Op::<u32>::pending();
        c.complete(Ok(2));
        // It returned PENDING, then completed: both stay visible.
        assert_eq!(op.returned(), Status::PENDING);
        assert_eq!(op.wait(), Ok(2));
    }
}
