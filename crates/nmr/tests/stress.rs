//! Bounded stress: threads register, call through guards, deregister and complete at random
//! for a fixed number of iterations, checking the registrar's invariants as they go:
//! no call after cleanup, exactly one detach and one cleanup per side of every binding,
//! wait returns only after every cleanup of the registration, and nothing hangs (a watchdog
//! fails the test).

mod support;
use nmr::typed::*;
use nmr::{ModuleId, NpiId, Registrar};
use rand::{Rng, SeedableRng, rngs::StdRng};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use support::within;

trait Svc: Send + Sync {
    fn ping(&self) -> u64;
}

struct StressNpi;
impl Npi for StressNpi {
    const ID: NpiId = NpiId::from_u128(0x5775);
    type ClientDispatch = dyn Svc;
    type ProviderDispatch = dyn Svc;
    type ClientCharacteristics = ();
    type ProviderCharacteristics = ();
}

/// The canary: calling it after its binding was cleaned up fails the test.
struct Canary {
    alive: AtomicBool,
    calls: AtomicUsize,
}
impl Svc for Canary {
    fn ping(&self) -> u64 {
        assert!(
            self.alive.load(Ordering::SeqCst),
            "call through a binding after its cleanup"
        );
        self.calls.fetch_add(1, Ordering::Relaxed);
        1
    }
}

#[derive(Default)]
struct Counts {
    attach: AtomicUsize,
    detach: AtomicUsize,
    cleanup: AtomicUsize,
}

/// Per-binding, per-side counters, keyed by binding handle.
#[derive(Default)]
struct Ledger {
    sides: Mutex<HashMap<(u64, bool), Arc<Counts>>>,
}
impl Ledger {
    fn side(&self, b: nmr::BindingHandle, client: bool) -> Arc<Counts> {
        Arc::clone(
            self.sides
                .lock()
                .unwrap()
                .entry((b.to_raw(), client))
                .or_default(),
        )
    }
}

/// Holds handed over to other threads, which drop ("complete") them at random.
type Holds = Arc<Mutex<Vec<DetachHold>>>;

struct Ctx {
    handle: nmr::BindingHandle,
    mine: Arc<Canary>,
    counts: Arc<Counts>,
}

struct Module {
    client: bool,
    ledger: Arc<Ledger>,
    holds: Holds,
    live: AtomicUsize,
    peers: Mutex<Vec<Binding<dyn Svc>>>,
    seed: AtomicUsize,
}

impl Module {
    fn new(client: bool, ledger: &Arc<Ledger>, holds: &Holds) -> Arc<Self> {
        Arc::new(Module {
            client,
            ledger: Arc::clone(ledger),
            holds: Arc::clone(holds),
            live: AtomicUsize::new(0),
            peers: Mutex::new(Vec::new()),
            seed: AtomicUsize::new(0),
        })
    }
    fn attached(
        &self,
        handle: nmr::BindingHandle,
        mine: Arc<Canary>,
        peer: Binding<dyn Svc>,
    ) -> Ctx {
        let counts = self.ledger.side(handle, self.client);
        assert_eq!(
            counts.attach.fetch_add(1, Ordering::SeqCst),
            0,
            "attached twice"
        );
        self.live.fetch_add(1, Ordering::SeqCst);
        self.peers.lock().unwrap().push(peer);
        Ctx {
            handle,
            mine,
            counts,
        }
    }
    fn detached(&self, ctx: &Ctx, hold: DetachHold) {
        assert_eq!(
            ctx.counts.detach.fetch_add(1, Ordering::SeqCst),
            0,
            "detach called twice on one side"
        );
        // Sometimes keep the detach pending and let another thread complete it.
        if self.seed.fetch_add(1, Ordering::Relaxed).is_multiple_of(3) {
            self.holds.lock().unwrap().push(hold);
        }
    }
    fn cleaned(&self, ctx: Ctx) {
        assert_eq!(
            ctx.counts.detach.load(Ordering::SeqCst),
            1,
            "cleanup before this side's detach"
        );
        assert_eq!(
            ctx.counts.cleanup.fetch_add(1, Ordering::SeqCst),
            0,
            "cleanup twice"
        );
        let other = self.ledger.side(ctx.handle, !self.client);
        assert!(
            other.detach.load(Ordering::SeqCst) == 1,
            "cleanup before the other side's detach was even called"
        );
        ctx.mine.alive.store(false, Ordering::SeqCst);
        self.live.fetch_sub(1, Ordering::SeqCst);
    }
    fn call_some(&self) {
        let peers = self.peers.lock().unwrap().clone();
        for p in peers {
            // Detached bindings refuse; live ones must not reach a cleaned-up peer.
            let _ = p.call(|s| s.ping());
        }
        self.peers.lock().unwrap().retain(|p| !p.is_detaching());
    }
}

struct P(Arc<Module>);
impl Provider<StressNpi> for P {
    type BindingContext = Ctx;
    fn attach_client(
        &self,
        _: &PeerInfo<'_, ()>,
        client: Binding<dyn Svc>,
    ) -> Result<(Ctx, Arc<dyn Svc>), Declined> {
        let mine = Arc::new(Canary {
            alive: AtomicBool::new(true),
            calls: AtomicUsize::new(0),
        });
        let ctx = self.0.attached(client.handle(), Arc::clone(&mine), client);
        Ok((ctx, mine))
    }
    fn detach_client(&self, ctx: &Ctx, hold: DetachHold) {
        self.0.detached(ctx, hold);
    }
    fn cleanup_binding(&self, ctx: Ctx) {
        self.0.cleaned(ctx);
    }
}

struct C(Arc<Module>);
impl Client<StressNpi> for C {
    type BindingContext = Ctx;
    fn attach_provider(
        &self,
        _: &PeerInfo<'_, ()>,
        attach: &mut ClientAttach<'_, StressNpi>,
    ) -> Result<Ctx, Declined> {
        let mine = Arc::new(Canary {
            alive: AtomicBool::new(true),
            calls: AtomicUsize::new(0),
        });
        let peer = attach.attach(mine.clone()).map_err(Declined::with_status)?;
        Ok(self.0.attached(attach.handle(), mine, peer))
    }
    fn detach_provider(&self, ctx: &Ctx, hold: DetachHold) {
        self.0.detached(ctx, hold);
    }
    fn cleanup_binding(&self, ctx: Ctx) {
        self.0.cleaned(ctx);
    }
}

enum Reg {
    P(ProviderRegistration<StressNpi>, Arc<Module>),
    C(ClientRegistration<StressNpi>, Arc<Module>),
}

impl Reg {
    fn module(&self) -> &Arc<Module> {
        match self {
            Reg::P(_, m) | Reg::C(_, m) => m,
        }
    }
    /// Deregisters, completing held detaches meanwhile, and checks wait covered cleanup.
    fn unload(self, holds: &Holds) {
        let m = Arc::clone(self.module());
        let d = match self {
            Reg::P(r, _) => r.deregister(),
            Reg::C(r, _) => r.deregister(),
        };
        let mut d = d;
        loop {
            match d.wait_timeout(std::time::Duration::from_micros(200)) {
                Ok(()) => break,
                Err(back) => {
                    d = back;
                    // Our own holds (or other threads') may be what we wait for.
                    let taken: Vec<_> = holds.lock().unwrap().drain(..).collect();
                    drop(taken);
                }
            }
        }
        assert_eq!(
            m.live.load(Ordering::SeqCst),
            0,
            "wait returned before every cleanup of the registration"
        );
    }
}

fn run(threads: usize, iterations: usize, seed: u64) {
    let r = Registrar::new();
    let ledger = Arc::new(Ledger::default());
    let holds: Holds = Arc::default();
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let (r, ledger, holds) = (r.clone(), Arc::clone(&ledger), Arc::clone(&holds));
            std::thread::spawn(move || {
                let mut rng = StdRng::seed_from_u64(seed + t as u64);
                let mut mine: Vec<Reg> = Vec::new();
                for i in 0..iterations {
                    let id = ModuleId::Guid(nmr::Guid::from_u128(((t as u128) << 64) | i as u128));
                    match rng.random_range(0..10) {
                        0..=1 if mine.len() < 6 => {
                            let m = Module::new(false, &ledger, &holds);
                            let reg = ProviderRegistration::register(
                                &r,
                                ModuleInfo::new(id),
                                None,
                                Arc::new(P(m.clone())),
                            )
                            .unwrap();
                            mine.push(Reg::P(reg, m));
                        }
                        2..=3 if mine.len() < 6 => {
                            let m = Module::new(true, &ledger, &holds);
                            let reg = ClientRegistration::register(
                                &r,
                                ModuleInfo::new(id),
                                None,
                                Arc::new(C(m.clone())),
                            )
                            .unwrap();
                            mine.push(Reg::C(reg, m));
                        }
                        4..=6 => {
                            for reg in &mine {
                                reg.module().call_some();
                            }
                        }
                        7..=8 if !mine.is_empty() => {
                            let k = rng.random_range(0..mine.len());
                            mine.swap_remove(k).unload(&holds);
                        }
                        _ => {
                            let n = rng.random_range(0..4);
                            let mut h = holds.lock().unwrap();
                            let n = n.min(h.len());
                            let taken: Vec<_> = h.drain(..n).collect();
                            drop(h);
                            drop(taken);
                        }
                    }
                }
                for reg in mine {
                    reg.unload(&holds);
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    assert!(holds.lock().unwrap().is_empty());
    assert!(r.snapshot().registrations.is_empty(), "{}", r.snapshot());
    // Every side of every binding that attached was detached and cleaned up exactly once.
    let sides = ledger.sides.lock().unwrap();
    assert!(!sides.is_empty());
    for ((b, client), c) in sides.iter() {
        let got = (
            c.attach.load(Ordering::SeqCst),
            c.detach.load(Ordering::SeqCst),
            c.cleanup.load(Ordering::SeqCst),
        );
        assert_eq!(got, (1, 1, 1), "binding {b:#x} client side {client}");
    }
}

#[test]
fn stress_register_call_deregister_complete_at_random() {
    within(180, || run(4, 20_000, 0x5eed));
}

/// A client registering against thousands of providers holds the registry lock for a long
/// section (it forms every binding in one), so threads registering and deregistering on
/// another NPI meanwhile find the lock held past their spinning and sleep on it. Everything
/// finishes (a lost wake-up would hang: the watchdog fails the test) and every binding of
/// both workloads is attached, detached and cleaned up exactly once per side.
#[test]
fn long_lock_sections_make_other_threads_sleep_and_all_finish() {
    within(180, || {
        use support::{Ev, Log, TestClient, TestProvider, instance};
        const WIDE: usize = 3000;
        const ROUNDS: usize = 20;
        const SHORT_CYCLES: usize = 3000;
        let (wide_npi, short_npi) = (NpiId::from_u128(0x1071), NpiId::from_u128(0x1072));
        let r = Registrar::new();
        let log = Log::new();
        let providers: Vec<_> = (0..WIDE)
            .map(|i| {
                TestProvider::accepting("wide", &log, &r, 16, 16).register(instance(
                    wide_npi,
                    1000 + i as u128,
                    0,
                    "wide",
                ))
            })
            .collect();
        let short_provider = TestProvider::accepting("short", &log, &r, 16, 16)
            .register(instance(short_npi, 1, 0, "short"));
        let stop = Arc::new(AtomicBool::new(false));
        let short: Vec<_> = (0..2)
            .map(|t| {
                let (r, log, stop) = (r.clone(), Arc::clone(&log), Arc::clone(&stop));
                std::thread::spawn(move || {
                    let mut n = 0;
                    while n < SHORT_CYCLES || !stop.load(Ordering::Relaxed) {
                        let h = TestClient::accepting("short-client", &log, &r, 8, 8)
                            .register(instance(short_npi, 100 + t, 0, "short-client"));
                        r.deregister_client(h).unwrap();
                        r.wait_for_client_deregister_complete(h).unwrap();
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        for _ in 0..ROUNDS {
            let h = TestClient::accepting("wide-client", &log, &r, 8, 8).register(instance(
                wide_npi,
                99,
                0,
                "wide-client",
            ));
            r.deregister_client(h).unwrap();
            r.wait_for_client_deregister_complete(h).unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        let short_cycles: usize = short.into_iter().map(|t| t.join().unwrap()).sum();
        let bindings = ROUNDS * WIDE + short_cycles;
        let events = log.events();
        let count = |f: fn(&Ev) -> bool| events.iter().filter(|e| f(e)).count();
        for (what, got) in [
            (
                "client attaches",
                count(|e| matches!(e, Ev::ClientAttach { .. })),
            ),
            (
                "client detaches",
                count(|e| matches!(e, Ev::ClientDetach { .. })),
            ),
            (
                "client cleanups",
                count(|e| matches!(e, Ev::ClientCleanup { .. })),
            ),
            (
                "provider attaches",
                count(|e| matches!(e, Ev::ProviderAttach { .. })),
            ),
            (
                "provider detaches",
                count(|e| matches!(e, Ev::ProviderDetach { .. })),
            ),
            (
                "provider cleanups",
                count(|e| matches!(e, Ev::ProviderCleanup { .. })),
            ),
        ] {
            assert_eq!(got, bindings, "{what}");
        }
        for p in providers.into_iter().chain([short_provider]) {
            r.deregister_provider(p).unwrap();
            r.wait_for_provider_deregister_complete(p).unwrap();
        }
        assert!(r.snapshot().registrations.is_empty());
    });
}
