#!/usr/bin/env bash
# A local Gatehouse cluster for trying it out, in the background: a private PostgreSQL, the
# cluster PKI, one control plane and two data planes.
#
#   deploy/quickstart.sh [up]   start what is not running yet (running it twice starts nothing twice)
#   deploy/quickstart.sh down   stop the data planes, the control plane and the private PostgreSQL
#                               (data, PKI and data-plane caches are kept)
#   deploy/quickstart.sh status show what runs
#
# What runs (all on 127.0.0.1):
#   control plane  Admin API :8001, cluster listener :8005 (gRPC, mTLS pki), status :8100
#   data plane dp1 proxy :8000 (HTTP) :8443 (HTTPS), status :8101, cache .gatehouse/dp1
#   data plane dp2 proxy :9000 (HTTP) :9443 (HTTPS), status :9101, cache .gatehouse/dp2
#
# Settings (environment):
#   GATEHOUSE_DATABASE_URL   use this database instead of a private PostgreSQL
#   GATEHOUSE_PG_PORT        port of the private PostgreSQL (default 54329, on 127.0.0.1 only)
#   GATEHOUSE_ADMIN_LISTEN   Admin API address (default 127.0.0.1:8001)
#   GATEHOUSE_QUICKSTART_PG_ONLY=1   `up` starts only PostgreSQL and creates the database
#   GATEHOUSE_QUICKSTART_NO_DP=1     `up` starts no data plane
#   GATEHOUSE_QUICKSTART_ENROL=1     the control plane holds the CA key and each data plane enrols
#                                    with a single-use bootstrap token instead of using a
#                                    certificate from pki/ (set it when the control plane starts;
#                                    a data plane whose cache holds a certificate reuses it)
#
# State lives in .gatehouse/ in the checkout: pg/ (PostgreSQL data directory, log in
# pg/server.log), pki/ (cluster CA, CP and DP certificates, written once by
# `gatehouse-cp pki init`; keys are mode 0600), cp.log, cp.pid, dp1/ and dp2/ (data-plane caches:
# node id and last snapshot), dp1.log, dp1.pid, dp2.log, dp2.pid. When running as root,
# PostgreSQL runs as the `postgres` OS user; if that user cannot reach the checkout, the data
# directory is /var/tmp/gatehouse-pg-<hash of the checkout path> instead. The private PostgreSQL
# trusts every local connection on 127.0.0.1 (no password): it is for trying Gatehouse out, not
# for production.
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
PKI=$STATE/pki
CLUSTER_LISTEN=127.0.0.1:8005
CP_STATUS_LISTEN=127.0.0.1:8100
# Data planes: NAME STATUS_LISTEN (dp2 on the ports of dp1 + 1000).
DATA_PLANES=("dp1 127.0.0.1:8101" "dp2 127.0.0.1:9101")
# Proxy listeners of each data plane: HTTP and HTTPS.
declare -A DP_PROXY_LISTEN=([dp1]=127.0.0.1:8000 [dp2]=127.0.0.1:9000)
declare -A DP_PROXY_SSL_LISTEN=([dp1]=127.0.0.1:8443 [dp2]=127.0.0.1:9443)
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

# --- binaries and cluster PKI -----------------------------------------------------------------

# Builds the release binaries once per invocation and sets BIN_DIR.
build() {
    local target
    [ -n "${BIN_DIR:-}" ] && return 0
    section "building (cargo build --release --bins)"
    cargo build --release --bins
    target=$(cargo metadata --no-deps --format-version 1 2>/dev/null |
        sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p') || true
    BIN_DIR=${target:-$ROOT/target}/release
}

# Writes the cluster CA, the CP certificate and the dp1/dp2 certificates, once.
pki_up() {
    local args=() dp
    if [ -f "$PKI/ca.crt" ] && [ -f "$PKI/cp.crt" ]; then
        for dp in "${DATA_PLANES[@]}"; do
            dp=${dp%% *}
            if [ ! -f "$PKI/$dp.crt" ]; then
                build
                section "issuing a cluster certificate for $dp"
                "$BIN_DIR/gatehouse-cp" pki issue --ca-dir "$PKI" --dp "$dp" >/dev/null
            fi
        done
        return 0
    fi
    build
    for dp in "${DATA_PLANES[@]}"; do
        args+=(--dp "${dp%% *}")
    done
    section "writing the cluster PKI into $PKI"
    "$BIN_DIR/gatehouse-cp" pki init --out "$PKI" "${args[@]}" >/dev/null
}

# --- control plane ----------------------------------------------------------------------------

cp_running_pid() {
    gh_running_pid "$CP_PID" gatehouse-cp
}

admin_url() { # LISTEN_ADDR
    local host=${1%:*} port=${1##*:}
    case "$host" in "" | 0.0.0.0 | "[::]") host=127.0.0.1 ;; esac
    echo "http://$host:$port"
}

cp_up() {
    local pid url log_offset
    if pid=$(cp_running_pid); then
        url=$(admin_url "$(cat "$STATE/cp.admin" 2>/dev/null || echo "$ADMIN_LISTEN")")
        section "control plane already running (pid $pid)"
        if [ ! -f "$STATE/cp.cluster" ]; then
            echo "error: this control plane (pid $pid) was started without a cluster listener, by an" >&2
            echo "       older quickstart; restart it: deploy/quickstart.sh down && deploy/quickstart.sh" >&2
            exit 1
        fi
        CP_SUMMARY="Admin API $url, cluster $(cat "$STATE/cp.cluster") (mTLS pki), status http://$CP_STATUS_LISTEN/status  (log: $CP_LOG, pid $pid)"
        ADMIN_URL=$url
        return 0
    fi
    command -v curl >/dev/null 2>&1 || {
        echo "error: curl not found (apt-get install curl)" >&2
        exit 1
    }
    build
    url=$(admin_url "$ADMIN_LISTEN")
    if curl -fsS -o /dev/null --max-time 2 "$url/status" 2>/dev/null; then
        echo "error: something else already answers on $url (another Gatehouse?); stop it or set GATEHOUSE_ADMIN_LISTEN" >&2
        exit 1
    fi
    section "starting the control plane (Admin API on $ADMIN_LISTEN, cluster listener on $CLUSTER_LISTEN)"
    touch "$CP_LOG"
    log_offset=$(($(wc -c <"$CP_LOG") + 1))
    local enrol=()
    if [ "${GATEHOUSE_QUICKSTART_ENROL:-}" = 1 ]; then
        enrol=(--cluster-ca-key "$PKI/ca.key")
    fi
    nohup "$BIN_DIR/gatehouse-cp" serve --database-url "$DATABASE_URL" --admin-listen "$ADMIN_LISTEN" \
        --cluster-listen "$CLUSTER_LISTEN" --status-listen "$CP_STATUS_LISTEN" \
        --cluster-mtls pki --cluster-cert "$PKI/cp.crt" --cluster-cert-key "$PKI/cp.key" \
        --cluster-ca-cert "$PKI/ca.crt" "${enrol[@]}" \
        >>"$CP_LOG" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$CP_PID"
    echo "$ADMIN_LISTEN" >"$STATE/cp.admin"
    echo "$CLUSTER_LISTEN" >"$STATE/cp.cluster"
    for _ in $(seq 120); do
        # Our own process says it listens (not just anyone on that port), and it answers.
        if tail -c +"$log_offset" "$CP_LOG" | grep -q 'admin API listening' &&
            curl -fsS -o /dev/null --max-time 2 "$url/status" 2>/dev/null; then
            CP_SUMMARY="Admin API $url, cluster $CLUSTER_LISTEN (mTLS pki), status http://$CP_STATUS_LISTEN/status  (log: $CP_LOG, pid $pid)"
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
        gh_stop_pid "$pid" "the control plane"
    fi
    rm -f "$CP_PID" "$STATE/cp.cluster"
}

cp_status() {
    local pid
    if pid=$(cp_running_pid); then
        echo "control plane: running, pid $pid, Admin API $(admin_url "$(cat "$STATE/cp.admin" 2>/dev/null || echo "$ADMIN_LISTEN")"), cluster $(cat "$STATE/cp.cluster" 2>/dev/null || echo none) (log: $CP_LOG)"
    else
        echo "control plane: stopped"
    fi
}

# --- data planes ------------------------------------------------------------------------------

dp_running_pid() { # NAME
    gh_running_pid "$STATE/$1.pid" gatehouse-dp
}

# Starts data plane NAME with its status listener on STATUS_LISTEN, unless it runs.
dp_up() { # NAME STATUS_LISTEN
    local name=$1 status=$2 pid log_offset
    if pid=$(dp_running_pid "$name"); then
        section "data plane $name already running (pid $pid)"
        return 0
    fi
    build
    if [ "$(gh_http_code "http://$status/status")" != 000 ]; then
        echo "error: something else already answers on $status (another Gatehouse?); stop it first" >&2
        exit 1
    fi
    section "starting data plane $name (proxy on ${DP_PROXY_LISTEN[$name]} and ${DP_PROXY_SSL_LISTEN[$name]}, status on $status)"
    touch "$STATE/$name.log"
    log_offset=$(($(wc -c <"$STATE/$name.log") + 1))
    local identity=(--cluster-cert "$PKI/$name.crt" --cluster-cert-key "$PKI/$name.key") token=""
    if [ "${GATEHOUSE_QUICKSTART_ENROL:-}" = 1 ]; then
        identity=()
        # A single-use token, valid ten minutes, passed in the environment; unused when the
        # cache already holds a valid certificate.
        token=$("$BIN_DIR/gatehouse-cp" cluster-token create --database-url "$DATABASE_URL" \
            --uses 1 --ttl 600 --label "quickstart=$name" | grep -o '"token":"[^"]*"' | cut -d'"' -f4)
        if [ -z "$token" ]; then
            echo "error: cannot create a bootstrap token for $name" >&2
            exit 1
        fi
    fi
    GATEHOUSE_CLUSTER_BOOTSTRAP_TOKEN=$token nohup "$BIN_DIR/gatehouse-dp" \
        --cluster-control-plane "$(cat "$STATE/cp.cluster")" \
        --cluster-server-name localhost --cluster-mtls pki "${identity[@]}" \
        --cluster-ca-cert "$PKI/ca.crt" --cache-dir "$STATE/$name" --status-listen "$status" \
        --proxy-listen "${DP_PROXY_LISTEN[$name]}" --proxy-ssl-listen "${DP_PROXY_SSL_LISTEN[$name]}" \
        --label "quickstart=$name" \
        >>"$STATE/$name.log" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$STATE/$name.pid"
    for _ in $(seq 60); do
        if tail -c +"$log_offset" "$STATE/$name.log" | grep -q 'status listener listening'; then
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            rm -f "$STATE/$name.pid"
            gh_log_tail "$STATE/$name.log"
            echo "error: data plane $name exited" >&2
            exit 1
        fi
        sleep 0.5
    done
    gh_log_tail "$STATE/$name.log"
    echo "error: data plane $name did not open its status listener within 30 s (pid $pid is left" >&2
    echo "       running; deploy/quickstart.sh down stops it)" >&2
    exit 1
}

# One line about data plane NAME: ready / connected / not connected, and its config version.
dp_state() { # NAME STATUS_LISTEN
    local body version connected
    if [ "$(gh_http_code "http://$2/status/ready")" = 200 ]; then
        body=$(curl -s --max-time 2 "http://$2/status" 2>/dev/null || true)
        version=$(gh_json_field "$body" config_version)
        echo "ready, config version ${version:-?}"
        return 0
    fi
    body=$(curl -s --max-time 2 "http://$2/status" 2>/dev/null || true)
    connected=$(gh_json_field "$body" connected)
    if [ "$connected" = true ]; then
        echo "connected, no configuration yet"
    elif [ -n "$body" ]; then
        echo "not connected to the control plane: $(gh_json_field "$body" last_error)"
    else
        echo "not answering"
    fi
}

# Waits until every data plane is ready (or at least connected) and fills DP_SUMMARY.
dps_wait() {
    local entry name status state pid
    DP_SUMMARY=""
    for entry in "${DATA_PLANES[@]}"; do
        name=${entry%% *}
        status=${entry#* }
        state=$(dp_state "$name" "$status")
        for _ in $(seq 60); do
            case "$state" in ready*) break ;; esac
            sleep 0.5
            state=$(dp_state "$name" "$status")
        done
        case "$state" in
        ready* | connected*) ;;
        *)
            gh_log_tail "$STATE/$name.log"
            echo "error: data plane $name: $state (deploy/quickstart.sh down stops everything)" >&2
            exit 1
            ;;
        esac
        pid=$(dp_running_pid "$name" || echo "?")
        DP_SUMMARY+="  Data plane $name: proxy http://${DP_PROXY_LISTEN[$name]} https://${DP_PROXY_SSL_LISTEN[$name]},"
        DP_SUMMARY+=" status http://$status/status, $state"
        DP_SUMMARY+="  (cache: $STATE/$name, log: $STATE/$name.log, pid $pid)"$'\n'
    done
}

dps_down() {
    local entry name pid
    for entry in "${DATA_PLANES[@]}"; do
        name=${entry%% *}
        if pid=$(dp_running_pid "$name"); then
            section "stopping data plane $name (pid $pid)"
            gh_stop_pid "$pid" "data plane $name"
        fi
        rm -f "$STATE/$name.pid"
    done
}

dps_status() {
    local entry name status pid
    for entry in "${DATA_PLANES[@]}"; do
        name=${entry%% *}
        status=${entry#* }
        if pid=$(dp_running_pid "$name"); then
            echo "data plane $name: running, pid $pid, status http://$status/status, $(dp_state "$name" "$status") (log: $STATE/$name.log)"
        else
            echo "data plane $name: stopped"
        fi
    done
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
    pki_up
    cp_up
    DP_SUMMARY=""
    if [ "${GATEHOUSE_QUICKSTART_NO_DP:-0}" != 1 ]; then
        for entry in "${DATA_PLANES[@]}"; do
            dp_up "${entry%% *}" "${entry#* }"
        done
        dps_wait
    fi
    cat <<EOT

Gatehouse is up.
  PostgreSQL:     $PG_SUMMARY
  Control plane:  $CP_SUMMARY
${DP_SUMMARY}  Cluster PKI:    $PKI (CA, control-plane and data-plane certificates)

Try it:
  curl -i -X POST $ADMIN_URL/services -d name=example -d url=http://httpbin.org
  curl -i -X POST $ADMIN_URL/services/example/routes -d paths[]=/example
  curl -i http://${DP_PROXY_LISTEN[dp1]}/example/get      # through data plane dp1 (dp2: ${DP_PROXY_LISTEN[dp2]})
  curl -s $ADMIN_URL/clustering/data-planes     # both data planes, their config version and hash
  curl -s http://${DATA_PLANES[0]#* }/status              # the data plane follows every write

The Admin API listens on loopback without authentication. To expose it, create a token and
restart the control plane with authentication (and TLS) on:
  $BIN_DIR/gatehouse-cp admin-token create --database-url $DATABASE_URL --name me --role read-write
  gatehouse-cp serve ... --admin-listen 0.0.0.0:8001 --admin-auth on --admin-ssl-cert CERT --admin-ssl-cert-key KEY
  curl -H "Authorization: Bearer <token>" https://HOST:8001/status     (README: "Admin API access")

Stop everything: deploy/quickstart.sh down
EOT
}

case "${1:-up}" in
up) up ;;
down)
    dps_down
    cp_down
    pg_down
    ;;
status)
    dps_status
    cp_status
    pg_status
    ;;
-h | --help | help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' ;;
*)
    echo "usage: deploy/quickstart.sh [up|down|status]" >&2
    exit 64
    ;;
esac
