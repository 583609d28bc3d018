//! The scenarios real callers (ebpf-for-windows, msquic, xdp, usersim's tests) depend on.

mod support;
use nmr::{
    Context, DetachStatus, ModuleId, ProviderAttachment, Registrar, RegistrationInstance, Status,
};
use std::any::Any;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;
use support::*;

fn unload_client(r: &Registrar, h: nmr::RegistrationHandle) {
    r.deregister_client(h).unwrap();
    r.wait_for_client_deregister_complete(h).unwrap();
}

fn unload_provider(r: &Registrar, h: nmr::RegistrationHandle) {
    r.deregister_provider(h).unwrap();
    r.wait_for_provider_deregister_complete(h).unwrap();
}

#[test]
fn a_client_registered_alone_deregisters_pending_and_waits() {
    let r = Registrar::new();
    let log = Log::new();
    let c = TestClient::accepting("c", &log, &r, 1, 1);
    let h = c.register(instance(NPI, 1, 0, "c"));
    assert_eq!(c.handle.lock().unwrap().unwrap(), h, "handle published");
    assert!(log.events().is_empty());
    r.deregister_client(h).unwrap(); // STATUS_PENDING even with no bindings
    assert!(r.is_deregister_complete(h).unwrap());
    r.wait_for_client_deregister_complete(h).unwrap();
    assert!(log.events().is_empty());
    assert!(r.snapshot().registrations.is_empty());
}

/// The registrar keeps a spare instance allocation per thread; what the instance owned
/// (characteristics, name) must still be released when the wait returns, and the next
/// registration on the thread must see only its own instance.
#[test]
fn the_wait_releases_what_the_instance_owned_and_the_next_registration_sees_its_own() {
    struct Owned(Arc<AtomicUsize>);
    impl Drop for Owned {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let r = Registrar::new();
    let log = Log::new();
    let dropped = Arc::new(AtomicUsize::new(0));
    let c = TestClient::accepting("c", &log, &r, 1, 1);
    let h = c.register(
        instance(NPI, 1, 0, "c").with_characteristics(Arc::new(Owned(Arc::clone(&dropped)))),
    );
    unload_client(&r, h);
    assert_eq!(
        dropped.load(Ordering::SeqCst),
        1,
        "characteristics outlived the wait"
    );
    // The next registration on this thread reuses the allocation with its own contents.
    let p = TestProvider::accepting("p", &log, &r, 2, 2);
    let ph = p.register(instance(NPI, 7, 3, "second"));
    let snap = r.snapshot();
    assert_eq!(snap.registrations.len(), 1);
    assert_eq!(snap.registrations[0].name, "second");
    assert_eq!(snap.registrations[0].number, 3);
    assert_eq!(snap.registrations[0].module_id, module(7));
    unload_provider(&r, ph);
}

/// Registrations and deregistrations with many bindings, nested inside each other's
/// callbacks (the registrar reuses per-thread buffers for their binding lists; a nested call
/// must get its own): every binding is attached, detached and cleaned up exactly once.
#[test]
fn nested_registrations_and_deregistrations_with_many_bindings_each_see_their_own_lists() {
    const PROVIDERS: usize = 7;
    let r = Registrar::new();
    let log = Log::new();
    let providers: Vec<_> = (0..PROVIDERS)
        .map(|i| {
            let p = TestProvider::accepting("p", &log, &r, 100 + i, 200 + i);
            p.register(instance(NPI, 10 + i as u128, 0, "p"))
        })
        .collect();
    // The inner client registers and deregisters from inside the outer client's first
    // attach and first detach.
    let inner = TestClient::accepting("inner", &log, &r, 2, 2);
    let inner_handle = Arc::new(Mutex::new(None));
    let (ih1, ih2) = (Arc::clone(&inner_handle), Arc::clone(&inner_handle));
    let inner1 = Arc::clone(&inner);
    let outer = TestClient::custom(
        "outer",
        &log,
        &r,
        Box::new(move |r, b, _| {
            let mut h = ih1.lock().unwrap();
            if h.is_none() {
                *h = Some(inner1.register(instance(NPI, 2, 0, "inner")));
            }
            status_of(r.client_attach_provider(b, ctx(1), ctx(1)))
        }),
        Box::new(move |r, _| {
            if let Some(h) = ih2.lock().unwrap().take() {
                r.deregister_client(h).unwrap();
                r.wait_for_client_deregister_complete(h).unwrap();
            }
            DetachStatus::Done
        }),
    );
    let oh = outer.register(instance(NPI, 1, 0, "outer"));
    let count = |f: &dyn Fn(&Ev) -> bool| log.count(f);
    assert_eq!(
        count(&|e| matches!(
            e,
            Ev::ClientAttach {
                client: "outer",
                ..
            }
        )),
        PROVIDERS
    );
    assert_eq!(
        count(&|e| matches!(
            e,
            Ev::ClientAttach {
                client: "inner",
                ..
            }
        )),
        PROVIDERS
    );
    unload_client(&r, oh);
    for client in ["outer", "inner"] {
        assert_eq!(
            count(&|e| matches!(e, Ev::ClientDetach { client: c, .. } if *c == client)),
            PROVIDERS,
            "{client}'s detaches"
        );
    }
    assert_eq!(
        count(&|e| matches!(e, Ev::ProviderDetach { .. })),
        2 * PROVIDERS
    );
    assert_eq!(
        count(&|e| matches!(e, Ev::ClientCleanup { .. })),
        2 * PROVIDERS
    );
    assert_eq!(
        count(&|e| matches!(e, Ev::ProviderCleanup { .. })),
        2 * PROVIDERS
    );
    assert_eq!(r.snapshot().bindings.len(), 0);
    for h in providers {
        unload_provider(&r, h);
    }
    assert!(r.snapshot().registrations.is_empty());
}

#[test]
fn a_provider_registered_alone_deregisters_pending_and_waits() {
    let r = Registrar::new();
    let log = Log::new();
    let p = TestProvider::accepting("p", &log, &r, 1, 1);
    let h = p.register(instance(NPI, 1, 0, "p"));
    unload_provider(&r, h);
    assert!(log.events().is_empty());
}

#[test]
fn attach_exchanges_contexts_and_dispatches_both_ways_in_either_order() {
    for provider_first in [true, false] {
        let r = Registrar::new();
        let log = Log::new();
        let got = Arc::new(Mutex::new(None));
        let g2 = Arc::clone(&got);
        let c = TestClient::custom(
            "c",
            &log,
            &r,
            Box::new(
                move |r, b, _| match r.client_attach_provider(b, ctx(0xC1), ctx(0xD1)) {
                    Ok(a) => {
                        *g2.lock().unwrap() = Some(a);
                        Status::SUCCESS
                    }
                    Err(s) => s,
                },
            ),
            answer(DetachStatus::Done),
        );
        let p = TestProvider::accepting("p", &log, &r, 0xC2, 0xD2);
        let (ph, ch) = if provider_first {
            let ph = p.register(instance(NPI, 2, 0, "p"));
            (ph, c.register(instance(NPI, 1, 0, "c")))
        } else {
            let ch = c.register(instance(NPI, 1, 0, "c"));
            (p.register(instance(NPI, 2, 0, "p")), ch)
        };
        let a = got.lock().unwrap().unwrap();
        assert_eq!((val(a.binding_context), val(a.dispatch)), (0xC2, 0xD2));
        let b = c.binding();
        assert!(log.events().contains(&Ev::ProviderAttach {
            provider: "p",
            client: "c".into(),
            binding: b,
            client_ctx: 0xC1,
            client_dispatch: 0xD1
        }));
        assert_eq!(
            p.bindings.lock().unwrap()[0],
            b,
            "both sides see the same binding handle"
        );
        unload_client(&r, ch);
        assert!(log.events().contains(&Ev::ClientDetach {
            client: "c",
            ctx: 0xC1
        }));
        assert!(log.events().contains(&Ev::ProviderDetach {
            provider: "p",
            ctx: 0xC2
        }));
        assert!(log.events().contains(&Ev::ClientCleanup {
            client: "c",
            ctx: 0xC1
        }));
        assert!(log.events().contains(&Ev::ProviderCleanup {
            provider: "p",
            ctx: 0xC2
        }));
        unload_provider(&r, ph);
    }
}

#[test]
fn when_one_side_pends_both_detaches_are_called_and_cleanup_waits_for_completion() {
    for pending_side_is_client in [true, false] {
        let r = Registrar::new();
        let log = Log::new();
        let pend = |yes: bool| -> Box<DetachFn> {
            Box::new(move |_, _| {
                if yes {
                    DetachStatus::Pending
                } else {
                    DetachStatus::Done
                }
            })
        };
        let c = TestClient::custom(
            "c",
            &log,
            &r,
            attach_with(1, 1),
            pend(pending_side_is_client),
        );
        let p = TestProvider::custom(
            "p",
            &log,
            &r,
            Box::new(|_, _, _, _| {
                Ok(ProviderAttachment {
                    binding_context: ctx(2),
                    dispatch: ctx(2),
                })
            }),
            pend(!pending_side_is_client),
        );
        let ph = p.register(instance(NPI, 1, 0, "p"));
        let ch = c.register(instance(NPI, 2, 0, "c"));
        // Deregister the pending side's own registration, as usersim cases 5/6 do.
        if pending_side_is_client {
            r.deregister_client(ch).unwrap();
        } else {
            r.deregister_provider(ph).unwrap();
        }
        assert_eq!(log.count(is_client_detach), 1);
        assert_eq!(log.count(is_provider_detach), 1);
        assert_eq!(log.count(is_cleanup), 0);
        let b = c.binding();
        if pending_side_is_client {
            r.client_detach_provider_complete(b).unwrap();
            r.wait_for_client_deregister_complete(ch).unwrap();
            assert_eq!(log.count(is_cleanup), 2);
            unload_provider(&r, ph);
        } else {
            r.provider_detach_client_complete(b).unwrap();
            r.wait_for_provider_deregister_complete(ph).unwrap();
            assert_eq!(log.count(is_cleanup), 2);
            unload_client(&r, ch);
        }
    }
}

#[test]
fn complete_from_inside_the_detach_callback_is_accepted() {
    // ebpf_native: the detach callback completes synchronously, then returns PENDING.
    let r = Registrar::new();
    let log = Log::new();
    let c = TestClient::accepting("c", &log, &r, 1, 1);
    let pb = Arc::new(Mutex::new(None));
    let pb2 = Arc::clone(&pb);
    let log2 = Arc::clone(&log);
    let p = TestProvider::custom(
        "p",
        &log,
        &r,
        Box::new(move |b, _, _, _| {
            *pb2.lock().unwrap() = Some(b);
            Ok(ProviderAttachment {
                binding_context: ctx(9),
                dispatch: ctx(9),
            })
        }),
        Box::new(move |r, _| {
            let b = pb.lock().unwrap().unwrap();
            r.provider_detach_client_complete(b).unwrap();
            assert_eq!(
                log2.count(is_cleanup),
                0,
                "cleanup never runs while a detach callback is on the stack"
            );
            DetachStatus::Pending
        }),
    );
    let ph = p.register(instance(NPI, 1, 0, "p"));
    let ch = c.register(instance(NPI, 2, 0, "c"));
    r.deregister_provider(ph).unwrap();
    assert_eq!(
        log.count(is_cleanup),
        2,
        "cleanup ran once the callback returned"
    );
    r.wait_for_provider_deregister_complete(ph).unwrap();
    unload_client(&r, ch);
    assert_eq!(log.count(is_cleanup), 2);
}

#[test]
fn cleanup_runs_inside_the_completion_call() {
    // ebpf #1088: the completion may free the binding context.
    let r = Registrar::new();
    let log = Log::new();
    let c = TestClient::accepting("c", &log, &r, 1, 1);
    let p = TestProvider::custom(
        "p",
        &log,
        &r,
        Box::new(|_, _, _, _| {
            Ok(ProviderAttachment {
                binding_context: ctx(3),
                dispatch: ctx(3),
            })
        }),
        answer(DetachStatus::Pending),
    );
    let ph = p.register(instance(NPI, 1, 0, "p"));
    let ch = c.register(instance(NPI, 2, 0, "c"));
    r.deregister_client(ch).unwrap();
    log.mark("before complete");
    r.provider_detach_client_complete(c.binding()).unwrap();
    log.mark("after complete");
    let ev = log.events();
    let before = ev
        .iter()
        .position(|e| *e == Ev::Mark("before complete".into()))
        .unwrap();
    let after = ev
        .iter()
        .position(|e| *e == Ev::Mark("after complete".into()))
        .unwrap();
    let cleanups: Vec<_> = ev
        .iter()
        .enumerate()
        .filter(|(_, e)| is_cleanup(e))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(cleanups.len(), 2);
    assert!(cleanups.iter().all(|&i| before < i && i < after));
    r.wait_for_client_deregister_complete(ch).unwrap();
    unload_provider(&r, ph);
}

#[test]
fn completion_from_another_thread_before_the_callback_returns_pending_is_accepted() {
    for _ in 0..100 {
        let r = Registrar::new();
        let log = Log::new();
        let c = TestClient::accepting("c", &log, &r, 1, 1);
        let pb = Arc::new(Mutex::new(None));
        let pb2 = Arc::clone(&pb);
        let p = TestProvider::custom(
            "p",
            &log,
            &r,
            Box::new(move |b, _, _, _| {
                *pb2.lock().unwrap() = Some(b);
                Ok(Default::default())
            }),
            Box::new(move |r, _| {
                let b = pb.lock().unwrap().unwrap();
                let r = r.clone();
                // Complete on a worker, and make sure it finished before we return PENDING.
                std::thread::spawn(move || r.provider_detach_client_complete(b).unwrap())
                    .join()
                    .unwrap();
                DetachStatus::Pending
            }),
        );
        let ph = p.register(instance(NPI, 1, 0, "p"));
        let ch = c.register(instance(NPI, 2, 0, "c"));
        r.deregister_provider(ph).unwrap();
        within(10, {
            let r = r.clone();
            move || r.wait_for_provider_deregister_complete(ph).unwrap()
        });
        assert_eq!(log.count(is_cleanup), 2);
        unload_client(&r, ch);
    }
}

#[test]
fn refusal_by_module_id_number_or_characteristics_leaves_no_binding() {
    let r = Registrar::new();
    let log = Log::new();
    // The client wants module 2, number 7, characteristics "v2".
    let c = TestClient::custom(
        "picky",
        &log,
        &r,
        Box::new(|r, b, p: &RegistrationInstance| {
            let chars_ok = p
                .characteristics
                .as_ref()
                .and_then(|c| (c.as_ref() as &dyn Any).downcast_ref::<&'static str>())
                .is_some_and(|s| *s == "v2");
            if p.module_id != module(2) || p.number != 7 || !chars_ok {
                return Status::NOINTERFACE;
            }
            status_of(r.client_attach_provider(b, ctx(1), ctx(1)))
        }),
        answer(DetachStatus::Done),
    );
    let ch = c.register(instance(NPI, 1, 0, "picky"));
    let chars = |s: &'static str| -> Arc<dyn Any + Send + Sync> { Arc::new(s) };
    let wrong_module = TestProvider::accepting("wrong-module", &log, &r, 1, 1)
        .register(instance(NPI, 3, 7, "wrong-module").with_characteristics(chars("v2")));
    let wrong_number = TestProvider::accepting("wrong-number", &log, &r, 1, 1)
        .register(instance(NPI, 2, 8, "wrong-number").with_characteristics(chars("v2")));
    let wrong_chars = TestProvider::accepting("wrong-chars", &log, &r, 1, 1)
        .register(instance(NPI, 2, 7, "wrong-chars").with_characteristics(chars("v1")));
    let right = TestProvider::accepting("right", &log, &r, 1, 1)
        .register(instance(NPI, 2, 7, "right").with_characteristics(chars("v2")));
    assert_eq!(log.count(is_client_attach), 4);
    assert_eq!(log.count(is_provider_attach), 1);
    assert_eq!(r.snapshot().bindings.len(), 1);
    for h in [wrong_module, wrong_number, wrong_chars, right] {
        unload_provider(&r, h);
    }
    unload_client(&r, ch);
    assert_eq!(log.count(is_client_detach), 1);
    assert_eq!(log.count(is_cleanup), 2);
}

#[test]
fn a_provider_refusal_reaches_the_client_and_a_retry_with_another_dispatch_can_succeed() {
    let r = Registrar::new();
    let log = Log::new();
    // The provider accepts only dispatch version 2 (WSK-style version negotiation).
    let p = TestProvider::custom(
        "p",
        &log,
        &r,
        Box::new(|_, _, _, d: Context| {
            if val(d) == 2 {
                Ok(Default::default())
            } else {
                Err(Status::NOINTERFACE)
            }
        }),
        answer(DetachStatus::Done),
    );
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = Arc::clone(&seen);
    let c = TestClient::custom(
        "c",
        &log,
        &r,
        Box::new(move |r, b, _| {
            let first = r.client_attach_provider(b, ctx(1), ctx(3));
            s2.lock().unwrap().push(first.err());
            status_of(r.client_attach_provider(b, ctx(1), ctx(2)))
        }),
        answer(DetachStatus::Done),
    );
    let ph = p.register(instance(NPI, 1, 0, "p"));
    let ch = c.register(instance(NPI, 2, 0, "c"));
    assert_eq!(
        seen.lock().unwrap().as_slice(),
        &[Some(Status::NOINTERFACE)]
    );
    assert_eq!(log.count(is_provider_attach), 2);
    assert_eq!(r.snapshot().bindings.len(), 1);
    unload_client(&r, ch);
    unload_provider(&r, ph);
    assert_eq!(log.count(is_cleanup), 2);
}

#[test]
fn a_single_binding_client_refuses_a_second_provider() {
    // msquic's client: InterlockedIncrement(&BindingCount) == 1 or NOINTERFACE.
    let r = Registrar::new();
    let log = Log::new();
    let count = Arc::new(AtomicUsize::new(0));
    let c2 = Arc::clone(&count);
    let c = TestClient::custom(
        "single",
        &log,
        &r,
        Box::new(move |r, b, _| {
            if c2.fetch_add(1, Ordering::SeqCst) != 0 {
                c2.fetch_sub(1, Ordering::SeqCst);
                return Status::NOINTERFACE;
            }
            status_of(r.client_attach_provider(b, ctx(1), Context::NULL))
        }),
        answer(DetachStatus::Done),
    );
    let ch = c.register(instance(NPI, 1, 0, "single"));
    let p1 = TestProvider::accepting("p1", &log, &r, 1, 1).register(instance(NPI, 2, 0, "p1"));
    let p2 = TestProvider::accepting("p2", &log, &r, 1, 1).register(instance(NPI, 3, 0, "p2"));
    assert_eq!(log.count(is_client_attach), 2);
    assert_eq!(log.count(is_provider_attach), 1);
    assert_eq!(r.snapshot().bindings.len(), 1);
    unload_provider(&r, p2);
    unload_provider(&r, p1);
    unload_client(&r, ch);
}

#[test]
fn a_client_can_wait_with_a_timeout_for_a_provider_that_arrives_later() {
    // msquic: register, then wait on an event set by the attach callback.
    let r = Registrar::new();
    let log = Log::new();
    let event = Arc::new((Mutex::new(false), Condvar::new()));
    let e2 = Arc::clone(&event);
    let c = TestClient::custom(
        "waiter",
        &log,
        &r,
        Box::new(move |r, b, _| {
            let s = status_of(r.client_attach_provider(b, ctx(1), Context::NULL));
            if s == Status::SUCCESS {
                *e2.0.lock().unwrap() = true;
                e2.1.notify_all();
            }
            s
        }),
        answer(DetachStatus::Done),
    );
    let ch = c.register(instance(NPI, 1, 0, "waiter"));
    // Nothing yet: a short wait times out.
    {
        let g = event.0.lock().unwrap();
        let (g, to) = event
            .1
            .wait_timeout_while(g, Duration::from_millis(30), |ok| !*ok)
            .unwrap();
        assert!(to.timed_out() && !*g);
    }
    let r2 = r.clone();
    let log2 = Arc::clone(&log);
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(30));
        TestProvider::accepting("late", &log2, &r2, 1, 1).register(instance(NPI, 2, 0, "late"))
    });
    {
        let g = event.0.lock().unwrap();
        let (g, to) = event
            .1
            .wait_timeout_while(g, Duration::from_secs(10), |ok| !*ok)
            .unwrap();
        assert!(!to.timed_out() && *g);
    }
    let ph = t.join().unwrap();
    unload_client(&r, ch);
    unload_provider(&r, ph);
}

#[test]
fn null_contexts_and_null_client_dispatch_still_get_detach_and_cleanup() {
    let r = Registrar::new();
    let log = Log::new();
    let c = TestClient::accepting("c", &log, &r, 0, 0);
    let p = TestProvider::accepting("p", &log, &r, 0, 0);
    let ph = p.register(instance(NPI, 1, 0, "p"));
    let ch = c.register(instance(NPI, 2, 0, "c"));
    unload_provider(&r, ph);
    assert!(log.events().contains(&Ev::ClientDetach {
        client: "c",
        ctx: 0
    }));
    assert!(log.events().contains(&Ev::ProviderDetach {
        provider: "p",
        ctx: 0
    }));
    assert_eq!(log.count(is_cleanup), 2);
    unload_client(&r, ch);
}

#[test]
fn a_client_failing_after_a_successful_attach_gets_the_provider_detached_and_both_cleaned_up() {
    let r = Registrar::new();
    let log = Log::new();
    let c = TestClient::custom(
        "c",
        &log,
        &r,
        Box::new(|r, b, _| {
            r.client_attach_provider(b, ctx(1), ctx(1)).unwrap();
            Status::INSUFFICIENT_RESOURCES
        }),
        answer(DetachStatus::Done),
    );
    let p = TestProvider::accepting("p", &log, &r, 2, 2);
    let ph = p.register(instance(NPI, 1, 0, "p"));
    let ch = c.register(instance(NPI, 2, 0, "c"));
    assert_eq!(log.count(is_client_detach), 0, "the client knows it failed");
    assert_eq!(log.count(is_provider_detach), 1);
    assert!(log.events().contains(&Ev::ClientCleanup {
        client: "c",
        ctx: 1
    }));
    assert!(log.events().contains(&Ev::ProviderCleanup {
        provider: "p",
        ctx: 2
    }));
    assert!(r.snapshot().bindings.is_empty());
    unload_client(&r, ch);
    unload_provider(&r, ph);
}

#[test]
fn a_client_refusing_or_failing_before_attaching_gets_no_cleanup() {
    for status in [Status::NOINTERFACE, Status::INSUFFICIENT_RESOURCES] {
        let r = Registrar::new();
        let log = Log::new();
        let c = TestClient::custom(
            "c",
            &log,
            &r,
            Box::new(move |_, _, _| status),
            answer(DetachStatus::Done),
        );
        let p = TestProvider::accepting("p", &log, &r, 2, 2);
        let ph = p.register(instance(NPI, 1, 0, "p"));
        let ch = c.register(instance(NPI, 2, 0, "c"));
        unload_client(&r, ch);
        unload_provider(&r, ph);
        assert_eq!(log.count(is_provider_attach), 0);
        assert_eq!(
            log.count(|e| is_client_detach(e) || is_provider_detach(e) || is_cleanup(e)),
            0
        );
    }
}

#[test]
fn a_provider_declining_leaves_the_client_to_free_its_own_context() {
    let r = Registrar::new();
    let log = Log::new();
    let c = TestClient::accepting("c", &log, &r, 1, 1);
    let p = TestProvider::custom(
        "p",
        &log,
        &r,
        Box::new(|_, _, _, _| Err(Status::NOINTERFACE)),
        answer(DetachStatus::Done),
    );
    let ph = p.register(instance(NPI, 1, 0, "p"));
    let ch = c.register(instance(NPI, 2, 0, "c"));
    assert_eq!(log.count(is_provider_attach), 1);
    assert!(r.snapshot().bindings.is_empty());
    unload_client(&r, ch);
    unload_provider(&r, ph);
    assert_eq!(
        log.count(|e| is_client_detach(e) || is_provider_detach(e) || is_cleanup(e)),
        0
    );
}

#[test]
fn pairing_is_by_npi_id_only() {
    let r = Registrar::new();
    let log = Log::new();
    let c = TestClient::accepting("c", &log, &r, 1, 1);
    let ch = c.register(instance(NPI, 1, 0, "c"));
    let other = TestProvider::accepting("other", &log, &r, 1, 1)
        .register(instance(OTHER_NPI, 1, 0, "other"));
    assert_eq!(log.count(is_client_attach), 0);
    // Same module id, number and everything else but the NPI: no pairing; same NPI: pairing.
    let same = TestProvider::accepting("same", &log, &r, 1, 1)
        .register(RegistrationInstance::new(NPI, ModuleId::default(), 99).with_name("same"));
    assert_eq!(log.count(is_client_attach), 1);
    unload_provider(&r, other);
    unload_provider(&r, same);
    unload_client(&r, ch);
}

#[test]
fn callbacks_may_reenter_the_registrar_without_deadlock() {
    within(20, || {
        let r = Registrar::new();
        let log = Log::new();
        // The provider's attach registers (and later the detach deregisters) a helper client
        // for another NPI; the client's cleanup registers and unloads a whole module pair.
        let helper = Arc::new(Mutex::new(None));
        let (h2, h3) = (Arc::clone(&helper), Arc::clone(&helper));
        let log_a = Arc::clone(&log);
        let p = TestProvider::custom(
            "p",
            &log,
            &r,
            Box::new({
                let r = r.clone();
                move |_, _, _, _| {
                    let hc = TestClient::accepting("helper", &log_a, &r, 5, 5);
                    *h2.lock().unwrap() = Some(hc.register(instance(OTHER_NPI, 50, 0, "helper")));
                    Ok(Default::default())
                }
            }),
            Box::new(move |r, _| {
                let h = h3.lock().unwrap().take().unwrap();
                r.deregister_client(h).unwrap();
                r.wait_for_client_deregister_complete(h).unwrap();
                DetachStatus::Done
            }),
        );
        let ph = p.register(instance(NPI, 1, 0, "p"));
        let c = TestClient::accepting("c", &log, &r, 1, 1);
        let ch = c.register(instance(NPI, 2, 0, "c"));
        assert!(helper.lock().unwrap().is_some());
        unload_client(&r, ch);
        assert!(helper.lock().unwrap().is_none());
        unload_provider(&r, ph);
        assert!(r.snapshot().registrations.is_empty());
    });
}

#[test]
fn deregistering_while_another_thread_attaches_other_peers_is_safe() {
    for _ in 0..100 {
        let r = Registrar::new();
        let log = Log::new();
        let providers: Vec<_> = (0..8)
            .map(|i| {
                TestProvider::accepting("p", &log, &r, 1, 1).register(instance(
                    NPI,
                    100 + i,
                    0,
                    "p",
                ))
            })
            .collect();
        let c = TestClient::accepting("c", &log, &r, 1, 1);
        let victims = providers.clone();
        let r2 = r.clone();
        let t = std::thread::spawn(move || {
            for h in victims.iter().step_by(2) {
                r2.deregister_provider(*h).unwrap();
            }
            for h in victims.iter().step_by(2) {
                r2.wait_for_provider_deregister_complete(*h).unwrap();
            }
        });
        let ch = c.register(instance(NPI, 1, 0, "c"));
        t.join().unwrap();
        // Every binding to a departed provider is gone; the others are active.
        assert_eq!(r.snapshot().bindings.len(), 4);
        assert_eq!(log.count(is_client_detach), log.count(is_provider_detach));
        assert_eq!(log.count(is_cleanup), 2 * log.count(is_client_detach));
        unload_client(&r, ch);
        for h in providers.iter().skip(1).step_by(2) {
            unload_provider(&r, *h);
        }
        assert!(r.snapshot().registrations.is_empty());
    }
}

#[test]
fn the_handle_is_published_before_attach_callbacks_run() {
    let r = Registrar::new();
    let log = Log::new();
    let p = TestProvider::accepting("p", &log, &r, 1, 1);
    let ph = p.register(instance(NPI, 1, 0, "p"));
    let slot: Arc<Mutex<Option<nmr::RegistrationHandle>>> = Arc::new(Mutex::new(None));
    let seen = Arc::new(Mutex::new(None));
    let (s2, seen2) = (Arc::clone(&slot), Arc::clone(&seen));
    let c = TestClient::custom(
        "c",
        &log,
        &r,
        Box::new(move |r, b, _| {
            *seen2.lock().unwrap() = *s2.lock().unwrap();
            status_of(r.client_attach_provider(b, ctx(1), ctx(1)))
        }),
        answer(DetachStatus::Done),
    );
    let s3 = Arc::clone(&slot);
    let ch = r
        .register_client(instance(NPI, 2, 0, "c"), c, move |h| {
            *s3.lock().unwrap() = Some(h)
        })
        .unwrap();
    assert_eq!(*seen.lock().unwrap(), Some(ch));
    unload_client(&r, ch);
    unload_provider(&r, ph);
}

#[test]
fn the_snapshot_lists_registrations_and_bindings_with_their_states() {
    let r = Registrar::new();
    let log = Log::new();
    let c = TestClient::custom(
        "c",
        &log,
        &r,
        attach_with(1, 1),
        answer(DetachStatus::Pending),
    );
    let ph = TestProvider::accepting("prov", &log, &r, 1, 1).register(instance(NPI, 1, 0, "prov"));
    let ch = c.register(instance(NPI, 2, 0, "cli"));
    let s = r.snapshot();
    assert_eq!(s.registrations.len(), 2);
    assert_eq!(s.bindings.len(), 1);
    assert_eq!(s.bindings[0].state, nmr::BindingState::Active);
    r.deregister_client(ch).unwrap();
    let s = r.snapshot();
    assert!(matches!(
        s.bindings[0].state,
        nmr::BindingState::Detaching {
            client: nmr::SideState::Pending,
            provider: nmr::SideState::Done
        }
    ));
    let cli = s.registrations.iter().find(|x| x.name == "cli").unwrap();
    assert_eq!(cli.state, nmr::RegistrationState::Deregistering);
    assert!(s.to_string().contains("cli"));
    r.client_detach_provider_complete(c.binding()).unwrap();
    r.wait_for_client_deregister_complete(ch).unwrap();
    unload_provider(&r, ph);
}
