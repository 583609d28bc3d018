//! `#[repr(C)]` mirrors of the structures, callback types and constants in
//! `include/netioddk.h`, `include/netiodef.h` and `include/netio_ntdef.h`.
//!
//! Field names are the Rust spelling of the WDK names (`ClientAttachProvider` →
//! `client_attach_provider`); each type carries the WDK name as a doc alias. Sizes and
//! offsets are checked at compile time below (Windows x64 layout; on 64-bit targets), and
//! the test `tests/c_programs.rs` checks them against what the C compiler computes from the
//! header.

#![forbid(unsafe_code)]

use core::ffi::c_void;

pub use nmr::{Guid, Luid};

/// `NTSTATUS`: 32 bits on every platform (negative values are errors).
#[doc(alias = "NTSTATUS")]
pub type NtStatus = i32;

/// `HANDLE`: an opaque pointer-sized value.
#[doc(alias = "HANDLE")]
pub type Handle = *mut c_void;

/// `STATUS_SUCCESS`.
pub const STATUS_SUCCESS: NtStatus = 0;
/// `STATUS_PENDING`.
pub const STATUS_PENDING: NtStatus = 0x0000_0103;
/// `STATUS_INVALID_PARAMETER`.
pub const STATUS_INVALID_PARAMETER: NtStatus = 0xC000_000D_u32 as i32;
/// `STATUS_NO_MEMORY`.
pub const STATUS_NO_MEMORY: NtStatus = 0xC000_0017_u32 as i32;
/// `STATUS_INSUFFICIENT_RESOURCES`.
pub const STATUS_INSUFFICIENT_RESOURCES: NtStatus = 0xC000_009A_u32 as i32;
/// `STATUS_NOINTERFACE`.
pub const STATUS_NOINTERFACE: NtStatus = 0xC000_02B9_u32 as i32;

/// `MIT_GUID`: the module id's union holds a GUID.
pub const MIT_GUID: i32 = 1;
/// `MIT_IF_LUID`: the module id's union holds an interface LUID.
pub const MIT_IF_LUID: i32 = 2;

/// The union inside `NPI_MODULEID`.
#[repr(C)]
#[derive(Clone, Copy)]
pub union NpiModuleIdValue {
    /// Valid when the type is `MIT_GUID`.
    pub guid: Guid,
    /// Valid when the type is `MIT_IF_LUID`.
    pub if_luid: Luid,
}

impl core::fmt::Debug for NpiModuleIdValue {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("NpiModuleIdValue { .. }")
    }
}

/// `NPI_MODULEID`: 24 bytes, `Type` at 4, the union at 8.
#[doc(alias = "NPI_MODULEID")]
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct NpiModuleId {
    /// `Length`: `sizeof(NPI_MODULEID)`.
    pub length: u16,
    /// `Type`: [`MIT_GUID`] or [`MIT_IF_LUID`] (`NPI_MODULEID_TYPE`, a C enum: 32 bits).
    pub kind: i32,
    /// The anonymous union (`Guid` / `IfLuid`).
    pub value: NpiModuleIdValue,
}

/// `NPI_REGISTRATION_INSTANCE`: 40 bytes.
#[doc(alias = "NPI_REGISTRATION_INSTANCE")]
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct NpiRegistrationInstance {
    /// `Version`.
    pub version: u16,
    /// `Size`: at least `sizeof(NPI_REGISTRATION_INSTANCE)`.
    pub size: u16,
    /// `NpiId`: the only field the registrar matches on.
    pub npi_id: *const Guid,
    /// `ModuleId`.
    pub module_id: *const NpiModuleId,
    /// `Number`.
    pub number: u32,
    /// `NpiSpecificCharacteristics`: opaque to the registrar.
    pub npi_specific_characteristics: *const c_void,
}

/// `NPI_CLIENT_ATTACH_PROVIDER_FN`.
#[doc(alias = "NPI_CLIENT_ATTACH_PROVIDER_FN")]
pub type ClientAttachProviderFn = unsafe extern "system" fn(
    nmr_binding_handle: Handle,
    client_context: *mut c_void,
    provider_registration_instance: *const NpiRegistrationInstance,
) -> NtStatus;

/// `NPI_CLIENT_DETACH_PROVIDER_FN`.
#[doc(alias = "NPI_CLIENT_DETACH_PROVIDER_FN")]
pub type ClientDetachProviderFn =
    unsafe extern "system" fn(client_binding_context: *mut c_void) -> NtStatus;

/// `NPI_CLIENT_CLEANUP_BINDING_CONTEXT_FN`.
#[doc(alias = "NPI_CLIENT_CLEANUP_BINDING_CONTEXT_FN")]
pub type ClientCleanupBindingContextFn =
    unsafe extern "system" fn(client_binding_context: *mut c_void);

/// `NPI_PROVIDER_ATTACH_CLIENT_FN`.
#[doc(alias = "NPI_PROVIDER_ATTACH_CLIENT_FN")]
pub type ProviderAttachClientFn = unsafe extern "system" fn(
    nmr_binding_handle: Handle,
    provider_context: *mut c_void,
    client_registration_instance: *const NpiRegistrationInstance,
    client_binding_context: *mut c_void,
    client_dispatch: *const c_void,
    provider_binding_context: *mut *mut c_void,
    provider_dispatch: *mut *const c_void,
) -> NtStatus;

/// `NPI_PROVIDER_DETACH_CLIENT_FN`.
#[doc(alias = "NPI_PROVIDER_DETACH_CLIENT_FN")]
pub type ProviderDetachClientFn =
    unsafe extern "system" fn(provider_binding_context: *mut c_void) -> NtStatus;

/// `NPI_PROVIDER_CLEANUP_BINDING_CONTEXT_FN`.
#[doc(alias = "NPI_PROVIDER_CLEANUP_BINDING_CONTEXT_FN")]
pub type ProviderCleanupBindingContextFn =
    unsafe extern "system" fn(provider_binding_context: *mut c_void);

/// `NPI_CLIENT_CHARACTERISTICS`: 72 bytes.
#[doc(alias = "NPI_CLIENT_CHARACTERISTICS")]
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct NpiClientCharacteristics {
    /// `Version`.
    pub version: u16,
    /// `Length`: at least `sizeof(NPI_CLIENT_CHARACTERISTICS)`.
    pub length: u16,
    /// `ClientAttachProvider` (required).
    pub client_attach_provider: Option<ClientAttachProviderFn>,
    /// `ClientDetachProvider` (required).
    pub client_detach_provider: Option<ClientDetachProviderFn>,
    /// `ClientCleanupBindingContext` (optional).
    pub client_cleanup_binding_context: Option<ClientCleanupBindingContextFn>,
    /// `ClientRegistrationInstance`, embedded by value.
    pub client_registration_instance: NpiRegistrationInstance,
}

/// `NPI_PROVIDER_CHARACTERISTICS`: 72 bytes.
#[doc(alias = "NPI_PROVIDER_CHARACTERISTICS")]
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct NpiProviderCharacteristics {
    /// `Version`.
    pub version: u16,
    /// `Length`: at least `sizeof(NPI_PROVIDER_CHARACTERISTICS)`.
    pub length: u16,
    /// `ProviderAttachClient` (required).
    pub provider_attach_client: Option<ProviderAttachClientFn>,
    /// `ProviderDetachClient` (required).
    pub provider_detach_client: Option<ProviderDetachClientFn>,
    /// `ProviderCleanupBindingContext` (optional).
    pub provider_cleanup_binding_context: Option<ProviderCleanupBindingContextFn>,
    /// `ProviderRegistrationInstance`, embedded by value.
    pub provider_registration_instance: NpiRegistrationInstance,
}

/// One row of the layout table: a C expression (`sizeof(T)` or `offsetof(T, F)`) and the
/// value Rust computes for it. `tests/c_programs.rs` compiles a C program that prints the
/// same expressions and compares.
pub const LAYOUT: &[(&str, usize)] = &[
    ("sizeof(GUID)", size_of::<Guid>()),
    ("sizeof(LUID)", size_of::<Luid>()),
    ("sizeof(NPI_MODULEID)", size_of::<NpiModuleId>()),
    (
        "offsetof(NPI_MODULEID, Type)",
        core::mem::offset_of!(NpiModuleId, kind),
    ),
    (
        "offsetof(NPI_MODULEID, Guid)",
        core::mem::offset_of!(NpiModuleId, value),
    ),
    (
        "offsetof(NPI_MODULEID, IfLuid)",
        core::mem::offset_of!(NpiModuleId, value),
    ),
    (
        "sizeof(NPI_REGISTRATION_INSTANCE)",
        size_of::<NpiRegistrationInstance>(),
    ),
    (
        "offsetof(NPI_REGISTRATION_INSTANCE, Version)",
        core::mem::offset_of!(NpiRegistrationInstance, version),
    ),
    (
        "offsetof(NPI_REGISTRATION_INSTANCE, Size)",
        core::mem::offset_of!(NpiRegistrationInstance, size),
    ),
    (
        "offsetof(NPI_REGISTRATION_INSTANCE, NpiId)",
        core::mem::offset_of!(NpiRegistrationInstance, npi_id),
    ),
    (
        "offsetof(NPI_REGISTRATION_INSTANCE, ModuleId)",
        core::mem::offset_of!(NpiRegistrationInstance, module_id),
    ),
    (
        "offsetof(NPI_REGISTRATION_INSTANCE, Number)",
        core::mem::offset_of!(NpiRegistrationInstance, number),
    ),
    (
        "offsetof(NPI_REGISTRATION_INSTANCE, NpiSpecificCharacteristics)",
        core::mem::offset_of!(NpiRegistrationInstance, npi_specific_characteristics),
    ),
    (
        "sizeof(NPI_CLIENT_CHARACTERISTICS)",
        size_of::<NpiClientCharacteristics>(),
    ),
    (
        "offsetof(NPI_CLIENT_CHARACTERISTICS, Version)",
        core::mem::offset_of!(NpiClientCharacteristics, version),
    ),
    (
        "offsetof(NPI_CLIENT_CHARACTERISTICS, Length)",
        core::mem::offset_of!(NpiClientCharacteristics, length),
    ),
    (
        "offsetof(NPI_CLIENT_CHARACTERISTICS, ClientAttachProvider)",
        core::mem::offset_of!(NpiClientCharacteristics, client_attach_provider),
    ),
    (
        "offsetof(NPI_CLIENT_CHARACTERISTICS, ClientDetachProvider)",
        core::mem::offset_of!(NpiClientCharacteristics, client_detach_provider),
    ),
    (
        "offsetof(NPI_CLIENT_CHARACTERISTICS, ClientCleanupBindingContext)",
        core::mem::offset_of!(NpiClientCharacteristics, client_cleanup_binding_context),
    ),
    (
        "offsetof(NPI_CLIENT_CHARACTERISTICS, ClientRegistrationInstance)",
        core::mem::offset_of!(NpiClientCharacteristics, client_registration_instance),
    ),
    (
        "sizeof(NPI_PROVIDER_CHARACTERISTICS)",
        size_of::<NpiProviderCharacteristics>(),
    ),
    (
        "offsetof(NPI_PROVIDER_CHARACTERISTICS, Version)",
        core::mem::offset_of!(NpiProviderCharacteristics, version),
    ),
    (
        "offsetof(NPI_PROVIDER_CHARACTERISTICS, Length)",
        core::mem::offset_of!(NpiProviderCharacteristics, length),
    ),
    (
        "offsetof(NPI_PROVIDER_CHARACTERISTICS, ProviderAttachClient)",
        core::mem::offset_of!(NpiProviderCharacteristics, provider_attach_client),
    ),
    (
        "offsetof(NPI_PROVIDER_CHARACTERISTICS, ProviderDetachClient)",
        core::mem::offset_of!(NpiProviderCharacteristics, provider_detach_client),
    ),
    (
        "offsetof(NPI_PROVIDER_CHARACTERISTICS, ProviderCleanupBindingContext)",
        core::mem::offset_of!(NpiProviderCharacteristics, provider_cleanup_binding_context),
    ),
    (
        "offsetof(NPI_PROVIDER_CHARACTERISTICS, ProviderRegistrationInstance)",
        core::mem::offset_of!(NpiProviderCharacteristics, provider_registration_instance),
    ),
];

/// The constants of the header, as `(name, value)`; checked against the C compiler's view
/// like [`LAYOUT`].
pub const CONSTANTS: &[(&str, i64)] = &[
    ("STATUS_SUCCESS", STATUS_SUCCESS as i64),
    ("STATUS_PENDING", STATUS_PENDING as i64),
    ("STATUS_INVALID_PARAMETER", STATUS_INVALID_PARAMETER as i64),
    ("STATUS_NO_MEMORY", STATUS_NO_MEMORY as i64),
    (
        "STATUS_INSUFFICIENT_RESOURCES",
        STATUS_INSUFFICIENT_RESOURCES as i64,
    ),
    ("STATUS_NOINTERFACE", STATUS_NOINTERFACE as i64),
    ("MIT_GUID", MIT_GUID as i64),
    ("MIT_IF_LUID", MIT_IF_LUID as i64),
];

// Windows x64 layouts; on 32-bit targets the pointer-holding structures are smaller.
#[cfg(target_pointer_width = "64")]
const _: () = {
    use core::mem::{align_of, offset_of};
    assert!(size_of::<Guid>() == 16 && align_of::<Guid>() == 4);
    assert!(size_of::<Luid>() == 8 && align_of::<Luid>() == 4);
    assert!(size_of::<NpiModuleId>() == 24 && align_of::<NpiModuleId>() == 4);
    assert!(offset_of!(NpiModuleId, kind) == 4);
    assert!(offset_of!(NpiModuleId, value) == 8);
    assert!(size_of::<NpiRegistrationInstance>() == 40);
    assert!(offset_of!(NpiRegistrationInstance, size) == 2);
    assert!(offset_of!(NpiRegistrationInstance, npi_id) == 8);
    assert!(offset_of!(NpiRegistrationInstance, module_id) == 16);
    assert!(offset_of!(NpiRegistrationInstance, number) == 24);
    assert!(offset_of!(NpiRegistrationInstance, npi_specific_characteristics) == 32);
    assert!(size_of::<NpiClientCharacteristics>() == 72);
    assert!(offset_of!(NpiClientCharacteristics, length) == 2);
    assert!(offset_of!(NpiClientCharacteristics, client_attach_provider) == 8);
    assert!(offset_of!(NpiClientCharacteristics, client_detach_provider) == 16);
    assert!(offset_of!(NpiClientCharacteristics, client_cleanup_binding_context) == 24);
    assert!(offset_of!(NpiClientCharacteristics, client_registration_instance) == 32);
    assert!(size_of::<NpiProviderCharacteristics>() == 72);
    assert!(offset_of!(NpiProviderCharacteristics, length) == 2);
    assert!(offset_of!(NpiProviderCharacteristics, provider_attach_client) == 8);
    assert!(offset_of!(NpiProviderCharacteristics, provider_detach_client) == 16);
    assert!(offset_of!(NpiProviderCharacteristics, provider_cleanup_binding_context) == 24);
    assert!(offset_of!(NpiProviderCharacteristics, provider_registration_instance) == 32);
    assert!(size_of::<Option<ClientAttachProviderFn>>() == 8);
};
