#!/usr/bin/env bash
# Installs what tests/apps/run.sh needs besides the system tools (redis-server, haproxy,
# node, chromium): the locked npm packages of tests/apps and of every examples/<app> with
# a package.json, and the SDK's dist/ when it is not built. Idempotent.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

for dir in "$ROOT/tests/apps" "$ROOT"/examples/*/; do
  dir=${dir%/}
  [[ -f $dir/package-lock.json ]] || continue
  [[ $dir == */examples/rpc-workers ]] && continue # tests/rpc-workers/setup.sh installs it
  (cd "$dir" && npm ci --silent --no-audit --no-fund)
done

# Python backends (examples/<app>/requirements.txt): redis-py.
if compgen -G "$ROOT/examples/*/requirements.txt" >/dev/null &&
  ! python3 -c 'import redis, sys; sys.exit(tuple(map(int, redis.__version__.split(".")[:2])) < (4, 3))' 2>/dev/null; then
  python3 -m pip install --quiet 'redis>=4.3' ||
    python3 -m pip install --quiet --break-system-packages 'redis>=4.3'
fi

if [[ ! -f $ROOT/clients/js/dist/index.js ]]; then
  # dist/ is not committed: build it (clients/js/scripts/setup.sh installs its tools).
  [[ -d $ROOT/clients/js/node_modules ]] || (cd "$ROOT/clients/js" && npm ci --silent --no-audit --no-fund)
  (cd "$ROOT/clients/js" && npm run build --silent)
fi
