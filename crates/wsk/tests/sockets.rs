//! Phase-1 behaviour of the socket layer over real loopback traffic (IPv4 and IPv6, TCP and
//! UDP): operations, events, close, cancellation and bad input.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;
use wsk::*;

const T: Duration = Duration::from_secs(10);

fn v4() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}
fn v6() -> SocketAddr {
    "[::1]:0".parse().unwrap()
}

fn wait<T: Send + 'static>(op: Op<T>) -> Result<T> {
    op.wait_timeout(T)
        .unwrap_or_else(|_| panic!("operation did not complete within {T:?}"))
}

fn listener(c: &WskClient, at: SocketAddr) -> (ListenSocket, SocketAddr) {
    let l = c.listen_socket(Family::of(&at), None).unwrap();
    wait(l.bind(at)).unwrap();
    let a = l.local_address().unwrap();
    (l, a)
}

fn connected_pair(c: &WskClient, at: SocketAddr) -> (ConnectionSocket, ConnectionSocket) {
    let (l, addr) = listener(c, at);
    let accept = l.accept();
    let s = c.connection_socket(Family::of(&at), None).unwrap();
    wait(s.bind(at)).unwrap();
    wait(s.connect(addr)).unwrap();
    let acc = wait(accept).unwrap();
    assert_eq!(acc.remote, s.local_address().unwrap());
    assert_eq!(s.remote_address().unwrap(), addr);
    (s, acc.socket)
}

fn recv_exact(s: &ConnectionRef, n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let t = wait(s.receive(vec![0; (n - out.len()).min(65536)])).unwrap();
        assert!(
            t.bytes > 0,
            "peer closed early after {} of {n} bytes",
            out.len()
        );
        out.extend_from_slice(t.data());
    }
    out
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
}

#[test]
fn tcp_send_and_receive_over_ipv4_and_ipv6() {
    let wsk = Subsystem::new(2).unwrap();
    let c = wsk.client();
    for at in [v4(), v6()] {
        let (a, b) = connected_pair(&c, at);
        let sent = wait(a.send(b"hello over wsk".to_vec())).unwrap();
        assert_eq!(sent.bytes, 14);
        assert_eq!(recv_exact(&b, 14), b"hello over wsk");
        // A receive posted before the data arrives pends, then completes.
        let r = b.receive(vec![0; 64]);
        std::thread::sleep(Duration::from_millis(20));
        wait(a.send(b"late".to_vec())).unwrap();
        assert_eq!(wait(r).unwrap().data(), b"late");
    }
    assert_eq!(c.open_sockets(), 0);
}

#[test]
fn large_transfer_with_backpressure_completes_in_order() {
    let wsk = Subsystem::new(2).unwrap();
    let c = wsk.client();
    let (a, b) = connected_pair(&c, v4());
    let data = pattern(8 << 20);
    // Queue many sends at once; most pend until the peer reads.
    let ops: Vec<_> = data
        .chunks(256 << 10)
        .map(|ch| a.send(ch.to_vec()))
        .collect();
    assert!(ops.iter().any(|o| o.returned() == Status::PENDING));
    let got = recv_exact(&b, data.len());
    for o in ops {
        wait(o).unwrap();
    }
    assert!(got == data, "received bytes differ from sent bytes");
}

#[test]
fn graceful_disconnect_reads_zero_and_raises_disconnect_event() {
    struct Ev(mpsc::Sender<DisconnectKind>);
    impl ConnectionEvents for Ev {
        fn on_disconnect(&self, _: &ConnectionRef, kind: DisconnectKind) {
            self.0.send(kind).unwrap();
        }
    }
    let wsk = Subsystem::new(1).unwrap();
    let c = wsk.client();
    let (a, b) = connected_pair(&c, v6());
    let (tx, rx) = mpsc::channel();
    b.set_dispatch(SocketDispatch::Connection(Arc::new(Ev(tx))))
        .unwrap();
    b.enable_events(EventMask::DISCONNECT).unwrap();
    wait(a.send(b"bye".to_vec())).unwrap();
    wait(a.disconnect(Disconnect::Graceful)).unwrap();
    assert_eq!(recv_exact(&b, 3), b"bye");
    assert_eq!(wait(b.receive(vec![0; 8])).unwrap().bytes, 0);
    assert_eq!(rx.recv_timeout(T).unwrap(), DisconnectKind::Graceful);
    // Sending after our own graceful disconnect is refused; the peer can still send to us.
    assert_eq!(wait(a.send(vec![1])).unwrap_err(), Error::Disconnected);
    wait(b.send(b"still open".to_vec())).unwrap();
    assert_eq!(recv_exact(&a, 10), b"still open");
}

/// An echo server written only with events: accept events hand over sockets, receive events
/// echo the data with send operations.
struct EchoListen {
    conns: Mutex<Vec<ConnectionSocket>>,
    accepted: AtomicUsize,
}
struct EchoConn;
impl ConnectionEvents for EchoConn {
    fn on_receive(&self, s: &ConnectionRef, data: &[u8]) -> ReceiveVerdict {
        drop(s.send(data.to_vec()));
        ReceiveVerdict::Accepted
    }
}
impl ListenEvents for EchoListen {
    fn on_accept(&self, _: &ListenRef, acc: Accepted) {
        acc.socket
            .set_dispatch(SocketDispatch::Connection(Arc::new(EchoConn)))
            .unwrap();
        acc.socket.enable_events(EventMask::RECEIVE).unwrap();
        self.accepted.fetch_add(1, Ordering::SeqCst);
        self.conns.lock().unwrap().push(acc.socket);
    }
}

fn event_echo_server(c: &WskClient, at: SocketAddr) -> (ListenSocket, Arc<EchoListen>, SocketAddr) {
    let ev = Arc::new(EchoListen {
        conns: Mutex::new(Vec::new()),
        accepted: AtomicUsize::new(0),
    });
    let l = c.listen_socket(Family::of(&at), Some(ev.clone())).unwrap();
    wait(l.bind(at)).unwrap();
    l.enable_events(EventMask::ACCEPT).unwrap();
    let a = l.local_address().unwrap();
    (l, ev, a)
}

#[test]
fn accept_and_receive_events_echo_many_concurrent_connections() {
    let wsk = Subsystem::new(2).unwrap();
    let server = wsk.client();
    let client = wsk.client();
    for at in [v4(), v6()] {
        let (l, ev, addr) = event_echo_server(&server, at);
        let conns: Vec<ConnectionSocket> = (0..64)
            .map(|_| {
                let s = client.connection_socket(Family::of(&at), None).unwrap();
                wait(s.bind(at)).unwrap();
                s
            })
            .collect();
        let connects: Vec<_> = conns.iter().map(|s| s.connect(addr)).collect();
        for op in connects {
            wait(op).unwrap();
        }
        let msg = pattern(20_000);
        let sends: Vec<_> = conns.iter().map(|s| s.send(msg.clone())).collect();
        for (s, op) in conns.iter().zip(sends) {
            assert!(recv_exact(s, msg.len()) == msg);
            wait(op).unwrap();
        }
        assert_eq!(ev.accepted.load(Ordering::SeqCst), 64);
        drop(conns);
        drop(l);
        ev.conns.lock().unwrap().clear();
    }
    assert!(server.wait_no_sockets(T) && client.wait_no_sockets(T));
    let n = wsk.counters();
    assert_eq!(n.sockets_opened, n.sockets_closed);
}

#[test]
fn receive_event_not_accepted_keeps_data_for_receive_operations() {
    struct Refuse(AtomicUsize);
    impl ConnectionEvents for Refuse {
        fn on_receive(&self, _: &ConnectionRef, _: &[u8]) -> ReceiveVerdict {
            self.0.fetch_add(1, Ordering::SeqCst);
            ReceiveVerdict::NotAccepted
        }
    }
    let wsk = Subsystem::new(1).unwrap();
    let c = wsk.client();
    let (a, b) = connected_pair(&c, v4());
    let ev = Arc::new(Refuse(AtomicUsize::new(0)));
    b.set_dispatch(SocketDispatch::Connection(ev.clone()))
        .unwrap();
    b.enable_events(EventMask::RECEIVE).unwrap();
    wait(a.send(b"kept for later".to_vec())).unwrap();
    let deadline = std::time::Instant::now() + T;
    while ev.0.load(Ordering::SeqCst) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "receive event never raised"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    // Events are suspended while data is held; the receive operation gets it.
    assert_eq!(recv_exact(&b, 14), b"kept for later");
    assert_eq!(ev.0.load(Ordering::SeqCst), 1);
}

#[test]
fn udp_send_to_and_receive_from_over_ipv4_and_ipv6() {
    let wsk = Subsystem::new(1).unwrap();
    let c = wsk.client();
    for at in [v4(), v6()] {
        let a = c.datagram_socket(Family::of(&at), None).unwrap();
        let b = c.datagram_socket(Family::of(&at), None).unwrap();
        wait(a.bind(at)).unwrap();
        wait(b.bind(at)).unwrap();
        let (aa, ba) = (a.local_address().unwrap(), b.local_address().unwrap());
        let r = b.receive_from(vec![0; 100]);
        wait(a.send_to(b"datagram".to_vec(), ba)).unwrap();
        let d = wait(r).unwrap();
        assert_eq!(
            (d.data(), d.from, d.truncated),
            (&b"datagram"[..], aa, false)
        );
        // Too small a buffer: the datagram is cut and flagged BUFFER_OVERFLOW.
        wait(a.send_to(vec![9; 50], ba)).unwrap();
        let d = wait(b.receive_from(vec![0; 10])).unwrap();
        assert_eq!(
            (d.bytes, d.truncated, d.status()),
            (10, true, Status::BUFFER_OVERFLOW)
        );
    }
}

#[test]
fn receive_from_event_delivers_datagrams() {
    struct Ev(mpsc::Sender<(Vec<u8>, SocketAddr)>);
    impl DatagramEvents for Ev {
        fn on_receive_from(&self, _: &DatagramRef, data: &[u8], from: SocketAddr) {
            self.0.send((data.to_vec(), from)).unwrap();
        }
    }
    let wsk = Subsystem::new(1).unwrap();
    let c = wsk.client();
    let (tx, rx) = mpsc::channel();
    let b = c
        .datagram_socket(Family::V4, Some(Arc::new(Ev(tx))))
        .unwrap();
    wait(b.bind(v4())).unwrap();
    b.enable_events(EventMask::RECEIVE_FROM).unwrap();
    let a = c.datagram_socket(Family::V4, None).unwrap();
    wait(a.bind(v4())).unwrap();
    for i in 0..10u8 {
        wait(a.send_to(vec![i; 3], b.local_address().unwrap())).unwrap();
    }
    for i in 0..10u8 {
        let (d, from) = rx.recv_timeout(T).unwrap();
        assert_eq!((d, from), (vec![i; 3], a.local_address().unwrap()));
    }
}

#[test]
fn cancelled_receive_completes_cancelled_and_loses_no_data() {
    let wsk = Subsystem::new(1).unwrap();
    let c = wsk.client();
    let (a, b) = connected_pair(&c, v4());
    let r = b.receive(vec![0; 16]);
    assert_eq!(r.returned(), Status::PENDING);
    r.cancel();
    assert_eq!(wait(r).unwrap_err(), Error::Cancelled);
    wait(a.send(b"after cancel".to_vec())).unwrap();
    assert_eq!(recv_exact(&b, 12), b"after cancel");
    // Cancelling a finished operation changes nothing.
    let done = a.send(b"x".to_vec());
    done.cancel();
    assert_eq!(wait(done).unwrap().bytes, 1);
}

#[test]
fn close_cancels_pending_operations_and_resets_the_peer() {
    let wsk = Subsystem::new(1).unwrap();
    let c = wsk.client();
    let (a, b) = connected_pair(&c, v4());
    let pending: Vec<_> = (0..3).map(|_| b.receive(vec![0; 8])).collect();
    let (l, _) = listener(&c, v4());
    let acc = l.accept();
    assert!(c.open_sockets() >= 3);
    wait(b.close()).unwrap();
    drop(l);
    for p in pending {
        assert_eq!(wait(p).unwrap_err(), Error::Cancelled);
    }
    assert_eq!(wait(acc).unwrap_err(), Error::Cancelled);
    // Closing a live connection is abortive: the peer sees a reset.
    let r = wait(a.receive(vec![0; 8]));
    assert_eq!(r.unwrap_err(), Error::ConnectionReset);
    drop(a);
    assert_eq!(c.open_sockets(), 0);
}

#[test]
fn peer_reset_mid_transfer_fails_operations_and_provider_stays_usable() {
    let wsk = Subsystem::new(2).unwrap();
    let c = wsk.client();
    let (a, b) = connected_pair(&c, v6());
    let sends: Vec<_> = (0..64).map(|_| a.send(vec![7; 256 << 10])).collect();
    wait(b.receive(vec![0; 1000])).unwrap();
    wait(b.disconnect(Disconnect::Abortive)).unwrap();
    let mut failed = 0;
    for s in sends {
        if let Err(e) = wait(s) {
            assert_eq!(e, Error::ConnectionReset);
            failed += 1;
        }
    }
    assert!(failed > 0, "no send saw the reset");
    assert_eq!(wait(a.send(vec![1])).unwrap_err(), Error::ConnectionReset);
    assert_eq!(
        wait(b.receive(vec![0; 4])).unwrap_err(),
        Error::ConnectionAborted
    );
    // The provider and the client keep working.
    let (x, y) = connected_pair(&c, v6());
    wait(x.send(b"ok".to_vec())).unwrap();
    assert_eq!(recv_exact(&y, 2), b"ok");
}

#[test]
fn bad_input_gets_a_clear_status_and_leaks_nothing() {
    let wsk = Subsystem::new(1).unwrap();
    let c = wsk.client();
    let st = |op: Op<Socket>| wait(op).unwrap_err().status();
    assert_eq!(
        st(c.socket(
            99,
            SOCK_STREAM,
            IPPROTO_TCP,
            WSK_FLAG_CONNECTION_SOCKET,
            SocketDispatch::None
        )),
        Status::NOT_SUPPORTED
    );
    assert_eq!(
        st(c.socket(
            AF_INET,
            SOCK_DGRAM,
            IPPROTO_UDP,
            WSK_FLAG_STREAM_SOCKET,
            SocketDispatch::None
        )),
        Status::NOT_SUPPORTED
    );
    assert_eq!(
        st(c.socket(AF_INET, SOCK_STREAM, IPPROTO_TCP, 3, SocketDispatch::None)),
        Status::INVALID_PARAMETER
    );
    assert_eq!(
        st(c.socket(
            AF_INET,
            SOCK_DGRAM,
            IPPROTO_UDP,
            WSK_FLAG_CONNECTION_SOCKET,
            SocketDispatch::None
        )),
        Status::NOT_SUPPORTED
    );
    assert_eq!(
        st(c.socket(
            AF_INET,
            SOCK_STREAM,
            IPPROTO_UDP,
            WSK_FLAG_LISTEN_SOCKET,
            SocketDispatch::None
        )),
        Status::NOT_SUPPORTED
    );
    struct D;
    impl DatagramEvents for D {
        fn on_receive_from(&self, _: &DatagramRef, _: &[u8], _: SocketAddr) {}
    }
    assert_eq!(
        st(c.socket(
            AF_INET,
            SOCK_STREAM,
            IPPROTO_TCP,
            WSK_FLAG_LISTEN_SOCKET,
            SocketDispatch::Datagram(Arc::new(D))
        )),
        Status::INVALID_PARAMETER
    );
    // A basic socket exists but can do nothing but control and close.
    let basic = wait(c.socket(
        AF_INET,
        SOCK_STREAM,
        IPPROTO_TCP,
        WSK_FLAG_BASIC_SOCKET,
        SocketDispatch::None,
    ))
    .unwrap();
    assert_eq!(
        basic.into_connection().unwrap_err().status(),
        Status::INVALID_DEVICE_REQUEST
    );

    let s = c.connection_socket(Family::V4, None).unwrap();
    assert_eq!(
        wait(s.bind(v6())).unwrap_err().status(),
        Status::INVALID_ADDRESS_COMPONENT
    );
    assert_eq!(
        wait(s.connect("127.0.0.1:9".parse().unwrap()))
            .unwrap_err()
            .status(),
        Status::INVALID_DEVICE_STATE
    );
    assert_eq!(
        wait(s.send(vec![1])).unwrap_err().status(),
        Status::INVALID_DEVICE_STATE
    );
    assert_eq!(
        wait(s.receive(Vec::new())).unwrap_err().status(),
        Status::BUFFER_TOO_SMALL
    );
    assert_eq!(
        s.enable_events(EventMask::ACCEPT).unwrap_err().status(),
        Status::INVALID_PARAMETER
    );
    assert_eq!(
        s.remote_address().unwrap_err().status(),
        Status::INVALID_DEVICE_STATE
    );
    wait(s.bind(v4())).unwrap();
    assert_eq!(
        wait(s.bind(v4())).unwrap_err().status(),
        Status::INVALID_DEVICE_STATE
    );
    assert_eq!(
        wait(s.connect("127.0.0.1:0".parse().unwrap()))
            .unwrap_err()
            .status(),
        Status::INVALID_ADDRESS_COMPONENT
    );

    // Port in use.
    let (l1, addr) = listener(&c, v4());
    let l2 = c.listen_socket(Family::V4, None).unwrap();
    assert_eq!(wait(l2.bind(addr)).unwrap_err(), Error::AddressInUse);
    // The failed socket can retry with another address.
    wait(l2.bind(v4())).unwrap();
    let d = c.datagram_socket(Family::V4, None).unwrap();
    assert_eq!(
        wait(d.send_to(vec![1], addr)).unwrap_err().status(),
        Status::INVALID_DEVICE_STATE
    );
    assert_eq!(
        wait(d.send_to(vec![1], "[::1]:5".parse().unwrap()))
            .unwrap_err()
            .status(),
        Status::INVALID_ADDRESS_COMPONENT
    );
    wait(d.bind(v4())).unwrap();
    assert_eq!(
        wait(d.send_to(vec![0; 70_000], addr)).unwrap_err(),
        Error::MessageTooLarge
    );

    // Connection refused: nobody listens on a port we just released.
    drop(l1);
    let s2 = c.connection_socket(Family::V4, None).unwrap();
    wait(s2.bind(v4())).unwrap();
    assert_eq!(
        wait(s2.connect(addr)).unwrap_err(),
        Error::ConnectionRefused
    );
    assert_eq!(
        wait(s2.send(vec![1])).unwrap_err(),
        Error::ConnectionRefused
    );

    drop((s, l2, d, s2));
    assert_eq!(c.open_sockets(), 0);
    let n = wsk.counters();
    assert_eq!(n.sockets_opened, n.sockets_closed);
}

#[test]
fn socket_connect_creates_binds_and_connects_in_one_step() {
    let wsk = Subsystem::new(1).unwrap();
    let c = wsk.client();
    let (l, addr) = listener(&c, v4());
    let acc = l.accept();
    let s = wait(c.socket_connect(SOCK_STREAM, IPPROTO_TCP, v4(), addr, 0, None)).unwrap();
    let acc = wait(acc).unwrap();
    assert_eq!(acc.remote, s.local_address().unwrap());
    assert_eq!(
        wait(c.socket_connect(SOCK_STREAM, IPPROTO_TCP, v4(), addr, 1, None))
            .unwrap_err()
            .status(),
        Status::INVALID_PARAMETER
    );
    assert_eq!(
        wait(c.socket_connect(SOCK_STREAM, IPPROTO_TCP, v6(), addr, 0, None))
            .unwrap_err()
            .status(),
        Status::INVALID_ADDRESS_COMPONENT
    );
}

#[test]
fn control_client_transport_list_and_static_events() {
    let wsk = Subsystem::new(1).unwrap();
    let c = wsk.client();
    let mut small = [0u8; 8];
    let e = c
        .control_client(WSK_TRANSPORT_LIST_QUERY, &[], &mut small)
        .unwrap_err();
    let Error::BufferOverflow { needed } = e else {
        panic!("{e:?}")
    };
    assert_eq!(e.status(), Status::BUFFER_OVERFLOW);
    let mut out = vec![0u8; needed];
    assert_eq!(
        c.control_client(WSK_TRANSPORT_LIST_QUERY, &[], &mut out)
            .unwrap(),
        needed
    );
    let ts: Vec<_> = out
        .chunks(Transport::ENCODED_LEN)
        .filter_map(Transport::decode)
        .collect();
    assert_eq!(ts, c.transport_list());
    assert_eq!(
        c.control_client(WSK_CACHE_SD, &[], &mut [])
            .unwrap_err()
            .status(),
        Status::NOT_IMPLEMENTED
    );
    assert_eq!(
        c.control_client(77, &[], &mut []).unwrap_err().status(),
        Status::INVALID_PARAMETER
    );

    // Static receive events: every connection socket with a dispatch gets them, for good.
    let mut input = wsk::npi::NPI_WSK_INTERFACE_ID_BYTES.to_vec();
    input.extend_from_slice(&(EventMask::RECEIVE.0 | EventMask::ACCEPT.0).to_le_bytes());
    assert_eq!(
        c.control_client(WSK_SET_STATIC_EVENT_CALLBACKS, &input[..10], &mut [])
            .unwrap_err()
            .status(),
        Status::BUFFER_TOO_SMALL
    );
    c.control_client(WSK_SET_STATIC_EVENT_CALLBACKS, &input, &mut [])
        .unwrap();
    let ev = Arc::new(EchoListen {
        conns: Mutex::new(Vec::new()),
        accepted: AtomicUsize::new(0),
    });
    let l = c.listen_socket(Family::V4, Some(ev.clone())).unwrap();
    wait(l.bind(v4())).unwrap(); // accept event already on: no enable call
    assert_eq!(
        l.disable_events(EventMask::ACCEPT).unwrap_err().status(),
        Status::INVALID_PARAMETER
    );
    assert_eq!(
        c.set_static_event_callbacks(EventMask::RECEIVE)
            .unwrap_err()
            .status(),
        Status::INVALID_DEVICE_STATE
    );
    let s =
        wait(c.socket_connect(SOCK_STREAM, 0, v4(), l.local_address().unwrap(), 0, None)).unwrap();
    wait(s.send(b"static".to_vec())).unwrap();
    assert_eq!(recv_exact(&s, 6), b"static");
}

#[test]
fn close_from_inside_a_callback_and_blocking_waits_are_refused_there() {
    struct Ev(mpsc::Sender<Error>, Mutex<Option<ConnectionSocket>>);
    impl ConnectionEvents for Ev {
        fn on_receive(&self, s: &ConnectionRef, _: &[u8]) -> ReceiveVerdict {
            // Waiting on an I/O thread would deadlock: refused.
            let e = s.receive(vec![0; 4]).wait().unwrap_err();
            self.0.send(e).unwrap();
            // Closing the socket from its own callback must not deadlock.
            if let Some(own) = self.1.lock().unwrap().take() {
                drop(own);
            }
            ReceiveVerdict::Accepted
        }
    }
    let wsk = Subsystem::new(1).unwrap();
    let c = wsk.client();
    let (a, b) = connected_pair(&c, v4());
    let (tx, rx) = mpsc::channel();
    let ev = Arc::new(Ev(tx, Mutex::new(None)));
    b.set_dispatch(SocketDispatch::Connection(ev.clone()))
        .unwrap();
    let bh = b.handle();
    *ev.1.lock().unwrap() = Some(b);
    bh.enable_events(EventMask::RECEIVE).unwrap();
    wait(a.send(vec![1, 2, 3])).unwrap();
    assert_eq!(rx.recv_timeout(T).unwrap(), Error::WouldDeadlock);
    let deadline = std::time::Instant::now() + T;
    // The callback closed its own socket: only `a` remains open.
    while c.open_sockets() != 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "socket not closed by its callback"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(bh.is_closed());
    assert_eq!(wait(bh.send(vec![1])).unwrap_err(), Error::SocketClosed);
}

#[test]
fn name_resolution_runs_off_the_io_threads() {
    let wsk = Subsystem::new(1).unwrap();
    let c = wsk.client();
    let list = wait(c.get_address_info(
        Some("localhost"),
        Some("7"),
        AddrInfoHints {
            family: Some(Family::V4),
            ..Default::default()
        },
    ))
    .unwrap();
    assert!(
        list.entries
            .iter()
            .any(|e| e.addr == "127.0.0.1:7".parse().unwrap())
    );
    c.free_address_info(list);
    let ni =
        wait(c.get_name_info("127.0.0.1:80".parse().unwrap(), NameInfoFlags::NUMERICHOST)).unwrap();
    assert_eq!(
        ni,
        NameInfo {
            host: "127.0.0.1".into(),
            service: "http".into()
        }
    );
    assert_eq!(
        wait(c.get_address_info(None, None, AddrInfoHints::default()))
            .unwrap_err()
            .status(),
        Status::INVALID_PARAMETER
    );
}

#[test]
fn socket_options_round_trip_and_respect_the_category() {
    let wsk = Subsystem::new(1).unwrap();
    let c = wsk.client();
    let (a, _b) = connected_pair(&c, v4());
    wait(a.control(SocketControl::SetOption(SockOpt::NoDelay, 1))).unwrap();
    assert_eq!(
        wait(a.control(SocketControl::GetOption(SockOpt::NoDelay))).unwrap(),
        1
    );
    wait(a.control(SocketControl::SetOption(SockOpt::NoDelay, 0))).unwrap();
    assert_eq!(
        wait(a.control(SocketControl::GetOption(SockOpt::NoDelay))).unwrap(),
        0
    );
    wait(a.control(SocketControl::SetOption(SockOpt::RecvBufferSize, 1 << 16))).unwrap();
    assert!(wait(a.control(SocketControl::GetOption(SockOpt::RecvBufferSize))).unwrap() >= 1 << 16);
    let d = c.datagram_socket(Family::V6, None).unwrap();
    assert_eq!(
        wait(d.control(SocketControl::SetOption(SockOpt::NoDelay, 1)))
            .unwrap_err()
            .status(),
        Status::INVALID_DEVICE_REQUEST
    );
    assert_eq!(
        d.enable_events(EventMask::RECEIVE_FROM)
            .unwrap_err()
            .status(),
        Status::INVALID_DEVICE_STATE,
        "no dispatch table"
    );
    wait(d.control(SocketControl::SetOption(SockOpt::ReuseAddress, 1))).unwrap();
    assert_eq!(
        wait(d.control(SocketControl::GetOption(SockOpt::ReuseAddress))).unwrap(),
        1
    );
    // Operations on a closed socket fail cleanly through a leftover handle.
    let h = d.handle();
    drop(d);
    assert_eq!(
        wait(h.control(SocketControl::GetOption(SockOpt::ReuseAddress))).unwrap_err(),
        Error::SocketClosed
    );
    assert_eq!(
        wait(h.receive_from(vec![0; 4])).unwrap_err(),
        Error::SocketClosed
    );
}

#[test]
fn stream_sockets_become_listeners_or_connections_by_use() {
    let wsk = Subsystem::new(1).unwrap();
    let c = wsk.client();
    for at in [v4(), v6()] {
        // A stream socket used as a listener, with the listen half of its event table.
        let ev = Arc::new(EchoListen {
            conns: Mutex::new(Vec::new()),
            accepted: AtomicUsize::new(0),
        });
        let server = c
            .stream_socket(Family::of(&at), Some(ev.clone()), None)
            .unwrap();
        assert_eq!(
            wait(server.listen()).unwrap_err().status(),
            Status::INVALID_DEVICE_STATE,
            "not bound yet"
        );
        assert_eq!(
            wait(server.accept()).unwrap_err().status(),
            Status::INVALID_DEVICE_STATE
        );
        wait(server.bind(at)).unwrap();
        wait(server.listen()).unwrap();
        server.enable_events(EventMask::ACCEPT).unwrap();
        assert_eq!(
            wait(server.connect(server.local_address().unwrap()))
                .unwrap_err()
                .status(),
            Status::INVALID_DEVICE_STATE
        );
        assert_eq!(
            wait(server.send(vec![1])).unwrap_err().status(),
            Status::INVALID_DEVICE_STATE
        );
        // Another used as a connection.
        let client = wait(c.socket(
            raw(at),
            SOCK_STREAM,
            0,
            WSK_FLAG_STREAM_SOCKET,
            SocketDispatch::None,
        ))
        .unwrap()
        .into_stream()
        .unwrap();
        wait(client.bind(at)).unwrap();
        wait(client.connect(server.local_address().unwrap())).unwrap();
        assert_eq!(
            wait(client.listen()).unwrap_err().status(),
            Status::INVALID_DEVICE_STATE
        );
        assert_eq!(
            wait(client.accept()).unwrap_err().status(),
            Status::INVALID_DEVICE_STATE
        );
        wait(client.send(b"stream".to_vec())).unwrap();
        let mut got = Vec::new();
        while got.len() < 6 {
            got.extend_from_slice(wait(client.receive(vec![0; 16])).unwrap().data());
        }
        assert_eq!(got, b"stream");
        assert_eq!(
            client.remote_address().unwrap(),
            server.local_address().unwrap()
        );
        assert_eq!(ev.accepted.load(Ordering::SeqCst), 1);
    }
}

fn raw(at: SocketAddr) -> u16 {
    if at.is_ipv4() { AF_INET } else { AF_INET6 }
}

#[test]
fn close_waits_for_an_event_callback_in_progress_on_another_thread() {
    struct Slow {
        entered: Mutex<Option<mpsc::Sender<()>>>,
        release: Mutex<Option<mpsc::Receiver<()>>>,
        finished: std::sync::atomic::AtomicBool,
    }
    impl ConnectionEvents for Slow {
        fn on_receive(&self, _: &ConnectionRef, _: &[u8]) -> ReceiveVerdict {
            if let Some(tx) = self.entered.lock().unwrap().take() {
                tx.send(()).unwrap();
                // Held here (bounded) until the test lets go.
                let rx = self.release.lock().unwrap().take().unwrap();
                rx.recv_timeout(T).unwrap();
                self.finished.store(true, Ordering::SeqCst);
            }
            ReceiveVerdict::Accepted
        }
    }
    let wsk = Subsystem::new(1).unwrap();
    let c = wsk.client();
    let (a, b) = connected_pair(&c, v4());
    let (entered_tx, entered_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel();
    let ev = Arc::new(Slow {
        entered: Mutex::new(Some(entered_tx)),
        release: Mutex::new(Some(release_rx)),
        finished: std::sync::atomic::AtomicBool::new(false),
    });
    b.set_dispatch(SocketDispatch::Connection(ev.clone()))
        .unwrap();
    b.enable_events(EventMask::RECEIVE).unwrap();
    wait(a.send(vec![1])).unwrap();
    entered_rx.recv_timeout(T).unwrap();
    let (closed_tx, closed_rx) = mpsc::channel();
    let ev2 = ev.clone();
    let closer = std::thread::spawn(move || {
        drop(b);
        // Close returned: the callback must have finished first.
        closed_tx.send(ev2.finished.load(Ordering::SeqCst)).unwrap();
    });
    assert!(
        closed_rx.try_recv().is_err(),
        "close returned while the callback ran"
    );
    release_tx.send(()).unwrap();
    assert!(
        closed_rx.recv_timeout(T).unwrap(),
        "close returned before the callback finished"
    );
    closer.join().unwrap();
}

#[test]
fn a_panicking_callback_or_routine_leaves_the_io_thread_and_socket_working() {
    struct Panicky(AtomicUsize);
    impl ConnectionEvents for Panicky {
        fn on_receive(&self, _: &ConnectionRef, _: &[u8]) -> ReceiveVerdict {
            if self.0.fetch_add(1, Ordering::SeqCst) == 0 {
                panic!("client bug in a receive callback");
            }
            ReceiveVerdict::Accepted
        }
    }
    let wsk = Subsystem::new(1).unwrap();
    let c = wsk.client();
    let (a, b) = connected_pair(&c, v4());
    let ev = Arc::new(Panicky(AtomicUsize::new(0)));
    b.set_dispatch(SocketDispatch::Connection(ev.clone()))
        .unwrap();
    b.enable_events(EventMask::RECEIVE).unwrap();
    wait(a.send(vec![1])).unwrap();
    let deadline = std::time::Instant::now() + T;
    while ev.0.load(Ordering::SeqCst) == 0 {
        assert!(std::time::Instant::now() < deadline, "callback never ran");
        std::thread::sleep(Duration::from_millis(1));
    }
    // A completion routine that panics on the I/O thread.
    let r = b.receive(vec![0; 8]);
    r.on_complete(|_| panic!("client bug in a completion routine"));
    wait(a.send(vec![2])).unwrap();
    // The same I/O thread keeps serving: a new connection pair still works end to end.
    let (x, y) = connected_pair(&c, v4());
    wait(x.send(b"alive".to_vec())).unwrap();
    assert_eq!(recv_exact(&y, 5), b"alive");
    drop(b); // close does not wait forever on the panicked callback
    assert_eq!(c.open_sockets(), 3);
}
