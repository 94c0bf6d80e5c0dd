//! The head-end's service keys: current and next per package bit.
//!
//! Rule (docs/cas-formats.md, "Key versions"): from the versions the store holds for a
//! package, the highest is *next* and the one just below it is *current*. ECMs are sealed
//! under *current*; EMMs carry both, so a card has a key a whole rotation before ECMs use
//! it. A package with a single version has that one as *current* and no *next*. Older
//! versions are ignored here (the cards keep one previous version themselves).
//!
//! The ring is built once per rotation and read once per crypto period (not per packet),
//! so a [`SharedKeyRing`] (`Arc<RwLock<_>>`) is enough to share it between the task that
//! refreshes it and the ECMG/EMMG.

use std::sync::{Arc, RwLock};

use super::types::{AccessCriteria, PackageBit, ServiceKey, MAX_PACKAGE_BIT};

/// Current and next key of one package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySlot {
    /// The key ECMs are sealed under.
    pub current: ServiceKey,
    /// The key of the coming rotation, if the store has one.
    pub next: Option<ServiceKey>,
}

/// Current and next service key per package bit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceKeyRing {
    slots: Vec<Option<KeySlot>>,
}

/// A ring shared between the control task that refreshes it and the ECMG/EMMG.
pub type SharedKeyRing = Arc<RwLock<ServiceKeyRing>>;

impl ServiceKeyRing {
    /// An empty ring (every ECM refused until keys are set).
    pub fn new() -> Self {
        ServiceKeyRing {
            slots: vec![None; usize::from(MAX_PACKAGE_BIT) + 1],
        }
    }

    /// The ring from the store's keys (any order, any number of versions per package).
    pub fn from_keys(keys: impl IntoIterator<Item = ServiceKey>) -> Self {
        let mut ring = ServiceKeyRing::new();
        // per bit: the two highest versions seen, highest first
        let mut top: Vec<(Option<ServiceKey>, Option<ServiceKey>)> =
            vec![(None, None); usize::from(MAX_PACKAGE_BIT) + 1];
        for k in keys {
            let (hi, lo) = &mut top[usize::from(k.bit.get())];
            match hi {
                Some(h) if k.version == h.version => {}
                Some(h) if k.version < h.version => {
                    if lo.as_ref().is_none_or(|l| k.version > l.version) {
                        *lo = Some(k);
                    }
                }
                _ => {
                    *lo = hi.take();
                    *hi = Some(k);
                }
            }
        }
        for (slot, (hi, lo)) in ring.slots.iter_mut().zip(top) {
            *slot = match (hi, lo) {
                (Some(h), Some(l)) => Some(KeySlot {
                    current: l,
                    next: Some(h),
                }),
                (Some(h), None) => Some(KeySlot {
                    current: h,
                    next: None,
                }),
                _ => None,
            };
        }
        ring
    }

    /// A shareable ring.
    pub fn shared(self) -> SharedKeyRing {
        Arc::new(RwLock::new(self))
    }

    /// The slot of `bit`.
    pub fn slot(&self, bit: PackageBit) -> Option<&KeySlot> {
        self.slots.get(usize::from(bit.get()))?.as_ref()
    }

    /// The key ECMs of `bit` are sealed under.
    pub fn current(&self, bit: PackageBit) -> Option<&ServiceKey> {
        self.slot(bit).map(|s| &s.current)
    }

    /// The first package of `access` with no key, if any (an ECM for it would be refused).
    pub fn missing(&self, access: AccessCriteria) -> Option<PackageBit> {
        access.bits().find(|b| self.slot(*b).is_none())
    }

    /// The keys an EMM gives a card entitled to `bits`: current then next of each.
    pub fn keys_for(&self, bits: AccessCriteria) -> impl Iterator<Item = &ServiceKey> {
        bits.bits()
            .filter_map(|b| self.slot(b))
            .flat_map(|s| std::iter::once(&s.current).chain(s.next.as_ref()))
    }

    /// Packages with a key.
    pub fn packages(&self) -> AccessCriteria {
        AccessCriteria::from_bits(
            self.slots
                .iter()
                .filter_map(|s| s.as_ref().map(|s| s.current.bit)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cas::types::Key128;

    fn sk(bit: u32, version: u32) -> ServiceKey {
        ServiceKey {
            bit: PackageBit::new(bit).unwrap(),
            version,
            key: Key128::from_bytes([version as u8; 16]),
        }
    }

    #[test]
    fn highest_is_next_and_the_one_below_current() {
        let ring = ServiceKeyRing::from_keys([sk(1, 3), sk(1, 5), sk(1, 4), sk(2, 7), sk(1, 1)]);
        let s1 = ring.slot(PackageBit::new(1).unwrap()).unwrap();
        assert_eq!(s1.current.version, 4);
        assert_eq!(s1.next.as_ref().unwrap().version, 5);
        let s2 = ring.slot(PackageBit::new(2).unwrap()).unwrap();
        assert_eq!(s2.current.version, 7);
        assert!(s2.next.is_none());
        assert!(ring.slot(PackageBit::new(0).unwrap()).is_none());
        assert_eq!(ring.packages(), AccessCriteria(0b110));
        assert_eq!(ring.missing(AccessCriteria(0b111)), PackageBit::new(0).ok());
        assert_eq!(ring.missing(AccessCriteria(0b110)), None);
        let v: Vec<u32> = ring
            .keys_for(AccessCriteria(0b111))
            .map(|k| k.version)
            .collect();
        assert_eq!(v, [4, 5, 7]);
    }

    #[test]
    fn order_does_not_matter() {
        let a = ServiceKeyRing::from_keys([sk(3, 1), sk(3, 2), sk(3, 3)]);
        let b = ServiceKeyRing::from_keys([sk(3, 3), sk(3, 1), sk(3, 2), sk(3, 2)]);
        assert_eq!(a, b);
    }
}
