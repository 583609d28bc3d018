//! loom models of the rundown: the asymmetric fast path (its compiler-fence / membarrier
//! pair modelled as two `SeqCst` fences, see `sys`) and the sharded-counter fallback. Each
//! checks that no call runs once `on_drained` fired and that it fires exactly once.
#![cfg(loom)]

use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::thread;
use nmr::rundown::{Mode, Rundown};
use std::sync::Arc;

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(3);
    }
    b.check(f);
}

/// A rundown plus the model's observers: calls running now, and `on_drained` firings.
struct World {
    rundown: Arc<Rundown>,
    active: Arc<AtomicUsize>,
    fired: Arc<AtomicUsize>,
}

impl World {
    fn new(mode: Mode) -> Self {
        World {
            rundown: Arc::new(Rundown::with_mode(mode)),
            active: Arc::new(AtomicUsize::new(0)),
            fired: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// One call through a thread-bound guard; returns whether it ran.
    fn call(&self) -> bool {
        self.rundown
            .call(|| {
                self.active.fetch_add(1, Ordering::SeqCst);
                assert_eq!(self.fired.load(Ordering::SeqCst), 0, "call after drain");
                self.active.fetch_sub(1, Ordering::SeqCst);
            })
            .is_some()
    }

    /// Closes; `on_drained` checks no call is running and counts itself.
    fn close(&self) -> nmr::rundown::DrainRef {
        let (active, fired) = (Arc::clone(&self.active), Arc::clone(&self.fired));
        self.rundown
            .close(move || {
                assert_eq!(
                    active.load(Ordering::SeqCst),
                    0,
                    "drained with a call in flight"
                );
                fired.fetch_add(1, Ordering::SeqCst);
            })
            .expect("first close")
    }

    fn check_fired_once(&self) {
        assert_eq!(self.fired.load(Ordering::SeqCst), 1);
        assert!(self.rundown.try_enter().is_none());
    }
}

fn share(w: &World) -> World {
    World {
        rundown: Arc::clone(&w.rundown),
        active: Arc::clone(&w.active),
        fired: Arc::clone(&w.fired),
    }
}

/// `calls_before` calls on this thread, then another thread makes `calls` calls while this
/// one closes.
fn calls_race_close(mode: Mode, calls_before: usize, calls: usize) {
    model(move || {
        let w = World::new(mode);
        assert_eq!(w.rundown.mode(), mode);
        for _ in 0..calls_before {
            assert!(w.call(), "open");
        }
        let w1 = share(&w);
        let t = thread::spawn(move || {
            for _ in 0..calls {
                w1.call();
            }
        });
        drop(w.close());
        t.join().unwrap();
        w.check_fired_once();
    });
}

/// An owned guard taken here is released on one thread while another calls and this one
/// closes.
fn owned_guard_released_elsewhere(mode: Mode) {
    model(move || {
        let w = World::new(mode);
        let owned = w.rundown.try_enter_owned().expect("open");
        let w1 = share(&w);
        let t1 = thread::spawn(move || {
            w1.call();
        });
        let t2 = thread::spawn(move || drop(owned));
        drop(w.close());
        t1.join().unwrap();
        t2.join().unwrap();
        w.check_fired_once();
    });
}

#[test]
fn asymmetric_call_races_close() {
    calls_race_close(Mode::Asymmetric, 0, 1);
}

#[test]
fn asymmetric_two_callers_and_a_close() {
    model(|| {
        let w = World::new(Mode::Asymmetric);
        let (w1, w2) = (share(&w), share(&w));
        let t1 = thread::spawn(move || {
            w1.call();
        });
        let t2 = thread::spawn(move || {
            w2.call();
        });
        drop(w.close());
        t1.join().unwrap();
        t2.join().unwrap();
        w.check_fired_once();
    });
}

#[test]
fn asymmetric_drain_ref_released_on_another_thread() {
    model(|| {
        let w = World::new(Mode::Asymmetric);
        let w1 = share(&w);
        let t1 = thread::spawn(move || {
            w1.call();
        });
        let d = w.close();
        let t2 = thread::spawn(move || drop(d));
        t1.join().unwrap();
        t2.join().unwrap();
        w.check_fired_once();
    });
}

#[test]
fn asymmetric_slot_guard_and_owned_guard() {
    owned_guard_released_elsewhere(Mode::Asymmetric);
}

/// The gate's owner calls again (without a read-modify-write) while another thread
/// closes: the close must treat the owner as possibly inside.
#[test]
fn asymmetric_owner_calls_again_while_another_thread_closes() {
    calls_race_close(Mode::Asymmetric, 0, 2);
}

/// The closing thread owns the gate; a second thread claims it (shared) at the same time:
/// the claim either comes first, so the close sees a shared gate, or fails on the closed
/// gate.
#[test]
fn asymmetric_second_thread_joins_while_the_owner_closes() {
    calls_race_close(Mode::Asymmetric, 1, 1);
}

/// An owned guard's first entry allocates the asymmetric rundown's counter while the
/// rundown closes: the entry either is counted by the close or sees it and backs out.
#[test]
fn asymmetric_first_owned_entry_races_close() {
    model(|| {
        let w = World::new(Mode::Asymmetric);
        let w1 = share(&w);
        let t = thread::spawn(move || {
            if let Some(g) = w1.rundown.try_enter_owned() {
                w1.active.fetch_add(1, Ordering::SeqCst);
                assert_eq!(w1.fired.load(Ordering::SeqCst), 0, "call after drain");
                w1.active.fetch_sub(1, Ordering::SeqCst);
                drop(g);
            }
        });
        drop(w.close());
        t.join().unwrap();
        w.check_fired_once();
    });
}

#[test]
fn sharded_call_races_close() {
    calls_race_close(Mode::Sharded, 0, 1);
}

#[test]
fn sharded_owned_guard_released_elsewhere() {
    owned_guard_released_elsewhere(Mode::Sharded);
}
