//! The control plane's network pieces every server shares. Below the protocols: nothing here
//! knows SimulCrypt or newcamd, and the servers in `simulcrypt` and `softcard` build on it.
//!
//! - [`control`]: the one control-plane runtime of a process, with one shutdown signal.
//! - [`accept`]: the one accept loop (connection caps, a per-address cap, the first-message
//!   deadline), with its counters.

pub mod accept;

pub use accept::{
    AcceptLimits, AcceptLoop, AcceptSnapshot, AcceptStats, Handshake, LimitsError,
    DEFAULT_HANDSHAKE_TIMEOUT,
};
pub mod control;

pub use control::{ControlPlane, Shutdown};
