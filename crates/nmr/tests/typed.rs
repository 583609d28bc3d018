//! The typed layer: bindings with built-in rundown, detach holds, typed characteristics.

mod support;
use nmr::typed::*;
use nmr::{ModuleId, NpiId, Registrar};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use support::within;

/// The provider offers `Calc`; the client offers `Notify` (a callback the provider can use).
trait Calc: Send + Sync {
    fn add(&self, a: u32, b: u32) -> u32;
}
trait Notify: Send + Sync {
    fn notify(&self, v: u32);
}

#[derive(Debug, PartialEq, Eq)]
struct Version(u16);

struct CalcNpi;
impl Npi for CalcNpi {
    const ID: NpiId = NpiId::from_u128(0xCA1C);
    type ClientDispatch = dyn Notify;
    type ProviderDispatch = dyn Calc;
    type ClientCharacteristics = ();
    type ProviderCharacteristics = Version;
}

struct Adder {
    alive: Arc<AtomicBool>,
}
impl Calc for Adder {
    fn add(&self, a: u32, b: u32) -> u32 {
        assert!(self.alive.load(Ordering::SeqCst), "call after cleanup");
        a + b
    }
}

#[derive(Default)]
struct CalcProvider {
    clients: Mutex<Vec<Binding<dyn Notify>>>,
    detaches: AtomicUsize,
    cleanups: AtomicUsize,
    hold_detach: AtomicBool,
    holds: Mutex<Vec<DetachHold>>,
}

impl Provider<CalcNpi> for CalcProvider {
    type BindingContext = Arc<AtomicBool>;
    fn attach_client(
        &self,
        _peer: &PeerInfo<'_, ()>,
        client: Binding<dyn Notify>,
    ) -> Result<(Arc<AtomicBool>, Arc<dyn Calc>), Declined> {
        self.clients.lock().unwrap().push(client);
        let alive = Arc::new(AtomicBool::new(true));
        Ok((Arc::clone(&alive), Arc::new(Adder { alive })))
    }
    fn detach_client(&self, _ctx: &Arc<AtomicBool>, hold: DetachHold) {
        self.detaches.fetch_add(1, Ordering::SeqCst);
        if self.hold_detach.load(Ordering::SeqCst) {
            self.holds.lock().unwrap().push(hold);
        }
    }
    fn cleanup_binding(&self, ctx: Arc<AtomicBool>) {
        ctx.store(false, Ordering::SeqCst);
        self.cleanups.fetch_add(1, Ordering::SeqCst);
    }
}

#[derive(Default)]
struct CalcClient {
    want_version: u16,
    providers: Mutex<Vec<Binding<dyn Calc>>>,
    notified: Arc<AtomicUsizeWrapper>,
    detaches: AtomicUsize,
    cleanups: AtomicUsize,
}

#[derive(Default)]
struct AtomicUsizeWrapper(AtomicUsize);
impl Notify for AtomicUsizeWrapper {
    fn notify(&self, v: u32) {
        self.0.fetch_add(v as usize, Ordering::SeqCst);
    }
}

impl Client<CalcNpi> for CalcClient {
    type BindingContext = u16;
    fn attach_provider(
        &self,
        peer: &PeerInfo<'_, Version>,
        attach: &mut ClientAttach<'_, CalcNpi>,
    ) -> Result<u16, Declined> {
        let v = peer.characteristics.ok_or(Declined::no_interface())?;
        if v.0 != self.want_version {
            return Err(Declined::no_interface());
        }
        let b = attach
            .attach(self.notified.clone())
            .map_err(Declined::with_status)?;
        self.providers.lock().unwrap().push(b);
        Ok(v.0)
    }
    fn detach_provider(&self, _ctx: &u16, hold: DetachHold) {
        self.detaches.fetch_add(1, Ordering::SeqCst);
        drop(hold);
    }
    fn cleanup_binding(&self, _ctx: u16) {
        self.cleanups.fetch_add(1, Ordering::SeqCst);
    }
}

/// Registers `prov` as a version-2 calc provider and a client that wants version 2; they
/// attach to each other.
fn calc_pair(
    r: &Registrar,
    prov: &Arc<CalcProvider>,
) -> (
    ProviderRegistration<CalcNpi>,
    Arc<CalcClient>,
    ClientRegistration<CalcNpi>,
) {
    let pr = ProviderRegistration::<CalcNpi>::register(
        r,
        info(1, "calc"),
        Some(Version(2)),
        prov.clone(),
    )
    .unwrap();
    let cli = Arc::new(CalcClient {
        want_version: 2,
        ..Default::default()
    });
    let cr =
        ClientRegistration::<CalcNpi>::register(r, info(2, "user"), None, cli.clone()).unwrap();
    (pr, cli, cr)
}

fn info(n: u128, name: &str) -> ModuleInfo {
    ModuleInfo::new(ModuleId::Guid(nmr::Guid::from_u128(n))).named(name)
}

#[test]
fn typed_modules_attach_and_call_each_other_through_bindings() {
    let r = Registrar::new();
    let prov = Arc::new(CalcProvider::default());
    let (pr, cli, cr) = calc_pair(&r, &prov);
    let b = cli.providers.lock().unwrap()[0].clone();
    assert_eq!(b.call(|c| c.add(2, 3)), Ok(5));
    {
        let g = b.enter().unwrap();
        assert_eq!(g.add(1, 1), 2);
    }
    // The provider calls the client back through its own binding.
    let back = prov.clients.lock().unwrap()[0].clone();
    back.call(|n| n.notify(7)).unwrap();
    assert_eq!(cli.notified.0.load(Ordering::SeqCst), 7);
    assert_eq!(b.handle(), back.handle());
    cr.unload();
    assert_eq!(b.call(|c| c.add(1, 1)), Err(Detached));
    assert_eq!(back.call(|n| n.notify(1)), Err(Detached));
    assert_eq!(
        (
            cli.detaches.load(Ordering::SeqCst),
            cli.cleanups.load(Ordering::SeqCst)
        ),
        (1, 1)
    );
    assert_eq!(
        (
            prov.detaches.load(Ordering::SeqCst),
            prov.cleanups.load(Ordering::SeqCst)
        ),
        (1, 1)
    );
    pr.unload();
    assert!(r.snapshot().registrations.is_empty());
}

#[test]
fn typed_characteristics_drive_refusal() {
    let r = Registrar::new();
    let prov = Arc::new(CalcProvider::default());
    let pr = ProviderRegistration::<CalcNpi>::register(
        &r,
        info(1, "calc-v1"),
        Some(Version(1)),
        prov.clone(),
    )
    .unwrap();
    let cli = Arc::new(CalcClient {
        want_version: 2,
        ..Default::default()
    });
    let cr =
        ClientRegistration::<CalcNpi>::register(&r, info(2, "user"), None, cli.clone()).unwrap();
    assert!(cli.providers.lock().unwrap().is_empty());
    assert!(r.snapshot().bindings.is_empty());
    cr.unload();
    pr.unload();
    assert_eq!(cli.cleanups.load(Ordering::SeqCst), 0);
}

#[test]
fn detach_pends_while_a_call_is_in_flight_and_completes_when_it_returns() {
    within(20, || {
        let r = Registrar::new();
        let prov = Arc::new(CalcProvider::default());
        let (pr, cli, cr) = calc_pair(&r, &prov);
        let b = cli.providers.lock().unwrap()[0].clone();
        let guard = b.enter_owned().unwrap();
        let dereg = pr.deregister();
        assert!(b.is_detaching());
        assert_eq!(
            b.call(|c| c.add(1, 1)),
            Err(Detached),
            "no call starts after detach began"
        );
        assert!(!dereg.is_complete(), "a call is in flight");
        assert_eq!(cli.cleanups.load(Ordering::SeqCst), 0);
        // The call in flight still works, on another thread too.
        let t = std::thread::spawn(move || {
            let v = guard.add(20, 22);
            drop(guard);
            v
        });
        assert_eq!(t.join().unwrap(), 42);
        dereg.wait();
        assert_eq!(cli.cleanups.load(Ordering::SeqCst), 1);
        assert_eq!(prov.cleanups.load(Ordering::SeqCst), 1);
        cr.unload();
    });
}

#[test]
fn a_detach_hold_keeps_the_detach_pending_until_dropped() {
    within(20, || {
        let r = Registrar::new();
        let prov = Arc::new(CalcProvider {
            hold_detach: AtomicBool::new(true),
            ..Default::default()
        });
        let (pr, _cli, cr) = calc_pair(&r, &prov);
        let dereg = cr.deregister();
        assert_eq!(prov.holds.lock().unwrap().len(), 1);
        assert!(!dereg.is_complete());
        let dereg = match dereg.wait_timeout(std::time::Duration::from_millis(20)) {
            Err(d) => d,
            Ok(()) => panic!("completed while the provider held its detach"),
        };
        let hold = prov.holds.lock().unwrap().pop().unwrap();
        std::thread::spawn(move || drop(hold)).join().unwrap();
        dereg.wait();
        assert_eq!(prov.cleanups.load(Ordering::SeqCst), 1);
        pr.unload();
    });
}

#[test]
fn dropping_a_registration_deregisters_and_waits() {
    let r = Registrar::new();
    let prov = Arc::new(CalcProvider::default());
    let cli = Arc::new(CalcClient {
        want_version: 2,
        ..Default::default()
    });
    {
        let _pr = ProviderRegistration::<CalcNpi>::register(
            &r,
            info(1, "calc"),
            Some(Version(2)),
            prov.clone(),
        )
        .unwrap();
        let _cr = ClientRegistration::<CalcNpi>::register(&r, info(2, "user"), None, cli.clone())
            .unwrap();
        assert_eq!(r.snapshot().bindings.len(), 1);
    }
    assert!(r.snapshot().registrations.is_empty());
    assert_eq!(prov.cleanups.load(Ordering::SeqCst), 1);
    assert_eq!(cli.cleanups.load(Ordering::SeqCst), 1);
}

/// A different NPI type with the same id cannot reinterpret the other's dispatch.
struct Impostor;
impl Npi for Impostor {
    const ID: NpiId = CalcNpi::ID;
    type ClientDispatch = ();
    type ProviderDispatch = u64;
    type ClientCharacteristics = ();
    type ProviderCharacteristics = Version;
}
struct ImpostorClient(AtomicUsize);
impl Client<Impostor> for ImpostorClient {
    type BindingContext = ();
    fn attach_provider(
        &self,
        _: &PeerInfo<'_, Version>,
        attach: &mut ClientAttach<'_, Impostor>,
    ) -> Result<(), Declined> {
        self.0.fetch_add(1, Ordering::SeqCst);
        attach
            .attach(Arc::new(()))
            .map(|_| ())
            .map_err(Declined::with_status)
    }
}

#[test]
fn modules_of_another_type_for_the_same_npi_id_never_pair() {
    let r = Registrar::new();
    let prov = Arc::new(CalcProvider::default());
    let pr = ProviderRegistration::<CalcNpi>::register(
        &r,
        info(1, "calc"),
        Some(Version(2)),
        prov.clone(),
    )
    .unwrap();
    let imp = Arc::new(ImpostorClient(AtomicUsize::new(0)));
    let ir = ClientRegistration::<Impostor>::register(&r, info(3, "impostor"), None, imp.clone())
        .unwrap();
    assert_eq!(
        imp.0.load(Ordering::SeqCst),
        0,
        "declined before the module saw it"
    );
    assert!(r.snapshot().bindings.is_empty());
    ir.unload();
    pr.unload();
}

/// A typed module may be registered as a `'static` reference or as an owned box, as well as
/// an `Arc`: each attaches and calls the same way, and an owned module is dropped at the wait.
#[test]
fn static_and_owned_typed_modules() {
    static PROVIDER: std::sync::OnceLock<CalcProvider> = std::sync::OnceLock::new();
    let r = Registrar::new();
    let prov: &'static CalcProvider = PROVIDER.get_or_init(CalcProvider::default);
    let pr = ProviderRegistration::<CalcNpi>::register(&r, info(1, "calc"), Some(Version(2)), prov)
        .unwrap();

    /// An owned client that reports its own drop.
    struct Owned {
        inner: CalcClient,
        dropped: Arc<AtomicBool>,
    }
    impl Drop for Owned {
        fn drop(&mut self) {
            self.dropped.store(true, Ordering::SeqCst);
        }
    }
    impl Client<CalcNpi> for Owned {
        type BindingContext = u16;
        fn attach_provider(
            &self,
            peer: &PeerInfo<'_, Version>,
            attach: &mut ClientAttach<'_, CalcNpi>,
        ) -> Result<u16, Declined> {
            let v = self.inner.attach_provider(peer, attach)?;
            let b = self.inner.providers.lock().unwrap()[0].clone();
            assert_eq!(b.call(|c| c.add(40, 2)), Ok(42));
            Ok(v)
        }
    }
    let dropped = Arc::new(AtomicBool::new(false));
    let owned = Box::new(Owned {
        inner: CalcClient {
            want_version: 2,
            ..Default::default()
        },
        dropped: Arc::clone(&dropped),
    });
    let cr = ClientRegistration::<CalcNpi>::register(&r, info(2, "owned"), None, owned).unwrap();
    assert_eq!(
        prov.clients.lock().unwrap().len(),
        1,
        "the static provider attached"
    );
    let d = cr.deregister();
    assert!(!dropped.load(Ordering::SeqCst), "dropped before the wait");
    d.wait();
    assert!(
        dropped.load(Ordering::SeqCst),
        "owned module not dropped at the wait"
    );
    assert_eq!(prov.detaches.load(Ordering::SeqCst), 1);
    assert_eq!(prov.cleanups.load(Ordering::SeqCst), 1);
    pr.unload();
}
