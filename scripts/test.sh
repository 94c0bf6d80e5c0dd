#!/usr/bin/env bash
# The project's test command (README.md, .ci/run): installs the Debian peers the tests
# run against when they are missing (scripts/deps.sh), then tests the whole workspace in
# release mode (the 100,000-case cipher differentials need it), with the differential
# test against the system libdvbcsa turned on.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cargo test --workspace --release --features libdvbcsa "$@"
