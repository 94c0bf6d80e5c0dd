//! Settings of a scrambling run (what the operator asked for), kept apart from working state.

use std::time::Duration;

use csa::Algorithm;

use super::cw::Cw;
use crate::ts::Pid;

/// The CA_system_ID written in CA_descriptors unless told otherwise: 0x4AE1, from the
/// DVB range assigned to small/private systems and used by castmux as its own id.
pub const DEFAULT_CA_SYSTEM_ID: u16 = 0x4AE1;
/// The ECM PID used when CWs rotate and no `--ecm-pid` is given.
pub const DEFAULT_ECM_PID: u16 = 0x1FF0;
/// Default crypto period.
pub const DEFAULT_CRYPTO_PERIOD: Duration = Duration::from_secs(10);
/// Default ECM repetition interval.
pub const DEFAULT_ECM_REPETITION: Duration = Duration::from_millis(100);

/// Where control words come from.
#[derive(Debug, Clone)]
pub enum KeyMode {
    /// A fresh CW per crypto period from the OS CSPRNG.
    Rotating,
    /// One fixed key for the whole run, always even parity (BISS-style, no ECM).
    Fixed(Cw),
    /// A fixed even/odd pair, parity alternating with the crypto period.
    FixedPair(Cw, Cw),
}

/// What time crypto periods and ECM repetitions follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClockMode {
    /// Wall-clock time (live inputs).
    Wall,
    /// Stream time from the PCR of the first scrambled program (files, stdin).
    Stream,
}

/// Settings of a scrambling run. `ScrambleConfig::default()` gives the documented defaults.
#[derive(Debug, Clone)]
pub struct ScrambleConfig {
    /// Cipher. Default CSA2.
    pub algorithm: Algorithm,
    /// Key source. Default rotating random CWs.
    pub keys: KeyMode,
    /// Length of a crypto period. Default 10 s.
    pub crypto_period: Duration,
    /// Give random CSA2 CWs the checksum bytes 3 and 7. Default true.
    pub cw_checksum: bool,
    /// Services (program_number) to scramble; empty means all. Default empty.
    pub services: Vec<u16>,
    /// Scramble audio PIDs. Default true.
    pub scramble_audio: bool,
    /// If not empty, scramble only these ES PIDs. Default empty.
    pub only_pids: Vec<Pid>,
    /// Put the CA_descriptor in each scrambled ES_info loop instead of program_info. Default false.
    pub component_level: bool,
    /// CA_system_ID of the CA_descriptors. Default [`DEFAULT_CA_SYSTEM_ID`].
    pub ca_system_id: u16,
    /// The ECM PID named in the PMT (and where ECMs go if a generator is set). Default none.
    pub ecm_pid: Option<Pid>,
    /// The EMM PID named in the CAT (hook for the EMMG; no EMM flows yet). Default none.
    pub emm_pid: Option<Pid>,
    /// ECM repetition interval. Default 100 ms.
    pub ecm_repetition: Duration,
    /// When ECM content switches relative to the key switch, in ms (SimulCrypt delay_start);
    /// negative = before. Default 0.
    pub delay_start_ms: i64,
    /// Time base of crypto periods. Default stream time.
    pub clock: ClockMode,
}

impl Default for ScrambleConfig {
    fn default() -> Self {
        ScrambleConfig {
            algorithm: Algorithm::Csa2,
            keys: KeyMode::Rotating,
            crypto_period: DEFAULT_CRYPTO_PERIOD,
            cw_checksum: true,
            services: Vec::new(),
            scramble_audio: true,
            only_pids: Vec::new(),
            component_level: false,
            ca_system_id: DEFAULT_CA_SYSTEM_ID,
            ecm_pid: None,
            emm_pid: None,
            ecm_repetition: DEFAULT_ECM_REPETITION,
            delay_start_ms: 0,
            clock: ClockMode::Stream,
        }
    }
}
