//! GPADLs (guest physical address descriptor lists) and external data.
//!
//! A GPADL is a buffer the client shares with the server for the lifetime of the GPADL
//! (KMCL `VmbChannelCreateGpadlFromBuffer` / `VmbChannelDeleteGpadl`; the server side
//! `VmbChannelMapGpadl` / `VmbChannelUnmapGpadl`). In user mode there are no guest physical
//! pages, so a GPADL is a [`GpadlBuffer`] of shared memory both endpoints can see: a heap
//! allocation for two endpoints in one process, a sealed memfd (passed over the control
//! socket with `SCM_RIGHTS`) for two processes.
//!
//! # Page numbers
//!
//! GPA-direct packets (type 9, what `VmbPacketSendWithExternalMdl` sends) describe their
//! external data as ranges `{byte_count, byte_offset, pfn[]}` in the VMBus wire format.
//! kmcl numbers the pages of a GPADL in a synthetic address space: page `i` of GPADL
//! `handle` has the page number `handle << 32 | i` ([`page_number`]). A range's bytes start
//! at `byte_offset` (`< 4096`) in its first page and continue through the following ones;
//! kmcl requires the pages of one range to be consecutive pages of one GPADL (a range
//! describes a contiguous part of one buffer, which is what kmcl senders produce).
//!
//! # Rules (spec §3.8)
//!
//! * The client creates a GPADL; when [`ChannelHandle::create_gpadl_from_buffer`] returns,
//!   the server has confirmed it and may map it at once.
//! * The server maps a GPADL at most once at a time ([`ChannelHandle::map_gpadl`]); a
//!   write mapping of a read-only GPADL fails. The mapping is unmapped by
//!   [`GpadlMapping::unmap`] or by dropping it.
//! * [`ChannelHandle::delete_gpadl`] blocks while the server still has the GPADL mapped.
//! * Every GPADL must be deleted by the time the Closed callback returns. kmcl deletes the
//!   ones that are left itself at that point (without waiting for the server, which is gone
//!   or about to be), logs a warning and counts them in
//!   [`Counters::gpadls_deleted_at_close`](crate::Counters::gpadls_deleted_at_close);
//!   their handles are then unknown. Memory stays valid either way: a buffer lives as long
//!   as anything (the client's [`GpadlBuffer`], a server mapping, an external-data view)
//!   still refers to it.
//!
//! # External data on the receiving side
//!
//! [`IncomingPacket::external_data`](crate::IncomingPacket::external_data) validates every
//! range of a GPA-direct packet against the GPADL it names (the peer is untrusted: unknown
//! handles, pages past the end, lengths that overflow are errors, never out-of-bounds
//! accesses). A range that does not validate fails the packet (like `VmbChannelPacketFail`:
//! the incoming queue stops). The [`ExternalView`] view borrows the packet, so it cannot be
//! used after the packet is completed. It copies bytes in and out instead of handing out
//! `&[u8]`: the memory is shared with a peer that may write it at any moment, which a
//! shared reference would promise cannot happen.
//!
//! [`ChannelHandle::create_gpadl_from_buffer`]: crate::ChannelHandle::create_gpadl_from_buffer
//! [`ChannelHandle::map_gpadl`]: crate::ChannelHandle::map_gpadl
//! [`ChannelHandle::delete_gpadl`]: crate::ChannelHandle::delete_gpadl

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::num::NonZeroU32;
use std::os::fd::OwnedFd;
use std::sync::{Condvar, Mutex, MutexGuard};

use crate::sync::Arc;

use crate::Error;
use crate::ring::GpaRange;
use crate::shmem::{PAGE_SIZE, Region};

/// Largest GPADL buffer, in pages (1 GiB).
pub const MAX_GPADL_PAGES: u32 = 1 << 18;

/// Most GPADLs one channel holds at a time (each side refuses more: a peer cannot make
/// the other map without bound).
pub const MAX_GPADLS: usize = 4096;

/// The page number of page `page` of GPADL `handle` in GPA-direct ranges.
pub fn page_number(handle: GpadlHandle, page: u32) -> u64 {
    (u64::from(handle.raw()) << 32) | u64::from(page)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A GPADL's handle: chosen by the client, non-zero, unique on its channel while the GPADL
/// exists. The client passes it to the server (for example in a packet) as [`Self::raw`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GpadlHandle(NonZeroU32);

impl GpadlHandle {
    /// The handle with this value; `None` for 0, which never names a GPADL.
    pub fn from_raw(raw: u32) -> Option<Self> {
        NonZeroU32::new(raw).map(Self)
    }

    /// The value on the wire.
    pub fn raw(self) -> u32 {
        self.0.get()
    }
}

impl fmt::Display for GpadlHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Flags for creating a GPADL.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GpadlFlags {
    /// `VMBUS_CHANNEL_GPADL_FLAG_READ_ONLY`: the server may only read the buffer (its
    /// mapping is `PROT_READ` across processes; write mappings and writes through external
    /// data fail with [`Error::GpadlReadOnly`]).
    pub read_only: bool,
}

impl GpadlFlags {
    /// The server may read and write.
    pub const NONE: GpadlFlags = GpadlFlags { read_only: false };
    /// The server may only read.
    pub const READ_ONLY: GpadlFlags = GpadlFlags { read_only: true };
    /// Bit value on the wire.
    pub const READ_ONLY_BIT: u32 = 1;

    /// From the wire value; unknown bits are `InvalidArgument`.
    pub fn from_bits(bits: u32) -> Result<Self, Error> {
        if bits & !Self::READ_ONLY_BIT != 0 {
            return Err(Error::InvalidArgument("unknown GPADL flags"));
        }
        Ok(Self {
            read_only: bits & Self::READ_ONLY_BIT != 0,
        })
    }

    /// The wire value.
    pub fn bits(self) -> u32 {
        if self.read_only {
            Self::READ_ONLY_BIT
        } else {
            0
        }
    }
}

/// How the server maps a GPADL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapAccess {
    /// Read only.
    Read,
    /// Read and write; fails on a read-only GPADL.
    ReadWrite,
}

/// A buffer that can back a GPADL: page-aligned memory both endpoints can see.
///
/// Cloning shares the buffer. The client fills and reads it with [`GpadlBuffer::write`]
/// and [`GpadlBuffer::read`] (bounds-checked copies).
#[derive(Debug, Clone)]
pub struct GpadlBuffer {
    region: Arc<Region>,
    /// The memfd behind a shareable buffer, passed to a server in another process.
    fd: Option<std::sync::Arc<OwnedFd>>,
}

fn check_len(len: usize) -> Result<(), Error> {
    if len == 0 || !len.is_multiple_of(PAGE_SIZE) || len / PAGE_SIZE > MAX_GPADL_PAGES as usize {
        return Err(Error::InvalidArgument(
            "a GPADL buffer is 1 to 262144 whole pages of 4096 bytes",
        ));
    }
    Ok(())
}

impl GpadlBuffer {
    /// `len` zeroed bytes on the heap (a multiple of 4096): for channels whose endpoints are
    /// both in this process.
    pub fn heap(len: usize) -> Result<Self, Error> {
        check_len(len)?;
        Ok(Self {
            region: Region::heap(len)?,
            fd: None,
        })
    }

    /// `len` zeroed bytes in a sealed memfd mapped shared (a multiple of 4096): usable with
    /// any transport, required for a server in another process.
    pub fn shared(len: usize) -> Result<Self, Error> {
        check_len(len)?;
        let (region, fd) = Region::memfd("kmcl-gpadl", len, true)?;
        Ok(Self {
            region,
            fd: Some(std::sync::Arc::new(fd)),
        })
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.region.len()
    }

    /// Always false: buffers are at least one page.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Size in pages.
    pub fn pages(&self) -> u32 {
        (self.region.len() / PAGE_SIZE) as u32
    }

    /// Whether a server in another process can map it (it is a memfd).
    pub fn is_shareable(&self) -> bool {
        self.fd.is_some()
    }

    /// Copies `src` into the buffer at `offset`.
    pub fn write(&self, offset: usize, src: &[u8]) -> Result<(), Error> {
        self.region.write_at(offset, src)
    }

    /// Copies bytes at `offset` into `dst`.
    pub fn read(&self, offset: usize, dst: &mut [u8]) -> Result<(), Error> {
        self.region.read_at(offset, dst)
    }

    pub(crate) fn region(&self) -> &Arc<Region> {
        &self.region
    }

    pub(crate) fn fd(&self) -> Option<&std::sync::Arc<OwnedFd>> {
        self.fd.as_ref()
    }
}

/// One range of external data to send: `len` bytes at byte `offset` of a GPADL (the
/// `MdlOffset`/`MdlLength` of `VmbPacketSendWithExternalMdl`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExternalRange {
    /// The GPADL.
    pub gpadl: GpadlHandle,
    /// First byte in the GPADL.
    pub offset: usize,
    /// Bytes; at least 1.
    pub len: usize,
}

// ---------------------------------------------------------------------------------------
// Tables

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CreateState {
    /// Offered to the server, not yet confirmed.
    Pending,
    /// Confirmed: may be named in packets.
    Created,
    /// Refused by the server with this status.
    Refused(u32),
    /// Deletion requested; waiting for the server to let go.
    Deleting,
}

#[derive(Debug)]
struct Created {
    buffer: GpadlBuffer,
    state: CreateState,
}

#[derive(Debug)]
struct Offered {
    region: Arc<Region>,
    read_only: bool,
    mapped: bool,
    /// The client asked to delete it; it goes once unmapped.
    teardown: bool,
}

#[derive(Debug)]
struct Tables {
    next_handle: u32,
    /// GPADLs this endpoint created (client).
    created: HashMap<u32, Created>,
    /// GPADLs the peer created (server).
    offered: HashMap<u32, Offered>,
    /// False once the peer is gone or this endpoint closed: nothing more is confirmed.
    connected: bool,
}

/// One endpoint's GPADLs: those it created (client) and those its peer created (server).
/// Shared by the channel and its transport, which delivers the peer's messages into it.
#[derive(Debug)]
pub(crate) struct Gpadls {
    tables: Mutex<Tables>,
    changed: Condvar,
}

/// What the server should tell the client after a teardown request or an unmap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub(crate) enum Teardown {
    /// The GPADL is gone: send "torn down".
    Done,
    /// Still mapped (or nothing to do): send nothing now.
    Later,
}

/// A validated range of external data: `len` bytes at `start` of a GPADL's memory.
#[derive(Debug, Clone)]
pub(crate) struct Segment {
    region: Arc<Region>,
    start: usize,
    len: usize,
    writable: bool,
}

impl Gpadls {
    pub(crate) fn new() -> Self {
        Self {
            tables: Mutex::new(Tables {
                next_handle: 1,
                created: HashMap::new(),
                offered: HashMap::new(),
                connected: true,
            }),
            changed: Condvar::new(),
        }
    }

    fn wait_while(&self, mut f: impl FnMut(&mut Tables) -> bool) -> MutexGuard<'_, Tables> {
        let mut t = lock(&self.tables);
        while f(&mut t) {
            t = self.changed.wait(t).unwrap_or_else(|p| p.into_inner());
        }
        t
    }

    // ---- client side ----

    /// Registers a GPADL being created; returns its new handle.
    pub(crate) fn begin_create(&self, buffer: &GpadlBuffer) -> Result<GpadlHandle, Error> {
        let mut t = lock(&self.tables);
        if !t.connected {
            return Err(Error::DeviceRemoved);
        }
        if t.created.len() >= MAX_GPADLS {
            return Err(Error::InvalidArgument("too many GPADLs on this channel"));
        }
        let handle = loop {
            let h = t.next_handle;
            t.next_handle = match h.wrapping_add(1) {
                0 => 1,
                n => n,
            };
            if h != 0 && !t.created.contains_key(&h) {
                break h;
            }
        };
        t.created.insert(
            handle,
            Created {
                buffer: buffer.clone(),
                state: CreateState::Pending,
            },
        );
        GpadlHandle::from_raw(handle).ok_or(Error::InvalidState("GPADL handle 0"))
    }

    /// The server answered a creation (`status` 0 = success).
    pub(crate) fn finish_create(&self, handle: u32, status: u32) {
        let mut t = lock(&self.tables);
        match t.created.get_mut(&handle) {
            Some(c) if c.state == CreateState::Pending => {
                c.state = if status == 0 {
                    CreateState::Created
                } else {
                    CreateState::Refused(status)
                };
                self.changed.notify_all();
            }
            _ => tracing::warn!(handle, "GPADL confirmation for no pending GPADL ignored"),
        }
    }

    /// Forgets a GPADL whose creation could not be sent.
    pub(crate) fn abandon(&self, handle: GpadlHandle) {
        lock(&self.tables).created.remove(&handle.raw());
    }

    /// Whether the creation of `handle` is still unanswered.
    pub(crate) fn create_pending(&self, handle: GpadlHandle) -> bool {
        let t = lock(&self.tables);
        t.connected
            && t.created
                .get(&handle.raw())
                .is_some_and(|c| c.state == CreateState::Pending)
    }

    /// Waits for the server's answer to a creation.
    pub(crate) fn wait_created(&self, handle: GpadlHandle) -> Result<(), Error> {
        let h = handle.raw();
        let mut t = self.wait_while(|t| {
            t.connected
                && t.created
                    .get(&h)
                    .is_some_and(|c| c.state == CreateState::Pending)
        });
        match t.created.get(&h).map(|c| c.state) {
            Some(CreateState::Created) => Ok(()),
            Some(CreateState::Refused(status)) => {
                t.created.remove(&h);
                Err(Error::GpadlRefused(status))
            }
            _ => {
                t.created.remove(&h);
                Err(Error::DeviceRemoved)
            }
        }
    }

    /// Marks a created GPADL as being deleted. `Ok(true)`: ask the server; `Ok(false)`: the
    /// peer is gone, the GPADL was simply forgotten.
    pub(crate) fn begin_delete(&self, handle: GpadlHandle) -> Result<bool, Error> {
        let mut t = lock(&self.tables);
        let h = handle.raw();
        let connected = t.connected;
        match t.created.get_mut(&h).map(|c| &mut c.state) {
            Some(s @ CreateState::Created) => {
                if connected {
                    *s = CreateState::Deleting;
                    Ok(true)
                } else {
                    t.created.remove(&h);
                    Ok(false)
                }
            }
            Some(CreateState::Deleting) => Err(Error::GpadlBeingDeleted(h)),
            _ => Err(Error::UnknownGpadl(h)),
        }
    }

    /// The server let go of a GPADL being deleted.
    pub(crate) fn finish_delete(&self, handle: u32) {
        let mut t = lock(&self.tables);
        match t.created.get(&handle).map(|c| c.state) {
            Some(CreateState::Deleting) => {
                t.created.remove(&handle);
                self.changed.notify_all();
            }
            _ => tracing::warn!(
                handle,
                "GPADL teardown confirmation for no deletion ignored"
            ),
        }
    }

    /// Whether the deletion of `handle` is still unanswered.
    pub(crate) fn delete_pending(&self, handle: GpadlHandle) -> bool {
        let t = lock(&self.tables);
        t.connected && t.created.contains_key(&handle.raw())
    }

    /// Waits until the server let go of a GPADL being deleted (or is gone).
    pub(crate) fn wait_deleted(&self, handle: GpadlHandle) {
        let h = handle.raw();
        let mut t = self.wait_while(|t| t.connected && t.created.contains_key(&h));
        t.created.remove(&h);
    }

    /// Checks ranges to send against the created GPADLs and encodes them as a GPA-direct
    /// header (after the 16-byte descriptor): `{u32 0, u32 count}`, the ranges, then the
    /// 8-byte KMCL header `{payload_len, 0}`.
    pub(crate) fn encode_ranges(
        &self,
        ranges: &[ExternalRange],
        payload_len: usize,
    ) -> Result<Vec<u8>, Error> {
        if ranges.is_empty() {
            return Err(Error::InvalidArgument(
                "external data needs at least one range",
            ));
        }
        let count = u32::try_from(ranges.len())
            .map_err(|_| Error::InvalidArgument("too many external ranges"))?;
        let mut ext = Vec::with_capacity(16 + ranges.len() * 24);
        ext.extend_from_slice(&0u32.to_le_bytes());
        ext.extend_from_slice(&count.to_le_bytes());
        let t = lock(&self.tables);
        for r in ranges {
            let h = r.gpadl.raw();
            let size = match t.created.get(&h) {
                Some(c) if c.state == CreateState::Created => c.buffer.len(),
                Some(c) if c.state == CreateState::Deleting => {
                    return Err(Error::GpadlBeingDeleted(h));
                }
                _ => return Err(Error::UnknownGpadl(h)),
            };
            if r.len == 0 {
                return Err(Error::InvalidArgument("empty external range"));
            }
            if r.offset.checked_add(r.len).is_none_or(|end| end > size) {
                return Err(Error::AccessOutOfBounds {
                    offset: r.offset,
                    len: r.len,
                    size,
                });
            }
            // Both fit in u32: the buffer is at most 1 GiB.
            let in_page = r.offset % PAGE_SIZE;
            let first = (r.offset / PAGE_SIZE) as u32;
            let pages = (in_page + r.len).div_ceil(PAGE_SIZE) as u32;
            ext.extend_from_slice(&(r.len as u32).to_le_bytes());
            ext.extend_from_slice(&(in_page as u32).to_le_bytes());
            for i in 0..pages {
                ext.extend_from_slice(&page_number(r.gpadl, first + i).to_le_bytes());
            }
        }
        drop(t);
        ext.extend_from_slice(&(payload_len as u32).to_le_bytes());
        ext.extend_from_slice(&0u32.to_le_bytes());
        Ok(ext)
    }

    // ---- server side ----

    /// The peer created a GPADL. Refused (with the reason) if the handle is 0 or in use.
    pub(crate) fn offer(
        &self,
        handle: u32,
        region: Arc<Region>,
        read_only: bool,
    ) -> Result<(), Error> {
        let mut t = lock(&self.tables);
        if !t.connected {
            return Err(Error::DeviceRemoved);
        }
        if handle == 0 {
            return Err(Error::UnknownGpadl(0));
        }
        if t.offered.contains_key(&handle) {
            return Err(Error::Protocol("GPADL handle already in use"));
        }
        if t.offered.len() >= MAX_GPADLS {
            return Err(Error::Protocol("too many GPADLs on this channel"));
        }
        t.offered.insert(
            handle,
            Offered {
                region,
                read_only,
                mapped: false,
                teardown: false,
            },
        );
        Ok(())
    }

    /// Maps a GPADL the peer created: at most once at a time, never for write if it is
    /// read-only.
    pub(crate) fn map(&self, handle: GpadlHandle, access: MapAccess) -> Result<Arc<Region>, Error> {
        let mut t = lock(&self.tables);
        let h = handle.raw();
        let Some(o) = t.offered.get_mut(&h) else {
            return Err(Error::UnknownGpadl(h));
        };
        if o.teardown {
            return Err(Error::GpadlBeingDeleted(h));
        }
        if o.mapped {
            return Err(Error::GpadlAlreadyMapped(h));
        }
        if access == MapAccess::ReadWrite && o.read_only {
            return Err(Error::GpadlReadOnly);
        }
        o.mapped = true;
        Ok(o.region.clone())
    }

    /// Ends a mapping. `Done` if a teardown was waiting for it (the GPADL is now gone).
    pub(crate) fn unmap(&self, handle: GpadlHandle) -> Teardown {
        let mut t = lock(&self.tables);
        let h = handle.raw();
        match t.offered.get_mut(&h) {
            Some(o) if o.teardown => {
                t.offered.remove(&h);
                self.changed.notify_all();
                Teardown::Done
            }
            Some(o) => {
                o.mapped = false;
                self.changed.notify_all();
                Teardown::Later
            }
            None => Teardown::Later,
        }
    }

    /// The client asked to delete a GPADL: gone now unless mapped. An unknown handle is
    /// answered at once (there is nothing to wait for).
    pub(crate) fn request_teardown(&self, handle: u32) -> Teardown {
        let mut t = lock(&self.tables);
        match t.offered.get_mut(&handle) {
            Some(o) if o.mapped => {
                o.teardown = true;
                Teardown::Later
            }
            Some(_) => {
                t.offered.remove(&handle);
                Teardown::Done
            }
            None => Teardown::Done,
        }
    }

    /// Validates the ranges of a GPA-direct packet against the GPADLs the peer created.
    pub(crate) fn resolve(&self, ranges: &[GpaRange]) -> Result<Vec<Segment>, Error> {
        let t = lock(&self.tables);
        let mut out = Vec::with_capacity(ranges.len());
        for r in ranges {
            if r.byte_count == 0 {
                return Err(Error::ExternalRangeMalformed("empty range"));
            }
            if r.byte_offset as usize >= PAGE_SIZE {
                return Err(Error::ExternalRangeMalformed(
                    "in-page offset of 4096 or more",
                ));
            }
            let Some(&first) = r.pfns.first() else {
                return Err(Error::ExternalRangeMalformed("range without pages"));
            };
            let handle = (first >> 32) as u32;
            let first_page = first & 0xffff_ffff;
            for (i, &pfn) in r.pfns.iter().enumerate() {
                if pfn >> 32 != u64::from(handle) || pfn & 0xffff_ffff != first_page + i as u64 {
                    return Err(Error::ExternalRangeMalformed(
                        "pages are not consecutive pages of one GPADL",
                    ));
                }
            }
            let Some(o) = t.offered.get(&handle) else {
                return Err(Error::UnknownGpadl(handle));
            };
            if o.teardown {
                return Err(Error::GpadlBeingDeleted(handle));
            }
            // No overflow: first_page < 2^32 pages of 2^12 bytes, plus two u32s.
            let size = o.region.len();
            let start = first_page * PAGE_SIZE as u64 + u64::from(r.byte_offset);
            let end = start + u64::from(r.byte_count);
            if end > size as u64 {
                return Err(Error::ExternalRangeOutOfBounds { handle, size });
            }
            out.push(Segment {
                region: o.region.clone(),
                start: start as usize,
                len: r.byte_count as usize,
                writable: !o.read_only,
            });
        }
        Ok(out)
    }

    // ---- both ----

    /// The peer is gone or this endpoint closed: pending creations fail, pending deletions
    /// complete, the peer's GPADLs are forgotten (mappings and views keep their memory).
    pub(crate) fn disconnect(&self) {
        let mut t = lock(&self.tables);
        t.connected = false;
        t.offered.clear();
        t.created.retain(|_, c| c.state == CreateState::Created);
        self.changed.notify_all();
    }

    /// At Closed: forgets every GPADL this endpoint created and has not deleted; returns
    /// how many.
    pub(crate) fn delete_leftovers(&self) -> usize {
        let mut t = lock(&self.tables);
        let n = t.created.len();
        t.created.clear();
        self.changed.notify_all();
        n
    }
}

// ---------------------------------------------------------------------------------------
// Views

/// A server's mapping of a GPADL (`VmbChannelMapGpadl`): bounds-checked copies in and out
/// of the client's buffer. Unmapped by [`GpadlMapping::unmap`] or when dropped; a
/// deletion the client is waiting for completes then.
pub struct GpadlMapping {
    pub(crate) handle: GpadlHandle,
    pub(crate) region: Arc<Region>,
    pub(crate) writable: bool,
    /// Ends the mapping (tells the table, and the client if it is waiting).
    pub(crate) on_unmap: Option<Box<dyn FnOnce(GpadlHandle) + Send + Sync>>,
}

impl fmt::Debug for GpadlMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GpadlMapping")
            .field("handle", &self.handle)
            .field("len", &self.region.len())
            .field("writable", &self.writable)
            .finish()
    }
}

impl GpadlMapping {
    /// The mapped GPADL.
    pub fn handle(&self) -> GpadlHandle {
        self.handle
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.region.len()
    }

    /// Always false: GPADLs are at least one page.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Whether it was mapped for writing.
    pub fn is_writable(&self) -> bool {
        self.writable
    }

    /// Copies bytes at `offset` into `dst`.
    pub fn read(&self, offset: usize, dst: &mut [u8]) -> Result<(), Error> {
        self.region.read_at(offset, dst)
    }

    /// Copies `src` into the buffer at `offset`; `GpadlReadOnly` on a read mapping.
    pub fn write(&self, offset: usize, src: &[u8]) -> Result<(), Error> {
        if !self.writable {
            return Err(Error::GpadlReadOnly);
        }
        self.region.write_at(offset, src)
    }

    /// Unmaps (`VmbChannelUnmapGpadl`); the same as dropping the mapping.
    pub fn unmap(self) {}
}

impl Drop for GpadlMapping {
    fn drop(&mut self) {
        if let Some(f) = self.on_unmap.take() {
            f(self.handle);
        }
    }
}

/// The external data of an incoming GPA-direct packet, validated against the GPADLs it
/// names (`VmbChannelPacketGetExternalData`). It borrows the packet (or its token), so it
/// cannot outlive the packet's completion:
///
/// ```compile_fail,E0505
/// fn keep(packet: kmcl::IncomingPacket<'_>) {
///     let data = packet.external_data().unwrap();
///     packet.complete(&[]).unwrap(); // the packet is gone...
///     let _ = data.len();            // ...so its external data is too: does not compile
/// }
/// ```
///
/// The ranges read as one sequence of bytes, in order.
pub struct ExternalView<'a> {
    segments: Vec<Segment>,
    len: usize,
    _packet: PhantomData<&'a ()>,
}

impl fmt::Debug for ExternalView<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExternalView")
            .field("ranges", &self.segments.len())
            .field("len", &self.len)
            .finish()
    }
}

impl ExternalView<'_> {
    pub(crate) fn new(segments: Vec<Segment>) -> Self {
        let len = segments.iter().map(|s| s.len).sum();
        Self {
            segments,
            len,
            _packet: PhantomData,
        }
    }

    /// Total bytes of all ranges.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no bytes (never, for a validated packet).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of ranges.
    pub fn range_count(&self) -> usize {
        self.segments.len()
    }

    /// Whether every range may be written (no range is in a read-only GPADL).
    pub fn is_writable(&self) -> bool {
        self.segments.iter().all(|s| s.writable)
    }

    /// Calls `f(segment, offset within it, position in the caller's buffer, length)` for
    /// the part of the ranges covering `offset..offset + len` of the whole.
    fn each(
        &self,
        offset: usize,
        len: usize,
        mut f: impl FnMut(&Segment, usize, usize, usize) -> Result<(), Error>,
    ) -> Result<(), Error> {
        if offset.checked_add(len).is_none_or(|e| e > self.len) {
            return Err(Error::AccessOutOfBounds {
                offset,
                len,
                size: self.len,
            });
        }
        let (mut skip, mut pos) = (offset, 0usize);
        for s in &self.segments {
            if pos == len {
                break;
            }
            if skip >= s.len {
                skip -= s.len;
                continue;
            }
            let n = (s.len - skip).min(len - pos);
            f(s, s.start + skip, pos, n)?;
            pos += n;
            skip = 0;
        }
        Ok(())
    }

    /// Copies `dst.len()` bytes starting at byte `offset` of the external data into `dst`.
    pub fn read(&self, offset: usize, dst: &mut [u8]) -> Result<(), Error> {
        self.each(offset, dst.len(), |s, at, pos, n| {
            s.region.read_at(at, &mut dst[pos..pos + n])
        })
    }

    /// Copies all of it into `dst`, which must be exactly [`Self::len`] bytes.
    pub fn copy_to_slice(&self, dst: &mut [u8]) -> Result<(), Error> {
        if dst.len() != self.len {
            return Err(Error::InvalidArgument(
                "destination length differs from the external data length",
            ));
        }
        self.read(0, dst)
    }

    /// A copy of all of it.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = vec![0u8; self.len];
        // Cannot fail: `v` has exactly `len` bytes and every segment was validated.
        let _ = self.read(0, &mut v);
        v
    }

    /// Copies `src` into the external data at byte `offset` (a response written into the
    /// sender's buffer). `GpadlReadOnly` if a range it touches is in a read-only GPADL
    /// (nothing is written then).
    pub fn write(&self, offset: usize, src: &[u8]) -> Result<(), Error> {
        self.each(offset, src.len(), |s, _, _, _| {
            if s.writable {
                Ok(())
            } else {
                Err(Error::GpadlReadOnly)
            }
        })?;
        self.each(offset, src.len(), |s, at, pos, n| {
            s.region.write_at(at, &src[pos..pos + n])
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::{IncomingRing, OutgoingRing, PacketHeader, TYPE_GPA_DIRECT};
    use crate::shmem::RingView;
    use proptest::prelude::*;

    fn handle(h: u32) -> GpadlHandle {
        GpadlHandle::from_raw(h).unwrap()
    }

    fn table_with(pages: u32, read_only: bool) -> (Gpadls, Arc<Region>) {
        let t = Gpadls::new();
        let region = Region::heap(pages as usize * PAGE_SIZE).unwrap();
        t.offer(7, region.clone(), read_only).unwrap();
        (t, region)
    }

    fn range(count: u32, offset: u32, pfns: Vec<u64>) -> GpaRange {
        GpaRange {
            byte_count: count,
            byte_offset: offset,
            pfns,
        }
    }

    #[test]
    fn encoded_ranges_resolve_to_the_same_bytes() {
        let client = Gpadls::new();
        let buf = GpadlBuffer::heap(4 * PAGE_SIZE).unwrap();
        let h = client.begin_create(&buf).unwrap();
        client.finish_create(h.raw(), 0);
        client.wait_created(h).unwrap();
        let data: Vec<u8> = (0..4 * PAGE_SIZE).map(|i| (i * 7 + 3) as u8).collect();
        buf.write(0, &data).unwrap();
        let server = Gpadls::new();
        server.offer(h.raw(), buf.region().clone(), false).unwrap();
        let ranges = [
            ExternalRange {
                gpadl: h,
                offset: 100,
                len: 5000,
            },
            ExternalRange {
                gpadl: h,
                offset: 3 * PAGE_SIZE,
                len: PAGE_SIZE,
            },
        ];
        let ext = client.encode_ranges(&ranges, 3).unwrap();
        // Through a real ring: the parser decodes what the encoder wrote.
        let view = RingView::heap(4).unwrap();
        let mut w = OutgoingRing::new(view.clone()).unwrap();
        let mut r = IncomingRing::new(view).unwrap();
        let header = PacketHeader {
            packet_type: TYPE_GPA_DIRECT,
            flags: 0,
            trans_id: 0,
        };
        assert!(w.try_write(header, &ext, b"abc").unwrap());
        w.commit().unwrap();
        let mut bytes = Vec::new();
        let info = r.read_packet(&mut bytes).unwrap().unwrap();
        let Some(crate::ring::ExternalData::GpaDirect { ranges: parsed }) = info.external else {
            panic!("not GPA direct: {info:?}");
        };
        let view = ExternalView::new(server.resolve(&parsed).unwrap());
        assert_eq!(view.len(), 5000 + PAGE_SIZE);
        let mut want = data[100..5100].to_vec();
        want.extend_from_slice(&data[3 * PAGE_SIZE..]);
        assert_eq!(view.to_vec(), want);
        let mut part = [0u8; 10];
        view.read(4995, &mut part).unwrap();
        assert_eq!(part, want[4995..5005]);
    }

    #[test]
    fn hostile_ranges_are_refused_with_the_reason() {
        let (t, _) = table_with(2, false);
        let p = |page: u64| (7u64 << 32) | page;
        type Check = fn(&Error) -> bool;
        let cases: Vec<(GpaRange, Check)> = vec![
            (range(10, 0, vec![(9u64 << 32)]), |e| {
                matches!(e, Error::UnknownGpadl(9))
            }),
            (range(10, 0, vec![0]), |e| {
                matches!(e, Error::UnknownGpadl(0))
            }),
            (range(10, 0, vec![p(2)]), |e| {
                matches!(e, Error::ExternalRangeOutOfBounds { handle: 7, .. })
            }),
            (range(4096, 1, vec![p(1), p(2)]), |e| {
                matches!(e, Error::ExternalRangeOutOfBounds { .. })
            }),
            (range(10, 4096, vec![p(0)]), |e| {
                matches!(e, Error::ExternalRangeMalformed(_))
            }),
            (range(0, 0, vec![p(0)]), |e| {
                matches!(e, Error::ExternalRangeMalformed(_))
            }),
            (range(5000, 0, vec![p(1), p(0)]), |e| {
                matches!(e, Error::ExternalRangeMalformed(_))
            }),
            (range(5000, 0, vec![p(0), (8u64 << 32) | 1]), |e| {
                matches!(e, Error::ExternalRangeMalformed(_))
            }),
            (
                range(5000, 0, vec![p(u32::MAX as u64), (8u64 << 32)]),
                |e| matches!(e, Error::ExternalRangeMalformed(_)),
            ),
            (range(u32::MAX, 4095, vec![p(u32::MAX as u64)]), |e| {
                matches!(e, Error::ExternalRangeOutOfBounds { .. })
            }),
        ];
        for (r, ok) in cases {
            let e = t.resolve(std::slice::from_ref(&r)).unwrap_err();
            assert!(ok(&e), "{r:?}: {e}");
        }
        // The last byte is fine, one more is not.
        assert!(t.resolve(&[range(1, 4095, vec![p(1)])]).is_ok());
        assert!(t.resolve(&[range(2, 4095, vec![p(1), p(2)])]).is_err());
    }

    #[test]
    fn map_rules() {
        let (t, _) = table_with(1, true);
        assert!(matches!(
            t.map(handle(7), MapAccess::ReadWrite),
            Err(Error::GpadlReadOnly)
        ));
        t.map(handle(7), MapAccess::Read).unwrap();
        assert!(matches!(
            t.map(handle(7), MapAccess::Read),
            Err(Error::GpadlAlreadyMapped(7))
        ));
        assert_eq!(t.request_teardown(7), Teardown::Later);
        assert!(matches!(
            t.map(handle(7), MapAccess::Read),
            Err(Error::GpadlBeingDeleted(7))
        ));
        assert_eq!(t.unmap(handle(7)), Teardown::Done);
        assert!(matches!(
            t.map(handle(7), MapAccess::Read),
            Err(Error::UnknownGpadl(7))
        ));
        assert_eq!(
            t.request_teardown(7),
            Teardown::Done,
            "unknown: answered at once"
        );
    }

    #[test]
    fn a_peer_cannot_make_a_side_hold_more_than_max_gpadls() {
        let (t, region) = table_with(1, false);
        for h in 8..(MAX_GPADLS as u32 + 7) {
            t.offer(h, region.clone(), false).unwrap();
        }
        assert!(matches!(
            t.offer(u32::MAX, region.clone(), false),
            Err(Error::Protocol(_))
        ));
        assert_eq!(t.request_teardown(8), Teardown::Done);
        t.offer(u32::MAX, region, false).unwrap();
        let client = Gpadls::new();
        let buf = GpadlBuffer::heap(PAGE_SIZE).unwrap();
        for _ in 0..MAX_GPADLS {
            client.begin_create(&buf).unwrap();
        }
        assert!(matches!(
            client.begin_create(&buf),
            Err(Error::InvalidArgument(_))
        ));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// GPA-direct headers through a real ring, then against a GPADL of 3 pages
        /// (handle 7): ranges built from small and wild counts, offsets and page numbers
        /// (mostly well-formed so validation goes deep, sometimes with a wrong page count
        /// or a wild range count). No panic; every accepted range lies inside the GPADL
        /// and reads the GPADL's bytes; every failure is an error value.
        #[test]
        fn arbitrary_gpa_direct_headers_never_reach_outside_the_gpadl(
            ranges in proptest::collection::vec(
                (
                    prop_oneof![4 => 0u32..(3 * 4096 + 10), 1 => any::<u32>()],
                    prop_oneof![4 => 0u32..4200, 1 => any::<u32>()],
                    proptest::collection::vec(
                        prop_oneof![
                            4 => (0u64..5).prop_map(|p| (7u64 << 32) | p),
                            1 => any::<u64>(),
                        ],
                        0..6,
                    ),
                    proptest::bool::weighted(0.8),
                ),
                1..4,
            ),
            wild_count in proptest::option::weighted(0.1, any::<u32>()),
            trailing in proptest::collection::vec(any::<u32>(), 0..4),
            payload in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let (t, region) = table_with(3, false);
            region.write_at(0, &[0x5a; 3 * PAGE_SIZE]).unwrap();
            let mut words: Vec<u32> = vec![0, wild_count.unwrap_or(ranges.len() as u32)];
            for (count, offset, pfns, exact) in &ranges {
                words.push(*count);
                words.push(*offset);
                let mut pfns = pfns.clone();
                if *exact {
                    // The page count the format implies, continuing from the first page.
                    let pages = ((*offset as usize % PAGE_SIZE) + *count as usize)
                        .div_ceil(PAGE_SIZE)
                        .min(6);
                    let first = pfns.first().copied().unwrap_or(7u64 << 32);
                    pfns = (0..pages as u64).map(|i| first.wrapping_add(i)).collect();
                }
                for p in pfns {
                    words.push(p as u32);
                    words.push((p >> 32) as u32);
                }
            }
            words.extend(trailing);
            if words.len() % 2 == 1 {
                words.push(0);
            }
            let ext: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
            let view = RingView::heap(4).unwrap();
            let mut w = OutgoingRing::new(view.clone()).unwrap();
            let mut r = IncomingRing::new(view).unwrap();
            let header = PacketHeader { packet_type: TYPE_GPA_DIRECT, flags: 0, trans_id: 0 };
            prop_assert!(w.try_write(header, &ext, &payload).unwrap());
            w.commit().unwrap();
            let mut bytes = Vec::new();
            match r.read_packet(&mut bytes) {
                Ok(Some(info)) => {
                    let Some(crate::ring::ExternalData::GpaDirect { ranges }) = info.external else {
                        return Err(TestCaseError::fail("type 9 without ranges"));
                    };
                    if let Ok(segs) = t.resolve(&ranges) {
                        let view = ExternalView::new(segs.clone());
                        for s in &segs {
                            prop_assert!(s.start + s.len <= 3 * PAGE_SIZE);
                        }
                        prop_assert!(view.to_vec().iter().all(|&b| b == 0x5a));
                    }
                }
                Ok(None) => return Err(TestCaseError::fail("packet vanished")),
                Err(e) => prop_assert!(matches!(e, Error::RingCorrupt(_)), "{e}"),
            }
        }
    }
}
