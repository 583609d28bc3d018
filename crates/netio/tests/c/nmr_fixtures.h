/*
 * Fixture modules for the C tests of libnetio: a configurable client module
 * and provider module written the way WDK drivers write them. The
 * characteristics structure lives as long as the registration; each binding
 * gets a heap-allocated binding context freed in the cleanup callback (so
 * valgrind reports any missed cleanup); counters record what the NMR did.
 * Callbacks may run on any thread, so everything they touch is atomic.
 */
#ifndef NMR_FIXTURES_H
#define NMR_FIXTURES_H

#include "nmr_test.h"

/* ------------------------------------------------------------------ */
/* fixture: client module                                              */
/* ------------------------------------------------------------------ */

typedef struct test_client test_client;

/* Client binding context: one per successful attach, freed in cleanup. */
typedef struct client_binding {
    test_client *client;
    HANDLE binding;
    void *provider_binding_context;
    const void *provider_dispatch;
    const NPI_REGISTRATION_INSTANCE *provider_instance;
    atomic_int detached;
    int attach_return_seq;
} client_binding;

struct test_client {
    NPI_CLIENT_CHARACTERISTICS chars;
    NPIID npi;
    NPI_MODULEID module_id;
    HANDLE handle;

    /* behaviour */
    const void *dispatch;        /* ClientDispatch for NmrClientAttachProvider (may be NULL) */
    const void *retry_dispatch;  /* if set, retry once with this after a refusal */
    int null_binding_context;    /* attach with a NULL client binding context */
    NTSTATUS detach_result;      /* what ClientDetachProvider returns */
    int complete_in_detach;      /* call NmrClientDetachProviderComplete inside detach */
    NTSTATUS fail_after_attach;  /* return this after a successful NmrClientAttachProvider */
    int max_bindings;            /* 0 = unlimited; otherwise NOINTERFACE beyond it */
    int (*accept)(test_client *c, PNPI_REGISTRATION_INSTANCE provider); /* NULL = all */
    void (*on_attached)(test_client *c, client_binding *cb); /* before attach returns */
    void (*on_detach)(test_client *c, client_binding *cb);
    void (*on_cleanup)(test_client *c, client_binding *cb);
    void *user;

    /* observations */
    atomic_int attach_calls;
    atomic_int attached;
    atomic_int detach_calls;
    atomic_int cleanup_calls;
    atomic_int active;
    atomic_int detach_seq;
    atomic_int cleanup_seq;
    _Atomic(HANDLE) handle_at_attach;
    _Atomic(void *) context_seen;
    _Atomic(PNPI_REGISTRATION_INSTANCE) provider_instance_seen;
    _Atomic(HANDLE) last_binding;
    _Atomic(client_binding *) last;
    _Atomic(void *) detach_ctx_seen;
    _Atomic(void *) cleanup_ctx_seen;
    _Atomic(NTSTATUS) attach_status_seen;
};

/* Where a client registered with a NULL context, or attached with a NULL binding
 * context, finds itself. */
static test_client *_Atomic g_null_ctx_client;

static NTSTATUS NTAPI tc_attach(HANDLE binding, PVOID context, PNPI_REGISTRATION_INSTANCE provider)
{
    test_client *c = context != NULL ? (test_client *)context : atomic_load(&g_null_ctx_client);
    atomic_fetch_add(&c->attach_calls, 1);
    atomic_store(&c->handle_at_attach, c->handle);
    atomic_store(&c->context_seen, context);
    atomic_store(&c->provider_instance_seen, provider);
    CHECK(binding != NULL);
    CHECK(provider != NULL);
    if (c->accept != NULL && !c->accept(c, provider)) {
        return STATUS_NOINTERFACE;
    }
    if (c->max_bindings > 0 && atomic_load(&c->active) >= c->max_bindings) {
        return STATUS_NOINTERFACE;
    }
    client_binding *cb = (client_binding *)calloc(1, sizeof *cb);
    if (cb == NULL) {
        return STATUS_INSUFFICIENT_RESOURCES;
    }
    cb->client = c;
    cb->binding = binding;
    cb->provider_instance = provider;
    void *pbc = (void *)(uintptr_t)0xDEAD;
    const void *pd = (const void *)(uintptr_t)0xBEEF;
    NTSTATUS s = NmrClientAttachProvider(binding, c->null_binding_context ? NULL : cb,
                                         c->dispatch, &pbc, &pd);
    if (s != STATUS_SUCCESS && c->retry_dispatch != NULL) {
        s = NmrClientAttachProvider(binding, c->null_binding_context ? NULL : cb,
                                    c->retry_dispatch, &pbc, &pd);
    }
    atomic_store(&c->attach_status_seen, s);
    if (s != STATUS_SUCCESS) {
        /* No cleanup callback follows a failed attach: free our own context. */
        free(cb);
        return s;
    }
    cb->provider_binding_context = pbc;
    cb->provider_dispatch = pd;
    atomic_fetch_add(&c->attached, 1);
    atomic_fetch_add(&c->active, 1);
    atomic_store(&c->last_binding, binding);
    if (c->null_binding_context) {
        free(cb);
        cb = NULL;
    }
    atomic_store(&c->last, cb);
    if (c->fail_after_attach != STATUS_SUCCESS) {
        return c->fail_after_attach;
    }
    if (c->on_attached != NULL) {
        c->on_attached(c, cb);
    }
    if (cb != NULL) {
        cb->attach_return_seq = next_seq();
    }
    return STATUS_SUCCESS;
}

static NTSTATUS NTAPI tc_detach(PVOID binding_context)
{
    client_binding *cb = (client_binding *)binding_context;
    test_client *c = cb != NULL ? cb->client : atomic_load(&g_null_ctx_client);
    atomic_fetch_add(&c->detach_calls, 1);
    atomic_store(&c->detach_seq, next_seq());
    atomic_store(&c->detach_ctx_seen, binding_context);
    HANDLE binding = atomic_load(&c->last_binding);
    if (cb != NULL) {
        CHECK(atomic_fetch_add(&cb->detached, 1) == 0);
        binding = cb->binding;
    }
    if (c->on_detach != NULL) {
        c->on_detach(c, cb);
    }
    if (c->complete_in_detach) {
        NmrClientDetachProviderComplete(binding);
        return STATUS_PENDING;
    }
    return c->detach_result;
}

static void NTAPI tc_cleanup(PVOID binding_context)
{
    client_binding *cb = (client_binding *)binding_context;
    test_client *c = cb != NULL ? cb->client : atomic_load(&g_null_ctx_client);
    atomic_fetch_add(&c->cleanup_calls, 1);
    atomic_store(&c->cleanup_seq, next_seq());
    atomic_store(&c->cleanup_ctx_seen, binding_context);
    atomic_fetch_sub(&c->active, 1);
    if (c->on_cleanup != NULL) {
        c->on_cleanup(c, cb);
    }
    if (cb != NULL) {
        client_binding *expected = cb;
        atomic_compare_exchange_strong(&c->last, &expected, NULL);
        free(cb);
    }
}

static inline void client_init(test_client *c, NPIID npi, uint32_t module)
{
    memset(c, 0, sizeof *c);
    c->npi = npi;
    c->module_id.Length = sizeof(NPI_MODULEID);
    c->module_id.Type = MIT_GUID;
    c->module_id.Guid = make_guid(module);
    c->chars.Version = 0;
    c->chars.Length = sizeof(NPI_CLIENT_CHARACTERISTICS);
    c->chars.ClientAttachProvider = tc_attach;
    c->chars.ClientDetachProvider = tc_detach;
    c->chars.ClientCleanupBindingContext = tc_cleanup;
    c->chars.ClientRegistrationInstance.Version = 0;
    c->chars.ClientRegistrationInstance.Size = sizeof(NPI_REGISTRATION_INSTANCE);
    c->chars.ClientRegistrationInstance.NpiId = &c->npi;
    c->chars.ClientRegistrationInstance.ModuleId = &c->module_id;
    c->chars.ClientRegistrationInstance.Number = 0;
    c->chars.ClientRegistrationInstance.NpiSpecificCharacteristics = NULL;
    c->dispatch = &CLIENT_DISPATCH_A;
    c->detach_result = STATUS_SUCCESS;
}

static inline NTSTATUS client_register(test_client *c)
{
    return NmrRegisterClient(&c->chars, c, &c->handle);
}

/* Deregister, expect PENDING, wait, expect SUCCESS. */
static inline void client_unload(test_client *c)
{
    CHECK_STATUS(NmrDeregisterClient(c->handle), STATUS_PENDING);
    CHECK_STATUS(NmrWaitForClientDeregisterComplete(c->handle), STATUS_SUCCESS);
}

/* ------------------------------------------------------------------ */
/* fixture: provider module                                            */
/* ------------------------------------------------------------------ */

typedef struct test_provider test_provider;

/* Provider binding context: one per successful attach, freed in cleanup. */
typedef struct provider_binding {
    test_provider *provider;
    HANDLE binding;
    void *client_binding_context;
    const void *client_dispatch;
    const NPI_REGISTRATION_INSTANCE *client_instance;
    atomic_int detached;
} provider_binding;

struct test_provider {
    NPI_PROVIDER_CHARACTERISTICS chars;
    NPIID npi;
    NPI_MODULEID module_id;
    HANDLE handle;

    /* behaviour */
    const void *dispatch;
    int null_binding_context;      /* return a NULL provider binding context */
    NTSTATUS detach_result;        /* what ProviderDetachClient returns */
    int complete_in_detach;        /* call NmrProviderDetachClientComplete inside detach */
    int complete_on_thread;        /* complete from another thread, joined before returning PENDING */
    int (*accept)(test_provider *p, PNPI_REGISTRATION_INSTANCE client, const void *client_dispatch);
    void (*on_attached)(test_provider *p, provider_binding *pb);
    void (*on_detach)(test_provider *p, provider_binding *pb);
    void (*on_cleanup)(test_provider *p, provider_binding *pb);
    void *user;

    /* observations */
    atomic_int attach_calls;
    atomic_int attached;
    atomic_int detach_calls;
    atomic_int cleanup_calls;
    atomic_int active;
    atomic_int detach_seq;
    atomic_int cleanup_seq;
    _Atomic(HANDLE) handle_at_attach;
    _Atomic(void *) context_seen;
    _Atomic(PNPI_REGISTRATION_INSTANCE) client_instance_seen;
    _Atomic(void *) client_binding_context_seen;
    _Atomic(const void *) client_dispatch_seen;
    _Atomic(HANDLE) last_binding;
    _Atomic(provider_binding *) last;
    _Atomic(void *) detach_ctx_seen;
    _Atomic(void *) cleanup_ctx_seen;
};

static test_provider *_Atomic g_null_ctx_provider;

static NTSTATUS NTAPI tp_attach(HANDLE binding, PVOID context, PNPI_REGISTRATION_INSTANCE client,
                                PVOID client_binding_context, const void *client_dispatch,
                                PVOID *provider_binding_context, const void **provider_dispatch)
{
    test_provider *p =
        context != NULL ? (test_provider *)context : atomic_load(&g_null_ctx_provider);
    atomic_fetch_add(&p->attach_calls, 1);
    atomic_store(&p->handle_at_attach, p->handle);
    atomic_store(&p->context_seen, context);
    atomic_store(&p->client_instance_seen, client);
    atomic_store(&p->client_binding_context_seen, client_binding_context);
    atomic_store(&p->client_dispatch_seen, client_dispatch);
    CHECK(binding != NULL);
    CHECK(client != NULL);
    CHECK(provider_binding_context != NULL);
    CHECK(provider_dispatch != NULL);
    if (p->accept != NULL && !p->accept(p, client, client_dispatch)) {
        return STATUS_NOINTERFACE;
    }
    provider_binding *pb = (provider_binding *)calloc(1, sizeof *pb);
    if (pb == NULL) {
        return STATUS_INSUFFICIENT_RESOURCES;
    }
    pb->provider = p;
    pb->binding = binding;
    pb->client_binding_context = client_binding_context;
    pb->client_dispatch = client_dispatch;
    pb->client_instance = client;
    atomic_fetch_add(&p->attached, 1);
    atomic_fetch_add(&p->active, 1);
    atomic_store(&p->last_binding, binding);
    if (p->null_binding_context) {
        free(pb);
        pb = NULL;
    }
    atomic_store(&p->last, pb);
    *provider_binding_context = pb;
    *provider_dispatch = p->dispatch;
    if (p->on_attached != NULL) {
        p->on_attached(p, pb);
    }
    return STATUS_SUCCESS;
}

static void *tp_complete_thread(void *binding)
{
    NmrProviderDetachClientComplete((HANDLE)binding);
    return NULL;
}

static NTSTATUS NTAPI tp_detach(PVOID binding_context)
{
    provider_binding *pb = (provider_binding *)binding_context;
    test_provider *p = pb != NULL ? pb->provider : atomic_load(&g_null_ctx_provider);
    atomic_fetch_add(&p->detach_calls, 1);
    atomic_store(&p->detach_seq, next_seq());
    atomic_store(&p->detach_ctx_seen, binding_context);
    HANDLE binding = atomic_load(&p->last_binding);
    if (pb != NULL) {
        CHECK(atomic_fetch_add(&pb->detached, 1) == 0);
        binding = pb->binding;
    }
    if (p->on_detach != NULL) {
        p->on_detach(p, pb);
    }
    if (p->complete_in_detach) {
        NmrProviderDetachClientComplete(binding);
        return STATUS_PENDING;
    }
    if (p->complete_on_thread) {
        pthread_t t;
        CHECK(pthread_create(&t, NULL, tp_complete_thread, binding) == 0);
        pthread_join(t, NULL);
        return STATUS_PENDING;
    }
    return p->detach_result;
}

static void NTAPI tp_cleanup(PVOID binding_context)
{
    provider_binding *pb = (provider_binding *)binding_context;
    test_provider *p = pb != NULL ? pb->provider : atomic_load(&g_null_ctx_provider);
    atomic_fetch_add(&p->cleanup_calls, 1);
    atomic_store(&p->cleanup_seq, next_seq());
    atomic_store(&p->cleanup_ctx_seen, binding_context);
    atomic_fetch_sub(&p->active, 1);
    if (p->on_cleanup != NULL) {
        p->on_cleanup(p, pb);
    }
    if (pb != NULL) {
        provider_binding *expected = pb;
        atomic_compare_exchange_strong(&p->last, &expected, NULL);
        free(pb);
    }
}

static inline void provider_init(test_provider *p, NPIID npi, uint32_t module)
{
    memset(p, 0, sizeof *p);
    p->npi = npi;
    p->module_id.Length = sizeof(NPI_MODULEID);
    p->module_id.Type = MIT_GUID;
    p->module_id.Guid = make_guid(module);
    p->chars.Version = 0;
    p->chars.Length = sizeof(NPI_PROVIDER_CHARACTERISTICS);
    p->chars.ProviderAttachClient = tp_attach;
    p->chars.ProviderDetachClient = tp_detach;
    p->chars.ProviderCleanupBindingContext = tp_cleanup;
    p->chars.ProviderRegistrationInstance.Version = 0;
    p->chars.ProviderRegistrationInstance.Size = sizeof(NPI_REGISTRATION_INSTANCE);
    p->chars.ProviderRegistrationInstance.NpiId = &p->npi;
    p->chars.ProviderRegistrationInstance.ModuleId = &p->module_id;
    p->chars.ProviderRegistrationInstance.Number = 0;
    p->chars.ProviderRegistrationInstance.NpiSpecificCharacteristics = NULL;
    p->dispatch = &PROVIDER_DISPATCH;
    p->detach_result = STATUS_SUCCESS;
}

static inline NTSTATUS provider_register(test_provider *p)
{
    return NmrRegisterProvider(&p->chars, p, &p->handle);
}

static inline void provider_unload(test_provider *p)
{
    CHECK_STATUS(NmrDeregisterProvider(p->handle), STATUS_PENDING);
    CHECK_STATUS(NmrWaitForProviderDeregisterComplete(p->handle), STATUS_SUCCESS);
}

#endif /* NMR_FIXTURES_H */
