//! Cards: add (single or in bulk), read, change, enable/disable, remove, CSV import/export,
//! the card.json export and the change feed the EMM carousel reads.

use std::collections::HashMap;
use std::path::Path;

use futures::TryStreamExt;

use sqlx::Row;

use super::error::StoreError;
use super::fields::{check_text, check_window};
use super::time::DAY;
use super::{audit, next_change_seq, Store, Tx};
use crate::cas::types::{AccessCriteria, CardSerial, Entitlements, EventGrant, PackageBit};

/// Most cards one `add` may create.
pub const MAX_ADD: u64 = 10_000_000;

/// Validity given to a new card when no finish is given.
pub const DEFAULT_DAYS: u32 = 30;

/// Packages as given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessSpec {
    /// TVCAS digits or hex.
    Criteria(AccessCriteria),
    /// Package names, resolved to bits in the same transaction.
    Packages(Vec<String>),
}

/// A finish as given on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishSpec {
    /// At this time.
    At(i64),
    /// This many days after the (new or current) start.
    Days(u32),
}

/// Fields to set; `None` keeps the current value (or the default for a new card: empty
/// name/info, no packages, start now, finish start + 30 days, pair 0).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CardChanges {
    /// Subscriber name.
    pub name: Option<String>,
    /// Free text (address, contract).
    pub info: Option<String>,
    /// Packages.
    pub access: Option<AccessSpec>,
    /// Valid from.
    pub start: Option<i64>,
    /// Valid until.
    pub finish: Option<FinishSpec>,
    /// Pair flag.
    pub pair: Option<u8>,
}

/// A card as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardRecord {
    /// Serial.
    pub serial: CardSerial,
    /// Subscriber name.
    pub name: String,
    /// Free text.
    pub info: String,
    /// Subscribed packages.
    pub access: AccessCriteria,
    /// Valid from, Unix seconds.
    pub start: i64,
    /// Valid until (exclusive), Unix seconds.
    pub finish: i64,
    /// Pair flag.
    pub pair: u8,
    /// False when disabled.
    pub enabled: bool,
    /// Created, Unix seconds.
    pub created_at: i64,
    /// Last changed, Unix seconds.
    pub updated_at: i64,
    /// Change sequence number of its last change.
    pub change_seq: u64,
    /// Granted pay-per-view events.
    pub events: Vec<EventGrant>,
}

impl CardRecord {
    /// What the card may watch.
    pub fn entitlements(&self) -> Entitlements {
        Entitlements {
            access: self.access,
            start: self.start,
            finish: self.finish,
            pair: self.pair,
            enabled: self.enabled,
            events: self.events.clone(),
        }
    }

    /// The TVCAS CSV row (columns as [`super::transfer::CSV_COLUMNS`]).
    pub fn csv_fields(&self) -> [String; 7] {
        [
            self.serial.to_string(),
            self.name.clone(),
            self.info.clone(),
            self.access.to_string(),
            self.pair.to_string(),
            self.start.to_string(),
            self.finish.to_string(),
        ]
    }
}

/// Which cards to list.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum CardFilter {
    /// Every card.
    #[default]
    All,
    /// Serial, name or info contains this (case-insensitive for ASCII).
    Text(String),
    /// Enabled (true) or disabled (false) cards.
    Enabled(bool),
    /// Cards subscribed to this package.
    Package(String),
}

impl CardFilter {
    /// `state=enabled|disabled`, `package=NAME`, or a substring of serial/name/info.
    pub fn parse(text: &str) -> Result<CardFilter, StoreError> {
        let t = text.trim();
        if let Some(s) = t.strip_prefix("state=") {
            return match s {
                "enabled" => Ok(CardFilter::Enabled(true)),
                "disabled" => Ok(CardFilter::Enabled(false)),
                _ => Err(StoreError::Field(format!(
                    "filter {text:?}: state is enabled or disabled"
                ))),
            };
        }
        if let Some(p) = t.strip_prefix("package=") {
            return Ok(CardFilter::Package(p.to_owned()));
        }
        if t.is_empty() {
            return Ok(CardFilter::All);
        }
        Ok(CardFilter::Text(t.to_owned()))
    }
}

pub(super) const CARD_COLUMNS: &str =
    "serial, name, info, access_criteria, start_at, finish_at, pair, state, \
                            created_at, updated_at, change_seq";

pub(super) fn card_from_row(r: &sqlx::any::AnyRow) -> Result<CardRecord, sqlx::Error> {
    let serial: i64 = r.try_get(0)?;
    let pair: i64 = r.try_get(6)?;
    let state: String = r.try_get(7)?;
    Ok(CardRecord {
        serial: CardSerial(serial as u64),
        name: r.try_get(1)?,
        info: r.try_get(2)?,
        // the BIGINT holds the u64 bit pattern
        access: AccessCriteria(r.try_get::<i64, _>(3)? as u64),
        start: r.try_get(4)?,
        finish: r.try_get(5)?,
        pair: u8::from(pair != 0),
        enabled: state == "enabled",
        created_at: r.try_get(8)?,
        updated_at: r.try_get(9)?,
        change_seq: r.try_get::<i64, _>(10)? as u64,
        events: Vec::new(),
    })
}

fn grant_from_row(r: &sqlx::any::AnyRow) -> Result<(i64, EventGrant), sqlx::Error> {
    let bit: i64 = r.try_get(2)?;
    let bit = u32::try_from(bit)
        .ok()
        .and_then(|b| PackageBit::new(b).ok())
        .ok_or_else(|| sqlx::Error::Decode(format!("event bit {bit} out of range").into()))?;
    Ok((
        r.try_get(0)?,
        EventGrant {
            id: r.try_get::<i64, _>(1)? as u32,
            bit,
            start: r.try_get(3)?,
            end: r.try_get(4)?,
        },
    ))
}

const GRANTS: &str = "SELECT ce.serial, e.id, e.bit, e.start_at, e.end_at \
                      FROM card_events ce JOIN events e ON e.id = ce.event_id";

/// A LIKE pattern (escape character `!`) matching `t` anywhere: instr() is SQLite's and
/// strpos() PostgreSQL's, LIKE is both's.
fn like_substring(t: &str) -> String {
    let mut p = String::with_capacity(t.len() + 2);
    p.push('%');
    for c in t.chars() {
        if matches!(c, '%' | '_' | '!') {
            p.push('!');
        }
        p.push(c);
    }
    p.push('%');
    p
}

/// Run a card SELECT, converting rows as they stream in (a million rows held as driver rows
/// would take gigabytes).
pub(super) async fn fetch_cards<'q>(
    tx: &mut Tx<'_>,
    q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
) -> Result<Vec<CardRecord>, sqlx::Error> {
    let mut rows = q.fetch(&mut **tx);
    let mut out = Vec::new();
    while let Some(r) = rows.try_next().await? {
        out.push(card_from_row(&r)?);
    }
    Ok(out)
}

/// The card `serial` without its event grants; `None` when there is no such card.
async fn card_by_serial(
    tx: &mut Tx<'_>,
    serial: CardSerial,
) -> Result<Option<CardRecord>, sqlx::Error> {
    let row = sqlx::query(&format!(
        "SELECT {CARD_COLUMNS} FROM cards WHERE serial = $1"
    ))
    .bind(serial.0 as i64)
    .fetch_optional(&mut **tx)
    .await?;
    row.as_ref().map(card_from_row).transpose()
}

/// Attach event grants to cards.
pub(super) async fn attach_events(
    tx: &mut Tx<'_>,
    cards: &mut [CardRecord],
    one: Option<CardSerial>,
) -> Result<(), sqlx::Error> {
    let rows = match one {
        Some(s) => {
            sqlx::query(&format!("{GRANTS} WHERE ce.serial = $1 ORDER BY e.id"))
                .bind(s.0 as i64)
                .fetch_all(&mut **tx)
                .await?
        }
        None => {
            sqlx::query(&format!("{GRANTS} ORDER BY ce.serial, e.id"))
                .fetch_all(&mut **tx)
                .await?
        }
    };
    if rows.is_empty() {
        return Ok(());
    }
    let mut by_serial: HashMap<i64, Vec<EventGrant>> = HashMap::new();
    for r in &rows {
        let (s, g) = grant_from_row(r)?;
        by_serial.entry(s).or_default().push(g);
    }
    for c in cards {
        if let Some(g) = by_serial.remove(&(c.serial.0 as i64)) {
            c.events = g;
        }
    }
    Ok(())
}

/// Attach event grants to `cards`, all of whose serials lie in `span` (first, last).
async fn attach_events_between(
    tx: &mut Tx<'_>,
    cards: &mut [CardRecord],
    span: (CardSerial, CardSerial),
) -> Result<(), sqlx::Error> {
    let rows = sqlx::query(&format!(
        "{GRANTS} WHERE ce.serial BETWEEN $1 AND $2 ORDER BY ce.serial, e.id"
    ))
    .bind(span.0 .0 as i64)
    .bind(span.1 .0 as i64)
    .fetch_all(&mut **tx)
    .await?;
    let mut by_serial: HashMap<i64, Vec<EventGrant>> = HashMap::new();
    for r in &rows {
        let (s, g) = grant_from_row(r)?;
        by_serial.entry(s).or_default().push(g);
    }
    for c in cards {
        if let Some(g) = by_serial.remove(&(c.serial.0 as i64)) {
            c.events = g;
        }
    }
    Ok(())
}

async fn resolve_access(
    tx: &mut Tx<'_>,
    spec: &AccessSpec,
) -> Result<Result<AccessCriteria, StoreError>, sqlx::Error> {
    match spec {
        AccessSpec::Criteria(a) => Ok(Ok(*a)),
        AccessSpec::Packages(names) => {
            let mut access = AccessCriteria::NONE;
            for n in names {
                let row = sqlx::query("SELECT bit FROM packages WHERE name = $1")
                    .bind(n)
                    .fetch_optional(&mut **tx)
                    .await?;
                match row {
                    Some(r) => access.0 |= 1u64 << (r.try_get::<i64, _>(0)? & 63),
                    None => return Ok(Err(StoreError::PackageNotFound(n.clone()))),
                }
            }
            Ok(Ok(access))
        }
    }
}

/// Split `count` serials starting at `from` around the `taken` ones (sorted) into runs.
fn free_runs(from: u64, count: u64, taken: &[u64]) -> Option<Vec<(u64, u64)>> {
    let mut runs = Vec::new();
    let mut cur = from;
    let mut need = count;
    for &t in taken {
        if need == 0 {
            break;
        }
        if t < cur {
            continue;
        }
        if t > cur {
            let len = (t - cur).min(need);
            runs.push((cur, cur + len - 1));
            need -= len;
        }
        cur = t.checked_add(1)?;
    }
    if need > 0 {
        let last = cur.checked_add(need - 1)?;
        if last > i64::MAX as u64 {
            return None;
        }
        runs.push((cur, last));
    }
    Some(runs)
}

/// Apply `changes` to card `serial` inside `tx` (the card writer's savepoint) and read the
/// card back as stored. The card is looked up before the fields are checked, so an unknown
/// card is SMARTCARD_NOT_FOUND whatever else the change holds (as TVCAS answers).
pub(super) async fn set_card_in(
    tx: &mut Tx<'_>,
    path: &Path,
    serial: CardSerial,
    changes: &CardChanges,
    now: i64,
) -> Result<CardRecord, StoreError> {
    let db = |e| StoreError::db(path, e);
    let mut card = card_by_serial(tx, serial)
        .await
        .map_err(db)?
        .ok_or(StoreError::SmartcardNotFound(serial))?;
    let mut what = Vec::new();
    if let Some(n) = &changes.name {
        check_text("name", n)?;
        card.name = n.clone();
        what.push("name".to_owned());
    }
    if let Some(i) = &changes.info {
        check_text("info", i)?;
        card.info = i.clone();
        what.push("info".to_owned());
    }
    if let Some(spec) = &changes.access {
        card.access = resolve_access(tx, spec).await.map_err(db)??;
        what.push(format!("access={}", card.access));
    }
    if let Some(s) = changes.start {
        card.start = s;
        what.push(format!("start={s}"));
    }
    match changes.finish {
        Some(FinishSpec::At(t)) => card.finish = t,
        Some(FinishSpec::Days(d)) => card.finish = card.start + i64::from(d) * DAY,
        None => {}
    }
    if changes.finish.is_some() {
        what.push(format!("finish={}", card.finish));
    }
    if let Some(p) = changes.pair {
        card.pair = p;
        what.push(format!("pair={p}"));
    }
    check_window(card.start, card.finish)?;
    let res: Result<CardRecord, sqlx::Error> = async {
        let seq = next_change_seq(tx).await?;
        // RETURNING reads the row back as stored in the same statement
        let row = sqlx::query(&format!(
            "UPDATE cards SET name = $1, info = $2, access_criteria = $3, start_at = $4, \
             finish_at = $5, pair = $6, updated_at = $7, change_seq = $8 WHERE serial = $9 \
             RETURNING {CARD_COLUMNS}"
        ))
        .bind(&card.name)
        .bind(&card.info)
        .bind(card.access.0 as i64)
        .bind(card.start)
        .bind(card.finish)
        .bind(i64::from(card.pair))
        .bind(now)
        .bind(seq)
        .bind(serial.0 as i64)
        .fetch_one(&mut **tx)
        .await?;
        let mut stored = card_from_row(&row)?;
        // the grants were read above in this transaction, which holds the write lock, and a
        // card change does not touch them: no second read
        stored.events = std::mem::take(&mut card.events);
        audit::record(tx, now, "card.set", &serial.to_string(), &what.join(" ")).await?;
        Ok(stored)
    }
    .await;
    res.map_err(db)
}

impl Store {
    /// Add `count` cards with the same fields. With `serial` they take `serial..serial+count`
    /// (all must be free); without, the next free serials from the allocation point.
    /// One transaction: all are added or none. Returns the serial runs added.
    pub async fn add_cards(
        &self,
        count: u64,
        serial: Option<CardSerial>,
        fields: &CardChanges,
        now: i64,
    ) -> Result<Vec<(CardSerial, CardSerial)>, StoreError> {
        if count == 0 || count > MAX_ADD {
            return Err(StoreError::Count(format!(
                "--count {count} is out of range; expected 1..={MAX_ADD}"
            )));
        }
        let name = fields.name.clone().unwrap_or_default();
        let info = fields.info.clone().unwrap_or_default();
        check_text("name", &name)?;
        check_text("info", &info)?;
        let start = fields.start.unwrap_or(now);
        let finish = match fields.finish {
            Some(FinishSpec::At(t)) => t,
            Some(FinishSpec::Days(d)) => start + i64::from(d) * DAY,
            None => start + i64::from(DEFAULT_DAYS) * DAY,
        };
        check_window(start, finish)?;
        let pair = fields.pair.unwrap_or(0);

        let mut tx = self.write_tx().await?;
        let access = match &fields.access {
            Some(spec) => resolve_access(&mut tx, spec)
                .await
                .map_err(|e| self.err(e))??,
            None => AccessCriteria::NONE,
        };
        let runs = match serial {
            Some(s) => {
                let last =
                    s.0.checked_add(count - 1)
                        .filter(|&l| l <= i64::MAX as u64)
                        .ok_or(StoreError::SerialsExhausted(count))?;
                let clash =
                    sqlx::query("SELECT MIN(serial) FROM cards WHERE serial BETWEEN $1 AND $2")
                        .bind(s.0 as i64)
                        .bind(last as i64)
                        .fetch_one(&mut *tx)
                        .await
                        .and_then(|r| r.try_get::<Option<i64>, _>(0))
                        .map_err(|e| self.err(e))?;
                if let Some(c) = clash {
                    return Err(StoreError::SmartcardExists(CardSerial(c as u64)));
                }
                vec![(s.0, last)]
            }
            None => {
                let next: i64 = sqlx::query("SELECT next_serial FROM settings WHERE id = 1")
                    .fetch_one(&mut *tx)
                    .await
                    .and_then(|r| r.try_get(0))
                    .map_err(|e| self.err(e))?;
                let taken: Vec<u64> =
                    sqlx::query("SELECT serial FROM cards WHERE serial >= $1 ORDER BY serial")
                        .bind(next)
                        .fetch_all(&mut *tx)
                        .await
                        .map_err(|e| self.err(e))?
                        .iter()
                        .map(|r| r.try_get::<i64, _>(0).map(|v| v as u64))
                        .collect::<Result<_, _>>()
                        .map_err(|e| self.err(e))?;
                let runs = free_runs(next as u64, count, &taken)
                    .ok_or(StoreError::SerialsExhausted(count))?;
                let after = runs.last().map(|r| r.1 + 1).unwrap_or(next as u64);
                sqlx::query("UPDATE settings SET next_serial = $1 WHERE id = 1")
                    .bind(after.min(i64::MAX as u64) as i64)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| self.err(e))?;
                runs
            }
        };
        let res: Result<(), sqlx::Error> = async {
            let seq = next_change_seq(&mut tx).await?;
            for &(first, last) in &runs {
                // a recursive CTE generates the serials inside the engine: one statement per
                // run instead of one per card
                sqlx::query(&format!(
                    "INSERT INTO cards ({CARD_COLUMNS}) \
                     WITH RECURSIVE s(n) AS (SELECT $1 UNION ALL SELECT n + 1 FROM s WHERE n < $2) \
                     SELECT n, $3, $4, $5, $6, $7, $8, 'enabled', $9, $10, $11 FROM s"
                ))
                .bind(first as i64)
                .bind(last as i64)
                .bind(&name)
                .bind(&info)
                .bind(access.0 as i64)
                .bind(start)
                .bind(finish)
                .bind(i64::from(pair))
                .bind(now)
                .bind(now)
                .bind(seq)
                .execute(&mut *tx)
                .await?;
                sqlx::query("DELETE FROM removed_cards WHERE serial BETWEEN $1 AND $2")
                    .bind(first as i64)
                    .bind(last as i64)
                    .execute(&mut *tx)
                    .await?;
                audit::record(
                    &mut tx,
                    now,
                    "card.add",
                    &if first == last {
                        first.to_string()
                    } else {
                        format!("{first}..{last}")
                    },
                    &format!(
                        "{} card(s) access={access} start={start} finish={finish} pair={pair}",
                        last - first + 1
                    ),
                )
                .await?;
            }
            Ok(())
        }
        .await;
        res.map_err(|e| self.err(e))?;
        tx.commit().await.map_err(|e| self.err(e))?;
        tracing::info!(inserted = count, "cards added");
        Ok(runs
            .into_iter()
            .map(|(a, b)| (CardSerial(a), CardSerial(b)))
            .collect())
    }

    /// One card.
    pub async fn card(&self, serial: CardSerial) -> Result<CardRecord, StoreError> {
        let mut tx = self.read_tx().await?;
        let mut card = [card_by_serial(&mut tx, serial)
            .await
            .map_err(|e| self.err(e))?
            .ok_or(StoreError::SmartcardNotFound(serial))?];
        attach_events(&mut tx, &mut card, Some(serial))
            .await
            .map_err(|e| self.err(e))?;
        let [card] = card;
        Ok(card)
    }

    /// Cards matching `filter`, by serial.
    pub async fn cards(&self, filter: &CardFilter) -> Result<Vec<CardRecord>, StoreError> {
        let mut tx = self.read_tx().await?;
        let (cond, bind) = self.filter_sql(&mut tx, filter).await?;
        let sql = format!("SELECT {CARD_COLUMNS} FROM cards WHERE {cond} ORDER BY serial");
        let mut q = sqlx::query(&sql);
        if let Some(b) = bind {
            q = q.bind(b);
        }
        let mut cards = fetch_cards(&mut tx, q).await.map_err(|e| self.err(e))?;
        attach_events(&mut tx, &mut cards, None)
            .await
            .map_err(|e| self.err(e))?;
        Ok(cards)
    }

    /// At most `limit` cards matching `filter` with a serial above `after`, by serial: one
    /// page of a listing that may hold millions (the next page starts after the last serial
    /// of this one, so pages stay right while cards are added or removed).
    pub async fn cards_page(
        &self,
        filter: &CardFilter,
        after: Option<CardSerial>,
        limit: u32,
    ) -> Result<Vec<CardRecord>, StoreError> {
        let mut tx = self.read_tx().await?;
        let (cond, bind) = self.filter_sql(&mut tx, filter).await?;
        // the filter's own parameter is $1, so the page bounds are numbered after it
        let sql = format!(
            "SELECT {CARD_COLUMNS} FROM cards WHERE ({cond}) AND serial > $2 \
             ORDER BY serial LIMIT $3"
        );
        let q = sqlx::query(&sql)
            .bind(bind.unwrap_or_default())
            .bind(after.map(|s| s.0 as i64).unwrap_or(-1))
            .bind(i64::from(limit));
        let mut cards = fetch_cards(&mut tx, q).await.map_err(|e| self.err(e))?;
        if let (Some(first), Some(last)) = (cards.first(), cards.last()) {
            let span = (first.serial, last.serial);
            attach_events_between(&mut tx, &mut cards, span)
                .await
                .map_err(|e| self.err(e))?;
        }
        Ok(cards)
    }

    /// The WHERE condition of `filter` and its one text parameter (`$1`); a package name is
    /// resolved to its bit here.
    async fn filter_sql(
        &self,
        tx: &mut Tx<'static>,
        filter: &CardFilter,
    ) -> Result<(String, Option<String>), StoreError> {
        Ok(match filter {
            CardFilter::All => ("1 = 1".to_owned(), None),
            CardFilter::Text(t) => (
                "(CAST(serial AS TEXT) LIKE $1 ESCAPE '!' \
                 OR lower(name) LIKE lower($1) ESCAPE '!' OR lower(info) LIKE lower($1) ESCAPE '!')"
                    .to_owned(),
                Some(like_substring(t)),
            ),
            CardFilter::Enabled(on) => (
                "state = $1".to_owned(),
                Some(if *on { "enabled" } else { "disabled" }.to_owned()),
            ),
            CardFilter::Package(p) => {
                let bit = sqlx::query("SELECT bit FROM packages WHERE name = $1")
                    .bind(p)
                    .fetch_optional(&mut **tx)
                    .await
                    .map_err(|e| self.err(e))?
                    .ok_or_else(|| StoreError::PackageNotFound(p.clone()))?
                    .try_get::<i64, _>(0)
                    .map_err(|e| self.err(e))?;
                (format!("(access_criteria >> {bit}) & 1 = 1"), None)
            }
        })
    }

    /// Change fields of a card; returns it as stored afterwards, read back in the
    /// transaction that wrote it. The change is queued to the store's card writer, which
    /// commits the changes of concurrent callers together ([`super::writer`]); this returns
    /// once that commit is durable, or with this change's own error.
    pub async fn set_card(
        &self,
        serial: CardSerial,
        changes: &CardChanges,
        now: i64,
    ) -> Result<CardRecord, StoreError> {
        self.card_writer.set(serial, changes.clone(), now).await
    }

    /// Enable or disable a card.
    pub async fn set_enabled(
        &self,
        serial: CardSerial,
        enabled: bool,
        now: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        let res: Result<u64, sqlx::Error> = async {
            let seq = next_change_seq(&mut tx).await?;
            let n = sqlx::query(
                "UPDATE cards SET state = $1, updated_at = $2, change_seq = $3 WHERE serial = $4",
            )
            .bind(if enabled { "enabled" } else { "disabled" })
            .bind(now)
            .bind(seq)
            .bind(serial.0 as i64)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if n > 0 {
                let action = if enabled {
                    "card.enable"
                } else {
                    "card.disable"
                };
                audit::record(&mut tx, now, action, &serial.to_string(), "").await?;
            }
            Ok(n)
        }
        .await;
        if res.map_err(|e| self.err(e))? == 0 {
            return Err(StoreError::SmartcardNotFound(serial));
        }
        tx.commit().await.map_err(|e| self.err(e))
    }

    /// Remove a card (its event grants go with it); it leaves a tombstone in the change feed.
    pub async fn remove_card(&self, serial: CardSerial, now: i64) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        let res: Result<u64, sqlx::Error> = async {
            let n = sqlx::query("DELETE FROM cards WHERE serial = $1")
                .bind(serial.0 as i64)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if n > 0 {
                let seq = next_change_seq(&mut tx).await?;
                sqlx::query(
                    "INSERT INTO removed_cards (serial, change_seq, removed_at) VALUES ($1, $2, $3) \
                     ON CONFLICT (serial) DO UPDATE SET change_seq = excluded.change_seq, \
                     removed_at = excluded.removed_at",
                )
                .bind(serial.0 as i64)
                .bind(seq)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                audit::record(&mut tx, now, "card.remove", &serial.to_string(), "").await?;
            }
            Ok(n)
        }
        .await;
        if res.map_err(|e| self.err(e))? == 0 {
            return Err(StoreError::SmartcardNotFound(serial));
        }
        tx.commit().await.map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_skip_taken_serials() {
        assert_eq!(free_runs(10, 3, &[]).unwrap(), [(10, 12)]);
        assert_eq!(
            free_runs(10, 5, &[10, 12, 13]).unwrap(),
            [(11, 11), (14, 17)]
        );
        assert_eq!(free_runs(10, 2, &[5, 20]).unwrap(), [(10, 11)]);
        assert!(free_runs(i64::MAX as u64 - 1, 5, &[]).is_none());
    }

    #[test]
    fn filters_parse() {
        assert_eq!(
            CardFilter::parse("state=disabled").unwrap(),
            CardFilter::Enabled(false)
        );
        assert_eq!(
            CardFilter::parse("package=sport").unwrap(),
            CardFilter::Package("sport".into())
        );
        assert_eq!(
            CardFilter::parse("Ivan").unwrap(),
            CardFilter::Text("Ivan".into())
        );
        assert!(CardFilter::parse("state=x").is_err());
    }
}
