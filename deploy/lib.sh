# Shared helpers of deploy/test.sh and deploy/quickstart.sh. Source it; it changes no options.
#
# gh_ensure_pg_bins  sets PG_BINDIR to a directory with initdb, pg_ctl, psql (installing Debian's
#                    `postgresql` package when missing and possible), or exits 1 saying what to install.
# gh_pg_run CMD...   runs CMD as the `postgres` OS user when we are root (initdb and postgres refuse
#                    to run as root), else as ourselves.
# gh_pg_can_use DIR  true if the user gh_pg_run runs as may write into DIR.
# gh_pg_running DATADIR  true if the server of DATADIR runs (and it is really ours).
# gh_path_hash PATH  a short stable hash of PATH (the same as the test harness's).
# gh_log_tail FILE   prints the last lines of FILE to stderr.
# gh_running_pid, gh_stop_pid, gh_http_code, gh_json_field: see below.

GH_INSTALL_HINT="install Debian's \`postgresql\` package (\`apt-get install postgresql\`)"

# The search the test harness does too: PATH, then /usr/lib/postgresql/<highest version>/bin.
gh_find_pg_bindir() {
    local pg_ctl dir
    if command -v initdb >/dev/null 2>&1 && pg_ctl=$(command -v pg_ctl 2>/dev/null); then
        # Resolve symlinks (/usr/local/bin/pg_ctl -> /usr/lib/postgresql/15/bin/pg_ctl) to find
        # psql and createdb beside it.
        dir=$(dirname "$(readlink -f "$pg_ctl")")
        if [ -x "$dir/initdb" ]; then
            echo "$dir"
            return 0
        fi
    fi
    for dir in $(printf '%s\n' /usr/lib/postgresql/*/bin | sort -t/ -k5,5nr); do
        if [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ]; then
            echo "$dir"
            return 0
        fi
    done
    return 1
}

gh_ensure_pg_bins() {
    if PG_BINDIR=$(gh_find_pg_bindir); then
        gh_check_pg_user
        return 0
    fi
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        echo "PostgreSQL server binaries not found: installing Debian's postgresql package"
        apt-get update
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql
        # The package may start Debian's own cluster on port 5432; nothing here uses it.
        if PG_BINDIR=$(gh_find_pg_bindir); then
            gh_check_pg_user
            return 0
        fi
    fi
    echo "error: PostgreSQL server binaries (initdb, pg_ctl) not found in PATH or /usr/lib/postgresql/*/bin." >&2
    echo "       $GH_INSTALL_HINT, or put the server binaries of another PostgreSQL (13 or newer) in PATH." >&2
    exit 1
}

# As root, the server runs as the `postgres` user, which Debian's package creates.
gh_check_pg_user() {
    if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
        echo "error: running as root, so PostgreSQL must run as the \`postgres\` OS user, which does not exist." >&2
        echo "       $GH_INSTALL_HINT, or create that user." >&2
        exit 1
    fi
}

gh_pg_run() {
    if [ "$(id -u)" = 0 ]; then
        # From /: the postgres user may not be allowed into our working directory.
        (cd / && runuser -u postgres -- "$@")
    else
        "$@"
    fi
}

gh_pg_can_use() {
    gh_pg_run test -w "$1" -a -x "$1"
}

gh_pg_running() {
    local pid
    pid=$(head -n 1 "$1/postmaster.pid" 2>/dev/null) || return 1
    # A pid file outlives a crash or a reboot, and its pid may since belong to another process,
    # which `pg_ctl stop` would signal: our postmaster has `-D DATADIR` in its command line.
    if [ -d /proc/self ] && ! tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$1"; then
        return 1
    fi
    gh_pg_run "$PG_BINDIR/pg_ctl" -D "$1" status >/dev/null 2>&1
}

gh_path_hash() {
    printf '%s' "$1" | sha256sum | cut -c1-16
}

gh_log_tail() {
    echo "--- last lines of $1:" >&2
    tail -n "${2:-30}" "$1" >&2 2>/dev/null || true
    echo "---" >&2
}

# gh_running_pid PIDFILE NAME   prints the pid in PIDFILE if that process runs and its command
#                               line contains NAME (a recycled pid belongs to something else).
gh_running_pid() {
    local pid
    pid=$(cat "$1" 2>/dev/null) || return 1
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
    if [ -r "/proc/$pid/cmdline" ] && ! tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$2"; then
        return 1
    fi
    echo "$pid"
}

# gh_stop_pid PID WHAT   SIGTERM, then SIGKILL if PID has not exited within 10 s.
gh_stop_pid() {
    kill -TERM "$1" 2>/dev/null || return 0
    for _ in $(seq 100); do
        kill -0 "$1" 2>/dev/null || return 0
        sleep 0.1
    done
    echo "$2 (pid $1) did not exit within 10 s of SIGTERM: killing it"
    kill -KILL "$1" 2>/dev/null || true
}

# gh_http_code URL   prints the HTTP status code of GET URL (000 when nothing answers).
gh_http_code() {
    curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$1" 2>/dev/null || true
}

# gh_json_field JSON KEY   prints the first scalar value of "KEY" in JSON (no jq needed; for
#                          the flat fields of status documents).
gh_json_field() {
    printf '%s' "$1" | grep -o "\"$2\":[^,}]*" | head -n 1 | cut -d: -f2- | tr -d '"'
}
