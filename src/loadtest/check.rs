//! The load test's checker: takes every output packet of every channel and proves it.
//!
//! It reads the TS with `mpeg2ts-reader`, a parser independent of castmux's own `ts/`, so a
//! bug in castmux's PSI layer cannot hide itself: PAT, PMT (ES and ECM PIDs from the CA
//! descriptors), CAT (EMM PIDs), ECM sections; the section reassembly and the CA
//! descriptors are the analyzer's ([`crate::analyze::psi`]), shared for that reason. Each
//! ECM goes to a software card holding an entitled card; the CWs it answers descramble
//! the ES packets, and each descrambled payload must be the one the generator sent
//! ([`super::stream::verify_es`]).
//!
//! Counted per channel: clear ES payloads (must be 0), undecryptable packets (must be 0),
//! key switches made before an ECM carried the new key, loss and reordering per ES PID,
//! latency, ECM intervals per PID, CW periods and the lead of each key switch over its
//! ECM, PAT/PMT intervals, continuity and CRC errors, EMM bytes.
//!
//! The receiver hands packets over in rounds ([`Checker::round`]): all packets of a round
//! share its arrival time, and the descrambling of all channels runs as one multi-key
//! batch, so the cipher sees full lane sets however few packets a channel had.

use std::collections::HashMap;

use csa::{Algorithm, KeyContext, MultiBatch, Parity};
use hdrhistogram::Histogram;
use mpeg2ts_reader::descriptor::CoreDescriptors;
use mpeg2ts_reader::packet::Packet as TsPacket;
use mpeg2ts_reader::psi;
use serde::Serialize;

use super::stream::{verify_es, Mismatch, Tag, ES_PIDS};
use crate::analyze::psi::{ca_descriptors, cat_ca_descriptors, Found, LongConsumer, ShortConsumer};
use crate::io::PacketBatch;
use crate::softcard::{EcmStream, SoftCard};

/// Packets a channel may hand over in one round.
pub const ROUND_PACKETS: usize = 448;
const NULL_PID: u16 = 0x1FFF;
const TABLE_PAT: u8 = 0;
const TABLE_CAT: u8 = 1;
const TABLE_PMT: u8 = 2;
/// What one PID is to the checker.
enum Role {
    Psi(Box<LongConsumer>),
    Ecm(Box<ShortConsumer>, Option<Vec<u8>>, Option<u64>),
    Emm,
}

fn histogram(high: u64) -> Histogram<u64> {
    Histogram::new_with_bounds(1, high, 3).expect("valid bounds")
}

/// The longest latency a channel's interval histogram holds apart, µs (longer ones count
/// as this): 10 s, far past any pass criterion.
const CHANNEL_LATENCY_MAX_US: u64 = 10_000_000;

/// A channel's latency of one interval: 2 significant digits and 32-bit counts, so a
/// checker of 4096 channels keeps them in some 35 MB.
fn channel_histogram() -> Histogram<u32> {
    Histogram::new_with_bounds(1, CHANNEL_LATENCY_MAX_US, 2).expect("valid bounds")
}

/// One channel's figures of one reporting interval (for the per-channel plot).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct ChannelInterval {
    /// Largest gap between two ECM sections of one of its ECM PIDs, ms (0: fewer than two
    /// ECMs in the interval).
    pub ecm_interval_max_ms: f64,
    /// Added latency p99 of its proven packets, ms (0: none proven).
    pub latency_p99_ms: f64,
}

/// Every channel's figures of one interval, and the latency and largest ECM gap over all.
pub struct Interval {
    /// Latency over all channels, µs.
    pub latency_us: Histogram<u64>,
    /// Largest ECM gap over all channels, µs.
    pub ecm_max_us: u64,
    /// Per channel, in channel order.
    pub per_channel: Vec<ChannelInterval>,
}

/// A channel's counts; the totals over all channels have the same shape.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct ChannelCounts {
    /// ES packets received and proven equal to what was sent.
    pub verified: u64,
    /// ES payloads that left in clear. Must be 0.
    pub clear: u64,
    /// Scrambled ES packets that the key of the ECM on air did not descramble. Must be 0.
    pub undecryptable: u64,
    /// ES packets that descrambled to another channel's payload (crossed channels). Must
    /// be 0.
    pub foreign: u64,
    /// Key switches made before any ECM carried the new key.
    pub switch_before_ecm: u64,
    /// ES packets sent after the first one received that never arrived.
    pub lost: u64,
    /// ES packets that arrived after a later one, or twice.
    pub reordered: u64,
    /// ES packets before the channel's first output (held while it started).
    pub before_first_output: u64,
    /// Scrambled ES packets before the checker held any key (it learns the ECM PID from
    /// the PMT, so it may miss the first ECM); not judged.
    pub before_first_key: u64,
    /// ECM sections received (every repetition).
    pub ecm_sections: u64,
    /// ECMs the card refused (not entitled, forged, replayed).
    pub ecm_refused: u64,
    /// Key switches seen.
    pub key_switches: u64,
    /// Continuity errors on any PID.
    pub cc_errors: u64,
    /// PSI sections with a bad CRC.
    pub crc_errors: u64,
    /// EMM bytes (TS packets × 188).
    pub emm_bytes: u64,
    /// Largest gap between two PATs, µs.
    pub pat_interval_max_us: u64,
    /// Largest gap between two PMTs, µs.
    pub pmt_interval_max_us: u64,
    /// Largest gap between two ECM sections of one PID, µs.
    pub ecm_interval_max_us: u64,
    /// Shortest lead of a key switch over the first ECM that carried its key, µs.
    pub switch_lead_min_us: Option<u64>,
}

impl ChannelCounts {
    fn add(&mut self, o: &ChannelCounts) {
        self.verified += o.verified;
        self.clear += o.clear;
        self.undecryptable += o.undecryptable;
        self.foreign += o.foreign;
        self.switch_before_ecm += o.switch_before_ecm;
        self.lost += o.lost;
        self.reordered += o.reordered;
        self.before_first_output += o.before_first_output;
        self.before_first_key += o.before_first_key;
        self.ecm_sections += o.ecm_sections;
        self.ecm_refused += o.ecm_refused;
        self.key_switches += o.key_switches;
        self.cc_errors += o.cc_errors;
        self.crc_errors += o.crc_errors;
        self.emm_bytes += o.emm_bytes;
        self.pat_interval_max_us = self.pat_interval_max_us.max(o.pat_interval_max_us);
        self.pmt_interval_max_us = self.pmt_interval_max_us.max(o.pmt_interval_max_us);
        self.ecm_interval_max_us = self.ecm_interval_max_us.max(o.ecm_interval_max_us);
        self.switch_lead_min_us = match (self.switch_lead_min_us, o.switch_lead_min_us) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
}

/// Sequence tracking of one ES PID.
#[derive(Debug, Default, Clone, Copy)]
struct Seq {
    first: Option<u32>,
    next: u32,
    received: u64,
}

/// A scrambled packet waiting for this round's cipher pass.
#[derive(Debug, Clone, Copy)]
struct Pending {
    index: usize,
    pid: u16,
    parity: Parity,
    /// The first packet of a new parity: its failure means the switch came before the ECM.
    after_switch: bool,
}

/// The key the checker holds for one parity, and since when.
#[derive(Debug, Clone, Copy)]
struct Held {
    cw: [u8; 16],
    len: usize,
    learned_ns: u64,
}

/// One channel's state.
pub struct ChannelCheck {
    index: u16,
    card: SoftCard,
    algorithm: Algorithm,
    /// The packets of this round, filled by the receiver.
    pub packets: PacketBatch,
    roles: HashMap<u16, Role>,
    pmt_pid: Option<u16>,
    es_pids: Vec<u16>,
    cc: HashMap<u16, u8>,
    keys: [Option<Held>; 2],
    ctx: Option<KeyContext>,
    parity: Option<Parity>,
    last_switch_ns: Option<u64>,
    last_pat_ns: Option<u64>,
    last_pmt_ns: Option<u64>,
    seq: [Seq; 2],
    pending: Vec<Pending>,
    select: Vec<bool>,
    found: Found,
    counts: ChannelCounts,
    /// This reporting interval's latency and largest ECM gap (µs).
    interval_latency_us: Histogram<u32>,
    interval_ecm_max_us: u64,
}

impl ChannelCheck {
    fn new(index: u16, card: SoftCard, algorithm: Algorithm) -> ChannelCheck {
        let mut roles = HashMap::new();
        roles.insert(0, Role::Psi(Box::default()));
        roles.insert(1, Role::Psi(Box::default()));
        ChannelCheck {
            index,
            card,
            algorithm,
            packets: PacketBatch::with_capacity(ROUND_PACKETS),
            roles,
            pmt_pid: None,
            es_pids: Vec::new(),
            cc: HashMap::new(),
            keys: [None; 2],
            ctx: None,
            parity: None,
            last_switch_ns: None,
            last_pat_ns: None,
            last_pmt_ns: None,
            seq: [Seq::default(); 2],
            pending: Vec::with_capacity(ROUND_PACKETS),
            select: vec![false; ROUND_PACKETS],
            found: Vec::new(),
            counts: ChannelCounts::default(),
            interval_latency_us: channel_histogram(),
            interval_ecm_max_us: 0,
        }
    }

    /// Headers, PSI and ECMs of this round's packets, in order; scrambled ES packets are
    /// queued for the cipher pass. An ECM that changes a key first settles the packets
    /// queued under the old one.
    fn walk(&mut self, now_ns: u64, stats: &mut Histograms) {
        self.select[..self.packets.len()].fill(false);
        for i in 0..self.packets.len() {
            let raw = self.packets.packets()[i];
            let Some(pk) = TsPacket::try_new(&raw[..]) else {
                continue;
            };
            let pid = u16::from(pk.pid());
            if pid == NULL_PID || pk.transport_error_indicator() {
                continue;
            }
            self.continuity(pid, &pk);
            match self.roles.get_mut(&pid) {
                Some(Role::Psi(c)) => {
                    c.consume(&mut self.found, &pk);
                    self.psi_sections(pid, now_ns);
                }
                Some(Role::Ecm(c, _, _)) => {
                    c.consume(&mut self.found, &pk);
                    self.ecm_sections(pid, now_ns, stats);
                }
                Some(Role::Emm) => self.counts.emm_bytes += 188,
                None => self.es_packet(i, pid, &pk, now_ns, stats),
            }
        }
    }

    fn continuity(&mut self, pid: u16, pk: &TsPacket<'_>) {
        let cc = pk.continuity_counter().count();
        let discontinuity = pk
            .adaptation_field()
            .is_some_and(|af| af.discontinuity_indicator());
        if let Some(last) = self.cc.insert(pid, cc) {
            let want = if pk.adaptation_control().has_payload() {
                (last + 1) & 0x0F
            } else {
                last
            };
            if cc != want && !discontinuity {
                self.counts.cc_errors += 1;
            }
        }
    }

    fn es_packet(
        &mut self,
        i: usize,
        pid: u16,
        pk: &TsPacket<'_>,
        now_ns: u64,
        stats: &mut Histograms,
    ) {
        let Some(payload) = pk.payload() else {
            return;
        };
        let tsc = pk.transport_scrambling_control();
        if !tsc.is_scrambled() {
            // clear: a leak if the PMT says this is an ES of the service, or if it is
            // a payload the generator sent
            if self.es_pids.contains(&pid) || verify_es(self.index, pid, payload).is_ok() {
                self.counts.clear += 1;
            }
            return;
        }
        let parity = if tsc.scheme().map(|s| s.get()) == Some(3) {
            Parity::Odd
        } else {
            Parity::Even
        };
        let mut after_switch = false;
        if self.parity != Some(parity) {
            if self.parity.is_some() {
                self.counts.key_switches += 1;
                if let Some(at) = self.last_switch_ns {
                    let _ = stats.cw_period_ms.record((now_ns - at) / 1_000_000);
                }
                self.last_switch_ns = Some(now_ns);
                after_switch = true;
            }
            self.parity = Some(parity);
        }
        if self.ctx.is_none() {
            self.counts.before_first_key += 1;
            return;
        }
        self.select[i] = true;
        self.pending.push(Pending {
            index: i,
            pid,
            parity,
            after_switch,
        });
    }

    fn psi_sections(&mut self, pid: u16, now_ns: u64) {
        for section in std::mem::take(&mut self.found) {
            let body = match section.body() {
                Some(body) if section.crc_ok => body,
                _ => {
                    self.counts.crc_errors += 1;
                    continue;
                }
            };
            match (pid, section.table_id) {
                (0, TABLE_PAT) => {
                    interval(
                        &mut self.last_pat_ns,
                        now_ns,
                        &mut self.counts.pat_interval_max_us,
                    );
                    let pat = psi::pat::PatSection::new(body);
                    let program = pat.programs().find_map(|p| match p {
                        psi::pat::ProgramDescriptor::Program { pid, .. } => Some(pid),
                        psi::pat::ProgramDescriptor::Network { .. } => None,
                    });
                    if let Some(pid) = program {
                        let pmt = u16::from(pid);
                        if self.pmt_pid != Some(pmt) {
                            if let Some(old) = self.pmt_pid.replace(pmt) {
                                self.roles.remove(&old);
                            }
                            self.roles.insert(pmt, Role::Psi(Box::default()));
                        }
                    }
                }
                (1, TABLE_CAT) => {
                    let caid = self.card.ca_system_id();
                    for emm_pid in ca_pids(cat_ca_descriptors(body), caid) {
                        self.roles.entry(emm_pid).or_insert(Role::Emm);
                    }
                }
                (p, TABLE_PMT) if Some(p) == self.pmt_pid => {
                    interval(
                        &mut self.last_pmt_ns,
                        now_ns,
                        &mut self.counts.pmt_interval_max_us,
                    );
                    self.pmt(body);
                }
                _ => {}
            }
        }
    }

    fn pmt(&mut self, body: &[u8]) {
        let Ok(pmt) = psi::pmt::PmtSection::from_bytes(body) else {
            return;
        };
        let caid = self.card.ca_system_id();
        let mut ecm_pids: Vec<u16> = ca_pids(
            ca_descriptors(pmt.descriptors::<CoreDescriptors<'_>>()),
            caid,
        )
        .collect();
        self.es_pids.clear();
        for s in pmt.streams() {
            self.es_pids.push(u16::from(s.elementary_pid()));
            ecm_pids.extend(ca_pids(
                ca_descriptors(s.descriptors::<CoreDescriptors<'_>>()),
                caid,
            ));
        }
        for pid in ecm_pids {
            self.roles
                .entry(pid)
                .or_insert_with(|| Role::Ecm(Box::default(), None, None));
        }
    }

    fn ecm_sections(&mut self, pid: u16, now_ns: u64, stats: &mut Histograms) {
        for section in std::mem::take(&mut self.found) {
            let (table_id, data) = (section.table_id, section.data);
            if table_id != 0x80 && table_id != 0x81 {
                continue;
            }
            self.counts.ecm_sections += 1;
            let Some(Role::Ecm(_, last, last_at)) = self.roles.get_mut(&pid) else {
                return;
            };
            if let Some(at) = last_at.replace(now_ns) {
                let gap = (now_ns - at) / 1000;
                self.counts.ecm_interval_max_us = self.counts.ecm_interval_max_us.max(gap);
                let _ = stats.ecm_interval_us.record(gap.max(1));
                stats.interval_ecm_max_us = stats.interval_ecm_max_us.max(gap);
                self.interval_ecm_max_us = self.interval_ecm_max_us.max(gap);
            }
            if last.as_deref() == Some(&data[..]) {
                continue;
            }
            *last = Some(data.clone());
            let now = crate::cas::store::time::now();
            match self
                .card
                .process_ecm_on(EcmStream(u64::from(self.index)), &data, now)
            {
                Ok(answer) => {
                    let even = answer.even.as_bytes().to_vec();
                    let odd = answer.odd.as_bytes().to_vec();
                    self.learn(now_ns, [&even, &odd], stats);
                }
                Err(_) => self.counts.ecm_refused += 1,
            }
        }
    }

    /// Take the CWs of an ECM; if a key changes, the packets queued under the old keys are
    /// settled first.
    fn learn(&mut self, now_ns: u64, cws: [&[u8]; 2], stats: &mut Histograms) {
        let changed = (0..2).any(|p| self.keys[p].is_none_or(|k| k.cw[..k.len] != *cws[p]));
        if !changed {
            return;
        }
        if !self.pending.is_empty() {
            if let Some(ctx) = &self.ctx {
                let _ = ctx
                    .descramble_selected(self.packets.packets_mut().as_flattened_mut(), |i| {
                        self.select[i]
                    });
            }
            self.settle(now_ns, stats);
        }
        for (p, cw) in cws.iter().enumerate() {
            if self.keys[p].is_none_or(|k| k.cw[..k.len] != **cw) {
                let mut held = Held {
                    cw: [0; 16],
                    len: cw.len().min(16),
                    learned_ns: now_ns,
                };
                held.cw[..held.len].copy_from_slice(&cw[..held.len]);
                self.keys[p] = Some(held);
            }
        }
        self.ctx = KeyContext::from_bytes(self.algorithm, cws[0], cws[1]).ok();
    }

    /// Judge the descrambled packets queued so far.
    fn settle(&mut self, now_ns: u64, stats: &mut Histograms) {
        for pend in std::mem::take(&mut self.pending) {
            self.select[pend.index] = false;
            let raw = self.packets.packets()[pend.index];
            let payload = TsPacket::try_new(&raw[..]).and_then(|p| p.payload());
            match payload.map(|b| verify_es(self.index, pend.pid, b)) {
                // the key was right, the packet is not this channel's
                Some(Err(Mismatch::OtherChannel(_))) => self.counts.foreign += 1,
                Some(Ok(tag)) => {
                    self.counts.verified += 1;
                    if pend.after_switch {
                        self.switch_lead(pend.parity, now_ns, stats);
                    }
                    self.sequence(pend.pid, tag);
                    let us = (now_ns.saturating_sub(tag.sent_ns) / 1000).max(1);
                    let _ = stats.latency_us.record(us);
                    let _ = stats.interval_latency_us.record(us);
                    self.interval_latency_us
                        .saturating_record(us.min(CHANNEL_LATENCY_MAX_US));
                }
                _ => {
                    self.counts.undecryptable += 1;
                    if pend.after_switch {
                        self.counts.switch_before_ecm += 1;
                    }
                }
            }
        }
    }

    /// A key switch proven good: how long before it the ECM carried its key.
    fn switch_lead(&mut self, parity: Parity, now_ns: u64, stats: &mut Histograms) {
        if let Some(k) = self.keys[parity as usize] {
            let lead = now_ns.saturating_sub(k.learned_ns) / 1000;
            let min = self.counts.switch_lead_min_us.get_or_insert(lead);
            *min = (*min).min(lead);
            let _ = stats.switch_lead_ms.record(lead / 1000);
        }
    }

    fn sequence(&mut self, pid: u16, tag: Tag) {
        let Some(es) = ES_PIDS.iter().position(|&p| p == pid) else {
            return;
        };
        let s = &mut self.seq[es];
        s.received += 1;
        match s.first {
            None => {
                s.first = Some(tag.seq);
                s.next = tag.seq + 1;
            }
            Some(_) if tag.seq >= s.next => s.next = tag.seq + 1,
            Some(_) => self.counts.reordered += 1,
        }
    }

    /// The counts, with loss judged against what the generator sent on each ES PID.
    pub fn counts(&self, sent: [u32; 2]) -> ChannelCounts {
        let mut c = self.counts.clone();
        // packets that arrived but could not be proven (clear, undecryptable) are not lost
        let mut arrived_unproven = c.clear + c.undecryptable;
        for (s, sent) in self.seq.iter().zip(sent) {
            match s.first {
                Some(first) => {
                    c.before_first_output += u64::from(first);
                    let expected = u64::from(sent.saturating_sub(first));
                    let missing = expected.saturating_sub(s.received - c.reordered.min(s.received));
                    let unproven = arrived_unproven.min(missing);
                    arrived_unproven -= unproven;
                    c.lost += missing - unproven;
                }
                None => c.lost += u64::from(sent),
            }
        }
        c
    }
}

fn interval(last: &mut Option<u64>, now_ns: u64, max_us: &mut u64) {
    if let Some(at) = last.replace(now_ns) {
        *max_us = (*max_us).max((now_ns - at) / 1000);
    }
}

/// The CA_PIDs of `ca_system_id` among a loop's CA descriptors.
fn ca_pids(
    descriptors: impl Iterator<Item = (u16, u16)>,
    ca_system_id: u16,
) -> impl Iterator<Item = u16> {
    descriptors.filter_map(move |(caid, pid)| (caid == ca_system_id).then_some(pid))
}

/// Distributions over all channels.
pub struct Histograms {
    /// Added latency of each verified ES packet, µs.
    pub latency_us: Histogram<u64>,
    /// Gaps between ECM sections of one PID, µs.
    pub ecm_interval_us: Histogram<u64>,
    /// Time between key switches, ms.
    pub cw_period_ms: Histogram<u64>,
    /// Lead of each key switch over the first ECM that carried its key, ms.
    pub switch_lead_ms: Histogram<u64>,
    /// Latency of the current reporting interval only, µs.
    pub interval_latency_us: Histogram<u64>,
    /// Largest ECM gap of the current reporting interval, µs.
    pub interval_ecm_max_us: u64,
}

impl Histograms {
    fn new() -> Histograms {
        Histograms {
            latency_us: histogram(600_000_000),
            ecm_interval_us: histogram(600_000_000),
            cw_period_ms: histogram(86_400_000),
            switch_lead_ms: histogram(86_400_000),
            interval_latency_us: histogram(600_000_000),
            interval_ecm_max_us: 0,
        }
    }
}

/// The checker of every channel.
pub struct Checker {
    channels: Vec<ChannelCheck>,
    batch: MultiBatch,
    hist: Histograms,
}

impl Checker {
    /// One channel per card (each channel's ECMs are answered by its own copy of the card).
    pub fn new(cards: Vec<SoftCard>, algorithm: Algorithm) -> Checker {
        Checker {
            channels: cards
                .into_iter()
                .enumerate()
                .map(|(i, card)| ChannelCheck::new(i as u16, card, algorithm))
                .collect(),
            batch: MultiBatch::new(),
            hist: Histograms::new(),
        }
    }

    /// The channels, for the receiver to fill their `packets`.
    pub fn channels_mut(&mut self) -> &mut [ChannelCheck] {
        &mut self.channels
    }

    /// Process every channel's packets, all arrived at `now_ns`; empties them.
    pub fn round(&mut self, now_ns: u64) {
        for ch in &mut self.channels {
            if !ch.packets.is_empty() {
                ch.walk(now_ns, &mut self.hist);
            }
        }
        let mut run = self.batch.begin();
        for ch in &mut self.channels {
            if let (Some(ctx), false) = (&ch.ctx, ch.pending.is_empty()) {
                let select = &ch.select;
                let _ = run.descramble_selected(
                    ctx,
                    ch.packets.packets_mut().as_flattened_mut(),
                    |i| select[i],
                );
            }
        }
        run.finish();
        for ch in &mut self.channels {
            if !ch.pending.is_empty() {
                ch.settle(now_ns, &mut self.hist);
            }
            ch.packets.clear();
        }
    }

    /// The distributions so far.
    pub fn histograms(&self) -> &Histograms {
        &self.hist
    }

    /// The figures of the interval since the last call, over all channels and per
    /// channel; then forgets them.
    pub fn take_interval(&mut self) -> Interval {
        let latency_us = self.hist.interval_latency_us.clone();
        self.hist.interval_latency_us.reset();
        let per_channel = self
            .channels
            .iter_mut()
            .map(|c| {
                let h = &mut c.interval_latency_us;
                let p99 = if h.is_empty() {
                    0.0
                } else {
                    h.value_at_quantile(0.99) as f64 / 1000.0
                };
                h.reset();
                ChannelInterval {
                    ecm_interval_max_ms: std::mem::take(&mut c.interval_ecm_max_us) as f64 / 1000.0,
                    latency_p99_ms: p99,
                }
            })
            .collect();
        Interval {
            latency_us,
            ecm_max_us: std::mem::take(&mut self.hist.interval_ecm_max_us),
            per_channel,
        }
    }

    /// Per channel counts, loss judged against `sent[channel]`.
    pub fn counts(&self, sent: &[[u32; 2]]) -> Vec<ChannelCounts> {
        self.channels
            .iter()
            .zip(sent)
            .map(|(c, s)| c.counts(*s))
            .collect()
    }

    /// Each channel's EMM bytes on air so far.
    pub fn emm_bytes(&self) -> Vec<u64> {
        self.channels.iter().map(|c| c.counts.emm_bytes).collect()
    }

    /// The sum over channels.
    pub fn total(counts: &[ChannelCounts]) -> ChannelCounts {
        let mut t = ChannelCounts::default();
        for c in counts {
            t.add(c);
        }
        t
    }
}

#[cfg(test)]
mod tests {
    //! The checker catches what it claims to: each test builds a scrambled output from the
    //! generator's stream, a PMT with a CA descriptor and real ECMs, breaks one thing, and
    //! looks for that one count.
    use super::*;
    use crate::cas::store::time;
    use crate::cas::{
        build_ecm, derive_card_key, AccessCriteria, CardFile, CardSerial, EcmParams, Entitlements,
        Key128, PackageBit, ServiceKey, ServiceKeyRing, CARD_FILE_FORMAT,
    };
    use crate::loadtest::stream::{SyntheticStream, PMT_PID, VIDEO_PID};
    use crate::ts::psi_write::write_pmt;
    use crate::ts::{Descriptors, Packetizer, Pid, PmtStream, StreamType};

    const CAID: u16 = 0x4AE1;
    const CA_DESCRIPTOR: u8 = 9;
    const ECM_PID: u16 = 0x1F00;
    const MS: u64 = 1_000_000;

    fn service_key() -> ServiceKey {
        ServiceKey {
            bit: PackageBit::new(0).unwrap(),
            version: 1,
            key: Key128::from_bytes([0xA5; 16]),
        }
    }

    fn card() -> SoftCard {
        let root = Key128::from_bytes([0x5C; 16]);
        let now = time::now();
        SoftCard::from_card_file(CardFile {
            format: CARD_FILE_FORMAT,
            serial: CardSerial(2_100_000_001),
            ca_system_id: CAID,
            card_key: derive_card_key(&root, CardSerial(2_100_000_001)),
            entitlements: Entitlements {
                access: AccessCriteria(1),
                start: now - 86_400,
                finish: now + 86_400,
                pair: 0,
                enabled: true,
                events: vec![],
            },
            service_keys: vec![service_key()],
            issued_at: now - 86_400,
        })
        .unwrap()
    }

    fn cw(period: u64) -> [u8; 8] {
        let b = period as u8;
        // with the CSA2 checksum bytes (3 and 7), as the card hands CWs out
        let (x, y) = (b.wrapping_mul(3), b ^ 0x5A);
        [
            b,
            x,
            y,
            b.wrapping_add(x).wrapping_add(y),
            y,
            x,
            b,
            y.wrapping_add(x).wrapping_add(b),
        ]
    }

    /// An output under test: what a head-end would send, with knobs to break it.
    struct Sim {
        stream: SyntheticStream,
        ecm: Packetizer,
        pmt: Packetizer,
        ring: ServiceKeyRing,
        period_ns: u64,
        /// ECMs of period p carry cw(p) and cw(p+1); with false, only cw(p) and junk.
        announce_next: bool,
        /// ECMs go out at this many 10 ms steps into each 100 ms.
        ecm_phase: u64,
        /// ECMs not sent in this window.
        ecm_gap: Option<(u64, u64)>,
        /// The ES packet (counted over the whole run) left clear.
        clear_at: Option<usize>,
        /// The ES packet scrambled under a key no ECM carried.
        wrong_key_at: Option<usize>,
        /// The ES packet replaced by one of another channel (same PID and CC).
        foreign_at: Option<usize>,
        es_count: usize,
        checker: Checker,
        sent: [u32; 2],
    }

    impl Sim {
        fn new() -> Sim {
            Sim {
                stream: SyntheticStream::new(0),
                ecm: Packetizer::new(Pid::new(ECM_PID)),
                pmt: Packetizer::new(Pid::new(PMT_PID)),
                ring: ServiceKeyRing::from_keys([service_key()]),
                period_ns: 1000 * MS,
                announce_next: true,
                ecm_phase: 0,
                ecm_gap: None,
                clear_at: None,
                wrong_key_at: None,
                foreign_at: None,
                es_count: 0,
                checker: Checker::new(vec![card()], Algorithm::Csa2),
                sent: [0; 2],
            }
        }

        fn pmt_packet(&mut self, out: &mut Vec<u8>) {
            let ca = [
                CA_DESCRIPTOR,
                4,
                (CAID >> 8) as u8,
                CAID as u8,
                0xE0 | (ECM_PID >> 8) as u8,
                ECM_PID as u8,
            ];
            let stream = |st: u8, pid: u16| PmtStream {
                stream_type: StreamType(st),
                elementary_pid: Pid::new(pid),
                descriptors: Descriptors::new(&[]).unwrap(),
            };
            let mut section = Vec::new();
            write_pmt(
                &mut section,
                1,
                0,
                Pid::new(VIDEO_PID),
                &Descriptors::new(&ca).unwrap(),
                [stream(0x1B, VIDEO_PID), stream(0x0F, 0x101)],
            )
            .unwrap();
            self.pmt
                .packetize(&section, |p| out.extend_from_slice(p))
                .unwrap();
        }

        fn ecm_packets(&mut self, period: u64, out: &mut Vec<u8>) {
            let (mut even, mut odd) = (cw(period), cw(period + 1));
            if !period.is_multiple_of(2) {
                std::mem::swap(&mut even, &mut odd);
            }
            if !self.announce_next {
                let next = if period.is_multiple_of(2) {
                    &mut odd
                } else {
                    &mut even
                };
                *next = [0x11; 8];
            }
            let mut section = Vec::new();
            build_ecm(
                &self.ring,
                &EcmParams {
                    ca_system_id: CAID,
                    access: AccessCriteria(1),
                    period,
                    timestamp: time::now(),
                    even: &even,
                    odd: &odd,
                },
                &mut section,
            )
            .unwrap();
            self.ecm
                .packetize(&section, |p| out.extend_from_slice(p))
                .unwrap();
        }

        /// Run `ms` of output in 10 ms rounds: a datagram of the generator each round, PSI
        /// and an ECM every 100 ms, ES scrambled under the period's CW.
        fn run(&mut self, ms: u64) {
            let mut out = Vec::new();
            for step in 0..ms / 10 {
                let now = step * 10 * MS;
                let period = now / self.period_ns;
                out.clear();
                if step % 10 == 0 {
                    self.pmt_packet(&mut out);
                }
                if step % 10 == self.ecm_phase {
                    let gap = self.ecm_gap.is_some_and(|(a, b)| now >= a && now < b);
                    if !gap {
                        self.ecm_packets(period, &mut out);
                    }
                }
                let mut es = Vec::new();
                self.stream.datagram(now, &mut es);
                let key = cw(period);
                let parity = if period.is_multiple_of(2) {
                    Parity::Even
                } else {
                    Parity::Odd
                };
                let ctx = if parity == Parity::Even {
                    KeyContext::from_bytes(Algorithm::Csa2, &key, &[0; 8]).unwrap()
                } else {
                    KeyContext::from_bytes(Algorithm::Csa2, &[0; 8], &key).unwrap()
                };
                let wrong =
                    KeyContext::from_bytes(Algorithm::Csa2, &[0x77; 8], &[0x77; 8]).unwrap();
                for p in es.chunks_mut(188) {
                    let pid = u16::from_be_bytes([p[1], p[2]]) & 0x1FFF;
                    if pid == 0x100 || pid == 0x101 {
                        let n = self.es_count;
                        self.es_count += 1;
                        if self.foreign_at == Some(n) {
                            let mut other = Vec::new();
                            SyntheticStream::new(1).datagram(now, &mut other);
                            let same_pid = other
                                .chunks(188)
                                .find(|o| o[1..3] == p[1..3])
                                .expect("an ES packet of that PID");
                            let cc = p[3] & 0x0F;
                            p.copy_from_slice(same_pid);
                            p[3] = (p[3] & 0xF0) | cc;
                        }
                        if self.clear_at != Some(n) {
                            let c = if self.wrong_key_at == Some(n) {
                                &wrong
                            } else {
                                &ctx
                            };
                            c.scramble(p, parity).unwrap();
                        }
                    }
                    if pid != PMT_PID {
                        out.extend_from_slice(p);
                    }
                }
                let ch = &mut self.checker.channels_mut()[0];
                ch.packets.extend_from_bytes(&out);
                self.checker.round(now);
            }
            self.sent = self.stream.sent();
        }

        fn counts(&self) -> ChannelCounts {
            self.checker.counts(&[self.sent]).remove(0)
        }
    }

    #[test]
    fn a_right_output_passes_every_check() {
        let mut sim = Sim::new();
        sim.run(3500);
        let c = sim.counts();
        assert!(c.verified > 1000, "{c:?}");
        assert_eq!(
            (c.clear, c.undecryptable, c.switch_before_ecm),
            (0, 0, 0),
            "{c:?}"
        );
        assert_eq!(
            (
                c.lost,
                c.reordered,
                c.cc_errors,
                c.crc_errors,
                c.ecm_refused
            ),
            (0, 0, 0, 0, 0),
            "{c:?}"
        );
        assert_eq!(c.key_switches, 3, "{c:?}");
        assert!((90_000..=110_000).contains(&c.ecm_interval_max_us), "{c:?}");
        assert!((90_000..=110_000).contains(&c.pat_interval_max_us), "{c:?}");
        // the next key is announced a whole period ahead
        assert!(c.switch_lead_min_us.unwrap() >= 900_000, "{c:?}");
        let h = sim.checker.histograms();
        assert_eq!(h.cw_period_ms.min(), 1000);
    }

    #[test]
    fn one_clear_packet_is_counted() {
        let mut sim = Sim::new();
        sim.clear_at = Some(500);
        sim.run(2000);
        let c = sim.counts();
        assert_eq!((c.clear, c.undecryptable), (1, 0), "{c:?}");
        // it arrived: counted as clear, not as lost
        assert_eq!((c.lost, c.cc_errors), (0, 0), "{c:?}");
    }

    #[test]
    fn one_packet_under_the_wrong_key_is_undecryptable() {
        let mut sim = Sim::new();
        sim.wrong_key_at = Some(700);
        sim.run(2000);
        let c = sim.counts();
        assert_eq!(
            (c.clear, c.undecryptable, c.switch_before_ecm),
            (0, 1, 0),
            "{c:?}"
        );
    }

    #[test]
    fn a_packet_of_another_channel_is_foreign_not_undecryptable() {
        let mut sim = Sim::new();
        sim.foreign_at = Some(600);
        sim.run(2000);
        let c = sim.counts();
        assert_eq!((c.foreign, c.undecryptable, c.clear), (1, 0, 0), "{c:?}");
    }

    #[test]
    fn an_ecm_gap_of_600_ms_is_measured() {
        let mut sim = Sim::new();
        sim.ecm_gap = Some((1200 * MS, 1800 * MS));
        sim.run(2500);
        let c = sim.counts();
        assert!(
            (690_000..=710_000).contains(&c.ecm_interval_max_us),
            "{c:?}"
        );
        assert_eq!((c.clear, c.undecryptable), (0, 0), "{c:?}");
        // the channel's own figures of the interval show the gap too, then start over
        let iv = sim.checker.take_interval();
        assert_eq!(iv.per_channel.len(), 1);
        let ch = iv.per_channel[0];
        assert!((690.0..=710.0).contains(&ch.ecm_interval_max_ms), "{ch:?}");
        assert!(ch.latency_p99_ms > 0.0, "{ch:?}");
        assert_eq!(iv.ecm_max_us, c.ecm_interval_max_us);
        assert_eq!(
            sim.checker.take_interval().per_channel[0],
            ChannelInterval::default()
        );
    }

    #[test]
    fn a_key_switch_ahead_of_its_ecm_is_caught() {
        let mut sim = Sim::new();
        sim.announce_next = false;
        sim.ecm_phase = 5;
        sim.run(2500);
        let c = sim.counts();
        // each switch (at 1 s and 2 s) comes 50 ms before the ECM that carries its key
        assert_eq!(c.switch_before_ecm, 2, "{c:?}");
        assert!(c.undecryptable > 2 * 30, "{c:?}");
        assert_eq!(c.switch_lead_min_us, None, "{c:?}");
        assert_eq!(c.clear, 0, "{c:?}");
    }
}
