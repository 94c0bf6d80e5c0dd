//! `castmux serve`: the HTTP API over the card store (TVCAS's `GET /api.php` and the REST
//! API under `/api/v1`), on the control-plane runtime, until SIGINT/SIGTERM.

use castmux::cas::store::StoreLocation;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use castmux::cas::store::Store;
use castmux::http::{self, ApiKey, ApiState, Http, HttpLimits};
use castmux::net::ControlPlane;
use clap::Args;

use super::args;

/// The environment variable holding the API key.
const KEY_ENV: &str = "CASTMUX_API_KEY";

/// The environment variable holding the card key export's key.
const EXPORT_KEY_ENV: &str = "CASTMUX_EXPORT_KEY";

/// How long the server gets to stop once asked.
const STOP_LIMIT: Duration = Duration::from_secs(5);

/// Options of `castmux serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address and port to listen on. Default 127.0.0.1:8000: this host only; give
    /// 0.0.0.0:8000 to serve other hosts (then put TLS in front: the key travels in clear).
    #[arg(long, value_name = "ADDR:PORT", default_value = http::DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// A file holding the API key (one line, 8 to 512 printable characters, no spaces).
    /// Default: the CASTMUX_API_KEY environment variable. There is deliberately no option
    /// taking the key itself: command lines are visible to every user of the host.
    #[arg(long, value_name = "FILE")]
    api_key_file: Option<PathBuf>,
    /// A file holding the export key, the second key that alone opens
    /// POST /api/v1/cards/{serial}/export-key (card keys as card.json); same rules as the
    /// API key, and it must differ from it. Default: the CASTMUX_EXPORT_KEY environment
    /// variable; with neither, card keys cannot be exported over HTTP.
    #[arg(long, value_name = "FILE")]
    export_key_file: Option<PathBuf>,
    /// Connections served at once; more are closed at once. Default 256.
    #[arg(long, value_name = "N", default_value_t = http::DEFAULT_MAX_CONNECTIONS, value_parser = args::max_clients)]
    max_connections: usize,
    /// Connections from one IP address at once. Default: three quarters of
    /// --max-connections, so other hosts always keep a quarter.
    #[arg(long, value_name = "N", value_parser = args::max_clients)]
    max_connections_per_address: Option<usize>,
    /// Largest request body in bytes; larger ones get 413. Default 65536.
    #[arg(long, value_name = "BYTES", default_value_t = http::DEFAULT_MAX_BODY)]
    max_body: usize,
    /// Largest CSV import (POST /api/v1/cards.csv, the web page's "Import CSV") in bytes;
    /// larger ones get 413. Default 16777216 (16 MiB, about 180,000 cards).
    #[arg(long, value_name = "BYTES", default_value_t = http::DEFAULT_MAX_IMPORT)]
    max_import: usize,
    /// Delay added to the answer of a missing or wrong key, per recent failure of the same
    /// address (at most 15 times this; forgotten after 10 minutes without failures). Only
    /// failing requests wait. Default 200ms; 0 turns it off.
    #[arg(long, value_name = "DURATION", default_value = "200ms", value_parser = args::duration)]
    auth_fail_delay: Duration,
}

/// A key from its file (`file_option` names where the file was given) or from the
/// environment variable `env`: at most one of them; None when neither is given.
fn key_from(file: Option<&Path>, file_option: &str, env: &str) -> anyhow::Result<Option<ApiKey>> {
    let text = std::env::var(env).ok().filter(|v| !v.is_empty());
    match (file, text) {
        (Some(_), Some(_)) => anyhow::bail!(
            "both {env} and {file_option} are given; give one, so it is clear which key is in force"
        ),
        (Some(path), None) => ApiKey::from_file(path)
            .with_context(|| file_option.to_owned())
            .map(Some),
        (None, Some(text)) => ApiKey::new(&text).context(env.to_owned()).map(Some),
        (None, None) => Ok(None),
    }
}

/// The key from --api-key-file or CASTMUX_API_KEY: exactly one of them.
pub(crate) fn api_key(file: Option<&Path>) -> anyhow::Result<ApiKey> {
    key_from(file, "--api-key-file", KEY_ENV)?.ok_or_else(|| {
        anyhow::anyhow!(
            "no API key: set {KEY_ENV} or give --api-key-file FILE; castmux serve does not run without one"
        )
    })
}

/// The export key from its file (given as `file_option`) or CASTMUX_EXPORT_KEY, at most one;
/// None (no export over HTTP) when neither. Refused when it is the API key: the API key
/// alone would then export card keys.
pub(crate) fn export_key(
    file: Option<&Path>,
    file_option: &str,
    api: &ApiKey,
) -> anyhow::Result<Option<ApiKey>> {
    let key = key_from(file, file_option, EXPORT_KEY_ENV)?;
    if key.as_ref().is_some_and(|k| k.same_as(api)) {
        anyhow::bail!(
            "the export key ({EXPORT_KEY_ENV} or {file_option}) is the API key; give it a key of its own"
        );
    }
    Ok(key)
}

pub fn run(db: &StoreLocation, a: ServeArgs) -> anyhow::Result<()> {
    let key = api_key(a.api_key_file.as_deref())?;
    let export = export_key(a.export_key_file.as_deref(), "--export-key-file", &key)?;
    if a.max_body == 0 {
        anyhow::bail!("--max-body must be at least 1");
    }
    if a.auth_fail_delay > Duration::from_secs(10) {
        // 15 failures would hold a connection for minutes
        anyhow::bail!("--auth-fail-delay is at most 10s");
    }
    if a.max_import == 0 {
        anyhow::bail!("--max-import must be at least 1");
    }
    let limits = HttpLimits {
        max_body: a.max_body,
        max_import: a.max_import,
        ..HttpLimits::new(a.max_connections, a.max_connections_per_address)
            .context("--max-connections, --max-connections-per-address")?
    };
    // the signal handlers first, so a signal during start-up already counts
    let stop = super::stop_flag()?;
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])
    .context("installing the signal handlers")?;
    let plane = ControlPlane::start().context("starting the control-plane runtime")?;
    let store = plane.block_on(Store::open(db))?;
    let listener = plane
        .block_on(tokio::net::TcpListener::bind(a.listen))
        .with_context(|| format!("listening on {}", a.listen))?;
    let http = Http::new(
        ApiState::new(store.clone(), key, export, a.auth_fail_delay),
        limits,
    );
    let stats = http.stats();
    let shutdown = plane.shutdown_signal();
    plane.spawn("http", async move {
        http.run(listener, shutdown).await;
        // the store is closed where it was used, after the last request
        store.close().await;
    });
    if !stop.load(std::sync::atomic::Ordering::Relaxed) {
        // blocks until SIGINT or SIGTERM
        let _ = signals.forever().next();
    }
    let unconfirmed = plane.shutdown(STOP_LIMIT);
    let s = stats.snapshot();
    tracing::info!(
        requests = s.requests,
        unauthorized = s.unauthorized,
        too_large = s.too_large,
        timeouts = s.timeouts,
        rejected = s.rejected,
        server_errors = s.server_errors,
        accepted = s.accept.accepted,
        refused_full = s.accept.refused_full,
        refused_per_address = s.accept.refused_per_address,
        handshake_timeouts = s.accept.handshake_timeouts,
        "http: counters"
    );
    if unconfirmed > 0 {
        anyhow::bail!("the HTTP server did not stop within {STOP_LIMIT:?}");
    }
    Ok(())
}
