//! Misuse is an error, never undefined behaviour, a panic inside the registrar, or a hang.

mod support;
use nmr::{BindingHandle, DetachStatus, Error, Registrar, RegistrationHandle, Status};
use std::sync::{Arc, Mutex};
use support::*;

fn attached_pair(
    r: &Registrar,
    log: &Arc<Log>,
    client_detach: DetachStatus,
) -> (Arc<TestClient>, RegistrationHandle, RegistrationHandle) {
    let c = TestClient::custom("c", log, r, attach_with(1, 1), answer(client_detach));
    let ph = TestProvider::accepting("p", log, r, 2, 2).register(instance(NPI, 1, 0, "p"));
    let ch = c.register(instance(NPI, 2, 0, "c"));
    (c, ch, ph)
}

#[test]
fn handles_that_are_unknown_stale_or_made_up_are_rejected() {
    let r = Registrar::new();
    let log = Log::new();
    let ch = TestClient::accepting("c", &log, &r, 1, 1).register(instance(NPI, 1, 0, "c"));
    r.deregister_client(ch).unwrap();
    r.wait_for_client_deregister_complete(ch).unwrap();
    // Stale: the registration is closed.
    assert_eq!(r.deregister_client(ch), Err(Error::InvalidHandle));
    assert_eq!(
        r.wait_for_client_deregister_complete(ch),
        Err(Error::InvalidHandle)
    );
    // The slot is reused by a new registration; the old handle still does not reach it.
    let ch2 = TestClient::accepting("c2", &log, &r, 1, 1).register(instance(NPI, 1, 0, "c2"));
    assert_ne!(ch, ch2);
    assert_eq!(r.deregister_client(ch), Err(Error::InvalidHandle));
    // Made up.
    for raw in [0u64, 1, 0xdead_beef, u64::MAX, 0x0000_7ffd_1234_5678] {
        let h = RegistrationHandle::from_raw(raw);
        assert!(r.deregister_client(h).is_err());
        assert!(r.deregister_provider(h).is_err());
        assert!(r.wait_for_provider_deregister_complete(h).is_err());
        let b = BindingHandle::from_raw(raw);
        assert!(r.client_detach_provider_complete(b).is_err());
        assert!(r.provider_detach_client_complete(b).is_err());
        assert!(r.client_attach_provider(b, ctx(0), ctx(0)).is_err());
    }
    r.deregister_client(ch2).unwrap();
    r.wait_for_client_deregister_complete(ch2).unwrap();
}

#[test]
fn handles_of_the_wrong_kind_are_rejected() {
    let r = Registrar::new();
    let log = Log::new();
    let (c, ch, ph) = attached_pair(&r, &log, DetachStatus::Done);
    let b = c.binding();
    assert!(matches!(
        r.deregister_provider(ch),
        Err(Error::WrongHandleKind { .. })
    ));
    assert!(matches!(
        r.deregister_client(ph),
        Err(Error::WrongHandleKind { .. })
    ));
    assert!(matches!(
        r.deregister_client(RegistrationHandle::from_raw(b.to_raw())),
        Err(Error::WrongHandleKind { .. })
    ));
    assert!(matches!(
        r.client_detach_provider_complete(BindingHandle::from_raw(ch.to_raw())),
        Err(Error::WrongHandleKind { .. })
    ));
    assert_eq!(
        Error::WrongHandleKind {
            expected: "x",
            actual: "y"
        }
        .status(),
        Status::INVALID_PARAMETER
    );
    // Nothing was disturbed.
    assert_eq!(r.snapshot().bindings.len(), 1);
    r.deregister_client(ch).unwrap();
    r.wait_for_client_deregister_complete(ch).unwrap();
    r.deregister_provider(ph).unwrap();
    r.wait_for_provider_deregister_complete(ph).unwrap();
}

#[test]
fn deregistering_twice_is_an_error_and_loses_nothing() {
    let r = Registrar::new();
    let log = Log::new();
    let (_c, ch, ph) = attached_pair(&r, &log, DetachStatus::Done);
    r.deregister_client(ch).unwrap();
    assert_eq!(r.deregister_client(ch), Err(Error::AlreadyDeregistering));
    assert_eq!(log.count(is_client_detach), 1);
    r.wait_for_client_deregister_complete(ch).unwrap();
    r.deregister_provider(ph).unwrap();
    r.wait_for_provider_deregister_complete(ph).unwrap();
}

#[test]
fn waiting_before_deregistering_is_an_error_and_the_registration_stays_active() {
    let r = Registrar::new();
    let log = Log::new();
    let (_c, ch, ph) = attached_pair(&r, &log, DetachStatus::Done);
    assert_eq!(
        r.wait_for_client_deregister_complete(ch),
        Err(Error::NotDeregistering)
    );
    assert_eq!(
        r.wait_for_provider_deregister_complete(ph),
        Err(Error::NotDeregistering)
    );
    assert_eq!(r.snapshot().bindings.len(), 1);
    assert_eq!(Error::NotDeregistering.status(), Status::INVALID_PARAMETER);
    r.deregister_client(ch).unwrap();
    r.wait_for_client_deregister_complete(ch).unwrap();
    r.deregister_provider(ph).unwrap();
    r.wait_for_provider_deregister_complete(ph).unwrap();
}

#[test]
fn completing_twice_after_success_or_without_a_pending_detach_is_an_error() {
    let r = Registrar::new();
    let log = Log::new();
    let (c, ch, ph) = attached_pair(&r, &log, DetachStatus::Pending);
    let b = c.binding();
    // No detach yet.
    assert_eq!(
        r.client_detach_provider_complete(b),
        Err(Error::NoPendingDetach)
    );
    assert_eq!(
        r.provider_detach_client_complete(b),
        Err(Error::NoPendingDetach)
    );
    r.deregister_provider(ph).unwrap();
    // The provider answered SUCCESS: completing it is an error.
    assert_eq!(
        r.provider_detach_client_complete(b),
        Err(Error::NoPendingDetach)
    );
    assert_eq!(log.count(is_cleanup), 0);
    r.client_detach_provider_complete(b).unwrap();
    assert_eq!(log.count(is_cleanup), 2);
    // Twice: the binding is gone now.
    assert_eq!(
        r.client_detach_provider_complete(b),
        Err(Error::InvalidHandle)
    );
    assert_eq!(log.count(is_cleanup), 2);
    r.wait_for_provider_deregister_complete(ph).unwrap();
    r.deregister_client(ch).unwrap();
    r.wait_for_client_deregister_complete(ch).unwrap();
}

#[test]
fn completing_twice_while_the_other_side_is_pending_is_an_error() {
    let r = Registrar::new();
    let log = Log::new();
    let c = TestClient::custom(
        "c",
        &log,
        &r,
        attach_with(1, 1),
        answer(DetachStatus::Pending),
    );
    let ph = TestProvider::custom(
        "p",
        &log,
        &r,
        Box::new(|_, _, _, _| Ok(Default::default())),
        answer(DetachStatus::Pending),
    )
    .register(instance(NPI, 1, 0, "p"));
    let ch = c.register(instance(NPI, 2, 0, "c"));
    let b = c.binding();
    r.deregister_client(ch).unwrap();
    r.client_detach_provider_complete(b).unwrap();
    assert_eq!(
        r.client_detach_provider_complete(b),
        Err(Error::NoPendingDetach)
    );
    assert_eq!(log.count(is_cleanup), 0);
    r.provider_detach_client_complete(b).unwrap();
    assert_eq!(log.count(is_cleanup), 2);
    r.wait_for_client_deregister_complete(ch).unwrap();
    r.deregister_provider(ph).unwrap();
    r.wait_for_provider_deregister_complete(ph).unwrap();
}

#[test]
fn attaching_outside_the_attach_callback_or_after_success_is_rejected() {
    let r = Registrar::new();
    let log = Log::new();
    let second = Arc::new(Mutex::new(None));
    let s2 = Arc::clone(&second);
    let c = TestClient::custom(
        "c",
        &log,
        &r,
        Box::new(move |r, b, _| {
            let s = status_of(r.client_attach_provider(b, ctx(1), ctx(1)));
            *s2.lock().unwrap() = Some(r.client_attach_provider(b, ctx(1), ctx(1)).err());
            s
        }),
        answer(DetachStatus::Done),
    );
    let ph = TestProvider::accepting("p", &log, &r, 1, 1).register(instance(NPI, 1, 0, "p"));
    let ch = c.register(instance(NPI, 2, 0, "c"));
    assert_eq!(
        *second.lock().unwrap(),
        Some(Some(Status::INVALID_DEVICE_STATE))
    );
    assert_eq!(log.count(is_provider_attach), 1);
    let b = c.binding();
    assert_eq!(
        r.client_attach_provider(b, ctx(1), ctx(1)),
        Err(Status::INVALID_DEVICE_STATE)
    );
    // From another thread during someone else's attach: also rejected.
    let r2 = r.clone();
    assert!(
        std::thread::spawn(move || r2.client_attach_provider(b, ctx(1), ctx(1)))
            .join()
            .unwrap()
            .is_err()
    );
    assert_eq!(log.count(is_provider_attach), 1);
    r.deregister_client(ch).unwrap();
    r.wait_for_client_deregister_complete(ch).unwrap();
    r.deregister_provider(ph).unwrap();
    r.wait_for_provider_deregister_complete(ph).unwrap();
}

#[test]
fn waiting_inside_an_own_callback_is_an_error_not_a_deadlock() {
    within(10, || {
        let r = Registrar::new();
        let log = Log::new();
        let result = Arc::new(Mutex::new(None));
        let res2 = Arc::clone(&result);
        let me: Arc<Mutex<Option<RegistrationHandle>>> = Arc::new(Mutex::new(None));
        let me2 = Arc::clone(&me);
        let c = TestClient::custom(
            "c",
            &log,
            &r,
            attach_with(1, 1),
            Box::new(move |r, _| {
                let h = me2.lock().unwrap().unwrap();
                *res2.lock().unwrap() = Some(r.wait_for_client_deregister_complete(h));
                DetachStatus::Done
            }),
        );
        let ph = TestProvider::accepting("p", &log, &r, 1, 1).register(instance(NPI, 1, 0, "p"));
        let ch = c.register(instance(NPI, 2, 0, "c"));
        *me.lock().unwrap() = Some(ch);
        r.deregister_client(ch).unwrap();
        assert_eq!(
            *result.lock().unwrap(),
            Some(Err(Error::WaitInsideCallback))
        );
        r.wait_for_client_deregister_complete(ch).unwrap();
        r.deregister_provider(ph).unwrap();
        r.wait_for_provider_deregister_complete(ph).unwrap();
    });
}

#[test]
fn panicking_callbacks_leave_the_registrar_consistent() {
    within(10, || {
        let r = Registrar::new();
        let log = Log::new();
        // A client whose attach panics before attaching: discarded.
        let bad_attach = TestClient::custom(
            "bad-attach",
            &log,
            &r,
            Box::new(|_, _, _| panic!("attach boom")),
            answer(DetachStatus::Done),
        );
        // A client that attaches and then panics: provider detached, both cleaned up.
        let bad_after = TestClient::custom(
            "bad-after",
            &log,
            &r,
            Box::new(|r, b, _| {
                r.client_attach_provider(b, ctx(1), ctx(1)).unwrap();
                panic!("after attach boom")
            }),
            answer(DetachStatus::Done),
        );
        // A client whose detach panics: treated as done.
        let bad_detach = TestClient::custom(
            "bad-detach",
            &log,
            &r,
            attach_with(1, 1),
            Box::new(|_, _| panic!("detach boom")),
        );
        let good = TestClient::accepting("good", &log, &r, 1, 1);
        let ph = TestProvider::accepting("p", &log, &r, 1, 1).register(instance(NPI, 1, 0, "p"));
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let hs: Vec<_> = [&bad_attach, &bad_after, &bad_detach, &good]
            .iter()
            .enumerate()
            .map(|(i, c)| c.register(instance(NPI, 10 + i as u128, 0, c.name)))
            .collect();
        assert_eq!(
            r.snapshot().bindings.len(),
            2,
            "bad-detach and good attached"
        );
        r.deregister_provider(ph).unwrap();
        r.wait_for_provider_deregister_complete(ph).unwrap();
        std::panic::set_hook(prev);
        assert!(r.snapshot().bindings.is_empty());
        for h in hs {
            r.deregister_client(h).unwrap();
            r.wait_for_client_deregister_complete(h).unwrap();
        }
        assert!(r.snapshot().registrations.is_empty());
        // The registrar is still fully usable.
        let p2 = TestProvider::accepting("p2", &log, &r, 1, 1).register(instance(NPI, 1, 0, "p2"));
        let g = good.register(instance(NPI, 20, 0, "good"));
        assert_eq!(r.snapshot().bindings.len(), 1);
        r.deregister_client(g).unwrap();
        r.wait_for_client_deregister_complete(g).unwrap();
        r.deregister_provider(p2).unwrap();
        r.wait_for_provider_deregister_complete(p2).unwrap();
    });
}
