//! A user-mode **Network Module Registrar** (NMR), behaving as Windows' does.
//!
//! Client and provider modules register for a Network Programming Interface (an NPI id, a
//! GUID). The registrar pairs every client with every provider of the same NPI, in either
//! registration order, and drives each pair through its lifecycle:
//!
//! ```text
//!  register ──▶ ClientAttachProvider ──▶ NmrClientAttachProvider ──▶ ProviderAttachClient
//!                        (client decides)        (nested, same thread)   (provider decides)
//!
//!  deregister (either side) ──▶ ClientDetachProvider + ProviderDetachClient   (once each, G4)
//!        each answers Done, or Pending + Nmr*DetachComplete later (any thread, any order)
//!  both sides done ──▶ ClientCleanupBindingContext + ProviderCleanupBindingContext (once, G6)
//!  NmrWaitFor*DeregisterComplete returns only after every cleanup of the registration (G7)
//! ```
//!
//! The guarantees G1–G8 of the behaviour spec hold, including under concurrency: attach runs
//! synchronously inside register, deregistration always reports pending, a peer that starts
//! deregistering during an attach is detached right after the attach succeeds (the
//! late-comer, G5), and no internal lock is held across any callback, so callbacks may
//! re-enter the registrar freely.
//!
//! # Two faces
//!
//! * The **untyped core** ([`Registrar`], [`ClientCallbacks`], [`ProviderCallbacks`],
//!   [`Context`]) mirrors `netioddk.h` one to one; the `netio` crate's C ABI sits on it. A
//!   registration holds its callbacks as a [`Module`]: shared, owned, or `'static` like a C
//!   module's characteristics.
//! * The **typed layer** ([`typed`]) describes an NPI as a type and modules as traits. The
//!   peer's dispatch is only reachable through a [`typed::Binding`] with built-in rundown
//!   protection: detach answers pending while calls are in flight and completes by itself
//!   when the last one returns.
//!
//! # Design
//!
//! * [`binding`] is the sans-IO binding state machine (spec §4.2); the registrar decides
//!   under its lock, then calls callbacks with no lock held.
//! * Handles are generation-checked slot ids, never pointers: stale, freed, wrong-kind or
//!   made-up handles are an [`Error`], never undefined behaviour.
//! * A callback that panics is caught; the registrar stays consistent for everyone else
//!   (a panicking attach counts as a failed attach, a panicking detach as done).
//! * `tracing` events (target `nmr::lifecycle`) mark every transition, and
//!   [`Registrar::snapshot`] lists registrations and bindings with their states.

// Unsafe code is confined to small modules; every block says why it holds, one operation
// at a time (the workspace denies these; here they cannot be allowed at all).
#![forbid(
    clippy::undocumented_unsafe_blocks,
    clippy::multiple_unsafe_ops_per_block
)]

#[cfg(feature = "bench")]
pub mod bench;
#[cfg(any(not(loom), test))]
mod bias;
pub mod binding;
mod frames;
mod handle;
mod ids;
mod lock;
mod npis;
mod registrar;
mod reuse;
pub mod rundown;
mod status;
mod sync;
mod sys;
pub mod typed;

pub use binding::{BindingState, Side, SideState};
pub use handle::{BindingHandle, RegistrationHandle};
pub use ids::{Guid, Luid, ModuleId, NpiId};
pub use registrar::{
    BindingSnapshot, ClientCallbacks, ClientModule, Context, DetachStatus, Module,
    ProviderAttachment, ProviderCallbacks, ProviderModule, Registrar, RegistrationInstance,
    RegistrationSnapshot, RegistrationState, Role, Snapshot,
};
pub use status::{Error, Status};
