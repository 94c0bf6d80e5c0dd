//! The built-in conditional-access system: key hierarchy, card records and entitlements,
//! ECM/EMM formats, the ECMG and EMMG used in-process by the mux, and the card store.
//!
//! Key hierarchy (docs/cas-formats.md): operator root key (stays in the store)
//! -> per-card unique key = HKDF-SHA256(root, serial) -> per-package service keys
//! (current and next, versioned, delivered in EMMs) -> CWs (delivered in ECMs under the
//! service keys of the channel's access criteria). Service keys reach cards in group EMMs
//! (one per 256 cards, sealed under a group key derived from the root) and entitlements
//! in slim unique EMMs (format 2); the unique EMM of format 1 carrying everything is still
//! read by cards and written by a carousel made with [`EmmCarousel::new`].

mod codec;
pub mod ecm;
pub mod ecmg;
pub mod emm;
pub mod emm2;
pub mod emm_tee;
pub mod emmg;
pub mod follow;
pub mod group_emm;
pub mod keyring;
pub mod live;
pub mod refusal;
pub mod store;
pub mod types;

pub use ecm::{build_ecm, open_ecm, EcmBuildError, EcmContent, EcmParams, EcmRef};
pub use ecmg::{build_ecm_with_ring, BuiltinEcmg};
pub use emm::{build_emm, open_emm, EmmBuildError, EmmHeader, EmmPart};
pub use emm2::{build_emm2, open_emm2, Emm2Header, Emm2Part};
pub use emmg::{EmmCarousel, EmmCounters, EmmFormat, EmmLayout};
pub use follow::{FollowerStats, RingOnly, StoreFollower, StoreSink, StoreSnapshot};
pub use group_emm::{
    build_group_emm, open_group_emm, GroupEmmBuildError, GroupEmmHeader, GroupEmmPart,
};
pub use keyring::{ServiceKeyRing, SharedKeyRing};
pub use refusal::{Refusal, RefusalCounts};
pub use store::{CardKeyRecord, InitOptions, Store, StoreError};
pub use types::{
    derive_card_key, derive_group_key, AccessCriteria, CardFile, CardSerial, CasTypeError,
    Entitlements, EventGrant, GroupId, Key128, PackageBit, ServiceKey, CARD_FILE_FORMAT,
    GROUP_SIZE,
};
