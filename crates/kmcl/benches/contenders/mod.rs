//! The contenders of the ring benchmarks, shared by the criterion bench (`ring.rs`) and the
//! interleaved-rounds bench (`ring_rounds.rs`): each moves `n` items and returns the time.

use std::hint::black_box;
use std::time::{Duration, Instant};

/// Bytes of a large packet.
pub(crate) const LARGE: usize = 64 * 1024;

/// Sends `n` messages of `len` bytes through a [`kmcl::pipe`] ring of `pages` data pages from
/// one thread to another, publishing every `batch` packets (0: the pipe's default, automatic
/// batching that coalesces small messages); returns the time.
pub(crate) fn ring(n: u64, len: usize, pages: u32, batch: u32) -> Duration {
    ring_with(n, len, pages, batch, true)
}

/// [`ring`] with automatic publication and without coalescing: one VMBus packet per
/// message, published by bytes like the default.
pub(crate) fn ring_packets(n: u64, len: usize, pages: u32) -> Duration {
    ring_with(n, len, pages, 0, false)
}

fn ring_with(n: u64, len: usize, pages: u32, batch: u32, coalesce: bool) -> Duration {
    let (mut tx, mut rx) = kmcl::pipe::pipe(pages).unwrap();
    tx.set_batch(batch);
    tx.set_coalescing(coalesce);
    let reader = std::thread::spawn(move || {
        let mut sum = 0u64;
        for _ in 0..n {
            sum = sum.wrapping_add(u64::from(rx.recv().unwrap()[0]));
        }
        sum
    });
    let payload = vec![7u8; len];
    let start = Instant::now();
    for _ in 0..n {
        tx.send(black_box(&payload)).unwrap();
    }
    tx.flush().unwrap();
    black_box(reader.join().unwrap());
    start.elapsed()
}

/// The ring's own cost with no second core involved: write 32 packets, publish, read them,
/// release.
pub(crate) fn ring_single_thread(n: u64) -> Duration {
    use kmcl::ring::{IncomingRing, OutgoingRing, PacketHeader, TYPE_IN_BAND};
    let view = kmcl::shmem::RingView::heap(16).unwrap();
    let mut w = OutgoingRing::new(view.clone()).unwrap();
    let mut r = IncomingRing::new(view).unwrap();
    let header = PacketHeader {
        packet_type: TYPE_IN_BAND,
        flags: 0,
        trans_id: 0,
    };
    let payload = [7u8; 64];
    let mut buf = Vec::new();
    let mut sum = 0u64;
    let start = Instant::now();
    for _ in 0..n / 32 {
        for _ in 0..32 {
            w.try_write(header, &[0; 8], black_box(&payload)).unwrap();
        }
        w.commit().unwrap();
        while let Some(i) = r.read_packet(&mut buf).unwrap() {
            sum = sum.wrapping_add(u64::from(buf[i.payload.start]));
        }
        r.commit_read().unwrap();
    }
    black_box(sum);
    start.elapsed()
}

/// [`ring_single_thread`] through the pipe's reading path: write 32 packets of 64 bytes
/// (no extra header, 88 ring bytes each), commit, read them with `read_staged`, release.
pub(crate) fn ring_single_staged(n: u64) -> Duration {
    use kmcl::ring::{IncomingRing, OutgoingRing, PacketHeader, Staging, TYPE_IN_BAND};
    let view = kmcl::shmem::RingView::heap(16).unwrap();
    let mut w = OutgoingRing::new(view.clone()).unwrap();
    let mut r = IncomingRing::new(view).unwrap();
    let header = PacketHeader {
        packet_type: TYPE_IN_BAND,
        flags: 0,
        trans_id: 0,
    };
    let payload = [7u8; 64];
    let mut st = Staging::new();
    let mut sum = 0u64;
    let start = Instant::now();
    for _ in 0..n / 32 {
        for _ in 0..32 {
            w.try_write(header, &[], black_box(&payload)).unwrap();
        }
        w.commit().unwrap();
        while let Some(p) = r.read_staged(&mut st).unwrap() {
            sum = sum.wrapping_add(u64::from(st.bytes()[p.payload.start]));
        }
        r.commit_read().unwrap();
    }
    black_box(sum);
    start.elapsed()
}

/// `n` 64-byte arrays through a bounded crossbeam channel of 1024 slots, one thread to another.
pub(crate) fn crossbeam(n: u64) -> Duration {
    let (tx, rx) = crossbeam_channel::bounded::<[u8; 64]>(1024);
    let reader = std::thread::spawn(move || {
        let mut sum = 0u64;
        for _ in 0..n {
            sum = sum.wrapping_add(u64::from(rx.recv().unwrap()[0]));
        }
        sum
    });
    let start = Instant::now();
    for _ in 0..n {
        tx.send(black_box([7u8; 64])).unwrap();
    }
    black_box(reader.join().unwrap());
    start.elapsed()
}

/// The same through `std::sync::mpsc::sync_channel(1024)`.
pub(crate) fn mpsc(n: u64) -> Duration {
    let (tx, rx) = std::sync::mpsc::sync_channel::<[u8; 64]>(1024);
    let reader = std::thread::spawn(move || {
        let mut sum = 0u64;
        for _ in 0..n {
            sum = sum.wrapping_add(u64::from(rx.recv().unwrap()[0]));
        }
        sum
    });
    let start = Instant::now();
    for _ in 0..n {
        tx.send(black_box([7u8; 64])).unwrap();
    }
    black_box(reader.join().unwrap());
    start.elapsed()
}

/// `n` single-thread copies between two hot 64 KiB buffers.
pub(crate) fn memcpy_hot(n: u64) -> Duration {
    let src = vec![7u8; LARGE];
    let mut dst = vec![0u8; LARGE];
    let start = Instant::now();
    for _ in 0..n {
        dst.copy_from_slice(black_box(&src));
        black_box(&mut dst);
    }
    start.elapsed()
}

/// `n` single-thread 64 KiB copies cycling over 16 + 16 buffers (a 1 MiB + 1 MiB working set).
pub(crate) fn memcpy_set(n: u64) -> Duration {
    let src: Vec<Vec<u8>> = (0..16).map(|_| vec![7u8; LARGE]).collect();
    let mut dst: Vec<Vec<u8>> = (0..16).map(|_| vec![0u8; LARGE]).collect();
    let start = Instant::now();
    for i in 0..n {
        let k = (i % 16) as usize;
        dst[k].copy_from_slice(black_box(&src[k]));
        black_box(&mut dst[k]);
    }
    start.elapsed()
}

/// The physical ceiling of a two-core handoff of 64 KiB blocks, with no VMBus format: a
/// plain single-producer single-consumer queue of `slots` buffers of [`LARGE`] bytes and two
/// atomic counters. The writer copies its source into a free slot (`copy_from_slice`) and
/// publishes it with a release store; the reader copies the slot out into its own buffer and
/// releases it. Both spin, then yield, when they must wait (no sleeping, no signals). Moves
/// `n` blocks; returns the time.
pub(crate) fn handoff_ceiling(n: u64, slots: usize) -> Duration {
    let q = std::sync::Arc::new(handoff::Spsc::new(slots));
    let reader = {
        let q = q.clone();
        std::thread::spawn(move || {
            let mut dst = vec![0u8; LARGE];
            let mut sum = 0u64;
            for _ in 0..n {
                q.pop_into(&mut dst);
                sum = sum.wrapping_add(u64::from(black_box(&dst)[LARGE - 1]));
            }
            sum
        })
    };
    let src = vec![7u8; LARGE];
    let start = Instant::now();
    for _ in 0..n {
        q.push_from(black_box(&src));
    }
    black_box(reader.join().unwrap());
    start.elapsed()
}

/// The ceiling's queue: the only `unsafe` code of the benches.
mod handoff {
    use std::cell::UnsafeCell;
    use std::sync::atomic::{AtomicU64, Ordering};

    use crossbeam_utils::{Backoff, CachePadded};

    use super::LARGE;

    /// `slots` buffers; `head` counts blocks published by the one writer, `tail` blocks
    /// released by the one reader. Slot `i % slots` belongs to the writer while
    /// `i - tail < slots` and `i >= head`, to the reader while `tail <= i < head`.
    pub(crate) struct Spsc {
        bufs: Vec<UnsafeCell<Box<[u8]>>>,
        head: CachePadded<AtomicU64>,
        tail: CachePadded<AtomicU64>,
    }

    // SAFETY: each buffer is accessed by one thread at a time, handed over by the release
    // stores and acquire loads of `head` (writer to reader) and `tail` (reader to writer).
    unsafe impl Sync for Spsc {}

    impl Spsc {
        pub(crate) fn new(slots: usize) -> Self {
            Self {
                bufs: (0..slots)
                    .map(|_| UnsafeCell::new(vec![0u8; LARGE].into_boxed_slice()))
                    .collect(),
                head: CachePadded::new(AtomicU64::new(0)),
                tail: CachePadded::new(AtomicU64::new(0)),
            }
        }

        /// Writer only.
        pub(crate) fn push_from(&self, src: &[u8]) {
            let h = self.head.load(Ordering::Relaxed);
            let backoff = Backoff::new();
            while h - self.tail.load(Ordering::Acquire) == self.bufs.len() as u64 {
                backoff.snooze();
            }
            let slot = self.bufs[(h % self.bufs.len() as u64) as usize].get();
            // SAFETY: slot `h` is free (`h - tail < slots`): the reader released it (its
            // copy happened before its release store, which our acquire load saw) and will
            // not touch it again until our release store of `h + 1` below.
            let buf = unsafe { &mut *slot };
            buf.copy_from_slice(src);
            self.head.store(h + 1, Ordering::Release);
        }

        /// Reader only.
        pub(crate) fn pop_into(&self, dst: &mut [u8]) {
            let t = self.tail.load(Ordering::Relaxed);
            let backoff = Backoff::new();
            while self.head.load(Ordering::Acquire) == t {
                backoff.snooze();
            }
            let slot = self.bufs[(t % self.bufs.len() as u64) as usize].get();
            // SAFETY: slot `t` is published (`t < head`, seen with acquire): the writer's
            // copy into it is complete and it will not write it again until our release
            // store of `t + 1` below.
            let buf = unsafe { &*slot };
            dst.copy_from_slice(buf);
            self.tail.store(t + 1, Ordering::Release);
        }
    }
}

/// 64 KiB through a GPADL: a client and a server channel in this process; the client's
/// GPADL holds `slots` slots of [`LARGE`] bytes. For each block the writer (this thread)
/// takes a free slot, fills it from its source (`copy_from_slice`, as a producer must), and
/// sends a GPA-direct packet naming it (`send_with_external`, a 16-byte in-band part). The
/// server's process-packet callback reads the payload in place through `external_data()`,
/// copies it out into its own buffer (the same consumption as the ring rows) and completes
/// the packet; the completion routine (on the client's dispatcher) frees the slot. Moves
/// `n` blocks; returns the time. Without `copies`, neither side copies the 64 KiB (the
/// reader reads its last 8 bytes): the cost of the channel and GPADL machinery alone.
pub(crate) fn gpadl_slots(n: u64, slots: usize, copies: bool) -> Duration {
    use kmcl::{Channel, ChannelHandle, ExternalRange, GpadlBuffer, GpadlFlags, Phase};
    let (client, server) = Channel::local_pair().unwrap();
    let mut dst = vec![0u8; LARGE];
    let sum = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let s2 = sum.clone();
    server
        .set_process_packet_callbacks(
            move |_ch, p| {
                let data = p.external_data().unwrap();
                if copies {
                    data.copy_to_slice(&mut dst).unwrap();
                } else {
                    data.read(LARGE - 8, &mut dst[..8]).unwrap();
                }
                drop(data);
                s2.fetch_add(u64::from(black_box(&dst)[LARGE - 1]), Relaxed);
                p.complete(&[]).unwrap();
            },
            None::<fn(&ChannelHandle, u32)>,
        )
        .unwrap();
    server.enable().unwrap();
    server.start().unwrap();
    client.enable().unwrap();
    while client.phase() != (Phase::Opened { running: true }) {
        std::thread::yield_now();
    }
    let buf = GpadlBuffer::heap(slots * LARGE).unwrap();
    let gpadl = client
        .create_gpadl_from_buffer(&buf, GpadlFlags::READ_ONLY)
        .unwrap();
    let (free_tx, free_rx) = crossbeam_channel::bounded::<usize>(slots);
    for k in 0..slots {
        free_tx.send(k).unwrap();
    }
    let src = vec![7u8; LARGE];
    let start = Instant::now();
    for _ in 0..n {
        let k = free_rx.recv().unwrap();
        if copies {
            buf.write(k * LARGE, black_box(&src)).unwrap();
        }
        let free = free_tx.clone();
        client
            .send_with_external(
                &(k as u64).to_le_bytes(),
                &[ExternalRange {
                    gpadl,
                    offset: k * LARGE,
                    len: LARGE,
                }],
                move |c| {
                    c.result.unwrap();
                    let _ = free.send(k);
                },
            )
            .unwrap();
    }
    for _ in 0..slots {
        free_rx.recv().unwrap();
    }
    let elapsed = start.elapsed();
    black_box(sum.load(Relaxed));
    if std::env::var_os("KMCL_BENCH_COUNTERS").is_some() {
        eprintln!("gpadl client {:?}", client.counters());
        eprintln!("gpadl server {:?}", server.counters());
    }
    client.delete_gpadl(gpadl).unwrap();
    client.disable().unwrap();
    server.disable().unwrap();
    client.cleanup().unwrap();
    server.cleanup().unwrap();
    elapsed
}

use std::sync::atomic::Ordering::Relaxed;

/// 64 KiB in band through the same channel machinery as [`gpadl_slots`], for comparison:
/// the writer sends each block as an in-band packet with wait-for-completion (one copy into
/// the ring), at most `slots` in flight; the server's process-packet callback gets the
/// payload already copied out of the ring (the ring reader's one copy out), reads its last
/// byte and completes.
pub(crate) fn channel_in_band(n: u64, slots: usize) -> Duration {
    use kmcl::{Channel, ChannelHandle, Phase, SendFlags};
    let (client, server) = Channel::local_pair().unwrap();
    client.set_max_packet_size(LARGE as u32).unwrap();
    // Room for `slots` blocks in flight (each is 64 KiB + 32 bytes of ring).
    let pages = (slots as u32 + 1) * (LARGE as u32 / 4096);
    client.set_ring_page_counts(16, pages).unwrap();
    let sum = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let s2 = sum.clone();
    server
        .set_process_packet_callbacks(
            move |_ch, p| {
                s2.fetch_add(u64::from(black_box(p.payload())[LARGE - 1]), Relaxed);
                p.complete(&[]).unwrap();
            },
            None::<fn(&ChannelHandle, u32)>,
        )
        .unwrap();
    server.enable().unwrap();
    server.start().unwrap();
    client.enable().unwrap();
    while client.phase() != (Phase::Opened { running: true }) {
        std::thread::yield_now();
    }
    let (free_tx, free_rx) = crossbeam_channel::bounded::<()>(slots);
    for _ in 0..slots {
        free_tx.send(()).unwrap();
    }
    let src = vec![7u8; LARGE];
    let start = Instant::now();
    for _ in 0..n {
        free_rx.recv().unwrap();
        let free = free_tx.clone();
        client
            .send(black_box(&src), SendFlags::WAIT_FOR_COMPLETION, move |c| {
                c.result.unwrap();
                let _ = free.send(());
            })
            .unwrap();
    }
    for _ in 0..slots {
        free_rx.recv().unwrap();
    }
    let elapsed = start.elapsed();
    black_box(sum.load(Relaxed));
    if std::env::var_os("KMCL_BENCH_COUNTERS").is_some() {
        eprintln!("in-band client {:?}", client.counters());
        eprintln!("in-band server {:?}", server.counters());
    }
    client.disable().unwrap();
    server.disable().unwrap();
    client.cleanup().unwrap();
    server.cleanup().unwrap();
    elapsed
}
