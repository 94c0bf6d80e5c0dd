//! The audit log: one row per key operation and per card change. Callers pass descriptions,
//! never key material.

use sqlx::Row;

use super::{Store, StoreError, Tx};

/// Append a row inside the caller's transaction, so the log and the change commit together.
pub(crate) async fn record(
    tx: &mut Tx<'_>,
    at: i64,
    action: &str,
    subject: &str,
    detail: &str,
) -> Result<(), sqlx::Error> {
    // ids assigned here rather than by an engine-specific autoincrement (portable schema);
    // the write lock held by the transaction makes MAX(id)+1 safe
    sqlx::query(
        "INSERT INTO audit (id, at, action, subject, detail) \
         SELECT COALESCE(MAX(id), 0) + 1, $1, $2, $3, $4 FROM audit",
    )
    .bind(at)
    .bind(action)
    .bind(subject)
    .bind(detail)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// One row of the audit log.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AuditEntry {
    /// Its number; rows are numbered in the order they were written.
    pub id: u64,
    /// When, Unix seconds.
    pub at: i64,
    /// What was done (`card.set`, `keys.rotate`, ...).
    pub action: String,
    /// What it was done to (a serial, a package, `root`, ...).
    pub subject: String,
    /// Details as written by the operation (never key material).
    pub detail: String,
}

/// Which audit rows to read: newest first, `limit` of them, each condition optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// Only rows numbered below this (the next page of a listing starts at the last id seen).
    pub before: Option<u64>,
    /// Only this action, or actions starting with it when it ends in `.` (`card.`).
    pub action: Option<String>,
    /// Only this subject (a serial, a package name).
    pub subject: Option<String>,
    /// Only rows written at or after this time, Unix seconds.
    pub since: Option<i64>,
    /// Only rows written before this time, Unix seconds.
    pub until: Option<i64>,
    /// Most rows returned.
    pub limit: u32,
}

impl Store {
    /// Rows of the audit log matching `q`, newest first.
    pub async fn audit_log(&self, q: &AuditQuery) -> Result<Vec<AuditEntry>, StoreError> {
        // every condition is present with a NULL escape, so one statement serves all filters;
        // an action ending in '.' is a prefix, told apart here (string functions differ
        // between SQLite and PostgreSQL; substr(s, 1, n) and length are the same in both)
        let (exact, prefix) = match q.action.as_deref() {
            Some(a) if a.ends_with('.') => (None, Some(a)),
            a => (a, None),
        };
        let rows = sqlx::query(
            "SELECT id, at, action, subject, detail FROM audit \
             WHERE ($1 IS NULL OR id < $1) \
             AND ($2 IS NULL OR action = $2) \
             AND ($3 IS NULL OR subject = $3) \
             AND ($4 IS NULL OR at >= $4) AND ($5 IS NULL OR at < $5) \
             AND ($7 IS NULL OR substr(action, 1, length($7)) = $7) \
             ORDER BY id DESC LIMIT $6",
        )
        .bind(q.before.map(|b| b.min(i64::MAX as u64) as i64))
        .bind(exact)
        .bind(q.subject.as_deref())
        .bind(q.since)
        .bind(q.until)
        .bind(i64::from(q.limit))
        .bind(prefix)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        rows.iter()
            .map(|r| {
                Ok(AuditEntry {
                    id: r.try_get::<i64, _>(0)? as u64,
                    at: r.try_get(1)?,
                    action: r.try_get(2)?,
                    subject: r.try_get(3)?,
                    detail: r.try_get(4)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(|e| self.err(e))
    }
}
