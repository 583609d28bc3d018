//! `NTSTATUS` values as the untyped core passes them through, and the crate's error enum.

use std::fmt;

/// An `NTSTATUS` value. The untyped core passes attach results through unchanged (the
/// provider's status reaches the client as-is), so it needs the raw code; misuse of the
/// registrar itself is reported as [`Error`] instead.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Status(pub i32);

#[expect(
    clippy::cast_possible_wrap,
    reason = "NTSTATUS values are defined as unsigned hex literals"
)]
impl Status {
    /// `STATUS_SUCCESS`.
    pub const SUCCESS: Status = Status(0);
    /// `STATUS_PENDING`.
    pub const PENDING: Status = Status(0x0000_0103);
    /// `STATUS_BUFFER_OVERFLOW`.
    pub const BUFFER_OVERFLOW: Status = Status(0x8000_0005_u32 as i32);
    /// `STATUS_NOT_IMPLEMENTED`.
    pub const NOT_IMPLEMENTED: Status = Status(0xC000_0002_u32 as i32);
    /// `STATUS_INVALID_PARAMETER`.
    pub const INVALID_PARAMETER: Status = Status(0xC000_000D_u32 as i32);
    /// `STATUS_NO_MEMORY`.
    pub const NO_MEMORY: Status = Status(0xC000_0017_u32 as i32);
    /// `STATUS_INSUFFICIENT_RESOURCES`.
    pub const INSUFFICIENT_RESOURCES: Status = Status(0xC000_009A_u32 as i32);
    /// `STATUS_DEVICE_NOT_READY`.
    pub const DEVICE_NOT_READY: Status = Status(0xC000_00A3_u32 as i32);
    /// `STATUS_CANCELLED`.
    pub const CANCELLED: Status = Status(0xC000_0120_u32 as i32);
    /// `STATUS_INVALID_DEVICE_STATE`.
    pub const INVALID_DEVICE_STATE: Status = Status(0xC000_0184_u32 as i32);
    /// `STATUS_DEVICE_REMOVED`.
    pub const DEVICE_REMOVED: Status = Status(0xC000_02B6_u32 as i32);
    /// `STATUS_NOINTERFACE`.
    pub const NOINTERFACE: Status = Status(0xC000_02B9_u32 as i32);

    /// `NT_SUCCESS`: true for success and informational codes.
    #[must_use]
    pub const fn is_success(self) -> bool {
        self.0 >= 0
    }

    /// The symbolic name, for known codes.
    #[must_use]
    pub const fn name(self) -> Option<&'static str> {
        Some(match self {
            Status::SUCCESS => "STATUS_SUCCESS",
            Status::PENDING => "STATUS_PENDING",
            Status::BUFFER_OVERFLOW => "STATUS_BUFFER_OVERFLOW",
            Status::NOT_IMPLEMENTED => "STATUS_NOT_IMPLEMENTED",
            Status::INVALID_PARAMETER => "STATUS_INVALID_PARAMETER",
            Status::NO_MEMORY => "STATUS_NO_MEMORY",
            Status::INSUFFICIENT_RESOURCES => "STATUS_INSUFFICIENT_RESOURCES",
            Status::DEVICE_NOT_READY => "STATUS_DEVICE_NOT_READY",
            Status::CANCELLED => "STATUS_CANCELLED",
            Status::INVALID_DEVICE_STATE => "STATUS_INVALID_DEVICE_STATE",
            Status::DEVICE_REMOVED => "STATUS_DEVICE_REMOVED",
            Status::NOINTERFACE => "STATUS_NOINTERFACE",
            _ => return None,
        })
    }
}

impl fmt::Debug for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            #[expect(clippy::cast_sign_loss, reason = "printing the raw bit pattern")]
            None => write!(f, "NTSTATUS({:#010X})", self.0 as u32),
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Misuse of the registrar, reported instead of undefined behaviour.
///
/// Every variant maps to an `NTSTATUS` with [`Error::status`], which the C ABI returns.
#[derive(thiserror::Error, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// The handle does not name a live object: never issued, already closed, or stale.
    #[error("invalid handle: unknown, stale or already closed")]
    InvalidHandle,
    /// The handle names a live object of another kind (client vs provider vs binding).
    #[error("handle is of the wrong kind: expected {expected}, got {actual}")]
    WrongHandleKind {
        /// The kind the call needs.
        expected: &'static str,
        /// The kind of the handle given.
        actual: &'static str,
    },
    /// The registration is already deregistering (deregistration called twice).
    #[error("the registration is already deregistering")]
    AlreadyDeregistering,
    /// Wait was called on a registration that has not been deregistered.
    #[error("wait called before deregistration")]
    NotDeregistering,
    /// A detach completion arrived for a side whose detach is not pending (never notified,
    /// already answered done, or completed before).
    #[error("no detach is pending on this side of the binding")]
    NoPendingDetach,
    /// `NmrClientAttachProvider` was called outside the binding's `ClientAttachProvider`.
    #[error("the binding is not attaching (attach called outside ClientAttachProvider)")]
    NotAttaching,
    /// `NmrClientAttachProvider` was called again after it already succeeded.
    #[error("the binding is already attached")]
    AlreadyAttached,
    /// Waiting for a registration from inside one of its own callbacks would deadlock.
    #[error("wait called from inside a callback of the same registration (would deadlock)")]
    WaitInsideCallback,
    /// A registration argument is invalid.
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
    /// The registrar's handle space is exhausted.
    #[error("insufficient resources")]
    InsufficientResources,
}

impl Error {
    /// The `NTSTATUS` the C ABI reports for this error.
    #[must_use]
    pub const fn status(self) -> Status {
        match self {
            Error::NotAttaching | Error::AlreadyAttached => Status::INVALID_DEVICE_STATE,
            Error::InsufficientResources => Status::INSUFFICIENT_RESOURCES,
            _ => Status::INVALID_PARAMETER,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_match_ntstatus_values() {
        assert_eq!(Status::PENDING.0, 0x103);
        assert_eq!(Status::NOINTERFACE.0 as u32, 0xC000_02B9);
        assert!(Status::PENDING.is_success());
        assert!(!Status::NOINTERFACE.is_success());
        assert_eq!(format!("{:?}", Status(0x1234)), "NTSTATUS(0x00001234)");
    }

    #[test]
    fn misuse_maps_to_invalid_parameter() {
        assert_eq!(Error::InvalidHandle.status(), Status::INVALID_PARAMETER);
        assert_eq!(Error::NotDeregistering.status(), Status::INVALID_PARAMETER);
    }
}
