#!/usr/bin/env bash
# The project's test command (README.md, .ci/run): the whole workspace in
# release mode (the 100,000-case cipher differentials need it), with the
# differential test against the system libdvbcsa turned on.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --release --features libdvbcsa "$@"
