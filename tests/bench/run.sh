#!/usr/bin/env bash
# The benchmarks of tests/benches/: release binaries, real PostgreSQL, real processes.
#
#   tests/bench/run.sh [propagation|snapshot]...     the config-propagation benchmark
#                                                   (tests/benches/propagation.rs); default: both parts
#   tests/bench/run.sh proxy [keepalive|latency|handshake|routes|upstream-tls|mtls]...
#                                                   the proxy benchmark (tests/benches/proxy.rs): the
#                                                   data plane side by side with nginx; default: all parts
#
# Propagation settings (environment): GATEHOUSE_BENCH_DPS (default 2,5,20), GATEHOUSE_BENCH_CHANGES
# (200), GATEHOUSE_BENCH_PAUSE_MS (250), GATEHOUSE_BENCH_SIZES (10,1000,10000).
# Proxy settings: GATEHOUSE_BENCH_DURATION (15 s per run), GATEHOUSE_BENCH_WARMUP (5),
# GATEHOUSE_BENCH_RUNS (3), GATEHOUSE_BENCH_LATENCY_DURATION (20), GATEHOUSE_BENCH_STEP (5),
# GATEHOUSE_BENCH_HANDSHAKE_START (1000), GATEHOUSE_BENCH_CONNECTIONS (64), GATEHOUSE_BENCH_ROUTES
# (10000), GATEHOUSE_BENCH_HANDSHAKE_CLIENT (rustls or h2load); GATEHOUSE_BENCH_QUICK=1 for a
# short smoke run. It needs nginx, wrk, h2load, curl and taskset (oha for the latency part), and
# 2 CPUs: the proxy on CPU 0, the load on CPU 1. See each benchmark's header. PostgreSQL: the test harness's private cluster (or
# GATEHOUSE_TEST_DATABASE_URL).
#
# Output: the result tables on stdout and in target/bench/<benchmark>-<time>.md, with the machine
# notes; the processes' logs and each run's numbers in target/bench/<benchmark>-<time>.log. Run it
# on an idle machine: nothing else should build or test meanwhile (the script warns when the load
# is high).
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=deploy/lib.sh
. deploy/lib.sh

bench=propagation
if [ "${1:-}" = proxy ]; then
    bench=proxy
    shift
fi

if [ -z "${GATEHOUSE_TEST_DATABASE_URL:-}" ]; then
    gh_ensure_pg_bins
fi
if [ "$bench" = proxy ]; then
    for tool in taskset nginx wrk h2load curl; do
        var=GATEHOUSE_BENCH_$(echo "$tool" | tr '[:lower:]' '[:upper:]')
        if [ -z "${!var:-}" ] && ! command -v "$tool" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$tool" ]; then
            echo "error: $tool not found (install it, or set $var to its path)" >&2
            exit 1
        fi
    done
    if [ "$(nproc)" -lt 2 ]; then
        echo "error: the proxy benchmark needs 2 CPUs (proxy on CPU 0, load on CPU 1)" >&2
        exit 1
    fi
    oha=${GATEHOUSE_BENCH_OHA:-$(command -v oha || echo "$HOME/.cargo/bin/oha")}
    if [ ! -x "$oha" ]; then
        echo "warning: oha not found: the latency part is skipped (cargo install oha --locked)" >&2
    fi
    # Many connections per second: more descriptors than the default 1024 if allowed.
    ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
fi

echo "==> cargo build --release --bins"
cargo build --release --bins
echo "==> cargo bench --no-run (the benchmark itself, release profile)"
cargo bench -p gatehouse-tests --bench "$bench" --no-run

target=$(cargo metadata --no-deps --format-version 1 2>/dev/null |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p') || true
out_dir=${target:-target}/bench
mkdir -p "$out_dir"
stamp=$(date -u +%Y%m%dT%H%M%SZ)
report=$out_dir/$bench-$stamp.md
log=$out_dir/$bench-$stamp.log

load=$(cut -d' ' -f1 /proc/loadavg)
if busy=$(pgrep -a 'cargo|rustc' | grep -v "bench/run.sh"); then
    echo "warning: other builds are running; the numbers will be noisy:" >&2
    echo "$busy" | cut -c1-120 >&2
fi
{
    if [ "$bench" = proxy ]; then
        echo "# Proxy benchmark, $stamp"
        echo
        settings=$(env | grep -E '^GATEHOUSE_BENCH_' | sort | tr '\n' ' ' | sed 's/ $//' || true)
        echo "- command: \`tests/bench/run.sh proxy $*\` (${settings:-default settings})"
    else
        echo "# Propagation benchmark, $stamp"
        echo
        echo "- command: \`tests/bench/run.sh $*\` (GATEHOUSE_BENCH_DPS=${GATEHOUSE_BENCH_DPS:-2,5,20}, GATEHOUSE_BENCH_CHANGES=${GATEHOUSE_BENCH_CHANGES:-200}, GATEHOUSE_BENCH_PAUSE_MS=${GATEHOUSE_BENCH_PAUSE_MS:-250}, GATEHOUSE_BENCH_SIZES=${GATEHOUSE_BENCH_SIZES:-10,1000,10000})"
    fi
    echo "- commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' + uncommitted changes')"
    echo "- machine: $(nproc) CPUs, $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -n 1), $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo), $(uname -sr)"
    echo "- load average at start: $load"
    echo "- rustc: $(rustc --version)"
    if [ "$bench" = proxy ]; then
        nginx_bin=${GATEHOUSE_BENCH_NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}
        echo "- tools: $("$nginx_bin" -v 2>&1 | sed 's/^nginx version: //'), $("${GATEHOUSE_BENCH_WRK:-wrk}" -v 2>&1 | head -n 1 | cut -d' ' -f1-2), $("${GATEHOUSE_BENCH_H2LOAD:-h2load}" --version 2>&1 | head -n 1), $("$oha" --version 2>/dev/null || echo 'oha: not installed'), $(openssl version | cut -d' ' -f1-2)"
        echo "- open files limit: $(ulimit -n)"
    fi
} | tee "$report"

echo "==> running (process logs: $log)"
cargo bench -q -p gatehouse-tests --bench "$bench" -- "$@" 2>"$log" | tee -a "$report"
echo
echo "report: $report"
