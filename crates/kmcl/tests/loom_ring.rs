//! Loom models of the ring protocol: index publication (the consumer never sees bytes the
//! producer has not published) and the signal/sleep handshakes (no lost wakeup, in either
//! direction). Run with `RUSTFLAGS="--cfg loom" cargo test -p kmcl --release --test loom_ring`.
#![cfg(loom)]

use kmcl::event::{Event, SIGNAL};
use kmcl::ring::{
    ControlWord, IncomingRing, OutgoingRing, PacketHeader, RingMemory, Staging, TYPE_IN_BAND,
};
use kmcl::sync::Arc;
use kmcl::sync::atomic::{AtomicU32, Ordering};
use loom::cell::UnsafeCell;

/// Ring memory for loom: atomic control words and one loom cell per data byte, so loom
/// reports any read of a byte that races with its write.
struct LoomMemory {
    words: Vec<AtomicU32>,
    data: Vec<UnsafeCell<u8>>,
}

// SAFETY: the data cells are loom cells; loom itself checks that every access to them is
// ordered by happens-before, which is exactly what these models test.
unsafe impl Sync for LoomMemory {}
// SAFETY: as above; the memory is only shared through `Arc`.
unsafe impl Send for LoomMemory {}

impl LoomMemory {
    fn new(data_len: usize) -> Arc<Self> {
        Arc::new(Self {
            words: (0..17).map(|_| AtomicU32::new(0)).collect(),
            data: (0..data_len).map(|_| UnsafeCell::new(0)).collect(),
        })
    }
}

impl RingMemory for LoomMemory {
    fn data_len(&self) -> u32 {
        self.data.len() as u32
    }
    fn load(&self, word: ControlWord, order: Ordering) -> u32 {
        self.words[word as usize / 4].load(order)
    }
    fn store(&self, word: ControlWord, value: u32, order: Ordering) {
        self.words[word as usize / 4].store(value, order)
    }
    fn read(&self, offset: u32, dst: &mut [u8]) {
        for (i, d) in dst.iter_mut().enumerate() {
            // SAFETY: loom tracks the access; the pointer is valid for the cell's lifetime.
            *d = self.data[offset as usize + i].with(|p| unsafe { *p });
        }
    }
    fn write(&self, offset: u32, src: &[u8]) {
        for (i, s) in src.iter().enumerate() {
            // SAFETY: loom tracks the access; the pointer is valid for the cell's lifetime.
            self.data[offset as usize + i].with_mut(|p| unsafe { *p = *s });
        }
    }
}

fn header(id: u64) -> PacketHeader {
    PacketHeader {
        packet_type: TYPE_IN_BAND,
        flags: 0,
        trans_id: id,
    }
}

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(3);
    b.check(f);
}

/// Two packets published one at a time; the consumer polls. Every byte it reads must have
/// been published to it (loom flags a race otherwise) and hold the written value.
#[test]
fn published_packets_are_fully_visible_to_the_consumer() {
    model(|| {
        let mem = LoomMemory::new(128);
        let mut w = OutgoingRing::new(mem.clone()).unwrap();
        let mut r = IncomingRing::new(mem.clone()).unwrap();
        let writer = loom::thread::spawn(move || {
            for i in 0..2u8 {
                assert!(w.try_write(header(u64::from(i)), &[], &[i + 1; 8]).unwrap());
                w.commit().unwrap();
            }
        });
        let mut buf = Vec::new();
        let mut got = 0u8;
        while got < 2 {
            match r.read_packet(&mut buf).unwrap() {
                Some(info) => {
                    assert_eq!(&buf[info.payload.clone()], &[got + 1; 8]);
                    got += 1;
                }
                None => loom::thread::yield_now(),
            }
        }
        writer.join().unwrap();
    });
}

/// Small packets assembled in the producer's write-combining buffer (two, then one more,
/// published by two commits) read through a staging buffer: the second packet of a
/// staged batch takes the reader's inline path. Every byte read must have been published
/// (loom flags a race otherwise) and hold the written value.
#[test]
fn combined_packets_read_staged_are_fully_visible() {
    model(|| {
        let mem = LoomMemory::new(128);
        let mut w = OutgoingRing::new(mem.clone()).unwrap();
        let mut r = IncomingRing::new(mem.clone()).unwrap();
        let writer = loom::thread::spawn(move || {
            for i in 0..2u8 {
                assert!(w.try_write(header(u64::from(i)), &[], &[i + 1; 8]).unwrap());
            }
            w.commit().unwrap();
            assert!(w.try_write(header(2), &[], &[3; 8]).unwrap());
            w.commit().unwrap();
        });
        let mut st = Staging::new();
        let mut got = 0u8;
        while got < 3 {
            match r.read_staged(&mut st).unwrap() {
                Some(p) => {
                    assert_eq!(&st.bytes()[p.payload.clone()], &[got + 1; 8]);
                    got += 1;
                }
                None => loom::thread::yield_now(),
            }
        }
        writer.join().unwrap();
    });
}

/// The consumer sleeps on an event using arm (unmask + re-check); the producer signals
/// only when `commit` says so. If a wakeup could be lost, the consumer would block forever
/// and loom would report a deadlock.
#[test]
fn consumer_sleep_never_misses_a_signal() {
    model(|| {
        let mem = LoomMemory::new(64);
        let mut w = OutgoingRing::new(mem.clone()).unwrap();
        let mut r = IncomingRing::new(mem.clone()).unwrap();
        let event = Arc::new(Event::new());
        let e2 = event.clone();
        let writer = loom::thread::spawn(move || {
            for i in 0..2u8 {
                assert!(w.try_write(header(u64::from(i)), &[], &[]).unwrap());
                if w.commit().unwrap() {
                    e2.raise(SIGNAL);
                }
            }
        });
        let mut buf = Vec::new();
        let mut got = 0;
        loop {
            while r.read_packet(&mut buf).unwrap().is_some() {
                got += 1;
            }
            r.commit_read().unwrap();
            if got == 2 {
                break;
            }
            if r.arm().unwrap() {
                event.wait();
                r.set_interrupt_mask(true);
            }
        }
        writer.join().unwrap();
    });
}

/// The producer finds the ring full, asks for space with `pending_send_size` and sleeps;
/// the consumer signals only when `commit_read` says so. No lost wakeup either way.
#[test]
fn producer_waiting_for_space_is_always_woken() {
    model(|| {
        // 64 bytes: one 24-byte packet plus the 8 reserved bytes leaves no room for a second
        // 40-byte one until the first is consumed.
        let mem = LoomMemory::new(64);
        let mut w = OutgoingRing::new(mem.clone()).unwrap();
        let mut r = IncomingRing::new(mem.clone()).unwrap();
        let to_reader = Arc::new(Event::new());
        let to_writer = Arc::new(Event::new());
        let (tr, tw) = (to_reader.clone(), to_writer.clone());
        let writer = loom::thread::spawn(move || {
            assert!(w.try_write(header(0), &[], &[]).unwrap());
            if w.commit().unwrap() {
                tr.raise(SIGNAL);
            }
            loop {
                if w.try_write(header(1), &[], &[9; 16]).unwrap() {
                    break;
                }
                if !w.request_space(40).unwrap() {
                    tw.wait();
                }
            }
            w.clear_pending_send_size();
            if w.commit().unwrap() {
                tr.raise(SIGNAL);
            }
        });
        let mut buf = Vec::new();
        let mut got = 0;
        loop {
            while r.read_packet(&mut buf).unwrap().is_some() {
                got += 1;
            }
            if r.commit_read().unwrap() {
                to_writer.raise(SIGNAL);
            }
            if got == 2 {
                break;
            }
            if r.arm().unwrap() {
                to_reader.wait();
                r.set_interrupt_mask(true);
            }
        }
        writer.join().unwrap();
        // Leave the ring's words observed as they end up; nothing else to check.
        let _ = mem.load(ControlWord::WriteIndex, Ordering::SeqCst);
    });
}

/// Released space is reused: the producer overwrites the bytes of a packet only after the
/// consumer's release (a `Release` store of `read_index`) of that packet, so loom reports a
/// race if the consumer's copy out of the ring could overlap the producer's next write into
/// the same bytes. The consumer also copies ahead, past the packet it parses, up to the
/// published `write_index`; those bytes must be published too.
#[test]
fn released_space_is_reused_only_after_the_consumer_copied_it() {
    model(|| {
        // 64 bytes hold two 24-byte packets (plus the 8 reserved); the third reuses the
        // first one's bytes.
        let mem = LoomMemory::new(64);
        let mut w = OutgoingRing::new(mem.clone()).unwrap();
        let mut r = IncomingRing::new(mem.clone()).unwrap();
        let writer = loom::thread::spawn(move || {
            for i in 0..3u8 {
                while !w.try_write(header(u64::from(i)), &[], &[i + 1; 8]).unwrap() {
                    loom::thread::yield_now();
                }
                w.commit().unwrap();
            }
        });
        let mut buf = Vec::new();
        let mut got = 0u8;
        while got < 3 {
            match r.read_packet(&mut buf).unwrap() {
                Some(info) => {
                    assert_eq!(&buf[info.payload.clone()], &[got + 1; 8]);
                    got += 1;
                    r.commit_read().unwrap();
                }
                None => loom::thread::yield_now(),
            }
        }
        writer.join().unwrap();
    });
}

/// Unfenced publication: the producer publishes a packet with `publish_unsignalled` (no
/// fence, no signal), then another with `commit`. A consumer that went to sleep on the
/// first one without a signal must still be woken by the commit.
#[test]
fn unsignalled_publication_is_covered_by_the_next_commit() {
    model(|| {
        let mem = LoomMemory::new(64);
        let mut w = OutgoingRing::new(mem.clone()).unwrap();
        let mut r = IncomingRing::new(mem.clone()).unwrap();
        let event = Arc::new(Event::new());
        let e2 = event.clone();
        let writer = loom::thread::spawn(move || {
            assert!(w.try_write(header(0), &[], &[]).unwrap());
            w.publish_unsignalled().unwrap();
            // A flush with nothing new written must still do the signalling commit.
            if w.commit().unwrap() {
                e2.raise(SIGNAL);
            }
        });
        let mut buf = Vec::new();
        loop {
            if r.read_packet(&mut buf).unwrap().is_some() {
                break;
            }
            r.commit_read().unwrap();
            if r.arm().unwrap() {
                event.wait();
                r.set_interrupt_mask(true);
            }
        }
        writer.join().unwrap();
    });
}
