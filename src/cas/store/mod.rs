//! The card store: the operator root key, packages, cards, pay-per-view events, service keys
//! and the audit log, in one SQLite file (WAL, foreign keys, busy timeout; the embedded
//! default) or one PostgreSQL database that any number of castmux processes share
//! ([`StoreLocation`]). One schema (`migrations/`, portable SQL) and one set of statements
//! (`$N` parameters, which both drivers read) serve both, through sqlx's `Any` driver.
//!
//! Every change that touches more than one row runs in one write transaction, so a process
//! killed at any moment leaves the store as it was before or after the change. Write
//! transactions are serialised store-wide, by `BEGIN IMMEDIATE` on SQLite and by a
//! transaction-scoped advisory lock on PostgreSQL, so the application-assigned ids and the
//! change sequence are taken in commit order on both, whichever process writes.
//!
//! Readers that follow changes (the EMM carousel) use `change_seq`: every card row carries the
//! sequence number of the transaction that last changed it, and removed cards leave a
//! tombstone with theirs; [`Store::cards_changed_since`] returns both.

mod audit;
mod cards;
mod catalog;
mod copy;
pub mod csv;
mod error;
mod feed;
pub mod fields;
mod keys;
mod location;
pub mod time;
mod transfer;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, ConnectOptions, Row};

pub use audit::{AuditEntry, AuditQuery};
pub use cards::{AccessSpec, CardChanges, CardFilter, CardRecord, FinishSpec};
pub use catalog::{EventInfo, PackageInfo};
pub use copy::CopySummary;
pub use error::StoreError;
pub use keys::KeyStatus;
pub use location::{Backend, StoreLocation};
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

/// How long a PostgreSQL store operation waits for a connection (the server down, or every
/// connection of the pool busy) before it fails with `STORE_UNREACHABLE`.
pub(crate) const PG_ACQUIRE: Duration = Duration::from_secs(3);

/// How long a PostgreSQL connection a pool no longer uses stays open.
const PG_IDLE: Duration = Duration::from_secs(60);

/// A transaction on either backend.
pub(crate) type Tx<'c> = sqlx::Transaction<'c, sqlx::Any>;

/// The PostgreSQL advisory lock every write transaction takes first (castmux's own number:
/// "cmux" in ASCII), the store-wide write lock SQLite's `BEGIN IMMEDIATE` is.
const PG_WRITE_LOCK: i64 = 0x636d_7578;

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
    pool: AnyPool,
    /// One connection that every write transaction of this process takes in turn: writers
    /// queue here, first come first served, instead of meeting at SQLite's lock, whose busy
    /// handler sleeps up to 100 ms a try (at 600 TVCAS updates a second over 4 connections
    /// that gave a p99 of 105 ms). Other processes still meet this one at the lock.
    writer: AnyPool,
    /// The task that commits card changes in groups ([`writer`]); it writes through `writer`.
    card_writer: writer::CardWriter,
    /// What messages call the store ([`StoreLocation::label`]).
    path: Arc<PathBuf>,
    location: Arc<StoreLocation>,
    backend: Backend,
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

/// The driver's options for `at`.
fn connect_options(at: &StoreLocation) -> Result<AnyConnectOptions, StoreError> {
    static DRIVERS: std::sync::Once = std::sync::Once::new();
    DRIVERS.call_once(sqlx::any::install_default_drivers);
    Ok(at
        .connect_url()?
        .parse::<AnyConnectOptions>()
        .map_err(|e| StoreError::db(&at.label(), e))?
        // statement logging off: bulk statements are slow by design, and binds are never logged
        .disable_statement_logging())
}

/// A pool of at most `max` connections to `at`, each set up as [`session_setup`] says.
async fn connect_pool(at: &StoreLocation, max: u32) -> Result<AnyPool, StoreError> {
    let label = at.label();
    let opts = connect_options(at)?;
    let backend = at.backend();
    if backend == Backend::Sqlite {
        // the pool retries a connection whose setup failed until its timeout; a file that is
        // not a database fails that setup every time, so it is tried once here, first
        let mut probe = <sqlx::AnyConnection as sqlx::Connection>::connect_with(&opts)
            .await
            .map_err(|e| StoreError::db(&label, e))?;
        let setup = session_setup(&mut probe, backend).await;
        let _ = sqlx::Connection::close(probe).await;
        setup.map_err(|e| StoreError::db(&label, e))?;
    }
    // SQLite: a connection waits for the file's lock within the busy timeout, so it is had
    // by then. PostgreSQL: a server that is down makes the pool retry its connection; a
    // caller learns of it within PG_ACQUIRE (the follower counts it and keeps its keys)
    // rather than hanging; the write lock is waited for inside the statement instead
    let acquire = match backend {
        Backend::Sqlite => BUSY_TIMEOUT + Duration::from_secs(5),
        Backend::Postgres => PG_ACQUIRE,
    };
    let pool = AnyPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(acquire)
        .after_connect(move |conn, _| Box::pin(session_setup(conn, backend)));
    match backend {
        Backend::Sqlite => pool.connect_with(opts).await,
        // a server's connections are a shared, counted resource (max_connections): one a
        // pool no longer uses is closed after a minute
        Backend::Postgres => pool.idle_timeout(Some(PG_IDLE)).connect_with(opts).await,
    }
    .map_err(|e| StoreError::db(&label, e))
}

/// The writer pool of [`Store::open`]: on PostgreSQL it connects at the first write, so a
/// process that only reads (a follower, a channel's built-in CAS) holds one connection, not
/// two.
async fn connect_writer(at: &StoreLocation) -> Result<AnyPool, StoreError> {
    if at.backend() == Backend::Sqlite {
        return connect_pool(at, 1).await;
    }
    let opts = connect_options(at)?;
    Ok(AnyPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(PG_ACQUIRE)
        .idle_timeout(Some(PG_IDLE))
        .after_connect(|conn, _| Box::pin(session_setup(conn, Backend::Postgres)))
        .connect_lazy_with(opts))
}

/// What every connection is told first. SQLite: WAL, fsync at every commit, foreign keys
/// enforced, and wait up to [`BUSY_TIMEOUT`] for another process's write lock. PostgreSQL:
/// wait as long for the write lock ([`PG_WRITE_LOCK`]) and for row locks.
async fn session_setup(
    conn: &mut sqlx::AnyConnection,
    backend: Backend,
) -> Result<(), sqlx::Error> {
    let ms = BUSY_TIMEOUT.as_millis();
    let statements = match backend {
        Backend::Sqlite => vec![
            "PRAGMA journal_mode = WAL".to_owned(),
            "PRAGMA synchronous = FULL".to_owned(),
            "PRAGMA foreign_keys = ON".to_owned(),
            format!("PRAGMA busy_timeout = {ms}"),
        ],
        // the server's notices ("relation already exists, skipping" from the migrator's
        // CREATE IF NOT EXISTS) are not the operator's business; warnings still come
        Backend::Postgres => vec![
            format!("SET lock_timeout = {ms}"),
            "SET client_min_messages = warning".to_owned(),
        ],
    };
    for sql in statements {
        sqlx::query(&sql).execute(&mut *conn).await?;
    }
    Ok(())
}

/// Whether `castmux init` finished the store at `at`: its settings table holds the row
/// init writes last. NotInitialized when the table is not there (a store being created, or
/// not a store), Corrupt when the row is not.
async fn finished_by_init(pool: &AnyPool, at: &StoreLocation) -> Result<(), StoreError> {
    let label = at.label();
    let tables: i64 = sqlx::query_scalar(match at.backend() {
        Backend::Sqlite => {
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'settings'"
        }
        Backend::Postgres => {
            "SELECT count(*) FROM information_schema.tables \
             WHERE table_schema = current_schema() AND table_name = 'settings'"
        }
    })
    .fetch_one(pool)
    .await
    .map_err(|e| StoreError::db(&label, e))?;
    if tables == 0 {
        return Err(StoreError::NotInitialized { path: label });
    }
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM settings WHERE id = 1")
        .fetch_one(pool)
        .await
        .map_err(|e| StoreError::db(&label, e))?;
    if rows == 0 {
        return Err(StoreError::Corrupt {
            path: label,
            detail: "it has no settings (an interrupted `castmux init`, or one still running?); if no init is running, remove it and run `castmux init` again".to_owned(),
        });
    }
    Ok(())
}

async fn migrate(pool: &AnyPool, label: &Path) -> Result<(), StoreError> {
    MIGRATOR.run(pool).await.map_err(|e| match e {
        sqlx::migrate::MigrateError::Execute(inner) => StoreError::db(label, inner),
        e => StoreError::Migrate {
            path: label.to_owned(),
            source: e,
        },
    })
}

/// A write transaction on `pool`: it holds the store-wide write lock from its first
/// statement. On SQLite IMMEDIATE takes it up front, so two writers queue on the busy timeout
/// instead of one failing when it upgrades a read lock; on PostgreSQL the advisory lock is
/// released by COMMIT or ROLLBACK, never held by a dead connection.
pub(crate) async fn begin_write(
    pool: &AnyPool,
    backend: Backend,
) -> Result<Tx<'static>, sqlx::Error> {
    match backend {
        Backend::Sqlite => pool.begin_with("BEGIN IMMEDIATE").await,
        Backend::Postgres => {
            let mut tx = pool.begin().await?;
            // wrapped in a SELECT of 1: the Any driver cannot read the function's void result
            sqlx::query("SELECT 1 FROM (SELECT pg_advisory_xact_lock($1)) AS locked")
                .bind(PG_WRITE_LOCK)
                .execute(&mut *tx)
                .await?;
            Ok(tx)
        }
    }
}

impl Store {
    /// Open an existing store (applying any newer schema migrations): a path, or a
    /// [`StoreLocation`] (a file or a PostgreSQL URL).
    pub async fn open(at: impl Into<StoreLocation>) -> Result<Store, StoreError> {
        let at: StoreLocation = at.into();
        let label = at.label();
        if let Some(path) = at.file() {
            if !path.exists() {
                return Err(StoreError::NotInitialized { path: label });
            }
        }
        // a store is migrated only once `castmux init` has finished it (its settings row is
        // the last thing init writes): migrating a file that another process is creating
        // would race that process's own migrations, and one of the two would fail
        let pool = connect_pool(&at, 4).await?;
        let opened = async {
            finished_by_init(&pool, &at).await?;
            migrate(&pool, &label).await?;
            read_settings(&pool, &label).await
        }
        .await;
        let (root, ca_system_id) = match opened {
            Ok(s) => s,
            Err(e) => {
                pool.close().await;
                return Err(e);
            }
        };
        // one writer connection per process: its write transactions queue here, first come
        // first served, rather than at the store-wide lock
        let writer = match connect_writer(&at).await {
            Ok(w) => w,
            Err(e) => {
                pool.close().await;
                return Err(e);
            }
        };
        let path = Arc::new(label);
        let backend = at.backend();
        let card_writer = writer::CardWriter::spawn(writer.clone(), backend, Arc::clone(&path));
        Ok(Store {
            pool,
            writer,
            card_writer,
            path,
            location: Arc::new(at),
            backend,
            root: Arc::new(root),
            ca_system_id,
        })
    }

    /// Create a new store with a fresh root key from the OS CSPRNG. Refuses an existing file,
    /// and a PostgreSQL database that already holds a castmux store (the database itself is
    /// made by its administrator: `createdb -O castmux castmux`).
    pub async fn init(
        at: impl Into<StoreLocation>,
        opts: InitOptions,
    ) -> Result<Store, StoreError> {
        let at: StoreLocation = at.into();
        if opts.serial_prefix > i64::MAX as u64 {
            return Err(StoreError::Serial(opts.serial_prefix.to_string()));
        }
        if opts.rotate_every < 0 {
            return Err(StoreError::Rotate(
                "the rotation interval cannot be negative".to_owned(),
            ));
        }
        let Some(path) = at.file() else {
            return Self::init_created(&at, &opts).await;
        };
        create_private_file(path)?;
        match Self::init_created(&at, &opts).await {
            Ok(s) => Ok(s),
            Err(e) => {
                // leave nothing half-made behind, so `init` can simply be run again
                remove_sqlite_files(path);
                Err(e)
            }
        }
    }

    /// The schema and the settings row, in a store that has none (an empty file, a
    /// database without castmux's tables or with an interrupted init's).
    async fn init_created(at: &StoreLocation, opts: &InitOptions) -> Result<Store, StoreError> {
        let label = at.label();
        let pool = connect_pool(at, 1).await?;
        let res = async {
            migrate(&pool, &label).await?;
            let mut tx = begin_write(&pool, at.backend())
                .await
                .map_err(|e| StoreError::db(&label, e))?;
            let taken: i64 = sqlx::query_scalar("SELECT count(*) FROM settings")
                .fetch_one(&mut *tx)
                .await
                .map_err(|e| StoreError::db(&label, e))?;
            if taken > 0 {
                return Err(StoreError::Exists {
                    path: label.clone(),
                });
            }
            write_settings(&mut tx, &Key128::random(), opts)
                .await
                .map_err(|e| StoreError::db(&label, e))?;
            tx.commit().await.map_err(|e| StoreError::db(&label, e))
        }
        .await;
        pool.close().await;
        res?;
        tracing::info!(store = %at, "card store created");
        Store::open(at).await
    }

    /// The store's file, or its PostgreSQL URL with the password masked (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where the store is, as given to [`Store::open`] (password included).
    pub fn location(&self) -> &StoreLocation {
        &self.location
    }

    /// The backend.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The operator root key. It never leaves the process except as derived card keys.
    pub fn root_key(&self) -> &Key128 {
        &self.root
    }

    /// The operator's CA_system_ID.
    pub fn ca_system_id(&self) -> u16 {
        self.ca_system_id
    }

    /// Finish the queued card changes, then close the pools.
    ///
    /// SQLite: checkpoint the WAL into the database file first, so after a clean close
    /// `castmux.db` alone holds every committed change and copying that one file is a
    /// complete copy (a copy taken while the store is open still needs [`Store::backup`]).
    /// SQLite checkpoints when its last connection closes only if it can take the lock at
    /// that moment; the explicit TRUNCATE checkpoint does not leave that to chance. A
    /// checkpoint blocked by another process's reader is not an error: that process's own
    /// close finishes it.
    pub async fn close(self) {
        // queued card changes are committed before the writer connection closes
        self.card_writer.close().await;
        self.writer.close().await;
        if self.backend == Backend::Sqlite {
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
        }
        self.pool.close().await;
    }

    /// Write a consistent copy of the whole store to `target`, a new SQLite file (never an
    /// existing path), mode 0600 because it holds the root key, written beside the target
    /// under a temporary name, synced and then linked into place. Writers may go on
    /// meanwhile: a SQLite store is copied by `VACUUM INTO`, which reads one snapshot; a
    /// PostgreSQL store table by table in one repeatable-read snapshot ([`Store::copy_to`]),
    /// so the backup of either opens with `--db FILE`. Audited.
    pub async fn backup(&self, target: &Path, now: i64) -> Result<u64, StoreError> {
        let file = PrivateFile::create(target, Existing::Refuse).map_err(StoreError::KeyFile)?;
        let tmp = file.tmp_path().to_owned();
        match self.backend {
            Backend::Sqlite => {
                let tmp = tmp
                    .to_str()
                    .ok_or_else(|| StoreError::NotUtf8Path(target.to_owned()))?;
                // VACUUM INTO accepts an existing empty file and keeps its inode and mode
                sqlx::query("VACUUM INTO $1")
                    .bind(tmp)
                    .execute(&self.pool)
                    .await
                    .map_err(|e| self.err(e))?;
            }
            Backend::Postgres => {
                self.copy_into(&StoreLocation::File(tmp), now).await?;
            }
        }
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

    /// SQLite's `PRAGMA integrity_check` (`"ok"` when the file is sound). PostgreSQL checks
    /// its own pages; there the answer is `"ok"` once the settings row reads back whole.
    pub async fn integrity_check(&self) -> Result<String, StoreError> {
        if self.backend == Backend::Postgres {
            read_settings(&self.pool, &self.path).await?;
            return Ok("ok".to_owned());
        }
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

    /// A write transaction ([`begin_write`]) on this process's writer connection.
    pub(crate) async fn write_tx(&self) -> Result<Tx<'static>, StoreError> {
        begin_write(&self.writer, self.backend)
            .await
            .map_err(|e| self.err(e))
    }

    /// A read transaction: one consistent snapshot across several queries (PostgreSQL's
    /// default READ COMMITTED gives each statement its own, so it is asked for).
    pub(crate) async fn read_tx(&self) -> Result<Tx<'static>, StoreError> {
        match self.backend {
            Backend::Sqlite => self.pool.begin().await,
            Backend::Postgres => {
                self.pool
                    .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                    .await
            }
        }
        .map_err(|e| self.err(e))
    }
}

/// The root key and CA_system_ID, checked.
async fn read_settings(pool: &AnyPool, label: &Path) -> Result<(Key128, u16), StoreError> {
    let row = sqlx::query("SELECT root_key, ca_system_id FROM settings WHERE id = 1")
        .fetch_optional(pool)
        .await
        .map_err(|e| StoreError::db(label, e))?;
    let corrupt = |detail: &str| StoreError::Corrupt {
        path: label.to_owned(),
        detail: detail.to_owned(),
    };
    let Some(row) = row else {
        return Err(corrupt("it has no settings (an interrupted `castmux init`?); remove it and run `castmux init` again"));
    };
    let root_hex: String = row.try_get(0).map_err(|e| StoreError::db(label, e))?;
    let root = Key128::from_hex(&root_hex).map_err(|_| corrupt("the root key is damaged"))?;
    let caid: i64 = row.try_get(1).map_err(|e| StoreError::db(label, e))?;
    let ca_system_id =
        u16::try_from(caid).map_err(|_| corrupt("the CA_system_ID is out of range"))?;
    Ok((root, ca_system_id))
}

/// Init's settings row and its two audit rows, inside `tx`.
async fn write_settings(
    tx: &mut Tx<'_>,
    root: &Key128,
    opts: &InitOptions,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO settings (id, root_key, serial_prefix, next_serial, ca_system_id, \
         rotate_every, change_seq, created_at) VALUES (1, $1, $2, $3, $4, $5, 0, $6)",
    )
    .bind(root.expose_hex())
    .bind(opts.serial_prefix as i64)
    .bind(opts.serial_prefix as i64)
    .bind(i64::from(opts.ca_system_id))
    .bind(opts.rotate_every)
    .bind(opts.now)
    .execute(&mut **tx)
    .await?;
    audit::record(
        tx,
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
        tx,
        opts.now,
        "root-key.create",
        "root",
        "128-bit key from the OS CSPRNG",
    )
    .await
}

/// A SQLite store file and the `-wal` and `-shm` files beside it.
fn remove_sqlite_files(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
}

/// `($1, $2, ..), ($n+1, ..)`: `rows` groups of `cols` parameters, for a multi-row INSERT
/// (sqlx's QueryBuilder writes `?`, which PostgreSQL does not read).
pub(crate) fn values_placeholders(rows: usize, cols: usize) -> String {
    let mut out = String::with_capacity(rows * cols * 5);
    for r in 0..rows {
        if r > 0 {
            out.push_str(", ");
        }
        out.push('(');
        for c in 0..cols {
            if c > 0 {
                out.push_str(", ");
            }
            out.push_str(&format!("${}", r * cols + c + 1));
        }
        out.push(')');
    }
    out
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
pub(crate) async fn next_change_seq(tx: &mut Tx<'_>) -> Result<i64, sqlx::Error> {
    let row = sqlx::query(
        "UPDATE settings SET change_seq = change_seq + 1 WHERE id = 1 RETURNING change_seq",
    )
    .fetch_one(&mut **tx)
    .await?;
    row.try_get(0)
}

/// Stores for the unit tests on either backend: a file in `dir`, or a fresh database on the
/// PostgreSQL cluster CASTMUX_TEST_PG names (scripts/test.sh starts one; without it the
/// test fails, saying so).
#[cfg(test)]
pub(crate) fn test_location(backend: Backend, dir: &Path) -> StoreLocation {
    use std::sync::atomic::{AtomicU32, Ordering};
    match backend {
        Backend::Sqlite => StoreLocation::File(dir.join("castmux.db")),
        Backend::Postgres => {
            static N: AtomicU32 = AtomicU32::new(0);
            let base = std::env::var("CASTMUX_TEST_PG").expect(
                "CASTMUX_TEST_PG is not set: the PostgreSQL store tests need a server \
                 (scripts/test.sh starts one with scripts/pg.sh)",
            );
            let name = format!(
                "castmux_u{}_{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            );
            let out = std::process::Command::new("psql")
                .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", &base, "-c"])
                .arg(format!("CREATE DATABASE {name}"))
                .output()
                .expect("psql (postgresql-client)");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let (server, _) = base.rsplit_once('/').expect("postgres://USER@HOST:PORT/DB");
            StoreLocation::Postgres(format!("{server}/{name}"))
        }
    }
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
        let untouched = connect_pool(&StoreLocation::File(path.clone()), 1)
            .await
            .unwrap();
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
