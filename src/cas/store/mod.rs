//! The card store: one SQLite file (WAL, foreign keys, busy timeout) holding the operator
//! root key, packages, cards, pay-per-view events, service keys and the audit log.
//!
//! Every change that touches more than one row runs in one `BEGIN IMMEDIATE` transaction, so
//! a process killed at any moment leaves the file as it was before or after the change.
//! The schema (`migrations/`) is portable SQL so a PostgreSQL backend can follow.
//!
//! Readers that follow changes (the EMM carousel) use `change_seq`: every card row carries the
//! sequence number of the transaction that last changed it, and removed cards leave a
//! tombstone with theirs; [`Store::cards_changed_since`] returns both.

mod audit;
mod cards;
mod catalog;
pub mod csv;
mod error;
mod feed;
pub mod fields;
mod keys;
pub mod time;
mod transfer;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Row, Sqlite, Transaction};

pub use audit::{AuditEntry, AuditQuery};
pub use cards::{AccessSpec, CardChanges, CardFilter, CardRecord, FinishSpec};
pub use catalog::{EventInfo, PackageInfo};
pub use error::StoreError;
pub use keys::KeyStatus;
pub use transfer::{check_import_csv, ImportSummary, CSV_COLUMNS};

use crate::cas::types::{CardSerial, Entitlements, Key128};
use crate::io::private_file::{self, Existing, PrivateFile, PrivateFileError};

/// The store file used when neither `--db` nor `CASTMUX_DB` is given.
pub const DEFAULT_DB: &str = "castmux.db";

/// TVCAS's first serial.
pub const DEFAULT_SERIAL_PREFIX: u64 = 2_100_000_000;

/// The CA_system_ID used when `init` is not told one (the scrambler's default, and why
/// it is that value: [`crate::scramble::config::DEFAULT_CA_SYSTEM_ID`]).
pub const DEFAULT_CA_SYSTEM_ID: u16 = crate::scramble::config::DEFAULT_CA_SYSTEM_ID;

/// How long a writer waits for another process's lock before failing with `STORE_LOCKED`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Settings for a new store.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// First serial allocated.
    pub serial_prefix: u64,
    /// CA_system_ID of the operator.
    pub ca_system_id: u16,
    /// Service-key rotation interval in seconds; 0 = only by hand.
    pub rotate_every: i64,
    /// Creation time, Unix seconds.
    pub now: i64,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            serial_prefix: DEFAULT_SERIAL_PREFIX,
            ca_system_id: DEFAULT_CA_SYSTEM_ID,
            rotate_every: 0,
            now: time::now(),
        }
    }
}

/// What the EMMG needs per card: its unique key and its entitlements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardKeyRecord {
    /// The card.
    pub serial: CardSerial,
    /// `derive_card_key(root, serial)`.
    pub card_key: Key128,
    /// Current entitlements. A removed card comes back (from `cards_changed_since`) as
    /// disabled with no packages and no events, so its last EMM switches it off.
    pub entitlements: Entitlements,
}

/// An open store. Cheap to clone; clones share the connection pools.
#[derive(Clone)]
pub struct Store {
    pool: SqlitePool,
    /// One connection that every write transaction of this process takes in turn: writers
    /// queue here, first come first served, instead of meeting at SQLite's lock, whose busy
    /// handler sleeps up to 100 ms a try (at 600 TVCAS updates a second over 4 connections
    /// that gave a p99 of 105 ms). Other processes still meet this one at the lock.
    writer: SqlitePool,
    /// The task that commits card changes in groups ([`writer`]); it writes through `writer`.
    card_writer: writer::CardWriter,
    path: Arc<PathBuf>,
    root: Arc<Key128>,
    ca_system_id: u16,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .field("ca_system_id", &self.ca_system_id)
            .finish_non_exhaustive()
    }
}

fn connect_options(path: &Path) -> SqliteConnectOptions {
    // statement logging off: bulk statements are slow by design, and binds are never logged
    SqliteConnectOptions::new()
        .disable_statement_logging()
        .row_buffer_size(1024)
        .filename(path)
        .create_if_missing(false)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .foreign_keys(true)
        .busy_timeout(BUSY_TIMEOUT)
}

/// The one-connection pool of [`Store::writer`].
async fn connect_writer(path: &Path) -> Result<SqlitePool, StoreError> {
    SqlitePoolOptions::new()
        .max_connections(1)
        .acquire_timeout(BUSY_TIMEOUT + Duration::from_secs(5))
        .connect_with(connect_options(path))
        .await
        .map_err(|e| StoreError::db(path, e))
}

/// Whether `castmux init` finished the store at `path`: its settings table holds the row
/// init writes last. NotInitialized when the table is not there (a file being created, or
/// not a store), Corrupt when the row is not.
async fn finished_by_init(pool: &SqlitePool, path: &Path) -> Result<(), StoreError> {
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'settings'",
    )
    .fetch_one(pool)
    .await
    .map_err(|e| StoreError::db(path, e))?;
    if tables == 0 {
        return Err(StoreError::NotInitialized {
            path: path.to_owned(),
        });
    }
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM settings WHERE id = 1")
        .fetch_one(pool)
        .await
        .map_err(|e| StoreError::db(path, e))?;
    if rows == 0 {
        return Err(StoreError::Corrupt {
            path: path.to_owned(),
            detail: "it has no settings (an interrupted `castmux init`, or one still running?); if no init is running, remove it and run `castmux init` again".to_owned(),
        });
    }
    Ok(())
}

/// The pool of reads (and of the schema), migrated to this version's schema.
async fn connect(path: &Path) -> Result<SqlitePool, StoreError> {
    let pool = connect_unmigrated(path).await?;
    migrate(&pool, path).await?;
    Ok(pool)
}

async fn connect_unmigrated(path: &Path) -> Result<SqlitePool, StoreError> {
    SqlitePoolOptions::new()
        .max_connections(4)
        .acquire_timeout(BUSY_TIMEOUT + Duration::from_secs(5))
        .connect_with(connect_options(path))
        .await
        .map_err(|e| StoreError::db(path, e))
}

async fn migrate(pool: &SqlitePool, path: &Path) -> Result<(), StoreError> {
    MIGRATOR.run(pool).await.map_err(|e| match e {
        sqlx::migrate::MigrateError::Execute(inner) => StoreError::db(path, inner),
        e => StoreError::Migrate {
            path: path.to_owned(),
            source: e,
        },
    })
}

impl Store {
    /// Open an existing store (applying any newer schema migrations).
    pub async fn open(path: &Path) -> Result<Store, StoreError> {
        if !path.exists() {
            return Err(StoreError::NotInitialized {
                path: path.to_owned(),
            });
        }
        // a store is migrated only once `castmux init` has finished it (its settings row is
        // the last thing init writes): migrating a file that another process is creating
        // would race that process's own migrations, and one of the two would fail
        let pool = connect_unmigrated(path).await?;
        if let Err(e) = finished_by_init(&pool, path).await {
            pool.close().await;
            return Err(e);
        }
        if let Err(e) = migrate(&pool, path).await {
            pool.close().await;
            return Err(e);
        }
        let row = sqlx::query("SELECT root_key, ca_system_id FROM settings WHERE id = 1")
            .fetch_optional(&pool)
            .await
            .map_err(|e| StoreError::db(path, e))?;
        let Some(row) = row else {
            pool.close().await;
            return Err(StoreError::Corrupt {
                path: path.to_owned(),
                detail: "it has no settings (an interrupted `castmux init`?); remove it and run `castmux init` again".to_owned(),
            });
        };
        let corrupt = |detail: &str| StoreError::Corrupt {
            path: path.to_owned(),
            detail: detail.to_owned(),
        };
        let root_hex: String = row.try_get(0).map_err(|e| StoreError::db(path, e))?;
        let root = Key128::from_hex(&root_hex).map_err(|_| corrupt("the root key is damaged"))?;
        let caid: i64 = row.try_get(1).map_err(|e| StoreError::db(path, e))?;
        let ca_system_id =
            u16::try_from(caid).map_err(|_| corrupt("the CA_system_ID is out of range"))?;
        let writer = match connect_writer(path).await {
            Ok(w) => w,
            Err(e) => {
                pool.close().await;
                return Err(e);
            }
        };
        let path = Arc::new(path.to_owned());
        let card_writer = writer::CardWriter::spawn(writer.clone(), Arc::clone(&path));
        Ok(Store {
            pool,
            writer,
            card_writer,
            path,
            root: Arc::new(root),
            ca_system_id,
        })
    }

    /// Create a new store with a fresh root key from the OS CSPRNG. Refuses an existing path.
    pub async fn init(path: &Path, opts: InitOptions) -> Result<Store, StoreError> {
        if opts.serial_prefix > i64::MAX as u64 {
            return Err(StoreError::Serial(opts.serial_prefix.to_string()));
        }
        if opts.rotate_every < 0 {
            return Err(StoreError::Rotate(
                "the rotation interval cannot be negative".to_owned(),
            ));
        }
        create_private_file(path)?;
        match Self::init_created(path, &opts).await {
            Ok(s) => Ok(s),
            Err(e) => {
                // leave nothing half-made behind, so `init` can simply be run again
                for suffix in ["", "-wal", "-shm"] {
                    let mut p = path.as_os_str().to_owned();
                    p.push(suffix);
                    let _ = std::fs::remove_file(PathBuf::from(p));
                }
                Err(e)
            }
        }
    }

    async fn init_created(path: &Path, opts: &InitOptions) -> Result<Store, StoreError> {
        let pool = connect(path).await?;
        let root = Key128::random();
        let mut tx = pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| StoreError::db(path, e))?;
        let res: Result<(), sqlx::Error> = async {
            sqlx::query(
                "INSERT INTO settings (id, root_key, serial_prefix, next_serial, ca_system_id, \
                 rotate_every, change_seq, created_at) VALUES (1, ?, ?, ?, ?, ?, 0, ?)",
            )
            .bind(root.expose_hex())
            .bind(opts.serial_prefix as i64)
            .bind(opts.serial_prefix as i64)
            .bind(i64::from(opts.ca_system_id))
            .bind(opts.rotate_every)
            .bind(opts.now)
            .execute(&mut *tx)
            .await?;
            audit::record(
                &mut tx,
                opts.now,
                "store.init",
                "settings",
                &format!(
                    "serial_prefix={} ca_system_id={:#06X} rotate_every={}",
                    opts.serial_prefix,
                    opts.ca_system_id,
                    time::format_interval(opts.rotate_every)
                ),
            )
            .await?;
            audit::record(
                &mut tx,
                opts.now,
                "root-key.create",
                "root",
                "128-bit key from the OS CSPRNG",
            )
            .await?;
            Ok(())
        }
        .await;
        res.map_err(|e| StoreError::db(path, e))?;
        tx.commit().await.map_err(|e| StoreError::db(path, e))?;
        tracing::info!(path = %path.display(), "card store created");
        pool.close().await;
        Store::open(path).await
    }

    /// The store's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The operator root key. It never leaves the process except as derived card keys.
    pub fn root_key(&self) -> &Key128 {
        &self.root
    }

    /// The operator's CA_system_ID.
    pub fn ca_system_id(&self) -> u16 {
        self.ca_system_id
    }

    /// Checkpoint the WAL into the database file, then close the pool.
    ///
    /// After a clean close `castmux.db` alone holds every committed change, so copying that
    /// one file is a complete copy (a copy taken while the store is open still needs
    /// [`Store::backup`]). SQLite checkpoints when its last connection closes only if it can
    /// take the lock at that moment; the explicit TRUNCATE checkpoint does not leave that to
    /// chance. A checkpoint blocked by another process's reader is not an error: that
    /// process's own close finishes it.
    pub async fn close(self) {
        // queued card changes are committed before the writer connection closes
        self.card_writer.close().await;
        self.writer.close().await;
        match sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .fetch_one(&self.pool)
            .await
        {
            Ok(row) => {
                let busy: i64 = row.try_get(0).unwrap_or(1);
                if busy != 0 {
                    tracing::debug!(
                        path = %self.path.display(),
                        "WAL checkpoint incomplete: another process is reading the store"
                    );
                }
            }
            Err(e) => tracing::warn!(
                path = %self.path.display(),
                error = %e,
                "WAL checkpoint on close failed; the -wal file beside the store holds the newest changes"
            ),
        }
        self.pool.close().await;
    }

    /// Write a consistent copy of the whole store to `target`, a new file (never an existing
    /// path), mode 0600 because it holds the root key. SQLite's `VACUUM INTO` reads one
    /// snapshot, so writers may go on meanwhile; the copy is written beside the target under
    /// a temporary name, synced and then linked into place. Audited.
    pub async fn backup(&self, target: &Path, now: i64) -> Result<u64, StoreError> {
        let file = PrivateFile::create(target, Existing::Refuse).map_err(StoreError::KeyFile)?;
        let tmp = file
            .tmp_path()
            .to_str()
            .ok_or_else(|| StoreError::NotUtf8Path(target.to_owned()))?
            .to_owned();
        // VACUUM INTO accepts an existing empty file and keeps its inode and mode
        sqlx::query("VACUUM INTO ?")
            .bind(&tmp)
            .execute(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        let f = file.commit().map_err(StoreError::KeyFile)?;
        let bytes = f.metadata().map(|m| m.len()).unwrap_or(0);
        let mut tx = self.write_tx().await?;
        audit::record(
            &mut tx,
            now,
            "store.backup",
            "settings",
            &format!("to {} ({bytes} bytes)", target.display()),
        )
        .await
        .map_err(|e| self.err(e))?;
        tx.commit().await.map_err(|e| self.err(e))?;
        Ok(bytes)
    }

    /// `PRAGMA integrity_check`: `"ok"` when the file is sound.
    pub async fn integrity_check(&self) -> Result<String, StoreError> {
        let rows = sqlx::query("PRAGMA integrity_check")
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for r in rows {
            out.push(r.try_get::<String, _>(0).map_err(|e| self.err(e))?);
        }
        Ok(out.join("; "))
    }

    pub(crate) fn err(&self, e: sqlx::Error) -> StoreError {
        StoreError::db(&self.path, e)
    }

    /// A write transaction. IMMEDIATE takes the write lock up front, so two writers queue on
    /// the busy timeout instead of one failing when it upgrades a read lock.
    pub(crate) async fn write_tx(&self) -> Result<Transaction<'static, Sqlite>, StoreError> {
        self.writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| self.err(e))
    }

    /// A read transaction: one consistent snapshot across several queries.
    pub(crate) async fn read_tx(&self) -> Result<Transaction<'static, Sqlite>, StoreError> {
        self.pool.begin().await.map_err(|e| self.err(e))
    }
}

/// Create `path` new and readable by the owner only: the store holds the root key. SQLite
/// gives the `-wal` and `-shm` files it makes beside it the same mode.
fn create_private_file(path: &Path) -> Result<(), StoreError> {
    match private_file::create_new(path) {
        Ok(_) => Ok(()),
        Err(PrivateFileError::Exists { .. }) => Err(StoreError::Exists {
            path: path.to_owned(),
        }),
        Err(e) => Err(StoreError::KeyFile(e)),
    }
}

/// Take the next change sequence number inside `tx`. Each card change of a batch takes its
/// own, in its savepoint, so a rolled-back change leaves no number behind.
pub(crate) async fn next_change_seq(tx: &mut Transaction<'_, Sqlite>) -> Result<i64, sqlx::Error> {
    let row = sqlx::query(
        "UPDATE settings SET change_seq = change_seq + 1 WHERE id = 1 RETURNING change_seq",
    )
    .fetch_one(&mut **tx)
    .await?;
    row.try_get(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A head-end retrying its store while `castmux init` creates it must not migrate the
    /// half-made file (both processes migrating: one fails with "table settings already
    /// exists"); it is told the store is not there yet, and the file is left to init.
    #[tokio::test]
    async fn a_store_being_created_is_not_opened_or_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new.db");
        // init's first step: the file, empty
        create_private_file(&path).unwrap();
        assert!(matches!(
            Store::open(&path).await,
            Err(StoreError::NotInitialized { .. })
        ));
        let untouched = connect_unmigrated(&path).await.unwrap();
        let tables: i64 = sqlx::query_scalar("SELECT count(*) FROM sqlite_master")
            .fetch_one(&untouched)
            .await
            .unwrap();
        assert_eq!(tables, 0, "open created nothing in the file");
        // init's second step: the schema, before its settings row
        migrate(&untouched, &path).await.unwrap();
        untouched.close().await;
        assert!(matches!(
            Store::open(&path).await,
            Err(StoreError::Corrupt { .. })
        ));
        // a finished store opens
        let other = dir.path().join("done.db");
        Store::init(&other, InitOptions::default())
            .await
            .unwrap()
            .close()
            .await;
        Store::open(&other).await.unwrap().close().await;
    }
}
