//! The nine exported NMR functions and the adapters that let C callbacks sit behind the
//! registrar's untyped callback traits. All of the crate's `unsafe` code is here.
//!
//! Contract with the C caller (the WDK's, restated in `include/netioddk.h`):
//! * the characteristics structure, and the `NPIID`, `NPI_MODULEID` and NPI-specific
//!   characteristics it points to, stay valid and unchanged until
//!   `NmrWaitFor*DeregisterComplete` returns; we keep the pointer, never a copy, and the
//!   registrar calls no callback of a registration after its wait returned;
//! * callbacks may be called on any thread, as in the kernel.
//!
//! What we check before trusting anything: NULL pointers, `Length`/`Size` not smaller than
//! the structure, non-NULL attach/detach callbacks, non-NULL `NpiId`/`ModuleId`, and every
//! handle (the registrar decodes handles as generation-checked ids, never as pointers).
//! Nothing unwinds across the boundary: every export runs inside `catch_unwind`.

use crate::abi::{
    Handle, MIT_GUID, MIT_IF_LUID, NpiClientCharacteristics, NpiModuleId, NpiModuleIdValue,
    NpiProviderCharacteristics, NpiRegistrationInstance, NtStatus, STATUS_PENDING, STATUS_SUCCESS,
};
use crate::error::AbiError;
use core::ffi::c_void;
use core::ptr;
use nmr::{
    BindingHandle, ClientCallbacks, Context, DetachStatus, Guid, ModuleId, NpiId,
    ProviderAttachment, ProviderCallbacks, Registrar, RegistrationHandle, RegistrationInstance,
    Status,
};
use std::panic::{AssertUnwindSafe, catch_unwind};

#[cfg(not(target_pointer_width = "64"))]
compile_error!("libnetio needs 64-bit pointers: a HANDLE carries a 64-bit registrar id");

/// A registrar id as a C `HANDLE`: the integer value, with no provenance (it is never
/// dereferenced by anyone).
fn to_handle(raw: u64) -> Handle {
    #[expect(
        clippy::cast_possible_truncation,
        reason = "64-bit targets only (checked above)"
    )]
    ptr::without_provenance_mut(raw as usize)
}

/// A C `HANDLE` back to the registrar's id; the registrar validates it.
fn from_handle(h: Handle) -> u64 {
    h.addr() as u64
}

/// Runs an export's body: no panic crosses the boundary, and rejections are logged.
fn boundary(function: &'static str, body: impl FnOnce() -> Result<NtStatus, AbiError>) -> NtStatus {
    let result = catch_unwind(AssertUnwindSafe(body)).unwrap_or(Err(AbiError::Panicked));
    match result {
        Ok(status) => status,
        Err(e) => {
            tracing::warn!(target: "netio", function, error = %e, "call rejected");
            e.status()
        }
    }
}

/// Like [`boundary`] for the two void functions: a rejection is only logged.
fn boundary_void(function: &'static str, body: impl FnOnce() -> Result<(), AbiError>) {
    let result = catch_unwind(AssertUnwindSafe(body)).unwrap_or(Err(AbiError::Panicked));
    if let Err(e) = result {
        tracing::warn!(target: "netio", function, error = %e, "call ignored");
    }
}

/// A pointer to the caller's characteristics, shared with the registrar's threads.
struct Borrowed<T>(*const T);

// SAFETY: the pointee is the caller's characteristics structure, which the NMR contract
// keeps valid and unmodified for the life of the registration; we only read it. The C
// callbacks it names are, by the same contract, callable from any thread.
unsafe impl<T> Send for Borrowed<T> {}
// SAFETY: as above; shared reads only.
unsafe impl<T> Sync for Borrowed<T> {}

impl<T> Borrowed<T> {
    fn get(&self) -> &T {
        // SAFETY: non-NULL and valid for the registration's life (checked at registration;
        // the caller's contract), and only called from the registration's callbacks, which
        // the registrar never runs after the registration's wait returned.
        unsafe { &*self.0 }
    }
}

/// Reads the caller's registration instance into the registrar's form, checking what can be
/// checked. `instance` points into characteristics already known to be long enough.
fn read_instance(instance: &NpiRegistrationInstance) -> Result<RegistrationInstance, AbiError> {
    let expected = size_of::<NpiRegistrationInstance>();
    if usize::from(instance.size) < expected {
        return Err(AbiError::RegistrationInstanceTooShort {
            size: instance.size,
            expected,
        });
    }
    if instance.npi_id.is_null() {
        return Err(AbiError::NullNpiId);
    }
    if instance.module_id.is_null() {
        return Err(AbiError::NullModuleId);
    }
    // SAFETY: non-NULL; the caller keeps the NPIID valid for the registration's life.
    let npi = unsafe { instance.npi_id.read_unaligned() };
    // SAFETY: non-NULL; the caller keeps the NPI_MODULEID valid likewise.
    let module: NpiModuleId = unsafe { instance.module_id.read_unaligned() };
    let module_id = if module.kind == MIT_IF_LUID {
        // SAFETY: every bit pattern is a valid `Luid`; the union is plain data.
        ModuleId::IfLuid(unsafe { module.value.if_luid })
    } else {
        // SAFETY: every bit pattern is a valid `Guid`. Unknown types (not MIT_GUID) are
        // passed through as GUIDs: the registrar never interprets module ids.
        ModuleId::Guid(unsafe { module.value.guid })
    };
    Ok(
        RegistrationInstance::new(NpiId(npi), module_id, instance.number)
            .with_raw(Context::from_ptr(ptr::from_ref(instance))),
    )
}

/// Reads the `Length` field (the first two `u16`s are always readable) and then the whole
/// structure.
fn checked_characteristics<'a, T>(
    chars: *const T,
    length: impl FnOnce(*const T) -> u16,
) -> Result<&'a T, AbiError> {
    if chars.is_null() {
        return Err(AbiError::NullCharacteristics);
    }
    let length = length(chars);
    let expected = size_of::<T>();
    if usize::from(length) < expected {
        return Err(AbiError::CharacteristicsTooShort { length, expected });
    }
    // SAFETY: non-NULL, and the caller declares (Length) at least sizeof(T) readable bytes,
    // valid for the registration's life.
    Ok(unsafe { &*chars })
}

/// Calls `f` with a pointer to `instance.raw`, or, for a peer registered through the Rust
/// API (no C structure), with a temporary `NPI_REGISTRATION_INSTANCE` built from its
/// fields that lives for the duration of the call.
fn with_raw_instance<R>(
    instance: &RegistrationInstance,
    f: impl FnOnce(*const NpiRegistrationInstance) -> R,
) -> R {
    if !instance.raw.is_null() {
        return f(instance.raw.as_ptr().cast_const().cast());
    }
    let npi: Guid = instance.npi_id.0;
    let module = match instance.module_id {
        ModuleId::Guid(guid) => NpiModuleId {
            length: size_of::<NpiModuleId>() as u16,
            kind: MIT_GUID,
            value: NpiModuleIdValue { guid },
        },
        ModuleId::IfLuid(if_luid) => NpiModuleId {
            length: size_of::<NpiModuleId>() as u16,
            kind: MIT_IF_LUID,
            value: NpiModuleIdValue { if_luid },
        },
    };
    let raw = NpiRegistrationInstance {
        version: 0,
        size: size_of::<NpiRegistrationInstance>() as u16,
        npi_id: &npi,
        module_id: &module,
        number: instance.number,
        npi_specific_characteristics: ptr::null(),
    };
    f(&raw)
}

fn detach_status(side: &'static str, status: NtStatus) -> DetachStatus {
    match status {
        STATUS_PENDING => DetachStatus::Pending,
        STATUS_SUCCESS => DetachStatus::Done,
        other => {
            tracing::warn!(target: "netio", side, status = other, "detach callback returned neither SUCCESS nor PENDING; treated as done");
            DetachStatus::Done
        }
    }
}

/// A C client module behind [`ClientCallbacks`].
struct CClient {
    chars: Borrowed<NpiClientCharacteristics>,
    context: Context,
}

impl ClientCallbacks for CClient {
    fn attach_provider(&self, binding: BindingHandle, provider: &RegistrationInstance) -> Status {
        let Some(attach) = self.chars.get().client_attach_provider else {
            return Status::NOINTERFACE;
        };
        let status = with_raw_instance(provider, |raw| {
            // SAFETY: the module's own callback, called as netioddk.h declares it; the
            // registration instance is valid for the call.
            unsafe { attach(to_handle(binding.to_raw()), self.context.as_ptr(), raw) }
        });
        Status(status)
    }

    fn detach_provider(&self, client_binding_context: Context) -> DetachStatus {
        let Some(detach) = self.chars.get().client_detach_provider else {
            return DetachStatus::Done;
        };
        // SAFETY: the module's own callback with the binding context it gave us.
        let status = unsafe { detach(client_binding_context.as_ptr()) };
        detach_status("client", status)
    }

    fn cleanup_binding_context(&self, client_binding_context: Context) {
        if let Some(cleanup) = self.chars.get().client_cleanup_binding_context {
            // SAFETY: the module's own callback with the binding context it gave us.
            unsafe { cleanup(client_binding_context.as_ptr()) }
        }
    }
}

/// A C provider module behind [`ProviderCallbacks`].
struct CProvider {
    chars: Borrowed<NpiProviderCharacteristics>,
    context: Context,
}

impl ProviderCallbacks for CProvider {
    fn attach_client(
        &self,
        binding: BindingHandle,
        client: &RegistrationInstance,
        client_binding_context: Context,
        client_dispatch: Context,
    ) -> Result<ProviderAttachment, Status> {
        let Some(attach) = self.chars.get().provider_attach_client else {
            return Err(Status::NOINTERFACE);
        };
        let mut binding_context: *mut c_void = ptr::null_mut();
        let mut dispatch: *const c_void = ptr::null();
        let status = with_raw_instance(client, |raw| {
            // SAFETY: the module's own callback, called as netioddk.h declares it; the out
            // pointers are to our locals, the registration instance is valid for the call.
            unsafe {
                attach(
                    to_handle(binding.to_raw()),
                    self.context.as_ptr(),
                    raw,
                    client_binding_context.as_ptr(),
                    client_dispatch.as_ptr().cast_const(),
                    &mut binding_context,
                    &mut dispatch,
                )
            }
        });
        if status == STATUS_SUCCESS {
            Ok(ProviderAttachment {
                binding_context: Context(binding_context),
                dispatch: Context::from_ptr(dispatch),
            })
        } else {
            Err(Status(status))
        }
    }

    fn detach_client(&self, provider_binding_context: Context) -> DetachStatus {
        let Some(detach) = self.chars.get().provider_detach_client else {
            return DetachStatus::Done;
        };
        // SAFETY: the module's own callback with the binding context it gave us.
        let status = unsafe { detach(provider_binding_context.as_ptr()) };
        detach_status("provider", status)
    }

    fn cleanup_binding_context(&self, provider_binding_context: Context) {
        if let Some(cleanup) = self.chars.get().provider_cleanup_binding_context {
            // SAFETY: the module's own callback with the binding context it gave us.
            unsafe { cleanup(provider_binding_context.as_ptr()) }
        }
    }
}

/// Clears `*out` (if given) so a failed registration leaves NULL behind.
fn clear_handle_out(out: *mut Handle) -> Result<(), AbiError> {
    if out.is_null() {
        return Err(AbiError::NullHandleOut);
    }
    // SAFETY: non-NULL; the caller passes a writable HANDLE.
    unsafe { out.write(ptr::null_mut()) };
    Ok(())
}

/// Writes the new handle to `*out` (the registrar's `publish`, before any attach).
fn publish_handle(out: *mut Handle, h: RegistrationHandle) {
    // SAFETY: checked non-NULL by `clear_handle_out` before registering; the caller passes
    // a writable HANDLE.
    unsafe { out.write(to_handle(h.to_raw())) };
}

/// `NmrRegisterClient`: registers a client module; `ClientAttachProvider` runs for every
/// matching provider before this returns, after `*nmr_client_handle` has been written.
///
/// Returns `STATUS_SUCCESS`, or `STATUS_INVALID_PARAMETER` for a NULL pointer, a `Length` or
/// `Size` that is too small, a NULL attach or detach callback, or a NULL `NpiId`/`ModuleId`
/// (`*nmr_client_handle` is then NULL).
///
/// # Safety
/// `client_characteristics` must point to a valid `NPI_CLIENT_CHARACTERISTICS` (and the ids
/// it points to) that stays valid and unchanged until `NmrWaitForClientDeregisterComplete`
/// returns; `nmr_client_handle` must be writable. Both may be NULL (rejected).
#[unsafe(no_mangle)]
pub unsafe extern "system" fn NmrRegisterClient(
    client_characteristics: *const NpiClientCharacteristics,
    client_context: *mut c_void,
    nmr_client_handle: *mut Handle,
) -> NtStatus {
    boundary("NmrRegisterClient", || {
        clear_handle_out(nmr_client_handle)?;
        let chars = checked_characteristics(client_characteristics, |p| {
            // SAFETY: non-NULL; the first four bytes (Version, Length) are always present.
            unsafe { (*p).length }
        })?;
        if chars.client_attach_provider.is_none() {
            return Err(AbiError::MissingAttachCallback);
        }
        if chars.client_detach_provider.is_none() {
            return Err(AbiError::MissingDetachCallback);
        }
        let instance = read_instance(&chars.client_registration_instance)?;
        let callbacks = Box::new(CClient {
            chars: Borrowed(client_characteristics),
            context: Context(client_context),
        });
        Registrar::global().register_client(instance, callbacks, |h| {
            publish_handle(nmr_client_handle, h);
        })?;
        Ok(STATUS_SUCCESS)
    })
}

/// `NmrRegisterProvider`: registers a provider module; matching clients'
/// `ClientAttachProvider` run before this returns, after `*nmr_provider_handle` has been
/// written. Validation and return values as for [`NmrRegisterClient`].
///
/// # Safety
/// As for [`NmrRegisterClient`], with an `NPI_PROVIDER_CHARACTERISTICS`.
#[unsafe(no_mangle)]
pub unsafe extern "system" fn NmrRegisterProvider(
    provider_characteristics: *const NpiProviderCharacteristics,
    provider_context: *mut c_void,
    nmr_provider_handle: *mut Handle,
) -> NtStatus {
    boundary("NmrRegisterProvider", || {
        clear_handle_out(nmr_provider_handle)?;
        let chars = checked_characteristics(provider_characteristics, |p| {
            // SAFETY: non-NULL; the first four bytes (Version, Length) are always present.
            unsafe { (*p).length }
        })?;
        if chars.provider_attach_client.is_none() {
            return Err(AbiError::MissingAttachCallback);
        }
        if chars.provider_detach_client.is_none() {
            return Err(AbiError::MissingDetachCallback);
        }
        let instance = read_instance(&chars.provider_registration_instance)?;
        let callbacks = Box::new(CProvider {
            chars: Borrowed(provider_characteristics),
            context: Context(provider_context),
        });
        Registrar::global().register_provider(instance, callbacks, |h| {
            publish_handle(nmr_provider_handle, h);
        })?;
        Ok(STATUS_SUCCESS)
    })
}

/// `NmrDeregisterClient`: starts deregistration and returns `STATUS_PENDING` (always, even
/// when nothing was bound); detach callbacks may run inside this call.
/// `STATUS_INVALID_PARAMETER` for an unknown, stale or wrong-kind handle, or a second call.
///
/// # Safety
/// None beyond the C API's: any handle value is accepted and checked.
#[unsafe(no_mangle)]
pub unsafe extern "system" fn NmrDeregisterClient(nmr_client_handle: Handle) -> NtStatus {
    boundary("NmrDeregisterClient", || {
        let h = RegistrationHandle::from_raw(from_handle(nmr_client_handle));
        Registrar::global().deregister_client(h)?;
        Ok(STATUS_PENDING)
    })
}

/// `NmrDeregisterProvider`; see [`NmrDeregisterClient`].
///
/// # Safety
/// None beyond the C API's: any handle value is accepted and checked.
#[unsafe(no_mangle)]
pub unsafe extern "system" fn NmrDeregisterProvider(nmr_provider_handle: Handle) -> NtStatus {
    boundary("NmrDeregisterProvider", || {
        let h = RegistrationHandle::from_raw(from_handle(nmr_provider_handle));
        Registrar::global().deregister_provider(h)?;
        Ok(STATUS_PENDING)
    })
}

/// `NmrWaitForClientDeregisterComplete`: blocks until every binding of the client is
/// detached and both cleanups ran, then returns `STATUS_SUCCESS`; the handle is dead
/// afterwards. `STATUS_INVALID_PARAMETER` before deregistration, for a bad handle, or from
/// inside one of the registration's own callbacks (which would deadlock).
///
/// # Safety
/// None beyond the C API's: any handle value is accepted and checked.
#[unsafe(no_mangle)]
pub unsafe extern "system" fn NmrWaitForClientDeregisterComplete(
    nmr_client_handle: Handle,
) -> NtStatus {
    boundary("NmrWaitForClientDeregisterComplete", || {
        let h = RegistrationHandle::from_raw(from_handle(nmr_client_handle));
        Registrar::global().wait_for_client_deregister_complete(h)?;
        Ok(STATUS_SUCCESS)
    })
}

/// `NmrWaitForProviderDeregisterComplete`; see [`NmrWaitForClientDeregisterComplete`].
///
/// # Safety
/// None beyond the C API's: any handle value is accepted and checked.
#[unsafe(no_mangle)]
pub unsafe extern "system" fn NmrWaitForProviderDeregisterComplete(
    nmr_provider_handle: Handle,
) -> NtStatus {
    boundary("NmrWaitForProviderDeregisterComplete", || {
        let h = RegistrationHandle::from_raw(from_handle(nmr_provider_handle));
        Registrar::global().wait_for_provider_deregister_complete(h)?;
        Ok(STATUS_SUCCESS)
    })
}

/// `NmrClientAttachProvider`: from inside `ClientAttachProvider`, runs the provider's
/// `ProviderAttachClient` and returns its status unchanged; on `STATUS_SUCCESS` the two out
/// values are set (otherwise they are left alone). `STATUS_INVALID_PARAMETER` for a NULL out
/// pointer or a bad handle; `STATUS_INVALID_DEVICE_STATE` outside the attach callback or
/// after a success.
///
/// # Safety
/// `provider_binding_context` and `provider_dispatch` must be writable (NULL is rejected).
#[unsafe(no_mangle)]
pub unsafe extern "system" fn NmrClientAttachProvider(
    nmr_binding_handle: Handle,
    client_binding_context: *mut c_void,
    client_dispatch: *const c_void,
    provider_binding_context: *mut *mut c_void,
    provider_dispatch: *mut *const c_void,
) -> NtStatus {
    boundary("NmrClientAttachProvider", || {
        if provider_binding_context.is_null() || provider_dispatch.is_null() {
            return Err(AbiError::NullOutPointer);
        }
        let binding = BindingHandle::from_raw(from_handle(nmr_binding_handle));
        let result = Registrar::global().client_attach_provider(
            binding,
            Context(client_binding_context),
            Context::from_ptr(client_dispatch),
        );
        match result {
            Ok(attachment) => {
                // SAFETY: non-NULL (checked above); the caller passes writable out pointers.
                unsafe { provider_binding_context.write(attachment.binding_context.as_ptr()) };
                // SAFETY: as above.
                unsafe { provider_dispatch.write(attachment.dispatch.as_ptr().cast_const()) };
                Ok(STATUS_SUCCESS)
            }
            // The provider's refusal (or the registrar's misuse status) goes back as-is.
            Err(status) => Ok(status.0),
        }
    })
}

/// `NmrClientDetachProviderComplete`: the client finished a detach it answered
/// `STATUS_PENDING`; both cleanups may run inside this call. Misuse (bad handle, nothing
/// pending, completing twice) is ignored and logged.
///
/// # Safety
/// None beyond the C API's: any handle value is accepted and checked.
#[unsafe(no_mangle)]
pub unsafe extern "system" fn NmrClientDetachProviderComplete(nmr_binding_handle: Handle) {
    boundary_void("NmrClientDetachProviderComplete", || {
        let binding = BindingHandle::from_raw(from_handle(nmr_binding_handle));
        Ok(Registrar::global().client_detach_provider_complete(binding)?)
    });
}

/// `NmrProviderDetachClientComplete`; see [`NmrClientDetachProviderComplete`].
///
/// # Safety
/// None beyond the C API's: any handle value is accepted and checked.
#[unsafe(no_mangle)]
pub unsafe extern "system" fn NmrProviderDetachClientComplete(nmr_binding_handle: Handle) {
    boundary_void("NmrProviderDetachClientComplete", || {
        let binding = BindingHandle::from_raw(from_handle(nmr_binding_handle));
        Ok(Registrar::global().provider_detach_client_complete(binding)?)
    });
}
