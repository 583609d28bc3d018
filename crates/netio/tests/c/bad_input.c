/*
 * Misuse of the NMR C API: every bad input gets STATUS_INVALID_PARAMETER (or,
 * for the void functions, is ignored), never a crash, a hang or a change to
 * the registrations the call did not own.
 */
#include "nmr_fixtures.h"

static HANDLE const GARBAGE[] = {
    NULL,
    (HANDLE)(uintptr_t)1,
    (HANDLE)(uintptr_t)0xDEADBEEF,
    (HANDLE)(uintptr_t)-1,
    (HANDLE)(uintptr_t)0x4000000000000001ull,
    (HANDLE)(uintptr_t)0xC0000000FFFFFFFFull,
};
#define GARBAGE_COUNT (sizeof GARBAGE / sizeof GARBAGE[0])

/* A provider on the NPI that watches for attach attempts from rejected clients. */
static void expect_no_attach(test_provider *watcher)
{
    CHECK_EQ_INT(watcher->attach_calls, 0);
}

static void register_client_rejects_null_pointers(void)
{
    NPIID npi = fresh_npi();
    test_provider watcher;
    provider_init(&watcher, npi, 99);
    CHECK_STATUS(provider_register(&watcher), STATUS_SUCCESS);
    test_client c;
    client_init(&c, npi, 1);

    HANDLE h = (HANDLE)(uintptr_t)0x77;
    CHECK_STATUS(NmrRegisterClient(NULL, &c, &h), STATUS_INVALID_PARAMETER);
    CHECK(h == NULL); /* the out handle is cleared on failure */
    CHECK_STATUS(NmrRegisterClient(&c.chars, &c, NULL), STATUS_INVALID_PARAMETER);
    expect_no_attach(&watcher);
    CHECK_EQ_INT(c.attach_calls, 0);
    provider_unload(&watcher);
}

static void register_provider_rejects_null_pointers(void)
{
    NPIID npi = fresh_npi();
    test_client watcher;
    client_init(&watcher, npi, 99);
    CHECK_STATUS(client_register(&watcher), STATUS_SUCCESS);
    test_provider p;
    provider_init(&p, npi, 1);

    HANDLE h = (HANDLE)(uintptr_t)0x77;
    CHECK_STATUS(NmrRegisterProvider(NULL, &p, &h), STATUS_INVALID_PARAMETER);
    CHECK(h == NULL);
    CHECK_STATUS(NmrRegisterProvider(&p.chars, &p, NULL), STATUS_INVALID_PARAMETER);
    CHECK_EQ_INT(watcher.attach_calls, 0);
    client_unload(&watcher);
}

static void register_client_rejects_bad_characteristics(void)
{
    NPIID npi = fresh_npi();
    test_provider watcher;
    provider_init(&watcher, npi, 99);
    CHECK_STATUS(provider_register(&watcher), STATUS_SUCCESS);
    test_client c;
    HANDLE h;

    client_init(&c, npi, 1);
    c.chars.Length = 0;
    CHECK_STATUS(NmrRegisterClient(&c.chars, &c, &h), STATUS_INVALID_PARAMETER);
    c.chars.Length = sizeof(NPI_CLIENT_CHARACTERISTICS) - 1;
    CHECK_STATUS(NmrRegisterClient(&c.chars, &c, &h), STATUS_INVALID_PARAMETER);

    client_init(&c, npi, 1);
    c.chars.ClientRegistrationInstance.Size = 0;
    CHECK_STATUS(NmrRegisterClient(&c.chars, &c, &h), STATUS_INVALID_PARAMETER);
    c.chars.ClientRegistrationInstance.Size = sizeof(NPI_REGISTRATION_INSTANCE) - 1;
    CHECK_STATUS(NmrRegisterClient(&c.chars, &c, &h), STATUS_INVALID_PARAMETER);

    client_init(&c, npi, 1);
    c.chars.ClientAttachProvider = NULL;
    CHECK_STATUS(NmrRegisterClient(&c.chars, &c, &h), STATUS_INVALID_PARAMETER);

    client_init(&c, npi, 1);
    c.chars.ClientDetachProvider = NULL;
    CHECK_STATUS(NmrRegisterClient(&c.chars, &c, &h), STATUS_INVALID_PARAMETER);

    client_init(&c, npi, 1);
    c.chars.ClientRegistrationInstance.NpiId = NULL;
    CHECK_STATUS(NmrRegisterClient(&c.chars, &c, &h), STATUS_INVALID_PARAMETER);

    client_init(&c, npi, 1);
    c.chars.ClientRegistrationInstance.ModuleId = NULL;
    CHECK_STATUS(NmrRegisterClient(&c.chars, &c, &h), STATUS_INVALID_PARAMETER);

    expect_no_attach(&watcher);
    CHECK_EQ_INT(c.attach_calls, 0);

    /* Larger Length/Size (a newer structure version) and any Version are accepted. */
    client_init(&c, npi, 1);
    c.chars.Version = 7;
    c.chars.Length = sizeof(NPI_CLIENT_CHARACTERISTICS) + 8;
    c.chars.ClientRegistrationInstance.Version = 3;
    c.chars.ClientRegistrationInstance.Size = sizeof(NPI_REGISTRATION_INSTANCE) + 8;
    CHECK_STATUS(client_register(&c), STATUS_SUCCESS);
    CHECK_EQ_INT(c.attached, 1);
    client_unload(&c);
    provider_unload(&watcher);
}

static void register_provider_rejects_bad_characteristics(void)
{
    NPIID npi = fresh_npi();
    test_client watcher;
    client_init(&watcher, npi, 99);
    CHECK_STATUS(client_register(&watcher), STATUS_SUCCESS);
    test_provider p;
    HANDLE h;

    provider_init(&p, npi, 1);
    p.chars.Length = 0;
    CHECK_STATUS(NmrRegisterProvider(&p.chars, &p, &h), STATUS_INVALID_PARAMETER);
    p.chars.Length = sizeof(NPI_PROVIDER_CHARACTERISTICS) - 1;
    CHECK_STATUS(NmrRegisterProvider(&p.chars, &p, &h), STATUS_INVALID_PARAMETER);

    provider_init(&p, npi, 1);
    p.chars.ProviderRegistrationInstance.Size = sizeof(NPI_REGISTRATION_INSTANCE) - 1;
    CHECK_STATUS(NmrRegisterProvider(&p.chars, &p, &h), STATUS_INVALID_PARAMETER);

    provider_init(&p, npi, 1);
    p.chars.ProviderAttachClient = NULL;
    CHECK_STATUS(NmrRegisterProvider(&p.chars, &p, &h), STATUS_INVALID_PARAMETER);

    provider_init(&p, npi, 1);
    p.chars.ProviderDetachClient = NULL;
    CHECK_STATUS(NmrRegisterProvider(&p.chars, &p, &h), STATUS_INVALID_PARAMETER);

    provider_init(&p, npi, 1);
    p.chars.ProviderRegistrationInstance.NpiId = NULL;
    CHECK_STATUS(NmrRegisterProvider(&p.chars, &p, &h), STATUS_INVALID_PARAMETER);

    provider_init(&p, npi, 1);
    p.chars.ProviderRegistrationInstance.ModuleId = NULL;
    CHECK_STATUS(NmrRegisterProvider(&p.chars, &p, &h), STATUS_INVALID_PARAMETER);

    CHECK_EQ_INT(watcher.attach_calls, 0);
    client_unload(&watcher);
}

static void garbage_handles_are_rejected_everywhere(void)
{
    for (size_t i = 0; i < GARBAGE_COUNT; i++) {
        HANDLE h = GARBAGE[i];
        CHECK_STATUS(NmrDeregisterClient(h), STATUS_INVALID_PARAMETER);
        CHECK_STATUS(NmrDeregisterProvider(h), STATUS_INVALID_PARAMETER);
        CHECK_STATUS(NmrWaitForClientDeregisterComplete(h), STATUS_INVALID_PARAMETER);
        CHECK_STATUS(NmrWaitForProviderDeregisterComplete(h), STATUS_INVALID_PARAMETER);
        NmrClientDetachProviderComplete(h);
        NmrProviderDetachClientComplete(h);
        void *pbc = NULL;
        const void *pd = NULL;
        CHECK_STATUS(NmrClientAttachProvider(h, NULL, NULL, &pbc, &pd),
                     STATUS_INVALID_PARAMETER);
    }
}

static void wrong_kind_handles_are_rejected_and_change_nothing(void)
{
    NPIID npi = fresh_npi();
    test_client c;
    test_provider p;
    client_init(&c, npi, 1);
    provider_init(&p, npi, 2);
    CHECK_STATUS(client_register(&c), STATUS_SUCCESS);
    CHECK_STATUS(provider_register(&p), STATUS_SUCCESS);
    HANDLE binding = atomic_load(&c.last_binding);

    CHECK_STATUS(NmrDeregisterProvider(c.handle), STATUS_INVALID_PARAMETER);
    CHECK_STATUS(NmrDeregisterClient(p.handle), STATUS_INVALID_PARAMETER);
    CHECK_STATUS(NmrDeregisterClient(binding), STATUS_INVALID_PARAMETER);
    CHECK_STATUS(NmrDeregisterProvider(binding), STATUS_INVALID_PARAMETER);
    CHECK_STATUS(NmrWaitForClientDeregisterComplete(binding), STATUS_INVALID_PARAMETER);
    CHECK_STATUS(NmrWaitForProviderDeregisterComplete(c.handle), STATUS_INVALID_PARAMETER);
    NmrClientDetachProviderComplete(c.handle);
    NmrProviderDetachClientComplete(p.handle);
    void *pbc = NULL;
    const void *pd = NULL;
    NTSTATUS s = NmrClientAttachProvider(c.handle, NULL, NULL, &pbc, &pd);
    CHECK(!NT_SUCCESS(s));
    CHECK_EQ_INT(p.attach_calls, 1);
    CHECK_EQ_INT(c.detach_calls + p.detach_calls, 0);

    /* Everything still works normally afterwards. */
    provider_unload(&p);
    client_unload(&c);
    CHECK_EQ_INT(c.detach_calls, 1);
    CHECK_EQ_INT(p.detach_calls, 1);
    CHECK_EQ_INT(c.cleanup_calls, 1);
    CHECK_EQ_INT(p.cleanup_calls, 1);
}

static void double_deregistration_is_rejected(void)
{
    test_client c;
    test_provider p;
    client_init(&c, fresh_npi(), 1);
    provider_init(&p, fresh_npi(), 2);
    CHECK_STATUS(client_register(&c), STATUS_SUCCESS);
    CHECK_STATUS(provider_register(&p), STATUS_SUCCESS);
    CHECK_STATUS(NmrDeregisterClient(c.handle), STATUS_PENDING);
    CHECK_STATUS(NmrDeregisterClient(c.handle), STATUS_INVALID_PARAMETER);
    CHECK_STATUS(NmrDeregisterProvider(p.handle), STATUS_PENDING);
    CHECK_STATUS(NmrDeregisterProvider(p.handle), STATUS_INVALID_PARAMETER);
    CHECK_STATUS(NmrWaitForClientDeregisterComplete(c.handle), STATUS_SUCCESS);
    CHECK_STATUS(NmrWaitForProviderDeregisterComplete(p.handle), STATUS_SUCCESS);
}

static void stale_handles_after_wait_are_rejected(void)
{
    NPIID npi = fresh_npi();
    test_client c;
    test_provider p;
    client_init(&c, npi, 1);
    provider_init(&p, npi, 2);
    CHECK_STATUS(client_register(&c), STATUS_SUCCESS);
    CHECK_STATUS(provider_register(&p), STATUS_SUCCESS);
    HANDLE binding = atomic_load(&c.last_binding);
    client_unload(&c);
    provider_unload(&p);

    CHECK_STATUS(NmrDeregisterClient(c.handle), STATUS_INVALID_PARAMETER);
    CHECK_STATUS(NmrWaitForClientDeregisterComplete(c.handle), STATUS_INVALID_PARAMETER);
    CHECK_STATUS(NmrDeregisterProvider(p.handle), STATUS_INVALID_PARAMETER);
    CHECK_STATUS(NmrWaitForProviderDeregisterComplete(p.handle), STATUS_INVALID_PARAMETER);
    NmrClientDetachProviderComplete(binding);
    NmrProviderDetachClientComplete(binding);
    void *pbc = NULL;
    const void *pd = NULL;
    CHECK_STATUS(NmrClientAttachProvider(binding, NULL, NULL, &pbc, &pd),
                 STATUS_INVALID_PARAMETER);

    /* A new registration reusing the freed slot does not answer to the old handle. */
    test_client c2;
    client_init(&c2, fresh_npi(), 3);
    CHECK_STATUS(client_register(&c2), STATUS_SUCCESS);
    CHECK(c2.handle != c.handle);
    CHECK_STATUS(NmrDeregisterClient(c.handle), STATUS_INVALID_PARAMETER);
    client_unload(&c2);

    CHECK_EQ_INT(c.cleanup_calls, 1);
    CHECK_EQ_INT(p.cleanup_calls, 1);
}

static void wait_before_deregistration_is_rejected(void)
{
    test_client c;
    test_provider p;
    client_init(&c, fresh_npi(), 1);
    provider_init(&p, fresh_npi(), 2);
    CHECK_STATUS(client_register(&c), STATUS_SUCCESS);
    CHECK_STATUS(provider_register(&p), STATUS_SUCCESS);
    CHECK_STATUS(NmrWaitForClientDeregisterComplete(c.handle), STATUS_INVALID_PARAMETER);
    CHECK_STATUS(NmrWaitForProviderDeregisterComplete(p.handle), STATUS_INVALID_PARAMETER);
    /* The registrations are still active and unload normally. */
    client_unload(&c);
    provider_unload(&p);
}

static void wait_inside_own_detach(test_client *c, client_binding *cb)
{
    (void)cb;
    CHECK_STATUS(NmrWaitForClientDeregisterComplete(c->handle), STATUS_INVALID_PARAMETER);
}

static void wait_from_inside_own_callback_is_rejected_not_deadlocked(void)
{
    NPIID npi = fresh_npi();
    test_client c;
    test_provider p;
    client_init(&c, npi, 1);
    provider_init(&p, npi, 2);
    c.on_detach = wait_inside_own_detach;
    CHECK_STATUS(client_register(&c), STATUS_SUCCESS);
    CHECK_STATUS(provider_register(&p), STATUS_SUCCESS);
    client_unload(&c);
    CHECK_EQ_INT(c.detach_calls, 1);
    provider_unload(&p);
}

static void complete_on_an_active_binding_is_ignored(void)
{
    NPIID npi = fresh_npi();
    test_client c;
    test_provider p;
    client_init(&c, npi, 1);
    provider_init(&p, npi, 2);
    c.detach_result = STATUS_PENDING;
    CHECK_STATUS(client_register(&c), STATUS_SUCCESS);
    CHECK_STATUS(provider_register(&p), STATUS_SUCCESS);
    HANDLE binding = atomic_load(&c.last_binding);
    NmrClientDetachProviderComplete(binding);
    NmrProviderDetachClientComplete(binding);
    CHECK_EQ_INT(c.detach_calls + p.detach_calls + c.cleanup_calls + p.cleanup_calls, 0);

    /* The ignored early completion does not count: the pending detach still needs one. */
    CHECK_STATUS(NmrDeregisterProvider(p.handle), STATUS_PENDING);
    CHECK_EQ_INT(c.detach_calls, 1);
    CHECK_EQ_INT(c.cleanup_calls, 0);
    NmrClientDetachProviderComplete(binding);
    CHECK_STATUS(NmrWaitForProviderDeregisterComplete(p.handle), STATUS_SUCCESS);
    CHECK_EQ_INT(c.cleanup_calls, 1);
    CHECK_EQ_INT(p.cleanup_calls, 1);
    client_unload(&c);
}

static void complete_twice_or_for_the_wrong_side_is_ignored(void)
{
    NPIID npi = fresh_npi();
    test_client c;
    test_provider p;
    client_init(&c, npi, 1);
    provider_init(&p, npi, 2);
    c.detach_result = STATUS_PENDING; /* the provider answers SUCCESS */
    CHECK_STATUS(client_register(&c), STATUS_SUCCESS);
    CHECK_STATUS(provider_register(&p), STATUS_SUCCESS);
    HANDLE binding = atomic_load(&c.last_binding);
    CHECK_STATUS(NmrDeregisterClient(c.handle), STATUS_PENDING);

    /* The provider's detach returned SUCCESS: completing it is misuse, ignored. */
    NmrProviderDetachClientComplete(binding);
    NmrProviderDetachClientComplete(binding);
    CHECK_EQ_INT(c.cleanup_calls, 0);
    CHECK_EQ_INT(p.cleanup_calls, 0);

    NmrClientDetachProviderComplete(binding);
    CHECK_EQ_INT(c.cleanup_calls, 1);
    NmrClientDetachProviderComplete(binding); /* twice: ignored */
    NmrProviderDetachClientComplete(binding);
    CHECK_STATUS(NmrWaitForClientDeregisterComplete(c.handle), STATUS_SUCCESS);
    CHECK_EQ_INT(c.cleanup_calls, 1);
    CHECK_EQ_INT(p.cleanup_calls, 1);
    provider_unload(&p);
}

/* ---- NmrClientAttachProvider misuse ----------------------------------------------- */

typedef struct misuse_client {
    NPI_CLIENT_CHARACTERISTICS chars;
    NPIID npi;
    NPI_MODULEID module_id;
    HANDLE handle;
    HANDLE binding;
    NTSTATUS null_out_ctx;
    NTSTATUS null_out_dispatch;
    NTSTATUS reg_handle;
    NTSTATUS first;
    NTSTATUS second;
    atomic_int detach_calls;
    atomic_int cleanup_calls;
} misuse_client;

static int g_misuse_ctx;

static NTSTATUS NTAPI misuse_attach(HANDLE binding, PVOID context, PNPI_REGISTRATION_INSTANCE provider)
{
    (void)provider;
    misuse_client *m = (misuse_client *)context;
    void *pbc = NULL;
    const void *pd = NULL;
    m->binding = binding;
    m->null_out_ctx = NmrClientAttachProvider(binding, &g_misuse_ctx, NULL, NULL, &pd);
    m->null_out_dispatch = NmrClientAttachProvider(binding, &g_misuse_ctx, NULL, &pbc, NULL);
    m->reg_handle = NmrClientAttachProvider(m->handle, &g_misuse_ctx, NULL, &pbc, &pd);
    m->first = NmrClientAttachProvider(binding, &g_misuse_ctx, NULL, &pbc, &pd);
    m->second = NmrClientAttachProvider(binding, &g_misuse_ctx, NULL, &pbc, &pd);
    return m->first;
}

static misuse_client *g_misuse;

static NTSTATUS NTAPI misuse_detach_count(PVOID ctx)
{
    CHECK(ctx == &g_misuse_ctx);
    atomic_fetch_add(&g_misuse->detach_calls, 1);
    return STATUS_SUCCESS;
}

static void NTAPI misuse_cleanup(PVOID ctx)
{
    CHECK(ctx == &g_misuse_ctx);
    atomic_fetch_add(&g_misuse->cleanup_calls, 1);
}

static void client_attach_provider_misuse_is_rejected(void)
{
    NPIID npi = fresh_npi();
    test_provider p;
    provider_init(&p, npi, 2);
    CHECK_STATUS(provider_register(&p), STATUS_SUCCESS);

    misuse_client m;
    memset(&m, 0, sizeof m);
    g_misuse = &m;
    m.npi = npi;
    m.module_id.Length = sizeof m.module_id;
    m.module_id.Type = MIT_IF_LUID;
    m.module_id.IfLuid.LowPart = 42;
    m.chars.Length = sizeof m.chars;
    m.chars.ClientAttachProvider = misuse_attach;
    m.chars.ClientDetachProvider = misuse_detach_count;
    m.chars.ClientCleanupBindingContext = misuse_cleanup;
    m.chars.ClientRegistrationInstance.Size = sizeof(NPI_REGISTRATION_INSTANCE);
    m.chars.ClientRegistrationInstance.NpiId = &m.npi;
    m.chars.ClientRegistrationInstance.ModuleId = &m.module_id;
    CHECK_STATUS(NmrRegisterClient(&m.chars, &m, &m.handle), STATUS_SUCCESS);

    CHECK_STATUS(m.null_out_ctx, STATUS_INVALID_PARAMETER);
    CHECK_STATUS(m.null_out_dispatch, STATUS_INVALID_PARAMETER);
    CHECK_STATUS(m.reg_handle, STATUS_INVALID_PARAMETER);
    CHECK_STATUS(m.first, STATUS_SUCCESS);
    CHECK(!NT_SUCCESS(m.second)); /* a second attach after a success */
    CHECK_EQ_INT(p.attach_calls, 1);
    CHECK_EQ_INT(p.attached, 1);

    /* Outside ClientAttachProvider the binding handle cannot attach. */
    void *pbc = NULL;
    const void *pd = NULL;
    CHECK(!NT_SUCCESS(NmrClientAttachProvider(m.binding, &g_misuse_ctx, NULL, &pbc, &pd)));
    CHECK_EQ_INT(p.attach_calls, 1);

    CHECK_STATUS(NmrDeregisterClient(m.handle), STATUS_PENDING);
    CHECK_STATUS(NmrWaitForClientDeregisterComplete(m.handle), STATUS_SUCCESS);
    CHECK_EQ_INT(m.detach_calls, 1);
    CHECK_EQ_INT(m.cleanup_calls, 1);
    CHECK_EQ_INT(p.detach_calls, 1);
    CHECK_EQ_INT(p.cleanup_calls, 1);
    provider_unload(&p);
}

int main(void)
{
    start_watchdog(60);
    RUN(register_client_rejects_null_pointers);
    RUN(register_provider_rejects_null_pointers);
    RUN(register_client_rejects_bad_characteristics);
    RUN(register_provider_rejects_bad_characteristics);
    RUN(garbage_handles_are_rejected_everywhere);
    RUN(wrong_kind_handles_are_rejected_and_change_nothing);
    RUN(double_deregistration_is_rejected);
    RUN(stale_handles_after_wait_are_rejected);
    RUN(wait_before_deregistration_is_rejected);
    RUN(wait_from_inside_own_callback_is_rejected_not_deadlocked);
    RUN(complete_on_an_active_binding_is_ignored);
    RUN(complete_twice_or_for_the_wrong_side_is_ignored);
    RUN(client_attach_provider_misuse_is_rejected);
    return finish();
}
