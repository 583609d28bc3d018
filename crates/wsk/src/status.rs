//! NTSTATUS-like status values carried by every WSK operation.

use core::fmt;

/// An NTSTATUS value: the status an operation (an "IRP") completed with.
///
/// Negative values (severity "error") are failures, `0..=0x3FFF_FFFF` are successes and
/// `0x8000_0000..` (as u32) are warnings such as [`Status::BUFFER_OVERFLOW`].
///
/// ```
/// use wsk::Status;
/// assert!(Status::SUCCESS.is_success());
/// assert!(!Status::CANCELLED.is_success());
/// assert_eq!(format!("{}", Status::CANCELLED), "STATUS_CANCELLED (0xC0000120)");
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Status(pub i32);

macro_rules! statuses {
    ($($(#[$doc:meta])* $name:ident = $val:expr;)*) => {
        impl Status {
            $($(#[$doc])* pub const $name: Status = Status($val as u32 as i32);)*

            /// The symbolic name, if this is one of the values the crate knows.
            pub fn name(self) -> Option<&'static str> {
                match self {
                    $(Status::$name => Some(concat!("STATUS_", stringify!($name))),)*
                    _ => None,
                }
            }
        }
    };
}

statuses! {
    /// The operation succeeded.
    SUCCESS = 0x0000_0000u32;
    /// The operation was accepted and completes later.
    PENDING = 0x0000_0103u32;
    /// The output buffer was too small; the data was truncated or the size needed returned.
    BUFFER_OVERFLOW = 0x8000_0005u32;
    /// Generic failure.
    UNSUCCESSFUL = 0xC000_0001u32;
    /// The request is not implemented.
    NOT_IMPLEMENTED = 0xC000_0002u32;
    /// A parameter was invalid.
    INVALID_PARAMETER = 0xC000_000Du32;
    /// The request is not valid for this socket category.
    INVALID_DEVICE_REQUEST = 0xC000_0010u32;
    /// Memory could not be allocated.
    NO_MEMORY = 0xC000_0017u32;
    /// A buffer was too small to hold the result.
    BUFFER_TOO_SMALL = 0xC000_0023u32;
    /// Resources were exhausted.
    INSUFFICIENT_RESOURCES = 0xC000_009Au32;
    /// The device is not ready (provider absent or deregistering).
    DEVICE_NOT_READY = 0xC000_00A3u32;
    /// The operation timed out.
    IO_TIMEOUT = 0xC000_00B5u32;
    /// The request is not supported (for example an unsupported address family).
    NOT_SUPPORTED = 0xC000_00BBu32;
    /// The request was not accepted.
    REQUEST_NOT_ACCEPTED = 0xC000_00D0u32;
    /// The operation was cancelled.
    CANCELLED = 0xC000_0120u32;
    /// The socket was closed.
    FILE_CLOSED = 0xC000_0128u32;
    /// The socket is not in a state that allows the request.
    INVALID_DEVICE_STATE = 0xC000_0184u32;
    /// The data was not accepted by the event callback.
    DATA_NOT_ACCEPTED = 0xC000_021Bu32;
    /// A datagram or buffer has an invalid size.
    INVALID_BUFFER_SIZE = 0xC000_0206u32;
    /// An address was malformed.
    INVALID_ADDRESS_COMPONENT = 0xC000_0207u32;
    /// The address is already in use.
    ADDRESS_ALREADY_EXISTS = 0xC000_020Au32;
    /// The connection was disconnected.
    CONNECTION_DISCONNECTED = 0xC000_020Cu32;
    /// The connection was reset by the peer.
    CONNECTION_RESET = 0xC000_020Du32;
    /// The network is unreachable.
    NETWORK_UNREACHABLE = 0xC000_023Cu32;
    /// The host is unreachable.
    HOST_UNREACHABLE = 0xC000_023Du32;
    /// The remote system refused the connection.
    CONNECTION_REFUSED = 0xC000_0236u32;
    /// The connection was aborted locally.
    CONNECTION_ABORTED = 0xC000_0241u32;
    /// The name or object was not found.
    NOT_FOUND = 0xC000_0225u32;
    /// The device was removed.
    DEVICE_REMOVED = 0xC000_02B6u32;
    /// The requested interface (WSK version) is not supported.
    NOINTERFACE = 0xC000_02B9u32;
}

impl Status {
    /// True for success and informational values (NT_SUCCESS).
    pub const fn is_success(self) -> bool {
        self.0 >= 0
    }

    /// True for error-severity values.
    pub const fn is_error(self) -> bool {
        (self.0 as u32) >= 0xC000_0000
    }
}

impl From<nmr::Status> for Status {
    fn from(s: nmr::Status) -> Status {
        Status(s.0)
    }
}

impl From<Status> for nmr::Status {
    fn from(s: Status) -> nmr::Status {
        nmr::Status(s.0)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => write!(f, "{n} (0x{:08X})", self.0 as u32),
            None => write!(f, "0x{:08X}", self.0 as u32),
        }
    }
}

impl fmt::Debug for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn severities_classify() {
        assert!(Status::PENDING.is_success());
        assert!(!Status::BUFFER_OVERFLOW.is_success() && !Status::BUFFER_OVERFLOW.is_error());
        assert!(Status::NOINTERFACE.is_error());
        assert_eq!(Status::NOINTERFACE.0 as u32, 0xC000_02B9);
    }
}
