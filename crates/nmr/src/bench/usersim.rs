//! A model of usersim's NMR engine, the baseline of the registrar benchmarks.
//!
//! [microsoft/usersim](https://github.com/microsoft/usersim) (`src/nmr_impl.{h,cpp}`,
//! `src/nmr_um.cpp`, MIT) is the only maintained user-mode NMR. It is C++ written against
//! the Windows headers, so it cannot be linked into this benchmark; this module is an
//! independent Rust re-implementation of its *algorithm* — the engine as it stood before
//! usersim PR #319 (the version the figures in `peers.md` §5 were taken on) — doing the
//! same work per operation with the std equivalents of the C++ types, so the benchmark can
//! measure it on the same machine, in the same run, with the same callbacks as ours. No
//! code or text is taken from usersim.
//!
//! # What is modelled
//!
//! **State.** One [`Nmr`] holds, behind **one mutex**:
//!
//! * the clients and the providers, each an ordered map from a counter handle (1, 2, 3, …)
//!   to a registration in a heap node of its own (`std::map<handle, registration>`: here a
//!   `BTreeMap` to a `Box`, so the registration's address is stable, as a map node's is);
//! * every binding of every NPI, in one ordered map keyed by the binding's address
//!   (`std::map<void*, std::shared_ptr<binding>>`: here `BTreeMap<usize, Arc<_>>`).
//!
//! A registration keeps a copy of its characteristics (instance, callbacks, context), an
//! interlocked `binding_count` and a `deregistering` flag. A binding points at both
//! registrations (plain pointers; the counts keep them alive), stores both binding
//! contexts and dispatches, and one status per side (`Start → Ready → BeginUnbind →
//! UnbindPending → UnbindComplete`). A condition variable on the same mutex wakes waiters.
//!
//! **Operations** (locks are acquisitions of the one mutex, exclusive):
//!
//! | operation | work |
//! |---|---|
//! | register | lock: allocate and insert the registration; unlock. Lock: look the initiator up, scan **every** registration of the other kind; for each one with the same NPI id, neither deregistering: two interlocked increments of the counts, allocate the binding (`make_shared`), insert it in the binding map, and queue an attach action (a heap-allocated `std::function`, copied into a vector: allocate, copy, free); unlock. Then, per action, outside the lock: `ClientAttachProvider`, and on success lock, mark both sides `Ready`, unlock (on failure: `unbind_complete`). |
//! | `NmrClientAttachProvider` | lock, look the binding up by handle, store the client's context and dispatch, unlock; call `ProviderAttachClient` outside the lock and store its context and dispatch. |
//! | deregister | lock, look up, set `deregistering`, unlock. Lock, look up, scan **the whole binding map** and collect (a reference-count increment each) this module's bindings, unlock. Per binding (`begin_unbind`): lock, leave if not `Ready`/`Ready`, mark both `BeginUnbind`, unlock; call the client's detach, then the provider's (each only if its binding context is non-NULL); lock, record each side `UnbindPending` or `UnbindComplete`, unlock; if both complete, `unbind_complete`. If nothing pended, remove the registration (below) and report success, else report pending. |
//! | `unbind_complete` | lock; **the cleanup callbacks run with the lock held** (each only if its context is non-NULL); two interlocked decrements; erase the binding from the map; wake the waiters; unlock. |
//! | `Nmr*DetachComplete` | lock, look the binding up, mark that side complete; if the other side is complete too, unlock and `unbind_complete`. |
//! | wait (remove) | lock, look up; while the count is not 0, wait on the condition variable (in 10 s slices); erase the registration; unlock. |
//!
//! A lifecycle of one client bound to one provider, detaches answering done, therefore
//! takes 10 lock acquisitions, 4 interlocked count updates, 9 reference-count updates and
//! 6 heap allocations (usersim: 7, see below), plus the map operations and the scans — as
//! usersim's, at the same points, in the same order.
//!
//! # Where the model differs, and why the cost stays comparable
//!
//! * **Maps.** `BTreeMap` allocates nodes of 11 entries where `std::map` allocates one
//!   node per entry. The registrations get a `Box` each, like a map node; binding-map
//!   entries do not, so the model makes one allocation and one free per binding **fewer**
//!   than usersim, and its lookups touch fewer cache lines. With the lock below being
//!   inlined where glibc's is a call through the PLT, all three make the model slightly
//!   faster than the original: ratios to it are conservative.
//! * **Mutex and condition variable.** On Linux, the model's (submodule `lock`) are glibc's
//!   algorithms on a futex word, which is what `std::mutex` and `std::condition_variable`
//!   are with g++ and glibc: uncontended, one locked read-modify-write to lock and one to
//!   unlock (as `std::sync::Mutex`); contended, **no spinning** — the waiter sleeps in the
//!   kernel at once and the holder pays a wake-up on unlock — where `std::sync::Mutex`
//!   would spin first and hide most of that cost. The condition variable is only notified
//!   while someone waits (the engine counts its waiters under the lock), as glibc's
//!   broadcast returns after one load when nobody waits. Elsewhere the model uses
//!   `std::sync::{Mutex, Condvar}`.
//! * **Vectors** grow by doubling from 1, as libstdc++'s do.
//! * **Attach actions** are a boxed struct holding the binding's `Arc` rather than a
//!   `std::function` over a lambda; libstdc++ heap-allocates such a lambda (40 bytes, over
//!   its 16-byte small buffer), so the allocations and reference counts are the same; the
//!   call is direct instead of through the `std::function` invoker.
//! * **Omitted:** the `cxplat` fault-injection check at the top of the register and
//!   attach exports (a test of a global flag when disabled), the `try`/`catch` wrappers
//!   (free unless thrown), NULL NPI ids (the model's ids are values), and the debug-build
//!   assertion after each 10 s wait slice (the model keeps waiting, as a release build does).
//! * **Misuse.** Where usersim throws `invalid handle` (terminating the process), the model
//!   panics. Where usersim only asserts in debug builds — a detach completion for a side
//!   that did not answer pending, or that lands before its detach callback returned — the
//!   model panics too: tolerating it is what lets usersim run cleanups twice, and the model
//!   must stay memory-safe. Benchmarks do none of these.
//! * The `Nmr` is an instance, not a process-wide singleton, so benchmark runs do not share
//!   state; callbacks are trait objects borrowed for the registrar's lifetime (usersim
//!   copies C function pointers: neither takes a reference count per registration).
//!
//! Behaviour follows usersim's, including its deviations from Windows (`peers.md` §1.4):
//! deregister reports success when nothing pended (then the caller must not wait), detach
//! and cleanup are skipped for NULL binding contexts, cleanups run under the lock (a
//! cleanup that calls the registrar deadlocks), and a deregistration racing an attach in
//! flight can strand the binding (usersim #318).
//!
//! # Safety
//!
//! A binding points at its registrations without owning them, as usersim's does. It
//! dereferences them only while it holds one of their `binding_count`s: from its creation
//! (under the lock, with the increments) until its single `unbind_complete` (under the
//! lock, ending with the decrements). A registration is freed only by a wait/remove, under
//! the lock, after its count reached 0. `unbind_complete` runs at most once per binding
//! because each path to it starts from a state only one thread can leave: `Start` (only the
//! attaching thread), `Ready` → `BeginUnbind` (only the thread that made the transition),
//! and `UnbindPending` → `UnbindComplete` (checked under the lock; the model panics on any
//! other completion). `NmrClientAttachProvider` takes an [`Attach`] token that only exists
//! during the client's attach callback, while the binding is in `Start`.

use crate::{ModuleId, NpiId, Status};
use std::collections::BTreeMap;
use std::fmt;
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, AtomicUsize, Ordering};

mod lock;
use lock::{Cond, Guard, Lock};

/// A registration handle: a counter value (usersim casts it to `HANDLE`).
pub type RegistrationHandle = usize;

/// A binding handle: the binding's address.
pub type BindingHandle = usize;

/// The part of `NPI_REGISTRATION_INSTANCE` the engine looks at or hands to peers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Instance {
    /// The NPI; a client and a provider bind when theirs are equal.
    pub npi: NpiId,
    /// The module's id (passed to peers, not interpreted).
    pub module: ModuleId,
    /// The NPI implementation number (passed to peers, not interpreted).
    pub number: u32,
}

/// What a detach callback answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detach {
    /// `STATUS_SUCCESS`: detached.
    Done,
    /// `STATUS_PENDING`: the module calls the matching `*_detach_complete` later.
    Pending,
}

/// What a deregistration reports (usersim's, before PR #319).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Deregistered {
    /// `STATUS_SUCCESS`: every binding is gone and the registration removed; the caller
    /// must **not** wait (usersim would throw on the unknown handle).
    Done,
    /// `STATUS_PENDING`: the caller waits with [`Nmr::wait_for_client_deregister_complete`]
    /// or [`Nmr::wait_for_provider_deregister_complete`].
    Pending,
}

/// A client module's callbacks (`NPI_CLIENT_CHARACTERISTICS`).
pub trait ClientModule: Sync {
    /// `ClientAttachProvider`: decide whether to attach to `provider`; to attach, call
    /// [`Attach::client_attach_provider`] and return success.
    fn attach_provider(
        &self,
        attach: &Attach<'_, '_>,
        client_context: usize,
        provider: &Instance,
    ) -> Status;
    /// `ClientDetachProvider` (not called for a NULL binding context).
    fn detach_provider(&self, client_binding_context: usize) -> Detach;
    /// `ClientCleanupBindingContext` (not called for a NULL binding context; called with
    /// the registrar's lock held).
    fn cleanup_binding_context(&self, client_binding_context: usize);
}

/// A provider module's callbacks (`NPI_PROVIDER_CHARACTERISTICS`).
pub trait ProviderModule: Sync {
    /// `ProviderAttachClient`: the provider's binding context and dispatch, or a failure.
    ///
    /// # Errors
    /// The status the client's `NmrClientAttachProvider` returns when the provider declines.
    fn attach_client(
        &self,
        binding: BindingHandle,
        provider_context: usize,
        client: &Instance,
        client_binding_context: usize,
        client_dispatch: usize,
    ) -> Result<(usize, usize), Status>;
    /// `ProviderDetachClient` (not called for a NULL binding context).
    fn detach_client(&self, provider_binding_context: usize) -> Detach;
    /// `ProviderCleanupBindingContext` (not called for a NULL binding context; called
    /// with the registrar's lock held).
    fn cleanup_binding_context(&self, provider_binding_context: usize);
}

/// A binding side's progress, as usersim tracks it.
const START: u8 = 0;
const READY: u8 = 1;
const BEGIN_UNBIND: u8 = 2;
const UNBIND_PENDING: u8 = 3;
const UNBIND_COMPLETE: u8 = 4;

/// A registration, in its own heap node (a `std::map` node in usersim).
struct Registration<'a, M: ?Sized> {
    instance: Instance,
    module: &'a M,
    context: usize,
    /// Bindings that still point here; interlocked, read under the lock.
    binding_count: AtomicI64,
    /// Written and read under the lock (an atomic only for interior mutability: relaxed
    /// accesses are plain moves).
    deregistering: AtomicBool,
}

type ClientReg<'a> = Registration<'a, dyn ClientModule + 'a>;
type ProviderReg<'a> = Registration<'a, dyn ProviderModule + 'a>;

impl<'a, M: ?Sized> Registration<'a, M> {
    fn new(instance: Instance, module: &'a M, context: usize) -> Self {
        Registration {
            instance,
            module,
            context,
            binding_count: AtomicI64::new(0),
            deregistering: AtomicBool::new(false),
        }
    }
}

/// One binding. The side statuses are only touched under the lock; the contexts and
/// dispatches are written by the attaching thread and read after a lock handover (relaxed
/// atomics: plain moves, like usersim's plain fields).
struct Binding<'a> {
    client: NonNull<ClientReg<'a>>,
    provider: NonNull<ProviderReg<'a>>,
    client_context: AtomicUsize,
    client_dispatch: AtomicUsize,
    provider_context: AtomicUsize,
    provider_dispatch: AtomicUsize,
    /// The client's detach (usersim's crossed name: `provider_binding_status`).
    client_side: AtomicU8,
    /// The provider's detach (`client_binding_status`).
    provider_side: AtomicU8,
}

// SAFETY: the pointers are only dereferenced under the protocol of the module docs
// (§ Safety), to shared references of `Registration`s, which are `Sync` (atomics, plain
// values and `&dyn ClientModule`/`&dyn ProviderModule`, both `Sync` traits).
unsafe impl Send for Binding<'_> {}
// SAFETY: as for `Send`; every field a shared reference reaches is an atomic.
unsafe impl Sync for Binding<'_> {}

impl<'a> Binding<'a> {
    fn handle(&self) -> BindingHandle {
        std::ptr::from_ref(self) as usize
    }

    /// The client registration.
    ///
    /// # Safety
    /// The binding must still count on it: created, and its `unbind_complete` not yet past
    /// the decrements (module docs, § Safety).
    unsafe fn client(&self) -> &ClientReg<'a> {
        // SAFETY: the caller guarantees the registration is alive (its count includes
        // this binding, and it is freed only when the count is 0).
        unsafe { self.client.as_ref() }
    }

    /// The provider registration.
    ///
    /// # Safety
    /// As for [`client`](Self::client).
    unsafe fn provider(&self) -> &ProviderReg<'a> {
        // SAFETY: as in `client`.
        unsafe { self.provider.as_ref() }
    }
}

/// A queued attach (usersim's `std::function` over a lambda holding the binding's
/// `shared_ptr`): copied once when queued, like the `std::function` is.
#[derive(Clone)]
struct PendingAttach<'a> {
    binding: Arc<Binding<'a>>,
}

type Regs<'a, M> = BTreeMap<RegistrationHandle, Box<Registration<'a, M>>>;

struct State<'a> {
    bindings: BTreeMap<BindingHandle, Arc<Binding<'a>>>,
    clients: Regs<'a, dyn ClientModule + 'a>,
    providers: Regs<'a, dyn ProviderModule + 'a>,
    next_handle: usize,
    /// Threads waiting on the condition variable (glibc's broadcast checks the same).
    waiters: usize,
}

/// The model registrar. Callbacks are borrowed for `'a`.
pub struct Nmr<'a> {
    state: Lock<State<'a>>,
    changed: Cond,
}

impl fmt::Debug for Nmr<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (clients, providers, bindings) = self.counts();
        f.debug_struct("Nmr")
            .field("clients", &clients)
            .field("providers", &providers)
            .field("bindings", &bindings)
            .finish_non_exhaustive()
    }
}

impl Default for Nmr<'_> {
    fn default() -> Self {
        Self::new()
    }
}

/// The client's way to call `NmrClientAttachProvider`, valid only during its
/// [`ClientModule::attach_provider`] callback.
pub struct Attach<'s, 'a> {
    nmr: &'s Nmr<'a>,
    binding: &'s Binding<'a>,
}

impl fmt::Debug for Attach<'_, '_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Attach")
            .field("binding", &self.handle())
            .finish_non_exhaustive()
    }
}

impl Attach<'_, '_> {
    /// The binding handle (the binding's address).
    #[must_use]
    pub fn handle(&self) -> BindingHandle {
        self.binding.handle()
    }

    /// `NmrClientAttachProvider`: stores the client's binding context and dispatch, then
    /// calls the provider's attach; returns the provider's binding context and dispatch.
    ///
    /// # Errors
    /// The provider's status when it declines.
    pub fn client_attach_provider(
        &self,
        client_binding_context: usize,
        client_dispatch: usize,
    ) -> Result<(usize, usize), Status> {
        self.nmr
            .client_attach_provider(self, client_binding_context, client_dispatch)
    }
}

#[cold]
#[track_caller]
fn invalid_handle() -> ! {
    panic!("usersim model: invalid handle (usersim throws std::runtime_error here)")
}

/// `push_back` on a `std::vector`: libstdc++ grows capacity 0 → 1 → 2 → 4 → …
fn push_back<T>(v: &mut Vec<T>, x: T) {
    if v.len() == v.capacity() {
        v.reserve_exact(v.capacity().max(1));
    }
    v.push(x);
}

/// Creates a binding if `client` and `provider` match (usersim's `bind`), under the lock.
fn bind<'a>(
    bindings: &mut BTreeMap<BindingHandle, Arc<Binding<'a>>>,
    client: &ClientReg<'a>,
    provider: &ProviderReg<'a>,
) -> Option<Box<PendingAttach<'a>>> {
    if client.instance.npi != provider.instance.npi {
        return None;
    }
    if client.deregistering.load(Ordering::Relaxed)
        || provider.deregistering.load(Ordering::Relaxed)
    {
        return None;
    }
    client.binding_count.fetch_add(1, Ordering::SeqCst);
    provider.binding_count.fetch_add(1, Ordering::SeqCst);
    let binding = Arc::new(Binding {
        client: NonNull::from(client),
        provider: NonNull::from(provider),
        client_context: AtomicUsize::new(0),
        client_dispatch: AtomicUsize::new(0),
        provider_context: AtomicUsize::new(0),
        provider_dispatch: AtomicUsize::new(0),
        client_side: AtomicU8::new(START),
        provider_side: AtomicU8::new(START),
    });
    // The reference counts of the original: one for the map, one captured by the action,
    // and the local one released.
    bindings.insert(binding.handle(), Arc::clone(&binding));
    let action = Box::new(PendingAttach {
        binding: Arc::clone(&binding),
    });
    drop(binding);
    Some(action)
}

type RegsOf<'a, M> = for<'s> fn(&'s mut State<'a>) -> &'s mut Regs<'a, M>;

impl<'a> Nmr<'a> {
    /// An empty registrar.
    #[must_use]
    pub fn new() -> Self {
        Nmr {
            state: Lock::new(State {
                bindings: BTreeMap::new(),
                clients: BTreeMap::new(),
                providers: BTreeMap::new(),
                next_handle: 1,
                waiters: 0,
            }),
            changed: Cond::new(),
        }
    }

    fn lock(&self) -> Guard<'_, State<'a>> {
        self.state.lock()
    }

    /// (clients, providers, bindings) currently registered.
    #[must_use]
    pub fn counts(&self) -> (usize, usize, usize) {
        let s = self.lock();
        (s.clients.len(), s.providers.len(), s.bindings.len())
    }

    /// `NmrRegisterClient`: registers, then attaches to every matching provider on this
    /// thread before returning.
    pub fn register_client(
        &self,
        instance: Instance,
        module: &'a (dyn ClientModule + 'a),
        context: usize,
    ) -> RegistrationHandle {
        let h = self.add(|s| &mut s.clients, instance, module, context);
        // Queue a bind with every provider under the lock, run them outside it.
        let mut pending: Vec<Box<PendingAttach<'a>>> = Vec::new();
        {
            let mut guard = self.lock();
            let st = &mut *guard;
            let Some(client) = st.clients.get(&h) else {
                invalid_handle()
            };
            for provider in st.providers.values() {
                if let Some(action) = bind(&mut st.bindings, client, provider) {
                    push_back(&mut pending, Box::new((*action).clone()));
                }
            }
        }
        for action in &pending {
            self.run_attach(action);
        }
        h
    }

    /// `NmrRegisterProvider`: registers, then attaches every matching client on this
    /// thread before returning.
    pub fn register_provider(
        &self,
        instance: Instance,
        module: &'a (dyn ProviderModule + 'a),
        context: usize,
    ) -> RegistrationHandle {
        let h = self.add(|s| &mut s.providers, instance, module, context);
        let mut pending: Vec<Box<PendingAttach<'a>>> = Vec::new();
        {
            let mut guard = self.lock();
            let st = &mut *guard;
            let Some(provider) = st.providers.get(&h) else {
                invalid_handle()
            };
            for client in st.clients.values() {
                if let Some(action) = bind(&mut st.bindings, client, provider) {
                    push_back(&mut pending, Box::new((*action).clone()));
                }
            }
        }
        for action in &pending {
            self.run_attach(action);
        }
        h
    }

    fn add<M: ?Sized>(
        &self,
        regs: RegsOf<'a, M>,
        instance: Instance,
        module: &'a M,
        context: usize,
    ) -> RegistrationHandle {
        let mut st = self.lock();
        let h = st.next_handle;
        st.next_handle += 1;
        // Allocated under the lock, as `std::map::insert` allocates its node.
        regs(&mut st).insert(h, Box::new(Registration::new(instance, module, context)));
        h
    }

    /// The queued attach: `ClientAttachProvider` outside the lock, then `Ready` under it,
    /// or `unbind_complete` on failure (cleanups included, as usersim does).
    fn run_attach(&self, action: &PendingAttach<'a>) {
        let b = &*action.binding;
        // SAFETY: the binding is in `Start`, which only this thread leaves (below), so it
        // still counts on both registrations.
        let client = unsafe { b.client() };
        // SAFETY: as above.
        let provider = unsafe { b.provider() };
        let attach = Attach {
            nmr: self,
            binding: b,
        };
        let status = client
            .module
            .attach_provider(&attach, client.context, &provider.instance);
        if status.is_success() {
            let _st = self.lock();
            b.client_side.store(READY, Ordering::Relaxed);
            b.provider_side.store(READY, Ordering::Relaxed);
        } else {
            self.unbind_complete(b);
        }
    }

    fn client_attach_provider(
        &self,
        attach: &Attach<'_, 'a>,
        client_binding_context: usize,
        client_dispatch: usize,
    ) -> Result<(usize, usize), Status> {
        let handle = attach.handle();
        {
            let st = self.lock();
            let Some(found) = st.bindings.get(&handle) else {
                invalid_handle()
            };
            found
                .client_context
                .store(client_binding_context, Ordering::Relaxed);
            found
                .client_dispatch
                .store(client_dispatch, Ordering::Relaxed);
        }
        let b = attach.binding;
        // SAFETY: `attach` exists only during the client's attach callback, while the
        // binding is in `Start` and counts on both registrations.
        let provider = unsafe { b.provider() };
        // SAFETY: as above.
        let client = unsafe { b.client() };
        let (context, dispatch) = provider.module.attach_client(
            handle,
            provider.context,
            &client.instance,
            client_binding_context,
            client_dispatch,
        )?;
        b.provider_context.store(context, Ordering::Relaxed);
        b.provider_dispatch.store(dispatch, Ordering::Relaxed);
        Ok((context, dispatch))
    }

    /// `NmrDeregisterClient`: detaches every binding of the client on this thread.
    pub fn deregister_client(&self, h: RegistrationHandle) -> Deregistered {
        self.deregister(|s| &mut s.clients, h, |b| b.client.as_ptr().cast())
    }

    /// `NmrDeregisterProvider`: detaches every binding of the provider on this thread.
    pub fn deregister_provider(&self, h: RegistrationHandle) -> Deregistered {
        self.deregister(|s| &mut s.providers, h, |b| b.provider.as_ptr().cast())
    }

    /// `NmrWaitForClientDeregisterComplete`, after [`Deregistered::Pending`]: returns once
    /// every binding of the client is cleaned up, and removes the registration.
    pub fn wait_for_client_deregister_complete(&self, h: RegistrationHandle) {
        self.remove(|s| &mut s.clients, h);
    }

    /// `NmrWaitForProviderDeregisterComplete`, after [`Deregistered::Pending`].
    pub fn wait_for_provider_deregister_complete(&self, h: RegistrationHandle) {
        self.remove(|s| &mut s.providers, h);
    }

    /// `NmrClientDetachProviderComplete`: the client's pending detach is done.
    pub fn client_detach_complete(&self, binding: BindingHandle) {
        self.detach_complete(binding, true);
    }

    /// `NmrProviderDetachClientComplete`: the provider's pending detach is done.
    pub fn provider_detach_complete(&self, binding: BindingHandle) {
        self.detach_complete(binding, false);
    }

    fn deregister<M: ?Sized>(
        &self,
        regs: RegsOf<'a, M>,
        h: RegistrationHandle,
        side: fn(&Binding<'a>) -> *const (),
    ) -> Deregistered {
        // Block new bindings.
        {
            let mut st = self.lock();
            let Some(r) = regs(&mut st).get(&h) else {
                invalid_handle()
            };
            r.deregistering.store(true, Ordering::Relaxed);
        }
        // Collect this module's bindings from the whole binding map.
        let mut mine: Vec<Arc<Binding<'a>>> = Vec::new();
        {
            let mut guard = self.lock();
            let st = &mut *guard;
            let me: *const () = match regs(st).get(&h) {
                Some(r) => std::ptr::from_ref::<Registration<'a, M>>(r).cast(),
                None => invalid_handle(),
            };
            for b in st.bindings.values() {
                if side(b) == me {
                    push_back(&mut mine, Arc::clone(b));
                }
            }
        }
        let mut pending = false;
        for b in &mine {
            pending |= self.begin_unbind(b);
        }
        drop(mine);
        if pending {
            Deregistered::Pending
        } else {
            self.remove(regs, h);
            Deregistered::Done
        }
    }

    /// Detaches one binding; true if a side pended (or another thread owns its unbind).
    fn begin_unbind(&self, b: &Binding<'a>) -> bool {
        {
            let _st = self.lock();
            if b.client_side.load(Ordering::Relaxed) != READY
                || b.provider_side.load(Ordering::Relaxed) != READY
            {
                return true;
            }
            b.client_side.store(BEGIN_UNBIND, Ordering::Relaxed);
            b.provider_side.store(BEGIN_UNBIND, Ordering::Relaxed);
        }
        // SAFETY: this thread moved the binding from `Ready` to `BeginUnbind`; no other
        // thread can complete it before the statuses are recorded below, so it still
        // counts on both registrations.
        let client = unsafe { b.client() };
        // SAFETY: as above.
        let provider = unsafe { b.provider() };
        // Both detaches, back to back: the provider's is not held back by a pending
        // client detach.
        let client_context = b.client_context.load(Ordering::Relaxed);
        let client_detach = if client_context != 0 {
            client.module.detach_provider(client_context)
        } else {
            Detach::Done
        };
        let provider_context = b.provider_context.load(Ordering::Relaxed);
        let provider_detach = if provider_context != 0 {
            provider.module.detach_client(provider_context)
        } else {
            Detach::Done
        };
        let complete = {
            let _st = self.lock();
            let record = |side: &AtomicU8, answer: Detach| {
                let v = if answer == Detach::Pending
                    && side.load(Ordering::Relaxed) != UNBIND_COMPLETE
                {
                    UNBIND_PENDING
                } else {
                    UNBIND_COMPLETE
                };
                side.store(v, Ordering::Relaxed);
            };
            record(&b.client_side, client_detach);
            record(&b.provider_side, provider_detach);
            b.client_side.load(Ordering::Relaxed) == UNBIND_COMPLETE
                && b.provider_side.load(Ordering::Relaxed) == UNBIND_COMPLETE
        };
        if complete {
            self.unbind_complete(b);
            false
        } else {
            true
        }
    }

    /// Cleanups (under the lock), count decrements, erase, wake the waiters.
    fn unbind_complete(&self, b: &Binding<'a>) {
        let mut st = self.lock();
        // SAFETY: `unbind_complete` runs once per binding (module docs, § Safety), and the
        // registrations are freed only under this lock once their counts reach 0, which
        // the decrements below are the last steps towards.
        let client = unsafe { b.client() };
        // SAFETY: as above.
        let provider = unsafe { b.provider() };
        let client_context = b.client_context.load(Ordering::Relaxed);
        if client_context != 0 {
            client.module.cleanup_binding_context(client_context);
        }
        let provider_context = b.provider_context.load(Ordering::Relaxed);
        if provider_context != 0 {
            provider.module.cleanup_binding_context(provider_context);
        }
        provider.binding_count.fetch_sub(1, Ordering::SeqCst);
        client.binding_count.fetch_sub(1, Ordering::SeqCst);
        st.bindings.remove(&b.handle());
        if st.waiters > 0 {
            self.changed.notify_all();
        }
    }

    fn detach_complete(&self, handle: BindingHandle, client_side: bool) {
        let b = {
            let st = self.lock();
            let Some(b) = st.bindings.get(&handle) else {
                invalid_handle()
            };
            let (mine, other) = if client_side {
                (&b.client_side, &b.provider_side)
            } else {
                (&b.provider_side, &b.client_side)
            };
            let now = mine.load(Ordering::Relaxed);
            assert!(
                now == UNBIND_PENDING,
                "usersim model: detach completed for a side in state {now}, not after a \
                 pending detach (usersim asserts this in debug builds)"
            );
            mine.store(UNBIND_COMPLETE, Ordering::Relaxed);
            if other.load(Ordering::Relaxed) != UNBIND_COMPLETE {
                return;
            }
            // (usersim keeps a plain reference here; only this thread can erase the
            // binding now, but a Rust reference cannot outlive the guard.)
            Arc::clone(b)
        };
        self.unbind_complete(&b);
    }

    /// usersim's `remove`: waits until the registration's count is 0, then erases it.
    fn remove<M: ?Sized>(&self, regs: RegsOf<'a, M>, h: RegistrationHandle) {
        let mut st = self.lock();
        let Some(r) = regs(&mut st).get(&h) else {
            invalid_handle()
        };
        if r.binding_count.load(Ordering::SeqCst) > 0 {
            st.waiters += 1;
            // In 10 s slices, as usersim (which asserts after each in debug builds).
            while regs(&mut st)
                .get(&h)
                .is_some_and(|r| r.binding_count.load(Ordering::SeqCst) > 0)
            {
                self.changed.wait(&mut st);
            }
            st.waiters -= 1;
        }
        if regs(&mut st).remove(&h).is_none() {
            invalid_handle();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Guid;
    use std::sync::Mutex;
    use std::sync::atomic::AtomicU32;

    const NPI: NpiId = NpiId::from_u128(0x5EED_0000_0000_0000_0000_0000_0000_0001);
    const OTHER_NPI: NpiId = NpiId::from_u128(0x5EED_0000_0000_0000_0000_0000_0000_0002);

    fn instance(npi: NpiId, module: u128) -> Instance {
        Instance {
            npi,
            module: ModuleId::Guid(Guid::from_u128(module)),
            number: 0,
        }
    }

    /// Counts every callback; the client's detach pends when `pend` is set.
    #[derive(Default)]
    struct Counting {
        attaches: AtomicU32,
        detaches: AtomicU32,
        cleanups: AtomicU32,
        pend: AtomicBool,
        /// Binding handles whose detach pended.
        pended: Mutex<Vec<BindingHandle>>,
    }

    impl Counting {
        fn detach(&self, context: usize) -> Detach {
            self.detaches.fetch_add(1, Ordering::SeqCst);
            if self.pend.load(Ordering::SeqCst) {
                self.pended.lock().unwrap().push(context);
                Detach::Pending
            } else {
                Detach::Done
            }
        }
    }

    impl ClientModule for Counting {
        fn attach_provider(&self, attach: &Attach<'_, '_>, _: usize, _: &Instance) -> Status {
            // The binding handle as the client's context, as msquic does.
            match attach.client_attach_provider(attach.handle(), 1) {
                Ok(_) => {
                    self.attaches.fetch_add(1, Ordering::SeqCst);
                    Status::SUCCESS
                }
                Err(s) => s,
            }
        }
        fn detach_provider(&self, context: usize) -> Detach {
            self.detach(context)
        }
        fn cleanup_binding_context(&self, _: usize) {
            self.cleanups.fetch_add(1, Ordering::SeqCst);
        }
    }

    impl ProviderModule for Counting {
        fn attach_client(
            &self,
            binding: BindingHandle,
            _: usize,
            _: &Instance,
            client_context: usize,
            _: usize,
        ) -> Result<(usize, usize), Status> {
            assert_eq!(
                client_context, binding,
                "the client's context reaches the provider"
            );
            self.attaches.fetch_add(1, Ordering::SeqCst);
            Ok((binding, 2))
        }
        fn detach_client(&self, context: usize) -> Detach {
            self.detach(context)
        }
        fn cleanup_binding_context(&self, _: usize) {
            self.cleanups.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn totals(modules: &[&Counting]) -> (u32, u32, u32) {
        modules.iter().fold((0, 0, 0), |(a, d, c), m| {
            (
                a + m.attaches.load(Ordering::SeqCst),
                d + m.detaches.load(Ordering::SeqCst),
                c + m.cleanups.load(Ordering::SeqCst),
            )
        })
    }

    #[test]
    fn client_against_three_providers_attaches_detaches_and_cleans_up_each_binding() {
        let client = Counting::default();
        let providers: Vec<Counting> = (0..3).map(|_| Counting::default()).collect();
        let stranger = Counting::default();
        let nmr = Nmr::new();
        let ph: Vec<_> = providers
            .iter()
            .enumerate()
            .map(|(i, p)| nmr.register_provider(instance(NPI, 10 + i as u128), p, 0))
            .collect();
        // A provider of another NPI binds with nobody.
        let sh = nmr.register_provider(instance(OTHER_NPI, 20), &stranger, 0);
        let ch = nmr.register_client(instance(NPI, 1), &client, 0);
        assert_eq!(nmr.counts(), (1, 4, 3));
        assert_eq!(client.attaches.load(Ordering::SeqCst), 3);
        let all: Vec<&Counting> = std::iter::once(&client).chain(&providers).collect();
        // 3 client attaches + 3 provider attaches.
        assert_eq!(totals(&all), (6, 0, 0));

        assert_eq!(nmr.deregister_client(ch), Deregistered::Done);
        // Each binding: both detaches, both cleanups.
        assert_eq!(totals(&all), (6, 6, 6));
        assert_eq!(client.detaches.load(Ordering::SeqCst), 3);
        assert_eq!(client.cleanups.load(Ordering::SeqCst), 3);
        assert_eq!(totals(&[&stranger]), (0, 0, 0));
        assert_eq!(nmr.counts(), (0, 4, 0));
        for h in ph.into_iter().chain([sh]) {
            assert_eq!(nmr.deregister_provider(h), Deregistered::Done);
        }
        assert_eq!(nmr.counts(), (0, 0, 0));
    }

    #[test]
    fn wait_returns_only_after_the_pending_detaches_completed_and_cleanups_ran() {
        let client = Counting::default();
        client.pend.store(true, Ordering::SeqCst);
        let providers: Vec<Counting> = (0..3).map(|_| Counting::default()).collect();
        let nmr = Nmr::new();
        let ph: Vec<_> = providers
            .iter()
            .enumerate()
            .map(|(i, p)| nmr.register_provider(instance(NPI, 10 + i as u128), p, 0))
            .collect();
        let ch = nmr.register_client(instance(NPI, 1), &client, 0);
        assert_eq!(nmr.deregister_client(ch), Deregistered::Pending);
        let all: Vec<&Counting> = std::iter::once(&client).chain(&providers).collect();
        // Both detaches ran, even though the client's pended; no cleanup yet.
        assert_eq!(totals(&all), (6, 6, 0));
        let pended = std::mem::take(&mut *client.pended.lock().unwrap());
        assert_eq!(pended.len(), 3);
        let completed = AtomicU32::new(0);
        std::thread::scope(|s| {
            s.spawn(|| {
                for b in pended {
                    std::thread::yield_now();
                    completed.fetch_add(1, Ordering::SeqCst);
                    nmr.client_detach_complete(b);
                }
            });
            nmr.wait_for_client_deregister_complete(ch);
            // Every completion has happened, and with it every cleanup.
            assert_eq!(completed.load(Ordering::SeqCst), 3);
            assert_eq!(totals(&all), (6, 6, 6));
        });
        assert_eq!(nmr.counts(), (0, 3, 0));
        for h in ph {
            assert_eq!(nmr.deregister_provider(h), Deregistered::Done);
        }
        assert_eq!(nmr.counts(), (0, 0, 0));
    }

    #[test]
    fn a_failed_attach_cleans_up_and_leaves_no_binding() {
        struct Refuses;
        impl ProviderModule for Refuses {
            fn attach_client(
                &self,
                _: BindingHandle,
                _: usize,
                _: &Instance,
                _: usize,
                _: usize,
            ) -> Result<(usize, usize), Status> {
                Err(Status::NOINTERFACE)
            }
            fn detach_client(&self, _: usize) -> Detach {
                unreachable!("never attached")
            }
            fn cleanup_binding_context(&self, _: usize) {
                unreachable!("its context stayed NULL")
            }
        }
        let client = Counting::default();
        let nmr = Nmr::new();
        let p = nmr.register_provider(instance(NPI, 2), &Refuses, 0);
        let c = nmr.register_client(instance(NPI, 1), &client, 0);
        // usersim's deviation: the client's context was stored, so its cleanup runs.
        assert_eq!(totals(&[&client]), (0, 0, 1));
        assert_eq!(nmr.counts(), (1, 1, 0));
        assert_eq!(nmr.deregister_client(c), Deregistered::Done);
        assert_eq!(nmr.deregister_provider(p), Deregistered::Done);
        assert_eq!(nmr.counts(), (0, 0, 0));
    }

    #[test]
    fn two_threads_registering_and_deregistering_leave_nothing_registered() {
        let client = Counting::default();
        let provider = Counting::default();
        let nmr = Nmr::new();
        std::thread::scope(|s| {
            s.spawn(|| {
                for _ in 0..2000 {
                    let h = nmr.register_client(instance(NPI, 1), &client, 0);
                    if nmr.deregister_client(h) == Deregistered::Pending {
                        nmr.wait_for_client_deregister_complete(h);
                    }
                }
            });
            s.spawn(|| {
                for _ in 0..2000 {
                    let h = nmr.register_provider(instance(NPI, 2), &provider, 0);
                    if nmr.deregister_provider(h) == Deregistered::Pending {
                        nmr.wait_for_provider_deregister_complete(h);
                    }
                }
            });
        });
        assert_eq!(nmr.counts(), (0, 0, 0));
        let (a, d, c) = totals(&[&client, &provider]);
        // Every binding that formed was attached on both sides, then detached and cleaned
        // up on both sides exactly once.
        assert_eq!(a % 2, 0);
        assert_eq!((d, c), (a, a));
    }

    #[test]
    #[should_panic(expected = "invalid handle")]
    fn waiting_after_a_deregistration_that_completed_is_an_invalid_handle() {
        let nmr = Nmr::new();
        let c = Counting::default();
        let h = nmr.register_client(instance(NPI, 1), &c, 0);
        assert_eq!(nmr.deregister_client(h), Deregistered::Done);
        nmr.wait_for_client_deregister_complete(h);
    }
}
