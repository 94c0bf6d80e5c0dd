//! Packages (named access-criteria bits) and pay-per-view events (a bit valid in a time window).

use sqlx::Row;

use super::error::StoreError;
use super::fields::{check_name, check_window};
use super::{audit, keys, next_change_seq, Store, Tx};
use crate::cas::types::{AccessCriteria, CardSerial, PackageBit};

/// A package as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageInfo {
    /// Its access-criteria bit.
    pub bit: PackageBit,
    /// Its name.
    pub name: String,
    /// Cards subscribed to it.
    pub cards: u64,
    /// Creation time, Unix seconds.
    pub created_at: i64,
}

/// A pay-per-view event as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventInfo {
    /// Its id.
    pub id: u32,
    /// Its name.
    pub name: String,
    /// The bit its channels carry.
    pub bit: PackageBit,
    /// Start, Unix seconds.
    pub start: i64,
    /// End (exclusive), Unix seconds.
    pub end: i64,
}

fn bit_of(v: i64) -> Result<PackageBit, sqlx::Error> {
    u32::try_from(v)
        .ok()
        .and_then(|b| PackageBit::new(b).ok())
        .ok_or_else(|| sqlx::Error::Decode(format!("package bit {v} out of range").into()))
}

/// The lowest bit used by no package and no event.
async fn lowest_free_bit(tx: &mut Tx<'_>) -> Result<Option<PackageBit>, sqlx::Error> {
    let rows = sqlx::query("SELECT bit FROM packages UNION SELECT bit FROM events")
        .fetch_all(&mut **tx)
        .await?;
    let mut used = 0u64;
    for r in rows {
        used |= 1 << bit_of(r.try_get(0)?)?.get();
    }
    Ok((0..64u32)
        .find(|b| used & (1 << b) == 0)
        .map(|b| PackageBit::new(b).expect("below 64")))
}

impl Store {
    /// Add a package on `bit` (default: the lowest bit no package or event uses). Creates its
    /// current and next service keys.
    pub async fn add_package(
        &self,
        name: &str,
        bit: Option<PackageBit>,
        now: i64,
    ) -> Result<PackageBit, StoreError> {
        check_name(name)?;
        let mut tx = self.write_tx().await?;
        let taken = sqlx::query("SELECT bit, name FROM packages WHERE name = $1 OR bit = $2")
            .bind(name)
            .bind(bit.map(|b| i64::from(b.get())).unwrap_or(-1))
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| self.err(e))?;
        if let Some(r) = taken {
            let b: i64 = r.try_get(0).map_err(|e| self.err(e))?;
            let n: String = r.try_get(1).map_err(|e| self.err(e))?;
            return Err(StoreError::PackageExists(if n == name {
                format!("a package named {name:?} already exists (bit {b})")
            } else {
                format!(
                    "bit {b} is already package {n:?}; leave out --bit to take the lowest free bit"
                )
            }));
        }
        let bit = match bit {
            Some(b) => b,
            None => lowest_free_bit(&mut tx)
                .await
                .map_err(|e| self.err(e))?
                .ok_or(StoreError::BitsExhausted)?,
        };
        let res: Result<(), sqlx::Error> = async {
            sqlx::query("INSERT INTO packages (bit, name, created_at) VALUES ($1, $2, $3)")
                .bind(i64::from(bit.get()))
                .bind(name)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            audit::record(
                &mut tx,
                now,
                "package.add",
                name,
                &format!("bit {}", bit.get()),
            )
            .await?;
            keys::ensure_keys(&mut tx, bit, now).await
        }
        .await;
        res.map_err(|e| self.err(e))?;
        tx.commit().await.map_err(|e| self.err(e))?;
        tracing::info!(package = name, bit = bit.get(), "package added");
        Ok(bit)
    }

    /// All packages, by bit. `cards` is filled in only with `count_cards` (a scan of the
    /// cards table).
    pub async fn packages(&self, count_cards: bool) -> Result<Vec<PackageInfo>, StoreError> {
        let mut tx = self.read_tx().await?;
        let rows = sqlx::query("SELECT bit, name, created_at FROM packages ORDER BY bit")
            .fetch_all(&mut *tx)
            .await
            .map_err(|e| self.err(e))?;
        let mut list = rows
            .iter()
            .map(|r| {
                Ok(PackageInfo {
                    bit: bit_of(r.try_get(0)?)?,
                    name: r.try_get(1)?,
                    created_at: r.try_get(2)?,
                    cards: 0,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(|e| self.err(e))?;
        if count_cards && !list.is_empty() {
            // one pass: cards grouped by their criteria, then bits counted here
            let groups =
                sqlx::query("SELECT access_criteria, COUNT(*) FROM cards GROUP BY access_criteria")
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(|e| self.err(e))?;
            for g in groups {
                let t: Result<(i64, i64), sqlx::Error> = (|| Ok((g.try_get(0)?, g.try_get(1)?)))();
                let (mask, n) = t.map_err(|e| self.err(e))?;
                for p in &mut list {
                    if (mask as u64) & (1 << p.bit.get()) != 0 {
                        p.cards += n as u64;
                    }
                }
            }
        }
        Ok(list)
    }

    /// The access criteria naming `names` (each must be a package).
    pub async fn package_bits<S: AsRef<str>>(
        &self,
        names: &[S],
    ) -> Result<AccessCriteria, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(|e| self.err(e))?;
        let mut access = AccessCriteria::NONE;
        for n in names {
            let n = n.as_ref();
            let row = sqlx::query("SELECT bit FROM packages WHERE name = $1")
                .bind(n)
                .fetch_optional(&mut *conn)
                .await
                .map_err(|e| self.err(e))?
                .ok_or_else(|| StoreError::PackageNotFound(n.to_owned()))?;
            let bit = bit_of(row.try_get(0).map_err(|e| self.err(e))?).map_err(|e| self.err(e))?;
            access.0 |= 1 << bit.get();
        }
        Ok(access)
    }

    /// Add a pay-per-view event on `bit` (default: the lowest bit no package or event uses;
    /// an explicit bit may be shared with a package or other events). Returns its bit.
    pub async fn add_event(
        &self,
        name: &str,
        start: i64,
        end: i64,
        bit: Option<PackageBit>,
        now: i64,
    ) -> Result<PackageBit, StoreError> {
        check_name(name)?;
        check_window(start, end).map_err(|_| {
            StoreError::Finish(format!(
                "event end {end} is not after its start {start}; give a later --end"
            ))
        })?;
        let mut tx = self.write_tx().await?;
        let exists = sqlx::query("SELECT 1 FROM events WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| self.err(e))?;
        if exists.is_some() {
            return Err(StoreError::EventExists(name.to_owned()));
        }
        let bit = match bit {
            Some(b) => b,
            None => lowest_free_bit(&mut tx)
                .await
                .map_err(|e| self.err(e))?
                .ok_or(StoreError::BitsExhausted)?,
        };
        let res: Result<(), sqlx::Error> = async {
            sqlx::query(
                "INSERT INTO events (id, name, start_at, end_at, bit, created_at) \
                 SELECT COALESCE(MAX(id), 0) + 1, $1, $2, $3, $4, $5 FROM events",
            )
            .bind(name)
            .bind(start)
            .bind(end)
            .bind(i64::from(bit.get()))
            .bind(now)
            .execute(&mut *tx)
            .await?;
            audit::record(
                &mut tx,
                now,
                "event.add",
                name,
                &format!("bit {} from {start} to {end}", bit.get()),
            )
            .await?;
            keys::ensure_keys(&mut tx, bit, now).await
        }
        .await;
        res.map_err(|e| self.err(e))?;
        tx.commit().await.map_err(|e| self.err(e))?;
        Ok(bit)
    }

    /// All events, by start.
    pub async fn events(&self) -> Result<Vec<EventInfo>, StoreError> {
        let rows =
            sqlx::query("SELECT id, name, bit, start_at, end_at FROM events ORDER BY start_at, id")
                .fetch_all(&self.pool)
                .await
                .map_err(|e| self.err(e))?;
        rows.iter()
            .map(|r| {
                Ok(EventInfo {
                    id: r.try_get::<i64, _>(0)? as u32,
                    name: r.try_get(1)?,
                    bit: bit_of(r.try_get(2)?)?,
                    start: r.try_get(3)?,
                    end: r.try_get(4)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(|e| self.err(e))
    }

    /// Grant event `event` to card `serial` (granting twice is a no-op).
    pub async fn grant_event(
        &self,
        serial: CardSerial,
        event: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        let ev = sqlx::query("SELECT id FROM events WHERE name = $1")
            .bind(event)
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| self.err(e))?
            .ok_or_else(|| StoreError::EventNotFound(event.to_owned()))?;
        let id: i64 = ev.try_get(0).map_err(|e| self.err(e))?;
        let card = sqlx::query("SELECT 1 FROM cards WHERE serial = $1")
            .bind(serial.0 as i64)
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| self.err(e))?;
        if card.is_none() {
            return Err(StoreError::SmartcardNotFound(serial));
        }
        let res: Result<(), sqlx::Error> = async {
            let seq = next_change_seq(&mut tx).await?;
            sqlx::query(
                "INSERT INTO card_events (serial, event_id, granted_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (serial, event_id) DO NOTHING",
            )
            .bind(serial.0 as i64)
            .bind(id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            sqlx::query("UPDATE cards SET change_seq = $1, updated_at = $2 WHERE serial = $3")
                .bind(seq)
                .bind(now)
                .bind(serial.0 as i64)
                .execute(&mut *tx)
                .await?;
            audit::record(&mut tx, now, "card.grant-event", &serial.to_string(), event).await
        }
        .await;
        res.map_err(|e| self.err(e))?;
        tx.commit().await.map_err(|e| self.err(e))
    }
}
