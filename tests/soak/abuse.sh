#!/usr/bin/env bash
# The full-size client-abuse run of tests/tests/proxy_abuse.rs against one data plane: 1,000
# slowloris connections, 10,000 idle keep-alive connections, and each one-shot abuse (oversized
# heads, smuggling, garbage ClientHello, HTTP/2 rapid reset and CONTINUATION flood) repeated for
# GATEHOUSE_ABUSE_PHASE_SECS while a well-behaved client keeps requesting. Prints the
# well-behaved client's p50/p99 per abuse and the DP's RSS (see RELIABILITY.md, "Client abuse
# (one data plane)").
#
#   tests/soak/abuse.sh                 release build
#   PROFILE=debug tests/soak/abuse.sh   debug build (what the CI test uses)
#
# Settings (environment): GATEHOUSE_ABUSE_SLOWLORIS (1000), GATEHOUSE_ABUSE_IDLE (10000),
# GATEHOUSE_ABUSE_PHASE_SECS (10), GATEHOUSE_ABUSE_HEADER_TIMEOUT (60s: the idle connections
# must all be open at once before it ends them). The test process and the DP each need about
# idle + slowloris + 1,000 open files (`ulimit -n`), raised here when the hard limit allows.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=deploy/lib.sh
. deploy/lib.sh

export GATEHOUSE_ABUSE_SLOWLORIS=${GATEHOUSE_ABUSE_SLOWLORIS:-1000}
export GATEHOUSE_ABUSE_IDLE=${GATEHOUSE_ABUSE_IDLE:-10000}
export GATEHOUSE_ABUSE_PHASE_SECS=${GATEHOUSE_ABUSE_PHASE_SECS:-10}
export GATEHOUSE_ABUSE_HEADER_TIMEOUT=${GATEHOUSE_ABUSE_HEADER_TIMEOUT:-60s}
export GATEHOUSE_TEST_PATIENCE_SECS=${GATEHOUSE_TEST_PATIENCE_SECS:-180}

need=$((GATEHOUSE_ABUSE_IDLE + GATEHOUSE_ABUSE_SLOWLORIS + 1000))
if [ "$(ulimit -n)" -lt "$need" ]; then
    ulimit -n "$need" 2>/dev/null || {
        echo "ulimit -n is $(ulimit -n), the run needs $need (raise the hard limit)" >&2
        exit 1
    }
fi
if [ -z "${GATEHOUSE_TEST_DATABASE_URL:-}" ]; then
    gh_ensure_pg_bins
fi

profile=()
if [ "${PROFILE:-release}" = release ]; then
    profile=(--release)
fi
cargo build "${profile[@]}" --workspace --bins
cargo test "${profile[@]}" -p gatehouse-tests --test proxy_abuse -- --nocapture 2>&1 |
    grep -E '^(DP |during |rapid reset|[0-9]+ idle|test |Error|Caused)' 
