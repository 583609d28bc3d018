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
    let (mut tx, mut rx) = kmcl::pipe::pipe(pages).unwrap();
    tx.set_batch(batch);
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
