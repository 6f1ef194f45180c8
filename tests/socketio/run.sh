#!/usr/bin/env bash
# Socket.IO compatibility (docs/socketio.md): the real socket.io-client (Node) and
# python-socketio against two gateway nodes of the built binary over Redis, behind HAProxy
# (deploy/haproxy.cfg, no stickiness), using the reference apps' harness (tests/apps).
#
#   tests/socketio/setup.sh                         # once: npm and PyPI packages
#   tests/socketio/run.sh [path/to/switchboard]     # default target/debug/switchboard
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE=$ROOT/tests/socketio
BIN=${1:-${SWITCHBOARD_BIN:-$ROOT/target/debug/switchboard}}
[[ $BIN == /* ]] || BIN=$PWD/$BIN

fail() { echo "FAIL: $*" >&2; exit 1; }

[[ -x $BIN ]] || fail "no gateway binary at $BIN (build it, or pass its path)"
for tool in redis-server redis-cli haproxy node python3; do
  command -v "$tool" >/dev/null || fail "$tool is not installed"
done
[[ -d $HERE/node_modules/socket.io-client ]] || fail "socket.io-client missing: run tests/socketio/setup.sh"
[[ -d $ROOT/tests/apps/node_modules/ws ]] || fail "the harness's packages are missing: run tests/apps/setup.sh"
[[ -f $ROOT/clients/js/dist/index.js ]] || fail "the SDK is not built (clients/js/dist): run tests/apps/setup.sh"
python3 -c 'import socketio' 2>/dev/null || fail "python-socketio missing: run tests/socketio/setup.sh"

cd "$ROOT"
SWITCHBOARD_BIN=$BIN timeout --kill-after=15 600 \
  node --test --test-concurrency=1 --test-timeout=180000 --test-force-exit "$HERE"/*.test.mjs
