//! PCR checks of one PID: TR 101 290 2.3a (repetition), 2.3b (discontinuity without the
//! indicator) and 2.4 (accuracy).
//!
//! Accuracy is measured the way a file allows: each PCR is compared with the value
//! interpolated from its byte position between its two neighbours, i.e. against the
//! bitrate those neighbours give. That is only a measure of PCR accuracy when the
//! bitrate is constant; in a variable-bitrate mux (ffmpeg's default) PCRs follow the
//! content and are tens of milliseconds off any straight line, rightly. So the PID is
//! judged constant-bitrate when most pairs of consecutive PCR intervals give the same
//! rate (within [`CBR_TOLERANCE`]); only then do the deviations count as 2.4 errors. A
//! sporadic bad PCR upsets two intervals and leaves the rest straight, so it does not
//! make a constant-bitrate PID look variable.

use std::time::Duration;

use serde::Serialize;

use super::clock::{pcr_step, MAX_STEP, TICKS_PER_MS};
use super::etr290::{Position, Repetition};

/// 2.3a/2.3b: the largest gap between PCRs.
pub const PCR_LIMIT: Duration = Duration::from_millis(100);
/// 2.4: the largest deviation, ns.
pub const ACCURACY_LIMIT_NS: f64 = 500.0;
/// Two consecutive intervals are "the same rate" within this fraction.
pub const CBR_TOLERANCE: f64 = 0.01;
/// The share of interval pairs at the same rate that makes a PID constant-bitrate.
pub const CBR_SHARE: f64 = 0.9;

/// What one PCR broke.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PcrEvents {
    pub repetition: bool,
    pub discontinuity: bool,
}

/// The PCR state and figures of one PID.
#[derive(Debug, Clone, Default)]
pub struct PcrState {
    pub repetition: Repetition,
    /// The last two PCRs (packet number, value) since the last discontinuity.
    chain: [Option<(u64, u64)>; 2],
    /// PCRs with the discontinuity_indicator set.
    pub signalled_discontinuities: u64,
    /// Interval pairs compared, and those at the same rate.
    pub pairs: u64,
    pub same_rate_pairs: u64,
    /// The largest deviation from the interpolated value, ns.
    pub max_deviation_ns: f64,
    /// Deviations over the limit, and the first one.
    pub over_limit: u64,
    pub first_over: Option<Position>,
}

impl PcrState {
    /// A PCR `pcr` in packet `index`, arrived at `now`. In stream time (`stream`) the
    /// interval since the last PCR is the PCR step itself when it is a plausible one:
    /// the PCR says when its packet is due, better than a clock interpolated between
    /// another PID's PCRs.
    pub fn on_pcr(
        &mut self,
        at: Position,
        index: u64,
        pcr: u64,
        discontinuity_indicator: bool,
        now: Duration,
        stream: bool,
    ) -> PcrEvents {
        let own = self.chain[1]
            .map(|(_, last)| pcr_step(last, pcr))
            .filter(|&s| stream && s > 0 && s <= MAX_STEP)
            .map(|s| Duration::from_nanos(s * 1000 / 27));
        let repetition = match own {
            Some(gap) => self.repetition.occur_after(now, Some(gap), PCR_LIMIT),
            None => self.repetition.occur(now, PCR_LIMIT),
        };
        let mut ev = PcrEvents {
            repetition,
            discontinuity: false,
        };
        if discontinuity_indicator {
            self.signalled_discontinuities += 1;
            self.chain = [None, Some((index, pcr))];
            return ev;
        }
        if let Some((_, last)) = self.chain[1] {
            if pcr_step(last, pcr) > PCR_LIMIT.as_millis() as u64 * TICKS_PER_MS {
                ev.discontinuity = true;
                self.chain = [None, Some((index, pcr))];
                return ev;
            }
        }
        if let [Some(a), Some(b)] = self.chain {
            self.accuracy(at, a, b, (index, pcr));
        }
        self.chain = [self.chain[1], Some((index, pcr))];
        ev
    }

    /// Judge the middle PCR `b` against `a` and `c`.
    fn accuracy(&mut self, at: Position, a: (u64, u64), b: (u64, u64), c: (u64, u64)) {
        let (ab, ac) = (pcr_step(a.1, b.1) as f64, pcr_step(a.1, c.1) as f64);
        let (nab, nac) = ((b.0 - a.0) as f64, (c.0 - a.0) as f64);
        let deviation_ns = (ab - ac * nab / nac).abs() * 1000.0 / 27.0;
        let (r1, r2) = (ab / nab, (ac - ab) / (nac - nab));
        self.pairs += 1;
        if (r1 - r2).abs() <= CBR_TOLERANCE * r1.max(r2) {
            self.same_rate_pairs += 1;
        }
        self.max_deviation_ns = self.max_deviation_ns.max(deviation_ns);
        if deviation_ns > ACCURACY_LIMIT_NS {
            self.over_limit += 1;
            // the PCR judged is the previous one
            self.first_over
                .get_or_insert(Position { packet: b.0, ..at });
        }
    }

    /// Whether the PID's bitrate was constant enough for 2.4 to apply.
    pub fn constant_bitrate(&self) -> bool {
        self.pairs > 0 && self.same_rate_pairs as f64 >= CBR_SHARE * self.pairs as f64
    }

    /// The 2.4 errors: the deviations over the limit, on a constant-bitrate PID only.
    pub fn accuracy_errors(&self) -> u64 {
        if self.constant_bitrate() {
            self.over_limit
        } else {
            0
        }
    }
}

/// PCR figures of one PID, as reported.
#[derive(Debug, Clone, Serialize)]
pub struct PcrReport {
    pub pid: u16,
    pub pcrs: u64,
    pub max_interval_ms: f64,
    /// Judged constant-bitrate (2.4 applies).
    pub constant_bitrate: bool,
    /// Interval pairs compared, and those at the same rate.
    pub interval_pairs: u64,
    pub same_rate_pairs: u64,
    /// The largest deviation from the interpolated value, ns (a real accuracy only when
    /// `constant_bitrate`).
    pub max_deviation_ns: f64,
    pub signalled_discontinuities: u64,
}

impl PcrReport {
    pub(crate) fn of(pid: u16, s: &PcrState) -> PcrReport {
        PcrReport {
            pid,
            pcrs: s.repetition.seen,
            max_interval_ms: s.repetition.max_gap.as_secs_f64() * 1000.0,
            constant_bitrate: s.constant_bitrate(),
            interval_pairs: s.pairs,
            same_rate_pairs: s.same_rate_pairs,
            max_deviation_ns: (s.max_deviation_ns * 10.0).round() / 10.0,
            signalled_discontinuities: s.signalled_discontinuities,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = TICKS_PER_MS;

    fn at(packet: u64) -> Position {
        Position {
            packet,
            time_s: 0.0,
            pid: Some(0x100),
        }
    }

    /// PCRs every 100 packets at 10 ms per 100 packets, `f` bends each one.
    fn run(n: u64, f: impl Fn(u64, u64) -> u64) -> (PcrState, Vec<PcrEvents>) {
        let mut s = PcrState::default();
        let mut evs = Vec::new();
        for k in 0..n {
            let i = k * 100;
            let pcr = f(k, 27_000_000 + k * 10 * MS);
            let now = Duration::from_millis(k * 10);
            evs.push(s.on_pcr(at(i), i, pcr, false, now, true));
        }
        (s, evs)
    }

    #[test]
    fn a_straight_cbr_line_is_accurate() {
        let (s, evs) = run(50, |_, p| p);
        assert!(s.constant_bitrate());
        assert_eq!((s.accuracy_errors(), s.max_deviation_ns), (0, 0.0));
        assert!(evs.iter().all(|e| *e == PcrEvents::default()));
    }

    #[test]
    fn one_pcr_off_by_a_microsecond_is_an_accuracy_error() {
        // 27 ticks = 1 µs
        let (s, _) = run(50, |k, p| if k == 20 { p + 27 } else { p });
        assert!(s.constant_bitrate());
        assert_eq!(s.accuracy_errors(), 1);
        assert_eq!(s.first_over.unwrap().packet, 2000);
        assert!((s.max_deviation_ns - 1000.0).abs() < 1.0);
        // 400 ns is within
        let (s, _) = run(50, |k, p| if k == 20 { p + 11 } else { p });
        assert_eq!(s.accuracy_errors(), 0);
    }

    #[test]
    fn a_variable_bitrate_pid_is_not_judged_for_accuracy() {
        // every other interval twice as long in time for the same bytes
        let (s, _) = run(50, |k, p| p + (k / 2) * 10 * MS + (k % 2) * 10 * MS);
        assert!(!s.constant_bitrate());
        assert!(s.over_limit > 0);
        assert_eq!(s.accuracy_errors(), 0);
    }

    #[test]
    fn a_jump_without_the_indicator_is_2_3b_and_with_it_is_not() {
        let (s, evs) = run(30, |k, p| if k >= 10 { p + 5000 * MS } else { p });
        let disc: Vec<usize> = (0..30).filter(|&k| evs[k].discontinuity).collect();
        assert_eq!(disc, [10]);
        assert!(evs.iter().all(|e| !e.repetition));
        // the chain restarts after the jump: no accuracy error for it
        assert_eq!(s.over_limit, 0);
        // backwards is a discontinuity too
        let (_, evs) = run(30, |k, p| if k >= 10 { p - 50 * MS } else { p });
        assert!(evs[10].discontinuity);
        // signalled: not an error
        let mut s = PcrState::default();
        s.on_pcr(at(0), 0, 0, false, Duration::ZERO, true);
        let ev = s.on_pcr(at(1), 100, 9000 * MS, true, Duration::from_millis(10), true);
        assert_eq!(ev, PcrEvents::default());
        assert_eq!(s.signalled_discontinuities, 1);
    }

    #[test]
    fn pcrs_150_ms_apart_are_a_repetition_error() {
        let mut s = PcrState::default();
        let mut rep = 0;
        for k in 0..10u64 {
            let t = k * 150;
            let e = s.on_pcr(
                at(k),
                k * 100,
                t * MS,
                false,
                Duration::from_millis(t),
                true,
            );
            rep += u64::from(e.repetition);
        }
        assert_eq!(rep, 9);
        assert_eq!(s.repetition.max_gap, Duration::from_millis(150));
    }

    #[test]
    fn in_stream_time_the_interval_is_the_pcr_step_not_the_clock() {
        let mut s = PcrState::default();
        let mut rep = 0;
        for k in 0..10u64 {
            // 80 ms apart by value; the interpolated clock says 150 ms
            let now = Duration::from_millis(k * 150);
            rep += u64::from(
                s.on_pcr(at(k), k * 100, k * 80 * MS, false, now, true)
                    .repetition,
            );
        }
        assert_eq!(rep, 0);
        assert_eq!(s.repetition.max_gap, Duration::from_millis(80));
        // a jump is no interval: the clock's gap is used
        let e = s.on_pcr(
            at(10),
            1000,
            9000 * MS,
            false,
            Duration::from_millis(1400),
            true,
        );
        assert!(e.discontinuity && !e.repetition);
    }
}
