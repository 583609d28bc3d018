//! Rundown protection for calls through a binding.
//!
//! A [`Rundown`] tracks calls in flight. [`Rundown::try_enter`] fails once
//! [`Rundown::close`] has begun, so no call starts after detach began; `close` hands back a
//! [`DrainRef`] that itself counts as one call, and the `on_drained` closure runs exactly
//! once, on whichever thread releases the last reference (the `DrainRef` or a guard).
//!
//! # Two paths, chosen per rundown at creation ([`Mode`])
//!
//! **[`Mode::Asymmetric`]** (the default where the OS has an asymmetric barrier: Linux
//! `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)`, Windows `FlushProcessWriteBuffers`).
//! Each thread owns a 128-byte-aligned record with [`SLOTS`] "in call" slots, listed in a
//! global registry. A [`RundownGuard`] costs, on entry, a plain store of the rundown's
//! address into a free slot of the caller's own record, a compiler fence and a relaxed load
//! of the `closed` flag; on exit a release store clearing the slot, a compiler fence and
//! another relaxed load of `closed`. No read-modify-write, no write to a shared cache line.
//! `close` sets `closed`, then runs the heavy barrier, which forces every other thread
//! through a full fence: afterwards each thread either saw `closed` at entry (and did not
//! enter) or its slot is visible to the closer; each guard still in flight sees `closed` when
//! it exits and takes the cold path. Guards that must move between threads
//! ([`OwnedRundownGuard`]) and guards beyond [`SLOTS`] nested ones use the sharded counter
//! below, which every rundown also has.
//!
//! **[`Mode::Sharded`]**: a cache-aware sharded counter (`EX_RUNDOWN_REF_CACHE_AWARE`
//! style): each thread increments a shard on its own cache line, bit 0 of every shard is the
//! "closed" flag, and closing sums the shards into one drain counter. Used where no
//! asymmetric barrier exists, or when forced ([`force_fallback`], `NMR_RUNDOWN=fallback`).
//!
//! # Drain accounting
//!
//! Counter part: `close` sets the closed bit on each shard and learns that shard's count at
//! that instant; every guard counted there releases exactly once afterwards, and seeing the
//! closed bit it decrements `drain`. `close` adds the total (+1 for the `DrainRef`) to
//! `drain`. Releases before that add push `drain` below zero, so it reaches zero once, when
//! every counted guard and the `DrainRef` are gone ("counter drained").
//!
//! Slot part (asymmetric mode only): the thread that drains the counter stores
//! `counter_drained`, fences and scans every thread record for the rundown's address; a slot
//! guard that exits after `close` clears its slot, fences, and if `counter_drained` is set
//! scans too. Of the last two such events one always sees the other (store, `SeqCst` fence,
//! load on both sides), so someone sees "counter drained and no slot holds me"; taking
//! `on_drained` out of its slot under a lock makes it run exactly once among the threads that
//! see it.
//!
//! loom (`tests/loom_rundown.rs`) checks this protocol with both halves of the asymmetric
//! pair modelled as `SeqCst` fences. That model cannot show why the heavy barrier is needed:
//! with a full fence on the caller's side, the drain's own fence would already pair with it.
//! On hardware the caller has only a compiler fence, its slot store can still sit in its
//! store buffer when it reads `closed`, and only the barrier, run on its CPU, drains it.

use crate::sync::atomic::{AtomicBool, AtomicIsize, AtomicUsize, Ordering, fence};
use crate::sync::{self, Arc, Mutex};
use crate::sys;
use crossbeam_utils::CachePadded;
use std::fmt;

const CLOSED: usize = 1;
const ONE: usize = 2;

/// Nested calls one thread can have in flight on the asymmetric path; deeper nesting falls
/// back to the sharded counter.
pub const SLOTS: usize = 4;

type OnDrained = Box<dyn FnOnce() + Send>;
type Shards = Box<[CachePadded<AtomicUsize>]>;

fn new_shards() -> Option<Shards> {
    Some(
        (0..shard_count())
            .map(|_| CachePadded::new(AtomicUsize::new(0)))
            .collect(),
    )
}

/// How a rundown tracks calls made through [`Rundown::try_enter`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mode {
    /// Per-thread "in call" slots and an asymmetric barrier on close: no atomic
    /// read-modify-write on the call path.
    Asymmetric,
    /// A cache-aware sharded counter: one uncontended atomic add and subtract per call.
    Sharded,
}

/// Global choice for new rundowns: 0 = not decided yet, else `MODE_*`.
static DEFAULT_MODE: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);
const MODE_ASYMMETRIC: u8 = 1;
const MODE_SHARDED: u8 = 2;

/// Is the asymmetric barrier available on this system (membarrier registered)?
#[must_use]
pub fn asymmetric_available() -> bool {
    sys::init()
}

/// The mode [`Rundown::new`] uses: [`Mode::Asymmetric`] when the OS supports it, unless
/// the environment variable `NMR_RUNDOWN=fallback` (read once) or [`force_fallback`] says
/// otherwise.
#[must_use]
pub fn default_mode() -> Mode {
    use std::sync::atomic::Ordering::Relaxed;
    match DEFAULT_MODE.load(Relaxed) {
        MODE_ASYMMETRIC => Mode::Asymmetric,
        MODE_SHARDED => Mode::Sharded,
        _ => {
            let forced = std::env::var_os("NMR_RUNDOWN").is_some_and(|v| v == "fallback");
            let m = if !forced && asymmetric_available() {
                MODE_ASYMMETRIC
            } else {
                MODE_SHARDED
            };
            // A concurrent `force_fallback` wins; read back whatever is set now.
            let _ = DEFAULT_MODE.compare_exchange(0, m, Relaxed, Relaxed);
            default_mode()
        }
    }
}

/// Test and benchmark hook: makes rundowns created from now on use the sharded counter
/// (`true`), or go back to the default choice (`false`: asymmetric when available, unless
/// `NMR_RUNDOWN=fallback`). Existing rundowns keep their mode.
pub fn force_fallback(on: bool) {
    let m = if on { MODE_SHARDED } else { 0 };
    DEFAULT_MODE.store(m, std::sync::atomic::Ordering::Relaxed);
}

/// Per-thread "in call" records, the asymmetric path's state.
mod records {
    use super::SLOTS;
    use crate::sync::atomic::{AtomicBool, AtomicUsize, Ordering, fence};
    use crate::sync::{self, Mutex};
    use std::cell::Cell;

    /// One thread's slots, on cache lines of their own (128 bytes: adjacent-line prefetch
    /// pulls lines in pairs). A slot holds the address of the rundown the thread is calling
    /// through, or 0. Only the owning thread writes its slots; closers read them.
    #[repr(align(128))]
    pub(super) struct ThreadRecord {
        pub(super) slots: [AtomicUsize; SLOTS],
        /// Owned by a live thread (changed only under [`RECORDS`]' lock).
        owned: AtomicBool,
    }

    impl ThreadRecord {
        /// A free slot of this thread's record. Only called by the owning thread, which is
        /// the only writer, so relaxed loads see its own latest stores.
        #[inline(always)]
        pub(super) fn free_slot(&'static self) -> Option<&'static AtomicUsize> {
            self.slots.iter().find(|s| s.load(Ordering::Relaxed) == 0)
        }
    }

    // Records are leaked and reused, never freed, so `&'static` references stay valid even
    // in guards dropped late in thread teardown; their number is bounded by the peak number
    // of threads alive at once.
    #[cfg(not(loom))]
    static RECORDS: Mutex<Vec<&'static ThreadRecord>> = Mutex::new(Vec::new());
    #[cfg(loom)]
    loom::lazy_static! {
        static ref RECORDS: Mutex<Vec<&'static ThreadRecord>> = Mutex::new(Vec::new());
    }

    fn acquire() -> &'static ThreadRecord {
        let mut list = sync::lock(&RECORDS);
        if let Some(r) = list.iter().find(|r| !r.owned.load(Ordering::Relaxed)) {
            r.owned.store(true, Ordering::Relaxed);
            return r;
        }
        let r: &'static ThreadRecord = Box::leak(Box::new(ThreadRecord {
            slots: std::array::from_fn(|_| AtomicUsize::new(0)),
            owned: AtomicBool::new(true),
        }));
        list.push(r);
        r
    }

    /// Called at thread exit: the record becomes reusable, unless a guard is still alive (one
    /// leaked with `mem::forget`, or held by a thread-local destroyed later), in which case
    /// the record stays with the dead thread.
    #[cfg(not(loom))]
    fn release(r: &'static ThreadRecord) {
        let list = sync::lock(&RECORDS);
        if r.slots.iter().all(|s| s.load(Ordering::Relaxed) == 0) {
            r.owned.store(false, Ordering::Relaxed);
        }
        drop(list);
    }

    // The hot path reads a plain `Cell` thread-local (no destructor, so no lazy-registration
    // state to check). Until the thread takes a record it points at `BUSY`, whose slots are
    // all taken, so the first call lands in the cold path without a separate test. A second
    // thread-local with a destructor, touched only when the record is first taken, hands the
    // record back at thread exit.
    #[cfg(not(loom))]
    static BUSY: ThreadRecord = ThreadRecord {
        // 1 is never a rundown's address (rundowns are 8-aligned).
        slots: [const { AtomicUsize::new(1) }; SLOTS],
        owned: AtomicBool::new(true),
    };
    #[cfg(not(loom))]
    std::thread_local! {
        static RECORD: Cell<&'static ThreadRecord> = const { Cell::new(&BUSY) };
        static REAPER: Reaper = const { Reaper };
    }
    #[cfg(loom)]
    loom::thread_local! {
        static RECORD: Cell<Option<&'static ThreadRecord>> = Cell::new(None);
    }

    /// Returns this thread's record at thread exit.
    #[cfg(not(loom))]
    struct Reaper;

    // Not under loom: loom tears thread-locals down after the model's statics, and models
    // never outlive their handful of threads anyway.
    #[cfg(not(loom))]
    impl Drop for Reaper {
        fn drop(&mut self) {
            if let Ok(r) = RECORD.try_with(|c| c.replace(&BUSY))
                && !std::ptr::eq(r, &BUSY)
            {
                release(r);
            }
        }
    }

    /// This thread's record, if it has taken one.
    fn mine() -> Option<&'static ThreadRecord> {
        #[cfg(not(loom))]
        {
            RECORD
                .try_with(Cell::get)
                .ok()
                .filter(|r| !std::ptr::eq(*r, &BUSY))
        }
        #[cfg(loom)]
        {
            RECORD.try_with(Cell::get).ok().flatten()
        }
    }

    /// A free slot in this thread's record; `None` when all are taken or the thread is
    /// being torn down (the caller then uses the counter).
    #[inline(always)]
    pub(super) fn free_slot() -> Option<&'static AtomicUsize> {
        #[cfg(not(loom))]
        {
            // Slot 0 inline (no nesting: the common case), the rest out of line.
            let r = RECORD.try_with(Cell::get).ok()?;
            let s0 = &r.slots[0];
            if s0.load(Ordering::Relaxed) == 0 {
                Some(s0)
            } else {
                free_slot_cold(r)
            }
        }
        #[cfg(loom)]
        {
            match RECORD.try_with(Cell::get).ok()? {
                Some(r) => r.free_slot(),
                None => init()?.free_slot(),
            }
        }
    }

    /// Every slot taken: either nesting is deep, or this thread has no record yet.
    #[cfg(not(loom))]
    #[cold]
    #[inline(never)]
    fn free_slot_cold(r: &'static ThreadRecord) -> Option<&'static AtomicUsize> {
        if std::ptr::eq(r, &BUSY) {
            init()?.free_slot()
        } else {
            r.free_slot()
        }
    }

    #[cold]
    #[inline(never)]
    fn init() -> Option<&'static ThreadRecord> {
        // Registering the reaper fails once this thread's destructors have started: then
        // take no record (the caller falls back to the counter) rather than leak one.
        #[cfg(not(loom))]
        REAPER.try_with(|_| ()).ok()?;
        let r = acquire();
        #[cfg(not(loom))]
        RECORD.try_with(|c| c.set(r)).ok()?;
        #[cfg(loom)]
        RECORD.try_with(|c| c.set(Some(r))).ok()?;
        Some(r)
    }

    /// How many slots of all threads hold `addr`. Starts with a `SeqCst` fence, so that a
    /// caller that ordered its own stores before it sees everything the drain protocol
    /// needs (see the module docs).
    pub(super) fn count(addr: usize) -> usize {
        fence(Ordering::SeqCst);
        let list = sync::lock(&RECORDS);
        list.iter()
            .flat_map(|r| r.slots.iter())
            .filter(|s| s.load(Ordering::SeqCst) == addr)
            .count()
    }

    /// Does any thread other than this one own a record? Taken after `closed` is set: a
    /// thread that takes its first record later does so under the same lock, so it sees
    /// `closed` on its first entry; with no other record owned, no other thread can be in a
    /// slot call and the heavy barrier has nothing to do.
    pub(super) fn others_active() -> bool {
        let mine = mine();
        let list = sync::lock(&RECORDS);
        list.iter()
            .any(|r| r.owned.load(Ordering::Relaxed) && !mine.is_some_and(|m| std::ptr::eq(m, *r)))
    }

    /// Thread records in existence (for diagnostics and tests of reuse).
    pub(super) fn total() -> usize {
        sync::lock(&RECORDS).len()
    }
}

/// Thread records allocated so far: bounded by the peak number of threads that used the
/// asymmetric path at once (records of exited threads are reused).
#[must_use]
pub fn thread_records() -> usize {
    records::total()
}

/// Something that owns a [`Rundown`] inside a shared allocation (the rundown itself, or a
/// binding that embeds one), so owned guards and [`DrainRef`]s keep it alive without a
/// separate `Arc<Rundown>`.
pub(crate) trait HoldsRundown: Send + Sync + 'static {
    /// The rundown.
    fn rundown(&self) -> &Rundown;
}

impl HoldsRundown for Rundown {
    fn rundown(&self) -> &Rundown {
        self
    }
}

/// Rundown protection for one side of a binding.
pub struct Rundown {
    /// Set once by `close`; read (relaxed) by every slot guard's entry and exit.
    closed: AtomicBool,
    asymmetric: bool,
    /// Per-shard `count * 2 | CLOSED`. Padded to 128 bytes: adjacent-line prefetch on x86
    /// pulls cache lines in pairs, so 64-byte padding still shares traffic between shards.
    ///
    /// Allocated on first use in asymmetric mode (owned guards are rare there); `close`
    /// seals an unallocated counter as `None`, so a later first entry fails.
    shards: std::sync::OnceLock<Option<Shards>>,
    drain: AtomicIsize,
    counter_drained: AtomicBool,
    fired: AtomicBool,
    on_drained: Mutex<Option<OnDrained>>,
}

impl fmt::Debug for Rundown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rundown")
            .field("mode", &self.mode())
            .field("closed", &self.is_closed())
            .field("in_flight", &self.in_flight())
            .finish()
    }
}

fn shard_count() -> usize {
    #[cfg(loom)]
    {
        2
    }
    #[cfg(not(loom))]
    {
        static N: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
        *N.get_or_init(|| {
            std::thread::available_parallelism()
                .map_or(4, std::num::NonZero::get)
                .next_power_of_two()
                .min(64)
        })
    }
}

fn my_shard(mask: usize) -> usize {
    // Threads take shards round-robin in the order they first enter (deterministic under
    // loom, which re-runs each model many times).
    use std::cell::Cell;
    #[cfg(not(loom))]
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    #[cfg(loom)]
    loom::lazy_static! {
        static ref NEXT: AtomicUsize = AtomicUsize::new(0);
    }
    #[cfg(not(loom))]
    std::thread_local! {
        static SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    #[cfg(loom)]
    loom::thread_local! {
        static SHARD: Cell<usize> = Cell::new(usize::MAX);
    }
    SHARD.with(|s| {
        let mut v = s.get();
        if v == usize::MAX {
            v = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            s.set(v);
        }
        v & mask
    })
}

impl Default for Rundown {
    fn default() -> Self {
        Self::new()
    }
}

impl Rundown {
    /// An open rundown with no calls in flight, in the [`default_mode`].
    #[must_use]
    pub fn new() -> Self {
        Self::with_mode(default_mode())
    }

    /// An open rundown in `mode`; [`Mode::Asymmetric`] degrades to [`Mode::Sharded`] where
    /// the OS has no asymmetric barrier.
    #[must_use]
    pub fn with_mode(mode: Mode) -> Self {
        let asymmetric = mode == Mode::Asymmetric && sys::init();
        let shards = std::sync::OnceLock::new();
        // Under loom the lazy path is not modelled (std's `OnceLock` is invisible to it).
        if !asymmetric || cfg!(loom) {
            let _ = shards.set(new_shards());
        }
        Rundown {
            closed: AtomicBool::new(false),
            asymmetric,
            shards,
            drain: AtomicIsize::new(0),
            counter_drained: AtomicBool::new(false),
            fired: AtomicBool::new(false),
            on_drained: Mutex::new(None),
        }
    }

    /// The mode this rundown tracks [`try_enter`](Self::try_enter) calls in.
    #[must_use]
    pub fn mode(&self) -> Mode {
        if self.asymmetric {
            Mode::Asymmetric
        } else {
            Mode::Sharded
        }
    }

    /// The value slots hold while a call through this rundown is in flight.
    #[inline(always)]
    fn addr(&self) -> usize {
        std::ptr::from_ref(self).addr()
    }

    /// Starts a call on the counter; `None` once [`close`](Self::close) has begun. The
    /// returned shard must be passed to [`exit`](Self::exit).
    #[inline]
    pub(crate) fn enter_raw(&self) -> Option<usize> {
        let shards = self.shards.get_or_init(new_shards).as_ref()?;
        let i = my_shard(shards.len() - 1);
        let s = &shards[i];
        let mut v = s.load(Ordering::Relaxed);
        loop {
            if v & CLOSED != 0 {
                return None;
            }
            match s.compare_exchange_weak(v, v + ONE, Ordering::Acquire, Ordering::Relaxed) {
                Ok(_) => return Some(i),
                Err(cur) => v = cur,
            }
        }
    }

    /// Ends a counter call started on `shard` (any thread may end it).
    #[inline]
    pub(crate) fn exit(&self, shard: usize) {
        let Some(Some(shards)) = self.shards.get() else {
            unreachable!("a counted guard exists, so the counter does")
        };
        let prev = shards[shard].fetch_sub(ONE, Ordering::Release);
        if prev & CLOSED != 0 {
            self.release_drain();
        }
    }

    /// Starts a call in `slot` of this thread's record (asymmetric path). The guard owns the
    /// slot when this returns true.
    #[inline(always)]
    fn enter_slot(&self, slot: &AtomicUsize) -> bool {
        slot.store(self.addr(), Ordering::Relaxed);
        sys::light_fence();
        if self.closed.load(Ordering::Relaxed) {
            self.enter_refused(slot);
            return false;
        }
        true
    }

    /// `closed` was seen on entry: give the slot back (out of line, so the open case falls
    /// straight through to the call).
    #[cold]
    #[inline(never)]
    fn enter_refused(&self, slot: &AtomicUsize) {
        self.exit_slot(slot);
    }

    /// Ends a slot call (on the thread that started it).
    #[inline(always)]
    fn exit_slot(&self, slot: &AtomicUsize) {
        slot.store(0, Ordering::Release);
        sys::light_fence();
        if self.closed.load(Ordering::Relaxed) {
            self.slot_exit_after_close();
        }
    }

    /// A slot was cleared after `close` began: if the counter has drained too, this thread
    /// may be the last one out.
    #[cold]
    #[inline(never)]
    fn slot_exit_after_close(&self) {
        if self.fired.load(Ordering::Acquire) {
            // Drained already: this was an entry attempt refused after close.
            return;
        }
        fence(Ordering::SeqCst);
        if self.counter_drained.load(Ordering::SeqCst) && records::count(self.addr()) == 0 {
            self.fire();
        }
    }

    #[cold]
    fn release_drain(&self) {
        if self.drain.fetch_sub(1, Ordering::AcqRel) == 1 {
            if self.asymmetric {
                // `count` starts with a `SeqCst` fence: the store-fence-load half of the
                // handshake with slot exits.
                self.counter_drained.store(true, Ordering::Release);
                if records::count(self.addr()) != 0 {
                    // The last slot guard to exit fires.
                    return;
                }
            }
            self.fire();
        }
    }

    /// Runs `on_drained`, once, whoever gets here first. Every caller gets here only once
    /// the drain is complete, so `fired` is set even when no callback is installed yet (see
    /// [`close_deferred`](Self::close_deferred)).
    fn fire(&self) {
        let f = {
            let mut slot = sync::lock(&self.on_drained);
            self.fired.store(true, Ordering::Release);
            slot.take()
        };
        if let Some(f) = f {
            f();
        }
    }

    /// Starts a call on this thread: `None` once closing began.
    #[inline(always)]
    #[must_use]
    pub fn try_enter(&self) -> Option<RundownGuard<'_>> {
        // Kept small and inlined: the guard then lives in registers (returning it through
        // memory costs a store-forwarding stall larger than the whole protection).
        if self.asymmetric
            && let Some(slot) = records::free_slot()
        {
            if !self.enter_slot(slot) {
                return None;
            }
            return Some(RundownGuard {
                rundown: self,
                how: How::Slot(slot),
                _not_send: std::marker::PhantomData,
            });
        }
        self.try_enter_counted()
    }

    /// [`try_enter`](Self::try_enter) on the counter: sharded mode, nesting beyond the
    /// slots, thread teardown.
    #[inline(never)]
    fn try_enter_counted(&self) -> Option<RundownGuard<'_>> {
        self.enter_raw().map(|shard| RundownGuard {
            rundown: self,
            how: How::Shard(shard),
            _not_send: std::marker::PhantomData,
        })
    }

    /// Runs `f` as a call through this rundown: `None` (without running `f`) once closing
    /// began. The same as holding a [`try_enter`](Self::try_enter) guard around `f`, with
    /// a little less work on the asymmetric path.
    #[inline(always)]
    pub fn call<R>(&self, f: impl FnOnce() -> R) -> Option<R> {
        if self.asymmetric
            && let Some(slot) = records::free_slot()
        {
            if !self.enter_slot(slot) {
                return None;
            }
            let _g = SlotExit {
                rundown: self,
                slot,
            };
            return Some(f());
        }
        self.call_counted(f)
    }

    /// [`call`](Self::call) on the counter, out of line so the slot path's loop keeps its
    /// registers.
    #[inline(never)]
    fn call_counted<R>(&self, f: impl FnOnce() -> R) -> Option<R> {
        let g = self.try_enter_counted()?;
        let r = f();
        drop(g);
        Some(r)
    }

    /// Starts a call with a guard that may move to other threads (always on the counter).
    #[must_use]
    pub fn try_enter_owned(self: &Arc<Self>) -> Option<OwnedRundownGuard> {
        self.try_enter_owned_in(Arc::clone(self) as Arc<dyn HoldsRundown>)
    }

    /// [`try_enter_owned`](Self::try_enter_owned) for a rundown embedded in `owner`.
    pub(crate) fn try_enter_owned_in(
        &self,
        owner: Arc<dyn HoldsRundown>,
    ) -> Option<OwnedRundownGuard> {
        debug_assert!(std::ptr::eq(owner.rundown(), self));
        self.enter_raw()
            .map(|shard| OwnedRundownGuard { owner, shard })
    }

    /// Begins rundown: every later `try_enter` fails. `on_drained` runs exactly once, on the
    /// thread that releases the last outstanding reference: a guard entered before the close,
    /// or the returned [`DrainRef`], which counts as one. Returns `None` (dropping
    /// `on_drained`) if the rundown was already closed.
    ///
    /// In [`Mode::Asymmetric`] this issues the process-wide barrier (a few microseconds with
    /// other threads running).
    pub fn close(self: &Arc<Self>, on_drained: impl FnOnce() + Send + 'static) -> Option<DrainRef> {
        self.close_in(Arc::clone(self) as Arc<dyn HoldsRundown>, on_drained)
    }

    /// [`close`](Self::close) for a rundown embedded in `owner`.
    pub(crate) fn close_in(
        &self,
        owner: Arc<dyn HoldsRundown>,
        on_drained: impl FnOnce() + Send + 'static,
    ) -> Option<DrainRef> {
        self.close_with(owner, Some(Box::new(on_drained)))
    }

    /// [`close_in`](Self::close_in) with no drain callback yet: the caller either finds the
    /// rundown [`drained`](Self::drained) or installs one with
    /// [`set_on_drained`](Self::set_on_drained). Saves the callback (an allocation and what
    /// it captures) when everything drains before the caller needs to know.
    pub(crate) fn close_deferred(&self, owner: Arc<dyn HoldsRundown>) -> Option<DrainRef> {
        self.close_with(owner, None)
    }

    /// Has the drain completed (`on_drained` ran, or would have)? Only after a close.
    pub(crate) fn drained(&self) -> bool {
        self.fired.load(Ordering::Acquire)
    }

    /// After [`close_deferred`](Self::close_deferred): installs `on_drained` to run when the
    /// drain completes, and returns `true`; or returns `false` (dropping `on_drained`
    /// unrun) when the drain has completed already. Decided under the callback lock
    /// `fire` takes, so exactly one of the two happens.
    pub(crate) fn set_on_drained(&self, on_drained: impl FnOnce() + Send + 'static) -> bool {
        let mut slot = sync::lock(&self.on_drained);
        if self.fired.load(Ordering::Relaxed) {
            return false;
        }
        *slot = Some(Box::new(on_drained));
        true
    }

    fn close_with(
        &self,
        owner: Arc<dyn HoldsRundown>,
        on_drained: Option<OnDrained>,
    ) -> Option<DrainRef> {
        debug_assert!(std::ptr::eq(owner.rundown(), self));
        {
            let mut slot = sync::lock(&self.on_drained);
            if self.closed.load(Ordering::Relaxed) {
                return None;
            }
            *slot = on_drained;
            // Ordered for slot callers by the heavy barrier below (or, with no other thread
            // owning a record, by the records lock any newcomer takes first).
            self.closed.store(true, Ordering::Release);
        }
        if self.asymmetric && records::others_active() {
            // Every thread now either saw `closed` or published its slot (module docs).
            sys::heavy_fence();
        }
        let mut total: isize = 1;
        for s in self
            .shards
            .get_or_init(|| None)
            .iter()
            .flat_map(|b| b.iter())
        {
            let prev = s.fetch_or(CLOSED, Ordering::AcqRel);
            #[expect(clippy::cast_possible_wrap, reason = "counts are far below isize::MAX")]
            {
                total += (prev >> 1) as isize;
            }
        }
        self.drain.fetch_add(total, Ordering::AcqRel);
        Some(DrainRef { owner })
    }

    /// Has closing begun?
    #[must_use]
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Calls in flight right now (a racy snapshot, for diagnostics; scans every thread's
    /// record in asymmetric mode).
    #[must_use]
    pub fn in_flight(&self) -> usize {
        let counted: usize = self
            .shards
            .get()
            .into_iter()
            .flatten()
            .flat_map(|b| b.iter())
            .map(|s| s.load(Ordering::Relaxed) >> 1)
            .sum();
        if self.asymmetric {
            counted + records::count(self.addr())
        } else {
            counted
        }
    }
}

/// Clears a slot when `Rundown::call`'s closure returns or unwinds.
struct SlotExit<'a> {
    rundown: &'a Rundown,
    slot: &'static AtomicUsize,
}

impl Drop for SlotExit<'_> {
    #[inline(always)]
    fn drop(&mut self) {
        self.rundown.exit_slot(self.slot);
    }
}

#[derive(Debug)]
enum How {
    Slot(&'static AtomicUsize),
    Shard(usize),
}

/// A call in flight on this thread. Not `Send`: use [`OwnedRundownGuard`] to move one.
#[derive(Debug)]
#[must_use = "the call ends when the guard drops"]
pub struct RundownGuard<'a> {
    rundown: &'a Rundown,
    how: How,
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Drop for RundownGuard<'_> {
    #[inline(always)]
    fn drop(&mut self) {
        match self.how {
            How::Slot(slot) => self.rundown.exit_slot(slot),
            How::Shard(shard) => self.rundown.exit(shard),
        }
    }
}

/// A call in flight that may move between threads (held by async tasks, open sockets…).
#[must_use = "the call ends when the guard drops"]
pub struct OwnedRundownGuard {
    owner: Arc<dyn HoldsRundown>,
    shard: usize,
}

impl fmt::Debug for OwnedRundownGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OwnedRundownGuard")
            .field("rundown", self.owner.rundown())
            .field("shard", &self.shard)
            .finish()
    }
}

impl Drop for OwnedRundownGuard {
    fn drop(&mut self) {
        self.owner.rundown().exit(self.shard);
    }
}

/// The closer's own reference: `on_drained` cannot run before this drops.
#[must_use = "dropping it releases the closer's reference"]
pub struct DrainRef {
    owner: Arc<dyn HoldsRundown>,
}

impl fmt::Debug for DrainRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DrainRef")
            .field("rundown", self.owner.rundown())
            .finish()
    }
}

impl Drop for DrainRef {
    fn drop(&mut self) {
        self.owner.rundown().release_drain();
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize as StdAtomic;

    fn counter() -> (Arc<StdAtomic>, impl FnOnce() + Send + 'static) {
        let c = Arc::new(StdAtomic::new(0));
        let c2 = Arc::clone(&c);
        (c, move || {
            c2.fetch_add(1, Ordering::SeqCst);
        })
    }

    /// Every test runs on both paths (asymmetric degrades to sharded where unsupported).
    const MODES: [Mode; 2] = [Mode::Asymmetric, Mode::Sharded];

    fn rundown(mode: Mode) -> Arc<Rundown> {
        Arc::new(Rundown::with_mode(mode))
    }

    #[test]
    fn close_with_no_calls_drains_when_the_drain_ref_drops() {
        for m in MODES {
            let r = rundown(m);
            let (fired, f) = counter();
            let d = r.close(f).unwrap();
            assert_eq!(fired.load(Ordering::SeqCst), 0);
            drop(d);
            assert_eq!(fired.load(Ordering::SeqCst), 1);
        }
    }

    #[test]
    fn a_deferred_callback_is_refused_after_the_drain_and_runs_once_before_it() {
        for m in MODES {
            // Drained inline: nothing to install, the caller is told so.
            let r = rundown(m);
            drop(
                r.close_deferred(Arc::clone(&r) as Arc<dyn HoldsRundown>)
                    .unwrap(),
            );
            assert!(r.drained());
            let (fired, f) = counter();
            assert!(!r.set_on_drained(f));
            assert_eq!(fired.load(Ordering::SeqCst), 0);

            // A slot guard and an owned guard outlive the drain ref: the installed callback
            // runs once, when the last of them goes.
            let r = rundown(m);
            let g1 = r.try_enter_owned().unwrap();
            let g2 = r.try_enter().unwrap();
            drop(
                r.close_deferred(Arc::clone(&r) as Arc<dyn HoldsRundown>)
                    .unwrap(),
            );
            assert!(!r.drained());
            let (fired, f) = counter();
            assert!(r.set_on_drained(f));
            drop(g2);
            assert_eq!(fired.load(Ordering::SeqCst), 0);
            assert!(!r.drained());
            std::thread::spawn(move || drop(g1)).join().unwrap();
            assert_eq!(fired.load(Ordering::SeqCst), 1);
            assert!(r.drained());
            assert!(
                r.close_deferred(Arc::clone(&r) as Arc<dyn HoldsRundown>)
                    .is_none()
            );
        }
    }

    #[test]
    fn no_call_enters_after_close() {
        for m in MODES {
            let r = rundown(m);
            let d = r.close(|| {}).unwrap();
            assert!(r.try_enter().is_none());
            assert!(r.try_enter_owned().is_none());
            assert_eq!(r.call(|| panic!("must not run")), None);
            drop(d);
            assert!(r.try_enter().is_none());
            assert_eq!(r.in_flight(), 0);
        }
    }

    #[test]
    fn drain_waits_for_the_last_guard() {
        for m in MODES {
            let r = rundown(m);
            let g1 = r.try_enter_owned().unwrap();
            let g2 = r.try_enter().unwrap();
            assert_eq!(r.in_flight(), 2);
            let (fired, f) = counter();
            drop(r.close(f).unwrap());
            drop(g2);
            assert_eq!(fired.load(Ordering::SeqCst), 0);
            assert_eq!(r.in_flight(), 1);
            let t = std::thread::spawn(move || drop(g1));
            t.join().unwrap();
            assert_eq!(fired.load(Ordering::SeqCst), 1);
        }
    }

    #[test]
    fn the_last_slot_guard_fires_after_the_drain_ref() {
        for m in MODES {
            let r = rundown(m);
            let g = r.try_enter().unwrap();
            let (fired, f) = counter();
            let d = r.close(f).unwrap();
            drop(d);
            assert_eq!(fired.load(Ordering::SeqCst), 0, "{m:?}");
            drop(g);
            assert_eq!(fired.load(Ordering::SeqCst), 1, "{m:?}");
        }
    }

    #[test]
    fn nesting_beyond_the_slots_falls_back_to_the_counter() {
        for m in MODES {
            let r = rundown(m);
            let other = rundown(m);
            let outer = other.try_enter().unwrap();
            let mut guards: Vec<_> = (0..SLOTS + 3).map(|_| r.try_enter().unwrap()).collect();
            assert_eq!(r.in_flight(), SLOTS + 3);
            let (fired, f) = counter();
            drop(r.close(f).unwrap());
            // Release out of order: slots and counter guards mixed.
            guards.swap(0, SLOTS + 1);
            while let Some(g) = guards.pop() {
                assert_eq!(fired.load(Ordering::SeqCst), 0);
                drop(g);
            }
            assert_eq!(fired.load(Ordering::SeqCst), 1);
            drop(outer);
            assert_eq!(other.in_flight(), 0);
        }
    }

    #[test]
    fn closing_twice_is_refused() {
        for m in MODES {
            let r = rundown(m);
            let d = r.close(|| {}).unwrap();
            assert!(
                r.close(|| panic!("second close must not install its callback"))
                    .is_none()
            );
            drop(d);
        }
    }

    #[test]
    fn guards_released_on_other_threads_are_counted() {
        for m in MODES {
            let r = rundown(m);
            let guards: Vec<_> = (0..8).map(|_| r.try_enter_owned().unwrap()).collect();
            let (fired, f) = counter();
            let d = r.close(f).unwrap();
            let handles: Vec<_> = guards
                .into_iter()
                .map(|g| std::thread::spawn(move || drop(g)))
                .collect();
            for h in handles {
                h.join().unwrap();
            }
            assert_eq!(fired.load(Ordering::SeqCst), 0);
            drop(d);
            assert_eq!(fired.load(Ordering::SeqCst), 1);
        }
    }

    #[test]
    fn concurrent_callers_and_close_fire_once_after_the_last_call() {
        for m in MODES {
            for _ in 0..20 {
                let r = rundown(m);
                let active = Arc::new(StdAtomic::new(0));
                let fired = Arc::new(StdAtomic::new(0));
                let threads: Vec<_> = (0..3)
                    .map(|_| {
                        let (r, active) = (Arc::clone(&r), Arc::clone(&active));
                        std::thread::spawn(move || {
                            while r
                                .call(|| {
                                    active.fetch_add(1, Ordering::SeqCst);
                                    std::hint::spin_loop();
                                    active.fetch_sub(1, Ordering::SeqCst);
                                })
                                .is_some()
                            {}
                        })
                    })
                    .collect();
                std::thread::yield_now();
                let (a, f2) = (Arc::clone(&active), Arc::clone(&fired));
                let d = r
                    .close(move || {
                        assert_eq!(a.load(Ordering::SeqCst), 0, "a call outlived the drain");
                        f2.fetch_add(1, Ordering::SeqCst);
                    })
                    .unwrap();
                drop(d);
                for t in threads {
                    t.join().unwrap();
                }
                assert_eq!(fired.load(Ordering::SeqCst), 1);
            }
        }
    }

    #[test]
    fn thread_records_are_reused() {
        let r = rundown(Mode::Asymmetric);
        // Warm up, then count: sequential threads must not each leave a record behind.
        std::thread::spawn({
            let r = Arc::clone(&r);
            move || drop(r.try_enter())
        })
        .join()
        .unwrap();
        let before = thread_records();
        for _ in 0..100 {
            let r = Arc::clone(&r);
            std::thread::spawn(move || assert!(r.try_enter().is_some()))
                .join()
                .unwrap();
        }
        // Other tests run in parallel and may hold a few records of their own.
        assert!(
            thread_records() < before + 20,
            "records grew: {before} -> {}",
            thread_records()
        );
    }

    #[test]
    fn force_fallback_selects_the_counter_for_new_rundowns() {
        assert_eq!(Rundown::with_mode(Mode::Sharded).mode(), Mode::Sharded);
        // Other tests running meanwhile are correct in either mode.
        force_fallback(true);
        assert_eq!(Rundown::new().mode(), Mode::Sharded);
        force_fallback(false);
        if asymmetric_available() {
            assert_eq!(Rundown::new().mode(), Mode::Asymmetric);
            assert_eq!(
                Rundown::with_mode(Mode::Asymmetric).mode(),
                Mode::Asymmetric
            );
        }
    }
}
