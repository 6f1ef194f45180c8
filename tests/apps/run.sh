#!/usr/bin/env bash
# End-to-end tests of the reference apps (examples/<app>/): Redis, two gateway nodes of the
# built binary behind HAProxy (deploy/haproxy.cfg), the app's backend and its page in
# headless Chromium (tests/apps/harness.mjs).
#
#   tests/apps/setup.sh                                  # once: npm packages, SDK build
#   tests/apps/run.sh [path/to/switchboard] [app ...]    # default target/debug/switchboard, every app
#
# Screenshots: target/app-screenshots/<app>-<name>.png; process logs: target/app-logs/<app>/.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE=$ROOT/tests/apps
BIN=${1:-${SWITCHBOARD_BIN:-$ROOT/target/debug/switchboard}}
[[ $BIN == /* ]] || BIN=$PWD/$BIN
shift || true

fail() { echo "FAIL: $*" >&2; exit 1; }

[[ -x $BIN ]] || fail "no gateway binary at $BIN (build it, or pass its path)"
for tool in redis-server redis-cli haproxy node; do
  command -v "$tool" >/dev/null || fail "$tool is not installed"
done
CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
[[ -x $CHROMIUM ]] || fail "no chromium at $CHROMIUM (apt-get install chromium, or set CHROMIUM)"
[[ -d $HERE/node_modules/playwright-core && -d $HERE/node_modules/ws ]] || fail "npm packages missing: run tests/apps/setup.sh"
[[ -f $ROOT/clients/js/dist/index.js ]] || fail "the SDK is not built (clients/js/dist): run tests/apps/setup.sh"

tests=()
if (($# > 0)); then
  for app in "$@"; do tests+=("$HERE/$app.test.mjs"); done
else
  tests=("$HERE"/*.test.mjs)
fi
for app_test in "${tests[@]}"; do
  app=$(basename "$app_test" .test.mjs)
  [[ -f $app_test ]] || fail "no test $app_test"
  # An app whose lock has packages needs them installed (npm ci makes no node_modules
  # for a lock without any).
  if [[ -f $ROOT/examples/$app/package-lock.json ]] &&
    node -e 'const l=require(process.argv[1]); process.exit(Object.keys(l.packages||{}).some(k=>k)?0:1)' "$ROOT/examples/$app/package-lock.json"; then
    [[ -d $ROOT/examples/$app/node_modules ]] || fail "npm packages of examples/$app missing: run tests/apps/setup.sh"
  fi
  if [[ -f $ROOT/examples/$app/requirements.txt ]]; then
    python3 -c 'import redis' 2>/dev/null || fail "the Python redis module is missing: run tests/apps/setup.sh"
  fi
done

cd "$ROOT"
# One file at a time (each starts its own processes); a hard limit on the whole run.
SWITCHBOARD_BIN=$BIN CHROMIUM=$CHROMIUM timeout --kill-after=15 900 \
  node --test --test-concurrency=1 --test-timeout=300000 --test-force-exit "${tests[@]}"
