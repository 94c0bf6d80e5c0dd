//! The software card: a card that lives in software. It holds one card's keys (exported
//! from the store as `card.json`), applies the EMMs addressed to it, and yields control
//! words from ECMs only while it is entitled; every refusal is typed and counted.
//!
//! Used by the live descrambler ([`player`]), the newcamd server, and tests.

pub mod card;
pub mod newcamd;
pub mod player;
pub mod remote;

pub use crate::cas::{Refusal, RefusalCounts};
pub use card::{
    CardCounters, CardError, CwReduction, EcmAnswer, EcmStream, EmmOutcome, SoftCard,
    DEFAULT_REPLAY_TOLERANCE_SECS, KEY_VERSIONS_KEPT, MAX_ECM_STREAMS,
};
