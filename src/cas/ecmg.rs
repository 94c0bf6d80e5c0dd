//! The built-in ECMG: the mux's [`EcmGenerator`] backed by the shared service key ring.
//!
//! Fails closed: when a package of the channel's access criteria has no service key, it
//! answers [`EcmError::Unavailable`] (the inserter keeps the previous ECM on air and the
//! scrambler holds its key) rather than an ECM no card could open.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use csa::Parity;

use super::ecm::{build_ecm, EcmBuildError, EcmParams};
use super::keyring::SharedKeyRing;
use super::types::AccessCriteria;
use crate::scramble::{EcmError, EcmGenerator, EcmRequest};

/// Counters of a [`BuiltinEcmg`].
#[derive(Debug, Default)]
pub struct EcmgCounters {
    /// ECMs built.
    pub built: AtomicU64,
    /// Requests refused (no key, bad CW, random failure).
    pub refused: AtomicU64,
}

/// The in-process ECMG of one channel.
#[derive(Debug)]
pub struct BuiltinEcmg {
    keys: SharedKeyRing,
    access: AccessCriteria,
    ca_system_id: u16,
    counters: EcmgCounters,
}

impl BuiltinEcmg {
    /// An ECMG sealing ECMs of a channel with `access` under the current keys of `keys`.
    pub fn new(keys: SharedKeyRing, access: AccessCriteria, ca_system_id: u16) -> Self {
        BuiltinEcmg {
            keys,
            access,
            ca_system_id,
            counters: EcmgCounters::default(),
        }
    }

    /// The channel's access criteria.
    pub fn access(&self) -> AccessCriteria {
        self.access
    }

    /// Counters.
    pub fn counters(&self) -> &EcmgCounters {
        &self.counters
    }

    /// Build the ECM of crypto period `period` from its even and odd CW, timestamped
    /// `timestamp` (Unix seconds). The entry point for SimulCrypt, which has CP numbers
    /// and raw CWs rather than [`crate::scramble::Cw`].
    pub fn build(
        &self,
        period: u64,
        even: &[u8],
        odd: &[u8],
        timestamp: i64,
        out: &mut Vec<u8>,
    ) -> Result<(), EcmBuildError> {
        build_ecm_with_ring(
            &self.keys,
            &EcmParams {
                ca_system_id: self.ca_system_id,
                access: self.access,
                period,
                timestamp,
                even,
                odd,
            },
            out,
        )
        .inspect(|()| {
            self.counters.built.fetch_add(1, Ordering::Relaxed);
        })
        .inspect_err(|e| {
            self.counters.refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(access = %self.access, error = %e, "ECM refused");
        })
    }
}

/// [`build_ecm`] under the read lock of a shared ring (a poisoned lock still holds a
/// consistent ring: it is only ever replaced whole).
pub fn build_ecm_with_ring(
    keys: &SharedKeyRing,
    params: &EcmParams<'_>,
    out: &mut Vec<u8>,
) -> Result<(), EcmBuildError> {
    let ring = keys.read().unwrap_or_else(|p| p.into_inner());
    build_ecm(&ring, params, out)
}

/// Now, Unix seconds.
pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl EcmGenerator for BuiltinEcmg {
    fn generate(&mut self, req: &EcmRequest<'_>, out: &mut Vec<u8>) -> Result<(), EcmError> {
        // period N even: its own CW is the even one, N+1's the odd one
        let (even, odd) = match req.parity {
            Parity::Even => (req.current, req.next),
            Parity::Odd => (req.next, req.current),
        };
        if req.ca_system_id != self.ca_system_id {
            self.counters.refused.fetch_add(1, Ordering::Relaxed);
            return Err(EcmError::Unavailable(format!(
                "the PMT announces CA_system_ID {:#06x} but the built-in CAS is {:#06x}",
                req.ca_system_id, self.ca_system_id
            )));
        }
        self.build(
            req.period.0,
            even.as_bytes(),
            odd.as_bytes(),
            unix_now(),
            out,
        )
        .map_err(|e| EcmError::Unavailable(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cas::ecm::open_ecm;
    use crate::cas::keyring::ServiceKeyRing;
    use crate::cas::types::{Key128, PackageBit, ServiceKey};
    use crate::scramble::{CryptoPeriod, Cw};
    use crate::ts::Pid;

    #[test]
    fn maps_current_and_next_by_parity_and_fails_closed() {
        let key = ServiceKey {
            bit: PackageBit::new(4).unwrap(),
            version: 9,
            key: Key128::from_bytes([3; 16]),
        };
        let ring = ServiceKeyRing::from_keys([key.clone()]).shared();
        let mut g = BuiltinEcmg::new(ring.clone(), AccessCriteria(1 << 4), 0x0B00);
        let a = Cw::from_slice(&[0xAA; 8]).unwrap();
        let b = Cw::from_slice(&[0xBB; 8]).unwrap();
        for (n, parity) in [(10, Parity::Even), (11, Parity::Odd)] {
            let req = EcmRequest {
                period: CryptoPeriod(n),
                parity,
                current: &a,
                next: &b,
                ecm_pid: Pid::new(0x100),
                ca_system_id: 0x0B00,
            };
            let mut out = Vec::new();
            g.generate(&req, &mut out).unwrap();
            assert_eq!(out[0], req.table_id());
            let c = open_ecm(&out, |_, v| (v == 9).then_some(&key.key)).unwrap();
            assert_eq!(c.period, n);
            let (cur, next) = if n.is_multiple_of(2) {
                (&c.even, &c.odd)
            } else {
                (&c.odd, &c.even)
            };
            assert_eq!((cur, next), (&a, &b));
        }
        *ring.write().unwrap() = ServiceKeyRing::new();
        let req = EcmRequest {
            period: CryptoPeriod(12),
            parity: Parity::Even,
            current: &a,
            next: &b,
            ecm_pid: Pid::new(0x100),
            ca_system_id: 0x0B00,
        };
        let mut out = Vec::new();
        assert!(matches!(
            g.generate(&req, &mut out),
            Err(EcmError::Unavailable(_))
        ));
        assert!(out.is_empty());
        assert_eq!(g.counters().built.load(Ordering::Relaxed), 2);
        assert_eq!(g.counters().refused.load(Ordering::Relaxed), 1);
    }
}
