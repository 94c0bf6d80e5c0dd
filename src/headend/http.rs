//! The head-end's part of the HTTP API: `/metrics` (Prometheus text), the status of the
//! process and its channels, and the operator's commands (restart, enable, disable,
//! reload). Status and commands need the API key; `/metrics` is open, as scrapers expect
//! (keep the listener on localhost or a management network).
//!
//! Handlers read the [`Registry`] (a lock the data path never takes) and send commands to
//! the supervisor's event queue; none waits for a channel.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use super::status::{ChannelState, Registry};
use super::supervise::{Command, Event};
use crate::http::prom::{self, Kind, Text};
use crate::http::{require_key, ApiError, ApiState};
use crate::simulcrypt::mux_server::EmmClientCounts;
use crate::simulcrypt::EmmMuxStats;

/// What the head-end's handlers share.
#[derive(Clone)]
pub struct HeadendApi {
    registry: Arc<Registry>,
    events: Arc<Mutex<Sender<Event>>>,
    reload: Arc<AtomicBool>,
}

impl std::fmt::Debug for HeadendApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeadendApi").finish_non_exhaustive()
    }
}

impl HeadendApi {
    pub fn new(registry: Arc<Registry>, events: Sender<Event>, reload: Arc<AtomicBool>) -> Self {
        HeadendApi {
            registry,
            events: Arc::new(Mutex::new(events)),
            reload,
        }
    }
}

/// The routes, to merge into the server (`Http::merge`).
pub fn routes(api: ApiState, he: HeadendApi) -> Router {
    let keyed = Router::new()
        .route("/api/v1/status", get(status))
        .route("/api/v1/channels", get(channels))
        .route("/api/v1/channels/{name}", get(channel))
        .route("/api/v1/channels/{name}/restart", post(restart))
        .route("/api/v1/channels/{name}/enable", post(enable))
        .route("/api/v1/channels/{name}/disable", post(disable))
        .route("/api/v1/channels/{name}/input/{which}", post(switch_input))
        .route("/api/v1/reload", post(reload))
        .route_layer(axum::middleware::from_fn_with_state(api, require_key))
        .with_state(he.clone());
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(he)
        .merge(keyed)
}

async fn status(State(he): State<HeadendApi>) -> Response {
    let (channels, on_air, running) = he.registry.with(|c| {
        (
            c.len(),
            c.iter().filter(|e| e.on_air()).count(),
            c.iter()
                .filter(|e| e.state == ChannelState::Running)
                .count(),
        )
    });
    let s = &he.registry.stats;
    Json(serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_s": he.registry.started.elapsed().as_secs(),
        "channels": channels,
        "running": running,
        "on_air": on_air,
        "restarts": s.restarts.load(Relaxed),
        "reloads": s.reloads.load(Relaxed),
        "reloads_refused": s.reloads_refused.load(Relaxed),
    }))
    .into_response()
}

async fn channels(State(he): State<HeadendApi>) -> Response {
    let views: Vec<_> = he.registry.with(|c| c.iter().map(|e| e.view()).collect());
    Json(views).into_response()
}

async fn channel(State(he): State<HeadendApi>, Path(name): Path<String>) -> Response {
    let view = he
        .registry
        .with(|c| c.iter().find(|e| e.name == name).map(|e| e.view()));
    match view {
        Some(v) => Json(v).into_response(),
        None => no_channel(&name),
    }
}

fn no_channel(name: &str) -> Response {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "CHANNEL_NOT_FOUND",
        format!("no channel named {name:?}"),
    )
    .into_response()
}

/// Send `cmd` for channel `name` to the supervisor: 202 (it acts within 100 ms), or 404.
fn command(he: &HeadendApi, name: &str, cmd: Command) -> Response {
    if !he.registry.with(|c| c.iter().any(|e| e.name == name)) {
        return no_channel(name);
    }
    let sent = he
        .events
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send(Event::Control(cmd));
    match sent {
        Ok(()) => (
            StatusCode::ACCEPTED,
            Json(serde_json::json!({"channel": name, "accepted": true})),
        )
            .into_response(),
        Err(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "STOPPING",
            "the head-end is stopping",
        )
        .into_response(),
    }
}

async fn restart(State(he): State<HeadendApi>, Path(name): Path<String>) -> Response {
    command(&he, &name, Command::Restart(name.clone()))
}

async fn enable(State(he): State<HeadendApi>, Path(name): Path<String>) -> Response {
    command(&he, &name, Command::Enable(name.clone()))
}

async fn disable(State(he): State<HeadendApi>, Path(name): Path<String>) -> Response {
    command(&he, &name, Command::Disable(name.clone()))
}

/// Pin input `which` (0 is the primary) of a channel with backup inputs, or give the
/// choice back to the judges (`auto`). The data path acts when it next reads.
async fn switch_input(
    State(he): State<HeadendApi>,
    Path((name, which)): Path<(String, String)>,
) -> Response {
    let index = match which.as_str() {
        "auto" => None,
        k => match k.parse::<usize>() {
            Ok(k) => Some(k),
            Err(_) => {
                return ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "BAD_INPUT",
                    format!("{which:?}: give the input's index (0 is the primary) or auto"),
                )
                .into_response()
            }
        },
    };
    let found = he.registry.with(|c| {
        c.iter()
            .find(|e| e.name == name)
            .map(|e| e.live.as_ref().and_then(|l| l.inputs.clone()))
    });
    let inputs = match found {
        None => return no_channel(&name),
        Some(None) => {
            return ApiError::new(
                StatusCode::CONFLICT,
                "NO_BACKUP_INPUTS",
                format!(
                    "channel {name:?} is not running with backup inputs (give it backup = [...])"
                ),
            )
            .into_response()
        }
        Some(Some(i)) => i,
    };
    match inputs.request(index) {
        Ok(()) => (
            StatusCode::ACCEPTED,
            Json(serde_json::json!({
                "channel": name,
                "input": index.map_or_else(|| serde_json::json!("auto"), |k| serde_json::json!(k)),
                "accepted": true,
            })),
        )
            .into_response(),
        Err(e) => ApiError::new(StatusCode::BAD_REQUEST, "BAD_INPUT", e).into_response(),
    }
}

async fn reload(State(he): State<HeadendApi>) -> Response {
    he.reload.store(true, Relaxed);
    (
        StatusCode::ACCEPTED,
        Json(serde_json::json!({"reload": "accepted", "see": "the log, or /api/v1/status reloads and reloads_refused"})),
    )
        .into_response()
}

/// ECM response time buckets, seconds.
const ECM_BUCKETS: [f64; 10] = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

async fn metrics(State(he): State<HeadendApi>) -> Response {
    let text = render(&he.registry);
    ([(header::CONTENT_TYPE, prom::CONTENT_TYPE)], text).into_response()
}

/// The monitored channels' series (`monitor = true`): ETR 290 counts by indicator, ECM
/// interval, crypto period and EMM bitrate. A channel without a monitor has none of them.
fn render_monitors<'a>(
    t: &mut Text,
    channels: impl Iterator<Item = (&'a str, Option<&'a super::monitor::MonitorView>)>,
) {
    let monitored: Vec<_> = channels
        .filter_map(|(name, m)| m.map(|m| (name, m)))
        .collect();
    t.family(
        "castmux_channel_monitor_packets_total",
        Kind::Counter,
        "Output packets the channel's monitor analysed (this run).",
    );
    for (name, m) in &monitored {
        t.sample(
            "castmux_channel_monitor_packets_total",
            &[("channel", name)],
            m.packets as f64,
        );
    }
    t.family(
        "castmux_channel_etr290_errors_total",
        Kind::Counter,
        "ETR 290 priority 1 and 2 errors on the output, by indicator (TR 101 290 names).",
    );
    for (name, m) in &monitored {
        for i in &m.etr290.indicators {
            let priority = i.priority.to_string();
            t.sample(
                "castmux_channel_etr290_errors_total",
                &[
                    ("channel", name),
                    ("indicator", i.name),
                    ("priority", &priority),
                ],
                i.count as f64,
            );
        }
    }
    t.family(
        "castmux_channel_ecm_interval_max_seconds",
        Kind::Gauge,
        "Longest gap between two ECM sections on an ECM PID of the output (this run).",
    );
    for (name, m) in &monitored {
        for e in &m.ca.ecm {
            let pid = e.pid.to_string();
            t.sample(
                "castmux_channel_ecm_interval_max_seconds",
                &[("channel", name), ("ecm_pid", &pid)],
                e.max_interval_ms / 1000.0,
            );
        }
    }
    t.family(
        "castmux_channel_cw_period_seconds",
        Kind::Gauge,
        "Mean crypto period of a scrambled PID of the output: time between parity changes (this run).",
    );
    for (name, m) in &monitored {
        for c in &m.ca.cw {
            if let Some(mean) = c.mean_period_s {
                let pid = c.pid.to_string();
                t.sample(
                    "castmux_channel_cw_period_seconds",
                    &[("channel", name), ("pid", &pid)],
                    mean,
                );
            }
        }
    }
    t.family(
        "castmux_channel_cw_changes_total",
        Kind::Counter,
        "Parity changes (key switches) seen on a scrambled PID of the output; flat when the key is stuck.",
    );
    for (name, m) in &monitored {
        for c in &m.ca.cw {
            let pid = c.pid.to_string();
            t.sample(
                "castmux_channel_cw_changes_total",
                &[("channel", name), ("pid", &pid)],
                c.changes as f64,
            );
        }
    }
    t.family(
        "castmux_channel_emm_bitrate_bps",
        Kind::Gauge,
        "Bitrate of an EMM PID of the output over the last second, bits per second.",
    );
    for (name, m) in &monitored {
        for e in &m.ca.emm {
            if let Some(bps) = e.bitrate_bps {
                let pid = e.pid.to_string();
                t.sample(
                    "castmux_channel_emm_bitrate_bps",
                    &[("channel", name), ("emm_pid", &pid)],
                    bps as f64,
                );
            }
        }
    }
}

/// Every metric of the head-end, in the text format.
pub fn render(registry: &Registry) -> String {
    let mut t = Text::new();
    let s = &registry.stats;
    t.family(
        "castmux_headend_restarts_total",
        Kind::Counter,
        "Channels started again after a failure (all channels).",
    );
    t.sample(
        "castmux_headend_restarts_total",
        &[],
        s.restarts.load(Relaxed) as f64,
    );
    t.family(
        "castmux_reloads_total",
        Kind::Counter,
        "Configuration reloads, by result.",
    );
    t.sample(
        "castmux_reloads_total",
        &[("result", "applied")],
        s.reloads.load(Relaxed) as f64,
    );
    t.sample(
        "castmux_reloads_total",
        &[("result", "refused")],
        s.reloads_refused.load(Relaxed) as f64,
    );
    // HTTP-TS listeners: what no one channel's path can be blamed for
    let listeners = crate::io::http::listener_stats();
    for (name, help, f) in [
        (
            "castmux_http_listener_bad_requests_total",
            "Requests an HTTP-TS listener refused as malformed (400, 405, 431, 505).",
            (|l: &crate::io::http::ListenerSnapshot| l.bad_requests) as fn(&_) -> u64,
        ),
        (
            "castmux_http_listener_not_found_total",
            "Requests for a path no HTTP-TS output serves (404).",
            |l| l.not_found,
        ),
        (
            "castmux_http_listener_request_timeouts_total",
            "Connections closed for sending no complete request in time.",
            |l| l.request_timeouts,
        ),
        (
            "castmux_http_listener_refused_total",
            "Connections refused because the listener's connection cap was reached.",
            |l| l.refused_full,
        ),
    ] {
        t.family(name, Kind::Counter, help);
        for l in &listeners {
            t.sample(name, &[("listen", &l.listen)], f(l) as f64);
        }
    }
    registry.with(|channels| {
        let views: Vec<_> = channels.iter().map(|c| (c, c.view())).collect();
        let gauge = |t: &mut Text, name: &str, help: &str, v: &dyn Fn(usize) -> f64| {
            t.family(name, Kind::Gauge, help);
            for (i, (_, view)) in views.iter().enumerate() {
                t.sample(name, &[("channel", &view.name)], v(i));
            }
        };
        let counter = |t: &mut Text, name: &str, help: &str, v: &dyn Fn(usize) -> u64| {
            t.family(name, Kind::Counter, help);
            for (i, (_, view)) in views.iter().enumerate() {
                t.sample(name, &[("channel", &view.name)], v(i) as f64);
            }
        };
        gauge(&mut t, "castmux_channel_up", "1 while the channel runs.", &|i| {
            f64::from(u8::from(views[i].1.state == ChannelState::Running))
        });
        gauge(
            &mut t,
            "castmux_channel_on_air",
            "1 while the channel runs with packets in and out and no service held back.",
            &|i| f64::from(u8::from(views[i].1.on_air)),
        );
        gauge(
            &mut t,
            "castmux_channel_input_bitrate_bps",
            "Input bitrate over the last second, bits per second.",
            &|i| views[i].0.in_bps,
        );
        gauge(
            &mut t,
            "castmux_channel_output_bitrate_bps",
            "Output bitrate over the last second, bits per second.",
            &|i| views[i].0.out_bps,
        );
        gauge(
            &mut t,
            "castmux_channel_scrambled_ratio",
            "Payload packets of the scrambled services that went out scrambled, over those and the ones held back.",
            &|i| views[i].1.scrambled_ratio,
        );
        gauge(
            &mut t,
            "castmux_channel_crypto_period",
            "The crypto period in force (its number).",
            &|i| views[i].1.crypto_period as f64,
        );
        let live = |i: usize| views[i].0.live.as_deref();
        let lc = |i: usize, f: fn(&crate::scramble::stats::LiveCounters) -> u64| {
            live(i).map_or(0, |l| f(&l.counters))
        };
        counter(
            &mut t,
            "castmux_channel_input_packets_total",
            "TS packets read (this run of the channel).",
            &|i| lc(i, |c| c.packets_in.load(Relaxed)),
        );
        counter(
            &mut t,
            "castmux_channel_output_packets_total",
            "TS packets written (this run of the channel).",
            &|i| lc(i, |c| c.packets_out.load(Relaxed)),
        );
        counter(
            &mut t,
            "castmux_channel_scrambled_packets_total",
            "ES payload packets scrambled.",
            &|i| lc(i, |c| c.scrambled.load(Relaxed)),
        );
        counter(
            &mut t,
            "castmux_channel_held_packets_total",
            "ES packets of scrambled services held back for want of an ECM.",
            &|i| lc(i, |c| c.held_before_ecm.load(Relaxed)),
        );
        counter(
            &mut t,
            "castmux_channel_cc_errors_total",
            "Continuity counter errors in the input.",
            &|i| lc(i, |c| c.cc_errors.load(Relaxed)),
        );
        counter(
            &mut t,
            "castmux_channel_sync_losses_total",
            "Input sync losses.",
            &|i| live(i).map_or(0, |l| l.input.sync_losses.load(Relaxed)),
        );
        counter(
            &mut t,
            "castmux_channel_input_drops_total",
            "Input datagrams dropped for a full queue.",
            &|i| live(i).map_or(0, |l| l.input.queue_drops.load(Relaxed)),
        );
        counter(
            &mut t,
            "castmux_channel_output_errors_total",
            "Output send errors.",
            &|i| {
                live(i).map_or(0, |l| {
                    l.outputs
                        .iter()
                        .map(|o| o.1.send_errors.load(Relaxed))
                        .sum()
                })
            },
        );
        gauge(
            &mut t,
            "castmux_channel_http_clients",
            "Clients reading the channel's HTTP-TS outputs now.",
            &|i| views[i].1.output.http_clients as f64,
        );
        counter(
            &mut t,
            "castmux_channel_http_clients_dropped_slow_total",
            "HTTP-TS clients dropped for reading slower than the stream.",
            &|i| views[i].1.output.http_clients_dropped_slow,
        );
        counter(
            &mut t,
            "castmux_channel_http_clients_refused_total",
            "HTTP-TS clients refused with 503 because max_clients were connected.",
            &|i| views[i].1.output.http_clients_refused,
        );
        counter(
            &mut t,
            "castmux_channel_input_reconnects_total",
            "Times an HTTP input connected again after its server closed or failed.",
            &|i| views[i].1.input.reconnects,
        );
        counter(
            &mut t,
            "castmux_channel_key_switches_total",
            "Crypto periods started (CW switches).",
            &|i| lc(i, |c| c.key_switches.load(Relaxed)),
        );
        counter(
            &mut t,
            "castmux_channel_degraded_holds_total",
            "Key switches found due and held (degraded mode).",
            &|i| lc(i, |c| c.degraded_holds.load(Relaxed)),
        );
        counter(
            &mut t,
            "castmux_channel_ecm_failures_total",
            "ECM generator failures (late or refused ECMs).",
            &|i| lc(i, |c| c.ecm_failures.load(Relaxed)),
        );
        counter(
            &mut t,
            "castmux_channel_lagging_cas_switches_total",
            "Key switches made past a CAS whose ECM lacked the new key (policy any).",
            &|i| lc(i, |c| c.lagging_cas_switches.load(Relaxed)),
        );
        counter(
            &mut t,
            "castmux_channel_restarts_total",
            "Times this channel was started again.",
            &|i| views[i].1.restarts,
        );
        counter(
            &mut t,
            "castmux_channel_emm_packets_total",
            "EMM packets queued for the EMM PID.",
            &|i| views[i].1.emm.packets,
        );
        t.family(
            "castmux_channel_emm_clone_dropped_total",
            Kind::Counter,
            "Cloned EMM chunks dropped for the channel's full queue (channels that clone the [emmg] port's EMMs).",
        );
        for (_, v) in &views {
            if let Some(d) = v.emm.clone_dropped {
                t.sample("castmux_channel_emm_clone_dropped_total", &[("channel", &v.name)], d as f64);
            }
        }
        // constant-bitrate outputs (`cbr`)
        use crate::mux::cbr::CbrSnapshot;
        let cbr: Vec<(&str, CbrSnapshot)> = views
            .iter()
            .filter_map(|(_, v)| v.output.cbr.map(|c| (v.name.as_str(), c)))
            .collect();
        type Family = (&'static str, Kind, &'static str, fn(&CbrSnapshot) -> u64);
        let cbr_families: [Family; 8] = [
            ("castmux_channel_cbr_bitrate_bits", Kind::Gauge, "The constant bitrate the output is sent at, bit/s.", |c| c.bitrate),
            ("castmux_channel_cbr_null_packets_total", Kind::Counter, "Null packets put in empty slots of the constant-bitrate output.", |c| c.nulls),
            ("castmux_channel_cbr_input_null_packets_total", Kind::Counter, "Null packets of the stream taken out before the constant-bitrate schedule.", |c| c.input_nulls),
            ("castmux_channel_cbr_pcr_restamped_total", Kind::Counter, "PCRs rewritten for their slot in the constant-bitrate output.", |c| c.pcr_restamped),
            ("castmux_channel_cbr_pcr_restarts_total", Kind::Counter, "PCR clocks of the constant-bitrate output started again (a jump, a discontinuity, a stall).", |c| c.pcr_restarts),
            ("castmux_channel_cbr_dating_restarts_total", Kind::Counter, "Times the constant-bitrate output's dating clock started again (a PCR jump or discontinuity, a stalled sender).", |c| c.dating_restarts),
            ("castmux_channel_cbr_pcr_inserted_total", Kind::Counter, "Adaptation-only PCR packets the constant-bitrate output put in free slots (a PCR PID quiet for 35 ms).", |c| c.pcr_inserted),
            ("castmux_channel_cbr_pcr_unfollowed_total", Kind::Counter, "PCRs passed on unchanged (more PCR PIDs than the constant-bitrate output follows).", |c| c.pcr_unfollowed),
        ];
        for (name, kind, help, get) in cbr_families {
            t.family(name, kind, help);
            for (ch, c) in &cbr {
                t.sample(name, &[("channel", ch)], get(c) as f64);
            }
        }
        t.family(
            "castmux_channel_cbr_dropped_total",
            Kind::Counter,
            "Packets the constant-bitrate output dropped: over the rate for longer than cbr_max_delay (late) or with its queue full (full).",
        );
        for (ch, c) in &cbr {
            for (reason, n) in [("late", c.dropped_late), ("full", c.dropped_full)] {
                t.sample("castmux_channel_cbr_dropped_total", &[("channel", ch), ("reason", reason)], n as f64);
            }
        }
        t.family(
            "castmux_channel_active_input",
            Kind::Gauge,
            "1 for the input the channel takes its packets from.",
        );
        for (_, v) in &views {
            if !v.input.inputs.is_empty() {
                // every input of a channel with backups, 1 for the one in use
                for i in &v.input.inputs {
                    t.sample(
                        "castmux_channel_active_input",
                        &[("channel", &v.name), ("input", &i.url)],
                        if i.active { 1.0 } else { 0.0 },
                    );
                }
            } else if !v.input.url.is_empty() {
                t.sample(
                    "castmux_channel_active_input",
                    &[("channel", &v.name), ("input", &v.input.url)],
                    1.0,
                );
            }
        }
        t.family(
            "castmux_channel_input_on_air",
            Kind::Gauge,
            "1 for each input of a channel with backups that is judged on air.",
        );
        for (_, v) in &views {
            for i in &v.input.inputs {
                t.sample(
                    "castmux_channel_input_on_air",
                    &[("channel", &v.name), ("input", &i.url)],
                    if i.on_air { 1.0 } else { 0.0 },
                );
            }
        }
        t.family(
            "castmux_channel_input_switches_total",
            Kind::Counter,
            "Input switches of a channel with backups (automatic and manual).",
        );
        for (_, v) in &views {
            if let Some(n) = v.input.switches {
                t.sample("castmux_channel_input_switches_total", &[("channel", &v.name)], n as f64);
            }
        }
        t.family(
            "castmux_channel_input_unmapped_dropped_total",
            Kind::Counter,
            "Packets of the active input with no place in the channel's numbering (a channel with backups).",
        );
        for (_, v) in &views {
            if let Some(n) = v.input.unmapped_dropped {
                t.sample(
                    "castmux_channel_input_unmapped_dropped_total",
                    &[("channel", &v.name)],
                    n as f64,
                );
            }
        }
        // an MPTS channel's programs
        for (name, help, get) in [
            (
                "castmux_channel_program_packets_total",
                "Packets an MPTS channel took for the program from its input.",
                (|p| p.packets) as fn(&super::status::MptsProgramView) -> u64,
            ),
            (
                "castmux_channel_program_dropped_total",
                "Packets of an MPTS channel's program dropped (no room in the batch).",
                |p| p.dropped,
            ),
            (
                "castmux_channel_program_psi_regenerated_total",
                "New versions of an MPTS channel's program's PMT (its input's PMT changed).",
                |p| p.psi_regenerated,
            ),
        ] {
            t.family(name, Kind::Counter, help);
            for (_, v) in &views {
                for (k, p) in v.input.programs.iter().enumerate() {
                    let index = (k + 1).to_string();
                    let pnr = p.pnr.to_string();
                    t.sample(
                        name,
                        &[
                            ("channel", &v.name),
                            ("program", &index),
                            ("pnr", &pnr),
                            ("input", &p.input),
                        ],
                        get(p) as f64,
                    );
                }
            }
        }
        t.family(
            "castmux_channel_psi_dropped_total",
            Kind::Counter,
            "PSI/SI packets an MPTS channel made (PAT, PMT, SDT, NIT, TDT, TOT) that found no room in the batch.",
        );
        for (_, v) in &views {
            if let Some(n) = v.input.psi_dropped {
                t.sample(
                    "castmux_channel_psi_dropped_total",
                    &[("channel", &v.name)],
                    n as f64,
                );
            }
        }
        t.family(
            "castmux_channel_input_not_taken_total",
            Kind::Counter,
            "Packets of an MPTS channel's input on PIDs the multiplex does not take (other programs, its PSI/SI).",
        );
        for (_, v) in &views {
            for (url, n) in &v.input.not_taken {
                t.sample(
                    "castmux_channel_input_not_taken_total",
                    &[("channel", &v.name), ("input", url)],
                    *n as f64,
                );
            }
        }
        // the built-in CAS's store follower
        t.family(
            "castmux_store_follower_age_seconds",
            Kind::Gauge,
            "Seconds since the channel's built-in CAS last read the card store whole.",
        );
        for (_, v) in &views {
            if let Some(st) = &v.store {
                t.sample(
                    "castmux_store_follower_age_seconds",
                    &[("channel", &v.name)],
                    st.age_s.unwrap_or(f64::INFINITY),
                );
            }
        }
        t.family(
            "castmux_store_follower_errors_total",
            Kind::Counter,
            "Card store reads that failed (the keys and cards loaded stayed on air).",
        );
        for (_, v) in &views {
            if let Some(st) = &v.store {
                t.sample("castmux_store_follower_errors_total", &[("channel", &v.name)], st.errors as f64);
            }
        }
        // per CA system
        t.family(
            "castmux_ecm_age_seconds",
            Kind::Gauge,
            "Seconds since the ECM content of a CA system changed.",
        );
        for (c, view) in &views {
            let Some(l) = c.live.as_deref() else { continue };
            for ((ca, pid), age) in l.ca_systems.iter().zip(&view.ecm_age_s) {
                let (ca, pid) = (format!("{ca:04X}"), pid.to_string());
                let labels = [
                    ("channel", view.name.as_str()),
                    ("ca_system_id", &ca),
                    ("ecm_pid", &pid),
                ];
                t.sample(
                    "castmux_ecm_age_seconds",
                    &labels,
                    age.unwrap_or(f64::INFINITY),
                );
            }
        }
        render_monitors(&mut t, views.iter().map(|(_, v)| (v.name.as_str(), v.monitor.as_ref())));
        // per ECMG link
        let links: Vec<_> = views
            .iter()
            .filter_map(|(c, v)| c.live.as_deref().map(|l| (v.name.as_str(), l)))
            .flat_map(|(name, l)| l.ecmgs.iter().map(move |g| (name, g)))
            .collect();
        t.family(
            "castmux_ecmg_link_up",
            Kind::Gauge,
            "1 while the ECMG channel and stream are set up.",
        );
        for (name, g) in &links {
            t.sample(
                "castmux_ecmg_link_up",
                &[("channel", name), ("ecmg", g.addr()), ("active", g.active_addr())],
                f64::from(u8::from(g.is_connected())),
            );
        }
        let link_counter = |t: &mut Text,
                            name: &str,
                            help: &str,
                            f: fn(&crate::simulcrypt::ScsStats) -> u64| {
            t.family(name, Kind::Counter, help);
            for (ch, g) in &links {
                t.sample(name, &[("channel", ch), ("ecmg", g.addr())], f(g.stats()) as f64);
            }
        };
        link_counter(&mut t, "castmux_ecmg_link_failures_total", "ECMG connections lost or refused.", |s| s.link_failures.load(Relaxed));
        link_counter(&mut t, "castmux_ecmg_failovers_total", "Links moved to the next ECMG of the list.", |s| s.failovers.load(Relaxed));
        link_counter(&mut t, "castmux_ecmg_late_ecms_total", "ECM responses after max_comp_time.", |s| s.late.load(Relaxed));
        link_counter(&mut t, "castmux_ecmg_timeouts_total", "CW provisions with no answer in time.", |s| s.timeouts.load(Relaxed));
        link_counter(&mut t, "castmux_ecmg_refused_total", "CW provisions the ECMG answered with an error.", |s| s.refused.load(Relaxed));
        link_counter(&mut t, "castmux_ecmg_ecms_received_total", "ECM responses accepted.", |s| s.ecms_received.load(Relaxed));
        t.family(
            "castmux_ecmg_response_seconds",
            Kind::Histogram,
            "CW_provision to ECM_response time.",
        );
        for (ch, g) in &links {
            let h = g.latency();
            t.histogram_us(
                "castmux_ecmg_response_seconds",
                &[("channel", ch), ("ecmg", g.addr())],
                &h,
                &ECM_BUCKETS,
            );
        }
    });
    if let Some(port) = registry.emm_port() {
        emm_port(&mut t, &port);
    }
    t.process();
    t.finish()
}

/// The `[emmg]` port's families: one port for every cloning channel, so no channel label,
/// and per EMMG client. Over-bandwidth drops are the EMMG's fault (it sent above its
/// allocation); queue-full drops are a channel's (it fell behind); an operator needs the
/// two apart.
fn emm_port(t: &mut Text, s: &EmmMuxStats) {
    let one = |t: &mut Text, name: &str, help: &str, v: &AtomicU64| {
        t.family(name, Kind::Counter, help);
        t.sample(name, &[], v.load(Relaxed) as f64);
    };
    one(
        t,
        "castmux_emmg_port_data_provisions_total",
        "data_provision messages taken on the [emmg] port (TCP and UDP).",
        &s.data_provisions,
    );
    one(
        t,
        "castmux_emmg_port_emms_total",
        "EMM chunks accepted and queued for the cloning channels (counted once).",
        &s.queued,
    );
    one(
        t,
        "castmux_emmg_port_emm_bytes_total",
        "Bytes of the EMM chunks accepted.",
        &s.queued_bytes,
    );
    t.family(
        "castmux_emmg_port_dropped_total",
        Kind::Counter,
        "EMMs dropped: datagrams over the stream's allocated bandwidth, copies refused by a channel's full queue, chunks with no channel to take them.",
    );
    for (reason, v) in [
        ("over_bandwidth", &s.dropped_over_bandwidth),
        ("queue_full", &s.dropped_queue_full),
        ("no_subscriber", &s.dropped_no_subscriber),
    ] {
        t.sample(
            "castmux_emmg_port_dropped_total",
            &[("reason", reason)],
            v.load(Relaxed) as f64,
        );
    }
    one(
        t,
        "castmux_emmg_port_rejected_total",
        "Datagrams rejected (not EMM sections or whole packets, unknown stream).",
        &s.rejected,
    );
    one(
        t,
        "castmux_emmg_port_errors_sent_total",
        "channel_error and stream_error messages sent to EMMGs.",
        &s.errors_sent,
    );
    let a = s.accept.snapshot();
    t.family(
        "castmux_emmg_port_connections_total",
        Kind::Counter,
        "Connections to the [emmg] port, by result.",
    );
    for (result, n) in [
        ("accepted", a.accepted),
        ("refused_full", a.refused_full),
        ("refused_per_address", a.refused_per_address),
        ("handshake_timeout", a.handshake_timeouts),
    ] {
        t.sample(
            "castmux_emmg_port_connections_total",
            &[("result", result)],
            n as f64,
        );
    }
    emm_clients(t, s);
}

/// Per EMMG client (client_id): EMMs taken within its bandwidth and dropped over it.
fn emm_clients(t: &mut Text, s: &EmmMuxStats) {
    let clients = s.clients.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let rows: Vec<(String, EmmClientCounts)> = clients
        .by_id
        .iter()
        .map(|(id, c)| (format!("{id:08X}"), *c))
        .chain(
            (clients.others != EmmClientCounts::default())
                .then(|| ("other".to_owned(), clients.others)),
        )
        .collect();
    type Field = fn(&EmmClientCounts) -> u64;
    let families: [(&str, &str, Field); 4] = [
        ("castmux_emmg_client_emm_bytes_total", "EMM bytes (as they take on air) taken from an EMMG client within its bandwidth.", |c| c.bytes),
        ("castmux_emmg_client_emm_datagrams_total", "EMM datagrams taken from an EMMG client within its bandwidth.", |c| c.datagrams),
        ("castmux_emmg_client_dropped_total", "EMM datagrams of an EMMG client dropped for exceeding its allocated bandwidth.", |c| c.dropped),
        ("castmux_emmg_client_dropped_bytes_total", "EMM bytes (as they would take on air) of an EMMG client dropped for exceeding its allocated bandwidth.", |c| c.dropped_bytes),
    ];
    for (name, help, f) in families {
        t.family(name, Kind::Counter, help);
        for (id, c) in &rows {
            t.sample(name, &[("client_id", id)], f(c) as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_emmg_port_counters_are_metrics_only_when_there_is_a_port() {
        let registry = Registry::new(Arc::default());
        assert!(!render(&registry).contains("castmux_emmg_port"));
        let stats = Arc::new(EmmMuxStats::default());
        stats.dropped_over_bandwidth.store(7, Relaxed);
        stats.dropped_queue_full.store(2, Relaxed);
        stats.queued.store(40, Relaxed);
        registry.set_emm_port(Some(Arc::clone(&stats)));
        let text = render(&registry);
        for line in [
            "castmux_emmg_port_dropped_total{reason=\"over_bandwidth\"} 7",
            "castmux_emmg_port_dropped_total{reason=\"queue_full\"} 2",
            "castmux_emmg_port_dropped_total{reason=\"no_subscriber\"} 0",
            "castmux_emmg_port_emms_total 40",
            "# TYPE castmux_emmg_port_rejected_total counter",
        ] {
            assert!(text.lines().any(|l| l == line), "{line}\n{text}");
        }
        // live: the next scrape reads the counters again
        stats.dropped_over_bandwidth.store(9, Relaxed);
        assert!(render(&registry)
            .contains("castmux_emmg_port_dropped_total{reason=\"over_bandwidth\"} 9"));
        registry.set_emm_port(None);
        assert!(!render(&registry).contains("castmux_emmg_port"));
    }
}
