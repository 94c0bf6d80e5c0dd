//! `castmux softcard ...`: the software card in use. `serve` puts a card.json behind a
//! newcamd server; `play` (live descrambling) is added beside it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use tracing::info;

use castmux::softcard::newcamd::{
    DesKey14, NewcamdServer, ServerConfig, SoftCardBackend, StatsSnapshot, Users,
};

use super::args::duration;

/// `castmux softcard`.
#[derive(Debug, Args)]
pub struct SoftcardArgs {
    #[command(subcommand)]
    command: SoftcardCommand,
}

#[derive(Debug, Subcommand)]
enum SoftcardCommand {
    /// Serve a software card (card.json) over newcamd to OSCam, tvheadend or
    /// `softcard play --newcamd`.
    Serve(ServeArgs),
    // `play` (live descrambling, the lead's) is registered here.
}

/// `castmux softcard serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The card to serve: a card.json exported with `castmux card export-key`. EMMs the
    /// card applies are saved back to it (see --read-only-card).
    #[arg(long)]
    card: PathBuf,
    /// Address and port to listen on (one card per port, as newcamd does).
    #[arg(long, default_value = "127.0.0.1:15050")]
    listen: SocketAddr,
    /// The newcamd DES key, 28 hex digits, shared with the clients.
    #[arg(long, env = "CASTMUX_NEWCAMD_DES_KEY", hide_env_values = true)]
    des_key: String,
    /// A user allowed to log in, NAME:PASSWORD (AU: may send EMMs, sees the serial).
    /// Repeat for more users.
    #[arg(long = "user", value_name = "NAME:PASSWORD")]
    users: Vec<String>,
    /// A TOML users file: `[[user]] name = "..", password = "..", au = true|false`.
    #[arg(long, value_name = "users.toml")]
    config: Option<PathBuf>,
    /// Services (service ids) the card decrypts at once; a further one gets no CW until
    /// one has been idle for --service-idle.
    #[arg(long, default_value_t = 2)]
    max_services: usize,
    /// A service with no ECM for this long frees its slot.
    #[arg(long, default_value = "10s", value_parser = duration)]
    service_idle: Duration,
    /// Close a session that sent nothing for this long.
    #[arg(long, default_value = "120s", value_parser = duration)]
    idle_timeout: Duration,
    /// Delay before answering a failed login (slows password guessing).
    #[arg(long, default_value = "1s", value_parser = duration)]
    login_fail_delay: Duration,
    /// Sessions open at most; further connections are closed at once.
    #[arg(long, default_value_t = 256)]
    max_clients: usize,
    /// How long a repeated ECM is answered from the cache.
    #[arg(long, default_value = "10s", value_parser = duration)]
    ecm_cache_ttl: Duration,
    /// Do not write EMM updates back to the card file (they last until exit).
    #[arg(long)]
    read_only_card: bool,
}

/// Run `castmux softcard ...`.
pub fn run(a: SoftcardArgs) -> anyhow::Result<()> {
    match a.command {
        SoftcardCommand::Serve(s) => serve(s),
    }
}

fn serve(a: ServeArgs) -> anyhow::Result<()> {
    let des_key = DesKey14::from_hex(&a.des_key).context("--des-key")?;
    let mut users = Users::default();
    if let Some(path) = &a.config {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the users file {}", path.display()))?;
        users
            .add_toml(&text)
            .with_context(|| format!("users file {}", path.display()))?;
    }
    for u in &a.users {
        users.add_flag(u).context("--user")?;
    }
    if users.is_empty() {
        anyhow::bail!("no users: give --user NAME:PASSWORD or --config users.toml");
    }
    if a.max_services == 0 {
        anyhow::bail!("--max-services must be at least 1");
    }
    let card = SoftCardBackend::load(&a.card, !a.read_only_card)
        .with_context(|| format!("loading the card {}", a.card.display()))?;
    let mut cfg = ServerConfig::new(des_key, users);
    cfg.max_services = a.max_services;
    cfg.service_idle = a.service_idle;
    cfg.idle_timeout = a.idle_timeout;
    cfg.login_fail_delay = a.login_fail_delay;
    cfg.max_clients = a.max_clients.max(1);
    cfg.ecm_cache_ttl = a.ecm_cache_ttl;
    let n_users = cfg.users.len();
    let server = NewcamdServer::new(cfg, card);

    let stop = super::stop_flag()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(a.listen)
            .await
            .with_context(|| format!("listening on {}", a.listen))?;
        let local = listener.local_addr()?;
        // the first line a script can wait for: where the server is listening
        info!(listen = %local, card = %a.card.display(), users = n_users, max_services = a.max_services, "newcamd: serving");
        server
            .run(listener, async {
                while !stop.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            })
            .await
            .context("newcamd server")
    })?;
    report(&server.stats());
    Ok(())
}

fn report(s: &StatsSnapshot) {
    info!(
        connections = s.connections,
        logins = s.logins,
        login_failures = s.login_failures,
        bad_frames = s.bad_frames,
        idle_timeouts = s.idle_timeouts,
        ecm_requests = s.ecm_requests,
        ecm_answered = s.ecm_answered,
        ecm_cache_hits = s.ecm_cache_hits,
        ecm_refused_card = s.ecm_refused_card,
        ecm_refused_service_limit = s.ecm_refused_service_limit,
        emm_accepted = s.emm_accepted,
        emm_rejected = s.emm_rejected,
        emm_not_allowed = s.emm_not_allowed,
        connections_refused = s.connections_refused,
        "newcamd: stopped"
    );
}
