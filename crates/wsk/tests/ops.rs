//! The IRP rule from the caller's side: every operation completes exactly once, whichever
//! way it is consumed (await, wait, completion routine) and however it ends (success,
//! failure, cancel, close).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::Thread;
use std::time::Duration;
use wsk::*;

const T: Duration = Duration::from_secs(10);

struct Unpark(Thread);
impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// A minimal executor: poll, park until woken.
fn block_on<F: Future>(f: F) -> F::Output {
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut f = pin!(f);
    let deadline = std::time::Instant::now() + T;
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "future never completed"
        );
        std::thread::park_timeout(Duration::from_millis(100));
    }
}

fn v4() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn pair(c: &WskClient) -> (ConnectionSocket, ConnectionSocket) {
    let l = c.listen_socket(Family::V4, None).unwrap();
    l.bind(v4()).wait().unwrap();
    let acc = l.accept();
    let s = c
        .socket_connect(
            SOCK_STREAM,
            IPPROTO_TCP,
            v4(),
            l.local_address().unwrap(),
            0,
            None,
        )
        .wait()
        .unwrap();
    (s, acc.wait().unwrap().socket)
}

#[test]
fn operations_can_be_awaited() {
    let wsk = Subsystem::new(1).unwrap();
    let c = wsk.client();
    let (a, b) = pair(&c);
    let got = block_on(async {
        let pending = b.receive(vec![0; 16]);
        a.send(b"awaited".to_vec()).await.unwrap();
        pending.await.unwrap()
    });
    assert_eq!(got.data(), b"awaited");
    let ni =
        block_on(c.get_name_info("[::1]:443".parse().unwrap(), NameInfoFlags::NUMERIC)).unwrap();
    assert_eq!((ni.host.as_str(), ni.service.as_str()), ("::1", "443"));
}

#[test]
fn completion_routines_run_exactly_once_for_every_outcome() {
    let wsk = Subsystem::new(2).unwrap();
    let c = wsk.client();
    let (a, b) = pair(&c);
    let runs = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = mpsc::channel::<Result<usize>>();
    let routine = |runs: &Arc<AtomicUsize>, tx: &mpsc::Sender<Result<usize>>| {
        let (runs, tx) = (runs.clone(), tx.clone());
        move |r: Result<Transfer>| {
            runs.fetch_add(1, Ordering::SeqCst);
            tx.send(r.map(|t| t.bytes)).unwrap();
        }
    };
    // Inline success, pending success, cancel, failure, close.
    a.send(vec![1; 10]).on_complete(routine(&runs, &tx));
    let pending = b.receive(vec![0; 100]);
    let cancelled = b.receive(vec![0; 100]);
    pending.on_complete(routine(&runs, &tx));
    cancelled.cancel();
    cancelled.on_complete(routine(&runs, &tx));
    a.send(vec![2; 5]).on_complete(routine(&runs, &tx));
    b.receive(vec![]).on_complete(routine(&runs, &tx));
    let mut results: Vec<_> = (0..5).map(|_| rx.recv_timeout(T).unwrap()).collect();
    // A receive still pending when its socket closes.
    let (_a2, b2) = pair(&c);
    let closed = b2.receive(vec![0; 100]);
    closed.on_complete(routine(&runs, &tx));
    drop(b2);
    results.push(rx.recv_timeout(T).unwrap());
    results.sort_by_key(|r| format!("{r:?}"));
    assert_eq!(
        results,
        vec![
            Ok(10),
            Ok(10),
            Ok(5),
            Err(Error::BufferTooSmall { needed: 1 }),
            Err(Error::Cancelled),
            Err(Error::Cancelled),
        ]
        .into_iter()
        .collect::<Vec<_>>()
        .tap_sort()
    );
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(runs.load(Ordering::SeqCst), 6);
    assert!(rx.try_recv().is_err(), "a routine ran twice");
}

trait TapSort {
    fn tap_sort(self) -> Self;
}
impl TapSort for Vec<Result<usize>> {
    fn tap_sort(mut self) -> Self {
        self.sort_by_key(|r| format!("{r:?}"));
        self
    }
}

#[test]
fn cancel_and_close_complete_every_kind_of_pending_operation() {
    let wsk = Subsystem::new(1).unwrap();
    let c = wsk.client();
    // Accept.
    let l = c.listen_socket(Family::V4, None).unwrap();
    l.bind(v4()).wait().unwrap();
    let acc = l.accept();
    assert_eq!(acc.returned(), Status::PENDING);
    acc.cancel();
    assert_eq!(acc.wait().unwrap_err(), Error::Cancelled);
    // The listener still accepts afterwards.
    let next = l.accept();
    let s = c
        .socket_connect(SOCK_STREAM, 0, v4(), l.local_address().unwrap(), 0, None)
        .wait()
        .unwrap();
    let peer = next.wait_timeout(T).unwrap().unwrap().socket;
    // Receive-from.
    let d = c.datagram_socket(Family::V4, None).unwrap();
    d.bind(v4()).wait().unwrap();
    let rf = d.receive_from(vec![0; 8]);
    rf.cancel();
    assert_eq!(rf.wait().unwrap_err(), Error::Cancelled);
    // Sends stuck behind a peer that does not read: cancel one, close cancels the rest.
    s.control(SocketControl::SetOption(SockOpt::SendBufferSize, 4096))
        .wait()
        .unwrap();
    let sends: Vec<_> = (0..32).map(|_| s.send(vec![0; 256 << 10])).collect();
    let stuck: Vec<_> = sends.into_iter().filter(|o| !o.is_complete()).collect();
    assert!(stuck.len() > 2, "sends did not back up");
    stuck.last().unwrap().cancel();
    let graceful = s.disconnect(Disconnect::Graceful);
    assert_eq!(
        graceful.returned(),
        Status::PENDING,
        "graceful disconnect waits for queued sends"
    );
    drop(s);
    for op in stuck {
        assert_eq!(op.wait_timeout(T).unwrap().unwrap_err(), Error::Cancelled);
    }
    assert_eq!(graceful.wait().unwrap_err(), Error::Cancelled);
    drop((peer, l, d));
    assert!(c.wait_no_sockets(T));
}

#[test]
fn many_threads_opening_using_and_closing_sockets_leak_nothing() {
    let wsk = Subsystem::new(2).unwrap();
    let c = wsk.client();
    let l = c.listen_socket(Family::V4, None).unwrap();
    l.bind(v4()).wait().unwrap();
    let addr = l.local_address().unwrap();
    std::thread::scope(|s| {
        s.spawn(|| {
            for _ in 0..4 * 50 {
                let Ok(acc) = l.accept().wait_timeout(T).unwrap() else {
                    break;
                };
                // Echo one message, then let the socket drop (abortive close).
                if let Ok(t) = acc.socket.receive(vec![0; 64]).wait_timeout(T).unwrap() {
                    drop(acc.socket.send(t.data().to_vec()).wait());
                }
            }
        });
        for t in 0..4u8 {
            let c = c.clone();
            s.spawn(move || {
                for i in 0..50u8 {
                    let sock = c
                        .socket_connect(SOCK_STREAM, 0, v4(), addr, 0, None)
                        .wait()
                        .unwrap();
                    let pending = sock.receive(vec![0; 64]);
                    sock.send(vec![t, i]).wait().unwrap();
                    let echoed = pending.wait_timeout(T).unwrap().unwrap();
                    assert_eq!(echoed.data(), [t, i]);
                    if i % 2 == 0 {
                        // Leave an op pending for close to cancel.
                        let left = sock.receive(vec![0; 4]);
                        drop(sock);
                        assert!(matches!(
                            left.wait(),
                            Err(Error::Cancelled) | Ok(_) | Err(Error::ConnectionReset)
                        ));
                    }
                }
            });
        }
    });
    drop(l);
    assert!(c.wait_no_sockets(T));
    let n = wsk.counters();
    assert_eq!(n.sockets_opened, n.sockets_closed);
}

#[test]
fn cancelling_socket_connect_either_wins_or_loses_cleanly() {
    let wsk = Subsystem::new(1).unwrap();
    let c = wsk.client();
    let l = c.listen_socket(Family::V4, None).unwrap();
    l.bind(v4()).wait().unwrap();
    let (mut won, mut lost) = (0, 0);
    for _ in 0..50 {
        let op = c.socket_connect(SOCK_STREAM, 0, v4(), l.local_address().unwrap(), 0, None);
        op.cancel();
        match op.wait_timeout(T).expect("completes") {
            Ok(s) => {
                won += 1;
                drop(s);
            }
            Err(e) => {
                assert_eq!(e, Error::Cancelled);
                lost += 1;
            }
        }
        // Drain what the listener accepted so its backlog does not fill.
        loop {
            match l.accept().wait_timeout(Duration::ZERO) {
                Ok(Ok(a)) => drop(a),
                Ok(Err(_)) => break,
                Err(pending) => {
                    pending.cancel();
                    break;
                }
            }
        }
    }
    assert_eq!(won + lost, 50);
    drop(l);
    assert!(
        c.wait_no_sockets(T),
        "a cancelled connect leaked its socket"
    );
}
