//! Handles: generation-checked slot ids, never pointers.
//!
//! A handle packs `kind (2 bits) | generation (30 bits) | slot index (32 bits)` into a
//! non-zero `u64`. A stale handle (its slot was freed and perhaps reused) fails the
//! generation check; a handle of another kind fails the kind check; anything else (zero, a
//! pointer a C caller made up) fails to decode. None of them is ever dereferenced.

use crate::Error;
use std::fmt;

const KIND_SHIFT: u32 = 62;
const GEN_SHIFT: u32 = 32;
const GEN_MASK: u64 = (1 << 30) - 1;

/// What a handle names.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub(crate) enum Kind {
    Client = 1,
    Provider = 2,
    Binding = 3,
}

impl Kind {
    pub(crate) const fn name(self) -> &'static str {
        match self {
            Kind::Client => "client registration",
            Kind::Provider => "provider registration",
            Kind::Binding => "binding",
        }
    }
}

/// A slot id inside the registrar: index plus generation.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub(crate) struct SlotId {
    pub(crate) index: u32,
    pub(crate) generation: u32,
}

pub(crate) fn encode(kind: Kind, id: SlotId) -> u64 {
    ((kind as u64) << KIND_SHIFT)
        | ((u64::from(id.generation) & GEN_MASK) << GEN_SHIFT)
        | u64::from(id.index)
}

pub(crate) fn decode(raw: u64) -> Result<(Kind, SlotId), Error> {
    let kind = match raw >> KIND_SHIFT {
        1 => Kind::Client,
        2 => Kind::Provider,
        3 => Kind::Binding,
        _ => return Err(Error::InvalidHandle),
    };
    #[expect(clippy::cast_possible_truncation, reason = "masked to 30 and 32 bits")]
    let id = SlotId {
        index: raw as u32,
        generation: ((raw >> GEN_SHIFT) & GEN_MASK) as u32,
    };
    Ok((kind, id))
}

/// A client or provider registration (`NmrClientHandle` / `NmrProviderHandle`).
///
/// Copyable and checked: using it after its wait returned is an error, not UB.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct RegistrationHandle(pub(crate) u64);

/// A binding between one client and one provider registration (`NmrBindingHandle`).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct BindingHandle(pub(crate) u64);

macro_rules! raw_handle {
    ($t:ident, $what:literal) => {
        impl $t {
            /// The raw non-zero value (the C ABI's `HANDLE`).
            #[must_use]
            pub const fn to_raw(self) -> u64 {
                self.0
            }

            /// Rebuilds a handle from [`to_raw`](Self::to_raw). Any value is accepted here;
            /// the registrar checks it when it is used.
            #[must_use]
            pub const fn from_raw(raw: u64) -> Self {
                $t(raw)
            }
        }

        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match decode(self.0) {
                    Ok((_, id)) => write!(f, "{}#{}.{}", $what, id.index, id.generation),
                    Err(_) => write!(f, "{}({:#x})", $what, self.0),
                }
            }
        }

        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(self, f)
            }
        }
    };
}

raw_handle!(RegistrationHandle, "reg");
raw_handle!(BindingHandle, "binding");

/// A slab of slots with generations, so freed slots can be reused without stale handles
/// aliasing the new occupant.
#[derive(Debug)]
pub(crate) struct Slab<T> {
    entries: Vec<Entry<T>>,
    free: Vec<u32>,
    len: usize,
}

#[derive(Debug)]
struct Entry<T> {
    generation: u32,
    value: Option<T>,
}

impl<T> Slab<T> {
    pub(crate) const fn new() -> Self {
        Slab {
            entries: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }

    #[inline]
    pub(crate) fn insert(&mut self, value: T) -> Result<SlotId, Error> {
        self.len += 1;
        if let Some(index) = self.free.pop() {
            let e = &mut self.entries[index as usize];
            // A free slot holds `None`: nothing to drop (and forgetting it skips the check).
            std::mem::forget(e.value.replace(value));
            return Ok(SlotId {
                index,
                generation: e.generation,
            });
        }
        let index = u32::try_from(self.entries.len()).map_err(|_| Error::InsufficientResources)?;
        self.entries.push(Entry {
            generation: 1,
            value: Some(value),
        });
        Ok(SlotId {
            index,
            generation: 1,
        })
    }

    pub(crate) fn get(&self, id: SlotId) -> Option<&T> {
        let e = self.entries.get(id.index as usize)?;
        if e.generation == id.generation {
            e.value.as_ref()
        } else {
            None
        }
    }

    pub(crate) fn get_mut(&mut self, id: SlotId) -> Option<&mut T> {
        let e = self.entries.get_mut(id.index as usize)?;
        if e.generation == id.generation {
            e.value.as_mut()
        } else {
            None
        }
    }

    /// Indexed access for ids known to be live (the registrar's internal links).
    pub(crate) fn at(&self, index: u32) -> &T {
        self.entries[index as usize]
            .value
            .as_ref()
            .expect("internal link to a free slot")
    }

    pub(crate) fn at_mut(&mut self, index: u32) -> &mut T {
        self.entries[index as usize]
            .value
            .as_mut()
            .expect("internal link to a free slot")
    }

    pub(crate) fn id_of(&self, index: u32) -> SlotId {
        SlotId {
            index,
            generation: self.entries[index as usize].generation,
        }
    }

    /// Removes the value at `index`, known to be live (the registrar's internal links), and
    /// drops it in place.
    pub(crate) fn remove_at(&mut self, index: u32) {
        let e = &mut self.entries[index as usize];
        assert!(e.value.take().is_some(), "internal link to a free slot");
        e.generation = if u64::from(e.generation) >= GEN_MASK {
            1
        } else {
            e.generation + 1
        };
        self.free.push(index);
        self.len -= 1;
    }

    /// Removes the value of `id` if live and returns what `f` keeps of it (the rest is
    /// dropped in place).
    #[inline]
    pub(crate) fn remove_map<R>(&mut self, id: SlotId, f: impl FnOnce(T) -> R) -> Option<R> {
        let e = self.entries.get_mut(id.index as usize)?;
        if e.generation != id.generation {
            return None;
        }
        let kept = f(e.value.take()?);
        e.generation = if u64::from(e.generation) >= GEN_MASK {
            1
        } else {
            e.generation + 1
        };
        self.free.push(id.index);
        self.len -= 1;
        Some(kept)
    }

    #[cfg(test)]
    pub(crate) fn remove(&mut self, id: SlotId) -> Option<T> {
        self.remove_map(id, |v| v)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (SlotId, &T)> {
        self.entries.iter().enumerate().filter_map(|(i, e)| {
            #[expect(
                clippy::cast_possible_truncation,
                reason = "index fits: checked at insert"
            )]
            let index = i as u32;
            e.value.as_ref().map(|v| {
                (
                    SlotId {
                        index,
                        generation: e.generation,
                    },
                    v,
                )
            })
        })
    }

    pub(crate) const fn len(&self) -> usize {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_round_trip_and_reject_garbage() {
        let id = SlotId {
            index: 7,
            generation: 3,
        };
        let raw = encode(Kind::Binding, id);
        assert_eq!(decode(raw), Ok((Kind::Binding, id)));
        assert_eq!(decode(0), Err(Error::InvalidHandle));
        assert_eq!(decode(0x0000_7fff_dead_beef), Err(Error::InvalidHandle));
    }

    #[test]
    fn stale_slot_ids_do_not_reach_the_new_occupant() {
        let mut s = Slab::new();
        let a = s.insert("a").unwrap();
        assert_eq!(s.remove(a), Some("a"));
        let b = s.insert("b").unwrap();
        assert_eq!(a.index, b.index);
        assert_ne!(a.generation, b.generation);
        assert_eq!(s.get(a), None);
        assert_eq!(s.get(b), Some(&"b"));
        assert_eq!(s.remove(a), None);
        assert_eq!(s.len(), 1);
    }
}
