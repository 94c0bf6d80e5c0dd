//! The REST/JSON API under `/api/v1/`: cards, packages, events, key status, the audit log.
//! Every route needs the API key, reads included (cards hold subscribers' names and
//! addresses). Values go through the same store functions and validators as the CLI.
//!
//! Errors are `{"error": CODE, "message": TEXT}` with the store's codes
//! (`SMARTCARD_NOT_FOUND`, `ACCESS_CRITERIA_ERROR`, ...): 400 bad input, 404 no such card,
//! package or event, 409 exists already, 413 body too large, 503 store locked, 500 the store
//! failed (details in the log, not the answer). No answer holds key material: cards are
//! shown without their keys, and key status is versions and dates only. The one exception
//! is the card key export ([`export_routes`]), which the API key does not open.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequest, Path, Query, Request, State};
use axum::handler::Handler;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::ApiState;
use crate::cas::store::{
    fields, time, AccessSpec, AuditEntry, AuditQuery, CardChanges, CardFilter, CardRecord,
    FinishSpec, StoreError,
};
use crate::cas::types::{CardSerial, EventGrant, PackageBit};

/// Cards per page when `limit` is not given.
pub const DEFAULT_PAGE: u32 = 100;
/// Most cards (or audit rows) one page may hold.
pub const MAX_PAGE: u32 = 1000;

/// The CSV export and import path, relative to `/api/v1`.
pub(super) const CARDS_CSV: &str = "/cards.csv";

/// The routes, relative to `/api/v1`; a CSV import body may hold `max_import` bytes.
pub(super) fn routes(max_import: usize) -> Router<ApiState> {
    Router::new()
        .route("/cards", get(list_cards).post(add_cards))
        .route(
            CARDS_CSV,
            get(export_cards).post(import_cards.layer(DefaultBodyLimit::max(max_import))),
        )
        .route(
            "/cards/{serial}",
            get(show_card).patch(set_card).delete(remove_card),
        )
        .route("/cards/{serial}/enable", post(enable_card))
        .route("/cards/{serial}/disable", post(disable_card))
        .route("/packages", get(list_packages).post(add_package))
        .route("/events", get(list_events).post(add_event))
        .route("/events/{name}/grants", post(grant_event))
        .route("/keys", get(key_status))
        .route("/audit", get(audit_log))
}

/// The card key export, relative to `/api/v1`; guarded by the export key, not the API key
/// (see [`super::require_export_key`]).
pub(super) fn export_routes() -> Router<ApiState> {
    Router::new().route("/cards/{serial}/export-key", post(export_key))
}

/// The software card's card.json, as `castmux card export-key` writes it: the same store
/// function, audited with the peer's address; never cached (the guard's `no-store`).
async fn export_key(
    State(api): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(s): Path<String>,
) -> ApiResult<Response> {
    let serial = serial(&s)?;
    let origin = format!("over HTTP to {}", peer.ip());
    let file = api
        .store()
        .export_card(serial, time::now(), Some(&origin))
        .await?;
    let text = file.to_json_text().map_err(|e| {
        tracing::warn!(error = %e, "http: writing card.json failed");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "JSON_ERROR",
            "writing card.json failed; see the server log",
        )
    })?;
    tracing::info!(%serial, peer = %peer.ip(), service_keys = file.service_keys.len(),
        "card key exported over HTTP");
    Ok((
        [
            (header::CONTENT_TYPE, "application/json".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"card-{serial}.json\""),
            ),
        ],
        text,
    )
        .into_response())
}

/// An error answer: `{"error": CODE, "message": TEXT}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    /// An error with its status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    fn bad(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.code, "message": self.message });
        (self.status, Json(body)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        let status = match &e {
            StoreError::SmartcardNotFound(_)
            | StoreError::PackageNotFound(_)
            | StoreError::EventNotFound(_) => StatusCode::NOT_FOUND,
            StoreError::SmartcardExists(_)
            | StoreError::PackageExists(_)
            | StoreError::EventExists(_) => StatusCode::CONFLICT,
            StoreError::Locked { .. } | StoreError::WriterStopped { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            StoreError::Db { .. }
            | StoreError::NotCommitted { .. }
            | StoreError::Corrupt { .. }
            | StoreError::Migrate { .. }
            | StoreError::Io { .. }
            | StoreError::KeyFile(_)
            | StoreError::NotUtf8Path(_)
            | StoreError::NotInitialized { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        };
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            // the driver's text names files and tables: the log gets it, the client a code
            tracing::warn!(error = %e, "http: the store failed");
            return ApiError::new(
                status,
                e.code(),
                "the card store failed; see the server log",
            );
        }
        let message = e.to_string();
        ApiError::new(status, e.code(), message)
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// A JSON request body: `Content-Type: application/json` required (a foreign web page cannot
/// send that without the browser asking first), at most the server's body limit.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"));
        if !json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "CONTENT_TYPE_ERROR",
                "the body must be JSON, sent with Content-Type: application/json",
            ));
        }
        let bytes = body_bytes(req, state).await?;
        serde_json::from_slice(&bytes).map(JsonBody).map_err(|e| {
            ApiError::bad(
                "JSON_ERROR",
                format!("the body is not what this call takes: {e}"),
            )
        })
    }
}

/// The request body, within the body limit.
async fn body_bytes<S: Send + Sync>(req: Request, state: &S) -> ApiResult<axum::body::Bytes> {
    axum::body::Bytes::from_request(req, state)
        .await
        .map_err(|e: BytesRejection| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(e.status(), "BODY_TOO_LARGE", "the body is over the limit")
            } else {
                ApiError::bad("BODY_ERROR", e.body_text())
            }
        })
}

/// A value given as a JSON string or number; checked by the store's text validators, so
/// `"1586693700"`, `1586693700` and `"2026-01-31"` are all a start.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Scalar {
    /// As text.
    Text(String),
    /// As a number.
    Number(i64),
}

impl Scalar {
    fn text(&self) -> String {
        match self {
            Scalar::Text(s) => s.clone(),
            Scalar::Number(n) => n.to_string(),
        }
    }
}

/// Card fields in a request body; each left out keeps its value (or a new card's default).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CardFields {
    name: Option<String>,
    info: Option<String>,
    /// TVCAS digits or 0x + hex.
    access_criteria: Option<Scalar>,
    /// Package names (instead of access_criteria).
    packages: Option<Vec<String>>,
    start: Option<Scalar>,
    finish: Option<Scalar>,
    /// Valid for N days after the start (instead of finish).
    days: Option<u32>,
    pair: Option<Scalar>,
    /// Adding only: how many cards with these fields, default 1.
    count: Option<u64>,
    /// Adding only: the first serial (all of serial..serial+count-1 must be free); default
    /// the next free ones.
    serial_no: Option<Scalar>,
}

impl CardFields {
    fn changes(&self) -> ApiResult<CardChanges> {
        let access = match (&self.access_criteria, &self.packages) {
            (Some(_), Some(_)) => {
                return Err(ApiError::bad(
                    "FIELD_ERROR",
                    "give access_criteria or packages, not both",
                ))
            }
            (Some(a), None) => Some(AccessSpec::Criteria(fields::parse_access(&a.text())?)),
            (None, Some(p)) => Some(AccessSpec::Packages(p.clone())),
            (None, None) => None,
        };
        let finish = match (&self.finish, self.days) {
            (Some(_), Some(_)) => {
                return Err(ApiError::bad(
                    "FIELD_ERROR",
                    "give finish or days, not both",
                ))
            }
            (Some(f), None) => Some(FinishSpec::At(fields::parse_finish(&f.text())?)),
            (None, Some(d)) => Some(FinishSpec::Days(d)),
            (None, None) => None,
        };
        Ok(CardChanges {
            name: self.name.clone(),
            info: self.info.clone(),
            access,
            start: self
                .start
                .as_ref()
                .map(|s| fields::parse_start(&s.text()))
                .transpose()?,
            finish,
            pair: self
                .pair
                .as_ref()
                .map(|p| fields::parse_pair(&p.text()))
                .transpose()?,
        })
    }
}

/// A card as answered: TVCAS's fields as strings (as `api.php` and `card list --json`
/// give them), then its state, package names and events. Never its key.
#[derive(Debug, Serialize)]
pub struct CardView {
    serial_no: String,
    name: String,
    info: String,
    access_criteria: String,
    pair: String,
    start: String,
    finish: String,
    state: &'static str,
    packages: Vec<String>,
    events: Vec<EventGrant>,
    created_at: i64,
    updated_at: i64,
    change_seq: u64,
}

impl CardView {
    fn new(c: &CardRecord, names: &BTreeMap<u8, String>) -> CardView {
        CardView {
            serial_no: c.serial.to_string(),
            name: c.name.clone(),
            info: c.info.clone(),
            access_criteria: c.access.to_string(),
            pair: c.pair.to_string(),
            start: c.start.to_string(),
            finish: c.finish.to_string(),
            state: if c.enabled { "enabled" } else { "disabled" },
            packages: c
                .access
                .bits()
                .map(|b| {
                    names
                        .get(&b.get())
                        .cloned()
                        .unwrap_or_else(|| format!("bit{}", b.get()))
                })
                .collect(),
            events: c.events.clone(),
            created_at: c.created_at,
            updated_at: c.updated_at,
            change_seq: c.change_seq,
        }
    }
}

async fn package_names(api: &ApiState) -> ApiResult<BTreeMap<u8, String>> {
    Ok(api
        .store()
        .packages(false)
        .await?
        .into_iter()
        .map(|p| (p.bit.get(), p.name))
        .collect())
}

async fn view(api: &ApiState, card: &CardRecord) -> ApiResult<Json<CardView>> {
    Ok(Json(CardView::new(card, &package_names(api).await?)))
}

fn serial(text: &str) -> ApiResult<CardSerial> {
    Ok(fields::parse_serial(text)?)
}

fn page_limit(limit: Option<u32>) -> ApiResult<u32> {
    match limit {
        None => Ok(DEFAULT_PAGE),
        Some(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::bad(
            "LIMIT_ERROR",
            format!("limit {n} is out of range; 1..={MAX_PAGE}"),
        )),
    }
}

/// `GET /cards` query: one filter (or none), then the page.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    /// The CLI's `--filter` syntax: text, `state=...` or `package=...`.
    filter: Option<String>,
    /// Serial, name or info contains this.
    q: Option<String>,
    /// `enabled` or `disabled`.
    state: Option<String>,
    /// Subscribed to this package.
    package: Option<String>,
    /// Cards with a serial above this (the `next_after` of the previous page).
    after: Option<String>,
    /// Cards per page, 1..=1000, default 100.
    limit: Option<u32>,
}

#[derive(Debug, Serialize)]
struct CardPage {
    cards: Vec<CardView>,
    /// Give as `after` for the next page; null on the last page.
    next_after: Option<String>,
}

/// The one card filter of a query: `filter` (the CLI's syntax), `q`, `state` or `package`.
fn card_filter(
    filter: &Option<String>,
    q: &Option<String>,
    state: &Option<String>,
    package: &Option<String>,
) -> ApiResult<CardFilter> {
    let given = [filter, q, state, package]
        .iter()
        .filter(|f| f.is_some())
        .count();
    if given > 1 {
        return Err(ApiError::bad(
            "FILTER_ERROR",
            "give one of filter, q, state, package",
        ));
    }
    Ok(if let Some(f) = filter {
        CardFilter::parse(f)?
    } else if let Some(t) = q {
        CardFilter::Text(t.clone())
    } else if let Some(s) = state {
        CardFilter::parse(&format!("state={s}"))?
    } else if let Some(p) = package {
        CardFilter::Package(p.clone())
    } else {
        CardFilter::All
    })
}

async fn list_cards(
    State(api): State<ApiState>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<CardPage>> {
    let filter = card_filter(&q.filter, &q.q, &q.state, &q.package)?;
    let limit = page_limit(q.limit)?;
    let after = q.after.as_deref().map(serial).transpose()?;
    let cards = api.store().cards_page(&filter, after, limit).await?;
    let names = package_names(&api).await?;
    let next_after = (cards.len() == limit as usize)
        .then(|| cards.last().map(|c| c.serial.to_string()))
        .flatten();
    Ok(Json(CardPage {
        cards: cards.iter().map(|c| CardView::new(c, &names)).collect(),
        next_after,
    }))
}

async fn show_card(
    State(api): State<ApiState>,
    Path(s): Path<String>,
) -> ApiResult<Json<CardView>> {
    let card = api.store().card(serial(&s)?).await?;
    view(&api, &card).await
}

/// `GET /cards.csv` query: one filter (or none).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExportQuery {
    filter: Option<String>,
    q: Option<String>,
    state: Option<String>,
    package: Option<String>,
}

/// TVCAS CSV of the cards (all, or those matching the filter), as `castmux card export`
/// and `card list --csv` write it: the same store function. No keys are in it.
async fn export_cards(
    State(api): State<ApiState>,
    Query(q): Query<ExportQuery>,
) -> ApiResult<Response> {
    let filter = card_filter(&q.filter, &q.q, &q.state, &q.package)?;
    let text = api.store().export_csv(&filter).await?;
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"cards.csv\"",
            ),
        ],
        text,
    )
        .into_response())
}

/// `POST /cards.csv` query: the uploaded file's name, for the audit log.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ImportQuery {
    name: Option<String>,
}

#[derive(Debug, Serialize)]
struct Imported {
    /// Cards in the file.
    imported: u64,
    /// New cards.
    inserted: u64,
    /// Existing cards overwritten.
    updated: u64,
}

/// Longest file name kept in the audit log's subject.
const MAX_IMPORT_NAME: usize = 255;

/// Import TVCAS CSV (`Content-Type: text/csv`) as `castmux card import` does: the same
/// store function, all or nothing, every row checked first. The body is bounded by the
/// server's import limit (`max_import`), not the smaller one of other calls.
async fn import_cards(
    State(api): State<ApiState>,
    Query(q): Query<ImportQuery>,
    req: Request,
) -> ApiResult<(StatusCode, Json<Imported>)> {
    let csv = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("text/csv"));
    if !csv {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "CONTENT_TYPE_ERROR",
            "the body must be TVCAS CSV, sent with Content-Type: text/csv",
        ));
    }
    let name = q.name.unwrap_or_else(|| "upload".to_owned());
    if name.is_empty()
        || name.chars().count() > MAX_IMPORT_NAME
        || name.chars().any(char::is_control)
    {
        return Err(ApiError::bad(
            "NAME_ERROR",
            format!("name: 1..={MAX_IMPORT_NAME} characters without control characters"),
        ));
    }
    let bytes = body_bytes(req, &api).await?;
    let text = String::from_utf8(bytes.to_vec())
        .map_err(|_| ApiError::bad("CSV_ERROR", "the CSV is not UTF-8"))?;
    let label = format!("http:{name}");
    let sum = api.store().import_csv(&text, &label, time::now()).await?;
    Ok((
        StatusCode::OK,
        Json(Imported {
            imported: sum.inserted + sum.updated,
            inserted: sum.inserted,
            updated: sum.updated,
        }),
    ))
}

#[derive(Debug, Serialize)]
struct Added {
    /// Cards added.
    count: u64,
    /// The serial runs, first and last of each.
    runs: Vec<[String; 2]>,
}

async fn add_cards(
    State(api): State<ApiState>,
    JsonBody(body): JsonBody<CardFields>,
) -> ApiResult<(StatusCode, Json<Added>)> {
    let count = body.count.unwrap_or(1);
    let first = body
        .serial_no
        .as_ref()
        .map(|s| serial(&s.text()))
        .transpose()?;
    let changes = body.changes()?;
    let runs = api
        .store()
        .add_cards(count, first, &changes, time::now())
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(Added {
            count,
            runs: runs
                .iter()
                .map(|(a, b)| [a.to_string(), b.to_string()])
                .collect(),
        }),
    ))
}

async fn set_card(
    State(api): State<ApiState>,
    Path(s): Path<String>,
    JsonBody(body): JsonBody<CardFields>,
) -> ApiResult<Json<CardView>> {
    if body.count.is_some() || body.serial_no.is_some() {
        return Err(ApiError::bad(
            "FIELD_ERROR",
            "count and serial_no are for adding cards; the serial is in the path",
        ));
    }
    let changes = body.changes()?;
    let card = api
        .store()
        .set_card(serial(&s)?, &changes, time::now())
        .await?;
    view(&api, &card).await
}

async fn set_enabled(api: &ApiState, s: &str, on: bool) -> ApiResult<Json<CardView>> {
    let serial = serial(s)?;
    api.store().set_enabled(serial, on, time::now()).await?;
    let card = api.store().card(serial).await?;
    view(api, &card).await
}

async fn enable_card(
    State(api): State<ApiState>,
    Path(s): Path<String>,
) -> ApiResult<Json<CardView>> {
    set_enabled(&api, &s, true).await
}

async fn disable_card(
    State(api): State<ApiState>,
    Path(s): Path<String>,
) -> ApiResult<Json<CardView>> {
    set_enabled(&api, &s, false).await
}

async fn remove_card(State(api): State<ApiState>, Path(s): Path<String>) -> ApiResult<StatusCode> {
    api.store().remove_card(serial(&s)?, time::now()).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Serialize)]
struct PackageView {
    name: String,
    bit: u8,
    /// Cards subscribed (only with `?count_cards=true`).
    #[serde(skip_serializing_if = "Option::is_none")]
    cards: Option<u64>,
    created_at: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PackagesQuery {
    /// Count the cards of each package (a scan of the cards table).
    #[serde(default)]
    count_cards: bool,
}

async fn list_packages(
    State(api): State<ApiState>,
    Query(q): Query<PackagesQuery>,
) -> ApiResult<Json<Vec<PackageView>>> {
    let list = api.store().packages(q.count_cards).await?;
    Ok(Json(
        list.into_iter()
            .map(|p| PackageView {
                name: p.name,
                bit: p.bit.get(),
                cards: q.count_cards.then_some(p.cards),
                created_at: p.created_at,
            })
            .collect(),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewPackage {
    name: String,
    /// Default: the lowest free bit.
    bit: Option<u32>,
}

fn bit(b: Option<u32>) -> ApiResult<Option<PackageBit>> {
    Ok(b.map(PackageBit::new)
        .transpose()
        .map_err(StoreError::from)?)
}

async fn add_package(
    State(api): State<ApiState>,
    JsonBody(body): JsonBody<NewPackage>,
) -> ApiResult<(StatusCode, Json<PackageView>)> {
    let now = time::now();
    let b = api
        .store()
        .add_package(&body.name, bit(body.bit)?, now)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(PackageView {
            name: body.name,
            bit: b.get(),
            cards: None,
            created_at: now,
        }),
    ))
}

#[derive(Debug, Serialize)]
struct EventView {
    name: String,
    bit: u8,
    start: i64,
    end: i64,
}

async fn list_events(State(api): State<ApiState>) -> ApiResult<Json<Vec<EventView>>> {
    let list = api.store().events().await?;
    Ok(Json(
        list.into_iter()
            .map(|e| EventView {
                name: e.name,
                bit: e.bit.get(),
                start: e.start,
                end: e.end,
            })
            .collect(),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewEvent {
    name: String,
    start: Scalar,
    end: Scalar,
    /// Default: the lowest free bit.
    bit: Option<u32>,
}

async fn add_event(
    State(api): State<ApiState>,
    JsonBody(body): JsonBody<NewEvent>,
) -> ApiResult<(StatusCode, Json<EventView>)> {
    let start = fields::parse_start(&body.start.text())?;
    let end = fields::parse_finish(&body.end.text())?;
    let b = api
        .store()
        .add_event(&body.name, start, end, bit(body.bit)?, time::now())
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(EventView {
            name: body.name,
            bit: b.get(),
            start,
            end,
        }),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Grant {
    serial_no: Scalar,
}

async fn grant_event(
    State(api): State<ApiState>,
    Path(name): Path<String>,
    JsonBody(body): JsonBody<Grant>,
) -> ApiResult<Json<CardView>> {
    let serial = serial(&body.serial_no.text())?;
    api.store().grant_event(serial, &name, time::now()).await?;
    let card = api.store().card(serial).await?;
    view(&api, &card).await
}

#[derive(Debug, Serialize)]
struct KeyView {
    bit: u8,
    names: Vec<String>,
    current_version: u32,
    current_since: i64,
    next_version: u32,
    next_created: i64,
}

/// Service-key versions and ages per bit: what an operator checks before and after a
/// rotation. The keys themselves never leave the store this way.
async fn key_status(State(api): State<ApiState>) -> ApiResult<Json<Vec<KeyView>>> {
    let list = api.store().key_status().await?;
    Ok(Json(
        list.into_iter()
            .map(|k| KeyView {
                bit: k.bit.get(),
                names: k.names,
                current_version: k.current_version,
                current_since: k.current_since,
                next_version: k.next_version,
                next_created: k.next_created,
            })
            .collect(),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditParams {
    /// Rows numbered below this (the `next_before` of the previous page).
    before: Option<u64>,
    /// This action, or a prefix ending in `.` (`card.`).
    action: Option<String>,
    /// This subject (a serial, a package name).
    subject: Option<String>,
    /// At or after this time (Unix seconds or a date).
    since: Option<String>,
    /// Before this time.
    until: Option<String>,
    /// Rows per page, 1..=1000, default 100.
    limit: Option<u32>,
}

#[derive(Debug, Serialize)]
struct AuditPage {
    entries: Vec<AuditEntry>,
    /// Give as `before` for the next page; null on the last page.
    next_before: Option<u64>,
}

async fn audit_log(
    State(api): State<ApiState>,
    Query(p): Query<AuditParams>,
) -> ApiResult<Json<AuditPage>> {
    let time_of = |what: &str, t: &Option<String>| -> ApiResult<Option<i64>> {
        t.as_deref()
            .map(|t| {
                time::parse_time(t).ok_or_else(|| {
                    ApiError::bad(
                        "TIME_ERROR",
                        format!("{what} {t:?} is not a time; Unix seconds or YYYY-MM-DD"),
                    )
                })
            })
            .transpose()
    };
    let q = AuditQuery {
        before: p.before,
        action: p.action,
        subject: p.subject,
        since: time_of("since", &p.since)?,
        until: time_of("until", &p.until)?,
        limit: page_limit(p.limit)?,
    };
    let entries = api.store().audit_log(&q).await?;
    let next_before = (entries.len() == q.limit as usize)
        .then(|| entries.last().map(|e| e.id))
        .flatten();
    Ok(Json(AuditPage {
        entries,
        next_before,
    }))
}
