//! Constant bitrate (`cbr = "20M"`): what a channel puts out leaves in the slots of a fixed
//! schedule, one packet every 188 * 8 / bitrate seconds, with null packets in the slots
//! nothing is ready for, and every PCR restamped for the slot it goes out in.
//!
//! A packet is due when the stream's own clock says ([`super::dating`]: its PCRs, plus a
//! jitter buffer of `delay`), and takes the first free slot at or after that; order is
//! kept. A packet later than `max_delay` past its due time (the input is above the
//! bitrate) is dropped, and so is one that finds the queue full; both are counted. The
//! input's null packets are taken out (the schedule makes its own).
//!
//! PCR restamping (ETR 290 2.4, ±500 ns): a PCR PID's clock is the slot's position plus an
//! offset, so every PCR is what its byte position at the constant bitrate gives. The offset
//! is the PCR minus the packet's due time: exact for the PID the dating follows, and for
//! the other programs of a multiplex (their own clocks, their own jitter) followed by a slow
//! loop (minutes) whose rate moves by at most 0.5 ppm per PCR, a fraction of a tick per
//! interval, so PCRs stay on a straight line. A PCR that jumps by more than a second, comes
//! with the discontinuity_indicator, or restarts the dating starts its clock again (the
//! output PCR then carries the indicator). Counted.
//!
//! Time here is nanoseconds since the schedule started; the caller (see [`super::paced`])
//! gives the clock, so the schedule is tested without one.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::dating::Dating;
use super::follow::RateLoop;
use crate::ts::packet::{
    null_packet, pcr_step, Packet, PacketMut, PacketRef, PACKET_SIZE, PCR_WRAP,
};
use crate::ts::Pid;

/// 27 MHz ticks per second.
const TICKS_PER_S: u64 = 27_000_000;
/// Bits per packet.
const PACKET_BITS: u128 = 188 * 8;
/// A PCR this far from its clock (either way) starts the clock again.
const JUMP: u64 = TICKS_PER_S;
/// The offset's rate, ppb, per tick of averaged difference (see [`RateLoop`]).
const RATE_PER_TICK_DIVISOR: i64 = 8;
/// A PCR PID with no PCR out for this long gets one in the next free slot.
const PCR_INTERVAL_NS: u64 = 35_000_000;
/// ... while the PID had a packet of the stream within this long.
const PCR_ALIVE_NS: u64 = 200_000_000;
/// PCR PIDs followed; a stream with more has their PCRs passed on unchanged (counted).
const MAX_CLOCKS: usize = 64;
/// The schedule never runs more than this behind: a caller that stalled longer restarts it
/// at now (the PCR clocks start again).
const MAX_CATCH_UP_NS: u64 = 1_000_000_000;
/// Lowest and highest constant bitrate accepted.
pub const MIN_BITRATE: u64 = 100_000;
pub const MAX_BITRATE: u64 = 1_000_000_000;

/// What a constant-bitrate output is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CbrSettings {
    /// Bits per second of TS packets.
    pub bitrate: u64,
    /// The jitter buffer: how long after its arrival the stream's first packet is due, and
    /// so the latency added.
    pub delay: Duration,
    /// The longest a packet may be late for its slot; later ones are dropped.
    pub max_delay: Duration,
}

impl CbrSettings {
    /// Check the bitrate and delay; the message names what to change.
    pub fn check(&self) -> Result<(), String> {
        if !(MIN_BITRATE..=MAX_BITRATE).contains(&self.bitrate) {
            return Err(format!(
                "cbr: {} bit/s is out of range ({MIN_BITRATE} to {MAX_BITRATE}, e.g. \"20M\")",
                self.bitrate
            ));
        }
        if self.delay > Duration::from_secs(5) {
            return Err(format!(
                "cbr_delay: {:?} is out of range (0 to 5s)",
                self.delay
            ));
        }
        if self.max_delay < Duration::from_millis(10) || self.max_delay > Duration::from_secs(5) {
            return Err(format!(
                "cbr_max_delay: {:?} is out of range (10ms to 5s)",
                self.max_delay
            ));
        }
        Ok(())
    }

    /// Packets the queue holds: both delays' worth at the bitrate, twice over for bursts
    /// (an encoder's I-frame arrives at once), at least 4096 and at most 65536.
    pub fn queue_packets(&self) -> usize {
        let per_delay = u128::from(self.bitrate) * (self.delay + self.max_delay).as_nanos()
            / (PACKET_BITS * 1_000_000_000);
        (2 * per_delay).clamp(4096, 65536) as usize
    }
}

/// The counters of a constant-bitrate output (live, for the status API and `/metrics`).
#[derive(Debug, Default)]
pub struct CbrStats {
    /// Packets that went out in a slot (nulls not included).
    pub packets: AtomicU64,
    /// Null packets put in empty slots.
    pub nulls: AtomicU64,
    /// Null packets of the input taken out.
    pub input_nulls: AtomicU64,
    /// Packets dropped because the queue was full.
    pub dropped_full: AtomicU64,
    /// Packets dropped because they waited longer than `max_delay`.
    pub dropped_late: AtomicU64,
    /// PCRs rewritten for their slot.
    pub pcr_restamped: AtomicU64,
    /// PCR clocks started again (a jump, a discontinuity, a stall of the schedule).
    pub pcr_restarts: AtomicU64,
    /// PCRs on PIDs past the followed limit, passed on unchanged.
    pub pcr_unfollowed: AtomicU64,
    /// Adaptation-only PCR packets put in free slots (a PCR PID quiet for 35 ms).
    pub pcr_inserted: AtomicU64,
    /// The dating's clock started again (a PCR jump, a discontinuity, a stalled sender).
    pub dating_restarts: AtomicU64,
}

/// A snapshot of [`CbrStats`] with the settings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CbrSnapshot {
    pub bitrate: u64,
    pub packets: u64,
    pub nulls: u64,
    pub input_nulls: u64,
    pub dropped_full: u64,
    pub dropped_late: u64,
    pub pcr_restamped: u64,
    pub pcr_restarts: u64,
    pub pcr_unfollowed: u64,
    pub pcr_inserted: u64,
    pub dating_restarts: u64,
}

impl CbrStats {
    /// The counters now, with the bitrate they run at.
    pub fn snapshot(&self, bitrate: u64) -> CbrSnapshot {
        CbrSnapshot {
            bitrate,
            packets: self.packets.load(Relaxed),
            nulls: self.nulls.load(Relaxed),
            input_nulls: self.input_nulls.load(Relaxed),
            dropped_full: self.dropped_full.load(Relaxed),
            dropped_late: self.dropped_late.load(Relaxed),
            pcr_restamped: self.pcr_restamped.load(Relaxed),
            pcr_restarts: self.pcr_restarts.load(Relaxed),
            pcr_unfollowed: self.pcr_unfollowed.load(Relaxed),
            pcr_inserted: self.pcr_inserted.load(Relaxed),
            dating_restarts: self.dating_restarts.load(Relaxed),
        }
    }
}

struct Queued {
    due_ns: u64,
    pkt: Packet,
    /// The dating started its clock again at this packet.
    restart: bool,
}

/// One PCR PID's clock: output PCR = slot position (27 MHz) + `offset`.
struct PcrClock {
    pid: Pid,
    offset: u64,
    /// Follows (input PCR - due time) - offset, in ticks; its rate moves the offset.
    follow: RateLoop,
    /// Slot position of the last PCR.
    last_position: u64,
    /// Slot of the last PCR sent on the PID (its own or one put in), and the PID's last
    /// continuity counter (an adaptation-only packet repeats it).
    last_pcr_slot: u64,
    last_cc: u8,
    /// Slot of the PID's last packet from the stream: PCRs are put in only while the
    /// program is there (a stream that stopped does not keep a fake clock).
    last_seen_slot: u64,
}

/// The slot schedule of one constant-bitrate output.
pub struct Cbr {
    settings: CbrSettings,
    /// The next slot to fill.
    slot: u64,
    /// Slots before this one belong to an earlier run of the schedule (after a stall).
    base_slot: u64,
    base_ns: u64,
    queue: VecDeque<Queued>,
    capacity: usize,
    dating: Dating,
    clocks: Vec<PcrClock>,
    null: Packet,
    stats: Arc<CbrStats>,
}

impl std::fmt::Debug for Cbr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cbr")
            .field("settings", &self.settings)
            .field("slot", &self.slot)
            .field("queued", &self.queue.len())
            .finish_non_exhaustive()
    }
}

impl Cbr {
    /// A schedule starting at time 0, counting into `stats`.
    pub fn new(settings: CbrSettings, stats: Arc<CbrStats>) -> Cbr {
        let capacity = settings.queue_packets();
        Cbr {
            settings,
            slot: 0,
            base_slot: 0,
            base_ns: 0,
            queue: VecDeque::with_capacity(capacity),
            capacity,
            dating: Dating::new(
                settings.delay.as_nanos() as u64,
                settings.max_delay.as_nanos() as u64,
            ),
            clocks: Vec::new(),
            null: null_packet(),
            stats,
        }
    }

    /// The settings it runs with.
    pub fn settings(&self) -> CbrSettings {
        self.settings
    }

    /// Packets waiting for a slot.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Take one packet that arrived at `arrival_ns` (times never go back).
    pub fn push(&mut self, pkt: &Packet, arrival_ns: u64) {
        if PacketRef::new(pkt).pid() == Pid::NULL {
            self.stats.input_nulls.fetch_add(1, Relaxed);
            return;
        }
        // dated even when dropped, so the clock sees every PCR
        let restarts = self.dating.restarts;
        let due_ns = self.dating.date(pkt, arrival_ns);
        let restart = self.dating.restarts != restarts;
        if restart {
            self.stats.dating_restarts.fetch_add(1, Relaxed);
        }
        if self.queue.len() >= self.capacity {
            self.stats.dropped_full.fetch_add(1, Relaxed);
            return;
        }
        self.queue.push_back(Queued {
            due_ns,
            pkt: *pkt,
            restart,
        });
    }

    /// When slot `n` goes out, ns.
    fn slot_ns(&self, n: u64) -> u64 {
        let k = u128::from(n - self.base_slot);
        self.base_ns + (k * PACKET_BITS * 1_000_000_000 / u128::from(self.settings.bitrate)) as u64
    }

    /// Slot `n`'s position in 27 MHz ticks (modulo the PCR wrap).
    fn position(&self, n: u64) -> u64 {
        let ticks = u128::from(n) * PACKET_BITS * u128::from(TICKS_PER_S)
            / u128::from(self.settings.bitrate);
        (ticks % u128::from(PCR_WRAP)) as u64
    }

    /// When the slot that completes `k` more packets from now goes out, ns: the caller
    /// sleeps until then and sends them as one datagram.
    pub fn due_ns(&self, k: u64) -> u64 {
        self.slot_ns(self.slot + k.max(1) - 1)
    }

    /// Fill every slot due by `now_ns`, handing each packet (a queued one or a null) to
    /// `out` in slot order. Returns the slots filled.
    pub fn emit(&mut self, now_ns: u64, mut out: impl FnMut(&Packet)) -> u64 {
        if now_ns > self.slot_ns(self.slot).saturating_add(MAX_CATCH_UP_NS) {
            // the caller stalled: start the schedule again at now rather than send a
            // burst of everything missed; the PCR clocks start again with it
            self.base_slot = self.slot;
            self.base_ns = now_ns;
            self.stats
                .pcr_restarts
                .fetch_add(self.clocks.len() as u64, Relaxed);
            self.clocks.clear();
        }
        let max_delay = self.settings.max_delay.as_nanos() as u64;
        let mut filled = 0;
        loop {
            let t = self.slot_ns(self.slot);
            if t > now_ns {
                break;
            }
            while self
                .queue
                .front()
                .is_some_and(|q| t.saturating_sub(q.due_ns) > max_delay)
            {
                self.queue.pop_front();
                self.stats.dropped_late.fetch_add(1, Relaxed);
            }
            if self.queue.front().is_some_and(|q| q.due_ns <= t) {
                let Some(mut q) = self.queue.pop_front() else {
                    break;
                };
                self.restamp(&mut q.pkt, q.due_ns, q.restart);
                self.note_cc(&q.pkt);
                out(&q.pkt);
                self.stats.packets.fetch_add(1, Relaxed);
            } else if let Some(p) = self.pcr_only() {
                out(&p);
                self.stats.pcr_inserted.fetch_add(1, Relaxed);
            } else {
                out(&self.null);
                self.stats.nulls.fetch_add(1, Relaxed);
            }
            self.slot += 1;
            filled += 1;
        }
        filled
    }

    /// Keep the continuity counter of a PCR PID's packet going out.
    fn note_cc(&mut self, pkt: &Packet) {
        if self.clocks.is_empty() {
            return;
        }
        let pid = PacketRef::new(pkt).pid();
        let slot = self.slot;
        if let Some(c) = self.clocks.iter_mut().find(|c| c.pid == pid) {
            c.last_cc = pkt[3] & 0x0F;
            c.last_seen_slot = slot;
        }
    }

    /// For a free slot: an adaptation-only packet carrying the PCR of a PID whose last PCR
    /// went out [`PCR_INTERVAL_NS`] ago or more. A variable-bitrate source puts a whole
    /// frame's packets at one instant of its clock, so at a constant bitrate a PCR packet
    /// may go out well after the last one; ETR 290 2.3a wants one every 100 ms.
    fn pcr_only(&mut self) -> Option<Packet> {
        let interval = self.slots_for(PCR_INTERVAL_NS);
        let alive = self.slots_for(PCR_ALIVE_NS);
        let position = self.position(self.slot);
        let slot = self.slot;
        let c = self
            .clocks
            .iter_mut()
            .find(|c| slot - c.last_pcr_slot >= interval && slot - c.last_seen_slot < alive)?;
        let mut p = [0xFFu8; PACKET_SIZE];
        let pid = c.pid.value();
        // adaptation field only: the counter is not incremented (ISO/IEC 13818-1 2.4.3.3)
        p[..6].copy_from_slice(&[
            0x47,
            (pid >> 8) as u8,
            pid as u8,
            0x20 | c.last_cc,
            183,
            0x10,
        ]);
        // on the clock's line: the offset as its rate has moved it since its last PCR
        let offset = wrap_add(c.offset, c.follow.peek(pcr_step(c.last_position, position)));
        PacketMut::new(&mut p).set_pcr(position + offset);
        c.last_pcr_slot = slot;
        Some(p)
    }

    /// Slots in `ns`.
    fn slots_for(&self, ns: u64) -> u64 {
        (u128::from(ns) * u128::from(self.settings.bitrate) / (PACKET_BITS * 1_000_000_000)) as u64
    }

    /// Rewrite the PCR (if any) of the packet going out in the current slot.
    fn restamp(&mut self, pkt: &mut Packet, due_ns: u64, dating_restart: bool) {
        let r = PacketRef::new(pkt);
        let Some(pcr) = r.pcr() else {
            return;
        };
        let pid = r.pid();
        let flagged = r.discontinuity();
        // a dating restart moves the due times: a new time base here too
        let new_base = flagged || dating_restart;
        let position = self.position(self.slot);
        // the input's clock against ours: PCR minus the due time, in ticks
        let due = (u128::from(due_ns) * u128::from(TICKS_PER_S) / 1_000_000_000
            % u128::from(PCR_WRAP)) as u64;
        let q = pcr_step(due, pcr);
        let k = match self.clocks.iter().position(|c| c.pid == pid) {
            Some(k) => k,
            None if self.clocks.len() < MAX_CLOCKS => {
                self.clocks.push(PcrClock {
                    pid,
                    offset: q,
                    follow: RateLoop::default(),
                    last_position: position,
                    last_pcr_slot: self.slot,
                    last_cc: pkt[3] & 0x0F,
                    last_seen_slot: self.slot,
                });
                self.clocks.len() - 1
            }
            None => {
                self.stats.pcr_unfollowed.fetch_add(1, Relaxed);
                return;
            }
        };
        let c = &mut self.clocks[k];
        let diff = signed_step(c.offset, q);
        let restart = new_base || diff.unsigned_abs() > JUMP;
        if restart {
            c.offset = q;
            c.follow.reset();
            self.stats.pcr_restarts.fetch_add(1, Relaxed);
        } else {
            c.follow.steer(diff, RATE_PER_TICK_DIVISOR);
            let step = c.follow.advance(pcr_step(c.last_position, position));
            c.offset = wrap_add(c.offset, step);
            c.follow.rebase(step);
        }
        c.last_position = position;
        c.last_pcr_slot = self.slot;
        let mut m = PacketMut::new(pkt);
        m.set_pcr(position + c.offset);
        if restart && !flagged {
            m.set_discontinuity();
        }
        self.stats.pcr_restamped.fetch_add(1, Relaxed);
    }
}

/// `at + step` modulo the PCR wrap.
fn wrap_add(at: u64, step: i64) -> u64 {
    (at + PCR_WRAP).wrapping_add_signed(step) % PCR_WRAP
}

/// The step from `from` to `to` modulo the PCR wrap, as the shorter way round.
fn signed_step(from: u64, to: u64) -> i64 {
    let s = pcr_step(from, to);
    if s > PCR_WRAP / 2 {
        -((PCR_WRAP - s) as i64)
    } else {
        s as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mux::test_packets::{es, with_pcr};

    const MS: u64 = 1_000_000;

    fn settings(bitrate: u64) -> CbrSettings {
        CbrSettings {
            bitrate,
            delay: Duration::from_millis(50),
            max_delay: Duration::from_millis(100),
        }
    }

    /// Run `input` (arrival ns, packet) through a schedule, emitting every 1 ms until
    /// `end_ns`; the packets out in slot order.
    fn run(cbr: &mut Cbr, input: &[(u64, Packet)], end_ns: u64) -> Vec<Packet> {
        let mut out = Vec::new();
        let mut next = 0;
        let mut now = 0;
        while now <= end_ns {
            while next < input.len() && input[next].0 <= now {
                cbr.push(&input[next].1, input[next].0);
                next += 1;
            }
            cbr.emit(now, |p| out.push(*p));
            now += MS;
        }
        out
    }

    /// A 2 Mbit/s input: PCR every 40 ms on PID 0x100 (clock `pcr0` + its time scaled by
    /// `ppm`), data on 0x100 and 0x101, arriving in bursts of 7 every 5 ms.
    fn input(pcr0: u64, ppm: i64, secs: u64) -> Vec<(u64, Packet)> {
        let mut v = Vec::new();
        let mut cc = 0u8;
        let mut t = 0;
        while t < secs * 1000 * MS {
            for k in 0..7u64 {
                let p = if k == 0 && t % (40 * MS) == 0 {
                    let ticks =
                        (t as i128 * 27 / 1000 * (1_000_000 + ppm as i128) / 1_000_000) as u64;
                    with_pcr(0x100, (pcr0 + ticks) % PCR_WRAP, cc)
                } else {
                    es(0x100 + (k as u16 & 1), cc)
                };
                cc = cc.wrapping_add(1);
                v.push((t, p));
            }
            t += 5 * MS;
        }
        v
    }

    fn pcrs(out: &[Packet]) -> Vec<(usize, u64, bool)> {
        out.iter()
            .enumerate()
            .filter_map(|(i, p)| {
                let r = PacketRef::new(p);
                r.pcr().map(|c| (i, c, r.discontinuity()))
            })
            .collect()
    }

    #[test]
    fn slots_go_at_the_bitrate_with_nulls_between_and_order_kept() {
        let stats = Arc::new(CbrStats::default());
        let mut cbr = Cbr::new(settings(10_000_000), stats.clone());
        let inp = input(0, 0, 2);
        let out = run(&mut cbr, &inp, 2000 * MS);
        // 10 Mbit/s for 2 s, slot 0 at t=0 included
        let expect = 2 * 10_000_000 / 1504 + 1;
        assert_eq!(out.len() as u64, expect);
        // the input's packets (not nulls, not PCRs put in free slots: those carry no payload)
        let real: Vec<&Packet> = out
            .iter()
            .filter(|p| p[1] != 0x1F && p[3] & 0x10 != 0)
            .collect();
        assert_eq!(real.len(), inp.len() - cbr.queued());
        for (a, b) in real.iter().zip(&inp) {
            assert_eq!(&a[3] & 0x0F, b.1[3] & 0x0F, "order kept");
        }
        let s = stats.snapshot(10_000_000);
        assert_eq!(s.packets + s.nulls + s.pcr_inserted, expect);
        assert_eq!(s.dropped_full + s.dropped_late, 0);
    }

    /// The largest distance, in ticks, of a PCR from the line through its two neighbours
    /// (ETR 290 2.4's measure: within ±500 ns, 13.5 ticks), and the mean rate of the PCRs
    /// against the bitrate, ppm.
    fn line(out: &[Packet], bitrate: u64) -> (f64, f64) {
        let p = pcrs(out);
        let mut worst = 0f64;
        for w in p.windows(3) {
            let (a, b, c) = (w[0], w[1], w[2]);
            let ab = pcr_step(a.1, b.1) as f64;
            let ac = pcr_step(a.1, c.1) as f64;
            let at = ac * (b.0 - a.0) as f64 / (c.0 - a.0) as f64;
            worst = worst.max((ab - at).abs());
        }
        let (first, last) = (p[0], p[p.len() - 1]);
        let exact = ((last.0 - first.0) as u128 * 1504 * 27_000_000 / u128::from(bitrate)) as f64;
        let got = pcr_step(first.1, last.1) as f64;
        (worst, (got - exact) / exact * 1e6)
    }

    #[test]
    fn every_pcr_is_what_its_position_gives() {
        for (pcr0, ppm) in [
            (5 * 27_000_000, 0),
            (PCR_WRAP - 27_000_000, 0),
            (0, 40),
            (0, -40),
        ] {
            let stats = Arc::new(CbrStats::default());
            let bitrate = 8_000_000;
            let mut cbr = Cbr::new(settings(bitrate), stats.clone());
            let out = run(&mut cbr, &input(pcr0, ppm, 20), 20_000 * MS);
            assert!(pcrs(&out).len() > 400);
            assert!(pcrs(&out).iter().all(|x| !x.2), "no restart");
            // on a straight line to a tick or two (the positions are rounded to a tick)
            let (worst, rate) = line(&out, bitrate);
            assert!(worst <= 2.0, "{pcr0} {ppm}: {worst} ticks off the line");
            assert!(rate.abs() <= 51.0, "{rate} ppm");
            if ppm == 0 {
                assert!(rate.abs() < 1.0, "{rate} ppm");
            }
            assert_eq!(stats.snapshot(bitrate).pcr_restarts, 0);
        }
    }

    #[test]
    fn the_offset_follows_a_drifting_sender_and_stays_near_the_input_pcr() {
        // PCR packets alone, from a sender 30 ppm fast (an hour's drift 108 ms), for 20 min
        for ppm in [30i64, -30] {
            let stats = Arc::new(CbrStats::default());
            // fine slots (0.75 ms), so the wait for one does not blur the measure
            let bitrate = 2_000_000;
            let mut cbr = Cbr::new(settings(bitrate), stats.clone());
            let secs = 1200;
            let inp: Vec<(u64, Packet)> = (0..secs * 25)
                .map(|k| {
                    let t = k * 40 * MS;
                    let ticks =
                        (t as i128 * 27 / 1000 * (1_000_000 + i128::from(ppm)) / 1_000_000) as u64;
                    (t, with_pcr(0x100, ticks, k as u8))
                })
                .collect();
            let out = run(&mut cbr, &inp, secs * 1000 * MS);
            assert_eq!(stats.snapshot(0).pcr_restarts, 0);
            // the last input packet out (not a PCR put in a free slot: that has no payload)
            // against its PCR in the input
            let last_real = out
                .iter()
                .rposition(|p| p[3] & 0x10 != 0 && p[1..3] == [0x01, 0x00])
                .unwrap();
            let last = PacketRef::new(&out[last_real]).pcr().unwrap();
            let sent = stats.snapshot(0).packets as usize;
            let input_pcr = PacketRef::new(&inp[sent - 1].1).pcr().unwrap();
            // without the loop the offset would be 36 ms off by now (30 ppm of 1200 s);
            // with it, within 12 ms (its steady error at 30 ppm is about 9 ms, plus the
            // average's delay and a slot)
            let off = signed_step(input_pcr, last).abs();
            assert!(
                off < 12 * 27_000,
                "{ppm} ppm: output PCR {off} ticks from the input's"
            );
            let (worst, _) = line(&out, bitrate);
            assert!(worst <= 2.0, "{ppm}: {worst} ticks off the line");
        }
    }

    #[test]
    fn a_jump_or_a_discontinuity_restarts_the_clock_with_the_indicator() {
        let stats = Arc::new(CbrStats::default());
        let mut cbr = Cbr::new(settings(8_000_000), stats.clone());
        let mut inp = input(0, 0, 4);
        // from 2 s on the input's clock jumps 10 s ahead
        for (t, p) in inp.iter_mut() {
            if *t >= 2000 * MS {
                if let Some(c) = PacketRef::new(p).pcr() {
                    *p = with_pcr(0x100, c + 270_000_000, p[3] & 15);
                }
            }
        }
        let out = run(&mut cbr, &inp, 4000 * MS);
        let p = pcrs(&out);
        let flagged: Vec<_> = p.iter().filter(|x| x.2).collect();
        assert_eq!(flagged.len(), 1);
        assert_eq!(stats.snapshot(0).pcr_restarts, 1);
        let k = p.iter().position(|x| x.2).unwrap();
        assert!(pcr_step(p[k - 1].1, p[k].1) > 200_000_000);
    }

    #[test]
    fn more_than_the_bitrate_is_dropped_and_counted() {
        let stats = Arc::new(CbrStats::default());
        // 2 Mbit/s of input into 1 Mbit/s
        let mut cbr = Cbr::new(settings(1_000_000), stats.clone());
        let inp = input(0, 0, 3);
        let out = run(&mut cbr, &inp, 3000 * MS);
        assert_eq!(out.len() as u64, 3 * 1_000_000 / 1504 + 1);
        let s = stats.snapshot(1_000_000);
        assert!(s.dropped_late > 1000, "{s:?}");
        assert_eq!(
            s.packets + s.dropped_late + cbr.queued() as u64,
            inp.len() as u64
        );
    }

    #[test]
    fn a_full_queue_drops_and_input_nulls_are_taken_out() {
        let stats = Arc::new(CbrStats::default());
        let mut cbr = Cbr::new(settings(1_000_000), stats.clone());
        let cap = settings(1_000_000).queue_packets();
        for i in 0..cap + 10 {
            cbr.push(&es(0x100, i as u8), 0);
        }
        cbr.push(&null_packet(), 0);
        let s = stats.snapshot(0);
        assert_eq!((s.dropped_full, s.input_nulls), (10, 1));
        assert_eq!(cbr.queued(), cap);
    }

    #[test]
    fn a_stalled_caller_restarts_the_schedule_instead_of_a_burst() {
        let stats = Arc::new(CbrStats::default());
        let mut cbr = Cbr::new(settings(1_000_000), stats.clone());
        let mut n = cbr.emit(10 * MS, |_| {});
        n += cbr.emit(5_000 * MS, |_| {});
        // 10 ms worth, then not 5 s worth
        assert!(n < 20, "{n}");
        assert_eq!(cbr.due_ns(1), 5_000 * MS + 1504 * 1000);
    }

    #[test]
    fn settings_are_checked() {
        assert!(settings(20_000_000).check().is_ok());
        assert!(settings(10).check().unwrap_err().contains("cbr"));
        let mut s = settings(20_000_000);
        s.max_delay = Duration::from_secs(60);
        assert!(s.check().unwrap_err().contains("cbr_max_delay"));
    }
}
