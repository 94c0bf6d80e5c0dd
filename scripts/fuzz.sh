#!/usr/bin/env bash
# Build every fuzz target (fuzz/, cargo-fuzz + libFuzzer, AddressSanitizer) and run each
# for SECONDS (default 20), one after the other, one process at a time, at low priority.
# Fails as soon as a target finds a crash, a failed assertion, a leak or a timeout; the
# input that did it is left in fuzz/artifacts/TARGET/.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]      (default: every target)
#
# New corpus entries go to fuzz/corpus/TARGET/ (not committed); the committed seeds in
# fuzz/seeds/TARGET/ are read too; libFuzzer's output goes to fuzz/logs/TARGET.log. A
# summary line per target (seconds, executions, corpus size, result) is printed at the end
# and kept in fuzz/last-run.txt.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

secs="${1:-20}"
shift || true
all=(ts_packets analyzer backup_inputs cbr mpts_mux psi_section scrambler simulcrypt_tlv newcamd cas_card cas_group_emm csv_import headend_toml url rtp_sync http_api http_ts_request)
targets=("${@:-${all[@]}}")
[ ${#targets[@]} -gt 0 ] || targets=("${all[@]}")

# cargo-fuzz passes nightly-only flags (-Zsanitizer=address, -Cpasses=sancov-module);
# the machine has only the stable toolchain, which accepts them with this set.
export RUSTC_BOOTSTRAP=1
# The bundled SQLite is built instrumented too, and ASan takes its two function-local static
# tables named `aiOff` for one global defined twice (an ODR "violation" C does not have).
export ASAN_OPTIONS="detect_odr_violation=0${ASAN_OPTIONS:+:$ASAN_OPTIONS}"

if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "fuzz.sh: installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked
fi

nice -n 19 cargo fuzz build
summary=()
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t" "seeds/$t" logs
  # not under artifacts/: cargo fuzz lists every file there as a failing input
  log="logs/$t.log"
  echo "fuzz.sh: $t for ${secs}s" >&2
  status=ok
  # -rss_limit_mb: a parser that allocates on a length field's say-so shows up as a failure
  if ! nice -n 19 cargo fuzz run "$t" "corpus/$t" "seeds/$t" -- \
      -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      >"$log" 2>&1; then
    status=FAILED
  fi
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -n 1)
  corpus=$(find "corpus/$t" -type f | wc -l)
  summary+=("$(printf '%-15s %6ss %12s execs %6s corpus  %s' "$t" "$secs" "${execs:-?}" "$corpus" "$status")")
  if [ "$status" != ok ]; then
    grep -m 1 -A 4 -E 'panicked at|ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)' "$log" >&2 || tail -n 20 "$log" >&2
    grep -m 1 'Test unit written to' "$log" >&2 || true
    printf '%s\n' "${summary[@]}" | tee last-run.txt
    echo "fuzz.sh: $t FAILED; the input is in fuzz/artifacts/$t/" >&2
    exit 1
  fi
done
printf '%s\n' "${summary[@]}" | tee last-run.txt
