//! The checks CA monitors make beside ETR 290: ECM repetition per ECM PID, the crypto
//! period per scrambled PID (time between changes of the scrambling_control parity) and
//! the bitrate of each EMM PID.

use std::time::Duration;

use serde::Serialize;

use super::etr290::{Position, Repetition};

/// How often ECMs must repeat unless told otherwise: the figure monitors alarm on.
pub const DEFAULT_ECM_LIMIT: Duration = Duration::from_millis(500);

/// Key changes on one scrambled PID.
#[derive(Debug, Clone, Default)]
pub struct CwPeriods {
    /// The parity in use (2 even, 3 odd).
    parity: Option<u8>,
    last_change: Option<Duration>,
    /// Parity changes seen.
    pub changes: u64,
    /// Whole periods (between two changes): shortest, longest, sum.
    pub min: Option<Duration>,
    pub max: Duration,
    pub sum: Duration,
    pub first_change: Option<Position>,
}

impl CwPeriods {
    /// A scrambled packet with scrambling_control `tsc` (2 or 3) at `now`.
    pub fn on_scrambled(&mut self, tsc: u8, now: Duration, at: Position) {
        if self.parity == Some(tsc) {
            return;
        }
        if self.parity.is_some() {
            self.changes += 1;
            self.first_change.get_or_insert(at);
            if let Some(last) = self.last_change {
                let period = now.saturating_sub(last);
                self.min = Some(self.min.map_or(period, |m| m.min(period)));
                self.max = self.max.max(period);
                self.sum += period;
            }
            self.last_change = Some(now);
        }
        self.parity = Some(tsc);
    }

    /// Whole periods measured.
    pub fn periods(&self) -> u64 {
        self.changes.saturating_sub(1)
    }
}

/// ECM repetition of one PID, as reported.
#[derive(Debug, Clone, Serialize)]
pub struct EcmReport {
    pub pid: u16,
    pub ca_system_id: String,
    pub sections: u64,
    pub max_interval_ms: f64,
    pub mean_interval_ms: Option<f64>,
    /// Gaps over the limit.
    pub over_limit: u64,
    pub limit_ms: f64,
}

impl EcmReport {
    pub(crate) fn of(pid: u16, caid: u16, r: &Repetition, limit: Duration) -> EcmReport {
        EcmReport {
            pid,
            ca_system_id: format!("{caid:#06x}"),
            sections: r.seen,
            max_interval_ms: ms(r.max_gap),
            mean_interval_ms: r.mean_gap().map(ms),
            over_limit: r.overruns,
            limit_ms: ms(limit),
        }
    }
}

/// Crypto periods of one scrambled PID, as reported.
#[derive(Debug, Clone, Serialize)]
pub struct CwReport {
    pub pid: u16,
    /// Parity changes (key switches) seen.
    pub changes: u64,
    /// Whole periods between two changes (the first and last partial ones are not).
    pub periods: u64,
    pub min_period_s: Option<f64>,
    pub max_period_s: Option<f64>,
    pub mean_period_s: Option<f64>,
}

impl CwReport {
    pub(crate) fn of(pid: u16, c: &CwPeriods) -> CwReport {
        let n = c.periods();
        CwReport {
            pid,
            changes: c.changes,
            periods: n,
            min_period_s: c.min.map(|d| d.as_secs_f64()),
            max_period_s: (n > 0).then_some(c.max.as_secs_f64()),
            mean_period_s: (n > 0).then(|| c.sum.as_secs_f64() / n as f64),
        }
    }
}

/// One EMM PID, as reported.
#[derive(Debug, Clone, Serialize)]
pub struct EmmReport {
    pub pid: u16,
    pub ca_system_id: String,
    pub packets: u64,
    pub bitrate_bps: Option<u64>,
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_are_measured_between_parity_changes_only() {
        let at = Position {
            packet: 0,
            time_s: 0.0,
            pid: Some(0x100),
        };
        let mut c = CwPeriods::default();
        let s = Duration::from_secs;
        // even from 0 (partial), odd from 1 s, even from 3 s, odd from 4 s, then the end
        for (t, tsc) in [(0, 2), (1, 3), (2, 3), (3, 2), (4, 3), (5, 3)] {
            c.on_scrambled(tsc, s(t), at);
        }
        assert_eq!((c.changes, c.periods()), (3, 2));
        let r = CwReport::of(0x100, &c);
        assert_eq!(r.min_period_s, Some(1.0));
        assert_eq!(r.max_period_s, Some(2.0));
        assert_eq!(r.mean_period_s, Some(1.5));
    }
}
