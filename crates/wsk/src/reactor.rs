//! The readiness reactor: a small fixed set of I/O threads, each blocking in `epoll` (through
//! mio) and driving the sockets registered with it.
//!
//! * No thread per socket and no busy polling: an I/O thread sleeps in `Poll::poll` until a
//!   socket is ready or another thread wakes it with a command.
//! * mio readiness is edge-triggered, so a socket drains its queues until the OS says
//!   `WouldBlock`; a socket that stops early (fairness budget) re-queues itself with a
//!   [`Command::Poke`].
//! * Operations are first tried inline on the caller's thread; only those that would block
//!   wait here. Event callbacks and completions of pending operations run on these threads.

use crate::socket::SocketCore;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use parking_lot::Mutex;
use slab::Slab;
use std::cell::Cell;
use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::{JoinHandle, ThreadId};

const WAKER: Token = Token(usize::MAX);

thread_local! {
    static ON_IO_THREAD: Cell<bool> = const { Cell::new(false) };
}

/// True on a provider I/O thread, where blocking waits are refused.
pub(crate) fn on_io_thread() -> bool {
    ON_IO_THREAD.with(Cell::get)
}

/// Work queued to an I/O thread.
pub(crate) enum Command {
    /// Re-run the socket's readiness handler as if it were readable and writable.
    Poke(Arc<SocketCore>),
}

struct ThreadShared {
    sources: Mutex<Slab<Arc<SocketCore>>>,
    commands: Mutex<Vec<Command>>,
    stop: AtomicBool,
}

struct IoThread {
    registry: mio::Registry,
    waker: Waker,
    shared: Arc<ThreadShared>,
    join: Mutex<Option<JoinHandle<()>>>,
    id: ThreadId,
}

/// Counters the reactor keeps; read with [`crate::Subsystem::counters`].
#[derive(Debug, Default)]
pub(crate) struct ReactorCounters {
    pub(crate) wakeups: AtomicUsize,
    pub(crate) events: AtomicUsize,
}

/// A fixed pool of I/O threads.
pub(crate) struct Reactor {
    threads: Box<[IoThread]>,
    next: AtomicUsize,
    pub(crate) counters: Arc<ReactorCounters>,
}

impl std::fmt::Debug for Reactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reactor")
            .field("threads", &self.threads.len())
            .finish()
    }
}

impl Reactor {
    /// Start `n` I/O threads (at least one).
    pub(crate) fn new(n: usize) -> io::Result<Arc<Reactor>> {
        let counters = Arc::new(ReactorCounters::default());
        let mut threads = Vec::new();
        for i in 0..n.max(1) {
            let poll = Poll::new()?;
            let registry = poll.registry().try_clone()?;
            let waker = Waker::new(poll.registry(), WAKER)?;
            let shared = Arc::new(ThreadShared {
                sources: Mutex::new(Slab::new()),
                commands: Mutex::new(Vec::new()),
                stop: AtomicBool::new(false),
            });
            let s2 = shared.clone();
            let c2 = counters.clone();
            let join = std::thread::Builder::new()
                .name(format!("wsk-io-{i}"))
                .spawn(move || run(poll, s2, c2))?;
            let id = join.thread().id();
            threads.push(IoThread {
                registry,
                waker,
                shared,
                join: Mutex::new(Some(join)),
                id,
            });
        }
        Ok(Arc::new(Reactor {
            threads: threads.into(),
            next: AtomicUsize::new(0),
            counters,
        }))
    }

    /// Number of I/O threads.
    pub(crate) fn thread_count(&self) -> usize {
        self.threads.len()
    }

    /// Pick a thread for a new socket (round robin).
    pub(crate) fn pick(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed) % self.threads.len()
    }

    /// Register `fd` (owned by `core`) on thread `t` for read and write readiness.
    pub(crate) fn register(&self, t: usize, fd: RawFd, core: Arc<SocketCore>) -> io::Result<Token> {
        let th = &self.threads[t];
        let key = th.shared.sources.lock().insert(core);
        let token = Token(key);
        if let Err(e) = th.registry.register(
            &mut SourceFd(&fd),
            token,
            Interest::READABLE | Interest::WRITABLE,
        ) {
            th.shared.sources.lock().remove(key);
            return Err(e);
        }
        Ok(token)
    }

    /// Undo [`Reactor::register`]. The fd must still be open.
    pub(crate) fn deregister(&self, t: usize, fd: RawFd, token: Token) {
        let th = &self.threads[t];
        // Errors only mean the fd was already gone from the epoll set.
        let _ = th.registry.deregister(&mut SourceFd(&fd));
        let mut sources = th.shared.sources.lock();
        if sources.contains(token.0) {
            drop(sources.remove(token.0));
        }
    }

    /// Queue a command to thread `t` and wake it.
    pub(crate) fn send(&self, t: usize, cmd: Command) {
        let th = &self.threads[t];
        let was_empty = {
            let mut q = th.shared.commands.lock();
            q.push(cmd);
            q.len() == 1
        };
        if was_empty {
            // A failed wake means the thread is gone (shutdown); nothing left to drive.
            let _ = th.waker.wake();
        }
    }
}

impl Drop for Reactor {
    fn drop(&mut self) {
        for th in self.threads.iter() {
            th.shared.stop.store(true, Ordering::SeqCst);
            let _ = th.waker.wake();
        }
        let me = std::thread::current().id();
        for th in self.threads.iter() {
            if let Some(j) = th.join.lock().take()
                && th.id != me
            {
                let _ = j.join();
            }
        }
    }
}

fn run(mut poll: Poll, shared: Arc<ThreadShared>, counters: Arc<ReactorCounters>) {
    ON_IO_THREAD.with(|c| c.set(true));
    let mut events = Events::with_capacity(256);
    let mut ready: Vec<(Arc<SocketCore>, bool, bool)> = Vec::with_capacity(256);
    loop {
        // Checked before sleeping too: if the reactor was dropped on this very thread (inside
        // a callback that released the last reference), its waker is already closed.
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        if let Err(e) = poll.poll(&mut events, None) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            tracing::error!(error = %e, "wsk reactor poll failed; I/O thread stops");
            break;
        }
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        counters.wakeups.fetch_add(1, Ordering::Relaxed);
        let mut woken = false;
        {
            let sources = shared.sources.lock();
            for ev in events.iter() {
                if ev.token() == WAKER {
                    woken = true;
                    continue;
                }
                if let Some(core) = sources.get(ev.token().0) {
                    let r = ev.is_readable() || ev.is_read_closed() || ev.is_error();
                    let w = ev.is_writable() || ev.is_write_closed() || ev.is_error();
                    ready.push((core.clone(), r, w));
                }
            }
        }
        counters.events.fetch_add(ready.len(), Ordering::Relaxed);
        for (core, r, w) in ready.drain(..) {
            core.on_ready(r, w);
        }
        if woken {
            let cmds = std::mem::take(&mut *shared.commands.lock());
            for cmd in cmds {
                match cmd {
                    Command::Poke(core) => core.on_ready(true, true),
                }
            }
        }
    }
    // Break reference cycles with sockets still registered (they keep the reactor alive).
    let leftovers = std::mem::take(&mut *shared.sources.lock());
    drop(leftovers);
    shared.commands.lock().clear();
}
