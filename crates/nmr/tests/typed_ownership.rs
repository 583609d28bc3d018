//! Who owns what in the typed layer: the dispatches the modules hand over, and the binding
//! contexts, across refusals, retries, detach and cleanup.

use nmr::typed::*;
use nmr::{Context, Guid, ModuleId, NpiId, Registrar, Status};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

trait Get: Send + Sync {
    fn get(&self) -> u32;
}
struct Val(u32);
impl Get for Val {
    fn get(&self) -> u32 {
        self.0
    }
}

struct GetNpi;
impl Npi for GetNpi {
    const ID: NpiId = NpiId::from_u128(0x0E4E_5000);
    type ClientDispatch = dyn Get;
    type ProviderDispatch = dyn Get;
    type ClientCharacteristics = ();
    type ProviderCharacteristics = ();
}

/// Counts how many of its contexts are alive; a context remembers its value.
struct Ctx {
    value: u32,
    live: Arc<AtomicUsize>,
}
impl Ctx {
    fn new(value: u32, live: &Arc<AtomicUsize>) -> Self {
        live.fetch_add(1, Ordering::SeqCst);
        Ctx {
            value,
            live: Arc::clone(live),
        }
    }
}
impl Drop for Ctx {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Declines the first `refuse` attaches; keeps the client's binding it accepted.
struct Prov {
    dispatch: Arc<dyn Get>,
    refuse: AtomicUsize,
    seen: Mutex<Vec<u32>>,
    kept: Mutex<Option<Binding<dyn Get>>>,
    live: Arc<AtomicUsize>,
    cleaned: Mutex<Vec<u32>>,
}

impl Provider<GetNpi> for Prov {
    type BindingContext = Ctx;
    fn attach_client(
        &self,
        _: &PeerInfo<'_, ()>,
        client: Binding<dyn Get>,
    ) -> Result<(Ctx, Arc<dyn Get>), Declined> {
        let v = client.call(|c| c.get()).unwrap();
        self.seen.lock().unwrap().push(v);
        if self
            .refuse
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(Declined::no_interface());
        }
        *self.kept.lock().unwrap() = Some(client);
        Ok((Ctx::new(100 + v, &self.live), Arc::clone(&self.dispatch)))
    }
    fn detach_client(&self, ctx: &Ctx, hold: DetachHold) {
        assert_eq!(ctx.value / 100, 1);
        drop(hold);
    }
    fn cleanup_binding(&self, ctx: Ctx) {
        self.cleaned.lock().unwrap().push(ctx.value);
    }
}

/// Offers each of `offers` in turn until the provider accepts one.
struct Cli {
    offers: Vec<Arc<dyn Get>>,
    kept: Mutex<Option<Binding<dyn Get>>>,
    live: Arc<AtomicUsize>,
    cleaned: Mutex<Vec<u32>>,
}

impl Client<GetNpi> for Cli {
    type BindingContext = Ctx;
    fn attach_provider(
        &self,
        _: &PeerInfo<'_, ()>,
        attach: &mut ClientAttach<'_, GetNpi>,
    ) -> Result<Ctx, Declined> {
        let mut last = Status::NOINTERFACE;
        for d in &self.offers {
            match attach.attach(Arc::clone(d)) {
                Ok(b) => {
                    let v = b.call(|p| p.get()).unwrap();
                    *self.kept.lock().unwrap() = Some(b);
                    return Ok(Ctx::new(200 + v, &self.live));
                }
                Err(s) => last = s,
            }
        }
        Err(Declined::with_status(last))
    }
    fn detach_provider(&self, ctx: &Ctx, hold: DetachHold) {
        assert_eq!(ctx.value / 100, 2);
        drop(hold);
    }
    fn cleanup_binding(&self, ctx: Ctx) {
        self.cleaned.lock().unwrap().push(ctx.value);
    }
}

fn module(i: u128) -> ModuleInfo {
    ModuleInfo::new(ModuleId::Guid(Guid::from_u128(i)))
}

#[test]
fn dispatches_move_to_the_peer_and_live_exactly_as_long_as_its_bindings() {
    let r = Registrar::new();
    let live = Arc::new(AtomicUsize::new(0));
    let provider_dispatch: Arc<dyn Get> = Arc::new(Val(7));
    let prov = Arc::new(Prov {
        dispatch: Arc::clone(&provider_dispatch),
        refuse: AtomicUsize::new(1),
        seen: Mutex::default(),
        kept: Mutex::default(),
        live: Arc::clone(&live),
        cleaned: Mutex::default(),
    });
    let refused: Arc<dyn Get> = Arc::new(Val(1));
    let accepted: Arc<dyn Get> = Arc::new(Val(2));
    let cli = Arc::new(Cli {
        offers: vec![Arc::clone(&refused), Arc::clone(&accepted)],
        kept: Mutex::default(),
        live: Arc::clone(&live),
        cleaned: Mutex::default(),
    });
    let pr = ProviderRegistration::<GetNpi>::register(&r, module(1), None, prov.clone()).unwrap();
    let cr = ClientRegistration::<GetNpi>::register(&r, module(2), None, cli.clone()).unwrap();

    // The provider saw both offers; the refused one went back to its owner alone.
    assert_eq!(*prov.seen.lock().unwrap(), [1, 2]);
    assert_eq!(
        Arc::strong_count(&refused),
        2,
        "the client's list and this test"
    );
    // The accepted dispatch: the client's list, this test, and the provider's binding.
    assert_eq!(Arc::strong_count(&accepted), 3);
    // The provider's dispatch: the provider, this test, and the client's binding.
    assert_eq!(Arc::strong_count(&provider_dispatch), 3);
    assert_eq!(live.load(Ordering::SeqCst), 2);

    let to_provider = cli.kept.lock().unwrap().clone().unwrap();
    let to_client = prov.kept.lock().unwrap().clone().unwrap();
    assert_eq!(to_provider.call(|p| p.get()), Ok(7));
    assert_eq!(to_client.call(|c| c.get()), Ok(2));

    cr.unload();
    // Both cleanups got their own contexts back, and nothing else holds them.
    assert_eq!(*cli.cleaned.lock().unwrap(), [207]);
    assert_eq!(*prov.cleaned.lock().unwrap(), [102]);
    assert_eq!(live.load(Ordering::SeqCst), 0);
    // Detached bindings refuse calls but keep what they point to alive while they exist.
    assert_eq!(to_provider.call(|p| p.get()), Err(Detached));
    assert_eq!(to_client.call(|c| c.get()), Err(Detached));
    assert_eq!(Arc::strong_count(&provider_dispatch), 3);
    assert_eq!(Arc::strong_count(&accepted), 3);

    drop(to_provider);
    *cli.kept.lock().unwrap() = None;
    assert_eq!(
        Arc::strong_count(&provider_dispatch),
        2,
        "released with the client's last binding"
    );
    drop(to_client);
    *prov.kept.lock().unwrap() = None;
    assert_eq!(
        Arc::strong_count(&accepted),
        2,
        "released with the provider's last binding"
    );
    pr.unload();
}

#[test]
fn a_provider_refusing_every_offer_keeps_nothing_and_no_cleanup_runs() {
    let r = Registrar::new();
    let live = Arc::new(AtomicUsize::new(0));
    let provider_dispatch: Arc<dyn Get> = Arc::new(Val(7));
    let prov = Arc::new(Prov {
        dispatch: Arc::clone(&provider_dispatch),
        refuse: AtomicUsize::new(usize::MAX),
        seen: Mutex::default(),
        kept: Mutex::default(),
        live: Arc::clone(&live),
        cleaned: Mutex::default(),
    });
    let offer: Arc<dyn Get> = Arc::new(Val(3));
    let cli = Arc::new(Cli {
        offers: vec![Arc::clone(&offer), Arc::clone(&offer)],
        kept: Mutex::default(),
        live: Arc::clone(&live),
        cleaned: Mutex::default(),
    });
    let pr = ProviderRegistration::<GetNpi>::register(&r, module(1), None, prov.clone()).unwrap();
    let cr = ClientRegistration::<GetNpi>::register(&r, module(2), None, cli.clone()).unwrap();
    assert_eq!(*prov.seen.lock().unwrap(), [3, 3]);
    assert!(r.snapshot().bindings.is_empty());
    assert_eq!(
        Arc::strong_count(&offer),
        3,
        "the client's list (twice) and this test"
    );
    assert_eq!(Arc::strong_count(&provider_dispatch), 2);
    cr.unload();
    pr.unload();
    assert!(cli.cleaned.lock().unwrap().is_empty());
    assert!(prov.cleaned.lock().unwrap().is_empty());
    assert_eq!(live.load(Ordering::SeqCst), 0);
}

/// A client that, instead of `ClientAttach::attach`, calls `Registrar::client_attach_provider`
/// itself (a safe function) with a dispatch context of its own making.
struct Forger {
    nmr: Registrar,
    result: Mutex<Option<Result<(), Status>>>,
}

impl Client<GetNpi> for Forger {
    type BindingContext = ();
    fn attach_provider(
        &self,
        _: &PeerInfo<'_, ()>,
        attach: &mut ClientAttach<'_, GetNpi>,
    ) -> Result<(), Declined> {
        let v: Arc<dyn Get> = Arc::new(Val(9));
        // Shaped like what a typed provider might expect behind a client's dispatch
        // context (dispatch slots of the NPI's types), so reinterpreting it "works".
        let mut forged: [Option<Arc<dyn Get>>; 2] = [Some(Arc::clone(&v)), Some(v)];
        let r = self
            .nmr
            .client_attach_provider(
                attach.handle(),
                Context::NULL,
                Context::from_ptr(&raw mut forged),
            )
            .map(|_| ());
        *self.result.lock().unwrap() = Some(r);
        Err(Declined::no_interface())
    }
}

#[test]
fn a_typed_provider_refuses_a_dispatch_context_a_module_forged() {
    let r = Registrar::new();
    let live = Arc::new(AtomicUsize::new(0));
    let prov = Arc::new(Prov {
        dispatch: Arc::new(Val(7)),
        refuse: AtomicUsize::new(0),
        seen: Mutex::default(),
        kept: Mutex::default(),
        live: Arc::clone(&live),
        cleaned: Mutex::default(),
    });
    let pr = ProviderRegistration::<GetNpi>::register(&r, module(1), None, prov.clone()).unwrap();
    let forger = Arc::new(Forger {
        nmr: r.clone(),
        result: Mutex::default(),
    });
    ClientRegistration::<GetNpi>::register(&r, module(2), None, forger.clone())
        .unwrap()
        .unload();
    assert_eq!(
        *forger.result.lock().unwrap(),
        Some(Err(Status::INVALID_PARAMETER))
    );
    assert!(
        prov.seen.lock().unwrap().is_empty(),
        "the provider module never saw the forged attach"
    );
    // A real typed attach on the same thread still goes through.
    let cli = Arc::new(Cli {
        offers: vec![Arc::new(Val(2))],
        kept: Mutex::default(),
        live: Arc::clone(&live),
        cleaned: Mutex::default(),
    });
    let cr = ClientRegistration::<GetNpi>::register(&r, module(3), None, cli.clone()).unwrap();
    assert_eq!(*prov.seen.lock().unwrap(), [2]);
    cr.unload();
    pr.unload();
    assert_eq!(live.load(Ordering::SeqCst), 0);
}
