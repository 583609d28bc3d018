//! The VMBus ring format: one direction of a channel.
//!
//! # Layout
//!
//! A ring is a 4 KiB control page followed by a data area (a multiple of 8 bytes; the
//! transports use whole pages). The control page holds, as little-endian `u32`s:
//!
//! | byte | word | written by |
//! |---|---|---|
//! | 0 | `write_index` | producer: offset of the next packet to be written |
//! | 4 | `read_index` | consumer: offset of the next packet to be read |
//! | 8 | `interrupt_mask` | consumer: non-zero = "do not signal me" |
//! | 12 | `pending_send_size` | producer: non-zero = "signal me when this many bytes are free" |
//! | 64 | `feature_bits` | producer: bit 0 = supports `pending_send_size` |
//!
//! A packet is a 16-byte descriptor `{u16 type, u16 offset8, u16 len8, u16 flags, u64
//! trans_id}`, an optional type-specific header, the payload padded to 8 bytes, and an
//! 8-byte trailer holding the packet's start offset in its upper 32 bits. `offset8` and
//! `len8` count 8-byte units; `len8` excludes the trailer. Indices are multiples of 8 and the
//! ring never becomes completely full (free space is counted minus 8 bytes), so
//! `write_index == read_index` always means empty.
//!
//! # Protocol
//!
//! * The producer writes any number of packets at a private tail ([`OutgoingRing::try_write`])
//!   and publishes them with one index store ([`OutgoingRing::commit`]), which reports whether
//!   to signal the consumer: only if the ring was empty before the batch and the consumer's
//!   `interrupt_mask` is clear. Small packets are assembled in a private write-combining
//!   buffer and copied into the ring together, at the latest when they are published.
//! * The consumer reads packets at a private head ([`IncomingRing::read_packet`]) and releases
//!   them with one index store ([`IncomingRing::commit_read`]), which reports whether to
//!   signal the producer: only when free space crosses the producer's `pending_send_size`.
//! * A consumer going to sleep calls [`IncomingRing::arm`] (unmask, full fence, re-check) and
//!   sleeps only if it reports the ring still empty; a producer that found the ring full
//!   calls [`OutgoingRing::request_space`] (set `pending_send_size`, full fence, re-check) and
//!   sleeps only if it reports no space. Both halves are Dekker-style store/fence/load pairs,
//!   so no wakeup is lost (modelled with loom in `tests/loom_*.rs`).
//!
//! # The peer is untrusted
//!
//! Every index the peer writes is read once per use, checked (`< size`, multiple of 8, and
//! not moving past data that exists), and every packet is copied out of shared memory before
//! its descriptor is validated, so the peer cannot change it afterwards. Any violation is a
//! [`Corruption`]: the ring half records it and returns [`Error::RingCorrupt`] from then on
//! (sticky), and the channel stops. Nothing the peer writes can cause an out-of-bounds
//! access, a panic or an endless loop.

#![forbid(unsafe_code)]

use std::fmt;
use std::ops::Range;

use crate::Error;
pub use crate::shmem::{ControlWord, PAGE_SIZE, RingMemory};
use crate::sync::atomic::{Ordering, fence};

/// Packet type: data in band.
pub const TYPE_IN_BAND: u16 = 6;
/// Packet type: data described by transfer-page ranges.
pub const TYPE_TRANSFER_PAGES: u16 = 7;
/// Packet type: data described by guest physical address ranges.
pub const TYPE_GPA_DIRECT: u16 = 9;
/// Packet type: completion of a transaction.
pub const TYPE_COMPLETION: u16 = 0xB;
/// Descriptor flag: the sender asks for a completion packet.
pub const FLAG_COMPLETION_REQUESTED: u16 = 1;
/// `feature_bits` bit 0: the producer honours `pending_send_size`.
pub const FEATURE_PENDING_SEND_SIZE: u32 = 1;
/// Size of a packet descriptor.
pub const DESCRIPTOR_LEN: usize = 16;
/// Size of the packet trailer.
pub const TRAILER_LEN: usize = 8;
/// Packets up to this many ring bytes are assembled in the producer's write-combining
/// buffer, and copied out by [`IncomingRing::read_packet`] with a single copy.
const SMALL_PACKET: usize = 128;
/// Size of the producer's write-combining buffer: small packets are assembled there and
/// copied into the ring together (when it is full, before a larger packet, and when they
/// are published).
pub const WRITE_COMBINE: usize = 4096;

/// Total ring bytes a packet takes: descriptor, extra header, padded payload and trailer.
/// `None` if it cannot be expressed (`len8` is a `u16`).
pub fn packet_len(ext_len: usize, payload_len: usize) -> Option<u32> {
    let body = DESCRIPTOR_LEN
        .checked_add(ext_len)?
        .checked_add(payload_len.checked_next_multiple_of(8)?)?;
    if body / 8 > u16::MAX as usize {
        return None;
    }
    u32::try_from(body + TRAILER_LEN).ok()
}

/// The descriptor's first eight bytes as a little-endian word: type, data offset and
/// length in 8-byte units, flags. `total` is the packet's ring bytes (from [`packet_len`],
/// so both units fit a `u16`).
#[inline(always)]
fn descriptor_word0(header: PacketHeader, ext_len: usize, total: usize) -> u64 {
    let offset8 = ((DESCRIPTOR_LEN + ext_len) / 8) as u16;
    let len8 = ((total - TRAILER_LEN) / 8) as u16;
    u64::from(header.packet_type)
        | u64::from(offset8) << 16
        | u64::from(len8) << 32
        | u64::from(header.flags) << 48
}

/// What was wrong with a ring the peer wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Corruption {
    /// The data area is not a usable size.
    RingSize(u32),
    /// `read_index` is out of range, unaligned, or moved past written data.
    ReadIndex(u32),
    /// `write_index` is out of range or unaligned.
    WriteIndex(u32),
    /// Fewer bytes are available than a packet's minimum size.
    Truncated,
    /// `offset8 < 2` or `offset8 > len8`.
    DescriptorOffset,
    /// The packet's length exceeds the bytes available.
    PacketLength,
    /// A flag other than "completion requested" is set.
    Flags(u16),
    /// An unknown packet type.
    PacketType(u16),
    /// The trailer does not hold the packet's start offset.
    Trailer,
    /// A transfer-page header that does not fit its descriptor.
    TransferPageHeader,
    /// A GPA-direct header that does not fit its descriptor, or has no ranges.
    GpaDirectHeader,
}

impl fmt::Display for Corruption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::RingSize(s) => write!(f, "unusable ring size {s}"),
            Self::ReadIndex(i) => write!(f, "invalid read index {i:#x}"),
            Self::WriteIndex(i) => write!(f, "invalid write index {i:#x}"),
            Self::Truncated => f.write_str("truncated packet"),
            Self::DescriptorOffset => f.write_str("invalid descriptor offset"),
            Self::PacketLength => f.write_str("packet longer than the available bytes"),
            Self::Flags(x) => write!(f, "unknown packet flags {x:#x}"),
            Self::PacketType(t) => write!(f, "unknown packet type {t:#x}"),
            Self::Trailer => f.write_str("trailer does not match the packet start"),
            Self::TransferPageHeader => f.write_str("malformed transfer-page header"),
            Self::GpaDirectHeader => f.write_str("malformed GPA-direct header"),
        }
    }
}

/// The fixed part of a packet the producer chooses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketHeader {
    /// Packet type (`TYPE_*`).
    pub packet_type: u16,
    /// Flags (`FLAG_COMPLETION_REQUESTED` or 0).
    pub flags: u16,
    /// Transaction id (echoed by the completion).
    pub trans_id: u64,
}

/// One range of a transfer-page packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransferRange {
    /// Bytes in the range.
    pub byte_count: u32,
    /// Offset in the transfer page set.
    pub byte_offset: u32,
}

/// One range of a GPA-direct packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpaRange {
    /// Bytes in the range.
    pub byte_count: u32,
    /// Offset into the first page.
    pub byte_offset: u32,
    /// Page frame numbers covering the range.
    pub pfns: Vec<u64>,
}

/// Data described outside the ring, as on the wire (parsed and checked for form only).
/// GPA-direct ranges are resolved against GPADLs by
/// [`IncomingPacket::external_data`](crate::IncomingPacket::external_data); transfer-page
/// sets are not implemented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExternalData {
    /// Type 7.
    TransferPages {
        /// Transfer page set id.
        pageset_id: u16,
        /// Whether the sender owns the set.
        sender_owns_set: bool,
        /// The ranges.
        ranges: Vec<TransferRange>,
    },
    /// Type 9.
    GpaDirect {
        /// The ranges.
        ranges: Vec<GpaRange>,
    },
}

/// A validated packet, copied into the caller's buffer by [`IncomingRing::read_packet`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacketInfo {
    /// Packet type.
    pub packet_type: u16,
    /// Whether the sender asked for a completion.
    pub completion_requested: bool,
    /// The transaction id, surfaced only for completions and packets requesting one.
    pub trans_id: Option<u64>,
    /// Bytes of the buffer between the descriptor and the payload (type-specific header).
    pub ext: Range<usize>,
    /// Bytes of the buffer holding the (8-byte padded) payload.
    pub payload: Range<usize>,
    /// External data description for types 7 and 9.
    pub external: Option<ExternalData>,
}

/// How many published bytes [`IncomingRing::read_staged`] copies out of the ring at once.
pub const STAGE_AHEAD: usize = 4096;

/// The reader's private copy of published ring bytes, for [`IncomingRing::read_staged`].
#[derive(Debug, Default)]
pub struct Staging {
    buf: Vec<u8>,
    /// Offset of the next unparsed byte (the ring's private head).
    start: usize,
    /// End of the staged bytes.
    end: usize,
}

impl Staging {
    /// An empty staging buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// The staged bytes; a [`StagedPacket`]'s ranges index into this.
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }
}

/// A validated packet inside a [`Staging`] buffer (valid until the next read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagedPacket {
    /// Packet type.
    pub packet_type: u16,
    /// Descriptor flags.
    pub flags: u16,
    /// Where the packet (its descriptor) starts in [`Staging::bytes`]; the type-specific
    /// header is `start + 16..payload.start`.
    pub start: usize,
    /// The (8-byte padded) payload in [`Staging::bytes`].
    pub payload: Range<usize>,
}

fn valid_index(v: u32, size: u32) -> bool {
    v < size && v.is_multiple_of(8)
}

fn check_size(size: u32) -> Result<(), Error> {
    if size < 64 || !size.is_multiple_of(8) || size > u32::MAX / 2 {
        return Err(Error::RingCorrupt(Corruption::RingSize(size)));
    }
    Ok(())
}

/// Distance from `from` forward to `to` in a ring of `size` bytes.
fn dist(from: u32, to: u32, size: u32) -> u32 {
    if to >= from {
        to - from
    } else {
        size - from + to
    }
}

fn write_wrapped<M: RingMemory>(mem: &M, size: u32, off: u32, bytes: &[u8]) -> u32 {
    let first = ((size - off) as usize).min(bytes.len());
    mem.write(off, &bytes[..first]);
    if first < bytes.len() {
        mem.write(0, &bytes[first..]);
    }
    wrap_add(off, bytes.len(), size)
}

fn read_wrapped<M: RingMemory>(mem: &M, size: u32, off: u32, dst: &mut [u8]) -> u32 {
    let first = ((size - off) as usize).min(dst.len());
    let (a, b) = dst.split_at_mut(first);
    mem.read(off, a);
    if !b.is_empty() {
        mem.read(0, b);
    }
    wrap_add(off, dst.len(), size)
}

/// `(off + len) mod size` for `off < size` and `len <= size`, without a division.
fn wrap_add(off: u32, len: usize, size: u32) -> u32 {
    let end = off as usize + len;
    let size = size as usize;
    (if end >= size { end - size } else { end }) as u32
}

/// The producer's write-combining buffer (its `Debug` shows no bytes).
struct WriteCombine(Box<[u8; WRITE_COMBINE]>);

impl fmt::Debug for WriteCombine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WriteCombine({WRITE_COMBINE} bytes)")
    }
}

/// The producer half of a ring.
#[derive(Debug)]
pub struct OutgoingRing<M> {
    mem: M,
    size: u32,
    /// Last published `write_index`.
    committed: u32,
    /// Private write position (packets written, not yet published).
    tail: u32,
    /// Last `read_index` observed and validated.
    read_cache: u32,
    /// Packets were published by [`OutgoingRing::publish_unsignalled`] since the last commit.
    unsignalled: bool,
    error: Option<Corruption>,
    /// Write-combining buffer: small packets written since the last flush, assembled in
    /// private memory; they belong at ring offset `wc_start`, and `tail` is
    /// `wc_start + wc_len` (mod size). Their space was checked free when they were written.
    wc: WriteCombine,
    wc_len: usize,
    wc_start: u32,
}

impl<M: RingMemory> OutgoingRing<M> {
    /// Takes the producer side of `mem`: reads the current indices, sets the feature bit and
    /// clears `pending_send_size`.
    pub fn new(mem: M) -> Result<Self, Error> {
        let size = mem.data_len();
        check_size(size)?;
        let w = mem.load(ControlWord::WriteIndex, Ordering::SeqCst);
        if !valid_index(w, size) {
            return Err(Error::RingCorrupt(Corruption::WriteIndex(w)));
        }
        let r = mem.load(ControlWord::ReadIndex, Ordering::SeqCst);
        if !valid_index(r, size) {
            return Err(Error::RingCorrupt(Corruption::ReadIndex(r)));
        }
        mem.store(ControlWord::PendingSendSize, 0, Ordering::SeqCst);
        mem.store(
            ControlWord::FeatureBits,
            FEATURE_PENDING_SEND_SIZE,
            Ordering::SeqCst,
        );
        Ok(Self {
            mem,
            size,
            committed: w,
            tail: w,
            read_cache: r,
            unsignalled: false,
            error: None,
            wc: WriteCombine(Box::new([0; WRITE_COMBINE])),
            wc_len: 0,
            wc_start: w,
        })
    }

    /// Size of the data area.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// Copies the write-combining buffer into the ring (at most two copies, where it wraps).
    fn flush_wc(&mut self) {
        if self.wc_len != 0 {
            write_wrapped(
                &self.mem,
                self.size,
                self.wc_start,
                &self.wc.0[..self.wc_len],
            );
            self.wc_len = 0;
        }
        self.wc_start = self.tail;
    }

    /// Largest packet (in ring bytes, see [`packet_len`]) that can ever be written.
    pub fn max_packet_len(&self) -> u32 {
        self.size - 8
    }

    fn check(&self) -> Result<(), Error> {
        match self.error {
            Some(c) => Err(Error::RingCorrupt(c)),
            None => Ok(()),
        }
    }

    fn corrupt(&mut self, c: Corruption) -> Error {
        self.error = Some(c);
        Error::RingCorrupt(c)
    }

    /// Free bytes as of the last observed read index, minus the 8 that keep the ring from
    /// ever being completely full.
    fn free_cached(&self) -> u32 {
        self.size - 8 - dist(self.read_cache, self.tail, self.size)
    }

    /// Reads `read_index` once and validates it: aligned, in range, and not past published data.
    fn refresh_read(&mut self) -> Result<(), Error> {
        let r = self.mem.load(ControlWord::ReadIndex, Ordering::Acquire);
        if !valid_index(r, self.size)
            || dist(self.read_cache, r, self.size)
                > dist(self.read_cache, self.committed, self.size)
        {
            return Err(self.corrupt(Corruption::ReadIndex(r)));
        }
        self.read_cache = r;
        Ok(())
    }

    /// Free bytes right now (reads `read_index`).
    pub fn free_bytes(&mut self) -> Result<u32, Error> {
        self.check()?;
        self.refresh_read()?;
        Ok(self.free_cached())
    }

    /// Writes one packet at the private tail without publishing it. Returns `Ok(false)` if it
    /// does not fit now (the ring is full), `Err(PacketTooLarge)` if it can never fit.
    /// `ext` (the type-specific header) must be a multiple of 8 bytes.
    ///
    /// Small packets (up to 128 ring bytes) are assembled in a private write-combining
    /// buffer of [`WRITE_COMBINE`] bytes and copied into the ring together, when the buffer
    /// is full, before a larger packet, and at the latest by [`OutgoingRing::commit`] or
    /// [`OutgoingRing::publish_unsignalled`]: a batch of small packets costs one copy into
    /// shared memory instead of one per packet.
    #[inline(always)]
    pub fn try_write(
        &mut self,
        header: PacketHeader,
        ext: &[u8],
        payload: &[u8],
    ) -> Result<bool, Error> {
        // The common case inline: a small packet that fits the free space seen last and the
        // write-combining buffer. Everything else (errors, refreshing `read_index`, large
        // packets) takes the general path.
        if self.error.is_none()
            && ext.len() <= SMALL_PACKET
            && payload.len() <= SMALL_PACKET
            && ext.len().is_multiple_of(8)
        {
            let total =
                DESCRIPTOR_LEN + ext.len() + payload.len().next_multiple_of(8) + TRAILER_LEN;
            if total <= SMALL_PACKET
                && total as u32 <= self.free_cached()
                && self.wc_len + total <= WRITE_COMBINE
            {
                self.combine(header, ext, payload, total);
                return Ok(true);
            }
        }
        self.try_write_general(header, ext, payload)
    }

    /// Appends a small packet (`total` ring bytes, already known to fit the ring and the
    /// write-combining buffer) to the write-combining buffer.
    #[inline(always)]
    fn combine(&mut self, header: PacketHeader, ext: &[u8], payload: &[u8], total: usize) {
        let start = self.tail;
        // The descriptor as two little-endian words (whole-word stores, no byte shuffling).
        let word0 = descriptor_word0(header, ext.len(), total);
        let at = self.wc_len;
        let pkt = &mut self.wc.0[at..at + total];
        let p = DESCRIPTOR_LEN + ext.len();
        // Zero the padding first (the last word before the trailer; the payload, header and
        // descriptor stores below overwrite whatever part of it they cover).
        pkt[total - 16..total - 8].copy_from_slice(&[0; 8]);
        pkt[..8].copy_from_slice(&word0.to_le_bytes());
        pkt[8..16].copy_from_slice(&header.trans_id.to_le_bytes());
        if !ext.is_empty() {
            pkt[DESCRIPTOR_LEN..p].copy_from_slice(ext);
        }
        pkt[p..p + payload.len()].copy_from_slice(payload);
        pkt[total - TRAILER_LEN..].copy_from_slice(&(u64::from(start) << 32).to_le_bytes());
        self.wc_len = at + total;
        self.tail = wrap_add(start, total, self.size);
    }

    /// [`OutgoingRing::try_write`] for every packet, with every check.
    #[inline(never)]
    fn try_write_general(
        &mut self,
        header: PacketHeader,
        ext: &[u8],
        payload: &[u8],
    ) -> Result<bool, Error> {
        self.check()?;
        if !ext.len().is_multiple_of(8) {
            return Err(Error::InvalidArgument(
                "extra header must be a multiple of 8 bytes",
            ));
        }
        let total = match packet_len(ext.len(), payload.len()) {
            Some(t) if t <= self.max_packet_len() => t,
            _ => return Err(Error::PacketTooLarge),
        };
        if total > self.free_cached() {
            self.refresh_read()?;
            if total > self.free_cached() {
                return Ok(false);
            }
        }
        let total = total as usize;
        if total <= SMALL_PACKET {
            // Small packets: assembled in the write-combining buffer, copied into the ring
            // with the packets around them.
            if self.wc_len + total > WRITE_COMBINE {
                self.flush_wc();
            }
            self.combine(header, ext, payload, total);
            return Ok(true);
        }
        let start = self.tail;
        let word0 = descriptor_word0(header, ext.len(), total);
        let trailer = (u64::from(start) << 32).to_le_bytes();
        // A larger packet goes straight into the ring, after what is combined so far.
        self.flush_wc();
        let mut desc = [0u8; DESCRIPTOR_LEN];
        desc[..8].copy_from_slice(&word0.to_le_bytes());
        desc[8..].copy_from_slice(&header.trans_id.to_le_bytes());
        let mut off = write_wrapped(&self.mem, self.size, start, &desc);
        off = write_wrapped(&self.mem, self.size, off, ext);
        off = write_wrapped(&self.mem, self.size, off, payload);
        let pad = payload.len().next_multiple_of(8) - payload.len();
        let mut tail = [0u8; 16];
        tail[pad..pad + 8].copy_from_slice(&trailer);
        self.tail = write_wrapped(&self.mem, self.size, off, &tail[..pad + 8]);
        self.wc_start = self.tail;
        Ok(true)
    }

    /// Whether packets were written but not yet published.
    pub fn has_uncommitted(&self) -> bool {
        self.tail != self.committed
    }

    /// Abandons packets written since the last commit.
    pub fn revert(&mut self) {
        self.tail = self.committed;
        self.wc_len = 0;
        self.wc_start = self.tail;
    }

    /// Publishes every packet written since the last commit with one `write_index` store.
    /// Returns whether the consumer must be signalled: the ring was empty before this batch
    /// and the consumer has not masked interrupts.
    ///
    /// After [`OutgoingRing::publish_unsignalled`], the consumer may have gone to sleep on
    /// packets it was never signalled for, so the next commit (even with no new packets)
    /// reports a signal whenever the consumer has unmasked and not read everything.
    pub fn commit(&mut self) -> Result<bool, Error> {
        self.check()?;
        if self.tail == self.committed && !self.unsignalled {
            return Ok(false);
        }
        let old = self.committed;
        let unsignalled = std::mem::take(&mut self.unsignalled);
        self.flush_wc();
        // Release: the packet bytes are visible before the index that publishes them. The
        // fence orders this store before the mask load (Dekker with `IncomingRing::arm`).
        self.mem
            .store(ControlWord::WriteIndex, self.tail, Ordering::Release);
        self.committed = self.tail;
        fence(Ordering::SeqCst);
        if self.mem.load(ControlWord::InterruptMask, Ordering::Relaxed) != 0 {
            return Ok(false);
        }
        let r = self.mem.load(ControlWord::ReadIndex, Ordering::Acquire);
        if !valid_index(r, self.size)
            || dist(self.read_cache, r, self.size)
                > dist(self.read_cache, self.committed, self.size)
        {
            return Err(self.corrupt(Corruption::ReadIndex(r)));
        }
        self.read_cache = r;
        Ok(if unsignalled {
            r != self.committed
        } else {
            r == old
        })
    }

    /// Whether the consumer has cleared `interrupt_mask` (it is asleep or about to be), read
    /// without a fence: a hint for choosing between [`OutgoingRing::commit`] and
    /// [`OutgoingRing::publish_unsignalled`], never a replacement for `commit`'s check.
    pub fn consumer_unmasked(&self) -> bool {
        self.mem.load(ControlWord::InterruptMask, Ordering::Relaxed) == 0
    }

    /// Publishes every packet written since the last commit with one `write_index` store,
    /// without the fence and the signal check of [`OutgoingRing::commit`]: a consumer that
    /// is polling sees the packets, one that is asleep is not woken. Cheaper (no full fence
    /// while the producer's stores are still draining), but a [`OutgoingRing::commit`] must
    /// follow before the producer stops or waits for space.
    pub fn publish_unsignalled(&mut self) -> Result<(), Error> {
        self.check()?;
        if self.tail != self.committed {
            self.flush_wc();
            self.mem
                .store(ControlWord::WriteIndex, self.tail, Ordering::Release);
            self.committed = self.tail;
            self.unsignalled = true;
        }
        Ok(())
    }

    /// Asks the consumer to signal once `needed` bytes are free, then re-checks. Returns
    /// `Ok(true)` (and clears the request) if the space is already there; otherwise the
    /// caller may sleep until signalled. Commit before calling: the consumer can only free
    /// space it has seen.
    pub fn request_space(&mut self, needed: u32) -> Result<bool, Error> {
        self.check()?;
        let needed = needed.next_multiple_of(8).min(self.max_packet_len());
        self.mem
            .store(ControlWord::PendingSendSize, needed, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        self.refresh_read()?;
        if self.free_cached() >= needed {
            self.clear_pending_send_size();
            return Ok(true);
        }
        Ok(false)
    }

    /// Clears `pending_send_size`.
    pub fn clear_pending_send_size(&mut self) {
        self.mem
            .store(ControlWord::PendingSendSize, 0, Ordering::SeqCst);
    }

    /// The sticky corruption, if any.
    pub fn corruption(&self) -> Option<Corruption> {
        self.error
    }
}

/// The consumer half of a ring.
#[derive(Debug)]
pub struct IncomingRing<M> {
    mem: M,
    size: u32,
    /// Last published `read_index`.
    committed: u32,
    /// Private read position.
    head: u32,
    /// Snapshot of `write_index`: bytes in `[head, limit)` are published.
    limit: u32,
    /// `dist(head, limit)`: how many bytes from `head` on are known to be published.
    published: u32,
    error: Option<Corruption>,
}

impl<M: RingMemory> IncomingRing<M> {
    /// Takes the consumer side of `mem`: reads `read_index` and masks interrupts (they are
    /// unmasked by [`IncomingRing::arm`] when the consumer is about to sleep).
    pub fn new(mem: M) -> Result<Self, Error> {
        let size = mem.data_len();
        check_size(size)?;
        let r = mem.load(ControlWord::ReadIndex, Ordering::SeqCst);
        if !valid_index(r, size) {
            return Err(Error::RingCorrupt(Corruption::ReadIndex(r)));
        }
        mem.store(ControlWord::InterruptMask, 1, Ordering::SeqCst);
        Ok(Self {
            mem,
            size,
            committed: r,
            head: r,
            limit: r,
            published: 0,
            error: None,
        })
    }

    /// Size of the data area.
    pub fn size(&self) -> u32 {
        self.size
    }

    fn check(&self) -> Result<(), Error> {
        match self.error {
            Some(c) => Err(Error::RingCorrupt(c)),
            None => Ok(()),
        }
    }

    fn corrupt(&mut self, c: Corruption) -> Error {
        self.error = Some(c);
        Error::RingCorrupt(c)
    }

    /// Reads and validates `write_index` as the new `limit`.
    fn refresh_limit(&mut self) -> Result<(), Error> {
        self.limit = self.load_write_index()?;
        self.published = dist(self.head, self.limit, self.size);
        Ok(())
    }

    fn load_write_index(&mut self) -> Result<u32, Error> {
        let w = self.mem.load(ControlWord::WriteIndex, Ordering::Acquire);
        if !valid_index(w, self.size) {
            return Err(self.corrupt(Corruption::WriteIndex(w)));
        }
        Ok(w)
    }

    /// Reads the next packet into `buf` (resized as needed, so it can be reused across
    /// calls), validates it, and advances the private head. `Ok(None)` when empty.
    pub fn read_packet(&mut self, buf: &mut Vec<u8>) -> Result<Option<PacketInfo>, Error> {
        // A fresh staging over the caller's buffer, copying ahead at most a small packet.
        let mut st = Staging {
            buf: std::mem::take(buf),
            start: 0,
            end: 0,
        };
        let got = self.read_into(&mut st, SMALL_PACKET);
        *buf = st.buf;
        let Some(raw) = got? else {
            return Ok(None);
        };
        let (off, len) = (raw.payload.start, raw.payload.end);
        // `read_into` validated the headers of types 7 and 9; parse them for the caller.
        let external = match raw.packet_type {
            TYPE_TRANSFER_PAGES => match parse_transfer_pages(&buf[..off]) {
                Some(x) => Some(x),
                None => return Err(self.corrupt(Corruption::TransferPageHeader)),
            },
            TYPE_GPA_DIRECT => match parse_gpa_direct(&buf[..off]) {
                Some(x) => Some(x),
                None => return Err(self.corrupt(Corruption::GpaDirectHeader)),
            },
            _ => None,
        };
        let completion_requested = raw.flags & FLAG_COMPLETION_REQUESTED != 0;
        let trans_id = (completion_requested || raw.packet_type == TYPE_COMPLETION)
            .then(|| u64::from_le_bytes(buf[8..16].try_into().unwrap_or([0; 8])));
        Ok(Some(PacketInfo {
            packet_type: raw.packet_type,
            completion_requested,
            trans_id,
            ext: DESCRIPTOR_LEN..off,
            payload: off..len,
            external,
        }))
    }

    /// Reads the next packet like [`IncomingRing::read_packet`], but through `stage`: the
    /// reader copies up to [`STAGE_AHEAD`] published bytes at once (several small packets)
    /// out of the ring into `stage`, and parses the following packets from that private
    /// copy, so a batch of small packets costs one copy instead of one per packet. The same
    /// complete validation applies (for an in-band or completion packet already staged,
    /// with its checks inline; any packet failing one goes through the general path, which
    /// reports the corruption). Use one [`Staging`] per ring (bytes staged from another
    /// ring would only be parsed, and rejected, as garbage).
    pub fn read_staged(&mut self, stage: &mut Staging) -> Result<Option<StagedPacket>, Error> {
        self.read_into(stage, STAGE_AHEAD)
    }

    /// Reads the next packet into `st`: the checks of [`IncomingRing::read_general`] for
    /// the common case inline (an in-band or completion packet that is already staged
    /// whole); everything else, and any packet failing a check, takes the general path,
    /// which repeats the checks and reports what is wrong.
    #[inline]
    fn read_into(&mut self, st: &mut Staging, ahead: usize) -> Result<Option<StagedPacket>, Error> {
        let base = st.start;
        let have = st.end - base;
        if have >= DESCRIPTOR_LEN + TRAILER_LEN && self.error.is_none() {
            let mut d = [0u8; 8];
            d.copy_from_slice(&st.buf[base..base + 8]);
            let w = u64::from_le_bytes(d);
            let ty = w as u16;
            let offset8 = (w >> 16) as u16 as usize;
            let len8 = (w >> 32) as u16 as usize;
            let flags = (w >> 48) as u16;
            let len = len8 * 8;
            let end = len + TRAILER_LEN;
            // `end <= published`: the packet lies in bytes the producer published, whatever
            // the caller's staging buffer holds.
            if (ty == TYPE_IN_BAND || ty == TYPE_COMPLETION)
                && offset8 >= 2
                && offset8 <= len8
                && flags & !FLAG_COMPLETION_REQUESTED == 0
                && end <= have
                && end <= self.published as usize
            {
                let mut t = [0u8; 8];
                t.copy_from_slice(&st.buf[base + len..base + end]);
                if (u64::from_le_bytes(t) >> 32) as u32 == self.head {
                    st.start = base + end;
                    self.head = wrap_add(self.head, end, self.size);
                    self.published -= end as u32;
                    return Ok(Some(StagedPacket {
                        packet_type: ty,
                        flags,
                        start: base,
                        payload: base + offset8 * 8..base + len,
                    }));
                }
            }
        }
        self.read_general(st, ahead)
    }

    /// The one copy-and-validate path: makes the next packet staged (copying at least it,
    /// and up to `ahead` bytes, out of the ring) and validates the private copy.
    #[inline(never)]
    fn read_general(
        &mut self,
        st: &mut Staging,
        ahead: usize,
    ) -> Result<Option<StagedPacket>, Error> {
        self.check()?;
        if self.head == self.limit {
            // Everything staged was read (staged bytes lie in `[head, limit)`).
            self.refresh_limit()?;
            if self.head == self.limit {
                return Ok(None);
            }
        }
        let avail = dist(self.head, self.limit, self.size) as usize;
        if avail < DESCRIPTOR_LEN + TRAILER_LEN {
            return Err(self.corrupt(Corruption::Truncated));
        }
        self.stage(st, DESCRIPTOR_LEN, avail, ahead);
        let base = st.start;
        let d = &st.buf[base..base + DESCRIPTOR_LEN];
        let ty = u16::from_le_bytes([d[0], d[1]]);
        let offset8 = u16::from_le_bytes([d[2], d[3]]) as usize;
        let len8 = u16::from_le_bytes([d[4], d[5]]) as usize;
        let flags = u16::from_le_bytes([d[6], d[7]]);
        let len = len8 * 8;
        let off = offset8 * 8;
        if offset8 < 2 || offset8 > len8 {
            return Err(self.corrupt(Corruption::DescriptorOffset));
        }
        if len + TRAILER_LEN > avail {
            return Err(self.corrupt(Corruption::PacketLength));
        }
        if flags & !FLAG_COMPLETION_REQUESTED != 0 {
            return Err(self.corrupt(Corruption::Flags(flags)));
        }
        if !matches!(
            ty,
            TYPE_IN_BAND | TYPE_TRANSFER_PAGES | TYPE_GPA_DIRECT | TYPE_COMPLETION
        ) {
            return Err(self.corrupt(Corruption::PacketType(ty)));
        }
        // The rest of the packet and its trailer, copied out once; validate only the copy.
        let end = len + TRAILER_LEN;
        self.stage(st, end, avail, ahead);
        let base = st.start;
        let pkt = &st.buf[base..base + end];
        let mut t = [0u8; 8];
        t.copy_from_slice(&pkt[len..end]);
        if (u64::from_le_bytes(t) >> 32) as u32 != self.head {
            return Err(self.corrupt(Corruption::Trailer));
        }
        match ty {
            TYPE_TRANSFER_PAGES if parse_transfer_pages(&pkt[..off]).is_none() => {
                return Err(self.corrupt(Corruption::TransferPageHeader));
            }
            TYPE_GPA_DIRECT if parse_gpa_direct(&pkt[..off]).is_none() => {
                return Err(self.corrupt(Corruption::GpaDirectHeader));
            }
            _ => {}
        }
        st.start = base + end;
        self.head = wrap_add(self.head, end, self.size);
        self.published = dist(self.head, self.limit, self.size);
        Ok(Some(StagedPacket {
            packet_type: ty,
            flags,
            start: base,
            payload: base + off..base + len,
        }))
    }

    /// Makes at least `need` bytes from `head` staged (`need <= avail`), copying ahead up
    /// to `ahead` bytes (never past `limit`).
    #[inline(always)]
    fn stage(&self, st: &mut Staging, need: usize, avail: usize, ahead: usize) {
        if st.end - st.start < need {
            self.stage_more(st, need, avail, ahead);
        }
    }

    /// [`IncomingRing::stage`] when the bytes are not staged yet: the copy out of the ring.
    #[inline(never)]
    fn stage_more(&self, st: &mut Staging, need: usize, avail: usize, ahead: usize) {
        let have = st.end - st.start;
        if st.start != 0 {
            st.buf.copy_within(st.start..st.end, 0);
            st.start = 0;
            st.end = have;
        }
        let want = need.max(avail.min(ahead));
        if st.buf.len() < want {
            st.buf.resize(want, 0);
        }
        let from = wrap_add(self.head, have, self.size);
        read_wrapped(&self.mem, self.size, from, &mut st.buf[have..want]);
        st.end = want;
    }

    /// Whether no packet is waiting right now (reads `write_index` only when every packet
    /// seen so far has been read).
    pub fn is_empty(&mut self) -> Result<bool, Error> {
        self.check()?;
        if self.head == self.limit {
            self.refresh_limit()?;
        }
        Ok(self.head == self.limit)
    }

    /// Whether packets were read but their space not yet released.
    pub fn has_uncommitted(&self) -> bool {
        self.head != self.committed
    }

    /// Releases the space of every packet read since the last commit with one `read_index`
    /// store. Returns whether the producer must be signalled: free space crossed its
    /// `pending_send_size`.
    pub fn commit_read(&mut self) -> Result<bool, Error> {
        self.check()?;
        if self.head == self.committed {
            return Ok(false);
        }
        let old = self.committed;
        // Release: our copies out of the released bytes happen before the producer reuses
        // them. The fence orders this store before the `pending_send_size` load (Dekker with
        // `OutgoingRing::request_space`).
        self.mem
            .store(ControlWord::ReadIndex, self.head, Ordering::Release);
        self.committed = self.head;
        fence(Ordering::SeqCst);
        let pending = self
            .mem
            .load(ControlWord::PendingSendSize, Ordering::Relaxed)
            & !7;
        if pending == 0 {
            return Ok(false);
        }
        let w = self.load_write_index()?;
        let free_old = self.size - dist(old, w, self.size);
        let free_new = self.size - dist(self.head, w, self.size);
        // Free space as the producer counts it (minus the 8 bytes that are never used).
        let (free_old, free_new) = (free_old.saturating_sub(8), free_new.saturating_sub(8));
        Ok(free_old < pending && free_new >= pending)
    }

    /// Sets or clears `interrupt_mask`.
    pub fn set_interrupt_mask(&mut self, masked: bool) {
        self.mem.store(
            ControlWord::InterruptMask,
            u32::from(masked),
            Ordering::Relaxed,
        );
    }

    /// Prepares to sleep: unmasks interrupts, then re-checks the ring. Returns `Ok(true)` if
    /// it is still empty (safe to sleep: the producer will signal); otherwise re-masks and
    /// returns `Ok(false)`. Call after [`IncomingRing::commit_read`].
    pub fn arm(&mut self) -> Result<bool, Error> {
        self.check()?;
        self.set_interrupt_mask(false);
        fence(Ordering::SeqCst);
        self.refresh_limit()?;
        if self.limit != self.head {
            self.set_interrupt_mask(true);
            return Ok(false);
        }
        Ok(true)
    }

    /// The sticky corruption, if any.
    pub fn corruption(&self) -> Option<Corruption> {
        self.error
    }
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// `hdr` is the packet up to its payload (`offset8 * 8` bytes).
fn parse_transfer_pages(hdr: &[u8]) -> Option<ExternalData> {
    let pageset_id = u16::from_le_bytes(hdr.get(16..18)?.try_into().ok()?);
    let sender_owns_set = *hdr.get(18)? != 0;
    let count = u32_at(hdr, 20)? as usize;
    let end = count.checked_mul(8)?.checked_add(24)?;
    if end > hdr.len() {
        return None;
    }
    let ranges = (0..count)
        .map(|i| {
            let at = 24 + i * 8;
            Some(TransferRange {
                byte_count: u32_at(hdr, at)?,
                byte_offset: u32_at(hdr, at + 4)?,
            })
        })
        .collect::<Option<Vec<_>>>()?;
    Some(ExternalData::TransferPages {
        pageset_id,
        sender_owns_set,
        ranges,
    })
}

fn parse_gpa_direct(hdr: &[u8]) -> Option<ExternalData> {
    let count = u32_at(hdr, 20)? as usize;
    if count == 0 {
        return None;
    }
    let mut at = 24usize;
    let mut ranges = Vec::with_capacity(count.min(hdr.len() / 8));
    for _ in 0..count {
        let byte_count = u32_at(hdr, at)?;
        let byte_offset = u32_at(hdr, at + 4)?;
        let in_page = (byte_offset as usize) % PAGE_SIZE;
        let pages = (in_page + byte_count as usize).div_ceil(PAGE_SIZE);
        at += 8;
        let end = pages.checked_mul(8)?.checked_add(at)?;
        if end > hdr.len() {
            return None;
        }
        let pfns = (0..pages)
            .map(|i| u64_at(hdr, at + i * 8))
            .collect::<Option<Vec<_>>>()?;
        at = end;
        ranges.push(GpaRange {
            byte_count,
            byte_offset,
            pfns,
        });
    }
    Some(ExternalData::GpaDirect { ranges })
}
