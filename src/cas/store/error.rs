//! The store's errors. Input errors carry TVCAS-style codes (`ACCESS_CRITERIA_ERROR`,
//! `SMARTCARD_NOT_FOUND`, ...) first in their message, then what form was expected.

use std::path::PathBuf;

use crate::cas::types::{CardSerial, CasTypeError};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No store file at the path.
    #[error("STORE_NOT_FOUND: no card store at {path}; run `castmux init` first (or point --db / CASTMUX_DB at the store)")]
    NotInitialized {
        /// The path that was tried.
        path: PathBuf,
    },
    /// `init` on a path that already exists.
    #[error("STORE_EXISTS: {path} already exists; castmux init never overwrites a store (choose another --db path)")]
    Exists {
        /// The existing path.
        path: PathBuf,
    },
    /// The file is not a castmux store, or is damaged.
    #[error("STORE_ERROR: {path} is not a usable castmux store: {detail}")]
    Corrupt {
        /// The store path.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
    /// Another process holds the write lock past the busy timeout.
    #[error("STORE_LOCKED: {path} is locked by another process; retry when it is done")]
    Locked {
        /// The store path.
        path: PathBuf,
    },
    /// No connection to the store's server within the wait (PostgreSQL down, unreachable,
    /// or every connection busy).
    #[error("STORE_UNREACHABLE: {path}: no connection to the store's server within {secs} s ({detail}); check that PostgreSQL is up and reachable (running castmux processes keep their keys and try again)")]
    Unreachable {
        /// The store.
        path: PathBuf,
        /// The wait.
        secs: u64,
        /// The driver's words.
        detail: String,
    },
    /// The transaction that carried this change (with others committed together) failed;
    /// nothing of it was written.
    #[error("DB_ERROR: {path}: the change was not committed ({detail}); nothing was written, send it again")]
    NotCommitted {
        /// The store path.
        path: PathBuf,
        /// The driver's error, as text.
        detail: String,
    },
    /// The store's card writer has stopped (the process is shutting down).
    #[error("STORE_CLOSED: {path}: the card writer has stopped (castmux is shutting down){}", if *maybe_applied { "; the change may have been committed: read the card to see" } else { "; the change was not applied, send it again once castmux runs" })]
    WriterStopped {
        /// The store path.
        path: PathBuf,
        /// Whether the writer had taken the change when it stopped.
        maybe_applied: bool,
    },
    /// A database error not caused by the input.
    #[error("DB_ERROR: {path}: {source}")]
    Db {
        /// The store path.
        path: PathBuf,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// Applying the schema migrations failed.
    #[error("STORE_ERROR: {path}: schema migration failed: {source}")]
    Migrate {
        /// The store path.
        path: PathBuf,
        /// The migrator's error.
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    /// A file could not be read or written.
    #[error("IO_ERROR: {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Bad access criteria.
    #[error("ACCESS_CRITERIA_ERROR: {0:?} is not access criteria; expected 0/1 digits like 00000101 (rightmost = first package, bit 0) or 0x + hex")]
    AccessCriteria(String),
    /// Bad start time.
    #[error("START_ERROR: {0:?} is not a start time; expected Unix seconds (10 digits), YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS]Z (UTC)")]
    Start(String),
    /// Bad finish time, or finish before start.
    #[error("FINISH_ERROR: {0}")]
    Finish(String),
    /// A pair flag other than 0 or 1.
    #[error("PAIR_ERROR: pair {0:?} must be 0 or 1")]
    Pair(String),
    /// A serial that is not decimal digits, or too large.
    #[error("SERIAL_ERROR: {0:?} is not a card serial; expected decimal digits like 2100000000 (at most 9223372036854775807)")]
    Serial(String),
    /// A bad `--count`.
    #[error("COUNT_ERROR: {0}")]
    Count(String),
    /// A package bit outside 0..=63.
    #[error("BIT_ERROR: {0}")]
    Bit(String),
    /// Name or info too long or not text.
    #[error("FIELD_ERROR: {0}")]
    Field(String),
    /// A bad package or event name.
    #[error("NAME_ERROR: {0:?} is not a valid name; expected 1..=64 characters of letters, digits, '_', '-', '.'")]
    Name(String),
    /// No card with this serial.
    #[error("SMARTCARD_NOT_FOUND: no card with serial {0}; `castmux card list` shows the cards")]
    SmartcardNotFound(CardSerial),
    /// A card with this serial exists.
    #[error("SMARTCARD_EXISTS: a card with serial {0} already exists; pick another --serial or leave it out to allocate the next free one")]
    SmartcardExists(CardSerial),
    /// No package with this name.
    #[error("PACKAGE_NOT_FOUND: no package named {0:?}; `castmux package list` shows them, `castmux package add NAME` creates one")]
    PackageNotFound(String),
    /// The package name or bit is taken.
    #[error("PACKAGE_EXISTS: {0}")]
    PackageExists(String),
    /// No event with this name.
    #[error("EVENT_NOT_FOUND: no event named {0:?}; `castmux event add NAME --start T --end T` creates one")]
    EventNotFound(String),
    /// The event name is taken.
    #[error("EVENT_EXISTS: an event named {0:?} already exists")]
    EventExists(String),
    /// All 64 bits are in use.
    #[error("BIT_ERROR: all 64 package bits are in use; reuse one with --bit N")]
    BitsExhausted,
    /// No serial left after the allocation point.
    #[error("SERIAL_ERROR: no free serials left to allocate {0} cards; give --serial")]
    SerialsExhausted(u64),
    /// A malformed CSV file (header, quoting, size).
    #[error("CSV_ERROR: {0}")]
    Csv(String),
    /// A bad value in one CSV row; nothing was written.
    // `reason` is shown here and is deliberately not the error's source: a source would be
    // printed a second time by every `{:#}` chain (`... (CSV line 2 ...): ACCESS_CRITERIA_ERROR`)
    #[error("{reason} (CSV line {line}, field {field}; nothing was imported)")]
    ImportRow {
        /// 1-based line number in the file (the header is line 1).
        line: usize,
        /// The column.
        field: &'static str,
        /// What was wrong with the value.
        reason: Box<StoreError>,
    },
    /// A key-holding file (the store, a backup) could not be created as a new private file.
    // the inner error is shown, not chained, for the same reason as `ImportRow`
    #[error("IO_ERROR: {0}")]
    KeyFile(crate::io::private_file::PrivateFileError),
    /// The store's path is not UTF-8, which SQLite's `VACUUM INTO` needs.
    #[error("IO_ERROR: {0} is not a UTF-8 path; give a backup path in plain text")]
    NotUtf8Path(PathBuf),
    /// A bad rotation interval.
    #[error("ROTATE_ERROR: {0}")]
    Rotate(String),
}

impl StoreError {
    /// The TVCAS-style code this error's message starts with.
    pub fn code(&self) -> &'static str {
        match self {
            StoreError::NotInitialized { .. } => "STORE_NOT_FOUND",
            StoreError::Exists { .. } => "STORE_EXISTS",
            StoreError::Corrupt { .. } | StoreError::Migrate { .. } => "STORE_ERROR",
            StoreError::Locked { .. } => "STORE_LOCKED",
            StoreError::Unreachable { .. } => "STORE_UNREACHABLE",
            StoreError::Db { .. } | StoreError::NotCommitted { .. } => "DB_ERROR",
            StoreError::WriterStopped { .. } => "STORE_CLOSED",
            StoreError::Io { .. } | StoreError::KeyFile(_) | StoreError::NotUtf8Path(_) => {
                "IO_ERROR"
            }
            StoreError::AccessCriteria(_) => "ACCESS_CRITERIA_ERROR",
            StoreError::Start(_) => "START_ERROR",
            StoreError::Finish(_) => "FINISH_ERROR",
            StoreError::Pair(_) => "PAIR_ERROR",
            StoreError::Serial(_) | StoreError::SerialsExhausted(_) => "SERIAL_ERROR",
            StoreError::Count(_) => "COUNT_ERROR",
            StoreError::Bit(_) | StoreError::BitsExhausted => "BIT_ERROR",
            StoreError::Field(_) => "FIELD_ERROR",
            StoreError::Name(_) => "NAME_ERROR",
            StoreError::SmartcardNotFound(_) => "SMARTCARD_NOT_FOUND",
            StoreError::SmartcardExists(_) => "SMARTCARD_EXISTS",
            StoreError::PackageNotFound(_) => "PACKAGE_NOT_FOUND",
            StoreError::PackageExists(_) => "PACKAGE_EXISTS",
            StoreError::EventNotFound(_) => "EVENT_NOT_FOUND",
            StoreError::EventExists(_) => "EVENT_EXISTS",
            StoreError::Csv(_) => "CSV_ERROR",
            StoreError::ImportRow { reason, .. } => reason.code(),
            StoreError::Rotate(_) => "ROTATE_ERROR",
        }
    }

    /// Classify a driver error: busy/locked and corruption get their own codes.
    pub(crate) fn db(path: &std::path::Path, e: sqlx::Error) -> StoreError {
        if matches!(e, sqlx::Error::PoolTimedOut) && path.to_string_lossy().contains("://") {
            return StoreError::Unreachable {
                path: path.to_owned(),
                secs: super::PG_ACQUIRE.as_secs(),
                detail: e.to_string(),
            };
        }
        if let sqlx::Error::Database(d) = &e {
            // PostgreSQL's SQLSTATE 55P03: the write lock (or a row lock) not had within
            // lock_timeout, which is SQLite's busy timeout
            if d.try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                .is_some()
            {
                if d.code().as_deref() == Some("55P03") {
                    return StoreError::Locked {
                        path: path.to_owned(),
                    };
                }
                return StoreError::Db {
                    path: path.to_owned(),
                    source: e,
                };
            }
            // SQLite primary result codes: 5 BUSY, 6 LOCKED, 11 CORRUPT, 26 NOTADB
            let primary = d
                .code()
                .and_then(|c| c.parse::<i64>().ok())
                .map(|c| c & 0xFF);
            match primary {
                Some(5) | Some(6) => {
                    return StoreError::Locked {
                        path: path.to_owned(),
                    }
                }
                Some(11) | Some(26) => {
                    return StoreError::Corrupt {
                        path: path.to_owned(),
                        detail: d.message().to_owned(),
                    }
                }
                _ => {}
            }
        }
        StoreError::Db {
            path: path.to_owned(),
            source: e,
        }
    }
}

impl From<CasTypeError> for StoreError {
    fn from(e: CasTypeError) -> StoreError {
        match e {
            CasTypeError::AccessCriteria(s) => StoreError::AccessCriteria(s),
            CasTypeError::PackageBit(b) => {
                StoreError::Bit(format!("package bit {b} is out of range; expected 0..=63"))
            }
            CasTypeError::Serial(s) => StoreError::Serial(s),
            CasTypeError::Key => StoreError::Field("a key is 32 hex digits".to_owned()),
            CasTypeError::Pair(s) => StoreError::Pair(s),
        }
    }
}
