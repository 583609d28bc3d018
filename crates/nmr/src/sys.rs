//! The platform's asymmetric (process-wide) memory barrier, the only OS-specific code of the
//! rundown's fast path.
//!
//! [`heavy_fence`] makes every other thread of the process execute a full memory barrier
//! before it returns: on Linux `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)` (the process
//! registers once, [`init`]), on Windows `FlushProcessWriteBuffers`. Paired with it, the
//! callers' [`light_fence`] is only a compiler fence. Under loom, both are `fence(SeqCst)`,
//! which is what the pair stands in for.

/// `MEMBARRIER_CMD_QUERY` (`uapi/linux/membarrier.h`).
#[cfg(all(target_os = "linux", not(loom)))]
const MEMBARRIER_CMD_QUERY: libc::c_int = 0;
/// `MEMBARRIER_CMD_PRIVATE_EXPEDITED`.
#[cfg(all(target_os = "linux", not(loom)))]
const MEMBARRIER_CMD_PRIVATE_EXPEDITED: libc::c_int = 1 << 3;
/// `MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED`.
#[cfg(all(target_os = "linux", not(loom)))]
const MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED: libc::c_int = 1 << 4;

#[cfg(all(target_os = "linux", not(loom)))]
fn membarrier(cmd: libc::c_int) -> libc::c_long {
    // SAFETY: `membarrier(cmd, flags = 0, cpu_id = 0)` takes no pointers and touches no memory
    // of ours; an unsupported command only returns an error (ENOSYS, EINVAL, EPERM).
    unsafe {
        libc::syscall(
            libc::SYS_membarrier,
            cmd,
            0 as libc::c_uint,
            0 as libc::c_int,
        )
    }
}

/// Registers the process for expedited private membarriers; `true` if [`heavy_fence`] is
/// available (then callers may use [`light_fence`]). Idempotent, cheap after the first call.
#[cfg(all(target_os = "linux", not(loom)))]
pub(crate) fn init() -> bool {
    static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OK.get_or_init(|| {
        let mask = membarrier(MEMBARRIER_CMD_QUERY);
        if mask < 0 || mask & libc::c_long::from(MEMBARRIER_CMD_PRIVATE_EXPEDITED) == 0 {
            return false;
        }
        membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED) == 0
    })
}

/// Makes every running thread of the process pass a full barrier. Only valid after
/// [`init`] returned `true`.
#[cfg(all(target_os = "linux", not(loom)))]
pub(crate) fn heavy_fence() {
    let r = membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED);
    // Registration succeeded, so the command cannot fail; if it somehow does, there is no
    // safe way to continue with light fences on the other side.
    assert!(
        r == 0,
        "membarrier(PRIVATE_EXPEDITED) failed after registration"
    );
}

#[cfg(all(windows, not(loom)))]
mod win {
    #[link(name = "kernel32")]
    unsafe extern "system" {
        /// `FlushProcessWriteBuffers` (Windows Vista and later): an IPI to every processor
        /// running a thread of this process, each executing a full barrier.
        pub(super) safe fn FlushProcessWriteBuffers();
    }
}

/// Windows always has `FlushProcessWriteBuffers`.
#[cfg(all(windows, not(loom)))]
pub(crate) fn init() -> bool {
    true
}

/// Makes every running thread of the process pass a full barrier.
#[cfg(all(windows, not(loom)))]
pub(crate) fn heavy_fence() {
    win::FlushProcessWriteBuffers();
}

/// No asymmetric barrier on this platform: the rundown uses its fallback.
#[cfg(all(not(target_os = "linux"), not(windows), not(loom)))]
pub(crate) fn init() -> bool {
    false
}

/// Never called: [`init`] says the barrier is unavailable.
#[cfg(all(not(target_os = "linux"), not(windows), not(loom)))]
pub(crate) fn heavy_fence() {
    std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
}

/// Under loom the asymmetric pair is modelled as two `SeqCst` fences.
#[cfg(loom)]
pub(crate) fn init() -> bool {
    true
}

/// Under loom: a `SeqCst` fence.
#[cfg(loom)]
pub(crate) fn heavy_fence() {
    loom::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
}

/// The callers' half of the asymmetric pair: keeps the compiler from moving memory accesses
/// across it; the CPU-level ordering comes from [`heavy_fence`] on the other side.
#[inline(always)]
pub(crate) fn light_fence() {
    #[cfg(not(loom))]
    std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
    #[cfg(loom)]
    loom::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
}

/// CPU time this thread has used, in nanoseconds (benchmarks only: time spent descheduled
/// by other load on a shared machine does not count). `None` where unsupported.
#[cfg(all(feature = "bench", unix, not(loom)))]
pub(crate) fn thread_cpu_ns() -> Option<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable `timespec` for the duration of the call, and
    // CLOCK_THREAD_CPUTIME_ID is a clock every POSIX system with threads provides.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &raw mut ts) };
    if r != 0 {
        return None;
    }
    let secs = u64::try_from(ts.tv_sec).ok()?;
    let nanos = u64::try_from(ts.tv_nsec).ok()?;
    Some(secs * 1_000_000_000 + nanos)
}

/// No per-thread CPU clock here: benchmarks use wall-clock time.
#[cfg(all(feature = "bench", not(unix), not(loom)))]
pub(crate) fn thread_cpu_ns() -> Option<u64> {
    None
}
