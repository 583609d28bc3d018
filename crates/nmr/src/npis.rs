//! The NPI index: the active clients and providers of each NPI, in registration order.
//!
//! Each NPI with an active registration has a slot; a registration keeps its slot number,
//! so leaving the index needs no lookup, and the last NPI looked up is remembered, so a
//! module registering on the NPI of the previous registration (the common case) skips the
//! ordered map too.

use crate::NpiId;
use crate::registrar::Role;
use std::collections::BTreeMap;

/// One NPI's active registrations (registry slab indexes).
#[derive(Default)]
pub(crate) struct NpiEntry {
    pub(crate) clients: Vec<u32>,
    pub(crate) providers: Vec<u32>,
}

impl NpiEntry {
    /// The list of `role`'s registrations.
    pub(crate) fn list(&mut self, role: Role) -> &mut Vec<u32> {
        match role {
            Role::Client => &mut self.clients,
            Role::Provider => &mut self.providers,
        }
    }

    /// The list of the registrations `role` pairs with.
    pub(crate) fn peers(&self, role: Role) -> &[u32] {
        match role {
            Role::Client => &self.providers,
            Role::Provider => &self.clients,
        }
    }

    fn is_empty(&self) -> bool {
        self.clients.is_empty() && self.providers.is_empty()
    }
}

/// Every NPI with an active registration.
#[derive(Default)]
pub(crate) struct NpiIndex {
    /// A B-tree rather than a hash map: few NPIs, and no interior pointers that leak
    /// checkers report as "possibly lost" in the process-wide registrar.
    slots: BTreeMap<NpiId, u32>,
    entries: Vec<NpiEntry>,
    free: Vec<u32>,
    /// The NPI of the last [`slot_for`](Self::slot_for), while its slot is in use.
    last: Option<(NpiId, u32)>,
}

impl NpiIndex {
    /// The slot of `npi`, made if the NPI has none.
    pub(crate) fn slot_for(&mut self, npi: NpiId) -> u32 {
        if let Some((id, slot)) = self.last
            && id == npi
        {
            return slot;
        }
        let slot = match self.slots.get(&npi) {
            Some(&slot) => slot,
            None => {
                let slot = self.free.pop().unwrap_or_else(|| {
                    self.entries.push(NpiEntry::default());
                    u32::try_from(self.entries.len() - 1).unwrap_or(u32::MAX)
                });
                self.slots.insert(npi, slot);
                slot
            }
        };
        self.last = Some((npi, slot));
        slot
    }

    /// The entry in `slot`.
    pub(crate) fn entry(&mut self, slot: u32) -> &mut NpiEntry {
        &mut self.entries[slot as usize]
    }

    /// Frees `npi`'s slot if its entry is empty.
    pub(crate) fn release_if_empty(&mut self, npi: NpiId, slot: u32) {
        if !self.entries[slot as usize].is_empty() {
            return;
        }
        self.slots.remove(&npi);
        self.free.push(slot);
        if self.last.is_some_and(|(_, s)| s == slot) {
            self.last = None;
        }
    }

    /// How many NPIs have a slot.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.slots.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_npi_keeps_its_slot_while_it_has_registrations_and_slots_are_reused() {
        let mut ix = NpiIndex::default();
        let (a, b) = (NpiId::from_u128(1), NpiId::from_u128(2));
        let sa = ix.slot_for(a);
        ix.entry(sa).list(Role::Client).push(7);
        let sb = ix.slot_for(b);
        assert_ne!(sa, sb);
        assert_eq!(ix.slot_for(a), sa);
        ix.entry(sb).list(Role::Provider).push(8);
        assert_eq!(ix.entry(sa).peers(Role::Provider), &[7]);
        assert_eq!(ix.entry(sb).peers(Role::Client), &[8]);
        // A non-empty entry keeps its slot.
        ix.release_if_empty(a, sa);
        assert_eq!(ix.slot_for(a), sa);
        ix.entry(sa).list(Role::Client).clear();
        ix.release_if_empty(a, sa);
        assert_eq!(ix.len(), 1);
        // The remembered NPI was `a`: a new NPI must not get `a`'s answer, and reuses the slot.
        let c = NpiId::from_u128(3);
        assert_eq!(ix.slot_for(c), sa);
        assert!(ix.entry(sa).is_empty());
        assert_eq!(ix.slot_for(b), sb);
        assert_eq!(ix.len(), 2);
    }

    #[test]
    fn a_released_npi_is_not_answered_from_memory() {
        let mut ix = NpiIndex::default();
        let a = NpiId::from_u128(1);
        let sa = ix.slot_for(a);
        ix.release_if_empty(a, sa);
        assert_eq!(ix.len(), 0);
        let b = NpiId::from_u128(2);
        let sb = ix.slot_for(b);
        assert_eq!(sb, sa);
        let sa2 = ix.slot_for(a);
        assert_ne!(
            sa2, sb,
            "a released NPI gets a fresh slot, not the remembered one"
        );
    }
}
