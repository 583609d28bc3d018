// C++17 translation unit using the header the way C++ drivers do (ebpf-for-windows,
// usersim's tests): callbacks declared through the WDK function typedefs,
// characteristics as const aggregates, std::thread/std::atomic around the calls.
#include <netioddk.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <type_traits>

static_assert(std::is_same_v<NTSTATUS, std::int32_t>, "NTSTATUS is a 32-bit signed integer");
static_assert(std::is_same_v<ULONG, std::uint32_t>, "ULONG is 32 bits even on LP64");
static_assert(std::is_same_v<PNPI_CLIENT_ATTACH_PROVIDER_FN, NPI_CLIENT_ATTACH_PROVIDER_FN *>);
static_assert(std::is_same_v<PNPI_PROVIDER_ATTACH_CLIENT_FN, NPI_PROVIDER_ATTACH_CLIENT_FN *>);
static_assert(std::is_same_v<PNPI_REGISTRATION_INSTANCE, const NPI_REGISTRATION_INSTANCE *>);
static_assert(std::is_same_v<PNPI_CLIENT_CHARACTERISTICS, const NPI_CLIENT_CHARACTERISTICS *>);
static_assert(std::is_standard_layout_v<NPI_CLIENT_CHARACTERISTICS>);
static_assert(sizeof(NPI_PROVIDER_CHARACTERISTICS) == 72);
static_assert(offsetof(NPI_MODULEID, Guid) == 8);

namespace {

int failures = 0;
int passed = 0;

#define EXPECT(cond)                                                                   \
    do {                                                                               \
        if (!(cond)) {                                                                 \
            ++failures;                                                                \
            std::fprintf(stderr, "%s:%d: EXPECT failed: %s\n", __FILE__, __LINE__, #cond); \
        }                                                                              \
    } while (0)

constexpr NPIID kNpi = {0x5ca1ab1e, 0x1, 0x2, {3, 4, 5, 6, 7, 8, 9, 10}};
constexpr NPI_MODULEID kClientModule = {sizeof(NPI_MODULEID), MIT_GUID, {{0xC11E47, 0, 0, {0}}}};
constexpr NPI_MODULEID kProviderModule = {sizeof(NPI_MODULEID), MIT_GUID, {{0x9F0, 0, 0, {0}}}};

struct ProviderDispatch {
    int (*add)(int, int);
};
const ProviderDispatch kProviderDispatch = {[](int a, int b) { return a + b; }};

struct Binding {
    HANDLE handle = nullptr;
    void *peer_context = nullptr;
    const void *peer_dispatch = nullptr;
};

std::atomic<int> client_detaches{0}, client_cleanups{0};
std::atomic<int> provider_detaches{0}, provider_cleanups{0};
std::atomic<Binding *> client_binding{nullptr};
std::atomic<Binding *> provider_binding{nullptr};
std::thread completer; // joined by the test after the wait

NPI_CLIENT_ATTACH_PROVIDER_FN ClientAttach;
NPI_CLIENT_DETACH_PROVIDER_FN ClientDetach;
NPI_CLIENT_CLEANUP_BINDING_CONTEXT_FN ClientCleanup;
NPI_PROVIDER_ATTACH_CLIENT_FN ProviderAttach;
NPI_PROVIDER_DETACH_CLIENT_FN ProviderDetach;
NPI_PROVIDER_CLEANUP_BINDING_CONTEXT_FN ProviderCleanup;

NTSTATUS NTAPI ClientAttach(HANDLE binding, PVOID, PNPI_REGISTRATION_INSTANCE provider)
{
    if (!NmrIsEqualNpiModuleId(provider->ModuleId, &kProviderModule)) {
        return STATUS_NOINTERFACE;
    }
    auto *b = new Binding;
    b->handle = binding;
    NTSTATUS status = NmrClientAttachProvider(binding, b, nullptr, &b->peer_context, &b->peer_dispatch);
    if (!NT_SUCCESS(status)) {
        delete b;
        return status;
    }
    client_binding = b;
    return STATUS_SUCCESS;
}

NTSTATUS NTAPI ClientDetach(PVOID ctx)
{
    EXPECT(ctx == client_binding.load());
    ++client_detaches;
    // Complete from another thread, possibly before we return STATUS_PENDING.
    HANDLE h = static_cast<Binding *>(ctx)->handle;
    completer = std::thread([h] { NmrClientDetachProviderComplete(h); });
    return STATUS_PENDING;
}

VOID NTAPI ClientCleanup(PVOID ctx)
{
    ++client_cleanups;
    delete static_cast<Binding *>(ctx);
}

NTSTATUS NTAPI ProviderAttach(HANDLE binding, PVOID context, PNPI_REGISTRATION_INSTANCE client, PVOID cbc,
                              const void *client_dispatch, PVOID *pbc, const void **pd)
{
    UNREFERENCED_PARAMETER(context);
    EXPECT(NmrIsEqualNpiModuleId(client->ModuleId, &kClientModule));
    EXPECT(client_dispatch == nullptr);
    auto *b = new Binding;
    b->handle = binding;
    b->peer_context = cbc;
    *pbc = b;
    *pd = &kProviderDispatch;
    provider_binding = b;
    return STATUS_SUCCESS;
}

_IRQL_requires_max_(DISPATCH_LEVEL)
_Function_class_(NPI_PROVIDER_DETACH_CLIENT_FN)
NTSTATUS NTAPI ProviderDetach(_In_ PVOID ctx)
{
    EXPECT(ctx == provider_binding.load());
    ++provider_detaches;
    return STATUS_SUCCESS;
}

VOID NTAPI ProviderCleanup(PVOID ctx)
{
    ++provider_cleanups;
    delete static_cast<Binding *>(ctx);
}

const NPI_CLIENT_CHARACTERISTICS kClientChars = {
    0,
    sizeof(NPI_CLIENT_CHARACTERISTICS),
    ClientAttach,
    ClientDetach,
    ClientCleanup,
    {0, sizeof(NPI_REGISTRATION_INSTANCE), &kNpi, &kClientModule, 0, nullptr},
};

const NPI_PROVIDER_CHARACTERISTICS kProviderChars = {
    0,
    sizeof(NPI_PROVIDER_CHARACTERISTICS),
    ProviderAttach,
    ProviderDetach,
    ProviderCleanup,
    {0, sizeof(NPI_REGISTRATION_INSTANCE), &kNpi, &kProviderModule, 0, nullptr},
};

void run(const char *name, void (*fn)())
{
    int before = failures;
    fn();
    std::printf("%s %s\n", failures == before ? "ok  " : "FAIL", name);
    if (failures == before) {
        ++passed;
    }
}

void cxx_client_and_provider_attach_call_and_unload()
{
    HANDLE provider = nullptr, client = nullptr;
    EXPECT(NmrRegisterProvider(&kProviderChars, nullptr, &provider) == STATUS_SUCCESS);
    EXPECT(NmrRegisterClient(&kClientChars, nullptr, &client) == STATUS_SUCCESS);
    Binding *b = client_binding.load();
    EXPECT(b != nullptr);
    if (b != nullptr) {
        EXPECT(b->peer_dispatch == &kProviderDispatch);
        auto *dispatch = static_cast<const ProviderDispatch *>(b->peer_dispatch);
        EXPECT(dispatch->add(2, 3) == 5);
        EXPECT(b->peer_context == provider_binding.load());
    }
    // Deregister from another thread; wait here.
    std::thread([client] { EXPECT(NmrDeregisterClient(client) == STATUS_PENDING); }).join();
    EXPECT(NmrWaitForClientDeregisterComplete(client) == STATUS_SUCCESS);
    if (completer.joinable()) {
        completer.join();
    }
    EXPECT(client_detaches == 1 && provider_detaches == 1);
    EXPECT(client_cleanups == 1 && provider_cleanups == 1);
    EXPECT(NmrDeregisterProvider(provider) == STATUS_PENDING);
    EXPECT(NmrWaitForProviderDeregisterComplete(provider) == STATUS_SUCCESS);
    EXPECT(provider_detaches == 1);
}

void cxx_bad_input_is_rejected()
{
    HANDLE h = reinterpret_cast<HANDLE>(0x1234);
    EXPECT(NmrRegisterClient(nullptr, nullptr, &h) == STATUS_INVALID_PARAMETER);
    EXPECT(NmrDeregisterProvider(nullptr) == STATUS_INVALID_PARAMETER);
    EXPECT(NmrWaitForClientDeregisterComplete(reinterpret_cast<HANDLE>(0x1234)) ==
           STATUS_INVALID_PARAMETER);
    NmrProviderDetachClientComplete(nullptr);
}

} // namespace

int main()
{
    run("cxx_client_and_provider_attach_call_and_unload", cxx_client_and_provider_attach_call_and_unload);
    run("cxx_bad_input_is_rejected", cxx_bad_input_is_rejected);
    std::printf("%d passed, %d failed\n", passed, failures == 0 ? 0 : 2 - passed);
    return failures == 0 ? 0 : 1;
}
