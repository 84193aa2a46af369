#!/usr/bin/env bash
# A team tracking server: MLflow on PostgreSQL (Debian's), artifacts proxied, bound to 127.0.0.1.
#
#   scripts/server.sh install   PostgreSQL from Debian's packages when it is missing (needs root)
#   scripts/server.sh start     initialise (once) and start PostgreSQL, create the database, start mlflow server
#   scripts/server.sh stop      stop mlflow server, then PostgreSQL (fast shutdown: clean, no recovery needed)
#   scripts/server.sh status    what is running, and the tracking URI to use
#
# Settings (environment):
#   SERVER_DIR     where everything lives (default <project>/.server, gitignored):
#                  pgdata/ (the database, PostgreSQL's log in pgdata/log/), artifacts/, mlflow.log, mlflow.pid
#   MLFLOW_PORT    the tracking server's port on 127.0.0.1 (default 5050; `make ui` keeps 5000)
#   PG_PORT        PostgreSQL's port number; it listens on no TCP address at all, only on a unix
#                  socket in pgdata/, so the number only names the socket (default 5433)
#   ARTIFACTS_DIR  where the server stores artifacts it proxies (default $SERVER_DIR/artifacts)
#   MLFLOW_WORKERS server worker processes (default 2)
#   MLFLOW         the mlflow executable (default <project>/.venv/bin/mlflow)
#
# As root, PostgreSQL runs as the `postgres` user (it refuses to run as root), so that user
# must be able to reach SERVER_DIR; as anyone else, it runs as you.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SERVER_DIR=${SERVER_DIR:-$ROOT/.server}
MLFLOW_PORT=${MLFLOW_PORT:-5050}
PG_PORT=${PG_PORT:-5433}
ARTIFACTS_DIR=${ARTIFACTS_DIR:-$SERVER_DIR/artifacts}
MLFLOW_WORKERS=${MLFLOW_WORKERS:-2}
MLFLOW=${MLFLOW:-$ROOT/.venv/bin/mlflow}
PGDATA=$SERVER_DIR/pgdata
PIDFILE=$SERVER_DIR/mlflow.pid
DB_USER=mlflow
DB_NAME=mlflow
READY_TIMEOUT_S=120

say() { echo "server: $*"; }
die() { echo "server: error: $*" >&2; exit 1; }

pg_bin() {
    # Debian keeps the server binaries off PATH, one folder per major version: take the newest.
    local dir
    dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    if [[ -n "$dir" && -x "$dir/initdb" ]]; then echo "$dir"; return; fi
    if command -v initdb >/dev/null; then dirname "$(command -v initdb)"; return; fi
    return 1
}

as_pg() {
    if [[ $(id -u) == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

pg_ctl_() { as_pg "$(pg_bin)/pg_ctl" -D "$PGDATA" "$@"; }

tracking_uri() { echo "http://127.0.0.1:$MLFLOW_PORT"; }

backend_uri() { echo "postgresql+psycopg2://$DB_USER@/$DB_NAME?host=$PGDATA&port=$PG_PORT"; }

install() {
    if pg_bin >/dev/null; then
        say "PostgreSQL found in $(pg_bin)"
        return
    fi
    [[ $(id -u) == 0 ]] || die "PostgreSQL is not installed: run 'sudo apt-get install -y postgresql' (or this script as root)"
    say "installing PostgreSQL from Debian's packages"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    # The package starts a default cluster where it can; this project runs its own, in SERVER_DIR.
    if command -v pg_lsclusters >/dev/null; then
        pg_lsclusters --no-header 2>/dev/null | while read -r version name _ status _; do
            if [[ $status == online ]]; then pg_ctlcluster "$version" "$name" stop || true; fi
        done
    fi
    say "PostgreSQL installed in $(pg_bin)"
}

init_db() {
    [[ -f $PGDATA/PG_VERSION ]] && return
    pg_bin >/dev/null || die "PostgreSQL is not installed: run 'scripts/server.sh install' (or make server)"
    mkdir -p "$SERVER_DIR"
    if [[ $(id -u) == 0 ]] && ! runuser -u postgres -- test -x "$SERVER_DIR"; then
        die "the postgres user cannot reach $SERVER_DIR (a folder above it is not searchable by others); set SERVER_DIR to a folder it can reach"
    fi
    local socket="$PGDATA/.s.PGSQL.$PG_PORT"
    (( ${#socket} < 100 )) || die "the socket path $socket is too long for a unix socket; set a shorter SERVER_DIR"
    mkdir -p "$PGDATA"
    chmod 700 "$PGDATA"
    [[ $(id -u) == 0 ]] && chown postgres: "$PGDATA"
    say "initialising PostgreSQL in $PGDATA"
    # Local (unix socket) connections only, trusted: the socket lives in pgdata/, which only its owner can enter.
    as_pg "$(pg_bin)/initdb" -D "$PGDATA" -U "$DB_USER" --auth-local=trust --auth-host=reject \
        --encoding=UTF8 --no-locale >/dev/null
}

start_pg() {
    if pg_ctl_ status >/dev/null 2>&1; then
        say "PostgreSQL already running ($PGDATA)"
    else
        as_pg mkdir -p "$PGDATA/log"
        pg_ctl_ -l "$PGDATA/log/postgres.log" -w -t 60 \
            -o "-c listen_addresses='' -c unix_socket_directories='$PGDATA' -p $PG_PORT" start >/dev/null \
            || die "PostgreSQL did not start; see $PGDATA/log/postgres.log"
        say "PostgreSQL started (unix socket in $PGDATA, port number $PG_PORT, no TCP)"
    fi
    local psql=("$(pg_bin)/psql" -h "$PGDATA" -p "$PG_PORT" -U "$DB_USER" -d postgres -tAq)
    if [[ $("${psql[@]}" -c "SELECT 1 FROM pg_database WHERE datname = '$DB_NAME'") != 1 ]]; then
        "${psql[@]}" -c "CREATE DATABASE $DB_NAME"
        say "database $DB_NAME created"
    fi
}

mlflow_pid() {
    [[ -f $PIDFILE ]] || return 1
    local pid
    pid=$(cat "$PIDFILE")
    kill -0 "$pid" 2>/dev/null || return 1
    echo "$pid"
}

healthy() { curl -fsS -o /dev/null --max-time 2 "$(tracking_uri)/health" 2>/dev/null; }

start_mlflow() {
    if mlflow_pid >/dev/null; then
        say "mlflow server already running (pid $(mlflow_pid)) at $(tracking_uri)"
        return
    fi
    [[ -x $MLFLOW ]] || die "$MLFLOW not found: run 'make setup' first (or set MLFLOW)"
    if healthy; then die "port $MLFLOW_PORT already answers on 127.0.0.1: stop that server or set MLFLOW_PORT"; fi
    mkdir -p "$ARTIFACTS_DIR"
    # Its own session, so that stop ends the server with all its workers.
    setsid "$MLFLOW" server --backend-store-uri "$(backend_uri)" --serve-artifacts \
        --artifacts-destination "$ARTIFACTS_DIR" --host 127.0.0.1 --port "$MLFLOW_PORT" \
        --workers "$MLFLOW_WORKERS" >"$SERVER_DIR/mlflow.log" 2>&1 </dev/null &
    echo $! >"$PIDFILE"
    local waited=0
    until healthy; do
        if ! mlflow_pid >/dev/null; then
            tail -n 30 "$SERVER_DIR/mlflow.log" >&2
            die "mlflow server exited; see $SERVER_DIR/mlflow.log"
        fi
        (( waited++ < READY_TIMEOUT_S * 2 )) || die "mlflow server not ready after ${READY_TIMEOUT_S}s; see $SERVER_DIR/mlflow.log"
        sleep 0.5
    done
    say "mlflow server ready at $(tracking_uri) (pid $(mlflow_pid), artifacts in $ARTIFACTS_DIR)"
    say "point a run at it: export MLFLOW_TRACKING_URI=$(tracking_uri)"
}

stop_mlflow() {
    local pid
    if ! pid=$(mlflow_pid); then
        rm -f "$PIDFILE"
        say "mlflow server not running"
        return
    fi
    kill -TERM -- "-$pid" 2>/dev/null || true
    for _ in $(seq 100); do
        kill -0 -- "-$pid" 2>/dev/null || break
        sleep 0.2
    done
    kill -KILL -- "-$pid" 2>/dev/null || true
    rm -f "$PIDFILE"
    say "mlflow server stopped"
}

stop_pg() {
    if [[ -f $PGDATA/PG_VERSION ]] && pg_bin >/dev/null && pg_ctl_ status >/dev/null 2>&1; then
        pg_ctl_ -m fast -w stop >/dev/null
        say "PostgreSQL stopped"
    else
        say "PostgreSQL not running"
    fi
}

status() {
    local rc=0
    if mlflow_pid >/dev/null && healthy; then
        say "mlflow server running (pid $(mlflow_pid)) at $(tracking_uri); artifacts in $ARTIFACTS_DIR"
    else
        say "mlflow server not running"; rc=1
    fi
    if [[ -f $PGDATA/PG_VERSION ]] && pg_bin >/dev/null && pg_ctl_ status >/dev/null 2>&1; then
        say "PostgreSQL running ($PGDATA)"
    else
        say "PostgreSQL not running"; rc=1
    fi
    return $rc
}

case "${1:-}" in
    install) install ;;
    start) init_db; start_pg; start_mlflow ;;
    stop) stop_mlflow; stop_pg ;;
    status) status ;;
    *) echo "usage: $0 install|start|stop|status" >&2; exit 2 ;;
esac
