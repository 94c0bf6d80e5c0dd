#!/usr/bin/env bash
# The project's test command (README.md, .ci/run): installs the Debian peers the tests
# run against when they are missing (scripts/deps.sh), then tests the whole workspace in
# release mode (the 100,000-case cipher differentials need it), with the differential
# test against the system libdvbcsa turned on, and a throw-away PostgreSQL cluster
# (scripts/pg.sh) for the store tests that run on both backends.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
# the store tests run on SQLite and on PostgreSQL: a throw-away cluster unless one is given
if [ -z "${CASTMUX_TEST_PG:-}" ]; then
  eval "$(scripts/pg.sh start)"
  trap 'scripts/pg.sh stop "$CASTMUX_TEST_PG_DIR"' EXIT
fi
cargo test --workspace --release --features libdvbcsa "$@"
