//! Counters of a run: per PID and for the whole stream. Plain integers updated by the one
//! data-path thread; read at the end (or between batches).

use serde::Serialize;

use crate::ts::Pid;

/// Counters of one PID.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PidCounters {
    /// Packets read from the input on this PID.
    pub input: u64,
    /// Packets whose payload went through the cipher.
    pub scrambled: u64,
    /// Packets sent out as they came (PSI, unselected PIDs, no payload, ...).
    pub passed: u64,
    /// Packets of a scrambled PID that were already scrambled in the input (passed untouched).
    pub already_scrambled: u64,
    /// Packets of a scrambled PID with no payload (passed, header and AF clear as always).
    pub no_payload: u64,
    /// Packets of a scrambled PID with a payload too short for the cipher (left clear, TSC set).
    pub short_payload: u64,
    /// Packets written by the mux on this PID (rewritten PMT, ECM).
    pub inserted: u64,
    /// Null packets replaced by an inserted packet.
    pub replaced_null: u64,
    /// Packets dropped or turned into null packets (fail closed, rewritten PMT input, conflicts).
    pub dropped: u64,
    /// Packets with bad sync or transport_error_indicator.
    pub errors: u64,
}

/// Stream-wide counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StreamCounters {
    /// Crypto periods started (after the first).
    pub key_switches: u64,
    /// Times a key switch was held back because the ECM naming the next CW was not on air.
    pub degraded_holds: u64,
    /// Degraded-mode episodes: times a key switch started being held (each ends when the
    /// ECMs with the next CW are on air and the key switches).
    pub degraded_episodes: u64,
    /// Key switches made with `--cas-policy any` while a CA system's ECM did not carry
    /// the new CW (one per lagging CA system per switch).
    pub lagging_cas_switches: u64,
    /// ES packets of scrambled services held back (nulled) because no ECM was on air yet
    /// for the key in force (an ECMG down at start): never sent clear, never sent with no
    /// ECM that opens them.
    pub held_before_ecm: u64,
    /// Random CW generation failures (the previous CW was held).
    pub random_failures: u64,
    /// PMT sections accepted with new content (each bumps our version).
    pub pmt_updates: u64,
    /// PMT or PAT sections rejected (CRC, syntax); the last good one is kept.
    pub psi_errors: u64,
    /// ECM sections obtained from the generator.
    pub ecms_generated: u64,
    /// ECM generator failures.
    pub ecm_failures: u64,
    /// ECM packets put in place of null packets.
    pub ecm_packets_replacing_null: u64,
    /// ECM packets added to the stream.
    pub ecm_packets_added: u64,
    /// Packets nulled because their PID was not yet known while PSI was being discovered.
    pub nulled_before_psi: u64,
    /// Packets nulled, once PSI was complete, because no current PMT named their PID (an ES
    /// ahead of its PMT, a PID moved mid-stream, a PID of no service).
    pub nulled_unreferenced: u64,
    /// PCR discontinuities seen by the stream clock.
    pub pcr_discontinuities: u64,
    /// Packets that came in.
    pub packets_in: u64,
    /// Packets that went out.
    pub packets_out: u64,
    /// The CAT writer (EMM CA_descriptor).
    pub cat: super::cat::CatCounters,
    /// EMM insertion.
    pub emm: super::emm::EmmCounters,
}

/// Counters for all 8192 PIDs (allocated once) plus stream-wide ones.
#[derive(Debug, Clone)]
pub struct Counters {
    pids: Vec<PidCounters>,
    /// Stream-wide counters.
    pub stream: StreamCounters,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            pids: vec![PidCounters::default(); 0x2000],
            stream: StreamCounters::default(),
        }
    }
}

/// One PID's counters in a report.
#[derive(Debug, Clone, Serialize)]
pub struct PidReport {
    /// The PID value.
    pub pid: u16,
    /// Its counters.
    #[serde(flatten)]
    pub counters: PidCounters,
}

/// A report fit for JSON.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Stream-wide counters.
    pub stream: StreamCounters,
    /// PIDs with any activity, in PID order.
    pub pids: Vec<PidReport>,
}

impl Counters {
    /// The counters of `pid`.
    pub fn pid(&self, pid: Pid) -> &PidCounters {
        &self.pids[usize::from(pid.value())]
    }

    /// The counters of `pid`, to update.
    pub fn pid_mut(&mut self, pid: Pid) -> &mut PidCounters {
        &mut self.pids[usize::from(pid.value())]
    }

    /// Totals over every PID.
    pub fn totals(&self) -> PidCounters {
        let mut t = PidCounters::default();
        for c in &self.pids {
            t.input += c.input;
            t.scrambled += c.scrambled;
            t.passed += c.passed;
            t.already_scrambled += c.already_scrambled;
            t.no_payload += c.no_payload;
            t.short_payload += c.short_payload;
            t.inserted += c.inserted;
            t.replaced_null += c.replaced_null;
            t.dropped += c.dropped;
            t.errors += c.errors;
        }
        t
    }

    /// The report of PIDs with activity.
    pub fn report(&self) -> Report {
        Report {
            stream: self.stream,
            pids: self
                .pids
                .iter()
                .enumerate()
                .filter(|(_, c)| **c != PidCounters::default())
                .map(|(pid, c)| PidReport {
                    pid: pid as u16,
                    counters: *c,
                })
                .collect(),
        }
    }
}
