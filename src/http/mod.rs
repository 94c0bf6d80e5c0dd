//! The HTTP server of the control plane: TVCAS's billing API (`GET /api.php`) and the
//! REST/JSON card API (`/api/v1/...`) over the card store.
//!
//! Shape: [`ApiState`] holds the store, the API key (and the export key, if any) and the
//! failure gate; [`Http`] is the
//! server: the routes, the limits and the counters. It runs as one task on the process's
//! control plane ([`crate::net::ControlPlane`]) through the shared accept loop
//! ([`crate::net::AcceptLoop`]), so it obeys the same shutdown and connection caps as every
//! other server. Routes that others add later (metrics, channel status) come in through
//! [`Http::merge`] and get the same limits and counters; [`require_key`] protects them.
//!
//! Bounds, so no client can exhaust the server:
//! - connections: at most `max_connections` at once, at most three quarters of them from one
//!   address (refused connections are closed at once and counted);
//! - a request head within `header_timeout` of the connection opening or going idle, at most
//!   16 KiB; a whole request within `request_timeout` (408); a connection lives at most
//!   `max_connection_age`, then closes after its current request;
//! - a body of at most `max_body` bytes (413);
//! - a missing or wrong key is answered after a delay that grows with the peer's recent
//!   failures (see [`FailureGate`]).
//!
//! No cookies are set or read. A change from a browser must come from the same origin
//! (`Origin`, `Sec-Fetch-Site`), and JSON bodies need `Content-Type: application/json`, so
//! a foreign page cannot ride cached basic-auth credentials. No key is logged: request log
//! lines name the path, never the query (TVCAS's key is in the query).
//!
//! Card keys leave only through `POST /api/v1/cards/{serial}/export-key`, which takes the
//! export key (a second key, configured apart) instead of the API key: whoever holds the API
//! key manages subscribers but cannot copy cards. Without an export key the call is refused
//! (403 `EXPORT_DISABLED`).

mod auth;
pub mod prom;
mod rest;
mod server;
mod stats;
pub mod tvcas;
mod web;

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

pub use auth::{presented, ApiKey, ApiKeyError, FailureGate, Presented};
pub use rest::{ApiError, DEFAULT_PAGE, MAX_PAGE};
pub use stats::{HttpSnapshot, HttpStats};

use crate::cas::store::Store;
use crate::net::{AcceptLimits, LimitsError};

/// Where the REST API is nested.
const API_V1: &str = "/api/v1";

/// Default listen address: localhost only; a wider address is the operator's choice.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8000";
/// Default largest request body: a card change is a few hundred bytes.
pub const DEFAULT_MAX_BODY: usize = 64 * 1024;
/// Default largest CSV import body (`POST /api/v1/cards.csv`): about 180,000 cards.
pub const DEFAULT_MAX_IMPORT: usize = 16 * 1024 * 1024;
/// Default connections at once.
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;
/// Default delay added per recent failed authentication of a peer.
pub const DEFAULT_AUTH_FAIL_DELAY: Duration = Duration::from_millis(200);

/// The server's bounds (see the module doc).
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Connections: at once, per address, and the time to the first request head.
    pub accept: AcceptLimits,
    /// Largest request body, bytes.
    pub max_body: usize,
    /// Largest CSV import body (`POST /api/v1/cards.csv`), bytes; only a caller with the
    /// key gets this far.
    pub max_import: usize,
    /// Time for a request head, from the connection opening or going idle.
    pub header_timeout: Duration,
    /// Time for a whole request, from its head to its answer.
    pub request_timeout: Duration,
    /// A connection is closed after its current request once it is this old.
    pub max_connection_age: Duration,
}

impl HttpLimits {
    /// The defaults with `max_connections` connections (and a per-address cap of three
    /// quarters of them, or `max_per_address`).
    pub fn new(
        max_connections: usize,
        max_per_address: Option<usize>,
    ) -> Result<HttpLimits, LimitsError> {
        Ok(HttpLimits {
            accept: AcceptLimits::new(
                max_connections,
                max_per_address,
                crate::net::DEFAULT_HANDSHAKE_TIMEOUT,
            )?,
            ..HttpLimits::default()
        })
    }
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            accept: AcceptLimits::with_max(DEFAULT_MAX_CONNECTIONS),
            max_body: DEFAULT_MAX_BODY,
            max_import: DEFAULT_MAX_IMPORT,
            header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_connection_age: Duration::from_secs(300),
        }
    }
}

/// What the API routes share: the store, the key, the failure gate and the counters.
/// Cheap to clone.
#[derive(Clone, Debug)]
pub struct ApiState(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    store: Store,
    key: ApiKey,
    /// The key of the card key export; None: export over HTTP is off.
    export_key: Option<ApiKey>,
    gate: FailureGate,
    stats: Arc<HttpStats>,
}

impl ApiState {
    /// The API over `store`, guarded by `key`; the card key export by `export_key` (None
    /// turns it off; the caller makes sure it is not `key`). Failed authentications wait
    /// `auth_fail_delay` per recent failure of the peer.
    pub fn new(
        store: Store,
        key: ApiKey,
        export_key: Option<ApiKey>,
        auth_fail_delay: Duration,
    ) -> ApiState {
        ApiState(Arc::new(Inner {
            store,
            key,
            export_key,
            gate: FailureGate::new(auth_fail_delay),
            stats: Arc::new(HttpStats::default()),
        }))
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.0.store
    }

    /// The key.
    pub fn key(&self) -> &ApiKey {
        &self.0.key
    }

    /// The counters.
    pub fn stats(&self) -> &Arc<HttpStats> {
        &self.0.stats
    }

    /// Count a failed authentication of `peer` and hold it for its delay.
    pub async fn refuse_key(&self, peer: SocketAddr) {
        self.0.stats.unauthorized.fetch_add(1, Relaxed);
        let wait = self.0.gate.fail(peer.ip());
        tracing::debug!(%peer, wait_ms = wait.as_millis() as u64, "http: missing or wrong API key");
        tokio::time::sleep(wait).await;
    }
}

/// Middleware: refuse a request that does not present the API key (401, counted, delayed).
/// For routes merged in with [`Http::merge`]: `.route_layer(axum::middleware::
/// from_fn_with_state(api, require_key))`.
pub async fn require_key(
    State(api): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    let key = api.key().clone();
    let refused = "missing or wrong API key: give X-API-Key, Authorization: Bearer, or basic auth with the key as password";
    with_key(
        &api,
        &key,
        tvcas::NOT_VALID_API_KEY,
        refused,
        peer,
        req,
        next,
    )
    .await
}

/// Middleware of the card key export: the export key, presented as the API key is (the
/// API key is not enough); 403 when no export key is configured.
async fn require_export_key(
    State(api): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    let Some(key) = api.0.export_key.clone() else {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "EXPORT_DISABLED",
            "card key export over HTTP is off; start castmux with an export key \
             (CASTMUX_EXPORT_KEY, --export-key-file, or [http] export_key_file), or use \
             castmux card export-key on the store's host",
        )
        .into_response();
    };
    let refused = "missing or wrong export key: give it (not the API key) as X-API-Key, Authorization: Bearer, or the basic-auth password";
    with_key(&api, &key, "NOT_VALID_EXPORT_KEY", refused, peer, req, next).await
}

/// Run `req` if it presents `key`; else 401 with `code`, counted and delayed.
async fn with_key(
    api: &ApiState,
    key: &ApiKey,
    code: &'static str,
    refused: &'static str,
    peer: SocketAddr,
    req: Request,
    next: Next,
) -> Response {
    let ok = match presented(req.headers()) {
        Presented::Key(k) => key.matches(&k),
        Presented::Missing => false,
    };
    if ok {
        return next.run(req).await;
    }
    api.refuse_key(peer).await;
    let mut res = ApiError::new(StatusCode::UNAUTHORIZED, code, refused).into_response();
    res.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"castmux\", charset=\"UTF-8\""),
    );
    res
}

/// The HTTP server: routes, limits, counters. Build it, [`Http::merge`] more routes, then
/// [`Http::run`] it on the control plane.
#[derive(Debug)]
pub struct Http {
    router: Router,
    limits: HttpLimits,
    stats: Arc<HttpStats>,
}

impl Http {
    /// The server with TVCAS's `GET /api.php`, the REST API under `/api/v1` and the
    /// operator's web page at `/` (see [`web`]).
    pub fn new(api: ApiState, limits: HttpLimits) -> Http {
        let v1 = rest::routes(limits.max_import)
            .route_layer(axum::middleware::from_fn_with_state(
                api.clone(),
                require_key,
            ))
            .merge(
                rest::export_routes().route_layer(axum::middleware::from_fn_with_state(
                    api.clone(),
                    require_export_key,
                )),
            );
        let router = Router::new()
            .route("/api.php", get(tvcas::api_php))
            .nest(API_V1, v1)
            .merge(web::routes())
            .with_state(api.clone());
        Http {
            router,
            limits,
            stats: api.stats().clone(),
        }
    }

    /// Add routes (with their own state already given) beside the API's; they share the
    /// limits, counters and headers. A path that is already routed is an error of the caller
    /// (axum panics on overlapping routes at build time, before anything is served).
    pub fn merge(mut self, routes: Router) -> Http {
        self.router = self.router.merge(routes);
        self
    }

    /// The counters (live).
    pub fn stats(&self) -> Arc<HttpStats> {
        self.stats.clone()
    }

    /// The finished router, with the request guard, body limit and 404 answer around it.
    fn app(self) -> (Router, HttpLimits, Arc<HttpStats>) {
        let limits = self.limits;
        let guard_state = Guard {
            stats: self.stats.clone(),
            max_body: limits.max_body,
            max_import: limits.max_import,
        };
        let router = self
            .router
            .fallback(not_found)
            .layer(DefaultBodyLimit::max(limits.max_body))
            .layer(axum::middleware::from_fn_with_state(guard_state, guard));
        (router, limits, self.stats)
    }

    /// Serve `listener` until `shutdown`; see [`server`].
    pub async fn run(self, listener: tokio::net::TcpListener, shutdown: crate::net::Shutdown) {
        let (router, limits, stats) = self.app();
        server::run(router, limits, stats, listener, shutdown).await
    }
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", "no such path")
}

#[derive(Clone)]
struct Guard {
    stats: Arc<HttpStats>,
    max_body: usize,
    max_import: usize,
}

/// Whether a state-changing request comes from a foreign web page: a browser names the
/// page's origin (`Origin`) and says how it relates (`Sec-Fetch-Site`); other clients send
/// neither.
fn cross_site(req: &Request) -> bool {
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return false;
    }
    let h = req.headers();
    if let Some(site) = h.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        if !matches!(site, "same-origin" | "none") {
            return true;
        }
    }
    if let Some(origin) = h.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        let host = h
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let origin_host = origin.split_once("://").map(|(_, r)| r).unwrap_or(origin);
        return origin_host != host;
    }
    false
}

/// Around every request: the body limit by Content-Length before anything reads it, the
/// cross-site refusal, headers that keep answers out of caches and sniffers, the counters,
/// and one debug line (path only: the query may hold TVCAS's key).
async fn guard(State(g): State<Guard>, req: Request, next: Next) -> Response {
    g.stats.requests.fetch_add(1, Relaxed);
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let import = method == Method::POST && path.strip_prefix(API_V1) == Some(rest::CARDS_CSV);
    let limit = if import { g.max_import } else { g.max_body };
    let mut res = if declared.is_some_and(|n| n > limit as u64) {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "BODY_TOO_LARGE",
            format!("the body is over the limit of {limit} bytes"),
        )
        .into_response()
    } else if cross_site(&req) {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "CROSS_SITE",
            "changes are not taken from another site's page",
        )
        .into_response()
    } else {
        next.run(req).await
    };
    let status = res.status();
    let counter = match status {
        StatusCode::UNAUTHORIZED => None, // counted where the key was refused
        StatusCode::PAYLOAD_TOO_LARGE => Some(&g.stats.too_large),
        // TVCAS's bad key is a 400, counted as unauthorized where it was refused
        _ if res.extensions().get::<tvcas::KeyRefused>().is_some() => None,
        s if s.is_client_error() => Some(&g.stats.rejected),
        s if s.is_server_error() => Some(&g.stats.server_errors),
        _ => None,
    };
    if let Some(c) = counter {
        c.fetch_add(1, Relaxed);
    }
    let h = res.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    tracing::debug!(%method, %path, status = status.as_u16(), "http");
    res
}
