//! `castmux loadtest ecmg`: load any SimulCrypt ECMG (castmux's own, TSDuck's `tsecmg`, a
//! vendor's) the way a head-end does, and measure every answer.
//!
//! The knobs are TSDuck `tstestecmg`'s: `channels` ECM channels, each its own TCP connection
//! (TS 103 197 §5.1), `streams_per_channel` ECM streams on each, a CW_provision per stream
//! every crypto period with fresh random CWs (`cw_size` bytes, as many as the ECMG's
//! CW_per_msg asks), protocol version 2 or 3, a Super_CAS_id, access criteria.
//!
//! Unlike `tstestecmg`, which asks for the next ECM once the last one came, every stream here
//! is on a clock, as a scrambler is: its CW_provisions go out every crypto period whether the
//! ECMG kept up or not, and the streams of the run are spread evenly over the period (a
//! head-end's channels did not all start in the same millisecond). An ECMG that falls behind
//! shows it as late or unanswered requests, not as a slower test.
//!
//! Measured per statistics interval and in total: requests (CW_provisions sent), ECMs
//! (ECM_responses whose datagram is whole sections, or TS packets carrying them), the
//! response time of each (p50/p99/max), late answers (slower than the max_comp_time the ECMG
//! announced in its channel_status), and every error by kind:
//! - `error_status`: each channel_error / stream_error the ECMG sent, by the spec's name;
//! - `unanswered`: requests with no answer within `answer_timeout`, or lost with their link;
//! - `bad_ecms`: ECM_responses whose datagram is not usable;
//! - `bad_messages`: messages that do not decode (the link goes on while framing holds);
//! - `unexpected`: well-formed messages that answer nothing asked (an ECM for a CP_number or
//!   stream not waiting, another channel's id);
//! - `connection_errors`: links lost, refused or timed out; each channel reconnects with
//!   backoff and sets its streams up again, and the run goes on.
//!
//! Everything is bounded: at most [`PENDING_MAX`] requests waiting per stream, one message
//! buffer per link, the frame reader's length limit; nothing the ECMG sends can panic the
//! run. Runs on tokio, one task per channel.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::report::{
    micros_histogram, ms_cell, record_micros, Criterion, Latency, Plot, Table, Verdict,
};
use crate::scramble::Cw;
use crate::simulcrypt::conn::{connect, FrameReader, FrameWriter, LinkError};
use crate::simulcrypt::datagram::{check_sections, packets_to_sections};
use crate::simulcrypt::types::{error_status_name, EcmgErrorStatus};
use crate::simulcrypt::{ChannelStatus, CpCw, CwProvision, EcmgMessage};

/// Requests waiting for an answer, per stream; one more counts the oldest as unanswered.
pub const PENDING_MAX: usize = 16;
/// Longest wait between two reconnection attempts of a channel.
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// First wait before reconnecting.
const BACKOFF_MIN: Duration = Duration::from_millis(200);
/// How often the live counters are handed to the observer.
const TICK: Duration = Duration::from_millis(250);

/// Settings of a run. [`EcmgLoadConfig::new`] fills the documented defaults.
#[derive(Debug, Clone)]
pub struct EcmgLoadConfig {
    /// The ECMG, `host:port`.
    pub addr: String,
    /// ECM channels, one TCP connection each. Default 10 (`tstestecmg`'s).
    pub channels: u16,
    /// ECM streams per channel. Default 10.
    pub streams_per_channel: u16,
    /// Crypto period: one CW_provision per stream per period (nominal_CP_duration and
    /// CP_duration say it too). Default 10 s.
    pub crypto_period: Duration,
    /// Bytes per CW: 8 (DVB-CSA2) or 16 (AES: DVB-CISSA, ATIS-IDSA). Default 8.
    pub cw_size: usize,
    /// ECMG<->SCS protocol version, 2 or 3. Default 2 (`tstestecmg`'s; every ECMG speaks it).
    pub version: u8,
    /// Super_CAS_id of every channel.
    pub super_cas_id: u32,
    /// access_criteria sent with every CW_provision (none when empty). Default empty.
    pub access_criteria: Vec<u8>,
    /// ECM_channel_id of the first channel; the others follow. Default 1.
    pub first_channel_id: u16,
    /// ECM_stream_id of the first stream of each channel; the others follow. Default 1.
    pub first_stream_id: u16,
    /// ECM_id of the first stream of the run; every stream of the run has its own. Default 1.
    pub first_ecm_id: u16,
    /// How long requests are sent; None: until the stop future completes. Default 60 s.
    pub duration: Option<Duration>,
    /// Length of a statistics interval. Default 10 s.
    pub stats_interval: Duration,
    /// Time allowed for connecting and for each setup answer. Default 5 s.
    pub setup_timeout: Duration,
    /// A request not answered this long is counted unanswered. Default: the crypto period
    /// (an ECM later than its period is of no use), at least 1 s.
    pub answer_timeout: Duration,
}

impl EcmgLoadConfig {
    /// A run against `addr` with `super_cas_id` and the defaults above.
    pub fn new(addr: impl Into<String>, super_cas_id: u32) -> EcmgLoadConfig {
        EcmgLoadConfig {
            addr: addr.into(),
            channels: 10,
            streams_per_channel: 10,
            crypto_period: Duration::from_secs(10),
            cw_size: 8,
            version: 2,
            super_cas_id,
            access_criteria: Vec::new(),
            first_channel_id: 1,
            first_stream_id: 1,
            first_ecm_id: 1,
            duration: Some(Duration::from_secs(60)),
            stats_interval: Duration::from_secs(10),
            setup_timeout: Duration::from_secs(5),
            answer_timeout: Duration::from_secs(10),
        }
    }

    /// Check the settings together (each id range fits in 16 bits, sizes allowed).
    pub fn check(&self) -> Result<(), LoadError> {
        let bad = |s: String| Err(LoadError::Config(s));
        if self.channels == 0 || self.streams_per_channel == 0 {
            return bad("at least one channel and one stream per channel".to_owned());
        }
        if u32::from(self.first_channel_id) + u32::from(self.channels) > 0x1_0000 {
            return bad("the channel ids run past 65535 (--channels, --first-channel-id)".into());
        }
        if u32::from(self.first_stream_id) + u32::from(self.streams_per_channel) > 0x1_0000 {
            return bad(
                "the stream ids run past 65535 (--streams-per-channel, --first-stream-id)".into(),
            );
        }
        let streams = u32::from(self.channels) * u32::from(self.streams_per_channel);
        if u32::from(self.first_ecm_id) + streams > 0x1_0000 {
            return bad("the ECM ids of the run's streams run past 65535 (--first-ecm-id)".into());
        }
        if !matches!(self.cw_size, 8 | 16) {
            return bad(format!("a CW is 8 or 16 bytes, not {}", self.cw_size));
        }
        if !matches!(self.version, 2 | 3) {
            return bad(format!(
                "the ECMG<->SCS version is 2 or 3, not {}",
                self.version
            ));
        }
        if self.crypto_period < Duration::from_millis(100) {
            return bad("the crypto period is at least 100ms".to_owned());
        }
        if self.stats_interval < Duration::from_millis(100) {
            return bad("the statistics interval is at least 100ms".to_owned());
        }
        if self.access_criteria.len() > crate::simulcrypt::ecmg_messages::MAX_DATAGRAM {
            return bad("the access criteria are too long".to_owned());
        }
        Ok(())
    }

    /// CP_duration / nominal_CP_duration, in 100 ms units.
    fn cp_units(&self) -> u16 {
        (self.crypto_period.as_millis() / 100).clamp(1, u128::from(u16::MAX)) as u16
    }

    fn total_streams(&self) -> usize {
        usize::from(self.channels) * usize::from(self.streams_per_channel)
    }
}

/// Why a run could not be done.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Settings that do not go together.
    #[error("{0}")]
    Config(String),
    /// The tokio runtime could not be started.
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
    /// No channel could be set up at the start: nothing to measure.
    #[error("no channel set up with the ECMG at {addr} within {waited:?}: {detail}")]
    Unreachable {
        /// The ECMG.
        addr: String,
        /// How long it was given.
        waited: Duration,
        /// What the last attempt got.
        detail: String,
    },
}

/// What the ECMG announced in its channel_status (the first channel's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Announced {
    /// max_comp_time, ms: an answer slower than this is late.
    pub max_comp_time_ms: u16,
    /// min_CP_duration, ms.
    pub min_cp_duration_ms: u32,
    /// max_streams per channel.
    pub max_streams: u16,
    /// CW_per_msg.
    pub cw_per_msg: u8,
    /// lead_CW.
    pub lead_cw: u8,
    /// ECM_rep_period, ms.
    pub ecm_rep_period_ms: u16,
    /// delay_start, ms.
    pub delay_start_ms: i16,
    /// true: ECM_datagram is TS packets; false: sections.
    pub section_tspkt_flag: bool,
}

impl From<&ChannelStatus> for Announced {
    fn from(s: &ChannelStatus) -> Announced {
        Announced {
            max_comp_time_ms: s.max_comp_time,
            min_cp_duration_ms: u32::from(s.min_cp_duration) * 100,
            max_streams: s.max_streams,
            cw_per_msg: s.cw_per_msg,
            lead_cw: s.lead_cw,
            ecm_rep_period_ms: s.ecm_rep_period,
            delay_start_ms: s.delay_start,
            section_tspkt_flag: s.section_tspkt_flag,
        }
    }
}

/// The counts of one statistics interval, or of the whole run.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct IntervalStats {
    /// Start of the window, seconds since the run started.
    pub start_s: f64,
    /// End of the window.
    pub end_s: f64,
    /// CW_provisions sent.
    pub requests: u64,
    /// Usable ECM_responses received.
    pub ecms: u64,
    /// ECM_responses slower than the announced max_comp_time (also in `ecms`).
    pub late: u64,
    /// Every error below, added up: what `--max-errors` bounds.
    pub errors: u64,
    /// channel_error / stream_error received, by kind and error_status name.
    pub error_status: BTreeMap<String, u64>,
    /// Requests with no answer in time, or lost with their link.
    pub unanswered: u64,
    /// ECM_responses whose datagram is not whole sections (or TS packets carrying them).
    pub bad_ecms: u64,
    /// Messages that do not decode.
    pub bad_messages: u64,
    /// Messages that answer nothing asked.
    pub unexpected: u64,
    /// Links lost, refused or timed out.
    pub connection_errors: u64,
    /// Response time of the ECMs (CW_provision sent to ECM_response read).
    pub response: Latency,
    /// Channels set up at the end of the window (for the last window and the total: when
    /// the run stopped sending, before closing them).
    pub channels_up: usize,
    /// Streams set up then.
    pub streams_up: usize,
}

impl IntervalStats {
    /// One line for the interval: counts, then response times.
    pub fn line(&self) -> String {
        format!(
            "{:>7.1}s  requests {}  ecms {}  errors {}  late {}  response p50 {} p99 {} max {}  \
             channels {} streams {}",
            self.end_s,
            self.requests,
            self.ecms,
            self.errors,
            self.late,
            ms_cell(self.response.p50_ms),
            ms_cell(self.response.p99_ms),
            ms_cell(self.response.max_ms),
            self.channels_up,
            self.streams_up
        )
    }
}

/// Counts being gathered (a window), with the histogram behind `response`.
#[derive(Debug)]
struct Counts {
    stats: IntervalStats,
    hist: hdrhistogram::Histogram<u64>,
}

impl Counts {
    fn new() -> Counts {
        Counts {
            stats: IntervalStats::default(),
            hist: micros_histogram(),
        }
    }

    fn error(&mut self) {
        self.stats.errors += 1;
    }

    /// Add a closed window to these (the run's total).
    fn merge(&mut self, w: &Counts) {
        let (t, s) = (&mut self.stats, &w.stats);
        t.requests += s.requests;
        t.ecms += s.ecms;
        t.late += s.late;
        t.errors += s.errors;
        t.unanswered += s.unanswered;
        t.bad_ecms += s.bad_ecms;
        t.bad_messages += s.bad_messages;
        t.unexpected += s.unexpected;
        t.connection_errors += s.connection_errors;
        for (k, v) in &s.error_status {
            *t.error_status.entry(k.clone()).or_default() += v;
        }
        // both histograms have the same bounds: adding cannot fail
        let _ = self.hist.add(&w.hist);
    }
}

/// The live counters of a run, shared by its tasks.
struct Recorder {
    window: Mutex<Counts>,
    channels_up: AtomicUsize,
    streams_up: AtomicUsize,
    /// Whether any channel was ever set up.
    ever_up: AtomicBool,
    /// Link attempts that failed before a channel was set up (for the early stop).
    failures: AtomicU64,
    last_failure: Mutex<Option<String>>,
    announced: Mutex<Option<Announced>>,
}

impl Recorder {
    fn with(&self, f: impl FnOnce(&mut Counts)) {
        f(&mut lock(&self.window));
    }

    fn unanswered(&self, n: u64) {
        if n > 0 {
            self.with(|c| {
                c.stats.unanswered += n;
                c.stats.errors += n;
            });
        }
    }

    fn error_status(&self, kind: &str, status: &[u16]) {
        self.with(|c| {
            // a message with no error_status still says something went wrong
            if status.is_empty() {
                *c.stats
                    .error_status
                    .entry(format!("{kind}: no error_status"))
                    .or_default() += 1;
                c.error();
            }
            for s in status {
                *c.stats
                    .error_status
                    .entry(format!("{kind}: {}", error_status_name(true, *s)))
                    .or_default() += 1;
                c.error();
            }
        });
    }

    fn failure(&self, why: String) {
        self.failures.fetch_add(1, Relaxed);
        *lock(&self.last_failure) = Some(why);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The counters as they are now, for a progress display.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Live {
    /// CW_provisions sent so far.
    pub requests: u64,
    /// ECMs received so far.
    pub ecms: u64,
    /// Errors so far.
    pub errors: u64,
    /// Late answers so far.
    pub late: u64,
    /// Channels set up now.
    pub channels_up: usize,
    /// Streams set up now.
    pub streams_up: usize,
}

/// What a run tells its observer while it goes.
#[derive(Debug)]
pub enum Event<'a> {
    /// A few times a second: the time since the start and the counters.
    Tick {
        /// Time since the start.
        elapsed: Duration,
        /// The counters.
        live: Live,
    },
    /// A statistics interval ended.
    Interval(&'a IntervalStats),
}

/// The settings a report shows (the config, serialisable).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Settings {
    /// The ECMG.
    pub ecmg: String,
    /// Channels.
    pub channels: u16,
    /// Streams per channel.
    pub streams_per_channel: u16,
    /// Crypto period, ms.
    pub crypto_period_ms: u64,
    /// CW size, bytes.
    pub cw_size: usize,
    /// Protocol version.
    pub version: u8,
    /// Super_CAS_id, hex.
    pub super_cas_id: String,
    /// access_criteria, hex.
    pub access_criteria: String,
    /// Requested duration, ms (None: until stopped).
    pub duration_ms: Option<u64>,
    /// Statistics interval, ms.
    pub stats_interval_ms: u64,
    /// Answer timeout, ms.
    pub answer_timeout_ms: u64,
}

/// The result of a run: settings, what the ECMG announced, every interval, the total.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EcmgLoadReport {
    /// "ecmg".
    pub test: &'static str,
    /// The settings.
    pub settings: Settings,
    /// The first channel_status received.
    pub announced: Option<Announced>,
    /// How long requests were sent, seconds.
    pub elapsed_s: f64,
    /// Whether the run was stopped before its duration.
    pub stopped_early: bool,
    /// Every statistics interval, in order (the last may be shorter).
    pub intervals: Vec<IntervalStats>,
    /// The whole run.
    pub total: IntervalStats,
}

/// Pass criteria of a run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Highest response time p99 over the run, ms. Default 100 (a usual max_comp_time,
    /// castmux ecmg's default).
    pub max_p99_ms: f64,
    /// Most errors of any kind (`errors` in the total). Default 0.
    pub max_errors: u64,
    /// Most late answers. Default 0.
    pub max_late: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_p99_ms: 100.0,
            max_errors: 0,
            max_late: 0,
        }
    }
}

impl EcmgLoadReport {
    /// The run against `limits`; also fails a run that got no ECM at all.
    pub fn verdict(&self, limits: &Limits) -> Verdict {
        let t = &self.total;
        Verdict::new(vec![
            Criterion::at_least("ECMs received", "", 1.0, t.ecms as f64, ""),
            Criterion::at_most(
                "response time p99",
                "--max-p99-ms",
                limits.max_p99_ms,
                t.response.p99_ms,
                "ms",
            ),
            Criterion::at_most(
                "errors",
                "--max-errors",
                limits.max_errors as f64,
                t.errors as f64,
                "",
            ),
            Criterion::at_most(
                "late answers",
                "--max-late",
                limits.max_late as f64,
                t.late as f64,
                "",
            ),
        ])
    }

    /// What was loaded, how long, and what the ECMG announced, on one line.
    pub fn headline(&self) -> String {
        let s = &self.settings;
        let mut line = format!(
            "ECMG {}: {} channels x {} streams, crypto period {} ms, {:.1} s{}",
            s.ecmg,
            s.channels,
            s.streams_per_channel,
            s.crypto_period_ms,
            self.elapsed_s,
            if self.stopped_early { " (stopped)" } else { "" }
        );
        if let Some(a) = &self.announced {
            line.push_str(&format!(", max_comp_time {} ms", a.max_comp_time_ms));
        }
        line
    }

    /// The summary: one row per counter, the errors by kind after.
    pub fn summary(&self) -> Table {
        let t = &self.total;
        let mut table = Table::new(["", "total"]);
        let n = |v: u64| v.to_string();
        table
            .row(["requests".to_owned(), n(t.requests)])
            .row(["ECMs".to_owned(), n(t.ecms)])
            .row(["response p50".to_owned(), ms_cell(t.response.p50_ms)])
            .row(["response p99".to_owned(), ms_cell(t.response.p99_ms)])
            .row(["response max".to_owned(), ms_cell(t.response.max_ms)])
            .row(["late".to_owned(), n(t.late)])
            .row(["errors".to_owned(), n(t.errors)])
            .row(["  unanswered".to_owned(), n(t.unanswered)])
            .row(["  bad ECMs".to_owned(), n(t.bad_ecms)])
            .row(["  bad messages".to_owned(), n(t.bad_messages)])
            .row(["  unexpected".to_owned(), n(t.unexpected)])
            .row(["  connection errors".to_owned(), n(t.connection_errors)]);
        for (k, v) in &t.error_status {
            table.row([format!("  {k}"), n(*v)]);
        }
        table
    }

    /// Response times and counts per interval over time.
    pub fn plot(&self) -> Plot {
        let mut p = Plot::new(format!("loadtest {}", self.headline()));
        for i in &self.intervals {
            let t = i.end_s;
            p.push("response time", "ms", "p50", t, i.response.p50_ms);
            p.push("response time", "ms", "p99", t, i.response.p99_ms);
            p.push("response time", "ms", "max", t, i.response.max_ms);
            p.push("per interval", "count", "requests", t, i.requests as f64);
            p.push("per interval", "count", "ECMs", t, i.ecms as f64);
            p.push("per interval", "count", "errors", t, i.errors as f64);
            p.push("per interval", "count", "late", t, i.late as f64);
        }
        p
    }
}

/// Run the load on the current tokio runtime until the configured duration has passed or
/// `stop` completes, then let the answers still due come in (bounded), close every stream
/// and channel, and report. `observe` is called a few times a second and after each
/// statistics interval.
pub async fn run(
    config: EcmgLoadConfig,
    stop: impl Future<Output = ()>,
    mut observe: impl FnMut(Event<'_>),
) -> Result<EcmgLoadReport, LoadError> {
    config.check()?;
    let config = Arc::new(config);
    let rec = Arc::new(Recorder {
        window: Mutex::new(Counts::new()),
        channels_up: AtomicUsize::new(0),
        streams_up: AtomicUsize::new(0),
        ever_up: AtomicBool::new(false),
        failures: AtomicU64::new(0),
        last_failure: Mutex::new(None),
        announced: Mutex::new(None),
    });
    let start = Instant::now();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    for ch in 0..config.channels {
        let schedule = Schedule::new(&config, ch, start);
        tasks.spawn(channel_task(
            config.clone(),
            rec.clone(),
            ch,
            schedule,
            stop_rx.clone(),
        ));
    }

    let mut total = Counts::new();
    let mut intervals = Vec::new();
    let mut window_start = start;
    let gauges = |rec: &Recorder| (rec.channels_up.load(Relaxed), rec.streams_up.load(Relaxed));
    let close_window =
        |rec: &Recorder, from: Instant, to: Instant, up: (usize, usize), total: &mut Counts| {
            let mut w = std::mem::replace(&mut *lock(&rec.window), Counts::new());
            w.stats.start_s = (from - start).as_secs_f64();
            w.stats.end_s = (to - start).as_secs_f64();
            w.stats.response = Latency::from_micros(&w.hist);
            (w.stats.channels_up, w.stats.streams_up) = up;
            total.merge(&w);
            w.stats
        };
    let live = |rec: &Recorder, total: &Counts| {
        let w = lock(&rec.window);
        Live {
            requests: total.stats.requests + w.stats.requests,
            ecms: total.stats.ecms + w.stats.ecms,
            errors: total.stats.errors + w.stats.errors,
            late: total.stats.late + w.stats.late,
            channels_up: rec.channels_up.load(Relaxed),
            streams_up: rec.streams_up.load(Relaxed),
        }
    };

    let deadline = config.duration.map(|d| start + d);
    let unreachable_after = start + config.setup_timeout + Duration::from_secs(1);
    let mut unreachable = None;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_window = start + config.stats_interval;
    tokio::pin!(stop);
    let mut stopped_early = false;
    loop {
        let until_end = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut stop => { stopped_early = true; break; }
            _ = until_end => break,
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        if now >= next_window {
            let s = close_window(&rec, window_start, now, gauges(&rec), &mut total);
            window_start = now;
            next_window += config.stats_interval;
            if next_window <= now {
                next_window = now + config.stats_interval;
            }
            observe(Event::Interval(&s));
            intervals.push(s);
        }
        observe(Event::Tick {
            elapsed: now - start,
            live: live(&rec, &total),
        });
        if now >= unreachable_after && !rec.ever_up.load(Relaxed) && rec.failures.load(Relaxed) > 0
        {
            unreachable = Some(LoadError::Unreachable {
                addr: config.addr.clone(),
                waited: now - start,
                detail: lock(&rec.last_failure)
                    .clone()
                    .unwrap_or_else(|| "no answer".to_owned()),
            });
            break;
        }
    }
    let sent_until = Instant::now();
    // channels and streams up while requests were sent (they are closed from here on)
    let up = gauges(&rec);
    // stop sending; each channel waits for its answers due, closes and ends
    let _ = stop_tx.send(true);
    let grace = drain_time(&config) + config.setup_timeout;
    let all_done = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(grace, all_done).await.is_err() {
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
    if let Some(e) = unreachable {
        return Err(e);
    }
    let end = Instant::now();
    let last = close_window(&rec, window_start, end, up, &mut total);
    // a window with nothing in it (the run ended right on an interval) is not a row
    if last.requests + last.ecms + last.errors > 0 || intervals.is_empty() {
        observe(Event::Interval(&last));
        intervals.push(last);
    }
    let mut t = total.stats.clone();
    t.start_s = 0.0;
    t.end_s = (end - start).as_secs_f64();
    t.response = Latency::from_micros(&total.hist);
    (t.channels_up, t.streams_up) = up;
    let announced = *lock(&rec.announced);
    Ok(EcmgLoadReport {
        test: "ecmg",
        settings: Settings {
            ecmg: config.addr.clone(),
            channels: config.channels,
            streams_per_channel: config.streams_per_channel,
            crypto_period_ms: config.crypto_period.as_millis() as u64,
            cw_size: config.cw_size,
            version: config.version,
            super_cas_id: format!("{:08X}", config.super_cas_id),
            access_criteria: config
                .access_criteria
                .iter()
                .map(|b| format!("{b:02X}"))
                .collect(),
            duration_ms: config.duration.map(|d| d.as_millis() as u64),
            stats_interval_ms: config.stats_interval.as_millis() as u64,
            answer_timeout_ms: config.answer_timeout.as_millis() as u64,
        },
        announced,
        elapsed_s: (sent_until - start).as_secs_f64(),
        stopped_early,
        intervals,
        total: t,
    })
}

/// How long a channel waits, once the run is over, for the answers still due.
fn drain_time(c: &EcmgLoadConfig) -> Duration {
    c.answer_timeout.min(Duration::from_secs(10))
}

/// When each stream of a channel sends next. Stream `g` of the run (of `n`) first sends at
/// `start + g × period / n`, then every period.
#[derive(Debug, Clone)]
struct Schedule {
    due: Vec<Instant>,
    period: Duration,
}

impl Schedule {
    fn new(c: &EcmgLoadConfig, channel: u16, start: Instant) -> Schedule {
        let n = c.total_streams() as u128;
        let per = c.crypto_period.as_nanos();
        let due = (0..c.streams_per_channel)
            .map(|s| {
                let g = u128::from(channel) * u128::from(c.streams_per_channel) + u128::from(s);
                start + Duration::from_nanos((per * g / n) as u64)
            })
            .collect();
        Schedule {
            due,
            period: c.crypto_period,
        }
    }

    fn next(&self) -> Instant {
        self.due.iter().copied().min().unwrap_or_else(Instant::now)
    }

    /// The streams due at `now`, their next time moved on (never into the past: a link that
    /// was down does not send a burst of the periods it missed).
    fn take_due(&mut self, now: Instant, out: &mut Vec<usize>) {
        out.clear();
        for (i, d) in self.due.iter_mut().enumerate() {
            if *d <= now {
                out.push(i);
                *d += self.period;
                if *d <= now {
                    let behind = (now - *d).as_nanos() / self.period.as_nanos() + 1;
                    *d += self.period * behind as u32;
                }
            }
        }
    }
}

/// One stream of a channel.
#[derive(Debug, Default)]
struct Stream {
    up: bool,
    cp: u16,
    /// (CP_number, when sent) of requests waiting for an answer, oldest first.
    pending: VecDeque<(u16, Instant)>,
}

/// How a session ended.
enum End {
    /// The run is over; the channel was closed.
    Stopped,
    /// The link failed (counted as a connection error).
    Link(LinkError),
    /// The ECMG refused the channel or every stream (counted by error_status).
    Refused(String),
}

type Writer = FrameWriter<OwnedWriteHalf>;
type Reader = FrameReader<tokio::net::tcp::OwnedReadHalf>;

/// One channel: sessions, reconnecting with backoff, until the run stops.
async fn channel_task(
    c: Arc<EcmgLoadConfig>,
    rec: Arc<Recorder>,
    index: u16,
    mut schedule: Schedule,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = BACKOFF_MIN;
    let mut streams: Vec<Stream> = (0..c.streams_per_channel)
        .map(|_| Stream::default())
        .collect();
    loop {
        if *stop.borrow() {
            return;
        }
        let mut s = Session {
            c: &c,
            rec: &rec,
            channel_id: c.first_channel_id + index,
            first_ecm_id: c.first_ecm_id + index.wrapping_mul(c.streams_per_channel),
            status: None,
            streams: &mut streams,
            up: false,
        };
        let end = s.run(&mut schedule, &mut stop).await;
        let was_up = s.up;
        s.down();
        match end {
            End::Stopped => return,
            End::Link(e) => {
                rec.with(|w| {
                    w.stats.connection_errors += 1;
                    w.error();
                });
                rec.failure(format!("link: {e}"));
                tracing::debug!(channel = c.first_channel_id + index, error = %e, "loadtest: link lost");
            }
            End::Refused(why) => {
                rec.failure(why.clone());
                tracing::debug!(channel = c.first_channel_id + index, %why, "loadtest: refused");
            }
        }
        if was_up {
            backoff = BACKOFF_MIN;
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stopped(&mut stop) => return,
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

struct Session<'a> {
    c: &'a EcmgLoadConfig,
    rec: &'a Recorder,
    channel_id: u16,
    first_ecm_id: u16,
    status: Option<ChannelStatus>,
    streams: &'a mut Vec<Stream>,
    up: bool,
}

impl Session<'_> {
    fn stream_id(&self, i: usize) -> u16 {
        self.c.first_stream_id + i as u16
    }

    /// The index of `stream_id` among this channel's streams.
    fn index(&self, stream_id: u16) -> Option<usize> {
        let i = usize::from(stream_id.checked_sub(self.c.first_stream_id)?);
        (i < self.streams.len()).then_some(i)
    }

    async fn send(&self, wr: &mut Writer, m: &EcmgMessage) -> Result<(), LinkError> {
        wr.send(self.c.version, m).await
    }

    /// The link is gone: waiting requests are lost, the gauges go down.
    fn down(&mut self) {
        let mut lost = 0;
        let mut streams = 0;
        for s in self.streams.iter_mut() {
            lost += s.pending.len() as u64;
            s.pending.clear();
            if std::mem::take(&mut s.up) {
                streams += 1;
            }
        }
        self.rec.unanswered(lost);
        self.rec.streams_up.fetch_sub(streams, Relaxed);
        if std::mem::take(&mut self.up) {
            self.rec.channels_up.fetch_sub(1, Relaxed);
        }
    }

    async fn run(&mut self, schedule: &mut Schedule, stop: &mut watch::Receiver<bool>) -> End {
        let (mut rd, mut wr) = match connect(
            &self.c.addr,
            self.c.setup_timeout,
            "the TCP connection to the ECMG",
        )
        .await
        {
            Ok(x) => x,
            Err(e) => return End::Link(e),
        };
        match self.setup(&mut rd, &mut wr).await {
            Ok(None) => {}
            Ok(Some(refused)) => return End::Refused(refused),
            Err(e) => return End::Link(e),
        }
        match self.serve(&mut rd, &mut wr, schedule, stop).await {
            Ok(()) => {}
            Err(End::Link(e)) => return End::Link(e),
            Err(other) => return other,
        }
        self.close(&mut rd, &mut wr).await;
        End::Stopped
    }

    /// The next message during setup, decoded; undecodable ones are counted and skipped.
    async fn setup_message(
        &mut self,
        rd: &mut Reader,
        what: &'static str,
    ) -> Result<EcmgMessage, LinkError> {
        loop {
            let frame = rd.expect(self.c.setup_timeout, "the ECMG", what).await?;
            match EcmgMessage::decode(&frame) {
                Ok((_, m)) => return Ok(m),
                Err(e) => {
                    self.rec.with(|w| {
                        w.stats.bad_messages += 1;
                        w.error();
                    });
                    tracing::debug!(error = %e, "loadtest: undecodable message during setup");
                }
            }
        }
    }

    /// channel_setup, then each stream_setup in turn. `Ok(Some(why))`: refused.
    async fn setup(
        &mut self,
        rd: &mut Reader,
        wr: &mut Writer,
    ) -> Result<Option<String>, LinkError> {
        let ch = self.channel_id;
        self.send(
            wr,
            &EcmgMessage::ChannelSetup {
                channel_id: ch,
                super_cas_id: self.c.super_cas_id,
            },
        )
        .await?;
        let status = loop {
            match self.setup_message(rd, "channel_status").await? {
                EcmgMessage::ChannelStatus(s) if s.channel_id == ch => break s,
                EcmgMessage::ChannelError { status, .. } => {
                    self.rec.error_status("channel_error", &status);
                    return Ok(Some(format!(
                        "channel_setup refused: {}",
                        describe(&status)
                    )));
                }
                EcmgMessage::ChannelTest { .. } => {}
                _ => self.unexpected(),
            }
        };
        self.status = Some(status);
        lock(&self.rec.announced).get_or_insert_with(|| Announced::from(&status));
        self.up = true;
        self.rec.channels_up.fetch_add(1, Relaxed);
        self.rec.ever_up.store(true, Relaxed);

        let mut any = false;
        for i in 0..self.streams.len() {
            let st = self.stream_id(i);
            self.send(
                wr,
                &EcmgMessage::StreamSetup {
                    channel_id: ch,
                    stream_id: st,
                    ecm_id: self.first_ecm_id.wrapping_add(i as u16),
                    nominal_cp_duration: self.c.cp_units(),
                },
            )
            .await?;
            loop {
                match self.setup_message(rd, "stream_status").await? {
                    EcmgMessage::StreamStatus { stream_id, .. } if stream_id == st => {
                        self.streams[i].up = true;
                        self.rec.streams_up.fetch_add(1, Relaxed);
                        any = true;
                        break;
                    }
                    EcmgMessage::StreamError { status, .. } => {
                        self.rec.error_status("stream_error", &status);
                        break;
                    }
                    EcmgMessage::ChannelError { status, .. } => {
                        self.rec.error_status("channel_error", &status);
                        break;
                    }
                    EcmgMessage::ChannelTest { .. } | EcmgMessage::ChannelStatus(_) => {}
                    _ => self.unexpected(),
                }
            }
        }
        if !any {
            return Ok(Some("every stream_setup refused".to_owned()));
        }
        Ok(None)
    }

    fn unexpected(&self) {
        self.rec.with(|w| {
            w.stats.unexpected += 1;
            w.error();
        });
    }

    /// Send on the schedule and take the answers until the run stops.
    async fn serve(
        &mut self,
        rd: &mut Reader,
        wr: &mut Writer,
        schedule: &mut Schedule,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), End> {
        let mut due = Vec::with_capacity(self.streams.len());
        let mut expiry = tokio::time::interval(Duration::from_millis(100));
        expiry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let next = schedule.next();
            tokio::select! {
                frame = rd.next() => {
                    let frame = frame.map_err(End::Link)?.ok_or_else(|| {
                        End::Link(LinkError::Peer("the ECMG closed the connection".to_owned()))
                    })?;
                    self.on_frame(wr, &frame).await?;
                }
                _ = tokio::time::sleep_until(next) => {
                    schedule.take_due(Instant::now(), &mut due);
                    for &i in &due {
                        if self.streams[i].up {
                            self.provision(wr, i).await.map_err(End::Link)?;
                        }
                    }
                }
                _ = expiry.tick() => self.expire(Instant::now()),
                _ = stopped(stop) => return Ok(()),
            }
        }
    }

    /// Requests older than the answer timeout are unanswered.
    fn expire(&mut self, now: Instant) {
        let limit = self.c.answer_timeout;
        let mut n = 0;
        for s in self.streams.iter_mut() {
            while s
                .pending
                .front()
                .is_some_and(|(_, at)| now.duration_since(*at) > limit)
            {
                s.pending.pop_front();
                n += 1;
            }
        }
        self.rec.unanswered(n);
    }

    async fn provision(&mut self, wr: &mut Writer, i: usize) -> Result<(), LinkError> {
        let per_msg = self.status.map_or(2, |s| s.cw_per_msg).clamp(1, 16);
        let cp = self.streams[i].cp;
        self.streams[i].cp = cp.wrapping_add(1);
        let mut cp_cw = Vec::with_capacity(usize::from(per_msg));
        for k in 0..per_msg {
            cp_cw.push(CpCw {
                cp_number: cp.wrapping_add(u16::from(k)),
                cw: random_cw(self.c.cw_size),
            });
        }
        let msg = EcmgMessage::CwProvision(CwProvision {
            channel_id: self.channel_id,
            stream_id: self.stream_id(i),
            cp_number: cp,
            cw_encryption: None,
            cp_cw,
            cp_duration: Some(self.c.cp_units()),
            access_criteria: (!self.c.access_criteria.is_empty())
                .then(|| self.c.access_criteria.clone()),
        });
        let s = &mut self.streams[i];
        if s.pending.len() >= PENDING_MAX {
            s.pending.pop_front();
            self.rec.unanswered(1);
        }
        let s = &mut self.streams[i];
        s.pending.push_back((cp, Instant::now()));
        self.rec.with(|w| w.stats.requests += 1);
        self.send(wr, &msg).await
    }

    async fn on_frame(&mut self, wr: &mut Writer, frame: &[u8]) -> Result<(), End> {
        let now = Instant::now();
        let msg = match EcmgMessage::decode(frame) {
            Ok((_, m)) => m,
            Err(e) => {
                self.rec.with(|w| {
                    w.stats.bad_messages += 1;
                    w.error();
                });
                tracing::debug!(error = %e, "loadtest: undecodable message from the ECMG");
                return Ok(());
            }
        };
        if msg.channel_id() != self.channel_id {
            self.unexpected();
            return Ok(());
        }
        match msg {
            EcmgMessage::EcmResponse {
                stream_id,
                cp_number,
                datagram,
                ..
            } => self.on_ecm(now, stream_id, cp_number, &datagram),
            EcmgMessage::StreamError {
                stream_id, status, ..
            } => {
                self.rec.error_status("stream_error", &status);
                // the answer to the stream's oldest request: not also unanswered
                if let Some(i) = self.index(stream_id) {
                    self.streams[i].pending.pop_front();
                }
            }
            EcmgMessage::ChannelError { status, .. } => {
                self.rec.error_status("channel_error", &status);
                // the answer to the channel's oldest request (an error names no CP)
                if let Some(s) = self
                    .streams
                    .iter_mut()
                    .filter(|s| !s.pending.is_empty())
                    .min_by_key(|s| s.pending.front().map(|p| p.1))
                {
                    s.pending.pop_front();
                }
                let fatal = [
                    EcmgErrorStatus::UnknownChannelId.value(),
                    EcmgErrorStatus::UnrecoverableError.value(),
                ];
                if status.iter().any(|s| fatal.contains(s)) {
                    return Err(End::Refused(format!(
                        "the ECMG dropped the channel: {}",
                        describe(&status)
                    )));
                }
            }
            // the ECMG checking the link: answer as an SCS does
            EcmgMessage::ChannelTest { .. } => {
                if let Some(s) = self.status {
                    self.send(wr, &EcmgMessage::ChannelStatus(s))
                        .await
                        .map_err(End::Link)?;
                }
            }
            EcmgMessage::StreamTest { stream_id, .. } => {
                if let Some(i) = self.index(stream_id) {
                    let m = EcmgMessage::StreamStatus {
                        channel_id: self.channel_id,
                        stream_id,
                        ecm_id: self.first_ecm_id.wrapping_add(i as u16),
                        access_criteria_transfer_mode: false,
                    };
                    self.send(wr, &m).await.map_err(End::Link)?;
                } else {
                    self.unexpected();
                }
            }
            EcmgMessage::ChannelStatus(_) | EcmgMessage::StreamStatus { .. } => {}
            EcmgMessage::ChannelClose { .. } => {
                return Err(End::Link(LinkError::Peer(
                    "the ECMG closed the channel".to_owned(),
                )));
            }
            EcmgMessage::StreamCloseRequest { stream_id, .. } => {
                // the ECMG ends a stream: answer, and it sends no more
                if let Some(i) = self.index(stream_id) {
                    if std::mem::take(&mut self.streams[i].up) {
                        self.rec.streams_up.fetch_sub(1, Relaxed);
                    }
                    let lost = self.streams[i].pending.len() as u64;
                    self.streams[i].pending.clear();
                    self.rec.unanswered(lost);
                    let m = EcmgMessage::StreamCloseResponse {
                        channel_id: self.channel_id,
                        stream_id,
                    };
                    self.send(wr, &m).await.map_err(End::Link)?;
                }
                self.rec.with(|w| {
                    w.stats.connection_errors += 1;
                    w.error();
                });
            }
            _ => self.unexpected(),
        }
        Ok(())
    }

    fn on_ecm(&mut self, now: Instant, stream_id: u16, cp: u16, datagram: &[u8]) {
        let Some(i) = self.index(stream_id) else {
            self.unexpected();
            return;
        };
        let s = &mut self.streams[i];
        let Some(pos) = s.pending.iter().position(|(q, _)| *q == cp) else {
            self.unexpected();
            return;
        };
        let (_, sent) = s.pending.remove(pos).expect("position is in range");
        let took = now.duration_since(sent);
        let status = self.status;
        let usable = if status.is_some_and(|s| s.section_tspkt_flag) {
            let mut sections = Vec::with_capacity(datagram.len());
            packets_to_sections(datagram, &mut sections).is_ok()
        } else {
            check_sections(datagram).is_ok()
        };
        let max_comp = status.map(|s| Duration::from_millis(u64::from(s.max_comp_time)));
        self.rec.with(|w| {
            if usable {
                w.stats.ecms += 1;
                record_micros(&mut w.hist, took);
                if max_comp.is_some_and(|m| took > m) {
                    w.stats.late += 1;
                }
            } else {
                w.stats.bad_ecms += 1;
                w.error();
            }
        });
    }

    /// The run is over: wait (bounded) for the answers still due, then close every stream
    /// and the channel, politely; what goes wrong here is not counted.
    async fn close(&mut self, rd: &mut Reader, wr: &mut Writer) {
        let until = Instant::now() + drain_time(self.c);
        while self.streams.iter().any(|s| !s.pending.is_empty()) {
            let Ok(frame) = tokio::time::timeout_at(until, rd.next()).await else {
                break;
            };
            match frame {
                Ok(Some(f)) => {
                    if self.on_frame(wr, &f).await.is_err() {
                        return;
                    }
                }
                _ => return,
            }
        }
        let lost: u64 = self
            .streams
            .iter_mut()
            .map(|s| {
                let n = s.pending.len() as u64;
                s.pending.clear();
                n
            })
            .sum();
        self.rec.unanswered(lost);
        let ch = self.channel_id;
        let open: Vec<u16> = (0..self.streams.len())
            .filter(|&i| self.streams[i].up)
            .map(|i| self.stream_id(i))
            .collect();
        for &st in &open {
            let m = EcmgMessage::StreamCloseRequest {
                channel_id: ch,
                stream_id: st,
            };
            if self.send(wr, &m).await.is_err() {
                return;
            }
        }
        let mut left = open.len();
        let until = Instant::now() + Duration::from_secs(1);
        while left > 0 {
            match tokio::time::timeout_at(until, rd.next()).await {
                Ok(Ok(Some(f))) => {
                    if let Ok((_, EcmgMessage::StreamCloseResponse { .. })) =
                        EcmgMessage::decode(&f)
                    {
                        left -= 1;
                    }
                }
                _ => break,
            }
        }
        let _ = self
            .send(wr, &EcmgMessage::ChannelClose { channel_id: ch })
            .await;
    }
}

/// Until the run is over (the guard `wait_for` gives is dropped here: it is not `Send`).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

fn describe(status: &[u16]) -> String {
    crate::simulcrypt::types::error_status_names(true, status)
}

/// A fresh random CW of `size` bytes (8 or 16) from the OS CSPRNG.
fn random_cw(size: usize) -> Cw {
    let mut b = [0u8; 16];
    // the OS CSPRNG does not fail on Linux once booted; a zero CW would still load the ECMG
    let _ = getrandom::getrandom(&mut b[..size]);
    let cw = Cw::from_slice(&b[..size])
        .unwrap_or_else(|_| Cw::from_slice(&[0u8; 8]).expect("an 8-byte CW is valid"));
    b.fill(0);
    cw
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_spread_over_the_period() {
        let mut c = EcmgLoadConfig::new("x:1", 1);
        c.channels = 2;
        c.streams_per_channel = 2;
        c.crypto_period = Duration::from_secs(1);
        let t0 = Instant::now();
        let a = Schedule::new(&c, 0, t0);
        let b = Schedule::new(&c, 1, t0);
        let ms =
            |s: &Schedule| -> Vec<u128> { s.due.iter().map(|d| (*d - t0).as_millis()).collect() };
        assert_eq!(ms(&a), [0, 250]);
        assert_eq!(ms(&b), [500, 750]);
        // a link down for 3 periods sends once, then keeps the clock
        let mut a = a;
        let mut due = Vec::new();
        a.take_due(t0 + Duration::from_millis(3100), &mut due);
        assert_eq!(due, [0, 1]);
        assert_eq!(ms(&a), [4000, 3250]);
    }

    #[test]
    fn settings_are_checked() {
        let ok = EcmgLoadConfig::new("x:1", 1);
        assert!(ok.check().is_ok());
        let mut c = ok.clone();
        c.cw_size = 9;
        assert!(c.check().unwrap_err().to_string().contains("8 or 16"));
        let mut c = ok.clone();
        c.channels = 1000;
        c.streams_per_channel = 100;
        assert!(c.check().unwrap_err().to_string().contains("ECM ids"));
        let mut c = ok;
        c.first_channel_id = 65535;
        c.channels = 2;
        assert!(c.check().is_err());
    }

    #[test]
    fn windows_add_up() {
        let mut a = Counts::new();
        let mut b = Counts::new();
        b.stats.requests = 3;
        b.stats.error_status.insert("stream_error: x".into(), 2);
        record_micros(&mut b.hist, Duration::from_millis(2));
        a.merge(&b);
        a.merge(&b);
        assert_eq!(a.stats.requests, 6);
        assert_eq!(a.stats.error_status["stream_error: x"], 4);
        assert_eq!(a.hist.len(), 2);
    }
}
