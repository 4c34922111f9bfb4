#!/usr/bin/env bash
# Private database engines for the tests: loopback only, free ports, temp dirs,
# and stopping exactly the processes this script started.
#
#   tests/engines.sh start ENGINE DIR   start ENGINE (redis, etcd, postgres, mysql,
#                                       dynamodb) with its state in DIR; prints its
#                                       client URL. Starting again on the same DIR
#                                       reuses its port and data (restart tests).
#   tests/engines.sh stop DIR           stop the engine started in DIR (SIGTERM,
#                                       then SIGKILL), keeping its data.
#   tests/engines.sh run CMD [ARGS...]  start every engine, export
#                                       STORMLOCK_TEST_{REDIS_URL,ETCD_ENDPOINT,
#                                       POSTGRES_URL,MYSQL_URL,DYNAMODB_ENDPOINT},
#                                       run CMD, stop them all, exit with CMD's code.
#   tests/engines.sh url ENGINE DIR     print the client URL of an engine in DIR.
set -euo pipefail

ENGINES=(redis etcd postgres mysql dynamodb)
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
VENV=${STORMLOCK_VENV:-$HOME/.cache/stormlock/venv}
PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)

die() { echo "engines.sh: $*" >&2; exit 1; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_ready DIR SECONDS CMD...: polls CMD until it succeeds; on timeout prints
# the engine's log tail and fails.
wait_ready() {
  local dir=$1 seconds=$2; shift 2
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      echo "engines.sh: $(cat "$dir/engine") in $dir not ready after ${seconds}s; log tail:" >&2
      tail -n 30 "$dir/log" >&2 || true
      return 1
    fi
    sleep 0.1
  done
}

url() {
  local engine=$1 dir=$2 port
  port=$(cat "$dir/port")
  case $engine in
    redis) echo "redis://127.0.0.1:$port/" ;;
    etcd) echo "http://127.0.0.1:$port" ;;
    postgres) echo "postgres://postgres@127.0.0.1:$port/postgres" ;;
    mysql) echo "mysql://root@127.0.0.1:$port/stormlock" ;;
    dynamodb) echo "http://127.0.0.1:$port" ;;
    *) die "unknown engine $engine (know: ${ENGINES[*]})" ;;
  esac
}

# spawn DIR CMD...: runs CMD in its own session, logging to DIR/log.
spawn() {
  local dir=$1; shift
  setsid "$@" >>"$dir/log" 2>&1 < /dev/null &
  echo $! >"$dir/pid"
}

start() {
  local engine=$1 dir=$2
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  [[ -f $dir/port ]] || free_port >"$dir/port"
  echo "$engine" >"$dir/engine"
  local port; port=$(cat "$dir/port")
  case $engine in
    redis)
      command -v redis-server >/dev/null || die "redis-server not installed"
      spawn "$dir" redis-server --bind 127.0.0.1 --port "$port" --save '' --appendonly no \
        --dir "$dir" --daemonize no
      wait_ready "$dir" 10 redis-cli -p "$port" ping
      ;;
    etcd)
      command -v etcd >/dev/null || die "etcd not installed"
      [[ -f $dir/peer_port ]] || free_port >"$dir/peer_port"
      local peer; peer=$(cat "$dir/peer_port")
      # Short heartbeat and election timeout lower etcd's minimum lease TTL
      # (1.5 election timeouts) below our one-second minimum; the variables
      # give a test etcd's own defaults (100 and 1000 ms: a 2 s minimum).
      spawn "$dir" etcd --name t --data-dir "$dir/data" \
        --listen-client-urls "http://127.0.0.1:$port" --advertise-client-urls "http://127.0.0.1:$port" \
        --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
        --initial-cluster "t=http://127.0.0.1:$peer" --initial-cluster-state new \
        --heartbeat-interval "${STORMLOCK_ETCD_HEARTBEAT_MS:-20}" \
        --election-timeout "${STORMLOCK_ETCD_ELECTION_TIMEOUT_MS:-200}" --logger zap --log-outputs stderr
      wait_ready "$dir" 20 curl -sf "http://127.0.0.1:$port/health"
      ;;
    postgres)
      [[ -n $PG_BIN ]] || die "PostgreSQL server binaries not installed"
      # The server runs as the postgres user, which must be able to reach DIR.
      chmod 755 "$dir"
      local parent=$dir
      while [[ $parent != / ]]; do parent=$(dirname "$parent"); chmod o+x "$parent" 2>/dev/null || true; done
      if [[ ! -f $dir/data/PG_VERSION ]]; then
        install -d -o postgres -g postgres "$dir/data"
        (cd / && runuser -u postgres -- "$PG_BIN/initdb" -D "$dir/data" -U postgres --auth=trust \
          -E UTF8 --locale=C.UTF-8 --no-sync) >>"$dir/log" 2>&1 || { tail -n 20 "$dir/log" >&2; die "initdb failed"; }
      fi
      touch "$dir/pg.log" && chown postgres "$dir/pg.log"
      (cd / && runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/pg.log" -w -t 30 \
        -o "-p $port -k $dir/data -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200" start) \
        >>"$dir/log" 2>&1 || { tail -n 20 "$dir/pg.log" >&2; die "postgres did not start"; }
      head -n 1 "$dir/data/postmaster.pid" >"$dir/pid"
      wait_ready "$dir" 20 "$PG_BIN/pg_isready" -h 127.0.0.1 -p "$port"
      ;;
    mysql)
      command -v mariadbd >/dev/null || die "mariadb-server not installed"
      # Its own temporary directory: private servers set up side by side in /tmp have removed
      # each other's temporary tables ("Error on delete of '/tmp/#sql-temptable-…'").
      mkdir -p "$dir/tmp"
      if [[ ! -d $dir/data/mysql ]]; then
        mariadb-install-db --no-defaults --datadir="$dir/data" --tmpdir="$dir/tmp" --user=root \
          --auth-root-authentication-method=normal --skip-test-db >>"$dir/log" 2>&1 \
          || { grep -i -m 10 -E 'error|fail' "$dir/log" >&2; die "mariadb-install-db failed"; }
      fi
      spawn "$dir" mariadbd --no-defaults --datadir="$dir/data" --tmpdir="$dir/tmp" --socket="$dir/sock" --port="$port" \
        --bind-address=127.0.0.1 --user=root --skip-name-resolve --innodb-flush-log-at-trx-commit=0 \
        --max-connections=300
      wait_ready "$dir" 30 mariadb-admin --no-defaults --socket="$dir/sock" -uroot ping
      mariadb --no-defaults --socket="$dir/sock" -uroot -e \
        "CREATE DATABASE IF NOT EXISTS stormlock; CREATE USER IF NOT EXISTS 'root'@'127.0.0.1'; GRANT ALL ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION;" \
        >>"$dir/log" 2>&1
      ;;
    dynamodb)
      local python=$VENV/bin/python3
      [[ -x $VENV/bin/moto_server ]] || python=$(command -v python3)
      "$python" -c 'import moto.server' 2>/dev/null || die "moto not installed (run scripts/setup)"
      # moto, one request at a time: see tests/moto_serial.py.
      spawn "$dir" "$python" "$HERE/moto_serial.py" 127.0.0.1 "$port"
      wait_ready "$dir" 30 curl -sf "http://127.0.0.1:$port/moto-api/"
      ;;
    *) die "unknown engine $engine (know: ${ENGINES[*]})" ;;
  esac
  url "$engine" "$dir"
}

stop() {
  local dir=$1
  [[ -f $dir/pid ]] || return 0
  local engine pid
  engine=$(cat "$dir/engine")
  pid=$(cat "$dir/pid")
  # A frozen engine (tests stop it and its children) must run to shut down.
  kill -CONT "$pid" 2>/dev/null || true
  pkill -CONT --parent "$pid" 2>/dev/null || true
  if [[ $engine == postgres ]]; then
    (cd / && runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$dir/data" -m immediate stop) >>"$dir/log" 2>&1 || true
  fi
  if kill -0 "$pid" 2>/dev/null; then
    kill -CONT "$pid" 2>/dev/null || true
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$dir/pid"
}

ROOT=
cleanup() {
  [[ -n $ROOT ]] || return 0
  local engine
  for engine in "${ENGINES[@]}"; do stop "$ROOT/$engine"; done
  rm -rf "$ROOT"
}

run() {
  ROOT=$(mktemp -d -t stormlock-engines.XXXXXX)
  local root=$ROOT engine
  trap cleanup EXIT
  trap 'exit 130' INT TERM
  for engine in "${ENGINES[@]}"; do
    start "$engine" "$root/$engine" >/dev/null
  done
  export STORMLOCK_TEST_REDIS_URL; STORMLOCK_TEST_REDIS_URL=$(url redis "$root/redis")
  export STORMLOCK_TEST_ETCD_ENDPOINT; STORMLOCK_TEST_ETCD_ENDPOINT=$(url etcd "$root/etcd")
  export STORMLOCK_TEST_POSTGRES_URL; STORMLOCK_TEST_POSTGRES_URL=$(url postgres "$root/postgres")
  export STORMLOCK_TEST_MYSQL_URL; STORMLOCK_TEST_MYSQL_URL=$(url mysql "$root/mysql")
  export STORMLOCK_TEST_DYNAMODB_ENDPOINT; STORMLOCK_TEST_DYNAMODB_ENDPOINT=$(url dynamodb "$root/dynamodb")
  export STORMLOCK_TEST_REQUIRE_ENGINES=1
  echo "engines.sh: all engines up under $root" >&2
  local code=0
  "$@" || code=$?
  return "$code"
}

case ${1:-} in
  start) [[ $# -eq 3 ]] || die "usage: start ENGINE DIR"; start "$2" "$3" ;;
  stop) [[ $# -eq 2 ]] || die "usage: stop DIR"; stop "$2" ;;
  url) [[ $# -eq 3 ]] || die "usage: url ENGINE DIR"; url "$2" "$3" ;;
  run) shift; [[ $# -ge 1 ]] || die "usage: run CMD [ARGS...]"; run "$@" ;;
  *) die "usage: $0 start ENGINE DIR | stop DIR | url ENGINE DIR | run CMD [ARGS...]" ;;
esac
