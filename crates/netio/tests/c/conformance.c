/*
 * NMR conformance scenarios through the C API (netioddk.h), following the
 * Windows behaviour: synchronous attach inside registration, deregistration
 * always STATUS_PENDING, both detach callbacks issued even when one pends,
 * cleanup only after both sides finished detaching, wait covering cleanup.
 */
#include "nmr_fixtures.h"

/* ---- registration alone ---------------------------------------------- */

static void client_registered_alone_deregisters_pending_then_waits(void)
{
    test_client c;
    client_init(&c, fresh_npi(), 1);
    c.handle = (HANDLE)(uintptr_t)0x1;
    CHECK_STATUS(client_register(&c), STATUS_SUCCESS);
    CHECK(c.handle != NULL && c.handle != (HANDLE)(uintptr_t)0x1);
    CHECK_EQ_INT(c.attach_calls, 0);
    CHECK_STATUS(NmrDeregisterClient(c.handle), STATUS_PENDING);
    CHECK_STATUS(NmrWaitForClientDeregisterComplete(c.handle), STATUS_SUCCESS);
    CHECK_EQ_INT(c.detach_calls, 0);
    CHECK_EQ_INT(c.cleanup_calls, 0);
}

static void provider_registered_alone_deregisters_pending_then_waits(void)
{
    test_provider p;
    provider_init(&p, fresh_npi(), 2);
    CHECK_STATUS(provider_register(&p), STATUS_SUCCESS);
    CHECK(p.handle != NULL);
    CHECK_EQ_INT(p.attach_calls, 0);
    CHECK_STATUS(NmrDeregisterProvider(p.handle), STATUS_PENDING);
    CHECK_STATUS(NmrWaitForProviderDeregisterComplete(p.handle), STATUS_SUCCESS);
    CHECK_EQ_INT(p.detach_calls, 0);
}

static void registrations_get_distinct_handles(void)
{
    NPIID npi = fresh_npi();
    test_client c1, c2;
    test_provider p1;
    client_init(&c1, npi, 1);
    client_init(&c2, npi, 2);
    provider_init(&p1, fresh_npi(), 3);
    CHECK_STATUS(client_register(&c1), STATUS_SUCCESS);
    CHECK_STATUS(client_register(&c2), STATUS_SUCCESS);
    CHECK_STATUS(provider_register(&p1), STATUS_SUCCESS);
    CHECK(c1.handle != c2.handle && c1.handle != p1.handle && c2.handle != p1.handle);
    client_unload(&c1);
    client_unload(&c2);
    provider_unload(&p1);
}

/* ---- attach ----------------------------------------------------------- */

/* Checks everything a fresh binding between c and p must show. */
static void check_bound(test_client *c, test_provider *p)
{
    CHECK_EQ_INT(c->attach_calls, 1);
    CHECK_EQ_INT(c->attached, 1);
    CHECK_EQ_INT(p->attach_calls, 1);
    CHECK_EQ_INT(p->attached, 1);
    CHECK(atomic_load(&c->context_seen) == (void *)c);
    CHECK(atomic_load(&p->context_seen) == (void *)p);
    CHECK(atomic_load(&c->provider_instance_seen) == &p->chars.ProviderRegistrationInstance);
    CHECK(atomic_load(&p->client_instance_seen) == &c->chars.ClientRegistrationInstance);
    client_binding *cb = atomic_load(&c->last);
    provider_binding *pb = atomic_load(&p->last);
    CHECK(cb != NULL && pb != NULL);
    if (cb == NULL || pb == NULL) {
        return;
    }
    CHECK(cb->binding != NULL);
    CHECK(cb->binding == pb->binding);
    CHECK(cb->binding != c->handle && cb->binding != p->handle);
    CHECK(cb->provider_binding_context == (void *)pb);
    CHECK(cb->provider_dispatch == (const void *)&PROVIDER_DISPATCH);
    CHECK(pb->client_binding_context == (void *)cb);
    CHECK(pb->client_dispatch == (const void *)&CLIENT_DISPATCH_A);
    /* The peer sees the registration instance inside the caller's characteristics,
     * so NpiSpecificCharacteristics and ModuleId come through unchanged. */
    CHECK(cb->provider_instance->ModuleId == &p->module_id);
    CHECK(pb->client_instance->ModuleId == &c->module_id);
    CHECK(NmrIsEqualNpiModuleId(pb->client_instance->ModuleId, &c->module_id));
}

/* Both detach callbacks ran once with the right contexts, both cleanups once after
 * them. */
static void check_detached_and_cleaned(test_client *c, test_provider *p, uintptr_t cb,
                                       uintptr_t pb)
{
    CHECK_EQ_INT(c->detach_calls, 1);
    CHECK_EQ_INT(p->detach_calls, 1);
    CHECK_EQ_INT(c->cleanup_calls, 1);
    CHECK_EQ_INT(p->cleanup_calls, 1);
    CHECK((uintptr_t)atomic_load(&c->detach_ctx_seen) == cb);
    CHECK((uintptr_t)atomic_load(&p->detach_ctx_seen) == pb);
    CHECK((uintptr_t)atomic_load(&c->cleanup_ctx_seen) == cb);
    CHECK((uintptr_t)atomic_load(&p->cleanup_ctx_seen) == pb);
    CHECK(c->cleanup_seq > c->detach_seq && c->cleanup_seq > p->detach_seq);
    CHECK(p->cleanup_seq > c->detach_seq && p->cleanup_seq > p->detach_seq);
}

static void attach_runs_inside_provider_registration(void)
{
    NPIID npi = fresh_npi();
    test_client c;
    test_provider p;
    client_init(&c, npi, 1);
    provider_init(&p, npi, 2);
    CHECK_STATUS(client_register(&c), STATUS_SUCCESS);
    CHECK_EQ_INT(c.attach_calls, 0);
    CHECK_STATUS(provider_register(&p), STATUS_SUCCESS);
    check_bound(&c, &p);
    /* The provider's handle was written before its attach callback ran. */
    CHECK(atomic_load(&p.handle_at_attach) == p.handle);
    uintptr_t cb = (uintptr_t)atomic_load(&c.last), pb = (uintptr_t)atomic_load(&p.last);

    CHECK_STATUS(NmrDeregisterProvider(p.handle), STATUS_PENDING);
    CHECK_STATUS(NmrWaitForProviderDeregisterComplete(p.handle), STATUS_SUCCESS);
    check_detached_and_cleaned(&c, &p, cb, pb);

    client_unload(&c);
    CHECK_EQ_INT(c.detach_calls, 1);
    CHECK_EQ_INT(c.cleanup_calls, 1);
}

static void attach_runs_inside_client_registration(void)
{
    NPIID npi = fresh_npi();
    test_client c;
    test_provider p;
    client_init(&c, npi, 1);
    provider_init(&p, npi, 2);
    CHECK_STATUS(provider_register(&p), STATUS_SUCCESS);
    CHECK_EQ_INT(p.attach_calls, 0);
    CHECK_STATUS(client_register(&c), STATUS_SUCCESS);
    check_bound(&c, &p);
    /* The client's handle was written before its attach callback ran. */
    CHECK(atomic_load(&c.handle_at_attach) == c.handle);
    uintptr_t cb = (uintptr_t)atomic_load(&c.last), pb = (uintptr_t)atomic_load(&p.last);

    CHECK_STATUS(NmrDeregisterClient(c.handle), STATUS_PENDING);
    CHECK_STATUS(NmrWaitForClientDeregisterComplete(c.handle), STATUS_SUCCESS);
    check_detached_and_cleaned(&c, &p, cb, pb);

    provider_unload(&p);
    CHECK_EQ_INT(p.detach_calls, 1);
}

static void modules_on_other_npis_never_attach(void)
{
    test_client c;
    test_provider p;
    client_init(&c, fresh_npi(), 1);
    provider_init(&p, fresh_npi(), 2);
    CHECK_STATUS(client_register(&c), STATUS_SUCCESS);
    CHECK_STATUS(provider_register(&p), STATUS_SUCCESS);
    CHECK_EQ_INT(c.attach_calls, 0);
    CHECK_EQ_INT(p.attach_calls, 0);
    client_unload(&c);
    provider_unload(&p);
}

static void client_attaches_to_every_provider_and_detaches_each(void)
{
    NPIID npi = fresh_npi();
    test_client c;
    test_provider p[3];
    client_init(&c, npi, 1);
    for (int i = 0; i < 3; i++) {
        provider_init(&p[i], npi, 10 + (uint32_t)i);
        p[i].chars.ProviderRegistrationInstance.Number = (ULONG)i;
    }
    CHECK_STATUS(provider_register(&p[0]), STATUS_SUCCESS);
    CHECK_STATUS(client_register(&c), STATUS_SUCCESS);
    CHECK_STATUS(provider_register(&p[1]), STATUS_SUCCESS);
    CHECK_STATUS(provider_register(&p[2]), STATUS_SUCCESS);
    CHECK_EQ_INT(c.attach_calls, 3);
    CHECK_EQ_INT(c.attached, 3);
    client_unload(&c);
    CHECK_EQ_INT(c.detach_calls, 3);
    CHECK_EQ_INT(c.cleanup_calls, 3);
    for (int i = 0; i < 3; i++) {
        CHECK_EQ_INT(p[i].attach_calls, 1);
        CHECK_EQ_INT(p[i].detach_calls, 1);
        CHECK_EQ_INT(p[i].cleanup_calls, 1);
        provider_unload(&p[i]);
        CHECK_EQ_INT(p[i].detach_calls, 1);
    }
}

static void same_characteristics_can_register_again_after_wait(void)
{
    NPIID npi = fresh_npi();
    test_client c;
    test_provider p;
    client_init(&c, npi, 1);
    provider_init(&p, npi, 2);
    CHECK_STATUS(provider_register(&p), STATUS_SUCCESS);
    for (int i = 0; i < 3; i++) {
        HANDLE old = c.handle;
        CHECK_STATUS(client_register(&c), STATUS_SUCCESS);
        CHECK(c.handle != old);
        client_unload(&c);
    }
    CHECK_EQ_INT(c.attached, 3);
    CHECK_EQ_INT(c.cleanup_calls, 3);
    CHECK_EQ_INT(p.cleanup_calls, 3);
    provider_unload(&p);
}

/* ---- pending detach ------------------------------------------------------ */

typedef struct waiter {
    HANDLE handle;
    int client;
    atomic_int done;
    NTSTATUS status;
    pthread_t thread;
} waiter;

static void *waiter_main(void *arg)
{
    waiter *w = (waiter *)arg;
    w->status = w->client ? NmrWaitForClientDeregisterComplete(w->handle)
                          : NmrWaitForProviderDeregisterComplete(w->handle);
    atomic_store(&w->done, 1);
    return NULL;
}

static void waiter_start(waiter *w, HANDLE h, int client)
{
    memset(w, 0, sizeof *w);
    w->handle = h;
    w->client = client;
    CHECK(pthread_create(&w->thread, NULL, waiter_main, w) == 0);
}

static void waiter_join(waiter *w)
{
    pthread_join(w->thread, NULL);
    CHECK_STATUS(w->status, STATUS_SUCCESS);
}

static void pending_client_detach_defers_cleanup_until_complete(void)
{
    NPIID npi = fresh_npi();
    test_client c;
    test_provider p;
    client_init(&c, npi, 1);
    provider_init(&p, npi, 2);
    c.detach_result = STATUS_PENDING;
    CHECK_STATUS(provider_register(&p), STATUS_SUCCESS);
    CHECK_STATUS(client_register(&c), STATUS_SUCCESS);
    check_bound(&c, &p);
    HANDLE binding = atomic_load(&c.last_binding);

    CHECK_STATUS(NmrDeregisterClient(c.handle), STATUS_PENDING);
    /* Both detach callbacks were issued although the client's pends. */
    CHECK_EQ_INT(c.detach_calls, 1);
    CHECK_EQ_INT(p.detach_calls, 1);
    CHECK_EQ_INT(c.cleanup_calls, 0);
    CHECK_EQ_INT(p.cleanup_calls, 0);

    waiter w;
    waiter_start(&w, c.handle, 1);
    sleep_ms(50);
    CHECK_EQ_INT(w.done, 0); /* the wait covers the pending detach */
    CHECK_EQ_INT(c.cleanup_calls, 0);

    NmrClientDetachProviderComplete(binding);
    waiter_join(&w);
    CHECK_EQ_INT(c.cleanup_calls, 1);
    CHECK_EQ_INT(p.cleanup_calls, 1);
    provider_unload(&p);
    CHECK_EQ_INT(p.detach_calls, 1);
}

static void pending_provider_detach_defers_cleanup_until_complete(void)
{
    NPIID npi = fresh_npi();
    test_client c;
    test_provider p;
    client_init(&c, npi, 1);
    provider_init(&p, npi, 2);
    p.detach_result = STATUS_PENDING;
    CHECK_STATUS(client_register(&c), STATUS_SUCCESS);
    CHECK_STATUS(provider_register(&p), STATUS_SUCCESS);
    check_bound(&c, &p);
    HANDLE binding = atomic_load(&p.last_binding);

    CHECK_STATUS(NmrDeregisterProvider(p.handle), STATUS_PENDING);
    CHECK_EQ_INT(c.detach_calls, 1);
    CHECK_EQ_INT(p.detach_calls, 1);
    CHECK_EQ_INT(c.cleanup_calls, 0);
    CHECK_EQ_INT(p.cleanup_calls, 0);

    waiter w;
    waiter_start(&w, p.handle, 0);
    sleep_ms(50);
    CHECK_EQ_INT(w.done, 0);

    NmrProviderDetachClientComplete(binding);
    waiter_join(&w);
    CHECK_EQ_INT(c.cleanup_calls, 1);
    CHECK_EQ_INT(p.cleanup_calls, 1);
    client_unload(&c);
}

/* The peer's wait also covers a detach that pends on the other side. */
static void wait_covers_the_peers_pending_detach(void)
{
    NPIID npi = fresh_npi();
    test_client c;
    test_provider p;
    client_init(&c, npi, 1);
    provider_init(&p, npi, 2);
    p.detach_result = STATUS_PENDING;
    CHECK_STATUS(client_register(&c), STATUS_SUCCESS);
    CHECK_STATUS(provider_register(&p), STATUS_SUCCESS);
    HANDLE binding = atomic_load(&p.last_binding);

    CHECK_STATUS(NmrDeregisterClient(c.handle), STATUS_PENDING);
    waiter w;
    waiter_start(&w, c.handle, 1);
    sleep_ms(50);
    CHECK_EQ_INT(w.done, 0);
    NmrProviderDetachClientComplete(binding);
    waiter_join(&w);
    CHECK_EQ_INT(c.cleanup_calls, 1);
    CHECK_EQ_INT(p.cleanup_calls, 1);
    provider_unload(&p);
}

static void cleanup_runs_inside_the_last_complete_call(void)
{
    NPIID npi = fresh_npi();
    test_client c;
    test_provider p;
    client_init(&c, npi, 1);
    provider_init(&p, npi, 2);
    c.detach_result = STATUS_PENDING;
    p.detach_result = STATUS_PENDING;
    CHECK_STATUS(client_register(&c), STATUS_SUCCESS);
    CHECK_STATUS(provider_register(&p), STATUS_SUCCESS);
    HANDLE binding = atomic_load(&c.last_binding);

    CHECK_STATUS(NmrDeregisterProvider(p.handle), STATUS_PENDING);
    CHECK_EQ_INT(c.detach_calls, 1);
    CHECK_EQ_INT(p.detach_calls, 1);
    NmrProviderDetachClientComplete(binding);
    CHECK_EQ_INT(c.cleanup_calls, 0); /* the client side is still pending */
    CHECK_EQ_INT(p.cleanup_calls, 0);
    int before = next_seq();
    NmrClientDetachProviderComplete(binding);
    int after = next_seq();
    /* Both cleanups ran inside the second complete call, on this thread. */
    CHECK_EQ_INT(c.cleanup_calls, 1);
    CHECK_EQ_INT(p.cleanup_calls, 1);
    CHECK(c.cleanup_seq > before && c.cleanup_seq < after);
    CHECK(p.cleanup_seq > before && p.cleanup_seq < after);
    CHECK_STATUS(NmrWaitForProviderDeregisterComplete(p.handle), STATUS_SUCCESS);
    client_unload(&c);
}

static void provider_completes_inside_its_detach_callback(void)
{
    NPIID npi = fresh_npi();
    test_client c;
    test_provider p;
    client_init(&c, npi, 1);
    provider_init(&p, npi, 2);
    p.complete_in_detach = 1;
    CHECK_STATUS(client_register(&c), STATUS_SUCCESS);
    CHECK_STATUS(provider_register(&p), STATUS_SUCCESS);
    uintptr_t cb = (uintptr_t)atomic_load(&c.last), pb = (uintptr_t)atomic_load(&p.last);
    CHECK_STATUS(NmrDeregisterClient(c.handle), STATUS_PENDING);
    CHECK_STATUS(NmrWaitForClientDeregisterComplete(c.handle), STATUS_SUCCESS);
    check_detached_and_cleaned(&c, &p, cb, pb);
    provider_unload(&p);
}

static void client_completes_inside_its_detach_callback(void)
{
    NPIID npi = fresh_npi();
    test_client c;
    test_provider p;
    client_init(&c, npi, 1);
    provider_init(&p, npi, 2);
    c.complete_in_detach = 1;
    CHECK_STATUS(client_register(&c), STATUS_SUCCESS);
    CHECK_STATUS(provider_register(&p), STATUS_SUCCESS);
    uintptr_t cb = (uintptr_t)atomic_load(&c.last), pb = (uintptr_t)atomic_load(&p.last);
    CHECK_STATUS(NmrDeregisterProvider(p.handle), STATUS_PENDING);
    CHECK_STATUS(NmrWaitForProviderDeregisterComplete(p.handle), STATUS_SUCCESS);
    check_detached_and_cleaned(&c, &p, cb, pb);
    client_unload(&c);
}

/* Complete arrives from another thread before the detach callback has returned
 * STATUS_PENDING (the callback joins that thread first). */
static void complete_from_another_thread_before_pending_is_returned(void)
{
    NPIID npi = fresh_npi();
    test_client c;
    test_provider p;
    client_init(&c, npi, 1);
    provider_init(&p, npi, 2);
    p.complete_on_thread = 1;
    CHECK_STATUS(client_register(&c), STATUS_SUCCESS);
    CHECK_STATUS(provider_register(&p), STATUS_SUCCESS);
    uintptr_t cb = (uintptr_t)atomic_load(&c.last), pb = (uintptr_t)atomic_load(&p.last);
    CHECK_STATUS(NmrDeregisterProvider(p.handle), STATUS_PENDING);
    CHECK_STATUS(NmrWaitForProviderDeregisterComplete(p.handle), STATUS_SUCCESS);
    check_detached_and_cleaned(&c, &p, cb, pb);
    client_unload(&c);
}

static void both_sides_deregistering_detach_each_side_once(void)
{
    NPIID npi = fresh_npi();
    test_client c;
    test_provider p;
    client_init(&c, npi, 1);
    provider_init(&p, npi, 2);
    p.detach_result = STATUS_PENDING;
    CHECK_STATUS(client_register(&c), STATUS_SUCCESS);
    CHECK_STATUS(provider_register(&p), STATUS_SUCCESS);
    HANDLE binding = atomic_load(&p.last_binding);
    CHECK_STATUS(NmrDeregisterProvider(p.handle), STATUS_PENDING);
    CHECK_STATUS(NmrDeregisterClient(c.handle), STATUS_PENDING);
    CHECK_EQ_INT(c.detach_calls, 1);
    CHECK_EQ_INT(p.detach_calls, 1);
    waiter wc, wp;
    waiter_start(&wc, c.handle, 1);
    waiter_start(&wp, p.handle, 0);
    NmrProviderDetachClientComplete(binding);
    waiter_join(&wc);
    waiter_join(&wp);
    CHECK_EQ_INT(c.detach_calls, 1);
    CHECK_EQ_INT(p.detach_calls, 1);
    CHECK_EQ_INT(c.cleanup_calls, 1);
    CHECK_EQ_INT(p.cleanup_calls, 1);
}

static void deregistering_client_gets_no_new_attach(void)
{
    NPIID npi = fresh_npi();
    test_client c;
    test_provider p1, p2;
    client_init(&c, npi, 1);
    provider_init(&p1, npi, 2);
    provider_init(&p2, npi, 3);
    c.detach_result = STATUS_PENDING;
    CHECK_STATUS(client_register(&c), STATUS_SUCCESS);
    CHECK_STATUS(provider_register(&p1), STATUS_SUCCESS);
    HANDLE binding = atomic_load(&c.last_binding);
    CHECK_STATUS(NmrDeregisterClient(c.handle), STATUS_PENDING);
    CHECK_STATUS(provider_register(&p2), STATUS_SUCCESS);
    CHECK_EQ_INT(c.attach_calls, 1);
    CHECK_EQ_INT(p2.attach_calls, 0);
    NmrClientDetachProviderComplete(binding);
    CHECK_STATUS(NmrWaitForClientDeregisterComplete(c.handle), STATUS_SUCCESS);
    provider_unload(&p1);
    provider_unload(&p2);
    CHECK_EQ_INT(p2.detach_calls, 0);
}

/* ---- late-comer: deregistration during attach ---------------------------- */

static void deregister_peer_provider(test_client *c, client_binding *cb)
{
    (void)cb;
    test_provider *p = (test_provider *)c->user;
    CHECK_STATUS(NmrDeregisterProvider(p->handle), STATUS_PENDING);
    /* The attach has not returned yet: no detach may start before it does. */
    CHECK_EQ_INT(c->detach_calls, 0);
    CHECK_EQ_INT(p->detach_calls, 0);
}

static void provider_deregistering_during_attach_is_detached_right_after(void)
{
    NPIID npi = fresh_npi();
    test_client c;
    test_provider p;
    client_init(&c, npi, 1);
    provider_init(&p, npi, 2);
    c.user = &p;
    c.on_attached = deregister_peer_provider;
    CHECK_STATUS(client_register(&c), STATUS_SUCCESS);
    CHECK_STATUS(provider_register(&p), STATUS_SUCCESS);
    /* Attach succeeded, then detach ran at once, inside NmrRegisterProvider. */
    CHECK_EQ_INT(c.attached, 1);
    CHECK_EQ_INT(p.attached, 1);
    CHECK_EQ_INT(c.detach_calls, 1);
    CHECK_EQ_INT(p.detach_calls, 1);
    CHECK(c.detach_seq > 0 && p.detach_seq > 0);
    CHECK_STATUS(NmrWaitForProviderDeregisterComplete(p.handle), STATUS_SUCCESS);
    CHECK_EQ_INT(c.cleanup_calls, 1);
    CHECK_EQ_INT(p.cleanup_calls, 1);
    client_unload(&c);
    CHECK_EQ_INT(c.detach_calls, 1);
}

static void deregister_self(test_client *c, client_binding *cb)
{
    (void)cb;
    /* Our handle is already written although NmrRegisterClient has not returned. */
    CHECK(c->handle != NULL);
    CHECK_STATUS(NmrDeregisterClient(c->handle), STATUS_PENDING);
    CHECK_EQ_INT(c->detach_calls, 0);
}

static void client_deregistering_inside_its_own_attach_is_detached_inside_register(void)
{
    NPIID npi = fresh_npi();
    test_client c;
    test_provider p;
    client_init(&c, npi, 1);
    provider_init(&p, npi, 2);
    c.on_attached = deregister_self;
    CHECK_STATUS(provider_register(&p), STATUS_SUCCESS);
    CHECK_STATUS(client_register(&c), STATUS_SUCCESS);
    CHECK_EQ_INT(c.attached, 1);
    CHECK_EQ_INT(c.detach_calls, 1);
    CHECK_EQ_INT(p.detach_calls, 1);
    CHECK_STATUS(NmrWaitForClientDeregisterComplete(c.handle), STATUS_SUCCESS);
    CHECK_EQ_INT(c.cleanup_calls, 1);
    CHECK_EQ_INT(p.cleanup_calls, 1);
    /* Deregistering again is misuse. */
    CHECK_STATUS(NmrDeregisterClient(c.handle), STATUS_INVALID_PARAMETER);
    provider_unload(&p);
}

/* Deregistration from another thread while the attach is in progress. */
typedef struct late_ctx {
    HANDLE provider;
    atomic_int deregistered;
    NTSTATUS status;
} late_ctx;

static void *late_deregister_main(void *arg)
{
    late_ctx *l = (late_ctx *)arg;
    l->status = NmrDeregisterProvider(l->provider);
    atomic_store(&l->deregistered, 1);
    return NULL;
}

static void deregister_provider_from_thread(test_client *c, client_binding *cb)
{
    (void)cb;
    test_provider *p = (test_provider *)c->user;
    late_ctx l;
    memset(&l, 0, sizeof l);
    l.provider = p->handle;
    pthread_t t;
    CHECK(pthread_create(&t, NULL, late_deregister_main, &l) == 0);
    pthread_join(t, NULL); /* Deregister must not block on our attach */
    CHECK_STATUS(l.status, STATUS_PENDING);
    CHECK_EQ_INT(p->detach_calls, 0);
}

static void deregistration_on_another_thread_during_attach_detaches_after_it(void)
{
    NPIID npi = fresh_npi();
    test_client c;
    test_provider p;
    client_init(&c, npi, 1);
    provider_init(&p, npi, 2);
    c.user = &p;
    c.on_attached = deregister_provider_from_thread;
    CHECK_STATUS(client_register(&c), STATUS_SUCCESS);
    CHECK_STATUS(provider_register(&p), STATUS_SUCCESS);
    CHECK_STATUS(NmrWaitForProviderDeregisterComplete(p.handle), STATUS_SUCCESS);
    CHECK_EQ_INT(c.detach_calls, 1);
    CHECK_EQ_INT(p.detach_calls, 1);
    CHECK_EQ_INT(c.cleanup_calls, 1);
    CHECK_EQ_INT(p.cleanup_calls, 1);
    client_unload(&c);
}

/* ---- refusals ---------------------------------------------------------------- */

static NPI_MODULEID g_wanted_module;

static int accept_wanted_module(test_client *c, PNPI_REGISTRATION_INSTANCE provider)
{
    (void)c;
    return NmrIsEqualNpiModuleId(provider->ModuleId, &g_wanted_module);
}

static void client_refuses_providers_by_module_id(void)
{
    NPIID npi = fresh_npi();
    test_client c;
    test_provider p1, p2;
    client_init(&c, npi, 1);
    provider_init(&p1, npi, 10);
    provider_init(&p2, npi, 11);
    g_wanted_module = p2.module_id;
    c.accept = accept_wanted_module;
    CHECK_STATUS(provider_register(&p1), STATUS_SUCCESS);
    CHECK_STATUS(provider_register(&p2), STATUS_SUCCESS);
    CHECK_STATUS(client_register(&c), STATUS_SUCCESS);
    CHECK_EQ_INT(c.attach_calls, 2);
    CHECK_EQ_INT(c.attached, 1);
    CHECK_EQ_INT(p1.attach_calls, 0);
    CHECK_EQ_INT(p2.attached, 1);
    client_unload(&c);
    CHECK_EQ_INT(c.detach_calls, 1);
    CHECK_EQ_INT(c.cleanup_calls, 1);
    provider_unload(&p1);
    provider_unload(&p2);
    CHECK_EQ_INT(p1.detach_calls, 0);
    CHECK_EQ_INT(p1.cleanup_calls, 0);
    CHECK_EQ_INT(p2.detach_calls, 1);
}

static int accept_number_8(test_client *c, PNPI_REGISTRATION_INSTANCE provider)
{
    (void)c;
    return provider->Number == 8;
}

static void client_refuses_providers_by_number(void)
{
    NPIID npi = fresh_npi();
    test_client c;
    test_provider p7, p8;
    client_init(&c, npi, 1);
    provider_init(&p7, npi, 2);
    provider_init(&p8, npi, 2);
    p7.chars.ProviderRegistrationInstance.Number = 7;
    p8.chars.ProviderRegistrationInstance.Number = 8;
    c.accept = accept_number_8;
    CHECK_STATUS(client_register(&c), STATUS_SUCCESS);
    CHECK_STATUS(provider_register(&p7), STATUS_SUCCESS);
    CHECK_STATUS(provider_register(&p8), STATUS_SUCCESS);
    CHECK_EQ_INT(c.attach_calls, 2);
    CHECK_EQ_INT(c.attached, 1);
    CHECK_EQ_INT(p7.attach_calls, 0);
    CHECK_EQ_INT(p8.attached, 1);
    provider_unload(&p7);
    provider_unload(&p8);
    CHECK_EQ_INT(p7.detach_calls, 0);
    CHECK_EQ_INT(p8.detach_calls, 1);
    CHECK_EQ_INT(c.detach_calls, 1);
    client_unload(&c);
}

typedef struct npi_chars {
    uint32_t revision;
} npi_chars;

static int accept_revision_2(test_client *c, PNPI_REGISTRATION_INSTANCE provider)
{
    (void)c;
    const npi_chars *nc = (const npi_chars *)provider->NpiSpecificCharacteristics;
    return nc != NULL && nc->revision >= 2;
}

static int provider_accepts_revision_2(test_provider *p, PNPI_REGISTRATION_INSTANCE client,
                                       const void *client_dispatch)
{
    (void)p;
    (void)client_dispatch;
    const npi_chars *nc = (const npi_chars *)client->NpiSpecificCharacteristics;
    return nc != NULL && nc->revision >= 2;
}

static void modules_refuse_each_other_by_npi_specific_characteristics(void)
{
    NPIID npi = fresh_npi();
    static const npi_chars rev1 = {1}, rev2 = {2};
    test_client c_old, c_new;
    test_provider p_old, p_new;
    client_init(&c_old, npi, 1);
    client_init(&c_new, npi, 2);
    provider_init(&p_old, npi, 3);
    provider_init(&p_new, npi, 4);
    c_old.chars.ClientRegistrationInstance.NpiSpecificCharacteristics = &rev1;
    c_new.chars.ClientRegistrationInstance.NpiSpecificCharacteristics = &rev2;
    p_old.chars.ProviderRegistrationInstance.NpiSpecificCharacteristics = &rev1;
    p_new.chars.ProviderRegistrationInstance.NpiSpecificCharacteristics = &rev2;
    c_new.accept = accept_revision_2;                  /* clients refuse old providers */
    p_new.accept = provider_accepts_revision_2;        /* new provider refuses old clients */
    CHECK_STATUS(provider_register(&p_old), STATUS_SUCCESS);
    CHECK_STATUS(provider_register(&p_new), STATUS_SUCCESS);
    CHECK_STATUS(client_register(&c_old), STATUS_SUCCESS);
    CHECK_STATUS(client_register(&c_new), STATUS_SUCCESS);
    /* c_old attaches to p_old; p_new refused c_old through NmrClientAttachProvider. */
    CHECK_EQ_INT(c_old.attach_calls, 2);
    CHECK_EQ_INT(c_old.attached, 1);
    CHECK_EQ_INT(p_new.attach_calls, 2); /* c_old (refused) and c_new */
    CHECK_EQ_INT(p_new.attached, 1);
    /* c_new refused p_old before calling NmrClientAttachProvider. */
    CHECK_EQ_INT(c_new.attach_calls, 2);
    CHECK_EQ_INT(c_new.attached, 1);
    CHECK_EQ_INT(p_old.attach_calls, 1);
    CHECK_STATUS(atomic_load(&c_new.attach_status_seen), STATUS_SUCCESS);

    client_unload(&c_old);
    client_unload(&c_new);
    CHECK_EQ_INT(c_old.detach_calls, 1);
    CHECK_EQ_INT(c_new.detach_calls, 1);
    CHECK_EQ_INT(p_old.detach_calls, 1);
    CHECK_EQ_INT(p_new.detach_calls, 1);
    CHECK_EQ_INT(p_old.cleanup_calls, 1);
    CHECK_EQ_INT(p_new.cleanup_calls, 1);
    provider_unload(&p_old);
    provider_unload(&p_new);
}

static int provider_refuses_all(test_provider *p, PNPI_REGISTRATION_INSTANCE client,
                                const void *client_dispatch)
{
    (void)p;
    (void)client;
    (void)client_dispatch;
    return 0;
}

static void provider_refusal_is_returned_by_nmr_client_attach_provider(void)
{
    NPIID npi = fresh_npi();
    test_client c;
    test_provider p;
    client_init(&c, npi, 1);
    provider_init(&p, npi, 2);
    p.accept = provider_refuses_all;
    CHECK_STATUS(provider_register(&p), STATUS_SUCCESS);
    CHECK_STATUS(client_register(&c), STATUS_SUCCESS);
    CHECK_STATUS(atomic_load(&c.attach_status_seen), STATUS_NOINTERFACE);
    CHECK_EQ_INT(c.attached, 0);
    CHECK_EQ_INT(p.attach_calls, 1);
    client_unload(&c);
    provider_unload(&p);
    CHECK_EQ_INT(c.detach_calls + c.cleanup_calls + p.detach_calls + p.cleanup_calls, 0);
}

static NTSTATUS NTAPI provider_attach_fails_with_resources(
    HANDLE binding, PVOID context, PNPI_REGISTRATION_INSTANCE client, PVOID cbc,
    const void *cd, PVOID *pbc, const void **pd)
{
    (void)binding, (void)client, (void)cbc, (void)cd, (void)pbc, (void)pd;
    test_provider *p = (test_provider *)context;
    atomic_fetch_add(&p->attach_calls, 1);
    return STATUS_INSUFFICIENT_RESOURCES;
}

static void provider_error_status_passes_through_unchanged(void)
{
    NPIID npi = fresh_npi();
    test_client c;
    test_provider p;
    client_init(&c, npi, 1);
    provider_init(&p, npi, 2);
    p.chars.ProviderAttachClient = provider_attach_fails_with_resources;
    CHECK_STATUS(provider_register(&p), STATUS_SUCCESS);
    CHECK_STATUS(client_register(&c), STATUS_SUCCESS);
    CHECK_STATUS(atomic_load(&c.attach_status_seen), STATUS_INSUFFICIENT_RESOURCES);
    CHECK_EQ_INT(c.attached, 0);
    client_unload(&c);
    provider_unload(&p);
    CHECK_EQ_INT(c.detach_calls + c.cleanup_calls + p.detach_calls + p.cleanup_calls, 0);
}

static int provider_accepts_dispatch_b(test_provider *p, PNPI_REGISTRATION_INSTANCE client,
                                       const void *client_dispatch)
{
    (void)p;
    (void)client;
    return client_dispatch == (const void *)&CLIENT_DISPATCH_B;
}

static void client_may_retry_attach_with_another_dispatch(void)
{
    NPIID npi = fresh_npi();
    test_client c;
    test_provider p;
    client_init(&c, npi, 1);
    provider_init(&p, npi, 2);
    c.retry_dispatch = &CLIENT_DISPATCH_B;
    p.accept = provider_accepts_dispatch_b;
    CHECK_STATUS(provider_register(&p), STATUS_SUCCESS);
    CHECK_STATUS(client_register(&c), STATUS_SUCCESS);
    CHECK_EQ_INT(p.attach_calls, 2);
    CHECK_EQ_INT(p.attached, 1);
    CHECK_EQ_INT(c.attached, 1);
    CHECK(atomic_load(&p.client_dispatch_seen) == (const void *)&CLIENT_DISPATCH_B);
    client_unload(&c);
    provider_unload(&p);
    CHECK_EQ_INT(p.cleanup_calls, 1);
}

static void client_failing_after_attach_gets_provider_detached_and_both_cleaned(void)
{
    NPIID npi = fresh_npi();
    test_client c;
    test_provider p;
    client_init(&c, npi, 1);
    provider_init(&p, npi, 2);
    c.fail_after_attach = STATUS_INSUFFICIENT_RESOURCES;
    CHECK_STATUS(provider_register(&p), STATUS_SUCCESS);
    CHECK_STATUS(client_register(&c), STATUS_SUCCESS);
    CHECK_EQ_INT(p.attached, 1);
    client_unload(&c);
    /* The provider attached, so it is detached and both contexts are cleaned up. */
    CHECK_EQ_INT(p.detach_calls, 1);
    CHECK_EQ_INT(p.cleanup_calls, 1);
    CHECK_EQ_INT(c.cleanup_calls, 1);
    CHECK_EQ_INT(c.detach_calls, 0);
    provider_unload(&p);
    CHECK_EQ_INT(p.detach_calls, 1);
}

static void single_binding_client_refuses_a_second_provider(void)
{
    NPIID npi = fresh_npi();
    test_client c;
    test_provider p1, p2;
    client_init(&c, npi, 1);
    provider_init(&p1, npi, 2);
    provider_init(&p2, npi, 3);
    c.max_bindings = 1;
    CHECK_STATUS(client_register(&c), STATUS_SUCCESS);
    CHECK_STATUS(provider_register(&p1), STATUS_SUCCESS);
    CHECK_STATUS(provider_register(&p2), STATUS_SUCCESS);
    CHECK_EQ_INT(c.attach_calls, 2);
    CHECK_EQ_INT(c.attached, 1);
    CHECK_EQ_INT(p2.attach_calls, 0);
    provider_unload(&p1);
    CHECK_EQ_INT(c.detach_calls, 1);
    /* A declined pair is not offered again while both stay registered. */
    CHECK_EQ_INT(c.attach_calls, 2);
    provider_unload(&p2);
    client_unload(&c);
    CHECK_EQ_INT(p2.detach_calls, 0);
}

/* ---- NULL contexts and dispatch -------------------------------------------- */

static void null_contexts_and_dispatch_still_get_detach_and_cleanup(void)
{
    NPIID npi = fresh_npi();
    test_client c;
    test_provider p;
    client_init(&c, npi, 1);
    provider_init(&p, npi, 2);
    c.null_binding_context = 1;
    c.dispatch = NULL;
    p.null_binding_context = 1;
    atomic_store(&g_null_ctx_client, &c);
    atomic_store(&g_null_ctx_provider, &p);
    CHECK_STATUS(NmrRegisterProvider(&p.chars, NULL, &p.handle), STATUS_SUCCESS);
    CHECK_STATUS(NmrRegisterClient(&c.chars, NULL, &c.handle), STATUS_SUCCESS);
    CHECK_EQ_INT(c.attached, 1);
    CHECK_EQ_INT(p.attached, 1);
    CHECK(atomic_load(&c.context_seen) == NULL);
    CHECK(atomic_load(&p.context_seen) == NULL);
    CHECK(atomic_load(&p.client_binding_context_seen) == NULL);
    CHECK(atomic_load(&p.client_dispatch_seen) == NULL);
    client_unload(&c);
    CHECK_EQ_INT(c.detach_calls, 1);
    CHECK_EQ_INT(p.detach_calls, 1);
    CHECK_EQ_INT(c.cleanup_calls, 1);
    CHECK_EQ_INT(p.cleanup_calls, 1);
    CHECK(atomic_load(&c.detach_ctx_seen) == NULL);
    CHECK(atomic_load(&p.detach_ctx_seen) == NULL);
    CHECK(atomic_load(&c.cleanup_ctx_seen) == NULL);
    CHECK(atomic_load(&p.cleanup_ctx_seen) == NULL);
    provider_unload(&p);
    atomic_store(&g_null_ctx_client, NULL);
    atomic_store(&g_null_ctx_provider, NULL);
}

static void null_cleanup_callbacks_are_allowed(void)
{
    NPIID npi = fresh_npi();
    test_client c;
    test_provider p;
    client_init(&c, npi, 1);
    provider_init(&p, npi, 2);
    c.chars.ClientCleanupBindingContext = NULL;
    p.chars.ProviderCleanupBindingContext = NULL;
    c.null_binding_context = 1; /* nothing to free without a cleanup callback */
    p.null_binding_context = 1;
    atomic_store(&g_null_ctx_client, &c);
    atomic_store(&g_null_ctx_provider, &p);
    CHECK_STATUS(client_register(&c), STATUS_SUCCESS);
    CHECK_STATUS(provider_register(&p), STATUS_SUCCESS);
    CHECK_EQ_INT(c.attached, 1);
    provider_unload(&p);
    CHECK_EQ_INT(c.detach_calls, 1);
    CHECK_EQ_INT(p.detach_calls, 1);
    client_unload(&c);
    atomic_store(&g_null_ctx_client, NULL);
    atomic_store(&g_null_ctx_provider, NULL);
}

/* ---- re-entrancy ------------------------------------------------------------ */

typedef struct reentry {
    test_provider *q; /* registered from c's attach, deregistered from c's cleanup */
    test_client *e;   /* registered from p's detach */
} reentry;

static void reentry_register_q(test_client *c, client_binding *cb)
{
    (void)cb;
    reentry *r = (reentry *)c->user;
    CHECK_STATUS(provider_register(r->q), STATUS_SUCCESS);
}

static void reentry_register_e(test_provider *p, provider_binding *pb)
{
    (void)pb;
    reentry *r = (reentry *)p->user;
    CHECK_STATUS(client_register(r->e), STATUS_SUCCESS);
}

static void reentry_deregister_q(test_client *c, client_binding *cb)
{
    (void)cb;
    reentry *r = (reentry *)c->user;
    CHECK_STATUS(NmrDeregisterProvider(r->q->handle), STATUS_PENDING);
}

static void callbacks_may_register_and_deregister_other_modules(void)
{
    NPIID a = fresh_npi(), b = fresh_npi();
    test_client c, d, e;
    test_provider p, q;
    client_init(&c, a, 1);
    provider_init(&p, a, 2);
    client_init(&d, b, 3);
    client_init(&e, b, 4);
    provider_init(&q, b, 5);
    reentry r = {&q, &e};
    c.user = &r;
    p.user = &r;
    c.on_attached = reentry_register_q;
    p.on_detach = reentry_register_e;
    c.on_cleanup = reentry_deregister_q;

    CHECK_STATUS(client_register(&d), STATUS_SUCCESS);
    CHECK_STATUS(client_register(&c), STATUS_SUCCESS);
    CHECK_STATUS(provider_register(&p), STATUS_SUCCESS); /* c attaches; q registers; d attaches */
    CHECK_EQ_INT(c.attached, 1);
    CHECK_EQ_INT(d.attached, 1);
    CHECK_EQ_INT(q.attached, 1);

    /* p's detach registers e (which attaches to q); c's cleanup deregisters q. */
    CHECK_STATUS(NmrDeregisterProvider(p.handle), STATUS_PENDING);
    CHECK_STATUS(NmrWaitForProviderDeregisterComplete(p.handle), STATUS_SUCCESS);
    CHECK_EQ_INT(e.attached, 1);
    CHECK_EQ_INT(q.attached, 2);
    CHECK_STATUS(NmrWaitForProviderDeregisterComplete(q.handle), STATUS_SUCCESS);
    CHECK_EQ_INT(d.detach_calls, 1);
    CHECK_EQ_INT(e.detach_calls, 1);
    CHECK_EQ_INT(q.detach_calls, 2);
    CHECK_EQ_INT(q.cleanup_calls, 2);
    client_unload(&c);
    client_unload(&d);
    client_unload(&e);
}

/* While a callback blocks (joining a thread), other threads use the registrar freely:
 * no internal lock is held across callbacks. */
static void *unrelated_pair_main(void *arg)
{
    (void)arg;
    NPIID npi = fresh_npi();
    test_client c;
    test_provider p;
    client_init(&c, npi, 100);
    provider_init(&p, npi, 101);
    CHECK_STATUS(client_register(&c), STATUS_SUCCESS);
    CHECK_STATUS(provider_register(&p), STATUS_SUCCESS);
    CHECK_EQ_INT(c.attached, 1);
    provider_unload(&p);
    client_unload(&c);
    CHECK_EQ_INT(c.cleanup_calls, 1);
    return NULL;
}

static void run_unrelated_pair_on_thread(void)
{
    pthread_t t;
    CHECK(pthread_create(&t, NULL, unrelated_pair_main, NULL) == 0);
    pthread_join(t, NULL);
}

static void block_in_client_attach(test_client *c, client_binding *cb)
{
    (void)c, (void)cb;
    run_unrelated_pair_on_thread();
}

static void block_in_provider_detach(test_provider *p, provider_binding *pb)
{
    (void)p, (void)pb;
    run_unrelated_pair_on_thread();
}

static void block_in_provider_cleanup(test_provider *p, provider_binding *pb)
{
    (void)p, (void)pb;
    run_unrelated_pair_on_thread();
}

static void other_threads_use_the_registrar_while_a_callback_blocks(void)
{
    NPIID npi = fresh_npi();
    test_client c;
    test_provider p;
    client_init(&c, npi, 1);
    provider_init(&p, npi, 2);
    c.on_attached = block_in_client_attach;
    p.on_detach = block_in_provider_detach;
    p.on_cleanup = block_in_provider_cleanup;
    CHECK_STATUS(client_register(&c), STATUS_SUCCESS);
    CHECK_STATUS(provider_register(&p), STATUS_SUCCESS);
    CHECK_EQ_INT(c.attached, 1);
    provider_unload(&p);
    client_unload(&c);
    CHECK_EQ_INT(p.cleanup_calls, 1);
}

/* ---- patterns of real callers ------------------------------------------------ */

/* msquic's client: register, then wait (with a timeout) for a provider that may register
 * later on another thread; its detach pends until the owner tears down, and the owner
 * completes the detach and then deregisters. */
typedef struct attach_event {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int set;
} attach_event;

static attach_event g_attach_event = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0};

static void signal_attached(test_client *c, client_binding *cb)
{
    (void)c, (void)cb;
    pthread_mutex_lock(&g_attach_event.lock);
    g_attach_event.set = 1;
    pthread_cond_broadcast(&g_attach_event.cond);
    pthread_mutex_unlock(&g_attach_event.lock);
}

static void *register_provider_later(void *arg)
{
    sleep_ms(20);
    CHECK_STATUS(provider_register((test_provider *)arg), STATUS_SUCCESS);
    return NULL;
}

static void *unload_provider_main(void *arg)
{
    provider_unload((test_provider *)arg);
    return NULL;
}

static void msquic_style_client_waits_for_a_late_provider_and_completes_its_detach_at_teardown(void)
{
    NPIID npi = fresh_npi();
    test_client c;
    test_provider p;
    client_init(&c, npi, 1);
    provider_init(&p, npi, 2);
    c.dispatch = NULL;              /* msquic's client has no dispatch table */
    c.max_bindings = 1;             /* and accepts a single provider */
    c.detach_result = STATUS_PENDING;
    c.on_attached = signal_attached;
    g_attach_event.set = 0;

    CHECK_STATUS(client_register(&c), STATUS_SUCCESS);
    pthread_t t;
    CHECK(pthread_create(&t, NULL, register_provider_later, &p) == 0);
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += 10;
    pthread_mutex_lock(&g_attach_event.lock);
    while (!g_attach_event.set) {
        if (pthread_cond_timedwait(&g_attach_event.cond, &g_attach_event.lock, &deadline) != 0) {
            break;
        }
    }
    int attached = g_attach_event.set;
    pthread_mutex_unlock(&g_attach_event.lock);
    pthread_join(t, NULL);
    CHECK(attached);
    client_binding *cb = atomic_load(&c.last);
    CHECK(cb != NULL && cb->provider_dispatch == (const void *)&PROVIDER_DISPATCH);

    /* The provider's driver unloads first: the client's detach pends ... */
    HANDLE binding = atomic_load(&c.last_binding);
    pthread_t unloader;
    CHECK(pthread_create(&unloader, NULL, unload_provider_main, &p) == 0);
    while (atomic_load(&c.detach_calls) == 0) {
        sleep_ms(1);
    }
    /* ... until the client's owner tears down: complete, then deregister and wait. */
    NmrClientDetachProviderComplete(binding);
    pthread_join(unloader, NULL);
    client_unload(&c);
    CHECK_EQ_INT(c.cleanup_calls, 1);
    CHECK_EQ_INT(p.cleanup_calls, 1);
}

/* xdp-for-windows' provider: checks the client's Number and module id, and allows one
 * binding per provider lifetime, refusing others with STATUS_DEVICE_NOT_READY. */
static int provider_accepts_one_client_ever(test_provider *p, PNPI_REGISTRATION_INSTANCE client,
                                            const void *client_dispatch)
{
    (void)client_dispatch;
    return client->Number == p->chars.ProviderRegistrationInstance.Number &&
           atomic_load(&p->attached) == 0;
}

static NTSTATUS NTAPI xdp_provider_attach(HANDLE binding, PVOID context,
                                          PNPI_REGISTRATION_INSTANCE client, PVOID cbc,
                                          const void *cd, PVOID *pbc, const void **pd)
{
    test_provider *p = (test_provider *)context;
    if (!provider_accepts_one_client_ever(p, client, cd)) {
        atomic_fetch_add(&p->attach_calls, 1);
        return STATUS_DEVICE_NOT_READY;
    }
    return tp_attach(binding, context, client, cbc, cd, pbc, pd);
}

static void xdp_style_provider_allows_one_binding_and_refuses_others(void)
{
    NPIID npi = fresh_npi();
    test_provider p;
    test_client c1, c2, c3;
    provider_init(&p, npi, 2);
    p.chars.ProviderAttachClient = xdp_provider_attach;
    p.chars.ProviderRegistrationInstance.Number = 12; /* the interface index */
    client_init(&c1, npi, 3);
    client_init(&c2, npi, 4);
    client_init(&c3, npi, 5);
    c1.chars.ClientRegistrationInstance.Number = 12;
    c2.chars.ClientRegistrationInstance.Number = 12;
    c3.chars.ClientRegistrationInstance.Number = 13;
    CHECK_STATUS(provider_register(&p), STATUS_SUCCESS);
    /* The client checks synchronously, right after registering, whether it attached. */
    CHECK_STATUS(client_register(&c1), STATUS_SUCCESS);
    CHECK(atomic_load(&c1.last_binding) != NULL);
    CHECK_STATUS(client_register(&c2), STATUS_SUCCESS);
    CHECK_STATUS(atomic_load(&c2.attach_status_seen), STATUS_DEVICE_NOT_READY);
    CHECK_STATUS(client_register(&c3), STATUS_SUCCESS);
    CHECK_STATUS(atomic_load(&c3.attach_status_seen), STATUS_DEVICE_NOT_READY);
    CHECK_EQ_INT(p.attached, 1);
    /* After the first client leaves, the provider still refuses: one binding per lifetime. */
    client_unload(&c1);
    CHECK_STATUS(client_register(&c1), STATUS_SUCCESS);
    CHECK_STATUS(atomic_load(&c1.attach_status_seen), STATUS_DEVICE_NOT_READY);
    client_unload(&c1);
    client_unload(&c2);
    client_unload(&c3);
    provider_unload(&p);
    CHECK_EQ_INT(p.detach_calls, 1);
    CHECK_EQ_INT(p.cleanup_calls, 1);
    CHECK_EQ_INT(c2.detach_calls + c3.detach_calls + c2.cleanup_calls + c3.cleanup_calls, 0);
}

int main(void)
{
    start_watchdog(60);
    RUN(client_registered_alone_deregisters_pending_then_waits);
    RUN(provider_registered_alone_deregisters_pending_then_waits);
    RUN(registrations_get_distinct_handles);
    RUN(attach_runs_inside_provider_registration);
    RUN(attach_runs_inside_client_registration);
    RUN(modules_on_other_npis_never_attach);
    RUN(client_attaches_to_every_provider_and_detaches_each);
    RUN(same_characteristics_can_register_again_after_wait);
    RUN(pending_client_detach_defers_cleanup_until_complete);
    RUN(pending_provider_detach_defers_cleanup_until_complete);
    RUN(wait_covers_the_peers_pending_detach);
    RUN(cleanup_runs_inside_the_last_complete_call);
    RUN(provider_completes_inside_its_detach_callback);
    RUN(client_completes_inside_its_detach_callback);
    RUN(complete_from_another_thread_before_pending_is_returned);
    RUN(both_sides_deregistering_detach_each_side_once);
    RUN(deregistering_client_gets_no_new_attach);
    RUN(provider_deregistering_during_attach_is_detached_right_after);
    RUN(client_deregistering_inside_its_own_attach_is_detached_inside_register);
    RUN(deregistration_on_another_thread_during_attach_detaches_after_it);
    RUN(client_refuses_providers_by_module_id);
    RUN(client_refuses_providers_by_number);
    RUN(modules_refuse_each_other_by_npi_specific_characteristics);
    RUN(provider_refusal_is_returned_by_nmr_client_attach_provider);
    RUN(provider_error_status_passes_through_unchanged);
    RUN(client_may_retry_attach_with_another_dispatch);
    RUN(client_failing_after_attach_gets_provider_detached_and_both_cleaned);
    RUN(single_binding_client_refuses_a_second_provider);
    RUN(null_contexts_and_dispatch_still_get_detach_and_cleanup);
    RUN(null_cleanup_callbacks_are_allowed);
    RUN(callbacks_may_register_and_deregister_other_modules);
    RUN(other_threads_use_the_registrar_while_a_callback_blocks);
    RUN(msquic_style_client_waits_for_a_late_provider_and_completes_its_detach_at_teardown);
    RUN(xdp_style_provider_allows_one_binding_and_refuses_others);
    return finish();
}
