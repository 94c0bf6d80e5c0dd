//! Settings of a scrambling run (what the operator asked for), kept apart from working state.

use std::time::Duration;

use csa::Algorithm;

use super::cw::Cw;
use crate::ts::Pid;

/// The CA_system_ID of a new card store, written in CA_descriptors unless told otherwise.
///
/// 0x5510 is not allocated in ETSI TS 101 162 (its 0x55xx row is empty; castmux's earlier
/// default, 0x4AE1, belongs to the DRE-Crypt vendor and receivers treat it as DRE-Crypt).
/// Receivers that pick a CAS module by id handle 0x5501-0x5511 generically: Cesbo Astra 4
/// finds the ECM PID from a CA_descriptor without private data and takes the CWs as the
/// card gives them; tvheadend and OSCam forward its ECMs as they come. See
/// docs/newcamd.md. Stores made earlier keep their id.
pub const DEFAULT_CA_SYSTEM_ID: u16 = 0x5510;
/// The ECM PID used when CWs rotate and no `--ecm-pid` is given.
pub const DEFAULT_ECM_PID: u16 = 0x1FF0;
/// Default crypto period.
pub const DEFAULT_CRYPTO_PERIOD: Duration = Duration::from_secs(10);
/// The most CA systems one run announces (CA_descriptors per PMT, ECM streams).
pub const MAX_CA_SYSTEMS: usize = 8;
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

/// One conditional-access system on the scrambled services: a CA_descriptor in their PMTs
/// naming its ECM PID, and (when it has an ECM generator) its ECMs on that PID. Several CAS
/// on one service share its CWs (SimulCrypt): each carries the same CW in its own ECM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaSystem {
    /// CA_system_ID of the CA_descriptor.
    pub ca_system_id: u16,
    /// The ECM PID named in the PMT, where this system's ECMs go.
    pub ecm_pid: Pid,
    /// private_data_byte values of the CA_descriptor (most systems need none).
    pub private_data: Vec<u8>,
    /// ECM repetition interval. Default 100 ms.
    pub ecm_repetition: Duration,
    /// When ECM content switches relative to the key switch, in ms (SimulCrypt delay_start);
    /// negative = before. Default 0.
    pub delay_start_ms: i64,
}

impl CaSystem {
    /// A system with the default repetition and delay_start.
    pub fn new(ca_system_id: u16, ecm_pid: Pid) -> Self {
        CaSystem {
            ca_system_id,
            ecm_pid,
            private_data: Vec::new(),
            ecm_repetition: DEFAULT_ECM_REPETITION,
            delay_start_ms: 0,
        }
    }
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
    /// ES PIDs of the selected services left clear (every other ES is scrambled, whatever
    /// its stream type). Default empty.
    pub exclude_pids: Vec<Pid>,
    /// Put the CA_descriptor in each scrambled ES_info loop instead of program_info. Default false.
    pub component_level: bool,
    /// The CA systems announced in the scrambled PMTs, one CA_descriptor and ECM PID each.
    /// Default none (the PMT is passed unchanged).
    pub ca_systems: Vec<CaSystem>,
    /// The EMM PID named in the CAT, where EMMs go when a source is set. Default none.
    pub emm_pid: Option<Pid>,
    /// CA_system_ID of the CAT's EMM CA_descriptor. Default [`DEFAULT_CA_SYSTEM_ID`].
    pub emm_ca_system_id: u16,
    /// Time base of crypto periods. Default stream time.
    pub clock: ClockMode,
    /// With several CA systems: what a key switch waits for. Default [`CasPolicy::All`].
    pub cas_policy: CasPolicy,
}

/// What a key switch waits for when a service has several CA systems.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CasPolicy {
    /// The ECM with the next CW on air for every CA system: one dead CAS holds the key for
    /// all (every card keeps working, on the held key).
    #[default]
    All,
    /// The ECM with the next CW on air for at least one CA system: a dead CAS no longer
    /// holds the others; its ECM PID keeps its last ECM (counted), and its cards lose the
    /// service once the key has moved past that ECM's CWs.
    Any,
}

impl std::str::FromStr for CasPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "all" => Ok(CasPolicy::All),
            "any" => Ok(CasPolicy::Any),
            _ => Err(format!("'{s}': the CAS policy is all or any")),
        }
    }
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
            exclude_pids: Vec::new(),
            component_level: false,
            ca_systems: Vec::new(),
            emm_pid: None,
            emm_ca_system_id: DEFAULT_CA_SYSTEM_ID,
            clock: ClockMode::Stream,
            cas_policy: CasPolicy::All,
        }
    }
}
