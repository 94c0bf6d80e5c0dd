//! The head-end: channels made from typed specs, run together in one process.
//!
//! - [`spec`]: [`ChannelSpec`], one channel's settings (what `castmux scramble`'s options say).
//! - [`file`]: the head-end file as written (`[emmg]`, `[[channel]]` in the typed or the
//!   `args = "…"` form) and [`HeadendPlan`], the file checked.
//! - [`channel`]: a spec made into its parts, run, reported.
//! - [`plane`]: the shared data plane (worker threads, epoll) for UDP channels.
//! - [`simulcrypt`]: a channel's ECMG links and EMMG<->MUX port, on the control plane.
//! - [`monitor`]: the analyzer of a channel's output (`monitor = true`).
//!
//! - [`supervise`]: starts, restarts (backoff) and reloads channels.
//!
//! [`Headend::run`] starts the one control plane (SimulCrypt links, the shared EMMG port),
//! opens every channel, serves the UDP ones on the shared data plane and the others (files,
//! pipes, SRT; and `castmux scramble`'s one channel) on threads of their own, and reports
//! each. A channel that fails is logged, reported, and restarted with backoff when the plan
//! says so; the others go on.

pub mod channel;
pub mod ecmg_spec;
pub mod error;
pub mod file;
pub mod http;
pub mod inputs;
pub mod judge;
pub mod monitor;
pub mod mpts;
pub mod notify;
pub mod plane;
pub mod renumber;
pub mod simulcrypt;
pub mod slate;
pub mod spec;
pub mod status;
pub mod supervise;

use crate::cas::store::StoreLocation;
use std::sync::Arc;
use std::time::Duration;

pub use channel::{Channel, ChannelEnv, ChannelReport};
pub use ecmg_spec::EcmgSpec;
pub use error::HeadendError;
pub use file::{ArgsValue, ChannelPlan, EmmgPlan, HeadendFile, HeadendPlan, HttpPlan};
pub use plane::PlaneOptions;
pub use spec::ChannelSpec;
pub use status::Registry;
use supervise::Supervisor;
pub use supervise::{Command, Controls, Event, Reloader, SupervisorStats};

use crate::net::ControlPlane;
use simulcrypt::EmmPort;

/// Runs a [`HeadendPlan`].
#[derive(Debug)]
pub struct Headend {
    plane: PlaneOptions,
    stats: Arc<SupervisorStats>,
    registry: Arc<Registry>,
    http: Option<HttpSetup>,
}

/// The head-end's HTTP server: the card API (`castmux serve`'s) plus the channels' status,
/// control and `/metrics`.
#[derive(Debug)]
pub struct HttpSetup {
    pub listen: std::net::SocketAddr,
    pub key: crate::http::ApiKey,
    /// The card key export's key; None: no export over HTTP.
    pub export_key: Option<crate::http::ApiKey>,
    pub limits: crate::http::HttpLimits,
    pub auth_fail_delay: Duration,
}

impl Headend {
    /// A head-end whose UDP channels share `plane`'s workers.
    pub fn new(plane: PlaneOptions) -> Headend {
        let stats: Arc<SupervisorStats> = Arc::default();
        Headend {
            plane,
            registry: Arc::new(Registry::new(Arc::clone(&stats))),
            stats,
            http: None,
        }
    }

    /// Serve HTTP while the head-end runs.
    pub fn with_http(mut self, http: HttpSetup) -> Headend {
        self.http = Some(http);
        self
    }

    /// The channels' status, for a monitor.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// The supervisor's counters (restarts, reloads).
    pub fn stats(&self) -> &Arc<SupervisorStats> {
        &self.stats
    }

    /// Run every channel of `plan` until each has ended for good or `controls.stop` is
    /// set; the store is `db`. A channel that cannot start or fails is reported with its
    /// error, and restarted when the plan says so; the others run on. `controls.reload`
    /// reads the plan again with `reloader` and applies what changed.
    pub fn run(
        &self,
        plan: HeadendPlan,
        db: &StoreLocation,
        controls: &Controls,
        reloader: Option<Reloader<'_>>,
    ) -> Result<Vec<ChannelReport>, HeadendError> {
        let control = ControlPlane::start().map_err(|e| HeadendError::Failed {
            what: "starting the control-plane runtime".to_owned(),
            source: Box::new(e),
        })?;
        let res = self.run_on(&control, plan, db, controls, reloader);
        control.shutdown(Duration::from_secs(2));
        res
    }

    fn run_on(
        &self,
        control: &ControlPlane,
        plan: HeadendPlan,
        db: &StoreLocation,
        controls: &Controls,
        reloader: Option<Reloader<'_>>,
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
            self.registry.set_emm_port(Some(p.stats()));
            port = Some(p);
            first_source = Some(src);
        }
        let events = std::sync::mpsc::channel::<Event>();
        // every channel is known (starting) before the first HTTP request can ask
        for c in &plan.channels {
            self.registry.update(&c.name, |_| {});
        }
        if let Some(h) = &self.http {
            self.start_http(control, h, db, events.0.clone(), controls)?;
        }
        tracing::info!(
            channels = plan.channels.len(),
            workers = if plan.shared_plane {
                self.plane.workers
            } else {
                0
            },
            restart = plan.restart,
            "headend: starting"
        );
        let sup = Supervisor {
            registry: &self.registry,
            db,
            control,
            plane_opts: &self.plane,
            controls,
            reloader,
            stats: &self.stats,
        };
        let reports = sup.run(plan, port.as_ref(), first_source, events);
        if let Some(p) = port {
            self.registry.set_emm_port(None);
            p.stop();
        }
        reports
    }

    /// Open the store and serve HTTP on the control plane until it shuts down.
    fn start_http(
        &self,
        control: &ControlPlane,
        h: &HttpSetup,
        db: &StoreLocation,
        events: std::sync::mpsc::Sender<Event>,
        controls: &Controls,
    ) -> Result<(), HeadendError> {
        let failed = |what: String| {
            move |e: Box<dyn std::error::Error + Send + Sync>| HeadendError::Failed {
                what,
                source: e,
            }
        };
        // the HTTP API serves the card store too
        let store = control
            .block_on(crate::cas::store::Store::open(db))
            .map_err(|e| {
                failed(format!(
                    "[http]: the card store {} (run castmux init, or drop [http])",
                    db
                ))(Box::new(e))
            })?;
        let listener = control
            .block_on(tokio::net::TcpListener::bind(h.listen))
            .map_err(|e| failed(format!("[http] listen {}", h.listen))(Box::new(e)))?;
        let local = listener.local_addr().unwrap_or(h.listen);
        let api = crate::http::ApiState::new(
            store.clone(),
            h.key.clone(),
            h.export_key.clone(),
            h.auth_fail_delay,
        );
        let routes = http::routes(
            api.clone(),
            http::HeadendApi::new(
                Arc::clone(&self.registry),
                events,
                Arc::clone(&controls.reload),
            ),
        );
        let server = crate::http::Http::new(api, h.limits).merge(routes);
        let shutdown = control.shutdown_signal();
        // the line a script (or a test) waits for
        tracing::info!(listen = %local, "http: serving");
        control.spawn("http", async move {
            server.run(listener, shutdown).await;
            store.close().await;
        });
        Ok(())
    }
}
