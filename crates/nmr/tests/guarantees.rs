//! One test per ordering guarantee G1–G8 of the behaviour spec (§1.5).

mod support;
use nmr::{DetachStatus, Registrar, Status};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use support::*;

#[test]
fn g1_client_attach_runs_once_per_pair_whichever_side_registers_second() {
    for provider_first in [true, false] {
        let r = Registrar::new();
        let log = Log::new();
        let c = TestClient::accepting("c", &log, &r, 1, 2);
        let p = TestProvider::accepting("p", &log, &r, 3, 4);
        let (ch, ph) = if provider_first {
            let ph = p.register(instance(NPI, 2, 0, "p"));
            assert_eq!(log.count(is_client_attach), 0, "no client yet: no attach");
            (c.register(instance(NPI, 1, 0, "c")), ph)
        } else {
            let ch = c.register(instance(NPI, 1, 0, "c"));
            assert_eq!(log.count(is_client_attach), 0, "no provider yet: no attach");
            (ch, p.register(instance(NPI, 2, 0, "p")))
        };
        assert_eq!(log.count(is_client_attach), 1);
        assert_eq!(log.count(is_provider_attach), 1);
        r.deregister_client(ch).unwrap();
        r.wait_for_client_deregister_complete(ch).unwrap();
        r.deregister_provider(ph).unwrap();
        r.wait_for_provider_deregister_complete(ph).unwrap();
        assert_eq!(
            log.count(is_client_attach),
            1,
            "no re-offer during teardown"
        );
    }
}

#[test]
fn g1_a_declined_pair_is_not_offered_again() {
    let r = Registrar::new();
    let log = Log::new();
    let c = TestClient::custom(
        "c",
        &log,
        &r,
        Box::new(|_, _, _| Status::NOINTERFACE),
        answer(DetachStatus::Done),
    );
    let p1 = TestProvider::accepting("p1", &log, &r, 1, 1);
    let ch = c.register(instance(NPI, 1, 0, "c"));
    let p1h = p1.register(instance(NPI, 2, 0, "p1"));
    // Other registrations coming and going do not re-offer the declined pair.
    let p2 = TestProvider::accepting("p2", &log, &r, 1, 1);
    let p2h = p2.register(instance(NPI, 3, 0, "p2"));
    r.deregister_provider(p2h).unwrap();
    r.wait_for_provider_deregister_complete(p2h).unwrap();
    assert_eq!(
        log.count(|e| matches!(e, Ev::ClientAttach { provider, .. } if provider == "p1")),
        1
    );
    assert_eq!(log.count(is_provider_attach), 0);
    r.deregister_provider(p1h).unwrap();
    r.wait_for_provider_deregister_complete(p1h).unwrap();
    // A new registration of the same module is a new pair: offered again.
    let p1h = p1.register(instance(NPI, 2, 0, "p1"));
    assert_eq!(
        log.count(|e| matches!(e, Ev::ClientAttach { provider, .. } if provider == "p1")),
        2
    );
    for (h, prov) in [(p1h, true), (ch, false)] {
        if prov {
            r.deregister_provider(h).unwrap();
            r.wait_for_provider_deregister_complete(h).unwrap();
        } else {
            r.deregister_client(h).unwrap();
            r.wait_for_client_deregister_complete(h).unwrap();
        }
    }
    assert_eq!(log.count(is_cleanup), 0, "declined pairs never get cleanup");
}

#[test]
fn g2_a_deregistering_registration_gets_no_new_attach() {
    let r = Registrar::new();
    let log = Log::new();
    // The provider's detach pends, so it stays deregistering for a while.
    let p = TestProvider::custom(
        "p",
        &log,
        &r,
        Box::new(|_, _, _, _| Ok(Default::default())),
        answer(DetachStatus::Pending),
    );
    let c1 = TestClient::accepting("c1", &log, &r, 1, 1);
    let ph = p.register(instance(NPI, 1, 0, "p"));
    let c1h = c1.register(instance(NPI, 2, 0, "c1"));
    r.deregister_provider(ph).unwrap();
    // As initiator: a new client finds no provider.
    let c2 = TestClient::accepting("c2", &log, &r, 1, 1);
    let c2h = c2.register(instance(NPI, 3, 0, "c2"));
    assert_eq!(
        log.count(|e| matches!(e, Ev::ClientAttach { client: "c2", .. })),
        0
    );
    // As target: a deregistering client is not offered a new provider.
    r.deregister_client(c2h).unwrap();
    let p2 = TestProvider::accepting("p2", &log, &r, 1, 1);
    let p2h = p2.register(instance(NPI, 4, 0, "p2"));
    assert_eq!(
        log.count(|e| matches!(e, Ev::ClientAttach { client: "c2", .. })),
        0
    );
    assert_eq!(
        log.count(
            |e| matches!(e, Ev::ClientAttach { client: "c1", provider, .. } if provider == "p2")
        ),
        1
    );
    r.wait_for_client_deregister_complete(c2h).unwrap();
    r.provider_detach_client_complete(p.bindings.lock().unwrap()[0])
        .unwrap();
    r.wait_for_provider_deregister_complete(ph).unwrap();
    r.deregister_client(c1h).unwrap();
    r.wait_for_client_deregister_complete(c1h).unwrap();
    r.deregister_provider(p2h).unwrap();
    r.wait_for_provider_deregister_complete(p2h).unwrap();
}

#[test]
fn g3_provider_attach_runs_nested_inside_client_attach_on_the_same_thread() {
    let r = Registrar::new();
    let log = Log::new();
    let inside = Arc::new(AtomicBool::new(false));
    let seen_inside = Arc::new(AtomicBool::new(false));
    let (i1, s1) = (Arc::clone(&inside), Arc::clone(&seen_inside));
    let c = TestClient::custom(
        "c",
        &log,
        &r,
        Box::new(move |r, b, _| {
            i1.store(true, Ordering::SeqCst);
            let s = status_of(r.client_attach_provider(b, ctx(1), ctx(2)));
            i1.store(false, Ordering::SeqCst);
            s
        }),
        answer(DetachStatus::Done),
    );
    let i2 = Arc::clone(&inside);
    let p = TestProvider::custom(
        "p",
        &log,
        &r,
        Box::new(move |_, _, _, _| {
            s1.store(i2.load(Ordering::SeqCst), Ordering::SeqCst);
            Ok(Default::default())
        }),
        answer(DetachStatus::Done),
    );
    let ph = p.register(instance(NPI, 1, 0, "p"));
    let ch = c.register(instance(NPI, 2, 0, "c"));
    assert!(
        seen_inside.load(Ordering::SeqCst),
        "ProviderAttachClient ran inside NmrClientAttachProvider"
    );
    let ev = log.with_threads();
    let t = std::thread::current().id();
    assert!(
        ev.iter().all(|(_, th)| *th == t),
        "attach callbacks run on the registering thread"
    );
    // The provider never attaches on its own: registering more providers alone attaches nothing.
    r.deregister_client(ch).unwrap();
    r.wait_for_client_deregister_complete(ch).unwrap();
    let before = log.count(is_provider_attach);
    let p2 = TestProvider::accepting("p2", &log, &r, 0, 0);
    let p2h = p2.register(instance(NPI, 3, 0, "p2"));
    assert_eq!(log.count(is_provider_attach), before);
    for h in [ph, p2h] {
        r.deregister_provider(h).unwrap();
        r.wait_for_provider_deregister_complete(h).unwrap();
    }
}

#[test]
fn g4_detach_is_called_once_per_side_when_both_sides_deregister() {
    // Sequentially: the second deregistration finds detach under way.
    let r = Registrar::new();
    let log = Log::new();
    let c = TestClient::custom(
        "c",
        &log,
        &r,
        attach_with(1, 1),
        answer(DetachStatus::Pending),
    );
    let p = TestProvider::accepting("p", &log, &r, 2, 2);
    let ph = p.register(instance(NPI, 1, 0, "p"));
    let ch = c.register(instance(NPI, 2, 0, "c"));
    r.deregister_provider(ph).unwrap();
    r.deregister_client(ch).unwrap();
    assert_eq!(log.count(is_client_detach), 1);
    assert_eq!(log.count(is_provider_detach), 1);
    r.client_detach_provider_complete(c.binding()).unwrap();
    r.wait_for_client_deregister_complete(ch).unwrap();
    r.wait_for_provider_deregister_complete(ph).unwrap();
    assert_eq!(log.count(is_client_detach), 1);
    assert_eq!(log.count(is_provider_detach), 1);
    assert_eq!(log.count(is_cleanup), 2);
}

#[test]
fn g4_detach_is_called_once_per_side_when_both_deregister_concurrently() {
    for _ in 0..300 {
        let r = Registrar::new();
        let log = Log::new();
        let c = TestClient::accepting("c", &log, &r, 1, 1);
        let p = TestProvider::accepting("p", &log, &r, 2, 2);
        let ph = p.register(instance(NPI, 1, 0, "p"));
        let ch = c.register(instance(NPI, 2, 0, "c"));
        let barrier = Arc::new(Barrier::new(2));
        let (r2, b2) = (r.clone(), Arc::clone(&barrier));
        let t = std::thread::spawn(move || {
            b2.wait();
            r2.deregister_provider(ph).unwrap();
            r2.wait_for_provider_deregister_complete(ph).unwrap();
        });
        barrier.wait();
        r.deregister_client(ch).unwrap();
        r.wait_for_client_deregister_complete(ch).unwrap();
        t.join().unwrap();
        assert_eq!(log.count(is_client_detach), 1);
        assert_eq!(log.count(is_provider_detach), 1);
        assert_eq!(log.count(is_cleanup), 2);
    }
}

#[test]
fn g5_no_detach_before_attach_returns_and_the_late_comer_is_detached_inside_register() {
    let r = Registrar::new();
    let log = Log::new();
    let p = TestProvider::accepting("p", &log, &r, 7, 8);
    let ph = p.register(instance(NPI, 1, 0, "p"));
    // The client's attach deregisters the provider after attaching (from inside the
    // callback, like a peer racing on another thread): no detach may start before the
    // attach returns, and it starts right after, before register returns.
    let log2 = Arc::clone(&log);
    let c = TestClient::custom(
        "c",
        &log,
        &r,
        Box::new(move |r, b, _| {
            let s = status_of(r.client_attach_provider(b, ctx(5), ctx(6)));
            r.deregister_provider(ph).unwrap();
            assert_eq!(
                log2.count(is_client_detach) + log2.count(is_provider_detach),
                0,
                "detach before attach returned"
            );
            log2.mark("attach returns");
            s
        }),
        answer(DetachStatus::Done),
    );
    let ch = c.register(instance(NPI, 2, 0, "c"));
    log.mark("register returned");
    let ev = log.events();
    let ret = ev
        .iter()
        .position(|e| *e == Ev::Mark("attach returns".into()))
        .unwrap();
    let reg = ev
        .iter()
        .position(|e| *e == Ev::Mark("register returned".into()))
        .unwrap();
    let cd = ev.iter().position(is_client_detach).unwrap();
    let pd = ev.iter().position(is_provider_detach).unwrap();
    assert!(ret < cd && ret < pd && cd < reg && pd < reg, "{ev:?}");
    assert_eq!(log.count(is_cleanup), 2);
    r.wait_for_provider_deregister_complete(ph).unwrap();
    r.deregister_client(ch).unwrap();
    r.wait_for_client_deregister_complete(ch).unwrap();
}

#[test]
fn g5_a_late_comer_racing_from_another_thread_is_detached_once_attached() {
    for _ in 0..200 {
        let r = Registrar::new();
        let log = Log::new();
        let p = TestProvider::accepting("p", &log, &r, 1, 1);
        let ph = p.register(instance(NPI, 1, 0, "p"));
        let c = TestClient::accepting("c", &log, &r, 2, 2);
        let r2 = r.clone();
        let t = std::thread::spawn(move || {
            r2.deregister_provider(ph).unwrap();
            r2.wait_for_provider_deregister_complete(ph).unwrap();
        });
        let ch = c.register(instance(NPI, 2, 0, "c"));
        t.join().unwrap();
        // Either the provider left first (no attach at all) or the attach happened and was
        // detached and cleaned up: never an attached binding left behind.
        let attached = !c.bindings.lock().unwrap().is_empty();
        if attached {
            assert_eq!(log.count(is_client_detach), 1);
            assert_eq!(log.count(is_provider_detach), 1);
            assert_eq!(log.count(is_cleanup), 2);
        } else {
            assert_eq!(log.count(is_cleanup), 0);
        }
        assert!(r.snapshot().bindings.is_empty());
        r.deregister_client(ch).unwrap();
        r.wait_for_client_deregister_complete(ch).unwrap();
    }
}

#[test]
fn g6_cleanup_runs_only_after_both_sides_are_done() {
    let r = Registrar::new();
    let log = Log::new();
    let c = TestClient::custom(
        "c",
        &log,
        &r,
        attach_with(1, 1),
        answer(DetachStatus::Pending),
    );
    let p = TestProvider::custom(
        "p",
        &log,
        &r,
        Box::new(|_, _, _, _| Ok(Default::default())),
        answer(DetachStatus::Pending),
    );
    let ph = p.register(instance(NPI, 1, 0, "p"));
    let ch = c.register(instance(NPI, 2, 0, "c"));
    r.deregister_client(ch).unwrap();
    assert_eq!(log.count(is_client_detach), 1);
    assert_eq!(log.count(is_provider_detach), 1);
    r.client_detach_provider_complete(c.binding()).unwrap();
    assert_eq!(log.count(is_cleanup), 0, "provider still pending");
    r.provider_detach_client_complete(c.binding()).unwrap();
    assert_eq!(
        log.count(is_cleanup),
        2,
        "both cleanups inside the last completion"
    );
    r.wait_for_client_deregister_complete(ch).unwrap();
    r.deregister_provider(ph).unwrap();
    r.wait_for_provider_deregister_complete(ph).unwrap();
    assert_eq!(log.count(is_cleanup), 2);
}

#[test]
fn g7_wait_returns_only_after_every_cleanup_of_the_registration() {
    let r = Registrar::new();
    let log = Log::new();
    let p = TestProvider::custom(
        "p",
        &log,
        &r,
        Box::new(|_, _, _, _| Ok(Default::default())),
        answer(DetachStatus::Pending),
    );
    let ph = p.register(instance(NPI, 1, 0, "p"));
    let clients: Vec<_> = (0..3)
        .map(|i| {
            let c = TestClient::accepting("c", &log, &r, i, i);
            let h = c.register(instance(NPI, 10 + i as u128, 0, "c"));
            (c, h)
        })
        .collect();
    r.deregister_provider(ph).unwrap();
    let bindings = p.bindings.lock().unwrap().clone();
    assert_eq!(bindings.len(), 3);
    let (r2, log2) = (r.clone(), Arc::clone(&log));
    let completer = std::thread::spawn(move || {
        for b in bindings {
            std::thread::sleep(std::time::Duration::from_millis(20));
            r2.provider_detach_client_complete(b).unwrap();
        }
        log2.mark("completed all");
    });
    within(20, {
        let r = r.clone();
        move || r.wait_for_provider_deregister_complete(ph).unwrap()
    });
    log.mark("wait returned");
    let ev = log.events();
    let last_cleanup = ev.iter().rposition(is_cleanup).unwrap();
    let waited = ev
        .iter()
        .position(|e| *e == Ev::Mark("wait returned".into()))
        .unwrap();
    assert!(last_cleanup < waited);
    assert_eq!(log.count(is_cleanup), 6);
    completer.join().unwrap();
    for (_, h) in clients {
        r.deregister_client(h).unwrap();
        r.wait_for_client_deregister_complete(h).unwrap();
    }
}

#[test]
fn g8_bindings_are_independent_and_there_is_one_per_pair() {
    let r = Registrar::new();
    let log = Log::new();
    let providers: Vec<_> = (0..4)
        .map(|i| {
            let p = TestProvider::accepting("p", &log, &r, 100 + i, 100 + i);
            let h = p.register(instance(NPI, 100 + i as u128, 0, "p"));
            (p, h)
        })
        .collect();
    let detached = Arc::new(AtomicUsize::new(0));
    let d2 = Arc::clone(&detached);
    let c = TestClient::custom(
        "c",
        &log,
        &r,
        attach_with(1, 1),
        Box::new(move |_, _| {
            d2.fetch_add(1, Ordering::SeqCst);
            DetachStatus::Done
        }),
    );
    let ch = c.register(instance(NPI, 1, 0, "c"));
    assert_eq!(c.bindings.lock().unwrap().len(), 4);
    let mut handles: Vec<_> = c.bindings.lock().unwrap().iter().map(|b| b.0).collect();
    handles.sort_by_key(|h| h.to_raw());
    handles.dedup();
    assert_eq!(handles.len(), 4, "distinct binding per pair");
    // One provider leaving detaches exactly one binding.
    r.deregister_provider(providers[0].1).unwrap();
    r.wait_for_provider_deregister_complete(providers[0].1)
        .unwrap();
    assert_eq!(detached.load(Ordering::SeqCst), 1);
    assert_eq!(r.snapshot().bindings.len(), 3);
    // The client leaving detaches the remaining three: N bindings, N detach calls.
    r.deregister_client(ch).unwrap();
    r.wait_for_client_deregister_complete(ch).unwrap();
    assert_eq!(detached.load(Ordering::SeqCst), 4);
    for (_, h) in &providers[1..] {
        r.deregister_provider(*h).unwrap();
        r.wait_for_provider_deregister_complete(*h).unwrap();
    }
    assert!(r.snapshot().registrations.is_empty());
}
