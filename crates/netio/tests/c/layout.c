/*
 * Prints the layout of the header's structures and the values of its
 * constants, one "<expression> <value>" per line, for tests/c_programs.rs to
 * compare with the Rust mirror types in src/abi.rs. The header's own
 * static_asserts check the Windows x64 sizes at compile time; this program
 * also checks NmrIsEqualNpiModuleId.
 */
#include "nmr_test.h"

#define SIZE(T) printf("LAYOUT sizeof(%s) %zu\n", #T, sizeof(T))
#define OFFSET(T, F) printf("LAYOUT offsetof(%s, %s) %zu\n", #T, #F, offsetof(T, F))
#define CONSTANT(C) printf("CONST %s %lld\n", #C, (long long)(C))

static void print_layout(void)
{
    SIZE(GUID);
    SIZE(LUID);
    SIZE(NPI_MODULEID);
    OFFSET(NPI_MODULEID, Type);
    OFFSET(NPI_MODULEID, Guid);
    OFFSET(NPI_MODULEID, IfLuid);
    SIZE(NPI_REGISTRATION_INSTANCE);
    OFFSET(NPI_REGISTRATION_INSTANCE, Version);
    OFFSET(NPI_REGISTRATION_INSTANCE, Size);
    OFFSET(NPI_REGISTRATION_INSTANCE, NpiId);
    OFFSET(NPI_REGISTRATION_INSTANCE, ModuleId);
    OFFSET(NPI_REGISTRATION_INSTANCE, Number);
    OFFSET(NPI_REGISTRATION_INSTANCE, NpiSpecificCharacteristics);
    SIZE(NPI_CLIENT_CHARACTERISTICS);
    OFFSET(NPI_CLIENT_CHARACTERISTICS, Version);
    OFFSET(NPI_CLIENT_CHARACTERISTICS, Length);
    OFFSET(NPI_CLIENT_CHARACTERISTICS, ClientAttachProvider);
    OFFSET(NPI_CLIENT_CHARACTERISTICS, ClientDetachProvider);
    OFFSET(NPI_CLIENT_CHARACTERISTICS, ClientCleanupBindingContext);
    OFFSET(NPI_CLIENT_CHARACTERISTICS, ClientRegistrationInstance);
    SIZE(NPI_PROVIDER_CHARACTERISTICS);
    OFFSET(NPI_PROVIDER_CHARACTERISTICS, Version);
    OFFSET(NPI_PROVIDER_CHARACTERISTICS, Length);
    OFFSET(NPI_PROVIDER_CHARACTERISTICS, ProviderAttachClient);
    OFFSET(NPI_PROVIDER_CHARACTERISTICS, ProviderDetachClient);
    OFFSET(NPI_PROVIDER_CHARACTERISTICS, ProviderCleanupBindingContext);
    OFFSET(NPI_PROVIDER_CHARACTERISTICS, ProviderRegistrationInstance);
    CONSTANT(STATUS_SUCCESS);
    CONSTANT(STATUS_PENDING);
    CONSTANT(STATUS_INVALID_PARAMETER);
    CONSTANT(STATUS_NO_MEMORY);
    CONSTANT(STATUS_INSUFFICIENT_RESOURCES);
    CONSTANT(STATUS_NOINTERFACE);
    CONSTANT(MIT_GUID);
    CONSTANT(MIT_IF_LUID);
}

static void windows_x64_sizes_hold_at_run_time(void)
{
    CHECK_EQ_INT(sizeof(NTSTATUS), 4);
    CHECK_EQ_INT(sizeof(ULONG), 4);
    CHECK_EQ_INT(sizeof(USHORT), 2);
    CHECK_EQ_INT(sizeof(BOOLEAN), 1);
    CHECK_EQ_INT(sizeof(HANDLE), sizeof(void *));
    CHECK_EQ_INT(sizeof(NPI_MODULEID), 24);
    CHECK_EQ_INT(sizeof(NPI_REGISTRATION_INSTANCE), 40);
    CHECK_EQ_INT(sizeof(NPI_CLIENT_CHARACTERISTICS), 72);
    CHECK_EQ_INT(sizeof(NPI_PROVIDER_CHARACTERISTICS), 72);
}

static void status_macros_classify_codes(void)
{
    CHECK(NT_SUCCESS(STATUS_SUCCESS));
    CHECK(NT_SUCCESS(STATUS_PENDING));
    CHECK(!NT_SUCCESS(STATUS_NOINTERFACE));
    CHECK(!NT_SUCCESS(STATUS_INVALID_PARAMETER));
    CHECK(!NT_SUCCESS(STATUS_INSUFFICIENT_RESOURCES));
    CHECK(!NT_SUCCESS(STATUS_NO_MEMORY));
    CHECK(STATUS_NOINTERFACE < 0);
}

static void module_ids_compare_by_type_and_value(void)
{
    NPI_MODULEID a, b;
    memset(&a, 0, sizeof a);
    memset(&b, 0, sizeof b);
    a.Length = b.Length = sizeof(NPI_MODULEID);
    a.Type = b.Type = MIT_GUID;
    a.Guid = b.Guid = make_guid(7);
    CHECK(NmrIsEqualNpiModuleId(&a, &b));
    b.Length = 0; /* Length is not compared */
    CHECK(NmrIsEqualNpiModuleId(&a, &b));
    b.Guid.Data4[7] ^= 1;
    CHECK(!NmrIsEqualNpiModuleId(&a, &b));

    b = a;
    b.Type = MIT_IF_LUID;
    CHECK(!NmrIsEqualNpiModuleId(&a, &b));

    a.Type = b.Type = MIT_IF_LUID;
    a.IfLuid.LowPart = b.IfLuid.LowPart = 5;
    a.IfLuid.HighPart = b.IfLuid.HighPart = -1;
    a.Guid.Data4[7] = 1; /* bytes beyond the LUID are not compared */
    b.Guid.Data4[7] = 2;
    CHECK(NmrIsEqualNpiModuleId(&a, &b));
    b.IfLuid.HighPart = 0;
    CHECK(!NmrIsEqualNpiModuleId(&a, &b));

    a.Type = b.Type = (NPI_MODULEID_TYPE)0; /* unknown types never compare equal */
    CHECK(!NmrIsEqualNpiModuleId(&a, &a));
}

int main(void)
{
    start_watchdog(10);
    print_layout();
    RUN(windows_x64_sizes_hold_at_run_time);
    RUN(status_macros_classify_codes);
    RUN(module_ids_compare_by_type_and_value);
    return finish();
}
