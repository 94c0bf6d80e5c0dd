//! Where a store lives: a SQLite file (the embedded default) or a PostgreSQL database, as
//! `--db` / `CASTMUX_DB` name it. A `postgres://` or `postgresql://` URL is PostgreSQL;
//! anything else is a file path.
//!
//! A PostgreSQL password never shows: `Display` and `Debug` mask it, and it need not be in
//! the URL at all: `PGPASSWORD`, `PGPASSFILE` and `~/.pgpass` are read as libpq reads them.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// The backend a location names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// One SQLite file (WAL).
    Sqlite,
    /// A PostgreSQL database, shared by any number of castmux processes.
    Postgres,
}

/// A store's location.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// A SQLite file.
    File(PathBuf),
    /// A PostgreSQL connection URL, as written (password included, if written).
    Postgres(String),
}

impl StoreLocation {
    /// Which backend.
    pub fn backend(&self) -> Backend {
        match self {
            StoreLocation::File(_) => Backend::Sqlite,
            StoreLocation::Postgres(_) => Backend::Postgres,
        }
    }

    /// What messages call the store: the file's path, or the URL with its password masked.
    pub fn label(&self) -> PathBuf {
        match self {
            StoreLocation::File(p) => p.clone(),
            StoreLocation::Postgres(u) => PathBuf::from(crate::io::url::mask(u)),
        }
    }

    /// The URL the driver connects with. A file becomes `sqlite://` + its path, every byte
    /// outside `[A-Za-z0-9/._-]` percent-encoded (the driver decodes it), opened read-write
    /// without creating it (`init` creates the file itself, 0600).
    pub(super) fn connect_url(&self) -> Result<String, super::StoreError> {
        match self {
            StoreLocation::Postgres(u) => Ok(u.clone()),
            StoreLocation::File(p) => {
                let s = p
                    .to_str()
                    .ok_or_else(|| super::StoreError::NotUtf8Path(p.clone()))?;
                let mut url = String::from("sqlite://");
                for b in s.bytes() {
                    if b.is_ascii_alphanumeric() || matches!(b, b'/' | b'.' | b'_' | b'-') {
                        url.push(b as char);
                    } else {
                        url.push_str(&format!("%{b:02X}"));
                    }
                }
                url.push_str("?mode=rw");
                Ok(url)
            }
        }
    }

    /// The file, when this is one.
    pub fn file(&self) -> Option<&Path> {
        match self {
            StoreLocation::File(p) => Some(p),
            StoreLocation::Postgres(_) => None,
        }
    }
}

fn is_postgres_url(s: &str) -> bool {
    let lower = s.get(..13).unwrap_or(s).to_ascii_lowercase();
    lower.starts_with("postgres://") || lower.starts_with("postgresql://")
}

impl FromStr for StoreLocation {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err("an empty store location; give a file path or a postgres:// URL".into());
        }
        Ok(if is_postgres_url(s) {
            StoreLocation::Postgres(s.to_owned())
        } else {
            StoreLocation::File(PathBuf::from(s))
        })
    }
}

impl fmt::Display for StoreLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.label().display())
    }
}

impl fmt::Debug for StoreLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreLocation::File(p) => f.debug_tuple("File").field(p).finish(),
            StoreLocation::Postgres(_) => f.debug_tuple("Postgres").field(&self.label()).finish(),
        }
    }
}

impl From<&Path> for StoreLocation {
    fn from(p: &Path) -> Self {
        StoreLocation::File(p.to_owned())
    }
}

impl From<PathBuf> for StoreLocation {
    fn from(p: PathBuf) -> Self {
        StoreLocation::File(p)
    }
}

impl From<&PathBuf> for StoreLocation {
    fn from(p: &PathBuf) -> Self {
        StoreLocation::File(p.clone())
    }
}

impl From<&StoreLocation> for StoreLocation {
    fn from(l: &StoreLocation) -> Self {
        l.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_postgres_and_the_rest_are_files() {
        for u in [
            "postgres://u@h/db",
            "postgresql://u:p@h:5433/db",
            "POSTGRES://h/db",
        ] {
            let l: StoreLocation = u.parse().unwrap();
            assert_eq!(l.backend(), Backend::Postgres, "{u}");
        }
        for p in [
            "castmux.db",
            "/var/lib/castmux/castmux.db",
            "postgres",
            "./x?y#z",
        ] {
            let l: StoreLocation = p.parse().unwrap();
            assert_eq!(l, StoreLocation::File(PathBuf::from(p)));
        }
        assert!("".parse::<StoreLocation>().is_err());
    }

    #[test]
    fn a_password_never_shows() {
        for u in [
            "postgres://castmux:s3cret@db.example/castmux",
            "postgresql://castmux:s3cret@db.example/castmux?sslmode=require",
            "postgres://castmux@db.example/castmux?password=s3cret&sslmode=disable",
        ] {
            let l: StoreLocation = u.parse().unwrap();
            for shown in [
                l.to_string(),
                format!("{l:?}"),
                l.label().display().to_string(),
            ] {
                assert!(!shown.contains("s3cret"), "{shown}");
                assert!(shown.contains("db.example"), "{shown}");
            }
        }
    }

    #[test]
    fn a_file_url_encodes_what_the_driver_would_read_as_syntax() {
        let l = StoreLocation::File(PathBuf::from("/tmp/a b/c?d#e%f.db"));
        assert_eq!(
            l.connect_url().unwrap(),
            "sqlite:///tmp/a%20b/c%3Fd%23e%25f.db?mode=rw"
        );
    }
}
