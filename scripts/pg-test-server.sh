#!/usr/bin/env bash
# A throwaway PostgreSQL server for the PostgreSQL backend's tests
# (src/storage/postgres/): loopback only, trust authentication, no durability.
#
# Usage: scripts/pg-test-server.sh start|stop|url
#   start  initdb (once) and start the server on a free port of 127.0.0.1,
#          wait until it accepts connections, print its URL and write it to
#          <dir>/url. Starting a running server only prints its URL.
#   stop   stop the server and remove <dir>.
#   url    print the URL of the running server.
# <dir> is ${ORCH_PG_DIR:-/tmp/orch-pg}. The tests read the URL from
# ORCH_TEST_PG_URL:
#   export ORCH_TEST_PG_URL=$(scripts/pg-test-server.sh start)
#
# initdb and postgres refuse to run as root, so as root the server runs as
# ${ORCH_PG_OS_USER:-nobody}. The binaries are taken from PATH, else from the
# newest /usr/lib/postgresql/*/bin (Debian's layout).
set -euo pipefail

dir="${ORCH_PG_DIR:-/tmp/orch-pg}"
data="$dir/data"
os_user="${ORCH_PG_OS_USER:-nobody}"

pg_bin() {
  if command -v "$1" >/dev/null; then
    command -v "$1"
    return
  fi
  local found
  found=$(ls -d /usr/lib/postgresql/*/bin/"$1" 2>/dev/null | sort -V | tail -n 1)
  [ -n "$found" ] || { echo "pg-test-server: $1 not found (install PostgreSQL)" >&2; exit 1; }
  echo "$found"
}

# Run a PostgreSQL binary as the unprivileged user when we are root.
as_pg() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u "$os_user" -- "$@"
  else
    "$@"
  fi
}

running() {
  [ -f "$data/PG_VERSION" ] && as_pg "$(pg_bin pg_ctl)" -D "$data" status >/dev/null 2>&1
}

port_in_use() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

start() {
  if running && [ -s "$dir/url" ]; then
    cat "$dir/url"
    return
  fi
  mkdir -p "$dir"
  chmod 755 "$dir"
  [ "$(id -u)" = 0 ] && chown "$os_user" "$dir"
  if [ ! -f "$data/PG_VERSION" ]; then
    rm -rf "$data"
    as_pg "$(pg_bin initdb)" -D "$data" -U orch --auth=trust --encoding=UTF8 \
      --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 \
      || { cat "$dir/initdb.log" >&2; exit 1; }
  fi
  # A port someone else takes between the probe and the bind fails the start:
  # try the next one.
  local port=$((20000 + RANDOM % 20000)) tries=0
  while :; do
    tries=$((tries + 1))
    if ! port_in_use "$port" \
      && as_pg "$(pg_bin pg_ctl)" -D "$data" -l "$dir/server.log" -w -t 30 \
        -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" \
        start >/dev/null; then
      break
    fi
    if [ "$tries" -ge 5 ]; then
      echo "pg-test-server: could not start PostgreSQL; its log:" >&2
      tail -n 20 "$dir/server.log" >&2 || true
      exit 1
    fi
    port=$((port + 1))
  done
  local ready=0
  for _ in $(seq 1 100); do
    if "$(pg_bin pg_isready)" -q -h 127.0.0.1 -p "$port"; then
      ready=1
      break
    fi
    sleep 0.1
  done
  [ "$ready" = 1 ] || { echo "pg-test-server: PostgreSQL on port $port never became ready" >&2; exit 1; }
  echo "postgres://orch@127.0.0.1:$port/postgres" >"$dir/url"
  cat "$dir/url"
}

stop() {
  if running; then
    as_pg "$(pg_bin pg_ctl)" -D "$data" -m fast -w stop >/dev/null
  fi
  rm -rf "$dir"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  url)
    running && [ -s "$dir/url" ] || { echo "pg-test-server: not running" >&2; exit 1; }
    cat "$dir/url"
    ;;
  *)
    echo "usage: $0 start|stop|url" >&2
    exit 2
    ;;
esac
