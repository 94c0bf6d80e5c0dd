//! What the newcamd server needs from a card: its identity for MSG_CARD_DATA, and
//! ECM/EMM processing. The software card implements it; tests use their own cards.

use super::messages::CwPair;

/// Why a card gave no CWs for an ECM. The text is for logs: it never holds key material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EcmRefusal(pub String);

impl std::fmt::Display for EcmRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A card the newcamd server serves. Calls are made under the server's card lock,
/// so they should be quick (no I/O).
pub trait CardBackend: Send + 'static {
    /// CA_system_ID, sent as the CAID in MSG_CARD_DATA.
    fn caid(&self) -> u16;
    /// The card serial (sent to AU users only).
    fn serial(&self) -> u64;
    /// 24-bit provider idents; an empty list is sent as one provider 000000.
    fn provider_ids(&self) -> Vec<u32>;
    /// Process an ECM section (table id 0x80/0x81, as received from the demux) at Unix
    /// time `now`: the even and odd CWs, or why not.
    fn ecm(&mut self, section: &[u8], now: i64) -> Result<CwPair, EcmRefusal>;
    /// [`CardBackend::ecm`] for the ECM stream `stream` (one service of one session), so
    /// a card can refuse an ECM older than the last it answered on that stream. With the
    /// CWs comes the ECM's stamp, which the server keeps with a cached answer and hands to
    /// [`CardBackend::admit_cached`]. Cards without such a rule answer as
    /// [`CardBackend::ecm`], with no stamp.
    fn ecm_on(
        &mut self,
        stream: u64,
        section: &[u8],
        now: i64,
    ) -> Result<(CwPair, Option<EcmStamp>), EcmRefusal> {
        let _ = stream;
        self.ecm(section, now).map(|cws| (cws, None))
    }
    /// May a cached answer (of an ECM stamped `stamp`) be given on `stream` now? The
    /// card's replay rule must hold for cached answers too, or an old ECM played again
    /// within the cache's lifetime would get its old CWs.
    fn admit_cached(&mut self, stream: u64, stamp: &EcmStamp, now: i64) -> Result<(), EcmRefusal> {
        let _ = (stream, stamp, now);
        Ok(())
    }
    /// Process an EMM section.
    fn emm(&mut self, section: &[u8], now: i64) -> EmmResult;
}

/// When and for which period an answered ECM was made (from its authenticated content).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EcmStamp {
    /// Parity of the ECM's crypto period.
    pub parity: csa::Parity,
    /// The ECM's timestamp, Unix seconds.
    pub timestamp: i64,
    /// The ECM's crypto period number.
    pub period: u64,
}

/// What a card did with an EMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmmResult {
    /// Refused (not for this card, forged, replayed): the answer's accepted bit is clear.
    Rejected,
    /// Valid but already applied (carousels repeat EMMs): accepted, nothing changed.
    Unchanged,
    /// Applied: keys or entitlements changed.
    Applied,
}
