//! loom models of the registrar driving the binding state machine: every interleaving of
//! two racing threads keeps exactly-once detach per side, cleanup after both sides, and
//! wait covering cleanup. Run with
//! `RUSTFLAGS="--cfg loom" cargo test -p nmr --release --test loom_registrar`.
#![cfg(loom)]

use loom::thread;
use nmr::{
    BindingHandle, ClientCallbacks, Context, DetachStatus, Error, Guid, ModuleId, NpiId,
    ProviderAttachment, ProviderCallbacks, Registrar, RegistrationInstance, Status,
};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

const NPI: NpiId = NpiId::from_u128(0x100);

#[derive(Default)]
struct Counts {
    client_detach: AtomicUsize,
    provider_detach: AtomicUsize,
    cleanups: AtomicUsize,
    binding: Mutex<Option<BindingHandle>>,
}

struct C(Arc<Counts>, Registrar);
impl ClientCallbacks for C {
    fn attach_provider(&self, b: BindingHandle, _: &RegistrationInstance) -> Status {
        match self
            .1
            .client_attach_provider(b, Context::NULL, Context::NULL)
        {
            Ok(_) => {
                *self.0.binding.lock().unwrap() = Some(b);
                Status::SUCCESS
            }
            Err(s) => s,
        }
    }
    fn detach_provider(&self, _: Context) -> DetachStatus {
        self.0.client_detach.fetch_add(1, Ordering::SeqCst);
        DetachStatus::Done
    }
    fn cleanup_binding_context(&self, _: Context) {
        self.0.cleanups.fetch_add(1, Ordering::SeqCst);
    }
}

struct P(Arc<Counts>, DetachStatus);
impl ProviderCallbacks for P {
    fn attach_client(
        &self,
        _: BindingHandle,
        _: &RegistrationInstance,
        _: Context,
        _: Context,
    ) -> Result<ProviderAttachment, Status> {
        Ok(ProviderAttachment::default())
    }
    fn detach_client(&self, _: Context) -> DetachStatus {
        self.0.provider_detach.fetch_add(1, Ordering::SeqCst);
        self.1
    }
    fn cleanup_binding_context(&self, _: Context) {
        self.0.cleanups.fetch_add(1, Ordering::SeqCst);
    }
}

fn inst(n: u128) -> RegistrationInstance {
    RegistrationInstance::new(NPI, ModuleId::Guid(Guid::from_u128(n)), 0)
}

#[test]
fn both_sides_deregistering_at_once_detach_each_side_once() {
    loom::model(|| {
        let r = Registrar::new();
        let k = Arc::new(Counts::default());
        let ph = r
            .register_provider(inst(1), Arc::new(P(k.clone(), DetachStatus::Done)), |_| {})
            .unwrap();
        let ch = r
            .register_client(inst(2), Arc::new(C(k.clone(), r.clone())), |_| {})
            .unwrap();
        let r2 = r.clone();
        let k2 = k.clone();
        let t = thread::spawn(move || {
            r2.deregister_provider(ph).unwrap();
            r2.wait_for_provider_deregister_complete(ph).unwrap();
            assert_eq!(
                k2.cleanups.load(Ordering::SeqCst),
                2,
                "wait returned before cleanup"
            );
        });
        r.deregister_client(ch).unwrap();
        r.wait_for_client_deregister_complete(ch).unwrap();
        assert_eq!(
            k.cleanups.load(Ordering::SeqCst),
            2,
            "wait returned before cleanup"
        );
        t.join().unwrap();
        assert_eq!(k.client_detach.load(Ordering::SeqCst), 1);
        assert_eq!(k.provider_detach.load(Ordering::SeqCst), 1);
    });
}

#[test]
fn completion_racing_the_pending_detach_runs_cleanup_once_and_wait_covers_it() {
    loom::model(|| {
        let r = Registrar::new();
        let k = Arc::new(Counts::default());
        let ph = r
            .register_provider(
                inst(1),
                Arc::new(P(k.clone(), DetachStatus::Pending)),
                |_| {},
            )
            .unwrap();
        let ch = r
            .register_client(inst(2), Arc::new(C(k.clone(), r.clone())), |_| {})
            .unwrap();
        let b = k.binding.lock().unwrap().unwrap();
        let r2 = r.clone();
        let t = thread::spawn(move || {
            // The completer may arrive before the detach was even notified: it retries.
            loop {
                match r2.provider_detach_client_complete(b) {
                    Ok(()) => break,
                    Err(Error::NoPendingDetach) => thread::yield_now(),
                    Err(e) => panic!("{e}"),
                }
            }
        });
        r.deregister_provider(ph).unwrap();
        r.wait_for_provider_deregister_complete(ph).unwrap();
        assert_eq!(k.cleanups.load(Ordering::SeqCst), 2);
        t.join().unwrap();
        r.deregister_client(ch).unwrap();
        r.wait_for_client_deregister_complete(ch).unwrap();
        assert_eq!(k.provider_detach.load(Ordering::SeqCst), 1);
        assert_eq!(k.client_detach.load(Ordering::SeqCst), 1);
        assert_eq!(k.cleanups.load(Ordering::SeqCst), 2);
    });
}

#[test]
fn a_provider_leaving_during_a_client_registration_never_strands_a_binding() {
    loom::model(|| {
        let r = Registrar::new();
        let k = Arc::new(Counts::default());
        let ph = r
            .register_provider(inst(1), Arc::new(P(k.clone(), DetachStatus::Done)), |_| {})
            .unwrap();
        let r2 = r.clone();
        let t = thread::spawn(move || {
            r2.deregister_provider(ph).unwrap();
            r2.wait_for_provider_deregister_complete(ph).unwrap();
        });
        let ch = r
            .register_client(inst(2), Arc::new(C(k.clone(), r.clone())), |_| {})
            .unwrap();
        t.join().unwrap();
        let attached = k.binding.lock().unwrap().is_some();
        let detaches = (
            k.client_detach.load(Ordering::SeqCst),
            k.provider_detach.load(Ordering::SeqCst),
        );
        assert_eq!(detaches, if attached { (1, 1) } else { (0, 0) });
        assert_eq!(
            k.cleanups.load(Ordering::SeqCst),
            if attached { 2 } else { 0 }
        );
        r.deregister_client(ch).unwrap();
        r.wait_for_client_deregister_complete(ch).unwrap();
    });
}
