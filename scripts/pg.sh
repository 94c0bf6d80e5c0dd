#!/usr/bin/env bash
# A throw-away PostgreSQL cluster for the tests (Debian's postgresql package, installed by
# scripts/deps.sh): `scripts/pg.sh start` makes one in a temporary directory, on loopback,
# with trust authentication and fsync off (nothing in it outlives the run), and prints the
# shell lines that export CASTMUX_TEST_PG (the URL the store tests create their databases
# through) and CASTMUX_TEST_PG_DIR; `scripts/pg.sh stop DIR` stops it and removes DIR.
# PostgreSQL refuses to run as root, so as root the cluster runs as the postgres user the
# package creates.
set -euo pipefail

bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
if [ -z "$bindir" ] || [ ! -x "$bindir/initdb" ]; then
  echo "scripts/pg.sh: no PostgreSQL server under /usr/lib/postgresql; install the postgresql package (scripts/deps.sh does)" >&2
  exit 1
fi

as_owner=()
if [ "$(id -u)" -eq 0 ]; then
  as_owner=(runuser -u postgres --)
fi

case "${1:-}" in
  start)
    dir=$(mktemp -d /tmp/castmux-pg.XXXXXX)
    [ "$(id -u)" -eq 0 ] && chown postgres: "$dir"
    port=${CASTMUX_TEST_PG_PORT:-$((20000 + RANDOM % 20000))}
    "${as_owner[@]}" "$bindir/initdb" -D "$dir/data" -U castmux --auth=trust -E UTF8 \
      --no-sync >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; exit 1; }
    echo "-h 127.0.0.1 -p $port -k $dir -F -c max_connections=400 -c shared_buffers=64MB" >"$dir/opts"
    "${as_owner[@]}" "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
      -o "$(cat "$dir/opts")" start >/dev/null || { cat "$dir/server.log" >&2; exit 1; }
    echo "export CASTMUX_TEST_PG=postgres://castmux@127.0.0.1:$port/postgres"
    echo "export CASTMUX_TEST_PG_DIR=$dir"
    ;;
  pause)
    dir=${2:?usage: scripts/pg.sh pause DIR}
    "${as_owner[@]}" "$bindir/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null
    ;;
  resume)
    dir=${2:?usage: scripts/pg.sh resume DIR}
    "${as_owner[@]}" "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
      -o "$(cat "$dir/opts")" start >/dev/null || { cat "$dir/server.log" >&2; exit 1; }
    ;;
  stop)
    dir=${2:?usage: scripts/pg.sh stop DIR}
    "${as_owner[@]}" "$bindir/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
    rm -rf "$dir"
    ;;
  *)
    echo "usage: scripts/pg.sh start | pause DIR | resume DIR | stop DIR" >&2
    exit 2
    ;;
esac
