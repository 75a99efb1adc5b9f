#!/usr/bin/env bash
# Soak run of the fleet fault suite (tests/tests/fleet.rs) with the issue's full durations:
# a data plane cut off from both control planes for 30 s, PostgreSQL stopped for 30 s, and
# every other fault, under open-loop load, repeated ROUNDS times. Needs root and iproute2.
#
#   tests/soak/fleet.sh [ROUNDS]          default 3 rounds
#
# Environment: GATEHOUSE_FLEET_CUT_SECS (30), GATEHOUSE_FLEET_PG_DOWN_SECS (30),
# GATEHOUSE_FLEET_RATE (requests/s per data plane, 40), GATEHOUSE_FLEET_SLACK (factor on the
# issue's time bounds, 2). The `FLEET ...` lines of each round
# are the figures RELIABILITY.md quotes; the whole output goes to target/fleet-soak.log.
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:-3}
export GATEHOUSE_FLEET_CUT_SECS=${GATEHOUSE_FLEET_CUT_SECS:-30}
export GATEHOUSE_FLEET_PG_DOWN_SECS=${GATEHOUSE_FLEET_PG_DOWN_SECS:-30}
export GATEHOUSE_FLEET_RATE=${GATEHOUSE_FLEET_RATE:-40}
export GATEHOUSE_FLEET_SLACK=${GATEHOUSE_FLEET_SLACK:-2}
[ "$(id -u)" = 0 ] || { echo "the fleet suite needs root (network namespaces)" >&2; exit 1; }
command -v ip >/dev/null || { echo "install iproute2" >&2; exit 1; }
cargo build --workspace --bins
target=$(cargo metadata --no-deps --format-version 1 | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
log="${target:-target}/fleet-soak.log"
: >"$log"
for round in $(seq "$rounds"); do
    echo "==> round $round" >>"$log"
    echo "==> round $round of $rounds (cut ${GATEHOUSE_FLEET_CUT_SECS} s, PostgreSQL down ${GATEHOUSE_FLEET_PG_DOWN_SECS} s)"
    if ! cargo test -p gatehouse-tests --test fleet -- --nocapture >>"$log" 2>&1; then
        grep -E '^FLEET|panicked|Error' "$log" | tail -20
        echo "round $round FAILED; the whole output is in $log" >&2
        exit 1
    fi
done
grep -E '^FLEET' "$log"
echo "all $rounds rounds passed; output in $log"
