//! Two processes: this test process as the client, the built `kmcl-echo` binary as the
//! server, talking over a memfd mapping, eventfds and a Unix socket.

use std::io::{Read, Write};
use std::os::unix::net::UnixListener as StdListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use kmcl::{Channel, ChannelHandle, Error, Phase, SendFlags, StateCallbacks};

static NEXT: AtomicUsize = AtomicUsize::new(0);

fn temp_socket() -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!(
        "kmcl-test-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("echo.sock");
    (dir, path)
}

struct Echo {
    child: Child,
    dir: PathBuf,
    path: PathBuf,
}

impl Echo {
    fn spawn() -> Echo {
        let (dir, path) = temp_socket();
        let child = Command::new(env!("CARGO_BIN_EXE_kmcl-echo"))
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn kmcl-echo");
        // Wait until it listens (no time limit assertion: a broken binary fails the connect
        // below after it exits).
        for _ in 0..10_000 {
            if std::os::unix::net::UnixStream::connect(&path).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Echo { child, dir, path }
    }

    fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig).unwrap();
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

type Log = Arc<Mutex<Vec<&'static str>>>;

fn logged(log: &Log) -> StateCallbacks {
    let l = |name: &'static str| {
        let log = log.clone();
        move |_: &ChannelHandle| log.lock().unwrap().push(name)
    };
    let lo = log.clone();
    StateCallbacks::new()
        .on_opened(move |_| {
            lo.lock().unwrap().push("opened");
            Ok(())
        })
        .on_started(l("started"))
        .on_post_started(l("post_started"))
        .on_suspend(l("suspend"))
        .on_closed(l("closed"))
}

fn until(mut f: impl FnMut() -> bool) {
    while !f() {
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn client(echo: &Echo, log: &Log) -> Channel {
    let ch = Channel::connect_unix(&echo.path).unwrap();
    ch.set_ring_page_counts(64, 64).unwrap();
    ch.set_max_packet_size(64 * 1024).unwrap();
    ch.set_state_change_callbacks(logged(log)).unwrap();
    ch.enable().unwrap();
    ch
}

#[test]
fn echo_answers_requests_of_every_size() {
    let echo = Echo::spawn();
    let log = Log::default();
    let ch = client(&echo, &log);
    for len in [0usize, 1, 7, 8, 9, 64, 4000, 4096, 65_536] {
        let payload: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
        assert_eq!(
            ch.send_synchronous_request(&payload, None).unwrap(),
            payload,
            "len {len}"
        );
    }
    assert_eq!(*log.lock().unwrap(), ["opened", "started", "post_started"]);
    let c = ch.counters();
    assert_eq!(c.completions_received, 9);
    ch.disable().unwrap();
    assert_eq!(
        *log.lock().unwrap(),
        ["opened", "started", "post_started", "suspend", "closed"]
    );
    ch.cleanup().unwrap();
}

#[test]
fn pipelined_transactions_all_complete_with_their_own_payload() {
    let echo = Echo::spawn();
    let log = Log::default();
    let ch = client(&echo, &log);
    let (tx, rx) = mpsc::channel();
    let n = 3000u32;
    for i in 0..n {
        let tx = tx.clone();
        ch.send(
            &i.to_le_bytes().repeat(16),
            SendFlags::WAIT_FOR_COMPLETION,
            move |c| {
                tx.send((i, c.result.map(|r| r.to_vec()).map_err(|e| e.to_string())))
                    .unwrap();
            },
        )
        .unwrap();
    }
    let mut seen = vec![false; n as usize];
    for _ in 0..n {
        let (i, r) = rx.recv().unwrap();
        assert_eq!(r.unwrap(), i.to_le_bytes().repeat(16));
        seen[i as usize] = true;
    }
    assert!(seen.iter().all(|&s| s));
    let c = ch.counters();
    assert_eq!(c.packets_sent, u64::from(n));
    assert!(c.signals_sent <= u64::from(n));
    ch.disable().unwrap();
    ch.cleanup().unwrap();
}

#[test]
fn one_echo_serves_several_channels_and_outlives_them() {
    let echo = Echo::spawn();
    let threads: Vec<_> = (0..3u8)
        .map(|k| {
            let path = echo.path.clone();
            std::thread::spawn(move || {
                let ch = Channel::connect_unix(&path).unwrap();
                ch.enable().unwrap();
                for i in 0..50u8 {
                    assert_eq!(ch.send_synchronous_request(&[k, i], None).unwrap(), [k, i]);
                }
                ch.disable().unwrap();
                ch.cleanup().unwrap();
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let log = Log::default();
    let ch = client(&echo, &log);
    assert_eq!(
        ch.send_synchronous_request(b"still there", None).unwrap(),
        b"still there"
    );
    ch.disable().unwrap();
    ch.cleanup().unwrap();
}

#[test]
fn killing_echo_mid_stream_closes_the_channel_and_fails_outstanding_transactions() {
    let mut echo = Echo::spawn();
    let log = Log::default();
    let ch = client(&echo, &log);
    // Traffic flows.
    let done = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    for i in 0..500u32 {
        let (d, f) = (done.clone(), failed.clone());
        ch.send(
            &i.to_le_bytes(),
            SendFlags::WAIT_FOR_COMPLETION,
            move |c| match c.result {
                Ok(_) => drop(d.fetch_add(1, Ordering::SeqCst)),
                Err(Error::DeviceRemoved) => drop(f.fetch_add(1, Ordering::SeqCst)),
                Err(e) => panic!("{e}"),
            },
        )
        .unwrap();
    }
    until(|| done.load(Ordering::SeqCst) + failed.load(Ordering::SeqCst) == 500);
    // Freeze the server so the next requests stay outstanding, then kill it.
    echo.signal(nix::sys::signal::Signal::SIGSTOP);
    let pid = nix::unistd::Pid::from_raw(echo.child.id() as i32);
    let stopped =
        nix::sys::wait::waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WUNTRACED)).unwrap();
    assert!(
        matches!(stopped, nix::sys::wait::WaitStatus::Stopped(..)),
        "{stopped:?}"
    );
    for i in 0..20u32 {
        let (d, f) = (done.clone(), failed.clone());
        ch.send(
            &i.to_le_bytes(),
            SendFlags::WAIT_FOR_COMPLETION,
            move |c| match c.result {
                Ok(_) => drop(d.fetch_add(1, Ordering::SeqCst)),
                Err(Error::DeviceRemoved) => drop(f.fetch_add(1, Ordering::SeqCst)),
                Err(e) => panic!("{e}"),
            },
        )
        .unwrap();
    }
    let h = ch.handle();
    let sync = std::thread::spawn(move || h.send_synchronous_request(b"never answered", None));
    until(|| ch.counters().packets_sent >= 521);
    echo.signal(nix::sys::signal::Signal::SIGKILL);
    let _ = echo.child.wait();
    until(|| ch.phase() == Phase::Closed && log.lock().unwrap().len() == 5);
    assert!(matches!(sync.join().unwrap(), Err(Error::DeviceRemoved)));
    until(|| done.load(Ordering::SeqCst) + failed.load(Ordering::SeqCst) == 520);
    assert_eq!(
        failed.load(Ordering::SeqCst),
        20,
        "the frozen requests failed"
    );
    assert_eq!(
        *log.lock().unwrap(),
        ["opened", "started", "post_started", "suspend", "closed"]
    );
    assert!(matches!(
        ch.send(b"x", SendFlags::NONE, |_| {}),
        Err(Error::DeviceRemoved)
    ));
    assert!(matches!(
        ch.send_synchronous_request(b"x", None),
        Err(Error::DeviceRemoved)
    ));
    ch.disable().unwrap();
    ch.cleanup().unwrap();
}

#[test]
fn packets_without_completion_are_absorbed_and_ordering_is_kept() {
    let echo = Echo::spawn();
    let log = Log::default();
    let ch = client(&echo, &log);
    let (tx, rx) = mpsc::channel();
    for i in 0..1000u32 {
        let tx = tx.clone();
        ch.send(&i.to_le_bytes(), SendFlags::NONE, move |c| {
            tx.send(c.result.map(|r| r.len())).unwrap()
        })
        .unwrap();
    }
    for _ in 0..1000 {
        assert_eq!(
            rx.recv().unwrap().unwrap(),
            0,
            "completed once in the ring, no response"
        );
    }
    // The echo answers only what asks for an answer: the next request gets its own payload.
    assert_eq!(
        ch.send_synchronous_request(b"after", None).unwrap(),
        b"after"
    );
    assert_eq!(ch.counters().completions_received, 1);
    assert_eq!(ch.counters().stale_completions, 0);
    ch.disable().unwrap();
    ch.cleanup().unwrap();
}

#[test]
fn connecting_to_a_missing_socket_fails_at_once() {
    let (dir, path) = temp_socket();
    assert!(matches!(Channel::connect_unix(&path), Err(Error::Io(_))));
    let _ = std::fs::remove_dir_all(dir);
}

/// A hand-written server speaking PROTOCOL.md, which corrupts the ring it writes to.
#[test]
fn a_peer_that_corrupts_the_ring_stops_the_channel() {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    use std::io::IoSliceMut;
    use std::os::fd::AsRawFd;

    let (dir, path) = temp_socket();
    let listener = StdListener::bind(&path).unwrap();
    let log = Log::default();
    let ch = Channel::connect_unix(&path).unwrap();
    ch.set_ring_page_counts(2, 3).unwrap();
    ch.set_max_packet_size(4096).unwrap();
    ch.set_state_change_callbacks(logged(&log)).unwrap();
    ch.enable().unwrap();
    let (mut sock, _) = listener.accept().unwrap();
    // OFFER {version 1, reserved}.
    let mut offer = Vec::new();
    for w in [1u32, 8, 1, 0] {
        offer.extend_from_slice(&w.to_le_bytes());
    }
    sock.write_all(&offer).unwrap();
    // OPEN: 8-byte header + 16-byte body, with 3 descriptors.
    let mut msg = [0u8; 24];
    let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 3]);
    let mut iov = [IoSliceMut::new(&mut msg)];
    let r = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::empty(),
    )
    .unwrap();
    let mut fds = Vec::new();
    for c in r.cmsgs().unwrap() {
        if let ControlMessageOwned::ScmRights(f) = c {
            fds.extend(f);
        }
    }
    assert_eq!(r.bytes, 24);
    let word = |i: usize| u32::from_le_bytes(msg[i * 4..i * 4 + 4].try_into().unwrap());
    assert_eq!((word(0), word(1)), (2, 16), "OPEN with a 16-byte body");
    assert_eq!(
        (word(2), word(3), word(4)),
        (1, 3, 2),
        "version, c2s pages, s2c pages"
    );
    assert_eq!(fds.len(), 3);
    // Map the client's memory (reopened through /proc, no unsafe needed) and corrupt the
    // server->client ring's write index before answering.
    let mem = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(format!("/proc/self/fd/{}", fds[0]))
        .unwrap();
    let len = (3 + 2 + 2) * 4096;
    let region = kmcl::shmem::Region::map(&mem, len).unwrap();
    let s2c = kmcl::shmem::RingView::new(region, 4 * 4096, 2).unwrap();
    use kmcl::ring::{ControlWord, RingMemory};
    s2c.store(
        ControlWord::WriteIndex,
        13,
        std::sync::atomic::Ordering::SeqCst,
    );
    let mut result = Vec::new();
    for w in [3u32, 4, 0] {
        result.extend_from_slice(&w.to_le_bytes());
    }
    sock.write_all(&result).unwrap();
    until(|| ch.phase() == Phase::Closed && log.lock().unwrap().len() == 5);
    assert!(matches!(
        ch.stop_reason(),
        Some(Error::RingCorrupt(kmcl::ring::Corruption::WriteIndex(13)))
    ));
    assert_eq!(
        *log.lock().unwrap(),
        ["opened", "started", "post_started", "suspend", "closed"]
    );
    // The client told us it is gone: CLOSE {type 4, len 0}, then EOF.
    let mut close = Vec::new();
    sock.read_to_end(&mut close).unwrap();
    assert_eq!(close, [4, 0, 0, 0, 0, 0, 0, 0]);
    ch.disable().unwrap();
    ch.cleanup().unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

// ---------------------------------------------------------------------------------------
// GPADLs across processes

use kmcl::{ExternalRange, GpadlBuffer, GpadlFlags, GpadlHandle};

/// Sends a packet with external data and waits for the answer.
fn external_request(
    ch: &Channel,
    payload: &[u8],
    ranges: &[ExternalRange],
) -> Result<Vec<u8>, Error> {
    let (tx, rx) = mpsc::channel();
    ch.send_with_external(payload, ranges, move |c| {
        let _ = tx.send(c.result.map(<[u8]>::to_vec));
    })?;
    rx.recv().unwrap()
}

fn echo_command(ch: &Channel, command: &[u8], h: GpadlHandle) -> String {
    let mut p = command.to_vec();
    p.extend_from_slice(&h.raw().to_le_bytes());
    String::from_utf8(ch.send_synchronous_request(&p, None).unwrap()).unwrap()
}

#[test]
fn external_data_through_a_shared_gpadl_with_kmcl_echo() {
    let echo = Echo::spawn();
    let log = Log::default();
    let ch = client(&echo, &log);
    until(|| ch.phase() == Phase::Opened { running: true });
    // A heap buffer cannot reach another process.
    let heap = GpadlBuffer::heap(4096).unwrap();
    assert!(matches!(
        ch.create_gpadl_from_buffer(&heap, GpadlFlags::NONE),
        Err(Error::BufferNotShareable)
    ));
    let buf = GpadlBuffer::shared(16 * 4096).unwrap();
    let pattern: Vec<u8> = (0..16 * 4096).map(|i| (i * 13 % 256) as u8).collect();
    buf.write(0, &pattern).unwrap();
    let rw = ch.create_gpadl_from_buffer(&buf, GpadlFlags::NONE).unwrap();
    let ro = ch
        .create_gpadl_from_buffer(&buf, GpadlFlags::READ_ONLY)
        .unwrap();
    for (offset, len) in [(0usize, 1usize), (4095, 2), (100, 9000), (0, 16 * 4096)] {
        for h in [rw, ro] {
            let reply = external_request(
                &ch,
                b"p",
                &[ExternalRange {
                    gpadl: h,
                    offset,
                    len,
                }],
            )
            .unwrap();
            assert_eq!(reply[0], b'p');
            assert_eq!(
                &reply[1..],
                &pattern[offset..offset + len],
                "{offset} {len}"
            );
        }
    }
    // Several ranges in two GPADLs, in order.
    let reply = external_request(
        &ch,
        b"",
        &[
            ExternalRange {
                gpadl: ro,
                offset: 5000,
                len: 10,
            },
            ExternalRange {
                gpadl: rw,
                offset: 7,
                len: 3,
            },
        ],
    )
    .unwrap();
    assert_eq!(&reply[..10], &pattern[5000..5010]);
    assert_eq!(&reply[10..], &pattern[7..10]);
    ch.delete_gpadl(rw).unwrap();
    ch.delete_gpadl(ro).unwrap();
    assert!(matches!(ch.delete_gpadl(ro), Err(Error::UnknownGpadl(_))));
    ch.disable().unwrap();
    ch.cleanup().unwrap();
}

#[test]
fn delete_waits_until_kmcl_echo_unmaps() {
    let echo = Echo::spawn();
    let log = Log::default();
    let ch = Arc::new(client(&echo, &log));
    until(|| ch.phase() == Phase::Opened { running: true });
    let buf = GpadlBuffer::shared(4096).unwrap();
    let h = ch.create_gpadl_from_buffer(&buf, GpadlFlags::NONE).unwrap();
    assert_eq!(echo_command(&ch, kmcl::echo::MAP_COMMAND, h), "ok");
    // Mapped: a second mapping is refused by the server.
    assert!(echo_command(&ch, kmcl::echo::MAP_COMMAND, h).contains("already mapped"));
    let deleter = {
        let ch = ch.clone();
        std::thread::spawn(move || ch.delete_gpadl(h))
    };
    // Once the teardown request reached the server, it refuses to map the GPADL again;
    // the deletion is still waiting for the unmap.
    until(|| echo_command(&ch, kmcl::echo::MAP_COMMAND, h).contains("being deleted"));
    assert!(!deleter.is_finished());
    assert_eq!(echo_command(&ch, kmcl::echo::UNMAP_COMMAND, h), "ok");
    deleter.join().unwrap().unwrap();
    assert!(echo_command(&ch, kmcl::echo::MAP_COMMAND, h).contains("unknown GPADL"));
    ch.disable().unwrap();
    ch.cleanup().unwrap();
}

#[test]
fn gpadls_left_at_close_are_deleted_by_kmcl_and_a_dead_server_releases_deletes() {
    let echo = Echo::spawn();
    let log = Log::default();
    let ch = Arc::new(client(&echo, &log));
    until(|| ch.phase() == Phase::Opened { running: true });
    let buf = GpadlBuffer::shared(4096).unwrap();
    let a = ch.create_gpadl_from_buffer(&buf, GpadlFlags::NONE).unwrap();
    let b = ch.create_gpadl_from_buffer(&buf, GpadlFlags::NONE).unwrap();
    assert_eq!(echo_command(&ch, kmcl::echo::MAP_COMMAND, a), "ok");
    let deleter = {
        let ch = ch.clone();
        std::thread::spawn(move || ch.delete_gpadl(a))
    };
    until(|| echo_command(&ch, kmcl::echo::MAP_COMMAND, a).contains("being deleted"));
    // The server dies with the GPADL mapped: the deletion returns.
    echo.signal(nix::sys::signal::Signal::SIGKILL);
    deleter.join().unwrap().unwrap();
    until(|| log.lock().unwrap().last() == Some(&"closed"));
    // `b` was never deleted: kmcl deleted it when Closed returned.
    assert_eq!(ch.counters().gpadls_deleted_at_close, 1);
    assert!(matches!(ch.delete_gpadl(b), Err(Error::UnknownGpadl(_))));
    // The memory is still the client's.
    buf.write(0, b"mine").unwrap();
    ch.disable().unwrap();
    ch.cleanup().unwrap();
}

/// A hand-written client speaking PROTOCOL.md against a kmcl server: GPADL creations it
/// should refuse, and GPA-direct packets whose ranges point outside the GPADL.
#[test]
fn a_hostile_client_cannot_make_the_server_read_outside_a_gpadl() {
    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    use std::io::IoSlice;
    use std::os::fd::{AsFd, AsRawFd};

    let (dir, path) = temp_socket();
    let listener = kmcl::UnixListener::bind(&path).unwrap();
    let mut raw = std::os::unix::net::UnixStream::connect(&path).unwrap();
    let server = Channel::allocate(kmcl::Role::Server, listener.accept().unwrap()).unwrap();
    type Seen = Arc<Mutex<Vec<Result<Vec<u8>, String>>>>;
    let seen: Seen = Arc::default();
    let s2 = seen.clone();
    server
        .set_process_packet_callbacks(
            move |_ch, p| {
                let r = p
                    .external_data()
                    .map(|d| d.to_vec())
                    .map_err(|e| e.to_string());
                s2.lock().unwrap().push(r);
                let _ = p.complete(&[]);
            },
            None::<fn(&ChannelHandle, u32)>,
        )
        .unwrap();
    server.enable().unwrap();
    server.start().unwrap();

    let send = |sock: &std::os::unix::net::UnixStream, words: &[u32], fds: &[i32]| {
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        let cmsg = [ControlMessage::ScmRights(fds)];
        let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &cmsg };
        let n = sendmsg::<()>(
            sock.as_raw_fd(),
            &[IoSlice::new(&bytes)],
            cmsgs,
            MsgFlags::empty(),
            None,
        )
        .unwrap();
        assert_eq!(n, bytes.len());
    };
    let recv_words = |sock: &mut std::os::unix::net::UnixStream, n: usize| {
        let mut b = vec![0u8; n * 4];
        sock.read_exact(&mut b).unwrap();
        b.chunks(4)
            .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
            .collect::<Vec<u32>>()
    };
    assert_eq!(recv_words(&mut raw, 4), [1, 8, 1, 0], "OFFER");
    // Rings: 2 + 2 data pages, zeroed, sealed; two eventfds.
    let (rings, rings_fd) = kmcl::shmem::Region::memfd("rings", 6 * 4096, true).unwrap();
    let efd = || {
        nix::sys::eventfd::EventFd::from_value_and_flags(
            0,
            nix::sys::eventfd::EfdFlags::EFD_NONBLOCK,
        )
        .unwrap()
    };
    let (to_client, to_server) = (efd(), efd());
    send(
        &raw,
        &[2, 16, 1, 2, 2, 0],
        &[
            rings_fd.as_raw_fd(),
            to_client.as_fd().as_raw_fd(),
            to_server.as_fd().as_raw_fd(),
        ],
    );
    assert_eq!(recv_words(&mut raw, 3), [3, 4, 0], "OPEN_RESULT success");
    // GPADL_CREATE refusals: an unsealed memfd, 0 pages, a file too short, unknown flags.
    let unsealed = kmcl::shmem::Region::memfd("unsealed", 2 * 4096, false)
        .unwrap()
        .1;
    let (_g, gpadl_fd) = kmcl::shmem::Region::memfd("gpadl", 2 * 4096, true).unwrap();
    for (words, fd) in [
        ([5u32, 16, 9, 2, 0, 0], unsealed.as_raw_fd()),
        ([5, 16, 9, 0, 0, 0], gpadl_fd.as_raw_fd()),
        ([5, 16, 9, 3, 0, 0], gpadl_fd.as_raw_fd()),
        ([5, 16, 9, 2, 2, 0], gpadl_fd.as_raw_fd()),
    ] {
        send(&raw, &words, &[fd]);
        assert_eq!(recv_words(&mut raw, 4), [6, 8, 9, 0xC000_000D], "{words:?}");
    }
    // A good one: handle 9, 2 pages, filled with 0x77 past a marker.
    _g.write_at(0, &[0x77; 2 * 4096]).unwrap();
    send(&raw, &[5, 16, 9, 2, 0, 0], &[gpadl_fd.as_raw_fd()]);
    assert_eq!(
        recv_words(&mut raw, 4),
        [6, 8, 9, 0],
        "GPADL_CREATED success"
    );
    // Its handle is now taken.
    send(&raw, &[5, 16, 9, 2, 0, 0], &[gpadl_fd.as_raw_fd()]);
    assert_eq!(recv_words(&mut raw, 4), [6, 8, 9, 0xC000_000D]);

    // GPA-direct packets into the client->server ring.
    let c2s = kmcl::shmem::RingView::new(rings, 0, 2).unwrap();
    let mut ring = kmcl::ring::OutgoingRing::new(c2s).unwrap();
    let pfn = |h: u64, page: u64| (h << 32) | page;
    let mut write_gpa = |ranges: &[(u32, u32, &[u64])]| {
        let mut ext = Vec::new();
        ext.extend_from_slice(&0u32.to_le_bytes());
        ext.extend_from_slice(&(ranges.len() as u32).to_le_bytes());
        for (count, offset, pfns) in ranges {
            ext.extend_from_slice(&count.to_le_bytes());
            ext.extend_from_slice(&offset.to_le_bytes());
            for p in *pfns {
                ext.extend_from_slice(&p.to_le_bytes());
            }
        }
        let header = kmcl::ring::PacketHeader {
            packet_type: kmcl::ring::TYPE_GPA_DIRECT,
            flags: 0,
            trans_id: 0,
        };
        assert!(ring.try_write(header, &ext, &[]).unwrap());
        if ring.commit().unwrap() {
            to_server.write(1).unwrap();
        }
    };
    // Valid: the last 10 bytes of the GPADL.
    write_gpa(&[(10, 4086, &[pfn(9, 1)])]);
    until(|| seen.lock().unwrap().len() == 1);
    assert_eq!(seen.lock().unwrap()[0], Ok(vec![0x77; 10]));
    // One byte past the end: refused, and the packet (and the queue) fails.
    write_gpa(&[(11, 4086, &[pfn(9, 1), pfn(9, 2)])]);
    until(|| seen.lock().unwrap().len() == 2);
    let e = seen.lock().unwrap()[1].clone().unwrap_err();
    assert!(e.contains("outside GPADL 9"), "{e}");
    assert!(matches!(
        server.stop_reason(),
        Some(Error::ExternalRangeOutOfBounds {
            handle: 9,
            size: 8192
        })
    ));
    // The queue is stopped: nothing else is delivered.
    write_gpa(&[(1, 0, &[pfn(9, 0)])]);
    send(&raw, &[4, 0], &[]); // CLOSE
    until(|| server.phase() == Phase::Closed);
    assert_eq!(seen.lock().unwrap().len(), 2);
    server.disable().unwrap();
    server.cleanup().unwrap();
    let _ = std::fs::remove_dir_all(dir);
}
