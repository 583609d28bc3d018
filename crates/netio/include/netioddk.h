/*
 * netioddk.h - the Network Module Registrar (NMR) API of the WDK header of
 * the same name, for building Windows NMR clients and providers on Linux
 * against libnetio (libnetio.so / libnetio.a).
 *
 * Names, field order and layouts are those of Windows x64; the sizes are
 * checked below at compile time. Usable from C11 and C++17.
 *
 * Lifetimes (as on Windows): the characteristics structure, and the NPIID,
 * NPI_MODULEID and NPI-specific characteristics it points to, must stay
 * valid until NmrWaitFor*DeregisterComplete returns; libnetio keeps the
 * pointer and does not copy them. A binding's contexts and dispatch tables
 * must stay valid until that side's cleanup callback has run.
 */
#ifndef _NETIODDK_
#define _NETIODDK_

#include "netiodef.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef CONST struct _NPI_CLIENT_CHARACTERISTICS *PNPI_CLIENT_CHARACTERISTICS;
typedef CONST struct _NPI_PROVIDER_CHARACTERISTICS *PNPI_PROVIDER_CHARACTERISTICS;
typedef CONST struct _NPI_REGISTRATION_INSTANCE *PNPI_REGISTRATION_INSTANCE;

/* What a module tells the NMR (and its peers) about one registration:
 * 40 bytes. The NMR matches clients and providers on *NpiId only. */
typedef struct _NPI_REGISTRATION_INSTANCE {
    USHORT Version;      /* 0 */
    USHORT Size;         /* sizeof(NPI_REGISTRATION_INSTANCE) */
    PNPIID NpiId;
    PNPI_MODULEID ModuleId;
    ULONG Number;        /* implementation number; 0 if there is only one */
    CONST VOID *NpiSpecificCharacteristics OPTIONAL;
} NPI_REGISTRATION_INSTANCE;

/* Generic pairing of a binding handle and a dispatch table. */
typedef struct _NPI {
    HANDLE Handle;
    CONST VOID *Dispatch;
} NPI;

/* ---- client callbacks ---- */

typedef NTSTATUS(NTAPI NPI_CLIENT_ATTACH_PROVIDER_FN)(
    _In_ HANDLE NmrBindingHandle,
    _In_ PVOID ClientContext,
    _In_ PNPI_REGISTRATION_INSTANCE ProviderRegistrationInstance);
typedef NPI_CLIENT_ATTACH_PROVIDER_FN *PNPI_CLIENT_ATTACH_PROVIDER_FN;

typedef NTSTATUS(NTAPI NPI_CLIENT_DETACH_PROVIDER_FN)(
    _In_ PVOID ClientBindingContext);
typedef NPI_CLIENT_DETACH_PROVIDER_FN *PNPI_CLIENT_DETACH_PROVIDER_FN;

typedef VOID(NTAPI NPI_CLIENT_CLEANUP_BINDING_CONTEXT_FN)(
    _In_ PVOID ClientBindingContext);
typedef NPI_CLIENT_CLEANUP_BINDING_CONTEXT_FN *PNPI_CLIENT_CLEANUP_BINDING_CONTEXT_FN;

/* 72 bytes. The attach and detach callbacks are required; cleanup may be NULL. */
typedef struct _NPI_CLIENT_CHARACTERISTICS {
    USHORT Version;      /* 0 */
    USHORT Length;       /* sizeof(NPI_CLIENT_CHARACTERISTICS) */
    PNPI_CLIENT_ATTACH_PROVIDER_FN ClientAttachProvider;
    PNPI_CLIENT_DETACH_PROVIDER_FN ClientDetachProvider;
    PNPI_CLIENT_CLEANUP_BINDING_CONTEXT_FN ClientCleanupBindingContext;
    NPI_REGISTRATION_INSTANCE ClientRegistrationInstance;
} NPI_CLIENT_CHARACTERISTICS;

/* ---- provider callbacks ---- */

typedef NTSTATUS(NTAPI NPI_PROVIDER_ATTACH_CLIENT_FN)(
    _In_ HANDLE NmrBindingHandle,
    _In_ PVOID ProviderContext,
    _In_ PNPI_REGISTRATION_INSTANCE ClientRegistrationInstance,
    _In_ PVOID ClientBindingContext,
    _In_ CONST VOID *ClientDispatch,
    _Out_ PVOID *ProviderBindingContext,
    _Out_ CONST VOID **ProviderDispatch);
typedef NPI_PROVIDER_ATTACH_CLIENT_FN *PNPI_PROVIDER_ATTACH_CLIENT_FN;

typedef NTSTATUS(NTAPI NPI_PROVIDER_DETACH_CLIENT_FN)(
    _In_ PVOID ProviderBindingContext);
typedef NPI_PROVIDER_DETACH_CLIENT_FN *PNPI_PROVIDER_DETACH_CLIENT_FN;

typedef VOID(NTAPI NPI_PROVIDER_CLEANUP_BINDING_CONTEXT_FN)(
    _In_ PVOID ProviderBindingContext);
typedef NPI_PROVIDER_CLEANUP_BINDING_CONTEXT_FN *PNPI_PROVIDER_CLEANUP_BINDING_CONTEXT_FN;

/* 72 bytes. The attach and detach callbacks are required; cleanup may be NULL. */
typedef struct _NPI_PROVIDER_CHARACTERISTICS {
    USHORT Version;      /* 0 */
    USHORT Length;       /* sizeof(NPI_PROVIDER_CHARACTERISTICS) */
    PNPI_PROVIDER_ATTACH_CLIENT_FN ProviderAttachClient;
    PNPI_PROVIDER_DETACH_CLIENT_FN ProviderDetachClient;
    PNPI_PROVIDER_CLEANUP_BINDING_CONTEXT_FN ProviderCleanupBindingContext;
    NPI_REGISTRATION_INSTANCE ProviderRegistrationInstance;
} NPI_PROVIDER_CHARACTERISTICS;

/* ---- the nine NMR functions ---- */

/* Registers a client; ClientAttachProvider runs for every matching provider
 * before this returns. *NmrClientHandle is written before any callback. */
NTSTATUS NTAPI
NmrRegisterClient(
    _In_ PNPI_CLIENT_CHARACTERISTICS ClientCharacteristics,
    _In_opt_ PVOID ClientContext,
    _Out_ PHANDLE NmrClientHandle);

/* Starts deregistration; returns STATUS_PENDING. Detach callbacks may run
 * inside this call. */
NTSTATUS NTAPI
NmrDeregisterClient(
    _In_ HANDLE NmrClientHandle);

/* Blocks until every binding of the client is detached and cleaned up;
 * returns STATUS_SUCCESS, after which the handle is dead. */
NTSTATUS NTAPI
NmrWaitForClientDeregisterComplete(
    _In_ HANDLE NmrClientHandle);

/* Called by a client inside its ClientAttachProvider: calls the provider's
 * ProviderAttachClient and returns its status. */
NTSTATUS NTAPI
NmrClientAttachProvider(
    _In_ HANDLE NmrBindingHandle,
    _In_ PVOID ClientBindingContext,
    _In_ CONST VOID *ClientDispatch,
    _Out_ PVOID *ProviderBindingContext,
    _Out_ CONST VOID **ProviderDispatch);

/* The client finished a detach for which ClientDetachProvider returned
 * STATUS_PENDING. Cleanup callbacks may run inside this call. */
VOID NTAPI
NmrClientDetachProviderComplete(
    _In_ HANDLE NmrBindingHandle);

/* Registers a provider; matching clients' ClientAttachProvider run before
 * this returns. *NmrProviderHandle is written before any callback. */
NTSTATUS NTAPI
NmrRegisterProvider(
    _In_ PNPI_PROVIDER_CHARACTERISTICS ProviderCharacteristics,
    _In_opt_ PVOID ProviderContext,
    _Out_ PHANDLE NmrProviderHandle);

NTSTATUS NTAPI
NmrDeregisterProvider(
    _In_ HANDLE NmrProviderHandle);

NTSTATUS NTAPI
NmrWaitForProviderDeregisterComplete(
    _In_ HANDLE NmrProviderHandle);

VOID NTAPI
NmrProviderDetachClientComplete(
    _In_ HANDLE NmrBindingHandle);

/* ---- layout checks (Windows x64 / Linux x86-64 and other LP64 targets) ---- */

#if defined(__cplusplus)
#define NETIO_STATIC_ASSERT(cond, msg) static_assert(cond, msg)
#else
#define NETIO_STATIC_ASSERT(cond, msg) _Static_assert(cond, msg)
#endif

NETIO_STATIC_ASSERT(sizeof(NTSTATUS) == 4, "NTSTATUS is 32 bits");
NETIO_STATIC_ASSERT(sizeof(ULONG) == 4, "ULONG is 32 bits");
NETIO_STATIC_ASSERT(sizeof(USHORT) == 2, "USHORT is 16 bits");
NETIO_STATIC_ASSERT(sizeof(BOOLEAN) == 1, "BOOLEAN is 8 bits");
NETIO_STATIC_ASSERT(sizeof(GUID) == 16, "GUID is 16 bytes");
NETIO_STATIC_ASSERT(sizeof(LUID) == 8, "LUID is 8 bytes");
NETIO_STATIC_ASSERT(sizeof(NPI_MODULEID_TYPE) == 4, "NPI_MODULEID_TYPE is 32 bits");

#if UINTPTR_MAX == 0xFFFFFFFFFFFFFFFFu
NETIO_STATIC_ASSERT(sizeof(NPI_MODULEID) == 24, "NPI_MODULEID is 24 bytes");
NETIO_STATIC_ASSERT(offsetof(NPI_MODULEID, Type) == 4, "NPI_MODULEID.Type at 4");
NETIO_STATIC_ASSERT(offsetof(NPI_MODULEID, Guid) == 8, "NPI_MODULEID.Guid at 8");
NETIO_STATIC_ASSERT(offsetof(NPI_MODULEID, IfLuid) == 8, "NPI_MODULEID.IfLuid at 8");

NETIO_STATIC_ASSERT(sizeof(NPI_REGISTRATION_INSTANCE) == 40, "NPI_REGISTRATION_INSTANCE is 40 bytes");
NETIO_STATIC_ASSERT(offsetof(NPI_REGISTRATION_INSTANCE, Size) == 2, "Size at 2");
NETIO_STATIC_ASSERT(offsetof(NPI_REGISTRATION_INSTANCE, NpiId) == 8, "NpiId at 8");
NETIO_STATIC_ASSERT(offsetof(NPI_REGISTRATION_INSTANCE, ModuleId) == 16, "ModuleId at 16");
NETIO_STATIC_ASSERT(offsetof(NPI_REGISTRATION_INSTANCE, Number) == 24, "Number at 24");
NETIO_STATIC_ASSERT(offsetof(NPI_REGISTRATION_INSTANCE, NpiSpecificCharacteristics) == 32,
                    "NpiSpecificCharacteristics at 32");

NETIO_STATIC_ASSERT(sizeof(NPI_CLIENT_CHARACTERISTICS) == 72, "NPI_CLIENT_CHARACTERISTICS is 72 bytes");
NETIO_STATIC_ASSERT(offsetof(NPI_CLIENT_CHARACTERISTICS, Length) == 2, "Length at 2");
NETIO_STATIC_ASSERT(offsetof(NPI_CLIENT_CHARACTERISTICS, ClientAttachProvider) == 8, "attach at 8");
NETIO_STATIC_ASSERT(offsetof(NPI_CLIENT_CHARACTERISTICS, ClientDetachProvider) == 16, "detach at 16");
NETIO_STATIC_ASSERT(offsetof(NPI_CLIENT_CHARACTERISTICS, ClientCleanupBindingContext) == 24, "cleanup at 24");
NETIO_STATIC_ASSERT(offsetof(NPI_CLIENT_CHARACTERISTICS, ClientRegistrationInstance) == 32, "instance at 32");

NETIO_STATIC_ASSERT(sizeof(NPI_PROVIDER_CHARACTERISTICS) == 72, "NPI_PROVIDER_CHARACTERISTICS is 72 bytes");
NETIO_STATIC_ASSERT(offsetof(NPI_PROVIDER_CHARACTERISTICS, Length) == 2, "Length at 2");
NETIO_STATIC_ASSERT(offsetof(NPI_PROVIDER_CHARACTERISTICS, ProviderAttachClient) == 8, "attach at 8");
NETIO_STATIC_ASSERT(offsetof(NPI_PROVIDER_CHARACTERISTICS, ProviderDetachClient) == 16, "detach at 16");
NETIO_STATIC_ASSERT(offsetof(NPI_PROVIDER_CHARACTERISTICS, ProviderCleanupBindingContext) == 24, "cleanup at 24");
NETIO_STATIC_ASSERT(offsetof(NPI_PROVIDER_CHARACTERISTICS, ProviderRegistrationInstance) == 32, "instance at 32");

NETIO_STATIC_ASSERT(sizeof(NPI) == 16, "NPI is 16 bytes");
#endif

#ifdef __cplusplus
}
#endif

#endif /* _NETIODDK_ */
