//! The crate's error type.

#![forbid(unsafe_code)]

use crate::ring::Corruption;

/// Everything that can go wrong in this crate.
///
/// The KMCL status each variant stands for is noted on it; the mapping to NTSTATUS
/// values belongs at a C boundary, not here.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An init setter was called after `enable` (KMCL: `INVALID_PARAMETER_1`, "not in the
    /// initialization phase").
    #[error("init setters are valid only before the channel is enabled")]
    NotInitializing,
    /// An argument was out of range (KMCL: `INVALID_PARAMETER_2`/`_3`).
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
    /// The operation is not valid in the channel's current state.
    #[error("invalid in the channel's current state: {0}")]
    InvalidState(&'static str),
    /// `cleanup` on a channel that is not disabled.
    #[error("cleanup requires a disabled channel")]
    NotDisabled,
    /// The channel was already cleaned up; the handle is no longer valid.
    #[error("the channel was cleaned up")]
    CleanedUp,
    /// `pause`, `start` or `disable` from inside a state-change callback.
    #[error("pause, start and disable may not be called from a state-change callback")]
    InStateCallback,
    /// A blocking call on the channel's dispatcher thread (e.g. from a packet callback),
    /// which would deadlock.
    #[error("blocking channel call from the channel's own callback thread")]
    WouldDeadlock,
    /// The packet is larger than the channel's maximum packet size or than the ring.
    #[error("packet larger than the maximum packet size or the ring")]
    PacketTooLarge,
    /// The packet did not fit in the ring and was not queued (KMCL: `BUFFER_OVERFLOW`).
    #[error("packet does not fit in the ring and was not queued")]
    BufferOverflow,
    /// The request timed out and was cancelled (KMCL: `CANCELLED`).
    #[error("request cancelled")]
    Cancelled,
    /// The channel closed or is shutting down (KMCL: `DEVICE_REMOVED`).
    #[error("channel closed or shutting down")]
    DeviceRemoved,
    /// The peer wrote an invalid ring; the channel stopped.
    #[error("ring corrupt: {0}")]
    RingCorrupt(Corruption),
    /// The receiver failed a packet (`PacketFail`); its incoming queue stopped.
    #[error("incoming packet failed; queue stopped")]
    PacketFailed,
    /// The peer violated the control protocol.
    #[error("protocol violation: {0}")]
    Protocol(&'static str),
    /// The opened callback refused the channel.
    #[error("open refused by the opened callback")]
    OpenRefused,
    /// Out of memory.
    #[error("out of memory")]
    NoMemory,
    /// An operating-system call failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// A copy into or out of a buffer (GPADL buffer, mapping, external data) reached past
    /// its end.
    #[error("access of {len} bytes at offset {offset} is outside a buffer of {size} bytes")]
    AccessOutOfBounds {
        /// First byte of the access.
        offset: usize,
        /// Bytes accessed.
        len: usize,
        /// Size of the buffer.
        size: usize,
    },
    /// No GPADL with this handle exists on the channel (never created, already deleted,
    /// or torn down when the channel closed).
    #[error("unknown GPADL handle {0}")]
    UnknownGpadl(u32),
    /// The GPADL is already mapped: at most one mapping per GPADL at a time.
    #[error("GPADL {0} is already mapped")]
    GpadlAlreadyMapped(u32),
    /// Writing to a GPADL that was created read-only (a write mapping, or a write through
    /// a read-only mapping or external data).
    #[error("the GPADL is read-only")]
    GpadlReadOnly,
    /// The client is deleting this GPADL: it can no longer be mapped or named in a packet.
    #[error("GPADL {0} is being deleted")]
    GpadlBeingDeleted(u32),
    /// The server refused to create the GPADL (its status code).
    #[error("the server refused the GPADL (status {0:#x})")]
    GpadlRefused(u32),
    /// A heap GPADL buffer cannot be shared with another process: use `GpadlBuffer::shared`.
    #[error("this GPADL buffer cannot be shared with another process")]
    BufferNotShareable,
    /// The incoming packet carries no external data (it is not a GPA-direct packet).
    #[error("the packet has no external data")]
    NoExternalData,
    /// A GPA-direct range names pages outside the GPADL, or bytes past its end.
    #[error("external data range outside GPADL {handle} ({size} bytes)")]
    ExternalRangeOutOfBounds {
        /// The GPADL the range names.
        handle: u32,
        /// The GPADL's size in bytes.
        size: usize,
    },
    /// A GPA-direct range that cannot describe GPADL memory: empty, an in-page offset of
    /// 4096 or more, or page numbers that are not consecutive pages of one GPADL.
    #[error("malformed external data range: {0}")]
    ExternalRangeMalformed(&'static str),
}

impl Error {
    /// A copy for delivering one error to several waiters (`io::Error` is not `Clone`).
    pub(crate) fn duplicate(&self) -> Error {
        match self {
            Self::NotInitializing => Self::NotInitializing,
            Self::InvalidArgument(s) => Self::InvalidArgument(s),
            Self::InvalidState(s) => Self::InvalidState(s),
            Self::NotDisabled => Self::NotDisabled,
            Self::CleanedUp => Self::CleanedUp,
            Self::InStateCallback => Self::InStateCallback,
            Self::WouldDeadlock => Self::WouldDeadlock,
            Self::PacketTooLarge => Self::PacketTooLarge,
            Self::BufferOverflow => Self::BufferOverflow,
            Self::Cancelled => Self::Cancelled,
            Self::DeviceRemoved => Self::DeviceRemoved,
            Self::RingCorrupt(c) => Self::RingCorrupt(*c),
            Self::PacketFailed => Self::PacketFailed,
            Self::Protocol(s) => Self::Protocol(s),
            Self::OpenRefused => Self::OpenRefused,
            Self::NoMemory => Self::NoMemory,
            Self::Io(e) => Self::Io(std::io::Error::new(e.kind(), e.to_string())),
            Self::AccessOutOfBounds { offset, len, size } => Self::AccessOutOfBounds {
                offset: *offset,
                len: *len,
                size: *size,
            },
            Self::UnknownGpadl(h) => Self::UnknownGpadl(*h),
            Self::GpadlAlreadyMapped(h) => Self::GpadlAlreadyMapped(*h),
            Self::GpadlReadOnly => Self::GpadlReadOnly,
            Self::GpadlBeingDeleted(h) => Self::GpadlBeingDeleted(*h),
            Self::GpadlRefused(s) => Self::GpadlRefused(*s),
            Self::BufferNotShareable => Self::BufferNotShareable,
            Self::NoExternalData => Self::NoExternalData,
            Self::ExternalRangeOutOfBounds { handle, size } => Self::ExternalRangeOutOfBounds {
                handle: *handle,
                size: *size,
            },
            Self::ExternalRangeMalformed(s) => Self::ExternalRangeMalformed(s),
        }
    }
}
