//! PostgreSQL for the store tests: a fresh database per test on the cluster named by
//! CASTMUX_TEST_PG (scripts/test.sh starts a throw-away one with scripts/pg.sh). Without it
//! the test fails, saying how to get one: a PostgreSQL test never quietly passes.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

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
    let out = Command::new("psql")
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", &cluster(), "-c", sql])
        .output()
        .expect("psql (Debian postgresql-client) must be installed for the PostgreSQL tests");
    assert!(
        out.status.success(),
        "psql {sql:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A new, empty database; its URL.
pub fn fresh_database() -> String {
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
    psql(&format!("CREATE DATABASE {name}"));
    let base = cluster();
    let (server, _) = base
        .rsplit_once('/')
        .expect("CASTMUX_TEST_PG is postgres://USER@HOST:PORT/DB");
    format!("{server}/{name}")
}
