/*
 * netio_ntdef.h - the few NT base types, status codes and macros that
 * netiodef.h and netioddk.h need, for building Windows NMR code on Linux
 * against libnetio.
 *
 * Sizes follow Windows x64 (LLP64), not the host's C types: ULONG and
 * NTSTATUS are 32 bits even where C `long` is 64 bits.
 *
 * Code that already has these definitions (from its own Windows headers or
 * a compatibility layer) can define NETIO_NO_NT_TYPES before including any
 * libnetio header to skip this file's type definitions; the status codes
 * and macros are each guarded by #ifndef and never redefined.
 */
#ifndef NETIO_NTDEF_H
#define NETIO_NTDEF_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#ifndef NETIO_NO_NT_TYPES

typedef void *PVOID;
typedef void *HANDLE;
typedef HANDLE *PHANDLE;
typedef uint8_t UCHAR;
typedef uint8_t BOOLEAN;
typedef BOOLEAN *PBOOLEAN;
typedef uint16_t USHORT;
typedef int32_t LONG;
typedef uint32_t ULONG;
typedef int32_t NTSTATUS;
typedef uintptr_t ULONG_PTR;
typedef intptr_t LONG_PTR;
typedef size_t SIZE_T;
typedef ULONG *PULONG;
typedef USHORT *PUSHORT;
typedef LONG *PLONG;
typedef UCHAR *PUCHAR;

#ifndef GUID_DEFINED
#define GUID_DEFINED
/* 16 bytes, 4-byte aligned, the Windows layout. */
typedef struct _GUID {
    uint32_t Data1;
    uint16_t Data2;
    uint16_t Data3;
    uint8_t Data4[8];
} GUID;
#endif /* GUID_DEFINED */

/* Locally unique identifier: 8 bytes, 4-byte aligned. */
typedef struct _LUID {
    ULONG LowPart;
    LONG HighPart;
} LUID, *PLUID;

#endif /* NETIO_NO_NT_TYPES */

#ifndef VOID
#define VOID void
#endif
#ifndef CONST
#define CONST const
#endif
#ifndef TRUE
#define TRUE 1
#endif
#ifndef FALSE
#define FALSE 0
#endif
#ifndef OPTIONAL
#define OPTIONAL
#endif

/* Calling convention of every NMR function and callback. x64 Windows has a
 * single convention; 32-bit Windows uses __stdcall. */
#ifndef NTAPI
#if defined(_WIN32) && !defined(_WIN64)
#define NTAPI __stdcall
#else
#define NTAPI
#endif
#endif

/* SAL and IRQL annotations that WDK code puts on NMR callbacks and calls: no
 * meaning outside MSVC's analyzer. */
#ifndef _In_
#define _In_
#endif
#ifndef _In_opt_
#define _In_opt_
#endif
#ifndef _Out_
#define _Out_
#endif
#ifndef _Inout_
#define _Inout_
#endif
#ifndef _Outptr_
#define _Outptr_
#endif
#ifndef _Must_inspect_result_
#define _Must_inspect_result_
#endif
#ifndef _Function_class_
#define _Function_class_(name)
#endif
#ifndef _IRQL_requires_max_
#define _IRQL_requires_max_(irql)
#endif
#ifndef _IRQL_requires_same_
#define _IRQL_requires_same_
#endif
#ifndef PASSIVE_LEVEL
#define PASSIVE_LEVEL 0
#endif
#ifndef APC_LEVEL
#define APC_LEVEL 1
#endif
#ifndef DISPATCH_LEVEL
#define DISPATCH_LEVEL 2
#endif

#ifndef UNREFERENCED_PARAMETER
#define UNREFERENCED_PARAMETER(P) ((void)(P))
#endif

#ifndef NT_SUCCESS
#define NT_SUCCESS(Status) (((NTSTATUS)(Status)) >= 0)
#endif

/* The NTSTATUS values NMR uses, and a few that modules commonly return from
 * their callbacks. Negative values are errors. libnetio returns
 * STATUS_INVALID_DEVICE_STATE from NmrClientAttachProvider called outside the
 * binding's ClientAttachProvider or after it already succeeded. */
#ifndef STATUS_SUCCESS
#define STATUS_SUCCESS ((NTSTATUS)0x00000000)
#endif
#ifndef STATUS_PENDING
#define STATUS_PENDING ((NTSTATUS)0x00000103)
#endif
#ifndef STATUS_UNSUCCESSFUL
#define STATUS_UNSUCCESSFUL ((NTSTATUS)0xC0000001)
#endif
#ifndef STATUS_INVALID_PARAMETER
#define STATUS_INVALID_PARAMETER ((NTSTATUS)0xC000000D)
#endif
#ifndef STATUS_NO_MEMORY
#define STATUS_NO_MEMORY ((NTSTATUS)0xC0000017)
#endif
#ifndef STATUS_INSUFFICIENT_RESOURCES
#define STATUS_INSUFFICIENT_RESOURCES ((NTSTATUS)0xC000009A)
#endif
#ifndef STATUS_DEVICE_NOT_READY
#define STATUS_DEVICE_NOT_READY ((NTSTATUS)0xC00000A3)
#endif
#ifndef STATUS_NOT_SUPPORTED
#define STATUS_NOT_SUPPORTED ((NTSTATUS)0xC00000BB)
#endif
#ifndef STATUS_INVALID_DEVICE_STATE
#define STATUS_INVALID_DEVICE_STATE ((NTSTATUS)0xC0000184)
#endif
#ifndef STATUS_NOINTERFACE
#define STATUS_NOINTERFACE ((NTSTATUS)0xC00002B9)
#endif

#endif /* NETIO_NTDEF_H */
