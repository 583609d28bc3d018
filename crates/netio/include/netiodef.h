/*
 * netiodef.h - network module identifiers for the Network Module Registrar
 * (NPIID, NPI_MODULEID, NmrIsEqualNpiModuleId), with the Windows names and
 * Windows x64 layouts, for building NMR code on Linux against libnetio.
 */
#ifndef _NETIODEF_
#define _NETIODEF_

#include "netio_ntdef.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Identifier of a network programming interface (NPI). */
typedef GUID NPIID;
typedef CONST NPIID *PNPIID;

/* Which member of NPI_MODULEID's union is valid. */
typedef enum _NPI_MODULEID_TYPE {
    MIT_GUID = 1,
    MIT_IF_LUID,
} NPI_MODULEID_TYPE;

/* Identifier of a network module: 24 bytes, Type at offset 4, the union at
 * offset 8. Length is sizeof(NPI_MODULEID). */
typedef struct _NPI_MODULEID {
    USHORT Length;
    NPI_MODULEID_TYPE Type;
    union {
        GUID Guid;
        LUID IfLuid;
    };
} NPI_MODULEID;
typedef CONST NPI_MODULEID *PNPI_MODULEID;

/* TRUE when both identifiers have the same Type and, for MIT_GUID, the same
 * GUID or, for MIT_IF_LUID, the same LUID. Length is not compared, and any
 * other Type never compares equal. NMR itself never compares module ids;
 * modules do, in their attach callbacks. */
static inline BOOLEAN
NmrIsEqualNpiModuleId(_In_ PNPI_MODULEID ModuleId1, _In_ PNPI_MODULEID ModuleId2)
{
    if (ModuleId1->Type != ModuleId2->Type) {
        return FALSE;
    }
    if (ModuleId1->Type == MIT_GUID) {
        return (BOOLEAN)(memcmp(&ModuleId1->Guid, &ModuleId2->Guid, sizeof(GUID)) == 0);
    }
    if (ModuleId1->Type == MIT_IF_LUID) {
        return (BOOLEAN)(memcmp(&ModuleId1->IfLuid, &ModuleId2->IfLuid, sizeof(LUID)) == 0);
    }
    return FALSE;
}

#ifdef __cplusplus
}
#endif

#endif /* _NETIODEF_ */
