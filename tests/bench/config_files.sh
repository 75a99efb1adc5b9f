#!/usr/bin/env bash
# Times `gatehouse-cp config import` and `config export` on a generated declarative file:
# 1000 services with a route each, 500 consumers with an ACL each (3000 entities).
#
#   tests/bench/config_files.sh DATABASE_URL [GATEHOUSE_CP_BINARY]
#
# The database must be empty (or a throwaway one): the import replaces its configuration.
set -euo pipefail
db=${1:?usage: $0 DATABASE_URL [gatehouse-cp binary]}
bin=${2:-target/release/gatehouse-cp}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 - "$work" <<'PY'
import json, sys
out = sys.argv[1]
services = [{"name": f"svc-{i}", "host": f"h{i}.internal", "port": 8080, "tags": ["bench"],
             "routes": [{"name": f"r-{i}", "paths": [f"/p{i}"]}]} for i in range(1000)]
consumers = [{"username": f"user-{i}", "acls": [{"group": "g"}]} for i in range(500)]
json.dump({"_format_version": "3.0", "services": services, "consumers": consumers},
          open(f"{out}/config.json", "w"))
services[0]["host"] = "changed.internal"
json.dump({"_format_version": "3.0", "services": services, "consumers": consumers},
          open(f"{out}/one-change.json", "w"))
PY
"$bin" migrate --database-url "$db" --log-level warn
t() { /usr/bin/time -f "  %e s wall, %U s user CPU" "$@"; }
echo "import into an empty database (3000 creates):"
t "$bin" config import "$work/config.json" --database-url "$db" --log-level warn | tail -n1
echo "the same file again (nothing changes):"
t "$bin" config import "$work/config.json" --database-url "$db" --log-level warn | tail -n1
echo "one service changed:"
t "$bin" config import "$work/one-change.json" --database-url "$db" --log-level warn | tail -n1
echo "export:"
t "$bin" config export --database-url "$db" --log-level warn -o "$work/export.yaml"
wc -c <"$work/export.yaml"
