//! The audit log: one row per key operation and per card change. Callers pass descriptions,
//! never key material.

use sqlx::{Sqlite, Transaction};

/// Append a row inside the caller's transaction, so the log and the change commit together.
pub(crate) async fn record(
    tx: &mut Transaction<'_, Sqlite>,
    at: i64,
    action: &str,
    subject: &str,
    detail: &str,
) -> Result<(), sqlx::Error> {
    // ids assigned here rather than by an engine-specific autoincrement (portable schema);
    // the write lock held by the transaction makes MAX(id)+1 safe
    sqlx::query(
        "INSERT INTO audit (id, at, action, subject, detail) \
         SELECT COALESCE(MAX(id), 0) + 1, ?, ?, ?, ? FROM audit",
    )
    .bind(at)
    .bind(action)
    .bind(subject)
    .bind(detail)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
