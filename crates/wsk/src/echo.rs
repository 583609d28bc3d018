//! Building blocks for demos, the CLI and benchmarks: an echo server and a load client,
//! each a WSK application registered on a registrar through [`WskRegistration`].
//!
//! * [`EchoServer`] listens with the accept event and echoes with the receive event (it
//!   falls back to receive operations while its sends are backed up).
//! * [`LoadClient`] opens N connections with `WskSocketConnect` and runs request/response
//!   round trips on all of them, driven by completion routines (no thread per connection).
//!
//! ```
//! # fn main() -> wsk::Result<()> {
//! use std::time::Duration;
//! let nmr = nmr::Registrar::new();
//! let provider = wsk::WskProvider::start(&nmr, wsk::ProviderConfig::default())?;
//! let server = wsk::echo::EchoServer::start(&nmr, "127.0.0.1:0".parse().unwrap())?;
//! let cfg = wsk::echo::LoadConfig { connections: 4, message_size: 512, ..Default::default() };
//! let limit = wsk::echo::RunLimit { requests: Some(100), ..Default::default() };
//! let stats = wsk::echo::run_load(&nmr, server.local_addr(), &cfg, limit)?;
//! assert!(stats.requests >= 100 && stats.errors == 0);
//! server.stop();
//! provider.unload();
//! # Ok(()) }
//! ```

use crate::events::{
    ConnectionEvents, DisconnectKind, EventMask, ListenEvents, ReceiveVerdict, SocketDispatch,
};
use crate::npi::WSK_VERSION_1_0;
use crate::provider::WskClientDispatch;
use crate::registration::{WskProviderNpi, WskRegistration};
use crate::socket::{
    Accepted, ConnectionRef, ConnectionSocket, Family, IPPROTO_TCP, ListenRef, ListenSocket,
    SOCK_STREAM, Transfer,
};
use crate::{Error, Op, Result, SockOpt, SocketControl};
use nmr::Registrar;
use parking_lot::{Condvar, Mutex};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// How long the building blocks wait for the provider when they register.
const CAPTURE_WAIT_MS: u32 = 10_000;
/// Bytes an echo connection may have queued in sends before it stops taking data.
const ECHO_BACKLOG: usize = 4 << 20;

/// Counters of an [`EchoServer`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EchoStats {
    /// Connections accepted.
    pub connections: u64,
    /// Connections open now.
    pub active: u64,
    /// Bytes received and sent back.
    pub bytes_echoed: u64,
    /// Times a connection's send backlog was full and the server refused data
    /// (`DATA_NOT_ACCEPTED`) until the backlog drained.
    pub pauses: u64,
}

#[derive(Default)]
struct EchoShared {
    conns: Mutex<HashMap<u64, (ConnectionSocket, Arc<EchoConn>)>>,
    /// Bytes echoed by connections already gone.
    closed_bytes: AtomicU64,
    next_id: AtomicU64,
    connections: AtomicU64,
    pauses: AtomicU64,
    stopping: AtomicBool,
}

struct EchoListen(Weak<EchoShared>);

struct EchoConn {
    id: u64,
    shared: Weak<EchoShared>,
    queued: AtomicUsize,
    paused: AtomicBool,
    bytes: AtomicU64,
}

impl EchoConn {
    fn echo(self: &Arc<Self>, s: &ConnectionRef, data: &[u8]) {
        let n = data.len();
        self.queued.fetch_add(n, Ordering::AcqRel);
        self.bytes.fetch_add(n as u64, Ordering::Relaxed);
        // Copies nothing when the OS takes it all at once (the common case).
        let op = s.send_copy(data);
        if op.is_complete() {
            // Sent inline (the common case): no routine, no handles to clone.
            self.sent(s, n, op.wait().is_ok());
        } else {
            let me = self.clone();
            let s2 = s.clone();
            op.on_complete(move |r| me.sent(&s2, n, r.is_ok()));
        }
    }

    fn sent(self: &Arc<Self>, s: &ConnectionRef, n: usize, ok: bool) {
        let left = self.queued.fetch_sub(n, Ordering::AcqRel) - n;
        if ok && left < ECHO_BACKLOG / 2 && self.paused.swap(false, Ordering::AcqRel) {
            self.resume(s);
        }
    }

    /// Backlog drained: take the held data (and anything after it) with receive operations
    /// until the data runs dry; the receive event takes over again after that.
    fn resume(self: &Arc<Self>, s: &ConnectionRef) {
        let me = self.clone();
        let s2 = s.clone();
        s.receive(vec![0; 64 << 10]).on_complete(move |r| match r {
            Ok(t) if t.bytes > 0 => {
                me.echo(&s2, t.data());
                if me.queued.load(Ordering::Acquire) < ECHO_BACKLOG {
                    me.resume(&s2);
                } else {
                    me.paused.store(true, Ordering::Release);
                }
            }
            _ => me.forget(),
        });
    }

    fn forget(&self) {
        if let Some(sh) = self.shared.upgrade() {
            let entry = sh.conns.lock().remove(&self.id);
            if let Some((sock, conn)) = entry {
                sh.closed_bytes
                    .fetch_add(conn.bytes.load(Ordering::Relaxed), Ordering::Relaxed);
                drop(sock);
            }
        }
    }
}

/// The connection event table: an `Arc<EchoConn>` so the echo path can keep it.
struct EchoConnEvents(Arc<EchoConn>);

impl ConnectionEvents for EchoConnEvents {
    fn on_receive(&self, s: &ConnectionRef, data: &[u8]) -> ReceiveVerdict {
        if self.0.queued.load(Ordering::Acquire) >= ECHO_BACKLOG {
            self.0.paused.store(true, Ordering::Release);
            if let Some(sh) = self.0.shared.upgrade() {
                sh.pauses.fetch_add(1, Ordering::Relaxed);
            }
            return ReceiveVerdict::NotAccepted;
        }
        self.0.echo(s, data);
        ReceiveVerdict::Accepted
    }

    fn on_disconnect(&self, _: &ConnectionRef, _: DisconnectKind) {
        self.0.forget();
    }
}

impl ListenEvents for EchoListen {
    fn on_accept(&self, _: &ListenRef, acc: Accepted) {
        let Some(sh) = self.0.upgrade() else { return };
        if sh.stopping.load(Ordering::Acquire) {
            return; // dropping the socket refuses it
        }
        let id = sh.next_id.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(EchoConn {
            id,
            shared: self.0.clone(),
            queued: AtomicUsize::new(0),
            paused: AtomicBool::new(false),
            bytes: AtomicU64::new(0),
        });
        let s = acc.socket;
        drop(s.control(SocketControl::SetOption(SockOpt::NoDelay, 1)));
        if s.set_dispatch(SocketDispatch::Connection(Arc::new(EchoConnEvents(
            conn.clone(),
        ))))
        .is_err()
            || s.enable_events(EventMask::RECEIVE | EventMask::DISCONNECT)
                .is_err()
        {
            return;
        }
        sh.connections.fetch_add(1, Ordering::Relaxed);
        sh.conns.lock().insert(id, (s, conn));
    }
}

/// An echo server: a WSK application with one listening socket.
#[derive(Debug)]
pub struct EchoServer {
    reg: Option<WskRegistration>,
    npi: Option<WskProviderNpi>,
    listener: Option<ListenSocket>,
    shared: Arc<EchoShared>,
    addr: SocketAddr,
}

impl std::fmt::Debug for EchoShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EchoShared")
            .field("connections", &self.connections.load(Ordering::Relaxed))
            .finish()
    }
}

impl EchoServer {
    /// Register as a WSK application on `registrar`, capture the provider (waiting up to
    /// 10 s for it), and listen on `bind`.
    pub fn start(registrar: &Registrar, bind: SocketAddr) -> Result<EchoServer> {
        let reg = WskRegistration::register_named(
            registrar,
            "echo-server",
            WskClientDispatch::new(WSK_VERSION_1_0),
        )?;
        let npi = reg.capture_provider_npi(CAPTURE_WAIT_MS)?;
        let shared = Arc::new(EchoShared::default());
        let listener = npi.listen_socket(
            Family::of(&bind),
            Some(Arc::new(EchoListen(Arc::downgrade(&shared)))),
        )?;
        listener.bind(bind).wait()?;
        listener.enable_events(EventMask::ACCEPT)?;
        let addr = listener.local_address()?;
        Ok(EchoServer {
            reg: Some(reg),
            npi: Some(npi),
            listener: Some(listener),
            shared,
            addr,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Current counters.
    pub fn stats(&self) -> EchoStats {
        let s = &self.shared;
        let conns = s.conns.lock();
        let live: u64 = conns
            .values()
            .map(|(_, c)| c.bytes.load(Ordering::Relaxed))
            .sum();
        EchoStats {
            connections: s.connections.load(Ordering::Relaxed),
            active: conns.len() as u64,
            bytes_echoed: s.closed_bytes.load(Ordering::Relaxed) + live,
            pauses: s.pauses.load(Ordering::Relaxed),
        }
    }

    /// Close the listener and every connection, release the capture and deregister.
    pub fn stop(mut self) -> EchoStats {
        self.shutdown()
    }

    fn shutdown(&mut self) -> EchoStats {
        self.shared.stopping.store(true, Ordering::Release);
        drop(self.listener.take());
        let stats = self.stats();
        let conns = std::mem::take(&mut *self.shared.conns.lock());
        drop(conns);
        drop(self.npi.take());
        if let Some(r) = self.reg.take() {
            r.deregister();
        }
        stats
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Shape of the load a [`LoadClient`] generates.
#[derive(Clone, Copy, Debug)]
pub struct LoadConfig {
    /// Concurrent connections.
    pub connections: usize,
    /// Bytes per request (each is echoed back in full before the next one).
    pub message_size: usize,
}

impl Default for LoadConfig {
    fn default() -> Self {
        LoadConfig {
            connections: 8,
            message_size: 64,
        }
    }
}

/// When a run stops: the first limit reached (at least one should be set; with none the
/// run lasts one second). Request and byte limits are split evenly over the connections.
#[derive(Clone, Copy, Debug, Default)]
pub struct RunLimit {
    /// Wall-clock duration.
    pub duration: Option<Duration>,
    /// Total requests over all connections.
    pub requests: Option<u64>,
    /// Total bytes sent over all connections.
    pub bytes: Option<u64>,
}

/// Results of a load run.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LoadStats {
    /// Connections used.
    pub connections: u64,
    /// Completed round trips.
    pub requests: u64,
    /// Bytes sent.
    pub bytes_sent: u64,
    /// Bytes received back (checked against what was sent).
    pub bytes_echoed: u64,
    /// Failed operations or corrupted echoes.
    pub errors: u64,
    /// Time the run took.
    pub elapsed: Duration,
}

impl std::fmt::Display for LoadStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} requests over {} connections in {:.2?} ({:.0}/s), {} bytes sent, {} echoed ({:.1} MiB/s), {} errors",
            self.requests,
            self.connections,
            self.elapsed,
            self.requests_per_sec(),
            self.bytes_sent,
            self.bytes_echoed,
            self.echoed_bytes_per_sec() / (1024.0 * 1024.0),
            self.errors
        )
    }
}

impl std::fmt::Display for EchoStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} connections accepted ({} open), {} bytes echoed, {} back-pressure pauses",
            self.connections, self.active, self.bytes_echoed, self.pauses
        )
    }
}

impl LoadStats {
    /// Round trips per second.
    pub fn requests_per_sec(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Echoed bytes per second.
    pub fn echoed_bytes_per_sec(&self) -> f64 {
        self.bytes_echoed as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

struct Run {
    deadline: Instant,
    /// Per-connection quotas (the totals split evenly), so connections share no counters.
    max_requests: u64,
    max_bytes: u64,
    totals: Mutex<Tally>,
    running: Mutex<usize>,
    done: Condvar,
}

/// One connection's progress in a run; owned by its driver, added to the totals at the end.
#[derive(Clone, Copy, Debug, Default)]
struct Tally {
    requests: u64,
    sent: u64,
    echoed: u64,
    errors: u64,
}

impl Run {
    fn should_stop(&self, t: &Tally) -> bool {
        t.requests >= self.max_requests
            || t.sent >= self.max_bytes
            || Instant::now() >= self.deadline
    }

    fn finished(&self, conn: &Arc<LoadConn>, bufs: Bufs, tally: Tally) {
        *conn.bufs.lock() = Some(bufs);
        {
            let mut t = self.totals.lock();
            t.requests += tally.requests;
            t.sent += tally.sent;
            t.echoed += tally.echoed;
            t.errors += tally.errors;
        }
        let mut n = self.running.lock();
        *n -= 1;
        if *n == 0 {
            self.done.notify_all();
        }
    }

    fn failed(&self, conn: &Arc<LoadConn>, bufs: Bufs, mut tally: Tally) {
        tally.errors += 1;
        conn.broken.store(true, Ordering::Release);
        self.finished(conn, bufs, tally);
    }
}

struct Bufs {
    send: Vec<u8>,
    recv: Vec<u8>,
}

struct LoadConn {
    socket: ConnectionSocket,
    fill: u8,
    bufs: Mutex<Option<Bufs>>,
    broken: AtomicBool,
}

enum Step {
    Send(Bufs, Tally),
    /// Waiting for the echo: bytes of it received so far.
    Receive(Bufs, Tally, usize),
    /// The connection failed or the peer closed it.
    Failed(Bufs, Tally),
}

/// Drive one connection's request/response loop. Operations that finish inline are handled
/// in this loop; a pending one continues from its completion routine (on an I/O thread).
/// A connection's steps never run concurrently, so its tally needs no synchronisation.
fn drive(conn: Arc<LoadConn>, run: Arc<Run>, step: Step) {
    // The context moves along with the connection's single thread of control: no refcount
    // traffic on the shared `Run` per operation.
    let mut ctx = (conn, run);
    let mut step = step;
    loop {
        let (conn, run) = (&ctx.0, &ctx.1);
        step = match step {
            Step::Send(bufs, tally) => {
                if run.should_stop(&tally) {
                    return run.finished(conn, bufs, tally);
                }
                let Bufs { send, recv } = bufs;
                let op = conn.socket.send(send);
                let next = move |r: Result<Transfer>| match r {
                    Ok(t) => Step::Receive(Bufs { send: t.buf, recv }, tally, 0),
                    Err(_) => Step::Failed(
                        Bufs {
                            send: Vec::new(),
                            recv,
                        },
                        tally,
                    ),
                };
                match settle(op, ctx, next) {
                    Some((next, c)) => {
                        ctx = c;
                        next
                    }
                    None => return,
                }
            }
            Step::Receive(bufs, tally, got) => {
                let Bufs { send, mut recv } = bufs;
                recv.resize(send.len() - got, 0);
                let op = conn.socket.receive(recv);
                let fill = conn.fill;
                let next = move |r: Result<Transfer>| {
                    let mut tally = tally;
                    let t = match r {
                        Ok(t) if t.bytes > 0 => t,
                        Ok(t) => return Step::Failed(Bufs { send, recv: t.buf }, tally),
                        Err(_) => {
                            return Step::Failed(
                                Bufs {
                                    send,
                                    recv: Vec::new(),
                                },
                                tally,
                            );
                        }
                    };
                    if !t.data().iter().all(|&b| b == fill) {
                        tally.errors += 1;
                    }
                    tally.echoed += t.bytes as u64;
                    let got = got + t.bytes;
                    let bufs = Bufs { send, recv: t.buf };
                    if got == bufs.send.len() {
                        tally.requests += 1;
                        tally.sent += bufs.send.len() as u64;
                        Step::Send(bufs, tally)
                    } else {
                        Step::Receive(bufs, tally, got)
                    }
                };
                match settle(op, ctx, next) {
                    Some((next, c)) => {
                        ctx = c;
                        next
                    }
                    None => return,
                }
            }
            Step::Failed(bufs, tally) => return run.failed(conn, bufs, tally),
        };
    }
}

/// What a connection's driver carries from step to step.
type DriveCtx = (Arc<LoadConn>, Arc<Run>);

/// If `op` already completed, map its result now; otherwise continue `drive` from its
/// completion routine and return `None`.
fn settle(
    op: Op<Transfer>,
    ctx: DriveCtx,
    next: impl FnOnce(Result<Transfer>) -> Step + Send + 'static,
) -> Option<(Step, DriveCtx)> {
    if op.is_complete() {
        return Some((next(op.wait()), ctx));
    }
    op.on_complete(move |r| drive(ctx.0, ctx.1, next(r)));
    None
}

/// A load-generating WSK application with persistent connections to one target.
#[derive(Debug)]
pub struct LoadClient {
    reg: Option<WskRegistration>,
    npi: Option<WskProviderNpi>,
    conns: Vec<Arc<LoadConn>>,
    cfg: LoadConfig,
}

impl std::fmt::Debug for LoadConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadConn")
            .field("socket", &self.socket)
            .finish()
    }
}

impl LoadClient {
    /// Register as a WSK application and open `cfg.connections` connections to `target`
    /// with `WskSocketConnect`.
    pub fn connect(
        registrar: &Registrar,
        target: SocketAddr,
        cfg: LoadConfig,
    ) -> Result<LoadClient> {
        if cfg.connections == 0 || cfg.message_size == 0 {
            return Err(Error::InvalidParameter(
                "connections and message_size must be positive",
            ));
        }
        let reg = WskRegistration::register_named(
            registrar,
            "load-client",
            WskClientDispatch::new(WSK_VERSION_1_0),
        )?;
        let npi = reg.capture_provider_npi(CAPTURE_WAIT_MS)?;
        let local: SocketAddr = match Family::of(&target) {
            Family::V4 => (std::net::Ipv4Addr::LOCALHOST, 0).into(),
            Family::V6 => (std::net::Ipv6Addr::LOCALHOST, 0).into(),
        };
        let ops: Vec<_> = (0..cfg.connections)
            .map(|_| npi.socket_connect(SOCK_STREAM, IPPROTO_TCP, local, target, 0, None))
            .collect();
        let mut conns = Vec::with_capacity(ops.len());
        for (i, op) in ops.into_iter().enumerate() {
            let socket = op.wait()?;
            socket
                .control(SocketControl::SetOption(SockOpt::NoDelay, 1))
                .wait()?;
            let fill = (i % 251) as u8 + 1;
            let bufs = Bufs {
                send: vec![fill; cfg.message_size],
                recv: Vec::with_capacity(cfg.message_size.min(256 << 10)),
            };
            conns.push(Arc::new(LoadConn {
                socket,
                fill,
                bufs: Mutex::new(Some(bufs)),
                broken: AtomicBool::new(false),
            }));
        }
        Ok(LoadClient {
            reg: Some(reg),
            npi: Some(npi),
            conns,
            cfg,
        })
    }

    /// Run round trips on every connection until `limit`; returns what happened. Broken
    /// connections (errors) are skipped in later runs.
    pub fn run(&self, limit: RunLimit) -> LoadStats {
        let none = limit.duration.is_none() && limit.requests.is_none() && limit.bytes.is_none();
        let duration = limit.duration.unwrap_or(if none {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(3600)
        });
        let start = Instant::now();
        let live: Vec<_> = self
            .conns
            .iter()
            .filter(|c| !c.broken.load(Ordering::Acquire))
            .cloned()
            .collect();
        let n = live.len().max(1) as u64;
        let run = Arc::new(Run {
            deadline: start + duration,
            max_requests: limit.requests.map_or(u64::MAX, |r| r.div_ceil(n)),
            max_bytes: limit.bytes.map_or(u64::MAX, |b| b.div_ceil(n)),
            totals: Mutex::new(Tally::default()),
            running: Mutex::new(live.len()),
            done: Condvar::new(),
        });
        for c in &live {
            let mut bufs = c.bufs.lock().take().unwrap_or_else(|| Bufs {
                send: Vec::new(),
                recv: Vec::new(),
            });
            if bufs.send.len() != self.cfg.message_size {
                bufs.send = vec![c.fill; self.cfg.message_size];
            }
            drive(c.clone(), run.clone(), Step::Send(bufs, Tally::default()));
        }
        {
            // Every connection stops at its next request once a limit is hit; the grace
            // period bounds the wait if the server stops answering.
            let hard = start + duration + Duration::from_secs(10);
            let mut n = run.running.lock();
            while *n > 0 {
                if run.done.wait_until(&mut n, hard).timed_out() {
                    break;
                }
            }
        }
        let elapsed = start.elapsed();
        let t = *run.totals.lock();
        LoadStats {
            connections: live.len() as u64,
            requests: t.requests,
            bytes_sent: t.sent,
            bytes_echoed: t.echoed,
            errors: t.errors,
            elapsed,
        }
    }

    /// Close the connections, release the capture and deregister.
    pub fn close(mut self) {
        self.shutdown();
    }

    /// Unload the way the WSK unload story goes: `WskDeregister` starts while the
    /// connections are still open, so once the capture is released the provider's detach
    /// of this application stays pending; `while_pending` runs then (e.g. to show the
    /// registrar's state). Closing the connections afterwards completes the detach, the
    /// cleanups run, and the deregistration returns before this does.
    pub fn unload_with_sockets_open(mut self, while_pending: impl FnOnce()) {
        let Some(reg) = self.reg.take() else {
            return self.shutdown();
        };
        reg.start_deregister();
        let deregistering = std::thread::spawn(move || reg.deregister());
        drop(self.npi.take());
        while_pending();
        self.shutdown();
        if deregistering.join().is_err() {
            tracing::error!(target: "wsk", "WskDeregister panicked");
        }
    }

    fn shutdown(&mut self) {
        for c in self.conns.drain(..) {
            // Closing cancels whatever is still pending.
            c.socket.handle().0.close();
        }
        drop(self.npi.take());
        if let Some(r) = self.reg.take() {
            r.deregister();
        }
    }
}

impl Drop for LoadClient {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Connect, run once, close: the whole load-client lifecycle.
pub fn run_load(
    registrar: &Registrar,
    target: SocketAddr,
    cfg: &LoadConfig,
    limit: RunLimit,
) -> Result<LoadStats> {
    let client = LoadClient::connect(registrar, target, *cfg)?;
    let stats = client.run(limit);
    client.close();
    Ok(stats)
}
