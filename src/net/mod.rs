//! The control plane's network pieces every server shares. Below the protocols: nothing here
//! knows SimulCrypt or newcamd, and the servers in `simulcrypt` and `softcard` build on it.
//!
//! - [`accept`]: the one accept loop (connection caps, a per-address cap, the first-message
//!   deadline), with its counters.

pub mod accept;

pub use accept::{
    AcceptLimits, AcceptLoop, AcceptSnapshot, AcceptStats, Handshake, LimitsError,
    DEFAULT_HANDSHAKE_TIMEOUT,
};
