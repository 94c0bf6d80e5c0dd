//! The slow loop both clocks of the constant-bitrate output use to follow a sender whose
//! clock runs a little off ours: a rate (ppb) steered from the long average of a difference,
//! applied to elapsed time with the fraction carried, so what it moves adds up exactly.
//!
//! The average takes 1/2^9 of each new difference (about 20 s at 25 PCRs/s: arrivals jitter
//! by milliseconds, clocks drift by microseconds per second); the rate goes toward the
//! average over a divisor the caller picks (a difference taken out over about five minutes,
//! long against the average's own delay, so the loop is stable), at most 50 ppm (the
//! standard's 30 ppm, with room), moving by at most 0.5 ppm per difference.

/// The average takes 1/2^this of each new difference.
const AVERAGE_SHIFT: u32 = 9;
/// The rate is at most this, ppb.
const MAX_RATE_PPB: i64 = 50_000;
/// The rate changes by at most this per difference, ppb.
const RATE_STEP_PPB: i64 = 500;

/// A rate following the average of a difference.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct RateLoop {
    /// The difference's average, in the caller's unit.
    average: i64,
    rate_ppb: i64,
    /// The part of a unit the rate has moved and not yet given out, in ppb-units.
    carry: i128,
}

impl RateLoop {
    /// Start again: no average, no rate.
    pub(super) fn reset(&mut self) {
        *self = RateLoop::default();
    }

    /// Take a new difference and steer the rate toward the average / `divisor` (a negative
    /// divisor steers against it).
    pub(super) fn steer(&mut self, diff: i64, divisor: i64) {
        self.average += (diff - self.average) >> AVERAGE_SHIFT;
        let want = (self.average / divisor).clamp(-MAX_RATE_PPB, MAX_RATE_PPB);
        self.rate_ppb += (want - self.rate_ppb).clamp(-RATE_STEP_PPB, RATE_STEP_PPB);
    }

    /// What the rate moves over `elapsed` units, in whole units; the fraction is kept.
    pub(super) fn advance(&mut self, elapsed: u64) -> i64 {
        let total = self.total(elapsed);
        self.carry = total % 1_000_000_000;
        (total / 1_000_000_000) as i64
    }

    /// What [`RateLoop::advance`] would give, keeping nothing.
    pub(super) fn peek(&self, elapsed: u64) -> i64 {
        (self.total(elapsed) / 1_000_000_000) as i64
    }

    /// The difference's baseline moved by `step` (the caller moved what it is measured
    /// against): the average follows.
    pub(super) fn rebase(&mut self, step: i64) {
        self.average -= step;
    }

    fn total(&self, elapsed: u64) -> i128 {
        i128::from(self.rate_ppb) * i128::from(elapsed) + self.carry
    }
}
