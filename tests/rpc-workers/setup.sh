#!/usr/bin/env bash
# Installs what run.sh needs besides redis-server and node: the Python `redis` module
# and the npm packages of examples/rpc-workers and tests/rpc-workers. Idempotent: safe
# to run before every test run.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

if ! python3 -c 'import redis, sys; sys.exit(tuple(map(int, redis.__version__.split(".")[:2])) < (4, 3))' 2>/dev/null; then
  # A distribution's own Python may refuse pip (PEP 668): this is a test machine.
  python3 -m pip install --quiet -r "$ROOT/examples/rpc-workers/requirements.txt" ||
    python3 -m pip install --quiet --break-system-packages -r "$ROOT/examples/rpc-workers/requirements.txt"
fi

for dir in "$ROOT/examples/rpc-workers" "$ROOT/tests/rpc-workers"; do
  # `npm ci` installs exactly the lock file's versions; without a lock, resolve one.
  if [[ -f $dir/package-lock.json ]]; then
    (cd "$dir" && npm ci --silent --no-audit --no-fund)
  else
    (cd "$dir" && npm install --silent --no-audit --no-fund)
  fi
done
