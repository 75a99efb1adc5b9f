#!/usr/bin/env bash
# A local Gatehouse for trying it out: a private PostgreSQL and a control plane, in the background.
#
#   deploy/quickstart.sh [up]   start what is not running yet (running it twice starts nothing twice)
#   deploy/quickstart.sh down   stop the control plane and the private PostgreSQL (data is kept)
#   deploy/quickstart.sh status show what runs
#
# Settings (environment):
#   GATEHOUSE_DATABASE_URL   use this database instead of a private PostgreSQL
#   GATEHOUSE_PG_PORT        port of the private PostgreSQL (default 54329, on 127.0.0.1 only)
#   GATEHOUSE_ADMIN_LISTEN   Admin API address (default 127.0.0.1:8001)
#   GATEHOUSE_QUICKSTART_PG_ONLY=1   `up` starts only PostgreSQL and creates the database
#
# State lives in .gatehouse/ in the checkout: pg/ (PostgreSQL data directory, log in
# pg/server.log), cp.log, cp.pid. When running as root, PostgreSQL runs as the `postgres` OS user;
# if that user cannot reach the checkout, the data directory is
# /var/tmp/gatehouse-pg-<hash of the checkout path> instead. The private PostgreSQL trusts every
# local connection on 127.0.0.1 (no password): it is for trying Gatehouse out, not for production.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd -P)
# shellcheck source=deploy/lib.sh
. deploy/lib.sh

STATE=$ROOT/.gatehouse
PG_PORT=${GATEHOUSE_PG_PORT:-54329}
ADMIN_LISTEN=${GATEHOUSE_ADMIN_LISTEN:-127.0.0.1:8001}
CP_PID=$STATE/cp.pid
CP_LOG=$STATE/cp.log
PG_FALLBACK=/var/tmp/gatehouse-pg-$(gh_path_hash "$ROOT")

section() { printf '==> %s\n' "$*"; }

# --- PostgreSQL -------------------------------------------------------------------------------

# The data directory in use, if one was created.
pg_existing_datadir() {
    local dir
    for dir in "$STATE/pg" "$PG_FALLBACK"; do
        if [ -f "$dir/PG_VERSION" ]; then
            echo "$dir"
            return 0
        fi
    done
    return 1
}

# Creates an empty data directory the server's user may use, and prints it.
pg_new_datadir() {
    local dir
    for dir in "$STATE/pg" "$PG_FALLBACK"; do
        mkdir -p "$dir"
        if [ "$(id -u)" = 0 ]; then
            chown postgres: "$dir"
        fi
        chmod 700 "$dir"
        if gh_pg_can_use "$dir"; then
            echo "$dir"
            return 0
        fi
        rmdir "$dir" 2>/dev/null || true
    done
    echo "error: the postgres OS user can use neither $STATE/pg nor $PG_FALLBACK" >&2
    exit 1
}


pg_port() { # DATADIR: the port of the running server (line 4 of postmaster.pid)
    sed -n 4p "$1/postmaster.pid"
}

pg_up() {
    local datadir port psql
    gh_ensure_pg_bins
    if ! datadir=$(pg_existing_datadir); then
        datadir=$(pg_new_datadir)
        section "creating a PostgreSQL cluster in $datadir"
        if ! gh_pg_run "$PG_BINDIR/initdb" -D "$datadir" -A trust -U postgres \
            --locale=C --encoding=UTF8 >"$STATE/initdb.log" 2>&1; then
            gh_log_tail "$STATE/initdb.log"
            # Leave no half-made cluster behind: the next `up` starts afresh.
            rm -rf "${datadir:?}"/*
            exit 1
        fi
    fi
    if gh_pg_running "$datadir"; then
        port=$(pg_port "$datadir")
        section "PostgreSQL already running on 127.0.0.1:$port"
    else
        port=$PG_PORT
        section "starting PostgreSQL on 127.0.0.1:$port"
        # Left by a crash or a reboot (gh_pg_running checked it is not ours); its pid, if now
        # another process's, would stop the server from starting.
        rm -f "$datadir/postmaster.pid"
        # TCP only (-k ''): no socket path length limits, no /var/run/postgresql needed.
        if ! gh_pg_run "$PG_BINDIR/pg_ctl" -D "$datadir" -w -t 60 -l "$datadir/server.log" \
            -o "-p $port -k '' -c listen_addresses=127.0.0.1" start >/dev/null; then
            gh_log_tail "$datadir/server.log"
            echo "error: PostgreSQL did not start (port $port taken? set GATEHOUSE_PG_PORT)" >&2
            exit 1
        fi
    fi
    psql=$PG_BINDIR/psql
    [ -x "$psql" ] || psql=psql
    psql=("$psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d postgres)
    if [ "$("${psql[@]}" -tAc "SELECT 1 FROM pg_database WHERE datname = 'gatehouse'")" != 1 ]; then
        section "creating database gatehouse"
        "${psql[@]}" -c "CREATE DATABASE gatehouse"
    fi
    DATABASE_URL=postgres://postgres@127.0.0.1:$port/gatehouse
    PG_SUMMARY="$DATABASE_URL  (data: $datadir, log: $datadir/server.log)"
}

pg_down() {
    local datadir
    datadir=$(pg_existing_datadir) || return 0
    PG_BINDIR=$(gh_find_pg_bindir) || return 0
    if gh_pg_running "$datadir"; then
        section "stopping PostgreSQL ($datadir)"
        gh_pg_run "$PG_BINDIR/pg_ctl" -D "$datadir" -m fast -w stop >/dev/null
    fi
}

pg_status() {
    local datadir
    if [ -n "${GATEHOUSE_DATABASE_URL:-}" ]; then
        echo "PostgreSQL:    external, GATEHOUSE_DATABASE_URL"
    fi
    if ! datadir=$(pg_existing_datadir); then
        echo "PostgreSQL:    no private cluster"
    elif PG_BINDIR=$(gh_find_pg_bindir) && gh_pg_running "$datadir"; then
        echo "PostgreSQL:    running, postgres://postgres@127.0.0.1:$(pg_port "$datadir")/gatehouse (data: $datadir)"
    else
        echo "PostgreSQL:    stopped (data: $datadir)"
    fi
}

# --- control plane ----------------------------------------------------------------------------

cp_running_pid() {
    local pid
    pid=$(cat "$CP_PID" 2>/dev/null) || return 1
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
    # A recycled pid belongs to something else.
    if [ -r "/proc/$pid/cmdline" ] && ! tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q gatehouse-cp; then
        return 1
    fi
    echo "$pid"
}

admin_url() { # LISTEN_ADDR
    local host=${1%:*} port=${1##*:}
    case "$host" in "" | 0.0.0.0 | "[::]") host=127.0.0.1 ;; esac
    echo "http://$host:$port"
}

cp_up() {
    local pid target bin url log_offset
    if pid=$(cp_running_pid); then
        url=$(admin_url "$(cat "$STATE/cp.admin" 2>/dev/null || echo "$ADMIN_LISTEN")")
        section "control plane already running (pid $pid)"
        CP_SUMMARY="$url  (log: $CP_LOG, pid $pid)"
        ADMIN_URL=$url
        return 0
    fi
    command -v curl >/dev/null 2>&1 || {
        echo "error: curl not found (apt-get install curl)" >&2
        exit 1
    }
    section "building (cargo build --release --bins)"
    cargo build --release --bins
    target=$(cargo metadata --no-deps --format-version 1 2>/dev/null |
        sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p') || true
    bin=${target:-$ROOT/target}/release/gatehouse-cp
    url=$(admin_url "$ADMIN_LISTEN")
    if curl -fsS -o /dev/null --max-time 2 "$url/status" 2>/dev/null; then
        echo "error: something else already answers on $url (another Gatehouse?); stop it or set GATEHOUSE_ADMIN_LISTEN" >&2
        exit 1
    fi
    section "starting the control plane (Admin API on $ADMIN_LISTEN)"
    touch "$CP_LOG"
    log_offset=$(($(wc -c <"$CP_LOG") + 1))
    nohup "$bin" serve --database-url "$DATABASE_URL" --admin-listen "$ADMIN_LISTEN" \
        >>"$CP_LOG" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$CP_PID"
    echo "$ADMIN_LISTEN" >"$STATE/cp.admin"
    for _ in $(seq 120); do
        # Our own process says it listens (not just anyone on that port), and it answers.
        if tail -c +"$log_offset" "$CP_LOG" | grep -q 'admin API listening' &&
            curl -fsS -o /dev/null --max-time 2 "$url/status" 2>/dev/null; then
            CP_SUMMARY="$url  (log: $CP_LOG, pid $pid)"
            ADMIN_URL=$url
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            rm -f "$CP_PID"
            gh_log_tail "$CP_LOG"
            echo "error: the control plane exited" >&2
            exit 1
        fi
        sleep 0.5
    done
    gh_log_tail "$CP_LOG"
    echo "error: $url/status did not answer within 60 s (the control plane, pid $pid, is left running;" >&2
    echo "       deploy/quickstart.sh down stops it)" >&2
    exit 1
}

cp_down() {
    local pid
    if pid=$(cp_running_pid); then
        section "stopping the control plane (pid $pid)"
        kill -TERM "$pid"
        for _ in $(seq 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            echo "it did not exit within 10 s of SIGTERM: killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    rm -f "$CP_PID"
}

cp_status() {
    local pid
    if pid=$(cp_running_pid); then
        echo "control plane: running, pid $pid, Admin API $(admin_url "$(cat "$STATE/cp.admin" 2>/dev/null || echo "$ADMIN_LISTEN")") (log: $CP_LOG)"
    else
        echo "control plane: stopped"
    fi
}

# --- commands ---------------------------------------------------------------------------------

up() {
    mkdir -p "$STATE"
    if [ -n "${GATEHOUSE_DATABASE_URL:-}" ]; then
        DATABASE_URL=$GATEHOUSE_DATABASE_URL
        PG_SUMMARY="GATEHOUSE_DATABASE_URL (external)"
    else
        pg_up
    fi
    if [ "${GATEHOUSE_QUICKSTART_PG_ONLY:-0}" = 1 ]; then
        echo
        echo "PostgreSQL:  $PG_SUMMARY"
        return 0
    fi
    cp_up
    cat <<EOT

Gatehouse is up.
  PostgreSQL:  $PG_SUMMARY
  Admin API:   $CP_SUMMARY

Try it:
  curl -i -X POST $ADMIN_URL/services -d name=example -d url=http://httpbin.org
  curl -i $ADMIN_URL/services

Stop everything: deploy/quickstart.sh down
EOT
}

case "${1:-up}" in
up) up ;;
down)
    cp_down
    pg_down
    ;;
status)
    cp_status
    pg_status
    ;;
-h | --help | help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' ;;
*)
    echo "usage: deploy/quickstart.sh [up|down|status]" >&2
    exit 64
    ;;
esac
