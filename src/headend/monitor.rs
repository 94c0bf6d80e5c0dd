//! A channel's monitor (`monitor = true`): what the channel puts on air, after scrambling
//! and PSI/ECM/EMM insertion, judged by the analyzer (ETR 290 priority 1 and 2, ECM
//! repetition, crypto period, EMM bitrate) while it runs.
//!
//! The analyzer runs in line on the thread that writes the channel's outputs (the output
//! thread of an own-thread channel, the worker of a data-plane channel), after the write,
//! so a datagram never waits for it. It allocates nothing per packet (only whole PSI and
//! ECM sections, which the reader hands over as owned bytes). What monitors read is
//! a [`MonitorView`] the data path publishes at most once a second into a slot it only
//! `try_lock`s: a reader holding the slot makes the data path skip a publish, never wait.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::analyze::report::{CaReport, Etr290Report, Report};
use crate::analyze::{Analyzer, Settings};
use crate::ts::packet::PACKET_SIZE;

/// How often the data path publishes what its analyzer found.
pub const PUBLISH_EVERY: Duration = Duration::from_secs(1);

/// What a monitor found, as the status API and `/metrics` show it.
#[derive(Debug, Clone, Serialize)]
pub struct MonitorView {
    /// "stream" (PCR) or "wall" clock.
    pub time_base: &'static str,
    /// Time analysed since the channel's run started, s.
    pub duration_s: f64,
    /// Packets analysed.
    pub packets: u64,
    /// Counts since the run started.
    pub etr290: Etr290Report,
    /// ECM intervals and crypto periods since the run started; the EMM bitrate over the
    /// last publish interval (about a second), so an EMM outage shows at once.
    pub ca: CaReport,
}

/// The slot a monitor publishes into, shared with the status API.
#[derive(Debug, Default)]
pub struct MonitorShared {
    latest: Mutex<Option<MonitorView>>,
}

impl MonitorShared {
    /// The last view published (None: none yet).
    pub fn latest(&self) -> Option<MonitorView> {
        self.latest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// The analyzer of one channel's output and its publishing state.
pub struct Monitor {
    analyzer: Analyzer,
    shared: Arc<MonitorShared>,
    last_publish: Instant,
    /// Packets of each EMM PID and the analyzer's time at the last publish.
    emm_before: Vec<(u16, u64)>,
    emm_before_at: Duration,
}

impl std::fmt::Debug for Monitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Monitor")
            .field("packets", &self.analyzer.packets())
            .finish_non_exhaustive()
    }
}

impl Monitor {
    /// A monitor on the wall clock (`live`: a live input, or a paced pipe) or on the
    /// stream's PCRs (a file read at disk speed).
    pub fn new(live: bool) -> Monitor {
        Monitor {
            analyzer: Analyzer::new(Settings {
                live,
                ..Settings::default()
            }),
            shared: Arc::default(),
            last_publish: Instant::now(),
            emm_before: Vec::new(),
            emm_before_at: Duration::ZERO,
        }
    }

    /// The slot monitors read.
    pub fn shared(&self) -> Arc<MonitorShared> {
        Arc::clone(&self.shared)
    }

    /// Analyse packets that went on air (whole packets), and publish when due.
    pub fn observe(&mut self, bytes: &[u8]) {
        let (packets, _) = bytes.as_chunks::<PACKET_SIZE>();
        self.analyzer.process(packets, None);
        if self.last_publish.elapsed() < PUBLISH_EVERY {
            return;
        }
        // a reader holds the slot: try again with the next batch rather than wait
        let shared = Arc::clone(&self.shared);
        let published = match shared.latest.try_lock() {
            Ok(mut slot) => {
                *slot = Some(self.view());
                true
            }
            Err(_) => false,
        };
        if published {
            self.last_publish = Instant::now();
        }
    }

    /// The end of the run: count what is still missing, publish (waiting for the slot:
    /// the data path is done) and give the whole report.
    pub fn finish(mut self) -> Report {
        self.analyzer.finish();
        let view = self.view();
        *self.shared.latest.lock().unwrap_or_else(|e| e.into_inner()) = Some(view);
        self.analyzer.report()
    }

    fn view(&mut self) -> MonitorView {
        let mut r = self.analyzer.report();
        let now = self.analyzer.now();
        let secs = now.saturating_sub(self.emm_before_at).as_secs_f64();
        let current: Vec<(u16, u64)> = r.ca.emm.iter().map(|e| (e.pid, e.packets)).collect();
        for e in &mut r.ca.emm {
            let before = self
                .emm_before
                .iter()
                .find(|b| b.0 == e.pid)
                .map_or(0, |b| b.1);
            e.bitrate_bps = window_bitrate(e.packets.saturating_sub(before), secs);
        }
        self.emm_before = current;
        self.emm_before_at = now;
        MonitorView {
            time_base: r.time_base,
            duration_s: r.duration_s,
            packets: r.packets,
            etr290: r.etr290,
            ca: r.ca,
        }
    }
}

/// The bitrate of `packets` TS packets in `secs` seconds (None for no time).
fn window_bitrate(packets: u64, secs: f64) -> Option<u64> {
    (secs > 0.0).then(|| (packets as f64 * (PACKET_SIZE * 8) as f64 / secs).round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyze::Indicator;

    #[test]
    fn window_bitrate_counts_whole_packets_per_second() {
        assert_eq!(window_bitrate(0, 0.0), None);
        assert_eq!(window_bitrate(100, 1.0), Some(150_400));
        assert_eq!(window_bitrate(33, 0.5), Some(99_264));
    }

    /// A CC jump in the output is counted under its name, and the view is in the slot
    /// after a finish.
    #[test]
    fn errors_in_the_output_reach_the_published_view() {
        let mut m = Monitor::new(true);
        let shared = m.shared();
        assert!(shared.latest().is_none());
        let mut bytes = Vec::new();
        for cc in [0u8, 1, 2, 5, 6] {
            let mut p = [0xFFu8; PACKET_SIZE];
            // PID 0x100, payload only
            p[..4].copy_from_slice(&[0x47, 0x01, 0x00, 0x10 | cc]);
            bytes.extend_from_slice(&p);
        }
        m.observe(&bytes);
        let r = m.finish();
        let v = shared.latest().unwrap();
        assert_eq!(v.packets, 5);
        assert_eq!(r.packets, 5);
        let cc = v
            .etr290
            .indicators
            .iter()
            .find(|i| i.name == Indicator::ContinuityCountError.name())
            .unwrap();
        assert_eq!(cc.count, 1);
        assert_eq!(v.etr290.priority1_errors, 1);
    }
}
