//! The races of spec §4.2, one named test each, run many times on real threads (the loom
//! models in `loom_registrar.rs` explore the same races exhaustively).

mod support;
use nmr::{DetachStatus, Error, Registrar, Status};
use std::sync::{Arc, Barrier, Mutex};
use support::*;

const ROUNDS: usize = 200;

#[test]
fn race_both_sides_deregister_at_once() {
    for _ in 0..ROUNDS {
        let r = Registrar::new();
        let log = Log::new();
        let c = TestClient::accepting("c", &log, &r, 1, 1);
        let ph = TestProvider::accepting("p", &log, &r, 2, 2).register(instance(NPI, 1, 0, "p"));
        let ch = c.register(instance(NPI, 2, 0, "c"));
        let go = Arc::new(Barrier::new(2));
        let (r2, go2) = (r.clone(), Arc::clone(&go));
        let t = std::thread::spawn(move || {
            go2.wait();
            r2.deregister_provider(ph).unwrap();
            r2.wait_for_provider_deregister_complete(ph).unwrap();
        });
        go.wait();
        r.deregister_client(ch).unwrap();
        r.wait_for_client_deregister_complete(ch).unwrap();
        t.join().unwrap();
        assert_eq!(
            (log.count(is_client_detach), log.count(is_provider_detach)),
            (1, 1)
        );
        assert_eq!(log.count(is_cleanup), 2);
    }
}

#[test]
fn race_a_provider_registers_while_the_client_deregisters() {
    for _ in 0..ROUNDS {
        let r = Registrar::new();
        let log = Log::new();
        let c = TestClient::accepting("c", &log, &r, 1, 1);
        let ch = c.register(instance(NPI, 1, 0, "c"));
        let go = Arc::new(Barrier::new(2));
        let (r2, go2, log2) = (r.clone(), Arc::clone(&go), Arc::clone(&log));
        let t = std::thread::spawn(move || {
            go2.wait();
            TestProvider::accepting("p", &log2, &r2, 2, 2).register(instance(NPI, 2, 0, "p"))
        });
        go.wait();
        r.deregister_client(ch).unwrap();
        r.wait_for_client_deregister_complete(ch).unwrap();
        let ph = t.join().unwrap();
        // Either the client was already deregistering when the provider scanned (no
        // binding, G2), or the attach was under way and the detach followed it (G5).
        let attached = log.count(is_provider_attach) == 1;
        if attached {
            assert_eq!(
                (log.count(is_client_detach), log.count(is_provider_detach)),
                (1, 1)
            );
            assert_eq!(log.count(is_cleanup), 2);
        } else {
            assert_eq!(
                log.count(|e| is_client_detach(e) || is_provider_detach(e) || is_cleanup(e)),
                0
            );
        }
        assert!(r.snapshot().bindings.is_empty(), "wait covered the binding");
        r.deregister_provider(ph).unwrap();
        r.wait_for_provider_deregister_complete(ph).unwrap();
    }
}

#[test]
fn race_an_attach_fails_in_every_way_and_leaves_no_binding() {
    // Client declines; provider declines; provider errors; NmrClientAttachProvider itself
    // fails (bad handle): all Discarded, no further callbacks.
    let r = Registrar::new();
    let log = Log::new();
    let ph_decline = TestProvider::custom(
        "decline",
        &log,
        &r,
        Box::new(|_, _, _, _| Err(Status::NOINTERFACE)),
        answer(DetachStatus::Done),
    )
    .register(instance(NPI, 1, 0, "decline"));
    let ph_error = TestProvider::custom(
        "error",
        &log,
        &r,
        Box::new(|_, _, _, _| Err(Status::INSUFFICIENT_RESOURCES)),
        answer(DetachStatus::Done),
    )
    .register(instance(NPI, 2, 0, "error"));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = Arc::clone(&seen);
    let c = TestClient::custom(
        "c",
        &log,
        &r,
        Box::new(move |r, b, p| {
            let bogus = r.client_attach_provider(
                nmr::BindingHandle::from_raw(b.to_raw() ^ 1),
                ctx(1),
                ctx(1),
            );
            assert!(bogus.is_err(), "a wrong binding handle cannot attach");
            let s = status_of(r.client_attach_provider(b, ctx(1), ctx(1)));
            s2.lock().unwrap().push((p.display_name(), s));
            s
        }),
        answer(DetachStatus::Done),
    );
    let ch = c.register(instance(NPI, 3, 0, "c"));
    let declining = TestClient::custom(
        "declining",
        &log,
        &r,
        Box::new(|_, _, _| Status::NOINTERFACE),
        answer(DetachStatus::Done),
    );
    let dh = declining.register(instance(NPI, 4, 0, "declining"));
    let mut got = seen.lock().unwrap().clone();
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        got,
        vec![
            ("decline".to_owned(), Status::NOINTERFACE),
            ("error".to_owned(), Status::INSUFFICIENT_RESOURCES)
        ]
    );
    assert!(r.snapshot().bindings.is_empty());
    for h in [ch, dh] {
        r.deregister_client(h).unwrap();
        r.wait_for_client_deregister_complete(h).unwrap();
    }
    for h in [ph_decline, ph_error] {
        r.deregister_provider(h).unwrap();
        r.wait_for_provider_deregister_complete(h).unwrap();
    }
    assert_eq!(
        log.count(|e| is_client_detach(e) || is_provider_detach(e) || is_cleanup(e)),
        0
    );
}

#[test]
fn race_complete_arrives_before_the_callback_returns_pending() {
    for _ in 0..ROUNDS {
        let r = Registrar::new();
        let log = Log::new();
        let b = Arc::new(Mutex::new(None));
        let (b2, b3) = (Arc::clone(&b), Arc::clone(&b));
        let go = Arc::new(Barrier::new(2));
        let go2 = Arc::clone(&go);
        let c = TestClient::custom(
            "c",
            &log,
            &r,
            Box::new(move |r, bh, _| {
                *b2.lock().unwrap() = Some(bh);
                status_of(r.client_attach_provider(bh, ctx(1), ctx(1)))
            }),
            Box::new(move |_, _| {
                go2.wait(); // let the completer run while we are still "notifying"
                DetachStatus::Pending
            }),
        );
        let ph = TestProvider::accepting("p", &log, &r, 2, 2).register(instance(NPI, 1, 0, "p"));
        let ch = c.register(instance(NPI, 2, 0, "c"));
        let r2 = r.clone();
        let t = std::thread::spawn(move || {
            let bh = b3.lock().unwrap().unwrap();
            go.wait();
            r2.client_detach_provider_complete(bh)
        });
        r.deregister_client(ch).unwrap();
        assert_eq!(t.join().unwrap(), Ok(()));
        within(10, {
            let r = r.clone();
            move || r.wait_for_client_deregister_complete(ch).unwrap()
        });
        assert_eq!(log.count(is_cleanup), 2);
        assert_eq!(
            r.client_detach_provider_complete(b.lock().unwrap().unwrap()),
            Err(Error::InvalidHandle)
        );
        r.deregister_provider(ph).unwrap();
        r.wait_for_provider_deregister_complete(ph).unwrap();
    }
}

#[test]
fn race_deregister_while_another_thread_is_inside_register_attaching_other_peers() {
    for _ in 0..ROUNDS / 4 {
        let r = Registrar::new();
        let log = Log::new();
        let providers: Vec<_> = (0..6)
            .map(|i| {
                TestProvider::accepting("p", &log, &r, 1, 1).register(instance(NPI, 10 + i, 0, "p"))
            })
            .collect();
        let go = Arc::new(Barrier::new(2));
        let (r2, go2, victims) = (r.clone(), Arc::clone(&go), providers.clone());
        let t = std::thread::spawn(move || {
            go2.wait();
            for h in &victims[..3] {
                r2.deregister_provider(*h).unwrap();
                r2.wait_for_provider_deregister_complete(*h).unwrap();
            }
        });
        go.wait();
        let c = TestClient::accepting("c", &log, &r, 1, 1);
        let ch = c.register(instance(NPI, 1, 0, "c"));
        t.join().unwrap();
        // The three survivors are attached; the others never attached or were detached and
        // cleaned up; the scan skipped nothing it should have offered.
        assert_eq!(r.snapshot().bindings.len(), 3);
        assert_eq!(log.count(is_cleanup), 2 * log.count(is_client_detach));
        r.deregister_client(ch).unwrap();
        r.wait_for_client_deregister_complete(ch).unwrap();
        for h in &providers[3..] {
            r.deregister_provider(*h).unwrap();
            r.wait_for_provider_deregister_complete(*h).unwrap();
        }
        assert!(r.snapshot().registrations.is_empty());
    }
}
