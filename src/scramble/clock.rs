//! The time crypto periods follow: wall-clock for live inputs, PCR-derived stream time for
//! files and stdin (so a file scrambled faster than real time gets one CW per period of
//! its own playback time).

use std::time::{Duration, Instant};

use super::config::ClockMode;
use crate::ts::packet::pcr_step;
use crate::ts::Pid;

/// A PCR step larger than this (or backwards) is a discontinuity: time does not advance.
const MAX_PCR_STEP: u64 = 10 * 27_000_000;

/// Elapsed time since the run started, by wall clock or by PCR.
#[derive(Debug)]
pub enum Clock {
    /// Wall-clock time.
    Wall { start: Instant },
    /// Stream time accumulated from successive PCRs of one PID.
    Stream {
        pcr_pid: Option<Pid>,
        last_pcr: Option<u64>,
        elapsed_ticks: u64,
        discontinuities: u64,
    },
}

impl Clock {
    /// A clock of `mode` starting now / at the first PCR.
    pub fn new(mode: ClockMode) -> Clock {
        match mode {
            ClockMode::Wall => Clock::Wall {
                start: Instant::now(),
            },
            ClockMode::Stream => Clock::Stream {
                pcr_pid: None,
                last_pcr: None,
                elapsed_ticks: 0,
                discontinuities: 0,
            },
        }
    }

    /// True for a stream-time clock.
    pub fn is_stream(&self) -> bool {
        matches!(self, Clock::Stream { .. })
    }

    /// The PID whose PCR drives a stream clock.
    pub fn pcr_pid(&self) -> Option<Pid> {
        match self {
            Clock::Stream { pcr_pid, .. } => *pcr_pid,
            Clock::Wall { .. } => None,
        }
    }

    /// Set the PCR PID once (the first scrambled program's); later calls are ignored.
    pub fn set_pcr_pid(&mut self, pid: Pid) {
        if let Clock::Stream { pcr_pid, .. } = self {
            if pcr_pid.is_none() {
                *pcr_pid = Some(pid);
            }
        }
    }

    /// Feed a PCR (27 MHz ticks) seen on the PCR PID.
    pub fn on_pcr(&mut self, pcr: u64) {
        if let Clock::Stream {
            last_pcr,
            elapsed_ticks,
            discontinuities,
            ..
        } = self
        {
            if let Some(last) = *last_pcr {
                let step = pcr_step(last, pcr);
                if step <= MAX_PCR_STEP {
                    *elapsed_ticks += step;
                } else {
                    *discontinuities += 1;
                }
            }
            *last_pcr = Some(pcr);
        }
    }

    /// Time since the start.
    pub fn now(&self) -> Duration {
        match self {
            Clock::Wall { start } => start.elapsed(),
            Clock::Stream { elapsed_ticks, .. } => {
                Duration::from_nanos(elapsed_ticks.saturating_mul(1000) / 27)
            }
        }
    }

    /// PCR discontinuities skipped (stream clock).
    pub fn discontinuities(&self) -> u64 {
        match self {
            Clock::Stream {
                discontinuities, ..
            } => *discontinuities,
            Clock::Wall { .. } => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ts::packet::PCR_WRAP;

    #[test]
    fn stream_clock_wraps_and_skips_jumps() {
        let mut c = Clock::new(ClockMode::Stream);
        c.on_pcr(PCR_WRAP - 27_000_000);
        c.on_pcr(27_000_000); // wrapped: 2 s later
        assert_eq!(c.now(), Duration::from_secs(2));
        c.on_pcr(1); // backwards: discontinuity
        assert_eq!(c.now(), Duration::from_secs(2));
        c.on_pcr(27_000_001);
        assert_eq!(c.now(), Duration::from_secs(3));
        assert_eq!(c.discontinuities(), 1);
    }
}
