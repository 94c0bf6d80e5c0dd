//! The head-end: channels made from typed specs, run together in one process.
//!
//! - [`spec`]: [`ChannelSpec`], one channel's settings (what `castmux scramble`'s options say).
//! - [`file`]: the head-end file as written (`[emmg]`, `[[channel]]` in the typed or the
//!   `args = "…"` form) and [`HeadendPlan`], the file checked.
//! - [`channel`]: a spec made into its parts, run, reported.
//! - [`plane`]: the shared data plane (worker threads, epoll) for UDP channels.
//! - [`simulcrypt`]: a channel's ECMG links and EMMG<->MUX port, on the control plane.
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
pub mod notify;
pub mod plane;
pub mod simulcrypt;
pub mod spec;
pub mod supervise;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub use channel::{Channel, ChannelEnv, ChannelReport};
pub use ecmg_spec::EcmgSpec;
pub use error::HeadendError;
pub use file::{ArgsValue, ChannelPlan, EmmgPlan, HeadendFile, HeadendPlan};
pub use plane::PlaneOptions;
pub use spec::ChannelSpec;
use supervise::Supervisor;
pub use supervise::{Controls, Reloader, SupervisorStats};

use crate::net::ControlPlane;
use simulcrypt::EmmPort;

/// Runs a [`HeadendPlan`].
#[derive(Debug)]
pub struct Headend {
    plane: PlaneOptions,
    stats: Arc<SupervisorStats>,
}

impl Headend {
    /// A head-end whose UDP channels share `plane`'s workers.
    pub fn new(plane: PlaneOptions) -> Headend {
        Headend {
            plane,
            stats: Arc::default(),
        }
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
        db: &Path,
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
        db: &Path,
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
            port = Some(p);
            first_source = Some(src);
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
            db,
            control,
            plane_opts: &self.plane,
            controls,
            reloader,
            stats: &self.stats,
        };
        let reports = sup.run(plan, port.as_ref(), first_source);
        if let Some(p) = port {
            p.stop();
        }
        reports
    }
}
