//! ETSI TR 101 290 priority 1 and 2 indicators, their tallies, and the repetition tracker
//! most of them are measured with.
//!
//! The definitions are TR 101 290 V1.4.1 clause 5.2.1 and 5.2.2 (the "first" and "second
//! priority" tables); the names below are the standard's, so a report can be read against
//! it and against other analyzers.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

/// One indicator of TR 101 290 priority 1 or 2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Indicator {
    /// 1.1: the input lost packet sync (the input's resynchroniser had to hunt again).
    TsSyncLoss,
    /// 1.2: a packet's first byte is not 0x47.
    SyncByteError,
    /// 1.3: no PAT for more than 0.5 s, a table other than 0x00 on PID 0, or PID 0 scrambled.
    PatError,
    /// 1.4: a continuity_counter out of order, a packet lost, or more than one duplicate.
    ContinuityCountError,
    /// 1.5: a PMT PID of the PAT without a PMT for more than 0.5 s, or scrambled.
    PmtError,
    /// 1.6: a PID a PMT refers to absent for longer than the configured period (5 s).
    PidError,
    /// 2.1: transport_error_indicator set.
    TransportError,
    /// 2.2: a PSI/SI section with a wrong CRC_32.
    CrcError,
    /// 2.3a: PCRs of a PID more than 100 ms apart.
    PcrRepetitionError,
    /// 2.3b: consecutive PCRs more than 100 ms apart in value (or backwards) with no
    /// discontinuity_indicator.
    PcrDiscontinuityIndicatorError,
    /// 2.4: a PCR more than ±500 ns off the value its byte position gives (constant
    /// bitrate streams only; see [`super::pcr`]).
    PcrAccuracyError,
    /// 2.5: PTSs of a PID more than 700 ms apart.
    PtsError,
    /// 2.6: scrambled packets but no CAT, or a table other than 0x01 on PID 1.
    CatError,
}

impl Indicator {
    /// Every indicator, in the standard's order.
    pub const ALL: [Indicator; 13] = [
        Indicator::TsSyncLoss,
        Indicator::SyncByteError,
        Indicator::PatError,
        Indicator::ContinuityCountError,
        Indicator::PmtError,
        Indicator::PidError,
        Indicator::TransportError,
        Indicator::CrcError,
        Indicator::PcrRepetitionError,
        Indicator::PcrDiscontinuityIndicatorError,
        Indicator::PcrAccuracyError,
        Indicator::PtsError,
        Indicator::CatError,
    ];

    /// The clause number in TR 101 290 ("1.4", "2.3a").
    pub fn id(self) -> &'static str {
        match self {
            Indicator::TsSyncLoss => "1.1",
            Indicator::SyncByteError => "1.2",
            Indicator::PatError => "1.3",
            Indicator::ContinuityCountError => "1.4",
            Indicator::PmtError => "1.5",
            Indicator::PidError => "1.6",
            Indicator::TransportError => "2.1",
            Indicator::CrcError => "2.2",
            Indicator::PcrRepetitionError => "2.3a",
            Indicator::PcrDiscontinuityIndicatorError => "2.3b",
            Indicator::PcrAccuracyError => "2.4",
            Indicator::PtsError => "2.5",
            Indicator::CatError => "2.6",
        }
    }

    /// The standard's name.
    pub fn name(self) -> &'static str {
        match self {
            Indicator::TsSyncLoss => "TS_sync_loss",
            Indicator::SyncByteError => "Sync_byte_error",
            Indicator::PatError => "PAT_error",
            Indicator::ContinuityCountError => "Continuity_count_error",
            Indicator::PmtError => "PMT_error",
            Indicator::PidError => "PID_error",
            Indicator::TransportError => "Transport_error",
            Indicator::CrcError => "CRC_error",
            Indicator::PcrRepetitionError => "PCR_repetition_error",
            Indicator::PcrDiscontinuityIndicatorError => "PCR_discontinuity_indicator_error",
            Indicator::PcrAccuracyError => "PCR_accuracy_error",
            Indicator::PtsError => "PTS_error",
            Indicator::CatError => "CAT_error",
        }
    }

    /// 1 or 2.
    pub fn priority(self) -> u8 {
        if self <= Indicator::PidError {
            1
        } else {
            2
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Where an error (or anything else worth locating) was seen.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Position {
    /// Packet number from the start of the analysis, from 0.
    pub packet: u64,
    /// Time from the start (stream or wall clock, as the report says), seconds.
    pub time_s: f64,
    /// The PID, for errors that have one.
    pub pid: Option<u16>,
}

/// The count of one indicator.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Tally {
    pub count: u64,
    /// The first occurrence.
    pub first: Option<Position>,
    /// Counts per PID, for the errors that belong to one.
    pub pids: BTreeMap<u16, u64>,
}

impl Tally {
    pub(crate) fn add(&mut self, at: Position, n: u64) {
        if n == 0 {
            return;
        }
        self.count += n;
        self.first.get_or_insert(at);
        if let Some(pid) = at.pid {
            *self.pids.entry(pid).or_default() += n;
        }
    }
}

/// The tallies of every indicator.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Errors {
    tallies: [Tally; 13],
}

impl Errors {
    pub(crate) fn add(&mut self, which: Indicator, at: Position) {
        self.tallies[which.index()].add(at, 1);
    }

    pub(crate) fn add_n(&mut self, which: Indicator, at: Position, n: u64) {
        self.tallies[which.index()].add(at, n);
    }

    /// The tally of one indicator.
    pub fn get(&self, which: Indicator) -> &Tally {
        &self.tallies[which.index()]
    }

    /// The sum over the indicators of one priority.
    pub fn priority_total(&self, priority: u8) -> u64 {
        Indicator::ALL
            .iter()
            .filter(|i| i.priority() == priority)
            .map(|i| self.get(*i).count)
            .sum()
    }
}

/// Something that must come at least every so often (a table, a PCR, a PTS, a PID): the
/// largest gap, and how many times the limit was overrun. An overrun counts once, whether
/// it is noticed when the thing comes back or while it is still missing ([`Self::check`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Repetition {
    last: Option<Duration>,
    overdue: bool,
    /// Occurrences.
    pub seen: u64,
    /// The largest gap between two occurrences (or since the start of watching).
    pub max_gap: Duration,
    /// The sum of the gaps between occurrences, for the mean.
    pub sum_gap: Duration,
    /// Overruns of the limit.
    pub overruns: u64,
}

impl Repetition {
    /// Watching from `now`: the first occurrence is due within the limit from here.
    pub fn from(now: Duration) -> Repetition {
        Repetition {
            last: Some(now),
            ..Repetition::default()
        }
    }

    /// It came at `now`; true when this ends an overrun not yet counted.
    pub fn occur(&mut self, now: Duration, limit: Duration) -> bool {
        let gap = self.last.map(|last| now.saturating_sub(last));
        self.occur_after(now, gap, limit)
    }

    /// It came at `now`, `gap` after the last time by a better measure than the clock's
    /// (a PCR's own step); true when this ends an overrun not yet counted.
    pub fn occur_after(&mut self, now: Duration, gap: Option<Duration>, limit: Duration) -> bool {
        let mut error = false;
        if let Some(gap) = gap {
            self.max_gap = self.max_gap.max(gap);
            if self.seen > 0 {
                self.sum_gap += gap;
            }
            if gap > limit && !self.overdue {
                self.overruns += 1;
                error = true;
            }
        }
        self.seen += 1;
        self.last = Some(now);
        self.overdue = false;
        error
    }

    /// Still missing at `now`? True when this starts an overrun (counted once).
    pub fn check(&mut self, now: Duration, limit: Duration) -> bool {
        match self.last {
            Some(last) if !self.overdue && now.saturating_sub(last) > limit => {
                self.overdue = true;
                self.overruns += 1;
                self.max_gap = self.max_gap.max(now.saturating_sub(last));
                true
            }
            Some(last) if self.overdue => {
                self.max_gap = self.max_gap.max(now.saturating_sub(last));
                false
            }
            _ => false,
        }
    }

    /// The mean gap between occurrences.
    pub fn mean_gap(&self) -> Option<Duration> {
        (self.seen > 1).then(|| self.sum_gap / (self.seen - 1) as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn an_overrun_counts_once_whether_seen_late_or_while_missing() {
        let limit = ms(500);
        let mut r = Repetition::from(ms(0));
        assert!(!r.occur(ms(100), limit));
        assert!(!r.occur(ms(550), limit), "450 ms is within 500 ms");
        // missing: noticed by the check, and not again when it comes back
        assert!(!r.check(ms(1000), limit));
        assert!(r.check(ms(1100), limit));
        assert!(!r.check(ms(1300), limit));
        assert!(!r.occur(ms(1400), limit));
        // a late one noticed only when it comes
        assert!(r.occur(ms(2000), limit));
        assert_eq!(r.overruns, 2);
        assert_eq!(r.max_gap, ms(850));
        assert_eq!(r.seen, 4);
        assert_eq!(r.mean_gap(), Some(ms(1900) / 3));
    }

    #[test]
    fn priorities_and_names_follow_the_standard() {
        let p1: Vec<&str> = Indicator::ALL
            .iter()
            .filter(|i| i.priority() == 1)
            .map(|i| i.id())
            .collect();
        assert_eq!(p1, ["1.1", "1.2", "1.3", "1.4", "1.5", "1.6"]);
        assert_eq!(Indicator::CatError.priority(), 2);
        assert_eq!(Indicator::PcrAccuracyError.name(), "PCR_accuracy_error");
        let mut e = Errors::default();
        let at = Position {
            packet: 3,
            time_s: 0.5,
            pid: Some(0x100),
        };
        e.add(Indicator::ContinuityCountError, at);
        e.add(Indicator::CrcError, at);
        e.add(Indicator::CrcError, at);
        assert_eq!((e.priority_total(1), e.priority_total(2)), (1, 2));
        assert_eq!(e.get(Indicator::CrcError).pids[&0x100], 2);
    }
}
