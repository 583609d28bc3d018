//! The WSK network programming interface: its id, version numbers and characteristics.

/// `NPI_WSK_INTERFACE_ID` = {2227E803-8D8B-11D4-ABAD-009027719E09}, as the 16 bytes of a
/// `GUID` in memory (little-endian `Data1..Data3`).
pub const NPI_WSK_INTERFACE_ID_BYTES: [u8; 16] = [
    0x03, 0xE8, 0x27, 0x22, 0x8B, 0x8D, 0xD4, 0x11, 0xAB, 0xAD, 0x00, 0x90, 0x27, 0x71, 0x9E, 0x09,
];

/// `MAKE_WSK_VERSION(major, minor)`.
pub const fn make_wsk_version(major: u8, minor: u8) -> u16 {
    ((major as u16) << 8) | minor as u16
}

/// `WSK_MAJOR_VERSION(v)`.
pub const fn wsk_major_version(v: u16) -> u8 {
    (v >> 8) as u8
}

/// `WSK_MINOR_VERSION(v)`.
pub const fn wsk_minor_version(v: u16) -> u8 {
    v as u8
}

/// The version this provider implements: 1.0 (the Vista table plus the Win7 functions).
pub const WSK_VERSION_1_0: u16 = make_wsk_version(1, 0);

/// `WSK_PROVIDER_CHARACTERISTICS`: the range of versions a provider supports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct WskProviderCharacteristics {
    /// Highest supported version.
    pub highest_version: u16,
    /// Lowest supported version.
    pub lowest_version: u16,
}

impl WskProviderCharacteristics {
    /// Negotiate a client's requested version by the WSK rule: same major version, and the
    /// provider's minor version within range and at least the client's. Returns the version
    /// the provider will serve, or `None` (NOINTERFACE).
    pub fn negotiate(&self, requested: u16) -> Option<u16> {
        let major = wsk_major_version(requested);
        for v in [self.highest_version, self.lowest_version] {
            if wsk_major_version(v) == major && wsk_minor_version(v) >= wsk_minor_version(requested)
            {
                return Some(v);
            }
        }
        // Any version between lowest and highest with that major and a high enough minor.
        if wsk_major_version(self.lowest_version) <= major
            && major <= wsk_major_version(self.highest_version)
        {
            let top_minor = if major == wsk_major_version(self.highest_version) {
                wsk_minor_version(self.highest_version)
            } else {
                u8::MAX
            };
            if top_minor >= wsk_minor_version(requested) {
                return Some(make_wsk_version(major, top_minor));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_rule_same_major_minor_at_least() {
        let c = WskProviderCharacteristics {
            highest_version: make_wsk_version(1, 2),
            lowest_version: make_wsk_version(1, 0),
        };
        assert_eq!(
            c.negotiate(make_wsk_version(1, 0)),
            Some(make_wsk_version(1, 2))
        );
        assert_eq!(
            c.negotiate(make_wsk_version(1, 2)),
            Some(make_wsk_version(1, 2))
        );
        assert_eq!(c.negotiate(make_wsk_version(1, 3)), None);
        assert_eq!(c.negotiate(make_wsk_version(2, 0)), None);
        assert_eq!(c.negotiate(make_wsk_version(0, 9)), None);
    }
}
