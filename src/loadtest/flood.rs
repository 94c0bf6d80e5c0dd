//! The EMMG flood of `loadtest headend` (`--fault emmg-flood@AT+FOR[:RATE]`), and the
//! head-end's counters of its `[emmg]` port.
//!
//! The flooder is castmux's own EMMG client ([`crate::simulcrypt::run_emmg`]) on a thread
//! of its own: it connects to the head-end's shared EMMG<->MUX port, sets up its channel
//! and stream, asks for [`FLOOD_REQUEST_KBPS`], then sends at [`EmmgPace::Fixed`] RATE, or
//! [`EmmgPace::Unpaced`], far above what it was given. The head-end must police it at the
//! port: the excess dropped and counted, the cloning channels carrying no more than the
//! allocation, their scrambling untouched.
//!
//! The port's counters are read from the head-end's `/metrics` (the `[http]` table the
//! run adds when it floods): plain HTTP/1.0 on loopback, the Prometheus text parsed for the
//! few `castmux_emmg_port_*` samples the report needs.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use serde::Serialize;

use super::headend::LoadError;
use crate::cas::emmg::section_air_bytes;
use crate::scramble::emm::{EmmData, EmmSource};
use crate::simulcrypt::{run_emmg, EmmgConfig, EmmgPace, EmmgStats};
use crate::ts::psi_write::write_private_section;

/// The bandwidth the flooder asks for, kbit/s: a modest EMM stream, so the flood is far
/// above it.
pub const FLOOD_REQUEST_KBPS: u16 = 64;
/// Payload bytes of each flood EMM: with the short section header (3 bytes) and the
/// pointer_field, one TS packet on air, so what the port polices and what the checker
/// counts on air are the same bytes.
const EMM_PAYLOAD: usize = 180;

/// The bytes one flood EMM takes on air.
pub fn emm_air_bytes() -> u64 {
    section_air_bytes(EMM_PAYLOAD + 3)
}

/// EMM sections that never run out, numbered (the number is all the content: nobody
/// processes them, the checker only counts the EMM PID's bytes).
#[derive(Debug, Default)]
struct Endless {
    n: u64,
    payload: Vec<u8>,
}

impl EmmSource for Endless {
    fn poll(&mut self, _now: Duration, out: &mut Vec<u8>) -> Option<EmmData> {
        self.payload.clear();
        self.payload.extend_from_slice(&self.n.to_be_bytes());
        self.payload.resize(EMM_PAYLOAD, 0xE3);
        self.n += 1;
        // a short section of 183 bytes always fits
        write_private_section(out, 0x82, &self.payload).ok()?;
        Some(EmmData::Sections)
    }
}

/// A flooding EMMG, running until [`Flood::stop`].
pub struct Flood {
    stats: Arc<EmmgStats>,
    quit: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Flood {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flood")
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// What the flooder did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct FlooderCounts {
    /// Channel and stream set up (1 unless the link failed and came back).
    pub setups: u64,
    /// Links lost or refused.
    pub link_failures: u64,
    /// Bandwidth the head-end allocated, kbit/s.
    pub allocated_kbps: u64,
    /// data_provision messages sent.
    pub messages_sent: u64,
    /// EMMs sent (one datagram each).
    pub emms_sent: u64,
    /// stream_error/channel_error received (the head-end says "exceeded bandwidth" at most
    /// once a second).
    pub errors_received: u64,
}

impl Flood {
    /// Connect to the `[emmg]` port at `port` as data_channel_id `channel_id` and flood at
    /// `pace`.
    pub fn start(
        port: u16,
        channel_id: u16,
        client_id: u32,
        pace: EmmgPace,
    ) -> Result<Flood, LoadError> {
        let mut cfg = EmmgConfig::new(format!("127.0.0.1:{port}"), client_id);
        cfg.channel_id = channel_id;
        cfg.bandwidth_kbps = FLOOD_REQUEST_KBPS;
        cfg.pace = pace;
        // a flood that loses its link comes back at once, not after seconds of backoff
        cfg.backoff_min = Duration::from_millis(100);
        let stats = Arc::new(EmmgStats::default());
        let (quit, quit_rx) = tokio::sync::oneshot::channel::<()>();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| LoadError::Process(format!("the EMMG flood's runtime: {e}")))?;
        let st = stats.clone();
        let thread = std::thread::Builder::new()
            .name("lt-emmg-flood".into())
            .spawn(move || {
                let mut source = Endless::default();
                rt.block_on(run_emmg(cfg, &mut source, st, async move {
                    let _ = quit_rx.await;
                }));
            })
            .map_err(|e| LoadError::Process(format!("the EMMG flood's thread: {e}")))?;
        Ok(Flood {
            stats,
            quit: Some(quit),
            thread: Some(thread),
        })
    }

    /// The counters now.
    pub fn counts(&self) -> FlooderCounts {
        let s = &self.stats;
        FlooderCounts {
            setups: s.setups.load(Relaxed),
            link_failures: s.link_failures.load(Relaxed),
            allocated_kbps: s.allocated_kbps.load(Relaxed),
            messages_sent: s.messages_sent.load(Relaxed),
            emms_sent: s.datagrams_sent.load(Relaxed),
            errors_received: s.errors_received.load(Relaxed),
        }
    }

    /// Stop flooding (the link closes); the final counters.
    pub fn stop(mut self) -> FlooderCounts {
        self.halt();
        self.counts()
    }

    fn halt(&mut self) {
        if let Some(q) = self.quit.take() {
            let _ = q.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.halt();
    }
}

/// The head-end's `[emmg]` port counters, as `/metrics` shows them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct PortCounters {
    /// data_provision messages taken.
    pub data_provisions: f64,
    /// EMMs accepted and queued for the channels.
    pub emms: f64,
    /// Datagrams dropped over the stream's allocated bandwidth.
    pub dropped_over_bandwidth: f64,
    /// Copies dropped because a channel's queue was full.
    pub dropped_queue_full: f64,
    /// Datagrams rejected (not EMMs, unknown stream).
    pub rejected: f64,
}

impl PortCounters {
    /// The port's samples in a Prometheus text page; None when the page has none (no
    /// `[emmg]` port, or not castmux).
    pub fn parse(text: &str) -> Option<PortCounters> {
        let value = |series: &str| {
            text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
                let (name, v) = l.rsplit_once(' ')?;
                (name == series).then(|| v.parse::<f64>().ok()).flatten()
            })
        };
        Some(PortCounters {
            data_provisions: value("castmux_emmg_port_data_provisions_total")?,
            emms: value("castmux_emmg_port_emms_total")?,
            dropped_over_bandwidth: value(
                "castmux_emmg_port_dropped_total{reason=\"over_bandwidth\"}",
            )?,
            dropped_queue_full: value("castmux_emmg_port_dropped_total{reason=\"queue_full\"}")?,
            rejected: value("castmux_emmg_port_rejected_total")?,
        })
    }

    /// What happened between `before` and `self`.
    pub fn since(&self, before: &PortCounters) -> PortCounters {
        PortCounters {
            data_provisions: self.data_provisions - before.data_provisions,
            emms: self.emms - before.emms,
            dropped_over_bandwidth: self.dropped_over_bandwidth - before.dropped_over_bandwidth,
            dropped_queue_full: self.dropped_queue_full - before.dropped_queue_full,
            rejected: self.rejected - before.rejected,
        }
    }

    /// Read them from the head-end's `/metrics` on loopback `port`.
    pub fn scrape(port: u16) -> Result<PortCounters, String> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let timeout = Duration::from_secs(2);
        let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        // HTTP/1.0: the server closes after the answer, so the answer is all there is
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .map_err(|e| e.to_string())?;
        let mut answer = String::new();
        // bounded: the page of a few channels is a few kB; a head-end of 4096 is larger
        s.take(64 << 20)
            .read_to_string(&mut answer)
            .map_err(|e| e.to_string())?;
        let (head, body) = answer
            .split_once("\r\n\r\n")
            .ok_or("no HTTP answer from /metrics")?;
        if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
            return Err(format!(
                "/metrics answered {}",
                head.lines().next().unwrap_or("")
            ));
        }
        PortCounters::parse(body).ok_or_else(|| "no castmux_emmg_port samples in /metrics".into())
    }
}

/// What an EMMG flood did, as the report shows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct FloodReport {
    /// Bandwidth the flooder asked for, kbit/s.
    pub requested_kbps: u16,
    /// Bit/s it was told to send; None: unpaced.
    pub rate_bps: Option<u64>,
    /// Its counters when it stopped.
    pub flooder: FlooderCounts,
    /// EMM kbit/s it offered: the on-air size of what it sent, over the flood's length.
    pub offered_kbps: f64,
    /// The head-end's `[emmg]` port counters over the flood and the second after it; None
    /// when `/metrics` could not be read (`castmux_error` says why).
    pub castmux: Option<PortCounters>,
    /// Why `castmux` is None.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub castmux_error: Option<String>,
    /// Seconds over which the EMMs on air were measured: from a second after the flood's
    /// setup (the port's policer lets a burst of up to a second through first) to its end.
    pub window_s: f64,
    /// EMM kbit/s on air over that window, on the channel that carried the most; None when
    /// the window was empty (the flood never set up, or too late).
    pub on_air_kbps_max: Option<f64>,
    /// The same, the mean over channels.
    pub on_air_kbps_mean: Option<f64>,
}

impl FloodReport {
    /// The worst channel's EMM bitrate on air over the allocation (NaN when either is
    /// unknown: a flood that never set up proves nothing).
    pub fn over_allocation(&self) -> f64 {
        match (self.on_air_kbps_max, self.flooder.allocated_kbps) {
            (Some(on_air), kbps) if kbps > 0 => on_air / kbps as f64,
            _ => f64::NAN,
        }
    }
}

/// EMM kbit/s on air per channel between two snapshots of each channel's EMM bytes taken
/// `secs` apart: (the largest, the mean); None for an empty window.
pub fn on_air_kbps(start: &[u64], end: &[u64], secs: f64) -> Option<(f64, f64)> {
    if secs <= 0.0 || start.is_empty() || start.len() != end.len() {
        return None;
    }
    let kbps = |(a, b): (&u64, &u64)| b.saturating_sub(*a) as f64 * 8.0 / secs / 1000.0;
    let rates: Vec<f64> = start.iter().zip(end).map(kbps).collect();
    let max = rates.iter().copied().fold(0.0, f64::max);
    Some((max, rates.iter().sum::<f64>() / rates.len() as f64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flood_emms_are_one_packet_emm_sections() {
        let mut src = Endless::default();
        let mut out = Vec::new();
        assert_eq!(src.poll(Duration::ZERO, &mut out), Some(EmmData::Sections));
        let first = out.clone();
        out.clear();
        src.poll(Duration::ZERO, &mut out);
        assert_eq!(out.len(), EMM_PAYLOAD + 3);
        assert_eq!(
            crate::ts::section::check_sections(&out, 0x82..=0x8F).ok(),
            Some(1)
        );
        assert_ne!(first, out, "numbered");
        assert_eq!(emm_air_bytes(), 188);
    }

    #[test]
    fn on_air_rate_is_per_channel_and_judged_against_the_allocation() {
        // 2 s; channel 1 carried 16000 bytes more (64 kbit/s), channel 0 8000 (32 kbit/s)
        let (max, mean) = on_air_kbps(&[100, 5000], &[8100, 21000], 2.0).unwrap();
        assert_eq!((max, mean), (64.0, 48.0));
        assert_eq!(on_air_kbps(&[1], &[2], 0.0), None);
        assert_eq!(on_air_kbps(&[], &[], 1.0), None);
        let mut r = FloodReport {
            on_air_kbps_max: Some(max),
            ..FloodReport::default()
        };
        // never allocated: nothing to judge against
        assert!(r.over_allocation().is_nan());
        r.flooder.allocated_kbps = 64;
        assert_eq!(r.over_allocation(), 1.0);
        r.on_air_kbps_max = None;
        assert!(r.over_allocation().is_nan());
    }

    #[test]
    fn port_counters_are_read_from_the_metrics_page() {
        let page = "# HELP castmux_emmg_port_data_provisions_total x\n\
            # TYPE castmux_emmg_port_data_provisions_total counter\n\
            castmux_emmg_port_data_provisions_total 12\n\
            castmux_emmg_port_emms_total 40\n\
            castmux_emmg_port_dropped_total{reason=\"over_bandwidth\"} 900\n\
            castmux_emmg_port_dropped_total{reason=\"queue_full\"} 3\n\
            castmux_emmg_port_dropped_total{reason=\"no_subscriber\"} 5\n\
            castmux_emmg_port_rejected_total 0\n";
        let c = PortCounters::parse(page).unwrap();
        assert_eq!(
            c,
            PortCounters {
                data_provisions: 12.0,
                emms: 40.0,
                dropped_over_bandwidth: 900.0,
                dropped_queue_full: 3.0,
                rejected: 0.0,
            }
        );
        let before = PortCounters {
            dropped_over_bandwidth: 100.0,
            ..c
        };
        assert_eq!(c.since(&before).dropped_over_bandwidth, 800.0);
        assert_eq!(c.since(&before).emms, 0.0);
        // a head-end without the port
        assert_eq!(
            PortCounters::parse("castmux_channel_up{channel=\"a\"} 1\n"),
            None
        );
    }
}
