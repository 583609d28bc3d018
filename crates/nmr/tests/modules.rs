//! How a registration holds its module's callbacks (`Module`): shared (`Arc`), owned (`Box`)
//! or `'static`. Each one's callbacks run the same way, and owned and shared ones are
//! released exactly at the wait that ends the registration.

mod support;

use nmr::{
    BindingHandle, ClientCallbacks, ClientModule, Context, DetachStatus, Module, Registrar,
    RegistrationInstance, Status,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use support::{Log, NPI, TestProvider, instance};

/// A client that attaches to every provider, counts its callbacks and its own drop.
struct Counting {
    registrar: Registrar,
    callbacks: Arc<AtomicUsize>,
    dropped: Arc<AtomicUsize>,
}

impl Counting {
    fn new(r: &Registrar) -> Self {
        Counting {
            registrar: r.clone(),
            callbacks: Arc::new(AtomicUsize::new(0)),
            dropped: Arc::new(AtomicUsize::new(0)),
        }
    }
}

impl Drop for Counting {
    fn drop(&mut self) {
        self.dropped.fetch_add(1, Ordering::SeqCst);
    }
}

impl ClientCallbacks for Counting {
    fn attach_provider(&self, binding: BindingHandle, _: &RegistrationInstance) -> Status {
        self.callbacks.fetch_add(1, Ordering::SeqCst);
        match self
            .registrar
            .client_attach_provider(binding, Context::NULL, Context::NULL)
        {
            Ok(_) => Status::SUCCESS,
            Err(s) => s,
        }
    }
    fn detach_provider(&self, _: Context) -> DetachStatus {
        self.callbacks.fetch_add(1, Ordering::SeqCst);
        DetachStatus::Done
    }
    fn cleanup_binding_context(&self, _: Context) {
        self.callbacks.fetch_add(1, Ordering::SeqCst);
    }
}

/// Registers `module` as a client against one provider, deregisters it and checks that it
/// is dropped (if the registrar holds the last reference) only once the wait returns.
fn lifecycle(r: &Registrar, module: impl Into<ClientModule>, counts: &Counting, m: u128) {
    let module = module.into();
    let log = Log::new();
    let provider = TestProvider::accepting("P", &log, r, 1, 2);
    let p = provider.register(instance(NPI, 100 + m, 0, "P"));
    let before = counts.callbacks.load(Ordering::SeqCst);
    let c = r
        .register_client(instance(NPI, m, 0, "C"), module, |_| {})
        .expect("register");
    assert_eq!(
        counts.callbacks.load(Ordering::SeqCst),
        before + 1,
        "attach"
    );
    r.deregister_client(c).expect("deregister");
    assert_eq!(
        counts.callbacks.load(Ordering::SeqCst),
        before + 3,
        "detach and cleanup"
    );
    assert_eq!(
        counts.dropped.load(Ordering::SeqCst),
        0,
        "dropped before the wait"
    );
    r.wait_for_client_deregister_complete(c).expect("wait");
    r.deregister_provider(p).expect("deregister provider");
    r.wait_for_provider_deregister_complete(p)
        .expect("wait provider");
}

#[test]
fn owned_callbacks_are_dropped_at_the_wait() {
    let r = Registrar::new();
    let client = Box::new(Counting::new(&r));
    let (callbacks, dropped) = (Arc::clone(&client.callbacks), Arc::clone(&client.dropped));
    let probe = Counting {
        registrar: r.clone(),
        callbacks,
        dropped: Arc::clone(&dropped),
    };
    lifecycle(&r, client, &probe, 1);
    assert_eq!(
        dropped.load(Ordering::SeqCst),
        1,
        "owned callbacks not dropped"
    );
    assert_eq!(probe.callbacks.load(Ordering::SeqCst), 3);
}

#[test]
fn shared_callbacks_are_released_at_the_wait() {
    let r = Registrar::new();
    let client = Arc::new(Counting::new(&r));
    let weak = Arc::downgrade(&client);
    let probe = Counting {
        registrar: r.clone(),
        callbacks: Arc::clone(&client.callbacks),
        dropped: Arc::new(AtomicUsize::new(0)),
    };
    lifecycle(&r, Arc::clone(&client), &probe, 2);
    assert_eq!(
        Arc::strong_count(&client),
        1,
        "the registrar kept its reference"
    );
    drop(client);
    assert!(weak.upgrade().is_none());
}

#[test]
fn one_static_module_serves_many_registrations() {
    static CALLS: std::sync::OnceLock<Counting> = std::sync::OnceLock::new();
    let r = Registrar::new();
    let client: &'static Counting = CALLS.get_or_init(|| Counting::new(&r));
    for m in 0..3 {
        lifecycle(&r, client, client, 10 + m);
    }
    assert_eq!(client.callbacks.load(Ordering::SeqCst), 9);
    let module: ClientModule = client.into();
    assert!(module.is_static());
    assert!(format!("{module:?}").starts_with("Module::Static(0x"));
    assert!(matches!(module, Module::Static(_)));
}
