//! PostgreSQL for the store tests: a fresh database per test on the cluster named by
//! CASTMUX_TEST_PG (scripts/test.sh starts a throw-away one with scripts/pg.sh). Without it
//! the test fails, saying how to get one: a PostgreSQL test never quietly passes.

#![allow(dead_code)]

use std::process::Command;

/// Which store a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Run each named `fn NAME(b: Backend)` as two tests, `sqlite::NAME` and `postgres::NAME`.
#[macro_export]
macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[test]
            fn $name() {
                super::$name($crate::pg_support::Backend::Sqlite)
            })*
        }
        mod postgres {
            $(#[test]
            fn $name() {
                super::$name($crate::pg_support::Backend::Postgres)
            })*
        }
    };
}
use std::sync::atomic::{AtomicU32, Ordering};

/// Run `f` to its end on a runtime of its own.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

/// Run `f` on the store at `at` (a path or a postgres:// URL), opened and closed on one
/// runtime (its pool lives there).
pub fn with_store<T>(at: &str, f: impl AsyncFnOnce(&castmux::cas::store::Store) -> T) -> T {
    let at: castmux::cas::store::StoreLocation = at.parse().expect("store location");
    block_on(async {
        let store = castmux::cas::store::Store::open(&at)
            .await
            .expect("open the store");
        let r = f(&store).await;
        store.close().await;
        r
    })
}

/// The cluster's URL (its `postgres` database).
pub fn cluster() -> String {
    std::env::var("CASTMUX_TEST_PG").unwrap_or_else(|_| {
        panic!(
            "CASTMUX_TEST_PG is not set: the PostgreSQL store tests need a server. \
             scripts/test.sh starts a throw-away cluster (scripts/pg.sh start prints the \
             export line); or point it at a server where the user may CREATE DATABASE"
        )
    })
}

/// Run SQL on the cluster's `postgres` database with psql; panics with psql's message.
pub fn psql(sql: &str) {
    psql_on(&cluster(), sql)
}

/// [`psql`] on the database at `url`.
pub fn psql_on(url: &str, sql: &str) {
    let out = Command::new("psql")
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", url, "-c", sql])
        .output()
        .expect("psql (Debian postgresql-client) must be installed for the PostgreSQL tests");
    assert!(
        out.status.success(),
        "psql {sql:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Wait (at most 10 s) until no session but this one is connected to the database at
/// `url`: a killed client's server process may still be finishing the COMMIT it was sent,
/// and what the client did is settled only once that session has ended.
pub fn wait_for_other_sessions(url: &str) {
    block_on(async {
        use sqlx::Connection;
        let mut c = sqlx::postgres::PgConnection::connect(url)
            .await
            .expect("connect to the test database");
        for _ in 0..1000 {
            let (n,): (i64,) = sqlx::query_as(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND pid <> pg_backend_pid()",
            )
            .fetch_one(&mut c)
            .await
            .expect("pg_stat_activity");
            if n == 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let _ = c.close().await;
    })
}

/// A new, empty database; its URL.
pub fn fresh_database() -> String {
    fresh_database_on(&cluster())
}

/// A new, empty database on the cluster whose `postgres` database is at `base`.
pub fn fresh_database_on(base: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let name = format!(
        "castmux_t{}_{}_{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    psql_on(base, &format!("CREATE DATABASE {name}"));
    let (server, _) = base
        .rsplit_once('/')
        .expect("CASTMUX_TEST_PG is postgres://USER@HOST:PORT/DB");
    format!("{server}/{name}")
}

/// A cluster of the test's own (scripts/pg.sh), for a test that stops and restarts its
/// server, which the shared one must not be. Stopped and removed when dropped.
pub struct OwnCluster {
    dir: String,
    /// The URL of its `postgres` database.
    pub url: String,
}

fn pg_sh(args: &[&str]) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/pg.sh");
    let out = Command::new("bash")
        .arg(script)
        .args(args)
        .output()
        .expect("run scripts/pg.sh");
    assert!(
        out.status.success(),
        "scripts/pg.sh {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

impl OwnCluster {
    pub fn start() -> OwnCluster {
        let out = pg_sh(&["start"]);
        let var = |name: &str| {
            out.lines()
                .find_map(|l| l.strip_prefix(&format!("export {name}=")))
                .unwrap_or_else(|| panic!("no {name} in {out}"))
                .to_owned()
        };
        OwnCluster {
            dir: var("CASTMUX_TEST_PG_DIR"),
            url: var("CASTMUX_TEST_PG"),
        }
    }

    /// Stop the server (fast shutdown: every connection is cut).
    pub fn pause(&self) {
        pg_sh(&["pause", &self.dir]);
    }

    /// Start it again on the same port with the same data.
    pub fn resume(&self) {
        pg_sh(&["resume", &self.dir]);
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/pg.sh");
        let _ = Command::new("bash")
            .arg(script)
            .args(["stop", &self.dir])
            .output();
    }
}
