//! Identifiers: GUIDs, NPI ids, module ids.

use std::fmt;

/// A GUID with the Windows field layout (`Data1`..`Data4`).
///
/// ```
/// use nmr::Guid;
/// let g = Guid::from_u128(0x2227E803_8D8B_11D4_ABAD_009027719E09);
/// assert_eq!(g.to_string(), "{2227E803-8D8B-11D4-ABAD-009027719E09}");
/// ```
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct Guid {
    /// First 32 bits.
    pub data1: u32,
    /// Next 16 bits.
    pub data2: u16,
    /// Next 16 bits.
    pub data3: u16,
    /// Last 64 bits, in byte order.
    pub data4: [u8; 8],
}

impl Guid {
    /// The all-zero GUID.
    pub const NIL: Guid = Guid {
        data1: 0,
        data2: 0,
        data3: 0,
        data4: [0; 8],
    };

    /// Builds a GUID from its canonical 128-bit reading
    /// (`0xAAAAAAAA_BBBB_CCCC_DDDD_EEEEEEEEEEEE` for `{AAAAAAAA-BBBB-CCCC-DDDD-EEEEEEEEEEEE}`).
    #[must_use]
    pub const fn from_u128(v: u128) -> Guid {
        Guid {
            data1: (v >> 96) as u32,
            data2: (v >> 80) as u16,
            data3: (v >> 64) as u16,
            data4: (v as u64).to_be_bytes(),
        }
    }

    /// The inverse of [`Guid::from_u128`].
    #[must_use]
    pub const fn to_u128(self) -> u128 {
        ((self.data1 as u128) << 96)
            | ((self.data2 as u128) << 80)
            | ((self.data3 as u128) << 64)
            | (u64::from_be_bytes(self.data4) as u128)
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = &self.data4;
        write!(
            f,
            "{{{:08X}-{:04X}-{:04X}-{:02X}{:02X}-{:02X}{:02X}{:02X}{:02X}{:02X}{:02X}}}",
            self.data1, self.data2, self.data3, d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]
        )
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The identifier of a Network Programming Interface. The registrar pairs a client and a
/// provider only when their NPI ids are equal; it interprets nothing else.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NpiId(pub Guid);

impl NpiId {
    /// Builds an NPI id from the canonical 128-bit reading of its GUID.
    #[must_use]
    pub const fn from_u128(v: u128) -> NpiId {
        NpiId(Guid::from_u128(v))
    }
}

impl fmt::Display for NpiId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for NpiId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NpiId({})", self.0)
    }
}

/// A locally unique identifier (`LUID`), as used for interface module ids.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct Luid {
    /// Low 32 bits.
    pub low_part: u32,
    /// High 32 bits.
    pub high_part: i32,
}

/// Identifies a network module (`NPI_MODULEID`). Modules compare these themselves, in their
/// attach callbacks; the registrar never does.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum ModuleId {
    /// `MIT_GUID`.
    Guid(Guid),
    /// `MIT_IF_LUID`.
    IfLuid(Luid),
}

impl Default for ModuleId {
    fn default() -> Self {
        ModuleId::Guid(Guid::NIL)
    }
}

impl fmt::Display for ModuleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModuleId::Guid(g) => write!(f, "{g}"),
            ModuleId::IfLuid(l) => write!(f, "luid:{:08x}{:08x}", l.high_part, l.low_part),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guid_round_trips_through_u128_and_formats_like_windows() {
        let v = 0x2227E803_8D8B_11D4_ABAD_009027719E09u128;
        let g = Guid::from_u128(v);
        assert_eq!(g.data1, 0x2227E803);
        assert_eq!(g.data2, 0x8D8B);
        assert_eq!(g.data3, 0x11D4);
        assert_eq!(g.data4, [0xAB, 0xAD, 0x00, 0x90, 0x27, 0x71, 0x9E, 0x09]);
        assert_eq!(g.to_u128(), v);
        assert_eq!(g.to_string(), "{2227E803-8D8B-11D4-ABAD-009027719E09}");
    }

    #[test]
    fn module_ids_of_different_kinds_differ() {
        let a = ModuleId::Guid(Guid::from_u128(1));
        let b = ModuleId::IfLuid(Luid {
            low_part: 1,
            high_part: 0,
        });
        assert_ne!(a, b);
        assert_eq!(a, ModuleId::Guid(Guid::from_u128(1)));
    }
}
