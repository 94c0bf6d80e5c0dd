//! The head-end's supervisor: it starts every channel of the plan, restarts one that fails
//! (backoff 1 s doubling to 30 s, back to 1 s after a minute of health), and applies a
//! reloaded plan (new channels start, removed ones stop, changed ones restart alone, the
//! others are not touched). The others never notice: each channel opens on an opener
//! thread, runs on the shared data plane or on threads of its own, and comes back here
//! when it ends.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::channel::{Channel, ChannelEnv, ChannelReport};
use super::error::{ErrorChain, HeadendError};
use super::file::{ChannelPlan, HeadendPlan};
use super::notify::Notifier;
use super::plane::{Ended, Plane, PlaneOptions};
use super::simulcrypt::EmmPort;
use super::status::{ChannelState, Registry};
use crate::net::ControlPlane;
use crate::scramble::{RunEnd, ScrambleError};
use crate::simulcrypt::EmmQueueSource;
use crate::ts::Pid;

/// First delay before a failed channel is started again.
pub const BACKOFF_MIN: Duration = Duration::from_secs(1);
/// Longest delay between restarts.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A channel that ran this long before failing starts again after [`BACKOFF_MIN`].
pub const HEALTHY_AFTER: Duration = Duration::from_secs(60);
/// Channels opened at once at most: opening one may wait on its ECMGs (channel setup, the
/// first ECM) or its store, so a head-end of hundreds does not start one after another.
const OPENERS: usize = 16;
/// The supervisor's longest sleep (restarts due, reload and stop flags, watchdog).
const TICK: Duration = Duration::from_millis(100);

/// What the process asks of a running head-end, from signals (and later HTTP).
#[derive(Debug, Clone, Default)]
pub struct Controls {
    /// Stop every channel and return.
    pub stop: Arc<AtomicBool>,
    /// Read the plan again and apply what changed.
    pub reload: Arc<AtomicBool>,
}

/// Reads the plan again, for a reload.
pub type Reloader<'a> = &'a (dyn Fn() -> Result<HeadendPlan, HeadendError> + Sync);

/// The head-end's counters.
#[derive(Debug, Default)]
pub struct SupervisorStats {
    /// Channels started again after a failure.
    pub restarts: AtomicU64,
    /// Reloads applied.
    pub reloads: AtomicU64,
    /// Reloads refused (a bad file): the running set stayed as it was.
    pub reloads_refused: AtomicU64,
}

/// What the supervisor's threads (and the operator) tell it.
pub enum Event {
    #[doc(hidden)]
    Opened {
        id: u64,
        res: Result<Channel, HeadendError>,
    },
    #[doc(hidden)]
    Ended(Ended),
    /// The operator asks (HTTP API).
    Control(Command),
}

/// What an operator can ask of a running head-end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Close the channel and open it again now (its backoff starts over).
    Restart(String),
    /// Stop the channel and keep it stopped (until enabled or the head-end restarts).
    Disable(String),
    /// Start a disabled channel.
    Enable(String),
}

/// A channel to open: its run id, its plan and the EMMs it clones.
struct Job {
    id: u64,
    plan: ChannelPlan,
    emm: Option<EmmQueueSource>,
}

/// One channel of the plan, across its runs.
struct Entry {
    plan: ChannelPlan,
    /// The run opening or running now.
    run: Option<u64>,
    /// Where that run is, once it runs.
    place: Option<Place>,
    /// When a failed channel starts again.
    retry_at: Option<Instant>,
    backoff: Duration,
    started: Option<Instant>,
    restarts: u64,
    /// Stopping for good (removed from the plan).
    removed: bool,
    /// The plan changed: open this one once the running one has stopped.
    replace: Option<ChannelPlan>,
    /// The last run's report.
    report: Option<ChannelReport>,
    /// Turned off by the operator: not started again until enabled.
    disabled: bool,
}

enum Place {
    Plane,
    Own(Arc<AtomicBool>),
}

impl Entry {
    fn new(plan: ChannelPlan) -> Entry {
        Entry {
            plan,
            run: None,
            place: None,
            retry_at: None,
            backoff: BACKOFF_MIN,
            started: None,
            restarts: 0,
            removed: false,
            replace: None,
            report: None,
            disabled: false,
        }
    }

    /// Whether it has nothing more to do (ended for good).
    fn idle(&self) -> bool {
        self.run.is_none() && self.retry_at.is_none()
    }
}

/// Whether retrying cannot help: the spec asks for something that cannot be.
fn permanent(e: &HeadendError) -> bool {
    matches!(
        e,
        HeadendError::Config(_) | HeadendError::Scramble(ScrambleError::Config(_))
    )
}

/// Everything one supervised run borrows.
pub(crate) struct Supervisor<'a> {
    pub registry: &'a Arc<Registry>,
    pub db: &'a crate::cas::store::StoreLocation,
    pub control: &'a ControlPlane,
    pub plane_opts: &'a PlaneOptions,
    pub controls: &'a Controls,
    pub reloader: Option<Reloader<'a>>,
    pub stats: &'a SupervisorStats,
}

impl Supervisor<'_> {
    /// Run `plan` until every channel has ended for good, or the stop control is set.
    pub(crate) fn run(
        &self,
        mut plan: HeadendPlan,
        port: Option<&EmmPort>,
        mut first_source: Option<EmmQueueSource>,
        (events_tx, events): (Sender<Event>, Receiver<Event>),
    ) -> Result<Vec<ChannelReport>, HeadendError> {
        let emm_pid = plan.emmg.as_ref().map(|e| e.emm_pid);
        let log_failures = plan.shared_plane;
        let plane_stop = Arc::new(AtomicBool::new(false));
        let mut plane = if plan.shared_plane {
            Some(Plane::start(
                self.plane_opts,
                &plane_stop,
                log_failures,
                events_tx.clone(),
            )?)
        } else {
            None
        };
        let (jobs_tx, jobs_rx) = std::sync::mpsc::channel::<Job>();
        let jobs_rx = Mutex::new(jobs_rx);
        let notifier = Notifier::from_env();
        let reports = std::thread::scope(|scope| {
            for k in 0..OPENERS.min(plan.channels.len().max(1)) {
                let (jobs, tx) = (&jobs_rx, events_tx.clone());
                let spawned = std::thread::Builder::new()
                    .name(format!("castmux-open-{k}"))
                    .spawn_scoped(scope, move || self.opener(jobs, &tx, emm_pid));
                if let Err(e) = spawned {
                    tracing::error!(error = %e, "cannot start a channel opener thread");
                }
            }
            let mut run = Run {
                sup: self,
                entries: plan.channels.drain(..).map(Entry::new).collect(),
                next_id: 0,
                jobs: jobs_tx,
                events_tx: events_tx.clone(),
                plane: plane.as_mut(),
                port,
                restart: plan.restart,
                log_failures,
                stopping: false,
                emmg: plan.emmg.clone(),
                http: plan.http.clone(),
            };
            for i in 0..run.entries.len() {
                let emm = first_source
                    .take()
                    .filter(|_| run.entries[i].plan.emm_clone);
                run.launch(i, emm, scope);
            }
            drop(first_source.take());
            run.supervise(&events, scope, &notifier, &plane_stop);
            drop(run.jobs);
            run.entries
                .into_iter()
                .filter_map(|e| e.report)
                .collect::<Vec<_>>()
        });
        plane_stop.store(true, Ordering::Relaxed);
        if let Some(p) = plane {
            p.join();
        }
        notifier.send("STOPPING=1");
        Ok(reports)
    }

    /// An opener thread: open each job's channel and say how it went.
    fn opener(&self, jobs: &Mutex<Receiver<Job>>, tx: &Sender<Event>, emm_pid: Option<Pid>) {
        loop {
            let job = match jobs.lock().unwrap_or_else(|e| e.into_inner()).recv() {
                Ok(j) => j,
                Err(_) => return,
            };
            let span = tracing::info_span!("channel", name = %job.plan.name);
            let _enter = span.enter();
            let env = ChannelEnv {
                db: self.db,
                control: self.control,
                emm: job.emm,
                emm_pid,
            };
            let res = Channel::open(&job.plan.name, &job.plan.spec, env);
            if tx.send(Event::Opened { id: job.id, res }).is_err() {
                return;
            }
        }
    }
}

/// The state of one supervised run.
struct Run<'s, 'a> {
    sup: &'s Supervisor<'a>,
    entries: Vec<Entry>,
    next_id: u64,
    jobs: Sender<Job>,
    events_tx: Sender<Event>,
    plane: Option<&'s mut Plane>,
    port: Option<&'s EmmPort>,
    restart: bool,
    log_failures: bool,
    stopping: bool,
    emmg: Option<super::file::EmmgPlan>,
    http: Option<super::file::HttpPlan>,
}

impl<'s, 'a> Run<'s, 'a> {
    fn by_run(&self, id: u64) -> Option<usize> {
        self.entries.iter().position(|e| e.run == Some(id))
    }

    /// Start opening entry `i` (with `emm`, or a new subscription to the EMMG port).
    fn launch<'scope>(
        &mut self,
        i: usize,
        emm: Option<EmmQueueSource>,
        _scope: &'scope std::thread::Scope<'scope, '_>,
    ) {
        let id = self.next_id;
        self.next_id += 1;
        let e = &mut self.entries[i];
        e.run = Some(id);
        e.retry_at = None;
        let restarts = e.restarts;
        self.sup.registry.update(&e.plan.name, |c| {
            c.state = if restarts == 0 {
                ChannelState::Starting
            } else {
                ChannelState::Restarting
            };
            c.restarts = restarts;
        });
        let emm = match (e.plan.emm_clone, emm, self.port) {
            (false, _, _) => None,
            (true, Some(src), _) => Some(src),
            (true, None, Some(p)) => Some(p.subscribers.subscribe()),
            (true, None, None) => None,
        };
        let job = Job {
            id,
            plan: e.plan.clone(),
            emm,
        };
        if self.jobs.send(job).is_err() {
            tracing::error!(channel = %e.plan.name, "no channel opener is running");
            e.run = None;
        }
    }

    fn supervise<'scope, 'env>(
        &mut self,
        events: &Receiver<Event>,
        scope: &'scope std::thread::Scope<'scope, 'env>,
        notifier: &Notifier,
        plane_stop: &Arc<AtomicBool>,
    ) {
        let mut ready_sent = false;
        let mut last_watchdog = Instant::now();
        let mut last_sample = Instant::now();
        loop {
            if last_sample.elapsed() >= Duration::from_secs(1) {
                last_sample = Instant::now();
                self.sup.registry.sample();
            }
            if !self.stopping && self.sup.controls.stop.load(Ordering::Relaxed) {
                self.stopping = true;
                tracing::info!("headend: stopping every channel");
                plane_stop.store(true, Ordering::Relaxed);
                for e in &mut self.entries {
                    e.retry_at = None;
                    if let Some(Place::Own(stop)) = &e.place {
                        stop.store(true, Ordering::Relaxed);
                    }
                }
            }
            if !self.stopping && self.sup.controls.reload.swap(false, Ordering::Relaxed) {
                self.reload(scope);
            }
            // a disabled channel waits for the operator: the head-end runs on for it
            if self.entries.iter().all(Entry::idle) && !self.entries.iter().any(|e| e.disabled) {
                return;
            }
            let now = Instant::now();
            if !self.stopping {
                for i in 0..self.entries.len() {
                    if self.entries[i].retry_at.is_some_and(|t| t <= now) {
                        let e = &mut self.entries[i];
                        e.restarts += 1;
                        self.sup.stats.restarts.fetch_add(1, Ordering::Relaxed);
                        let span = tracing::info_span!("channel", name = %e.plan.name);
                        let _enter = span.enter();
                        tracing::info!(restarts = e.restarts, "channel restarting");
                        drop(_enter);
                        self.launch(i, None, scope);
                    }
                }
            }
            if !ready_sent
                && self
                    .entries
                    .iter()
                    .all(|e| e.run.is_none() || e.place.is_some())
            {
                ready_sent = true;
                let on_plane = self
                    .entries
                    .iter()
                    .filter(|e| matches!(e.place, Some(Place::Plane)))
                    .count();
                // the line a script (or a test) waits for: every channel has opened or failed
                tracing::info!(
                    channels = self.entries.iter().filter(|e| e.place.is_some()).count(),
                    shared_plane = on_plane,
                    failed = self.entries.iter().filter(|e| e.place.is_none()).count(),
                    "headend: running"
                );
                notifier.send(&format!("READY=1\nSTATUS={}", self.status()));
            }
            if notifier.watchdog_due(last_watchdog) {
                last_watchdog = Instant::now();
                notifier.send(&format!("WATCHDOG=1\nSTATUS={}", self.status()));
            }
            let wait = self
                .entries
                .iter()
                .filter_map(|e| e.retry_at)
                .min()
                .map_or(TICK, |t| t.saturating_duration_since(now).min(TICK));
            match events.recv_timeout(wait) {
                Ok(Event::Opened { id, res }) => self.opened(id, res, scope),
                Ok(Event::Ended(ended)) => self.ended(ended, scope),
                Ok(Event::Control(cmd)) if !self.stopping => self.command(cmd, scope),
                Ok(Event::Control(_)) => {}
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    /// For the service manager: how many channels run, how many wait for a restart.
    fn status(&self) -> String {
        let running = self.entries.iter().filter(|e| e.place.is_some()).count();
        let waiting = self.entries.iter().filter(|e| e.retry_at.is_some()).count();
        format!("{running} channel(s) on air, {waiting} waiting to restart")
    }

    fn opened<'scope, 'env>(
        &mut self,
        id: u64,
        res: Result<Channel, HeadendError>,
        scope: &'scope std::thread::Scope<'scope, 'env>,
    ) {
        let Some(i) = self.by_run(id) else {
            return;
        };
        let name = self.entries[i].plan.name.clone();
        let span = tracing::info_span!("channel", name = %name);
        let _enter = span.enter();
        let ch = match res {
            Ok(ch) => ch,
            Err(e) => {
                if self.log_failures {
                    tracing::error!(error = %ErrorChain(&e), "channel failed to start");
                }
                let retry = self.restart && !permanent(&e);
                let why = ErrorChain(&e).to_string();
                self.sup.registry.update(&name, |c| {
                    c.last_error = Some(why);
                    c.live = None;
                });
                self.entries[i].report = Some(ChannelReport::failed(&name, e));
                self.entries[i].run = None;
                self.after_run(i, retry, scope);
                return;
            }
        };
        let mut ch = ch;
        let live = Arc::new(ch.live());
        self.sup.registry.update(&name, |c| {
            c.state = ChannelState::Running;
            c.live = Some(live);
        });
        let e = &mut self.entries[i];
        if self.stopping || e.removed || e.replace.is_some() || e.disabled {
            let report = ch.finish(Ok(RunEnd::Stopped));
            self.entries[i].report = Some(report);
            self.entries[i].run = None;
            self.after_run(i, false, scope);
            return;
        }
        e.started = Some(Instant::now());
        let on_plane = ch.plane_served() && !ch.writes_stdout();
        match self.plane.as_deref_mut() {
            Some(plane) if on_plane => {
                plane.add(id, ch);
                e.place = Some(Place::Plane);
            }
            _ => {
                let stop = Arc::new(AtomicBool::new(false));
                e.place = Some(Place::Own(Arc::clone(&stop)));
                let tx = self.events_tx.clone();
                let log_failures = self.log_failures;
                let spawned = std::thread::Builder::new()
                    .name(format!("channel-{name}"))
                    .spawn_scoped(scope, move || {
                        let span = tracing::info_span!("channel", name = %name);
                        let _enter = span.enter();
                        let mut ch = ch;
                        let end = ch.run(stop);
                        if let Err(e) = &end {
                            if log_failures && !e.is_stdout_closed() {
                                tracing::error!(error = %ErrorChain(e), "channel failed");
                            }
                        }
                        let _ = tx.send(Event::Ended(Ended {
                            id,
                            channel: ch,
                            end,
                        }));
                    });
                if let Err(err) = spawned {
                    tracing::error!(error = %err, "cannot start a channel thread");
                    let e = &mut self.entries[i];
                    e.place = None;
                    e.run = None;
                    e.report = Some(ChannelReport::failed(
                        &e.plan.name,
                        HeadendError::Failed {
                            what: "starting the channel's thread".to_owned(),
                            source: Box::new(err),
                        },
                    ));
                    self.after_run(i, self.restart, scope);
                }
            }
        }
    }

    fn ended<'scope, 'env>(
        &mut self,
        ended: Ended,
        scope: &'scope std::thread::Scope<'scope, 'env>,
    ) {
        if let Some(p) = self.plane.as_deref_mut() {
            p.forget(ended.id);
        }
        let Some(i) = self.by_run(ended.id) else {
            // not ours any more: close it all the same
            let _ = ended.channel.finish(ended.end);
            return;
        };
        let span = tracing::info_span!("channel", name = %self.entries[i].plan.name);
        let _enter = span.enter();
        let failed = matches!(&ended.end, Err(e) if !e.is_stdout_closed());
        let why = match &ended.end {
            Err(e) if failed => Some(ErrorChain(e).to_string()),
            _ => None,
        };
        self.sup.registry.update(&self.entries[i].plan.name, |c| {
            c.live = None;
            if why.is_some() {
                c.last_error = why;
            }
        });
        let report = ended.channel.finish(ended.end);
        let e = &mut self.entries[i];
        e.report = Some(report);
        e.run = None;
        e.place = None;
        if failed && e.started.is_some_and(|t| t.elapsed() >= HEALTHY_AFTER) {
            e.backoff = BACKOFF_MIN;
        }
        self.after_run(i, failed && self.restart, scope);
    }

    /// Entry `i`'s run is over: start its replacement, schedule its restart, or drop it.
    fn after_run<'scope>(
        &mut self,
        i: usize,
        retry: bool,
        scope: &'scope std::thread::Scope<'scope, '_>,
    ) {
        let e = &mut self.entries[i];
        if e.removed {
            tracing::info!("channel removed");
            self.sup.registry.remove(&e.plan.name);
            self.entries.remove(i);
            return;
        }
        if let Some(plan) = e.replace.take() {
            tracing::info!("channel restarting with its new settings");
            e.plan = plan;
            e.backoff = BACKOFF_MIN;
            self.launch(i, None, scope);
            return;
        }
        let state = if e.disabled {
            ChannelState::Disabled
        } else if retry && !self.stopping {
            let wait = e.backoff;
            e.backoff = (e.backoff * 2).min(BACKOFF_MAX);
            e.retry_at = Some(Instant::now() + wait);
            tracing::warn!(retry_in = ?wait, "channel down; it restarts after the backoff");
            ChannelState::Restarting
        } else if e
            .report
            .as_ref()
            .is_some_and(|r| !r.ok() && r.unscrambled.is_none())
        {
            ChannelState::Failed
        } else {
            ChannelState::Stopped
        };
        self.sup.registry.update(&e.plan.name, |c| c.state = state);
    }

    /// An operator's command.
    fn command<'scope>(&mut self, cmd: Command, scope: &'scope std::thread::Scope<'scope, '_>) {
        let name = match &cmd {
            Command::Restart(n) | Command::Disable(n) | Command::Enable(n) => n.clone(),
        };
        let Some(i) = self
            .entries
            .iter()
            .position(|e| e.plan.name == name && !e.removed)
        else {
            tracing::warn!(channel = %name, "no such channel");
            return;
        };
        tracing::info!(channel = %name, command = ?cmd, "operator command");
        let e = &mut self.entries[i];
        match cmd {
            Command::Restart(_) => {
                e.disabled = false;
                e.backoff = BACKOFF_MIN;
                e.restarts += 1;
                self.sup.stats.restarts.fetch_add(1, Ordering::Relaxed);
                if e.run.is_some() {
                    // a restart is a replacement by the same settings
                    e.replace = Some(e.plan.clone());
                    Self::stop_run(self.plane.as_deref_mut(), e);
                } else {
                    self.launch(i, None, scope);
                }
            }
            Command::Disable(_) => {
                e.disabled = true;
                e.retry_at = None;
                e.replace = None;
                if e.run.is_some() {
                    Self::stop_run(self.plane.as_deref_mut(), e);
                } else {
                    self.sup
                        .registry
                        .update(&name, |c| c.state = ChannelState::Disabled);
                }
            }
            Command::Enable(_) => {
                if e.disabled {
                    e.disabled = false;
                    e.backoff = BACKOFF_MIN;
                    if e.run.is_none() {
                        self.launch(i, None, scope);
                    }
                }
            }
        }
    }

    /// Read the plan again; apply it, or keep the running set when it is bad.
    fn reload<'scope, 'env>(&mut self, scope: &'scope std::thread::Scope<'scope, 'env>) {
        let Some(reloader) = self.sup.reloader else {
            tracing::warn!("reload asked for, but this head-end has no file to read again");
            return;
        };
        let plan = match reloader() {
            Ok(p) => p,
            Err(e) => {
                self.sup
                    .stats
                    .reloads_refused
                    .fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %ErrorChain(&e),
                    "reload refused: the head-end file is not valid; the running channels are kept as they were");
                return;
            }
        };
        if plan.emmg != self.emmg || plan.http != self.http {
            tracing::warn!(
                "reload: the [emmg] or [http] table changed; it applies at the next start of the head-end"
            );
        }
        self.restart = plan.restart;
        let (mut added, mut changed, mut removed) = (0, 0, 0);
        for e in &mut self.entries {
            if e.removed || plan.channels.iter().any(|c| c.name == e.plan.name) {
                continue;
            }
            removed += 1;
            e.removed = true;
            e.retry_at = None;
            Self::stop_run(self.plane.as_deref_mut(), e);
        }
        // what was waiting for a restart goes at once; a run goes when it has stopped
        self.entries.retain(|e| !(e.removed && e.run.is_none()));
        let mut to_launch = Vec::new();
        for c in plan.channels {
            match self.entries.iter().position(|e| e.plan.name == c.name) {
                Some(i) => {
                    let e = &mut self.entries[i];
                    let current = e.replace.as_ref().unwrap_or(&e.plan);
                    if *current == c && !e.removed {
                        continue;
                    }
                    changed += 1;
                    e.removed = false;
                    if e.run.is_some() {
                        e.replace = Some(c);
                        Self::stop_run(self.plane.as_deref_mut(), e);
                    } else {
                        e.plan = c;
                        e.backoff = BACKOFF_MIN;
                        to_launch.push(i);
                    }
                }
                None => {
                    added += 1;
                    self.entries.push(Entry::new(c));
                    to_launch.push(self.entries.len() - 1);
                }
            }
        }
        for i in to_launch {
            self.launch(i, None, scope);
        }
        self.sup.stats.reloads.fetch_add(1, Ordering::Relaxed);
        tracing::info!(added, changed, removed, "headend: reloaded");
    }

    /// Ask the run of `e` to stop; it comes back as an ended event.
    fn stop_run(plane: Option<&mut Plane>, e: &mut Entry) {
        match (&e.place, e.run) {
            (Some(Place::Plane), Some(id)) => {
                if let Some(p) = plane {
                    p.remove(id);
                }
            }
            (Some(Place::Own(stop)), _) => stop.store(true, Ordering::Relaxed),
            // still opening: it is stopped when it opens
            _ => {}
        }
    }
}
