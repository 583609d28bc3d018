/*
 * Test harness for the C tests of libnetio.
 *
 * Each test program is one translation unit that includes this file (or
 * nmr_fixtures.h), runs test functions with RUN(), and ends with
 * `return finish();`, which prints "N passed, M failed" and returns non-zero
 * on any failure. A watchdog (alarm) kills the program if anything hangs.
 */
#ifndef NMR_TEST_H
#define NMR_TEST_H

#define _POSIX_C_SOURCE 200809L

#include <netioddk.h>

#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ------------------------------------------------------------------ */
/* harness                                                             */
/* ------------------------------------------------------------------ */

static atomic_int g_checks_failed;
static int g_passed;
static int g_failed;

#define CHECK(cond)                                                                      \
    do {                                                                                 \
        if (!(cond)) {                                                                   \
            atomic_fetch_add(&g_checks_failed, 1);                                       \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);    \
        }                                                                                \
    } while (0)

#define CHECK_STATUS(expr, expected)                                                     \
    do {                                                                                 \
        NTSTATUS check_s_ = (expr);                                                      \
        NTSTATUS check_e_ = (expected);                                                  \
        if (check_s_ != check_e_) {                                                      \
            atomic_fetch_add(&g_checks_failed, 1);                                       \
            fprintf(stderr, "%s:%d: %s returned 0x%08X, expected 0x%08X\n", __FILE__,    \
                    __LINE__, #expr, (unsigned)check_s_, (unsigned)check_e_);            \
        }                                                                                \
    } while (0)

#define CHECK_EQ_INT(a, b)                                                               \
    do {                                                                                 \
        long check_a_ = (long)(a);                                                       \
        long check_b_ = (long)(b);                                                       \
        if (check_a_ != check_b_) {                                                      \
            atomic_fetch_add(&g_checks_failed, 1);                                       \
            fprintf(stderr, "%s:%d: %s == %ld, expected %s == %ld\n", __FILE__,          \
                    __LINE__, #a, check_a_, #b, check_b_);                               \
        }                                                                                \
    } while (0)

static inline void run_test(const char *name, void (*fn)(void))
{
    int before = atomic_load(&g_checks_failed);
    fn();
    if (atomic_load(&g_checks_failed) == before) {
        g_passed++;
        printf("ok   %s\n", name);
    } else {
        g_failed++;
        printf("FAIL %s\n", name);
    }
    fflush(stdout);
}

#define RUN(fn) run_test(#fn, fn)

static inline void on_watchdog(int sig)
{
    static const char msg[] = "watchdog: test program timed out (hang?)\n";
    (void)sig;
    ssize_t ignored = write(2, msg, sizeof msg - 1);
    (void)ignored;
    _exit(3);
}

/* Kills the program after NETIO_TEST_TIMEOUT seconds (default `seconds`). */
static inline void start_watchdog(unsigned seconds)
{
    const char *env = getenv("NETIO_TEST_TIMEOUT");
    if (env != NULL && atoi(env) > 0) {
        seconds = (unsigned)atoi(env);
    }
    signal(SIGALRM, on_watchdog);
    alarm(seconds);
    setvbuf(stdout, NULL, _IOLBF, 0);
}

static inline int finish(void)
{
    printf("%d passed, %d failed\n", g_passed, g_failed);
    fflush(stdout);
    return g_failed == 0 ? 0 : 1;
}

static inline void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Iteration count for loops: NETIO_TEST_ITERATIONS or the default. */
static inline int iterations(int dflt)
{
    const char *env = getenv("NETIO_TEST_ITERATIONS");
    if (env != NULL && atoi(env) > 0) {
        return atoi(env);
    }
    return dflt;
}

/* A global sequence counter so tests can check the order of callbacks. */
static atomic_int g_seq = 1;
static inline int next_seq(void) { return atomic_fetch_add(&g_seq, 1); }

/* ------------------------------------------------------------------ */
/* ids                                                                 */
/* ------------------------------------------------------------------ */

static inline GUID make_guid(uint32_t d1)
{
    GUID g = {d1, 0x1234, 0x5678, {0x9a, 0xbc, 0xde, 0xf0, 0x12, 0x34, 0x56, 0x78}};
    return g;
}

/* Every test uses its own NPI id so tests never see each other's modules. */
static atomic_uint g_next_npi = 0x10000;
static inline NPIID fresh_npi(void) { return make_guid(atomic_fetch_add(&g_next_npi, 1)); }

/* Sentinel dispatch tables. */
#define NMR_TEST_UNUSED __attribute__((unused))
static const int CLIENT_DISPATCH_A NMR_TEST_UNUSED = 0xC1;
static const int CLIENT_DISPATCH_B NMR_TEST_UNUSED = 0xC2;
static const int PROVIDER_DISPATCH NMR_TEST_UNUSED = 0xB1;

#endif /* NMR_TEST_H */
