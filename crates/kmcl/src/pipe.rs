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
//! little-endian `u32`, then a zero `u32`) in the descriptor's type-specific area; a payload
//! of a multiple of 8 bytes has none. With automatic batching (the default), messages of up
//! to a quarter of the batch size are coalesced, like netvsc batches several RNDIS messages
//! into one VMBus packet: the header then holds the message count and `1`, and the payload
//! is the messages one after the other, each as its length (`u64`, little-endian) and its
//! bytes padded to 8. The per-packet cost of the format (16-byte descriptor, 8-byte trailer,
//! a fenced publication) is then paid once per batch instead of once per message. The
//! reader validates the framing of every coalesced packet on its private copy.
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
//! [`PipeWriter::set_batch`]`(n)` instead commits (fenced, signalling) every `n` packets, one
//! VMBus packet per message; [`PipeWriter::set_coalescing`]`(false)` keeps the automatic
//! publication but also sends one VMBus packet per message. The reader likewise
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

/// The header of every pipe packet.
const IN_BAND: PacketHeader = PacketHeader {
    packet_type: TYPE_IN_BAND,
    flags: 0,
    trans_id: 0,
};

/// Marks a coalesced packet in the pipe header's second word (the first holds the
/// message count).
const BATCH_MARK: u32 = 1;

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
    packets: u64,
    /// Small messages are coalesced: automatic batching and [`PipeWriter::set_coalescing`].
    coalesce: bool,
    coalesce_wanted: bool,
    /// Messages coalesced into the next ring packet (automatic batching only).
    coalesced: Vec<u8>,
    coalesced_count: u32,
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
    /// The coalesced packet being returned message by message: next message header at
    /// `batch_pos`, payload end at `batch_end` (in the staging buffer), messages left.
    batch_pos: usize,
    batch_end: usize,
    batch_left: u32,
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
            packets: 0,
            coalesce: true,
            coalesce_wanted: true,
            coalesced: Vec::new(),
            coalesced_count: 0,
        },
        PipeReader {
            ring: IncomingRing::new(view)?,
            to_writer,
            from_writer: to_reader,
            stage: Staging::new(),
            release_bytes: RELEASE_BYTES.min(eighth),
            unreleased_bytes: 0,
            signals: 0,
            batch_pos: 0,
            batch_end: 0,
            batch_left: 0,
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
        self.coalesce = n == 0 && self.coalesce_wanted;
    }

    /// Whether automatic batching coalesces small messages into shared ring packets (the
    /// default, `true`); with `false` every message is its own VMBus packet while the
    /// publication stays automatic (by bytes, unfenced while the reader polls, see the
    /// [module documentation](self)). Committing every `n` packets
    /// ([`PipeWriter::set_batch`]) never coalesces.
    pub fn set_coalescing(&mut self, on: bool) {
        self.coalesce_wanted = on;
        self.coalesce = self.batch == 0 && on;
    }

    /// Sends one message, blocking while the ring is full.
    #[inline]
    pub fn send(&mut self, payload: &[u8]) -> Result<(), Error> {
        if self.coalesce && payload.len() <= (self.auto_bytes / 4) as usize {
            // Coalesce: [length u32, 0u32, payload padded to 8] appended to the next packet.
            self.coalesced
                .extend_from_slice(&(payload.len() as u64).to_le_bytes());
            self.coalesced.extend_from_slice(payload);
            let padded = self.coalesced.len().next_multiple_of(8);
            self.coalesced.resize(padded, 0);
            self.coalesced_count += 1;
            if padded + DESCRIPTOR_LEN + 8 + TRAILER_LEN >= self.auto_bytes as usize {
                self.write_coalesced()?;
            }
            return Ok(());
        }
        // Keep the order: what was coalesced goes first.
        if self.coalesced_count != 0 {
            self.write_coalesced()?;
        }
        // The 8-byte header carries the exact length of a payload the ring pads to 8 bytes;
        // a payload that needs no padding goes without it (8 ring bytes fewer per packet).
        let mut header_bytes = [0u8; 8];
        header_bytes[..4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        let ext: &[u8] = if payload.len().is_multiple_of(8) {
            &[]
        } else {
            &header_bytes
        };
        self.write_packet(ext, payload)
    }

    /// Writes the coalesced messages as one ring packet (header: count, [`BATCH_MARK`]).
    #[inline(never)]
    fn write_coalesced(&mut self) -> Result<(), Error> {
        if self.coalesced_count == 0 {
            return Ok(());
        }
        let mut ext = [0u8; 8];
        ext[..4].copy_from_slice(&self.coalesced_count.to_le_bytes());
        ext[4..].copy_from_slice(&BATCH_MARK.to_le_bytes());
        self.coalesced_count = 0;
        let body = std::mem::take(&mut self.coalesced);
        let r = self.write_packet(&ext, &body);
        self.coalesced = body;
        self.coalesced.clear();
        r
    }

    /// Writes one ring packet, blocking while the ring is full, and publishes as the
    /// batching policy says.
    #[inline]
    fn write_packet(&mut self, ext: &[u8], payload: &[u8]) -> Result<(), Error> {
        if self.ring.try_write(IN_BAND, ext, payload)? {
            return self.written(ext.len() + payload.len());
        }
        self.write_packet_waiting(ext, payload)
    }

    /// Counts a packet written into the ring (`body`: its header and payload bytes) and
    /// publishes as the batching policy says.
    #[inline]
    fn written(&mut self, body: usize) -> Result<(), Error> {
        self.pending += 1;
        self.packets += 1;
        if self.batch != 0 {
            if self.pending >= self.batch {
                self.commit()?;
            }
            return Ok(());
        }
        // The packet's ring bytes (it was written, so this cannot overflow).
        let bytes = (DESCRIPTOR_LEN + body.next_multiple_of(8) + TRAILER_LEN) as u32;
        self.pending_bytes = self.pending_bytes.saturating_add(bytes);
        if self.pending_bytes >= self.auto_bytes {
            if self.ring.consumer_unmasked() {
                // The reader is (going) to sleep: commit and wake it.
                self.commit()?;
            } else {
                // Visible to a polling reader at once; the fenced, signalling commit comes
                // with the next batch that finds the reader unmasked, `flush`, a full ring
                // or the drop.
                self.pending = 0;
                self.pending_bytes = 0;
                self.ring.publish_unsignalled()?;
            }
        }
        Ok(())
    }

    /// [`PipeWriter::write_packet`] when the ring is full: commits, backs off, then sleeps
    /// until the reader has released enough space.
    #[cold]
    #[inline(never)]
    fn write_packet_waiting(&mut self, ext: &[u8], payload: &[u8]) -> Result<(), Error> {
        let needed = packet_len(ext.len(), payload.len()).ok_or(Error::PacketTooLarge)?;
        'retry: loop {
            self.commit()?;
            // Spin, then yield, then sleep (crossbeam's backoff policy).
            let backoff = Backoff::new();
            while !backoff.is_completed() {
                backoff.snooze();
                if self.ring.free_bytes()? >= needed {
                    if self.ring.try_write(IN_BAND, ext, payload)? {
                        return self.written(ext.len() + payload.len());
                    }
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
            if self.ring.try_write(IN_BAND, ext, payload)? {
                return self.written(ext.len() + payload.len());
            }
        }
    }

    /// Publishes every message sent so far (and wakes the reader if it sleeps).
    pub fn flush(&mut self) -> Result<(), Error> {
        self.write_coalesced()?;
        self.commit()
    }

    fn commit(&mut self) -> Result<(), Error> {
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

    /// VMBus packets written into the ring so far (a coalesced packet counts once).
    pub fn packets_sent(&self) -> u64 {
        self.packets
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
    #[inline]
    pub fn recv(&mut self) -> Result<&[u8], Error> {
        // One call site for the copy-and-validate step, so it inlines and its small result
        // stays in registers; the waiting is out of line.
        if self.batch_left > 0 {
            return self.next_in_batch();
        }
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
        if info.payload.start - info.start < DESCRIPTOR_LEN + 8 {
            return Ok(&self.stage.bytes()[info.payload]);
        }
        let h = info.start + DESCRIPTOR_LEN;
        let mut w = [0u8; 8];
        w.copy_from_slice(&self.stage.bytes()[h..h + 8]);
        let len = u32::from_le_bytes([w[0], w[1], w[2], w[3]]) as usize;
        let mark = u32::from_le_bytes([w[4], w[5], w[6], w[7]]);
        if mark == BATCH_MARK {
            if len == 0 {
                return Err(Error::Protocol("empty coalesced packet"));
            }
            self.batch_pos = info.payload.start;
            self.batch_end = info.payload.end;
            self.batch_left = len as u32;
            return self.next_in_batch();
        }
        if mark != 0 {
            return Err(Error::Protocol("unknown pipe header"));
        }
        let p = &self.stage.bytes()[info.payload];
        if len > p.len() || p.len() - len >= 8 {
            return Err(Error::Protocol(
                "KMCL header length does not match the packet",
            ));
        }
        Ok(&p[..len])
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

    /// The next message of the coalesced packet in the staging buffer (a private copy;
    /// validated here: lengths inside the packet, reserved bytes zero, count exact).
    fn next_in_batch(&mut self) -> Result<&[u8], Error> {
        let (pos, end) = (self.batch_pos, self.batch_end);
        let bad = |me: &mut Self, what| {
            me.batch_left = 0;
            Err(Error::Protocol(what))
        };
        if end - pos < 8 {
            return bad(self, "coalesced packet shorter than its message count");
        }
        let mut w = [0u8; 8];
        w.copy_from_slice(&self.stage.bytes()[pos..pos + 8]);
        let word = u64::from_le_bytes(w);
        let len = (word & 0xffff_ffff) as usize;
        let start = pos + 8;
        if word >> 32 != 0 || len > end - start {
            return bad(self, "malformed message in a coalesced packet");
        }
        let next = start + len.next_multiple_of(8);
        self.batch_left -= 1;
        if self.batch_left == 0 && next != end {
            return bad(self, "coalesced packet longer than its message count");
        }
        self.batch_pos = next;
        Ok(&self.stage.bytes()[start..start + len])
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
