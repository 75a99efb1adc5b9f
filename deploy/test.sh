#!/usr/bin/env bash
# The test command: formatting, lints, build, and every test of the workspace, against a real
# PostgreSQL. Run by CI (.ci/run) on a fresh Debian machine; run it locally the same way.
#
#   deploy/test.sh [ARGS...]   ARGS go to the test runner (cargo nextest run, else cargo test),
#                              e.g. `deploy/test.sh -p gatehouse-tests` or a test name filter.
#
# Without GATEHOUSE_TEST_DATABASE_URL the tests start a private PostgreSQL cluster (see
# tests/src/postgres.rs); this script makes sure the server binaries exist (installing Debian's
# `postgresql` package as root if needed) and stops that cluster when it ends.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=deploy/lib.sh
. deploy/lib.sh

section() { printf '\n==> %s\n' "$*"; }

# Stops the harness's private cluster. Its directory is <target>/gatehouse-test-pg, or
# /tmp/gatehouse-test-pg-<hash of the target dir> when the postgres user cannot reach the target dir.
stop_test_cluster() {
    local status=$? target dir
    target=$(cargo metadata --no-deps --format-version 1 2>/dev/null |
        sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p') || true
    target=${target:-$PWD/target}
    target=$(cd "$target" 2>/dev/null && pwd -P) || return "$status"
    for dir in "$target/gatehouse-test-pg" "/tmp/gatehouse-test-pg-$(gh_path_hash "$target")"; do
        if gh_pg_running "$dir/data"; then
            section "stopping the test PostgreSQL cluster in $dir"
            gh_pg_run "$PG_BINDIR/pg_ctl" -D "$dir/data" -m fast -w stop || true
        fi
    done
    return "$status"
}

# Schemathesis (PyPI) fuzzes the Admin API from its OpenAPI document (tests/tests/schemathesis.rs).
# It is installed into a virtualenv of its own (Debian's Python refuses `pip install` system-wide),
# and the test is told to fail rather than skip when `st` is missing.
SCHEMATHESIS_VERSION=4.32.5
ensure_schemathesis() {
    if command -v st >/dev/null 2>&1 && st --version 2>/dev/null | grep -qF "$SCHEMATHESIS_VERSION"; then
        echo "using $(command -v st) ($(st --version))"
        return
    fi
    local venv=${GATEHOUSE_ST_VENV:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/gatehouse/schemathesis-$SCHEMATHESIS_VERSION}
    if [ ! -x "$venv/bin/st" ]; then
        if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
            if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
                apt-get update
                DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
                    python3 python3-venv
            else
                echo "python3 with venv is needed for schemathesis (apt-get install python3-venv)" >&2
                exit 1
            fi
        fi
        rm -rf "$venv"
        python3 -m venv "$venv"
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
            "schemathesis==$SCHEMATHESIS_VERSION"
    fi
    export PATH="$venv/bin:$PATH"
    echo "using $venv/bin/st ($(st --version))"
}

section "schemathesis $SCHEMATHESIS_VERSION"
ensure_schemathesis
export GATEHOUSE_REQUIRE_SCHEMATHESIS=1

if [ -n "${GATEHOUSE_TEST_DATABASE_URL:-}" ]; then
    section "PostgreSQL: using GATEHOUSE_TEST_DATABASE_URL"
else
    section "PostgreSQL server binaries"
    gh_ensure_pg_bins
    echo "using $PG_BINDIR"
    trap stop_test_cluster EXIT
fi

# The fleet fault suite (tests/tests/fleet.rs) runs every node in its own network namespace:
# it needs root and iproute2's `ip` (and `tc` for delay and loss). Without them it is skipped
# with a message; as root on Debian, install them.
if ! command -v ip >/dev/null 2>&1 || ! command -v tc >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        section "iproute2 (ip, tc) for the fleet fault suite"
        apt-get update
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends iproute2
    else
        echo "note: iproute2 (ip, tc) missing and not root: the fleet fault suite will be skipped"
    fi
fi

# The ACME tests (tests/tests/acme.rs) run Debian's `pebble` ACME test server and its
# `pebble-challtestsrv` DNS server as real processes; they fail (not skip) when these are
# missing, so install them as root on Debian.
if ! command -v pebble >/dev/null 2>&1 || ! command -v pebble-challtestsrv >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        section "pebble (ACME test server) for the ACME tests"
        apt-get update
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends pebble
    else
        echo "pebble and pebble-challtestsrv are needed for the ACME tests (apt-get install pebble)" >&2
        exit 1
    fi
fi

# The RFC 2136 client (control-plane/src/dns_update.rs) is tested against a real BIND: `named`
# from Debian's bind9 and `dig` from bind9-dnsutils. As root on Debian, install them; the test
# is then told to fail rather than skip when they are missing.
if ! { command -v named || [ -x /usr/sbin/named ]; } >/dev/null 2>&1 || ! command -v dig >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        section "bind9 (named, dig) for the DNS update tests"
        apt-get update
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends bind9 bind9-dnsutils
        export GATEHOUSE_REQUIRE_BIND9=1
    else
        echo "note: bind9 (named, dig) missing and not root: the BIND test will be skipped"
    fi
else
    export GATEHOUSE_REQUIRE_BIND9=1
fi

# The metrics test (tests/tests/metrics.rs) scrapes a control plane and two data planes with a
# real Prometheus server (Debian's `prometheus`) and queries its HTTP API; it fails (not skips)
# when the server is missing, so install it as root on Debian. The package's own service is not
# used: the test starts its own server on free ports with a temporary storage directory.
if ! command -v prometheus >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        section "prometheus for the metrics test"
        apt-get update
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus
    else
        echo "prometheus is needed for the metrics test (apt-get install prometheus)" >&2
        exit 1
    fi
fi

# OCSP stapling (tests/tests/ocsp_stapling.rs) runs `openssl ocsp` as the responder and
# `openssl s_client -status` as the client (also used by other TLS tests): install the
# `openssl` command as root on Debian when it is missing.
if ! command -v openssl >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        section "openssl (command) for the OCSP stapling and TLS tests"
        apt-get update
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends openssl
    else
        echo "the openssl command is needed for the OCSP stapling test (apt-get install openssl)" >&2
        exit 1
    fi
fi

# Deployment artefacts (tests/tests/deploy_artifacts.rs): `systemd-analyze verify` checks the
# systemd units (Debian `systemd`), `kubectl kustomize` renders the Kubernetes overlays (Debian
# `kubernetes-client` when no kubectl is installed), and kubernetes-validate (PyPI, with the
# Kubernetes schemas bundled: offline) validates them; a missing tool then fails the test.
KUBERNETES_VALIDATE_VERSION=1.37.0
ensure_deploy_tools() {
    local missing=()
    command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
    command -v kubectl >/dev/null 2>&1 || missing+=(kubernetes-client)
    if [ ${#missing[@]} -gt 0 ]; then
        if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
            apt-get update
            DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
        else
            echo "note: ${missing[*]} missing and not root: the deployment tests skip those checks"
            return
        fi
    fi
    local venv=${GATEHOUSE_KV_VENV:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/gatehouse/kubernetes-validate-$KUBERNETES_VALIDATE_VERSION}
    if [ ! -x "$venv/bin/kubernetes-validate" ]; then
        rm -rf "$venv"
        python3 -m venv "$venv"
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
            "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
    fi
    export GATEHOUSE_KV_VENV=$venv GATEHOUSE_REQUIRE_DEPLOY_TOOLS=1
    echo "using $(command -v systemd-analyze), $(command -v kubectl), $venv/bin/kubernetes-validate"
}
section "deployment tools (systemd-analyze, kubectl, kubernetes-validate $KUBERNETES_VALIDATE_VERSION)"
ensure_deploy_tools


section "cargo fmt --check"
cargo fmt --all -- --check

section "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

section "cargo build (binaries the tests spawn)"
cargo build --workspace --bins

if cargo nextest --version >/dev/null 2>&1; then
    section "cargo nextest run"
    cargo nextest run --workspace "$@"
    if [ $# -eq 0 ]; then
        # nextest does not run doctests.
        section "cargo test --doc"
        cargo test --workspace --doc
    fi
else
    section "cargo test (cargo-nextest not installed)"
    cargo test --workspace "$@"
fi

section "all checks passed"
