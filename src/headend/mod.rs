//! The head-end: channels made from typed specs, run together in one process.
//!
//! - [`spec`]: [`ChannelSpec`], one channel's settings (what `castmux scramble`'s options say).
//! - [`file`]: the head-end file as written (`[emmg]`, `[[channel]]` in the typed or the
//!   `args = "…"` form) and [`HeadendPlan`], the file checked.
//! - [`channel`]: a spec made into its parts, run, reported.
//! - [`plane`]: the shared data plane (worker threads, epoll) for UDP channels.
//! - [`simulcrypt`]: a channel's ECMG links and EMMG<->MUX port, on the control plane.
//!
//! [`Headend::run`] starts the one control plane (SimulCrypt links, the shared EMMG port),
//! opens every channel, serves the UDP ones on the shared data plane and the others (files,
//! pipes, SRT; and a head-end of one channel) on threads of their own, and reports each. A channel that fails is logged
//! and reported; the others go on.

pub mod channel;
pub mod ecmg_spec;
pub mod error;
pub mod file;
pub mod plane;
pub mod simulcrypt;
pub mod spec;

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

pub use channel::{Channel, ChannelEnv, ChannelReport};
pub use ecmg_spec::EcmgSpec;
use error::ErrorChain;
pub use error::HeadendError;
pub use file::{ArgsValue, ChannelPlan, EmmgPlan, HeadendFile, HeadendPlan};
pub use plane::PlaneOptions;
pub use spec::ChannelSpec;

use crate::net::ControlPlane;
use simulcrypt::EmmPort;

/// Runs a [`HeadendPlan`].
#[derive(Debug)]
pub struct Headend {
    plane: PlaneOptions,
}

impl Headend {
    /// A head-end whose UDP channels share `plane`'s workers.
    pub fn new(plane: PlaneOptions) -> Headend {
        Headend { plane }
    }

    /// Run every channel of `plan` until each has ended or `stop` is set; the store is
    /// `db`. A channel that cannot start is reported with its error and the others run.
    pub fn run(
        &self,
        plan: HeadendPlan,
        db: &Path,
        stop: &Arc<AtomicBool>,
    ) -> Result<Vec<ChannelReport>, HeadendError> {
        let control = ControlPlane::start().map_err(|e| HeadendError::Failed {
            what: "starting the control-plane runtime".to_owned(),
            source: Box::new(e),
        })?;
        let res = self.run_on(&control, plan, db, stop);
        control.shutdown(Duration::from_secs(2));
        res
    }

    fn run_on(
        &self,
        control: &ControlPlane,
        plan: HeadendPlan,
        db: &Path,
        stop: &Arc<AtomicBool>,
    ) -> Result<Vec<ChannelReport>, HeadendError> {
        let mut port = None;
        let mut first_source = None;
        if let Some(e) = &plan.emmg {
            let (p, src) = EmmPort::start(control, e.listen, e.accept).map_err(|err| {
                HeadendError::Failed {
                    what: "[emmg] listen".to_owned(),
                    source: Box::new(err),
                }
            })?;
            port = Some(p);
            first_source = Some(src);
        }
        let emm_pid = plan.emmg.as_ref().map(|e| e.emm_pid);
        // one channel (`castmux scramble`): its caller prints its error, once; and it runs
        // on threads of its own, whose pipeline (input, cipher, output) spreads one fast
        // stream over up to three cores, where the shared plane gives it one
        let several = plan.channels.len() > 1;
        let log_failures = several;
        let mut reports = Vec::new();
        let mut on_plane = Vec::new();
        let mut own_threads = Vec::new();
        // every channel subscribes before any runs, so each gets every EMM from the start
        let mut to_open = Vec::with_capacity(plan.channels.len());
        for c in plan.channels {
            let emm = match (c.emm_clone, &port) {
                (true, Some(p)) => Some(
                    first_source
                        .take()
                        .unwrap_or_else(|| p.subscribers.subscribe()),
                ),
                _ => None,
            };
            to_open.push((c, emm));
        }
        for (name, opened) in open_all(to_open, db, control, emm_pid) {
            match opened {
                Ok(ch) if several && ch.is_udp() && !ch.writes_stdout() => on_plane.push(ch),
                Ok(ch) => own_threads.push(ch),
                Err(e) => {
                    if log_failures {
                        let span = tracing::info_span!("channel", name = %name);
                        let _enter = span.enter();
                        tracing::error!(error = %ErrorChain(&e), "channel failed");
                    }
                    reports.push(ChannelReport::failed(&name, e));
                }
            }
        }
        // the first source goes unused when no channel clones: dropping it unsubscribes
        drop(first_source);
        tracing::info!(
            channels = on_plane.len() + own_threads.len(),
            shared_plane = on_plane.len(),
            workers = self.plane.workers.min(on_plane.len()),
            "headend: running"
        );
        std::thread::scope(|scope| {
            let threads: Vec<_> = own_threads
                .into_iter()
                .map(|mut ch| {
                    let stop = Arc::clone(stop);
                    let name = ch.name().to_owned();
                    let t = std::thread::Builder::new()
                        .name(format!("channel-{name}"))
                        .spawn_scoped(scope, move || {
                            let span = tracing::info_span!("channel", name = %name);
                            let _enter = span.enter();
                            let end = ch.run(stop);
                            match &end {
                                Err(e) if log_failures && !e.is_stdout_closed() => {
                                    tracing::error!(error = %ErrorChain(e), "channel failed");
                                }
                                _ => {}
                            }
                            ch.finish(end)
                        });
                    t
                })
                .collect();
            for (ch, end) in plane::run(on_plane, &self.plane, stop, log_failures) {
                let span = tracing::info_span!("channel", name = %ch.name());
                let _enter = span.enter();
                reports.push(ch.finish(end));
            }
            for t in threads {
                match t.map(|t| t.join()) {
                    Ok(Ok(r)) => reports.push(r),
                    Ok(Err(_)) => tracing::error!("a channel thread panicked"),
                    Err(e) => tracing::error!(error = %e, "cannot start a channel thread"),
                }
            }
        });
        if let Some(p) = port {
            p.stop();
        }
        Ok(reports)
    }
}

/// Channels opened at once at most: opening one may wait on its ECMGs (channel setup, the
/// first ECM) or its store, so a head-end of hundreds does not start one after another.
const OPENERS: usize = 16;

/// Open every channel, [`OPENERS`] at a time; results in the plan's order.
fn open_all(
    to_open: Vec<(ChannelPlan, Option<crate::simulcrypt::EmmQueueSource>)>,
    db: &Path,
    control: &ControlPlane,
    emm_pid: Option<crate::ts::Pid>,
) -> Vec<(String, Result<Channel, HeadendError>)> {
    let indexed: Vec<_> = to_open
        .into_iter()
        .enumerate()
        .map(|(i, (c, emm))| (i, c, emm))
        .collect();
    let mut opened = in_threads(indexed, OPENERS, "castmux-open", |share| {
        share
            .into_iter()
            .map(|(i, c, emm)| {
                let span = tracing::info_span!("channel", name = %c.name);
                let _enter = span.enter();
                let env = ChannelEnv {
                    db,
                    control,
                    emm,
                    emm_pid,
                };
                let res = Channel::open(&c.name, &c.spec, env);
                (i, c.name, res)
            })
            .collect()
    });
    opened.sort_by_key(|o| o.0);
    opened
        .into_iter()
        .map(|(_, name, res)| (name, res))
        .collect()
}

/// Share `items` round-robin among at most `threads` scoped threads (`name-N`), run `work`
/// on each share and gather what they give back. The items of a thread that cannot start
/// or panics are lost with it, and that is logged.
pub(crate) fn in_threads<T: Send, R: Send>(
    items: Vec<T>,
    threads: usize,
    name: &str,
    work: impl Fn(Vec<T>) -> Vec<R> + Sync,
) -> Vec<R> {
    let n = threads.clamp(1, items.len().max(1));
    let mut shares: Vec<Vec<T>> = (0..n).map(|_| Vec::new()).collect();
    for (i, item) in items.into_iter().enumerate() {
        shares[i % n].push(item);
    }
    let work = &work;
    std::thread::scope(|scope| {
        let handles: Vec<_> = shares
            .into_iter()
            .enumerate()
            .map(|(k, share)| {
                std::thread::Builder::new()
                    .name(format!("{name}-{k}"))
                    .spawn_scoped(scope, move || work(share))
            })
            .collect();
        let mut out = Vec::new();
        for h in handles {
            match h.map(|h| h.join()) {
                Ok(Ok(v)) => out.extend(v),
                Ok(Err(_)) => {
                    tracing::error!(thread = name, "a thread panicked; its channels are lost")
                }
                Err(e) => tracing::error!(thread = name, error = %e, "cannot start a thread"),
            }
        }
        out
    })
}
