//! The analyzer's time base: when each packet arrived.
//!
//! Live inputs use the wall clock. Files and pipes are read faster than real time, so
//! their time is stream time: the PCRs of one PID (the first that carries any), with the
//! packets between two PCRs placed at the mean rate so far. That makes intervals (PAT,
//! PMT, PTS, ECM) finer than a PCR interval; in a variable-bitrate mux a packet between
//! two PCRs may be placed up to a few tens of milliseconds off (the rate between those
//! two PCRs is not known until the second arrives), which the 500 ms and 700 ms limits
//! absorb. At each PCR time is exact again (it may step back by that error; the
//! repetition checks take a negative gap as none). PCR intervals themselves are judged
//! on the PCR values (see [`super::pcr`]).
//!
//! A PCR that jumps (backwards, or more than [`MAX_STEP`] ahead) is a fault of the stream
//! that ETR 290 2.3b reports; it must not move every other interval, so across it time
//! advances by what the packet count and the last rate say.

use std::time::{Duration, Instant};

pub use crate::ts::packet::{pcr_step, PCR_WRAP};
/// 27 MHz ticks per millisecond.
pub const TICKS_PER_MS: u64 = 27_000;
/// The largest PCR step taken as time that passed (gaps in PCR are themselves 2.3a errors
/// and still advance time; larger steps are discontinuities).
pub const MAX_STEP: u64 = 1000 * TICKS_PER_MS;

/// Wall-clock or stream time.
#[derive(Debug)]
pub enum TimeBase {
    Wall { start: Instant, now: Duration },
    Stream(StreamTime),
}

impl TimeBase {
    /// Wall-clock time from now.
    pub fn wall() -> TimeBase {
        TimeBase::Wall {
            start: Instant::now(),
            now: Duration::ZERO,
        }
    }

    /// Stream time from the first PCR.
    pub fn stream() -> TimeBase {
        TimeBase::Stream(StreamTime::default())
    }

    /// Read the wall clock (once per batch: the packets of a batch arrived together).
    pub fn tick(&mut self) {
        if let TimeBase::Wall { start, now } = self {
            *now = start.elapsed();
        }
    }

    /// The time of packet `index`.
    pub fn at(&self, index: u64) -> Duration {
        match self {
            TimeBase::Wall { now, .. } => *now,
            TimeBase::Stream(s) => s.at(index),
        }
    }

    /// True for stream time.
    pub fn is_stream(&self) -> bool {
        matches!(self, TimeBase::Stream(_))
    }
}

/// Stream time; see the module docs.
#[derive(Debug, Default)]
pub struct StreamTime {
    /// The PID whose PCRs drive the clock: the first that carries one.
    pub pid: Option<u16>,
    last: Option<(u64, u64)>,
    /// Ticks from the start at the last PCR.
    ticks: u64,
    /// The packet of the first PCR: the mean rate is `ticks` over the packets since.
    first: u64,
    /// PCR steps not taken as time.
    pub discontinuities: u64,
}

impl StreamTime {
    /// A PCR on `pid` in packet `index`.
    pub fn on_pcr(&mut self, pid: u16, index: u64, pcr: u64) {
        if *self.pid.get_or_insert(pid) != pid {
            return;
        }
        if let Some((at, last)) = self.last {
            let packets = index.saturating_sub(at);
            let step = pcr_step(last, pcr);
            let taken = if step > 0 && step <= MAX_STEP {
                step
            } else {
                self.discontinuities += 1;
                self.predicted(packets)
            };
            self.ticks += taken;
        } else {
            self.first = index;
        }
        self.last = Some((index, pcr));
    }

    /// Ticks for `packets` at the mean rate so far.
    fn predicted(&self, packets: u64) -> u64 {
        let (at, _) = self.last.unwrap_or_default();
        let span = at.saturating_sub(self.first);
        if span == 0 {
            return 0;
        }
        (u128::from(packets) * u128::from(self.ticks) / u128::from(span)) as u64
    }

    fn ticks_at(&self, index: u64) -> u64 {
        match self.last {
            Some((at, _)) => self.ticks + self.predicted(index.saturating_sub(at)),
            None => 0,
        }
    }

    /// The time of packet `index` (not before the last PCR's packet).
    pub fn at(&self, index: u64) -> Duration {
        Duration::from_nanos(self.ticks_at(index).saturating_mul(1000) / 27)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = TICKS_PER_MS;

    #[test]
    fn packets_between_pcrs_are_spread_at_the_mean_rate() {
        let mut t = StreamTime::default();
        t.on_pcr(0x100, 0, 5 * MS);
        assert_eq!(t.at(50), Duration::ZERO, "no rate before two PCRs");
        t.on_pcr(0x100, 100, 25 * MS);
        assert_eq!(t.at(100), Duration::from_millis(20));
        assert_eq!(t.at(150), Duration::from_millis(30));
        // another PID's PCR does not drive the clock
        t.on_pcr(0x200, 150, 0);
        assert_eq!(t.at(150), Duration::from_millis(30));
        // 40 ms over the next 100 packets: the mean is 30 ms per 100 packets now
        t.on_pcr(0x100, 200, 65 * MS);
        assert_eq!(t.at(200), Duration::from_millis(60));
        assert_eq!(t.at(300), Duration::from_millis(90));
    }

    #[test]
    fn a_jump_is_bridged_by_the_packet_count_and_a_wrap_is_not_a_jump() {
        let mut t = StreamTime::default();
        t.on_pcr(1, 0, PCR_WRAP - 20 * MS);
        t.on_pcr(1, 100, 0); // wrapped: 20 ms later
        assert_eq!(t.at(100), Duration::from_millis(20));
        t.on_pcr(1, 200, 5000 * MS); // a 5 s jump
        assert_eq!(t.at(200), Duration::from_millis(40));
        assert_eq!(t.discontinuities, 1);
        t.on_pcr(1, 300, 5020 * MS);
        assert_eq!(t.at(300), Duration::from_millis(60));
        t.on_pcr(1, 400, 10 * MS); // backwards
        assert_eq!(t.at(400), Duration::from_millis(80));
        assert_eq!(t.discontinuities, 2);
    }
}
