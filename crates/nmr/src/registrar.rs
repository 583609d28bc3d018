//! The registrar: registrations, pairing, and the driver of the binding state machine.
//!
//! All bookkeeping lives in one [`Registry`] behind one lock ([`RegistryLock`], whose
//! release is a plain store). Every public call decides under the lock, releases it, and
//! only then calls module callbacks, so callbacks may re-enter the registrar (attach from
//! inside `ClientAttachProvider`, complete from inside a detach, register or deregister
//! other modules) without deadlock. All callbacks run on the calling thread: attach inside
//! register, detach inside deregister (or register, for a late-comer), cleanup inside
//! whichever call finishes the binding.
//!
//! A pair lifecycle (register a client against one provider, deregister, wait) takes the
//! lock five times: the registration (which also starts the first attach), the attach's end
//! (which starts the next), the deregistration, both detach answers (with the cleanups run
//! first when both answered done, see [`BindingMachine::detached_and_cleaned_up`]), and the
//! wait.

use crate::binding::{
    AttachOutcome, AttachProgress, BindingMachine, BindingState, DetachRequest, Next, Side,
};
use crate::frames;
use crate::handle::{self, BindingHandle, Kind, RegistrationHandle, Slab, SlotId};
use crate::lock::RegistryLock;
use crate::npis::NpiIndex;
use crate::reuse;
use crate::sync::{self, Arc, Condvar, Mutex};
use crate::{Error, ModuleId, NpiId, Status};
use std::any::Any;
use std::cell::RefCell;
use std::ffi::c_void;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};

/// An opaque pointer-sized value (a binding context, a dispatch table, a C structure) that
/// the registrar stores and hands back but never dereferences.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Context(pub *mut c_void);

// SAFETY: the registrar never dereferences a `Context`; it is an opaque token that modules
// pass to each other, and modules are responsible for the thread safety of what it points to
// (exactly as with the C API).
unsafe impl Send for Context {}
// SAFETY: as above: no access through the pointer ever happens here.
unsafe impl Sync for Context {}

impl Context {
    /// The NULL context.
    pub const NULL: Context = Context(std::ptr::null_mut());

    /// Wraps a raw pointer.
    #[must_use]
    pub const fn from_ptr<T>(p: *const T) -> Context {
        Context(p.cast::<c_void>().cast_mut())
    }

    /// The raw pointer.
    #[must_use]
    pub const fn as_ptr(self) -> *mut c_void {
        self.0
    }

    /// Is this NULL?
    #[must_use]
    pub fn is_null(self) -> bool {
        self.0.is_null()
    }
}

impl Default for Context {
    fn default() -> Self {
        Context::NULL
    }
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Context({:p})", self.0)
    }
}

/// What a registration tells its peers (`NPI_REGISTRATION_INSTANCE`). Only `npi_id` is
/// interpreted by the registrar.
#[derive(Clone)]
pub struct RegistrationInstance {
    /// The NPI this registration is for.
    pub npi_id: NpiId,
    /// The module's id.
    pub module_id: ModuleId,
    /// Which implementation of the NPI (0 if only one exists).
    pub number: u32,
    /// NPI-specific characteristics, for the typed layer.
    pub characteristics: Option<Arc<dyn Any + Send + Sync>>,
    /// For the C ABI: the caller's `NPI_REGISTRATION_INSTANCE`, handed to peers as-is.
    pub raw: Context,
    /// A human-readable module name for logs, snapshots and timelines.
    pub name: Option<Arc<str>>,
}

impl RegistrationInstance {
    /// An instance with no characteristics, no raw pointer and no name.
    #[must_use]
    pub fn new(npi_id: NpiId, module_id: ModuleId, number: u32) -> Self {
        RegistrationInstance {
            npi_id,
            module_id,
            number,
            characteristics: None,
            raw: Context::NULL,
            name: None,
        }
    }

    /// Sets the module name.
    #[must_use]
    pub fn with_name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Sets the raw C pointer.
    #[must_use]
    pub const fn with_raw(mut self, raw: Context) -> Self {
        self.raw = raw;
        self
    }

    /// Sets the NPI-specific characteristics.
    #[must_use]
    pub fn with_characteristics(mut self, c: Arc<dyn Any + Send + Sync>) -> Self {
        self.characteristics = Some(c);
        self
    }

    /// The name for logs: the given name, or the module id.
    #[must_use]
    pub fn display_name(&self) -> String {
        self.name
            .as_deref()
            .map_or_else(|| self.module_id.to_string(), str::to_owned)
    }
}

impl fmt::Debug for RegistrationInstance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistrationInstance")
            .field("npi_id", &self.npi_id)
            .field("module_id", &self.module_id)
            .field("number", &self.number)
            .field("has_characteristics", &self.characteristics.is_some())
            .field("raw", &self.raw)
            .field("name", &self.name)
            .finish()
    }
}

/// A detach callback's answer.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum DetachStatus {
    /// `STATUS_SUCCESS`: no calls into the peer are in flight.
    Done,
    /// `STATUS_PENDING`: the matching `*DetachComplete` follows.
    Pending,
}

/// What the provider hands back from its attach: its binding context and dispatch table.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct ProviderAttachment {
    /// The provider's binding context (`*ProviderBindingContext`).
    pub binding_context: Context,
    /// The provider's dispatch table (`*ProviderDispatch`).
    pub dispatch: Context,
}

/// A client module's callbacks (untyped; the C ABI implements these).
pub trait ClientCallbacks: Send + Sync + 'static {
    /// `ClientAttachProvider`: decide whether to attach to `provider`. To accept, call
    /// [`Registrar::client_attach_provider`] with `binding` and return its status.
    fn attach_provider(&self, binding: BindingHandle, provider: &RegistrationInstance) -> Status;
    /// `ClientDetachProvider`.
    fn detach_provider(&self, client_binding_context: Context) -> DetachStatus;
    /// `ClientCleanupBindingContext`.
    fn cleanup_binding_context(&self, client_binding_context: Context) {
        let _ = client_binding_context;
    }
}

/// A provider module's callbacks (untyped; the C ABI implements these).
pub trait ProviderCallbacks: Send + Sync + 'static {
    /// `ProviderAttachClient`, nested inside the client's [`Registrar::client_attach_provider`].
    ///
    /// # Errors
    /// The status to decline with (normally `STATUS_NOINTERFACE`); it reaches the client as-is.
    fn attach_client(
        &self,
        binding: BindingHandle,
        client: &RegistrationInstance,
        client_binding_context: Context,
        client_dispatch: Context,
    ) -> Result<ProviderAttachment, Status>;
    /// `ProviderDetachClient`.
    fn detach_client(&self, provider_binding_context: Context) -> DetachStatus;
    /// `ProviderCleanupBindingContext`.
    fn cleanup_binding_context(&self, provider_binding_context: Context) {
        let _ = provider_binding_context;
    }
}

/// Client or provider.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum Role {
    /// A client registration.
    Client,
    /// A provider registration.
    Provider,
}

impl Role {
    const fn kind(self) -> Kind {
        match self {
            Role::Client => Kind::Client,
            Role::Provider => Kind::Provider,
        }
    }
}

/// The state of a registration (spec §4.1).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum RegistrationState {
    /// Registered; pairs with peers.
    Active,
    /// Deregistration started; bindings are detaching.
    Deregistering,
    /// Every binding is gone; wait returns at once.
    DeregisterComplete,
}

/// How a registration holds its module's callbacks: shared or owned, and released by the
/// wait that ends the registration, or `'static`, as a C module's characteristics and
/// dispatch tables usually are. Owned and `'static` callbacks change no reference count:
/// on this machine class each of those atomic read-modify-writes costs 5–10 ns, two per
/// registration for a shared module registered with a clone of its `Arc`.
///
/// Registration takes anything that converts: an `Arc` or a `Box` of a callbacks type or of
/// the trait object, or a `'static` reference to either.
///
/// ```
/// # use nmr::{ClientCallbacks, ClientModule, BindingHandle, Context, DetachStatus, RegistrationInstance, Status};
/// # use std::sync::Arc;
/// struct Declines;
/// impl ClientCallbacks for Declines {
///     fn attach_provider(&self, _: BindingHandle, _: &RegistrationInstance) -> Status {
///         Status::NOINTERFACE
///     }
///     fn detach_provider(&self, _: Context) -> DetachStatus {
///         DetachStatus::Done
///     }
/// }
/// static DECLINES: Declines = Declines;
/// let shared: ClientModule = Arc::new(Declines).into();
/// let owned: ClientModule = Box::new(Declines).into();
/// let fixed: ClientModule = (&DECLINES).into();
/// assert!(!shared.is_static() && !owned.is_static() && fixed.is_static());
/// ```
pub enum Module<T: ?Sized + 'static> {
    /// Shared with the module; the registrar's reference is dropped at the wait.
    Shared(Arc<T>),
    /// The registration's own; dropped at the wait.
    Owned(Box<T>),
    /// Lives for the whole process.
    Static(&'static T),
}

/// A client module's callbacks as a registration holds them.
pub type ClientModule = Module<dyn ClientCallbacks>;
/// A provider module's callbacks as a registration holds them.
pub type ProviderModule = Module<dyn ProviderCallbacks>;

impl<T: ?Sized + 'static> Module<T> {
    /// The callbacks.
    #[must_use]
    pub fn get(&self) -> &T {
        match self {
            Module::Shared(a) => a,
            Module::Owned(b) => b,
            Module::Static(r) => r,
        }
    }

    /// Whether the callbacks are `'static` (no reference count).
    #[must_use]
    pub const fn is_static(&self) -> bool {
        matches!(self, Module::Static(_))
    }
}

impl<T: ?Sized + 'static> fmt::Debug for Module<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (how, at) = match self {
            Module::Shared(a) => ("Shared", Arc::as_ptr(a).cast::<()>()),
            Module::Owned(b) => ("Owned", std::ptr::from_ref(&**b).cast::<()>()),
            Module::Static(r) => ("Static", std::ptr::from_ref(*r).cast::<()>()),
        };
        write!(f, "Module::{how}({at:p})")
    }
}

impl<T: ?Sized + 'static> From<Arc<T>> for Module<T> {
    fn from(a: Arc<T>) -> Self {
        Module::Shared(a)
    }
}

impl<T: ?Sized + 'static> From<Box<T>> for Module<T> {
    fn from(b: Box<T>) -> Self {
        Module::Owned(b)
    }
}

impl<T: ?Sized + 'static> From<&'static T> for Module<T> {
    fn from(r: &'static T) -> Self {
        Module::Static(r)
    }
}

/// Conversions from a concrete callbacks type to the trait object a registration holds.
macro_rules! module_from {
    ($tr:ident) => {
        impl<T: $tr> From<Arc<T>> for Module<dyn $tr> {
            fn from(a: Arc<T>) -> Self {
                Module::Shared(a)
            }
        }

        impl<T: $tr> From<Box<T>> for Module<dyn $tr> {
            fn from(b: Box<T>) -> Self {
                Module::Owned(b)
            }
        }

        impl<T: $tr> From<&'static T> for Module<dyn $tr> {
            fn from(r: &'static T) -> Self {
                Module::Static(r)
            }
        }
    };
}

module_from!(ClientCallbacks);
module_from!(ProviderCallbacks);

enum Callbacks {
    Client(ClientModule),
    Provider(ProviderModule),
}

impl Callbacks {
    /// Borrows a client registration's callbacks past the lock (see [`live`]).
    fn client(&self) -> Live<dyn ClientCallbacks> {
        match self {
            Callbacks::Client(c) => Live::of(c.get()),
            Callbacks::Provider(_) => unreachable!("a binding's client is a client registration"),
        }
    }

    /// Borrows a provider registration's callbacks past the lock (see [`live`]).
    fn provider(&self) -> Live<dyn ProviderCallbacks> {
        match self {
            Callbacks::Provider(p) => Live::of(p.get()),
            Callbacks::Client(_) => {
                unreachable!("a binding's provider is a provider registration")
            }
        }
    }
}

/// One side's detach and cleanup callbacks, whichever side it is.
trait SideCallbacks {
    /// Which side these are.
    const SIDE: Side;
    /// `ClientDetachProvider` or `ProviderDetachClient`.
    fn detach(&self, ctx: Context) -> DetachStatus;
    /// The side's `*CleanupBindingContext`.
    fn cleanup(&self, ctx: Context);
}

impl SideCallbacks for dyn ClientCallbacks {
    const SIDE: Side = Side::Client;
    fn detach(&self, ctx: Context) -> DetachStatus {
        self.detach_provider(ctx)
    }
    fn cleanup(&self, ctx: Context) {
        self.cleanup_binding_context(ctx);
    }
}

impl SideCallbacks for dyn ProviderCallbacks {
    const SIDE: Side = Side::Provider;
    fn detach(&self, ctx: Context) -> DetachStatus {
        self.detach_client(ctx)
    }
    fn cleanup(&self, ctx: Context) {
        self.cleanup_binding_context(ctx);
    }
}

#[cfg(not(loom))]
sync::thread_local! {
    /// The bindings a registration formed (see [`reuse::take`]).
    static NEW_BINDINGS: std::cell::Cell<Vec<u32>> = const { std::cell::Cell::new(Vec::new()) };
    /// The detaches a deregistration runs (see [`reuse::take`]).
    static TO_DETACH: std::cell::Cell<Vec<(u32, SideCalls)>> = const { std::cell::Cell::new(Vec::new()) };
}
#[cfg(loom)]
sync::thread_local! {
    static NEW_BINDINGS: std::cell::Cell<Vec<u32>> = std::cell::Cell::new(Vec::new());
    static TO_DETACH: std::cell::Cell<Vec<(u32, SideCalls)>> = std::cell::Cell::new(Vec::new());
}

/// One side's detach or cleanup call: its registration handle, callbacks and context.
struct SideCall<C: ?Sized> {
    reg: u64,
    cb: Live<C>,
    ctx: Context,
}

impl<C: ?Sized> Clone for SideCall<C> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<C: ?Sized> Copy for SideCall<C> {}

/// Both sides' calls of one binding, and the binding's handle.
struct SideCalls {
    binding: BindingHandle,
    client: SideCall<dyn ClientCallbacks>,
    provider: SideCall<dyn ProviderCallbacks>,
}

mod live {
    //! Borrowing what a registration owns past the registry lock, without an `Arc` clone
    //! (two atomic read-modify-writes) per callback.
    //!
    //! A registration's callbacks and instance sit behind an `Arc` (or a `'static`
    //! reference) and a `Box` set once at registration and dropped only when `wait` removes
    //! the registration, which it does only
    //! once the registration has no binding left. A binding leaves its registrations' lists
    //! only after its last callback returned (discarded after the attach, or retired after
    //! both cleanups). So while a callback for a binding runs, both registrations of that
    //! binding, and what their `Arc` and `Box` point to, stay alive, even with the lock
    //! released.
    use std::ptr::NonNull;

    /// A pointer to the contents of an `Arc` or `Box` held by a registration of a live
    /// binding.
    pub(super) struct Live<T: ?Sized>(NonNull<T>);

    impl<T: ?Sized> Clone for Live<T> {
        fn clone(&self) -> Self {
            *self
        }
    }

    impl<T: ?Sized> Copy for Live<T> {}

    impl<T: ?Sized> Live<T> {
        /// Points at `r`: the contents of an `Arc` or a `Box` a registration holds (they do
        /// not move while it lives), or a `'static`.
        pub(super) fn of(r: &T) -> Self {
            Live(NonNull::from(r))
        }

        /// The pointee.
        ///
        /// # Safety
        /// What this points into is still held by its registration: the caller runs a
        /// callback of a binding that has not left its registrations' lists (module docs).
        pub(super) unsafe fn get(&self) -> &T {
            // SAFETY: per the contract, the registration still holds the `Arc` or `Box`, so its
            // contents are alive and only shared references to them exist.
            unsafe { self.0.as_ref() }
        }
    }
}
use live::Live;

struct Reg {
    role: Role,
    /// Boxed: attach callbacks borrow it past the lock (see [`live`]).
    instance: Box<RegistrationInstance>,
    callbacks: Callbacks,
    deregistering: bool,
    /// Live bindings (attaching through cleaning up): how many, and the first and last of
    /// the list threaded through them ([`Bind::links`]), oldest first.
    bindings: u32,
    first: u32,
    last: u32,
    /// Its NPI's slot in the NPI index, and its position in the slot's list while active.
    npi_slot: u32,
    npi_pos: usize,
    waiters: u32,
}

/// The end of a registration's list of bindings.
const NONE: u32 = u32::MAX;

/// A binding's neighbours in one registration's list of bindings (slab indexes or [`NONE`]).
#[derive(Clone, Copy)]
struct Link {
    prev: u32,
    next: u32,
}

/// Which of a binding's [`Bind::links`] a registration of this role uses.
const fn side_of(role: Role) -> usize {
    match role {
        Role::Client => 0,
        Role::Provider => 1,
    }
}

struct Bind {
    machine: BindingMachine,
    client: u32,
    provider: u32,
    /// Its place in the client's list (`[0]`) and in the provider's (`[1]`).
    links: [Link; 2],
    client_context: Context,
    client_dispatch: Context,
    provider_context: Context,
    provider_dispatch: Context,
}

struct Registry {
    regs: Slab<Reg>,
    bindings: Slab<Bind>,
    npis: NpiIndex,
}

/// What linking a binding into its registrations' lists touches: the registrations' and the
/// bindings' slabs (borrowed apart from the NPI index, which registration iterates meanwhile).
struct Lists<'a> {
    regs: &'a mut Slab<Reg>,
    bindings: &'a mut Slab<Bind>,
}

impl Registry {
    /// The slabs the binding lists live in.
    fn lists(&mut self) -> Lists<'_> {
        Lists {
            regs: &mut self.regs,
            bindings: &mut self.bindings,
        }
    }
}

impl Lists<'_> {
    /// Appends binding `b` to the list of registration `reg`, whose role uses the binding's
    /// link `side`.
    fn link(&mut self, reg: u32, side: usize, b: u32) {
        let r = self.regs.at_mut(reg);
        let last = r.last;
        r.last = b;
        if last == NONE {
            r.first = b;
        }
        r.bindings += 1;
        self.bindings.at_mut(b).links[side] = Link {
            prev: last,
            next: NONE,
        };
        if last != NONE {
            self.bindings.at_mut(last).links[side].next = b;
        }
    }

    /// Takes a binding whose link `side` was `link` out of registration `reg`'s list (the
    /// binding itself may be gone from the slab already).
    fn unlink(&mut self, reg: u32, side: usize, link: Link) {
        let Link { prev, next } = link;
        if prev != NONE {
            self.bindings.at_mut(prev).links[side].next = next;
        }
        if next != NONE {
            self.bindings.at_mut(next).links[side].prev = prev;
        }
        let r = self.regs.at_mut(reg);
        if prev == NONE {
            r.first = next;
        }
        if next == NONE {
            r.last = prev;
        }
        r.bindings -= 1;
    }
}

struct Inner {
    registry: RegistryLock<Registry>,
    /// How many times a deregistering registration with waiters drained (incremented with
    /// the registry lock held); waiters sleep on `drained` until it moves.
    drains: Mutex<u64>,
    drained: Condvar,
}

/// The Network Module Registrar.
///
/// Cheap to clone (all clones share one registry). [`Registrar::global`] is the process-wide
/// instance the C ABI uses; tests and embedders can make private ones with [`Registrar::new`].
///
/// ```
/// use nmr::{Registrar, RegistrationInstance, NpiId, ModuleId, Guid};
/// # use nmr::{ClientCallbacks, BindingHandle, Status, DetachStatus, Context};
/// # use std::sync::Arc;
/// # struct NoProvider;
/// # impl ClientCallbacks for NoProvider {
/// #     fn attach_provider(&self, _: BindingHandle, _: &RegistrationInstance) -> Status { Status::NOINTERFACE }
/// #     fn detach_provider(&self, _: Context) -> DetachStatus { DetachStatus::Done }
/// # }
/// let nmr = Registrar::new();
/// let npi = NpiId::from_u128(0x1234);
/// let h = nmr.register_client(
///     RegistrationInstance::new(npi, ModuleId::Guid(Guid::from_u128(1)), 0),
///     Arc::new(NoProvider),
///     |_| {},
/// )?;
/// nmr.deregister_client(h)?; // always "pending"
/// nmr.wait_for_client_deregister_complete(h)?;
/// # Ok::<(), nmr::Error>(())
/// ```
#[derive(Clone)]
pub struct Registrar {
    inner: Arc<Inner>,
}

impl fmt::Debug for Registrar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = self.inner.registry.lock();
        f.debug_struct("Registrar")
            .field("registrations", &r.regs.len())
            .field("bindings", &r.bindings.len())
            .finish()
    }
}

impl Default for Registrar {
    fn default() -> Self {
        Self::new()
    }
}

/// An attach running on this thread: what `NmrClientAttachProvider` needs, linked (see
/// [`frames`]) with the client's `ClientAttachProvider` running on this thread, so the
/// nested provider attach takes no lock. Only that thread can act on the attach; other
/// threads can only request its detach, which the binding machine records under the lock.
pub(crate) struct AttachFrame {
    provider_reg: u64,
    provider_cb: Live<dyn ProviderCallbacks>,
    client_instance: Live<RegistrationInstance>,
    progress: AttachProgress,
    client_context: Context,
    client_dispatch: Context,
    provider_context: Context,
    provider_dispatch: Context,
}

/// What the client's attach callback of one binding needs, read under the lock by
/// [`Registrar::begin_attach_locked`].
struct AttachStart {
    b: u32,
    binding: BindingHandle,
    client_reg: u64,
    client_cb: Live<dyn ClientCallbacks>,
    provider_instance: Live<RegistrationInstance>,
    provider_reg: u64,
    provider_cb: Live<dyn ProviderCallbacks>,
    client_instance: Live<RegistrationInstance>,
}

/// Runs a module callback of registration `reg` linked into this thread's running callbacks
/// ([`frames`]), catching panics so a misbehaving module cannot leave the registrar
/// half-updated.
fn invoke<R>(
    registrar: &Registrar,
    reg: u64,
    what: &'static str,
    f: impl FnOnce() -> R,
) -> Option<R> {
    invoke_attach(registrar, reg, None, what, f)
}

/// [`invoke`], for a `ClientAttachProvider` whose attach state is `attach`.
fn invoke_attach<R>(
    registrar: &Registrar,
    reg: u64,
    attach: Option<(BindingHandle, &RefCell<AttachFrame>)>,
    what: &'static str,
    f: impl FnOnce() -> R,
) -> Option<R> {
    match frames::run(reg, registrar, attach, || catch_unwind(AssertUnwindSafe(f))) {
        Ok(v) => Some(v),
        Err(_) => {
            tracing::error!(target: "nmr", callback = what, "module callback panicked; treated as failure/done");
            None
        }
    }
}

impl Registrar {
    /// A new, empty registrar.
    #[must_use]
    pub fn new() -> Self {
        Registrar {
            inner: Arc::new(Inner {
                registry: RegistryLock::new(Registry {
                    regs: Slab::new(),
                    bindings: Slab::new(),
                    npis: NpiIndex::default(),
                }),
                drains: Mutex::new(0),
                drained: Condvar::new(),
            }),
        }
    }

    /// The process-wide registrar (the one `libnetio` uses).
    #[cfg(not(loom))]
    #[must_use]
    pub fn global() -> &'static Registrar {
        static GLOBAL: std::sync::OnceLock<Registrar> = std::sync::OnceLock::new();
        GLOBAL.get_or_init(Registrar::new)
    }

    /// Registers a client (`NmrRegisterClient`). `publish` receives the handle before any
    /// attach callback runs; then `ClientAttachProvider` runs on this thread once for each
    /// registered provider of the same NPI.
    ///
    /// # Errors
    /// [`Error::InsufficientResources`] when the handle space is exhausted.
    pub fn register_client(
        &self,
        instance: RegistrationInstance,
        callbacks: impl Into<ClientModule>,
        publish: impl FnOnce(RegistrationHandle),
    ) -> Result<RegistrationHandle, Error> {
        self.register(
            Role::Client,
            instance,
            Callbacks::Client(callbacks.into()),
            publish,
        )
    }

    /// Registers a provider (`NmrRegisterProvider`). `publish` receives the handle before any
    /// attach callback runs; then each registered client of the same NPI gets its
    /// `ClientAttachProvider` on this thread.
    ///
    /// # Errors
    /// [`Error::InsufficientResources`] when the handle space is exhausted.
    pub fn register_provider(
        &self,
        instance: RegistrationInstance,
        callbacks: impl Into<ProviderModule>,
        publish: impl FnOnce(RegistrationHandle),
    ) -> Result<RegistrationHandle, Error> {
        self.register(
            Role::Provider,
            instance,
            Callbacks::Provider(callbacks.into()),
            publish,
        )
    }

    fn register(
        &self,
        role: Role,
        instance: RegistrationInstance,
        callbacks: Callbacks,
        publish: impl FnOnce(RegistrationHandle),
    ) -> Result<RegistrationHandle, Error> {
        let npi = instance.npi_id;
        // What the register event shows, kept aside so the instance moves into the registry
        // without an `Arc` clone (no atomic at all for a module without a name).
        let (module_id, name) = (instance.module_id, instance.name.clone());
        let instance = reuse::boxed(instance);
        let mut new_bindings: smallvec::SmallVec<[u32; 4]> = smallvec::SmallVec::new();
        let mut started = 0;
        let (handle, first) = {
            let mut guard = self.inner.registry.lock();
            let r = &mut *guard;
            let npi_slot = r.npis.slot_for(npi);
            let entry = r.npis.entry(npi_slot);
            let npi_pos = entry.list(role).len();
            // Beyond the inline capacity, one allocation rather than a series of regrowths.
            let peers = entry.peers(role).len();
            if peers > new_bindings.inline_size() {
                new_bindings = smallvec::SmallVec::from_vec(reuse::take(&NEW_BINDINGS));
                new_bindings.reserve(peers);
            }
            let reg = Reg {
                role,
                instance,
                callbacks,
                deregistering: false,
                bindings: 0,
                first: NONE,
                last: NONE,
                npi_slot,
                npi_pos,
                waiters: 0,
            };
            let id = r.regs.insert(reg)?;
            entry.list(role).push(id.index);
            for &peer in entry.peers(role) {
                let (client, provider) = match role {
                    Role::Client => (id.index, peer),
                    Role::Provider => (peer, id.index),
                };
                let unlinked = Link {
                    prev: NONE,
                    next: NONE,
                };
                let b = r.bindings.insert(Bind {
                    machine: BindingMachine::new(),
                    client,
                    provider,
                    links: [unlinked; 2],
                    client_context: Context::NULL,
                    client_dispatch: Context::NULL,
                    provider_context: Context::NULL,
                    provider_dispatch: Context::NULL,
                });
                let b = match b {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::error!(target: "nmr", "binding slots exhausted: {e}");
                        break;
                    }
                };
                let mut lists = Lists {
                    regs: &mut r.regs,
                    bindings: &mut r.bindings,
                };
                lists.link(client, side_of(Role::Client), b.index);
                lists.link(provider, side_of(Role::Provider), b.index);
                new_bindings.push(b.index);
            }
            // The first attach starts in this same lock section.
            let first = self.begin_next_attach(r, &new_bindings, &mut started);
            (RegistrationHandle(handle::encode(role.kind(), id)), first)
        };
        tracing::debug!(target: "nmr::lifecycle", event = "register", ?role, registration = %handle,
            module = %name.as_deref().map_or_else(|| module_id.to_string(), str::to_owned), npi = %npi, peers = new_bindings.len());
        publish(handle);
        self.run_attaches(&new_bindings, &mut started, first);
        if new_bindings.spilled() {
            reuse::give_back(&NEW_BINDINGS, new_bindings.into_vec());
        }
        Ok(handle)
    }

    /// Is `other` a handle of this same registrar (handles are per registrar)?
    pub(crate) fn same_as(&self, other: &Registrar) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// Starts the attach of the next binding of `bindings` from `*next` on that has not been
    /// discarded meanwhile. Called with the lock held.
    #[inline]
    fn begin_next_attach(
        &self,
        r: &mut Registry,
        bindings: &[u32],
        next: &mut usize,
    ) -> Option<AttachStart> {
        while let Some(&b) = bindings.get(*next) {
            *next += 1;
            if let Some(start) = self.begin_attach_locked(r, b) {
                return Some(start);
            }
        }
        None
    }

    /// Marks binding `b` attaching and reads what its attach needs; `None` (and the binding
    /// retired) when a side began deregistering before the attach started (G2).
    fn begin_attach_locked(&self, r: &mut Registry, b: u32) -> Option<AttachStart> {
        let bind = r.bindings.at_mut(b);
        if !bind.machine.begin_attach() {
            tracing::debug!(target: "nmr::lifecycle", event = "attach-skipped",
                binding = %BindingHandle(handle::encode(Kind::Binding, r.bindings.id_of(b))),
                "a side began deregistering before the attach started");
            self.retire_binding(r, b);
            return None;
        }
        let (client, provider) = (bind.client, bind.provider);
        let (c, p) = (r.regs.at(client), r.regs.at(provider));
        Some(AttachStart {
            b,
            binding: BindingHandle(handle::encode(Kind::Binding, r.bindings.id_of(b))),
            client_reg: handle::encode(Kind::Client, r.regs.id_of(client)),
            client_cb: c.callbacks.client(),
            provider_instance: Live::of(&p.instance),
            provider_reg: handle::encode(Kind::Provider, r.regs.id_of(provider)),
            provider_cb: p.callbacks.provider(),
            client_instance: Live::of(&c.instance),
        })
    }

    /// Drives the attaches of `bindings`, one after the other: `first` has started; the end
    /// of each and the start of the next share one lock section.
    fn run_attaches(&self, bindings: &[u32], started: &mut usize, first: Option<AttachStart>) {
        let mut next = first;
        while let Some(start) = next.take() {
            let (status, frame) = self.call_client_attach(&start);
            let b = start.b;
            let outcome = {
                let mut guard = self.inner.registry.lock();
                let r = &mut *guard;
                let bind = r.bindings.at_mut(b);
                if frame.progress.provider_attached() {
                    bind.client_context = frame.client_context;
                    bind.client_dispatch = frame.client_dispatch;
                    bind.provider_context = frame.provider_context;
                    bind.provider_dispatch = frame.provider_dispatch;
                }
                let outcome = bind
                    .machine
                    .attach_returned(status == Status::SUCCESS, frame.progress);
                if outcome == AttachOutcome::Discarded {
                    self.retire_binding(r, b);
                }
                next = self.begin_next_attach(r, bindings, started);
                outcome
            };
            tracing::debug!(target: "nmr::lifecycle", event = "attach", binding = %start.binding,
                client = %RegistrationHandle(start.client_reg), provider = %RegistrationHandle(start.provider_reg),
                ?status, ?outcome);
            match outcome {
                AttachOutcome::Active | AttachOutcome::Discarded => {}
                AttachOutcome::DetachBoth => self.run_detach(b, true),
                AttachOutcome::DetachProvider => self.run_detach(b, false),
            }
        }
    }

    /// Calls the client's `ClientAttachProvider` for a started attach, with its frame linked
    /// for `NmrClientAttachProvider`; returns the status and the frame.
    fn call_client_attach(&self, start: &AttachStart) -> (Status, AttachFrame) {
        let frame = RefCell::new(AttachFrame {
            provider_reg: start.provider_reg,
            provider_cb: start.provider_cb,
            client_instance: start.client_instance,
            progress: AttachProgress::new(),
            client_context: Context::NULL,
            client_dispatch: Context::NULL,
            provider_context: Context::NULL,
            provider_dispatch: Context::NULL,
        });
        let (client_cb, provider_instance, binding) =
            (start.client_cb, start.provider_instance, start.binding);
        let attach = Some((binding, &frame));
        let status = invoke_attach(
            self,
            start.client_reg,
            attach,
            "ClientAttachProvider",
            || {
                // SAFETY: binding `b` is attaching: it stays in both registrations' lists until
                // the attach returns (see `live`).
                let client_cb = unsafe { client_cb.get() };
                // SAFETY: as above.
                let provider_instance = unsafe { provider_instance.get() };
                client_cb.attach_provider(binding, provider_instance)
            },
        )
        .unwrap_or(Status::INVALID_PARAMETER);
        (status, frame.into_inner())
    }

    /// `NmrClientAttachProvider`: called by a client from inside its `ClientAttachProvider`
    /// for `binding`; runs the provider's `ProviderAttachClient` nested, on this thread, and
    /// returns its result unchanged. May be called again after a failure (e.g. with another
    /// dispatch version).
    ///
    /// # Errors
    /// The provider's status when it declined; `STATUS_INVALID_PARAMETER` for a bad handle;
    /// `STATUS_INVALID_DEVICE_STATE` outside the attach callback or after a success.
    pub fn client_attach_provider(
        &self,
        binding: BindingHandle,
        client_binding_context: Context,
        client_dispatch: Context,
    ) -> Result<ProviderAttachment, Status> {
        Self::binding_id(binding).map_err(Error::status)?;
        // No lock: the attach in progress belongs to this thread (see `AttachFrame`).
        let begun = frames::with_attach(self, binding, |f| {
            f.progress.begin_provider_attach()?;
            f.client_context = client_binding_context;
            f.client_dispatch = client_dispatch;
            Ok((f.provider_reg, f.provider_cb, f.client_instance))
        });
        let (provider_reg, provider_cb, client_instance) = match begun {
            Some(Ok(v)) => v,
            Some(Err(e)) => return Err(Error::status(e)),
            None => return Err(self.not_attaching_here(binding).status()),
        };
        let result = invoke(self, provider_reg, "ProviderAttachClient", || {
            // SAFETY: this thread runs the client's attach of this binding (its frame is
            // linked), so the binding stays in both registrations' lists until we return
            // (see `live`).
            let provider_cb = unsafe { provider_cb.get() };
            // SAFETY: as above.
            let client_instance = unsafe { client_instance.get() };
            provider_cb.attach_client(
                binding,
                client_instance,
                client_binding_context,
                client_dispatch,
            )
        })
        .unwrap_or(Err(Status::INVALID_PARAMETER));
        frames::with_attach(self, binding, |f| {
            f.progress.provider_attach_returned(result.is_ok());
            if let Ok(a) = &result {
                f.provider_context = a.binding_context;
                f.provider_dispatch = a.dispatch;
            }
        });
        tracing::debug!(target: "nmr::lifecycle", event = "provider-attach", %binding, ok = result.is_ok());
        result
    }

    /// Why `NmrClientAttachProvider` for `binding` found no attach of it on this thread: a
    /// dead handle, or a live binding attached elsewhere or not attaching now.
    fn not_attaching_here(&self, binding: BindingHandle) -> Error {
        let guard = self.inner.registry.lock();
        match Self::binding_id(binding).map(|id| guard.bindings.get(id).is_some()) {
            Ok(true) => Error::NotAttaching,
            Ok(false) => Error::InvalidHandle,
            Err(e) => e,
        }
    }

    /// What the detach and cleanup callbacks of binding `b` need, read under the lock. The
    /// contexts are fixed once the binding is attached; the callbacks for good.
    #[inline]
    fn side_calls(r: &Registry, b: u32) -> SideCalls {
        let bind = r.bindings.at(b);
        let c = r.regs.at(bind.client);
        let p = r.regs.at(bind.provider);
        SideCalls {
            binding: BindingHandle(handle::encode(Kind::Binding, r.bindings.id_of(b))),
            client: SideCall {
                reg: handle::encode(Kind::Client, r.regs.id_of(bind.client)),
                cb: c.callbacks.client(),
                ctx: bind.client_context,
            },
            provider: SideCall {
                reg: handle::encode(Kind::Provider, r.regs.id_of(bind.provider)),
                cb: p.callbacks.provider(),
                ctx: bind.provider_context,
            },
        }
    }

    /// Calls the detach callbacks of a binding that just entered `Detaching` (`both`), or
    /// only the provider's (a client that failed after attaching).
    fn run_detach(&self, b: u32, both: bool) {
        let calls = Self::side_calls(&self.inner.registry.lock(), b);
        self.run_detach_with(b, both, &calls);
    }

    /// [`run_detach`](Self::run_detach) with the binding's [`side_calls`](Self::side_calls)
    /// already read. Until this records a side's answer, that side cannot finish detaching,
    /// so the binding stays live (and `calls` valid) throughout.
    ///
    /// Both sides are notified one after the other and their answers recorded in one lock
    /// section; when both answer done, the cleanups run first and the same section retires
    /// the binding (see [`BindingMachine::detached_and_cleaned_up`]).
    fn run_detach_with(&self, b: u32, both: bool, calls: &SideCalls) {
        if !both {
            let status = self.notify_detach(calls.provider, calls.binding);
            let next = self
                .inner
                .registry
                .lock()
                .bindings
                .at_mut(b)
                .machine
                .detach_returned(Side::Provider, status == DetachStatus::Pending);
            if next == Next::RunCleanups {
                self.run_cleanups_with(b, calls);
            }
            return;
        }
        let client = self.notify_detach(calls.client, calls.binding);
        let provider = self.notify_detach(calls.provider, calls.binding);
        if client == DetachStatus::Done && provider == DetachStatus::Done {
            self.call_cleanups(calls);
            let mut guard = self.inner.registry.lock();
            let r = &mut *guard;
            let gone = r.bindings.at_mut(b).machine.detached_and_cleaned_up();
            debug_assert!(
                gone,
                "another thread moved a binding whose sides were notifying"
            );
            self.retire_binding(r, b);
            return;
        }
        let next = {
            let mut guard = self.inner.registry.lock();
            let machine = &mut guard.bindings.at_mut(b).machine;
            let first = machine.detach_returned(Side::Client, client == DetachStatus::Pending);
            debug_assert_eq!(
                first,
                Next::Wait,
                "the provider's answer is not recorded yet"
            );
            machine.detach_returned(Side::Provider, provider == DetachStatus::Pending)
        };
        if next == Next::RunCleanups {
            self.run_cleanups_with(b, calls);
        }
    }

    /// Calls one side's detach callback of a binding whose answer for that side is not
    /// recorded yet (so the binding stays in its registrations' lists).
    #[inline]
    fn notify_detach<C: SideCallbacks + ?Sized>(
        &self,
        call: SideCall<C>,
        binding: BindingHandle,
    ) -> DetachStatus {
        let SideCall { reg, cb, ctx } = call;
        let side = C::SIDE;
        tracing::debug!(target: "nmr::lifecycle", event = "detach", %binding, ?side,
            registration = %RegistrationHandle(reg));
        // SAFETY: this side of the binding is being notified, so the binding cannot finish
        // detaching and stays in its registrations' lists (see `live`).
        let status = invoke(self, reg, "detach", || unsafe { cb.get() }.detach(ctx))
            .unwrap_or(DetachStatus::Done);
        tracing::debug!(target: "nmr::lifecycle", event = "detach-returned", %binding, ?side,
            registration = %RegistrationHandle(reg), ?status);
        status
    }

    fn run_cleanups(&self, b: u32) {
        let calls = Self::side_calls(&self.inner.registry.lock(), b);
        self.run_cleanups_with(b, &calls);
    }

    /// Runs both cleanups of binding `b`, which just entered `CleaningUp` (so only this
    /// thread touches it until it is retired below), and retires it.
    fn run_cleanups_with(&self, b: u32, calls: &SideCalls) {
        self.call_cleanups(calls);
        let mut guard = self.inner.registry.lock();
        let r = &mut *guard;
        let gone = r.bindings.at_mut(b).machine.cleanups_returned();
        debug_assert!(gone, "cleanups ran twice");
        self.retire_binding(r, b);
    }

    /// Calls both cleanup callbacks of a binding that only this thread may retire.
    #[inline]
    fn call_cleanups(&self, calls: &SideCalls) {
        let (c, p) = (calls.client, calls.provider);
        invoke(self, c.reg, "cleanup", || {
            // SAFETY: only the caller retires the binding, after this returns, so it stays
            // in its registrations' lists (see `live`).
            unsafe { c.cb.get() }.cleanup(c.ctx);
        });
        invoke(self, p.reg, "cleanup", || {
            // SAFETY: as above.
            unsafe { p.cb.get() }.cleanup(p.ctx);
        });
        tracing::debug!(target: "nmr::lifecycle", event = "cleanup", binding = %calls.binding,
            client = %RegistrationHandle(c.reg), provider = %RegistrationHandle(p.reg));
    }

    /// Removes a discarded or gone binding from both registrations and wakes waiters whose
    /// registration just drained. Called with the lock held.
    fn retire_binding(&self, r: &mut Registry, b: u32) {
        let bind = r.bindings.at(b);
        let (client, provider, links) = (bind.client, bind.provider, bind.links);
        r.bindings.remove_at(b);
        let mut wake = false;
        for (reg_index, role) in [(client, Role::Client), (provider, Role::Provider)] {
            let side = side_of(role);
            r.lists().unlink(reg_index, side, links[side]);
            let reg = r.regs.at(reg_index);
            if reg.deregistering && reg.bindings == 0 && reg.waiters > 0 {
                wake = true;
            }
        }
        if wake {
            *sync::lock(&self.inner.drains) += 1;
            self.inner.drained.notify_all();
        }
    }

    fn binding_id(h: BindingHandle) -> Result<SlotId, Error> {
        match handle::decode(h.0)? {
            (Kind::Binding, id) => Ok(id),
            (k, _) => Err(Error::WrongHandleKind {
                expected: Kind::Binding.name(),
                actual: k.name(),
            }),
        }
    }

    fn reg_id(r: &Registry, h: RegistrationHandle, role: Role) -> Result<SlotId, Error> {
        let (kind, id) = handle::decode(h.0)?;
        if kind != role.kind() {
            return Err(Error::WrongHandleKind {
                expected: role.kind().name(),
                actual: kind.name(),
            });
        }
        r.regs.get(id).ok_or(Error::InvalidHandle)?;
        Ok(id)
    }

    /// `NmrDeregisterClient`: starts deregistration. Success means `STATUS_PENDING`: call
    /// [`wait_for_client_deregister_complete`](Self::wait_for_client_deregister_complete).
    /// Detach callbacks of both sides of every active binding may run inside this call.
    ///
    /// # Errors
    /// Invalid, stale or wrong-kind handle; deregistering twice.
    pub fn deregister_client(&self, h: RegistrationHandle) -> Result<(), Error> {
        self.deregister(h, Role::Client)
    }

    /// `NmrDeregisterProvider`; see [`deregister_client`](Self::deregister_client).
    ///
    /// # Errors
    /// Invalid, stale or wrong-kind handle; deregistering twice.
    pub fn deregister_provider(&self, h: RegistrationHandle) -> Result<(), Error> {
        self.deregister(h, Role::Provider)
    }

    fn deregister(&self, h: RegistrationHandle, role: Role) -> Result<(), Error> {
        let mut to_detach: smallvec::SmallVec<[(u32, SideCalls); 2]> = smallvec::SmallVec::new();
        {
            let mut guard = self.inner.registry.lock();
            let r = &mut *guard;
            let id = Self::reg_id(r, h, role)?;
            let reg = r.regs.get_mut(id).ok_or(Error::InvalidHandle)?;
            if reg.deregistering {
                return Err(Error::AlreadyDeregistering);
            }
            reg.deregistering = true;
            let npi = reg.instance.npi_id;
            let (slot, pos) = (reg.npi_slot, reg.npi_pos);
            // Leave the NPI index: no new bindings form (G2).
            let list = r.npis.entry(slot).list(role);
            list.swap_remove(pos);
            if let Some(&moved) = list.get(pos) {
                r.regs.at_mut(moved).npi_pos = pos;
            }
            r.npis.release_if_empty(npi, slot);
            let reg = r.regs.at(id.index);
            let count = reg.bindings as usize;
            if count > to_detach.inline_size() {
                to_detach = smallvec::SmallVec::from_vec(reuse::take(&TO_DETACH));
                to_detach.reserve(count);
            }
            let side = side_of(role);
            let mut b = reg.first;
            while b != NONE {
                let bind = r.bindings.at_mut(b);
                let next = bind.links[side].next;
                if bind.machine.request_detach() == DetachRequest::NotifyBoth {
                    to_detach.push((b, Self::side_calls(r, b)));
                }
                b = next;
            }
        }
        tracing::debug!(target: "nmr::lifecycle", event = "deregister", registration = %h, ?role, detaching = to_detach.len());
        for (b, calls) in &to_detach {
            self.run_detach_with(*b, true, calls);
        }
        if to_detach.spilled() {
            reuse::give_back(&TO_DETACH, to_detach.into_vec());
        }
        Ok(())
    }

    /// `NmrWaitForClientDeregisterComplete`: blocks until every binding of the registration
    /// is gone and its cleanups returned (G7). Afterwards the handle is dead.
    ///
    /// # Errors
    /// Invalid, stale or wrong-kind handle; [`Error::NotDeregistering`] before deregistration;
    /// [`Error::WaitInsideCallback`] from inside one of this registration's own callbacks.
    pub fn wait_for_client_deregister_complete(&self, h: RegistrationHandle) -> Result<(), Error> {
        self.wait(h, Role::Client)
    }

    /// `NmrWaitForProviderDeregisterComplete`; see
    /// [`wait_for_client_deregister_complete`](Self::wait_for_client_deregister_complete).
    ///
    /// # Errors
    /// As for the client variant.
    pub fn wait_for_provider_deregister_complete(
        &self,
        h: RegistrationHandle,
    ) -> Result<(), Error> {
        self.wait(h, Role::Provider)
    }

    fn wait(&self, h: RegistrationHandle, role: Role) -> Result<(), Error> {
        let mut guard = self.inner.registry.lock();
        let id = Self::reg_id(&guard, h, role)?;
        let reg = guard.regs.get_mut(id).ok_or(Error::InvalidHandle)?;
        if !reg.deregistering {
            return Err(Error::NotDeregistering);
        }
        if reg.bindings != 0 {
            if frames::in_callback(h.0) {
                return Err(Error::WaitInsideCallback);
            }
            reg.waiters += 1;
            loop {
                // Read with the registry lock held: a drain after the check above moves it.
                let seen = *sync::lock(&self.inner.drains);
                drop(guard);
                let mut drains = sync::lock(&self.inner.drains);
                while *drains == seen {
                    drains = sync::wait(&self.inner.drained, drains);
                }
                drop(drains);
                guard = self.inner.registry.lock();
                if guard.regs.get(id).is_some_and(|r| r.bindings == 0) {
                    break;
                }
            }
            let reg = guard.regs.get_mut(id).ok_or(Error::InvalidHandle)?;
            reg.waiters -= 1;
            if reg.waiters > 0 {
                return Ok(());
            }
        }
        // Dropped after the lock: the last reference to a module's callbacks may run its
        // destructor (foreign code), and the frees need not hold up other threads.
        let owned = guard
            .regs
            .remove_map(id, |reg| (reg.instance, reg.callbacks));
        drop(guard);
        if let Some((instance, callbacks)) = owned {
            reuse::put(instance);
            drop(callbacks);
        }
        tracing::debug!(target: "nmr::lifecycle", event = "wait-complete", registration = %h, ?role);
        Ok(())
    }

    /// Non-blocking check for [`wait_for_client_deregister_complete`]-style waits: true
    /// when the registration is deregistering and every binding is gone.
    ///
    /// [`wait_for_client_deregister_complete`]: Self::wait_for_client_deregister_complete
    ///
    /// # Errors
    /// Invalid, stale or wrong-kind handle.
    pub fn is_deregister_complete(&self, h: RegistrationHandle) -> Result<bool, Error> {
        let guard = self.inner.registry.lock();
        let (kind, id) = handle::decode(h.0)?;
        if kind == Kind::Binding {
            return Err(Error::WrongHandleKind {
                expected: "registration",
                actual: kind.name(),
            });
        }
        let reg = guard.regs.get(id).ok_or(Error::InvalidHandle)?;
        Ok(reg.deregistering && reg.bindings == 0)
    }

    /// `NmrClientDetachProviderComplete`: the client finished detaching after its detach
    /// callback returned pending. Both cleanups may run inside this call.
    ///
    /// # Errors
    /// Invalid, stale or wrong-kind handle; [`Error::NoPendingDetach`] when the client's
    /// detach is not pending (completing twice, after answering done, or with no detach).
    pub fn client_detach_provider_complete(&self, binding: BindingHandle) -> Result<(), Error> {
        self.complete(binding, Side::Client)
    }

    /// `NmrProviderDetachClientComplete`; see
    /// [`client_detach_provider_complete`](Self::client_detach_provider_complete).
    ///
    /// # Errors
    /// As for the client variant.
    pub fn provider_detach_client_complete(&self, binding: BindingHandle) -> Result<(), Error> {
        self.complete(binding, Side::Provider)
    }

    fn complete(&self, binding: BindingHandle, side: Side) -> Result<(), Error> {
        let next = {
            let mut guard = self.inner.registry.lock();
            let id = Self::binding_id(binding)?;
            let bind = guard.bindings.get_mut(id).ok_or(Error::InvalidHandle)?;
            (bind.machine.complete(side)?, id.index)
        };
        tracing::debug!(target: "nmr::lifecycle", event = "detach-complete", %binding, ?side);
        if next.0 == Next::RunCleanups {
            self.run_cleanups(next.1);
        }
        Ok(())
    }

    /// A consistent picture of every registration and binding, for tools and tests.
    #[must_use]
    pub fn snapshot(&self) -> Snapshot {
        let guard = self.inner.registry.lock();
        let registrations = guard
            .regs
            .iter()
            .map(|(id, reg)| RegistrationSnapshot {
                handle: RegistrationHandle(handle::encode(reg.role.kind(), id)),
                role: reg.role,
                npi_id: reg.instance.npi_id,
                module_id: reg.instance.module_id,
                number: reg.instance.number,
                name: reg.instance.display_name(),
                state: match (reg.deregistering, reg.bindings == 0) {
                    (false, _) => RegistrationState::Active,
                    (true, false) => RegistrationState::Deregistering,
                    (true, true) => RegistrationState::DeregisterComplete,
                },
                bindings: reg.bindings as usize,
            })
            .collect();
        let bindings = guard
            .bindings
            .iter()
            .map(|(id, b)| BindingSnapshot {
                handle: BindingHandle(handle::encode(Kind::Binding, id)),
                client: RegistrationHandle(handle::encode(
                    Kind::Client,
                    guard.regs.id_of(b.client),
                )),
                provider: RegistrationHandle(handle::encode(
                    Kind::Provider,
                    guard.regs.id_of(b.provider),
                )),
                state: b.machine.state(),
            })
            .collect();
        Snapshot {
            registrations,
            bindings,
        }
    }
}

/// A registration as seen by [`Registrar::snapshot`].
#[derive(Clone, Debug)]
pub struct RegistrationSnapshot {
    /// Its handle.
    pub handle: RegistrationHandle,
    /// Client or provider.
    pub role: Role,
    /// The NPI.
    pub npi_id: NpiId,
    /// The module id.
    pub module_id: ModuleId,
    /// The implementation number.
    pub number: u32,
    /// The module's name (or module id).
    pub name: String,
    /// Its state.
    pub state: RegistrationState,
    /// How many bindings are live (attaching through cleaning up).
    pub bindings: usize,
}

/// A binding as seen by [`Registrar::snapshot`].
#[derive(Clone, Debug)]
pub struct BindingSnapshot {
    /// Its handle.
    pub handle: BindingHandle,
    /// The client registration.
    pub client: RegistrationHandle,
    /// The provider registration.
    pub provider: RegistrationHandle,
    /// Its state.
    pub state: BindingState,
}

/// Every registration and binding at one moment.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Registrations not yet closed by a wait.
    pub registrations: Vec<RegistrationSnapshot>,
    /// Live bindings.
    pub bindings: Vec<BindingSnapshot>,
}

impl fmt::Display for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} registration(s), {} binding(s)",
            self.registrations.len(),
            self.bindings.len()
        )?;
        for r in &self.registrations {
            writeln!(
                f,
                "  {:<8} {:<24} {} npi {} #{} {:?}, {} binding(s)",
                format!("{:?}", r.role),
                r.name,
                r.handle,
                r.npi_id,
                r.number,
                r.state,
                r.bindings
            )?;
        }
        for b in &self.bindings {
            writeln!(
                f,
                "  {} {} <-> {}: {}",
                b.handle, b.client, b.provider, b.state
            )?;
        }
        Ok(())
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    //! The registry lock's bias (see [`crate::bias`]) under real lifecycles: one thread's
    //! sections go through the bias, and threads taking turns revoke each other's, with every
    //! callback still run exactly once.
    use super::*;
    use crate::ids::Guid;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Counts every callback; attaches to every provider.
    struct Counting {
        nmr: Registrar,
        calls: AtomicUsize,
    }

    impl ClientCallbacks for Counting {
        fn attach_provider(&self, binding: BindingHandle, _: &RegistrationInstance) -> Status {
            self.calls.fetch_add(1, Ordering::Relaxed);
            match self
                .nmr
                .client_attach_provider(binding, Context::NULL, Context::NULL)
            {
                Ok(_) => Status::SUCCESS,
                Err(s) => s,
            }
        }
        fn detach_provider(&self, _: Context) -> DetachStatus {
            self.calls.fetch_add(1, Ordering::Relaxed);
            DetachStatus::Done
        }
        fn cleanup_binding_context(&self, _: Context) {
            self.calls.fetch_add(1, Ordering::Relaxed);
        }
    }

    impl ProviderCallbacks for Counting {
        fn attach_client(
            &self,
            _: BindingHandle,
            _: &RegistrationInstance,
            _: Context,
            _: Context,
        ) -> Result<ProviderAttachment, Status> {
            self.calls.fetch_add(1, Ordering::Relaxed);
            Ok(ProviderAttachment::default())
        }
        fn detach_client(&self, _: Context) -> DetachStatus {
            self.calls.fetch_add(1, Ordering::Relaxed);
            DetachStatus::Done
        }
        fn cleanup_binding_context(&self, _: Context) {
            self.calls.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// `rounds` pair lifecycles against one provider on NPI `npi`; returns the callbacks seen.
    fn lifecycles(nmr: &Registrar, npi: u128, rounds: usize) -> usize {
        let npi = NpiId::from_u128(npi);
        let module = ModuleId::Guid(Guid::from_u128(npi.0.to_u128()));
        let counting = Arc::new(Counting {
            nmr: nmr.clone(),
            calls: AtomicUsize::new(0),
        });
        let p = nmr
            .register_provider(
                RegistrationInstance::new(npi, module, 0),
                Arc::clone(&counting) as Arc<dyn ProviderCallbacks>,
                |_| {},
            )
            .expect("provider");
        for _ in 0..rounds {
            let c = nmr
                .register_client(
                    RegistrationInstance::new(npi, module, 0),
                    Arc::clone(&counting) as Arc<dyn ClientCallbacks>,
                    |_| {},
                )
                .expect("client");
            nmr.deregister_client(c).expect("deregister");
            assert_eq!(nmr.is_deregister_complete(c), Ok(true));
            nmr.wait_for_client_deregister_complete(c).expect("wait");
            assert_eq!(
                nmr.wait_for_client_deregister_complete(c),
                Err(Error::InvalidHandle)
            );
        }
        nmr.deregister_provider(p).expect("deregister provider");
        nmr.wait_for_provider_deregister_complete(p)
            .expect("wait provider");
        counting.calls.load(Ordering::Relaxed)
    }

    #[test]
    fn one_thread_runs_its_lifecycles_through_the_bias() {
        let nmr = Registrar::new();
        assert_eq!(lifecycles(&nmr, 1, 100), 600);
        assert_eq!(
            nmr.inner.registry.biased().biased_to_me(),
            crate::sys::init()
        );
        // And keeps working through it.
        assert_eq!(lifecycles(&nmr, 2, 100), 600);
        assert_eq!(nmr.inner.registry.biased().revocations(), 0);
        assert!(nmr.snapshot().registrations.is_empty());
    }

    #[test]
    fn threads_taking_turns_revoke_each_others_bias() {
        let nmr = Registrar::new();
        for round in 0..4u128 {
            let threads: Vec<_> = (0..2u128)
                .map(|t| {
                    let nmr = nmr.clone();
                    std::thread::spawn(move || lifecycles(&nmr, 10 + round * 2 + t, 300))
                })
                .collect();
            for t in threads {
                assert_eq!(t.join().expect("lifecycle thread"), 1800);
            }
            // The main thread takes the lock once between rounds: with a bias left to a
            // finished thread, this revokes it.
            assert!(nmr.snapshot().registrations.is_empty());
        }
        if crate::sys::init() {
            assert!(
                nmr.inner.registry.biased().revocations() > 0,
                "no bias was ever revoked"
            );
        }
    }
}
