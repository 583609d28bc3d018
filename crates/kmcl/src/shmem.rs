//! Shared memory: the only module with `unsafe` code.
//!
//! A ring is a 4 KiB control page followed by its data area (see [`crate::ring`]). This
//! module provides the [`RingMemory`] trait the ring code runs on, and two backings for it:
//! a page-aligned heap allocation (two endpoints in one process) and a shared `mmap` of a
//! memfd (two processes). GPADL buffers ([`crate::gpadl`]) are [`Region`]s too, accessed
//! only through the bounds-checked copies [`Region::read_at`] and [`Region::write_at`].
//!
//! # Safety argument
//!
//! * Control words are accessed only through `AtomicU32` references created from pointers
//!   that are 4-byte aligned (the region is page aligned and every word offset is a multiple
//!   of 4) and inside the mapping, which lives as long as the [`Region`] (kept alive by an
//!   `Arc` in every [`RingView`]).
//! * Data bytes are copied with `ptr::copy_nonoverlapping` into or out of private buffers,
//!   after a bounds check against the data area. The ring protocol gives the producer
//!   exclusive use of the free space and the consumer of `[read_index, write_index)`, with
//!   release/acquire publication of the indices, so a well-behaved peer never writes bytes
//!   we are copying. A misbehaving peer *process* can make us copy garbage, never touch
//!   memory outside the mapping: the ring copies every packet out once and validates the
//!   private copy, never the shared bytes.

use std::alloc::Layout;
use std::fs::File;
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::AtomicU32 as StdAtomicU32;

use crate::Error;
use crate::sync::Arc;
use crate::sync::atomic::Ordering;

/// Size of a page, of the control page, and the granule of ring data areas.
pub const PAGE_SIZE: usize = 4096;

/// One of the control-page words of a ring, with its byte offset in the control page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum ControlWord {
    /// Byte 0: written by the producer; offset in the data area where the next packet goes.
    WriteIndex = 0,
    /// Byte 4: written by the consumer; offset of the next unread packet.
    ReadIndex = 4,
    /// Byte 8: written by the consumer; non-zero means "do not signal me".
    InterruptMask = 8,
    /// Byte 12: written by the producer; non-zero means "signal me once this many bytes are free".
    PendingSendSize = 12,
    /// Byte 64: feature bits; bit 0 = the producer supports `pending_send_size`.
    FeatureBits = 64,
}

/// Memory a ring runs on: a control page of atomic words plus a data area.
///
/// Implementations copy bytes; they never hand out references into shared memory, so the
/// ring code above stays free of `unsafe`. `read` and `write` are called only with ranges
/// inside `0..data_len()` (the ring splits accesses that wrap); an implementation may panic
/// on a range outside that, which would be a bug in this crate, not something a peer can cause.
pub trait RingMemory: Send + Sync {
    /// Length of the data area in bytes (a non-zero multiple of 8).
    fn data_len(&self) -> u32;
    /// Loads a control word.
    fn load(&self, word: ControlWord, order: Ordering) -> u32;
    /// Stores a control word.
    fn store(&self, word: ControlWord, value: u32, order: Ordering);
    /// Copies `dst.len()` bytes starting at `offset` of the data area into `dst`.
    fn read(&self, offset: u32, dst: &mut [u8]);
    /// Copies `src` into the data area starting at `offset`.
    fn write(&self, offset: u32, src: &[u8]);
}

impl<T: RingMemory + ?Sized> RingMemory for Arc<T> {
    fn data_len(&self) -> u32 {
        (**self).data_len()
    }
    fn load(&self, word: ControlWord, order: Ordering) -> u32 {
        (**self).load(word, order)
    }
    fn store(&self, word: ControlWord, value: u32, order: Ordering) {
        (**self).store(word, value, order)
    }
    fn read(&self, offset: u32, dst: &mut [u8]) {
        (**self).read(offset, dst)
    }
    fn write(&self, offset: u32, src: &[u8]) {
        (**self).write(offset, src)
    }
}

/// What keeps a region's memory alive.
#[derive(Debug)]
enum Backing {
    /// `std::alloc` allocation with this layout.
    Heap(Layout),
    /// Shared mapping of a file descriptor (the fd itself may be closed).
    Mapped,
}

/// A page-aligned block of memory holding one or more rings, or a GPADL buffer.
#[derive(Debug)]
pub struct Region {
    base: NonNull<u8>,
    len: usize,
    backing: Backing,
    /// False for a read-only mapping: [`Region::write_at`] refuses, and the ring views
    /// (which store control words) are never built on it.
    writable: bool,
}

// SAFETY: `Region` owns its allocation or mapping; all access goes through atomics or
// bounds-checked copies (see the module's safety argument), which are fine from any thread.
unsafe impl Send for Region {}
// SAFETY: as above; `&Region` only allows atomic word access and copies.
unsafe impl Sync for Region {}

impl Region {
    /// Allocates `len` zeroed, page-aligned bytes on the heap.
    pub fn heap(len: usize) -> Result<Arc<Region>, Error> {
        if len == 0 || !len.is_multiple_of(PAGE_SIZE) {
            return Err(Error::InvalidArgument(
                "region length must be a non-zero multiple of 4096",
            ));
        }
        let layout = Layout::from_size_align(len, PAGE_SIZE)
            .map_err(|_| Error::InvalidArgument("region too large"))?;
        // SAFETY: `layout` has a non-zero size (checked above).
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        let base = NonNull::new(ptr).ok_or(Error::NoMemory)?;
        Ok(Arc::new(Region {
            base,
            len,
            backing: Backing::Heap(layout),
            writable: true,
        }))
    }

    /// Creates a memfd of `len` zeroed bytes and maps it shared; returns the mapping and the fd
    /// (to pass to the peer).
    /// With `sealed`, the file is sealed against shrinking and growing, so the peer that
    /// maps it cannot be made to fault by truncation.
    pub fn memfd(name: &str, len: usize, sealed: bool) -> Result<(Arc<Region>, OwnedFd), Error> {
        if len == 0 || !len.is_multiple_of(PAGE_SIZE) {
            return Err(Error::InvalidArgument(
                "region length must be a non-zero multiple of 4096",
            ));
        }
        let cname = std::ffi::CString::new(name).map_err(|_| Error::InvalidArgument("name"))?;
        use nix::sys::memfd::MemFdCreateFlag;
        let fd = nix::sys::memfd::memfd_create(
            &cname,
            MemFdCreateFlag::MFD_CLOEXEC | MemFdCreateFlag::MFD_ALLOW_SEALING,
        )
        .map_err(|e| Error::Io(e.into()))?;
        let file = File::from(fd);
        file.set_len(len as u64).map_err(Error::Io)?;
        let fd = OwnedFd::from(file);
        if sealed {
            use nix::fcntl::{FcntlArg, SealFlag};
            let seals = SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL;
            nix::fcntl::fcntl(fd.as_raw_fd(), FcntlArg::F_ADD_SEALS(seals))
                .map_err(|e| Error::Io(e.into()))?;
        }
        let region = Self::map(fd.as_fd(), len)?;
        Ok((region, fd))
    }

    /// Maps `len` bytes of `fd` shared, read-write, after checking with `fstat` that the
    /// file is at least that long. If another process can shrink the file afterwards,
    /// accesses would fault (`SIGBUS`): require the `F_SEAL_SHRINK` seal on files from an
    /// untrusted peer, as the Unix transport does.
    pub fn map(fd: impl AsFd, len: usize) -> Result<Arc<Region>, Error> {
        Self::map_with(fd, len, true)
    }

    /// Like [`Region::map`], read-only (`PROT_READ`) unless `writable`: the process cannot
    /// write the memory even by mistake, and [`Region::write_at`] refuses with
    /// [`Error::GpadlReadOnly`].
    pub fn map_with(fd: impl AsFd, len: usize, writable: bool) -> Result<Arc<Region>, Error> {
        let nz = NonZeroUsize::new(len).ok_or(Error::InvalidArgument("empty mapping"))?;
        if !len.is_multiple_of(PAGE_SIZE) {
            return Err(Error::InvalidArgument(
                "mapping length must be a multiple of 4096",
            ));
        }
        let file_len = nix::sys::stat::fstat(fd.as_fd().as_raw_fd())
            .map_err(|e| Error::Io(e.into()))?
            .st_size;
        if file_len < 0 || (file_len as u64) < len as u64 {
            return Err(Error::Protocol(
                "shared memory file is smaller than the announced layout",
            ));
        }
        use nix::sys::mman::{MapFlags, ProtFlags};
        let prot = if writable {
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE
        } else {
            ProtFlags::PROT_READ
        };
        // SAFETY: we ask for a fresh shared mapping at an address the kernel chooses; it does
        // not alias any Rust object. Size and file length were checked above.
        let ptr = unsafe { nix::sys::mman::mmap(None, nz, prot, MapFlags::MAP_SHARED, fd, 0) }
            .map_err(|e| Error::Io(e.into()))?;
        Ok(Arc::new(Region {
            base: ptr.cast(),
            len,
            backing: Backing::Mapped,
            writable,
        }))
    }

    /// Whether [`Region::write_at`] is allowed.
    pub fn is_writable(&self) -> bool {
        self.writable
    }

    /// `base + offset` after checking that `offset..offset + len` lies inside the region.
    fn checked_ptr(&self, offset: usize, len: usize) -> Result<*mut u8, Error> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(self.base.as_ptr().wrapping_add(offset)),
            _ => Err(Error::AccessOutOfBounds {
                offset,
                len,
                size: self.len,
            }),
        }
    }

    /// Copies `dst.len()` bytes starting at byte `offset` of the region into `dst`.
    /// `AccessOutOfBounds` if the range does not lie inside the region.
    ///
    /// The memory may be shared with another process that writes it concurrently: the copy
    /// then holds whatever bytes were there (callers treat them as untrusted), never bytes
    /// from outside the region.
    pub fn read_at(&self, offset: usize, dst: &mut [u8]) -> Result<(), Error> {
        let src = self.checked_ptr(offset, dst.len())?;
        // SAFETY: `src..src + dst.len()` is inside the region (checked above), which stays
        // mapped while `&self` lives; `dst` is private memory that cannot overlap a region
        // (regions are fresh allocations or mappings we own). See the module's safety
        // argument for concurrent writes by a peer.
        unsafe { std::ptr::copy_nonoverlapping(src.cast_const(), dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }

    /// Copies `src` into the region starting at byte `offset`. `AccessOutOfBounds` if the
    /// range does not lie inside the region, `GpadlReadOnly` on a read-only mapping.
    pub fn write_at(&self, offset: usize, src: &[u8]) -> Result<(), Error> {
        if !self.writable {
            return Err(Error::GpadlReadOnly);
        }
        let dst = self.checked_ptr(offset, src.len())?;
        // SAFETY: `dst..dst + src.len()` is inside the region (checked above) and writable
        // (checked above: heap regions and read-write mappings only); `src` is private
        // memory. Which bytes of a shared buffer a side may write is the business of the
        // protocol on top; a concurrent writer can only make readers see mixed bytes.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len()) };
        Ok(())
    }

    /// Total length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: regions are never empty.
    pub fn is_empty(&self) -> bool {
        false
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        match self.backing {
            Backing::Heap(layout) => {
                // SAFETY: `base` came from `alloc_zeroed(layout)` and is freed once, here.
                unsafe { std::alloc::dealloc(self.base.as_ptr(), layout) }
            }
            Backing::Mapped => {
                // SAFETY: `base`/`len` describe a mapping we created and nobody else unmaps;
                // no reference into it outlives the region (we only ever copy).
                let r = unsafe { nix::sys::mman::munmap(self.base.cast(), self.len) };
                if let Err(e) = r {
                    tracing::error!(error = %e, "munmap failed");
                }
            }
        }
    }
}

/// One ring inside a [`Region`]: the control page at `offset`, the data area right after it.
#[derive(Debug, Clone)]
pub struct RingView {
    region: Arc<Region>,
    offset: usize,
    data_len: u32,
}

impl RingView {
    /// A ring whose control page starts at byte `offset` of `region`, with `data_pages` pages
    /// of data.
    pub fn new(region: Arc<Region>, offset: usize, data_pages: u32) -> Result<Self, Error> {
        let data_len = (data_pages as usize)
            .checked_mul(PAGE_SIZE)
            .filter(|&l| l > 0 && l <= (u32::MAX as usize) / 2)
            .ok_or(Error::InvalidArgument("ring data page count"))?;
        let end = offset
            .checked_add(PAGE_SIZE)
            .and_then(|e| e.checked_add(data_len))
            .ok_or(Error::InvalidArgument("ring offset"))?;
        if !offset.is_multiple_of(PAGE_SIZE) || end > region.len {
            return Err(Error::InvalidArgument("ring does not fit in its region"));
        }
        if !region.writable {
            return Err(Error::InvalidArgument("a ring needs a writable region"));
        }
        Ok(Self {
            region,
            offset,
            data_len: data_len as u32,
        })
    }

    /// A fresh zeroed heap ring with `data_pages` pages of data.
    pub fn heap(data_pages: u32) -> Result<Self, Error> {
        let len = (data_pages as usize + 1)
            .checked_mul(PAGE_SIZE)
            .ok_or(Error::InvalidArgument("ring data page count"))?;
        Self::new(Region::heap(len)?, 0, data_pages)
    }

    fn word(&self, word: ControlWord) -> &StdAtomicU32 {
        let ptr = self
            .region
            .base
            .as_ptr()
            .wrapping_add(self.offset + word as usize);
        // SAFETY: `ptr` is inside the region (control page, offset < 4096), 4-byte aligned
        // (page-aligned base, word offsets are multiples of 4), valid for the region's
        // lifetime which outlives `&self`, and only ever accessed atomically.
        unsafe { StdAtomicU32::from_ptr(ptr.cast::<u32>()) }
    }

    fn data_ptr(&self, offset: u32, len: usize) -> *mut u8 {
        assert!(
            (offset as usize).saturating_add(len) <= self.data_len as usize,
            "ring data access out of bounds (bug in kmcl)"
        );
        self.region
            .base
            .as_ptr()
            .wrapping_add(self.offset + PAGE_SIZE + offset as usize)
    }
}

impl RingMemory for RingView {
    fn data_len(&self) -> u32 {
        self.data_len
    }

    fn load(&self, word: ControlWord, order: Ordering) -> u32 {
        self.word(word).load(order)
    }

    fn store(&self, word: ControlWord, value: u32, order: Ordering) {
        self.word(word).store(value, order)
    }

    fn read(&self, offset: u32, dst: &mut [u8]) {
        let src = self.data_ptr(offset, dst.len());
        // SAFETY: `src..src+len` is inside the data area (checked by `data_ptr`), `dst` is a
        // private buffer that cannot overlap shared memory; see the module safety argument
        // for concurrent peer writes.
        unsafe { std::ptr::copy_nonoverlapping(src.cast_const(), dst.as_mut_ptr(), dst.len()) }
    }

    fn write(&self, offset: u32, src: &[u8]) {
        let dst = self.data_ptr(offset, src.len());
        // SAFETY: `dst..dst+len` is inside the data area (checked by `data_ptr`) and is free
        // space owned by this producer under the ring protocol; `src` is private memory.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len()) }
    }
}

/// Takes ownership of a file descriptor the kernel just installed in this process through
/// `SCM_RIGHTS` (as reported by `recvmsg`).
pub(crate) fn adopt_received_fd(raw: std::os::fd::RawFd) -> OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: `raw` was returned by `recvmsg` in an SCM_RIGHTS control message: the kernel
    // created this descriptor for us in this call, it is open, and nothing else owns it;
    // every such descriptor is adopted exactly once, right after `recvmsg`.
    unsafe { OwnedFd::from_raw_fd(raw) }
}
