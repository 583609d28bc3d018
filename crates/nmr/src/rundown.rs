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
//! of the rundown's `gate` word, compared with the caller's record; on exit a release store
//! clearing the slot, a compiler fence and another relaxed load of the gate. No
//! read-modify-write, no write to a shared cache line.
//!
//! The gate names who may enter that way: the one thread record that has entered (its
//! owner), or "shared" once a second thread has; the first entry of each thread claims it
//! with a compare-and-swap on the cold path. It also carries the closed flag, and a
//! sharded-mode rundown's gate says "counted" from the start, so neither mode nor closing
//! costs the slot path a test of its own: such calls leave it at the gate test.
//!
//! `close` sets the closed flag with a `fetch_or` that also reads the owner. If a thread other
//! than the closer may be inside a slot call (the gate is shared, or owned by another thread,
//! and some other thread owns a record), it runs the heavy barrier, which forces every other
//! thread through a full fence: afterwards each thread either saw the flag at entry (and did
//! not enter) or its slot is visible to the closer. Otherwise no barrier is needed: any
//! other thread would have to claim the gate first, and the claim and the close are ordered
//! on the gate itself (the claim fails, or the close sees it). Each guard still in flight sees
//! the flag when it exits and takes the cold path. Guards that must move between threads
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
//! every counted guard and the `DrainRef` are gone ("counter drained"). When the total is
//! zero (the common case, and always in asymmetric mode without owned guards) nothing will
//! ever release into `drain`, so the `DrainRef` alone is the counter and skips it. In
//! asymmetric mode the counter is allocated only by the first counted guard; a counted guard
//! that might have installed it after a close looked for it checks the gate afterwards and
//! backs out (see `enter_raw`).
//!
//! Slot part (asymmetric mode only): the thread that drains the counter stores
//! `counter_drained`, fences and scans every thread record for the rundown's address; a slot
//! guard that exits after `close` clears its slot, fences, and if `counter_drained` is set
//! scans too. Of the last two such events one always sees the other (store, `SeqCst` fence,
//! load on both sides), so someone sees "counter drained and no slot holds me". Those
//! threads set the `FIRED` bit of one state word with a read-modify-write: only the first
//! goes on. A callback installed after the close sets the `INSTALLED` bit of the same word,
//! so whichever of the two came first decides whether the callback runs, and `fire` takes
//! the callback lock only when one was installed.
//!
//! A close costs, with no call in flight and no other thread that ever made a slot call:
//! one `fetch_or` (`closed`), and at the drain one fence and one `fetch_or`; the thread
//! records are walked without a lock.
//!
//! loom (`tests/loom_rundown.rs`) checks this protocol with both halves of the asymmetric
//! pair modelled as `SeqCst` fences. That model cannot show why the heavy barrier is needed:
//! with a full fence on the caller's side, the drain's own fence would already pair with it.
//! On hardware the caller has only a compiler fence, its slot store can still sit in its
//! store buffer when it reads `closed`, and only the barrier, run on its CPU, drains it.

use crate::sync::atomic::{AtomicBool, AtomicIsize, AtomicU8, AtomicUsize, Ordering, fence};
use crate::sync::{self, Arc, Mutex};
use crate::sys;
use crossbeam_utils::CachePadded;
use std::fmt;

const CLOSED: usize = 1;
const ONE: usize = 2;

/// `Rundown::gate`: who may make slot calls without a read-modify-write, and whether the
/// rundown is closing. The word holds the address of the one thread record that has entered
/// (its owner; records are 128-byte aligned), [`GATE_SHARED`] once a second thread entered, or
/// 0 before any slot call, plus the flag bits below. A slot call goes straight through when
/// the word equals its own record or `GATE_SHARED`; anything else (first entry, a second
/// thread, closing, sharded mode) takes the cold path, which claims ownership with a
/// compare-and-swap. So a close knows whether a thread other than its own can be inside a
/// slot call without a read-modify-write, and only then needs the heavy barrier.
const GATE_CLOSED: usize = 1;
/// Sharded mode: every call uses the counter (fixed at creation).
const GATE_COUNTED: usize = 2;
/// More than one thread has entered through a slot.
const GATE_SHARED: usize = 4;
/// The gate's flag bits (the rest is the owner).
const GATE_FLAGS: usize = GATE_CLOSED | GATE_COUNTED;

/// `Rundown::done` bits.
const FIRED: u8 = 1;
const INSTALLED: u8 = 2;

/// Nested calls one thread can have in flight on the asymmetric path; deeper nesting falls
/// back to the sharded counter.
pub const SLOTS: usize = 4;

type OnDrained = Box<dyn FnOnce() + Send>;
/// One shard of the counter: `count * 2 | CLOSED`, on cache lines of its own.
type Shard = CachePadded<AtomicUsize>;

mod shard_table {
    //! A rundown's sharded counter behind one atomic pointer, allocated at most once: at
    //! creation, or lazily by the first counted call in asymmetric mode. The table is a boxed
    //! slice of [`shard_count`] shards kept as a thin pointer to its first element (the
    //! length is a process-wide constant). Loads and the install are `SeqCst`: a close that
    //! finds no table relies on it (see `Rundown::enter_raw`).
    use super::{Shard, shard_count};
    use crate::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
    use crossbeam_utils::CachePadded;
    use std::ptr;

    pub(super) struct Table(AtomicPtr<Shard>);

    fn alloc() -> *mut Shard {
        let b: Box<[Shard]> = (0..shard_count())
            .map(|_| CachePadded::new(AtomicUsize::new(0)))
            .collect();
        Box::into_raw(b).cast::<Shard>()
    }

    /// # Safety
    /// `p` came from [`alloc`] and is freed only after the returned borrow ends.
    unsafe fn free(p: *mut Shard) {
        // SAFETY: per the contract, `p` is the start of a live boxed slice from `alloc`.
        drop(unsafe { Box::from_raw(ptr::slice_from_raw_parts_mut(p, shard_count())) });
    }

    impl Table {
        /// A table with its shards allocated.
        pub(super) fn allocated() -> Self {
            Table(AtomicPtr::new(alloc()))
        }

        /// A table whose shards are allocated on first use.
        pub(super) fn lazy() -> Self {
            Table(AtomicPtr::new(ptr::null_mut()))
        }

        fn view(&self, p: *mut Shard) -> Option<&[Shard]> {
            if p.is_null() {
                return None;
            }
            // SAFETY: a non-null pointer was published by `allocated` or `get_or_alloc` from
            // `alloc` (a boxed slice of `shard_count()` shards), and is freed only when
            // `self` drops, which the borrow of `self` prevents.
            Some(unsafe { std::slice::from_raw_parts(p, shard_count()) })
        }

        /// The shards, if allocated.
        pub(super) fn get(&self) -> Option<&[Shard]> {
            self.view(self.0.load(Ordering::SeqCst))
        }

        /// The shards, allocated if need be.
        pub(super) fn get_or_alloc(&self) -> &[Shard] {
            let p = self.0.load(Ordering::SeqCst);
            if let Some(s) = self.view(p) {
                return s;
            }
            let new = alloc();
            let p = match self.0.compare_exchange(
                ptr::null_mut(),
                new,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => new,
                Err(current) => {
                    // SAFETY: `new` came from `alloc` and was never published.
                    unsafe { free(new) };
                    current
                }
            };
            self.view(p)
                .unwrap_or_else(|| unreachable!("the table is allocated now"))
        }
    }

    impl Drop for Table {
        fn drop(&mut self) {
            let p = self.0.load(Ordering::Relaxed);
            if !p.is_null() {
                // SAFETY: `p` came from `alloc` and dies with the table, which is going.
                unsafe { free(p) };
            }
        }
    }
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
    use crate::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering, fence};
    use crate::sync::{self, Mutex};
    use std::cell::Cell;

    /// One thread's slots, on cache lines of their own (128 bytes: adjacent-line prefetch
    /// pulls lines in pairs). A slot holds the address of the rundown the thread is calling
    /// through, or 0. Only the owning thread writes its slots; closers read them.
    // `repr(C)`: the slots come first, so slot 0's address is the record's (the gate test).
    #[repr(C, align(128))]
    pub(super) struct ThreadRecord {
        pub(super) slots: [AtomicUsize; SLOTS],
        /// Owned by a live thread (changed only under [`RECORDS`]' lock).
        owned: AtomicBool,
        /// The record published before this one (set before this one is published, never
        /// changed after): the records form a list closers walk without a lock.
        next: AtomicPtr<ThreadRecord>,
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
    // of threads alive at once. `HEAD` starts the list of every record ever made (pushed
    // under `RECORDS`, walked without it); `OWNED` counts the records live threads own.
    // Taking and giving back records is serialised by `RECORDS`.
    #[cfg(not(loom))]
    static RECORDS: Mutex<()> = Mutex::new(());
    #[cfg(not(loom))]
    static HEAD: AtomicPtr<ThreadRecord> = AtomicPtr::new(std::ptr::null_mut());
    #[cfg(not(loom))]
    static OWNED: AtomicUsize = AtomicUsize::new(0);
    #[cfg(loom)]
    loom::lazy_static! {
        static ref RECORDS: Mutex<()> = Mutex::new(());
        static ref HEAD: AtomicPtr<ThreadRecord> = AtomicPtr::new(std::ptr::null_mut());
        static ref OWNED: AtomicUsize = AtomicUsize::new(0);
    }

    /// Every record made so far, newest first.
    fn all() -> impl Iterator<Item = &'static ThreadRecord> {
        let mut p = HEAD.load(Ordering::Acquire);
        std::iter::from_fn(move || {
            // SAFETY: records are leaked (never freed) and fully initialised before they
            // are published with a release store that the acquire loads here pair with.
            let r: &'static ThreadRecord = unsafe { p.as_ref() }?;
            p = r.next.load(Ordering::Acquire);
            Some(r)
        })
    }

    fn acquire() -> &'static ThreadRecord {
        let _list = sync::lock(&RECORDS);
        // A thread that takes its first record after a close counts in `OWNED` before it
        // can enter; the fence orders that count before its first read of `closed` (see
        // `others_active`).
        OWNED.fetch_add(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if let Some(r) = all().find(|r| !r.owned.load(Ordering::Relaxed)) {
            r.owned.store(true, Ordering::Relaxed);
            return r;
        }
        let r: &'static ThreadRecord = Box::leak(Box::new(ThreadRecord {
            slots: std::array::from_fn(|_| AtomicUsize::new(0)),
            owned: AtomicBool::new(true),
            next: AtomicPtr::new(HEAD.load(Ordering::Relaxed)),
        }));
        HEAD.store(std::ptr::from_ref(r).cast_mut(), Ordering::Release);
        r
    }

    /// Called at thread exit: the record becomes reusable, unless a guard is still alive (one
    /// leaked with `mem::forget`, or held by a thread-local destroyed later), in which case
    /// the record stays with the dead thread.
    #[cfg(not(loom))]
    fn release(r: &'static ThreadRecord) {
        let _list = sync::lock(&RECORDS);
        if r.slots.iter().all(|s| s.load(Ordering::Relaxed) == 0) {
            r.owned.store(false, Ordering::Relaxed);
            OWNED.fetch_sub(1, Ordering::Relaxed);
        }
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
        next: AtomicPtr::new(std::ptr::null_mut()),
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

    // `record_of` relies on every slot lying in the record's first aligned block.
    const _: () = assert!(
        std::mem::size_of::<[AtomicUsize; SLOTS]>() <= std::mem::align_of::<ThreadRecord>()
    );

    /// The record a slot of it belongs to: records are 128-byte aligned and their slots sit
    /// in their first bytes.
    #[inline(always)]
    pub(super) fn record_of(slot: &AtomicUsize) -> usize {
        std::ptr::from_ref(slot).addr() & !(std::mem::align_of::<ThreadRecord>() - 1)
    }

    /// The address of this thread's record, or 0 if it has none.
    pub(super) fn mine_addr() -> usize {
        mine().map_or(0, |r| std::ptr::from_ref(r).addr())
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
    /// needs (see the module docs). Takes no lock.
    pub(super) fn count(addr: usize) -> usize {
        fence(Ordering::SeqCst);
        all()
            .flat_map(|r| r.slots.iter())
            .filter(|s| s.load(Ordering::SeqCst) == addr)
            .count()
    }

    /// Does any thread other than this one own a record? Called after the `SeqCst` store
    /// of `closed`: a thread that takes its first record later counts itself in `OWNED`
    /// and fences before its first entry, so it sees `closed`; with no other record
    /// owned, no other thread can be in a slot call and the heavy barrier has nothing to do.
    pub(super) fn others_active() -> bool {
        let owned = OWNED.load(Ordering::SeqCst);
        owned > usize::from(mine().is_some())
    }

    /// Thread records in existence (for diagnostics and tests of reuse).
    pub(super) fn total() -> usize {
        all().count()
    }
}

/// Thread records allocated so far: bounded by the peak number of threads that used the
/// asymmetric path at once (records of exited threads are reused).
#[must_use]
pub fn thread_records() -> usize {
    records::total()
}

#[cfg(not(loom))]
std::thread_local! {
    static BARRIERS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Heavy barriers (`membarrier`) the closes made on this thread have issued so far: a close
/// issues one only when a thread other than the closer may be inside a slot call (see the
/// module docs). For diagnostics and tests.
#[must_use]
pub fn barriers_on_this_thread() -> u64 {
    #[cfg(not(loom))]
    {
        BARRIERS.with(std::cell::Cell::get)
    }
    #[cfg(loom)]
    {
        0
    }
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
    /// Owner and flags (see [`GATE_CLOSED`]); read (relaxed) by every slot guard's entry
    /// and exit.
    gate: AtomicUsize,
    asymmetric: bool,
    /// Per-shard `count * 2 | CLOSED`. Padded to 128 bytes: adjacent-line prefetch on x86
    /// pulls cache lines in pairs, so 64-byte padding still shares traffic between shards.
    ///
    /// Allocated on first use in asymmetric mode (owned guards are rare there); a first
    /// entry after a close backs out (see [`enter_raw`](Self::enter_raw)).
    shards: shard_table::Table,
    drain: AtomicIsize,
    counter_drained: AtomicBool,
    /// [`FIRED`]: the drain completed (set once, by whoever completes it);
    /// [`INSTALLED`]: a callback was put in `on_drained` (so `fire` locks only then). One
    /// word, so the two threads that may set them agree on which came first.
    done: AtomicU8,
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
        let shards = if !asymmetric {
            shard_table::Table::allocated()
        } else {
            shard_table::Table::lazy()
        };
        Rundown {
            gate: AtomicUsize::new(if asymmetric { 0 } else { GATE_COUNTED }),
            asymmetric,
            shards,
            drain: AtomicIsize::new(0),
            counter_drained: AtomicBool::new(false),
            done: AtomicU8::new(0),
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
        let shards = self.shards.get_or_alloc();
        let i = my_shard(shards.len() - 1);
        let s = &shards[i];
        let mut v = s.load(Ordering::Relaxed);
        loop {
            if v & CLOSED != 0 {
                return None;
            }
            match s.compare_exchange_weak(v, v + ONE, Ordering::SeqCst, Ordering::Relaxed) {
                Ok(_) => break,
                Err(cur) => v = cur,
            }
        }
        // A lazily allocated table may have been installed after a close looked for it and
        // found none, so that close set no closed bit here. Its `SeqCst` gate store came
        // before its table load, which came before the install, which came before the load
        // of the gate below: this call sees the gate shut and backs out (a close that did
        // see the table counted this call, and the exit releases it into the drain).
        if self.asymmetric {
            // loom models `SeqCst` accesses as acquire/release only; with this fence and the
            // one after the close's gate store it sees the order C++20 gives them.
            #[cfg(loom)]
            fence(Ordering::SeqCst);
            if self.gate.load(Ordering::SeqCst) & GATE_CLOSED != 0 {
                self.exit(i);
                return None;
            }
        }
        Some(i)
    }

    /// Ends a counter call started on `shard` (any thread may end it).
    #[inline]
    pub(crate) fn exit(&self, shard: usize) {
        let Some(shards) = self.shards.get() else {
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
        let g = self.gate.load(Ordering::Relaxed);
        // Slot 0 (no nesting, the common case) sits at its record's address, so comparing
        // with the slot's address is the owner test; nested slots take the cold path.
        if g == std::ptr::from_ref(slot).addr() || g == GATE_SHARED {
            return true;
        }
        self.enter_cold(slot, g)
    }

    /// A slot entry that did not find the gate open for this thread (out of line, so the
    /// common case falls straight through to the call): claims ownership on a first entry,
    /// marks the gate shared on another thread's, and refuses (giving the slot back) when
    /// the rundown is closing or counts on the counter (sharded mode, the caller's next try).
    #[cold]
    #[inline(never)]
    fn enter_cold(&self, slot: &AtomicUsize, mut g: usize) -> bool {
        let me = records::record_of(slot);
        loop {
            if g & GATE_FLAGS != 0 {
                if self.asymmetric {
                    self.exit_slot(slot);
                } else {
                    // No closer of a sharded-mode rundown looks at slots.
                    slot.store(0, Ordering::Relaxed);
                }
                return false;
            }
            if g == me || g == GATE_SHARED {
                return true;
            }
            let claim = if g == 0 { me } else { GATE_SHARED };
            // `SeqCst`, and on the gate: a close's `fetch_or` either comes first (and this
            // fails, seeing it) or reads the claim and knows another thread may be inside.
            match self
                .gate
                .compare_exchange(g, claim, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => return true,
                Err(current) => g = current,
            }
        }
    }

    /// Can a thread other than this one be inside a slot call, given the gate as the close
    /// found it? Only the gate's owner enters without claiming it first, and a claim after
    /// the close fails.
    fn others_may_be_inside(gate: usize) -> bool {
        match gate & !GATE_FLAGS {
            0 => false,
            owner if owner == records::mine_addr() => false,
            _ => records::others_active(),
        }
    }

    /// Ends a slot call (on the thread that started it).
    #[inline(always)]
    fn exit_slot(&self, slot: &AtomicUsize) {
        slot.store(0, Ordering::Release);
        sys::light_fence();
        if self.gate.load(Ordering::Relaxed) & GATE_CLOSED != 0 {
            self.slot_exit_after_close();
        }
    }

    /// A slot was cleared after `close` began: if the counter has drained too, this thread
    /// may be the last one out.
    #[cold]
    #[inline(never)]
    fn slot_exit_after_close(&self) {
        if self.drained() {
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
            self.counter_done();
        }
    }

    /// The counter has drained (every counted guard and the `DrainRef` are gone): fire,
    /// unless a slot guard is still in flight (then the last one to exit fires).
    fn counter_done(&self) {
        if self.asymmetric {
            // `count` starts with a `SeqCst` fence: the store-fence-load half of the
            // handshake with slot exits.
            self.counter_drained.store(true, Ordering::Release);
            if records::count(self.addr()) != 0 {
                return;
            }
        }
        self.fire();
    }

    /// Completes the drain and runs `on_drained` if one is installed, once, whoever gets
    /// here first. Every caller gets here only once the drain is complete, so `fired` is
    /// set even when no callback is installed yet (see
    /// [`close_deferred`](Self::close_deferred)).
    fn fire(&self) {
        let prev = self.done.fetch_or(FIRED, Ordering::AcqRel);
        if prev & FIRED == 0 && prev & INSTALLED != 0 {
            // Installed first: `set_on_drained` put the callback in before setting the bit.
            let f = sync::lock(&self.on_drained).take();
            if let Some(f) = f {
                f();
            }
        }
    }

    /// Starts a call on this thread: `None` once closing began.
    #[inline(always)]
    #[must_use]
    pub fn try_enter(&self) -> Option<RundownGuard<'_>> {
        // Kept small and inlined: the guard then lives in registers (returning it through
        // memory costs a store-forwarding stall larger than the whole protection).
        if let Some(slot) = records::free_slot() {
            if self.enter_slot(slot) {
                return Some(RundownGuard {
                    rundown: self,
                    how: How::Slot(slot),
                    _not_send: std::marker::PhantomData,
                });
            }
            if self.asymmetric {
                return None;
            }
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
        if let Some(slot) = records::free_slot() {
            if self.enter_slot(slot) {
                let _g = SlotExit {
                    rundown: self,
                    slot,
                };
                return Some(f());
            }
            if self.asymmetric {
                return None;
            }
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
        self.done.load(Ordering::Acquire) & FIRED != 0
    }

    /// After [`close_deferred`](Self::close_deferred): installs `on_drained` to run when the
    /// drain completes, and returns `true`; or returns `false` (dropping `on_drained`
    /// unrun) when the drain has completed already. Decided under the callback lock
    /// `fire` takes, so exactly one of the two happens.
    pub(crate) fn set_on_drained(&self, on_drained: impl FnOnce() + Send + 'static) -> bool {
        let mut slot = sync::lock(&self.on_drained);
        *slot = Some(Box::new(on_drained));
        if self.done.fetch_or(INSTALLED, Ordering::AcqRel) & FIRED == 0 {
            // Installed before the drain completed: `fire` will see the bit and run it.
            return true;
        }
        // The drain completed first, without a callback: take it back, unrun, and drop it
        // after the lock.
        let back = slot.take();
        drop(slot);
        drop(back);
        false
    }

    fn close_with(
        &self,
        owner: Arc<dyn HoldsRundown>,
        on_drained: Option<OnDrained>,
    ) -> Option<DrainRef> {
        debug_assert!(std::ptr::eq(owner.rundown(), self));
        let gate = self.gate.fetch_or(GATE_CLOSED, Ordering::SeqCst);
        if gate & GATE_CLOSED != 0 {
            return None;
        }
        if let Some(f) = on_drained {
            // Cannot be refused: the drain waits for the `DrainRef` returned below.
            let installed = self.set_on_drained(f);
            debug_assert!(installed);
        }
        // Ordered for slot callers by the heavy barrier below; or, when no other thread can
        // be inside (no other owner, no other thread owning a record), by the gate's own
        // modification order for claims and by the fence every newcomer runs when it takes
        // a record. loom models `SeqCst` accesses as acquire/release only; its fence
        // restores what C++20 gives the `SeqCst` RMW above and load in `others_active`.
        #[cfg(loom)]
        fence(Ordering::SeqCst);
        if self.asymmetric && Self::others_may_be_inside(gate) {
            // Every thread now either saw `closed` or published its slot (module docs).
            sys::heavy_fence();
            #[cfg(not(loom))]
            BARRIERS.with(|b| b.set(b.get() + 1));
        }
        let mut counted: isize = 0;
        for s in self.shards.get().into_iter().flatten() {
            let prev = s.fetch_or(CLOSED, Ordering::AcqRel);
            #[expect(clippy::cast_possible_wrap, reason = "counts are far below isize::MAX")]
            {
                counted += (prev >> 1) as isize;
            }
        }
        // With no counted call in flight none will release into `drain` (later entries see
        // the closed bits), so the `DrainRef` skips the counter.
        if counted > 0 {
            self.drain.fetch_add(counted + 1, Ordering::AcqRel);
        }
        Some(DrainRef {
            owner,
            counted: counted > 0,
        })
    }

    /// Has closing begun?
    #[must_use]
    pub fn is_closed(&self) -> bool {
        self.gate.load(Ordering::Acquire) & GATE_CLOSED != 0
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
    /// Counted calls were in flight at the close: release through the counter.
    counted: bool,
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
        let r = self.owner.rundown();
        if self.counted {
            r.release_drain();
        } else {
            r.counter_done();
        }
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

    /// A close issues the heavy barrier only when another thread may be inside a slot call:
    /// not for a rundown only the closer entered (even with another thread owning a record
    /// and running), but for one that other, still running thread entered, or entered too.
    #[test]
    fn the_barrier_is_skipped_unless_another_thread_entered() {
        if !asymmetric_available() {
            return;
        }
        let mine = rundown(Mode::Asymmetric);
        let theirs = rundown(Mode::Asymmetric);
        let both = rundown(Mode::Asymmetric);
        assert!(mine.call(|| ()).is_some());
        assert!(both.call(|| ()).is_some());
        let (entered_tx, entered_rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let other = {
            let (theirs, both) = (Arc::clone(&theirs), Arc::clone(&both));
            std::thread::spawn(move || {
                assert!(theirs.call(|| ()).is_some());
                assert!(both.call(|| ()).is_some());
                entered_tx.send(()).unwrap();
                // Stays alive (owning its thread record) until the closes are done.
                done_rx.recv().unwrap();
            })
        };
        entered_rx.recv().unwrap();
        let before = barriers_on_this_thread();
        drop(mine.close(|| ()).expect("first close"));
        assert_eq!(
            barriers_on_this_thread(),
            before,
            "only this thread entered"
        );
        drop(theirs.close(|| ()).expect("first close"));
        assert_eq!(
            barriers_on_this_thread(),
            before + 1,
            "another thread owns it"
        );
        drop(both.close(|| ()).expect("first close"));
        assert_eq!(barriers_on_this_thread(), before + 2, "shared");
        done_tx.send(()).unwrap();
        other.join().unwrap();
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

/// loom models of the deferred drain callback the typed layer uses (crate-internal API, so
/// the models live here; `scripts/test.sh` runs them with `--lib loom_`).
#[cfg(all(test, loom))]
mod loom_deferred {
    use super::*;
    use loom::sync::atomic::AtomicUsize as LoomUsize;

    /// A call in flight on another thread races the closer, which releases its `DrainRef`
    /// and then installs a callback only if the drain has not completed: the callback runs
    /// exactly when `set_on_drained` says it was installed, once, after the last call.
    fn set_on_drained_races_the_last_exit(mode: Mode) {
        loom::model(move || {
            let r = Arc::new(Rundown::with_mode(mode));
            let active = Arc::new(LoomUsize::new(0));
            let ran = Arc::new(LoomUsize::new(0));
            let t = {
                let (r, active) = (Arc::clone(&r), Arc::clone(&active));
                loom::thread::spawn(move || {
                    r.call(|| {
                        active.fetch_add(1, Ordering::SeqCst);
                        active.fetch_sub(1, Ordering::SeqCst);
                    });
                })
            };
            let drain = r
                .close_deferred(Arc::clone(&r) as Arc<dyn HoldsRundown>)
                .expect("first close");
            drop(drain);
            let installed = if r.drained() {
                false
            } else {
                let (active, ran2) = (Arc::clone(&active), Arc::clone(&ran));
                r.set_on_drained(move || {
                    assert_eq!(active.load(Ordering::SeqCst), 0, "drained mid-call");
                    ran2.fetch_add(1, Ordering::SeqCst);
                })
            };
            t.join().expect("caller");
            assert!(r.drained());
            assert_eq!(ran.load(Ordering::SeqCst), usize::from(installed));
        });
    }

    #[test]
    fn loom_set_on_drained_races_the_last_exit_asymmetric() {
        set_on_drained_races_the_last_exit(Mode::Asymmetric);
    }

    #[test]
    fn loom_set_on_drained_races_the_last_exit_sharded() {
        set_on_drained_races_the_last_exit(Mode::Sharded);
    }
}
