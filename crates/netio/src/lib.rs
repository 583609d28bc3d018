//! `libnetio`: the Network Module Registrar functions of the WDK's `netioddk.h`, as a C
//! library for Linux, so existing NMR client and provider code (C or C++) compiles and runs
//! in user mode against the same registrar as the Rust API ([`nmr::Registrar::global`]).
//!
//! `cargo build -p netio --release` produces `target/release/libnetio.so` and
//! `target/release/libnetio.a`; the header is `crates/netio/include/netioddk.h`. The shared
//! library exports exactly the nine functions:
//!
//! ```text
//! NmrRegisterClient / NmrRegisterProvider          register; attach runs inside, handle written first
//! NmrDeregisterClient / NmrDeregisterProvider      always STATUS_PENDING; detach may run inside
//! NmrWaitForClientDeregisterComplete / ...Provider  blocks until every cleanup ran
//! NmrClientAttachProvider                           from inside ClientAttachProvider
//! NmrClientDetachProviderComplete / NmrProviderDetachClientComplete   after a PENDING detach
//! ```
//!
//! # Layers
//!
//! ```text
//!   C / C++ module ──netioddk.h──▶ ffi (9 exports, all unsafe code) ──▶ nmr::Registrar
//!        ▲                           │  validates pointers, Length/Size, callbacks
//!        └──── C callbacks ◀──── CClient / CProvider (nmr::ClientCallbacks / ProviderCallbacks)
//! ```
//!
//! * [`abi`] holds the `#[repr(C)]` mirrors of the header's structures with compile-time
//!   size and offset checks (Windows x64 layout: 32-bit `NTSTATUS`/`ULONG`, 24-byte
//!   `NPI_MODULEID`, 40-byte `NPI_REGISTRATION_INSTANCE`, 72-byte characteristics).
//! * [`ffi`] holds the nine `extern "system"` functions. Each runs inside `catch_unwind`,
//!   checks every pointer it can, keeps a pointer to the caller's characteristics (never a
//!   copy: the caller keeps them valid until the wait returns, as on Windows) and hands peers
//!   `&Chars->...RegistrationInstance` itself.
//! * [`AbiError`] says why a call was rejected; it becomes `STATUS_INVALID_PARAMETER` (or
//!   the registrar's status) at the boundary, and the two void functions log it through
//!   `tracing` (target `netio`) instead.
//!
//! Handles are the registrar's generation-checked 64-bit ids carried in a `HANDLE`, never
//! pointers: unknown, stale, freed or wrong-kind handles are rejected, not dereferenced.

// Unsafe code is confined to small modules; every block says why it holds, one operation
// at a time (the workspace denies these; here they cannot be allowed at all).
#![forbid(
    clippy::undocumented_unsafe_blocks,
    clippy::multiple_unsafe_ops_per_block
)]
pub mod abi;
mod error;
// The exports sit on `Registrar::global()`, which does not exist in `nmr`'s loom builds.
#[cfg(not(loom))]
pub mod ffi;

pub use error::AbiError;
