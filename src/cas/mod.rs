//! The built-in conditional-access system: key hierarchy, card records and entitlements,
//! ECM/EMM formats, the ECMG and EMMG used in-process by the mux, and the card store.
//!
//! Key hierarchy (docs/cas-formats.md): operator root key (stays in the store)
//! -> per-card unique key = HKDF-SHA256(root, serial) -> per-package service keys
//! (current and next, versioned, delivered in EMMs) -> CWs (delivered in ECMs under the
//! service keys of the channel's access criteria).

pub mod store;
pub mod types;

pub use store::{CardKeyRecord, InitOptions, Store, StoreError};
pub use types::{
    derive_card_key, AccessCriteria, CardFile, CardSerial, CasTypeError, Entitlements, EventGrant,
    Key128, PackageBit, ServiceKey, CARD_FILE_FORMAT,
};
