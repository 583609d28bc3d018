//! The crate's error type: what went wrong with a WSK operation.

use crate::Status;
use std::io;

/// Why a WSK operation failed. Every variant maps to one NTSTATUS value via [`Error::status`].
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The operation was cancelled by the caller or because its socket closed.
    #[error("operation cancelled")]
    Cancelled,
    /// The socket has already been closed.
    #[error("socket is closed")]
    SocketClosed,
    /// A parameter was invalid; the text names it.
    #[error("invalid parameter: {0}")]
    InvalidParameter(&'static str),
    /// An address was malformed or does not fit the socket (family mismatch, port 0 to connect, ...).
    #[error("invalid address: {0}")]
    InvalidAddress(&'static str),
    /// The address family, socket type or protocol is not supported.
    #[error("unsupported {0}")]
    Unsupported(&'static str),
    /// The operation does not exist for this socket category.
    #[error("operation not valid for a {0} socket")]
    WrongCategory(&'static str),
    /// The socket is not in a state that allows the operation (e.g. not bound, not connected).
    #[error("invalid socket state: {0}")]
    InvalidState(&'static str),
    /// A caller buffer is too small; `needed` bytes are required.
    #[error("buffer too small: {needed} bytes needed")]
    BufferTooSmall {
        /// Size in bytes the caller must provide.
        needed: usize,
    },
    /// An output buffer is too small (`STATUS_BUFFER_OVERFLOW`); `needed` bytes are required.
    #[error("output buffer too small: {needed} bytes needed")]
    BufferOverflow {
        /// Size in bytes the caller must provide (`*OutputSizeReturned`).
        needed: usize,
    },
    /// The datagram is too large for the transport.
    #[error("message too large")]
    MessageTooLarge,
    /// The local address is already in use.
    #[error("address already in use")]
    AddressInUse,
    /// The local address is not available on this host.
    #[error("address not available")]
    AddressNotAvailable,
    /// The peer refused the connection.
    #[error("connection refused")]
    ConnectionRefused,
    /// The peer reset the connection.
    #[error("connection reset by peer")]
    ConnectionReset,
    /// The connection was aborted locally.
    #[error("connection aborted")]
    ConnectionAborted,
    /// The connection was gracefully disconnected; no more data can be sent.
    #[error("connection disconnected")]
    Disconnected,
    /// The network or host is unreachable.
    #[error("unreachable")]
    Unreachable,
    /// A name could not be resolved.
    #[error("name not found")]
    NameNotFound,
    /// A wait timed out.
    #[error("timed out")]
    TimedOut,
    /// A blocking wait was attempted on a provider I/O thread (inside an event callback or a
    /// completion routine), where it would deadlock.
    #[error("blocking wait on a WSK I/O thread")]
    WouldDeadlock,
    /// The provider is not available (not attached yet, detaching, or deregistering).
    #[error("provider not ready")]
    DeviceNotReady,
    /// The requested WSK version is not supported by the provider.
    #[error("WSK version not supported")]
    NoInterface,
    /// The provider has shut down.
    #[error("provider shut down")]
    ProviderShutDown,
    /// The control code is not implemented.
    #[error("not implemented")]
    NotImplemented,
    /// The registrar refused a registration call.
    #[error("registrar: {0}")]
    Registrar(#[from] nmr::Error),
    /// Any other OS error, by errno.
    #[error("os error {0}")]
    Os(i32),
}

impl Error {
    /// The NTSTATUS value this error completes an operation with.
    pub fn status(&self) -> Status {
        match self {
            Error::Cancelled => Status::CANCELLED,
            Error::SocketClosed => Status::FILE_CLOSED,
            Error::InvalidParameter(_) => Status::INVALID_PARAMETER,
            Error::InvalidAddress(_) => Status::INVALID_ADDRESS_COMPONENT,
            Error::Unsupported(_) => Status::NOT_SUPPORTED,
            Error::WrongCategory(_) => Status::INVALID_DEVICE_REQUEST,
            Error::InvalidState(_) => Status::INVALID_DEVICE_STATE,
            Error::BufferTooSmall { .. } => Status::BUFFER_TOO_SMALL,
            Error::BufferOverflow { .. } => Status::BUFFER_OVERFLOW,
            Error::MessageTooLarge => Status::INVALID_BUFFER_SIZE,
            Error::AddressInUse => Status::ADDRESS_ALREADY_EXISTS,
            Error::AddressNotAvailable => Status::INVALID_ADDRESS_COMPONENT,
            Error::ConnectionRefused => Status::CONNECTION_REFUSED,
            Error::ConnectionReset => Status::CONNECTION_RESET,
            Error::ConnectionAborted => Status::CONNECTION_ABORTED,
            Error::Disconnected => Status::CONNECTION_DISCONNECTED,
            Error::Unreachable => Status::HOST_UNREACHABLE,
            Error::NameNotFound => Status::NOT_FOUND,
            Error::TimedOut => Status::IO_TIMEOUT,
            Error::WouldDeadlock => Status::INVALID_DEVICE_STATE,
            Error::DeviceNotReady => Status::DEVICE_NOT_READY,
            Error::NoInterface => Status::NOINTERFACE,
            Error::ProviderShutDown => Status::DEVICE_REMOVED,
            Error::NotImplemented => Status::NOT_IMPLEMENTED,
            Error::Registrar(e) => Status::from(e.status()),
            Error::Os(_) => Status::UNSUCCESSFUL,
        }
    }

    /// Classify an OS error from a socket call.
    pub(crate) fn from_io(e: &io::Error) -> Error {
        use io::ErrorKind as K;
        match e.kind() {
            K::ConnectionRefused => Error::ConnectionRefused,
            K::ConnectionReset | K::BrokenPipe => Error::ConnectionReset,
            K::ConnectionAborted => Error::ConnectionAborted,
            K::NotConnected => Error::InvalidState("not connected"),
            K::AddrInUse => Error::AddressInUse,
            K::AddrNotAvailable => Error::AddressNotAvailable,
            K::TimedOut => Error::TimedOut,
            K::InvalidInput => Error::InvalidParameter("rejected by the OS"),
            K::HostUnreachable | K::NetworkUnreachable => Error::Unreachable,
            K::Unsupported => Error::Unsupported("operation"),
            _ => match e.raw_os_error() {
                Some(libc::EMSGSIZE) => Error::MessageTooLarge,
                Some(libc::EAFNOSUPPORT) => Error::Unsupported("address family"),
                Some(libc::EPROTONOSUPPORT) => Error::Unsupported("protocol"),
                Some(code) => Error::Os(code),
                None => Error::Os(0),
            },
        }
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::from_io(&e)
    }
}

/// The result of a WSK operation.
pub type Result<T, E = Error> = core::result::Result<T, E>;
