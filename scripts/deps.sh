#!/usr/bin/env bash
# Install the real peers the tests run against (Debian packages), when missing:
# libdvbcsa-dev (the reference CSA), ffmpeg/ffprobe, srt-tools (srt-live-transmit),
# tshark, openssl, curl (an HTTP-TS client in tests/cli_http), prometheus (promtool and a server the metrics test scrapes),
# chromium and chromium-driver, firefox-esr and geckodriver (the web page's browser tests;
# geckodriver is not a Debian package, so Mozilla's crate is built with cargo install),
# systemd (systemd-analyze verifies the service unit; no systemd needs to run),
# postgresql and postgresql-client (the store's second backend: scripts/pg.sh starts a
# throw-away cluster from the server's binaries, the tests make their databases with psql),
# fonts-dejavu-core (the TrueType
# font `loadtest --plot` draws its text with; read at run time, nothing to link). Called by
# scripts/test.sh, so the README's test command works on a fresh Debian machine by itself. A peer that cannot be installed stops here, loudly:
# the tests never skip a missing peer.
set -euo pipefail

need_pkgs=(libdvbcsa-dev ffmpeg srt-tools tshark openssl curl prometheus chromium chromium-driver
  fonts-dejavu-core firefox-esr systemd postgresql postgresql-client)
missing=()
for p in "${need_pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "scripts/deps.sh: installing ${missing[*]}" >&2
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "scripts/deps.sh: missing ${missing[*]} and no apt-get here; install them by hand" >&2
    exit 1
  fi
  sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null 2>&1; then
      echo "scripts/deps.sh: missing ${missing[*]}; run as root or install sudo" >&2
      exit 1
    fi
    sudo=(sudo)
  fi
  export DEBIAN_FRONTEND=noninteractive
  # tshark asks whether non-root users may capture; answer no instead of waiting
  echo "wireshark-common wireshark-common/install-setuid boolean false" \
    | "${sudo[@]}" debconf-set-selections 2>/dev/null || true
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

still=()
for p in "${missing[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || still+=("$p")
done
if [ ${#still[@]} -gt 0 ]; then
  echo "scripts/deps.sh: ${still[*]} did not install" >&2
  exit 1
fi

# geckodriver, Firefox's WebDriver server: Debian does not package it; Mozilla publishes it
# as a crate. Built once into cargo's bin directory, where the browser test looks.
GECKODRIVER_VERSION=0.37.1
cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin"
if ! command -v geckodriver >/dev/null 2>&1 && [ ! -x "$cargo_bin/geckodriver" ]; then
  echo "scripts/deps.sh: installing geckodriver $GECKODRIVER_VERSION (cargo install)" >&2
  cargo install --locked --version "$GECKODRIVER_VERSION" geckodriver
fi
