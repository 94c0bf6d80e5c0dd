//! The built-in conditional-access system: key hierarchy, card records and entitlements,
//! ECM/EMM formats, the ECMG and EMMG used in-process by the mux, and the card store.
//!
//! Key hierarchy (docs/cas-formats.md): operator root key (stays in the store)
//! -> per-card unique key = HKDF-SHA256(root, serial) -> per-package service keys
//! (current and next, versioned, delivered in EMMs) -> CWs (delivered in ECMs under the
//! service keys of the channel's access criteria).

mod codec;
pub mod ecm;
pub mod ecmg;
pub mod emm;
pub mod emm_tee;
pub mod emmg;
pub mod follow;
pub mod keyring;
pub mod live;
pub mod refusal;
pub mod store;
pub mod types;

pub use ecm::{build_ecm, open_ecm, EcmBuildError, EcmContent, EcmParams, EcmRef};
pub use ecmg::{build_ecm_with_ring, BuiltinEcmg};
pub use emm::{build_emm, open_emm, EmmBuildError, EmmHeader, EmmPart};
pub use emmg::{EmmCarousel, EmmCounters};
pub use follow::{FollowerStats, RingOnly, StoreFollower, StoreSink, StoreSnapshot};
pub use keyring::{ServiceKeyRing, SharedKeyRing};
pub use refusal::{Refusal, RefusalCounts};
pub use store::{CardKeyRecord, InitOptions, Store, StoreError};
pub use types::{
    derive_card_key, AccessCriteria, CardFile, CardSerial, CasTypeError, Entitlements, EventGrant,
    Key128, PackageBit, ServiceKey, CARD_FILE_FORMAT,
};
