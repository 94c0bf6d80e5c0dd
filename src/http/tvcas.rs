//! TVCAS's billing API, `GET /api.php`, answered as TVCAS 2 answers it, so a billing system
//! written for TVCAS works unchanged:
//!
//! - `api_key` must be the key, else `NOT_VALID_API_KEY`;
//! - `serial_no` names the card, else `SMARDCARD_NOT_FOUND` (TVCAS's spelling; a serial
//!   that is not a number finds no card, as TVCAS's `intval` finds card 0);
//! - optional `set[name]`, `set[info]`, `set[pair]`, `set[start]`, `set[finish]`,
//!   `set[access_criteria]` are checked in the order given, the first bad one answers
//!   (`UNKNOWN_SET_PARAMETER`, `PAIR_ERROR`, `START_ERROR`, `FINISH_ERROR`,
//!   `ACCESS_CRITERIA_ERROR`), and only when all are good are they written, in one change;
//! - the answer is the card as stored afterwards: `{"serial_no":..,"name":..,"info":..,
//!   "access_criteria":..,"pair":..,"start":..,"finish":..}`, every value a string, encoded
//!   as PHP's `json_encode` does (`\/`, non-ASCII as `\uXXXX`).
//!
//! Errors are TVCAS's: status 400 and the bare error word as the body (TVCAS answers every
//! error with `HTTP/1.0 400 Bad Request` and `die(WORD)`). Values are checked by the same
//! functions as `castmux card set` ([`fields`]), so castmux's wider forms pass too (dates,
//! `0x` criteria); errors TVCAS has no word for carry castmux's code (`FIELD_ERROR` for a
//! name over 255 characters; `DB_ERROR`, `STORE_LOCKED` with status 500 and 503).

use std::net::SocketAddr;

use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::ApiState;
use crate::cas::store::{fields, time, CardChanges, CardRecord, FinishSpec, StoreError};

/// TVCAS's error words (spelled as TVCAS spells them).
pub const NOT_VALID_API_KEY: &str = "NOT_VALID_API_KEY";
/// The card is not in the store (sic: TVCAS writes SMARD).
pub const SMARDCARD_NOT_FOUND: &str = "SMARDCARD_NOT_FOUND";
/// A `set[x]` other than the six fields.
pub const UNKNOWN_SET_PARAMETER: &str = "UNKNOWN_SET_PARAMETER";

/// Marks TVCAS's key refusal among the 400 answers, for the counters.
#[derive(Debug, Clone, Copy)]
pub(super) struct KeyRefused;

/// The answer to one call: the card, or an error word with its status.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    Card(TvcasCard),
    Error(StatusCode, &'static str),
}

/// A card in TVCAS's API shape; field order as TVCAS's SELECT.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TvcasCard {
    /// Serial, decimal.
    pub serial_no: String,
    /// Subscriber name.
    pub name: String,
    /// Free text.
    pub info: String,
    /// Packages, 0/1 digits, rightmost = first package.
    pub access_criteria: String,
    /// Pair flag, `0` or `1`.
    pub pair: String,
    /// Valid from, Unix seconds.
    pub start: String,
    /// Valid until, Unix seconds.
    pub finish: String,
}

impl From<&CardRecord> for TvcasCard {
    fn from(c: &CardRecord) -> TvcasCard {
        TvcasCard {
            serial_no: c.serial.to_string(),
            name: c.name.clone(),
            info: c.info.clone(),
            access_criteria: c.access.to_string(),
            pair: c.pair.to_string(),
            start: c.start.to_string(),
            finish: c.finish.to_string(),
        }
    }
}

/// `GET /api.php`.
pub(super) async fn api_php(
    State(api): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    // a query that does not decode holds no key that could match
    let pairs = query.map(|q| q.0).unwrap_or_default();
    let answer = answer(&api, &pairs, peer).await;
    match answer {
        Answer::Card(card) => (
            [(header::CONTENT_TYPE, "application/json")],
            php_json(&card),
        )
            .into_response(),
        Answer::Error(status, word) => {
            let mut res = (
                status,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                word,
            )
                .into_response();
            if word == NOT_VALID_API_KEY {
                res.extensions_mut().insert(KeyRefused);
            }
            res
        }
    }
}

/// The value of `name` (PHP's $_GET: the last of repeated names wins).
fn last<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// The `set[x]` parameters, each once (its last value), in the order they first came.
fn set_params(pairs: &[(String, String)]) -> Vec<(&str, &str)> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for (k, v) in pairs {
        let Some(field) = k.strip_prefix("set[").and_then(|r| r.strip_suffix(']')) else {
            continue;
        };
        match out.iter_mut().find(|(f, _)| *f == field) {
            Some(slot) => slot.1 = v,
            None => out.push((field, v)),
        }
    }
    out
}

/// Why a call is refused.
#[derive(Debug)]
enum Refusal {
    /// A `set[x]` that is not one of the six fields.
    UnknownSet,
    /// A bad value, no such card, or the store failed.
    Store(StoreError),
}

impl From<StoreError> for Refusal {
    fn from(e: StoreError) -> Refusal {
        Refusal::Store(e)
    }
}

/// The changes the `set[x]` parameters ask for, checked in their order; the first bad one
/// gives its error.
fn changes(sets: &[(&str, &str)]) -> Result<CardChanges, Refusal> {
    let mut c = CardChanges::default();
    for &(field, value) in sets {
        match field {
            "name" => c.name = Some(value.to_owned()),
            "info" => c.info = Some(value.to_owned()),
            "access_criteria" => {
                c.access = Some(crate::cas::store::AccessSpec::Criteria(
                    fields::parse_access(value)?,
                ))
            }
            "pair" => c.pair = Some(fields::parse_pair(value)?),
            "start" => c.start = Some(fields::parse_start(value)?),
            "finish" => c.finish = Some(FinishSpec::At(fields::parse_finish(value)?)),
            _ => return Err(Refusal::UnknownSet),
        }
    }
    Ok(c)
}

/// The error word and status of a store error, in TVCAS's words where TVCAS has one.
fn error_word(r: &Refusal) -> (StatusCode, &'static str) {
    let e = match r {
        Refusal::UnknownSet => return (StatusCode::BAD_REQUEST, UNKNOWN_SET_PARAMETER),
        Refusal::Store(e) => e,
    };
    match e {
        StoreError::SmartcardNotFound(_) | StoreError::Serial(_) => {
            (StatusCode::BAD_REQUEST, SMARDCARD_NOT_FOUND)
        }
        StoreError::Locked { .. } | StoreError::WriterStopped { .. } => {
            (StatusCode::SERVICE_UNAVAILABLE, e.code())
        }
        StoreError::Db { .. }
        | StoreError::NotCommitted { .. }
        | StoreError::Corrupt { .. }
        | StoreError::Migrate { .. }
        | StoreError::Io { .. }
        | StoreError::KeyFile(_)
        | StoreError::NotInitialized { .. } => (StatusCode::INTERNAL_SERVER_ERROR, e.code()),
        _ => (StatusCode::BAD_REQUEST, e.code()),
    }
}

async fn answer(api: &ApiState, pairs: &[(String, String)], peer: SocketAddr) -> Answer {
    let key_ok = last(pairs, "api_key").is_some_and(|k| api.key().matches(k));
    if !key_ok {
        api.refuse_key(peer).await;
        return Answer::Error(StatusCode::BAD_REQUEST, NOT_VALID_API_KEY);
    }
    let result: Result<CardRecord, Refusal> = async {
        let serial = fields::parse_serial(last(pairs, "serial_no").unwrap_or(""))?;
        let sets = set_params(pairs);
        if sets.is_empty() {
            return Ok(api.store().card(serial).await?);
        }
        // an unknown card is SMARDCARD_NOT_FOUND whatever else the call holds, as TVCAS
        // answers: set_card looks the card up before it checks the fields, and a set[x]
        // refused here is answered only once the card is known to exist
        match changes(&sets) {
            Ok(changes) => Ok(api.store().set_card(serial, &changes, time::now()).await?),
            Err(refused) => {
                api.store().card(serial).await?;
                Err(refused)
            }
        }
    }
    .await;
    match result {
        Ok(card) => Answer::Card(TvcasCard::from(&card)),
        Err(e) => {
            let (status, word) = error_word(&e);
            if let (true, Refusal::Store(e)) = (status.is_server_error(), &e) {
                tracing::warn!(error = %e, "api.php: the store failed");
            }
            Answer::Error(status, word)
        }
    }
}

/// JSON as PHP's `json_encode` writes it by default: `/` as `\/` and every non-ASCII
/// character as `\uXXXX` (UTF-16, lowercase hex), so the bytes match TVCAS's answer.
pub fn php_json<T: Serialize>(value: &T) -> String {
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, PhpFormatter);
    // a struct of strings always serializes
    value
        .serialize(&mut ser)
        .expect("serializing to memory does not fail");
    String::from_utf8(out).expect("the formatter writes ASCII")
}

struct PhpFormatter;

impl serde_json::ser::Formatter for PhpFormatter {
    fn write_string_fragment<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        fragment: &str,
    ) -> std::io::Result<()> {
        for c in fragment.chars() {
            if c == '/' {
                w.write_all(b"\\/")?;
            } else if c.is_ascii() {
                w.write_all(&[c as u8])?;
            } else {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    write!(w, "\\u{u:04x}")?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn php_json_encode_bytes() {
        // what PHP 5's json_encode gives for these values
        let card = TvcasCard {
            serial_no: "2100000000".into(),
            name: "Петрова Зинаида".into(),
            info: "Зелёная 38/5 \"a\"".into(),
            access_criteria: "00000001".into(),
            pair: "0".into(),
            start: "1234567890".into(),
            finish: "1234567890".into(),
        };
        assert_eq!(
            php_json(&card),
            r#"{"serial_no":"2100000000","name":"\u041f\u0435\u0442\u0440\u043e\u0432\u0430 \u0417\u0438\u043d\u0430\u0438\u0434\u0430","info":"\u0417\u0435\u043b\u0451\u043d\u0430\u044f 38\/5 \"a\"","access_criteria":"00000001","pair":"0","start":"1234567890","finish":"1234567890"}"#
        );
        // outside the BMP: a surrogate pair, as PHP writes it
        assert_eq!(php_json(&"😀"), r#""\ud83d\ude00""#);
        let back: String = serde_json::from_str(&php_json(&"a/Ж😀")).unwrap();
        assert_eq!(back, "a/Ж😀");
    }

    #[test]
    fn set_parameters_keep_first_order_and_last_value() {
        let p = pairs(&[
            ("api_key", "k"),
            ("set[pair]", "1"),
            ("set[name]", "a"),
            ("set[pair]", "0"),
            ("set", "ignored"),
        ]);
        assert_eq!(set_params(&p), [("pair", "0"), ("name", "a")]);
        assert_eq!(last(&p, "api_key"), Some("k"));
    }

    #[test]
    fn the_first_bad_set_parameter_answers() {
        let code = |list: &[(&str, &str)]| {
            changes(list)
                .map(|_| "OK")
                .unwrap_or_else(|e| error_word(&e).1)
        };
        assert_eq!(code(&[("pair", "2"), ("start", "x")]), "PAIR_ERROR");
        assert_eq!(code(&[("start", "x"), ("pair", "2")]), "START_ERROR");
        assert_eq!(code(&[("finish", "x")]), "FINISH_ERROR");
        assert_eq!(code(&[("access_criteria", "2")]), "ACCESS_CRITERIA_ERROR");
        assert_eq!(code(&[("color", "red")]), UNKNOWN_SET_PARAMETER);
        // the serial is not a field one may set
        assert_eq!(code(&[("serial_no", "1")]), UNKNOWN_SET_PARAMETER);
        assert_eq!(code(&[("name", "x"), ("pair", "1")]), "OK");
    }
}
