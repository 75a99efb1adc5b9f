#!/usr/bin/env bash
# The config-propagation benchmark (tests/benches/propagation.rs): release binaries, real
# PostgreSQL, one control plane and N data planes on loopback with cluster mTLS.
#
#   tests/bench/run.sh [propagation|snapshot]   default: both parts
#
# Settings (environment): GATEHOUSE_BENCH_DPS (default 2,5,20), GATEHOUSE_BENCH_CHANGES (200),
# GATEHOUSE_BENCH_PAUSE_MS (250), GATEHOUSE_BENCH_SIZES (10,1000,10000); see the benchmark's
# header. PostgreSQL: the test harness's private cluster (or GATEHOUSE_TEST_DATABASE_URL).
#
# Output: the result tables on stdout and in target/bench/propagation-<time>.md, with the machine
# notes; the processes' logs in target/bench/propagation-<time>.log. Run it on an idle machine:
# nothing else should build or test meanwhile (the script warns when the load is high).
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=deploy/lib.sh
. deploy/lib.sh

if [ -z "${GATEHOUSE_TEST_DATABASE_URL:-}" ]; then
    gh_ensure_pg_bins
fi

echo "==> cargo build --release --bins"
cargo build --release --bins
echo "==> cargo bench --no-run (the benchmark itself, release profile)"
cargo bench -p gatehouse-tests --bench propagation --no-run

target=$(cargo metadata --no-deps --format-version 1 2>/dev/null |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p') || true
out_dir=${target:-target}/bench
mkdir -p "$out_dir"
stamp=$(date -u +%Y%m%dT%H%M%SZ)
report=$out_dir/propagation-$stamp.md
log=$out_dir/propagation-$stamp.log

load=$(cut -d' ' -f1 /proc/loadavg)
if busy=$(pgrep -a 'cargo|rustc' | grep -v "bench/run.sh"); then
    echo "warning: other builds are running; the numbers will be noisy:" >&2
    echo "$busy" | cut -c1-120 >&2
fi
{
    echo "# Propagation benchmark, $stamp"
    echo
    echo "- command: \`tests/bench/run.sh $*\` (GATEHOUSE_BENCH_DPS=${GATEHOUSE_BENCH_DPS:-2,5,20}, GATEHOUSE_BENCH_CHANGES=${GATEHOUSE_BENCH_CHANGES:-200}, GATEHOUSE_BENCH_PAUSE_MS=${GATEHOUSE_BENCH_PAUSE_MS:-250}, GATEHOUSE_BENCH_SIZES=${GATEHOUSE_BENCH_SIZES:-10,1000,10000})"
    echo "- commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' + uncommitted changes')"
    echo "- machine: $(nproc) CPUs, $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -n 1), $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo), $(uname -sr)"
    echo "- load average at start: $load"
    echo "- rustc: $(rustc --version)"
} | tee "$report"

echo "==> running (process logs: $log)"
cargo bench -q -p gatehouse-tests --bench propagation -- "$@" 2>"$log" | tee -a "$report"
echo
echo "report: $report"
