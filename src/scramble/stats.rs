//! Counters of a run: per PID and for the whole stream. Plain integers updated by the one
//! data-path thread; read at the end (or between batches).

use std::sync::atomic::AtomicU64;

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
    /// Continuity counter errors in the input (a packet lost or out of order; a repeated
    /// packet and a flagged discontinuity are not errors), ETR 290 1.4.
    pub cc_errors: u64,
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
    /// ES packets of the scrambled services that were not understood, and so could carry
    /// the ES in clear: a reserved transport_scrambling_control (01) or
    /// adaptation_field_control (00), or an adaptation field past the packet's end, nulled;
    /// or an adaptation-only packet with bytes other than stuffing after its field, those
    /// bytes stuffed (0xFF).
    pub malformed_es: u64,
    /// ES payload packets of the scrambled services scrambled here (the sum of the PIDs'
    /// `scrambled`, kept here so a monitor need not add up 8192 PIDs).
    pub es_scrambled: u64,
    /// ES packets of the scrambled services that came in scrambled already.
    pub es_already_scrambled: u64,
    /// Continuity counter errors in the input, every PID (the sum of the PIDs').
    pub cc_errors: u64,
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

/// Counters of every PID seen plus stream-wide ones. A stream carries a few dozen PIDs at
/// most, so their counters sit together in a short list, not in a table of all 8192 (720
/// KB a channel, and a cold cache line and TLB entry per channel visit in a head-end of
/// hundreds). The first [`NEAR`] PIDs seen are found by a scan of one small array, the
/// rest through a 16 KB index: a head-end visits each channel's state cold, and a lookup
/// through the index costs a cache miss of its own before the one on the counters.
#[derive(Debug, Clone)]
pub struct Counters {
    /// The values of the first PIDs seen, in the order seen (so `near[i]` is `seen[i]`'s);
    /// [`NO_PID`] where none yet.
    near: [u16; NEAR],
    /// PID -> its place in `seen`, plus one; 0 = not seen yet.
    index: Box<[u16]>,
    seen: Vec<PidEntry>,
    /// Stream-wide counters.
    pub stream: StreamCounters,
}

/// PIDs found without the index.
const NEAR: usize = 16;
/// No PID (PIDs are 13 bits).
const NO_PID: u16 = 0xFFFF;

/// The continuity counter of a PID whose first packet is still to come.
pub const CC_UNSET: u8 = 0xFF;

/// One PID's counters and the continuity counter its last packet carried, together so
/// that one lookup finds both.
#[derive(Debug, Clone, Copy)]
struct PidEntry {
    pid: Pid,
    last_cc: u8,
    counters: PidCounters,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            near: [NO_PID; NEAR],
            index: vec![0; 0x2000].into_boxed_slice(),
            seen: Vec::with_capacity(SEEN_RESERVED),
            stream: StreamCounters::default(),
        }
    }
}

/// PIDs a channel's counters have room for before the list grows (once per PID after).
const SEEN_RESERVED: usize = 32;

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
    /// The counters of `pid` (all zero for a PID not seen).
    pub fn pid(&self, pid: Pid) -> PidCounters {
        match self.index[usize::from(pid.value())] {
            0 => PidCounters::default(),
            i => self.seen[usize::from(i) - 1].counters,
        }
    }

    /// The counters of `pid`, to update (a PID's first use adds it to the list).
    #[inline]
    pub fn pid_mut(&mut self, pid: Pid) -> &mut PidCounters {
        let i = self.place(pid);
        &mut self.seen[i].counters
    }

    /// The counters of `pid` and the continuity counter of its last packet ([`CC_UNSET`]
    /// before the first), to update.
    #[inline]
    pub fn pid_and_cc_mut(&mut self, pid: Pid) -> (&mut PidCounters, &mut u8) {
        let i = self.place(pid);
        let e = &mut self.seen[i];
        (&mut e.counters, &mut e.last_cc)
    }

    /// `pid`'s place in `seen`, added there on its first use.
    #[inline]
    fn place(&mut self, pid: Pid) -> usize {
        let v = pid.value();
        // a mask rather than an early exit, so the compiler compares all at once
        let mut hits = 0u32;
        for (k, &p) in self.near.iter().enumerate() {
            hits |= u32::from(p == v) << k;
        }
        if hits != 0 {
            return hits.trailing_zeros() as usize;
        }
        self.place_far(pid)
    }

    fn place_far(&mut self, pid: Pid) -> usize {
        let slot = &mut self.index[usize::from(pid.value())];
        if *slot == 0 {
            self.seen.push(PidEntry {
                pid,
                last_cc: CC_UNSET,
                counters: PidCounters::default(),
            });
            // at most 8192 PIDs: the place fits
            *slot = self.seen.len() as u16;
            if let Some(n) = self.near.get_mut(self.seen.len() - 1) {
                *n = pid.value();
            }
        }
        usize::from(*slot) - 1
    }

    /// Totals over every PID.
    pub fn totals(&self) -> PidCounters {
        let mut t = PidCounters::default();
        for PidEntry { counters: c, .. } in &self.seen {
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
            t.cc_errors += c.cc_errors;
        }
        t
    }

    /// The report of PIDs with activity.
    pub fn report(&self) -> Report {
        let mut pids: Vec<PidReport> = self
            .seen
            .iter()
            .filter(|e| e.counters != PidCounters::default())
            .map(|e| PidReport {
                pid: e.pid.value(),
                counters: e.counters,
            })
            .collect();
        pids.sort_by_key(|p| p.pid);
        Report {
            stream: self.stream,
            pids,
        }
    }
}

/// The counters a monitor reads while the channel runs (HTTP status, /metrics): the data
/// path publishes them after each batch with relaxed stores, and never waits on a reader.
#[derive(Debug, Default)]
pub struct LiveCounters {
    pub packets_in: AtomicU64,
    pub packets_out: AtomicU64,
    /// ES payload packets scrambled here.
    pub scrambled: AtomicU64,
    /// ES packets that came in scrambled already (passed as they were).
    pub already_scrambled: AtomicU64,
    pub held_before_ecm: AtomicU64,
    pub key_switches: AtomicU64,
    pub degraded_holds: AtomicU64,
    pub degraded_episodes: AtomicU64,
    pub lagging_cas_switches: AtomicU64,
    pub ecms_generated: AtomicU64,
    pub ecm_failures: AtomicU64,
    pub psi_errors: AtomicU64,
    pub pcr_discontinuities: AtomicU64,
    pub cc_errors: AtomicU64,
    /// EMM packets queued for the EMM PID.
    pub emm_packets: AtomicU64,
    /// The crypto period in force.
    pub period: AtomicU64,
    /// Per CA system (in the PMT's order): when its ECM content last changed, in ms of
    /// [`monotonic_ms`]; 0 = never.
    pub ecm_changed_ms: Vec<AtomicU64>,
}

impl LiveCounters {
    /// Counters for a channel with `ca_systems` ECM streams.
    pub fn new(ca_systems: usize) -> LiveCounters {
        LiveCounters {
            ecm_changed_ms: (0..ca_systems).map(|_| AtomicU64::new(0)).collect(),
            ..LiveCounters::default()
        }
    }
}

/// Milliseconds since the first call in this process (at least 1): a clock the data path
/// and a monitor share through atomics.
pub fn monotonic_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let start = *START.get_or_init(std::time::Instant::now);
    start.elapsed().as_millis() as u64 + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_per_pid_stay_apart_and_report_in_pid_order() {
        let mut c = Counters::default();
        assert_eq!(c.pid(Pid::new(0x100)), PidCounters::default());
        for (pid, n) in [(0x1FFF, 3), (0x100, 2), (0, 1), (0x100, 4)] {
            c.pid_mut(Pid::new(pid)).input += n;
        }
        c.pid_mut(Pid::new(0x20)); // touched, nothing counted: not reported
        assert_eq!(c.pid(Pid::new(0x100)).input, 6);
        assert_eq!(c.pid(Pid::new(0x1FFF)).input, 3);
        assert_eq!(c.pid(Pid::new(0x101)).input, 0);
        assert_eq!(c.totals().input, 10);
        let r = c.report();
        let pids: Vec<(u16, u64)> = r.pids.iter().map(|p| (p.pid, p.counters.input)).collect();
        assert_eq!(pids, [(0, 1), (0x100, 6), (0x1FFF, 3)]);
    }

    #[test]
    fn each_pid_keeps_its_own_continuity_counter_near_and_far() {
        let mut c = Counters::default();
        // more PIDs than the near array holds, in an order that mixes the two
        let pids: Vec<u16> = (0..40u16).map(|k| (k * 197) % 0x1FFF).collect();
        for (k, &pid) in pids.iter().enumerate() {
            let (n, cc) = c.pid_and_cc_mut(Pid::new(pid));
            assert_eq!(*cc, CC_UNSET, "PID {pid:#x} starts with no counter");
            *cc = (k % 16) as u8;
            n.input += 1;
        }
        for (k, &pid) in pids.iter().enumerate().rev() {
            let (n, cc) = c.pid_and_cc_mut(Pid::new(pid));
            assert_eq!(*cc, (k % 16) as u8, "PID {pid:#x}");
            assert_eq!(n.input, 1);
            assert_eq!(c.pid(Pid::new(pid)).input, 1);
        }
        assert_eq!(c.report().pids.len(), pids.len());
    }

    #[test]
    fn every_pid_can_be_counted() {
        let mut c = Counters::default();
        for pid in (0..0x2000).rev() {
            c.pid_mut(Pid::new(pid)).dropped += u64::from(pid) + 1;
        }
        for pid in 0..0x2000u16 {
            assert_eq!(c.pid(Pid::new(pid)).dropped, u64::from(pid) + 1);
        }
        assert_eq!(c.report().pids.len(), 0x2000);
    }
}
