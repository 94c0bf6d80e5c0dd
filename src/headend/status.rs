//! What the head-end shows while it runs: each channel's state (from the supervisor) and
//! live numbers (atomics the data path publishes, read here without ever making it wait),
//! sampled once a second into bitrates and a bounded history. The HTTP status API, the
//! dashboard and `/metrics` read the [`Registry`].

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::monitor::{MonitorShared, MonitorView};
use super::supervise::SupervisorStats;
use crate::cas::FollowerStats;
use crate::io::IoStats;
use crate::scramble::stats::{monotonic_ms, LiveCounters};
use crate::simulcrypt::{EmmMuxStats, SimulcryptEcmg};

/// Bitrate samples kept per channel (one a second: five minutes).
pub const HISTORY: usize = 300;
/// A channel is off air when no packet came in or went out for this long.
pub const ON_AIR_WINDOW: Duration = Duration::from_secs(2);

/// A running channel's live parts, shared with the data path.
#[derive(Debug)]
pub struct ChannelLive {
    pub input_url: String,
    pub input: Arc<IoStats>,
    /// The inputs of a channel with backups: which is active, which on air.
    pub inputs: Option<Arc<super::inputs::InputsShared>>,
    /// An MPTS channel's inputs and programs.
    pub mpts: Option<Arc<super::mpts::MptsShared>>,
    pub outputs: Vec<(String, Arc<IoStats>)>,
    pub counters: Arc<LiveCounters>,
    /// The ECMG links, one per external CAS.
    pub ecmgs: Vec<SimulcryptEcmg>,
    /// (CA_system_ID, ECM PID) per CA system, in the order of `counters.ecm_changed_ms`.
    pub ca_systems: Vec<(u16, u16)>,
    /// Cloned EMM chunks dropped for a full queue (a channel with `emm_clone`).
    pub emm_clone_dropped: Option<Arc<AtomicU64>>,
    /// The built-in CAS's store follower (`--cas builtin`).
    pub store_follower: Option<Arc<FollowerStats>>,
    /// What the output's monitor last published (`monitor = true`).
    pub monitor: Option<Arc<MonitorShared>>,
    /// A constant-bitrate output (`cbr`): its bitrate and counters.
    pub cbr: Option<(u64, Arc<crate::mux::cbr::CbrStats>)>,
}

impl ChannelLive {
    /// The input in use: the active one of a channel with backups.
    pub fn active_input_url(&self) -> String {
        match &self.inputs {
            Some(i) => i
                .urls
                .get(i.active.load(Relaxed))
                .cloned()
                .unwrap_or_default(),
            None => self.input_url.clone(),
        }
    }
}

/// Where a channel is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelState {
    /// Opening (its first run).
    Starting,
    /// Running.
    Running,
    /// Failed; opening again after the backoff (or now).
    Restarting,
    /// Failed for good (a setting that cannot work, or restarts are off).
    Failed,
    /// Ended (its input ended, idled out, or the head-end stops).
    Stopped,
    /// Turned off by the operator.
    Disabled,
}

/// One channel as the registry holds it.
#[derive(Debug)]
pub struct ChannelEntry {
    pub name: String,
    pub state: ChannelState,
    pub restarts: u64,
    pub last_error: Option<String>,
    pub live: Option<Arc<ChannelLive>>,
    sample: Option<Sample>,
    /// Input and output bitrate (bit/s) over the last second.
    pub in_bps: f64,
    pub out_bps: f64,
    /// When packets last came in and went out.
    last_in: Option<Instant>,
    last_out: Option<Instant>,
    /// (unix seconds, in bit/s, out bit/s), oldest first, at most [`HISTORY`].
    pub history: VecDeque<(u64, f64, f64)>,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    bytes_in: u64,
    bytes_out: u64,
    held: u64,
}

impl ChannelEntry {
    fn new(name: &str) -> ChannelEntry {
        ChannelEntry {
            name: name.to_owned(),
            state: ChannelState::Starting,
            restarts: 0,
            last_error: None,
            live: None,
            sample: None,
            in_bps: 0.0,
            out_bps: 0.0,
            last_in: None,
            last_out: None,
            history: VecDeque::new(),
        }
    }

    /// Running, with packets in and out lately, and not holding its services for want of
    /// an ECM.
    pub fn on_air(&self) -> bool {
        let fresh = |t: Option<Instant>| t.is_some_and(|t| t.elapsed() < ON_AIR_WINDOW);
        let holding = self.live.as_ref().is_some_and(|l| {
            l.counters.held_before_ecm.load(Relaxed) > self.sample.map_or(0, |s| s.held)
        });
        self.state == ChannelState::Running
            && fresh(self.last_in)
            && fresh(self.last_out)
            && !holding
    }

    fn sample(&mut self, now: Instant, unix: u64) {
        let Some(live) = &self.live else {
            self.in_bps = 0.0;
            self.out_bps = 0.0;
            self.sample = None;
            return;
        };
        let s = Sample {
            at: now,
            bytes_in: live.input.bytes_in.load(Relaxed),
            bytes_out: live
                .outputs
                .iter()
                .map(|o| o.1.bytes_out.load(Relaxed))
                .max()
                .unwrap_or(0),
            held: live.counters.held_before_ecm.load(Relaxed),
        };
        if let Some(p) = self.sample {
            let secs = now.duration_since(p.at).as_secs_f64().max(1e-3);
            let d_in = s.bytes_in.saturating_sub(p.bytes_in);
            let d_out = s.bytes_out.saturating_sub(p.bytes_out);
            self.in_bps = d_in as f64 * 8.0 / secs;
            self.out_bps = d_out as f64 * 8.0 / secs;
            if d_in > 0 {
                self.last_in = Some(now);
            }
            if d_out > 0 {
                self.last_out = Some(now);
            }
            if self.history.len() >= HISTORY {
                self.history.pop_front();
            }
            self.history.push_back((unix, self.in_bps, self.out_bps));
        }
        self.sample = Some(s);
    }

    /// The channel's status as the API shows it.
    pub fn view(&self) -> ChannelView {
        let live = self.live.as_deref();
        let counter = |f: fn(&LiveCounters) -> u64| live.map_or(0, |l| f(&l.counters));
        let now_ms = monotonic_ms();
        let scrambled = counter(|c| c.scrambled.load(Relaxed) + c.already_scrambled.load(Relaxed));
        let held = counter(|c| c.held_before_ecm.load(Relaxed));
        // a channel with backup inputs
        let backups = live.and_then(|l| l.inputs.as_deref());
        let outputs_sum = |f: fn(&crate::io::IoStats) -> u64| -> u64 {
            live.map_or(0, |l| l.outputs.iter().map(|o| f(&o.1)).sum())
        };
        ChannelView {
            name: self.name.clone(),
            state: self.state,
            on_air: self.on_air(),
            restarts: self.restarts,
            last_error: self.last_error.clone(),
            input: InputView {
                url: live.map(ChannelLive::active_input_url).unwrap_or_default(),
                bitrate_bps: self.in_bps.round() as u64,
                packets: live.map_or(0, |l| l.input.packets_in.load(Relaxed)),
                sync_losses: live.map_or(0, |l| l.input.sync_losses.load(Relaxed)),
                drops: live.map_or(0, |l| l.input.queue_drops.load(Relaxed)),
                cc_errors: counter(|c| c.cc_errors.load(Relaxed)),
                rtp_gaps: live.map_or(0, |l| l.input.rtp_gaps.load(Relaxed)),
                reconnects: live.map_or(0, |l| l.input.reconnects.load(Relaxed)),
                inputs: backups.map_or_else(Vec::new, |i| {
                    let active = i.active.load(Relaxed);
                    i.urls
                        .iter()
                        .enumerate()
                        .map(|(k, url)| BackupInputView {
                            url: url.clone(),
                            active: k == active,
                            on_air: i.on_air[k].load(Relaxed),
                            packets: i.stats[k].packets_in.load(Relaxed),
                            bytes: i.stats[k].bytes_in.load(Relaxed),
                        })
                        .collect()
                }),
                switches: backups.map(|i| i.switches.load(Relaxed)),
                manual: backups.map(|i| i.manual.load(Relaxed)),
                unmapped_dropped: backups.map(|i| i.dropped.load(Relaxed)),
                programs: live
                    .and_then(|l| l.mpts.as_deref())
                    .map_or_else(Vec::new, mpts_programs),
                psi_dropped: live
                    .and_then(|l| l.mpts.as_deref())
                    .map(|m| m.psi_dropped.load(Relaxed)),
                not_taken: live
                    .and_then(|l| l.mpts.as_deref())
                    .map_or_else(Vec::new, |m| {
                        m.urls
                            .iter()
                            .zip(&m.not_taken)
                            .map(|(url, n)| (url.clone(), n.load(Relaxed)))
                            .collect()
                    }),
            },
            output: OutputView {
                bitrate_bps: self.out_bps.round() as u64,
                packets: counter(|c| c.packets_out.load(Relaxed)),
                send_errors: live.map_or(0, |l| {
                    l.outputs
                        .iter()
                        .map(|o| o.1.send_errors.load(Relaxed))
                        .sum()
                }),
                http_clients: outputs_sum(|o| o.snapshot().clients),
                http_clients_dropped_slow: outputs_sum(|o| o.clients_dropped_slow.load(Relaxed)),
                http_clients_refused: outputs_sum(|o| o.clients_refused.load(Relaxed)),
                cbr: live
                    .and_then(|l| l.cbr.as_ref())
                    .map(|(bitrate, c)| c.snapshot(*bitrate)),
            },
            scrambled_ratio: if scrambled + held == 0 {
                0.0
            } else {
                scrambled as f64 / (scrambled + held) as f64
            },
            crypto_period: counter(|c| c.period.load(Relaxed)),
            key_switches: counter(|c| c.key_switches.load(Relaxed)),
            degraded_holds: counter(|c| c.degraded_holds.load(Relaxed)),
            held_before_ecm: held,
            ecm_age_s: live.map_or_else(Vec::new, |l| {
                l.counters
                    .ecm_changed_ms
                    .iter()
                    .map(|t| match t.load(Relaxed) {
                        0 => None,
                        t => Some(now_ms.saturating_sub(t) as f64 / 1000.0),
                    })
                    .collect()
            }),
            emm: EmmView {
                packets: counter(|c| c.emm_packets.load(Relaxed)),
                clone_dropped: live
                    .and_then(|l| l.emm_clone_dropped.as_ref())
                    .map(|d| d.load(Relaxed)),
            },
            store: live
                .and_then(|l| l.store_follower.as_deref())
                .map(|f| StoreView {
                    age_s: f.age_seconds(),
                    errors: f.store_errors.load(Relaxed),
                    key_changes: f.key_changes.load(Relaxed),
                    card_updates: f.card_updates.load(Relaxed),
                }),
            ecmg_links: live.map_or_else(Vec::new, |l| {
                l.ecmgs
                    .iter()
                    .map(|g| EcmgView {
                        addr: g.addr().to_owned(),
                        active: g.active_addr().to_owned(),
                        up: g.is_connected(),
                    })
                    .collect()
            }),
            monitor: live
                .and_then(|l| l.monitor.as_deref())
                .and_then(MonitorShared::latest),
        }
    }
}

/// A channel in the status API (`GET /api/v1/channels`).
#[derive(Debug, Serialize)]
pub struct ChannelView {
    pub name: String,
    pub state: ChannelState,
    pub on_air: bool,
    pub restarts: u64,
    pub last_error: Option<String>,
    pub input: InputView,
    pub output: OutputView,
    /// Payload packets of the scrambled services that went out scrambled, over those and
    /// the ones held back for want of an ECM (1.0 on air; never a clear one either way).
    pub scrambled_ratio: f64,
    pub crypto_period: u64,
    pub key_switches: u64,
    pub degraded_holds: u64,
    pub held_before_ecm: u64,
    /// Seconds since each CA system's ECM content changed (null: none yet).
    pub ecm_age_s: Vec<Option<f64>>,
    pub emm: EmmView,
    /// The built-in CAS's store follower (null without `--cas builtin`).
    pub store: Option<StoreView>,
    pub ecmg_links: Vec<EcmgView>,
    /// ETR 290 priority 1 and 2 and the CA checks on the output (null: `monitor` is off,
    /// or nothing published yet: the first view comes a second after the start).
    pub monitor: Option<MonitorView>,
}

#[derive(Debug, Serialize)]
pub struct EmmView {
    /// EMM packets queued for the EMM PID.
    pub packets: u64,
    /// Cloned EMM chunks dropped for a full queue (null: the channel does not clone).
    pub clone_dropped: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct StoreView {
    /// Seconds since the store was last read whole (null: never).
    pub age_s: Option<f64>,
    /// Store reads that failed (the keys and cards loaded stayed on air).
    pub errors: u64,
    pub key_changes: u64,
    pub card_updates: u64,
}

#[derive(Debug, Serialize)]
pub struct InputView {
    pub url: String,
    pub bitrate_bps: u64,
    pub packets: u64,
    pub sync_losses: u64,
    pub drops: u64,
    /// Continuity counter errors in the input, every PID.
    pub cc_errors: u64,
    /// RTP sequence gaps (an input without RTP has none to count).
    pub rtp_gaps: u64,
    /// HTTP input: connections made again after the server closed or failed.
    pub reconnects: u64,
    /// A channel with backup inputs: each of them, in priority order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<BackupInputView>,
    /// Input switches (a channel with backup inputs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub switches: Option<u64>,
    /// An input is pinned from the API (a channel with backup inputs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manual: Option<bool>,
    /// Packets of the active input with no place in the channel's numbering.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unmapped_dropped: Option<u64>,
    /// An MPTS channel: each program's counters.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub programs: Vec<MptsProgramView>,
    /// An MPTS channel: per input, packets of PIDs the multiplex does not take (other
    /// programs, the input's own PSI and SI).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_taken: Vec<(String, u64)>,
    /// An MPTS channel: PSI/SI packets it made that found no room in the batch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub psi_dropped: Option<u64>,
}

/// One program of an MPTS channel.
#[derive(Debug, Serialize)]
pub struct MptsProgramView {
    pub input: String,
    /// The output program number (0 until its input's PMT is known).
    pub pnr: u64,
    /// Packets taken from its input.
    pub packets: u64,
    /// Packets dropped (no room in the batch).
    pub dropped: u64,
    /// New versions of its PMT made.
    pub psi_regenerated: u64,
}

fn mpts_programs(m: &super::mpts::MptsShared) -> Vec<MptsProgramView> {
    m.programs
        .iter()
        .map(|p| MptsProgramView {
            input: p.input.clone(),
            pnr: p.pnr.load(Relaxed),
            packets: p.packets.load(Relaxed),
            dropped: p.dropped.load(Relaxed),
            psi_regenerated: p.psi_regenerated.load(Relaxed),
        })
        .collect()
}

/// One input of a channel with backups.
#[derive(Debug, Serialize)]
pub struct BackupInputView {
    pub url: String,
    pub active: bool,
    pub on_air: bool,
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct OutputView {
    pub bitrate_bps: u64,
    pub packets: u64,
    pub send_errors: u64,
    /// HTTP-TS outputs: clients connected now.
    pub http_clients: u64,
    /// HTTP-TS outputs: clients dropped for reading slower than the stream.
    pub http_clients_dropped_slow: u64,
    /// HTTP-TS outputs: clients refused with 503 (max_clients).
    pub http_clients_refused: u64,
    /// A constant-bitrate output (`cbr`): nulls added, packets dropped, PCRs restamped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cbr: Option<crate::mux::cbr::CbrSnapshot>,
}

#[derive(Debug, Serialize)]
pub struct EcmgView {
    /// The primary, as configured.
    pub addr: String,
    /// The one in use (a backup after a failover).
    pub active: String,
    pub up: bool,
}

/// Every channel of the head-end, for whoever watches.
#[derive(Debug)]
pub struct Registry {
    channels: Mutex<Vec<ChannelEntry>>,
    pub started: Instant,
    pub stats: Arc<SupervisorStats>,
    /// The `[emmg]` port's counters while it runs.
    emm_port: Mutex<Option<Arc<EmmMuxStats>>>,
}

impl Registry {
    pub fn new(stats: Arc<SupervisorStats>) -> Registry {
        Registry {
            channels: Mutex::new(Vec::new()),
            started: Instant::now(),
            stats,
            emm_port: Mutex::new(None),
        }
    }

    /// The `[emmg]` port whose counters monitors show (None: no port runs).
    pub fn set_emm_port(&self, stats: Option<Arc<EmmMuxStats>>) {
        *self.emm_port.lock().unwrap_or_else(|e| e.into_inner()) = stats;
    }

    /// The `[emmg]` port's counters, if it runs.
    pub fn emm_port(&self) -> Option<Arc<EmmMuxStats>> {
        self.emm_port
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<ChannelEntry>> {
        self.channels.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Change channel `name` (added if new).
    pub fn update(&self, name: &str, f: impl FnOnce(&mut ChannelEntry)) {
        let mut v = self.lock();
        let i = match v.iter().position(|c| c.name == name) {
            Some(i) => i,
            None => {
                v.push(ChannelEntry::new(name));
                v.len() - 1
            }
        };
        f(&mut v[i]);
    }

    /// Forget channel `name` (removed from the plan).
    pub fn remove(&self, name: &str) {
        self.lock().retain(|c| c.name != name);
    }

    /// Take a bitrate sample of every channel (once a second).
    pub fn sample(&self) {
        let now = Instant::now();
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        for c in self.lock().iter_mut() {
            c.sample(now, unix);
        }
    }

    /// Read every channel.
    pub fn with<R>(&self, f: impl FnOnce(&[ChannelEntry]) -> R) -> R {
        f(&self.lock())
    }
}
