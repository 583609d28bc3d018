//! The few OS calls std and socket2 do not wrap safely. Every `unsafe` block of the crate is
//! here, one operation per block.

use socket2::{SockAddr, SockRef, Socket};
use std::ffi::CStr;
use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;

/// `send` with `MSG_NOSIGNAL`, so a reset peer gives `EPIPE` instead of `SIGPIPE`.
pub(crate) fn send(stream: &mio::net::TcpStream, buf: &[u8]) -> io::Result<usize> {
    SockRef::from(stream).send_with_flags(buf, libc::MSG_NOSIGNAL)
}

/// `recvfrom` with `MSG_TRUNC`: returns the datagram's real length (may exceed `buf.len()`).
pub(crate) fn recv_from(s: &Socket, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
    let len = buf.len();
    let ptr = buf.as_mut_ptr().cast::<MaybeUninit<u8>>();
    // SAFETY: `MaybeUninit<u8>` has the layout of `u8`; the slice covers exactly the
    // initialised bytes of `buf`, which stays mutably borrowed for the slice's lifetime, and
    // the kernel only ever writes initialised bytes into it.
    let uninit = unsafe { std::slice::from_raw_parts_mut(ptr, len) };
    let (n, addr) = s.recv_from_with_flags(uninit, libc::MSG_TRUNC)?;
    let addr = addr.as_socket().ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidData, "datagram from a non-IP address")
    })?;
    Ok((n, addr))
}

/// `getnameinfo` for the host part only (reverse lookup). `name_required` maps to NI_NAMEREQD.
pub(crate) fn reverse_lookup(addr: SocketAddr, name_required: bool) -> io::Result<Option<String>> {
    let sa = SockAddr::from(addr);
    let mut host = [0u8; 1025];
    let flags = if name_required { libc::NI_NAMEREQD } else { 0 };
    // SAFETY: `sa` is a valid socket address of `sa.len()` bytes; `host` is a writable buffer
    // of the length passed; no service buffer is requested (null, 0). getnameinfo is
    // thread-safe.
    let rc = unsafe {
        libc::getnameinfo(
            sa.as_ptr().cast::<libc::sockaddr>(),
            sa.len(),
            host.as_mut_ptr().cast::<libc::c_char>(),
            host.len() as libc::socklen_t,
            std::ptr::null_mut(),
            0,
            flags,
        )
    };
    match rc {
        0 => Ok(CStr::from_bytes_until_nul(&host)
            .ok()
            .map(|c| c.to_string_lossy().into_owned())),
        libc::EAI_NONAME => Ok(None),
        _ => Err(io::Error::other(format!("getnameinfo failed ({rc})"))),
    }
}
