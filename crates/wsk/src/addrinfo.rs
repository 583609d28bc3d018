//! Name resolution: `WskGetAddressInfo`, `WskFreeAddressInfo`, `WskGetNameInfo`.
//!
//! Lookups may block, so they run on a resolver thread, never on an I/O thread; the caller
//! gets an [`crate::Op`] like any other operation.

use crate::socket::{Family, IPPROTO_TCP, IPPROTO_UDP, SOCK_DGRAM, SOCK_STREAM};
use crate::{Error, Result};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};

/// Hints for [`crate::WskClient::get_address_info`] (a subset of `ADDRINFOEXW`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AddrInfoHints {
    /// Only this family (`None` = both).
    pub family: Option<Family>,
    /// Only this socket type (`SOCK_STREAM` / `SOCK_DGRAM`; `None` = both).
    pub socket_type: Option<u16>,
    /// `AI_PASSIVE`: with no node, return wildcard addresses instead of loopback.
    pub passive: bool,
}

/// One entry of an address-info result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddrInfo {
    /// Address family.
    pub family: Family,
    /// `SOCK_STREAM` or `SOCK_DGRAM`.
    pub socket_type: u16,
    /// `IPPROTO_TCP` or `IPPROTO_UDP`.
    pub protocol: u32,
    /// The address with the service's port.
    pub addr: SocketAddr,
}

/// The result of `WskGetAddressInfo`; free it with `WskFreeAddressInfo` (or drop it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AddrInfoList {
    /// Entries in resolver order.
    pub entries: Vec<AddrInfo>,
}

/// Flags of `WskGetNameInfo` (`NI_*` values as in ws2def.h).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NameInfoFlags(pub u32);

impl NameInfoFlags {
    /// `NI_NUMERICHOST`.
    pub const NUMERICHOST: NameInfoFlags = NameInfoFlags(0x02);
    /// `NI_NAMEREQD`: fail if the host has no name.
    pub const NAMEREQD: NameInfoFlags = NameInfoFlags(0x04);
    /// `NI_NUMERICSERV`.
    pub const NUMERICSERV: NameInfoFlags = NameInfoFlags(0x08);
    /// `NI_DGRAM`: the service is a datagram service.
    pub const DGRAM: NameInfoFlags = NameInfoFlags(0x10);
    /// `NI_NUMERICHOST | NI_NUMERICSERV`.
    pub const NUMERIC: NameInfoFlags = NameInfoFlags(0x0A);

    fn has(self, f: NameInfoFlags) -> bool {
        self.0 & f.0 == f.0
    }
}

/// The result of `WskGetNameInfo`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NameInfo {
    /// Host name (or numeric address).
    pub host: String,
    /// Service name (or numeric port).
    pub service: String,
}

const SERVICES: &[(&str, u16)] = &[
    ("echo", 7),
    ("discard", 9),
    ("daytime", 13),
    ("ftp", 21),
    ("ssh", 22),
    ("telnet", 23),
    ("smtp", 25),
    ("domain", 53),
    ("http", 80),
    ("https", 443),
];

fn service_port(service: &str) -> Result<u16> {
    if let Ok(p) = service.parse::<u16>() {
        return Ok(p);
    }
    SERVICES
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(service))
        .map(|&(_, p)| p)
        .ok_or(Error::NameNotFound)
}

/// Blocking implementation of `WskGetAddressInfo`.
pub(crate) fn lookup(
    node: Option<&str>,
    service: Option<&str>,
    hints: AddrInfoHints,
) -> Result<AddrInfoList> {
    if node.is_none() && service.is_none() {
        return Err(Error::InvalidParameter("node and service are both absent"));
    }
    if let Some(t) = hints.socket_type
        && t != SOCK_STREAM
        && t != SOCK_DGRAM
    {
        return Err(Error::Unsupported("socket type"));
    }
    let port = service.map(service_port).transpose()?.unwrap_or(0);
    let addrs: Vec<SocketAddr> = match node {
        None if hints.passive => {
            vec![
                (Ipv6Addr::UNSPECIFIED, port).into(),
                (Ipv4Addr::UNSPECIFIED, port).into(),
            ]
        }
        None => vec![
            (Ipv6Addr::LOCALHOST, port).into(),
            (Ipv4Addr::LOCALHOST, port).into(),
        ],
        Some(n) => match n.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => (n, port)
                .to_socket_addrs()
                .map_err(|_| Error::NameNotFound)?
                .collect(),
        },
    };
    let mut entries = Vec::new();
    for addr in addrs {
        let family = Family::of(&addr);
        if hints.family.is_some_and(|f| f != family) {
            continue;
        }
        for (ty, proto) in [(SOCK_STREAM, IPPROTO_TCP), (SOCK_DGRAM, IPPROTO_UDP)] {
            if hints.socket_type.is_some_and(|t| t != ty) {
                continue;
            }
            let e = AddrInfo {
                family,
                socket_type: ty,
                protocol: proto,
                addr,
            };
            if !entries.contains(&e) {
                entries.push(e);
            }
        }
    }
    if entries.is_empty() {
        return Err(Error::NameNotFound);
    }
    Ok(AddrInfoList { entries })
}

/// Blocking implementation of `WskGetNameInfo`.
pub(crate) fn name_info(addr: SocketAddr, flags: NameInfoFlags) -> Result<NameInfo> {
    let host = if flags.has(NameInfoFlags::NUMERICHOST) {
        addr.ip().to_string()
    } else {
        match crate::sys::reverse_lookup(addr, flags.has(NameInfoFlags::NAMEREQD)) {
            Ok(Some(h)) => h,
            Ok(None) => return Err(Error::NameNotFound),
            Err(_) => return Err(Error::NameNotFound),
        }
    };
    let service = if flags.has(NameInfoFlags::NUMERICSERV) {
        addr.port().to_string()
    } else {
        SERVICES
            .iter()
            .find(|&&(_, p)| p == addr.port())
            .map_or_else(|| addr.port().to_string(), |(n, _)| (*n).to_owned())
    };
    Ok(NameInfo { host, service })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_lookup_gives_both_socket_types() {
        let l = lookup(Some("127.0.0.1"), Some("80"), AddrInfoHints::default()).unwrap();
        assert_eq!(l.entries.len(), 2);
        assert!(
            l.entries
                .iter()
                .all(|e| e.addr == "127.0.0.1:80".parse().unwrap())
        );
    }

    #[test]
    fn named_service_and_family_filter() {
        let hints = AddrInfoHints {
            family: Some(Family::V6),
            socket_type: Some(SOCK_STREAM),
            passive: false,
        };
        let l = lookup(None, Some("http"), hints).unwrap();
        assert_eq!(
            l.entries,
            vec![AddrInfo {
                family: Family::V6,
                socket_type: SOCK_STREAM,
                protocol: IPPROTO_TCP,
                addr: "[::1]:80".parse().unwrap()
            }]
        );
    }

    #[test]
    fn bad_inputs_are_rejected() {
        assert_eq!(
            lookup(None, None, AddrInfoHints::default()),
            Err(Error::InvalidParameter("node and service are both absent"))
        );
        assert_eq!(
            lookup(
                Some("127.0.0.1"),
                Some("no-such-service"),
                AddrInfoHints::default()
            ),
            Err(Error::NameNotFound)
        );
    }
}
