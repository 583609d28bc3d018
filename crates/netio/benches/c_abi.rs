//! Cost of a registration cycle through the C ABI (the nine exported functions), for
//! comparison with usersim's engine (peers.md §5: 82 ns with no provider, 284 ns with one,
//! g++ -O2 on the same kind of machine). One cycle: `NmrRegisterClient` (attach to every
//! registered provider) → `NmrDeregisterClient` (detach both sides, cleanup) →
//! `NmrWaitForClientDeregisterComplete`.

#![expect(
    missing_docs,
    reason = "criterion_group! generates an undocumented pub fn"
)]

use core::ffi::c_void;
use core::ptr;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use netio::abi::{
    Handle, MIT_GUID, NpiClientCharacteristics, NpiModuleId, NpiModuleIdValue,
    NpiProviderCharacteristics, NpiRegistrationInstance, NtStatus, STATUS_PENDING, STATUS_SUCCESS,
};
use netio::ffi::{
    NmrClientAttachProvider, NmrDeregisterClient, NmrDeregisterProvider, NmrRegisterClient,
    NmrRegisterProvider, NmrWaitForClientDeregisterComplete, NmrWaitForProviderDeregisterComplete,
};
use nmr::{
    BindingHandle, ClientCallbacks, Context, DetachStatus, Guid, ModuleId, NpiId, Registrar,
    RegistrationInstance, Status,
};
use std::sync::Arc;

static NPI: Guid = Guid::from_u128(0xBE_0000_0000_0000_0000_0000_0000_0001);
static MODULE: NpiModuleId = NpiModuleId {
    length: size_of::<NpiModuleId>() as u16,
    kind: MIT_GUID,
    value: NpiModuleIdValue {
        guid: Guid::from_u128(0xBE),
    },
};
static DISPATCH: u64 = 0;

fn instance() -> NpiRegistrationInstance {
    NpiRegistrationInstance {
        version: 0,
        size: size_of::<NpiRegistrationInstance>() as u16,
        npi_id: &NPI,
        module_id: &MODULE,
        number: 0,
        npi_specific_characteristics: ptr::null(),
    }
}

unsafe extern "system" fn client_attach(
    binding: Handle,
    _context: *mut c_void,
    _provider: *const NpiRegistrationInstance,
) -> NtStatus {
    let mut pbc: *mut c_void = ptr::null_mut();
    let mut pd: *const c_void = ptr::null();
    // SAFETY: inside ClientAttachProvider with its binding handle; out pointers are locals.
    unsafe { NmrClientAttachProvider(binding, ptr::null_mut(), ptr::null(), &mut pbc, &mut pd) }
}

unsafe extern "system" fn detach(_ctx: *mut c_void) -> NtStatus {
    STATUS_SUCCESS
}

unsafe extern "system" fn provider_attach(
    _binding: Handle,
    _context: *mut c_void,
    _client: *const NpiRegistrationInstance,
    _cbc: *mut c_void,
    _cd: *const c_void,
    pbc: *mut *mut c_void,
    pd: *mut *const c_void,
) -> NtStatus {
    // SAFETY: the registrar passes writable out pointers.
    unsafe { pbc.write(ptr::null_mut()) };
    // SAFETY: as above.
    unsafe { pd.write(ptr::from_ref(&DISPATCH).cast()) };
    STATUS_SUCCESS
}

fn client_cycle(c: &mut Criterion) {
    let client = NpiClientCharacteristics {
        version: 0,
        length: size_of::<NpiClientCharacteristics>() as u16,
        client_attach_provider: Some(client_attach),
        client_detach_provider: Some(detach),
        client_cleanup_binding_context: None,
        client_registration_instance: instance(),
    };
    let provider = NpiProviderCharacteristics {
        version: 0,
        length: size_of::<NpiProviderCharacteristics>() as u16,
        provider_attach_client: Some(provider_attach),
        provider_detach_client: Some(detach),
        provider_cleanup_binding_context: None,
        provider_registration_instance: instance(),
    };
    let mut group = c.benchmark_group("c_abi_client_cycle");
    for providers in [0_usize, 1, 10] {
        let mut handles = Vec::new();
        for _ in 0..providers {
            let mut h: Handle = ptr::null_mut();
            // SAFETY: `provider` outlives the registration (waited for below).
            let s = unsafe { NmrRegisterProvider(&provider, ptr::null_mut(), &mut h) };
            assert_eq!(s, STATUS_SUCCESS);
            handles.push(h);
        }
        group.bench_function(BenchmarkId::from_parameter(providers), |b| {
            b.iter(|| {
                let mut h: Handle = ptr::null_mut();
                // SAFETY: `client` outlives the registration (waited for in this iteration).
                let s = unsafe { NmrRegisterClient(&client, ptr::null_mut(), &mut h) };
                assert_eq!(s, STATUS_SUCCESS);
                // SAFETY: a handle from NmrRegisterClient.
                let s = unsafe { NmrDeregisterClient(h) };
                assert_eq!(s, STATUS_PENDING);
                // SAFETY: as above.
                let s = unsafe { NmrWaitForClientDeregisterComplete(h) };
                assert_eq!(s, STATUS_SUCCESS);
            });
        });
        for h in handles {
            // SAFETY: handles from NmrRegisterProvider.
            let s = unsafe { NmrDeregisterProvider(h) };
            assert_eq!(s, STATUS_PENDING);
            // SAFETY: as above.
            let s = unsafe { NmrWaitForProviderDeregisterComplete(h) };
            assert_eq!(s, STATUS_SUCCESS);
        }
    }
    group.finish();
}

/// The same cycle against the same C providers, with the client written against the Rust
/// untyped core instead of the C ABI: the difference is the C boundary's cost.
struct RustClient;

impl ClientCallbacks for RustClient {
    fn attach_provider(&self, binding: BindingHandle, _provider: &RegistrationInstance) -> Status {
        match Registrar::global().client_attach_provider(binding, Context::NULL, Context::NULL) {
            Ok(_) => Status::SUCCESS,
            Err(s) => s,
        }
    }
    fn detach_provider(&self, _ctx: Context) -> DetachStatus {
        DetachStatus::Done
    }
}

fn rust_client_cycle(c: &mut Criterion) {
    let provider = NpiProviderCharacteristics {
        version: 0,
        length: size_of::<NpiProviderCharacteristics>() as u16,
        provider_attach_client: Some(provider_attach),
        provider_detach_client: Some(detach),
        provider_cleanup_binding_context: None,
        provider_registration_instance: instance(),
    };
    let nmr = Registrar::global();
    let callbacks: Arc<dyn ClientCallbacks> = Arc::new(RustClient);
    let mut group = c.benchmark_group("rust_core_client_cycle");
    for providers in [0_usize, 1, 10] {
        let mut handles = Vec::new();
        for _ in 0..providers {
            let mut h: Handle = ptr::null_mut();
            // SAFETY: `provider` outlives the registration (waited for below).
            let s = unsafe { NmrRegisterProvider(&provider, ptr::null_mut(), &mut h) };
            assert_eq!(s, STATUS_SUCCESS);
            handles.push(h);
        }
        group.bench_function(BenchmarkId::from_parameter(providers), |b| {
            b.iter(|| {
                let instance = RegistrationInstance::new(NpiId(NPI), ModuleId::Guid(Guid::NIL), 0);
                let h = nmr
                    .register_client(instance, Arc::clone(&callbacks), |_| {})
                    .unwrap();
                nmr.deregister_client(h).unwrap();
                nmr.wait_for_client_deregister_complete(h).unwrap();
            });
        });
        for h in handles {
            // SAFETY: handles from NmrRegisterProvider.
            let s = unsafe { NmrDeregisterProvider(h) };
            assert_eq!(s, STATUS_PENDING);
            // SAFETY: as above.
            let s = unsafe { NmrWaitForProviderDeregisterComplete(h) };
            assert_eq!(s, STATUS_SUCCESS);
        }
    }
    group.finish();
}

criterion_group!(benches, client_cycle, rust_client_cycle);
criterion_main!(benches);
