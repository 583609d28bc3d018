//! A blocking, single-producer single-consumer packet pipe over one VMBus ring, for two
//! threads of one process.
//!
//! This is the ring protocol with nothing else around it (no channel lifecycle, no
//! transactions): the writer publishes batches and sleeps on `pending_send_size` when the
//! ring is full, the reader drains and sleeps after `arm` when it is empty. Both back off
//! (spin, then yield) before sleeping, because a futex wake costs far more than a packet. It is what
//! the two-thread benchmarks measure, and a building block for code that wants the ring's
//! wire format without the channel machinery.
//!
//! Every packet is in-band (type 6). The ring pads payloads to 8 bytes, so a payload whose
//! length is not a multiple of 8 is preceded by an 8-byte header (the length as a
//! little-endian `u32`, then 4 zero bytes) in the descriptor's type-specific area; a payload
//! of a multiple of 8 bytes has none.
//!
//! # Batching
//!
//! Publishing with a possible signal costs a full fence (the store/fence/load handshake
//! with a reader going to sleep) and moves the control page's cache line (which holds both
//! indices) to the writer's core, so by default the writer behaves like a buffered writer:
//! once the packets written since the last publication fill [`AUTO_PUBLISH_BYTES`] of ring
//! space (or an eighth of a smaller ring) it publishes them with a plain release store
//! ([`OutgoingRing::publish_unsignalled`](crate::ring::OutgoingRing::publish_unsignalled):
//! a reader that is polling sees them at once, a sleeping one is not woken), unless the
//! reader's `interrupt_mask` (read without a fence) says it is going to sleep; it commits
//! with the fence and the signal check in that case, whenever the ring is full, on
//! [`PipeWriter::flush`], and when the writer is dropped. A writer that stops sending
//! without dropping must call `flush` for a sleeping reader to get the last packets;
//! [`PipeWriter::set_batch`]`(n)` instead commits (fenced, signalling) every `n` packets. The reader likewise
//! releases ring space in batches of about the same size (and always before it waits).
//!
//! ```
//! let (mut tx, mut rx) = kmcl::pipe::pipe(4).unwrap();
//! let t = std::thread::spawn(move || {
//!     for i in 0..100u32 {
//!         tx.send(&i.to_le_bytes()).unwrap();
//!     }
//! });
//! for i in 0..100u32 {
//!     assert_eq!(rx.recv().unwrap(), i.to_le_bytes());
//! }
//! t.join().unwrap();
//! assert!(rx.recv().is_err(), "writer gone");
//! ```

#![forbid(unsafe_code)]

use std::sync::Arc;

use crossbeam_utils::Backoff;

use crate::Error;
use crate::event::{Event, GONE, SIGNAL};
use crate::ring::{
    DESCRIPTOR_LEN, IncomingRing, OutgoingRing, PacketHeader, Staging, TRAILER_LEN, TYPE_IN_BAND,
    packet_len,
};
use crate::shmem::{PAGE_SIZE, RingView};

/// With automatic batching (the default), the writer publishes once the unpublished packets
/// take this many ring bytes (or an eighth of the ring, if that is less).
pub const AUTO_PUBLISH_BYTES: u32 = 4096;

/// The reader releases ring space once it has read this many bytes (or an eighth of the
/// ring, if that is less), and before it waits.
const RELEASE_BYTES: u32 = 4096;

/// The sending end.
#[derive(Debug)]
pub struct PipeWriter {
    ring: OutgoingRing<RingView>,
    to_reader: Arc<Event>,
    from_reader: Arc<Event>,
    /// Publish every `batch` packets; 0 = by bytes (`auto_bytes`).
    batch: u32,
    auto_bytes: u32,
    pending: u32,
    pending_bytes: u32,
    signals: u64,
}

/// The receiving end.
#[derive(Debug)]
pub struct PipeReader {
    ring: IncomingRing<RingView>,
    to_writer: Arc<Event>,
    from_writer: Arc<Event>,
    stage: Staging,
    release_bytes: u32,
    unreleased_bytes: u32,
    signals: u64,
}

/// A pipe over a heap ring with `data_pages` pages of data.
pub fn pipe(data_pages: u32) -> Result<(PipeWriter, PipeReader), Error> {
    let view = RingView::heap(data_pages)?;
    let to_reader = Arc::new(Event::new());
    let to_writer = Arc::new(Event::new());
    let eighth = (data_pages as usize * PAGE_SIZE / 8) as u32;
    Ok((
        PipeWriter {
            ring: OutgoingRing::new(view.clone())?,
            to_reader: to_reader.clone(),
            from_reader: to_writer.clone(),
            batch: 0,
            auto_bytes: AUTO_PUBLISH_BYTES.min(eighth),
            pending: 0,
            pending_bytes: 0,
            signals: 0,
        },
        PipeReader {
            ring: IncomingRing::new(view)?,
            to_writer,
            from_writer: to_reader,
            stage: Staging::new(),
            release_bytes: RELEASE_BYTES.min(eighth),
            unreleased_bytes: 0,
            signals: 0,
        },
    ))
}

impl PipeWriter {
    /// Publish every `n` packets (1 = after each) instead of by bytes; 0 restores the
    /// default, automatic batching (see the [module documentation](self)). Either way
    /// [`PipeWriter::flush`] publishes the rest. Larger batches mean fewer index stores,
    /// fences and signals.
    pub fn set_batch(&mut self, n: u32) {
        self.batch = n;
    }

    /// Sends one packet, blocking while the ring is full.
    pub fn send(&mut self, payload: &[u8]) -> Result<(), Error> {
        let header = PacketHeader {
            packet_type: TYPE_IN_BAND,
            flags: 0,
            trans_id: 0,
        };
        // The 8-byte header carries the exact length of a payload the ring pads to 8 bytes;
        // a payload that needs no padding goes without it (8 ring bytes fewer per packet).
        let mut header_bytes = [0u8; 8];
        header_bytes[..4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        let ext: &[u8] = if payload.len().is_multiple_of(8) {
            &[]
        } else {
            &header_bytes
        };
        let needed = packet_len(ext.len(), payload.len()).ok_or(Error::PacketTooLarge)?;
        'retry: loop {
            if self.ring.try_write(header, ext, payload)? {
                self.pending += 1;
                self.pending_bytes = self.pending_bytes.saturating_add(needed);
                if self.batch == 0 {
                    if self.pending_bytes >= self.auto_bytes {
                        if self.ring.consumer_unmasked() {
                            // The reader is (going) to sleep: commit and wake it.
                            self.flush()?;
                        } else {
                            // Visible to a polling reader at once; the fenced, signalling
                            // commit comes with the next batch that finds the reader
                            // unmasked, `flush`, a full ring or the drop.
                            self.pending = 0;
                            self.pending_bytes = 0;
                            self.ring.publish_unsignalled()?;
                        }
                    }
                } else if self.pending >= self.batch {
                    self.flush()?;
                }
                return Ok(());
            }
            self.flush()?;
            // Spin, then yield, then sleep (crossbeam's backoff policy).
            let backoff = Backoff::new();
            while !backoff.is_completed() {
                backoff.snooze();
                if self.ring.free_bytes()? >= needed {
                    continue 'retry;
                }
            }
            // Ask for a quarter of the ring (at least this packet) so the reader does not
            // wake us for every freed packet.
            let want = needed
                .max(self.ring.size() / 4)
                .min(self.ring.max_packet_len());
            if !self.ring.request_space(want)? && self.from_reader.wait() & GONE != 0 {
                return Err(Error::DeviceRemoved);
            }
        }
    }

    /// Publishes every packet written so far.
    pub fn flush(&mut self) -> Result<(), Error> {
        self.pending = 0;
        self.pending_bytes = 0;
        if self.ring.commit()? {
            self.signals += 1;
            self.to_reader.raise(SIGNAL);
        }
        Ok(())
    }

    /// Signals sent to the reader so far.
    pub fn signals_sent(&self) -> u64 {
        self.signals
    }
}

impl Drop for PipeWriter {
    fn drop(&mut self) {
        let _ = self.flush();
        self.to_reader.raise(GONE);
    }
}

impl PipeReader {
    /// Receives the next packet, blocking while the ring is empty. `DeviceRemoved` once the
    /// writer is gone and everything it sent was received.
    pub fn recv(&mut self) -> Result<&[u8], Error> {
        // One call site for the copy-and-validate step, so it inlines and its small result
        // stays in registers; the waiting is out of line.
        let info = loop {
            if let Some(info) = self.ring.read_staged(&mut self.stage)? {
                break info;
            }
            self.wait_for_packets()?;
        };
        self.unreleased_bytes = self
            .unreleased_bytes
            .saturating_add((info.payload.end - info.start + TRAILER_LEN) as u32);
        if self.unreleased_bytes >= self.release_bytes {
            self.release()?;
        }
        let bytes = self.stage.bytes();
        let p = &bytes[info.payload.clone()];
        if info.payload.start - info.start >= DESCRIPTOR_LEN + 8 {
            let h = info.start + DESCRIPTOR_LEN;
            let len =
                u32::from_le_bytes([bytes[h], bytes[h + 1], bytes[h + 2], bytes[h + 3]]) as usize;
            if len > p.len() || p.len() - len >= 8 {
                return Err(Error::Protocol(
                    "KMCL header length does not match the packet",
                ));
            }
            return Ok(&p[..len]);
        }
        Ok(p)
    }

    /// The ring was empty: releases the space read so far, backs off (spin, then yield),
    /// then arms and sleeps until the writer signals. Returns once the ring may hold a
    /// packet; `DeviceRemoved` once the writer is gone and the ring is empty.
    #[cold]
    fn wait_for_packets(&mut self) -> Result<(), Error> {
        self.release()?;
        let backoff = Backoff::new();
        while !backoff.is_completed() {
            backoff.snooze();
            if !self.ring.is_empty()? {
                return Ok(());
            }
        }
        if self.ring.arm()? {
            let bits = self.from_writer.wait();
            self.ring.set_interrupt_mask(true);
            if bits & GONE != 0 && self.ring.is_empty()? {
                return Err(Error::DeviceRemoved);
            }
        }
        Ok(())
    }

    fn release(&mut self) -> Result<(), Error> {
        self.unreleased_bytes = 0;
        if self.ring.commit_read()? {
            self.signals += 1;
            self.to_writer.raise(SIGNAL);
        }
        Ok(())
    }

    /// Signals sent to the writer so far.
    pub fn signals_sent(&self) -> u64 {
        self.signals
    }
}

impl Drop for PipeReader {
    fn drop(&mut self) {
        self.to_writer.raise(GONE);
    }
}
