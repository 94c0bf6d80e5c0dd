//! Why a card refuses an ECM or EMM, and a counter per kind.

/// A card's typed refusal of an ECM or EMM. No variant carries key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The card holds no package of the ECM's access criteria (nor an event grant for one).
    #[error("not entitled: the card holds none of the ECM's packages; entitle it (castmux card set SERIAL --packages ..) and let its EMM reach it")]
    NotEntitled,
    /// The ECM's time is at or after the card's (or event's) finish.
    #[error("expired: the card's entitlement ended before this ECM; extend it with castmux card set SERIAL --finish ..")]
    Expired,
    /// The ECM's time is before the card's (or event's) start.
    #[error("not yet valid: the card's entitlement starts after this ECM; check its --start")]
    NotYetValid,
    /// The operator disabled the card.
    #[error("disabled: the operator switched this card off (castmux card enable SERIAL)")]
    Disabled,
    /// The message was changed, forged, or made under a key the card does not hold.
    #[error("bad MAC: the message was altered or forged, or sealed with another key")]
    BadMac,
    /// The ECM is sealed under a service key version the card has not received.
    #[error("unknown key version {version} of package bit {bit}: the card has not received that service key; wait for its EMM or re-export card.json")]
    UnknownKeyVersion {
        /// The package bit.
        bit: u8,
        /// The key version the ECM names.
        version: u32,
    },
    /// An old message played again: an ECM older than the replay tolerance, or an EMM whose
    /// sequence is older than the last one applied.
    #[error("replay: the message is older than the card's newest one beyond the tolerance")]
    Replay,
    /// The message belongs to another CA system.
    #[error("wrong CA system: message for CA_system_ID {got:#06x}, the card is {card:#06x}")]
    WrongCaSystem {
        /// CA_system_ID of the message.
        got: u16,
        /// CA_system_ID of the card.
        card: u16,
    },
    /// Not a well-formed castmux ECM/EMM.
    #[error("malformed message: {0}")]
    Malformed(&'static str),
}

/// How many refusals of each kind a card gave.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RefusalCounts {
    /// [`Refusal::NotEntitled`].
    pub not_entitled: u64,
    /// [`Refusal::Expired`].
    pub expired: u64,
    /// [`Refusal::NotYetValid`].
    pub not_yet_valid: u64,
    /// [`Refusal::Disabled`].
    pub disabled: u64,
    /// [`Refusal::BadMac`].
    pub bad_mac: u64,
    /// [`Refusal::UnknownKeyVersion`].
    pub unknown_key_version: u64,
    /// [`Refusal::Replay`].
    pub replay: u64,
    /// [`Refusal::WrongCaSystem`].
    pub wrong_ca_system: u64,
    /// [`Refusal::Malformed`].
    pub malformed: u64,
}

impl RefusalCounts {
    /// Count one refusal.
    pub fn count(&mut self, r: &Refusal) {
        let c = match r {
            Refusal::NotEntitled => &mut self.not_entitled,
            Refusal::Expired => &mut self.expired,
            Refusal::NotYetValid => &mut self.not_yet_valid,
            Refusal::Disabled => &mut self.disabled,
            Refusal::BadMac => &mut self.bad_mac,
            Refusal::UnknownKeyVersion { .. } => &mut self.unknown_key_version,
            Refusal::Replay => &mut self.replay,
            Refusal::WrongCaSystem { .. } => &mut self.wrong_ca_system,
            Refusal::Malformed(_) => &mut self.malformed,
        };
        *c += 1;
    }

    /// All refusals.
    pub fn total(&self) -> u64 {
        self.not_entitled
            + self.expired
            + self.not_yet_valid
            + self.disabled
            + self.bad_mac
            + self.unknown_key_version
            + self.replay
            + self.wrong_ca_system
            + self.malformed
    }
}
