//! Loom models of the IRP rule: an operation completes exactly once, whatever races with
//! its completion (cancel, a completion routine being set, a waiter, a dropped completer).
//! Run with `RUSTFLAGS="--cfg loom" cargo test -p wsk --release --test loom_op`.
#![cfg(loom)]

use loom::sync::Arc;
use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::thread;
use wsk::{Error, Op};

#[test]
fn complete_racing_cancel_delivers_exactly_one_result() {
    loom::model(|| {
        let (op, done) = Op::<u32>::pending();
        let t = thread::spawn(move || done.complete(Ok(7)));
        op.cancel();
        let delivered = t.join().unwrap();
        match op.wait() {
            Ok(v) => assert!(delivered && v == 7),
            Err(e) => assert!(!delivered && e == Error::Cancelled),
        }
    });
}

#[test]
fn routine_set_while_completing_runs_exactly_once() {
    loom::model(|| {
        let runs = Arc::new(AtomicUsize::new(0));
        let (op, done) = Op::<u32>::pending();
        let t = thread::spawn(move || assert!(done.complete(Ok(1))));
        let r2 = runs.clone();
        op.on_complete(move |r| {
            assert_eq!(r, Ok(1));
            r2.fetch_add(1, Ordering::SeqCst);
        });
        t.join().unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    });
}

#[test]
fn waiter_on_another_thread_gets_the_result() {
    loom::model(|| {
        let (op, done) = Op::<u32>::pending();
        let t = thread::spawn(move || op.wait());
        assert!(done.complete(Ok(3)));
        assert_eq!(t.join().unwrap(), Ok(3));
    });
}

#[test]
fn dropped_completer_racing_a_routine_completes_cancelled_once() {
    loom::model(|| {
        let runs = Arc::new(AtomicUsize::new(0));
        let (op, done) = Op::<u32>::pending();
        let t = thread::spawn(move || drop(done));
        let r2 = runs.clone();
        op.on_complete(move |r| {
            assert_eq!(r, Err(Error::Cancelled));
            r2.fetch_add(1, Ordering::SeqCst);
        });
        t.join().unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    });
}
