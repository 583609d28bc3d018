/*
 * Concurrent register/deregister loops through the C API. Several threads
 * register and deregister clients and providers of one NPI in a loop while
 * detaches pend and complete on a separate completer thread (sometimes
 * before the detach callback has returned STATUS_PENDING). After every wait
 * the registration's bindings must all be detached and cleaned up exactly
 * once. Bounded: NETIO_TEST_ITERATIONS iterations per thread.
 */
#include "nmr_fixtures.h"

/* ---- completer thread: completes pending detaches asynchronously ---- */

typedef struct completion {
    HANDLE binding;
    int client_side;
} completion;

#define QUEUE_CAP 4096

static struct {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    completion items[QUEUE_CAP];
    int head, tail;
    int stop;
    pthread_t thread;
} g_queue = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, {{0, 0}}, 0, 0, 0, 0};

static void queue_push(HANDLE binding, int client_side)
{
    pthread_mutex_lock(&g_queue.lock);
    CHECK(g_queue.tail - g_queue.head < QUEUE_CAP);
    completion *c = &g_queue.items[g_queue.tail % QUEUE_CAP];
    c->binding = binding;
    c->client_side = client_side;
    g_queue.tail++;
    pthread_cond_signal(&g_queue.cond);
    pthread_mutex_unlock(&g_queue.lock);
}

static void *completer_main(void *arg)
{
    (void)arg;
    for (;;) {
        pthread_mutex_lock(&g_queue.lock);
        while (g_queue.head == g_queue.tail && !g_queue.stop) {
            pthread_cond_wait(&g_queue.cond, &g_queue.lock);
        }
        if (g_queue.head == g_queue.tail) {
            pthread_mutex_unlock(&g_queue.lock);
            return NULL;
        }
        completion c = g_queue.items[g_queue.head % QUEUE_CAP];
        g_queue.head++;
        pthread_mutex_unlock(&g_queue.lock);
        /* Never call into NMR with our own lock held. */
        if (c.client_side) {
            NmrClientDetachProviderComplete(c.binding);
        } else {
            NmrProviderDetachClientComplete(c.binding);
        }
    }
}

static void completer_start(void)
{
    g_queue.stop = 0;
    CHECK(pthread_create(&g_queue.thread, NULL, completer_main, NULL) == 0);
}

static void completer_stop(void)
{
    pthread_mutex_lock(&g_queue.lock);
    g_queue.stop = 1;
    pthread_cond_broadcast(&g_queue.cond);
    pthread_mutex_unlock(&g_queue.lock);
    pthread_join(g_queue.thread, NULL);
}

/* Detach modes, chosen per iteration. */
enum { MODE_SUCCESS, MODE_PENDING_ASYNC, MODE_COMPLETE_INSIDE, MODE_COUNT };

static void client_detach_async(test_client *c, client_binding *cb)
{
    (void)c;
    queue_push(cb->binding, 1);
}

static void provider_detach_async(test_provider *p, provider_binding *pb)
{
    (void)p;
    queue_push(pb->binding, 0);
}

static void configure_client(test_client *c, int mode)
{
    switch (mode) {
    case MODE_PENDING_ASYNC:
        c->detach_result = STATUS_PENDING;
        c->on_detach = client_detach_async;
        break;
    case MODE_COMPLETE_INSIDE:
        c->complete_in_detach = 1;
        break;
    default:
        break;
    }
}

static void configure_provider(test_provider *p, int mode)
{
    switch (mode) {
    case MODE_PENDING_ASYNC:
        p->detach_result = STATUS_PENDING;
        p->on_detach = provider_detach_async;
        break;
    case MODE_COMPLETE_INSIDE:
        p->complete_in_detach = 1;
        break;
    default:
        break;
    }
}

static atomic_long g_total_client_bindings;
static atomic_long g_total_provider_bindings;

typedef struct loop_args {
    NPIID npi;
    int iterations;
    int seed;
} loop_args;

static void *client_loop(void *arg)
{
    loop_args *a = (loop_args *)arg;
    test_client *c = (test_client *)malloc(sizeof *c);
    CHECK(c != NULL);
    for (int i = 0; i < a->iterations && c != NULL; i++) {
        client_init(c, a->npi, (uint32_t)(1000 + a->seed));
        configure_client(c, (i + a->seed) % MODE_COUNT);
        CHECK_STATUS(client_register(c), STATUS_SUCCESS);
        if (i % 7 == 0) {
            sched_yield();
        }
        client_unload(c);
        /* After the wait, every binding of this registration is gone. */
        CHECK_EQ_INT(c->detach_calls, c->attached);
        CHECK_EQ_INT(c->cleanup_calls, c->attached);
        atomic_fetch_add(&g_total_client_bindings, c->attached);
    }
    free(c);
    return NULL;
}

static void *provider_loop(void *arg)
{
    loop_args *a = (loop_args *)arg;
    test_provider *p = (test_provider *)malloc(sizeof *p);
    CHECK(p != NULL);
    for (int i = 0; i < a->iterations && p != NULL; i++) {
        provider_init(p, a->npi, (uint32_t)(2000 + a->seed));
        configure_provider(p, (i + a->seed) % MODE_COUNT);
        CHECK_STATUS(provider_register(p), STATUS_SUCCESS);
        if (i % 5 == 0) {
            sched_yield();
        }
        provider_unload(p);
        CHECK_EQ_INT(p->detach_calls, p->attached);
        CHECK_EQ_INT(p->cleanup_calls, p->attached);
        atomic_fetch_add(&g_total_provider_bindings, p->attached);
    }
    free(p);
    return NULL;
}

static void run_loops(int clients, int providers, int iters)
{
    NPIID npi = fresh_npi();
    pthread_t threads[16];
    loop_args args[16];
    int n = 0;
    atomic_store(&g_total_client_bindings, 0);
    atomic_store(&g_total_provider_bindings, 0);
    completer_start();
    for (int i = 0; i < clients; i++, n++) {
        args[n].npi = npi;
        args[n].iterations = iters;
        args[n].seed = n;
        CHECK(pthread_create(&threads[n], NULL, client_loop, &args[n]) == 0);
    }
    for (int i = 0; i < providers; i++, n++) {
        args[n].npi = npi;
        args[n].iterations = iters;
        args[n].seed = n;
        CHECK(pthread_create(&threads[n], NULL, provider_loop, &args[n]) == 0);
    }
    for (int i = 0; i < n; i++) {
        pthread_join(threads[i], NULL);
    }
    completer_stop();
    /* Every binding had one client side and one provider side. */
    CHECK_EQ_INT(atomic_load(&g_total_client_bindings), atomic_load(&g_total_provider_bindings));
    printf("     %d client x %d provider threads, %d iterations each: %ld bindings\n", clients,
           providers, iters, (long)atomic_load(&g_total_client_bindings));
}

static void one_client_thread_and_one_provider_thread(void)
{
    run_loops(1, 1, iterations(2000));
}

static void two_client_threads_and_two_provider_threads(void)
{
    run_loops(2, 2, iterations(2000) / 2);
}

/* Both sides deregister at the same moment from two threads, repeatedly. */
typedef struct race_args {
    test_client *c;
    test_provider *p;
    pthread_barrier_t *barrier;
} race_args;

static void *deregister_client_main(void *arg)
{
    race_args *r = (race_args *)arg;
    pthread_barrier_wait(r->barrier);
    client_unload(r->c);
    return NULL;
}

static void simultaneous_deregistration_detaches_each_side_once(void)
{
    int iters = iterations(2000) / 4;
    pthread_barrier_t barrier;
    pthread_barrier_init(&barrier, NULL, 2);
    completer_start();
    for (int i = 0; i < iters; i++) {
        NPIID npi = fresh_npi();
        test_client c;
        test_provider p;
        client_init(&c, npi, 1);
        provider_init(&p, npi, 2);
        configure_client(&c, i % MODE_COUNT);
        configure_provider(&p, (i / MODE_COUNT) % MODE_COUNT);
        CHECK_STATUS(client_register(&c), STATUS_SUCCESS);
        CHECK_STATUS(provider_register(&p), STATUS_SUCCESS);
        CHECK_EQ_INT(c.attached, 1);
        race_args r = {&c, &p, &barrier};
        pthread_t t;
        CHECK(pthread_create(&t, NULL, deregister_client_main, &r) == 0);
        pthread_barrier_wait(&barrier);
        provider_unload(&p);
        pthread_join(t, NULL);
        CHECK_EQ_INT(c.detach_calls, 1);
        CHECK_EQ_INT(p.detach_calls, 1);
        CHECK_EQ_INT(c.cleanup_calls, 1);
        CHECK_EQ_INT(p.cleanup_calls, 1);
    }
    completer_stop();
    pthread_barrier_destroy(&barrier);
}

int main(void)
{
    start_watchdog(120);
    RUN(one_client_thread_and_one_provider_thread);
    RUN(two_client_threads_and_two_provider_threads);
    RUN(simultaneous_deregistration_detaches_each_side_once);
    return finish();
}
