//! Why a call through the C ABI was rejected.

#![forbid(unsafe_code)]

use crate::abi::{NtStatus, STATUS_INVALID_PARAMETER};

/// Why `libnetio` rejected a call. Every variant becomes an `NTSTATUS` only at the C boundary
/// ([`AbiError::status`]); the void functions log it through `tracing` instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AbiError {
    /// The characteristics pointer was NULL.
    #[error("the characteristics pointer is NULL")]
    NullCharacteristics,
    /// The out pointer for the registration handle was NULL.
    #[error("the handle out pointer is NULL")]
    NullHandleOut,
    /// `Length` of the characteristics is smaller than the structure.
    #[error("characteristics Length {length} is smaller than {expected}")]
    CharacteristicsTooShort {
        /// What the caller set.
        length: u16,
        /// `sizeof` the structure.
        expected: usize,
    },
    /// `Size` of the registration instance is smaller than the structure.
    #[error("registration instance Size {size} is smaller than {expected}")]
    RegistrationInstanceTooShort {
        /// What the caller set.
        size: u16,
        /// `sizeof(NPI_REGISTRATION_INSTANCE)`.
        expected: usize,
    },
    /// The attach callback was NULL.
    #[error("the attach callback is NULL")]
    MissingAttachCallback,
    /// The detach callback was NULL.
    #[error("the detach callback is NULL")]
    MissingDetachCallback,
    /// The registration instance's `NpiId` was NULL.
    #[error("NpiId is NULL")]
    NullNpiId,
    /// The registration instance's `ModuleId` was NULL (peers dereference it).
    #[error("ModuleId is NULL")]
    NullModuleId,
    /// An out pointer of `NmrClientAttachProvider` was NULL.
    #[error("an out pointer of NmrClientAttachProvider is NULL")]
    NullOutPointer,
    /// The registrar refused the call (bad, stale or wrong-kind handle; misuse of the
    /// lifecycle).
    #[error(transparent)]
    Nmr(#[from] nmr::Error),
    /// A panic inside `libnetio` (a bug) was caught at the boundary.
    #[error("internal error: a panic was caught at the C boundary")]
    Panicked,
}

impl AbiError {
    /// The `NTSTATUS` the C caller sees.
    #[must_use]
    pub fn status(self) -> NtStatus {
        match self {
            AbiError::Nmr(e) => e.status().0,
            _ => STATUS_INVALID_PARAMETER,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn misuse_maps_to_invalid_parameter() {
        assert_eq!(AbiError::NullNpiId.status(), STATUS_INVALID_PARAMETER);
        assert_eq!(AbiError::Panicked.status(), STATUS_INVALID_PARAMETER);
        assert_eq!(
            AbiError::Nmr(nmr::Error::AlreadyDeregistering).status(),
            STATUS_INVALID_PARAMETER
        );
        assert_eq!(
            AbiError::Nmr(nmr::Error::InsufficientResources).status(),
            crate::abi::STATUS_INSUFFICIENT_RESOURCES
        );
    }
}
