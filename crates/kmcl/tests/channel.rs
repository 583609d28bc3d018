//! The channel lifecycle over the in-process transport, transition by transition,
//! including every misuse the KMCL documents.

use std::sync::mpsc;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use kmcl::{Channel, ChannelHandle, Error, Phase, Role, SendFlags, StateCallbacks};

type Log = Arc<Mutex<Vec<String>>>;

fn log_callbacks(log: &Log, who: &'static str) -> StateCallbacks {
    let l = |name: &'static str| {
        let log = log.clone();
        move |_: &ChannelHandle| log.lock().unwrap().push(format!("{who}:{name}"))
    };
    let lo = log.clone();
    StateCallbacks::new()
        .on_opened(move |_| {
            lo.lock().unwrap().push(format!("{who}:opened"));
            Ok(())
        })
        .on_started(l("started"))
        .on_post_started(l("post_started"))
        .on_suspend(l("suspend"))
        .on_closed(l("closed"))
}

fn entries(log: &Log, who: &str) -> Vec<String> {
    log.lock()
        .unwrap()
        .iter()
        .filter(|e| e.starts_with(who))
        .cloned()
        .collect()
}

fn echo_server(server: &Channel) {
    server
        .set_process_packet_callbacks(
            |_ch, p| {
                let data = p.payload().to_vec();
                p.complete(&data).unwrap();
            },
            None::<fn(&ChannelHandle, u32)>,
        )
        .unwrap();
}

fn none() -> Option<fn(&ChannelHandle, u32)> {
    None
}

/// Waits (without a time limit) until `f` holds, yielding in between.
fn until(mut f: impl FnMut() -> bool) {
    while !f() {
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn open_pair(log: &Log) -> (Channel, Channel) {
    let (client, server) = Channel::local_pair().unwrap();
    client
        .set_state_change_callbacks(log_callbacks(log, "c"))
        .unwrap();
    server
        .set_state_change_callbacks(log_callbacks(log, "s"))
        .unwrap();
    echo_server(&server);
    server.enable().unwrap();
    server.start().unwrap();
    client.enable().unwrap();
    // Phases change first; wait until PostStarted has run on both sides.
    until(|| entries(log, "c").len() == 3 && entries(log, "s").len() == 3);
    assert_eq!(client.phase(), Phase::Opened { running: true });
    assert_eq!(server.phase(), Phase::Opened { running: true });
    (client, server)
}

fn teardown(client: Channel, server: Channel) {
    client.disable().unwrap();
    server.disable().unwrap();
    client.cleanup().unwrap();
    server.cleanup().unwrap();
}

#[test]
fn allocate_gives_a_disabled_channel_that_accepts_every_setter() {
    let (client, server) = Channel::local_pair().unwrap();
    assert_eq!(client.phase(), Phase::Initializing);
    assert_eq!(client.role(), Role::Client);
    client.set_max_packet_size(1000).unwrap();
    client.set_ring_page_counts(4, 4).unwrap();
    client
        .set_process_packet_callbacks(|_, p| p.fail(), Some(|_: &ChannelHandle, _| {}))
        .unwrap();
    client
        .set_state_change_callbacks(StateCallbacks::new())
        .unwrap();
    client.set_friendly_name("test").unwrap();
    client.set_flags(kmcl::FLAG_IS_PIPE).unwrap();
    client.set_incoming_processing_at_passive(true).unwrap();
    client.set_transaction_quota(3).unwrap();
    assert_eq!(client.friendly_name(), "test");
    assert_eq!(client.flags(), kmcl::FLAG_IS_PIPE);
    client.cleanup().unwrap();
    server.cleanup().unwrap();
}

#[test]
fn invalid_setter_arguments_are_refused() {
    let (client, server) = Channel::local_pair().unwrap();
    assert!(matches!(
        client.set_max_packet_size(0),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        client.set_flags(2),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        client.set_ring_page_counts(0, 1),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        client.set_transaction_quota(0),
        Err(Error::InvalidArgument(_))
    ));
    assert!(
        matches!(
            server.set_ring_page_counts(4, 4),
            Err(Error::InvalidArgument(_))
        ),
        "client only"
    );
    client.set_ring_page_counts(1, 1).unwrap();
    client.set_max_packet_size(8000).unwrap();
    assert!(
        matches!(client.enable(), Err(Error::InvalidArgument(_))),
        "max packet must fit the ring"
    );
}

#[test]
fn init_setters_after_enable_fail_with_not_initializing() {
    let (client, server) = Channel::local_pair().unwrap();
    client.enable().unwrap();
    assert!(matches!(
        client.set_max_packet_size(10),
        Err(Error::NotInitializing)
    ));
    assert!(matches!(
        client.set_ring_page_counts(2, 2),
        Err(Error::NotInitializing)
    ));
    assert!(matches!(
        client.set_process_packet_callbacks(|_, p| p.fail(), none()),
        Err(Error::NotInitializing)
    ));
    assert!(matches!(
        client.set_state_change_callbacks(StateCallbacks::new()),
        Err(Error::NotInitializing)
    ));
    assert!(matches!(
        client.set_friendly_name("x"),
        Err(Error::NotInitializing)
    ));
    assert!(matches!(client.set_flags(0), Err(Error::NotInitializing)));
    // Runtime setters stay valid.
    client.set_transaction_quota(5).unwrap();
    client.set_incoming_processing_at_passive(false).unwrap();
    client.disable().unwrap();
    assert!(matches!(
        client.set_friendly_name("x"),
        Err(Error::NotInitializing)
    ));
    client.cleanup().unwrap();
    server.cleanup().unwrap();
}

#[test]
fn enable_returns_before_the_peer_exists_and_disable_cancels_the_wait() {
    let log = Log::default();
    let (client, server) = Channel::local_pair().unwrap();
    client
        .set_state_change_callbacks(log_callbacks(&log, "c"))
        .unwrap();
    client.enable().unwrap();
    assert_eq!(client.phase(), Phase::Enabled);
    assert!(matches!(client.enable(), Err(Error::InvalidState(_))));
    client.disable().unwrap();
    assert_eq!(client.phase(), Phase::Disabled);
    assert!(entries(&log, "c").is_empty(), "never opened: no callbacks");
    client.cleanup().unwrap();
    server.cleanup().unwrap();
}

#[test]
fn open_runs_opened_started_post_started_on_both_sides() {
    let log = Log::default();
    let (client, server) = open_pair(&log);
    assert_eq!(
        entries(&log, "c"),
        ["c:opened", "c:started", "c:post_started"]
    );
    assert_eq!(
        entries(&log, "s"),
        ["s:opened", "s:started", "s:post_started"]
    );
    teardown(client, server);
}

#[test]
fn server_stays_stopped_until_start_and_client_request_times_out() {
    let log = Log::default();
    let (client, server) = Channel::local_pair().unwrap();
    server
        .set_state_change_callbacks(log_callbacks(&log, "s"))
        .unwrap();
    echo_server(&server);
    server.enable().unwrap();
    client.enable().unwrap();
    until(|| {
        server.phase() == Phase::Opened { running: false }
            && client.phase() == Phase::Opened { running: true }
    });
    assert_eq!(entries(&log, "s"), ["s:opened"]);
    // Nobody reads on the server: the request is cancelled after its timeout.
    let r = client.send_synchronous_request(b"first", Some(Duration::from_millis(20)));
    assert!(matches!(r, Err(Error::Cancelled)), "{r:?}");
    server.start().unwrap();
    assert_eq!(
        entries(&log, "s"),
        ["s:opened", "s:started", "s:post_started"]
    );
    // The server now answers the cancelled request too: its completion is stale and ignored.
    assert_eq!(
        client.send_synchronous_request(b"second", None).unwrap(),
        b"second"
    );
    until(|| client.counters().stale_completions == 1);
    teardown(client, server);
}

#[test]
fn pause_before_enable_arms_an_automatic_pause() {
    let log = Log::default();
    let (client, server) = Channel::local_pair().unwrap();
    client
        .set_state_change_callbacks(log_callbacks(&log, "c"))
        .unwrap();
    echo_server(&server);
    client.pause().unwrap();
    server.enable().unwrap();
    server.start().unwrap();
    client.enable().unwrap();
    until(|| client.phase() == Phase::Opened { running: false });
    assert_eq!(entries(&log, "c"), ["c:opened"]);
    client.start().unwrap();
    assert_eq!(
        entries(&log, "c"),
        ["c:opened", "c:started", "c:post_started"]
    );
    assert_eq!(client.send_synchronous_request(b"x", None).unwrap(), b"x");
    teardown(client, server);
}

#[test]
fn start_before_enable_and_pause_start_after_close_are_invalid_state() {
    let (client, server) = Channel::local_pair().unwrap();
    assert!(matches!(client.start(), Err(Error::InvalidState(_))));
    client.cleanup().unwrap();
    let log = Log::default();
    let (client, server2) = {
        drop(server);
        open_pair(&log)
    };
    client.disable().unwrap();
    assert!(matches!(client.pause(), Err(Error::InvalidState(_))));
    assert!(matches!(client.start(), Err(Error::InvalidState(_))));
    client.cleanup().unwrap();
    server2.disable().unwrap();
    server2.cleanup().unwrap();
}

#[test]
fn pause_runs_suspend_and_waits_for_every_incoming_packet() {
    let log = Log::default();
    let (client, server) = Channel::local_pair().unwrap();
    server
        .set_state_change_callbacks(log_callbacks(&log, "s"))
        .unwrap();
    let held = Arc::new(Mutex::new(Vec::new()));
    let h2 = held.clone();
    server
        .set_process_packet_callbacks(move |_, p| h2.lock().unwrap().push(p.into_token()), none())
        .unwrap();
    server.enable().unwrap();
    server.start().unwrap();
    client.enable().unwrap();
    for i in 0..3u8 {
        client
            .send(&[i], SendFlags::NONE, |c| assert!(c.result.is_ok()))
            .unwrap();
    }
    until(|| held.lock().unwrap().len() == 3);
    assert_eq!(server.packets_in_flight(), 3);
    let server = Arc::new(server);
    let s2 = server.clone();
    let (done_tx, done_rx) = mpsc::channel();
    let pauser = std::thread::spawn(move || {
        s2.pause().unwrap();
        done_tx.send(()).unwrap();
    });
    until(|| entries(&log, "s").contains(&"s:suspend".to_string()));
    for t in held.lock().unwrap().drain(..2) {
        t.complete(&[]).unwrap();
    }
    assert!(
        done_rx.try_recv().is_err(),
        "pause must wait for the last packet"
    );
    let last = held.lock().unwrap().pop().unwrap();
    last.complete(&[]).unwrap();
    done_rx.recv().unwrap();
    pauser.join().unwrap();
    assert_eq!(server.phase(), Phase::Opened { running: false });
    assert_eq!(server.packets_in_flight(), 0);
    let server = Arc::into_inner(server).unwrap();
    teardown(client, server);
}

#[test]
fn pause_start_and_disable_inside_a_state_callback_are_refused() {
    let (client, server) = Channel::local_pair().unwrap();
    echo_server(&server);
    let client = Arc::new(client);
    let weak: Weak<Channel> = Arc::downgrade(&client);
    let results = Arc::new(Mutex::new(Vec::new()));
    let (w1, r1) = (weak.clone(), results.clone());
    let (w2, r2) = (weak, results.clone());
    client
        .set_state_change_callbacks(
            StateCallbacks::new()
                .on_started(move |_| {
                    let ch = w1.upgrade().unwrap();
                    let mut r = r1.lock().unwrap();
                    r.push(ch.pause().map_err(|e| e.to_string()));
                    r.push(ch.start().map_err(|e| e.to_string()));
                    r.push(ch.disable().map_err(|e| e.to_string()));
                })
                .on_post_started(move |_| {
                    let ch = w2.upgrade().unwrap();
                    r2.lock()
                        .unwrap()
                        .push(ch.cleanup().map_err(|e| e.to_string()));
                }),
        )
        .unwrap();
    server.enable().unwrap();
    server.start().unwrap();
    client.enable().unwrap();
    until(|| results.lock().unwrap().len() == 4);
    let expected = Err(Error::InStateCallback.to_string());
    assert_eq!(
        *results.lock().unwrap(),
        vec![
            expected.clone(),
            expected.clone(),
            expected.clone(),
            expected
        ]
    );
    assert_eq!(
        client.phase(),
        Phase::Opened { running: true },
        "nothing happened"
    );
    let client = Arc::into_inner(client).unwrap();
    teardown(client, server);
}

#[test]
fn blocking_calls_from_a_packet_callback_report_would_deadlock() {
    let (client, server) = Channel::local_pair().unwrap();
    let seen = Arc::new(Mutex::new(None));
    let s2 = seen.clone();
    server
        .set_process_packet_callbacks(
            move |ch, p| {
                *s2.lock().unwrap() =
                    Some(ch.send_synchronous_request(b"nested", None).map(|_| ()));
                p.complete(b"ok").unwrap();
            },
            none(),
        )
        .unwrap();
    server.enable().unwrap();
    server.start().unwrap();
    client.enable().unwrap();
    assert_eq!(client.send_synchronous_request(b"go", None).unwrap(), b"ok");
    assert!(matches!(
        seen.lock().unwrap().take(),
        Some(Err(Error::WouldDeadlock))
    ));
    teardown(client, server);
}

#[test]
fn cleanup_only_when_disabled_then_the_handle_is_invalid() {
    let log = Log::default();
    let (client, server) = open_pair(&log);
    assert!(matches!(client.cleanup(), Err(Error::NotDisabled)));
    client.pause().unwrap();
    assert!(matches!(client.cleanup(), Err(Error::NotDisabled)));
    client.disable().unwrap();
    client.cleanup().unwrap();
    assert!(matches!(client.cleanup(), Err(Error::CleanedUp)));
    assert!(matches!(client.enable(), Err(Error::CleanedUp)));
    assert!(matches!(client.pause(), Err(Error::CleanedUp)));
    assert!(matches!(client.disable(), Err(Error::CleanedUp)));
    assert!(matches!(client.allocate_packet(), Err(Error::CleanedUp)));
    assert!(matches!(
        client.set_friendly_name("x"),
        Err(Error::CleanedUp)
    ));
    assert!(matches!(
        client.send_synchronous_request(b"x", None),
        Err(Error::CleanedUp)
    ));
    server.disable().unwrap();
    server.cleanup().unwrap();
}

#[test]
fn disable_delivers_suspend_then_closed_and_the_peer_sees_the_close() {
    let log = Log::default();
    let (client, server) = open_pair(&log);
    client.disable().unwrap();
    assert_eq!(
        entries(&log, "c"),
        [
            "c:opened",
            "c:started",
            "c:post_started",
            "c:suspend",
            "c:closed"
        ]
    );
    // The phase changes first; the callbacks follow on the dispatcher thread.
    until(|| entries(&log, "s").len() == 5);
    assert_eq!(server.phase(), Phase::Closed);
    assert_eq!(
        entries(&log, "s"),
        [
            "s:opened",
            "s:started",
            "s:post_started",
            "s:suspend",
            "s:closed"
        ]
    );
    assert!(
        matches!(server.cleanup(), Err(Error::NotDisabled)),
        "disable still required after a peer close"
    );
    assert!(matches!(
        server.send(b"x", SendFlags::NONE, |_| panic!("must not run")),
        Err(Error::DeviceRemoved)
    ));
    server.disable().unwrap();
    server.cleanup().unwrap();
    client.cleanup().unwrap();
}

#[test]
fn disable_waits_for_held_packets_and_fails_outstanding_transactions() {
    let log = Log::default();
    let (client, server) = Channel::local_pair().unwrap();
    client
        .set_state_change_callbacks(log_callbacks(&log, "c"))
        .unwrap();
    server
        .set_state_change_callbacks(log_callbacks(&log, "s"))
        .unwrap();
    let held = Arc::new(Mutex::new(Vec::new()));
    let h2 = held.clone();
    server
        .set_process_packet_callbacks(move |_, p| h2.lock().unwrap().push(p.into_token()), none())
        .unwrap();
    server.enable().unwrap();
    server.start().unwrap();
    client.enable().unwrap();
    let results = Arc::new(Mutex::new(Vec::new()));
    for i in 0..4u8 {
        let r = results.clone();
        client
            .send(&[i], SendFlags::WAIT_FOR_COMPLETION, move |c| {
                r.lock()
                    .unwrap()
                    .push(c.result.map(|b| b.to_vec()).map_err(|e| e.to_string()));
            })
            .unwrap();
    }
    until(|| held.lock().unwrap().len() == 4);
    // A synchronous request in flight when the client disables fails with DeviceRemoved.
    let h = client.handle();
    let sync = std::thread::spawn(move || h.send_synchronous_request(b"sync", None));
    until(|| held.lock().unwrap().len() == 5);
    client.disable().unwrap();
    assert!(matches!(sync.join().unwrap(), Err(Error::DeviceRemoved)));
    let r = results.lock().unwrap().clone();
    assert_eq!(r, vec![Err(Error::DeviceRemoved.to_string()); 4]);
    assert_eq!(
        entries(&log, "c"),
        [
            "c:opened",
            "c:started",
            "c:post_started",
            "c:suspend",
            "c:closed"
        ]
    );
    // The server's Disable blocks until its held packets are retired.
    until(|| entries(&log, "s").contains(&"s:suspend".to_string()));
    let server = Arc::new(server);
    let s2 = server.clone();
    let (done_tx, done_rx) = mpsc::channel();
    let disabler = std::thread::spawn(move || {
        s2.disable().unwrap();
        done_tx.send(()).unwrap();
    });
    assert!(done_rx.try_recv().is_err());
    for t in held.lock().unwrap().drain(..) {
        // The client is gone: completing still retires the packet.
        let _ = t.complete(b"late");
    }
    done_rx.recv().unwrap();
    disabler.join().unwrap();
    let server = Arc::into_inner(server).unwrap();
    server.cleanup().unwrap();
    client.cleanup().unwrap();
}

#[test]
fn transactions_complete_with_the_response_and_packets_are_reusable() {
    let log = Log::default();
    let (client, server) = open_pair(&log);
    let (tx, rx) = mpsc::channel();
    let packet = client.allocate_packet().unwrap();
    let first_id = packet.transaction_id();
    let tx2 = tx.clone();
    packet
        .send(b"one", SendFlags::WAIT_FOR_COMPLETION, move |c| {
            assert_eq!(c.result.unwrap(), b"one");
            let again = c.packet;
            assert_ne!(
                again.transaction_id(),
                first_id,
                "new generation for the next use"
            );
            again
                .send(b"two", SendFlags::WAIT_FOR_COMPLETION, move |c| {
                    tx2.send(c.result.unwrap().to_vec()).unwrap();
                })
                .unwrap();
        })
        .unwrap();
    assert_eq!(rx.recv().unwrap(), b"two");
    // Without wait-for-completion the routine runs once the packet is in the ring.
    client
        .send(b"three", SendFlags::NONE, move |c| {
            tx.send(c.result.unwrap().to_vec()).unwrap()
        })
        .unwrap();
    assert_eq!(rx.recv().unwrap(), b"");
    assert!(matches!(
        client.send(&vec![0; 20_000], SendFlags::NONE, |_| {}),
        Err(Error::PacketTooLarge)
    ));
    teardown(client, server);
}

#[test]
fn a_full_ring_queues_packets_and_sends_them_when_space_appears() {
    let (client, server) = Channel::local_pair().unwrap();
    client.set_ring_page_counts(1, 1).unwrap();
    client.set_max_packet_size(1024).unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let g2 = got.clone();
    let batches = Arc::new(Mutex::new(Vec::new()));
    let b2 = batches.clone();
    server
        .set_process_packet_callbacks(
            move |_, p| {
                g2.lock().unwrap().push(p.payload().to_vec());
                p.complete(&[]).unwrap();
            },
            Some(move |_: &ChannelHandle, n| b2.lock().unwrap().push(n)),
        )
        .unwrap();
    server.enable().unwrap();
    client.enable().unwrap();
    until(|| server.phase() == Phase::Opened { running: false });
    let written = Arc::new(Mutex::new(0));
    for i in 0..100u32 {
        let w = written.clone();
        client
            .send(&[i as u8; 500], SendFlags::NONE, move |c| {
                assert!(c.result.is_ok());
                *w.lock().unwrap() += 1;
            })
            .unwrap();
    }
    assert!(
        client.counters().packets_queued > 0,
        "a 4 KiB ring cannot hold 100 x 500 bytes"
    );
    // Zero timeout: refuse instead of queueing.
    assert!(matches!(
        client.send_synchronous_request(b"x", Some(Duration::ZERO)),
        Err(Error::BufferOverflow)
    ));
    server.start().unwrap();
    until(|| got.lock().unwrap().len() == 100);
    let got = got.lock().unwrap().clone();
    for (i, p) in got.iter().enumerate() {
        assert_eq!(p, &vec![i as u8; 500], "in order");
    }
    until(|| *written.lock().unwrap() == 100);
    until(|| batches.lock().unwrap().iter().sum::<u32>() == 100);
    teardown(client, server);
}

#[test]
fn the_transaction_quota_bounds_packets_in_flight() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let (client, server) = Channel::local_pair().unwrap();
    let held = Arc::new(Mutex::new(Vec::new()));
    let h2 = held.clone();
    let delivered = Arc::new(AtomicUsize::new(0));
    let d2 = delivered.clone();
    let max_seen = Arc::new(Mutex::new(0u32));
    let m2 = max_seen.clone();
    server
        .set_process_packet_callbacks(
            move |ch, p| {
                let mut m = m2.lock().unwrap();
                *m = (*m).max(ch.packets_in_flight());
                d2.fetch_add(1, Ordering::SeqCst);
                h2.lock().unwrap().push(p.into_token());
            },
            none(),
        )
        .unwrap();
    server.set_transaction_quota(2).unwrap();
    server.enable().unwrap();
    server.start().unwrap();
    client.enable().unwrap();
    for i in 0..8u8 {
        client.send(&[i], SendFlags::NONE, |_| {}).unwrap();
    }
    until(|| held.lock().unwrap().len() == 2);
    assert_eq!(
        delivered.load(Ordering::SeqCst),
        2,
        "quota reached: delivery stops"
    );
    // Retire one at a time; each retirement lets exactly one more packet in.
    while delivered.load(Ordering::SeqCst) < 8 {
        let before = delivered.load(Ordering::SeqCst);
        let t = held.lock().unwrap().remove(0);
        t.complete(&[]).unwrap();
        until(|| delivered.load(Ordering::SeqCst) > before);
        assert!(held.lock().unwrap().len() <= 2);
    }
    for t in held.lock().unwrap().drain(..) {
        t.complete(&[]).unwrap();
    }
    assert_eq!(*max_seen.lock().unwrap(), 2);
    teardown(client, server);
}

#[test]
fn a_dropped_token_is_reported_and_stops_the_queue() {
    let (client, server) = Channel::local_pair().unwrap();
    let seen = Arc::new(Mutex::new(0));
    let s2 = seen.clone();
    server
        .set_process_packet_callbacks(
            move |_, p| {
                *s2.lock().unwrap() += 1;
                drop(p);
            },
            none(),
        )
        .unwrap();
    server.enable().unwrap();
    server.start().unwrap();
    client.enable().unwrap();
    client.send(b"a", SendFlags::NONE, |_| {}).unwrap();
    until(|| server.counters().unretired_drops == 1);
    assert!(matches!(server.stop_reason(), Some(Error::PacketFailed)));
    client.send(b"b", SendFlags::NONE, |_| {}).unwrap();
    until(|| client.counters().packets_sent == 2);
    assert_eq!(*seen.lock().unwrap(), 1, "the queue stopped");
    assert_eq!(
        server.packets_in_flight(),
        0,
        "the dropped packet was retired"
    );
    teardown(client, server);
}

#[test]
fn a_refused_open_closes_both_sides() {
    let log = Log::default();
    let (client, server) = Channel::local_pair().unwrap();
    client
        .set_state_change_callbacks(log_callbacks(&log, "c"))
        .unwrap();
    server
        .set_state_change_callbacks(
            StateCallbacks::new().on_opened(|_| Err(Error::InvalidState("no thanks"))),
        )
        .unwrap();
    server.enable().unwrap();
    server.start().unwrap();
    client.enable().unwrap();
    until(|| server.phase() == Phase::Closed && entries(&log, "c").len() == 5);
    assert!(matches!(server.stop_reason(), Some(Error::OpenRefused)));
    assert_eq!(
        entries(&log, "c"),
        [
            "c:opened",
            "c:started",
            "c:post_started",
            "c:suspend",
            "c:closed"
        ]
    );
    teardown(client, server);
}

#[test]
fn two_endpoints_of_the_same_role_do_not_connect() {
    let (a, b) = kmcl::Connector::local_pair();
    let x = Channel::allocate(Role::Client, a).unwrap();
    let y = Channel::allocate(Role::Client, b).unwrap();
    x.enable().unwrap();
    y.enable().unwrap();
    until(|| x.phase() == Phase::Closed || y.phase() == Phase::Closed);
    x.disable().unwrap();
    y.disable().unwrap();
    x.cleanup().unwrap();
    y.cleanup().unwrap();
}

#[test]
fn counters_count_packets_bytes_and_signals() {
    let log = Log::default();
    let (client, server) = open_pair(&log);
    for _ in 0..10 {
        client.send_synchronous_request(&[1; 64], None).unwrap();
    }
    let c = client.counters();
    assert_eq!(c.packets_sent, 10);
    assert_eq!(c.bytes_sent, 640);
    assert_eq!(c.completions_received, 10);
    assert!(c.signals_sent >= 1 && c.signals_sent <= 10);
    let s = server.counters();
    assert_eq!(s.packets_received, 10);
    assert_eq!(s.packets_sent, 10, "ten completions");
    teardown(client, server);
}

#[test]
fn dropping_an_enabled_channel_disables_it() {
    let log = Log::default();
    let (client, server) = open_pair(&log);
    drop(client);
    assert_eq!(
        entries(&log, "c").last().map(String::as_str),
        Some("c:closed")
    );
    until(|| server.phase() == Phase::Closed);
    server.disable().unwrap();
    server.cleanup().unwrap();
}

#[test]
fn packets_sent_before_the_channel_opens_are_queued_then_delivered() {
    let (client, server) = Channel::local_pair().unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let g2 = got.clone();
    server
        .set_process_packet_callbacks(
            move |_, p| {
                g2.lock().unwrap().push(p.payload().to_vec());
                p.complete(&[]).unwrap();
            },
            none(),
        )
        .unwrap();
    client.enable().unwrap();
    let (tx, rx) = mpsc::channel();
    for i in 0..3u8 {
        let tx = tx.clone();
        client
            .send(&[i], SendFlags::WAIT_FOR_COMPLETION, move |c| {
                tx.send(c.result.is_ok()).unwrap()
            })
            .unwrap();
    }
    assert_eq!(
        client.counters().packets_queued,
        3,
        "no peer yet: queued, not sent"
    );
    assert_eq!(client.counters().packets_sent, 0);
    server.enable().unwrap();
    server.start().unwrap();
    for _ in 0..3 {
        assert!(rx.recv().unwrap());
    }
    assert_eq!(*got.lock().unwrap(), vec![vec![0], vec![1], vec![2]]);
    teardown(client, server);
}

#[test]
fn the_in_process_pipe_moves_packets_in_order_and_reports_the_writer_leaving() {
    let (mut tx, mut rx) = kmcl::pipe::pipe(1).unwrap();
    tx.set_batch(7);
    let writer = std::thread::spawn(move || {
        for i in 0..5000u32 {
            tx.send(&i.to_le_bytes().repeat((i % 50) as usize)).unwrap();
        }
    });
    for i in 0..5000u32 {
        assert_eq!(
            rx.recv().unwrap(),
            &i.to_le_bytes().repeat((i % 50) as usize)[..]
        );
    }
    writer.join().unwrap();
    assert!(matches!(rx.recv(), Err(Error::DeviceRemoved)));
}

#[test]
fn the_default_pipe_coalesces_small_messages_and_keeps_order_and_boundaries() {
    // 16 KiB ring: batches of 2 KiB, messages up to 512 bytes coalesced, larger ones alone.
    let (mut tx, mut rx) = kmcl::pipe::pipe(4).unwrap();
    let msg = |i: u32| -> Vec<u8> {
        let len = match i % 7 {
            0 => 0,
            1 => 1000 + (i % 13) as usize,
            _ => (i % 300) as usize,
        };
        (0..len).map(|b| (b as u32 ^ i) as u8).collect()
    };
    let writer = std::thread::spawn(move || {
        for i in 0..3000u32 {
            tx.send(&msg(i)).unwrap();
        }
        // Still alive: flush makes everything visible (and wakes a sleeping reader).
        tx.flush().unwrap();
        tx.send(b"last").unwrap();
        tx
    });
    for i in 0..3000u32 {
        assert_eq!(rx.recv().unwrap(), &msg(i)[..], "message {i}");
    }
    let tx = writer.join().unwrap();
    drop(tx);
    assert_eq!(rx.recv().unwrap(), b"last");
    assert!(matches!(rx.recv(), Err(Error::DeviceRemoved)));
}

#[test]
fn a_pipe_without_coalescing_sends_one_packet_per_message_and_publishes_automatically() {
    let (mut tx, mut rx) = kmcl::pipe::pipe(4).unwrap();
    tx.set_coalescing(false);
    let msg = |i: u32| -> Vec<u8> {
        (0..(i % 90) as usize)
            .map(|b| (b as u32 ^ i) as u8)
            .collect()
    };
    let writer = std::thread::spawn(move || {
        for i in 0..3000u32 {
            tx.send(&msg(i)).unwrap();
        }
        assert_eq!(tx.packets_sent(), 3000, "one VMBus packet per message");
        // Still alive: flush makes the last packets visible (and wakes a sleeping reader).
        tx.flush().unwrap();
        tx.send(b"last").unwrap();
        tx.flush().unwrap();
        tx
    });
    for i in 0..3000u32 {
        assert_eq!(rx.recv().unwrap(), &msg(i)[..], "message {i}");
    }
    assert_eq!(rx.recv().unwrap(), b"last");
    let tx = writer.join().unwrap();
    assert_eq!(tx.packets_sent(), 3001);
    drop(tx);
    assert!(matches!(rx.recv(), Err(Error::DeviceRemoved)));

    // The default coalesces the same messages into far fewer packets.
    let (mut tx, mut rx) = kmcl::pipe::pipe(4).unwrap();
    let writer = std::thread::spawn(move || {
        for i in 0..3000u32 {
            tx.send(&msg(i)).unwrap();
        }
        tx.flush().unwrap();
        tx.packets_sent()
    });
    for i in 0..3000u32 {
        assert_eq!(rx.recv().unwrap(), &msg(i)[..], "message {i}");
    }
    assert!(writer.join().unwrap() < 300);
}
