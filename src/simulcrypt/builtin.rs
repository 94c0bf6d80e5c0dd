//! The built-in CAS served over SimulCrypt: ECMs sealed under the shared service key ring with
//! the access criteria each SCS stream sends (rather than one channel's fixed criteria).

use super::ecmg_server::{EcmBuildError, EcmBuildRequest, EcmBuilder};
use crate::cas::ecmg::unix_now;
use crate::cas::{build_ecm_with_ring, EcmParams, SharedKeyRing};

/// [`EcmBuilder`] of `castmux ecmg`: the castmux ECM format (docs/cas-formats.md).
#[derive(Debug, Clone)]
pub struct RingEcmBuilder {
    keys: SharedKeyRing,
    ca_system_id: u16,
}

impl RingEcmBuilder {
    /// ECMs of CA_system_ID `ca_system_id` under the keys of `keys`.
    pub fn new(keys: SharedKeyRing, ca_system_id: u16) -> Self {
        RingEcmBuilder { keys, ca_system_id }
    }
}

impl EcmBuilder for RingEcmBuilder {
    fn build(&self, req: &EcmBuildRequest<'_>, out: &mut Vec<u8>) -> Result<(), EcmBuildError> {
        let sys = (req.super_cas_id >> 16) as u16;
        if sys != self.ca_system_id {
            return Err(EcmBuildError(format!(
                "Super_CAS_id {:08X} names CA_system_ID {sys:#06x}; this ECMG serves {:#06x}",
                req.super_cas_id, self.ca_system_id
            )));
        }
        let params = EcmParams {
            ca_system_id: self.ca_system_id,
            access: req.access_criteria,
            // only its parity matters to the format: the same as the CP's
            period: u64::from(req.cp_number),
            timestamp: unix_now(),
            even: req.even.as_bytes(),
            odd: req.odd.as_bytes(),
        };
        build_ecm_with_ring(&self.keys, &params, out).map_err(|e| EcmBuildError(e.to_string()))
    }
}
