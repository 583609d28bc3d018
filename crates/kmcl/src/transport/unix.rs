//! Two processes: rings in a sealed memfd mapped shared by both, signals through eventfds,
//! and a small control protocol over a Unix stream socket that passes the descriptors with
//! `SCM_RIGHTS` (the way vhost-user does). The wire format is specified in `PROTOCOL.md`.

#![forbid(unsafe_code)]

use std::fs::File;
use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

use nix::fcntl::{FcntlArg, OFlag, SealFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};

use super::{Connector, Established, Link, OpenParams, Wake};
use crate::Error;
use crate::gpadl::{GpadlBuffer, GpadlFlags, GpadlHandle, Gpadls, MAX_GPADL_PAGES, Teardown};
use crate::lifecycle::Role;
use crate::shmem::{PAGE_SIZE, Region, RingView, adopt_received_fd};
use crate::sync::Arc;

/// Protocol version carried by OFFER and OPEN.
pub const PROTOCOL_VERSION: u32 = 1;
/// Message type: server → client, a channel is offered.
pub const MSG_OFFER: u32 = 1;
/// Message type: client → server, open the channel (carries 3 descriptors).
pub const MSG_OPEN: u32 = 2;
/// Message type: server → client, result of the open.
pub const MSG_OPEN_RESULT: u32 = 3;
/// Message type: either direction, the sender closes the channel.
pub const MSG_CLOSE: u32 = 4;
/// Message type: client → server, create a GPADL (carries its memfd).
pub const MSG_GPADL_CREATE: u32 = 5;
/// Message type: server → client, result of a GPADL creation.
pub const MSG_GPADL_CREATED: u32 = 6;
/// Message type: client → server, tear a GPADL down.
pub const MSG_GPADL_TEARDOWN: u32 = 7;
/// Message type: server → client, the GPADL is torn down (no longer mapped).
pub const MSG_GPADL_TORNDOWN: u32 = 8;
/// Largest message body accepted.
const MAX_BODY: u32 = 256;
/// Largest ring accepted from a peer, in data pages (1 GiB).
const MAX_PAGES: u32 = 1 << 18;
/// OPEN_RESULT status: success.
pub const STATUS_SUCCESS: u32 = 0;
/// OPEN_RESULT status: the request was invalid (INVALID_PARAMETER).
pub const STATUS_INVALID_PARAMETER: u32 = 0xC000_000D;

fn io(e: nix::Error) -> Error {
    Error::Io(e.into())
}

struct Message {
    ty: u32,
    body: Vec<u8>,
    fds: Vec<OwnedFd>,
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[i * 4..i * 4 + 4]);
    u32::from_le_bytes(a)
}

fn send_msg(sock: &UnixStream, ty: u32, body: &[u32], fds: &[&dyn AsFd]) -> Result<(), Error> {
    let mut bytes = Vec::with_capacity(8 + body.len() * 4);
    bytes.extend_from_slice(&ty.to_le_bytes());
    bytes.extend_from_slice(&((body.len() * 4) as u32).to_le_bytes());
    for w in body {
        bytes.extend_from_slice(&w.to_le_bytes());
    }
    let raw: Vec<_> = fds.iter().map(|f| f.as_fd().as_raw_fd()).collect();
    let cmsg = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &cmsg };
    let mut sent = sendmsg::<()>(
        sock.as_raw_fd(),
        &[IoSlice::new(&bytes)],
        cmsgs,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .map_err(io)?;
    while sent < bytes.len() {
        let n = sendmsg::<()>(
            sock.as_raw_fd(),
            &[IoSlice::new(&bytes[sent..])],
            &[],
            MsgFlags::MSG_NOSIGNAL,
            None,
        )
        .map_err(io)?;
        sent += n;
    }
    Ok(())
}

/// Reads exactly `buf.len()` bytes, adopting any descriptors that arrive.
fn recv_exact(sock: &UnixStream, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> Result<(), Error> {
    let mut got = 0;
    while got < buf.len() {
        let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 4]);
        let mut iov = [IoSliceMut::new(&mut buf[got..])];
        let msg = recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(io)?;
        let n = msg.bytes;
        for c in msg.cmsgs().map_err(io)? {
            if let ControlMessageOwned::ScmRights(raw) = c {
                fds.extend(raw.into_iter().map(adopt_received_fd));
            }
        }
        if n == 0 {
            return Err(Error::DeviceRemoved);
        }
        got += n;
    }
    Ok(())
}

fn recv_msg(sock: &UnixStream) -> Result<Message, Error> {
    let mut fds = Vec::new();
    let mut hdr = [0u8; 8];
    recv_exact(sock, &mut hdr, &mut fds)?;
    let ty = u32_at(&hdr, 0);
    let len = u32_at(&hdr, 1);
    if len > MAX_BODY || !len.is_multiple_of(4) {
        return Err(Error::Protocol(
            "control message body too long or unaligned",
        ));
    }
    let mut body = vec![0u8; len as usize];
    recv_exact(sock, &mut body, &mut fds)?;
    if fds.len() > 3 {
        return Err(Error::Protocol("too many descriptors"));
    }
    Ok(Message { ty, body, fds })
}

fn set_nonblocking(fd: &impl AsFd) -> Result<(), Error> {
    fcntl(fd.as_fd().as_raw_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).map_err(io)?;
    Ok(())
}

/// Reads an eventfd to reset it; ignores "nothing to read".
fn drain_eventfd(f: &File) {
    let mut b = [0u8; 8];
    let _ = (&*f).read(&mut b);
}

fn raise_eventfd(f: &File) {
    let _ = (&*f).write(&1u64.to_ne_bytes());
}

#[derive(Debug)]
struct Signals {
    /// Written to signal the peer.
    to_peer: File,
    /// Readable when the peer signalled us.
    from_peer: File,
}

/// One endpoint of a Unix-socket transport.
#[derive(Debug)]
pub(crate) struct UnixLink {
    sock: UnixStream,
    /// Serialises writers of the socket (GPADL messages come from any thread).
    send_lock: Mutex<()>,
    kick: File,
    signals: OnceLock<Signals>,
    peer_gone: AtomicBool,
    closed: Mutex<bool>,
    peer: PathBuf,
    role: Role,
    gpadls: Arc<Gpadls>,
}

fn new_eventfd() -> Result<File, Error> {
    let e = EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
        .map_err(io)?;
    Ok(File::from(OwnedFd::from(e)))
}

impl UnixLink {
    pub(crate) fn connect(path: &Path) -> Result<Self, Error> {
        let sock = UnixStream::connect(path)?;
        Self::from_stream(sock, path.to_owned(), Role::Client)
    }

    fn from_stream(sock: UnixStream, peer: PathBuf, role: Role) -> Result<Self, Error> {
        Ok(Self {
            sock,
            send_lock: Mutex::new(()),
            kick: new_eventfd()?,
            signals: OnceLock::new(),
            peer_gone: AtomicBool::new(false),
            closed: Mutex::new(false),
            peer,
            role,
            gpadls: Arc::new(Gpadls::new()),
        })
    }

    fn send(&self, ty: u32, body: &[u32], fds: &[&dyn AsFd]) -> Result<(), Error> {
        let _g = self.send_lock.lock().unwrap_or_else(|p| p.into_inner());
        send_msg(&self.sock, ty, body, fds)
    }

    fn set_peer_gone(&self) {
        self.peer_gone.store(true, Ordering::SeqCst);
        self.gpadls.disconnect();
    }

    /// Handles one control message after the open. `Err` means the channel is over: the
    /// peer closed, died, or broke the protocol.
    fn receive_control(&self) -> Result<(), Error> {
        let m = recv_msg(&self.sock)?;
        let word = |i: usize| {
            if m.body.len() >= (i + 1) * 4 {
                Ok(u32_at(&m.body, i))
            } else {
                Err(Error::Protocol("control message body too short"))
            }
        };
        match (m.ty, self.role) {
            (MSG_CLOSE, _) => Err(Error::DeviceRemoved),
            (MSG_GPADL_CREATE, Role::Server) => {
                let handle = word(0)?;
                let status = match self.accept_gpadl(handle, word(1)?, word(2)?, m.fds) {
                    Ok(()) => STATUS_SUCCESS,
                    Err(e) => {
                        tracing::info!(handle, error = %e, "GPADL refused");
                        STATUS_INVALID_PARAMETER
                    }
                };
                self.send(MSG_GPADL_CREATED, &[handle, status], &[])
            }
            (MSG_GPADL_CREATED, Role::Client) => {
                self.gpadls.finish_create(word(0)?, word(1)?);
                Ok(())
            }
            (MSG_GPADL_TEARDOWN, Role::Server) => {
                let handle = word(0)?;
                if self.gpadls.request_teardown(handle) == Teardown::Done {
                    self.send(MSG_GPADL_TORNDOWN, &[handle], &[])?;
                }
                Ok(())
            }
            (MSG_GPADL_TORNDOWN, Role::Client) => {
                self.gpadls.finish_delete(word(0)?);
                Ok(())
            }
            _ => Err(Error::Protocol("unexpected control message after open")),
        }
    }

    /// Server: validates and maps a GPADL the client offers (`PROTOCOL.md` §5).
    fn accept_gpadl(
        &self,
        handle: u32,
        pages: u32,
        flags: u32,
        fds: Vec<OwnedFd>,
    ) -> Result<(), Error> {
        let flags = GpadlFlags::from_bits(flags)?;
        if pages == 0 || pages > MAX_GPADL_PAGES {
            return Err(Error::Protocol("GPADL page count out of range"));
        }
        let [memfd]: [OwnedFd; 1] = fds
            .try_into()
            .map_err(|_| Error::Protocol("GPADL_CREATE needs exactly 1 descriptor"))?;
        let seals = fcntl(memfd.as_raw_fd(), FcntlArg::F_GET_SEALS).map_err(io)?;
        if !SealFlag::from_bits_truncate(seals).contains(SealFlag::F_SEAL_SHRINK) {
            return Err(Error::Protocol(
                "GPADL memory is not sealed against shrinking",
            ));
        }
        let region = Region::map_with(&memfd, pages as usize * PAGE_SIZE, !flags.read_only)?;
        self.gpadls.offer(handle, region, flags.read_only)
    }

    /// On the dispatcher thread (the only reader of the socket): handles control messages
    /// until `done()` or the peer is gone.
    fn read_until(&self, done: impl Fn() -> bool) {
        while !done() && !self.peer_gone.load(Ordering::SeqCst) {
            let mut fds = [PollFd::new(self.sock.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) | Err(nix::Error::EINTR) => {}
                Err(_) => {
                    self.set_peer_gone();
                    return;
                }
            }
            if fds[0].revents().is_some_and(|r| !r.is_empty())
                && let Err(e) = self.receive_control()
            {
                tracing::debug!(error = %e, "control socket closed");
                self.set_peer_gone();
            }
        }
    }

    /// Waits for the next control message, or for a kick after which `cancelled()` is true.
    fn next_message(&self, cancelled: &dyn Fn() -> bool) -> Result<Message, Error> {
        loop {
            if cancelled() {
                return Err(Error::Cancelled);
            }
            let mut fds = [
                PollFd::new(self.sock.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.kick.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) | Err(nix::Error::EINTR) => {}
                Err(e) => return Err(io(e)),
            }
            let sock_ready = fds[0].revents().is_some_and(|r| !r.is_empty());
            let kicked = fds[1].revents().is_some_and(|r| !r.is_empty());
            if kicked {
                drain_eventfd(&self.kick);
            }
            if sock_ready {
                return recv_msg(&self.sock);
            }
        }
    }

    fn establish_client(
        &self,
        params: &OpenParams,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Established, Error> {
        let offer = self.next_message(cancelled)?;
        if offer.ty != MSG_OFFER
            || offer.body.len() < 8
            || u32_at(&offer.body, 0) != PROTOCOL_VERSION
        {
            return Err(Error::Protocol("expected OFFER version 1"));
        }
        let (c2s, s2c) = (params.client_to_server_pages, params.server_to_client_pages);
        let len = (c2s as usize + s2c as usize + 2) * PAGE_SIZE;
        let (region, memfd) = Region::memfd("kmcl-ring", len, true)?;
        let to_server = new_eventfd()?;
        let to_client = new_eventfd()?;
        send_msg(
            &self.sock,
            MSG_OPEN,
            &[PROTOCOL_VERSION, c2s, s2c, 0],
            &[&memfd, &to_client, &to_server],
        )?;
        let result = self.next_message(cancelled)?;
        if result.ty != MSG_OPEN_RESULT || result.body.len() < 4 {
            return Err(Error::Protocol("expected OPEN_RESULT"));
        }
        if u32_at(&result.body, 0) != STATUS_SUCCESS {
            return Err(Error::OpenRefused);
        }
        let outgoing = RingView::new(region.clone(), 0, c2s)?;
        let incoming = RingView::new(region, (c2s as usize + 1) * PAGE_SIZE, s2c)?;
        let _ = self.signals.set(Signals {
            to_peer: to_server,
            from_peer: to_client,
        });
        Ok(Established { outgoing, incoming })
    }

    fn establish_server(&self, cancelled: &dyn Fn() -> bool) -> Result<Established, Error> {
        send_msg(&self.sock, MSG_OFFER, &[PROTOCOL_VERSION, 0], &[])?;
        let open = self.next_message(cancelled)?;
        match self.accept_open(open) {
            Ok((est, signals)) => {
                send_msg(&self.sock, MSG_OPEN_RESULT, &[STATUS_SUCCESS], &[])?;
                let _ = self.signals.set(signals);
                Ok(est)
            }
            Err(e) => {
                let _ = send_msg(
                    &self.sock,
                    MSG_OPEN_RESULT,
                    &[STATUS_INVALID_PARAMETER],
                    &[],
                );
                Err(e)
            }
        }
    }

    fn accept_open(&self, open: Message) -> Result<(Established, Signals), Error> {
        if open.ty != MSG_OPEN || open.body.len() < 16 {
            return Err(Error::Protocol("expected OPEN"));
        }
        if u32_at(&open.body, 0) != PROTOCOL_VERSION {
            return Err(Error::Protocol("unsupported protocol version"));
        }
        let (c2s, s2c) = (u32_at(&open.body, 1), u32_at(&open.body, 2));
        if c2s == 0 || s2c == 0 || c2s > MAX_PAGES || s2c > MAX_PAGES {
            return Err(Error::Protocol("ring page counts out of range"));
        }
        let mut fds = open.fds.into_iter();
        let (Some(memfd), Some(to_client), Some(to_server)) = (fds.next(), fds.next(), fds.next())
        else {
            return Err(Error::Protocol("OPEN needs 3 descriptors"));
        };
        // The client must not be able to shrink the file under our mapping (SIGBUS).
        let seals = fcntl(memfd.as_raw_fd(), FcntlArg::F_GET_SEALS).map_err(io)?;
        let seals = SealFlag::from_bits_truncate(seals);
        if !seals.contains(SealFlag::F_SEAL_SHRINK) {
            return Err(Error::Protocol(
                "shared memory is not sealed against shrinking",
            ));
        }
        let len = (c2s as usize + s2c as usize + 2) * PAGE_SIZE;
        let region = Region::map(&memfd, len)?;
        let incoming = RingView::new(region.clone(), 0, c2s)?;
        let outgoing = RingView::new(region, (c2s as usize + 1) * PAGE_SIZE, s2c)?;
        set_nonblocking(&to_client)?;
        set_nonblocking(&to_server)?;
        Ok((
            Established { outgoing, incoming },
            Signals {
                to_peer: File::from(to_client),
                from_peer: File::from(to_server),
            },
        ))
    }
}

impl Link for UnixLink {
    fn establish(
        &self,
        params: &OpenParams,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Established, Error> {
        let r = match params.role {
            Role::Client => self.establish_client(params, cancelled),
            Role::Server => self.establish_server(cancelled),
        };
        if let Err(e) = &r
            && !matches!(e, Error::Cancelled)
        {
            tracing::info!(peer = %self.peer.display(), error = %e, "handshake failed");
        }
        r
    }

    fn signal_peer(&self) {
        if let Some(s) = self.signals.get() {
            raise_eventfd(&s.to_peer);
        }
    }

    fn kick(&self) {
        raise_eventfd(&self.kick);
    }

    fn wait(&self) -> Wake {
        if self.peer_gone.load(Ordering::SeqCst) {
            return Wake::PeerGone;
        }
        let Some(signals) = self.signals.get() else {
            // Not established: only a kick can wake us.
            let mut fds = [PollFd::new(self.kick.as_fd(), PollFlags::POLLIN)];
            let _ = poll(&mut fds, PollTimeout::NONE);
            drain_eventfd(&self.kick);
            return Wake::Events;
        };
        loop {
            let mut fds = [
                PollFd::new(self.kick.as_fd(), PollFlags::POLLIN),
                PollFd::new(signals.from_peer.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.sock.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) | Err(nix::Error::EINTR) => {}
                Err(_) => {
                    self.peer_gone.store(true, Ordering::SeqCst);
                    return Wake::PeerGone;
                }
            }
            let ready = |i: usize| fds[i].revents().is_some_and(|r| !r.is_empty());
            let (kicked, signalled, sock) = (ready(0), ready(1), ready(2));
            if kicked {
                drain_eventfd(&self.kick);
            }
            if signalled {
                drain_eventfd(&signals.from_peer);
            }
            if sock {
                // GPADL messages are handled here; CLOSE, EOF (the peer died) or anything
                // unexpected ends the channel.
                if let Err(e) = self.receive_control() {
                    match e {
                        Error::DeviceRemoved => {}
                        Error::Protocol(_) => {
                            tracing::warn!(error = %e, "control protocol violation; closing")
                        }
                        _ => tracing::debug!(error = %e, "control socket closed"),
                    }
                    self.set_peer_gone();
                    return Wake::PeerGone;
                }
            }
            if kicked || signalled {
                return Wake::Events;
            }
        }
    }

    fn close(&self) {
        let mut closed = self.closed.lock().unwrap_or_else(|p| p.into_inner());
        if !*closed {
            *closed = true;
            if !self.peer_gone.load(Ordering::SeqCst) {
                let _ = self.send(MSG_CLOSE, &[], &[]);
            }
            let _ = self.sock.shutdown(std::net::Shutdown::Both);
        }
        drop(closed);
        self.gpadls.disconnect();
    }

    fn gpadls(&self) -> &Arc<Gpadls> {
        &self.gpadls
    }

    fn create_gpadl(
        &self,
        handle: GpadlHandle,
        buffer: &GpadlBuffer,
        flags: GpadlFlags,
        on_dispatcher: bool,
    ) -> Result<(), Error> {
        let fd = buffer.fd().ok_or(Error::BufferNotShareable)?;
        self.send(
            MSG_GPADL_CREATE,
            &[handle.raw(), buffer.pages(), flags.bits(), 0],
            &[&**fd],
        )?;
        if on_dispatcher {
            self.read_until(|| !self.gpadls.create_pending(handle));
        }
        Ok(())
    }

    fn teardown_gpadl(&self, handle: GpadlHandle, on_dispatcher: bool) -> Result<(), Error> {
        if let Err(e) = self.send(MSG_GPADL_TEARDOWN, &[handle.raw()], &[]) {
            // The peer is gone: nothing maps the GPADL any more.
            tracing::debug!(error = %e, "GPADL teardown not sent");
            self.set_peer_gone();
            return Ok(());
        }
        if on_dispatcher {
            self.read_until(|| !self.gpadls.delete_pending(handle));
        }
        Ok(())
    }

    fn service_control(&self) -> Wake {
        if self.peer_gone.load(Ordering::SeqCst) {
            return Wake::PeerGone;
        }
        if self.signals.get().is_none() {
            return Wake::Events;
        }
        let mut fds = [PollFd::new(self.sock.as_fd(), PollFlags::POLLIN)];
        if matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
            && let Err(e) = self.receive_control()
        {
            tracing::debug!(error = %e, "control socket closed");
            self.set_peer_gone();
            return Wake::PeerGone;
        }
        Wake::Events
    }

    fn gpadl_torn_down(&self, handle: GpadlHandle) {
        if let Err(e) = self.send(MSG_GPADL_TORNDOWN, &[handle.raw()], &[]) {
            tracing::debug!(error = %e, "GPADL torn-down not sent");
        }
    }

    fn kind(&self) -> &'static str {
        "unix"
    }
}

impl Drop for UnixLink {
    fn drop(&mut self) {
        self.close();
    }
}

/// A server's listening Unix socket: each accepted connection carries one channel.
#[derive(Debug)]
pub struct UnixListener {
    inner: std::os::unix::net::UnixListener,
    path: PathBuf,
}

impl UnixListener {
    /// Listens on `path`, replacing a stale socket file left there.
    pub fn bind(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref().to_owned();
        if let Ok(meta) = std::fs::symlink_metadata(&path) {
            use std::os::unix::fs::FileTypeExt;
            if meta.file_type().is_socket() {
                let _ = std::fs::remove_file(&path);
            }
        }
        let inner = std::os::unix::net::UnixListener::bind(&path)?;
        Ok(Self { inner, path })
    }

    /// Waits for the next client; the returned connector must be used by a server channel.
    pub fn accept(&self) -> Result<Connector, Error> {
        let (sock, _) = self.inner.accept()?;
        let link = UnixLink::from_stream(sock, self.path.clone(), Role::Server)?;
        Ok(Connector {
            link: Box::new(link),
            role: Some(Role::Server),
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}
