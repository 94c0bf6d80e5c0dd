//! An MPTS channel: several inputs (SPTS or MPTS), each giving the programs asked of it,
//! made into one transport stream with the channel's own numbering and SI.
//!
//! - Each input is followed by its own [`Judge`] (PAT and PMTs). A program is taken by its
//!   input program_number (default: the input's first program) and goes out under its
//!   `pnr` (default: the same number).
//! - Every PID of a taken program (PMT, PCR, ES) gets one output PID: the operator's
//!   `pid_map`, else the input's PID when no other program holds it, else the next free
//!   one from 0x100. A program keeps its output PIDs while its input keeps the PIDs, so an
//!   input's PMT change moves nothing that did not change. Whatever is not taken (other
//!   programs, the inputs' PSI and SI) is dropped and counted.
//! - The PAT, the PMTs (PCR and ES PIDs mapped, descriptors kept), the SDT and (with a
//!   network_id) the NIT are regenerated when an input's PSI changes, under castmux's own
//!   version numbers (bumped mod 32 only when the content changed), and sent on their own
//!   schedule: PAT and PMTs within 100 ms (ETR 290 1.3 allows 0.5 s), SDT within 2 s and
//!   NIT within 10 s (EN 300 468 §5.1.4 / TR 101 211 §4.4), TDT and TOT every 5 s
//!   (TR 101 211 asks at least every 30 s).
//! - Output continuity counters continue on every output PID whatever input PID feeds it.
//!
//! What goes on is an ordinary MPTS: the scrambler, its ECMs and its CAT treat it as any
//! other input.

use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::inputs::{account, wait_any};
use super::judge::{Judge, JudgeLimits};
use super::renumber::{own_table, Continuity, OwnTable, PsiOut};
use super::spec::ProgramSpec;
use crate::io::{
    Input, InputOptions, InputUrl, IoResult, IoStats, IoStatsSnapshot, PacketBatch, ReadStatus,
};
use crate::ts::psi_write::{write_pat, write_pmt};
use crate::ts::section::Section;
use crate::ts::si_write::{
    write_nit, write_sdt, write_tdt, write_tot, NitService, NitStream, SdtService, PID_NIT,
    PID_SDT, PID_TDT, RUNNING,
};
use crate::ts::{EsKind, Packet, PacketRef, PatEntry, Pid, Pmt, PmtStream};

/// `InputState::map` value of an input PID the multiplex does not take.
const DROP: u16 = 0xFFFF;
/// `InputState::map` value of an ES whose output PID our PMT does not name yet as it now
/// is (new to its program, or of another stream type): dropped until that PMT is sent.
const HELD: u16 = 0xFFFE;
/// `owner` value of a PID no program holds.
const NOBODY: u8 = u8::MAX;
/// Output PIDs allocated automatically start here (below: PSI/SI and common ES PIDs).
const FIRST_AUTO_PID: u16 = 0x100;
/// ...and stop before the range where the scrambler puts its ECM and EMM PIDs.
const LAST_AUTO_PID: u16 = 0x1FEF;
/// Reads come at the inputs' datagram pace and a round's packets go out together, so a
/// table's place in stream time moves by some tens of ms: sent every 70 ms on the wall
/// clock, the PAT and PMTs stay within 100 ms of each other in stream time (every 90 ms
/// measured up to 113 ms).
const PAT_PMT_INTERVAL: Duration = Duration::from_millis(70);
/// Least distance between two sections of one table (TR 101 211 §4.4).
const MIN_GAP: Duration = Duration::from_millis(25);
const SDT_INTERVAL: Duration = Duration::from_secs(1);
const NIT_INTERVAL: Duration = Duration::from_secs(5);
const TDT_INTERVAL: Duration = Duration::from_secs(5);
/// own_table keys of the SDT and NIT (PAT 0, PMTs 1 + number).
const SDT_KEY: u32 = 0x1_0001;
const NIT_KEY: u32 = 0x1_0002;

/// The multiplex as a spec gives it.
#[derive(Debug, Clone)]
pub struct MptsOptions {
    pub tsid: u16,
    pub onid: u16,
    /// (network_id, network_name): a NIT is sent.
    pub network: Option<(u16, String)>,
    /// The default SDT provider name.
    pub provider: String,
    pub programs: Vec<ProgramSpec>,
    /// Per program: whether it is scrambled (the SDT's free_CA_mode).
    pub scrambled: Vec<bool>,
    /// How inputs are followed (their timeout: a silent input's PSI must come again).
    pub limits: JudgeLimits,
}

/// One program's counters.
#[derive(Debug, Default)]
pub struct ProgramCounters {
    /// The input, as logs show it.
    pub input: String,
    /// The output program number (0 until the input's PAT is known).
    pub pnr: AtomicU64,
    /// Packets of the program taken from its input.
    pub packets: AtomicU64,
    /// Packets of the program dropped (no room in the batch).
    pub dropped: AtomicU64,
    /// New versions of its PMT (the input's PMT changed).
    pub psi_regenerated: AtomicU64,
}

/// What an MPTS channel shows the status API and `/metrics`.
#[derive(Debug, Default)]
pub struct MptsShared {
    /// The distinct inputs (secrets masked).
    pub urls: Vec<String>,
    /// Per input: packets of PIDs the multiplex does not take (other programs, the
    /// input's PSI/SI).
    pub not_taken: Vec<AtomicU64>,
    pub programs: Vec<ProgramCounters>,
    /// PSI/SI packets sent (PAT, PMT, SDT, NIT, TDT, TOT).
    pub psi_packets: AtomicU64,
    /// PSI/SI packets that found no room in the batch.
    pub psi_dropped: AtomicU64,
}

/// One input as the mux follows it.
#[derive(Debug)]
struct InputState {
    judge: Judge,
    /// The judge's PSI generation the map was made from.
    generation: Option<u64>,
    /// Input PID -> output PID (`DROP`).
    map: Box<[u16]>,
    /// Input PID -> index of the program it belongs to.
    owner: Box<[u8]>,
    not_taken: u64,
    /// Its ES are dropped: no PMT of it has come since it started or came back from a
    /// silence (its layout may have changed meanwhile).
    held: bool,
}

#[derive(Debug, Default)]
struct ProgramState {
    input: usize,
    /// Output program number and PMT PID, once the input's PMT is known.
    number: Option<u16>,
    pmt_pid: Option<Pid>,
    /// (input PID, output PID) of its PMT, PCR and ES.
    pids: Vec<(Pid, Pid)>,
    /// Our PMT section.
    pmt: Vec<u8>,
    video: bool,
    packets: u64,
    dropped: u64,
    versions: u64,
    /// A duplicate output number was logged.
    warned: bool,
    /// (input PID, output PID) of its ES held until its PMT is sent (`HELD`).
    held: Vec<(Pid, Pid)>,
}

/// The multiplexer's core, without sockets: packets of numbered inputs in, the
/// multiplex out (the fuzz target and the unit tests drive it directly).
#[derive(Debug)]
pub struct Mux {
    opts: MptsOptions,
    inputs: Vec<InputState>,
    programs: Vec<ProgramState>,
    /// Output PID -> the program holding it (`NOBODY`).
    used: Box<[u8]>,
    /// Output PIDs an operator's pid_map reserves, whatever program is up.
    reserved: Box<[bool]>,
    cc: Continuity,
    psi_out: PsiOut,
    tables: Vec<OwnTable>,
    pat: Vec<u8>,
    sdt: Vec<u8>,
    nit: Vec<u8>,
    /// A reused buffer for the TDT and TOT.
    time: Vec<u8>,
    next_pat: Option<Instant>,
    next_sdt: Option<Instant>,
    next_nit: Option<Instant>,
    next_tdt: Option<Instant>,
    psi_packets: u64,
    psi_dropped: u64,
}

/// The multiplexer reading its inputs: a [`crate::io::PacketSource`] through
/// [`super::inputs::ChannelInput`].
#[derive(Debug)]
pub struct Mpts {
    mux: Mux,
    /// The distinct inputs and their counters as last accounted.
    inputs: Vec<(Input, IoStatsSnapshot)>,
    scratch: PacketBatch,
    psi_room: usize,
    stats: Arc<IoStats>,
    shared: Arc<MptsShared>,
    more: bool,
    /// The input read first next round (each gets the first turn in turn).
    first: usize,
}

impl Mpts {
    /// Open the distinct inputs of `opts.programs` (`urls[k]` is program `k`'s, parsed;
    /// each input is read once, whatever number of programs it gives).
    pub fn open(opts: MptsOptions, urls: &[InputUrl], batch_packets: usize) -> IoResult<Mpts> {
        // each distinct input once: (its spec text, as logs show it)
        let mut names: Vec<(String, String)> = Vec::new();
        let mut inputs = Vec::new();
        let mut program_inputs = Vec::with_capacity(opts.programs.len());
        for (p, url) in opts.programs.iter().zip(urls) {
            let k = match names.iter().position(|(n, _)| n == p.input.trim()) {
                Some(k) => k,
                None => {
                    let input = Input::open(url, &InputOptions::default())?;
                    let seen = input.stats().snapshot();
                    inputs.push((input, seen));
                    names.push((p.input.trim().to_owned(), url.display()));
                    inputs.len() - 1
                }
            };
            program_inputs.push(k);
        }
        let display: Vec<String> = names.into_iter().map(|(_, d)| d).collect();
        let shared = Arc::new(MptsShared {
            not_taken: inputs.iter().map(|_| AtomicU64::new(0)).collect(),
            programs: program_inputs
                .iter()
                .map(|&k| ProgramCounters {
                    input: display.get(k).cloned().unwrap_or_default(),
                    ..ProgramCounters::default()
                })
                .collect(),
            urls: display,
            ..MptsShared::default()
        });
        // room kept in the caller's batch for one round of PSI/SI: the PAT, one packet per
        // PMT, SDT and NIT of up to 6 packets each, the TDT and TOT
        let psi_room = 1 + program_inputs.len() + 14;
        let per_input = (batch_packets.saturating_sub(psi_room) / inputs.len().max(1)).max(7);
        Ok(Mpts {
            mux: Mux::new(opts, &program_inputs),
            inputs,
            scratch: PacketBatch::with_capacity(per_input),
            psi_room,
            stats: Arc::default(),
            shared,
            more: false,
            first: 0,
        })
    }

    /// What to wait on: every input's socket or eventfd.
    pub fn fds(&self) -> Vec<BorrowedFd<'_>> {
        self.inputs.iter().filter_map(|i| i.0.wake_fd()).collect()
    }

    /// Whether the shared data plane can serve it (every input has something to wait on).
    pub fn plane_served(&self) -> bool {
        self.inputs.iter().all(|i| i.0.wake_fd().is_some())
    }

    /// Whether an input may still hold packets.
    pub fn more(&self) -> bool {
        self.more
    }

    pub fn stats(&self) -> &Arc<IoStats> {
        &self.stats
    }

    pub fn shared(&self) -> Arc<MptsShared> {
        Arc::clone(&self.shared)
    }

    /// Read what the inputs hold into `batch`: the due PSI/SI first, then each input's
    /// taken packets.
    pub fn read_batch(
        &mut self,
        batch: &mut PacketBatch,
        timeout: Duration,
    ) -> IoResult<ReadStatus> {
        batch.clear();
        self.round(batch, Instant::now())?;
        if batch.is_empty() && !timeout.is_zero() {
            wait_any(
                self.inputs.iter().filter_map(|i| i.0.wake_fd()),
                timeout,
                &self.shared.urls,
            )?;
            self.round(batch, Instant::now())?;
        }
        if batch.is_empty() {
            return Ok(ReadStatus::TimedOut);
        }
        IoStats::add(&self.stats.packets_in, batch.len() as u64);
        Ok(ReadStatus::Packets(batch.len()))
    }

    fn round(&mut self, batch: &mut PacketBatch, now: Instant) -> IoResult<()> {
        self.more = false;
        let n = self.inputs.len();
        let mut got = false;
        let mut res = Ok(());
        for turn in 0..n {
            let i = (self.first + turn) % n;
            if turn > 0 && batch.remaining() < self.scratch.capacity() + self.psi_room {
                // the next read could overflow the batch: the plane reads again at once
                self.more = true;
                break;
            }
            let (input, seen) = &mut self.inputs[i];
            match input.read_batch(&mut self.scratch, Duration::ZERO) {
                Ok(ReadStatus::Packets(_)) => {
                    got = true;
                    for pkt in self.scratch.packets() {
                        self.mux.push(i, pkt, now, batch);
                    }
                    self.more |= self.scratch.is_full();
                }
                Ok(_) => {}
                Err(e) => res = Err(e),
            }
            account(&self.stats, input.stats(), seen);
            if res.is_err() {
                break;
            }
        }
        self.first = (self.first + 1) % n.max(1);
        if got {
            // the PSI/SI go with the packets: a silent multiplex sends nothing
            self.mux.send_due(batch, now, unix_now());
        }
        self.mux.publish(&self.shared);
        res
    }
}

/// When a table sent every `interval` and due at `next` goes out after a change: now, but
/// not within 25 ms of its last sending (TR 101 211 §4.4's least distance between two
/// sections of one table).
fn soon(next: Option<Instant>, interval: Duration, now: Instant) -> Option<Instant> {
    let sent = next.and_then(|t| t.checked_sub(interval));
    Some(sent.map_or(now, |t| (t + MIN_GAP).max(now)))
}

/// (ES PID, stream_type) of every stream our PMT section `pmt` names (none when empty).
fn streams_of(pmt: &[u8]) -> Vec<(Pid, u8)> {
    Section::parse(pmt, pmt.len())
        .ok()
        .and_then(|s| {
            Pmt::parse(&s).ok().map(|p| {
                p.streams()
                    .map(|st| (st.elementary_pid, st.stream_type.0))
                    .collect()
            })
        })
        .unwrap_or_default()
}

/// Seconds since the Unix epoch, for the TDT and TOT.
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Mux {
    /// A mux of `opts.programs`, program `k` read from input `program_inputs[k]`.
    pub fn new(opts: MptsOptions, program_inputs: &[usize]) -> Mux {
        let n = program_inputs.iter().max().map_or(0, |m| m + 1);
        let inputs = (0..n)
            .map(|_| InputState {
                judge: Judge::new(),
                generation: None,
                map: vec![DROP; 8192].into_boxed_slice(),
                owner: vec![NOBODY; 8192].into_boxed_slice(),
                not_taken: 0,
                held: false,
            })
            .collect();
        let mut reserved = vec![false; 8192].into_boxed_slice();
        for p in &opts.programs {
            for (_, to) in &p.pid_map {
                reserved[usize::from(to.value())] = true;
            }
        }
        Mux {
            inputs,
            programs: program_inputs
                .iter()
                .map(|&input| ProgramState {
                    input,
                    ..ProgramState::default()
                })
                .collect(),
            opts,
            used: vec![NOBODY; 8192].into_boxed_slice(),
            reserved,
            cc: Continuity::new(),
            psi_out: PsiOut::default(),
            tables: Vec::new(),
            pat: Vec::new(),
            sdt: Vec::new(),
            nit: Vec::new(),
            time: Vec::with_capacity(64),
            next_pat: None,
            next_sdt: None,
            next_nit: None,
            next_tdt: None,
            psi_packets: 0,
            psi_dropped: 0,
        }
    }

    /// Judge packet `pkt` of input `i` and send it into `batch` if the multiplex takes it.
    pub fn push(&mut self, i: usize, pkt: &Packet, now: Instant, batch: &mut PacketBatch) {
        let Some(m) = self.inputs.get_mut(i) else {
            return;
        };
        m.judge.observe(pkt, now, &self.opts.limits);
        if m.generation != Some(m.judge.psi_generation) || m.held == m.judge.pmt_seen_since_resume()
        {
            self.remap(i, now);
        }
        let m = &mut self.inputs[i];
        let r = PacketRef::new(pkt);
        let pid = usize::from(r.pid().value());
        let o = m.map[pid];
        // (a held ES is not taken yet: it waits for our PMT)
        if o == DROP || o == HELD {
            m.not_taken += 1;
            return;
        }
        let prog = &mut self.programs[usize::from(m.owner[pid])];
        let Some(slot) = batch.push_slot() else {
            prog.dropped += 1;
            return;
        };
        prog.packets += 1;
        *slot = *pkt;
        if usize::from(o) != pid {
            slot[1] = (slot[1] & 0xE0) | (o >> 8) as u8;
            slot[2] = o as u8;
        }
        self.cc.restamp(slot, usize::from(o), r.has_payload());
    }

    /// Input `i`'s PSI changed: map its programs again and regenerate the tables.
    fn remap(&mut self, i: usize, now: Instant) {
        let m = &mut self.inputs[i];
        m.generation = Some(m.judge.psi_generation);
        // fail closed: an input with no PMT since it started or came back sends no ES
        let held = !m.judge.pmt_seen_since_resume();
        m.held = held;
        // what our PMTs named before, to hold what they will name anew
        let before: Vec<Vec<(Pid, u8)>> =
            self.programs.iter().map(|p| streams_of(&p.pmt)).collect();
        for k in 0..self.programs.len() {
            if self.programs[k].input == i {
                self.map_program(k);
            }
        }
        // the input's map from its programs' PIDs (their PMT PIDs stay dropped: ours go)
        let m = &mut self.inputs[i];
        m.map.fill(DROP);
        m.owner.fill(NOBODY);
        for (k, p) in self.programs.iter_mut().enumerate() {
            if p.input != i {
                continue;
            }
            // fail closed: an output PID our PMT will name as a new ES of this program, or
            // as another stream type, waits for that PMT: until then the scrambler after
            // us judges it by the PMT it last saw, which may call it clear
            let now_named = streams_of(&p.pmt);
            p.held.clear();
            for (from, to) in p.pids.iter().skip(1) {
                let f = usize::from(from.value());
                if m.map[f] == DROP {
                    let fresh = now_named
                        .iter()
                        .any(|s| s.0 == *to && !before[k].contains(s));
                    m.map[f] = if held {
                        DROP
                    } else if fresh {
                        p.held.push((*from, *to));
                        HELD
                    } else {
                        to.value()
                    };
                    m.owner[f] = k as u8;
                }
            }
        }
        self.used.fill(NOBODY);
        for (k, p) in self.programs.iter().enumerate() {
            for (_, to) in &p.pids {
                self.used[usize::from(to.value())] = k as u8;
            }
        }
        self.build_tables();
        // what changed goes out now, not at the next interval
        self.next_pat = soon(self.next_pat, PAT_PMT_INTERVAL, now);
        self.next_sdt = soon(self.next_sdt, SDT_INTERVAL, now);
        if self.opts.network.is_some() {
            self.next_nit = soon(self.next_nit, NIT_INTERVAL, now);
        }
    }

    /// Map program `k` onto the output from its input's current PAT and PMT.
    fn map_program(&mut self, k: usize) {
        let spec = &self.opts.programs[k];
        let judge = &self.inputs[self.programs[k].input].judge;
        let ip = match spec.program {
            Some(n) => judge.programs.iter().find(|p| p.number == n),
            None => judge.programs.first(),
        };
        let parsed = ip.and_then(|ip| {
            let s = Section::parse(&ip.pmt, ip.pmt.len()).ok()?;
            let pmt = Pmt::parse(&s).ok()?;
            Some((ip, pmt))
        });
        let Some((ip, pmt)) = parsed else {
            // not (or no longer) in the input: its PIDs are free again
            let p = &mut self.programs[k];
            p.number = None;
            p.pmt_pid = None;
            p.pids.clear();
            p.pmt.clear();
            return;
        };
        let number = spec.pnr.unwrap_or(ip.number);
        let taken = self
            .programs
            .iter()
            .enumerate()
            .any(|(j, p)| j != k && p.number == Some(number));
        if taken {
            if !self.programs[k].warned {
                tracing::warn!(
                    program = k + 1,
                    pnr = number,
                    "another program of the multiplex has this number: left out (give it a pnr)"
                );
                self.programs[k].warned = true;
            }
            self.programs[k].pids.clear();
            self.programs[k].number = None;
            return;
        }
        // the input PIDs in order: PMT, PCR, ES
        let mut wanted: Vec<Pid> = vec![ip.pmt_pid];
        if pmt.pcr_pid != Pid::NULL {
            wanted.push(pmt.pcr_pid);
        }
        for st in pmt.streams() {
            if !wanted.contains(&st.elementary_pid) {
                wanted.push(st.elementary_pid);
            }
        }
        let old = std::mem::take(&mut self.programs[k].pids);
        let mut pids: Vec<(Pid, Pid)> = Vec::with_capacity(wanted.len());
        for from in wanted {
            let to = old
                .iter()
                .find(|(f, _)| *f == from)
                .map(|(_, t)| *t)
                .or_else(|| {
                    spec.pid_map
                        .iter()
                        .find(|(f, _)| *f == from)
                        .map(|(_, t)| *t)
                })
                .or_else(|| self.shared_pid(k, from))
                .or_else(|| self.free_pid(k, from, &pids));
            let Some(to) = to else {
                tracing::warn!(program = k + 1, pid = %from, "no free output PID: left out");
                continue;
            };
            if !old.iter().any(|(f, t)| *f == from && *t == to) {
                // another input PID now feeds it: its counters continue from the last sent
                self.cc.rebase(usize::from(to.value()));
            }
            self.used[usize::from(to.value())] = k as u8;
            pids.push((from, to));
        }
        if pids.first().map(|p| p.0) != Some(ip.pmt_pid) {
            // no output PID for its PMT: the program cannot go out
            let p = &mut self.programs[k];
            p.number = None;
            p.pmt_pid = None;
            p.pids.clear();
            p.pmt.clear();
            return;
        }
        let out = |p: Pid| pids.iter().find(|(f, _)| *f == p).map(|(_, t)| *t);
        let pcr = out(pmt.pcr_pid).unwrap_or(Pid::NULL);
        let mut video = false;
        let section = own_table(&mut self.tables, 1 + u32::from(number), |buf, v| {
            let streams = pmt.streams().filter_map(|st| {
                out(st.elementary_pid).map(|p| PmtStream {
                    elementary_pid: p,
                    ..st
                })
            });
            write_pmt(buf, number, v, pcr, &pmt.descriptors, streams).is_ok()
        });
        for st in pmt.streams() {
            video |= st.kind() == EsKind::Video;
        }
        let p = &mut self.programs[k];
        let out_pmt = pids.first().map(|(_, t)| *t);
        match section {
            Some(s) if out_pmt.is_some() => {
                if s != p.pmt {
                    p.versions += 1;
                }
                p.pmt = s;
            }
            _ => {
                tracing::warn!(
                    program = k + 1,
                    "its PMT does not fit one section: left out"
                );
                p.pmt.clear();
            }
        }
        p.number = Some(number);
        p.pmt_pid = out_pmt;
        p.pids = pids;
        p.video = video;
    }

    /// The output PID another program of the same input gives input PID `from` (two
    /// programs of one MPTS input may share a PCR or an ES).
    fn shared_pid(&self, k: usize, from: Pid) -> Option<Pid> {
        let input = self.programs[k].input;
        self.programs
            .iter()
            .enumerate()
            .filter(|(j, p)| *j != k && p.input == input)
            .find_map(|(_, p)| p.pids.iter().skip(1).find(|(f, _)| *f == from))
            .map(|(_, t)| *t)
    }

    /// An output PID for input PID `from` of program `k`: itself when free, else the next
    /// free one from 0x100.
    fn free_pid(&self, k: usize, from: Pid, mine: &[(Pid, Pid)]) -> Option<Pid> {
        let free = |v: u16| {
            let u = usize::from(v);
            (self.used[u] == NOBODY || self.used[u] == k as u8)
                && !self.reserved[u]
                && !mine.iter().any(|(_, t)| t.value() == v)
        };
        let own = from.value();
        if (0x20..=LAST_AUTO_PID).contains(&own) && free(own) {
            return Some(from);
        }
        (FIRST_AUTO_PID..=LAST_AUTO_PID)
            .find(|v| free(*v))
            .map(Pid::new)
    }

    /// Regenerate the PAT, SDT and NIT from the programs now known.
    fn build_tables(&mut self) {
        // the PMTs of numbers no program has now are forgotten once they pile up (an input
        // renumbering its programs again and again must not grow this without bound); a
        // number that comes back within the bound keeps its version sequence
        if self.tables.len() > 3 * self.programs.len() + 3 {
            let programs = &self.programs;
            self.tables.retain(|t| {
                t.key == 0
                    || t.key > 0xFFFF + 1
                    || programs
                        .iter()
                        .any(|p| p.number.is_some_and(|n| 1 + u32::from(n) == t.key))
            });
        }
        let mut up: Vec<usize> = (0..self.programs.len())
            .filter(|&k| self.programs[k].number.is_some() && !self.programs[k].pmt.is_empty())
            .collect();
        up.sort_by_key(|&k| self.programs[k].number);
        let mut entries: Vec<PatEntry> = Vec::with_capacity(up.len() + 1);
        if self.opts.network.is_some() {
            entries.push(PatEntry {
                program_number: 0,
                pid: PID_NIT,
            });
        }
        for &k in &up {
            let p = &self.programs[k];
            if let (Some(number), Some(pid)) = (p.number, p.pmt_pid) {
                entries.push(PatEntry {
                    program_number: number,
                    pid,
                });
            }
        }
        let tsid = self.opts.tsid;
        self.pat = own_table(&mut self.tables, 0, |out, v| {
            write_pat(out, tsid, v, &entries).is_ok()
        })
        .unwrap_or_default();
        let names: Vec<String> =
            up.iter()
                .map(|&k| {
                    self.opts.programs[k].name.clone().unwrap_or_else(|| {
                        format!("Service {}", self.programs[k].number.unwrap_or(0))
                    })
                })
                .collect();
        let service_type = |k: usize| {
            self.opts.programs[k]
                .service_type
                .unwrap_or(if self.programs[k].video { 0x01 } else { 0x02 })
        };
        let services: Vec<SdtService<'_>> = up
            .iter()
            .zip(&names)
            .map(|(&k, name)| SdtService {
                service_id: self.programs[k].number.unwrap_or(0),
                eit_schedule: false,
                eit_present_following: false,
                running_status: RUNNING,
                free_ca_mode: self.opts.scrambled.get(k).copied().unwrap_or(false),
                service_type: service_type(k),
                provider_name: self.opts.programs[k]
                    .provider
                    .as_deref()
                    .unwrap_or(&self.opts.provider),
                service_name: name,
            })
            .collect();
        let onid = self.opts.onid;
        self.sdt = own_table(&mut self.tables, SDT_KEY, |out, v| {
            write_sdt(out, tsid, onid, v, &services).is_ok()
        })
        .unwrap_or_default();
        if let Some((network_id, network_name)) = &self.opts.network {
            let list: Vec<NitService> = up
                .iter()
                .map(|&k| NitService {
                    service_id: self.programs[k].number.unwrap_or(0),
                    service_type: service_type(k),
                    lcn: self.opts.programs[k].lcn,
                    visible: self.opts.programs[k].visible,
                })
                .collect();
            let stream = NitStream {
                transport_stream_id: tsid,
                original_network_id: onid,
                services: &list,
                delivery: None,
            };
            self.nit = own_table(&mut self.tables, NIT_KEY, |out, v| {
                write_nit(out, *network_id, v, network_name, &[stream]).is_ok()
            })
            .unwrap_or_default();
        }
    }

    /// Send the tables whose interval is up (`unix`: the time for the TDT and TOT).
    pub fn send_due(&mut self, batch: &mut PacketBatch, now: Instant, unix: u64) {
        let due = |t: Option<Instant>| t.is_none_or(|t| now >= t);
        if self.pat.is_empty() {
            return;
        }
        if due(self.next_pat) {
            self.next_pat = Some(now + PAT_PMT_INTERVAL);
            let pat = std::mem::take(&mut self.pat);
            self.send(Pid::PAT, &pat, batch);
            self.pat = pat;
            for k in 0..self.programs.len() {
                let p = &mut self.programs[k];
                let (Some(pid), false) = (p.pmt_pid, p.pmt.is_empty()) else {
                    continue;
                };
                let s = std::mem::take(&mut p.pmt);
                self.send(pid, &s, batch);
                let p = &mut self.programs[k];
                p.pmt = s;
                // its ES that waited for this PMT follow it
                let m = &mut self.inputs[p.input];
                for (from, to) in p.held.drain(..) {
                    let f = usize::from(from.value());
                    if m.map[f] == HELD {
                        m.map[f] = to.value();
                    }
                }
            }
        }
        if due(self.next_sdt) && !self.sdt.is_empty() {
            self.next_sdt = Some(now + SDT_INTERVAL);
            let s = std::mem::take(&mut self.sdt);
            self.send(PID_SDT, &s, batch);
            self.sdt = s;
        }
        if self.opts.network.is_some() && due(self.next_nit) && !self.nit.is_empty() {
            self.next_nit = Some(now + NIT_INTERVAL);
            let s = std::mem::take(&mut self.nit);
            self.send(PID_NIT, &s, batch);
            self.nit = s;
        }
        if due(self.next_tdt) {
            self.next_tdt = Some(now + TDT_INTERVAL);
            let mut t = std::mem::take(&mut self.time);
            t.clear();
            if write_tdt(&mut t, unix).is_ok() && write_tot(&mut t, unix, &[]).is_ok() {
                self.send(PID_TDT, &t, batch);
            }
            self.time = t;
        }
    }

    fn send(&mut self, pid: Pid, sections: &[u8], batch: &mut PacketBatch) {
        let before = batch.len();
        self.psi_dropped += self.psi_out.emit(pid, sections, batch);
        self.psi_packets += (batch.len() - before) as u64;
    }

    /// Publish the counters into `s` (once a round, not per packet).
    pub fn publish(&self, s: &MptsShared) {
        for (c, i) in s.not_taken.iter().zip(&self.inputs) {
            c.store(i.not_taken, Relaxed);
        }
        for (c, p) in s.programs.iter().zip(&self.programs) {
            c.pnr.store(p.number.map_or(0, u64::from), Relaxed);
            c.packets.store(p.packets, Relaxed);
            c.dropped.store(p.dropped, Relaxed);
            c.psi_regenerated.store(p.versions, Relaxed);
        }
        s.psi_packets.store(self.psi_packets, Relaxed);
        s.psi_dropped.store(self.psi_dropped, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::ts::{Descriptors, Packetizer, Pat, SectionAssembler, StreamType};

    fn limits() -> JudgeLimits {
        JudgeLimits {
            timeout: Duration::from_secs(5),
            min_bitrate: 0,
            max_cc_errors: None,
            services: Vec::new(),
        }
    }

    /// A program of a test input: number, PMT PID, ES (stream_type, PID)...
    type Prog<'a> = (u16, u16, &'a [(u8, u16)]);

    /// An input's PAT and PMTs (the PCR on the first ES), on counters from `cc0`.
    fn psi(version: u8, cc0: u8, programs: &[Prog<'_>]) -> Vec<Packet> {
        let none = Descriptors::new(&[]).unwrap();
        let mut out = Vec::new();
        let mut pat = Vec::new();
        let entries: Vec<PatEntry> = programs
            .iter()
            .map(|(n, pmt, _)| PatEntry {
                program_number: *n,
                pid: Pid::new(*pmt),
            })
            .collect();
        write_pat(&mut pat, 9, version, &entries).unwrap();
        let cc = crate::ts::ContinuityCounter::new(cc0);
        Packetizer::with_cc(Pid::PAT, cc)
            .packetize(&pat, |p| out.push(*p))
            .unwrap();
        for (n, pmt, es) in programs {
            let mut s = Vec::new();
            let lang = [0x0A, 4, b'e', b'n', b'g', 0];
            write_pmt(
                &mut s,
                *n,
                version,
                Pid::new(es[0].1),
                &none,
                es.iter().map(|(t, pid)| PmtStream {
                    stream_type: StreamType(*t),
                    elementary_pid: Pid::new(*pid),
                    descriptors: Descriptors::new(if *t == 3 { &lang } else { &[] }).unwrap(),
                }),
            )
            .unwrap();
            Packetizer::with_cc(Pid::new(*pmt), cc)
                .packetize(&s, |p| out.push(*p))
                .unwrap();
        }
        out
    }

    fn es(pid: u16, cc: u8) -> Packet {
        let mut p = [0x5Au8; 188];
        p[..4].copy_from_slice(&[0x47, (pid >> 8) as u8, pid as u8, 0x10 | (cc & 0x0F)]);
        p
    }

    fn program(input: &str, program: Option<u16>, pnr: Option<u16>, name: &str) -> ProgramSpec {
        ProgramSpec {
            input: input.to_owned(),
            program,
            pnr,
            name: Some(name.to_owned()),
            provider: None,
            service_type: None,
            lcn: Some(pnr.unwrap_or(1)),
            visible: true,
            pid_map: Vec::new(),
        }
    }

    fn options(programs: Vec<ProgramSpec>) -> MptsOptions {
        MptsOptions {
            tsid: 10,
            onid: 1,
            network: Some((0x3001, "castmux".to_owned())),
            provider: "prov".to_owned(),
            scrambled: programs.iter().map(|p| p.pnr == Some(102)).collect(),
            programs,
            limits: limits(),
        }
    }

    /// Every output section by PID, as (table_id, section bytes).
    fn sections(out: &[Packet], pmt_pids: &[u16]) -> BTreeMap<u16, Vec<Vec<u8>>> {
        let mut asm: BTreeMap<u16, SectionAssembler> = BTreeMap::new();
        let mut got: BTreeMap<u16, Vec<Vec<u8>>> = BTreeMap::new();
        for p in out {
            let pid = PacketRef::new(p).pid().value();
            if ![0, 0x10, 0x11, 0x14].contains(&pid) && !pmt_pids.contains(&pid) {
                continue;
            }
            asm.entry(pid)
                .or_insert_with(SectionAssembler::private)
                .push(p, |s| {
                    let s = s.unwrap();
                    got.entry(pid).or_default().push(s.bytes().to_vec());
                });
        }
        got
    }

    fn pmt_of(s: &[u8]) -> (u16, u8, u16, Vec<(u8, u16, usize)>) {
        let sec = Section::parse(s, 1024).unwrap();
        let pmt = Pmt::parse(&sec).unwrap();
        (
            pmt.program_number(),
            sec.long_header().unwrap().version,
            pmt.pcr_pid.value(),
            pmt.streams()
                .map(|st| {
                    (
                        st.stream_type.0,
                        st.elementary_pid.value(),
                        st.descriptors.as_bytes().len(),
                    )
                })
                .collect(),
        )
    }

    #[test]
    fn three_inputs_make_one_multiplex_with_unique_pids_and_own_si() {
        // two SPTS on the same PIDs (as ffmpeg makes them), and an MPTS of which the
        // second program is taken
        let a = "udp://239.0.0.1:1";
        let b = "udp://239.0.0.2:1";
        let c = "udp://239.0.0.3:1";
        let opts = options(vec![
            program(a, None, Some(101), "News"),
            program(b, None, Some(102), "Sport"),
            program(c, Some(7), Some(103), "Radio"),
        ]);
        let mut mux = Mux::new(opts, &[0, 1, 2]);
        let t0 = Instant::now();
        let mut batch = PacketBatch::with_capacity(4096);
        let spts: &[Prog<'_>] = &[(1, 0x1000, &[(0x1B, 0x100), (0x03, 0x101)])];
        let mpts: &[Prog<'_>] = &[(6, 0x1000, &[(0x1B, 0x100)]), (7, 0x1001, &[(0x03, 0x102)])];
        for (i, p) in [(0, spts), (1, spts), (2, mpts)] {
            for pkt in psi(0, 0, p) {
                mux.push(i, &pkt, t0, &mut batch);
            }
        }
        for cc in 0..20u8 {
            // (our PMTs go out before the ES they name: an ES waits for them)
            if cc % 5 == 0 {
                mux.send_due(
                    &mut batch,
                    t0 + Duration::from_secs(u64::from(cc)),
                    1_796_119_200,
                );
            }
            for (i, pid) in [
                (0, 0x100),
                (0, 0x101),
                (1, 0x100),
                (1, 0x101),
                (2, 0x100),
                (2, 0x102),
            ] {
                mux.push(i, &es(pid, cc), t0, &mut batch);
            }
        }
        let out = batch.packets().to_vec();
        let secs = sections(&out, &[0x1000, 0x102, 0x1001]);
        // the PAT: the channel's TSID, the NIT, the three programs on distinct PMT PIDs
        let pat_s = Section::parse(&secs[&0][0], 1024).unwrap();
        let pat = Pat::parse(&pat_s).unwrap();
        assert_eq!(pat.transport_stream_id(), 10);
        let entries: Vec<(u16, u16)> = pat
            .entries()
            .map(|e| (e.program_number, e.pid.value()))
            .collect();
        assert_eq!(
            entries,
            [(0, 0x10), (101, 0x1000), (102, 0x102), (103, 0x1001)]
        );
        // the PMTs: the second SPTS's PIDs moved to the next free ones from 0x100, the
        // MPTS's PMT PID kept (free), its audio moved (0x102 is taken by then)
        let pmts: BTreeMap<u16, _> = [0x1000, 0x102, 0x1001]
            .iter()
            .map(|pid| (*pid, pmt_of(&secs[pid][0])))
            .collect();
        assert_eq!(
            pmts[&0x1000],
            (101, 0, 0x100, vec![(0x1B, 0x100, 0), (0x03, 0x101, 6)])
        );
        assert_eq!(
            pmts[&0x102],
            (102, 0, 0x103, vec![(0x1B, 0x103, 0), (0x03, 0x104, 6)])
        );
        assert_eq!(pmts[&0x1001], (103, 0, 0x105, vec![(0x03, 0x105, 6)]));
        // ES packets on their output PIDs, counters continuous per PID
        let mut last: BTreeMap<u16, u8> = BTreeMap::new();
        let mut count: BTreeMap<u16, usize> = BTreeMap::new();
        for p in &out {
            let r = PacketRef::new(p);
            let pid = r.pid().value();
            if let Some(l) = last.insert(pid, r.cc().value()) {
                assert_eq!(r.cc().value(), (l + 1) & 0x0F, "PID {pid:#x}");
            }
            *count.entry(pid).or_default() += 1;
        }
        for pid in [0x100, 0x101, 0x103, 0x104, 0x105] {
            assert_eq!(count[&pid], 20, "PID {pid:#x}");
        }
        // the MPTS's first program (its video 0x100, its PMT) is not taken, nor the
        // input's PAT and the PMT we regenerate: counted
        assert_eq!(mux.inputs[2].not_taken, 20 + 1 + 1 + 1);
        // SDT: names, provider, free_CA_mode on the scrambled one
        let sdt = Section::parse(&secs[&0x11][0], 1024).unwrap();
        assert_eq!(
            (
                sdt.table_id(),
                sdt.long_header().unwrap().table_id_extension
            ),
            (0x42, 10)
        );
        let text = String::from_utf8_lossy(sdt.payload()).into_owned();
        for name in ["News", "Sport", "Radio", "prov"] {
            assert!(text.contains(name), "{name} in the SDT");
        }
        // service_id 102: its running_status/free_CA byte has free_CA_mode
        let p = sdt.payload();
        let at = p.windows(3).position(|w| w == [0, 102, 0xFC]).unwrap();
        assert_eq!(p[at + 3] & 0xF0, 0x90);
        // NIT with the LCNs, TDT and TOT
        assert_eq!(secs[&0x10][0][0], 0x40);
        assert!(secs[&0x14].iter().any(|s| s[0] == 0x70));
        assert!(secs[&0x14].iter().any(|s| s[0] == 0x73));
        // the radio program (no video) is service_type 2: id, flags, status and loop
        // length, then the service_descriptor's tag, length and type
        let at = p.windows(3).position(|w| w == [0, 103, 0xFC]).unwrap();
        assert_eq!(p[at + 5..at + 8], [0x48, 3 + 4 + 5, 0x02]);
    }

    #[test]
    fn an_es_waits_for_our_pmt_after_its_type_changes_or_its_input_was_silent() {
        let a = "udp://239.0.0.1:1";
        let mut mux = Mux::new(options(vec![program(a, None, Some(101), "A")]), &[0]);
        let t0 = Instant::now();
        let mut batch = PacketBatch::with_capacity(4096);
        let audio: &[Prog<'_>] = &[(1, 0x1000, &[(0x1B, 0x100), (0x03, 0x101)])];
        let video: &[Prog<'_>] = &[(1, 0x1000, &[(0x1B, 0x100), (0x1B, 0x101)])];
        let out_es = |b: &PacketBatch| -> Vec<u16> {
            b.packets()
                .iter()
                .map(|p| PacketRef::new(p).pid().value())
                .filter(|p| (0x100..0x1000).contains(p))
                .collect()
        };
        for pkt in psi(0, 0, audio) {
            mux.push(0, &pkt, t0, &mut batch);
        }
        mux.send_due(&mut batch, t0, 0);
        batch.clear();
        mux.push(0, &es(0x101, 0), t0, &mut batch);
        assert_eq!(out_es(&batch), [0x101]);
        // 0x101 now carries a video: the same output PID, held until our PMT says so
        batch.clear();
        for pkt in psi(1, 1, video) {
            mux.push(0, &pkt, t0, &mut batch);
        }
        let not_taken = mux.inputs[0].not_taken;
        mux.push(0, &es(0x101, 1), t0, &mut batch);
        mux.push(0, &es(0x100, 1), t0, &mut batch);
        assert_eq!(out_es(&batch), [0x100], "the unchanged video goes on");
        assert_eq!(mux.inputs[0].not_taken, not_taken + 1);
        mux.send_due(&mut batch, t0 + Duration::from_millis(100), 0);
        mux.push(0, &es(0x101, 2), t0, &mut batch);
        assert_eq!(out_es(&batch), [0x100, 0x101]);
        // the input falls silent and comes back: nothing until its PMT comes again
        batch.clear();
        let back = t0 + Duration::from_secs(10);
        mux.push(0, &es(0x100, 3), back, &mut batch);
        mux.push(0, &es(0x101, 3), back, &mut batch);
        assert_eq!(out_es(&batch), Vec::<u16>::new());
        for pkt in psi(1, 2, video) {
            mux.push(0, &pkt, back, &mut batch);
        }
        mux.push(0, &es(0x100, 4), back, &mut batch);
        assert_eq!(out_es(&batch), [0x100]);
    }

    #[test]
    fn an_input_pmt_change_makes_a_new_output_version_and_nothing_else_moves() {
        let a = "udp://239.0.0.1:1";
        let b = "udp://239.0.0.2:1";
        let opts = options(vec![
            program(a, None, Some(101), "A"),
            program(b, None, Some(102), "B"),
        ]);
        let mut mux = Mux::new(opts, &[0, 1]);
        let t0 = Instant::now();
        let mut batch = PacketBatch::with_capacity(4096);
        let one: &[Prog<'_>] = &[(1, 0x1000, &[(0x1B, 0x100)])];
        let two: &[Prog<'_>] = &[(1, 0x1000, &[(0x1B, 0x100), (0x03, 0x101)])];
        for pkt in psi(0, 0, one) {
            mux.push(0, &pkt, t0, &mut batch);
            mux.push(1, &pkt, t0, &mut batch);
        }
        mux.send_due(&mut batch, t0, 0);
        // the same PSI again: no new version
        for pkt in psi(0, 1, one) {
            mux.push(0, &pkt, t0, &mut batch);
        }
        mux.send_due(&mut batch, t0 + Duration::from_millis(100), 0);
        // input 0's PMT gains an audio (its version 1)
        for pkt in psi(1, 2, two) {
            mux.push(0, &pkt, t0, &mut batch);
        }
        mux.send_due(&mut batch, t0 + Duration::from_millis(200), 0);
        let secs = sections(batch.packets(), &[0x1000, 0x101]);
        let a_versions: Vec<_> = secs[&0x1000].iter().map(|s| pmt_of(s)).collect();
        assert_eq!(a_versions.first().unwrap().1, 0);
        let last = a_versions.last().unwrap();
        assert_eq!(last.1, 1, "one new version");
        // its new audio 0x101 is the other program's PMT PID by now: the next free one
        assert_eq!(last.3, vec![(0x1B, 0x100, 0), (0x03, 0x103, 6)]);
        assert!(a_versions.iter().all(|v| v.1 <= 1));
        // the other program kept its PIDs and its version
        let b_versions: Vec<_> = secs[&0x101].iter().map(|s| pmt_of(s)).collect();
        assert!(b_versions
            .iter()
            .all(|v| v == &(102, 0, 0x102, vec![(0x1B, 0x102, 0)])));
        // the PAT did not change content: one version
        assert!(secs[&0].iter().all(|s| s == &secs[&0][0]));
        assert_eq!(mux.programs[0].versions, 2);
        assert_eq!(mux.programs[1].versions, 1);
    }

    #[test]
    fn an_operator_pid_map_and_a_duplicate_number() {
        let a = "udp://239.0.0.1:1";
        let b = "udp://239.0.0.2:1";
        let mut p0 = program(a, None, None, "A");
        p0.pid_map = vec![
            (Pid::new(0x100), Pid::new(0x200)),
            (Pid::new(0x1000), Pid::new(0x300)),
        ];
        // b's program is number 1 too and has no pnr: left out
        let opts = options(vec![p0, program(b, None, None, "B")]);
        let mut mux = Mux::new(opts, &[0, 1]);
        let t0 = Instant::now();
        let mut batch = PacketBatch::with_capacity(1024);
        let one: &[Prog<'_>] = &[(1, 0x1000, &[(0x1B, 0x100)])];
        for pkt in psi(0, 0, one) {
            mux.push(0, &pkt, t0, &mut batch);
            mux.push(1, &pkt, t0, &mut batch);
        }
        // before our PMT naming it has gone out, the ES is held (not taken, counted)
        let not_taken = mux.inputs[0].not_taken;
        mux.push(0, &es(0x100, 0), t0, &mut batch);
        mux.push(1, &es(0x100, 0), t0, &mut batch);
        assert_eq!(mux.inputs[0].not_taken, not_taken + 1);
        mux.send_due(&mut batch, t0, 0);
        mux.push(0, &es(0x100, 1), t0, &mut batch);
        mux.push(1, &es(0x100, 1), t0, &mut batch);
        let secs = sections(batch.packets(), &[0x300]);
        let pat = Section::parse(&secs[&0][0], 1024).unwrap();
        let entries: Vec<(u16, u16)> = Pat::parse(&pat)
            .unwrap()
            .entries()
            .map(|e| (e.program_number, e.pid.value()))
            .collect();
        assert_eq!(entries, [(0, 0x10), (1, 0x300)]);
        let es_pids: Vec<u16> = batch
            .packets()
            .iter()
            .map(|p| PacketRef::new(p).pid().value())
            .filter(|p| *p == 0x200 || *p == 0x100)
            .collect();
        assert_eq!(es_pids, [0x200]);
        assert_eq!(mux.inputs[1].not_taken, 1 + 1 + 2);
    }

    #[test]
    fn an_input_renumbering_again_and_again_does_not_grow_the_tables() {
        let mut p = program("udp://239.0.0.1:1", None, None, "A");
        p.lcn = None;
        let mut mux = Mux::new(options(vec![p]), &[0]);
        let t0 = Instant::now();
        let mut batch = PacketBatch::with_capacity(64);
        for n in 1..200u16 {
            batch.clear();
            let prog: &[Prog<'_>] = &[(n, 0x1000, &[(0x1B, 0x100)])];
            for pkt in psi((n % 32) as u8, (n % 16) as u8, prog) {
                mux.push(0, &pkt, t0, &mut batch);
            }
            assert_eq!(mux.programs[0].number, Some(n));
        }
        // PAT, SDT, NIT and a few PMTs, not one per number ever seen
        assert!(mux.tables.len() <= 3 + 3 + 1, "{}", mux.tables.len());
    }

    #[test]
    fn a_changed_table_goes_out_at_once_but_not_within_25_ms_of_the_last() {
        let t0 = Instant::now();
        let i = SDT_INTERVAL;
        assert_eq!(soon(None, i, t0), Some(t0));
        // sent at t0 (next at t0 + 1 s): a change 10 ms later waits until t0 + 25 ms
        let ms = Duration::from_millis;
        assert_eq!(soon(Some(t0 + i), i, t0 + ms(10)), Some(t0 + ms(25)));
        assert_eq!(soon(Some(t0 + i), i, t0 + ms(300)), Some(t0 + ms(300)));
    }
}
