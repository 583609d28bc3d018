//! The typed layer: NPIs as types, modules as traits, dispatch through rundown-protected
//! [`Binding`]s. A Rust user writes no raw pointers and no status codes the types express.
//!
//! ```
//! use nmr::typed::*;
//! use nmr::{ModuleId, Guid, NpiId, Registrar};
//! use std::sync::Arc;
//!
//! // An NPI: the provider offers `Echo`, the client offers nothing.
//! pub trait Echo: Send + Sync { fn echo(&self, x: u32) -> u32; }
//! struct EchoNpi;
//! impl Npi for EchoNpi {
//!     const ID: NpiId = NpiId::from_u128(0xEC40);
//!     type ClientDispatch = ();
//!     type ProviderDispatch = dyn Echo;
//!     type ClientCharacteristics = ();
//!     type ProviderCharacteristics = ();
//! }
//!
//! struct Doubler;
//! impl Echo for Doubler { fn echo(&self, x: u32) -> u32 { 2 * x } }
//! struct EchoProvider;
//! impl Provider<EchoNpi> for EchoProvider {
//!     type BindingContext = ();
//!     fn attach_client(&self, _: &PeerInfo<'_, ()>, _: Binding<()>)
//!         -> Result<((), Arc<dyn Echo>), Declined> { Ok(((), Arc::new(Doubler))) }
//! }
//!
//! struct EchoClient { binding: std::sync::Mutex<Option<Binding<dyn Echo>>> }
//! impl Client<EchoNpi> for EchoClient {
//!     type BindingContext = ();
//!     fn attach_provider(&self, _: &PeerInfo<'_, ()>, attach: &mut ClientAttach<'_, EchoNpi>)
//!         -> Result<(), Declined> {
//!         let b = attach.attach(Arc::new(())).map_err(Declined::with_status)?;
//!         *self.binding.lock().unwrap() = Some(b);
//!         Ok(())
//!     }
//! }
//!
//! let nmr = Registrar::new();
//! let p = ProviderRegistration::<EchoNpi>::register(&nmr, ModuleInfo::new(ModuleId::Guid(Guid::from_u128(1))), None, Arc::new(EchoProvider))?;
//! let client = Arc::new(EchoClient { binding: Default::default() });
//! let c = ClientRegistration::<EchoNpi>::register(&nmr, ModuleInfo::new(ModuleId::Guid(Guid::from_u128(2))), None, client.clone())?;
//! let b = client.binding.lock().unwrap().clone().unwrap();
//! assert_eq!(b.call(|e| e.echo(21)), Ok(42));
//! p.unload(); // provider leaves: the client's binding detaches
//! assert!(b.call(|e| e.echo(1)).is_err());
//! c.unload();
//! # Ok::<(), nmr::Error>(())
//! ```

use crate::frames;
use crate::registrar::{
    ClientCallbacks, Context, DetachStatus, Module, ProviderAttachment, ProviderCallbacks,
    RegistrationInstance,
};
use crate::rundown::{DrainRef, HoldsRundown, OwnedRundownGuard, Rundown, RundownGuard};
use crate::sync::Arc;
use crate::{BindingHandle, Error, ModuleId, NpiId, Registrar, RegistrationHandle, Status};
use std::any::Any;
use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;
use std::time::Duration;

/// A Network Programming Interface described as a type.
pub trait Npi: Send + Sync + 'static {
    /// The NPI id.
    const ID: NpiId;
    /// What the client offers the provider (`()` if the NPI defines no client dispatch).
    type ClientDispatch: ?Sized + Send + Sync + 'static;
    /// What the provider offers the client, e.g. `dyn MyApi`.
    type ProviderDispatch: ?Sized + Send + Sync + 'static;
    /// NPI-specific client characteristics (`()` if none).
    type ClientCharacteristics: Send + Sync + 'static;
    /// NPI-specific provider characteristics (`()` if none).
    type ProviderCharacteristics: Send + Sync + 'static;
}

/// What a module tells its peers about itself.
#[derive(Clone, Debug)]
pub struct ModuleInfo {
    /// The module id.
    pub module_id: ModuleId,
    /// The implementation number of the NPI (0 if only one).
    pub number: u32,
    /// A name for logs and snapshots.
    pub name: Option<Arc<str>>,
}

impl ModuleInfo {
    /// A module with this id, number 0 and no name.
    #[must_use]
    pub const fn new(module_id: ModuleId) -> Self {
        ModuleInfo {
            module_id,
            number: 0,
            name: None,
        }
    }

    /// Sets the implementation number.
    #[must_use]
    pub const fn number(mut self, number: u32) -> Self {
        self.number = number;
        self
    }

    /// Sets the name.
    #[must_use]
    pub fn named(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = Some(name.into());
        self
    }
}

/// The peer's registration as an attach callback sees it.
#[derive(Debug)]
pub struct PeerInfo<'a, C> {
    /// The peer's module id.
    pub module_id: ModuleId,
    /// The peer's implementation number.
    pub number: u32,
    /// The peer's name, if it gave one.
    pub name: Option<&'a str>,
    /// The peer's NPI-specific characteristics, if it gave any.
    pub characteristics: Option<&'a C>,
}

/// A refusal to attach, with the status the peer sees (normally `STATUS_NOINTERFACE`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Declined(Status);

impl Declined {
    /// Declines with `STATUS_NOINTERFACE`.
    #[must_use]
    pub const fn no_interface() -> Self {
        Declined(Status::NOINTERFACE)
    }

    /// Declines (or passes on a failure) with `status`; a success code becomes NOINTERFACE.
    #[must_use]
    pub const fn with_status(status: Status) -> Self {
        if status.is_success() {
            Declined(Status::NOINTERFACE)
        } else {
            Declined(status)
        }
    }

    /// The status the peer sees.
    #[must_use]
    pub const fn status(self) -> Status {
        self.0
    }
}

/// The binding was detached: no call may start through it.
#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
#[error("the binding is detaching or detached")]
pub struct Detached;

/// One allocation per binding direction. The rundown is embedded (owned guards and the
/// detach's `DrainRef` keep the whole core alive), so a call chases one pointer less. The
/// core is also the registrar-level binding context of the side that calls through it
/// (one strong reference travels as the context, from the attach to the cleanup), and it
/// holds that side's module context, type-erased so `Binding<D>` stays one thin pointer
/// (a zero-sized module context costs no allocation).
struct BindingCore<D: ?Sized> {
    rundown: Rundown,
    handle: BindingHandle,
    dispatch: Arc<D>,
    ctx: side::CtxCell,
}

impl<D: ?Sized> BindingCore<D> {
    fn new(rundown: Rundown, dispatch: Arc<D>, handle: BindingHandle) -> Self {
        BindingCore {
            rundown,
            handle,
            dispatch,
            ctx: side::CtxCell::empty(),
        }
    }
}

impl<D: ?Sized + Send + Sync + 'static> HoldsRundown for BindingCore<D> {
    fn rundown(&self) -> &Rundown {
        &self.rundown
    }
}

/// The peer's dispatch for one binding, behind built-in rundown protection. Cheap to clone.
///
/// Calls go through [`call`](Self::call) or a guard; once detach begins no new call starts,
/// and the detach completes by itself when the last call in flight returns.
pub struct Binding<D: ?Sized> {
    core: Arc<BindingCore<D>>,
}

impl<D: ?Sized> Clone for Binding<D> {
    fn clone(&self) -> Self {
        Binding {
            core: Arc::clone(&self.core),
        }
    }
}

impl<D: ?Sized> fmt::Debug for Binding<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Binding")
            .field("handle", &self.core.handle)
            .field("rundown", &self.core.rundown)
            .finish()
    }
}

impl<D: ?Sized> Binding<D> {
    /// Calls the peer through the binding.
    ///
    /// # Errors
    /// [`Detached`] once detach has begun.
    #[inline]
    pub fn call<R>(&self, f: impl FnOnce(&D) -> R) -> Result<R, Detached> {
        let core = &*self.core;
        core.rundown.call(|| f(&core.dispatch)).ok_or(Detached)
    }

    /// A guard for a call on this thread; `None` once detach has begun.
    #[must_use]
    pub fn enter(&self) -> Option<CallGuard<'_, D>> {
        self.core.rundown.try_enter().map(|guard| CallGuard {
            _guard: guard,
            dispatch: &*self.core.dispatch,
        })
    }

    /// A guard that may move between threads (an open socket, an async task). Detach stays
    /// pending while it lives. `None` once detach has begun.
    #[must_use]
    pub fn enter_owned(&self) -> Option<OwnedCallGuard<D>>
    where
        D: Send + Sync + 'static,
    {
        self.core
            .rundown
            .try_enter_owned_in(Arc::clone(&self.core) as Arc<dyn HoldsRundown>)
            .map(|guard| OwnedCallGuard {
                _guard: guard,
                dispatch: Arc::clone(&self.core.dispatch),
            })
    }

    /// The registrar's handle of this binding.
    #[must_use]
    pub fn handle(&self) -> BindingHandle {
        self.core.handle
    }

    /// How this binding's rundown tracks calls (see [`crate::rundown::Mode`]).
    #[must_use]
    pub fn rundown_mode(&self) -> crate::rundown::Mode {
        self.core.rundown.mode()
    }

    /// Has detach begun?
    #[must_use]
    pub fn is_detaching(&self) -> bool {
        self.core.rundown.is_closed()
    }

    /// Calls in flight right now (a racy snapshot, for diagnostics).
    #[must_use]
    pub fn calls_in_flight(&self) -> usize {
        self.core.rundown.in_flight()
    }
}

/// A call in flight on this thread; derefs to the peer's dispatch.
#[must_use = "the call ends when the guard drops"]
pub struct CallGuard<'a, D: ?Sized> {
    _guard: RundownGuard<'a>,
    dispatch: &'a D,
}

impl<D: ?Sized> Deref for CallGuard<'_, D> {
    type Target = D;
    fn deref(&self) -> &D {
        self.dispatch
    }
}

impl<D: ?Sized> fmt::Debug for CallGuard<'_, D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CallGuard")
    }
}

/// A call in flight that may move between threads; derefs to the peer's dispatch.
#[must_use = "the call ends when the guard drops"]
pub struct OwnedCallGuard<D: ?Sized> {
    _guard: OwnedRundownGuard,
    dispatch: Arc<D>,
}

impl<D: ?Sized> Deref for OwnedCallGuard<D> {
    type Target = D;
    fn deref(&self) -> &D {
        &self.dispatch
    }
}

impl<D: ?Sized> fmt::Debug for OwnedCallGuard<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OwnedCallGuard")
    }
}

/// Given to detach hooks: this side's detach stays pending until the hold is dropped (and
/// every call in flight through the binding has returned). Dropping it is the completion.
#[must_use = "dropping the hold completes the detach"]
pub struct DetachHold {
    _drain: DrainRef,
}

impl fmt::Debug for DetachHold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DetachHold")
    }
}

/// A provider module of NPI `N`.
pub trait Provider<N: Npi>: Send + Sync + 'static {
    /// The provider's state for one binding; dropped by value in [`cleanup_binding`](Self::cleanup_binding).
    type BindingContext: Send + Sync + 'static;

    /// `ProviderAttachClient`: accept with a binding context and the dispatch the client will
    /// call, or decline. `client` is how the provider calls the client back.
    ///
    /// # Errors
    /// The refusal, passed on to the client.
    fn attach_client(
        &self,
        peer: &PeerInfo<'_, N::ClientCharacteristics>,
        client: Binding<N::ClientDispatch>,
    ) -> Result<(Self::BindingContext, Arc<N::ProviderDispatch>), Declined>;

    /// `ProviderDetachClient`: stop calling the client. Keep `hold` to keep the detach pending.
    fn detach_client(&self, ctx: &Self::BindingContext, hold: DetachHold) {
        let _ = ctx;
        drop(hold);
    }

    /// `ProviderCleanupBindingContext`: both sides are done; the context is yours again.
    fn cleanup_binding(&self, ctx: Self::BindingContext) {
        drop(ctx);
    }
}

/// A client module of NPI `N`.
pub trait Client<N: Npi>: Send + Sync + 'static {
    /// The client's state for one binding; dropped by value in [`cleanup_binding`](Self::cleanup_binding).
    type BindingContext: Send + Sync + 'static;

    /// `ClientAttachProvider`: decide on `peer`; to accept, call [`ClientAttach::attach`]
    /// (retries with another dispatch allowed) and return your binding context.
    ///
    /// # Errors
    /// The refusal, or the failure of the last attach attempt.
    fn attach_provider(
        &self,
        peer: &PeerInfo<'_, N::ProviderCharacteristics>,
        attach: &mut ClientAttach<'_, N>,
    ) -> Result<Self::BindingContext, Declined>;

    /// `ClientDetachProvider`: stop calling the provider. Keep `hold` to keep the detach pending.
    fn detach_provider(&self, ctx: &Self::BindingContext, hold: DetachHold) {
        let _ = ctx;
        drop(hold);
    }

    /// `ClientCleanupBindingContext`: both sides are done; the context is yours again.
    fn cleanup_binding(&self, ctx: Self::BindingContext) {
        drop(ctx);
    }
}

/// A module's binding context, type-erased so the per-registration object (and so what a
/// peer checks) does not depend on the module's type.
type AnyCtx = Box<dyn Any + Send + Sync>;

/// [`Client`] with the binding context erased, so one registration object type per NPI
/// serves every client module of it.
trait ErasedClient<N: Npi>: Send + Sync + 'static {
    fn attach(
        &self,
        peer: &PeerInfo<'_, N::ProviderCharacteristics>,
        attach: &mut ClientAttach<'_, N>,
    ) -> Result<AnyCtx, Declined>;
    fn detach(&self, ctx: Option<&(dyn Any + Send + Sync)>, hold: DetachHold);
    fn cleanup(&self, ctx: AnyCtx);
}

impl<N: Npi, C: Client<N>> ErasedClient<N> for C {
    fn attach(
        &self,
        peer: &PeerInfo<'_, N::ProviderCharacteristics>,
        attach: &mut ClientAttach<'_, N>,
    ) -> Result<AnyCtx, Declined> {
        // A zero-sized context boxes without allocating.
        Client::<N>::attach_provider(self, peer, attach).map(|c| Box::new(c) as AnyCtx)
    }
    fn detach(&self, ctx: Option<&(dyn Any + Send + Sync)>, hold: DetachHold) {
        match ctx.and_then(|c| c.downcast_ref::<C::BindingContext>()) {
            Some(ctx) => Client::<N>::detach_provider(self, ctx, hold),
            None => drop(hold),
        }
    }
    fn cleanup(&self, ctx: AnyCtx) {
        if let Ok(ctx) = ctx.downcast::<C::BindingContext>() {
            Client::<N>::cleanup_binding(self, *ctx);
        }
    }
}

/// [`Provider`] with the binding context erased (see [`ErasedClient`]).
trait ErasedProvider<N: Npi>: Send + Sync + 'static {
    fn attach(
        &self,
        peer: &PeerInfo<'_, N::ClientCharacteristics>,
        client: Binding<N::ClientDispatch>,
    ) -> Result<(AnyCtx, Arc<N::ProviderDispatch>), Declined>;
    fn detach(&self, ctx: Option<&(dyn Any + Send + Sync)>, hold: DetachHold);
    fn cleanup(&self, ctx: AnyCtx);
}

impl<N: Npi, P: Provider<N>> ErasedProvider<N> for P {
    fn attach(
        &self,
        peer: &PeerInfo<'_, N::ClientCharacteristics>,
        client: Binding<N::ClientDispatch>,
    ) -> Result<(AnyCtx, Arc<N::ProviderDispatch>), Declined> {
        Provider::<N>::attach_client(self, peer, client).map(|(c, d)| (Box::new(c) as AnyCtx, d))
    }
    fn detach(&self, ctx: Option<&(dyn Any + Send + Sync)>, hold: DetachHold) {
        match ctx.and_then(|c| c.downcast_ref::<P::BindingContext>()) {
            Some(ctx) => Provider::<N>::detach_client(self, ctx, hold),
            None => drop(hold),
        }
    }
    fn cleanup(&self, ctx: AnyCtx) {
        if let Ok(ctx) = ctx.downcast::<P::BindingContext>() {
            Provider::<N>::cleanup_binding(self, *ctx);
        }
    }
}

/// A typed client registration of NPI `N`, in one allocation that the registrar holds twice:
/// as the registration's callbacks, and as its instance's characteristics, which is how a
/// peer knows the registration is a typed client of `N` (a downcast to this exact type), so
/// it only ever reinterprets dispatch contexts that really are of `N`'s types.
///
/// It holds no reference to its registrar: its callbacks find the registrar running them
/// ([`frames::with_registrar`]), and a reference here would make a cycle (registrar →
/// registration → this → registrar) and cost two atomic read-modify-writes per registration.
struct ClientTyped<N: Npi> {
    characteristics: Option<N::ClientCharacteristics>,
    module: Module<dyn ErasedClient<N>>,
}

/// A typed provider registration of NPI `N` (see [`ClientTyped`]).
struct ProviderTyped<N: Npi> {
    characteristics: Option<N::ProviderCharacteristics>,
    module: Module<dyn ErasedProvider<N>>,
}

/// The peer's registration object, if it is a `T` (a typed registration of the right role
/// and NPI type).
fn typed_peer<T: 'static>(i: &RegistrationInstance) -> Option<&T> {
    i.characteristics.as_deref()?.downcast_ref::<T>()
}

fn peer_info<'a, C>(
    i: &'a RegistrationInstance,
    characteristics: Option<&'a C>,
) -> PeerInfo<'a, C> {
    PeerInfo {
        module_id: i.module_id,
        number: i.number,
        name: i.name.as_deref(),
        characteristics,
    }
}

/// Closes the binding's rundown, runs the module's detach hook with the hold, and reports
/// done when everything drained before the hook returned, pending otherwise: then the drain
/// callback, made by `make_complete` only on that path, completes the detach through the
/// registrar. It may fire before this returns; the registrar remembers a completion that
/// arrives while the side is still being notified and applies it when the callback returns
/// pending.
fn detach_side<D: ?Sized + Send + Sync + 'static, F: FnOnce() + Send + 'static>(
    core: &Arc<BindingCore<D>>,
    make_complete: impl FnOnce() -> F,
    hook: impl FnOnce(DetachHold),
) -> DetachStatus {
    let Some(drain) = core
        .rundown
        .close_deferred(Arc::clone(core) as Arc<dyn HoldsRundown>)
    else {
        return DetachStatus::Done;
    };
    hook(DetachHold { _drain: drain });
    // The common case: no call in flight and the hook let go of the hold, so the drain
    // completed inline and no callback (allocation, clones) is needed.
    if core.rundown.drained() {
        return DetachStatus::Done;
    }
    if core.rundown.set_on_drained(make_complete()) {
        DetachStatus::Pending
    } else {
        // Drained between the check and the install.
        DetachStatus::Done
    }
}

mod side {
    //! The only place the typed layer turns registrar contexts back into Rust objects, and
    //! the per-side state that only the adapters touch.
    use super::{AnyCtx, Arc, Context};
    use std::any::Any;
    use std::cell::{Cell, UnsafeCell};
    use std::mem::{ManuallyDrop, MaybeUninit};
    use std::ptr;

    /// Gives one strong reference of `a` to the registrar as a binding context; [`take`]
    /// gets it back exactly once.
    pub(super) fn into_context<T>(a: Arc<T>) -> Context {
        Context::from_ptr(Arc::into_raw(a))
    }

    /// # Safety
    /// `c` came from [`into_context::<T>`] and is taken at most once.
    pub(super) unsafe fn take<T>(c: Context) -> Arc<T> {
        // SAFETY: per the contract, `c` carries a strong reference not yet reclaimed.
        unsafe { Arc::from_raw(c.as_ptr().cast::<T>().cast_const()) }
    }

    /// The `Arc` behind a context, without taking the context's reference (hence
    /// `ManuallyDrop`).
    ///
    /// # Safety
    /// `c` came from [`into_context::<T>`] and is not taken while the result lives.
    pub(super) unsafe fn borrow<T>(c: Context) -> ManuallyDrop<Arc<T>> {
        // SAFETY: per the contract, the context's reference keeps the value alive, and
        // `ManuallyDrop` never releases that reference.
        ManuallyDrop::new(unsafe { Arc::from_raw(c.as_ptr().cast::<T>().cast_const()) })
    }

    std::thread_local! {
        /// The handoff of the innermost typed client attach in flight on this thread and not
        /// yet claimed by its provider, or null.
        static HANDOFF: Cell<*mut ()> = const { Cell::new(ptr::null_mut()) };
    }

    /// Restores the outer attach's handoff (or null) when an attach returns or unwinds.
    struct Restore(*mut ());

    impl Drop for Restore {
        fn drop(&mut self) {
            HANDOFF.set(self.0);
        }
    }

    /// Runs `f` with `h` published as this thread's handoff in flight; `f` gets its address
    /// as the dispatch context to pass to `NmrClientAttachProvider`.
    pub(super) fn with_handoff<T, R>(h: &mut T, f: impl FnOnce(Context) -> R) -> R {
        let p: *mut T = h;
        let _restore = Restore(HANDOFF.replace(p.cast()));
        f(Context::from_ptr(p))
    }

    /// The handoff behind a client dispatch context, claimed (at most once): `None` unless
    /// `c` is the handoff published by [`with_handoff`] on this thread and not claimed yet.
    /// So a context forged by a module calling `Registrar::client_attach_provider` itself
    /// (a safe function) is refused rather than reinterpreted.
    ///
    /// # Safety
    /// `T` is the type the publishing [`with_handoff`] was given. (The typed client attach
    /// that publishes a `Handoff<N>` calls the registrar for its own binding, whose provider
    /// it checked is typed for the same `N`, and no module code runs before that provider's
    /// adapter claims it.)
    pub(super) unsafe fn claim_handoff<'a, T>(c: Context) -> Option<&'a mut T> {
        let p = c.as_ptr().cast::<()>();
        if p.is_null() || HANDOFF.get() != p {
            return None;
        }
        HANDOFF.set(ptr::null_mut());
        // SAFETY: `p` is the published handoff: a live `T` (per the contract) on the stack
        // of the `with_handoff` call still running below us, which does not touch it until
        // `f` returns; claimed once, so this is the only reference.
        Some(unsafe { &mut *p.cast::<T>() })
    }

    /// An `Arc` allocation whose address is known before its value: the client's core,
    /// whose address must be its binding context before the provider (and so the dispatch
    /// the core holds) is known.
    pub(super) struct Late<T>(Arc<MaybeUninit<T>>);

    impl<T> Late<T> {
        pub(super) fn new() -> Self {
            // Not `Arc::new_uninit`, which computes the layout at run time.
            Late(Arc::new(MaybeUninit::uninit()))
        }

        /// Where the value will be ([`into_context`] of [`init`](Self::init)'s result).
        pub(super) fn context(&self) -> Context {
            Context::from_ptr(Arc::as_ptr(&self.0).cast::<T>())
        }

        pub(super) fn init(self, value: T) -> Arc<T> {
            // Not `Arc::get_mut`, whose uniqueness check is a locked read-modify-write.
            let slot = Arc::as_ptr(&self.0).cast_mut();
            // SAFETY: a `Late` is never cloned, so this `Arc` is the only reference to the
            // allocation and nothing borrows its contents; `Arc::as_ptr` keeps the
            // allocation's (writable) provenance, as `Arc::get_mut_unchecked` does.
            unsafe { slot.write(MaybeUninit::new(value)) };
            // SAFETY: written just above.
            unsafe { self.0.assume_init() }
        }
    }

    /// A side's module binding context: set once when its attach succeeds, lent to its
    /// detach hook, taken by its cleanup.
    pub(super) struct CtxCell(UnsafeCell<Option<Box<dyn Any + Send + Sync>>>);

    // SAFETY: the cell is reached only through the unsafe methods below, which only the
    // adapters call, in the callbacks of the side that owns the core, and the registrar
    // orders those: the attach returns before a detach starts (G5), a side's detach
    // callback returns before the cleanups start, and each callback happens after the
    // previous one through the registrar's lock. So accesses never overlap. Other holders
    // of the core (bindings, guards, drain references) never touch it.
    unsafe impl Sync for CtxCell {}

    impl CtxCell {
        pub(super) const fn empty() -> Self {
            CtxCell(UnsafeCell::new(None))
        }

        /// # Safety
        /// No other access to the cell overlaps this one.
        pub(super) unsafe fn set(&self, ctx: AnyCtx) {
            // SAFETY: per the contract, this is the only access.
            unsafe { *self.0.get() = Some(ctx) };
        }

        /// # Safety
        /// No [`set`](Self::set) or [`take`](Self::take) overlaps the returned borrow.
        pub(super) unsafe fn get(&self) -> Option<&(dyn Any + Send + Sync)> {
            // SAFETY: per the contract, nothing writes the cell while the borrow lives.
            unsafe { &*self.0.get() }.as_deref()
        }

        /// # Safety
        /// No other access to the cell overlaps this one.
        pub(super) unsafe fn take(&self) -> Option<AnyCtx> {
            // SAFETY: per the contract, this is the only access.
            unsafe { &mut *self.0.get() }.take()
        }
    }
}

/// The two dispatches of an attach, moved rather than cloned: the client's `attach` puts
/// its dispatch here, publishes it for this thread and passes its address as its dispatch
/// context; the provider adapter, running nested inside that call, claims it (only the
/// published handoff: see [`side::claim_handoff`]), takes the client's dispatch for the
/// binding it gives its module and leaves its module's dispatch in `provider`, which
/// `attach` takes once `NmrClientAttachProvider` returns. Saves two reference-count updates
/// per dispatch.
struct Handoff<N: Npi> {
    client: Option<Arc<N::ClientDispatch>>,
    provider: Option<Arc<N::ProviderDispatch>>,
}

/// A typed-layer invariant failed where unwinding would leave the registrar with a
/// dangling context: abort rather than risk a use after free.
#[cold]
fn broken_invariant(what: &str) -> ! {
    tracing::error!(target: "nmr", "typed layer invariant broken: {what}; aborting");
    std::process::abort()
}

/// The client's core before its attach succeeds: the allocation (its address is the
/// client's binding context) and the rundown, made up front so that nothing can fail
/// between the provider's acceptance and the core's initialisation.
struct PendingCore<D: ?Sized> {
    late: side::Late<BindingCore<D>>,
    rundown: Rundown,
}

/// The attach in progress, handed to [`Client::attach_provider`].
pub struct ClientAttach<'a, N: Npi> {
    registrar: &'a Registrar,
    handle: BindingHandle,
    /// The client's binding context: where the core will be.
    side: Context,
    /// `None` once an attach succeeded.
    pending: Option<PendingCore<N::ProviderDispatch>>,
}

impl<N: Npi> fmt::Debug for ClientAttach<'_, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientAttach")
            .field("binding", &self.handle)
            .field("attached", &self.pending.is_none())
            .finish()
    }
}

impl<N: Npi> ClientAttach<'_, N> {
    /// `NmrClientAttachProvider`: offer `dispatch` to the provider. On success, returns the
    /// binding to call the provider through. May be retried after a failure.
    ///
    /// # Errors
    /// The provider's refusal (e.g. `STATUS_NOINTERFACE`), or `STATUS_INVALID_DEVICE_STATE`
    /// after a success.
    pub fn attach(
        &mut self,
        dispatch: Arc<N::ClientDispatch>,
    ) -> Result<Binding<N::ProviderDispatch>, Status> {
        if self.pending.is_none() {
            return Err(Error::AlreadyAttached.status());
        }
        let mut handoff = Handoff::<N> {
            client: Some(dispatch),
            provider: None,
        };
        side::with_handoff(&mut handoff, |dispatch| {
            self.registrar
                .client_attach_provider(self.handle, self.side, dispatch)
        })?;
        // From here on nothing may fail: the registrar now holds `self.side` as the client's
        // context and hands it to the cleanup, so it must become an initialised core.
        // The adapter only calls the module when the provider is typed for `N`, and that
        // provider's adapter leaves its dispatch in the handoff when it accepts.
        let (Some(provider_dispatch), Some(pending)) =
            (handoff.provider.take(), self.pending.take())
        else {
            // Unwinding would free the allocation the registrar's context points to.
            broken_invariant("a typed provider accepted without leaving its dispatch")
        };
        let core = pending.late.init(BindingCore::new(
            pending.rundown,
            provider_dispatch,
            self.handle,
        ));
        let binding = Binding {
            core: Arc::clone(&core),
        };
        let context = side::into_context(core);
        debug_assert_eq!(context, self.side);
        Ok(binding)
    }

    /// The registrar's handle of the binding being attached.
    #[must_use]
    pub fn handle(&self) -> BindingHandle {
        self.handle
    }
}

impl<N: Npi> ClientTyped<N> {
    /// `ClientAttachProvider` run by `registrar`.
    fn attach_with(
        &self,
        registrar: &Registrar,
        binding: BindingHandle,
        provider: &RegistrationInstance,
    ) -> Status {
        let Some(t) = typed_peer::<ProviderTyped<N>>(provider) else {
            return Status::NOINTERFACE;
        };
        let peer = peer_info(provider, t.characteristics.as_ref());
        let late = side::Late::new();
        let side = late.context();
        let mut attach = ClientAttach::<N> {
            registrar,
            handle: binding,
            side,
            pending: Some(PendingCore {
                late,
                rundown: Rundown::new(),
            }),
        };
        let result = self.module.get().attach(&peer, &mut attach);
        let attached = attach.pending.is_none();
        // Never attached: the allocation goes (the registrar never hands `side` back).
        drop(attach);
        match (result, attached) {
            (Ok(ctx), true) => {
                // SAFETY: `attach` gave the core's reference to the context, which lives
                // until the cleanup, and that cannot start before this callback returns.
                let core = unsafe { side::borrow::<BindingCore<N::ProviderDispatch>>(side) };
                // SAFETY: the only access: detach cannot start before this callback
                // returns (G5), and other holders of the core never touch the cell.
                unsafe { core.ctx.set(ctx) };
                Status::SUCCESS
            }
            // Attached, then failed: the registrar detaches the provider and runs both
            // cleanups, which release the cores.
            (Err(d), true) => d.status(),
            (Ok(_), false) => {
                tracing::warn!(target: "nmr", %binding, "client accepted without attaching; treated as declined");
                Status::NOINTERFACE
            }
            (Err(d), false) => d.status(),
        }
    }
}

impl<N: Npi> ClientCallbacks for ClientTyped<N> {
    fn attach_provider(&self, binding: BindingHandle, provider: &RegistrationInstance) -> Status {
        // Only a registrar calls this (the type is private), so one is running it.
        frames::with_registrar(|registrar| self.attach_with(registrar, binding, provider))
            .unwrap_or(Status::INVALID_DEVICE_STATE)
    }

    fn detach_provider(&self, client_binding_context: Context) -> DetachStatus {
        // SAFETY: the registrar hands back the context `ClientAttach::attach` made of the
        // client's core; its reference lives until the cleanup, which cannot start before
        // this callback returns.
        let core =
            unsafe { side::borrow::<BindingCore<N::ProviderDispatch>>(client_binding_context) };
        let handle = core.handle;
        detach_side(
            &core,
            || {
                // Only on the pending path: the completion may run on any thread, later.
                let registrar = frames::with_registrar(Registrar::clone);
                move || match registrar.map(|r| r.client_detach_provider_complete(handle)) {
                    Some(Ok(())) => {}
                    Some(Err(e)) => {
                        tracing::error!(target: "nmr", %handle, "typed client detach completion failed: {e}");
                    }
                    None => broken_invariant("a typed detach ran outside any registrar"),
                }
            },
            // SAFETY: the attach's `set` returned before this detach began, and the
            // cleanup's `take` starts only after this callback returns.
            |hold| self.module.get().detach(unsafe { core.ctx.get() }, hold),
        )
    }

    fn cleanup_binding_context(&self, client_binding_context: Context) {
        // SAFETY: cleanup runs exactly once per binding; the context's reference is ours again.
        let core =
            unsafe { side::take::<BindingCore<N::ProviderDispatch>>(client_binding_context) };
        // SAFETY: both detach callbacks have returned, and nothing else touches the cell.
        if let Some(ctx) = unsafe { core.ctx.take() } {
            self.module.get().cleanup(ctx);
        }
    }
}

impl<N: Npi> ProviderCallbacks for ProviderTyped<N> {
    fn attach_client(
        &self,
        binding: BindingHandle,
        client: &RegistrationInstance,
        _client_binding_context: Context,
        client_dispatch: Context,
    ) -> Result<ProviderAttachment, Status> {
        let t = typed_peer::<ClientTyped<N>>(client).ok_or(Status::NOINTERFACE)?;
        // SAFETY: the client is typed for `N` (checked above), so a handoff its attach
        // published is a `Handoff<N>`.
        let handoff = unsafe { side::claim_handoff::<Handoff<N>>(client_dispatch) }
            .ok_or(Status::INVALID_PARAMETER)?;
        let Some(client_dispatch) = handoff.client.take() else {
            return Err(Status::INVALID_PARAMETER);
        };
        let core = Arc::new(BindingCore::new(Rundown::new(), client_dispatch, binding));
        let peer = peer_info(client, t.characteristics.as_ref());
        let (ctx, dispatch) = self
            .module
            .get()
            .attach(
                &peer,
                Binding {
                    core: Arc::clone(&core),
                },
            )
            .map_err(Declined::status)?;
        handoff.provider = Some(dispatch);
        // SAFETY: the only access: the core is not the registrar's yet, and other holders
        // (the module's bindings) never touch the cell.
        unsafe { core.ctx.set(ctx) };
        Ok(ProviderAttachment {
            binding_context: side::into_context(core),
            // Only the typed client reads the dispatch, from the handoff; this is for the
            // registrar's records.
            dispatch: Context::from_ptr(&raw const handoff.provider),
        })
    }

    fn detach_client(&self, provider_binding_context: Context) -> DetachStatus {
        // SAFETY: the registrar hands back the context `attach_client` made of the
        // provider's core; its reference lives until the cleanup.
        let core =
            unsafe { side::borrow::<BindingCore<N::ClientDispatch>>(provider_binding_context) };
        let handle = core.handle;
        detach_side(
            &core,
            || {
                // Only on the pending path: the completion may run on any thread, later.
                let registrar = frames::with_registrar(Registrar::clone);
                move || match registrar.map(|r| r.provider_detach_client_complete(handle)) {
                    Some(Ok(())) => {}
                    Some(Err(e)) => {
                        tracing::error!(target: "nmr", %handle, "typed provider detach completion failed: {e}");
                    }
                    None => broken_invariant("a typed detach ran outside any registrar"),
                }
            },
            // SAFETY: the attach's `set` returned before this detach began, and the
            // cleanup's `take` starts only after this callback returns.
            |hold| self.module.get().detach(unsafe { core.ctx.get() }, hold),
        )
    }

    fn cleanup_binding_context(&self, provider_binding_context: Context) {
        // SAFETY: cleanup runs exactly once per binding; the context's reference is ours again.
        let core =
            unsafe { side::take::<BindingCore<N::ClientDispatch>>(provider_binding_context) };
        // SAFETY: both detach callbacks have returned, and nothing else touches the cell.
        if let Some(ctx) = unsafe { core.ctx.take() } {
            self.module.get().cleanup(ctx);
        }
    }
}

/// Deregistration in progress: [`wait`](Self::wait) for it to complete.
#[must_use = "wait for the deregistration to complete before unloading"]
pub struct Deregistration {
    registrar: Registrar,
    handle: RegistrationHandle,
    role: crate::Role,
    done: bool,
}

impl fmt::Debug for Deregistration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Deregistration")
            .field("handle", &self.handle)
            .finish()
    }
}

impl Deregistration {
    /// Blocks until every binding is gone and its cleanups returned.
    pub fn wait(mut self) {
        self.finish();
    }

    /// Waits at most `timeout`; gives the deregistration back if it has not completed.
    ///
    /// # Errors
    /// `self`, when bindings are still detaching after `timeout`.
    pub fn wait_timeout(self, timeout: Duration) -> Result<(), Self> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if self
                .registrar
                .is_deregister_complete(self.handle)
                .unwrap_or(true)
            {
                self.wait();
                return Ok(());
            }
            if std::time::Instant::now() >= deadline {
                return Err(self);
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// Has every binding gone?
    #[must_use]
    pub fn is_complete(&self) -> bool {
        self.registrar
            .is_deregister_complete(self.handle)
            .unwrap_or(true)
    }

    fn finish(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        let r = match self.role {
            crate::Role::Client => self
                .registrar
                .wait_for_client_deregister_complete(self.handle),
            crate::Role::Provider => self
                .registrar
                .wait_for_provider_deregister_complete(self.handle),
        };
        if let Err(e) = r {
            tracing::error!(target: "nmr", handle = %self.handle, "wait for deregistration failed: {e}");
        }
    }
}

impl Drop for Deregistration {
    fn drop(&mut self) {
        self.finish();
    }
}

macro_rules! typed_registration {
    ($name:ident, $role:ident, $trait:ident, $erased:ident, $adapter:ident, $chars:ident, $reg:ident, $dereg:ident, $doc:literal) => {
        #[doc = $doc]
        ///
        /// Deregistration consumes it; dropping it deregisters and waits.
        pub struct $name<N: Npi> {
            /// Taken by deregistration (which consumes `self`), so it moves to the
            /// [`Deregistration`] instead of being cloned.
            registrar: Option<Registrar>,
            handle: RegistrationHandle,
            live: bool,
            _npi: PhantomData<fn() -> N>,
        }

        impl<N: Npi> fmt::Debug for $name<N> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($name)).field("handle", &self.handle).finish()
            }
        }

        impl<N: Npi> $name<N> {
            /// Registers `module` (an `Arc`, a `Box` or a `'static` reference: see
            /// [`Module`]); attach callbacks run before this returns.
            ///
            /// # Errors
            /// As [`Registrar`]'s registration.
            pub fn register<M: $trait<N>>(
                registrar: &Registrar,
                info: ModuleInfo,
                characteristics: Option<N::$chars>,
                module: impl Into<Module<M>>,
            ) -> Result<Self, Error> {
                let module = match module.into() {
                    Module::Shared(a) => Module::Shared(a as Arc<dyn $erased<N>>),
                    Module::Owned(b) => Module::Owned(b as Box<dyn $erased<N>>),
                    Module::Static(r) => Module::Static(r as &'static dyn $erased<N>),
                };
                let typed = Arc::new($adapter::<N> { characteristics, module });
                let mut instance = RegistrationInstance::new(N::ID, info.module_id, info.number)
                    .with_characteristics(Arc::clone(&typed) as Arc<dyn Any + Send + Sync>);
                instance.name = info.name;
                let handle = registrar.$reg(instance, typed, |_| {})?;
                Ok($name { registrar: Some(registrar.clone()), handle, live: true, _npi: PhantomData })
            }

            /// The registrar's handle.
            #[must_use]
            pub fn handle(&self) -> RegistrationHandle {
                self.handle
            }

            /// Starts deregistration; detach callbacks may run inside this call.
            pub fn deregister(mut self) -> Deregistration {
                self.live = false;
                let Some(registrar) = self.registrar.take() else {
                    unreachable!("only deregistration, which consumes the registration, takes the registrar")
                };
                if let Err(e) = registrar.$dereg(self.handle) {
                    tracing::error!(target: "nmr", handle = %self.handle, "deregistration failed: {e}");
                }
                Deregistration {
                    registrar,
                    handle: self.handle,
                    role: crate::Role::$role,
                    done: false,
                }
            }

            /// Deregisters and waits.
            pub fn unload(self) {
                self.deregister().wait();
            }
        }

        impl<N: Npi> Drop for $name<N> {
            fn drop(&mut self) {
                if self.live {
                    self.live = false;
                    let Some(registrar) = self.registrar.take() else {
                        return;
                    };
                    if registrar.$dereg(self.handle).is_ok() {
                        drop(Deregistration {
                            registrar,
                            handle: self.handle,
                            role: crate::Role::$role,
                            done: false,
                        });
                    }
                }
            }
        }
    };
}

typed_registration!(
    ProviderRegistration,
    Provider,
    Provider,
    ErasedProvider,
    ProviderTyped,
    ProviderCharacteristics,
    register_provider,
    deregister_provider,
    "A typed provider registration."
);
typed_registration!(
    ClientRegistration,
    Client,
    Client,
    ErasedClient,
    ClientTyped,
    ClientCharacteristics,
    register_client,
    deregister_client,
    "A typed client registration."
);
