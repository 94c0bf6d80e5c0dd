//! Service keys: per package bit a current and a next key, versioned. Rotation makes next the
//! current and adds a fresh next, so cards that got the next key by EMM switch without a gap.
//! Keys older than the current one are deleted: nothing needs them after the switch.

use std::collections::BTreeMap;

use sqlx::Row;

use super::error::StoreError;
use super::time::format_interval;
use super::{audit, Store, Tx};
use crate::cas::types::{Key128, PackageBit, ServiceKey};

/// One bit's key state, for `castmux keys status` (versions and ages only, never keys).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyStatus {
    /// The bit.
    pub bit: PackageBit,
    /// Packages and events on this bit.
    pub names: Vec<String>,
    /// Current key version.
    pub current_version: u32,
    /// When the current key became current, Unix seconds.
    pub current_since: i64,
    /// Next key version.
    pub next_version: u32,
    /// When the next key was made, Unix seconds.
    pub next_created: i64,
}

fn bit(v: i64) -> Result<PackageBit, sqlx::Error> {
    u32::try_from(v)
        .ok()
        .and_then(|b| PackageBit::new(b).ok())
        .ok_or_else(|| sqlx::Error::Decode(format!("package bit {v} out of range").into()))
}

async fn insert_key(
    tx: &mut Tx<'_>,
    bit: PackageBit,
    version: i64,
    now: i64,
    activated: Option<i64>,
) -> Result<(), sqlx::Error> {
    let key = Key128::random();
    sqlx::query(
        "INSERT INTO service_keys (bit, version, key_hex, created_at, activated_at) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(i64::from(bit.get()))
    .bind(version)
    .bind(key.expose_hex())
    .bind(now)
    .bind(activated)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Give `bit` a current (v1) and next (v2) key unless it has keys already.
pub(crate) async fn ensure_keys(
    tx: &mut Tx<'_>,
    bit: PackageBit,
    now: i64,
) -> Result<(), sqlx::Error> {
    let have = sqlx::query("SELECT 1 FROM service_keys WHERE bit = $1 LIMIT 1")
        .bind(i64::from(bit.get()))
        .fetch_optional(&mut **tx)
        .await?;
    if have.is_some() {
        return Ok(());
    }
    insert_key(tx, bit, 1, now, Some(now)).await?;
    insert_key(tx, bit, 2, now, None).await?;
    audit::record(
        tx,
        now,
        "service-key.create",
        &format!("bit {}", bit.get()),
        "current v1, next v2",
    )
    .await
}

/// Rotate one bit inside `tx`; returns the new current version.
async fn rotate_bit(tx: &mut Tx<'_>, bit: PackageBit, now: i64) -> Result<i64, sqlx::Error> {
    let b = i64::from(bit.get());
    let next: i64 = sqlx::query("SELECT MAX(version) FROM service_keys WHERE bit = $1")
        .bind(b)
        .fetch_one(&mut **tx)
        .await?
        .try_get::<Option<i64>, _>(0)?
        .unwrap_or(0);
    if next == 0 {
        // a bit without keys (cannot happen through the API): start it properly
        ensure_keys(tx, bit, now).await?;
        return Ok(1);
    }
    sqlx::query("UPDATE service_keys SET activated_at = $1 WHERE bit = $2 AND version = $3")
        .bind(now)
        .bind(b)
        .bind(next)
        .execute(&mut **tx)
        .await?;
    sqlx::query("DELETE FROM service_keys WHERE bit = $1 AND version < $2")
        .bind(b)
        .bind(next)
        .execute(&mut **tx)
        .await?;
    insert_key(tx, bit, next + 1, now, None).await?;
    audit::record(
        tx,
        now,
        "service-key.rotate",
        &format!("bit {b}"),
        &format!("current v{next}, next v{}", next + 1),
    )
    .await?;
    Ok(next)
}

/// The bits whose current key has been current for the rotation interval at `now` (none
/// when rotation is by hand only), read inside `tx`.
async fn due_bits(tx: &mut Tx<'_>, now: i64) -> Result<Vec<i64>, sqlx::Error> {
    let every: i64 = sqlx::query("SELECT rotate_every FROM settings WHERE id = 1")
        .fetch_one(&mut **tx)
        .await?
        .try_get(0)?;
    if every <= 0 {
        return Ok(Vec::new());
    }
    // the current key is the second highest version; its activated_at says since when
    sqlx::query(
        "SELECT k.bit FROM service_keys k \
         WHERE k.version = (SELECT MAX(version) - 1 FROM service_keys m WHERE m.bit = k.bit) \
         AND k.activated_at <= $1 ORDER BY k.bit",
    )
    .bind(now.saturating_sub(every))
    .fetch_all(&mut **tx)
    .await?
    .iter()
    .map(|r| r.try_get(0))
    .collect()
}

impl Store {
    /// Current and next key of every bit that has keys, by bit then version.
    pub async fn service_keys(&self) -> Result<Vec<ServiceKey>, StoreError> {
        let rows =
            sqlx::query("SELECT bit, version, key_hex FROM service_keys ORDER BY bit, version")
                .fetch_all(&self.pool)
                .await
                .map_err(|e| self.err(e))?;
        let mut by_bit: BTreeMap<u8, Vec<ServiceKey>> = BTreeMap::new();
        for r in rows {
            let b = bit(r.try_get(0).map_err(|e| self.err(e))?).map_err(|e| self.err(e))?;
            let version: i64 = r.try_get(1).map_err(|e| self.err(e))?;
            let hex: String = r.try_get(2).map_err(|e| self.err(e))?;
            let key = Key128::from_hex(&hex).map_err(|_| StoreError::Corrupt {
                path: self.path().to_owned(),
                detail: format!("service key bit {} v{version} is damaged", b.get()),
            })?;
            by_bit.entry(b.get()).or_default().push(ServiceKey {
                bit: b,
                version: u32::try_from(version).unwrap_or(u32::MAX),
                key,
            });
        }
        // the two highest versions are current and next
        Ok(by_bit
            .into_values()
            .flat_map(|mut v| {
                let skip = v.len().saturating_sub(2);
                v.drain(..skip);
                v
            })
            .collect())
    }

    /// Rotate the keys of one package (by name) or of every bit. Returns each rotated bit with
    /// its new current version.
    pub async fn rotate_keys(
        &self,
        package: Option<&str>,
        now: i64,
    ) -> Result<Vec<(PackageBit, u32)>, StoreError> {
        let mut tx = self.write_tx().await?;
        let bits: Vec<i64> = match package {
            Some(name) => {
                let r = sqlx::query("SELECT bit FROM packages WHERE name = $1")
                    .bind(name)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(|e| self.err(e))?
                    .ok_or_else(|| StoreError::PackageNotFound(name.to_owned()))?;
                vec![r.try_get(0).map_err(|e| self.err(e))?]
            }
            None => sqlx::query("SELECT DISTINCT bit FROM service_keys ORDER BY bit")
                .fetch_all(&mut *tx)
                .await
                .map_err(|e| self.err(e))?
                .iter()
                .map(|r| r.try_get(0))
                .collect::<Result<_, _>>()
                .map_err(|e| self.err(e))?,
        };
        let mut out = Vec::new();
        for b in bits {
            let b = bit(b).map_err(|e| self.err(e))?;
            let v = rotate_bit(&mut tx, b, now).await.map_err(|e| self.err(e))?;
            out.push((b, v as u32));
        }
        tx.commit().await.map_err(|e| self.err(e))?;
        tracing::info!(rotated = out.len(), "service keys rotated");
        Ok(out)
    }

    /// Rotate every bit whose current key has been current for the configured interval or
    /// longer; returns the bits rotated. Does nothing when rotation is by hand only.
    ///
    /// Several processes may call this on one store at the same moment (each follows it): a
    /// cheap read finds whether anything is due, and only then the write transaction takes
    /// the lock and looks again, so the second process finds the key it was going to rotate
    /// already new and rotates nothing.
    pub async fn rotate_due(&self, now: i64) -> Result<Vec<PackageBit>, StoreError> {
        let mut rtx = self.read_tx().await?;
        let due = due_bits(&mut rtx, now).await.map_err(|e| self.err(e))?;
        drop(rtx);
        if due.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.write_tx().await?;
        let due = due_bits(&mut tx, now).await.map_err(|e| self.err(e))?;
        let mut out = Vec::with_capacity(due.len());
        for b in due {
            let b = bit(b).map_err(|e| self.err(e))?;
            rotate_bit(&mut tx, b, now).await.map_err(|e| self.err(e))?;
            out.push(b);
        }
        tx.commit().await.map_err(|e| self.err(e))?;
        if !out.is_empty() {
            tracing::info!(rotated = out.len(), "scheduled service-key rotation");
        }
        Ok(out)
    }

    /// The rotation interval in seconds; 0 = by hand only.
    pub async fn rotate_every(&self) -> Result<i64, StoreError> {
        sqlx::query("SELECT rotate_every FROM settings WHERE id = 1")
            .fetch_one(&self.pool)
            .await
            .and_then(|r| r.try_get(0))
            .map_err(|e| self.err(e))
    }

    /// Set the rotation interval (seconds, 0 = by hand only).
    pub async fn set_rotate_every(&self, every: i64, now: i64) -> Result<(), StoreError> {
        if every < 0 {
            return Err(StoreError::Rotate(
                "the rotation interval cannot be negative".to_owned(),
            ));
        }
        let mut tx = self.write_tx().await?;
        let res: Result<(), sqlx::Error> = async {
            sqlx::query("UPDATE settings SET rotate_every = $1 WHERE id = 1")
                .bind(every)
                .execute(&mut *tx)
                .await?;
            audit::record(
                &mut tx,
                now,
                "keys.schedule",
                "settings",
                &format!("rotate_every={}", format_interval(every)),
            )
            .await
        }
        .await;
        res.map_err(|e| self.err(e))?;
        tx.commit().await.map_err(|e| self.err(e))
    }

    /// Key versions and ages per bit.
    pub async fn key_status(&self) -> Result<Vec<KeyStatus>, StoreError> {
        let mut tx = self.read_tx().await?;
        let rows = sqlx::query(
            "SELECT bit, version, created_at, activated_at FROM service_keys ORDER BY bit, version",
        )
        .fetch_all(&mut *tx)
        .await
        .map_err(|e| self.err(e))?;
        let names = sqlx::query(
            "SELECT bit, name FROM packages UNION ALL SELECT bit, name FROM events ORDER BY 1, 2",
        )
        .fetch_all(&mut *tx)
        .await
        .map_err(|e| self.err(e))?;
        let mut by_bit: BTreeMap<i64, Vec<(i64, i64, Option<i64>)>> = BTreeMap::new();
        for r in rows {
            let t: Result<_, sqlx::Error> =
                (|| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?)))();
            let (b, v, c, a) = t.map_err(|e| self.err(e))?;
            by_bit.entry(b).or_default().push((v, c, a));
        }
        let mut name_of: BTreeMap<i64, Vec<String>> = BTreeMap::new();
        for r in names {
            let t: Result<(i64, String), sqlx::Error> = (|| Ok((r.try_get(0)?, r.try_get(1)?)))();
            let (b, n) = t.map_err(|e| self.err(e))?;
            name_of.entry(b).or_default().push(n);
        }
        let mut out = Vec::new();
        for (b, versions) in by_bit {
            let n = versions.len();
            if n < 2 {
                continue;
            }
            let (cv, cc, ca) = versions[n - 2];
            let (nv, nc, _) = versions[n - 1];
            out.push(KeyStatus {
                bit: bit(b).map_err(|e| self.err(e))?,
                names: name_of.remove(&b).unwrap_or_default(),
                current_version: cv as u32,
                current_since: ca.unwrap_or(cc),
                next_version: nv as u32,
                next_created: nc,
            });
        }
        Ok(out)
    }
}
