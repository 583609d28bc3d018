//! Test modules for the untyped core: clients and providers whose every callback is
//! recorded, with behaviour chosen per test through closures.

#![allow(
    dead_code,
    unreachable_pub,
    missing_docs,
    clippy::allow_attributes,
    clippy::allow_attributes_without_reason
)]

use nmr::{
    BindingHandle, ClientCallbacks, Context, DetachStatus, Guid, ModuleId, NpiId,
    ProviderAttachment, ProviderCallbacks, Registrar, RegistrationHandle, RegistrationInstance,
    Status,
};
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;

pub const NPI: NpiId = NpiId::from_u128(0x0000_1111_2222_3333_4444_5555_6666_7777);
pub const OTHER_NPI: NpiId = NpiId::from_u128(0x9999);

/// One recorded callback.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ev {
    ClientAttach {
        client: &'static str,
        provider: String,
        binding: BindingHandle,
    },
    ProviderAttach {
        provider: &'static str,
        client: String,
        binding: BindingHandle,
        client_ctx: usize,
        client_dispatch: usize,
    },
    ClientDetach {
        client: &'static str,
        ctx: usize,
    },
    ProviderDetach {
        provider: &'static str,
        ctx: usize,
    },
    ClientCleanup {
        client: &'static str,
        ctx: usize,
    },
    ProviderCleanup {
        provider: &'static str,
        ctx: usize,
    },
    Mark(String),
}

#[derive(Default)]
pub struct Log {
    events: Mutex<Vec<(Ev, ThreadId)>>,
}

impl Log {
    pub fn new() -> Arc<Log> {
        Arc::new(Log::default())
    }
    pub fn push(&self, e: Ev) {
        self.events
            .lock()
            .unwrap()
            .push((e, std::thread::current().id()));
    }
    pub fn mark(&self, s: impl Into<String>) {
        self.push(Ev::Mark(s.into()));
    }
    pub fn events(&self) -> Vec<Ev> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .map(|(e, _)| e.clone())
            .collect()
    }
    pub fn with_threads(&self) -> Vec<(Ev, ThreadId)> {
        self.events.lock().unwrap().clone()
    }
    pub fn count(&self, f: impl Fn(&Ev) -> bool) -> usize {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|(e, _)| f(e))
            .count()
    }
    pub fn position(&self, f: impl Fn(&Ev) -> bool) -> Option<usize> {
        self.events.lock().unwrap().iter().position(|(e, _)| f(e))
    }
    pub fn clear(&self) {
        self.events.lock().unwrap().clear();
    }
}

pub fn module(n: u128) -> ModuleId {
    ModuleId::Guid(Guid::from_u128(n))
}

pub fn instance(npi: NpiId, m: u128, number: u32, name: &str) -> RegistrationInstance {
    RegistrationInstance::new(npi, module(m), number).with_name(name)
}

pub type AttachFn =
    dyn Fn(&Registrar, BindingHandle, &RegistrationInstance) -> Status + Send + Sync;
pub type ProviderAttachFn = dyn Fn(BindingHandle, &RegistrationInstance, Context, Context) -> Result<ProviderAttachment, Status>
    + Send
    + Sync;
pub type DetachFn = dyn Fn(&Registrar, Context) -> DetachStatus + Send + Sync;

/// `NmrClientAttachProvider`'s result as the status `ClientAttachProvider` returns.
pub fn status_of<T>(r: Result<T, Status>) -> Status {
    r.map_or_else(|s| s, |_| Status::SUCCESS)
}

/// An attach that accepts with these client context and dispatch values.
pub fn attach_with(client_ctx: usize, dispatch: usize) -> Box<AttachFn> {
    Box::new(move |r, b, _| status_of(r.client_attach_provider(b, ctx(client_ctx), ctx(dispatch))))
}

/// A detach that always answers `status`.
pub fn answer(status: DetachStatus) -> Box<DetachFn> {
    Box::new(move |_, _| status)
}

/// A client whose attach offers `ctx`/`dispatch` and records the binding.
pub struct TestClient {
    pub name: &'static str,
    pub log: Arc<Log>,
    pub registrar: Registrar,
    pub attach: Box<AttachFn>,
    pub detach: Box<DetachFn>,
    pub bindings: Mutex<Vec<(BindingHandle, ProviderAttachment)>>,
    pub handle: Mutex<Option<RegistrationHandle>>,
}

/// Sentinel contexts so tests can tell them apart.
pub fn ctx(v: usize) -> Context {
    Context(v as *mut std::ffi::c_void)
}
pub fn val(c: Context) -> usize {
    c.0 as usize
}

impl TestClient {
    pub fn accepting(
        name: &'static str,
        log: &Arc<Log>,
        r: &Registrar,
        client_ctx: usize,
        dispatch: usize,
    ) -> Arc<Self> {
        Self::custom(
            name,
            log,
            r,
            Box::new(move |r, b, _| {
                match r.client_attach_provider(b, ctx(client_ctx), ctx(dispatch)) {
                    Ok(_) => Status::SUCCESS,
                    Err(s) => s,
                }
            }),
            Box::new(|_, _| DetachStatus::Done),
        )
    }

    pub fn custom(
        name: &'static str,
        log: &Arc<Log>,
        r: &Registrar,
        attach: Box<AttachFn>,
        detach: Box<DetachFn>,
    ) -> Arc<Self> {
        Arc::new(TestClient {
            name,
            log: Arc::clone(log),
            registrar: r.clone(),
            attach,
            detach,
            bindings: Mutex::new(Vec::new()),
            handle: Mutex::new(None),
        })
    }

    pub fn register(self: &Arc<Self>, inst: RegistrationInstance) -> RegistrationHandle {
        let me = Arc::clone(self);
        self.registrar
            .register_client(inst, self.clone(), move |h| {
                *me.handle.lock().unwrap() = Some(h);
            })
            .unwrap()
    }

    pub fn binding(&self) -> BindingHandle {
        self.bindings.lock().unwrap()[0].0
    }
}

impl ClientCallbacks for TestClient {
    fn attach_provider(&self, binding: BindingHandle, provider: &RegistrationInstance) -> Status {
        self.log.push(Ev::ClientAttach {
            client: self.name,
            provider: provider.display_name(),
            binding,
        });
        let s = (self.attach)(&self.registrar, binding, provider);
        if s == Status::SUCCESS {
            self.bindings
                .lock()
                .unwrap()
                .push((binding, ProviderAttachment::default()));
        }
        s
    }
    fn detach_provider(&self, c: Context) -> DetachStatus {
        self.log.push(Ev::ClientDetach {
            client: self.name,
            ctx: val(c),
        });
        (self.detach)(&self.registrar, c)
    }
    fn cleanup_binding_context(&self, c: Context) {
        self.log.push(Ev::ClientCleanup {
            client: self.name,
            ctx: val(c),
        });
    }
}

/// A provider whose attach hands back `ctx`/`dispatch`, or runs a custom closure.
pub struct TestProvider {
    pub name: &'static str,
    pub log: Arc<Log>,
    pub registrar: Registrar,
    pub attach: Box<ProviderAttachFn>,
    pub detach: Box<DetachFn>,
    pub handle: Mutex<Option<RegistrationHandle>>,
    pub bindings: Mutex<Vec<BindingHandle>>,
}

impl TestProvider {
    pub fn accepting(
        name: &'static str,
        log: &Arc<Log>,
        r: &Registrar,
        pctx: usize,
        dispatch: usize,
    ) -> Arc<Self> {
        Self::custom(
            name,
            log,
            r,
            Box::new(move |_, _, _, _| {
                Ok(ProviderAttachment {
                    binding_context: ctx(pctx),
                    dispatch: ctx(dispatch),
                })
            }),
            Box::new(|_, _| DetachStatus::Done),
        )
    }

    pub fn custom(
        name: &'static str,
        log: &Arc<Log>,
        r: &Registrar,
        attach: Box<ProviderAttachFn>,
        detach: Box<DetachFn>,
    ) -> Arc<Self> {
        Arc::new(TestProvider {
            name,
            log: Arc::clone(log),
            registrar: r.clone(),
            attach,
            detach,
            handle: Mutex::new(None),
            bindings: Mutex::new(Vec::new()),
        })
    }

    pub fn register(self: &Arc<Self>, inst: RegistrationInstance) -> RegistrationHandle {
        let me = Arc::clone(self);
        self.registrar
            .register_provider(inst, self.clone(), move |h| {
                *me.handle.lock().unwrap() = Some(h);
            })
            .unwrap()
    }
}

impl ProviderCallbacks for TestProvider {
    fn attach_client(
        &self,
        binding: BindingHandle,
        client: &RegistrationInstance,
        client_ctx: Context,
        client_dispatch: Context,
    ) -> Result<ProviderAttachment, Status> {
        self.log.push(Ev::ProviderAttach {
            provider: self.name,
            client: client.display_name(),
            binding,
            client_ctx: val(client_ctx),
            client_dispatch: val(client_dispatch),
        });
        let r = (self.attach)(binding, client, client_ctx, client_dispatch);
        if r.is_ok() {
            self.bindings.lock().unwrap().push(binding);
        }
        r
    }
    fn detach_client(&self, c: Context) -> DetachStatus {
        self.log.push(Ev::ProviderDetach {
            provider: self.name,
            ctx: val(c),
        });
        (self.detach)(&self.registrar, c)
    }
    fn cleanup_binding_context(&self, c: Context) {
        self.log.push(Ev::ProviderCleanup {
            provider: self.name,
            ctx: val(c),
        });
    }
}

pub fn is_client_detach(e: &Ev) -> bool {
    matches!(e, Ev::ClientDetach { .. })
}
pub fn is_provider_detach(e: &Ev) -> bool {
    matches!(e, Ev::ProviderDetach { .. })
}
pub fn is_cleanup(e: &Ev) -> bool {
    matches!(e, Ev::ClientCleanup { .. } | Ev::ProviderCleanup { .. })
}
pub fn is_client_attach(e: &Ev) -> bool {
    matches!(e, Ev::ClientAttach { .. })
}
pub fn is_provider_attach(e: &Ev) -> bool {
    matches!(e, Ev::ProviderAttach { .. })
}

/// Fails the test (instead of hanging it) if `f` does not finish in `secs`.
pub fn within<T: Send + 'static>(secs: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    let h = std::thread::spawn(move || {
        let v = f();
        let _ = tx.send(());
        v
    });
    match rx.recv_timeout(std::time::Duration::from_secs(secs)) {
        Ok(()) => h.join().unwrap(),
        Err(_) => {
            if h.is_finished() {
                // The closure panicked: propagate its panic.
                match h.join() {
                    Ok(v) => v,
                    Err(p) => std::panic::resume_unwind(p),
                }
            } else {
                panic!("watchdog: operation did not finish within {secs}s (hang)");
            }
        }
    }
}
