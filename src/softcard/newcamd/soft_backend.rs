//! The software card as the newcamd server's card: [`SoftCard`] behind [`CardBackend`].

use std::path::{Path, PathBuf};

use super::backend::{CardBackend, EcmRefusal, EcmStamp, EmmResult};
use super::messages::CwPair;
use crate::softcard::card::{CardError, CwReduction, EcmStream, EmmOutcome, SoftCard};

/// A [`SoftCard`], optionally saved back to its card.json after each applied EMM so
/// new keys and entitlements survive a restart.
pub struct SoftCardBackend {
    card: SoftCard,
    save_to: Option<PathBuf>,
}

impl SoftCardBackend {
    /// Serve `card`; nothing is saved.
    pub fn new(card: SoftCard) -> SoftCardBackend {
        SoftCardBackend {
            card,
            save_to: None,
        }
    }

    /// Load a card.json; with `save_emms`, applied EMMs are written back to it.
    pub fn load(path: &Path, save_emms: bool) -> Result<SoftCardBackend, CardError> {
        Ok(SoftCardBackend {
            card: SoftCard::load(path)?,
            save_to: save_emms.then(|| path.to_path_buf()),
        })
    }

    /// The card.
    pub fn card(&self) -> &SoftCard {
        &self.card
    }

    /// How the card hands out CSA2 CWs (default: reduced, as CAMs use them).
    pub fn set_cw_reduction(&mut self, r: CwReduction) {
        self.card.set_cw_reduction(r);
    }
}

impl CardBackend for SoftCardBackend {
    fn caid(&self) -> u16 {
        self.card.ca_system_id()
    }

    fn serial(&self) -> u64 {
        self.card.serial().0
    }

    fn provider_ids(&self) -> Vec<u32> {
        // castmux's CAS has packages, not providers: one provider 000000
        Vec::new()
    }

    fn ecm(&mut self, section: &[u8], now: i64) -> Result<CwPair, EcmRefusal> {
        self.ecm_on(0, section, now).map(|(cws, _)| cws)
    }

    fn admit_cached(&mut self, stream: u64, stamp: &EcmStamp, now: i64) -> Result<(), EcmRefusal> {
        self.card
            .admit_answered(
                EcmStream(stream),
                stamp.parity,
                stamp.timestamp,
                stamp.period,
                now,
            )
            .map_err(|r| EcmRefusal(r.to_string()))
    }

    fn ecm_on(
        &mut self,
        stream: u64,
        section: &[u8],
        now: i64,
    ) -> Result<(CwPair, Option<EcmStamp>), EcmRefusal> {
        let a = self
            .card
            .process_ecm_on(EcmStream(stream), section, now)
            .map_err(|r| EcmRefusal(r.to_string()))?;
        let (Ok(even), Ok(odd)) = (
            <[u8; 8]>::try_from(a.even.as_bytes()),
            <[u8; 8]>::try_from(a.odd.as_bytes()),
        ) else {
            return Err(EcmRefusal(format!(
                "{}-byte CWs (AES mode) do not fit newcamd's 8-byte CW fields; serve CSA2 services",
                a.cw_len
            )));
        };
        let stamp = EcmStamp {
            parity: a.parity,
            timestamp: a.timestamp,
            period: a.period,
        };
        Ok((CwPair { even, odd }, Some(stamp)))
    }

    fn emm(&mut self, section: &[u8], now: i64) -> EmmResult {
        match self
            .card
            .process_emm_and_save(section, now, self.save_to.as_deref())
        {
            Ok(EmmOutcome::Applied) => EmmResult::Applied,
            Ok(EmmOutcome::AlreadyApplied) => EmmResult::Unchanged,
            Ok(EmmOutcome::NotForThisCard | EmmOutcome::NoGroupKey) | Err(_) => EmmResult::Rejected,
        }
    }
}
