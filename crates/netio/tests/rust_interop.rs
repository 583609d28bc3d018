//! C-ABI modules and Rust modules share `nmr::Registrar::global()`: a module registered
//! through the nine `Nmr*` functions binds to one registered through the Rust API, in both
//! directions. A Rust peer has no C `NPI_REGISTRATION_INSTANCE`, so the C side gets one
//! built from its fields for the duration of the attach call.

use core::ffi::c_void;
use core::ptr;
use netio::abi::{
    Handle, MIT_GUID, NpiClientCharacteristics, NpiModuleId, NpiModuleIdValue,
    NpiProviderCharacteristics, NpiRegistrationInstance, NtStatus, STATUS_PENDING, STATUS_SUCCESS,
};
use netio::ffi::{
    NmrClientAttachProvider, NmrDeregisterClient, NmrDeregisterProvider, NmrRegisterClient,
    NmrRegisterProvider, NmrWaitForClientDeregisterComplete, NmrWaitForProviderDeregisterComplete,
};
use nmr::{
    BindingHandle, ClientCallbacks, Context, DetachStatus, Guid, ModuleId, NpiId,
    ProviderAttachment, ProviderCallbacks, Registrar, RegistrationInstance, Status,
};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// What the C side saw of its Rust peer's registration instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Seen {
    size: u16,
    npi: Guid,
    module_kind: i32,
    module: Guid,
    number: u32,
}

fn read_instance(raw: *const NpiRegistrationInstance) -> Seen {
    assert!(!raw.is_null());
    // SAFETY: the registrar hands the attach callback a valid instance for the call.
    let inst = unsafe { &*raw };
    // SAFETY: as above; NpiId is valid for the call.
    let npi = unsafe { inst.npi_id.read() };
    // SAFETY: as above; ModuleId is valid for the call.
    let module = unsafe { inst.module_id.read() };
    Seen {
        size: inst.size,
        npi,
        module_kind: module.kind,
        // SAFETY: plain data; every bit pattern is a valid Guid.
        module: unsafe { module.value.guid },
        number: inst.number,
    }
}

// ---- a C-ABI client (callbacks in Rust, registered through NmrRegisterClient) ----------

static C_CLIENT_SAW: Mutex<Option<Seen>> = Mutex::new(None);
static C_CLIENT_DETACHES: AtomicUsize = AtomicUsize::new(0);

unsafe extern "system" fn c_client_attach(
    binding: Handle,
    context: *mut c_void,
    provider: *const NpiRegistrationInstance,
) -> NtStatus {
    *C_CLIENT_SAW.lock().unwrap() = Some(read_instance(provider));
    let mut pbc: *mut c_void = ptr::null_mut();
    let mut pd: *const c_void = ptr::null();
    // SAFETY: called from inside ClientAttachProvider with its binding; out pointers are
    // our locals.
    unsafe { NmrClientAttachProvider(binding, context, ptr::null(), &mut pbc, &mut pd) }
}

unsafe extern "system" fn c_client_detach(_ctx: *mut c_void) -> NtStatus {
    C_CLIENT_DETACHES.fetch_add(1, Ordering::SeqCst);
    STATUS_SUCCESS
}

struct RustProvider {
    attaches: AtomicUsize,
    detaches: AtomicUsize,
    client_raw: Mutex<Option<usize>>,
}

impl ProviderCallbacks for RustProvider {
    fn attach_client(
        &self,
        _binding: BindingHandle,
        client: &RegistrationInstance,
        _client_binding_context: Context,
        _client_dispatch: Context,
    ) -> Result<ProviderAttachment, Status> {
        self.attaches.fetch_add(1, Ordering::SeqCst);
        *self.client_raw.lock().unwrap() = Some(client.raw.as_ptr().addr());
        Ok(ProviderAttachment::default())
    }
    fn detach_client(&self, _ctx: Context) -> DetachStatus {
        self.detaches.fetch_add(1, Ordering::SeqCst);
        DetachStatus::Done
    }
}

const NPI_A: u128 = 0x0e7a_1111_2222_3333_4444_5555_6666_7777;
const NPI_B: u128 = 0x0e7a_8888_2222_3333_4444_5555_6666_7777;

#[test]
fn c_client_binds_to_a_rust_provider_and_sees_its_registration_instance() {
    let nmr = Registrar::global();
    let provider = Arc::new(RustProvider {
        attaches: AtomicUsize::new(0),
        detaches: AtomicUsize::new(0),
        client_raw: Mutex::new(None),
    });
    let provider_module = Guid::from_u128(0xAB);
    let ph = nmr
        .register_provider(
            RegistrationInstance::new(NpiId::from_u128(NPI_A), ModuleId::Guid(provider_module), 5),
            provider.clone(),
            |_| {},
        )
        .unwrap();

    let npi = Guid::from_u128(NPI_A);
    let module = NpiModuleId {
        length: size_of::<NpiModuleId>() as u16,
        kind: MIT_GUID,
        value: NpiModuleIdValue {
            guid: Guid::from_u128(0xCD),
        },
    };
    let chars = NpiClientCharacteristics {
        version: 0,
        length: size_of::<NpiClientCharacteristics>() as u16,
        client_attach_provider: Some(c_client_attach),
        client_detach_provider: Some(c_client_detach),
        client_cleanup_binding_context: None,
        client_registration_instance: NpiRegistrationInstance {
            version: 0,
            size: size_of::<NpiRegistrationInstance>() as u16,
            npi_id: &npi,
            module_id: &module,
            number: 0,
            npi_specific_characteristics: ptr::null(),
        },
    };
    let mut handle: Handle = ptr::null_mut();
    // SAFETY: `chars` and the ids it points to outlive the registration (we wait below).
    let status = unsafe { NmrRegisterClient(&chars, ptr::null_mut(), &mut handle) };
    assert_eq!(status, STATUS_SUCCESS);
    assert_eq!(provider.attaches.load(Ordering::SeqCst), 1);
    assert_eq!(
        *C_CLIENT_SAW.lock().unwrap(),
        Some(Seen {
            size: size_of::<NpiRegistrationInstance>() as u16,
            npi,
            module_kind: MIT_GUID,
            module: provider_module,
            number: 5,
        })
    );
    // The Rust provider got the caller's own registration instance, not a copy.
    assert_eq!(
        *provider.client_raw.lock().unwrap(),
        Some(ptr::from_ref(&chars.client_registration_instance).addr())
    );

    // SAFETY: a handle from NmrRegisterClient.
    assert_eq!(unsafe { NmrDeregisterClient(handle) }, STATUS_PENDING);
    // SAFETY: as above.
    let status = unsafe { NmrWaitForClientDeregisterComplete(handle) };
    assert_eq!(status, STATUS_SUCCESS);
    assert_eq!(C_CLIENT_DETACHES.load(Ordering::SeqCst), 1);
    assert_eq!(provider.detaches.load(Ordering::SeqCst), 1);
    nmr.deregister_provider(ph).unwrap();
    nmr.wait_for_provider_deregister_complete(ph).unwrap();
}

// ---- a C-ABI provider and a Rust client -------------------------------------------------

static C_PROVIDER_SAW: Mutex<Option<Seen>> = Mutex::new(None);
static C_PROVIDER_DETACHES: AtomicUsize = AtomicUsize::new(0);
static PROVIDER_DISPATCH: u64 = 0xD15_A7C4;

unsafe extern "system" fn c_provider_attach(
    _binding: Handle,
    _context: *mut c_void,
    client: *const NpiRegistrationInstance,
    _client_binding_context: *mut c_void,
    _client_dispatch: *const c_void,
    provider_binding_context: *mut *mut c_void,
    provider_dispatch: *mut *const c_void,
) -> NtStatus {
    *C_PROVIDER_SAW.lock().unwrap() = Some(read_instance(client));
    // SAFETY: the registrar passes writable out pointers.
    unsafe { provider_binding_context.write(ptr::null_mut()) };
    // SAFETY: as above.
    unsafe { provider_dispatch.write(ptr::from_ref(&PROVIDER_DISPATCH).cast()) };
    STATUS_SUCCESS
}

unsafe extern "system" fn c_provider_detach(_ctx: *mut c_void) -> NtStatus {
    C_PROVIDER_DETACHES.fetch_add(1, Ordering::SeqCst);
    STATUS_SUCCESS
}

struct RustClient {
    dispatch: Mutex<Option<usize>>,
}

impl ClientCallbacks for RustClient {
    fn attach_provider(&self, binding: BindingHandle, _provider: &RegistrationInstance) -> Status {
        match Registrar::global().client_attach_provider(binding, Context::NULL, Context::NULL) {
            Ok(a) => {
                *self.dispatch.lock().unwrap() = Some(a.dispatch.as_ptr().addr());
                Status::SUCCESS
            }
            Err(s) => s,
        }
    }
    fn detach_provider(&self, _ctx: Context) -> DetachStatus {
        DetachStatus::Done
    }
}

#[test]
fn rust_client_binds_to_a_c_provider() {
    let npi = Guid::from_u128(NPI_B);
    let module = NpiModuleId {
        length: size_of::<NpiModuleId>() as u16,
        kind: MIT_GUID,
        value: NpiModuleIdValue {
            guid: Guid::from_u128(0xEF),
        },
    };
    let chars = NpiProviderCharacteristics {
        version: 0,
        length: size_of::<NpiProviderCharacteristics>() as u16,
        provider_attach_client: Some(c_provider_attach),
        provider_detach_client: Some(c_provider_detach),
        provider_cleanup_binding_context: None,
        provider_registration_instance: NpiRegistrationInstance {
            version: 0,
            size: size_of::<NpiRegistrationInstance>() as u16,
            npi_id: &npi,
            module_id: &module,
            number: 0,
            npi_specific_characteristics: ptr::null(),
        },
    };
    let mut handle: Handle = ptr::null_mut();
    // SAFETY: `chars` and the ids it points to outlive the registration (we wait below).
    let status = unsafe { NmrRegisterProvider(&chars, ptr::null_mut(), &mut handle) };
    assert_eq!(status, STATUS_SUCCESS);

    let client = Arc::new(RustClient {
        dispatch: Mutex::new(None),
    });
    let client_module = Guid::from_u128(0x12);
    let nmr = Registrar::global();
    let ch = nmr
        .register_client(
            RegistrationInstance::new(NpiId(npi), ModuleId::Guid(client_module), 9),
            client.clone(),
            |_| {},
        )
        .unwrap();
    assert_eq!(
        *client.dispatch.lock().unwrap(),
        Some(ptr::from_ref(&PROVIDER_DISPATCH).addr())
    );
    assert_eq!(
        *C_PROVIDER_SAW.lock().unwrap(),
        Some(Seen {
            size: size_of::<NpiRegistrationInstance>() as u16,
            npi,
            module_kind: MIT_GUID,
            module: client_module,
            number: 9,
        })
    );
    // SAFETY: a handle from NmrRegisterProvider.
    assert_eq!(unsafe { NmrDeregisterProvider(handle) }, STATUS_PENDING);
    // SAFETY: as above.
    let status = unsafe { NmrWaitForProviderDeregisterComplete(handle) };
    assert_eq!(status, STATUS_SUCCESS);
    assert_eq!(C_PROVIDER_DETACHES.load(Ordering::SeqCst), 1);
    nmr.deregister_client(ch).unwrap();
    nmr.wait_for_client_deregister_complete(ch).unwrap();
}
