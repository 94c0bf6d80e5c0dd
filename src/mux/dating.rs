//! When each packet of a live stream is due out, from the stream's own clock: a constant-
//! bitrate schedule must keep the timing the PCRs give, not the arrival times, which a
//! sender's bursts (ffmpeg `-re` writes a frame at a time: PCR packets 40 ms apart in value
//! arrive up to 180 ms apart) or the network's jitter shuffle.
//!
//! The reference clock is the first PID that carries PCRs (the analyzer's stream time does
//! the same). The first PCR is due `delay` after it arrived; each later one is due its PCR
//! step after the last; a packet between two PCRs is due at the mean packet spacing after
//! the last PCR, never before the packet ahead of it (order is kept). `delay` is the
//! jitter the schedule absorbs and the latency it adds.
//!
//! A sender's clock may run up to 30 ppm off ours; left alone, packets would then come due
//! further and further from their arrival (the queue would fill or run dry over hours). A
//! slow loop (minutes) steers the rate of the mapping from PCR to our time so that packets
//! stay `delay` ahead of their due time on average, changing that rate by at most 0.5 ppm
//! per PCR. A PCR that jumps (over a second, or backwards), carries the discontinuity
//! indicator, or comes due far from where its arrival says (the sender stalled and caught
//! up) starts the clock again from its arrival. Before the first PCR, and on a stream
//! without any, packets are due `delay` after they arrived.

use super::follow::RateLoop;
use crate::ts::packet::{pcr_step, Packet, PacketRef};
use crate::ts::Pid;

/// 27 MHz ticks per ms.
const TICKS_PER_MS: u64 = 27_000;
/// A PCR step over this (or backwards) is a jump.
const MAX_STEP: u64 = 1000 * TICKS_PER_MS;
/// The mapping's rate, ppb, per ns of averaged difference (see [`RateLoop`]); negative: a
/// packet due later than its arrival says slows the mapping.
const RATE_PER_NS_DIVISOR: i64 = -300;
/// Mean spacing assumed until two PCRs have given one, ns (about 2 Mbit/s).
const FIRST_SPACING_NS: u64 = 750_000;

/// Dates the packets of one stream.
#[derive(Debug)]
pub struct Dating {
    delay_ns: u64,
    /// A PCR due this far from its arrival + delay (either way) starts the clock again.
    restart_ns: u64,
    reference: Option<Pid>,
    /// The last PCR of the reference PID and when it is due (None: none yet).
    last_pcr: u64,
    last_due: Option<u64>,
    /// Packets since that PCR, and the mean spacing of packets, ns (fixed point: ns << 8).
    since: u64,
    spacing: u64,
    /// The last step between PCRs, ns.
    last_step_ns: u64,
    /// Follows (due - arrival - delay) at PCRs, ns; its rate adjusts the mapping.
    follow: RateLoop,
    /// The last due time given (order is kept).
    previous: u64,
    /// Clock restarts.
    pub restarts: u64,
}

impl Dating {
    /// Date with a jitter buffer of `delay_ns`; a PCR due more than `restart_ns` from where
    /// its arrival says restarts the clock.
    pub fn new(delay_ns: u64, restart_ns: u64) -> Dating {
        Dating {
            delay_ns,
            restart_ns,
            reference: None,
            last_pcr: 0,
            last_due: None,
            since: 0,
            spacing: FIRST_SPACING_NS << 8,
            last_step_ns: 40_000_000,
            follow: RateLoop::default(),
            previous: 0,
            restarts: 0,
        }
    }

    /// When `pkt`, which arrived at `arrival_ns`, is due out, ns (never before the last).
    pub fn date(&mut self, pkt: &Packet, arrival_ns: u64) -> u64 {
        let r = PacketRef::new(pkt);
        let pid = r.pid();
        let pcr = r.pcr();
        if self.reference.is_none() && pcr.is_some() {
            self.reference = Some(pid);
        }
        let due = match (self.reference, pcr, self.last_due) {
            (Some(reference), Some(pcr), _) if reference == pid => {
                self.on_pcr(pcr, r.discontinuity(), arrival_ns)
            }
            (_, _, Some(last)) => {
                // at the mean spacing, but not past where the next PCR is expected: a
                // variable-bitrate source puts a whole frame at one instant of its clock
                self.since += 1;
                last + ((self.since * self.spacing) >> 8).min(self.last_step_ns)
            }
            _ => arrival_ns + self.delay_ns,
        };
        let due = due.max(self.previous);
        self.previous = due;
        due
    }

    fn on_pcr(&mut self, pcr: u64, flagged: bool, arrival_ns: u64) -> u64 {
        let target = arrival_ns + self.delay_ns;
        let step = pcr_step(self.last_pcr, pcr);
        let first = self.last_due.is_none();
        let due = match self.last_due {
            Some(_) if flagged || step > MAX_STEP => None,
            None => None,
            Some(last_due) => {
                let ns = step * 1000 / 27;
                let due = (last_due + ns).wrapping_add_signed(self.follow.advance(ns));
                (due.abs_diff(target) <= self.restart_ns).then_some((due, ns))
            }
        };
        let d = match due {
            Some((d, ns)) => {
                self.last_step_ns = ns;
                if self.since > 0 {
                    // the packets between the two PCRs give the mean spacing
                    let spacing = (ns << 8) / (self.since + 1);
                    self.spacing = (self.spacing * 7 + spacing) / 8;
                }
                // steer the mapping's rate so that packets wait `delay` on average
                self.follow
                    .steer(d as i64 - target as i64, RATE_PER_NS_DIVISOR);
                d
            }
            None => {
                if !first {
                    self.restarts += 1;
                }
                self.follow.reset();
                // a restart is due from its arrival (not before what is queued)
                target
            }
        };
        // the mapping keeps the PCR's own time; only what is handed out waits for the
        // packets ahead (in `date`), so a queue of early-dated packets never shifts it
        self.last_pcr = pcr;
        self.last_due = Some(d);
        self.since = 0;
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mux::test_packets::{es, with_pcr};

    const MS: u64 = 1_000_000;

    fn pkt(pid: u16, pcr: Option<u64>) -> Packet {
        match pcr {
            Some(pcr) => with_pcr(pid, pcr, 0),
            None => es(pid, 0),
        }
    }

    #[test]
    fn bursts_are_dated_by_their_pcrs_not_their_arrival() {
        let mut d = Dating::new(200 * MS, 1000 * MS);
        // PCRs 40 ms apart in value arrive in bursts of four every 160 ms, with 9 packets
        // after each
        let mut dues = Vec::new();
        for k in 0..40u64 {
            let arrival = (k / 4) * 160 * MS + 1000 * MS;
            dues.push(d.date(
                &pkt(0x100, Some(5_000_000 + k * 40 * TICKS_PER_MS)),
                arrival,
            ));
            for _ in 0..9 {
                d.date(&pkt(0x101, None), arrival);
            }
        }
        for w in dues.windows(2) {
            // 40 ms, give or take the loop's first nanoseconds of rate
            assert!((w[1] - w[0]).abs_diff(40 * MS) < 1000, "{}", w[1] - w[0]);
        }
        assert_eq!(dues[0], 1200 * MS);
        assert_eq!(d.restarts, 0);
    }

    #[test]
    fn packets_between_pcrs_are_spread_in_order() {
        let mut d = Dating::new(100 * MS, 1000 * MS);
        let mut all = Vec::new();
        for k in 0..20u64 {
            let t = k * 40 * MS;
            all.push(d.date(&pkt(0x100, Some(k * 40 * TICKS_PER_MS)), t));
            for i in 0..9 {
                all.push(d.date(&pkt(0x101, None), t + i * MS));
            }
        }
        assert!(all.windows(2).all(|w| w[1] >= w[0]), "in order");
        // after a few PCRs the spacing is known: 4 ms per packet
        let tail = &all[all.len() - 10..];
        let gaps: Vec<u64> = tail.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(
            gaps.iter().all(|&g| (3 * MS..=5 * MS).contains(&g)),
            "{gaps:?}"
        );
    }

    #[test]
    fn a_jump_a_discontinuity_or_a_stall_restarts_the_clock() {
        let mut d = Dating::new(100 * MS, 500 * MS);
        for k in 0..10u64 {
            d.date(&pkt(0x100, Some(k * 40 * TICKS_PER_MS)), k * 40 * MS);
        }
        // a jump of 10 s in value
        let due = d.date(&pkt(0x100, Some(10_000 * TICKS_PER_MS)), 400 * MS);
        assert_eq!((due, d.restarts), (500 * MS, 1));
        // the sender stalls 2 s and goes on where its clock was
        let due = d.date(&pkt(0x100, Some(10_040 * TICKS_PER_MS)), 2440 * MS);
        assert_eq!((due, d.restarts), (2540 * MS, 2));
        // the indicator
        let mut p = pkt(0x100, Some(10_080 * TICKS_PER_MS));
        p[5] |= 0x80;
        d.date(&p, 2480 * MS);
        assert_eq!(d.restarts, 3);
    }

    #[test]
    fn a_drifting_sender_is_followed_so_packets_keep_waiting_the_delay() {
        for ppm in [30i64, -30] {
            let mut d = Dating::new(200 * MS, 1000 * MS);
            let mut waits = Vec::new();
            // 30 minutes of PCRs every 40 ms of our time, their values off by `ppm`
            for k in 0..45_000u64 {
                let t = k * 40 * MS;
                let pcr =
                    (t as i128 * 27 / 1000 * (1_000_000 + i128::from(ppm)) / 1_000_000) as u64;
                waits.push(d.date(&pkt(0x100, Some(pcr)), t) as i64 - t as i64);
            }
            assert_eq!(d.restarts, 0);
            // without the loop: 200 ms ± 54 ms by now; with it, within 12 ms of 200 ms (its
            // steady error at 30 ppm is 9 ms)
            let last = *waits.last().unwrap();
            assert!(
                (last - 200 * MS as i64).abs() < 12 * MS as i64,
                "{ppm}: {last}"
            );
        }
    }
}
