//! The scrambling pipeline: PSI tracking and ES selection, crypto periods and control
//! words, batch scrambling, PMT rewrite, ECM insertion, and descrambling.
//!
//! One concern per file, following the data path:
//! - [`config`]: what the operator asked for (settings, with their defaults);
//! - [`cw`]: the control word type, OS-random generation, the CW log;
//! - [`keys`]: CWs per crypto period, generated and logged in order;
//! - [`clock`]: wall-clock or PCR stream time;
//! - [`demux`]: PAT/PMT tracking, PID roles, PMT rewrite with the CA_descriptor;
//! - [`ecm`]: the [`EcmGenerator`] trait and ECM repetition/insertion;
//! - [`emm`]: the [`EmmSource`] trait and EMM insertion on the EMM PID;
//! - [`cat`]: the CAT with the EMM CA_descriptor (merged or our own);
//! - [`insert`]: the bounded queue of mux packets (null slots first, else added);
//! - [`schedule`]: crypto periods, key switches, ECM content, degraded mode;
//! - [`scrambler`]: the stage that ties them together, batch by batch;
//! - [`descrambler`]: the reverse stage (fixed CWs or a CW log);
//! - [`stats`]: counters per PID and per stream;
//! - [`run`]: the read-process-write loop over [`crate::io`].

pub mod cat;
pub mod clock;
pub mod config;
pub mod cw;
pub mod demux;
pub mod descrambler;
pub mod ecm;
pub mod emm;
mod error;
pub mod insert;
pub mod keys;
pub mod run;
pub mod schedule;
pub mod scrambler;
pub mod stats;

pub use config::{CaSystem, CasPolicy, ClockMode, KeyMode, ScrambleConfig};
pub use cw::{Cw, CwLogWriter};
pub use descrambler::{DescrambleKeys, Descrambler};
pub use ecm::{EcmError, EcmGenerator, EcmRequest};
pub use emm::{EmmData, EmmSource};
pub use error::ScrambleError;
pub use keys::CryptoPeriod;
pub use run::{run_descramble, run_scramble, run_stage, PacketStage, RunEnd, RunOptions};
pub use scrambler::{PendingCipher, Scrambler};
pub use stats::Counters;
