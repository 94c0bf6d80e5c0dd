//! A whole store copied into another: SQLite into PostgreSQL when an operator moves to
//! several nodes (`castmux store copy FROM TO`), PostgreSQL into a SQLite file for a backup.
//!
//! The source is read in one snapshot (a read transaction), the target written in one write
//! transaction, so the copy is all of one moment or nothing: a failure leaves the target as
//! it was (no settings row, which `init` and `copy` both accept again). Every row keeps its
//! ids, change sequence numbers and audit history; the root key moves with the settings row,
//! so cards personalised from the source work with the target.

use futures::TryStreamExt;
use sqlx::Row;

use super::{
    audit, begin_write, connect_pool, migrate, remove_sqlite_files, values_placeholders, Backend,
    Store, StoreError, StoreLocation,
};

/// A column's type: every castmux column is a BIGINT (some nullable) or TEXT.
#[derive(Clone, Copy)]
enum Kind {
    Int,
    NullInt,
    Text,
}

use Kind::{Int, NullInt, Text};

/// A table: its name, its ORDER BY (the primary key) and its columns.
type Table = (&'static str, &'static str, &'static [(&'static str, Kind)]);

/// The tables in an order the foreign keys accept, each in primary-key order.
const TABLES: &[Table] = &[
    (
        "settings",
        "id",
        &[
            ("id", Int),
            ("root_key", Text),
            ("serial_prefix", Int),
            ("next_serial", Int),
            ("ca_system_id", Int),
            ("rotate_every", Int),
            ("change_seq", Int),
            ("created_at", Int),
        ],
    ),
    (
        "packages",
        "bit",
        &[("bit", Int), ("name", Text), ("created_at", Int)],
    ),
    (
        "cards",
        "serial",
        &[
            ("serial", Int),
            ("name", Text),
            ("info", Text),
            ("access_criteria", Int),
            ("start_at", Int),
            ("finish_at", Int),
            ("pair", Int),
            ("state", Text),
            ("created_at", Int),
            ("updated_at", Int),
            ("change_seq", Int),
        ],
    ),
    (
        "removed_cards",
        "serial",
        &[("serial", Int), ("change_seq", Int), ("removed_at", Int)],
    ),
    (
        "events",
        "id",
        &[
            ("id", Int),
            ("name", Text),
            ("start_at", Int),
            ("end_at", Int),
            ("bit", Int),
            ("created_at", Int),
        ],
    ),
    (
        "card_events",
        "serial, event_id",
        &[("serial", Int), ("event_id", Int), ("granted_at", Int)],
    ),
    (
        "service_keys",
        "bit, version",
        &[
            ("bit", Int),
            ("version", Int),
            ("key_hex", Text),
            ("created_at", Int),
            ("activated_at", NullInt),
        ],
    ),
    (
        "audit",
        "id",
        &[
            ("id", Int),
            ("at", Int),
            ("action", Text),
            ("subject", Text),
            ("detail", Text),
        ],
    ),
];

/// Most parameters in one INSERT: far under SQLite's 32766 and PostgreSQL's 65535.
const MAX_BINDS: usize = 6000;

/// One value read from the source.
enum Value {
    Int(Option<i64>),
    Text(String),
}

/// What a copy wrote.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CopySummary {
    /// Rows per table, in copy order.
    pub tables: Vec<(&'static str, u64)>,
}

impl CopySummary {
    /// Rows of one table.
    pub fn rows(&self, table: &str) -> u64 {
        self.tables
            .iter()
            .find(|(t, _)| *t == table)
            .map_or(0, |(_, n)| *n)
    }
}

impl Store {
    /// Copy this whole store into `target`: a new SQLite file (created 0600; an existing
    /// path is refused) or a PostgreSQL database without a castmux store in it. Audited in
    /// the target.
    pub async fn copy_to(
        &self,
        target: &StoreLocation,
        now: i64,
    ) -> Result<CopySummary, StoreError> {
        let Some(path) = target.file() else {
            return self.copy_into(target, now).await;
        };
        super::create_private_file(path)?;
        let res = self.copy_into(target, now).await;
        if res.is_err() {
            remove_sqlite_files(path);
        }
        res
    }

    /// Copy into `target`, which exists (an empty file, or a database) and has no settings.
    pub(super) async fn copy_into(
        &self,
        target: &StoreLocation,
        now: i64,
    ) -> Result<CopySummary, StoreError> {
        let label = target.label();
        let pool = connect_pool(target, 1).await?;
        let res = async {
            migrate(&pool, &label).await?;
            let to_err = |e| StoreError::db(&label, e);
            let mut dst = begin_write(&pool, target.backend()).await.map_err(to_err)?;
            let taken: i64 = sqlx::query_scalar("SELECT count(*) FROM settings")
                .fetch_one(&mut *dst)
                .await
                .map_err(to_err)?;
            if taken > 0 {
                return Err(StoreError::Exists {
                    path: label.clone(),
                });
            }
            let mut src = self.read_tx().await?;
            let mut summary = CopySummary::default();
            for (table, order, cols) in TABLES {
                let names = cols.iter().map(|(c, _)| *c).collect::<Vec<_>>().join(", ");
                let select = format!("SELECT {names} FROM {table} ORDER BY {order}");
                let per_insert = MAX_BINDS / cols.len();
                let mut batch: Vec<Value> = Vec::with_capacity(per_insert * cols.len());
                let mut n = 0u64;
                let mut rows = sqlx::query(&select).fetch(&mut *src);
                while let Some(row) = rows.try_next().await.map_err(|e| self.err(e))? {
                    for (i, (_, kind)) in cols.iter().enumerate() {
                        batch.push(match kind {
                            Int => Value::Int(Some(row.try_get(i).map_err(|e| self.err(e))?)),
                            NullInt => Value::Int(row.try_get(i).map_err(|e| self.err(e))?),
                            Text => Value::Text(row.try_get(i).map_err(|e| self.err(e))?),
                        });
                    }
                    n += 1;
                    if batch.len() == per_insert * cols.len() {
                        insert(&mut dst, table, &names, cols.len(), &mut batch)
                            .await
                            .map_err(to_err)?;
                    }
                }
                drop(rows);
                insert(&mut dst, table, &names, cols.len(), &mut batch)
                    .await
                    .map_err(to_err)?;
                summary.tables.push((table, n));
            }
            drop(src);
            audit::record(
                &mut dst,
                now,
                "store.copy",
                "settings",
                &format!(
                    "from {}: {} cards, {} audit rows",
                    self.path.display(),
                    summary.rows("cards"),
                    summary.rows("audit")
                ),
            )
            .await
            .map_err(to_err)?;
            dst.commit().await.map_err(to_err)?;
            if target.backend() == Backend::Sqlite {
                // the copy is one file: what the WAL holds goes into it before it is handed on
                sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                    .execute(&pool)
                    .await
                    .map_err(to_err)?;
            }
            Ok(summary)
        }
        .await;
        pool.close().await;
        res
    }
}

/// Insert the rows held in `batch` (`cols` values each) and empty it.
async fn insert(
    tx: &mut super::Tx<'_>,
    table: &str,
    names: &str,
    cols: usize,
    batch: &mut Vec<Value>,
) -> Result<(), sqlx::Error> {
    if batch.is_empty() {
        return Ok(());
    }
    let sql = format!(
        "INSERT INTO {table} ({names}) VALUES {}",
        values_placeholders(batch.len() / cols, cols)
    );
    let mut q = sqlx::query(&sql);
    for v in batch.drain(..) {
        q = match v {
            Value::Int(i) => q.bind(i),
            Value::Text(t) => q.bind(t),
        };
    }
    q.execute(&mut **tx).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cas::store::InitOptions;

    /// [`TABLES`] is the schema's column lists written out again: a migration that adds a
    /// table or a column must add it there, or a copy would leave it behind. This holds
    /// the two together.
    #[tokio::test]
    async fn the_copy_names_every_table_and_column_of_the_schema() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::init(&dir.path().join("castmux.db"), InitOptions::default())
            .await
            .unwrap();
        let mut schema: Vec<(String, Vec<String>)> = Vec::new();
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM sqlite_master WHERE type = 'table' \
             AND name NOT LIKE '\\_sqlx%' ESCAPE '\\' AND name NOT LIKE 'sqlite%' ORDER BY name",
        )
        .fetch_all(&store.pool)
        .await
        .unwrap();
        for t in tables {
            let cols: Vec<String> = sqlx::query_scalar(&format!(
                "SELECT name FROM pragma_table_info('{t}') ORDER BY cid"
            ))
            .fetch_all(&store.pool)
            .await
            .unwrap();
            schema.push((t, cols));
        }
        let mut copied: Vec<(String, Vec<String>)> = TABLES
            .iter()
            .map(|(t, _, cols)| {
                (
                    t.to_string(),
                    cols.iter().map(|(c, _)| c.to_string()).collect(),
                )
            })
            .collect();
        copied.sort();
        assert_eq!(copied, schema);
        store.close().await;
    }
}
